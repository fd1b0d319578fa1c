//! tokio-util adapter (feature `tokio-codec`): `tokio_util::codec::{Decoder, Encoder}` for
//! [`Framing`] and every codec, so that `Framed::new(stream, framing)` works. This module adds
//! trait impls only; it needs no runtime.

use std::io;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use super::{
    DecodeError, DelimiterCodec, EncodeError, FixedLengthCodec, FrameDecoder, FrameEncoder,
    Framing, LengthFieldCodec, LinesCodec, MagicCodec, NetstringCodec, VarintCodec,
};

/// Error type of the tokio-util adapter: an I/O error from the stream, or a framing error.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The byte stream is not validly framed.
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
    /// A payload could not be framed.
    #[error("encode error: {0}")]
    Encode(#[from] EncodeError),
}

impl Decoder for Framing {
    type Item = Bytes;
    type Error = FrameError;

    /// Decodes past recoverable errors (see [`Framing::take_recovered_errors`]): tokio-util's
    /// `FramedRead` ends the stream after any error.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(self.decode_past_recoverable(src, false)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(self.decode_past_recoverable(src, true)?)
    }
}

/// The concrete codecs return every error, recoverable ones included, as tokio-util errors; wrap
/// a codec in a [`Framing`] to decode past recoverable errors.
macro_rules! tokio_codec {
    ($($codec:ty),*) => {$(
        impl Decoder for $codec {
            type Item = Bytes;
            type Error = FrameError;
            fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
                Ok(FrameDecoder::decode(self, src)?)
            }
            fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
                Ok(FrameDecoder::decode_eof(self, src)?)
            }
        }
    )*};
}
tokio_codec!(
    LengthFieldCodec,
    VarintCodec,
    DelimiterCodec,
    LinesCodec,
    FixedLengthCodec,
    NetstringCodec,
    MagicCodec
);

/// Encoders for the payload types users send: `Bytes`, `&[u8]`, `Vec<u8>`, `&str`, `String`.
macro_rules! tokio_encoder {
    ($($codec:ty),*) => {$(
        impl Encoder<Bytes> for $codec {
            type Error = FrameError;
            fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
                Ok(FrameEncoder::encode(self, &item, dst)?)
            }
        }
        impl<'a> Encoder<&'a [u8]> for $codec {
            type Error = FrameError;
            fn encode(&mut self, item: &'a [u8], dst: &mut BytesMut) -> Result<(), FrameError> {
                Ok(FrameEncoder::encode(self, item, dst)?)
            }
        }
        impl Encoder<Vec<u8>> for $codec {
            type Error = FrameError;
            fn encode(&mut self, item: Vec<u8>, dst: &mut BytesMut) -> Result<(), FrameError> {
                Ok(FrameEncoder::encode(self, &item, dst)?)
            }
        }
        impl<'a> Encoder<&'a str> for $codec {
            type Error = FrameError;
            fn encode(&mut self, item: &'a str, dst: &mut BytesMut) -> Result<(), FrameError> {
                Ok(FrameEncoder::encode(self, item.as_bytes(), dst)?)
            }
        }
        impl Encoder<String> for $codec {
            type Error = FrameError;
            fn encode(&mut self, item: String, dst: &mut BytesMut) -> Result<(), FrameError> {
                Ok(FrameEncoder::encode(self, item.as_bytes(), dst)?)
            }
        }
    )*};
}
tokio_encoder!(
    Framing,
    LengthFieldCodec,
    VarintCodec,
    DelimiterCodec,
    LinesCodec,
    FixedLengthCodec,
    NetstringCodec,
    MagicCodec
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{LengthFieldConfig, OversizePolicy};

    #[test]
    fn framing_decodes_past_recoverable_errors_and_keeps_them() {
        let mut framing = Framing::from(
            LengthFieldCodec::new(LengthFieldConfig {
                max_frame_length: 4,
                oversize: OversizePolicy::Discard,
                ..LengthFieldConfig::new(1)
            })
            .unwrap(),
        );
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'x'][..]);
        let frame = Decoder::decode(&mut framing, &mut buf).unwrap();
        assert_eq!(frame.unwrap(), "x");
        assert_eq!(framing.recovered_error_count(), 1);
        let errors = framing.take_recovered_errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].offset(), 0);
        assert!(framing.take_recovered_errors().is_empty());
        // The plain codec returns it as an error instead.
        let mut codec = LengthFieldCodec::new(LengthFieldConfig {
            max_frame_length: 4,
            oversize: OversizePolicy::Discard,
            ..LengthFieldConfig::new(1)
        })
        .unwrap();
        let mut buf = BytesMut::from(&[9u8, 0][..]);
        assert!(matches!(
            Decoder::decode(&mut codec, &mut buf),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn encoders_accept_common_payload_types() {
        let mut framing = Framing::parse("length:1").unwrap();
        let mut dst = BytesMut::new();
        Encoder::encode(&mut framing, Bytes::from_static(b"a"), &mut dst).unwrap();
        Encoder::encode(&mut framing, &b"b"[..], &mut dst).unwrap();
        Encoder::encode(&mut framing, vec![b'c'], &mut dst).unwrap();
        Encoder::encode(&mut framing, "d", &mut dst).unwrap();
        Encoder::encode(&mut framing, String::from("e"), &mut dst).unwrap();
        assert_eq!(&dst[..], b"\x01a\x01b\x01c\x01d\x01e");
    }
}
