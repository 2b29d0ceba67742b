//! Shared test machinery, one module per purpose:
//!
//! | module | what |
//! |---|---|
//! | [`process`] | the real `tcplb` binary: one builder of its arguments (flags or a config file), its logs, signals, exit |
//! | [`backends`] | real backend servers on loopback, refusing and hanging ports, talking through tcplb |
//! | [`admin`] | `/metrics` (one parser), `/backends` (one reader), raw HTTP, access log lines |
//! | [`bytes`] | byte patterns and hashes to check every byte that crosses |
//! | [`ctl`] | `tcplb ctl` against a running tcplb's control socket |
//! | [`proxy`] | client addresses, PROXY protocol headers, real HAProxy and nginx |
//! | [`tls`] | certificates, real TLS servers and clients (Python `ssl`) for routing by SNI |
//!
//! Everything is re-exported here, so a test file says `use common::*;`.
#![allow(dead_code)]

pub mod admin;
pub mod backends;
pub mod bytes;
pub mod ctl;
pub mod process;
pub mod proxy;
pub mod tls;

// (A test file uses some of each.)
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use backends::*;
#[allow(unused_imports)]
pub use bytes::*;
#[allow(unused_imports)]
pub use ctl::*;
#[allow(unused_imports)]
pub use process::*;

use std::thread;
use std::time::{Duration, Instant};

/// Worker threads each tcplb under test runs, unless the test says: `TCPLB_TEST_WORKERS`
/// (CI runs the suite once with 1 and once with 2), else 1.
pub fn test_workers() -> usize {
    std::env::var("TCPLB_TEST_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Whether each tcplb under test runs with the kernel fast path, forced on although it
/// stays off by default (docs/fastpath.md): `TCPLB_TEST_BPF_REDIRECT=1`. CI does not (the
/// kernels tested can pass a segment up twice); by hand, to try a kernel.
pub fn test_bpf_redirect() -> bool {
    std::env::var("TCPLB_TEST_BPF_REDIRECT").is_ok_and(|v| v == "1")
}

/// How long any wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `done` until it holds (the condition is observable state, not elapsed time).
pub fn wait_until(mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {}", why());
        thread::sleep(Duration::from_millis(5));
    }
}
