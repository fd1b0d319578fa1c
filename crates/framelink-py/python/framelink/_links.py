"""What the asyncio and blocking APIs share: turning the native link's control tuples into
events, exceptions and state (no I/O, no event loop)."""

from __future__ import annotations

import collections
import enum
import logging
import os
from typing import Any, Callable, Deque, Dict, List, Optional, Union

from . import events as ev
from .errors import ConnectionClosed, PeerDead, ProtocolError, SessionLost

#: A file path option (TLS certificate, key and CA files): ``str`` or ``os.PathLike``.
PathLike = Union[str, "os.PathLike[str]"]

logger = logging.getLogger("framelink")


class Default(enum.Enum):
    """The type of :data:`DEFAULT`."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


#: An option left out: the Rust core picks the default, which may depend on other options
#: (``ping_interval``: 15 s when there is a ping to send, none in raw mode without ``ping``).
DEFAULT = Default.DEFAULT


def native_options(**options: Any) -> Dict[str, Any]:
    """The options dict for the native side, without the options left at :data:`DEFAULT`."""
    return {k: v for k, v in options.items() if v is not DEFAULT}

#: Messages taken from the native side per call by ``recv``.
RECV_BATCH = 1024
#: Events kept for ``events()`` at most; the oldest go first.
EVENTS_KEPT = 1024

EventCallback = Callable[[ev.Event], Any]


class LinkState:
    """Events, pending exceptions and the end of one link, fed from ``take_control``."""

    def __init__(self, native: Any, on_event: Optional[EventCallback]) -> None:
        self.native = native
        self.on_event = on_event
        self.events: Deque[ev.Event] = collections.deque(maxlen=EVENTS_KEPT)
        #: Exceptions ``recv`` raises before the next message (``SessionLost``).
        self.errors: Deque[BaseException] = collections.deque()
        #: Completed operations: id -> result (None, an exception, or a report).
        self.done: Dict[int, Any] = {}
        #: Nothing more will arrive from the native side.
        self.over = False
        self.connected_once = False
        self.gave_up: Optional[ev.GaveUp] = None
        self.session_id: Optional[bytes] = None
        self.rtt: Optional[ev.Rtt] = None
        self.last_disconnect: Optional[ev.Disconnected] = None
        #: How the last attempt ended: a connection lost, or a connect that failed.
        self.last_outcome: Optional[Union[ev.Disconnected, ev.ConnectFailed]] = None
        self.dropped_events = 0

    def poll(self) -> List[ev.Event]:
        """Takes what the native side has (events, completions, the end); returns the events."""
        raw_events, done, over, dropped = self.native.take_control()
        self.dropped_events += dropped
        for op, result in done:
            self.done[op] = result
        new: List[ev.Event] = []
        for raw in raw_events:
            event = ev.from_native(raw)
            self._apply(event)
            new.append(event)
            self.events.append(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # a callback's bug must not break the connection
                    logger.exception("framelink: on_event callback raised")
        if over:
            self.over = True
        return new

    def _apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.Connected):
            self.connected_once = True
        elif isinstance(event, ev.SessionStarted):
            self.session_id = event.session_id
        elif isinstance(event, ev.SessionLost):
            self.errors.append(
                SessionLost(
                    f"session {event.session_id.hex()} lost with "
                    f"{len(event.unacked)} unacknowledged message(s) handed back",
                    event.session_id,
                    event.unacked,
                )
            )
        elif isinstance(event, ev.Rtt):
            self.rtt = event
        elif isinstance(event, ev.Disconnected):
            self.last_disconnect = self.last_outcome = event
        elif isinstance(event, ev.ConnectFailed):
            self.last_outcome = event
        elif isinstance(event, ev.GaveUp):
            self.gave_up = event

    def closed_error(self) -> BaseException:
        """What ``recv`` raises once the link is over and drained."""
        if self.gave_up is not None:
            attempts = self.gave_up.attempts
            last = self.last_outcome
            if isinstance(last, ev.Disconnected):
                # The last connection was up and ended: report it as it ended.
                kinds = {"PeerDead": PeerDead, "ProtocolError": ProtocolError}
                cls = kinds.get(last.kind, ConnectionClosed)
                return cls(
                    f"no more attempts ({attempts} made): {last.description}",
                    code=last.code,
                    code_name=last.code_name,
                    reason=last.reason,
                    by_peer=last.by_peer,
                )
            detail = f": {last.error}" if isinstance(last, ev.ConnectFailed) else ""
            return ConnectionClosed(
                f"gave up after {attempts} failed attempt(s){detail}",
                code=1,
                code_name="going_away",
            )
        exc: BaseException = self.native.close_exception()
        return exc

    def ends_iteration(self, exc: BaseException) -> bool:
        """A close that ends ``async for`` / ``for`` quietly: normal or going away, by either
        side, and not a client that gave up after failing to connect."""
        failed_to_connect = self.gave_up is not None and not isinstance(
            self.last_outcome, ev.Disconnected
        )
        return not failed_to_connect and type(exc) is ConnectionClosed and exc.code in (0, 1)
