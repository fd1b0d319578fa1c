//! The server's per-address connection limit (`ServerConfig::max_connections_per_ip`) over real
//! loopback TCP: an address holding its limit of handshaken connections has the next one
//! refused (protocol mode: CLOSE `ServerFull` with the per-address reason; raw mode: the socket
//! closed) while another address (127.0.0.2, Linux loopback) still gets in, a slot comes back
//! when one of its connections ends, IPv4-mapped addresses count as IPv4, and the limit cannot
//! be 0.
//!
//! Nothing here depends on timing: every wait is for an event, bounded by [`DEADLINE`].

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use framelink::connection::{self, CloseCode, ConnectionConfig};
use framelink::{CloseInfo, Connection, Event, Framing, Protocol, RawConfig, Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use common::{closed, echo_server, echoes, live_connections, DEADLINE};

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LEGITIMATE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A TCP connection to `server` from `source` (any port).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .unwrap_or_else(|e| panic!("bind {source}:0: {e}"));
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), server.port());
    timeout(DEADLINE, socket.connect(server))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"))
}

/// A protocol v1 connection from `source`, once its handshake completed. Its driver answers
/// the server's pings on its own.
async fn handshaken_from(source: Ipv4Addr, server: SocketAddr) -> Connection {
    let stream = connect_from(source, server).await;
    let mut conn = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    match timeout(DEADLINE, conn.next_event()).await.unwrap() {
        Some(Event::Connected { .. }) => conn,
        other => panic!("no handshake from {source}: {other:?}"),
    }
}

/// How the server ended a protocol v1 connection from `source` that it refused.
async fn refusal_from(source: Ipv4Addr, server: SocketAddr) -> CloseInfo {
    let stream = connect_from(source, server).await;
    let mut conn = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    closed(&mut conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_limit_is_refused_while_others_get_in() {
    let (addr, handle) = echo_server(ServerConfig {
        max_connections_per_ip: 3,
        ..ServerConfig::default()
    })
    .await;

    // The attacker holds its 3 (each registered at accept, before our handshake completes).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(handshaken_from(ATTACKER, addr).await);
    }
    assert_eq!(handle.connections(), 3);

    // Its 4th is told why, after the server's HELLO.
    let info = refusal_from(ATTACKER, addr).await;
    assert_eq!(info.code, CloseCode::ServerFull, "{info}");
    assert!(info.by_peer, "{info}");
    assert_eq!(info.reason, "too many connections from 127.0.0.1: limit 3");
    let stats = handle.stats();
    assert_eq!(
        (stats.live, stats.refused, stats.refused_per_ip),
        (3, 1, 1),
        "{stats:?}"
    );

    // Another address is not affected.
    let mut legitimate = handshaken_from(LEGITIMATE, addr).await;
    echoes(&mut legitimate, b"hello from 127.0.0.2").await;
    // Nor are the attacker's admitted connections.
    echoes(&mut held[0], b"still here").await;

    // One of the attacker's connections ends: its address has a slot again.
    let gone = held.pop().unwrap();
    gone.close(CloseCode::Normal, "").await;
    drop(gone);
    live_connections(&handle, 3).await;
    let mut again = handshaken_from(ATTACKER, addr).await;
    echoes(&mut again, b"back in").await;
    held.push(again);

    // And it is full again.
    let info = refusal_from(ATTACKER, addr).await;
    assert_eq!(info.code, CloseCode::ServerFull, "{info}");
    assert_eq!(info.reason, "too many connections from 127.0.0.1: limit 3");

    let stats = handle.stats();
    assert_eq!(stats.live, 4, "{stats:?}");
    assert_eq!(stats.accepted, 5, "{stats:?}");
    assert_eq!((stats.refused, stats.refused_per_ip), (2, 2), "{stats:?}");

    // Shutdown ends them all, gracefully.
    let report = handle.shutdown(DEADLINE).await;
    assert_eq!((report.open, report.aborted), (4, 0), "{report:?}");
    assert_eq!(handle.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_limit_is_reported_as_such_and_not_per_address() {
    // Both limits at 2, the address under its own: the total limit refuses, with its reason.
    let (addr, handle) = echo_server(ServerConfig {
        max_connections: 2,
        max_connections_per_ip: 2,
        ..ServerConfig::default()
    })
    .await;
    let _a = handshaken_from(ATTACKER, addr).await;
    let _b = handshaken_from(LEGITIMATE, addr).await;
    let info = refusal_from(LEGITIMATE, addr).await;
    assert_eq!(info.code, CloseCode::ServerFull, "{info}");
    assert_eq!(info.reason, "too many connections");
    let stats = handle.stats();
    assert_eq!((stats.refused, stats.refused_per_ip), (1, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_refused_for_its_address_evicts_no_one() {
    // Full (2 of 2) with an idle connection that could be evicted: a newcomer that its
    // address's limit refuses anyway must not close it on the way.
    let (addr, handle) = echo_server(ServerConfig {
        max_connections: 2,
        max_connections_per_ip: 1,
        evict_idle_when_full: Some(Duration::ZERO),
        ..ServerConfig::default()
    })
    .await;
    let mut idle = handshaken_from(LEGITIMATE, addr).await;
    let _held = handshaken_from(ATTACKER, addr).await;
    for _ in 0..3 {
        let info = refusal_from(ATTACKER, addr).await;
        assert_eq!(info.reason, "too many connections from 127.0.0.1: limit 1");
    }
    let stats = handle.stats();
    assert_eq!(
        (stats.evicted_idle, stats.refused_per_ip, stats.live),
        (0, 3, 2),
        "{stats:?}"
    );
    echoes(&mut idle, b"never evicted").await;
}

/// A raw echo server speaking lines, without heartbeats.
fn raw_lines() -> Protocol {
    let framing: Framing = "lines".parse().unwrap();
    Protocol::Raw(Box::new(RawConfig {
        ping_interval: None,
        ..RawConfig::new(framing)
    }))
}

/// Sends a line and reads its echo.
async fn line_echoes(stream: &mut BufReader<TcpStream>, line: &str) {
    stream
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut echo = String::new();
    timeout(DEADLINE, stream.read_line(&mut echo))
        .await
        .expect("no echo in time")
        .unwrap();
    assert_eq!(echo, format!("{line}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_closes_the_socket_of_a_connection_over_the_per_address_limit() {
    let (addr, handle) = echo_server(ServerConfig {
        protocol: raw_lines(),
        max_connections_per_ip: 2,
        ..ServerConfig::default()
    })
    .await;
    // An echo proves the server accepted (and counted) the connection.
    let mut held = Vec::new();
    for i in 0..2 {
        let mut stream = BufReader::new(connect_from(ATTACKER, addr).await);
        line_echoes(&mut stream, &format!("attacker {i}")).await;
        held.push(stream);
    }

    // The third is closed without a word: end of stream (or a reset), never an echo.
    let mut third = connect_from(ATTACKER, addr).await;
    let mut buf = [0u8; 64];
    match timeout(DEADLINE, third.read(&mut buf))
        .await
        .expect("a refused raw connection stayed open")
    {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the socket closed, got {other:?}"),
    }
    let stats = handle.stats();
    assert_eq!(
        (stats.live, stats.refused, stats.refused_per_ip),
        (2, 1, 1),
        "{stats:?}"
    );

    // Another address gets in.
    let mut legitimate = BufReader::new(connect_from(LEGITIMATE, addr).await);
    line_echoes(&mut legitimate, "hello from 127.0.0.2").await;

    // One of the attacker's ends: a new one from its address is accepted.
    drop(held.pop());
    live_connections(&handle, 2).await;
    let mut again = BufReader::new(connect_from(ATTACKER, addr).await);
    line_echoes(&mut again, "back in").await;
    assert_eq!(handle.stats().refused_per_ip, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d. Skipped where the machine
    // has no IPv6, or its IPv6 sockets are IPv6-only.
    let config = ServerConfig {
        max_connections_per_ip: 1,
        ..ServerConfig::default()
    };
    let Ok(mut server) = Server::bind("[::]:0", config).await else {
        eprintln!("skipped: no IPv6 listener");
        return;
    };
    let port = server.local_addr().port();
    let handle = server.handle();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(incoming) = server.accept().await {
            assert!(
                matches!(incoming.peer.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()),
                "{}",
                incoming.peer
            );
            kept.push(incoming.connection);
        }
    });
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let Ok(Ok(stream)) = timeout(DEADLINE, TcpStream::connect(addr)).await else {
        eprintln!("skipped: the IPv6 listener does not take IPv4 connections");
        return;
    };
    let mut first = connection::spawn(stream, ConnectionConfig::default()).unwrap();
    assert!(matches!(
        timeout(DEADLINE, first.next_event()).await.unwrap(),
        Some(Event::Connected { .. })
    ));
    let info = refusal_from(ATTACKER, addr).await;
    assert_eq!(info.code, CloseCode::ServerFull, "{info}");
    // Reported (and counted) as the IPv4 address, not ::ffff:127.0.0.1.
    assert_eq!(info.reason, "too many connections from 127.0.0.1: limit 1");
    assert_eq!(handle.stats().refused_per_ip, 1);
}

#[tokio::test]
async fn the_per_address_limit_cannot_be_zero() {
    assert_eq!(ServerConfig::default().max_connections_per_ip, 64);
    let error = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            max_connections_per_ip: 0,
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, framelink::Error::InvalidConfig(m) if m.contains("max_connections_per_ip")),
        "{error}"
    );
    // 1 and "off" are fine.
    for limit in [1, usize::MAX] {
        let config = ServerConfig {
            max_connections_per_ip: limit,
            ..ServerConfig::default()
        };
        Server::bind("127.0.0.1:0", config).await.unwrap();
    }
}

/// Slot exhaustion from many addresses: connections that only answer heartbeats hold every
/// slot. A newcomer evicts the one idle the longest (CLOSE Idle), not a busy one; with the
/// eviction off, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_evicts_its_idlest_connection_for_a_newcomer() {
    let config = ServerConfig {
        max_connections: 3,
        max_connections_per_ip: 3,
        evict_idle_when_full: Some(Duration::from_millis(300)),
        ..ServerConfig::default()
    };
    let (addr, handle) = echo_server(config.clone()).await;
    let mut idle_a = handshaken_from(ATTACKER, addr).await;
    let mut idle_b = handshaken_from(ATTACKER, addr).await;
    let mut busy = handshaken_from(LEGITIMATE, addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    echoes(&mut busy, b"working").await;
    // Full: the newcomer gets in and one of the two idle ones goes.
    let mut newcomer = handshaken_from(LEGITIMATE, addr).await;
    echoes(&mut newcomer, b"let in").await;
    let evicted = tokio::select! {
        info = closed(&mut idle_a) => info,
        info = closed(&mut idle_b) => info,
    };
    assert_eq!(evicted.code, CloseCode::Idle, "{evicted}");
    assert!(
        evicted.reason.starts_with("evicted to make room"),
        "{evicted}"
    );
    echoes(&mut busy, b"still working").await;
    assert_eq!(handle.stats().evicted_idle, 1);

    // Without eviction, a full server refuses.
    let (addr, handle) = echo_server(ServerConfig {
        evict_idle_when_full: None,
        ..config
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(handshaken_from(ATTACKER, addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        refusal_from(LEGITIMATE, addr).await.code,
        CloseCode::ServerFull
    );
    assert_eq!(handle.stats().evicted_idle, 0);
    echoes(&mut held[0], b"kept").await;
}
