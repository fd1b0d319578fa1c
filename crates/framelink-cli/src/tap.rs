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
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use framelink::{FrameDecoder, Framing};
use framelink_chaos::ChaosTap;

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
        FrameTap::with_output(
            framing,
            format,
            Box::new(io::stdout()),
            Box::new(io::stderr()),
        )
    }

    /// Like [`new`](Self::new), printing frames to `out` and errors to `err`.
    fn with_output(framing: Framing, format: OutputFormat, out: Output, err: Output) -> FrameTap {
        FrameTap {
            template: framing,
            format,
            conns: Mutex::new(HashMap::new()),
            printer: Printer::start(out, err),
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
                Err(e) if eof => {
                    self.printer.err(format!(
                        "[show] #{conn} {name}: connection closed after {} frames: {e}",
                        d.frames
                    ));
                    d.stopped = true;
                    d.buf = BytesMut::new();
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

/// Where the printing thread writes.
type Output = Box<dyn Write + Send>;

/// Prints lines on a thread of its own, from a bounded queue.
struct Printer {
    tx: SyncSender<Line>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Printer {
    fn start(out: Output, err: Output) -> Printer {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let thread = {
            let (queued, dropped) = (queued.clone(), dropped.clone());
            std::thread::Builder::new()
                .name("show".into())
                .spawn(move || print_lines(rx, &queued, &dropped, out, err))
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

fn print_lines(
    rx: Receiver<Line>,
    queued: &AtomicUsize,
    dropped: &AtomicU64,
    out: Output,
    mut err: Output,
) {
    // Written in batches: flushed whenever the queue is empty, so a line waits only while
    // more are coming.
    let mut out = io::BufWriter::new(out);
    let report_dropped = |err: &mut Output| {
        let missed = dropped.swap(0, Ordering::Relaxed);
        if missed > 0 {
            let _ = writeln!(
                err,
                "[show] {missed} line(s) not shown: the output did not keep up"
            );
        }
    };
    loop {
        let line = match rx.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    break;
                }
                match rx.recv() {
                    Ok(line) => line,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        queued.fetch_sub(line.size(), Ordering::Relaxed);
        report_dropped(&mut err);
        let written = match line {
            Line::Out(s) => writeln!(out, "{s}"),
            Line::Err(s) => out.flush().and_then(|()| writeln!(err, "{s}")),
            Line::Stop => break,
        };
        if written.is_err() {
            // stdout closed (a pipe whose reader left): stop printing, the proxy carries on.
            break;
        }
    }
    let _ = out.flush();
    report_dropped(&mut err);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A tap printing to buffers: (tap, stdout, stderr).
    fn tap(spec: &str, format: OutputFormat) -> (FrameTap, Shared, Shared) {
        let (out, err) = (Shared::default(), Shared::default());
        let tap = FrameTap::with_output(
            spec.parse().unwrap(),
            format,
            Box::new(out.clone()),
            Box::new(err.clone()),
        );
        (tap, out, err)
    }

    #[test]
    fn directions_decode_apart_and_a_bad_one_stops_alone() {
        let (t, out, err) = tap("line,max=8", OutputFormat::Json);
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
        let lines: Vec<serde_json::Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["text"], "hello");
        assert_eq!(lines[1]["text"], "world");
        assert_eq!(lines[1]["offset"], 6);
        assert_eq!(lines[1]["direction"], "client->upstream");
        assert_eq!(
            err.text(),
            "[show] #0 upstream->client: error after 0 frames: frame of 25 bytes exceeds the \
             limit of 8 bytes (at stream offset 0); this direction is no longer shown \
             (forwarding goes on)\n"
        );
    }

    #[test]
    fn a_connection_closed_inside_a_frame_says_so() {
        let (t, out, err) = tap("length:2", OutputFormat::Hex);
        t.forwarded(4, false, b"\x00\x02hi\x00\x09ab");
        t.closed(4);
        t.finish();
        assert!(out
            .text()
            .ends_with(" #4 upstream->client frame=0 offset=2 len=2 6869\n"));
        assert_eq!(
            err.text(),
            "[show] #4 upstream->client: connection closed after 1 frames: stream ended inside \
             a frame: 4 bytes buffered of 11 expected (at stream offset 4)\n"
        );
    }

    #[test]
    fn lines_carry_the_connection_direction_and_frame() {
        let (t, _, _) = tap("length:2", OutputFormat::Text);
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
