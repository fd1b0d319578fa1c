//! The protocol v1 `Connection` state machine driven by a scripted, hostile peer.
//!
//! The input is a script of steps, each chosen by one byte: feed the next bytes of the peer's
//! stream (a chunk size byte follows), let time pass (a byte of milliseconds, times 16), send a
//! message of the application (a length byte), close, end of stream, answer a session request.
//! Half of the runs ask for a session, half offer sessions, so the session messages (SDATA,
//! ACK, RESUME) with forged sequence numbers and `delivered` values are reached.
//!
//! Invariants: no panic; the receive buffer stays within the limits of PROTOCOL.md section 10
//! (4 + 4096 bytes before the peer's HELLO, `max_message_len + 4` after it); delivered messages
//! are at most `max_message_len` long; once `Closed` is reported no message is delivered; the
//! session never counts as acknowledged more than it transmitted.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use framelink_fuzz::Input;
use framelink_proto::connection::{Connection, ConnectionConfig, Event};
use framelink_proto::machine::Machine;
use framelink_proto::session::{Session, SessionConfig};
use framelink_proto::wire::{CloseCode, MIN_MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let max = MIN_MAX_MESSAGE_LEN;
    let config = ConnectionConfig {
        max_message_len: max,
        sessions: Some(SessionConfig::default()),
        ping_interval: Some(Duration::from_millis(500)),
        ping_timeout: Duration::from_millis(500),
        ..ConnectionConfig::default()
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut c = if mode & 1 == 1 {
        Connection::with_session(config, Session::new([0x5a; 16]), now)
    } else {
        Connection::new(config, now)
    }
    .expect("valid configuration");
    let script_len = usize::from(input.u8() % 64) + 1;
    let steps = input.bytes(script_len).to_vec();
    // Mostly, the peer's stream starts with the HELLO a real peer of the other role would
    // send (offering, or asking for, the session), so that the fuzzer spends its time after
    // the handshake: on SDATA, ACK and RESUME with forged numbers.
    let mut stream = Vec::new();
    if mode & 6 != 0 {
        let peer_config = ConnectionConfig {
            sessions: Some(SessionConfig::default()),
            ..ConnectionConfig::default()
        };
        let mut peer = if mode & 1 == 1 {
            Connection::new(peer_config, t0)
        } else {
            Connection::with_session(peer_config, Session::new([0x5a; 16]), t0)
        }
        .expect("valid configuration");
        while let Some(chunk) = peer.poll_transmit(t0) {
            stream.extend_from_slice(&chunk);
        }
    }
    stream.extend_from_slice(input.rest());
    let stream = &stream[..];
    let mut fed = 0usize;
    let mut closed = false;
    let mut handshaken = false;
    for step in steps {
        match step % 8 {
            0..=2 => {
                let n = usize::from(step / 8 + 1) * 7;
                let end = (fed + n).min(stream.len());
                c.handle_input(&stream[fed..end], now);
                fed = end;
            }
            3 => now += Duration::from_millis(u64::from(step) * 16),
            4 => {
                let _ = c.send(Bytes::from(vec![step; usize::from(step) * 3]), now);
            }
            5 => c.close(CloseCode::Application(0x1000), "fuzz", now),
            6 => c.handle_eof(now),
            _ => {
                // Accepting side: answer a pending request with a new session, or with a kept
                // one that has some messages queued and transmitted (refused unless the
                // scripted peer's AUTH proves it, which a fuzzer cannot forge).
                let mut s = Session::new([0x5a; 16]);
                for i in 0..(step / 8) {
                    let _ = s.push(Bytes::from(vec![i]), usize::MAX);
                }
                s.mark_transmitted(u64::from(step / 16));
                let found = (step % 16 >= 8).then_some(s);
                let _ = c.attach_session(found, now);
            }
        }
        if let Some(deadline) = c.poll_timeout() {
            if deadline <= now {
                c.handle_timeout(now);
            }
        }
        while c.poll_transmit(now).is_some() {}
        while let Some(event) = c.poll_event() {
            match event {
                Event::Connected { .. } => handshaken = true,
                Event::Data(payload) => {
                    assert!(!closed, "a message delivered after Closed");
                    assert!(payload.len() < max as usize);
                }
                Event::Closed { .. } => closed = true,
                _ => {}
            }
        }
        let bound = if handshaken { max as usize + 4 } else { MIN_MAX_MESSAGE_LEN as usize + 4 };
        assert!(c.recv_buf().len() <= bound, "{} bytes buffered", c.recv_buf().len());
        if let Some(s) = c.session() {
            assert!(s.acked() <= s.transmitted());
        }
    }
});
