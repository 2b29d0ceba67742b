//! The admin endpoint under load and abuse, through the real binary: a large fleet scraped by
//! many slow clients (memory stays bounded, proxied traffic keeps its latency), idle
//! connections that would lock probes out, partial and absolute-form requests, and
//! `/healthz` while draining.

mod common;

use common::*;
use socket2::{Domain, Socket, Type};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];

/// tcplb with the admin endpoint on, in front of one echo backend.
fn start_with_echo() -> (std::sync::Arc<Backend>, Tcplb) {
    let backend = Backend::start(1, echo());
    let mut args = vec![backend.arg()];
    args.extend(ADMIN.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tcplb = Tcplb::start(&args);
    (backend, tcplb)
}

/// Pings 1 KiB pieces through an echo session, checking every byte, until `stop`; returns
/// the longest round trip. Signals `started` after the first one.
fn longest_round_trip(tcplb: &Tcplb, stop: &AtomicBool, started: &mpsc::Sender<()>) -> Duration {
    let mut stream = tcplb.connect();
    let mut longest = Duration::ZERO;
    for round in 0.. {
        let piece = pattern(round, 1024);
        let sent = Instant::now();
        echo_piece(&mut stream, &piece).expect("echo through tcplb");
        longest = longest.max(sent.elapsed());
        if round == 0 {
            started.send(()).expect("started");
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    finish_echo(stream);
    longest
}

/// Sends `GET /metrics` from a socket with a small receive buffer, so that most of the
/// answer stays on tcplb's side while the client does not read.
fn slow_scraper(admin: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&admin.into()).expect("connect to admin");
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: tcplb\r\n\r\n")
        .expect("send request");
    stream
}

/// Reads only the status line: the answer has been rendered (or shared).
fn expect_ok_status(stream: &mut TcpStream) {
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).expect("status line");
    assert_eq!(
        &status,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&status)
    );
}

#[test]
fn slow_scrapers_of_a_large_fleet_share_one_rendering_and_traffic_flows_on() {
    const FLEET: usize = 20_000;
    const SCRAPERS: usize = 32;
    // Backups on addresses nothing listens on: never used while the echo backend is up, and
    // no health checks, so they cost nothing but their lines in /metrics.
    let file = Scratch::new("large-fleet");
    let lines: String = (0..FLEET)
        .map(|i| format!("127.1.{}.{}:9,backup\n", i / 250, i % 250 + 1))
        .collect();
    std::fs::write(&file, lines).expect("write the backends file");
    let backend = Backend::start(1, echo());
    let tcplb = Tcplb::start(&[
        &backend.arg(),
        "--backends-file",
        &file.arg(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = tcplb.admin_addr();

    // One whole scrape: the size of a rendering.
    let whole = http_exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(whole.status, 200);
    let size = whole.body.len();
    assert!(size > FLEET * 300, "a rendering is {size} bytes");
    let parsed = Exposition::parse(&whole.text()).expect("parses");
    let listed = parsed
        .samples
        .iter()
        .filter(|s| s.name == "tcplb_backend_active_connections")
        .count();
    assert_eq!(listed, FLEET + 1, "every backend is listed");
    let rss_before = tcplb.rss_kib();

    let stop = AtomicBool::new(false);
    let (started_tx, started_rx) = mpsc::channel();
    let (longest, scrapers, served_within, rss_during) = thread::scope(|s| {
        let pinger = s.spawn(|| longest_round_trip(&tcplb, &stop, &started_tx));
        started_rx.recv_timeout(PATIENCE).expect("echo started");
        let first = Instant::now();
        // All at once, as a fleet of Prometheus servers would.
        let mut scrapers: Vec<TcpStream> = (0..SCRAPERS).map(|_| slow_scraper(admin)).collect();
        scrapers.iter_mut().for_each(expect_ok_status);
        let served_within = first.elapsed();
        let rss_during = tcplb.rss_kib();
        stop.store(true, Ordering::SeqCst);
        let longest = pinger.join().expect("pinger");
        (longest, scrapers, served_within, rss_during)
    });
    let grown_kib = rss_during.saturating_sub(rss_before);
    eprintln!(
        "{SCRAPERS} slow scrapers of {size} bytes each, served within {served_within:?}: \
         RSS {rss_before} KiB -> {rss_during} KiB; longest echo round trip {longest:?}"
    );
    // One rendering for all of them (two if serving them straddled the share window), not
    // one each: the old code held 32 copies (some 240 MB here).
    assert!(
        grown_kib < 3 * size as u64 / 1024,
        "RSS grew by {grown_kib} KiB with {SCRAPERS} slow scrapers of {size} bytes"
    );
    assert!(
        longest < Duration::from_millis(250),
        "an echo round trip took {longest:?} while the scrapers were served"
    );

    // Every scraper then gets the whole answer, byte for byte, and the answers are copies of
    // as many renderings as the time they were served in allows (one per second).
    let bodies: Vec<(usize, u64)> = thread::scope(|s| {
        let readers: Vec<_> = scrapers
            .into_iter()
            .map(|mut stream| {
                s.spawn(move || {
                    // Read fast now (a connection lives at most 10 s, and a busy machine
                    // moves 32 x 7.5 MB slowly through 4 KiB windows).
                    let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(1 << 20);
                    let mut rest = Vec::new();
                    stream.read_to_end(&mut rest).expect("read to EOF");
                    let text = String::from_utf8(rest).expect("UTF-8");
                    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.parse().ok())
                        .expect("Content-Length");
                    assert_eq!(body.len(), length, "the whole body arrives");
                    Exposition::parse(body).expect("the body parses");
                    (length, hash(body.as_bytes()))
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    let renderings: BTreeSet<u64> = bodies.iter().map(|(_, h)| *h).collect();
    assert!(
        renderings.len() as u64 <= 1 + served_within.as_secs(),
        "{} renderings for {SCRAPERS} scrapers served within {served_within:?}",
        renderings.len()
    );
}

#[test]
fn idle_admin_connections_cannot_lock_a_probe_out() {
    let (_backend, tcplb) = start_with_echo();
    let admin = tcplb.admin_addr();
    // More idle connections than there are admin slots: each new one makes room by closing
    // the oldest idle one.
    let idle: Vec<(TcpStream, Instant)> = (0..40)
        .map(|_| {
            let stream = TcpStream::connect(admin).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            (stream, Instant::now())
        })
        .collect();
    for round in 0..5 {
        let asked = Instant::now();
        let r = http_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok\n"),
            "round {round}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "round {round}: the probe took {:?}",
            asked.elapsed()
        );
    }
    // Every idle connection is closed, without an answer, within the request deadline
    // (2 s), not the whole admin timeout (10 s).
    for (i, (mut stream, opened)) in idle.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("idle connection {i}: expected a close, got {other:?}"),
        }
        assert!(
            opened.elapsed() < Duration::from_secs(4),
            "idle connection {i} was closed only after {:?}",
            opened.elapsed()
        );
    }
}

#[test]
fn a_request_cut_short_gets_400_and_a_stalled_one_408() {
    let (_backend, tcplb) = start_with_echo();
    let admin = tcplb.admin_addr();
    let partial = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";

    // Cut short by the client's EOF: 400 at once.
    let r = http_exchange(admin, partial, true);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("incomplete"), "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));

    // Never finished: 408 when the request deadline (2 s) passes, then a clean close.
    let sent = Instant::now();
    let r = http_exchange(admin, partial, false);
    let waited = sent.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "408 after {waited:?}"
    );

    // A connection that sent nothing is closed without an answer.
    let mut silent = TcpStream::connect(admin).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).expect("closed cleanly");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // And the endpoint still answers.
    assert_eq!(tcplb.admin_get("/healthz"), (200, "ok\n".to_string()));
}

#[test]
fn absolute_form_requests_are_routed_by_their_path() {
    let (backend, tcplb) = start_with_echo();
    let admin = tcplb.admin_addr();
    let get = |target: &str| {
        http_exchange(
            admin,
            format!("GET {target} HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes(),
            false,
        )
    };
    let r = get(&format!("http://{admin}/metrics"));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = Exposition::parse(&r.text()).expect("parses");
    assert_eq!(
        m.get("tcplb_backend_up", &[("backend", &backend.arg())]),
        1.0
    );
    let r = get(&format!("http://{admin}/healthz?probe=1"));
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = get("HTTP://tcplb/backends");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&backend.arg()), "{}", r.text());
    assert_eq!(get("http://tcplb/nope").status, 404);
    // No path is `/`: the dashboard's page, whatever the query says.
    for target in ["http://tcplb", "http://tcplb?/metrics"] {
        let r = get(target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(
            r.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{target}"
        );
    }
}

#[test]
fn healthz_says_draining_from_the_moment_a_drain_starts() {
    let (_backend, tcplb) = start_with_echo();
    assert_eq!(tcplb.admin_get("/healthz"), (200, "ok\n".to_string()));
    // A live session keeps the drain going.
    let mut session = tcplb.connect();
    echo_piece(&mut session, &pattern(7, 4096)).expect("echo");
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log("draining 1 sessions");
    // New clients are refused, and readiness says so, while the admin endpoint serves on.
    wait_refused(tcplb.addr);
    assert_eq!(tcplb.admin_get("/healthz"), (503, "draining\n".to_string()));
    let r = http_exchange(tcplb.admin_addr(), b"HEAD /healthz HTTP/1.1\r\n\r\n", false);
    assert_eq!((r.status, r.header("content-length")), (503, Some("9")));
    assert_eq!(tcplb.metrics().get("tcplb_sessions_active", &[]), 1.0);
    // The session still flows, and its end ends the drain.
    echo_piece(&mut session, &pattern(8, 4096)).expect("echo while draining");
    finish_echo(session);
    let mut tcplb = tcplb;
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
}
