//! Ping / pong matching: recognising heartbeat frames by their payload ([`FrameMatcher`] for the
//! peer's pong, the [`Answer`] rule for a peer heartbeat to reply to) and [`Heartbeats`], the
//! raw connection's heartbeat state (a ping to write, our ping awaiting its pong, a reply to
//! write). Kept apart from the connection so the matching rules read on their own; the rules are
//! in the [module docs](super).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::RawConfig;

/// The function inside a [`FrameMatcher::Predicate`]: true for a matching frame payload.
pub type FramePredicate = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Recognises a frame by its (decoded) payload: the peer's pong, or a peer heartbeat to answer.
///
/// ```
/// use framelink_proto::raw::FrameMatcher;
/// assert!(FrameMatcher::exact(&b"PONG"[..]).matches(b"PONG"));
/// assert!(!FrameMatcher::exact(&b"PONG"[..]).matches(b"PONG!"));
/// assert!(FrameMatcher::prefix(&b"\x01\x02"[..]).matches(b"\x01\x02\x03"));
/// assert!(FrameMatcher::predicate(|f| f.len() == 1).matches(b"x"));
/// assert!(FrameMatcher::Any.matches(b"anything"));
/// ```
#[derive(Clone, Default)]
pub enum FrameMatcher {
    /// Any frame. As a pong matcher: the first frame after our ping answers it, and is still
    /// delivered as data.
    #[default]
    Any,
    /// A frame whose payload is exactly these bytes.
    Exact(Bytes),
    /// A frame whose payload starts with these bytes (non-empty: use [`Any`](Self::Any)).
    Prefix(Bytes),
    /// A frame for which the function returns true. Called once per inbound frame: keep it cheap,
    /// and it must not panic.
    Predicate(FramePredicate),
}

impl FrameMatcher {
    /// [`FrameMatcher::Exact`].
    pub fn exact(bytes: impl Into<Bytes>) -> Self {
        FrameMatcher::Exact(bytes.into())
    }

    /// [`FrameMatcher::Prefix`].
    pub fn prefix(bytes: impl Into<Bytes>) -> Self {
        FrameMatcher::Prefix(bytes.into())
    }

    /// [`FrameMatcher::Predicate`].
    pub fn predicate(f: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        FrameMatcher::Predicate(Arc::new(f))
    }

    /// True when `frame` matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        match self {
            FrameMatcher::Any => true,
            FrameMatcher::Exact(bytes) => frame == &bytes[..],
            FrameMatcher::Prefix(bytes) => frame.starts_with(bytes),
            FrameMatcher::Predicate(f) => f(frame),
        }
    }

    /// True for [`FrameMatcher::Any`]: matched frames are data, not heartbeats.
    pub fn is_any(&self) -> bool {
        matches!(self, FrameMatcher::Any)
    }
}

impl fmt::Debug for FrameMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameMatcher::Any => f.write_str("Any"),
            FrameMatcher::Exact(b) => f.debug_tuple("Exact").field(b).finish(),
            FrameMatcher::Prefix(b) => f.debug_tuple("Prefix").field(b).finish(),
            FrameMatcher::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// Answering the peer's own heartbeats: when an inbound frame matches `matcher`, send `reply`
/// as one frame.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which inbound frames to answer.
    pub matcher: FrameMatcher,
    /// The reply frame's payload.
    pub reply: Bytes,
}

/// The heartbeat side of a raw connection: the encoded control frames and what is pending.
#[derive(Debug)]
pub(super) struct Heartbeats {
    /// The encoded ping frame, if pings are sent.
    ping_frame: Option<Bytes>,
    /// The encoded answer reply frame, if there is an answer rule.
    reply_frame: Option<Bytes>,
    /// A ping to write (its liveness context).
    ping_pending: Option<[u8; 8]>,
    /// Our ping was written and no pong has matched it yet.
    awaiting_pong: Option<[u8; 8]>,
    /// A reply to the peer's heartbeat is to be written.
    answer_pending: bool,
}

/// What [`Heartbeats::classify`] made of an inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Classified {
    /// The frame is a heartbeat (swallowed unless heartbeats are delivered; not application
    /// data for the idle timeout).
    pub(super) heartbeat: bool,
    /// The frame answered our outstanding ping, sent with this liveness context.
    pub(super) pong_for: Option<[u8; 8]>,
}

impl Heartbeats {
    /// Heartbeats with the encoded `ping_frame` and `reply_frame`, nothing pending.
    pub(super) fn new(ping_frame: Option<Bytes>, reply_frame: Option<Bytes>) -> Self {
        Heartbeats {
            ping_frame,
            reply_frame,
            ping_pending: None,
            awaiting_pong: None,
            answer_pending: false,
        }
    }

    /// Pings are sent (a ping payload is configured).
    pub(super) fn pings(&self) -> bool {
        self.ping_frame.is_some()
    }

    /// The keep-alive machine wants a ping with `context` written.
    pub(super) fn ping_due(&mut self, context: [u8; 8]) {
        self.ping_pending = Some(context);
    }

    /// Applies the matching rules to an inbound `frame`: a pong answers our outstanding ping
    /// (taken once); a frame matching the answer rule queues our reply, unless it was the pong
    /// to our own ping.
    #[inline]
    pub(super) fn classify(&mut self, config: &RawConfig, frame: &[u8]) -> Classified {
        let mut heartbeat = false;
        let mut pong_for = None;
        // The common case, checked before any matcher: no ping awaits its pong, pongs are not
        // expected unasked, nothing is answered. Every frame is data.
        if self.awaiting_pong.is_none() && !config.pong_always && config.answer.is_none() {
            return Classified {
                heartbeat,
                pong_for,
            };
        }
        if config.pong.matches(frame) {
            // A pong answers our outstanding ping; without one it is data, unless the user
            // said the peer sends pongs on its own (`pong_always`).
            if let Some(context) = self.awaiting_pong.take() {
                heartbeat = !config.pong.is_any();
                pong_for = Some(context);
            } else if config.pong_always {
                heartbeat = !config.pong.is_any();
            }
        }
        if let Some(answer) = &config.answer {
            if answer.matcher.matches(frame) {
                heartbeat |= !answer.matcher.is_any();
                if pong_for.is_none() {
                    self.answer_pending = true;
                }
            }
        }
        Classified {
            heartbeat,
            pong_for,
        }
    }

    /// The next control frame to write, ahead of queued data: our reply to the peer's
    /// heartbeat, then our ping (which from then on awaits its pong).
    pub(super) fn next_frame(&mut self) -> Option<Bytes> {
        if self.answer_pending {
            self.answer_pending = false;
            if let Some(frame) = self.reply_frame.clone() {
                return Some(frame);
            }
        }
        if let Some(context) = self.ping_pending.take() {
            if let Some(frame) = self.ping_frame.clone() {
                self.awaiting_pong = Some(context);
                return Some(frame);
            }
        }
        None
    }

    /// Closing: nothing more is written on our own (a pong may still be matched).
    pub(super) fn stop_sending(&mut self) {
        self.ping_pending = None;
        self.answer_pending = false;
    }

    /// Closed: nothing pending, nothing awaited.
    pub(super) fn clear(&mut self) {
        self.stop_sending();
        self.awaiting_pong = None;
    }
}
