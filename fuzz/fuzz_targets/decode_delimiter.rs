//! `DelimiterCodec` decoding arbitrary streams with arbitrary delimiter sets.
//!
//! Input: `flags` (strip, oversize policy, number of delimiters), per delimiter a length byte
//! (0 to 5, or 32 / 33; 0 and 33 exercise validation) and its bytes, `max` (2 bytes), the chunk
//! table, then the stream.
#![no_main]

use framelink_fuzz::{drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{DelimiterCodec, DelimiterConfig, OversizePolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let count = usize::from((flags >> 2) % 5); // 0 exercises "no delimiter" validation
    let delimiters: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let len = match input.u8() {
                // The longest allowed delimiter, and one byte more (rejected).
                b @ 0xf0.. => 32 + usize::from(b & 1),
                b => usize::from(b % 6), // 0 is rejected
            };
            input.bytes(len).to_vec()
        })
        .collect();
    let config = DelimiterConfig {
        delimiters,
        strip: flags & 1 == 0,
        max_frame_length: usize::from(input.u16()),
        oversize: if flags & 2 != 0 {
            OversizePolicy::Discard
        } else {
            OversizePolicy::Fail
        },
    };
    let Ok(codec) = DelimiterCodec::new(config.clone()) else {
        return; // rejected configuration (empty delimiter list or delimiter, ...)
    };
    drop(codec);
    assert!(
        !config.delimiters.is_empty()
            && config
                .delimiters
                .iter()
                .all(|d| (1..=DelimiterConfig::MAX_DELIMITER_LENGTH).contains(&d.len())),
        "an invalid delimiter config was accepted: {config:?}"
    );
    let longest = config.delimiters.iter().map(Vec::len).max().unwrap_or(0);
    let max = config.max_frame_length;
    let strip = config.strip;
    let delimiters = config.delimiters.clone();
    let make = || DelimiterCodec::new(config.clone()).expect("accepted above");
    let mut chunker = Chunker::from_input(&mut input);
    let stream = input.rest();
    let limits = Limits {
        // A partial frame of at most max bytes and the possible start of a delimiter.
        buffered_after_none: max + longest - 1,
        // The frame; with `keep`, plus its delimiter.
        max_frame: max + if strip { 0 } else { longest },
    };
    drive_and_compare(make, stream, &mut chunker, &limits, |frame| {
        if !strip {
            assert!(
                delimiters.iter().any(|d| frame.ends_with(d)),
                "a kept frame does not end with a delimiter: {frame:02x?}"
            );
        }
    });
});
