//! `framelink serve` and `framelink connect` as a user runs them: real processes over loopback
//! TCP. Every child process is killed when its guard drops (also when an assertion fails), and
//! every wait is bounded.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{framelink, serve, PATIENCE};

/// A port where nothing listens (bound, then released).
fn closed_port_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

#[test]
fn connect_sends_stdin_lines_and_prints_the_echoes() {
    let (server, addr) = serve(&[]);
    let mut client = framelink(&["connect", &addr]);
    client.write(b"a\nb\nc\n");
    client.close_stdin();
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert!(status.success(), "{status}\n{err}");
    assert_eq!(client.stdout(), "a\nb\nc\n", "{err}");
    assert!(
        err.contains(&format!("connected to {addr} (attempt 1)")),
        "{err}"
    );
    assert!(err.contains("end of input"), "{err}");
    assert!(err.contains("closed"), "{err}");

    let err = server.wait_stderr("-conn line", |e| e.contains("-conn #0"));
    assert!(err.contains("+conn #0 127.0.0.1:"), "{err}");
    assert!(err.contains("(live 1)"), "{err}");
    assert!(
        err.contains("-conn #0 closed: peer closed with Normal"),
        "{err}"
    );
    assert!(err.contains("(3 messages, 3 bytes in, 3 echoed)"), "{err}");
}

#[test]
fn formats_hex_input_and_sink_mode() {
    let (server, addr) = serve(&["--sink"]);
    let mut client = framelink(&["connect", &addr, "--input-format", "hex", "--eof-wait", "0"]);
    client.write(b"00ff\n6869\n");
    client.close_stdin();
    let status = client.wait(PATIENCE);
    assert!(status.success(), "{}", client.stderr());
    assert_eq!(client.stdout(), "", "a sink echoes nothing");
    let err = server.wait_stderr("-conn line", |e| e.contains("-conn #0"));
    assert!(err.contains("(2 messages, 4 bytes in)"), "{err}");

    // An echo server, hex and JSON output.
    let (_server, addr) = serve(&["--quiet"]);
    for (format, expected) in [
        ("hex", "00ff\n6869\n".to_string()),
        (
            "json",
            "{\"hex\":\"00ff\",\"index\":0,\"length\":2}\n\
             {\"hex\":\"6869\",\"index\":1,\"length\":2,\"text\":\"hi\"}\n"
                .to_string(),
        ),
        ("text", "\\x00\\xff\nhi\n".to_string()),
    ] {
        let mut client = framelink(&[
            "connect",
            &addr,
            "--input-format",
            "hex",
            "--format",
            format,
            "-q",
        ]);
        client.write(b"00ff\n6869\n");
        client.close_stdin();
        let status = client.wait(PATIENCE);
        assert!(status.success(), "{format}: {}", client.stderr());
        assert_eq!(client.stdout(), expected, "{format}");
        assert_eq!(client.stderr(), "", "{format}: --quiet");
    }
}

#[test]
fn heartbeats_report_rtt() {
    let (_server, addr) = serve(&[]);
    let mut client = framelink(&["connect", &addr, "--ping-interval", "100ms", "-v"]);
    // Stdin stays open: the connection is quiet, so the client pings every ~100 ms.
    let err = client.wait_stderr("3 rtt lines", |e| e.matches("] rtt ").count() >= 3);
    assert!(err.contains("(srtt "), "{err}");
    assert!(!err.contains("disconnected"), "{err}");
    client.close_stdin();
    let status = client.wait(PATIENCE);
    assert!(status.success(), "{}", client.stderr());
}

#[test]
fn reconnect_gives_up_after_max_attempts() {
    let addr = closed_port_addr();
    let started = Instant::now();
    let mut client = framelink(&[
        "connect",
        &addr,
        "--max-attempts",
        "3",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "50ms",
    ]);
    // Stdin stays open: giving up alone ends the process.
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.matches("failed: ").count(), 3, "{err}");
    for n in 1..=3 {
        assert!(err.contains(&format!("attempt {n} failed: ")), "{err}");
    }
    assert!(err.contains("reconnecting: attempt 2 in "), "{err}");
    assert!(err.contains("reconnecting: attempt 3 in "), "{err}");
    assert!(
        err.contains("gave up after 3 attempts: 3 could not connect"),
        "{err}"
    );
    // Two delays of at most 10 ms and 20 ms: nowhere near the 100 ms default.
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");

    let mut client = framelink(&["connect", &addr, "--no-reconnect"]);
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.matches("failed: ").count(), 1, "{err}");
    assert!(err.contains("gave up"), "{err}");
}

/// A line-framed server that does not speak framelink: answers `PING` with `PONG`, echoes other
/// lines, and closes any connection on which nothing arrived for `idle`.
struct LineServer {
    addr: String,
    accepted: Arc<AtomicUsize>,
    pings: Arc<AtomicUsize>,
    idle_closes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl LineServer {
    fn start(idle: Duration) -> LineServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = LineServer {
            addr: listener.local_addr().unwrap().to_string(),
            accepted: Arc::default(),
            pings: Arc::default(),
            idle_closes: Arc::default(),
            stop: Arc::default(),
        };
        let (accepted, pings, idle_closes, stop) = (
            server.accepted.clone(),
            server.pings.clone(),
            server.idle_closes.clone(),
            server.stop.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let (pings, idle_closes) = (pings.clone(), idle_closes.clone());
                        thread::spawn(move || serve_lines(socket, idle, &pings, &idle_closes));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        server
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_lines(socket: TcpStream, idle: Duration, pings: &AtomicUsize, idle_closes: &AtomicUsize) {
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(idle)).unwrap();
    let mut writer = socket.try_clone().unwrap();
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line == "PING\n" => {
                pings.fetch_add(1, Ordering::Relaxed);
                if writer.write_all(b"PONG\n").is_err() {
                    break;
                }
            }
            Ok(_) => {
                if writer.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
            Err(_) => {
                // Idle for too long (read timeout): close, as a server with an idle timeout does.
                idle_closes.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

#[test]
fn raw_mode_pings_keep_a_connection_to_a_server_that_closes_idle_ones() {
    let server = LineServer::start(Duration::from_millis(500));
    let mut client = framelink(&[
        "connect",
        &server.addr,
        "--framing",
        "line",
        "--ping",
        "PING",
        "--pong",
        "PONG",
        "--ping-interval",
        "150ms",
        "--no-reconnect",
        "-v",
    ]);
    client.wait_stderr("connected", |e| e.contains("connected to"));
    client.write(b"hello\n");
    // Four times the server's idle timeout, with nothing to send but pings.
    thread::sleep(Duration::from_secs(2));
    let err = client.stderr();
    assert!(client.is_running(), "{err}");
    assert!(!err.contains("disconnected"), "{err}");
    assert!(err.contains("] rtt "), "pongs give RTT samples: {err}");
    assert_eq!(server.accepted.load(Ordering::Relaxed), 1, "{err}");
    assert_eq!(server.idle_closes.load(Ordering::Relaxed), 0, "{err}");
    assert!(server.pings.load(Ordering::Relaxed) >= 3, "{err}");

    client.close_stdin();
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert!(status.success(), "{status}\n{err}");
    // The echo is delivered; the pongs are heartbeats, not messages.
    assert_eq!(client.stdout(), "hello\n", "{err}");
    let eof = err.find("end of input").expect("end of input reported");
    assert!(!err[..eof].contains("disconnected"), "{err}");
    assert_eq!(server.accepted.load(Ordering::Relaxed), 1, "{err}");
}

#[test]
fn raw_mode_without_pings_is_closed_by_an_idle_timeout() {
    // The negative control: the same client and server, no ping.
    let server = LineServer::start(Duration::from_millis(500));
    let started = Instant::now();
    let mut client = framelink(&[
        "connect",
        &server.addr,
        "--framing",
        "line",
        "--no-reconnect",
    ]);
    // Stdin stays open: only the server's idle close ends the connection.
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("connected to"), "{err}");
    // A raw peer closes by ending the stream: said so, with no protocol CLOSE code.
    assert!(
        err.contains("disconnected: peer closed the connection (end of stream)"),
        "{err}"
    );
    assert!(err.contains("not reconnecting"), "{err}");
    assert!(!err.contains("end of input"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(400), "{err}");
    assert_eq!(server.idle_closes.load(Ordering::Relaxed), 1, "{err}");
}

#[test]
fn raw_serve_answers_pings_and_echoes_frames() {
    let (_server, addr) = serve(&["--framing", "length:2", "--answer", "PING=PONG", "-q"]);
    let mut client = framelink(&[
        "connect",
        &addr,
        "-f",
        "length:2",
        "--ping",
        "hex:50494e47",
        "--pong",
        "PONG",
        "--ping-interval",
        "50ms",
        "-v",
    ]);
    client.write(b"one\n");
    client.wait_stderr("2 rtt lines", |e| e.matches("] rtt ").count() >= 2);
    client.close_stdin();
    let status = client.wait(PATIENCE);
    assert!(status.success(), "{}", client.stderr());
    assert_eq!(client.stdout(), "one\n");
}

#[test]
fn serve_max_duration_closes_clients_with_going_away() {
    let (mut server, addr) = serve(&["--max-duration", "3s"]);
    let mut client = framelink(&["connect", &addr, "--no-reconnect"]);
    // Stdin stays open: the server's shutdown ends the connection.
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("connected to"), "{err}");
    assert!(
        err.contains("disconnected: peer closed with GoingAway (\"server shutting down\")"),
        "{err}"
    );
    let status = server.wait(PATIENCE);
    let err = server.stderr();
    assert!(status.success(), "{err}");
    assert!(err.contains("--max-duration reached"), "{err}");
    assert!(
        err.contains("shutdown: 1 open, 1 closed gracefully, 0 aborted"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn serve_shuts_down_gracefully_on_ctrl_c() {
    let (mut server, addr) = serve(&[]);
    let mut client = framelink(&["connect", &addr, "--max-attempts", "1"]);
    client.wait_stderr("connected", |e| e.contains("connected to"));
    server.wait_stderr("+conn", |e| e.contains("+conn #0"));
    server.interrupt();
    let status = server.wait(PATIENCE);
    let err = server.stderr();
    assert_eq!(status.code(), Some(0), "{status}\n{err}");
    assert!(err.contains("interrupted: shutting down"), "{err}");
    assert!(
        err.contains("-conn #0 closed: we closed with GoingAway"),
        "{err}"
    );
    assert!(
        err.contains("shutdown: 1 open, 1 closed gracefully"),
        "{err}"
    );
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("peer closed with GoingAway"), "{err}");
    assert!(
        err.contains("gave up after 1 attempt: 1 connected but was lost within 5 s"),
        "{err}"
    );
}

#[test]
fn serve_idle_timeout_evicts_quiet_clients() {
    let (_server, addr) = serve(&["--idle-timeout", "300ms"]);
    let mut client = framelink(&[
        "connect",
        &addr,
        "--ping-interval",
        "50ms",
        "--no-reconnect",
    ]);
    // Heartbeats flow, but no message: evicted.
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("disconnected: peer closed with Idle"), "{err}");
}

#[test]
fn serve_idle_timeout_evicts_quiet_raw_clients_despite_heartbeats() {
    let (_server, addr) = serve(&[
        "-f",
        "line",
        "--answer",
        "PING=PONG",
        "--idle-timeout",
        "300ms",
    ]);
    let mut client = framelink(&[
        "connect",
        &addr,
        "-f",
        "line",
        "--ping",
        "PING",
        "--pong",
        "PONG",
        "--ping-interval",
        "50ms",
        "--no-reconnect",
        "-v",
    ]);
    // Pings are answered (RTT samples), but no message flows: the server closes the socket.
    let status = client.wait(PATIENCE);
    let err = client.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("rtt"), "heartbeats were answered: {err}");
    assert!(err.contains("disconnected"), "{err}");
}

#[test]
fn bad_options_are_usage_errors() {
    for (args, message) in [
        (
            &["connect", "127.0.0.1:1", "--ping", "PING"][..],
            "--framing",
        ),
        (
            &["connect", "127.0.0.1:1", "--ping-interval", "5"][..],
            "bad duration \"5\"",
        ),
        (
            &["connect", "127.0.0.1:1", "-f", "line", "--ping", "P\nNG"][..],
            "cannot be encoded",
        ),
        (
            &[
                "connect",
                "127.0.0.1:1",
                "-f",
                "line",
                "--ping",
                "P",
                "--ping-interval",
                "off",
            ][..],
            "ping_interval is None",
        ),
        (
            &[
                "connect",
                "127.0.0.1:1",
                "-f",
                "line",
                "--pong",
                "A",
                "--pong-any",
            ][..],
            "cannot be used with",
        ),
    ] {
        let mut p = framelink(args);
        let status = p.wait(PATIENCE);
        let err = p.stderr();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn help_explains_serve_and_connect() {
    let mut p = framelink(&["--help"]);
    assert!(p.wait(PATIENCE).success());
    let out = p.stdout();
    for needle in ["serve", "connect", "raw mode", "--framing", "Durations"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let mut p = framelink(&["connect", "--help"]);
    assert!(p.wait(PATIENCE).success());
    let out = p.stdout();
    for needle in [
        "--ping-interval",
        "--pong-prefix",
        "--no-reconnect",
        "--eof-wait",
        "hex:",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
}

/// An echo the client can never take (over the `max_message_len` its HELLO announced) is
/// reported on stderr and skipped; the echoes after it, in the same batch, still go.
#[test]
fn serve_skips_an_echo_the_client_cannot_take_and_echoes_the_rest() {
    use framelink::proto::connection::{Connection, ConnectionConfig, Event};
    use framelink::proto::machine::Machine;
    use std::io::Read;
    let (server, addr) = serve(&[]);
    let mut socket = TcpStream::connect(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let config = ConnectionConfig {
        max_message_len: 4096,
        ..ConnectionConfig::default()
    };
    let mut machine = Connection::new(config, Instant::now()).unwrap();
    // Queued before the handshake: the server reads all three in one go.
    for payload in [&b"a"[..], &[7u8; 5000][..], &b"b"[..]] {
        machine
            .send(bytes::Bytes::copy_from_slice(payload), Instant::now())
            .unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + PATIENCE;
    while got.len() < 2 && Instant::now() < deadline {
        while let Some(out) = machine.poll_transmit(Instant::now()) {
            socket.write_all(&out).unwrap();
        }
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => machine.handle_input(&buf[..n], Instant::now()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
        while let Some(event) = machine.poll_event() {
            if let Event::Data(m) = event {
                got.push(m);
            }
        }
    }
    assert_eq!(got, [&b"a"[..], &b"b"[..]]);
    server.wait_stderr("the skipped echo", |e| {
        e.contains("echo of 5000 bytes not sent")
    });
}
