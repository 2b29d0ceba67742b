//! The kernel fast path (`--bpf-redirect`) through the real binary. By default it stays off
//! (the kernels tested can pass a segment up twice: docs/fastpath.md): tcplb says so and
//! serves in user space. Run anyway (`TCPLB_BPF_REDIRECT_UNSAFE=1`), bytes the kernel
//! moves socket to socket arrive whole and in order and are counted exactly, and a session
//! the kernel moves is not idle while bytes flow; each such test checks that the fast path
//! engaged (`tcplb_fast_path_sessions_total`, and bytes the kernel moved that tcplb never
//! read). Its bound is set high there, so no byte takes the kernel's defective pass path.
//!
//! Where the kernel cannot load the program (no privilege, no sockmap), those tests say so
//! and pass without running: the same binary then runs in user space, which the rest of
//! the suite covers.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Whether this machine lets a process load the fast path (asked the same way tcplb does).
fn kernel_allows() -> bool {
    match tcplb::bpf::FastPath::load(2, 256 * 1024) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: the kernel fast path cannot load here: {e}");
            false
        }
    }
}

/// tcplb in front of `backend` with the fast path run anyway, its bound above anything a
/// test keeps in flight (nothing is passed up but ends of stream).
fn start(backend: &Backend, extra: &[&str]) -> Tcplb {
    let arg = backend.arg();
    let mut args = vec![
        arg.as_str(),
        "--admin",
        "127.0.0.1:0",
        "--bpf-redirect",
        "--bpf-redirect-bound",
        "64m",
    ];
    args.extend_from_slice(extra);
    Tcplb::start_with(&args, |command| {
        command.env("TCPLB_BPF_REDIRECT_UNSAFE", "1");
    })
}

#[test]
fn by_default_the_fast_path_stays_off_and_says_why() {
    let backend = Backend::start(1, echo());
    let arg = backend.arg();
    let tcplb = Tcplb::start(&[&arg, "--admin", "127.0.0.1:0", "--bpf-redirect"]);
    let line = tcplb.wait_for_log("bpf-redirect: the kernel fast path stays off");
    assert!(line.contains("docs/fastpath.md"), "{line}");
    let mut client = TcpStream::connect(tcplb.addr).expect("connect");
    for n in 0..8u64 {
        echo_piece(&mut client, &pattern(n, 10_000)).expect("echo");
    }
    finish_echo(client);
    wait_sessions_ended(&tcplb);
    assert_eq!(metric(&tcplb, "tcplb_fast_path_sessions_total", &[]), 0);
    assert_eq!(
        metric(
            &tcplb,
            "tcplb_backend_bytes_total",
            &[("direction", "sent")]
        ),
        80_000
    );
}

fn metric(tcplb: &Tcplb, name: &str, labels: &[(&str, &str)]) -> u64 {
    tcplb.metrics().get(name, labels) as u64
}

/// Waits until tcplb has ended every session (and so counted the kernel's bytes).
fn wait_sessions_ended(tcplb: &Tcplb) {
    wait_until(
        || metric(tcplb, "tcplb_sessions_active", &[]) == 0,
        || "a session did not end".to_string(),
    );
}

#[test]
fn bytes_the_kernel_moves_arrive_whole_and_are_counted_exactly() {
    if !kernel_allows() {
        return;
    }
    let backend = Backend::start(1, echo());
    let tcplb = start(&backend, &[]);
    let mut client = TcpStream::connect(tcplb.addr).expect("connect");
    let mut total = 0u64;
    // Request/response pieces of many sizes, each checked byte for byte.
    for n in 0..64u64 {
        let piece = pattern(n, 1 + (n as usize * 7919) % 150_000);
        echo_piece(&mut client, &piece).expect("echo");
        total += piece.len() as u64;
    }
    assert_eq!(
        metric(&tcplb, "tcplb_fast_path_sessions_total", &[]),
        1,
        "the session was handed to the kernel"
    );
    // Then 32 MiB at once, written while it is read back.
    let big = pattern(99, 32 * MIB as usize);
    let expected = hash(&big);
    let mut writer = client.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&big).expect("write"));
    let mut back = vec![0u8; 32 * MIB as usize];
    client.read_exact(&mut back).expect("read back");
    sender.join().expect("sender");
    assert_eq!(hash(&back), expected, "32 MiB came back changed");
    total += 32 * MIB;
    // The client's half-close is passed on after the bytes; the backend's FIN comes back.
    finish_echo(client);
    wait_sessions_ended(&tcplb);
    let kernel = metric(
        &tcplb,
        "tcplb_fast_path_bytes_total",
        &[("direction", "sent")],
    );
    assert!(kernel > 0, "the kernel moved none of the bytes");
    for direction in ["sent", "received"] {
        assert_eq!(
            metric(
                &tcplb,
                "tcplb_backend_bytes_total",
                &[("direction", direction)]
            ),
            total,
            "{direction}: kernel and user-space bytes add up to exactly what crossed"
        );
    }
    eprintln!("{kernel} of {total} bytes to the backend moved by the kernel");
}

/// The stalled client: the backend streams 1 GiB, the client reads a little and
/// then stops. Without a bound the kernel's redirect would take the whole GiB into kernel
/// memory; with it the backend is held back as on the buffer path (this part holds), and
/// once the client reads again every byte should arrive, in order. Ignored: on 6.18 the
/// stream comes out a segment too long in about 3 runs of 8 — the kernel's pass path
/// (`src/bpf/tests.rs`, the_kernels_pass_path_delivers_each_segment_once) — which is why
/// the fast path stays off. Run it by hand on a new kernel.
#[test]
#[ignore]
fn a_client_that_stops_reading_holds_its_backend_back_and_loses_nothing() {
    if !kernel_allows() {
        return;
    }
    const LEN: u64 = 1 << 30;
    let backend = Backend::start(1, streamer(7, LEN));
    let tcplb = start(&backend, &["--bpf-redirect-bound", "256k"]);
    let memory_before = meminfo();
    let mut client = TcpStream::connect(tcplb.addr).expect("connect");
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    while read < 4 * MIB {
        let n = client.read(&mut buf).expect("read");
        assert!(n > 0, "the stream ended early");
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    assert_eq!(metric(&tcplb, "tcplb_fast_path_sessions_total", &[]), 1);
    // The client stops reading: the backend must come to a stop well short of the GiB.
    let held = wait_steady(|| backend.counter.load(Ordering::SeqCst));
    let memory_stalled = meminfo();
    let pinned = memory_before
        .available
        .saturating_sub(memory_stalled.available);
    eprintln!(
        "stalled: the backend wrote {} MiB of 1024; MemAvailable fell {} MiB, Slab {} -> {} MiB",
        held / MIB,
        pinned / MIB,
        memory_before.slab / MIB,
        memory_stalled.slab / MIB
    );
    // Socket buffers on four sockets (loopback autotunes them to a few MiB each) plus the
    // bound: a few tens of MiB, where the unbounded redirect took the whole GiB.
    assert!(held < read + 96 * MIB, "the backend got {held} bytes out");
    assert!(pinned < 256 * MIB, "kernel memory pinned: {pinned} bytes");
    // Reading again: every byte, in order.
    loop {
        let n = client.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    assert_eq!((read, hasher.digest()), stream_digest(7, LEN));
    drop(client);
    wait_sessions_ended(&tcplb);
    let kernel = metric(
        &tcplb,
        "tcplb_fast_path_bytes_total",
        &[("direction", "received")],
    );
    assert!(kernel > 0, "the kernel moved none of the stream");
    assert_eq!(
        metric(
            &tcplb,
            "tcplb_backend_bytes_total",
            &[("direction", "received")]
        ),
        LEN
    );
    eprintln!("{} MiB of 1024 moved by the kernel", kernel / MIB);
}

#[test]
fn a_session_the_kernel_moves_is_not_idle_while_bytes_flow() {
    if !kernel_allows() {
        return;
    }
    let backend = Backend::start(1, echo());
    let tcplb = start(&backend, &["--idle-timeout", "1s"]);
    let mut client = TcpStream::connect(tcplb.addr).expect("connect");
    // 2.5 s of round trips, every 150 ms: tcplb's loop sees none of them.
    let started = Instant::now();
    let mut n = 0u64;
    let mut quiet = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        thread::sleep(Duration::from_millis(150));
        echo_piece(&mut client, &pattern(n, 100)).expect("the session was cut while busy");
        quiet = Instant::now();
        n += 1;
    }
    assert_eq!(metric(&tcplb, "tcplb_fast_path_sessions_total", &[]), 1);
    // Then nothing: the idle timeout closes it (a FIN: nothing was in flight).
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("a clean close");
    assert!(rest.is_empty());
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(990) && waited < Duration::from_secs(4),
        "closed {waited:?} after the last byte"
    );
    wait_sessions_ended(&tcplb);
    assert!(
        metric(
            &tcplb,
            "tcplb_fast_path_bytes_total",
            &[("direction", "sent")]
        ) > 0
    );
    let _ = client.shutdown(Shutdown::Both);
}

/// Polls `value` until it has not changed for half a second; returns it.
fn wait_steady(value: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut last = value();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "never came to a stop: {last}");
        thread::sleep(Duration::from_millis(50));
        let now = value();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

struct Meminfo {
    available: u64,
    slab: u64,
}

fn meminfo() -> Meminfo {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    Meminfo {
        available: field("MemAvailable:"),
        slab: field("Slab:"),
    }
}
