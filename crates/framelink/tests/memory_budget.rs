//! The server-wide memory budget (`ServerConfig::memory_budget`), the frame timeout and the
//! bounded lost-session queue, against the attacks they are for, at small scale over loopback:
//!
//! - many connections each holding a big partial frame: some are evicted or refused, the
//!   budget's count never passes the budget (plus the documented slack), and a well-behaved
//!   connection keeps working with its data intact;
//! - clients that send and never read: the send queues are bounded the same way;
//! - sessions left with unacknowledged messages by clients that reset: the oldest detached
//!   sessions are shed into the lost queue, which is bounded and counts what it drops;
//!   expired sessions' memory comes back when the application takes them;
//! - a peer trickling a partial frame is cut by the frame timeout with CLOSE code 3.
//!
//! Waits are for events or counters, bounded by [`DEADLINE`]; nothing depends on how fast the
//! machine is.

mod common;

use framelink::proto::machine::Machine;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use framelink::connection::{self, CloseCode, ConnectionConfig};
use framelink::proto::connection as proto;
use framelink::proto::session::Session;
use framelink::proto::wire::{Hello, Message, WireCodec};
use framelink::{
    Connection, Event, LostReason, Protocol, Server, ServerConfig, ServerHandle, ServerSessions,
    ServerStats, SessionEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use common::{connected, echo_server, DEADLINE};

const MIB: usize = 1 << 20;
/// The budget of these tests.
const BUDGET: usize = 8 * MIB;
/// What the count may pass the budget by: charges for memory already held that cannot be
/// refused (messages moving between a connection and the session store, events produced from
/// a read) and receive-buffer growth beyond its estimate (see the server's documentation).
const SLACK: usize = MIB;

/// Protocol messages on the wire.
fn wire(messages: &[Message]) -> Vec<u8> {
    let mut codec = WireCodec::new(1 << 24).unwrap();
    codec.set_peer_max_message_len(u32::MAX);
    let mut buf = BytesMut::new();
    for m in messages {
        codec.encode(m, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// A HELLO followed by the first `sent` bytes of a DATA message of `len` payload bytes.
fn partial_frame(len: usize, sent: usize) -> Vec<u8> {
    let mut bytes = wire(&[Message::Hello(Hello::default())]);
    let frame = wire(&[Message::Data(Bytes::from(vec![0xA5; len]))]);
    bytes.extend_from_slice(&frame[..sent]);
    bytes
}

/// A well-behaved client: handshaken, answers pings on its own.
async fn client(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    connected(&mut conn).await;
    conn
}

/// Sends `count` distinct messages of `len` bytes and checks every echo, in order, intact.
async fn echo_intact(conn: &mut Connection, round: u32, count: u32, len: usize) {
    for i in 0..count {
        let mut payload = vec![(i % 251) as u8; len];
        payload[..4].copy_from_slice(&(round * 100_000 + i).to_be_bytes());
        let payload = Bytes::from(payload);
        timeout(DEADLINE, conn.send(payload.clone()))
            .await
            .expect("send stalled")
            .expect("send failed");
        loop {
            match timeout(DEADLINE, conn.next_event()).await.expect("no echo") {
                Some(Event::Message(m)) => {
                    assert_eq!(m, payload, "echo {i} of round {round} altered");
                    break;
                }
                Some(Event::Closed(info)) => panic!("well-behaved connection closed: {info}"),
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    }
}

/// Samples the budget's count every millisecond until `stop`; returns the highest seen.
fn watch(handle: ServerHandle) -> (tokio::task::JoinHandle<usize>, Arc<Mutex<bool>>) {
    let stop = Arc::new(Mutex::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut highest = 0;
        while !*flag.lock().unwrap() {
            highest = highest.max(handle.memory_used());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        highest
    });
    (task, stop)
}

/// Waits until `done` holds for the server's stats.
async fn stats_until(handle: &ServerHandle, what: &str, done: impl Fn(&ServerStats) -> bool) {
    timeout(DEADLINE, async {
        while !done(&handle.stats()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {:?}", handle.stats()));
}

fn budget_config() -> ServerConfig {
    ServerConfig {
        memory_budget: BUDGET,
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_are_evicted_or_refused_and_a_good_connection_keeps_working() {
    let (addr, handle) = echo_server(budget_config()).await;
    let mut good = client(addr).await;
    echo_intact(&mut good, 0, 20, 1000).await;
    let (watcher, stop) = watch(handle.clone());

    // 40 attackers, each with the first 1.5 MiB of a 7.5 MiB message: 60 MiB wanted.
    let attack = Arc::new(partial_frame(7 * MIB + MIB / 2, 3 * MIB / 2));
    let mut attackers = Vec::new();
    for _ in 0..40 {
        let attack = attack.clone();
        attackers.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            // Evicted or refused: the write fails or the server's CLOSE comes; either way
            // the socket is kept until the server ends it.
            let _ = stream.write_all(&attack).await;
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }));
    }
    // The good connection keeps working throughout.
    echo_intact(&mut good, 1, 200, 1000).await;
    stats_until(&handle, "evictions", |s| {
        s.evicted_memory + s.refused_memory >= 5
    })
    .await;
    echo_intact(&mut good, 2, 200, 1000).await;
    for attacker in attackers {
        timeout(DEADLINE, attacker)
            .await
            .expect("an attacker was never closed")
            .unwrap();
    }
    echo_intact(&mut good, 3, 50, 1000).await;
    *stop.lock().unwrap() = true;
    let highest = watcher.await.unwrap();
    let stats = handle.stats();
    println!("partial frames: {stats:?}, highest sampled {highest}");
    assert!(stats.evicted_memory >= 1, "{stats:?}");
    assert!(
        stats.memory_peak <= BUDGET + SLACK,
        "peak {} over {BUDGET} + {SLACK}",
        stats.memory_peak
    );
    assert_eq!(stats.memory_budget, BUDGET);
    assert_eq!(
        stats.refused, stats.refused_memory,
        "no other limit was hit"
    );
    // Everything the attackers held came back.
    stats_until(&handle, "memory given back", |s| s.memory_used < MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_send_and_never_read_are_bounded() {
    let (addr, handle) = echo_server(budget_config()).await;
    let mut good = client(addr).await;
    let (watcher, stop) = watch(handle.clone());
    // 16 clients each send 16 MiB in 64 KiB messages and never read the echoes: beyond what
    // the kernel's socket buffers take, 100+ MiB of send queues wanted.
    let mut flood = wire(&[Message::Hello(Hello::default())]);
    let message = wire(&[Message::Data(Bytes::from(vec![0x5A; 64 * 1024]))]);
    for _ in 0..256 {
        flood.extend_from_slice(&message);
    }
    let flood = Arc::new(flood);
    let mut floods = Vec::new();
    for _ in 0..16 {
        let flood = flood.clone();
        floods.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            // Blocks once the server stops reading; fails once it evicts us. Never reads.
            let _ = stream.write_all(&flood).await;
            tokio::time::sleep(DEADLINE).await;
        }));
    }
    stats_until(&handle, "evictions", |s| s.evicted_memory >= 3).await;
    echo_intact(&mut good, 1, 200, 1000).await;
    *stop.lock().unwrap() = true;
    let highest = watcher.await.unwrap();
    let stats = handle.stats();
    println!("senders that never read: {stats:?}, highest sampled {highest}");
    assert!(
        stats.memory_peak <= BUDGET + SLACK,
        "peak {} over {BUDGET} + {SLACK}",
        stats.memory_peak
    );
    for f in floods {
        f.abort();
    }
}

/// Opens a session as a client that then never reads (so never acknowledges): drives the
/// protocol machine itself until the server confirmed the session.
async fn session_client(addr: SocketAddr, id: [u8; 16]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let now = std::time::Instant::now();
    let mut machine =
        proto::Connection::with_session(ConnectionConfig::default(), Session::new(id), now)
            .unwrap();
    timeout(DEADLINE, async {
        loop {
            while let Some(out) = machine.poll_transmit(now) {
                stream.write_all(&out).await.unwrap();
            }
            while let Some(event) = machine.poll_event() {
                if let proto::Event::SessionStarted { .. } = event {
                    return;
                }
            }
            let n = stream.read_buf(machine.recv_buf()).await.unwrap();
            assert!(n > 0, "server closed before the session started");
            machine.process_input(now);
        }
    })
    .await
    .expect("session never started");
    stream
}

/// A server with sessions that sends `per_session` bytes (in 64 KiB messages) to each session
/// as it starts, reporting the ids it filled.
async fn session_server(
    sessions: ServerSessions,
    per_session: usize,
) -> (SocketAddr, ServerHandle, mpsc::UnboundedReceiver<[u8; 16]>) {
    let config = ServerConfig {
        memory_budget: BUDGET,
        sessions: Some(sessions),
        ..ServerConfig::default()
    };
    let mut server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let (filled, filled_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let filled = filled.clone();
            tokio::spawn(async move {
                let (tx, mut rx) = incoming.connection.split();
                while let Some(event) = rx.next_event().await {
                    if let Event::Session(SessionEvent::Started { id, .. }) = event {
                        for _ in 0..per_session / (64 * 1024) {
                            if tx.send(Bytes::from(vec![1u8; 64 * 1024])).await.is_err() {
                                break;
                            }
                        }
                        let _ = filled.send(id);
                    }
                }
            });
        }
    });
    (addr, handle, filled_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_sessions_are_shed_oldest_first_into_a_bounded_lost_queue() {
    let sessions = ServerSessions {
        ttl: Duration::from_secs(600),
        max_lost: 4,
        max_lost_bytes: 2 * MIB,
        ..ServerSessions::default()
    };
    let (addr, handle, mut filled) = session_server(sessions, 256 * 1024).await;
    let (watcher, stop) = watch(handle.clone());
    // 48 clients each leave 256 KiB unacknowledged and reset: 12 MiB of sessions.
    let mut order = Vec::new();
    for i in 0..48u8 {
        let id = [i + 1; 16];
        let stream = session_client(addr, id).await;
        let got = timeout(DEADLINE, filled.recv()).await.unwrap().unwrap();
        assert_eq!(got, id);
        drop(stream);
        order.push(id);
    }
    stats_until(&handle, "all detached or shed", |_| {
        handle.session_counts().0 == 0
    })
    .await;
    stats_until(&handle, "sessions shed", |s| s.sessions_shed >= 1).await;
    *stop.lock().unwrap() = true;
    let highest = watcher.await.unwrap();
    let stats = handle.stats();
    println!("sessions: {stats:?}, highest sampled {highest}");
    assert!(
        stats.memory_peak <= BUDGET + SLACK,
        "peak {} over {BUDGET} + {SLACK}",
        stats.memory_peak
    );
    assert!(stats.lost_dropped >= 1, "{stats:?}");
    assert_eq!(stats.lost_dropped_messages, stats.lost_dropped * 4);
    let (_, detached) = handle.session_counts();
    assert!(detached < 48, "{detached} detached: nothing shed");
    // The lost queue holds at most 4 (and 2 MiB), the most recently shed; the first one says
    // how many were dropped before it.
    let mut lost = Vec::new();
    while let Ok(Some(session)) =
        timeout(Duration::from_millis(200), handle.next_lost_session()).await
    {
        lost.push(session);
    }
    assert!(!lost.is_empty() && lost.len() <= 4, "{} lost", lost.len());
    assert!(
        lost[0].dropped_before >= stats.lost_dropped,
        "{:?}",
        lost[0].dropped_before
    );
    assert!(lost[1..].iter().all(|l| l.dropped_before == 0));
    let stats = handle.stats();
    assert_eq!(lost[0].dropped_before, stats.lost_dropped);
    assert!(lost.iter().all(|l| l.reason == LostReason::Evicted));
    assert!(lost.iter().all(|l| l.unacked.len() == 4));
    // Shed oldest first. "Oldest" is by detach time, which is the order the clients reset in
    // up to neighbours swapping (the server notices one reset while the next client opens),
    // hence one place of slack: the lost ones are among the first `shed` (+1) opened, and
    // the most recently shed (the queue drops its oldest).
    let position = |id: &[u8; 16]| order.iter().position(|o| o == id).unwrap();
    let lost_positions: Vec<usize> = lost.iter().map(|l| position(&l.id)).collect();
    let shed = stats.sessions_shed as usize;
    assert_eq!(shed + detached, 48);
    assert!(
        lost_positions.iter().all(|&p| p <= shed),
        "a younger session went first: {lost_positions:?}, {shed} shed"
    );
    assert!(
        lost_positions.iter().all(|&p| p + 8 >= shed),
        "the lost queue kept old sessions and dropped recent ones: {lost_positions:?}"
    );
    // Taken by the application: their memory is given back; what is left is the detached
    // sessions' messages.
    let kept = detached * 4 * (64 * 1024 + 13);
    stats_until(&handle, "only detached sessions counted", |s| {
        s.memory_used == kept && s.live == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_go_to_the_lost_queue_and_their_memory_comes_back() {
    let sessions = ServerSessions {
        ttl: Duration::from_millis(300),
        ..ServerSessions::default()
    };
    let (addr, handle, mut filled) = session_server(sessions, 256 * 1024).await;
    let mut ids = HashSet::new();
    for i in 0..5u8 {
        let id = [0x40 + i; 16];
        let stream = session_client(addr, id).await;
        timeout(DEADLINE, filled.recv()).await.unwrap().unwrap();
        drop(stream);
        ids.insert(id);
    }
    let mut lost = Vec::new();
    while lost.len() < 5 {
        let session = timeout(DEADLINE, handle.next_lost_session())
            .await
            .expect("expired sessions not reported")
            .unwrap();
        assert_eq!(session.reason, LostReason::Expired);
        assert_eq!(session.unacked.len(), 4);
        assert!(ids.remove(&session.id));
        lost.push(session);
    }
    assert_eq!(handle.session_counts(), (0, 0));
    stats_until(&handle, "memory given back", |s| s.memory_used < 64 * 1024).await;
    assert_eq!(handle.stats().lost_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_partial_frame_is_cut_by_the_frame_timeout() {
    let config = ServerConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            frame_timeout: Some(Duration::from_secs(2)),
            ..ConnectionConfig::default()
        }),
        ..budget_config()
    };
    let (addr, handle) = echo_server(config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let full = partial_frame(
        100_000,
        1000 + wire(&[Message::Hello(Hello::default())]).len(),
    );
    stream.write_all(&full).await.unwrap();
    // One byte every 200 ms: the heartbeat is happy, the message never completes.
    let start = tokio::time::Instant::now();
    let mut received = BytesMut::new();
    let close = timeout(DEADLINE, async {
        let mut codec = WireCodec::new(1 << 24).unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = stream.write_all(&[0xA5]).await;
                }
                n = stream.read_buf(&mut received) => {
                    if n.unwrap_or(0) == 0 {
                        panic!("stream ended without CLOSE");
                    }
                    while let Some(m) = codec.decode(&mut received).unwrap() {
                        if let Message::Close { code, reason } = m {
                            return (code, reason);
                        }
                    }
                }
            }
        }
    })
    .await
    .expect("trickling peer never cut");
    let elapsed = start.elapsed();
    assert_eq!(close.0, CloseCode::PeerTimedOut);
    assert!(
        close.1.starts_with("frame incomplete after 2s: ")
            && close.1.ends_with(" of 100005 bytes arrived"),
        "{:?}",
        close.1
    );
    assert!(
        elapsed >= Duration::from_millis(1500),
        "cut early: {elapsed:?}"
    );
    stats_until(&handle, "connection gone", |s| s.live == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_refused_near_the_budget_make_room_from_detached_sessions() {
    let (addr, handle, _filled) = session_server(ServerSessions::default(), 0).await;
    // A detached session filled by the application to 16 KiB short of the budget.
    let id = [0x77; 16];
    drop(session_client(addr, id).await);
    stats_until(&handle, "session detached", |_| {
        handle.session_counts() == (0, 1)
    })
    .await;
    loop {
        let left = BUDGET - handle.memory_used() - 16 * 1024;
        if left <= 13 {
            break;
        }
        let len = (left - 13).min(MIB);
        handle
            .try_send_to_session(id, Bytes::from(vec![3u8; len]))
            .expect("queued in the detached session");
    }
    assert_eq!(handle.memory_used(), BUDGET - 16 * 1024);
    // Refused with a reason.
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut refused = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    let info = loop {
        match timeout(DEADLINE, refused.next_event()).await.unwrap() {
            Some(Event::Closed(info)) => break info,
            Some(_) => {}
            None => panic!("events ended without Closed"),
        }
    };
    assert_eq!(info.code, CloseCode::ServerFull);
    assert!(info.by_peer);
    assert_eq!(
        info.reason,
        format!(
            "server memory budget exhausted: {} of {BUDGET} bytes in use",
            BUDGET - 16 * 1024
        )
    );
    let stats = handle.stats();
    assert_eq!((stats.refused, stats.refused_memory), (1, 1));
    // The refusal makes room from what no connection uses: the detached session goes to the
    // lost queue (otherwise it would lock every newcomer out, its own client included); no
    // live connection is closed for a newcomer.
    stats_until(&handle, "the session shed", |s| s.sessions_shed == 1).await;
    assert_eq!(handle.stats().evicted_memory, 0);
    assert_eq!(handle.session_counts(), (0, 0));
    let lost = timeout(DEADLINE, handle.next_lost_session())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lost.id, lost.reason), (id, LostReason::Evicted));
    drop(lost);
    // Taken by the application: its memory is back, and newcomers are accepted again.
    stats_until(&handle, "memory back", |_| {
        handle.memory_used() < BUDGET / 2
    })
    .await;
    // Accepted: its handshake completes (this server does not echo).
    let _accepted = client(addr).await;
}
