//! framelink tokio layer (in progress)
pub use framelink_proto::codec;
