//! Socket-side helpers for framed I/O that tokio-util's `Framed` does not cover: vectored frame
//! writes that never copy the payload, and a read loop that reports where each frame sat in the
//! stream.

use bytes::{Buf, Bytes, BytesMut};
use framelink_proto::codec::{DecodeError, FrameDecoder, FrameEncoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::FrameError;

/// Writes one frame as header, payload and trailer slices with vectored writes (`writev`), so the
/// payload is never copied. Returns the number of bytes written.
///
/// ```no_run
/// # async fn run(stream: &mut tokio::net::TcpStream) -> Result<(), framelink::FrameError> {
/// let framing: framelink::Framing = "length:4".parse().unwrap();
/// let big = bytes::Bytes::from(vec![0u8; 1 << 20]);
/// framelink::io::write_frame(stream, &framing, big).await?;
/// # Ok(()) }
/// ```
pub async fn write_frame<W, E>(
    writer: &mut W,
    encoder: &E,
    payload: Bytes,
) -> Result<usize, FrameError>
where
    W: AsyncWrite + Unpin,
    E: FrameEncoder + ?Sized,
{
    let mut frame = encoder.encode_vectored(payload)?;
    let len = frame.remaining();
    writer.write_all_buf(&mut frame).await?;
    Ok(len)
}

/// Reads frames from `reader` until the stream ends, calling `on_frame` for each. Recoverable
/// decode errors go to `on_recovered` and decoding continues; a fatal error or a truncated final
/// frame ends the loop with that error. Reads of up to `read_size` bytes.
///
/// Returns the number of frames decoded.
pub async fn read_frames<R, D>(
    reader: &mut R,
    decoder: &mut D,
    read_size: usize,
    mut on_frame: impl FnMut(Bytes),
    mut on_recovered: impl FnMut(DecodeError),
) -> Result<u64, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    D: FrameDecoder + ?Sized,
{
    let mut buf = BytesMut::with_capacity(read_size);
    let mut frames = 0;
    let mut eof = false;
    loop {
        loop {
            let result = decoder.decode_with_eof(&mut buf, eof);
            match result {
                Ok(Some(frame)) => {
                    frames += 1;
                    on_frame(frame);
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => on_recovered(e),
                Err(e) => return Err(e.into()),
            }
        }
        if eof {
            return Ok(frames);
        }
        buf.reserve(read_size);
        eof = reader.read_buf(&mut buf).await? == 0;
    }
}
