"""A blocking client, for scripts and threads that don't use asyncio.

Heartbeats, dead-peer detection, reconnects and sessions run in framelink's I/O thread while
your code blocks in ``recv``; nothing has to be called periodically::

    import framelink.blocking

    with framelink.blocking.connect("127.0.0.1", 7000) as client:
        client.send(b"hello")
        reply = client.recv(timeout=5.0)     # TimeoutError after 5 s
        for event in client.take_events():   # connected, rtt, disconnected, reconnecting ...
            print(event)

``recv`` and ``send`` release the GIL while they wait and can be interrupted with Ctrl-C.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Tuple, Union

from . import _native
from . import events as ev
from ._links import (
    DEFAULT,
    RECV_BATCH,
    Default,
    EventCallback,
    LinkState,
    PathLike,
    native_options,
)
from .errors import ConnectionClosed

__all__ = ["connect", "Client"]

BytesLike = Union[bytes, bytearray, memoryview]


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """``timeout`` seconds from now (``None``: no deadline); a negative or NaN timeout is a
    ``ValueError``, as in the native layer and the standard library."""
    if timeout is None:
        return None
    if not timeout >= 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout}")
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


class Client:
    """A reconnecting client with a blocking API. Made by :func:`connect`. One thread at a
    time should call ``recv``; ``send`` may be called from any thread."""

    def __init__(self, native: Any, on_event: Optional[EventCallback]) -> None:
        self._native = native
        self._state = LinkState(native, on_event)
        self._buf: Deque[bytes] = collections.deque()

    def _poll(self) -> None:
        self._state.poll()

    def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Blocks until the first connection is up. ``TimeoutError`` after ``timeout`` seconds;
        :class:`~framelink.ConnectionClosed` if the client gave up first."""
        deadline = _deadline(timeout)
        while True:
            self._poll()
            if self._state.connected_once:
                return
            if self._state.over:
                raise self._state.closed_error()
            if not self._native.wait(_remaining(deadline)) and deadline is not None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"not connected within {timeout} s")

    def send(self, message: BytesLike, timeout: Optional[float] = None) -> None:
        """Queues one message; blocks only while the send queue is full or the client is
        between connections (``TimeoutError`` after ``timeout`` seconds)."""
        if not self._native.try_send(message):
            self._native.send_blocking([message], timeout)

    def try_send(self, message: BytesLike) -> None:
        """Queues one message without blocking; :class:`~framelink.QueueFull` if the send
        queue has no room now, with its ``queued`` and ``limit`` bytes (both 0 while the client
        is between connections)."""
        self._native.send_now(message)

    def send_many(self, messages: Iterable[BytesLike], timeout: Optional[float] = None) -> None:
        """Queues messages in order, with one native call for the batch."""
        batch = messages if isinstance(messages, list) else list(messages)
        sent = self._native.try_send_many(batch)
        if sent < len(batch):
            self._native.send_blocking(batch[sent:], timeout)

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message. ``TimeoutError`` if none arrives within ``timeout`` seconds
        (``None``: wait for ever); :class:`~framelink.ConnectionClosed` once the client has
        stopped and every message was read; :class:`~framelink.SessionLost` where a session
        was lost (then reading goes on)."""
        return self.recv_many(1, timeout)[0]

    def recv_many(self, max_messages: int = RECV_BATCH, timeout: Optional[float] = None) -> List[bytes]:
        """Every message that has arrived, up to ``max_messages`` (waits for at least one)."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        deadline = _deadline(timeout)
        while True:
            if self._state.errors:
                raise self._state.errors.popleft()
            if self._buf:
                n = min(max_messages, len(self._buf))
                return [self._buf.popleft() for _ in range(n)]
            messages: List[bytes] = self._native.take_messages(max_messages)
            if messages:
                return messages
            self._poll()
            if self._state.errors:
                continue
            if self._state.over and not self._native.pending()[0]:
                raise self._state.closed_error()
            if not self._native.wait(_remaining(deadline)):
                raise TimeoutError(f"no message within {timeout} s")

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the client is closed (a normal end stops the loop)."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosed as exc:
                if self._state.ends_iteration(exc):
                    return
                raise

    def take_events(self) -> List[ev.Event]:
        """The events since the last call (connected, disconnected, rtt, session ...), oldest
        first; the last 1,024 are kept."""
        self._poll()
        taken = list(self._state.events)
        self._state.events.clear()
        return taken

    @property
    def connected(self) -> bool:
        """A connection is open now."""
        return bool(self._native.connected)

    @property
    def closed(self) -> bool:
        """The client has stopped."""
        self._poll()
        return self._state.over

    @property
    def rtt(self) -> Optional[ev.Rtt]:
        """The latest heartbeat round trip."""
        self._poll()
        return self._state.rtt

    @property
    def session_id(self) -> Optional[bytes]:
        """The session's 16-byte id, when sessions are on."""
        self._poll()
        return self._state.session_id

    def close(self, timeout: Optional[float] = 10.0) -> None:
        """Stops reconnecting, closes the connection gracefully (queued messages are written
        first) and waits up to ``timeout`` seconds for it to end."""
        self._native.close(0, "")
        deadline = _deadline(timeout)
        while True:
            self._poll()
            if self._state.over:
                return
            if not self._native.wait(_remaining(deadline)):
                return

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._state.over else ("connected" if self.connected else "connecting")
        return f"<framelink.blocking.Client {state}>"


def connect(
    host: str,
    port: int,
    *,
    timeout: Optional[float] = 30.0,
    framing: Optional[str] = None,
    ping_interval: Union[float, None, Default] = DEFAULT,
    ping_timeout: float = 10.0,
    ping: Optional[bytes] = None,
    pong: Optional[bytes] = None,
    pong_prefix: Optional[bytes] = None,
    pong_always: bool = False,
    answer: Optional[Tuple[bytes, bytes]] = None,
    idle_timeout: Optional[float] = None,
    frame_timeout: Optional[float] = None,
    reader_idle: Optional[float] = None,
    writer_idle: Optional[float] = None,
    all_idle: Optional[float] = None,
    max_message_size: Optional[int] = None,
    max_queued_bytes: Optional[int] = None,
    handshake_timeout: Optional[float] = None,
    sessions: bool = False,
    reconnect: bool = True,
    max_attempts: Optional[int] = None,
    backoff_initial: float = 0.1,
    backoff_max: float = 30.0,
    backoff_multiplier: float = 2.0,
    connect_timeout: float = 10.0,
    stable_after: float = 5.0,
    nodelay: bool = True,
    tls: bool = False,
    tls_ca: Optional[PathLike] = None,
    tls_server_name: Optional[str] = None,
    tls_cert: Optional[PathLike] = None,
    tls_key: Optional[PathLike] = None,
    on_event: Optional[Callable[[ev.Event], Any]] = None,
    wait: bool = True,
) -> Client:
    """Connects to ``host:port`` and stays connected; returns once the first connection is up
    (``TimeoutError`` after ``timeout`` seconds, ``ConnectionClosed`` if it gave up), or at once
    with ``wait=False``. The options are those of :func:`framelink.connect`; ``on_event`` is
    called in the thread that calls ``recv`` / ``take_events``."""
    options = native_options(
        framing=framing,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        ping=ping,
        pong=pong,
        pong_prefix=pong_prefix,
        pong_always=pong_always,
        answer=answer,
        idle_timeout=idle_timeout,
        frame_timeout=frame_timeout,
        reader_idle=reader_idle,
        writer_idle=writer_idle,
        all_idle=all_idle,
        max_message_size=max_message_size,
        max_queued_bytes=max_queued_bytes,
        handshake_timeout=handshake_timeout,
        sessions=sessions,
        reconnect=reconnect,
        max_attempts=max_attempts,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        backoff_multiplier=backoff_multiplier,
        connect_timeout=connect_timeout,
        stable_after=stable_after,
        nodelay=nodelay,
        tls=tls,
        tls_ca=tls_ca,
        tls_server_name=tls_server_name,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    client = Client(_native.connect(host, port, options), on_event)
    if wait:
        try:
            client.wait_connected(timeout)
        except BaseException:
            client.close(timeout=1.0)
            raise
    return client
