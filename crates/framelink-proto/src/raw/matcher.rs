//! Recognising heartbeat frames by their payload: [`FrameMatcher`] (the peer's pong, or a peer
//! heartbeat to answer) and the [`Answer`] rule. Kept apart from the connection so the matching
//! rules, which users configure, read on their own.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

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
