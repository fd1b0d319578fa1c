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
//! [`crate::machine`]): read into [`recv_buf`](RawConnection::recv_buf) and call
//! [`process_input`](RawConnection::process_input); write what
//! [`poll_transmit`](RawConnection::poll_transmit) returns; keep one timer at
//! [`poll_timeout`](RawConnection::poll_timeout); drain [`poll_event`](RawConnection::poll_event).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use framelink_proto::connection::Event;
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
//!   [`Predicate`](FrameMatcher::Predicate)) are heartbeats: they are swallowed, whether or not a
//!   ping was outstanding, unless [`deliver_heartbeats`](RawConfig::deliver_heartbeats) is set.
//!   With [`FrameMatcher::Any`] (the default) the first frame of any kind after our ping answers
//!   it, and it is still delivered as data: it is real data.
//! - **Answering the peer's heartbeats** ([`answer`](RawConfig::answer)): a frame matching the
//!   rule queues the reply frame, written ahead of queued data (never inside a frame already
//!   started); at most one reply is pending (a burst of peer pings gets one reply). A frame that
//!   was taken as the pong to our own ping is not answered, so two sides using the same frame as
//!   ping and pong do not bounce it forever.
//! - **Queue cost**: each queued message counts its payload plus [`FRAME_OVERHEAD`] bytes
//!   ([`MAX_FRAME_OVERHEAD`], the most any codec puts around a payload), so
//!   [`queued_bytes`](RawConnection::queued_bytes) never under-counts the bytes to write.
//! - **Zero copy**: payloads over [`COPY_THRESHOLD`] bytes are returned by `poll_transmit` as
//!   separate chunks (header, payload, trailer); shorter frames are copied into one chunk.
//!   Received frames are slices of the receive buffer.
//! - **Decode errors**: recoverable ones (an oversized frame under `discard`, bytes skipped by a
//!   `magic` resync) give [`Event::FrameDiscarded`] and decoding goes on. A fatal one closes
//!   with [`CloseCode::MessageTooBig`] (frame too long, no delimiter within the limit) or
//!   [`CloseCode::ProtocolError`], error [`ConnectionError::Framing`]; the frames decoded
//!   before it are delivered first.
//! - **Local [`close`](RawConnection::close)**: [`Event::Closed`] is reported at once, queued
//!   frames are still written, then [`Event::ShutdownWrite`]. The state stays
//!   [`State::Closing`] (input read and discarded, so the peer's data never turns our close into
//!   a reset) until the peer's end of stream or [`linger`](RawConfig::linger) after the
//!   shutdown, then [`State::Closed`].
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

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::codec::{
    DecodeError, DecodeErrorKind, EncodeError, FrameDecoder, FrameEncoder, FrameParts, Framing,
    MAX_FRAME_OVERHEAD,
};
use crate::connection::{ConnectionError, Event, SendError, State, Stats, COPY_THRESHOLD};
use crate::liveness::{
    DeathCause, Liveness, LivenessConfig, LivenessConfigError, LivenessEvent, RttEstimate,
};
use crate::machine::Machine;
use crate::wire::CloseCode;

/// What each queued message counts against [`RawConfig::max_queued_bytes`] on top of its
/// payload: [`MAX_FRAME_OVERHEAD`], an upper bound of any framing's header plus trailer.
pub const FRAME_OVERHEAD: usize = MAX_FRAME_OVERHEAD;

/// Recognises a frame by its (decoded) payload: the peer's pong, or a peer heartbeat to answer.
///
/// ```
/// use framelink_proto::raw::FrameMatcher;
/// assert!(FrameMatcher::exact(&b"PONG"[..]).matches(b"PONG"));
/// assert!(!FrameMatcher::exact(&b"PONG"[..]).matches(b"PONG!"));
/// assert!(FrameMatcher::prefix(&b"\x01\x02"[..]).matches(b"\x01\x02\x03"));
/// assert!(FrameMatcher::predicate(|f| f.len() == 1).matches(b"x"));
/// assert!(FrameMatcher::Any.matches(b"anything"));
/// ```
#[derive(Clone, Default)]
pub enum FrameMatcher {
    /// Any frame. As a pong matcher: the first frame after our ping answers it, and is still
    /// delivered as data.
    #[default]
    Any,
    /// A frame whose payload is exactly these bytes.
    Exact(Bytes),
    /// A frame whose payload starts with these bytes (non-empty: use [`Any`](Self::Any)).
    Prefix(Bytes),
    /// A frame for which the function returns true. Called once per inbound frame: keep it cheap,
    /// and it must not panic.
    Predicate(Arc<dyn Fn(&[u8]) -> bool + Send + Sync>),
}

impl FrameMatcher {
    /// [`FrameMatcher::Exact`].
    pub fn exact(bytes: impl Into<Bytes>) -> Self {
        FrameMatcher::Exact(bytes.into())
    }

    /// [`FrameMatcher::Prefix`].
    pub fn prefix(bytes: impl Into<Bytes>) -> Self {
        FrameMatcher::Prefix(bytes.into())
    }

    /// [`FrameMatcher::Predicate`].
    pub fn predicate(f: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        FrameMatcher::Predicate(Arc::new(f))
    }

    /// True when `frame` matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        match self {
            FrameMatcher::Any => true,
            FrameMatcher::Exact(bytes) => frame == &bytes[..],
            FrameMatcher::Prefix(bytes) => frame.starts_with(bytes),
            FrameMatcher::Predicate(f) => f(frame),
        }
    }

    /// True for [`FrameMatcher::Any`]: matched frames are data, not heartbeats.
    pub fn is_any(&self) -> bool {
        matches!(self, FrameMatcher::Any)
    }
}

impl fmt::Debug for FrameMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameMatcher::Any => f.write_str("Any"),
            FrameMatcher::Exact(b) => f.debug_tuple("Exact").field(b).finish(),
            FrameMatcher::Prefix(b) => f.debug_tuple("Prefix").field(b).finish(),
            FrameMatcher::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// Answering the peer's own heartbeats: when an inbound frame matches `matcher`, send `reply`
/// as one frame.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which inbound frames to answer.
    pub matcher: FrameMatcher,
    /// The reply frame's payload.
    pub reply: Bytes,
}

/// Parameters of a [`RawConnection`]. Check them with [`validate`](Self::validate) (done by
/// [`RawConnection::new`]).
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::raw::RawConfig;
/// let cfg = RawConfig::new("lines".parse().unwrap());
/// assert_eq!(cfg.ping_interval, Some(Duration::from_secs(15)));
/// assert_eq!(cfg.ping_timeout, Duration::from_secs(10));
/// assert!(cfg.ping.is_none()); // idle-only: dead after 25 s without inbound bytes
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The peer's framing, for both directions. Each connection starts from a fresh copy
    /// ([`Framing::reset`]); its maximum frame length bounds the receive buffer.
    pub framing: Framing,
    /// Ping (or, without a [`ping`](Self::ping) payload, start the dead-peer countdown) after
    /// this long without receiving anything. `None`: never ping, never declare the peer dead.
    pub ping_interval: Option<Duration>,
    /// The peer is dead when nothing at all arrives this long after the ping (non-zero).
    pub ping_timeout: Duration,
    /// The ping frame's payload. `None` (idle-only mode): nothing is sent on our own, the peer is
    /// dead when nothing arrives for `ping_interval + ping_timeout`. Must be encodable by
    /// [`framing`](Self::framing); requires `ping_interval`.
    pub ping: Option<Bytes>,
    /// How to recognise the peer's pong (see the [module docs](self) for the rules).
    pub pong: FrameMatcher,
    /// Reply to the peer's own heartbeats; the reply must be encodable by the framing.
    pub answer: Option<Answer>,
    /// Deliver heartbeat frames (those matching a specific [`pong`](Self::pong) matcher or the
    /// [`answer`](Self::answer) rule) as [`Event::Data`] too, instead of swallowing them.
    pub deliver_heartbeats: bool,
    /// [`Event::Idle`] after this long without receiving anything.
    pub reader_idle: Option<Duration>,
    /// [`Event::Idle`] after this long without sending anything.
    pub writer_idle: Option<Duration>,
    /// [`Event::Idle`] after this long without receiving nor sending anything.
    pub all_idle: Option<Duration>,
    /// Limit on queued outgoing messages (payload plus [`FRAME_OVERHEAD`] per message).
    pub max_queued_bytes: usize,
    /// After a local close has shut the write half down, wait this long for the peer's end of
    /// stream (reading and discarding) before the connection is [`State::Closed`].
    pub linger: Duration,
}

impl RawConfig {
    /// Defaults around `framing`, like [`ConnectionConfig`](crate::connection::ConnectionConfig)'s:
    /// ping interval 15 s, timeout 10 s, no ping payload (idle-only), [`FrameMatcher::Any`], no
    /// answer rule, heartbeats swallowed, no idle events, 8 MiB send queue, 2 s linger.
    pub fn new(framing: Framing) -> Self {
        RawConfig {
            framing,
            ping_interval: Some(Duration::from_secs(15)),
            ping_timeout: Duration::from_secs(10),
            ping: None,
            pong: FrameMatcher::Any,
            answer: None,
            deliver_heartbeats: false,
            reader_idle: None,
            writer_idle: None,
            all_idle: None,
            max_queued_bytes: 8 * 1024 * 1024,
            linger: Duration::from_secs(2),
        }
    }

    /// Checks every field (see the field docs).
    pub fn validate(&self) -> Result<(), RawConfigError> {
        self.control_frames().map(|_| ())
    }

    /// Validates, and encodes the ping and reply frames once.
    fn control_frames(&self) -> Result<(Option<Bytes>, Option<Bytes>), RawConfigError> {
        for (name, zero) in [
            ("max_queued_bytes", self.max_queued_bytes == 0),
            ("linger", self.linger.is_zero()),
        ] {
            if zero {
                return Err(RawConfigError::Zero { name });
            }
        }
        if self.ping.is_some() && self.ping_interval.is_none() {
            return Err(RawConfigError::PingWithoutInterval);
        }
        let empty_prefix = |m: &FrameMatcher| matches!(m, FrameMatcher::Prefix(p) if p.is_empty());
        if empty_prefix(&self.pong) {
            return Err(RawConfigError::EmptyPrefix { which: "pong" });
        }
        if self.answer.as_ref().is_some_and(|a| empty_prefix(&a.matcher)) {
            return Err(RawConfigError::EmptyPrefix { which: "answer" });
        }
        self.liveness_config().validate()?;
        let encode = |which: &'static str, payload: &Bytes| {
            let mut buf = BytesMut::new();
            self.framing
                .encode(payload, &mut buf)
                .map(|()| buf.freeze())
                .map_err(|source| RawConfigError::Unencodable { which, source })
        };
        let ping = self.ping.as_ref().map(|p| encode("ping", p)).transpose()?;
        let reply = self
            .answer
            .as_ref()
            .map(|a| encode("answer reply", &a.reply))
            .transpose()?;
        Ok((ping, reply))
    }

    fn liveness_config(&self) -> LivenessConfig {
        LivenessConfig {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            peer_interval: None,
            reader_idle: self.reader_idle,
            writer_idle: self.writer_idle,
            all_idle: self.all_idle,
            min_peer_ping_interval: None,
            ..LivenessConfig::default()
        }
    }
}

/// An invalid [`RawConfig`].
///
/// ```
/// use bytes::Bytes;
/// use framelink_proto::raw::{RawConfig, RawConfigError};
/// let mut cfg = RawConfig::new("lines".parse().unwrap());
/// cfg.ping = Some(Bytes::from_static(b"PI\nNG"));
/// assert_eq!(cfg.validate().unwrap_err().to_string(),
///     "the ping frame cannot be encoded by the framing: payload contains a delimiter at byte 2");
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RawConfigError {
    /// A duration or size that must be non-zero is zero.
    #[error("{name} must be greater than zero")]
    Zero {
        /// The field name.
        name: &'static str,
    },
    /// A ping payload is set but `ping_interval` is `None`: it would never be sent.
    #[error("a ping payload is set but ping_interval is None, so it would never be sent")]
    PingWithoutInterval,
    /// A [`FrameMatcher::Prefix`] with no bytes would match every frame.
    #[error("the {which} matcher is an empty prefix, which matches every frame (use Any)")]
    EmptyPrefix {
        /// `"pong"` or `"answer"`.
        which: &'static str,
    },
    /// The ping or reply payload cannot be framed.
    #[error("the {which} frame cannot be encoded by the framing: {source}")]
    Unencodable {
        /// `"ping"` or `"answer reply"`.
        which: &'static str,
        /// Why.
        source: EncodeError,
    },
    /// The keep-alive settings are rejected by [`LivenessConfig::validate`].
    #[error("keep-alive settings: {0}")]
    Liveness(#[from] LivenessConfigError),
}

/// A message waiting to be written: its framing computed at [`RawConnection::send`].
#[derive(Debug)]
struct Queued {
    parts: FrameParts,
    payload: Bytes,
}

/// How the write half is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// Not closing output.
    No,
    /// Local close: write the queued frames, then shut down.
    AfterQueue,
    /// Failure: complete the frame in flight, then shut down.
    AfterFrame,
    /// [`Event::ShutdownWrite`] was emitted at this instant.
    Done(Instant),
}

/// One raw connection: the user's framing with keep-alive. See the [module documentation](self).
#[derive(Debug)]
pub struct RawConnection {
    config: RawConfig,
    /// A fresh copy of the framing: decodes input, encodes output.
    framing: Framing,
    /// The encoded ping frame, if pings are sent.
    ping_frame: Option<Bytes>,
    /// The encoded answer reply frame, if there is an answer rule.
    reply_frame: Option<Bytes>,
    /// In idle-only mode, the dead-peer rule reported as [`DeathCause::PeerSilent`].
    silence_limit: Option<Duration>,
    liveness: Liveness,
    state: State,
    recv: BytesMut,
    /// `recv.len()` after the last processing: anything beyond is new.
    recv_seen: usize,
    /// Stop decoding input (closing, closed).
    input_done: bool,
    /// A ping to write (its liveness context).
    ping_pending: Option<[u8; 8]>,
    /// Our ping was written and no pong has matched it yet.
    awaiting_pong: Option<[u8; 8]>,
    /// A reply to the peer's heartbeat is to be written.
    answer_pending: bool,
    data: VecDeque<Queued>,
    queued_bytes: usize,
    /// The rest of a frame partly handed out by `poll_transmit` (payload, trailer).
    in_flight: VecDeque<Bytes>,
    shutdown: Shutdown,
    closed_reported: bool,
    events: VecDeque<Event>,
    stats: Stats,
}

impl RawConnection {
    /// A connection established at `now`: [`State::Open`] at once, the first ping (if any) due
    /// at `now + ping_interval`.
    pub fn new(config: RawConfig, now: Instant) -> Result<Self, RawConfigError> {
        let (ping_frame, reply_frame) = config.control_frames()?;
        let liveness = Liveness::new(config.liveness_config(), now)?;
        let silence_limit = match (&config.ping, config.ping_interval) {
            (None, Some(interval)) => Some(interval.saturating_add(config.ping_timeout)),
            _ => None,
        };
        Ok(RawConnection {
            framing: config.framing.reset(),
            config,
            ping_frame,
            reply_frame,
            silence_limit,
            liveness,
            state: State::Open,
            recv: BytesMut::new(),
            recv_seen: 0,
            input_done: false,
            ping_pending: None,
            awaiting_pong: None,
            answer_pending: false,
            data: VecDeque::new(),
            queued_bytes: 0,
            in_flight: VecDeque::new(),
            shutdown: Shutdown::No,
            closed_reported: false,
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    // ---- accessors ----

    /// The current state: [`State::Open`], [`State::Closing`] (local close in progress) or
    /// [`State::Closed`]; never `Handshaking`.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &RawConfig {
        &self.config
    }

    /// Round-trip-time estimate from ping / matched pong pairs.
    pub fn rtt(&self) -> Option<RttEstimate> {
        self.liveness.rtt()
    }

    /// Counters: `messages_*` count every frame (pings, pongs and replies too), `data_*` the
    /// application's.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes of queued messages (payload + [`FRAME_OVERHEAD`] each), counted against
    /// [`RawConfig::max_queued_bytes`].
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// What a message of `len` payload bytes counts against the queue limit.
    pub fn message_cost(&self, len: usize) -> usize {
        len.saturating_add(FRAME_OVERHEAD)
    }

    /// The connection is finished ([`State::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Nothing will ever come out of [`poll_transmit`](Self::poll_transmit) again.
    pub fn is_drained(&self) -> bool {
        self.in_flight.is_empty()
            && match self.shutdown {
                Shutdown::Done(_) => true,
                Shutdown::No => self.state == State::Closed,
                Shutdown::AfterQueue | Shutdown::AfterFrame => false,
            }
    }

    // ---- input ----

    /// The receive buffer: read socket bytes into it, then call
    /// [`process_input`](Self::process_input). Don't remove bytes from it.
    pub fn recv_buf(&mut self) -> &mut BytesMut {
        &mut self.recv
    }

    /// Copies `data` into the receive buffer and processes it.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.recv.extend_from_slice(data);
        self.process_input(now);
    }

    /// Handles the bytes added to [`recv_buf`](Self::recv_buf) since the last call: decodes
    /// frames, answers or matches heartbeats, delivers the rest as [`Event::Data`].
    pub fn process_input(&mut self, now: Instant) {
        let new = self.recv.len().saturating_sub(self.recv_seen);
        if new > 0 {
            self.stats.bytes_in = self.stats.bytes_in.saturating_add(new as u64);
            if self.state != State::Closed {
                // Any bytes prove the peer alive, even part of a frame.
                self.liveness.on_receive(now);
            }
        }
        if self.state != State::Open {
            self.input_done = true;
        }
        while !self.input_done {
            match self.framing.decode(&mut self.recv) {
                Ok(Some(frame)) => self.on_frame(frame, now),
                Ok(None) => break,
                Err(e) if e.is_recoverable() => self.events.push_back(Event::FrameDiscarded(e)),
                Err(e) => self.framing_failed(e, now),
            }
        }
        if self.input_done {
            self.recv.clear();
        }
        self.recv_seen = self.recv.len();
        self.drain_liveness(now);
    }

    /// The peer ended its write half (TCP FIN) or the transport failed: the connection is
    /// closed. The framing's [`decode_eof`](FrameDecoder::decode_eof) gets a chance to produce a
    /// last frame first.
    pub fn handle_eof(&mut self, now: Instant) {
        if self.recv.len() > self.recv_seen {
            self.process_input(now);
        }
        let mut mid_message = false;
        while !self.input_done {
            match self.framing.decode_eof(&mut self.recv) {
                Ok(Some(frame)) => self.on_frame(frame, now),
                Ok(None) => break,
                Err(e) if e.is_recoverable() => self.events.push_back(Event::FrameDiscarded(e)),
                Err(e) if matches!(e.kind(), DecodeErrorKind::Truncated { .. }) => {
                    mid_message = true;
                    break;
                }
                Err(e) => self.framing_failed(e, now),
            }
        }
        self.input_done = true;
        self.recv.clear();
        self.recv_seen = 0;
        let code = if mid_message {
            CloseCode::ProtocolError
        } else {
            CloseCode::GoingAway
        };
        self.report_closed(
            code,
            String::new(),
            true,
            Some(ConnectionError::EndOfStream { mid_message }),
        );
        if self.shutdown == Shutdown::AfterQueue {
            self.shutdown = Shutdown::AfterFrame;
        }
        self.enter_closed(now);
    }

    fn on_frame(&mut self, frame: Bytes, now: Instant) {
        self.stats.messages_in += 1;
        let mut heartbeat = false;
        let mut answered_our_ping = false;
        if self.config.pong.matches(&frame) {
            heartbeat = !self.config.pong.is_any();
            if let Some(context) = self.awaiting_pong.take() {
                answered_our_ping = true;
                if let Some(sample) = self.liveness.on_pong(context, now) {
                    self.events.push_back(Event::Rtt(sample));
                }
            }
        }
        if let Some(answer) = &self.config.answer {
            if answer.matcher.matches(&frame) {
                heartbeat |= !answer.matcher.is_any();
                if !answered_our_ping {
                    self.answer_pending = true;
                }
            }
        }
        if !heartbeat || self.config.deliver_heartbeats {
            self.stats.data_in += 1;
            self.events.push_back(Event::Data(frame));
        }
    }

    fn framing_failed(&mut self, e: DecodeError, now: Instant) {
        let code = match e.kind() {
            DecodeErrorKind::FrameTooLong { .. } | DecodeErrorKind::DelimiterNotFound { .. } => {
                CloseCode::MessageTooBig
            }
            _ => CloseCode::ProtocolError,
        };
        self.fail(code, ConnectionError::Framing(e), now);
    }

    // ---- output ----

    /// Queues an application message, framed with [`RawConfig::framing`]. Refused once closing,
    /// when the framing cannot encode it ([`SendError::Unencodable`]), or when the queue is full.
    pub fn send(&mut self, payload: Bytes, _now: Instant) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        let parts = self
            .framing
            .frame_parts(&payload)
            .map_err(SendError::Unencodable)?;
        let cost = self.message_cost(payload.len());
        let limit = self.config.max_queued_bytes;
        if self.queued_bytes.saturating_add(cost) > limit {
            return Err(SendError::QueueFull {
                queued: self.queued_bytes,
                len: cost,
                limit,
            });
        }
        self.queued_bytes += cost;
        self.data.push_back(Queued { parts, payload });
        Ok(())
    }

    /// Checks that `payload` can be framed, without queueing it: the same
    /// [`SendError::Unencodable`] as [`send`](Self::send).
    pub fn check_message(&self, payload: &[u8]) -> Result<(), SendError> {
        self.framing
            .frame_parts(payload)
            .map(|_| ())
            .map_err(SendError::Unencodable)
    }

    /// Closes gracefully: [`Event::Closed`] now (with `code` and `reason`, `by_peer: false`),
    /// queued messages are still written, then [`Event::ShutdownWrite`]. Raw mode sends no close
    /// message. No-op once closing.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if self.state != State::Open {
            return;
        }
        self.report_closed(code, reason.to_owned(), false, None);
        self.state = State::Closing;
        self.input_done = true;
        self.ping_pending = None;
        self.answer_pending = false;
        self.shutdown = Shutdown::AfterQueue;
        self.maybe_shutdown(now);
    }

    /// The next bytes to write, if any. Call until `None` after every input. A frame's chunks
    /// come out consecutively; a reply to the peer's heartbeat, then our ping, go ahead of queued
    /// messages.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(chunk) = self.in_flight.pop_front() {
            self.maybe_shutdown(now);
            return Some(self.out(chunk));
        }
        if matches!(self.shutdown, Shutdown::Done(_)) {
            return None;
        }
        if self.state == State::Open {
            if self.answer_pending {
                self.answer_pending = false;
                if let Some(frame) = self.reply_frame.clone() {
                    return Some(self.control(frame, now));
                }
            }
            if let Some(context) = self.ping_pending.take() {
                if let Some(frame) = self.ping_frame.clone() {
                    self.awaiting_pong = Some(context);
                    return Some(self.control(frame, now));
                }
            }
        }
        let data_allowed =
            self.state == State::Open || self.shutdown == Shutdown::AfterQueue;
        if data_allowed {
            if let Some(Queued { parts, payload }) = self.data.pop_front() {
                self.queued_bytes = self
                    .queued_bytes
                    .saturating_sub(self.message_cost(payload.len()));
                self.stats.messages_out += 1;
                self.stats.data_out += 1;
                self.liveness.on_send_data(now);
                let chunk = if payload.len() > COPY_THRESHOLD {
                    // Header, payload and trailer as separate chunks: the payload is not copied.
                    let mut chunks = [
                        Bytes::copy_from_slice(parts.head()),
                        payload,
                        Bytes::copy_from_slice(parts.tail()),
                    ]
                    .into_iter()
                    .filter(|c| !c.is_empty());
                    let first = chunks.next().unwrap_or_default();
                    self.in_flight.extend(chunks);
                    first
                } else {
                    let mut buf =
                        BytesMut::with_capacity(parts.head.len() + payload.len() + parts.tail.len());
                    buf.extend_from_slice(parts.head());
                    buf.extend_from_slice(&payload);
                    buf.extend_from_slice(parts.tail());
                    buf.freeze()
                };
                self.maybe_shutdown(now);
                return Some(self.out(chunk));
            }
        }
        self.maybe_shutdown(now);
        None
    }

    /// Hands out a ping or reply frame.
    fn control(&mut self, frame: Bytes, now: Instant) -> Bytes {
        self.stats.messages_out += 1;
        self.liveness.on_send(now);
        self.out(frame)
    }

    fn out(&mut self, chunk: Bytes) -> Bytes {
        self.stats.bytes_out = self.stats.bytes_out.saturating_add(chunk.len() as u64);
        chunk
    }

    /// Emits [`Event::ShutdownWrite`] once the output a close still owes has been handed out.
    fn maybe_shutdown(&mut self, now: Instant) {
        let finished = self.in_flight.is_empty()
            && match self.shutdown {
                Shutdown::AfterQueue => self.data.is_empty(),
                Shutdown::AfterFrame => true,
                Shutdown::No | Shutdown::Done(_) => false,
            };
        if finished {
            self.shutdown = Shutdown::Done(now);
            self.events.push_back(Event::ShutdownWrite);
        }
    }

    // ---- timers ----

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.state, self.shutdown) {
            (State::Closed, _) => None,
            (State::Closing, Shutdown::Done(at)) => {
                Some(at.checked_add(self.config.linger).unwrap_or(at))
            }
            _ => self.liveness.poll_timeout(),
        }
    }

    /// Handles whatever timers are due at `now` (early or spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match (self.state, self.shutdown) {
            (State::Closed, _) => {}
            (State::Closing, Shutdown::Done(at)) => {
                if now >= at.checked_add(self.config.linger).unwrap_or(at) {
                    self.enter_closed(now);
                }
            }
            _ => {
                self.liveness.handle_timeout(now);
                self.drain_liveness(now);
            }
        }
    }

    fn drain_liveness(&mut self, now: Instant) {
        while let Some(event) = self.liveness.poll_event() {
            match event {
                LivenessEvent::SendPing { context } => {
                    if self.state == State::Open && self.ping_frame.is_some() {
                        self.ping_pending = Some(context);
                    }
                }
                LivenessEvent::Idle(kind) => self.events.push_back(Event::Idle(kind)),
                LivenessEvent::PeerDead {
                    silent_for, cause, ..
                } => {
                    // Idle-only mode: the "ping" was never sent; what fired is the silence rule.
                    let cause = match self.silence_limit {
                        Some(limit) => DeathCause::PeerSilent { limit },
                        None => cause,
                    };
                    self.fail(
                        CloseCode::PeerTimedOut,
                        ConnectionError::PeerDead { silent_for, cause },
                        now,
                    );
                }
                // Not configured (no minimum peer ping interval): never emitted.
                LivenessEvent::TooManyPings { .. } => {}
            }
        }
    }

    // ---- closing ----

    /// We close because something went wrong: [`Event::Closed`] (once), queued messages dropped,
    /// the frame in flight completed, then [`Event::ShutdownWrite`].
    fn fail(&mut self, code: CloseCode, error: ConnectionError, now: Instant) {
        self.report_closed(code, error.to_string(), false, Some(error));
        if !matches!(self.shutdown, Shutdown::Done(_)) {
            self.shutdown = Shutdown::AfterFrame;
        }
        self.enter_closed(now);
    }

    fn report_closed(
        &mut self,
        code: CloseCode,
        reason: String,
        by_peer: bool,
        error: Option<ConnectionError>,
    ) {
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(Event::Closed {
                code,
                reason,
                by_peer,
                error,
            });
        }
    }

    fn enter_closed(&mut self, now: Instant) {
        self.state = State::Closed;
        self.input_done = true;
        self.recv.clear();
        self.recv_seen = 0;
        self.data.clear();
        self.queued_bytes = 0;
        self.ping_pending = None;
        self.awaiting_pong = None;
        self.answer_pending = false;
        self.maybe_shutdown(now);
    }

    /// The next event, if any. Call until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

impl Machine for RawConnection {
    fn recv_buf(&mut self) -> &mut BytesMut {
        RawConnection::recv_buf(self)
    }
    fn process_input(&mut self, now: Instant) {
        RawConnection::process_input(self, now)
    }
    fn handle_eof(&mut self, now: Instant) {
        RawConnection::handle_eof(self, now)
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        RawConnection::poll_transmit(self, now)
    }
    fn poll_event(&mut self) -> Option<Event> {
        RawConnection::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        RawConnection::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        RawConnection::handle_timeout(self, now)
    }
    fn send(&mut self, payload: Bytes, now: Instant) -> Result<(), SendError> {
        RawConnection::send(self, payload, now)
    }
    fn close(&mut self, code: CloseCode, reason: &str, now: Instant) {
        RawConnection::close(self, code, reason, now)
    }
    fn state(&self) -> State {
        RawConnection::state(self)
    }
    fn is_drained(&self) -> bool {
        RawConnection::is_drained(self)
    }
    fn queued_bytes(&self) -> usize {
        RawConnection::queued_bytes(self)
    }
    fn max_queued_bytes(&self) -> usize {
        self.config.max_queued_bytes
    }
    fn message_cost(&self, len: usize) -> usize {
        RawConnection::message_cost(self, len)
    }
    fn check_message(&self, payload: &[u8]) -> Result<(), SendError> {
        RawConnection::check_message(self, payload)
    }
    fn linger(&self) -> Duration {
        self.config.linger
    }
}
