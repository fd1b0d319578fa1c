#!/usr/bin/env python3
"""Exactly-once delivery across a link that keeps breaking: framelink sessions.

Reconnecting is not enough on a flaky link: messages in flight when the connection dies are
lost, and resending them blindly duplicates the ones that did arrive. With ``sessions=True`` at
both ends, framelink numbers every message, keeps it until the other side acknowledges it, and
after a reconnect each side resends exactly what the other has not delivered.

This example runs three things in one process:

    client (sessions=True)  -->  flaky proxy (cuts the TCP connection every ~50 KB)  -->  server
                                                                              (sessions=True)

The client sends 5,000 numbered messages; the server checks each arrives once and in order,
and echoes it with ``Server.send_to_session`` (which reaches the client on whatever connection
it has by then, or waits in the session while it has none); the client checks the echoes the
same way. The proxy resets the connection (RST) again and again along the way.

    python examples/python/sessions_flaky_link.py [--messages 5000] [--cut-every 50000]
"""

import argparse
import asyncio
import random
import socket
import struct
import sys
import time

import framelink
from framelink import events


# --- A tiny flaky TCP proxy --------------------------------------------------------------------

class FlakyProxy:
    """Forwards each connection to the upstream port and resets it (RST, both sides) once
    ``cut_every`` bytes went through it, both directions together."""

    def __init__(self, upstream_port: int, cut_every: int) -> None:
        self.upstream_port = upstream_port
        self.cut_every = cut_every
        self.cuts = 0
        self.server: asyncio.AbstractServer

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            c_writer.close()
            return
        budget = [self.cut_every]
        writers = (c_writer, u_writer)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await reader.read(16384)
                    if not data:
                        break
                    allowed = min(len(data), budget[0])
                    budget[0] -= allowed
                    writer.write(data[:allowed])
                    await writer.drain()
                    if budget[0] == 0:
                        self._cut(writers)
                        return
            except (ConnectionError, OSError):
                pass
            for w in writers:
                w.close()

        await asyncio.gather(pipe(c_reader, u_writer), pipe(u_reader, c_writer))

    def _cut(self, writers: "tuple[asyncio.StreamWriter, ...]") -> None:
        self.cuts += 1
        for w in writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: closing sends RST instead of FIN, as a crashing middlebox would
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            w.transport.abort()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


# --- The check: numbered messages, each exactly once, in order --------------------------------

def make_message(i: int, rng: random.Random) -> bytes:
    return b"%08d:" % i + rng.randbytes(rng.randrange(200))


class InOrder:
    """Checks that messages 0, 1, 2 ... arrive once each, in order."""

    def __init__(self, name: str) -> None:
        self.name, self.next = name, 0
        self.errors: "list[str]" = []

    def check(self, message: bytes) -> None:
        seq = int(message[:8])
        if seq != self.next and len(self.errors) < 5:
            kind = "duplicate" if seq < self.next else "gap"
            self.errors.append(f"{self.name}: got #{seq}, expected #{self.next} ({kind})")
        self.next = seq + 1


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--cut-every", type=int, default=50_000, help="bytes per connection")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    messages = [make_message(i, rng) for i in range(args.messages)]

    at_server = InOrder("server")
    server_ref: "list[framelink.Server]" = []

    async def handler(conn: framelink.Connection) -> None:
        server = server_ref[0]
        session_id = conn.session_id
        async for message in conn:
            at_server.check(message)
            session_id = session_id or conn.session_id
            assert session_id is not None, "sessions are on: every connection carries one"
            # Echo by session, not by connection: if this connection dies, the echo still
            # reaches the client on its next connection. (conn.send does the same on a
            # connection with a session; send_to_session also works from anywhere else.)
            await server.send_to_session(session_id, message)

    async with framelink.serve(handler, "127.0.0.1", 0, sessions=True, session_ttl=30,
                               ping_interval=0.5, ping_timeout=1.0) as server:
        server_ref.append(server)
        proxy = FlakyProxy(server.port, args.cut_every)
        proxy_port = await proxy.start()
        print(f"server on port {server.port}, flaky proxy on port {proxy_port} "
              f"(cuts every {args.cut_every:,} bytes)", flush=True)

        reconnects, resumed, resent = 0, 0, 0

        def on_event(event: events.Event) -> None:
            nonlocal reconnects, resumed, resent
            if isinstance(event, events.Reconnecting):
                reconnects += 1
            elif isinstance(event, events.SessionStarted) and event.status == "resumed":
                resumed += 1
                resent += event.resending

        started = time.monotonic()
        async with framelink.connect(
            "127.0.0.1", proxy_port,
            sessions=True,            # number, acknowledge and resend: exactly once
            ping_interval=0.5,        # find a dead link in <= 1.5 s even without a RST
            ping_timeout=1.0,
            backoff_initial=0.02,     # reconnect fast: the cuts are many
            backoff_max=0.2,
            on_event=on_event,
        ) as client:

            async def sender() -> None:
                for i in range(0, len(messages), 50):
                    # While the client is between connections this waits; nothing is lost.
                    await client.send_many(messages[i:i + 50])

            send_task = asyncio.create_task(sender())
            at_client = InOrder("client")
            while at_client.next < len(messages):
                try:
                    batch = await asyncio.wait_for(client.recv_many(), timeout=30)
                except framelink.SessionLost as exc:   # only if the server lost the session
                    print(f"FAIL: {exc}", flush=True)
                    return 1
                for echo in batch:
                    at_client.check(echo)
            await send_task
        elapsed = time.monotonic() - started
        await proxy.close()

    print(f"{len(messages)} messages each way in {elapsed:.2f} s: {proxy.cuts} cuts, "
          f"{reconnects} reconnects, {resumed} sessions resumed, {resent} messages resent",
          flush=True)
    problems = at_server.errors + at_client.errors
    if at_server.next != len(messages):
        problems.append(f"server got up to #{at_server.next - 1} of {len(messages)}")
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems), flush=True)
        return 1
    if proxy.cuts == 0:
        print("FAIL: the proxy never cut the link (raise --messages or lower --cut-every)")
        return 1
    print(f"OK: every message arrived exactly once, in order, both ways, across "
          f"{reconnects} reconnects", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
