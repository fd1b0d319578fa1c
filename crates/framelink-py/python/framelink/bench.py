"""Throughput of the asyncio client against plain asyncio, and idle memory per connection.

Run ``python -m framelink.bench`` (``--help`` for the options). It needs the ``framelink`` CLI
(``cargo build --release -p framelink-cli``): found with ``--framelink-bin``, ``$FRAMELINK_BIN``,
on ``PATH``, or as ``target/release/framelink`` under the current directory or a parent.

What it does:

- Starts two echo servers from the CLI as child processes, on 127.0.0.1 with any free port:
  ``framelink serve --framing length:4`` (raw mode: a 4-byte big-endian length, then the
  payload) and ``framelink serve`` (framelink protocol v1). Both are killed at the end.
- Measures one connection at a time, each in a fresh Python process (``--worker``, below), so
  that no run inherits another's heap, threads or event loop:

  ``streams``
      asyncio streams, length:4: ``writer.write(frame)`` per message, one ``await
      writer.drain()`` per batch; ``await reader.readexactly(4)`` then ``readexactly(n)``.
  ``protocol``
      an ``asyncio.Protocol``: ``data_received`` parses length:4 frames out of a ``bytearray``
      (``struct.unpack_from``, one copy per message through a ``memoryview``) and answers each
      batch with one ``transport.write(b"".join(frames))``.
  ``decoder``
      an ``asyncio.BufferedProtocol`` around framelink's sans-IO ``Decoder``: the socket reads
      straight into the decoder's buffer (``get_buffer`` / ``buffer_updated``, one native call
      per read returning every frame), each batch is answered with one
      ``transport.write(encoder.encode_many(payloads))``. This is the data path of the other
      design for the asyncio client (a ``BufferedProtocol`` driving the sans-IO machines in the
      event loop, no I/O thread); ``docs/ARCHITECTURE.md`` says why we chose the I/O thread.
  ``framelink-raw``
      ``framelink.connect(..., framing="length:4")`` to the same raw-mode server:
      ``send_many`` per batch, ``recv_many``.
  ``framelink-proto``
      ``framelink.connect(...)`` (protocol v1) to the protocol-mode server, same calls.
  ``loop-raw``, ``loop-proto``
      the whole design (1) data path: an ``asyncio.BufferedProtocol`` driving framelink's
      sans-IO connection machine (``_native.LoopMachine``: ``RawConnection`` with length:4, or
      the protocol v1 ``Connection``, heartbeats at their defaults) in the event loop, no I/O
      thread. Reads land in the machine's receive buffer; one native call per read returns the
      messages, the events, the bytes to write and the next deadline (one ``call_at`` timer);
      each batch is answered with one ``send_many`` call and one ``transport.write``. A
      prototype for measurement: no reconnect, backoff or sessions. Raw-mode and protocol-mode
      servers.
  ``*-uvloop``
      the same on uvloop (left out when uvloop is not installed).
  ``rust``
      ``framelink bench ADDR --json`` (the CLI's Rust client, two tokio threads) against the
      protocol-mode server.

- Every client follows the same load pattern as ``framelink bench``: a window of
  ``--window`` bytes (default 1 MiB: 16,384 messages of 64 B, 16 of 64 KiB) in flight, sent
  at the start; every batch of echoes received is checked and replaced by as many new
  messages (the streams client, which reads one message per ``await``, refills after each
  quarter of the window). Messages come from a pool of two windows of ready payloads whose
  first 8 bytes are their index in the pool (big-endian); every echo is checked against the
  message expected next (up to 4 KiB: equal to it; above: its length and index), and at the
  end the number received must equal the number sent. The pure-Python clients get their frames (header included) ready-made from
  the pool: framing costs them nothing, which favours them.
- A "message" is one round trip (as in ``framelink bench``): msgs/s counts echoes received
  during ``--duration`` seconds after ``--warmup``; MB/s is payload bytes each way (10^6).
- CPU per message, for a machine too busy for wall-clock rates to mean much: the client's
  (its process's CPU time over the measured interval, per echo) and the server's (the echo
  server process's CPU time over the whole worker run, warm-up included, per echo). With a
  core each, msgs/s is bounded by the larger of the two.
- ``--rounds N`` runs every variant N times, interleaved (round 1: every size, every variant;
  round 2: ...), and the tables give the median and min-max over rounds, and the ratios
  between variants taken within each round (median and min-max).
- Idle memory: one process opens ``--idle`` idle ``framelink.connect`` clients (protocol
  mode, heartbeats at their default 15 s) to the protocol-mode server, another as many
  ``asyncio.open_connection`` streams to the raw-mode server; each reports its RSS growth
  (``/proc/self/statm``) per connection, measured after one connection was already open (the
  I/O thread, the loop's wake-up descriptor) and all handshakes were done. A second run of
  each, under ``tracemalloc``, gives the part of that which is Python objects.

``--json`` prints one JSON object per run, then one per variant and size with the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

KIB = 1024
MIB = 1024 * 1024

PY_VARIANTS = (
    "streams", "protocol", "decoder", "framelink-raw", "framelink-proto", "loop-raw", "loop-proto",
)

# ---------------------------------------------------------------------------------------------
# The load: payload pool, checks, meter
# ---------------------------------------------------------------------------------------------


class BadEcho(Exception):
    """An echo that is not the message expected next (or a count that does not add up)."""


class Load:
    """The payloads, their frames and what each client needs to check echoes."""

    def __init__(self, size: int, window_bytes: int) -> None:
        if size < 8:
            raise ValueError("message size must be at least 8 bytes (the sequence number)")
        self.size = size
        #: Messages in flight.
        self.window = max(1, window_bytes // size)
        #: Pool of payloads: two windows, so that what is in flight is always distinct.
        self.pool_len = 2 * self.window
        filler = bytes((i * 7 + 13) & 0xFF for i in range(size - 8))
        pack = struct.Struct(">Q").pack
        self.prefixes: List[bytes] = [pack(i) for i in range(self.pool_len)]
        self.payloads: List[bytes] = [p + filler for p in self.prefixes]
        header = struct.pack(">I", size)
        self.frames: List[bytes] = [header + p for p in self.payloads]
        self.sent = 0
        self.received = 0

    def _slice(self, items: List[bytes], start: int, n: int) -> List[bytes]:
        s = start % self.pool_len
        if s + n <= self.pool_len:
            return items[s : s + n]
        return items[s:] + items[: n - (self.pool_len - s)]

    def next_payloads(self, n: int) -> List[bytes]:
        batch = self._slice(self.payloads, self.sent, n)
        self.sent += n
        return batch

    def next_frames(self, n: int) -> List[bytes]:
        batch = self._slice(self.frames, self.sent, n)
        self.sent += n
        return batch

    def check(self, messages: Sequence[bytes]) -> int:
        """Checks a batch of echoes in order; returns its length. Up to 4 KiB, each echo must
        equal the message sent (one list comparison: C loops, ``memcmp``); above, its length
        and its sequence number."""
        n = len(messages)
        if self.size <= 4096:
            ok = messages == self._slice(self.payloads, self.received, n)
        else:
            ok = [m[:8] for m in messages] == self._slice(self.prefixes, self.received, n) and (
                set(map(len, messages)) == {self.size}
            )
        if not ok:
            expected = self._slice(self.payloads, self.received, n)
            for i, (m, e) in enumerate(zip(messages, expected)):
                if len(m) != self.size or m[:8] != e[:8] or (self.size <= 4096 and m != e):
                    raise BadEcho(
                        f"echo #{self.received + i}: expected sequence {int.from_bytes(e[:8], 'big')} "
                        f"of {self.size} B, got {bytes(m[:8]).hex()}... of {len(m)} B"
                    )
        self.received += n
        if self.received > self.sent:
            raise BadEcho(f"{self.received} echoes for {self.sent} messages sent")
        return n

    @property
    def in_flight(self) -> int:
        return self.sent - self.received


class Meter:
    """Counts echoes; marks the start and the end of the measurement on the clock, checked at
    every batch (a client that never yields to the loop cannot miss it)."""

    def __init__(self, warmup: float, duration: float) -> None:
        now = time.perf_counter()
        self.t_start = now + warmup
        self.t_end = self.t_start + duration
        self.count = 0
        self.mark0: Optional[Tuple[int, float, float]] = None
        self.mark1: Optional[Tuple[int, float, float]] = None
        self.stop = False

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def add(self, n: int) -> None:
        self.count += n
        if self.stop:
            return
        now = time.perf_counter()
        if self.mark0 is None:
            if now >= self.t_start:
                self.mark0 = (self.count, now, self._cpu())
                self.t_end = now + (self.t_end - self.t_start)
        elif now >= self.t_end:
            self.mark1 = (self.count, now, self._cpu())
            self.stop = True

    def result(self, size: int) -> Dict[str, Any]:
        assert self.mark0 is not None and self.mark1 is not None
        c0, t0, cpu0 = self.mark0
        c1, t1, cpu1 = self.mark1
        secs = t1 - t0
        msgs = c1 - c0
        return {
            "messages": msgs,
            "elapsed_s": secs,
            "msgs_per_sec": msgs / secs,
            "mb_per_sec": msgs * size / secs / 1e6,
            # CPU time of this whole process (Python and framelink's I/O thread), per second.
            "client_cpu": (cpu1 - cpu0) / secs,
        }


# ---------------------------------------------------------------------------------------------
# The clients (each runs in its own worker process)
# ---------------------------------------------------------------------------------------------


async def _echo_loop(
    load: Load,
    meter_args: Tuple[float, float],
    recv: Callable[[], Awaitable[Sequence[bytes]]],
    send: Callable[[int], Awaitable[None]],
) -> Meter:
    """The load pattern of the coroutine clients: the window sent at the start, then every batch
    of echoes (``await recv()``) checked, counted and replaced by as many new messages
    (``await send(n)``), until the measurement is over and every echo is in."""
    meter = Meter(*meter_args)
    check, add = load.check, meter.add
    await send(load.window)
    while True:
        n = check(await recv())
        add(n)
        if meter.stop:
            if load.in_flight == 0:
                return meter
            continue
        await send(n)


async def run_streams(host: str, port: int, load: Load, meter_args: Tuple[float, float]) -> Meter:
    reader, writer = await asyncio.open_connection(host, port)
    readexactly = reader.readexactly
    write = writer.write
    chunk = max(1, load.window // 4)

    async def recv() -> List[bytes]:
        echoes = []
        for _ in range(min(chunk, load.in_flight)):
            header = await readexactly(4)
            echoes.append(await readexactly(int.from_bytes(header, "big")))
        return echoes

    async def send(n: int) -> None:
        for frame in load.next_frames(n):
            write(frame)
        await writer.drain()

    meter = await _echo_loop(load, meter_args, recv, send)
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass
    return meter


async def run_framelink(
    host: str, port: int, load: Load, meter_args: Tuple[float, float], framing: Optional[str]
) -> Meter:
    import framelink

    client = await framelink.connect(host, port, framing=framing)
    recv_many, send_many, window = client.recv_many, client.send_many, load.window
    try:
        return await _echo_loop(
            load, meter_args, lambda: recv_many(window), lambda n: send_many(load.next_payloads(n))
        )
    finally:
        await client.close()


class _EchoCallbacks(asyncio.BaseProtocol):
    """The load pattern of the event-loop (callback) clients: the window sent at the start
    (``_begin``), then every batch of echoes the client decodes handed to ``_received``:
    checked, counted and replaced by as many new messages; ``done`` is set when the measurement
    is over and every echo is in, or on failure. A client states how it reads and how it sends
    the next ``n`` messages (``_send``)."""

    def __init__(self, load: Load, meter_args: Tuple[float, float]) -> None:
        self.load = load
        self.meter_args = meter_args
        self.meter: Optional[Meter] = None
        self.done: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def _send(self, n: int) -> None:
        raise NotImplementedError

    def _begin(self) -> None:
        self.meter = Meter(*self.meter_args)
        self._send(self.load.window)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._begin()

    def _received(self, messages: List[bytes]) -> None:
        try:
            n = self.load.check(messages)
        except BadEcho as exc:
            if not self.done.done():
                self.done.set_exception(exc)
            self.transport.abort()
            return
        meter = self.meter
        assert meter is not None
        meter.add(n)
        if meter.stop:
            if self.load.in_flight == 0 and not self.done.done():
                self.done.set_result(None)
            return
        self._send(n)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("connection closed during the run"))


class LengthPrefixSplitter:
    """The pure-Python baseline's reader, as people write it by hand: 4-byte big-endian
    lengths read with ``struct.unpack_from``, a ``bytes`` per payload, the partial frame kept
    in a ``bytearray`` between reads. ``feed(data)`` returns the payloads now complete. (Also
    the baseline of ``benches/python/decode_feed.py``.)"""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.unpack_from = struct.Struct(">I").unpack_from

    def _parse(self, src: Any, end: int) -> Tuple[List[bytes], int]:
        unpack_from = self.unpack_from
        messages = []
        pos = 0
        while end - pos >= 4:
            (n,) = unpack_from(src, pos)
            stop = pos + 4 + n
            if stop > end:
                break
            messages.append(bytes(src[pos + 4 : stop]))
            pos = stop
        return messages, pos

    def feed(self, data: bytes) -> List[bytes]:
        buf = self.buf
        if buf:
            buf += data
            with memoryview(buf) as view:
                messages, pos = self._parse(view, len(buf))
            del buf[:pos]
        else:
            messages, pos = self._parse(data, len(data))
            if pos < len(data):
                buf += memoryview(data)[pos:]
        return messages


class _EchoProtocol(_EchoCallbacks, asyncio.Protocol):
    def __init__(self, load: Load, meter_args: Tuple[float, float]) -> None:
        super().__init__(load, meter_args)
        self.feed = LengthPrefixSplitter().feed

    def _send(self, n: int) -> None:
        self.transport.write(b"".join(self.load.next_frames(n)))

    def data_received(self, data: bytes) -> None:
        messages = self.feed(data)
        if messages:
            self._received(messages)


class _DecoderProtocol(_EchoCallbacks, asyncio.BufferedProtocol):
    """framelink's sans-IO codecs in the event loop: reads land in the decoder's buffer."""

    def __init__(self, load: Load, meter_args: Tuple[float, float]) -> None:
        from framelink import Decoder, Encoder

        super().__init__(load, meter_args)
        self.decoder = Decoder("length:4,max=16MiB")
        self.encode_many = Encoder("length:4").encode_many

    def _send(self, n: int) -> None:
        self.transport.write(self.encode_many(self.load.next_payloads(n)))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        messages = self.decoder.buffer_updated(nbytes)
        if messages:
            self._received(messages)


class _LoopProtocol(_EchoCallbacks, asyncio.BufferedProtocol):
    """A sans-IO machine (raw or protocol v1) driven by the event loop: no I/O thread."""

    def __init__(self, load: Load, meter_args: Tuple[float, float], framing: Optional[str]) -> None:
        from framelink._native import LoopMachine

        super().__init__(load, meter_args)
        #: Raw mode opens with TCP; protocol mode once the handshake's ``connected`` event comes.
        self.raw = framing is not None
        self.loop = asyncio.get_running_loop()
        options: Dict[str, Any] = {}
        if framing is not None:
            options["framing"] = framing
        self.machine = LoopMachine(options, self.loop.time())
        self.timer: Any = None
        self.timer_at: Optional[float] = None
        self.started = False

    def _send(self, n: int) -> None:
        data = self.machine.send_many(self.load.next_payloads(n))
        if data:
            self.transport.write(data)

    def _arm(self, deadline: Optional[float]) -> None:
        if deadline is None:
            return
        at = self.timer_at
        if at is not None and at <= deadline:
            return  # fires early, then re-arms: harmless
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = self.timer_at = None
        self._handle(self.machine.timeout())

    def _handle(self, out: Tuple[List[bytes], Any, Optional[bytes], Optional[float]]) -> None:
        messages, events, data, deadline = out
        if data:
            self.transport.write(data)
        if events:
            for ev in events:
                if ev[0] == "connected":
                    self._start()
                elif ev[0] == "closed" and not self.done.done():
                    self.done.set_exception(ConnectionError(f"closed: {ev}"))
        if deadline is not None:
            self._arm(deadline)
        if messages:
            self._received(messages)

    def _start(self) -> None:
        if self.started:
            return
        self.started = True
        self._begin()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._handle(self.machine.start())
        if self.raw:
            self._start()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.machine.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self.machine.buffer_updated(nbytes))

    def eof_received(self) -> Optional[bool]:
        self._handle(self.machine.eof())
        return True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().connection_lost(exc)


async def run_callbacks(host: str, port: int, factory: Callable[[], _EchoCallbacks]) -> Meter:
    """Runs one callback client (``factory``) to the end of its measurement."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(factory, host, port)
    try:
        await proto.done
    finally:
        transport.close()
    meter: Optional[Meter] = proto.meter
    assert meter is not None
    return meter


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------


def _run_loop(main: Callable[[], Any], use_uvloop: bool) -> Any:
    if not use_uvloop:
        return asyncio.run(main())
    import uvloop

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # pragma: no cover
    return asyncio.run(main())  # pragma: no cover


def worker_throughput(args: argparse.Namespace) -> Dict[str, Any]:
    host, port = parse_addr(args.addr)
    load = Load(args.size, args.window)
    meter_args = (args.warmup, args.duration)
    base = args.worker.replace("-uvloop", "")

    clients: Dict[str, Callable[[], Awaitable[Meter]]] = {
        "streams": lambda: run_streams(host, port, load, meter_args),
        "protocol": lambda: run_callbacks(host, port, lambda: _EchoProtocol(load, meter_args)),
        "decoder": lambda: run_callbacks(host, port, lambda: _DecoderProtocol(load, meter_args)),
        "framelink-raw": lambda: run_framelink(host, port, load, meter_args, "length:4"),
        "framelink-proto": lambda: run_framelink(host, port, load, meter_args, None),
        "loop-raw": lambda: run_callbacks(
            host, port, lambda: _LoopProtocol(load, meter_args, "length:4")
        ),
        "loop-proto": lambda: run_callbacks(
            host, port, lambda: _LoopProtocol(load, meter_args, None)
        ),
    }
    if base not in clients:
        raise SystemExit(f"unknown worker {args.worker!r}")
    main = clients[base]

    meter = _run_loop(main, args.worker.endswith("-uvloop"))
    if load.received != load.sent:
        raise BadEcho(f"{load.received} echoes for {load.sent} messages sent")
    result: Dict[str, Any] = meter.result(args.size)
    result.update(sent_total=load.sent, received_total=load.received)
    return result


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker_idle(args: argparse.Namespace) -> Dict[str, Any]:
    """Opens ``args.n`` idle connections; RSS (or, with ``--tracemalloc``, Python heap) growth."""
    import tracemalloc

    host, port = parse_addr(args.addr)
    n = args.n
    kind = args.worker

    async def open_one() -> Any:
        if kind == "idle-framelink":
            import framelink

            return await framelink.connect(host, port)
        _reader, writer = await asyncio.open_connection(host, port)
        return writer

    async def main() -> Dict[str, Any]:
        first = await open_one()  # one-time costs: I/O thread, wake-up descriptor, imports
        await asyncio.sleep(0.3)
        gc.collect()
        if args.tracemalloc:
            tracemalloc.start()
        rss0 = _rss()
        py0 = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
        conns: List[Any] = []
        for i in range(0, n, 100):
            conns += await asyncio.gather(*(open_one() for _ in range(min(100, n - i))))
        await asyncio.sleep(1.0)  # every handshake done, first heartbeat timers armed
        gc.collect()
        rss1 = _rss()
        py1 = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
        if args.tracemalloc:
            tracemalloc.stop()
        for c in conns + [first]:
            if kind == "idle-framelink":
                await c.close()
            else:
                c.close()
        return {
            "connections": n,
            "rss_before": rss0,
            "rss_after": rss1,
            "rss_per_conn": (rss1 - rss0) / n,
            "python_heap_per_conn": (py1 - py0) / n if args.tracemalloc else None,
        }

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# The parent: servers, rounds, tables
# ---------------------------------------------------------------------------------------------


def parse_addr(addr: str) -> Tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def find_framelink_bin(explicit: Optional[str]) -> str:
    candidates = [explicit, os.environ.get("FRAMELINK_BIN"), shutil.which("framelink")]
    for c in candidates:
        if c:
            if not os.access(c, os.X_OK):
                raise SystemExit(f"framelink bench: {c} is not an executable")
            return c
    d = os.path.abspath(os.getcwd())
    while True:
        c = os.path.join(d, "target", "release", "framelink")
        if os.access(c, os.X_OK):
            return c
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    raise SystemExit(
        "framelink bench: the framelink CLI was not found; build it with "
        "`cargo build --release -p framelink-cli` and pass --framelink-bin PATH"
    )


class EchoServer:
    """``framelink serve 127.0.0.1:0 ARGS`` as a child process."""

    def __init__(self, binary: str, extra: List[str]) -> None:
        self.cmd = [binary, "serve", "127.0.0.1:0", "-q", *extra]
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        self.addr = ""
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                break
            lines.append(line)
            if "listening on " in line:
                self.addr = line.split("listening on ", 1)[1].split()[0]
                self.banner = line.strip()
                break
        if not self.addr:
            self.stop()
            raise SystemExit(f"framelink bench: {' '.join(self.cmd)} did not start: {''.join(lines)}")
        # Keep reading stderr so that the child never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def cpu(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_worker(argv: List[str], timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "framelink.bench", *argv]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_rust(binary: str, addr: str, size: int, args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [
        binary, "bench", addr, "--size", str(size),
        "--duration", f"{int(args.duration * 1000)}ms",
        "--warmup", f"{int(args.warmup * 1000)}ms",
        "--window", str(args.window), "--json",
    ]  # fmt: skip
    timeout = args.warmup + args.duration + 30
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    r = json.loads(lines[-1])
    return {
        "messages": r["messages"],
        "elapsed_s": r["elapsed_s"],
        "msgs_per_sec": r["msgs_per_sec"],
        "mb_per_sec": r["mb_per_sec"],
        "sent_total": r["sent_total"],
        "received_total": r["received_total"],
    }


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_size(size: int) -> str:
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    if size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} B"


def summary(values: List[float]) -> Tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def ratios_for(variants: List[str]) -> List[Tuple[str, str]]:
    """(numerator, denominator) pairs worth a ratio, among the variants measured."""
    pairs = []
    for suffix in ("", "-uvloop"):
        for fl in ("decoder", "framelink-raw", "framelink-proto", "loop-raw", "loop-proto"):
            for base in ("streams", "protocol"):
                pairs.append((fl + suffix, base + suffix))
    for fl in ("framelink-raw", "framelink-proto", "framelink-raw-uvloop", "framelink-proto-uvloop"):
        pairs.append((fl, "rust"))
    return [(a, b) for a, b in pairs if a in variants and b in variants]


def print_tables(
    sizes: List[int], variants: List[str], runs: Dict[Tuple[int, str], List[Dict[str, Any]]],
    rounds: int, out: Any,
) -> Dict[Tuple[int, str], Dict[str, Any]]:
    summaries: Dict[Tuple[int, str], Dict[str, Any]] = {}
    for size in sizes:
        print(f"\n## {fmt_size(size)} messages, one connection, echo ({rounds} rounds)\n", file=out)
        print("| variant | msgs/s (median) | msgs/s (min-max) | MB/s each way (median) "
              "| MB/s (min-max) | client CPU (median) | client CPU/msg | server CPU/msg |", file=out)
        print("|---|---:|---:|---:|---:|---:|---:|---:|", file=out)
        for v in variants:
            ok = [r for r in runs.get((size, v), []) if "error" not in r]
            errors = [r["error"] for r in runs.get((size, v), []) if "error" in r]
            if not ok:
                print(f"| {v} | failed: {errors[:1]} | | | | |", file=out)
                continue
            m = summary([r["msgs_per_sec"] for r in ok])
            b = summary([r["mb_per_sec"] for r in ok])
            cpus = [r["client_cpu"] for r in ok if "client_cpu" in r]
            cpu = f"{statistics.median(cpus) * 100:.0f} %" if cpus else "-"
            note = f" ({len(errors)} failed)" if errors else ""
            cns = [r["client_ns_per_msg"] for r in ok if "client_ns_per_msg" in r]
            sns = [r["server_ns_per_msg"] for r in ok if "server_ns_per_msg" in r]
            cns_s = f"{statistics.median(cns):,.0f} ns" if cns else "-"
            sns_s = f"{statistics.median(sns):,.0f} ns" if sns else "-"
            print(f"| {v}{note} | {fmt_rate(m[0])} | {fmt_rate(m[1])}–{fmt_rate(m[2])} "
                  f"| {b[0]:,.1f} | {b[1]:,.1f}–{b[2]:,.1f} | {cpu} | {cns_s} | {sns_s} |", file=out)
            summaries[(size, v)] = {
                "msgs_per_sec": dict(zip(("median", "min", "max"), m)),
                "mb_per_sec": dict(zip(("median", "min", "max"), b)),
                "client_cpu_median": statistics.median(cpus) if cpus else None,
                "rounds": len(ok),
                "failed": errors,
            }
        rows = []
        for a, bname in ratios_for(variants):
            xs = runs.get((size, a), [])
            ys = runs.get((size, bname), [])
            per_round = [
                x["msgs_per_sec"] / y["msgs_per_sec"]
                for x, y in zip(xs, ys)
                if "error" not in x and "error" not in y
            ]
            if per_round:
                rows.append((a, bname, summary(per_round), sorted(per_round)))
                summaries[(size, f"{a}/{bname}")] = {
                    "ratio": dict(zip(("median", "min", "max"), summary(per_round))),
                    "per_round": per_round,
                }
        if rows:
            print(f"\n| ratio ({fmt_size(size)}, msgs/s, within each round) | median | min-max "
                  "| per round (sorted) |", file=out)
            print("|---|---:|---:|---|", file=out)
            for a, bname, (med, lo, hi), sr in rows:
                print(f"| {a} / {bname} | {med:.2f}× | {lo:.2f}–{hi:.2f} "
                      f"| {', '.join(f'{x:.2f}' for x in sr)} |", file=out)
    return summaries


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m framelink.bench",
        description="Echo throughput of framelink's asyncio client against asyncio streams, an "
        "asyncio Protocol and the Rust client, over one connection to the same `framelink "
        "serve` echo servers, and idle memory per connection.",
    )
    p.add_argument("--sizes", default="64,65536", help="message sizes in bytes, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--window", type=int, default=MIB, help="bytes in flight (default 1 MiB)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of: " + ", ".join(
                       list(PY_VARIANTS) + [v + "-uvloop" for v in PY_VARIANTS] + ["rust"]))
    p.add_argument("--no-uvloop", action="store_true", help="leave out the uvloop variants")
    p.add_argument("--idle", type=int, default=1000,
                   help="idle connections for the memory figures (0: skip)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    p.add_argument("--framelink-bin", default=None, help="path of the framelink CLI")
    # Internal: one measurement in this process.
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--addr", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        raise_nofile()
        if args.worker.startswith("idle-"):
            result = worker_idle(args)
        else:
            result = worker_throughput(args)
        print(json.dumps(result))
        return 0

    raise_nofile()
    # On SIGTERM, unwind (the servers are stopped in a finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = find_framelink_bin(args.framelink_bin)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    all_variants = list(PY_VARIANTS)
    uv = have_uvloop() and not args.no_uvloop
    if uv:
        all_variants += [v + "-uvloop" for v in PY_VARIANTS]
    all_variants.append("rust")
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in all_variants]
        if unknown:
            raise SystemExit(f"unknown or unavailable variant(s): {', '.join(unknown)}")
        variants = [v for v in all_variants if v in wanted]
    else:
        variants = all_variants
    log = sys.stderr
    if not uv and not args.no_uvloop:
        print("uvloop is not installed: the uvloop variants are left out", file=log)

    # The idle figures open --idle connections from this one address.
    lift = ["--max-connections-per-ip", str(max(64, args.idle + 16))]
    raw = EchoServer(binary, ["--framing", "length:4", *lift])
    proto = EchoServer(binary, lift)
    runs: Dict[Tuple[int, str], List[Dict[str, Any]]] = {}
    try:
        print(f"servers: {raw.banner}\n         {proto.banner}", file=log)
        timeout = args.warmup + args.duration + 60
        for rnd in range(1, args.rounds + 1):
            for size in sizes:
                for v in variants:
                    if v == "rust":
                        r = run_rust(binary, proto.addr, size, args)
                    else:
                        server = raw if v.startswith(("streams", "protocol", "decoder", "framelink-raw", "loop-raw")) else proto
                        addr = server.addr
                        cpu0 = server.cpu()
                        r = run_worker(
                            ["--worker", v, "--addr", addr, "--size", str(size),
                             "--duration", str(args.duration), "--warmup", str(args.warmup),
                             "--window", str(args.window)],
                            timeout,
                        )  # fmt: skip
                        if "error" not in r and r.get("received_total"):
                            # Over the whole worker (warm-up included): CPU per echoed message.
                            r["server_ns_per_msg"] = (server.cpu() - cpu0) / r["received_total"] * 1e9
                        if "error" not in r and r.get("msgs_per_sec"):
                            r["client_ns_per_msg"] = r["client_cpu"] / r["msgs_per_sec"] * 1e9
                    r.update(round=rnd, size=size, variant=v)
                    runs.setdefault((size, v), []).append(r)
                    if "error" in r:
                        print(f"round {rnd} {fmt_size(size):>6} {v:<24} FAILED: {r['error']}", file=log)
                    else:
                        cpu_note = ""
                        if "client_ns_per_msg" in r:
                            cpu_note = (f"  CPU/msg client {r['client_ns_per_msg']:,.0f} ns"
                                        f" server {r.get('server_ns_per_msg', 0):,.0f} ns")
                        print(f"round {rnd} {fmt_size(size):>6} {v:<24} "
                              f"{fmt_rate(r['msgs_per_sec']):>7} msgs/s {r['mb_per_sec']:9.1f} MB/s"
                              f"{cpu_note}", file=log)
                    if args.json:
                        print(json.dumps(r), flush=True)

        idle: Dict[str, Dict[str, Any]] = {}
        if args.idle > 0:
            for kind, addr in (("idle-framelink", proto.addr), ("idle-streams", raw.addr)):
                for traced in (False, True):
                    argv2 = ["--worker", kind, "--addr", addr, "--n", str(args.idle)]
                    if traced:
                        argv2.append("--tracemalloc")
                    r = run_worker(argv2, 120)
                    key = kind + ("-tracemalloc" if traced else "")
                    idle[key] = r
                    print(f"{key}: {r}", file=log)
    finally:
        raw.stop()
        proto.stop()

    out = sys.stdout
    if args.json:
        import io

        summaries = print_tables(sizes, variants, runs, args.rounds, io.StringIO())
        for (size, name), s in summaries.items():
            print(json.dumps({"summary": name, "size": size, **s}))
        for key, r in idle.items():
            print(json.dumps({"idle": key, **r}))
        return 0
    print_tables(sizes, variants, runs, args.rounds, out)
    if idle:
        print(f"\n## Idle connections ({args.idle}, one process, default event loop)\n", file=out)
        print("| client | RSS growth per connection | of which Python heap (tracemalloc) |", file=out)
        print("|---|---:|---:|", file=out)
        for kind, label in (("idle-framelink", "framelink.connect (protocol v1, heartbeats 15 s)"),
                            ("idle-streams", "asyncio.open_connection (streams)")):
            r = idle.get(kind, {})
            t = idle.get(kind + "-tracemalloc", {})
            rss = f"{r['rss_per_conn']:,.0f} B" if "rss_per_conn" in r else f"failed: {r.get('error')}"
            py = (f"{t['python_heap_per_conn']:,.0f} B" if t.get("python_heap_per_conn") is not None
                  else f"failed: {t.get('error')}")
            print(f"| {label} | {rss} | {py} |", file=out)
    return 0


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


if __name__ == "__main__":
    sys.exit(main())
