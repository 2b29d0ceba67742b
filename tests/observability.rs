//! Observability through the real binary: the admin endpoint (`/metrics`, `/healthz`,
//! `/backends`, bad requests), exact counter and gauge values after sessions of known shape,
//! the Prometheus text format checked by a real parser (Python's `prometheus_client`), and
//! the access log, to a file and to standard output.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];

/// tcplb with the admin endpoint on, in front of `backends`, plus `extra` options.
fn start(backends: &[String], extra: &[&str]) -> Tcplb {
    let mut args: Vec<&str> = backends.iter().map(String::as_str).collect();
    args.extend_from_slice(&ADMIN);
    args.extend_from_slice(extra);
    Tcplb::start(&args)
}

fn state_of(tcplb: &Tcplb, addr: &str) -> String {
    backend_entry(tcplb, addr)["state"]
        .as_str()
        .expect("state is a string")
        .to_string()
}

/// Reads until the balancer closes the connection (EOF or reset): a refused or shed client.
fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the client closed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Gauges and counters

/// Asserts `tcplb_backend_active_connections` per backend and `tcplb_sessions_active`
/// (their sum) in one scrape.
fn assert_active(tcplb: &Tcplb, expected: &[(&String, u32)]) {
    let m = tcplb.metrics();
    for (label, n) in expected {
        assert_eq!(
            m.get("tcplb_backend_active_connections", &[("backend", label)]),
            f64::from(*n),
            "active on {label}"
        );
    }
    let total: u32 = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(m.get("tcplb_sessions_active", &[]), f64::from(total));
}

#[test]
fn active_connection_gauges_are_exact_while_sessions_are_held() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let (la, lb) = (a.arg(), b.arg());
    let tcplb = start(&[format!("{la},weight=3"), format!("{lb},weight=5")], &[]);
    assert_active(&tcplb, &[(&la, 0), (&lb, 0)]);

    // Eight sessions: weights 3 and 5 share them 3 and 5.
    let mut held: Vec<(TcpStream, u8)> = (0..8).map(|_| connect_and_identify(&tcplb)).collect();
    let on = |held: &[(TcpStream, u8)], id| held.iter().filter(|(_, i)| *i == id).count();
    assert_eq!((on(&held, 1), on(&held, 2)), (3, 5), "split by weight");
    assert_active(&tcplb, &[(&la, 3), (&lb, 5)]);
    assert_eq!(backend_entry(&tcplb, &la)["active"], 3);
    assert_eq!(backend_entry(&tcplb, &lb)["active"], 5);

    // Close two of B's: 3 and 3.
    for _ in 0..2 {
        let at = held.iter().position(|(_, id)| *id == 2).expect("one on B");
        close_and_wait(held.remove(at).0);
    }
    assert_active(&tcplb, &[(&la, 3), (&lb, 3)]);

    // Close the rest: back to zero, and the pool has every buffer back.
    for (stream, _) in held {
        close_and_wait(stream);
    }
    assert_active(&tcplb, &[(&la, 0), (&lb, 0)]);
    let m = tcplb.metrics();
    assert_eq!(
        m.get("tcplb_buffer_pool_buffers", &[("state", "used")]),
        0.0
    );
    assert_eq!(backend_entry(&tcplb, &la)["active"], 0);
    assert_eq!(
        m.get("tcplb_backend_connections_total", &[("backend", &la)]),
        3.0
    );
    assert_eq!(
        m.get("tcplb_backend_connections_total", &[("backend", &lb)]),
        5.0
    );
}

#[test]
fn counters_move_by_exactly_what_the_sessions_did() {
    let backends = [Backend::start(1, echo()), Backend::start(2, echo())];
    let labels: Vec<String> = backends.iter().map(|b| b.arg()).collect();
    let tcplb = start(&labels, &[]);
    let before = tcplb.metrics();
    let sum_backends = |m: &Exposition, name: &str, extra: &[(&str, &str)]| -> f64 {
        labels
            .iter()
            .map(|l| {
                let mut wanted = vec![("backend", l.as_str())];
                wanted.extend_from_slice(extra);
                m.get(name, &wanted)
            })
            .sum()
    };

    let sessions = 10u64;
    let mut bytes = 0u64;
    for seed in 0..sessions {
        let data = pattern(seed, 20_000 + seed as usize * 1013);
        let back = echo_through(tcplb.connect(), &data);
        assert_eq!(hash(&back), hash(&data), "session {seed}");
        bytes += data.len() as u64;
    }

    let after = tcplb.metrics();
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta("tcplb_connections_accepted_total", &[]),
        sessions as f64
    );
    assert_eq!(
        sum_backends(&after, "tcplb_backend_connections_total", &[])
            - sum_backends(&before, "tcplb_backend_connections_total", &[]),
        sessions as f64
    );
    for direction in ["sent", "received"] {
        let d = [("direction", direction)];
        assert_eq!(
            sum_backends(&after, "tcplb_backend_bytes_total", &d)
                - sum_backends(&before, "tcplb_backend_bytes_total", &d),
            bytes as f64,
            "bytes {direction}"
        );
    }
    // Per backend, the counters agree with what each backend server saw.
    for (b, l) in backends.iter().zip(&labels) {
        assert_eq!(
            after.get("tcplb_backend_connections_total", &[("backend", l)]),
            b.accepted.load(Ordering::SeqCst) as f64
        );
        assert_eq!(
            after.get("tcplb_backend_connect_failures_total", &[("backend", l)]),
            0.0
        );
    }
    assert_eq!(
        delta("tcplb_session_duration_seconds_count", &[]),
        sessions as f64
    );
    assert_eq!(
        delta("tcplb_session_duration_seconds_bucket", &[("le", "+Inf")]),
        sessions as f64
    );
    assert_eq!(
        delta("tcplb_connect_duration_seconds_count", &[]),
        sessions as f64
    );
    assert!(delta("tcplb_session_duration_seconds_sum", &[]) > 0.0);
    for unchanged in [
        "tcplb_connections_no_backend_total",
        "tcplb_accept_errors_total",
    ] {
        assert_eq!(delta(unchanged, &[]), 0.0, "{unchanged}");
    }
    assert_eq!(
        delta("tcplb_connections_shed_total", &[("reason", "max_conns")]),
        0.0
    );
    assert_eq!(after.get("tcplb_sessions_active", &[]), 0.0);
}

#[test]
fn connect_failures_count_once_per_refused_attempt() {
    let good = Backend::start(1, echo());
    let refusing = refusing_port();
    let dead = refusing.addr.to_string();
    let log = Scratch::new("retries.log");
    let log_arg = log.arg();
    let tcplb = start(
        &[good.arg(), dead.clone()],
        &[
            "--max-fails",
            "0",
            "--retries",
            "1",
            "--access-log",
            &log_arg,
        ],
    );
    // One session held on the good backend: from now on the refusing one (no sessions) is
    // always the least active, so every new client tries it first, exactly once.
    let mut keeper = tcplb.connect();
    keeper.write_all(b"k").expect("write");
    let mut k = [0u8; 1];
    keeper.read_exact(&mut k).expect("echo");
    let before = tcplb.metrics();

    let clients = 6;
    let mut ports = Vec::new();
    for seed in 0..clients {
        let data = pattern(100 + seed, 5000);
        let stream = tcplb.connect();
        ports.push(stream.local_addr().expect("addr").port());
        assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
    }
    // Each was served by the good backend after one retry. (With several workers, lines
    // from different workers may reach the file in another order than the sessions ended.)
    let lines = wait_for_lines(&log, clients as usize);
    assert_eq!(lines.len(), clients as usize, "{lines:#?}");
    for port in &ports {
        let client = format!("client=127.0.0.1:{port} ");
        let line = lines
            .iter()
            .find(|l| l.contains(&client))
            .unwrap_or_else(|| panic!("no line for {client} in {lines:#?}"));
        let l = AccessLine::parse(line);
        assert_eq!(l.get("backend"), good.arg(), "{line}");
        assert_eq!(l.number("retries"), 1, "{line}");
        assert_eq!((l.number("bytes_up"), l.number("bytes_down")), (5000, 5000));
        assert_eq!(l.get("end"), "client_fin", "{line}");
    }
    let after = tcplb.metrics();
    let delta = |name: &str, l: &str| {
        after.get(name, &[("backend", l)]) - before.get(name, &[("backend", l)])
    };
    assert_eq!(
        delta("tcplb_backend_connect_failures_total", &dead),
        clients as f64
    );
    assert_eq!(
        delta("tcplb_backend_connections_total", &good.arg()),
        clients as f64
    );
    assert_eq!(
        after.get("tcplb_backend_connections_total", &[("backend", &dead)]),
        0.0
    );
    assert_eq!(
        after.get(
            "tcplb_backend_connect_failures_total",
            &[("backend", &good.arg())]
        ),
        0.0
    );
    assert_eq!(after.get("tcplb_connections_no_backend_total", &[]), 0.0);
    // --max-fails 0: however many failures, the backend stays in rotation.
    assert_eq!(after.get("tcplb_backend_up", &[("backend", &dead)]), 1.0);
    let entry = backend_entry(&tcplb, &dead);
    assert_eq!(entry["state"], "up");
    let failures = after.get(
        "tcplb_backend_connect_failures_total",
        &[("backend", &dead)],
    );
    assert_eq!(entry["connect_failures_total"].as_f64(), Some(failures));
    assert_eq!(entry["consecutive_failures"].as_f64(), Some(failures));
    assert_eq!(good.accepted.load(Ordering::SeqCst), clients as usize + 1);
    close_and_wait(keeper);
}

#[test]
fn clients_shed_past_max_conns_are_counted() {
    let backend = Backend::start(1, identify_and_hold());
    let tcplb = start(&[backend.arg()], &["--max-conns", "2"]);
    let held: Vec<_> = (0..2).map(|_| connect_and_identify(&tcplb).0).collect();
    let shed = 4;
    for _ in 0..shed {
        expect_closed(&mut tcplb.connect());
    }
    let m = tcplb.metrics();
    assert_eq!(
        m.get("tcplb_connections_shed_total", &[("reason", "max_conns")]),
        shed as f64
    );
    assert_eq!(
        m.get("tcplb_connections_shed_total", &[("reason", "pool")]),
        0.0
    );
    assert_eq!(
        m.get("tcplb_connections_accepted_total", &[]),
        (2 + shed) as f64
    );
    assert_eq!(m.get("tcplb_sessions_active", &[]), 2.0);
    assert_eq!(
        m.get(
            "tcplb_backend_connections_total",
            &[("backend", &backend.arg())]
        ),
        2.0
    );
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        2,
        "shed clients reach no backend"
    );
    for stream in held {
        close_and_wait(stream);
    }
}

#[test]
fn clients_shed_when_the_pool_runs_dry_are_counted_and_logged() {
    // Two buffers in all; each client below stops reading while its backend streams, so its
    // session holds buffers for good. With both held, the next client is shed. (No pipes: a
    // stalled bulk stream would otherwise wait in a pipe, holding no buffer.)
    let backend = Backend::start(1, streamer(9, 256 << 20));
    let log = Scratch::new("shed-pool.log");
    let log_arg = log.arg();
    let tcplb = start(
        &[backend.arg()],
        &[
            "--buffers",
            "2",
            "--buffer-size",
            "1k",
            "--pipes",
            "0",
            "--access-log",
            &log_arg,
        ],
    );
    // Add stalled clients until every buffer is held for good (a session holds at least one
    // once stalled, more if its direction gathers several per read): two at most. A client
    // that finds its worker's buffers all held is shed at once (with several workers each has
    // its own share of the pool; with one, the first stalled session may come to hold both
    // buffers): it is counted, and the filling goes on while a buffer is free.
    let shed_count = |m: &Exposition| m.get("tcplb_connections_shed_total", &[("reason", "pool")]);
    // Waits until every stalled session is blocked (the backend's writes have stopped and
    // each session holds a buffer), or a client was shed; returns (free buffers, shed count).
    let settle = |sessions: usize, shed_before: f64| {
        let (mut last, mut free, mut shed) = (u64::MAX, f64::NAN, 0.0);
        wait_until(
            || {
                let streamed = backend.counter.load(Ordering::SeqCst);
                let m = tcplb.metrics();
                free = m.get("tcplb_buffer_pool_buffers", &[("state", "free")]);
                let used = m.get("tcplb_buffer_pool_buffers", &[("state", "used")]);
                shed = shed_count(&m);
                let still = std::mem::replace(&mut last, streamed) == streamed;
                shed > shed_before
                    || (still
                        && m.get("tcplb_sessions_active", &[]) == sessions as f64
                        && used >= sessions as f64)
            },
            || format!("waiting for {sessions} stalled sessions"),
        );
        (free, shed)
    };
    let mut stalled: Vec<TcpStream> = Vec::new();
    let mut shed_while_filling = 0.0;
    loop {
        assert!(
            stalled.len() < 2 && shed_while_filling < 10.0,
            "two stalled sessions hold both buffers ({} stalled, {shed_while_filling} shed)",
            stalled.len()
        );
        stalled.push(tcplb.connect());
        let (mut free, shed_now) = settle(stalled.len(), shed_while_filling);
        if shed_now > shed_while_filling {
            shed_while_filling = shed_now;
            stalled.pop();
            // Shed for want of a buffer: see whether the pool is dry, once the stalled
            // sessions are blocked for good.
            free = settle(stalled.len(), f64::INFINITY).0;
        }
        if free == 0.0 {
            break;
        }
    }
    let mut shed = tcplb.connect();
    let shed_port = shed.local_addr().expect("addr").port();
    expect_closed(&mut shed);
    let m = tcplb.metrics();
    assert_eq!(shed_count(&m), shed_while_filling + 1.0);
    assert_eq!(
        m.get("tcplb_connections_shed_total", &[("reason", "max_conns")]),
        0.0
    );
    assert_eq!(
        m.get("tcplb_buffer_pool_buffers", &[("state", "free")]),
        0.0
    );
    assert_eq!(m.get("tcplb_buffer_pool_capacity_bytes", &[]), 2048.0);
    assert_eq!(
        m.get("tcplb_sessions_active", &[]),
        stalled.len() as f64,
        "the shed client is no session"
    );
    let shed_lines = shed_while_filling as usize + 1;
    let lines = wait_for_lines(&log, shed_lines);
    let line = lines
        .iter()
        .map(|l| AccessLine::parse(l))
        .find(|l| l.get("client") == format!("127.0.0.1:{shed_port}"))
        .unwrap_or_else(|| panic!("no line for the shed client in {lines:?}"));
    assert_eq!(line.get("end"), "shed_pool");
    assert_eq!(line.get("backend"), "-");
    drop(stalled);
    wait_until(
        || tcplb.metrics().get("tcplb_sessions_active", &[]) == 0.0,
        || "the stalled sessions did not end".to_string(),
    );
    assert_eq!(
        tcplb
            .metrics()
            .get("tcplb_buffer_pool_buffers", &[("state", "free")]),
        2.0
    );
}

/// Hands every accepted connection to the test, which then owns the backend's end.
fn handing_over(connections: mpsc::Sender<TcpStream>) -> Handler {
    let connections = Mutex::new(connections);
    Arc::new(move |stream, _| {
        let _ = connections.lock().expect("sender").send(stream);
    })
}

#[test]
fn bytes_moved_in_the_turn_a_session_is_reset_are_counted() {
    // With tcplb paused, bytes and then a reset wait together in its sockets, so one turn
    // moves the bytes and meets the reset: the counters must still count what was moved.
    let (tx, rx) = mpsc::channel();
    let backend = Backend::start(1, handing_over(tx));
    let log = Scratch::new("reset-bytes.log");
    let log_arg = log.arg();
    let tcplb = start(&[backend.arg()], &["--access-log", &log_arg]);
    let label = backend.arg();

    // Two sessions, each with one byte each way first.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut client = tcplb.connect();
        let mut server = rx.recv_timeout(PATIENCE).expect("the backend connection");
        server.set_read_timeout(Some(PATIENCE)).expect("timeout");
        client.write_all(b"u").expect("write");
        let mut b = [0u8; 1];
        server.read_exact(&mut b).expect("up");
        server.write_all(b"d").expect("write");
        client.read_exact(&mut b).expect("down");
        sessions.push((client, server));
    }
    let (mut client1, server1) = sessions.remove(0);
    let (client2, mut server2) = sessions.remove(0);
    let (down, up) = (pattern(21, 5000), pattern(22, 7000));

    tcplb.pause();
    // Session 1: the backend sends 5000 bytes and resets. Session 2: the client sends 7000
    // bytes and resets.
    let reset_after = |mut stream: TcpStream, data: &[u8]| {
        let (local, peer) = (
            stream.local_addr().expect("addr"),
            stream.peer_addr().expect("addr"),
        );
        stream.write_all(data).expect("write");
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(stream);
        (peer, local)
    };
    let tcplb_sides = [reset_after(server1, &down), reset_after(client2, &up)];
    // The kernel has taken the resets in: tcplb's ends of both connections are closed.
    for (local, remote) in tcplb_sides {
        wait_until(
            || !tcp_socket_listed(local, remote),
            || format!("{local} <-> {remote} is still open"),
        );
    }
    tcplb.resume();

    // What actually got through.
    let mut got_down = Vec::new();
    let _ = client1.read_to_end(&mut got_down);
    let mut got_up = Vec::new();
    let _ = server2.read_to_end(&mut got_up);
    assert_eq!(
        hash(&got_down),
        hash(&down),
        "the client got the 5000 bytes"
    );
    assert_eq!(hash(&got_up), hash(&up), "the backend got the 7000 bytes");

    wait_until(
        || tcplb.metrics().get("tcplb_sessions_active", &[]) == 0.0,
        || "sessions still open".to_string(),
    );
    let m = tcplb.metrics();
    let sent = m.get(
        "tcplb_backend_bytes_total",
        &[("backend", &label), ("direction", "sent")],
    );
    let received = m.get(
        "tcplb_backend_bytes_total",
        &[("backend", &label), ("direction", "received")],
    );
    assert_eq!((sent, received), (7002.0, 5002.0), "(sent, received)");
    // The access log says the same.
    let lines = wait_for_lines(&log, 2);
    let (up_total, down_total) = lines
        .iter()
        .map(|l| AccessLine::parse(l))
        .fold((0, 0), |acc, l| {
            (acc.0 + l.number("bytes_up"), acc.1 + l.number("bytes_down"))
        });
    assert_eq!((up_total, down_total), (7002, 5002), "{lines:?}");
}

// ---------------------------------------------------------------------------------------
// /healthz, backend states

#[test]
fn a_passing_health_check_brings_healthz_back_without_any_client() {
    let port = ReservedPort::new();
    let addr = port.addr;
    let tcplb = start(
        &[addr.to_string()],
        &[
            "--max-fails",
            "1",
            "--fail-timeout",
            "30",
            "--health-interval",
            "0.2",
            "--fall",
            "1000",
        ],
    );
    // One client: refused, the breaker opens for 30 s.
    expect_closed(&mut tcplb.connect());
    assert_eq!(tcplb.admin_get("/healthz").0, 503);
    // The backend is back well within the cool-down: the next passing probe closes the
    // breaker, with no client needed to make a trial.
    let revived = Backend::serve(3, port.listen(), identify_and_hold());
    wait_until(
        || tcplb.admin_get("/healthz").0 == 200,
        || format!("states: {:?}", backends_json(&tcplb)),
    );
    assert_eq!(state_of(&tcplb, &addr.to_string()), "up");
    tcplb.wait_for_log("is up again: a health check connected");
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 3);
    close_and_wait(stream);
    assert!(
        revived.accepted.load(Ordering::SeqCst) >= 2,
        "probes, then the client"
    );
}

#[test]
fn healthz_and_states_follow_the_circuit_breaker_down_and_back_up() {
    let (a, b) = (refusing_port(), refusing_port());
    let (la, lb) = (a.addr.to_string(), b.addr.to_string());
    let tcplb = start(
        &[la.clone(), lb.clone()],
        &["--max-fails", "1", "--fail-timeout", "1"],
    );
    assert_eq!(tcplb.admin_get("/healthz"), (200, "ok\n".to_string()));
    let m = tcplb.metrics();
    for l in [&la, &lb] {
        assert_eq!(m.get("tcplb_backend_up", &[("backend", l)]), 1.0);
        assert_eq!(state_of(&tcplb, l), "up");
    }

    // One client: both connects are refused, one each, and each failure opens a breaker.
    expect_closed(&mut tcplb.connect());
    assert_eq!(
        tcplb.admin_get("/healthz"),
        (503, "no backend is up\n".to_string())
    );
    let m = tcplb.metrics();
    for l in [&la, &lb] {
        assert_eq!(m.get("tcplb_backend_up", &[("backend", l)]), 0.0);
        assert_eq!(
            m.get("tcplb_backend_connect_failures_total", &[("backend", l)]),
            1.0
        );
        let entry = backend_entry(&tcplb, l);
        assert_eq!(entry["state"], "down", "{entry}");
        assert_eq!(entry["consecutive_failures"], 1);
        // Why, in words (the dashboard shows it).
        assert!(
            entry["reason"]
                .as_str()
                .is_some_and(|r| r
                    .starts_with("circuit breaker open: 1 connect failed in a row; next try in ")),
            "{entry}"
        );
    }
    assert_eq!(m.get("tcplb_connections_no_backend_total", &[]), 1.0);

    // The cool-down ends: half open, not up yet, but ready for a trial session, so
    // /healthz lets clients come (a readiness probe stuck at 503 would stop the trial).
    wait_until(
        || state_of(&tcplb, &la) == "half_open" && state_of(&tcplb, &lb) == "half_open",
        || format!("states: {:?}", backends_json(&tcplb)),
    );
    assert_eq!(tcplb.admin_get("/healthz").0, 200);
    assert_eq!(
        tcplb.metrics().get("tcplb_backend_up", &[("backend", &la)]),
        0.0
    );

    // A comes back on the same port; the next client's trial connect there succeeds.
    let revived = Backend::serve(7, a.listen(), identify_and_hold());
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 7);
    assert_eq!(tcplb.admin_get("/healthz"), (200, "ok\n".to_string()));
    let m = tcplb.metrics();
    assert_eq!(m.get("tcplb_backend_up", &[("backend", &la)]), 1.0);
    assert_eq!(m.get("tcplb_backend_up", &[("backend", &lb)]), 0.0);
    assert_eq!(state_of(&tcplb, &la), "up");
    let b_state = state_of(&tcplb, &lb);
    assert!(
        ["down", "half_open"].contains(&b_state.as_str()),
        "B is {b_state}"
    );
    assert_eq!(backend_entry(&tcplb, &la)["consecutive_failures"], 0);
    close_and_wait(stream);
    assert_eq!(revived.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn healthz_and_states_follow_active_health_checks_down_and_back_up() {
    let refusing = refusing_port();
    let label = refusing.addr.to_string();
    let tcplb = start(
        std::slice::from_ref(&label),
        &["--health-interval", "0.2", "--fall", "1", "--rise", "1"],
    );
    wait_until(
        || tcplb.admin_get("/healthz").0 == 503,
        || "healthz never went 503".to_string(),
    );
    let entry = backend_entry(&tcplb, &label);
    assert_eq!(entry["health_checks"], "down", "{entry}");
    assert_eq!(entry["state"], "down", "{entry}");
    assert_eq!(entry["reason"], "health checks failing: refused", "{entry}");
    assert_eq!(
        tcplb
            .metrics()
            .get("tcplb_backend_up", &[("backend", &label)]),
        0.0
    );
    // Probes are not sessions.
    assert_eq!(
        tcplb.metrics().get(
            "tcplb_backend_connect_failures_total",
            &[("backend", &label)]
        ),
        0.0
    );

    let revived = Backend::serve(5, refusing.listen(), identify_and_hold());
    wait_until(
        || tcplb.admin_get("/healthz").0 == 200,
        || format!("healthz never came back: {:?}", backends_json(&tcplb)),
    );
    let entry = backend_entry(&tcplb, &label);
    assert_eq!(entry["health_checks"], "up", "{entry}");
    assert_eq!(entry["state"], "up", "{entry}");
    assert_eq!(
        tcplb
            .metrics()
            .get("tcplb_backend_up", &[("backend", &label)]),
        1.0
    );
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 5);
    close_and_wait(stream);
    assert!(revived.accepted.load(Ordering::SeqCst) >= 1);
}

// ---------------------------------------------------------------------------------------
// The admin endpoint's HTTP

/// A client that pings 64 KiB chunks through an echo session, checking every byte, until
/// told to stop. Returns the bytes it moved each way.
fn echo_until(tcplb: &Tcplb, stop: &AtomicBool, started: &mpsc::Sender<()>) -> u64 {
    let mut stream = tcplb.connect();
    let mut moved = 0u64;
    let mut round = 0u64;
    loop {
        let chunk = pattern(1000 + round, 64 * 1024);
        stream.write_all(&chunk).expect("write");
        let mut back = vec![0u8; chunk.len()];
        stream.read_exact(&mut back).expect("echo");
        assert_eq!(hash(&back), hash(&chunk), "round {round}");
        moved += chunk.len() as u64;
        if round == 0 {
            started.send(()).expect("started");
        }
        round += 1;
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    close_and_wait(stream);
    moved
}

#[test]
fn bad_admin_requests_get_4xx_and_proxied_traffic_flows_on() {
    let backend = Backend::start(1, echo());
    let tcplb = start(&[backend.arg()], &[]);
    let admin = tcplb.admin_addr();
    let stop = AtomicBool::new(false);
    let (started_tx, started_rx) = mpsc::channel();

    let moved = thread::scope(|s| {
        let echo = s.spawn(|| echo_until(&tcplb, &stop, &started_tx));
        started_rx
            .recv_timeout(PATIENCE)
            .expect("echo session started");
        let mut oversized = b"GET /metrics HTTP/1.1\r\nHost: tcplb\r\nX-Filler: ".to_vec();
        oversized.extend(std::iter::repeat_n(b'a', 9000));
        oversized.extend_from_slice(b"\r\n\r\n");
        // A head that never ends but passes the limit.
        let mut endless = b"GET /metrics HTTP/1.1\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'b', 9 * 1024));
        for round in 0..5 {
            for (what, request) in [
                ("garbage", b"\x00\x01\x02\xffgarbage\r\n\r\n".to_vec()),
                ("a bad request line", b"NOT A REQUEST\r\n\r\n".to_vec()),
                ("a bad version", b"GET /metrics HTTP/9.9\r\n\r\n".to_vec()),
                ("an oversized head", oversized.clone()),
                ("an endless head", endless.clone()),
            ] {
                let r = http_exchange(admin, &request, false);
                assert_eq!(r.status, 400, "round {round}, {what}: {}", r.text());
                assert_eq!(r.header("connection"), Some("close"));
                assert_eq!(
                    r.header("content-length"),
                    Some(r.body.len().to_string().as_str()),
                    "{what}"
                );
            }
        }
        let r = http_exchange(admin, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.text().contains("/metrics"), "{}", r.text());
        for method in ["POST", "PUT", "DELETE"] {
            let request =
                format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
            let r = http_exchange(admin, request.as_bytes(), false);
            assert_eq!(r.status, 405, "{method}: {}", r.text());
            assert_eq!(r.header("allow"), Some("GET, HEAD"));
        }
        let r = http_exchange(admin, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty(), "HEAD has no body: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let length: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        assert!(
            length > 1000,
            "HEAD's Content-Length is the GET body's: {length}"
        );
        let r = http_exchange(admin, b"HEAD /healthz HTTP/1.1\r\n\r\n", false);
        assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
        assert!(r.body.is_empty());
        // A query string is ignored; GET still works after all of the above.
        let r = http_exchange(admin, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", false);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert!(Exposition::parse(&r.text()).is_ok());
        stop.store(true, Ordering::SeqCst);
        echo.join().expect("echo session")
    });
    let m = tcplb.metrics();
    let label = backend.arg();
    assert_eq!(
        m.get(
            "tcplb_backend_bytes_total",
            &[("backend", &label), ("direction", "sent")]
        ),
        moved as f64
    );
    assert_eq!(
        m.get(
            "tcplb_backend_bytes_total",
            &[("backend", &label), ("direction", "received")]
        ),
        moved as f64
    );
    assert_eq!(
        m.get("tcplb_connections_accepted_total", &[]),
        1.0,
        "admin connections are not clients"
    );
}

#[test]
fn a_request_followed_by_a_half_close_is_answered() {
    // `printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc -N` and the like send the request and
    // their FIN together. Paused, tcplb finds both in the socket at once.
    let backend = Backend::start(1, echo());
    let tcplb = start(&[backend.arg()], &[]);
    let admin = tcplb.admin_addr();
    for (path, status) in [("/healthz", 200), ("/metrics", 200), ("/nope", 404)] {
        tcplb.pause();
        let mut stream = TcpStream::connect(admin).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .expect("send");
        stream.shutdown(Shutdown::Write).expect("half-close");
        tcplb.resume();
        let r = read_http_response(&mut stream);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
    }
    // Not paused: the usual race, answered either way.
    let r = http_exchange(admin, b"GET /healthz HTTP/1.0\r\n\r\n", true);
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
}

// ---------------------------------------------------------------------------------------
// The Prometheus text format

/// Families every scrape has, with their types.
const FAMILIES: [(&str, &str); 19] = [
    ("tcplb_backend_active_connections", "gauge"),
    ("tcplb_backend_connections_total", "counter"),
    ("tcplb_backend_connect_failures_total", "counter"),
    ("tcplb_backend_up", "gauge"),
    ("tcplb_backend_bytes_total", "counter"),
    ("tcplb_connections_accepted_total", "counter"),
    ("tcplb_connections_shed_total", "counter"),
    ("tcplb_connections_no_backend_total", "counter"),
    ("tcplb_accept_errors_total", "counter"),
    ("tcplb_sessions_active", "gauge"),
    ("tcplb_buffer_pool_buffers", "gauge"),
    ("tcplb_buffer_pool_capacity_bytes", "gauge"),
    ("tcplb_session_duration_seconds", "histogram"),
    ("tcplb_connect_duration_seconds", "histogram"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_start_time_seconds", "gauge"),
];

/// Parses `text` with `prometheus_client.parser.text_string_to_metric_families`; returns
/// its families (name, type) and samples (name, sorted labels, value).
type ParsedByPython = (
    Vec<(String, String)>,
    Vec<(String, Vec<(String, String)>, f64)>,
);

/// A Python that has `prometheus_client`: `python3` on the PATH (pyenv, a virtualenv, or
/// the system's), else the system's own `/usr/bin/python3`, where Debian's
/// `python3-prometheus-client` package puts it. `scripts/setup` installs one.
fn python_with_prometheus_client() -> &'static str {
    static FOUND: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        ["python3", "/usr/bin/python3"].into_iter().find(|python| {
            Command::new(python)
                .args(["-c", "import prometheus_client"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Python with prometheus_client (tried python3 and /usr/bin/python3): run \
             scripts/setup, which installs it (apt-get install python3-prometheus-client on \
             Debian's Python, pip otherwise)"
        )
    })
}

fn parse_with_prometheus_client(text: &str) -> ParsedByPython {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    print(json.dumps(["family", family.name, family.type]))
    for s in family.samples:
        print(json.dumps(["sample", s.name, sorted(s.labels.items()), repr(s.value)]))
"#;
    let python = python_with_prometheus_client();
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let text = text.to_string();
    let feeder = thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("python3 output");
    feeder.join().expect("feeder").expect("feed the exposition");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "prometheus_client ({python}) failed to parse /metrics:\n{stderr}"
    );
    let (mut families, mut samples) = (Vec::new(), Vec::new());
    for line in String::from_utf8(out.stdout).expect("utf-8").lines() {
        let v: Value = serde_json::from_str(line).expect("JSON from the script");
        let s = |i: usize| v[i].as_str().expect("a string").to_string();
        match v[0].as_str() {
            Some("family") => families.push((s(1), s(2))),
            Some("sample") => {
                let labels = v[2]
                    .as_array()
                    .expect("labels")
                    .iter()
                    .map(|kv| {
                        (
                            kv[0].as_str().expect("key").to_string(),
                            kv[1].as_str().expect("value").to_string(),
                        )
                    })
                    .collect();
                let value: f64 = s(3).parse().expect("a float repr");
                samples.push((s(1), labels, value));
            }
            _ => panic!("unexpected line {line}"),
        }
    }
    (families, samples)
}

/// An IPv6 loopback echo backend, if this host has IPv6 loopback.
fn ipv6_echo_backend(id: u8) -> Option<Arc<Backend>> {
    match TcpListener::bind("[::1]:0") {
        Ok(listener) => Some(Backend::serve(id, listener, echo())),
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}): the [::1] part of this test is skipped");
            None
        }
    }
}

#[test]
fn metrics_parse_with_the_prometheus_client_parser() {
    let v4 = Backend::start(1, echo());
    let v6 = ipv6_echo_backend(2);
    let mut backends = vec![v4.arg()];
    if let Some(v6) = &v6 {
        backends.push(v6.arg());
    }
    let log = Scratch::new("prom-parse.log");
    let log_arg = log.arg();
    let tcplb = start(&backends, &["--access-log", &log_arg]);
    for seed in 0..4 {
        let data = pattern(seed, 3000);
        assert_eq!(hash(&echo_through(tcplb.connect(), &data)), hash(&data));
    }
    let (status, text) = tcplb.admin_get("/metrics");
    assert_eq!(status, 200);
    let (families, samples) = parse_with_prometheus_client(&text);
    let names: Vec<&str> = families.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!(
        "prometheus_client parsed {} families: {names:?}",
        names.len()
    );

    // prometheus_client names a counter family without its `_total`.
    for (family, kind) in FAMILIES {
        let name = if kind == "counter" {
            family
                .strip_suffix("_total")
                .expect("counters end in _total")
        } else {
            family
        };
        assert!(
            families.iter().any(|(n, k)| n == name && k == kind),
            "{family} ({kind}) not parsed: {families:?}"
        );
    }
    // The same samples, label for label and value for value, as the Rust parser sees.
    let ours = Exposition::parse(&text).expect("parses");
    assert_eq!(samples.len(), ours.samples.len());
    for (s, (name, labels, value)) in ours.samples.iter().zip(&samples) {
        let mut our_labels = s.labels.clone();
        our_labels.sort();
        assert_eq!((&s.name, &our_labels), (name, labels));
        assert!(
            s.value == *value || (s.value.is_nan() && value.is_nan()),
            "{}: {} vs {value}",
            s.name,
            s.value
        );
    }
    // Backend labels come out as written, IPv6 brackets and all.
    let backend_labels: BTreeSet<&str> = samples
        .iter()
        .filter(|(n, _, _)| n == "tcplb_backend_up")
        .flat_map(|(_, l, _)| {
            l.iter()
                .filter(|(k, _)| k == "backend")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    let wanted: BTreeSet<&str> = backends.iter().map(String::as_str).collect();
    assert_eq!(backend_labels, wanted);
    if let Some(v6) = &v6 {
        let label = format!("[::1]:{}", v6.addr.port());
        assert_eq!(backend_entry(&tcplb, &label)["address"], label.as_str());
        let served: f64 = backends
            .iter()
            .map(|l| ours.get("tcplb_backend_connections_total", &[("backend", l)]))
            .sum();
        assert_eq!(served, 4.0);
        assert_eq!(
            ours.get("tcplb_backend_connections_total", &[("backend", &label)]),
            v6.accepted.load(Ordering::SeqCst) as f64
        );
    }
}

#[test]
fn every_family_has_help_and_type_and_histograms_add_up() {
    let backend = Backend::start(1, echo());
    let log = Scratch::new("families.log");
    let log_arg = log.arg();
    let tcplb = start(&[backend.arg()], &["--access-log", &log_arg]);
    for seed in 0..3 {
        let data = pattern(seed, 1000);
        assert_eq!(hash(&echo_through(tcplb.connect(), &data)), hash(&data));
    }
    let m = tcplb.metrics();
    let mut expected: Vec<(&str, &str)> = FAMILIES.to_vec();
    expected.push(("tcplb_access_log_dropped_lines_total", "counter"));
    for (family, kind) in &expected {
        assert_eq!(
            m.types.get(*family).map(String::as_str),
            Some(*kind),
            "TYPE of {family}"
        );
        assert!(
            m.help.get(*family).is_some_and(|h| !h.trim().is_empty()),
            "HELP of {family}"
        );
    }
    assert_eq!(
        m.help.keys().collect::<Vec<_>>(),
        m.types.keys().collect::<Vec<_>>(),
        "every HELP has a TYPE and the other way round"
    );
    for s in &m.samples {
        assert!(
            m.family(&s.name).is_some(),
            "sample {} has no # TYPE",
            s.name
        );
    }
    for (family, kind) in &m.types {
        assert!(
            m.samples.iter().any(|s| m.family(&s.name) == Some(family)),
            "family {family} has no samples"
        );
        if kind == "counter" {
            assert!(family.ends_with("_total"), "counter {family} lacks _total");
        }
    }
    // No series twice.
    let mut seen = BTreeSet::new();
    for s in &m.samples {
        let mut labels = s.labels.clone();
        labels.sort();
        assert!(
            seen.insert((s.name.clone(), labels)),
            "duplicate series {s:?}"
        );
    }
    // Histograms: bounds rise, counts are cumulative, +Inf is the count.
    for family in [
        "tcplb_session_duration_seconds",
        "tcplb_connect_duration_seconds",
    ] {
        let buckets: Vec<(f64, f64)> = m
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .map(|s| {
                // The one series of the one service (or pool), and its bucket.
                assert_eq!(s.labels.len(), 2, "{s:?}");
                assert!(
                    ["service", "pool"].contains(&s.labels[0].0.as_str()),
                    "{s:?}"
                );
                assert_eq!(s.labels[1].0, "le", "{s:?}");
                let le = &s.labels[1].1;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                (bound, s.value)
            })
            .collect();
        assert!(buckets.len() >= 2, "{family} buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].0 < w[1].0),
            "{family} bounds rise"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} is cumulative"
        );
        let (last_bound, last_count) = buckets[buckets.len() - 1];
        assert_eq!(last_bound, f64::INFINITY);
        assert_eq!(last_count, m.get(&format!("{family}_count"), &[]));
        assert_eq!(last_count, 3.0, "{family}: three sessions, three connects");
        assert!(m.get(&format!("{family}_sum"), &[]) > 0.0);
    }
    // The process collector reads sensible figures.
    assert!(m.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.get("process_open_fds", &[]) >= 5.0);
    assert!(m.get("process_max_fds", &[]) >= m.get("process_open_fds", &[]));
    let started = m.get("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        started <= now && started > now - 600.0,
        "start time {started}, now {now}"
    );
    assert_eq!(m.get("tcplb_access_log_dropped_lines_total", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------
// /backends

#[test]
fn backends_json_has_every_field_with_the_right_values() {
    let primary = Backend::start(1, echo());
    let backup = Backend::start(2, echo());
    let tcplb = start(
        &[
            format!("{},weight=2", primary.arg()),
            format!("{},backup", backup.arg()),
        ],
        &[],
    );
    let data = pattern(3, 12_345);
    assert_eq!(hash(&echo_through(tcplb.connect(), &data)), hash(&data));

    let (status, body) = tcplb.admin_get("/backends");
    assert_eq!(status, 200);
    let all = backends_json(&tcplb);
    assert_eq!(all.len(), 2, "{body}");
    let fields: BTreeSet<&str> = [
        "pool",
        "address",
        "name",
        "weight",
        "backup",
        "send_proxy",
        "balance",
        "state",
        "reason",
        "health_checks",
        "active",
        "connections_total",
        "connect_failures_total",
        "consecutive_failures",
        "bytes_sent",
        "bytes_received",
        // What `tcplb ctl` set and the last checks said (`tcplb ctl show backends`).
        "admin",
        "weight_configured",
        "weight_set",
        "weight_effective",
        "slow_start",
        "checks",
        "last_check",
        "agent",
        "latency_ms",
        "maxconn",
    ]
    .into();
    for entry in &all {
        let keys: BTreeSet<&str> = entry
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{entry}");
    }
    let n = data.len();
    // The echo answered in well under a second; the backup never had a session.
    let mut all = all;
    let latency = all[0]["latency_ms"]
        .as_f64()
        .expect("a latency for the primary");
    assert!(latency > 0.0 && latency < 1000.0, "{latency}");
    all[0].as_object_mut().expect("object").remove("latency_ms");
    assert_eq!(all[1]["latency_ms"], serde_json::Value::Null);
    all[1].as_object_mut().expect("object").remove("latency_ms");
    assert_eq!(
        all[0],
        serde_json::json!({
            "pool": "default", "address": primary.arg(), "name": primary.arg(), "weight": 2, "backup": false,
            "send_proxy": null, "balance": "least-active", "state": "up", "reason": null, "health_checks": "off", "active": 0, "connections_total": 1,
            "connect_failures_total": 0, "consecutive_failures": 0,
            "bytes_sent": n, "bytes_received": n, "maxconn": null,
            "admin": "ready", "weight_configured": 2, "weight_set": null, "weight_effective": 2,
            "slow_start": null, "checks": "off", "last_check": null, "agent": null,
        })
    );
    assert_eq!(
        all[1],
        serde_json::json!({
            "pool": "default", "address": backup.arg(), "name": backup.arg(), "weight": 1, "backup": true,
            "send_proxy": null, "balance": "least-active", "state": "up", "reason": null, "health_checks": "off", "active": 0, "connections_total": 0,
            "connect_failures_total": 0, "consecutive_failures": 0,
            "bytes_sent": 0, "bytes_received": 0, "maxconn": null,
            "admin": "ready", "weight_configured": 1, "weight_set": null, "weight_effective": 1,
            "slow_start": null, "checks": "off", "last_check": null, "agent": null,
        })
    );
    // An active session shows.
    let mut held = tcplb.connect();
    held.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    held.read_exact(&mut b).expect("echo");
    assert_eq!(backend_entry(&tcplb, &primary.arg())["active"], 1);
    close_and_wait(held);
    assert_eq!(backend_entry(&tcplb, &primary.arg())["active"], 0);
}

// ---------------------------------------------------------------------------------------
// The access log

/// One access log line, split into its fields.
struct AccessLine {
    timestamp: String,
    fields: Vec<(String, String)>,
}

impl AccessLine {
    fn parse(line: &str) -> AccessLine {
        let mut parts = line.split(' ');
        let timestamp = parts.next().unwrap_or_default().to_string();
        let fields = parts
            .map(|p| {
                let (k, v) = p
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{p:?} is not key=value in {line:?}"));
                (k.to_string(), v.to_string())
            })
            .collect::<Vec<_>>();
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "service",
                "client",
                "class",
                "backend",
                "queue_ms",
                "connect_ms",
                "ttfb_ms",
                "duration_ms",
                "bytes_up",
                "bytes_down",
                "retries",
                "end"
            ],
            "{line:?}"
        );
        check_timestamp(&timestamp);
        AccessLine { timestamp, fields }
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key}"))
    }

    fn number(&self, key: &str) -> u64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key}={} is not a number", self.get(key)))
    }

    /// A `ms` field: `-`, or milliseconds with exactly three decimals.
    fn millis(&self, key: &str) -> Option<f64> {
        let v = self.get(key);
        if v == "-" {
            return None;
        }
        let (_, decimals) = v.split_once('.').unwrap_or_else(|| panic!("{key}={v}"));
        assert_eq!(decimals.len(), 3, "{key}={v}");
        Some(v.parse().unwrap_or_else(|_| panic!("{key}={v}")))
    }
}

/// `2026-11-23T03:24:31.123Z`.
fn check_timestamp(t: &str) {
    let ok = t.len() == 24
        && t.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == '.',
            23 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(ok, "bad timestamp {t:?}");
}

/// A backend that does what the client's first byte says:
/// `e` echoes (the `e` too) until EOF; `s` sends `pattern(7, 3000)` and closes at once;
/// `h` answers `k` and holds the connection until the client closes.
fn scripted() -> Handler {
    Arc::new(|mut stream, _| {
        let mut command = [0u8; 1];
        if stream.read_exact(&mut command).is_err() {
            return;
        }
        match command[0] {
            b'e' => {
                if stream.write_all(b"e").is_err() {
                    return;
                }
                echo_until_eof(&mut stream);
            }
            b's' => {
                let _ = stream.write_all(&pattern(7, 3000));
            }
            b'h' => {
                if stream.write_all(b"k").is_err() {
                    return;
                }
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            }
            _ => {}
        }
    })
}

#[test]
fn access_log_has_one_exact_line_per_session() {
    let server = Backend::start(1, scripted());
    // A backup that refuses: used only once the primary is gone, for a retry.
    let refusing = refusing_port();
    let dead_backup = refusing.addr.to_string();
    let log = Scratch::new("access.log");
    let log_arg = log.arg();
    let tcplb = start(
        &[server.arg(), format!("{dead_backup},backup")],
        &["--access-log", &log_arg, "--max-conns", "1"],
    );
    let port = |s: &TcpStream| s.local_addr().expect("addr").port();
    let mut clients = Vec::new();

    // 1. Echo, the client closes first: client_fin.
    let mut data = b"e".to_vec();
    data.extend(pattern(4, 1000));
    let stream = tcplb.connect();
    clients.push(port(&stream));
    assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
    wait_for_lines(&log, 1);

    // 2. The backend sends and closes first; the client closes after: backend_fin.
    let mut stream = tcplb.connect();
    clients.push(port(&stream));
    stream.write_all(b"s").expect("write");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read");
    assert_eq!(hash(&got), hash(&pattern(7, 3000)));
    stream.shutdown(Shutdown::Write).expect("close");
    wait_for_lines(&log, 2);

    // 3. Held, so the next client is over --max-conns 1 ...
    let mut held = tcplb.connect();
    clients.push(port(&held));
    held.write_all(b"h").expect("write");
    let mut k = [0u8; 1];
    held.read_exact(&mut k).expect("held");
    // 4. ... and is shed.
    let mut shed = tcplb.connect();
    clients.push(port(&shed));
    expect_closed(&mut shed);
    wait_for_lines(&log, 3);
    // (3 ends: the client closes first.)
    close_and_wait(held);
    wait_for_lines(&log, 4);

    // 5. The server is gone: refused there, refused by the backup: no_backend, one retry.
    server.kill();
    let mut refused = tcplb.connect();
    clients.push(port(&refused));
    expect_closed(&mut refused);
    let lines = wait_for_lines(&log, 5);
    assert_eq!(lines.len(), 5, "{lines:#?}");

    let parsed: Vec<AccessLine> = lines.iter().map(|l| AccessLine::parse(l)).collect();
    let expected = [
        // backend?, bytes_up, bytes_down, retries, end
        (true, 1001, 1001, 0, "client_fin"),
        (true, 1, 3000, 0, "backend_fin"),
        (false, 0, 0, 0, "shed_max_conns"),
        (true, 1, 1, 0, "client_fin"),
        (false, 0, 0, 1, "no_backend"),
    ];
    let order = [0, 1, 3, 2, 4]; // line i is about client order[i]
    for (i, (line, (served, up, down, retries, end))) in parsed.iter().zip(expected).enumerate() {
        let context = &lines[i];
        assert_eq!(
            line.get("client"),
            format!("127.0.0.1:{}", clients[order[i]]),
            "{context}"
        );
        assert_eq!(line.get("end"), end, "{context}");
        assert_eq!(line.number("bytes_up"), up, "{context}");
        assert_eq!(line.number("bytes_down"), down, "{context}");
        assert_eq!(line.number("retries"), retries, "{context}");
        let duration = line
            .millis("duration_ms")
            .expect("duration is always there");
        if served {
            assert_eq!(line.get("backend"), server.arg(), "{context}");
            let connect = line.millis("connect_ms").expect("connect_ms");
            assert!(connect <= duration, "{context}");
        } else {
            assert_eq!(line.get("backend"), "-", "{context}");
            assert_eq!(line.get("connect_ms"), "-", "{context}");
        }
        if end == "shed_max_conns" {
            assert_eq!(duration, 0.0, "{context}");
        }
    }
    assert!(
        parsed.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "timestamps in order: {lines:#?}"
    );
    let m = tcplb.metrics();
    assert_eq!(m.get("tcplb_access_log_dropped_lines_total", &[]), 0.0);
    assert_eq!(m.get("tcplb_connections_no_backend_total", &[]), 1.0);
    assert_eq!(
        m.get(
            "tcplb_backend_connect_failures_total",
            &[("backend", &dead_backup)]
        ),
        1.0
    );
    // Nothing else was written meanwhile.
    assert_eq!(wait_for_lines(&log, 5).len(), 5);
}

#[test]
fn access_log_dash_writes_to_standard_output() {
    let backend = Backend::start(1, echo());
    let label = backend.arg();
    let mut tcplb = Tcplb::start_with(&[&label, "--access-log", "-"], |command| {
        command.stdout(Stdio::piped());
    });
    let stdout = tcplb.take_stdout();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ports = Vec::new();
    for (seed, len) in [(1, 777), (2, 4096)] {
        let stream = tcplb.connect();
        ports.push(stream.local_addr().expect("addr").port());
        let data = pattern(seed, len);
        assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("an access log line on stdout");
        let line = AccessLine::parse(&line);
        assert_eq!(
            line.get("client"),
            format!("127.0.0.1:{}", ports[ports.len() - 1])
        );
        assert_eq!(line.get("backend"), backend.arg());
        assert_eq!(line.number("bytes_up"), len as u64);
        assert_eq!(line.number("bytes_down"), len as u64);
        assert_eq!(line.get("end"), "client_fin");
    }
    // Only access log lines go to stdout: the start line went to stderr.
    assert!(rx.try_recv().is_err(), "nothing else on stdout");
    assert_eq!(tcplb.count_logs("listening on"), 1);
}

/// An echo backend that, on `r` first, answers `r` and then resets the connection.
fn echo_or_reset() -> Handler {
    Arc::new(|mut stream, _| {
        let mut first = [0u8; 1];
        if stream.read_exact(&mut first).is_err() || stream.write_all(&first).is_err() {
            return;
        }
        if first[0] == b'r' {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            return;
        }
        echo_until_eof(&mut stream);
    })
}

#[test]
fn access_log_names_resets_and_idle_timeouts() {
    let backend = Backend::start(1, echo_or_reset());
    let log = Scratch::new("access-ends.log");
    let log_arg = log.arg();
    let tcplb = start(
        &[backend.arg()],
        &["--access-log", &log_arg, "--idle-timeout", "1"],
    );
    let exchange = |first: u8| {
        let mut stream = tcplb.connect();
        let port = stream.local_addr().expect("addr").port();
        stream.write_all(&[first]).expect("write");
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).expect("answer");
        assert_eq!(b[0], first);
        (stream, port)
    };
    let mut ports = Vec::new();

    // The client resets.
    let (stream, port) = exchange(b'x');
    ports.push(port);
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(stream);
    wait_for_lines(&log, 1);

    // The backend resets: passed on to the client as a reset.
    let (mut stream, port) = exchange(b'r');
    ports.push(port);
    let mut rest = [0u8; 1];
    assert_eq!(
        stream.read(&mut rest).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset)
    );
    wait_for_lines(&log, 2);

    // Silent for the idle timeout, nothing in flight: closed (with a FIN) by tcplb.
    let (mut stream, port) = exchange(b'i');
    ports.push(port);
    assert_eq!(stream.read(&mut rest).map_err(|e| e.kind()), Ok(0));
    let lines = wait_for_lines(&log, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");

    for ((line, port), end) in
        lines
            .iter()
            .zip(&ports)
            .zip(["client_reset", "backend_reset", "idle_timeout"])
    {
        let l = AccessLine::parse(line);
        assert_eq!(l.get("client"), format!("127.0.0.1:{port}"), "{line}");
        assert_eq!(l.get("backend"), backend.arg(), "{line}");
        assert_eq!(l.get("end"), end, "{line}");
        assert_eq!(
            (l.number("bytes_up"), l.number("bytes_down")),
            (1, 1),
            "{line}"
        );
        assert_eq!(l.number("retries"), 0, "{line}");
        assert!(l.millis("connect_ms").is_some(), "{line}");
    }
    let idle = AccessLine::parse(&lines[2])
        .millis("duration_ms")
        .expect("duration");
    assert!(idle >= 1000.0, "closed for idleness after {idle} ms");
    let m = tcplb.metrics();
    let label = backend.arg();
    for direction in ["sent", "received"] {
        assert_eq!(
            m.get(
                "tcplb_backend_bytes_total",
                &[("backend", &label), ("direction", direction)]
            ),
            3.0,
            "{direction}"
        );
    }
    assert_eq!(m.get("tcplb_session_duration_seconds_count", &[]), 3.0);
    assert_eq!(m.get("tcplb_sessions_active", &[]), 0.0);
}

#[test]
fn access_log_lines_lost_to_a_failing_write_are_counted_and_warned_about_sparingly() {
    // /dev/full fails every write with ENOSPC.
    const SESSIONS: usize = 300;
    let started = Instant::now();
    let backend = Backend::start(1, echo());
    let tcplb = start(&[backend.arg()], &["--access-log", "/dev/full"]);
    for i in 0..SESSIONS {
        let data = pattern(i as u64, 100);
        assert_eq!(hash(&echo_through(tcplb.connect(), &data)), hash(&data));
    }
    // Every line is lost, and every one is counted (by the writer thread, a little later).
    let dropped = || metric(&tcplb, "tcplb_access_log_dropped_lines_total");
    wait_until(
        || dropped() == SESSIONS as f64,
        || format!("{} lines counted as dropped, wanted {SESSIONS}", dropped()),
    );
    // Said once per 5 s window, not once per write.
    let elapsed = started.elapsed();
    let warnings = tcplb.count_logs("access log:");
    assert!(
        warnings >= 1 && warnings as u64 <= 1 + elapsed.as_secs() / 5,
        "{warnings} warnings in {elapsed:?}:\n{}",
        tcplb.logs().join("\n")
    );
    assert!(tcplb.wait_for_log("access log:").contains("No space left"));
    // Traffic was never held up by it.
    assert_eq!(
        metric(&tcplb, "tcplb_session_duration_seconds_count"),
        SESSIONS as f64
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Opens the read end of a FIFO without waiting for a writer.
fn open_fifo_reader(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open the FIFO for reading")
}

/// Waits for one whole line on a non-blocking FIFO reader.
fn read_fifo_line(reader: &mut std::fs::File) -> String {
    let mut got = Vec::new();
    wait_until(
        || {
            let mut buf = [0u8; 4096];
            match reader.read(&mut buf) {
                // 0: no writer has the FIFO open (yet); WouldBlock: it has, nothing written.
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading the FIFO: {e}"),
            }
            got.contains(&b'\n')
        },
        || "no line came through the FIFO".to_string(),
    );
    let text = String::from_utf8(got).expect("UTF-8");
    assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    text.trim_end().to_string()
}

#[test]
fn an_access_log_fifo_without_a_reader_does_not_hold_start_up() {
    let fifo = Scratch::new("access.fifo");
    mkfifo(&fifo);
    let backend = Backend::start(1, echo());
    // Opening a FIFO for writing waits for a reader, unless done without blocking.
    let tcplb = start(&[backend.arg()], &["--access-log", &fifo.arg()]);
    tcplb.wait_for_log("no process reads yet");
    let session = |seed: u64| {
        let stream = tcplb.connect();
        let port = stream.local_addr().expect("addr").port();
        let data = pattern(seed, 500);
        assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
        port
    };
    let dropped = || metric(&tcplb, "tcplb_access_log_dropped_lines_total");
    let expect_dropped = |n: f64| {
        wait_until(
            || dropped() == n,
            || format!("{} lines counted as dropped, wanted {n}", dropped()),
        )
    };
    let expect_line = |reader: &mut std::fs::File, port: u16| {
        let line = AccessLine::parse(&read_fifo_line(reader));
        assert_eq!(line.get("client"), format!("127.0.0.1:{port}"));
        assert_eq!(line.get("end"), "client_fin");
        assert_eq!(
            (line.number("bytes_up"), line.number("bytes_down")),
            (500, 500)
        );
    };

    // No reader: the line is dropped and counted.
    session(1);
    expect_dropped(1.0);
    // A reader comes: the next line reaches it.
    let mut reader = open_fifo_reader(&fifo);
    let port = session(2);
    expect_line(&mut reader, port);
    // The reader goes away: the line then is lost and counted, and serving goes on.
    drop(reader);
    session(3);
    expect_dropped(2.0);
    // Another reader: the FIFO is opened again for it.
    let mut reader = open_fifo_reader(&fifo);
    let port = session(4);
    expect_line(&mut reader, port);
    assert_eq!(dropped(), 2.0);
    assert_eq!(tcplb.count_logs("panicked"), 0);
}

#[test]
fn a_removed_backend_shows_as_draining_until_its_sessions_end() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let file = Scratch::new("drain-backends.txt");
    std::fs::write(&file, format!("{}\n{}\n", a.arg(), b.arg())).expect("write backends file");
    let file_arg = file.arg();
    let tcplb = start(&[], &["--backends-file", &file_arg]);
    let mut held: Vec<(TcpStream, u8)> = (0..2).map(|_| connect_and_identify(&tcplb)).collect();
    held.sort_by_key(|(_, id)| *id);
    assert_eq!(held.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [1, 2]);

    // A leaves the set while one of its sessions is open.
    std::fs::write(&file, format!("{}\n", b.arg())).expect("rewrite backends file");
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 0 added, 1 removed");
    let (la, lb) = (a.arg(), b.arg());
    let entry = backend_entry(&tcplb, &la);
    assert_eq!(entry["state"], "draining", "{entry}");
    assert_eq!(entry["active"], 1, "{entry}");
    assert_eq!(state_of(&tcplb, &lb), "up");
    let m = tcplb.metrics();
    assert_eq!(m.get("tcplb_backend_up", &[("backend", &la)]), 0.0);
    assert_eq!(
        m.get("tcplb_backend_active_connections", &[("backend", &la)]),
        1.0
    );
    assert_eq!(m.get("tcplb_backend_up", &[("backend", &lb)]), 1.0);
    assert_eq!(tcplb.admin_get("/healthz").0, 200);
    // New sessions go to B only.
    let (extra, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 2);
    close_and_wait(extra);

    // A's last session ends: A is gone from both views.
    let (a_session, _) = held.remove(0);
    close_and_wait(a_session);
    let all = backends_json(&tcplb);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["address"], lb.as_str());
    let m = tcplb.metrics();
    assert_eq!(m.value("tcplb_backend_up", &[("backend", &la)]), None);
    assert_eq!(
        m.get("tcplb_backend_active_connections", &[("backend", &lb)]),
        1.0
    );
    for (stream, _) in held {
        close_and_wait(stream);
    }
}

#[test]
fn the_exposition_parser_used_here_is_strict() {
    let good = "# HELP m A help \\\\ text\\nwith a line feed.\n# TYPE m counter\n\
                m{a=\"x\\\"y\\\\z\\nw\",b=\"[::1]:80\"} 1.5\nm 2 1700000000000\n";
    let e = Exposition::parse(good).expect("parses");
    assert_eq!(e.help["m"], "A help \\ text\nwith a line feed.");
    assert_eq!(e.get("m", &[("b", "[::1]:80"), ("a", "x\"y\\z\nw")]), 1.5);
    assert_eq!(e.get("m", &[]), 2.0);
    for bad in [
        "m{a=\"b} 1\n",
        "m{a=\"x\"} notanumber\n",
        "# TYPE m bogus\n",
        "m{a=\"x\\q\"} 1\n",
        "m 1 2 3\n",
        "m{a=x} 1\n",
        "m{a=\"1\",a=\"2\"} 1\n",
        "m{a=\"1\"b=\"2\"} 1\n",
        "1m 1\n",
        "m 1\n# TYPE m gauge\n",
        "# TYPE m gauge\n# TYPE m gauge\n",
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
}
