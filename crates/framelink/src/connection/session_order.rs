//! A session's order across the connections that carry it (accepting side).
//!
//! A driver counts a session message delivered when it queues it for the [`Receiver`], not
//! when the application takes it. When the link is cut, the client resumes on a new connection
//! from that count, so the new connection may receive the session's next messages while the
//! old connection's receiver still holds the last ones. A server that reads each connection in
//! its own task would then see the new ones first.
//!
//! The [`Gate`] closes that gap. When a driver ends and hands its session back to the server
//! (`SessionHost::release`) while its receiver is alive, it creates a gate, keeps it as the one
//! its receiver opens, and passes it on with the session; the connection that resumes the
//! session installs it as the one its receiver waits for. The receiver then hands out nothing
//! (the session's messages included) until the gate is open. The old receiver opens it:
//!
//! - when the application asks it for the event **after** its last session message (a task
//!   that handles each message before asking for the next is then done with it): the last
//!   batch it takes stops at that message, the events after it (`Closed`) are held back until
//!   the next request, which opens the gate;
//! - when it is dropped (its events are abandoned).
//!
//! An old receiver that is itself still waiting for an older one passes that wait on: a gate
//! opened by a dropped receiver opens for its waiters only once the gate that receiver waited
//! for is open too (chained resumes, A → B → C, keep A's messages before C's even if B's
//! receiver is dropped unread). A receiver gone before its driver ends creates no gate and
//! passes its own wait on instead.
//!
//! A runtime that moves events on to a queue of its own before the application takes them (the
//! Python package's pump) takes the opening over with [`Receiver::hold_session_order`]: the
//! receiver then hands everything out and never opens the gate itself; dropping the returned
//! [`SessionOrderHold`] does, once the application has taken its last message there.
//!
//! Cost: connections that never waited for nor handed on a resumed session have no order
//! state (`Inner::order` is `None`); the receiver checks it once per batch it takes from the
//! driver's queue, never per message.
//!
//! [`Receiver`]: super::Receiver
//! [`Receiver::hold_session_order`]: super::Receiver::hold_session_order

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::event::Event;
use super::handle::Inner;

/// Opened by the receiver of the connection that held a session before; waited for by the
/// receiver of the connection that holds it now.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    /// Open, but its waiters also wait for this one (what the opening receiver still waited
    /// for when it was dropped).
    after: Option<Arc<Gate>>,
    /// Receivers to wake when it opens.
    wakers: Vec<Waker>,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the gate; its waiters go on once `after` is open too.
    pub(crate) fn open(&self, after: Option<Arc<Gate>>) {
        let wakers = {
            let mut state = self.lock();
            state.open = true;
            state.after = after;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Ready once this gate and every gate it was opened after are open; otherwise registers
    /// `cx`'s waker with the first closed one.
    pub(crate) fn poll_open(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut gate = self.clone();
        loop {
            let next = {
                let mut state = gate.lock();
                if !state.open {
                    if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        state.wakers.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                match &state.after {
                    None => return Poll::Ready(()),
                    Some(after) => after.clone(),
                }
            };
            gate = next;
        }
    }

    /// This gate and every gate it was opened after are open.
    pub(crate) fn is_open(self: &Arc<Self>) -> bool {
        let mut gate = self.clone();
        loop {
            let next = {
                let state = gate.lock();
                if !state.open {
                    return false;
                }
                match &state.after {
                    None => return true,
                    Some(after) => after.clone(),
                }
            };
            gate = next;
        }
    }
}

/// A connection's place in its session's order (in `Inner::order`, boxed: rarely there).
#[derive(Debug, Default)]
pub(super) struct Order {
    /// The older connections this one's receiver waits for (set when a resumed session
    /// attached).
    wait: Option<Arc<Gate>>,
    /// The gate this receiver opens (set when the driver ended and passed the session on).
    opens: Option<Arc<Gate>>,
    /// Events after the last session message, held back until the application asks for the
    /// next event (then the gate opens).
    held: VecDeque<Event>,
}

/// Driver, the session attached: the receiver waits for `gate` (what the connection that held
/// the session before left) before handing anything out.
pub(super) fn install(inner: &mut Inner, gate: Arc<Gate>) {
    if gate.is_open() {
        return;
    }
    inner.order.get_or_insert_with(Default::default).wait = Some(gate);
}

/// Driver, ending and passing its session on: the gate the next connection of the session
/// waits for. A live receiver opens a new one (see the module documentation); a receiver gone
/// already passes on what it waited for, if anything.
pub(super) fn on_finish(inner: &mut Inner) -> Option<Arc<Gate>> {
    if inner.receiver_alive || inner.order_held {
        let gate = Arc::new(Gate::default());
        inner.order.get_or_insert_with(Default::default).opens = Some(gate.clone());
        Some(gate)
    } else {
        let wait = inner.order.take().and_then(|order| order.wait);
        wait.filter(|gate| !gate.is_open())
    }
}

/// Receiver, about to take a batch of events (`inner.order` is set): `Pending` while an older
/// connection of the session still holds messages; once the driver has ended, takes the last
/// batch only up to the last session message and opens the gate when asked for more.
pub(super) fn poll_turn(inner: &mut Inner, cx: &mut Context<'_>) -> Poll<()> {
    let Some(order) = inner.order.as_mut() else {
        return Poll::Ready(());
    };
    if let Some(wait) = &order.wait {
        if wait.poll_open(cx).is_pending() {
            return Poll::Pending;
        }
        order.wait = None;
    }
    if order.opens.is_some() && !inner.order_held {
        // The driver has ended: everything left is in `inner.events` (and `held`).
        if !order.held.is_empty() {
            let mut events = std::mem::take(&mut order.held);
            events.append(&mut inner.events);
            inner.events = events;
        }
        match inner
            .events
            .iter()
            .rposition(|event| matches!(event, Event::Message(_)))
        {
            // What follows the last message (no message: no payload bytes) waits for the
            // application to come back for more.
            Some(last) => order.held = inner.events.split_off(last + 1),
            None => {
                if let Some(gate) = order.opens.take() {
                    gate.open(None);
                }
            }
        }
    }
    if order.wait.is_none() && order.opens.is_none() && order.held.is_empty() {
        inner.order = None;
    }
    Poll::Ready(())
}

/// Receiver dropped: its events are abandoned, so the gate it opens opens now (after what it
/// still waited for). Before its driver ended, the driver passes that wait on instead.
pub(super) fn on_receiver_drop(inner: &mut Inner) {
    if inner.order_held {
        return; // The hold opens it.
    }
    let Some(order) = inner.order.as_mut() else {
        return;
    };
    order.held.clear();
    if let Some(gate) = order.opens.take() {
        let after = order.wait.take().filter(|wait| !wait.is_open());
        gate.open(after);
        inner.order = None;
    }
}

/// What [`Receiver::hold_session_order`](super::Receiver::hold_session_order) returns: while it
/// lives, the receiver's connection holds back the next connection of its session (if one
/// resumes it) instead of the receiver; dropping it lets that connection go on.
///
/// Drop it once the application has taken the last message it was given from this connection
/// (or has given up on them). Before the connection ended and passed its session on, dropping it
/// hands the duty back to the receiver.
#[must_use = "dropping it at once gives the duty back to the receiver"]
pub struct SessionOrderHold {
    pub(super) shared: Arc<super::handle::Shared>,
}

impl std::fmt::Debug for SessionOrderHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOrderHold").finish_non_exhaustive()
    }
}

impl Drop for SessionOrderHold {
    fn drop(&mut self) {
        release_hold(&mut self.shared.lock());
    }
}

/// A [`SessionOrderHold`] dropped: opens the gate if the driver has passed the session on
/// (after what the receiver still waited for), else gives the duty back to the receiver.
fn release_hold(inner: &mut Inner) {
    inner.order_held = false;
    let Some(order) = inner.order.as_mut() else {
        return;
    };
    if let Some(gate) = order.opens.take() {
        let after = order.wait.take().filter(|wait| !wait.is_open());
        gate.open(after);
        inner.order = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    fn message(n: u8) -> Event {
        Event::Message(Bytes::from(vec![n]))
    }

    fn closed() -> Event {
        Event::Closed(Box::new(crate::connection::event::CloseInfo {
            code: framelink_proto::wire::CloseCode::GoingAway,
            reason: String::new(),
            by_peer: true,
            error: None,
            raw: false,
            transport: None,
        }))
    }

    fn inner(events: Vec<Event>) -> Inner {
        Inner {
            receiver_alive: true,
            events: events.into(),
            ..Inner::default()
        }
    }

    /// What the receiver takes in one batch (the hook, then everything queued).
    fn take(inner: &mut Inner, waker: &Waker) -> Option<Vec<Event>> {
        if inner.order.is_some() {
            let mut cx = Context::from_waker(waker);
            if poll_turn(inner, &mut cx).is_pending() {
                return None;
            }
        }
        Some(std::mem::take(&mut inner.events).into())
    }

    #[test]
    fn the_old_receiver_opens_the_gate_when_asked_for_more_after_its_last_message() {
        let (_, w) = waker();
        let mut old = inner(vec![message(1), message(2), closed()]);
        let gate = on_finish(&mut old).expect("a live receiver opens a gate");
        let mut new = inner(vec![message(3)]);
        install(&mut new, gate.clone());
        let (woken, new_waker) = waker();
        assert_eq!(
            take(&mut new, &new_waker),
            None,
            "the old one holds 1 and 2"
        );
        // The old receiver's last batch stops at its last message...
        assert_eq!(take(&mut old, &w), Some(vec![message(1), message(2)]));
        assert!(!gate.is_open());
        assert_eq!(take(&mut new, &new_waker), None);
        // ... and the gate opens when it is asked for the next event.
        assert_eq!(take(&mut old, &w), Some(vec![closed()]));
        assert!(gate.is_open());
        assert!(old.order.is_none());
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "woken once, not per poll"
        );
        assert_eq!(take(&mut new, &new_waker), Some(vec![message(3)]));
        assert!(new.order.is_none(), "no order state left once open");
    }

    #[test]
    fn an_old_receiver_with_no_message_left_opens_at_its_next_request() {
        let (_, w) = waker();
        let mut old = inner(vec![closed()]);
        let gate = on_finish(&mut old).unwrap();
        assert_eq!(take(&mut old, &w), Some(vec![closed()]));
        assert!(gate.is_open());
        // Asked again after the end: nothing, and nothing pending.
        let mut old = inner(vec![]);
        let gate = on_finish(&mut old).unwrap();
        assert_eq!(take(&mut old, &w), Some(vec![]));
        assert!(gate.is_open());
    }

    #[test]
    fn dropping_the_old_receiver_opens_the_gate() {
        let mut old = inner(vec![message(1), closed()]);
        let gate = on_finish(&mut old).unwrap();
        let (woken, w) = waker();
        let mut new = inner(vec![message(2)]);
        install(&mut new, gate.clone());
        assert_eq!(take(&mut new, &w), None);
        old.receiver_alive = false;
        on_receiver_drop(&mut old);
        assert!(gate.is_open());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert_eq!(take(&mut new, &w), Some(vec![message(2)]));
    }

    #[test]
    fn a_receiver_gone_before_its_driver_ended_passes_its_wait_on() {
        let (_, w) = waker();
        // A holds messages; B resumed and its receiver was dropped before B ended.
        let mut a = inner(vec![message(1), closed()]);
        let gate_a = on_finish(&mut a).unwrap();
        let mut b = inner(vec![]);
        install(&mut b, gate_a.clone());
        b.receiver_alive = false;
        on_receiver_drop(&mut b);
        let passed = on_finish(&mut b).expect("B passes A's gate on");
        assert!(Arc::ptr_eq(&passed, &gate_a));
        // Without a wait, a gone receiver passes nothing on.
        let mut gone = inner(vec![]);
        gone.receiver_alive = false;
        assert!(on_finish(&mut gone).is_none());
        // C waits for A.
        let mut c = inner(vec![message(3)]);
        install(&mut c, passed);
        assert_eq!(take(&mut c, &w), None);
        assert_eq!(take(&mut a, &w), Some(vec![message(1)]));
        assert_eq!(take(&mut c, &w), None);
        assert_eq!(take(&mut a, &w), Some(vec![closed()]));
        assert_eq!(take(&mut c, &w), Some(vec![message(3)]));
    }

    #[test]
    fn chained_resumes_keep_the_order_of_three_connections() {
        let (_, w) = waker();
        let mut a = inner(vec![message(1), closed()]);
        let gate_a = on_finish(&mut a).unwrap();
        let mut b = inner(vec![]);
        install(&mut b, gate_a.clone());
        b.events.extend([message(2), closed()]);
        let gate_b = on_finish(&mut b).unwrap();
        let mut c = inner(vec![message(3)]);
        install(&mut c, gate_b.clone());
        // B waits for A, C for B.
        assert_eq!(take(&mut c, &w), None);
        assert_eq!(take(&mut b, &w), None);
        assert_eq!(take(&mut a, &w), Some(vec![message(1)]));
        assert_eq!(take(&mut a, &w), Some(vec![closed()]));
        assert_eq!(take(&mut c, &w), None, "B has not taken 2");
        assert_eq!(take(&mut b, &w), Some(vec![message(2)]));
        assert_eq!(take(&mut c, &w), None);
        assert_eq!(take(&mut b, &w), Some(vec![closed()]));
        assert_eq!(take(&mut c, &w), Some(vec![message(3)]));
    }

    #[test]
    fn a_dropped_middle_receiver_still_waits_for_the_first() {
        let (_, w) = waker();
        let mut a = inner(vec![message(1), closed()]);
        let gate_a = on_finish(&mut a).unwrap();
        let mut b = inner(vec![message(2), closed()]);
        install(&mut b, gate_a.clone());
        let gate_b = on_finish(&mut b).unwrap();
        let mut c = inner(vec![message(3)]);
        install(&mut c, gate_b.clone());
        // B's receiver is dropped unread: its gate opens, after A's.
        b.receiver_alive = false;
        on_receiver_drop(&mut b);
        assert!(!gate_b.is_open(), "open, but after A's");
        let (woken, cw) = waker();
        assert_eq!(take(&mut c, &cw), None);
        assert_eq!(take(&mut a, &w), Some(vec![message(1)]));
        assert_eq!(take(&mut a, &w), Some(vec![closed()]));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "A's gate woke C");
        assert_eq!(take(&mut c, &cw), Some(vec![message(3)]));
    }

    #[test]
    fn a_hold_opens_the_gate_instead_of_the_receiver() {
        let (_, w) = waker();
        let mut old = inner(vec![message(1), closed()]);
        old.order_held = true;
        let gate = on_finish(&mut old).unwrap();
        // The receiver hands everything out (no batch stops at the last message) ...
        assert_eq!(take(&mut old, &w), Some(vec![message(1), closed()]));
        assert_eq!(take(&mut old, &w), Some(vec![]));
        assert!(
            !gate.is_open(),
            "... and opens nothing, asked again or dropped"
        );
        old.receiver_alive = false;
        on_receiver_drop(&mut old);
        assert!(!gate.is_open());
        release_hold(&mut old);
        assert!(gate.is_open());

        // Held with the receiver gone before the driver ended: a gate all the same.
        let mut gone = inner(vec![]);
        gone.receiver_alive = false;
        gone.order_held = true;
        let gate = on_finish(&mut gone).unwrap();
        release_hold(&mut gone);
        assert!(gate.is_open());

        // Released before the driver ended: the receiver opens it, as without a hold.
        let mut early = inner(vec![message(1), closed()]);
        early.order_held = true;
        release_hold(&mut early);
        let gate = on_finish(&mut early).unwrap();
        assert_eq!(take(&mut early, &w), Some(vec![message(1)]));
        assert_eq!(take(&mut early, &w), Some(vec![closed()]));
        assert!(gate.is_open());
    }

    #[test]
    fn an_open_gate_is_not_installed() {
        let gate = Arc::new(Gate::default());
        gate.open(None);
        let mut new = inner(vec![message(1)]);
        install(&mut new, gate);
        assert!(new.order.is_none());
    }

    /// The hot path: connections that never resumed a session (plain ones, and a session's
    /// first connection) keep no order state, so taking a batch costs one branch more and
    /// taking a message nothing more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_that_resumed_nothing_keep_no_order_state() {
        use crate::{Client, ClientConfig, ClientEvent, Protocol, Server, ServerConfig};
        use framelink_proto::session::SessionConfig;
        let no_order = |receiver: &super::super::Receiver| receiver.shared.lock().order.is_none();

        let (a, b) = tokio::io::duplex(64 * 1024);
        let config = crate::connection::ConnectionConfig::default();
        let x = crate::connection::spawn(a, config.clone()).unwrap();
        let mut y = crate::connection::spawn(b, config).unwrap();
        for i in 0..100u8 {
            x.send(Bytes::from(vec![i])).await.unwrap();
        }
        for i in 0..100u8 {
            assert_eq!(y.recv().await.unwrap()[..], [i]);
            assert!(no_order(&y.receiver));
        }

        let mut server = Server::bind(
            "127.0.0.1:0",
            ServerConfig {
                sessions: Some(crate::ServerSessions::default()),
                ..ServerConfig::default()
            },
        )
        .await
        .unwrap();
        let mut client = Client::connect(
            server.local_addr().to_string(),
            ClientConfig {
                protocol: Protocol::Framelink(Default::default()),
                sessions: Some(SessionConfig::default()),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        let mut incoming = server.accept().await.unwrap();
        for i in 0..100u8 {
            client.send(Bytes::from(vec![i])).await.unwrap();
        }
        for i in 0..100u8 {
            assert_eq!(incoming.connection.recv().await.unwrap()[..], [i]);
            assert!(no_order(&incoming.connection.receiver));
        }
        incoming
            .connection
            .send(Bytes::from_static(b"x"))
            .await
            .unwrap();
        while !matches!(client.next_event().await, Some(ClientEvent::Message(_))) {}
        assert!(no_order(&incoming.connection.receiver));
        client.stop();
    }
}
