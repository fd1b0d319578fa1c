//! The chaos proxy over real loopback TCP: faithful forwarding under splits and delays (and the
//! same pieces for the same seed), FIN / RST / blackhole / stall at scheduled byte counts,
//! random faults replayed from the seed, a tap shown every forwarded byte, a framelink
//! connection declared dead through a blackhole. Every wait is bounded; timing assertions are upper bounds with margins.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use framelink::connection::{self, CloseCode, ConnectionConfig};
use framelink::Event;
use framelink_chaos::{
    ChaosConfig, ChaosEvent, ChaosEvents, ChaosProxy, ChaosStats, Fault, FaultMix, FaultPlan,
    ScheduledFault, Trigger,
};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Generous bound for anything that should take well under a second.
const DEADLINE: Duration = Duration::from_secs(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn start(upstream: SocketAddr, config: ChaosConfig) -> (ChaosProxy, ChaosEvents) {
    let proxy = ChaosProxy::start("127.0.0.1:0", upstream, config)
        .await
        .unwrap();
    let events = proxy.events();
    (proxy, events)
}

fn scheduled(at: Trigger, fault: Fault) -> FaultPlan {
    FaultPlan::Scheduled(vec![ScheduledFault::new(at, fault)])
}

/// Waits for the `Closed` event of connection `conn`, collecting the events before it.
async fn until_closed(events: &mut ChaosEvents, conn: u64) -> Vec<ChaosEvent> {
    let mut seen = Vec::new();
    loop {
        let event = timeout(DEADLINE, events.next())
            .await
            .expect("no Closed event in time")
            .expect("event stream ended");
        let done = matches!(event, ChaosEvent::Closed { conn: c, .. } if c == conn);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// Reads until end of stream, an error, or `quiet` without anything arriving.
async fn read_all(stream: &mut TcpStream, quiet: Duration) -> (Vec<u8>, Result<(), io::Error>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match timeout(quiet, stream.read(&mut buf)).await {
            Err(_) => return (got, Err(io::Error::new(io::ErrorKind::TimedOut, "quiet"))),
            Ok(Ok(0)) => return (got, Ok(())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Err(e)),
        }
    }
}

/// One connection through a proxy with `config`: client and upstream each send `len` random
/// bytes at once, then end their stream; both must receive the other's bytes exactly.
async fn exchange(config: ChaosConfig, len: usize) -> ChaosStats {
    let (upstream, addr) = listener().await;
    let (proxy, mut events) = start(addr, config).await;
    let to_server = random_bytes(len, 1);
    let to_client = random_bytes(len, 2);

    let server = {
        let (expected, mine) = (to_server.clone(), to_client.clone());
        tokio::spawn(async move {
            let (stream, _) = upstream.accept().await.unwrap();
            let (mut rd, mut wr) = stream.into_split();
            let writer = tokio::spawn(async move {
                wr.write_all(&mine).await.unwrap();
                wr.shutdown().await.unwrap();
                wr
            });
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            assert!(got == expected, "upstream got {} bytes, altered", got.len());
            drop(writer.await.unwrap());
        })
    };
    let client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_server).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    timeout(DEADLINE, rd.read_to_end(&mut got))
        .await
        .expect("client: no end of stream in time")
        .unwrap();
    assert!(got == to_client, "client got {} bytes, altered", got.len());
    drop(writer.await.unwrap());
    timeout(DEADLINE, server).await.unwrap().unwrap();
    let seen = until_closed(&mut events, 0).await;
    assert_eq!(
        seen.last(),
        Some(&ChaosEvent::Closed {
            conn: 0,
            to_upstream: len as u64,
            to_downstream: len as u64
        })
    );
    let stats = proxy.stats();
    proxy.shutdown().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_each_way_arrives_unchanged_through_splits_and_delays() {
    let config = ChaosConfig {
        seed: 11,
        split: Some(1..=7),
        delay: Some(Duration::ZERO..=ms(1)),
        ..ChaosConfig::default()
    };
    let len = 1 << 20;
    let stats = exchange(config, len).await;
    assert_eq!(stats.bytes_to_upstream, len as u64);
    assert_eq!(stats.bytes_to_downstream, len as u64);
    // Pieces average 4 bytes: about 2 * 2^20 / 4 of them.
    assert!(
        (400_000..650_000).contains(&stats.pieces),
        "{} pieces",
        stats.pieces
    );
    assert!(stats.writes >= stats.pieces, "{stats:?}");
    assert_eq!((stats.connections, stats.open), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_cuts_the_same_pieces() {
    let config = |seed| ChaosConfig {
        seed,
        split: Some(1..=64),
        delay: Some(Duration::ZERO..=Duration::from_micros(300)),
        coalesce: Some(Duration::from_micros(200)),
        ..ChaosConfig::default()
    };
    let len = 256 * 1024;
    let a = exchange(config(5), len).await;
    let b = exchange(config(5), len).await;
    let c = exchange(config(6), len).await;
    assert_eq!(a.pieces, b.pieces, "{a:?}\n{b:?}");
    assert_ne!(a.pieces, c.pieces, "another seed, other pieces");
    // Pieces average 32.5 bytes.
    assert!((14_000..18_500).contains(&a.pieces), "{} pieces", a.pieces);
}

/// The upstream sends `len` bytes, then waits for the client's end: returns the client's
/// reading (bytes, how it ended) and what the upstream's read saw.
async fn one_way(
    config: ChaosConfig,
    len: usize,
) -> (
    ChaosProxy,
    ChaosEvents,
    Vec<u8>,
    Result<(), io::Error>,
    tokio::task::JoinHandle<io::Result<usize>>,
) {
    let (upstream, addr) = listener().await;
    let (proxy, events) = start(addr, config).await;
    let data = random_bytes(len, 3);
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        // Not before the client's connect() has returned: on loopback the whole exchange,
        // reset included, could otherwise be over before it looks, and connect() would fail.
        ready.await.unwrap();
        // Written into kernel and proxy buffers; may fail once the proxy resets.
        let _ = stream.write_all(&data).await;
        let mut buf = [0u8; 1024];
        timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("upstream: no end in time")
    });
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    go.send(()).unwrap();
    let (got, end) = read_all(&mut client, ms(500)).await;
    (proxy, events, got, end, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_at_a_byte_count_ends_both_streams_exactly_there() {
    let config = ChaosConfig {
        seed: 1,
        split: Some(1..=64),
        faults: scheduled(Trigger::Bytes(100_000), Fault::Fin),
        ..ChaosConfig::default()
    };
    let (proxy, mut events, got, end, server) = one_way(config, 300_000).await;
    end.expect("clean end of stream");
    assert_eq!(got.len(), 100_000);
    assert_eq!(got, random_bytes(300_000, 3)[..100_000]);
    // The upstream got a FIN too.
    assert_eq!(
        timeout(DEADLINE, server).await.unwrap().unwrap().unwrap(),
        0
    );
    let seen = until_closed(&mut events, 0).await;
    assert!(
        matches!(seen[0], ChaosEvent::Accepted { conn: 0, .. }),
        "{seen:?}"
    );
    assert!(
        matches!(
            seen[1],
            ChaosEvent::Fault {
                conn: 0,
                fault: Fault::Fin,
                after_bytes: 100_000,
                ..
            }
        ),
        "{seen:?}"
    );
    assert_eq!(
        seen[2],
        ChaosEvent::Closed {
            conn: 0,
            to_upstream: 0,
            to_downstream: 100_000
        }
    );
    let stats = proxy.stats();
    assert_eq!(stats.faults.fin, 1);
    assert_eq!(stats.faults.total(), 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rst_at_a_byte_count_resets_both_sides() {
    let config = ChaosConfig {
        seed: 2,
        faults: scheduled(Trigger::Bytes(100_000), Fault::Rst),
        ..ChaosConfig::default()
    };
    let (proxy, mut events, got, end, server) = one_way(config, 300_000).await;
    let err = end.expect_err("a reset, not an end of stream");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // An RST discards what is still in flight (at most what was written, then). On Linux
    // loopback, with a reader that keeps up, nothing is in flight: the client gets it all.
    assert!(got.len() <= 100_000, "{}", got.len());
    #[cfg(target_os = "linux")]
    assert_eq!(got.len(), 100_000);
    assert_eq!(got, random_bytes(300_000, 3)[..got.len()]);
    let upstream_end = timeout(DEADLINE, server).await.unwrap().unwrap();
    assert_eq!(
        upstream_end.expect_err("upstream reset").kind(),
        io::ErrorKind::ConnectionReset
    );
    let seen = until_closed(&mut events, 0).await;
    assert!(
        matches!(
            seen[1],
            ChaosEvent::Fault {
                fault: Fault::Rst,
                after_bytes: 100_000,
                ..
            }
        ),
        "{seen:?}"
    );
    assert_eq!(proxy.stats().faults.rst, 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_keeps_the_socket_open_and_silent() {
    let config = ChaosConfig {
        seed: 3,
        split: Some(1..=64),
        faults: scheduled(Trigger::Bytes(50_000), Fault::Blackhole),
        ..ChaosConfig::default()
    };
    let (upstream, addr) = listener().await;
    let (proxy, mut events) = start(addr, config).await;
    let data = random_bytes(100_000, 4);
    let server = tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        stream.write_all(&data).await.unwrap();
        // The client's bytes never arrive.
        let mut buf = [0u8; 1024];
        let quiet = timeout(ms(700), stream.read(&mut buf)).await;
        assert!(quiet.is_err(), "upstream read {quiet:?}");
        stream
    });
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (got, end) = read_all(&mut client, ms(500)).await;
    assert_eq!(
        end.expect_err("silence").kind(),
        io::ErrorKind::TimedOut,
        "no end of stream, no reset"
    );
    assert_eq!(got, random_bytes(100_000, 4)[..50_000]);
    // Writes still succeed; the bytes are swallowed.
    client.write_all(b"anyone there?").await.unwrap();
    let _server_side = timeout(DEADLINE, server).await.unwrap().unwrap();
    assert!(proxy.stats().bytes_discarded > 0, "{:?}", proxy.stats());

    // A blackholed connection can still be cut.
    assert!(proxy.cut(0, Fault::Rst));
    let (_, end) = read_all(&mut client, DEADLINE).await;
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    let seen = until_closed(&mut events, 0).await;
    let faults: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            ChaosEvent::Fault { fault, .. } => Some(*fault),
            _ => None,
        })
        .collect();
    assert_eq!(faults, [Fault::Blackhole, Fault::Rst]);
    assert!(!proxy.cut(0, Fault::Rst), "connection 0 is gone");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_holds_the_bytes_then_delivers_them_all() {
    let config = ChaosConfig {
        seed: 4,
        faults: scheduled(Trigger::Bytes(1000), Fault::Stall(Some(ms(300)))),
        ..ChaosConfig::default()
    };
    let (upstream, addr) = listener().await;
    let (proxy, mut events) = start(addr, config).await;
    let data = random_bytes(5000, 5);
    tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        stream.write_all(&data).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut first = vec![0u8; 1000];
    timeout(DEADLINE, client.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    timeout(DEADLINE, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let waited = t0.elapsed();
    assert!(waited >= ms(250), "stalled only {waited:?}");
    first.extend_from_slice(&rest);
    assert_eq!(first, random_bytes(5000, 5));
    drop(client);
    let seen = until_closed(&mut events, 0).await;
    assert!(seen.contains(&ChaosEvent::Resumed { conn: 0 }), "{seen:?}");
    proxy.shutdown().await;
}

/// Faults of a random plan over `conns` connections one after the other, each carrying a byte
/// from the client, then up to 120 KB from the upstream: (connection, fault, bytes forwarded
/// before it).
async fn random_faults(seed: u64, conns: u64) -> Vec<(u64, Fault, u64)> {
    let config = ChaosConfig {
        seed,
        split: Some(1..=512),
        faults: FaultPlan::Random {
            every: Trigger::Bytes(20_000),
            faults: FaultMix::new([(Fault::Fin, 1), (Fault::Rst, 1)]),
        },
        ..ChaosConfig::default()
    };
    let (upstream, addr) = listener().await;
    let (proxy, mut events) = start(addr, config).await;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // Not before the client says go (see `one_way`).
                let mut go = [0u8; 1];
                if stream.read_exact(&mut go).await.is_err() {
                    return;
                }
                let _ = stream.write_all(&random_bytes(120_000, 6)).await;
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
    let mut faults = Vec::new();
    for conn in 0..conns {
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        client.write_all(b"g").await.unwrap();
        let (_, end) = read_all(&mut client, DEADLINE).await;
        assert_ne!(
            end.as_ref().map_err(|e| e.kind()),
            Err(io::ErrorKind::TimedOut)
        );
        drop(client);
        for event in until_closed(&mut events, conn).await {
            if let ChaosEvent::Fault {
                conn,
                fault,
                after_bytes,
                ..
            } = event
            {
                faults.push((conn, fault, after_bytes));
            }
        }
    }
    proxy.shutdown().await;
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_replay_from_the_seed() {
    let a = random_faults(99, 6).await;
    let b = random_faults(99, 6).await;
    assert_eq!(a, b);
    assert_eq!(a.len(), 6, "one cut per connection: {a:?}");
    assert!(
        a.iter().all(|&(_, _, at)| (1..=40_000).contains(&at)),
        "{a:?}"
    );
    assert!(a.iter().any(|&(_, f, _)| f == Fault::Fin), "{a:?}");
    assert!(a.iter().any(|&(_, f, _)| f == Fault::Rst), "{a:?}");
    assert_ne!(a, random_faults(100, 6).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesce_glues_small_writes() {
    let config = ChaosConfig {
        coalesce: Some(ms(150)),
        ..ChaosConfig::default()
    };
    let (upstream, addr) = listener().await;
    let (proxy, _events) = start(addr, config).await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let mut reads = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await.unwrap() {
                0 => return reads,
                n => reads.push(buf[..n].to_vec()),
            }
        }
    });
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    for i in 0..10u8 {
        client.write_all(&[i; 10]).await.unwrap();
        tokio::time::sleep(ms(2)).await;
    }
    client.shutdown().await.unwrap();
    let reads = timeout(DEADLINE, server).await.unwrap().unwrap();
    let all: Vec<u8> = reads.concat();
    assert_eq!(all, (0..10u8).flat_map(|i| [i; 10]).collect::<Vec<_>>());
    assert!(reads.len() <= 2, "{} reads", reads.len());
    assert!(proxy.stats().writes <= 2, "{:?}", proxy.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_disconnects_the_client() {
    let (closed, addr) = listener().await;
    drop(closed);
    let (proxy, mut events) = start(addr, ChaosConfig::default()).await;
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (got, _) = read_all(&mut client, DEADLINE).await;
    assert!(got.is_empty());
    let seen = until_closed(&mut events, 0).await;
    assert!(
        matches!(seen[1], ChaosEvent::UpstreamFailed { conn: 0, .. }),
        "{seen:?}"
    );
    assert_eq!(proxy.stats().upstream_failures, 1);
    let local = proxy.local_addr();
    proxy.shutdown().await;
    // The listening socket is closed.
    assert!(TcpStream::connect(local).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framelink_connection_through_a_blackhole_is_declared_dead() {
    let config = |interval, timeout| ConnectionConfig {
        ping_interval: Some(ms(interval)),
        ping_timeout: ms(timeout),
        handshake_timeout: Duration::from_secs(10),
        linger: Duration::from_secs(1),
        ..ConnectionConfig::default()
    };
    let (upstream, addr) = listener().await;
    let (proxy, mut events) = start(
        addr,
        ChaosConfig {
            seed: 8,
            split: Some(1..=16),
            ..ChaosConfig::default()
        },
    )
    .await;
    let (client, server) = tokio::join!(TcpStream::connect(proxy.local_addr()), upstream.accept());
    let client = connection::spawn(client.unwrap(), config(100, 200)).unwrap();
    let server = connection::spawn(server.unwrap().0, config(100, 200)).unwrap();
    let (ctx, mut crx) = client.split();
    let (stx, mut srx) = server.split();
    for rx in [&mut crx, &mut srx] {
        match timeout(DEADLINE, rx.next_event()).await.unwrap() {
            Some(Event::Connected { .. }) => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
    ctx.send(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, srx.recv()).await.unwrap().unwrap(),
        "hello"
    );
    stx.send(Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, crx.recv()).await.unwrap().unwrap(),
        "world"
    );
    // Heartbeats keep it open across several intervals.
    tokio::time::sleep(ms(400)).await;
    assert!(!ctx.is_closed());

    assert_eq!(proxy.cut_all(Fault::Blackhole), 1);
    let t0 = Instant::now();
    let info = loop {
        match timeout(DEADLINE, crx.next_event()).await.unwrap() {
            Some(Event::Closed(info)) => break info,
            Some(Event::Message(m)) => panic!("unexpected message {m:?}"),
            Some(_) => {}
            None => panic!("no Closed event"),
        }
    };
    let elapsed = t0.elapsed();
    assert_eq!(info.code, CloseCode::PeerTimedOut, "{info:?}");
    // interval + timeout = 300 ms; allow for a loaded machine.
    assert!(elapsed < ms(1500), "declared dead after {elapsed:?}");
    // Both ends give up and close: the proxy's connection ends.
    let seen = until_closed(&mut events, 0).await;
    assert!(
        seen.iter().any(|e| matches!(
            e,
            ChaosEvent::Fault {
                fault: Fault::Blackhole,
                ..
            }
        )),
        "{seen:?}"
    );
    proxy.shutdown().await;
}

/// What a tap was shown.
#[derive(Default)]
struct Seen {
    up: Vec<u8>,
    down: Vec<u8>,
    closed: Vec<u64>,
    writes: usize,
}

/// Records what a tap is shown.
#[derive(Default)]
struct Recorder {
    seen: std::sync::Mutex<Seen>,
}

impl framelink_chaos::ChaosTap for Recorder {
    fn forwarded(&self, conn: u64, to_upstream: bool, bytes: &[u8]) {
        assert_eq!(conn, 0);
        let mut seen = self.seen.lock().unwrap();
        if to_upstream {
            seen.up.extend_from_slice(bytes);
        } else {
            seen.down.extend_from_slice(bytes);
        }
        seen.writes += 1;
    }

    fn closed(&self, conn: u64) {
        self.seen.lock().unwrap().closed.push(conn);
    }
}

#[tokio::test]
async fn a_tap_sees_every_forwarded_byte_in_order_then_the_close() {
    let (upstream, addr) = listener().await;
    let recorder = std::sync::Arc::new(Recorder::default());
    let config = ChaosConfig {
        seed: 3,
        split: Some(1..=7),
        ..ChaosConfig::default()
    };
    let proxy = ChaosProxy::start_with_tap("127.0.0.1:0", addr, config, recorder.clone())
        .await
        .unwrap();
    let mut events = proxy.events();
    let up = random_bytes(5000, 1);
    let down = random_bytes(3000, 2);
    let server = {
        let down = down.clone();
        tokio::spawn(async move {
            let (mut stream, _) = upstream.accept().await.unwrap();
            stream.write_all(&down).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        })
    };
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    client.write_all(&up).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(DEADLINE, client.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == down);
    assert!(timeout(DEADLINE, server).await.unwrap().unwrap() == up);
    until_closed(&mut events, 0).await;
    let seen = std::mem::take(&mut *recorder.seen.lock().unwrap());
    assert!(seen.up == up, "tap saw {} bytes up", seen.up.len());
    assert!(seen.down == down, "tap saw {} bytes down", seen.down.len());
    assert_eq!(seen.closed, [0]);
    // Split into pieces of at most 7 bytes: each write is shown on its own.
    assert!(seen.writes >= 8000 / 7, "{} writes shown", seen.writes);
    proxy.shutdown().await;
}
