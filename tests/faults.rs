//! Faults the balancer must ride through: refused backends, every backend down, a reset
//! mid-stream, idle sessions, too many clients, running out of file descriptors.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn connects_fail_over_past_refusing_backends_keeping_client_bytes() {
    let good = Backend::start(1, digest_after_eof());
    let (refusing1, refusing2) = (refusing_port(), refusing_port());
    let (dead1, dead2) = (refusing1.addr, refusing2.addr);
    let tcplb = Tcplb::start(&[
        &dead1.to_string(),
        &dead2.to_string(),
        &good.arg(),
        "--retries",
        "2",
    ]);
    for seed in 0..12u64 {
        let data = pattern(seed, 3000 + seed as usize);
        let mut stream = tcplb.connect();
        // Sent at once, before any connect has had time to fail: it must survive the retries.
        stream.write_all(&data).expect("write");
        stream.shutdown(Shutdown::Write).expect("half-close");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        assert_eq!(
            reply,
            format!("{} {}\n", data.len(), hash(&data)),
            "client {seed}"
        );
    }
    assert_eq!(good.accepted.load(Ordering::SeqCst), 12);
    tcplb.wait_for_log(&format!("backend {dead1}"));
    tcplb.wait_for_log("connect failed");
}

#[test]
fn with_every_backend_down_clients_are_closed_at_once_and_service_resumes() {
    let later = refusing_port(); // refused until we listen there
    let dead = refusing_port();
    let mut tcplb = Tcplb::start(&[&dead.addr.to_string(), &later.addr.to_string()]);
    for _ in 0..5 {
        let started = Instant::now();
        let mut stream = tcplb.connect();
        let mut buf = [0u8; 16];
        let outcome = stream.read(&mut buf);
        assert!(
            matches!(outcome, Ok(0)) || outcome.is_err(),
            "expected the client closed, got {outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "client was closed only after {:?}",
            started.elapsed()
        );
    }
    assert!(tcplb.is_running());
    tcplb.wait_for_log("no backend could take client");

    // A backend comes (back) up: the next client is served.
    let backend = Backend::serve(9, later.listen(), identify_and_hold());
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 9);
    close_and_wait(stream);
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_backend_reset_mid_stream_is_passed_on_and_service_goes_on() {
    // Sends 100 kB, waits for the client's "ok", then resets the connection.
    let resetter = Backend::start(
        1,
        std::sync::Arc::new(|mut stream: std::net::TcpStream, _: &Backend| {
            if stream.write_all(&pattern(5, 100_000)).is_err() {
                return;
            }
            let mut ok = [0u8; 2];
            if stream.read_exact(&mut ok).is_ok() {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
        }),
    );
    let mut tcplb = Tcplb::start(&[&resetter.arg()]);
    for _ in 0..3 {
        let mut stream = tcplb.connect();
        let mut got = vec![0u8; 100_000];
        stream.read_exact(&mut got).expect("data before the reset");
        assert_eq!(hash(&got), hash(&pattern(5, 100_000)));
        stream.write_all(b"ok").expect("ok");
        let mut rest = [0u8; 16];
        let outcome = stream.read(&mut rest);
        assert_eq!(
            outcome.map_err(|e| e.kind()),
            Err(ErrorKind::ConnectionReset),
            "the backend's reset reaches the client as a reset"
        );
    }
    assert!(tcplb.is_running());
    resetter.wait_active(0);
}

#[test]
fn a_client_reset_mid_stream_resets_the_backend() {
    let backend = Backend::start(1, echo());
    let tcplb = Tcplb::start(&[&backend.arg()]);
    let mut stream = tcplb.connect();
    stream.write_all(b"hello").expect("write");
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).expect("echo");
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(stream); // RST
    // The backend's connection ends (its read fails or sees EOF), so it goes inactive.
    backend.wait_active(0);
    let data = pattern(1, 10_000);
    assert_eq!(hash(&echo_through(tcplb.connect(), &data)), hash(&data));
}

#[test]
fn idle_sessions_time_out_and_busy_ones_do_not() {
    // Echoes; counts how each connection ended: +1 for a clean EOF, +1000 for an error.
    let backend = Backend::start(
        1,
        Arc::new(|mut stream: TcpStream, me: &Backend| {
            let mut buf = [0u8; 1024];
            let ending = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break 1,
                    Ok(n) if stream.write_all(&buf[..n]).is_ok() => {}
                    _ => break 1000,
                }
            };
            me.counter.fetch_add(ending, Ordering::SeqCst);
        }),
    );
    let tcplb = Tcplb::start(&[&backend.arg(), "--idle-timeout", "1"]);
    let mut busy = tcplb.connect();
    let mut idle = tcplb.connect();
    idle.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    idle.read_exact(&mut b).expect("echo");
    let silent_since = Instant::now();

    thread::scope(|s| {
        // Busy: a byte every 300 ms for 2.4 s outlives the 1 s idle timeout.
        s.spawn(|| {
            for i in 0..8u8 {
                busy.write_all(&[i]).expect("write");
                let mut b = [0u8; 1];
                busy.read_exact(&mut b).expect("echo while busy");
                assert_eq!(b[0], i);
                thread::sleep(Duration::from_millis(300));
            }
        });
        // Idle and quiet (nothing in flight): closed with a FIN after about a second of
        // silence, like any idle connection; the backend gets its FIN too.
        let mut rest = [0u8; 1];
        assert_eq!(
            idle.read(&mut rest).map_err(|e| e.kind()),
            Ok(0),
            "a quiet idle session ends with a clean EOF, not a reset"
        );
        let waited = silent_since.elapsed();
        assert!(
            waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
    });
    // The backend saw a clean end too.
    backend.wait_active(1);
    assert_eq!(
        backend.counter.load(Ordering::SeqCst),
        1,
        "the backend got a FIN"
    );
    // The busy one is still open, though it has been alive for well over a second.
    assert!(silent_since.elapsed() > Duration::from_secs(2));
    busy.write_all(b"z").expect("write");
    let mut b = [0u8; 1];
    busy.read_exact(&mut b).expect("still open");
    assert_eq!(&b, b"z");
}

#[test]
fn an_idle_timeout_cuts_a_stalled_stream_with_a_reset_not_a_clean_end() {
    // The backend streams to a client that has stopped reading: no byte moves for a second,
    // with megabytes still on the way. The client must not mistake what it got for it all.
    let backend = Backend::start(1, streamer(11, 64 << 20));
    let tcplb = Tcplb::start(&[&backend.arg(), "--idle-timeout", "1"]);
    let mut stream = tcplb.connect();
    backend.wait_stalled();
    // The idle timeout cuts the session: the backend's side goes first (it is reset too).
    backend.wait_active(0);
    // Now read what is there: it must end in a reset.
    let outcome = read_digest(&mut stream);
    assert_eq!(
        outcome.map_err(|e| e.kind()).map(|(len, _)| len < 64 << 20),
        Err(ErrorKind::ConnectionReset),
        "a stream cut by the idle timeout must end in a reset"
    );
}

#[test]
fn past_max_conns_new_clients_are_shed_at_once() {
    let backend = Backend::start(3, identify_and_hold());
    let tcplb = Tcplb::start(&[&backend.arg(), "--max-conns", "3"]);
    let mut held: Vec<_> = (0..3).map(|_| connect_and_identify(&tcplb).0).collect();
    for _ in 0..5 {
        let started = Instant::now();
        let mut shed = tcplb.connect();
        let mut b = [0u8; 1];
        let outcome = shed.read(&mut b);
        assert!(
            matches!(outcome, Ok(0)) || outcome.is_err(),
            "shed client got {outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        backend.accepted.load(Ordering::SeqCst),
        3,
        "shed clients never reach a backend"
    );
    close_and_wait(held.pop().expect("held"));
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 3, "a freed slot is used again");
    held.push(stream);
}

#[test]
fn running_out_of_descriptors_pauses_accepting_without_spinning_and_recovers() {
    let backend = Backend::start(1, echo());
    let mut tcplb = Tcplb::start(&[&backend.arg()]);
    // Squeeze the running process to 32 descriptors (a handful are in use already).
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &tcplb.pid().to_string(), "--nofile=32:32"])
        .status()
        .expect("run prlimit");
    assert!(status.success());

    // More clients than fit: each sends a byte and waits for it back.
    let mut clients = Vec::new();
    for i in 0..30u8 {
        let mut stream = tcplb.connect();
        stream.write_all(&[i]).expect("write");
        clients.push((i, stream));
    }
    tcplb.wait_for_log("Too many open files");
    // Out of descriptors for a second: the process must sleep, not spin.
    let cpu_before = tcplb.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let cpu_used = tcplb.cpu_time() - cpu_before;
    assert!(
        cpu_used < Duration::from_millis(200),
        "spun for {cpu_used:?} of CPU"
    );
    assert!(tcplb.is_running());

    // Served clients close as they are served (all at once: with several workers a client
    // queued on one worker may wait for a session on another to end); everyone waiting is
    // served in the end, or was told at once (closed) that there was no descriptor left for
    // its backend connection.
    let outcomes: Vec<bool> = thread::scope(|s| {
        let readers: Vec<_> = clients
            .into_iter()
            .map(|(i, mut stream)| {
                s.spawn(move || {
                    let mut b = [0u8; 1];
                    let served = match stream.read(&mut b) {
                        Ok(1) => {
                            assert_eq!(b[0], i);
                            true
                        }
                        Ok(_) | Err(_) => false,
                    };
                    close_and_wait(stream);
                    served
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    let served = outcomes.iter().filter(|&&s| s).count();
    let refused = outcomes.len() - served;
    assert!(served >= 10, "only {served} served, {refused} refused");
    // Fully recovered: a new client is served.
    let data = pattern(3, 50_000);
    assert_eq!(hash(&echo_through(tcplb.connect(), &data)), hash(&data));
}

/// Whatever reads stderr may stall (a stuck log shipper, a blocking container log driver).
/// With a line logged per connection and nobody reading, tcplb keeps serving, the admin
/// endpoint answers, and the lines it could not write are counted.
#[test]
fn a_stderr_nobody_reads_never_stalls_the_event_loop() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let backend = Backend::start(1, echo());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcplb"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg(backend.arg())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcplb");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let _child = Kill(child);
    // Read up to the start line, then never again: the pipe (64 KiB) fills up.
    let mut line = String::new();
    while !line.contains("listening on ") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "no start line"
        );
    }
    let after = |marker: &str, end: char| -> std::net::SocketAddr {
        let rest = line.split(marker).nth(1).expect("marker in the start line");
        rest.split(end)
            .next()
            .and_then(|a| a.parse().ok())
            .expect("an address")
    };
    let (addr, admin) = (after("listening on ", ';'), after("admin on http://", '/'));

    // Two debug lines per session, ~120 bytes each: 3000 sessions write ~700 KiB of log.
    thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for i in 0..750u64 {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let data = pattern(t * 1000 + i, 100);
                    stream.write_all(&data).expect("write");
                    let mut back = vec![0u8; data.len()];
                    stream
                        .read_exact(&mut back)
                        .unwrap_or_else(|e| panic!("session {t}/{i}: {e}"));
                    assert_eq!(back, data);
                }
            });
        }
    });
    let (status, body) = http_request(admin, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_request(admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let dropped: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tcplb_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .expect("tcplb_log_lines_dropped_total");
    assert!(dropped > 0.0, "no line was dropped, yet nobody read stderr");
    drop(stderr);
}

/// Health probes to backends whose connects hang each hold a descriptor for the whole
/// connect timeout. With 300 such backends and 400 descriptors, the probes must not take
/// the clients' or the admin endpoint's share: the clients admitted up to the fitted
/// `--max-conns` are all served, every byte checked, the ones past it are shed at once and
/// counted, and `/healthz` answers.
#[test]
fn probes_to_hanging_backends_leave_clients_and_the_admin_their_descriptors() {
    const HANGING: usize = 300;
    const CLIENTS: usize = 200;
    let good = [Backend::start(1, echo()), Backend::start(2, echo())];
    let hanging = HangingPort::new();
    let file = Scratch::new("hanging-backends");
    let lines: String = (0..HANGING)
        .map(|i| {
            format!(
                "127.1.{}.{}:{},backup\n",
                i / 200,
                i % 200 + 1,
                hanging.port
            )
        })
        .collect();
    std::fs::write(&file, lines).expect("write the backends file");
    let tcplb = Tcplb::start_with_nofile(
        &[
            &good[0].arg(),
            &good[1].arg(),
            "--backends-file",
            &file.arg(),
            "--max-conns",
            "160",
            "--health-interval",
            "100ms",
            "--connect-timeout",
            "10s",
            "--admin",
            "127.0.0.1:0",
        ],
        400,
    );
    let fitted: usize = tcplb
        .wait_for_log("using --max-conns ")
        .split("using --max-conns ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the fitted --max-conns");
    assert!(fitted < CLIENTS, "{fitted}");
    wait_until(
        || hanging.connects_hanging() >= 32,
        || format!("{} probes hang", hanging.connects_hanging()),
    );

    // One client after another, each held open: each is served (its byte comes back) or
    // shed (closed) at once.
    let mut admitted = Vec::new();
    let mut shed = 0;
    for i in 0..CLIENTS {
        // A shed client is reset at once: on a busy machine the reset can come before
        // connect() returns (the handshake was done, the socket closed by the time the
        // caller wakes), and connect() reports it.
        let mut stream = match TcpStream::connect(tcplb.addr) {
            Ok(stream) => stream,
            Err(e) if is_peer_end(&e) => {
                shed += 1;
                continue;
            }
            Err(e) => panic!("client {i} could not connect: {e}"),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut b = [0u8; 1];
        let outcome = stream
            .write_all(&[i as u8])
            .and_then(|()| stream.read(&mut b));
        match outcome {
            Ok(1) => {
                assert_eq!(b[0], i as u8);
                admitted.push(stream);
            }
            Ok(_) => shed += 1,
            Err(e) if is_peer_end(&e) => shed += 1,
            Err(e) => panic!("client {i} was neither served nor shed: {e}"),
        }
    }
    assert_eq!(
        (admitted.len(), shed),
        (fitted, CLIENTS - fitted),
        "(served, closed) of {CLIENTS} clients with --max-conns {fitted}"
    );
    assert_eq!(tcplb.admin_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(
        metric(&tcplb, "tcplb_connections_shed_total{reason=\"max_conns\"}"),
        (CLIENTS - fitted) as f64
    );
    for (i, stream) in admitted.into_iter().enumerate() {
        let data = pattern(i as u64, 50_000);
        assert_eq!(
            hash(&echo_through(stream, &data)),
            hash(&data),
            "client {i}"
        );
    }
    assert_eq!(
        tcplb.count_logs("Too many open files"),
        0,
        "{:?}",
        tcplb.logs()
    );
}
