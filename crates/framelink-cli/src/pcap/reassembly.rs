//! TCP reassembly for `decode --pcap`: one [`Reassembler`] per direction of a connection turns
//! captured segments, in whatever order they were captured, back into the byte stream the
//! receiving application read.
//!
//! Stream offsets count from the first byte after the SYN (or, without a SYN in the capture,
//! from the first segment seen), with wrapping sequence-number arithmetic, so a stream may be
//! longer than 4 GiB and may start anywhere in the sequence space. Retransmitted bytes are
//! dropped (the first copy captured wins), overlaps are trimmed, segments ahead of the next
//! expected byte wait in a buffer until the hole before them is filled. That buffer is capped
//! ([`Reassembler::new`]): when a segment would take it past the cap, the bytes missing before
//! the first waiting segment are given up as a [`Delivery::Gap`] and delivery goes on from there.
//! Bytes never captured become a gap too, at the end of the capture or of the connection.

use std::collections::BTreeMap;

/// What a reassembler hands on, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The stream's bytes at `offset`, first captured in packet number `packet`.
    Data {
        /// Stream offset of `bytes[0]`.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
        /// Number of the captured packet (from 1, in capture order) that carried them.
        packet: u64,
    },
    /// Bytes `offset..offset + len` of the stream are missing from the capture.
    Gap {
        /// Stream offset of the first missing byte.
        offset: u64,
        /// How many bytes are missing.
        len: u64,
        /// Why they were given up.
        reason: GapReason,
    },
}

/// Why a [`Delivery::Gap`] was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Segments after the hole would have taken the out-of-order buffer past its cap.
    BufferFull,
    /// The capture (or the connection) ended before the hole was filled.
    NeverCaptured,
}

/// Counters of one direction, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Segments with payload.
    pub segments: u64,
    /// Segments whose payload had all been delivered already.
    pub retransmitted: u64,
    /// Segments that repeated part of the bytes delivered or waiting before them.
    pub overlapping: u64,
    /// Segments that arrived ahead of a hole and waited.
    pub out_of_order: u64,
    /// Holes given up on.
    pub gaps: u64,
    /// Bytes in those holes.
    pub gap_bytes: u64,
    /// Times the out-of-order buffer reached its cap.
    pub buffer_full: u64,
}

/// A segment waiting for the hole before it to be filled.
#[derive(Debug)]
struct Waiting {
    bytes: Vec<u8>,
    packet: u64,
}

/// Reassembles one direction of a TCP connection (see the [module docs](self)).
#[derive(Debug)]
pub struct Reassembler {
    /// Sequence number of stream offset 0, once known.
    base: Option<u32>,
    /// Stream offset of the next byte to deliver.
    next: u64,
    /// Segments ahead of `next`, by stream offset.
    waiting: BTreeMap<u64, Waiting>,
    /// Bytes in `waiting`.
    buffered: usize,
    cap: usize,
    /// Stream offset of the FIN, once seen.
    fin: Option<u64>,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler that holds at most `cap` bytes of out-of-order segments.
    pub fn new(cap: usize) -> Reassembler {
        Reassembler {
            base: None,
            next: 0,
            waiting: BTreeMap::new(),
            buffered: 0,
            cap,
            fin: None,
            stats: ReassemblyStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// The sequence number of stream offset 0, once a segment was seen.
    pub fn base(&self) -> Option<u32> {
        self.base
    }

    /// True once every byte up to the FIN was delivered (or given up): the stream has ended.
    pub fn is_finished(&self) -> bool {
        self.fin.is_some_and(|fin| self.next >= fin)
    }

    /// Takes one captured segment: sequence number, SYN and FIN flags, payload, and the number
    /// of the packet that carried it. What can be delivered now is appended to `out`.
    pub fn segment(
        &mut self,
        seq: u32,
        syn: bool,
        fin: bool,
        payload: &[u8],
        packet: u64,
        out: &mut Vec<Delivery>,
    ) {
        // The SYN takes one sequence number; data starts after it.
        let data_seq = if syn { seq.wrapping_add(1) } else { seq };
        let base = *self.base.get_or_insert(data_seq);
        // Where this segment starts, relative to the next expected byte: the nearest stream
        // offset with this sequence number (wrapping, within +-2 GiB).
        let expected = base.wrapping_add(self.next as u32);
        let delta = i64::from(data_seq.wrapping_sub(expected) as i32);
        let start = self.next as i64 + delta;
        let end = start + payload.len() as i64;
        if fin && end >= 0 {
            self.fin.get_or_insert(end as u64);
        }
        if payload.is_empty() {
            return;
        }
        self.stats.segments += 1;
        if end <= self.next as i64 {
            self.stats.retransmitted += 1;
            return;
        }
        if start <= self.next as i64 {
            if start < self.next as i64 {
                self.stats.overlapping += 1;
            }
            let skip = (self.next as i64 - start) as usize;
            self.deliver(payload[skip..].to_vec(), packet, out);
            self.drain(out);
            return;
        }
        // Ahead of a hole: wait for it to be filled.
        let start = start as u64;
        self.stats.out_of_order += 1;
        match self.waiting.get(&start) {
            Some(w) if w.bytes.len() >= payload.len() => {
                self.stats.retransmitted += 1;
                return;
            }
            Some(_) => self.stats.overlapping += 1,
            None => {}
        }
        let len = payload.len();
        if let Some(old) = self.waiting.insert(
            start,
            Waiting {
                bytes: payload.to_vec(),
                packet,
            },
        ) {
            self.buffered -= old.bytes.len();
        }
        self.buffered += len;
        if self.buffered > self.cap {
            self.stats.buffer_full += 1;
            while self.buffered > self.cap {
                self.skip_hole(GapReason::BufferFull, out);
            }
        }
    }

    /// The capture or the connection ended: whatever is still waiting is delivered, with the
    /// holes before it (and before a FIN seen beyond them) as gaps.
    pub fn finish(&mut self, out: &mut Vec<Delivery>) {
        while !self.waiting.is_empty() {
            self.skip_hole(GapReason::NeverCaptured, out);
        }
        if let Some(fin) = self.fin {
            if fin > self.next {
                self.gap(fin - self.next, GapReason::NeverCaptured, out);
            }
        }
    }

    /// Gives up the hole before the first waiting segment, then delivers what follows it.
    fn skip_hole(&mut self, reason: GapReason, out: &mut Vec<Delivery>) {
        let Some((&first, _)) = self.waiting.first_key_value() else {
            return;
        };
        if first > self.next {
            self.gap(first - self.next, reason, out);
        }
        self.drain(out);
    }

    fn gap(&mut self, len: u64, reason: GapReason, out: &mut Vec<Delivery>) {
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        out.push(Delivery::Gap {
            offset: self.next,
            len,
            reason,
        });
        self.next += len;
    }

    fn deliver(&mut self, bytes: Vec<u8>, packet: u64, out: &mut Vec<Delivery>) {
        let offset = self.next;
        self.next += bytes.len() as u64;
        out.push(Delivery::Data {
            offset,
            bytes,
            packet,
        });
    }

    /// Delivers the waiting segments that the next expected byte has reached.
    fn drain(&mut self, out: &mut Vec<Delivery>) {
        while let Some(entry) = self.waiting.first_entry() {
            let start = *entry.key();
            if start > self.next {
                break;
            }
            let waiting = entry.remove();
            self.buffered -= waiting.bytes.len();
            let end = start + waiting.bytes.len() as u64;
            if end <= self.next {
                continue;
            }
            let mut bytes = waiting.bytes;
            if start < self.next {
                bytes.drain(..(self.next - start) as usize);
            }
            self.deliver(bytes, waiting.packet, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds segments (sequence number, payload, packet number) and returns the stream as
    /// delivered, with `?` for each missing byte, and the deliveries.
    fn run(r: &mut Reassembler, segments: &[(u32, &[u8], u64)]) -> Vec<Delivery> {
        let mut out = Vec::new();
        for &(seq, payload, packet) in segments {
            r.segment(seq, false, false, payload, packet, &mut out);
        }
        out
    }

    fn stream(deliveries: &[Delivery]) -> String {
        let mut s = String::new();
        for d in deliveries {
            match d {
                Delivery::Data { bytes, .. } => s.push_str(std::str::from_utf8(bytes).unwrap()),
                Delivery::Gap { len, .. } => s.push_str(&"?".repeat(*len as usize)),
            }
        }
        s
    }

    #[test]
    fn in_order_segments_pass_straight_through() {
        let mut r = Reassembler::new(1024);
        let mut out = Vec::new();
        r.segment(999, true, false, b"", 1, &mut out);
        assert!(out.is_empty());
        let out = run(&mut r, &[(1000, b"hello ", 2), (1006, b"world", 3)]);
        assert_eq!(
            out,
            vec![
                Delivery::Data {
                    offset: 0,
                    bytes: b"hello ".to_vec(),
                    packet: 2
                },
                Delivery::Data {
                    offset: 6,
                    bytes: b"world".to_vec(),
                    packet: 3
                },
            ]
        );
    }

    #[test]
    fn out_of_order_segments_wait_for_the_hole() {
        let mut r = Reassembler::new(1024);
        let mut out = Vec::new();
        r.segment(0, true, false, b"", 1, &mut out);
        let out = run(&mut r, &[(7, b"cc", 2), (4, b"bbb", 3), (1, b"aaa", 4)]);
        assert_eq!(stream(&out), "aaabbbcc");
        // Each piece keeps the packet that carried it.
        let packets: Vec<u64> = out
            .iter()
            .map(|d| match d {
                Delivery::Data { packet, .. } => *packet,
                Delivery::Gap { .. } => 0,
            })
            .collect();
        assert_eq!(packets, [4, 3, 2]);
        assert_eq!(r.stats().out_of_order, 2);
        assert_eq!(r.buffered, 0);
    }

    #[test]
    fn retransmissions_and_overlaps_deliver_each_byte_once() {
        let mut r = Reassembler::new(1024);
        let out = run(
            &mut r,
            &[
                (100, b"abcd", 1),
                (100, b"abcd", 2),    // retransmitted
                (102, b"cdefg", 3),   // overlaps the end
                (110, b"kl", 4),      // ahead
                (110, b"klmn", 5),    // a longer copy of a waiting segment
                (109, b"jklm", 6),    // overlaps the waiting one
                (107, b"hi", 7),      // fills the hole
                (100, b"abcdefg", 8), // old news
            ],
        );
        assert_eq!(stream(&out), "abcdefghijklmn");
        let stats = r.stats();
        assert_eq!(stats.retransmitted, 2);
        assert!(stats.overlapping >= 2, "{stats:?}");
        assert_eq!(r.buffered, 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut r = Reassembler::new(1024);
        let mut out = Vec::new();
        r.segment(u32::MAX - 2, true, false, b"", 1, &mut out);
        let out = run(
            &mut r,
            &[
                (u32::MAX.wrapping_add(2), b"world", 3),
                (u32::MAX - 1, b"hel", 2),
            ],
        );
        assert_eq!(stream(&out), "helworld");
        assert_eq!(r.next, 8);
    }

    #[test]
    fn without_a_syn_the_first_segment_is_offset_zero_and_older_bytes_are_dropped() {
        let mut r = Reassembler::new(1024);
        let out = run(&mut r, &[(5000, b"mid", 1), (4998, b"xxmid!", 2)]);
        assert_eq!(stream(&out), "mid!");
    }

    #[test]
    fn a_hole_never_filled_becomes_a_gap_at_the_end() {
        let mut r = Reassembler::new(1024);
        let mut out = run(&mut r, &[(0, b"ab", 1), (5, b"fg", 2)]);
        r.finish(&mut out);
        assert_eq!(stream(&out), "ab???fg");
        assert!(out.contains(&Delivery::Gap {
            offset: 2,
            len: 3,
            reason: GapReason::NeverCaptured
        }));
        assert_eq!(r.stats().gap_bytes, 3);
    }

    #[test]
    fn a_full_buffer_gives_up_the_hole() {
        let mut r = Reassembler::new(6);
        let out = run(&mut r, &[(0, b"ab", 1), (4, b"efg", 2), (8, b"ijkl", 3)]);
        // 7 bytes would wait: the hole at 2..4 is given up and 4..7 delivered; 8.. still waits.
        assert_eq!(stream(&out), "ab??efg");
        assert_eq!(
            out[1],
            Delivery::Gap {
                offset: 2,
                len: 2,
                reason: GapReason::BufferFull
            }
        );
        assert_eq!(r.buffered, 4);
        assert_eq!(r.stats().buffer_full, 1);
    }

    #[test]
    fn the_fin_ends_the_stream_once_every_byte_before_it_arrived() {
        let mut r = Reassembler::new(1024);
        let mut out = Vec::new();
        r.segment(10, false, true, b"xyz", 1, &mut out);
        assert!(r.is_finished());
        let mut r = Reassembler::new(1024);
        r.segment(10, false, false, b"ab", 1, &mut out);
        r.segment(14, false, true, b"", 2, &mut out);
        assert!(!r.is_finished());
        out.clear();
        r.finish(&mut out);
        assert_eq!(
            out,
            vec![Delivery::Gap {
                offset: 2,
                len: 2,
                reason: GapReason::NeverCaptured
            }]
        );
        assert!(r.is_finished());
    }
}
