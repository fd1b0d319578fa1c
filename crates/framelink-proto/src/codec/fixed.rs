//! SKELETON (to be replaced): fixed-length frames.
use super::*;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedLengthConfig {
    pub length: usize,
}
#[derive(Debug, Clone)]
pub struct FixedLengthCodec {
    config: FixedLengthConfig,
    consumed: u64,
}
impl FixedLengthCodec {
    pub fn new(config: FixedLengthConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config,
            consumed: 0,
        })
    }
    pub fn config(&self) -> &FixedLengthConfig {
        &self.config
    }
}
impl FrameDecoder for FixedLengthCodec {
    fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        todo!()
    }
    fn consumed(&self) -> u64 {
        self.consumed
    }
}
impl FrameEncoder for FixedLengthCodec {
    fn frame_parts(&self, _p: &[u8]) -> Result<FrameParts, EncodeError> {
        todo!()
    }
}
