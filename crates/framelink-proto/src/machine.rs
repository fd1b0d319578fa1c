//! The interface a runtime drives: what every sans-IO connection in this crate has in common.
//!
//! The protocol v1 [`Connection`] and the
//! [`RawConnection`](crate::raw::RawConnection) (a user's own framing with keep-alive) are both
//! [`Machine`]s, so one driver (the tokio layer's, or a test's) runs either: read bytes into
//! [`recv_buf`](Machine::recv_buf) and call [`process_input`](Machine::process_input); write
//! what [`poll_transmit`](Machine::poll_transmit) returns; keep **one** timer at
//! [`poll_timeout`](Machine::poll_timeout) and call [`handle_timeout`](Machine::handle_timeout)
//! when it fires; drain [`poll_event`](Machine::poll_event) after every call.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

#[cfg(doc)]
use crate::connection::Connection;
use crate::connection::{Event, SendError, State};
use crate::liveness::RttEstimate;
use crate::session::Session;
use crate::wire::CloseCode;

/// A sans-IO connection a runtime can drive. See the [module documentation](self).
pub trait Machine {
    /// The receive buffer: read socket bytes into it, then call
    /// [`process_input`](Self::process_input). Don't remove bytes from it.
    fn recv_buf(&mut self) -> &mut BytesMut;
    /// Handles the bytes added to [`recv_buf`](Self::recv_buf) since the last call.
    fn process_input(&mut self, now: Instant);
    /// Full length of the partial frame at the front of [`recv_buf`](Self::recv_buf) (header
    /// included), once its header is in. A runtime uses it to make room for the rest of a large
    /// frame while little of it has arrived, rather than copying most of it later.
    fn pending_frame_len(&self) -> Option<usize> {
        None
    }
    /// The round-trip-time estimate from heartbeats so far (latest sample, smoothed, variance,
    /// minimum), if any.
    fn rtt(&self) -> Option<RttEstimate> {
        None
    }
    /// The peer ended its write half (TCP FIN) or the transport failed.
    fn handle_eof(&mut self, now: Instant);
    /// The next bytes to write, if any. Call until `None` after every input.
    fn poll_transmit(&mut self, now: Instant) -> Option<Bytes>;
    /// The next event, if any. Call until `None` after every input.
    fn poll_event(&mut self) -> Option<Event>;
    /// When [`handle_timeout`](Self::handle_timeout) has something to do next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The timer fired (early or spurious calls are harmless).
    fn handle_timeout(&mut self, now: Instant);
    /// Queues an application message.
    fn send(&mut self, payload: Bytes, now: Instant) -> Result<(), SendError>;
    /// [`send`](Self::send) for a payload that already passed
    /// [`check_message`](Self::check_message) on this machine, and for which the caller
    /// reserved room (a driver whose handles check messages and take a send budget mirroring
    /// [`max_queued_bytes`](Self::max_queued_bytes) before queueing them): the machine may
    /// skip what that check did (a raw framing's encodability) and does not refuse it for the
    /// queue limit, which the caller enforces (a message it admitted must not be dropped
    /// because the two counts differ for a moment, e.g. while a resumed session's messages
    /// are being counted). Every other refusal of `send` still applies.
    fn send_checked(&mut self, payload: Bytes, now: Instant) -> Result<(), SendError> {
        self.send(payload, now)
    }
    /// Closes gracefully: queued messages first. No-op once closing.
    fn close(&mut self, code: CloseCode, reason: &str, now: Instant);
    /// Closes at once: queued messages and buffered input are dropped (their memory freed),
    /// the connection ends with [`ConnectionError::Aborted`](crate::connection::ConnectionError::Aborted)
    /// (protocol mode: our CLOSE with `code` and `reason` is written first). No-op once closed.
    fn abort(&mut self, code: CloseCode, reason: &str, now: Instant);
    /// Where the connection is in its lifecycle.
    fn state(&self) -> State;
    /// The connection is finished ([`State::Closed`]).
    fn is_closed(&self) -> bool {
        self.state() == State::Closed
    }
    /// Nothing will ever come out of [`poll_transmit`](Self::poll_transmit) again.
    fn is_drained(&self) -> bool;
    /// Bytes of queued messages, as counted against [`max_queued_bytes`](Self::max_queued_bytes).
    fn queued_bytes(&self) -> usize;
    /// The limit on [`queued_bytes`](Self::queued_bytes).
    fn max_queued_bytes(&self) -> usize;
    /// What a message of `len` payload bytes counts against the queue limit.
    fn message_cost(&self, len: usize) -> usize;
    /// Checks that `payload` can ever be sent (size, encodability), before it is queued.
    fn check_message(&self, payload: &[u8]) -> Result<(), SendError>;
    /// How long, after closing, pending output may still take to be written.
    fn linger(&self) -> Duration;
    /// The longest payload the peer accepts, once known (protocol mode: after its HELLO);
    /// `None`: no limit but the machine's own.
    fn max_payload_len(&self) -> Option<u64> {
        None
    }
    /// Frees the memory of empty internal queues; called by drivers when the connection is
    /// quiet. Changes nothing observable.
    fn shrink_buffers(&mut self) {}
    /// Accepting side: answers [`Event::SessionRequest`] (see
    /// [`Connection::attach_session`](Self::attach_session)): a session it does not take is handed back as `Err`.
    /// Machines without sessions take none.
    fn attach_session(&mut self, found: Option<Session>, _now: Instant) -> Result<(), Session> {
        found.map_or(Ok(()), Err)
    }
    /// Accepting side: refuses the session [`Event::SessionRequest`] asked for (see
    /// [`Connection::refuse_session`](Self::refuse_session)). Machines without sessions ignore it.
    fn refuse_session(&mut self, _reason: &str, _now: Instant) {}
    /// Messages queued that were never written because the connection closed first (see
    /// [`Connection::take_unsent`](Self::take_unsent)); taken once.
    fn take_unsent(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
    /// The session while one is attached (see [`Connection::session`](Self::session)).
    fn session(&self) -> Option<&Session> {
        None
    }
    /// The session to carry over once the connection is closed (see
    /// [`Connection::take_session`](Self::take_session)). Machines without sessions have none.
    fn take_session(&mut self) -> Option<Session> {
        None
    }
}
