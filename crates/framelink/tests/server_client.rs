//! `Server` and reconnecting `Client` over real loopback TCP: echo, dead-peer detection through
//! the chaos proxy blackholing the link followed by a reconnect, a closed server noticed at
//! once, eviction of silent and idle clients, the connection limit, graceful shutdown, backoff
//! bounds, the `Sink`/`Stream` interface and raw mode against a server that drops idle
//! connections.
//! Timing assertions are upper bounds with generous margins (and lower bounds only where the
//! protocol guarantees them).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use framelink::connection::{self, CloseCode, ConnectionConfig, ConnectionError};
use framelink::{
    BackoffConfig, Client, ClientConfig, ClientEvent, Event, FrameMatcher, Framing, Jitter,
    Protocol, RawConfig, Server, ServerConfig,
};
use framelink_chaos::{ChaosConfig, ChaosProxy, Fault};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use common::{
    client_connected, disconnected, echo_server, live_connections, ms, next, secs, until, DEADLINE,
    MARGIN,
};

fn heartbeat(interval_ms: u64, timeout_ms: u64) -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Some(ms(interval_ms)),
        ping_timeout: ms(timeout_ms),
        handshake_timeout: secs(5),
        linger: secs(1),
        ..ConnectionConfig::default()
    }
}

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: ms(20),
        max: ms(200),
        ..BackoffConfig::default()
    }
}

fn client_config(protocol: Protocol) -> ClientConfig {
    ClientConfig {
        protocol,
        backoff: fast_backoff(),
        connect_timeout: secs(5),
        ..ClientConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_echo() {
    let (addr, handle) = echo_server(ServerConfig::default()).await;
    let mut client = Client::connect(addr.to_string(), ClientConfig::default()).unwrap();
    for i in 0..500 {
        client.send(Bytes::from(format!("m{i}"))).await.unwrap();
    }
    assert_eq!(client_connected(&mut client).await, 1);
    for i in 0..500 {
        let m = timeout(DEADLINE, client.recv()).await.unwrap().unwrap();
        assert_eq!(m, format!("m{i}"));
    }
    assert_eq!(handle.connections(), 1);
    // Send from another task while this one reads; then stop and read to the end.
    let sender = client.sender();
    tokio::spawn(async move { sender.send(Bytes::from_static(b"last")).await.unwrap() });
    assert_eq!(
        timeout(DEADLINE, client.recv()).await.unwrap().unwrap(),
        "last"
    );
    client.stop();
    let info = disconnected(&mut client).await;
    assert!(!info.by_peer);
    assert!(matches!(next(&mut client).await, ClientEvent::Closed));
    assert!(client.next_event().await.is_none());
    assert!(!client.is_connected());
    live_connections(&handle, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_link_is_declared_dead_in_bound_and_client_reconnects() {
    let (interval, ping_timeout) = (300u64, 300u64);
    let (server_addr, handle) = echo_server(ServerConfig {
        // The server's own check is slower: the client must be the one to notice.
        protocol: Protocol::Framelink(heartbeat(1_000, 5_000)),
        ..ServerConfig::default()
    })
    .await;
    // The library's chaos proxy, forwarding faithfully until told to blackhole: bytes are then
    // dropped both ways and the sockets stay open (a vanished peer sends no FIN).
    let proxy = ChaosProxy::start("127.0.0.1:0", server_addr, ChaosConfig::default())
        .await
        .unwrap();
    let mut client = Client::connect(
        proxy.local_addr().to_string(),
        client_config(Protocol::Framelink(heartbeat(interval, ping_timeout))),
    )
    .unwrap();
    assert_eq!(client_connected(&mut client).await, 1);
    client.send(Bytes::from_static(b"before")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, client.recv()).await.unwrap().unwrap(),
        "before"
    );

    let mut latencies = Vec::new();
    for _cut in 0..3 {
        assert_eq!(proxy.cut_all(Fault::Blackhole), 1);
        let t0 = Instant::now();
        let info = disconnected(&mut client).await;
        let detected = t0.elapsed();
        assert_eq!(info.code, CloseCode::PeerTimedOut, "{info}");
        assert!(
            matches!(info.error, Some(ConnectionError::PeerDead { .. })),
            "{info:?}"
        );
        let bound = ms(interval + ping_timeout);
        assert!(detected < bound + MARGIN, "detected after {detected:?}");
        latencies.push(detected);
        // It reconnects (through the proxy, on a fresh connection) and traffic flows again.
        client_connected(&mut client).await;
        client.send(Bytes::from_static(b"after")).await.unwrap();
        assert_eq!(
            timeout(DEADLINE, client.recv()).await.unwrap().unwrap(),
            "after"
        );
    }
    eprintln!(
        "dead-peer detection with interval {interval} ms + timeout {ping_timeout} ms: {latencies:?}"
    );
    assert_eq!(proxy.stats().connections, 4);
    // The server eventually drops the blackholed connections too (its own, slower check).
    live_connections(&handle, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_noticed_at_once() {
    let (addr, handle) = echo_server(ServerConfig::default()).await;
    // Slow heartbeats: only the socket close can explain a quick disconnect.
    let mut client = Client::connect(
        addr.to_string(),
        client_config(Protocol::Framelink(heartbeat(30_000, 30_000))),
    )
    .unwrap();
    client_connected(&mut client).await;
    let t0 = Instant::now();
    let report = handle.shutdown(secs(5)).await;
    assert_eq!((report.open, report.closed, report.aborted), (1, 1, 0));
    let info = disconnected(&mut client).await;
    assert!(t0.elapsed() < MARGIN, "noticed after {:?}", t0.elapsed());
    assert_eq!(info.code, CloseCode::GoingAway);
    assert!(info.by_peer);
    assert_eq!(info.reason, "server shutting down");
    // Nothing listens any more: the client keeps trying, with backoff.
    let attempt = until(&mut client, |e| match e {
        ClientEvent::ConnectFailed { attempt, .. } => Some(*attempt),
        _ => None,
    })
    .await;
    assert!(attempt >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_evicts_silent_and_idle_clients() {
    let (addr, handle) = echo_server(ServerConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            handshake_timeout: ms(300),
            idle_timeout: Some(ms(800)),
            ..heartbeat(200, 200)
        }),
        ..ServerConfig::default()
    })
    .await;

    // 1. Connects and never says HELLO: handshake timeout.
    let mut mute = TcpStream::connect(addr).await.unwrap();
    live_connections(&handle, 1).await;
    let t0 = Instant::now();
    live_connections(&handle, 0).await;
    assert!(t0.elapsed() < ms(300) + MARGIN);
    let mut rest = Vec::new();
    let _ = timeout(DEADLINE, mute.read_to_end(&mut rest))
        .await
        .unwrap();

    // 2. Completes the handshake (announcing no pings), then freezes: the server's pings go
    //    unanswered and it is evicted within interval + timeout.
    let mut frozen = TcpStream::connect(addr).await.unwrap();
    frozen
        .write_all(&handshake_hello_without_pings())
        .await
        .unwrap();
    live_connections(&handle, 1).await;
    let t0 = Instant::now();
    live_connections(&handle, 0).await;
    assert!(t0.elapsed() < ms(400) + MARGIN, "{:?}", t0.elapsed());
    drop(frozen);

    // 3. Alive (heartbeats answered) but sends nothing: the idle timeout closes it with `Idle`.
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut idle = connection::spawn(stream, heartbeat(100, 500)).unwrap();
    let t0 = Instant::now();
    let info = loop {
        match timeout(DEADLINE, idle.next_event()).await.unwrap() {
            Some(Event::Closed(info)) => break info,
            Some(_) => {}
            None => panic!("no Closed"),
        }
    };
    assert_eq!(info.code, CloseCode::Idle, "{info}");
    assert!(info.by_peer);
    let elapsed = t0.elapsed();
    assert!(elapsed >= ms(800), "{elapsed:?}");
    assert!(elapsed < ms(800) + MARGIN, "{elapsed:?}");
    live_connections(&handle, 0).await;
}

/// A valid HELLO announcing `ping_interval_ms = 0` (we never ping), as raw bytes.
fn handshake_hello_without_pings() -> Vec<u8> {
    use framelink::proto::wire::{Message, WireCodec};
    let hello = ConnectionConfig {
        ping_interval: None,
        ..ConnectionConfig::default()
    }
    .hello();
    let codec = WireCodec::new(1 << 20).unwrap();
    let mut buf = bytes::BytesMut::new();
    codec.encode(&Message::Hello(hello), &mut buf).unwrap();
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_with_server_full() {
    let (addr, handle) = echo_server(ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = connection::spawn(stream, ConnectionConfig::default()).unwrap();
        assert!(matches!(
            timeout(DEADLINE, conn.next_event()).await.unwrap(),
            Some(Event::Connected { .. })
        ));
        kept.push(conn);
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut third = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    let info = loop {
        match timeout(DEADLINE, third.next_event()).await.unwrap() {
            Some(Event::Closed(info)) => break info,
            Some(_) => {}
            None => panic!("no Closed"),
        }
    };
    assert_eq!(info.code, CloseCode::ServerFull, "{info}");
    assert!(info.by_peer);
    assert_eq!(handle.stats().refused, 1);
    // A slot frees up when a connection ends.
    kept.pop()
        .unwrap()
        .close(CloseCode::Normal, "")
        .await
        .unwrap();
    live_connections(&handle, 1).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut fourth = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    assert!(matches!(
        timeout(DEADLINE, fourth.next_event()).await.unwrap(),
        Some(Event::Connected { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_queued_messages_then_closes() {
    let mut server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut client = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    let incoming = server.accept().await.unwrap();
    // The server queues 2000 messages, then shuts down at once.
    for i in 0..2000u32 {
        incoming
            .connection
            .send(Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    let report = timeout(DEADLINE, handle.shutdown(secs(10))).await.unwrap();
    assert_eq!(report.aborted, 0);
    let mut got = 0u32;
    let info = loop {
        match timeout(DEADLINE, client.next_event()).await.unwrap() {
            Some(Event::Message(m)) => {
                assert_eq!(m, &got.to_be_bytes()[..]);
                got += 1;
            }
            Some(Event::Closed(info)) => break info,
            Some(_) => {}
            None => panic!("no Closed"),
        }
    };
    assert_eq!(got, 2000);
    assert_eq!(info.code, CloseCode::GoingAway);
    // The listener is closed and accept() ends.
    assert!(timeout(DEADLINE, server.accept()).await.unwrap().is_none());
    assert!(TcpStream::connect(addr).await.is_err());
}

/// A connection still lingering when the grace period ends is aborted: its handles are still
/// told. The receiver ends, `close` answers, a send is refused; nothing waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_of_a_connection_aborted_at_shutdown_do_not_hang() {
    let mut server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    // A peer that completes the handshake, then neither reads nor answers: the server's
    // CLOSE is never acknowledged, so its connection lingers.
    let mut peer = TcpStream::connect(addr).await.unwrap();
    let mut machine =
        framelink::proto::connection::Connection::new(ConnectionConfig::default(), Instant::now())
            .unwrap();
    while let Some(bytes) =
        framelink::proto::machine::Machine::poll_transmit(&mut machine, Instant::now())
    {
        peer.write_all(&bytes).await.unwrap();
    }
    let incoming = timeout(DEADLINE, server.accept()).await.unwrap().unwrap();
    let (sender, mut receiver) = incoming.connection.split();
    timeout(DEADLINE, async {
        while !matches!(receiver.next_event().await, Some(Event::Connected { .. })) {}
    })
    .await
    .unwrap();
    let report = timeout(DEADLINE, handle.shutdown(ms(200))).await.unwrap();
    assert_eq!(report.aborted, 1, "{report:?}");
    timeout(DEADLINE, async {
        while receiver.next_event().await.is_some() {}
    })
    .await
    .expect("the receiver ends");
    timeout(DEADLINE, sender.close(CloseCode::Normal, "bye"))
        .await
        .expect("close answers");
    let sent = timeout(DEADLINE, sender.send(Bytes::from_static(b"x")))
        .await
        .expect("a send is answered");
    assert!(sent.is_err(), "{sent:?}");
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_backoff_follows_the_configured_bounds() {
    // A port with nothing listening: every attempt is refused at once.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let backoff = BackoffConfig {
        initial: ms(20),
        max: ms(120),
        multiplier: 2.0,
        max_attempts: Some(7),
        jitter: Jitter::Full,
    };
    let t0 = Instant::now();
    let mut client = Client::connect(
        addr.to_string(),
        ClientConfig {
            backoff: backoff.clone(),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut failed = Vec::new();
    let mut delays = Vec::new();
    let gave_up = loop {
        match next(&mut client).await {
            ClientEvent::ConnectFailed { attempt, .. } => {
                // No attempt started before the delays announced so far were over. Measured
                // from before `connect` (not from when this task saw the event, which a busy
                // machine can deliver late), so the bound holds however late events arrive.
                let announced: Duration = delays.iter().map(|(_, d)| *d).sum();
                let elapsed = t0.elapsed();
                assert!(
                    elapsed + ms(1) >= announced,
                    "attempt {attempt} after {elapsed:?} < {announced:?}"
                );
                failed.push(attempt);
            }
            ClientEvent::Reconnecting { attempt, delay } => {
                // Full jitter: uniform in [0, min(max, initial * 2^(attempt - 2))].
                let exp = attempt.saturating_sub(2).min(20);
                let ceiling = (backoff.initial * 2u32.pow(exp)).min(backoff.max);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
                delays.push((attempt, delay));
            }
            ClientEvent::GaveUp { attempts, .. } => break attempts,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(failed, (1..=7).collect::<Vec<_>>());
    assert_eq!(gave_up, 7);
    assert_eq!(delays.len(), 6);
    let total: Duration = delays.iter().map(|(_, d)| *d).sum();
    assert!(t0.elapsed() >= total);
    assert!(client.next_event().await.is_none());
    assert!(matches!(
        client.send(Bytes::from_static(b"x")).await,
        Err(framelink::connection::SendError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_is_a_sink_and_a_stream() {
    let (addr, _handle) = echo_server(ServerConfig::default()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let conn = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    let (mut sink, events) = conn.split();
    let messages: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("s{i}"))).collect();
    let mut source = futures::stream::iter(messages.clone().into_iter().map(Ok));
    let writer = tokio::spawn(async move {
        sink.send_all(&mut source).await.unwrap();
        sink
    });
    let got: Vec<Bytes> = timeout(DEADLINE, events.into_messages().take(300).collect())
        .await
        .unwrap();
    assert_eq!(got, messages);
    let mut sink = writer.await.unwrap();
    // Closing the sink closes the connection gracefully.
    timeout(DEADLINE, SinkExt::close(&mut sink))
        .await
        .unwrap()
        .unwrap();
    assert!(sink.is_closed());
}

/// A line-based server that answers `PING` with `PONG`, echoes other lines, and closes any
/// connection from which nothing arrived for `idle`.
async fn idle_closing_line_server(idle: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Ok(Some(line))) = timeout(idle, lines.next_line()).await {
                    let reply = if line == "PING" { "PONG".into() } else { line };
                    if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                // Idle (or done): close.
            });
        }
    });
    addr
}

fn raw_lines(ping: Option<&'static [u8]>) -> RawConfig {
    let framing: Framing = "lines".parse().unwrap();
    RawConfig {
        ping_interval: Some(ms(150)),
        ping_timeout: ms(1_000),
        ping: ping.map(Bytes::from_static),
        pong: FrameMatcher::Exact(Bytes::from_static(b"PONG")),
        ..RawConfig::new(framing)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_keeps_a_connection_to_an_idle_closing_server_alive() {
    let addr = idle_closing_line_server(ms(500)).await;

    let mut client = Client::connect(
        addr.to_string(),
        client_config(Protocol::Raw(Box::new(raw_lines(Some(b"PING"))))),
    )
    .unwrap();
    assert_eq!(client_connected(&mut client).await, 1);
    // Four times the server's idle limit, with nothing but our pings on the wire.
    let quiet_until = Instant::now() + secs(2);
    let mut rtts = 0;
    while Instant::now() < quiet_until {
        match timeout(quiet_until - Instant::now(), client.next_event()).await {
            Err(_) => break,
            Ok(Some(ClientEvent::Rtt(_))) => rtts += 1,
            Ok(Some(ClientEvent::Message(m))) => panic!("pong leaked as a message: {m:?}"),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(rtts >= 5, "only {rtts} RTT samples");
    client.send(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, client.recv()).await.unwrap().unwrap(),
        "hello"
    );

    // Control: without a ping the server drops the connection for idleness.
    let mut quiet = Client::connect(
        addr.to_string(),
        client_config(Protocol::Raw(Box::new(RawConfig {
            ping_interval: None,
            ..raw_lines(None)
        }))),
    )
    .unwrap();
    client_connected(&mut quiet).await;
    let info = disconnected(&mut quiet).await;
    assert!(info.by_peer, "{info}");
    assert!(matches!(
        info.error,
        Some(ConnectionError::EndOfStream { .. })
    ));
}

/// A raw peer that takes the connection, never reads, and resets it once `after` has passed:
/// what the client had queued but not written by then must come back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_never_written_when_the_link_dies_are_handed_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(ms(500)).await;
        // Unread data in the receive buffer: closing sends a reset.
        drop(socket);
        drop(listener);
    });
    let config = ClientConfig {
        backoff: BackoffConfig {
            max_attempts: Some(1),
            ..fast_backoff()
        },
        ..client_config(Protocol::Raw(Box::new(RawConfig {
            ping_interval: None,
            ..raw_lines(None)
        })))
    };
    let mut client = Client::connect(addr.to_string(), config).unwrap();
    client_connected(&mut client).await;
    // Far more than the socket buffers hold: the rest waits in the connection's queue.
    let sender = client.sender();
    let total = 4_000u32;
    let pusher = tokio::spawn(async move {
        let line = |i: u32| Bytes::from(format!("{i:08}{}", "x".repeat(16 * 1024)));
        let mut accepted = 0;
        for i in 0..total {
            match timeout(secs(20), sender.send(line(i))).await {
                Ok(Ok(())) => accepted += 1,
                _ => break,
            }
        }
        accepted
    });
    let info = disconnected(&mut client).await;
    assert!(info.raw, "{info:?}");
    assert!(info.by_peer, "{info:?}");
    let text = info.to_string();
    assert!(
        !text.contains("GoingAway") && !text.contains("CLOSE code"),
        "{text}"
    );
    let unsent = until(&mut client, |e| match e {
        ClientEvent::Unsent { messages } => Some(messages.clone()),
        _ => None,
    })
    .await;
    let accepted = pusher.await.unwrap();
    assert!(!unsent.is_empty() && unsent.len() as u32 <= accepted);
    // The messages accepted last, in order: the unsent ones are a suffix of what was queued.
    let first: u32 = std::str::from_utf8(&unsent[0][..8])
        .unwrap()
        .parse()
        .unwrap();
    for (k, m) in unsent.iter().enumerate() {
        let n: u32 = std::str::from_utf8(&m[..8]).unwrap().parse().unwrap();
        assert_eq!(n, first + k as u32);
    }
    assert_eq!(
        first + unsent.len() as u32,
        accepted,
        "{first} + {}",
        unsent.len()
    );
    // One attempt, which connected: the give-up says so.
    let (attempts, connected) = until(&mut client, |e| match e {
        ClientEvent::GaveUp {
            attempts,
            connected,
        } => Some((*attempts, *connected)),
        _ => None,
    })
    .await;
    assert_eq!((attempts, connected), (1, 1));
}

/// A client whose application reads no events keeps reconnecting however many attempts fail
/// (their notices are left out once its event queue is full), and connects once the server is
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_events_keeps_reconnecting() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = ClientConfig {
        backoff: BackoffConfig {
            initial: ms(1),
            max: ms(2),
            ..BackoffConfig::default()
        },
        ..ClientConfig::default()
    };
    let client = Client::connect(addr.to_string(), config).unwrap();
    // Refused at once each time: far more failed attempts than the event queue's 256 slots.
    tokio::time::sleep(secs(2)).await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = connection::spawn(stream, ConnectionConfig::default()).unwrap();
        conn.recv().await
    });
    timeout(DEADLINE, client.send(Bytes::from_static(b"finally")))
        .await
        .expect("the client connected")
        .unwrap();
    let got = timeout(DEADLINE, server).await.unwrap().unwrap();
    assert_eq!(got.as_deref(), Some(&b"finally"[..]));
    client.stop();
}

/// A client whose application reads nothing holds a bounded backlog: the connection's queue,
/// the client's event queue (1 MiB of events) and the socket buffers; then TCP flow control
/// stops the server. (With the queue bounded only by its 256 entries, the 64 KiB messages of
/// this test would pile up to 16 MiB.) Once the application reads, every message arrives, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_holds_a_bounded_backlog() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const PAYLOAD: usize = 64 * 1024;
    const FRAMES: u32 = 400;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU32::new(0));
    let server = tokio::spawn({
        let written = written.clone();
        async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket2::SockRef::from(&socket)
                .set_send_buffer_size(PAYLOAD)
                .unwrap();
            let mut frame = vec![b'x'; 4 + PAYLOAD];
            frame[..4].copy_from_slice(&(PAYLOAD as u32).to_be_bytes());
            for i in 0..FRAMES {
                frame[4..8].copy_from_slice(&i.to_be_bytes());
                socket.write_all(&frame).await.unwrap();
                written.store(i + 1, Ordering::Relaxed);
            }
            socket
        }
    });
    let mut config = client_config(Protocol::Raw(Box::new(RawConfig {
        ping_interval: None,
        ..RawConfig::new("length:4".parse().unwrap())
    })));
    config.socket.recv_buffer = Some(PAYLOAD);
    let mut client = Client::connect(addr.to_string(), config).unwrap();
    client_connected(&mut client).await;
    // The application reads nothing for a while: the server gets as far as flow control lets it.
    tokio::time::sleep(secs(2)).await;
    let held = written.load(Ordering::Relaxed);
    // 1 MiB of queued events is 16 of these messages; the rest is the connection's own queue,
    // one batch in hand and the socket buffers, a few messages each.
    assert!(
        held < 64,
        "{held} messages of 64 KiB written to a client that reads nothing"
    );
    let mut next_expected = 0u32;
    while next_expected < FRAMES {
        match next(&mut client).await {
            ClientEvent::Message(m) => {
                assert_eq!(m.len(), PAYLOAD);
                assert_eq!(
                    u32::from_be_bytes(m[..4].try_into().unwrap()),
                    next_expected
                );
                next_expected += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    timeout(DEADLINE, server).await.unwrap().unwrap();
}
