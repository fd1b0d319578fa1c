//! The framelink protocol v1 connection state machine (sans-IO).
//!
//! A [`Connection`] implements `docs/PROTOCOL.md` for one byte stream, in the style of
//! quinn-proto's `Connection`: it owns no socket and reads no clock. The driver (the tokio layer,
//! a test, a simulator) feeds it
//!
//! - received bytes: read into [`Connection::recv_buf`] then call [`Connection::process_input`]
//!   (or hand a slice to [`Connection::handle_input`]); end of stream with
//!   [`Connection::handle_eof`];
//! - timer expiries: keep **one** timer at [`Connection::poll_timeout`] and call
//!   [`Connection::handle_timeout`] when it fires (early or spurious calls are harmless);
//!
//! and takes out
//!
//! - bytes to write: call [`Connection::poll_transmit`] until it returns `None`;
//! - events: call [`Connection::poll_event`] until it returns `None`.
//!
//! After every input (bytes, timeout, [`send`](Connection::send), [`close`](Connection::close)),
//! drain both and re-arm the timer. When [`Event::ShutdownWrite`] comes out, our CLOSE has been
//! handed over by `poll_transmit`: write it, then shut down the write half (TCP FIN) and keep
//! reading. Drop the socket once [`Connection::is_closed`] and [`Connection::is_drained`] both
//! hold.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use framelink_proto::connection::{Connection, ConnectionConfig, Event};
//!
//! let t0 = Instant::now();
//! let mut a = Connection::new(ConnectionConfig::default(), t0).unwrap();
//! let mut b = Connection::new(ConnectionConfig::default(), t0).unwrap();
//! a.send(Bytes::from_static(b"hi"), t0).unwrap(); // queued until the handshake is done
//! // A toy "network": move everything both ways until quiet.
//! for _ in 0..4 {
//!     while let Some(bytes) = a.poll_transmit(t0) { b.handle_input(&bytes, t0); }
//!     while let Some(bytes) = b.poll_transmit(t0) { a.handle_input(&bytes, t0); }
//! }
//! assert!(matches!(b.poll_event(), Some(Event::Connected { .. })));
//! assert_eq!(b.poll_event(), Some(Event::Data(Bytes::from_static(b"hi"))));
//! ```
//!
//! # Decisions where the protocol leaves room
//!
//! - **Keep-alive** uses [`Liveness`]: our own `ping_interval` / `ping_timeout` (announced in our
//!   HELLO) drive the active check; the peer's announced interval, times
//!   [`grace`](ConnectionConfig::grace), drives the passive check (section 4.4). The machine is
//!   built when the peer's HELLO arrives, so keep-alive timing starts then (section 8); before
//!   that only the [handshake timeout](ConnectionConfig::handshake_timeout) runs. Any received
//!   bytes, even part of a message, count as traffic.
//! - **Ping rate** (section 6.1) is enforced when
//!   [`enforce_peer_ping_rate`](ConnectionConfig::enforce_peer_ping_rate) is set: a PING less than
//!   `I_p / 2` after the previous one is a strike, more than
//!   [`max_ping_strikes`](ConnectionConfig::max_ping_strikes) strikes close with code 4. If the
//!   peer announced `I_p = 0`, every PING but the first is a strike. Sending DATA resets the
//!   strikes (as gRPC does).
//! - **PONGs** are written before queued DATA (but never inside a DATA message already started),
//!   and at most one is pending: a newer PING replaces an unwritten PONG (section 10).
//! - **Sending before the handshake** is allowed: DATA is queued and written once the peer's
//!   HELLO has been accepted (section 4.3). If the peer's `max_message_len` then turns out too
//!   small for a queued message, that message is dropped with [`Event::MessageDropped`].
//! - **Local [`close`](Connection::close)** is graceful: DATA queued before it is still written,
//!   then CLOSE. Every other close (errors, timeouts, peer CLOSE) discards queued DATA.
//! - **Peer CLOSE**: we answer with a CLOSE carrying the same code (unless we had sent one).
//! - **After our CLOSE** we keep reading and discard everything but CLOSE, until the peer's
//!   CLOSE, end of stream or [`linger`](ConnectionConfig::linger) after our CLOSE went out.
//! - **Timeouts**: a dead peer and a handshake timeout are closed with code 3 (peer timed out).
//!   A dead peer goes straight to [`State::Closed`] (the CLOSE is still offered, best effort).
//! - **End of stream without CLOSE** reports [`Event::Closed`] with `by_peer: true` and the code
//!   [`CloseCode::GoingAway`] (clean message boundary) or [`CloseCode::ProtocolError`] (in the
//!   middle of a message); the `error` field says which.
//! - **Large DATA is not copied**: payloads over [`COPY_THRESHOLD`] bytes are returned by
//!   `poll_transmit` as their 5-byte header followed by the payload `Bytes` itself; received
//!   DATA bodies are slices of the receive buffer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec::{DecodeError, EncodeError};
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::auth::{
    random_bytes, random_nonce, resume_proof, ResumeProof, SessionSecret, PROOF_LEN,
};
use crate::liveness::{
    DeathCause, IdleKind, Liveness, LivenessConfig, LivenessConfigError, LivenessEvent, PingAction,
    RttEstimate,
};
use crate::session::{Received, Session, SessionConfig, SDATA_OVERHEAD};
use crate::wire::{
    negotiate_version, CloseCode, Hello, Message, ResumeStatus, SessionHello, Violation, WireCodec,
    WireError, MAX_CLOSE_REASON, MIN_MAX_MESSAGE_LEN, PROTOCOL_VERSION,
};

/// DATA payloads longer than this are written without copying (header and payload as two
/// separate [`Connection::poll_transmit`] results); shorter ones are copied into one buffer.
pub const COPY_THRESHOLD: usize = 1024;
/// Small messages are packed into one transmit chunk up to this size.
pub(crate) const COALESCE: usize = 16 * 1024;

/// Bytes of framing per DATA message: the 4-byte length and the type byte.
pub(crate) const DATA_OVERHEAD: usize = 5;

/// The lowest protocol version this implementation speaks.
const LOWEST_VERSION: u8 = 1;

/// Parameters of a [`Connection`]. Check them with [`validate`](Self::validate) (done by
/// [`Connection::new`]).
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::connection::ConnectionConfig;
/// let cfg = ConnectionConfig::default();
/// assert_eq!(cfg.ping_interval, Some(Duration::from_secs(15)));
/// assert_eq!(cfg.handshake_timeout, Duration::from_secs(10));
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionConfig {
    /// Announced `ping_interval_ms`: ping after this long without receiving anything. `None`
    /// announces 0 (never ping). Whole milliseconds up to `u32::MAX`.
    pub ping_interval: Option<Duration>,
    /// Announced `ping_timeout_ms`: the peer is dead when nothing arrives this long after our
    /// PING. Non-zero, whole milliseconds up to `u32::MAX`; announced as 0 when we never ping.
    pub ping_timeout: Duration,
    /// Factor on the peer's announced interval for the passive dead-peer check (at least 1.5,
    /// section 4.4; finite).
    pub grace: f64,
    /// Largest message `length` we accept (announced in our HELLO); at least 4096.
    pub max_message_len: u32,
    /// Close (code 3) if the peer's HELLO has not arrived this long after [`Connection::new`].
    pub handshake_timeout: Duration,
    /// Limit on queued outgoing DATA (payload plus 5 bytes of framing per message).
    pub max_queued_bytes: usize,
    /// After our CLOSE is written, wait this long for the peer's CLOSE or end of stream.
    pub linger: Duration,
    /// [`Event::Idle`] after this long without receiving anything.
    pub reader_idle: Option<Duration>,
    /// [`Event::Idle`] after this long without sending anything.
    pub writer_idle: Option<Duration>,
    /// [`Event::Idle`] after this long without receiving nor sending anything.
    pub all_idle: Option<Duration>,
    /// Count strikes for PINGs arriving faster than the peer announced (section 6.1).
    pub enforce_peer_ping_rate: bool,
    /// Strikes tolerated; one more closes with code 4.
    pub max_ping_strikes: u32,
    /// Announced session id (all zero = none).
    pub session_id: [u8; 16],
    /// Close with code 8 (`Idle`) once no DATA has gone either way for this long, counted
    /// from the handshake. Heartbeats don't count: this evicts connections that are alive but
    /// unused (a server's idle timeout), which `reader_idle` and friends (Netty's semantics, any
    /// bytes count) cannot express once PINGs flow. `None` (the default): never.
    pub idle_timeout: Option<Duration>,
    /// Acknowledged sessions (section 12). On the accepting side, `Some` offers them in our
    /// HELLO (a peer that asks then gets [`Event::SessionRequest`]); on the connecting side a
    /// session is asked for with [`Connection::with_session`], which uses these settings (or
    /// the defaults). `None` (the default): no sessions offered.
    pub sessions: Option<SessionConfig>,
    /// A message must arrive whole within this long of its first byte: a peer that starts a
    /// message and trickles the rest (any byte keeps the heartbeat happy) is closed with code 3
    /// (`PeerTimedOut`) and [`ConnectionError::FrameTimeout`], which says how many of how many
    /// bytes had arrived. Bounds how long a partial message holds receive memory. Raise it for
    /// large messages over slow links (an 8 MiB message in 30 s needs about 280 KB/s).
    /// `None`: no bound. Default 30 s.
    pub frame_timeout: Option<Duration>,
}

impl Default for ConnectionConfig {
    /// The protocol's example values: ping after 15 s of quiet, dead 10 s after an unanswered
    /// ping, grace 1.5, 8 MiB messages, 10 s handshake, 8 MiB send queue, 2 s linger, no idle
    /// events, ping rate enforced with 2 strikes, no session, 30 s for a message to arrive whole.
    fn default() -> Self {
        ConnectionConfig {
            ping_interval: Some(Duration::from_secs(15)),
            ping_timeout: Duration::from_secs(10),
            grace: 1.5,
            max_message_len: 8 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_queued_bytes: 8 * 1024 * 1024,
            linger: Duration::from_secs(2),
            reader_idle: None,
            writer_idle: None,
            all_idle: None,
            enforce_peer_ping_rate: true,
            max_ping_strikes: 2,
            session_id: [0; 16],
            idle_timeout: None,
            sessions: None,
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
        }
    }
}

/// Default [`ConnectionConfig::frame_timeout`] (and the raw mode's): 30 s.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// An invalid [`ConnectionConfig`].
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A HELLO duration is not a whole number of milliseconds in `1..=u32::MAX`.
    #[error("{name} = {value:?} must be a whole, non-zero number of milliseconds up to u32::MAX")]
    BadWireDuration {
        /// The field name.
        name: &'static str,
        /// The value given.
        value: Duration,
    },
    /// `max_message_len` below the protocol minimum.
    #[error("max_message_len {value} is below the minimum of {min}")]
    MaxMessageLenTooSmall {
        /// The value given.
        value: u32,
        /// 4096.
        min: u32,
    },
    /// A duration or size that must be non-zero is zero.
    #[error("{name} must be greater than zero")]
    Zero {
        /// The field name.
        name: &'static str,
    },
    /// `grace` below 1.5 or not finite.
    #[error("grace = {grace} is out of range (finite, at least 1.5)")]
    InvalidGrace {
        /// The value given.
        grace: f64,
    },
    /// The keep-alive settings are rejected by [`LivenessConfig::validate`].
    #[error("keep-alive settings: {0}")]
    Liveness(#[from] LivenessConfigError),
}

fn wire_ms(name: &'static str, value: Duration) -> Result<u32, ConfigError> {
    let ok = !value.is_zero() && value.subsec_nanos() % 1_000_000 == 0;
    match u32::try_from(value.as_millis()) {
        Ok(ms) if ok => Ok(ms),
        _ => Err(ConfigError::BadWireDuration { name, value }),
    }
}

impl ConnectionConfig {
    /// Checks every field (see the field docs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(i) = self.ping_interval {
            wire_ms("ping_interval", i)?;
        }
        wire_ms("ping_timeout", self.ping_timeout)?;
        if self.max_message_len < MIN_MAX_MESSAGE_LEN {
            return Err(ConfigError::MaxMessageLenTooSmall {
                value: self.max_message_len,
                min: MIN_MAX_MESSAGE_LEN,
            });
        }
        for (name, zero) in [
            ("handshake_timeout", self.handshake_timeout.is_zero()),
            ("linger", self.linger.is_zero()),
            ("max_queued_bytes", self.max_queued_bytes == 0),
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
                return Err(ConfigError::Zero { name });
            }
        }
        if !self.grace.is_finite() || self.grace < 1.5 {
            return Err(ConfigError::InvalidGrace { grace: self.grace });
        }
        self.liveness_config(None).validate()?;
        Ok(())
    }

    /// The HELLO we announce.
    pub fn hello(&self) -> Hello {
        let (interval, timeout) = match self.ping_interval {
            Some(i) => (i, self.ping_timeout),
            None => (Duration::ZERO, Duration::ZERO),
        };
        Hello {
            version: PROTOCOL_VERSION,
            flags: 0,
            ping_interval: interval,
            ping_timeout: timeout,
            max_message_len: self.max_message_len,
            session_id: self.session_id,
            extensions: Vec::new(),
        }
    }

    fn liveness_config(&self, peer: Option<&Hello>) -> LivenessConfig {
        let peer_interval = peer.map(|h| h.ping_interval).filter(|d| !d.is_zero());
        let min_peer_ping_interval = match peer {
            Some(_) if self.enforce_peer_ping_rate => {
                Some(peer_interval.map_or(Duration::MAX, |i| i / 2))
            }
            _ => None,
        };
        LivenessConfig {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            peer_interval,
            grace: self.grace,
            reader_idle: self.reader_idle,
            writer_idle: self.writer_idle,
            all_idle: self.all_idle,
            min_peer_ping_interval,
            max_ping_strikes: self.max_ping_strikes,
        }
    }
}

/// Where a [`Connection`] is in the lifecycle of section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Our HELLO is queued or sent; waiting for the peer's.
    Handshaking,
    /// Handshake done: all messages flow.
    Open,
    /// We decided to close: only our CLOSE (after queued DATA, for a local graceful close) is
    /// still written; input other than CLOSE is discarded.
    Closing,
    /// Finished. A pending CLOSE may still come out of [`Connection::poll_transmit`].
    Closed,
}

/// Why the connection closed, beyond the close code.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer broke the wire protocol (or sent a message over our `max_message_len`).
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The peer's HELLO announced a version we cannot speak.
    #[error("peer speaks protocol version {peer_version}, we need at least {lowest}")]
    UnsupportedVersion {
        /// The version in the peer's HELLO.
        peer_version: u8,
        /// The lowest version we speak.
        lowest: u8,
    },
    /// The peer's HELLO did not arrive in time.
    #[error("no HELLO from the peer within {timeout:?}")]
    HandshakeTimeout {
        /// [`ConnectionConfig::handshake_timeout`].
        timeout: Duration,
    },
    /// Keep-alive declared the peer dead.
    #[error("peer silent for {silent_for:.0?}: {cause}")]
    PeerDead {
        /// How long nothing had been received.
        silent_for: Duration,
        /// Which rule fired.
        cause: DeathCause,
    },
    /// The peer pinged more often than it announced.
    #[error("too many pings: {strikes} strikes, minimum interval {min_interval:?}, last gap {last_gap:?}")]
    TooManyPings {
        /// Strikes counted.
        strikes: u32,
        /// The minimum interval enforced.
        min_interval: Duration,
        /// The gap between the last two PINGs.
        last_gap: Duration,
    },
    /// The stream ended without a CLOSE.
    #[error("stream ended without CLOSE{}", if *.mid_message { " in the middle of a message" } else { "" })]
    EndOfStream {
        /// Part of a message was still buffered.
        mid_message: bool,
    },
    /// The peer's keep-alive settings could not be used.
    #[error("unusable peer keep-alive settings: {0}")]
    Liveness(LivenessConfigError),
    /// We asked for an acknowledged session and the peer does not offer them.
    #[error("the peer does not offer acknowledged sessions")]
    SessionUnavailable,
    /// Raw mode: the user's framing failed on the peer's bytes and cannot recover.
    #[error("framing: {0}")]
    Framing(DecodeError),
    /// A message (raw mode: a frame) did not arrive whole within the frame timeout
    /// ([`ConnectionConfig::frame_timeout`], `RawConfig::frame_timeout`) of its first byte.
    #[error(
        "frame incomplete after {timeout:?}: {received} of {} bytes arrived",
        match expected { Some(n) => n.to_string(), None => "an unknown number of".to_owned() }
    )]
    FrameTimeout {
        /// The frame timeout.
        timeout: Duration,
        /// Bytes of the frame (header included) that had arrived.
        received: usize,
        /// Its full length, when its header had arrived.
        expected: Option<usize>,
    },
    /// Closed locally at once, without writing queued messages (e.g. a server evicting a
    /// connection to stay within its memory budget).
    #[error("aborted: {reason}")]
    Aborted {
        /// Why.
        reason: String,
    },
}

/// What a [`Connection`] reports, drained with [`Connection::poll_event`].
///
/// Exhaustive on purpose: a driver matches every variant, so a new event is a compile error
/// in each driver rather than something that silently vanishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The peer's HELLO was accepted; the connection is open.
    Connected {
        /// The peer's HELLO.
        peer: Hello,
        /// The negotiated protocol version.
        version: u8,
    },
    /// An application message from the peer, in order.
    Data(Bytes),
    /// A PONG matched our outstanding PING: one round-trip-time sample.
    Rtt(Duration),
    /// A direction has been idle for its configured period.
    Idle(IdleKind),
    /// A DATA message queued before the handshake is larger than the peer accepts and was
    /// dropped.
    MessageDropped {
        /// Its payload length.
        len: usize,
        /// The peer's `max_message_len` (which counts the type byte too).
        peer_max: u32,
    },
    /// The connection is closing or closed. Emitted exactly once.
    Closed {
        /// The close code (sent by us when `by_peer` is false, received otherwise).
        code: CloseCode,
        /// The reason text (untrusted when `by_peer`).
        reason: String,
        /// The peer closed (CLOSE received or stream ended), rather than us.
        by_peer: bool,
        /// What went wrong, if anything did.
        error: Option<ConnectionError>,
    },
    /// Our CLOSE was just returned by [`Connection::poll_transmit`]: after writing it, shut down
    /// the write half. Nothing more will be transmitted.
    ShutdownWrite,
    /// Raw mode: the framing skipped bad input and carries on (an oversize frame under the
    /// `discard` policy, garbage before a magic). The frames around it are delivered.
    FrameDiscarded(DecodeError),
    /// Accepting side: the peer asks for session `id` and has delivered our messages up to
    /// `peer_delivered`. Answer with [`Connection::attach_session`] (the detached session, if
    /// it is kept, or `None`); nothing else flows on the session until then.
    SessionRequest {
        /// The session id from the peer's HELLO.
        id: [u8; 16],
        /// The peer's announced `delivered`.
        peer_delivered: u64,
        /// The peer's proof that it holds the session's secret (it asks to resume), or `None`
        /// (it holds no secret: a new session, or one whose RESUME never reached it). Hand over
        /// a kept session only if the proof [verifies](ResumeProof::verify) against its
        /// secret; without a proof, only a session that is [`Session::unproven`] may be
        /// replaced by a new one; otherwise [`Connection::refuse_session`].
        proof: Option<ResumeProof>,
    },
    /// The session is running on this connection (after the RESUME).
    SessionStarted {
        /// Its id.
        id: [u8; 16],
        /// New, resumed, or unknown to the accepting side (then a new one was started).
        status: ResumeStatus,
        /// Messages being sent again because the peer had not delivered them.
        resending: u64,
    },
    /// The session could not be resumed (the peer no longer has it: expired, restarted) or
    /// ended with messages the peer never acknowledged. These messages are handed back: they
    /// may or may not have reached the peer's application. Sessions go on as a new one.
    SessionLost {
        /// The session id.
        id: [u8; 16],
        /// The unacknowledged messages, oldest first.
        unacked: Vec<Bytes>,
    },
}

/// Why [`Connection::send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed.
    #[error("connection is closing or closed")]
    Closed,
    /// The message is longer than the peer accepts.
    #[error("message of {len} bytes (+1 type byte) exceeds the peer's max_message_len of {max}")]
    TooBig {
        /// Payload length.
        len: usize,
        /// The peer's `max_message_len`.
        max: u32,
    },
    /// Raw mode: the framing cannot encode this payload (too long for the length field, or it
    /// contains the delimiter).
    #[error("cannot frame this message: {0}")]
    Unencodable(EncodeError),
    /// The outgoing queue is full.
    #[error("send queue full: {queued} bytes queued, {len} more would exceed {limit}")]
    QueueFull {
        /// Bytes queued now.
        queued: usize,
        /// Bytes this message would add (payload + 5).
        len: usize,
        /// [`ConnectionConfig::max_queued_bytes`].
        limit: usize,
    },
}

/// Counters of a [`Connection`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes received (fed in).
    pub bytes_in: u64,
    /// Bytes handed out by [`Connection::poll_transmit`].
    pub bytes_out: u64,
    /// Complete messages received, of any type.
    pub messages_in: u64,
    /// Messages transmitted, of any type.
    pub messages_out: u64,
    /// DATA messages received.
    pub data_in: u64,
    /// DATA messages transmitted.
    pub data_out: u64,
    /// Session messages received again after a reconnect and dropped as duplicates.
    pub duplicates: u64,
}

/// A session on this connection (section 12).
#[derive(Debug)]
struct SessionLink {
    /// We asked for the session (connecting side); otherwise the peer did.
    requester: bool,
    policy: SessionConfig,
    /// The session; `None` on the accepting side until [`Connection::attach_session`].
    state: Option<Session>,
    /// The peer's announced `delivered` (HELLO request, or RESUME).
    peer_delivered: u64,
    /// Accepting side: the proof the peer's AUTH carried.
    proof: Option<ResumeProof>,
    /// RESUME done: SDATA flows.
    active: bool,
    /// Accepting side: the RESUME to transmit (with the secret of a new session).
    resume: Option<(ResumeStatus, u64, Option<SessionSecret>)>,
    /// Accepting side: the peer asked to resume (role 3); its AUTH has not arrived yet.
    awaiting_proof: bool,
    /// Requester: the AUTH to transmit, proving the session's secret.
    auth: Option<[u8; PROOF_LEN]>,
    /// The last sequence number transmitted on this connection.
    transmitted: u64,
    /// The last delivered sequence number the peer knows about (ACKed or announced).
    ack_sent: u64,
    /// When an ACK is due for deliveries not acknowledged yet.
    ack_due: Option<Instant>,
    /// The session ended with a CLOSE `Normal`: there is nothing to resume.
    ended: bool,
}

impl SessionLink {
    fn new(requester: bool, policy: SessionConfig, state: Option<Session>) -> Self {
        SessionLink {
            requester,
            policy,
            state,
            peer_delivered: 0,
            proof: None,
            active: false,
            resume: None,
            awaiting_proof: false,
            auth: None,
            transmitted: 0,
            ack_sent: 0,
            ack_due: None,
            ended: false,
        }
    }

    /// Deliveries not acknowledged to the peer yet.
    fn unacked_deliveries(&self) -> u64 {
        self.state
            .as_ref()
            .map_or(0, |s| s.delivered().saturating_sub(self.ack_sent))
    }
}

/// Our pending CLOSE.
#[derive(Debug, Clone)]
struct PendingClose {
    code: CloseCode,
    reason: String,
    /// Write queued DATA first (local graceful close).
    after_data: bool,
}

/// One protocol v1 connection. See the [module documentation](self).
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    codec: WireCodec,
    state: State,
    hello_sent: bool,
    handshake_deadline: Instant,
    peer: Option<Hello>,
    liveness: Option<Liveness>,
    recv: BytesMut,
    /// `recv.len()` after the last processing: anything beyond is new.
    recv_seen: usize,
    /// When the first byte of the partial message at the front of `recv` arrived.
    frame_started: Option<Instant>,
    /// Stop decoding input (after a protocol error, a CLOSE, or end of stream).
    input_done: bool,
    pong: Option<Bytes>,
    ping: Option<[u8; 8]>,
    data: VecDeque<Bytes>,
    queued_bytes: usize,
    /// The payload of a DATA message whose header was already transmitted.
    partial: Option<Bytes>,
    close: Option<PendingClose>,
    /// A local close asked for during the handshake with DATA queued: carried out once the
    /// peer's HELLO is accepted, so that the queued DATA goes out before our CLOSE.
    deferred_close: Option<(CloseCode, String)>,
    close_sent_at: Option<Instant>,
    /// The last DATA in either direction (or the handshake): the idle timeout counts from it.
    last_data: Instant,
    closed_reported: bool,
    events: VecDeque<Event>,
    stats: Stats,
    /// Boxed: most connections have none, and this keeps their footprint small.
    session: Option<Box<SessionLink>>,
    /// Accepting side with sessions: the nonce our offer carried, that a resume's proof must
    /// be bound to.
    offer_nonce: Option<[u8; 16]>,
    /// DATA the application queued that was never written: the connection closed first.
    unsent: Vec<Bytes>,
}

impl Connection {
    /// A connection established at `now`; our HELLO is queued immediately.
    pub fn new(config: ConnectionConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let codec = WireCodec::new(config.max_message_len).map_err(|_| {
            ConfigError::MaxMessageLenTooSmall {
                value: config.max_message_len,
                min: MIN_MAX_MESSAGE_LEN,
            }
        })?;
        let handshake_deadline = now
            .checked_add(config.handshake_timeout)
            .or_else(|| now.checked_add(Duration::from_secs(86_400)))
            .unwrap_or(now);
        Ok(Connection {
            config,
            codec,
            state: State::Handshaking,
            hello_sent: false,
            handshake_deadline,
            peer: None,
            liveness: None,
            recv: BytesMut::new(),
            recv_seen: 0,
            frame_started: None,
            input_done: false,
            pong: None,
            ping: None,
            data: VecDeque::new(),
            queued_bytes: 0,
            partial: None,
            close: None,
            deferred_close: None,
            close_sent_at: None,
            last_data: now,
            closed_reported: false,
            events: VecDeque::new(),
            stats: Stats::default(),
            session: None,
            offer_nonce: None,
            unsent: Vec::new(),
        })
    }

    /// A connection (connecting side) that asks the peer for `session`: a fresh one
    /// ([`Session::new`] with a random id), or the one a previous connection gave back with
    /// [`take_session`](Self::take_session). Messages sent on it are numbered, kept until the
    /// peer acknowledges them, and resent after a reconnect; see [`crate::session`].
    pub fn with_session(
        config: ConnectionConfig,
        session: Session,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let policy = config.sessions.unwrap_or_default();
        let mut connection = Connection::new(config, now)?;
        connection.session = Some(Box::new(SessionLink::new(true, policy, Some(session))));
        Ok(connection)
    }

    /// Accepting side, after [`Event::SessionRequest`]: `found` is the detached session with
    /// the requested id if one is kept and may be handed over (see
    /// [`crate::session::SessionStore`] and the event's `proof`), `None` to start a new one.
    /// Sends RESUME (with the new session's secret), then resends what the peer has not
    /// delivered. Ignored when no session was requested.
    ///
    /// `found` is refused, and handed back as `Err`, unless the peer proved it holds its
    /// secret on this connection: the connection then closes with
    /// [`CloseCode::SessionRefused`] and the session is untouched.
    pub fn attach_session(&mut self, found: Option<Session>, now: Instant) -> Result<(), Session> {
        let Some(link) = self.session.as_mut() else {
            return found.map_or(Ok(()), Err);
        };
        if link.requester || link.state.is_some() || link.awaiting_proof {
            return found.map_or(Ok(()), Err);
        }
        let id = self.peer.as_ref().map_or([0; 16], |h| h.session_id);
        let peer_delivered = link.peer_delivered;
        let (mut session, status) = match found {
            Some(session) => {
                let proven = session.id() == id
                    && matches!((&link.proof, session.secret()), (Some(proof), Some(secret)) if proof.verify(secret));
                if !proven {
                    self.refuse_session("no valid proof for this session", now);
                    return Err(session);
                }
                (session, ResumeStatus::Resumed)
            }
            None if peer_delivered == 0 => (Session::new(id), ResumeStatus::New),
            None => (Session::new(id), ResumeStatus::Unknown),
        };
        let mut new_secret = None;
        if status == ResumeStatus::Resumed {
            if let Err(e) = session.ack(peer_delivered) {
                link.state = Some(session);
                self.session_violation("RESUME delivered", e.to_string(), peer_delivered);
                return Ok(());
            }
        } else {
            let secret = SessionSecret::random();
            session.set_secret(secret.clone());
            new_secret = Some(secret);
        }
        session.set_established();
        // Messages the application sent before the session was attached join it.
        for payload in self.data.drain(..) {
            self.queued_bytes -= payload.len() + DATA_OVERHEAD;
            let _ = session.push(payload, usize::MAX);
        }
        let delivered = session.delivered();
        let resending = session.next_seq() - 1 - session.acked();
        link.transmitted = session.acked();
        link.ack_sent = delivered;
        link.resume = Some((status, delivered, new_secret));
        link.active = true;
        link.state = Some(session);
        self.events.push_back(Event::SessionStarted {
            id,
            status,
            resending,
        });
        Ok(())
    }

    /// Accepting side, after [`Event::SessionRequest`]: refuses the session asked for (its
    /// proof is wrong, or it is in use and the request proved nothing): closes with
    /// [`CloseCode::SessionRefused`] and `reason`. Whatever holds the session is not disturbed.
    pub fn refuse_session(&mut self, reason: &str, now: Instant) {
        if let Some(link) = self.session.as_mut().filter(|l| !l.requester) {
            link.awaiting_proof = false;
            link.ended = true;
        }
        self.close(CloseCode::SessionRefused, reason, now);
    }

    /// The session, once this connection is closed (to resume it on the next connection, or
    /// to keep it detached on the accepting side). `None` when there is none, or when it ended
    /// with a CLOSE `Normal` from either side (nothing to resume).
    pub fn take_session(&mut self) -> Option<Session> {
        let link = self.session.as_mut()?;
        if link.ended {
            return None;
        }
        link.state.take()
    }

    /// Messages the application queued that were never written because the connection closed
    /// first (outside a session: a session keeps them for the next connection). They did not
    /// reach the peer; taken once.
    pub fn take_unsent(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.unsent)
    }

    /// The session's state, while one is attached.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()?.state.as_ref()
    }

    // ---- accessors ----

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// The peer's HELLO, once received.
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// Round-trip-time estimate from PING / PONG pairs.
    pub fn rtt(&self) -> Option<RttEstimate> {
        self.liveness.as_ref().and_then(Liveness::rtt)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes of DATA queued (payload + 5 per message), counting against
    /// [`ConnectionConfig::max_queued_bytes`].
    pub fn queued_bytes(&self) -> usize {
        let session = self
            .session
            .as_ref()
            .and_then(|l| l.state.as_ref())
            .map_or(0, Session::buffered_bytes);
        self.queued_bytes + session
    }

    /// What a message of `len` payload bytes counts against
    /// [`ConnectionConfig::max_queued_bytes`]: its framing, plus its sequence number when
    /// sessions are (or may be) in use.
    pub fn message_cost(&self, len: usize) -> usize {
        if self.session.is_some() || self.config.sessions.is_some() {
            len.saturating_add(SDATA_OVERHEAD)
        } else {
            len.saturating_add(DATA_OVERHEAD)
        }
    }

    /// The protocol is finished ([`State::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Frees the memory of empty internal queues (events, outgoing DATA, keep-alive events).
    /// Nothing observable changes; a driver of many mostly idle connections calls it when the
    /// connection has been quiet (e.g. when its timer fires) to keep their footprint small.
    pub fn shrink_buffers(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.data.is_empty() {
            self.data = VecDeque::new();
        }
        if let Some(lv) = &mut self.liveness {
            lv.shrink_buffers();
        }
    }

    /// Nothing will ever come out of [`poll_transmit`](Self::poll_transmit) again: our CLOSE was
    /// transmitted, or the connection closed without one to send.
    pub fn is_drained(&self) -> bool {
        self.close_sent_at.is_some()
            || (self.state == State::Closed && self.close.is_none() && self.partial.is_none())
    }

    // ---- input ----

    /// The receive buffer: read socket bytes into it (e.g. with `BufMut`), then call
    /// [`process_input`](Self::process_input). Don't remove bytes from it.
    pub fn recv_buf(&mut self) -> &mut BytesMut {
        &mut self.recv
    }

    /// Full length of the partial message at the front of the receive buffer, once its length
    /// field is in (see [`Machine::pending_frame_len`](crate::machine::Machine::pending_frame_len)).
    pub fn pending_frame_len(&self) -> Option<usize> {
        let len = self.codec.pending_frame_length(&self.recv)?;
        usize::try_from(len).ok()
    }

    /// Copies `data` into the receive buffer and processes it.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.recv.extend_from_slice(data);
        self.process_input(now);
    }

    /// Handles the bytes added to [`recv_buf`](Self::recv_buf) since the last call.
    pub fn process_input(&mut self, now: Instant) {
        let new = self.recv.len().saturating_sub(self.recv_seen);
        if new > 0 {
            self.stats.bytes_in = self.stats.bytes_in.saturating_add(new as u64);
            if let Some(lv) = &mut self.liveness {
                lv.on_receive(now);
            }
        }
        let mut decoded = false;
        while !self.input_done {
            match self.codec.decode(&mut self.recv) {
                Ok(Some(message)) => {
                    decoded = true;
                    self.stats.messages_in += 1;
                    self.on_message(message, now);
                }
                Ok(None) => break,
                Err(e) => {
                    let code = e.close_code();
                    self.fail(code, e.to_string(), ConnectionError::Wire(e), false);
                    self.input_done = true;
                }
            }
        }
        if self.input_done {
            self.recv.clear();
        }
        self.frame_started = frame_start(self.frame_started, &self.recv, decoded, now);
        self.recv_seen = self.recv.len();
        self.drain_liveness(now);
    }

    /// When the partial message at the front of the receive buffer times out, if one does.
    fn frame_deadline(&self) -> Option<Instant> {
        let started = self.frame_started?;
        if self.input_done || !matches!(self.state, State::Handshaking | State::Open) {
            return None;
        }
        started.checked_add(self.config.frame_timeout?)
    }

    /// The partial message took too long: close with code 3, saying how much of it arrived.
    fn frame_timed_out(&mut self) {
        let e = ConnectionError::FrameTimeout {
            timeout: self.config.frame_timeout.unwrap_or_default(),
            received: self.recv.len(),
            expected: self.pending_frame_len(),
        };
        self.fail(CloseCode::PeerTimedOut, e.to_string(), e, false);
        self.input_done = true;
        // Its memory goes at once.
        self.recv = BytesMut::new();
        self.recv_seen = 0;
        self.frame_started = None;
    }

    /// Closes at once: queued messages and buffered input are dropped, our CLOSE (`code`,
    /// `reason`) is the next thing written, [`Event::Closed`] carries
    /// [`ConnectionError::Aborted`]. For a runtime that must free the connection's memory now
    /// (a server over its memory budget); [`close`](Self::close) is the graceful way. No-op once
    /// closed.
    pub fn abort(&mut self, code: CloseCode, reason: &str, _now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let e = ConnectionError::Aborted {
            reason: reason.to_owned(),
        };
        self.fail(code, reason.to_owned(), e, false);
        self.input_done = true;
        self.recv = BytesMut::new();
        self.recv_seen = 0;
        self.frame_started = None;
    }

    /// The peer ended its write half (TCP FIN) or the transport failed: the connection is closed.
    pub fn handle_eof(&mut self, now: Instant) {
        if self.recv.len() > self.recv_seen {
            self.process_input(now);
        }
        let mid_message = !self.input_done && !self.recv.is_empty();
        self.input_done = true;
        self.recv.clear();
        self.recv_seen = 0;
        self.frame_started = None;
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
        self.enter_closed();
    }

    fn on_message(&mut self, message: Message, now: Instant) {
        match self.state {
            State::Handshaking => match message {
                Message::Hello(hello) => self.on_hello(hello, now),
                // The codec only lets HELLO through first; be safe anyway.
                Message::Close { code, reason } => self.on_peer_close(code, reason),
                _ => {}
            },
            State::Open => match message {
                Message::Data(_) if self.session.is_some() => {
                    self.session_protocol_error("DATA", "inside a session (use SDATA)");
                }
                Message::Data(body) => {
                    self.stats.data_in += 1;
                    self.last_data = self.last_data.max(now);
                    self.events.push_back(Event::Data(body));
                }
                Message::SessionData { seq, payload } => self.on_session_data(seq, payload, now),
                Message::Ack(seq) => self.on_ack(seq),
                Message::Resume {
                    status,
                    delivered,
                    secret,
                } => self.on_resume(status, delivered, secret),
                Message::Auth(mac) => self.on_auth(mac),
                Message::Ping(context) => {
                    if let Some(lv) = &mut self.liveness {
                        if lv.on_ping(now) == PingAction::Pong {
                            // At most one pending PONG: the newest PING wins.
                            self.pong = Some(context);
                        }
                    }
                }
                Message::Pong(context) => {
                    if let (Some(lv), Ok(ctx)) =
                        (&mut self.liveness, <[u8; 8]>::try_from(&context[..]))
                    {
                        if let Some(sample) = lv.on_pong(ctx, now) {
                            self.events.push_back(Event::Rtt(sample));
                        }
                    }
                }
                Message::Close { code, reason } => self.on_peer_close(code, reason),
                // The codec rejects a second HELLO; extension messages are ignored.
                Message::Hello(_) | Message::Extension { .. } => {}
            },
            State::Closing => match message {
                Message::Close { code, .. } => {
                    if code == CloseCode::Normal {
                        self.end_session();
                    }
                    self.input_done = true;
                    self.enter_closed();
                }
                // The peer's final ACK before its CLOSE releases what it delivered.
                Message::Ack(seq) => {
                    if let Some(session) = self.session.as_mut().and_then(|l| l.state.as_mut()) {
                        let _ = session.ack(seq);
                    }
                }
                _ => {}
            },
            State::Closed => self.input_done = true,
        }
    }

    fn on_hello(&mut self, hello: Hello, now: Instant) {
        let Some(version) = negotiate_version(LOWEST_VERSION, PROTOCOL_VERSION, hello.version)
        else {
            let e = ConnectionError::UnsupportedVersion {
                peer_version: hello.version,
                lowest: LOWEST_VERSION,
            };
            self.fail(CloseCode::UnsupportedVersion, e.to_string(), e, false);
            self.input_done = true;
            return;
        };
        let liveness = match Liveness::new(self.config.liveness_config(Some(&hello)), now) {
            Ok(lv) => lv,
            Err(e) => {
                let e = ConnectionError::Liveness(e);
                self.fail(CloseCode::ProtocolError, e.to_string(), e, false);
                self.input_done = true;
                return;
            }
        };
        self.liveness = Some(liveness);
        self.state = State::Open;
        self.last_data = self.last_data.max(now);
        let peer_max = hello.max_message_len;
        self.peer = Some(hello.clone());
        self.events.push_back(Event::Connected {
            peer: hello,
            version,
        });
        // Sessions (section 12): we asked and the peer must offer; or the peer asks.
        let peer_session = self.peer.as_ref().and_then(SessionHello::from_hello);
        match self.session.as_deref_mut() {
            Some(link) if link.requester => {
                let Some(SessionHello::Offer { nonce }) = peer_session else {
                    let e = ConnectionError::SessionUnavailable;
                    self.fail(CloseCode::UnsupportedVersion, e.to_string(), e, false);
                    self.input_done = true;
                    return;
                };
                // Holding the secret, prove it, bound to this connection's nonce. SDATA waits
                // for the peer's RESUME.
                if let Some(session) = &link.state {
                    if let Some(secret) = session.secret() {
                        let (id, delivered) = (session.id(), session.delivered());
                        link.auth = Some(resume_proof(secret, &id, &nonce, delivered));
                    }
                }
            }
            _ => {
                let request = match peer_session {
                    Some(SessionHello::Request { delivered }) => Some((delivered, false)),
                    Some(SessionHello::Resume { delivered }) => Some((delivered, true)),
                    _ => None,
                };
                if let (Some(policy), Some((delivered, resume)), true) = (
                    self.config.sessions,
                    request,
                    self.peer.as_ref().is_some_and(Hello::has_session),
                ) {
                    let mut link = SessionLink::new(false, policy, None);
                    link.peer_delivered = delivered;
                    // A resume is reported once its proof (AUTH) has arrived.
                    link.awaiting_proof = resume;
                    self.session = Some(Box::new(link));
                    if !resume {
                        let id = self.peer.as_ref().map_or([0; 16], |h| h.session_id);
                        self.events.push_back(Event::SessionRequest {
                            id,
                            peer_delivered: delivered,
                            proof: None,
                        });
                    }
                }
            }
        }
        // Messages queued before we knew the peer's limit.
        let mut kept = VecDeque::with_capacity(self.data.len());
        for payload in self.data.drain(..) {
            if payload.len() as u64 + 1 > u64::from(peer_max) {
                self.queued_bytes -= payload.len() + DATA_OVERHEAD;
                self.events.push_back(Event::MessageDropped {
                    len: payload.len(),
                    peer_max,
                });
            } else {
                kept.push_back(payload);
            }
        }
        self.data = kept;
        // The same for a session's messages, as long as none of them was ever sent (their
        // numbers are still ours to change); afterwards `send` checks the known limit.
        if let Some(session) = self.session.as_mut().and_then(|l| l.state.as_mut()) {
            let fits = |p: &Bytes| p.len() as u64 + 1 + 8 <= u64::from(peer_max);
            for payload in session.remove_unsendable(fits) {
                self.events.push_back(Event::MessageDropped {
                    len: payload.len(),
                    peer_max,
                });
            }
        }
        if let Some((code, reason)) = self.deferred_close.take() {
            self.close(code, &reason, now);
        }
    }

    fn on_session_data(&mut self, seq: u64, payload: Bytes, now: Instant) {
        let Some(link) = self.session.as_mut().filter(|l| l.active) else {
            return self.session_protocol_error("SDATA", "without an active session");
        };
        let Some(session) = link.state.as_mut() else {
            return self.session_protocol_error("SDATA", "without an active session");
        };
        match session.receive(seq) {
            Received::Deliver => {
                if link.ack_due.is_none() {
                    link.ack_due = now.checked_add(link.policy.ack_delay);
                }
                self.stats.data_in += 1;
                self.last_data = self.last_data.max(now);
                self.events.push_back(Event::Data(payload));
            }
            Received::Duplicate => self.stats.duplicates += 1,
            Received::Gap { expected } => {
                self.session_violation("SDATA sequence number", format!("{expected}"), seq)
            }
        }
    }

    fn on_ack(&mut self, seq: u64) {
        let Some(link) = self.session.as_mut().filter(|l| l.active) else {
            return self.session_protocol_error("ACK", "without an active session");
        };
        let Some(session) = link.state.as_mut() else {
            return self.session_protocol_error("ACK", "without an active session");
        };
        // Only what was transmitted on this connection (or acknowledged before) can be acked.
        let transmitted = link.transmitted;
        if seq > transmitted {
            let acked = session.acked();
            return self.session_violation("ACK", format!("{acked}..={transmitted}"), seq);
        }
        if let Err(e) = session.ack(seq) {
            self.session_violation("ACK", e.to_string(), seq);
        }
    }

    /// Accepting side: the requester's proof for the resume it asked for.
    fn on_auth(&mut self, mac: [u8; PROOF_LEN]) {
        let Some(link) = self.session.as_mut().filter(|l| l.awaiting_proof) else {
            return self
                .session_protocol_error("AUTH", "without a resume request, or a second one");
        };
        link.awaiting_proof = false;
        let id = self.peer.as_ref().map_or([0; 16], |h| h.session_id);
        let proof = ResumeProof {
            id,
            nonce: self.offer_nonce.unwrap_or_default(),
            delivered: link.peer_delivered,
            mac,
        };
        link.proof = Some(proof.clone());
        self.events.push_back(Event::SessionRequest {
            id,
            peer_delivered: link.peer_delivered,
            proof: Some(proof),
        });
    }

    fn on_resume(&mut self, status: ResumeStatus, delivered: u64, secret: Option<SessionSecret>) {
        let Some(link) = self.session.as_mut().filter(|l| l.requester && !l.active) else {
            return self.session_protocol_error("RESUME", "not asked for, or a second one");
        };
        let Some(session) = link.state.as_mut() else {
            return self.session_protocol_error("RESUME", "without a session");
        };
        let id = session.id();
        if status == ResumeStatus::Resumed && session.secret().is_none() {
            // We asked without a secret: the peer cannot have a session we confirmed.
            return self.session_protocol_error("RESUME", "resumed for a session never confirmed");
        }
        let lost = match status {
            ResumeStatus::Resumed => false,
            // "New" for a session the peer had confirmed before: the peer lost it.
            ResumeStatus::New => session.is_established(),
            ResumeStatus::Unknown => true,
        };
        if lost {
            if delivered != 0 {
                return self.session_violation("RESUME delivered", "0".into(), delivered);
            }
            let unacked = session.reset();
            if !unacked.is_empty() {
                self.events.push_back(Event::SessionLost { id, unacked });
            }
        } else if let Err(e) = session.ack(delivered) {
            return self.session_violation("RESUME delivered", e.to_string(), delivered);
        }
        // The wire guarantees a secret exactly with `new` and `unknown`.
        if let Some(secret) = secret {
            session.set_secret(secret);
        }
        session.set_established();
        let resending = session.next_seq() - 1 - session.acked();
        link.transmitted = session.acked();
        link.ack_sent = session.delivered();
        link.peer_delivered = delivered;
        link.active = true;
        self.events.push_back(Event::SessionStarted {
            id,
            status,
            resending,
        });
    }

    /// A session message that does not fit the connection: protocol error.
    fn session_protocol_error(&mut self, what: &'static str, why: &'static str) {
        self.protocol_violation(Violation::Unexpected { what, why });
    }

    /// A session sequence number that cannot be right: protocol error.
    fn session_violation(&mut self, what: &'static str, expected: String, got: u64) {
        self.protocol_violation(Violation::SessionSequence {
            what,
            got,
            expected,
        });
    }

    /// Closes with code 2 for `violation` at the current stream offset; input stops.
    fn protocol_violation(&mut self, violation: Violation) {
        let e = WireError::Protocol {
            violation,
            offset: self.codec.consumed(),
        };
        self.fail(
            CloseCode::ProtocolError,
            e.to_string(),
            ConnectionError::Wire(e),
            false,
        );
        self.input_done = true;
    }

    /// A CLOSE `Normal` (either way) ends the session: nothing to resume. Messages the peer
    /// did not acknowledge are handed back when the connection is closed.
    /// Requester: the peer refused our session. It cannot go on under this id: the next
    /// connection asks for a new one under a fresh id, and what the peer never acknowledged
    /// comes back to the application.
    fn session_refused(&mut self) {
        let Some(link) = self.session.as_mut().filter(|l| l.requester && !l.ended) else {
            return;
        };
        if let Some(session) = link.state.as_mut() {
            let id = session.id();
            let unacked = session.start_over(random_bytes());
            if !unacked.is_empty() {
                self.events.push_back(Event::SessionLost { id, unacked });
            }
        }
    }

    fn end_session(&mut self) {
        if let Some(link) = self.session.as_mut() {
            link.ended = true;
        }
    }

    fn on_peer_close(&mut self, code: CloseCode, reason: String) {
        if code == CloseCode::Normal {
            // Our final ACK goes out with our CLOSE; what we sent and the peer did not ack
            // comes back to the application.
            self.end_session();
        }
        if code == CloseCode::SessionRefused {
            self.session_refused();
        }
        self.input_done = true;
        self.report_closed(code, reason, true, None);
        if self.close.is_none() && self.close_sent_at.is_none() {
            self.close = Some(PendingClose {
                code,
                reason: String::new(),
                after_data: false,
            });
        }
        self.enter_closed();
    }

    // ---- output ----

    /// Queues an application message. Allowed while handshaking (written once the handshake is
    /// done); refused once closing, except with a session that did not end: the message then
    /// stays in the session and goes out on the next connection.
    pub fn send(&mut self, payload: Bytes, _now: Instant) -> Result<(), SendError> {
        if !matches!(self.state, State::Handshaking | State::Open) {
            // A session outlives its connection: the message waits for the next one (the
            // runtime bounds what it hands over; nothing it was told is queued gets lost).
            if let Some(session) = self
                .session
                .as_mut()
                .filter(|l| !l.ended)
                .and_then(|l| l.state.as_mut())
            {
                let _ = session.push(payload, usize::MAX);
                return Ok(());
            }
            return Err(SendError::Closed);
        }
        let max = self.peer.as_ref().map_or(u32::MAX, |h| h.max_message_len);
        let session_header = if self.session.is_some() { 8 } else { 0 };
        if payload.len() as u64 + 1 + session_header > u64::from(max) {
            return Err(SendError::TooBig {
                len: payload.len(),
                max,
            });
        }
        if let Some(session) = self.session.as_mut().and_then(|l| l.state.as_mut()) {
            // Numbered and kept until acknowledged: the queue limit bounds the retransmit
            // buffer.
            let limit = self
                .config
                .max_queued_bytes
                .saturating_sub(self.queued_bytes);
            return match session.push(payload, limit) {
                Ok(_) => Ok(()),
                Err(crate::session::SessionError::BufferFull { len, .. }) => {
                    Err(SendError::QueueFull {
                        queued: self.queued_bytes(),
                        len,
                        limit: self.config.max_queued_bytes,
                    })
                }
                Err(_) => Err(SendError::Closed),
            };
        }
        let len = payload.len() + DATA_OVERHEAD;
        if self.queued_bytes.saturating_add(len) > self.config.max_queued_bytes {
            return Err(SendError::QueueFull {
                queued: self.queued_bytes,
                len,
                limit: self.config.max_queued_bytes,
            });
        }
        self.queued_bytes += len;
        self.data.push_back(payload);
        Ok(())
    }

    /// Closes the connection gracefully: queued DATA is written, then CLOSE with `code` and
    /// `reason` (truncated to 1024 bytes at a character boundary). No-op once closing.
    pub fn close(&mut self, code: CloseCode, reason: &str, _now: Instant) {
        if !matches!(self.state, State::Handshaking | State::Open) {
            return;
        }
        if self.state == State::Handshaking && !self.data.is_empty() {
            // DATA may only go out once the peer's HELLO is accepted: close after that.
            self.deferred_close
                .get_or_insert_with(|| (code, reason.to_string()));
            return;
        }
        let code = CloseCode::from_u16(code.as_u16());
        if code == CloseCode::Normal {
            self.end_session();
        }
        let reason = truncate(reason);
        self.report_closed(code, reason.clone(), false, None);
        self.close = Some(PendingClose {
            code,
            reason,
            after_data: true,
        });
        self.state = State::Closing;
        self.pong = None;
        self.ping = None;
    }

    /// The next bytes to write, if any. Call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.close_sent_at.is_some() {
            return None;
        }
        if let Some(payload) = self.partial.take() {
            self.stats.bytes_out += payload.len() as u64;
            return Some(payload);
        }
        let mut buf = BytesMut::new();
        if !self.hello_sent {
            self.hello_sent = true;
            let mut hello = self.config.hello();
            match self.session.as_deref() {
                Some(SessionLink {
                    requester: true,
                    state: Some(session),
                    ..
                }) => {
                    hello.session_id = session.id();
                    let delivered = session.delivered();
                    // With the secret, ask to resume (AUTH follows); without, ask plainly.
                    let request = match session.secret() {
                        Some(_) => SessionHello::Resume { delivered },
                        None => SessionHello::Request { delivered },
                    };
                    hello.extensions.push(request.to_extension());
                }
                _ if self.config.sessions.is_some() => {
                    let nonce = random_nonce();
                    self.offer_nonce = Some(nonce);
                    hello
                        .extensions
                        .push(SessionHello::Offer { nonce }.to_extension());
                }
                _ => {}
            }
            self.encode(&Message::Hello(hello), &mut buf, now);
            return self.out(buf);
        }
        let handshake_done = self.peer.is_some();
        let data_allowed = handshake_done
            && match (&self.close, self.state) {
                (None, State::Open) => true,
                (Some(c), State::Closing) => c.after_data,
                _ => false,
            };
        if self.close.is_some() && (!data_allowed || !self.has_pending_data()) {
            // Let the peer release what we delivered before the session pauses or ends.
            if let Some(ack) = self.take_ack(now, true) {
                self.encode(&ack, &mut buf, now);
                return self.out(buf);
            }
            let close = self.close.take().expect("checked above");
            let message = Message::Close {
                code: close.code,
                reason: close.reason,
            };
            self.encode(&message, &mut buf, now);
            self.close_sent_at = Some(now);
            self.unsent.extend(self.data.drain(..));
            self.queued_bytes = 0;
            self.events.push_back(Event::ShutdownWrite);
            return self.out(buf);
        }
        if self.state == State::Open {
            if let Some((status, delivered, secret)) =
                self.session.as_mut().and_then(|l| l.resume.take())
            {
                let resume = Message::Resume {
                    status,
                    delivered,
                    secret,
                };
                self.encode(&resume, &mut buf, now);
                return self.out(buf);
            }
            if let Some(mac) = self.session.as_mut().and_then(|l| l.auth.take()) {
                self.encode(&Message::Auth(mac), &mut buf, now);
                return self.out(buf);
            }
            if let Some(context) = self.pong.take() {
                self.encode(&Message::Pong(context), &mut buf, now);
                return self.out(buf);
            }
            if let Some(context) = self.ping.take() {
                let context = Bytes::copy_from_slice(&context);
                self.encode(&Message::Ping(context), &mut buf, now);
                return self.out(buf);
            }
        }
        if self.state == State::Open {
            if let Some(ack) = self.take_ack(now, false) {
                self.encode(&ack, &mut buf, now);
                return self.out(buf);
            }
        }
        if data_allowed && self.session.is_some() {
            return self.transmit_session_data(now);
        }
        if data_allowed && !self.data.is_empty() {
            let mut sent = 0;
            while let Some(payload) = self.data.front() {
                // Checked against the peer's limit in `send` / `on_hello`.
                let mut header = [0; DATA_OVERHEAD];
                header[..4].copy_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
                header[4] = Message::DATA;
                let Some(copied) = pack_message(&mut buf, &header, payload) else {
                    break;
                };
                let payload = self.data.pop_front().expect("front exists");
                self.queued_bytes -= payload.len() + DATA_OVERHEAD;
                sent += 1;
                if !copied {
                    self.partial = Some(payload);
                    break;
                }
            }
            self.data_sent(sent, now);
            return self.out(buf);
        }
        None
    }

    /// Counts `n` DATA / SDATA messages just transmitted at `now`.
    fn data_sent(&mut self, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        self.stats.messages_out += n;
        self.stats.data_out += n;
        self.last_data = self.last_data.max(now);
        if let Some(lv) = &mut self.liveness {
            lv.on_send_data(now);
        }
    }

    /// DATA is waiting to be written (queued, or in the session and not transmitted yet).
    fn has_pending_data(&self) -> bool {
        if !self.data.is_empty() {
            return true;
        }
        match self.session.as_deref() {
            Some(SessionLink {
                active: true,
                state: Some(session),
                transmitted,
                ..
            }) => *transmitted + 1 < session.next_seq(),
            _ => false,
        }
    }

    /// An ACK to send now, if one is due: deliveries not acknowledged yet and either enough of
    /// them, the ack delay over, or `force` (ahead of SDATA or CLOSE).
    fn take_ack(&mut self, now: Instant, force: bool) -> Option<Message> {
        let link = self.session.as_mut()?;
        if !link.active {
            return None;
        }
        let pending = link.unacked_deliveries();
        let due = force
            || pending >= u64::from(link.policy.ack_every)
            || link.ack_due.is_some_and(|at| now >= at);
        if pending == 0 || !due {
            return None;
        }
        let delivered = link.state.as_ref()?.delivered();
        link.ack_sent = delivered;
        link.ack_due = None;
        Some(Message::Ack(delivered))
    }

    /// The next SDATA of the session (an ACK first if deliveries are unacknowledged).
    fn transmit_session_data(&mut self, now: Instant) -> Option<Bytes> {
        // Packed like DATA (see `pack_message`), copied straight from the retransmit buffer.
        let mut buf = BytesMut::new();
        let mut sent = 0u64;
        loop {
            let link = self.session.as_mut()?;
            if !link.active {
                break;
            }
            let seq = link.transmitted + 1;
            let Some(payload) = link.state.as_ref().and_then(|s| s.message(seq)) else {
                break;
            };
            if link.unacked_deliveries() > 0 {
                // Piggyback: the ACK goes out in the same write as the SDATA after it (only
                // when there is SDATA to send: otherwise the ACK policy decides).
                if let Some(ack) = self.take_ack(now, true) {
                    self.encode(&ack, &mut buf, now);
                }
                continue;
            }
            // The length was checked against the peer's limit in `send`.
            let mut header = [0; SDATA_OVERHEAD];
            header[..4].copy_from_slice(&((payload.len() + 1 + 8) as u32).to_be_bytes());
            header[4] = Message::SDATA;
            header[5..].copy_from_slice(&seq.to_be_bytes());
            let Some(copied) = pack_message(&mut buf, &header, payload) else {
                break;
            };
            link.transmitted = seq;
            sent += 1;
            if !copied {
                self.partial = Some(payload.clone());
                break;
            }
        }
        // The session's high-water mark: the most the peer can ever claim to have delivered.
        if let Some(link) = self.session.as_mut() {
            let transmitted = link.transmitted;
            if let Some(session) = link.state.as_mut() {
                session.mark_transmitted(transmitted);
            }
        }
        self.data_sent(sent, now);
        self.out(buf)
    }

    fn out(&mut self, buf: BytesMut) -> Option<Bytes> {
        if buf.is_empty() {
            return None;
        }
        self.stats.bytes_out += buf.len() as u64;
        Some(buf.freeze())
    }

    /// Encodes a control message (our own, always valid) and records the send.
    fn encode(&mut self, message: &Message, buf: &mut BytesMut, now: Instant) {
        if self.codec.encode(message, buf).is_ok() {
            self.stats.messages_out += 1;
            if let Some(lv) = &mut self.liveness {
                lv.on_send(now);
            }
        }
    }

    // ---- timers ----

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshaking => {
                Some(self.frame_deadline().map_or(self.handshake_deadline, |at| {
                    at.min(self.handshake_deadline)
                }))
            }
            State::Open => {
                let ack_due = self.session.as_ref().and_then(|l| l.ack_due);
                // A resume's proof belongs to the handshake, and to its deadline.
                let proof_due = self
                    .session
                    .as_ref()
                    .filter(|l| l.awaiting_proof)
                    .map(|_| self.handshake_deadline);
                [
                    self.liveness.as_ref().and_then(Liveness::poll_timeout),
                    self.idle_deadline(),
                    ack_due,
                    proof_due,
                    self.frame_deadline(),
                ]
                .into_iter()
                .flatten()
                .min()
            }
            State::Closing => match self.close_sent_at {
                Some(at) => Some(at.checked_add(self.config.linger).unwrap_or(at)),
                None => self.liveness.as_ref().and_then(Liveness::poll_timeout),
            },
            State::Closed => None,
        }
    }

    /// Handles whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.frame_deadline().is_some_and(|at| now >= at) {
            self.frame_timed_out();
            return;
        }
        match self.state {
            State::Handshaking if now >= self.handshake_deadline => {
                let e = ConnectionError::HandshakeTimeout {
                    timeout: self.config.handshake_timeout,
                };
                self.fail(CloseCode::PeerTimedOut, e.to_string(), e, false);
                self.input_done = true;
            }
            State::Open
                if now >= self.handshake_deadline
                    && self.session.as_ref().is_some_and(|l| l.awaiting_proof) =>
            {
                let e = ConnectionError::HandshakeTimeout {
                    timeout: self.config.handshake_timeout,
                };
                self.fail(CloseCode::PeerTimedOut, format!("{e} (AUTH)"), e, false);
                self.input_done = true;
            }
            State::Open => {
                if let Some(lv) = &mut self.liveness {
                    lv.handle_timeout(now);
                }
                self.drain_liveness(now);
                if self.state == State::Open && self.idle_deadline().is_some_and(|at| now >= at) {
                    let idle = self.config.idle_timeout.unwrap_or_default();
                    self.close(CloseCode::Idle, &format!("no messages for {idle:?}"), now);
                }
            }
            State::Closing => match self.close_sent_at {
                Some(at) if now >= at.checked_add(self.config.linger).unwrap_or(at) => {
                    self.input_done = true;
                    self.enter_closed();
                }
                Some(_) => {}
                None => {
                    if let Some(lv) = &mut self.liveness {
                        lv.handle_timeout(now);
                    }
                    self.drain_liveness(now);
                }
            },
            _ => {}
        }
    }

    /// When the idle timeout evicts the connection, if it is on.
    fn idle_deadline(&self) -> Option<Instant> {
        self.config
            .idle_timeout
            .and_then(|d| self.last_data.checked_add(d))
    }

    fn drain_liveness(&mut self, _now: Instant) {
        while let Some(event) = self.liveness.as_mut().and_then(Liveness::poll_event) {
            match event {
                LivenessEvent::SendPing { context } => {
                    if self.state == State::Open {
                        self.ping = Some(context);
                    }
                }
                LivenessEvent::Idle(kind) => self.events.push_back(Event::Idle(kind)),
                LivenessEvent::PeerDead {
                    silent_for, cause, ..
                } => {
                    let e = ConnectionError::PeerDead { silent_for, cause };
                    self.fail(CloseCode::PeerTimedOut, e.to_string(), e, true);
                    self.input_done = true;
                }
                LivenessEvent::TooManyPings {
                    strikes,
                    min_interval,
                    last_gap,
                } => {
                    let e = ConnectionError::TooManyPings {
                        strikes,
                        min_interval,
                        last_gap,
                    };
                    self.fail(CloseCode::TooManyPings, "too many pings".into(), e, false);
                    self.input_done = true;
                }
            }
        }
    }

    // ---- closing ----

    /// We close because something went wrong: queued DATA is discarded, CLOSE is queued (unless
    /// one is already pending or sent), the [`Event::Closed`] is reported once.
    fn fail(&mut self, code: CloseCode, reason: String, error: ConnectionError, closed: bool) {
        let reason = truncate(&reason);
        self.report_closed(code, reason.clone(), false, Some(error));
        self.unsent.extend(self.data.drain(..));
        self.queued_bytes = 0;
        self.pong = None;
        self.ping = None;
        match &mut self.close {
            Some(pending) => pending.after_data = false,
            None if self.close_sent_at.is_none() => {
                self.close = Some(PendingClose {
                    code,
                    reason,
                    after_data: false,
                })
            }
            None => {}
        }
        match self.state {
            State::Handshaking | State::Open if !closed => self.state = State::Closing,
            State::Closed => {}
            _ => self.enter_closed(),
        }
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

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        if let Some(link) = self.session.as_mut().filter(|l| l.ended) {
            if let Some(session) = link.state.as_mut() {
                let unacked = session.take_unacked();
                if !unacked.is_empty() {
                    let id = session.id();
                    self.events.push_back(Event::SessionLost { id, unacked });
                }
            }
        }
        self.unsent.extend(self.data.drain(..));
        self.queued_bytes = 0;
        self.pong = None;
        self.ping = None;
        if let Some(close) = &mut self.close {
            close.after_data = false;
        }
    }

    /// The next event, if any. Call until `None` after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// When the partial frame left at the front of `recv` started: `now` for a new one (none was
/// pending, or frames were `decoded` from this input, so what is left began in it), the old
/// start while the same frame is still incomplete, `None` when nothing is left.
pub(crate) fn frame_start(
    started: Option<Instant>,
    recv: &BytesMut,
    decoded: bool,
    now: Instant,
) -> Option<Instant> {
    if recv.is_empty() {
        None
    } else if decoded || started.is_none() {
        Some(now)
    } else {
        started
    }
}

/// Appends a data message to the chunk being built: small messages go out together in one
/// chunk (one allocation, one slot of a vectored write), a large payload (over
/// [`COPY_THRESHOLD`]) is its own chunk after its header, shared rather than copied. Returns
/// `None` when the message must start the next chunk, `Some(true)` when header and payload were
/// appended, `Some(false)` when only the header was (the caller sends the payload next).
fn pack_message(buf: &mut BytesMut, header: &[u8], payload: &[u8]) -> Option<bool> {
    let large = payload.len() > COPY_THRESHOLD;
    if !buf.is_empty() && (large || buf.len() + header.len() + payload.len() > COALESCE) {
        return None;
    }
    let needed = header.len() + payload.len().min(COPY_THRESHOLD);
    if buf.capacity() - buf.len() < needed {
        buf.reserve(COALESCE.min(header.len() + payload.len()).max(256));
    }
    buf.put_slice(header);
    if large {
        return Some(false);
    }
    buf.put_slice(payload);
    Some(true)
}

/// `reason` cut to at most [`MAX_CLOSE_REASON`] bytes at a character boundary.
fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(interval: u64, timeout: u64) -> ConnectionConfig {
        ConnectionConfig {
            ping_interval: Some(secs(interval)),
            ping_timeout: secs(timeout),
            ..ConnectionConfig::default()
        }
    }

    /// Decodes a captured byte stream (no HELLO-first check).
    fn decode_all(bytes: &[u8]) -> Vec<Message> {
        let mut codec = WireCodec::new(1 << 24).unwrap().without_handshake_check();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(Some(m)) = codec.decode(&mut buf) {
            out.push(m);
        }
        out
    }

    fn encode(message: &Message) -> Vec<u8> {
        let mut codec = WireCodec::new(1 << 24).unwrap();
        codec.set_peer_max_message_len(u32::MAX);
        let mut buf = BytesMut::new();
        codec.encode(message, &mut buf).unwrap();
        buf.to_vec()
    }

    fn hello_with(f: impl FnOnce(&mut Hello)) -> Vec<u8> {
        let mut h = Hello::default();
        f(&mut h);
        encode(&Message::Hello(h))
    }

    fn transmit_all(c: &mut Connection, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = c.poll_transmit(now) {
            out.extend_from_slice(&b);
        }
        out
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn closes(messages: &[Message]) -> Vec<u16> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Close { code, .. } => Some(code.as_u16()),
                _ => None,
            })
            .collect()
    }

    fn closed_code(events: &[Event]) -> Option<(CloseCode, bool)> {
        events.iter().find_map(|e| match e {
            Event::Closed { code, by_peer, .. } => Some((*code, *by_peer)),
            _ => None,
        })
    }

    /// Two connections back to back through an in-memory pipe.
    struct Net {
        a: Connection,
        b: Connection,
        now: Instant,
        /// Deliver in chunks of random size up to this (0 = whole transmits).
        max_chunk: usize,
        rng: u64,
        /// `b` has vanished: it neither receives, transmits nor runs timers.
        b_frozen: bool,
        ev_a: Vec<Event>,
        ev_b: Vec<Event>,
        wire_ab: Vec<u8>,
        wire_ba: Vec<u8>,
    }

    impl Net {
        fn new(ca: ConnectionConfig, cb: ConnectionConfig) -> Net {
            let now = Instant::now();
            Net {
                a: Connection::new(ca, now).unwrap(),
                b: Connection::new(cb, now).unwrap(),
                now,
                max_chunk: 0,
                rng: 0x9E37_79B9_7F4A_7C15,
                b_frozen: false,
                ev_a: Vec::new(),
                ev_b: Vec::new(),
                wire_ab: Vec::new(),
                wire_ba: Vec::new(),
            }
        }

        fn next_chunk(&mut self, left: usize) -> usize {
            if self.max_chunk == 0 {
                return left;
            }
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            1 + (self.rng as usize % self.max_chunk).min(left - 1)
        }

        fn deliver(&mut self, to_b: bool, bytes: &[u8]) {
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = self.next_chunk(rest.len());
                let dst = if to_b { &mut self.b } else { &mut self.a };
                dst.recv_buf().extend_from_slice(&rest[..n]);
                dst.process_input(self.now);
                rest = &rest[n..];
            }
        }

        fn flush(&mut self) {
            loop {
                let mut moved = false;
                while let Some(bytes) = self.a.poll_transmit(self.now) {
                    moved = true;
                    self.wire_ab.extend_from_slice(&bytes);
                    if !self.b_frozen {
                        self.deliver(true, &bytes);
                    }
                }
                if !self.b_frozen {
                    while let Some(bytes) = self.b.poll_transmit(self.now) {
                        moved = true;
                        self.wire_ba.extend_from_slice(&bytes);
                        self.deliver(false, &bytes);
                    }
                }
                if !moved {
                    break;
                }
            }
            self.ev_a.extend(events(&mut self.a));
            self.ev_b.extend(events(&mut self.b));
        }

        fn run_until(&mut self, until: Instant) {
            self.flush();
            for _ in 0..1_000_000 {
                let tb = if self.b_frozen {
                    None
                } else {
                    self.b.poll_timeout()
                };
                let next = [self.a.poll_timeout(), tb].into_iter().flatten().min();
                match next {
                    Some(t) if t <= until => {
                        self.now = self.now.max(t);
                        self.a.handle_timeout(self.now);
                        if !self.b_frozen {
                            self.b.handle_timeout(self.now);
                        }
                        self.flush();
                    }
                    _ => break,
                }
            }
            self.now = self.now.max(until);
            self.flush();
        }

        fn data_b(&self) -> Vec<Bytes> {
            data_of(&self.ev_b)
        }
    }

    fn data_of(events: &[Event]) -> Vec<Bytes> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn config_validation() {
        assert!(ConnectionConfig::default().validate().is_ok());
        let bad = [
            ConnectionConfig {
                max_message_len: 100,
                ..Default::default()
            },
            ConnectionConfig {
                ping_timeout: Duration::ZERO,
                ..Default::default()
            },
            ConnectionConfig {
                ping_interval: Some(Duration::from_micros(1500)),
                ..Default::default()
            },
            ConnectionConfig {
                grace: 1.0,
                ..Default::default()
            },
            ConnectionConfig {
                handshake_timeout: Duration::ZERO,
                ..Default::default()
            },
            ConnectionConfig {
                max_queued_bytes: 0,
                ..Default::default()
            },
            ConnectionConfig {
                reader_idle: Some(Duration::ZERO),
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
            assert!(Connection::new(c, Instant::now()).is_err());
        }
        let passive = ConnectionConfig {
            ping_interval: None,
            ..Default::default()
        };
        let h = passive.hello();
        assert_eq!(
            (h.ping_interval, h.ping_timeout),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn handshake_both_ways() {
        let mut net = Net::new(cfg(5, 3), cfg(7, 2));
        assert_eq!(net.a.state(), State::Handshaking);
        net.flush();
        assert_eq!((net.a.state(), net.b.state()), (State::Open, State::Open));
        match &net.ev_a[..] {
            [Event::Connected { peer, version: 1 }] => {
                assert_eq!(peer.ping_interval, secs(7));
                assert_eq!(peer.ping_timeout, secs(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&net.ev_b[..], [Event::Connected { peer, version: 1 }] if peer.ping_interval == secs(5))
        );
        assert_eq!(net.b.peer_hello().unwrap().max_message_len, 8 * 1024 * 1024);
        // HELLO is the first (and only) thing on the wire, byte-exact with the codec.
        assert_eq!(net.wire_ab, encode(&Message::Hello(cfg(5, 3).hello())));
        assert_eq!(net.a.stats().messages_out, 1);
        assert_eq!(net.a.stats().messages_in, 1);
    }

    #[test]
    fn data_both_directions_in_order_chunked() {
        let mut net = Net::new(cfg(5, 3), cfg(5, 3));
        net.max_chunk = 7;
        let msgs: Vec<Bytes> = (0..50u32)
            .map(|i| Bytes::from(vec![i as u8; (i as usize * 97) % 3000]))
            .collect();
        // Queued before the handshake: written after it.
        for m in &msgs[..10] {
            net.a.send(m.clone(), net.now).unwrap();
        }
        net.flush();
        for m in &msgs[10..] {
            net.a.send(m.clone(), net.now).unwrap();
            net.b.send(m.clone(), net.now).unwrap();
        }
        net.flush();
        assert_eq!(net.data_b(), msgs);
        assert_eq!(data_of(&net.ev_a), msgs[10..].to_vec());
        assert_eq!(net.b.stats().data_in, 50);
        assert_eq!(net.a.stats().data_out, 50);
        assert_eq!(net.a.stats().bytes_out, net.b.stats().bytes_in);
        assert_eq!(net.a.queued_bytes(), 0);
    }

    #[test]
    fn zero_copy_both_sides() {
        let t0 = Instant::now();
        let mut a = Connection::new(cfg(5, 3), t0).unwrap();
        a.handle_input(&hello_with(|_| {}), t0);
        let _ = transmit_all(&mut a, t0); // HELLO
        let payload = Bytes::from(vec![7u8; 10_000]);
        a.send(payload.clone(), t0).unwrap();
        let header = a.poll_transmit(t0).unwrap();
        assert_eq!(&header[..], &[0, 0, 0x27, 0x11, 2]);
        let body = a.poll_transmit(t0).unwrap();
        assert_eq!(body.as_ptr(), payload.as_ptr(), "payload not copied");
        assert!(a.poll_transmit(t0).is_none());

        let mut b = Connection::new(cfg(5, 3), t0).unwrap();
        b.handle_input(&hello_with(|_| {}), t0);
        let buf = b.recv_buf();
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&body);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        b.process_input(t0);
        let data = data_of(&events(&mut b));
        assert_eq!(data, vec![payload]);
        assert!(range.contains(&(data[0].as_ptr() as usize)), "body copied");
    }

    #[test]
    fn ping_pong_when_quiet_gives_rtt() {
        let mut net = Net::new(
            cfg(1, 1),
            ConnectionConfig {
                ping_interval: None,
                ..cfg(1, 1)
            },
        );
        net.run_until(net.now + ms(1500));
        assert!(
            net.ev_a.iter().any(|e| matches!(e, Event::Rtt(_))),
            "{:?}",
            net.ev_a
        );
        assert!(net.a.rtt().is_some());
        let ab = decode_all(&net.wire_ab);
        let ba = decode_all(&net.wire_ba);
        assert!(matches!(ab[1], Message::Ping(ref c) if c.len() == 8));
        assert!(matches!(ba[1], Message::Pong(ref c) if c.len() == 8));
        // The passive side never pings.
        assert!(!ba.iter().any(|m| matches!(m, Message::Ping(_))));
        assert_eq!((net.a.state(), net.b.state()), (State::Open, State::Open));
    }

    #[test]
    fn idle_timeout_evicts_a_connection_without_data_despite_heartbeats() {
        // Heartbeats every second keep the link alive, but no DATA flows: A evicts at 10 s.
        let idle = ConnectionConfig {
            idle_timeout: Some(secs(10)),
            ..cfg(1, 1)
        };
        let mut net = Net::new(idle, cfg(1, 1));
        let t0 = net.now;
        net.run_until(t0 + secs(5));
        net.a.send(Bytes::from_static(b"keep"), net.now).unwrap();
        net.run_until(t0 + ms(14_900));
        // The DATA at 5 s moved the deadline to 15 s.
        assert_eq!(net.a.state(), State::Open, "{:?}", net.ev_a);
        assert!(net.ev_a.iter().any(|e| matches!(e, Event::Rtt(_))));
        net.run_until(t0 + secs(16));
        assert_eq!(closed_code(&net.ev_a), Some((CloseCode::Idle, false)));
        assert_eq!(closed_code(&net.ev_b), Some((CloseCode::Idle, true)));
        assert_eq!(net.data_b(), vec![Bytes::from_static(b"keep")]);
        let sent = decode_all(&net.wire_ab);
        assert_eq!(closes(&sent), vec![CloseCode::Idle.as_u16()]);
        // Exactly at the deadline: the close went out in the step at 15 s.
        assert!(net.a.poll_timeout().is_none() || net.a.state() != State::Open);
    }

    #[test]
    fn idle_timeout_counts_received_data_too() {
        let idle = ConnectionConfig {
            idle_timeout: Some(secs(3)),
            ..cfg(1, 1)
        };
        let mut net = Net::new(idle, cfg(1, 1));
        let t0 = net.now;
        for i in 1..=5 {
            net.run_until(t0 + secs(2 * i));
            net.b.send(Bytes::from_static(b"tick"), net.now).unwrap();
        }
        net.run_until(t0 + ms(12_900));
        assert_eq!(net.a.state(), State::Open, "{:?}", net.ev_a);
        net.run_until(t0 + ms(13_100));
        assert_eq!(closed_code(&net.ev_a), Some((CloseCode::Idle, false)));
        assert_eq!(
            ConnectionConfig {
                idle_timeout: Some(Duration::ZERO),
                ..ConnectionConfig::default()
            }
            .validate(),
            Err(ConfigError::Zero {
                name: "idle_timeout"
            })
        );
    }

    #[test]
    fn idle_events_fire_once_per_idle_period() {
        // No heartbeats at all: idle events are the only timers.
        let quiet = ConnectionConfig {
            ping_interval: None,
            reader_idle: Some(secs(2)),
            writer_idle: Some(secs(3)),
            all_idle: Some(secs(5)),
            ..ConnectionConfig::default()
        };
        let mut net = Net::new(
            quiet,
            ConnectionConfig {
                ping_interval: None,
                ..ConnectionConfig::default()
            },
        );
        let t0 = net.now;
        let idle = |events: &[Event]| -> Vec<IdleKind> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Idle(kind) => Some(*kind),
                    _ => None,
                })
                .collect()
        };
        net.run_until(t0 + ms(1_900));
        assert!(idle(&net.ev_a).is_empty());
        net.run_until(t0 + secs(6));
        assert_eq!(
            idle(&net.ev_a),
            vec![
                IdleKind::ReaderIdle,
                IdleKind::WriterIdle,
                IdleKind::AllIdle
            ]
        );
        // Nothing more while still idle: once per period.
        net.run_until(t0 + secs(30));
        assert_eq!(idle(&net.ev_a).len(), 3);
        // Traffic re-arms them.
        net.b.send(Bytes::from_static(b"wake"), net.now).unwrap();
        net.run_until(t0 + secs(33));
        assert_eq!(idle(&net.ev_a).len(), 4, "{:?}", idle(&net.ev_a));
        assert_eq!(idle(&net.ev_a)[3], IdleKind::ReaderIdle);
    }

    #[test]
    fn frozen_peer_declared_dead_within_bound() {
        for freeze_after in [0u64, 1200, 4999, 7777] {
            let (interval, timeout) = (secs(5), secs(3));
            // The passive side keeps nothing of its own going.
            let mut net = Net::new(
                cfg(5, 3),
                ConnectionConfig {
                    ping_interval: None,
                    ..cfg(5, 3)
                },
            );
            net.run_until(net.now + ms(freeze_after));
            let frozen_at = net.now;
            net.b_frozen = true;
            net.run_until(frozen_at + timeout - ms(1));
            assert_eq!(closed_code(&net.ev_a), None, "dead before ping_timeout");
            net.run_until(frozen_at + interval + timeout);
            let (at, _) = (net.now, ());
            assert!(at <= frozen_at + interval + timeout);
            match net.ev_a.iter().find(|e| matches!(e, Event::Closed { .. })) {
                Some(Event::Closed {
                    code: CloseCode::PeerTimedOut,
                    by_peer: false,
                    error: Some(ConnectionError::PeerDead { silent_for, .. }),
                    ..
                }) => assert!(*silent_for <= interval + timeout),
                other => panic!("{other:?}"),
            }
            assert_eq!(net.a.state(), State::Closed);
            assert_eq!(closes(&decode_all(&net.wire_ab)), vec![3]);
            assert!(net.ev_a.contains(&Event::ShutdownWrite));
            assert!(net.a.is_drained() && net.a.is_closed());
        }
    }

    #[test]
    fn frozen_peer_detection_time_is_exact() {
        let mut net = Net::new(cfg(5, 3), cfg(5, 3));
        net.flush();
        let t = net.now;
        net.b_frozen = true;
        // Step timer by timer and note when a closes.
        let mut closed_at = None;
        while closed_at.is_none() {
            let Some(next) = net.a.poll_timeout() else {
                break;
            };
            net.now = next;
            net.a.handle_timeout(next);
            net.flush();
            if closed_code(&net.ev_a).is_some() {
                closed_at = Some(next);
            }
        }
        assert_eq!(closed_at, Some(t + secs(8)));
    }

    #[test]
    fn answering_peer_stays_alive_for_10000_seconds() {
        let mut net = Net::new(cfg(5, 3), cfg(7, 2));
        net.run_until(net.now + secs(10_000));
        assert_eq!(closed_code(&net.ev_a), None);
        assert_eq!(closed_code(&net.ev_b), None);
        assert_eq!((net.a.state(), net.b.state()), (State::Open, State::Open));
        let rtts = net
            .ev_a
            .iter()
            .filter(|e| matches!(e, Event::Rtt(_)))
            .count();
        assert!(rtts > 1000, "{rtts}");
        assert!(net.a.rtt().unwrap().samples > 1000);
        // b hears a's PING every 5 s, less than its own 7 s interval: it never needs to ping.
        assert!(net.b.rtt().is_none());
    }

    #[test]
    fn too_many_pings_closes_with_code_4() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.handle_input(&hello_with(|h| h.ping_interval = secs(10)), t0);
        let _ = transmit_all(&mut c, t0);
        let ping = encode(&Message::Ping(Bytes::from_static(b"12345678")));
        let mut out = Vec::new();
        for i in 1..=4 {
            c.handle_input(&ping, t0 + secs(i));
            out.extend(transmit_all(&mut c, t0 + secs(i)));
        }
        let msgs = decode_all(&out);
        // First three PINGs answered, the fourth (third strike) closes.
        assert_eq!(
            msgs.iter()
                .filter(|m| matches!(m, Message::Pong(_)))
                .count(),
            3
        );
        assert_eq!(closes(&msgs), vec![4]);
        let ev = events(&mut c);
        assert_eq!(closed_code(&ev), Some((CloseCode::TooManyPings, false)));
        assert_eq!(c.state(), State::Closing);

        // Pings at the announced rate are fine.
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.handle_input(&hello_with(|h| h.ping_interval = secs(10)), t0);
        for i in 1..=20 {
            c.handle_input(&ping, t0 + secs(10 * i));
            let _ = transmit_all(&mut c, t0 + secs(10 * i));
        }
        assert_eq!(c.state(), State::Open);
    }

    /// Feeds `input` to a fresh connection and returns (CLOSE codes on the wire, events).
    fn feed(input: &[u8]) -> (Vec<u16>, Vec<Event>, Connection) {
        let t0 = Instant::now();
        let mut c = Connection::new(
            ConnectionConfig {
                max_message_len: 1 << 20,
                ..cfg(5, 3)
            },
            t0,
        )
        .unwrap();
        c.handle_input(input, t0);
        let out = transmit_all(&mut c, t0);
        (closes(&decode_all(&out)), events(&mut c), c)
    }

    #[test]
    fn protocol_errors_close_with_the_right_code() {
        let hello = hello_with(|_| {});
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("data before hello", vec![0, 0, 0, 2, 2, b'x'], 2),
            ("bad magic", vec![0, 0, 0, 5, 1, b'H', b'T', b'T', b'P'], 2),
            ("zero length", vec![0, 0, 0, 0], 2),
            (
                "reserved type",
                [&hello[..], &[0, 0, 0, 1, 0x7f]].concat(),
                2,
            ),
            (
                "ack reserved",
                [&hello[..], &[0, 0, 0, 1, 0x06]].concat(),
                2,
            ),
            ("second hello", [&hello[..], &hello[..]].concat(), 2),
            ("oversized", [&hello[..], &[0, 0x10, 0, 1, 2]].concat(), 5),
            ("oversized first", vec![0xff, 0xff, 0xff, 0xff], 5),
            // Before the peer's HELLO, 4096 is the limit whatever max_message_len we accept,
            // and a wrong type is refused from the 5th byte, before the body arrives.
            ("first over 4096", vec![0, 0, 0x10, 0x01], 5),
            ("8 MiB first hello", vec![0, 0x80, 0, 0, 1], 5),
            (
                "first not hello, body missing",
                vec![0, 0, 0x0f, 0xff, 2],
                2,
            ),
            ("version 0", hello_with(|h| h.version = 0), 6),
        ];
        for (name, input, code) in cases {
            let (wire, ev, c) = feed(&input);
            assert_eq!(wire, vec![code], "{name}");
            assert_eq!(
                closed_code(&ev),
                Some((CloseCode::from_u16(code), false)),
                "{name}: {ev:?}"
            );
            assert!(ev.contains(&Event::ShutdownWrite), "{name}");
            assert_eq!(c.state(), State::Closing, "{name}");
            assert!(c.is_drained());
        }
        // The error carries the numbers.
        let (_, ev, _) = feed(&[&hello[..], &[0, 0x10, 0, 1, 2]].concat());
        let Some(Event::Closed {
            error: Some(e),
            reason,
            ..
        }) = ev.iter().find(|e| matches!(e, Event::Closed { .. }))
        else {
            panic!("{ev:?}")
        };
        assert!(
            e.to_string().contains("1048577") && reason.contains("1048576"),
            "{e} / {reason}"
        );
    }

    #[test]
    fn no_processing_after_a_protocol_error() {
        let hello = hello_with(|_| {});
        let data = encode(&Message::Data(Bytes::from_static(b"late")));
        let (_, ev, mut c) = feed(&[&hello[..], &[0, 0, 0, 1, 0x7f], &data[..]].concat());
        assert!(data_of(&ev).is_empty());
        c.handle_input(&data, Instant::now());
        assert!(events(&mut c).is_empty());
    }

    #[test]
    fn version_negotiation() {
        let (wire, ev, c) = feed(&hello_with(|h| {
            h.version = 2;
            h.flags = 0x80;
        }));
        assert!(wire.is_empty());
        assert!(matches!(ev[0], Event::Connected { version: 1, ref peer } if peer.version == 2));
        assert_eq!(c.state(), State::Open);
        let (_, ev, _) = feed(&hello_with(|h| h.version = 0));
        assert!(matches!(
            ev[0],
            Event::Closed {
                code: CloseCode::UnsupportedVersion,
                error: Some(ConnectionError::UnsupportedVersion {
                    peer_version: 0,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn extension_messages_are_ignored() {
        let hello = hello_with(|_| {});
        let ext = encode(&Message::Extension {
            ty: 0x80,
            body: Bytes::from_static(b"\x01\x02"),
        });
        let data = encode(&Message::Data(Bytes::from_static(b"ok")));
        let (wire, ev, c) = feed(&[&hello[..], &ext, &data].concat());
        assert!(wire.is_empty());
        assert_eq!(data_of(&ev), vec![Bytes::from_static(b"ok")]);
        assert_eq!(c.stats().messages_in, 3);
    }

    fn graceful_close(a_closes: bool) {
        let mut net = Net::new(cfg(5, 3), cfg(5, 3));
        net.max_chunk = 3;
        net.flush();
        let (closer, other) = if a_closes {
            (&mut net.a, &mut net.b)
        } else {
            (&mut net.b, &mut net.a)
        };
        let t = Instant::now();
        closer.send(Bytes::from_static(b"last words"), t).unwrap();
        closer.close(CloseCode::Application(0x1001), "bye", t);
        assert_eq!(closer.state(), State::Closing);
        assert_eq!(closer.send(Bytes::new(), t), Err(SendError::Closed));
        other.send(Bytes::from_static(b"dropped"), t).unwrap();
        let _ = other;
        net.flush();
        let (ev_closer, ev_other) = if a_closes {
            (&net.ev_a, &net.ev_b)
        } else {
            (&net.ev_b, &net.ev_a)
        };
        assert_eq!(
            closed_code(ev_closer),
            Some((CloseCode::Application(0x1001), false))
        );
        assert!(ev_closer.contains(&Event::ShutdownWrite));
        assert!(ev_other.contains(&Event::Closed {
            code: CloseCode::Application(0x1001),
            reason: "bye".into(),
            by_peer: true,
            error: None,
        }));
        assert!(ev_other.contains(&Event::ShutdownWrite));
        assert_eq!(data_of(ev_other), vec![Bytes::from_static(b"last words")]);
        assert_eq!(
            (net.a.state(), net.b.state()),
            (State::Closed, State::Closed)
        );
        assert!(net.a.is_drained() && net.b.is_drained());
        let (w_closer, w_other) = if a_closes {
            (&net.wire_ab, &net.wire_ba)
        } else {
            (&net.wire_ba, &net.wire_ab)
        };
        assert_eq!(closes(&decode_all(w_closer)), vec![0x1001]);
        // The other side answered with the same code and sent no DATA after the CLOSE.
        let other_msgs = decode_all(w_other);
        assert_eq!(closes(&other_msgs), vec![0x1001]);
        assert!(matches!(other_msgs.last(), Some(Message::Close { .. })));
        assert!(net.a.poll_timeout().is_none() && net.b.poll_timeout().is_none());
    }

    /// Found by the tokio driver's tests: a close asked for during the handshake used to drop
    /// the DATA queued before it.
    #[test]
    fn close_during_handshake_still_delivers_queued_data() {
        let t = Instant::now();
        let mut net = Net::new(cfg(5, 3), cfg(5, 3));
        net.a.send(Bytes::from_static(b"one"), t).unwrap();
        net.a.send(Bytes::from_static(b"two"), t).unwrap();
        net.a.close(CloseCode::Application(0x1002), "done", t);
        assert_eq!(net.a.state(), State::Handshaking);
        net.flush();
        assert_eq!(
            data_of(&net.ev_b),
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        assert!(net.ev_b.contains(&Event::Closed {
            code: CloseCode::Application(0x1002),
            reason: "done".into(),
            by_peer: true,
            error: None,
        }));
        assert_eq!(
            (net.a.state(), net.b.state()),
            (State::Closed, State::Closed)
        );
    }

    #[test]
    fn graceful_close_a_to_b() {
        graceful_close(true);
    }

    #[test]
    fn graceful_close_b_to_a() {
        graceful_close(false);
    }

    #[test]
    fn closing_lingers_then_closes() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.handle_input(&hello_with(|_| {}), t0);
        c.close(CloseCode::Normal, "", t0);
        let out = transmit_all(&mut c, t0);
        assert_eq!(closes(&decode_all(&out)), vec![0]);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(2)));
        // Data arriving while closing is discarded.
        c.handle_input(&encode(&Message::Data(Bytes::new())), t0);
        c.handle_timeout(t0 + secs(2));
        assert_eq!(c.state(), State::Closed);
        assert!(data_of(&events(&mut c)).is_empty());
    }

    #[test]
    fn end_of_stream() {
        let hello = hello_with(|_| {});
        let t0 = Instant::now();
        for (tail, mid) in [(&[][..], false), (&[0u8, 0, 0, 5, 2][..], true)] {
            let mut c = Connection::new(cfg(5, 3), t0).unwrap();
            c.handle_input(&[&hello[..], tail].concat(), t0);
            c.handle_eof(t0);
            let ev = events(&mut c);
            assert!(ev.iter().any(|e| matches!(
                e,
                Event::Closed { by_peer: true, error: Some(ConnectionError::EndOfStream { mid_message }), .. }
                    if *mid_message == mid
            )), "{ev:?}");
            assert!(c.is_closed());
        }
    }

    #[test]
    fn handshake_timeout() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        let _ = transmit_all(&mut c, t0);
        assert_eq!(c.poll_timeout(), Some(t0 + secs(10)));
        c.handle_timeout(t0 + secs(10) - ms(1));
        assert!(events(&mut c).is_empty());
        // A partial HELLO does not extend the deadline.
        c.handle_input(&hello_with(|_| {})[..10], t0 + secs(9));
        c.handle_timeout(t0 + secs(10));
        let ev = events(&mut c);
        assert!(matches!(
            ev[0],
            Event::Closed {
                code: CloseCode::PeerTimedOut,
                by_peer: false,
                error: Some(ConnectionError::HandshakeTimeout { .. }),
                ..
            }
        ));
        assert_eq!(
            closes(&decode_all(&transmit_all(&mut c, t0 + secs(10)))),
            vec![3]
        );
    }

    /// Opens `c` with a default peer HELLO at `t`.
    fn open(c: &mut Connection, t: Instant) {
        c.handle_input(&hello_with(|_| {}), t);
        let _ = transmit_all(c, t);
        assert!(matches!(events(c)[..], [Event::Connected { .. }]));
    }

    #[test]
    fn a_trickled_message_is_cut_by_the_frame_timeout_whatever_the_heartbeat_says() {
        let t0 = Instant::now();
        let mut c = Connection::new(
            ConnectionConfig {
                frame_timeout: Some(secs(30)),
                ..cfg(5, 3)
            },
            t0,
        )
        .unwrap();
        open(&mut c, t0);
        // One whole message, then the start of a 100 000-byte one, trickled 1 byte / 2 s:
        // enough for the heartbeat (any byte proves the peer alive), never enough to finish.
        let whole = encode(&Message::Data(Bytes::from_static(b"ok")));
        let big = encode(&Message::Data(Bytes::from(vec![7u8; 100_000])));
        let t1 = t0 + secs(1);
        c.handle_input(&[&whole[..], &big[..10]].concat(), t1);
        assert_eq!(data_of(&events(&mut c)), vec![Bytes::from_static(b"ok")]);
        assert_eq!(c.poll_timeout().map(|at| at <= t1 + secs(30)), Some(true));
        let mut sent = 10;
        let mut t = t1;
        while t + secs(2) < t1 + secs(30) {
            t += secs(2);
            c.handle_input(&big[sent..sent + 1], t);
            sent += 1;
            let _ = transmit_all(&mut c, t);
            c.handle_timeout(t);
            assert_eq!(
                c.state(),
                State::Open,
                "still within the bound at {:?}",
                t - t0
            );
        }
        // The deadline counts from the message's first byte, not from the last one.
        assert_eq!(c.poll_timeout(), Some(t1 + secs(30)));
        c.handle_timeout(t1 + secs(30) - ms(1));
        assert_eq!(c.state(), State::Open);
        c.handle_timeout(t1 + secs(30));
        let ev = events(&mut c);
        let expected = ConnectionError::FrameTimeout {
            timeout: secs(30),
            received: sent,
            expected: Some(big.len()),
        };
        assert_eq!(
            ev.last(),
            Some(&Event::Closed {
                code: CloseCode::PeerTimedOut,
                reason: expected.to_string(),
                by_peer: false,
                error: Some(expected.clone()),
            })
        );
        assert_eq!(
            expected.to_string(),
            format!("frame incomplete after 30s: {sent} of 100005 bytes arrived")
        );
        assert_eq!(
            closes(&decode_all(&transmit_all(&mut c, t1 + secs(30)))),
            vec![3]
        );
        assert_eq!(c.recv_buf().capacity(), 0, "the partial message is freed");
    }

    #[test]
    fn the_frame_timeout_restarts_with_each_message_and_can_be_off() {
        let t0 = Instant::now();
        let config = ConnectionConfig {
            frame_timeout: Some(secs(10)),
            ..cfg(5, 3)
        };
        let mut c = Connection::new(config.clone(), t0).unwrap();
        open(&mut c, t0);
        let m = encode(&Message::Data(Bytes::from(vec![1u8; 1000])));
        // Each message takes 8 s (under the bound), and the next one starts in the same input
        // as the end of the previous: its own clock starts then.
        c.handle_input(&m[..500], t0);
        for i in 1..=5u64 {
            let t = t0 + secs(8 * i);
            c.handle_input(&[&m[500..], &m[..500]].concat(), t);
            assert_eq!(c.poll_timeout().map(|at| at >= t + secs(5)), Some(true));
            c.handle_timeout(t + secs(5));
            assert_eq!(c.state(), State::Open);
        }
        assert_eq!(data_of(&events(&mut c)).len(), 5);
        // Nothing pending: no frame deadline (only heartbeats).
        c.handle_input(&m[500..], t0 + secs(41));
        assert_eq!(c.frame_deadline(), None);
        assert_eq!(data_of(&events(&mut c)).len(), 1);

        // Off: a partial message may take any time (the heartbeat still runs).
        let mut c = Connection::new(
            ConnectionConfig {
                frame_timeout: None,
                ..cfg(5, 3)
            },
            t0,
        )
        .unwrap();
        open(&mut c, t0);
        c.handle_input(&m[..3], t0);
        for i in 1..=100u64 {
            c.handle_input(&m[2 + i as usize..3 + i as usize], t0 + secs(2 * i));
            let _ = transmit_all(&mut c, t0 + secs(2 * i));
            c.handle_timeout(t0 + secs(2 * i));
        }
        assert_eq!(c.state(), State::Open);
        assert_eq!(
            Connection::new(
                ConnectionConfig {
                    frame_timeout: Some(Duration::ZERO),
                    ..config
                },
                t0
            )
            .unwrap_err(),
            ConfigError::Zero {
                name: "frame_timeout"
            }
        );
    }

    #[test]
    fn a_partial_hello_is_bounded_by_the_frame_timeout_when_it_is_shorter() {
        let t0 = Instant::now();
        let mut c = Connection::new(
            ConnectionConfig {
                frame_timeout: Some(secs(2)),
                ..cfg(5, 3)
            },
            t0,
        )
        .unwrap();
        let _ = transmit_all(&mut c, t0);
        c.handle_input(&hello_with(|_| {})[..5], t0 + secs(1));
        assert_eq!(c.poll_timeout(), Some(t0 + secs(3)));
        c.handle_timeout(t0 + secs(3));
        assert!(events(&mut c).iter().any(|e| matches!(
            e,
            Event::Closed {
                code: CloseCode::PeerTimedOut,
                error: Some(ConnectionError::FrameTimeout { received: 5, .. }),
                ..
            }
        )));
    }

    #[test]
    fn abort_drops_queued_data_and_input_and_sends_close_at_once() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        open(&mut c, t0);
        c.send(Bytes::from(vec![1u8; 50_000]), t0).unwrap();
        let big = encode(&Message::Data(Bytes::from(vec![7u8; 100_000])));
        c.handle_input(&big[..60_000], t0);
        c.abort(CloseCode::ServerFull, "memory budget", t0);
        assert_eq!(c.queued_bytes(), 0);
        assert_eq!(c.recv_buf().capacity(), 0);
        let out = decode_all(&transmit_all(&mut c, t0));
        assert!(
            !out.iter().any(|m| matches!(m, Message::Data(_))),
            "{out:?}"
        );
        assert_eq!(closes(&out), vec![7]);
        assert!(events(&mut c).iter().any(|e| matches!(
            e,
            Event::Closed {
                code: CloseCode::ServerFull,
                error: Some(ConnectionError::Aborted { .. }),
                ..
            }
        )));
    }

    #[test]
    fn send_limits() {
        let t0 = Instant::now();
        let mut c = Connection::new(
            ConnectionConfig {
                max_queued_bytes: 100,
                ..cfg(5, 3)
            },
            t0,
        )
        .unwrap();
        c.send(Bytes::from(vec![0; 50]), t0).unwrap();
        assert_eq!(
            c.send(Bytes::from(vec![0; 50]), t0),
            Err(SendError::QueueFull {
                queued: 55,
                len: 55,
                limit: 100
            })
        );
        c.handle_input(&hello_with(|h| h.max_message_len = 4096), t0);
        assert_eq!(
            c.send(Bytes::from(vec![0; 4096]), t0),
            Err(SendError::TooBig {
                len: 4096,
                max: 4096
            })
        );
        let _ = transmit_all(&mut c, t0);
        assert_eq!(c.queued_bytes(), 0);
        c.send(Bytes::from(vec![0; 4095]), t0).unwrap_err(); // over the 100-byte queue
        c.close(CloseCode::Normal, "", t0);
        assert_eq!(c.send(Bytes::new(), t0), Err(SendError::Closed));
    }

    #[test]
    fn oversized_message_queued_before_handshake_is_dropped() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.send(Bytes::from(vec![1; 5000]), t0).unwrap();
        c.send(Bytes::from_static(b"fits"), t0).unwrap();
        c.handle_input(&hello_with(|h| h.max_message_len = 4096), t0);
        let ev = events(&mut c);
        assert!(ev.contains(&Event::MessageDropped {
            len: 5000,
            peer_max: 4096
        }));
        let msgs = decode_all(&transmit_all(&mut c, t0));
        assert_eq!(msgs[1], Message::Data(Bytes::from_static(b"fits")));
    }

    #[test]
    fn pong_goes_ahead_of_queued_data() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.handle_input(&hello_with(|_| {}), t0);
        let _ = transmit_all(&mut c, t0);
        for _ in 0..3 {
            c.send(Bytes::from(vec![9; 2000]), t0).unwrap();
        }
        // A DATA message already started is finished first.
        let header = c.poll_transmit(t0).unwrap();
        assert_eq!(header.len(), 5);
        c.handle_input(&encode(&Message::Ping(Bytes::from_static(b"a"))), t0);
        c.handle_input(&encode(&Message::Ping(Bytes::from_static(b"b"))), t0);
        let out = [&header[..], &transmit_all(&mut c, t0)].concat();
        let msgs = decode_all(&out);
        assert!(matches!(msgs[0], Message::Data(_)));
        // Only the newest PONG, ahead of the two remaining DATA.
        assert_eq!(msgs[1], Message::Pong(Bytes::from_static(b"b")));
        assert!(matches!(msgs[2], Message::Data(_)));
        assert_eq!(msgs.len(), 4);
    }

    #[test]
    fn peer_close_during_handshake_and_garbage_never_panics() {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.handle_input(
            &encode(&Message::Close {
                code: CloseCode::Normal,
                reason: String::new(),
            }),
            t0,
        );
        // A CLOSE as the first message is a protocol error (HELLO expected).
        assert_eq!(
            closed_code(&events(&mut c)),
            Some((CloseCode::ProtocolError, false))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_messages_random_chunks_all_delivered(
            msgs in prop::collection::vec(
                (any::<bool>(), prop::collection::vec(any::<u8>(), 0..3000)), 0..40),
            max_chunk in 0usize..64,
            step_ms in 0u64..4000,
        ) {
            let mut net = Net::new(cfg(1, 1), cfg(2, 1));
            net.max_chunk = max_chunk;
            let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
            for (i, (a_sends, body)) in msgs.into_iter().enumerate() {
                let body = Bytes::from(body);
                if a_sends {
                    net.a.send(body.clone(), net.now).unwrap();
                    to_b.push(body);
                } else {
                    net.b.send(body.clone(), net.now).unwrap();
                    to_a.push(body);
                }
                if i % 3 == 0 {
                    net.run_until(net.now + ms(step_ms));
                }
            }
            net.run_until(net.now + secs(5));
            prop_assert_eq!(data_of(&net.ev_b), to_b);
            prop_assert_eq!(data_of(&net.ev_a), to_a);
            prop_assert_eq!(closed_code(&net.ev_a), None);
            prop_assert_eq!(net.a.state(), State::Open);
        }

        #[test]
        fn arbitrary_input_never_panics(
            prefix_hello in any::<bool>(),
            garbage in prop::collection::vec(any::<u8>(), 0..512),
            chunk in 1usize..32,
        ) {
            let t0 = Instant::now();
            let mut c = Connection::new(cfg(1, 1), t0).unwrap();
            let mut input = if prefix_hello { hello_with(|_| {}) } else { Vec::new() };
            input.extend_from_slice(&garbage);
            for (i, part) in input.chunks(chunk).enumerate() {
                let now = t0 + ms(i as u64 * 300);
                c.handle_input(part, now);
                c.handle_timeout(now);
                let _ = transmit_all(&mut c, now);
                let _ = c.send(Bytes::from_static(b"x"), now);
            }
            c.handle_eof(t0 + secs(100));
            let _ = transmit_all(&mut c, t0 + secs(100));
            let ev = events(&mut c);
            let n_closed = ev.iter().filter(|e| matches!(e, Event::Closed { .. })).count();
            prop_assert!(n_closed <= 1);
            prop_assert!(c.is_closed());
        }
    }

    // ---- sessions (section 12) ----

    /// A client and a server machine joined by a lossy pipe that can be cut at any moment:
    /// bytes in flight are lost and both sides see the stream end. Sessions move to the next
    /// connection (client) or into the store (server).
    struct SessionSim {
        now: Instant,
        rng: u64,
        config: ConnectionConfig,
        client: Connection,
        server: Connection,
        store: crate::session::SessionStore,
        /// Messages each side's application has sent so far (payload = its number).
        sent_c: u32,
        sent_s: u32,
        /// What each application received, in order.
        got_c: Vec<u32>,
        got_s: Vec<u32>,
        /// Messages handed back as lost (resumption impossible or session ended).
        lost_c: Vec<u32>,
        lost_s: Vec<u32>,
        cuts: u32,
        resumed: u32,
        /// Messages resent after resumptions (both sides).
        resent: u64,
    }

    impl SessionSim {
        fn new(seed: u64) -> Self {
            let config = ConnectionConfig {
                sessions: Some(SessionConfig {
                    ack_every: 8,
                    ack_delay: ms(5),
                }),
                max_queued_bytes: 4096,
                ..cfg(5, 5)
            };
            let now = Instant::now();
            let session = Session::new([0x5e; 16]);
            SessionSim {
                now,
                rng: seed | 1,
                client: Connection::with_session(config.clone(), session, now).unwrap(),
                server: Connection::new(config.clone(), now).unwrap(),
                config,
                store: crate::session::SessionStore::new(secs(60), 16),
                sent_c: 0,
                sent_s: 0,
                got_c: Vec::new(),
                got_s: Vec::new(),
                lost_c: Vec::new(),
                lost_s: Vec::new(),
                cuts: 0,
                resumed: 0,
                resent: 0,
            }
        }

        fn rand(&mut self, n: u64) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % n
        }

        fn number(payload: &Bytes) -> u32 {
            u32::from_be_bytes(payload[..4].try_into().unwrap())
        }

        /// Drains both machines' events.
        fn events(&mut self) {
            while let Some(e) = self.client.poll_event() {
                match e {
                    Event::Data(p) => self.got_c.push(Self::number(&p)),
                    Event::SessionLost { unacked, .. } => {
                        self.lost_c.extend(unacked.iter().map(Self::number))
                    }
                    Event::SessionStarted {
                        status, resending, ..
                    } => {
                        self.resumed += u32::from(status == ResumeStatus::Resumed);
                        self.resent += resending;
                    }
                    Event::Closed {
                        error: Some(ConnectionError::Wire(e)),
                        ..
                    } => {
                        panic!("client protocol error: {e}")
                    }
                    _ => {}
                }
            }
            while let Some(e) = self.server.poll_event() {
                match e {
                    Event::Data(p) => self.got_s.push(Self::number(&p)),
                    Event::SessionRequest { id, proof, .. } => {
                        use crate::session::Resolution;
                        match self.store.resolve(&id, proof.as_ref(), self.now) {
                            Resolution::Resume(found) => {
                                self.server.attach_session(Some(found), self.now).unwrap()
                            }
                            Resolution::New => self.server.attach_session(None, self.now).unwrap(),
                            Resolution::Replace(mut old) => {
                                self.lost_s
                                    .extend(old.take_unacked().iter().map(Self::number));
                                self.server.attach_session(None, self.now).unwrap()
                            }
                            Resolution::Refuse(why) => panic!("session refused: {why}"),
                        }
                    }
                    Event::SessionStarted { resending, .. } => self.resent += resending,
                    Event::SessionLost { unacked, .. } => {
                        self.lost_s.extend(unacked.iter().map(Self::number))
                    }
                    Event::Closed {
                        error: Some(ConnectionError::Wire(e)),
                        ..
                    } => {
                        panic!("server protocol error: {e}")
                    }
                    _ => {}
                }
            }
        }

        /// Moves up to `budget` bytes each way, in random pieces.
        fn pump(&mut self, budget: usize) {
            for to_server in [true, false] {
                let mut moved = 0;
                while moved < budget {
                    let (src, dst) = if to_server {
                        (&mut self.client, &mut self.server)
                    } else {
                        (&mut self.server, &mut self.client)
                    };
                    let Some(chunk) = src.poll_transmit(self.now) else {
                        break;
                    };
                    moved += chunk.len();
                    dst.recv_buf().extend_from_slice(&chunk);
                    dst.process_input(self.now);
                }
            }
            self.events();
        }

        /// Each application sends what its connection accepts, up to `until`.
        fn send(&mut self, until: u32) {
            while self.sent_c < until {
                let m = Bytes::from((self.sent_c + 1).to_be_bytes().to_vec());
                if self.client.send(m, self.now).is_err() {
                    break;
                }
                self.sent_c += 1;
            }
            while self.sent_s < until && self.server.state() == State::Open {
                let m = Bytes::from((self.sent_s + 1).to_be_bytes().to_vec());
                if self.server.send(m, self.now).is_err() {
                    break;
                }
                self.sent_s += 1;
            }
        }

        fn tick(&mut self, d: Duration) {
            self.now += d;
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
            self.events();
        }

        /// The link dies: bytes in flight are lost (some already transmitted ones too), both
        /// sides see the stream end, sessions move on, a new connection starts.
        fn cut(&mut self) {
            self.cuts += 1;
            // Some output is transmitted into the void.
            for _ in 0..self.rand(4) {
                let _ = self.client.poll_transmit(self.now);
                let _ = self.server.poll_transmit(self.now);
            }
            self.client.handle_eof(self.now);
            self.server.handle_eof(self.now);
            self.events();
            let client_session = self
                .client
                .take_session()
                .expect("client keeps its session");
            if let Some(s) = self.server.take_session() {
                self.store.detach(s, self.now);
            }
            self.client =
                Connection::with_session(self.config.clone(), client_session, self.now).unwrap();
            self.server = Connection::new(self.config.clone(), self.now).unwrap();
        }

        /// Sends `total` messages each way with `cuts` link failures at random points, then
        /// runs to quiescence; checks exactly-once, in-order delivery both ways.
        fn run(&mut self, total: u32, cuts: u32) {
            let mut steps = 0;
            while (self.got_s.len() as u32) < total || (self.got_c.len() as u32) < total {
                steps += 1;
                assert!(
                    steps < 200_000,
                    "no progress: {} {}",
                    self.got_s.len(),
                    self.got_c.len()
                );
                // The applications send in small bursts, so the link is cut mid-stream often.
                let burst = 1 + self.rand(40) as u32;
                self.send((self.sent_c.min(self.sent_s) + burst).min(total));
                let budget = 1 + self.rand(400) as usize;
                self.pump(budget);
                self.tick(ms(1));
                if self.cuts < cuts && self.rand(4) == 0 {
                    self.cut();
                }
            }
            let expect: Vec<u32> = (1..=total).collect();
            assert_eq!(self.got_s, expect, "server received");
            assert_eq!(self.got_c, expect, "client received");
            assert!(self.lost_c.is_empty() && self.lost_s.is_empty());
        }
    }

    #[test]
    fn session_delivers_exactly_once_in_order_across_many_cuts() {
        let mut sim = SessionSim::new(0xC0FFEE);
        sim.run(3_000, 40);
        assert_eq!(sim.cuts, 40);
        // A resume takes two round trips (HELLOs, then AUTH and RESUME): cuts land in some.
        assert!(sim.resumed >= 20, "only {} resumptions", sim.resumed);
        assert!(sim.resent > 100, "only {} messages resent", sim.resent);
        // Resends happened and duplicates were dropped rather than delivered.
        let c = sim.client.session().unwrap();
        assert_eq!(c.delivered(), 3_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn session_exactly_once_for_any_cut_pattern(seed in any::<u64>(), cuts in 0u32..25) {
            let mut sim = SessionSim::new(seed);
            sim.run(600, cuts);
        }
    }

    #[test]
    fn session_keeps_messages_sent_while_the_connection_dies() {
        let mut sim = SessionSim::new(17);
        sim.run(5, 0);
        sim.client.handle_eof(sim.now);
        assert!(sim.client.is_closed());
        // The runtime may still hand over messages it had accepted: they join the session.
        sim.client
            .send(Bytes::from(6u32.to_be_bytes().to_vec()), sim.now)
            .unwrap();
        sim.sent_c = 6;
        sim.server.handle_eof(sim.now);
        let session = sim.client.take_session().unwrap();
        assert_eq!(session.next_seq(), 7, "message 6 is in the session");
        sim.client = Connection::with_session(sim.config.clone(), session, sim.now).unwrap();
        if let Some(s) = sim.server.take_session() {
            sim.store.detach(s, sim.now);
        }
        sim.server = Connection::new(sim.config.clone(), sim.now).unwrap();
        sim.run(6, 0);
    }

    #[test]
    fn a_session_message_too_long_for_the_peer_is_dropped_at_the_first_handshake() {
        let mut sim = SessionSim::new(5);
        // The server accepts the minimum; the client learns it only from the server's HELLO.
        let small = ConnectionConfig {
            max_message_len: crate::wire::MIN_MAX_MESSAGE_LEN,
            max_queued_bytes: 64 * 1024,
            ..sim.config.clone()
        };
        sim.server = Connection::new(small, sim.now).unwrap();
        let big = Bytes::from(vec![0xEE; crate::wire::MIN_MAX_MESSAGE_LEN as usize]);
        let mut client = Connection::with_session(
            ConnectionConfig {
                max_queued_bytes: 64 * 1024,
                ..sim.config.clone()
            },
            Session::new([0x5e; 16]),
            sim.now,
        )
        .unwrap();
        for payload in [
            Bytes::from_static(&[0, 0, 0, 1]),
            big,
            Bytes::from_static(&[0, 0, 0, 2]),
        ] {
            client.send(payload, sim.now).unwrap();
        }
        sim.client = client;
        let mut dropped = Vec::new();
        for _ in 0..4 {
            for to_server in [true, false] {
                let (src, dst) = if to_server {
                    (&mut sim.client, &mut sim.server)
                } else {
                    (&mut sim.server, &mut sim.client)
                };
                while let Some(chunk) = src.poll_transmit(sim.now) {
                    dst.recv_buf().extend_from_slice(&chunk);
                    dst.process_input(sim.now);
                }
            }
            while let Some(event) = sim.client.poll_event() {
                if let Event::MessageDropped { len, peer_max } = event {
                    dropped.push((len, peer_max));
                }
            }
            sim.events();
        }
        // The others are renumbered and delivered; the session goes on (no protocol error).
        assert_eq!(dropped, vec![(4096, 4096)]);
        assert_eq!(sim.got_s, vec![1, 2]);
        assert_eq!(sim.client.state(), State::Open);
        assert_eq!(sim.client.session().unwrap().next_seq(), 3);
    }

    #[test]
    fn session_acks_follow_the_policy_and_piggyback_on_data() {
        let mut sim = SessionSim::new(21);
        sim.pump(1 << 20);
        sim.pump(1 << 20);
        let m = |i: u32| Bytes::from(i.to_be_bytes().to_vec());
        for i in 1..=3 {
            sim.client.send(m(i), sim.now).unwrap();
        }
        sim.pump(1 << 20);
        assert_eq!(sim.got_s, vec![1, 2, 3]);
        // Nothing to send back, fewer than ack_every (8), delay (5 ms) not over: no ACK yet.
        let server_ack = |sim: &SessionSim| sim.server.session.as_ref().unwrap().ack_sent;
        assert_eq!(server_ack(&sim), 0);
        assert_eq!(sim.client.session().unwrap().acked(), 0);
        sim.tick(ms(6));
        sim.pump(1 << 20);
        assert_eq!(server_ack(&sim), 3);
        assert_eq!(sim.client.session().unwrap().acked(), 3);
        // Data going the other way carries the ACK at once.
        sim.client.send(m(4), sim.now).unwrap();
        sim.pump(1 << 20);
        sim.server.send(m(1), sim.now).unwrap();
        sim.pump(1 << 20);
        assert_eq!(server_ack(&sim), 4);
        assert_eq!(sim.client.session().unwrap().acked(), 4);
    }

    #[test]
    fn session_retransmit_buffer_is_bounded_by_the_queue_limit() {
        let mut sim = SessionSim::new(7);
        // Nothing moves: the client can only buffer up to max_queued_bytes (4096).
        sim.send(10_000);
        let buffered = sim.client.queued_bytes();
        assert!(buffered <= 4096, "{buffered}");
        assert_eq!(sim.sent_c as usize, 4096 / (4 + SDATA_OVERHEAD));
        assert!(matches!(
            sim.client.send(Bytes::from_static(b"more"), sim.now),
            Err(SendError::QueueFull { limit: 4096, .. })
        ));
        // Acknowledgements make room.
        sim.run(sim.sent_c, 0);
        assert_eq!(sim.client.queued_bytes(), 0);
    }

    #[test]
    fn session_lost_when_the_server_no_longer_has_it() {
        let mut sim = SessionSim::new(11);
        sim.run(50, 0);
        // Unacknowledged messages in flight, then the link dies and the server restarts.
        for i in 51..=60u32 {
            sim.client
                .send(Bytes::from(i.to_be_bytes().to_vec()), sim.now)
                .unwrap();
        }
        sim.sent_c = 60;
        sim.cut();
        sim.store = crate::session::SessionStore::new(secs(60), 16); // restarted: empty
                                                                     // HELLOs; AUTH; RESUME.
        sim.pump(1 << 20);
        sim.pump(1 << 20);
        sim.pump(1 << 20);
        // The application gets the 10 messages back, the session goes on as a new one.
        assert_eq!(sim.lost_c, (51..=60).collect::<Vec<_>>());
        let session = sim.client.session().unwrap();
        assert_eq!((session.next_seq(), session.delivered()), (1, 0));
        sim.client
            .send(Bytes::from(1000u32.to_be_bytes().to_vec()), sim.now)
            .unwrap();
        sim.pump(1 << 20);
        assert_eq!(sim.got_s.last(), Some(&1000));
    }

    #[test]
    fn session_ends_with_a_normal_close() {
        let mut sim = SessionSim::new(3);
        sim.run(20, 0);
        sim.client.close(CloseCode::Normal, "done", sim.now);
        for _ in 0..4 {
            sim.pump(1 << 20);
        }
        assert!(sim.client.is_closed() && sim.server.is_closed());
        assert!(sim.client.take_session().is_none());
        assert!(sim.server.take_session().is_none());
        assert!(sim.lost_c.is_empty() && sim.lost_s.is_empty());
    }

    #[test]
    fn session_unavailable_when_the_peer_does_not_offer() {
        let mut net = Net::new(cfg(5, 5), cfg(5, 5));
        net.a = Connection::with_session(cfg(5, 5), Session::new([1; 16]), net.now).unwrap();
        net.run_until(net.now + ms(10));
        assert!(net.ev_a.iter().any(|e| matches!(
            e,
            Event::Closed {
                error: Some(ConnectionError::SessionUnavailable),
                code: CloseCode::UnsupportedVersion,
                ..
            }
        )));
    }

    /// A session with `pushed` messages, `transmitted` of them put on the wire.
    fn session_with(pushed: u8, transmitted: u64) -> Session {
        let mut s = Session::new([0x42; 16]);
        for i in 0..pushed {
            s.push(Bytes::from(vec![i]), usize::MAX).unwrap();
        }
        s.mark_transmitted(transmitted);
        s
    }

    #[test]
    fn forged_resume_delivered_is_refused_and_nothing_is_skipped() {
        let offer = ConnectionConfig {
            sessions: Some(SessionConfig::default()),
            ..cfg(5, 5)
        };
        let now = Instant::now();
        let mut server = Connection::new(offer.clone(), now).unwrap();
        let offer_hello = transmit_all(&mut server, now);
        for (status, delivered) in [
            // A session never confirmed: nothing was transmitted, nothing can be delivered.
            (ResumeStatus::Resumed, 5),
            (ResumeStatus::Resumed, 11),
        ] {
            // Ten messages queued in a brand-new session: SDATA waits for the RESUME.
            let mut client =
                Connection::with_session(offer.clone(), Session::new([0x42; 16]), now).unwrap();
            for i in 0..10u8 {
                client.send(Bytes::from(vec![i]), now).unwrap();
            }
            client.handle_input(&offer_hello, now);
            let resume = Message::Resume {
                status,
                delivered,
                secret: None,
            };
            client.handle_input(&encode(&resume), now);
            let ev = events(&mut client);
            assert_eq!(
                closed_code(&ev),
                Some((CloseCode::ProtocolError, false)),
                "{delivered}: {ev:?}"
            );
            let session = client.take_session().expect("kept for the next connection");
            assert_eq!(
                (session.acked(), session.unacked_len()),
                (0, 10),
                "{delivered}"
            );
        }
    }

    #[test]
    fn forged_request_delivered_is_refused_and_nothing_is_skipped() {
        let offer = ConnectionConfig {
            sessions: Some(SessionConfig::default()),
            ..cfg(5, 5)
        };
        let now = Instant::now();
        let secret = SessionSecret::from_bytes([0x5a; 16]);
        for (transmitted, ok) in [(3, false), (7, true), (10, true)] {
            // The client claims to have delivered 7 of our messages, and holds the secret.
            let mut peer_state = Session::new([0x42; 16]);
            peer_state.set_secret(secret.clone());
            for seq in 1..=7 {
                peer_state.receive(seq);
            }
            let mut client = Connection::with_session(offer.clone(), peer_state, now).unwrap();
            let mut server = Connection::new(offer.clone(), now).unwrap();
            let request = transmit_all(&mut client, now);
            client.handle_input(&transmit_all(&mut server, now), now);
            server.handle_input(&request, now);
            server.handle_input(&transmit_all(&mut client, now), now); // AUTH
            let ev = events(&mut server);
            assert!(ev.iter().any(|e| matches!(
                e,
                Event::SessionRequest {
                    peer_delivered: 7,
                    proof: Some(_),
                    ..
                }
            )));
            // The detached session holds 10 messages, `transmitted` of them sent before.
            let mut kept = session_with(10, transmitted);
            kept.set_secret(secret.clone());
            server.attach_session(Some(kept), now).unwrap();
            let ev = events(&mut server);
            if ok {
                assert!(
                    ev.iter().any(|e| matches!(
                        e,
                        Event::SessionStarted {
                            status: ResumeStatus::Resumed,
                            resending: 3,
                            ..
                        }
                    )),
                    "{ev:?}"
                );
                assert_eq!(server.session().unwrap().acked(), 7);
            } else {
                // Messages 4..=7 never went out: accepting "delivered 7" would lose them.
                assert_eq!(closed_code(&ev), Some((CloseCode::ProtocolError, false)));
                let session = server.take_session().expect("kept");
                assert_eq!((session.acked(), session.unacked_len()), (0, 10));
            }
        }
    }

    #[test]
    fn an_ack_below_what_was_acknowledged_is_refused() {
        let mut sim = SessionSim::new(3);
        sim.run(200, 0);
        let acked = sim.client.session().unwrap().acked();
        assert!(acked > 0);
        sim.client
            .handle_input(&encode(&Message::Ack(acked - 1)), sim.now);
        let ev = events(&mut sim.client);
        assert_eq!(closed_code(&ev), Some((CloseCode::ProtocolError, false)));
        assert_eq!(sim.client.session().unwrap().acked(), acked);
    }

    #[test]
    fn session_messages_out_of_place_are_protocol_errors() {
        let offer = ConnectionConfig {
            sessions: Some(SessionConfig::default()),
            ..cfg(5, 5)
        };
        for bad in [
            Message::Ack(1),
            Message::Resume {
                status: ResumeStatus::New,
                delivered: 0,
                secret: Some(SessionSecret::from_bytes([1; 16])),
            },
            Message::Auth([0; 32]),
            Message::SessionData {
                seq: 1,
                payload: Bytes::new(),
            },
        ] {
            let mut c = Connection::new(offer.clone(), Instant::now()).unwrap();
            let now = Instant::now();
            c.handle_input(&hello_with(|_| {}), now);
            c.handle_input(&encode(&bad), now);
            let ev = events(&mut c);
            assert_eq!(
                closed_code(&ev),
                Some((CloseCode::ProtocolError, false)),
                "{bad:?}"
            );
        }
        // DATA inside a session is refused too.
        let mut sim = SessionSim::new(5);
        sim.run(1, 0);
        sim.server
            .handle_input(&encode(&Message::Data(Bytes::from_static(b"x"))), sim.now);
        let ev = events(&mut sim.server);
        assert_eq!(closed_code(&ev), Some((CloseCode::ProtocolError, false)));
    }
}
