//! The tokio driver for a framelink protocol connection.
//!
//! [`spawn`] runs a sans-IO [`proto::connection::Connection`](framelink_proto::connection::Connection)
//! over any byte stream (a `TcpStream` in practice) on one background task, and hands back a
//! [`Connection`]: a cloneable [`Sender`] plus a [`Receiver`] of [`Event`]s, which can be
//! [`split`](Connection::split).
//!
//! ```no_run
//! use bytes::Bytes;
//! use framelink::connection::{self, CloseCode, ConnectionConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = tokio::net::TcpStream::connect("127.0.0.1:7000").await?;
//! let mut conn = connection::spawn(stream, ConnectionConfig::default())?;
//! conn.send(Bytes::from_static(b"hello")).await?;
//! if let Some(reply) = conn.recv().await {
//!     println!("got {} bytes", reply.len());
//! }
//! let info = conn.close(CloseCode::Normal, "done").await;
//! println!("closed: {info:?}");
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **One task** owns the protocol machine and the socket. It waits (with `tokio::select!`) on
//!   socket input (`read_buf` straight into the machine's `recv_buf`), output (`write_all_buf` of
//!   the queued `poll_transmit` chunks, vectored), commands from the handles, room in the event
//!   channel, and **one** [`tokio::time::Sleep`] re-armed with `reset` to `poll_timeout` after
//!   every step.
//! - **Send backpressure**: a byte budget equal to
//!   [`max_queued_bytes`](ConnectionConfig::max_queued_bytes) (capped at `u32::MAX`), counting
//!   each message as its payload plus 5 bytes of framing, from the moment it is handed to
//!   [`Sender::send`] until the driver takes it out of the protocol queue to write it. The
//!   driver only pulls about 64 KiB ahead of the socket, so a slow peer fills the protocol queue
//!   and then [`Sender::send`] **waits** for room, while [`Sender::try_send`] returns
//!   [`SendError::QueueFull`]. A message larger than the whole budget, or than the peer's
//!   `max_message_len`, is refused at once. `Ok` means "queued", not "delivered".
//! - **Receive backpressure**: events go through a bounded channel. When the application falls
//!   behind, the driver stops reading the socket (once about 64 KiB of messages are waiting), so
//!   TCP flow control slows the peer down. Stalling longer than the keep-alive timeout stops
//!   PONGs from being read too, and the peer is then declared dead: keep consuming.
//! - **Closing**: [`Sender::close`] is graceful (messages sent before it are written first) and
//!   resolves once the close handshake is done, or the linger ran out, and the socket is
//!   dropped. Dropping every [`Sender`] and the [`Receiver`] closes gracefully with
//!   [`CloseCode::Normal`]. Events already produced are still delivered after the socket is
//!   gone; [`Event::Closed`] is the last one.

use std::collections::VecDeque;
use std::fmt;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore, TryAcquireError};
use tokio::time::Instant;

use framelink_proto::connection::{self as proto, State};

pub use framelink_proto::connection::{ConfigError, ConnectionConfig, ConnectionError};
pub use framelink_proto::liveness::{DeathCause, IdleKind};
pub use framelink_proto::wire::{CloseCode, Hello};

/// Bytes of framing the protocol adds to each DATA message (and counts against the budget).
const DATA_OVERHEAD: usize = 5;
/// Read at most this much per `read_buf` call.
const READ_SIZE: usize = 16 * 1024;
/// Pull output from the protocol machine only while less than this is waiting for the socket.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading while this many payload bytes wait for the application.
const PENDING_HIGH_WATER: usize = 64 * 1024;
/// Capacity of the event channel, in events.
const EVENT_CAPACITY: usize = 256;

/// What the driver reports to the [`Receiver`], in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's HELLO was accepted: the connection is open.
    Connected {
        /// The peer's HELLO (keep-alive settings, `max_message_len`, session id, extensions).
        peer: Hello,
        /// The negotiated protocol version.
        version: u8,
    },
    /// An application message from the peer.
    Message(Bytes),
    /// A round-trip-time sample from a PING / PONG pair.
    Rtt(Duration),
    /// A direction has been idle for its configured period.
    Idle(IdleKind),
    /// A message sent before the handshake (or while it completed) was larger than the peer
    /// accepts and was dropped.
    MessageDropped {
        /// Its payload length.
        len: usize,
        /// The peer's `max_message_len` (which counts the type byte too).
        peer_max: u32,
    },
    /// The connection is closing or closed; always the last event.
    Closed(CloseInfo),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseInfo {
    /// The close code (sent by us when `by_peer` is false, received otherwise).
    pub code: CloseCode,
    /// The reason text (untrusted when `by_peer`).
    pub reason: String,
    /// The peer closed (CLOSE received or stream ended) rather than us.
    pub by_peer: bool,
    /// What went wrong, if anything (a dead peer is [`ConnectionError::PeerDead`]).
    pub error: Option<ConnectionError>,
}

/// Why a message could not be sent: the protocol's reasons, plus a vanished driver.
pub use framelink_proto::connection::SendError;

/// Spawns the driver task for `stream` on the current tokio runtime.
///
/// Fails only when `config` is invalid. Panics outside a tokio runtime.
pub fn spawn<S>(stream: S, config: ConnectionConfig) -> Result<Connection, ConfigError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let machine = proto::Connection::new(config, Instant::now().into_std())?;
    let limit = machine
        .config()
        .max_queued_bytes
        .min(u32::MAX as usize)
        .min(Semaphore::MAX_PERMITS);
    let shared = Arc::new(Shared {
        budget: Semaphore::new(limit),
        limit,
        peer_max: AtomicU32::new(u32::MAX),
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::channel(EVENT_CAPACITY);
    let (status_tx, status_rx) = watch::channel(Status::default());
    let driver = Driver {
        machine,
        shared: shared.clone(),
        held: 0,
        cmd_rx,
        commands_open: true,
        event_tx,
        receiver_gone: false,
        pending: VecDeque::new(),
        pending_bytes: 0,
        out: OutQueue::default(),
        shutdown_pending: false,
        shutdown_done: false,
        reading: true,
        write_dead: false,
        closed_at: None,
        status: status_tx,
    };
    tokio::spawn(driver.run(stream));
    let sender = Sender {
        shared,
        cmd_tx: cmd_tx.clone(),
        status: status_rx.clone(),
    };
    let receiver = Receiver {
        events: event_rx,
        _keep_open: cmd_tx,
        status: status_rx,
    };
    Ok(Connection { sender, receiver })
}

/// State shared by the handles and the driver.
#[derive(Debug)]
struct Shared {
    /// Send budget in bytes (payload + 5 per message); closed when the connection closes.
    budget: Semaphore,
    /// The budget's size.
    limit: usize,
    /// The peer's `max_message_len` once known.
    peer_max: AtomicU32,
}

/// What the handles can watch.
#[derive(Debug, Clone, Default)]
struct Status {
    closed: Option<CloseInfo>,
    /// The driver dropped the socket.
    finished: bool,
}

#[derive(Debug)]
enum Command {
    Send(Bytes),
    Close(CloseCode, String),
}

/// A running connection: a [`Sender`] and a [`Receiver`] together. Use
/// [`split`](Self::split) to hand them to different tasks.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
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
}

/// The sending half: cloneable; sends messages and closes the connection.
#[derive(Debug, Clone)]
pub struct Sender {
    shared: Arc<Shared>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
}

impl Sender {
    /// Queues a message, waiting while the send budget is used up (see the
    /// [module documentation](self)). Fails with [`SendError::Closed`] once the connection is
    /// closing, [`SendError::TooBig`] over the peer's `max_message_len`, and
    /// [`SendError::QueueFull`] if the message alone is larger than the whole budget.
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        let cost = self.check(&payload)?;
        let permit = self
            .shared
            .budget
            .acquire_many(cost as u32)
            .await
            .map_err(|_| SendError::Closed)?;
        permit.forget();
        self.cmd_tx
            .send(Command::Send(payload))
            .map_err(|_| SendError::Closed)
    }

    /// Queues a message if the budget has room now; [`SendError::QueueFull`] otherwise.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        let cost = self.check(&payload)?;
        match self.shared.budget.try_acquire_many(cost as u32) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return Err(SendError::Closed),
            Err(TryAcquireError::NoPermits) => {
                return Err(SendError::QueueFull {
                    queued: self.shared.limit - self.shared.budget.available_permits(),
                    len: cost,
                    limit: self.shared.limit,
                })
            }
        }
        self.cmd_tx
            .send(Command::Send(payload))
            .map_err(|_| SendError::Closed)
    }

    /// The budget cost of `payload`, or why it can never be sent.
    fn check(&self, payload: &Bytes) -> Result<usize, SendError> {
        if self.shared.budget.is_closed() {
            return Err(SendError::Closed);
        }
        let max = self.shared.peer_max.load(Ordering::Acquire);
        if payload.len() as u64 + 1 > u64::from(max) {
            return Err(SendError::TooBig {
                len: payload.len(),
                max,
            });
        }
        let cost = payload.len().saturating_add(DATA_OVERHEAD);
        if cost > self.shared.limit {
            return Err(SendError::QueueFull {
                queued: self.shared.limit - self.shared.budget.available_permits(),
                len: cost,
                limit: self.shared.limit,
            });
        }
        Ok(cost)
    }

    /// Closes gracefully: messages sent before are written, then CLOSE with `code` and `reason`.
    /// Resolves when the close handshake is done (or the linger ran out) and the socket is
    /// dropped, with how the connection ended (which may be an earlier close). `None` only if
    /// the driver task died (runtime shut down).
    pub async fn close(&self, code: CloseCode, reason: &str) -> Option<CloseInfo> {
        let _ = self.cmd_tx.send(Command::Close(code, reason.to_owned()));
        let mut status = self.status.clone();
        // An error means the driver is gone: the last status is all there is.
        let _ = status.wait_for(|s| s.finished).await;
        let info = status.borrow().closed.clone();
        info
    }

    /// Waits until the connection is closing or closed (without closing it) and says how.
    pub async fn closed(&self) -> Option<CloseInfo> {
        let mut status = self.status.clone();
        let _ = status.wait_for(|s| s.closed.is_some() || s.finished).await;
        let info = status.borrow().closed.clone();
        info
    }

    /// The connection is closing or closed: sends will fail.
    pub fn is_closed(&self) -> bool {
        self.shared.budget.is_closed() || self.status.borrow().closed.is_some()
    }
}

/// The receiving half: a [`Stream`] of [`Event`]s, ending after [`Event::Closed`].
///
/// Dropping it discards further events; the connection stays open while a [`Sender`] lives.
#[derive(Debug)]
pub struct Receiver {
    events: mpsc::Receiver<Event>,
    /// Keeps the command channel open: the connection closes when all handles are gone.
    _keep_open: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
}

impl Receiver {
    /// The next event; `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next application message, skipping other events; `None` once the connection is
    /// closed (see [`close_info`](Self::close_info) for how).
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.events.recv().await? {
                Event::Message(payload) => return Some(payload),
                _ => continue,
            }
        }
    }

    /// How the connection ended, once it did.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.status.borrow().closed.clone()
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

impl Stream for Receiver {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// Chunks from `poll_transmit` waiting for the socket, written with vectored writes.
#[derive(Debug, Default)]
struct OutQueue {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl OutQueue {
    fn push(&mut self, chunk: Bytes) {
        self.remaining += chunk.len();
        self.chunks.push_back(chunk);
    }

    fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.remaining = 0;
    }
}

impl Buf for OutQueue {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the queue");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("remaining counts the chunks");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
        while self.chunks.front().is_some_and(Bytes::is_empty) {
            self.chunks.pop_front();
        }
    }
}

/// What woke the driver up.
enum Wake {
    Read(std::io::Result<usize>),
    Written(std::io::Result<bool>),
    Command(Option<Command>),
    /// Room in the event channel (`false`: the receiver is gone).
    Deliver(bool),
    Timer,
}

/// The background task's state.
struct Driver {
    machine: proto::Connection,
    shared: Arc<Shared>,
    /// Budget bytes of messages handed to the machine and not yet given back.
    held: usize,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    event_tx: mpsc::Sender<Event>,
    receiver_gone: bool,
    /// Events waiting for room in the channel.
    pending: VecDeque<Event>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    out: OutQueue,
    /// `ShutdownWrite` came out: shut the write half down once `out` is written.
    shutdown_pending: bool,
    shutdown_done: bool,
    reading: bool,
    /// Writing failed: discard output.
    write_dead: bool,
    /// When the machine reached `Closed`: output gets `linger` more to be written.
    closed_at: Option<Instant>,
    status: watch::Sender<Status>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl Driver {
    async fn run<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        loop {
            self.step();
            if self.socket_done() {
                break;
            }
            // Re-arm the one timer.
            let deadline = self.deadline();
            if let Some(at) = deadline {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
            }
            if self.reading {
                self.machine.recv_buf().reserve(READ_SIZE);
            }
            let can_read = self.reading
                && (self.pending_bytes < PENDING_HIGH_WATER
                    || !matches!(self.machine.state(), State::Handshaking | State::Open));
            let can_write = !self.write_dead
                && (!self.out.is_empty() || (self.shutdown_pending && !self.shutdown_done));
            let shutdown = self.shutdown_pending;
            let commands_open = self.commands_open;
            let can_deliver = !self.pending.is_empty() && !self.receiver_gone;
            let out = &mut self.out;
            let machine = &mut self.machine;
            let event_tx = &self.event_tx;
            let cmd_rx = &mut self.cmd_rx;
            let wake = tokio::select! {
                read = rd.read_buf(machine.recv_buf()), if can_read => Wake::Read(read),
                written = async {
                    if !out.is_empty() {
                        wr.write_all_buf(out).await?;
                        wr.flush().await?;
                    }
                    if shutdown {
                        wr.shutdown().await?;
                    }
                    Ok::<bool, std::io::Error>(shutdown)
                }, if can_write => Wake::Written(written),
                cmd = cmd_rx.recv(), if commands_open => Wake::Command(cmd),
                permit = event_tx.reserve(), if can_deliver => Wake::Deliver(permit.is_ok()),
                () = &mut sleep, if deadline.is_some() => Wake::Timer,
            };
            let now = Instant::now();
            match wake {
                Wake::Read(Ok(0) | Err(_)) => {
                    self.reading = false;
                    self.machine.handle_eof(now.into_std());
                }
                Wake::Read(Ok(_)) => self.machine.process_input(now.into_std()),
                Wake::Written(Ok(shut)) => self.shutdown_done |= shut,
                Wake::Written(Err(_)) => {
                    self.write_dead = true;
                    self.out.clear();
                    self.machine.handle_eof(now.into_std());
                }
                Wake::Command(cmd) => {
                    match cmd {
                        Some(cmd) => self.command(cmd, now.into_std()),
                        None => {
                            // Every handle is gone.
                            self.commands_open = false;
                            self.local_close(CloseCode::Normal, String::new(), now.into_std());
                        }
                    }
                    // Take whatever else is waiting without another trip through select.
                    while let Ok(cmd) = self.cmd_rx.try_recv() {
                        self.command(cmd, now.into_std());
                    }
                }
                Wake::Deliver(true) => {
                    while let Some(event) = self.pending.front() {
                        let Ok(permit) = self.event_tx.try_reserve() else {
                            break;
                        };
                        if let Event::Message(payload) = event {
                            self.pending_bytes -= payload.len();
                        }
                        permit.send(self.pending.pop_front().expect("front exists"));
                    }
                }
                Wake::Deliver(false) => self.receiver_gone(),
                Wake::Timer => {
                    if self.machine.is_closed() {
                        if self
                            .closed_at
                            .is_some_and(|at| now >= at + self.machine.config().linger)
                        {
                            // Output could not be flushed in time: give up on it.
                            break;
                        }
                    } else {
                        self.machine.handle_timeout(now.into_std());
                    }
                }
            }
        }
        drop((rd, wr));
        self.shared.budget.close();
        self.status.send_modify(|s| s.finished = true);
        // Deliver what the application has not received yet.
        while let Some(event) = self.pending.pop_front() {
            if self.receiver_gone || self.event_tx.send(event).await.is_err() {
                break;
            }
        }
    }

    /// The timer deadline: the machine's, or the flush deadline once it is closed.
    fn deadline(&self) -> Option<Instant> {
        match self.machine.poll_timeout() {
            Some(at) => Some(Instant::from_std(at)),
            None => self.closed_at.map(|at| at + self.machine.config().linger),
        }
    }

    /// The protocol is done and everything it wanted written is written (or unwritable).
    fn socket_done(&self) -> bool {
        self.machine.is_closed()
            && self.machine.is_drained()
            && (self.write_dead
                || (self.out.is_empty() && (!self.shutdown_pending || self.shutdown_done)))
    }

    fn command(&mut self, cmd: Command, now: std::time::Instant) {
        match cmd {
            Command::Send(payload) => {
                let cost = payload.len() + DATA_OVERHEAD;
                let len = payload.len();
                match self.machine.send(payload, now) {
                    Ok(()) => self.held += cost,
                    Err(e) => {
                        self.shared.budget.add_permits(cost);
                        if let SendError::TooBig { max, .. } = e {
                            // The handle checked before the peer's limit was known.
                            self.push_event(Event::MessageDropped { len, peer_max: max });
                        }
                    }
                }
            }
            Command::Close(code, reason) => self.local_close(code, reason, now),
        }
    }

    /// A graceful close asked for by a handle (or by all of them going away).
    fn local_close(&mut self, code: CloseCode, reason: String, now: std::time::Instant) {
        self.machine.close(code, &reason, now);
    }

    /// Drains the machine after an input: output (up to the high-water mark), events, budget.
    fn step(&mut self) {
        let now = Instant::now().into_std();
        loop {
            while self.write_dead || self.out.remaining < WRITE_HIGH_WATER {
                match self.machine.poll_transmit(now) {
                    Some(chunk) if !self.write_dead => self.out.push(chunk),
                    Some(_) => {}
                    None => break,
                }
            }
            let mut any = false;
            while let Some(event) = self.machine.poll_event() {
                any = true;
                self.machine_event(event);
            }
            if !any {
                break;
            }
        }
        let queued = self.machine.queued_bytes();
        if self.held > queued {
            self.shared.budget.add_permits(self.held - queued);
            self.held = queued;
        }
        if !matches!(self.machine.state(), State::Handshaking | State::Open) {
            self.shared.budget.close();
        }
        if self.machine.is_closed() && self.closed_at.is_none() {
            self.closed_at = Some(Instant::now());
        }
    }

    fn machine_event(&mut self, event: proto::Event) {
        let event = match event {
            proto::Event::ShutdownWrite => {
                self.shutdown_pending = true;
                return;
            }
            proto::Event::Connected { peer, version } => {
                self.shared
                    .peer_max
                    .store(peer.max_message_len, Ordering::Release);
                Event::Connected { peer, version }
            }
            proto::Event::Data(payload) => Event::Message(payload),
            proto::Event::Rtt(rtt) => Event::Rtt(rtt),
            proto::Event::Idle(kind) => Event::Idle(kind),
            proto::Event::MessageDropped { len, peer_max } => {
                Event::MessageDropped { len, peer_max }
            }
            proto::Event::Closed {
                code,
                reason,
                by_peer,
                error,
            } => {
                let info = CloseInfo {
                    code,
                    reason,
                    by_peer,
                    error,
                };
                self.status.send_modify(|s| s.closed = Some(info.clone()));
                Event::Closed(info)
            }
        };
        self.push_event(event);
    }

    fn push_event(&mut self, event: Event) {
        if self.receiver_gone {
            return;
        }
        if let Event::Message(payload) = &event {
            self.pending_bytes += payload.len();
        }
        self.pending.push_back(event);
    }

    fn receiver_gone(&mut self) {
        self.receiver_gone = true;
        self.pending.clear();
        self.pending_bytes = 0;
    }
}
