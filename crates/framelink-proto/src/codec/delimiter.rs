//! SKELETON (to be replaced): delimiters and lines.
use super::*;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelimiterConfig {
    pub delimiters: Vec<Vec<u8>>,
    pub strip: bool,
    pub max_frame_length: usize,
    pub oversize: OversizePolicy,
}
impl DelimiterConfig {
    pub fn new(delimiters: Vec<Vec<u8>>) -> Self {
        DelimiterConfig {
            delimiters,
            strip: true,
            max_frame_length: DEFAULT_MAX_LINE_LENGTH,
            oversize: OversizePolicy::Fail,
        }
    }
}
#[derive(Debug, Clone)]
pub struct DelimiterCodec {
    config: DelimiterConfig,
    consumed: u64,
}
impl DelimiterCodec {
    pub fn new(config: DelimiterConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config,
            consumed: 0,
        })
    }
    pub fn config(&self) -> &DelimiterConfig {
        &self.config
    }
}
impl FrameDecoder for DelimiterCodec {
    fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        todo!()
    }
    fn consumed(&self) -> u64 {
        self.consumed
    }
}
impl FrameEncoder for DelimiterCodec {
    fn frame_parts(&self, _p: &[u8]) -> Result<FrameParts, EncodeError> {
        todo!()
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinesConfig {
    pub max_frame_length: usize,
    pub oversize: OversizePolicy,
    pub strip: bool,
    pub crlf: bool,
}
impl Default for LinesConfig {
    fn default() -> Self {
        LinesConfig {
            max_frame_length: DEFAULT_MAX_LINE_LENGTH,
            oversize: OversizePolicy::Fail,
            strip: true,
            crlf: false,
        }
    }
}
#[derive(Debug, Clone)]
pub struct LinesCodec {
    config: LinesConfig,
    consumed: u64,
}
impl LinesCodec {
    pub fn new(config: LinesConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            config,
            consumed: 0,
        })
    }
    pub fn config(&self) -> &LinesConfig {
        &self.config
    }
}
impl Default for LinesCodec {
    fn default() -> Self {
        Self::new(LinesConfig::default()).unwrap()
    }
}
impl FrameDecoder for LinesCodec {
    fn decode(&mut self, _buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        todo!()
    }
    fn consumed(&self) -> u64 {
        self.consumed
    }
}
impl FrameEncoder for LinesCodec {
    fn frame_parts(&self, _p: &[u8]) -> Result<FrameParts, EncodeError> {
        todo!()
    }
}
