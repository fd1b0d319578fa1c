//! `WireCodec` (framelink protocol v1) decoding arbitrary streams, read in chunks.
//!
//! Input: `max_message_len` selector (1 byte), `structured` flag (1 byte: when odd, the stream
//! starts with a valid HELLO so that the fuzzer reaches the messages after the handshake), the
//! chunk table, then the stream.
//!
//! Invariants: no panic; before the peer's HELLO the buffer never holds more than the 4-byte
//! length field plus 4096 bytes (PROTOCOL.md section 10), after it at most `max_message_len + 4`;
//! every message decoded re-encodes (without the handshake check) to the bytes it came from;
//! decoding stops at the first error.
#![no_main]

use bytes::BytesMut;
use framelink_fuzz::{Chunker, Input};
use framelink_proto::wire::{Hello, Message, WireCodec, MIN_MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max = MIN_MAX_MESSAGE_LEN + u32::from(input.u8()) * 256;
    let structured = input.u8() & 1 == 1;
    let mut chunker = Chunker::from_input(&mut input);
    let mut stream = Vec::new();
    if structured {
        let enc = WireCodec::new(max).expect("max is at least the minimum");
        let mut buf = BytesMut::new();
        enc.encode(&Message::Hello(Hello::default()), &mut buf)
            .expect("the default HELLO encodes");
        stream.extend_from_slice(&buf);
    }
    stream.extend_from_slice(input.rest());

    let mut codec = WireCodec::new(max).expect("max is at least the minimum");
    let mut reencoder = WireCodec::new(u32::MAX).expect("valid").without_handshake_check();
    reencoder.set_peer_max_message_len(u32::MAX);
    let mut buf = BytesMut::new();
    let mut fed = 0usize;
    let mut handshaken = false;
    while fed < stream.len() {
        let n = chunker.next_size().min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            let start = codec.consumed() as usize;
            match codec.decode(&mut buf) {
                Ok(Some(message)) => {
                    let end = codec.consumed() as usize;
                    let mut again = BytesMut::new();
                    reencoder
                        .encode(&message, &mut again)
                        .expect("a decoded message re-encodes");
                    assert_eq!(&again[..], &stream[start..end], "{message:?}");
                    if matches!(message, Message::Hello(_)) {
                        handshaken = true;
                    }
                }
                Ok(None) => {
                    let bound = if handshaken {
                        max as usize + 4
                    } else {
                        MIN_MAX_MESSAGE_LEN as usize + 4
                    };
                    assert!(
                        buf.len() <= bound,
                        "{} bytes buffered, bound {bound}",
                        buf.len()
                    );
                    break;
                }
                Err(_) => return,
            }
        }
    }
    // The end of the stream: a partial message is an error, never a panic.
    let _ = codec.decode_eof(&mut buf);
});
