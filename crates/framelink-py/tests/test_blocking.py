"""The blocking client, ``framelink.blocking.connect``."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, Awaitable, Callable, DefaultDict, Dict, Iterator, List, Optional, TypeVar

import pytest

import framelink
import framelink.blocking
from framelink import events as ev

from conftest import TIMEOUT, CliProxyFn, CliServerFn, closed_port, echo_handler

T = TypeVar("T")
Handler = Callable[[framelink.Connection], Awaitable[Any]]


class ThreadServer:
    """A ``framelink.serve`` server running on an event loop in a thread."""

    def __init__(self, handler: Handler, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._server: Optional[framelink.Server] = None
        self._thread = threading.Thread(target=self._run, args=(handler, options), daemon=True)
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "server thread did not start"
        if self._error is not None:
            raise self._error

    def _run(self, handler: Handler, options: Dict[str, Any]) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await framelink.serve(handler, "127.0.0.1", 0, **options)

        try:
            self.loop.run_until_complete(start())
        except BaseException as exc:  # pragma: no cover
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    @property
    def server(self) -> framelink.Server:
        assert self._server is not None
        return self._server

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coro: Awaitable[T], timeout: float = TIMEOUT) -> T:
        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(self.server.close())
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


ThreadServerFn = Callable[..., ThreadServer]


@pytest.fixture
def thread_server() -> Iterator[ThreadServerFn]:
    servers: List[ThreadServer] = []

    def start(handler: Handler = echo_handler, **options: Any) -> ThreadServer:
        s = ThreadServer(handler, **options)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def test_send_recv_against_cli_server(cli_server: CliServerFn) -> None:
    _, port = cli_server()
    with framelink.blocking.connect("127.0.0.1", port, timeout=TIMEOUT) as client:
        assert client.connected
        client.send(b"hello")
        assert client.recv(timeout=TIMEOUT) == b"hello"
        payloads = [b"%d" % i for i in range(5000)]
        client.send_many(payloads, timeout=TIMEOUT)
        got: List[bytes] = []
        while len(got) < len(payloads):
            batch = client.recv_many(1000, timeout=TIMEOUT)
            assert 1 <= len(batch) <= 1000
            got += batch
        assert got == payloads
        events = client.take_events()
        assert isinstance(events[0], ev.Connected)
        assert client.take_events() == []
    assert client.closed


def test_recv_timeout_when_nothing_arrives(cli_server: CliServerFn) -> None:
    _, port = cli_server("--sink")
    with framelink.blocking.connect("127.0.0.1", port) as client:
        client.send(b"swallowed")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.3)
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 0.3 + 5
        with pytest.raises(TimeoutError):
            client.recv(timeout=0)
        with pytest.raises(ValueError):
            client.recv(timeout=-1)
        with pytest.raises(ValueError):
            client.recv_many(0)


def test_iteration_ends_on_close(thread_server: ThreadServerFn) -> None:
    s = thread_server()
    client = framelink.blocking.connect("127.0.0.1", s.port)
    client.send_many([b"a", b"b", b"c"])
    got: List[bytes] = []
    for message in client:
        got.append(message)
        if len(got) == 3:
            client.close()
    assert got == [b"a", b"b", b"c"]
    assert client.closed
    with pytest.raises(framelink.ConnectionClosed):
        client.recv(timeout=1)


def test_iteration_is_interruptible_from_another_thread(thread_server: ThreadServerFn) -> None:
    s = thread_server()
    client = framelink.blocking.connect("127.0.0.1", s.port)
    got: List[bytes] = []
    started, first = threading.Event(), threading.Event()

    def reader() -> None:
        started.set()
        for m in client:
            got.append(m)
            first.set()

    t = threading.Thread(target=reader)
    t.start()
    started.wait(TIMEOUT)
    client.send(b"x")  # send from another thread than the reader
    assert first.wait(TIMEOUT)
    client.close()
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert got == [b"x"]


def test_connect_to_closed_port_raises() -> None:
    with pytest.raises(framelink.ConnectionClosed):
        framelink.blocking.connect("127.0.0.1", closed_port(), max_attempts=2, backoff_initial=0.05)
    with pytest.raises(TimeoutError):
        framelink.blocking.connect("127.0.0.1", closed_port(), timeout=0.5, backoff_max=0.1)


def test_wait_false_and_raw_mode(cli_server: CliServerFn) -> None:
    _, port = cli_server("--framing", "line")
    client = framelink.blocking.connect("127.0.0.1", port, framing="line", wait=False)
    try:
        client.wait_connected(TIMEOUT)
        client.send(b"line one")
        assert client.recv(TIMEOUT) == b"line one"
    finally:
        client.close()


def test_bad_options_raise() -> None:
    with pytest.raises(framelink.SpecError):
        framelink.blocking.connect("127.0.0.1", 1, framing="length:7")
    with pytest.raises(framelink.ConfigError):
        framelink.blocking.connect("127.0.0.1", 1, ping_timeout=0)


def test_sessions_resume_after_server_side_drop(thread_server: ThreadServerFn, cli_proxy: CliProxyFn) -> None:
    received: DefaultDict[int, List[bytes]] = collections.defaultdict(list)  # per connection, in accept order

    async def collect(conn: framelink.Connection) -> None:
        mine = received[conn.id]
        async for m in conn:
            mine.append(m)
            # Answer by session, not by connection: conn.send fails once this connection is
            # cut, and the reply must reach the client on its next connection.
            sid = conn.session_id
            assert sid is not None
            await s.server.send_to_session(sid, b"ack:" + m)

    s = thread_server(collect, sessions=True, ping_interval=0.3, ping_timeout=0.5)
    # The proxy resets every connection after 3000 bytes.
    proxy, port = cli_proxy(s.port, "--cut-every", "3000", "--fault", "rst")
    with framelink.blocking.connect(
        "127.0.0.1", port, sessions=True, backoff_initial=0.02, backoff_max=0.1,
        ping_interval=0.3, ping_timeout=0.5,
    ) as client:
        n = 2000
        payloads = [b"m%05d" % i for i in range(n)]
        for i in range(0, n, 100):
            client.send_many(payloads[i : i + 100], timeout=TIMEOUT)
        got: List[bytes] = []
        while len(got) < n:
            got += client.recv_many(timeout=60)
        assert got == [b"ack:" + p for p in payloads]
        events = client.take_events()
        started = [e for e in events if isinstance(e, ev.SessionStarted)]
        assert len(started) >= 3
        assert {e.session_id for e in started} == {client.session_id}
        assert [e.status for e in started][1:] == ["resumed"] * (len(started) - 1)
    assert [m for cid in sorted(received) for m in received[cid]] == payloads


def test_heartbeats_run_while_blocked_in_recv(cli_server: CliServerFn) -> None:
    """The I/O thread pings and measures RTT while the caller's thread is blocked in recv."""
    _, port = cli_server()
    with framelink.blocking.connect("127.0.0.1", port, ping_interval=0.1) as client:
        with pytest.raises(TimeoutError):
            client.recv(timeout=1.0)  # nothing to read: blocked for a second
        rtts = [e for e in client.take_events() if isinstance(e, ev.Rtt)]
        assert rtts, "no heartbeat round trip while blocked"
        assert client.rtt is not None and client.rtt.latest > 0


def test_dead_peer_found_while_blocked_in_recv(
    cli_server: CliServerFn, cli_proxy: CliProxyFn
) -> None:
    """A peer that goes silent (blackholed link) is declared dead within ping_interval +
    ping_timeout, and recv, blocked all that time, says so."""
    ping_interval, ping_timeout, slack = 0.5, 1.0, 2.5
    _, server_port = cli_server()
    proxy, port = cli_proxy(server_port, "--cut-at", "2000", "--fault", "blackhole")
    with framelink.blocking.connect(
        "127.0.0.1", port, ping_interval=ping_interval, ping_timeout=ping_timeout, max_attempts=1
    ) as client:
        client.send(b"z" * 10_000)  # crosses the blackhole point
        proxy.wait_for(r"fault: blackhole")
        t0 = time.monotonic()
        with pytest.raises(framelink.PeerDead):
            client.recv(timeout=TIMEOUT)
        assert time.monotonic() - t0 <= ping_interval + ping_timeout + slack
        lost = [e for e in client.take_events() if isinstance(e, ev.Disconnected)]
        assert lost and lost[0].kind == "PeerDead", lost
