//! Acknowledged sessions over real loopback TCP, through a proxy that cuts the link over and
//! over: every message arrives exactly once and in order, both ways; a session the server no
//! longer has reports the unacknowledged messages back; memory stays bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use framelink::connection::{ConnectionConfig, ResumeStatus, SendError};
use framelink::{
    BackoffConfig, Client, ClientConfig, ClientEvent, Event, Incoming, LostReason, Protocol,
    Server, ServerConfig, ServerHandle, ServerSessions, SessionConfig, SessionEvent,
    SessionSendError,
};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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
///
/// Each connection is read in its own task, which forwards the session's messages as it takes
/// them. After a resume the connection it replaced may still hold the last few: the library
/// holds the new connection's back until the old one's task has asked for the event after its
/// last message (see `a_resumed_session_waits_on_the_new_connection_until_the_old_one_is_drained`),
/// so the echo queue gets them in order even when the old task lags (a loaded machine).
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
                ..ServerSessions::default()
            }),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let received: Arc<Mutex<HashMap<[u8; 16], Vec<u32>>>> = Arc::default();
    let record = received.clone();
    tokio::spawn(async move {
        // Per session, one echo task, fed by whichever connection carries the session now; it
        // queues every echo in the session with `send_to_session`, wherever the client is.
        let echoes: Arc<Mutex<HashMap<[u8; 16], mpsc::UnboundedSender<Bytes>>>> = Arc::default();
        while let Some(incoming) = server.accept().await {
            let (handle, echoes, record) = (handle.clone(), echoes.clone(), record.clone());
            tokio::spawn(async move {
                let mut events = incoming.connection;
                let mut echo = None;
                while let Some(event) = events.next_event().await {
                    match event {
                        Event::Session(SessionEvent::Started { id, .. }) => {
                            let mut echoes = echoes.lock().unwrap();
                            let queue = echoes.entry(id).or_insert_with(|| {
                                session_echo(handle.clone(), id, record.clone())
                            });
                            echo = Some(queue.clone());
                        }
                        Event::Message(m) => echo
                            .as_ref()
                            .expect("messages come after the session starts")
                            .send(m)
                            .unwrap(),
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, received)
}

/// The echo of session `id`: records each message's number and queues it back to the client.
fn session_echo(
    handle: ServerHandle,
    id: [u8; 16],
    record: Arc<Mutex<HashMap<[u8; 16], Vec<u32>>>>,
) -> mpsc::UnboundedSender<Bytes> {
    record.lock().unwrap().entry(id).or_default();
    let (queue, mut messages) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(m) = messages.recv().await {
            record
                .lock()
                .unwrap()
                .entry(id)
                .or_default()
                .push(number(&m));
            handle.send_to_session(id, m).await.expect("echo queued");
        }
    });
    queue
}

/// What the session echo server recorded around message `n`, for a failure message.
fn record_around(received: &Mutex<HashMap<[u8; 16], Vec<u32>>>, n: u32) -> String {
    let received = received.lock().unwrap();
    let mut out = format!("{} session(s)", received.len());
    for got in received.values() {
        let at = got.iter().position(|&x| x == n);
        let from = at.map_or(got.len(), |at| at.saturating_sub(3));
        let to = at.map_or(got.len(), |at| (at + 15).min(got.len()));
        let in_order = got.iter().copied().eq(1..=got.len() as u32);
        out += &format!(
            "; {} messages, in order: {in_order}, {n} at {at:?}: {:?}",
            got.len(),
            &got[from..to]
        );
    }
    out
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
                    if number(&m) != next {
                        // Which side went wrong: what the server received around there, and
                        // whether the client was handed messages back as lost.
                        panic!(
                            "echo out of order or duplicated: got {} for {next}; {lost} handed \
                             back as lost so far; the server received {}",
                            number(&m),
                            record_around(&received, next)
                        );
                    }
                    next += 1;
                }
                ClientEvent::Session(SessionEvent::Started { status, .. }) => {
                    resumed += u32::from(status == ResumeStatus::Resumed)
                }
                ClientEvent::Session(SessionEvent::Lost { unacked, .. }) => lost += unacked.len(),
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
    use framelink_chaos::{ChaosConfig, ChaosProxy, Fault, FaultMix, FaultPlan, Trigger};
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
        SwitchProxy::start_from(upstream, None).await
    }

    /// A proxy whose connections to `upstream` come from `source` (a loopback address other
    /// than 127.0.0.1 makes its clients another address to the server).
    async fn start_from(
        upstream: std::net::SocketAddr,
        source: Option<std::net::IpAddr>,
    ) -> SwitchProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (target, cut_all) = (upstream.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let to = *target.lock().unwrap();
                let up = match source {
                    None => TcpStream::connect(to).await,
                    Some(ip) => {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.bind((ip, 0).into()).unwrap();
                        socket.connect(to).await
                    }
                };
                let Ok(up) = up else {
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
    let config = ServerConfig {
        sessions: Some(ServerSessions {
            policy,
            ..ServerSessions::default()
        }),
        ..ServerConfig::default()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, _) = start_server(config, move |event| {
        if let Event::Message(m) = event {
            let _ = tx.send(number(&m));
        }
    })
    .await;
    (addr, rx)
}

/// Starts a server with `config`; each connection's events go to `on_event`, from the
/// connection's own task.
async fn start_server(
    config: ServerConfig,
    on_event: impl Fn(Event) + Clone + Send + 'static,
) -> (std::net::SocketAddr, ServerHandle) {
    let mut server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let on_event = on_event.clone();
            tokio::spawn(async move {
                let mut events = incoming.connection;
                while let Some(event) = events.next_event().await {
                    on_event(event);
                }
            });
        }
    });
    (addr, handle)
}

/// An address nobody listens on: a client pointed there stays away.
async fn unreachable_addr() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
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
                ClientEvent::Session(SessionEvent::Lost { unacked, .. }) => return unacked,
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

/// The next message the client receives (other events skipped).
async fn client_message(client: &mut Client) -> Bytes {
    timeout(DEADLINE, async {
        loop {
            match client.next_event().await.expect("client stopped") {
                ClientEvent::Message(m) => return m,
                ClientEvent::Session(SessionEvent::Lost { .. }) => panic!("session lost"),
                _ => {}
            }
        }
    })
    .await
    .unwrap()
}

/// Waits until the server holds `attached` attached and `detached` detached sessions.
async fn session_counts(handle: &ServerHandle, attached: usize, detached: usize) {
    timeout(DEADLINE, async {
        while handle.session_counts() != (attached, detached) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sessions now {:?}", handle.session_counts()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_queues_for_an_absent_client_and_hands_back_what_expired() {
    let ttl = Duration::from_millis(800);
    let config = ServerConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            max_queued_bytes: 4096,
            ..ConnectionConfig::default()
        }),
        sessions: Some(ServerSessions {
            ttl,
            ..ServerSessions::default()
        }),
        ..ServerConfig::default()
    };
    let (ids_tx, mut ids) = mpsc::unbounded_channel();
    let (server_addr, handle) = start_server(config, move |event| {
        if let Event::Session(SessionEvent::Started { id, .. }) = event {
            let _ = ids_tx.send(id);
        }
    })
    .await;
    // The client stays away while the proxy points nowhere.
    let nowhere = unreachable_addr().await;
    let proxy = SwitchProxy::start(server_addr).await;
    let park = || {
        *proxy.upstream.lock().unwrap() = nowhere;
        proxy.cut.notify_waiters();
    };
    let mut client = Client::connect(proxy.addr.to_string(), session_client_config()).unwrap();
    let id = timeout(DEADLINE, ids.recv()).await.unwrap().unwrap();
    handle
        .send_to_session(id, Bytes::from_static(b"1"))
        .await
        .unwrap();
    assert_eq!(client_message(&mut client).await, "1");

    // The client goes away; its session is detached and takes messages for it.
    tokio::time::sleep(Duration::from_millis(200)).await; // its ACK of "1" arrives
    park();
    session_counts(&handle, 0, 1).await;
    for m in ["2", "3"] {
        handle
            .send_to_session(id, Bytes::from_static(m.as_bytes()))
            .await
            .unwrap();
    }
    let big = Bytes::from(vec![b'4'; 4000]);
    handle.try_send_to_session(id, big.clone()).unwrap();
    // Full now (4,041 of 4,096 bytes): refused without waiting, or waited for.
    let five = Bytes::from(vec![b'5'; 100]);
    match handle.try_send_to_session(id, five.clone()) {
        Err(SessionSendError::Full {
            buffered: 4041,
            len: 113,
            limit: 4096,
            payload,
            ..
        }) => assert_eq!(payload, five),
        other => panic!("expected Full, got {other:?}"),
    }
    let waiting = tokio::spawn({
        let (handle, five) = (handle.clone(), five.clone());
        async move { handle.send_to_session(id, five).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a full detached session makes the send wait"
    );

    // The client comes back and resumes: everything queued arrives once, in order, and the
    // waiting send goes through.
    *proxy.upstream.lock().unwrap() = server_addr;
    assert_eq!(client_message(&mut client).await, "2");
    assert_eq!(client_message(&mut client).await, "3");
    assert_eq!(client_message(&mut client).await, big);
    assert_eq!(client_message(&mut client).await, five);
    timeout(DEADLINE, waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(timeout(DEADLINE, ids.recv()).await.unwrap(), Some(id));

    // The client goes away for good: what it never acknowledged comes back once the ttl is
    // over, and the session is gone.
    tokio::time::sleep(Duration::from_millis(200)).await; // its ACKs arrive
    let parked = std::time::Instant::now(); // the session is detached after this
    park();
    session_counts(&handle, 0, 1).await;
    handle
        .send_to_session(id, Bytes::from_static(b"6"))
        .await
        .unwrap();
    let lost = timeout(DEADLINE, handle.next_lost_session())
        .await
        .unwrap()
        .unwrap();
    let waited = parked.elapsed();
    assert_eq!((lost.id, lost.reason), (id, LostReason::Expired));
    assert_eq!(lost.unacked, vec![Bytes::from_static(b"6")]);
    // Reported within the ttl plus a quarter of it (the sweep), with slack for slow machines.
    assert!(waited >= ttl, "lost after {waited:?}, before the ttl");
    assert!(
        waited < ttl + ttl / 4 + Duration::from_secs(2),
        "lost after {waited:?}"
    );
    assert_eq!(handle.session_counts(), (0, 0));
    match handle.send_to_session(id, Bytes::from_static(b"7")).await {
        Err(SessionSendError::Unknown { id: i, payload }) => {
            assert_eq!((i, &payload[..]), (id, &b"7"[..]));
        }
        other => panic!("expected Unknown, got {other:?}"),
    }
    client.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_detached_the_oldest_session_is_handed_back() {
    let config = ServerConfig {
        sessions: Some(ServerSessions {
            max_detached: 1,
            ..ServerSessions::default()
        }),
        ..ServerConfig::default()
    };
    let (server_addr, handle) = start_server(config, |_| {}).await;
    let nowhere = unreachable_addr().await;
    let proxy = SwitchProxy::start(server_addr).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(proxy.addr.to_string(), session_client_config()).unwrap();
        session_started(&mut client).await;
        clients.push(client);
    }
    session_counts(&handle, 2, 0).await;
    *proxy.upstream.lock().unwrap() = nowhere;
    proxy.cut.notify_waiters();
    let lost = timeout(DEADLINE, handle.next_lost_session())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost.reason, LostReason::Evicted);
    assert!(lost.unacked.is_empty());
    session_counts(&handle, 0, 1).await;
    for client in clients {
        client.stop();
    }
}

/// One address that opens sessions and drops them in a loop (here three, over a limit of two
/// per address) pushes out its own oldest detached session, not another client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_detached_per_ip_an_address_pushes_out_only_its_own_sessions() {
    let config = ServerConfig {
        sessions: Some(ServerSessions {
            max_detached_per_ip: 2,
            ..ServerSessions::default()
        }),
        ..ServerConfig::default()
    };
    let (server_addr, handle) = start_server(config, |_| {}).await;
    let nowhere = unreachable_addr().await;
    let churner = SwitchProxy::start(server_addr).await;
    let other = SwitchProxy::start_from(server_addr, Some([127, 0, 0, 2].into())).await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    // The other client's first, so that it is the oldest detached session of all.
    for proxy in [&other, &churner, &churner, &churner] {
        let mut client = Client::connect(proxy.addr.to_string(), session_client_config()).unwrap();
        let (id, _) = session_started(&mut client).await;
        ids.push(id);
        clients.push(client);
    }
    session_counts(&handle, 4, 0).await;
    for proxy in [&other, &churner] {
        *proxy.upstream.lock().unwrap() = nowhere;
        proxy.cut.notify_waiters();
    }
    let lost = timeout(DEADLINE, handle.next_lost_session())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost.reason, LostReason::Evicted);
    assert!(
        ids[1..].contains(&lost.id),
        "the lost session is the churning address's"
    );
    session_counts(&handle, 0, 3).await;
    // The other address's session is still kept: its client resumes it.
    *other.upstream.lock().unwrap() = server_addr;
    let mut victim = clients.remove(0);
    assert_eq!(
        session_started(&mut victim).await,
        (ids[0], ResumeStatus::Resumed)
    );
    victim.stop();
    for client in clients {
        client.stop();
    }
}

/// The client's next session start (other events skipped): the session's id and status.
async fn session_started(client: &mut Client) -> ([u8; 16], ResumeStatus) {
    timeout(DEADLINE, async {
        loop {
            let event = client.next_event().await.expect("client ended");
            if let ClientEvent::Session(SessionEvent::Started { id, status, .. }) = event {
                return (id, status);
            }
        }
    })
    .await
    .expect("no session started")
}

/// The next message of a server connection (other events skipped); `None` once it ended.
async fn server_message(connection: &mut framelink::Connection) -> Option<u32> {
    timeout(DEADLINE, async {
        loop {
            match connection.next_event().await? {
                Event::Message(m) => return Some(number(&m)),
                Event::Session(SessionEvent::Lost { .. }) => panic!("session lost"),
                _ => {}
            }
        }
    })
    .await
    .unwrap()
}

/// Waits until the client has resumed its session on a new connection (after a disconnect);
/// returns how many messages it resent.
async fn client_resumed(client: &mut Client) -> u64 {
    timeout(DEADLINE, async {
        let mut disconnected = false;
        loop {
            match client.next_event().await.expect("client stopped") {
                ClientEvent::Disconnected(_) => disconnected = true,
                ClientEvent::Session(SessionEvent::Started {
                    status, resending, ..
                }) if disconnected => {
                    assert_eq!(status, ResumeStatus::Resumed);
                    return resending;
                }
                ClientEvent::Session(SessionEvent::Lost { .. }) => panic!("session lost"),
                _ => {}
            }
        }
    })
    .await
    .unwrap()
}

/// Sends `numbers` on the session, gives the server time to read (and acknowledge) them without
/// the application taking any, cuts the link, and returns the connection the client resumed on
/// and how many messages it resent.
async fn send_then_cut(
    server: &mut Server,
    proxy: &SwitchProxy,
    client: &mut Client,
    rng: &mut impl Rng,
    numbers: std::ops::RangeInclusive<u32>,
) -> (Incoming, u64) {
    for i in numbers {
        client.send(message(i, rng)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut.notify_waiters();
    let next = timeout(DEADLINE, server.accept()).await.unwrap().unwrap();
    let resent = client_resumed(client).await;
    (next, resent)
}

/// The connection hands out nothing for a while (it waits for an older one of its session).
/// Only ever fails when the library is wrong: a correct one never answers.
async fn holds_back(connection: &mut framelink::Connection, what: &str) {
    if let Ok(event) = timeout(Duration::from_millis(300), connection.next_event()).await {
        panic!("{what}: handed out {event:?} before the older connection was done");
    }
}

/// Every message of a server connection until it ends, in order.
async fn all_messages(connection: &mut framelink::Connection) -> Vec<u32> {
    let mut all = Vec::new();
    while let Some(n) = server_message(connection).await {
        all.push(n);
    }
    all
}

/// The next message of a server connection, after its `Session(Started)` (resumed, `id`).
async fn resumed_message(connection: &mut framelink::Connection, id: [u8; 16]) -> u32 {
    timeout(DEADLINE, async {
        loop {
            match connection.next_event().await {
                Some(Event::Session(SessionEvent::Started { id: i, status, .. })) => {
                    assert_eq!((i, status), (id, ResumeStatus::Resumed));
                }
                Some(Event::Message(m)) => return number(&m),
                Some(_) => {}
                None => panic!("the connection ended"),
            }
        }
    })
    .await
    .unwrap()
}

/// A session server, a [`SwitchProxy`] in front of it and a sessions client through it; the
/// server's first connection after the session started, and the session's id.
async fn one_session() -> (Server, SwitchProxy, Client, Incoming, [u8; 16]) {
    let mut server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            sessions: Some(ServerSessions::default()),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let proxy = SwitchProxy::start(server.local_addr()).await;
    let client = Client::connect(proxy.addr.to_string(), session_client_config()).unwrap();
    let mut first = timeout(DEADLINE, server.accept()).await.unwrap().unwrap();
    let id = timeout(DEADLINE, async {
        loop {
            if let Some(Event::Session(SessionEvent::Started { id, .. })) =
                first.connection.next_event().await
            {
                return id;
            }
        }
    })
    .await
    .unwrap();
    (server, proxy, client, first, id)
}

/// After a resume the new connection receives the session's next messages while the
/// connection it replaced may still hold earlier ones the application has not taken (the
/// driver counts a message delivered when it queues it for the receiver). The new connection's
/// receiver hands out nothing until the old one has been asked for the event after its last
/// session message: a server that reads each connection in its own task gets the session's
/// messages in order. (The session echo server above relies on it: when the old connection's
/// task lagged on a loaded machine, the new one's messages used to go first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_waits_on_the_new_connection_until_the_old_one_is_drained() {
    let (mut server, proxy, mut client, mut first, id) = one_session().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // The server reads and acknowledges 1..=5; the application does not take them (yet). The
    // client resumes on a second connection, with nothing to resend.
    let (mut second, resent) =
        send_then_cut(&mut server, &proxy, &mut client, &mut rng, 1..=5).await;
    assert_eq!(resent, 0, "the server had 1..=5");
    client.send(message(6, &mut rng)).await.unwrap();
    // Message 6 has reached the new connection, which holds it back (nor does it report the
    // session started: nothing of the session before the old connection is done) ...
    holds_back(&mut second.connection, "the new connection").await;
    // ... while 1 to 5 wait, in order, on the old one, taken late.
    for i in 1..=5 {
        assert_eq!(server_message(&mut first.connection).await, Some(i));
    }
    holds_back(&mut second.connection, "asked for nothing after 5 yet").await;
    // Asked for more after its last message, the old connection opens the way.
    assert_eq!(server_message(&mut first.connection).await, None);
    assert_eq!(resumed_message(&mut second.connection, id).await, 6);
    client.stop();
}

/// The application drops the old connection without taking its messages: they are abandoned,
/// and the new connection goes on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_old_connection_lets_the_new_one_go_on() {
    let (mut server, proxy, mut client, first, id) = one_session().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let (mut second, resent) =
        send_then_cut(&mut server, &proxy, &mut client, &mut rng, 1..=5).await;
    assert_eq!(resent, 0, "the server had 1..=5");
    client.send(message(6, &mut rng)).await.unwrap();
    holds_back(&mut second.connection, "the new connection").await;
    // Its sending half alone does not hold the session's order: only the receiver does.
    let (first_sender, first_receiver) = first.connection.split();
    drop(first_receiver);
    assert_eq!(resumed_message(&mut second.connection, id).await, 6);
    drop(first_sender);
    client.stop();
}

/// A → B → C, with A and B both still holding messages when C takes over: C waits for B,
/// which waits for A. The three together hand out the session's messages exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_resumes_keep_the_order_of_every_connection() {
    let (mut server, proxy, mut client, mut a, id) = one_session().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (mut b, _) = send_then_cut(&mut server, &proxy, &mut client, &mut rng, 1..=5).await;
    let (mut c, _) = send_then_cut(&mut server, &proxy, &mut client, &mut rng, 6..=8).await;
    client.send(message(9, &mut rng)).await.unwrap();

    holds_back(&mut c.connection, "C, before A and B").await;
    holds_back(&mut b.connection, "B, before A").await;
    // (Normally 1..=5 on A and 6..=8 on B; on a very slow machine a cut may come before the
    // server read some of them, and the next connection gets them instead.)
    let mut all = all_messages(&mut a.connection).await;
    assert!(!all.is_empty(), "A had at least message 1");
    holds_back(&mut c.connection, "C, before B").await;
    all.extend(all_messages(&mut b.connection).await);
    let mut rest = Vec::new();
    while rest.last() != Some(&9) {
        rest.push(resumed_message(&mut c.connection, id).await);
    }
    all.extend(rest);
    assert_eq!(all, (1..=9).collect::<Vec<_>>());
    client.stop();
}

/// A server that takes a session and its first `want` messages, never acknowledges them,
/// then drops the link and stops listening (no reconnect can succeed).
async fn unacknowledging_server(listener: TcpListener, want: usize) {
    use framelink::proto::connection::{Connection as Machine, Event as MachineEvent};
    use framelink::proto::machine::Machine as _;
    let (mut socket, _) = listener.accept().await.unwrap();
    drop(listener);
    let config = ConnectionConfig {
        sessions: Some(SessionConfig {
            ack_every: u32::MAX,
            ack_delay: Duration::from_secs(3600),
        }),
        ..ConnectionConfig::default()
    };
    let now = std::time::Instant::now;
    let mut machine = Machine::new(config, now()).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < want {
        while let Some(out) = machine.poll_transmit(now()) {
            socket.write_all(&out).await.unwrap();
        }
        let n = socket.read(&mut buf).await.unwrap();
        if n == 0 {
            return;
        }
        machine.handle_input(&buf[..n], now());
        while let Some(event) = machine.poll_event() {
            match event {
                MachineEvent::SessionRequest { .. } => machine.attach_session(None, now()).unwrap(),
                MachineEvent::Data(_) => got += 1,
                _ => {}
            }
        }
    }
}

/// A client whose session waits for a connection that never comes (it gives up, or is
/// stopped during the backoff) hands the unacknowledged messages back instead of dropping
/// them with the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_between_connections_hands_its_session_back() {
    for stop_in_backoff in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(unacknowledging_server(listener, 3));
        let config = ClientConfig {
            sessions: Some(SessionConfig::default()),
            backoff: BackoffConfig {
                initial: Duration::from_millis(if stop_in_backoff { 5_000 } else { 10 }),
                max: Duration::from_secs(5),
                max_attempts: (!stop_in_backoff).then_some(2),
                ..BackoffConfig::default()
            },
            ..ClientConfig::default()
        };
        let mut client = Client::connect(addr.to_string(), config).unwrap();
        for m in ["one", "two", "three"] {
            client.send(Bytes::from_static(m.as_bytes())).await.unwrap();
        }
        let mut handed_back = Vec::new();
        timeout(DEADLINE, async {
            while let Some(event) = client.next_event().await {
                match event {
                    ClientEvent::Session(SessionEvent::Lost { unacked, .. }) => {
                        handed_back.extend(unacked)
                    }
                    ClientEvent::Unsent { messages } => handed_back.extend(messages),
                    ClientEvent::Reconnecting { .. } if stop_in_backoff => client.stop(),
                    _ => {}
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            handed_back,
            ["one", "two", "three"],
            "stop in backoff: {stop_in_backoff}"
        );
    }
}

/// On a session every message carries an 8-byte sequence number within the peer's
/// `max_message_len`: a send that would overflow it is refused up front, not accepted and
/// dropped later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_send_counts_the_sequence_number_against_the_peer_limit() {
    const MAX: u32 = 4096;
    let config = ServerConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            max_message_len: MAX,
            ..ConnectionConfig::default()
        }),
        sessions: Some(ServerSessions::default()),
        ..ServerConfig::default()
    };
    let (addr, _handle) = start_server(config, |_| {}).await;
    let mut client = Client::connect(addr.to_string(), session_client_config()).unwrap();
    session_started(&mut client).await;
    let too_big = Bytes::from(vec![1; MAX as usize - 1]);
    assert_eq!(
        client.send(too_big).await,
        Err(SendError::TooBig {
            len: MAX as usize - 1,
            max: MAX
        })
    );
    let largest = Bytes::from(vec![2; MAX as usize - 9]);
    client.send(largest).await.unwrap();
    client.stop();
}

/// A client with a session refused because the server is full hears why (CLOSE `ServerFull`,
/// in a HELLO that offers sessions as the server does) and keeps its session for the next
/// attempt; it does not take the refusal for a server without sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_client_refused_when_full_hears_server_full_and_keeps_its_session() {
    let config = ServerConfig {
        max_connections: 1,
        evict_idle_when_full: None,
        sessions: Some(ServerSessions::default()),
        ..ServerConfig::default()
    };
    let (addr, _handle) = start_server(config, |_| {}).await;
    let mut first = Client::connect(addr.to_string(), session_client_config()).unwrap();
    session_started(&mut first).await;
    let mut second = Client::connect(addr.to_string(), session_client_config()).unwrap();
    let refused = timeout(DEADLINE, async {
        loop {
            match second.next_event().await.expect("client ended") {
                ClientEvent::Disconnected(info) => return Ok(info),
                ClientEvent::ConnectFailed { error, .. } => return Err(error.to_string()),
                ClientEvent::Session(SessionEvent::Lost { unacked, .. }) => {
                    panic!("session lost on refusal: {unacked:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    match refused {
        Ok(info) => assert_eq!(
            info.code,
            framelink::connection::CloseCode::ServerFull,
            "{info}"
        ),
        Err(error) => assert!(
            error.contains("ServerFull") || error.contains("server full") || error.contains("full"),
            "{error}"
        ),
    }
    first.stop();
    second.stop();
}
