//! Acknowledged sessions: the state that outlives a connection so that no message is lost or
//! duplicated across reconnects (section 12 of `docs/PROTOCOL.md`).
//!
//! A [`Session`] holds both directions of one session:
//!
//! - **sending**: every message gets the next sequence number (1, 2, ...) and stays in a bounded
//!   retransmit buffer until the peer's cumulative ACK covers it. After a reconnect, sending
//!   starts again right after the last sequence number the peer says it delivered.
//! - **receiving**: the last sequence number delivered to the application; anything at or
//!   below it is a duplicate and dropped, anything beyond the next one is a gap (impossible over
//!   one TCP connection: a protocol error).
//!
//! The protocol [`Connection`](crate::connection::Connection) drives a session while it is
//! attached: [`Connection::with_session`](crate::connection::Connection::with_session) on the
//! connecting side, [`Connection::attach_session`](crate::machine::Machine::attach_session)
//! on the accepting side, and [`Connection::take_session`](crate::machine::Machine::take_session)
//! to get it back after the connection closed, to keep it for the next one (or in a
//! [`SessionStore`] on the accepting side). Like everything in this crate it does no I/O and
//! reads no clock.
//!
//! ```
//! use bytes::Bytes;
//! use framelink_proto::session::{Received, Session};
//!
//! let mut alice = Session::new([1; 16]);
//! let mut bob = Session::new([1; 16]);
//! let seq = alice.push(Bytes::from_static(b"hi"), usize::MAX).unwrap();
//! assert_eq!(seq, 1);
//! assert_eq!(bob.receive(1), Received::Deliver);
//! assert_eq!(bob.receive(1), Received::Duplicate); // a resend after a reconnect
//! alice.mark_transmitted(seq); // the connection does this as the SDATA goes out
//! alice.ack(bob.delivered()).unwrap();
//! assert!(alice.ack(0).is_err()); // below what was acknowledged: a forged or broken peer
//! assert_eq!(alice.unacked_len(), 0);
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::{ResumeProof, SessionSecret};

/// Bytes each buffered message counts for on top of its payload (the SDATA header).
pub const SDATA_OVERHEAD: usize = 13;

/// Session limits and acknowledgement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Send an ACK after this many delivered messages since the last one. Default 32.
    pub ack_every: u32,
    /// ... or this long after the first message not yet acknowledged, whichever comes first.
    /// An ACK also goes out ahead of any SDATA we send. Default 10 ms.
    pub ack_delay: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ack_every: 32,
            ack_delay: Duration::from_millis(10),
        }
    }
}

/// What to do with a received sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The next one: deliver it (already counted as delivered).
    Deliver,
    /// Delivered before (a resend): drop it.
    Duplicate,
    /// Beyond the next one: messages are missing, which TCP cannot do. Protocol error.
    Gap {
        /// The sequence number that was due.
        expected: u64,
    },
}

/// Why a session operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The retransmit buffer is full: wait for acknowledgements.
    #[error(
        "session send buffer full: {buffered} bytes buffered, {len} more would exceed {limit}"
    )]
    BufferFull {
        /// Bytes buffered (payload + 13 per message).
        buffered: usize,
        /// Bytes this message would add.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer acknowledged (or claimed to have delivered) a sequence number outside
    /// `acked..=transmitted`: below what it acknowledged before (it cannot un-deliver), or
    /// beyond what was ever put on the wire (accepting it would drop messages it never saw).
    #[error("peer acknowledged {got}, but only {acked}..={transmitted} is possible")]
    BadAck {
        /// The number received.
        got: u64,
        /// What was already acknowledged.
        acked: u64,
        /// The highest sequence number transmitted in this session, on any connection.
        transmitted: u64,
    },
}

/// One session's state, both directions. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    id: [u8; 16],
    /// Sequence number of `buffer[0]`; everything before it is acknowledged.
    base: u64,
    /// Sent (or to be sent) and not yet acknowledged, from `base` on.
    buffer: VecDeque<Bytes>,
    /// Payload + [`SDATA_OVERHEAD`] per message in `buffer`.
    buffered_bytes: usize,
    /// The last sequence number of the peer's messages delivered to the application.
    delivered: u64,
    /// The peer confirmed this session at least once (a RESUME, either status).
    established: bool,
    /// The highest sequence number put on the wire in this session, on any connection: the
    /// most the peer can have delivered.
    transmitted: u64,
    /// The secret the accepting side issued with the session (known once RESUME `new` or
    /// `unknown` created it); a resume proves knowledge of it.
    secret: Option<SessionSecret>,
}

impl Session {
    /// A new, empty session named `id` (not all zero: that means "no session" on the wire).
    pub fn new(id: [u8; 16]) -> Self {
        Session {
            id,
            base: 1,
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            delivered: 0,
            established: false,
            transmitted: 0,
            secret: None,
        }
    }

    /// The session id.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The sequence number the next pushed message gets.
    pub fn next_seq(&self) -> u64 {
        self.base + self.buffer.len() as u64
    }

    /// Everything up to here is acknowledged by the peer.
    pub fn acked(&self) -> u64 {
        self.base - 1
    }

    /// The last sequence number of the peer's messages delivered here.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Messages not yet acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes they count for (payload + [`SDATA_OVERHEAD`] each).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// The peer confirmed the session at least once.
    pub fn is_established(&self) -> bool {
        self.established
    }

    pub(crate) fn set_established(&mut self) {
        self.established = true;
    }

    /// The session's secret, once the accepting side issued it (see [`crate::auth`]).
    pub fn secret(&self) -> Option<&SessionSecret> {
        self.secret.as_ref()
    }

    /// Sets the secret (the connection does this from RESUME; a requester restoring a session
    /// it persisted sets it back).
    pub fn set_secret(&mut self, secret: SessionSecret) {
        self.secret = Some(secret);
    }

    /// Accepting side: nothing shows that the requester ever received this session's RESUME
    /// (it never sent an SDATA in it, nor acknowledged one). Such a session may be replaced by
    /// a new one when a request without proof names it: nothing in it belongs to anyone else.
    pub fn unproven(&self) -> bool {
        self.delivered == 0 && self.acked() == 0
    }

    /// Requester: the accepting side refused this session (CLOSE `SessionRefused`), so it goes
    /// on under `new_id`. Once established, its unacknowledged messages are taken (they may or
    /// may not have arrived) and it starts over; before that nothing of it was ever sent, so
    /// its messages stay, with their numbers.
    pub fn start_over(&mut self, new_id: [u8; 16]) -> Vec<Bytes> {
        let unacked = if self.established {
            self.reset()
        } else {
            Vec::new()
        };
        self.id = new_id;
        self.secret = None;
        unacked
    }

    /// Nothing sent, nothing received: a session nobody has used yet.
    pub fn is_fresh(&self) -> bool {
        self.base == 1 && self.buffer.is_empty() && self.delivered == 0
    }

    /// Removes the messages never put on the wire (numbered above
    /// [`transmitted`](Self::transmitted), on any connection) that `sendable` refuses, e.g.
    /// those longer than the peer accepts, learnt only from its HELLO, and returns them in
    /// order; the messages after each one removed move up a number. The peer has seen none of
    /// those numbers, so they are still ours to change; the numbers up to `transmitted` are
    /// fixed. Without this, a message the peer can never take would be resent, and refused,
    /// on every connection of the session.
    pub fn remove_unsendable(&mut self, sendable: impl Fn(&Bytes) -> bool) -> Vec<Bytes> {
        let never_sent = self.transmitted.saturating_add(1).saturating_sub(self.base);
        let first = usize::try_from(never_sent)
            .unwrap_or(usize::MAX)
            .min(self.buffer.len());
        if self.buffer.range(first..).all(&sendable) {
            return Vec::new();
        }
        let tail: Vec<Bytes> = self.buffer.drain(first..).collect();
        let (kept, removed): (Vec<Bytes>, Vec<Bytes>) = tail.into_iter().partition(|p| sendable(p));
        self.buffer.extend(kept);
        self.buffered_bytes = self.buffer.iter().map(|p| p.len() + SDATA_OVERHEAD).sum();
        removed
    }

    /// Appends a message to send, if the buffer stays within `limit` bytes; returns its
    /// sequence number.
    pub fn push(&mut self, payload: Bytes, limit: usize) -> Result<u64, SessionError> {
        let len = payload.len().saturating_add(SDATA_OVERHEAD);
        if self.buffered_bytes.saturating_add(len) > limit {
            return Err(SessionError::BufferFull {
                buffered: self.buffered_bytes,
                len,
                limit,
            });
        }
        let seq = self.next_seq();
        self.buffer.push_back(payload);
        self.buffered_bytes += len;
        Ok(seq)
    }

    /// The highest sequence number transmitted in this session (on any connection).
    pub fn transmitted(&self) -> u64 {
        self.transmitted
    }

    /// Message `seq` was put on the wire (the connection calls this as SDATA goes out).
    pub fn mark_transmitted(&mut self, seq: u64) {
        self.transmitted = self.transmitted.max(seq.min(self.next_seq() - 1));
    }

    /// The buffered message with sequence number `seq`, if not acknowledged yet.
    pub fn message(&self, seq: u64) -> Option<&Bytes> {
        let index = seq.checked_sub(self.base)?;
        self.buffer.get(usize::try_from(index).ok()?)
    }

    /// The peer delivered everything up to `seq`: drop it from the buffer. Anything outside
    /// `acked..=transmitted` is an error and changes nothing: acknowledging less than before
    /// (the peer cannot un-deliver), or more than was ever transmitted (those messages never
    /// reached it: treating them as delivered would lose them silently).
    pub fn ack(&mut self, seq: u64) -> Result<(), SessionError> {
        let acked = self.acked();
        if seq < acked || seq > self.transmitted {
            return Err(SessionError::BadAck {
                got: seq,
                acked,
                transmitted: self.transmitted,
            });
        }
        while self.base <= seq {
            if let Some(payload) = self.buffer.pop_front() {
                self.buffered_bytes -= payload.len() + SDATA_OVERHEAD;
            }
            self.base += 1;
        }
        if self.buffer.is_empty() {
            self.buffer = VecDeque::new();
        }
        Ok(())
    }

    /// Classifies a received sequence number; [`Received::Deliver`] counts it as delivered.
    pub fn receive(&mut self, seq: u64) -> Received {
        if seq <= self.delivered {
            Received::Duplicate
        } else if seq == self.delivered + 1 {
            self.delivered = seq;
            Received::Deliver
        } else {
            Received::Gap {
                expected: self.delivered + 1,
            }
        }
    }

    /// Takes the messages the peer never acknowledged (the session ended: they will not be
    /// resent), as if acknowledged; numbering and `delivered` are kept.
    pub fn take_unacked(&mut self) -> Vec<Bytes> {
        self.base = self.next_seq();
        // Counted as acknowledged, so as transmitted too (`acked <= transmitted` always).
        self.transmitted = self.base - 1;
        self.buffered_bytes = 0;
        std::mem::take(&mut self.buffer).into()
    }

    /// The session could not be resumed: takes the messages the peer never acknowledged (they
    /// may or may not have arrived) and starts over as a new session under the same id.
    pub fn reset(&mut self) -> Vec<Bytes> {
        let unacked = std::mem::take(&mut self.buffer).into();
        *self = Session::new(self.id);
        unacked
    }
}

/// What [`SessionStore::resolve`] decided for a session request.
#[derive(Debug)]
pub enum Resolution {
    /// The requester proved the session: attach it
    /// ([`Connection::attach_session`](crate::machine::Machine::attach_session) with it).
    Resume(Session),
    /// No such session: attach a new one (`attach_session(None)`).
    New,
    /// A new session replaces this one, which the requester never showed it had received:
    /// attach a new one, and report this one's unacknowledged messages as lost.
    Replace(Session),
    /// The session was kept, but its time ran out before a sweep
    /// ([`expire`](SessionStore::expire)) took it: attach a new one, and report this one lost
    /// (expired) with its unacknowledged messages, as the sweep would have.
    Expired(Session),
    /// Refuse the request
    /// ([`Connection::refuse_session`](crate::machine::Machine::refuse_session)) with
    /// this reason; nothing changed.
    Refuse(&'static str),
}

/// Detached sessions kept by the accepting side (a server) for a while, so that a client that
/// lost its connection can resume. Bounded in count and in time, and, for sessions detached
/// with an owner ([`detach_from`](Self::detach_from)), in count per owner: one address that
/// opens and drops sessions in a loop pushes out its own oldest sessions, not other clients'.
///
/// Finding the oldest session, and the expired ones, is logarithmic in the number kept (an
/// index by detach time), so a full store costs a churning client as little as an empty one.
///
/// ```
/// use std::time::{Duration, Instant};
/// use framelink_proto::session::{Session, SessionStore};
///
/// let t0 = Instant::now();
/// let mut store = SessionStore::new(Duration::from_secs(60), 10_000);
/// store.detach(Session::new([7; 16]), t0);
/// assert!(store.take(&[7; 16], t0 + Duration::from_secs(59)).is_some());
/// store.detach(Session::new([7; 16]), t0);
/// assert!(store.take(&[7; 16], t0 + Duration::from_secs(61)).is_none()); // expired
///
/// // At most 2 per owner: a third from the same address pushes out that address's oldest.
/// let mut store = SessionStore::new(Duration::from_secs(60), 10_000).with_max_per_owner(2);
/// let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
/// store.detach_from(Session::new([1; 16]), Some(b), t0);
/// store.detach_from(Session::new([2; 16]), Some(a), t0);
/// store.detach_from(Session::new([3; 16]), Some(a), t0);
/// let dropped = store.detach_from(Session::new([4; 16]), Some(a), t0);
/// assert_eq!(dropped[0].id(), [2; 16]);
/// assert!(store.peek(&[1; 16]).is_some()); // the other address's session stays
/// ```
#[derive(Debug)]
pub struct SessionStore {
    ttl: Duration,
    max_sessions: usize,
    max_per_owner: usize,
    detached: HashMap<[u8; 16], Kept>,
    /// Every kept session by detach time (then id): the oldest first.
    by_age: BTreeSet<(Instant, [u8; 16])>,
    /// The sessions of each owner by detach time; an owner with none has no entry.
    by_owner: HashMap<IpAddr, BTreeSet<(Instant, [u8; 16])>>,
}

/// A detached session, when it was detached and by whom.
#[derive(Debug)]
struct Kept {
    session: Session,
    at: Instant,
    owner: Option<IpAddr>,
}

impl SessionStore {
    /// Keeps detached sessions for `ttl`, at most `max_sessions` of them (the oldest go first).
    /// No limit per owner until [`with_max_per_owner`](Self::with_max_per_owner).
    pub fn new(ttl: Duration, max_sessions: usize) -> Self {
        SessionStore {
            ttl,
            max_sessions,
            max_per_owner: usize::MAX,
            detached: HashMap::new(),
            by_age: BTreeSet::new(),
            by_owner: HashMap::new(),
        }
    }

    /// Keeps at most `max` sessions detached by any one owner (see
    /// [`detach_from`](Self::detach_from)); `usize::MAX`: no such limit.
    pub fn with_max_per_owner(mut self, max: usize) -> Self {
        self.max_per_owner = max;
        self
    }

    /// Keeps `session` from `now` on. Returns the sessions dropped to make room (expired or
    /// oldest), whose unacknowledged messages are lost to their peer.
    pub fn detach(&mut self, session: Session, now: Instant) -> Vec<Session> {
        self.detach_from(session, None, now)
    }

    /// Keeps `session`, detached by `owner` (the address of its client), from `now` on.
    /// Returns the sessions dropped to make room, whose unacknowledged messages are lost to
    /// their peer: the expired ones; then, if `owner` already has its maximum kept, its own
    /// oldest; then, if the store is full, the oldest of all.
    pub fn detach_from(
        &mut self,
        session: Session,
        owner: Option<IpAddr>,
        now: Instant,
    ) -> Vec<Session> {
        let mut dropped = self.expire(now);
        // The same id detached again replaces what was kept under it.
        if let Some(old) = self.remove(&session.id()) {
            dropped.push(old);
        }
        if self.max_sessions == 0 || (self.max_per_owner == 0 && owner.is_some()) {
            dropped.push(session);
            return dropped;
        }
        if let Some(owner) = owner {
            while self.by_owner.get(&owner).map_or(0, BTreeSet::len) >= self.max_per_owner {
                let oldest = self
                    .by_owner
                    .get(&owner)
                    .and_then(|ids| ids.first())
                    .copied();
                match oldest.and_then(|(_, id)| self.remove(&id)) {
                    Some(s) => dropped.push(s),
                    None => break,
                }
            }
        }
        while self.detached.len() >= self.max_sessions {
            match self.pop_oldest() {
                Some(s) => dropped.push(s),
                None => break,
            }
        }
        let id = session.id();
        self.by_age.insert((now, id));
        if let Some(owner) = owner {
            self.by_owner.entry(owner).or_default().insert((now, id));
        }
        self.detached.insert(
            id,
            Kept {
                session,
                at: now,
                owner,
            },
        );
        dropped
    }

    /// Takes the session `id` out of the store and its indexes, expired or not.
    fn remove(&mut self, id: &[u8; 16]) -> Option<Session> {
        let kept = self.detached.remove(id)?;
        self.by_age.remove(&(kept.at, *id));
        if let Some(owner) = kept.owner {
            if let Some(ids) = self.by_owner.get_mut(&owner) {
                ids.remove(&(kept.at, *id));
                if ids.is_empty() {
                    self.by_owner.remove(&owner);
                }
            }
        }
        Some(kept.session)
    }

    /// Takes the session `id` if it is kept and not expired at `now`.
    pub fn take(&mut self, id: &[u8; 16], now: Instant) -> Option<Session> {
        let at = self.detached.get(id)?.at;
        let session = self.remove(id)?;
        (now.saturating_duration_since(at) <= self.ttl).then_some(session)
    }

    /// The session `id` if it is kept and not expired at `now`, left in place: e.g. to queue
    /// messages that its peer gets when it resumes.
    pub fn get_mut(&mut self, id: &[u8; 16], now: Instant) -> Option<&mut Session> {
        let ttl = self.ttl;
        self.detached
            .get_mut(id)
            .filter(|kept| now.saturating_duration_since(kept.at) <= ttl)
            .map(|kept| &mut kept.session)
    }

    /// Drops the sessions detached longer than the ttl; returns them, the oldest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Session> {
        let mut expired = Vec::new();
        while let Some(&(at, id)) = self.by_age.first() {
            if now.saturating_duration_since(at) <= self.ttl {
                break;
            }
            expired.extend(self.remove(&id));
        }
        expired
    }

    /// Decides what a session request gets from the detached sessions (the rules of section
    /// 12.3 of `docs/PROTOCOL.md`), given the requester's `proof` (see
    /// [`Event::SessionRequest`](crate::connection::Event::SessionRequest)):
    ///
    /// - no session `id` is kept: [`Resolution::New`], or [`Resolution::Expired`] with the
    ///   one kept under that id past its time;
    /// - the proof verifies against the kept session's secret: [`Resolution::Resume`], the
    ///   session is taken out of the store;
    /// - no proof, and the kept session is [unproven](Session::unproven) (its RESUME may never
    ///   have reached the requester): [`Resolution::Replace`], the old session is taken out to
    ///   be reported lost by the caller and a new one starts;
    /// - otherwise [`Resolution::Refuse`]: the kept session stays exactly as it was.
    ///
    /// A session held by a live connection is not in the store: the caller checks the proof
    /// against that session's secret itself ([`ResumeProof::verify`]).
    pub fn resolve(
        &mut self,
        id: &[u8; 16],
        proof: Option<&ResumeProof>,
        now: Instant,
    ) -> Resolution {
        let Some(kept) = self.get_mut(id, now) else {
            // An expired one goes, to be reported: a new session takes the id.
            return match self.remove(id) {
                Some(expired) => Resolution::Expired(expired),
                None => Resolution::New,
            };
        };
        match proof {
            Some(proof) if kept.secret().is_some_and(|s| proof.verify(s)) => {
                Resolution::Resume(self.remove(id).expect("kept"))
            }
            Some(_) => Resolution::Refuse("the resume's proof does not match the session"),
            None if kept.unproven() => Resolution::Replace(self.remove(id).expect("kept")),
            None => Resolution::Refuse("the session is in use: resuming it needs its proof"),
        }
    }

    /// The session `id` if it is kept, expired or not, left in place (to look at, e.g. to
    /// count its buffered bytes before [`take`](Self::take)).
    pub fn peek(&self, id: &[u8; 16]) -> Option<&Session> {
        self.detached.get(id).map(|kept| &kept.session)
    }

    /// Takes the session detached the longest ago, if any (a server shedding memory).
    pub fn pop_oldest(&mut self) -> Option<Session> {
        let &(_, id) = self.by_age.first()?;
        self.remove(&id)
    }

    /// Sessions kept now.
    pub fn len(&self) -> usize {
        self.detached.len()
    }

    /// No session is kept.
    pub fn is_empty(&self) -> bool {
        self.detached.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a sender's session can be asked to do; `Ack` values come from a peer that may
    /// forge them (any number near the live range).
    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Transmit(u64),
        Ack(u64),
        /// A reconnect: the peer announces `delivered` (forged or not) in RESUME.
        Resume(u64),
        /// The session is lost (RESUME unknown): everything unacknowledged is handed back.
        Lost,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            2 => (0u64..8).prop_map(Op::Transmit),
            3 => (0u64..40).prop_map(Op::Ack),
            1 => (0u64..40).prop_map(Op::Resume),
            1 => Just(Op::Lost),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever `delivered` and ACK values a peer sends, every message pushed is, at the
        /// end, either acknowledged after it was transmitted, or handed back to its sender:
        /// never dropped silently, never both.
        #[test]
        fn every_message_is_acknowledged_after_transmission_or_handed_back(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let mut s = Session::new([7; 16]);
            // Per message (by push order): transmitted?, acknowledged?, handed back?
            let mut pushed: Vec<(u64, bool, bool, bool)> = Vec::new();
            let mut epoch_start = 0usize; // index of seq 1 in `pushed` (numbering restarts)
            for op in ops {
                match op {
                    Op::Push => {
                        let seq = s.push(Bytes::from(vec![pushed.len() as u8]), usize::MAX).unwrap();
                        pushed.push((seq, false, false, false));
                    }
                    Op::Transmit(k) => {
                        let upto = (s.transmitted() + k).min(s.next_seq() - 1);
                        s.mark_transmitted(upto);
                        for m in &mut pushed[epoch_start..] {
                            if m.0 <= upto { m.1 = true; }
                        }
                    }
                    Op::Ack(x) | Op::Resume(x) => {
                        let before = s.acked();
                        match s.ack(x) {
                            Ok(()) => {
                                prop_assert!(x >= before && x <= s.transmitted());
                                for m in &mut pushed[epoch_start..] {
                                    if m.0 <= x { m.2 = true; }
                                }
                            }
                            Err(SessionError::BadAck { .. }) => {
                                prop_assert!(x < before || x > s.transmitted());
                                prop_assert_eq!(s.acked(), before, "a refused ack changes nothing");
                            }
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::Lost => {
                        let back = s.reset();
                        let open: Vec<usize> = (epoch_start..pushed.len())
                            .filter(|&i| !pushed[i].2)
                            .collect();
                        prop_assert_eq!(back.len(), open.len());
                        for (payload, i) in back.iter().zip(&open) {
                            prop_assert_eq!(payload[0], *i as u8);
                            pushed[*i].3 = true;
                        }
                        epoch_start = pushed.len();
                    }
                }
                prop_assert!(s.acked() <= s.transmitted());
            }
            // The end of the session: what is left is handed back.
            let back = s.take_unacked();
            let open: Vec<usize> = (epoch_start..pushed.len()).filter(|&i| !pushed[i].2).collect();
            prop_assert_eq!(back.len(), open.len());
            for i in open {
                pushed[i].3 = true;
            }
            for (i, (_, transmitted, acked, handed_back)) in pushed.iter().enumerate() {
                prop_assert!(acked ^ handed_back, "message {i}: acked {acked}, handed back {handed_back}");
                prop_assert!(!acked || *transmitted, "message {i} acknowledged but never transmitted");
            }
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn unsendable_messages_leave_only_while_never_transmitted() {
        let mut s = Session::new([2; 16]);
        for m in ["a", "too long", "bb", "also too long"] {
            s.push(b(m), 1000).unwrap();
        }
        let removed = s.remove_unsendable(|p| p.len() <= 2);
        assert_eq!(removed, vec![b("too long"), b("also too long")]);
        assert_eq!((s.unacked_len(), s.next_seq()), (2, 3));
        assert_eq!(
            (s.message(1), s.message(2)),
            (Some(&b("a")), Some(&b("bb")))
        );
        assert_eq!(s.buffered_bytes(), 3 + 2 * SDATA_OVERHEAD);
        // Once transmitted, numbers are the peer's too: what went out stays. What was queued
        // after it, never sent, can still go (and what follows moves up a number).
        s.set_established();
        s.mark_transmitted(2);
        s.push(b("long again"), 1000).unwrap();
        s.push(b("c"), 1000).unwrap();
        assert_eq!(s.remove_unsendable(|p| p.len() <= 1), vec![b("long again")]);
        assert_eq!(
            (s.unacked_len(), s.message(2), s.message(3)),
            (3, Some(&b("bb")), Some(&b("c")))
        );
        assert_eq!(s.buffered_bytes(), 4 + 3 * SDATA_OVERHEAD);
    }

    #[test]
    fn a_request_for_an_expired_session_hands_it_back_for_reporting() {
        let t0 = Instant::now();
        let mut store = SessionStore::new(Duration::from_secs(10), 4);
        let mut s = Session::new([3; 16]);
        s.push(b("never acknowledged"), 1000).unwrap();
        store.detach(s, t0);
        // Past the ttl, before any sweep: not resumed, not dropped silently.
        match store.resolve(&[3; 16], None, t0 + Duration::from_secs(11)) {
            Resolution::Expired(mut old) => {
                assert_eq!(old.take_unacked(), vec![b("never acknowledged")]);
            }
            other => panic!("expected Expired, got {other:?}"),
        }
        assert!(store.is_empty());
        // Nothing kept under the id: a plain new session.
        assert!(matches!(
            store.resolve(&[3; 16], None, t0 + Duration::from_secs(12)),
            Resolution::New
        ));
    }

    #[test]
    fn store_get_mut_leaves_the_session_and_respects_the_ttl() {
        let t0 = Instant::now();
        let mut store = SessionStore::new(Duration::from_secs(10), 4);
        assert!(store.detach(Session::new([3; 16]), t0).is_empty());
        let kept = store
            .get_mut(&[3; 16], t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(kept.push(b("queued while away"), 1000).unwrap(), 1);
        assert!(store.get_mut(&[4; 16], t0).is_none());
        assert!(store
            .get_mut(&[3; 16], t0 + Duration::from_secs(11))
            .is_none());
        // Still there until taken or expired, with what was queued.
        let mut session = store.take(&[3; 16], t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(session.take_unacked(), vec![b("queued while away")]);
    }

    #[test]
    fn numbering_ack_and_buffer_accounting() {
        let mut s = Session::new([1; 16]);
        assert!(s.is_fresh());
        assert_eq!(s.push(b("a"), 1000).unwrap(), 1);
        assert_eq!(s.push(b("bb"), 1000).unwrap(), 2);
        assert_eq!(s.push(b("ccc"), 1000).unwrap(), 3);
        assert_eq!(s.buffered_bytes(), 6 + 3 * SDATA_OVERHEAD);
        assert_eq!(s.message(2), Some(&b("bb")));
        assert_eq!(s.message(4), None);
        // Nothing transmitted yet: no ack is possible, not even of what is queued.
        assert_eq!(
            s.ack(1),
            Err(SessionError::BadAck {
                got: 1,
                acked: 0,
                transmitted: 0
            })
        );
        s.mark_transmitted(2);
        s.ack(2).unwrap();
        assert_eq!((s.acked(), s.unacked_len(), s.next_seq()), (2, 1, 4));
        assert_eq!(s.message(2), None);
        assert_eq!(s.buffered_bytes(), 3 + SDATA_OVERHEAD);
        // Acks below what was acked, or beyond what was transmitted, change nothing.
        let bad = |got| SessionError::BadAck {
            got,
            acked: 2,
            transmitted: 2,
        };
        assert_eq!(s.ack(1), Err(bad(1)));
        assert_eq!(
            s.ack(3),
            Err(bad(3)),
            "3 is queued but was never transmitted"
        );
        assert_eq!(s.ack(4), Err(bad(4)));
        assert_eq!((s.acked(), s.unacked_len()), (2, 1));
        s.ack(2).unwrap(); // the same value again: nothing new
                           // Transmission is capped at what exists.
        s.mark_transmitted(99);
        assert_eq!(s.transmitted(), 3);
        s.ack(3).unwrap();
        assert_eq!(s.buffered_bytes(), 0);
    }

    #[test]
    fn buffer_limit_is_enforced() {
        let mut s = Session::new([1; 16]);
        s.push(Bytes::from(vec![0; 87]), 100).unwrap();
        assert_eq!(
            s.push(b("x"), 100),
            Err(SessionError::BufferFull {
                buffered: 100,
                len: 14,
                limit: 100
            })
        );
        s.mark_transmitted(1);
        s.ack(1).unwrap();
        s.push(b("x"), 100).unwrap();
    }

    #[test]
    fn receive_delivers_in_order_drops_duplicates_and_flags_gaps() {
        let mut s = Session::new([1; 16]);
        assert_eq!(s.receive(1), Received::Deliver);
        assert_eq!(s.receive(2), Received::Deliver);
        assert_eq!(s.receive(1), Received::Duplicate);
        assert_eq!(s.receive(2), Received::Duplicate);
        assert_eq!(s.receive(4), Received::Gap { expected: 3 });
        assert_eq!(s.delivered(), 2);
    }

    #[test]
    fn reset_hands_back_unacked_messages() {
        let mut s = Session::new([9; 16]);
        for m in ["a", "b", "c"] {
            s.push(b(m), 1000).unwrap();
        }
        s.mark_transmitted(3);
        s.ack(1).unwrap();
        s.receive(1);
        assert_eq!(s.reset(), vec![b("b"), b("c")]);
        assert_eq!(s.transmitted(), 0);
        assert!(s.is_fresh());
        assert_eq!(s.id(), [9; 16]);
    }

    #[test]
    fn store_peek_and_pop_oldest() {
        let t0 = Instant::now();
        let mut store = SessionStore::new(Duration::from_secs(10), 10);
        for (i, at) in [(1u8, 5u64), (2, 1), (3, 3)] {
            let mut s = Session::new([i; 16]);
            s.push(b("x"), usize::MAX).unwrap();
            store.detach(s, t0 + Duration::from_secs(at));
        }
        assert_eq!(store.peek(&[3; 16]).map(Session::buffered_bytes), Some(14));
        // Expired sessions are still there to peek at.
        assert!(store.peek(&[2; 16]).is_some());
        let order: Vec<u8> = std::iter::from_fn(|| store.pop_oldest().map(|s| s.id()[0])).collect();
        assert_eq!(order, vec![2, 3, 1]);
        assert!(store.is_empty());
    }

    #[test]
    fn store_expires_and_bounds() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut store = SessionStore::new(secs(10), 2);
        assert!(store.detach(Session::new([1; 16]), t0).is_empty());
        assert!(store.detach(Session::new([2; 16]), t0 + secs(1)).is_empty());
        // Full: the oldest goes.
        let dropped = store.detach(Session::new([3; 16]), t0 + secs(2));
        assert_eq!(
            dropped.iter().map(Session::id).collect::<Vec<_>>(),
            vec![[1; 16]]
        );
        assert!(store.take(&[1; 16], t0 + secs(2)).is_none());
        assert!(store.take(&[2; 16], t0 + secs(11)).is_some());
        // [3] expires at 12 s.
        assert_eq!(store.expire(t0 + secs(13)).len(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn store_bounds_each_owner_and_spares_the_others() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut store = SessionStore::new(secs(10), 5).with_max_per_owner(2);
        let (a, b) = (Some([192, 0, 2, 1].into()), Some([192, 0, 2, 2].into()));
        store.detach_from(Session::new([1; 16]), b, t0);
        store.detach(Session::new([2; 16]), t0); // no owner: only the global limit
        for i in 3..=9u8 {
            let dropped = store.detach_from(Session::new([i; 16]), a, t0 + secs(i.into()));
            // From the third on, each pushes out `a`'s oldest, never `b`'s or the unowned one.
            let expected: Vec<[u8; 16]> = if i >= 5 { vec![[i - 2; 16]] } else { vec![] };
            assert_eq!(
                dropped.iter().map(Session::id).collect::<Vec<_>>(),
                expected
            );
        }
        assert_eq!(store.len(), 4);
        assert!(store.peek(&[1; 16]).is_some() && store.peek(&[2; 16]).is_some());
        // The same id detached again replaces the kept one (returned), without pushing out
        // anything else.
        let again = store.detach_from(Session::new([9; 16]), a, t0 + secs(10));
        assert_eq!(
            again.iter().map(Session::id).collect::<Vec<_>>(),
            vec![[9; 16]]
        );
        assert_eq!(store.len(), 4);
        // At most 0 per owner: an owned session is dropped at once, an unowned one kept.
        let mut none = SessionStore::new(secs(10), 5).with_max_per_owner(0);
        assert_eq!(none.detach_from(Session::new([1; 16]), a, t0).len(), 1);
        assert!(none.detach(Session::new([2; 16]), t0).is_empty());
        assert_eq!(none.len(), 1);
    }

    /// What the store is asked to do, at a time that moves forward by `Op::1` seconds.
    #[derive(Debug, Clone)]
    enum StoreOp {
        /// Detach session `0` for owner `1` (`None`: no owner).
        Detach(u8, Option<u8>),
        Take(u8),
        Expire,
        PopOldest,
        Resolve(u8),
    }

    fn store_op() -> impl Strategy<Value = (StoreOp, u64)> {
        let id = 0u8..12;
        let op = prop_oneof![
            4 => (id.clone(), proptest::option::of(0u8..3)).prop_map(|(i, o)| StoreOp::Detach(i, o)),
            2 => id.clone().prop_map(StoreOp::Take),
            1 => Just(StoreOp::Expire),
            1 => Just(StoreOp::PopOldest),
            1 => id.prop_map(StoreOp::Resolve),
        ];
        (op, 0u64..4)
    }

    proptest! {
        /// The indexed store against a plain list searched end to end: the same sessions
        /// dropped, taken and kept after every step.
        #[test]
        fn store_matches_a_plain_list(ops in proptest::collection::vec(store_op(), 1..120)) {
            let (ttl, max, per_owner) = (Duration::from_secs(6), 6, 3);
            let t0 = Instant::now();
            let mut store = SessionStore::new(ttl, max).with_max_per_owner(per_owner);
            // (id, detached at, owner), in detach order.
            let mut model: Vec<(u8, Instant, Option<u8>)> = Vec::new();
            let mut now = t0;
            let ids = |v: Vec<Session>| v.iter().map(|s| s.id()[0]).collect::<Vec<u8>>();
            let owner_ip = |o: u8| IpAddr::from([10, 0, 0, o]);
            for (op, step) in ops {
                now += Duration::from_secs(step);
                let expired = |model: &mut Vec<(u8, Instant, Option<u8>)>| {
                    let mut gone = Vec::new();
                    model.retain(|&(i, at, _)| {
                        let keep = now.saturating_duration_since(at) <= ttl;
                        if !keep { gone.push((at, i)); }
                        keep
                    });
                    gone.sort();
                    gone.into_iter().map(|(_, i)| i).collect::<Vec<u8>>()
                };
                let oldest = |model: &[(u8, Instant, Option<u8>)], owner: Option<u8>| {
                    model.iter().enumerate()
                        .filter(|(_, e)| owner.is_none() || e.2 == owner)
                        .min_by_key(|(_, e)| (e.1, e.0))
                        .map(|(k, _)| k)
                };
                match op {
                    StoreOp::Detach(i, o) => {
                        let got = ids(store.detach_from(Session::new([i; 16]), o.map(owner_ip), now));
                        let mut want = expired(&mut model);
                        if let Some(k) = model.iter().position(|e| e.0 == i) {
                            want.push(model.remove(k).0);
                        }
                        if o.is_some() {
                            while model.iter().filter(|e| e.2 == o).count() >= per_owner {
                                let k = oldest(&model, o).unwrap();
                                want.push(model.remove(k).0);
                            }
                        }
                        while model.len() >= max {
                            let k = oldest(&model, None).unwrap();
                            want.push(model.remove(k).0);
                        }
                        model.push((i, now, o));
                        prop_assert_eq!(got, want);
                    }
                    StoreOp::Take(i) => {
                        let got = store.take(&[i; 16], now).map(|s| s.id()[0]);
                        let want = model.iter().position(|e| e.0 == i).and_then(|k| {
                            let (i, at, _) = model.remove(k);
                            (now.saturating_duration_since(at) <= ttl).then_some(i)
                        });
                        prop_assert_eq!(got, want);
                    }
                    StoreOp::Expire => prop_assert_eq!(ids(store.expire(now)), expired(&mut model)),
                    StoreOp::PopOldest => {
                        let got = store.pop_oldest().map(|s| s.id()[0]);
                        let want = oldest(&model, None).map(|k| model.remove(k).0);
                        prop_assert_eq!(got, want);
                    }
                    StoreOp::Resolve(i) => {
                        // No proof: a fresh (unproven) session is replaced, an expired one
                        // reported, none is new.
                        let got = match store.resolve(&[i; 16], None, now) {
                            Resolution::Replace(s) | Resolution::Expired(s) => Some(s.id()[0]),
                            Resolution::New => None,
                            other => panic!("unexpected {other:?}"),
                        };
                        let want = model.iter().position(|e| e.0 == i).map(|k| model.remove(k).0);
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(store.len(), model.len());
                for &(i, _, _) in &model {
                    prop_assert!(store.peek(&[i; 16]).is_some());
                }
            }
        }
    }
}
