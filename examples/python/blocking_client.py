#!/usr/bin/env python3
"""framelink.blocking: a reconnecting client for code without asyncio (scripts, threads,
Flask/Django workers).

Heartbeats, dead-peer detection and reconnects run in framelink's own I/O thread while your
code blocks in ``recv(timeout=...)``: nothing has to be called periodically to keep the link
alive.

To run by itself, the example starts a framelink server in a background thread with its own
asyncio event loop (in real use the server is another process: ``echo_server.py`` or
``framelink serve``), then:

1. sends requests and waits for each reply with a timeout;
2. stops the server and starts it again on the same port: the client notices, reconnects with
   backoff, and the loop carries on.

    python examples/python/blocking_client.py
"""

import asyncio
import sys
import threading
import time

import framelink
import framelink.blocking
from framelink import events


class BackgroundServer:
    """A framelink server running in its own thread and event loop."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop
        self._stop: asyncio.Event
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @staticmethod
    async def handler(conn: framelink.Connection) -> None:
        async for request in conn:
            await conn.send(b"reply to " + request)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with framelink.serve(self.handler, "127.0.0.1", self.port) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()
        # Leaving `async with` closed the server: clients were told "going away".

    def start(self) -> "BackgroundServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def show(client: framelink.blocking.Client) -> None:
    """Prints the events since the last call: connects, disconnects, reconnects, RTT."""
    for event in client.take_events():
        if isinstance(event, events.Rtt):
            print(f"  event: rtt {event.latest * 1000:.3f} ms", flush=True)
        elif isinstance(event, (events.Connected, events.Disconnected, events.Reconnecting,
                                events.ConnectFailed)):
            print(f"  event: {event}", flush=True)


def main() -> int:
    server = BackgroundServer().start()
    print(f"server on port {server.port}", flush=True)

    with framelink.blocking.connect(
        "127.0.0.1", server.port,
        timeout=10.0,            # wait at most 10 s for the first connection
        ping_interval=0.5,       # heartbeat after 0.5 s of silence ...
        ping_timeout=1.0,        # ... dead if nothing arrives 1 s after it
        backoff_initial=0.05,    # reconnect: 0-50 ms, 0-100 ms, 0-200 ms ... (full jitter)
        backoff_max=1.0,
    ) as client:
        for i in range(5):
            client.send(b"request %d" % i)
            print(client.recv(timeout=5.0), flush=True)   # TimeoutError after 5 s
        time.sleep(0.8)                                    # quiet: a heartbeat measures RTT
        show(client)

        # The server goes away and comes back on the same port.
        port = server.port
        server.stop()
        try:
            client.recv(timeout=0.5)
        except TimeoutError:
            print("no reply while the server is down (TimeoutError)", flush=True)
        show(client)
        server = BackgroundServer(port).start()

        # send() waits while the client is between connections (up to its timeout).
        client.send(b"after the restart", timeout=10.0)
        reply = client.recv(timeout=10.0)
        print(reply, flush=True)
        show(client)
        if reply != b"reply to after the restart":
            print("FAIL: unexpected reply", flush=True)
            return 1

    server.stop()
    print("OK: blocking client sent, received, and reconnected after a server restart", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
