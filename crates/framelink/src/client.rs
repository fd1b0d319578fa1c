//! The reconnecting [`Client`] (documented there) and its types, re-exported at the crate root.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use framelink_proto::backoff::{Backoff, BackoffConfig};
use framelink_proto::liveness::RttEstimate;
use framelink_proto::session::{Session, SessionConfig};

use crate::connection::{self, CloseCode, DriverConfig, Hello, IdleKind, SendError, SpawnOptions};
use crate::socket::SocketOptions;
use crate::tls::{MaybeTls, TlsClientConfig};
use crate::{CloseInfo, DecodeError, Event, Protocol, Sender, SessionEvent};

/// Connection events the supervisor forwards per batch at most: one hand-over (one slot of the
/// client's queue, one wake-up of its reader) per batch, not per message. Large batches let an
/// application that reads in batches (the Python package) wake up once per read of the socket.
const FORWARD_BATCH: usize = 1024;
/// Batches queued between the supervisor and the [`Client`] at most. The supervisor's own
/// events (connected, reconnecting...) travel one per batch. The notices of a failed attempt
/// ([`ClientEvent::ConnectFailed`], [`ClientEvent::Reconnecting`]) are left out when the queue
/// is full, so that a client whose application reads no events keeps reconnecting.
const QUEUED_BATCHES: usize = 256;
/// Bytes of connection events queued between the supervisor and the [`Client`] at most, each
/// message counted as its length plus [`EVENT_COST`] (a batch over this size alone still
/// passes, once the queue is empty).
const QUEUE_BYTES: usize = 1 << 20;
/// What a queued connection event counts for besides its message's bytes: about its size.
const EVENT_COST: usize = 64;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// What the connection speaks, with its heartbeat. Default: framelink protocol v1 with
    /// [`ConnectionConfig::default`](crate::connection::ConnectionConfig).
    pub protocol: Protocol,
    /// Delays between attempts. Default: 100 ms doubling up to 30 s, full jitter, forever.
    pub backoff: BackoffConfig,
    /// Give up on one connect attempt after this long. Default 10 s.
    pub connect_timeout: Duration,
    /// A connection that stays up this long resets the backoff. Default 5 s.
    pub stable_after: Duration,
    /// Socket options for the connected socket. Default [`SocketOptions::default`].
    pub socket: SocketOptions,
    /// Buffering and backpressure of the connection's driver.
    pub driver: DriverConfig,
    /// Acknowledged sessions (protocol mode; the server must offer them): every message is
    /// numbered and kept until the server acknowledges it, and after a reconnect both sides
    /// resend what the other has not delivered, so nothing is lost or duplicated. `None`
    /// (default): off, messages in flight when a connection dies are lost.
    pub sessions: Option<SessionConfig>,
    /// TLS (and mutual TLS with a client certificate) on every connection, protocol or raw
    /// mode: see [`crate::tls`]. The handshake follows each TCP connect; its failure is a
    /// [`ClientEvent::ConnectFailed`] that says why (unknown CA, name mismatch, expired
    /// certificate...). The one rustls configuration serves every reconnect, so TLS sessions
    /// are resumed. `None` (default): plain TCP.
    pub tls: Option<TlsClientConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: Protocol::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            stable_after: Duration::from_secs(5),
            socket: SocketOptions::default(),
            driver: DriverConfig::default(),
            sessions: None,
            tls: None,
        }
    }
}

/// What a [`Client`] reports, in order.
///
/// Exhaustive on purpose, like [`Event`]: code that translates client events (the Python
/// package) matches every variant, so a new one is a compile error there.
///
/// Small on purpose, like [`Event`]: every message crosses the client's queue as one
/// `ClientEvent`, so the rare, large variants are boxed (the same boxes as [`Event`]'s, passed
/// on without a copy) and the size is 56 bytes, checked by a test.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A connection is up: in protocol mode once the handshake completed (with the server's
    /// HELLO), in raw mode once TCP connected.
    Connected {
        /// The server's address.
        addr: SocketAddr,
        /// Which attempt in the current series succeeded (1 for the first try).
        attempt: u32,
        /// Protocol mode: the server's HELLO.
        peer: Option<Box<Hello>>,
    },
    /// A message from the server.
    Message(Bytes),
    /// A heartbeat round trip completed: the latest sample, the smoothed RTT and its variation
    /// (RFC 6298), the minimum and the sample count.
    Rtt(Box<RttEstimate>),
    /// A direction of the current connection has been idle for its configured period.
    Idle(IdleKind),
    /// Raw mode: the framing skipped bad input (see [`Event::FrameDiscarded`]).
    FrameDiscarded(Box<DecodeError>),
    /// A message queued during the handshake was too large for the server and was dropped.
    MessageDropped {
        /// Its payload length.
        len: usize,
        /// The server's `max_message_len`.
        peer_max: u32,
    },
    /// The connection ended; how and why.
    Disconnected(Box<CloseInfo>),
    /// Sessions: the session runs on the new connection (new, resumed, or unknown to the
    /// server, which then started a new one), or the server could not resume it (expired,
    /// restarted), or it ended with unacknowledged messages: they are handed back, and may or
    /// may not have been delivered. Nothing is dropped silently. The same [`SessionEvent`] as
    /// a connection's [`Event::Session`].
    Session(SessionEvent),
    /// A connect attempt failed (refused, timed out, handshake failed before opening). Left
    /// out, like [`Reconnecting`](Self::Reconnecting), when the client's event queue is full
    /// (an application that does not read events): reconnecting never waits for the reader.
    ConnectFailed {
        /// The attempt number in the current series.
        attempt: u32,
        /// What went wrong.
        error: Arc<std::io::Error>,
    },
    /// The next attempt starts after `delay`.
    Reconnecting {
        /// The attempt about to be made, in the current series (the first try was attempt 1,
        /// so the first reconnect is attempt 2).
        attempt: u32,
        /// The jittered backoff delay before it: at most
        /// `min(max, initial × multiplier^(attempt − 2))`.
        delay: Duration,
    },
    /// [`BackoffConfig::max_attempts`] attempts in a row failed: the client stopped. Last event.
    ///
    /// An attempt fails when it cannot connect, or when the connection it made was lost
    /// within [`ClientConfig::stable_after`] (a server that accepts and then drops, or evicts,
    /// every connection); a connection that lasted longer starts a new series.
    GaveUp {
        /// Attempts made in the last series.
        attempts: u32,
        /// Of those, how many connected (and were lost within `stable_after`); the others
        /// could not connect at all.
        connected: u32,
    },
    /// [`Client::close`] finished (or the client was dropped). Last event.
    Closed,
    /// After [`Disconnected`](Self::Disconnected): messages that were handed to the lost
    /// connection but never written, oldest first. Nothing resends them (raw mode cannot; in
    /// protocol mode only sessions do), so they are handed back here rather than lost
    /// without a word. Messages written before the loss may still have been lost in flight:
    /// only sessions know.
    Unsent {
        /// The messages, oldest first.
        messages: Vec<Bytes>,
    },
}

/// A client that stays connected: it reconnects after every disconnect with exponential backoff
/// and full jitter, and reports what happens as [`ClientEvent`]s.
///
/// ```no_run
/// use bytes::Bytes;
/// use framelink::{Client, ClientConfig, ClientEvent};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::connect("127.0.0.1:7000", ClientConfig::default())?;
/// client.send(Bytes::from_static(b"hello")).await?; // waits for the first connection
/// while let Some(event) = client.next_event().await {
///     match event {
///         ClientEvent::Message(m) => println!("{} bytes", m.len()),
///         ClientEvent::Disconnected(info) => eprintln!("lost: {info}"),
///         ClientEvent::Reconnecting { attempt, delay } => eprintln!("retry {attempt} in {delay:?}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Behaviour
///
/// - One background task (the supervisor) connects, with [`ClientConfig::connect_timeout`],
///   applies [`ClientConfig::socket`], runs the connection ([`Protocol`]: framelink's, or raw
///   mode) and forwards its events. When the connection ends (the peer closed it, it was
///   declared dead by the heartbeat, the socket failed) or a connect attempt fails, it waits
///   the next backoff delay (reported by [`ClientEvent::Reconnecting`]) and tries again, until
///   [`BackoffConfig::max_attempts`] consecutive attempts have failed
///   ([`ClientEvent::GaveUp`]).
/// - The backoff counter restarts only after a connection stayed up for
///   [`ClientConfig::stable_after`], so a server that accepts and then drops every connection
///   (full, or crashing) is retried with growing delays, not hammered.
/// - [`Client::send`] waits for a connection, then for room in its send budget. A message is
///   queued on the connection that is current at that time: if that connection dies before
///   writing it, it is lost (exactly-once delivery across reconnects is the job of sessions).
///   [`Client::try_send`] fails with [`SendError::Closed`] while disconnected.
/// - [`Client::stop`] stops reconnecting and closes the current connection gracefully (read
///   events until [`ClientEvent::Closed`]); [`Client::close`] does the same and waits, discarding
///   events. Dropping the [`Client`] stops it in the background. [`Client::sender`] gives a
///   cloneable handle for sending from other tasks.
#[derive(Debug)]
pub struct Client {
    events: mpsc::Receiver<Batch>,
    /// The rest of the batch being read, oldest first.
    ready: VecDeque<ClientEvent>,
    /// Room in [`QUEUE_BYTES`]: given back as batches are taken; closed when the client drops.
    room: Arc<Semaphore>,
    sender: ClientSender,
    stop: watch::Sender<bool>,
}

/// The supervisor's state as the handles see it.
#[derive(Debug, Clone, Default)]
enum Current {
    /// Not connected now; a (re)connect is in progress.
    #[default]
    Connecting,
    /// This connection is open.
    Connected(Sender),
    /// The client stopped (closed, or gave up): sends fail.
    Stopped,
}

impl Client {
    /// Starts connecting to `addr` (`"host:port"`, resolved again at every attempt) in the
    /// background, on the current tokio runtime. Returns at once; see [`ClientEvent::Connected`].
    ///
    /// # Errors
    ///
    /// Only an invalid configuration.
    pub fn connect(addr: impl Into<String>, config: ClientConfig) -> Result<Client, crate::Error> {
        config.protocol.validate()?;
        config.backoff.validate()?;
        config.driver.validate()?;
        // Sessions need the protocol; the policy travels in the connection settings.
        let mut protocol = config.protocol.clone();
        if let Some(policy) = config.sessions {
            match &mut protocol {
                Protocol::Framelink(connection) => connection.sessions = Some(policy),
                Protocol::Raw(_) => {
                    return Err(crate::Error::InvalidConfig(
                        "sessions need framelink's protocol, not raw mode".into(),
                    ))
                }
            }
        }
        let (event_tx, events) = mpsc::channel(QUEUED_BATCHES);
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        let (current_tx, current) = watch::channel(Current::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let supervisor = Supervisor {
            addr: addr.into(),
            config,
            protocol,
            session: None,
            events: event_tx,
            room: room.clone(),
            current: current_tx,
            stop: stop_rx,
        };
        tokio::spawn(supervisor.run());
        Ok(Client {
            events,
            ready: VecDeque::new(),
            room,
            sender: ClientSender { current },
            stop,
        })
    }

    /// The next event; `None` after [`ClientEvent::GaveUp`] or [`ClientEvent::Closed`].
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        if self.ready.is_empty() {
            let batch = self.events.recv().await?;
            self.take(batch);
        }
        self.ready.pop_front()
    }

    /// Makes `batch` the one being read (a `Vec` becomes a `VecDeque` without a copy) and gives
    /// its bytes back to the queue's budget.
    fn take(&mut self, batch: Batch) {
        self.room.add_permits(batch.bytes);
        self.ready = batch.events.into();
    }

    /// Waits for at least one event, then moves up to `limit` events that have already arrived
    /// into `events` (appending); returns how many. `0` once the client stopped (after
    /// [`ClientEvent::GaveUp`] or [`ClientEvent::Closed`]) or when `limit` is 0. Like
    /// [`next_event`](Self::next_event) in a loop, without a wake-up per event.
    pub async fn next_events(&mut self, events: &mut Vec<ClientEvent>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        if self.ready.is_empty() {
            match self.events.recv().await {
                Some(batch) => self.take(batch),
                None => return 0,
            }
        }
        let start = events.len();
        loop {
            let n = (limit - (events.len() - start)).min(self.ready.len());
            if events.is_empty() && n == self.ready.len() {
                // The whole batch, untouched since it arrived: handed over without a copy.
                *events = Vec::from(std::mem::take(&mut self.ready));
            } else {
                events.extend(self.ready.drain(..n));
            }
            if events.len() - start == limit {
                break;
            }
            match self.events.try_recv() {
                Ok(batch) => self.take(batch),
                Err(_) => break,
            }
        }
        events.len() - start
    }

    /// The next message, skipping other events; `None` once the client stopped.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            if let ClientEvent::Message(m) = self.next_event().await? {
                return Some(m);
            }
        }
    }

    /// Sends on the current connection, waiting for one (and then for send budget).
    /// [`SendError::Closed`] once the client stopped; the other errors as
    /// [`Sender::send`](crate::Sender::send).
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        self.sender.send(payload).await
    }

    /// Sends if connected and the budget has room now.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        self.sender.try_send(payload)
    }

    /// A cloneable handle for sending from other tasks while this one reads events.
    pub fn sender(&self) -> ClientSender {
        self.sender.clone()
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        self.sender.is_connected()
    }

    /// Asks the client to stop: no more reconnects, and the current connection is closed
    /// gracefully (queued messages are written first). Returns at once; keep reading events
    /// until [`ClientEvent::Closed`] to see the rest (the final messages, the disconnect).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// [`stop`](Self::stop), then waits until the client has stopped, discarding the events
    /// that arrive meanwhile. Afterwards [`next_event`](Self::next_event) returns `None`.
    pub async fn close(&mut self) {
        self.stop();
        while let Some(event) = self.next_event().await {
            if matches!(event, ClientEvent::Closed | ClientEvent::GaveUp { .. }) {
                break;
            }
        }
        self.ready.clear();
        self.events.close();
    }
}

/// A cloneable handle that sends on a [`Client`]'s current connection.
#[derive(Debug, Clone)]
pub struct ClientSender {
    current: watch::Receiver<Current>,
}

impl ClientSender {
    /// See [`Client::send`].
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        let mut current = self.current.clone();
        loop {
            match connected(&mut current).await?.send(payload.clone()).await {
                // The connection closed before taking it: try the next one.
                Err(SendError::Closed) => next_connection(&mut current).await,
                other => return other,
            }
        }
    }

    /// Queues every message of `batch`, in order, on the current connection (waiting for one,
    /// then for send budget), as [`Sender::send_batch`] does: one budget take and one lock per
    /// run of messages that fits. When the connection closes part-way, the rest goes on the
    /// next one. On success `batch` is empty; on error it holds exactly the messages not
    /// queued, the first being the one the error is about.
    pub async fn send_batch(&self, batch: &mut Vec<Bytes>) -> Result<(), SendError> {
        let mut current = self.current.clone();
        while !batch.is_empty() {
            match connected(&mut current).await?.send_batch(batch).await {
                // The connection closed before taking all of it: the rest goes on the next.
                Err(SendError::Closed) => next_connection(&mut current).await,
                other => return other,
            }
        }
        Ok(())
    }

    /// See [`Client::try_send`].
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        match &*self.current.borrow() {
            Current::Connected(sender) => sender.try_send(payload),
            _ => Err(SendError::Closed),
        }
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.current.borrow(), Current::Connected(s) if !s.is_closed())
    }

    /// The current connection's [`Sender`] (its send budget: [`Sender::queued_bytes`],
    /// [`Sender::queue_limit`]); `None` while the client is between connections.
    pub fn current(&self) -> Option<Sender> {
        match &*self.current.borrow() {
            Current::Connected(sender) => Some(sender.clone()),
            _ => None,
        }
    }
}

/// The current connection's sender, waiting while the client connects;
/// [`SendError::Closed`] once it stopped.
async fn connected(current: &mut watch::Receiver<Current>) -> Result<Sender, SendError> {
    let state = current
        .wait_for(|c| !matches!(c, Current::Connecting))
        .await
        .map_err(|_| SendError::Closed)?;
    match &*state {
        Current::Connected(sender) => Ok(sender.clone()),
        _ => Err(SendError::Closed),
    }
}

/// Waits until the connection that refused a send (it was closing) is replaced, or the client
/// stopped.
async fn next_connection(current: &mut watch::Receiver<Current>) {
    let _ = current
        .wait_for(|c| match c {
            Current::Connected(s) => !s.is_closed(),
            _ => true,
        })
        .await;
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // A supervisor waiting for room would otherwise wait forever.
        self.room.close();
    }
}

/// Events handed from the supervisor to the [`Client`] in one go, with the budget they hold.
#[derive(Debug)]
struct Batch {
    events: Vec<ClientEvent>,
    /// Permits of the client's `room` taken for these events' messages.
    bytes: usize,
}

/// The background task behind a [`Client`].
struct Supervisor {
    addr: String,
    config: ClientConfig,
    /// `config.protocol`, with the session policy in it when sessions are on.
    protocol: Protocol,
    /// The session between connections.
    session: Option<Session>,
    events: mpsc::Sender<Batch>,
    /// The client's queue budget in message bytes ([`QUEUE_BYTES`]).
    room: Arc<Semaphore>,
    current: watch::Sender<Current>,
    stop: watch::Receiver<bool>,
}

/// What a batch of connection events counts for in the client's byte budget: each message
/// its length plus [`EVENT_COST`], every other event [`EVENT_COST`]; all of the budget for a
/// batch larger than it.
fn queued_bytes(batch: &[Event]) -> usize {
    let bytes: usize = batch
        .iter()
        .map(|e| match e {
            Event::Message(m) => m.len() + EVENT_COST,
            _ => EVENT_COST,
        })
        .sum();
    bytes.min(QUEUE_BYTES)
}

/// How one connection attempt ended.
enum Outcome {
    /// The client was asked to stop.
    Stop,
    /// Connecting failed (or the connection closed before opening).
    Failed,
    /// A connection was open for this long.
    WasUp(Duration),
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff.clone())
            .expect("backoff configuration validated in Client::connect");
        let mut attempt = 1u32;
        // Attempts of the current series that connected, then were lost too soon.
        let mut connected = 0u32;
        loop {
            let outcome = self.attempt(attempt).await;
            match outcome {
                Outcome::Stop => break,
                Outcome::WasUp(up) if up >= self.config.stable_after => {
                    backoff.reset();
                    connected = 0;
                }
                Outcome::WasUp(_) => connected += 1,
                Outcome::Failed => {}
            }
            // Attempts made in this series so far: the retries plus the first try.
            let made = backoff.attempt() + 1;
            let exhausted = self
                .config
                .backoff
                .max_attempts
                .is_some_and(|max| made >= max);
            let random: f64 = rand::thread_rng().gen();
            let next = if exhausted {
                None
            } else {
                backoff.next_delay(random)
            };
            let Some((retry, delay)) = next else {
                self.current.send_replace(Current::Stopped);
                self.hand_back_session().await;
                self.emit(ClientEvent::GaveUp {
                    attempts: made,
                    connected,
                })
                .await;
                return;
            };
            attempt = retry + 1;
            self.current.send_replace(Current::Connecting);
            if !self.notify(ClientEvent::Reconnecting { attempt, delay }) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.stop.wait_for(|stop| *stop) => break,
            }
        }
        self.current.send_replace(Current::Stopped);
        self.hand_back_session().await;
        self.emit(ClientEvent::Closed).await;
    }

    /// The client is done (stopped, or gave up) while a session waits for its next
    /// connection: there will be none, so the messages the server never acknowledged are
    /// handed back ([`SessionEvent::Lost`]) rather than dropped with the session.
    async fn hand_back_session(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        let unacked = session.take_unacked();
        if !unacked.is_empty() {
            let id = session.id();
            self.emit(ClientEvent::Session(SessionEvent::Lost { id, unacked }))
                .await;
        }
    }

    /// Sends a notice that may be left out when the client's queue is full (its application
    /// does not read events): reconnecting must not wait for it. `false` if the client is gone.
    fn notify(&self, event: ClientEvent) -> bool {
        let batch = Batch {
            events: vec![event],
            bytes: 0,
        };
        !matches!(
            self.events.try_send(batch),
            Err(mpsc::error::TrySendError::Closed(_))
        )
    }

    /// Sends an event; `false` if the client is gone.
    async fn emit(&self, event: ClientEvent) -> bool {
        let batch = Batch {
            events: vec![event],
            bytes: 0,
        };
        self.events.send(batch).await.is_ok()
    }

    async fn attempt(&mut self, attempt: u32) -> Outcome {
        if *self.stop.borrow() {
            return Outcome::Stop;
        }
        let connect = async {
            let stream = tokio::time::timeout(
                self.config.connect_timeout,
                TcpStream::connect(self.addr.as_str()),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {:?}", self.config.connect_timeout),
                )
            })??;
            let addr = stream.peer_addr()?;
            if let Err(error) = self.config.socket.apply(&stream) {
                tracing::warn!(%error, "socket options not applied");
            }
            let stream = match &self.config.tls {
                None => MaybeTls::Plain(stream),
                Some(tls) => {
                    let name = tls.name_for(&self.addr);
                    let stream = crate::tls::connect(stream, tls, &name).await?;
                    MaybeTls::Tls(Box::new(stream))
                }
            };
            Ok::<_, std::io::Error>((stream, addr))
        };
        let mut stop = self.stop.clone();
        let connected = tokio::select! {
            connected = connect => connected,
            _ = stop.wait_for(|stop| *stop) => return Outcome::Stop,
        };
        let (stream, addr) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                self.notify(ClientEvent::ConnectFailed {
                    attempt,
                    error: Arc::new(error),
                });
                return Outcome::Failed;
            }
        };
        let options = SpawnOptions {
            driver: self.config.driver,
            ..SpawnOptions::default()
        };
        // Sessions: resume the one the last connection left, or start one.
        let session = self.config.sessions.map(|_| {
            self.session
                .take()
                .unwrap_or_else(|| Session::new(rand::random()))
        });
        let (connection, _task) =
            match connection::spawn_protocol(stream, &self.protocol, options, session) {
                Ok(spawned) => spawned,
                Err(error) => {
                    // Validated in `Client::connect`; cannot happen.
                    tracing::error!(%error, "invalid connection configuration");
                    return Outcome::Stop;
                }
            };
        let (sender, mut receiver) = connection.split();
        let mut opened_at = None;
        if matches!(self.config.protocol, Protocol::Raw(_)) {
            opened_at = Some(Instant::now());
            self.current
                .send_replace(Current::Connected(sender.clone()));
            if !self
                .emit(ClientEvent::Connected {
                    addr,
                    attempt,
                    peer: None,
                })
                .await
            {
                return Outcome::Stop;
            }
        }
        let mut stopping = false;
        // Events are taken and forwarded a batch at a time: one wake-up of this task and one
        // reservation in the client's queue per batch, not per message.
        // Allocated by the first events: an idle connection keeps no batch.
        let mut batch = Vec::new();
        let stop_signal = stop.wait_for(|stop| *stop);
        tokio::pin!(stop_signal);
        loop {
            let taken = tokio::select! {
                taken = receiver.recv_many(&mut batch, FORWARD_BATCH) => taken,
                _ = &mut stop_signal, if !stopping => {
                    stopping = true;
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        sender.close(CloseCode::Normal, "client closing").await;
                    });
                    continue;
                }
            };
            if taken == 0 {
                break;
            }
            // Translated first: the client's state (connected, ...) follows the connection
            // even while its application reads no events and the queue has no room.
            let bytes = queued_bytes(&batch);
            let events: Vec<ClientEvent> = batch
                .drain(..)
                .map(|event| self.translate(event, addr, attempt, &sender, &mut opened_at))
                .collect();
            match self.reserve(bytes).await {
                Some(permit) => permit.send(Batch { events, bytes }),
                None => {
                    if !stopping {
                        // Nobody listens any more: close and stop.
                        stopping = true;
                        sender.close(CloseCode::Normal, "client dropped").await;
                    }
                }
            }
        }
        // What the connection leaves of the session goes to the next one.
        self.session = receiver.take_session();
        let unsent = receiver.take_unsent();
        if !unsent.is_empty() {
            self.emit(ClientEvent::Unsent { messages: unsent }).await;
        }
        if stopping || *self.stop.borrow() {
            return Outcome::Stop;
        }
        match opened_at {
            Some(at) => Outcome::WasUp(at.elapsed()),
            None => Outcome::Failed,
        }
    }

    /// Waits for a slot in the client's queue and for `bytes` of room in its byte budget (see
    /// [`queued_bytes`]); `None` once the client is gone.
    async fn reserve(&self, bytes: usize) -> Option<mpsc::Permit<'_, Batch>> {
        let permits = u32::try_from(bytes).expect("QUEUE_BYTES fits in u32");
        self.room.acquire_many(permits).await.ok()?.forget();
        self.events.reserve().await.ok()
    }

    /// A connection event as the client reports it; tracks when the connection opened.
    fn translate(
        &self,
        event: Event,
        addr: SocketAddr,
        attempt: u32,
        sender: &Sender,
        opened_at: &mut Option<Instant>,
    ) -> ClientEvent {
        match event {
            Event::Connected { peer, .. } => {
                *opened_at = Some(Instant::now());
                self.current
                    .send_replace(Current::Connected(sender.clone()));
                ClientEvent::Connected {
                    addr,
                    attempt,
                    peer: Some(peer),
                }
            }
            Event::Message(m) => ClientEvent::Message(m),
            Event::Rtt(rtt) => ClientEvent::Rtt(rtt),
            Event::Idle(kind) => ClientEvent::Idle(kind),
            Event::FrameDiscarded(e) => ClientEvent::FrameDiscarded(e),
            Event::MessageDropped { len, peer_max } => {
                ClientEvent::MessageDropped { len, peer_max }
            }
            Event::Session(session) => ClientEvent::Session(session),
            Event::Closed(info) => {
                self.current.send_replace(Current::Connecting);
                match opened_at {
                    Some(_) => ClientEvent::Disconnected(info),
                    None => ClientEvent::ConnectFailed {
                        attempt,
                        error: Arc::new(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            format!("closed during the handshake: {info}"),
                        )),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message crosses the client's queue as a `ClientEvent`: the rare variants are
    /// boxed so that it stays about the size of the largest common one (`Connected`, with its
    /// address).
    #[test]
    fn client_event_is_small() {
        assert!(
            std::mem::size_of::<ClientEvent>() <= 56,
            "ClientEvent is {} bytes",
            std::mem::size_of::<ClientEvent>()
        );
    }
}
