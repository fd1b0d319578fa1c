"""Heartbeats: dead peers are found in bounded time; raw-mode ping/pong."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

import framelink
from framelink import Decoder, Encoder
from framelink import events as ev

from conftest import TIMEOUT, CliProxyFn, EventLog

#: Scheduling slack allowed on top of ping_interval + ping_timeout (a busy 2-core machine).
SLACK = 2.5


async def test_dead_peer_found_through_blackholing_proxy(cli_proxy: CliProxyFn) -> None:
    ping_interval, ping_timeout = 0.5, 1.0
    server_saw: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()

    async def handler(conn: framelink.Connection) -> None:
        try:
            async for m in conn:
                pass
        except framelink.ConnectionClosed as exc:
            if not server_saw.done():
                server_saw.set_result(exc)
            raise
        if not server_saw.done():
            server_saw.set_result(None)

    async with framelink.serve(
        handler, "127.0.0.1", 0, ping_interval=ping_interval, ping_timeout=ping_timeout
    ) as server:
        # Past the handshake (about a hundred bytes), everything is swallowed from byte 2000 on.
        proxy, port = cli_proxy(server.port, "--cut-at", "2000", "--fault", "blackhole")
        log = EventLog()
        client = await framelink.connect(
            "127.0.0.1",
            port,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_attempts=1,
            on_event=log,
        )
        try:
            loop = asyncio.get_running_loop()
            await client.send(b"z" * 10_000)  # crosses the blackhole point
            await proxy.await_line(r"fault: blackhole")
            t0 = loop.time()
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), TIMEOUT, seen_ok=True)
            elapsed = loop.time() - t0
            assert d.kind == "PeerDead", d
            assert d.code == 3 and d.code_name == "peer_timed_out"
            assert d.by_peer is False
            assert elapsed <= ping_interval + ping_timeout + SLACK, elapsed
            # The client gave up (max_attempts=1): recv reports the loss, not a normal end.
            with pytest.raises(framelink.ConnectionClosed):
                await asyncio.wait_for(client.recv(), TIMEOUT)
            # The server's side of the connection found it dead too.
            exc = await asyncio.wait_for(server_saw, TIMEOUT)
            assert isinstance(exc, framelink.PeerDead)
            assert exc.code == 3
        finally:
            await client.close()


async def _silent_server(received: List[bytes]) -> asyncio.Server:
    """A raw server that reads everything and never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            received.append(chunk)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_raw_mode_silent_server_is_declared_dead() -> None:
    received: List[bytes] = []
    server = await _silent_server(received)
    port = server.sockets[0].getsockname()[1]
    ping_interval, ping_timeout = 0.3, 0.5
    log = EventLog()
    loop = asyncio.get_running_loop()
    try:
        client = await framelink.connect(
            "127.0.0.1", port, framing="length:4", ping=b"PING", pong=b"PONG",
            ping_interval=ping_interval, ping_timeout=ping_timeout, max_attempts=1, on_event=log,
        )
        t0 = loop.time()
        try:
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), TIMEOUT, seen_ok=True)
            elapsed = loop.time() - t0
            assert d.kind == "PeerDead"
            assert ping_interval <= elapsed + 0.05
            assert elapsed <= ping_interval + ping_timeout + SLACK
            # The client gave up (max_attempts=1): recv says so, naming the last failure.
            with pytest.raises(framelink.ConnectionClosed, match="no answer to a ping"):
                await asyncio.wait_for(client.recv(), TIMEOUT)
        finally:
            await client.close()
        # It did ping, in the framing.
        assert Decoder("length:4").feed(b"".join(received))[:1] == [b"PING"]
    finally:
        server.close()


async def test_raw_mode_ping_pong_against_plain_asyncio_server() -> None:
    pings = 0
    enc = Encoder("length:4")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        dec = Decoder("length:4")
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            for frame in dec.feed(chunk):
                if frame == b"PING":
                    pings += 1
                    writer.write(enc.encode(b"PONG"))
                else:
                    writer.write(enc.encode(b"ECHO:" + frame))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = EventLog()
    try:
        async with framelink.connect(
            "127.0.0.1", port, framing="length:4", ping=b"PING", pong=b"PONG",
            ping_interval=0.2, ping_timeout=5.0, on_event=log,
        ) as client:
            await log.wait(lambda e: isinstance(e, ev.Rtt) and e.samples >= 3, seen_ok=True)
            rtts = log.of(ev.Rtt)
            assert all(0 <= r.latest < 5 and r.min <= r.latest for r in rtts)
            assert rtts[-1].samples >= 3
            assert client.rtt is not None and client.rtt.samples >= 3
            assert pings >= 3
            await client.send(b"data")
            # The PONGs were not delivered: the first message is the echo.
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"ECHO:data"
            assert client.connected
            assert not log.of(ev.Disconnected)
    finally:
        server.close()


async def test_raw_mode_answers_server_heartbeats() -> None:
    enc = Encoder("length:4")
    got_pong = asyncio.Event()
    frames_seen: List[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dec = Decoder("length:4")
        writer.write(enc.encode_many([b"hello", b"PING", b"world"]))
        await writer.drain()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            for frame in dec.feed(chunk):
                frames_seen.append(frame)
                if frame == b"PONG":
                    got_pong.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with framelink.connect(
            "127.0.0.1", port, framing="length:4", answer=(b"PING", b"PONG"), ping_interval=None,
        ) as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"hello"
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"world"
            await asyncio.wait_for(got_pong.wait(), TIMEOUT)
            assert frames_seen == [b"PONG"]
    finally:
        server.close()


async def test_protocol_heartbeats_give_rtt_between_python_peers() -> None:
    log = EventLog()

    async def handler(conn: framelink.Connection) -> None:
        async for m in conn:
            await conn.send(m)

    async with framelink.serve(handler, "127.0.0.1", 0, ping_interval=0.2) as server:
        async with framelink.connect(
            "127.0.0.1", server.port, ping_interval=0.2, on_event=log
        ) as client:
            assert log.of(ev.Connected)[0].peer_ping_interval == pytest.approx(0.2)
            r = await log.wait(lambda e: isinstance(e, ev.Rtt) and e.samples >= 2, seen_ok=True)
            assert r.smoothed >= 0 and r.variance >= 0
            assert client.rtt is not None


async def test_idle_timeout_closes_quiet_connection() -> None:
    async with framelink.serve(
        lambda conn: _drain(conn), "127.0.0.1", 0, idle_timeout=0.5, ping_interval=0.1
    ) as server:
        log = EventLog()
        client = await framelink.connect(
            "127.0.0.1", server.port, ping_interval=0.1, max_attempts=1, on_event=log
        )
        try:
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), TIMEOUT, seen_ok=True)
            assert d.code == 8 and d.code_name == "idle"
            assert d.by_peer
        finally:
            await client.close()


async def _drain(conn: framelink.Connection) -> None:
    async for _ in conn:
        pass


async def test_a_frame_that_never_completes_is_cut_by_frame_timeout() -> None:
    # The server announces a 100-byte frame, sends 10 bytes of it, then trickles nothing.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\x00\x00\x64" + b"x" * 10)
        await writer.drain()
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = EventLog()
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        client = await framelink.connect(
            "127.0.0.1", port, framing="length:4", ping_interval=None, frame_timeout=0.5,
            max_attempts=1, on_event=log,
        )
        try:
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), TIMEOUT, seen_ok=True)
            assert d.code_name == "peer_timed_out", d
            # The 4-byte header and 10 of the 100 body bytes.
            assert "14 of 104 bytes arrived" in str(d.error), d
            assert 0.4 <= loop.time() - t0 <= 0.5 + SLACK
        finally:
            await client.close()
    finally:
        server.close()



async def test_frame_timeout_must_be_a_duration() -> None:
    with pytest.raises(framelink.ConfigError, match="frame_timeout"):
        await framelink.connect("127.0.0.1", 1, frame_timeout=-1.0, max_attempts=1)


def test_blocking_connect_leaves_ping_interval_to_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import framelink.blocking
    from framelink import _native

    seen: List[Any] = []

    def fake_connect(host: str, port: int, options: Any) -> Any:
        seen.append(options)
        raise RuntimeError("captured")

    monkeypatch.setattr(_native, "connect", fake_connect)
    with pytest.raises(RuntimeError, match="captured"):
        framelink.blocking.connect("127.0.0.1", 1, framing="length:4", wait=False)
    with pytest.raises(RuntimeError, match="captured"):
        framelink.blocking.connect("127.0.0.1", 1, framing="length:4", ping_interval=None)
    assert "ping_interval" not in seen[0]
    assert seen[1]["ping_interval"] is None  # given (None: off): passed on as given


async def test_raw_mode_without_ping_has_no_silence_limit_unless_asked() -> None:
    """Raw mode without ``ping`` sends nothing, so by default it does not cut a quiet peer
    (a request/response server may stay silent for hours); ``ping_interval`` given turns the
    silence limit on: a peer silent for ``ping_interval + ping_timeout`` is dead."""
    # Left at its default, ping_interval is not passed to the core, which then watches for
    # no silence in raw mode without a ping (15 s would otherwise apply).
    assert "ping_interval" not in framelink.connect("127.0.0.1", 1, framing="length:4")._options
    received: List[bytes] = []
    server = await _silent_server(received)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        quiet_log, watched_log = EventLog(), EventLog()
        quiet = await framelink.connect(
            "127.0.0.1", port, framing="length:4", ping_timeout=0.3, on_event=quiet_log
        )
        watched = await framelink.connect(
            "127.0.0.1", port, framing="length:4", ping_interval=0.3, ping_timeout=0.3,
            max_attempts=1, on_event=watched_log,
        )
        t0 = loop.time()
        try:
            d = await watched_log.wait(lambda e: isinstance(e, ev.Disconnected), TIMEOUT)
            assert d.kind == "PeerDead", d
            assert loop.time() - t0 <= 0.6 + SLACK
            # Well past the watched client's limit, the quiet one is still connected.
            await asyncio.sleep(0.6)
            assert quiet.connected
            assert not quiet_log.of(ev.Disconnected)
        finally:
            await quiet.close()
            await watched.close()
        assert received == []  # neither sent a thing: there was no ping to send
    finally:
        server.close()
