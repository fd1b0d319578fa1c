//! `framelink proxy` as a user runs it: a real process between a test client and an in-test
//! echo server over loopback TCP, with and without `--show` printing the frames passing. Every child process is killed when its guard drops (also
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
        &["proxy", "127.0.0.1:0", "127.0.0.1:1", "--show", "length:9"],
        &[
            "proxy",
            "127.0.0.1:0",
            "127.0.0.1:1",
            "--show-format",
            "json",
        ],
    ] {
        let mut proc = framelink(args);
        let status = proc.wait(PATIENCE);
        assert_eq!(status.code(), Some(2), "{args:?}\n{}", proc.stderr());
    }
}

fn len4(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn show_prints_both_directions_frames_while_splitting() {
    let upstream = echo_server();
    let (proxy, addr) = proxy(
        &upstream,
        &[
            "--show",
            "length:4",
            "--show-format",
            "json",
            "--split",
            "1..3",
            "--seed",
            "7",
        ],
    );
    let mut client = connect(&addr);
    // Two frames glued in one write, then a third.
    let glued = [len4(b"first"), len4(b"second")].concat();
    client.write_all(&glued).unwrap();
    let third = len4(&[0xff, 0x00, 0x10]);
    client.write_all(&third).unwrap();
    let mut echoed = vec![0u8; glued.len() + third.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, [glued, third].concat());

    let out = proxy.wait_stdout("six frames", PATIENCE, |o| o.lines().count() >= 6);
    let frames = json_lines(&out);
    assert_eq!(frames.len(), 6, "{out}");
    for direction in ["client->upstream", "upstream->client"] {
        let mine: Vec<_> = frames
            .iter()
            .filter(|f| f["direction"] == direction)
            .collect();
        assert_eq!(mine.len(), 3, "{direction}: {out}");
        assert_eq!(mine[0]["text"], "first");
        assert_eq!(mine[1]["text"], "second");
        assert_eq!(mine[1]["offset"], 13);
        assert_eq!(mine[2]["hex"], "ff0010");
        assert!(mine[2].get("text").is_none());
        for (i, f) in mine.iter().enumerate() {
            assert_eq!(f["index"], i);
            assert_eq!(f["conn"], 0);
            let time = f["time"].as_str().unwrap();
            assert!(time.len() == 27 && time.ends_with('Z'), "{time}");
        }
    }
    // A frame goes upstream before its echo comes back.
    let first_up = frames
        .iter()
        .position(|f| f["direction"] == "client->upstream")
        .unwrap();
    let first_down = frames
        .iter()
        .position(|f| f["direction"] == "upstream->client")
        .unwrap();
    assert!(first_up < first_down, "{out}");
    assert!(
        proxy
            .stderr()
            .contains("[proxy] showing frames as length:4"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn show_stops_showing_a_direction_that_does_not_decode_but_forwards_on() {
    let upstream = echo_server();
    let (proxy, addr) = proxy(
        &upstream,
        &[
            "--show",
            "line,max=8",
            "--seed",
            "7",
            "--max-duration",
            "5s",
        ],
    );
    let mut client = connect(&addr);
    let sent = b"ok\nthis line is too long\nafter\n";
    client.write_all(sent).unwrap();
    let mut echoed = vec![0u8; sent.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, sent);
    // The link still carries bytes.
    client.write_all(b"still\n").unwrap();
    let mut more = [0u8; 6];
    client.read_exact(&mut more).unwrap();
    assert_eq!(&more, b"still\n");

    let err = proxy.wait_stderr("both errors", |e| e.matches("[show] #0").count() >= 2);
    for direction in ["client->upstream", "upstream->client"] {
        assert!(
            // The 21-byte line is over the limit, whether it is seen whole or in pieces.
            err.lines().any(|l| l
                .starts_with(&format!("[show] #0 {direction}: error after 1 frames: "))
                && l.ends_with(
                    "(at stream offset 3); this direction is no longer shown (forwarding goes on)"
                )),
            "{err}"
        );
    }
    // Frames are printed by the tap's own thread: wait for both rather than race it.
    let out = proxy.wait_stdout("both frames", PATIENCE, |o| o.lines().count() >= 2);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with(" frame=0 offset=0 len=2 ok")),
        "{out}"
    );
}
