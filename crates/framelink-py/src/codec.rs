//! The sans-IO codecs for Python: `Decoder` and `Encoder` over any framing spec.
//!
//! One native call per read, never per frame: `feed` (or `buffer_updated` after a `recv_into`
//! into `get_buffer`'s memory) decodes every complete frame in the buffer and returns them as a
//! list. Recoverable errors (`discard` policy, magic resynchronisation) are kept aside for
//! `take_errors` so that the frames around them are returned; a fatal error is raised with the
//! frames decoded before it attached (`err.frames`).

use bytes::{Bytes, BytesMut};
use framelink::{DecodeError, FrameDecoder, FrameEncoder, Framing};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyList};

use crate::errors;
use crate::lent::LentBuffer;

/// Lent by `get_buffer` when the caller gives no size hint.
const DEFAULT_LEND: usize = 64 * 1024;
/// Recoverable errors kept for `take_errors` at most (the count goes on).
const KEPT_ERRORS: usize = 64;

/// Parses a framing spec, raising `SpecError`.
pub fn parse_spec(py: Python<'_>, spec: &str) -> PyResult<Framing> {
    spec.parse::<Framing>()
        .map_err(|e| errors::spec_error(py, &e))
}

/// Runs `f` over the bytes of a bytes-like object (`bytes`, `bytearray`, `memoryview`, ...).
pub fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.downcast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    if let Ok(b) = data.downcast::<PyByteArray>() {
        // Safety: no Python code runs while the slice is borrowed, so the bytearray cannot be
        // resized under it.
        return Ok(f(unsafe { b.as_bytes() }));
    }
    // Anything else with the buffer protocol (memoryview, array, mmap): through bytes().
    let copy = PyBytes::type_object(data.py())
        .call1((data,))
        .map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "a bytes-like object is required, not '{}'",
                data.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
    let copy = copy.downcast::<PyBytes>()?;
    Ok(f(copy.as_bytes()))
}

/// Payloads at least this long are shared with Python instead of copied.
pub const SHARE_FROM: usize = 4096;

/// A bytes-like object as `Bytes`: a large immutable `bytes` is shared (it keeps the Python
/// object alive until written, with no copy); anything else is copied, since a mutable buffer
/// could change under the I/O thread, and copying a small payload costs less than sharing it.
pub fn to_bytes(data: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = data.downcast::<PyBytes>() {
        if b.as_bytes().len() >= SHARE_FROM {
            let shared: PyBackedBytes = b.clone().into();
            return Ok(Bytes::from_owner(shared));
        }
    }
    with_bytes(data, Bytes::copy_from_slice)
}

use pyo3::type_object::PyTypeInfo;

/// Turns a byte stream back into frames: `Decoder("length:4,max=1MiB")`.
#[pyclass(module = "framelink._native")]
pub struct Decoder {
    framing: Framing,
    buf: BytesMut,
    /// `buf`'s free space lent by `get_buffer`, released before the buffer can move.
    lent: LentBuffer,
    /// A fatal error ends the stream: raised again by every later call.
    failed: Option<DecodeError>,
    ended: bool,
    errors: Vec<DecodeError>,
    error_count: u64,
}

impl Decoder {
    /// Every frame complete in the buffer, as a list of `bytes`: each copied straight from
    /// the buffer into its `bytes` (`decode_visit_all`: no `Bytes` handle made per frame). A
    /// fatal error is raised with the frames before it in its `.frames`.
    fn decode_all<'py>(&mut self, py: Python<'py>, eof: bool) -> PyResult<Bound<'py, PyList>> {
        if let Some(e) = &self.failed {
            return Err(errors::decode_exception(py, e));
        }
        let mut frames = Vec::new();
        loop {
            let decoded = self.framing.decode_visit_all(&mut self.buf, eof, |frame| {
                frames.push(PyBytes::new(py, frame))
            });
            match decoded {
                Ok(()) => return PyList::new(py, frames),
                Err(e) if e.is_recoverable() => {
                    self.error_count += 1;
                    if self.errors.len() == KEPT_ERRORS {
                        self.errors.remove(0);
                    }
                    self.errors.push(e);
                }
                Err(e) => {
                    let err = errors::decode_exception(py, &e);
                    if !frames.is_empty() {
                        let _ = err.value(py).setattr("frames", PyList::new(py, frames)?);
                    }
                    self.failed = Some(e);
                    self.buf = BytesMut::new();
                    return Err(err);
                }
            }
        }
    }

    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        if self.ended {
            return Err(PyValueError::new_err("feed after feed_eof"));
        }
        if let Some(e) = &self.failed {
            return Err(errors::decode_exception(py, e));
        }
        Ok(())
    }
}

#[pymethods]
impl Decoder {
    #[new]
    fn new(py: Python<'_>, spec: &str) -> PyResult<Self> {
        Ok(Decoder {
            framing: parse_spec(py, spec)?,
            buf: BytesMut::new(),
            lent: LentBuffer::default(),
            failed: None,
            ended: false,
            errors: Vec::new(),
            error_count: 0,
        })
    }

    /// Appends `data` (one read from the socket) and returns every frame now complete.
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.lent.release(py);
        self.check_open(py)?;
        with_bytes(data, |d| self.buf.extend_from_slice(d))?;
        self.decode_all(py, false)
    }

    /// The stream ended: returns the last frames; a partial frame left raises `TruncatedFrame`.
    fn feed_eof<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.lent.release(py);
        if self.ended {
            return PyList::new(py, Vec::<Bound<'py, PyBytes>>::new());
        }
        self.ended = true;
        self.decode_all(py, true)
    }

    /// A writable memoryview of at least one byte of free buffer space, for
    /// `sock.recv_into(view)`; then call `buffer_updated(nbytes)`. The view is valid until the
    /// next call on this decoder (it is released then).
    #[pyo3(signature = (sizehint = -1))]
    fn get_buffer(&mut self, py: Python<'_>, sizehint: isize) -> PyResult<Py<PyAny>> {
        self.lent.release(py);
        self.check_open(py)?;
        let want = if sizehint > 0 {
            (sizehint as usize).min(16 * DEFAULT_LEND)
        } else {
            DEFAULT_LEND
        };
        self.lent.lend(py, &mut self.buf, want, 16 * DEFAULT_LEND)
    }

    /// `nbytes` were written at the start of the buffer from `get_buffer`: returns every frame
    /// now complete.
    fn buffer_updated<'py>(
        &mut self,
        py: Python<'py>,
        nbytes: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        self.lent.commit(py, &mut self.buf, nbytes, |nbytes, len| {
            PyValueError::new_err(format!(
                "buffer_updated({nbytes}) but the buffer lent holds {len} bytes"
            ))
        })?;
        self.decode_all(py, false)
    }

    /// Recoverable errors decoded past since the last call (oldest first, at most 64), as
    /// `DecodeError` instances.
    fn take_errors(&mut self, py: Python<'_>) -> Vec<PyObject> {
        std::mem::take(&mut self.errors)
            .iter()
            .map(|e| errors::decode_exception(py, e).into_value(py).into_any())
            .collect()
    }

    /// Recoverable errors decoded past in all (frames discarded or bytes skipped).
    #[getter]
    fn error_count(&self) -> u64 {
        self.error_count
    }

    /// Bytes buffered: part of a frame still waiting for the rest.
    #[getter]
    fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes taken off the stream so far (frames, headers, skipped bytes).
    #[getter]
    fn consumed(&self) -> u64 {
        self.framing.consumed()
    }

    /// The canonical spec of the framing.
    #[getter]
    fn spec(&self) -> String {
        self.framing.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Decoder({:?}, buffered={})",
            self.framing.to_string(),
            self.buf.len()
        )
    }
}

/// Turns payloads into frames: `Encoder("length:4")`.
#[pyclass(module = "framelink._native", frozen)]
pub struct Encoder {
    framing: Framing,
}

#[pymethods]
impl Encoder {
    #[new]
    fn new(py: Python<'_>, spec: &str) -> PyResult<Self> {
        Ok(Encoder {
            framing: parse_spec(py, spec)?,
        })
    }

    /// The frame for one payload.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = BytesMut::new();
        with_bytes(payload, |p| self.framing.encode(p, &mut out))?
            .map_err(|e| errors::encode_error(py, &e))?;
        Ok(PyBytes::new(py, &out))
    }

    /// The frames for many payloads, joined: one `sendall` for a batch.
    fn encode_many<'py>(
        &self,
        py: Python<'py>,
        payloads: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = BytesMut::new();
        for payload in payloads.try_iter()? {
            let payload = payload?;
            with_bytes(&payload, |p| self.framing.encode(p, &mut out))?
                .map_err(|e| errors::encode_error(py, &e))?;
        }
        Ok(PyBytes::new(py, &out))
    }

    /// The canonical spec of the framing.
    #[getter]
    fn spec(&self) -> String {
        self.framing.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Encoder({:?})", self.framing.to_string())
    }
}
