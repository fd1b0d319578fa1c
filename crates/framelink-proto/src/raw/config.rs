//! [`RawConfig`], the parameters of a raw connection, its validation ([`RawConfigError`]) and the
//! control frames (ping, answer reply) it encodes once per connection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

#[cfg(doc)]
use super::RawConnection;
use super::{Answer, FrameMatcher};
use crate::codec::{EncodeError, FrameEncoder, Framing, MAX_FRAME_OVERHEAD};
use crate::liveness::{LivenessConfig, LivenessConfigError};

/// What each queued message counts against [`RawConfig::max_queued_bytes`] on top of its
/// payload: [`MAX_FRAME_OVERHEAD`], an upper bound of any framing's header plus trailer.
pub const FRAME_OVERHEAD: usize = MAX_FRAME_OVERHEAD;

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
    /// How to recognise the peer's pong (see the [module docs](super) for the rules).
    pub pong: FrameMatcher,
    /// Reply to the peer's own heartbeats; the reply must be encodable by the framing.
    pub answer: Option<Answer>,
    /// Deliver heartbeat frames (those matching a specific [`pong`](Self::pong) matcher or the
    /// [`answer`](Self::answer) rule) as [`Event::Data`](crate::connection::Event::Data) too,
    /// instead of swallowing them.
    pub deliver_heartbeats: bool,
    /// Swallow frames matching a specific [`pong`](Self::pong) matcher even when no ping of
    /// ours is outstanding (for peers that send pong-like keep-alives on their own). Off by
    /// default: a frame equal to the pong that arrives while no ping waits for an answer is the
    /// peer's data (an echo server echoing a message that happens to equal the ping's pong), and
    /// is delivered.
    pub pong_always: bool,
    /// [`Event::Idle`](crate::connection::Event::Idle) after this long without receiving anything.
    pub reader_idle: Option<Duration>,
    /// [`Event::Idle`](crate::connection::Event::Idle) after this long without sending anything.
    pub writer_idle: Option<Duration>,
    /// [`Event::Idle`](crate::connection::Event::Idle) after this long without receiving nor
    /// sending anything.
    pub all_idle: Option<Duration>,
    /// Close (code [`CloseCode::Idle`](crate::wire::CloseCode::Idle)) after this long without an
    /// application message in either direction: frames recognised as heartbeats (pongs, answered
    /// pings) and our own pings do not count, so a connection kept alive only by heartbeats is
    /// still evicted. `None` (default): never.
    pub idle_timeout: Option<Duration>,
    /// Limit on queued outgoing messages (payload plus [`FRAME_OVERHEAD`] per message).
    pub max_queued_bytes: usize,
    /// After a local close has shut the write half down, wait this long for the peer's end of
    /// stream (reading and discarding) before the connection is
    /// [`State::Closed`](crate::connection::State::Closed).
    pub linger: Duration,
    /// A frame must arrive whole within this long of its first byte, or the connection is closed
    /// (code [`CloseCode::PeerTimedOut`](crate::wire::CloseCode::PeerTimedOut),
    /// [`ConnectionError::FrameTimeout`](crate::connection::ConnectionError::FrameTimeout) saying
    /// how many bytes had arrived, and of how many when the framing knows the length): a peer that
    /// trickles a frame byte by byte no longer holds its receive buffer for ever. `None`: no bound.
    /// Default 30 s ([`DEFAULT_FRAME_TIMEOUT`](crate::connection::DEFAULT_FRAME_TIMEOUT)).
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
    pub(super) fn control_frames(&self) -> Result<(Option<Bytes>, Option<Bytes>), RawConfigError> {
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

    pub(super) fn liveness_config(&self) -> LivenessConfig {
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
