//! The `framelink` binary as a user runs it: decode/encode on files and pipes, errors with their
//! stream offsets and exit status, and the demo.

mod common;

use std::process::Output;
use std::time::Duration;

/// Runs `framelink ARGS` on `stdin` to the end (at most a minute: the demo is the longest).
fn framelink(args: &[&str], stdin: &[u8]) -> Output {
    common::run(args, stdin, Duration::from_secs(60))
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn decode_prints_hex_text_and_json() {
    let stream = b"\x00\x05hello\x00\x03a\nb\x00\x00";
    let o = framelink(&["decode", "--framing", "length:2"], stream);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "68656c6c6f\n610a62\n\n");

    let o = framelink(
        &["decode", "--framing", "length:2", "--format", "text", "-"],
        stream,
    );
    assert_eq!(stdout(&o), "hello\na\\nb\n\n");

    let o = framelink(
        &["decode", "--framing", "length:2", "--format", "json"],
        stream,
    );
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[0]["offset"], 2);
    assert_eq!(lines[0]["length"], 5);
    assert_eq!(lines[0]["text"], "hello");
    assert_eq!(lines[1]["offset"], 9);
    assert_eq!(lines[1]["hex"], "610a62");
    assert_eq!(lines[2]["offset"], 14);
}

#[test]
fn decode_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.bin");
    std::fs::write(&path, b"3:abc,0:,").unwrap();
    let o = framelink(
        &[
            "decode",
            "-f",
            "netstring",
            "--format",
            "text",
            path.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "abc\n\n");
}

#[test]
fn decode_error_keeps_earlier_frames_and_names_the_offset() {
    // Two good frames, then a 4 GiB header.
    let stream = b"\x00\x00\x00\x02ok\x00\x00\x00\x01!\xff\xff\xff\xff";
    let o = framelink(&["decode", "--framing", "length:4,max=1MiB"], stream);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "6f6b\n21\n");
    let err = stderr(&o);
    assert!(err.contains("after 2 frames"), "{err}");
    assert!(
        err.contains("frame of 4294967299 bytes exceeds the limit of 1048576 bytes"),
        "{err}"
    );
    assert!(err.contains("at stream offset 11"), "{err}");
}

#[test]
fn decode_reports_truncation_at_end_of_stream() {
    let o = framelink(&["decode", "--framing", "line"], b"one\ntwo\nthr");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "6f6e65\n74776f\n");
    let err = stderr(&o);
    assert!(
        err.contains("stream ended inside a frame: 3 bytes buffered"),
        "{err}"
    );
    assert!(err.contains("at stream offset 8"), "{err}");
}

#[test]
fn recoverable_errors_are_warnings() {
    // Oversized frame with the discard policy: warned about, then decoding goes on.
    let stream = b"\x05abcde\x01z";
    let o = framelink(
        &[
            "decode",
            "--framing",
            "length:1,max=4,discard",
            "--format",
            "text",
        ],
        stream,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "z\n");
    assert!(stderr(&o)
        .contains("warning: frame of 6 bytes exceeds the limit of 4 bytes (at stream offset 0)"));
}

#[test]
fn encode_then_decode_round_trips() {
    for spec in [
        "length:4",
        "varint",
        "line,crlf",
        "netstring",
        "magic:cafe,crc=crc32",
        "delim:00",
    ] {
        let enc = framelink(&["encode", "--framing", spec], b"hello\r\n\nworld");
        assert!(enc.status.success(), "{spec}: {}", stderr(&enc));
        let dec = framelink(
            &["decode", "--framing", spec, "--format", "text"],
            &enc.stdout,
        );
        assert!(dec.status.success(), "{spec}: {}", stderr(&dec));
        assert_eq!(stdout(&dec), "hello\n\nworld\n", "{spec}");
    }
    let enc = framelink(
        &["encode", "--framing", "length:1", "--input-format", "hex"],
        b"00ff\n\n",
    );
    assert_eq!(enc.stdout, b"\x02\x00\xff\x00");
}

#[test]
fn encode_refuses_what_the_framing_cannot_carry() {
    let o = framelink(&["encode", "--framing", "fixed:4"], b"abcd\nabc\n");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(o.stdout, b"abcd");
    assert!(stderr(&o).contains(
        "message 1 (line 2): payload of 3 bytes given to a fixed-length codec of 4 bytes"
    ));
    let o = framelink(
        &["encode", "--framing", "length:1", "--input-format", "hex"],
        b"xyz\n",
    );
    assert!(stderr(&o).contains("line 1: not hex"));
}

#[test]
fn bad_spec_is_a_clear_usage_error() {
    let o = framelink(&["decode", "--framing", "length:4,max=lots"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad size \"lots\" for max"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn demo_verifies_every_framing() {
    let o = framelink(
        &["demo", "--messages", "150", "--link-messages", "4000"],
        b"",
    );
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.matches("ok: all 150 exact, in order").count(),
        8,
        "{out}"
    );
    assert!(out.contains("resynchronised"), "{out}");
    // Part 2: sessions over a link the chaos proxy cuts; the tally is checked by the demo.
    assert!(
        out.contains("to server: all 4000 messages exactly once, in order"),
        "{out}"
    );
    assert!(
        out.contains("to client: all 4000 echoes exactly once, in order"),
        "{out}"
    );
    assert!(out.contains("session resumed"), "{out}");
}
