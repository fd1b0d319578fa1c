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
use crate::connection::{
    ConnectionError, Event, SendError, State, Stats, COALESCE, COPY_THRESHOLD,
};
use crate::liveness::{
    DeathCause, Liveness, LivenessConfig, LivenessConfigError, LivenessEvent, RttEstimate,
};
use crate::machine::Machine;
use crate::wire::CloseCode;

/// What each queued message counts against [`RawConfig::max_queued_bytes`] on top of its
/// payload: [`MAX_FRAME_OVERHEAD`], an upper bound of any framing's header plus trailer.
pub const FRAME_OVERHEAD: usize = MAX_FRAME_OVERHEAD;

/// The function inside a [`FrameMatcher::Predicate`]: true for a matching frame payload.
pub type FramePredicate = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

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
    Predicate(FramePredicate),
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
    /// Swallow frames matching a specific [`pong`](Self::pong) matcher even when no ping of
    /// ours is outstanding (for peers that send pong-like keep-alives on their own). Off by
    /// default: a frame equal to the pong that arrives while no ping waits for an answer is the
    /// peer's data (an echo server echoing a message that happens to equal the ping's pong), and
    /// is delivered.
    pub pong_always: bool,
    /// [`Event::Idle`] after this long without receiving anything.
    pub reader_idle: Option<Duration>,
    /// [`Event::Idle`] after this long without sending anything.
    pub writer_idle: Option<Duration>,
    /// [`Event::Idle`] after this long without receiving nor sending anything.
    pub all_idle: Option<Duration>,
    /// Close (code [`CloseCode::Idle`]) after this long without an application message in
    /// either direction: frames recognised as heartbeats (pongs, answered pings) and our own
    /// pings do not count, so a connection kept alive only by heartbeats is still evicted.
    /// `None` (default): never.
    pub idle_timeout: Option<Duration>,
    /// Limit on queued outgoing messages (payload plus [`FRAME_OVERHEAD`] per message).
    pub max_queued_bytes: usize,
    /// After a local close has shut the write half down, wait this long for the peer's end of
    /// stream (reading and discarding) before the connection is [`State::Closed`].
    pub linger: Duration,
    /// A frame must arrive whole within this long of its first byte, or the connection is
    /// closed (code [`CloseCode::PeerTimedOut`], [`ConnectionError::FrameTimeout`] saying how
    /// many bytes had arrived, and of how many when the framing knows the length): a peer that
    /// trickles a frame byte by byte no longer holds its receive buffer for ever. `None`: no
    /// bound. Default 30 s
    /// ([`DEFAULT_FRAME_TIMEOUT`](crate::connection::DEFAULT_FRAME_TIMEOUT)).
    pub frame_timeout: Option<Duration>,
}

impl RawConfig {
    /// Defaults around `framing`, like [`ConnectionConfig`](crate::connection::ConnectionConfig)'s:
    /// ping interval 15 s, timeout 10 s, no ping payload (idle-only), [`FrameMatcher::Any`], no
    /// answer rule, heartbeats swallowed, no idle events, 8 MiB send queue, 2 s linger, 30 s for
    /// a frame to arrive whole.
    pub fn new(framing: Framing) -> Self {
        RawConfig {
            framing,
            ping_interval: Some(Duration::from_secs(15)),
            ping_timeout: Duration::from_secs(10),
            ping: None,
            pong: FrameMatcher::Any,
            answer: None,
            deliver_heartbeats: false,
            pong_always: false,
            reader_idle: None,
            writer_idle: None,
            all_idle: None,
            idle_timeout: None,
            max_queued_bytes: 8 * 1024 * 1024,
            linger: Duration::from_secs(2),
            frame_timeout: Some(crate::connection::DEFAULT_FRAME_TIMEOUT),
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
            (
                "idle_timeout",
                self.idle_timeout.is_some_and(|d| d.is_zero()),
            ),
            (
                "frame_timeout",
                self.frame_timeout.is_some_and(|d| d.is_zero()),
            ),
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
        if self
            .answer
            .as_ref()
            .is_some_and(|a| empty_prefix(&a.matcher))
        {
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
    /// When the first byte of the partial frame at the front of `recv` arrived.
    frame_started: Option<Instant>,
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
    /// The last application message received or queued (for [`RawConfig::idle_timeout`]).
    last_data: Instant,
    /// Messages queued that were never written: the connection closed first.
    unsent: Vec<Bytes>,
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
            frame_started: None,
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
            last_data: now,
            unsent: Vec::new(),
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

    /// Frees the memory of empty internal queues. Nothing observable changes; drivers of many
    /// mostly idle connections call it when the connection is quiet.
    pub fn shrink_buffers(&mut self) {
        if self.data.is_empty() {
            self.data = VecDeque::new();
        }
        if self.in_flight.is_empty() {
            self.in_flight = VecDeque::new();
        }
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        self.liveness.shrink_buffers();
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

    /// Full length of the partial frame at the front of the receive buffer, once the framing
    /// knows it (see [`Machine::pending_frame_len`]).
    pub fn pending_frame_len(&self) -> Option<usize> {
        let len = self.framing.pending_frame_length(&self.recv)?;
        usize::try_from(len).ok()
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
        let mut decoded = false;
        while !self.input_done {
            match self.framing.decode(&mut self.recv) {
                Ok(Some(frame)) => {
                    decoded = true;
                    self.on_frame(frame, now);
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    decoded = true;
                    self.events.push_back(Event::FrameDiscarded(e));
                }
                Err(e) => self.framing_failed(e, now),
            }
        }
        if self.input_done {
            self.recv.clear();
        }
        self.frame_started =
            crate::connection::frame_start(self.frame_started, &self.recv, decoded, now);
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
            // A pong answers our outstanding ping; without one it is data, unless the user
            // said the peer sends pongs on its own (`pong_always`).
            if let Some(context) = self.awaiting_pong.take() {
                heartbeat = !self.config.pong.is_any();
                answered_our_ping = true;
                if let Some(sample) = self.liveness.on_pong(context, now) {
                    self.events.push_back(Event::Rtt(sample));
                }
            } else if self.config.pong_always {
                heartbeat = !self.config.pong.is_any();
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
        if !heartbeat {
            self.last_data = self.last_data.max(now);
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
    pub fn send(&mut self, payload: Bytes, now: Instant) -> Result<(), SendError> {
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
        self.last_data = self.last_data.max(now);
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
        let data_allowed = self.state == State::Open || self.shutdown == Shutdown::AfterQueue;
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
                    // Small frames go out together: the ones queued behind this one are glued
                    // into the same chunk (one allocation, one slot of a vectored write), up to
                    // COALESCE bytes, as protocol mode does.
                    let len = parts.head.len() + payload.len() + parts.tail.len();
                    let room = if self.data.is_empty() {
                        len
                    } else {
                        COALESCE.max(len)
                    };
                    let mut buf = BytesMut::with_capacity(room);
                    buf.extend_from_slice(parts.head());
                    buf.extend_from_slice(&payload);
                    buf.extend_from_slice(parts.tail());
                    while let Some(next) = self.data.front() {
                        let len =
                            next.parts.head.len() + next.payload.len() + next.parts.tail.len();
                        if next.payload.len() > COPY_THRESHOLD || buf.len() + len > COALESCE {
                            break;
                        }
                        let Some(Queued { parts, payload }) = self.data.pop_front() else {
                            break;
                        };
                        self.queued_bytes = self
                            .queued_bytes
                            .saturating_sub(self.message_cost(payload.len()));
                        self.stats.messages_out += 1;
                        self.stats.data_out += 1;
                        buf.extend_from_slice(parts.head());
                        buf.extend_from_slice(&payload);
                        buf.extend_from_slice(parts.tail());
                    }
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
            (State::Open, _) => [
                self.liveness.poll_timeout(),
                self.idle_deadline(),
                self.frame_deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
            _ => self.liveness.poll_timeout(),
        }
    }

    /// When the partial frame at the front of the receive buffer times out, if one does.
    fn frame_deadline(&self) -> Option<Instant> {
        let started = self.frame_started?;
        if self.input_done || self.state != State::Open {
            return None;
        }
        started.checked_add(self.config.frame_timeout?)
    }

    /// Closes at once: queued frames and buffered input are dropped, the frame in flight is
    /// completed, then the write half is shut down; [`Event::Closed`] carries `code`, `reason`
    /// and [`ConnectionError::Aborted`]. No-op once closed.
    pub fn abort(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let error = ConnectionError::Aborted {
            reason: reason.to_owned(),
        };
        self.report_closed(code, reason.to_owned(), false, Some(error));
        if !matches!(self.shutdown, Shutdown::Done(_)) {
            self.shutdown = Shutdown::AfterFrame;
        }
        self.enter_closed(now);
        self.recv = BytesMut::new();
    }

    /// When [`RawConfig::idle_timeout`] closes the connection, if it is set.
    fn idle_deadline(&self) -> Option<Instant> {
        self.config
            .idle_timeout
            .and_then(|d| self.last_data.checked_add(d))
    }

    /// Handles whatever timers are due at `now` (early or spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.frame_deadline().is_some_and(|at| now >= at) {
            let error = ConnectionError::FrameTimeout {
                timeout: self.config.frame_timeout.unwrap_or_default(),
                received: self.recv.len(),
                expected: self.pending_frame_len(),
            };
            self.fail(CloseCode::PeerTimedOut, error, now);
            // Its memory goes at once.
            self.recv = BytesMut::new();
            return;
        }
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
                if self.state == State::Open && self.idle_deadline().is_some_and(|at| now >= at) {
                    let idle = self.config.idle_timeout.unwrap_or_default();
                    self.close(CloseCode::Idle, &format!("no messages for {idle:?}"), now);
                }
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
        self.unsent.extend(self.data.drain(..).map(|q| q.payload));
        self.frame_started = None;
        self.queued_bytes = 0;
        self.ping_pending = None;
        self.awaiting_pong = None;
        self.answer_pending = false;
        self.maybe_shutdown(now);
    }

    /// Messages queued that were never written because the connection closed first: raw mode
    /// cannot resend them, so the application learns which. Taken once.
    pub fn take_unsent(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.unsent)
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
    fn take_unsent(&mut self) -> Vec<Bytes> {
        RawConnection::take_unsent(self)
    }
    fn process_input(&mut self, now: Instant) {
        RawConnection::process_input(self, now)
    }
    fn pending_frame_len(&self) -> Option<usize> {
        RawConnection::pending_frame_len(self)
    }
    fn rtt(&self) -> Option<RttEstimate> {
        RawConnection::rtt(self)
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
    fn abort(&mut self, code: CloseCode, reason: &str, now: Instant) {
        RawConnection::abort(self, code, reason, now)
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
    fn shrink_buffers(&mut self) {
        RawConnection::shrink_buffers(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::IdleKind;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn framing(spec: &str) -> Framing {
        spec.parse().unwrap()
    }

    fn config(spec: &str) -> RawConfig {
        RawConfig::new(framing(spec))
    }

    /// The Netty-style setup of the module example: "length:4", ping "PING", pong "PONG",
    /// interval 15 s, timeout 10 s.
    fn netty() -> RawConfig {
        RawConfig {
            ping: Some(Bytes::from_static(b"PING")),
            pong: FrameMatcher::exact(&b"PONG"[..]),
            ..config("length:4")
        }
    }

    fn conn(cfg: RawConfig, t0: Instant) -> RawConnection {
        RawConnection::new(cfg, t0).unwrap()
    }

    #[test]
    fn messages_never_written_are_handed_back_once_closed() {
        let t0 = Instant::now();
        let mut c = conn(config("length:4"), t0);
        c.send(Bytes::from_static(b"written"), t0).unwrap();
        let wire = transmit_all(&mut c, t0);
        assert_eq!(wire, encode("length:4", &[b"written"]));
        c.send(Bytes::from_static(b"one"), t0).unwrap();
        c.send(Bytes::from_static(b"two"), t0).unwrap();
        assert!(c.take_unsent().is_empty(), "still queued, not lost");
        c.handle_eof(t0);
        assert_eq!(
            c.take_unsent(),
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        assert!(c.take_unsent().is_empty(), "taken once");
    }

    fn encode(spec: &str, payloads: &[&[u8]]) -> Vec<u8> {
        let f = framing(spec);
        let mut out = BytesMut::new();
        for p in payloads {
            f.encode(p, &mut out).unwrap();
        }
        out.to_vec()
    }

    fn transmit_all(c: &mut RawConnection, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = c.poll_transmit(now) {
            out.extend_from_slice(&b);
        }
        out
    }

    fn events(c: &mut RawConnection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn data(events: &[Event]) -> Vec<Bytes> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    fn closed(events: &[Event]) -> Vec<(CloseCode, bool, Option<ConnectionError>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Closed {
                    code,
                    by_peer,
                    error,
                    ..
                } => Some((*code, *by_peer, error.clone())),
                _ => None,
            })
            .collect()
    }

    fn shutdowns(events: &[Event]) -> usize {
        events
            .iter()
            .filter(|e| matches!(e, Event::ShutdownWrite))
            .count()
    }

    /// Handles every timeout up to and including `until`, returning the events and output.
    fn run_until(c: &mut RawConnection, until: Instant) -> (Vec<Event>, Vec<u8>) {
        let mut ev = Vec::new();
        let mut out = Vec::new();
        while let Some(at) = c.poll_timeout().filter(|&at| at <= until) {
            c.handle_timeout(at);
            while let Some(b) = c.poll_transmit(at) {
                out.extend_from_slice(&b);
            }
            ev.extend(events(c));
        }
        (ev, out)
    }

    #[test]
    fn frames_are_delivered_and_echoed_across_every_split() {
        let big: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let payloads: Vec<&[u8]> = vec![b"a", b"", b"hello world", &big, b"end"];
        for spec in [
            "length:4",
            "length:2,le",
            "varint",
            "lines",
            "netstring",
            "delim:00",
            "magic:cafe",
        ] {
            let stream = encode(spec, &payloads);
            let t0 = Instant::now();
            let cuts: Vec<Vec<usize>> = (0..=stream.len())
                .map(|i| vec![i])
                .chain(std::iter::once((1..stream.len()).collect()))
                .collect();
            for cut in cuts {
                let mut c = conn(config(spec), t0);
                let mut from = 0;
                for &at in cut.iter().chain(std::iter::once(&stream.len())) {
                    c.recv_buf().extend_from_slice(&stream[from..at]);
                    c.process_input(t0);
                    from = at;
                }
                let got = data(&events(&mut c));
                assert_eq!(got, payloads, "{spec} cut {:?}", &cut[..cut.len().min(1)]);
                // Echo: sending the frames back reproduces the stream byte for byte.
                for frame in got {
                    c.send(frame, t0).unwrap();
                }
                assert_eq!(transmit_all(&mut c, t0), stream, "{spec} echo");
                assert_eq!(c.queued_bytes(), 0);
            }
        }
    }

    #[test]
    fn large_payloads_are_not_copied() {
        let t0 = Instant::now();
        let mut c = conn(config("length:4"), t0);
        let payload = Bytes::from(vec![7u8; COPY_THRESHOLD + 1]);
        c.send(payload.clone(), t0).unwrap();
        assert_eq!(c.poll_transmit(t0).unwrap(), &[0, 0, 4, 1][..]);
        let body = c.poll_transmit(t0).unwrap();
        assert_eq!(
            body.as_ptr(),
            payload.as_ptr(),
            "the payload itself, not a copy"
        );
        assert_eq!(c.poll_transmit(t0), None);
        let s = c.stats();
        assert_eq!((s.bytes_out, s.messages_out, s.data_out), (4 + 1025, 1, 1));
    }

    #[test]
    fn ping_is_sent_only_after_the_interval_of_quiet() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(15)));
        c.handle_timeout(t0 + secs(15) - Duration::from_nanos(1));
        assert_eq!(c.poll_transmit(t0 + secs(14)), None);
        c.handle_timeout(t0 + secs(15));
        assert_eq!(
            c.poll_transmit(t0 + secs(15)).unwrap(),
            &b"\0\0\0\x04PING"[..]
        );
        assert_eq!(c.poll_transmit(t0 + secs(15)), None);
        assert_eq!(events(&mut c), vec![]);
        assert_eq!(c.stats().messages_out, 1);
        assert_eq!(c.stats().data_out, 0);
        // Waiting for the answer now.
        assert_eq!(c.poll_timeout(), Some(t0 + secs(25)));
    }

    #[test]
    fn with_pong_always_unsolicited_pongs_are_swallowed_too() {
        let t0 = Instant::now();
        let mut c = conn(
            RawConfig {
                pong_always: true,
                ..netty()
            },
            t0,
        );
        c.handle_input(b"\0\0\0\x04PONG\0\0\0\x02hi", t0 + secs(1));
        assert_eq!(events(&mut c), vec![Event::Data(Bytes::from_static(b"hi"))]);
        assert!(c.rtt().is_none(), "no ping was outstanding: no sample");
        let (_, out) = run_until(&mut c, t0 + secs(16));
        assert_eq!(out, b"\0\0\0\x04PING");
        c.handle_input(b"\0\0\0\x04PONG", t0 + secs(16) + ms(20));
        assert_eq!(events(&mut c), vec![Event::Rtt(ms(20))]);
    }

    #[test]
    fn matched_pong_gives_the_rtt_sample_and_is_swallowed() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        let (_, out) = run_until(&mut c, t0 + secs(15));
        assert_eq!(out, b"\0\0\0\x04PING");
        c.handle_input(b"\0\0\0\x04PONG", t0 + secs(15) + ms(40));
        assert_eq!(events(&mut c), vec![Event::Rtt(ms(40))]);
        assert_eq!(c.rtt().unwrap().latest, ms(40));
        assert_eq!(c.rtt().unwrap().samples, 1);
        // A second pong, with no ping of ours outstanding: it is the peer's data (an echo
        // server echoing a message equal to the pong), delivered, no sample.
        c.handle_input(b"\0\0\0\x04PONG", t0 + secs(16));
        assert_eq!(
            events(&mut c),
            vec![Event::Data(Bytes::from_static(b"PONG"))]
        );
        assert_eq!(c.rtt().unwrap().samples, 1);
        // A frame merely starting like the pong is data.
        c.handle_input(b"\0\0\0\x05PONGS", t0 + secs(16));
        assert_eq!(
            events(&mut c),
            vec![Event::Data(Bytes::from_static(b"PONGS"))]
        );
        // The next ping is due 15 s after the last inbound bytes.
        assert_eq!(c.poll_timeout(), Some(t0 + secs(31)));
        let s = c.stats();
        // Three frames in, two of them data (the unsolicited PONG and PONGS).
        assert_eq!((s.messages_in, s.data_in), (3, 2));
    }

    #[test]
    fn pongs_are_delivered_when_asked_and_only_after_the_ping_went_out() {
        let t0 = Instant::now();
        let mut c = conn(
            RawConfig {
                deliver_heartbeats: true,
                ..netty()
            },
            t0,
        );
        c.handle_timeout(t0 + secs(15));
        // The ping is due but not written yet: a pong now cannot be its answer.
        c.handle_input(b"\0\0\0\x04PONG", t0 + secs(15) + ms(1));
        assert_eq!(
            events(&mut c),
            vec![Event::Data(Bytes::from_static(b"PONG"))]
        );
        assert_eq!(
            c.poll_transmit(t0 + secs(15) + ms(2)).unwrap(),
            &b"\0\0\0\x04PING"[..]
        );
        c.handle_input(b"\0\0\0\x04PONG", t0 + secs(15) + ms(10));
        assert_eq!(
            events(&mut c),
            vec![Event::Rtt(ms(10)), Event::Data(Bytes::from_static(b"PONG"))]
        );
    }

    #[test]
    fn any_matcher_takes_the_first_frame_after_the_ping_and_delivers_it() {
        let t0 = Instant::now();
        let mut c = conn(
            RawConfig {
                pong: FrameMatcher::Any,
                ..netty()
            },
            t0,
        );
        // Before any ping, frames are just data.
        c.handle_input(b"\0\0\0\x01x", t0);
        assert_eq!(events(&mut c), vec![Event::Data(Bytes::from_static(b"x"))]);
        let (_, out) = run_until(&mut c, t0 + secs(15));
        assert_eq!(out, b"\0\0\0\x04PING");
        c.handle_input(b"\0\0\0\x01y\0\0\0\x01z", t0 + secs(15) + ms(5));
        assert_eq!(
            events(&mut c),
            vec![
                Event::Rtt(ms(5)),
                Event::Data(Bytes::from_static(b"y")),
                Event::Data(Bytes::from_static(b"z")),
            ]
        );
    }

    #[test]
    fn predicate_and_prefix_matchers() {
        let t0 = Instant::now();
        for pong in [
            FrameMatcher::predicate(|f| f.first() == Some(&0x81)),
            FrameMatcher::prefix(&[0x81][..]),
        ] {
            let mut c = conn(
                RawConfig {
                    ping: Some(Bytes::from_static(&[0x80])),
                    pong,
                    ..config("length:1")
                },
                t0,
            );
            let (_, out) = run_until(&mut c, t0 + secs(15));
            assert_eq!(out, [1, 0x80]);
            c.handle_input(&[1, 0x01, 3, 0x81, 9, 9], t0 + secs(15) + ms(7));
            assert_eq!(
                events(&mut c),
                vec![Event::Data(Bytes::from_static(&[1])), Event::Rtt(ms(7))]
            );
        }
        let dbg = format!("{:?}", FrameMatcher::predicate(|_| true));
        assert_eq!(dbg, "Predicate(..)");
    }

    #[test]
    fn unanswered_ping_is_death_at_exactly_last_receive_plus_interval_plus_timeout() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        c.handle_input(b"\0\0\0\x02hi", t0 + secs(3));
        let (_, out) = run_until(&mut c, t0 + secs(18));
        assert_eq!(out, b"\0\0\0\x04PING");
        // Sending does not prove the peer alive.
        c.send(Bytes::from_static(b"more"), t0 + secs(20)).unwrap();
        transmit_all(&mut c, t0 + secs(20));
        let dead_at = t0 + secs(3) + secs(15) + secs(10);
        assert_eq!(c.poll_timeout(), Some(dead_at));
        c.handle_timeout(dead_at - Duration::from_nanos(1));
        assert_eq!(events(&mut c), vec![]);
        c.send(Bytes::from_static(b"dropped"), dead_at).unwrap();
        c.handle_timeout(dead_at);
        let ev = events(&mut c);
        let error = ConnectionError::PeerDead {
            silent_for: secs(25),
            cause: DeathCause::PingTimeout {
                context: [0; 8],
                timeout: secs(10),
            },
        };
        assert_eq!(
            ev,
            vec![
                Event::Closed {
                    code: CloseCode::PeerTimedOut,
                    reason: error.to_string(),
                    by_peer: false,
                    error: Some(error),
                },
                Event::ShutdownWrite,
            ]
        );
        assert_eq!(c.state(), State::Closed);
        assert!(c.is_drained());
        assert_eq!(c.poll_transmit(dead_at), None, "queued data is dropped");
        assert_eq!(c.queued_bytes(), 0);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(
            c.send(Bytes::from_static(b"x"), dead_at),
            Err(SendError::Closed)
        );
        // Nothing more, ever.
        c.handle_input(b"\0\0\0\x02hi", dead_at);
        c.handle_eof(dead_at);
        c.close(CloseCode::Normal, "", dead_at);
        assert_eq!(events(&mut c), vec![]);
    }

    #[test]
    fn inbound_bytes_postpone_pings_and_our_sends_do_not() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        // Even part of a frame counts.
        for i in 1..=10u64 {
            c.handle_input(b"\0\0", t0 + secs(10 * i));
            let (_, out) = run_until(&mut c, t0 + secs(10 * i));
            assert!(out.is_empty());
            assert_eq!(c.poll_timeout(), Some(t0 + secs(10 * i + 15)));
        }
        let t = t0 + secs(100);
        c.send(Bytes::from_static(b"x"), t + secs(5)).unwrap();
        transmit_all(&mut c, t + secs(5));
        let (_, out) = run_until(&mut c, t + secs(15));
        assert_eq!(out, b"\0\0\0\x04PING");
    }

    #[test]
    fn idle_only_mode_declares_death_after_interval_plus_timeout_of_silence() {
        let t0 = Instant::now();
        let mut cfg = config("lines");
        cfg.ping_interval = Some(secs(5));
        cfg.ping_timeout = secs(2);
        let mut c = conn(cfg, t0);
        c.handle_input(b"hi\n", t0 + secs(1));
        assert_eq!(data(&events(&mut c)), vec![Bytes::from_static(b"hi")]);
        // Our own traffic does not postpone it.
        c.send(Bytes::from_static(b"out"), t0 + secs(4)).unwrap();
        assert_eq!(transmit_all(&mut c, t0 + secs(4)), b"out\n");
        let dead_at = t0 + secs(1 + 5 + 2);
        let (ev, out) = run_until(&mut c, dead_at - Duration::from_nanos(1));
        assert_eq!(
            (ev, out),
            (vec![], vec![]),
            "nothing is ever sent on our own"
        );
        assert_eq!(c.poll_timeout(), Some(dead_at));
        c.handle_timeout(dead_at);
        let ev = events(&mut c);
        assert_eq!(
            closed(&ev),
            vec![(
                CloseCode::PeerTimedOut,
                false,
                Some(ConnectionError::PeerDead {
                    silent_for: secs(7),
                    cause: DeathCause::PeerSilent { limit: secs(7) },
                })
            )]
        );
        assert_eq!(shutdowns(&ev), 1);
        assert!(c.is_closed() && c.is_drained());

        // Without an interval: never dead, only idle events.
        let mut cfg = config("lines");
        cfg.ping_interval = None;
        cfg.reader_idle = Some(secs(30));
        let mut c = conn(cfg, t0);
        let (ev, out) = run_until(&mut c, t0 + secs(86_400));
        assert_eq!(ev, vec![Event::Idle(IdleKind::ReaderIdle)]);
        assert!(out.is_empty());
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn idle_timeout_closes_a_link_kept_alive_only_by_heartbeats() {
        let t0 = Instant::now();
        let mut cfg = netty();
        cfg.ping_interval = Some(secs(1));
        cfg.idle_timeout = Some(secs(5));
        let mut c = conn(cfg, t0);
        c.handle_input(&encode("length:4", &[b"hello"]), t0 + secs(2));
        c.send(Bytes::from_static(b"out"), t0 + secs(3)).unwrap();
        transmit_all(&mut c, t0 + secs(3));
        assert_eq!(data(&events(&mut c)), vec![Bytes::from_static(b"hello")]);
        // The peer answers every ping at once: the link is alive, but carries no messages.
        let (mut pings, mut closed_at) = (0, None);
        while let Some(at) = c.poll_timeout().filter(|&at| at <= t0 + secs(60)) {
            c.handle_timeout(at);
            if transmit_all(&mut c, at).ends_with(b"PING") {
                pings += 1;
                c.handle_input(&encode("length:4", &[b"PONG"]), at);
            }
            let ev = events(&mut c);
            if !closed(&ev).is_empty() {
                assert_eq!(closed(&ev), vec![(CloseCode::Idle, false, None)]);
                closed_at = Some(at);
                break;
            }
        }
        // The last message was queued at 3 s: closed at 3 + 5 s, the pongs notwithstanding.
        assert_eq!(closed_at, Some(t0 + secs(8)));
        assert!(pings >= 4, "{pings} pings");
        assert_eq!(c.state(), State::Closing);

        let mut zero = netty();
        zero.idle_timeout = Some(Duration::ZERO);
        assert_eq!(
            zero.validate(),
            Err(RawConfigError::Zero {
                name: "idle_timeout"
            })
        );
    }

    #[test]
    fn answer_rule_replies_ahead_of_queued_data() {
        let t0 = Instant::now();
        let mut cfg = config("lines");
        cfg.answer = Some(Answer {
            matcher: FrameMatcher::exact(&b"HB?"[..]),
            reply: Bytes::from_static(b"HB!"),
        });
        let mut c = conn(cfg, t0);
        c.send(Bytes::from_static(b"d1"), t0).unwrap();
        c.send(Bytes::from_static(b"d2"), t0).unwrap();
        // Two heartbeats in one read: one reply.
        c.handle_input(b"HB?\nHB?\nreal\n", t0);
        assert_eq!(data(&events(&mut c)), vec![Bytes::from_static(b"real")]);
        assert_eq!(c.poll_transmit(t0).unwrap(), &b"HB!\n"[..]);
        assert_eq!(transmit_all(&mut c, t0), b"d1\nd2\n");

        // Never inside a frame already started.
        let big = Bytes::from(vec![b'x'; COPY_THRESHOLD + 10]);
        c.send(big.clone(), t0).unwrap();
        assert_eq!(c.poll_transmit(t0).unwrap(), big);
        c.handle_input(b"HB?\n", t0);
        assert_eq!(c.poll_transmit(t0).unwrap(), &b"\n"[..]);
        assert_eq!(c.poll_transmit(t0).unwrap(), &b"HB!\n"[..]);
        assert_eq!(c.poll_transmit(t0), None);
    }

    #[test]
    fn the_pong_to_our_ping_is_not_answered() {
        // Both sides use "HB" as ping and pong.
        let t0 = Instant::now();
        let mut cfg = config("lines");
        cfg.ping = Some(Bytes::from_static(b"HB"));
        cfg.pong = FrameMatcher::exact(&b"HB"[..]);
        cfg.answer = Some(Answer {
            matcher: FrameMatcher::exact(&b"HB"[..]),
            reply: Bytes::from_static(b"HB"),
        });
        let mut c = conn(cfg, t0);
        let (_, out) = run_until(&mut c, t0 + secs(15));
        assert_eq!(out, b"HB\n");
        c.handle_input(b"HB\n", t0 + secs(15) + ms(3));
        assert_eq!(events(&mut c), vec![Event::Rtt(ms(3))]);
        assert_eq!(c.poll_transmit(t0 + secs(16)), None);
        // The peer's own heartbeat, with no ping of ours outstanding: answered.
        c.handle_input(b"HB\n", t0 + secs(20));
        assert_eq!(events(&mut c), vec![]);
        assert_eq!(transmit_all(&mut c, t0 + secs(20)), b"HB\n");
    }

    #[test]
    fn recoverable_decode_errors_are_reported_and_decoding_goes_on() {
        let mut stream = encode("length:2", &[b"ab"]);
        stream.extend_from_slice(&[0, 20]);
        stream.extend_from_slice(&[b'z'; 20]);
        stream.extend_from_slice(&encode("length:2", &[b"cd"]));
        let t0 = Instant::now();
        for at in 0..=stream.len() {
            let mut c = conn(config("length:2,max=8,discard"), t0);
            c.handle_input(&stream[..at], t0);
            c.handle_input(&stream[at..], t0);
            let ev = events(&mut c);
            assert_eq!(data(&ev), vec![&b"ab"[..], &b"cd"[..]], "split at {at}");
            let discarded: Vec<_> = ev
                .iter()
                .filter_map(|e| match e {
                    Event::FrameDiscarded(e) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(discarded.len(), 1);
            assert!(discarded[0].is_recoverable());
            assert_eq!(discarded[0].offset(), 4);
            assert!(matches!(
                discarded[0].kind(),
                DecodeErrorKind::FrameTooLong {
                    length: 22,
                    limit: 8
                }
            ));
            assert!(matches!(ev[1], Event::FrameDiscarded(_)));
            assert_eq!(c.state(), State::Open);
        }
    }

    #[test]
    fn fatal_decode_error_closes_after_the_frames_before_it() {
        let t0 = Instant::now();
        for (spec, input, code) in [
            (
                "length:2,max=8",
                &b"\0\x02ab\0\x02cd\0\x14zzzz\0\x02ef"[..],
                CloseCode::MessageTooBig,
            ),
            (
                "netstring",
                &b"2:ab,2:cd,x5:hello,"[..],
                CloseCode::ProtocolError,
            ),
            (
                "lines,max=4",
                &b"ab\ncd\nlong line\n"[..],
                CloseCode::MessageTooBig,
            ),
        ] {
            let mut c = conn(config(spec), t0);
            c.send(Bytes::from_static(b"q"), t0).unwrap();
            c.handle_input(input, t0);
            let ev = events(&mut c);
            assert_eq!(data(&ev), vec![&b"ab"[..], &b"cd"[..]], "{spec}");
            let closes = closed(&ev);
            assert_eq!(closes.len(), 1, "{spec}");
            assert_eq!((closes[0].0, closes[0].1), (code, false), "{spec}");
            match &closes[0].2 {
                Some(ConnectionError::Framing(e)) => assert!(!e.is_recoverable()),
                other => panic!("{spec}: {other:?}"),
            }
            assert_eq!(ev.last(), Some(&Event::ShutdownWrite));
            assert_eq!(c.state(), State::Closed);
            assert_eq!(c.poll_transmit(t0), None, "queued data dropped");
            assert!(c.recv_buf().is_empty());
        }
    }

    #[test]
    fn unencodable_messages_are_refused_at_send_and_by_check_message() {
        let t0 = Instant::now();
        let mut c = conn(config("lines"), t0);
        let want = Err(SendError::Unencodable(EncodeError::ContainsDelimiter {
            position: 1,
        }));
        assert_eq!(c.check_message(b"a\nb"), want);
        assert_eq!(Machine::check_message(&c, b"a\nb"), want);
        assert_eq!(c.send(Bytes::from_static(b"a\nb"), t0), want);
        assert_eq!(c.queued_bytes(), 0);
        assert_eq!(c.poll_transmit(t0), None);
        assert_eq!(c.check_message(b"fine"), Ok(()));

        let mut c = conn(config("length:1"), t0);
        let long = Bytes::from(vec![0u8; 300]);
        let err = c.send(long.clone(), t0).unwrap_err();
        assert!(matches!(err, SendError::Unencodable(_)), "{err:?}");
        assert_eq!(c.check_message(&long), Err(err));
    }

    #[test]
    fn the_send_queue_is_bounded() {
        let t0 = Instant::now();
        let mut cfg = config("length:4");
        cfg.max_queued_bytes = 100;
        let mut c = conn(cfg, t0);
        assert_eq!(c.message_cost(10), 10 + FRAME_OVERHEAD);
        assert_eq!(Machine::max_queued_bytes(&c), 100);
        c.send(Bytes::from(vec![1u8; 50]), t0).unwrap();
        assert_eq!(c.queued_bytes(), 90);
        assert_eq!(
            c.send(Bytes::from(vec![1u8; 10]), t0),
            Err(SendError::QueueFull {
                queued: 90,
                len: 50,
                limit: 100
            })
        );
        assert_eq!(transmit_all(&mut c, t0).len(), 54);
        assert_eq!(c.queued_bytes(), 0);
        c.send(Bytes::from(vec![1u8; 10]), t0).unwrap();
    }

    #[test]
    fn small_frames_are_glued_into_chunks_of_at_most_coalesce_bytes() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        // 1,000 frames of 4 + 60 bytes, then a large one that goes out on its own.
        for i in 0..1000u32 {
            let mut payload = vec![0u8; 60];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            c.send(Bytes::from(payload), t0).unwrap();
        }
        c.send(Bytes::from(vec![7u8; 4096]), t0).unwrap();
        let mut wire = Vec::new();
        let mut chunks = Vec::new();
        while let Some(chunk) = c.poll_transmit(t0) {
            chunks.push(chunk.len());
            wire.extend_from_slice(&chunk);
        }
        assert!(
            chunks.iter().all(|&n| n <= COALESCE || n == 4096),
            "{chunks:?}"
        );
        // 64,000 bytes of small frames in 4 chunks of up to 16 KiB, then header and payload.
        assert_eq!(chunks.len(), 4 + 2, "{chunks:?}");
        assert_eq!(c.stats().messages_out, 1001);
        assert_eq!(c.queued_bytes(), 0);
        let mut decoder: Framing = "length:4".parse().unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        for i in 0..1000u32 {
            let frame = decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(frame[..4], i.to_be_bytes());
        }
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().len(), 4096);
    }

    #[test]
    fn close_flushes_queued_frames_then_shuts_down_and_lingers() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        c.send(Bytes::from_static(b"a"), t0).unwrap();
        c.send(Bytes::from_static(b"b"), t0).unwrap();
        c.close(CloseCode::Application(0x1234), "bye", t0);
        assert_eq!(
            events(&mut c),
            vec![Event::Closed {
                code: CloseCode::Application(0x1234),
                reason: "bye".into(),
                by_peer: false,
                error: None
            }]
        );
        assert_eq!(c.state(), State::Closing);
        assert!(!c.is_drained());
        assert_eq!(c.send(Bytes::from_static(b"c"), t0), Err(SendError::Closed));
        c.close(CloseCode::Normal, "again", t0);
        let t1 = t0 + ms(5);
        // Both queued frames, glued into one chunk, then the write half is shut.
        assert_eq!(c.poll_transmit(t1).unwrap(), &b"\0\0\0\x01a\0\0\0\x01b"[..]);
        assert_eq!(events(&mut c), vec![Event::ShutdownWrite]);
        assert_eq!(c.poll_transmit(t1), None);
        assert!(c.is_drained());
        // Still reading (and discarding) until the peer's end of stream or the linger.
        c.handle_input(b"\0\0\0\x01z", t1);
        assert_eq!(events(&mut c), vec![]);
        assert!(c.recv_buf().is_empty());
        assert_eq!(c.state(), State::Closing);
        assert_eq!(c.poll_timeout(), Some(t1 + secs(2)));
        c.handle_timeout(t1 + secs(2) - Duration::from_nanos(1));
        assert_eq!(c.state(), State::Closing);
        c.handle_timeout(t1 + secs(2));
        assert_eq!(c.state(), State::Closed);
        assert_eq!(events(&mut c), vec![]);
        assert_eq!(c.poll_timeout(), None);

        // Nothing queued: shut down at once; the peer's end of stream finishes it.
        let mut c = conn(netty(), t0);
        c.close(CloseCode::Normal, "", t0);
        let ev = events(&mut c);
        assert_eq!(closed(&ev), vec![(CloseCode::Normal, false, None)]);
        assert_eq!(ev.last(), Some(&Event::ShutdownWrite));
        assert!(c.is_drained());
        c.handle_eof(t0 + ms(1));
        assert_eq!(c.state(), State::Closed);
        assert_eq!(events(&mut c), vec![], "Closed is reported once");
    }

    #[test]
    fn a_frame_in_flight_is_completed_on_failure() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        let big = Bytes::from(vec![5u8; COPY_THRESHOLD + 1]);
        c.send(big.clone(), t0).unwrap();
        c.send(Bytes::from_static(b"later"), t0).unwrap();
        assert_eq!(c.poll_transmit(t0).unwrap().len(), 4);
        // Dies with the payload still owed (the ping asked for at 15 s never got out).
        c.handle_timeout(t0 + secs(15));
        c.handle_timeout(t0 + secs(25));
        let ev = events(&mut c);
        assert_eq!(closed(&ev).len(), 1);
        assert_eq!(shutdowns(&ev), 0);
        assert!(!c.is_drained());
        assert_eq!(c.poll_transmit(t0 + secs(25)).unwrap(), big);
        assert_eq!(events(&mut c), vec![Event::ShutdownWrite]);
        assert_eq!(c.poll_transmit(t0 + secs(25)), None);
        assert!(c.is_drained());
    }

    #[test]
    fn a_trickled_frame_is_cut_by_the_frame_timeout() {
        let t0 = Instant::now();
        let mut cfg = config("length:4");
        cfg.frame_timeout = Some(secs(20));
        let mut c = conn(cfg, t0);
        // Each byte keeps the silence rule happy; the frame never completes.
        let frame = encode("length:4", &[&[9u8; 5000]]);
        c.handle_input(
            &[&encode("length:4", &[b"hi"])[..], &frame[..6]].concat(),
            t0,
        );
        assert_eq!(data(&events(&mut c)), vec![&b"hi"[..]]);
        for i in 1..=9u64 {
            c.handle_input(&frame[5 + i as usize..6 + i as usize], t0 + secs(2 * i));
            c.handle_timeout(t0 + secs(2 * i));
            assert_eq!(c.state(), State::Open);
        }
        assert_eq!(c.poll_timeout(), Some(t0 + secs(20)));
        c.handle_timeout(t0 + secs(20));
        let expected = ConnectionError::FrameTimeout {
            timeout: secs(20),
            received: 15,
            expected: Some(5004),
        };
        assert_eq!(
            closed(&events(&mut c)),
            vec![(CloseCode::PeerTimedOut, false, Some(expected))]
        );
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.recv_buf().capacity(), 0);

        // A line framing does not know the length: "an unknown number of" bytes.
        let mut cfg = config("lines");
        cfg.frame_timeout = Some(secs(5));
        let mut c = conn(cfg, t0);
        c.handle_input(b"one\ntw", t0);
        c.handle_input(b"o", t0 + secs(4));
        c.handle_timeout(t0 + secs(5));
        let ev = events(&mut c);
        assert_eq!(data(&ev), vec![&b"one"[..]]);
        let error = closed(&ev)[0].2.clone().unwrap();
        assert_eq!(
            error.to_string(),
            "frame incomplete after 5s: 3 of an unknown number of bytes arrived"
        );

        // Off: never cut.
        let mut cfg = config("lines");
        cfg.frame_timeout = None;
        let mut c = conn(cfg, t0);
        c.handle_input(b"tw", t0);
        c.handle_input(b"o", t0 + secs(10));
        c.handle_timeout(t0 + secs(11));
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn abort_drops_queued_frames_and_closes_with_the_reason() {
        let t0 = Instant::now();
        let mut c = conn(config("lines"), t0);
        c.send(Bytes::from_static(b"queued"), t0).unwrap();
        c.handle_input(b"partial", t0);
        c.abort(CloseCode::ServerFull, "over budget", t0);
        let ev = events(&mut c);
        assert_eq!(
            closed(&ev),
            vec![(
                CloseCode::ServerFull,
                false,
                Some(ConnectionError::Aborted {
                    reason: "over budget".into()
                })
            )]
        );
        assert_eq!(c.queued_bytes(), 0);
        assert!(transmit_all(&mut c, t0).is_empty());
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn end_of_stream_reports_whether_a_frame_was_cut() {
        let t0 = Instant::now();
        let mut c = conn(config("length:4"), t0);
        c.handle_input(b"\0\0\0\x02hi\0\0\0\x05hel", t0);
        c.send(Bytes::from_static(b"unsent"), t0).unwrap();
        c.handle_eof(t0);
        let ev = events(&mut c);
        assert_eq!(data(&ev), vec![&b"hi"[..]]);
        assert_eq!(
            closed(&ev),
            vec![(
                CloseCode::ProtocolError,
                true,
                Some(ConnectionError::EndOfStream { mid_message: true })
            )]
        );
        assert_eq!(
            shutdowns(&ev),
            0,
            "no close in progress: the driver just drops the socket"
        );
        assert_eq!(c.state(), State::Closed);
        assert!(c.is_drained());
        assert_eq!(c.poll_transmit(t0), None);

        let mut c = conn(config("lines"), t0);
        c.handle_input(b"one\n", t0);
        c.handle_eof(t0);
        assert_eq!(
            closed(&events(&mut c)),
            vec![(
                CloseCode::GoingAway,
                true,
                Some(ConnectionError::EndOfStream { mid_message: false })
            )]
        );

        // A last line without its newline is a cut frame.
        let mut c = conn(config("lines"), t0);
        c.handle_input(b"one\ntwo", t0);
        c.handle_eof(t0);
        let ev = events(&mut c);
        assert_eq!(data(&ev), vec![&b"one"[..]]);
        assert_eq!(
            closed(&ev)[0].2,
            Some(ConnectionError::EndOfStream { mid_message: true })
        );

        // The framing may still produce a frame at the end: "\r" could have become "\r\n".
        let mut c = conn(config(r#"delim:"\r"|"\r\n""#), t0);
        c.handle_input(b"abc\r", t0);
        assert_eq!(events(&mut c), vec![]);
        // Unprocessed bytes in the buffer are taken into account too.
        c.recv_buf().extend_from_slice(b"def\r");
        c.handle_eof(t0);
        let ev = events(&mut c);
        assert_eq!(data(&ev), vec![&b"abc"[..], &b"def"[..]]);
        assert_eq!(
            closed(&ev)[0].2,
            Some(ConnectionError::EndOfStream { mid_message: false })
        );
    }

    #[test]
    fn writer_idle_follows_what_is_transmitted() {
        let t0 = Instant::now();
        let mut cfg = config("lines");
        cfg.ping_interval = None;
        cfg.writer_idle = Some(secs(5));
        let mut c = conn(cfg, t0);
        c.send(Bytes::from_static(b"x"), t0 + secs(3)).unwrap();
        // Queued is not sent: only the transmission counts.
        let (ev, _) = run_until(&mut c, t0 + secs(4));
        assert_eq!(ev, vec![]);
        transmit_all(&mut c, t0 + secs(4));
        let (ev, _) = run_until(&mut c, t0 + secs(9) - Duration::from_nanos(1));
        assert_eq!(ev, vec![]);
        let (ev, _) = run_until(&mut c, t0 + secs(9));
        assert_eq!(ev, vec![Event::Idle(IdleKind::WriterIdle)]);

        // Pings count as writes too.
        let mut cfg = netty();
        cfg.ping_interval = Some(secs(30));
        cfg.writer_idle = Some(secs(20));
        let mut c = conn(cfg, t0);
        c.handle_input(b"\0\0\0\x01x", t0 + secs(10));
        assert_eq!(events(&mut c).len(), 1);
        // Writer idle at 20 s (nothing sent since the start), the ping at 40 s.
        let (ev, out) = run_until(&mut c, t0 + secs(40));
        assert_eq!(ev, vec![Event::Idle(IdleKind::WriterIdle)]);
        assert_eq!(out, b"\0\0\0\x04PING");
        c.handle_input(b"\0\0\0\x04PONG", t0 + secs(41));
        assert_eq!(events(&mut c), vec![Event::Rtt(secs(1))]);
        // The ping re-armed the writer idle: next at 60 s.
        let (ev, _) = run_until(&mut c, t0 + secs(60) - Duration::from_nanos(1));
        assert_eq!(ev, vec![]);
        let (ev, _) = run_until(&mut c, t0 + secs(60));
        assert_eq!(ev, vec![Event::Idle(IdleKind::WriterIdle)]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let t0 = Instant::now();
        let err = |cfg: RawConfig| RawConnection::new(cfg, t0).unwrap_err();
        assert_eq!(
            err(RawConfig {
                ping_interval: None,
                ..netty()
            }),
            RawConfigError::PingWithoutInterval
        );
        assert_eq!(
            err(RawConfig {
                pong: FrameMatcher::prefix(Bytes::new()),
                ..netty()
            }),
            RawConfigError::EmptyPrefix { which: "pong" }
        );
        assert_eq!(
            err(RawConfig {
                answer: Some(Answer {
                    matcher: FrameMatcher::prefix(Bytes::new()),
                    reply: Bytes::new()
                }),
                ..netty()
            }),
            RawConfigError::EmptyPrefix { which: "answer" }
        );
        assert_eq!(
            err(RawConfig {
                linger: Duration::ZERO,
                ..netty()
            }),
            RawConfigError::Zero { name: "linger" }
        );
        assert_eq!(
            err(RawConfig {
                max_queued_bytes: 0,
                ..netty()
            }),
            RawConfigError::Zero {
                name: "max_queued_bytes"
            }
        );
        assert_eq!(
            err(RawConfig {
                ping_timeout: Duration::ZERO,
                ..netty()
            }),
            RawConfigError::Liveness(LivenessConfigError::ZeroDuration {
                name: "ping_timeout"
            })
        );
        assert_eq!(
            err(RawConfig {
                ping: Some(Bytes::from(vec![0u8; 300])),
                ..config("length:1")
            }),
            RawConfigError::Unencodable {
                which: "ping",
                source: EncodeError::LengthNotRepresentable {
                    value: 300,
                    width: 1
                }
            }
        );
        assert!(matches!(
            err(RawConfig {
                answer: Some(Answer {
                    matcher: FrameMatcher::Any,
                    reply: Bytes::from_static(b"a\nb")
                }),
                ..config("lines")
            }),
            RawConfigError::Unencodable {
                which: "answer reply",
                ..
            }
        ));
    }

    /// A driver written against the trait only, as the tokio layer is.
    fn pump(m: &mut dyn Machine, input: &[u8], now: Instant) -> (Vec<u8>, Vec<Event>) {
        m.recv_buf().extend_from_slice(input);
        m.process_input(now);
        let mut out = Vec::new();
        while let Some(b) = m.poll_transmit(now) {
            out.extend_from_slice(&b);
        }
        (out, std::iter::from_fn(|| m.poll_event()).collect())
    }

    #[test]
    fn runs_behind_the_machine_trait() {
        let t0 = Instant::now();
        let mut c = conn(netty(), t0);
        let m: &mut dyn Machine = &mut c;
        m.send(Bytes::from_static(b"hi"), t0).unwrap();
        let (out, ev) = pump(m, b"\0\0\0\x02yo", t0);
        assert_eq!(out, b"\0\0\0\x02hi");
        assert_eq!(ev, vec![Event::Data(Bytes::from_static(b"yo"))]);
        assert_eq!(m.linger(), secs(2));
        assert_eq!(m.message_cost(2), 2 + FRAME_OVERHEAD);
        assert!(!m.is_closed());
        m.close(CloseCode::Normal, "", t0);
        let (_, ev) = pump(m, b"", t0);
        assert_eq!(ev.last(), Some(&Event::ShutdownWrite));
        assert!(m.is_drained());
        m.handle_eof(t0);
        assert!(m.is_closed());
    }

    /// Frame payloads and whether each is a pong.
    fn stream_items() -> impl Strategy<Value = Vec<(Vec<u8>, bool)>> {
        proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40), any::<bool>()),
            0..30,
        )
    }

    proptest! {
        /// However the stream of data frames and pongs is cut, the same data comes out: the
        /// first pong answers our ping (the only RTT sample) and is swallowed, later ones are
        /// data.
        #[test]
        fn random_chunkings_give_the_same_data(
            spec in prop_oneof![Just("length:2"), Just("varint"), Just("netstring"), Just("magic:cafe")],
            items in stream_items(),
            sizes in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let t0 = Instant::now();
            let mut c = conn(RawConfig { ping: Some(Bytes::from_static(b"PING")), pong: FrameMatcher::exact(&b"PONG"[..]), ..config(spec) }, t0);
            let (_, out) = run_until(&mut c, t0 + secs(15));
            prop_assert_eq!(out, encode(spec, &[b"PING"]));
            let payloads: Vec<&[u8]> = items.iter().map(|(p, pong)| if *pong { &b"PONG"[..] } else { &p[..] }).collect();
            let stream = encode(spec, &payloads);
            let mut rest = &stream[..];
            let now = t0 + secs(16);
            for &size in sizes.iter().cycle() {
                if rest.is_empty() { break; }
                let (piece, tail) = rest.split_at(size.min(rest.len()));
                c.handle_input(piece, now);
                rest = tail;
            }
            let ev = events(&mut c);
            // The first pong answers our ping and is swallowed; later ones are the peer's data.
            let mut want: Vec<&[u8]> = payloads.clone();
            if let Some(first) = want.iter().position(|p| *p == b"PONG") {
                want.remove(first);
            }
            prop_assert_eq!(data(&ev), want);
            let rtts = ev.iter().filter(|e| matches!(e, Event::Rtt(_))).count();
            prop_assert_eq!(rtts, usize::from(payloads.contains(&&b"PONG"[..])));
            prop_assert_eq!(c.state(), State::Open);
        }

        /// Garbage never panics, the receive buffer stays bounded by the frame limit, and
        /// exactly one Closed comes out by the end of the stream.
        #[test]
        fn garbage_never_panics_and_buffers_stay_bounded(
            spec in prop_oneof![
                Just("length:2,max=64"), Just("length:2,max=64,discard"), Just("varint,max=64"),
                Just("lines,max=64"), Just("delim:00,max=64,discard"), Just("netstring,max=64"),
                Just("magic:cafe,len=2,max=64"),
            ],
            input in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..8),
        ) {
            let t0 = Instant::now();
            let mut c = conn(RawConfig {
                answer: Some(Answer { matcher: FrameMatcher::prefix(&b"\x01"[..]), reply: Bytes::from_static(b"r") }),
                ..config(spec)
            }, t0);
            let mut rest = &input[..];
            let mut now = t0;
            for &size in sizes.iter().cycle() {
                if rest.is_empty() { break; }
                let (piece, tail) = rest.split_at(size.min(rest.len()));
                c.recv_buf().extend_from_slice(piece);
                c.process_input(now);
                prop_assert!(c.recv_buf().len() <= 64 + 16, "{} bytes buffered", c.recv_buf().len());
                transmit_all(&mut c, now);
                now += ms(10);
                rest = tail;
            }
            c.handle_eof(now);
            transmit_all(&mut c, now);
            let ev = events(&mut c);
            prop_assert_eq!(closed(&ev).len(), 1);
            prop_assert!(c.is_closed() && c.is_drained());
        }
    }
}
