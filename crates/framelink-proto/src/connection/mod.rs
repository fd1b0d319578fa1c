//! The framelink protocol v1 connection state machine (sans-IO).
//!
//! A [`Connection`] implements `docs/PROTOCOL.md` for one byte stream, in the style of
//! quinn-proto's `Connection`: it owns no socket and reads no clock. The driver (the tokio layer,
//! a test, a simulator) feeds it
//!
//! - received bytes: read into [`Connection::recv_buf`](Machine::recv_buf) then
//!   call [`Connection::process_input`](Machine::process_input) (or hand a slice to
//!   [`Connection::handle_input`]); end of stream with
//!   [`Connection::handle_eof`](Machine::handle_eof);
//! - timer expiries: keep **one** timer at
//!   [`Connection::poll_timeout`](Machine::poll_timeout) and call
//!   [`Connection::handle_timeout`](Machine::handle_timeout) when it fires (early
//!   or spurious calls are harmless);
//!
//! and takes out
//!
//! - bytes to write: call [`Connection::poll_transmit`](Machine::poll_transmit)
//!   until it returns `None`;
//! - events: call [`Connection::poll_event`](Machine::poll_event) until it returns
//!   `None`.
//!
//! After every input (bytes, timeout, [`send`](Machine::send),
//! [`close`](Machine::close)), drain both and re-arm the timer. When
//! [`Event::ShutdownWrite`] comes out, our CLOSE has been handed over by `poll_transmit`: write it,
//! then shut down the write half (TCP FIN) and keep reading. Drop the socket once
//! [`Connection::is_closed`](Machine::is_closed) and
//! [`Connection::is_drained`](Machine::is_drained) both hold.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use framelink_proto::connection::{Connection, ConnectionConfig, Event};
//! use framelink_proto::machine::Machine;
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
//!   peer announced `I_p = 0`, every PING but the first is a strike. A PING at least `I_p / 2`
//!   after the previous one resets the strikes, and so does sending DATA (as gRPC does).
//! - **PONGs** are written before queued DATA (but never inside a DATA message already started),
//!   and at most one is pending: a newer PING replaces an unwritten PONG (section 10).
//! - **Sending before the handshake** is allowed: DATA is queued and written once the peer's
//!   HELLO has been accepted (section 4.3). If the peer's `max_message_len` then turns out too
//!   small for a queued message, that message is dropped with [`Event::MessageDropped`].
//! - **Local [`close`](Machine::close)** is graceful: DATA queued before it is
//!   still written, then CLOSE. Every other close (errors, timeouts, peer CLOSE) discards queued
//!   DATA.
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

use bytes::{BufMut, Bytes, BytesMut};

use crate::auth::{
    random_bytes, random_nonce, resume_proof, ResumeProof, SessionSecret, PROOF_LEN,
};
use crate::liveness::{Liveness, LivenessEvent, PingAction, RttEstimate};
use crate::machine::Machine;
use crate::session::{Received, Session, SessionConfig, SDATA_OVERHEAD};
use crate::wire::{
    negotiate_version, CloseCode, Hello, Message, ResumeStatus, SessionHello, Violation, WireCodec,
    WireError, MAX_CLOSE_REASON, MIN_MAX_MESSAGE_LEN, PROTOCOL_VERSION,
};

mod common;
mod config;
mod event;
mod session_link;
/// A session that ended: what its peer never acknowledged is handed back as
/// [`Event::SessionLost`] (if anything).
fn hand_back_unacked(session: &mut Session, events: &mut VecDeque<Event>) {
    let unacked = session.take_unacked();
    if !unacked.is_empty() {
        let id = session.id();
        events.push_back(Event::SessionLost { id, unacked });
    }
}

/// Removes from `session` the messages never sent that a peer accepting at most `peer_max`
/// bytes per message (an SDATA: type byte, sequence number, payload) can never take, each
/// reported as [`Event::MessageDropped`].
fn drop_unsendable(session: &mut Session, peer_max: u32, events: &mut VecDeque<Event>) {
    let fits = |p: &Bytes| p.len() as u64 + 1 + 8 <= u64::from(peer_max);
    for payload in session.remove_unsendable(fits) {
        events.push_back(Event::MessageDropped {
            len: payload.len(),
            peer_max,
        });
    }
}

#[cfg(test)]
mod tests;

pub(crate) use common::ConnectionCore;
pub use config::{ConfigError, ConnectionConfig, DEFAULT_FRAME_TIMEOUT};
pub use event::{ConnectionError, Event, SendError, State, Stats};
use session_link::SessionLink;

/// DATA payloads longer than this are written without copying (header and payload as two separate
/// [`Connection::poll_transmit`](Machine::poll_transmit) results); shorter ones are
/// copied into one buffer.
pub const COPY_THRESHOLD: usize = 1024;
/// Small messages are packed into one transmit chunk up to this size.
pub(crate) const COALESCE: usize = 16 * 1024;

/// Bytes of framing per DATA message: the 4-byte length and the type byte.
pub(crate) const DATA_OVERHEAD: usize = 5;

/// The lowest protocol version this implementation speaks.
const LOWEST_VERSION: u8 = 1;

/// Our pending CLOSE.
#[derive(Debug, Clone)]
struct PendingClose {
    code: CloseCode,
    reason: String,
    /// Write queued DATA first (local graceful close).
    after_data: bool,
    /// When output last went out while this close was pending (stamped by the first
    /// `poll_transmit` after the decision): with no output for `linger`, the close is given
    /// up on (a peer that stops reading would otherwise hold it forever).
    progress: Option<Instant>,
}

/// Where our own CLOSE is: one state, with what each state needs.
#[derive(Debug, Clone)]
enum OurClose {
    /// No close of ours asked for.
    None,
    /// A local close asked for during the handshake with DATA queued: carried out once the
    /// peer's HELLO is accepted, so that the queued DATA goes out before our CLOSE.
    Deferred { code: CloseCode, reason: String },
    /// Our CLOSE is to be written.
    Pending(PendingClose),
    /// Our CLOSE was transmitted at this instant.
    Sent(Instant),
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
    /// Input, keep-alive, idle timeout, DATA queue, events and counters, shared with raw mode.
    core: ConnectionCore<Bytes>,
    pong: Option<Bytes>,
    ping: Option<[u8; 8]>,
    /// The payload of a DATA message whose header was already transmitted.
    partial: Option<Bytes>,
    our_close: OurClose,
    /// Boxed: most connections have none, and this keeps their footprint small.
    session: Option<Box<SessionLink>>,
    /// Accepting side with sessions: the nonce our offer carried, that a resume's proof must
    /// be bound to.
    offer_nonce: Option<[u8; 16]>,
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
        let core = ConnectionCore::new(now, None, config.frame_timeout, config.idle_timeout);
        Ok(Connection {
            config,
            codec,
            state: State::Handshaking,
            hello_sent: false,
            handshake_deadline,
            peer: None,
            core,
            pong: None,
            ping: None,
            partial: None,
            our_close: OurClose::None,
            session: None,
            offer_nonce: None,
        })
    }

    /// A connection (connecting side) that asks the peer for `session`: a fresh one
    /// ([`Session::new`] with a random id), or the one a previous connection gave back with
    /// [`take_session`](Machine::take_session). Messages sent on it are numbered,
    /// kept until the peer acknowledges them, and resent after a reconnect; see [`crate::session`].
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

    // ---- accessors ----

    /// The configuration.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// The peer's HELLO, once received.
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// What a message adds to its payload within the peer's `max_message_len`: the type byte,
    /// and on a session the SDATA sequence number (section 12).
    fn message_header_len(&self) -> u64 {
        if self.session.is_some() {
            1 + 8
        } else {
            1
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.core.stats
    }

    // ---- input ----

    /// Copies `data` into the receive buffer and processes it.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.core.recv_buf().extend_from_slice(data);
        self.process_input(now);
    }

    /// When the partial message at the front of the receive buffer times out, if one does.
    fn frame_deadline(&self) -> Option<Instant> {
        self.core
            .frame_deadline(matches!(self.state, State::Handshaking | State::Open))
    }

    /// The partial message took too long: close with code 3, saying how much of it arrived.
    fn frame_timed_out(&mut self) {
        let e = self.core.frame_timeout_error(self.pending_frame_len());
        self.fail(CloseCode::PeerTimedOut, e.to_string(), e, false);
        // Its memory goes at once.
        self.core.free_input();
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
                    self.core.stats.data_in += 1;
                    self.core.touch_data(now);
                    self.core.events.push_back(Event::Data(body));
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
                    if let Some(lv) = &mut self.core.liveness {
                        if lv.on_ping(now) == PingAction::Pong {
                            // At most one pending PONG: the newest PING wins.
                            self.pong = Some(context);
                        }
                    }
                }
                Message::Pong(context) => {
                    if let (Some(lv), Ok(ctx)) =
                        (&mut self.core.liveness, <[u8; 8]>::try_from(&context[..]))
                    {
                        if let Some(sample) = lv.on_pong(ctx, now) {
                            self.core.events.push_back(Event::Rtt(sample));
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
                    self.core.stop_input();
                    self.enter_closed();
                }
                // The peer's final ACK before its CLOSE releases what it delivered: only what
                // this connection carried, as in OPEN (an ACK beyond it is ignored here, the
                // connection being on its way out; the messages stay unacknowledged).
                Message::Ack(seq) => {
                    if let Some(link) = self.session.as_mut().filter(|l| l.active) {
                        let transmitted = link.transmitted;
                        if let Some(session) = link.state.as_mut().filter(|_| seq <= transmitted) {
                            let _ = session.ack(seq);
                        }
                    }
                }
                _ => {}
            },
            State::Closed => self.core.stop_input(),
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
            self.core.stop_input();
            return;
        };
        let liveness = match Liveness::new(self.config.liveness_config(Some(&hello)), now) {
            Ok(lv) => lv,
            Err(e) => {
                let e = ConnectionError::Liveness(e);
                self.fail(CloseCode::ProtocolError, e.to_string(), e, false);
                self.core.stop_input();
                return;
            }
        };
        self.core.liveness = Some(liveness);
        self.state = State::Open;
        self.core.touch_data(now);
        let peer_max = hello.max_message_len;
        self.peer = Some(hello.clone());
        self.core.events.push_back(Event::Connected {
            peer: Box::new(hello),
            version,
        });
        // Sessions (section 12): we asked and the peer must offer; or the peer asks.
        let peer_session = self.peer.as_ref().and_then(SessionHello::from_hello);
        match self.session.as_deref_mut() {
            Some(link) if link.requester => {
                let Some(SessionHello::Offer { nonce }) = peer_session else {
                    let e = ConnectionError::SessionUnavailable;
                    self.fail(CloseCode::UnsupportedVersion, e.to_string(), e, false);
                    self.core.stop_input();
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
                        self.core.events.push_back(Event::SessionRequest {
                            id,
                            peer_delivered: delivered,
                            proof: None,
                        });
                    }
                }
            }
        }
        // Messages queued before we knew the peer's limit.
        let mut kept = VecDeque::with_capacity(self.core.queue.len());
        for payload in self.core.queue.drain(..) {
            if payload.len() as u64 + 1 > u64::from(peer_max) {
                self.core.queued_bytes -= payload.len() + DATA_OVERHEAD;
                self.core.events.push_back(Event::MessageDropped {
                    len: payload.len(),
                    peer_max,
                });
            } else {
                kept.push_back(payload);
            }
        }
        self.core.queue = kept;
        // The same for a session's messages never sent (their numbers are still ours to
        // change): those queued before this connection knew the limit (before the first
        // HELLO, or between connections); afterwards `send` checks the known limit.
        if let Some(session) = self.session.as_mut().and_then(|l| l.state.as_mut()) {
            drop_unsendable(session, peer_max, &mut self.core.events);
        }
        if let OurClose::Deferred { code, reason } =
            std::mem::replace(&mut self.our_close, OurClose::None)
        {
            self.close(code, &reason, now);
        }
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
        self.core.stop_input();
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
        self.core.stop_input();
        self.core.report_closed(code, reason, true, None);
        if matches!(self.our_close, OurClose::None | OurClose::Deferred { .. }) {
            self.our_close = OurClose::Pending(PendingClose {
                progress: None,
                code,
                reason: String::new(),
                after_data: false,
            });
        }
        self.enter_closed();
    }

    // ---- output ----

    /// Counts `n` DATA / SDATA messages just transmitted at `now`.
    fn data_sent(&mut self, n: u64, now: Instant) {
        if n == 0 {
            return;
        }
        self.core.stats.messages_out += n;
        self.core.stats.data_out += n;
        self.core.touch_data(now);
        if let Some(lv) = &mut self.core.liveness {
            lv.on_send_data(now);
        }
    }

    /// What [`poll_transmit`](Machine::poll_transmit) hands out next.
    fn transmit(&mut self, now: Instant) -> Option<Bytes> {
        if matches!(self.our_close, OurClose::Sent(_)) {
            return None;
        }
        if let Some(payload) = self.partial.take() {
            self.core.count_out(payload.len());
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
            && match (&self.our_close, self.state) {
                (OurClose::None | OurClose::Deferred { .. }, State::Open) => true,
                (OurClose::Pending(c), State::Closing) => c.after_data,
                _ => false,
            };
        if matches!(self.our_close, OurClose::Pending(_))
            && (!data_allowed || !self.has_pending_data())
        {
            // Let the peer release what we delivered before the session pauses or ends.
            if let Some(ack) = self.take_ack(now, true) {
                self.encode(&ack, &mut buf, now);
                return self.out(buf);
            }
            let OurClose::Pending(close) =
                std::mem::replace(&mut self.our_close, OurClose::Sent(now))
            else {
                unreachable!("checked above");
            };
            let message = Message::Close {
                code: close.code,
                reason: close.reason,
            };
            self.encode(&message, &mut buf, now);
            self.core.drop_queue();
            self.core.events.push_back(Event::ShutdownWrite);
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
        if data_allowed && !self.core.queue.is_empty() {
            let mut sent = 0;
            while let Some(payload) = self.core.queue.front() {
                // Checked against the peer's limit in `send` / `on_hello`.
                let mut header = [0; DATA_OVERHEAD];
                header[..4].copy_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
                header[4] = Message::DATA;
                let Some(copied) = pack_message(&mut buf, &header, payload) else {
                    break;
                };
                let payload = self.core.queue.pop_front().expect("front exists");
                self.core.queued_bytes -= payload.len() + DATA_OVERHEAD;
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

    /// Queues an application message; `bounded`: refused beyond `max_queued_bytes`.
    fn queue_message(&mut self, payload: Bytes, bounded: bool) -> Result<(), SendError> {
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
        if payload.len() as u64 + self.message_header_len() > u64::from(max) {
            return Err(SendError::TooBig {
                len: payload.len(),
                max,
            });
        }
        if let Some(session) = self.session.as_mut().and_then(|l| l.state.as_mut()) {
            // Numbered and kept until acknowledged: the queue limit bounds the retransmit
            // buffer.
            let limit = if bounded {
                self.config
                    .max_queued_bytes
                    .saturating_sub(self.core.queued_bytes)
            } else {
                usize::MAX
            };
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
        if bounded && self.core.queued_bytes.saturating_add(len) > self.config.max_queued_bytes {
            return Err(SendError::QueueFull {
                queued: self.core.queued_bytes,
                len,
                limit: self.config.max_queued_bytes,
            });
        }
        self.core.queued_bytes += len;
        self.core.queue.push_back(payload);
        Ok(())
    }

    /// DATA is waiting to be written (queued, or in the session and not transmitted yet).
    fn has_pending_data(&self) -> bool {
        // With a session negotiated, queued messages go out only in it, once it is attached:
        // a close before that (a refused session, say) does not wait for them.
        if !self.core.queue.is_empty() && self.session.is_none() {
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

    fn out(&mut self, buf: BytesMut) -> Option<Bytes> {
        if buf.is_empty() {
            return None;
        }
        self.core.count_out(buf.len());
        Some(buf.freeze())
    }

    /// Encodes a control message (our own, always valid) and records the send.
    fn encode(&mut self, message: &Message, buf: &mut BytesMut, now: Instant) {
        if self.codec.encode(message, buf).is_ok() {
            self.core.stats.messages_out += 1;
            if let Some(lv) = &mut self.core.liveness {
                lv.on_send(now);
            }
        }
    }

    // ---- timers ----

    fn drain_liveness(&mut self, _now: Instant) {
        while let Some(event) = self.core.poll_liveness() {
            match event {
                LivenessEvent::SendPing { context } => {
                    if self.state == State::Open {
                        self.ping = Some(context);
                    }
                }
                // Reported by the core.
                LivenessEvent::Idle(_) => {}
                LivenessEvent::PeerDead {
                    silent_for, cause, ..
                } => {
                    let e = ConnectionError::PeerDead { silent_for, cause };
                    self.fail(CloseCode::PeerTimedOut, e.to_string(), e, true);
                    self.core.stop_input();
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
                    self.core.stop_input();
                }
            }
        }
    }

    // ---- closing ----

    /// We close because something went wrong: queued DATA is discarded, CLOSE is queued (unless
    /// one is already pending or sent), the [`Event::Closed`] is reported once.
    fn fail(&mut self, code: CloseCode, reason: String, error: ConnectionError, closed: bool) {
        let reason = truncate(&reason);
        self.core
            .report_closed(code, reason.clone(), false, Some(error));
        self.core.drop_queue();
        self.pong = None;
        self.ping = None;
        match &mut self.our_close {
            OurClose::Pending(pending) => pending.after_data = false,
            OurClose::None | OurClose::Deferred { .. } => {
                self.our_close = OurClose::Pending(PendingClose {
                    progress: None,
                    code,
                    reason,
                    after_data: false,
                })
            }
            OurClose::Sent(_) => {}
        }
        match self.state {
            State::Handshaking | State::Open if !closed => self.state = State::Closing,
            State::Closed => {}
            _ => self.enter_closed(),
        }
    }

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        if let Some(link) = self.session.as_mut().filter(|l| l.ended) {
            if let Some(session) = link.state.as_mut() {
                hand_back_unacked(session, &mut self.core.events);
            }
        }
        self.core.drop_queue();
        self.pong = None;
        self.ping = None;
        if let OurClose::Pending(close) = &mut self.our_close {
            close.after_data = false;
        }
    }
}

impl Machine for Connection {
    /// The receive buffer: read socket bytes into it (e.g. with `BufMut`), then call
    /// [`process_input`](Machine::process_input). Don't remove bytes from it.
    fn recv_buf(&mut self) -> &mut BytesMut {
        self.core.recv_buf()
    }

    /// Handles the bytes added to [`recv_buf`](Machine::recv_buf) since the last
    /// call.
    fn process_input(&mut self, now: Instant) {
        self.core.begin_input(now, true);
        let mut decoded = false;
        while let Some(recv) = self.core.decodable() {
            match self.codec.decode(recv) {
                Ok(Some(message)) => {
                    decoded = true;
                    self.core.stats.messages_in += 1;
                    self.on_message(message, now);
                }
                Ok(None) => break,
                Err(e) => {
                    let code = e.close_code();
                    self.fail(code, e.to_string(), ConnectionError::Wire(e), false);
                    self.core.stop_input();
                }
            }
        }
        self.core.end_input(decoded, now);
        self.drain_liveness(now);
    }

    /// Full length of the partial message at the front of the receive buffer, once its length field
    /// is in (see [`Machine::pending_frame_len`]).
    fn pending_frame_len(&self) -> Option<usize> {
        let len = self.codec.pending_frame_length(self.core.recv())?;
        usize::try_from(len).ok()
    }

    /// Round-trip-time estimate from PING / PONG pairs.
    fn rtt(&self) -> Option<RttEstimate> {
        self.core.liveness.as_ref().and_then(Liveness::rtt)
    }

    /// The peer ended its write half (TCP FIN) or the transport failed: the connection is closed.
    fn handle_eof(&mut self, now: Instant) {
        if self.core.has_new_input() {
            self.process_input(now);
        }
        let mid_message = !self.core.input_done() && !self.core.recv().is_empty();
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
        self.enter_closed();
    }

    /// The next bytes to write, if any. Call until `None` after every input.
    fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let out = self.transmit(now);
        // A pending close makes progress while its output goes out (see `close_stalled`).
        if let OurClose::Pending(close) = &mut self.our_close {
            if out.is_some() || close.progress.is_none() {
                close.progress = Some(now);
            }
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
                    self.core.liveness_timeout(),
                    self.core.idle_deadline(),
                    ack_due,
                    proof_due,
                    self.frame_deadline(),
                ]
                .into_iter()
                .flatten()
                .min()
            }
            State::Closing => match &self.our_close {
                OurClose::Sent(at) => Some(at.checked_add(self.config.linger).unwrap_or(*at)),
                OurClose::Pending(PendingClose {
                    progress: Some(at), ..
                }) => {
                    let stalled = at.checked_add(self.config.linger).unwrap_or(*at);
                    Some(
                        self.core
                            .liveness_timeout()
                            .map_or(stalled, |l| l.min(stalled)),
                    )
                }
                _ => self.core.liveness_timeout(),
            },
            State::Closed => None,
        }
    }

    /// Handles whatever timers are due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
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
                self.core.stop_input();
            }
            State::Open
                if now >= self.handshake_deadline
                    && self.session.as_ref().is_some_and(|l| l.awaiting_proof) =>
            {
                let e = ConnectionError::HandshakeTimeout {
                    timeout: self.config.handshake_timeout,
                };
                self.fail(CloseCode::PeerTimedOut, format!("{e} (AUTH)"), e, false);
                self.core.stop_input();
            }
            State::Open => {
                self.core.handle_liveness_timeout(now);
                self.drain_liveness(now);
                if self.state == State::Open
                    && self.core.idle_deadline().is_some_and(|at| now >= at)
                {
                    let reason = self.core.idle_reason();
                    self.close(CloseCode::Idle, &reason, now);
                }
            }
            State::Closing => match self.our_close {
                OurClose::Sent(at) if now >= at.checked_add(self.config.linger).unwrap_or(at) => {
                    self.core.stop_input();
                    self.enter_closed();
                }
                OurClose::Sent(_) => {}
                OurClose::Pending(PendingClose {
                    progress: Some(at), ..
                }) if now >= at.checked_add(self.config.linger).unwrap_or(at) => {
                    // Nothing went out for `linger`: the peer does not read. Give up on the
                    // CLOSE and what was queued before it (handed back as unsent).
                    self.core.stop_input();
                    self.enter_closed();
                }
                _ => {
                    self.core.handle_liveness_timeout(now);
                    self.drain_liveness(now);
                }
            },
            _ => {}
        }
    }

    /// Queues an application message. Allowed while handshaking (written once the handshake is
    /// done); refused once closing, except with a session that did not end: the message then
    /// stays in the session and goes out on the next connection.
    fn send(&mut self, payload: Bytes, _now: Instant) -> Result<(), SendError> {
        self.queue_message(payload, true)
    }

    /// [`send`](Machine::send) without the queue limit: for a driver whose send budget
    /// admitted `payload` (see [`Machine::send_checked`]).
    fn send_checked(&mut self, payload: Bytes, _now: Instant) -> Result<(), SendError> {
        self.queue_message(payload, false)
    }

    /// Closes the connection gracefully: queued DATA is written, then CLOSE with `code` and
    /// `reason` (truncated to 1024 bytes at a character boundary). No-op once closing.
    fn close(&mut self, code: CloseCode, reason: &str, _now: Instant) {
        if !matches!(self.state, State::Handshaking | State::Open) {
            return;
        }
        if self.state == State::Handshaking && !self.core.queue.is_empty() {
            // DATA may only go out once the peer's HELLO is accepted: close after that.
            if !matches!(self.our_close, OurClose::Deferred { .. }) {
                self.our_close = OurClose::Deferred {
                    code,
                    reason: reason.to_string(),
                };
            }
            return;
        }
        let code = CloseCode::from_u16(code.as_u16());
        if code == CloseCode::Normal {
            self.end_session();
        }
        let reason = truncate(reason);
        self.core.report_closed(code, reason.clone(), false, None);
        self.our_close = OurClose::Pending(PendingClose {
            progress: None,
            code,
            reason,
            after_data: true,
        });
        self.state = State::Closing;
        self.pong = None;
        self.ping = None;
    }

    /// Closes at once: queued messages and buffered input are dropped, our CLOSE (`code`, `reason`)
    /// is the next thing written, [`Event::Closed`] carries [`ConnectionError::Aborted`]. For a
    /// runtime that must free the connection's memory now (a server over its memory budget);
    /// [`close`](Machine::close) is the graceful way. No-op once closed.
    fn abort(&mut self, code: CloseCode, reason: &str, _now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let e = ConnectionError::Aborted {
            reason: reason.to_owned(),
        };
        self.fail(code, reason.to_owned(), e, false);
        self.core.free_input();
    }

    /// The current state.
    fn state(&self) -> State {
        self.state
    }

    /// Nothing will ever come out of [`poll_transmit`](Machine::poll_transmit)
    /// again: our CLOSE was transmitted, or the connection closed without one to send.
    fn is_drained(&self) -> bool {
        matches!(self.our_close, OurClose::Sent(_))
            || (self.state == State::Closed
                && !matches!(self.our_close, OurClose::Pending(_))
                && self.partial.is_none())
    }

    /// Bytes of DATA queued (payload + 5 per message), counting against
    /// [`ConnectionConfig::max_queued_bytes`].
    fn queued_bytes(&self) -> usize {
        let session = self
            .session
            .as_ref()
            .and_then(|l| l.state.as_ref())
            .map_or(0, Session::buffered_bytes);
        self.core.queued_bytes + session
    }

    fn max_queued_bytes(&self) -> usize {
        self.config().max_queued_bytes
    }

    /// What a message of `len` payload bytes counts against
    /// [`ConnectionConfig::max_queued_bytes`]: its framing, plus its sequence number when
    /// sessions are (or may be) in use.
    fn message_cost(&self, len: usize) -> usize {
        if self.session.is_some() || self.config.sessions.is_some() {
            len.saturating_add(SDATA_OVERHEAD)
        } else {
            len.saturating_add(DATA_OVERHEAD)
        }
    }

    fn check_message(&self, payload: &[u8]) -> Result<(), SendError> {
        let max = self.peer_hello().map_or(u32::MAX, |h| h.max_message_len);
        if payload.len() as u64 + self.message_header_len() > u64::from(max) {
            return Err(SendError::TooBig {
                len: payload.len(),
                max,
            });
        }
        Ok(())
    }

    fn linger(&self) -> Duration {
        self.config().linger
    }

    /// The peer's `max_message_len` less the message header: the type byte, and with a
    /// session the SDATA sequence number.
    fn max_payload_len(&self) -> Option<u64> {
        let max = self.peer_hello()?.max_message_len;
        Some(u64::from(max).saturating_sub(self.message_header_len()))
    }

    /// Frees the memory of empty internal queues (events, outgoing DATA, keep-alive events).
    /// Nothing observable changes; a driver of many mostly idle connections calls it when the
    /// connection has been quiet (e.g. when its timer fires) to keep their footprint small.
    fn shrink_buffers(&mut self) {
        self.core.shrink_buffers();
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
    fn attach_session(&mut self, found: Option<Session>, now: Instant) -> Result<(), Session> {
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
        if link.ended {
            // The peer ended the session (CLOSE `Normal`) while it was being looked up: nothing
            // will resume it. What its peer never acknowledged is handed back, not dropped with
            // it.
            hand_back_unacked(&mut session, &mut self.core.events);
            return Ok(());
        }
        session.set_established();
        // Messages the application sent before the session was attached join it.
        for payload in self.core.queue.drain(..) {
            self.core.queued_bytes -= payload.len() + DATA_OVERHEAD;
            let _ = session.push(payload, usize::MAX);
        }
        // Messages queued in the session while it was detached were checked against no limit.
        if let Some(peer_max) = self.peer.as_ref().map(|h| h.max_message_len) {
            drop_unsendable(&mut session, peer_max, &mut self.core.events);
        }
        let delivered = session.delivered();
        // Only what went out before and was not delivered is sent again; messages queued
        // since are sent for the first time.
        let resending = session.transmitted().saturating_sub(session.acked());
        link.transmitted = session.acked();
        link.ack_sent = delivered;
        link.resume = Some((status, delivered, new_secret));
        link.active = true;
        link.state = Some(session);
        self.core.events.push_back(Event::SessionStarted {
            id,
            status,
            resending,
        });
        Ok(())
    }

    /// Accepting side, after [`Event::SessionRequest`]: refuses the session asked for (its
    /// proof is wrong, or it is in use and the request proved nothing): closes with
    /// [`CloseCode::SessionRefused`] and `reason`. Whatever holds the session is not disturbed.
    fn refuse_session(&mut self, reason: &str, now: Instant) {
        if let Some(link) = self.session.as_mut().filter(|l| !l.requester) {
            link.awaiting_proof = false;
            link.ended = true;
        }
        self.close(CloseCode::SessionRefused, reason, now);
    }

    /// Messages the application queued that were never written because the connection closed
    /// first (outside a session: a session keeps them for the next connection). They did not
    /// reach the peer; taken once.
    fn take_unsent(&mut self) -> Vec<Bytes> {
        self.core.take_unsent()
    }

    /// The session's state, while one is attached.
    fn session(&self) -> Option<&Session> {
        self.session.as_ref()?.state.as_ref()
    }

    /// The session, once this connection is closed (to resume it on the next connection, or
    /// to keep it detached on the accepting side). `None` when there is none, or when it ended
    /// with a CLOSE `Normal` from either side (nothing to resume).
    fn take_session(&mut self) -> Option<Session> {
        let link = self.session.as_mut()?;
        if link.ended {
            return None;
        }
        link.state.take()
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
