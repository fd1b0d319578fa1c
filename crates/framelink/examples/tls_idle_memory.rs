//! The memory an idle connection costs, plain or over TLS: opens N framelink connections to a
//! server in the same process (so each connection counts both its ends), waits until every
//! one is open and quiet, and reports the growth of the resident set size per connection.
//!
//! ```text
//! cargo run --release -p framelink --example tls_idle_memory -- plain 2000
//! cargo run --release -p framelink --example tls_idle_memory -- tls 2000
//! ```
//!
//! Run each mode in its own process (as above): memory the allocator keeps from one mode
//! would hide the other's. Linux only (reads `/proc/self/statm`).

use std::time::Duration;

use framelink::connection::{self, ConnectionConfig};
use framelink::tls::{TlsClientOptions, TlsServerOptions};
use framelink::{Connection, Event, Server, ServerConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Resident set size in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in /proc/self/statm");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).unwrap_or(4096)
}

/// Writes a CA and a localhost server certificate; returns (ca, cert, key) paths.
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "idle memory example CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "plain".to_owned());
    let n: usize = args
        .next()
        .map_or(1000, |n| n.parse().expect("N: a number"));
    let tls = match mode.as_str() {
        "plain" => false,
        "tls" => true,
        other => panic!("mode: plain or tls, not {other:?}"),
    };
    let dir = std::env::temp_dir().join(format!("framelink-idle-{}", std::process::id()));
    let (ca, cert, key) = certificates(&dir);
    let server_tls = TlsServerOptions::new(&cert, &key).build().unwrap();
    let client_tls = TlsClientOptions::with_ca_file(&ca).build().unwrap();
    std::fs::remove_dir_all(&dir).ok();

    let mut server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            max_connections_per_ip: usize::MAX,
            tls: tls.then(|| server_tls.clone()),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let accepted = tokio::spawn(async move {
        let mut kept = Vec::new();
        while kept.len() < n {
            kept.push(server.accept().await.expect("server running").connection);
        }
        (server, kept)
    });
    // One connection first, so that one-time allocations (runtime, TLS setup) are not counted.
    let warm = open(addr, tls.then_some(&client_tls)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    let mut clients = Vec::with_capacity(n);
    for _ in 1..n {
        clients.push(open(addr, tls.then_some(&client_tls)).await);
    }
    let (_server, _kept) = accepted.await.unwrap();
    // Quiet: handshakes done, buffers released by idle drivers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    let per = (after.saturating_sub(before)) as f64 / (n - 1) as f64;
    println!(
        "{mode}: {n} idle connections (both ends in this process): RSS {:.1} MiB -> {:.1} MiB, \
         {:.0} bytes per connection (both ends), {:.0} per end",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per,
        per / 2.0
    );
    drop((warm, clients));
}

/// A protocol connection to `addr`, open (HELLOs exchanged).
async fn open(
    addr: std::net::SocketAddr,
    tls: Option<&framelink::tls::TlsClientConfig>,
) -> Connection {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut connection = match tls {
        Some(tls) => {
            let stream = framelink::tls::connect(stream, tls, "localhost")
                .await
                .unwrap();
            connection::spawn(stream, ConnectionConfig::default()).unwrap()
        }
        None => connection::spawn(stream, ConnectionConfig::default()).unwrap(),
    };
    match connection.next_event().await {
        Some(Event::Connected { .. }) => connection,
        other => panic!("not connected: {other:?}"),
    }
}
