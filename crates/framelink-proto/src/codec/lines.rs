//! Line framing: [`LinesCodec`] ends frames with `\n` or `\r\n` (Netty's
//! `LineBasedFrameDecoder`, tokio-util's `LinesCodec`). It follows the rules documented on
//! [`DelimiterCodec`](super::DelimiterCodec) for those two terminators and shares its scan state
//! and frame-length limit (in `delimiter.rs`).

#[cfg(doc)]
use super::DelimiterCodec;
use bytes::{BufMut, Bytes, BytesMut};

use super::delimiter::ScanState;
use super::{
    append_without, ConfigError, DecodeError, DecodeErrorKind, EncodeError, FrameDecoder,
    FrameEncoder, FrameParts, OversizePolicy, DEFAULT_MAX_LINE_LENGTH,
};

/// Parameters of a [`LinesCodec`].
///
/// ```
/// use framelink_proto::codec::{LinesCodec, LinesConfig};
///
/// // SMTP-style: lines of at most 998 bytes, written with CRLF.
/// let codec = LinesCodec::new(LinesConfig { max_frame_length: 998, crlf: true, ..LinesConfig::default() });
/// assert!(codec.is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinesConfig {
    /// Longest accepted line, terminator excluded (Netty `maxLength`).
    pub max_frame_length: usize,
    /// What to do with a line over `max_frame_length`.
    pub oversize: OversizePolicy,
    /// Remove the terminator (`\n` or `\r\n`) from decoded lines; when false it is kept.
    pub strip: bool,
    /// The encoder ends lines with `\r\n` instead of `\n`. Decoding accepts both either way.
    pub crlf: bool,
}

impl Default for LinesConfig {
    /// 64 KiB lines, fatal error on longer ones, terminators stripped, `\n` written.
    fn default() -> Self {
        LinesConfig {
            max_frame_length: DEFAULT_MAX_LINE_LENGTH,
            oversize: OversizePolicy::Fail,
            strip: true,
            crlf: false,
        }
    }
}

/// Decoder and encoder for text lines: `\n` ends a line, and a `\r` just before it belongs to the
/// terminator (`\r\n`); a `\r` anywhere else is part of the line. It decodes exactly like a
/// [`DelimiterCodec`] with the delimiters `\r\n` and `\n` (same limits, oversize policies and
/// errors, see there), on a faster path: one `memchr` per line and no other pass over the bytes.
///
/// The encoder appends `\n` (or `\r\n` with [`crlf`](LinesConfig::crlf)) and refuses a payload
/// containing `\n`, and, when writing `\n`, one ending in `\r` (it would read back without it).
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, FrameEncoder, LinesCodec, LinesConfig};
///
/// let mut codec = LinesCodec::default();
/// let mut wire = BytesMut::from(&b"HELO example.org\r\nNOOP\nQU"[..]);
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "HELO example.org");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "NOOP");
/// assert_eq!(codec.decode(&mut wire).unwrap(), None);
/// wire.extend_from_slice(b"IT\r\n");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "QUIT");
///
/// let crlf = LinesCodec::new(LinesConfig { crlf: true, ..LinesConfig::default() }).unwrap();
/// crlf.encode(b"250 OK", &mut wire).unwrap();
/// assert_eq!(&wire[..], b"250 OK\r\n");
/// assert!(crlf.encode(b"two\nlines", &mut wire).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct LinesCodec {
    pub(super) config: LinesConfig,
    pub(super) state: ScanState,
}

impl LinesCodec {
    /// Builds a codec. Every configuration is valid; the `Result` matches the other codecs.
    pub fn new(config: LinesConfig) -> Result<Self, ConfigError> {
        Ok(LinesCodec {
            config,
            state: ScanState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LinesConfig {
        &self.config
    }

    /// Everything but a complete line while not discarding: discarding, or no `\n` yet.
    fn decode_rest(
        &mut self,
        buf: &mut BytesMut,
        newline: Option<usize>,
    ) -> Result<Option<Bytes>, DecodeError> {
        let len = buf.len();
        if self.state.discarding {
            return match newline {
                Some(nl) => {
                    self.state.drop_front(buf, nl + 1);
                    self.state.discarding = false;
                    self.decode(buf)
                }
                None => {
                    // A trailing `\r` need not be kept: a bare `\n` ends the line anyway.
                    self.state.drop_front(buf, len);
                    Ok(None)
                }
            };
        }
        debug_assert!(newline.is_none());
        // A trailing `\r` may be the start of the terminator.
        let earliest_end = if buf.last() == Some(&b'\r') {
            len - 1
        } else {
            len
        };
        let limit = self.config.max_frame_length;
        if earliest_end > limit {
            let kind = DecodeErrorKind::DelimiterNotFound { limit };
            return Err(self
                .state
                .oversize(self.config.oversize, kind, buf, len, true));
        }
        self.state.searched = len;
        Ok(None)
    }
}

impl Default for LinesCodec {
    /// A codec with [`LinesConfig::default`].
    fn default() -> Self {
        LinesCodec {
            config: LinesConfig::default(),
            state: ScanState::default(),
        }
    }
}

impl FrameDecoder for LinesCodec {
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        let from = self.state.resume_at(buf.len());
        let newline = memchr::memchr(b'\n', &buf[from..]).map(|i| from + i);
        match newline {
            Some(nl) if !self.state.discarding => {
                let end = if nl > 0 && buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                let limit = self.config.max_frame_length;
                if end > limit {
                    let kind = DecodeErrorKind::FrameTooLong {
                        length: end as u64,
                        limit,
                    };
                    return Err(self.state.oversize(
                        self.config.oversize,
                        kind,
                        buf,
                        nl + 1,
                        false,
                    ));
                }
                let keep = if self.config.strip { end } else { nl + 1 };
                Ok(Some(self.state.take_frame(buf, nl + 1, keep)))
            }
            _ => self.decode_rest(buf, newline),
        }
    }

    fn consumed(&self) -> u64 {
        self.state.consumed
    }
}

impl LinesCodec {
    /// The line ending to append to `payload`, or why it cannot be sent as one line.
    #[inline]
    fn line_ending(&self, payload: &[u8]) -> Result<&'static [u8], EncodeError> {
        self.check_length(payload)?;
        if let Some(position) = memchr::memchr(b'\n', payload) {
            return Err(EncodeError::ContainsDelimiter { position });
        }
        self.ending_after(payload)
    }

    #[inline]
    fn check_length(&self, payload: &[u8]) -> Result<(), EncodeError> {
        let limit = self.config.max_frame_length;
        if payload.len() > limit {
            return Err(EncodeError::FrameTooLong {
                length: payload.len(),
                limit,
            });
        }
        Ok(())
    }

    /// The ending for a payload known to hold no `\n`.
    #[inline]
    fn ending_after(&self, payload: &[u8]) -> Result<&'static [u8], EncodeError> {
        if self.config.crlf {
            Ok(b"\r\n")
        } else if payload.last() == Some(&b'\r') {
            // "x\r" + "\n" would read back as "x".
            Err(EncodeError::ContainsDelimiter {
                position: payload.len() - 1,
            })
        } else {
            Ok(b"\n")
        }
    }
}

impl FrameEncoder for LinesCodec {
    #[inline]
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        Ok(FrameParts::with_tail(self.line_ending(payload)?))
    }

    /// Copies the line into `dst` while checking it for `\n` in the same pass, then appends the
    /// ending. On error `dst` is unchanged.
    #[inline]
    fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.check_length(payload)?;
        let ending = self.ending_after(payload)?;
        dst.reserve(payload.len() + ending.len());
        append_without(dst, payload, b'\n')
            .map_err(|position| EncodeError::ContainsDelimiter { position })?;
        match ending {
            [b] => dst.put_u8(*b),
            _ => dst.put_slice(ending),
        }
        Ok(())
    }
}
