//! Rust errors as the Python exceptions of `framelink.errors`, carrying the same numbers.
//!
//! The exception classes are plain Python (so that they pickle, print and subclass as Python
//! users expect); this module instantiates them.

use bytes::Bytes;
use framelink::connection::{ConnectionError, SendError};
use framelink::proto::wire::CloseCode;
use framelink::{CloseInfo, DecodeError, DecodeErrorKind, EncodeError, SessionSendError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::BoundObject;

/// An instance of `framelink.errors.<name>` built from `args`, as a `PyErr`.
fn raise<'py, A>(py: Python<'py>, name: &str, args: A) -> PyErr
where
    A: IntoPyObject<'py, Target = PyTuple>,
    A::Error: Into<PyErr>,
{
    let build = || -> PyResult<PyErr> {
        let class = py.import("framelink.errors")?.getattr(name)?;
        let args: Bound<'py, PyTuple> = args.into_pyobject(py).map_err(Into::into)?.into_bound();
        Ok(PyErr::from_value(class.call1(args)?))
    };
    build().unwrap_or_else(|e| e)
}

/// A framing spec that does not parse, or an invalid codec configuration.
pub fn spec_error(py: Python<'_>, e: &framelink::proto::codec::ConfigError) -> PyErr {
    raise(py, "SpecError", (e.to_string(),))
}

/// An invalid option.
pub fn config_error(py: Python<'_>, message: impl ToString) -> PyErr {
    raise(py, "ConfigError", (message.to_string(),))
}

/// A payload the framing cannot carry.
pub fn encode_error(py: Python<'_>, e: &EncodeError) -> PyErr {
    raise(py, "EncodeError", (e.to_string(),))
}

/// The exception for a decode error (not raised: recoverable ones are handed over as values).
pub fn decode_exception(py: Python<'_>, e: &DecodeError) -> PyErr {
    let (message, offset, recoverable) = (e.to_string(), e.offset(), e.is_recoverable());
    match e.kind() {
        DecodeErrorKind::FrameTooLong { length, limit } => raise(
            py,
            "FrameTooLarge",
            (message, offset, recoverable, Some(*length), *limit),
        ),
        DecodeErrorKind::DelimiterNotFound { limit } => raise(
            py,
            "FrameTooLarge",
            (message, offset, recoverable, None::<u64>, *limit),
        ),
        DecodeErrorKind::Truncated { buffered, expected } => raise(
            py,
            "TruncatedFrame",
            (message, offset, *buffered, *expected),
        ),
        DecodeErrorKind::ChecksumMismatch {
            expected,
            computed,
            length,
        } => raise(
            py,
            "ChecksumError",
            (message, offset, recoverable, *expected, *computed, *length),
        ),
        DecodeErrorKind::Resynchronized { skipped, cause } => {
            if let DecodeErrorKind::ChecksumMismatch {
                expected,
                computed,
                length,
            } = cause.as_ref()
            {
                let err = raise(
                    py,
                    "ChecksumError",
                    (message, offset, recoverable, *expected, *computed, *length),
                );
                let _ = err.value(py).setattr("skipped", *skipped);
                return err;
            }
            raise(
                py,
                "MalformedFrame",
                (message, offset, recoverable, kind_name(cause), *skipped),
            )
        }
        other => raise(
            py,
            "MalformedFrame",
            (message, offset, recoverable, kind_name(other), 0u64),
        ),
    }
}

/// The `kind` attribute of `MalformedFrame`.
fn kind_name(kind: &DecodeErrorKind) -> &'static str {
    match kind {
        DecodeErrorKind::FrameTooLong { .. } => "frame_too_long",
        DecodeErrorKind::DelimiterNotFound { .. } => "delimiter_not_found",
        DecodeErrorKind::LengthBelowHeader { .. } => "length_below_header",
        DecodeErrorKind::StripBeyondFrame { .. } => "strip_beyond_frame",
        DecodeErrorKind::VarintOverflow => "varint_overflow",
        DecodeErrorKind::VarintNotMinimal { .. } => "varint_not_minimal",
        DecodeErrorKind::InvalidNetstring { .. } => "netstring",
        DecodeErrorKind::BadMagic { .. } => "bad_magic",
        DecodeErrorKind::ChecksumMismatch { .. } => "checksum",
        DecodeErrorKind::Resynchronized { .. } => "resynchronized",
        DecodeErrorKind::Truncated { .. } => "truncated",
        _ => "other",
    }
}

/// `ConnectionClosed.code_name` for a connection that ended as `info` says: the code's name, or
/// `"end_of_stream"` when the stream ended without a CLOSE (no code was received).
pub fn info_code_name(info: &CloseInfo) -> &'static str {
    if info.without_close() {
        "end_of_stream"
    } else {
        code_name(info.code)
    }
}

/// The snake-case name of a close code, as Python's `ConnectionClosed.code_name`.
pub fn code_name(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Normal => "normal",
        CloseCode::GoingAway => "going_away",
        CloseCode::ProtocolError => "protocol_error",
        CloseCode::PeerTimedOut => "peer_timed_out",
        CloseCode::TooManyPings => "too_many_pings",
        CloseCode::MessageTooBig => "message_too_big",
        CloseCode::UnsupportedVersion => "unsupported_version",
        CloseCode::ServerFull => "server_full",
        CloseCode::Idle => "idle",
        CloseCode::SessionRefused => "session_refused",
        CloseCode::SessionTakenOver => "session_taken_over",
        CloseCode::Application(_) => "application",
        _ => "unknown",
    }
}

/// Which Python class reports a connection that ended this way.
pub fn close_class(info: &CloseInfo) -> &'static str {
    match &info.error {
        Some(ConnectionError::PeerDead { .. }) => "PeerDead",
        Some(
            ConnectionError::Wire(_)
            | ConnectionError::Framing(_)
            | ConnectionError::UnsupportedVersion { .. }
            | ConnectionError::TooManyPings { .. }
            | ConnectionError::SessionUnavailable,
        ) => "ProtocolError",
        _ => match info.code {
            CloseCode::PeerTimedOut => "PeerDead",
            CloseCode::ProtocolError | CloseCode::MessageTooBig | CloseCode::TooManyPings => {
                "ProtocolError"
            }
            _ => "ConnectionClosed",
        },
    }
}

/// The exception for a connection that ended as `info` says.
pub fn closed_error(py: Python<'_>, info: &CloseInfo) -> PyErr {
    let err = raise(
        py,
        close_class(info),
        (
            info.to_string(),
            info.code.as_u16(),
            info_code_name(info),
            info.reason.clone(),
            info.by_peer,
        ),
    );
    // Raw mode: the framing's own error (`FrameTooLarge`, `ChecksumError`...) as the cause.
    if let Some(ConnectionError::Framing(e)) = &info.error {
        err.set_cause(py, Some(decode_exception(py, e)));
    }
    err
}

/// A connection or client that is closed, with no more detail.
pub fn closed_plain(py: Python<'_>, message: &str) -> PyErr {
    raise(
        py,
        "ConnectionClosed",
        (message.to_string(), 0u16, "normal", String::new(), false),
    )
}

/// Why a message was not queued.
pub fn send_error(py: Python<'_>, e: &SendError) -> PyErr {
    match e {
        SendError::Closed => closed_plain(py, "the connection is closing or closed"),
        SendError::QueueFull { queued, len, limit } => {
            raise(py, "QueueFull", (e.to_string(), *queued, *len, *limit))
        }
        _ => raise(py, "EncodeError", (e.to_string(),)),
    }
}

/// Why a batch for a session stopped part-way: the error about its first message not queued,
/// with `.sent` (how many were queued) and, for `SessionLost`, every message not queued in
/// `.unacked` (that one and `rest`), so none is dropped silently.
pub fn session_send_many_error(
    py: Python<'_>,
    e: &SessionSendError,
    sent: usize,
    rest: &[Bytes],
) -> PyErr {
    let err = session_send_error(py, e);
    let value = err.value(py);
    let _ = value.setattr("sent", sent);
    if !rest.is_empty() {
        if let Ok(unacked) = value.getattr("unacked") {
            let extra = rest.iter().map(|m| PyBytes::new(py, m));
            if let Ok(list) = unacked.downcast::<PyList>() {
                for m in extra {
                    let _ = list.append(m);
                }
            }
        }
    }
    err
}

/// `QueueFull` with its own message: the send budget's numbers, or zeros when there is no
/// connection to measure.
pub fn queue_full(py: Python<'_>, message: &str, queued: usize, len: usize, limit: usize) -> PyErr {
    raise(py, "QueueFull", (message.to_owned(), queued, len, limit))
}

/// Why `send_to_session` did not queue a message.
pub fn session_send_error(py: Python<'_>, e: &SessionSendError) -> PyErr {
    match e {
        SessionSendError::Send(inner) => send_error(py, inner),
        SessionSendError::Full {
            buffered,
            len,
            limit,
            ..
        } => raise(py, "QueueFull", (e.to_string(), *buffered, *len, *limit)),
        SessionSendError::Unknown { id, payload } => raise(
            py,
            "SessionLost",
            (
                e.to_string(),
                PyBytes::new(py, id),
                vec![PyBytes::new(py, payload)],
            ),
        ),
        SessionSendError::Busy { .. } => closed_plain(py, &e.to_string()),
    }
}
