//! `LoopMachine`: one sans-IO connection machine (`RawConnection` or the protocol v1
//! `Connection`) driven from the asyncio event loop, with no I/O thread.
//!
//! The data path of the design `docs/ARCHITECTURE.md` did not choose ("Why a background I/O
//! thread..."), built to measure it: `python -m framelink.bench` runs it as the `loop-raw` and
//! `loop-proto` variants. An asyncio `BufferedProtocol` reads straight into the machine's
//! receive buffer (`get_buffer` / `buffer_updated`); each call returns, in one crossing, the
//! messages, the other events, the bytes to write (one `transport.write`) and the machine's next
//! deadline on the loop's clock (one `call_at` timer). It has no reconnect, backoff or sessions:
//! those live in the tokio layer's client, which `framelink.connect()` uses.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use framelink::proto::connection::{Connection as ProtoConnection, Event};
use framelink::proto::machine::Machine;
use framelink::proto::raw::RawConnection;
use framelink::proto::wire::CloseCode;
use framelink::Protocol;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::lent::LentBuffer;
use crate::{config, errors};

/// Read size lent when the machine knows nothing better.
const READ_SIZE: usize = 256 * 1024;

/// One connection's machine, for an event-loop driver.
#[pyclass(module = "framelink._native", unsendable)]
pub struct LoopMachine {
    machine: Box<dyn Machine>,
    /// `Instant` and the event loop's clock (`loop.time()`) at the same moment: deadlines are
    /// handed over on the loop's clock.
    epoch: Instant,
    epoch_loop: f64,
    /// The machine's receive buffer lent by `get_buffer`, released before every call that may
    /// touch that buffer (input, timeout, send, close: a frame timeout or an abort frees it).
    lent: LentBuffer,
}

impl LoopMachine {
    fn deadline(&self) -> Option<f64> {
        self.machine
            .poll_timeout()
            .map(|t| self.epoch_loop + t.saturating_duration_since(self.epoch).as_secs_f64())
    }

    /// Everything the machine has to say after an input: (messages, events or None, bytes to
    /// write or None, deadline or None).
    fn outputs<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let messages = PyList::empty(py);
        let mut events: Option<Bound<'py, PyList>> = None;
        while let Some(ev) = self.machine.poll_event() {
            match ev {
                Event::Data(b) => messages.append(PyBytes::new(py, &b))?,
                other => {
                    let ev = event_tuple(py, other)?;
                    events.get_or_insert_with(|| PyList::empty(py)).append(ev)?;
                }
            }
        }
        let out = self.transmit(py)?;
        let deadline = self.deadline();
        (messages, events, out, deadline).into_pyobject(py)
    }

    fn transmit<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let now = Instant::now();
        let Some(first) = self.machine.poll_transmit(now) else {
            return Ok(None);
        };
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = first.len();
        while let Some(c) = self.machine.poll_transmit(now) {
            total += c.len();
            chunks.push(c);
        }
        if chunks.is_empty() {
            return Ok(Some(PyBytes::new(py, &first)));
        }
        let out = PyBytes::new_with(py, total, |buf| {
            let mut at = first.len();
            buf[..at].copy_from_slice(&first);
            for c in &chunks {
                buf[at..at + c.len()].copy_from_slice(c);
                at += c.len();
            }
            Ok(())
        })?;
        Ok(Some(out))
    }
}

fn event_tuple<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyTuple>> {
    Ok(match ev {
        Event::Connected { version, .. } => ("connected", version).into_pyobject(py)?,
        Event::Closed {
            code,
            reason,
            by_peer,
            error,
        } => (
            "closed",
            errors::code_name(code),
            reason,
            by_peer,
            error.map(|e| e.to_string()),
        )
            .into_pyobject(py)?,
        Event::ShutdownWrite => ("shutdown_write",).into_pyobject(py)?,
        other => ("other", format!("{other:?}")).into_pyobject(py)?,
    })
}

#[pymethods]
impl LoopMachine {
    /// A client machine for the options of `connect()` (raw mode with `framing`, else protocol
    /// v1); `now` is `loop.time()`.
    #[new]
    fn new(py: Python<'_>, options: &Bound<'_, PyDict>, now: f64) -> PyResult<Self> {
        let cfg = config::client(py, options)?;
        let epoch = Instant::now();
        let machine: Box<dyn Machine> = match cfg.protocol {
            Protocol::Framelink(c) => {
                Box::new(ProtoConnection::new(c, epoch).map_err(|e| errors::config_error(py, e))?)
            }
            Protocol::Raw(c) => {
                Box::new(RawConnection::new(*c, epoch).map_err(|e| errors::config_error(py, e))?)
            }
        };
        Ok(LoopMachine {
            machine,
            epoch,
            epoch_loop: now,
            lent: LentBuffer::default(),
        })
    }

    /// Output due at start (the HELLO in protocol mode): same tuple as `buffer_updated`.
    fn start<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.outputs(py)
    }

    /// A writable memoryview of the machine's free receive buffer.
    #[pyo3(signature = (sizehint = -1))]
    fn get_buffer(&mut self, py: Python<'_>, sizehint: isize) -> PyResult<Py<PyAny>> {
        let pending = self.machine.pending_frame_len();
        let buf = self.machine.recv_buf();
        let mut want = READ_SIZE.max(usize::try_from(sizehint).unwrap_or(0));
        if let Some(p) = pending {
            want = want.max(p.saturating_sub(buf.len()));
        }
        self.lent.lend(py, buf, want, usize::MAX)
    }

    /// `nbytes` were read into the buffer from `get_buffer`.
    fn buffer_updated<'py>(
        &mut self,
        py: Python<'py>,
        nbytes: usize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        self.lent
            .commit(py, self.machine.recv_buf(), nbytes, |_, _| {
                PyValueError::new_err("buffer_updated beyond the buffer lent")
            })?;
        self.machine.process_input(Instant::now());
        self.outputs(py)
    }

    /// The peer ended the stream (or the transport failed).
    fn eof<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.lent.release(py);
        self.machine.handle_eof(Instant::now());
        self.outputs(py)
    }

    /// The deadline timer fired.
    fn timeout<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.lent.release(py);
        self.machine.handle_timeout(Instant::now());
        self.outputs(py)
    }

    /// Queues every payload; returns the bytes to write now (or None).
    fn send_many<'py>(
        &mut self,
        py: Python<'py>,
        payloads: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.lent.release(py);
        let now = Instant::now();
        // Small payloads are copied into one buffer and sent as slices of it: one allocation
        // per batch instead of one per message. Large `bytes` are shared (no copy).
        let mut joined = BytesMut::new();
        let mut parts: Vec<Result<usize, Bytes>> = Vec::new();
        for p in payloads.try_iter()? {
            let p = p?;
            match p.downcast::<PyBytes>() {
                Ok(b) if b.as_bytes().len() < crate::codec::SHARE_FROM => {
                    joined.extend_from_slice(b.as_bytes());
                    parts.push(Ok(b.as_bytes().len()));
                }
                _ => parts.push(Err(crate::codec::to_bytes(&p)?)),
            }
        }
        let mut joined = joined.freeze();
        for part in parts {
            let payload = match part {
                Ok(len) => joined.split_to(len),
                Err(b) => b,
            };
            self.machine
                .send(payload, now)
                .map_err(|e| errors::send_error(py, &e))?;
        }
        self.transmit(py)
    }

    /// Closes gracefully; same tuple as `buffer_updated`.
    #[pyo3(signature = (reason = ""))]
    fn close<'py>(&mut self, py: Python<'py>, reason: &str) -> PyResult<Bound<'py, PyTuple>> {
        self.lent.release(py);
        self.machine
            .close(CloseCode::Normal, reason, Instant::now());
        self.outputs(py)
    }

    /// The machine is finished.
    #[getter]
    fn closed(&self) -> bool {
        self.machine.is_closed()
    }
}
