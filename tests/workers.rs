//! Several workers, one balancer: every test here starts tcplb with `--workers 2` (this
//! machine has two cores) and checks that what the workers share behaves as one: the
//! least-active choice, the circuit breaker and its one trial, the health checks, the
//! backend set, `--max-conns`, the metrics, the drain and the access log. Each test also
//! checks that both workers took part, so it cannot pass by one worker doing everything.

mod common;

use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

const TWO: [&str; 2] = ["--workers", "2"];
const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];

/// Clients accepted by each worker, from `/metrics`.
fn accepted_per_worker(tcplb: &Tcplb) -> Vec<f64> {
    let m = tcplb.metrics();
    (0..2)
        .map(|w| {
            m.get(
                "tcplb_worker_connections_accepted_total",
                &[("worker", &w.to_string())],
            )
        })
        .collect()
}

/// Asserts that every worker accepted at least `least` clients.
fn assert_both_took_part(tcplb: &Tcplb, least: f64) {
    let per_worker = accepted_per_worker(tcplb);
    assert!(
        per_worker.iter().all(|&n| n >= least),
        "a worker sat out: accepted per worker {per_worker:?}"
    );
}

/// Opens `n` held sessions from 8 threads at once (so from many client ports, spread over
/// the workers); returns each with the id its backend sent.
fn hold(tcplb: &Tcplb, n: usize) -> Vec<(TcpStream, u8)> {
    let held = Mutex::new(Vec::with_capacity(n));
    thread::scope(|s| {
        for t in 0..8 {
            let (held, tcplb) = (&held, tcplb);
            s.spawn(move || {
                for _ in (t..n).step_by(8) {
                    let session = connect_and_identify(tcplb);
                    held.lock().expect("lock").push(session);
                }
            });
        }
    });
    held.into_inner().expect("lock")
}

fn on(held: &[(TcpStream, u8)], id: u8) -> usize {
    held.iter().filter(|(_, i)| *i == id).count()
}

fn release(held: Vec<(TcpStream, u8)>) {
    for (stream, _) in held {
        close_and_wait(stream);
    }
}

#[test]
fn least_active_is_global_equal_backends_split_evenly() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let tcplb = Tcplb::start(&[&a.arg(), &b.arg(), TWO[0], TWO[1], ADMIN[0], ADMIN[1]]);
    let held = hold(&tcplb, 200);
    let (on_a, on_b) = (on(&held, 1), on(&held, 2));
    assert!(
        on_a.abs_diff(100) <= 1 && on_b.abs_diff(100) <= 1,
        "200 sessions split {on_a}/{on_b}, not 100/100 (±1)"
    );
    assert_eq!(a.active.load(Ordering::SeqCst), on_a);
    assert_both_took_part(&tcplb, 50.0);
    // One row per backend, with the counts of every worker.
    let rows = backend_rows(&tcplb);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows.iter().map(|r| r.active).sum::<u64>(), 200);
    assert_eq!(rows.iter().map(|r| r.connections_total).sum::<u64>(), 200);
    release(held);
}

#[test]
fn least_active_is_global_weights_one_to_three_split_fifty_to_one_fifty() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let weighted = format!("{},weight=3", b.arg());
    let tcplb = Tcplb::start(&[&a.arg(), &weighted, TWO[0], TWO[1], ADMIN[0], ADMIN[1]]);
    let held = hold(&tcplb, 200);
    let (on_a, on_b) = (on(&held, 1), on(&held, 2));
    assert!(
        on_a.abs_diff(50) <= 2 && on_b.abs_diff(150) <= 2,
        "200 sessions split {on_a}/{on_b}, not 50/150 (±2)"
    );
    assert_both_took_part(&tcplb, 50.0);
    release(held);
}

#[test]
fn new_connections_spread_evenly_over_the_workers() {
    let backend = Backend::start(1, echo());
    let tcplb = Tcplb::start(&[&backend.arg(), TWO[0], TWO[1], ADMIN[0], ADMIN[1]]);
    // 4,000 connections from 50 threads at once, each served (a byte echoed) and then
    // closed with a reset, so neither side keeps a TIME_WAIT port for a minute.
    const CONNECTIONS: usize = 4000;
    thread::scope(|s| {
        for t in 0..50 {
            let addr = tcplb.addr;
            s.spawn(move || {
                for _ in (t..CONNECTIONS).step_by(50) {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    echo_piece(&mut stream, b"x").expect("served");
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .expect("linger");
                }
            });
        }
    });
    wait_until(
        || accepted_per_worker(&tcplb).iter().sum::<f64>() == CONNECTIONS as f64,
        || format!("accepted per worker {:?}", accepted_per_worker(&tcplb)),
    );
    let per_worker = accepted_per_worker(&tcplb);
    let (max, min) = (
        per_worker[0].max(per_worker[1]),
        per_worker[0].min(per_worker[1]),
    );
    assert!(
        max / min <= 1.3,
        "accepted per worker {per_worker:?}: max/min {:.2} > 1.3",
        max / min
    );
    let total = tcplb.metrics().get("tcplb_connections_accepted_total", &[]);
    assert_eq!(
        total, CONNECTIONS as f64,
        "the total is the sum over workers"
    );
}

#[test]
fn one_breaker_for_every_worker_opens_after_max_fails_in_all() {
    let good = Backend::start(2, identify_and_hold());
    let reserved = ReservedPort::new();
    let refusing = reserved.addr;
    let tcplb = Tcplb::start(&[
        &refusing.to_string(),
        &good.arg(),
        "--max-fails",
        "3",
        "--fail-timeout",
        "60s",
        "--retries",
        "1",
        TWO[0],
        TWO[1],
        ADMIN[0],
        ADMIN[1],
    ]);
    // One client at a time (so no two connects race), each from a new port (so the kernel
    // spreads them over both workers), until both workers have served a few. The refusing
    // backend is the least active each time until its breaker opens.
    let mut held = Vec::new();
    while accepted_per_worker(&tcplb).iter().any(|&n| n < 4.0) {
        assert!(held.len() < 80, "{:?}", accepted_per_worker(&tcplb));
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 2, "every client ends on the good backend");
        held.push(stream);
    }
    let row = backend_row(&tcplb, refusing).expect("listed");
    assert_eq!(
        row.connect_failures_total, 3,
        "3 failures in all open the breaker, whichever workers saw them"
    );
    assert_eq!(row.state, "down");
    tcplb.wait_for_log(&format!(
        "backend {refusing} is down: 3 connects failed in a row"
    ));
    for stream in held {
        close_and_wait(stream);
    }
}

#[test]
fn one_half_open_trial_for_every_worker() {
    let other = Backend::start(2, identify_and_hold());
    let reserved = ReservedPort::new();
    let slow = reserved.addr;
    let tcplb = Tcplb::start(&[
        &slow.to_string(),
        &other.arg(),
        "--max-fails",
        "1",
        "--fail-timeout",
        "500ms",
        "--retries",
        "1",
        "--connect-timeout",
        "5s",
        TWO[0],
        TWO[1],
        ADMIN[0],
        ADMIN[1],
    ]);
    // One refused connect opens the breaker.
    let (first, _) = connect_and_identify(&tcplb);
    wait_until(
        || backend_row(&tcplb, slow).expect("listed").state == "down",
        || "the breaker never opened".to_string(),
    );
    // It listens again but never answers: a trial's connect hangs (until --connect-timeout).
    let listener = reserved.listen_backlog(1);
    let _queue = fill_accept_queue(slow);
    wait_until(
        || backend_row(&tcplb, slow).expect("listed").state == "half_open",
        || "the cool-down never ended".to_string(),
    );
    // Forty clients at once, over both workers: exactly one becomes the trial (and waits);
    // everyone else is served by the other backend at once.
    let served = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..8 {
            let (served, tcplb) = (&served, &tcplb);
            s.spawn(move || {
                for _ in 0..5 {
                    let mut stream = tcplb.connect();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(1500)))
                        .expect("timeout");
                    let mut id = [0u8; 1];
                    match stream.read_exact(&mut id) {
                        Ok(()) => served.lock().expect("lock").push((stream, id[0])),
                        // The trial: its connect hangs; keep it for the count below.
                        Err(_) => served.lock().expect("lock").push((stream, 0)),
                    }
                }
            });
        }
    });
    let served = served.into_inner().expect("lock");
    let waiting = served.iter().filter(|(_, id)| *id == 0).count();
    assert_eq!(waiting, 1, "exactly one trial across both workers");
    assert_eq!(on(&served, 2), 39);
    assert_eq!(backend_row(&tcplb, slow).expect("listed").active, 1);
    assert_both_took_part(&tcplb, 5.0);
    drop(first);
    drop(listener);
}

#[test]
fn health_checks_run_once_per_interval_for_the_whole_process() {
    let probed = Backend::start(1, identify_and_hold());
    let tcplb = Tcplb::start(&[&probed.arg(), "--health-interval", "200ms", TWO[0], TWO[1]]);
    // The checks started with the process; count the probes over two seconds.
    let before = probed.accepted.load(Ordering::SeqCst);
    let started = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let probes = probed.accepted.load(Ordering::SeqCst) - before;
    let intervals = started.elapsed().as_millis() as usize / 200;
    assert!(
        probes >= intervals - 2 && probes <= intervals + 1,
        "{probes} probes in {intervals} intervals (once per worker would be twice as many)"
    );
    drop(tcplb);
}

#[test]
fn a_reload_reaches_every_worker() {
    let old = Backend::start(1, identify_and_hold());
    let new = Backend::start(2, identify_and_hold());
    let file = scratch_path("workers-reload");
    std::fs::write(&file, format!("{}\n", old.arg())).expect("write");
    let file_arg = file.to_str().expect("utf-8").to_string();
    let tcplb = Tcplb::start(&[
        "--backends-file",
        &file_arg,
        TWO[0],
        TWO[1],
        ADMIN[0],
        ADMIN[1],
    ]);
    let before = hold(&tcplb, 20);
    assert_eq!(on(&before, 1), 20);
    std::fs::write(&file, format!("{}\n", new.arg())).expect("write");
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 added, 1 removed, 0 changed; 1 backends");
    // Once the reload is logged every worker has it: no new session goes to the old one.
    let after = hold(&tcplb, 40);
    assert_eq!(on(&after, 2), 40, "a worker still used the old set");
    assert_both_took_part(&tcplb, 15.0);
    // The removed backend drains on every worker.
    assert_eq!(
        backend_row(&tcplb, old.addr).expect("still listed").state,
        "draining"
    );
    release(before);
    wait_until(
        || backend_row(&tcplb, old.addr).is_none(),
        || "the drained backend is still listed".to_string(),
    );
    release(after);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn max_conns_is_one_limit_for_the_process() {
    let backend = Backend::start(1, identify_and_hold());
    let tcplb = Tcplb::start(&[
        &backend.arg(),
        "--max-conns",
        "10",
        TWO[0],
        TWO[1],
        ADMIN[0],
        ADMIN[1],
    ]);
    let held = hold(&tcplb, 10);
    // Ten open over both workers: the next clients are shed, whichever worker takes them.
    for _ in 0..6 {
        let mut shed = tcplb.connect();
        let mut byte = [0u8; 1];
        match shed.read(&mut byte) {
            Ok(0) => {}
            Ok(_) => panic!("an eleventh session was admitted"),
            Err(e) => assert!(is_peer_end(&e), "{e}"),
        }
    }
    let m = tcplb.metrics();
    assert_eq!(
        m.get("tcplb_connections_shed_total", &[("reason", "max_conns")]),
        6.0
    );
    assert_eq!(m.get("tcplb_sessions_active", &[]), 10.0);
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 10);
    assert_both_took_part(&tcplb, 2.0);
    release(held);
}

#[test]
fn sigterm_drains_every_worker_then_exits_zero() {
    let backend = Backend::start(1, echo());
    let mut tcplb = Tcplb::start(&[&backend.arg(), TWO[0], TWO[1], ADMIN[0], ADMIN[1]]);
    let mut streams: Vec<TcpStream> = Vec::new();
    while streams.len() < 16 || accepted_per_worker(&tcplb).iter().any(|&n| n < 2.0) {
        assert!(streams.len() < 64, "{:?}", accepted_per_worker(&tcplb));
        let mut stream = tcplb.connect();
        echo_piece(&mut stream, b"hello").expect("echo");
        streams.push(stream);
    }
    let n = streams.len();
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log(&format!(
        "SIGTERM: stopped accepting; draining {n} sessions"
    ));
    assert!(
        TcpStream::connect(tcplb.addr).is_err(),
        "a new client was accepted while draining"
    );
    // Every session, on either worker, goes on to its end.
    for (i, mut stream) in streams.into_iter().enumerate() {
        let piece = pattern(i as u64, 100_000);
        echo_piece(&mut stream, &piece).expect("echo while draining");
        finish_echo(stream);
    }
    assert_eq!(tcplb.wait_exit(Duration::from_secs(10)), Some(0));
    tcplb.wait_for_log("drained: every session has finished");
}

#[test]
fn one_access_log_for_every_worker_with_whole_lines() {
    let backend = Backend::start(1, echo());
    let log = scratch_path("workers-access.log");
    let _ = std::fs::remove_file(&log);
    let log_arg = log.to_str().expect("utf-8").to_string();
    let tcplb = Tcplb::start(&[
        &backend.arg(),
        "--access-log",
        &log_arg,
        TWO[0],
        TWO[1],
        ADMIN[0],
        ADMIN[1],
    ]);
    const SESSIONS: usize = 300;
    let ports = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..6 {
            let (ports, addr) = (&ports, tcplb.addr);
            s.spawn(move || {
                for i in (t..SESSIONS).step_by(6) {
                    let stream = TcpStream::connect(addr).expect("connect");
                    let port = stream.local_addr().expect("addr").port();
                    let data = pattern(i as u64, 2000);
                    assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
                    ports.lock().expect("lock").push(port);
                }
            });
        }
    });
    let lines = wait_for_lines(&log, SESSIONS);
    assert_eq!(lines.len(), SESSIONS);
    let mut logged: Vec<u16> = lines
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 13, "a whole line: {line}");
            assert_eq!(fields[1], "service=default", "{line}");
            assert!(line.ends_with("end=client_fin") || line.ends_with("end=backend_fin"));
            assert!(line.contains(" bytes_up=2000 bytes_down=2000 "), "{line}");
            fields[2]
                .strip_prefix("client=127.0.0.1:")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no client in {line}"))
        })
        .collect();
    let mut sent = ports.into_inner().expect("lock");
    logged.sort_unstable();
    sent.sort_unstable();
    assert_eq!(logged, sent, "one line per session, from every worker");
    assert_both_took_part(&tcplb, 50.0);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_start_line_says_how_many_workers_run_and_bad_counts_are_refused() {
    let backend = Backend::start(1, echo());
    let tcplb = Tcplb::start(&[&backend.arg(), TWO[0], TWO[1]]);
    let line = tcplb.wait_for_log("listening on ");
    assert!(line.contains("; 2 workers;"), "{line}");
    for bad in ["0", "-1", "many", "1025"] {
        let (code, _, stderr) = run_cli(&["--workers", bad, &backend.arg()]);
        assert_eq!(code, Some(2), "--workers {bad}: {stderr}");
        assert!(
            stderr.contains(&format!("'{bad}'")) && stderr.contains("auto"),
            "--workers {bad}: {stderr}"
        );
    }
}

#[test]
fn a_backend_cooling_down_under_load_gets_its_trial_after_every_cool_down() {
    // The refusing backend is the last of three: no neighbour in the selection tree whose
    // replays would look at it again, so only its cool-down timer brings it back. With both
    // workers picking all the time, one whose turn began just before a cool-down ended used
    // to replay the backend out of the tree on its older clock right after the other
    // worker's timer had put it back: it then never had a trial again (seen in about one
    // run in ten before the fix; the unit test `a_replay_on_an_older_clock_...` in
    // fleet/mod.rs plays that interleaving exactly).
    let a = Backend::start(1, echo());
    let b = Backend::start(2, echo());
    let reserved = ReservedPort::new();
    let refusing = reserved.addr;
    let tcplb = Tcplb::start(&[
        &a.arg(),
        &b.arg(),
        &refusing.to_string(),
        "--max-fails",
        "1",
        "--fail-timeout",
        "10ms",
        "--retries",
        "2",
        TWO[0],
        TWO[1],
        ADMIN[0],
        ADMIN[1],
    ]);
    let down = format!("backend {refusing} is down");
    let stop = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| {
        // Short sessions from many client ports keep both workers picking all the time.
        for _ in 0..24 {
            let (tcplb, stop) = (&tcplb, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let stream = tcplb.connect();
                    assert_eq!(echo_through(stream, b"x"), b"x");
                }
            });
        }
        // Each cool-down (10 ms, doubled after each failed trial) ends in a trial, which
        // fails again: one more "is down" line per cycle.
        let mut cooldown = Duration::from_millis(10);
        for cycle in 1..=9 {
            let deadline = Instant::now() + cooldown + Duration::from_secs(2);
            while tcplb.count_logs(&down) < cycle {
                if Instant::now() > deadline {
                    stop.store(true, Ordering::SeqCst);
                    panic!(
                        "no trial within {:?} of cycle {cycle}'s cool-down: {:?}",
                        cooldown + Duration::from_secs(2),
                        backend_row(&tcplb, refusing)
                    );
                }
                thread::sleep(Duration::from_millis(5));
            }
            cooldown *= 2;
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert_both_took_part(&tcplb, 50.0);
}
