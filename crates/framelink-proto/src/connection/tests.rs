use super::*;
use crate::liveness::IdleKind;
use crate::tests::util::{data_of, events, ms, secs, transmit_all, Pair, Rng};
use proptest::prelude::*;

fn cfg(interval: u64, timeout: u64) -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Some(secs(interval)),
        ping_timeout: secs(timeout),
        ..ConnectionConfig::default()
    }
}

/// Decodes a captured byte stream (no HELLO-first check).
fn decode_all(bytes: &[u8]) -> Vec<Message> {
    let mut codec = WireCodec::new(1 << 24).unwrap().without_handshake_check();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(m)) = codec.decode(&mut buf) {
        out.push(m);
    }
    out
}

fn encode(message: &Message) -> Vec<u8> {
    let mut codec = WireCodec::new(1 << 24).unwrap();
    codec.set_peer_max_message_len(u32::MAX);
    let mut buf = BytesMut::new();
    codec.encode(message, &mut buf).unwrap();
    buf.to_vec()
}

fn hello_with(f: impl FnOnce(&mut Hello)) -> Vec<u8> {
    let mut h = Hello::default();
    f(&mut h);
    encode(&Message::Hello(h))
}

fn closes(messages: &[Message]) -> Vec<u16> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Close { code, .. } => Some(code.as_u16()),
            _ => None,
        })
        .collect()
}

fn closed_code(events: &[Event]) -> Option<(CloseCode, bool)> {
    events.iter().find_map(|e| match e {
        Event::Closed { code, by_peer, .. } => Some((*code, *by_peer)),
        _ => None,
    })
}

/// Two protocol connections back to back through the shared simulator's link.
type Net = Pair<Connection>;

/// A [`Net`] of a connection with `ca` and one with `cb`, both created now.
fn net(ca: ConnectionConfig, cb: ConnectionConfig) -> Net {
    let now = Instant::now();
    Pair::new(
        Connection::new(ca, now).unwrap(),
        Connection::new(cb, now).unwrap(),
        now,
    )
}

#[test]
fn config_validation() {
    assert!(ConnectionConfig::default().validate().is_ok());
    let bad = [
        ConnectionConfig {
            max_message_len: 100,
            ..Default::default()
        },
        ConnectionConfig {
            ping_timeout: Duration::ZERO,
            ..Default::default()
        },
        ConnectionConfig {
            ping_interval: Some(Duration::from_micros(1500)),
            ..Default::default()
        },
        ConnectionConfig {
            grace: 1.0,
            ..Default::default()
        },
        ConnectionConfig {
            handshake_timeout: Duration::ZERO,
            ..Default::default()
        },
        ConnectionConfig {
            max_queued_bytes: 0,
            ..Default::default()
        },
        ConnectionConfig {
            reader_idle: Some(Duration::ZERO),
            ..Default::default()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
        assert!(Connection::new(c, Instant::now()).is_err());
    }
    let passive = ConnectionConfig {
        ping_interval: None,
        ..Default::default()
    };
    let h = passive.hello();
    assert_eq!(
        (h.ping_interval, h.ping_timeout),
        (Duration::ZERO, Duration::ZERO)
    );
}

#[test]
fn handshake_both_ways() {
    let mut net = net(cfg(5, 3), cfg(7, 2));
    assert_eq!(net.a.state(), State::Handshaking);
    net.flush();
    assert_eq!((net.a.state(), net.b.state()), (State::Open, State::Open));
    match &net.ev_a[..] {
        [Event::Connected { peer, version: 1 }] => {
            assert_eq!(peer.ping_interval, secs(7));
            assert_eq!(peer.ping_timeout, secs(2));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&net.ev_b[..], [Event::Connected { peer, version: 1 }] if peer.ping_interval == secs(5))
    );
    assert_eq!(net.b.peer_hello().unwrap().max_message_len, 8 * 1024 * 1024);
    // HELLO is the first (and only) thing on the wire, byte-exact with the codec.
    assert_eq!(net.wire_ab, encode(&Message::Hello(cfg(5, 3).hello())));
    assert_eq!(net.a.stats().messages_out, 1);
    assert_eq!(net.a.stats().messages_in, 1);
}

#[test]
fn data_both_directions_in_order_chunked() {
    let mut net = net(cfg(5, 3), cfg(5, 3));
    net.max_chunk = 7;
    let msgs: Vec<Bytes> = (0..50u32)
        .map(|i| Bytes::from(vec![i as u8; (i as usize * 97) % 3000]))
        .collect();
    // Queued before the handshake: written after it.
    for m in &msgs[..10] {
        net.a.send(m.clone(), net.now).unwrap();
    }
    net.flush();
    for m in &msgs[10..] {
        net.a.send(m.clone(), net.now).unwrap();
        net.b.send(m.clone(), net.now).unwrap();
    }
    net.flush();
    assert_eq!(net.data_b(), msgs);
    assert_eq!(data_of(&net.ev_a), msgs[10..].to_vec());
    assert_eq!(net.b.stats().data_in, 50);
    assert_eq!(net.a.stats().data_out, 50);
    assert_eq!(net.a.stats().bytes_out, net.b.stats().bytes_in);
    assert_eq!(net.a.queued_bytes(), 0);
}

#[test]
fn zero_copy_both_sides() {
    let t0 = Instant::now();
    let mut a = Connection::new(cfg(5, 3), t0).unwrap();
    a.handle_input(&hello_with(|_| {}), t0);
    let _ = transmit_all(&mut a, t0); // HELLO
    let payload = Bytes::from(vec![7u8; 10_000]);
    a.send(payload.clone(), t0).unwrap();
    let header = a.poll_transmit(t0).unwrap();
    assert_eq!(&header[..], &[0, 0, 0x27, 0x11, 2]);
    let body = a.poll_transmit(t0).unwrap();
    assert_eq!(body.as_ptr(), payload.as_ptr(), "payload not copied");
    assert!(a.poll_transmit(t0).is_none());

    let mut b = Connection::new(cfg(5, 3), t0).unwrap();
    b.handle_input(&hello_with(|_| {}), t0);
    let buf = b.recv_buf();
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&body);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    b.process_input(t0);
    let data = data_of(&events(&mut b));
    assert_eq!(data, vec![payload]);
    assert!(range.contains(&(data[0].as_ptr() as usize)), "body copied");
}

#[test]
fn ping_pong_when_quiet_gives_rtt() {
    let mut net = net(
        cfg(1, 1),
        ConnectionConfig {
            ping_interval: None,
            ..cfg(1, 1)
        },
    );
    net.run_until(net.now + ms(1500));
    assert!(
        net.ev_a.iter().any(|e| matches!(e, Event::Rtt(_))),
        "{:?}",
        net.ev_a
    );
    assert!(net.a.rtt().is_some());
    let ab = decode_all(&net.wire_ab);
    let ba = decode_all(&net.wire_ba);
    assert!(matches!(ab[1], Message::Ping(ref c) if c.len() == 8));
    assert!(matches!(ba[1], Message::Pong(ref c) if c.len() == 8));
    // The passive side never pings.
    assert!(!ba.iter().any(|m| matches!(m, Message::Ping(_))));
    assert_eq!((net.a.state(), net.b.state()), (State::Open, State::Open));
}

#[test]
fn idle_timeout_evicts_a_connection_without_data_despite_heartbeats() {
    // Heartbeats every second keep the link alive, but no DATA flows: A evicts at 10 s.
    let idle = ConnectionConfig {
        idle_timeout: Some(secs(10)),
        ..cfg(1, 1)
    };
    let mut net = net(idle, cfg(1, 1));
    let t0 = net.now;
    net.run_until(t0 + secs(5));
    net.a.send(Bytes::from_static(b"keep"), net.now).unwrap();
    net.run_until(t0 + ms(14_900));
    // The DATA at 5 s moved the deadline to 15 s.
    assert_eq!(net.a.state(), State::Open, "{:?}", net.ev_a);
    assert!(net.ev_a.iter().any(|e| matches!(e, Event::Rtt(_))));
    net.run_until(t0 + secs(16));
    assert_eq!(closed_code(&net.ev_a), Some((CloseCode::Idle, false)));
    assert_eq!(closed_code(&net.ev_b), Some((CloseCode::Idle, true)));
    assert_eq!(net.data_b(), vec![Bytes::from_static(b"keep")]);
    let sent = decode_all(&net.wire_ab);
    assert_eq!(closes(&sent), vec![CloseCode::Idle.as_u16()]);
    // Exactly at the deadline: the close went out in the step at 15 s.
    assert!(net.a.poll_timeout().is_none() || net.a.state() != State::Open);
}

#[test]
fn idle_timeout_counts_received_data_too() {
    let idle = ConnectionConfig {
        idle_timeout: Some(secs(3)),
        ..cfg(1, 1)
    };
    let mut net = net(idle, cfg(1, 1));
    let t0 = net.now;
    for i in 1..=5 {
        net.run_until(t0 + secs(2 * i));
        net.b.send(Bytes::from_static(b"tick"), net.now).unwrap();
    }
    net.run_until(t0 + ms(12_900));
    assert_eq!(net.a.state(), State::Open, "{:?}", net.ev_a);
    net.run_until(t0 + ms(13_100));
    assert_eq!(closed_code(&net.ev_a), Some((CloseCode::Idle, false)));
    assert_eq!(
        ConnectionConfig {
            idle_timeout: Some(Duration::ZERO),
            ..ConnectionConfig::default()
        }
        .validate(),
        Err(ConfigError::Zero {
            name: "idle_timeout"
        })
    );
}

#[test]
fn idle_events_fire_once_per_idle_period() {
    // No heartbeats at all: idle events are the only timers.
    let quiet = ConnectionConfig {
        ping_interval: None,
        reader_idle: Some(secs(2)),
        writer_idle: Some(secs(3)),
        all_idle: Some(secs(5)),
        ..ConnectionConfig::default()
    };
    let mut net = net(
        quiet,
        ConnectionConfig {
            ping_interval: None,
            ..ConnectionConfig::default()
        },
    );
    let t0 = net.now;
    let idle = |events: &[Event]| -> Vec<IdleKind> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Idle(kind) => Some(*kind),
                _ => None,
            })
            .collect()
    };
    net.run_until(t0 + ms(1_900));
    assert!(idle(&net.ev_a).is_empty());
    net.run_until(t0 + secs(6));
    assert_eq!(
        idle(&net.ev_a),
        vec![
            IdleKind::ReaderIdle,
            IdleKind::WriterIdle,
            IdleKind::AllIdle
        ]
    );
    // Nothing more while still idle: once per period.
    net.run_until(t0 + secs(30));
    assert_eq!(idle(&net.ev_a).len(), 3);
    // Traffic re-arms them.
    net.b.send(Bytes::from_static(b"wake"), net.now).unwrap();
    net.run_until(t0 + secs(33));
    assert_eq!(idle(&net.ev_a).len(), 4, "{:?}", idle(&net.ev_a));
    assert_eq!(idle(&net.ev_a)[3], IdleKind::ReaderIdle);
}

#[test]
fn frozen_peer_declared_dead_within_bound() {
    for freeze_after in [0u64, 1200, 4999, 7777] {
        let (interval, timeout) = (secs(5), secs(3));
        // The passive side keeps nothing of its own going.
        let mut net = net(
            cfg(5, 3),
            ConnectionConfig {
                ping_interval: None,
                ..cfg(5, 3)
            },
        );
        net.run_until(net.now + ms(freeze_after));
        let frozen_at = net.now;
        net.b_frozen = true;
        net.run_until(frozen_at + timeout - ms(1));
        assert_eq!(closed_code(&net.ev_a), None, "dead before ping_timeout");
        net.run_until(frozen_at + interval + timeout);
        let (at, _) = (net.now, ());
        assert!(at <= frozen_at + interval + timeout);
        match net.ev_a.iter().find(|e| matches!(e, Event::Closed { .. })) {
            Some(Event::Closed {
                code: CloseCode::PeerTimedOut,
                by_peer: false,
                error: Some(error),
                ..
            }) => match error.as_ref() {
                ConnectionError::PeerDead { silent_for, .. } => {
                    assert!(*silent_for <= interval + timeout)
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert_eq!(net.a.state(), State::Closed);
        assert_eq!(closes(&decode_all(&net.wire_ab)), vec![3]);
        assert!(net.ev_a.contains(&Event::ShutdownWrite));
        assert!(net.a.is_drained() && net.a.is_closed());
    }
}

#[test]
fn frozen_peer_detection_time_is_exact() {
    let mut net = net(cfg(5, 3), cfg(5, 3));
    net.flush();
    let t = net.now;
    net.b_frozen = true;
    // Step timer by timer and note when a closes.
    let mut closed_at = None;
    while closed_at.is_none() {
        let Some(next) = net.a.poll_timeout() else {
            break;
        };
        net.now = next;
        net.a.handle_timeout(next);
        net.flush();
        if closed_code(&net.ev_a).is_some() {
            closed_at = Some(next);
        }
    }
    assert_eq!(closed_at, Some(t + secs(8)));
}

#[test]
fn answering_peer_stays_alive_for_10000_seconds() {
    let mut net = net(cfg(5, 3), cfg(7, 2));
    net.run_until(net.now + secs(10_000));
    assert_eq!(closed_code(&net.ev_a), None);
    assert_eq!(closed_code(&net.ev_b), None);
    assert_eq!((net.a.state(), net.b.state()), (State::Open, State::Open));
    let rtts = net
        .ev_a
        .iter()
        .filter(|e| matches!(e, Event::Rtt(_)))
        .count();
    assert!(rtts > 1000, "{rtts}");
    assert!(net.a.rtt().unwrap().samples > 1000);
    // b hears a's PING every 5 s, less than its own 7 s interval: it never needs to ping.
    assert!(net.b.rtt().is_none());
}

#[test]
fn too_many_pings_closes_with_code_4() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    c.handle_input(&hello_with(|h| h.ping_interval = secs(10)), t0);
    let _ = transmit_all(&mut c, t0);
    let ping = encode(&Message::Ping(Bytes::from_static(b"12345678")));
    let mut out = Vec::new();
    for i in 1..=4 {
        c.handle_input(&ping, t0 + secs(i));
        out.extend(transmit_all(&mut c, t0 + secs(i)));
    }
    let msgs = decode_all(&out);
    // First three PINGs answered, the fourth (third strike) closes.
    assert_eq!(
        msgs.iter()
            .filter(|m| matches!(m, Message::Pong(_)))
            .count(),
        3
    );
    assert_eq!(closes(&msgs), vec![4]);
    let ev = events(&mut c);
    assert_eq!(closed_code(&ev), Some((CloseCode::TooManyPings, false)));
    assert_eq!(c.state(), State::Closing);

    // Pings at the announced rate are fine.
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    c.handle_input(&hello_with(|h| h.ping_interval = secs(10)), t0);
    for i in 1..=20 {
        c.handle_input(&ping, t0 + secs(10 * i));
        let _ = transmit_all(&mut c, t0 + secs(10 * i));
    }
    assert_eq!(c.state(), State::Open);
}

/// Feeds `input` to a fresh connection and returns (CLOSE codes on the wire, events).
fn feed(input: &[u8]) -> (Vec<u16>, Vec<Event>, Connection) {
    let t0 = Instant::now();
    let mut c = Connection::new(
        ConnectionConfig {
            max_message_len: 1 << 20,
            ..cfg(5, 3)
        },
        t0,
    )
    .unwrap();
    c.handle_input(input, t0);
    let out = transmit_all(&mut c, t0);
    (closes(&decode_all(&out)), events(&mut c), c)
}

#[test]
fn protocol_errors_close_with_the_right_code() {
    let hello = hello_with(|_| {});
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("data before hello", vec![0, 0, 0, 2, 2, b'x'], 2),
        ("bad magic", vec![0, 0, 0, 5, 1, b'H', b'T', b'T', b'P'], 2),
        ("zero length", vec![0, 0, 0, 0], 2),
        (
            "reserved type",
            [&hello[..], &[0, 0, 0, 1, 0x7f]].concat(),
            2,
        ),
        (
            "ack reserved",
            [&hello[..], &[0, 0, 0, 1, 0x06]].concat(),
            2,
        ),
        ("second hello", [&hello[..], &hello[..]].concat(), 2),
        ("oversized", [&hello[..], &[0, 0x10, 0, 1, 2]].concat(), 5),
        ("oversized first", vec![0xff, 0xff, 0xff, 0xff], 5),
        // Before the peer's HELLO, 4096 is the limit whatever max_message_len we accept,
        // and a wrong type is refused from the 5th byte, before the body arrives.
        ("first over 4096", vec![0, 0, 0x10, 0x01], 5),
        ("8 MiB first hello", vec![0, 0x80, 0, 0, 1], 5),
        (
            "first not hello, body missing",
            vec![0, 0, 0x0f, 0xff, 2],
            2,
        ),
        ("version 0", hello_with(|h| h.version = 0), 6),
    ];
    for (name, input, code) in cases {
        let (wire, ev, c) = feed(&input);
        assert_eq!(wire, vec![code], "{name}");
        assert_eq!(
            closed_code(&ev),
            Some((CloseCode::from_u16(code), false)),
            "{name}: {ev:?}"
        );
        assert!(ev.contains(&Event::ShutdownWrite), "{name}");
        assert_eq!(c.state(), State::Closing, "{name}");
        assert!(c.is_drained());
    }
    // The error carries the numbers.
    let (_, ev, _) = feed(&[&hello[..], &[0, 0x10, 0, 1, 2]].concat());
    let Some(Event::Closed {
        error: Some(e),
        reason,
        ..
    }) = ev.iter().find(|e| matches!(e, Event::Closed { .. }))
    else {
        panic!("{ev:?}")
    };
    assert!(
        e.to_string().contains("1048577") && reason.contains("1048576"),
        "{e} / {reason}"
    );
}

#[test]
fn no_processing_after_a_protocol_error() {
    let hello = hello_with(|_| {});
    let data = encode(&Message::Data(Bytes::from_static(b"late")));
    let (_, ev, mut c) = feed(&[&hello[..], &[0, 0, 0, 1, 0x7f], &data[..]].concat());
    assert!(data_of(&ev).is_empty());
    c.handle_input(&data, Instant::now());
    assert!(events(&mut c).is_empty());
}

#[test]
fn version_negotiation() {
    let (wire, ev, c) = feed(&hello_with(|h| {
        h.version = 2;
        h.flags = 0x80;
    }));
    assert!(wire.is_empty());
    assert!(matches!(ev[0], Event::Connected { version: 1, ref peer } if peer.version == 2));
    assert_eq!(c.state(), State::Open);
    let (_, ev, _) = feed(&hello_with(|h| h.version = 0));
    assert!(matches!(
        ev[0],
        Event::Closed {
            code: CloseCode::UnsupportedVersion,
            error: Some(ref e),
            ..
        } if matches!(**e, ConnectionError::UnsupportedVersion {
                peer_version: 0,
                ..
            })
    ));
}

#[test]
fn extension_messages_are_ignored() {
    let hello = hello_with(|_| {});
    let ext = encode(&Message::Extension {
        ty: 0x80,
        body: Bytes::from_static(b"\x01\x02"),
    });
    let data = encode(&Message::Data(Bytes::from_static(b"ok")));
    let (wire, ev, c) = feed(&[&hello[..], &ext, &data].concat());
    assert!(wire.is_empty());
    assert_eq!(data_of(&ev), vec![Bytes::from_static(b"ok")]);
    assert_eq!(c.stats().messages_in, 3);
}

fn graceful_close(a_closes: bool) {
    let mut net = net(cfg(5, 3), cfg(5, 3));
    net.max_chunk = 3;
    net.flush();
    let (closer, other) = if a_closes {
        (&mut net.a, &mut net.b)
    } else {
        (&mut net.b, &mut net.a)
    };
    let t = Instant::now();
    closer.send(Bytes::from_static(b"last words"), t).unwrap();
    closer.close(CloseCode::Application(0x1001), "bye", t);
    assert_eq!(closer.state(), State::Closing);
    assert_eq!(closer.send(Bytes::new(), t), Err(SendError::Closed));
    other.send(Bytes::from_static(b"dropped"), t).unwrap();
    let _ = other;
    net.flush();
    let (ev_closer, ev_other) = if a_closes {
        (&net.ev_a, &net.ev_b)
    } else {
        (&net.ev_b, &net.ev_a)
    };
    assert_eq!(
        closed_code(ev_closer),
        Some((CloseCode::Application(0x1001), false))
    );
    assert!(ev_closer.contains(&Event::ShutdownWrite));
    assert!(ev_other.contains(&Event::Closed {
        code: CloseCode::Application(0x1001),
        reason: "bye".into(),
        by_peer: true,
        error: None,
    }));
    assert!(ev_other.contains(&Event::ShutdownWrite));
    assert_eq!(data_of(ev_other), vec![Bytes::from_static(b"last words")]);
    assert_eq!(
        (net.a.state(), net.b.state()),
        (State::Closed, State::Closed)
    );
    assert!(net.a.is_drained() && net.b.is_drained());
    let (w_closer, w_other) = if a_closes {
        (&net.wire_ab, &net.wire_ba)
    } else {
        (&net.wire_ba, &net.wire_ab)
    };
    assert_eq!(closes(&decode_all(w_closer)), vec![0x1001]);
    // The other side answered with the same code and sent no DATA after the CLOSE.
    let other_msgs = decode_all(w_other);
    assert_eq!(closes(&other_msgs), vec![0x1001]);
    assert!(matches!(other_msgs.last(), Some(Message::Close { .. })));
    assert!(net.a.poll_timeout().is_none() && net.b.poll_timeout().is_none());
}

/// Found by the tokio driver's tests: a close asked for during the handshake used to drop
/// the DATA queued before it.
#[test]
fn close_during_handshake_still_delivers_queued_data() {
    let t = Instant::now();
    let mut net = net(cfg(5, 3), cfg(5, 3));
    net.a.send(Bytes::from_static(b"one"), t).unwrap();
    net.a.send(Bytes::from_static(b"two"), t).unwrap();
    net.a.close(CloseCode::Application(0x1002), "done", t);
    assert_eq!(net.a.state(), State::Handshaking);
    net.flush();
    assert_eq!(
        data_of(&net.ev_b),
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    assert!(net.ev_b.contains(&Event::Closed {
        code: CloseCode::Application(0x1002),
        reason: "done".into(),
        by_peer: true,
        error: None,
    }));
    assert_eq!(
        (net.a.state(), net.b.state()),
        (State::Closed, State::Closed)
    );
}

#[test]
fn graceful_close_a_to_b() {
    graceful_close(true);
}

#[test]
fn graceful_close_b_to_a() {
    graceful_close(false);
}

#[test]
fn closing_lingers_then_closes() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    c.handle_input(&hello_with(|_| {}), t0);
    c.close(CloseCode::Normal, "", t0);
    let out = transmit_all(&mut c, t0);
    assert_eq!(closes(&decode_all(&out)), vec![0]);
    assert_eq!(c.poll_timeout(), Some(t0 + secs(2)));
    // Data arriving while closing is discarded.
    c.handle_input(&encode(&Message::Data(Bytes::new())), t0);
    c.handle_timeout(t0 + secs(2));
    assert_eq!(c.state(), State::Closed);
    assert!(data_of(&events(&mut c)).is_empty());
}

#[test]
fn end_of_stream() {
    let hello = hello_with(|_| {});
    let t0 = Instant::now();
    for (tail, mid) in [(&[][..], false), (&[0u8, 0, 0, 5, 2][..], true)] {
        let mut c = Connection::new(cfg(5, 3), t0).unwrap();
        c.handle_input(&[&hello[..], tail].concat(), t0);
        c.handle_eof(t0);
        let ev = events(&mut c);
        assert!(ev.iter().any(|e| matches!(
                e,
                Event::Closed { by_peer: true, error: Some(e), .. }
                    if matches!(**e, ConnectionError::EndOfStream { mid_message } if mid_message == mid)
            )), "{ev:?}");
        assert!(c.is_closed());
    }
}

#[test]
fn handshake_timeout() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    let _ = transmit_all(&mut c, t0);
    assert_eq!(c.poll_timeout(), Some(t0 + secs(10)));
    c.handle_timeout(t0 + secs(10) - ms(1));
    assert!(events(&mut c).is_empty());
    // A partial HELLO does not extend the deadline.
    c.handle_input(&hello_with(|_| {})[..10], t0 + secs(9));
    c.handle_timeout(t0 + secs(10));
    let ev = events(&mut c);
    assert!(matches!(
        ev[0],
        Event::Closed {
            code: CloseCode::PeerTimedOut,
            by_peer: false,
            error: Some(ref e),
            ..
        } if matches!(**e, ConnectionError::HandshakeTimeout { .. })
    ));
    assert_eq!(
        closes(&decode_all(&transmit_all(&mut c, t0 + secs(10)))),
        vec![3]
    );
}

/// Opens `c` with a default peer HELLO at `t`.
fn open(c: &mut Connection, t: Instant) {
    c.handle_input(&hello_with(|_| {}), t);
    let _ = transmit_all(c, t);
    assert!(matches!(events(c)[..], [Event::Connected { .. }]));
}

#[test]
fn a_trickled_message_is_cut_by_the_frame_timeout_whatever_the_heartbeat_says() {
    let t0 = Instant::now();
    let mut c = Connection::new(
        ConnectionConfig {
            frame_timeout: Some(secs(30)),
            ..cfg(5, 3)
        },
        t0,
    )
    .unwrap();
    open(&mut c, t0);
    // One whole message, then the start of a 100 000-byte one, trickled 1 byte / 2 s:
    // enough for the heartbeat (any byte proves the peer alive), never enough to finish.
    let whole = encode(&Message::Data(Bytes::from_static(b"ok")));
    let big = encode(&Message::Data(Bytes::from(vec![7u8; 100_000])));
    let t1 = t0 + secs(1);
    c.handle_input(&[&whole[..], &big[..10]].concat(), t1);
    assert_eq!(data_of(&events(&mut c)), vec![Bytes::from_static(b"ok")]);
    assert_eq!(c.poll_timeout().map(|at| at <= t1 + secs(30)), Some(true));
    let mut sent = 10;
    let mut t = t1;
    while t + secs(2) < t1 + secs(30) {
        t += secs(2);
        c.handle_input(&big[sent..sent + 1], t);
        sent += 1;
        let _ = transmit_all(&mut c, t);
        c.handle_timeout(t);
        assert_eq!(
            c.state(),
            State::Open,
            "still within the bound at {:?}",
            t - t0
        );
    }
    // The deadline counts from the message's first byte, not from the last one.
    assert_eq!(c.poll_timeout(), Some(t1 + secs(30)));
    c.handle_timeout(t1 + secs(30) - ms(1));
    assert_eq!(c.state(), State::Open);
    c.handle_timeout(t1 + secs(30));
    let ev = events(&mut c);
    let expected = ConnectionError::FrameTimeout {
        timeout: secs(30),
        received: sent,
        expected: Some(big.len()),
    };
    assert_eq!(
        ev.last(),
        Some(&Event::Closed {
            code: CloseCode::PeerTimedOut,
            reason: expected.to_string(),
            by_peer: false,
            error: Some(Box::new(expected.clone())),
        })
    );
    assert_eq!(
        expected.to_string(),
        format!("frame incomplete after 30s: {sent} of 100005 bytes arrived")
    );
    assert_eq!(
        closes(&decode_all(&transmit_all(&mut c, t1 + secs(30)))),
        vec![3]
    );
    assert_eq!(c.recv_buf().capacity(), 0, "the partial message is freed");
}

#[test]
fn the_frame_timeout_restarts_with_each_message_and_can_be_off() {
    let t0 = Instant::now();
    let config = ConnectionConfig {
        frame_timeout: Some(secs(10)),
        ..cfg(5, 3)
    };
    let mut c = Connection::new(config.clone(), t0).unwrap();
    open(&mut c, t0);
    let m = encode(&Message::Data(Bytes::from(vec![1u8; 1000])));
    // Each message takes 8 s (under the bound), and the next one starts in the same input
    // as the end of the previous: its own clock starts then.
    c.handle_input(&m[..500], t0);
    for i in 1..=5u64 {
        let t = t0 + secs(8 * i);
        c.handle_input(&[&m[500..], &m[..500]].concat(), t);
        assert_eq!(c.poll_timeout().map(|at| at >= t + secs(5)), Some(true));
        c.handle_timeout(t + secs(5));
        assert_eq!(c.state(), State::Open);
    }
    assert_eq!(data_of(&events(&mut c)).len(), 5);
    // Nothing pending: no frame deadline (only heartbeats).
    c.handle_input(&m[500..], t0 + secs(41));
    assert_eq!(c.frame_deadline(), None);
    assert_eq!(data_of(&events(&mut c)).len(), 1);

    // Off: a partial message may take any time (the heartbeat still runs).
    let mut c = Connection::new(
        ConnectionConfig {
            frame_timeout: None,
            ..cfg(5, 3)
        },
        t0,
    )
    .unwrap();
    open(&mut c, t0);
    c.handle_input(&m[..3], t0);
    for i in 1..=100u64 {
        c.handle_input(&m[2 + i as usize..3 + i as usize], t0 + secs(2 * i));
        let _ = transmit_all(&mut c, t0 + secs(2 * i));
        c.handle_timeout(t0 + secs(2 * i));
    }
    assert_eq!(c.state(), State::Open);
    assert_eq!(
        Connection::new(
            ConnectionConfig {
                frame_timeout: Some(Duration::ZERO),
                ..config
            },
            t0
        )
        .unwrap_err(),
        ConfigError::Zero {
            name: "frame_timeout"
        }
    );
}

#[test]
fn a_partial_hello_is_bounded_by_the_frame_timeout_when_it_is_shorter() {
    let t0 = Instant::now();
    let mut c = Connection::new(
        ConnectionConfig {
            frame_timeout: Some(secs(2)),
            ..cfg(5, 3)
        },
        t0,
    )
    .unwrap();
    let _ = transmit_all(&mut c, t0);
    c.handle_input(&hello_with(|_| {})[..5], t0 + secs(1));
    assert_eq!(c.poll_timeout(), Some(t0 + secs(3)));
    c.handle_timeout(t0 + secs(3));
    assert!(events(&mut c).iter().any(|e| matches!(
        e,
        Event::Closed {
            code: CloseCode::PeerTimedOut,
            error: Some(e),
            ..
        } if matches!(**e, ConnectionError::FrameTimeout { received: 5, .. })
    )));
}

#[test]
fn abort_drops_queued_data_and_input_and_sends_close_at_once() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    open(&mut c, t0);
    c.send(Bytes::from(vec![1u8; 50_000]), t0).unwrap();
    let big = encode(&Message::Data(Bytes::from(vec![7u8; 100_000])));
    c.handle_input(&big[..60_000], t0);
    c.abort(CloseCode::ServerFull, "memory budget", t0);
    assert_eq!(c.queued_bytes(), 0);
    assert_eq!(c.recv_buf().capacity(), 0);
    let out = decode_all(&transmit_all(&mut c, t0));
    assert!(
        !out.iter().any(|m| matches!(m, Message::Data(_))),
        "{out:?}"
    );
    assert_eq!(closes(&out), vec![7]);
    assert!(events(&mut c).iter().any(|e| matches!(
        e,
        Event::Closed {
            code: CloseCode::ServerFull,
            error: Some(e),
            ..
        } if matches!(**e, ConnectionError::Aborted { .. })
    )));
}

#[test]
fn send_limits() {
    let t0 = Instant::now();
    let mut c = Connection::new(
        ConnectionConfig {
            max_queued_bytes: 100,
            ..cfg(5, 3)
        },
        t0,
    )
    .unwrap();
    c.send(Bytes::from(vec![0; 50]), t0).unwrap();
    assert_eq!(
        c.send(Bytes::from(vec![0; 50]), t0),
        Err(SendError::QueueFull {
            queued: 55,
            len: 55,
            limit: 100
        })
    );
    c.handle_input(&hello_with(|h| h.max_message_len = 4096), t0);
    assert_eq!(
        c.send(Bytes::from(vec![0; 4096]), t0),
        Err(SendError::TooBig {
            len: 4096,
            max: 4096
        })
    );
    let _ = transmit_all(&mut c, t0);
    assert_eq!(c.queued_bytes(), 0);
    c.send(Bytes::from(vec![0; 4095]), t0).unwrap_err(); // over the 100-byte queue
    c.close(CloseCode::Normal, "", t0);
    assert_eq!(c.send(Bytes::new(), t0), Err(SendError::Closed));
}

#[test]
fn oversized_message_queued_before_handshake_is_dropped() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    c.send(Bytes::from(vec![1; 5000]), t0).unwrap();
    c.send(Bytes::from_static(b"fits"), t0).unwrap();
    c.handle_input(&hello_with(|h| h.max_message_len = 4096), t0);
    let ev = events(&mut c);
    assert!(ev.contains(&Event::MessageDropped {
        len: 5000,
        peer_max: 4096
    }));
    let msgs = decode_all(&transmit_all(&mut c, t0));
    assert_eq!(msgs[1], Message::Data(Bytes::from_static(b"fits")));
}

#[test]
fn pong_goes_ahead_of_queued_data() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    c.handle_input(&hello_with(|_| {}), t0);
    let _ = transmit_all(&mut c, t0);
    for _ in 0..3 {
        c.send(Bytes::from(vec![9; 2000]), t0).unwrap();
    }
    // A DATA message already started is finished first.
    let header = c.poll_transmit(t0).unwrap();
    assert_eq!(header.len(), 5);
    c.handle_input(&encode(&Message::Ping(Bytes::from_static(b"a"))), t0);
    c.handle_input(&encode(&Message::Ping(Bytes::from_static(b"b"))), t0);
    let out = [&header[..], &transmit_all(&mut c, t0)].concat();
    let msgs = decode_all(&out);
    assert!(matches!(msgs[0], Message::Data(_)));
    // Only the newest PONG, ahead of the two remaining DATA.
    assert_eq!(msgs[1], Message::Pong(Bytes::from_static(b"b")));
    assert!(matches!(msgs[2], Message::Data(_)));
    assert_eq!(msgs.len(), 4);
}

#[test]
fn peer_close_during_handshake_and_garbage_never_panics() {
    let t0 = Instant::now();
    let mut c = Connection::new(cfg(5, 3), t0).unwrap();
    c.handle_input(
        &encode(&Message::Close {
            code: CloseCode::Normal,
            reason: String::new(),
        }),
        t0,
    );
    // A CLOSE as the first message is a protocol error (HELLO expected).
    assert_eq!(
        closed_code(&events(&mut c)),
        Some((CloseCode::ProtocolError, false))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_messages_random_chunks_all_delivered(
        msgs in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..3000)), 0..40),
        max_chunk in 0usize..64,
        step_ms in 0u64..4000,
    ) {
        let mut net = net(cfg(1, 1), cfg(2, 1));
        net.max_chunk = max_chunk;
        let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
        for (i, (a_sends, body)) in msgs.into_iter().enumerate() {
            let body = Bytes::from(body);
            if a_sends {
                net.a.send(body.clone(), net.now).unwrap();
                to_b.push(body);
            } else {
                net.b.send(body.clone(), net.now).unwrap();
                to_a.push(body);
            }
            if i % 3 == 0 {
                net.run_until(net.now + ms(step_ms));
            }
        }
        net.run_until(net.now + secs(5));
        prop_assert_eq!(data_of(&net.ev_b), to_b);
        prop_assert_eq!(data_of(&net.ev_a), to_a);
        prop_assert_eq!(closed_code(&net.ev_a), None);
        prop_assert_eq!(net.a.state(), State::Open);
    }

    #[test]
    fn arbitrary_input_never_panics(
        prefix_hello in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..32,
    ) {
        let t0 = Instant::now();
        let mut c = Connection::new(cfg(1, 1), t0).unwrap();
        let mut input = if prefix_hello { hello_with(|_| {}) } else { Vec::new() };
        input.extend_from_slice(&garbage);
        for (i, part) in input.chunks(chunk).enumerate() {
            let now = t0 + ms(i as u64 * 300);
            c.handle_input(part, now);
            c.handle_timeout(now);
            let _ = transmit_all(&mut c, now);
            let _ = c.send(Bytes::from_static(b"x"), now);
        }
        c.handle_eof(t0 + secs(100));
        let _ = transmit_all(&mut c, t0 + secs(100));
        let ev = events(&mut c);
        let n_closed = ev.iter().filter(|e| matches!(e, Event::Closed { .. })).count();
        prop_assert!(n_closed <= 1);
        prop_assert!(c.is_closed());
    }
}

// ---- sessions (section 12) ----

/// A client and a server machine joined by a lossy pipe that can be cut at any moment:
/// bytes in flight are lost and both sides see the stream end. Sessions move to the next
/// connection (client) or into the store (server).
struct SessionSim {
    /// `a` is the client, `b` the server; its random generator also picks the cut points.
    link: Pair<Connection>,
    config: ConnectionConfig,
    store: crate::session::SessionStore,
    /// Messages each side's application has sent so far (payload = its number).
    sent_c: u32,
    sent_s: u32,
    /// What each application received, in order.
    got_c: Vec<u32>,
    got_s: Vec<u32>,
    /// Messages handed back as lost (resumption impossible or session ended).
    lost_c: Vec<u32>,
    lost_s: Vec<u32>,
    cuts: u32,
    resumed: u32,
    /// Messages resent after resumptions (both sides).
    resent: u64,
}

impl SessionSim {
    fn new(seed: u64) -> Self {
        let config = ConnectionConfig {
            sessions: Some(SessionConfig {
                ack_every: 8,
                ack_delay: ms(5),
            }),
            max_queued_bytes: 4096,
            ..cfg(5, 5)
        };
        let now = Instant::now();
        let session = Session::new([0x5e; 16]);
        let mut link = Pair::new(
            Connection::with_session(config.clone(), session, now).unwrap(),
            Connection::new(config.clone(), now).unwrap(),
            now,
        );
        link.rng = Rng::new(seed);
        SessionSim {
            link,
            config,
            store: crate::session::SessionStore::new(secs(60), 16),
            sent_c: 0,
            sent_s: 0,
            got_c: Vec::new(),
            got_s: Vec::new(),
            lost_c: Vec::new(),
            lost_s: Vec::new(),
            cuts: 0,
            resumed: 0,
            resent: 0,
        }
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.link.rng.below(n)
    }

    fn number(payload: &Bytes) -> u32 {
        u32::from_be_bytes(payload[..4].try_into().unwrap())
    }

    /// Drains both machines' events.
    fn events(&mut self) {
        while let Some(e) = self.link.a.poll_event() {
            match e {
                Event::Data(p) => self.got_c.push(Self::number(&p)),
                Event::SessionLost { unacked, .. } => {
                    self.lost_c.extend(unacked.iter().map(Self::number))
                }
                Event::SessionStarted {
                    status, resending, ..
                } => {
                    self.resumed += u32::from(status == ResumeStatus::Resumed);
                    self.resent += resending;
                }
                Event::Closed { error: Some(e), .. } if matches!(*e, ConnectionError::Wire(_)) => {
                    panic!("client protocol error: {e}")
                }
                _ => {}
            }
        }
        while let Some(e) = self.link.b.poll_event() {
            match e {
                Event::Data(p) => self.got_s.push(Self::number(&p)),
                Event::SessionRequest { id, proof, .. } => {
                    use crate::session::Resolution;
                    match self.store.resolve(&id, proof.as_deref(), self.link.now) {
                        Resolution::Resume(found) => self
                            .link
                            .b
                            .attach_session(Some(found), self.link.now)
                            .unwrap(),
                        Resolution::New => self.link.b.attach_session(None, self.link.now).unwrap(),
                        Resolution::Replace(mut old) | Resolution::Expired(mut old) => {
                            self.lost_s
                                .extend(old.take_unacked().iter().map(Self::number));
                            self.link.b.attach_session(None, self.link.now).unwrap()
                        }
                        Resolution::Refuse(why) => panic!("session refused: {why}"),
                    }
                }
                Event::SessionStarted { resending, .. } => self.resent += resending,
                Event::SessionLost { unacked, .. } => {
                    self.lost_s.extend(unacked.iter().map(Self::number))
                }
                Event::Closed { error: Some(e), .. } if matches!(*e, ConnectionError::Wire(_)) => {
                    panic!("server protocol error: {e}")
                }
                _ => {}
            }
        }
    }

    /// Moves up to `budget` bytes each way.
    fn pump(&mut self, budget: usize) {
        self.link.pump(budget);
        self.events();
    }

    /// Each application sends what its connection accepts, up to `until`.
    fn send(&mut self, until: u32) {
        while self.sent_c < until {
            let m = Bytes::from((self.sent_c + 1).to_be_bytes().to_vec());
            if self.link.a.send(m, self.link.now).is_err() {
                break;
            }
            self.sent_c += 1;
        }
        while self.sent_s < until && self.link.b.state() == State::Open {
            let m = Bytes::from((self.sent_s + 1).to_be_bytes().to_vec());
            if self.link.b.send(m, self.link.now).is_err() {
                break;
            }
            self.sent_s += 1;
        }
    }

    fn tick(&mut self, d: Duration) {
        self.link.tick(d);
        self.events();
    }

    /// The link dies: bytes in flight are lost (some already transmitted ones too), both
    /// sides see the stream end, sessions move on, a new connection starts.
    fn cut(&mut self) {
        self.cuts += 1;
        // Some output is transmitted into the void.
        let lost = self.rand(4);
        self.link.cut(lost);
        self.events();
        let client_session = self
            .link
            .a
            .take_session()
            .expect("client keeps its session");
        if let Some(s) = self.link.b.take_session() {
            self.store.detach(s, self.link.now);
        }
        self.link.a =
            Connection::with_session(self.config.clone(), client_session, self.link.now).unwrap();
        self.link.b = Connection::new(self.config.clone(), self.link.now).unwrap();
    }

    /// Sends `total` messages each way with `cuts` link failures at random points, then
    /// runs to quiescence; checks exactly-once, in-order delivery both ways.
    fn run(&mut self, total: u32, cuts: u32) {
        let mut steps = 0;
        while (self.got_s.len() as u32) < total || (self.got_c.len() as u32) < total {
            steps += 1;
            assert!(
                steps < 200_000,
                "no progress: {} {}",
                self.got_s.len(),
                self.got_c.len()
            );
            // The applications send in small bursts, so the link is cut mid-stream often.
            let burst = 1 + self.rand(40) as u32;
            self.send((self.sent_c.min(self.sent_s) + burst).min(total));
            let budget = 1 + self.rand(400) as usize;
            self.pump(budget);
            self.tick(ms(1));
            if self.cuts < cuts && self.rand(4) == 0 {
                self.cut();
            }
        }
        let expect: Vec<u32> = (1..=total).collect();
        assert_eq!(self.got_s, expect, "server received");
        assert_eq!(self.got_c, expect, "client received");
        assert!(self.lost_c.is_empty() && self.lost_s.is_empty());
    }
}

#[test]
fn session_delivers_exactly_once_in_order_across_many_cuts() {
    let mut sim = SessionSim::new(0xC0FFEE);
    sim.run(3_000, 40);
    assert_eq!(sim.cuts, 40);
    // A resume takes two round trips (HELLOs, then AUTH and RESUME): cuts land in some.
    assert!(sim.resumed >= 20, "only {} resumptions", sim.resumed);
    assert!(sim.resent > 100, "only {} messages resent", sim.resent);
    // Resends happened and duplicates were dropped rather than delivered.
    let c = sim.link.a.session().unwrap();
    assert_eq!(c.delivered(), 3_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn session_exactly_once_for_any_cut_pattern(seed in any::<u64>(), cuts in 0u32..25) {
        let mut sim = SessionSim::new(seed);
        sim.run(600, cuts);
    }
}

#[test]
fn session_keeps_messages_sent_while_the_connection_dies() {
    let mut sim = SessionSim::new(17);
    sim.run(5, 0);
    sim.link.a.handle_eof(sim.link.now);
    assert!(sim.link.a.is_closed());
    // The runtime may still hand over messages it had accepted: they join the session.
    sim.link
        .a
        .send(Bytes::from(6u32.to_be_bytes().to_vec()), sim.link.now)
        .unwrap();
    sim.sent_c = 6;
    sim.link.b.handle_eof(sim.link.now);
    let session = sim.link.a.take_session().unwrap();
    assert_eq!(session.next_seq(), 7, "message 6 is in the session");
    sim.link.a = Connection::with_session(sim.config.clone(), session, sim.link.now).unwrap();
    if let Some(s) = sim.link.b.take_session() {
        sim.store.detach(s, sim.link.now);
    }
    sim.link.b = Connection::new(sim.config.clone(), sim.link.now).unwrap();
    sim.run(6, 0);
}

#[test]
fn a_session_message_too_long_for_the_peer_is_dropped_at_the_first_handshake() {
    let mut sim = SessionSim::new(5);
    // The server accepts the minimum; the client learns it only from the server's HELLO.
    let small = ConnectionConfig {
        max_message_len: crate::wire::MIN_MAX_MESSAGE_LEN,
        max_queued_bytes: 64 * 1024,
        ..sim.config.clone()
    };
    sim.link.b = Connection::new(small, sim.link.now).unwrap();
    let big = Bytes::from(vec![0xEE; crate::wire::MIN_MAX_MESSAGE_LEN as usize]);
    let mut client = Connection::with_session(
        ConnectionConfig {
            max_queued_bytes: 64 * 1024,
            ..sim.config.clone()
        },
        Session::new([0x5e; 16]),
        sim.link.now,
    )
    .unwrap();
    for payload in [
        Bytes::from_static(&[0, 0, 0, 1]),
        big,
        Bytes::from_static(&[0, 0, 0, 2]),
    ] {
        client.send(payload, sim.link.now).unwrap();
    }
    sim.link.a = client;
    let mut dropped = Vec::new();
    for _ in 0..4 {
        for to_server in [true, false] {
            let (src, dst) = if to_server {
                (&mut sim.link.a, &mut sim.link.b)
            } else {
                (&mut sim.link.b, &mut sim.link.a)
            };
            while let Some(chunk) = src.poll_transmit(sim.link.now) {
                dst.recv_buf().extend_from_slice(&chunk);
                dst.process_input(sim.link.now);
            }
        }
        while let Some(event) = sim.link.a.poll_event() {
            if let Event::MessageDropped { len, peer_max } = event {
                dropped.push((len, peer_max));
            }
        }
        sim.events();
    }
    // The others are renumbered and delivered; the session goes on (no protocol error).
    assert_eq!(dropped, vec![(4096, 4096)]);
    assert_eq!(sim.got_s, vec![1, 2]);
    assert_eq!(sim.link.a.state(), State::Open);
    assert_eq!(sim.link.a.session().unwrap().next_seq(), 3);
}

#[test]
fn session_acks_follow_the_policy_and_piggyback_on_data() {
    let mut sim = SessionSim::new(21);
    sim.pump(1 << 20);
    sim.pump(1 << 20);
    let m = |i: u32| Bytes::from(i.to_be_bytes().to_vec());
    for i in 1..=3 {
        sim.link.a.send(m(i), sim.link.now).unwrap();
    }
    sim.pump(1 << 20);
    assert_eq!(sim.got_s, vec![1, 2, 3]);
    // Nothing to send back, fewer than ack_every (8), delay (5 ms) not over: no ACK yet.
    let server_ack = |sim: &SessionSim| sim.link.b.session.as_ref().unwrap().ack_sent;
    assert_eq!(server_ack(&sim), 0);
    assert_eq!(sim.link.a.session().unwrap().acked(), 0);
    sim.tick(ms(6));
    sim.pump(1 << 20);
    assert_eq!(server_ack(&sim), 3);
    assert_eq!(sim.link.a.session().unwrap().acked(), 3);
    // Data going the other way carries the ACK at once.
    sim.link.a.send(m(4), sim.link.now).unwrap();
    sim.pump(1 << 20);
    sim.link.b.send(m(1), sim.link.now).unwrap();
    sim.pump(1 << 20);
    assert_eq!(server_ack(&sim), 4);
    assert_eq!(sim.link.a.session().unwrap().acked(), 4);
}

#[test]
fn session_retransmit_buffer_is_bounded_by_the_queue_limit() {
    let mut sim = SessionSim::new(7);
    // Nothing moves: the client can only buffer up to max_queued_bytes (4096).
    sim.send(10_000);
    let buffered = sim.link.a.queued_bytes();
    assert!(buffered <= 4096, "{buffered}");
    assert_eq!(sim.sent_c as usize, 4096 / (4 + SDATA_OVERHEAD));
    assert!(matches!(
        sim.link.a.send(Bytes::from_static(b"more"), sim.link.now),
        Err(SendError::QueueFull { limit: 4096, .. })
    ));
    // Acknowledgements make room.
    sim.run(sim.sent_c, 0);
    assert_eq!(sim.link.a.queued_bytes(), 0);
}

#[test]
fn session_lost_when_the_server_no_longer_has_it() {
    let mut sim = SessionSim::new(11);
    sim.run(50, 0);
    // Unacknowledged messages in flight, then the link dies and the server restarts.
    for i in 51..=60u32 {
        sim.link
            .a
            .send(Bytes::from(i.to_be_bytes().to_vec()), sim.link.now)
            .unwrap();
    }
    sim.sent_c = 60;
    sim.cut();
    sim.store = crate::session::SessionStore::new(secs(60), 16); // restarted: empty
                                                                 // HELLOs; AUTH; RESUME.
    sim.pump(1 << 20);
    sim.pump(1 << 20);
    sim.pump(1 << 20);
    // The application gets the 10 messages back, the session goes on as a new one.
    assert_eq!(sim.lost_c, (51..=60).collect::<Vec<_>>());
    let session = sim.link.a.session().unwrap();
    assert_eq!((session.next_seq(), session.delivered()), (1, 0));
    sim.link
        .a
        .send(Bytes::from(1000u32.to_be_bytes().to_vec()), sim.link.now)
        .unwrap();
    sim.pump(1 << 20);
    assert_eq!(sim.got_s.last(), Some(&1000));
}

#[test]
fn session_ends_with_a_normal_close() {
    let mut sim = SessionSim::new(3);
    sim.run(20, 0);
    sim.link.a.close(CloseCode::Normal, "done", sim.link.now);
    for _ in 0..4 {
        sim.pump(1 << 20);
    }
    assert!(sim.link.a.is_closed() && sim.link.b.is_closed());
    assert!(sim.link.a.take_session().is_none());
    assert!(sim.link.b.take_session().is_none());
    assert!(sim.lost_c.is_empty() && sim.lost_s.is_empty());
}

#[test]
fn session_unavailable_when_the_peer_does_not_offer() {
    let mut net = net(cfg(5, 5), cfg(5, 5));
    net.a = Connection::with_session(cfg(5, 5), Session::new([1; 16]), net.now).unwrap();
    net.run_until(net.now + ms(10));
    assert!(net.ev_a.iter().any(|e| matches!(
        e,
        Event::Closed {
            error: Some(e),
            code: CloseCode::UnsupportedVersion,
            ..
        } if matches!(**e, ConnectionError::SessionUnavailable)
    )));
}

/// A session with `pushed` messages, `transmitted` of them put on the wire.
fn session_with(pushed: u8, transmitted: u64) -> Session {
    let mut s = Session::new([0x42; 16]);
    for i in 0..pushed {
        s.push(Bytes::from(vec![i]), usize::MAX).unwrap();
    }
    s.mark_transmitted(transmitted);
    s
}

#[test]
fn forged_resume_delivered_is_refused_and_nothing_is_skipped() {
    let offer = ConnectionConfig {
        sessions: Some(SessionConfig::default()),
        ..cfg(5, 5)
    };
    let now = Instant::now();
    let mut server = Connection::new(offer.clone(), now).unwrap();
    let offer_hello = transmit_all(&mut server, now);
    for (status, delivered) in [
        // A session never confirmed: nothing was transmitted, nothing can be delivered.
        (ResumeStatus::Resumed, 5),
        (ResumeStatus::Resumed, 11),
    ] {
        // Ten messages queued in a brand-new session: SDATA waits for the RESUME.
        let mut client =
            Connection::with_session(offer.clone(), Session::new([0x42; 16]), now).unwrap();
        for i in 0..10u8 {
            client.send(Bytes::from(vec![i]), now).unwrap();
        }
        client.handle_input(&offer_hello, now);
        let resume = Message::Resume {
            status,
            delivered,
            secret: None,
        };
        client.handle_input(&encode(&resume), now);
        let ev = events(&mut client);
        assert_eq!(
            closed_code(&ev),
            Some((CloseCode::ProtocolError, false)),
            "{delivered}: {ev:?}"
        );
        let session = client.take_session().expect("kept for the next connection");
        assert_eq!(
            (session.acked(), session.unacked_len()),
            (0, 10),
            "{delivered}"
        );
    }
}

/// A server that received a client's resume request (with its AUTH) for session `0x42..`:
/// the client claims to have delivered `delivered` of the server's messages and holds
/// `secret`. Returns the server, not yet attached, and its events so far.
fn resume_requested(
    offer: &ConnectionConfig,
    secret: &SessionSecret,
    delivered: u64,
    now: Instant,
) -> (Connection, Vec<Event>) {
    let mut peer_state = Session::new([0x42; 16]);
    peer_state.set_secret(secret.clone());
    for seq in 1..=delivered {
        peer_state.receive(seq);
    }
    let mut client = Connection::with_session(offer.clone(), peer_state, now).unwrap();
    let mut server = Connection::new(offer.clone(), now).unwrap();
    let request = transmit_all(&mut client, now);
    client.handle_input(&transmit_all(&mut server, now), now);
    server.handle_input(&request, now);
    server.handle_input(&transmit_all(&mut client, now), now); // AUTH
    let ev = events(&mut server);
    (server, ev)
}

#[test]
fn forged_request_delivered_is_refused_and_nothing_is_skipped() {
    let offer = ConnectionConfig {
        sessions: Some(SessionConfig::default()),
        ..cfg(5, 5)
    };
    let now = Instant::now();
    let secret = SessionSecret::from_bytes([0x5a; 16]);
    for (transmitted, ok) in [(3, false), (7, true), (10, true)] {
        // The client claims to have delivered 7 of our messages, and holds the secret.
        let (mut server, ev) = resume_requested(&offer, &secret, 7, now);
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::SessionRequest {
                peer_delivered: 7,
                proof: Some(_),
                ..
            }
        )));
        // The detached session holds 10 messages, `transmitted` of them sent before.
        let mut kept = session_with(10, transmitted);
        kept.set_secret(secret.clone());
        server.attach_session(Some(kept), now).unwrap();
        let ev = events(&mut server);
        if ok {
            assert!(
                ev.iter().any(|e| matches!(
                    e,
                    Event::SessionStarted {
                        status: ResumeStatus::Resumed,
                        resending,
                        ..
                    } if *resending == transmitted - 7
                )),
                "{ev:?}"
            );
            assert_eq!(server.session().unwrap().acked(), 7);
        } else {
            // Messages 4..=7 never went out: accepting "delivered 7" would lose them.
            assert_eq!(closed_code(&ev), Some((CloseCode::ProtocolError, false)));
            let session = server.take_session().expect("kept");
            assert_eq!((session.acked(), session.unacked_len()), (0, 10));
        }
    }
}

#[test]
fn an_ack_while_closing_counts_only_what_this_connection_carried() {
    let offer = ConnectionConfig {
        sessions: Some(SessionConfig::default()),
        ..cfg(5, 5)
    };
    let now = Instant::now();
    let secret = SessionSecret::from_bytes([0x5a; 16]);
    // The client delivered 7 of the 10 messages the session holds; the server resumes it and
    // closes before resending 8..=10 on this connection.
    let (mut server, _) = resume_requested(&offer, &secret, 7, now);
    let mut kept = session_with(10, 10);
    kept.set_secret(secret);
    server.attach_session(Some(kept), now).unwrap();
    assert_eq!(server.session().unwrap().acked(), 7);
    server.close(CloseCode::GoingAway, "bye", now);
    // A forged final ACK for messages this connection never carried: ignored.
    server.handle_input(&encode(&Message::Ack(10)), now);
    let session = server.take_session().expect("kept for the next connection");
    assert_eq!((session.acked(), session.unacked_len()), (7, 3));
}

#[test]
fn an_ack_below_what_was_acknowledged_is_refused() {
    let mut sim = SessionSim::new(3);
    sim.run(200, 0);
    let acked = sim.link.a.session().unwrap().acked();
    assert!(acked > 0);
    sim.link
        .a
        .handle_input(&encode(&Message::Ack(acked - 1)), sim.link.now);
    let ev = events(&mut sim.link.a);
    assert_eq!(closed_code(&ev), Some((CloseCode::ProtocolError, false)));
    assert_eq!(sim.link.a.session().unwrap().acked(), acked);
}

#[test]
fn session_messages_out_of_place_are_protocol_errors() {
    let offer = ConnectionConfig {
        sessions: Some(SessionConfig::default()),
        ..cfg(5, 5)
    };
    for bad in [
        Message::Ack(1),
        Message::Resume {
            status: ResumeStatus::New,
            delivered: 0,
            secret: Some(SessionSecret::from_bytes([1; 16])),
        },
        Message::Auth([0; 32]),
        Message::SessionData {
            seq: 1,
            payload: Bytes::new(),
        },
    ] {
        let mut c = Connection::new(offer.clone(), Instant::now()).unwrap();
        let now = Instant::now();
        c.handle_input(&hello_with(|_| {}), now);
        c.handle_input(&encode(&bad), now);
        let ev = events(&mut c);
        assert_eq!(
            closed_code(&ev),
            Some((CloseCode::ProtocolError, false)),
            "{bad:?}"
        );
    }
    // DATA inside a session is refused too.
    let mut sim = SessionSim::new(5);
    sim.run(1, 0);
    sim.link.b.handle_input(
        &encode(&Message::Data(Bytes::from_static(b"x"))),
        sim.link.now,
    );
    let ev = events(&mut sim.link.b);
    assert_eq!(closed_code(&ev), Some((CloseCode::ProtocolError, false)));
}

/// The accepting side's configuration with sessions offered, defaults otherwise.
fn offering_sessions() -> ConnectionConfig {
    ConnectionConfig {
        sessions: Some(SessionConfig::default()),
        ..ConnectionConfig::default()
    }
}

/// Client `a` and server `b` exchange until quiet; the server attaches `kept` (or a new
/// session) when asked. Returns both sides' events.
fn session_exchange(
    a: &mut Connection,
    b: &mut Connection,
    mut kept: Option<Session>,
    now: Instant,
) -> (Vec<Event>, Vec<Event>) {
    let (mut ev_a, mut ev_b) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        while let Some(x) = a.poll_transmit(now) {
            b.handle_input(&x, now);
        }
        while let Some(e) = b.poll_event() {
            if let Event::SessionRequest { .. } = e {
                b.attach_session(kept.take(), now).unwrap();
            }
            ev_b.push(e);
        }
        while let Some(x) = b.poll_transmit(now) {
            a.handle_input(&x, now);
        }
        ev_a.extend(std::iter::from_fn(|| a.poll_event()));
    }
    (ev_a, ev_b)
}

/// A message that reaches a session while no connection carries it is checked against no
/// limit. One the peer can never take (here 1 byte under its `max_message_len`, which an
/// SDATA's 9-byte header overflows) is dropped and reported when the next connection learns
/// the limit, and the session carries on, instead of being resent and refused on every
/// connection.
#[test]
fn a_session_message_the_peer_can_never_take_is_dropped_not_resent_forever() {
    const MAX: u32 = 4096;
    let t0 = Instant::now();
    let server_cfg = ConnectionConfig {
        max_message_len: MAX,
        ..offering_sessions()
    };
    let mut a =
        Connection::with_session(ConnectionConfig::default(), Session::new([5; 16]), t0).unwrap();
    let mut b = Connection::new(server_cfg.clone(), t0).unwrap();
    session_exchange(&mut a, &mut b, None, t0);
    let too_big = Bytes::from(vec![7u8; MAX as usize - 1]);
    // Open: refused up front, counting the session's header.
    assert_eq!(
        a.check_message(&too_big),
        Err(SendError::TooBig {
            len: MAX as usize - 1,
            max: MAX
        })
    );
    assert_eq!(a.max_payload_len(), Some(u64::from(MAX) - 9));
    a.send(Bytes::from_static(b"one"), t0).unwrap();
    session_exchange(&mut a, &mut b, None, t0);
    // The link fails; a send racing the failure joins the session unchecked.
    a.handle_eof(t0);
    b.handle_eof(t0);
    a.send(too_big, t0).unwrap();
    a.send(Bytes::from_static(b"two"), t0).unwrap();
    let (mut client, mut server) = (a.take_session().unwrap(), b.take_session().unwrap());
    for round in 0..2 {
        let now = t0 + secs(round + 1);
        let mut a = Connection::with_session(ConnectionConfig::default(), client, now).unwrap();
        let mut b = Connection::new(server_cfg.clone(), now).unwrap();
        let (ev_a, ev_b) = session_exchange(&mut a, &mut b, Some(server), now);
        let dropped: Vec<_> = ev_a
            .iter()
            .filter(|e| matches!(e, Event::MessageDropped { .. }))
            .collect();
        let closed = |ev: &[Event]| ev.iter().any(|e| matches!(e, Event::Closed { .. }));
        assert!(!closed(&ev_a) && !closed(&ev_b), "{ev_a:?} {ev_b:?}");
        if round == 0 {
            assert_eq!(
                dropped,
                vec![&Event::MessageDropped {
                    len: MAX as usize - 1,
                    peer_max: MAX
                }]
            );
            assert_eq!(data_of(&ev_b), vec![Bytes::from_static(b"two")]);
        } else {
            assert!(dropped.is_empty() && data_of(&ev_b).is_empty());
        }
        // At most "two" is left to acknowledge: the message that could never go is gone.
        assert!(a.session().unwrap().buffered_bytes() < 100);
        a.handle_eof(now);
        b.handle_eof(now);
        (client, server) = (a.take_session().unwrap(), b.take_session().unwrap());
    }
}

/// The accepting side's application sends before the session is decided, then the session is
/// refused: the CLOSE goes out at once (it used to wait behind messages that can only go in a
/// session, until keep-alive ended the connection), and the messages are handed back.
#[test]
fn a_refused_session_closes_at_once_despite_messages_queued_for_it() {
    let t0 = Instant::now();
    let server_cfg = offering_sessions();
    let mut a =
        Connection::with_session(ConnectionConfig::default(), Session::new([6; 16]), t0).unwrap();
    let mut b = Connection::new(server_cfg, t0).unwrap();
    while let Some(x) = a.poll_transmit(t0) {
        b.handle_input(&x, t0);
    }
    assert!(
        std::iter::from_fn(|| b.poll_event()).any(|e| matches!(e, Event::SessionRequest { .. }))
    );
    b.send(Bytes::from_static(b"early"), t0).unwrap();
    b.refuse_session("not today", t0);
    let out: Vec<u8> = std::iter::from_fn(|| b.poll_transmit(t0))
        .flatten()
        .collect();
    a.handle_input(&out, t0);
    assert!(
        std::iter::from_fn(|| a.poll_event()).any(|e| matches!(
            e,
            Event::Closed {
                code: CloseCode::SessionRefused,
                by_peer: true,
                ..
            }
        )),
        "no CLOSE 9 reached the requester"
    );
    assert_eq!(b.take_unsent(), vec![Bytes::from_static(b"early")]);
}

/// `resending` counts messages sent again, not those queued before the first connection
/// opened (sent for the first time).
#[test]
fn a_new_session_resends_nothing() {
    let t0 = Instant::now();
    let server_cfg = offering_sessions();
    let mut a =
        Connection::with_session(ConnectionConfig::default(), Session::new([8; 16]), t0).unwrap();
    for m in ["one", "two", "three"] {
        a.send(Bytes::from_static(m.as_bytes()), t0).unwrap();
    }
    let mut b = Connection::new(server_cfg, t0).unwrap();
    let (ev_a, ev_b) = session_exchange(&mut a, &mut b, None, t0);
    let started: Vec<_> = ev_a
        .iter()
        .chain(&ev_b)
        .filter_map(|e| match e {
            Event::SessionStarted {
                status, resending, ..
            } => Some((*status, *resending)),
            _ => None,
        })
        .collect();
    assert_eq!(started, [(ResumeStatus::New, 0), (ResumeStatus::New, 0)]);
    assert_eq!(data_of(&ev_b).len(), 3);
}

/// A graceful close to a peer that stops reading (our output cannot go out) is given up on
/// `linger` after the last output, even with no keep-alive to find the peer dead: closing
/// never waits forever. What was queued and not written is handed back.
#[test]
fn a_close_whose_output_stalls_gives_up_after_linger() {
    let t0 = Instant::now();
    let quiet = ConnectionConfig {
        ping_interval: None,
        ..ConnectionConfig::default()
    };
    let linger = quiet.linger;
    let (mut a, mut b) = (
        Connection::new(quiet.clone(), t0).unwrap(),
        Connection::new(quiet, t0).unwrap(),
    );
    for _ in 0..3 {
        while let Some(x) = a.poll_transmit(t0) {
            b.handle_input(&x, t0);
        }
        while let Some(x) = b.poll_transmit(t0) {
            a.handle_input(&x, t0);
        }
    }
    assert_eq!(a.state(), State::Open);
    assert_eq!(a.poll_timeout(), None, "no keep-alive, no timer");
    // Large enough not to be glued into one write.
    for i in 0..3u8 {
        a.send(Bytes::from(vec![i; 256 * 1024]), t0).unwrap();
    }
    a.close(CloseCode::Normal, "bye", t0);
    // The runtime takes one message, then the socket is full: it asks for no more.
    let first = a.poll_transmit(t0 + ms(1)).expect("a message goes out");
    assert!(!first.is_empty());
    assert_eq!(a.poll_timeout(), Some(t0 + ms(1) + linger));
    a.handle_timeout(t0 + ms(1) + linger - ms(1));
    assert_eq!(a.state(), State::Closing);
    a.handle_timeout(t0 + ms(1) + linger);
    assert_eq!(a.state(), State::Closed);
    assert!(!a.take_unsent().is_empty());
}

/// The requester resumes and ends the session (CLOSE `Normal`) before the accepting side has
/// looked it up: attaching it then hands back what the requester never acknowledged, instead
/// of dropping it with the session.
#[test]
fn a_session_ended_while_it_was_looked_up_is_handed_back() {
    let t0 = Instant::now();
    let server_cfg = offering_sessions();
    let mut a =
        Connection::with_session(ConnectionConfig::default(), Session::new([9; 16]), t0).unwrap();
    let mut b = Connection::new(server_cfg.clone(), t0).unwrap();
    session_exchange(&mut a, &mut b, None, t0);
    // The server sends, the link dies before the client sees it.
    b.send(Bytes::from_static(b"never acked"), t0).unwrap();
    while b.poll_transmit(t0).is_some() {}
    a.handle_eof(t0);
    b.handle_eof(t0);
    let (client, kept) = (a.take_session().unwrap(), b.take_session().unwrap());
    let now = t0 + secs(1);
    let mut a = Connection::with_session(ConnectionConfig::default(), client, now).unwrap();
    let mut b = Connection::new(server_cfg, now).unwrap();
    let mut requested = false;
    for _ in 0..4 {
        while let Some(x) = a.poll_transmit(now) {
            b.handle_input(&x, now);
        }
        requested |= std::iter::from_fn(|| b.poll_event())
            .any(|e| matches!(e, Event::SessionRequest { .. }));
        while let Some(x) = b.poll_transmit(now) {
            a.handle_input(&x, now);
        }
        while a.poll_event().is_some() {}
    }
    assert!(requested);
    // The client ends the session while the server is still looking it up.
    a.close(CloseCode::Normal, "done", now);
    while let Some(x) = a.poll_transmit(now) {
        b.handle_input(&x, now);
    }
    b.attach_session(Some(kept), now).unwrap();
    let lost: Vec<_> = std::iter::from_fn(|| b.poll_event())
        .filter_map(|e| match e {
            Event::SessionLost { unacked, .. } => Some(unacked),
            _ => None,
        })
        .collect();
    assert_eq!(lost, vec![vec![Bytes::from_static(b"never acked")]]);
}

/// `send_checked` is for a driver whose send budget already admitted the message: the queue
/// limit is the driver's, and a message it admitted is never refused for it (a resumed
/// session's messages may be counted by the machine before the budget knows of them).
#[test]
fn send_checked_leaves_the_queue_limit_to_the_caller() {
    let t0 = Instant::now();
    let small = ConnectionConfig {
        max_queued_bytes: 4096,
        ..ConnectionConfig::default()
    };
    let mut c = Connection::new(small, t0).unwrap();
    let payload = Bytes::from(vec![0u8; 3000]);
    c.send(payload.clone(), t0).unwrap();
    assert!(matches!(
        c.send(payload.clone(), t0),
        Err(SendError::QueueFull { .. })
    ));
    c.send_checked(payload, t0).unwrap();
    assert_eq!(c.queued_bytes(), 2 * (3000 + DATA_OVERHEAD));
}
