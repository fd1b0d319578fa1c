//! `framelink proxy --show SPEC`: the frames passing through the chaos proxy, both directions,
//! decoded as they are forwarded and printed with a timestamp, the connection and the
//! direction.
//!
//! [`FrameTap`] is the proxy's [`ChaosTap`]: each direction of each connection has its own copy
//! of the framing, which holds at most one partial frame (the framing's `max` bounds it). A
//! direction whose bytes do not decode prints the error once and is shown no more; forwarding
//! is never held up or stopped by showing. Lines are handed to a printing thread through a
//! bounded queue (at most [`QUEUE_LINES`] lines and [`QUEUE_BYTES`] bytes): when the output
//! cannot keep up, lines are dropped and how many is said on stderr, so a slow terminal or pipe
//! never slows the proxy down nor makes it hold unbounded memory.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use framelink::chaos::ChaosTap;
use framelink::{FrameDecoder, Framing};

use crate::pcap::format_time;
use crate::stream_tools::{escape_text, hex, payload_offset};
use crate::OutputFormat;

/// Lines waiting to be printed, at most.
pub const QUEUE_LINES: usize = 4096;
/// Bytes of lines waiting to be printed, at most.
pub const QUEUE_BYTES: usize = 16 << 20;

/// Which way bytes go through the proxy, as an index.
const TO_UPSTREAM: usize = 0;
const TO_CLIENT: usize = 1;

fn direction_name(direction: usize) -> &'static str {
    if direction == TO_UPSTREAM {
        "client->upstream"
    } else {
        "upstream->client"
    }
}

/// Decodes and prints what the proxy forwards (see the [module docs](self)).
pub struct FrameTap {
    template: Framing,
    format: OutputFormat,
    conns: Mutex<HashMap<u64, [Direction; 2]>>,
    printer: Printer,
}

/// One direction of one connection.
struct Direction {
    framing: Framing,
    buf: BytesMut,
    frames: u64,
    stopped: bool,
}

impl Direction {
    fn new(framing: Framing) -> Direction {
        Direction {
            framing,
            buf: BytesMut::new(),
            frames: 0,
            stopped: false,
        }
    }
}

impl FrameTap {
    /// A tap decoding each direction with a fresh copy of `framing`, printing in `format`.
    pub fn new(framing: Framing, format: OutputFormat) -> FrameTap {
        FrameTap {
            template: framing,
            format,
            conns: Mutex::new(HashMap::new()),
            printer: Printer::start(),
        }
    }

    /// Prints what is queued and stops the printing thread; lines shown after this are
    /// dropped.
    pub fn finish(&self) {
        self.printer.finish();
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, [Direction; 2]>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decodes what `d` holds; `eof` once the connection is over.
    fn decode(&self, conn: u64, direction: usize, d: &mut Direction, eof: bool) {
        let name = direction_name(direction);
        while !d.stopped {
            let before = (d.framing.consumed(), d.buf.as_ptr() as usize, d.buf.len());
            match d.framing.decode_with_eof(&mut d.buf, eof) {
                Ok(Some(frame)) => {
                    let offset = payload_offset(before, &frame);
                    let line = self.line(conn, name, d.frames, offset, &frame);
                    self.printer.out(line);
                    d.frames += 1;
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    self.printer
                        .err(format!("[show] #{conn} {name}: warning: {e}"));
                }
                Err(e) => {
                    self.printer.err(format!(
                        "[show] #{conn} {name}: error after {} frames: {e}; this direction is \
                         no longer shown (forwarding goes on)",
                        d.frames
                    ));
                    d.stopped = true;
                    d.buf = BytesMut::new();
                }
            }
        }
        if d.buf.is_empty() {
            // An idle connection holds no buffer.
            d.buf = BytesMut::new();
        }
    }

    fn line(&self, conn: u64, direction: &str, index: u64, offset: u64, frame: &Bytes) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let time = format_time(now);
        match self.format {
            OutputFormat::Text | OutputFormat::Hex => {
                let payload = if self.format == OutputFormat::Text {
                    escape_text(frame)
                } else {
                    hex(frame)
                };
                format!(
                    "{time} #{conn} {direction} frame={index} offset={offset} len={} {payload}",
                    frame.len()
                )
            }
            OutputFormat::Json => {
                let mut obj = serde_json::json!({
                    "time": time,
                    "conn": conn,
                    "direction": direction,
                    "index": index,
                    "offset": offset,
                    "length": frame.len(),
                    "hex": hex(frame),
                });
                if let Ok(text) = std::str::from_utf8(frame) {
                    obj["text"] = serde_json::Value::String(text.to_string());
                }
                obj.to_string()
            }
        }
    }
}

impl ChaosTap for FrameTap {
    fn forwarded(&self, conn: u64, to_upstream: bool, bytes: &[u8]) {
        let direction = if to_upstream { TO_UPSTREAM } else { TO_CLIENT };
        let mut conns = self.conns();
        let sides = conns.entry(conn).or_insert_with(|| {
            [
                Direction::new(self.template.reset()),
                Direction::new(self.template.reset()),
            ]
        });
        let d = &mut sides[direction];
        if d.stopped {
            return;
        }
        d.buf.extend_from_slice(bytes);
        self.decode(conn, direction, d, false);
    }

    fn closed(&self, conn: u64) {
        let Some(mut sides) = self.conns().remove(&conn) else {
            return;
        };
        for (direction, d) in sides.iter_mut().enumerate() {
            // The last frames of framings that end at the end of the stream, or the error
            // for a frame cut short.
            self.decode(conn, direction, d, true);
        }
    }
}

/// One line for the printing thread.
enum Line {
    Out(String),
    Err(String),
    Stop,
}

impl Line {
    fn size(&self) -> usize {
        match self {
            Line::Out(s) | Line::Err(s) => s.len(),
            Line::Stop => 0,
        }
    }
}

/// Prints lines on a thread of its own, from a bounded queue.
struct Printer {
    tx: SyncSender<Line>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Printer {
    fn start() -> Printer {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = {
            let (queued, dropped) = (queued.clone(), dropped.clone());
            std::thread::Builder::new()
                .name("show".into())
                .spawn(move || print_lines(rx, &queued, &dropped))
                .ok()
        };
        Printer {
            tx,
            queued,
            dropped,
            thread: Mutex::new(thread),
        }
    }

    fn out(&self, line: String) {
        self.send(Line::Out(line));
    }

    fn err(&self, line: String) {
        self.send(Line::Err(line));
    }

    /// Queues `line`, or counts it dropped when the queue is full.
    fn send(&self, line: Line) {
        let size = line.size();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(size, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn finish(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // Waits for room: the thread is draining the queue.
            let _ = self.tx.send(Line::Stop);
            let _ = thread.join();
        }
    }
}

fn print_lines(rx: Receiver<Line>, queued: &AtomicUsize, dropped: &AtomicU64) {
    let mut out = io::stdout();
    let mut err = io::stderr();
    while let Ok(line) = rx.recv() {
        queued.fetch_sub(line.size(), Ordering::Relaxed);
        let missed = dropped.swap(0, Ordering::Relaxed);
        if missed > 0 {
            let _ = writeln!(
                err,
                "[show] {missed} line(s) not shown: the output did not keep up"
            );
        }
        let written = match line {
            Line::Out(s) => writeln!(out, "{s}").and_then(|()| out.flush()),
            Line::Err(s) => writeln!(err, "{s}"),
            Line::Stop => break,
        };
        if written.is_err() {
            // stdout closed (a pipe whose reader left): stop printing, the proxy carries on.
            break;
        }
    }
    let missed = dropped.swap(0, Ordering::Relaxed);
    if missed > 0 {
        let _ = writeln!(
            err,
            "[show] {missed} line(s) not shown: the output did not keep up"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(spec: &str) -> FrameTap {
        FrameTap::new(spec.parse().unwrap(), OutputFormat::Json)
    }

    #[test]
    fn directions_decode_apart_and_a_bad_one_stops_alone() {
        let t = tap("line,max=8");
        t.forwarded(0, true, b"hel");
        t.forwarded(0, false, b"this line is far too long\n");
        t.forwarded(0, true, b"lo\nwor");
        t.forwarded(0, false, b"ok\n");
        t.forwarded(0, true, b"ld\n");
        let conns = t.conns();
        let sides = &conns[&0];
        assert_eq!(sides[TO_UPSTREAM].frames, 2);
        assert!(!sides[TO_UPSTREAM].stopped);
        assert!(sides[TO_CLIENT].stopped);
        assert_eq!(sides[TO_CLIENT].frames, 0);
        assert!(sides[TO_CLIENT].buf.is_empty());
        drop(conns);
        t.closed(0);
        assert!(t.conns().is_empty());
        t.finish();
    }

    #[test]
    fn lines_carry_the_connection_direction_and_frame() {
        let t = FrameTap::new("length:2".parse().unwrap(), OutputFormat::Text);
        let line = t.line(3, "upstream->client", 1, 6, &Bytes::from_static(b"hi\n"));
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && time.len() == 27, "{time}");
        assert_eq!(rest, "#3 upstream->client frame=1 offset=6 len=3 hi\\n");
        t.finish();
    }

    #[test]
    fn a_full_queue_drops_lines_instead_of_growing() {
        let (tx, _rx) = mpsc::sync_channel(2);
        let printer = Printer {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            thread: Mutex::new(None),
        };
        for _ in 0..5 {
            printer.out("x".repeat(10));
        }
        assert_eq!(printer.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(printer.queued.load(Ordering::Relaxed), 20);
        printer.out("y".repeat(QUEUE_BYTES));
        assert_eq!(printer.dropped.load(Ordering::Relaxed), 4);
    }
}
