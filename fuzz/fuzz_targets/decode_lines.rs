//! `LinesCodec` decoding arbitrary streams, checked against `DelimiterCodec` with the delimiters
//! `\r\n` and `\n`, which it must decode exactly like (same frames, same errors).
//!
//! Input: `flags` (strip, crlf, oversize policy), `max` (2 bytes), the chunk table, then the
//! stream.
#![no_main]

use framelink_fuzz::{drive, drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{
    DelimiterCodec, DelimiterConfig, LinesCodec, LinesConfig, OversizePolicy,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let config = LinesConfig {
        max_frame_length: usize::from(input.u16()),
        oversize: if flags & 1 != 0 {
            OversizePolicy::Discard
        } else {
            OversizePolicy::Fail
        },
        strip: flags & 2 == 0,
        crlf: flags & 4 != 0,
    };
    let max = config.max_frame_length;
    let strip = config.strip;
    let make = || LinesCodec::new(config.clone()).expect("every lines config is valid");
    let mut chunker = Chunker::from_input(&mut input);
    let reference_chunker = chunker.clone();
    let stream = input.rest();
    let limits = Limits {
        // A partial line of at most max bytes, plus a `\r` that may start a `\r\n`.
        buffered_after_none: max + 1,
        // The line; with `keep`, plus its `\n` or `\r\n`.
        max_frame: max + if strip { 0 } else { 2 },
    };
    let outcome = drive_and_compare(make, stream, &mut chunker, &limits, |frame| {
        let body: &[u8] = if strip {
            frame
        } else {
            assert!(
                frame.ends_with(b"\n"),
                "a kept line does not end with \\n: {frame:02x?}"
            );
            &frame[..frame.len() - 1]
        };
        assert!(!body.contains(&b'\n'), "a line contains \\n: {frame:02x?}");
    });

    // The same stream, split the same way, through the general delimiter codec.
    let reference = DelimiterCodec::new(DelimiterConfig {
        strip,
        max_frame_length: max,
        oversize: config.oversize,
        ..DelimiterConfig::line()
    })
    .expect("line delimiters are valid");
    let expected = drive(
        reference,
        stream,
        &mut reference_chunker.clone(),
        &limits,
        |_| {},
    );
    assert_eq!(
        outcome.frames, expected.frames,
        "LinesCodec and DelimiterCodec::line() differ"
    );
    assert_eq!(
        outcome.recoverable, expected.recoverable,
        "LinesCodec and DelimiterCodec::line() report different recoverable errors"
    );
    assert_eq!(
        outcome.fatal, expected.fatal,
        "LinesCodec and DelimiterCodec::line() end with different errors"
    );
});
