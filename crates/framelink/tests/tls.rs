//! TLS and mutual TLS over real loopback TCP, with certificates made here (rcgen): echo in
//! protocol and raw modes; client certificates required, missing, or from another CA; a
//! server certificate from an unknown CA, for another name, or expired, each reported with
//! its reason; sessions resumed exactly once across cut links; heartbeats and dead-peer
//! detection over TLS; a peer stalling in the handshake evicted within the bound; a standard
//! TLS client (Python's `ssl`) talking to a raw-mode TLS server.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use framelink::connection::{ConnectionConfig, ConnectionError, DeathCause};
use framelink::tls::{
    ClientAuth, TlsClientConfig, TlsClientOptions, TlsConfigError, TlsServerConfig,
    TlsServerOptions,
};
use framelink::{
    BackoffConfig, Client, ClientConfig, ClientEvent, Event, Framing, Incoming, Protocol,
    RawConfig, Server, ServerConfig, ServerHandle, ServerSessions, SessionConfig, SessionEvent,
};
use framelink_chaos::{ChaosConfig, ChaosProxy, Fault};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use common::{echo, DEADLINE};

/// A certificate file and its key file.
type CertFiles = (PathBuf, PathBuf);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A directory of PEM files, removed at the end.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate authority made for a test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf certificate (PEM) and its key (PEM) issued by `ca`.
fn leaf(ca: &Ca, cn: &str, names: &[&str], client: bool, expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "framelink-tls-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn ca(&self, name: &str, ca: &Ca) -> PathBuf {
        self.write(name, &ca.cert.pem())
    }

    /// Writes a leaf's certificate and key as `<name>.pem` and `<name>.key`.
    fn leaf(&self, name: &str, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &cert),
            self.write(&format!("{name}.key"), &key),
        )
    }
}

/// The usual test set-up: one CA, a server certificate for localhost and 127.0.0.1, a client
/// certificate.
struct Setup {
    pki: Pki,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn setup() -> Setup {
    let pki = Pki::new();
    let authority = ca("framelink test CA");
    let ca = pki.ca("ca.pem", &authority);
    let server = pki.leaf(
        "server",
        leaf(
            &authority,
            "server",
            &["localhost", "127.0.0.1"],
            false,
            false,
        ),
    );
    let client = pki.leaf(
        "client",
        leaf(&authority, "client-1", &["client-1.example"], true, false),
    );
    Setup {
        pki,
        ca,
        server,
        client,
    }
}

fn server_tls(server: &(PathBuf, PathBuf), client_auth: ClientAuth) -> TlsServerConfig {
    TlsServerOptions {
        client_auth,
        ..TlsServerOptions::new(&server.0, &server.1)
    }
    .build()
    .unwrap()
}

fn client_tls(ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> TlsClientConfig {
    TlsClientOptions {
        client_cert: cert.cloned(),
        ..TlsClientOptions::with_ca_file(ca)
    }
    .build()
    .unwrap()
}

/// An echo server; every accepted connection goes to `accepted` too (without its handles).
async fn echo_server(
    config: ServerConfig,
) -> (
    std::net::SocketAddr,
    ServerHandle,
    tokio::sync::mpsc::UnboundedReceiver<(u64, Option<framelink::tls::TlsPeer>)>,
) {
    let mut server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Incoming {
            connection,
            id,
            tls,
            ..
        }) = server.accept().await
        {
            let _ = tx.send((id, tls));
            tokio::spawn(echo(connection));
        }
    });
    (addr, handle, rx)
}

fn one_try() -> BackoffConfig {
    BackoffConfig {
        max_attempts: Some(1),
        ..BackoffConfig::default()
    }
}

/// Sends messages of several sizes and checks that each comes back.
async fn echo_roundtrip(client: &mut Client, sizes: &[usize]) {
    for (i, &size) in sizes.iter().enumerate() {
        let payload = Bytes::from(vec![i as u8; size]);
        client.send(payload.clone()).await.unwrap();
        let back = timeout(DEADLINE, client.recv()).await.unwrap().unwrap();
        assert_eq!(back, payload, "message {i} of {size} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_mode_echoes_over_tls() {
    let s = setup();
    let (addr, handle, mut accepted) = echo_server(ServerConfig {
        tls: Some(server_tls(&s.server, ClientAuth::Off)),
        ..ServerConfig::default()
    })
    .await;
    let mut client = Client::connect(
        format!("localhost:{}", addr.port()),
        ClientConfig {
            tls: Some(client_tls(&s.ca, None)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    echo_roundtrip(&mut client, &[0, 1, 64, 1000, 16_384, 65_536, 300_000]).await;
    let (_, tls) = accepted.recv().await.unwrap();
    let tls = tls.expect("a TLS server reports the handshake");
    assert_eq!(tls.version, "TLSv1_3");
    assert!(tls.certificate.is_none(), "no client certificate asked for");
    client.close().await;
    assert_eq!(handle.stats().tls_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_echoes_over_tls() {
    let s = setup();
    let framing: Framing = "length:4,max=1MiB".parse().unwrap();
    let raw = RawConfig::new(framing);
    let (addr, _handle, _accepted) = echo_server(ServerConfig {
        protocol: Protocol::Raw(Box::new(raw.clone())),
        tls: Some(server_tls(&s.server, ClientAuth::Off)),
        ..ServerConfig::default()
    })
    .await;
    let mut client = Client::connect(
        addr.to_string(), // 127.0.0.1: the certificate holds the IP address too
        ClientConfig {
            protocol: Protocol::Raw(Box::new(raw)),
            tls: Some(client_tls(&s.ca, None)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    echo_roundtrip(&mut client, &[1, 64, 5000, 65_536, 500_000]).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_gives_the_server_the_client_identity() {
    let s = setup();
    let (addr, _handle, mut accepted) = echo_server(ServerConfig {
        tls: Some(server_tls(&s.server, ClientAuth::Required(s.ca.clone()))),
        ..ServerConfig::default()
    })
    .await;
    let mut client = Client::connect(
        format!("localhost:{}", addr.port()),
        ClientConfig {
            tls: Some(client_tls(&s.ca, Some(&s.client))),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    echo_roundtrip(&mut client, &[10, 70_000]).await;
    let (_, tls) = accepted.recv().await.unwrap();
    let cert = tls
        .unwrap()
        .certificate
        .expect("the verified client certificate");
    assert_eq!(cert.subject, "CN=client-1");
    assert_eq!(cert.dns_names, vec!["client-1.example".to_owned()]);
    let pem = std::fs::read(&s.client.0).unwrap();
    let der = first_cert_der(&pem);
    assert_eq!(cert.der(), der.as_slice());
    client.close().await;
}

/// The DER of the first certificate in a PEM file (base64 between the markers).
fn first_cert_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(&body)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Connects once and returns the text of the failure the client reports (connect failure or
/// disconnect), after checking that it never delivered a message.
async fn failure_text(addr: String, config: ClientConfig) -> String {
    let mut client = Client::connect(
        addr,
        ClientConfig {
            backoff: one_try(),
            ..config
        },
    )
    .unwrap();
    let mut report = None;
    while let Some(event) = timeout(DEADLINE, client.next_event()).await.unwrap() {
        match event {
            ClientEvent::ConnectFailed { error, .. } => report = Some(error.to_string()),
            ClientEvent::Disconnected(info) => report = Some(info.to_string()),
            ClientEvent::Message(_) => panic!("a message over a refused connection"),
            ClientEvent::GaveUp { .. } | ClientEvent::Closed => break,
            _ => {}
        }
    }
    report.expect("a failure was reported")
}

/// Waits (bounded) until the server counted `n` TLS failures.
async fn tls_failures(handle: &ServerHandle, n: u64) {
    let start = Instant::now();
    while handle.stats().tls_failures < n {
        assert!(start.elapsed() < DEADLINE, "{:?}", handle.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let s = setup();
    let (addr, handle, _accepted) = echo_server(ServerConfig {
        tls: Some(server_tls(&s.server, ClientAuth::Required(s.ca.clone()))),
        ..ServerConfig::default()
    })
    .await;
    let text = failure_text(
        format!("localhost:{}", addr.port()),
        ClientConfig {
            tls: Some(client_tls(&s.ca, None)),
            ..ClientConfig::default()
        },
    )
    .await;
    assert!(text.contains("client certificate is required"), "{text}");
    tls_failures(&handle, 1).await;
    assert_eq!(handle.stats().live, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_certificate_from_another_ca() {
    let s = setup();
    let other = ca("another CA");
    let stranger = s.pki.leaf(
        "stranger",
        leaf(&other, "stranger", &["stranger.example"], true, false),
    );
    let (addr, handle, mut accepted) = echo_server(ServerConfig {
        tls: Some(server_tls(&s.server, ClientAuth::Required(s.ca.clone()))),
        ..ServerConfig::default()
    })
    .await;
    let text = failure_text(
        format!("localhost:{}", addr.port()),
        ClientConfig {
            tls: Some(client_tls(&s.ca, Some(&stranger))),
            ..ClientConfig::default()
        },
    )
    .await;
    assert!(text.contains("refused our certificate"), "{text}");
    tls_failures(&handle, 1).await;
    assert!(
        accepted.try_recv().is_err(),
        "a refused connection reached accept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_accept_both_kinds_of_client() {
    let s = setup();
    let (addr, _handle, mut accepted) = echo_server(ServerConfig {
        tls: Some(server_tls(&s.server, ClientAuth::Optional(s.ca.clone()))),
        ..ServerConfig::default()
    })
    .await;
    for cert in [None, Some(&s.client)] {
        let mut client = Client::connect(
            format!("localhost:{}", addr.port()),
            ClientConfig {
                tls: Some(client_tls(&s.ca, cert)),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        echo_roundtrip(&mut client, &[5]).await;
        let (_, tls) = accepted.recv().await.unwrap();
        assert_eq!(tls.unwrap().certificate.is_some(), cert.is_some());
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_problems_are_reported_with_their_reason() {
    let s = setup();
    let authority = ca("framelink test CA 2");
    let ca2 = s.pki.ca("ca2.pem", &authority);
    let expired = s.pki.leaf(
        "expired",
        leaf(&authority, "expired", &["localhost"], false, true),
    );
    let good = s.pki.leaf(
        "good",
        leaf(&authority, "good", &["localhost"], false, false),
    );
    let unknown = ca("unrelated CA");
    let unknown_ca = s.pki.ca("unknown.pem", &unknown);

    let cases: [(&str, &CertFiles, &Path, Option<&str>); 3] = [
        ("unknown CA", &good, &unknown_ca, None),
        ("name mismatch", &good, &ca2, Some("other.example")),
        ("expired", &expired, &ca2, None),
    ];
    for (expected, server_cert, trusted, name) in cases {
        let (addr, handle, _accepted) = echo_server(ServerConfig {
            tls: Some(server_tls(server_cert, ClientAuth::Off)),
            ..ServerConfig::default()
        })
        .await;
        let mut tls = client_tls(trusted, None);
        tls.server_name = name.map(str::to_owned);
        let text = failure_text(
            format!("localhost:{}", addr.port()),
            ClientConfig {
                tls: Some(tls),
                ..ClientConfig::default()
            },
        )
        .await;
        assert!(text.contains(expected), "{expected}: {text}");
        tls_failures(&handle, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_key_problems_name_the_file() {
    let s = setup();
    let missing = s.pki.dir.join("nope.pem");
    let err = TlsServerOptions::new(&missing, &s.server.1)
        .build()
        .unwrap_err();
    assert!(matches!(err, TlsConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");

    // A key file without a key, a certificate file without a certificate.
    let err = TlsServerOptions::new(&s.server.0, &s.server.0)
        .build()
        .unwrap_err();
    assert!(matches!(err, TlsConfigError::NoPrivateKey { .. }), "{err}");
    let err = TlsServerOptions::new(&s.server.1, &s.server.1)
        .build()
        .unwrap_err();
    assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");

    // The client's key with the server's certificate.
    let err = TlsServerOptions::new(&s.server.0, &s.client.1)
        .build()
        .unwrap_err();
    assert!(matches!(err, TlsConfigError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // Reaches the caller of Server::bind as a configuration error.
    let err = TlsClientOptions::with_ca_file(&s.server.1)
        .build()
        .unwrap_err();
    let err = framelink::Error::from(err);
    assert!(err.to_string().contains("server.key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_exactly_once_over_tls_across_cut_links() {
    let s = setup();
    let received: Arc<Mutex<Vec<u32>>> = Arc::default();
    let resumed_tls = Arc::new(AtomicU64::new(0));
    let mut server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            protocol: Protocol::Framelink(ConnectionConfig {
                ping_interval: Some(Duration::from_millis(500)),
                ping_timeout: Duration::from_millis(3_000),
                ..ConnectionConfig::default()
            }),
            sessions: Some(ServerSessions {
                policy: SessionConfig::default(),
                ttl: Duration::from_secs(60),
                max_detached: 100,
                ..ServerSessions::default()
            }),
            tls: Some(server_tls(&s.server, ClientAuth::Required(s.ca.clone()))),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let sink = received.clone();
    let resumed = resumed_tls.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            if incoming.tls.as_ref().is_some_and(|t| t.resumed) {
                resumed.fetch_add(1, Ordering::SeqCst);
            }
            let sink = sink.clone();
            tokio::spawn(async move {
                let (_sender, mut events) = incoming.connection.split();
                while let Some(event) = events.next_event().await {
                    if let Event::Message(m) = event {
                        sink.lock()
                            .unwrap()
                            .push(u32::from_be_bytes(m[..4].try_into().unwrap()));
                    }
                }
            });
        }
    });
    let proxy = ChaosProxy::start("127.0.0.1:0", addr, ChaosConfig::default())
        .await
        .unwrap();
    let mut client = Client::connect(
        format!("localhost:{}", proxy.local_addr().port()),
        ClientConfig {
            sessions: Some(SessionConfig::default()),
            backoff: BackoffConfig {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                ..BackoffConfig::default()
            },
            tls: Some(client_tls(&s.ca, Some(&s.client))),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    const N: u32 = 3_000;
    let sender = client.sender();
    let sending = tokio::spawn(async move {
        for i in 0..N {
            let mut m = i.to_be_bytes().to_vec();
            m.extend(std::iter::repeat_n(i as u8, (i % 700) as usize));
            sender.send(Bytes::from(m)).await.unwrap();
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    // Drain the client's events meanwhile.
    let events = tokio::spawn(async move {
        let mut disconnects = 0;
        while let Some(event) = client.next_event().await {
            match event {
                ClientEvent::Disconnected(_) => disconnects += 1,
                ClientEvent::Session(SessionEvent::Lost { unacked, .. }) => {
                    panic!("session lost with {} messages", unacked.len())
                }
                ClientEvent::Closed | ClientEvent::GaveUp { .. } => break,
                _ => {}
            }
        }
        disconnects
    });
    let start = Instant::now();
    let mut cuts = 0;
    while received.lock().unwrap().len() < N as usize {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "{} of {N} after {cuts} cuts",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        if cuts < 6 && proxy.cut_all(Fault::Rst) > 0 {
            cuts += 1;
        }
    }
    timeout(DEADLINE, sending).await.unwrap().unwrap();
    // Let any duplicate show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = received.lock().unwrap().clone();
    let distinct: HashSet<u32> = got.iter().copied().collect();
    assert_eq!(got.len(), N as usize, "duplicates delivered");
    assert_eq!(distinct.len(), N as usize);
    assert!(cuts >= 2, "only {cuts} cuts");
    assert!(
        resumed_tls.load(Ordering::SeqCst) >= 1,
        "no reconnect resumed its TLS session"
    );
    drop(events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_dead_peer_detection_work_over_tls() {
    let s = setup();
    let protocol = Protocol::Framelink(ConnectionConfig {
        ping_interval: Some(Duration::from_millis(200)),
        ping_timeout: Duration::from_millis(1_500),
        ..ConnectionConfig::default()
    });
    let (addr, _handle, _accepted) = echo_server(ServerConfig {
        protocol: protocol.clone(),
        tls: Some(server_tls(&s.server, ClientAuth::Off)),
        ..ServerConfig::default()
    })
    .await;
    let proxy = ChaosProxy::start("127.0.0.1:0", addr, ChaosConfig::default())
        .await
        .unwrap();
    let mut client = Client::connect(
        format!("localhost:{}", proxy.local_addr().port()),
        ClientConfig {
            protocol,
            backoff: one_try(),
            tls: Some(client_tls(&s.ca, None)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Round trips are measured: PING and PONG cross TLS.
    let mut rtts = 0;
    while rtts < 3 {
        match timeout(DEADLINE, client.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            ClientEvent::Rtt(_) => rtts += 1,
            ClientEvent::Disconnected(info) => panic!("{info}"),
            _ => {}
        }
    }
    // The peer vanishes: declared dead by the heartbeat.
    proxy.cut_all(Fault::Blackhole);
    let cut_at = Instant::now();
    let info = loop {
        if let ClientEvent::Disconnected(info) = timeout(DEADLINE, client.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            break info;
        }
    };
    assert!(
        matches!(
            info.error,
            Some(ConnectionError::PeerDead {
                cause: DeathCause::PingTimeout { .. } | DeathCause::PeerSilent { .. },
                ..
            })
        ),
        "{info}"
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(20),
        "{:?}",
        cut_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stalling_in_the_handshake_is_evicted_without_blocking_others() {
    let s = setup();
    let bound = Duration::from_millis(800);
    let mut tls = server_tls(&s.server, ClientAuth::Off);
    tls.handshake_timeout = bound;
    let (addr, handle, _accepted) = echo_server(ServerConfig {
        tls: Some(tls),
        ..ServerConfig::default()
    })
    .await;
    // Connects and says nothing.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stalled_at = Instant::now();
    // Meanwhile another client gets through (the accept loop does not wait for handshakes).
    let mut client = Client::connect(
        format!("localhost:{}", addr.port()),
        ClientConfig {
            tls: Some(client_tls(&s.ca, None)),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    echo_roundtrip(&mut client, &[3]).await;
    let mut buf = [0u8; 64];
    let read = timeout(DEADLINE, stalled.read(&mut buf)).await.unwrap();
    let evicted_after = stalled_at.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(evicted_after >= bound / 2, "{evicted_after:?}");
    assert!(
        evicted_after < bound + Duration::from_secs(10),
        "{evicted_after:?}"
    );
    tls_failures(&handle, 1).await;
    assert_eq!(handle.stats().live, 1, "only the good client is left");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_tls_client_talks_to_a_raw_mode_tls_server() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 not found: skipped");
        return;
    }
    let s = setup();
    let framing: Framing = "lines".parse().unwrap();
    let (addr, _handle, _accepted) = echo_server(ServerConfig {
        protocol: Protocol::Raw(Box::new(RawConfig::new(framing))),
        tls: Some(server_tls(&s.server, ClientAuth::Off)),
        ..ServerConfig::default()
    })
    .await;
    let script = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"hello over tls\nsecond line\n")
        got = b""
        while got.count(b"\n") < 2:
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        print(tls.version(), got.decode().replace("\n", "|"))
"#;
    let ca = s.ca.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(addr.port().to_string())
            .arg(ca)
            .output()
    });
    let output = timeout(DEADLINE, output).await.unwrap().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("TLSv1.3"), "{stdout}");
    assert!(stdout.contains("hello over tls|second line|"), "{stdout}");
}
