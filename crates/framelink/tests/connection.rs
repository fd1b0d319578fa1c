//! The tokio connection driver over real loopback TCP: handshake, echo, dead-peer detection
//! through the chaos proxy blackholing the link, abrupt socket close, graceful close from either side, RTT
//! samples, send budget. Timing assertions are upper bounds with generous margins.

mod common;

use framelink::proto::machine::Machine;
use std::time::Instant;

use bytes::Bytes;
use framelink::connection::{self, CloseCode, ConnectionConfig, ConnectionError, SendError};
use framelink::Event;
use framelink_chaos::{ChaosConfig, ChaosProxy, Fault};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use common::{closed, connected, event, ms, pair, secs, DEADLINE, MARGIN};

fn config(interval_ms: u64, timeout_ms: u64) -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Some(ms(interval_ms)),
        ping_timeout: ms(timeout_ms),
        handshake_timeout: secs(10),
        linger: secs(2),
        ..ConnectionConfig::default()
    }
}

fn msg(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!("{tag}-{i:05}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_echo_1000_both_directions() {
    let (a, b) = pair().await;
    let client = connection::spawn(a, config(300, 300)).unwrap();
    let mut server_cfg = config(250, 300);
    server_cfg.max_message_len = 65_536;
    let server = connection::spawn(b, server_cfg).unwrap();
    let (ctx, mut crx) = client.split();
    let (stx, mut srx) = server.split();

    let peer = connected(&mut crx).await;
    assert_eq!(peer.ping_interval, ms(250));
    assert_eq!(peer.max_message_len, 65_536);
    assert_eq!(connected(&mut srx).await.ping_interval, ms(300));

    const N: usize = 1000;
    // Server: echo every client message, and send its own N messages, interleaved.
    let server_task = tokio::spawn(async move {
        for i in 0..N {
            stx.send(msg("s", i)).await.unwrap();
            let m = timeout(DEADLINE, srx.recv()).await.unwrap().unwrap();
            stx.send(m).await.unwrap();
        }
        (stx, srx)
    });
    let send_task = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            for i in 0..N {
                ctx.send(msg("c", i)).await.unwrap();
            }
        })
    };
    let (mut echoed, mut own) = (0, 0);
    while echoed < N || own < N {
        let m = timeout(DEADLINE, crx.recv()).await.unwrap().unwrap();
        if m.starts_with(b"c-") {
            assert_eq!(m, msg("c", echoed));
            echoed += 1;
        } else {
            assert_eq!(m, msg("s", own));
            own += 1;
        }
    }
    send_task.await.unwrap();
    let (_stx, mut srx) = server_task.await.unwrap();

    let info = timeout(DEADLINE, ctx.close(CloseCode::Normal, "bye"))
        .await
        .unwrap()
        .unwrap();
    assert!(!info.by_peer);
    let info = closed(&mut srx).await;
    assert!(info.by_peer);
    assert_eq!(info.code, CloseCode::Normal);
    assert_eq!(info.reason, "bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_declared_dead() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    // Forwards faithfully until told to blackhole: bytes are then dropped both ways and the
    // sockets stay open.
    let proxy = ChaosProxy::start("127.0.0.1:0", server_addr, ChaosConfig::default())
        .await
        .unwrap();

    let (client, server) = tokio::join!(TcpStream::connect(proxy.local_addr()), listener.accept());
    let (interval, ping_timeout) = (ms(200), ms(200));
    let client = connection::spawn(client.unwrap(), config(200, 200)).unwrap();
    // The server keeps its own connection alive; it only pings rarely.
    let server = connection::spawn(server.unwrap().0, config(150, 5_000)).unwrap();
    let (ctx, mut crx) = client.split();
    let (stx, mut srx) = server.split();
    connected(&mut crx).await;
    connected(&mut srx).await;

    // Traffic flows, and keep-alive holds a quiet connection open for several intervals.
    ctx.send(Bytes::from_static(b"ping?")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, srx.recv()).await.unwrap().unwrap(),
        "ping?"
    );
    stx.send(Bytes::from_static(b"pong!")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, crx.recv()).await.unwrap().unwrap(),
        "pong!"
    );
    tokio::time::sleep(interval * 4).await;
    assert!(
        !ctx.is_closed(),
        "healthy connection closed: {:?}",
        crx.close_info()
    );

    assert_eq!(proxy.cut_all(Fault::Blackhole), 1);
    let t0 = Instant::now();
    let info = closed(&mut crx).await;
    let elapsed = t0.elapsed();
    assert_eq!(info.code, CloseCode::PeerTimedOut);
    assert!(!info.by_peer);
    assert!(
        matches!(info.error, Some(ConnectionError::PeerDead { .. })),
        "{info:?}"
    );
    // Our own check (interval + timeout) or the passive one (peer interval x 1.5), whichever
    // comes first.
    assert!(
        elapsed < interval + ping_timeout + MARGIN,
        "took {elapsed:?}"
    );
    assert!(matches!(
        ctx.send(Bytes::from_static(b"late")).await,
        Err(SendError::Closed)
    ));
    // The driver gives up on the dead socket (nothing to wait for but the linger).
    timeout(DEADLINE, ctx.close(CloseCode::Normal, ""))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_socket_is_noticed_at_once() {
    let (a, mut b) = pair().await;
    // Long keep-alive: only the end of stream can explain a quick Closed.
    let client = connection::spawn(a, config(10_000, 10_000)).unwrap();
    let (_ctx, mut crx) = client.split();
    // A bare-bones peer: a protocol HELLO, then it reads a little and drops the socket.
    let mut peer = framelink::proto::connection::Connection::new(
        config(10_000, 10_000),
        std::time::Instant::now(),
    )
    .unwrap();
    let hello = peer.poll_transmit(std::time::Instant::now()).unwrap();
    b.write_all(&hello).await.unwrap();
    connected(&mut crx).await;
    let mut buf = [0u8; 64];
    let _ = timeout(DEADLINE, b.read(&mut buf)).await.unwrap().unwrap();
    let t0 = Instant::now();
    drop(b);
    let info = closed(&mut crx).await;
    let elapsed = t0.elapsed();
    assert!(info.by_peer);
    assert_eq!(info.code, CloseCode::GoingAway);
    assert!(
        matches!(
            info.error,
            Some(ConnectionError::EndOfStream { mid_message: false })
        ),
        "{info:?}"
    );
    assert!(elapsed < MARGIN, "took {elapsed:?}");
    assert!(timeout(DEADLINE, crx.next_event()).await.unwrap().is_none());
}

/// `closer` sends `n` messages then closes; the other side must get them all, then `Closed`.
async fn graceful_close(closer_is_client: bool) {
    let (a, b) = pair().await;
    let client = connection::spawn(a, config(300, 300)).unwrap();
    let server = connection::spawn(b, config(300, 300)).unwrap();
    let (closer, other) = if closer_is_client {
        (client, server)
    } else {
        (server, client)
    };
    let (tx, mut rx_closer) = closer.split();
    let (_other_tx, mut rx) = other.split();
    const N: usize = 2000;
    for i in 0..N {
        // Large and small payloads; nothing is awaited on the other side yet.
        let payload = if i % 100 == 0 {
            Bytes::from(vec![i as u8; 10_000])
        } else {
            msg("m", i)
        };
        tx.send(payload).await.unwrap();
    }
    // close() runs while the receiver drains: it must not wait on our reading.
    let close = tokio::spawn(async move { tx.close(CloseCode::Application(0x1234), "done").await });
    connected(&mut rx).await;
    for i in 0..N {
        let m = timeout(DEADLINE, rx.next_event()).await.unwrap();
        let expected = if i % 100 == 0 {
            Bytes::from(vec![i as u8; 10_000])
        } else {
            msg("m", i)
        };
        match m {
            Some(Event::Message(m)) => assert!(m == expected, "message {i} differs"),
            other => panic!("message {i}: got {:?}", other.map(|e| format!("{e:.80?}"))),
        }
    }
    let info = closed(&mut rx).await;
    assert!(info.by_peer);
    assert_eq!(info.code, CloseCode::Application(0x1234));
    assert_eq!(info.reason, "done");
    assert!(info.error.is_none());
    let mine = timeout(DEADLINE, close).await.unwrap().unwrap().unwrap();
    assert!(!mine.by_peer);
    assert_eq!(mine.code, CloseCode::Application(0x1234));
    // The closer's receiver ends with its own Closed.
    connected(&mut rx_closer).await;
    assert_eq!(closed(&mut rx_closer).await, mine);
    assert!(timeout(DEADLINE, rx.next_event()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_from_client_delivers_everything() {
    graceful_close(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_close_from_server_delivers_everything() {
    graceful_close(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_all_handles_closes_gracefully() {
    let (a, b) = pair().await;
    let client = connection::spawn(a, config(300, 300)).unwrap();
    let server = connection::spawn(b, config(300, 300)).unwrap();
    for i in 0..100 {
        client.send(msg("d", i)).await.unwrap();
    }
    drop(client);
    let mut rx = server.split().1;
    connected(&mut rx).await;
    let messages: Vec<Bytes> = timeout(DEADLINE, rx.into_messages().collect())
        .await
        .unwrap();
    assert_eq!(messages, (0..100).map(|i| msg("d", i)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_samples_on_a_quiet_connection() {
    let (a, b) = pair().await;
    let client = connection::spawn(a, config(100, 300)).unwrap();
    let server = connection::spawn(b, config(100, 300)).unwrap();
    let (_ctx, mut crx) = client.split();
    let (_stx, mut srx) = server.split();
    connected(&mut crx).await;
    connected(&mut srx).await;
    for rx in [&mut crx, &mut srx] {
        let t0 = Instant::now();
        let rtt = loop {
            match event(rx).await {
                Some(Event::Rtt(rtt)) => break rtt,
                Some(Event::Closed(info)) => panic!("closed: {info:?}"),
                _ => {}
            }
        };
        assert!(rtt.latest < MARGIN, "rtt {rtt:?}");
        assert!(t0.elapsed() < ms(100) + MARGIN);
        // The estimate comes with the sample (RFC 6298's first step for the first one).
        assert_eq!(rtt.samples, 1, "{rtt:?}");
        assert_eq!((rtt.smoothed, rtt.min), (rtt.latest, rtt.latest));
    }
    // Later samples move the smoothed estimate and count up.
    let rtt = loop {
        match event(&mut crx).await {
            Some(Event::Rtt(rtt)) => break rtt,
            Some(Event::Closed(info)) => panic!("closed: {info:?}"),
            _ => {}
        }
    };
    assert_eq!(rtt.samples, 2, "{rtt:?}");
    assert!(rtt.min <= rtt.latest && rtt.min <= rtt.smoothed, "{rtt:?}");
    // Still open after many intervals of silence.
    tokio::time::sleep(ms(800)).await;
    assert!(crx.close_info().is_none() && srx.close_info().is_none());
}

#[tokio::test]
async fn send_budget_is_enforced() {
    let (a, b) = pair().await;
    let mut cfg = config(300, 300);
    cfg.max_queued_bytes = 1000;
    // Current-thread runtime: the driver cannot run between the try_sends below.
    let client = connection::spawn(a, cfg).unwrap();
    let server = connection::spawn(b, config(300, 300)).unwrap();
    let payload = Bytes::from(vec![7u8; 195]); // 200 budget bytes each
    for _ in 0..5 {
        client.try_send(payload.clone()).unwrap();
    }
    assert_eq!(
        client.try_send(payload.clone()),
        Err(SendError::QueueFull {
            queued: 1000,
            len: 200,
            limit: 1000
        })
    );
    // Larger than the whole budget: refused at once, even by the waiting send.
    assert!(matches!(
        client.send(Bytes::from(vec![0u8; 2000])).await,
        Err(SendError::QueueFull { len: 2005, .. })
    ));
    // The waiting send gets through once the driver has written the queue.
    for _ in 0..20 {
        timeout(DEADLINE, client.send(payload.clone()))
            .await
            .unwrap()
            .unwrap();
    }
    let (_stx, mut srx) = server.split();
    connected(&mut srx).await;
    for _ in 0..25 {
        assert_eq!(
            timeout(DEADLINE, srx.recv()).await.unwrap().unwrap(),
            payload
        );
    }
    // Over the peer's max_message_len once it is known.
    let (ctx, mut crx) = client.split();
    connected(&mut crx).await;
    assert!(matches!(
        ctx.try_send(Bytes::from(vec![0u8; 8 * 1024 * 1024])),
        Err(SendError::TooBig { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_triggers_backpressure_not_growth() {
    use framelink::connection::DriverConfig;
    use framelink::Protocol;
    let (a, b) = pair().await;
    let limit = 256 * 1024;
    let sender_cfg = ConnectionConfig {
        max_queued_bytes: limit,
        ..config(30_000, 30_000)
    };
    let driver = DriverConfig {
        recv_high_watermark: 32 * 1024,
        recv_low_watermark: 8 * 1024,
        ..DriverConfig::default()
    };
    let writer = connection::spawn_with(a, &Protocol::Framelink(sender_cfg), driver).unwrap();
    let reader =
        connection::spawn_with(b, &Protocol::Framelink(config(30_000, 30_000)), driver).unwrap();
    let (tx, _wrx) = writer.split();
    let (_rtx, mut rx) = reader.split();
    connected(&mut rx).await;

    // The reader's application takes nothing. The writer sends until `send` blocks.
    let payload = Bytes::from(vec![7u8; 1024]);
    let mut sent = 0u32;
    loop {
        let mut m = payload.to_vec();
        m[..4].copy_from_slice(&sent.to_be_bytes());
        match timeout(ms(500), tx.send(Bytes::from(m))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("send failed: {e}"),
            Err(_) => break, // blocked: backpressure reached the sender
        }
        assert!(
            sent < 100_000,
            "send never blocked: memory would grow without bound"
        );
    }
    // Bounded on both sides: the writer's queue by its limit, the reader's buffered messages
    // by its high watermark plus one read; the rest sits in the kernel's socket buffers.
    assert!(
        tx.queued_bytes() <= limit,
        "{} > {limit}",
        tx.queued_bytes()
    );
    assert!(
        rx.buffered_bytes() <= 32 * 1024 + 64 * 1024 + 1024,
        "reader buffered {} bytes",
        rx.buffered_bytes()
    );
    assert!(matches!(
        tx.try_send(payload.clone()),
        Err(SendError::QueueFull { limit: l, .. }) if l == limit
    ));

    // The reader catches up: everything arrives, in order, and the writer can send again.
    let more = tokio::spawn({
        let tx = tx.clone();
        async move { tx.send(Bytes::from_static(b"after the stall")).await }
    });
    for i in 0..sent {
        let m = timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
        assert_eq!(&m[..4], &i.to_be_bytes());
    }
    assert_eq!(
        timeout(DEADLINE, rx.recv()).await.unwrap().unwrap(),
        "after the stall"
    );
    more.await.unwrap().unwrap();
    eprintln!("{sent} KiB accepted before the sender blocked (queue limit 256 KiB)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_echo_in_order_and_refusals_keep_what_was_not_queued() {
    let (a, b) = pair().await;
    // A small budget, so that batches wait for room part-way through.
    let small = ConnectionConfig {
        max_queued_bytes: 16 * 1024,
        ..config(30_000, 30_000)
    };
    let (ctx, mut crx) = connection::spawn(a, small.clone()).unwrap().split();
    let (stx, mut srx) = connection::spawn(b, small).unwrap().split();
    // The echo: a batch of events in, a batch of messages out.
    let echo = tokio::spawn(async move {
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        let mut largest = 0;
        while srx.recv_many(&mut events, 500).await > 0 {
            largest = largest.max(events.len());
            assert!(events.len() <= 500);
            replies.extend(events.drain(..).filter_map(|event| match event {
                Event::Message(m) => Some(m),
                _ => None,
            }));
            if stx.send_batch(&mut replies).await.is_err() {
                break;
            }
            assert!(replies.is_empty());
        }
        largest
    });
    connected(&mut crx).await;
    const COUNT: usize = 20_000;
    let sender = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let mut batch = Vec::new();
            let mut i = 0;
            while i < COUNT {
                // Batches of 1 to 700 messages (up to ~70 KiB: several budgets' worth).
                let n = (i * 7919 % 700 + 1).min(COUNT - i);
                batch.extend((i..i + n).map(|k| Bytes::from(vec![(k % 251) as u8; k % 97 + 8])));
                ctx.send_batch(&mut batch).await.unwrap();
                assert!(batch.is_empty());
                i += n;
            }
        }
    });
    let mut events = Vec::new();
    let mut got = 0;
    while got < COUNT {
        assert!(
            timeout(DEADLINE, crx.recv_many(&mut events, 64))
                .await
                .unwrap()
                > 0
        );
        assert!(events.len() <= 64);
        for event in events.drain(..) {
            if let Event::Message(m) = event {
                assert_eq!(m.len(), got % 97 + 8, "message {got}");
                assert!(m.iter().all(|&b| b == (got % 251) as u8), "message {got}");
                got += 1;
            }
        }
    }
    sender.await.unwrap();
    assert!(
        crx.recv_many(&mut events, 0).await == 0,
        "a zero limit takes nothing"
    );

    // A message the peer cannot take, in the middle of a batch: those before it are queued,
    // it and those after it stay in the batch.
    let mut batch = vec![
        Bytes::from_static(b"one"),
        Bytes::from_static(b"two"),
        Bytes::from(vec![0u8; 8 * 1024 * 1024]),
        Bytes::from_static(b"four"),
    ];
    assert!(matches!(
        ctx.send_batch(&mut batch).await,
        Err(SendError::TooBig { .. })
    ));
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[1], "four");
    for expected in ["one", "two"] {
        assert_eq!(
            timeout(DEADLINE, crx.recv()).await.unwrap().unwrap(),
            expected
        );
    }

    // Once closed, a batch is refused whole and kept.
    ctx.close(CloseCode::Normal, "done").await;
    let mut batch = vec![Bytes::from_static(b"late"), Bytes::from_static(b"later")];
    assert_eq!(ctx.send_batch(&mut batch).await, Err(SendError::Closed));
    assert_eq!(batch.len(), 2);
    let largest = timeout(DEADLINE, echo).await.unwrap().unwrap();
    eprintln!("largest echo batch: {largest} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_around_the_read_size_arrive_intact() {
    // Sizes around the driver's read buffer (64 KiB) and its large-frame threshold (32 KiB),
    // mixed with small messages, so that read sizing meets every case: a frame that just fits,
    // one that just does not, a prediction that is wrong.
    let sizes = [
        65_536, 65_523, 65_549, 10, 65_536, 200_000, 32_768, 1, 131_072, 65_535, 3, 70_000,
        1_000_000, 64, 65_536, 65_536, 65_536,
    ];
    let (a, b) = pair().await;
    let (ctx, mut crx) = connection::spawn(a, config(30_000, 30_000))
        .unwrap()
        .split();
    let (stx, mut srx) = connection::spawn(b, config(30_000, 30_000))
        .unwrap()
        .split();
    let echo = tokio::spawn(async move {
        while let Some(m) = srx.recv().await {
            if stx.send(m).await.is_err() {
                break;
            }
        }
    });
    connected(&mut crx).await;
    let message = |round: usize, i: usize, len: usize| {
        Bytes::from(
            (0..len)
                .map(|k| (k * 31 + i * 7 + round) as u8)
                .collect::<Vec<u8>>(),
        )
    };
    for round in 0..3 {
        let sender = tokio::spawn({
            let ctx = ctx.clone();
            async move {
                for (i, &len) in sizes.iter().enumerate() {
                    ctx.send(message(round, i, len)).await.unwrap();
                }
            }
        });
        for (i, &len) in sizes.iter().enumerate() {
            let m = timeout(DEADLINE, crx.recv()).await.unwrap().unwrap();
            assert_eq!(m.len(), len, "round {round}, message {i}");
            assert!(m == message(round, i, len), "round {round}, message {i}");
        }
        sender.await.unwrap();
    }
    ctx.close(CloseCode::Normal, "").await;
    echo.await.unwrap();
}

/// A send the handle accepted (the budget still open) that reaches the driver only after the
/// connection closed is handed back by `take_unsent`, not dropped without a word.
#[tokio::test]
async fn a_send_that_races_the_close_is_handed_back() {
    use futures::FutureExt;
    let (a, b) = tokio::io::duplex(1 << 20);
    let conn_a = connection::spawn(a, ConnectionConfig::default()).unwrap();
    let mut conn_b = connection::spawn(b, ConnectionConfig::default()).unwrap();
    let (sender, mut receiver) = conn_a.split();
    sender.send(Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(
        timeout(DEADLINE, conn_b.recv()).await.unwrap().unwrap(),
        Bytes::from_static(b"first")
    );
    // The close is queued (polled once), the driver has not run: a send still gets in.
    let closing = sender.clone();
    let mut close = Box::pin(async move { closing.close(CloseCode::Normal, "bye").await });
    assert!(close.as_mut().now_or_never().is_none());
    sender
        .try_send(Bytes::from_static(b"after-close"))
        .expect("the budget is still open");
    let mut got_b = Vec::new();
    timeout(DEADLINE, async {
        while let Some(event) = conn_b.next_event().await {
            if let Event::Message(m) = event {
                got_b.push(m);
            }
        }
        while receiver.next_event().await.is_some() {}
    })
    .await
    .unwrap();
    assert!(got_b.is_empty(), "{got_b:?}");
    assert_eq!(
        receiver.take_unsent(),
        vec![Bytes::from_static(b"after-close")]
    );
}

/// `close` to a peer that stops reading (no keep-alive to find it dead, our output stuck in
/// full socket buffers) still returns: the close is given up on `linger` after the last
/// output went out.
#[tokio::test]
async fn close_returns_when_the_peer_stops_reading() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let quiet = ConnectionConfig {
        ping_interval: None,
        linger: ms(300),
        ..ConnectionConfig::default()
    };
    let peer_config = quiet.clone();
    let peer = tokio::spawn(async move {
        // Handshakes, then never reads again (keeps the socket open).
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut machine =
            framelink::proto::connection::Connection::new(peer_config, Instant::now()).unwrap();
        while let Some(bytes) = machine.poll_transmit(Instant::now()) {
            socket.write_all(&bytes).await.unwrap();
        }
        // Longer than the test's deadline: only the fix ends the close.
        tokio::time::sleep(secs(600)).await;
        drop(socket);
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let conn = connection::spawn(stream, quiet).unwrap();
    // Far more than the socket buffers hold.
    for _ in 0..64 {
        let _ = conn.try_send(Bytes::from(vec![0u8; 128 * 1024]));
    }
    let closed = timeout(DEADLINE, conn.close(CloseCode::Normal, "bye"))
        .await
        .expect("close returns");
    assert!(closed.is_some());
    peer.abort();
}
