//! `framelink._native`: the Rust side of the Python package.
//!
//! - `codec`: `Decoder` / `Encoder`, the sans-IO framing codecs (any socket style).
//! - `link`: `Link`, one connection or reconnecting client driven by the tokio layer, taken
//!   from Python in batches.
//! - `server`: `Server`, the tokio layer's server.
//! - `runtime`: the background I/O runtime and the `Hub` that wakes asyncio loops.
//! - `lent`: `LentBuffer`, a buffer's free space lent to Python for `recv_into` /
//!   `BufferedProtocol` (`get_buffer` / `buffer_updated`), used by `Decoder` and `LoopMachine`.
//! - `config`: keyword options into the tokio layer's configuration.
//! - `errors`: Rust errors as the exceptions of `framelink.errors`.
//!
//! The Python modules (`python/framelink/`) build the asyncio and blocking APIs on these.

mod codec;
mod config;
mod errors;
mod lent;
mod link;
mod loopconn;
mod runtime;
mod server;

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::watch;

use link::{Kind, Link, SendSide, Shared};
use runtime::runtime;

/// Starts a reconnecting client to `host:port` on the I/O runtime (returns at once; the
/// `connected` event follows).
#[pyfunction]
fn connect(py: Python<'_>, host: &str, port: u16, options: &Bound<'_, PyDict>) -> PyResult<Link> {
    let config = config::client(py, options)?;
    let addr = server::format_addr(host, port);
    let _guard = runtime().enter();
    let client =
        framelink::Client::connect(addr, config).map_err(|e| errors::config_error(py, e))?;
    let sender = client.sender();
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(link::pump_client(client, shared.clone(), stop_rx));
    Ok(Link::new(
        shared,
        SendSide::Client(sender),
        Kind::Client { stop },
    ))
}

/// Checks options without connecting (raises `ConfigError` / `SpecError`).
#[pyfunction]
#[pyo3(signature = (options, server = false))]
fn check_options(py: Python<'_>, options: &Bound<'_, PyDict>, server: bool) -> PyResult<()> {
    if server {
        config::server(py, options)?;
    } else {
        config::client(py, options)?;
    }
    Ok(())
}

/// The Rust defaults of the options whose Python signatures spell a default out (seconds,
/// bytes), for the test that keeps both languages on one set of values.
#[pyfunction]
fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    config::defaults(py)
}

/// glibc returns freed memory at the top of the heap to the kernel once more than its trim
/// threshold (128 KiB at start) is free there, and raises that threshold by itself the first
/// time a large `mmap`ed block is freed. A process that only moves messages of tens of KiB
/// never triggers the raise, so every batch of 64 KiB messages (Python `bytes` made here, freed
/// by the application) is trimmed and page-faulted back in: measured, about a third of the
/// throughput at 64 KiB (`BENCHMARKS.md`). We trigger glibc's own adjustment once, the way a
/// larger allocation would: thresholds become 4 MiB (mmap) and 8 MiB (trim), and stay dynamic.
/// `FRAMELINK_MALLOC_WARMUP=0` leaves the allocator alone.
fn warm_up_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("FRAMELINK_MALLOC_WARMUP").is_ok_and(|v| v == "0") {
            return;
        }
        // Safety: a plain allocation, freed at once; black_box keeps the pair from being
        // optimised away.
        unsafe {
            let block = std::hint::black_box(libc::malloc(4 << 20));
            if !block.is_null() {
                libc::free(block);
            }
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    warm_up_allocator();
    m.add_class::<codec::Decoder>()?;
    m.add_class::<codec::Encoder>()?;
    m.add_class::<runtime::Hub>()?;
    m.add_class::<Link>()?;
    m.add_class::<loopconn::LoopMachine>()?;
    m.add_class::<server::Server>()?;
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(check_options, m)?)?;
    m.add_function(wrap_pyfunction!(defaults, m)?)?;
    m.add("INBOX_BYTES", link::INBOX_BYTES)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
