//! `framelink proxy` as a user runs it: a real process between a test client and an in-test
//! echo server over loopback TCP. Every child process is killed when its guard drops (also
//! when an assertion fails), and every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use common::{framelink, Proc, PATIENCE};

/// An echo server on a free port, one thread per connection.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Starts `framelink proxy 127.0.0.1:0 UPSTREAM EXTRA...`; returns it and its address.
fn proxy(upstream: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["proxy", "127.0.0.1:0", upstream];
    args.extend_from_slice(extra);
    let proc = framelink(&args);
    let err = proc.wait_stderr("listening line", |e| e.contains('\n'));
    let addr = proc.listening_addr();
    let first = err.lines().next().unwrap();
    assert!(
        first.ends_with(&format!("-> {upstream} (seed 7)")),
        "{first}"
    );
    (proc, addr)
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

#[test]
fn proxy_forwards_an_echo_round_trip_in_small_pieces() {
    let upstream = echo_server();
    let (proxy, addr) = proxy(&upstream, &["--split", "1..3", "--seed", "7"]);
    let mut client = connect(&addr);
    let message: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&message).unwrap();
    let mut echoed = vec![0u8; message.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, message);
    drop(client);

    let err = proxy.wait_stderr("-conn line", |e| e.contains("-conn #0"));
    assert!(err.contains("[proxy] chaos: split 1..3 bytes"), "{err}");
    assert!(err.contains("[proxy] +conn #0 from 127.0.0.1:"), "{err}");
    assert!(
        err.contains("-conn #0 closed (2000 bytes up, 2000 bytes down)"),
        "{err}"
    );
}

#[test]
fn proxy_cuts_at_a_byte_count_and_reports_it() {
    let upstream = echo_server();
    let (mut proxy, addr) = proxy(
        &upstream,
        &[
            "--cut-at",
            "10",
            "--fault",
            "fin",
            "--seed",
            "7",
            "--max-duration",
            "2s",
        ],
    );
    let mut client = connect(&addr);
    client.write_all(b"hello, world").unwrap();
    // 10 bytes forwarded in all (normally "hello, wor" upstream), then FIN both ways.
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert!(
        got.len() < 10 && b"hello, world".starts_with(&got),
        "{got:?}"
    );
    let err = proxy.wait_stderr("fault line", |e| e.contains("fault:"));
    assert!(
        err.contains("[proxy] #0 fault: fin after 10 bytes"),
        "{err}"
    );
    drop(client);
    let status = proxy.wait(PATIENCE);
    let err = proxy.stderr();
    assert!(status.success(), "{status}\n{err}");
    assert!(
        err.contains("--max-duration reached: 1 connection(s)"),
        "{err}"
    );
    assert!(err.contains("faults: 1 fin, 0 rst"), "{err}");
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["proxy", "127.0.0.1:0", "127.0.0.1:1", "--split", "0..3"][..],
        &["proxy", "127.0.0.1:0", "127.0.0.1:1", "--fault", "rst"],
        &[
            "proxy",
            "127.0.0.1:0",
            "127.0.0.1:1",
            "--cut-every",
            "1KiB",
            "--cut-at",
            "10",
        ],
        &["proxy", "127.0.0.1:0", "127.0.0.1:1", "--cut-every", "0"],
    ] {
        let mut proc = framelink(args);
        let status = proc.wait(PATIENCE);
        assert_eq!(status.code(), Some(2), "{args:?}\n{}", proc.stderr());
    }
}
