//! `LentBuffer`: the free space of a `BytesMut` lent to Python as a writable memoryview, for
//! the zero-copy read paths: `sock.recv_into(get_buffer())` then `buffer_updated(nbytes)`, and
//! asyncio's `BufferedProtocol`, which makes the same two calls.
//!
//! Used by `codec::Decoder` (the decoder's buffer) and `loopconn::LoopMachine` (the machine's
//! receive buffer). The owner keeps the buffer; a `LentBuffer` beside it keeps the view:
//!
//! - [`lend`](LentBuffer::lend) reserves space and returns a memoryview of the spare capacity;
//! - [`commit`](LentBuffer::commit) takes the view back and adds the `nbytes` written at its
//!   start to the buffer;
//! - [`release`](LentBuffer::release) invalidates the view: Python code using it afterwards
//!   gets a `ValueError` instead of writing into memory that may have moved. **The owner calls
//!   it before anything that may touch the buffer** (grow, split, clear, free it); `lend` and
//!   `commit` call it themselves, and so does dropping the `LentBuffer` (with its owner).
//!
//! The memory is handed to Python as bytes, so it is initialised (zeroed) before it is lent;
//! the region zeroed is remembered, so that lending the same memory again after a short read
//! does not zero it again (a 256 KiB read buffer would otherwise be cleared on every read).

use std::ffi::{c_char, c_int};

use bytes::BytesMut;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// `PyBUF_WRITE` of CPython's `memoryobject.h` (a writable memoryview).
const PYBUF_WRITE: c_int = 0x200;

/// The view lent and the region it covers.
struct Lent {
    view: Py<PyAny>,
    /// Address of the region (the buffer's spare capacity when lent) and its length.
    start: usize,
    len: usize,
}

/// A buffer's spare capacity lent to Python as a memoryview (see the module doc).
#[derive(Default)]
pub struct LentBuffer {
    lent: Option<Lent>,
    /// Bytes from `initialized_at` known to be initialised: the spare capacity zeroed when lent
    /// and not committed since. Forgotten when the spare capacity starts elsewhere. Only the
    /// address is compared: were the owner's buffer freed and a new one allocated with its
    /// spare capacity at that very address, its bytes would be taken as zeroed (Python would
    /// see old heap contents there, and a caller lying about `nbytes` would commit them).
    initialized: usize,
    initialized_at: usize,
}

/// Address of the first byte after `buf`'s contents: where its spare capacity starts.
fn spare_start(buf: &BytesMut) -> usize {
    buf.as_ptr() as usize + buf.len()
}

impl LentBuffer {
    /// Invalidates the view lent, if any (a released memoryview refuses all access).
    pub fn release(&mut self, py: Python<'_>) {
        if let Some(lent) = self.lent.take() {
            let _ = lent.view.bind(py).call_method0("release");
        }
    }

    /// Reserves `want` bytes in `buf` and lends its spare capacity, at most `max` bytes of it,
    /// as a writable memoryview. The view lent before, if any, is released.
    pub fn lend(
        &mut self,
        py: Python<'_>,
        buf: &mut BytesMut,
        want: usize,
        max: usize,
    ) -> PyResult<Py<PyAny>> {
        self.release(py);
        let before = spare_start(buf);
        buf.reserve(want);
        let start = spare_start(buf);
        if start != before || start != self.initialized_at {
            self.initialized = 0;
        }
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(max);
        if self.initialized < len {
            for b in &mut spare[self.initialized..len] {
                b.write(0);
            }
            self.initialized = len;
        }
        self.initialized_at = start;
        let ptr = spare.as_mut_ptr() as *mut c_char;
        // SAFETY: `ptr..ptr + len` is `buf`'s spare capacity, initialised just above (or when
        // lent before, at the same address), so Python may read it as bytes and write to it.
        // It stays valid while `buf` is not touched: the owner releases the view before
        // touching `buf` (module doc), and a released memoryview refuses all access. The
        // memoryview does not own the memory (no exporter object): nothing frees it.
        let view = unsafe {
            let raw = ffi::PyMemoryView_FromMemory(ptr, len as ffi::Py_ssize_t, PYBUF_WRITE);
            Bound::from_owned_ptr_or_err(py, raw)?
        }
        .unbind();
        self.lent = Some(Lent {
            view: view.clone_ref(py),
            start,
            len,
        });
        Ok(view)
    }

    /// `nbytes` were written at the start of the view lent: releases it and adds them to
    /// `buf`. Raises `BufferError` when nothing is lent, and `beyond(nbytes, lent)` when
    /// `nbytes` is more than the `lent` bytes of the view.
    pub fn commit(
        &mut self,
        py: Python<'_>,
        buf: &mut BytesMut,
        nbytes: usize,
        beyond: impl FnOnce(usize, usize) -> PyErr,
    ) -> PyResult<()> {
        let lent = self.lent.as_ref().map(|l| (l.start, l.len));
        self.release(py);
        let Some((start, len)) = lent else {
            return Err(PyBufferError::new_err(
                "buffer_updated without a buffer from get_buffer",
            ));
        };
        if nbytes > len {
            return Err(beyond(nbytes, len));
        }
        // The view was still lent, and the owner releases it before touching `buf`: the region
        // is still `buf`'s spare capacity. Checked all the same, since `set_len` relies on it.
        if spare_start(buf) != start || buf.capacity() - buf.len() < len {
            return Err(PyBufferError::new_err(
                "the buffer lent was moved before buffer_updated",
            ));
        }
        // SAFETY: the first `nbytes` of `buf`'s spare capacity (checked above to be the region
        // lent, `nbytes <= len`) are initialised: zeroed when lent, then written by the caller.
        unsafe { buf.set_len(buf.len() + nbytes) };
        self.initialized -= nbytes;
        self.initialized_at += nbytes;
        Ok(())
    }
}

impl Drop for LentBuffer {
    /// The owner and its buffer are going away: a view still lent must not outlive them (the
    /// memoryview holds no reference to its owner).
    fn drop(&mut self) {
        if self.lent.is_some() {
            Python::with_gil(|py| self.release(py));
        }
    }
}
