//! [`ConnectionConfig`], its validation and [`ConfigError`].

#[cfg(doc)]
use super::{Connection, ConnectionError, Event};
use std::time::Duration;

use thiserror::Error;

use crate::liveness::{LivenessConfig, LivenessConfigError};
use crate::session::SessionConfig;
use crate::wire::{Hello, MIN_MAX_MESSAGE_LEN, PROTOCOL_VERSION};

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

    pub(super) fn liveness_config(&self, peer: Option<&Hello>) -> LivenessConfig {
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
