//! Length-field framing with the option set of Netty's `LengthFieldBasedFrameDecoder` (decoding)
//! and `LengthFieldPrepender` (encoding).
//!
//! A frame is `[offset bytes][length field][body]`. The length field holds `body_len - adjustment`
//! (so `adjustment` lets the field count the header, or extra header bytes after the field). The
//! decoder returns the frame minus its first `strip` bytes. For the same parameters it accepts and
//! rejects the same inputs as Netty, with one deliberate difference: fields are read unsigned at
//! every width (Netty reads 4- and 8-byte fields signed and reports "negative length"; here such a
//! value is simply over any limit and reported as [`FrameTooLong`](DecodeErrorKind::FrameTooLong)).
//!
//! The maximum frame length is compared with the whole adjusted frame, header included (as Netty),
//! as soon as the header has arrived.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    reserve_for_frame, ByteOrder, ConfigError, DecodeError, DecodeErrorKind, EncodeError,
    FrameDecoder, FrameEncoder, FrameParts, OversizePolicy, DEFAULT_MAX_FRAME_LENGTH,
};

/// Parameters of a [`LengthFieldCodec`]. Field names follow Netty's constructor arguments.
///
/// ```
/// use framelink_proto::codec::LengthFieldConfig;
/// // Netty: new LengthFieldBasedFrameDecoder(1024, 1, 2, -3, 3)
/// let cfg = LengthFieldConfig::netty(1024, 1, 2, -3, 3);
/// assert_eq!((cfg.offset, cfg.width, cfg.adjustment, cfg.strip), (1, 2, -3, 3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LengthFieldConfig {
    /// Bytes before the length field (Netty `lengthFieldOffset`).
    pub offset: usize,
    /// Width of the length field: 1, 2, 3, 4 or 8 bytes, unsigned (Netty `lengthFieldLength`).
    pub width: usize,
    /// Byte order of the length field.
    pub order: ByteOrder,
    /// Added to the field's value to get the number of bytes after the field
    /// (Netty `lengthAdjustment`).
    pub adjustment: i64,
    /// Bytes removed from the front of each decoded frame (Netty `initialBytesToStrip`).
    pub strip: usize,
    /// Largest accepted frame, header included (Netty `maxFrameLength`).
    pub max_frame_length: usize,
    /// What to do with a frame over `max_frame_length`.
    pub oversize: OversizePolicy,
}

impl LengthFieldConfig {
    /// A `width`-byte big-endian length prefix counting the payload only, stripped from decoded
    /// frames, with the default 8 MiB limit: the most common framing.
    pub fn new(width: usize) -> Self {
        LengthFieldConfig {
            offset: 0,
            width,
            order: ByteOrder::BigEndian,
            adjustment: 0,
            strip: width,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            oversize: OversizePolicy::Fail,
        }
    }

    /// The parameters of Netty's
    /// `LengthFieldBasedFrameDecoder(maxFrameLength, lengthFieldOffset, lengthFieldLength, lengthAdjustment, initialBytesToStrip)`,
    /// big-endian, discarding over-long frames like Netty does.
    pub fn netty(
        max_frame_length: usize,
        offset: usize,
        width: usize,
        adjustment: i64,
        strip: usize,
    ) -> Self {
        LengthFieldConfig {
            offset,
            width,
            order: ByteOrder::BigEndian,
            adjustment,
            strip,
            max_frame_length,
            oversize: OversizePolicy::Discard,
        }
    }

    /// The counterpart of Netty's `LengthFieldPrepender(lengthFieldLength, lengthAdjustment,
    /// lengthIncludesLengthFieldLength)`: the field holds `payload_len + adjustment` (+ `width` when
    /// it includes itself). Decoded frames have the field stripped.
    pub fn prepender(width: usize, adjustment: i64, includes_length_field: bool) -> Self {
        let includes = if includes_length_field {
            width as i64
        } else {
            0
        };
        LengthFieldConfig {
            adjustment: -(adjustment + includes),
            ..Self::new(width)
        }
    }

    /// Offset of the first byte after the length field.
    /// Saturates for an offset so large that the sum overflows; such a config fails validation.
    pub fn header_length(&self) -> usize {
        self.offset.saturating_add(self.width)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.width, 1 | 2 | 3 | 4 | 8) {
            return Err(ConfigError::InvalidWidth {
                width: self.width,
                allowed: "1, 2, 3, 4, 8",
            });
        }
        if self.offset.checked_add(self.width).is_none() {
            return Err(ConfigError::OutOfRange {
                name: "offset",
                value: self.offset as i128,
                range: "offset + width must fit in usize",
            });
        }
        if self.max_frame_length < self.header_length() {
            return Err(ConfigError::MaxTooSmall {
                max: self.max_frame_length,
                minimum: self.header_length(),
            });
        }
        Ok(())
    }
}

impl Default for LengthFieldConfig {
    /// A 4-byte big-endian length prefix: see [`LengthFieldConfig::new`].
    fn default() -> Self {
        Self::new(4)
    }
}

/// Length-field decoder and encoder with Netty's option set (see [`LengthFieldConfig`]).
///
/// A frame is `[offset bytes][length field][body]`; the field holds `body_len - adjustment`. The
/// decoder returns the frame minus its first `strip` bytes and accepts and rejects the same inputs
/// as Netty's `LengthFieldBasedFrameDecoder`, except that fields are read unsigned at every width
/// (Netty reports a 4- or 8-byte value with the top bit set as "negative length"; here it is over
/// any limit and reported as [`FrameTooLong`](DecodeErrorKind::FrameTooLong)). The limit is
/// compared with the whole adjusted frame, header included, as soon as the header has arrived.
///
/// The encoder is the counterpart of Netty's `LengthFieldPrepender` (see
/// [`LengthFieldConfig::prepender`]): it writes the field and the payload, so decoding gives the
/// payload back when `strip` equals the field width (the default). It cannot encode a config with
/// `offset > 0`, since it cannot know the bytes before the field.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, FrameEncoder, LengthFieldCodec, LengthFieldConfig};
///
/// let mut codec = LengthFieldCodec::new(LengthFieldConfig::new(4)).unwrap();
/// let mut wire = BytesMut::new();
/// codec.encode(b"ping", &mut wire).unwrap();
/// codec.encode(b"pong", &mut wire).unwrap();
/// assert_eq!(&wire[..], b"\0\0\0\x04ping\0\0\0\x04pong");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "ping");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "pong");
/// ```
#[derive(Debug, Clone)]
pub struct LengthFieldCodec {
    config: LengthFieldConfig,
    /// Bytes of an oversized frame still to be dropped (discard policy).
    discard_remaining: u64,
    consumed: u64,
    /// Payload lengths the encoder accepts (`None` when it cannot encode at all), computed once
    /// so that encoding a frame costs one range check.
    encodable: Option<std::ops::RangeInclusive<usize>>,
    /// Length-field values that give a valid frame, computed once so that decoding a header
    /// costs one range check; values outside it go to [`read_header`](Self::read_header) to be
    /// classified as errors.
    accepted_raw: std::ops::RangeInclusive<u64>,
    /// `adjustment + header_length` modulo 2^64: for an accepted value, `raw + delta` (wrapping)
    /// is exactly the frame length.
    delta: u64,
}

/// Outcome of reading a header at the front of a buffer.
enum Header {
    /// Not enough bytes for the header.
    Incomplete,
    /// Total frame length (header included, before stripping).
    Frame(usize),
}

impl LengthFieldCodec {
    /// Builds a codec, checking the configuration.
    pub fn new(config: LengthFieldConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let encodable = Self::encodable_payloads(&config);
        let accepted_raw = Self::accepted_raw_lengths(&config);
        let delta = (i128::from(config.adjustment) + config.header_length() as i128) as u64;
        Ok(LengthFieldCodec {
            config,
            discard_remaining: 0,
            consumed: 0,
            encodable,
            accepted_raw,
            delta,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LengthFieldConfig {
        &self.config
    }

    /// Field values whose frame length `raw + adjustment + header` is at least the header, at
    /// least `strip`, and at most the limit (an empty range when there are none).
    fn accepted_raw_lengths(cfg: &LengthFieldConfig) -> std::ops::RangeInclusive<u64> {
        let header = cfg.header_length() as i128;
        let adjustment = i128::from(cfg.adjustment);
        let low = (header.max(cfg.strip as i128) - adjustment - header).max(0);
        let high =
            (cfg.max_frame_length as i128 - adjustment - header).min(Self::field_max(cfg.width));
        if low > high {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        low as u64..=high as u64
    }

    /// The reference reading of a header, with every error classified. The decode fast path
    /// agrees with it (tested) and calls it only for values outside `accepted_raw`.
    fn read_header(&self, buf: &[u8]) -> Result<Header, DecodeErrorKind> {
        let cfg = &self.config;
        let field_end = cfg.header_length();
        if buf.len() < field_end {
            return Ok(Header::Incomplete);
        }
        let raw = cfg.order.read_uint(&buf[cfg.offset..field_end]);
        // i128 holds raw (< 2^64) + adjustment (|adj| < 2^63) + field_end without overflow.
        let frame_len = i128::from(raw) + i128::from(cfg.adjustment) + field_end as i128;
        if frame_len < field_end as i128 {
            return Err(DecodeErrorKind::LengthBelowHeader {
                raw_length: raw,
                adjustment: cfg.adjustment,
                header_length: field_end,
            });
        }
        if frame_len > cfg.max_frame_length as i128 {
            return Err(DecodeErrorKind::FrameTooLong {
                length: u64::try_from(frame_len).unwrap_or(u64::MAX),
                limit: cfg.max_frame_length,
            });
        }
        let frame_len = frame_len as usize; // <= max_frame_length
        if cfg.strip > frame_len {
            return Err(DecodeErrorKind::StripBeyondFrame {
                strip: cfg.strip,
                frame_length: frame_len,
            });
        }
        Ok(Header::Frame(frame_len))
    }

    /// Drops buffered bytes of an oversized frame; returns true when all of it is gone.
    fn discard(&mut self, buf: &mut BytesMut) -> bool {
        let n = (buf.len() as u64).min(self.discard_remaining) as usize;
        buf.advance(n);
        self.consumed += n as u64;
        self.discard_remaining -= n as u64;
        self.discard_remaining == 0
    }
}

impl LengthFieldCodec {
    /// The error for a header whose value is outside `accepted_raw`, after which a discarded
    /// frame starts being dropped.
    #[cold]
    fn header_error(&mut self, buf: &mut BytesMut) -> DecodeError {
        match self.read_header(buf) {
            Err(kind @ DecodeErrorKind::FrameTooLong { length, .. })
                if self.config.oversize == OversizePolicy::Discard =>
            {
                let offset = self.consumed;
                self.discard_remaining = length;
                self.discard(buf);
                DecodeError::recoverable(kind, offset)
            }
            Err(kind) => DecodeError::fatal(kind, self.consumed),
            Ok(_) => unreachable!("values that read_header accepts are in accepted_raw"),
        }
    }

    /// The length of the frame complete at the front of `buf` (header included), or `None`
    /// while more bytes are needed (room for the whole frame is then reserved).
    #[inline]
    fn complete_frame(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, DecodeError> {
        if self.discard_remaining > 0 && !self.discard(buf) {
            return Ok(None);
        }
        let cfg = &self.config;
        let field_end = cfg.offset + cfg.width; // validated not to overflow
        if buf.len() < field_end {
            return Ok(None);
        }
        let raw = cfg.order.read_uint(&buf[cfg.offset..field_end]);
        if !self.accepted_raw.contains(&raw) {
            return Err(self.header_error(buf));
        }
        // In range: the frame length is between the header and the limit, exact in wrapping u64.
        let frame_len = raw.wrapping_add(self.delta) as usize;
        if buf.len() < frame_len {
            reserve_for_frame(buf, frame_len);
            return Ok(None);
        }
        Ok(Some(frame_len))
    }
}

impl FrameDecoder for LengthFieldCodec {
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        let Some(frame_len) = self.complete_frame(buf)? else {
            return Ok(None);
        };
        let mut frame = buf.split_to(frame_len).freeze();
        frame.advance(self.config.strip);
        self.consumed += frame_len as u64;
        Ok(Some(frame))
    }

    #[inline]
    fn decode_visit<R>(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, DecodeError> {
        if eof {
            return Ok(self.decode_eof(buf)?.map(|frame| visit(&frame)));
        }
        let Some(frame_len) = self.complete_frame(buf)? else {
            return Ok(None);
        };
        let visited = visit(&buf[self.config.strip..frame_len]);
        buf.advance(frame_len);
        self.consumed += frame_len as u64;
        Ok(Some(visited))
    }

    fn consumed(&self) -> u64 {
        self.consumed
    }

    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        match self.read_header(buf) {
            Ok(Header::Frame(n)) => Some(n as u64),
            _ => None,
        }
    }
}

impl LengthFieldCodec {
    /// The largest value a field of this width holds.
    fn field_max(width: usize) -> i128 {
        if width == 8 {
            i128::from(u64::MAX)
        } else {
            (1i128 << (8 * width)) - 1
        }
    }

    /// Payload lengths whose frame fits the limit and whose field value `len - adjustment` fits
    /// the field; `None` when the config cannot encode (offset > 0) or no length fits.
    fn encodable_payloads(cfg: &LengthFieldConfig) -> Option<std::ops::RangeInclusive<usize>> {
        if cfg.offset != 0 {
            return None;
        }
        let adjustment = i128::from(cfg.adjustment);
        let low = adjustment.max(0);
        let high = (Self::field_max(cfg.width) + adjustment)
            .min((cfg.max_frame_length - cfg.width) as i128);
        (low <= high).then_some(low as usize..=high as usize)
    }

    /// The value the length field holds for a payload of `payload_len` bytes, or why the payload
    /// cannot be sent. An accepted value fits the field's width.
    #[inline]
    fn field_value(&self, payload_len: usize) -> Result<u64, EncodeError> {
        match &self.encodable {
            // In range, `payload_len - adjustment` is in 0..=field_max: exact in wrapping u64.
            Some(range) if range.contains(&payload_len) => {
                Ok((payload_len as u64).wrapping_sub(self.config.adjustment as u64))
            }
            _ => Err(self.encode_error(payload_len)),
        }
    }

    /// The length field for a payload of `payload_len` bytes: its bytes (the first `width` of
    /// the array), or why the payload cannot be sent.
    #[inline]
    fn length_field(&self, payload_len: usize) -> Result<[u8; 8], EncodeError> {
        let value = self.field_value(payload_len)?;
        let mut field = [0u8; 8];
        self.config
            .order
            .write_uint(value, &mut field[..self.config.width]);
        Ok(field)
    }

    /// Why a payload of `payload_len` bytes cannot be encoded.
    #[cold]
    fn encode_error(&self, payload_len: usize) -> EncodeError {
        let cfg = &self.config;
        if cfg.offset != 0 {
            return EncodeError::Unsupported {
                reason:
                    "the length field has bytes before it (offset > 0) that the encoder cannot know",
            };
        }
        if payload_len > cfg.max_frame_length - cfg.width {
            return EncodeError::FrameTooLong {
                length: payload_len,
                limit: cfg.max_frame_length,
            };
        }
        EncodeError::LengthNotRepresentable {
            value: payload_len as i128 - i128::from(cfg.adjustment),
            width: cfg.width as u8,
        }
    }
}

impl FrameEncoder for LengthFieldCodec {
    #[inline]
    fn check_payload(&self, payload: &[u8]) -> Result<(), EncodeError> {
        self.field_value(payload.len()).map(|_| ())
    }

    #[inline]
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        let field = self.length_field(payload.len())?;
        Ok(FrameParts::with_head(&field[..self.config.width]))
    }

    /// Writes the field and the payload straight into `dst` (no intermediate [`FrameParts`]).
    #[inline]
    fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        let value = self.field_value(payload.len())?;
        let width = self.config.width;
        dst.reserve(width + payload.len());
        // Fixed-size stores for the common widths; `field_value` made the casts exact.
        match (width, self.config.order) {
            (1, _) => dst.put_u8(value as u8),
            (2, ByteOrder::BigEndian) => dst.put_u16(value as u16),
            (2, ByteOrder::LittleEndian) => dst.put_u16_le(value as u16),
            (4, ByteOrder::BigEndian) => dst.put_u32(value as u32),
            (4, ByteOrder::LittleEndian) => dst.put_u32_le(value as u32),
            (8, ByteOrder::BigEndian) => dst.put_u64(value),
            (8, ByteOrder::LittleEndian) => dst.put_u64_le(value),
            _ => {
                let mut field = [0u8; 8];
                self.config.order.write_uint(value, &mut field[..width]);
                dst.extend_from_slice(&field[..width]);
            }
        }
        dst.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::{decode_chunked, hex, CheckedDecoder};

    fn codec(cfg: LengthFieldConfig) -> LengthFieldCodec {
        LengthFieldCodec::new(cfg).unwrap()
    }

    /// No buffer bound is checked for this codec.
    impl CheckedDecoder for LengthFieldCodec {
        fn buffer_bound(&self) -> Option<usize> {
            None
        }
    }

    /// Every worked example from Netty's documentation (copied from ../shared/vectors into the
    /// repo), at every split of the input.
    #[test]
    fn netty_documented_examples() {
        let text = include_str!("../../tests/data/netty-length-field.tsv");
        let mut count = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let f: Vec<&str> = line.split('\t').collect();
            let cfg = LengthFieldConfig::netty(
                1024,
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            );
            let (input, output) = (hex(f[4]), hex(f[5]));
            for chunk in 1..=input.len() {
                let (frames, errors) = decode_chunked(&mut codec(cfg.clone()), &input, chunk);
                assert!(errors.is_empty(), "{line}: {errors:?}");
                assert_eq!(
                    frames,
                    vec![Bytes::from(output.clone())],
                    "{line} chunk {chunk}"
                );
            }
            count += 1;
        }
        assert_eq!(count, 7);
    }

    #[test]
    fn all_widths_and_orders_round_trip() {
        for width in [1, 2, 3, 4, 8] {
            for order in [ByteOrder::BigEndian, ByteOrder::LittleEndian] {
                let mut c = codec(LengthFieldConfig {
                    order,
                    ..LengthFieldConfig::new(width)
                });
                let mut wire = BytesMut::new();
                c.encode(b"abc", &mut wire).unwrap();
                assert_eq!(wire.len(), width + 3);
                let expected_field: Vec<u8> = match order {
                    ByteOrder::BigEndian => {
                        let mut v = vec![0; width];
                        v[width - 1] = 3;
                        v
                    }
                    ByteOrder::LittleEndian => {
                        let mut v = vec![0; width];
                        v[0] = 3;
                        v
                    }
                };
                assert_eq!(&wire[..width], &expected_field[..]);
                assert_eq!(c.decode(&mut wire).unwrap().unwrap(), "abc");
                assert!(wire.is_empty());
            }
        }
    }

    #[test]
    fn huge_length_rejected_on_sight_without_allocating() {
        let mut c = codec(LengthFieldConfig::new(4));
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        let cap = buf.capacity();
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 0xffff_ffff + 4,
                limit: DEFAULT_MAX_FRAME_LENGTH
            }
        );
        assert!(!err.is_recoverable());
        assert_eq!(buf.capacity(), cap);
        // 8-byte field at u64::MAX: no overflow, saturated length.
        let mut c = codec(LengthFieldConfig::new(8));
        let mut buf = BytesMut::from(&[0xffu8; 8][..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err.kind(),
            DecodeErrorKind::FrameTooLong {
                length: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn limit_is_checked_on_the_adjusted_length() {
        // The field says 10, but the adjustment adds 100 bytes of body: over a 64-byte limit.
        let mut c = codec(LengthFieldConfig {
            adjustment: 100,
            max_frame_length: 64,
            ..LengthFieldConfig::new(2)
        });
        let mut buf = BytesMut::from(&[0u8, 10][..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 112,
                limit: 64
            }
        );
        // Exactly at the limit is accepted.
        let mut c = codec(LengthFieldConfig {
            max_frame_length: 12,
            ..LengthFieldConfig::new(2)
        });
        let mut buf = BytesMut::from(&[0u8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().len(), 10);
    }

    #[test]
    fn discard_policy_skips_the_oversized_frame_and_continues() {
        let mut c = codec(LengthFieldConfig {
            max_frame_length: 8,
            oversize: OversizePolicy::Discard,
            ..LengthFieldConfig::new(1)
        });
        let mut input = vec![1u8, b'a'];
        input.push(20);
        input.extend_from_slice(&[b'x'; 20]);
        input.extend_from_slice(&[2, b'b', b'c']);
        for chunk in 1..input.len() {
            c = codec(c.config.clone());
            let (frames, errors) = decode_chunked(&mut c, &input, chunk);
            assert_eq!(frames, vec![Bytes::from("a"), Bytes::from("bc")]);
            assert_eq!(errors.len(), 1, "reported once per frame");
            assert!(errors[0].is_recoverable());
            assert_eq!(errors[0].offset(), 2);
            assert_eq!(c.consumed(), input.len() as u64);
        }
    }

    #[test]
    fn corrupt_headers_are_fatal_with_numbers() {
        // Netty: adjusted frame length less than lengthFieldEndOffset.
        let mut c = codec(LengthFieldConfig::netty(1024, 0, 2, -4, 0));
        let mut buf = BytesMut::from(&[0u8, 1, 9][..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::LengthBelowHeader {
                raw_length: 1,
                adjustment: -4,
                header_length: 2
            }
        );
        assert!(!err.is_recoverable());
        // Netty: initialBytesToStrip greater than the frame.
        let mut c = codec(LengthFieldConfig::netty(1024, 0, 1, 0, 5));
        let mut buf = BytesMut::from(&[1u8, 9][..]);
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::StripBeyondFrame {
                strip: 5,
                frame_length: 2
            }
        );
    }

    #[test]
    fn truncated_at_eof_reports_buffered_and_expected() {
        let mut c = codec(LengthFieldConfig::new(2));
        let mut buf = BytesMut::from(&[0u8, 2, b'o', b'k', 0, 5, b'h', b'e'][..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "ok");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 4,
                expected: Some(7)
            }
        );
        assert_eq!(err.offset(), 4);
        // A partial header: length unknown.
        let mut c = codec(LengthFieldConfig::new(2));
        let mut buf = BytesMut::from(&[0u8][..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: 1,
                expected: None
            }
        );
    }

    #[test]
    fn buffer_grows_with_arrivals_not_declared_length() {
        let mut c = codec(LengthFieldConfig::new(4));
        // Declares 8 MiB - 4 (allowed) but sends 10 bytes.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((8 << 20) - 4u32).to_be_bytes());
        buf.extend_from_slice(&[0; 10]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn encoder_matches_netty_prepender() {
        // LengthFieldPrepender(2, 0, true): field counts itself.
        let c = codec(LengthFieldConfig::prepender(2, 0, true));
        let mut wire = BytesMut::new();
        c.encode(b"HELLO, WORLD", &mut wire).unwrap();
        assert_eq!(&wire[..2], &[0, 14]);
        // The decoder with the same config reads it back.
        let mut d = codec(LengthFieldConfig::prepender(2, 0, true));
        assert_eq!(d.decode(&mut wire).unwrap().unwrap(), "HELLO, WORLD");
        // LengthFieldPrepender(1, 3, false): field holds payload + 3.
        let c = codec(LengthFieldConfig::prepender(1, 3, false));
        let mut wire = BytesMut::new();
        c.encode(b"ab", &mut wire).unwrap();
        assert_eq!(&wire[..1], &[5]);
    }

    #[test]
    fn encoder_refuses_what_the_field_cannot_express() {
        let c = codec(LengthFieldConfig {
            max_frame_length: 1 << 20,
            ..LengthFieldConfig::new(1)
        });
        let mut wire = BytesMut::new();
        assert_eq!(
            c.encode(&[0; 256], &mut wire),
            Err(EncodeError::LengthNotRepresentable {
                value: 256,
                width: 1
            })
        );
        assert!(wire.is_empty());
        c.encode(&[0; 255], &mut wire).unwrap();
        // Negative after adjustment.
        let c = codec(LengthFieldConfig {
            adjustment: 5,
            ..LengthFieldConfig::new(2)
        });
        assert!(matches!(
            c.encode(b"ab", &mut BytesMut::new()),
            Err(EncodeError::LengthNotRepresentable { value: -3, .. })
        ));
        // Over the limit.
        let c = codec(LengthFieldConfig {
            max_frame_length: 10,
            ..LengthFieldConfig::new(2)
        });
        assert_eq!(
            c.encode(&[0; 9], &mut BytesMut::new()),
            Err(EncodeError::FrameTooLong {
                length: 9,
                limit: 10
            })
        );
        // An offset cannot be encoded.
        let c = codec(LengthFieldConfig::netty(1024, 2, 3, 0, 0));
        assert!(matches!(
            c.encode(b"x", &mut BytesMut::new()),
            Err(EncodeError::Unsupported { .. })
        ));
    }

    /// Found by the `decode_length_field` fuzz target: an offset near `usize::MAX` overflowed
    /// `offset + width` (a panic in debug builds, a slice panic on the first decode in release).
    #[test]
    fn huge_offset_is_a_config_error_not_a_panic() {
        let cfg = LengthFieldConfig {
            offset: usize::MAX - 6,
            ..LengthFieldConfig::new(8)
        };
        assert!(matches!(
            LengthFieldCodec::new(cfg),
            Err(ConfigError::OutOfRange { name: "offset", .. })
        ));
        let cfg = LengthFieldConfig {
            offset: usize::MAX - 8,
            max_frame_length: usize::MAX,
            ..LengthFieldConfig::new(8)
        };
        let mut c = LengthFieldCodec::new(cfg).unwrap();
        assert_eq!(c.decode(&mut BytesMut::from(&[0u8; 3][..])), Ok(None));
    }

    proptest::proptest! {
        /// The precomputed range of accepted field values agrees with the reference header
        /// reading for every config and value, including at the edges of the range.
        #[test]
        fn fast_path_agrees_with_reference(
            width in proptest::sample::select(vec![1usize, 2, 3, 4, 8]),
            offset in 0usize..4,
            adjustment in proptest::prop_oneof![-20i64..20, proptest::prelude::any::<i64>()],
            strip in 0usize..16,
            max in 12usize..400,
            raw in proptest::prelude::any::<u64>(),
        ) {
            let cfg = LengthFieldConfig { offset, adjustment, strip, max_frame_length: max, ..LengthFieldConfig::new(width) };
            let codec = codec(cfg.clone());
            let field_max = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
            let mut candidates = vec![raw & field_max, 0, field_max];
            for edge in [*codec.accepted_raw.start(), *codec.accepted_raw.end()] {
                candidates.extend([edge.wrapping_sub(1), edge, edge.wrapping_add(1)].map(|v| v & field_max));
            }
            for value in candidates {
                let mut header = vec![0u8; offset + width];
                cfg.order.write_uint(value, &mut header[offset..]);
                let reference = codec.read_header(&header);
                let fast = codec.accepted_raw.contains(&value);
                proptest::prop_assert_eq!(fast, reference.is_ok(), "value {}", value);
                if let Ok(Header::Frame(n)) = reference {
                    proptest::prop_assert_eq!(value.wrapping_add(codec.delta) as usize, n);
                }
            }
        }
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(matches!(
            LengthFieldCodec::new(LengthFieldConfig::new(5)),
            Err(ConfigError::InvalidWidth { width: 5, .. })
        ));
        assert!(matches!(
            LengthFieldCodec::new(LengthFieldConfig::netty(3, 2, 2, 0, 0)),
            Err(ConfigError::MaxTooSmall { max: 3, minimum: 4 })
        ));
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut c = codec(LengthFieldConfig::new(1));
        let mut buf = BytesMut::from(&[3u8, b'a', b'b', b'c', 1, b'd'][..]);
        let base = buf.as_ptr() as usize;
        let f1 = c.decode(&mut buf).unwrap().unwrap();
        let f2 = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.as_ptr() as usize, base + 1);
        assert_eq!(f2.as_ptr() as usize, base + 5);
    }
}
