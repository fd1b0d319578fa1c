#!/usr/bin/env python3
"""An asyncio client for echo_server.py: sends messages of random sizes, from 0 bytes to
256 KiB, and checks that each comes back whole, once, and in order.

    python examples/python/echo_client.py --port 7000      # against a running echo_server.py
    python examples/python/echo_client.py --self-test      # starts the server in this process

Exit status 0 when every echo matched, 1 otherwise.
"""

import argparse
import asyncio
import os
import random
import sys
from contextlib import AsyncExitStack

import framelink
from framelink import events

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from echo_server import echo  # noqa: E402  (the server's handler, for --self-test)


def on_event(event: events.Event) -> None:
    """Called in the event loop for every event: connects, disconnects, reconnects, RTT."""
    if isinstance(event, events.Connected):
        print(f"[client] connected to {event.address} (attempt {event.attempt})", flush=True)
    elif isinstance(event, events.Disconnected):
        print(f"[client] disconnected: {event.description}", flush=True)
    elif isinstance(event, events.Reconnecting):
        print(f"[client] reconnecting: attempt {event.attempt} in {event.delay * 1000:.0f} ms", flush=True)
    elif isinstance(event, events.Rtt):
        print(f"[client] rtt {event.latest * 1000:.3f} ms (smoothed {event.smoothed * 1000:.3f} ms)", flush=True)


async def run(host: str, port: int, count: int, seed: int) -> int:
    rng = random.Random(seed)
    # Mostly small messages, some large ones: a 256 KiB message spans many TCP reads (拆包),
    # many small ones share one read (粘包). Neither is visible here.
    sizes = [rng.choice([0, 1, 16, 100, 1000, rng.randrange(300_000)]) for _ in range(count)]
    sent = [rng.randbytes(n) for n in sizes]

    async with framelink.connect(
        host,
        port,
        ping_interval=0.5,     # short, so that this short run shows an RTT sample
        ping_timeout=2.0,
        max_attempts=5,        # give up if the server is not there (default: retry forever)
        on_event=on_event,
    ) as client:

        async def sender() -> None:
            for i in range(0, count, 100):
                # send_many: one call for a batch; waits only if the send queue is full.
                await client.send_many(sent[i:i + 100])

        send_task = asyncio.create_task(sender())
        received = 0
        while received < count:
            # recv_many: every message that has arrived (at least one), one call per batch.
            for message in await asyncio.wait_for(client.recv_many(), timeout=30):
                if message != sent[received]:
                    print(f"[client] FAIL: echo {received} differs "
                          f"({len(message)} bytes, sent {len(sent[received])})", flush=True)
                    return 1
                received += 1
        await send_task

        # Stay quiet for a moment: heartbeats only run when the link is idle.
        await asyncio.sleep(1.2)
        rtt = client.rtt
        rtt_text = f"{rtt.smoothed * 1000:.3f} ms" if rtt else "n/a"
        print(f"[client] OK: {count} messages ({sum(sizes):,} bytes) echoed exactly, "
              f"in order; smoothed rtt {rtt_text}", flush=True)
    return 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--count", type=int, default=2000, help="messages to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--self-test", action="store_true",
                        help="start an echo server in this process on a free port and test against it")
    args = parser.parse_args()

    async with AsyncExitStack() as stack:
        host, port = args.host, args.port
        if args.self_test:
            server = await stack.enter_async_context(framelink.serve(echo, "127.0.0.1", 0))
            host, port = server.address
            print(f"[client] self-test: echo server on {host}:{port}", flush=True)
        try:
            return await run(host, port, args.count, args.seed)
        except framelink.ConnectionClosed as exc:   # gave up (max_attempts), or closed
            print(f"[client] FAIL: {type(exc).__name__}: {exc}", flush=True)
        except asyncio.TimeoutError:
            print("[client] FAIL: no echo within 30 s", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
