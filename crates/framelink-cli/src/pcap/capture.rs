//! Reading a capture file for `decode --pcap`: the pcap or pcapng container (through the
//! `pcap-file` crate) and the link, IP and TCP headers of each packet (through `etherparse`),
//! down to [`TcpSegment`]s. Link types: Ethernet, Linux cooked capture v1 and v2 (SLL, SLL2:
//! what `tcpdump -i any` writes), raw IP (IPv4 or IPv6), and BSD loopback (null/loop).

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

/// One TCP segment from the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment {
    /// Number of the packet in the capture, from 1 (as Wireshark counts).
    pub packet: u64,
    /// Capture time, since the Unix epoch.
    pub ts: Duration,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub ack: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
    /// The TCP payload.
    pub payload: Vec<u8>,
}

/// A packet that is not a TCP segment framelink can read, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skipped {
    /// Not IPv4 or IPv6 (ARP, for example).
    NotIp,
    /// IP, but not TCP (UDP, ICMP...).
    NotTcp,
    /// An IP fragment (fragments are not reassembled).
    Fragment,
    /// Cut short by the capture's snapshot length, or malformed.
    Truncated,
    /// A link type this reader does not know.
    UnknownLink,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skipped::NotIp => "not IP",
            Skipped::NotTcp => "not TCP",
            Skipped::Fragment => "IP fragments",
            Skipped::Truncated => "truncated or malformed",
            Skipped::UnknownLink => "unknown link type",
        })
    }
}

/// What the capture holds, packet by packet.
#[derive(Debug)]
pub enum Packet {
    /// A TCP segment.
    Tcp(TcpSegment),
    /// Something else, skipped.
    Skipped(Skipped),
}

/// Reads packets from a pcap or pcapng file (told apart by their first bytes).
pub enum CaptureReader<R: Read> {
    /// Classic pcap, any byte order, microsecond or nanosecond timestamps.
    Pcap {
        /// The reader.
        reader: PcapReader<BufReader<R>>,
        /// The file's one link type.
        link: DataLink,
        /// Packets read so far.
        count: u64,
    },
    /// pcapng: each packet's link type and timestamp resolution come from its interface.
    PcapNg {
        /// The reader.
        reader: Box<PcapNgReader<BufReader<R>>>,
        /// Packets read so far.
        count: u64,
    },
}

/// The capture file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither pcap nor pcapng.
    #[error("not a pcap or pcapng file (it starts with {0})")]
    NotACapture(String),
    /// The file ends inside its header.
    #[error("the file ends inside its header")]
    HeaderCutShort,
    /// The file ends in the middle of a packet or block.
    #[error(
        "the file ends inside packet {} (cut short while it was written?); the {packets} \
         packets before it were read",
        packets + 1
    )]
    CutShort {
        /// Packets read before.
        packets: u64,
    },
    /// The container is broken (a bad header or block) after `packets` packets.
    #[error("bad capture file after {packets} packets: {source}")]
    Container {
        /// Packets read before.
        packets: u64,
        /// What `pcap-file` said.
        source: pcap_file::PcapError,
    },
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

impl CaptureError {
    /// What `pcap-file` said after `packets` packets, with the end of the file told apart.
    fn container(packets: u64, source: pcap_file::PcapError) -> CaptureError {
        match source {
            pcap_file::PcapError::IncompleteBuffer => CaptureError::CutShort { packets },
            pcap_file::PcapError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                CaptureError::CutShort { packets }
            }
            pcap_file::PcapError::IoError(e) => CaptureError::Io(e),
            source => CaptureError::Container { packets, source },
        }
    }
}

fn header_error(source: pcap_file::PcapError) -> CaptureError {
    match CaptureError::container(0, source) {
        CaptureError::CutShort { .. } => CaptureError::HeaderCutShort,
        other => other,
    }
}

/// pcapng section header block type, the first four bytes of a pcapng file.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

impl<R: Read> CaptureReader<R> {
    /// Opens a capture, pcap or pcapng.
    pub fn new(input: R) -> Result<CaptureReader<R>, CaptureError> {
        let mut input = BufReader::with_capacity(64 * 1024, input);
        let head = input.fill_buf()?;
        let magic: Vec<u8> = head.iter().take(4).copied().collect();
        if magic == PCAPNG_MAGIC {
            let reader = PcapNgReader::new(input).map_err(header_error)?;
            return Ok(CaptureReader::PcapNg {
                reader: Box::new(reader),
                count: 0,
            });
        }
        let known = [
            [0xd4, 0xc3, 0xb2, 0xa1],
            [0xa1, 0xb2, 0xc3, 0xd4],
            [0x4d, 0x3c, 0xb2, 0xa1],
            [0xa1, 0xb2, 0x3c, 0x4d],
        ];
        if !known.iter().any(|k| magic == k) {
            let shown: Vec<String> = magic.iter().map(|b| format!("{b:02x}")).collect();
            let shown = if shown.is_empty() {
                "nothing: the file is empty".to_string()
            } else {
                shown.join(" ")
            };
            return Err(CaptureError::NotACapture(shown));
        }
        let reader = PcapReader::new(input).map_err(header_error)?;
        let link = reader.header().datalink;
        Ok(CaptureReader::Pcap {
            reader,
            link,
            count: 0,
        })
    }

    /// The next packet, `None` at the end of the file.
    pub fn next_packet(&mut self) -> Option<Result<Packet, CaptureError>> {
        match self {
            CaptureReader::Pcap {
                reader,
                link,
                count,
            } => {
                let packet = match reader.next_packet()? {
                    Ok(p) => p,
                    Err(source) => return Some(Err(CaptureError::container(*count, source))),
                };
                *count += 1;
                let truncated = (packet.data.len() as u64) < u64::from(packet.orig_len);
                Some(Ok(parse(
                    *link,
                    &packet.data,
                    truncated,
                    *count,
                    packet.timestamp,
                )))
            }
            CaptureReader::PcapNg { reader, count } => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(source) => return Some(Err(CaptureError::container(*count, source))),
                };
                let (interface, ticks, data, orig_len) = match block {
                    Block::EnhancedPacket(epb) => (
                        Some(epb.interface_id),
                        // pcap-file hands the raw tick count over as nanoseconds.
                        Some(epb.timestamp.as_nanos()),
                        epb.data.into_owned(),
                        epb.original_len,
                    ),
                    Block::SimplePacket(spb) => {
                        (None, None, spb.data.into_owned(), spb.original_len)
                    }
                    Block::Packet(pb) => (
                        Some(u32::from(pb.interface_id)),
                        Some(u128::from(pb.timestamp)),
                        pb.data.into_owned(),
                        pb.original_len,
                    ),
                    _ => continue,
                };
                *count += 1;
                let idb = reader.interfaces().get(interface.unwrap_or(0) as usize);
                let Some(idb) = idb else {
                    return Some(Ok(Packet::Skipped(Skipped::UnknownLink)));
                };
                let ts = ticks
                    .map(|t| ticks_to_time(t, &idb.options))
                    .unwrap_or_default();
                let truncated = (data.len() as u64) < u64::from(orig_len);
                return Some(Ok(parse(idb.linktype, &data, truncated, *count, ts)));
            },
        }
    }
}

/// A pcapng timestamp in the interface's resolution (`if_tsresol`, microseconds when absent)
/// plus its offset (`if_tsoffset`, seconds).
fn ticks_to_time(ticks: u128, options: &[InterfaceDescriptionOption<'_>]) -> Duration {
    let mut resol = 6u8;
    let mut offset = 0u64;
    for option in options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset = *o,
            _ => {}
        }
    }
    let nanos: u128 = if resol & 0x80 == 0 {
        // 10^-n seconds per tick.
        let n = u32::from(resol);
        if n <= 9 {
            ticks.saturating_mul(10u128.pow(9 - n))
        } else {
            10u128.checked_pow(n - 9).map_or(0, |per_ns| ticks / per_ns)
        }
    } else {
        // 2^-n seconds per tick.
        let n = u32::from(resol & 0x7f);
        ticks.saturating_mul(1_000_000_000) >> n.min(127)
    };
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos)
        .checked_add(Duration::from_secs(offset))
        .unwrap_or(Duration::MAX)
}

/// Linux cooked capture v2 header: protocol (2, big-endian), reserved (2), interface index
/// (4), ARPHRD type (2), packet type (1), address length (1), address (8).
const SLL2_HEADER: usize = 20;
/// BSD loopback header: the address family, 4 bytes.
const NULL_HEADER: usize = 4;

/// Slices one packet down to its TCP segment.
pub(super) fn parse(
    link: DataLink,
    data: &[u8],
    truncated: bool,
    packet: u64,
    ts: Duration,
) -> Packet {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data),
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data),
        DataLink::LINUX_SLL2 => {
            if data.len() < SLL2_HEADER {
                return Packet::Skipped(Skipped::Truncated);
            }
            let protocol = u16::from_be_bytes([data[0], data[1]]);
            SlicedPacket::from_ether_type(EtherType(protocol), &data[SLL2_HEADER..])
        }
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data),
        DataLink::NULL | DataLink::LOOP => {
            if data.len() < NULL_HEADER {
                return Packet::Skipped(Skipped::Truncated);
            }
            // The family's value differs between systems; the IP header says its version.
            SlicedPacket::from_ip(&data[NULL_HEADER..])
        }
        _ => return Packet::Skipped(Skipped::UnknownLink),
    };
    let sliced = match sliced {
        Ok(s) => s,
        Err(_) => return Packet::Skipped(Skipped::Truncated),
    };
    let (src_ip, dst_ip, fragmented): (IpAddr, IpAddr, bool) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().fragmented,
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().fragmented,
        ),
        _ => return Packet::Skipped(Skipped::NotIp),
    };
    if fragmented {
        return Packet::Skipped(Skipped::Fragment);
    }
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
        return Packet::Skipped(Skipped::NotTcp);
    };
    if truncated {
        // The payload is cut short: its bytes become a gap in the stream.
        return Packet::Skipped(Skipped::Truncated);
    }
    Packet::Tcp(TcpSegment {
        packet,
        ts,
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload: tcp.payload().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_tick_resolutions() {
        let resol = |r| vec![InterfaceDescriptionOption::IfTsResol(r)];
        assert_eq!(ticks_to_time(1_500_000, &[]), Duration::from_millis(1500));
        assert_eq!(ticks_to_time(1_500, &resol(3)), Duration::from_millis(1500));
        assert_eq!(ticks_to_time(7, &resol(9)), Duration::from_nanos(7));
        assert_eq!(
            ticks_to_time(1024 * 3, &resol(0x80 | 10)),
            Duration::from_secs(3)
        );
        let offset = [
            InterfaceDescriptionOption::IfTsResol(0),
            InterfaceDescriptionOption::IfTsOffset(100),
        ];
        assert_eq!(ticks_to_time(5, &offset), Duration::from_secs(105));
        let absurd = [
            InterfaceDescriptionOption::IfTsResol(0),
            InterfaceDescriptionOption::IfTsOffset(u64::MAX),
        ];
        assert_eq!(ticks_to_time(u128::MAX, &absurd), Duration::MAX);
        let tiny = [InterfaceDescriptionOption::IfTsResol(0x7f)];
        assert_eq!(ticks_to_time(u128::MAX, &tiny), Duration::ZERO);
    }

    #[test]
    fn not_a_capture_is_a_clear_error() {
        let err = CaptureReader::new(&b"hello world"[..]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "not a pcap or pcapng file (it starts with 68 65 6c 6c)"
        );
        let err = CaptureReader::new(&b""[..]).err().unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn a_truncated_header_is_skipped_not_a_panic() {
        for link in [
            DataLink::ETHERNET,
            DataLink::LINUX_SLL,
            DataLink::LINUX_SLL2,
            DataLink::RAW,
            DataLink::NULL,
        ] {
            for len in 0..30 {
                let data = vec![0x45u8; len];
                match parse(link, &data, false, 1, Duration::ZERO) {
                    Packet::Skipped(_) => {}
                    Packet::Tcp(t) => panic!("{link:?} {len}: {t:?}"),
                }
            }
        }
    }
}
