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
