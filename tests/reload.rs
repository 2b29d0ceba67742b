//! Reloading the backend set: a SIGHUP with a very large fleet stalls no session (the new
//! set is built and diffed off the event loops, in O(n)), and a reload that would leave no
//! backend at all is refused.

mod common;

use common::*;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A backends file: `primary`, then `backups` backup backends on loopback addresses that
/// are never contacted (backups take sessions only while no primary is up). `variant`
/// shifts the second half of the backups, so two variants differ in half of them.
fn fleet_file(primary: &str, backups: usize, variant: u32) -> String {
    let mut text = format!("{primary}\n");
    for i in 0..backups as u32 {
        let shifted = if i >= backups as u32 / 2 {
            i + variant * 100_000
        } else {
            i
        };
        let _ = writeln!(
            text,
            "127.{}.{}.{}:9,backup",
            1 + (shifted >> 16) % 254,
            (shifted >> 8) & 255,
            shifted & 255
        );
    }
    text
}

/// Sets its flag when dropped, also when a test fails (unwinds) in between.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_sighup_with_twenty_thousand_backends_stalls_no_session() {
    const BACKUPS: usize = 19_999;
    let echo_backend = Backend::start(1, echo());
    let file = scratch_path("reload-20k");
    std::fs::write(&file, fleet_file(&echo_backend.arg(), BACKUPS, 0)).expect("write");
    let file_arg = file.to_str().expect("utf-8").to_string();
    let started = Instant::now();
    let tcplb = Tcplb::start(&["--backends-file", &file_arg]);
    let start_up = started.elapsed();

    // A client pings through tcplb, one byte at a time, and keeps the longest round trip.
    let stop = AtomicBool::new(false);
    let worst = thread::scope(|s| {
        let pinger = s.spawn(|| {
            let mut stream = TcpStream::connect(tcplb.addr).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut worst = Duration::ZERO;
            let mut byte = [0u8; 1];
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                stream.write_all(b"p").expect("ping");
                stream.read_exact(&mut byte).expect("pong");
                worst = worst.max(sent.elapsed());
            }
            worst
        });
        // The pinger stops however this ends: a failed wait below must not leave the scope
        // waiting for it for ever.
        let _stop = StopOnDrop(&stop);
        // Reloads: the same file twice, then half the backups swapped, then the same again.
        for (round, variant) in [0, 0, 1, 1].into_iter().enumerate() {
            std::fs::write(&file, fleet_file(&echo_backend.arg(), BACKUPS, variant))
                .expect("write");
            tcplb.signal(libc::SIGHUP);
            // The summary line of this round (per-backend lines also start "reload: ").
            tcplb.wait_for_nth_log(" changed; 20000 backends", round + 1);
        }
        stop.store(true, Ordering::SeqCst);
        pinger.join().expect("pinger")
    });
    let reloads: Vec<String> = tcplb
        .logs()
        .into_iter()
        .filter(|l| l.contains("reload: ") && l.contains(" backends"))
        .collect();
    assert!(
        reloads[0].contains("reload: 0 added, 0 removed, 0 changed; 20000 backends"),
        "{reloads:?}"
    );
    assert!(
        reloads[2].contains("reload: 10000 added, 10000 removed, 0 changed; 20000 backends"),
        "{reloads:?}"
    );
    // Per-backend lines are summed up past a few: 20,000 changes are 6 lines, not 20,000
    // (logged in this order after the summary line, the last one of the round the last).
    tcplb.wait_for_log("reload: and 19995 more backend changes");
    let named = tcplb.count_logs("reload: backend ");
    assert_eq!(named, 5, "the first five changes named one by one");
    eprintln!("start-up {start_up:?}; the longest round trip during 4 reloads: {worst:?}");
    assert!(
        worst < Duration::from_millis(50),
        "a session stalled {worst:?} during a reload of 20,000 backends"
    );
    assert!(
        start_up < Duration::from_secs(5),
        "20,000 backends took {start_up:?} to start"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_reload_that_would_leave_no_backend_is_refused() {
    let backend = Backend::start(1, identify_and_hold());
    let file = scratch_path("reload-empty");
    std::fs::write(&file, format!("{}\n", backend.arg())).expect("write");
    let file_arg = file.to_str().expect("utf-8").to_string();
    let tcplb = Tcplb::start(&["--backends-file", &file_arg]);
    // Emptied (as by `cat > file` caught half-way), or only comments left.
    for (round, text) in ["", "# every backend commented out\n\n"]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&file, text).expect("write");
        tcplb.signal(libc::SIGHUP);
        let line = tcplb.wait_for_nth_log("reload failed, keeping the running set", round + 1);
        assert!(line.contains("lists no backend"), "{line}");
        // Still served by the running set.
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 1);
        close_and_wait(stream);
    }
    assert_eq!(tcplb.count_logs("reload: "), 0, "nothing was applied");
    let _ = std::fs::remove_file(&file);
}
