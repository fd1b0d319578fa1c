"""Exceptions raised by framelink.

Every error carries the numbers that explain it, as attributes, the same numbers the Rust
library reports (``FrameTooLarge(length=4294967299, limit=1048576, offset=6)``)::

    FramelinkError
    ├── DecodeError                 bytes from the peer that the framing refuses (.offset, .frames)
    │   ├── FrameTooLarge           a header announced more than max= (.length, .limit)
    │   ├── TruncatedFrame          the stream ended inside a frame (.buffered, .expected)
    │   ├── ChecksumError           magic framing: CRC mismatch (.expected, .computed, .length)
    │   └── MalformedFrame          any other framing violation (bad magic, bad netstring, ...)
    ├── EncodeError (ValueError)    a payload this framing cannot carry
    ├── SpecError (ValueError)      a framing spec that does not parse
    ├── ConfigError (ValueError)    an invalid option
    ├── ConnectionClosed            the connection is over (.code, .reason, .by_peer)
    │   ├── PeerDead                heartbeats found the peer gone (half-open connection)
    │   └── ProtocolError           the peer broke the protocol or its framing
    ├── SessionLost                 a session ended with messages not acknowledged (.unacked)
    └── QueueFull                   try_send: the send queue has no room now
"""

from __future__ import annotations

from typing import List, Optional, Sequence

__all__ = [
    "FramelinkError",
    "DecodeError",
    "FrameTooLarge",
    "TruncatedFrame",
    "ChecksumError",
    "MalformedFrame",
    "EncodeError",
    "SpecError",
    "ConfigError",
    "ConnectionClosed",
    "PeerDead",
    "ProtocolError",
    "SessionLost",
    "QueueFull",
]


class FramelinkError(Exception):
    """Base class of every framelink error."""


class DecodeError(FramelinkError):
    """The framing refused bytes from the peer.

    ``offset`` is the stream offset (bytes since the start of the stream) of the frame or header
    at fault. ``recoverable`` is true when decoding went on past it (the ``discard`` oversize
    policy, or a magic framing resynchronising): such errors are not raised but collected, see
    :meth:`framelink.Decoder.take_errors`. ``frames`` holds the complete frames decoded by the
    same call before the error, so that a fatal error never loses them.
    """

    def __init__(self, message: str, offset: int, recoverable: bool = False) -> None:
        super().__init__(message)
        self.offset = offset
        self.recoverable = recoverable
        self.frames: List[bytes] = []


class FrameTooLarge(DecodeError):
    """A frame longer than the framing's ``max=``, refused as soon as its header was read.

    ``length`` is the declared frame length (``None`` for delimiter framings, where no delimiter
    came within ``limit`` bytes); ``limit`` the configured maximum.
    """

    def __init__(
        self,
        message: str,
        offset: int,
        recoverable: bool,
        length: Optional[int],
        limit: int,
    ) -> None:
        super().__init__(message, offset, recoverable)
        self.length = length
        self.limit = limit


class TruncatedFrame(DecodeError):
    """The stream ended inside a frame: ``buffered`` bytes of it had arrived, of ``expected``
    (``None`` when the header was not complete)."""

    def __init__(
        self, message: str, offset: int, buffered: int, expected: Optional[int]
    ) -> None:
        super().__init__(message, offset, False)
        self.buffered = buffered
        self.expected = expected


class ChecksumError(DecodeError):
    """A magic+CRC frame whose checksum does not match its payload."""

    def __init__(
        self,
        message: str,
        offset: int,
        recoverable: bool,
        expected: int,
        computed: int,
        length: int,
    ) -> None:
        super().__init__(message, offset, recoverable)
        self.expected = expected
        self.computed = computed
        self.length = length


class MalformedFrame(DecodeError):
    """Any other framing violation; ``kind`` names it (``"bad_magic"``, ``"netstring"``,
    ``"varint_overflow"``, ``"varint_not_minimal"``, ``"length_below_header"``,
    ``"strip_beyond_frame"``, ``"resynchronized"``). ``skipped`` is the number of bytes thrown
    away to find the next frame, when the framing resynchronised."""

    def __init__(
        self, message: str, offset: int, recoverable: bool, kind: str, skipped: int = 0
    ) -> None:
        super().__init__(message, offset, recoverable)
        self.kind = kind
        self.skipped = skipped


class EncodeError(FramelinkError, ValueError):
    """A payload the framing cannot carry (too long, contains the delimiter, wrong fixed size)."""


class SpecError(FramelinkError, ValueError):
    """A framing spec that does not parse, e.g. ``length:5``. The message names the bad part."""


class ConfigError(FramelinkError, ValueError):
    """An invalid option (a zero timeout, a ping that the framing cannot encode, ...)."""


class ConnectionClosed(FramelinkError):
    """The connection (or the client, once it stopped reconnecting) is closed.

    ``code`` is the close code as an :class:`int` (``0`` normal, ``1`` going away, ``2`` protocol
    error, ``3`` peer timed out, ``4`` too many pings, ``5`` message too big, ``6`` unsupported
    version, ``7`` server full, ``8`` idle, ``9`` session refused, ``10`` session taken over,
    ``0x1000`` and above: the application's) and ``code_name`` its name, or
    ``"end_of_stream"`` when the stream ended without a CLOSE (no code was received; ``code``
    is then ``1``, or ``2`` if it ended mid-message); ``reason`` the text (the peer's, untrusted, when ``by_peer``);
    ``by_peer`` whether the peer closed rather than us.
    """

    def __init__(
        self,
        message: str,
        code: int = 0,
        code_name: str = "normal",
        reason: str = "",
        by_peer: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.reason = reason
        self.by_peer = by_peer


class PeerDead(ConnectionClosed):
    """Heartbeats declared the peer dead: nothing arrived within ``ping_interval +
    ping_timeout`` (a pulled cable, a dropped NAT mapping, a frozen process)."""


class ProtocolError(ConnectionClosed):
    """The peer broke framelink's protocol or, in raw mode, its framing (the decode error is in
    ``__cause__`` when there is one)."""


class SessionLost(FramelinkError):
    """A session could not be resumed (the server expired it or restarted) or ended with
    messages the peer never acknowledged: ``unacked`` hands them back, oldest first. They may
    or may not have reached the peer's application; nothing is dropped silently."""

    def __init__(
        self, message: str, session_id: bytes, unacked: Sequence[bytes]
    ) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.unacked = list(unacked)


class QueueFull(FramelinkError):
    """The send queue has no room for this message now (``try_send``); ``queued``, ``length``
    and ``limit`` are in bytes."""

    def __init__(self, message: str, queued: int, length: int, limit: int) -> None:
        super().__init__(message)
        self.queued = queued
        self.length = length
        self.limit = limit
