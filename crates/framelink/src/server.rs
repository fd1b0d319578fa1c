//! A TCP server: accept loop, one driver task per connection, a connection limit, eviction of
//! dead and idle peers, and a graceful shutdown that tells every client before going away.
//!
//! ```no_run
//! use framelink::server::{Server, ServerConfig};
//! use framelink::connection::Event;
//!
//! # async fn run() -> Result<(), framelink::Error> {
//! let mut server = Server::bind("127.0.0.1:7000", ServerConfig::default()).await?;
//! let handle = server.handle();
//! tokio::spawn(async move {
//!     tokio::signal::ctrl_c().await.ok();
//!     handle.shutdown(std::time::Duration::from_secs(5)).await;
//! });
//! while let Some(incoming) = server.accept().await {
//!     tokio::spawn(async move {
//!         let (sender, mut events) = incoming.connection.split();
//!         while let Some(event) = events.next_event().await {
//!             if let Event::Message(m) = event {
//!                 // Echo; a closed connection just ends the loop.
//!                 if sender.send(m).await.is_err() { break; }
//!             }
//!         }
//!     });
//! }
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **Liveness** is per connection, from [`ServerConfig::protocol`]: a peer that stops
//!   answering is closed with `PeerTimedOut` within `ping_interval + ping_timeout`, one that
//!   never completes the handshake with a handshake timeout, and (protocol mode) one that
//!   exchanges no application message for [`ConnectionConfig::idle_timeout`] with code `Idle`.
//!   Their slots are freed the moment their driver ends.
//! - **Connection limit**: at [`ServerConfig::max_connections`] live connections, a new one is
//!   refused: in protocol mode with a CLOSE `ServerFull` after our HELLO (so the client knows to
//!   back off), in raw mode by closing the socket. At most [`MAX_REJECTING`] refusals are in
//!   flight at once; beyond that sockets are dropped at once.
//! - **Shutdown** ([`ServerHandle::shutdown`]): stops accepting, closes every live connection
//!   gracefully with `GoingAway` (queued messages are written first, then CLOSE) and waits, up
//!   to a grace period, for all of them to finish; any still open then are aborted.
//! - Socket options ([`ServerConfig::socket`]) are applied to every accepted socket; accept
//!   errors (such as running out of file descriptors) are logged and retried after a short
//!   pause instead of ending the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use crate::connection::{
    self, CloseCode, Connection, DriverConfig, Protocol, Sender, SessionHost, SpawnOptions,
};
use crate::socket::SocketOptions;
use framelink_proto::session::{Session, SessionConfig, SessionStore};

#[cfg(doc)]
use crate::connection::ConnectionConfig;

/// At most this many refusals (connections over the limit being told `ServerFull`) at once.
pub const MAX_REJECTING: usize = 64;
/// How long a refused connection may take to receive its CLOSE.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error before accepting again (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accepted connections waiting for [`Server::accept`].
const ACCEPT_QUEUE: usize = 128;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// What every connection speaks, with its heartbeat and limits. Default: framelink protocol
    /// v1 with [`ConnectionConfig::default`].
    pub protocol: Protocol,
    /// Live connections at most; more are refused (see the [module documentation](self)).
    /// Default 10 000.
    pub max_connections: usize,
    /// Socket options for accepted sockets. Default [`SocketOptions::default`].
    pub socket: SocketOptions,
    /// Buffering and backpressure of each connection's driver.
    pub driver: DriverConfig,
    /// Acknowledged sessions (protocol mode): offered to clients, and kept detached for a
    /// while after a connection is lost so that the client can resume. `None` (default): off.
    pub sessions: Option<ServerSessions>,
}

/// How a [`Server`] keeps sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSessions {
    /// Acknowledgement policy.
    pub policy: SessionConfig,
    /// How long a detached session is kept for its client to come back. Default 60 s.
    pub ttl: Duration,
    /// Detached sessions kept at most (the oldest go first). Default 10 000.
    pub max_detached: usize,
}

impl Default for ServerSessions {
    fn default() -> Self {
        ServerSessions {
            policy: SessionConfig::default(),
            ttl: Duration::from_secs(60),
            max_detached: 10_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            protocol: Protocol::default(),
            max_connections: 10_000,
            socket: SocketOptions::default(),
            driver: DriverConfig::default(),
            sessions: None,
        }
    }
}

/// A connection the server accepted.
#[derive(Debug)]
pub struct Incoming {
    /// The running connection (its driver already sent our HELLO in protocol mode).
    pub connection: Connection,
    /// The client's address.
    pub peer: SocketAddr,
    /// A number unique within this server, in accept order.
    pub id: u64,
}

/// A listening server. See the [module documentation](self).
#[derive(Debug)]
pub struct Server {
    incoming: mpsc::Receiver<Incoming>,
    handle: ServerHandle,
    local_addr: SocketAddr,
}

/// A cloneable handle to a [`Server`]: counts connections and shuts the server down.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<ServerShared>,
}

#[derive(Debug)]
struct ServerShared {
    registry: Mutex<Registry>,
    /// Rung when a connection leaves the registry (for shutdown) and when shutdown starts.
    changed: Notify,
    /// Detached sessions and which connection holds each attached one.
    sessions: Mutex<Sessions>,
    /// Rung when a connection releases a session.
    sessions_released: Notify,
}

#[derive(Debug)]
struct Sessions {
    store: SessionStore,
    attached: HashMap<[u8; 16], u64>,
}

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<u64, (Sender, AbortHandle)>,
    rejecting: usize,
    shutting_down: bool,
    accepted: u64,
    refused: u64,
}

/// What [`ServerHandle::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections that were open when shutdown started.
    pub open: usize,
    /// Of those, the ones that finished their close within the grace period.
    pub closed: usize,
    /// The ones aborted when the grace period ran out.
    pub aborted: usize,
}

/// Counters of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Live connections now.
    pub live: usize,
    /// Connections accepted so far (not counting refused ones).
    pub accepted: u64,
    /// Connections refused for being over the limit.
    pub refused: u64,
}

impl Server {
    /// Binds `addr` and starts accepting on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or the OS refusing the address.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        config: ServerConfig,
    ) -> Result<Server, crate::Error> {
        config.protocol.validate()?;
        config.driver.validate()?;
        if config.max_connections == 0 {
            return Err(crate::Error::InvalidConfig(
                "max_connections must be at least 1".into(),
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        Ok(Server::from_listener(listener, config))
    }

    /// Starts accepting on an already bound listener (configuration not validated: use
    /// [`bind`](Self::bind) for that).
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Server {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let settings = config.sessions.unwrap_or_default();
        let shared = Arc::new(ServerShared {
            registry: Mutex::new(Registry::default()),
            changed: Notify::new(),
            sessions: Mutex::new(Sessions {
                store: SessionStore::new(settings.ttl, settings.max_detached),
                attached: HashMap::new(),
            }),
            sessions_released: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(accept_loop(listener, config, shared.clone(), tx));
        Server {
            incoming: rx,
            handle: ServerHandle { shared },
            local_addr,
        }
    }

    /// The next accepted connection; `None` once the server shut down.
    pub async fn accept(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for counting connections and shutting down from another task.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }
}

impl ServerHandle {
    /// Live connections now.
    pub fn connections(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        let registry = self.shared.lock();
        ServerStats {
            live: registry.live.len(),
            accepted: registry.accepted,
            refused: registry.refused,
        }
    }

    /// Stops accepting, closes every connection with `GoingAway` (queued messages first) and
    /// waits up to `grace` for them to finish; the rest are aborted. Idempotent.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let senders: Vec<Sender> = {
            let mut registry = self.shared.lock();
            registry.shutting_down = true;
            registry.live.values().map(|(s, _)| s.clone()).collect()
        };
        self.shared.changed.notify_waiters();
        let open = senders.len();
        for sender in senders {
            tokio::spawn(async move {
                sender
                    .close(CloseCode::GoingAway, "server shutting down")
                    .await;
            });
        }
        let all_closed = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.shared.lock().live.is_empty() {
                    return;
                }
                changed.await;
            }
        };
        let mut aborted = 0;
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            let mut registry = self.shared.lock();
            for (_, (_, task)) in registry.live.drain() {
                task.abort();
                aborted += 1;
            }
        }
        ShutdownReport {
            open,
            closed: open.saturating_sub(aborted),
            aborted,
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.lock().shutting_down
    }
}

impl ServerShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a connection resuming a session waits for an older connection of the same
/// session to let go of it, before starting a new session instead.
const RESUME_WAIT: Duration = Duration::from_secs(10);

/// The server's side of sessions for its connection drivers.
struct Host(Arc<ServerShared>);

impl SessionHost for Host {
    fn resolve(
        &self,
        id: [u8; 16],
        conn: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Session>> + Send>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + RESUME_WAIT;
            loop {
                let released = shared.sessions_released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                {
                    let mut sessions = shared.sessions();
                    let owner = sessions.attached.get(&id).copied();
                    let older = owner.filter(|&o| o != conn).and_then(|o| {
                        // Lock order: sessions, then registry (never the other way round).
                        shared.lock().live.get(&o).map(|(sender, _)| sender.clone())
                    });
                    match older {
                        // The client came back before this side noticed the old connection
                        // died: end that one now; its session comes back through `release`.
                        Some(sender) => sender.detach(),
                        None => {
                            sessions.attached.insert(id, conn);
                            let now = std::time::Instant::now();
                            return sessions.store.take(&id, now);
                        }
                    }
                }
                if tokio::time::timeout_at(deadline, released).await.is_err() {
                    tracing::warn!("session still held by an older connection: starting anew");
                    shared.sessions().attached.insert(id, conn);
                    return None;
                }
            }
        })
    }

    fn release(&self, id: [u8; 16], conn: u64, session: Option<Session>) {
        let mut sessions = self.0.sessions();
        if sessions.attached.get(&id) == Some(&conn) {
            sessions.attached.remove(&id);
            if let Some(session) = session {
                let dropped = sessions.store.detach(session, std::time::Instant::now());
                if !dropped.is_empty() {
                    tracing::debug!(count = dropped.len(), "detached sessions dropped");
                }
            }
        }
        drop(sessions);
        self.0.sessions_released.notify_waiters();
    }
}

/// Accepts until shutdown (or until the [`Server`] is dropped and the queue closes).
async fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
    shared: Arc<ServerShared>,
    incoming: mpsc::Sender<Incoming>,
) {
    let mut next_id = 0u64;
    // Sessions on: our HELLO offers them and the drivers use the server's store.
    let mut protocol = config.protocol.clone();
    let mut sessions: Option<Arc<dyn SessionHost>> = None;
    if let (Some(settings), Protocol::Framelink(connection)) = (config.sessions, &mut protocol) {
        connection.sessions = Some(settings.policy);
        sessions = Some(Arc::new(Host(shared.clone())));
    }
    loop {
        let shutdown = shared.changed.notified();
        tokio::pin!(shutdown);
        shutdown.as_mut().enable();
        if shared.lock().shutting_down {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => continue,
            () = incoming.closed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE / ENFILE: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if let Err(error) = config.socket.apply(&stream) {
            tracing::warn!(%error, %peer, "socket options not applied");
        }
        let id = next_id;
        next_id += 1;
        let over_limit = {
            let mut registry = shared.lock();
            let over = registry.live.len() >= config.max_connections;
            if over {
                registry.refused += 1;
            }
            over
        };
        if over_limit {
            reject(stream, &config.protocol, &shared);
            continue;
        }
        let hook_shared = shared.clone();
        let on_finish: connection::FinishHook = Box::new(move || {
            hook_shared.lock().live.remove(&id);
            hook_shared.changed.notify_waiters();
        });
        // Spawn under the registry lock so that the finish hook (which takes the lock) cannot
        // run before the connection is registered.
        let spawned = {
            let mut registry = shared.lock();
            let options = SpawnOptions {
                driver: config.driver,
                on_finish: Some(on_finish),
                sessions: sessions.clone().map(|host| (host, id)),
                ..SpawnOptions::default()
            };
            let spawned = connection::spawn_protocol(stream, &protocol, options, None);
            if let Ok((connection, task)) = &spawned {
                registry.accepted += 1;
                registry
                    .live
                    .insert(id, (connection.sender(), task.clone()));
            }
            spawned
        };
        let connection = match spawned {
            Ok((connection, _task)) => connection,
            Err(error) => {
                // Validated at bind; only reachable through `from_listener`.
                tracing::error!(%error, "invalid connection configuration");
                break;
            }
        };
        let incoming_connection = Incoming {
            connection,
            peer,
            id,
        };
        if incoming.send(incoming_connection).await.is_err() {
            break;
        }
    }
}

/// Refuses a connection over the limit, telling a protocol peer why.
fn reject(stream: TcpStream, protocol: &Protocol, shared: &Arc<ServerShared>) {
    let Protocol::Framelink(config) = protocol else {
        return; // Raw mode has no way to say why: dropping the socket closes it.
    };
    {
        let mut registry = shared.lock();
        if registry.rejecting >= MAX_REJECTING {
            return;
        }
        registry.rejecting += 1;
    }
    let mut config = config.clone();
    config.linger = REJECT_LINGER.min(config.linger);
    config.handshake_timeout = REJECT_LINGER;
    let hook_shared = shared.clone();
    let on_finish: connection::FinishHook = Box::new(move || {
        hook_shared.lock().rejecting -= 1;
    });
    let protocol = Protocol::Framelink(config);
    let options = SpawnOptions {
        on_finish: Some(on_finish),
        ..SpawnOptions::default()
    };
    match connection::spawn_protocol(stream, &protocol, options, None) {
        Ok((connection, _task)) => {
            tokio::spawn(async move {
                connection
                    .close(CloseCode::ServerFull, "too many connections")
                    .await;
            });
        }
        Err(_) => shared.lock().rejecting -= 1,
    }
}
