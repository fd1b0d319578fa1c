//! SKELETON (to be replaced): netstrings.
use super::*;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetstringConfig {
    pub max_frame_length: usize,
    pub oversize: OversizePolicy,
}
impl Default for NetstringConfig {
    fn default() -> Self {
        NetstringConfig {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            oversize: OversizePolicy::Fail,
        }
    }
}
#[derive(Debug, Clone)]
pub struct NetstringCodec {
    config: NetstringConfig,
    consumed: u64,
}
impl NetstringCodec {
    pub fn new(config: NetstringConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config,
            consumed: 0,
        })
    }
    pub fn config(&self) -> &NetstringConfig {
        &self.config
    }
}
impl Default for NetstringCodec {
    fn default() -> Self {
        Self::new(NetstringConfig::default()).unwrap()
    }
}
impl FrameDecoder for NetstringCodec {
    fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        todo!()
    }
    fn consumed(&self) -> u64 {
        self.consumed
    }
}
impl FrameEncoder for NetstringCodec {
    fn frame_parts(&self, _p: &[u8]) -> Result<FrameParts, EncodeError> {
        todo!()
    }
}
