"""What happens to a connection or a client, as plain typed objects.

Read them with ``async for event in client.events()`` (asyncio), ``client.take_events()``
(blocking) or an ``on_event=`` callback. Messages are not events: they come from ``recv()``.

>>> from framelink import events
>>> e = events.Reconnecting(attempt=2, delay=0.137)
>>> e
Reconnecting(attempt=2, delay=0.137)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

from .errors import DecodeError

__all__ = [
    "Event",
    "Connected",
    "Disconnected",
    "ConnectFailed",
    "Reconnecting",
    "GaveUp",
    "Rtt",
    "Idle",
    "FrameDiscarded",
    "MessageDropped",
    "SessionStarted",
    "SessionLost",
    "Unsent",
    "LostSession",
]


@dataclass(frozen=True)
class Connected:
    """A connection is up: after the handshake (framelink's protocol), or once TCP connected
    (raw mode). ``attempt`` is which try in the current series succeeded (1 = first);
    ``peer_ping_interval`` the heartbeat interval the peer announced, in seconds."""

    address: Optional[Tuple[str, int]] = None
    attempt: int = 1
    peer_ping_interval: Optional[float] = None


@dataclass(frozen=True)
class Disconnected:
    """A connection ended. ``code`` / ``code_name`` is the close code (``3`` /
    ``"peer_timed_out"`` when heartbeats found the peer dead), ``reason`` its text, ``by_peer``
    whether the peer ended it, ``error`` what went wrong if anything, ``kind`` the exception
    class that reports it (``"ConnectionClosed"``, ``"PeerDead"``, ``"ProtocolError"``) and
    ``description`` one line for logs."""

    code: int
    code_name: str
    reason: str
    by_peer: bool
    error: Optional[str]
    kind: str
    description: str


@dataclass(frozen=True)
class ConnectFailed:
    """A connect attempt failed (refused, timed out, unreachable)."""

    attempt: int
    error: str


@dataclass(frozen=True)
class Reconnecting:
    """The next connect attempt starts after ``delay`` seconds (exponential backoff with full
    jitter)."""

    attempt: int
    delay: float


@dataclass(frozen=True)
class GaveUp:
    """``max_attempts`` attempts in a row failed: the client stopped. An attempt fails when it
    cannot connect, or when its connection is lost within ``stable_after`` of opening (a server
    that drops or evicts every connection); ``connected`` says how many of the ``attempts`` did
    connect."""

    attempts: int
    connected: int = 0


@dataclass(frozen=True)
class Rtt:
    """A heartbeat round trip: the latest sample, the smoothed RTT and its variation (RFC 6298),
    the minimum, in seconds, and the number of samples."""

    latest: float
    smoothed: float
    variance: float
    min: float
    samples: int


@dataclass(frozen=True)
class Idle:
    """Nothing was received (``"reader"``), sent (``"writer"``) or either (``"all"``) for the
    configured idle period (Netty's ``IdleStateHandler``)."""

    kind: str


@dataclass(frozen=True)
class FrameDiscarded:
    """Raw mode: the framing skipped bad input and went on (an oversize frame under
    ``max=...,oversize=discard``, garbage before a magic). ``error`` is the
    :class:`framelink.DecodeError` with its numbers; the frames around it were delivered."""

    error: DecodeError


@dataclass(frozen=True)
class MessageDropped:
    """A message sent before the handshake was longer than the peer accepts: dropped."""

    length: int
    peer_max: int


@dataclass(frozen=True)
class SessionStarted:
    """Sessions: the session runs on the new connection. ``status`` is ``"new"``,
    ``"resumed"`` (nothing lost: ``resending`` messages are sent again) or ``"unknown"`` (the
    server no longer had it: a new one started under the same id; messages it had not
    acknowledged, if any, were handed back by a :class:`SessionLost` just before)."""

    session_id: bytes
    status: str
    resending: int


@dataclass(frozen=True)
class SessionLost:
    """Sessions: the session could not be resumed, or ended, with messages the server never
    acknowledged: ``unacked`` hands them back, oldest first (they may or may not have been
    delivered). ``recv()`` raises :class:`framelink.SessionLost` with them too."""

    session_id: bytes
    unacked: List[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Unsent:
    """After a :class:`Disconnected` (no sessions): messages that were handed to the lost
    connection but never written, oldest first. Nothing resends them (raw mode cannot; in the
    framelink protocol only sessions do), so they are handed back here rather than dropped
    without a word. Messages written before the loss may still have been lost in flight: only
    sessions know."""

    messages: List[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class LostSession:
    """Server: a session whose client never came back (``reason``: ``"expired"`` after the
    session ttl, ``"evicted"`` to stay within ``max_detached_sessions`` or
    ``max_detached_sessions_per_ip``, or ``"replaced"`` when a request without proof took the
    id of a session its client never showed it had received), with the messages queued for
    that client and not acknowledged."""

    session_id: bytes
    reason: str
    unacked: List[bytes] = field(default_factory=list)


Event = Union[
    Connected,
    Disconnected,
    ConnectFailed,
    Reconnecting,
    GaveUp,
    Rtt,
    Idle,
    FrameDiscarded,
    MessageDropped,
    SessionStarted,
    SessionLost,
    Unsent,
    LostSession,
]


def from_native(raw: Tuple[Any, ...]) -> Event:
    """Builds the event object for a tuple from the native module."""
    kind = raw[0]
    if kind == "connected":
        return Connected(raw[1], raw[2], raw[3])
    if kind == "disconnected":
        return Disconnected(*raw[1:])
    if kind == "rtt":
        return Rtt(*raw[1:])
    if kind == "idle":
        return Idle(raw[1])
    if kind == "reconnecting":
        return Reconnecting(raw[1], raw[2])
    if kind == "connect_failed":
        return ConnectFailed(raw[1], raw[2])
    if kind == "gave_up":
        return GaveUp(raw[1], raw[2])
    if kind == "session":
        return SessionStarted(raw[1], raw[2], raw[3])
    if kind == "session_lost":
        return SessionLost(raw[1], list(raw[2]))
    if kind == "unsent":
        return Unsent(list(raw[1]))
    if kind == "lost_session":
        return LostSession(raw[1], raw[2], list(raw[3]))
    if kind == "message_dropped":
        return MessageDropped(raw[1], raw[2])
    if kind == "frame_discarded":
        return FrameDiscarded(raw[1])
    raise ValueError(f"unknown native event {raw!r}")
