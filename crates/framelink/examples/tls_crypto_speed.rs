//! What TLS costs per byte on this machine, without sockets or framelink: the upper bound for
//! `framelink bench --tls` at large messages.
//!
//! ```text
//! cargo run --release -p framelink --example tls_crypto_speed
//! ```
//!
//! Single-threaded, one line per measurement, in MB/s of plaintext per second of this thread's
//! CPU time (so that a busy machine slows the figures less):
//!
//! - `memcpy`: copying 64 KiB (what a user-space copy costs), at three relative alignments of
//!   source and destination, in one call and in 2 KiB pieces: on AMD Zen 3 / Zen 4 with glibc
//!   before 2.39, one call is 15-20x slower when the destination sits 1 to 31 bytes past the
//!   source modulo 4096 (see `put_in_pieces` in `src/tls.rs`).
//! - `ring seal` / `ring open`: ring's AEAD alone over 16 KiB TLS records, in place.
//! - `rustls`: a rustls client and server connected in memory, the client writing 64 KiB
//!   messages and the server reading them back out: one seal, one open and rustls' copies per
//!   byte, i.e. one direction of one hop. An echo over TLS does this twice per message.
//! - `rustls unbuffered`: the same over rustls' unbuffered API (`UnbufferedClientConnection`
//!   encrypting each message into one output buffer, `UnbufferedServerConnection` decrypting it
//!   where it lies and the plaintext copied out record by record), to compare the two APIs'
//!   costs. In rustls 0.23 the unbuffered API still copies: each record's plaintext into a
//!   fresh `Vec` before `ReadTraffic::next_record` lends it, and each outgoing record into a
//!   fresh `Vec` before copying it into the caller's buffer.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::UnbufferedClientConnection;
use rustls::crypto::{ring as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConnection, RootCertStore, ServerConnection, SupportedCipherSuite};

const MEASURE: Duration = Duration::from_millis(1500);
const RECORD: usize = 16 * 1024;
const MESSAGE: usize = 64 * 1024;

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// CPU time used by this thread: unlike wall time, it does not count the time other processes
/// of a busy machine took the core.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `step` (which handles `bytes` bytes) for about [`MEASURE`] of this thread's CPU time;
/// MB/s per second of CPU.
fn measure(bytes: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..16 {
        step();
    }
    let start = thread_cpu();
    let mut done = 0u64;
    while thread_cpu() - start < MEASURE {
        for _ in 0..16 {
            step();
        }
        done += 16 * bytes as u64;
    }
    mb_per_s(done, thread_cpu() - start)
}

/// Copies 64 KiB with the destination `skew` bytes past the source modulo 4096, in one call or
/// in 2 KiB pieces.
fn memcpy(skew: usize, pieces: bool) -> f64 {
    let from = vec![7u8; MESSAGE + 8192];
    let mut to = vec![0u8; MESSAGE + 8192];
    let src = (4096 - from.as_ptr() as usize % 4096) % 4096;
    let dst = (4096 - to.as_ptr() as usize % 4096 + skew) % 4096;
    measure(MESSAGE, || {
        let from = std::hint::black_box(&from[src..src + MESSAGE]);
        let to = &mut to[dst..dst + MESSAGE];
        if pieces {
            for (to, from) in to.chunks_mut(2048).zip(from.chunks(2048)) {
                to.copy_from_slice(from);
            }
        } else {
            to.copy_from_slice(from);
        }
        std::hint::black_box(to);
    })
}

fn ring_aead(alg: &'static aead::Algorithm) -> (f64, f64) {
    let key_bytes = vec![1u8; alg.key_len()];
    let key = LessSafeKey::new(UnboundKey::new(alg, &key_bytes).unwrap());
    let nonce = || Nonce::assume_unique_for_key([0u8; 12]);
    let mut record = vec![0u8; RECORD];
    let seal = measure(RECORD, || {
        let tag = key
            .seal_in_place_separate_tag(nonce(), Aad::from([23u8; 5]), &mut record)
            .unwrap();
        let _ = std::hint::black_box(tag);
    });
    let mut sealed = vec![0u8; RECORD];
    let tag = key
        .seal_in_place_separate_tag(nonce(), Aad::from([23u8; 5]), &mut sealed)
        .unwrap();
    sealed.extend_from_slice(tag.as_ref());
    let mut work = sealed.clone();
    let open = measure(RECORD, || {
        // Restored in pieces: a single 16 KiB copy may hit the slow `rep movsb` (see memcpy).
        for (to, from) in work.chunks_mut(2048).zip(sealed.chunks(2048)) {
            to.copy_from_slice(from);
        }
        let plain = key
            .open_in_place(nonce(), Aad::from([23u8; 5]), &mut work)
            .unwrap();
        std::hint::black_box(plain);
    });
    (seal, open)
}

/// A client and a server configuration of `suite`, the client trusting the server.
fn configs(suite: SupportedCipherSuite) -> (rustls::ClientConfig, rustls::ServerConfig) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..provider::default_provider()
    });
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], private)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (client, server)
}

/// A client and a server of `suite` over memory, handshake done.
fn pair(suite: SupportedCipherSuite) -> (ClientConnection, ServerConnection) {
    let (client, server) = configs(suite);
    let mut client =
        ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    client.set_buffer_limit(None);
    server.set_buffer_limit(None);
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    (client, server)
}

fn rustls_one_way(suite: SupportedCipherSuite) -> f64 {
    let (mut client, mut server) = pair(suite);
    let message = vec![5u8; MESSAGE];
    let mut wire = Vec::with_capacity(2 * MESSAGE);
    let mut out = vec![0u8; MESSAGE];
    measure(MESSAGE, || {
        client.writer().write_all(&message).unwrap();
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut input = &wire[..];
        let mut got = 0;
        while !input.is_empty() || got < MESSAGE {
            if !input.is_empty() {
                server.read_tls(&mut input).unwrap();
                server.process_new_packets().unwrap();
            }
            match server.reader().read(&mut out[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        std::hint::black_box(&out);
    })
}

/// Runs an unbuffered connection on the TLS bytes in `inbox` (consuming what it used),
/// appending what it has to send to `outbox`, until it waits for the peer; true once it may
/// send application data.
macro_rules! step_unbuffered {
    ($conn:expr, $inbox:expr, $outbox:expr) => {{
        let mut ready = false;
        loop {
            let status = $conn.process_tls_records(&mut $inbox[..]);
            let discard = status.discard;
            let mut waiting = false;
            match status.state.unwrap() {
                ConnectionState::EncodeTlsData(mut data) => {
                    let mut record = vec![0u8; 64 * 1024];
                    let n = data.encode(&mut record).unwrap();
                    $outbox.extend_from_slice(&record[..n]);
                }
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::BlockedHandshake => waiting = true,
                ConnectionState::WriteTraffic(_) => (ready, waiting) = (true, true),
                other => panic!("unexpected {other:?}"),
            }
            $inbox.drain(..discard);
            if waiting {
                break ready;
            }
        }
    }};
}

fn rustls_unbuffered_one_way(suite: SupportedCipherSuite) -> f64 {
    let (client, server) = configs(suite);
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = UnbufferedClientConnection::new(Arc::new(client), name).unwrap();
    let mut server = UnbufferedServerConnection::new(Arc::new(server)).unwrap();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    loop {
        let client_ready = step_unbuffered!(client, to_client, to_server);
        let server_ready = step_unbuffered!(server, to_server, to_client);
        if client_ready && server_ready && to_server.is_empty() && to_client.is_empty() {
            break;
        }
    }
    let message = vec![5u8; MESSAGE];
    let mut wire = vec![0u8; MESSAGE + 4096];
    let mut out = vec![0u8; MESSAGE];
    measure(MESSAGE, || {
        let end = match client.process_tls_records(&mut []).state.unwrap() {
            ConnectionState::WriteTraffic(mut traffic) => {
                traffic.encrypt(&message, &mut wire).unwrap()
            }
            other => panic!("unexpected {other:?}"),
        };
        let (mut start, mut got) = (0, 0);
        while got < MESSAGE {
            let status = server.process_tls_records(&mut wire[start..end]);
            let discard = status.discard;
            match status.state.unwrap() {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let payload = record.unwrap().payload;
                        out[got..got + payload.len()].copy_from_slice(payload);
                        got += payload.len();
                    }
                }
                ConnectionState::WriteTraffic(_) => assert!(discard > 0, "stuck"),
                other => panic!("unexpected {other:?}"),
            }
            start += discard;
        }
        std::hint::black_box(&out);
    })
}

fn main() {
    println!("single thread, MB/s of plaintext per CPU second");
    for (skew, pieces) in [(0, false), (16, false), (48, false), (16, true)] {
        let how = if pieces {
            "in 2 KiB pieces"
        } else {
            "one call"
        };
        let name = format!("memcpy 64 KiB, dst-src={skew} mod 4096, {how}");
        println!("{name:<48} {:>8.0}", memcpy(skew, pieces));
    }
    for (name, alg) in [
        ("AES-128-GCM", &aead::AES_128_GCM),
        ("AES-256-GCM", &aead::AES_256_GCM),
        ("CHACHA20-POLY1305", &aead::CHACHA20_POLY1305),
    ] {
        let (seal, open) = ring_aead(alg);
        println!(
            "{:<48} {seal:>8.0}",
            format!("ring seal {name}, 16 KiB records")
        );
        println!(
            "{:<48} {open:>8.0}",
            format!("ring open {name}, 16 KiB records")
        );
    }
    for suite in [
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
        provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let name = format!("rustls {:?}, 64 KiB, one way", suite.suite());
        println!("{name:<48} {:>8.0}", rustls_one_way(suite));
        let name = format!("rustls unbuffered {:?}, 64 KiB, one way", suite.suite());
        println!("{name:<48} {:>8.0}", rustls_unbuffered_one_way(suite));
    }
}
