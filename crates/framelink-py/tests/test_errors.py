"""Bad input from a peer: the connection ends with ProtocolError, nothing before it is lost,
and other connections carry on."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest

import framelink
from framelink import Decoder, Encoder
from framelink import events as ev

from conftest import TIMEOUT, EventLog

ENC = Encoder("length:4")
HUGE_HEADER = b"\xff\xff\xff\xff"


async def _read_until_eof(reader: asyncio.StreamReader) -> bytes:
    data = bytearray()
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return bytes(data)
        data.extend(chunk)


async def test_raw_server_bad_peer_gets_protocol_error_others_unaffected() -> None:
    ended: "asyncio.Queue[Any]" = asyncio.Queue()  # (messages, exception) per finished handler

    async def handler(conn: framelink.Connection) -> None:
        got: List[bytes] = []
        try:
            async for m in conn:
                got.append(m)
                try:
                    await conn.send(b"echo:" + m)
                except framelink.ConnectionClosed:
                    # Closing already (the bad header came in the same read): keep reading
                    # what arrived before it.
                    pass
        except framelink.ConnectionClosed as exc:
            ended.put_nowait((got, exc))
            raise
        ended.put_nowait((got, None))

    async with framelink.serve(
        handler, "127.0.0.1", 0, framing="length:4,max=1MiB"
    ) as server:
        # A well-behaved raw peer, connected first.
        good_r, good_w = await asyncio.open_connection("127.0.0.1", server.port)
        good_w.write(ENC.encode(b"good-1"))
        await good_w.drain()
        dec = Decoder("length:4")
        frames: List[bytes] = []
        while not frames:
            frames += dec.feed(await asyncio.wait_for(good_r.read(65536), TIMEOUT))
        assert frames == [b"echo:good-1"]

        # The bad peer: two fine frames, then a 4 GiB length header, in one write.
        bad_r, bad_w = await asyncio.open_connection("127.0.0.1", server.port)
        bad_w.write(ENC.encode_many([b"one", b"two"]) + HUGE_HEADER + b"junk")
        await bad_w.drain()
        # The server closes the socket (echoes of the frames before the bad header may or may
        # not make it out first: the connection was already closing when they were sent).
        echoed = Decoder("length:4").feed(await asyncio.wait_for(_read_until_eof(bad_r), TIMEOUT))
        assert echoed in ([], [b"echo:one"], [b"echo:one", b"echo:two"])
        bad_w.close()

        # Only the bad connection's handler ends: it got both messages, then ProtocolError.
        got, exc = await asyncio.wait_for(ended.get(), TIMEOUT)
        assert got == [b"one", b"two"]
        assert isinstance(exc, framelink.ProtocolError), repr(exc)
        assert (exc.code, exc.code_name) in ((2, "protocol_error"), (5, "message_too_big"))
        # The framing's own error is the cause, with its numbers.
        cause = exc.__cause__
        assert isinstance(cause, framelink.FrameTooLarge), repr(cause)
        assert cause.length is not None and cause.length >= 0xFFFFFFFF, repr(cause)
        assert cause.limit >= 1 << 20, repr(cause)
        assert cause.offset == 2 * (4 + 3)  # the bad header's place in the stream

        # The good connection is unaffected.
        good_w.write(ENC.encode(b"good-2"))
        await good_w.drain()
        frames = []
        while not frames:
            frames += dec.feed(await asyncio.wait_for(good_r.read(65536), TIMEOUT))
        assert frames == [b"echo:good-2"]
        assert server.connections == 1
        assert ended.empty()
        good_w.close()


async def test_raw_client_bad_server_disconnected_with_protocol_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENC.encode_many([b"first", b"second"]) + HUGE_HEADER)
        await writer.drain()
        await _read_until_eof(reader)
        writer.close()

    bad = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = bad.sockets[0].getsockname()[1]
    log = EventLog()
    try:
        client = await framelink.connect(
            "127.0.0.1", port, framing="length:4,max=1MiB", max_attempts=1, on_event=log
        )
        try:
            # Messages before the bad header are delivered first...
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"first"
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"second"
            # ...then the connection ends, reported as a protocol error.
            with pytest.raises(framelink.ConnectionClosed) as info:
                await asyncio.wait_for(client.recv(), TIMEOUT)
            d = await log.wait(lambda e: isinstance(e, ev.Disconnected), seen_ok=True)
            assert d.kind == "ProtocolError"
            assert (d.code, d.code_name) in ((2, "protocol_error"), (5, "message_too_big"))
            assert d.by_peer is False
            assert d.error and "4294967" in d.error  # the declared length is in the error
            # A client that gave up says so, naming the protocol error as the last failure.
            assert "4294967" in str(info.value)
        finally:
            await client.close()
    finally:
        bad.close()


async def test_raw_client_discard_policy_reports_frame_discarded() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENC.encode_many([b"a", b"x" * 100, b"b"]))
        await writer.drain()
        await _read_until_eof(reader)
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    log = EventLog()
    try:
        async with framelink.connect(
            "127.0.0.1", port, framing="length:4,max=16,discard", on_event=log
        ) as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"a"
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"b"
            e = await log.wait(lambda e: isinstance(e, ev.FrameDiscarded), seen_ok=True)
            assert isinstance(e.error, framelink.FrameTooLarge)
            assert e.error.limit == 16 and e.error.length == 104
            assert client.connected
    finally:
        srv.close()


async def test_protocol_server_garbage_peer_closed_others_unaffected() -> None:
    closed = []

    async def handler(conn: framelink.Connection) -> None:
        try:
            async for m in conn:
                await conn.send(m)
        except framelink.ConnectionClosed as exc:
            closed.append(exc)
            raise

    async with framelink.serve(handler, "127.0.0.1", 0, handshake_timeout=5) as server:
        async with framelink.connect("127.0.0.1", server.port) as good:
            await good.send(b"before")
            assert await asyncio.wait_for(good.recv(), TIMEOUT) == b"before"
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
            await w.drain()
            # The server drops the garbage peer (possibly after telling it why).
            await asyncio.wait_for(_read_until_eof(r), TIMEOUT)
            w.close()
            await good.send(b"after")
            assert await asyncio.wait_for(good.recv(), TIMEOUT) == b"after"
            assert server.connections == 1
    # A garbage peer never reaches the handler, or reaches it as a protocol error.
    assert all(isinstance(e, framelink.ProtocolError) for e in closed if e.code == 2)


async def test_message_too_big_for_peer() -> None:
    got: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()

    async def handler(conn: framelink.Connection) -> None:
        try:
            async for m in conn:
                pass
        except framelink.ConnectionClosed as exc:
            got.set_result(exc)
            raise
        got.set_result(None)

    async with framelink.serve(handler, "127.0.0.1", 0, max_message_size=5000) as server:
        log = EventLog()
        async with framelink.connect(
            "127.0.0.1", server.port, max_attempts=1, on_event=log
        ) as client:
            # The client knows the server's limit from the handshake: refused locally...
            try:
                await client.send(b"x" * 10_000)
            except (framelink.EncodeError, framelink.ConnectionClosed, ValueError):
                pass
            else:
                # ...or sent and the server closes with message_too_big / a protocol error.
                d = await log.wait(lambda e: isinstance(e, ev.Disconnected), seen_ok=True)
                assert d.code in (2, 5), d
            # Either way nothing oversize reached the handler.
            if got.done():
                exc = got.result()
                assert exc is None or exc.code in (2, 5)
