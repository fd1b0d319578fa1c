//! The [`Driver`] task: runs the machine over the stream, between the socket, the timer, the
//! handles and the session host.

use std::ops::ControlFlow;

use tokio::time::Sleep;

use super::*;

/// What woke the driver up.
pub(super) enum Wake {
    Io(Io),
    Handles,
    Timer,
    /// The session host answered a session request.
    Resolved(Box<Resolved>),
}

/// The background task's state.
pub(super) struct Driver<M: Machine> {
    pub(super) machine: M,
    /// Accepting side: where sessions come from and go back to, and this connection's number.
    pub(super) sessions: Option<(Arc<dyn SessionHost>, u64)>,
    /// A session lookup in progress.
    pub(super) resolving: Option<Pin<Box<dyn std::future::Future<Output = Resolved> + Send>>>,
    /// The session this connection asked for or serves.
    pub(super) session_id: Option<[u8; 16]>,
    /// Another connection took the session over: end now.
    pub(super) detach_now: bool,
    /// The send low watermark (see [`DriverConfig::send_low_watermark`]).
    pub(super) send_low: usize,
    pub(super) shared: Arc<Shared>,
    /// Budget bytes of messages handed to the machine and not yet given back.
    pub(super) held: usize,
    /// Bytes held without budget (a resumed session's messages that did not fit): repaid
    /// from the next bytes freed.
    pub(super) debt: usize,
    pub(super) out: OutQueue,
    /// `ShutdownWrite` came out: shut the write half down once `out` is written.
    pub(super) shutdown_pending: bool,
    pub(super) shutdown_done: bool,
    pub(super) reading: bool,
    /// Writing failed: discard output.
    pub(super) write_dead: bool,
    /// Every handle is gone (a graceful close was started for them).
    pub(super) handles_gone: bool,
    /// When the machine reached `Closed`: output gets `linger` more to be written.
    pub(super) closed_at: Option<Instant>,
    /// Length of the last large frame received (0: frames are small, or the link is quiet).
    pub(super) large_frame: usize,
    /// A message arrived since `Shared::last_message` was last set (set once per step).
    pub(super) message_seen: bool,
    /// Memory budget: bytes counted for the receive buffer and the output queue, plus what is
    /// reserved for the next read.
    pub(super) mem_counted: usize,
    /// Memory budget: the next read is reserved (or there is no budget).
    pub(super) mem_read_ok: bool,
    /// Memory budget: counted as waiting for room to read.
    pub(super) mem_waiting: bool,
    /// The stream error that ended the connection (boxed: rarely there).
    pub(super) transport: Option<Box<TransportError>>,
    /// Messages accepted by the handles that reached the machine after it closed (a send
    /// racing the close): never written, handed back with the machine's own at the end.
    pub(super) refused_late: Vec<Bytes>,
}

/// A driver dropped before it finished (its task aborted, e.g. by a server shutdown past its
/// grace period, or a panic) still tells the handles and gives back what it holds: otherwise
/// a receiver would wait forever for the end, a `close` for its answer, a `send` for budget,
/// and the server's memory budget would stay charged.
impl<M: Machine> Drop for Driver<M> {
    fn drop(&mut self) {
        let finished = self.shared.lock().finished;
        if finished {
            return;
        }
        if std::thread::panicking() {
            // Mid-panic the machine may be inconsistent: only release the handles.
            self.shared.budget.close();
            let mut inner = self.shared.lock();
            inner.finished = true;
            inner.wake_receiver();
            drop(inner);
            self.shared.status_changed.notify_waiters();
        } else {
            self.finish();
        }
    }
}

impl<M: Machine> fmt::Debug for Driver<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl<M: Machine> Driver<M> {
    /// The task: steps the machine, arms the timer, waits for something to happen and handles
    /// it, until the socket is done; then hands everything back ([`finish`](Self::finish)).
    pub(super) async fn run<S>(mut self: Box<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = self.shared.clone();
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed = None;
        loop {
            self.step();
            if self.socket_done() {
                break;
            }
            self.arm_timer(sleep.as_mut(), &mut armed);
            let (wake, shutdown) = self
                .wait(&mut stream, &shared, sleep.as_mut(), armed.is_some())
                .await;
            let now = Instant::now();
            if self
                .on_wake(wake, shutdown, &mut stream, &shared, &mut armed, now)
                .await
                .is_break()
            {
                break;
            }
        }
        drop(stream);
        self.finish();
    }

    /// Re-arms the one timer for the machine's deadline (`armed`: where it is set, if anywhere).
    fn arm_timer(&self, sleep: Pin<&mut Sleep>, armed: &mut Option<Instant>) {
        // The one timer is re-armed when the deadline moved earlier, when it fired, or when
        // it moved later by a lot compared with the time left (a quiet connection's next
        // heartbeat). Traffic on a busy connection moves the deadline later by a little with
        // every read: then the timer is kept, fires early once per period, and is re-armed
        // at the new deadline, instead of being reset for every message.
        match (self.deadline(), *armed) {
            // Later by little compared with the time left (traffic on a busy connection):
            // keep the timer; it fires early once and is re-armed then.
            (Some(at), Some(current))
                if at >= current
                    && at - current < current.saturating_duration_since(Instant::now()) / 2 => {}
            (Some(at), Some(current)) if at == current => {}
            (Some(at), _) => {
                sleep.reset(at);
                *armed = Some(at);
            }
            (None, _) => *armed = None,
        }
    }

    /// Waits for the next thing to do: socket I/O, the handles, the timer (when `timer_armed`),
    /// a session lookup's answer, or freed memory. Also says whether a shutdown of the write
    /// half was being written.
    async fn wait<S>(
        &mut self,
        stream: &mut S,
        shared: &Shared,
        mut sleep: Pin<&mut Sleep>,
        timer_armed: bool,
    ) -> (Wake, bool)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let budgeted = shared.memory.is_some();
        let can_read = self.reading && {
            let mut inner = shared.lock();
            if !inner.reading_paused
                && inner.events_full(&shared.config)
                && matches!(self.machine.state(), State::Handshaking | State::Open)
            {
                inner.reading_paused = true;
            }
            // Closing: read on regardless, to see the peer's CLOSE.
            !inner.reading_paused
                || !matches!(self.machine.state(), State::Handshaking | State::Open)
        };
        // The memory budget: a read that may grow the receive buffer is reserved first;
        // without room the socket is left unread (TCP holds the peer back) until memory is
        // freed (the server evicts, or others give back).
        let freed_source = match &shared.memory {
            Some(account) => account.budget().freed(),
            None => &shared.status_changed,
        };
        let freed = freed_source.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let can_read = self.account_memory(can_read);
        let memory_blocked = self.mem_waiting;
        let can_write = !self.write_dead
            && (!self.out.is_empty() || (self.shutdown_pending && !self.shutdown_done));
        let shutdown = self.shutdown_pending && !self.shutdown_done;
        let out = &mut self.out;
        let machine = &mut self.machine;
        let io = std::future::poll_fn(|cx| {
            if can_write {
                if let Poll::Ready(result) = poll_write_out(&mut *stream, cx, out, shutdown) {
                    return Poll::Ready(Io::Written(result));
                }
            }
            if can_read {
                if let Poll::Ready(result) =
                    poll_read_into(&mut *stream, cx, machine.recv_buf(), budgeted)
                {
                    return Poll::Ready(Io::Read(result));
                }
            }
            Poll::Pending
        });
        let resolving_active = self.resolving.is_some();
        let resolving = &mut self.resolving;
        let resolved = std::future::poll_fn(|cx| match resolving.as_mut() {
            Some(lookup) => lookup.as_mut().poll(cx),
            None => Poll::Pending,
        });
        let wake = tokio::select! {
            io = io, if can_read || can_write => Wake::Io(io),
            () = shared.wake_driver.notified() => Wake::Handles,
            () = &mut sleep, if timer_armed => Wake::Timer,
            resolution = resolved, if resolving_active => Wake::Resolved(Box::new(resolution)),
            () = &mut freed, if memory_blocked => Wake::Handles,
        };
        (wake, shutdown)
    }

    /// Handles what [`wait`](Self::wait) woke up for; `Break` ends the task.
    async fn on_wake<S>(
        &mut self,
        wake: Wake,
        shutdown: bool,
        stream: &mut S,
        shared: &Shared,
        armed: &mut Option<Instant>,
        now: Instant,
    ) -> ControlFlow<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match wake {
            Wake::Io(Io::Read(result)) => self.on_read(result, now),
            Wake::Io(Io::Written(Ok(()))) => {
                if shutdown && self.out.is_empty() {
                    self.shutdown_done = true;
                }
            }
            Wake::Io(Io::Written(Err(e))) => {
                self.transport
                    .get_or_insert_with(|| Box::new(TransportError::from(&e)));
                self.write_dead = true;
                self.out.clear();
                self.machine.handle_eof(now.into_std());
            }
            Wake::Handles => {
                self.handles(now.into_std());
                if self.detach_now {
                    // Tell the peer why if the socket takes it at once; never wait for it:
                    // the session must reach the connection that took it over.
                    self.step();
                    let out = &mut self.out;
                    let _ = std::future::poll_fn(|cx| {
                        Poll::Ready(poll_write_out(&mut *stream, cx, out, true))
                    })
                    .await;
                    return ControlFlow::Break(());
                }
            }
            Wake::Resolved(resolution) => {
                self.resolving = None;
                self.on_resolved(*resolution, now.into_std());
            }
            Wake::Timer => {
                *armed = None;
                return self.on_timer(stream, shared, now).await;
            }
        }
        ControlFlow::Continue(())
    }

    /// The timer fired: shrink the buffers, give up on unflushed output after `linger`, or
    /// hand the machine its timeout (after any input that arrived with it).
    async fn on_timer<S>(
        &mut self,
        stream: &mut S,
        shared: &Shared,
        now: Instant,
    ) -> ControlFlow<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let budgeted = shared.memory.is_some();
        // The link has been quiet (heartbeat or idle timers): give memory back.
        self.shrink_buffers();
        if self.machine.is_closed() {
            if self
                .closed_at
                .is_some_and(|at| now >= at + self.machine.linger())
            {
                // Output could not be flushed in time: give up on it.
                return ControlFlow::Break(());
            }
        } else {
            // Input that arrived with the timer goes first: a peer's PING already
            // in the socket means no PING of ours is due (two pings crossing would
            // double the heartbeat traffic).
            if self.reading && self.mem_read_ok && !shared.lock().reading_paused {
                let machine = &mut self.machine;
                let ready = std::future::poll_fn(|cx| {
                    Poll::Ready(
                        match poll_read_into(&mut *stream, cx, machine.recv_buf(), budgeted) {
                            Poll::Ready(result) => Some(result),
                            Poll::Pending => None,
                        },
                    )
                })
                .await;
                if let Some(result) = ready {
                    self.on_read(result, now);
                }
            }
            self.machine.handle_timeout(now.into_std());
        }
        ControlFlow::Continue(())
    }

    /// The socket is done: gives the memory back, hands the session (and messages never
    /// written) on, and tells the handles.
    fn finish(&mut self) {
        self.shared.budget.close();
        if let Some(account) = &self.shared.memory {
            // The buffers go with the driver; the send queue's messages with the machine (a
            // session's are counted again by the server that keeps it).
            account.settle(&mut self.mem_counted, 0);
            account.credit(self.held);
            if self.mem_waiting {
                account.budget().stop_waiting();
            }
        }
        // The session outlives the connection: messages still in the command queue join it
        // (their senders were told "queued"), then it goes to the next connection.
        let mut session = self.machine.take_session();
        let mut unsent = self.machine.take_unsent();
        unsent.append(&mut self.refused_late);
        let mut inner = self.shared.lock();
        inner.finished = true;
        for command in std::mem::take(&mut inner.commands) {
            if let (Command::Send(payload), Some(account)) = (&command, &self.shared.memory) {
                account.credit(payload.len().saturating_add(self.shared.overhead));
            }
            match (command, session.as_mut()) {
                (Command::Send(payload), Some(session)) => {
                    let _ = session.push(payload, usize::MAX);
                }
                // Handed over, never written: the application learns which.
                (Command::Send(payload), None) => unsent.push(payload),
                _ => {}
            }
        }
        inner.unsent = unsent;
        let release = match (&self.sessions, self.session_id) {
            (Some((host, conn)), Some(id)) => {
                // A session passed on: its next connection waits for this one's receiver.
                let gate = match &session {
                    Some(_) => session_order::on_finish(&mut inner),
                    None => None,
                };
                Some((host, *conn, id, session.take(), gate))
            }
            _ => {
                inner.session = session.map(Box::new);
                None
            }
        };
        inner.wake_receiver();
        drop(inner);
        // After the connection's lock is let go: the host takes its own locks, which are
        // never held while taking a connection's.
        if let Some((host, conn, id, session, gate)) = release {
            host.release(id, conn, session, gate);
        }
        self.shared.status_changed.notify_waiters();
    }

    /// Hands a read's outcome to the machine.
    pub(super) fn on_read(&mut self, result: std::io::Result<usize>, now: Instant) {
        match result {
            Ok(0) | Err(_) => {
                if let Err(e) = &result {
                    self.transport
                        .get_or_insert_with(|| Box::new(TransportError::from(e)));
                }
                self.reading = false;
                self.machine.handle_eof(now.into_std());
            }
            Ok(n) => {
                self.machine.process_input(now.into_std());
                let pending = self.machine.pending_frame_len();
                let buf = self.machine.recv_buf();
                if buf.is_empty() && n < MIN_DIRECT_READ {
                    // A quiet connection: give the read buffer back, forget frame sizes.
                    if buf.capacity() > 0 {
                        *buf = BytesMut::new();
                    }
                    self.large_frame = 0;
                }
                // Growth ahead of the data is reserved in the memory budget first, and skipped
                // without room (the next read then waits for memory).
                let account = self.shared.memory.as_ref();
                let mut room = |buf: &BytesMut, additional: usize| match account {
                    None => true,
                    Some(account) => {
                        let growth = growth_bound(buf, additional);
                        let ok = account.try_reserve(growth);
                        if ok {
                            self.mem_counted += growth;
                        }
                        ok
                    }
                };
                match pending {
                    Some(total) => {
                        if total >= LARGE_FRAME {
                            self.large_frame = total.min(MAX_PREDICTED_FRAME);
                        }
                        let missing = total.saturating_sub(buf.len());
                        if missing > buf.capacity() - buf.len()
                            && room(buf, missing.min(buf.len().max(READ_SIZE)))
                        {
                            make_room_for_frame(buf, total);
                        }
                    }
                    // Between large frames: room for one more like the last, before its
                    // header is read (it would not fit in what is left of a read buffer).
                    None if buf.is_empty()
                        && self.large_frame > 0
                        && room(buf, self.large_frame + FRAME_SLACK) =>
                    {
                        buf.reserve(self.large_frame + FRAME_SLACK);
                    }
                    // A budgeted stack read came in full (a busy stream): the room for reading
                    // straight in that `poll_read_into` leaves to us, reserved first.
                    None if account.is_some()
                        && n == STACK_READ
                        && buf.capacity() < READ_SIZE
                        && room(buf, READ_SIZE) =>
                    {
                        buf.reserve(READ_SIZE);
                    }
                    None => {}
                }
            }
        }
    }

    /// Brings the memory budget's count of the receive buffer and output queue up to date, and
    /// reserves what the next read may allocate when `reading`. Returns whether to read: no
    /// budget, or the read is reserved. Without room, the driver counts as waiting for memory
    /// (the server's enforcer frees some) and does not read.
    pub(super) fn account_memory(&mut self, reading: bool) -> bool {
        let Some(account) = self.shared.memory.as_ref() else {
            return reading;
        };
        let pending = self.machine.pending_frame_len();
        let buf = self.machine.recv_buf();
        let actual = buf.capacity() + self.out.remaining;
        let need = if reading {
            read_growth(buf, pending)
        } else {
            0
        };
        let target = actual + need;
        let ok = if target <= self.mem_counted {
            account.settle(&mut self.mem_counted, target);
            true
        } else if account.try_reserve(target - self.mem_counted) {
            self.mem_counted = target;
            true
        } else {
            // What is allocated is counted whether it fits or not.
            account.settle(&mut self.mem_counted, actual);
            false
        };
        let blocked = reading && !ok;
        match (blocked, self.mem_waiting) {
            (true, false) => account.budget().start_waiting(need),
            (true, true) => account.budget().want(need),
            (false, true) => account.budget().stop_waiting(),
            (false, false) => {}
        }
        self.mem_waiting = blocked;
        self.mem_read_ok = reading && ok;
        reading && ok
    }

    /// Counts `n` more bytes as held by the machine's queue: takes what the budget has now and
    /// records the rest as debt, paid back before any budget is returned.
    /// Answers the machine's session request with what the host decided.
    pub(super) fn on_resolved(&mut self, resolution: Resolved, now: std::time::Instant) {
        let (found, gate) = match resolution {
            Resolved::Attach(found, gate) => (found, gate),
            Resolved::Refuse(why) => return self.machine.refuse_session(why, now),
        };
        let before = self.machine.queued_bytes();
        let refused = self.machine.attach_session(found, now).err();
        // A resumed session brings its unacknowledged messages: they hold budget.
        let after = self.machine.queued_bytes();
        self.hold_budget(after.saturating_sub(before));
        if let (Some((host, conn)), Some(id)) = (&self.sessions, self.session_id) {
            match refused {
                // The machine found no valid proof for it: back to where it was kept.
                Some(session) => host.release(id, *conn, Some(session), gate),
                None => {
                    // Before any of the session's messages is queued for the receiver.
                    if let Some(gate) = gate {
                        session_order::install(&mut self.shared.lock(), gate);
                    }
                    let secret = self.machine.session().and_then(|s| s.secret().cloned());
                    host.attached(id, *conn, secret);
                }
            }
        }
    }

    pub(super) fn hold_budget(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.shared.budget.available_permits().min(n);
        if now > 0 {
            if let Ok(permit) = self.shared.budget.try_acquire_many(now as u32) {
                permit.forget();
            }
        }
        self.held += n;
        self.debt += n - now;
        if let Some(account) = &self.shared.memory {
            account.charge(n);
        }
    }

    /// Frees the memory of every empty queue: the machine's, the event queue, the output queue.
    pub(super) fn shrink_buffers(&mut self) {
        self.machine.shrink_buffers();
        if self.out.is_empty() {
            self.out.clear();
        }
        let mut inner = self.shared.lock();
        if inner.events.is_empty() {
            inner.events = VecDeque::new();
        }
        if inner.commands.is_empty() {
            inner.commands = VecDeque::new();
        }
    }

    /// The timer deadline: the machine's, or the flush deadline once it is closed.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.machine.poll_timeout() {
            Some(at) => Some(Instant::from_std(at)),
            None => self.closed_at.map(|at| at + self.machine.linger()),
        }
    }

    /// The protocol is done and everything it wanted written is written (or unwritable).
    pub(super) fn socket_done(&self) -> bool {
        self.machine.is_closed()
            && self.machine.is_drained()
            && (self.write_dead
                || (self.out.is_empty() && (!self.shutdown_pending || self.shutdown_done)))
    }

    /// The handles rang: take their commands, notice when they are all gone.
    pub(super) fn handles(&mut self, now: std::time::Instant) {
        let (commands, all_gone) = {
            let mut inner = self.shared.lock();
            let commands = std::mem::take(&mut inner.commands);
            (commands, inner.senders == 0 && !inner.receiver_alive)
        };
        let mut sent = false;
        for command in commands {
            match command {
                Command::Send(payload) => sent |= self.send(payload, now),
                Command::Close(code, reason) => self.machine.close(code, &reason, now),
                Command::Detach => {
                    let reason = "session resumed by another connection";
                    self.machine.close(CloseCode::SessionTakenOver, reason, now);
                    self.detach_now = true;
                }
                Command::Evict(reason) => {
                    self.machine.abort(CloseCode::ServerFull, &reason, now);
                    self.large_frame = 0;
                }
            }
        }
        if sent {
            // Once per batch of commands, not per message.
            self.shared
                .last_message
                .store(ms_at(now), Ordering::Relaxed);
        }
        if all_gone && !self.handles_gone {
            self.handles_gone = true;
            self.machine.close(CloseCode::Normal, "", now);
        }
    }

    /// Hands `payload` to the machine; `true` if it took it. The caller records the time of
    /// the last message.
    pub(super) fn send(&mut self, payload: Bytes, now: std::time::Instant) -> bool {
        let cost = self.machine.message_cost(payload.len());
        let len = payload.len();
        // A closed machine refuses what a session does not take; the sender was told
        // "queued", so the message is kept to be handed back (`take_unsent`).
        let late = (!matches!(self.machine.state(), State::Handshaking | State::Open))
            .then(|| payload.clone());
        // Every `Command::Send` passed `handle::check`, which asks the same framing.
        match self.machine.send_checked(payload, now) {
            Ok(()) => {
                self.held += cost;
                true
            }
            Err(e) => {
                self.shared.budget.add_permits(cost);
                if let Some(account) = &self.shared.memory {
                    account.credit(cost);
                }
                if matches!(e, SendError::QueueFull { .. }) {
                    // The budget mirrors the machine's limit, so this means the accounting is
                    // broken: say so loudly rather than lose the message quietly.
                    tracing::error!(%e, len, "message refused by the machine despite the budget");
                }
                if let (SendError::Closed, Some(payload)) = (&e, late) {
                    self.refused_late.push(payload);
                }
                if let SendError::TooBig { max, .. } = e {
                    // The handle checked before the peer's limit was known.
                    let mut inner = self.shared.lock();
                    let cost = inner.push_event(Event::MessageDropped { len, peer_max: max });
                    inner.wake_receiver();
                    drop(inner);
                    // Charged like every queued event: the receiver credits it when taken.
                    if let Some(account) = &self.shared.memory {
                        account.charge(cost);
                    }
                }
                false
            }
        }
    }

    /// Drains the machine after an input: output (up to the high-water mark), events, budget.
    pub(super) fn step(&mut self) {
        let now = Instant::now().into_std();
        let mut delivered = false;
        let mut status_changed = false;
        loop {
            while self.write_dead || self.out.remaining < self.shared.config.write_ahead {
                match self.machine.poll_transmit(now) {
                    Some(chunk) if !self.write_dead => self.out.push(chunk),
                    Some(_) => {}
                    None => break,
                }
            }
            let Some(first) = self.machine.poll_event() else {
                break;
            };
            let shared = self.shared.clone();
            let mut inner = shared.lock();
            let mut next = Some(first);
            let mut pushed = 0;
            while let Some(event) = next {
                pushed += self.deliver(event, &mut inner, &mut status_changed);
                next = self.machine.poll_event();
            }
            // Counted under the lock: the receiver credits them when it takes them.
            if let Some(account) = &shared.memory {
                account.charge(pushed);
            }
            delivered = true;
            drop(inner);
        }
        if delivered {
            self.shared.lock().wake_receiver();
            self.machine.shrink_buffers();
        }
        if status_changed {
            self.shared.status_changed.notify_waiters();
        }
        if std::mem::take(&mut self.message_seen) {
            self.shared
                .last_message
                .store(ms_at(now), Ordering::Relaxed);
        }
        // Give budget back in batches (hysteresis): once the queue is at or below the low
        // watermark, or once at least high − low bytes were freed.
        let queued = self.machine.queued_bytes();
        if self.held > queued {
            let freed = self.held - queued;
            if queued <= self.send_low || freed >= self.shared.limit - self.send_low {
                let repaid = freed.min(self.debt);
                self.debt -= repaid;
                self.shared.budget.add_permits(freed - repaid);
                self.held = queued;
                if let Some(account) = &self.shared.memory {
                    account.credit(freed);
                }
            }
        }
        if !matches!(self.machine.state(), State::Handshaking | State::Open) {
            self.shared.budget.close();
        }
        if self.machine.is_closed() && self.closed_at.is_none() {
            self.closed_at = Some(Instant::now());
        }
    }

    /// Queues a machine event for the receiver (`inner`, locked), translated, or acts on those
    /// the driver handles itself; returns the message bytes queued. Sets `status_changed` when
    /// the connection closed. Each event goes straight into the queue, with no intermediate
    /// `Option<Event>`: a profile of 64 B echoes showed such moves stalling on the way through
    /// the stack.
    pub(super) fn deliver(
        &mut self,
        event: proto::Event,
        inner: &mut Inner,
        status_changed: &mut bool,
    ) -> usize {
        let event = match event {
            // Nearly every event.
            proto::Event::Data(payload) => {
                self.message_seen = true;
                return inner.push_message(payload);
            }
            proto::Event::ShutdownWrite => {
                self.shutdown_pending = true;
                return 0;
            }
            proto::Event::Connected { peer, version } => {
                // Both before the application hears of the connection.
                let payload_max = self.machine.max_payload_len().unwrap_or(u64::MAX);
                self.shared
                    .payload_max
                    .store(payload_max, Ordering::Release);
                self.shared
                    .peer_max
                    .store(peer.max_message_len, Ordering::Release);
                Event::Connected { peer, version }
            }
            // The machine's estimate already includes this sample.
            proto::Event::Rtt(sample) => Event::Rtt(Box::new(
                self.machine
                    .rtt()
                    .unwrap_or_else(|| RttEstimate::first(sample)),
            )),
            proto::Event::Idle(kind) => Event::Idle(kind),
            proto::Event::MessageDropped { len, peer_max } => {
                Event::MessageDropped { len, peer_max }
            }
            proto::Event::FrameDiscarded(error) => Event::FrameDiscarded(error),
            proto::Event::Closed {
                code,
                reason,
                by_peer,
                error,
            } => {
                let info = Box::new(CloseInfo {
                    code,
                    reason,
                    by_peer,
                    error: error.map(|e| *e),
                    raw: self.shared.framing.is_some(),
                    transport: self.transport.as_deref().cloned(),
                });
                // Refuse sends before the application can see `Closed`: a send it makes after
                // seeing it must fail, not be "queued" and dropped.
                self.shared.budget.close();
                inner.closed = Some(info.clone());
                *status_changed = true;
                Event::Closed(info)
            }
            proto::Event::SessionRequest { id, proof, .. } => {
                self.session_id = Some(id);
                match &self.sessions {
                    Some((host, conn)) => {
                        self.resolving = Some(host.resolve(id, *conn, proof.map(|p| *p)))
                    }
                    None => {
                        self.on_resolved(Resolved::Attach(None, None), Instant::now().into_std())
                    }
                }
                return 0;
            }
            proto::Event::SessionStarted {
                id,
                status,
                resending,
            } => Event::Session(SessionEvent::Started {
                id,
                status,
                resending,
            }),
            proto::Event::SessionLost { id, unacked } => {
                Event::Session(SessionEvent::Lost { id, unacked })
            }
        };
        inner.push_event(event)
    }
}
