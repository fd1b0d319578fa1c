//! Test support shared by every test module of the crate (compiled for tests only): the
//! fake-clock simulator [`util::Pair`] that runs two [`Machine`](crate::machine::Machine)s back to
//! back, the helpers that drain a single machine, and the `secs` / `ms` shorthands. One harness,
//! in the manner of quinn-proto's `src/tests/util.rs`, so protocol, raw and session tests drive
//! their machines the same way.

pub(crate) mod util;
