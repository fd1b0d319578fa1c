//! The session part of the [`Connection`] machine (section 12): the [`SessionLink`] a
//! connection carries, attaching, refusing and taking the session, AUTH / RESUME / ACK / SDATA
//! handling and ACK scheduling.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::*;

/// A session on this connection (section 12).
#[derive(Debug)]
pub(super) struct SessionLink {
    /// We asked for the session (connecting side); otherwise the peer did.
    pub(super) requester: bool,
    pub(super) policy: SessionConfig,
    /// The session; `None` on the accepting side until
    /// [`Connection::attach_session`](crate::machine::Machine::attach_session).
    pub(super) state: Option<Session>,
    /// The peer's announced `delivered` (HELLO request, or RESUME).
    pub(super) peer_delivered: u64,
    /// Accepting side: the proof the peer's AUTH carried.
    pub(super) proof: Option<ResumeProof>,
    /// RESUME done: SDATA flows.
    pub(super) active: bool,
    /// Accepting side: the RESUME to transmit (with the secret of a new session).
    pub(super) resume: Option<(ResumeStatus, u64, Option<SessionSecret>)>,
    /// Accepting side: the peer asked to resume (role 3); its AUTH has not arrived yet.
    pub(super) awaiting_proof: bool,
    /// Requester: the AUTH to transmit, proving the session's secret.
    pub(super) auth: Option<[u8; PROOF_LEN]>,
    /// The last sequence number transmitted on this connection.
    pub(super) transmitted: u64,
    /// The last delivered sequence number the peer knows about (ACKed or announced).
    pub(super) ack_sent: u64,
    /// When an ACK is due for deliveries not acknowledged yet.
    pub(super) ack_due: Option<Instant>,
    /// The session ended with a CLOSE `Normal`: there is nothing to resume.
    pub(super) ended: bool,
}

impl SessionLink {
    pub(super) fn new(requester: bool, policy: SessionConfig, state: Option<Session>) -> Self {
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
    pub(super) fn unacked_deliveries(&self) -> u64 {
        self.state
            .as_ref()
            .map_or(0, |s| s.delivered().saturating_sub(self.ack_sent))
    }
}

impl Connection {
    pub(super) fn on_session_data(&mut self, seq: u64, payload: Bytes, now: Instant) {
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
                self.core.stats.data_in += 1;
                self.core.touch_data(now);
                self.core.events.push_back(Event::Data(payload));
            }
            Received::Duplicate => self.core.stats.duplicates += 1,
            Received::Gap { expected } => {
                self.session_violation("SDATA sequence number", format!("{expected}"), seq)
            }
        }
    }

    pub(super) fn on_ack(&mut self, seq: u64) {
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
    pub(super) fn on_auth(&mut self, mac: [u8; PROOF_LEN]) {
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
        self.core.events.push_back(Event::SessionRequest {
            id,
            peer_delivered: link.peer_delivered,
            proof: Some(Box::new(proof)),
        });
    }

    pub(super) fn on_resume(
        &mut self,
        status: ResumeStatus,
        delivered: u64,
        secret: Option<SessionSecret>,
    ) {
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
                self.core
                    .events
                    .push_back(Event::SessionLost { id, unacked });
            }
        } else if let Err(e) = session.ack(delivered) {
            return self.session_violation("RESUME delivered", e.to_string(), delivered);
        }
        // The wire guarantees a secret exactly with `new` and `unknown`.
        if let Some(secret) = secret {
            session.set_secret(secret);
        }
        session.set_established();
        // Only what went out before and was not delivered is sent again; messages queued
        // since are sent for the first time.
        let resending = session.transmitted().saturating_sub(session.acked());
        link.transmitted = session.acked();
        link.ack_sent = session.delivered();
        link.peer_delivered = delivered;
        link.active = true;
        self.core.events.push_back(Event::SessionStarted {
            id,
            status,
            resending,
        });
    }

    /// A session message that does not fit the connection: protocol error.
    pub(super) fn session_protocol_error(&mut self, what: &'static str, why: &'static str) {
        self.protocol_violation(Violation::Unexpected { what, why });
    }

    /// A session sequence number that cannot be right: protocol error.
    pub(super) fn session_violation(&mut self, what: &'static str, expected: String, got: u64) {
        self.protocol_violation(Violation::SessionSequence {
            what,
            got,
            expected,
        });
    }

    /// A CLOSE `Normal` (either way) ends the session: nothing to resume. Messages the peer
    /// did not acknowledge are handed back when the connection is closed.
    /// Requester: the peer refused our session. It cannot go on under this id: the next
    /// connection asks for a new one under a fresh id, and what the peer never acknowledged
    /// comes back to the application.
    pub(super) fn session_refused(&mut self) {
        let Some(link) = self.session.as_mut().filter(|l| l.requester && !l.ended) else {
            return;
        };
        if let Some(session) = link.state.as_mut() {
            let id = session.id();
            let unacked = session.start_over(random_bytes());
            if !unacked.is_empty() {
                self.core
                    .events
                    .push_back(Event::SessionLost { id, unacked });
            }
        }
    }

    pub(super) fn end_session(&mut self) {
        if let Some(link) = self.session.as_mut() {
            link.ended = true;
        }
    }

    /// An ACK to send now, if one is due: deliveries not acknowledged yet and either enough of
    /// them, the ack delay over, or `force` (ahead of SDATA or CLOSE).
    pub(super) fn take_ack(&mut self, now: Instant, force: bool) -> Option<Message> {
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
    pub(super) fn transmit_session_data(&mut self, now: Instant) -> Option<Bytes> {
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
}
