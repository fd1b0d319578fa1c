//! `framelink serve --sessions` and `framelink connect --sessions` as a user runs them: real
//! processes over loopback TCP, through `framelink proxy` cutting the link. Every child process
//! is killed when its guard drops (also when an assertion fails), and every wait is bounded.

mod common;

use std::time::Duration;

use common::{framelink, serve, Proc, PATIENCE};

/// Bound for a whole transfer through a proxy that keeps cutting the link (a few seconds
/// normally; generous for a busy machine).
const TRANSFER: Duration = Duration::from_secs(90);

/// Starts `framelink proxy 127.0.0.1:0 UPSTREAM EXTRA...`; returns it and its address.
fn proxy(upstream: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["proxy", "127.0.0.1:0", upstream];
    args.extend_from_slice(extra);
    let proc = framelink(&args);
    let addr = proc.listening_addr();
    (proc, addr)
}

/// `line 00001\n` ... `line {n}\n`.
fn numbered_lines(n: usize) -> String {
    (1..=n).map(|i| format!("line {i:05}\n")).collect()
}

/// The session id (32 hex digits) in the first `session HEX` of `stderr`.
fn session_id(stderr: &str) -> String {
    let id = stderr
        .split("session ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no session id in:\n{stderr}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?} in:\n{stderr}"
    );
    id.to_string()
}

/// `lines` numbered lines through a proxy that cuts the link with `fault` about every 8 KiB:
/// every echo is printed exactly once, in order, and the session was resumed.
fn echoes_survive_cuts(fault: &str, lines: usize) {
    let (server, server_addr) = serve(&["--sessions"]);
    let (proxy, proxy_addr) = proxy(
        &server_addr,
        &["--cut-every", "8KiB", "--fault", fault, "--seed", "7", "-q"],
    );
    let mut client = framelink(&[
        "connect",
        &proxy_addr,
        "--sessions",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "100ms",
        "--eof-wait",
        "200ms",
    ]);
    let input = numbered_lines(lines);
    client.write(input.as_bytes());
    // Stdin stays open until every echo is in: the end of input cannot cut the transfer short.
    client.wait_stdout("echo of every line", TRANSFER, |out| {
        out.matches('\n').count() >= lines
    });
    client.close_stdin();
    let status = client.wait(PATIENCE);
    let out = client.stdout();
    let err = client.stderr();
    assert!(status.success(), "{status}\n{err}");
    // Exactly once and in order: nothing missing, duplicated or moved.
    if out != input {
        let got: Vec<&str> = out.lines().collect();
        let first_wrong = got
            .iter()
            .zip(input.lines())
            .position(|(g, w)| g != &w)
            .unwrap_or(got.len().min(lines));
        panic!(
            "{} lines printed for {lines}; first difference at line {}: {:?}\n{err}",
            got.len(),
            first_wrong + 1,
            got.get(first_wrong)
        );
    }

    let faults = proxy.stderr().matches(&format!("fault: {fault}")).count();
    assert!(
        faults >= 3,
        "only {faults} cuts:\n{}\n{err}",
        proxy.stderr()
    );
    let id = session_id(&err);
    assert!(err.contains(&format!("session {id} new")), "{err}");
    assert!(
        err.contains(&format!("session {id} resumed: resending ")),
        "{err}"
    );
    assert!(!err.contains(" lost"), "{err}");
    let server_err = server.stderr();
    assert!(
        server_err.contains(&format!("session {id} resumed, resending ")),
        "{server_err}"
    );
}

#[test]
fn sessions_deliver_every_echo_once_in_order_across_rst_cuts() {
    echoes_survive_cuts("rst", 2000);
}

#[test]
fn sessions_deliver_every_echo_once_in_order_across_fin_cuts() {
    echoes_survive_cuts("fin", 1000);
}

#[test]
fn serve_reports_a_session_whose_client_never_comes_back() {
    let (server, addr) = serve(&["--sessions", "--session-ttl", "300ms", "-v"]);
    let err = server.wait_stderr("listening line", |e| e.contains('\n'));
    assert!(
        err.contains("sessions kept 300ms for their client, at most 10000 detached"),
        "{err}"
    );
    let mut client = framelink(&["connect", &addr, "--sessions"]);
    client.write(b"one\ntwo\n");
    client.wait_stdout("echoes", PATIENCE, |out| out == "one\ntwo\n");
    let err = server.wait_stderr("session line", |e| e.contains("#0 session "));
    let id = session_id(&err);
    assert!(
        err.contains(&format!("[serve] #0 session {id} new")),
        "{err}"
    );
    // Killed: no CLOSE, so the session is kept for the client, which never comes back.
    drop(client);
    let err = server.wait_stderr("lost session", |e| e.contains("lost session"));
    let line = err
        .lines()
        .find(|l| l.contains("lost session"))
        .unwrap()
        .to_string();
    assert!(
        line.starts_with(&format!("[serve] lost session {id}: expired, ")),
        "{err}"
    );
    assert!(
        line.ends_with("unacknowledged messages handed back")
            || line.ends_with("1 unacknowledged message handed back"),
        "{err}"
    );
    assert!(
        err.contains("-conn #0 closed: peer ended the stream without CLOSE"),
        "{err}"
    );
}

#[test]
fn connect_reports_a_session_the_server_no_longer_has() {
    let (server, addr) = serve(&["--sessions"]);
    let mut client = framelink(&[
        "connect",
        &addr,
        "--sessions",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "50ms",
    ]);
    client.write(b"before\n");
    client.wait_stdout("first echo", PATIENCE, |out| out == "before\n");
    let id = session_id(&client.stderr());
    // The server goes away without a word, and a new one (without the session) takes its place.
    drop(server);
    client.wait_stderr("disconnect", |e| e.contains("disconnected"));
    let server = framelink(&["serve", &addr, "--sessions"]);
    assert_eq!(server.listening_addr(), addr);
    let err = client.wait_stderr("unknown session", |e| e.contains("unknown to the server"));
    assert!(
        err.contains(&format!(
            "session {id} unknown to the server (expired, or the server restarted): started anew"
        )),
        "{err}"
    );
    client.write(b"after\n");
    client.wait_stdout("second echo", PATIENCE, |out| out == "before\nafter\n");
    client.close_stdin();
    let status = client.wait(PATIENCE);
    assert!(status.success(), "{status}\n{}", client.stderr());
}

#[test]
fn sessions_are_refused_in_raw_mode_and_their_options_need_them() {
    for args in [
        &["serve", "127.0.0.1:0", "--sessions", "--framing", "line"][..],
        &["connect", "127.0.0.1:1", "--sessions", "-f", "length:4"],
    ] {
        let mut p = framelink(args);
        let status = p.wait(PATIENCE);
        let err = p.stderr();
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("'--sessions' cannot be used with '--framing <SPEC>'"),
            "{args:?}: {err}"
        );
    }
    for args in [
        &["serve", "127.0.0.1:0", "--session-ttl", "1s"][..],
        &["serve", "127.0.0.1:0", "--max-detached", "5"],
        &["serve", "127.0.0.1:0", "--sessions", "--session-ttl", "0"],
        &["serve", "127.0.0.1:0", "--sessions", "--max-detached", "0"],
    ] {
        let mut p = framelink(args);
        let status = p.wait(PATIENCE);
        assert_eq!(status.code(), Some(2), "{args:?}: {}", p.stderr());
    }
}

#[test]
fn help_explains_sessions() {
    let mut p = framelink(&["serve", "--help"]);
    assert!(p.wait(PATIENCE).success());
    let out = p.stdout();
    for needle in [
        "--sessions",
        "--session-ttl",
        "--max-detached",
        "framelink serve 127.0.0.1:7000 --sessions",
        "lost session",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let mut p = framelink(&["connect", "--help"]);
    assert!(p.wait(PATIENCE).success());
    let out = p.stdout();
    for needle in [
        "--sessions",
        "framelink connect 127.0.0.1:7000 --sessions",
        "resumed",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
}

/// A session peer that sends and never acknowledges the server's echoes (it reads and drops
/// them) cannot make `serve --sessions` buffer without bound: once the session's buffer and
/// its echo feed are full, the server stops reading and the peer's writes stall.
#[test]
fn a_peer_that_never_acknowledges_echoes_is_held_back() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use framelink::proto::connection::{Connection, ConnectionConfig, Event};
    use framelink::proto::machine::Machine;
    use framelink::proto::session::{Session, SessionConfig};

    let (_server, addr) = serve(&["--sessions", "-q"]);
    let mut socket = TcpStream::connect(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    // The handshake and the session's start, by the protocol machine.
    let config = ConnectionConfig {
        sessions: Some(SessionConfig::default()),
        ..ConnectionConfig::default()
    };
    let mut machine =
        Connection::with_session(config, Session::new(rand::random()), Instant::now()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 64 * 1024];
    'handshake: loop {
        assert!(Instant::now() < deadline, "no session started");
        while let Some(bytes) = machine.poll_transmit(Instant::now()) {
            socket.write_all(&bytes).unwrap();
        }
        while let Some(event) = machine.poll_event() {
            if matches!(event, Event::SessionStarted { .. }) {
                break 'handshake;
            }
        }
        match socket.read(&mut buf) {
            Ok(0) => panic!("the server closed during the handshake"),
            Ok(n) => machine.handle_input(&buf[..n], Instant::now()),
            Err(_) => machine.handle_timeout(Instant::now()),
        }
    }
    // From here on: SDATA 1, 2, 3... written by hand; what the server sends is read and dropped,
    // so it is never acknowledged.
    let mut reader = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = vec![0u8; 256 * 1024];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    socket
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let payload = vec![b'x'; 64 * 1024];
    let mut written = 0usize;
    let mut stalled = false;
    for seq in 1u64..=4096 {
        // 256 MiB at most.
        let mut frame = Vec::with_capacity(13 + payload.len());
        frame.extend_from_slice(&(9 + payload.len() as u32).to_be_bytes());
        frame.push(0x08);
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&payload);
        if socket.write_all(&frame).is_err() {
            stalled = true;
            break;
        }
        written += frame.len();
    }
    assert!(
        stalled,
        "the server took {written} bytes without acknowledgement of its echoes"
    );
    // Socket buffers, the session's buffer (8 MiB) and the echo feed (1 MiB) hold the rest.
    assert!(
        written < 128 << 20,
        "{written} bytes taken before the stall"
    );
}
