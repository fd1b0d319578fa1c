"""Shared fixtures: the ``framelink`` CLI binary, child processes that are always killed, and
small helpers for servers and events.

The CLI is found through ``FRAMELINK_BIN``, else ``<repo>/target/release/framelink``, else
``<repo>/target/debug/framelink``; if none exists it is built (``cargo build --release -p
framelink-cli``) once per session.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import pytest
from hypothesis import settings

import framelink
from framelink import events as ev

REPO = Path(__file__).resolve().parents[3]

#: Generous timeout for anything that should take well under a second on an idle machine.
TIMEOUT = 20.0

# No example database written into the source tree; no per-example deadline (a busy machine).
settings.register_profile("framelink", database=None, deadline=None)
settings.load_profile("framelink")


# -- the CLI binary ------------------------------------------------------------------------------


def _find_binary() -> Optional[Path]:
    env = os.environ.get("FRAMELINK_BIN")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "framelink"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def framelink_bin() -> Path:
    found = _find_binary()
    if found is not None:
        if not found.exists():
            pytest.fail(f"FRAMELINK_BIN={found} does not exist")
        return found
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("the framelink CLI is not built and cargo is not available")
    subprocess.run(
        [cargo, "build", "--release", "-p", "framelink-cli"],
        cwd=REPO,
        check=True,
        timeout=1800,
    )
    found = REPO / "target" / "release" / "framelink"
    assert found.is_file(), f"cargo build did not produce {found}"
    return found


# -- child processes -----------------------------------------------------------------------------


class Child:
    """A child process whose stdout and stderr lines are collected by threads (so its pipes
    never fill up), with waits for a line matching a pattern."""

    def __init__(self, argv: Sequence[str], stdin: bool = False) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.stdout: List[str] = []
        self.stderr: List[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, pipe: IO[bytes], sink: List[str]) -> None:
        for raw in iter(pipe.readline, b""):
            with self._cond:
                sink.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _find(self, pattern: "re.Pattern[str]", stream: str, start: int) -> Optional["re.Match[str]"]:
        lines = self.stdout if stream == "stdout" else self.stderr
        for line in lines[start:]:
            m = pattern.search(line)
            if m:
                return m
        return None

    def wait_for(
        self, pattern: str, stream: str = "stderr", timeout: float = TIMEOUT, start: int = 0
    ) -> "re.Match[str]":
        """Blocks until a line of ``stream`` (from index ``start``) matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = self._find(rx, stream, start)
                if m is not None:
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._threads):
                    break
                self._cond.wait(min(remaining, 0.5))
        raise AssertionError(
            f"no line matching {pattern!r} on {stream} of {self.argv} within {timeout}s "
            f"(exit code {self.proc.poll()}).\nstdout: {self.stdout[-20:]}\nstderr: {self.stderr[-20:]}"
        )

    async def await_line(
        self, pattern: str, stream: str = "stderr", timeout: float = TIMEOUT, start: int = 0
    ) -> "re.Match[str]":
        """``wait_for`` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.wait_for, pattern, stream, timeout, start)

    def count(self, pattern: str, stream: str = "stderr") -> int:
        rx = re.compile(pattern)
        with self._cond:
            lines = list(self.stdout if stream == "stdout" else self.stderr)
        return sum(1 for line in lines if rx.search(line))

    def send_stdin(self, data: bytes, close: bool = False) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        if close:
            self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


SpawnFn = Callable[..., Child]
#: ``cli_server(*args)`` / ``cli_proxy(upstream_port, *args)``: ``(child, port)``.
CliServerFn = Callable[..., Tuple[Child, int]]
CliProxyFn = Callable[..., Tuple[Child, int]]


@pytest.fixture
def spawn() -> Iterator[SpawnFn]:
    """Starts child processes; every one is killed at teardown."""
    children: List[Child] = []

    def start(*argv: str, stdin: bool = False) -> Child:
        child = Child([str(a) for a in argv], stdin=stdin)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


LISTEN_RE = r"listening on (\S+):(\d+)"


@pytest.fixture
def cli_server(framelink_bin: Path, spawn: SpawnFn) -> CliServerFn:
    """``cli_server(*args)`` starts ``framelink serve 127.0.0.1:0 *args`` and returns
    ``(child, port)``."""

    def start(*args: str, addr: str = "127.0.0.1:0") -> Tuple[Child, int]:
        child = spawn(framelink_bin, "serve", addr, *args)
        m = child.wait_for(r"\[serve\] " + LISTEN_RE)
        return child, int(m.group(2))

    return start


@pytest.fixture
def cli_proxy(framelink_bin: Path, spawn: SpawnFn) -> CliProxyFn:
    """``cli_proxy(upstream_port, *args)`` starts ``framelink proxy 127.0.0.1:0
    127.0.0.1:UPSTREAM *args`` and returns ``(child, port)``."""

    def start(upstream_port: int, *args: str) -> Tuple[Child, int]:
        child = spawn(framelink_bin, "proxy", "127.0.0.1:0", f"127.0.0.1:{upstream_port}", *args)
        m = child.wait_for(r"\[proxy\] " + LISTEN_RE)
        return child, int(m.group(2))

    return start


# -- network helpers -----------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (for a server that must be restarted on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def closed_port() -> int:
    """A port nothing listens on."""
    return free_port()


async def echo_handler(conn: framelink.Connection) -> None:
    async for message in conn:
        await conn.send(message)


async def wait_event(
    client: framelink.Client, predicate: Callable[[Any], bool], timeout: float = TIMEOUT
) -> Any:
    """The first event of ``client.events()`` for which ``predicate`` holds (consumes events)."""

    async def find() -> ev.Event:
        async for event in client.events():
            if predicate(event):
                return event
        raise AssertionError("the link ended before the expected event")

    return await asyncio.wait_for(find(), timeout)


E = TypeVar("E")


class EventLog:
    """An ``on_event`` callback that records events and lets a test await one."""

    def __init__(self) -> None:
        self.events: List[ev.Event] = []
        self._waiters: List[Tuple[Callable[[ev.Event], bool], "asyncio.Future[ev.Event]"]] = []

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(event):
                fut.set_result(event)

    def of(self, kind: "type[E]") -> List[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(
        self, predicate: Callable[[Any], bool], timeout: float = TIMEOUT, *, seen_ok: bool = False
    ) -> Any:
        """Waits for an event for which ``predicate`` holds; with ``seen_ok`` an event already
        recorded counts."""
        if seen_ok:
            for e in self.events:
                if predicate(e):
                    return e
        fut: "asyncio.Future[ev.Event]" = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove(entry)


