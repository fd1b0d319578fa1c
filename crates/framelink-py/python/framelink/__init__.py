"""framelink: message framing, heartbeats, reconnects and exactly-once sessions over TCP.

TCP is a byte stream: one ``recv()`` can return several messages glued together (粘包) or part
of one (拆包), and a peer that vanished without a FIN leaves a socket that looks open for hours.
framelink restores the messages for every common framing, finds dead peers in bounded time,
reconnects with backoff, and with sessions delivers every message exactly once across
reconnects. The work is done in Rust; Python is crossed once per read or batch.

- Sans-IO, for any socket style: :class:`Decoder` (``feed(data) -> list[bytes]``) and
  :class:`Encoder`.
- asyncio: :func:`connect` (a reconnecting :class:`Client`) and :func:`serve` (a
  :class:`Server` calling your handler per :class:`Connection`).
- Blocking code: :func:`framelink.blocking.connect`.
- Events: :mod:`framelink.events`; exceptions: :mod:`framelink.errors`.

>>> from framelink import Decoder, Encoder
>>> wire = Encoder("length:4").encode_many([b"hello", b"world"])
>>> d = Decoder("length:4,max=1MiB")
>>> d.feed(wire[:7]), d.feed(wire[7:])
([], [b'hello', b'world'])
"""

from . import events
from ._native import Decoder, Encoder
from ._native import __version__ as __version__
from .aio import Client, Connection, Server, connect, serve
from .errors import (
    ChecksumError,
    ConfigError,
    ConnectionClosed,
    DecodeError,
    EncodeError,
    FramelinkError,
    FrameTooLarge,
    MalformedFrame,
    PeerDead,
    ProtocolError,
    QueueFull,
    SessionLost,
    SpecError,
    TruncatedFrame,
)

__all__ = [
    "Decoder",
    "Encoder",
    "connect",
    "serve",
    "Client",
    "Connection",
    "Server",
    "events",
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
