//! Framing over real loopback TCP: every framing through tokio-util's `Framed`, with the sender
//! cutting its writes at random points so the receiver sees glued and split reads; limits,
//! recoverable errors and truncation as a real peer would trigger them.

mod common;

use bytes::{Bytes, BytesMut};
use framelink::{DecodeErrorKind, FrameEncoder, FrameError, Framing};
use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedRead};

use common::{pair, DEADLINE};

/// A payload the framing can carry: no delimiters for delimiter framings, exact size for fixed.
fn payload(rng: &mut StdRng, spec: &str) -> Vec<u8> {
    if let Some(n) = spec.strip_prefix("fixed:") {
        let n: usize = n.parse().unwrap();
        return (0..n).map(|_| rng.gen()).collect();
    }
    let len = match rng.gen_range(0..10) {
        0 => 0,
        1..=6 => rng.gen_range(1..64),
        7 | 8 => rng.gen_range(64..2048),
        _ => rng.gen_range(2048..40_000),
    };
    if spec.starts_with("line") || spec.starts_with("delim") {
        (0..len).map(|_| rng.gen_range(b'a'..=b'z')).collect()
    } else {
        (0..len).map(|_| rng.gen()).collect()
    }
}

/// Writes `wire` in random pieces, flushing and yielding between them, so reads see arbitrary splits.
async fn write_in_random_pieces(stream: &mut TcpStream, wire: &[u8], rng: &mut StdRng) {
    let mut rest = wire;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(3000));
        stream.write_all(&rest[..n]).await.unwrap();
        rest = &rest[n..];
        if rng.gen_bool(0.3) {
            tokio::task::yield_now().await;
        }
    }
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_framing_survives_random_splits_over_tcp() {
    for (i, spec) in [
        "length:4",
        "length:2,le,max=64KiB",
        "length:3,adjust=-3,strip=3",
        "length:8",
        "varint",
        "line,max=64KiB",
        "line,crlf",
        "delim:\"\\r\\n\"|00,max=64KiB",
        "delim:\"END\"",
        "fixed:37",
        "netstring",
        "magic:f00d,len=4,crc=crc32c",
        "magic:\"FL\",len=2,crc=crc32,le",
    ]
    .into_iter()
    .enumerate()
    {
        let framing: Framing = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
        let mut rng = StdRng::seed_from_u64(i as u64);
        let messages: Vec<Vec<u8>> = (0..300).map(|_| payload(&mut rng, spec)).collect();
        let mut wire = BytesMut::new();
        for m in &messages {
            framing.encode(m, &mut wire).unwrap();
        }
        let (mut client, server) = pair().await;
        let reader = tokio::spawn(async move {
            FramedRead::new(server, framing)
                .map(|f| f.map(|b| b.to_vec()))
                .collect::<Vec<_>>()
                .await
        });
        write_in_random_pieces(&mut client, &wire, &mut rng).await;
        let received = tokio::time::timeout(DEADLINE, reader)
            .await
            .unwrap()
            .unwrap();
        let received: Vec<Vec<u8>> = received
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{spec}: {e}")))
            .collect();
        assert_eq!(received.len(), messages.len(), "{spec}");
        assert!(received == messages, "{spec}: frames differ");
    }
}

#[tokio::test]
async fn framed_echo_both_directions() {
    let (client, server) = pair().await;
    let echo = tokio::spawn(async move {
        let mut framed = Framed::new(server, Framing::parse("varint").unwrap());
        while let Some(frame) = framed.next().await {
            framed.send(frame.unwrap()).await.unwrap();
        }
    });
    let mut framed = Framed::new(client, Framing::parse("varint").unwrap());
    for i in 0..200u32 {
        let msg = Bytes::from(format!("message {i} {}", "x".repeat(i as usize * 13)));
        framed.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(DEADLINE, framed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(framed);
    tokio::time::timeout(DEADLINE, echo).await.unwrap().unwrap();
}

#[tokio::test]
async fn oversized_frame_is_discarded_and_the_stream_goes_on() {
    let (mut client, server) = pair().await;
    let reader = tokio::spawn(async move {
        let mut framed =
            FramedRead::new(server, Framing::parse("length:4,max=1KiB,discard").unwrap());
        let mut frames = Vec::new();
        while let Some(f) = framed.next().await {
            frames.push(f.unwrap());
        }
        (frames, framed.decoder_mut().take_recovered_errors())
    });
    let sender = Framing::parse("length:4,max=1MiB").unwrap();
    let mut wire = BytesMut::new();
    sender.encode(b"before", &mut wire).unwrap();
    sender.encode(&vec![7u8; 200_000], &mut wire).unwrap();
    sender.encode(b"after", &mut wire).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    write_in_random_pieces(&mut client, &wire, &mut rng).await;
    let (frames, errors) = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frames, vec![Bytes::from("before"), Bytes::from("after")]);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].kind(),
        &DecodeErrorKind::FrameTooLong {
            length: 200_004,
            limit: 1024
        }
    );
    assert_eq!(errors[0].offset(), 10);
}

#[tokio::test]
async fn hostile_length_header_fails_after_delivering_earlier_frames() {
    let (mut client, server) = pair().await;
    let reader = tokio::spawn(async move {
        FramedRead::new(server, Framing::parse("length:4").unwrap())
            .collect::<Vec<_>>()
            .await
    });
    // A good frame, then a 4 GiB length header; the connection stays open.
    client
        .write_all(b"\0\0\0\x02ok\xff\xff\xff\xff")
        .await
        .unwrap();
    let results = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].as_ref().unwrap(), "ok");
    match &results[1] {
        Err(FrameError::Decode(e)) => {
            assert!(matches!(e.kind(), DecodeErrorKind::FrameTooLong { .. }));
            assert_eq!(e.offset(), 6);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn peer_closing_mid_frame_is_reported_as_truncated() {
    let (mut client, server) = pair().await;
    let reader = tokio::spawn(async move {
        FramedRead::new(server, Framing::parse("length:2").unwrap())
            .collect::<Vec<_>>()
            .await
    });
    client.write_all(b"\0\x03abc\0\x10hello").await.unwrap();
    client.shutdown().await.unwrap();
    let results = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap(), "abc");
    match &results[1] {
        Err(FrameError::Decode(e)) => assert_eq!(
            e.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 7,
                expected: Some(18)
            }
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn vectored_writes_carry_large_payloads_without_copying() {
    let (mut client, mut server) = pair().await;
    let framing = Framing::parse("magic:cafe,crc=crc32c,max=16MiB").unwrap();
    let payloads: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 3 << 20])).collect();
    let expected = payloads.clone();
    let reader_framing = framing.reset();
    let reader = tokio::spawn(async move {
        let mut decoder = reader_framing;
        let mut frames = Vec::new();
        framelink::io::read_frames(
            &mut server,
            &mut decoder,
            64 * 1024,
            |f| frames.push(f),
            |e| panic!("unexpected recoverable error {e}"),
        )
        .await
        .unwrap();
        frames
    });
    for p in payloads {
        let written = framelink::io::write_frame(&mut client, &framing, p)
            .await
            .unwrap();
        assert_eq!(written, 2 + 4 + 4 + (3 << 20));
    }
    client.shutdown().await.unwrap();
    let frames = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frames, expected);
}
