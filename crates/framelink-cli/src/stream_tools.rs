//! `framelink decode` and `framelink encode`: offline tools for captured byte streams, the first
//! thing to reach for when a peer's framing misbehaves.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use framelink::{FrameDecoder, FrameEncoder, Framing};

use crate::{InputFormat, OutputFormat};

const READ_SIZE: usize = 64 * 1024;

fn open_input(path: Option<&Path>) -> Result<Box<dyn Read>> {
    match path {
        None => Ok(Box::new(io::stdin().lock())),
        Some(p) if p == Path::new("-") => Ok(Box::new(io::stdin().lock())),
        Some(p) => Ok(Box::new(
            File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
    }
}

/// Decodes the stream in `input` and prints each frame to stdout in `format`.
pub fn decode(
    mut framing: Framing,
    format: OutputFormat,
    input: Option<&Path>,
) -> Result<ExitCode> {
    let mut input = open_input(input)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut index = 0u64;
    let mut eof = false;
    loop {
        loop {
            let base = (framing.consumed(), buf.as_ptr() as usize, buf.len());
            let result = framing.decode_with_eof(&mut buf, eof);
            match result {
                Ok(Some(frame)) => {
                    print_frame(
                        &mut out,
                        format,
                        index,
                        payload_offset(base, &frame),
                        &frame,
                    )?;
                    index += 1;
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    out.flush()?;
                    eprintln!("framelink: warning: {e}");
                }
                Err(e) => {
                    out.flush()?;
                    eprintln!("framelink: error after {index} frames: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        if eof {
            break;
        }
        buf.reserve(READ_SIZE);
        let start = buf.len();
        buf.resize(start + READ_SIZE, 0);
        let n = loop {
            match input.read(&mut buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.context("read error")?,
            }
        };
        buf.truncate(start + n);
        eof = n == 0;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Stream offset of a decoded frame's first payload byte. Frames share the read buffer, so the
/// offset follows from where the frame points into it; `base` is (bytes consumed, buffer start,
/// buffer length) before the decode call.
pub(crate) fn payload_offset((consumed, start, len): (u64, usize, usize), frame: &Bytes) -> u64 {
    let ptr = frame.as_ptr() as usize;
    if (start..=start + len).contains(&ptr) {
        consumed + (ptr - start) as u64
    } else {
        consumed
    }
}

fn print_frame(
    out: &mut impl Write,
    format: OutputFormat,
    index: u64,
    offset: u64,
    frame: &[u8],
) -> Result<()> {
    match format {
        OutputFormat::Hex => {
            writeln!(out, "{}", hex(frame))?;
        }
        OutputFormat::Text => {
            writeln!(out, "{}", escape_text(frame))?;
        }
        OutputFormat::Json => {
            let mut obj = serde_json::json!({
                "index": index,
                "offset": offset,
                "length": frame.len(),
                "hex": hex(frame),
            });
            if let Ok(text) = std::str::from_utf8(frame) {
                obj["text"] = serde_json::Value::String(text.to_string());
            }
            writeln!(out, "{obj}")?;
        }
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Printable UTF-8 as is; `\n`, `\r`, `\t`, `\\` and every other control or invalid byte escaped,
/// so one frame is always one output line.
pub(crate) fn escape_text(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                '\\' => s.push_str("\\\\"),
                c if c.is_control() => {
                    let mut utf8 = [0; 4];
                    for b in c.encode_utf8(&mut utf8).bytes() {
                        s.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

pub(crate) fn parse_hex_line(line: &str) -> Option<Vec<u8>> {
    let line = line.trim();
    if line.len() % 2 != 0 {
        return None;
    }
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(line.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Frames each input message with `framing` and writes the byte stream.
pub fn encode(
    framing: Framing,
    format: InputFormat,
    input: Option<&Path>,
    output: Option<&Path>,
) -> Result<ExitCode> {
    let input = BufReader::new(open_input(input)?);
    let out: Box<dyn Write> = match output {
        Some(p) => {
            Box::new(File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let mut wire = BytesMut::new();
    for (i, line) in input.split(b'\n').enumerate() {
        let mut line = line.context("read error")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let message = match format {
            InputFormat::Lines => line,
            InputFormat::Hex => match std::str::from_utf8(&line).ok().and_then(parse_hex_line) {
                Some(m) => m,
                None => {
                    out.flush()?;
                    eprintln!("framelink: line {}: not hex", i + 1);
                    return Ok(ExitCode::FAILURE);
                }
            },
        };
        wire.clear();
        if let Err(e) = framing.encode(&message, &mut wire) {
            out.flush()?;
            eprintln!("framelink: message {} (line {}): {e}", i, i + 1);
            return Ok(ExitCode::FAILURE);
        }
        out.write_all(&wire)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_keep_one_frame_per_line() {
        assert_eq!(escape_text(b"a\nb\r\t\\"), "a\\nb\\r\\t\\\\");
        assert_eq!(escape_text(b"\x00\xff ok \xc3\xa9"), "\\x00\\xff ok é");
    }

    #[test]
    fn hex_lines() {
        assert_eq!(parse_hex_line("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_hex_line(""), Some(vec![]));
        assert_eq!(parse_hex_line("0"), None);
        assert_eq!(parse_hex_line("zz"), None);
        assert_eq!(parse_hex_line("é0"), None);
    }
}
