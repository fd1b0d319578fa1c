//! [`ConnectionCore`]: the state and bookkeeping every sans-IO connection in this crate shares,
//! whatever it speaks.
//!
//! The protocol [`Connection`](super::Connection) and the
//! [`RawConnection`](crate::raw::RawConnection) differ in what they decode and write (HELLO,
//! DATA, PING, CLOSE vs the user's framing, ping frame and pong matcher), not in how they take
//! bytes in, keep time or end. This struct owns that common part, in the spirit of rustls's
//! `ConnectionCommon` / `CommonState`: the receive buffer and how much of it was seen, the
//! partial-frame deadline ([`frame_timeout`](super::ConnectionConfig::frame_timeout)), the
//! keep-alive machine and its idle events, the idle-timeout clock, the send queue and its byte
//! count, what was never sent, the event queue, the counters, and the rule that
//! [`Event::Closed`] is reported once. Each machine embeds one and keeps only what differs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{ConnectionError, Event, Stats};
use crate::liveness::{Liveness, LivenessEvent};
use crate::wire::CloseCode;

/// How far input handling has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Decoding. `frame_started`: when the first byte of the partial frame at the front of the
    /// receive buffer arrived, if one is there.
    Reading { frame_started: Option<Instant> },
    /// Decoding has stopped for good (error, close, end of stream): input is discarded.
    Done,
}

/// What protocol and raw connections share (see the [module documentation](self)). `Q` is the
/// machine's queued-message type; it turns back into its payload when never sent.
#[derive(Debug)]
pub(crate) struct ConnectionCore<Q> {
    /// Received bytes not decoded yet.
    recv: BytesMut,
    /// `recv.len()` after the last processing: anything beyond is new.
    recv_seen: usize,
    input: Input,
    /// A partial frame must be complete this long after its first byte.
    frame_timeout: Option<Duration>,
    /// Close when no application message went either way for this long.
    idle_timeout: Option<Duration>,
    /// The keep-alive machine: from the start (raw), or once the peer's HELLO is in (protocol).
    pub(crate) liveness: Option<Liveness>,
    /// The last application message in either direction: the idle timeout counts from it.
    pub(crate) last_data: Instant,
    /// Application messages waiting to be written.
    pub(crate) queue: VecDeque<Q>,
    /// What the messages in `queue` count against the queue limit.
    pub(crate) queued_bytes: usize,
    /// Messages queued that were never written: the connection closed first.
    unsent: Vec<Bytes>,
    closed_reported: bool,
    pub(crate) events: VecDeque<Event>,
    pub(crate) stats: Stats,
}

impl<Q: Into<Bytes>> ConnectionCore<Q> {
    /// A core for a connection established at `now`.
    pub(crate) fn new(
        now: Instant,
        liveness: Option<Liveness>,
        frame_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        ConnectionCore {
            recv: BytesMut::new(),
            recv_seen: 0,
            input: Input::Reading {
                frame_started: None,
            },
            frame_timeout,
            idle_timeout,
            liveness,
            last_data: now,
            queue: VecDeque::new(),
            queued_bytes: 0,
            unsent: Vec::new(),
            closed_reported: false,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ---- input ----

    /// The receive buffer.
    pub(crate) fn recv_buf(&mut self) -> &mut BytesMut {
        &mut self.recv
    }

    /// The receive buffer, read-only.
    pub(crate) fn recv(&self) -> &BytesMut {
        &self.recv
    }

    /// Bytes were added to the receive buffer and not processed yet.
    pub(crate) fn has_new_input(&self) -> bool {
        self.recv.len() > self.recv_seen
    }

    /// Starts processing input at `now`: counts the new bytes and, if `alive` and there are
    /// any, tells the keep-alive machine (any bytes prove the peer alive, even part of a frame).
    pub(crate) fn begin_input(&mut self, now: Instant, alive: bool) {
        let new = self.recv.len().saturating_sub(self.recv_seen);
        if new > 0 {
            self.stats.bytes_in = self.stats.bytes_in.saturating_add(new as u64);
            if alive {
                if let Some(lv) = &mut self.liveness {
                    lv.on_receive(now);
                }
            }
        }
    }

    /// The buffer to decode from, while decoding goes on.
    pub(crate) fn decodable(&mut self) -> Option<&mut BytesMut> {
        match self.input {
            Input::Reading { .. } => Some(&mut self.recv),
            Input::Done => None,
        }
    }

    /// Decoding has stopped for good.
    pub(crate) fn input_done(&self) -> bool {
        self.input == Input::Done
    }

    /// Stops decoding; what is buffered is discarded at the end of this input.
    pub(crate) fn stop_input(&mut self) {
        self.input = Input::Done;
    }

    /// Ends processing input at `now`: a stopped input's bytes are dropped, the partial frame
    /// left (if any) gets its start time (see [`frame_start`]), and the bytes count as seen.
    pub(crate) fn end_input(&mut self, decoded: bool, now: Instant) {
        match &mut self.input {
            Input::Done => self.recv.clear(),
            Input::Reading { frame_started } => {
                *frame_started = frame_start(*frame_started, &self.recv, decoded, now);
            }
        }
        self.recv_seen = self.recv.len();
    }

    /// Stops decoding and empties the receive buffer, keeping its memory.
    pub(crate) fn clear_input(&mut self) {
        self.input = Input::Done;
        self.recv.clear();
        self.recv_seen = 0;
    }

    /// Stops decoding and frees the receive buffer's memory at once.
    pub(crate) fn free_input(&mut self) {
        self.input = Input::Done;
        self.recv = BytesMut::new();
        self.recv_seen = 0;
    }

    /// When the partial frame at the front of the receive buffer times out, if one does; only
    /// while `active` (the machine still takes input).
    pub(crate) fn frame_deadline(&self, active: bool) -> Option<Instant> {
        let Input::Reading {
            frame_started: Some(started),
        } = self.input
        else {
            return None;
        };
        if !active {
            return None;
        }
        started.checked_add(self.frame_timeout?)
    }

    /// The error for a partial frame that timed out: how much of it arrived, of `expected`.
    pub(crate) fn frame_timeout_error(&self, expected: Option<usize>) -> ConnectionError {
        ConnectionError::FrameTimeout {
            timeout: self.frame_timeout.unwrap_or_default(),
            received: self.recv.len(),
            expected,
        }
    }

    // ---- time ----

    /// When the idle timeout evicts the connection, if it is on.
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        self.idle_timeout
            .and_then(|d| self.last_data.checked_add(d))
    }

    /// The reason given when the idle timeout closes the connection.
    pub(crate) fn idle_reason(&self) -> String {
        let idle = self.idle_timeout.unwrap_or_default();
        format!("no messages for {idle:?}")
    }

    /// When the keep-alive machine needs [`handle_liveness_timeout`](Self::handle_liveness_timeout).
    pub(crate) fn liveness_timeout(&self) -> Option<Instant> {
        self.liveness.as_ref().and_then(Liveness::poll_timeout)
    }

    /// Lets the keep-alive machine handle its timers at `now`.
    pub(crate) fn handle_liveness_timeout(&mut self, now: Instant) {
        if let Some(lv) = &mut self.liveness {
            lv.handle_timeout(now);
        }
    }

    /// The next keep-alive event the machine must act on; idle events are reported here, as
    /// [`Event::Idle`], and not returned.
    pub(crate) fn poll_liveness(&mut self) -> Option<LivenessEvent> {
        loop {
            match self.liveness.as_mut()?.poll_event()? {
                LivenessEvent::Idle(kind) => self.events.push_back(Event::Idle(kind)),
                event => return Some(event),
            }
        }
    }

    /// An application message went out or came in at `now` (for the idle timeout).
    pub(crate) fn touch_data(&mut self, now: Instant) {
        self.last_data = self.last_data.max(now);
    }

    // ---- output and closing ----

    /// Counts a chunk handed to the driver.
    pub(crate) fn count_out(&mut self, len: usize) {
        self.stats.bytes_out = self.stats.bytes_out.saturating_add(len as u64);
    }

    /// Drops every queued message: they become [`unsent`](Self::take_unsent).
    pub(crate) fn drop_queue(&mut self) {
        self.unsent.extend(self.queue.drain(..).map(Into::into));
        self.queued_bytes = 0;
    }

    /// Reports [`Event::Closed`], the first time only.
    pub(crate) fn report_closed(
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
                error: error.map(Box::new),
            });
        }
    }

    /// Messages queued that were never written; taken once.
    pub(crate) fn take_unsent(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.unsent)
    }

    /// The next event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Frees the memory of the empty queues (events, send queue, keep-alive events).
    pub(crate) fn shrink_buffers(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        if let Some(lv) = &mut self.liveness {
            lv.shrink_buffers();
        }
    }
}

/// When the partial frame left at the front of `recv` started: `now` for a new one (none was
/// pending, or frames were `decoded` from this input, so what is left began in it), the old
/// start while the same frame is still incomplete, `None` when nothing is left.
fn frame_start(
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
