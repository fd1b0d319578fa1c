//! Raw mode: keep-alive for peers that don't speak framelink's protocol (sans-IO).
//!
//! This module owns [`RawConnection`], a [`Machine`] for a byte stream whose framing belongs to
//! the peer (a Netty server with a 4-byte length prefix, an IoT device speaking lines). The user
//! supplies the [`Framing`], optionally the payload of a **ping frame** to send when the link is
//! quiet, and a [`FrameMatcher`] that recognises the peer's **pong**; the same
//! [`Liveness`] machine as the protocol connection decides when to ping and when the peer is
//! dead. There is no handshake and no CLOSE message: the connection is [`State::Open`] from the
//! start and closing is writing what is queued, then shutting the write half down.
//!
//! It is driven exactly like the protocol [`Connection`](crate::connection::Connection) (see
//! [`crate::machine`]): read into [`recv_buf`](crate::machine::Machine::recv_buf) and call
//! [`process_input`](crate::machine::Machine::process_input); write what
//! [`poll_transmit`](crate::machine::Machine::poll_transmit) returns; keep one timer at
//! [`poll_timeout`](crate::machine::Machine::poll_timeout); drain
//! [`poll_event`](crate::machine::Machine::poll_event).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use framelink_proto::connection::Event;
//! use framelink_proto::machine::Machine;
//! use framelink_proto::raw::{FrameMatcher, RawConfig, RawConnection};
//!
//! // A Netty server framing with a 4-byte big-endian length prefix, which answers "PING" with
//! // "PONG".
//! let mut config = RawConfig::new("length:4".parse().unwrap());
//! config.ping = Some(Bytes::from_static(b"PING"));
//! config.pong = FrameMatcher::exact(&b"PONG"[..]);
//! config.ping_interval = Some(Duration::from_secs(15));
//! config.ping_timeout = Duration::from_secs(10);
//!
//! let t0 = Instant::now();
//! let mut conn = RawConnection::new(config, t0).unwrap();
//! conn.send(Bytes::from_static(b"hello"), t0).unwrap();
//! assert_eq!(conn.poll_transmit(t0).unwrap(), &b"\0\0\0\x05hello"[..]);
//!
//! // The server answers; the reply is delivered. Nothing to ping for 15 s from now.
//! conn.handle_input(b"\0\0\0\x02ok", t0 + Duration::from_secs(1));
//! assert_eq!(conn.poll_event(), Some(Event::Data(Bytes::from_static(b"ok"))));
//! let ping_at = conn.poll_timeout().unwrap();
//! assert_eq!(ping_at, t0 + Duration::from_secs(16));
//!
//! // The link goes quiet: the timer fires and the ping frame goes out.
//! conn.handle_timeout(ping_at);
//! assert_eq!(conn.poll_transmit(ping_at).unwrap(), &b"\0\0\0\x04PING"[..]);
//!
//! // The pong comes back 30 ms later: an RTT sample, and the pong is not delivered as data.
//! conn.handle_input(b"\0\0\0\x04PONG", ping_at + Duration::from_millis(30));
//! assert_eq!(conn.poll_event(), Some(Event::Rtt(Duration::from_millis(30))));
//! assert_eq!(conn.poll_event(), None);
//! assert_eq!(conn.rtt().unwrap().latest, Duration::from_millis(30));
//! ```
//!
//! # Decisions
//!
//! - **Liveness**: any inbound bytes prove the peer alive, pong or not. With a ping payload, the
//!   ping frame is sent after [`ping_interval`](RawConfig::ping_interval) without receiving
//!   anything, and the peer is dead when nothing at all arrives within
//!   [`ping_timeout`](RawConfig::ping_timeout) of it: a peer whose last bytes arrived at `S` is
//!   declared dead at `S + ping_interval + ping_timeout` ([`DeathCause::PingTimeout`]).
//! - **Idle-only mode** (no [`ping`](RawConfig::ping) payload, `ping_interval` set): nothing is
//!   ever sent on our own, and the peer is declared dead at exactly the same instant,
//!   `S + ping_interval + ping_timeout`, reported as [`DeathCause::PeerSilent`] with
//!   `limit = ping_interval + ping_timeout`. Our own sends do not postpone it: only inbound bytes
//!   count. With `ping_interval: None` the peer is never declared dead (idle events only).
//! - **Pong matching**: a frame matching [`pong`](RawConfig::pong) while our ping has been
//!   written and not yet answered gives an [`Event::Rtt`] sample (first match only). Frames
//!   matching a specific matcher ([`FrameMatcher::Exact`], [`Prefix`](FrameMatcher::Prefix),
//!   [`Predicate`](FrameMatcher::Predicate)) answering our outstanding ping are heartbeats: they
//!   are swallowed unless [`deliver_heartbeats`](RawConfig::deliver_heartbeats) is set. A frame
//!   that matches while no ping of ours is outstanding is the peer's data and is delivered
//!   (raw mode never eats a message that merely looks like the pong), unless
//!   [`pong_always`](RawConfig::pong_always) says the peer sends pongs on its own.
//!   With [`FrameMatcher::Any`] (the default) the first frame of any kind after our ping answers
//!   it, and it is still delivered as data: it is real data.
//! - **Answering the peer's heartbeats** ([`answer`](RawConfig::answer)): a frame matching the
//!   rule queues the reply frame, written ahead of queued data (never inside a frame already
//!   started); at most one reply is pending (a burst of peer pings gets one reply). A frame that
//!   was taken as the pong to our own ping is not answered, so two sides using the same frame as
//!   ping and pong do not bounce it forever.
//! - **Queue cost**: each queued message counts its payload plus [`FRAME_OVERHEAD`] bytes
//!   ([`MAX_FRAME_OVERHEAD`], the most any codec puts around a payload), so
//!   [`queued_bytes`](crate::machine::Machine::queued_bytes) never under-counts the bytes to write.
//! - **Zero copy**: payloads over [`COPY_THRESHOLD`] bytes are returned by `poll_transmit` as
//!   separate chunks (header, payload, trailer); shorter frames are copied into one chunk.
//!   Received frames are slices of the receive buffer.
//! - **Decode errors**: recoverable ones (an oversized frame under `discard`, bytes skipped by a
//!   `magic` resync) give [`Event::FrameDiscarded`] and decoding goes on. A fatal one closes
//!   with [`CloseCode::MessageTooBig`] (frame too long, no delimiter within the limit) or
//!   [`CloseCode::ProtocolError`], error [`ConnectionError::Framing`]; the frames decoded
//!   before it are delivered first.
//! - **Local [`close`](crate::machine::Machine::close)**: [`Event::Closed`] is reported at once,
//!   queued frames are still written, then [`Event::ShutdownWrite`]. The state stays
//!   [`State::Closing`] (input read and discarded, so the peer's data never turns our close into a
//!   reset) until the peer's end of stream or [`linger`](RawConfig::linger) after the shutdown,
//!   then [`State::Closed`].
//! - **Every other close** (dead peer, fatal framing error, end of stream) goes straight to
//!   [`State::Closed`] and drops queued frames not yet started; a frame already partly handed
//!   out is always completed, never torn. Then [`Event::ShutdownWrite`] is emitted, except after
//!   the peer's end of stream when no close was in progress (like the protocol connection: the
//!   driver simply drops the socket).
//! - **End of stream**: the framing's [`decode_eof`](FrameDecoder::decode_eof) may still produce
//!   a last frame (a delimiter that could have grown into a longer one); bytes left over make
//!   `mid_message` true and the code [`CloseCode::ProtocolError`], otherwise
//!   [`CloseCode::GoingAway`].
//! - **Bounds**: the receive buffer holds at most one partial frame, bounded by the framing's
//!   maximum frame length (checked as soon as a header arrives); after a close it is cleared on
//!   every input. The send queue is bounded by [`max_queued_bytes`](RawConfig::max_queued_bytes);
//!   control frames are at most one ping and one reply.
//!
//! Files: `config.rs` ([`RawConfig`], validation), `heartbeat.rs` (ping / pong matching: [`FrameMatcher`], [`Answer`], the
//! heartbeat state),
//! `connection.rs` ([`RawConnection`], the machine), `tests.rs`.

mod config;
mod connection;
mod heartbeat;
#[cfg(test)]
mod tests;

pub use config::{RawConfig, RawConfigError, FRAME_OVERHEAD};
pub use connection::RawConnection;
pub use heartbeat::{Answer, FrameMatcher, FramePredicate};

// Names the module documentation above links to.
#[cfg(doc)]
use crate::{
    codec::{FrameDecoder, Framing, MAX_FRAME_OVERHEAD},
    connection::{ConnectionError, Event, State, COPY_THRESHOLD},
    liveness::{DeathCause, Liveness},
    machine::Machine,
    wire::CloseCode,
};
