//! Resilience through the real binary: backends dying under load, the circuit breaker's
//! cool-down and half-open trial, failing open, backups, reloading the backend set on SIGHUP,
//! draining on SIGTERM, active health checks, shedding when the buffer pool runs dry, and a
//! chaos run with backends restarting in a loop. Every byte that flows is checked.

mod common;

use common::*;
use std::cell::{Cell, RefCell};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];

fn accepted(backend: &Backend) -> usize {
    backend.accepted.load(Ordering::SeqCst)
}

/// The cool-down in a breaker's "is down" log line (`...; next try in 500ms`).
fn next_try_in(line: &str) -> Duration {
    let text = line
        .split("next try in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no cool-down in {line:?}"));
    parse_debug_duration(text)
}

/// Asserts that a client's connection was ended by the peer (EOF or reset), not left hanging.
fn assert_ended(stream: &mut TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("{what}: got a byte, expected the connection ended"),
        Err(e) => assert!(is_peer_end(&e), "{what}: expected EOF or reset, got {e}"),
    }
}

/// Connects a client and asserts tcplb ended it (EOF or reset), also when the reset came
/// so fast that connect() itself reported it (the handshake was done, the socket already
/// closed by the time the caller woke: it happens on a busy machine).
fn assert_client_ended(tcplb: &Tcplb, what: &str) {
    match TcpStream::connect(tcplb.addr) {
        Ok(mut stream) => {
            stream
                .set_read_timeout(Some(PATIENCE))
                .expect("read timeout");
            assert_ended(&mut stream, what);
        }
        Err(e) => assert!(is_peer_end(&e), "{what}: connect failed: {e}"),
    }
}

/// Asserts that a client's connection was reset.
fn assert_reset(stream: &mut TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    let outcome = stream.read(&mut byte);
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "{what}: expected a reset"
    );
}

/// Waits until tcplb counts no active session on any backend: every lease was released.
fn wait_no_active(tcplb: &Tcplb) {
    let last = RefCell::new(Vec::new());
    wait_until(
        || {
            *last.borrow_mut() = backend_rows(tcplb);
            last.borrow().iter().all(|r| r.active == 0)
        },
        || format!("sessions still counted active: {:?}", last.borrow()),
    );
}

/// Writes a backends file in one step (write a temporary file, rename it over).
fn write_backends_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write backends file");
    std::fs::rename(&tmp, path).expect("rename backends file");
}

/// Runs clients (each served on the good backend, possibly after a retry) until the breaker
/// log line for `addr` says it is down; returns that line.
fn refuse_until_down(tcplb: &Tcplb, addr: SocketAddr, good_id: u8) -> String {
    let needle = format!("backend {addr} is down:");
    for _ in 0..50 {
        if let Some(line) = tcplb.logs().into_iter().find(|l| l.contains(&needle)) {
            return line;
        }
        let (stream, id) = connect_and_identify(tcplb);
        assert_eq!(
            id, good_id,
            "a refused connect is retried on the good backend"
        );
        close_and_wait(stream);
    }
    tcplb.wait_for_log(&needle)
}

/// Runs clients, a pause apart, until one is served by backend `want`; closes the others
/// (each must be served by `meanwhile`). Returns that client and how many came before it.
fn until_served_by(tcplb: &Tcplb, want: u8, meanwhile: u8) -> (TcpStream, usize) {
    let deadline = Instant::now() + PATIENCE;
    let mut before = 0;
    loop {
        let (stream, id) = connect_and_identify(tcplb);
        if id == want {
            return (stream, before);
        }
        assert_eq!(id, meanwhile, "client {before}");
        close_and_wait(stream);
        before += 1;
        assert!(
            Instant::now() < deadline,
            "no client reached backend {want} within {PATIENCE:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A count that threads wait on, with a time limit so a panicking thread cannot leave the
/// others waiting forever.
#[derive(Default)]
struct Countdown(Mutex<usize>, std::sync::Condvar);

impl Countdown {
    fn add(&self) {
        *self.0.lock().expect("count") += 1;
        self.1.notify_all();
    }

    fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        let mut count = self.0.lock().expect("count");
        while *count < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            count = self.1.wait_timeout(count, left).expect("count").0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. A backend killed under load

/// How a client session ended: (backend id, bytes verified, the error if it ended early).
type SessionEnd = (u8, usize, Result<(), String>);

#[test]
fn a_backend_killed_under_load_ends_its_sessions_and_the_survivor_serves_the_rest() {
    const CLIENTS: usize = 6;
    const TOTAL: usize = 4 << 20;
    const PIECE: usize = 64 << 10;
    const KILL_AT: usize = 1 << 20;
    let victim = Backend::start(1, identify_then_echo());
    let survivor = Backend::start(2, identify_then_echo());
    let tcplb = Tcplb::start(&[&victim.arg(), &survivor.arg(), ADMIN[0], ADMIN[1]]);

    // Every client is a quarter of the way through when the victim is killed; the survivor's
    // clients stream on meanwhile, the victim's wait until it is dead.
    let before_kill = Countdown::default();
    let killed = Countdown::default();
    let outcomes: Mutex<Vec<SessionEnd>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for seed in 0..CLIENTS as u64 {
            let (tcplb, before_kill, killed, outcomes) = (&tcplb, &before_kill, &killed, &outcomes);
            s.spawn(move || {
                let data = pattern(100 + seed, TOTAL);
                let (mut stream, id) = connect_and_identify(tcplb);
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut hasher = Xxh3::new();
                let mut verified = 0;
                while verified < KILL_AT {
                    let piece = &data[verified..verified + PIECE];
                    echo_piece(&mut stream, piece).expect("echo before the kill");
                    hasher.update(piece);
                    verified += PIECE;
                }
                // One piece in flight while the backend dies.
                stream
                    .write_all(&data[verified..verified + PIECE])
                    .expect("write before the kill");
                let mut sent = verified + PIECE;
                before_kill.add();
                if id == 1 {
                    killed.wait_for(1, "the kill");
                }

                let mut buf = vec![0u8; PIECE];
                let result = (|| -> io::Result<()> {
                    loop {
                        while verified < sent {
                            let want = (sent - verified).min(buf.len());
                            let n = stream.read(&mut buf[..want])?;
                            if n == 0 {
                                return Err(ErrorKind::UnexpectedEof.into());
                            }
                            assert!(
                                buf[..n] == data[verified..verified + n],
                                "client {seed}: wrong bytes at offset {verified}"
                            );
                            hasher.update(&buf[..n]);
                            verified += n;
                        }
                        if sent == TOTAL {
                            break;
                        }
                        let end = (sent + PIECE).min(TOTAL);
                        stream.write_all(&data[sent..end])?;
                        sent = end;
                    }
                    stream.shutdown(Shutdown::Write)?;
                    let mut extra = [0u8; 1];
                    assert_eq!(
                        stream.read(&mut extra)?,
                        0,
                        "client {seed}: bytes after all"
                    );
                    Ok(())
                })();
                assert_eq!(
                    hasher.digest(),
                    hash(&data[..verified]),
                    "client {seed}: hash of the {verified} bytes received"
                );
                if let Err(e) = &result {
                    assert!(
                        is_peer_end(e),
                        "client {seed} on backend {id}: a hang or odd error, not an end: {e}"
                    );
                }
                let result = result.map_err(|e| e.to_string());
                outcomes
                    .lock()
                    .expect("outcomes")
                    .push((id, verified, result));
            });
        }
        before_kill.wait_for(CLIENTS, "every client a quarter through");
        victim.kill();
        wait_refused(victim.addr);
        killed.add();
    });

    let outcomes = outcomes.into_inner().expect("outcomes");
    let on = |id: u8| outcomes.iter().filter(|o| o.0 == id).count();
    assert_eq!(
        (on(1), on(2)),
        (3, 3),
        "least active spreads 6 clients 3/3: {outcomes:?}; logs:\n{}",
        tcplb.logs().join("\n")
    );
    for (id, verified, result) in &outcomes {
        match id {
            1 => assert!(
                result.is_err() && *verified < TOTAL,
                "a session on the killed backend must end early: {verified} bytes, {result:?}"
            ),
            _ => assert!(
                result.is_ok() && *verified == TOTAL,
                "a session on the survivor must complete: {verified} bytes, {result:?}"
            ),
        }
    }

    // Every session after the kill lands on the survivor and completes intact.
    let survivor_before = accepted(&survivor);
    thread::scope(|s| {
        for seed in 0..6u64 {
            let tcplb = &tcplb;
            s.spawn(move || {
                let data = pattern(200 + seed, 1 << 20);
                let (mut stream, id) = connect_and_identify(tcplb);
                assert_eq!(id, 2, "a new session after the kill goes to the survivor");
                let mut got = Vec::with_capacity(data.len());
                for piece in data.chunks(PIECE) {
                    echo_piece(&mut stream, piece).expect("echo after the kill");
                    got.extend_from_slice(piece);
                }
                finish_echo(stream);
                assert_eq!((got.len(), hash(&got)), (data.len(), hash(&data)));
            });
        }
    });
    assert_eq!(accepted(&survivor), survivor_before + 6);
    wait_no_active(&tcplb);
}

/// A backend that answers a request, closes its sending side, then dies (its connection is
/// reset): the reset arrives after its FIN, when nothing reads that socket any more.
#[test]
fn a_backend_reset_after_its_fin_ends_the_session_without_the_client_acting() {
    let dies = Arc::new(Barrier::new(2));
    let backend = {
        let dies = Arc::clone(&dies);
        Backend::start(
            1,
            Arc::new(move |mut stream: TcpStream, _: &Backend| {
                let mut request = [0u8; 1];
                if stream.read_exact(&mut request).is_err() {
                    return;
                }
                let _ = stream.write_all(b"bye");
                let _ = stream.shutdown(Shutdown::Write);
                dies.wait();
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }),
        )
    };
    let tcplb = Tcplb::start(&[&backend.arg(), ADMIN[0], ADMIN[1]]);
    let mut stream = tcplb.connect();
    stream.write_all(b"?").expect("request");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("the reply, then EOF");
    assert_eq!(got, b"bye");
    dies.wait();
    backend.wait_active(0);
    // The client sits still: the session must end anyway (its backend is gone) and stop
    // counting against the backend, and the client must be told by a reset.
    wait_no_active(&tcplb);
    let outcome = stream.write(b"x");
    assert!(
        matches!(&outcome, Err(e) if is_peer_end(e)),
        "the backend's reset is passed on to the client: {outcome:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. The breaker's cool-down

#[test]
fn a_refusing_backend_is_marked_down_and_gets_no_connect_during_its_cool_down() {
    let good = Backend::start(2, identify_and_hold());
    let reserved = ReservedPort::new();
    let flaky = reserved.addr;
    let tcplb = Tcplb::start(&[
        &flaky.to_string(),
        &good.arg(),
        "--max-fails",
        "3",
        "--fail-timeout",
        "5",
        "--retries",
        "1",
        ADMIN[0],
        ADMIN[1],
    ]);
    let down = refuse_until_down(&tcplb, flaky, 2);
    let down_seen = Instant::now();
    assert!(
        down.contains("3 connects failed in a row"),
        "down after --max-fails failures: {down}"
    );
    assert_eq!(next_try_in(&down), Duration::from_secs(5));

    // It listens again, but its cool-down is not over: it must not see a single connect,
    // even though it is by far the least active backend.
    let revived = Backend::serve(1, reserved.listen(), identify_and_hold());
    let held: Vec<TcpStream> = (0..20)
        .map(|i| {
            let (stream, id) = connect_and_identify(&tcplb);
            assert_eq!(id, 2, "client {i} during the cool-down");
            stream
        })
        .collect();
    let row = backend_row(&tcplb, flaky).expect("listed");
    assert_eq!(row.state, "down");
    assert_eq!(row.connections_total, 0, "{row:?}");
    assert_eq!(
        row.connect_failures_total, 3,
        "no attempt after it went down"
    );
    assert_eq!(
        accepted(&revived),
        0,
        "a connect reached it during its cool-down"
    );
    assert!(
        down_seen.elapsed() < Duration::from_secs(4),
        "the checks ran past the cool-down ({:?}): inconclusive",
        down_seen.elapsed()
    );
    for stream in held {
        close_and_wait(stream);
    }
}

// ---------------------------------------------------------------------------------------
// 3. Half-open: one trial, then up again; a failed trial doubles the cool-down

#[test]
fn after_the_cool_down_one_trial_goes_to_the_recovered_backend_then_it_takes_traffic() {
    let other = Backend::start(2, identify_and_hold());
    let reserved = ReservedPort::new();
    let flaky = reserved.addr;
    let tcplb = Tcplb::start(&[
        &flaky.to_string(),
        &other.arg(),
        "--max-fails",
        "2",
        "--fail-timeout",
        "1",
        "--retries",
        "1",
        ADMIN[0],
        ADMIN[1],
    ]);
    refuse_until_down(&tcplb, flaky, 2);
    let down_seen = Instant::now();
    let recovered = Backend::serve(1, reserved.listen(), identify_and_hold());

    // Sessions held on the other backend make the recovered one the least active.
    let mut held: Vec<(TcpStream, u8)> = (0..2).map(|_| connect_and_identify(&tcplb)).collect();
    assert!(held.iter().all(|(_, id)| *id == 2));

    // Until the cool-down is over clients go to the other backend; then one trial goes to
    // the recovered one.
    let (trial, during) = until_served_by(&tcplb, 1, 2);
    let waited = down_seen.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "the trial came {waited:?} after the backend went down, before its 1 s cool-down"
    );
    assert!(
        during > 0,
        "no client ran during the cool-down: inconclusive"
    );
    assert_eq!(accepted(&recovered), 1, "exactly one trial");
    tcplb.wait_for_log(&format!("backend {flaky} is up again: a connect succeeded"));
    assert_eq!(backend_row(&tcplb, flaky).expect("listed").state, "up");
    held.push((trial, 1));

    // It takes traffic normally: least active first (1 vs 2 active), then both in turn.
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 1, "the recovered backend is the least active");
    held.push((stream, id));
    for _ in 0..4 {
        held.push(connect_and_identify(&tcplb));
    }
    let on = |want: u8| held.iter().filter(|(_, id)| *id == want).count();
    assert_eq!((on(1), on(2)), (4, 4), "8 sessions shared 4/4");
    for (stream, _) in held {
        close_and_wait(stream);
    }
    wait_no_active(&tcplb);
}

#[test]
fn a_failed_trial_puts_the_backend_back_down_with_the_cool_down_doubled() {
    let other = Backend::start(2, identify_and_hold());
    let dead = ReservedPort::new(); // never listens
    let tcplb = Tcplb::start(&[
        &dead.addr.to_string(),
        &other.arg(),
        "--max-fails",
        "2",
        "--fail-timeout",
        "0.5",
        "--retries",
        "1",
    ]);
    let first = refuse_until_down(&tcplb, dead.addr, 2);
    assert_eq!(next_try_in(&first), Duration::from_millis(500));
    // Held sessions make the dead backend the least active: each trial goes to it.
    let held: Vec<(TcpStream, u8)> = (0..2).map(|_| connect_and_identify(&tcplb)).collect();
    assert!(held.iter().all(|(_, id)| *id == 2));

    let needle = format!("backend {} is down:", dead.addr);
    let mut went_down = vec![(first, Instant::now())];
    let deadline = Instant::now() + PATIENCE;
    while went_down.len() < 3 {
        assert!(Instant::now() < deadline, "went down only {went_down:?}");
        // The client whose trial fails is retried on the other backend and served.
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 2);
        close_and_wait(stream);
        if let Some(line) = tcplb
            .logs()
            .into_iter()
            .filter(|l| l.contains(&needle))
            .nth(went_down.len())
        {
            went_down.push((line, Instant::now()));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let cooldowns: Vec<Duration> = went_down.iter().map(|(l, _)| next_try_in(l)).collect();
    assert_eq!(
        cooldowns,
        [
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(2)
        ],
        "each failed trial doubles the cool-down: {went_down:?}"
    );
    for pair in went_down.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        let cooldown = next_try_in(&pair[0].0);
        assert!(
            gap + Duration::from_millis(100) >= cooldown,
            "a trial came {gap:?} after going down, before the {cooldown:?} cool-down"
        );
    }
    assert_eq!(tcplb.count_logs("is up again"), 0);
    for (stream, _) in held {
        close_and_wait(stream);
    }
}

#[test]
fn while_a_trial_is_under_way_no_other_session_goes_to_that_backend() {
    let other = Backend::start(2, identify_and_hold());
    let reserved = ReservedPort::new();
    let slow = reserved.addr;
    let tcplb = Tcplb::start(&[
        &slow.to_string(),
        &other.arg(),
        "--max-fails",
        "1",
        "--fail-timeout",
        "0.5",
        "--retries",
        "1",
        "--connect-timeout",
        "1000",
        ADMIN[0],
        ADMIN[1],
    ]);
    let first = refuse_until_down(&tcplb, slow, 2);
    let down_seen = Instant::now();
    // It listens again but never answers: a connect to it hangs (the trial stays under way
    // until --connect-timeout).
    let listener = reserved.listen_backlog(1);
    let _queue = fill_accept_queue(slow);
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_and_identify(&tcplb).0).collect();
    // Let the cool-down elapse.
    thread::sleep(Duration::from_millis(600).saturating_sub(down_seen.elapsed()));

    // The least active backend is the one due its trial: this client's session is it.
    let started = Instant::now();
    let mut trial = tcplb.connect();
    wait_until(
        || backend_row(&tcplb, slow).expect("listed").active == 1,
        || "the trial did not start".to_string(),
    );
    // While it is under way, everyone else goes to the other backend, promptly.
    for i in 0..5 {
        let asked = Instant::now();
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 2, "client {i} while the trial is under way");
        assert!(asked.elapsed() < Duration::from_millis(500));
        held.push(stream);
    }
    assert_eq!(backend_row(&tcplb, slow).expect("listed").active, 1);
    // The trial times out: the backend goes down again for twice as long, and the client is
    // retried on the other backend.
    let mut id = [0u8; 1];
    trial
        .read_exact(&mut id)
        .expect("the trial client is served after all");
    assert_eq!(id[0], 2);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let second = tcplb.wait_for_nth_log(&format!("backend {slow} is down:"), 2);
    assert!(second.contains("timed out"), "{second}");
    assert_eq!(next_try_in(&second), next_try_in(&first) * 2);
    held.push(trial);
    for stream in held {
        close_and_wait(stream);
    }
    drop(listener);
}

// ---------------------------------------------------------------------------------------
// 4. Fail open

/// When the backends that are up have all been tried for a client and it fails open to
/// one that is down, the warning says so rather than "every backend is down".
#[test]
fn failing_open_after_the_up_ones_were_tried_says_so() {
    let (down_port, up_port) = (ReservedPort::new(), ReservedPort::new());
    let (down, up) = (down_port.addr, up_port.addr);
    let file = scratch_path("fail-open-tried");
    write_backends_file(&file, &format!("{down}\n"));
    let file_arg = file.to_str().expect("utf-8").to_string();
    let tcplb = Tcplb::start(&[
        "--backends-file",
        &file_arg,
        "--max-fails",
        "2",
        "--fail-timeout",
        "60s",
        "--retries",
        "1",
    ]);
    // Two refused clients take the only backend down.
    for _ in 0..2 {
        assert_client_ended(&tcplb, "a client of a refusing backend");
    }
    tcplb.wait_for_log(&format!(
        "backend {down} is down: 2 connects failed in a row"
    ));
    // A second backend joins: up, never tried, refusing too (its breaker stays closed
    // after one failure).
    write_backends_file(&file, &format!("{down}\n{up}\n"));
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 added, 0 removed, 0 changed; 2 backends");
    // The client tries the one that is up, which refuses; the only one left is down: it
    // fails open to it.
    assert_client_ended(&tcplb, "a client whose every attempt is refused");
    let line = tcplb.wait_for_log("the first due back");
    assert!(
        line.contains("no backend left to try for this client is up")
            && line.contains(&down.to_string()),
        "{line}"
    );
    assert!(!line.contains("every backend is down"), "{line}");
    let _ = std::fs::remove_file(&file);
    drop((down_port, up_port));
}

#[test]
fn with_every_backend_down_a_client_fails_open_to_the_first_due_back() {
    let ports = [ReservedPort::new(), ReservedPort::new()];
    let addrs = [ports[0].addr, ports[1].addr];
    let tcplb = Tcplb::start(&[
        &addrs[0].to_string(),
        &addrs[1].to_string(),
        "--max-fails",
        "1",
        "--fail-timeout",
        "30",
        "--retries",
        "0",
    ]);
    // Two clients, one refusal each: both backends down for 30 s, one after the other.
    for n in 1..=2 {
        let mut stream = tcplb.connect();
        assert_ended(&mut stream, "a client no backend could take");
        tcplb.wait_for_nth_log(" is down: 1 connects failed in a row", n);
    }
    let downs: Vec<String> = tcplb
        .logs()
        .into_iter()
        .filter(|l| l.contains(" is down: "))
        .collect();
    assert_eq!(downs.len(), 2, "{downs:?}");
    let first = addrs
        .iter()
        .position(|a| downs[0].contains(&format!("backend {a} is down")))
        .expect("the first down line names a backend");
    assert!(downs[1].contains(&format!("backend {} is down", addrs[1 - first])));

    // The first one down comes back; the other stays dead. A new client is served at once.
    let [a, b] = ports;
    let port = if first == 0 { a } else { b };
    let revived = Backend::serve(7, port.listen(), identify_and_hold());
    let started = Instant::now();
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 7);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "served only after {:?}",
        started.elapsed()
    );
    tcplb.wait_for_log(&format!(
        "every backend is down; trying {}, the first due back",
        addrs[first]
    ));
    tcplb.wait_for_log(&format!("backend {} is up again", addrs[first]));
    close_and_wait(stream);
    assert_eq!(accepted(&revived), 1);
}

/// After a brief outage of the whole fleet, every backend must be back in service about a
/// cool-down after it recovers: failed attempts made while failing open must not stretch the
/// cool-downs (they used to double them, so a few clients during the outage pushed every
/// backend to long cool-downs, and after recovery only the one fail-open landed on served).
#[test]
fn after_a_brief_total_outage_every_backend_is_back_within_a_cool_down() {
    let ports = [
        ReservedPort::new(),
        ReservedPort::new(),
        ReservedPort::new(),
    ];
    let addrs: Vec<String> = ports.iter().map(|p| p.addr.to_string()).collect();
    let mut tcplb_args: Vec<&str> = addrs.iter().map(String::as_str).collect();
    tcplb_args.extend(["--max-fails", "1", "--fail-timeout", "1", "--retries", "2"]);
    let tcplb = Tcplb::start(&tcplb_args);
    // A second of outage with a client every 150 ms.
    for _ in 0..7 {
        let mut stream = tcplb.connect();
        assert_ended(&mut stream, "a client during the outage");
        thread::sleep(Duration::from_millis(150));
    }
    let backends: Vec<Arc<Backend>> = ports
        .into_iter()
        .zip(1u8..)
        .map(|(port, id)| Backend::serve(id, port.listen(), identify_and_hold()))
        .collect();
    let revived = Instant::now();
    // Within a couple of cool-downs every backend takes sessions again.
    let mut held = Vec::new();
    let mut seen = [false; 3];
    while !seen.iter().all(|s| *s) {
        assert!(
            revived.elapsed() < Duration::from_secs(3),
            "3 s after the fleet recovered only backends {seen:?} take sessions; logs:\n{}",
            tcplb.logs().join("\n")
        );
        let (stream, id) = connect_and_identify(&tcplb);
        seen[usize::from(id - 1)] = true;
        held.push(stream);
        thread::sleep(Duration::from_millis(50));
    }
    for stream in held {
        close_and_wait(stream);
    }
    drop(backends);
}

// ---------------------------------------------------------------------------------------
// 5. Backups

#[test]
fn a_backup_takes_traffic_only_while_the_primary_is_down_and_its_sessions_are_left_alone() {
    let primary = Backend::start(1, identify_then_echo());
    let backup = Backend::start(2, identify_then_echo());
    let primary_addr = primary.addr;
    let tcplb = Tcplb::start(&[
        &primary.arg(),
        &format!("{},backup", backup.arg()),
        "--max-fails",
        "1",
        "--fail-timeout",
        "1",
        "--retries",
        "1",
        ADMIN[0],
        ADMIN[1],
    ]);
    // Only the primary, even when it is far busier than the idle backup.
    let on_primary: Vec<TcpStream> = (0..3)
        .map(|i| {
            let (stream, id) = connect_and_identify(&tcplb);
            assert_eq!(id, 1, "client {i} while the primary is up");
            stream
        })
        .collect();
    assert_eq!(accepted(&backup), 0);

    primary.kill();
    wait_refused(primary_addr);
    for mut stream in on_primary {
        assert_ended(&mut stream, "a session on the killed primary");
    }
    // The backup takes over; this session on it is kept open throughout.
    let (mut kept, id) = connect_and_identify(&tcplb);
    assert_eq!(
        id, 2,
        "with the primary dead the client is retried on the backup"
    );
    tcplb.wait_for_log(&format!(
        "backend {primary_addr} is down: 1 connects failed"
    ));
    let down_seen = Instant::now();
    let kept_data = pattern(500, 512 << 10);
    let mut kept_back = Vec::new();
    for piece in kept_data[..256 << 10].chunks(16 << 10) {
        echo_piece(&mut kept, piece).expect("echo on the backup");
        kept_back.extend_from_slice(piece);
    }
    for _ in 0..3 {
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 2, "while the primary is down");
        close_and_wait(stream);
    }

    // The primary comes back on the same port: after the cool-down traffic returns to it.
    let primary = Backend::serve(1, rebind(primary_addr), identify_then_echo());
    let mut held = vec![until_served_by(&tcplb, 1, 2).0];
    assert!(
        down_seen.elapsed() >= Duration::from_millis(900),
        "back on the primary after {:?}, before its 1 s cool-down",
        down_seen.elapsed()
    );
    tcplb.wait_for_log(&format!("backend {primary_addr} is up again"));
    for i in 0..3 {
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 1, "client {i} once the primary is back");
        held.push(stream);
    }
    assert_eq!(accepted(&primary), 4);

    // The session on the backup was left alone all along.
    for piece in kept_data[256 << 10..].chunks(16 << 10) {
        echo_piece(&mut kept, piece).expect("echo on the backup after the switch back");
        kept_back.extend_from_slice(piece);
    }
    finish_echo(kept);
    assert_eq!(
        (kept_back.len(), hash(&kept_back)),
        (kept_data.len(), hash(&kept_data))
    );
    for stream in held {
        close_and_wait(stream);
    }
    wait_no_active(&tcplb);
}

// ---------------------------------------------------------------------------------------
// 6-7. Reloading the backend set

/// A SIGHUP while tcplb is still starting (here: reading its backends file) is held and
/// handled once the loop runs, instead of killing the process with the default action.
#[test]
fn a_sighup_during_start_up_is_held_for_the_loop_not_fatal() {
    let backend = Backend::start(1, echo());
    let fifo = scratch_path("start-up-fifo");
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: mkfifo reads the NUL-terminated path, which lives for the whole call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo_arg = fifo.to_str().expect("utf-8 path").to_string();
    let mut tcplb = Tcplb::spawn_with(&["--backends-file", &fifo_arg], |_| {});
    // Opening a FIFO for writing returns once the reader has opened it: tcplb is now inside
    // its start-up, reading the backends file.
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open the FIFO for writing");
    tcplb.signal(libc::SIGHUP);
    // If the signal killed tcplb, this write fails (nobody reads); that is checked below.
    let _ = writer.write_all(format!("{}\n", backend.arg()).as_bytes());
    drop(writer);
    tcplb.wait_listening();
    assert!(tcplb.is_running(), "tcplb died of the SIGHUP");
    tcplb.wait_for_log("SIGHUP: reloading");
    let stream = tcplb.connect();
    let data = pattern(3, 50_000);
    assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
    let _ = std::fs::remove_file(&fifo);
}

#[test]
fn sighup_adds_and_removes_backends_and_sessions_on_a_removed_one_finish() {
    let a = Backend::start(1, identify_then_echo());
    let b = Backend::start(2, identify_then_echo());
    let c = Backend::start(3, identify_then_echo());
    let file = scratch_path("reload-add-remove");
    write_backends_file(&file, &format!("# the fleet\n{}\n", a.arg()));
    let file_arg = file.display().to_string();
    let tcplb = Tcplb::start(&["--backends-file", &file_arg, ADMIN[0], ADMIN[1]]);

    let (mut long, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 1);
    let data = pattern(600, 2 << 20);
    let mut back = Vec::new();
    let mut pieces = data.chunks(64 << 10);
    for piece in pieces.by_ref().take(16) {
        echo_piece(&mut long, piece).expect("echo on A");
        back.extend_from_slice(piece);
    }

    write_backends_file(&file, &format!("{}\n", b.arg()));
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 added, 1 removed, 0 changed; 1 backends");
    let rows = backend_rows(&tcplb);
    let row = |addr: SocketAddr| {
        rows.iter()
            .find(|r| r.address == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{addr} not in {rows:?}"))
    };
    assert_eq!(
        (row(a.addr).state.as_str(), row(a.addr).active),
        ("draining", 1)
    );
    assert_eq!((row(b.addr).state.as_str(), row(b.addr).active), ("up", 0));

    // New clients go to B only, even as it becomes the busier.
    let held: Vec<TcpStream> = (0..3)
        .map(|i| {
            let (stream, id) = connect_and_identify(&tcplb);
            assert_eq!(id, 2, "client {i} after the reload");
            stream
        })
        .collect();
    assert_eq!(accepted(&a), 1);

    // The long session on A goes on and finishes intact.
    for piece in pieces {
        echo_piece(&mut long, piece).expect("echo on A after its removal");
        back.extend_from_slice(piece);
    }
    finish_echo(long);
    assert_eq!((back.len(), hash(&back)), (data.len(), hash(&data)));
    wait_until(
        || backend_row(&tcplb, a.addr).is_none(),
        || "A is still listed after its last session".to_string(),
    );

    // A backend kept across a reload keeps its counters.
    let before = backend_row(&tcplb, b.addr).expect("B listed");
    assert_eq!(before.connections_total, 3);
    for stream in held {
        close_and_wait(stream);
    }
    write_backends_file(&file, &format!("{}\n{}\n", b.arg(), c.arg()));
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 added, 0 removed, 0 changed; 2 backends");
    let after = backend_row(&tcplb, b.addr).expect("B listed");
    assert_eq!(
        (after.state.as_str(), after.connections_total),
        ("up", 3),
        "{after:?}"
    );
    assert_eq!(
        backend_row(&tcplb, c.addr)
            .expect("C listed")
            .connections_total,
        0
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_bad_backends_file_on_sighup_leaves_the_running_set_untouched() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let file = scratch_path("reload-bad-line");
    write_backends_file(&file, &format!("{}\n", a.arg()));
    let file_arg = file.display().to_string();
    let tcplb = Tcplb::start(&["--backends-file", &file_arg]);

    // Line 1 names B, line 3 is broken: none of it may apply.
    write_backends_file(
        &file,
        &format!("{}\n# a comment\n127.0.0.1:notaport\n", b.arg()),
    );
    tcplb.signal(libc::SIGHUP);
    let line = tcplb.wait_for_log("reload failed, keeping the running set");
    assert!(
        line.contains(&file_arg) && line.contains("line 3"),
        "the error names the file and the line: {line}"
    );
    let held: Vec<TcpStream> = (0..4)
        .map(|i| {
            let (stream, id) = connect_and_identify(&tcplb);
            assert_eq!(id, 1, "client {i} after the failed reload");
            stream
        })
        .collect();
    assert_eq!(accepted(&b), 0);
    assert_eq!(tcplb.count_logs("reload: "), 0, "nothing was applied");

    // Fixed: the new set applies.
    write_backends_file(&file, &format!("{}\n", b.arg()));
    tcplb.signal(libc::SIGHUP);
    tcplb.wait_for_log("reload: 1 added, 1 removed, 0 changed; 1 backends");
    for i in 0..4 {
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 2, "client {i} after the fixed reload");
        close_and_wait(stream);
    }
    for stream in held {
        close_and_wait(stream);
    }
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------
// 8. SIGTERM: drain, second signal, drain timeout

#[test]
fn sigterm_closes_the_listener_lets_the_transfer_finish_and_exits_zero() {
    let backend = Backend::start(1, echo());
    let mut tcplb = Tcplb::start(&[&backend.arg()]);
    let addr = tcplb.addr;
    let mut stream = tcplb.connect();
    let data = pattern(800, 2 << 20);
    let mut back = Vec::new();
    let (first, second) = data.split_at(1 << 20);
    for piece in first.chunks(64 << 10) {
        echo_piece(&mut stream, piece).expect("echo before SIGTERM");
        back.extend_from_slice(piece);
    }

    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log("SIGTERM: stopped accepting; draining 1 sessions");
    match TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new client was accepted while draining"),
    }
    assert!(tcplb.is_running(), "exited with a transfer in flight");

    for piece in second.chunks(64 << 10) {
        echo_piece(&mut stream, piece).expect("echo while draining");
        back.extend_from_slice(piece);
    }
    finish_echo(stream);
    assert_eq!((back.len(), hash(&back)), (data.len(), hash(&data)));
    assert_eq!(tcplb.wait_exit(Duration::from_secs(5)), Some(0));
    tcplb.wait_for_log("drained: every session has finished");
}

#[test]
fn a_second_sigterm_exits_at_once_and_resets_held_sessions() {
    let backend = Backend::start(1, identify_and_hold());
    let mut tcplb = Tcplb::start(&[&backend.arg()]);
    let (mut held, _) = connect_and_identify(&tcplb);
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log("stopped accepting");
    let started = Instant::now();
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "exited {:?} after the second signal",
        started.elapsed()
    );
    tcplb.wait_for_log("second signal: exiting now");
    assert_reset(&mut held, "a session cut by the second signal");
    backend.wait_active(0);
}

#[test]
fn the_drain_timeout_cuts_idle_sessions_with_a_reset_and_exits_zero() {
    let backend = Backend::start(1, identify_and_hold());
    let mut tcplb = Tcplb::start(&[&backend.arg(), "--drain-timeout", "1"]);
    let (mut held, _) = connect_and_identify(&tcplb);
    let started = Instant::now();
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(Duration::from_secs(5)), Some(0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM with --drain-timeout 1"
    );
    tcplb.wait_for_log("drain timeout (1s) reached");
    assert_reset(&mut held, "a session cut by the drain timeout");
}

// ---------------------------------------------------------------------------------------
// 9. Active health checks

#[test]
fn health_checks_take_a_dead_backend_out_without_client_traffic_and_bring_it_back() {
    let a = Backend::start(1, identify_and_hold());
    let b = Backend::start(2, identify_and_hold());
    let a_addr = a.addr;
    let tcplb = Tcplb::start(&[
        &a.arg(),
        &b.arg(),
        "--health-interval",
        "0.2",
        "--rise",
        "2",
        "--fall",
        "2",
        ADMIN[0],
        ADMIN[1],
    ]);
    a.kill();
    tcplb.wait_for_log(&format!(
        "backend {a_addr} is down: 2 health checks failed in a row"
    ));
    let row = backend_row(&tcplb, a_addr).expect("listed");
    assert_eq!(row.state, "down");
    assert_eq!(
        (row.connections_total, row.connect_failures_total),
        (0, 0),
        "no client was involved"
    );

    // Clients avoid it, though it is the least active: no connect is even tried.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|i| {
            let (stream, id) = connect_and_identify(&tcplb);
            assert_eq!(id, 2, "client {i} while A is down");
            stream
        })
        .collect();
    assert_eq!(
        backend_row(&tcplb, a_addr)
            .expect("listed")
            .connect_failures_total,
        0
    );

    // Back on the same port: up after two passed checks, then it takes traffic (it is the
    // least active, 0 against 4).
    let _a = Backend::serve(1, rebind(a_addr), identify_and_hold());
    tcplb.wait_for_log(&format!(
        "backend {a_addr} is up: 2 health checks passed in a row"
    ));
    for i in 0..4 {
        let (stream, id) = connect_and_identify(&tcplb);
        assert_eq!(id, 1, "client {i} once A is back");
        held.push(stream);
    }
    for stream in held {
        close_and_wait(stream);
    }
}

// ---------------------------------------------------------------------------------------
// 10. Shedding when the pool runs dry

/// Reads one byte: `S` streams a pattern until the connection fails; anything else echoes.
fn stream_or_echo() -> Handler {
    Arc::new(|mut stream: TcpStream, _: &Backend| {
        let mut first = [0u8; 1];
        if stream.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'S' {
            let chunk = pattern(9, 64 << 10);
            while stream.write_all(&chunk).is_ok() {}
            return;
        }
        echo_until_eof(&mut stream);
    })
}

/// A client with a small receive buffer that asks for a stream and never reads it.
fn stalled_client(addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect to tcplb");
    let mut stream: TcpStream = socket.into();
    // A client shed at once (its worker's share of the pool is used up) may be reset before
    // this is written; the caller sees it counted as shed.
    let _ = stream.write_all(b"S");
    stream
}

#[test]
fn with_the_pool_nearly_empty_new_clients_are_shed_until_buffers_come_back() {
    const FREE: &str = "tcplb_buffer_pool_buffers{state=\"free\"}";
    let backend = Backend::start(1, stream_or_echo());
    // No pipes: a stalled bulk stream would otherwise wait in a pipe, holding no buffer.
    let tcplb = Tcplb::start(&[
        &backend.arg(),
        "--buffers",
        "20",
        "--buffer-size",
        "1k",
        "--pipes",
        "0",
        ADMIN[0],
        ADMIN[1],
    ]);
    assert_eq!(metric(&tcplb, FREE), 20.0);
    // Each stalled client ends up holding one to four buffers (its backend's bytes it will
    // not read; a direction gathers up to four while the pool has plenty). Add them until none
    // is free. Each worker has its own share of the pool: with several, a client that lands
    // on a worker whose share is used up is shed while others still have buffers.
    const SHED: &str = "tcplb_connections_shed_total{reason=\"pool\"}";
    let mut stalled = Vec::new();
    let (mut free, mut shed_while_filling) = (20.0, 0.0);
    while free > 0.0 {
        assert!(
            stalled.len() < 20 && shed_while_filling < 20.0,
            "{} stalled clients, {shed_while_filling} shed, {free} buffers free",
            stalled.len()
        );
        stalled.push(stalled_client(tcplb.addr));
        let before = (free, shed_while_filling);
        let now = Cell::new(before);
        wait_until(
            || {
                now.set((metric(&tcplb, FREE), metric(&tcplb, SHED)));
                now.get().0 < before.0 || now.get().1 > before.1
            },
            || {
                format!(
                    "{} stalled clients, {:?} buffers free and shed",
                    stalled.len(),
                    now.get()
                )
            },
        );
        (free, shed_while_filling) = now.get();
        if shed_while_filling > before.1 {
            stalled.pop();
        }
    }
    let admitted = stalled.len();

    // Under 5% free: a new client is closed at once and never reaches a backend.
    for _ in 0..3 {
        let started = Instant::now();
        assert_client_ended(&tcplb, "a client shed for want of buffers");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "shed only after {:?}",
            started.elapsed()
        );
    }
    tcplb.wait_for_log("shedding new clients (shed_pool)");
    assert_eq!(metric(&tcplb, SHED), shed_while_filling + 3.0);
    assert_eq!(
        accepted(&backend),
        admitted,
        "shed clients never reach a backend"
    );

    // The stalled clients go away: their buffers come back and clients are served again.
    drop(stalled);
    backend.wait_active(0);
    wait_until(
        || metric(&tcplb, FREE) == 20.0,
        || "buffers did not come back".to_string(),
    );
    let data = pattern(1000, 256 << 10);
    let mut stream = tcplb.connect();
    stream.write_all(b"E").expect("ask for an echo");
    let mut back = Vec::new();
    for piece in data.chunks(16 << 10) {
        echo_piece(&mut stream, piece).expect("echo after the pool recovered");
        back.extend_from_slice(piece);
    }
    finish_echo(stream);
    assert_eq!((back.len(), hash(&back)), (data.len(), hash(&data)));
}

// ---------------------------------------------------------------------------------------
// 11. Chaos

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    Complete,
    /// The connection to tcplb itself failed.
    RefusedAtConnect,
    /// Closed (EOF) before a single byte came back: no backend could take it.
    ClosedBeforeData,
    /// Reset before a single byte came back.
    ResetBeforeData,
    /// EOF part-way.
    EofEarly,
    /// Reset (or a broken pipe) part-way.
    Reset,
    /// A read timed out: a hang.
    Hang,
    /// Wrong bytes, or bytes after the end.
    Corrupt,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// One echo session in pieces, every byte compared with what was sent.
fn chaos_session(addr: SocketAddr, data: &[u8], piece: usize) -> Outcome {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return Outcome::RefusedAtConnect;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut verified = 0;
    let mut buf = vec![0u8; piece];
    let ended = |e: io::Error, verified: usize| match (e.kind(), verified) {
        (ErrorKind::WouldBlock | ErrorKind::TimedOut, _) => Outcome::Hang,
        (ErrorKind::UnexpectedEof, 0) => Outcome::ClosedBeforeData,
        (ErrorKind::UnexpectedEof, _) => Outcome::EofEarly,
        (_, 0) => Outcome::ResetBeforeData,
        _ => Outcome::Reset,
    };
    while verified < data.len() {
        let end = (verified + piece).min(data.len());
        if let Err(e) = stream.write_all(&data[verified..end]) {
            return ended(e, verified);
        }
        while verified < end {
            match stream.read(&mut buf[..end - verified]) {
                Ok(0) => return ended(ErrorKind::UnexpectedEof.into(), verified),
                Ok(n) => {
                    if buf[..n] != data[verified..verified + n] {
                        return Outcome::Corrupt;
                    }
                    verified += n;
                }
                Err(e) => return ended(e, verified),
            }
        }
    }
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return ended(e, verified);
    }
    match stream.read(&mut buf) {
        Ok(0) => Outcome::Complete,
        Ok(_) => Outcome::Corrupt,
        // Cut after the last byte came back, before the end was confirmed.
        Err(e) => ended(e, verified),
    }
}

#[test]
fn chaos_backends_restarting_in_a_loop_never_corrupt_or_hang_a_session() {
    const RUN: Duration = Duration::from_secs(5);
    const CLIENTS: u64 = 8;
    let backends: Vec<Mutex<Arc<Backend>>> = (1..=3u8)
        .map(|id| Mutex::new(Backend::start(id, echo())))
        .collect();
    let addrs: Vec<SocketAddr> = backends
        .iter()
        .map(|b| b.lock().expect("backend").addr)
        .collect();
    let addr_args: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut tcplb_args: Vec<&str> = addr_args.iter().map(String::as_str).collect();
    tcplb_args.extend([
        "--fail-timeout",
        "0.2",
        "--connect-timeout",
        "1000",
        "--retries",
        "2",
        ADMIN[0],
        ADMIN[1],
    ]);
    let mut tcplb = Tcplb::start(&tcplb_args);
    let tally: Mutex<std::collections::BTreeMap<Outcome, usize>> = Mutex::default();
    let bytes_verified = AtomicUsize::new(0);
    let restarts = AtomicUsize::new(0);
    let deadline = Instant::now() + RUN;

    thread::scope(|s| {
        for (i, slot) in backends.iter().enumerate() {
            let (restarts, addr) = (&restarts, addrs[i]);
            s.spawn(move || {
                let mut rng = Rng(0x5EED + i as u64);
                while Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(rng.range(100, 300)));
                    let old = Arc::clone(&slot.lock().expect("backend"));
                    old.kill();
                    thread::sleep(Duration::from_millis(rng.range(0, 30)));
                    let fresh = Backend::serve(old.id, rebind(addr), echo());
                    *slot.lock().expect("backend") = fresh;
                    restarts.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for c in 0..CLIENTS {
            let (tally, bytes_verified, addr) = (&tally, &bytes_verified, tcplb.addr);
            s.spawn(move || {
                let mut rng = Rng(0xC1_1E27 + c);
                let mut seed = c << 32;
                while Instant::now() < deadline {
                    seed += 1;
                    let len = rng.range(64 << 10, (1 << 20) + 1) as usize;
                    let piece = rng.range(4 << 10, 64 << 10) as usize;
                    let data = pattern(seed, len);
                    let outcome = chaos_session(addr, &data, piece);
                    if outcome == Outcome::Complete {
                        bytes_verified.fetch_add(len, Ordering::SeqCst);
                    }
                    *tally.lock().expect("tally").entry(outcome).or_default() += 1;
                }
            });
        }
    });

    let tally = tally.into_inner().expect("tally");
    let total: usize = tally.values().sum();
    let count = |o: Outcome| tally.get(&o).copied().unwrap_or(0);
    eprintln!(
        "chaos: {} backend restarts in {RUN:?}; {total} sessions, {} complete ({} MiB echoed \
         and verified), failed: {:?}",
        restarts.load(Ordering::SeqCst),
        count(Outcome::Complete),
        bytes_verified.load(Ordering::SeqCst) >> 20,
        tally
            .iter()
            .filter(|(o, _)| **o != Outcome::Complete)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(Outcome::Corrupt),
        0,
        "sessions got wrong bytes: {tally:?}"
    );
    assert_eq!(count(Outcome::Hang), 0, "sessions hung: {tally:?}");
    assert_eq!(
        count(Outcome::RefusedAtConnect),
        0,
        "tcplb refused connects: {tally:?}"
    );
    assert!(tcplb.is_running(), "tcplb died");
    assert!(total >= 100, "only {total} sessions ran");
    assert!(
        count(Outcome::Complete) * 2 >= total,
        "under half the sessions completed: {tally:?}"
    );
    // Calm again: every lease was released and a session completes.
    wait_no_active(&tcplb);
    let data = pattern(1, 1 << 20);
    let outcome = Cell::new(Outcome::Hang);
    wait_until(
        || {
            outcome.set(chaos_session(tcplb.addr, &data, 64 << 10));
            outcome.get() == Outcome::Complete
        },
        || format!("after the chaos a session ends {:?}", outcome.get()),
    );
}
