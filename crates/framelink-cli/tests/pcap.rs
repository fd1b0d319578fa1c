//! `framelink decode --pcap` as a user runs it, on capture files: files written here with
//! `pcap-file`'s writers around packets built with `etherparse` (Ethernet, Linux cooked, BSD
//! loopback, raw IP; IPv4 and IPv6; pcap and pcapng) in chosen segment orders, and two real
//! tcpdump captures from `tests/data`.

mod common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run, PATIENCE};
use etherparse::{LinuxSllPacketType, PacketBuilder};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde_json::Value;

const CLIENT: ([u8; 4], u16) = ([10, 1, 0, 1], 40000);
const SERVER: ([u8; 4], u16) = ([10, 1, 0, 2], 7000);
const CLIENT_ISN: u32 = 0xffff_fff0; // wraps within the first frames
const SERVER_ISN: u32 = 77;
/// Capture times start here: 2026-01-02T03:04:05Z.
const EPOCH: u64 = 1_767_323_045;

/// One segment: who sends it, stream offset (from the first byte after the SYN), flags, bytes.
#[derive(Clone)]
struct Seg {
    from_client: bool,
    offset: u32,
    flags: &'static str,
    payload: Vec<u8>,
}

fn up(offset: usize, payload: &[u8]) -> Seg {
    Seg {
        from_client: true,
        offset: offset as u32,
        flags: "A",
        payload: payload.to_vec(),
    }
}

fn down(offset: usize, payload: &[u8]) -> Seg {
    Seg {
        from_client: false,
        offset: offset as u32,
        flags: "A",
        payload: payload.to_vec(),
    }
}

fn flags(from_client: bool, offset: usize, flags: &'static str) -> Seg {
    Seg {
        from_client,
        offset: offset as u32,
        flags,
        payload: Vec::new(),
    }
}

fn handshake() -> Vec<Seg> {
    vec![flags(true, 0, "S"), flags(false, 0, "SA")]
}

/// How packets are wrapped.
#[derive(Clone, Copy)]
enum Link {
    Ethernet,
    LinuxSll,
    Null,
    Raw,
}

/// Builds one packet: the link layer, IPv4 (or IPv6 when `v6`), TCP with the segment's flags.
fn packet(seg: &Seg, link: Link, v6: bool) -> Vec<u8> {
    let (src, dst) = if seg.from_client {
        (CLIENT, SERVER)
    } else {
        (SERVER, CLIENT)
    };
    let isn = if seg.from_client {
        CLIENT_ISN
    } else {
        SERVER_ISN
    };
    let seq = if seg.flags.contains('S') {
        isn
    } else {
        isn.wrapping_add(1).wrapping_add(seg.offset)
    };
    let v6_addr = |a: [u8; 4]| {
        let mut x = [0u8; 16];
        x[0] = 0xfd;
        x[12..].copy_from_slice(&a);
        x
    };
    let link_step = match link {
        Link::Ethernet => Some(PacketBuilder::ethernet2(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
        )),
        _ => None,
    };
    macro_rules! tcp {
        ($ip:expr) => {{
            let mut b = $ip.tcp(src.1, dst.1, seq, 64000);
            if seg.flags.contains('S') {
                b = b.syn();
            }
            if seg.flags.contains('A') {
                b = b.ack(1);
            }
            if seg.flags.contains('F') {
                b = b.fin();
            }
            if seg.flags.contains('R') {
                b = b.rst();
            }
            let mut out = Vec::new();
            b.write(&mut out, &seg.payload).unwrap();
            out
        }};
    }
    match (link, link_step, v6) {
        (Link::Ethernet, Some(eth), false) => tcp!(eth.ipv4(src.0, dst.0, 64)),
        (Link::Ethernet, Some(eth), true) => tcp!(eth.ipv6(v6_addr(src.0), v6_addr(dst.0), 64)),
        (Link::LinuxSll, _, false) => tcp!(PacketBuilder::linux_sll(
            LinuxSllPacketType::OUTGOING,
            6,
            [2, 0, 0, 0, 0, 1, 0, 0]
        )
        .ipv4(src.0, dst.0, 64)),
        (Link::Raw, _, false) => tcp!(PacketBuilder::ipv4(src.0, dst.0, 64)),
        (Link::Raw, _, true) => tcp!(PacketBuilder::ipv6(v6_addr(src.0), v6_addr(dst.0), 64)),
        (Link::Null, _, v6) => {
            // BSD loopback: the address family in host byte order, then the IP packet.
            let family: u32 = if v6 { 30 } else { 2 };
            let mut out = family.to_ne_bytes().to_vec();
            out.extend(packet(seg, Link::Raw, v6));
            out
        }
        _ => unreachable!("no such combination in these tests"),
    }
}

fn datalink(link: Link) -> DataLink {
    match link {
        Link::Ethernet => DataLink::ETHERNET,
        Link::LinuxSll => DataLink::LINUX_SLL,
        Link::Null => DataLink::NULL,
        Link::Raw => DataLink::RAW,
    }
}

/// Packet `i` is captured at EPOCH + i ms.
fn time(i: usize) -> Duration {
    Duration::from_secs(EPOCH) + Duration::from_millis(i as u64)
}

/// Writes the segments, in the order given, as a pcap file.
fn write_pcap(path: &Path, segs: &[Seg], link: Link, v6: bool) {
    let header = PcapHeader {
        datalink: datalink(link),
        ..PcapHeader::default()
    };
    let file = std::fs::File::create(path).unwrap();
    let mut writer = PcapWriter::with_header(file, header).unwrap();
    for (i, seg) in segs.iter().enumerate() {
        let data = packet(seg, link, v6);
        writer
            .write_packet(&PcapPacket::new(time(i), data.len() as u32, &data))
            .unwrap();
    }
}

/// Writes the segments as a pcapng file, one Ethernet interface with the default microsecond
/// timestamps.
fn write_pcapng(path: &Path, segs: &[Seg], v6: bool) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = PcapNgWriter::new(file).unwrap();
    writer
        .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65535))
        .unwrap();
    for (i, seg) in segs.iter().enumerate() {
        let data = packet(seg, Link::Ethernet, v6);
        // pcap-file writes the timestamp's nanosecond count as the tick count; with the
        // default resolution a tick is a microsecond.
        let ticks = Duration::from_nanos(time(i).as_micros() as u64);
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: ticks,
                original_len: data.len() as u32,
                data: Cow::Owned(data),
                options: vec![],
            })
            .unwrap();
    }
}

fn len4(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

struct Decoded {
    code: Option<i32>,
    frames: Vec<Value>,
    stderr: String,
}

/// `framelink decode --format json --framing FRAMING --pcap FILE EXTRA...`.
fn decode(file: &Path, framing: &str, extra: &[&str]) -> Decoded {
    let file = file.to_str().unwrap();
    let mut args = vec![
        "decode",
        "--framing",
        framing,
        "--format",
        "json",
        "--pcap",
        file,
    ];
    args.extend_from_slice(extra);
    let out = run(&args, b"", PATIENCE);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let frames = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    Decoded {
        code: out.status.code(),
        frames,
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn texts(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["text"].as_str().unwrap_or("<binary>").to_string())
        .collect()
}

fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// Both directions, with glued frames, a frame split over three segments, a segment captured
/// ahead of its predecessor, a retransmission and an overlapping segment, then FINs.
fn mangled_exchange() -> Vec<Seg> {
    let glued = [len4(b"one"), len4(b"two"), len4(b"three")].concat(); // 0..23
    let split = len4(b"split into three segments"); // 23..52
    let last = len4(b"last"); // 52..60
    let reply = [len4(b"reply-1"), len4(b"reply-2")].concat(); // 0..22
    let mut segs = handshake();
    segs.extend([
        up(0, &glued),
        // reply-1 and the first 2 bytes of reply-2.
        down(0, &reply[..13]),
        up(23, &split[..5]),
        // Captured before the piece in front of it.
        up(38, &split[15..27]),
        up(28, &split[5..15]),
        // Retransmitted.
        up(28, &split[5..15]),
        // Overlapping what was delivered.
        down(5, &reply[5..]),
        // Overlapping too: the end of the split frame glued to the last one.
        up(48, &[&split[25..], &last[..]].concat()),
        flags(true, 60, "FA"),
        flags(false, 22, "FA"),
    ]);
    segs
}

#[test]
fn every_frame_of_both_directions_with_its_segment_picture() {
    let (_dir, path) = temp("mangled.pcap");
    write_pcap(&path, &mangled_exchange(), Link::Ethernet, false);
    let out = decode(&path, "length:4", &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        texts(&out.frames),
        [
            "one",
            "two",
            "three",
            "reply-1",
            "reply-2",
            "split into three segments",
            "last"
        ]
    );
    let f = &out.frames;
    for glued in &f[..3] {
        assert_eq!(glued["segments"], 1);
        assert_eq!(glued["shared"], 3);
        assert_eq!(glued["src"], "10.1.0.1:40000");
        assert_eq!(glued["dst"], "10.1.0.2:7000");
        assert_eq!(glued["direction"], "client->server");
        assert_eq!(glued["stream"], 0);
        assert_eq!(glued["time"], "2026-01-02T03:04:05.002000Z");
    }
    assert_eq!(f[1]["offset"], 4 + 3 + 4);
    assert_eq!(f[1]["index"], 1);
    assert_eq!(f[3]["direction"], "server->client");
    assert_eq!(f[3]["src"], "10.1.0.2:7000");
    assert_eq!((&f[3]["segments"], &f[3]["shared"]), (&1.into(), &1.into()));
    // reply-2 began in reply-1's segment.
    assert_eq!((&f[4]["segments"], &f[4]["index"]), (&2.into(), &1.into()));
    // The split frame: its header's segment, the one captured late, the one captured early,
    // and the one it shares with "last"; complete with that last one (packet 10).
    let split = &f[5];
    assert_eq!(split["segments"], 4);
    assert_eq!(split["length"], 25);
    assert_eq!(split["offset"], 27);
    assert_eq!(split["packet"], 10);
    assert_eq!(split["time"], "2026-01-02T03:04:05.009000Z");
    assert_eq!((&split["shared"], &f[6]["shared"]), (&2.into(), &2.into()));
    assert_eq!(f[6]["segments"], 1);
    assert!(
        out.stderr
            .contains("1 retransmitted, 1 out of order, 2 overlapping; 0 gap(s)"),
        "{}",
        out.stderr
    );
}

#[test]
fn pcapng_over_ipv6_reads_the_same() {
    let (_dir, path) = temp("mangled.pcapng");
    write_pcapng(&path, &mangled_exchange(), true);
    let out = decode(&path, "length:4", &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.frames.len(), 7);
    assert_eq!(out.frames[0]["src"], "[fd00::a01:1]:40000");
    assert_eq!(out.frames[5]["text"], "split into three segments");
    assert_eq!(out.frames[5]["time"], "2026-01-02T03:04:05.009000Z");
    assert_eq!(out.frames[5]["ts_ns"], (EPOCH * 1_000_000_000 + 9_000_000));
}

#[test]
fn linux_cooked_raw_ip_and_loopback_link_types() {
    for (link, v6, name) in [
        (Link::LinuxSll, false, "sll"),
        (Link::Raw, false, "raw4"),
        (Link::Raw, true, "raw6"),
        (Link::Null, false, "null4"),
        (Link::Null, true, "null6"),
    ] {
        let (_dir, path) = temp(&format!("{name}.pcap"));
        write_pcap(&path, &mangled_exchange(), link, v6);
        let out = decode(&path, "length:4", &[]);
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        assert_eq!(
            texts(&out.frames),
            [
                "one",
                "two",
                "three",
                "reply-1",
                "reply-2",
                "split into three segments",
                "last"
            ],
            "{name}"
        );
    }
}

#[test]
fn text_and_hex_lines_carry_the_flow_and_the_picture() {
    let (_dir, path) = temp("mangled.pcap");
    write_pcap(&path, &mangled_exchange(), Link::Ethernet, false);
    let file = path.to_str().unwrap();
    let out = run(
        &[
            "decode", "-f", "length:4", "--format", "text", "--pcap", file,
        ],
        b"",
        PATIENCE,
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    assert_eq!(
        first,
        "2026-01-02T03:04:05.002000Z #0 10.1.0.1:40000 -> 10.1.0.2:7000 client->server \
         frame=0 offset=4 len=3 segments=1 shared=3 one"
    );
    let out = run(
        &[
            "decode", "-f", "length:4", "--format", "hex", "--pcap", file,
        ],
        b"",
        PATIENCE,
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.lines().nth(3).unwrap().ends_with(
            "#0 10.1.0.2:7000 -> 10.1.0.1:40000 server->client frame=0 offset=4 len=7 \
             segments=1 shared=1 7265706c792d31"
        ),
        "{stdout}"
    );
}

/// Frames 1 and 2 of the client, with bytes 3..6 of frame 1 never captured; frames 0 and 3
/// around them, and one server frame.
fn gapped(encode: impl Fn(&[u8]) -> Vec<u8>) -> Vec<Seg> {
    let frames: Vec<Vec<u8>> = [&b"before"[..], b"lost", b"cut", b"after"]
        .iter()
        .map(|p| encode(p))
        .collect();
    let at = |i: usize| frames[..i].iter().map(Vec::len).sum::<usize>();
    let mut segs = handshake();
    segs.push(up(0, &[&frames[0][..], &frames[1][..3]].concat()));
    segs.push(up(
        at(1) + 6,
        &[&frames[1][6..], &frames[2], &frames[3]].concat(),
    ));
    segs.push(down(0, &encode(b"the server is fine")));
    segs
}

#[test]
fn a_gap_stops_a_length_prefixed_direction_with_a_clear_message() {
    let (_dir, path) = temp("gap.pcap");
    write_pcap(&path, &gapped(len4), Link::Ethernet, false);
    let out = decode(&path, "length:4", &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(texts(&out.frames), ["before", "the server is fine"]);
    assert!(
        out.stderr.contains(
            "#0 10.1.0.1:40000 -> 10.1.0.2:7000 (client->server): gap: 3 bytes missing at \
             stream offset 13 (never captured); the frame being decoded (3 bytes from stream \
             offset 10) is lost; a length-prefixed framing cannot find the next frame after a \
             gap: no more frames are decoded in this direction"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("1 direction(s) stopped before their end"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_magic_framing_resynchronises_after_a_gap() {
    let framing: framelink::Framing = "magic:f00d,crc=crc32c".parse().unwrap();
    let encode = |p: &[u8]| {
        use framelink::FrameEncoder;
        let mut b = bytes::BytesMut::new();
        framing.encode(p, &mut b).unwrap();
        b.to_vec()
    };
    let (_dir, path) = temp("gap-magic.pcap");
    write_pcap(&path, &gapped(encode), Link::Ethernet, false);
    let out = decode(&path, "magic:f00d,crc=crc32c", &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The hole waits for a retransmission until the capture ends; then it is a gap and the
    // client's frames after it come out.
    assert_eq!(
        texts(&out.frames),
        ["before", "the server is fine", "cut", "after"]
    );
    assert_eq!(out.frames[2]["index"], 1);
    assert!(
        out.stderr
            .contains("resynchronising on the next magic marker"),
        "{}",
        out.stderr
    );
}

#[test]
fn filters_pick_connections_by_host_and_port() {
    // A second connection, between other hosts and ports.
    let other = |p: &[u8]| {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
            .ipv4([10, 9, 0, 1], [10, 9, 0, 2], 64)
            .tcp(50000, 9000, 1, 64000)
            .ack(1);
        b = b.psh();
        let mut out = Vec::new();
        b.write(&mut out, p).unwrap();
        out
    };
    let (_dir, path) = temp("two.pcap");
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = PcapWriter::new(file).unwrap();
        let mut i = 0;
        let mut put = |data: Vec<u8>| {
            writer
                .write_packet(&PcapPacket::new(time(i), data.len() as u32, &data))
                .unwrap();
            i += 1;
        };
        for seg in mangled_exchange() {
            put(packet(&seg, Link::Ethernet, false));
        }
        put(other(&len4(b"elsewhere")));
    }
    let all = decode(&path, "length:4", &[]);
    assert_eq!(all.frames.len(), 8);
    assert_eq!(all.frames[7]["stream"], 1);
    assert_eq!(all.frames[7]["src"], "10.9.0.1:50000");
    let by_port = decode(&path, "length:4", &["--port", "9000"]);
    assert_eq!(texts(&by_port.frames), ["elsewhere"]);
    assert_eq!(by_port.frames[0]["stream"], 0);
    let by_host = decode(&path, "length:4", &["--host", "10.1.0.1"]);
    assert_eq!(by_host.frames.len(), 7);
    let both = decode(&path, "length:4", &["--host", "10.9.0.2", "--port", "7000"]);
    assert!(both.frames.is_empty());
    assert!(both.stderr.contains("0 connection(s)"), "{}", both.stderr);
}

#[test]
fn a_small_reassembly_buffer_gives_up_and_says_so() {
    // Client bytes 0..3 never captured; 60 bytes of lines wait behind the hole.
    let lines: Vec<u8> = (0..10)
        .flat_map(|i| format!("line{i}\n").into_bytes())
        .collect();
    let mut segs = handshake();
    for (k, chunk) in lines.chunks(6).enumerate() {
        segs.push(up(4 + k * 6, chunk));
    }
    let (_dir, path) = temp("hole.pcap");
    write_pcap(&path, &segs, Link::Ethernet, false);
    let out = decode(&path, "line", &["--reassembly-buffer", "32"]);
    assert!(
        out.stderr.contains(
            "gap: 4 bytes missing at stream offset 0 (the out-of-order buffer reached its cap \
             of 32 bytes (--reassembly-buffer) before they arrived)"
        ),
        "{}",
        out.stderr
    );
    // line0 is cut by the gap; the others are all there.
    assert_eq!(texts(&out.frames)[0], "line1");
    assert_eq!(out.frames.len(), 9);
}

#[test]
fn options_that_need_a_capture_are_refused_without_one() {
    let out = run(&["decode", "-f", "line", "--port", "80"], b"", PATIENCE);
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &["decode", "-f", "line", "--pcap", "/nonexistent/x.pcap"],
        b"",
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/x.pcap"));
    let out = run(
        &["decode", "-f", "line", "--pcap", "-"],
        b"GET / HTTP/1.1\r\n",
        PATIENCE,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not a pcap or pcapng file (it starts with 47 45 54 20)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_capture_cut_short_keeps_the_frames_before_and_says_where() {
    let real = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/loopback_length4.pcap"),
    )
    .unwrap();
    let (_dir, path) = temp("cut.pcap");
    // 24 bytes of file header, then records; cut inside the 16th packet.
    std::fs::write(&path, &real[..3000]).unwrap();
    let out = decode(&path, "length:4", &[]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.frames.len(), 8, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the file ends inside packet 16 (cut short while it was written?); the 15 packets \
             before it were read"
        ),
        "{}",
        out.stderr
    );
    std::fs::write(&path, &real[..10]).unwrap();
    let out = decode(&path, "length:4", &[]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("the file ends inside its header"),
        "{}",
        out.stderr
    );
}

/// What `tests/data/length4_exchange.py` sends (see `tests/data/README.md`).
fn check_real_capture(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let out = decode(&path, "length:4", &["--port", "47123", "--port", "47124"]);
    assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
    let from = |dir: &str| -> Vec<&Value> {
        out.frames
            .iter()
            .filter(|f| f["direction"] == dir)
            .collect()
    };
    let up = from("client->server");
    let down = from("server->client");
    let big: Vec<u8> = (0..2000u32).map(|i| (i % 256) as u8).collect();
    let hex_of = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let up_text: Vec<_> = up.iter().map(|f| f["text"].as_str()).collect();
    assert_eq!(
        up_text[..4],
        [
            Some("hello"),
            Some("sticky"),
            Some("frames"),
            Some("split across three writes")
        ],
        "{name}"
    );
    assert_eq!(up[4]["hex"], hex_of(&big), "{name}");
    // Three frames glued in one write, one frame in three writes.
    for f in &up[..3] {
        assert_eq!(
            (&f["segments"], &f["shared"]),
            (&1.into(), &3.into()),
            "{name}"
        );
    }
    assert_eq!(up[3]["segments"], 3, "{name}");
    assert_eq!(up[3]["shared"], 1, "{name}");
    let down_text: Vec<_> = down.iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(
        down_text[..4],
        [
            "ack:hello",
            "ack:sticky",
            "ack:frames",
            "ack:split across thr"
        ],
        "{name}"
    );
    assert_eq!(down.len(), 5, "{name}");
    assert!(out.frames.iter().all(|f| f["stream"] == 0));
    assert!(
        out.stderr.contains("0 gap(s), 0 bytes missing"),
        "{name}: {}",
        out.stderr
    );
}

#[test]
fn a_real_tcpdump_capture_on_loopback() {
    check_real_capture("loopback_length4.pcap");
}

#[test]
fn a_real_tcpdump_capture_on_any_in_linux_cooked_v2() {
    check_real_capture("any_length4.pcap");
}
