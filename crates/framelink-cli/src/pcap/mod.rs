//! `framelink decode --pcap FILE`: the frames of every TCP connection in a packet capture
//! (pcap or pcapng, as tcpdump, Wireshark or dumpcap write them), in both directions.
//!
//! This module owns the path from captured segments to printed frames: connections are told
//! apart by their address pair (and a new SYN), each direction is put back in order by a
//! [`reassembly::Reassembler`] and decoded by its own copy of the framing. Each frame is
//! printed with its connection, direction, the capture time of the segment that completed it,
//! and how the sender's bytes were cut: how many segments the frame spanned and how many
//! frames shared its last segment (glued frames). Bytes missing from the capture are reported
//! as a gap at a stream offset; after one, framings that can find the next frame boundary on
//! their own (magic marker, delimiter, fixed size) carry on, and length-prefixed framings stop
//! decoding that direction. Memory is bounded: out-of-order segments wait in a buffer capped per
//! direction ([`DEFAULT_REASSEMBLY_BUFFER`]) and a decoder holds at most one frame.
//!
//! [`capture`] reads the file; [`reassembly`] reorders segments.

mod capture;
mod reassembly;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use framelink::proto::codec::AnyCodec;
use framelink::{FrameDecoder, Framing};

use crate::stream_tools::{escape_text, hex, payload_offset};
use crate::OutputFormat;
use capture::{CaptureReader, Packet, Skipped, TcpSegment};
use reassembly::{Delivery, GapReason, Reassembler, ReassemblyStats};

/// Out-of-order bytes each direction may hold while waiting for a hole to be filled (4 MiB).
pub const DEFAULT_REASSEMBLY_BUFFER: usize = 4 << 20;

/// What `decode --pcap` looks at.
#[derive(Debug, Clone)]
pub struct PcapOptions {
    /// Only connections with one of these addresses on either side (all when empty).
    pub hosts: Vec<IpAddr>,
    /// Only connections with one of these ports on either side (all when empty).
    pub ports: Vec<u16>,
    /// Cap of each direction's out-of-order buffer, in bytes.
    pub reassembly_buffer: usize,
}

impl Default for PcapOptions {
    fn default() -> Self {
        PcapOptions {
            hosts: Vec::new(),
            ports: Vec::new(),
            reassembly_buffer: DEFAULT_REASSEMBLY_BUFFER,
        }
    }
}

/// Decodes every TCP connection of the capture at `input` (`-`: standard input) and prints
/// the frames to stdout in `format`; gaps, decode errors and a summary go to stderr. Exit
/// status 1 when a direction had to stop early (a decode error, or a gap its framing cannot
/// get past) or the file is damaged.
pub fn decode(
    framing: Framing,
    format: OutputFormat,
    input: &Path,
    options: &PcapOptions,
) -> Result<ExitCode> {
    let reader: Box<dyn Read> = if input == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(input).with_context(|| format!("cannot open {}", input.display()))?)
    };
    let mut capture = match CaptureReader::new(reader) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("framelink: {}: {e}", input.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut engine = Engine::new(framing, options.clone());
    let mut outputs = Vec::new();
    let mut damaged = false;
    while let Some(packet) = capture.next_packet() {
        match packet {
            Ok(packet) => engine.packet(packet, &mut outputs),
            Err(e) => {
                out.flush()?;
                eprintln!("framelink: {}: {e}", input.display());
                damaged = true;
                break;
            }
        }
        emit(&mut out, format, &mut outputs)?;
    }
    engine.finish(&mut outputs);
    emit(&mut out, format, &mut outputs)?;
    out.flush()?;
    eprintln!("framelink: {}", engine.summary());
    Ok(if damaged || engine.stopped_early > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn emit(out: &mut impl Write, format: OutputFormat, outputs: &mut Vec<Output>) -> Result<()> {
    for output in outputs.drain(..) {
        match output {
            Output::Frame(frame) => print_frame(out, format, &frame)?,
            Output::Note(note) => {
                out.flush()?;
                eprintln!("framelink: {note}");
            }
        }
    }
    Ok(())
}

/// One decoded frame and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    /// Connection number, from 0 in the order connections appear in the capture.
    pub stream: u64,
    /// Sender of this frame.
    pub src: SocketAddr,
    /// Receiver of this frame.
    pub dst: SocketAddr,
    /// Sent by the client (the side that sent the SYN; without one, the side with the higher
    /// port).
    pub to_server: bool,
    /// Frame number in this direction, from 0.
    pub index: u64,
    /// Stream offset of the first payload byte.
    pub offset: u64,
    /// Capture time of the segment that completed the frame.
    pub ts: Duration,
    /// The payload.
    pub payload: Bytes,
    /// TCP segments the frame's bytes (header included) came in.
    pub segments: u64,
    /// Frames (this one included) whose last byte came in the same segment as this one's.
    pub shared: u64,
    /// Number of the captured packet that carried the frame's last byte.
    pub last_packet: u64,
}

/// What the engine has to say: a frame for stdout, or a note for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A decoded frame.
    Frame(FrameRecord),
    /// A gap, a decode error, a resynchronisation: one line for stderr.
    Note(String),
}

/// Which way a frame goes, as an index into [`Conn::sides`].
const TO_SERVER: usize = 0;
const TO_CLIENT: usize = 1;

fn direction_name(side: usize) -> &'static str {
    if side == TO_SERVER {
        "client->server"
    } else {
        "server->client"
    }
}

/// Turns packets into frames and notes (see the [module docs](self)).
pub struct Engine {
    template: Framing,
    options: PcapOptions,
    /// Connections by (lower address, higher address).
    conns: HashMap<(SocketAddr, SocketAddr), Conn>,
    next_stream: u64,
    packets: u64,
    tcp_segments: u64,
    skipped: HashMap<Skipped, u64>,
    filtered_out: u64,
    frames: u64,
    totals: ReassemblyStats,
    /// Directions that stopped before their end.
    stopped_early: u64,
}

struct Conn {
    stream: u64,
    client: SocketAddr,
    server: SocketAddr,
    /// The two directions, [`TO_SERVER`] and [`TO_CLIENT`]; empty once `done`, so that a
    /// finished connection costs only its addresses.
    sides: Vec<Side>,
    /// Closed by RST or both FINs, or replaced: later packets are ignored unless a new SYN
    /// starts a new connection on the same addresses.
    done: bool,
    /// Capture time of the connection's latest segment.
    last_ts: Duration,
}

struct Side {
    reassembler: Reassembler,
    decoder: StreamDecoder,
}

impl Engine {
    /// An engine decoding each direction with a fresh copy of `framing`.
    pub fn new(framing: Framing, options: PcapOptions) -> Engine {
        Engine {
            template: framing,
            options,
            conns: HashMap::new(),
            next_stream: 0,
            packets: 0,
            tcp_segments: 0,
            skipped: HashMap::new(),
            filtered_out: 0,
            frames: 0,
            totals: ReassemblyStats::default(),
            stopped_early: 0,
        }
    }

    /// Takes the next packet of the capture.
    pub fn packet(&mut self, packet: Packet, outputs: &mut Vec<Output>) {
        self.packets += 1;
        match packet {
            Packet::Tcp(segment) => self.segment(segment, outputs),
            Packet::Skipped(why) => *self.skipped.entry(why).or_default() += 1,
        }
    }

    fn wanted(&self, s: &TcpSegment) -> bool {
        let o = &self.options;
        (o.hosts.is_empty() || o.hosts.contains(&s.src.ip()) || o.hosts.contains(&s.dst.ip()))
            && (o.ports.is_empty()
                || o.ports.contains(&s.src.port())
                || o.ports.contains(&s.dst.port()))
    }

    fn segment(&mut self, s: TcpSegment, outputs: &mut Vec<Output>) {
        if !self.wanted(&s) {
            self.filtered_out += 1;
            return;
        }
        self.tcp_segments += 1;
        let key = if s.src <= s.dst {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        };
        let opening = s.syn && !s.ack;
        let replace = match self.conns.get(&key) {
            None => true,
            // A new SYN on the same addresses: a new connection, unless it repeats the SYN
            // that opened this one.
            Some(conn) if opening => {
                conn.done
                    || conn.sides[TO_SERVER].reassembler.base() != Some(s.seq.wrapping_add(1))
                    || conn.client != s.src
            }
            Some(_) => false,
        };
        if replace {
            if let Some(mut old) = self.conns.remove(&key) {
                if !old.done {
                    outputs.push(Output::Note(format!(
                        "#{} {} <-> {}: a new SYN reuses the addresses; the connection ends here",
                        old.stream, old.client, old.server
                    )));
                    self.close(&mut old, "the connection was replaced", outputs);
                }
            }
            let (client, server) = if s.syn {
                if s.ack {
                    (s.dst, s.src)
                } else {
                    (s.src, s.dst)
                }
            } else if s.src.port() > s.dst.port() {
                (s.src, s.dst)
            } else {
                (s.dst, s.src)
            };
            let conn = Conn {
                stream: self.next_stream,
                client,
                server,
                sides: vec![self.new_side(), self.new_side()],
                done: false,
                last_ts: s.ts,
            };
            self.next_stream += 1;
            self.conns.insert(key, conn);
        }
        let mut conn = self.conns.remove(&key).expect("inserted above");
        if !conn.done {
            self.conn_segment(&mut conn, s, outputs);
        }
        self.conns.insert(key, conn);
    }

    fn new_side(&self) -> Side {
        Side {
            reassembler: Reassembler::new(self.options.reassembly_buffer),
            decoder: StreamDecoder::new(self.template.reset()),
        }
    }

    fn conn_segment(&mut self, conn: &mut Conn, s: TcpSegment, outputs: &mut Vec<Output>) {
        conn.last_ts = s.ts;
        let side = if s.src == conn.client {
            TO_SERVER
        } else {
            TO_CLIENT
        };
        let mut deliveries = Vec::new();
        conn.sides[side].reassembler.segment(
            s.seq,
            s.syn,
            s.fin,
            &s.payload,
            s.packet,
            &mut deliveries,
        );
        let mut batch = Vec::new();
        self.deliver(conn, side, deliveries, s.ts, &mut batch);
        if conn.sides[side].reassembler.is_finished() {
            self.end_side(conn, side, s.ts, &mut batch);
        }
        let both_ended = conn.sides.iter().all(|x| x.reassembler.is_finished());
        self.flush_batch(batch, outputs);
        if s.rst {
            self.close(conn, "the connection was reset", outputs);
        } else if both_ended {
            self.retire(conn);
        }
    }

    /// Nothing more is decoded on `conn`: its counters go to the totals, its state is freed.
    fn retire(&mut self, conn: &mut Conn) {
        for side in &conn.sides {
            add_stats(&mut self.totals, side.reassembler.stats());
        }
        conn.sides = Vec::new();
        conn.done = true;
    }

    /// Feeds deliveries to one direction's decoder; frames and notes go to `batch`.
    fn deliver(
        &mut self,
        conn: &mut Conn,
        side: usize,
        deliveries: Vec<Delivery>,
        ts: Duration,
        batch: &mut Vec<Output>,
    ) {
        let label = Label::new(conn, side);
        for delivery in deliveries {
            let decoder = &mut conn.sides[side].decoder;
            let was_stopped = decoder.is_stopped();
            match delivery {
                Delivery::Data {
                    offset,
                    bytes,
                    packet,
                } => decoder.data(offset, &bytes, packet, &label, ts, batch),
                Delivery::Gap {
                    offset,
                    len,
                    reason,
                } => {
                    let cap = self.options.reassembly_buffer;
                    decoder.gap(offset, len, reason, cap, &label, batch);
                }
            }
            if !was_stopped && conn.sides[side].decoder.is_stopped() {
                self.stopped_early += 1;
            }
        }
    }

    /// The direction's stream ended with a FIN: the last frames, or a truncated one.
    fn end_side(&mut self, conn: &mut Conn, side: usize, ts: Duration, batch: &mut Vec<Output>) {
        let label = Label::new(conn, side);
        let decoder = &mut conn.sides[side].decoder;
        let was_stopped = decoder.is_stopped();
        decoder.end(&label, ts, batch);
        if !was_stopped && decoder.is_stopped() {
            self.stopped_early += 1;
        }
    }

    /// The connection ends without (or before) its FINs: reset, replaced, or the capture is
    /// over. What waits is delivered with its gaps; an incomplete frame is reported.
    fn close(&mut self, conn: &mut Conn, why: &str, outputs: &mut Vec<Output>) {
        let mut batch = Vec::new();
        for side in [TO_SERVER, TO_CLIENT] {
            let mut deliveries = Vec::new();
            conn.sides[side].reassembler.finish(&mut deliveries);
            self.deliver(conn, side, deliveries, conn.last_ts, &mut batch);
            if conn.sides[side].reassembler.is_finished() {
                self.end_side(conn, side, conn.last_ts, &mut batch);
            } else {
                let label = Label::new(conn, side);
                conn.sides[side].decoder.abandon(&label, why, &mut batch);
            }
        }
        self.flush_batch(batch, outputs);
        self.retire(conn);
    }

    /// Counts, for each frame of the batch, the frames whose last byte came in the same
    /// segment, then hands the batch on.
    fn flush_batch(&mut self, mut batch: Vec<Output>, outputs: &mut Vec<Output>) {
        let mut per_segment: HashMap<(u64, bool, u64), u64> = HashMap::new();
        for output in &batch {
            if let Output::Frame(f) = output {
                *per_segment
                    .entry((f.stream, f.to_server, f.last_packet))
                    .or_default() += 1;
            }
        }
        for output in &mut batch {
            if let Output::Frame(f) = output {
                f.shared = per_segment[&(f.stream, f.to_server, f.last_packet)];
                self.frames += 1;
            }
        }
        outputs.append(&mut batch);
    }

    /// The capture is over: every connection still open is closed.
    pub fn finish(&mut self, outputs: &mut Vec<Output>) {
        let mut conns: Vec<_> = self.conns.drain().map(|(_, c)| c).collect();
        conns.sort_by_key(|c| c.stream);
        for mut conn in conns {
            if conn.done {
                continue;
            }
            self.close(&mut conn, "the capture ends", outputs);
        }
    }

    /// One line on what was read and decoded.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        let mut line = format!(
            "{} packets, {} TCP segments in {} connection(s), {} frames; {} retransmitted, {} out \
             of order, {} overlapping; {} gap(s), {} bytes missing",
            self.packets,
            self.tcp_segments,
            self.next_stream,
            self.frames,
            t.retransmitted,
            t.out_of_order,
            t.overlapping,
            t.gaps,
            t.gap_bytes
        );
        if self.filtered_out > 0 {
            line += &format!("; {} TCP segments filtered out", self.filtered_out);
        }
        let mut skipped: Vec<_> = self.skipped.iter().collect();
        skipped.sort();
        for (why, n) in skipped {
            line += &format!("; {n} packets skipped ({why})");
        }
        if self.stopped_early > 0 {
            line += &format!(
                "; {} direction(s) stopped before their end",
                self.stopped_early
            );
        }
        line
    }
}

fn add_stats(total: &mut ReassemblyStats, s: ReassemblyStats) {
    total.segments += s.segments;
    total.retransmitted += s.retransmitted;
    total.overlapping += s.overlapping;
    total.out_of_order += s.out_of_order;
    total.gaps += s.gaps;
    total.gap_bytes += s.gap_bytes;
    total.buffer_full += s.buffer_full;
}

/// Names a direction in frames and notes.
struct Label {
    stream: u64,
    src: SocketAddr,
    dst: SocketAddr,
    to_server: bool,
}

impl Label {
    fn new(conn: &Conn, side: usize) -> Label {
        let (src, dst) = if side == TO_SERVER {
            (conn.client, conn.server)
        } else {
            (conn.server, conn.client)
        };
        Label {
            stream: conn.stream,
            src,
            dst,
            to_server: side == TO_SERVER,
        }
    }

    fn note(&self, text: impl std::fmt::Display) -> Output {
        let dir = direction_name(if self.to_server { TO_SERVER } else { TO_CLIENT });
        Output::Note(format!(
            "#{} {} -> {} ({dir}): {text}",
            self.stream, self.src, self.dst
        ))
    }
}

/// How a decoder carries on after a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Decoding,
    /// Fixed-size frames: bytes before this stream offset are dropped, then decoding resumes
    /// on a frame boundary.
    SkipTo(u64),
    /// Delimited frames: the first "frame" after a gap is the tail of a lost one.
    SkipFirstFrame,
    /// A decode error, or a gap the framing cannot get past.
    Stopped,
    /// The stream ended (FIN) or the connection was closed.
    Ended,
}

/// One direction's framing decoder over the reassembled stream, with a record of which
/// captured packet carried which of its buffered bytes.
struct StreamDecoder {
    framing: Framing,
    buf: BytesMut,
    /// Stream offset where `framing` started (its `consumed()` counts from here).
    base: u64,
    /// For the buffered bytes: (stream offset just past the bytes, packet that carried them),
    /// in order.
    owners: VecDeque<(u64, u64)>,
    frames: u64,
    state: State,
}

impl StreamDecoder {
    fn new(framing: Framing) -> StreamDecoder {
        StreamDecoder {
            framing,
            buf: BytesMut::new(),
            base: 0,
            owners: VecDeque::new(),
            frames: 0,
            state: State::Decoding,
        }
    }

    fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Stream offset of the first buffered byte.
    fn position(&self) -> u64 {
        self.base + self.framing.consumed()
    }

    fn restart_at(&mut self, offset: u64, state: State) {
        self.framing = self.framing.reset();
        self.buf = BytesMut::new();
        self.owners.clear();
        self.base = offset;
        self.state = state;
    }

    fn data(
        &mut self,
        offset: u64,
        bytes: &[u8],
        packet: u64,
        label: &Label,
        ts: Duration,
        out: &mut Vec<Output>,
    ) {
        let mut bytes = bytes;
        let mut offset = offset;
        match self.state {
            State::Stopped | State::Ended => return,
            State::SkipTo(target) => {
                let end = offset + bytes.len() as u64;
                if end <= target {
                    return;
                }
                let skip = target.saturating_sub(offset) as usize;
                bytes = &bytes[skip..];
                offset += skip as u64;
                self.restart_at(offset, State::Decoding);
            }
            State::Decoding | State::SkipFirstFrame => {}
        }
        if bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        let end = offset + bytes.len() as u64;
        match self.owners.back_mut() {
            Some(last) if last.1 == packet => last.0 = end,
            _ => self.owners.push_back((end, packet)),
        }
        self.run(false, label, ts, out);
    }

    /// Decodes what is buffered; `eof` once the stream has ended.
    fn run(&mut self, eof: bool, label: &Label, ts: Duration, out: &mut Vec<Output>) {
        loop {
            let start = self.position();
            let before = (
                self.framing.consumed(),
                self.buf.as_ptr() as usize,
                self.buf.len(),
            );
            match self.framing.decode_with_eof(&mut self.buf, eof) {
                Ok(Some(payload)) => {
                    let end = self.position();
                    let offset = self.base + payload_offset(before, &payload);
                    if self.state == State::SkipFirstFrame {
                        self.state = State::Decoding;
                        out.push(label.note(format!(
                            "resynchronised at stream offset {end}: {} bytes skipped up to the \
                             end of the frame cut by the gap",
                            end - start
                        )));
                    } else {
                        let (segments, last_packet) = self.segments(start, end);
                        out.push(Output::Frame(FrameRecord {
                            stream: label.stream,
                            src: label.src,
                            dst: label.dst,
                            to_server: label.to_server,
                            index: self.frames,
                            offset,
                            ts,
                            payload,
                            segments,
                            shared: 1,
                            last_packet,
                        }));
                        self.frames += 1;
                    }
                    self.forget_consumed();
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    out.push(label.note(format!(
                        "warning: {} (at stream offset {})",
                        e.kind(),
                        self.base + e.offset()
                    )));
                    self.forget_consumed();
                }
                Err(e) => {
                    out.push(label.note(format!(
                        "error after {} frames: {} (at stream offset {}); no more frames are \
                         decoded in this direction",
                        self.frames,
                        e.kind(),
                        self.base + e.offset()
                    )));
                    self.stop();
                    return;
                }
            }
        }
    }

    /// Segments that carried stream bytes `start..end`, and the packet of the last byte.
    fn segments(&self, start: u64, end: u64) -> (u64, u64) {
        if end <= start {
            return (0, self.owners.front().map_or(0, |o| o.1));
        }
        // Owners are contiguous and in order, and the first starts at or before the first
        // buffered byte: one overlaps start..end if it ends past `start`, up to the first one
        // that reaches `end`.
        let mut count = 0;
        let mut last = 0;
        for &(owner_end, packet) in &self.owners {
            if owner_end > start {
                count += 1;
                last = packet;
            }
            if owner_end >= end {
                break;
            }
        }
        (count, last)
    }

    fn forget_consumed(&mut self) {
        let position = self.position();
        while self.owners.front().is_some_and(|o| o.0 <= position) {
            self.owners.pop_front();
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = BytesMut::new();
        self.owners.clear();
    }

    fn gap(
        &mut self,
        offset: u64,
        len: u64,
        reason: GapReason,
        cap: usize,
        label: &Label,
        out: &mut Vec<Output>,
    ) {
        if matches!(self.state, State::Stopped | State::Ended) {
            return;
        }
        let why = match reason {
            GapReason::BufferFull => format!(
                "the out-of-order buffer reached its cap of {cap} bytes (--reassembly-buffer) \
                 before they arrived"
            ),
            GapReason::NeverCaptured => "never captured".to_string(),
        };
        let mut text = format!("gap: {len} bytes missing at stream offset {offset} ({why})");
        if !self.buf.is_empty() && !matches!(self.state, State::SkipTo(_)) {
            text += &format!(
                "; the frame being decoded ({} bytes from stream offset {}) is lost",
                self.buf.len(),
                self.position()
            );
        }
        let resume = offset + len;
        match self.framing.codec() {
            AnyCodec::Magic(_) => {
                text += "; resynchronising on the next magic marker";
                self.restart_at(resume, State::Decoding);
            }
            AnyCodec::Lines(_) | AnyCodec::Delimiter(_) => {
                text += "; resynchronising after the next delimiter";
                self.restart_at(resume, State::SkipFirstFrame);
            }
            AnyCodec::Fixed(c) => {
                let size = c.config().length as u64;
                let next = resume.div_ceil(size).saturating_mul(size);
                text += &format!("; resuming at the next frame boundary, stream offset {next}");
                self.restart_at(next, State::SkipTo(next));
            }
            _ => {
                text += &format!(
                    "; a {} framing cannot find the next frame after a gap: no more frames are \
                     decoded in this direction",
                    kind_name(self.framing.codec())
                );
                self.stop();
            }
        }
        out.push(label.note(text));
    }

    /// The stream ended with a FIN.
    fn end(&mut self, label: &Label, ts: Duration, out: &mut Vec<Output>) {
        if matches!(self.state, State::Decoding | State::SkipFirstFrame) {
            self.run(true, label, ts, out);
        }
        if !self.is_stopped() {
            self.state = State::Ended;
        }
    }

    /// The connection ends before this direction's FIN.
    fn abandon(&mut self, label: &Label, why: &str, out: &mut Vec<Output>) {
        if matches!(self.state, State::Decoding | State::SkipFirstFrame) && !self.buf.is_empty() {
            let expected = match self.framing.pending_frame_length(&self.buf) {
                Some(n) => format!(" of {n}"),
                None => String::new(),
            };
            out.push(label.note(format!(
                "{why} inside a frame: {}{expected} bytes of it from stream offset {}",
                self.buf.len(),
                self.position()
            )));
        }
        if !self.is_stopped() {
            self.state = State::Ended;
        }
    }
}

fn kind_name(codec: &AnyCodec) -> &'static str {
    match codec {
        AnyCodec::LengthField(_) => "length-prefixed",
        AnyCodec::Varint(_) => "varint-prefixed",
        AnyCodec::Netstring(_) => "netstring",
        AnyCodec::Delimiter(_) => "delimiter",
        AnyCodec::Lines(_) => "line",
        AnyCodec::Fixed(_) => "fixed-size",
        AnyCodec::Magic(_) => "magic",
    }
}

/// `2026-12-01T22:06:00.123456Z` for a time since the Unix epoch.
pub fn format_time(ts: Duration) -> String {
    let secs = ts.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ts.subsec_micros()
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn print_frame(out: &mut impl Write, format: OutputFormat, f: &FrameRecord) -> Result<()> {
    let dir = direction_name(if f.to_server { TO_SERVER } else { TO_CLIENT });
    match format {
        OutputFormat::Text | OutputFormat::Hex => {
            let payload = if format == OutputFormat::Text {
                escape_text(&f.payload)
            } else {
                hex(&f.payload)
            };
            writeln!(
                out,
                "{} #{} {} -> {} {dir} frame={} offset={} len={} segments={} shared={} {payload}",
                format_time(f.ts),
                f.stream,
                f.src,
                f.dst,
                f.index,
                f.offset,
                f.payload.len(),
                f.segments,
                f.shared,
            )?;
        }
        OutputFormat::Json => {
            let mut obj = serde_json::json!({
                "time": format_time(f.ts),
                "ts_ns": u64::try_from(f.ts.as_nanos()).unwrap_or(u64::MAX),
                "stream": f.stream,
                "src": f.src.to_string(),
                "dst": f.dst.to_string(),
                "direction": dir,
                "index": f.index,
                "offset": f.offset,
                "length": f.payload.len(),
                "segments": f.segments,
                "shared": f.shared,
                "packet": f.last_packet,
                "hex": hex(&f.payload),
            });
            if let Ok(text) = std::str::from_utf8(&f.payload) {
                obj["text"] = serde_json::Value::String(text.to_string());
            }
            writeln!(out, "{obj}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
