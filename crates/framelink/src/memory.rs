//! A server-wide memory budget: one shared counter of the bytes the server holds for its
//! connections and sessions, charged and credited by whoever holds them.
//!
//! What is counted (see [`ServerConfig::memory_budget`](crate::ServerConfig::memory_budget)):
//!
//! - each connection's **receive buffer** (its capacity: bytes allocated for partial frames),
//!   charged by the driver after each read batch, and **reserved before a read** can grow it:
//!   a driver that cannot reserve the growth of its next read does not read (TCP flow control
//!   then holds the peer back) until memory is freed;
//! - its **send queue**: a message's cost is reserved when [`Sender`](crate::Sender) takes it
//!   (a full budget makes `send` wait, `try_send` fail with `QueueFull`), and credited when the
//!   driver has written it out of the queue; plus the output taken ahead of the socket;
//! - **events** received and not yet taken by the application's
//!   [`Receiver`](crate::Receiver), charged by the driver per batch, credited when the
//!   receiver takes them (data handed to the application is no longer charged);
//! - **detached sessions'** buffered messages and the **lost sessions** waiting for
//!   [`ServerHandle::next_lost_session`](crate::ServerHandle::next_lost_session).
//!
//! Charges are per batch (a read, a step of the driver, a batch of events taken), with two
//! atomic additions each (the connection's own count and the server's), so the hot path pays
//! next to nothing. When a reservation fails, the server's enforcer is told and frees memory:
//! detached sessions to the lost queue, or the connection holding the most is evicted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The server's counter. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Highest `used` seen.
    peak: AtomicUsize,
    /// Tasks waiting for room (drivers that want to read, senders).
    waiting: AtomicUsize,
    /// The largest reservation asked for by a waiting task since the enforcer last looked.
    wanted: AtomicUsize,
    /// Room a refused newcomer asked for since the enforcer last looked (see
    /// [`want_room`](Self::want_room)).
    room_wanted: AtomicUsize,
    /// Rung when memory is credited while a task waits.
    freed: Notify,
    /// Rung when a reservation failed: the enforcer frees memory.
    pressure: Notify,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, nothing used.
    pub(crate) fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            wanted: AtomicUsize::new(0),
            room_wanted: AtomicUsize::new(0),
            freed: Notify::new(),
            pressure: Notify::new(),
        }
    }

    /// The budget in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes ever charged at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit in the budget.
    pub(crate) fn try_reserve(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(new) = used.checked_add(n).filter(|&new| new <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(new, Ordering::Relaxed);
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Counts `n` bytes already held (whether they fit or not); tells the enforcer when the
    /// budget is exceeded.
    pub(crate) fn charge(&self, n: usize) {
        if n == 0 {
            return;
        }
        let new = self.used.fetch_add(n, Ordering::AcqRel).saturating_add(n);
        self.peak.fetch_max(new, Ordering::Relaxed);
        if new > self.limit {
            self.pressure.notify_one();
        }
    }

    /// `n` bytes were freed.
    pub(crate) fn credit(&self, n: usize) {
        if n == 0 {
            return;
        }
        // Never below zero, whatever a bug elsewhere does.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Waits until `n` bytes could be reserved and reserves them (`n` larger than the whole
    /// budget waits for an empty budget... and is capped to it: it then takes it all).
    /// Cancel-safe: nothing is reserved unless it returns.
    pub(crate) async fn reserve(&self, n: usize) {
        let n = n.min(self.limit);
        if self.try_reserve(n) {
            return;
        }
        // Counted as waiting before looking again, so that a credit in between rings.
        let _waiting = self.wait_for(n);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_reserve(n) {
                return;
            }
            self.want(n);
            freed.await;
        }
    }

    /// Counts the caller as waiting for `n` bytes (until the guard drops) and tells the
    /// enforcer. Register on [`freed`](Self::freed) and look again after calling it.
    pub(crate) fn wait_for(&self, n: usize) -> Waiting<'_> {
        self.start_waiting(n);
        Waiting(self)
    }

    /// [`wait_for`](Self::wait_for) without a guard: call [`stop_waiting`](Self::stop_waiting)
    /// once done.
    pub(crate) fn start_waiting(&self, n: usize) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.want(n);
    }

    /// A waiting task still lacks room for `n` bytes: tells the enforcer (again). Requests are
    /// forgotten by [`forget_wanted`](Self::forget_wanted) after each step of relief, so a
    /// request that was met, or whose task gave up, does not make the enforcer free more.
    pub(crate) fn want(&self, n: usize) {
        self.wanted.fetch_max(n, Ordering::AcqRel);
        self.pressure.notify_one();
    }

    /// The enforcer freed some memory: waiting tasks look again and say what they still lack.
    pub(crate) fn forget_wanted(&self) {
        self.wanted.store(0, Ordering::Release);
        self.room_wanted.store(0, Ordering::Release);
    }

    /// A newcomer was refused for want of `n` bytes (the budget is within `n` of its limit):
    /// the enforcer frees what nobody is using (detached and lost sessions) until `n` fit,
    /// but closes no live connection for it. Without this, sessions held just under the
    /// limit would lock every newcomer out, their own clients included.
    pub(crate) fn want_room(&self, n: usize) {
        self.room_wanted.fetch_max(n, Ordering::AcqRel);
        self.pressure.notify_one();
    }

    /// Whether a refused newcomer's room is still lacking (see [`want_room`](Self::want_room)).
    pub(crate) fn needs_room(&self) -> bool {
        let room = self.room_wanted.load(Ordering::Acquire);
        room > 0 && self.used().saturating_add(room) > self.limit
    }

    /// Ends a [`start_waiting`](Self::start_waiting).
    pub(crate) fn stop_waiting(&self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Rung when memory is credited while someone waits (register before checking).
    pub(crate) fn freed(&self) -> &Notify {
        &self.freed
    }

    /// Rung when the enforcer should look.
    pub(crate) fn pressure(&self) -> &Notify {
        &self.pressure
    }

    /// Whether memory must be freed: over the budget, or a waiting task's request does not
    /// fit. Forgets old requests once nobody waits.
    pub(crate) fn needs_relief(&self) -> bool {
        let used = self.used();
        if used > self.limit {
            return true;
        }
        if self.waiting.load(Ordering::Acquire) == 0 {
            self.wanted.store(0, Ordering::Release);
            return false;
        }
        let wanted = self.wanted.load(Ordering::Acquire);
        used.saturating_add(wanted) > self.limit
    }
}

/// A task counted as waiting for memory; uncounted on drop.
pub(crate) struct Waiting<'a>(&'a MemoryBudget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.stop_waiting();
    }
}

/// Bytes reserved in an [`Account`] for something not yet handed over: credited back if
/// dropped (a cancelled send), kept with [`keep`](Self::keep).
pub(crate) struct Hold<'a> {
    account: Option<&'a Account>,
    n: usize,
}

impl<'a> Hold<'a> {
    /// `n` bytes reserved in `account` (`None`: no budget, nothing to give back).
    pub(crate) fn new(account: Option<&'a Account>, n: usize) -> Self {
        Hold { account, n }
    }

    /// The bytes stay charged: the thing they are for was handed over.
    pub(crate) fn keep(mut self) {
        self.n = 0;
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(account) = self.account {
            account.credit(self.n);
        }
    }
}

/// One connection's share of a [`MemoryBudget`]: what it holds, counted in both. Whatever is
/// still counted when it drops (the connection's last handle and its driver gone) is credited.
#[derive(Debug)]
pub(crate) struct Account {
    budget: Arc<MemoryBudget>,
    held: AtomicUsize,
}

impl Account {
    /// An account holding nothing.
    pub(crate) fn new(budget: Arc<MemoryBudget>) -> Self {
        Account {
            budget,
            held: AtomicUsize::new(0),
        }
    }

    /// The server's budget.
    pub(crate) fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Reserves `n` bytes if the budget has them; otherwise tells the enforcer and fails.
    pub(crate) fn try_reserve_or_ask(&self, n: usize) -> bool {
        let ok = self.try_reserve(n);
        if !ok {
            self.budget.pressure.notify_one();
        }
        ok
    }

    /// Bytes this connection holds now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes if the budget has them.
    pub(crate) fn try_reserve(&self, n: usize) -> bool {
        let ok = self.budget.try_reserve(n);
        if ok {
            self.held.fetch_add(n, Ordering::AcqRel);
        }
        ok
    }

    /// Waits for `n` bytes of room and reserves them (cancel-safe).
    pub(crate) async fn reserve(&self, n: usize) {
        let n = n.min(self.budget.limit);
        self.budget.reserve(n).await;
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts `n` bytes already held.
    pub(crate) fn charge(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
        self.budget.charge(n);
    }

    /// `n` bytes were freed (at most what is held).
    pub(crate) fn credit(&self, n: usize) {
        let mut held = self.held.load(Ordering::Relaxed);
        let n = loop {
            let take = n.min(held);
            match self.held.compare_exchange_weak(
                held,
                held - take,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break take,
                Err(now) => held = now,
            }
        };
        self.budget.credit(n);
    }

    /// Moves the count of one kind of holding from `*counted` to `now`.
    pub(crate) fn settle(&self, counted: &mut usize, now: usize) {
        if now > *counted {
            self.charge(now - *counted);
        } else {
            self.credit(*counted - now);
        }
        *counted = now;
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        self.budget.credit(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Used just under the limit, nothing waiting: no relief is needed, but a refused
    /// newcomer's room is, until one step of relief (or enough room) answers it.
    #[test]
    fn a_refused_newcomer_asks_for_room_once() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let held = Account::new(budget.clone());
        assert!(held.try_reserve(980));
        assert!(!budget.needs_relief() && !budget.needs_room());
        budget.want_room(64);
        assert!(budget.needs_room() && !budget.needs_relief());
        budget.forget_wanted();
        assert!(!budget.needs_room(), "answered by one step of relief");
        budget.want_room(64);
        held.credit(100);
        assert!(!budget.needs_room(), "the room is there");
    }

    #[test]
    fn reservations_never_pass_the_limit_and_charges_are_counted_anyway() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let a = Account::new(budget.clone());
        let b = Account::new(budget.clone());
        assert!(a.try_reserve(600));
        assert!(!b.try_reserve(401), "600 + 401 > 1000");
        assert!(b.try_reserve(400));
        assert_eq!((budget.used(), a.held(), b.held()), (1000, 600, 400));
        assert!(!budget.needs_relief());
        // A charge is for memory already held: counted even over the limit.
        b.charge(50);
        assert_eq!(budget.used(), 1050);
        assert!(budget.needs_relief());
        a.credit(100);
        assert_eq!((budget.used(), a.held()), (950, 500));
        // Credits never go below what an account holds.
        b.credit(10_000);
        assert_eq!((budget.used(), b.held()), (500, 0));
        assert_eq!(budget.peak(), 1050);
        drop(a);
        assert_eq!(budget.used(), 0, "a dropped account gives everything back");
    }

    #[test]
    fn settle_moves_a_holding_both_ways() {
        let budget = Arc::new(MemoryBudget::new(1 << 20));
        let account = Account::new(budget.clone());
        let mut recv = 0;
        account.settle(&mut recv, 65_536);
        account.settle(&mut recv, 8_192);
        assert_eq!((recv, account.held(), budget.used()), (8_192, 8_192, 8_192));
        account.settle(&mut recv, 0);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_waiting_request_that_does_not_fit_asks_for_relief_until_nobody_waits() {
        let budget = MemoryBudget::new(1000);
        assert!(budget.try_reserve(900));
        assert!(!budget.needs_relief());
        let waiting = budget.wait_for(200);
        assert!(budget.needs_relief(), "900 + 200 > 1000");
        budget.credit(200);
        assert!(!budget.needs_relief(), "700 + 200 fits");
        budget.want(400);
        assert!(budget.needs_relief(), "700 + 400 > 1000");
        // Relief forgets requests: only those still unmet are made again.
        budget.forget_wanted();
        assert!(!budget.needs_relief());
        drop(waiting);
        assert!(budget.try_reserve(300));
        assert!(!budget.needs_relief(), "nobody waits");
    }

    #[tokio::test]
    async fn reserve_waits_for_a_credit() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let account = Arc::new(Account::new(budget.clone()));
        assert!(account.try_reserve(800));
        let waiter = {
            let account = account.clone();
            tokio::spawn(async move { account.reserve(500).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert!(budget.needs_relief());
        account.credit(400);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken by the credit")
            .unwrap();
        assert_eq!((budget.used(), account.held()), (900, 900));
    }
}
