//! The splice path through the real binary (Linux): bulk flows move socket → kernel pipe →
//! socket, and every promise of the buffer path holds on it. Each test checks that splicing
//! engaged (`tcplb_spliced_bytes_total`), so none passes by quietly taking buffers.
//!
//! Bytes are checked by length and hash of a non-repeating stream ([`Source`]), so a byte
//! lost, doubled or moved anywhere in hundreds of MiB is caught.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];
const MIB: u64 = 1 << 20;

/// tcplb in front of `backend`, with the admin endpoint, plus `extra` options.
fn start(backend: &Backend, extra: &[&str]) -> Tcplb {
    let arg = backend.arg();
    let mut args = vec![arg.as_str(), ADMIN[0], ADMIN[1]];
    args.extend_from_slice(extra);
    Tcplb::start(&args)
}

/// A non-repeating byte stream (xorshift), different per seed: what a test sends.
struct Source {
    state: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    len: u64,
}

impl Source {
    fn new(seed: u64) -> Source {
        Source {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            len: 0,
        }
    }

    /// Fills `buf` (a multiple of 8 bytes) with the next bytes.
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            word.copy_from_slice(&self.state.to_le_bytes());
        }
        self.hasher.update(buf);
        self.len += buf.len() as u64;
    }

    /// Writes `len` bytes (a multiple of 8) of the stream to `out`.
    fn send(&mut self, out: &mut impl Write, len: u64) -> std::io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// (length, hash) of everything produced so far: what `read_digest` must see.
    fn digest(&self) -> (u64, u64) {
        (self.len, self.hasher.digest())
    }

    /// (length, hash) of the first `len` bytes of stream `seed`.
    fn digest_of(seed: u64, len: u64) -> (u64, u64) {
        let mut source = Source::new(seed);
        source.send(&mut std::io::sink(), len).expect("sink");
        source.digest()
    }
}

/// Reads exactly `len` bytes and returns their (length, hash).
fn read_exact_digest(stream: &mut TcpStream, len: u64) -> (u64, u64) {
    let mut taken = stream.take(len);
    let got = read_digest(&mut taken).expect("read");
    assert_eq!(got.0, len, "short read");
    got
}

/// A backend that waits for one byte from the client, then streams `len` bytes of stream
/// `seed` and closes (counting what it wrote in `counter`). Never reads again, so a reset
/// from it is a choice of the test, not a side effect.
fn go_streamer(seed: u64, len: u64) -> Handler {
    Arc::new(move |mut stream: TcpStream, me: &Backend| {
        let mut go = [0u8; 1];
        if stream.read_exact(&mut go).is_err() {
            return;
        }
        let mut source = Source::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            source.fill(&mut buf[..n]);
            if stream.write_all(&buf[..n]).is_err() {
                return;
            }
            me.counter.fetch_add(n as u64, Ordering::SeqCst);
            left -= n as u64;
        }
    })
}

/// A backend whose first connection gets `first` and every later one `then`.
fn first_then(first: Handler, then: Handler) -> Handler {
    Arc::new(move |stream: TcpStream, me: &Backend| {
        if me.accepted.load(Ordering::SeqCst) == 1 {
            first(stream, me)
        } else {
            then(stream, me)
        }
    })
}

/// The spliced byte counters: (sent to backends, received from backends).
fn spliced(tcplb: &Tcplb) -> (f64, f64) {
    let m = tcplb.metrics();
    (
        m.get("tcplb_spliced_bytes_total", &[("direction", "sent")]),
        m.get("tcplb_spliced_bytes_total", &[("direction", "received")]),
    )
}

/// Waits until bytes have been spliced toward the backend (`up`) or the client. (Counters
/// are bumped once a turn's work is done, a moment after the bytes are on their way.)
fn wait_spliced(tcplb: &Tcplb, up: bool) {
    wait_until(
        || {
            let (sent, received) = spliced(tcplb);
            if up { sent > 0.0 } else { received > 0.0 }
        },
        || format!("nothing spliced: {:?}", spliced(tcplb)),
    );
}

/// The spliced counters once the backend's byte counters have reached `sent` and
/// `received` (counted in the same turn as the bytes they count).
fn spliced_once_counted(tcplb: &Tcplb, backend: &Backend, sent: u64, received: u64) -> (f64, f64) {
    let label = backend.arg();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = tcplb.metrics();
        let total = |direction| {
            m.get(
                "tcplb_backend_bytes_total",
                &[("backend", &label), ("direction", direction)],
            )
        };
        let totals = (total("sent"), total("received"));
        if totals == (sent as f64, received as f64) {
            return (
                m.get("tcplb_spliced_bytes_total", &[("direction", "sent")]),
                m.get("tcplb_spliced_bytes_total", &[("direction", "received")]),
            );
        }
        assert!(
            Instant::now() < deadline,
            "backend bytes {totals:?}, waiting for {sent} and {received}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Reads `limit` bytes (or to EOF) into `hasher`; returns how many.
fn read_hashing(
    stream: &mut TcpStream,
    hasher: &mut xxhash_rust::xxh3::Xxh3,
    limit: Option<u64>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let want = limit.map_or(buf.len() as u64, |l| (l - got).min(buf.len() as u64));
        if want == 0 {
            return Ok(got);
        }
        match stream.read(&mut buf[..want as usize]) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                hasher.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Pipes in use and pool buffers in use, from one scrape.
fn held(tcplb: &Tcplb) -> (f64, f64) {
    let m = tcplb.metrics();
    (
        m.get("tcplb_pipe_pool_pipes", &[("state", "used")]),
        m.get("tcplb_buffer_pool_buffers", &[("state", "used")]),
    )
}

/// Waits until no session is open and nothing is held, then checks the pipe pool is whole.
fn wait_all_back(tcplb: &Tcplb) {
    wait_until(
        || {
            let m = tcplb.metrics();
            m.get("tcplb_sessions_active", &[]) == 0.0
                && m.get("tcplb_pipe_pool_pipes", &[("state", "used")]) == 0.0
                && m.get("tcplb_buffer_pool_buffers", &[("state", "used")]) == 0.0
        },
        || format!("sessions, pipes or buffers still held: {:?}", held(tcplb)),
    );
}

/// Brings a download whose client does not read to a standstill with its bytes waiting in
/// a pipe. (It may stop with them in buffers instead, if its last read found the socket
/// nearly empty and went back to the buffer path: then the client reads a little, and the
/// stream, bulk again, stalls again.)
fn stall_in_a_pipe(tcplb: &Tcplb, backend: &Backend, stream: &mut TcpStream) {
    for _ in 0..10 {
        backend.wait_stalled();
        if held(tcplb) == (1.0, 0.0) {
            return;
        }
        read_exact_digest(stream, 4 * MIB);
    }
    panic!("the stalled stream never held a pipe: {:?}", held(tcplb));
}

/// One `key=value` of an access log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn bulk_both_ways_at_once_is_byte_exact_and_counted_exactly() {
    const LEN: u64 = 256 * MIB;
    let backend = Backend::start(1, echo());
    let log = Scratch::new("splice-both-ways.log");
    let log_arg = log.arg();
    let tcplb = start(&backend, &["--access-log", &log_arg]);
    let m = tcplb.metrics();
    assert_eq!(
        (
            m.get("tcplb_pipe_pool_pipes", &[("state", "free")]),
            m.get("tcplb_pipe_pool_pipes", &[("state", "used")])
        ),
        (256.0, 0.0),
        "the default pool, nothing made or held yet"
    );

    // 256 MiB up and the same 256 MiB echoed down, both flowing at once.
    let stream = tcplb.connect();
    let mut reader = stream.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let mut stream = stream;
        let mut source = Source::new(1);
        source.send(&mut stream, LEN).expect("send");
        stream.shutdown(Shutdown::Write).expect("half-close");
        source.digest()
    });
    let got = read_digest(&mut reader).expect("read the echo");
    let sent = writer.join().expect("writer");
    assert_eq!(got, sent, "every byte back, in order");
    assert_eq!(sent.0, LEN);

    let lines = wait_for_lines(&log, 1);
    assert_eq!(field(&lines[0], "bytes_up"), LEN.to_string());
    assert_eq!(field(&lines[0], "bytes_down"), LEN.to_string());
    assert_eq!(field(&lines[0], "end"), "client_fin");
    let m = tcplb.metrics();
    let label = backend.arg();
    for direction in ["sent", "received"] {
        assert_eq!(
            m.get(
                "tcplb_backend_bytes_total",
                &[("backend", &label), ("direction", direction)]
            ),
            LEN as f64,
            "bytes {direction}: spliced bytes count like any others"
        );
        let spliced = m.get("tcplb_spliced_bytes_total", &[("direction", direction)]);
        assert!(
            spliced > (LEN / 2) as f64 && spliced <= LEN as f64,
            "{spliced} of {LEN} bytes {direction} were spliced"
        );
    }
    wait_all_back(&tcplb);
}

#[test]
fn half_closes_pass_on_after_every_spliced_byte_both_ways() {
    // The backend streams 32 MiB and half-closes first, then takes the client's stream to
    // its end and reports what it got.
    let (report, reports) = mpsc::channel();
    let report = Mutex::new(report);
    let backend = Backend::start(
        1,
        Arc::new(move |mut stream: TcpStream, _: &Backend| {
            let mut source = Source::new(2);
            if source.send(&mut stream, 32 * MIB).is_err() {
                return;
            }
            if stream.shutdown(Shutdown::Write).is_err() {
                return;
            }
            let got = read_digest(&mut stream);
            let _ = report.lock().expect("report").send(got.ok());
        }),
    );
    let log = Scratch::new("splice-half-close.log");
    let log_arg = log.arg();
    let tcplb = start(&backend, &["--access-log", &log_arg]);
    let mut stream = tcplb.connect();

    // Down: every byte, then the backend's FIN (EOF) and not a byte more.
    assert_eq!(
        read_digest(&mut stream).expect("read to the backend's FIN"),
        Source::digest_of(2, 32 * MIB)
    );
    // Up still flows after that FIN: 32 MiB, then ours.
    let mut source = Source::new(3);
    source
        .send(&mut stream, 32 * MIB)
        .expect("send after their FIN");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let got = reports
        .recv_timeout(PATIENCE)
        .expect("the backend reports")
        .expect("the backend read to our FIN");
    assert_eq!(got, source.digest());
    // Then tcplb closes our side too.
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).expect("EOF"), 0);

    let lines = wait_for_lines(&log, 1);
    assert_eq!(field(&lines[0], "end"), "backend_fin");
    let (up, down) = spliced(&tcplb);
    assert!(up > 0.0 && down > 0.0, "spliced both ways: {up}, {down}");

    // And the client half-closing first: its whole stream, then the backend's answer.
    let backend = Backend::start(2, digest_after_eof());
    let tcplb = start(&backend, &[]);
    let mut stream = tcplb.connect();
    let mut source = Source::new(4);
    source.send(&mut stream, 32 * MIB).expect("send");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("reply after EOF");
    let (len, hash) = source.digest();
    assert_eq!(reply, format!("{len} {hash}\n"));
    assert!(spliced(&tcplb).0 > 0.0);
}

#[test]
fn a_backend_reset_after_spliced_bytes_reaches_the_client_as_a_reset() {
    // Streams 16 MiB, waits for the client's "ok", then resets.
    let backend = Backend::start(
        1,
        Arc::new(|mut stream: TcpStream, _: &Backend| {
            if Source::new(5).send(&mut stream, 16 * MIB).is_err() {
                return;
            }
            let mut ok = [0u8; 2];
            if stream.read_exact(&mut ok).is_ok() {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
        }),
    );
    let tcplb = start(&backend, &[]);
    for _ in 0..3 {
        let mut stream = tcplb.connect();
        assert_eq!(
            read_exact_digest(&mut stream, 16 * MIB),
            Source::digest_of(5, 16 * MIB)
        );
        stream.write_all(b"ok").expect("ok");
        let mut rest = [0u8; 16];
        assert_eq!(
            stream.read(&mut rest).map_err(|e| e.kind()),
            Err(ErrorKind::ConnectionReset),
            "the backend's reset reaches the client as a reset"
        );
    }
    assert!(spliced(&tcplb).1 > 0.0);
    wait_all_back(&tcplb);
}

#[test]
fn a_client_reset_mid_upload_resets_the_backend() {
    // Reads to the end: +1 for a clean EOF, +1000 for an error; counts bytes in `counter`.
    let ends = Arc::new(AtomicU64::new(0));
    let backend_ends = Arc::clone(&ends);
    let backend = Backend::start(
        1,
        Arc::new(move |mut stream: TcpStream, me: &Backend| {
            let mut buf = vec![0u8; 256 * 1024];
            let ending = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break 1,
                    Ok(n) => {
                        me.counter.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(_) => break 1000,
                }
            };
            backend_ends.fetch_add(ending, Ordering::SeqCst);
        }),
    );
    let tcplb = start(&backend, &[]);
    let mut stream = tcplb.connect();
    Source::new(6).send(&mut stream, 16 * MIB).expect("send");
    wait_until(
        || backend.counter.load(Ordering::SeqCst) == 16 * MIB,
        || "the backend did not get the upload".to_string(),
    );
    wait_spliced(&tcplb, true);
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(stream);
    backend.wait_active(0);
    assert_eq!(
        ends.load(Ordering::SeqCst),
        1000,
        "the backend saw a reset, not a clean end"
    );
    wait_all_back(&tcplb);
}

#[test]
fn a_backend_reset_while_a_pipe_holds_bytes_is_passed_on() {
    let backend = Backend::start(1, go_streamer(7, 1 << 30));
    let tcplb = start(&backend, &[]);
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    read_exact_digest(&mut stream, 16 * MIB);
    wait_spliced(&tcplb, false);
    // The client stops reading: the path fills up, bytes wait in tcplb.
    backend.wait_stalled();
    // The backend crashes. Its reset goes out when the handler closes the socket, a
    // moment after kill()'s shutdown queued a FIN behind the stalled bytes; wait for that,
    // or a client quick to drain those bytes could meet the FIN before the reset.
    backend.kill();
    backend.wait_active(0);
    let outcome = read_digest(&mut stream);
    assert_eq!(
        outcome.map_err(|e| e.kind()).map(|(len, _)| len),
        Err(ErrorKind::ConnectionReset),
        "a stream cut by the backend's reset must end in a reset"
    );
    wait_all_back(&tcplb);
}

#[test]
fn a_pipe_that_held_bytes_when_its_session_was_cut_is_replaced_not_reused() {
    // One pipe in all: a session is cut while its pipe holds bytes, then another follows.
    let backend = Backend::start(
        1,
        first_then(go_streamer(9, 1 << 30), go_streamer(10, 64 * MIB)),
    );
    let tcplb = start(&backend, &["--pipes", "1", "--workers", "1"]);
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    stall_in_a_pipe(&tcplb, &backend, &mut stream);
    // The client resets: the session ends with bytes still in the pipe.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(stream);
    wait_all_back(&tcplb);

    // The next session's bytes go through a fresh pipe, and only its own bytes.
    let before = spliced(&tcplb).1;
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    assert_eq!(
        read_digest(&mut stream).expect("read"),
        Source::digest_of(10, 64 * MIB),
        "no stale byte from the last session's pipe"
    );
    drop(stream);
    wait_all_back(&tcplb);
    assert!(spliced(&tcplb).1 > before, "spliced through the fresh pipe");
}

#[test]
fn a_stalled_reader_holds_one_pipe_at_most_and_memory_stays_flat() {
    const LEN: u64 = 384 * MIB;
    let backend = Backend::start(1, go_streamer(11, LEN));
    let tcplb = start(&backend, &[]);
    let rss_before = tcplb.rss_kib();
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    // 16 MiB read, spliced; then the client stops reading.
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let first = read_hashing(&mut stream, &mut hasher, Some(16 * MIB)).expect("read");
    wait_spliced(&tcplb, false);
    backend.wait_stalled();
    let written = backend.counter.load(Ordering::SeqCst);
    assert!(
        written < LEN / 4,
        "the backend was not held back: {written} bytes out"
    );
    // What waits in tcplb is one pipe (at most 256 KiB), or, if the last read found the
    // socket nearly empty and went back to buffers, one read's worth of buffers.
    let (pipes, buffers) = held(&tcplb);
    assert!(
        (pipes, buffers) == (1.0, 0.0) || (pipes == 0.0 && buffers > 0.0 && buffers <= 4.0),
        "held: {pipes} pipes, {buffers} buffers"
    );
    let rss_stalled = tcplb.rss_kib();
    assert!(
        rss_stalled < rss_before + 2048,
        "tcplb grew from {rss_before} KiB to {rss_stalled} KiB while the client stalled"
    );

    let rest = read_hashing(&mut stream, &mut hasher, None).expect("read everything");
    assert_eq!((first + rest, hasher.digest()), Source::digest_of(11, LEN));
    assert!(tcplb.rss_kib() < rss_before + 2048);
    drop(stream);
    wait_all_back(&tcplb);
}

#[test]
fn concurrent_spliced_downloads_share_fairly() {
    const SESSIONS: usize = 6;
    const LEN: u64 = 64 * MIB;
    let backend = Backend::start(1, go_streamer(12, LEN));
    // One worker: the sessions share one event loop, which is what is being judged.
    let tcplb = start(&backend, &["--workers", "1"]);
    let mut streams: Vec<TcpStream> = (0..SESSIONS).map(|_| tcplb.connect()).collect();
    backend.wait_active(SESSIONS);
    let started = Instant::now();
    for stream in &mut streams {
        stream.write_all(b"g").expect("go");
    }
    let mut took: Vec<Duration> = thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                s.spawn(move || {
                    let got = read_digest(&mut stream).expect("read");
                    (got, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (got, took) = h.join().expect("reader");
                assert_eq!(got, Source::digest_of(12, LEN));
                took
            })
            .collect()
    });
    took.sort();
    let (median, slowest) = (took[SESSIONS / 2], took[SESSIONS - 1]);
    assert!(
        slowest.as_secs_f64() <= 1.5 * median.as_secs_f64(),
        "completion times {took:?}: the slowest took more than 1.5x the median"
    );
    wait_all_back(&tcplb);
    assert!(spliced(&tcplb).1 > (SESSIONS as u64 * LEN / 2) as f64);
}

#[test]
fn urgent_data_in_the_middle_of_spliced_streams_is_forwarded_in_place_both_ways() {
    // Takes the client's stream to its end, then answers with 8 MiB, an urgent byte, 8 MiB
    // and the digest of what it got.
    let backend = Backend::start(
        1,
        Arc::new(|mut stream: TcpStream, _: &Backend| {
            socket2::SockRef::from(&stream)
                .set_out_of_band_inline(true)
                .expect("oobinline");
            let Ok((len, hash)) = read_digest(&mut stream) else {
                return;
            };
            let mut source = Source::new(13);
            let _ = source.send(&mut stream, 8 * MIB);
            let _ = socket2::SockRef::from(&stream).send_out_of_band(b"y");
            let _ = source.send(&mut stream, 8 * MIB);
            let _ = stream.write_all(format!("{len} {hash}\n").as_bytes());
        }),
    );
    let tcplb = start(&backend, &[]);
    let mut stream = tcplb.connect();
    socket2::SockRef::from(&stream)
        .set_out_of_band_inline(true)
        .expect("oobinline");
    // Up: 8 MiB, an urgent byte, 8 MiB; hashed as one stream with the byte in its place.
    let mut sent = xxhash_rust::xxh3::Xxh3::new();
    let mut source = Source::new(14);
    let mut piece = vec![0u8; 8 * MIB as usize];
    source.fill(&mut piece);
    stream.write_all(&piece).expect("write");
    sent.update(&piece);
    socket2::SockRef::from(&stream)
        .send_out_of_band(b"B")
        .expect("urgent byte");
    sent.update(b"B");
    source.fill(&mut piece);
    stream.write_all(&piece).expect("write");
    sent.update(&piece);
    stream.shutdown(Shutdown::Write).expect("half-close");

    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("the answer");
    let split = 16 * MIB as usize + 1;
    assert!(got.len() > split, "short answer: {} bytes", got.len());
    let (stream_part, digest_line) = got.split_at(split);
    let mut expected = vec![0u8; 8 * MIB as usize];
    let mut answer = Source::new(13);
    answer.fill(&mut expected);
    let mut whole = expected.clone();
    whole.push(b'y');
    answer.fill(&mut expected);
    whole.extend_from_slice(&expected);
    assert!(
        stream_part == whole.as_slice(),
        "down: the urgent byte in its place"
    );
    assert_eq!(
        String::from_utf8_lossy(digest_line),
        format!("{} {}\n", split, sent.digest()),
        "up: the urgent byte in its place"
    );
    let (up, down) = spliced(&tcplb);
    assert!(up > 0.0 && down > 0.0, "spliced both ways: {up}, {down}");
}

#[test]
fn idle_spliced_sessions_hold_no_pipe_and_time_out_like_any_other() {
    let backend = Backend::start(1, echo());
    let tcplb = start(&backend, &["--idle-timeout", "1"]);
    // A bulk exchange, spliced, then silence.
    let mut stream = tcplb.connect();
    let stream_clone = stream.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let mut stream = stream_clone;
        let mut source = Source::new(15);
        source.send(&mut stream, 16 * MIB).expect("send");
        source.digest()
    });
    let got = read_exact_digest(&mut stream, 16 * MIB);
    assert_eq!(got, writer.join().expect("writer"));
    let silent_since = Instant::now();
    wait_spliced(&tcplb, true);
    wait_spliced(&tcplb, false);
    // Idle: open, but holding no pipe and no buffer.
    wait_until(
        || held(&tcplb) == (0.0, 0.0),
        || format!("an idle session holds {:?}", held(&tcplb)),
    );
    assert_eq!(tcplb.metrics().get("tcplb_sessions_active", &[]), 1.0);
    // Quiet (nothing in flight): closed with a FIN after the timeout.
    let mut rest = [0u8; 1];
    assert_eq!(
        stream.read(&mut rest).map_err(|e| e.kind()),
        Ok(0),
        "a quiet idle session ends with a clean EOF"
    );
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );

    // Stalled with bytes in a pipe: cut with a reset on both sides.
    let backend = Backend::start(2, go_streamer(16, 1 << 30));
    let tcplb = start(&backend, &["--idle-timeout", "1"]);
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    read_exact_digest(&mut stream, 16 * MIB);
    wait_spliced(&tcplb, false);
    backend.wait_stalled();
    backend.wait_active(0);
    assert_eq!(
        read_digest(&mut stream).map_err(|e| e.kind()).map(|d| d.0),
        Err(ErrorKind::ConnectionReset),
        "a stream cut by the idle timeout must end in a reset"
    );
    wait_all_back(&tcplb);
}

#[test]
fn a_drain_lets_a_spliced_download_finish_and_a_cut_one_ends_in_a_reset() {
    let backend = Backend::start(1, go_streamer(17, 256 * MIB));
    let mut tcplb = start(&backend, &[]);
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    read_exact_digest(&mut stream, 16 * MIB);
    wait_spliced(&tcplb, false);
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log("draining 1 sessions");
    // The rest of the stream still comes, whole.
    let (len, _) = read_digest(&mut stream).expect("read while draining");
    assert_eq!(len, 240 * MIB);
    drop(stream);
    assert_eq!(tcplb.wait_exit(Duration::from_secs(10)), Some(0));

    // A stalled download, bytes in its pipe, cut at the drain timeout.
    let backend = Backend::start(2, go_streamer(18, 1 << 30));
    let mut tcplb = start(&backend, &["--drain-timeout", "1"]);
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    read_exact_digest(&mut stream, 16 * MIB);
    wait_spliced(&tcplb, false);
    backend.wait_stalled();
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(Duration::from_secs(5)), Some(0));
    tcplb.wait_for_log("drain timeout (1s) reached");
    assert_eq!(
        read_digest(&mut stream).map_err(|e| e.kind()).map(|d| d.0),
        Err(ErrorKind::ConnectionReset),
        "a download cut at exit must end in a reset"
    );
}

/// Echoes `pieces` small messages of `size` bytes on an open session, one at a time.
fn small_exchanges(stream: &mut TcpStream, seed: u64, pieces: usize, size: usize) {
    for i in 0..pieces {
        echo_piece(stream, &pattern(seed + i as u64, size)).expect("echo");
    }
}

/// Sends `len` bytes of stream `seed` while reading the echo; checks every byte.
fn bulk_exchange(stream: &mut TcpStream, seed: u64, len: u64) {
    let mut writer = stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let mut source = Source::new(seed);
        source.send(&mut writer, len).expect("send");
        source.digest()
    });
    let got = read_exact_digest(stream, len);
    assert_eq!(got, sender.join().expect("sender"));
}

#[test]
fn one_session_switches_to_splice_for_bulk_and_back_for_small_exchanges_both_ways() {
    let backend = Backend::start(1, echo());
    let tcplb = start(&backend, &[]);
    let mut stream = tcplb.connect();
    // Bytes each way so far (an echo: the same both ways).
    let mut total = 0;
    let mut counted = |tcplb: &Tcplb, more: u64| {
        total += more;
        spliced_once_counted(tcplb, &backend, total, total)
    };

    small_exchanges(&mut stream, 100, 50, 100);
    assert_eq!(
        counted(&tcplb, 5000),
        (0.0, 0.0),
        "small exchanges take buffers"
    );

    bulk_exchange(&mut stream, 19, 32 * MIB);
    let after_bulk = counted(&tcplb, 32 * MIB);
    assert!(
        after_bulk.0 > (16 * MIB) as f64 && after_bulk.1 > (16 * MIB) as f64,
        "bulk is spliced both ways: {after_bulk:?}"
    );
    wait_until(
        || held(&tcplb).0 == 0.0,
        || "a pipe held between exchanges".to_string(),
    );

    // Back to small: at most the first two messages each way are spliced (they are what
    // shows the flow went quiet); the rest take buffers.
    small_exchanges(&mut stream, 200, 50, 100);
    let after_small = counted(&tcplb, 5000);
    assert!(
        after_small.0 - after_bulk.0 <= 200.0 && after_small.1 - after_bulk.1 <= 200.0,
        "small exchanges after bulk: {after_bulk:?} -> {after_small:?}"
    );
    wait_until(
        || held(&tcplb) == (0.0, 0.0),
        || {
            format!(
                "between small exchanges the session holds {:?}",
                held(&tcplb)
            )
        },
    );

    // And bulk again.
    bulk_exchange(&mut stream, 20, 32 * MIB);
    let again = counted(&tcplb, 32 * MIB);
    assert!(
        again.0 - after_small.0 > (16 * MIB) as f64 && again.1 - after_small.1 > (16 * MIB) as f64,
        "bulk is spliced again: {after_small:?} -> {again:?}"
    );
    finish_echo(stream);
}

#[test]
fn with_the_pipe_pool_empty_bulk_takes_buffers_and_with_no_pipes_nothing_is_spliced() {
    // One pipe: a stalled download holds it; a second download takes buffers, whole.
    let backend = Backend::start(
        1,
        first_then(go_streamer(21, 1 << 30), go_streamer(22, 128 * MIB)),
    );
    let tcplb = start(&backend, &["--pipes", "1", "--workers", "1"]);
    let mut stalled = tcplb.connect();
    stalled.write_all(b"g").expect("go");
    stall_in_a_pipe(&tcplb, &backend, &mut stalled);
    let before = spliced(&tcplb).1;
    let mut second = tcplb.connect();
    second.write_all(b"g").expect("go");
    assert_eq!(
        read_digest(&mut second).expect("read"),
        Source::digest_of(22, 128 * MIB)
    );
    // Once the second session has ended, its counts are all in.
    drop(second);
    wait_until(
        || tcplb.metrics().get("tcplb_sessions_active", &[]) == 1.0,
        || "the second session did not end".to_string(),
    );
    assert_eq!(
        spliced(&tcplb).1,
        before,
        "no pipe to be had: every byte of the second download took buffers"
    );
    drop(stalled);
    wait_all_back(&tcplb);

    // --pipes 0: splice off.
    let backend = Backend::start(3, go_streamer(23, 64 * MIB));
    let tcplb = start(&backend, &["--pipes", "0"]);
    let mut stream = tcplb.connect();
    stream.write_all(b"g").expect("go");
    assert_eq!(
        read_digest(&mut stream).expect("read"),
        Source::digest_of(23, 64 * MIB)
    );
    let m = tcplb.metrics();
    assert_eq!(spliced(&tcplb), (0.0, 0.0));
    assert_eq!(m.get("tcplb_pipe_pool_pipes", &[("state", "free")]), 0.0);
    tcplb.wait_for_log("splice off (--pipes 0)");
}
