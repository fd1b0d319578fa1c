"""Sending: ``try_send`` and ``QueueFull`` with the send queue's numbers, backpressure, and
cancellation of waiting calls."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

import framelink
from framelink import events as ev

from conftest import TIMEOUT, EventLog, echo_handler

BIG = 64 * 1024


class _NeverReads(asyncio.Protocol):
    """Accepts and never reads: the client's writes fill the socket buffers, then its queue.
    ``abort_all`` resets the connections, so that the client's close need not wait for its
    queue to drain."""

    transports: List[asyncio.Transport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.transports.append(transport)

    @classmethod
    def abort_all(cls) -> None:
        for transport in cls.transports:
            transport.abort()
        cls.transports = []


async def _server_that_never_reads() -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(_NeverReads, "127.0.0.1", 0)


async def test_try_send_raises_queue_full_with_the_queue_numbers() -> None:
    server = await _server_that_never_reads()
    port = server.sockets[0].getsockname()[1]
    limit = 256 * 1024
    try:
        async with framelink.connect(
            "127.0.0.1", port, framing="length:4", max_queued_bytes=limit, ping_interval=None
        ) as client:
            payload = b"x" * BIG
            # The kernel's socket buffers take some megabytes first: bounded by count.
            with pytest.raises(framelink.QueueFull) as info:
                for _ in range(4096):
                    client.try_send(payload)
                    await asyncio.sleep(0)
            full = info.value
            assert full.length >= BIG  # the message, plus what the queue counts for it
            assert full.limit == limit, (full.queued, full.length, full.limit)
            assert 0 < full.queued <= limit
            assert full.queued + full.length > full.limit
            # A waiting send is behind the full queue; try_send may not pass it.
            # (16 MiB: more than the socket buffers can still take.)
            waiting = asyncio.ensure_future(client.send_many([payload] * 256))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            with pytest.raises(framelink.QueueFull, match="earlier sends") as info:
                client.try_send(b"small")
            assert info.value.limit == limit
            # Cancelling the waiting send works as asyncio users expect.
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            _NeverReads.abort_all()
    finally:
        _NeverReads.abort_all()
        server.close()


async def test_try_send_between_connections_raises_queue_full_with_zeros() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0, framing="length:4") as server:
        log = EventLog()
        client = await framelink.connect(
            "127.0.0.1", server.port, framing="length:4", on_event=log,
            backoff_initial=30.0, backoff_max=30.0,
        )
        try:
            client.try_send(b"hello")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"hello"
            await server.close(grace=0.1)
            await log.wait(lambda e: isinstance(e, ev.Reconnecting), TIMEOUT, seen_ok=True)
            with pytest.raises(framelink.QueueFull, match="reconnecting") as info:
                client.try_send(b"during the gap")
            assert (info.value.queued, info.value.length, info.value.limit) == (0, 14, 0)
        finally:
            await client.close()
        # Once the client is over, try_send says it is closed.
        with pytest.raises(framelink.ConnectionClosed):
            client.try_send(b"late")


async def test_cancelled_recv_loses_no_message() -> None:
    async with framelink.serve(echo_handler, "127.0.0.1", 0) as server:
        async with framelink.connect("127.0.0.1", server.port) as client:
            # A recv cancelled while waiting...
            pending = asyncio.ensure_future(client.recv())
            await asyncio.sleep(0.05)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            # ...takes nothing with it: the next messages all arrive, in order.
            await client.send_many([b"a", b"b", b"c"])
            got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in range(3)]
            assert got == [b"a", b"b", b"c"]
            # wait_for's timeout cancels the same way.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.recv(), 0.05)
            await client.send(b"d")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"d"


async def test_cancelled_connect_stops_the_client() -> None:
    # Nothing listens: the client keeps retrying until the await is cancelled.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task = asyncio.ensure_future(framelink.connect("127.0.0.1", port, backoff_initial=0.05))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_max_message_size_is_refused_in_raw_mode() -> None:
    with pytest.raises(framelink.ConfigError, match="max="):
        framelink.connect("127.0.0.1", 1, framing="length:4", max_message_size=1000)
    with pytest.raises(framelink.ConfigError, match="max="):
        framelink.serve(echo_handler, framing="line", max_message_size=1000)
