//! Typed errors of the framing layer: what went wrong decoding a byte stream, encoding a frame,
//! or configuring a codec. Every error carries the numbers that explain it (lengths, limits and the
//! stream offset) so that a log line alone is enough to understand a failure.

use thiserror::Error;

/// An error found while turning a byte stream into frames.
///
/// Every decode error knows the **stream offset** (bytes since the start of the stream) of the frame
/// or header it is about, and whether it is **recoverable**: after a recoverable error (an oversized
/// frame under [`OversizePolicy::Discard`](crate::codec::OversizePolicy::Discard), or bytes skipped
/// while resynchronising on a magic marker) the decoder is in a consistent state and the caller may
/// simply keep decoding. After a fatal error the stream has lost its framing and must be closed.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, LengthFieldCodec, LengthFieldConfig, DecodeErrorKind};
///
/// let mut codec = LengthFieldCodec::new(LengthFieldConfig { max_frame_length: 1024, ..LengthFieldConfig::new(4) }).unwrap();
/// // A hostile 4 GiB length header is rejected on sight, without allocating.
/// let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
/// let err = codec.decode(&mut buf).unwrap_err();
/// assert!(matches!(err.kind(), DecodeErrorKind::FrameTooLong { length: 4294967299, limit: 1024 }));
/// assert_eq!(err.offset(), 0);
/// assert!(!err.is_recoverable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} (at stream offset {offset})")]
pub struct DecodeError {
    kind: DecodeErrorKind,
    offset: u64,
    recoverable: bool,
}

impl DecodeError {
    /// A fatal error: the stream's framing is lost.
    pub fn fatal(kind: DecodeErrorKind, offset: u64) -> Self {
        DecodeError {
            kind,
            offset,
            recoverable: false,
        }
    }

    /// A recoverable error: reported once, then decoding may continue.
    pub fn recoverable(kind: DecodeErrorKind, offset: u64) -> Self {
        DecodeError {
            kind,
            offset,
            recoverable: true,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// Stream offset (bytes from the start of the stream) of the frame or header at fault.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True when the decoder can go on decoding after this error.
    pub fn is_recoverable(&self) -> bool {
        self.recoverable
    }
}

/// The cause of a [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// A header declared a frame longer than the configured limit. Raised as soon as the header is
    /// read, before any of the frame is buffered.
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    FrameTooLong {
        /// Declared frame length (saturated at `u64::MAX`).
        length: u64,
        /// The configured maximum.
        limit: usize,
    },
    /// A delimiter-based decoder buffered more than its limit without finding a delimiter.
    #[error("no delimiter within {limit} bytes")]
    DelimiterNotFound {
        /// The configured maximum frame length.
        limit: usize,
    },
    /// A length field whose adjusted value gives a frame that does not even cover the length field
    /// itself (Netty: "Adjusted frame length is less than lengthFieldEndOffset").
    #[error(
        "length field value {raw_length} with adjustment {adjustment} gives a frame shorter than \
         the {header_length} bytes up to the end of the length field"
    )]
    LengthBelowHeader {
        /// The value read from the length field.
        raw_length: u64,
        /// The configured length adjustment.
        adjustment: i64,
        /// Length field offset + width.
        header_length: usize,
    },
    /// More bytes are to be stripped than the frame holds.
    #[error("cannot strip {strip} bytes from a frame of {frame_length} bytes")]
    StripBeyondFrame {
        /// Configured bytes to strip.
        strip: usize,
        /// Length of the whole frame.
        frame_length: usize,
    },
    /// A varint length prefix longer than 10 bytes or whose value overflows 64 bits.
    #[error("varint length prefix overflows 64 bits")]
    VarintOverflow,
    /// A varint length prefix that is not in its shortest form (e.g. `80 00` for 0).
    #[error("varint length prefix of {encoded_len} bytes is not minimal (value {value})")]
    VarintNotMinimal {
        /// Bytes the prefix used.
        encoded_len: usize,
        /// The value it encodes.
        value: u64,
    },
    /// A malformed netstring (`<digits>:<payload>,`).
    #[error("malformed netstring: {reason}")]
    InvalidNetstring {
        /// What is wrong, e.g. "leading zero in length".
        reason: &'static str,
    },
    /// The bytes at a frame boundary are not the configured magic marker.
    #[error("bad magic: expected {expected:02x?}, found {found:02x?}")]
    BadMagic {
        /// The configured magic.
        expected: Vec<u8>,
        /// The bytes found instead.
        found: Vec<u8>,
    },
    /// The checksum in a frame header does not match its payload.
    #[error(
        "checksum mismatch on a {length}-byte payload: header says {expected:#010x}, payload gives {computed:#010x}"
    )]
    ChecksumMismatch {
        /// Checksum carried in the header.
        expected: u32,
        /// Checksum computed over the payload.
        computed: u32,
        /// Payload length.
        length: usize,
    },
    /// Bytes were skipped to find the next magic marker after a bad frame (resynchronise policy).
    #[error("skipped {skipped} bytes to resynchronise after {cause}")]
    Resynchronized {
        /// How many bytes were thrown away.
        skipped: u64,
        /// Why the frame at the error's offset was rejected.
        cause: Box<DecodeErrorKind>,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} bytes buffered{}", match .expected { Some(n) => format!(" of {n} expected"), None => String::new() })]
    Truncated {
        /// Bytes of the partial frame that were buffered.
        buffered: usize,
        /// Full frame length, when the header was already read.
        expected: Option<u64>,
    },
}

/// An error turning a payload into a frame. The payload is not written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is larger than the codec's maximum frame length (the peer would reject it).
    #[error("payload of {length} bytes gives a frame over the limit of {limit} bytes")]
    FrameTooLong {
        /// The payload length.
        length: usize,
        /// The configured maximum frame length.
        limit: usize,
    },
    /// The value to write does not fit the length field (too large for its width, or negative
    /// after the length adjustment).
    #[error("length value {value} does not fit a {width}-byte unsigned length field")]
    LengthNotRepresentable {
        /// The value that would have been written.
        value: i128,
        /// Width of the field in bytes.
        width: u8,
    },
    /// A fixed-length codec was given a payload of another length.
    #[error("payload of {length} bytes given to a fixed-length codec of {expected} bytes")]
    WrongFixedLength {
        /// The payload length.
        length: usize,
        /// The configured frame length.
        expected: usize,
    },
    /// The payload contains a delimiter, so the peer would see it as more than one frame.
    #[error("payload contains a delimiter at byte {position}")]
    ContainsDelimiter {
        /// Byte offset of the delimiter in the payload.
        position: usize,
    },
    /// This configuration cannot encode frames (e.g. a length field preceded by bytes the encoder cannot know).
    #[error("this framing cannot encode: {reason}")]
    Unsupported {
        /// Why.
        reason: &'static str,
    },
}

/// An invalid codec configuration, or an unparsable framing spec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Length field width other than 1, 2, 3, 4 or 8 (or what the codec supports).
    #[error("unsupported length field width {width} (expected one of {allowed})")]
    InvalidWidth {
        /// The width given.
        width: usize,
        /// The widths allowed, for the message.
        allowed: &'static str,
    },
    /// The maximum frame length cannot hold even the header.
    #[error("max frame length {max} is smaller than the {minimum}-byte header")]
    MaxTooSmall {
        /// The configured maximum.
        max: usize,
        /// The smallest sensible maximum.
        minimum: usize,
    },
    /// A numeric parameter is out of its range.
    #[error("{name} = {value} is out of range ({range})")]
    OutOfRange {
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: i128,
        /// The allowed range, for the message.
        range: &'static str,
    },
    /// An empty delimiter, or no delimiter at all.
    #[error("a delimiter must be at least one byte")]
    EmptyDelimiter,
    /// A delimiter or magic marker longer than supported.
    #[error("{what} of {length} bytes is longer than the supported {max}")]
    TooLong {
        /// "delimiter" or "magic".
        what: &'static str,
        /// Its length.
        length: usize,
        /// Supported maximum.
        max: usize,
    },
    /// A framing spec that does not parse.
    #[error("invalid framing spec {spec:?}: {reason}")]
    Spec {
        /// The spec text.
        spec: String,
        /// What is wrong, naming the offending part.
        reason: String,
    },
}
