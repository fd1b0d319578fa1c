//! Tests of raw mode: framing across splits, ping / pong matching and answering, dead-peer timing,
//! closing, bounds, and property tests against a model.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::{DecodeErrorKind, EncodeError, FrameDecoder, FrameEncoder, Framing};
use crate::connection::{ConnectionError, Event, SendError, State, COALESCE, COPY_THRESHOLD};
use crate::liveness::IdleKind;
use crate::liveness::{DeathCause, LivenessConfigError};
use crate::machine::Machine;
use crate::tests::util::{data_of as data, events, ms, run_until, secs, transmit_all, Pair};
use crate::wire::CloseCode;
use proptest::prelude::*;

fn framing(spec: &str) -> Framing {
    spec.parse().unwrap()
}

fn config(spec: &str) -> RawConfig {
    RawConfig::new(framing(spec))
}

/// The Netty-style setup of the module example: "length:4", ping "PING", pong "PONG",
/// interval 15 s, timeout 10 s.
fn netty() -> RawConfig {
    RawConfig {
        ping: Some(Bytes::from_static(b"PING")),
        pong: FrameMatcher::exact(&b"PONG"[..]),
        ..config("length:4")
    }
}

fn conn(cfg: RawConfig, t0: Instant) -> RawConnection {
    RawConnection::new(cfg, t0).unwrap()
}

#[test]
fn messages_never_written_are_handed_back_once_closed() {
    let t0 = Instant::now();
    let mut c = conn(config("length:4"), t0);
    c.send(Bytes::from_static(b"written"), t0).unwrap();
    let wire = transmit_all(&mut c, t0);
    assert_eq!(wire, encode("length:4", &[b"written"]));
    c.send(Bytes::from_static(b"one"), t0).unwrap();
    c.send(Bytes::from_static(b"two"), t0).unwrap();
    assert!(c.take_unsent().is_empty(), "still queued, not lost");
    c.handle_eof(t0);
    assert_eq!(
        c.take_unsent(),
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    assert!(c.take_unsent().is_empty(), "taken once");
}

fn encode(spec: &str, payloads: &[&[u8]]) -> Vec<u8> {
    let f = framing(spec);
    let mut out = BytesMut::new();
    for p in payloads {
        f.encode(p, &mut out).unwrap();
    }
    out.to_vec()
}

fn closed(events: &[Event]) -> Vec<(CloseCode, bool, Option<ConnectionError>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Closed {
                code,
                by_peer,
                error,
                ..
            } => Some((*code, *by_peer, error.as_deref().cloned())),
            _ => None,
        })
        .collect()
}

fn shutdowns(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ShutdownWrite))
        .count()
}

#[test]
fn frames_are_delivered_and_echoed_across_every_split() {
    let big: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let payloads: Vec<&[u8]> = vec![b"a", b"", b"hello world", &big, b"end"];
    for spec in [
        "length:4",
        "length:2,le",
        "varint",
        "lines",
        "netstring",
        "delim:00",
        "magic:cafe",
    ] {
        let stream = encode(spec, &payloads);
        let t0 = Instant::now();
        let cuts: Vec<Vec<usize>> = (0..=stream.len())
            .map(|i| vec![i])
            .chain(std::iter::once((1..stream.len()).collect()))
            .collect();
        for cut in cuts {
            let mut c = conn(config(spec), t0);
            let mut from = 0;
            for &at in cut.iter().chain(std::iter::once(&stream.len())) {
                c.recv_buf().extend_from_slice(&stream[from..at]);
                c.process_input(t0);
                from = at;
            }
            let got = data(&events(&mut c));
            assert_eq!(got, payloads, "{spec} cut {:?}", &cut[..cut.len().min(1)]);
            // Echo: sending the frames back reproduces the stream byte for byte.
            for frame in got {
                c.send(frame, t0).unwrap();
            }
            assert_eq!(transmit_all(&mut c, t0), stream, "{spec} echo");
            assert_eq!(c.queued_bytes(), 0);
        }
    }
}

#[test]
fn large_payloads_are_not_copied() {
    let t0 = Instant::now();
    let mut c = conn(config("length:4"), t0);
    let payload = Bytes::from(vec![7u8; COPY_THRESHOLD + 1]);
    c.send(payload.clone(), t0).unwrap();
    assert_eq!(c.poll_transmit(t0).unwrap(), &[0, 0, 4, 1][..]);
    let body = c.poll_transmit(t0).unwrap();
    assert_eq!(
        body.as_ptr(),
        payload.as_ptr(),
        "the payload itself, not a copy"
    );
    assert_eq!(c.poll_transmit(t0), None);
    let s = c.stats();
    assert_eq!((s.bytes_out, s.messages_out, s.data_out), (4 + 1025, 1, 1));
}

#[test]
fn ping_is_sent_only_after_the_interval_of_quiet() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    assert_eq!(c.state(), State::Open);
    assert_eq!(c.poll_timeout(), Some(t0 + secs(15)));
    c.handle_timeout(t0 + secs(15) - Duration::from_nanos(1));
    assert_eq!(c.poll_transmit(t0 + secs(14)), None);
    c.handle_timeout(t0 + secs(15));
    assert_eq!(
        c.poll_transmit(t0 + secs(15)).unwrap(),
        &b"\0\0\0\x04PING"[..]
    );
    assert_eq!(c.poll_transmit(t0 + secs(15)), None);
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(c.stats().messages_out, 1);
    assert_eq!(c.stats().data_out, 0);
    // Waiting for the answer now.
    assert_eq!(c.poll_timeout(), Some(t0 + secs(25)));
}

#[test]
fn with_pong_always_unsolicited_pongs_are_swallowed_too() {
    let t0 = Instant::now();
    let mut c = conn(
        RawConfig {
            pong_always: true,
            ..netty()
        },
        t0,
    );
    c.handle_input(b"\0\0\0\x04PONG\0\0\0\x02hi", t0 + secs(1));
    assert_eq!(events(&mut c), vec![Event::Data(Bytes::from_static(b"hi"))]);
    assert!(c.rtt().is_none(), "no ping was outstanding: no sample");
    let (_, out) = run_until(&mut c, t0 + secs(16));
    assert_eq!(out, b"\0\0\0\x04PING");
    c.handle_input(b"\0\0\0\x04PONG", t0 + secs(16) + ms(20));
    assert_eq!(events(&mut c), vec![Event::Rtt(ms(20))]);
}

#[test]
fn matched_pong_gives_the_rtt_sample_and_is_swallowed() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    let (_, out) = run_until(&mut c, t0 + secs(15));
    assert_eq!(out, b"\0\0\0\x04PING");
    c.handle_input(b"\0\0\0\x04PONG", t0 + secs(15) + ms(40));
    assert_eq!(events(&mut c), vec![Event::Rtt(ms(40))]);
    assert_eq!(c.rtt().unwrap().latest, ms(40));
    assert_eq!(c.rtt().unwrap().samples, 1);
    // A second pong, with no ping of ours outstanding: it is the peer's data (an echo
    // server echoing a message equal to the pong), delivered, no sample.
    c.handle_input(b"\0\0\0\x04PONG", t0 + secs(16));
    assert_eq!(
        events(&mut c),
        vec![Event::Data(Bytes::from_static(b"PONG"))]
    );
    assert_eq!(c.rtt().unwrap().samples, 1);
    // A frame merely starting like the pong is data.
    c.handle_input(b"\0\0\0\x05PONGS", t0 + secs(16));
    assert_eq!(
        events(&mut c),
        vec![Event::Data(Bytes::from_static(b"PONGS"))]
    );
    // The next ping is due 15 s after the last inbound bytes.
    assert_eq!(c.poll_timeout(), Some(t0 + secs(31)));
    let s = c.stats();
    // Three frames in, two of them data (the unsolicited PONG and PONGS).
    assert_eq!((s.messages_in, s.data_in), (3, 2));
}

#[test]
fn pongs_are_delivered_when_asked_and_only_after_the_ping_went_out() {
    let t0 = Instant::now();
    let mut c = conn(
        RawConfig {
            deliver_heartbeats: true,
            ..netty()
        },
        t0,
    );
    c.handle_timeout(t0 + secs(15));
    // The ping is due but not written yet: a pong now cannot be its answer.
    c.handle_input(b"\0\0\0\x04PONG", t0 + secs(15) + ms(1));
    assert_eq!(
        events(&mut c),
        vec![Event::Data(Bytes::from_static(b"PONG"))]
    );
    assert_eq!(
        c.poll_transmit(t0 + secs(15) + ms(2)).unwrap(),
        &b"\0\0\0\x04PING"[..]
    );
    c.handle_input(b"\0\0\0\x04PONG", t0 + secs(15) + ms(10));
    assert_eq!(
        events(&mut c),
        vec![Event::Rtt(ms(10)), Event::Data(Bytes::from_static(b"PONG"))]
    );
}

#[test]
fn any_matcher_takes_the_first_frame_after_the_ping_and_delivers_it() {
    let t0 = Instant::now();
    let mut c = conn(
        RawConfig {
            pong: FrameMatcher::Any,
            ..netty()
        },
        t0,
    );
    // Before any ping, frames are just data.
    c.handle_input(b"\0\0\0\x01x", t0);
    assert_eq!(events(&mut c), vec![Event::Data(Bytes::from_static(b"x"))]);
    let (_, out) = run_until(&mut c, t0 + secs(15));
    assert_eq!(out, b"\0\0\0\x04PING");
    c.handle_input(b"\0\0\0\x01y\0\0\0\x01z", t0 + secs(15) + ms(5));
    assert_eq!(
        events(&mut c),
        vec![
            Event::Rtt(ms(5)),
            Event::Data(Bytes::from_static(b"y")),
            Event::Data(Bytes::from_static(b"z")),
        ]
    );
}

#[test]
fn predicate_and_prefix_matchers() {
    let t0 = Instant::now();
    for pong in [
        FrameMatcher::predicate(|f| f.first() == Some(&0x81)),
        FrameMatcher::prefix(&[0x81][..]),
    ] {
        let mut c = conn(
            RawConfig {
                ping: Some(Bytes::from_static(&[0x80])),
                pong,
                ..config("length:1")
            },
            t0,
        );
        let (_, out) = run_until(&mut c, t0 + secs(15));
        assert_eq!(out, [1, 0x80]);
        c.handle_input(&[1, 0x01, 3, 0x81, 9, 9], t0 + secs(15) + ms(7));
        assert_eq!(
            events(&mut c),
            vec![Event::Data(Bytes::from_static(&[1])), Event::Rtt(ms(7))]
        );
    }
    let dbg = format!("{:?}", FrameMatcher::predicate(|_| true));
    assert_eq!(dbg, "Predicate(..)");
}

#[test]
fn unanswered_ping_is_death_at_exactly_last_receive_plus_interval_plus_timeout() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    c.handle_input(b"\0\0\0\x02hi", t0 + secs(3));
    let (_, out) = run_until(&mut c, t0 + secs(18));
    assert_eq!(out, b"\0\0\0\x04PING");
    // Sending does not prove the peer alive.
    c.send(Bytes::from_static(b"more"), t0 + secs(20)).unwrap();
    transmit_all(&mut c, t0 + secs(20));
    let dead_at = t0 + secs(3) + secs(15) + secs(10);
    assert_eq!(c.poll_timeout(), Some(dead_at));
    c.handle_timeout(dead_at - Duration::from_nanos(1));
    assert_eq!(events(&mut c), vec![]);
    c.send(Bytes::from_static(b"dropped"), dead_at).unwrap();
    c.handle_timeout(dead_at);
    let ev = events(&mut c);
    let error = ConnectionError::PeerDead {
        silent_for: secs(25),
        cause: DeathCause::PingTimeout {
            context: [0; 8],
            timeout: secs(10),
        },
    };
    assert_eq!(
        ev,
        vec![
            Event::Closed {
                code: CloseCode::PeerTimedOut,
                reason: error.to_string(),
                by_peer: false,
                error: Some(Box::new(error)),
            },
            Event::ShutdownWrite,
        ]
    );
    assert_eq!(c.state(), State::Closed);
    assert!(c.is_drained());
    assert_eq!(c.poll_transmit(dead_at), None, "queued data is dropped");
    assert_eq!(c.queued_bytes(), 0);
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(
        c.send(Bytes::from_static(b"x"), dead_at),
        Err(SendError::Closed)
    );
    // Nothing more, ever.
    c.handle_input(b"\0\0\0\x02hi", dead_at);
    c.handle_eof(dead_at);
    c.close(CloseCode::Normal, "", dead_at);
    assert_eq!(events(&mut c), vec![]);
}

#[test]
fn inbound_bytes_postpone_pings_and_our_sends_do_not() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    // Even part of a frame counts.
    for i in 1..=10u64 {
        c.handle_input(b"\0\0", t0 + secs(10 * i));
        let (_, out) = run_until(&mut c, t0 + secs(10 * i));
        assert!(out.is_empty());
        assert_eq!(c.poll_timeout(), Some(t0 + secs(10 * i + 15)));
    }
    let t = t0 + secs(100);
    c.send(Bytes::from_static(b"x"), t + secs(5)).unwrap();
    transmit_all(&mut c, t + secs(5));
    let (_, out) = run_until(&mut c, t + secs(15));
    assert_eq!(out, b"\0\0\0\x04PING");
}

#[test]
fn idle_only_mode_declares_death_after_interval_plus_timeout_of_silence() {
    let t0 = Instant::now();
    let mut cfg = config("lines");
    cfg.ping_interval = Some(secs(5));
    cfg.ping_timeout = secs(2);
    let mut c = conn(cfg, t0);
    c.handle_input(b"hi\n", t0 + secs(1));
    assert_eq!(data(&events(&mut c)), vec![Bytes::from_static(b"hi")]);
    // Our own traffic does not postpone it.
    c.send(Bytes::from_static(b"out"), t0 + secs(4)).unwrap();
    assert_eq!(transmit_all(&mut c, t0 + secs(4)), b"out\n");
    let dead_at = t0 + secs(1 + 5 + 2);
    let (ev, out) = run_until(&mut c, dead_at - Duration::from_nanos(1));
    assert_eq!(
        (ev, out),
        (vec![], vec![]),
        "nothing is ever sent on our own"
    );
    assert_eq!(c.poll_timeout(), Some(dead_at));
    c.handle_timeout(dead_at);
    let ev = events(&mut c);
    assert_eq!(
        closed(&ev),
        vec![(
            CloseCode::PeerTimedOut,
            false,
            Some(ConnectionError::PeerDead {
                silent_for: secs(7),
                cause: DeathCause::PeerSilent { limit: secs(7) },
            })
        )]
    );
    assert_eq!(shutdowns(&ev), 1);
    assert!(c.is_closed() && c.is_drained());

    // Without an interval: never dead, only idle events.
    let mut cfg = config("lines");
    cfg.ping_interval = None;
    cfg.reader_idle = Some(secs(30));
    let mut c = conn(cfg, t0);
    let (ev, out) = run_until(&mut c, t0 + secs(86_400));
    assert_eq!(ev, vec![Event::Idle(IdleKind::ReaderIdle)]);
    assert!(out.is_empty());
    assert_eq!(c.state(), State::Open);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn idle_timeout_closes_a_link_kept_alive_only_by_heartbeats() {
    let t0 = Instant::now();
    let mut cfg = netty();
    cfg.ping_interval = Some(secs(1));
    cfg.idle_timeout = Some(secs(5));
    let mut c = conn(cfg, t0);
    c.handle_input(&encode("length:4", &[b"hello"]), t0 + secs(2));
    c.send(Bytes::from_static(b"out"), t0 + secs(3)).unwrap();
    transmit_all(&mut c, t0 + secs(3));
    assert_eq!(data(&events(&mut c)), vec![Bytes::from_static(b"hello")]);
    // The peer answers every ping at once: the link is alive, but carries no messages.
    let (mut pings, mut closed_at) = (0, None);
    while let Some(at) = c.poll_timeout().filter(|&at| at <= t0 + secs(60)) {
        c.handle_timeout(at);
        if transmit_all(&mut c, at).ends_with(b"PING") {
            pings += 1;
            c.handle_input(&encode("length:4", &[b"PONG"]), at);
        }
        let ev = events(&mut c);
        if !closed(&ev).is_empty() {
            assert_eq!(closed(&ev), vec![(CloseCode::Idle, false, None)]);
            closed_at = Some(at);
            break;
        }
    }
    // The last message was queued at 3 s: closed at 3 + 5 s, the pongs notwithstanding.
    assert_eq!(closed_at, Some(t0 + secs(8)));
    assert!(pings >= 4, "{pings} pings");
    assert_eq!(c.state(), State::Closing);

    let mut zero = netty();
    zero.idle_timeout = Some(Duration::ZERO);
    assert_eq!(
        zero.validate(),
        Err(RawConfigError::Zero {
            name: "idle_timeout"
        })
    );
}

#[test]
fn answer_rule_replies_ahead_of_queued_data() {
    let t0 = Instant::now();
    let mut cfg = config("lines");
    cfg.answer = Some(Answer {
        matcher: FrameMatcher::exact(&b"HB?"[..]),
        reply: Bytes::from_static(b"HB!"),
    });
    let mut c = conn(cfg, t0);
    c.send(Bytes::from_static(b"d1"), t0).unwrap();
    c.send(Bytes::from_static(b"d2"), t0).unwrap();
    // Two heartbeats in one read: one reply.
    c.handle_input(b"HB?\nHB?\nreal\n", t0);
    assert_eq!(data(&events(&mut c)), vec![Bytes::from_static(b"real")]);
    assert_eq!(c.poll_transmit(t0).unwrap(), &b"HB!\n"[..]);
    assert_eq!(transmit_all(&mut c, t0), b"d1\nd2\n");

    // Never inside a frame already started.
    let big = Bytes::from(vec![b'x'; COPY_THRESHOLD + 10]);
    c.send(big.clone(), t0).unwrap();
    assert_eq!(c.poll_transmit(t0).unwrap(), big);
    c.handle_input(b"HB?\n", t0);
    assert_eq!(c.poll_transmit(t0).unwrap(), &b"\n"[..]);
    assert_eq!(c.poll_transmit(t0).unwrap(), &b"HB!\n"[..]);
    assert_eq!(c.poll_transmit(t0), None);
}

#[test]
fn the_pong_to_our_ping_is_not_answered() {
    // Both sides use "HB" as ping and pong.
    let t0 = Instant::now();
    let mut cfg = config("lines");
    cfg.ping = Some(Bytes::from_static(b"HB"));
    cfg.pong = FrameMatcher::exact(&b"HB"[..]);
    cfg.answer = Some(Answer {
        matcher: FrameMatcher::exact(&b"HB"[..]),
        reply: Bytes::from_static(b"HB"),
    });
    let mut c = conn(cfg, t0);
    let (_, out) = run_until(&mut c, t0 + secs(15));
    assert_eq!(out, b"HB\n");
    c.handle_input(b"HB\n", t0 + secs(15) + ms(3));
    assert_eq!(events(&mut c), vec![Event::Rtt(ms(3))]);
    assert_eq!(c.poll_transmit(t0 + secs(16)), None);
    // The peer's own heartbeat, with no ping of ours outstanding: answered.
    c.handle_input(b"HB\n", t0 + secs(20));
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(transmit_all(&mut c, t0 + secs(20)), b"HB\n");
}

#[test]
fn recoverable_decode_errors_are_reported_and_decoding_goes_on() {
    let mut stream = encode("length:2", &[b"ab"]);
    stream.extend_from_slice(&[0, 20]);
    stream.extend_from_slice(&[b'z'; 20]);
    stream.extend_from_slice(&encode("length:2", &[b"cd"]));
    let t0 = Instant::now();
    for at in 0..=stream.len() {
        let mut c = conn(config("length:2,max=8,discard"), t0);
        c.handle_input(&stream[..at], t0);
        c.handle_input(&stream[at..], t0);
        let ev = events(&mut c);
        assert_eq!(data(&ev), vec![&b"ab"[..], &b"cd"[..]], "split at {at}");
        let discarded: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::FrameDiscarded(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(discarded.len(), 1);
        assert!(discarded[0].is_recoverable());
        assert_eq!(discarded[0].offset(), 4);
        assert!(matches!(
            discarded[0].kind(),
            DecodeErrorKind::FrameTooLong {
                length: 22,
                limit: 8
            }
        ));
        assert!(matches!(ev[1], Event::FrameDiscarded(_)));
        assert_eq!(c.state(), State::Open);
    }
}

#[test]
fn fatal_decode_error_closes_after_the_frames_before_it() {
    let t0 = Instant::now();
    for (spec, input, code) in [
        (
            "length:2,max=8",
            &b"\0\x02ab\0\x02cd\0\x14zzzz\0\x02ef"[..],
            CloseCode::MessageTooBig,
        ),
        (
            "netstring",
            &b"2:ab,2:cd,x5:hello,"[..],
            CloseCode::ProtocolError,
        ),
        (
            "lines,max=4",
            &b"ab\ncd\nlong line\n"[..],
            CloseCode::MessageTooBig,
        ),
    ] {
        let mut c = conn(config(spec), t0);
        c.send(Bytes::from_static(b"q"), t0).unwrap();
        c.handle_input(input, t0);
        let ev = events(&mut c);
        assert_eq!(data(&ev), vec![&b"ab"[..], &b"cd"[..]], "{spec}");
        let closes = closed(&ev);
        assert_eq!(closes.len(), 1, "{spec}");
        assert_eq!((closes[0].0, closes[0].1), (code, false), "{spec}");
        match &closes[0].2 {
            Some(ConnectionError::Framing(e)) => assert!(!e.is_recoverable()),
            other => panic!("{spec}: {other:?}"),
        }
        assert_eq!(ev.last(), Some(&Event::ShutdownWrite));
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.poll_transmit(t0), None, "queued data dropped");
        assert!(c.recv_buf().is_empty());
    }
}

#[test]
fn unencodable_messages_are_refused_at_send_and_by_check_message() {
    let t0 = Instant::now();
    let mut c = conn(config("lines"), t0);
    let want = Err(SendError::Unencodable(EncodeError::ContainsDelimiter {
        position: 1,
    }));
    assert_eq!(c.check_message(b"a\nb"), want);
    assert_eq!(Machine::check_message(&c, b"a\nb"), want);
    assert_eq!(c.send(Bytes::from_static(b"a\nb"), t0), want);
    assert_eq!(c.queued_bytes(), 0);
    assert_eq!(c.poll_transmit(t0), None);
    assert_eq!(c.check_message(b"fine"), Ok(()));

    let mut c = conn(config("length:1"), t0);
    let long = Bytes::from(vec![0u8; 300]);
    let err = c.send(long.clone(), t0).unwrap_err();
    assert!(matches!(err, SendError::Unencodable(_)), "{err:?}");
    assert_eq!(c.check_message(&long), Err(err));
}

#[test]
fn the_send_queue_is_bounded() {
    let t0 = Instant::now();
    let mut cfg = config("length:4");
    cfg.max_queued_bytes = 100;
    let mut c = conn(cfg, t0);
    assert_eq!(c.message_cost(10), 10 + FRAME_OVERHEAD);
    assert_eq!(Machine::max_queued_bytes(&c), 100);
    c.send(Bytes::from(vec![1u8; 50]), t0).unwrap();
    assert_eq!(c.queued_bytes(), 90);
    assert_eq!(
        c.send(Bytes::from(vec![1u8; 10]), t0),
        Err(SendError::QueueFull {
            queued: 90,
            len: 50,
            limit: 100
        })
    );
    assert_eq!(transmit_all(&mut c, t0).len(), 54);
    assert_eq!(c.queued_bytes(), 0);
    c.send(Bytes::from(vec![1u8; 10]), t0).unwrap();
}

#[test]
fn small_frames_are_glued_into_chunks_of_at_most_coalesce_bytes() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    // 1,000 frames of 4 + 60 bytes, then a large one that goes out on its own.
    for i in 0..1000u32 {
        let mut payload = vec![0u8; 60];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        c.send(Bytes::from(payload), t0).unwrap();
    }
    c.send(Bytes::from(vec![7u8; 4096]), t0).unwrap();
    let mut wire = Vec::new();
    let mut chunks = Vec::new();
    while let Some(chunk) = c.poll_transmit(t0) {
        chunks.push(chunk.len());
        wire.extend_from_slice(&chunk);
    }
    assert!(
        chunks.iter().all(|&n| n <= COALESCE || n == 4096),
        "{chunks:?}"
    );
    // 64,000 bytes of small frames in 4 chunks of up to 16 KiB, then header and payload.
    assert_eq!(chunks.len(), 4 + 2, "{chunks:?}");
    assert_eq!(c.stats().messages_out, 1001);
    assert_eq!(c.queued_bytes(), 0);
    let mut decoder: Framing = "length:4".parse().unwrap();
    let mut buf = BytesMut::from(&wire[..]);
    for i in 0..1000u32 {
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame[..4], i.to_be_bytes());
    }
    assert_eq!(decoder.decode(&mut buf).unwrap().unwrap().len(), 4096);
}

#[test]
fn close_flushes_queued_frames_then_shuts_down_and_lingers() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    c.send(Bytes::from_static(b"a"), t0).unwrap();
    c.send(Bytes::from_static(b"b"), t0).unwrap();
    c.close(CloseCode::Application(0x1234), "bye", t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Closed {
            code: CloseCode::Application(0x1234),
            reason: "bye".into(),
            by_peer: false,
            error: None
        }]
    );
    assert_eq!(c.state(), State::Closing);
    assert!(!c.is_drained());
    assert_eq!(c.send(Bytes::from_static(b"c"), t0), Err(SendError::Closed));
    c.close(CloseCode::Normal, "again", t0);
    let t1 = t0 + ms(5);
    // Both queued frames, glued into one chunk, then the write half is shut.
    assert_eq!(c.poll_transmit(t1).unwrap(), &b"\0\0\0\x01a\0\0\0\x01b"[..]);
    assert_eq!(events(&mut c), vec![Event::ShutdownWrite]);
    assert_eq!(c.poll_transmit(t1), None);
    assert!(c.is_drained());
    // Still reading (and discarding) until the peer's end of stream or the linger.
    c.handle_input(b"\0\0\0\x01z", t1);
    assert_eq!(events(&mut c), vec![]);
    assert!(c.recv_buf().is_empty());
    assert_eq!(c.state(), State::Closing);
    assert_eq!(c.poll_timeout(), Some(t1 + secs(2)));
    c.handle_timeout(t1 + secs(2) - Duration::from_nanos(1));
    assert_eq!(c.state(), State::Closing);
    c.handle_timeout(t1 + secs(2));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(c.poll_timeout(), None);

    // Nothing queued: shut down at once; the peer's end of stream finishes it.
    let mut c = conn(netty(), t0);
    c.close(CloseCode::Normal, "", t0);
    let ev = events(&mut c);
    assert_eq!(closed(&ev), vec![(CloseCode::Normal, false, None)]);
    assert_eq!(ev.last(), Some(&Event::ShutdownWrite));
    assert!(c.is_drained());
    c.handle_eof(t0 + ms(1));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(events(&mut c), vec![], "Closed is reported once");
}

#[test]
fn a_frame_in_flight_is_completed_on_failure() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    let big = Bytes::from(vec![5u8; COPY_THRESHOLD + 1]);
    c.send(big.clone(), t0).unwrap();
    c.send(Bytes::from_static(b"later"), t0).unwrap();
    assert_eq!(c.poll_transmit(t0).unwrap().len(), 4);
    // Dies with the payload still owed (the ping asked for at 15 s never got out).
    c.handle_timeout(t0 + secs(15));
    c.handle_timeout(t0 + secs(25));
    let ev = events(&mut c);
    assert_eq!(closed(&ev).len(), 1);
    assert_eq!(shutdowns(&ev), 0);
    assert!(!c.is_drained());
    assert_eq!(c.poll_transmit(t0 + secs(25)).unwrap(), big);
    assert_eq!(events(&mut c), vec![Event::ShutdownWrite]);
    assert_eq!(c.poll_transmit(t0 + secs(25)), None);
    assert!(c.is_drained());
}

#[test]
fn a_trickled_frame_is_cut_by_the_frame_timeout() {
    let t0 = Instant::now();
    let mut cfg = config("length:4");
    cfg.frame_timeout = Some(secs(20));
    let mut c = conn(cfg, t0);
    // Each byte keeps the silence rule happy; the frame never completes.
    let frame = encode("length:4", &[&[9u8; 5000]]);
    c.handle_input(
        &[&encode("length:4", &[b"hi"])[..], &frame[..6]].concat(),
        t0,
    );
    assert_eq!(data(&events(&mut c)), vec![&b"hi"[..]]);
    for i in 1..=9u64 {
        c.handle_input(&frame[5 + i as usize..6 + i as usize], t0 + secs(2 * i));
        c.handle_timeout(t0 + secs(2 * i));
        assert_eq!(c.state(), State::Open);
    }
    assert_eq!(c.poll_timeout(), Some(t0 + secs(20)));
    c.handle_timeout(t0 + secs(20));
    let expected = ConnectionError::FrameTimeout {
        timeout: secs(20),
        received: 15,
        expected: Some(5004),
    };
    assert_eq!(
        closed(&events(&mut c)),
        vec![(CloseCode::PeerTimedOut, false, Some(expected))]
    );
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.recv_buf().capacity(), 0);

    // A line framing does not know the length: "an unknown number of" bytes.
    let mut cfg = config("lines");
    cfg.frame_timeout = Some(secs(5));
    let mut c = conn(cfg, t0);
    c.handle_input(b"one\ntw", t0);
    c.handle_input(b"o", t0 + secs(4));
    c.handle_timeout(t0 + secs(5));
    let ev = events(&mut c);
    assert_eq!(data(&ev), vec![&b"one"[..]]);
    let error = closed(&ev)[0].2.clone().unwrap();
    assert_eq!(
        error.to_string(),
        "frame incomplete after 5s: 3 of an unknown number of bytes arrived"
    );

    // Off: never cut.
    let mut cfg = config("lines");
    cfg.frame_timeout = None;
    let mut c = conn(cfg, t0);
    c.handle_input(b"tw", t0);
    c.handle_input(b"o", t0 + secs(10));
    c.handle_timeout(t0 + secs(11));
    assert_eq!(c.state(), State::Open);
}

#[test]
fn abort_drops_queued_frames_and_closes_with_the_reason() {
    let t0 = Instant::now();
    let mut c = conn(config("lines"), t0);
    c.send(Bytes::from_static(b"queued"), t0).unwrap();
    c.handle_input(b"partial", t0);
    c.abort(CloseCode::ServerFull, "over budget", t0);
    let ev = events(&mut c);
    assert_eq!(
        closed(&ev),
        vec![(
            CloseCode::ServerFull,
            false,
            Some(ConnectionError::Aborted {
                reason: "over budget".into()
            })
        )]
    );
    assert_eq!(c.queued_bytes(), 0);
    assert!(transmit_all(&mut c, t0).is_empty());
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn end_of_stream_reports_whether_a_frame_was_cut() {
    let t0 = Instant::now();
    let mut c = conn(config("length:4"), t0);
    c.handle_input(b"\0\0\0\x02hi\0\0\0\x05hel", t0);
    c.send(Bytes::from_static(b"unsent"), t0).unwrap();
    c.handle_eof(t0);
    let ev = events(&mut c);
    assert_eq!(data(&ev), vec![&b"hi"[..]]);
    assert_eq!(
        closed(&ev),
        vec![(
            CloseCode::ProtocolError,
            true,
            Some(ConnectionError::EndOfStream { mid_message: true })
        )]
    );
    assert_eq!(
        shutdowns(&ev),
        0,
        "no close in progress: the driver just drops the socket"
    );
    assert_eq!(c.state(), State::Closed);
    assert!(c.is_drained());
    assert_eq!(c.poll_transmit(t0), None);

    let mut c = conn(config("lines"), t0);
    c.handle_input(b"one\n", t0);
    c.handle_eof(t0);
    assert_eq!(
        closed(&events(&mut c)),
        vec![(
            CloseCode::GoingAway,
            true,
            Some(ConnectionError::EndOfStream { mid_message: false })
        )]
    );

    // A last line without its newline is a cut frame.
    let mut c = conn(config("lines"), t0);
    c.handle_input(b"one\ntwo", t0);
    c.handle_eof(t0);
    let ev = events(&mut c);
    assert_eq!(data(&ev), vec![&b"one"[..]]);
    assert_eq!(
        closed(&ev)[0].2,
        Some(ConnectionError::EndOfStream { mid_message: true })
    );

    // The framing may still produce a frame at the end: "\r" could have become "\r\n".
    let mut c = conn(config(r#"delim:"\r"|"\r\n""#), t0);
    c.handle_input(b"abc\r", t0);
    assert_eq!(events(&mut c), vec![]);
    // Unprocessed bytes in the buffer are taken into account too.
    c.recv_buf().extend_from_slice(b"def\r");
    c.handle_eof(t0);
    let ev = events(&mut c);
    assert_eq!(data(&ev), vec![&b"abc"[..], &b"def"[..]]);
    assert_eq!(
        closed(&ev)[0].2,
        Some(ConnectionError::EndOfStream { mid_message: false })
    );
}

#[test]
fn writer_idle_follows_what_is_transmitted() {
    let t0 = Instant::now();
    let mut cfg = config("lines");
    cfg.ping_interval = None;
    cfg.writer_idle = Some(secs(5));
    let mut c = conn(cfg, t0);
    c.send(Bytes::from_static(b"x"), t0 + secs(3)).unwrap();
    // Queued is not sent: only the transmission counts.
    let (ev, _) = run_until(&mut c, t0 + secs(4));
    assert_eq!(ev, vec![]);
    transmit_all(&mut c, t0 + secs(4));
    let (ev, _) = run_until(&mut c, t0 + secs(9) - Duration::from_nanos(1));
    assert_eq!(ev, vec![]);
    let (ev, _) = run_until(&mut c, t0 + secs(9));
    assert_eq!(ev, vec![Event::Idle(IdleKind::WriterIdle)]);

    // Pings count as writes too.
    let mut cfg = netty();
    cfg.ping_interval = Some(secs(30));
    cfg.writer_idle = Some(secs(20));
    let mut c = conn(cfg, t0);
    c.handle_input(b"\0\0\0\x01x", t0 + secs(10));
    assert_eq!(events(&mut c).len(), 1);
    // Writer idle at 20 s (nothing sent since the start), the ping at 40 s.
    let (ev, out) = run_until(&mut c, t0 + secs(40));
    assert_eq!(ev, vec![Event::Idle(IdleKind::WriterIdle)]);
    assert_eq!(out, b"\0\0\0\x04PING");
    c.handle_input(b"\0\0\0\x04PONG", t0 + secs(41));
    assert_eq!(events(&mut c), vec![Event::Rtt(secs(1))]);
    // The ping re-armed the writer idle: next at 60 s.
    let (ev, _) = run_until(&mut c, t0 + secs(60) - Duration::from_nanos(1));
    assert_eq!(ev, vec![]);
    let (ev, _) = run_until(&mut c, t0 + secs(60));
    assert_eq!(ev, vec![Event::Idle(IdleKind::WriterIdle)]);
}

#[test]
fn invalid_configs_are_rejected() {
    let t0 = Instant::now();
    let err = |cfg: RawConfig| RawConnection::new(cfg, t0).unwrap_err();
    assert_eq!(
        err(RawConfig {
            ping_interval: None,
            ..netty()
        }),
        RawConfigError::PingWithoutInterval
    );
    assert_eq!(
        err(RawConfig {
            pong: FrameMatcher::prefix(Bytes::new()),
            ..netty()
        }),
        RawConfigError::EmptyPrefix { which: "pong" }
    );
    assert_eq!(
        err(RawConfig {
            answer: Some(Answer {
                matcher: FrameMatcher::prefix(Bytes::new()),
                reply: Bytes::new()
            }),
            ..netty()
        }),
        RawConfigError::EmptyPrefix { which: "answer" }
    );
    assert_eq!(
        err(RawConfig {
            linger: Duration::ZERO,
            ..netty()
        }),
        RawConfigError::Zero { name: "linger" }
    );
    assert_eq!(
        err(RawConfig {
            max_queued_bytes: 0,
            ..netty()
        }),
        RawConfigError::Zero {
            name: "max_queued_bytes"
        }
    );
    assert_eq!(
        err(RawConfig {
            ping_timeout: Duration::ZERO,
            ..netty()
        }),
        RawConfigError::Liveness(LivenessConfigError::ZeroDuration {
            name: "ping_timeout"
        })
    );
    assert_eq!(
        err(RawConfig {
            ping: Some(Bytes::from(vec![0u8; 300])),
            ..config("length:1")
        }),
        RawConfigError::Unencodable {
            which: "ping",
            source: EncodeError::LengthNotRepresentable {
                value: 300,
                width: 1
            }
        }
    );
    assert!(matches!(
        err(RawConfig {
            answer: Some(Answer {
                matcher: FrameMatcher::Any,
                reply: Bytes::from_static(b"a\nb")
            }),
            ..config("lines")
        }),
        RawConfigError::Unencodable {
            which: "answer reply",
            ..
        }
    ));
}

/// A driver written against the trait only, as the tokio layer is.
fn pump(m: &mut dyn Machine, input: &[u8], now: Instant) -> (Vec<u8>, Vec<Event>) {
    m.recv_buf().extend_from_slice(input);
    m.process_input(now);
    let mut out = Vec::new();
    while let Some(b) = m.poll_transmit(now) {
        out.extend_from_slice(&b);
    }
    (out, std::iter::from_fn(|| m.poll_event()).collect())
}

#[test]
fn runs_behind_the_machine_trait() {
    let t0 = Instant::now();
    let mut c = conn(netty(), t0);
    let m: &mut dyn Machine = &mut c;
    m.send(Bytes::from_static(b"hi"), t0).unwrap();
    let (out, ev) = pump(m, b"\0\0\0\x02yo", t0);
    assert_eq!(out, b"\0\0\0\x02hi");
    assert_eq!(ev, vec![Event::Data(Bytes::from_static(b"yo"))]);
    assert_eq!(m.linger(), secs(2));
    assert_eq!(m.message_cost(2), 2 + FRAME_OVERHEAD);
    assert!(!m.is_closed());
    m.close(CloseCode::Normal, "", t0);
    let (_, ev) = pump(m, b"", t0);
    assert_eq!(ev.last(), Some(&Event::ShutdownWrite));
    assert!(m.is_drained());
    m.handle_eof(t0);
    assert!(m.is_closed());
}

/// Frame payloads and whether each is a pong.
fn stream_items() -> impl Strategy<Value = Vec<(Vec<u8>, bool)>> {
    proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 0..40), any::<bool>()),
        0..30,
    )
}

proptest! {
    /// However the stream of data frames and pongs is cut, the same data comes out: the
    /// first pong answers our ping (the only RTT sample) and is swallowed, later ones are
    /// data.
    #[test]
    fn random_chunkings_give_the_same_data(
        spec in prop_oneof![Just("length:2"), Just("varint"), Just("netstring"), Just("magic:cafe")],
        items in stream_items(),
        sizes in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let t0 = Instant::now();
        let mut c = conn(RawConfig { ping: Some(Bytes::from_static(b"PING")), pong: FrameMatcher::exact(&b"PONG"[..]), ..config(spec) }, t0);
        let (_, out) = run_until(&mut c, t0 + secs(15));
        prop_assert_eq!(out, encode(spec, &[b"PING"]));
        let payloads: Vec<&[u8]> = items.iter().map(|(p, pong)| if *pong { &b"PONG"[..] } else { &p[..] }).collect();
        let stream = encode(spec, &payloads);
        let mut rest = &stream[..];
        let now = t0 + secs(16);
        for &size in sizes.iter().cycle() {
            if rest.is_empty() { break; }
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            c.handle_input(piece, now);
            rest = tail;
        }
        let ev = events(&mut c);
        // The first pong answers our ping and is swallowed; later ones are the peer's data.
        let mut want: Vec<&[u8]> = payloads.clone();
        if let Some(first) = want.iter().position(|p| *p == b"PONG") {
            want.remove(first);
        }
        prop_assert_eq!(data(&ev), want);
        let rtts = ev.iter().filter(|e| matches!(e, Event::Rtt(_))).count();
        prop_assert_eq!(rtts, usize::from(payloads.contains(&&b"PONG"[..])));
        prop_assert_eq!(c.state(), State::Open);
    }

    /// Garbage never panics, the receive buffer stays bounded by the frame limit, and
    /// exactly one Closed comes out by the end of the stream.
    #[test]
    fn garbage_never_panics_and_buffers_stay_bounded(
        spec in prop_oneof![
            Just("length:2,max=64"), Just("length:2,max=64,discard"), Just("varint,max=64"),
            Just("lines,max=64"), Just("delim:00,max=64,discard"), Just("netstring,max=64"),
            Just("magic:cafe,len=2,max=64"),
        ],
        input in proptest::collection::vec(any::<u8>(), 0..2000),
        sizes in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let t0 = Instant::now();
        let mut c = conn(RawConfig {
            answer: Some(Answer { matcher: FrameMatcher::prefix(&b"\x01"[..]), reply: Bytes::from_static(b"r") }),
            ..config(spec)
        }, t0);
        let mut rest = &input[..];
        let mut now = t0;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() { break; }
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            c.recv_buf().extend_from_slice(piece);
            c.process_input(now);
            prop_assert!(c.recv_buf().len() <= 64 + 16, "{} bytes buffered", c.recv_buf().len());
            transmit_all(&mut c, now);
            now += ms(10);
            rest = tail;
        }
        c.handle_eof(now);
        transmit_all(&mut c, now);
        let ev = events(&mut c);
        prop_assert_eq!(closed(&ev).len(), 1);
        prop_assert!(c.is_closed() && c.is_drained());
    }
}

#[test]
fn two_raw_peers_keep_each_other_alive_through_the_shared_simulator() {
    // `a` pings "PING" and expects "PONG"; `b` answers "PING" with "PONG" and pings nothing
    // (idle-only), so `a`'s pings are all `b` hears while the application is quiet.
    let t0 = Instant::now();
    let b_cfg = RawConfig {
        answer: Some(Answer {
            matcher: FrameMatcher::exact(&b"PING"[..]),
            reply: Bytes::from_static(b"PONG"),
        }),
        ping_interval: Some(secs(30)),
        ..config("length:4")
    };
    let mut pair = Pair::new(conn(netty(), t0), conn(b_cfg, t0), t0);
    pair.max_chunk = 3;
    pair.a.send(Bytes::from_static(b"hello"), t0).unwrap();
    pair.run_until(t0 + secs(300));
    assert_eq!(pair.data_b(), vec![Bytes::from_static(b"hello")]);
    assert!(closed(&pair.ev_a).is_empty() && closed(&pair.ev_b).is_empty());
    let rtts = pair
        .ev_a
        .iter()
        .filter(|e| matches!(e, Event::Rtt(_)))
        .count();
    // A ping every 15 s of quiet, each answered at once.
    assert_eq!(rtts, 20);
    assert!(data(&pair.ev_a).is_empty(), "pongs are swallowed");
    assert_eq!(pair.a.state(), State::Open);
    assert_eq!(pair.b.state(), State::Open);
}

/// A close whose queued output stops going out (the peer does not read) is given up on
/// `linger` after the last output, with no keep-alive to find the peer dead; the messages not
/// written are handed back.
#[test]
fn a_close_whose_output_stalls_gives_up_after_linger() {
    let t0 = Instant::now();
    let cfg = config("length:4");
    let linger = cfg.linger;
    let mut c = conn(cfg, t0);
    for i in 0..3u8 {
        c.send(Bytes::from(vec![i; 256 * 1024]), t0).unwrap();
    }
    c.close(CloseCode::Normal, "bye", t0);
    assert!(c.poll_transmit(t0 + ms(1)).is_some());
    assert_eq!(c.poll_timeout(), Some(t0 + ms(1) + linger));
    c.handle_timeout(t0 + ms(1) + linger - ms(1));
    assert_eq!(c.state(), State::Closing);
    c.handle_timeout(t0 + ms(1) + linger);
    assert_eq!(c.state(), State::Closed);
    assert!(!c.take_unsent().is_empty());
}
