#!/usr/bin/env python3
"""An asyncio echo server on framelink.

Every message a client sends comes back to it, exactly as sent, whatever TCP did to the bytes
on the way (粘包/拆包). Heartbeats find clients that vanished without closing (half-open
connections) and evict them.

    python examples/python/echo_server.py --port 7000                   # until Ctrl-C
    python examples/python/echo_server.py --port 0 --max-duration 30    # any free port, 30 s

Then, in another terminal: ``python examples/python/echo_client.py --port 7000``.
"""

import argparse
import asyncio
import signal
import sys

import framelink


async def echo(conn: framelink.Connection) -> None:
    """The handler: runs once per accepted connection, in its own task."""
    host, port = conn.peer
    print(f"[server] +conn #{conn.id} from {host}:{port}", flush=True)
    count = 0
    try:
        # One item per message, never a piece of one and never two glued together.
        # The loop ends quietly when the client closes normally; a dead peer or a protocol
        # error raises ConnectionClosed (PeerDead, ProtocolError), caught below.
        async for message in conn:
            await conn.send(message)
            count += 1
    except framelink.ConnectionClosed as exc:
        print(f"[server] -conn #{conn.id}: {type(exc).__name__}: {exc}", flush=True)
        return
    print(f"[server] -conn #{conn.id} closed by the client after {count} messages", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000, help="0: any free port (printed)")
    parser.add_argument("--max-duration", type=float, default=None,
                        help="stop gracefully after this many seconds (default: run until Ctrl-C)")
    args = parser.parse_args()

    # Ctrl-C / SIGTERM: stop gracefully.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform
            pass

    async with framelink.serve(
        echo,
        args.host,
        args.port,
        ping_interval=5.0,     # ping a client after 5 s of silence ...
        ping_timeout=5.0,      # ... and drop it if nothing arrives 5 s later: dead in <= 10 s
        idle_timeout=300.0,    # evict connections that carried no message for 5 minutes
    ) as server:
        host, port = server.address
        # Tests and scripts read this line to learn the port.
        print(f"[server] listening on {host}:{port}", flush=True)

        try:
            await asyncio.wait_for(stop.wait(), timeout=args.max_duration)
        except asyncio.TimeoutError:
            pass
        print(f"[server] shutting down: {server.stats()}", flush=True)
        # Leaving the `async with` closes the server: clients are told "going away" after
        # their queued messages, and they reconnect elsewhere (or later).
    print("[server] stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
