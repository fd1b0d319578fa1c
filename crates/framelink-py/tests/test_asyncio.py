"""The asyncio API: ``framelink.connect`` / ``framelink.serve`` between Python peers."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, List, Optional

import pytest

import framelink
from framelink import events as ev

from conftest import TIMEOUT, EventLog, closed_port, echo_handler, free_port, wait_event


async def test_echo_protocol_mode() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        assert server.port > 0
        async with framelink.connect("127.0.0.1", server.port) as client:
            assert client.connected
            for payload in (b"hello", b"", b"\x00" * 100_000, bytes(range(256))):
                await client.send(payload)
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == payload
            # bytes-like inputs
            await client.send(bytearray(b"ba"))
            await client.send(memoryview(b"mv"))
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"ba"
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"mv"
            assert server.connections == 1
            assert server.stats()["accepted"] == 1


async def test_echo_raw_mode_both_sides() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0, framing="length:4") as server:
        async with framelink.connect("127.0.0.1", server.port, framing="length:4") as client:
            msgs = [b"one", b"", b"three" * 1000]
            await client.send_many(msgs)
            got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in msgs]
            assert got == msgs


async def test_raw_client_wire_format_against_plain_socket_server() -> None:
    """Raw mode writes exactly the framing's bytes (no framelink handshake)."""
    received = bytearray()
    got_all = asyncio.Event()
    expected = framelink.Encoder("length:4").encode_many([b"abc", b"de"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(framelink.Encoder("length:4").encode_many([b"hi", b"there"]))
        await writer.drain()
        while len(received) < len(expected):
            chunk = await reader.read(65536)
            if not chunk:
                break
            received.extend(chunk)
        got_all.set()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with framelink.connect("127.0.0.1", port, framing="length:4") as client:
            await client.send_many([b"abc", b"de"])
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"hi"
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"there"
            await asyncio.wait_for(got_all.wait(), TIMEOUT)
            assert bytes(received) == expected
    finally:
        server.close()


@pytest.mark.parametrize("framing", [None, "length:4"])
async def test_send_many_recv_many_10k_in_order(framing: Optional[str]) -> None:
    n = 10_000
    async with framelink.serve(echo_handler, "127.0.0.1", 0, framing=framing) as server:
        async with framelink.connect("127.0.0.1", server.port, framing=framing) as client:
            payloads = [b"msg-%06d" % i for i in range(n)]
            for start in range(0, n, 2500):
                await client.send_many(payloads[start : start + 2500])
            got: List[bytes] = []
            batches = 0

            async def take() -> None:
                nonlocal batches
                while len(got) < n:
                    batch = await client.recv_many(4096)
                    assert 1 <= len(batch) <= 4096
                    batches += 1
                    got.extend(batch)

            await asyncio.wait_for(take(), 60)
            assert got == payloads
            assert batches < n  # taken in batches, not one by one


async def test_recv_many_rejects_zero() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        async with framelink.connect("127.0.0.1", server.port) as client:
            with pytest.raises(ValueError):
                await client.recv_many(0)


async def test_async_for_ends_quietly_on_normal_close_server_side() -> None:
    done: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()

    async def collect(conn: framelink.Connection) -> None:
        got: List[bytes] = []
        try:
            async for m in conn:
                got.append(m)
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            done.set_exception(exc)
            raise
        done.set_result(got)

    async with framelink.serve(collect, "127.0.0.1", 0) as server:
        client = await framelink.connect("127.0.0.1", server.port)
        await client.send_many([b"a", b"b", b"c"])
        await client.close()
        assert await asyncio.wait_for(done, TIMEOUT) == [b"a", b"b", b"c"]


async def test_async_for_ends_quietly_after_client_close() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        client = await framelink.connect("127.0.0.1", server.port)
        await client.send_many([b"1", b"2"])
        got: List[bytes] = []

        async def reader() -> None:
            async for m in client:
                got.append(m)
                if len(got) == 2:
                    await client.close()

        await asyncio.wait_for(reader(), TIMEOUT)
        assert got == [b"1", b"2"]
        assert client.closed
        with pytest.raises(framelink.ConnectionClosed):
            await client.recv()


async def test_handler_close_with_application_code() -> None:
    async def closer(conn: framelink.Connection) -> None:
        await conn.send(b"bye")
        await conn.close(0x1001, "app says bye")

    async with framelink.serve(closer, "127.0.0.1", 0) as server:
        log = EventLog()
        client = await framelink.connect("127.0.0.1", server.port, on_event=log, max_attempts=1)
        try:
            # Messages sent before the close arrive first.
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"bye"
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), seen_ok=True)
            assert d.code == 0x1001
            assert d.code_name == "application"
            assert d.reason == "app says bye"
            assert d.by_peer is True
        finally:
            await client.close()


async def test_server_close_gives_going_away() -> None:
    server = await framelink.serve(echo_handler, "127.0.0.1", 0)
    client = await framelink.connect("127.0.0.1", server.port, max_attempts=3, backoff_max=0.2)
    try:
        await client.send(b"x")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"x"
        report = await asyncio.wait_for(server.close(grace=5.0), TIMEOUT)
        assert report == (1, 1, 0)
        d = await wait_event(client, lambda e: isinstance(e, ev.Disconnected))
        assert d.code == 1
        assert d.code_name == "going_away"
        assert d.by_peer is True
        assert d.kind == "ConnectionClosed"
        # Closing again is harmless.
        assert await server.close() == (0, 0, 0)
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    finally:
        await client.close()


async def test_events_connected_then_disconnected_and_reconnecting() -> None:
    server = await framelink.serve(echo_handler, "127.0.0.1", 0)
    client = await framelink.connect(
        "127.0.0.1", server.port, backoff_initial=0.05, backoff_max=0.2, max_attempts=5
    )
    try:
        seen: List[ev.Event] = []

        async def read_events() -> None:
            async for e in client.events():
                seen.append(e)
                if isinstance(e, ev.Reconnecting):
                    return

        task = asyncio.ensure_future(read_events())
        await asyncio.wait_for(server.close(), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)
        kinds = [type(e) for e in seen]
        assert kinds[0] is ev.Connected
        first, last = seen[0], seen[-1]
        assert isinstance(first, ev.Connected) and isinstance(last, ev.Reconnecting)
        assert first.attempt == 1
        assert first.address == ("127.0.0.1", server.port)
        assert first.peer_ping_interval == pytest.approx(15.0)
        assert ev.Disconnected in kinds
        assert kinds.index(ev.Disconnected) < kinds.index(ev.Reconnecting)
        assert last.attempt >= 2 and last.delay >= 0
    finally:
        await client.close()
    # events() ends once the client is over.
    rest = await asyncio.wait_for(_drain(client.events()), TIMEOUT)
    assert all(not isinstance(e, ev.Connected) for e in rest)


async def _drain(agen: AsyncIterator[ev.Event]) -> List[ev.Event]:
    return [e async for e in agen]


async def test_reconnects_after_server_restart_on_same_port() -> None:
    port = free_port()
    server = await framelink.serve(echo_handler, "127.0.0.1", port)
    log = EventLog()
    client = await framelink.connect(
        "127.0.0.1",
        port,
        on_event=log,
        backoff_initial=0.05,
        backoff_max=0.3,
        max_attempts=60,
    )
    try:
        await client.send(b"before")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"before"
        await server.close()
        await log.wait(lambda e: isinstance(e, ev.ConnectFailed), seen_ok=True)
        assert not client.connected
        server = await framelink.serve(echo_handler, "127.0.0.1", port)
        second = await log.wait(lambda e: isinstance(e, ev.Connected) and e.attempt >= 2, seen_ok=True)
        assert second.attempt >= 2
        assert client.connected
        await client.send(b"after")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"after"
        assert len(log.of(ev.Connected)) == 2
        assert not log.of(ev.GaveUp)
    finally:
        await client.close()
        await server.close()


async def test_send_while_disconnected_waits_for_the_next_connection() -> None:
    port = free_port()
    server = await framelink.serve(echo_handler, "127.0.0.1", port)
    log = EventLog()
    client = await framelink.connect(
        "127.0.0.1", port, on_event=log, backoff_initial=0.05, backoff_max=0.2, max_attempts=100
    )
    try:
        await server.close()
        await log.wait(lambda e: isinstance(e, ev.ConnectFailed), seen_ok=True)
        send = asyncio.ensure_future(client.send(b"queued"))
        server = await framelink.serve(echo_handler, "127.0.0.1", port)
        await asyncio.wait_for(send, TIMEOUT)
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"queued"
    finally:
        await client.close()
        await server.close()


async def test_max_attempts_to_closed_port_raises_connection_closed() -> None:
    log = EventLog()
    with pytest.raises(framelink.ConnectionClosed) as info:
        await asyncio.wait_for(
            framelink.connect(
                "127.0.0.1", closed_port(), max_attempts=2, backoff_initial=0.05, on_event=log
            ),
            TIMEOUT,
        )
    assert "2" in str(info.value)
    assert len(log.of(ev.ConnectFailed)) == 2
    assert log.of(ev.GaveUp) and log.of(ev.GaveUp)[0].attempts == 2
    # The same with the async context manager.
    with pytest.raises(framelink.ConnectionClosed):
        async with framelink.connect("127.0.0.1", closed_port(), reconnect=False):
            pytest.fail("connected to a closed port")  # pragma: no cover


async def test_max_connections_refuses_second_client() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0, max_connections=1) as server:
        async with framelink.connect("127.0.0.1", server.port) as first:
            await first.send(b"1")
            assert await asyncio.wait_for(first.recv(), TIMEOUT) == b"1"
            log = EventLog()
            try:
                second = await asyncio.wait_for(
                    framelink.connect(
                        "127.0.0.1", server.port, max_attempts=1, on_event=log
                    ),
                    TIMEOUT,
                )
            except framelink.ConnectionClosed:
                second = None
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), seen_ok=True)
            assert d.code == 7
            assert d.code_name == "server_full"
            assert d.by_peer
            if second is not None:
                with pytest.raises(framelink.ConnectionClosed):
                    await asyncio.wait_for(second.recv(), TIMEOUT)
                await second.close()
            assert server.stats()["refused"] >= 1
            assert server.stats()["live"] == 1
            # The first is unaffected.
            await first.send(b"2")
            assert await asyncio.wait_for(first.recv(), TIMEOUT) == b"2"


async def test_max_connections_per_ip_refuses_one_address_over_its_limit() -> None:
    async with framelink.serve(
        echo_handler, "127.0.0.1", 0, max_connections_per_ip=1
    ) as server:
        async with framelink.connect("127.0.0.1", server.port) as first:
            log = EventLog()
            try:
                second = await asyncio.wait_for(
                    framelink.connect("127.0.0.1", server.port, max_attempts=1, on_event=log),
                    TIMEOUT,
                )
            except framelink.ConnectionClosed:
                second = None
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), seen_ok=True)
            assert d.code_name == "server_full"
            assert "too many connections from 127.0.0.1" in d.reason
            if second is not None:
                await second.close()
            stats = server.stats()
            assert stats["refused_per_ip"] >= 1 and stats["live"] == 1
            await first.send(b"still here")
            assert await asyncio.wait_for(first.recv(), TIMEOUT) == b"still here"
    with pytest.raises(framelink.ConfigError):
        framelink.serve(echo_handler, "127.0.0.1", 0, max_connections_per_ip=0)


def test_bad_options_raise_at_the_call() -> None:
    # No event loop is needed: the options are checked by connect()/serve() themselves.
    with pytest.raises(framelink.SpecError):
        framelink.connect("127.0.0.1", 1, framing="length:5")
    with pytest.raises(framelink.SpecError):
        framelink.serve(echo_handler, framing="nonsense")
    with pytest.raises(framelink.ConfigError):
        framelink.connect("127.0.0.1", 1, ping_timeout=0)
    with pytest.raises(framelink.ConfigError):
        framelink.connect("127.0.0.1", 1, ping=b"x")  # raw-mode only
    with pytest.raises(framelink.ConfigError):
        framelink.connect("127.0.0.1", 1, framing="line", sessions=True)
    with pytest.raises(framelink.ConfigError):
        framelink.connect("127.0.0.1", 1, backoff_initial=-1)
    with pytest.raises(framelink.ConfigError):
        framelink.connect("127.0.0.1", 1, max_attempts=-1)
    with pytest.raises(framelink.ConfigError):
        framelink.connect("127.0.0.1", 1, framing="line", pong=b"a", pong_prefix=b"b")
    with pytest.raises(framelink.ConfigError):
        framelink.serve(echo_handler, max_connections=0)
    with pytest.raises(framelink.ConfigError):
        framelink.serve(echo_handler, ping_interval=float("nan"))
    for exc in (framelink.SpecError, framelink.ConfigError):
        assert issubclass(exc, ValueError)
    with pytest.raises(TypeError):
        framelink.connect("127.0.0.1", 1, bogus=1)  # type: ignore[call-arg]


async def test_serve_on_a_busy_port_raises_oserror() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        with pytest.raises(OSError):
            await framelink.serve(echo_handler, "127.0.0.1", server.port)


async def test_many_clients_one_server() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        clients = [await framelink.connect("127.0.0.1", server.port) for _ in range(10)]
        try:
            for i, c in enumerate(clients):
                await c.send_many([b"%d-%d" % (i, j) for j in range(100)])
            for i, c in enumerate(clients):
                got: List[bytes] = []
                while len(got) < 100:
                    got += await asyncio.wait_for(c.recv_many(), TIMEOUT)
                assert got == [b"%d-%d" % (i, j) for j in range(100)]
            assert server.connections == 10
        finally:
            for c in clients:
                await c.close()


def test_echo_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
            async with framelink.connect("127.0.0.1", server.port) as client:
                await client.send(b"uv")
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"uv"
                payloads = [b"%d" % i for i in range(5000)]
                await client.send_many(payloads)
                got: List[bytes] = []
                while len(got) < len(payloads):
                    got += await asyncio.wait_for(client.recv_many(), TIMEOUT)
                assert got == payloads

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


def test_python_defaults_are_the_rust_defaults() -> None:
    """The signatures spell some defaults out (for help() and IDEs); the Rust core has them
    too. They must agree: a default left out (``None``, ``DEFAULT``) is the core's by design."""
    import inspect

    import framelink.blocking
    from framelink import _native

    rust = _native.defaults()
    checked = set()
    for function in (framelink.connect, framelink.serve, framelink.blocking.connect):
        for name, param in inspect.signature(function).parameters.items():
            if name in rust and param.default is not None and repr(param.default) != "DEFAULT":
                assert param.default == pytest.approx(rust[name]), (function.__qualname__, name)
                checked.add(name)
    # Every Rust default named there is spelled out somewhere (nothing stale in the list).
    assert checked == set(rust) - {"ping_interval", "max_attempts"}, set(rust) - checked
