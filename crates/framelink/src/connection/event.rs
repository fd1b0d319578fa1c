//! What a connection, a [`Client`](crate::Client) and a server's connections report:
//! [`Event`], [`SessionEvent`] (shared with [`ClientEvent`](crate::ClientEvent)), [`CloseInfo`]
//! (shared too) and [`TransportError`].

use std::fmt;

use bytes::Bytes;

use super::{CloseCode, ConnectionError, DecodeError, Hello, IdleKind, ResumeStatus, RttEstimate};

/// What the driver reports to the [`Receiver`](crate::Receiver), in order.
///
/// Exhaustive on purpose (like the sans-IO machine's events): whoever translates these
/// (the [`Client`](crate::Client), the Python package, the CLI) matches every variant, so a new
/// event is a compile error there rather than something that silently vanishes.
///
/// Small on purpose: every message crosses the connection's event queue as one `Event`, so the
/// rare, large variants are boxed and [`Event::Message`] sets the size (40 bytes, checked by a
/// test; a `Bytes` is 32).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Protocol mode: the peer's HELLO was accepted, the connection is open. (Raw mode has no
    /// handshake and no `Connected` event: it is open from the start.)
    Connected {
        /// The peer's HELLO (keep-alive settings, `max_message_len`, session id, extensions).
        peer: Box<Hello>,
        /// The negotiated protocol version.
        version: u8,
    },
    /// An application message from the peer.
    Message(Bytes),
    /// A ping / pong pair completed: the estimate with this sample (`latest`), the smoothed RTT
    /// and its variation (RFC 6298), the minimum and the sample count. (Boxed: see above.)
    Rtt(Box<RttEstimate>),
    /// A direction has been idle for its configured period.
    Idle(IdleKind),
    /// A message sent before the handshake (or while it completed) was larger than the peer
    /// accepts and was dropped.
    MessageDropped {
        /// Its payload length.
        len: usize,
        /// The peer's `max_message_len` (which counts the type byte too).
        peer_max: u32,
    },
    /// Raw mode: the framing skipped bad input and carries on (an oversize frame under the
    /// `discard` policy, garbage before a magic). The frames around it are delivered. (Boxed.)
    FrameDiscarded(Box<DecodeError>),
    /// Sessions: the session started, resumed, or was lost (see [`SessionEvent`]). (Not boxed:
    /// it is no larger than a message, and can be matched in place.)
    Session(SessionEvent),
    /// The connection is closing or closed; always the last event. (Boxed.)
    Closed(Box<CloseInfo>),
}

/// What happened to an acknowledged session, as a connection ([`Event::Session`]) and a
/// client ([`ClientEvent::Session`](crate::ClientEvent::Session)) report it: defined once,
/// so a field added here reaches both (and the Python package, which maps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session runs on this connection (after the RESUME): new, resumed, or unknown to the
    /// accepting side (which then started a new one).
    Started {
        /// The session id.
        id: [u8; 16],
        /// New, resumed, or unknown to the accepting side (a new one was started).
        status: ResumeStatus,
        /// Messages sent again because the peer had not delivered them.
        resending: u64,
    },
    /// The session could not be resumed (the peer no longer has it: expired, restarted), or
    /// ended with unacknowledged messages: they are handed back, and may or may not have
    /// reached the peer's application. Nothing is dropped silently.
    Lost {
        /// The session id.
        id: [u8; 16],
        /// The messages, oldest first.
        unacked: Vec<Bytes>,
    },
}

impl SessionEvent {
    /// The session's id.
    pub fn id(&self) -> [u8; 16] {
        match self {
            SessionEvent::Started { id, .. } | SessionEvent::Lost { id, .. } => *id,
        }
    }
}

/// How a connection ended (the last [`Event`]; a [`Client`](crate::Client) reports it as
/// [`ClientEvent::Disconnected`](crate::ClientEvent::Disconnected)).
#[derive(Debug, Clone, PartialEq)]
pub struct CloseInfo {
    /// The close code (sent by us when `by_peer` is false, received otherwise). When the
    /// stream ended without a CLOSE ([`without_close`](Self::without_close)), none was
    /// received and this only classifies the end.
    pub code: CloseCode,
    /// The reason text (untrusted when `by_peer`).
    pub reason: String,
    /// The peer closed (CLOSE received or stream ended) rather than us.
    pub by_peer: bool,
    /// What went wrong, if anything (a dead peer is [`ConnectionError::PeerDead`]).
    pub error: Option<ConnectionError>,
    /// Raw mode: no CLOSE is ever exchanged with the peer; `code` only classifies the end
    /// (ours: `Normal`, `Idle`, `PeerTimedOut` for an unanswered ping, `ProtocolError` for a
    /// framing error).
    pub raw: bool,
    /// The read or write error of the byte stream that ended the connection, if one did (a
    /// reset, a TLS alert or certificate failure...). The protocol then sees an end of stream.
    pub transport: Option<TransportError>,
}

/// A byte stream's read or write error, as [`CloseInfo::transport`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// The I/O error kind.
    pub kind: std::io::ErrorKind,
    /// The error's text (for TLS, the reason in plain words).
    pub message: String,
}

impl From<&std::io::Error> for TransportError {
    fn from(error: &std::io::Error) -> Self {
        TransportError {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

impl CloseInfo {
    /// The stream ended without a CLOSE (no code was exchanged: `code` then only classifies
    /// the end, `GoingAway` for a clean end and `ProtocolError` for one mid-message).
    pub fn without_close(&self) -> bool {
        matches!(self.error, Some(ConnectionError::EndOfStream { .. }))
    }
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(transport), true) = (&self.transport, self.without_close()) {
            // The stream failed (a reset, a TLS alert): that is what happened.
            return write!(f, "connection failed: {transport}");
        }
        if let Some(ConnectionError::EndOfStream { mid_message }) = self.error {
            // No CLOSE, so no code to report: "closed with GoingAway" would be made up.
            let mid = if !mid_message {
                ""
            } else if self.raw {
                " in the middle of a frame"
            } else {
                " in the middle of a message"
            };
            return if self.raw {
                // Raw peers never send a CLOSE: an end of stream is how they close.
                write!(f, "peer closed the connection (end of stream{mid})")
            } else {
                write!(f, "peer ended the stream without CLOSE{mid}")
            };
        }
        if self.raw {
            // Raw peers know no CLOSE codes: say what happened.
            let what = match (self.code, &self.error) {
                (_, Some(error)) => return write!(f, "we closed the connection: {error}"),
                (CloseCode::Idle, None) => "idle timeout",
                (CloseCode::GoingAway, None) => "shutting down",
                _ => "",
            };
            f.write_str("we closed the connection")?;
            return match (what, self.reason.is_empty()) {
                ("", true) => Ok(()),
                ("", false) => write!(f, " ({:?})", self.reason),
                (what, true) => write!(f, ": {what}"),
                (what, false) => write!(f, ": {what} ({:?})", self.reason),
            };
        }
        let who = if self.by_peer { "peer" } else { "we" };
        write!(f, "{who} closed with {:?}", self.code)?;
        let error = self.error.as_ref().map(ToString::to_string);
        // Our own closes carry the error's text as their reason: say it once.
        if !self.reason.is_empty() && error.as_deref() != Some(self.reason.as_str()) {
            write!(f, " ({:?})", self.reason)?;
        }
        if let Some(error) = error {
            write!(f, ": {error}")?;
        }
        if let Some(transport) = &self.transport {
            write!(f, " ({transport})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message crosses the event queue (and the application's batches) as an `Event`:
    /// the rare variants are boxed so that it stays the size of a message's `Bytes` and a tag.
    #[test]
    fn event_is_small() {
        assert!(
            std::mem::size_of::<Event>() <= std::mem::size_of::<Bytes>() + 8,
            "Event is {} bytes",
            std::mem::size_of::<Event>()
        );
    }
}
