//! What a [`Connection`](super::Connection) reports: [`Event`], [`State`], [`ConnectionError`],
//! [`SendError`] and [`Stats`].

#[cfg(doc)]
use super::{Connection, ConnectionConfig};
#[cfg(doc)]
use crate::session::Session;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use crate::auth::ResumeProof;
use crate::codec::{DecodeError, EncodeError};
use crate::liveness::{DeathCause, IdleKind, LivenessConfigError};
use crate::wire::{CloseCode, Hello, ResumeStatus, WireError};

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
    /// Finished. A pending CLOSE may still come out of
    /// [`Connection::poll_transmit`](crate::machine::Machine::poll_transmit).
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

/// What a [`Connection`] reports, drained with
/// [`Connection::poll_event`](crate::machine::Machine::poll_event).
///
/// Exhaustive on purpose: a driver matches every variant, so a new event is a compile error
/// in each driver rather than something that silently vanishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The peer's HELLO was accepted; the connection is open.
    Connected {
        /// The peer's HELLO.
        peer: Box<Hello>,
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
        error: Option<Box<ConnectionError>>,
    },
    /// Our CLOSE was just returned by
    /// [`Connection::poll_transmit`](crate::machine::Machine::poll_transmit): after writing it,
    /// shut down the write half. Nothing more will be transmitted.
    ShutdownWrite,
    /// Raw mode: the framing skipped bad input and carries on (an oversize frame under the
    /// `discard` policy, garbage before a magic). The frames around it are delivered.
    FrameDiscarded(Box<DecodeError>),
    /// Accepting side: the peer asks for session `id` and has delivered our messages up to
    /// `peer_delivered`. Answer with
    /// [`Connection::attach_session`](crate::machine::Machine::attach_session) (the detached
    /// session, if it is kept, or `None`); nothing else flows on the session until then.
    SessionRequest {
        /// The session id from the peer's HELLO.
        id: [u8; 16],
        /// The peer's announced `delivered`.
        peer_delivered: u64,
        /// The peer's proof that it holds the session's secret (it asks to resume), or `None` (it
        /// holds no secret: a new session, or one whose RESUME never reached it). Hand over a kept
        /// session only if the proof [verifies](ResumeProof::verify) against its secret; without a
        /// proof, only a session that is [`Session::unproven`] may be replaced by a new one;
        /// otherwise [`Connection::refuse_session`](crate::machine::Machine::refuse_session).
        proof: Option<Box<ResumeProof>>,
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

/// Why [`Connection::send`](crate::machine::Machine::send) refused a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed.
    #[error("connection is closing or closed")]
    Closed,
    /// The message is longer than the peer accepts.
    #[error(
        "message of {len} bytes exceeds the peer's max_message_len of {max} \
         (which counts 1 type byte, and 8 more on a session)"
    )]
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
    /// Bytes handed out by [`Connection::poll_transmit`](crate::machine::Machine::poll_transmit).
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message a machine decodes is queued as an `Event::Data` and moved through the
    /// driver: the rare variants box their large parts (the peer's HELLO, errors, the resume
    /// proof) so that an event stays near the size of `Bytes` (it was 112 bytes before).
    #[test]
    fn event_is_small() {
        let size = std::mem::size_of::<Event>();
        assert!(size <= 48, "Event is {size} bytes");
    }
}
