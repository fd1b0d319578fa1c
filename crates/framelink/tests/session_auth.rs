//! Session hijack attempts against a real server over loopback: knowing a session id is not
//! enough to resume it, a forged or replayed proof is refused without disturbing the
//! connection that holds the session, and a valid proof takes the session over, closing the
//! older connection with CLOSE 10.
//!
//! The clients here are the sans-IO protocol machine driven over a plain socket, so that the
//! tests can hold, copy and forge session state the way an attacker would.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use framelink::connection::ResumeStatus;
use framelink::{Server, ServerConfig, ServerSessions};
use framelink_proto::auth::SessionSecret;
use framelink_proto::connection::{Connection, ConnectionConfig, Event};
use framelink_proto::machine::Machine;
use framelink_proto::session::{Session, SessionConfig};
use framelink_proto::wire::{CloseCode, Message, WireCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use common::echo;

/// Generous bound for each step: the machine may be busy.
const STEP: Duration = Duration::from_secs(30);

/// A protocol machine on a loopback socket, with everything it reported.
struct Peer {
    machine: Connection,
    socket: TcpStream,
    events: Vec<Event>,
    /// Every byte it wrote, to replay.
    written: Vec<u8>,
}

impl Peer {
    async fn connect(addr: std::net::SocketAddr, session: Session) -> Peer {
        let config = ConnectionConfig {
            sessions: Some(SessionConfig::default()),
            ..ConnectionConfig::default()
        };
        let socket = TcpStream::connect(addr).await.unwrap();
        let machine = Connection::with_session(config, session, std::time::Instant::now()).unwrap();
        Peer {
            machine,
            socket,
            events: Vec::new(),
            written: Vec::new(),
        }
    }

    /// Runs the machine until an event matches `done` (true) or the connection ends (false).
    async fn until(&mut self, done: impl Fn(&Event) -> bool) -> bool {
        let deadline = Instant::now() + STEP;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let now = std::time::Instant::now();
            while let Some(bytes) = self.machine.poll_transmit(now) {
                self.written.extend_from_slice(&bytes);
                if self.socket.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let mut found = false;
            while let Some(event) = self.machine.poll_event() {
                found |= done(&event);
                self.events.push(event);
            }
            if found {
                return true;
            }
            if self.machine.is_closed() || Instant::now() > deadline {
                return false;
            }
            match timeout(Duration::from_millis(20), self.socket.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.machine.handle_eof(std::time::Instant::now()),
                Ok(Ok(n)) => self
                    .machine
                    .handle_input(&buf[..n], std::time::Instant::now()),
                Err(_) => self.machine.handle_timeout(std::time::Instant::now()),
            }
        }
    }

    async fn started(&mut self) -> ResumeStatus {
        assert!(
            self.until(|e| matches!(e, Event::SessionStarted { .. }))
                .await,
            "no RESUME: {:?}",
            self.events
        );
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::SessionStarted { status, .. } => Some(*status),
                _ => None,
            })
            .unwrap()
    }

    /// Sends `text` and waits for the server's echo of it.
    async fn echo(&mut self, text: &str) {
        self.machine
            .send(
                Bytes::copy_from_slice(text.as_bytes()),
                std::time::Instant::now(),
            )
            .unwrap();
        let want = Bytes::copy_from_slice(text.as_bytes());
        assert!(
            self.until(|e| *e == Event::Data(want.clone())).await,
            "no echo of {text:?}: {:?}",
            self.events
        );
    }

    fn closed_with(&self) -> Option<(CloseCode, bool)> {
        self.events.iter().find_map(|e| match e {
            Event::Closed { code, by_peer, .. } => Some((*code, *by_peer)),
            _ => None,
        })
    }
}

/// A server with sessions that echoes every message on its connection.
async fn echo_server() -> std::net::SocketAddr {
    let config = ServerConfig {
        sessions: Some(ServerSessions::default()),
        ..ServerConfig::default()
    };
    let mut server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(echo(incoming.connection));
        }
    });
    addr
}

/// A victim with a confirmed session (it has the secret and exchanged a message).
async fn victim(addr: std::net::SocketAddr) -> Peer {
    let mut victim = Peer::connect(addr, Session::new([0x5e; 16])).await;
    assert_eq!(victim.started().await, ResumeStatus::New);
    victim.echo("first").await;
    assert!(victim.machine.session().unwrap().secret().is_some());
    victim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowing_the_id_is_not_enough_and_the_holder_is_never_cut() {
    let addr = echo_server().await;
    let mut victim = victim(addr).await;
    let id = victim.machine.session().unwrap().id();
    for attempt in 0..9 {
        // Without a secret (role 1), then with a made-up one (role 3 and a forged AUTH).
        let mut forged = Session::new(id);
        if attempt % 2 == 1 {
            forged.set_secret(SessionSecret::random());
        }
        let mut attacker = Peer::connect(addr, forged).await;
        assert!(
            !attacker
                .until(|e| matches!(e, Event::SessionStarted { .. } | Event::Data(_)))
                .await,
            "attempt {attempt}: the attacker got in: {:?}",
            attacker.events
        );
        assert_eq!(
            attacker.closed_with(),
            Some((CloseCode::SessionRefused, true)),
            "attempt {attempt}: {:?}",
            attacker.events
        );
        // The holder keeps its connection and its session.
        victim.echo(&format!("still here {attempt}")).await;
        assert_eq!(victim.closed_with(), None, "{:?}", victim.events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_resume_cannot_be_replayed() {
    let addr = echo_server().await;
    let victim = victim(addr).await;
    // The victim comes back (with its secret): a legitimate takeover, recorded on the wire.
    let session = victim.machine.session().unwrap().clone();
    let mut back = Peer::connect(addr, session).await;
    assert_eq!(back.started().await, ResumeStatus::Resumed);
    let recorded = back.written.clone(); // HELLO and AUTH
    back.echo("after resume").await;
    // Replayed byte for byte on a new connection: the nonce differs, so the proof is wrong.
    let mut replay = TcpStream::connect(addr).await.unwrap();
    replay.write_all(&recorded).await.unwrap();
    let mut codec = WireCodec::new(1 << 20).unwrap();
    let mut buf = BytesMut::new();
    let close = timeout(STEP, async {
        loop {
            while let Ok(Some(message)) = codec.decode(&mut buf) {
                match message {
                    Message::Close { code, .. } => return Some(code),
                    Message::Resume { .. } | Message::SessionData { .. } => return None,
                    _ => {}
                }
            }
            if replay.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, Some(CloseCode::SessionRefused));
    // The session's legitimate holder is undisturbed.
    back.echo("untouched").await;
    assert_eq!(back.closed_with(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_proof_takes_the_session_over_and_the_old_connection_is_told() {
    let addr = echo_server().await;
    let mut old = victim(addr).await;
    // The client reconnects before the server noticed anything wrong with the old link.
    let session = old.machine.session().unwrap().clone();
    let mut new = Peer::connect(addr, session).await;
    assert_eq!(new.started().await, ResumeStatus::Resumed);
    new.echo("on the new connection").await;
    assert!(
        old.until(|e| matches!(e, Event::Closed { .. })).await,
        "{:?}",
        old.events
    );
    assert_eq!(
        old.closed_with(),
        Some((CloseCode::SessionTakenOver, true)),
        "{:?}",
        old.events
    );
}
