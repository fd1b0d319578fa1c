//! SKELETON spec
use super::*;
/// parse
pub fn parse(_text: &str) -> Result<Framing, ConfigError> {
    todo!()
}
/// render
pub fn render(_f: &Framing) -> String {
    todo!()
}
