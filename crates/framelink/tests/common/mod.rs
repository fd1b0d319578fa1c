//! Helpers shared by the socket tests: bounds, an echo server, TCP pairs, and waits for a
//! connection's or a client's events that fail the test after [`DEADLINE`].
//!
//! Every wait is for an event or a counter, bounded generously: these tests share two busy
//! cores with other builds, so nothing here assumes a fast machine.

// Each test crate uses its own subset.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use framelink::connection::Hello;
use framelink::{
    Client, ClientEvent, CloseInfo, Connection, Event, Receiver, Server, ServerConfig, ServerHandle,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Generous bound for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Slack on top of protocol timings for slow CI machines.
pub const MARGIN: Duration = Duration::from_secs(2);

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A connected loopback TCP pair `(client, server)`, both with `TCP_NODELAY`.
pub async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.unwrap();
    let server = server.unwrap().0;
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

/// Echoes every message of `connection` until it closes (or a send fails).
pub async fn echo(connection: Connection) {
    let (tx, mut rx) = connection.split();
    while let Some(event) = rx.next_event().await {
        if let Event::Message(m) = event {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    }
}

/// Starts an echo server on `127.0.0.1:0`; returns its address and handle.
pub async fn echo_server(config: ServerConfig) -> (SocketAddr, ServerHandle) {
    let mut server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(echo(incoming.connection));
        }
    });
    (addr, handle)
}

/// What yields a connection's events: a [`Connection`] or its [`Receiver`].
pub trait Events {
    /// The next event; `None` after `Closed`.
    fn next_event(&mut self) -> impl Future<Output = Option<Event>>;
}

impl Events for Connection {
    fn next_event(&mut self) -> impl Future<Output = Option<Event>> {
        Connection::next_event(self)
    }
}

impl Events for Receiver {
    fn next_event(&mut self) -> impl Future<Output = Option<Event>> {
        Receiver::next_event(self)
    }
}

/// The next event, failing the test after [`DEADLINE`].
pub async fn event(events: &mut impl Events) -> Option<Event> {
    timeout(DEADLINE, events.next_event())
        .await
        .expect("no event in time")
}

/// Waits for `Connected`, skipping nothing else (it must come first); checks the version.
pub async fn connected(events: &mut impl Events) -> Hello {
    match event(events).await {
        Some(Event::Connected { peer, version }) => {
            assert_eq!(version, 1);
            *peer
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Skips everything but `Closed`; messages are not allowed.
pub async fn closed(events: &mut impl Events) -> CloseInfo {
    loop {
        match event(events).await {
            Some(Event::Closed(info)) => return *info,
            Some(Event::Message(m)) => panic!("unexpected message {m:?}"),
            Some(_) => {}
            None => panic!("event stream ended without Closed"),
        }
    }
}

/// Sends `payload` and waits for its echo (skipping other events; a close fails the test).
pub async fn echoes(conn: &mut Connection, payload: &'static [u8]) {
    conn.send(Bytes::from_static(payload)).await.unwrap();
    loop {
        match event(conn).await {
            Some(Event::Message(m)) => {
                assert_eq!(m, payload);
                return;
            }
            Some(Event::Closed(info)) => panic!("closed instead of echoing: {info}"),
            Some(_) => {}
            None => panic!("events ended without the echo"),
        }
    }
}

/// Waits until the server counts exactly `n` live connections.
pub async fn live_connections(handle: &ServerHandle, n: usize) {
    timeout(DEADLINE, async {
        while handle.connections() != n {
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("server has {} connections, want {n}", handle.connections()));
}

/// The next client event, failing the test after [`DEADLINE`].
pub async fn next(client: &mut Client) -> ClientEvent {
    timeout(DEADLINE, client.next_event())
        .await
        .expect("no client event in time")
        .expect("client event stream ended")
}

/// Skips client events until one matches.
pub async fn until<T>(client: &mut Client, mut f: impl FnMut(&ClientEvent) -> Option<T>) -> T {
    loop {
        let event = next(client).await;
        if let Some(t) = f(&event) {
            return t;
        }
    }
}

/// Waits for the client's next `Connected`; returns its attempt number.
pub async fn client_connected(client: &mut Client) -> u32 {
    until(client, |e| match e {
        ClientEvent::Connected { attempt, .. } => Some(*attempt),
        _ => None,
    })
    .await
}

/// Waits for the client's next `Disconnected`.
pub async fn disconnected(client: &mut Client) -> CloseInfo {
    until(client, |e| match e {
        ClientEvent::Disconnected(info) => Some(CloseInfo::clone(info)),
        _ => None,
    })
    .await
}
