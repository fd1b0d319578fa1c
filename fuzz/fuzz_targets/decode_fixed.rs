//! `FixedLengthCodec` decoding arbitrary streams.
//!
//! Input: `length` (2 bytes; 0 exercises config validation), the chunk table, then the stream.
#![no_main]

use framelink_fuzz::{drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{FixedLengthCodec, FixedLengthConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let length = usize::from(input.u16());
    let config = FixedLengthConfig::new(length);
    if length == 0 {
        assert!(
            FixedLengthCodec::new(config).is_err(),
            "fixed:0 was accepted"
        );
        return;
    }
    let make = || FixedLengthCodec::new(config.clone()).expect("length >= 1 is valid");
    let mut chunker = Chunker::from_input(&mut input);
    let stream = input.rest();
    let limits = Limits {
        buffered_after_none: length - 1,
        max_frame: length,
    };
    let outcome = drive_and_compare(make, stream, &mut chunker, &limits, |frame| {
        assert_eq!(frame.len(), length, "fixed frame of the wrong length");
    });
    // Nothing to validate: only a partial frame at EOF can fail.
    assert_eq!(outcome.frames.len(), stream.len() / length);
    assert!(outcome.recoverable.is_empty());
    assert_eq!(
        outcome.fatal.is_some(),
        !stream.len().is_multiple_of(length),
        "{:?}",
        outcome.fatal
    );
    let joined: Vec<u8> = outcome
        .frames
        .iter()
        .flat_map(|f| f.iter().copied())
        .collect();
    assert_eq!(
        joined[..],
        stream[..joined.len()],
        "frames are not the stream cut in pieces"
    );
});
