//! Socket helpers of the driver: the output queue written with vectored writes, reads into the
//! machine's receive buffer sized by the frames seen, and the buffer-growth rules.

use super::*;

/// Read straight into the machine's buffer when it has at least this much room.
pub(super) const MIN_DIRECT_READ: usize = 4 * 1024;
/// Size of the stack buffer for reads into an empty (released) receive buffer.
pub(super) const STACK_READ: usize = 8 * 1024;
/// Room reserved in the receive buffer once reads come in full (a busy connection).
pub(super) const READ_SIZE: usize = 64 * 1024;
/// Frames at least this large set the size of the next reads (see [`Driver::on_read`]).
pub(super) const LARGE_FRAME: usize = 32 * 1024;
/// ... up to this size.
pub(super) const MAX_PREDICTED_FRAME: usize = 1024 * 1024;
/// Room beyond the expected frame, for the small frames between large ones (ACKs, pings).
pub(super) const FRAME_SLACK: usize = 4 * 1024;
/// At most this many buffers per vectored write.
pub(super) const MAX_IOV: usize = 64;

/// Chunks from `poll_transmit` waiting for the socket, written with vectored writes.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    pub(super) chunks: VecDeque<Bytes>,
    pub(super) remaining: usize,
}

impl OutQueue {
    pub(super) fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.remaining += chunk.len();
        self.chunks.push_back(chunk);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    pub(super) fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.remaining = 0;
    }

    /// Marks `cnt` bytes written; releases the chunk buffer once everything is.
    pub(super) fn consume(&mut self, mut cnt: usize) {
        debug_assert!(cnt <= self.remaining, "advance past the end of the queue");
        cnt = cnt.min(self.remaining);
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
        if self.remaining == 0 {
            // One allocation per write batch at most; a quiet connection keeps no ring.
            self.chunks = VecDeque::new();
        }
    }
}

/// What the socket did.
pub(super) enum Io {
    Read(std::io::Result<usize>),
    /// Some output was written (or the write half shut down); `Err` ends writing.
    Written(std::io::Result<()>),
}

/// Reads into `buf`: straight into its spare room when there is enough of it, else through a
/// stack buffer (so an idle connection needs no read buffer of its own).
///
/// `budgeted` (a memory budget counts this buffer): after a full stack read the buffer is not
/// grown ahead of the next read, whose growth the driver reserves first.
pub(super) fn poll_read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    budgeted: bool,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_DIRECT_READ && !buf.is_empty() {
        // Part of a message is buffered: the connection is busy. Grow once, read straight in
        // (going through the stack buffer would copy the partial message twice).
        buf.reserve(READ_SIZE);
    }
    if buf.capacity() - buf.len() >= MIN_DIRECT_READ {
        return tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
    let mut read_buf = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(stream).poll_read(cx, &mut read_buf))?;
    let filled = read_buf.filled();
    if filled.len() == STACK_READ && !budgeted {
        // A busy stream: read straight into the buffer from now on.
        buf.reserve(READ_SIZE.max(filled.len()));
    }
    buf.extend_from_slice(filled);
    Poll::Ready(Ok(filled.len()))
}

/// What `buf.reserve(additional)` may allocate at most: nothing when it has the room, else a
/// new buffer of the larger of twice its capacity (growth by doubling) and what is asked for.
pub(super) fn growth_bound(buf: &BytesMut, additional: usize) -> usize {
    let (len, cap) = (buf.len(), buf.capacity());
    if cap - len >= additional {
        0
    } else {
        cap.max((len + additional).saturating_sub(cap))
    }
}

/// What the next read may allocate in `buf`, the partial frame at its front being `pending`
/// bytes long (if known): [`poll_read_into`] grows a full buffer by [`READ_SIZE`] (nothing when
/// it reads straight into spare room), then the machine's framing may grow it for the rest of
/// the frame, by at most doubling it (nothing when the frame fits).
///
/// An empty buffer is not reserved for: a stack read copies at most [`STACK_READ`] bytes and
/// the framing then grows that by at most as much, 16 KiB per connection counted once it is
/// there (the budget's documented slack), so that idle connections reserve nothing.
pub(super) fn read_growth(buf: &BytesMut, pending: Option<usize>) -> usize {
    if buf.is_empty() {
        return 0;
    }
    let spare = buf.capacity() - buf.len();
    let read = if spare >= MIN_DIRECT_READ {
        0
    } else {
        growth_bound(buf, READ_SIZE)
    };
    let capacity = buf.capacity() + read;
    let framing = match pending {
        Some(total) if total <= capacity => 0,
        _ => capacity,
    };
    read + framing
}

/// Makes room in `buf` for the rest of the partial frame of `total` bytes at its front, now,
/// while little of it has arrived.
///
/// Without this, a frame a little larger than the room left is found not to fit only when the
/// room is full, and then almost all of it is copied to a bigger buffer (earlier frames still
/// share the old one). Growth is bounded by what has arrived, or [`READ_SIZE`]: memory
/// follows what the peer sent, not what it declared, and a longer frame grows the buffer
/// again later, each time by at least as much as it holds.
pub(super) fn make_room_for_frame(buf: &mut BytesMut, total: usize) {
    let missing = total.saturating_sub(buf.len());
    if missing > buf.capacity() - buf.len() {
        buf.reserve(missing.min(buf.len().max(READ_SIZE)));
    }
}

/// Writes as much of `out` as the socket takes now (vectored), flushing once it is empty.
pub(super) fn poll_write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    out: &mut OutQueue,
    shutdown: bool,
) -> Poll<std::io::Result<()>> {
    let mut progress = false;
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let n = out
            .chunks
            .iter()
            .zip(slices.iter_mut())
            .map(|(chunk, slice)| *slice = IoSlice::new(chunk))
            .count();
        match Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(written)) => {
                out.consume(written);
                progress = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if progress => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    }
    ready!(Pin::new(&mut *stream).poll_flush(cx))?;
    if shutdown {
        ready!(Pin::new(&mut *stream).poll_shutdown(cx))?;
    }
    Poll::Ready(Ok(()))
}
