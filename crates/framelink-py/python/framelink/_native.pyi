"""Type stubs of the native module (``crates/framelink-py/src``). Users import the public names
from :mod:`framelink`; the rest is the machinery under :mod:`framelink.aio` and
:mod:`framelink.blocking`."""

from typing import Any, Dict, Iterable, List, Optional, Tuple, Union, final

from .errors import DecodeError

_BytesLike = Union[bytes, bytearray, memoryview]

__all__ = [
    "Decoder",
    "Encoder",
    "Hub",
    "Link",
    "LoopMachine",
    "Server",
    "connect",
    "check_options",
    "defaults",
    "INBOX_BYTES",
    "__version__",
]
__version__: str
INBOX_BYTES: int

@final
class Decoder:
    """Turns a byte stream back into frames: ``Decoder("length:4,max=1MiB")``.

    Call :meth:`feed` with every chunk read from the socket: it returns every frame now
    complete (possibly none, possibly many). A fatal error raises a
    :class:`framelink.DecodeError` subclass with the frames decoded before it in ``.frames``;
    later calls raise it again. Recoverable errors (``oversize=discard``, magic resync) are
    collected for :meth:`take_errors` and the frames around them are returned.

    >>> d = Decoder("line")
    >>> d.feed(b"hello\\nwor"), d.feed(b"ld\\n")
    ([b'hello'], [b'world'])
    """

    def __new__(cls, spec: str) -> "Decoder": ...
    def feed(self, data: _BytesLike) -> List[bytes]:
        """Appends ``data`` and returns every frame now complete."""
    def feed_eof(self) -> List[bytes]:
        """The stream ended: the last frames; a partial frame raises ``TruncatedFrame``."""
    def get_buffer(self, sizehint: int = ...) -> memoryview:
        """Writable free space of the decoder's buffer, for ``sock.recv_into(view)`` (then
        :meth:`buffer_updated`). The view is released by the next call on the decoder."""
    def buffer_updated(self, nbytes: int) -> List[bytes]:
        """``nbytes`` were written into the last :meth:`get_buffer` view: every frame now
        complete."""
    def take_errors(self) -> List[DecodeError]:
        """Recoverable errors since the last call (``DecodeError`` instances, at most 64)."""
    @property
    def error_count(self) -> int:
        """Recoverable errors decoded past in all."""
    @property
    def buffered(self) -> int:
        """Bytes of a partial frame waiting for the rest."""
    @property
    def consumed(self) -> int:
        """Bytes taken off the stream so far."""
    @property
    def spec(self) -> str:
        """The canonical spec of the framing."""

@final
class Encoder:
    """Turns payloads into frames: ``Encoder("length:4")``.

    >>> Encoder("length:2").encode(b"hi")
    b'\\x00\\x02hi'
    """

    def __new__(cls, spec: str) -> "Encoder": ...
    def encode(self, payload: _BytesLike) -> bytes:
        """The frame for one payload; ``EncodeError`` if the framing cannot carry it."""
    def encode_many(self, payloads: Iterable[_BytesLike]) -> bytes:
        """The frames for many payloads, joined (one ``sendall`` for a batch)."""
    @property
    def spec(self) -> str:
        """The canonical spec of the framing."""

#: What each :class:`LoopMachine` call returns: (messages, other events or None, bytes to write
#: or None, next deadline on the loop's clock or None).
_LoopOutput = Tuple[List[bytes], Optional[List[Tuple[Any, ...]]], Optional[bytes], Optional[float]]

@final
class LoopMachine:
    """One sans-IO connection machine driven by the event loop (no I/O thread): a benchmark
    prototype (``python -m framelink.bench``, variants ``loop-raw`` and ``loop-proto``), with no
    reconnect, backoff or sessions.

    ``options`` as for :func:`framelink.connect` (``framing`` given: raw mode, else protocol v1);
    ``now`` is ``loop.time()``. Drive it from an ``asyncio.BufferedProtocol``: write what
    :meth:`start` returns, lend :meth:`get_buffer`, call :meth:`buffer_updated`, :meth:`eof`
    and, at the deadline, :meth:`timeout`.
    """

    def __new__(cls, options: Dict[str, Any], now: float) -> "LoopMachine": ...
    def start(self) -> _LoopOutput:
        """Output due at start (the HELLO in protocol mode)."""
    def get_buffer(self, sizehint: int = ...) -> memoryview:
        """Writable free space of the machine's receive buffer; released by the next call."""
    def buffer_updated(self, nbytes: int) -> _LoopOutput:
        """``nbytes`` were read into the last :meth:`get_buffer` view."""
    def eof(self) -> _LoopOutput:
        """The peer ended the stream (or the transport failed)."""
    def timeout(self) -> _LoopOutput:
        """The deadline timer fired (early calls are harmless)."""
    def send_many(self, payloads: Iterable[_BytesLike]) -> Optional[bytes]:
        """Queues every payload; the bytes to write now, if any."""
    def close(self, reason: str = ...) -> _LoopOutput:
        """Closes gracefully (queued messages first)."""
    @property
    def closed(self) -> bool:
        """The machine is finished."""

@final
class Hub:
    """An eventfd (a pipe off Linux) that the I/O thread writes to wake one event loop."""

    def __new__(cls) -> "Hub": ...
    def fileno(self) -> int: ...
    def take_ready(self) -> List[int]: ...

_Control = Tuple[List[Tuple[Any, ...]], List[Tuple[int, Any]], bool, int]

@final
class Link:
    """One accepted connection or one reconnecting client, driven by the I/O thread."""

    def set_waker(self, hub: Hub, token: int) -> None: ...
    def take_messages(self, max: int) -> List[bytes]: ...
    def take_control(self) -> _Control: ...
    def pending(self) -> Tuple[int, int]: ...
    def close_exception(self) -> BaseException: ...
    def try_send(self, payload: _BytesLike) -> bool: ...
    def send_now(self, payload: _BytesLike, behind: bool = ...) -> None: ...
    def try_send_many(self, payloads: Iterable[_BytesLike]) -> int: ...
    def send_async(self, payloads: Iterable[_BytesLike], skip: int = 0) -> int: ...
    def send_blocking(
        self, payloads: Iterable[_BytesLike], timeout: Optional[float] = None
    ) -> None: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...
    def close(self, code: int = ..., reason: str = ...) -> int: ...
    @property
    def connected(self) -> bool: ...
    @property
    def peer(self) -> Optional[Tuple[str, int]]: ...
    @property
    def id(self) -> int: ...
    @property
    def peer_certificate(self) -> Optional[Tuple[str, List[str], bytes]]: ...

@final
class Server:
    """framelink's server on the I/O thread."""

    def __new__(cls, host: str, port: int, options: Dict[str, Any]) -> "Server": ...
    def set_waker(self, hub: Hub, token: int) -> None: ...
    def take_accepted(self) -> List[Link]: ...
    def take_control(self) -> _Control: ...
    @property
    def local_addr(self) -> Tuple[str, int]: ...
    @property
    def connections(self) -> int: ...
    def stats(self) -> Tuple[int, int, int, int]: ...
    def session_counts(self) -> Tuple[int, int]: ...
    def shutdown(self, grace: float) -> int: ...
    def try_send_to_session(self, session_id: bytes, payload: _BytesLike) -> bool: ...
    def send_many_to_session(
        self, session_id: bytes, payloads: Iterable[_BytesLike]
    ) -> Optional[int]: ...
    def send_to_session(self, session_id: bytes, payload: _BytesLike) -> int: ...

def defaults() -> Dict[str, Any]: ...
def connect(host: str, port: int, options: Dict[str, Any]) -> Link:
    """``options``: the keyword arguments of :func:`framelink.connect`, TLS included (``tls``,
    ``tls_ca``, ``tls_server_name``, ``tls_cert``, ``tls_key``)."""

def check_options(options: Dict[str, Any], server: bool = False) -> None:
    """Raises ``ConfigError`` for invalid options; with ``server``, those of
    :func:`framelink.serve` (TLS: ``tls_cert``, ``tls_key``, ``tls_client_ca``). TLS files are
    loaded, so a missing or unusable one is named here."""
