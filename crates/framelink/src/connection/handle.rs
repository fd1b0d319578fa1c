//! The application's handles: [`Connection`], [`Sender`], [`Receiver`], and the state they
//! share with the driver.

use super::*;
#[cfg(doc)]
use framelink_proto::codec::DelimiterCodec;

/// State shared by the handles and the driver: one allocation per connection.
pub(super) struct Shared {
    /// This connection's share of a server's memory budget, if any.
    pub(super) memory: Option<Account>,
    /// Send budget in bytes (payload + overhead per message); closed when the connection closes.
    pub(super) budget: Semaphore,
    /// The budget's size (the send high watermark).
    pub(super) limit: usize,
    pub(super) config: DriverConfig,
    /// Budget bytes each message costs on top of its payload.
    pub(super) overhead: usize,
    /// Protocol mode: the peer's `max_message_len` once known.
    pub(super) peer_max: AtomicU32,
    /// ... and the longest payload it allows (less the type byte, and a session's sequence
    /// number).
    pub(super) payload_max: AtomicU64,
    /// Raw mode: the framing, to refuse what it cannot encode before queueing.
    pub(super) framing: Option<Box<Framing>>,
    pub(super) inner: Mutex<Inner>,
    /// Rung by the handles: a command is queued, the receiver made room, or handles went away.
    pub(super) wake_driver: Notify,
    /// Rung by the driver when the connection closes and when the socket is gone.
    pub(super) status_changed: Notify,
    /// When the last application message went either way ([`clock_ms`]), for
    /// [`Sender::idle_for`].
    pub(super) last_message: AtomicU64,
}

/// Milliseconds on a process-wide monotonic clock (from its first use).
pub(super) fn clock_ms() -> u64 {
    ms_at(std::time::Instant::now())
}

/// [`clock_ms`] at `at`, without reading the clock again.
pub(super) fn ms_at(at: std::time::Instant) -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limit", &self.limit)
            .field("available", &self.budget.available_permits())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent in a way that matters
        // more than losing the connection: keep going with the data as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mutable part of [`Shared`].
#[derive(Default)]
pub(super) struct Inner {
    /// Commands from the handles, in order.
    pub(super) commands: VecDeque<Command>,
    /// Events for the receiver, in order.
    pub(super) events: VecDeque<Event>,
    /// Payload bytes in `events`.
    pub(super) event_bytes: usize,
    /// The receiver waits for an event.
    pub(super) receiver_waker: Option<Waker>,
    /// The driver stopped reading because too much waits in `events`: ring it once the
    /// receiver has taken them down to the low watermark.
    pub(super) reading_paused: bool,
    /// Live [`Sender`]s.
    pub(super) senders: usize,
    pub(super) receiver_alive: bool,
    pub(super) closed: Option<Box<CloseInfo>>,
    /// The driver dropped the socket: no more events after those queued.
    pub(super) finished: bool,
    /// Connecting side: the session left by the finished driver, for the next connection
    /// (boxed: most connections never have one, and this lives as long as the connection).
    pub(super) session: Option<Box<Session>>,
    /// Messages handed over that were never written (no session to keep them): the
    /// connection ended first. Left by the finished driver.
    pub(super) unsent: Vec<Bytes>,
    /// Accepting side: this connection's place in its session's order, when it waits for an
    /// older connection of the session or an newer one waits for it (see [`session_order`]).
    pub(super) order: Option<Box<session_order::Order>>,
    /// A [`SessionOrderHold`](session_order::SessionOrderHold) opens this connection's gate,
    /// not the receiver.
    pub(super) order_held: bool,
}

/// What a queued event counts for besides its payload: its slot in the queue. Without it a
/// peer's empty messages (5 bytes on the wire each, thousands from one read) would cost the
/// receive watermark and the server's memory budget nothing.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Event>();

/// The bytes a queued event is counted for: its payload and [`EVENT_OVERHEAD`].
fn event_cost(event: &Event) -> usize {
    match event {
        Event::Message(payload) => payload.len() + EVENT_OVERHEAD,
        _ => EVENT_OVERHEAD,
    }
}

impl Inner {
    pub(super) fn events_full(&self, config: &DriverConfig) -> bool {
        self.event_bytes >= config.recv_high_watermark
            || self.events.len() >= config.max_pending_events
    }

    /// Queues `event` for the receiver; returns the bytes it is counted for ([`event_cost`]).
    pub(super) fn push_event(&mut self, event: Event) -> usize {
        match event {
            Event::Message(payload) => self.push_message(payload),
            other => {
                if !self.receiver_alive {
                    return 0;
                }
                self.events.push_back(other);
                self.event_bytes += EVENT_OVERHEAD;
                EVENT_OVERHEAD
            }
        }
    }

    /// Queues a message for the receiver; returns the bytes it is counted for ([`event_cost`]).
    #[inline]
    pub(super) fn push_message(&mut self, payload: Bytes) -> usize {
        if !self.receiver_alive {
            return 0;
        }
        let cost = payload.len() + EVENT_OVERHEAD;
        self.event_bytes += cost;
        self.events.push_back(Event::Message(payload));
        cost
    }

    pub(super) fn wake_receiver(&mut self) {
        if let Some(waker) = self.receiver_waker.take() {
            waker.wake();
        }
    }
}

#[derive(Debug)]
pub(super) enum Command {
    Send(Bytes),
    Close(CloseCode, String),
    /// Accepting side: another connection resumed this session; drop the socket now (no
    /// CLOSE, no linger) so that the session is released at once.
    Detach,
    /// A server over its memory budget: close at once (CLOSE `ServerFull` with this reason),
    /// dropping queued messages and buffered input.
    Evict(String),
}

/// A running connection: a [`Stream`] of [`Event`]s and a [`Sink`] of messages. Use
/// [`split`](Self::split) to hand the halves to different tasks.
#[derive(Debug)]
pub struct Connection {
    pub(super) sender: Sender,
    pub(super) receiver: Receiver,
}

impl Connection {
    /// Separates the sending and receiving halves.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// A new handle for sending and closing.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// See [`Sender::send`].
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        self.sender.send(payload).await
    }

    /// See [`Sender::try_send`].
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        self.sender.try_send(payload)
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.receiver.recv().await
    }

    /// See [`Receiver::next_event`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.receiver.next_event().await
    }

    /// See [`Sender::close`].
    pub async fn close(&self, code: CloseCode, reason: &str) -> Option<CloseInfo> {
        self.sender.close(code, reason).await
    }

    /// See [`Sender::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Stream for Connection {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl Sink<Bytes> for Connection {
    type Error = SendError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.sender).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), SendError> {
        Pin::new(&mut self.sender).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.sender).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.sender).poll_close(cx)
    }
}

/// The sending half: cloneable; sends messages and closes the connection.
///
/// It is also a [`Sink`] of [`Bytes`]: `poll_ready` waits until the previous message fits the
/// send budget, `start_send` takes the next one, `poll_flush` waits until it is queued (not
/// written), and `poll_close` closes the connection gracefully with [`CloseCode::Normal`] and
/// waits until the socket is gone.
pub struct Sender {
    pub(super) shared: Arc<Shared>,
    /// Sink state: a message taken by `start_send`, waiting for budget.
    pub(super) sink_item: Option<Bytes>,
    /// Sink state: the budget wait (or the close) in progress.
    pub(super) sink_wait: Option<ReusableBoxFuture<'static, Result<(), SendError>>>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
            sink_item: None,
            sink_wait: None,
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.senders -= 1;
        if inner.senders == 0 && !inner.receiver_alive {
            drop(inner);
            self.shared.wake_driver.notify_one();
        }
    }
}

impl Sender {
    /// How long the connection has carried no application message, either way (heartbeats do
    /// not count): since the last one, or since it opened.
    pub fn idle_for(&self) -> Duration {
        let last = self.shared.last_message.load(Ordering::Relaxed);
        Duration::from_millis(clock_ms().saturating_sub(last))
    }

    /// The handle counted in `senders` already.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Sender {
            shared,
            sink_item: None,
            sink_wait: None,
        }
    }

    /// Queues a message, waiting while the send budget is used up (see the
    /// [module documentation](super)). Fails with [`SendError::Closed`] once the connection is
    /// closing, [`SendError::TooBig`] over the peer's `max_message_len`,
    /// [`SendError::Unencodable`] when a raw framing cannot carry it, and
    /// [`SendError::QueueFull`] if the message alone is larger than the whole budget.
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        send_on(&self.shared, payload).await
    }

    /// Queues a message if the budget has room now; [`SendError::QueueFull`] otherwise.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        let cost = check(&self.shared, &payload)?;
        self.try_reserve(cost)?;
        enqueue_send(&self.shared, payload, cost)
    }

    /// Queues every message of `batch`, in order, waiting for budget as [`send`](Self::send)
    /// does, but taking the budget and the queue lock once for each run of messages that fits
    /// the budget, not once per message: the way to send many small messages fast.
    ///
    /// On success `batch` is empty (its capacity is kept, for reuse). On error, `batch` holds
    /// exactly the messages that were not queued, in order, and the first of them is the one
    /// the error is about (for [`SendError::Closed`], the first not queued): nothing is lost
    /// silently. Only [`SendError::Closed`] concerns the rest of the batch too; the other
    /// errors ([`TooBig`](SendError::TooBig), [`Unencodable`](SendError::Unencodable),
    /// [`QueueFull`](SendError::QueueFull) for a message larger than the whole budget) refuse
    /// that one message, which can never be sent: take it out and send the rest.
    ///
    /// ```no_run
    /// # async fn echo(mut receiver: framelink::Receiver, sender: framelink::Sender) {
    /// use framelink::{connection::SendError, Event};
    /// let (mut events, mut replies) = (Vec::new(), Vec::new());
    /// while receiver.recv_many(&mut events, 1024).await > 0 {
    ///     replies.extend(events.drain(..).filter_map(|event| match event {
    ///         Event::Message(payload) => Some(payload),
    ///         _ => None,
    ///     }));
    ///     while let Err(e) = sender.send_batch(&mut replies).await {
    ///         if e == SendError::Closed {
    ///             return;
    ///         }
    ///         let refused = replies.remove(0); // this one can never go: the others can
    ///         eprintln!("reply of {} bytes not sent: {e}", refused.len());
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn send_batch(&self, batch: &mut Vec<Bytes>) -> Result<(), SendError> {
        while !batch.is_empty() {
            // The longest prefix that fits the budget available now, with its total cost.
            let available = self.shared.budget.available_permits();
            let (mut count, mut total, mut refused, mut reserved) = (0, 0usize, None, false);
            for payload in batch.iter() {
                match check(&self.shared, payload) {
                    Ok(cost) if total + cost <= available => {
                        total += cost;
                        count += 1;
                    }
                    Ok(cost) => {
                        if count == 0 {
                            // Not even the first fits now: wait for its budget alone.
                            let permit = self
                                .shared
                                .budget
                                .acquire_many(cost as u32)
                                .await
                                .map_err(|_| SendError::Closed)?;
                            permit.forget();
                            (count, total, reserved) = (1, cost, true);
                        }
                        break;
                    }
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if count == 0 {
                return Err(refused.unwrap_or(SendError::Closed));
            }
            if !reserved {
                match self.shared.budget.try_acquire_many(total as u32) {
                    Ok(permit) => permit.forget(),
                    Err(TryAcquireError::Closed) => return Err(SendError::Closed),
                    // Another sender took budget in between: measure again.
                    Err(TryAcquireError::NoPermits) => continue,
                }
            }
            let memory = self.shared.memory.as_ref();
            if memory.is_some_and(|account| !account.try_reserve(total)) {
                // The server's memory budget is used up: give the send budget back, wait for
                // memory, then measure again.
                self.shared.budget.add_permits(total);
                wait_for_memory(&self.shared, total).await?;
                continue;
            }
            let hold = Hold::new(memory, total);
            {
                let mut inner = self.shared.lock();
                if inner.finished {
                    return Err(SendError::Closed);
                }
                hold.keep();
                inner
                    .commands
                    .extend(batch.drain(..count).map(Command::Send));
            }
            self.shared.wake_driver.notify_one();
        }
        Ok(())
    }

    /// Takes `cost` bytes of budget if it has them now.
    pub(super) fn try_reserve(&self, cost: usize) -> Result<(), SendError> {
        match self.shared.budget.try_acquire_many(cost as u32) {
            Ok(permit) => {
                if let Some(account) = &self.shared.memory {
                    if !account.try_reserve_or_ask(cost) {
                        drop(permit);
                        let budget = account.budget();
                        return Err(SendError::QueueFull {
                            queued: budget.used(),
                            len: cost,
                            limit: budget.limit(),
                        });
                    }
                }
                permit.forget();
                Ok(())
            }
            Err(TryAcquireError::Closed) => Err(SendError::Closed),
            Err(TryAcquireError::NoPermits) => Err(SendError::QueueFull {
                queued: self.shared.limit - self.shared.budget.available_permits(),
                len: cost,
                limit: self.shared.limit,
            }),
        }
    }

    /// Closes gracefully: messages sent before are written, then CLOSE with `code` and `reason`
    /// (raw mode: the write half is shut down). Resolves when the close handshake is done (or
    /// the linger ran out) and the socket is dropped, with how the connection ended (which may
    /// be an earlier close). `None` only if the driver task died (runtime shut down).
    pub async fn close(&self, code: CloseCode, reason: &str) -> Option<CloseInfo> {
        close_on(self.shared.clone(), code, reason.to_owned()).await
    }

    /// Accepting side: ends the connection at once, leaving its session to another one.
    pub(crate) fn detach(&self) {
        let _ = enqueue(&self.shared, Command::Detach);
    }

    /// A server over its memory budget: closes at once with `ServerFull` and `reason`,
    /// dropping queued messages and buffered input. `false` if the driver is already gone.
    pub(crate) fn evict(&self, reason: String) -> bool {
        enqueue(&self.shared, Command::Evict(reason)).is_ok()
    }

    /// The driver has finished (the socket is gone).
    pub(crate) fn is_finished(&self) -> bool {
        self.shared.lock().finished
    }

    /// Bytes of the server's memory budget this connection holds now (0 without a budget).
    pub(crate) fn memory_held(&self) -> usize {
        self.shared.memory.as_ref().map_or(0, Account::held)
    }

    /// Waits until the connection is closing or closed (without closing it) and says how.
    pub async fn closed(&self) -> Option<CloseInfo> {
        wait_status(&self.shared, |inner| {
            inner.closed.is_some() || inner.finished
        })
        .await
    }

    /// The connection is closing or closed: sends will fail.
    pub fn is_closed(&self) -> bool {
        self.shared.budget.is_closed() || self.shared.lock().closed.is_some()
    }

    /// Budget bytes in use now (queued messages not yet taken for writing).
    pub fn queued_bytes(&self) -> usize {
        self.shared.limit - self.shared.budget.available_permits()
    }

    /// The whole send budget in bytes (the connection's `max_queued_bytes`): what
    /// [`queued_bytes`](Self::queued_bytes) counts against, and the `limit` of
    /// [`SendError::QueueFull`].
    pub fn queue_limit(&self) -> usize {
        self.shared.limit
    }

    /// Drives the sink's pending work (a budget wait or a close) to completion.
    pub(super) fn poll_sink_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if let Some(wait) = &mut self.sink_wait {
            let result = ready!(wait.poll(cx));
            self.sink_wait = None;
            result?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Sink<Bytes> for Sender {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.poll_flush(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), SendError> {
        debug_assert!(self.sink_item.is_none(), "start_send without poll_ready");
        // Refuse what can never be sent now rather than at the next poll (checked once).
        let cost = check(&self.shared, &item)?;
        match self.try_reserve(cost) {
            Ok(()) => enqueue_send(&self.shared, item, cost),
            Err(SendError::QueueFull { .. }) => {
                // Waits in `poll_flush` / the next `poll_ready` for budget.
                self.sink_item = Some(item);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.poll_sink_wait(cx))?;
        if let Some(item) = self.sink_item.take() {
            let shared = self.shared.clone();
            self.sink_wait = Some(ReusableBoxFuture::new(async move {
                send_on(&shared, item).await
            }));
            ready!(self.poll_sink_wait(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let shared = self.shared.clone();
        self.sink_wait = Some(ReusableBoxFuture::new(async move {
            close_on(shared, CloseCode::Normal, String::new()).await;
            Ok(())
        }));
        self.poll_sink_wait(cx)
    }
}

/// The budget cost of `payload`, or why it can never be sent.
pub(super) fn check(shared: &Shared, payload: &Bytes) -> Result<usize, SendError> {
    if shared.budget.is_closed() {
        return Err(SendError::Closed);
    }
    if payload.len() as u64 > shared.payload_max.load(Ordering::Acquire) {
        return Err(SendError::TooBig {
            len: payload.len(),
            max: shared.peer_max.load(Ordering::Acquire),
        });
    }
    if let Some(framing) = &shared.framing {
        framing
            .check_payload(payload)
            .map_err(SendError::Unencodable)?;
    }
    let cost = payload.len().saturating_add(shared.overhead);
    if cost > shared.limit {
        return Err(SendError::QueueFull {
            queued: shared.limit - shared.budget.available_permits(),
            len: cost,
            limit: shared.limit,
        });
    }
    Ok(cost)
}

/// Queues a command for the driver and wakes it.
pub(super) fn enqueue(shared: &Shared, command: Command) -> Result<(), SendError> {
    {
        let mut inner = shared.lock();
        if inner.finished {
            return Err(SendError::Closed);
        }
        inner.commands.push_back(command);
    }
    shared.wake_driver.notify_one();
    Ok(())
}

/// Queues a message whose budget (and memory) is taken; gives the memory back if the driver
/// is gone.
pub(super) fn enqueue_send(shared: &Shared, payload: Bytes, cost: usize) -> Result<(), SendError> {
    let hold = Hold::new(shared.memory.as_ref(), cost);
    enqueue(shared, Command::Send(payload))?;
    hold.keep();
    Ok(())
}

/// Waits until `n` bytes fit in the server's memory budget (reserving nothing), or the
/// connection closes.
pub(super) async fn wait_for_memory(shared: &Shared, n: usize) -> Result<(), SendError> {
    let Some(account) = &shared.memory else {
        return Ok(());
    };
    tokio::select! {
        () = account.reserve(n) => {
            account.credit(n);
            Ok(())
        }
        _ = wait_status(shared, |inner| inner.closed.is_some() || inner.finished) => {
            Err(SendError::Closed)
        }
    }
}

pub(super) async fn send_on(shared: &Shared, payload: Bytes) -> Result<(), SendError> {
    let cost = check(shared, &payload)?;
    let permit = shared
        .budget
        .acquire_many(cost as u32)
        .await
        .map_err(|_| SendError::Closed)?;
    if let Some(account) = &shared.memory {
        // The server's memory budget: wait for room (a cancelled wait gives the permits back).
        if !account.try_reserve_or_ask(cost) {
            tokio::select! {
                () = account.reserve(cost) => {}
                _ = wait_status(shared, |inner| inner.closed.is_some() || inner.finished) => {
                    return Err(SendError::Closed);
                }
            }
        }
    }
    permit.forget();
    enqueue_send(shared, payload, cost)
}

pub(super) async fn close_on(
    shared: Arc<Shared>,
    code: CloseCode,
    reason: String,
) -> Option<CloseInfo> {
    // A finished driver ignores the command; the status says how it ended.
    let _ = enqueue(&shared, Command::Close(code, reason));
    wait_status(&shared, |inner| inner.finished).await
}

/// Waits until `done` holds (or the driver is gone) and returns the close info.
pub(super) async fn wait_status(
    shared: &Shared,
    done: impl Fn(&Inner) -> bool,
) -> Option<CloseInfo> {
    loop {
        let notified = shared.status_changed.notified();
        tokio::pin!(notified);
        // Register before checking, so a change between the check and the await is not lost.
        notified.as_mut().enable();
        {
            let inner = shared.lock();
            if done(&inner) {
                return inner.closed.as_deref().cloned();
            }
        }
        notified.await;
    }
}

/// The receiving half: a [`Stream`] of [`Event`]s, ending after [`Event::Closed`].
///
/// Dropping it discards further events; the connection stays open while a [`Sender`] lives.
///
/// A server connection that resumed a session hands out nothing until the receiver of the
/// session's previous connection has been asked for the event after its last message of the
/// session, or dropped: see [`ServerSessions`](crate::ServerSessions). Keep reading a
/// connection until `Closed`, or drop its receiver.
#[derive(Debug)]
pub struct Receiver {
    pub(super) shared: Arc<Shared>,
    /// Events taken from the shared queue in one batch (one lock per batch, not per event).
    pub(super) local: VecDeque<Event>,
    /// Payload bytes in `local`.
    pub(super) local_bytes: usize,
    /// The driver paused reading when this batch was taken: resume it once the batch is
    /// down to the receive low watermark.
    pub(super) resume_pending: bool,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.receiver_alive = false;
        session_order::on_receiver_drop(&mut inner);
        inner.events = VecDeque::new();
        if let Some(account) = &self.shared.memory {
            account.credit(inner.event_bytes);
        }
        inner.event_bytes = 0;
        inner.reading_paused = false;
        drop(inner);
        // Either every handle is gone, or the driver may be waiting for room it now has.
        self.shared.wake_driver.notify_one();
    }
}

impl Receiver {
    /// The next event; `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next application message, skipping other events; `None` once the connection is
    /// closed (see [`close_info`](Self::close_info) for how).
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            if let Event::Message(payload) = self.next_event().await? {
                return Some(payload);
            }
        }
    }

    /// Payload bytes of received messages waiting in this receiver (bounded by the driver's
    /// receive watermarks, plus one read).
    pub fn buffered_bytes(&self) -> usize {
        self.local_bytes + self.shared.lock().event_bytes
    }

    /// The session the finished connection leaves behind (connecting side), to resume on the
    /// next connection. `None` before the driver finished, without a session, or after the
    /// session ended.
    pub(crate) fn take_session(&self) -> Option<Session> {
        self.shared.lock().session.take().map(|s| *s)
    }

    /// How the connection ended, once it did.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.shared.lock().closed.as_deref().cloned()
    }

    /// Once the connection finished (the last event was taken): the messages that were
    /// handed over but never written, oldest first. Outside a session nothing resends them
    /// (raw mode cannot), so the application learns which they were. Taken once.
    pub fn take_unsent(&self) -> Vec<Bytes> {
        let mut inner = self.shared.lock();
        if !inner.finished {
            return Vec::new();
        }
        std::mem::take(&mut inner.unsent)
    }

    /// Takes over from this receiver the duty of holding back the session's next connection
    /// (see [`ServerSessions`](crate::ServerSessions)): for a runtime that moves the events on
    /// to a queue of its own, from which the application takes them later (the Python package
    /// does). From now on the receiver hands out every event, also after the connection's last
    /// message of the session, and neither that nor dropping it lets the next connection go
    /// on: dropping the returned hold does. Without sessions, or for a connection whose session
    /// never moves, it does nothing.
    pub fn hold_session_order(&mut self) -> session_order::SessionOrderHold {
        self.shared.lock().order_held = true;
        session_order::SessionOrderHold {
            shared: self.shared.clone(),
        }
    }

    /// Only the application messages, as a stream of [`Bytes`].
    pub fn into_messages(self) -> impl Stream<Item = Bytes> + Send + Unpin {
        futures::StreamExt::filter_map(self, |event| {
            futures::future::ready(match event {
                Event::Message(payload) => Some(payload),
                _ => None,
            })
        })
    }
}

impl Receiver {
    /// Takes the next event from the local batch, first refilling the batch with everything
    /// waiting in the shared queue (one lock per batch, not per event) when it is empty.
    pub(super) fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.local.is_empty() {
            // Take everything waiting at once: the driver's queue becomes empty, so reading
            // resumes (the batch taken is bounded by the receive high watermark).
            let mut inner = self.shared.lock();
            // A resumed session's messages wait for the older connection's (rarely set).
            if inner.order.is_some() {
                ready!(session_order::poll_turn(&mut inner, cx));
            }
            if inner.events.is_empty() {
                if inner.finished {
                    return Poll::Ready(None);
                }
                match &inner.receiver_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => inner.receiver_waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut self.local, &mut inner.events);
            self.local_bytes = std::mem::take(&mut inner.event_bytes);
            // Taken by the application: no longer the server's to count.
            if let Some(account) = &self.shared.memory {
                account.credit(self.local_bytes);
            }
            self.resume_pending |= inner.reading_paused;
        }
        let event = self.local.pop_front().expect("not empty");
        self.local_bytes = self.local_bytes.saturating_sub(event_cost(&event));
        let config = &self.shared.config;
        if self.resume_pending
            && self.local_bytes <= config.recv_low_watermark
            && self.local.len() <= config.max_pending_events / 4
        {
            self.resume_pending = false;
            self.shared.lock().reading_paused = false;
            self.shared.wake_driver.notify_one();
        }
        if self.local.is_empty() {
            // A quiet connection keeps no event buffer.
            self.local = VecDeque::new();
        }
        Poll::Ready(Some(event))
    }

    /// Waits for at least one event, then moves up to `limit` events that have already arrived
    /// into `events` (appending); returns how many. `0` means the connection is over (after
    /// [`Event::Closed`]) or `limit` is 0. Like [`next_event`](Self::next_event) in a loop, but
    /// without a wake-up per event: see [`Sender::send_batch`] for an echo built on both.
    pub async fn recv_many(&mut self, events: &mut Vec<Event>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let Some(first) = self.next_event().await else {
            return 0;
        };
        events.push(first);
        let mut count = 1;
        // The rest of the batch just taken: already here, no waiting.
        while count < limit && !self.local.is_empty() {
            // Never pending with a batch in hand, so the waker is never kept.
            let waker = futures::task::noop_waker_ref();
            match self.poll_take(&mut Context::from_waker(waker)) {
                Poll::Ready(Some(event)) => events.push(event),
                _ => break,
            }
            count += 1;
        }
        count
    }
}

impl Stream for Receiver {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_take(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queued_event_is_counted_empty_messages_too() {
        let mut inner = Inner {
            receiver_alive: true,
            ..Inner::default()
        };
        let config = DriverConfig::default();
        let (mut counted, mut pushed) = (0, 0);
        while !inner.events_full(&config) {
            // 5 bytes on the wire each: without the overhead they would cost nothing.
            counted += inner.push_message(Bytes::new());
            pushed += 1;
        }
        const { assert!(EVENT_OVERHEAD >= 32) };
        assert_eq!(counted, pushed * EVENT_OVERHEAD);
        assert_eq!(inner.event_bytes, counted);
        assert_eq!(
            inner.push_event(Event::MessageDropped {
                len: 1,
                peer_max: 1
            }),
            EVENT_OVERHEAD
        );
        assert_eq!(inner.event_bytes, counted + EVENT_OVERHEAD);
        // The receiver takes them back at the same price.
        let taken: usize = inner.events.iter().map(event_cost).sum();
        assert_eq!(taken, inner.event_bytes);
    }
}
