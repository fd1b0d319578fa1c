//! [`RawConnection`], the raw-mode machine: the user's framing in both directions, heartbeats
//! matched and answered with the [`FrameMatcher`](super::FrameMatcher) rules, keep-alive from the
//! shared [`Liveness`] machine. The rules it follows are in the [module docs](super).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::heartbeat::{Classified, Heartbeats};
use super::{RawConfig, RawConfigError, FRAME_OVERHEAD};
use crate::codec::{DecodeError, DecodeErrorKind, FrameDecoder, FrameEncoder, Framing};
use crate::connection::{
    ConnectionCore, ConnectionError, Event, SendError, State, Stats, COALESCE, COPY_THRESHOLD,
};
use crate::liveness::{DeathCause, Liveness, LivenessEvent, RttEstimate};
use crate::machine::Machine;
use crate::wire::CloseCode;

/// A message waiting to be written: only its payload. Its framing was checked when it was
/// queued ([`RawConnection::send`](Machine::send), or by the caller of
/// [`send_checked`](Machine::send_checked)) and is written by [`poll_transmit`](Machine::poll_transmit),
/// straight into the output (no header kept per queued message).
type Queued = Bytes;

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

/// One raw connection: the user's framing with keep-alive. See the [module documentation](super).
#[derive(Debug)]
pub struct RawConnection {
    config: RawConfig,
    /// A fresh copy of the framing: decodes input, encodes output.
    framing: Framing,
    /// Ping / pong matching and the control frames pending.
    heartbeats: Heartbeats,
    /// In idle-only mode, the dead-peer rule reported as [`DeathCause::PeerSilent`].
    silence_limit: Option<Duration>,
    state: State,
    /// Input, keep-alive (always present), idle timeout, send queue, events and counters, shared
    /// with the protocol connection.
    core: ConnectionCore<Queued>,
    /// The rest of a frame partly handed out by `poll_transmit` (payload, trailer).
    in_flight: VecDeque<Bytes>,
    shutdown: Shutdown,
    /// While closing: when output last went out (stamped by the first `poll_transmit` after
    /// the close). With no output for `linger`, the close is given up on: a peer that stops
    /// reading would otherwise hold it forever.
    close_progress: Option<Instant>,
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
        let core = ConnectionCore::new(
            now,
            Some(liveness),
            config.frame_timeout,
            config.idle_timeout,
        );
        Ok(RawConnection {
            framing: config.framing.reset(),
            config,
            heartbeats: Heartbeats::new(ping_frame, reply_frame),
            silence_limit,
            state: State::Open,
            core,
            in_flight: VecDeque::new(),
            shutdown: Shutdown::No,
            close_progress: None,
        })
    }

    // ---- accessors ----

    /// The configuration.
    pub fn config(&self) -> &RawConfig {
        &self.config
    }

    /// Counters: `messages_*` count every frame (pings, pongs and replies too), `data_*` the
    /// application's.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    // ---- input ----

    /// Copies `data` into the receive buffer and processes it.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.core.recv_buf().extend_from_slice(data);
        self.process_input(now);
    }

    fn on_frame(&mut self, frame: Bytes, now: Instant) {
        self.core.stats.messages_in += 1;
        let Classified {
            heartbeat,
            pong_for,
        } = self.heartbeats.classify(&self.config, &frame);
        if let Some(context) = pong_for {
            let sample = self
                .core
                .liveness
                .as_mut()
                .and_then(|lv| lv.on_pong(context, now));
            if let Some(sample) = sample {
                self.core.events.push_back(Event::Rtt(sample));
            }
        }
        if !heartbeat {
            self.core.touch_data(now);
        }
        if !heartbeat || self.config.deliver_heartbeats {
            self.core.stats.data_in += 1;
            self.core.events.push_back(Event::Data(frame));
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

    /// Hands out a ping or reply frame.
    fn control(&mut self, frame: Bytes, now: Instant) -> Bytes {
        self.core.stats.messages_out += 1;
        if let Some(lv) = &mut self.core.liveness {
            lv.on_send(now);
        }
        self.out(frame)
    }

    /// Appends `payload`'s frame to `buf`. Its framing was checked when it was queued; one that
    /// fails anyway (a [`send_checked`](Machine::send_checked) caller that did not check) is
    /// dropped.
    fn encode_into(&self, payload: &[u8], buf: &mut BytesMut) {
        let encoded = self.framing.encode(payload, buf);
        debug_assert!(encoded.is_ok(), "an unencodable message was queued");
    }

    /// Queues `payload`, whose framing is known to work.
    fn enqueue(&mut self, payload: Bytes, now: Instant, bounded: bool) -> Result<(), SendError> {
        let cost = self.message_cost(payload.len());
        let limit = self.config.max_queued_bytes;
        if bounded && self.core.queued_bytes.saturating_add(cost) > limit {
            return Err(SendError::QueueFull {
                queued: self.core.queued_bytes,
                len: cost,
                limit,
            });
        }
        self.core.queued_bytes += cost;
        self.core.queue.push_back(payload);
        self.core.touch_data(now);
        Ok(())
    }

    fn out(&mut self, chunk: Bytes) -> Bytes {
        self.core.count_out(chunk.len());
        chunk
    }

    /// Takes the next queued frame, counted out of the queued bytes and into the stats.
    fn pop_queued(&mut self) -> Option<Queued> {
        let queued = self.core.queue.pop_front()?;
        self.core.queued_bytes = self
            .core
            .queued_bytes
            .saturating_sub(self.message_cost(queued.len()));
        self.core.stats.messages_out += 1;
        self.core.stats.data_out += 1;
        Some(queued)
    }

    /// What [`poll_transmit`](Machine::poll_transmit) hands out next.
    fn transmit(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(chunk) = self.in_flight.pop_front() {
            self.maybe_shutdown(now);
            return Some(self.out(chunk));
        }
        if matches!(self.shutdown, Shutdown::Done(_)) {
            return None;
        }
        if self.state == State::Open {
            if let Some(frame) = self.heartbeats.next_frame() {
                return Some(self.control(frame, now));
            }
        }
        let data_allowed = self.state == State::Open || self.shutdown == Shutdown::AfterQueue;
        if data_allowed {
            while let Some(payload) = self.pop_queued() {
                if let Some(lv) = &mut self.core.liveness {
                    lv.on_send_data(now);
                }
                let chunk = if payload.len() > COPY_THRESHOLD {
                    // Header, payload and trailer as separate chunks: the payload is not copied.
                    let Ok(parts) = self.framing.frame_parts(&payload) else {
                        // Checked when queued (the framing is a pure function of the payload):
                        // only a `send_checked` caller that did not check gets here.
                        debug_assert!(false, "an unencodable message was queued");
                        continue;
                    };
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
                    // Small frames go out together: the ones queued behind this one are encoded
                    // into the same chunk (one allocation, one slot of a vectored write), up to
                    // COALESCE bytes, as protocol mode does.
                    let len = payload.len() + FRAME_OVERHEAD;
                    let room = if self.core.queue.is_empty() {
                        len
                    } else {
                        COALESCE.max(len)
                    };
                    let mut buf = BytesMut::with_capacity(room);
                    self.encode_into(&payload, &mut buf);
                    while let Some(next) = self.core.queue.front() {
                        if next.len() > COPY_THRESHOLD
                            || buf.len() + next.len() + FRAME_OVERHEAD > COALESCE
                        {
                            break;
                        }
                        let Some(payload) = self.pop_queued() else {
                            break;
                        };
                        self.encode_into(&payload, &mut buf);
                    }
                    if buf.is_empty() {
                        continue;
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

    /// Emits [`Event::ShutdownWrite`] once the output a close still owes has been handed out.
    fn maybe_shutdown(&mut self, now: Instant) {
        let finished = self.in_flight.is_empty()
            && match self.shutdown {
                Shutdown::AfterQueue => self.core.queue.is_empty(),
                Shutdown::AfterFrame => true,
                Shutdown::No | Shutdown::Done(_) => false,
            };
        if finished {
            self.shutdown = Shutdown::Done(now);
            self.core.events.push_back(Event::ShutdownWrite);
        }
    }

    // ---- timers ----

    /// When the partial frame at the front of the receive buffer times out, if one does.
    fn frame_deadline(&self) -> Option<Instant> {
        self.core.frame_deadline(self.state == State::Open)
    }

    fn drain_liveness(&mut self, now: Instant) {
        while let Some(event) = self.core.poll_liveness() {
            match event {
                LivenessEvent::SendPing { context } => {
                    if self.state == State::Open && self.heartbeats.pings() {
                        self.heartbeats.ping_due(context);
                    }
                }
                // Reported by the core.
                LivenessEvent::Idle(_) => {}
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
        self.core
            .report_closed(code, error.to_string(), false, Some(error));
        if !matches!(self.shutdown, Shutdown::Done(_)) {
            self.shutdown = Shutdown::AfterFrame;
        }
        self.enter_closed(now);
    }

    fn enter_closed(&mut self, now: Instant) {
        self.state = State::Closed;
        self.core.clear_input();
        self.core.drop_queue();
        self.heartbeats.clear();
        self.maybe_shutdown(now);
    }
}

impl Machine for RawConnection {
    /// The receive buffer: read socket bytes into it, then call
    /// [`process_input`](Machine::process_input). Don't remove bytes from it.
    fn recv_buf(&mut self) -> &mut BytesMut {
        self.core.recv_buf()
    }

    /// Handles the bytes added to [`recv_buf`](Machine::recv_buf) since the last
    /// call: decodes frames, answers or matches heartbeats, delivers the rest as [`Event::Data`].
    fn process_input(&mut self, now: Instant) {
        // Any bytes prove the peer alive, even part of a frame.
        self.core.begin_input(now, self.state != State::Closed);
        if self.state != State::Open {
            self.core.stop_input();
        }
        let mut decoded = false;
        while let Some(recv) = self.core.decodable() {
            match self.framing.decode(recv) {
                Ok(Some(frame)) => {
                    decoded = true;
                    self.on_frame(frame, now);
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    decoded = true;
                    self.core
                        .events
                        .push_back(Event::FrameDiscarded(Box::new(e)));
                }
                Err(e) => self.framing_failed(e, now),
            }
        }
        self.core.end_input(decoded, now);
        self.drain_liveness(now);
    }

    /// Full length of the partial frame at the front of the receive buffer, once the framing
    /// knows it (see [`Machine::pending_frame_len`]).
    fn pending_frame_len(&self) -> Option<usize> {
        let len = self.framing.pending_frame_length(self.core.recv())?;
        usize::try_from(len).ok()
    }

    /// Round-trip-time estimate from ping / matched pong pairs.
    fn rtt(&self) -> Option<RttEstimate> {
        self.core.liveness.as_ref().and_then(Liveness::rtt)
    }

    /// The peer ended its write half (TCP FIN) or the transport failed: the connection is
    /// closed. The framing's [`decode_eof`](FrameDecoder::decode_eof) gets a chance to produce a
    /// last frame first.
    fn handle_eof(&mut self, now: Instant) {
        if self.core.has_new_input() {
            self.process_input(now);
        }
        let mut mid_message = false;
        while let Some(recv) = self.core.decodable() {
            match self.framing.decode_eof(recv) {
                Ok(Some(frame)) => self.on_frame(frame, now),
                Ok(None) => break,
                Err(e) if e.is_recoverable() => self
                    .core
                    .events
                    .push_back(Event::FrameDiscarded(Box::new(e))),
                Err(e) if matches!(e.kind(), DecodeErrorKind::Truncated { .. }) => {
                    mid_message = true;
                    break;
                }
                Err(e) => self.framing_failed(e, now),
            }
        }
        self.core.clear_input();
        let code = if mid_message {
            CloseCode::ProtocolError
        } else {
            CloseCode::GoingAway
        };
        self.core.report_closed(
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

    /// The next bytes to write, if any. Call until `None` after every input. A frame's chunks
    /// come out consecutively; a reply to the peer's heartbeat, then our ping, go ahead of queued
    /// messages.
    fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let out = self.transmit(now);
        // A close makes progress while its output goes out (see `handle_timeout`).
        if matches!(self.shutdown, Shutdown::AfterQueue | Shutdown::AfterFrame)
            && (out.is_some() || self.close_progress.is_none())
        {
            self.close_progress = Some(now);
        }
        out
    }

    /// The next event, if any. Call until `None` after every input.
    fn poll_event(&mut self) -> Option<Event> {
        self.core.poll_event()
    }

    /// When [`handle_timeout`](Machine::handle_timeout) must next be called, if
    /// ever.
    fn poll_timeout(&self) -> Option<Instant> {
        match (self.state, self.shutdown) {
            (State::Closed, _) => None,
            (State::Closing, Shutdown::Done(at)) => {
                Some(at.checked_add(self.config.linger).unwrap_or(at))
            }
            (State::Closing, _) if self.close_progress.is_some() => {
                let at = self.close_progress.expect("checked");
                let stalled = at.checked_add(self.config.linger).unwrap_or(at);
                Some(
                    self.core
                        .liveness_timeout()
                        .map_or(stalled, |l| l.min(stalled)),
                )
            }
            (State::Open, _) => [
                self.core.liveness_timeout(),
                self.core.idle_deadline(),
                self.frame_deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
            _ => self.core.liveness_timeout(),
        }
    }

    /// Handles whatever timers are due at `now` (early or spurious calls are harmless).
    fn handle_timeout(&mut self, now: Instant) {
        if self.frame_deadline().is_some_and(|at| now >= at) {
            let error = self.core.frame_timeout_error(self.pending_frame_len());
            self.fail(CloseCode::PeerTimedOut, error, now);
            // Its memory goes at once.
            self.core.free_input();
            return;
        }
        match (self.state, self.shutdown) {
            (State::Closed, _) => {}
            (State::Closing, Shutdown::Done(at)) => {
                if now >= at.checked_add(self.config.linger).unwrap_or(at) {
                    self.enter_closed(now);
                }
            }
            (State::Closing, _)
                if self
                    .close_progress
                    .is_some_and(|at| now >= at.checked_add(self.config.linger).unwrap_or(at)) =>
            {
                // Nothing went out for `linger`: the peer does not read. Give up on what was
                // queued (handed back as unsent).
                self.enter_closed(now);
            }
            _ => {
                self.core.handle_liveness_timeout(now);
                self.drain_liveness(now);
                if self.state == State::Open
                    && self.core.idle_deadline().is_some_and(|at| now >= at)
                {
                    let reason = self.core.idle_reason();
                    self.close(CloseCode::Idle, &reason, now);
                }
            }
        }
    }

    /// Queues an application message, framed with [`RawConfig::framing`]. Refused once closing,
    /// when the framing cannot encode it ([`SendError::Unencodable`]), or when the queue is full.
    fn send(&mut self, payload: Bytes, now: Instant) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        self.check_message(&payload)?;
        self.enqueue(payload, now, true)
    }

    /// [`send`](Machine::send) for a payload that already passed
    /// [`check_message`](Machine::check_message) on this connection and whose room the caller
    /// reserved: neither the framing nor the queue limit is asked again (the frame is written
    /// by [`poll_transmit`](Machine::poll_transmit)).
    fn send_checked(&mut self, payload: Bytes, now: Instant) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        self.enqueue(payload, now, false)
    }

    /// Closes gracefully: [`Event::Closed`] now (with `code` and `reason`, `by_peer: false`),
    /// queued messages are still written, then [`Event::ShutdownWrite`]. Raw mode sends no close
    /// message. No-op once closing.
    fn close(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if self.state != State::Open {
            return;
        }
        self.core
            .report_closed(code, reason.to_owned(), false, None);
        self.state = State::Closing;
        self.core.stop_input();
        self.heartbeats.stop_sending();
        self.shutdown = Shutdown::AfterQueue;
        self.maybe_shutdown(now);
    }

    /// Closes at once: queued frames and buffered input are dropped, the frame in flight is
    /// completed, then the write half is shut down; [`Event::Closed`] carries `code`, `reason`
    /// and [`ConnectionError::Aborted`]. No-op once closed.
    fn abort(&mut self, code: CloseCode, reason: &str, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let error = ConnectionError::Aborted {
            reason: reason.to_owned(),
        };
        self.core
            .report_closed(code, reason.to_owned(), false, Some(error));
        if !matches!(self.shutdown, Shutdown::Done(_)) {
            self.shutdown = Shutdown::AfterFrame;
        }
        self.enter_closed(now);
        self.core.free_input();
    }

    /// The current state: [`State::Open`], [`State::Closing`] (local close in progress) or
    /// [`State::Closed`]; never `Handshaking`.
    fn state(&self) -> State {
        self.state
    }

    /// Nothing will ever come out of [`poll_transmit`](Machine::poll_transmit)
    /// again.
    fn is_drained(&self) -> bool {
        self.in_flight.is_empty()
            && match self.shutdown {
                Shutdown::Done(_) => true,
                Shutdown::No => self.state == State::Closed,
                Shutdown::AfterQueue | Shutdown::AfterFrame => false,
            }
    }

    /// Bytes of queued messages (payload + [`FRAME_OVERHEAD`] each), counted against
    /// [`RawConfig::max_queued_bytes`].
    fn queued_bytes(&self) -> usize {
        self.core.queued_bytes
    }

    fn max_queued_bytes(&self) -> usize {
        self.config.max_queued_bytes
    }

    /// What a message of `len` payload bytes counts against the queue limit.
    fn message_cost(&self, len: usize) -> usize {
        len.saturating_add(FRAME_OVERHEAD)
    }

    /// Checks that `payload` can be framed, without queueing it: the same
    /// [`SendError::Unencodable`] as [`send`](Machine::send).
    fn check_message(&self, payload: &[u8]) -> Result<(), SendError> {
        self.framing
            .check_payload(payload)
            .map_err(SendError::Unencodable)
    }

    fn linger(&self) -> Duration {
        self.config.linger
    }

    /// Frees the memory of empty internal queues. Nothing observable changes; drivers of many
    /// mostly idle connections call it when the connection is quiet.
    fn shrink_buffers(&mut self) {
        if self.in_flight.is_empty() {
            self.in_flight = VecDeque::new();
        }
        self.core.shrink_buffers();
    }

    /// Messages queued that were never written because the connection closed first: raw mode
    /// cannot resend them, so the application learns which. Taken once.
    fn take_unsent(&mut self) -> Vec<Bytes> {
        self.core.take_unsent()
    }
}
