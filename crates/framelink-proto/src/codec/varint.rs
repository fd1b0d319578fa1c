//! SKELETON (to be replaced): varint length prefix.
use super::*;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarintConfig {
    pub max_frame_length: usize,
    pub oversize: OversizePolicy,
    pub strict: bool,
}
impl Default for VarintConfig {
    fn default() -> Self {
        VarintConfig {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            oversize: OversizePolicy::Fail,
            strict: true,
        }
    }
}
#[derive(Debug, Clone)]
pub struct VarintCodec {
    config: VarintConfig,
    consumed: u64,
}
impl VarintCodec {
    pub fn new(config: VarintConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config,
            consumed: 0,
        })
    }
    pub fn config(&self) -> &VarintConfig {
        &self.config
    }
}
impl Default for VarintCodec {
    fn default() -> Self {
        Self::new(VarintConfig::default()).unwrap()
    }
}
impl FrameDecoder for VarintCodec {
    fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        todo!()
    }
    fn consumed(&self) -> u64 {
        self.consumed
    }
}
impl FrameEncoder for VarintCodec {
    fn frame_parts(&self, _p: &[u8]) -> Result<FrameParts, EncodeError> {
        todo!()
    }
}
