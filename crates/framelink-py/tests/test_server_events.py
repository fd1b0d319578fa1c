"""Server limits and lifecycle (idle eviction at ``max_connections``, ``serve_forever``,
``lost_sessions()``) and the client's rarer events (``Idle``, ``Unsent``), over loopback."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

import framelink
from framelink import events as ev

from conftest import TIMEOUT, CliProxyFn, EventLog, echo_handler


async def test_a_newcomer_evicts_the_longest_idle_connection_when_full() -> None:
    async with framelink.serve(
        echo_handler, "127.0.0.1", 0, max_connections=1, evict_idle_when_full=0.2
    ) as server:
        old_log, new_log = EventLog(), EventLog()
        old = await framelink.connect("127.0.0.1", server.port, reconnect=False, on_event=old_log)
        try:
            await old.send(b"ping")
            assert await asyncio.wait_for(old.recv(), TIMEOUT) == b"ping"
            await asyncio.sleep(0.5)  # idle for longer than evict_idle_when_full
            new = await framelink.connect("127.0.0.1", server.port, on_event=new_log)
            try:
                d = await old_log.wait(
                    lambda e: isinstance(e, ev.Disconnected), TIMEOUT, seen_ok=True
                )
                assert d.code_name == "idle" and d.by_peer, d
                # The reason says how long it had been idle (0.5 s and more).
                assert "no message for 0.0s" not in d.reason, d.reason
                await new.send(b"hello")
                assert await asyncio.wait_for(new.recv(), TIMEOUT) == b"hello"
                assert server.connections == 1
            finally:
                await new.close()
        finally:
            await old.close()


async def test_serve_forever_runs_until_cancelled_then_closes() -> None:
    server = await framelink.serve(echo_handler, "127.0.0.1", 0)
    task = asyncio.ensure_future(server.serve_forever())
    async with framelink.connect("127.0.0.1", server.port, reconnect=False) as client:
        await client.send(b"up")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"up"
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        # The client's connection was closed with going_away.
        with pytest.raises(framelink.ConnectionClosed):
            await asyncio.wait_for(client.recv(), TIMEOUT)


async def test_lost_sessions_iterator_hands_back_a_session(cli_proxy: CliProxyFn) -> None:
    async with framelink.serve(
        echo_handler, "127.0.0.1", 0, sessions=True, session_ttl=0.3
    ) as server:
        proxy, port = cli_proxy(server.port)
        log = EventLog()
        client = await framelink.connect(
            "127.0.0.1", port, sessions=True, backoff_initial=0.05, backoff_max=0.2, on_event=log
        )
        try:
            started = await log.wait(lambda e: isinstance(e, ev.SessionStarted), seen_ok=True)
            proxy.kill()  # the client can never come back
            await log.wait(lambda e: isinstance(e, ev.Disconnected), seen_ok=True)
            await server.send_to_session(started.session_id, b"kept-1")
            await server.send_to_session(started.session_id, b"kept-2")

            async def first_lost() -> ev.LostSession:
                async for lost in server.lost_sessions():
                    return lost
                raise AssertionError("lost_sessions() ended without a session")

            lost = await asyncio.wait_for(first_lost(), 30)
            assert lost.session_id == started.session_id
            assert lost.unacked[-2:] == [b"kept-1", b"kept-2"]
        finally:
            await client.close()


async def test_one_address_keeps_at_most_max_detached_sessions_per_ip(
    cli_proxy: CliProxyFn,
) -> None:
    # Both clients come through proxies on 127.0.0.1: one address, a limit of 1 detached
    # session. The second to detach pushes out the first (the global limit is far off).
    async with framelink.serve(
        echo_handler, "127.0.0.1", 0, sessions=True, max_detached_sessions_per_ip=1
    ) as server:
        clients, started, proxies = [], [], []
        try:
            for _ in range(2):
                proxy, port = cli_proxy(server.port)
                log = EventLog()
                clients.append(
                    await framelink.connect(
                        "127.0.0.1", port, sessions=True, backoff_initial=0.05,
                        backoff_max=0.2, on_event=log,
                    )
                )
                started.append(
                    await log.wait(lambda e: isinstance(e, ev.SessionStarted), seen_ok=True)
                )
                proxies.append(proxy)
            for proxy in proxies:
                proxy.kill()

            async def first_lost() -> ev.LostSession:
                async for lost in server.lost_sessions():
                    return lost
                raise AssertionError("lost_sessions() ended without a session")

            lost = await asyncio.wait_for(first_lost(), 30)
            assert lost.reason == "evicted"
            assert lost.session_id in {s.session_id for s in started}
        finally:
            for client in clients:
                await client.close()
    with pytest.raises(framelink.ConfigError):
        framelink.serve(echo_handler, "127.0.0.1", 0, sessions=True, max_detached_sessions_per_ip=0)


async def test_reader_idle_event() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        log = EventLog()
        async with framelink.connect(
            "127.0.0.1", server.port, reader_idle=0.2, ping_interval=None, on_event=log
        ):
            idle = await log.wait(lambda e: isinstance(e, ev.Idle), TIMEOUT)
            assert idle.kind == "reader"


class _TakesThenResets(asyncio.Protocol):
    """Reads nothing (the client's writes fill the socket buffers, then its queue) until told
    to reset the connection."""

    transports: List[asyncio.Transport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.transports.append(transport)


async def test_unsent_messages_are_handed_back_after_a_loss() -> None:
    loop = asyncio.get_running_loop()
    _TakesThenResets.transports = []
    server = await loop.create_server(_TakesThenResets, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = EventLog()
    client = await framelink.connect(
        "127.0.0.1", port, framing="length:4", ping_interval=None, reconnect=False,
        max_queued_bytes=1 << 20, on_event=log,
    )
    try:
        payload = b"u" * 65536
        queued: List[bytes] = []
        with pytest.raises(framelink.QueueFull):
            for i in range(4096):
                message = i.to_bytes(4, "big") + payload
                client.try_send(message)
                queued.append(message)
                await asyncio.sleep(0)
        _TakesThenResets.transports[0].abort()  # RST: what was queued is never written
        await log.wait(lambda e: isinstance(e, ev.Disconnected), TIMEOUT)
        unsent: Any = await log.wait(lambda e: isinstance(e, ev.Unsent), TIMEOUT, seen_ok=True)
        assert unsent.messages, "no unsent message handed back"
        # The newest messages, in order, exactly as queued.
        assert unsent.messages == queued[len(queued) - len(unsent.messages) :]
    finally:
        await client.close()
        server.close()


async def test_memory_budget_is_enforced() -> None:
    """``memory_budget`` bounds what the server holds for all connections together: once peers
    whose messages nobody reads have filled it, it closes the connection holding the most and
    refuses newcomers (closed at once) until memory is freed."""
    hold = asyncio.Event()

    async def handler(conn: framelink.Connection) -> None:
        await hold.wait()  # reads nothing while the peers send

    async def end_of(reader: asyncio.StreamReader) -> bool:
        try:
            return await reader.read(100) == b""
        except ConnectionError:
            return True

    frame = (65536).to_bytes(4, "big") + b"x" * 65536
    async with framelink.serve(
        handler, "127.0.0.1", 0, framing="length:4,max=1MiB", memory_budget=1 << 20,
        ping_interval=None,
    ) as server:
        writers = []
        reads = []
        try:
            for _ in range(16):  # 16 x 2 MiB against a 1 MiB budget
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                except ConnectionError:
                    continue  # refused at once
                writers.append(writer)
                writer.write(frame * 32)
                reads.append(asyncio.ensure_future(end_of(reader)))
            # The server sends nothing back: a read that ends is a connection it closed.
            done, pending = await asyncio.wait(
                reads, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            assert done and all(task.result() for task in done), "no connection closed"
            stats = server.stats()
            assert stats["live"] < 16 or stats["refused"] > 0, stats
        finally:
            hold.set()
            for writer in writers:
                writer.close()
