//! The framelink wire protocol, version 1: message types, their byte layouts, and a sans-IO codec
//! that turns a TCP byte stream into [`Message`]s and back.
//!
//! The normative description is `docs/PROTOCOL.md`; this module implements it and its test vectors
//! (`tests/data/protocol-v1-vectors.tsv`) are checked against that document. In short, every
//! message is
//!
//! ```text
//! length: u32 big-endian (bytes that follow, >= 1) | type: u8 | body: length - 1 bytes
//! ```
//!
//! with types `0x01 HELLO`, `0x02 DATA`, `0x03 PING`, `0x04 PONG`, `0x05 CLOSE`, the acknowledged
//! session messages `0x06 ACK`, `0x07 RESUME`, `0x08 SDATA` and `0x09 AUTH` (only after a session
//! was negotiated through the HELLO extension [`SESSION_EXTENSION`]), `0x0A..=0x7F` reserved, and
//! `0x80..=0xFF` extension messages that a receiver ignores when it does not understand them.
//!
//! Framing is done by [`LengthFieldCodec`], so the receiver's `max_message_len` is enforced as soon
//! as the four length bytes arrive, buffers grow with the bytes actually received (never by a
//! declared length), and message bodies are [`Bytes`] split off the read buffer without copying.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use framelink_proto::wire::{Hello, Message, WireCodec};
//!
//! let mut ours = WireCodec::new(1 << 20).unwrap();
//! let mut theirs = WireCodec::new(1 << 20).unwrap();
//! let mut wire = BytesMut::new();
//! ours.encode(&Message::Hello(Hello::default()), &mut wire).unwrap();
//! ours.encode(&Message::Data(Bytes::from_static(b"hi")), &mut wire).unwrap();
//!
//! assert!(matches!(theirs.decode(&mut wire).unwrap(), Some(Message::Hello(_))));
//! assert_eq!(theirs.decode(&mut wire).unwrap(), Some(Message::Data(Bytes::from_static(b"hi"))));
//! assert_eq!(theirs.decode(&mut wire).unwrap(), None); // needs more bytes
//! ```

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::auth::{SessionSecret, NONCE_LEN, PROOF_LEN, SECRET_LEN};

use crate::codec::{
    ConfigError, DecodeError, DecodeErrorKind, FrameDecoder, LengthFieldCodec, LengthFieldConfig,
};

/// The protocol version this module implements.
pub const PROTOCOL_VERSION: u8 = 1;

/// The four bytes that open every HELLO body: ASCII `FLNK`.
pub const MAGIC: [u8; 4] = *b"FLNK";

/// Bytes of a HELLO body before its extensions: magic 4, version 1, flags 1, ping interval 4,
/// ping timeout 4, max message length 4, session id 16.
pub const HELLO_FIXED_LEN: usize = 34;

/// Largest PING / PONG context (body), in bytes.
pub const MAX_PING_CONTEXT: usize = 64;

/// Largest CLOSE reason, in bytes of UTF-8.
pub const MAX_CLOSE_REASON: usize = 1024;

/// Smallest `max_message_len` a peer may declare, and the limit on any message sent before the
/// peer's HELLO has been received.
pub const MIN_MAX_MESSAGE_LEN: u32 = 4096;

/// Bytes of the length field in front of every message.
pub const LENGTH_FIELD_LEN: usize = 4;

/// HELLO extension type negotiating an acknowledged session (section 12 of `docs/PROTOCOL.md`).
pub const SESSION_EXTENSION: u16 = 0x0001;

/// The protocol version two peers use, given the lowest and highest version this side speaks and
/// the highest the peer announced in its HELLO: `min(own_highest, peer_highest)`, or `None` when that
/// is below `own_lowest` (send CLOSE [`CloseCode::UnsupportedVersion`] and close).
///
/// ```
/// use framelink_proto::wire::negotiate_version;
/// assert_eq!(negotiate_version(1, 1, 3), Some(1));
/// assert_eq!(negotiate_version(1, 2, 1), Some(1));
/// assert_eq!(negotiate_version(2, 3, 1), None);
/// assert_eq!(negotiate_version(1, 1, 0), None);
/// ```
pub fn negotiate_version(own_lowest: u8, own_highest: u8, peer_highest: u8) -> Option<u8> {
    let v = own_highest.min(peer_highest);
    (v >= own_lowest && v >= 1).then_some(v)
}

/// One protocol message.
///
/// ```
/// use bytes::Bytes;
/// use framelink_proto::wire::{CloseCode, Message};
///
/// assert_eq!(Message::Ping(Bytes::new()).message_type(), Message::PING);
/// let close = Message::Close { code: CloseCode::GoingAway, reason: "restarting".into() };
/// assert_eq!(close.message_type(), 0x05);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `0x01`: the first message each side sends.
    Hello(Hello),
    /// `0x02`: an application payload (may be empty).
    Data(Bytes),
    /// `0x03`: a keep-alive probe with an opaque context of at most [`MAX_PING_CONTEXT`] bytes.
    Ping(Bytes),
    /// `0x04`: the answer to a PING, carrying the PING's context unchanged.
    Pong(Bytes),
    /// `0x05`: the sender is closing the connection.
    Close {
        /// Why.
        code: CloseCode,
        /// Human-readable detail, at most [`MAX_CLOSE_REASON`] bytes of UTF-8.
        reason: String,
    },
    /// `0x06` (sessions only): the sender has delivered every SDATA of the session up to and
    /// including this sequence number (cumulative).
    Ack(u64),
    /// `0x07` (sessions only): the accepting side's answer to a session request, sent once
    /// right after the handshake.
    Resume {
        /// What happened to the session.
        status: ResumeStatus,
        /// The last sequence number of the requester's SDATA that the accepting side delivered
        /// in this session (0: none).
        delivered: u64,
        /// The new session's secret: present exactly when `status` is `New` or `Unknown` (a
        /// resumed session keeps the secret it has).
        secret: Option<SessionSecret>,
    },
    /// `0x08` (sessions only): an application payload with its sequence number in the session.
    SessionData {
        /// Sequence number: 1 for the session's first message, then one more per message.
        seq: u64,
        /// The payload (may be empty).
        payload: Bytes,
    },
    /// `0x09` (sessions only): the requester's proof that it holds the session's secret, bound
    /// to this connection's nonce (see [`crate::auth`]).
    Auth([u8; PROOF_LEN]),
    /// `0x80..=0xFF`: an extension message; ignore it unless its type was agreed on.
    Extension {
        /// The message type, `0x80..=0xFF`.
        ty: u8,
        /// The body, uninterpreted.
        body: Bytes,
    },
}

impl Message {
    /// Type byte of HELLO.
    pub const HELLO: u8 = 0x01;
    /// Type byte of DATA.
    pub const DATA: u8 = 0x02;
    /// Type byte of PING.
    pub const PING: u8 = 0x03;
    /// Type byte of PONG.
    pub const PONG: u8 = 0x04;
    /// Type byte of CLOSE.
    pub const CLOSE: u8 = 0x05;
    /// Type byte of ACK (acknowledged sessions).
    pub const ACK: u8 = 0x06;
    /// Type byte of RESUME (acknowledged sessions).
    pub const RESUME: u8 = 0x07;
    /// Type byte of SDATA, sequenced DATA (acknowledged sessions).
    pub const SDATA: u8 = 0x08;
    /// Type byte of AUTH, the proof of a resume (acknowledged sessions).
    pub const AUTH: u8 = 0x09;
    /// Lowest extension message type.
    pub const FIRST_EXTENSION: u8 = 0x80;

    /// The type byte this message is sent with.
    pub fn message_type(&self) -> u8 {
        match self {
            Message::Hello(_) => Self::HELLO,
            Message::Data(_) => Self::DATA,
            Message::Ping(_) => Self::PING,
            Message::Pong(_) => Self::PONG,
            Message::Close { .. } => Self::CLOSE,
            Message::Ack(_) => Self::ACK,
            Message::Resume { .. } => Self::RESUME,
            Message::SessionData { .. } => Self::SDATA,
            Message::Auth(_) => Self::AUTH,
            Message::Extension { ty, .. } => *ty,
        }
    }

    /// Body length in bytes (the `length` field is this plus one).
    pub fn body_len(&self) -> usize {
        match self {
            Message::Hello(h) => h.body_len(),
            Message::Data(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close { reason, .. } => 2 + reason.len(),
            Message::Ack(_) => 8,
            Message::Resume { secret, .. } => 9 + secret.as_ref().map_or(0, |_| SECRET_LEN),
            Message::Auth(_) => PROOF_LEN,
            Message::SessionData { payload, .. } => 8 + payload.len(),
            Message::Extension { body, .. } => body.len(),
        }
    }
}

/// The HELLO message: protocol version, keep-alive parameters, limits and session id.
///
/// [`Hello::default`] is what framelink sends without configuration: version 1, a PING after 15 s
/// without traffic, a 10 s PING timeout, 8 MiB messages, no session.
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::wire::Hello;
///
/// let hello = Hello { ping_interval: Duration::ZERO, ..Hello::default() }; // never pings
/// assert_eq!(hello.version, 1);
/// assert_eq!(hello.body_len(), 34);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the sender speaks.
    pub version: u8,
    /// Flag bits; 0 in version 1, unknown bits are ignored by receivers.
    pub flags: u8,
    /// The sender sends a PING after this long without receiving anything; zero: never.
    /// Whole milliseconds on the wire, at most `u32::MAX` ms.
    pub ping_interval: Duration,
    /// After a PING, the sender declares the peer dead if nothing arrives within this long: the
    /// peer must answer (or send anything) within it. Non-zero when `ping_interval` is.
    pub ping_timeout: Duration,
    /// Largest `length` value the sender accepts; at least [`MIN_MAX_MESSAGE_LEN`].
    pub max_message_len: u32,
    /// Session identifier; all zero means no session.
    pub session_id: [u8; 16],
    /// Extensions, in wire order. Unknown ones are kept here and should be ignored.
    pub extensions: Vec<HelloExtension>,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            flags: 0,
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
            max_message_len: 8 * 1024 * 1024,
            session_id: [0; 16],
            extensions: Vec::new(),
        }
    }
}

impl Hello {
    /// Length of the encoded HELLO body.
    pub fn body_len(&self) -> usize {
        HELLO_FIXED_LEN
            + self
                .extensions
                .iter()
                .map(|e| 4 + e.data.len())
                .sum::<usize>()
    }

    /// True when the session id is not all zero.
    pub fn has_session(&self) -> bool {
        self.session_id != [0; 16]
    }
}

/// What a RESUME reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeStatus {
    /// `0`: a new session was created (the requester announced `delivered = 0`).
    New,
    /// `1`: the session was found and continues: each side resends what the other has not
    /// delivered.
    Resumed,
    /// `2`: the requester announced a session the accepting side does not have (expired,
    /// or the server restarted): a new session was created under the same id, numbering
    /// starts again at 1, and the requester must report its unacknowledged messages as lost.
    Unknown,
}

impl ResumeStatus {
    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            ResumeStatus::New => 0,
            ResumeStatus::Resumed => 1,
            ResumeStatus::Unknown => 2,
        }
    }

    /// The status for a wire value, if it is one.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(ResumeStatus::New),
            1 => Some(ResumeStatus::Resumed),
            2 => Some(ResumeStatus::Unknown),
            _ => None,
        }
    }
}

/// The session extension of a HELLO ([`SESSION_EXTENSION`]): `role: u8`, `delivered: u64`, and
/// for an offer a 16-byte nonce (9 or 25 bytes of data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionHello {
    /// `role = 1`: the sender (the connecting side) asks for the session named by the HELLO's
    /// `session_id` without holding its secret: a new session, or one whose RESUME never
    /// reached it. It has delivered the peer's SDATA up to `delivered`.
    Request {
        /// Last sequence number of the peer's SDATA delivered in this session (0: none).
        delivered: u64,
    },
    /// `role = 3`: the sender asks to resume the session it holds the secret of, and proves it
    /// with an AUTH message once it has the peer's nonce.
    Resume {
        /// Last sequence number of the peer's SDATA delivered in this session (0: none).
        delivered: u64,
    },
    /// `role = 2`: the sender (the accepting side) keeps sessions and will answer a request
    /// with RESUME; a resume's proof must be bound to `nonce`, fresh for this connection.
    Offer {
        /// This connection's nonce.
        nonce: [u8; NONCE_LEN],
    },
}

impl SessionHello {
    /// The extension as it goes into [`Hello::extensions`].
    pub fn to_extension(self) -> HelloExtension {
        let (role, delivered, nonce) = match self {
            SessionHello::Request { delivered } => (1u8, delivered, None),
            SessionHello::Offer { nonce } => (2u8, 0, Some(nonce)),
            SessionHello::Resume { delivered } => (3u8, delivered, None),
        };
        let mut data = BytesMut::with_capacity(9 + NONCE_LEN);
        data.put_u8(role);
        data.put_u64(delivered);
        if let Some(nonce) = nonce {
            data.put_slice(&nonce);
        }
        HelloExtension {
            ty: SESSION_EXTENSION,
            data: data.freeze(),
        }
    }

    /// The session extension of `hello`, if it has a well-formed one (the first one counts;
    /// a malformed one is ignored, like any extension a receiver does not understand).
    pub fn from_hello(hello: &Hello) -> Option<Self> {
        let e = hello
            .extensions
            .iter()
            .find(|e| e.ty == SESSION_EXTENSION)?;
        let role = *e.data.first()?;
        let delivered = u64::from_be_bytes(e.data.get(1..9)?.try_into().ok()?);
        match (role, e.data.len()) {
            (1, 9) => Some(SessionHello::Request { delivered }),
            (3, 9) => Some(SessionHello::Resume { delivered }),
            (2, 25) => Some(SessionHello::Offer {
                nonce: e.data[9..25].try_into().ok()?,
            }),
            _ => None,
        }
    }
}

/// One extension in a HELLO: `ext_type: u16`, `ext_len: u16`, `ext_len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloExtension {
    /// Extension type. `0x0000..=0x7FFF` are assigned by the specification, `0x8000..=0xFFFF` are
    /// for private use.
    pub ty: u16,
    /// Extension data, at most 65535 bytes.
    pub data: Bytes,
}

/// The code of a CLOSE message.
///
/// ```
/// use framelink_proto::wire::CloseCode;
///
/// assert_eq!(CloseCode::from_u16(4), CloseCode::TooManyPings);
/// assert_eq!(CloseCode::from_u16(0x1234), CloseCode::Application(0x1234));
/// assert_eq!(CloseCode::from_u16(42), CloseCode::Unknown(42));
/// assert!(CloseCode::Unknown(42).is_abnormal());
/// assert_eq!(CloseCode::ServerFull.as_u16(), 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 0: the sender is done; nothing went wrong.
    Normal,
    /// 1: the sender is shutting down or restarting.
    GoingAway,
    /// 2: the peer broke this specification.
    ProtocolError,
    /// 3: the peer did not answer a PING (or send anything) in time.
    PeerTimedOut,
    /// 4: the peer sent PINGs more often than it declared.
    TooManyPings,
    /// 5: the peer sent a message longer than the sender's `max_message_len`.
    MessageTooBig,
    /// 6: no common protocol version.
    UnsupportedVersion,
    /// 7: the sender does not accept more connections.
    ServerFull,
    /// 8: the connection was evicted for being idle.
    Idle,
    /// 9: the accepting side refused the session asked for: the resume's proof is wrong, or the
    /// session is in use and the request proved nothing. The session is left as it was.
    SessionRefused,
    /// 10: another connection proved it holds this connection's session and took it over.
    SessionTakenOver,
    /// `0x1000..=0xFFFF`: defined by the application.
    Application(u16),
    /// A code this version does not know (`11..=0x0FFF`); treated as abnormal.
    Unknown(u16),
}

impl CloseCode {
    /// Lowest application-defined code.
    pub const FIRST_APPLICATION: u16 = 0x1000;

    /// The code for a value read from the wire.
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::GoingAway,
            2 => CloseCode::ProtocolError,
            3 => CloseCode::PeerTimedOut,
            4 => CloseCode::TooManyPings,
            5 => CloseCode::MessageTooBig,
            6 => CloseCode::UnsupportedVersion,
            7 => CloseCode::ServerFull,
            8 => CloseCode::Idle,
            9 => CloseCode::SessionRefused,
            10 => CloseCode::SessionTakenOver,
            c if c >= Self::FIRST_APPLICATION => CloseCode::Application(c),
            c => CloseCode::Unknown(c),
        }
    }

    /// The value sent on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::GoingAway => 1,
            CloseCode::ProtocolError => 2,
            CloseCode::PeerTimedOut => 3,
            CloseCode::TooManyPings => 4,
            CloseCode::MessageTooBig => 5,
            CloseCode::UnsupportedVersion => 6,
            CloseCode::ServerFull => 7,
            CloseCode::Idle => 8,
            CloseCode::SessionRefused => 9,
            CloseCode::SessionTakenOver => 10,
            CloseCode::Application(c) | CloseCode::Unknown(c) => c,
        }
    }

    /// True when [`from_u16`](Self::from_u16) of [`as_u16`](Self::as_u16) gives this value back,
    /// i.e. not `Application` below `0x1000` nor `Unknown` of a known or application code. Only
    /// canonical codes can be encoded.
    pub fn is_canonical(self) -> bool {
        Self::from_u16(self.as_u16()) == self
    }

    /// True for codes that mean something went wrong: everything except `Normal`, `GoingAway`
    /// and application codes (whose meaning the application decides).
    pub fn is_abnormal(self) -> bool {
        !matches!(
            self,
            CloseCode::Normal | CloseCode::GoingAway | CloseCode::Application(_)
        )
    }
}

/// A message that breaks the protocol; the connection must be closed (see
/// [`WireError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Violation {
    /// A `length` of 0: every message has at least a type byte.
    #[error("message length 0 (every message has at least a type byte)")]
    ZeroLength,
    /// A `length` over the receiver's `max_message_len`, rejected when the length field is read.
    #[error("message length {length} exceeds the limit of {max} bytes")]
    MessageTooLong {
        /// The declared length.
        length: u64,
        /// The limit in force: the receiver's `max_message_len`, or [`MIN_MAX_MESSAGE_LEN`]
        /// before the peer's HELLO (section 10).
        max: u32,
    },
    /// A reserved type (`0x0A..=0x7F`).
    #[error("reserved message type {ty:#04x}")]
    ReservedType {
        /// The type byte.
        ty: u8,
    },
    /// A session message (ACK, RESUME, SDATA) or a DATA that does not fit the connection: a
    /// session message without a negotiated session, DATA inside one, a RESUME out of place.
    #[error("{what} not allowed here: {why}")]
    Unexpected {
        /// The message type's name.
        what: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A fixed-size message body of the wrong size.
    #[error("{what} body of {got} bytes, expected {expected}")]
    BodyLength {
        /// The message type's name.
        what: &'static str,
        /// The expected size.
        expected: &'static str,
        /// Bytes in the body.
        got: usize,
    },
    /// A RESUME status this version does not define.
    #[error("RESUME status {status} is not defined")]
    BadResumeStatus {
        /// The status byte.
        status: u8,
    },
    /// A session sequence number out of order, or an ACK / RESUME acknowledging something
    /// impossible (more than was sent, or less than already acknowledged).
    #[error("session sequence error: {what} {got}, expected {expected}")]
    SessionSequence {
        /// Which number.
        what: &'static str,
        /// The number received.
        got: u64,
        /// What was acceptable.
        expected: String,
    },
    /// The peer's first message is not HELLO.
    #[error("expected HELLO as the first message, got type {ty:#04x}")]
    HelloExpected {
        /// The type byte received instead.
        ty: u8,
    },
    /// A HELLO after the first message.
    #[error("HELLO received again after the handshake")]
    UnexpectedHello,
    /// A HELLO body that does not start with `FLNK`.
    #[error("bad HELLO magic: expected 464c4e4b, found {found:02x?}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A HELLO body shorter than its fixed part.
    #[error("HELLO body of {got} bytes is shorter than the {needed} fixed bytes")]
    HelloTooShort {
        /// Bytes needed ([`HELLO_FIXED_LEN`]).
        needed: usize,
        /// Bytes in the body.
        got: usize,
    },
    /// A HELLO extension running past the end of the body.
    #[error(
        "HELLO extension at body offset {offset} needs {needed} bytes, only {available} remain"
    )]
    TruncatedExtension {
        /// Offset of the extension's header in the HELLO body.
        offset: usize,
        /// Bytes the extension (header included) needs, or 4 when its header is cut.
        needed: usize,
        /// Bytes left in the body from `offset`.
        available: usize,
    },
    /// A HELLO with a ping interval but a zero ping timeout.
    #[error("HELLO declares a ping interval of {ping_interval_ms} ms with a ping timeout of 0")]
    ZeroPingTimeout {
        /// The declared interval.
        ping_interval_ms: u32,
    },
    /// A HELLO declaring a `max_message_len` below the protocol's minimum.
    #[error("HELLO declares max_message_len {declared}, below the minimum of {min}")]
    MaxMessageLenTooSmall {
        /// The declared value.
        declared: u32,
        /// [`MIN_MAX_MESSAGE_LEN`].
        min: u32,
    },
    /// A PING or PONG context longer than [`MAX_PING_CONTEXT`].
    #[error("{what} context of {len} bytes exceeds the maximum of {max}")]
    PingContextTooLong {
        /// "PING" or "PONG".
        what: &'static str,
        /// The context length.
        len: usize,
        /// [`MAX_PING_CONTEXT`].
        max: usize,
    },
    /// A CLOSE body with no room for the code.
    #[error("CLOSE body of {got} bytes has no room for the 2-byte code")]
    CloseTooShort {
        /// Bytes in the body.
        got: usize,
    },
    /// A CLOSE reason longer than [`MAX_CLOSE_REASON`].
    #[error("CLOSE reason of {len} bytes exceeds the maximum of {max}")]
    CloseReasonTooLong {
        /// The reason length.
        len: usize,
        /// [`MAX_CLOSE_REASON`].
        max: usize,
    },
    /// A CLOSE reason that is not UTF-8.
    #[error("CLOSE reason is not UTF-8 (valid up to byte {valid_up_to})")]
    CloseReasonNotUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
}

/// An error decoding the wire protocol. All are fatal: send CLOSE with
/// [`close_code`](Self::close_code) and close the connection.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::wire::{CloseCode, Violation, WireCodec, WireError};
///
/// let mut codec = WireCodec::new(4096).unwrap();
/// let mut buf = BytesMut::from(&[0x00, 0x01, 0x00, 0x00][..]); // 65536 bytes declared
/// let err = codec.decode(&mut buf).unwrap_err();
/// assert_eq!(err, WireError::Protocol {
///     violation: Violation::MessageTooLong { length: 65536, max: 4096 },
///     offset: 0,
/// });
/// assert_eq!(err.close_code(), CloseCode::MessageTooBig);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The framing layer failed (e.g. the stream ended inside a message).
    #[error("framing: {0}")]
    Framing(#[from] DecodeError),
    /// A message broke the protocol.
    #[error("protocol error: {violation} (message at stream offset {offset})")]
    Protocol {
        /// What is wrong.
        violation: Violation,
        /// Stream offset of the message's length field.
        offset: u64,
    },
}

impl WireError {
    /// The CLOSE code to send before closing because of this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::Framing(e) => match e.kind() {
                DecodeErrorKind::FrameTooLong { .. } => CloseCode::MessageTooBig,
                _ => CloseCode::ProtocolError,
            },
            WireError::Protocol {
                violation: Violation::MessageTooLong { .. },
                ..
            } => CloseCode::MessageTooBig,
            WireError::Protocol { .. } => CloseCode::ProtocolError,
        }
    }

    /// The protocol violation, if this is one.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            WireError::Protocol { violation, .. } => Some(violation),
            WireError::Framing(_) => None,
        }
    }
}

/// A message the specification forbids sending. Nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireEncodeError {
    /// The message's `length` would exceed the peer's `max_message_len` (or `u32::MAX`).
    #[error("message length {length} exceeds the peer's limit of {max} bytes")]
    MessageTooLong {
        /// The `length` the message would have (type byte + body).
        length: u64,
        /// The limit in force.
        max: u32,
    },
    /// A PING or PONG context over [`MAX_PING_CONTEXT`] bytes.
    #[error("{what} context of {len} bytes exceeds the maximum of {max}")]
    PingContextTooLong {
        /// "PING" or "PONG".
        what: &'static str,
        /// The context length.
        len: usize,
        /// [`MAX_PING_CONTEXT`].
        max: usize,
    },
    /// A CLOSE reason over [`MAX_CLOSE_REASON`] bytes.
    #[error("CLOSE reason of {len} bytes exceeds the maximum of {max}")]
    CloseReasonTooLong {
        /// The reason length.
        len: usize,
        /// [`MAX_CLOSE_REASON`].
        max: usize,
    },
    /// A [`CloseCode`] that would decode as another variant (see [`CloseCode::is_canonical`]).
    #[error("close code {code:?} is not canonical (it would be read back as {read_back:?})")]
    NonCanonicalCloseCode {
        /// The code given.
        code: CloseCode,
        /// What a receiver would read.
        read_back: CloseCode,
    },
    /// An extension message type outside `0x80..=0xFF`.
    #[error("extension message type {ty:#04x} is not in 0x80..=0xff")]
    NotExtensionType {
        /// The type given.
        ty: u8,
    },
    /// A RESUME whose secret does not match its status: `New` and `Unknown` carry the new
    /// session's secret, `Resumed` carries none.
    #[error("RESUME {status:?} must carry a secret exactly when the session is new")]
    ResumeSecret {
        /// The status given.
        status: ResumeStatus,
    },
    /// A HELLO duration that is not a whole number of milliseconds up to `u32::MAX`.
    #[error("HELLO {field} of {duration:?} is not a whole number of milliseconds up to u32::MAX")]
    DurationNotRepresentable {
        /// "ping_interval" or "ping_timeout".
        field: &'static str,
        /// The duration given.
        duration: Duration,
    },
    /// A HELLO with a ping interval and a zero ping timeout.
    #[error("HELLO has a ping interval of {ping_interval:?} but a zero ping timeout")]
    ZeroPingTimeout {
        /// The interval given.
        ping_interval: Duration,
    },
    /// A HELLO declaring a `max_message_len` below [`MIN_MAX_MESSAGE_LEN`].
    #[error("HELLO max_message_len {declared} is below the minimum of {min}")]
    MaxMessageLenTooSmall {
        /// The value given.
        declared: u32,
        /// [`MIN_MAX_MESSAGE_LEN`].
        min: u32,
    },
    /// A HELLO extension with more than 65535 bytes of data.
    #[error("HELLO extension {ty:#06x} has {len} bytes of data, more than 65535")]
    ExtensionTooLong {
        /// The extension type.
        ty: u16,
        /// Its data length.
        len: usize,
    },
}

/// Where a codec is in the handshake, for the "HELLO first, and only first" rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    AwaitingHello,
    Done,
    NotChecked,
}

/// Decoder and encoder of [`Message`]s over one connection, built on a [`LengthFieldCodec`]
/// (4-byte big-endian length, stripped; limit `max_message_len + 4`).
///
/// The decoder enforces this side's `max_message_len` and the rule that the peer's first message
/// is HELLO and no HELLO follows (turn this off with [`without_handshake_check`](Self::without_handshake_check)).
/// The encoder refuses messages the specification forbids, and messages longer than the peer's
/// `max_message_len`: [`MIN_MAX_MESSAGE_LEN`] until the peer's HELLO is decoded, then what that HELLO
/// declared (or [`set_peer_max_message_len`](Self::set_peer_max_message_len)).
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use framelink_proto::wire::{Message, WireCodec, Violation};
///
/// let mut codec = WireCodec::new(1 << 20).unwrap();
/// let mut wire = BytesMut::new();
/// codec.encode(&Message::Data(Bytes::from_static(b"early")), &mut wire).unwrap();
/// // DATA before HELLO is a protocol error on the receiving side.
/// let err = WireCodec::new(1 << 20).unwrap().decode(&mut wire).unwrap_err();
/// assert_eq!(err.violation(), Some(&Violation::HelloExpected { ty: 0x02 }));
/// ```
#[derive(Debug, Clone)]
pub struct WireCodec {
    framing: LengthFieldCodec,
    max_message_len: u32,
    peer_max_message_len: u32,
    handshake: Handshake,
}

impl WireCodec {
    /// A codec accepting messages whose `length` is at most `max_message_len` (the value to
    /// announce in this side's HELLO), which must be at least [`MIN_MAX_MESSAGE_LEN`].
    pub fn new(max_message_len: u32) -> Result<Self, ConfigError> {
        if max_message_len < MIN_MAX_MESSAGE_LEN {
            return Err(ConfigError::MaxTooSmall {
                max: max_message_len as usize,
                minimum: MIN_MAX_MESSAGE_LEN as usize,
            });
        }
        let framing = LengthFieldCodec::new(LengthFieldConfig {
            max_frame_length: (max_message_len as usize).saturating_add(LENGTH_FIELD_LEN),
            ..LengthFieldConfig::new(LENGTH_FIELD_LEN)
        })?;
        Ok(WireCodec {
            framing,
            max_message_len,
            peer_max_message_len: MIN_MAX_MESSAGE_LEN,
            handshake: Handshake::AwaitingHello,
        })
    }

    /// Full length (length field included) of the partial message at the front of `buf`, once
    /// its length field is in: how much the rest of it needs, for a reader that sizes its reads.
    pub fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        self.framing.pending_frame_length(buf)
    }

    /// Does not check that HELLO comes first and only first (for tests and tools that look at
    /// parts of a stream).
    pub fn without_handshake_check(mut self) -> Self {
        self.handshake = Handshake::NotChecked;
        self
    }

    /// This side's `max_message_len`.
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// The limit the encoder applies: the peer's declared `max_message_len`.
    pub fn peer_max_message_len(&self) -> u32 {
        self.peer_max_message_len
    }

    /// Sets the encoder's limit (done automatically when the peer's HELLO is decoded).
    pub fn set_peer_max_message_len(&mut self, max: u32) {
        self.peer_max_message_len = max;
    }

    /// Stream offset of the first byte not yet decoded.
    pub fn consumed(&self) -> u64 {
        self.framing.consumed()
    }

    /// Splits the next complete message off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. Bodies share memory with `buf`. After an error the connection must be
    /// closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
        let offset = self.framing.consumed();
        self.check_before_hello(buf, offset)?;
        match self.framing.decode(buf) {
            Ok(Some(frame)) => self.message(frame, offset).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.framing_error(e)),
        }
    }

    /// Like [`decode`](Self::decode), once the stream has ended: a partial message left in `buf`
    /// is an error instead of a wait.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
        let offset = self.framing.consumed();
        self.check_before_hello(buf, offset)?;
        match self.framing.decode_eof(buf) {
            Ok(Some(frame)) => self.message(frame, offset).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.framing_error(e)),
        }
    }

    /// Before the peer's HELLO (section 10): the first message must be a HELLO of at most
    /// [`MIN_MAX_MESSAGE_LEN`] bytes, and both are checked from its first 5 bytes, before any of
    /// its body is buffered. A peer cannot make us hold more than 4 KiB before it has
    /// identified itself, whatever `max_message_len` we announce.
    fn check_before_hello(&self, buf: &BytesMut, offset: u64) -> Result<(), WireError> {
        if self.handshake != Handshake::AwaitingHello || buf.len() < LENGTH_FIELD_LEN {
            return Ok(());
        }
        let fail = |violation| Err(WireError::Protocol { violation, offset });
        let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if length > MIN_MAX_MESSAGE_LEN {
            return fail(Violation::MessageTooLong {
                length: u64::from(length),
                max: MIN_MAX_MESSAGE_LEN,
            });
        }
        match buf.get(LENGTH_FIELD_LEN) {
            Some(&ty) if length > 0 && ty != Message::HELLO => {
                fail(Violation::HelloExpected { ty })
            }
            _ => Ok(()),
        }
    }

    /// Turns the framing layer's over-limit error into the protocol's terms (the message length,
    /// without the length field).
    fn framing_error(&self, e: DecodeError) -> WireError {
        match e.kind() {
            DecodeErrorKind::FrameTooLong { length, .. } => WireError::Protocol {
                violation: Violation::MessageTooLong {
                    length: length.saturating_sub(LENGTH_FIELD_LEN as u64),
                    max: self.max_message_len,
                },
                offset: e.offset(),
            },
            _ => WireError::Framing(e),
        }
    }

    /// Parses one message (type + body) and applies the handshake rule.
    fn message(&mut self, mut frame: Bytes, offset: u64) -> Result<Message, WireError> {
        let fail = |violation| WireError::Protocol { violation, offset };
        if frame.is_empty() {
            return Err(fail(Violation::ZeroLength));
        }
        let ty = frame[0];
        frame.advance(1);
        match (self.handshake, ty) {
            (Handshake::AwaitingHello, t) if t != Message::HELLO => {
                return Err(fail(Violation::HelloExpected { ty }))
            }
            (Handshake::Done, Message::HELLO) => return Err(fail(Violation::UnexpectedHello)),
            _ => {}
        }
        let message = parse_body(ty, frame).map_err(fail)?;
        if let Message::Hello(hello) = &message {
            if self.handshake == Handshake::AwaitingHello {
                self.handshake = Handshake::Done;
                self.peer_max_message_len = hello.max_message_len;
            }
        }
        Ok(message)
    }

    /// Appends the encoded `message` to `dst`, or refuses a message the specification forbids or
    /// the peer would reject as too long. On error nothing is written.
    pub fn encode(&self, message: &Message, dst: &mut BytesMut) -> Result<(), WireEncodeError> {
        check_encodable(message)?;
        let length = 1 + message.body_len() as u64;
        if length > u64::from(self.peer_max_message_len) {
            return Err(WireEncodeError::MessageTooLong {
                length,
                max: self.peer_max_message_len,
            });
        }
        dst.reserve(LENGTH_FIELD_LEN + length as usize);
        dst.put_u32(length as u32);
        dst.put_u8(message.message_type());
        match message {
            Message::Hello(h) => {
                dst.put_slice(&MAGIC);
                dst.put_u8(h.version);
                dst.put_u8(h.flags);
                // Checked representable by `check_encodable`.
                dst.put_u32(h.ping_interval.as_millis() as u32);
                dst.put_u32(h.ping_timeout.as_millis() as u32);
                dst.put_u32(h.max_message_len);
                dst.put_slice(&h.session_id);
                for e in &h.extensions {
                    dst.put_u16(e.ty);
                    dst.put_u16(e.data.len() as u16);
                    dst.put_slice(&e.data);
                }
            }
            Message::Data(b) | Message::Ping(b) | Message::Pong(b) => dst.put_slice(b),
            Message::Close { code, reason } => {
                dst.put_u16(code.as_u16());
                dst.put_slice(reason.as_bytes());
            }
            Message::Ack(seq) => dst.put_u64(*seq),
            Message::Resume {
                status,
                delivered,
                secret,
            } => {
                dst.put_u8(status.as_u8());
                dst.put_u64(*delivered);
                if let Some(secret) = secret {
                    dst.put_slice(secret.as_bytes());
                }
            }
            Message::Auth(mac) => dst.put_slice(mac),
            Message::SessionData { seq, payload } => {
                dst.put_u64(*seq);
                dst.put_slice(payload);
            }
            Message::Extension { body, .. } => dst.put_slice(body),
        }
        Ok(())
    }
}

/// Whole milliseconds of `d` as a `u32`, if it is exactly that.
fn duration_ms(d: Duration) -> Option<u32> {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return None;
    }
    u32::try_from(d.as_millis()).ok()
}

/// The specification's rules on what may be sent (the peer's length limit aside).
fn check_encodable(message: &Message) -> Result<(), WireEncodeError> {
    match message {
        Message::Hello(h) => {
            let interval =
                duration_ms(h.ping_interval).ok_or(WireEncodeError::DurationNotRepresentable {
                    field: "ping_interval",
                    duration: h.ping_interval,
                })?;
            let timeout =
                duration_ms(h.ping_timeout).ok_or(WireEncodeError::DurationNotRepresentable {
                    field: "ping_timeout",
                    duration: h.ping_timeout,
                })?;
            if interval != 0 && timeout == 0 {
                return Err(WireEncodeError::ZeroPingTimeout {
                    ping_interval: h.ping_interval,
                });
            }
            if h.max_message_len < MIN_MAX_MESSAGE_LEN {
                return Err(WireEncodeError::MaxMessageLenTooSmall {
                    declared: h.max_message_len,
                    min: MIN_MAX_MESSAGE_LEN,
                });
            }
            if let Some(e) = h.extensions.iter().find(|e| e.data.len() > 0xFFFF) {
                return Err(WireEncodeError::ExtensionTooLong {
                    ty: e.ty,
                    len: e.data.len(),
                });
            }
        }
        Message::Ping(b) | Message::Pong(b) if b.len() > MAX_PING_CONTEXT => {
            return Err(WireEncodeError::PingContextTooLong {
                what: if matches!(message, Message::Ping(_)) {
                    "PING"
                } else {
                    "PONG"
                },
                len: b.len(),
                max: MAX_PING_CONTEXT,
            });
        }
        Message::Close { code, reason } => {
            if !code.is_canonical() {
                return Err(WireEncodeError::NonCanonicalCloseCode {
                    code: *code,
                    read_back: CloseCode::from_u16(code.as_u16()),
                });
            }
            if reason.len() > MAX_CLOSE_REASON {
                return Err(WireEncodeError::CloseReasonTooLong {
                    len: reason.len(),
                    max: MAX_CLOSE_REASON,
                });
            }
        }
        Message::Extension { ty, .. } if *ty < Message::FIRST_EXTENSION => {
            return Err(WireEncodeError::NotExtensionType { ty: *ty });
        }
        Message::Resume { status, secret, .. }
            if secret.is_some() == (*status == ResumeStatus::Resumed) =>
        {
            return Err(WireEncodeError::ResumeSecret { status: *status });
        }
        _ => {}
    }
    Ok(())
}

/// Parses the body of a message of type `ty`.
fn parse_body(ty: u8, body: Bytes) -> Result<Message, Violation> {
    match ty {
        Message::HELLO => parse_hello(body).map(Message::Hello),
        Message::DATA => Ok(Message::Data(body)),
        Message::PING | Message::PONG => {
            let ping = ty == Message::PING;
            if body.len() > MAX_PING_CONTEXT {
                return Err(Violation::PingContextTooLong {
                    what: if ping { "PING" } else { "PONG" },
                    len: body.len(),
                    max: MAX_PING_CONTEXT,
                });
            }
            Ok(if ping {
                Message::Ping(body)
            } else {
                Message::Pong(body)
            })
        }
        Message::CLOSE => {
            if body.len() < 2 {
                return Err(Violation::CloseTooShort { got: body.len() });
            }
            let code = CloseCode::from_u16(u16::from_be_bytes([body[0], body[1]]));
            let reason = &body[2..];
            if reason.len() > MAX_CLOSE_REASON {
                return Err(Violation::CloseReasonTooLong {
                    len: reason.len(),
                    max: MAX_CLOSE_REASON,
                });
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|e| Violation::CloseReasonNotUtf8 {
                    valid_up_to: e.valid_up_to(),
                })?
                .to_owned();
            Ok(Message::Close { code, reason })
        }
        Message::ACK => {
            let seq = fixed_body::<8>("ACK", &body)?;
            Ok(Message::Ack(u64::from_be_bytes(seq)))
        }
        Message::RESUME => {
            let status = match body.first() {
                Some(&b) => {
                    ResumeStatus::from_u8(b).ok_or(Violation::BadResumeStatus { status: b })?
                }
                None => None.ok_or(Violation::BodyLength {
                    what: "RESUME",
                    expected: "9 (resumed) or 25 (new, unknown)",
                    got: 0,
                })?,
            };
            // A new session comes with its secret; a resumed one keeps the one it has.
            let expected = if status == ResumeStatus::Resumed {
                9
            } else {
                9 + SECRET_LEN
            };
            if body.len() != expected {
                return Err(Violation::BodyLength {
                    what: "RESUME",
                    expected: if expected == 9 {
                        "9 (status resumed)"
                    } else {
                        "25 (status new or unknown: with the secret)"
                    },
                    got: body.len(),
                });
            }
            let delivered = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
            let secret = body
                .get(9..)
                .filter(|s| !s.is_empty())
                .map(|s| SessionSecret::from_bytes(s.try_into().expect("16 bytes")));
            Ok(Message::Resume {
                status,
                delivered,
                secret,
            })
        }
        Message::AUTH => Ok(Message::Auth(fixed_body::<PROOF_LEN>("AUTH", &body)?)),
        Message::SDATA => {
            if body.len() < 8 {
                return Err(Violation::BodyLength {
                    what: "SDATA",
                    expected: "at least 8",
                    got: body.len(),
                });
            }
            let mut body = body;
            let seq = body.get_u64();
            Ok(Message::SessionData { seq, payload: body })
        }
        0x80..=0xFF => Ok(Message::Extension { ty, body }),
        _ => Err(Violation::ReservedType { ty }),
    }
}

/// The body of a fixed-size message, or the violation naming it.
fn fixed_body<const N: usize>(what: &'static str, body: &[u8]) -> Result<[u8; N], Violation> {
    body.try_into().map_err(|_| Violation::BodyLength {
        what,
        expected: match N {
            8 => "8",
            9 => "9",
            32 => "32",
            _ => "fixed",
        },
        got: body.len(),
    })
}

/// Parses a HELLO body.
fn parse_hello(mut body: Bytes) -> Result<Hello, Violation> {
    if body.len() >= MAGIC.len() && body[..4] != MAGIC {
        return Err(Violation::BadMagic {
            found: [body[0], body[1], body[2], body[3]],
        });
    }
    if body.len() < HELLO_FIXED_LEN {
        return Err(Violation::HelloTooShort {
            needed: HELLO_FIXED_LEN,
            got: body.len(),
        });
    }
    let total = body.len();
    body.advance(MAGIC.len());
    let version = body.get_u8();
    let flags = body.get_u8();
    let ping_interval_ms = body.get_u32();
    let ping_timeout_ms = body.get_u32();
    let max_message_len = body.get_u32();
    let mut session_id = [0u8; 16];
    body.copy_to_slice(&mut session_id);
    if ping_interval_ms != 0 && ping_timeout_ms == 0 {
        return Err(Violation::ZeroPingTimeout { ping_interval_ms });
    }
    if max_message_len < MIN_MAX_MESSAGE_LEN {
        return Err(Violation::MaxMessageLenTooSmall {
            declared: max_message_len,
            min: MIN_MAX_MESSAGE_LEN,
        });
    }
    let mut extensions = Vec::new();
    while !body.is_empty() {
        let offset = total - body.len();
        let truncated = |needed| Violation::TruncatedExtension {
            offset,
            needed,
            available: total - offset,
        };
        if body.len() < 4 {
            return Err(truncated(4));
        }
        let ty = u16::from_be_bytes([body[0], body[1]]);
        let len = usize::from(u16::from_be_bytes([body[2], body[3]]));
        if body.len() < 4 + len {
            return Err(truncated(4 + len));
        }
        body.advance(4);
        extensions.push(HelloExtension {
            ty,
            data: body.split_to(len),
        });
    }
    Ok(Hello {
        version,
        flags,
        ping_interval: Duration::from_millis(u64::from(ping_interval_ms)),
        ping_timeout: Duration::from_millis(u64::from(ping_timeout_ms)),
        max_message_len,
        session_id,
        extensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from hex digits, ignoring spaces.
    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert_eq!(digits.len() % 2, 0, "odd hex {s:?}");
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn codec() -> WireCodec {
        WireCodec::new(1 << 20).unwrap().without_handshake_check()
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    fn proto(violation: Violation) -> WireError {
        WireError::Protocol {
            violation,
            offset: 0,
        }
    }

    #[test]
    fn before_hello_the_first_five_bytes_decide() {
        // An 8 MiB first message is refused on its length field alone, although this side
        // accepts 8 MiB messages once the handshake is done: nothing of it is buffered.
        let mut codec = WireCodec::new(8 << 20).unwrap();
        let mut buf = BytesMut::from(&hex("00800000")[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            proto(Violation::MessageTooLong {
                length: 8 << 20,
                max: MIN_MAX_MESSAGE_LEN
            })
        );
        assert_eq!(err.close_code(), CloseCode::MessageTooBig);
        // One byte over the limit, with a HELLO type: refused too.
        let mut buf = BytesMut::from(&hex("00001001 01")[..]);
        assert_eq!(
            WireCodec::new(8 << 20)
                .unwrap()
                .decode(&mut buf)
                .unwrap_err(),
            proto(Violation::MessageTooLong {
                length: 4097,
                max: MIN_MAX_MESSAGE_LEN
            })
        );
        // Another type than HELLO is refused from the type byte, before its body arrives.
        let mut buf = BytesMut::from(&hex("00000fff 02")[..]);
        let err = WireCodec::new(8 << 20)
            .unwrap()
            .decode(&mut buf)
            .unwrap_err();
        assert_eq!(err, proto(Violation::HelloExpected { ty: 0x02 }));
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
        // A HELLO of exactly 4096 bytes waits for the rest of it; so does an incomplete header.
        let mut buf = BytesMut::from(&hex("00001000 01 464c4e4b")[..]);
        assert_eq!(WireCodec::new(8 << 20).unwrap().decode(&mut buf), Ok(None));
        let mut buf = BytesMut::from(&hex("0000")[..]);
        assert_eq!(WireCodec::new(8 << 20).unwrap().decode(&mut buf), Ok(None));
        // The stream ending there is still reported as before.
        let mut buf = BytesMut::from(&hex("00800000")[..]);
        assert!(WireCodec::new(8 << 20)
            .unwrap()
            .decode_eof(&mut buf)
            .is_err());
    }

    #[test]
    fn after_hello_the_announced_limit_applies() {
        let mut enc = WireCodec::new(8 << 20).unwrap();
        enc.set_peer_max_message_len(8 << 20);
        let mut wire = BytesMut::new();
        enc.encode(&Message::Hello(Hello::default()), &mut wire)
            .unwrap();
        let big = Bytes::from(vec![7u8; 64 * 1024]);
        enc.encode(&Message::Data(big.clone()), &mut wire).unwrap();
        let mut dec = WireCodec::new(8 << 20).unwrap();
        assert!(matches!(dec.decode(&mut wire), Ok(Some(Message::Hello(_)))));
        assert_eq!(dec.decode(&mut wire), Ok(Some(Message::Data(big))));
    }

    const VECTORS: &str = include_str!("../tests/data/protocol-v1-vectors.tsv");
    /// The session secret (`b0..bf`) and offer nonce (`a0..af`) of the session vectors.
    const VECTOR_SECRET: [u8; 16] = [
        0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe,
        0xbf,
    ];
    const VECTOR_NONCE: [u8; 16] = [
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae,
        0xaf,
    ];
    const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

    /// (name, hex) of every TSV row.
    fn tsv_rows() -> Vec<(&'static str, &'static str)> {
        VECTORS
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .skip(1) // the column header
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 3, "row {l:?} must have 3 tab-separated columns");
                (f[0], f[1])
            })
            .collect()
    }

    /// What each vector must decode to (valid messages also encode back to their hex).
    fn expected(name: &str) -> Result<Message, WireError> {
        let hello_ext = Hello {
            version: 1,
            flags: 0,
            ping_interval: Duration::ZERO,
            ping_timeout: Duration::ZERO,
            max_message_len: 65536,
            session_id: core::array::from_fn(|i| i as u8),
            extensions: vec![
                HelloExtension {
                    ty: 0x8001,
                    data: b(b"abc"),
                },
                HelloExtension {
                    ty: 0x0002,
                    data: Bytes::new(),
                },
            ],
        };
        Ok(match name {
            "hello-minimal" => Message::Hello(Hello::default()),
            "hello-extensions" => Message::Hello(hello_ext),
            "hello-future-version" => Message::Hello(Hello {
                version: 2,
                flags: 0x80,
                ping_interval: Duration::from_millis(30_000),
                ping_timeout: Duration::from_millis(5_000),
                max_message_len: 4096,
                ..Hello::default()
            }),
            "data-empty" => Message::Data(Bytes::new()),
            "data-hello" => Message::Data(b(b"hello")),
            "ping-seq1" => Message::Ping(b(&[0, 0, 0, 0, 0, 0, 0, 1])),
            "ping-empty" => Message::Ping(Bytes::new()),
            "pong-seq1" => Message::Pong(b(&[0, 0, 0, 0, 0, 0, 0, 1])),
            "close-normal" => Message::Close {
                code: CloseCode::Normal,
                reason: String::new(),
            },
            "close-going-away" => Message::Close {
                code: CloseCode::GoingAway,
                reason: "shutting down".into(),
            },
            "close-application" => Message::Close {
                code: CloseCode::Application(0x1001),
                reason: "bye".into(),
            },
            "close-unknown-code" => Message::Close {
                code: CloseCode::Unknown(11),
                reason: String::new(),
            },
            "extension" => Message::Extension {
                ty: 0x80,
                body: b(&[1, 2]),
            },
            "extension-ff-empty" => Message::Extension {
                ty: 0xff,
                body: Bytes::new(),
            },
            "hello-session-request" => Message::Hello(Hello {
                session_id: core::array::from_fn(|i| i as u8),
                extensions: vec![SessionHello::Request { delivered: 7 }.to_extension()],
                ..Hello::default()
            }),
            "hello-session-resume" => Message::Hello(Hello {
                session_id: core::array::from_fn(|i| i as u8),
                extensions: vec![SessionHello::Resume { delivered: 7 }.to_extension()],
                ..Hello::default()
            }),
            "hello-session-offer" => Message::Hello(Hello {
                extensions: vec![SessionHello::Offer {
                    nonce: VECTOR_NONCE,
                }
                .to_extension()],
                ..Hello::default()
            }),
            "resume-new" => Message::Resume {
                status: ResumeStatus::New,
                delivered: 0,
                secret: Some(SessionSecret::from_bytes(VECTOR_SECRET)),
            },
            "resume-resumed" => Message::Resume {
                status: ResumeStatus::Resumed,
                delivered: 16,
                secret: None,
            },
            "resume-unknown" => Message::Resume {
                status: ResumeStatus::Unknown,
                delivered: 0,
                secret: Some(SessionSecret::from_bytes(VECTOR_SECRET)),
            },
            "auth-resume" => Message::Auth(crate::auth::resume_proof(
                &SessionSecret::from_bytes(VECTOR_SECRET),
                &core::array::from_fn(|i| i as u8),
                &VECTOR_NONCE,
                7,
            )),
            "close-session-refused" => Message::Close {
                code: CloseCode::SessionRefused,
                reason: String::new(),
            },
            "ack-42" => Message::Ack(42),
            "sdata-hello" => Message::SessionData {
                seq: 1,
                payload: b(b"hello"),
            },
            "sdata-empty" => Message::SessionData {
                seq: 2,
                payload: Bytes::new(),
            },
            "error-ack-short" => {
                return Err(proto(Violation::BodyLength {
                    what: "ACK",
                    expected: "8",
                    got: 0,
                }))
            }
            "error-resume-bad-status" => {
                return Err(proto(Violation::BadResumeStatus { status: 3 }))
            }
            "error-resume-new-without-secret" => {
                return Err(proto(Violation::BodyLength {
                    what: "RESUME",
                    expected: "25 (status new or unknown: with the secret)",
                    got: 9,
                }))
            }
            "error-auth-short" => {
                return Err(proto(Violation::BodyLength {
                    what: "AUTH",
                    expected: "32",
                    got: 16,
                }))
            }
            "error-sdata-short" => {
                return Err(proto(Violation::BodyLength {
                    what: "SDATA",
                    expected: "at least 8",
                    got: 4,
                }))
            }
            "error-reserved-type" => return Err(proto(Violation::ReservedType { ty: 0x7f })),
            "error-zero-length" => return Err(proto(Violation::ZeroLength)),
            "error-too-long" => {
                return Err(proto(Violation::MessageTooLong {
                    length: 0x0010_0001,
                    max: 1 << 20,
                }))
            }
            "error-bad-magic" => return Err(proto(Violation::BadMagic { found: *b"HTTP" })),
            "error-hello-too-short" => {
                return Err(proto(Violation::HelloTooShort { needed: 34, got: 6 }))
            }
            "error-truncated-extension" => {
                return Err(proto(Violation::TruncatedExtension {
                    offset: 34,
                    needed: 7,
                    available: 6,
                }))
            }
            "error-close-not-utf8" => {
                return Err(proto(Violation::CloseReasonNotUtf8 { valid_up_to: 1 }))
            }
            "error-close-too-short" => return Err(proto(Violation::CloseTooShort { got: 1 })),
            other => panic!("no expectation for vector {other:?}"),
        })
    }

    #[test]
    fn vectors_decode_and_encode_as_documented() {
        let rows = tsv_rows();
        assert_eq!(rows.len(), 38);
        for (name, hex_text) in rows {
            let wire = hex(hex_text);
            let want = expected(name);
            let mut buf = BytesMut::from(&wire[..]);
            let got = codec().decode_eof(&mut buf);
            assert_eq!(got.clone().map(Option::unwrap), want, "{name}");
            if let Ok(message) = want {
                assert!(buf.is_empty(), "{name}: bytes left");
                let mut out = BytesMut::new();
                let mut enc = codec();
                enc.set_peer_max_message_len(u32::MAX);
                enc.encode(&message, &mut out).unwrap();
                assert_eq!(&out[..], &wire[..], "{name}: encoding");
            }
        }
        // Every message type has a vector.
        let names: Vec<&str> = tsv_rows().iter().map(|r| r.0).collect();
        for prefix in [
            "hello",
            "data",
            "ping",
            "pong",
            "close",
            "extension",
            "error-ack",
            "error-resume",
            "error-reserved",
            "auth",
            "error-auth",
        ] {
            assert!(names.iter().any(|n| n.starts_with(prefix)), "{prefix}");
        }
    }

    /// The vector table in PROTOCOL.md and the TSV hold the same (name, hex) rows.
    #[test]
    fn protocol_md_vectors_match_tsv() {
        let start = PROTOCOL_MD
            .find("<!-- vectors:begin -->")
            .expect("begin marker");
        let end = PROTOCOL_MD
            .find("<!-- vectors:end -->")
            .expect("end marker");
        let mut doc_rows = Vec::new();
        for line in PROTOCOL_MD[start..end].lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | `name` | `hex` | description |
            if cells.len() < 4 || !cells[1].starts_with('`') {
                continue;
            }
            let name = cells[1].trim_matches('`');
            let hex_text = cells[2].trim_matches('`');
            doc_rows.push((name, hex_text));
        }
        let tsv = tsv_rows();
        assert_eq!(doc_rows, tsv, "PROTOCOL.md vector table and TSV differ");
    }

    #[test]
    fn ping_and_pong_context_limits() {
        for (ty, what) in [(Message::PING, "PING"), (Message::PONG, "PONG")] {
            let mut ok = vec![0, 0, 0, 65, ty];
            ok.extend([7u8; 64]);
            assert!(codec()
                .decode(&mut BytesMut::from(&ok[..]))
                .unwrap()
                .is_some());
            let mut long = vec![0, 0, 0, 66, ty];
            long.extend([7u8; 65]);
            assert_eq!(
                codec().decode(&mut BytesMut::from(&long[..])),
                Err(proto(Violation::PingContextTooLong {
                    what,
                    len: 65,
                    max: 64
                }))
            );
        }
        let mut out = BytesMut::new();
        let ctx = Bytes::from(vec![0u8; 65]);
        assert_eq!(
            codec().encode(&Message::Ping(ctx.clone()), &mut out),
            Err(WireEncodeError::PingContextTooLong {
                what: "PING",
                len: 65,
                max: 64
            })
        );
        assert_eq!(
            codec().encode(&Message::Pong(ctx), &mut out),
            Err(WireEncodeError::PingContextTooLong {
                what: "PONG",
                len: 65,
                max: 64
            })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn close_reason_limits() {
        let mut ok = vec![0, 0, 0x04, 0x03, 0x05, 0, 0];
        ok.extend([b'a'; 1024]);
        assert!(codec()
            .decode(&mut BytesMut::from(&ok[..]))
            .unwrap()
            .is_some());
        let mut long = vec![0, 0, 0x04, 0x04, 0x05, 0, 0];
        long.extend([b'a'; 1025]);
        assert_eq!(
            codec().decode(&mut BytesMut::from(&long[..])),
            Err(proto(Violation::CloseReasonTooLong {
                len: 1025,
                max: 1024
            }))
        );
        assert_eq!(
            codec().decode(&mut BytesMut::from(&[0, 0, 0, 1, 5][..])),
            Err(proto(Violation::CloseTooShort { got: 0 }))
        );
        let mut out = BytesMut::new();
        let too_long = Message::Close {
            code: CloseCode::Normal,
            reason: "é".repeat(513),
        };
        assert_eq!(
            codec().encode(&too_long, &mut out),
            Err(WireEncodeError::CloseReasonTooLong {
                len: 1026,
                max: 1024
            })
        );
        for (code, read_back) in [
            (CloseCode::Application(5), CloseCode::MessageTooBig),
            (CloseCode::Unknown(0x2000), CloseCode::Application(0x2000)),
            (CloseCode::Unknown(1), CloseCode::GoingAway),
        ] {
            let m = Message::Close {
                code,
                reason: String::new(),
            };
            assert_eq!(
                codec().encode(&m, &mut out),
                Err(WireEncodeError::NonCanonicalCloseCode { code, read_back })
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn close_codes_round_trip_and_classify() {
        for v in 0..=u16::MAX {
            let c = CloseCode::from_u16(v);
            assert_eq!(c.as_u16(), v);
            assert!(c.is_canonical());
            assert_eq!(c.is_abnormal(), !(v == 0 || v == 1 || v >= 0x1000), "{v}");
        }
    }

    #[test]
    fn hello_errors() {
        let valid = hex("00000023 01 464c4e4b 01 00 00003a98 00002710 00800000 00000000000000000000000000000000");
        let with = |at: usize, bytes: &[u8]| {
            let mut v = valid.clone();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            v
        };
        let dec = |v: &[u8]| codec().decode(&mut BytesMut::from(v));
        // interval 15000, timeout 0
        assert_eq!(
            dec(&with(15, &[0, 0, 0, 0])),
            Err(proto(Violation::ZeroPingTimeout {
                ping_interval_ms: 15000
            }))
        );
        // interval 0, timeout 0: fine (never pings)
        assert!(dec(&with(11, &[0, 0, 0, 0, 0, 0, 0, 0])).is_ok());
        assert_eq!(
            dec(&with(19, &[0, 0, 0x0f, 0xff])),
            Err(proto(Violation::MaxMessageLenTooSmall {
                declared: 4095,
                min: 4096
            }))
        );
        assert_eq!(
            dec(&hex("00000003 01 464c")),
            Err(proto(Violation::HelloTooShort { needed: 34, got: 2 }))
        );
        assert_eq!(
            dec(&hex("00000001 01")),
            Err(proto(Violation::HelloTooShort { needed: 34, got: 0 }))
        );
        // Extension header cut after 1..=3 bytes, and data cut short.
        for extra in 1..=3 {
            let mut v = valid.clone();
            v[3] += extra;
            v.extend(vec![0xaau8; usize::from(extra)]);
            assert_eq!(
                dec(&v),
                Err(proto(Violation::TruncatedExtension {
                    offset: 34,
                    needed: 4,
                    available: usize::from(extra)
                }))
            );
        }
        // Unknown flag bits and high versions are accepted.
        let odd = dec(&with(9, &[0xff, 0xff])).unwrap().unwrap();
        assert!(matches!(
            odd,
            Message::Hello(Hello {
                version: 0xff,
                flags: 0xff,
                ..
            })
        ));

        // The encoder refuses what the decoder rejects.
        let mut out = BytesMut::new();
        let enc = codec();
        let bad = [
            (
                Hello {
                    ping_timeout: Duration::ZERO,
                    ..Hello::default()
                },
                WireEncodeError::ZeroPingTimeout {
                    ping_interval: Duration::from_secs(15),
                },
            ),
            (
                Hello {
                    ping_interval: Duration::from_micros(1500),
                    ..Hello::default()
                },
                WireEncodeError::DurationNotRepresentable {
                    field: "ping_interval",
                    duration: Duration::from_micros(1500),
                },
            ),
            (
                Hello {
                    ping_timeout: Duration::from_millis(u64::from(u32::MAX) + 1),
                    ..Hello::default()
                },
                WireEncodeError::DurationNotRepresentable {
                    field: "ping_timeout",
                    duration: Duration::from_millis(u64::from(u32::MAX) + 1),
                },
            ),
            (
                Hello {
                    max_message_len: 100,
                    ..Hello::default()
                },
                WireEncodeError::MaxMessageLenTooSmall {
                    declared: 100,
                    min: 4096,
                },
            ),
            (
                Hello {
                    extensions: vec![HelloExtension {
                        ty: 9,
                        data: Bytes::from(vec![0; 65536]),
                    }],
                    ..Hello::default()
                },
                WireEncodeError::ExtensionTooLong { ty: 9, len: 65536 },
            ),
        ];
        for (hello, err) in bad {
            assert_eq!(enc.encode(&Message::Hello(hello), &mut out), Err(err));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn handshake_order_is_enforced() {
        let hello = hex("00000023 01 464c4e4b 01 00 00003a98 00002710 00800000 00000000000000000000000000000000");
        for first in [
            "00000001 02",
            "00000003 0500 00",
            "00000001 80",
            "00000001 06",
        ] {
            let mut c = WireCodec::new(1 << 20).unwrap();
            let err = c.decode(&mut BytesMut::from(&hex(first)[..])).unwrap_err();
            assert_eq!(err, proto(Violation::HelloExpected { ty: hex(first)[4] }));
            assert_eq!(err.close_code(), CloseCode::ProtocolError);
        }
        let mut c = WireCodec::new(1 << 20).unwrap();
        let mut buf = BytesMut::from(&hello[..]);
        buf.extend_from_slice(&hello);
        assert!(matches!(c.decode(&mut buf), Ok(Some(Message::Hello(_)))));
        assert_eq!(c.peer_max_message_len(), 8 << 20);
        assert_eq!(
            c.decode(&mut buf),
            Err(WireError::Protocol {
                violation: Violation::UnexpectedHello,
                offset: 39
            })
        );
    }

    #[test]
    fn limits_on_both_sides() {
        // Receiver: the limit is checked on the 4 length bytes alone, at the exact boundary.
        let mut c = WireCodec::new(4096).unwrap().without_handshake_check();
        let mut at_limit = vec![0, 0, 0x10, 0x00, 0x02];
        at_limit.extend([0u8; 4095]);
        assert_eq!(
            c.decode(&mut BytesMut::from(&at_limit[..])).unwrap(),
            Some(Message::Data(Bytes::from(vec![0u8; 4095])))
        );
        let mut c = WireCodec::new(4096).unwrap().without_handshake_check();
        let err = c
            .decode(&mut BytesMut::from(&[0, 0, 0x10, 0x01][..]))
            .unwrap_err();
        assert_eq!(
            err,
            proto(Violation::MessageTooLong {
                length: 4097,
                max: 4096
            })
        );
        assert_eq!(err.close_code(), CloseCode::MessageTooBig);
        // (After the handshake: before it, such a length is refused on sight, see
        // `before_hello_the_first_five_bytes_decide`.)
        let mut c = WireCodec::new(u32::MAX).unwrap().without_handshake_check();
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x02][..]);
        assert_eq!(c.decode(&mut huge).unwrap(), None);
        assert!(
            huge.capacity() < 1 << 20,
            "no allocation by declared length"
        );

        // Sender: the peer's limit, MIN_MAX_MESSAGE_LEN until known.
        let mut c = WireCodec::new(1 << 20).unwrap();
        let mut out = BytesMut::new();
        let data = |n: usize| Message::Data(Bytes::from(vec![1u8; n]));
        c.encode(&data(4095), &mut out).unwrap();
        assert_eq!(
            c.encode(&data(4096), &mut out),
            Err(WireEncodeError::MessageTooLong {
                length: 4097,
                max: 4096
            })
        );
        c.set_peer_max_message_len(1 << 16);
        c.encode(&data(4096), &mut out).unwrap();
        assert_eq!(out.len(), 4 + 4096 + 4 + 4097);
        assert_eq!(
            c.encode(
                &Message::Extension {
                    ty: 0x7f,
                    body: Bytes::new()
                },
                &mut out
            ),
            Err(WireEncodeError::NotExtensionType { ty: 0x7f })
        );
        assert!(matches!(
            WireCodec::new(4095),
            Err(ConfigError::MaxTooSmall {
                max: 4095,
                minimum: 4096
            })
        ));
    }

    #[test]
    fn eof_inside_a_message_is_a_framing_error() {
        let mut c = codec();
        let mut buf = BytesMut::from(&hex("00000006 02 6865")[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert!(matches!(&err, WireError::Framing(e) if matches!(e.kind(),
            DecodeErrorKind::Truncated { buffered: 7, expected: Some(10) })));
        assert_eq!(err.close_code(), CloseCode::ProtocolError);
        assert_eq!(codec().decode_eof(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn bodies_share_the_read_buffer() {
        let mut buf = BytesMut::from(&hex("00000006 02 68656c6c6f")[..]);
        let base = buf.as_ptr() as usize;
        match codec().decode(&mut buf).unwrap().unwrap() {
            Message::Data(body) => assert_eq!(body.as_ptr() as usize, base + 5),
            other => panic!("{other:?}"),
        }
    }

    /// The valid vectors as one stream starting with HELLO (one HELLO only).
    fn stream_of_all_types() -> (Vec<u8>, Vec<Message>) {
        let mut wire = Vec::new();
        let mut messages = Vec::new();
        for (name, hex_text) in tsv_rows() {
            if name.starts_with("error-") || (name.starts_with("hello") && name != "hello-minimal")
            {
                continue;
            }
            wire.extend(hex(hex_text));
            messages.push(expected(name).unwrap());
        }
        assert!(matches!(messages[0], Message::Hello(_)));
        (wire, messages)
    }

    #[test]
    fn pending_frame_length_once_the_length_field_is_in() {
        let codec = WireCodec::new(1 << 20).unwrap();
        let mut buf = BytesMut::from(&[0u8, 1, 0][..]);
        assert_eq!(codec.pending_frame_length(&buf), None);
        // length 0x010000 (type byte + 65,535 body bytes): 4 + 65,536 on the wire.
        buf.extend_from_slice(&[0, 0x02, 0xAA]);
        assert_eq!(codec.pending_frame_length(&buf), Some(65_540));
        // Over the limit: not a frame to make room for.
        let over = BytesMut::from(&[0x7F, 0, 0, 0, 0x02][..]);
        assert_eq!(codec.pending_frame_length(&over), None);
    }

    fn decode_pieces(pieces: &[&[u8]]) -> Vec<Message> {
        let mut c = WireCodec::new(1 << 20).unwrap();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            while let Some(m) = c.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
        out
    }

    #[test]
    fn stream_decodes_at_every_split_point() {
        let (wire, messages) = stream_of_all_types();
        for i in 0..=wire.len() {
            assert_eq!(
                decode_pieces(&[&wire[..i], &wire[i..]]),
                messages,
                "split {i}"
            );
        }
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_pieces(&bytewise), messages);
    }

    #[test]
    fn truncated_stream_never_panics_and_errors_at_eof() {
        let (wire, _) = stream_of_all_types();
        for i in 0..wire.len() {
            let mut c = WireCodec::new(1 << 20).unwrap();
            let mut buf = BytesMut::from(&wire[..i]);
            let mut result = Ok(None);
            for _ in 0..wire.len() + 1 {
                result = c.decode_eof(&mut buf);
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            // Ends exactly on a message boundary or with a truncation error.
            assert!(
                matches!(result, Ok(None)) || matches!(result, Err(WireError::Framing(_))),
                "{i}: {result:?}"
            );
        }
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
    }

    fn arb_hello() -> impl Strategy<Value = Hello> {
        (
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            1u32..,
            MIN_MAX_MESSAGE_LEN..,
            any::<[u8; 16]>(),
            proptest::collection::vec((any::<u16>(), arb_bytes(20)), 0..4),
            any::<bool>(),
        )
            .prop_map(
                |(version, flags, interval, timeout, max, session_id, exts, never)| Hello {
                    version,
                    flags,
                    ping_interval: Duration::from_millis(if never { 0 } else { interval.into() }),
                    ping_timeout: Duration::from_millis(timeout.into()),
                    max_message_len: max,
                    session_id,
                    extensions: exts
                        .into_iter()
                        .map(|(ty, data)| HelloExtension { ty, data })
                        .collect(),
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            arb_bytes(300).prop_map(Message::Data),
            arb_bytes(64).prop_map(Message::Ping),
            arb_bytes(64).prop_map(Message::Pong),
            (any::<u16>(), "\\PC{0,40}").prop_map(|(c, reason)| Message::Close {
                code: CloseCode::from_u16(c),
                reason,
            }),
            (0x80u8.., arb_bytes(50)).prop_map(|(ty, body)| Message::Extension { ty, body }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_any_messages_any_chunking(
            hello in arb_hello(),
            rest in proptest::collection::vec(arb_message(), 0..12),
            sizes in proptest::collection::vec(1usize..60, 1..8),
        ) {
            let mut messages = vec![Message::Hello(hello)];
            messages.extend(rest);
            let mut enc = WireCodec::new(1 << 20).unwrap();
            enc.set_peer_max_message_len(1 << 20);
            let mut wire = BytesMut::new();
            for m in &messages {
                enc.encode(m, &mut wire).unwrap();
            }
            let mut pieces = Vec::new();
            let mut rest_bytes = &wire[..];
            for &n in sizes.iter().cycle() {
                if rest_bytes.is_empty() {
                    break;
                }
                let n = n.min(rest_bytes.len());
                pieces.push(&rest_bytes[..n]);
                rest_bytes = &rest_bytes[n..];
            }
            prop_assert_eq!(decode_pieces(&pieces), messages);
        }

        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            for checked in [true, false] {
                let mut c = WireCodec::new(4096).unwrap();
                if !checked {
                    c = c.without_handshake_check();
                }
                let mut buf = BytesMut::from(&input[..]);
                for _ in 0..=input.len() {
                    match c.decode_eof(&mut buf) {
                        Ok(Some(_)) => continue,
                        _ => break,
                    }
                }
            }
        }

        #[test]
        fn mutated_hello_never_panics(hello in arb_hello(), at in any::<usize>(), byte in any::<u8>()) {
            let mut wire = BytesMut::new();
            let mut enc = codec();
            enc.set_peer_max_message_len(u32::MAX);
            enc.encode(&Message::Hello(hello), &mut wire).unwrap();
            let i = 4 + at % (wire.len() - 4);
            wire[i] = byte;
            let _ = WireCodec::new(1 << 20).unwrap().decode(&mut wire);
        }
    }
}
