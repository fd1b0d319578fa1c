//! framelink's protocol over a blocking `std::net::TcpStream`, with no async runtime: the
//! sans-IO [`Connection`] does the protocol (handshake, heartbeats, dead-peer detection,
//! close), and the 50-line [`drive`] function below does the I/O. Both ends here run the same
//! driver: the server on a thread, the client on the main thread.
//!
//! ```sh
//! cargo run -p framelink-proto --example blocking_driver                  # server in-process
//! cargo run -p framelink-proto --example blocking_driver -- 127.0.0.1:7000
//! ```
//!
//! With an address it talks to any framelink protocol server instead, e.g.
//! `cargo run -p framelink-cli -- serve 127.0.0.1:7000` or `cargo run -p framelink --example
//! echo_server`. The client sends three messages, prints their echoes, waits on the quiet
//! link for one heartbeat round trip, and closes.
//!
//! # The `Machine` contract: what a driver calls, and when
//!
//! [`Connection`] (like every [`Machine`](framelink_proto::machine::Machine)) never reads a
//! socket or a clock; the driver passes `now` into every call and does this, in a loop:
//!
//! 1. **Input.** Bytes read from the socket go to `handle_input(data, now)` (or into
//!    `recv_buf()` followed by `process_input(now)`). End of stream or a read error is
//!    `handle_eof(now)`.
//! 2. **Output.** After *every* call that can change the machine (input, timeout, `send`,
//!    `close`), write what `poll_transmit(now)` returns until it returns `None`, in order.
//!    Bytes returned are the driver's to write; the machine will not return them again.
//! 3. **Events.** Likewise drain `poll_event()` until `None`: `Connected`, `Data`, `Rtt`,
//!    `Closed` (exactly once) and more. On `ShutdownWrite`, shut the socket's write half down
//!    once what was returned before it is written.
//! 4. **One timer.** Keep a single timer at `poll_timeout()` (re-read it after every call:
//!    it moves), and call `handle_timeout(now)` when it fires. Early or spurious calls are
//!    harmless, so a driver may simply call it whenever it wakes. Here the timer is the
//!    socket's read timeout: a read waits for bytes or for the deadline, whichever is first.
//! 5. **The application** queues messages with `send(payload, now)` and ends with
//!    `close(code, reason, now)`; both only queue, so step 2 must follow.
//! 6. **The end.** Stop once `is_closed()`: the close handshake is done or was given up on
//!    (the machine's linger deadline is one of its timeouts).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use framelink_proto::connection::{Connection, ConnectionConfig, Event};
use framelink_proto::machine::Machine;
use framelink_proto::wire::CloseCode;

/// Drives `conn` over `stream` until it is closed, handing every event to `app`, which may
/// call `send` or `close` on the connection.
fn drive(
    mut stream: TcpStream,
    conn: &mut Connection,
    mut app: impl FnMut(&mut Connection, Event),
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Output and events, until neither has anything (the application may send in between).
        loop {
            let mut busy = false;
            while let Some(bytes) = conn.poll_transmit(Instant::now()) {
                stream.write_all(&bytes)?;
                busy = true;
            }
            while let Some(event) = conn.poll_event() {
                if matches!(event, Event::ShutdownWrite) {
                    let _ = stream.shutdown(Shutdown::Write);
                }
                app(conn, event);
                busy = true;
            }
            if !busy {
                break;
            }
        }
        if conn.is_closed() {
            return Ok(());
        }
        // Wait for input, but not past the machine's next deadline. (A zero read timeout is
        // an error in std, hence at least 1 ms.)
        let wait = conn.poll_timeout().map(|at| {
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        stream.set_read_timeout(wait)?;
        match stream.read(&mut buf) {
            Ok(0) => conn.handle_eof(Instant::now()),
            Ok(n) => conn.handle_input(&buf[..n], Instant::now()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => conn.handle_eof(Instant::now()),
        }
        if conn.poll_timeout().is_some_and(|at| at <= Instant::now()) {
            conn.handle_timeout(Instant::now());
        }
    }
}

/// Heartbeats: a ping after 200 ms of quiet, the peer dead 1 s after an unanswered one.
fn config() -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Some(Duration::from_millis(200)),
        ping_timeout: Duration::from_secs(1),
        ..ConnectionConfig::default()
    }
}

/// An echo server for one connection, on the same driver.
fn serve_one(listener: TcpListener) -> io::Result<()> {
    let (stream, peer) = listener.accept()?;
    println!("[server] connection from {peer}");
    let mut conn = Connection::new(config(), Instant::now()).expect("valid configuration");
    drive(stream, &mut conn, |conn, event| match event {
        Event::Data(message) => {
            let _ = conn.send(message, Instant::now());
        }
        Event::Closed { code, by_peer, .. } => {
            println!("[server] closed with {code:?} (by the client: {by_peer})");
        }
        _ => {}
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, server) = match std::env::args().nth(1) {
        Some(addr) => (addr, None),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?.to_string();
            (addr, Some(std::thread::spawn(move || serve_one(listener))))
        }
    };

    let messages = ["one", "two", "three"];
    let mut echoes = 0;
    let mut rtt = None;
    let mut conn = Connection::new(config(), Instant::now())?;
    drive(
        TcpStream::connect(&addr)?,
        &mut conn,
        |conn, event| match event {
            Event::Connected { version, .. } => {
                println!("[client] connected to {addr}, protocol v{version}");
                for m in messages {
                    conn.send(Bytes::from_static(m.as_bytes()), Instant::now())
                        .expect("queued");
                }
            }
            Event::Data(message) => {
                echoes += 1;
                println!("[client] echo: {}", String::from_utf8_lossy(&message));
            }
            Event::Rtt(sample) if echoes == messages.len() && rtt.is_none() => {
                println!("[client] heartbeat rtt {sample:?}");
                rtt = Some(sample);
                conn.close(CloseCode::Normal, "done", Instant::now());
            }
            Event::Closed { code, error, .. } => {
                println!(
                    "[client] closed with {code:?}{}",
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
            _ => {}
        },
    )?;
    if let Some(server) = server {
        server.join().expect("server thread")?;
    }
    if echoes == messages.len() && rtt.is_some() {
        println!("[client] OK: {echoes} echoes and a heartbeat, no async runtime");
        Ok(())
    } else {
        Err(format!("{echoes} of {} echoes, heartbeat: {rtt:?}", messages.len()).into())
    }
}
