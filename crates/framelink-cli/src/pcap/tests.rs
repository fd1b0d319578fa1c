//! The engine on segments built in memory: what each frame is reported with, and what happens
//! around gaps, resets and filters. (The capture file path is tested in `tests/pcap.rs`.)

use framelink::FrameEncoder;

use super::*;

const CLIENT: &str = "10.0.0.1:40000";
const SERVER: &str = "10.0.0.2:7000";
const CLIENT_ISN: u32 = 1000;
const SERVER_ISN: u32 = 5000;

struct Script {
    engine: Engine,
    outputs: Vec<Output>,
    packet: u64,
}

impl Script {
    fn new(framing: &str) -> Script {
        Script::with(framing, PcapOptions::default())
    }

    fn with(framing: &str, options: PcapOptions) -> Script {
        Script {
            engine: Engine::new(framing.parse().unwrap(), options),
            outputs: Vec::new(),
            packet: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(&mut self, src: &str, dst: &str, seq: u32, flags: &str, payload: &[u8]) {
        self.packet += 1;
        let segment = TcpSegment {
            packet: self.packet,
            ts: Duration::from_millis(self.packet),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq,
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            payload: payload.to_vec(),
        };
        self.engine.packet(Packet::Tcp(segment), &mut self.outputs);
    }

    fn handshake(&mut self) {
        self.raw(CLIENT, SERVER, CLIENT_ISN, "S", b"");
        self.raw(SERVER, CLIENT, SERVER_ISN, "SA", b"");
    }

    /// Client data at stream offset `offset`.
    fn up(&mut self, offset: u32, payload: &[u8]) {
        self.raw(CLIENT, SERVER, CLIENT_ISN + 1 + offset, "A", payload);
    }

    /// Server data at stream offset `offset`.
    fn down(&mut self, offset: u32, payload: &[u8]) {
        self.raw(SERVER, CLIENT, SERVER_ISN + 1 + offset, "A", payload);
    }

    fn finish(&mut self) {
        self.engine.finish(&mut self.outputs);
    }

    fn frames(&self) -> Vec<&FrameRecord> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Frame(f) => Some(f),
                Output::Note(_) => None,
            })
            .collect()
    }

    fn payloads(&self) -> Vec<String> {
        self.frames()
            .iter()
            .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
            .collect()
    }

    fn notes(&self) -> Vec<&str> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Note(n) => Some(n.as_str()),
                Output::Frame(_) => None,
            })
            .collect()
    }
}

fn len4(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn glued_frames_share_their_segment() {
    let mut s = Script::new("length:4");
    s.handshake();
    let glued = [len4(b"one"), len4(b"two"), len4(b"three")].concat();
    s.up(0, &glued);
    s.finish();
    assert_eq!(s.payloads(), ["one", "two", "three"]);
    for (i, f) in s.frames().iter().enumerate() {
        assert_eq!(f.index, i as u64);
        assert_eq!(f.segments, 1);
        assert_eq!(f.shared, 3);
        assert_eq!(f.last_packet, 3);
        assert_eq!(f.src.to_string(), CLIENT);
        assert_eq!(f.dst.to_string(), SERVER);
        assert!(f.to_server);
    }
    assert_eq!(s.frames()[1].offset, 4 + 3 + 4);
    assert!(s.notes().is_empty(), "{:?}", s.notes());
}

#[test]
fn a_split_frame_counts_its_segments_and_takes_the_last_ones_time() {
    let mut s = Script::new("length:4");
    s.handshake();
    let frame = len4(b"a frame in three pieces");
    s.up(0, &frame[..2]);
    s.up(2, &frame[2..10]);
    // The rest, with the next frame's first byte.
    let next = len4(b"next");
    s.up(10, &[&frame[10..], &next[..1]].concat());
    s.up(frame.len() as u32 + 1, &next[1..]);
    s.finish();
    let frames = s.frames();
    assert_eq!(s.payloads(), ["a frame in three pieces", "next"]);
    assert_eq!(frames[0].segments, 3);
    assert_eq!(frames[0].shared, 1);
    assert_eq!(frames[0].ts, Duration::from_millis(5));
    assert_eq!(frames[1].segments, 2);
    assert_eq!(frames[1].last_packet, 6);
}

#[test]
fn out_of_order_and_retransmitted_segments_in_both_directions() {
    let mut s = Script::new("line");
    s.handshake();
    s.up(6, b"world\n");
    s.down(0, b"pong\n");
    s.up(0, b"hello\n");
    s.up(0, b"hello\n"); // a retransmission
    s.down(3, b"g\nping\n"); // overlaps
    s.finish();
    assert_eq!(s.payloads(), ["pong", "hello", "world", "ping"]);
    let frames = s.frames();
    assert!(!frames[0].to_server);
    assert_eq!(frames[0].src.to_string(), SERVER);
    // "hello" and "world" became readable with packet 5 (hello): they are two segments,
    // each frame in one, both at packet 5's time.
    assert_eq!(frames[1].ts, Duration::from_millis(5));
    assert_eq!(frames[2].ts, Duration::from_millis(5));
    assert_eq!((frames[1].last_packet, frames[2].last_packet), (5, 3));
    assert_eq!((frames[1].shared, frames[2].shared), (1, 1));
    assert_eq!(frames[3].index, 1);
    assert!(s
        .engine
        .summary()
        .contains("1 retransmitted, 1 out of order, 1 overlapping"));
}

#[test]
fn a_gap_stops_a_length_prefixed_direction() {
    let mut s = Script::new("length:4");
    s.handshake();
    let frames = [len4(b"first"), len4(b"second"), len4(b"third")];
    s.up(0, &frames[0]);
    // The first 4 bytes of "second" are never captured.
    s.up(9 + 4, &frames[1][4..]);
    s.up(9 + 10, &frames[2]);
    s.down(0, &len4(b"the other way is fine"));
    s.finish();
    assert_eq!(s.payloads(), ["first", "the other way is fine"]);
    let notes = s.notes().join("\n");
    assert!(
        notes.contains("gap: 4 bytes missing at stream offset 9 (never captured)"),
        "{notes}"
    );
    assert!(
        notes.contains("length-prefixed framing cannot find the next frame"),
        "{notes}"
    );
    assert_eq!(s.engine.stopped_early, 1);
}

#[test]
fn a_magic_framing_resynchronises_after_a_gap() {
    let framing: Framing = "magic:cafe,crc=crc32".parse().unwrap();
    let encode = |p: &[u8]| {
        let mut b = BytesMut::new();
        framing.encode(p, &mut b).unwrap();
        b.to_vec()
    };
    let frames = [encode(b"alpha"), encode(b"bravo"), encode(b"charlie")];
    let mut s = Script::new("magic:cafe,crc=crc32");
    s.handshake();
    let first = frames[0].len() as u32;
    s.up(0, &frames[0]);
    // 3 bytes of "bravo"'s header missing; its remains are skipped, "charlie" decodes.
    s.up(first + 3, &[&frames[1][3..], &frames[2][..]].concat());
    s.finish();
    assert_eq!(s.payloads(), ["alpha", "charlie"]);
    assert_eq!(s.frames()[1].index, 1);
    let notes = s.notes().join("\n");
    assert!(
        notes.contains("resynchronising on the next magic marker"),
        "{notes}"
    );
    assert!(notes.contains("warning: "), "{notes}");
    assert_eq!(s.engine.stopped_early, 0);
}

#[test]
fn a_line_framing_skips_to_the_next_delimiter_after_a_gap() {
    let mut s = Script::new("line");
    s.handshake();
    s.up(0, b"one\ntw");
    s.up(8, b"o\nthree\n");
    s.finish();
    assert_eq!(s.payloads(), ["one", "three"]);
    let notes = s.notes().join("\n");
    assert!(
        notes.contains("the frame being decoded (2 bytes from stream offset 4) is lost"),
        "{notes}"
    );
    assert!(
        notes.contains("resynchronised at stream offset 10"),
        "{notes}"
    );
    assert_eq!(s.frames()[1].offset, 10);
}

#[test]
fn a_fixed_framing_resumes_at_the_next_boundary() {
    let mut s = Script::new("fixed:4");
    s.handshake();
    s.up(0, b"AAAABB");
    s.up(9, b"CCCDDDD");
    s.finish();
    assert_eq!(s.payloads(), ["AAAA", "DDDD"]);
    assert_eq!(s.frames()[1].offset, 12);
}

#[test]
fn a_full_reassembly_buffer_is_reported_as_a_gap() {
    let options = PcapOptions {
        reassembly_buffer: 8,
        ..PcapOptions::default()
    };
    let mut s = Script::with("line", options);
    s.handshake();
    s.up(0, b"a\n");
    s.up(4, b"c\nd\n");
    s.up(8, b"e\nf\n"); // 8 bytes wait: over the cap of 8? no, at it
    assert!(s.notes().is_empty());
    s.up(12, b"g\n"); // 10 bytes: the hole at 2..4 is given up
    let notes = s.notes().join("\n");
    assert!(
        notes.contains("gap: 2 bytes missing at stream offset 2 (the out-of-order buffer reached its cap of 8 bytes"),
        "{notes}"
    );
    s.finish();
    // "c" is the tail of the frame cut by the gap.
    assert_eq!(s.payloads(), ["a", "d", "e", "f", "g"]);
}

#[test]
fn a_reset_inside_a_frame_is_reported() {
    let mut s = Script::new("length:4");
    s.handshake();
    let frame = len4(b"never finished");
    s.up(0, &frame[..10]);
    s.raw(SERVER, CLIENT, SERVER_ISN + 1, "RA", b"");
    // Packets after the reset are ignored.
    s.up(10, &frame[10..]);
    s.finish();
    assert!(s.payloads().is_empty());
    let notes = s.notes().join("\n");
    assert!(
        notes.contains(
            "the connection was reset inside a frame: 10 of 18 bytes of it from stream offset 0"
        ),
        "{notes}"
    );
}

#[test]
fn a_fin_inside_a_frame_is_a_truncated_frame() {
    let mut s = Script::new("length:4");
    s.handshake();
    s.raw(CLIENT, SERVER, CLIENT_ISN + 1, "FA", &len4(b"cut")[..5]);
    let notes = s.notes().join("\n");
    assert!(
        notes.contains("stream ended inside a frame: 5 bytes buffered of 7 expected"),
        "{notes}"
    );
    assert_eq!(s.engine.stopped_early, 1);
}

#[test]
fn a_new_syn_on_the_same_addresses_is_a_new_connection() {
    let mut s = Script::new("line");
    s.handshake();
    s.up(0, b"first\n");
    s.raw(CLIENT, SERVER, CLIENT_ISN + 7, "FA", b"");
    s.raw(SERVER, CLIENT, SERVER_ISN + 1, "FA", b"");
    s.raw(CLIENT, SERVER, CLIENT_ISN + 8, "A", b""); // the last ACK
    s.raw(CLIENT, SERVER, 90_000, "S", b"");
    s.raw(CLIENT, SERVER, 90_001, "A", b"second\n");
    s.finish();
    let streams: Vec<u64> = s.frames().iter().map(|f| f.stream).collect();
    assert_eq!(s.payloads(), ["first", "second"]);
    assert_eq!(streams, [0, 1]);
    assert!(s.notes().is_empty(), "{:?}", s.notes());
}

#[test]
fn filters_keep_matching_connections_only() {
    let options = PcapOptions {
        ports: vec![7000],
        ..PcapOptions::default()
    };
    let mut s = Script::with("line", options);
    s.handshake();
    s.up(0, b"kept\n");
    s.raw("10.0.0.1:40001", "10.0.0.3:8000", 1, "A", b"dropped\n");
    s.finish();
    assert_eq!(s.payloads(), ["kept"]);
    let options = PcapOptions {
        hosts: vec!["10.0.0.3".parse().unwrap()],
        ..PcapOptions::default()
    };
    let mut s = Script::with("line", options);
    s.handshake();
    s.up(0, b"dropped\n");
    s.raw("10.0.0.1:40001", "10.0.0.3:8000", 1, "A", b"kept\n");
    s.finish();
    assert_eq!(s.payloads(), ["kept"]);
    // Without a SYN, the higher port is the client.
    assert!(s.frames()[0].to_server);
}

#[test]
fn times_print_as_utc() {
    assert_eq!(format_time(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        format_time(Duration::new(1_764_633_600 + 3_723, 123_456_789)),
        "2025-12-02T01:02:03.123456Z"
    );
    assert_eq!(
        format_time(Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000000Z"
    );
}

/// Runs a whole capture held in memory through the engine; false if the file is refused.
fn run_capture(bytes: &[u8], framing: &str) -> bool {
    let Ok(mut reader) = CaptureReader::new(bytes) else {
        return false;
    };
    let mut engine = Engine::new(framing.parse().unwrap(), PcapOptions::default());
    let mut outputs = Vec::new();
    while let Some(Ok(packet)) = reader.next_packet() {
        engine.packet(packet, &mut outputs);
    }
    engine.finish(&mut outputs);
    let _ = engine.summary();
    true
}

const REAL: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/loopback_length4.pcap"
));

#[test]
fn damaged_capture_files_never_panic() {
    assert!(run_capture(REAL, "length:4"));
    // Cut short at many points (opening a file costs pcap-file a large buffer: not at every
    // byte), and with any byte of the file header or the first record headers changed.
    for len in (0..REAL.len()).step_by(7) {
        run_capture(&REAL[..len], "length:4");
    }
    let mut damaged = REAL.to_vec();
    for i in 0..24 + 3 * 16 {
        damaged[i] ^= 0xff;
        run_capture(&damaged, "length:4");
        damaged[i] ^= 0xff;
    }
}

#[test]
fn damaged_packets_never_panic() {
    let mut packets = Vec::new();
    let mut raw = pcap_file::pcap::PcapReader::new(REAL).unwrap();
    while let Some(packet) = raw.next_packet() {
        packets.push(packet.unwrap().data.into_owned());
    }
    // Every byte of every packet changed in turn (flags, lengths, sequence numbers, headers),
    // the rest of the capture as it was.
    for (k, flips) in [0x01u8, 0x80, 0xff].into_iter().enumerate() {
        for target in 0..packets.len() {
            for i in 0..packets[target].len() {
                let framing = ["length:4", "magic:cafe", "line"][k];
                let mut engine = Engine::new(framing.parse().unwrap(), PcapOptions::default());
                let mut outputs = Vec::new();
                for (n, data) in packets.iter().enumerate() {
                    let mut data = data.clone();
                    if n == target {
                        data[i] ^= flips;
                    }
                    let ts = Duration::from_millis(n as u64);
                    let packet = capture::parse(
                        pcap_file::DataLink::ETHERNET,
                        &data,
                        false,
                        n as u64 + 1,
                        ts,
                    );
                    engine.packet(packet, &mut outputs);
                }
                engine.finish(&mut outputs);
            }
        }
    }
}
