//! The tokio runtime the Python package runs framelink's connections on, and the `Hub` that
//! tells an asyncio event loop when there is something to take.
//!
//! Why a background runtime (see `docs/ARCHITECTURE.md`, "Python package"): the reconnect,
//! heartbeat, session and server logic exists once, in the tokio layer. The runtime's I/O
//! thread reads, decodes, answers pings and writes without the GIL; Python is crossed once per
//! batch. The Hub is an eventfd (a pipe off Linux) that the event loop watches with
//! `add_reader`: waking Python costs one `write(2)` and never takes the GIL on the I/O thread,
//! so a busy interpreter cannot stall the network side.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// Worker threads of the runtime when `FRAMELINK_THREADS` is not set: one does the I/O of
/// thousands of connections, and leaves the other cores to Python.
const DEFAULT_THREADS: usize = 1;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process-wide runtime, started on first use.
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let threads = std::env::var("FRAMELINK_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_THREADS);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("framelink-io")
            .enable_all()
            .build()
            .expect("cannot start the framelink I/O runtime")
    })
}

/// The wake-up side of a [`Hub`], held by the I/O tasks.
#[derive(Debug)]
pub struct HubInner {
    /// Readable while tokens are waiting (eventfd, or the read end of a pipe).
    read: OwnedFd,
    /// Written to wake the loop (the same eventfd, or the pipe's write end).
    write: Option<OwnedFd>,
    ready: Mutex<Vec<u64>>,
}

impl HubInner {
    fn new() -> io::Result<HubInner> {
        #[cfg(target_os = "linux")]
        {
            // Safety: plain system call; the descriptor is owned from here on.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(HubInner {
                read: unsafe { OwnedFd::from_raw_fd(fd) },
                write: None,
                ready: Mutex::new(Vec::new()),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut fds = [0; 2];
            // Safety: plain system calls on descriptors owned from here on.
            unsafe {
                if libc::pipe(fds.as_mut_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                for fd in fds {
                    libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
                Ok(HubInner {
                    read: OwnedFd::from_raw_fd(fds[0]),
                    write: Some(OwnedFd::from_raw_fd(fds[1])),
                    ready: Mutex::new(Vec::new()),
                })
            }
        }
    }

    /// Marks `token` ready; the first token of a batch makes the descriptor readable.
    pub fn wake(&self, token: u64) {
        let first = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.push(token);
            ready.len() == 1
        };
        if first {
            let one = 1u64.to_ne_bytes();
            let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
            // Safety: writes 8 bytes from a live buffer. A full pipe or a saturated eventfd
            // already means "readable": the error is of no consequence.
            unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
        }
    }

    /// Clears the descriptor, then takes the tokens. In that order: a token added after the
    /// clear either is taken now or makes the descriptor readable again.
    fn take(&self) -> Vec<u64> {
        let mut sink = [0u8; 64];
        loop {
            // Safety: reads into a live buffer of the given length.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
            if n < sink.len() as isize {
                break;
            }
        }
        std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A wake-up channel from the I/O runtime to one asyncio event loop.
///
/// The loop watches `fileno()` with `add_reader`; when it is readable, `take_ready()` returns the
/// tokens of the objects that have something to take.
#[pyclass(module = "framelink._native", frozen)]
pub struct Hub {
    pub inner: Arc<HubInner>,
}

#[pymethods]
impl Hub {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Hub {
            inner: Arc::new(HubInner::new()?),
        })
    }

    /// The descriptor to watch for reading.
    fn fileno(&self) -> i32 {
        self.inner.read.as_raw_fd()
    }

    /// The tokens woken since the last call (each object at most once per call, usually).
    fn take_ready(&self) -> Vec<u64> {
        self.inner.take()
    }
}
