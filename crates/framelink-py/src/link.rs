//! `Link`: one connection (accepted by a server) or one reconnecting client, as Python sees it.
//!
//! An I/O task (the pump) moves the tokio layer's events into the link's inbox in batches:
//! messages into a queue bounded by bytes (when it is full the pump stops taking, the driver
//! stops reading, and TCP flow control slows the peer down: backpressure reaches the socket),
//! everything else into an event queue. Python takes from the inbox with one call per batch,
//! woken through a [`Hub`](crate::runtime::Hub) (asyncio) or a condition variable (blocking
//! code). Sends go straight into the connection's send budget when it has room (no task, no
//! wake-up); otherwise an ordered send worker waits for room and reports completion.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use framelink::connection::{IdleKind, ResumeStatus, SendError};
use framelink::{
    ClientEvent, ClientSender, CloseInfo, DecodeError, Event, Receiver, Sender, SessionEvent,
    ShutdownReport,
};
use futures::FutureExt;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::sync::{mpsc, watch, Notify};

use crate::codec::{to_bytes, SHARE_FROM};
use crate::errors;
use crate::runtime::{runtime, Hub, HubInner};

/// Message bytes a link holds for Python before its pump stops taking more.
pub const INBOX_BYTES: usize = 256 * 1024;
/// Events a link holds at most; beyond that the oldest heartbeat-level events (RTT samples,
/// idle notices, discarded frames) are dropped and counted. Connection and session events are
/// never dropped.
const MAX_EVENTS: usize = 1024;
/// Events taken from the tokio layer per pump step.
const PUMP_BATCH: usize = 1024;

/// What happened, converted to a Python tuple when taken (`events.py` makes objects of them).
#[derive(Debug)]
pub enum EventData {
    Connected {
        addr: Option<SocketAddr>,
        attempt: u32,
        peer_ping_interval: Option<Duration>,
    },
    Rtt(framelink::connection::RttEstimate),
    Idle(IdleKind),
    FrameDiscarded(DecodeError),
    MessageDropped {
        len: usize,
        peer_max: u32,
    },
    /// Started, resumed or lost: the tokio layer's own type.
    Session(SessionEvent),
    /// Handed to a lost connection and never written.
    Unsent(Vec<Bytes>),
    Disconnected(CloseInfo),
    ConnectFailed {
        attempt: u32,
        error: String,
    },
    Reconnecting {
        attempt: u32,
        delay: Duration,
    },
    GaveUp {
        attempts: u32,
        connected: u32,
    },
    /// A server let go of a session whose client never came back.
    LostSession {
        id: [u8; 16],
        reason: &'static str,
        unacked: Vec<Bytes>,
    },
}

impl EventData {
    /// May be dropped when the queue is full (a later one says the same).
    fn droppable(&self) -> bool {
        matches!(
            self,
            EventData::Rtt(_) | EventData::Idle(_) | EventData::FrameDiscarded(_)
        )
    }

    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let secs = |d: &Duration| d.as_secs_f64();
        let list = |m: &[Bytes]| PyList::new(py, m.iter().map(|b| PyBytes::new(py, b)));
        match self {
            EventData::Connected {
                addr,
                attempt,
                peer_ping_interval,
            } => (
                "connected",
                addr.map(|a| (a.ip().to_string(), a.port())),
                *attempt,
                peer_ping_interval.as_ref().map(secs),
            )
                .into_pyobject(py),
            EventData::Rtt(r) => (
                "rtt",
                secs(&r.latest),
                secs(&r.smoothed),
                secs(&r.variance),
                secs(&r.min),
                r.samples,
            )
                .into_pyobject(py),
            EventData::Idle(kind) => {
                let kind = match kind {
                    IdleKind::ReaderIdle => "reader",
                    IdleKind::WriterIdle => "writer",
                    IdleKind::AllIdle => "all",
                };
                ("idle", kind).into_pyobject(py)
            }
            EventData::FrameDiscarded(e) => {
                let exc = errors::decode_exception(py, e).into_value(py);
                ("frame_discarded", exc).into_pyobject(py)
            }
            EventData::MessageDropped { len, peer_max } => {
                ("message_dropped", *len, *peer_max).into_pyobject(py)
            }
            EventData::Session(SessionEvent::Started {
                id,
                status,
                resending,
            }) => {
                let status = match status {
                    ResumeStatus::New => "new",
                    ResumeStatus::Resumed => "resumed",
                    ResumeStatus::Unknown => "unknown",
                };
                ("session", PyBytes::new(py, id), status, *resending).into_pyobject(py)
            }
            EventData::Session(SessionEvent::Lost { id, unacked }) => {
                ("session_lost", PyBytes::new(py, id), list(unacked)?).into_pyobject(py)
            }
            EventData::Unsent(messages) => ("unsent", list(messages)?).into_pyobject(py),
            EventData::Disconnected(info) => (
                "disconnected",
                info.code.as_u16(),
                errors::info_code_name(info),
                info.reason.clone(),
                info.by_peer,
                info.error.as_ref().map(|e| e.to_string()),
                errors::close_class(info),
                info.to_string(),
            )
                .into_pyobject(py),
            EventData::ConnectFailed { attempt, error } => {
                ("connect_failed", *attempt, error.clone()).into_pyobject(py)
            }
            EventData::Reconnecting { attempt, delay } => {
                ("reconnecting", *attempt, secs(delay)).into_pyobject(py)
            }
            EventData::GaveUp {
                attempts,
                connected,
            } => ("gave_up", *attempts, *connected).into_pyobject(py),
            EventData::LostSession {
                id,
                reason,
                unacked,
            } => (
                "lost_session",
                PyBytes::new(py, id),
                *reason,
                list(unacked)?,
            )
                .into_pyobject(py),
        }
    }
}

/// How an operation handed to the I/O runtime ended.
#[derive(Debug)]
pub enum OpResult {
    Done,
    SendFailed {
        error: SendError,
        unsent: usize,
    },
    Closed(Option<CloseInfo>),
    Shutdown(ShutdownReport),
    SessionSend(Result<(), framelink::SessionSendError>),
    /// A batch for a session stopped by `error`: `sent` of it were queued, `rest` (after the
    /// message the error is about) were not.
    SessionSendMany {
        error: framelink::SessionSendError,
        sent: usize,
        rest: Vec<Bytes>,
    },
}

impl OpResult {
    /// `None` for success, else the exception (or, for reports, a tuple).
    fn to_py(&self, py: Python<'_>) -> PyObject {
        match self {
            OpResult::Done => py.None(),
            OpResult::SendFailed { error, unsent } => {
                let e = errors::send_error(py, error).into_value(py);
                let _ = e.bind(py).setattr("unsent", *unsent);
                e.into_any()
            }
            OpResult::Closed(_) => py.None(),
            OpResult::Shutdown(r) => (r.open, r.closed, r.aborted)
                .into_pyobject(py)
                .map(|t| t.into_any().unbind())
                .unwrap_or_else(|_| py.None()),
            OpResult::SessionSend(Ok(())) => py.None(),
            OpResult::SessionSend(Err(e)) => {
                errors::session_send_error(py, e).into_value(py).into_any()
            }
            OpResult::SessionSendMany { error, sent, rest } => {
                errors::session_send_many_error(py, error, *sent, rest)
                    .into_value(py)
                    .into_any()
            }
        }
    }
}

/// A link's inbox: what the I/O side has for Python.
#[derive(Default)]
struct Inbox {
    messages: VecDeque<Bytes>,
    message_bytes: usize,
    events: VecDeque<EventData>,
    dropped_events: u64,
    done: Vec<(u64, OpResult)>,
    /// The pump ended: nothing more will arrive.
    finished: bool,
    /// How the connection (or the client) ended, for the exception `recv` raises.
    close: Option<CloseInfo>,
    /// Python was woken and has not taken since: don't wake it again.
    notified: bool,
    waker: Option<(Arc<HubInner>, u64)>,
    /// Accepted connections: while kept, a newer connection of this one's session (if its
    /// client resumes it) hands Python nothing. Let go once Python asked for messages with none
    /// left after the pump ended, or when the link is dropped: a session's handlers then see
    /// its messages in order across a resume.
    order_hold: Option<framelink::connection::SessionOrderHold>,
}

/// The state shared by a link's pump, its send worker and Python.
#[derive(Default)]
pub struct Shared {
    inbox: Mutex<Inbox>,
    /// Blocking callers wait here.
    cond: Condvar,
    /// Rung when Python takes messages (room for the pump).
    room: Notify,
    /// Closing: the pump takes everything that still arrives, so that the close handshake
    /// (which needs the peer's CLOSE read) completes even if Python stopped reading.
    unbounded: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes Python (once until it takes) and blocking waiters.
    fn wake(&self, mut inbox: MutexGuard<'_, Inbox>) {
        if !inbox.notified {
            inbox.notified = true;
            if let Some((hub, token)) = &inbox.waker {
                hub.wake(*token);
            }
        }
        drop(inbox);
        self.cond.notify_all();
    }

    /// Waits until the message queue has room (always, once closing).
    pub async fn wait_room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unbounded.load(Ordering::Acquire) || self.lock().message_bytes < INBOX_BYTES {
                return;
            }
            notified.await;
        }
    }

    pub fn push_event(&self, event: EventData) {
        let mut inbox = self.lock();
        push_event(&mut inbox, event);
        self.wake(inbox);
    }

    pub fn push_done(&self, op: u64, result: OpResult) {
        let mut inbox = self.lock();
        inbox.done.push((op, result));
        self.wake(inbox);
    }

    /// Nothing more will arrive; `close` says how it ended.
    pub fn finish(&self, close: Option<CloseInfo>) {
        let mut inbox = self.lock();
        inbox.finished = true;
        if close.is_some() {
            inbox.close = close;
        }
        self.wake(inbox);
    }

    /// Adds a batch of connection events.
    fn push_connection_events(&self, batch: &mut Vec<Event>) {
        let mut inbox = self.lock();
        for event in batch.drain(..) {
            match event {
                Event::Message(m) => {
                    inbox.message_bytes += m.len();
                    inbox.messages.push_back(m);
                }
                Event::Closed(info) => {
                    inbox.close = Some(CloseInfo::clone(&info));
                    push_event(&mut inbox, EventData::Disconnected(*info));
                }
                Event::Connected { peer, .. } => push_event(
                    &mut inbox,
                    EventData::Connected {
                        addr: None,
                        attempt: 1,
                        peer_ping_interval: Some(peer.ping_interval),
                    },
                ),
                Event::Rtt(r) => push_event(&mut inbox, EventData::Rtt(*r)),
                Event::Idle(kind) => push_event(&mut inbox, EventData::Idle(kind)),
                Event::MessageDropped { len, peer_max } => {
                    push_event(&mut inbox, EventData::MessageDropped { len, peer_max })
                }
                Event::FrameDiscarded(e) => push_event(&mut inbox, EventData::FrameDiscarded(*e)),
                Event::Session(session) => push_event(&mut inbox, EventData::Session(session)),
            }
        }
        self.wake(inbox);
    }

    /// Adds a batch of client events.
    fn push_client_events(&self, batch: &mut Vec<ClientEvent>) {
        let mut inbox = self.lock();
        for event in batch.drain(..) {
            let data = match event {
                ClientEvent::Message(m) => {
                    inbox.message_bytes += m.len();
                    inbox.messages.push_back(m);
                    continue;
                }
                ClientEvent::Connected {
                    addr,
                    attempt,
                    peer,
                } => EventData::Connected {
                    addr: Some(addr),
                    attempt,
                    peer_ping_interval: peer.map(|h| h.ping_interval),
                },
                ClientEvent::Rtt(r) => EventData::Rtt(*r),
                ClientEvent::Idle(kind) => EventData::Idle(kind),
                ClientEvent::FrameDiscarded(e) => EventData::FrameDiscarded(*e),
                ClientEvent::MessageDropped { len, peer_max } => {
                    EventData::MessageDropped { len, peer_max }
                }
                ClientEvent::Disconnected(info) => EventData::Disconnected(*info),
                ClientEvent::Session(session) => EventData::Session(session),
                ClientEvent::Unsent { messages } => EventData::Unsent(messages),
                ClientEvent::ConnectFailed { attempt, error } => EventData::ConnectFailed {
                    attempt,
                    error: error.to_string(),
                },
                ClientEvent::Reconnecting { attempt, delay } => {
                    EventData::Reconnecting { attempt, delay }
                }
                ClientEvent::GaveUp {
                    attempts,
                    connected,
                } => EventData::GaveUp {
                    attempts,
                    connected,
                },
                // The link's end is reported by the pump (`finish`), after the last event.
                ClientEvent::Closed => continue,
            };
            push_event(&mut inbox, data);
        }
        self.wake(inbox);
    }

    /// From now on the pump never waits for room (see `unbounded`).
    fn stop_bounding(&self) {
        self.unbounded.store(true, Ordering::Release);
        self.room.notify_waiters();
    }

    /// Wakes Python (and blocking waiters) without adding anything.
    pub fn poke(&self) {
        let inbox = self.lock();
        self.wake(inbox);
    }

    /// Wake `hub` with `token` from now on; at once if something is waiting.
    pub fn set_waker(&self, hub: &Hub, token: u64) {
        let mut inbox = self.lock();
        inbox.waker = Some((hub.inner.clone(), token));
        inbox.notified = false;
        let pending = !inbox.messages.is_empty()
            || !inbox.events.is_empty()
            || !inbox.done.is_empty()
            || inbox.finished;
        if pending {
            self.wake(inbox);
        }
    }

    /// `(events, completed operations, over, dropped events)`; `over` means nothing more will
    /// arrive (messages may still be waiting: `take_messages` returns them).
    pub fn take_control<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (events, done, finished, dropped) = {
            let mut inbox = self.lock();
            inbox.notified = false;
            let events = std::mem::take(&mut inbox.events);
            let done = std::mem::take(&mut inbox.done);
            let dropped = std::mem::take(&mut inbox.dropped_events);
            (events, done, inbox.finished, dropped)
        };
        let events = events
            .iter()
            .map(|e| e.to_py(py))
            .collect::<PyResult<Vec<_>>>()?;
        let done: Vec<(u64, PyObject)> = done.iter().map(|(id, r)| (*id, r.to_py(py))).collect();
        (events, done, finished, dropped).into_pyobject(py)
    }

    /// The pump's hold on the session's order (see `Inbox::order_hold`).
    fn set_order_hold(&self, hold: framelink::connection::SessionOrderHold) {
        self.lock().order_hold = Some(hold);
    }

    /// Lets a newer connection of the session go on (the link is gone).
    fn release_order(&self) {
        let hold = self.lock().order_hold.take();
        drop(hold); // Outside the inbox lock: it takes the connection's.
    }

    /// Takes up to `max` messages; room for the pump if that freed some.
    fn take_messages(&self, max: usize) -> Vec<Bytes> {
        let mut inbox = self.lock();
        inbox.notified = false;
        if inbox.messages.is_empty() && inbox.finished && inbox.order_hold.is_some() {
            // Asked for more after the last message: Python is done with this connection's.
            drop(inbox);
            self.release_order();
            return Vec::new();
        }
        let n = max.min(inbox.messages.len());
        let taken: Vec<Bytes> = inbox.messages.drain(..n).collect();
        let bytes: usize = taken.iter().map(Bytes::len).sum();
        let was_full = inbox.message_bytes >= INBOX_BYTES;
        inbox.message_bytes -= bytes;
        // A link that went quiet keeps no queue; a busy one keeps its queue's room rather than
        // regrowing it, copy after copy, with every batch.
        if inbox.messages.is_empty() && inbox.messages.capacity() > 2 * n.max(16) {
            inbox.messages = VecDeque::new();
        }
        let room = was_full && inbox.message_bytes < INBOX_BYTES;
        drop(inbox);
        if room {
            self.room.notify_waiters();
        }
        taken
    }
}

fn push_event(inbox: &mut Inbox, event: EventData) {
    if inbox.events.len() >= MAX_EVENTS && event.droppable() {
        inbox.dropped_events += 1;
        return;
    }
    inbox.events.push_back(event);
}

/// Moves a connection's events into its link until the connection is over.
pub async fn pump_connection(mut receiver: Receiver, shared: Arc<Shared>) {
    // The inbox, not the receiver, says when Python is done with a resumed session's messages.
    shared.set_order_hold(receiver.hold_session_order());
    let mut batch = Vec::new(); // allocated by the first events: idle links keep none
    loop {
        shared.wait_room().await;
        if receiver.recv_many(&mut batch, PUMP_BATCH).await == 0 {
            break;
        }
        shared.push_connection_events(&mut batch);
    }
    let close = receiver.close_info();
    shared.finish(close);
}

/// Moves a client's events into its link until the client stops; `stop` asks it to.
pub async fn pump_client(
    mut client: framelink::Client,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::new(); // allocated by the first events: idle links keep none
    let mut stopping = false;
    loop {
        shared.wait_room().await;
        tokio::select! {
            n = client.next_events(&mut batch, PUMP_BATCH) => {
                if n == 0 {
                    break;
                }
                shared.push_client_events(&mut batch);
            }
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    client.stop();
                }
            }
        }
    }
    shared.finish(None);
}

/// Where a link's sends go.
#[derive(Clone)]
pub enum SendSide {
    Connection(Sender),
    Client(ClientSender),
}

impl SendSide {
    async fn send_batch(&self, batch: &mut Vec<Bytes>) -> Result<(), SendError> {
        match self {
            SendSide::Connection(s) => s.send_batch(batch).await,
            SendSide::Client(s) => s.send_batch(batch).await,
        }
    }
}

/// Work for a link's send worker.
struct SendOp {
    id: u64,
    batch: Vec<Bytes>,
}

/// Sends batches in the order they were handed over, each waiting for budget as needed.
async fn send_worker(
    side: SendSide,
    shared: Arc<Shared>,
    mut ops: mpsc::UnboundedReceiver<SendOp>,
) {
    while let Some(SendOp { id, mut batch }) = ops.recv().await {
        let result = match side.send_batch(&mut batch).await {
            Ok(()) => OpResult::Done,
            Err(error) => OpResult::SendFailed {
                error,
                unsent: batch.len(),
            },
        };
        shared.push_done(id, result);
    }
}

/// What differs between a server's connection and a client.
pub enum Kind {
    /// Accepted by a server: `close` sends CLOSE.
    Accepted {
        peer: SocketAddr,
        id: u64,
        /// Mutual TLS: the client's verified certificate.
        client_certificate: Option<Box<framelink::tls::PeerCertificate>>,
    },
    /// A reconnecting client: `close` stops it.
    Client { stop: watch::Sender<bool> },
}

/// One connection, or one reconnecting client, for Python.
#[pyclass(module = "framelink._native", frozen)]
pub struct Link {
    shared: Arc<Shared>,
    side: SendSide,
    kind: Kind,
    worker: Mutex<Option<mpsc::UnboundedSender<SendOp>>>,
    next_op: AtomicU64,
}

impl Link {
    pub fn new(shared: Arc<Shared>, side: SendSide, kind: Kind) -> Link {
        Link {
            shared,
            side,
            kind,
            worker: Mutex::new(None),
            next_op: AtomicU64::new(1),
        }
    }

    fn op_id(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    /// Converts a list of bytes-like objects. Small payloads are copied into one shared
    /// buffer (one allocation per batch, not per message); large `bytes` are shared with
    /// Python (see [`to_bytes`]).
    fn batch(payloads: &Bound<'_, PyAny>) -> PyResult<Vec<Bytes>> {
        let items = payloads
            .try_iter()?
            .collect::<PyResult<Vec<Bound<'_, PyAny>>>>()?;
        // Each item's contents if it is a small (non-empty) `bytes`, looked up once.
        let small: Vec<Option<&[u8]>> = items
            .iter()
            .map(|item| {
                let data = item.downcast::<PyBytes>().ok()?.as_bytes();
                (!data.is_empty() && data.len() < SHARE_FROM).then_some(data)
            })
            .collect();
        let mut arena = BytesMut::with_capacity(small.iter().flatten().map(|d| d.len()).sum());
        let mut batch = Vec::with_capacity(items.len());
        for (item, small) in items.iter().zip(&small) {
            match small {
                Some(data) => {
                    arena.extend_from_slice(data);
                    batch.push(arena.split().freeze());
                }
                None => batch.push(to_bytes(item)?),
            }
        }
        Ok(batch)
    }

    /// Queues what the send budget takes now, without waiting; `batch` keeps the rest.
    fn try_queue(&self, py: Python<'_>, batch: &mut Vec<Bytes>) -> PyResult<()> {
        let total = batch.len();
        match self.side.send_batch(batch).now_or_never() {
            Some(Ok(())) | None => Ok(()),
            Some(Err(SendError::Closed)) if !batch.is_empty() => {
                // A client between connections: the worker waits for the next one.
                if matches!(self.side, SendSide::Client(_)) && !self.shared.lock().finished {
                    return Ok(());
                }
                let err = self.closed_exception(py);
                let _ = err.value(py).setattr("sent", total - batch.len());
                Err(err)
            }
            Some(Err(e)) => {
                let err = errors::send_error(py, &e);
                let _ = err.value(py).setattr("sent", total - batch.len());
                Err(err)
            }
        }
    }

    fn closed_exception(&self, py: Python<'_>) -> PyErr {
        match &self.shared.lock().close {
            Some(info) => errors::closed_error(py, info),
            None => errors::closed_plain(py, "closed"),
        }
    }
}

#[pymethods]
impl Link {
    /// Wake `hub` with `token` when something arrives (asyncio).
    fn set_waker(&self, hub: &Hub, token: u64) {
        self.shared.set_waker(hub, token);
    }

    /// Up to `max` messages that have arrived (possibly none).
    fn take_messages<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let taken = self.shared.take_messages(max);
        PyList::new(py, taken.iter().map(|m| PyBytes::new(py, m)))
    }

    /// `(events, completed operations, over, dropped events)`: see `Shared::take_control`.
    fn take_control<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.shared.take_control(py)
    }

    /// Messages waiting and their bytes.
    fn pending(&self) -> (usize, usize) {
        let inbox = self.shared.lock();
        (inbox.messages.len(), inbox.message_bytes)
    }

    /// The exception that `recv` raises once the link is over and drained.
    fn close_exception(&self, py: Python<'_>) -> PyObject {
        self.closed_exception(py).into_value(py).into_any()
    }

    /// Queues `payload` if the send budget has room now: `True`; `False` when it would wait
    /// (full, or a client between connections); raises when it can never be sent.
    fn try_send(&self, py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut batch = vec![to_bytes(payload)?];
        self.try_queue(py, &mut batch)?;
        Ok(batch.is_empty())
    }

    /// Queues `payload` now or raises why not: `QueueFull` with the send budget's numbers
    /// (`queued` and `limit` 0 while a client is between connections), the close exception once
    /// the link is over, `EncodeError` for a message that can never be sent. `behind`: earlier
    /// sends still wait for room and this one must not pass them, so `QueueFull` at once.
    #[pyo3(signature = (payload, behind = false))]
    fn send_now(&self, py: Python<'_>, payload: &Bound<'_, PyAny>, behind: bool) -> PyResult<()> {
        let payload = to_bytes(payload)?;
        let len = payload.len();
        // No connection to send on: a client between connections, or the link is over.
        let unavailable = || {
            if matches!(self.side, SendSide::Client(_)) && !self.shared.lock().finished {
                let why = "no connection now: the client is reconnecting";
                errors::queue_full(py, why, 0, len, 0)
            } else {
                self.closed_exception(py)
            }
        };
        let sender = match &self.side {
            SendSide::Connection(s) => Some(s.clone()),
            SendSide::Client(c) => c.current(),
        };
        let Some(sender) = sender else {
            return Err(unavailable());
        };
        if behind {
            let why = "earlier sends are still waiting for room in the send queue";
            let (queued, limit) = (sender.queued_bytes(), sender.queue_limit());
            return Err(errors::queue_full(py, why, queued, len, limit));
        }
        match sender.try_send(payload) {
            Ok(()) => Ok(()),
            // The connection just ended.
            Err(SendError::Closed) => Err(unavailable()),
            Err(e) => Err(errors::send_error(py, &e)),
        }
    }

    /// Queues the longest prefix of `payloads` that fits now; returns how many were queued.
    fn try_send_many(&self, py: Python<'_>, payloads: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut batch = Self::batch(payloads)?;
        let total = batch.len();
        self.try_queue(py, &mut batch)?;
        Ok(total - batch.len())
    }

    /// Hands `payloads` (from index `skip` on) to the send worker, behind earlier ones; the
    /// returned operation id completes (see `take_control`) once all are queued.
    #[pyo3(signature = (payloads, skip = 0))]
    fn send_async(&self, payloads: &Bound<'_, PyAny>, skip: usize) -> PyResult<u64> {
        let mut batch = Self::batch(payloads)?;
        batch.drain(..skip.min(batch.len()));
        let id = self.op_id();
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        let tx = worker.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            runtime().spawn(send_worker(self.side.clone(), self.shared.clone(), rx));
            tx
        });
        if tx.send(SendOp { id, batch }).is_err() {
            self.shared.push_done(
                id,
                OpResult::SendFailed {
                    error: SendError::Closed,
                    unsent: 0,
                },
            );
        }
        Ok(id)
    }

    /// Blocking code: queues all of `payloads` in order, waiting for room (and, for a client,
    /// a connection) up to `timeout` seconds (`None`: no limit). Raises `TimeoutError` with
    /// `.sent` set to how many were queued.
    #[pyo3(signature = (payloads, timeout = None))]
    fn send_blocking(
        &self,
        py: Python<'_>,
        payloads: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let mut batch = Self::batch(payloads)?;
        let total = batch.len();
        let deadline = deadline(timeout)?;
        loop {
            let side = self.side.clone();
            let step = Duration::from_millis(100);
            let slice = deadline.map_or(step, |d| {
                d.saturating_duration_since(Instant::now()).min(step)
            });
            let (result, rest) = py.allow_threads(|| {
                let mut b = std::mem::take(&mut batch);
                let r = runtime()
                    .block_on(async { tokio::time::timeout(slice, side.send_batch(&mut b)).await });
                (r, b)
            });
            batch = rest;
            match result {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    let err = match e {
                        SendError::Closed => self.closed_exception(py),
                        e => errors::send_error(py, &e),
                    };
                    let _ = err.value(py).setattr("sent", total - batch.len());
                    return Err(err);
                }
                Err(_elapsed) => {
                    py.check_signals()?;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        let err = pyo3::exceptions::PyTimeoutError::new_err(format!(
                            "send timed out with {} of {total} message(s) queued",
                            total - batch.len()
                        ));
                        let _ = err.value(py).setattr("sent", total - batch.len());
                        return Err(err);
                    }
                }
            }
        }
    }

    /// Blocking code: waits up to `timeout` seconds (`None`: no limit) until a message or an
    /// event is waiting, or the link is over; `True` if so.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = deadline(timeout)?;
        loop {
            let ready = py.allow_threads(|| {
                let step = Duration::from_millis(100);
                let slice = deadline.map_or(step, |d| {
                    d.saturating_duration_since(Instant::now()).min(step)
                });
                let inbox = self.shared.lock();
                let ready = |i: &Inbox| {
                    !i.messages.is_empty()
                        || !i.events.is_empty()
                        || !i.done.is_empty()
                        || i.finished
                };
                if ready(&inbox) {
                    return true;
                }
                let (inbox, _) = self
                    .shared
                    .cond
                    .wait_timeout_while(inbox, slice, |i| !ready(i))
                    .unwrap_or_else(|e| e.into_inner());
                ready(&inbox)
            });
            if ready {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Closes: a connection gracefully with `code` and `reason` (queued messages first, then
    /// CLOSE; completes as operation id returned), a client by stopping it (no more
    /// reconnects; the link finishes once its connection closed). Returns the operation id, or
    /// 0 when there is nothing to wait for but the end of the link.
    #[pyo3(signature = (code = 0, reason = String::new()))]
    fn close(&self, code: u16, reason: String) -> u64 {
        self.shared.stop_bounding();
        match (&self.kind, &self.side) {
            (Kind::Client { stop }, _) => {
                let _ = stop.send(true);
                0
            }
            (Kind::Accepted { .. }, SendSide::Connection(sender)) => {
                let id = self.op_id();
                let sender = sender.clone();
                let shared = self.shared.clone();
                runtime().spawn(async move {
                    let code = framelink::connection::CloseCode::from_u16(code);
                    let info = sender.close(code, &reason).await;
                    shared.push_done(id, OpResult::Closed(info));
                });
                id
            }
            (Kind::Accepted { .. }, SendSide::Client(_)) => 0,
        }
    }

    /// Whether a connection is open now (a client may be between connections).
    #[getter]
    fn connected(&self) -> bool {
        match &self.side {
            SendSide::Connection(s) => !s.is_closed(),
            SendSide::Client(s) => s.is_connected(),
        }
    }

    /// The peer's `(host, port)` (accepted connections).
    #[getter]
    fn peer(&self) -> Option<(String, u16)> {
        match &self.kind {
            Kind::Accepted { peer, .. } => Some((peer.ip().to_string(), peer.port())),
            Kind::Client { .. } => None,
        }
    }

    /// Mutual TLS (accepted connections): the client's verified certificate as
    /// `(subject, dns_names, der)`, e.g. `("CN=client-1", ["client-1.example"], b"0...")`.
    #[getter]
    fn peer_certificate(&self) -> Option<(String, Vec<String>, Vec<u8>)> {
        match &self.kind {
            Kind::Accepted {
                client_certificate: Some(cert),
                ..
            } => Some((
                cert.subject.clone(),
                cert.dns_names.clone(),
                cert.der().to_vec(),
            )),
            _ => None,
        }
    }

    /// The server's number for this connection, in accept order.
    #[getter]
    fn id(&self) -> u64 {
        match &self.kind {
            Kind::Accepted { id, .. } => *id,
            Kind::Client { .. } => 0,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Nobody can read or send any more: a client stops, a connection closes (both after
        // writing what was queued), and the pump takes what still arrives meanwhile.
        self.shared.stop_bounding();
        self.shared.release_order();
        match (&self.kind, &self.side) {
            (Kind::Client { stop }, _) => {
                let _ = stop.send(true);
            }
            (Kind::Accepted { .. }, SendSide::Connection(sender)) if !sender.is_closed() => {
                let sender = sender.clone();
                runtime().spawn(async move {
                    sender
                        .close(framelink::connection::CloseCode::Normal, "")
                        .await;
                });
            }
            _ => {}
        }
    }
}

/// `timeout` seconds from now, checked.
pub fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => {
            Ok(Some(Instant::now() + Duration::from_secs_f64(t.min(1e9))))
        }
        Some(t) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, not {t}"
        ))),
    }
}
