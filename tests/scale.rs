//! Thousands of concurrent sessions, every byte checked, and what they cost in memory.

mod common;

use common::*;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;

#[test]
fn thousands_of_concurrent_sessions() {
    const SESSIONS: usize = 3000;
    let backends = [Backend::start(1, echo()), Backend::start(2, echo())];
    let tcplb = Tcplb::start(&[&backends[0].arg(), &backends[1].arg()]);
    let rss_before = tcplb.rss_kib();

    // Open them all first, each with a different payload in flight...
    let mut streams = Vec::with_capacity(SESSIONS);
    for seed in 0..SESSIONS {
        let mut stream = tcplb.connect();
        stream
            .write_all(&pattern(seed as u64, 1024 + seed % 512))
            .expect("write");
        streams.push(stream);
    }
    // ...then check every echo while all are still open.
    for (seed, stream) in streams.iter_mut().enumerate() {
        let want = pattern(seed as u64, 1024 + seed % 512);
        let mut got = vec![0u8; want.len()];
        stream.read_exact(&mut got).expect("echo");
        assert_eq!(hash(&got), hash(&want), "session {seed}");
    }
    let open: usize = backends
        .iter()
        .map(|b| b.active.load(Ordering::SeqCst))
        .sum();
    assert_eq!(open, SESSIONS);
    for b in &backends {
        let n = b.active.load(Ordering::SeqCst);
        assert!(n.abs_diff(SESSIONS / 2) <= 1, "backend {} holds {n}", b.id);
    }

    // Idle sessions hold no buffers: a session costs its slab entry and timer, well under 1 KiB.
    let per_session = (tcplb.rss_kib().saturating_sub(rss_before)) as f64 / SESSIONS as f64;
    eprintln!("{per_session:.3} KiB of RSS per idle session");
    assert!(
        per_session < 4.0,
        "{per_session:.2} KiB of RSS per idle session"
    );

    for stream in streams {
        close_and_wait(stream);
    }
    for b in &backends {
        b.wait_active(0);
    }
}

/// A pool of millions of buffers costs nothing until traffic touches it: neither the arena
/// nor the free list is written at start.
#[test]
fn a_huge_pool_costs_almost_nothing_at_start() {
    let backend = Backend::start(1, echo());
    // 4 Mi buffers of 1 KiB: a 4 GiB arena, and a free list that would be 16 MiB if filled.
    let tcplb = Tcplb::start(&[
        "--buffers",
        "4194304",
        "--buffer-size",
        "1k",
        &backend.arg(),
    ]);
    let mut stream = tcplb.connect();
    let data = pattern(7, 100_000);
    stream.write_all(&data).expect("write");
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(hash(&back), hash(&data));
    let rss = tcplb.rss_kib();
    assert!(rss < 8 * 1024, "RSS {rss} KiB with a 4 GiB pool, used once");
}

/// A pool the machine cannot provide is a clear start-up error (exit 1), not an abort.
#[test]
fn a_pool_too_big_to_allocate_is_a_clear_start_up_error() {
    let backend = Backend::start(1, echo());
    // The issue's own command line (64 GiB of buffers), under a 4 GiB address-space limit so
    // the allocation fails on any machine.
    let out = std::process::Command::new("prlimit")
        .arg("--as=4294967296")
        .arg(env!("CARGO_BIN_EXE_tcplb"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--buffers",
            "16777216",
            "--buffer-size",
            "4k",
        ])
        .arg(backend.arg())
        .output()
        .expect("run prlimit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot allocate the buffer pool") && last.contains("65536 MiB"),
        "{stderr}"
    );
}
