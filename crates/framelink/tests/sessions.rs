//! Acknowledged sessions over real loopback TCP, through a proxy that cuts the link over and
//! over: every message arrives exactly once and in order, both ways; a session the server no
//! longer has reports the unacknowledged messages back; memory stays bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use framelink::client::{Client, ClientConfig, ClientEvent};
use framelink::connection::{ConnectionConfig, Event, Protocol, ResumeStatus, SendError, Sender};
use framelink::server::{Server, ServerConfig, ServerSessions};
use framelink::{BackoffConfig, SessionConfig};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// Generous bound for the whole exchange.
const DEADLINE: Duration = Duration::from_secs(120);

/// A proxy that forwards each connection for a random number of bytes (either way), then
/// drops both sockets without warning. Returns its address and the count of cuts.
async fn cutting_proxy(
    upstream: std::net::SocketAddr,
    seed: u64,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = Arc::new(AtomicU64::new(0));
    let counter = cuts.clone();
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(upstream).await else {
                continue;
            };
            let budget = Arc::new(AtomicU64::new(rng.gen_range(20_000..400_000)));
            let counter = counter.clone();
            tokio::spawn(async move {
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::select! {
                    () = forward(dr, uw, budget.clone()) => {}
                    () = forward(ur, dw, budget) => {}
                }
                counter.fetch_add(1, Ordering::SeqCst);
                // Both halves drop here: each side sees its stream end mid-conversation.
            });
        }
    });
    (addr, cuts)
}

/// Forwards until the shared byte budget runs out (or either side closes).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    budget: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let left = budget.load(Ordering::SeqCst);
        let pass = (n as u64).min(left) as usize;
        budget.fetch_sub(pass as u64, Ordering::SeqCst);
        if to.write_all(&buf[..pass]).await.is_err() || pass < n {
            return; // Cut in the middle of whatever was being forwarded.
        }
    }
}

/// The message with number `i`: its number, then a random-size tail.
fn message(i: u32, rng: &mut impl Rng) -> Bytes {
    let mut m = i.to_be_bytes().to_vec();
    m.extend(std::iter::repeat_n(i as u8, rng.gen_range(0..300)));
    Bytes::from(m)
}

fn number(m: &Bytes) -> u32 {
    let n = u32::from_be_bytes(m[..4].try_into().unwrap());
    assert!(
        m[4..].iter().all(|&b| b == n as u8),
        "message {n} corrupted"
    );
    n
}

/// An echo server whose echoes survive reconnects: each session has one echo task that sends
/// on whichever connection of the session is current, retrying a message the old connection
/// refused (not queued) on the next one. Records what each session received.
async fn session_echo_server() -> (
    std::net::SocketAddr,
    Arc<Mutex<HashMap<[u8; 16], Vec<u32>>>>,
) {
    let mut server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            protocol: Protocol::Framelink(ConnectionConfig {
                ping_interval: Some(Duration::from_millis(500)),
                ping_timeout: Duration::from_millis(2_000),
                // Small, so that resumed sessions arrive with a nearly full buffer (their
                // messages must hold budget, or later sends would be refused).
                max_queued_bytes: 64 * 1024,
                ..ConnectionConfig::default()
            }),
            sessions: Some(ServerSessions {
                policy: SessionConfig::default(),
                ttl: Duration::from_secs(30),
                max_detached: 100,
            }),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let received: Arc<Mutex<HashMap<[u8; 16], Vec<u32>>>> = Arc::default();
    let record = received.clone();
    tokio::spawn(async move {
        // Per session: the current connection's sender, and the echo queue.
        let mut sessions: HashMap<[u8; 16], SessionEcho> = HashMap::new();
        let (register_tx, mut register_rx) =
            mpsc::unbounded_channel::<([u8; 16], Sender, oneshot_echo::Reply)>();
        loop {
            tokio::select! {
                incoming = server.accept() => {
                    let Some(incoming) = incoming else { break };
                    let register = register_tx.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        let (sender, mut events) = incoming.connection.split();
                        let mut echo: Option<mpsc::UnboundedSender<Bytes>> = None;
                        while let Some(event) = events.next_event().await {
                            match event {
                                Event::Session { id, .. } => {
                                    let (reply, rx) = oneshot_echo::channel();
                                    register.send((id, sender.clone(), reply)).unwrap();
                                    echo = Some(rx.await.unwrap());
                                    record.lock().unwrap().entry(id).or_default();
                                }
                                Event::Message(m) => {
                                    let echo = echo.as_ref().expect("messages come after the session starts");
                                    echo.send(m).unwrap();
                                }
                                _ => {}
                            }
                        }
                    });
                }
                Some((id, sender, reply)) = register_rx.recv() => {
                    let (current, queue) = sessions.entry(id).or_insert_with(|| {
                        let (current, watch_rx) = watch::channel(None::<Sender>);
                        let (queue, mut queue_rx) = mpsc::unbounded_channel::<Bytes>();
                        let record = record.clone();
                        tokio::spawn(async move {
                            let mut watch_rx = watch_rx;
                            while let Some(m) = queue_rx.recv().await {
                                record.lock().unwrap().entry(id).or_default().push(number(&m));
                                loop {
                                    let sender = watch_rx
                                        .wait_for(|s| s.as_ref().is_some_and(|s| !s.is_closed()))
                                        .await
                                        .unwrap()
                                        .clone()
                                        .unwrap();
                                    match sender.send(m.clone()).await {
                                        Ok(()) => break,
                                        Err(SendError::Closed) => continue,
                                        Err(e) => panic!("echo failed: {e}"),
                                    }
                                }
                            }
                        });
                        (current, queue)
                    });
                    current.send_replace(Some(sender));
                    reply.send(queue.clone());
                }
            }
        }
    });
    (addr, received)
}

/// Per session: the current connection's sender, and the queue of messages to echo.
type SessionEcho = (watch::Sender<Option<Sender>>, mpsc::UnboundedSender<Bytes>);

/// A tiny one-shot reply channel for registering connections with the session map.
mod oneshot_echo {
    use bytes::Bytes;
    use tokio::sync::{mpsc, oneshot};

    pub struct Reply(oneshot::Sender<mpsc::UnboundedSender<Bytes>>);

    impl Reply {
        pub fn send(self, queue: mpsc::UnboundedSender<Bytes>) {
            let _ = self.0.send(queue);
        }
    }

    pub fn channel() -> (Reply, oneshot::Receiver<mpsc::UnboundedSender<Bytes>>) {
        let (tx, rx) = oneshot::channel();
        (Reply(tx), rx)
    }
}

fn session_client_config() -> ClientConfig {
    ClientConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            ping_interval: Some(Duration::from_millis(200)),
            ping_timeout: Duration::from_millis(400),
            max_queued_bytes: 256 * 1024,
            ..ConnectionConfig::default()
        }),
        sessions: Some(SessionConfig::default()),
        backoff: BackoffConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
            ..BackoffConfig::default()
        },
        ..ClientConfig::default()
    }
}

/// Streams `n` messages of random sizes from a sessions client through `proxy_addr` to the
/// session echo server at the other end and checks every echo (exactly once, in order) and what
/// the server received; returns the resumptions seen.
async fn exchange(
    n: u32,
    proxy_addr: std::net::SocketAddr,
    received: Arc<Mutex<HashMap<[u8; 16], Vec<u32>>>>,
    cuts: impl Fn() -> u64,
) -> u32 {
    let mut client = Client::connect(proxy_addr.to_string(), session_client_config()).unwrap();
    let sender = client.sender();
    let writer = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for i in 1..=n {
            sender.send(message(i, &mut rng)).await.unwrap();
        }
    });
    let mut next = 1u32;
    let (mut resumed, mut lost) = (0u32, 0usize);
    let result = timeout(DEADLINE, async {
        while next <= n {
            match client.next_event().await.expect("client stopped") {
                ClientEvent::Message(m) => {
                    assert_eq!(number(&m), next, "echo out of order or duplicated");
                    next += 1;
                }
                ClientEvent::Session { status, .. } => {
                    resumed += u32::from(status == ResumeStatus::Resumed)
                }
                ClientEvent::SessionLost { unacked, .. } => lost += unacked.len(),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "only {} of {n} echoes after {:?} ({} cuts)",
        next - 1,
        DEADLINE,
        cuts()
    );
    writer.await.unwrap();
    assert_eq!(lost, 0, "messages handed back as lost");
    // The server got each message exactly once, in order.
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1, "one session");
    let got = received.values().next().unwrap();
    assert_eq!(got.len(), n as usize);
    assert!(
        got.iter().copied().eq(1..=n),
        "server side out of order or duplicated"
    );
    resumed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_exactly_once_through_a_link_cut_dozens_of_times() {
    const N: u32 = 100_000;
    let (server_addr, received) = session_echo_server().await;
    let (proxy_addr, cuts) = cutting_proxy(server_addr, 0x5EED).await;
    let resumed = exchange(N, proxy_addr, received, || cuts.load(Ordering::SeqCst)).await;
    let cuts = cuts.load(Ordering::SeqCst);
    eprintln!("{N} messages each way, {cuts} cuts, {resumed} resumptions");
    assert!(cuts >= 24, "only {cuts} cuts");
    assert!(resumed as u64 >= cuts.saturating_sub(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_exactly_once_through_the_chaos_proxy() {
    use framelink::chaos::{ChaosConfig, ChaosProxy, Fault, FaultMix, FaultPlan, Trigger};
    const N: u32 = 100_000;
    let (server_addr, received) = session_echo_server().await;
    // Pieces of 1 to 512 bytes; a fault every ~400 KiB: resets, closes, and now and then a
    // blackhole that only the heartbeat can find.
    let proxy = ChaosProxy::start(
        "127.0.0.1:0",
        server_addr,
        ChaosConfig {
            seed: 0xC4A05,
            split: Some(1..=512),
            faults: FaultPlan::Random {
                every: Trigger::Bytes(400 * 1024),
                faults: FaultMix::new([(Fault::Rst, 4), (Fault::Fin, 4), (Fault::Blackhole, 1)]),
            },
            ..ChaosConfig::default()
        },
    )
    .await
    .unwrap();
    let stats = || proxy.stats();
    let resumed = exchange(N, proxy.local_addr(), received, || {
        let f = stats().faults;
        f.rst + f.fin + f.blackhole
    })
    .await;
    let faults = proxy.stats().faults;
    eprintln!(
        "{N} messages each way through the chaos proxy: {} RST, {} FIN, {} blackholes, \
         {resumed} resumptions",
        faults.rst, faults.fin, faults.blackhole
    );
    assert!(
        faults.rst + faults.fin + faults.blackhole >= 24,
        "{faults:?}"
    );
    assert!(faults.blackhole >= 1, "{faults:?}");
}

/// A proxy whose upstream can be switched and whose connections can all be cut at once (the
/// "server restarted elsewhere" case).
struct SwitchProxy {
    addr: std::net::SocketAddr,
    upstream: Arc<Mutex<std::net::SocketAddr>>,
    cut: Arc<tokio::sync::Notify>,
}

impl SwitchProxy {
    async fn start(upstream: std::net::SocketAddr) -> SwitchProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (target, cut_all) = (upstream.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let to = *target.lock().unwrap();
                let Ok(up) = TcpStream::connect(to).await else {
                    continue;
                };
                let cut_all = cut_all.clone();
                tokio::spawn(async move {
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let unlimited = Arc::new(AtomicU64::new(u64::MAX));
                    tokio::select! {
                        () = forward(dr, uw, unlimited.clone()) => {}
                        () = forward(ur, dw, unlimited) => {}
                        () = cut_all.notified() => {}
                    }
                });
            }
        });
        SwitchProxy {
            addr,
            upstream,
            cut,
        }
    }
}

async fn sessions_server(
    policy: SessionConfig,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<u32>) {
    let mut server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            sessions: Some(ServerSessions {
                policy,
                ..ServerSessions::default()
            }),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut events = incoming.connection;
                while let Some(event) = events.next_event().await {
                    if let Event::Message(m) = event {
                        let _ = tx.send(number(&m));
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_lost_hands_unacknowledged_messages_back() {
    // Server A never acknowledges in time (it is about to "crash"); server B is its restarted
    // replacement, with an empty session store.
    let lazy = SessionConfig {
        ack_every: u32::MAX,
        ack_delay: Duration::from_secs(3600),
    };
    let (a, mut a_got) = sessions_server(lazy).await;
    let (b, mut b_got) = sessions_server(SessionConfig::default()).await;
    let proxy = SwitchProxy::start(a).await;
    let mut client = Client::connect(proxy.addr.to_string(), session_client_config()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for i in 1..=10 {
        client.send(message(i, &mut rng)).await.unwrap();
    }
    for i in 1..=10 {
        assert_eq!(timeout(DEADLINE, a_got.recv()).await.unwrap(), Some(i));
    }
    // A "restarts": its connections are cut and clients now reach B.
    *proxy.upstream.lock().unwrap() = b;
    proxy.cut.notify_waiters();
    let unacked = timeout(DEADLINE, async {
        loop {
            match client.next_event().await.expect("client stopped") {
                ClientEvent::SessionLost { unacked, .. } => return unacked,
                ClientEvent::Message(m) => panic!("unexpected message {m:?}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    // Nothing dropped silently: the 10 messages A never acknowledged come back, in order.
    assert_eq!(
        unacked.iter().map(number).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    // The session goes on, new, with B.
    client.send(message(11, &mut rng)).await.unwrap();
    assert_eq!(timeout(DEADLINE, b_got.recv()).await.unwrap(), Some(11));
}
