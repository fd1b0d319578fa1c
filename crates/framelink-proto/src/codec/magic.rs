//! SKELETON (to be replaced): magic + length + checksum header with resynchronisation.
use super::*;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    #[default]
    None,
    Crc32,
    Crc32c,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResyncPolicy {
    Fail,
    #[default]
    Resync,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MagicConfig {
    pub magic: Vec<u8>,
    pub length_width: usize,
    pub order: ByteOrder,
    pub checksum: Checksum,
    pub max_frame_length: usize,
    pub resync: ResyncPolicy,
}
impl MagicConfig {
    pub fn new(magic: Vec<u8>) -> Self {
        MagicConfig {
            magic,
            length_width: 4,
            order: ByteOrder::BigEndian,
            checksum: Checksum::Crc32c,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            resync: ResyncPolicy::Resync,
        }
    }
}
#[derive(Debug, Clone)]
pub struct MagicCodec {
    config: MagicConfig,
    consumed: u64,
}
impl MagicCodec {
    pub fn new(config: MagicConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config,
            consumed: 0,
        })
    }
    pub fn config(&self) -> &MagicConfig {
        &self.config
    }
}
impl FrameDecoder for MagicCodec {
    fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        todo!()
    }
    fn consumed(&self) -> u64 {
        self.consumed
    }
}
impl FrameEncoder for MagicCodec {
    fn frame_parts(&self, _p: &[u8]) -> Result<FrameParts, EncodeError> {
        todo!()
    }
}
