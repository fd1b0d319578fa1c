//! `Server` for Python: framelink's tokio server (connection limit, eviction of dead and idle
//! peers, sessions, graceful shutdown) running on the I/O runtime, handing accepted connections
//! to Python as [`Link`]s, in batches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use framelink::{LostReason, ServerHandle};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use tokio::sync::Notify;

use crate::codec::to_bytes;
use crate::errors;
use crate::link::{self, EventData, Kind, Link, OpResult, SendSide, Shared};
use crate::runtime::{runtime, Hub};

/// Accepted connections waiting for Python at most; the accept loop pauses beyond (the kernel's
/// backlog then holds new ones).
const ACCEPT_QUEUE: usize = 256;

#[derive(Default)]
struct AcceptQueue {
    links: Mutex<VecDeque<Link>>,
    room: Notify,
}

impl AcceptQueue {
    async fn wait_room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.links.lock().unwrap_or_else(|e| e.into_inner()).len() < ACCEPT_QUEUE {
                return;
            }
            notified.await;
        }
    }
}

/// A listening server. Built by `Server(host, port, options)`.
#[pyclass(module = "framelink._native", frozen)]
pub struct Server {
    shared: Arc<Shared>,
    accepted: Arc<AcceptQueue>,
    handle: ServerHandle,
    local: std::net::SocketAddr,
    next_op: std::sync::atomic::AtomicU64,
}

async fn accept_loop(mut server: framelink::Server, shared: Arc<Shared>, queue: Arc<AcceptQueue>) {
    loop {
        queue.wait_room().await;
        let Some(incoming) = server.accept().await else {
            break;
        };
        let (sender, receiver) = incoming.connection.split();
        let conn = Arc::new(Shared::default());
        tokio::spawn(link::pump_connection(receiver, conn.clone()));
        let link = Link::new(
            conn,
            SendSide::Connection(sender),
            Kind::Accepted {
                peer: incoming.peer,
                id: incoming.id,
                client_certificate: incoming.tls.and_then(|tls| tls.certificate).map(Box::new),
            },
        );
        queue
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(link);
        shared.poke();
    }
    shared.finish(None);
}

async fn lost_sessions(handle: ServerHandle, shared: Arc<Shared>) {
    while let Some(lost) = handle.next_lost_session().await {
        shared.push_event(EventData::LostSession {
            id: lost.id,
            reason: match lost.reason {
                LostReason::Expired => "expired",
                LostReason::Evicted => "evicted",
                LostReason::Replaced => "replaced",
            },
            unacked: lost.unacked,
        });
    }
}

#[pymethods]
impl Server {
    /// Binds `host:port` and starts accepting on the I/O runtime.
    #[new]
    fn new(py: Python<'_>, host: &str, port: u16, options: &Bound<'_, PyDict>) -> PyResult<Self> {
        let config = crate::config::server(py, options)?;
        let sessions_on = config.sessions.is_some();
        let addr = format_addr(host, port);
        let server = py
            .allow_threads(|| runtime().block_on(framelink::Server::bind(addr.as_str(), config)))
            .map_err(|e| match e {
                framelink::Error::Io(io) => PyErr::from(io),
                other => errors::config_error(py, other),
            })?;
        let shared = Arc::new(Shared::default());
        let accepted = Arc::new(AcceptQueue::default());
        let handle = server.handle();
        let local = server.local_addr();
        let _guard = runtime().enter();
        if sessions_on {
            tokio::spawn(lost_sessions(handle.clone(), shared.clone()));
        }
        tokio::spawn(accept_loop(server, shared.clone(), accepted.clone()));
        Ok(Server {
            shared,
            accepted,
            handle,
            local,
            next_op: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Wake `hub` with `token` when connections are accepted or events arrive.
    fn set_waker(&self, hub: &Hub, token: u64) {
        self.shared.set_waker(hub, token);
        if !self
            .accepted
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.shared.poke();
        }
    }

    /// Connections accepted since the last call.
    fn take_accepted<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let links: Vec<Link> = {
            let mut queue = self
                .accepted
                .links
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            queue.drain(..).collect()
        };
        self.accepted.room.notify_waiters();
        let objects = links
            .into_iter()
            .map(|l| Py::new(py, l))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, objects)
    }

    /// `(events, completed operations, finished, dropped events)`, as `Link.take_control`.
    fn take_control<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.shared.take_control(py)
    }

    /// `(host, port)` the server listens on.
    #[getter]
    fn local_addr(&self) -> (String, u16) {
        (self.local.ip().to_string(), self.local.port())
    }

    /// Live connections now.
    #[getter]
    fn connections(&self) -> usize {
        self.handle.connections()
    }

    /// `(live, accepted, refused, refused_per_ip)` counters.
    fn stats(&self) -> (usize, u64, u64, u64) {
        let s = self.handle.stats();
        (s.live, s.accepted, s.refused, s.refused_per_ip)
    }

    /// `(attached, detached)` sessions.
    fn session_counts(&self) -> (usize, usize) {
        self.handle.session_counts()
    }

    /// Stops accepting and closes every connection with `GoingAway` (queued messages first),
    /// waiting up to `grace` seconds; the operation's result is `(open, closed, aborted)`.
    fn shutdown(&self, grace: f64) -> PyResult<u64> {
        let grace = Duration::from_secs_f64(grace.clamp(0.0, 1e6));
        let id = self.op_id();
        let (handle, shared) = (self.handle.clone(), self.shared.clone());
        runtime().spawn(async move {
            let report = handle.shutdown(grace).await;
            shared.push_done(id, OpResult::Shutdown(report));
        });
        Ok(id)
    }

    /// Queues `payload` for the client of session `session_id` if that needs no waiting:
    /// `True`; `False` if it must wait (full, or between connections); raises `SessionLost` for
    /// an unknown session.
    fn try_send_to_session(
        &self,
        py: Python<'_>,
        session_id: &[u8],
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let id = session_id_of(py, session_id)?;
        use framelink::SessionSendError as E;
        match self.handle.try_send_to_session(id, to_bytes(payload)?) {
            Ok(()) => Ok(true),
            Err(E::Full { .. } | E::Busy { .. })
            | Err(E::Send(framelink::connection::SendError::QueueFull { .. })) => Ok(false),
            Err(e) => Err(errors::session_send_error(py, &e)),
        }
    }

    /// Queues `payload` for session `session_id`, waiting as needed; returns the operation id.
    fn send_to_session(
        &self,
        py: Python<'_>,
        session_id: &[u8],
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let sid = session_id_of(py, session_id)?;
        let payload = to_bytes(payload)?;
        let id = self.op_id();
        let (handle, shared) = (self.handle.clone(), self.shared.clone());
        runtime().spawn(async move {
            let result = handle.send_to_session(sid, payload).await;
            shared.push_done(id, OpResult::SessionSend(result));
        });
        Ok(id)
    }

    /// Queues `payloads` for session `session_id` in order: every message that fits now at
    /// once, in this call; the rest (from the first that would wait: a full or moving session)
    /// by one task that waits for room. `None` when all were queued now, else the operation id,
    /// completed when the task is done. A message refused for good raises (now) or completes
    /// the operation (later) with the error, `.sent` and, for `SessionLost`, every message not
    /// queued in `.unacked`.
    fn send_many_to_session(
        &self,
        py: Python<'_>,
        session_id: &[u8],
        payloads: &Bound<'_, PyAny>,
    ) -> PyResult<Option<u64>> {
        use framelink::SessionSendError as E;
        let sid = session_id_of(py, session_id)?;
        let mut batch = payloads
            .try_iter()?
            .map(|p| to_bytes(&p?))
            .collect::<PyResult<VecDeque<_>>>()?;
        let mut sent = 0;
        while let Some(payload) = batch.pop_front() {
            match self.handle.try_send_to_session(sid, payload.clone()) {
                Ok(()) => sent += 1,
                Err(E::Full { .. } | E::Busy { .. })
                | Err(E::Send(framelink::connection::SendError::QueueFull { .. })) => {
                    batch.push_front(payload);
                    break;
                }
                Err(e) => {
                    let rest: Vec<_> = batch.into();
                    return Err(errors::session_send_many_error(py, &e, sent, &rest));
                }
            }
        }
        if batch.is_empty() {
            return Ok(None);
        }
        let id = self.op_id();
        let (handle, shared) = (self.handle.clone(), self.shared.clone());
        runtime().spawn(async move {
            let mut result = OpResult::Done;
            while let Some(payload) = batch.pop_front() {
                if let Err(error) = handle.send_to_session(sid, payload).await {
                    let rest = batch.into();
                    result = OpResult::SessionSendMany { error, sent, rest };
                    break;
                }
                sent += 1;
            }
            shared.push_done(id, result);
        });
        Ok(Some(id))
    }
}

impl Server {
    fn op_id(&self) -> u64 {
        self.next_op
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server nobody holds any more stops accepting and closes its connections.
        if !self.handle.is_shutting_down() {
            let handle = self.handle.clone();
            runtime().spawn(async move {
                handle.shutdown(Duration::from_secs(1)).await;
            });
        }
    }
}

fn session_id_of(py: Python<'_>, id: &[u8]) -> PyResult<[u8; 16]> {
    id.try_into().map_err(|_| {
        errors::config_error(py, format!("a session id is 16 bytes, not {}", id.len()))
    })
}

/// `host:port`, bracketing IPv6 literals.
pub fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
