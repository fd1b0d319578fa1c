"""asyncio API: a reconnecting client (:func:`connect`) and a server (:func:`serve`).

The network side runs in framelink's Rust I/O thread (framing, heartbeats, reconnects with
backoff, sessions, limits); the event loop is woken through one file descriptor and takes
messages in batches, so Python is crossed once per batch, never per message. Works on any
asyncio loop that supports ``add_reader`` (the default loop on Unix, uvloop).

Client::

    import asyncio, framelink

    async def main():
        async with framelink.connect("127.0.0.1", 7000) as client:
            await client.send(b"hello")
            print(await client.recv())

    asyncio.run(main())

Server::

    async def echo(conn):
        async for message in conn:
            await conn.send(message)

    async def main():
        async with framelink.serve(echo, "127.0.0.1", 7000) as server:
            await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

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

__all__ = ["connect", "serve", "Client", "Connection", "Server"]

logger = logging.getLogger("framelink")

BytesLike = Union[bytes, bytearray, memoryview]


class _Hub:
    """Wakes the objects of one event loop when the I/O thread has something for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.native = _native.Hub()
        self._objects: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
        self._next = 1
        loop.add_reader(self.native.fileno(), self._dispatch)

    def register(self, obj: Any) -> int:
        token = self._next
        self._next += 1
        self._objects[token] = obj
        return token

    def _dispatch(self) -> None:
        for token in self.native.take_ready():
            obj = self._objects.get(token)
            if obj is not None:
                obj._wake()


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub]" = weakref.WeakKeyDictionary()


def _hub(loop: asyncio.AbstractEventLoop) -> _Hub:
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = _Hub(loop)
    return hub


def _release(waiters: List["asyncio.Future[None]"]) -> None:
    """Wakes every task waiting in ``waiters``."""
    for w in waiters:
        if not w.done():
            w.set_result(None)
    waiters.clear()


async def _wait(loop: asyncio.AbstractEventLoop, waiters: List["asyncio.Future[None]"]) -> None:
    """Waits until ``_release(waiters)``; a cancelled wait leaves no future behind."""
    fut = loop.create_future()
    waiters.append(fut)
    try:
        await fut
    finally:
        if fut in waiters:
            waiters.remove(fut)


class _Link:
    """Messages, sends, events and closing of one native link on one event loop."""

    def __init__(self, native: Any, on_event: Optional[EventCallback]) -> None:
        self._loop = asyncio.get_running_loop()
        self._native = native
        self._state = LinkState(native, on_event)
        self._buf: Deque[bytes] = collections.deque()
        self._waiters: List["asyncio.Future[None]"] = []
        self._ops: Dict[int, "asyncio.Future[Any]"] = {}
        self._slow_sends = 0
        self._event_waiters: List["asyncio.Future[None]"] = []
        self._events_taken = 0
        self._over: "asyncio.Future[None]" = self._loop.create_future()
        native.set_waker(_hub(self._loop).native, _hub(self._loop).register(self))

    # -- waking ---------------------------------------------------------------------------

    def _wake(self) -> None:
        new = self._state.poll()
        for op, result in list(self._state.done.items()):
            fut = self._ops.pop(op, None)
            del self._state.done[op]
            if fut is not None and not fut.done():
                fut.set_result(result)
        if new:
            self._on_events(new)
            _release(self._event_waiters)
        if self._state.over and not self._over.done():
            self._over.set_result(None)
            _release(self._event_waiters)
        _release(self._waiters)

    def _on_events(self, new: List[ev.Event]) -> None:
        """Subclasses react to events here."""

    # -- receiving --------------------------------------------------------------------------

    async def recv(self) -> bytes:
        """The next message. Raises :class:`~framelink.ConnectionClosed` (or ``PeerDead``,
        ``ProtocolError``) once the connection is over and every message before the end was
        taken; :class:`~framelink.SessionLost` where a session was lost (then goes on)."""
        while True:
            if self._state.errors:
                raise self._state.errors.popleft()
            if self._buf:
                return self._buf.popleft()
            messages = self._native.take_messages(RECV_BATCH)
            if messages:
                self._buf.extend(messages)
                continue
            if self._check_over():
                raise self._state.closed_error()
            await _wait(self._loop, self._waiters)

    async def recv_many(self, max_messages: int = RECV_BATCH) -> List[bytes]:
        """Every message that has arrived, up to ``max_messages`` (at least one: waits for it).
        One call per batch is the fast way to receive many small messages."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        while True:
            if self._state.errors:
                raise self._state.errors.popleft()
            if self._buf:
                n = min(max_messages, len(self._buf))
                return [self._buf.popleft() for _ in range(n)]
            messages: List[bytes] = self._native.take_messages(max_messages)
            if messages:
                return messages
            if self._check_over():
                raise self._state.closed_error()
            await _wait(self._loop, self._waiters)

    def _check_over(self) -> bool:
        """Over, with no message left and no exception to raise first."""
        if not self._state.over:
            self._wake()
        if self._state.errors:
            return False
        count, _ = self._native.pending()
        return self._state.over and not count

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed as exc:
            if self._state.ends_iteration(exc):
                raise StopAsyncIteration from None
            raise

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: BytesLike) -> None:
        """Queues one message. Returns at once while the send queue has room; waits only on
        backpressure (and, for a client, while it is between connections). Cancelling a waiting
        ``send`` does not withdraw the message: it may still be sent."""
        if self._slow_sends == 0 and self._native.try_send(message):
            return
        await self._send_slow([message], 0)

    async def send_many(self, messages: Iterable[BytesLike]) -> None:
        """Queues messages in order: one native call for the whole batch."""
        batch = messages if isinstance(messages, list) else list(messages)
        sent = 0 if self._slow_sends else self._native.try_send_many(batch)
        if sent < len(batch):
            await self._send_slow(batch, sent)

    def try_send(self, message: BytesLike) -> None:
        """Queues one message without waiting; :class:`~framelink.QueueFull` if there is no
        room now, with the send queue's ``queued`` and ``limit`` bytes (both 0 while a client
        has no connection), and also while earlier ``send`` calls wait for room (this message
        may not pass them)."""
        self._native.send_now(message, self._slow_sends > 0)

    async def _send_slow(self, batch: List[BytesLike], skip: int) -> None:
        self._slow_sends += 1
        try:
            result = await self._op(self._native.send_async(batch, skip))
        finally:
            self._slow_sends -= 1
        if result is not None:
            raise result

    def _op(self, op: int) -> "asyncio.Future[Any]":
        fut = self._loop.create_future()
        if op in self._state.done:
            fut.set_result(self._state.done.pop(op))
        else:
            self._ops[op] = fut
        return fut

    # -- events and the end -----------------------------------------------------------------

    async def events(self) -> AsyncIterator[ev.Event]:
        """The events (connected, disconnected, reconnecting, rtt, session ...) in order, from
        the oldest kept (the last 1,024 are kept while nobody iterates), until the link is
        over. One consumer at a time."""
        while True:
            while self._state.events:
                yield self._state.events.popleft()
            if self._state.over:
                return
            await _wait(self._loop, self._event_waiters)

    async def wait_closed(self) -> None:
        """Waits until the link is over (closed by either side, or a client stopped)."""
        if not self._over.done():
            self._wake()
        await asyncio.shield(self._over)

    @property
    def closed(self) -> bool:
        """The link is over: nothing more will arrive (messages may still be waiting)."""
        return self._state.over

    @property
    def rtt(self) -> Optional[ev.Rtt]:
        """The latest heartbeat round trip, or ``None`` before the first."""
        return self._state.rtt

    @property
    def session_id(self) -> Optional[bytes]:
        """The 16-byte id of the session this link carries, when sessions are on."""
        if self._state.session_id is None and not self._state.over:
            # recv() takes messages without taking events: the session event that came before
            # the first message may not have been read yet.
            self._wake()
        return self._state.session_id

    async def __aenter__(self) -> "_Link":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError


class Connection(_Link):
    """A connection accepted by a :class:`Server`, handed to the handler.

    ``async for message in conn`` reads until the peer closes; ``await conn.send(m)`` answers.
    """

    def __init__(
        self,
        native: Any,
        on_event: Optional[EventCallback] = None,
        server: Optional["Server"] = None,
    ) -> None:
        super().__init__(native, on_event)
        self._server = server

    def _session_route(self) -> Optional[bytes]:
        """The session to queue in when this connection is gone (sessions on), else None."""
        if self._server is None or not self._server._sessions:
            return None
        return self.session_id

    async def send(self, message: BytesLike) -> None:
        """Queues one message (see :meth:`Client.send`). On a connection that carries a
        session, a message refused because the connection is gone is queued in the session
        instead (:meth:`Server.send_to_session`): it reaches the client once it resumes, so a
        handler can go on answering and reading what arrived before the cut."""
        try:
            await super().send(message)
        except ConnectionClosed:
            session = self._session_route()
            if session is None or self._server is None:
                raise
            await self._server.send_to_session(session, message)

    async def send_many(self, messages: Iterable[BytesLike]) -> None:
        """Queues messages in order (see :meth:`send` for connections with a session)."""
        batch = messages if isinstance(messages, list) else list(messages)
        try:
            await super().send_many(batch)
        except ConnectionClosed as exc:
            session = self._session_route()
            if session is None or self._server is None:
                raise
            unsent = getattr(exc, "unsent", None)
            sent = getattr(exc, "sent", None)
            if unsent is not None:
                rest = batch[len(batch) - unsent :]
            elif sent is not None:
                rest = batch[sent:]
            else:
                raise
            await self._server.send_many_to_session(session, rest)

    @property
    def peer(self) -> Tuple[str, int]:
        """The client's ``(host, port)``."""
        peer: Tuple[str, int] = self._native.peer
        return peer

    @property
    def peer_certificate(self) -> Optional[Tuple[str, List[str], bytes]]:
        """Mutual TLS: the client's verified certificate as ``(subject, dns_names, der)``, e.g.
        ``("CN=client-1", ["client-1.example"], b"0...")``; ``None`` without one."""
        cert: Optional[Tuple[str, List[str], bytes]] = self._native.peer_certificate
        return cert

    @property
    def id(self) -> int:
        """The server's number for this connection, in accept order."""
        ident: int = self._native.id
        return ident

    async def close(self, code: int = 0, reason: str = "") -> None:
        """Closes gracefully: messages sent before are written, then CLOSE with ``code``
        (``0`` normal; ``0x1000`` and above are the application's) and ``reason``, then waits
        for the connection to end."""
        op = self._native.close(code, reason)
        if op:
            await self._op(op)
        await self.wait_closed()

    def __repr__(self) -> str:
        host, port = self.peer
        return f"<framelink.Connection #{self.id} {host}:{port}{' closed' if self.closed else ''}>"


class Client(_Link):
    """A client that stays connected: it reconnects after every disconnect with exponential
    backoff and jitter, finds a dead peer with heartbeats, and, with ``sessions=True``,
    delivers every message exactly once across reconnects. Made by :func:`connect`."""

    def __init__(self, native: Any, on_event: Optional[EventCallback]) -> None:
        super().__init__(native, on_event)
        self._connected: "asyncio.Future[None]" = self._loop.create_future()

    def _on_events(self, new: List[ev.Event]) -> None:
        if self._connected.done():
            return
        if self._state.connected_once:
            self._connected.set_result(None)

    async def wait_connected(self) -> None:
        """Waits for the first connection. Raises :class:`~framelink.ConnectionClosed` if the
        client gave up (``max_attempts``) or was closed before connecting."""
        while not self._connected.done():
            self._wake()
            if self._connected.done():
                break
            if self._state.over:
                raise self._state.closed_error()
            await asyncio.wait(
                [self._connected, self._over], return_when=asyncio.FIRST_COMPLETED
            )

    @property
    def connected(self) -> bool:
        """A connection is open now (``False`` while reconnecting)."""
        return bool(self._native.connected)

    async def close(self) -> None:
        """Stops reconnecting and closes the connection gracefully (messages sent before are
        written first), then waits until it has ended. Messages that arrived before remain
        readable with ``recv``."""
        self._native.close(0, "")
        await self.wait_closed()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.connected else "connecting")
        return f"<framelink.Client {state}>"


class _Connect:
    """``await connect(...)`` or ``async with connect(...) as client``."""

    def __init__(self, host: str, port: int, on_event: Optional[EventCallback], options: Dict[str, Any]) -> None:
        self._host, self._port, self._on_event, self._options = host, port, on_event, options
        self._client: Optional[Client] = None

    async def _create(self) -> Client:
        native = _native.connect(self._host, self._port, self._options)
        client = Client(native, self._on_event)
        try:
            await client.wait_connected()
        except BaseException:
            client._native.close(0, "")
            raise
        return client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._create().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._create()
        return self._client

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.close()


def connect(
    host: str,
    port: int,
    *,
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
    on_event: Optional[EventCallback] = None,
) -> _Connect:
    """Connects to ``host:port`` and stays connected. ``await`` it (or ``async with``) to get a
    :class:`Client` once the first connection is up.

    - **Protocol**: framelink's (default; the server is ``framelink serve`` or :func:`serve`),
      or **raw mode** with ``framing="length:4"`` (any spec: ``line``, ``varint``,
      ``magic:cafe,crc=crc32c`` ...) for servers that speak their own framing. Raw mode keeps
      the link alive with ``ping`` (a payload sent after ``ping_interval`` of silence) and
      recognises the answer with ``pong`` (exact payload) or ``pong_prefix``; without them
      any frame counts as life. A pong is swallowed only while our ping waits for it: the same
      frame at another time is the server's data and is delivered, unless
      ``pong_always=True`` (the server sends pongs on its own). ``answer=(b"PING", b"PONG")`` replies to the server's own
      heartbeats.
    - **Liveness**: after ``ping_interval`` seconds without receiving anything a ping goes out;
      if nothing arrives within ``ping_timeout`` more, the peer is dead (``PeerDead``) and the
      client reconnects. ``ping_interval=None`` turns heartbeats off. Its default is 15 s when
      there is a ping to send (protocol mode, raw mode with ``ping``); raw mode without
      ``ping`` sends nothing and has no silence limit unless ``ping_interval`` is given (then
      a peer silent for ``ping_interval + ping_timeout`` is dead). ``idle_timeout`` closes
      a connection that carries no message either way for that long. A message whose first
      bytes arrived must be complete within ``frame_timeout`` seconds (default 30; ``0``: no
      bound), so a peer that trickles bytes is cut (``peer_timed_out``).
    - **Reconnect**: exponential backoff from ``backoff_initial`` up to ``backoff_max`` seconds
      with full jitter; ``max_attempts`` failed attempts in a row end the client
      (``None``: forever); ``reconnect=False`` makes one attempt and never reconnects.
    - **Sessions** (``sessions=True``; the server must offer them): every message is numbered
      and kept until acknowledged; after a reconnect both sides resend what the other has not
      delivered, so nothing is lost or duplicated. A session the server no longer has is
      reported with ``SessionLost`` and its unacknowledged messages.
    - **Limits**: ``max_message_size`` (bytes we accept; default 8 MiB; protocol mode only: in
      raw mode the framing spec's ``max=`` is the limit and ``max_message_size`` raises
      ``ConfigError``),
      ``max_queued_bytes`` (send queue; ``send`` waits beyond it; default 8 MiB).
    - **TLS** (``tls=True``, or any ``tls_*`` option): the server's certificate is verified
      against the CA certificates in the PEM file ``tls_ca`` (default: the platform's trusted
      roots) for ``host`` (or ``tls_server_name``); ``tls_cert`` and ``tls_key`` (PEM files)
      present a client certificate for mutual TLS. A failed handshake is reported with its
      reason (unknown CA, name mismatch, expired certificate, client certificate required).
    - ``on_event`` is called (in the event loop) with every :mod:`framelink.events` object.
    """
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
    # Check now, so that a bad option raises at the call, not at the await.
    _native.check_options(options, False)
    return _Connect(host, port, on_event, options)


Handler = Callable[[Connection], Awaitable[Any]]


class Server:
    """A listening server, made by :func:`serve`: each accepted connection runs the handler in
    its own task; the connection is closed when the handler returns."""

    def __init__(
        self,
        handler: Handler,
        native: Any,
        on_event: Optional[EventCallback],
        on_lost_session: Optional[Callable[[ev.LostSession], Any]],
        sessions: bool = False,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self._native = native
        self._on_event = on_event
        self._on_lost_session = on_lost_session
        self._sessions = sessions
        self._state = LinkState(native, None)
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._lost: Deque[ev.LostSession] = collections.deque(maxlen=10_000)
        self._lost_waiters: List["asyncio.Future[None]"] = []
        self._ops: Dict[int, "asyncio.Future[Any]"] = {}
        self._closed: "asyncio.Future[None]" = self._loop.create_future()
        hub = _hub(self._loop)
        native.set_waker(hub.native, hub.register(self))

    def _wake(self) -> None:
        for native in self._native.take_accepted():
            conn = Connection(native, self._on_event, self)
            task = self._loop.create_task(self._run(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for event in self._state.poll():
            if isinstance(event, ev.LostSession):
                if self._on_lost_session is not None:
                    try:
                        self._on_lost_session(event)
                    except Exception:
                        logger.exception("framelink: on_lost_session callback raised")
                else:
                    self._lost.append(event)
        _release(self._lost_waiters)
        for op, result in list(self._state.done.items()):
            fut = self._ops.pop(op, None)
            if fut is not None:
                del self._state.done[op]
                if not fut.done():
                    fut.set_result(result)

    async def _run(self, conn: Connection) -> None:
        try:
            await self._handler(conn)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("framelink: connection handler raised (connection %s)", conn.id)
        finally:
            if not conn.closed:
                try:
                    await conn.close()
                except Exception:  # pragma: no cover - closing an already failing link
                    pass

    def _op(self, op: int) -> "asyncio.Future[Any]":
        fut = self._loop.create_future()
        self._ops[op] = fut
        self._wake()
        return fut

    @property
    def address(self) -> Tuple[str, int]:
        """The ``(host, port)`` the server listens on."""
        addr: Tuple[str, int] = self._native.local_addr
        return addr

    @property
    def port(self) -> int:
        """The port the server listens on (useful with ``port=0``)."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """Live connections now."""
        n: int = self._native.connections
        return n

    def stats(self) -> Dict[str, int]:
        """``live``, ``accepted`` and ``refused`` counters (``refused_per_ip``: the part of
        ``refused`` over ``max_connections_per_ip``), and the sessions ``attached`` to a
        connection and ``detached`` (waiting for their client)."""
        live, accepted, refused, refused_per_ip = self._native.stats()
        attached, detached = self._native.session_counts()
        return {
            "live": live,
            "accepted": accepted,
            "refused": refused,
            "refused_per_ip": refused_per_ip,
            "sessions_attached": attached,
            "sessions_detached": detached,
        }

    async def send_to_session(self, session_id: bytes, message: BytesLike) -> None:
        """Queues a message for the client of session ``session_id`` wherever it is: on its
        connection, or kept in the detached session until it comes back. Waits while the
        session is full. Raises :class:`~framelink.SessionLost` for a session the server
        does not have (never opened, ended, expired): the message is in ``.unacked``."""
        if self._native.try_send_to_session(session_id, message):
            return
        result = await self._op(self._native.send_to_session(session_id, message))
        if result is not None:
            raise result

    async def send_many_to_session(
        self, session_id: bytes, messages: Iterable[BytesLike]
    ) -> None:
        """Queues messages in order for the client of session ``session_id``, as
        :meth:`send_to_session` does one: one native call for the batch, waiting only while
        the session is full. A session the server does not have raises
        :class:`~framelink.SessionLost` with every message not queued in ``.unacked`` (and
        ``.sent``: how many were queued before)."""
        op = self._native.send_many_to_session(session_id, messages)
        if op is None:
            return
        result = await self._op(op)
        if result is not None:
            raise result

    async def lost_sessions(self) -> AsyncIterator[ev.LostSession]:
        """Sessions whose client never came back, with the messages they did not acknowledge
        (unless ``on_lost_session`` was given)."""
        while True:
            while self._lost:
                yield self._lost.popleft()
            if self._closed.done():
                return
            await _wait(self._loop, self._lost_waiters)

    async def close(self, grace: float = 5.0) -> Tuple[int, int, int]:
        """Stops accepting, closes every connection with ``going_away`` (queued messages are
        written first) and waits up to ``grace`` seconds for them; the rest are aborted.
        Returns ``(open, closed_in_time, aborted)``. Then cancels handlers still running."""
        if self._closed.done():
            return (0, 0, 0)
        report: Tuple[int, int, int] = await self._op(self._native.shutdown(grace))
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.1))
            for task in pending:
                task.cancel()
        if not self._closed.done():
            self._closed.set_result(None)
        _release(self._lost_waiters)
        return report

    async def wait_closed(self) -> None:
        """Waits until :meth:`close` has finished."""
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        """Runs until the server is closed (or the task is cancelled: then it closes)."""
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            await self.close()
            raise

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        host, port = self.address
        return f"<framelink.Server {host}:{port} connections={self.connections}>"


class _Serve:
    """``await serve(...)`` or ``async with serve(...) as server``."""

    def __init__(self, make: Callable[[], Server]) -> None:
        self._make = make
        self._server: Optional[Server] = None

    async def _create(self) -> Server:
        return self._make()

    def __await__(self) -> Generator[Any, None, Server]:
        return self._create().__await__()

    async def __aenter__(self) -> Server:
        self._server = self._make()
        return self._server

    async def __aexit__(self, *exc: Any) -> None:
        if self._server is not None:
            await self._server.close()


def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
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
    max_connections: int = 10_000,
    max_connections_per_ip: int = 64,
    sessions: bool = False,
    session_ttl: float = 60.0,
    max_detached_sessions: int = 10_000,
    max_detached_sessions_per_ip: int = 1_000,
    memory_budget: Optional[int] = None,
    evict_idle_when_full: Optional[float] = None,
    nodelay: bool = True,
    tls_cert: Optional[PathLike] = None,
    tls_key: Optional[PathLike] = None,
    tls_client_ca: Optional[PathLike] = None,
    on_event: Optional[EventCallback] = None,
    on_lost_session: Optional[Callable[[ev.LostSession], Any]] = None,
) -> _Serve:
    """Listens on ``host:port`` (``port=0``: any free port, see :attr:`Server.port`) and runs
    ``await handler(conn)`` for each connection (a :class:`Connection`).

    Options are those of :func:`connect` (protocol or raw mode, heartbeats, idle eviction,
    limits), plus ``max_connections`` (more are refused: ``server_full``),
    ``max_connections_per_ip`` (live connections from one IP address; more from it are refused
    the same way, so that one host cannot take every slot; raise it behind a proxy that hides
    client addresses, and for load tests from one machine), and
    ``sessions=True`` to offer sessions: a client that reconnects resumes where it was, and
    the handlers see each session's messages in order across its connections (a resumed
    connection's handler gets nothing until the previous connection's handler has asked for a
    message after its last one, or returned: read a connection to its end or return);
    a detached session is kept ``session_ttl`` seconds (at most ``max_detached_sessions``,
    and at most ``max_detached_sessions_per_ip`` from one client IP address: past it that
    address's oldest goes, so that one address dropping sessions in a loop cannot push out
    other clients'), then handed back through ``on_lost_session`` or :meth:`Server.lost_sessions` with the
    messages its client never acknowledged. ``memory_budget`` (bytes; default 1 GiB, or a
    quarter of physical memory when less) bounds what the server holds for all connections and
    sessions together: beyond it new connections are refused and the connection holding the
    most is closed (``server_full``). At ``max_connections``, a newcomer evicts the connection
    that has carried no message for the longest, if at least ``evict_idle_when_full`` seconds
    (default 60; ``0``: refuse newcomers instead), closed with ``idle``.
    ``on_event`` is called for every connection's events.

    TLS: ``tls_cert`` and ``tls_key`` (PEM files: certificate chain, private key) serve TLS;
    ``tls_client_ca`` (PEM) requires every client to present a certificate issued by that CA
    (mutual TLS), whose verified identity is :attr:`Connection.peer_certificate`. Only
    connections whose handshake succeeded reach the handler.
    """
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
        max_connections=max_connections,
        max_connections_per_ip=max_connections_per_ip,
        sessions=sessions,
        session_ttl=session_ttl,
        max_detached_sessions=max_detached_sessions,
        max_detached_sessions_per_ip=max_detached_sessions_per_ip,
        memory_budget=memory_budget,
        evict_idle_when_full=evict_idle_when_full,
        nodelay=nodelay,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
    )
    _native.check_options(options, True)

    def make() -> Server:
        native = _native.Server(host, port, options)
        return Server(handler, native, on_event, on_lost_session, sessions)

    return _Serve(make)
