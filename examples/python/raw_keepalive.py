#!/usr/bin/env python3
"""Raw mode: keep a connection to an existing (non-framelink) server alive.

Many servers already have their own framing and heartbeat, say a 4-byte length prefix and a
"PING" message answered with "PONG". framelink can speak that protocol as it is
(``framing="length:4"``), send the server's own ping after ``ping_interval`` of silence,
recognise its pong (RTT samples), declare it dead when nothing at all comes back within
``ping_timeout``, and reconnect with backoff. The server is not changed at all.

This example starts such a "legacy" server in pure asyncio (no framelink), then:

1. exchanges a few messages with it and shows heartbeat RTT samples while the link is quiet;
2. asks the server to freeze: the process stops answering but its socket stays open, which no
   TCP-level mechanism notices (the kernel still ACKs). framelink's heartbeat does, within
   ping_interval + ping_timeout, and reconnects;
3. talks to the server again over the new connection.

    python examples/python/raw_keepalive.py
"""

import asyncio
import struct
import sys
import time

import framelink
from framelink import events

PING_INTERVAL = 0.3   # seconds of silence before framelink sends b"PING"
PING_TIMEOUT = 0.5    # then this long for anything at all to arrive, or the server is dead


# --- The existing server: length:4 framing, PING -> PONG, anything else is echoed ------------

async def legacy_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        stopping: asyncio.Event) -> None:
    def reply(payload: bytes) -> None:
        writer.write(struct.pack(">I", len(payload)) + payload)

    try:
        while True:
            header = await reader.readexactly(4)            # the hand-written way: exactly 4
            (length,) = struct.unpack(">I", header)         # bytes of length, then exactly
            payload = await reader.readexactly(length)      # that many bytes of payload
            if payload == b"PING":
                reply(b"PONG")
            elif payload == b"FREEZE":
                # A hung process: the connection stays open, nothing is read or answered.
                await stopping.wait()
                break
            else:
                reply(b"echo: " + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass                                                # the client went away
    finally:
        writer.close()


# --- The framelink client ---------------------------------------------------------------------

def on_event(event: events.Event) -> None:
    if isinstance(event, events.Connected):
        print(f"[client] connected to {event.address} (attempt {event.attempt})", flush=True)
    elif isinstance(event, events.Rtt):
        print(f"[client] rtt {event.latest * 1000:.3f} ms (smoothed {event.smoothed * 1000:.3f} ms, "
              f"{event.samples} samples)", flush=True)
    elif isinstance(event, events.Disconnected):
        print(f"[client] disconnected ({event.kind}, code {event.code_name}): {event.description}",
              flush=True)
    elif isinstance(event, events.Reconnecting):
        print(f"[client] reconnecting: attempt {event.attempt} in {event.delay * 1000:.0f} ms",
              flush=True)


async def main() -> int:
    stopping = asyncio.Event()
    server = await asyncio.start_server(
        lambda r, w: legacy_server(r, w, stopping), "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"[legacy] length:4 server with PING/PONG on {host}:{port}", flush=True)

    async with framelink.connect(
        host,
        port,
        framing="length:4,max=1MiB",   # raw mode: the server's own framing
        ping=b"PING",                  # the server's heartbeat request ...
        pong=b"PONG",                  # ... and its answer (not delivered as a message)
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        backoff_initial=0.05,
        backoff_max=1.0,
        on_event=on_event,
    ) as client:
        # 1. Messages, then a quiet second: heartbeats run and measure the RTT.
        for text in (b"hello", b"world"):
            await client.send(text)
            print(f"[client] got {await asyncio.wait_for(client.recv(), 5)!r}", flush=True)
        await asyncio.sleep(1.0)
        if client.rtt is None:
            print("FAIL: no RTT sample from the heartbeats", flush=True)
            return 1

        # 2. The server freezes. Wait for framelink to notice and reconnect.
        frozen_at = time.monotonic()
        await client.send(b"FREEZE")
        detected = None
        async for event in client.events():   # every event so far, then new ones as they come
            if isinstance(event, events.Disconnected) and event.kind == "PeerDead":
                detected = time.monotonic() - frozen_at
                print(f"[client] dead server found after {detected:.3f} s "
                      f"(bound: ping_interval + ping_timeout = {PING_INTERVAL + PING_TIMEOUT} s, "
                      f"plus scheduling)", flush=True)
            if detected is not None and isinstance(event, events.Connected):
                break

        # 3. The new connection works.
        await client.send(b"again")
        print(f"[client] got {await asyncio.wait_for(client.recv(), 5)!r}", flush=True)

    stopping.set()
    server.close()
    await server.wait_closed()
    if detected is None or detected > PING_INTERVAL + PING_TIMEOUT + 1.0:
        print("FAIL: the frozen server was not detected in time", flush=True)
        return 1
    print("OK: raw-mode heartbeats kept the link alive, found the frozen server and reconnected",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
