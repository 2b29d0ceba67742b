//! Upgrades (`SIGUSR2`), socket activation and the pid file, with real processes: a copy of
//! the tcplb binary in a directory of the test's own, started from there and replaced the
//! way an operator does it (a new file renamed over the old), real backends, and clients
//! that check every byte.
//!
//! The process an upgrade starts outlives the one that started it. This test binary makes
//! itself a "child subreaper" (`PR_SET_CHILD_SUBREAPER`), so that it inherits each such
//! process once its parent has exited, and can read its exit status.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Processes

/// Makes this test process the one that inherits orphaned descendants (see the top).
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a flag of this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "PR_SET_CHILD_SUBREAPER: {}",
            io::Error::last_os_error()
        );
    });
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory effects; the pid is one of this test's tcplb processes.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        io::Error::last_os_error()
    );
}

/// The processes an upgrade chain started (the first is the test's own child, in its
/// `Tcplb`): killed and reaped when the test ends, however it ends.
#[derive(Default)]
struct Descendants(Vec<u32>);

impl Descendants {
    fn add(&mut self, pid: u32) {
        self.0.push(pid);
    }

    /// Waits for `pid` to end and returns its wait status. It becomes this process's child
    /// (to wait for) once its parent has exited: until then, waitpid says ECHILD.
    fn wait_status(&mut self, pid: u32) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local; WNOHANG never blocks.
            let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if rc == pid as libc::pid_t {
                self.0.retain(|&p| p != pid);
                return status;
            }
            let echild =
                rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
            assert!(
                rc == 0 || echild,
                "waitpid({pid}): {}",
                io::Error::last_os_error()
            );
            assert!(
                Instant::now() < deadline,
                "pid {pid} did not exit within {PATIENCE:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `pid`'s parent has exited, and had reaped it: it is gone, and no longer this
    /// test's to kill.
    fn reaped(&mut self, pid: u32) {
        assert!(
            reaped_by_its_parent(pid),
            "pid {pid} outlived the process that started it"
        );
        self.0.retain(|&p| p != pid);
    }

    /// Waits for `pid` to exit and returns its exit status.
    fn wait_exit(&mut self, pid: u32) -> i32 {
        let status = self.wait_status(pid);
        assert!(
            libc::WIFEXITED(status),
            "pid {pid} did not exit but ended with wait status {status:#x}"
        );
        libc::WEXITSTATUS(status)
    }
}

impl Drop for Descendants {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as in `signal`; failures (already gone) are fine here.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for &pid in &self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut status = 0;
            // SAFETY: as in `wait_exit`.
            while unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) } == 0
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A directory of the test's own for tcplb binaries (and scripts standing in for broken
/// ones), its pid file and its backends file; removed at the end.
struct Install {
    dir: PathBuf,
}

impl Install {
    fn new(name: &str) -> Install {
        let dir = std::env::temp_dir().join(format!("tcplb-upgrade-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the install directory");
        Install { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn pid_file(&self) -> PathBuf {
        self.path("tcplb.pid")
    }

    /// Puts `content` at `name` with permissions `mode`, the way an operator replaces a
    /// binary in use: written beside it, then renamed over it.
    ///
    /// The file that will be executed is written by `cp`, not by this process: a file this
    /// process had open for writing would be inherited by every child another test forks
    /// meanwhile, and executing it then fails with "Text file busy" until they exec.
    fn put(&self, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = self.path(name);
        let source = self.path(&format!(".{name}.src"));
        let temp = self.path(&format!(".{name}.new"));
        std::fs::write(&source, content).expect("write");
        let copied = std::process::Command::new("cp")
            .arg(&source)
            .arg(&temp)
            .status()
            .expect("run cp");
        assert!(copied.success(), "cp {}", source.display());
        let _ = std::fs::remove_file(&source);
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::fs::rename(&temp, &path).expect("rename into place");
        path
    }

    /// A fresh copy of the tcplb binary at `name`.
    fn put_binary(&self, name: &str) -> PathBuf {
        let binary = std::fs::read(env!("CARGO_BIN_EXE_tcplb")).expect("read the tcplb binary");
        self.put(name, &binary, 0o755)
    }

    /// A shell script at `name`.
    fn put_script(&self, name: &str, body: &str) -> PathBuf {
        self.put(name, format!("#!/bin/sh\n{body}\n").as_bytes(), 0o755)
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Starts the tcplb at `exe` with `args` and waits for it to listen.
fn start(exe: &Path, args: &[&str]) -> Tcplb {
    let mut tcplb = Tcplb::spawn_program(exe, args, |_| {});
    tcplb.wait_listening();
    tcplb
}

/// The process id in a pid file.
fn pid_in(path: &Path) -> u32 {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read pid file {}: {e}", path.display()));
    assert!(text.ends_with('\n'), "a whole line: {text:?}");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {}: {text:?}", path.display()))
}

/// Upgrades the process the pid file names (`SIGUSR2`) and waits until it has handed over
/// (the `n`-th hand-over in `tcplb`'s log, which every generation writes to); returns the
/// new process's id, which the pid file names by then.
fn upgrade(tcplb: &Tcplb, pid_file: &Path, n: usize) -> u32 {
    let old = pid_in(pid_file);
    signal(old, libc::SIGUSR2);
    let line = tcplb.wait_for_nth_log("serves (ready", n);
    let new: u32 = line
        .split("upgrade: pid ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    assert_ne!(new, old);
    assert_eq!(
        pid_in(pid_file),
        new,
        "the new process rewrote the pid file"
    );
    new
}

/// The start line of the `n`-th process of the chain.
fn start_line(tcplb: &Tcplb, n: usize) -> String {
    tcplb.wait_for_nth_log("listening on ", n)
}

/// The inodes of the sockets listening on `port` (IPv4, from /proc/net/tcp).
fn listening_sockets(port: u16) -> BTreeSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[1].ends_with(&port) && fields[3] == "0A")
                .then(|| fields[9].parse().expect("inode"))
        })
        .collect()
}

/// The inode of a socket this process holds.
fn inode(socket: &impl AsRawFd) -> u64 {
    let link =
        std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).expect("fd link");
    let link = link.to_str().expect("utf-8");
    link.trim_start_matches("socket:[")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|_| panic!("not a socket: {link}"))
}

/// Whether process `pid` holds a descriptor of the socket with this inode (an exited
/// process holds none).
fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|link| link.to_str() == Some(want.as_str()))
}

// ---------------------------------------------------------------------------------------
// Traffic

/// Clients opening short connections back to back, each sending a few bytes to an echo
/// backend and checking every byte that comes back; any error is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, completed, failures) = (
                    Arc::clone(&stop),
                    Arc::clone(&completed),
                    Arc::clone(&failures),
                );
                thread::spawn(move || {
                    let base = pattern(1000 + client as u64, 68 * 1024);
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let len = 1 + (i * 7919) % 4096;
                        let at = (i * 104_729) % (64 * 1024);
                        let data = &base[at..at + len];
                        match one_connection(addr, data) {
                            Ok(()) => {
                                completed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("client {client}, connection {i}: {e}")),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            completed,
            failures,
            threads,
            started: Instant::now(),
        }
    }

    /// Panics if any connection failed so far.
    fn check(&self) {
        // Copied out, so that the assertion does not poison the lock for the clients.
        let failures = self.failures.lock().expect("failures").clone();
        assert!(
            failures.is_empty(),
            "{} connections failed (of {} completed), the first: {:?}",
            failures.len(),
            self.completed.load(Ordering::Relaxed),
            &failures[..failures.len().min(10)]
        );
    }

    /// Waits until `n` more connections have completed (so some went through whoever
    /// serves now).
    fn wait_for(&self, n: u64) {
        let target = self.completed.load(Ordering::Relaxed) + n;
        wait_until(
            || {
                self.check();
                self.completed.load(Ordering::Relaxed) >= target
            },
            || {
                format!(
                    "only {} connections completed",
                    self.completed.load(Ordering::Relaxed)
                )
            },
        );
    }

    /// Stops the clients; returns how many connections completed and their rate per second.
    fn finish(mut self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("client thread");
        }
        self.check();
        let completed = self.completed.load(Ordering::Relaxed);
        (
            completed,
            completed as f64 / self.started.elapsed().as_secs_f64(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One short echo connection: connect, send `data`, half-close, read everything back.
fn one_connection(addr: SocketAddr, data: &[u8]) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    stream.write_all(data).map_err(|e| format!("write: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    let mut back = Vec::with_capacity(data.len());
    stream
        .read_to_end(&mut back)
        .map_err(|e| format!("read ({} of {} bytes back): {e}", back.len(), data.len()))?;
    if back != data {
        return Err(format!(
            "sent {} bytes, {} came back, {}",
            data.len(),
            back.len(),
            if back.len() == data.len() {
                "different"
            } else {
                "short"
            }
        ));
    }
    Ok(())
}

/// One long echo session streaming both ways until told to finish.
struct LongSession {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    writer: JoinHandle<io::Result<(u64, u64)>>,
    reader: JoinHandle<io::Result<(u64, u64)>>,
}

impl LongSession {
    fn open(addr: SocketAddr) -> LongSession {
        let stream = TcpStream::connect(addr).expect("connect the long session");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut reader_half = stream.try_clone().expect("clone");
        let mut writer_half = stream;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let writer = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || -> io::Result<(u64, u64)> {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                let mut sent = 0u64;
                let mut seed = 7u64;
                while !stop.load(Ordering::Relaxed) {
                    let chunk = pattern(seed, 16 * 1024);
                    writer_half.write_all(&chunk)?;
                    hasher.update(&chunk);
                    sent += chunk.len() as u64;
                    seed += 1;
                    // A steady stream, not a flood: about 3 MB/s.
                    thread::sleep(Duration::from_millis(5));
                }
                writer_half.shutdown(Shutdown::Write)?;
                Ok((sent, hasher.digest()))
            })
        };
        let reader = {
            let received = Arc::clone(&received);
            thread::spawn(move || -> io::Result<(u64, u64)> {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut len = 0u64;
                loop {
                    let n = reader_half.read(&mut buf)?;
                    if n == 0 {
                        return Ok((len, hasher.digest()));
                    }
                    hasher.update(&buf[..n]);
                    len += n as u64;
                    received.store(len, Ordering::Relaxed);
                }
            })
        };
        LongSession {
            stop,
            received,
            writer,
            reader,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until more than `bytes` have come back.
    fn wait_past(&self, bytes: u64) {
        wait_until(
            || self.received() > bytes || self.reader.is_finished(),
            || format!("the long session is stuck at {} bytes", self.received()),
        );
        assert!(!self.reader.is_finished(), "the long session ended early");
    }

    /// Half-closes and reads to the end: (sent, received), each (length, hash).
    fn finish(self) -> ((u64, u64), (u64, u64)) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .writer
            .join()
            .expect("writer")
            .expect("the long session's writes");
        let received = self
            .reader
            .join()
            .expect("reader")
            .expect("the long session's reads");
        (sent, received)
    }
}

/// Asks `/healthz` over and over; every answer must be 200, none refused.
struct HealthChecks {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecks {
    fn start(admin: SocketAddr) -> HealthChecks {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, answered, failures) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&failures),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match healthz(admin) {
                        Ok(response) if response.starts_with("HTTP/1.1 200 ") => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => failures.lock().expect("failures").push(response),
                        Err(e) => failures.lock().expect("failures").push(e.to_string()),
                    }
                    // A health checker's pace, a little quicker than most.
                    thread::sleep(Duration::from_millis(10));
                }
            })
        };
        HealthChecks {
            stop,
            answered,
            failures,
            thread: Some(thread),
        }
    }

    fn check(&self) {
        let failures = self.failures.lock().expect("failures").clone();
        assert!(failures.is_empty(), "/healthz failed: {failures:?}");
    }

    fn wait_for(&self, n: u64) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        wait_until(
            || {
                self.check();
                self.answered.load(Ordering::Relaxed) >= target
            },
            || "/healthz stopped answering".to_string(),
        );
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("health checker");
        }
        self.check();
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn healthz(admin: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: tcplb\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Tests

/// Five upgrades in a row while clients open thousands of connections a second: none is
/// refused, reset or corrupted; a session opened before the first upgrade streams through
/// the first process to its end, intact (a SIGTERM meanwhile does not cut it); the admin
/// endpoint answers 200 throughout; every old process lets go of every socket and exits 0
/// once drained.
#[test]
fn five_upgrades_under_load_lose_nothing() {
    become_subreaper();
    let install = Install::new("five");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let backend = Backend::start(1, echo());
    let mut tcplb = start(
        &exe,
        &[
            "--admin",
            "127.0.0.1:0",
            "--pid-file",
            arg(&pid_file),
            "--drain-timeout",
            "60s",
            "--upgrade-probation",
            "1s",
            &backend.arg(),
        ],
    );
    let first = tcplb.pid();
    assert_eq!(pid_in(&pid_file), first);
    let mut descendants = Descendants::default();
    let sockets = listening_sockets(tcplb.addr.port());
    assert_eq!(sockets.len(), test_workers(), "one socket per worker");
    let admin_socket = listening_sockets(tcplb.admin_addr().port());
    let every_socket: BTreeSet<u64> = sockets.union(&admin_socket).copied().collect();
    assert!(every_socket.iter().all(|&s| holds_socket(first, s)));

    let long = LongSession::open(tcplb.addr);
    long.wait_past(256 * 1024);
    let load = Load::start(tcplb.addr, 8);
    let health = HealthChecks::start(tcplb.admin_addr());
    load.wait_for(1000);
    let mut generations = vec![first];
    for n in 1..=5 {
        // A new binary, as `mv tcplb-new /usr/local/bin/tcplb` puts it there.
        install.put_binary("tcplb");
        let streamed = long.received();
        let new = upgrade(&tcplb, &pid_file, n);
        descendants.add(new);
        generations.push(new);
        assert!(
            start_line(&tcplb, n + 1).contains(&format!(
                "listening sockets taken over from pid {}",
                generations[n - 1]
            )),
            "{}",
            start_line(&tcplb, n + 1)
        );
        // The new process serves clients and the admin endpoint on the very same sockets;
        // the old one lets go of all of them.
        load.wait_for(1000);
        health.wait_for(5);
        assert_eq!(
            listening_sockets(tcplb.addr.port()),
            sockets,
            "no socket closed or added"
        );
        assert!(every_socket.iter().all(|&s| holds_socket(new, s)));
        let old = generations[n - 1];
        wait_until(
            || !every_socket.iter().any(|&s| holds_socket(old, s)),
            || format!("process {old} still holds a listening socket after handing over"),
        );
        // The long session goes on streaming through the first process.
        long.wait_past(streamed + 256 * 1024);
    }
    let (connections, rate) = load.finish();
    let answered = health.finish();
    assert!(
        tcplb.is_running(),
        "the first process drains its long session"
    );
    // Stopping the service (systemd signals every process of it) does not cut the first
    // process's sessions at once: it is draining already.
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log(&format!(
        "SIGTERM: draining already (since the upgrade to pid {})",
        generations[1]
    ));
    let streamed = long.received();
    long.wait_past(streamed + 256 * 1024);
    let (sent, received) = long.finish();
    assert_eq!(received, sent, "the long session's bytes came back intact");
    assert_eq!(
        tcplb.wait_exit(PATIENCE),
        Some(0),
        "the first process exits 0"
    );
    for &pid in &generations[1..5] {
        assert_eq!(
            descendants.wait_exit(pid),
            0,
            "process {pid} exits 0 after its drain"
        );
    }
    let last = generations[5];
    assert_eq!(pid_in(&pid_file), last);
    signal(last, libc::SIGTERM);
    assert_eq!(descendants.wait_exit(last), 0);
    assert!(
        !pid_file.exists(),
        "the last process removed its pid file at exit"
    );
    eprintln!(
        "5 upgrades: {connections} connections ({rate:.0}/s), {answered} health checks, a \
         {} KiB session, none lost",
        sent.0 >> 10
    );
}

/// Upgrades that fail in every way the new binary can fail leave the old process serving,
/// nothing lost, and a good upgrade afterwards still works.
#[test]
fn failed_upgrades_leave_the_old_process_serving() {
    become_subreaper();
    let install = Install::new("failed");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let backend = Backend::start(1, echo());
    let backends_file = install.path("backends");
    std::fs::write(&backends_file, format!("{}\n", backend.arg())).expect("backends file");
    let tcplb = start(
        &exe,
        &[
            "--pid-file",
            arg(&pid_file),
            "--backends-file",
            arg(&backends_file),
            "--upgrade-timeout",
            "1s",
        ],
    );
    let pid = tcplb.pid();
    let mut descendants = Descendants::default();
    let sockets = listening_sockets(tcplb.addr.port());
    let load = Load::start(tcplb.addr, 4);
    load.wait_for(200);

    let exe_text = arg(&exe).to_string();
    let pid_text = arg(&pid_file).to_string();
    let binary = std::fs::read(env!("CARGO_BIN_EXE_tcplb")).expect("binary");
    type Setup<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Setup, String)> = vec![
        (
            // It even wrote its id to the pid file before it failed.
            "a binary that exits 1",
            Box::new(|| {
                install.put_script("tcplb", &format!("echo $$ > {pid_text}\nexit 1"));
            }),
            "exited with status 1 before it was ready".to_string(),
        ),
        (
            "a file that is not executable",
            Box::new(|| {
                install.put("tcplb", &binary, 0o644);
            }),
            format!("cannot run {exe_text}: Permission denied"),
        ),
        (
            "no file at all",
            Box::new(|| std::fs::remove_file(&exe).expect("remove")),
            format!("cannot run {exe_text}: No such file or directory"),
        ),
        (
            "a binary that never says it is ready",
            Box::new(|| {
                install.put_script("tcplb", "exec sleep 60");
            }),
            "did not say it serves within 1s; killed it".to_string(),
        ),
        (
            "a binary killed before it is ready",
            Box::new(|| {
                install.put_script("tcplb", "kill -9 $$");
            }),
            "was killed by signal 9 before it was ready".to_string(),
        ),
        (
            "a backends file that no longer parses",
            Box::new(|| {
                install.put_binary("tcplb");
                std::fs::write(&backends_file, "10.0.0.1:80\nnot a backend\n").expect("write");
            }),
            "exited with status 2 before it was ready".to_string(),
        ),
    ];
    for (n, (what, setup, expected)) in cases.iter().enumerate() {
        setup();
        signal(pid, libc::SIGUSR2);
        let line = tcplb.wait_for_nth_log("upgrade failed: ", n + 1);
        assert!(
            line.contains(expected) && line.ends_with(&format!("still serving (pid {pid})")),
            "{what}: {line}"
        );
        assert_eq!(
            pid_in(&pid_file),
            pid,
            "{what}: the pid file names the old process"
        );
        assert_eq!(listening_sockets(tcplb.addr.port()), sockets, "{what}");
        load.wait_for(200);
    }
    assert!(
        tcplb
            .logs()
            .iter()
            .any(|l| l.contains("line 2: invalid backend 'not a backend'")),
        "the new process said what was wrong with the file"
    );

    // Fixed: the upgrade goes through.
    std::fs::write(&backends_file, format!("{}\n", backend.arg())).expect("backends file");
    install.put_binary("tcplb");
    let new = upgrade(&tcplb, &pid_file, 1);
    descendants.add(new);
    load.wait_for(200);
    let (connections, _) = load.finish();
    eprintln!(
        "{} failed upgrades, then a good one: {connections} connections, none lost",
        cases.len()
    );
    assert_eq!(listening_sockets(tcplb.addr.port()), sockets);
}

/// Upgrades to a binary that runs a different number of workers (an operator's wrapper, a
/// new default, `--workers auto` on a machine that changed): every socket of the group is
/// kept (closing one would reset the clients queued on it), more are added when there are
/// more workers, and nothing is lost. A single socket is shared by the workers.
#[test]
fn upgrades_that_change_the_worker_count_keep_every_socket() {
    become_subreaper();
    for (from, steps) in [(2, &[3, 1, 2][..]), (1, &[2][..])] {
        let install = Install::new(&format!("workers-{from}"));
        let exe = install.put_binary("tcplb-0");
        let pid_file = install.pid_file();
        let backend = Backend::start(1, echo());
        let tcplb = start(
            &exe,
            &[
                "--workers",
                &from.to_string(),
                "--pid-file",
                arg(&pid_file),
                &backend.arg(),
            ],
        );
        let mut descendants = Descendants::default();
        let port = tcplb.addr.port();
        let mut sockets = listening_sockets(port);
        assert_eq!(sockets.len(), from);
        let load = Load::start(tcplb.addr, 4);
        load.wait_for(200);
        let mut current = exe;
        for (n, &workers) in steps.iter().enumerate() {
            // The binary at the path the running process was started from becomes a
            // wrapper that runs a fresh copy with another --workers.
            let next = install.put_binary(&format!("tcplb-{}", n + 1));
            install.put_script(
                current.file_name().and_then(|n| n.to_str()).expect("name"),
                &format!(
                    r#"prev=
for a; do
  shift
  if [ "$prev" = --workers ]; then set -- "$@" {workers}; else set -- "$@" "$a"; fi
  prev=$a
done
exec {} "$@""#,
                    arg(&next)
                ),
            );
            current = next;
            let new = upgrade(&tcplb, &pid_file, n + 1);
            descendants.add(new);
            let line = start_line(&tcplb, n + 2);
            let after = listening_sockets(port);
            let expected_note = match (after.len(), workers) {
                (1, 1) => String::new(),
                (1, _) => "; the workers share the listening socket".to_string(),
                (s, w) if s > w => format!("; {s} listening sockets over {w} worker"),
                _ => String::new(),
            };
            assert!(
                line.contains(&format!("{workers} worker")) && line.contains(&expected_note),
                "{from} then {workers} workers: {line}"
            );
            assert!(
                after.is_superset(&sockets),
                "a socket was closed: {sockets:?} then {after:?}"
            );
            let expected_count = if sockets.len() == 1 {
                1
            } else {
                sockets.len().max(workers)
            };
            assert_eq!(
                after.len(),
                expected_count,
                "{from} then {workers} workers: {line}"
            );
            sockets = after;
            load.wait_for(300);
        }
        let (connections, _) = load.finish();
        eprintln!("{from} then {steps:?} workers: {connections} connections, none lost");
    }
}

/// Started the way systemd starts a socket-activated service, tcplb serves on the sockets
/// it is given (the one at the --admin address for the admin endpoint) and binds none; a
/// client that connects while no tcplb runs waits in the socket systemd keeps and is
/// served by the next one; an upgrade hands systemd's sockets on.
#[test]
fn socket_activation_serves_on_inherited_sockets_and_restarts_refuse_nothing() {
    become_subreaper();
    let backend = Backend::start(1, echo());
    // What systemd would hold: tcplb.socket's two ListenStream= sockets.
    let clients = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (client_addr, admin_addr) = (
        clients.local_addr().expect("addr"),
        admin.local_addr().expect("addr"),
    );
    let install = Install::new("activation");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let workers = test_workers().to_string();
    let args = [
        "--listen",
        &client_addr.to_string(),
        "--admin",
        &admin_addr.to_string(),
        "--workers",
        &workers,
        "--pid-file",
        arg(&pid_file),
        // No probation: the old process hands over as soon as the new one serves.
        "--upgrade-probation",
        "0",
        &backend.arg(),
    ]
    .map(str::to_string);
    // The admin socket comes first: they are told apart by address, not by order.
    let activate = || {
        let mut tcplb = Tcplb::spawn_command(launcher(&exe, &args, [&admin, &clients]));
        tcplb.wait_listening();
        tcplb
    };
    let echo_once = |seed| {
        let data = pattern(seed, 3000);
        let stream = TcpStream::connect(client_addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        assert!(
            echo_through(stream, &data) == data,
            "echo through {client_addr}"
        );
    };

    let mut first = activate();
    assert_eq!(first.addr, client_addr);
    let line = start_line(&first, 1);
    assert!(line.contains("listening sockets from systemd"), "{line}");
    assert_eq!(
        first.count_logs("is not among the sockets"),
        0,
        "--listen matches"
    );
    for seed in 0..10 {
        echo_once(seed);
    }
    assert_eq!(
        http_request(admin_addr, "GET /healthz HTTP/1.1\r\n\r\n").0,
        200
    );
    // It binds nothing: the only sockets listening on either port are the launcher's, and
    // tcplb holds them.
    for (socket, port) in [
        (inode(&clients), client_addr.port()),
        (inode(&admin), admin_addr.port()),
    ] {
        assert_eq!(listening_sockets(port), BTreeSet::from([socket]));
        assert!(holds_socket(first.pid(), socket));
    }

    // Stopped, it refuses nothing: the socket stays open here, as in systemd.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(PATIENCE), Some(0));
    let waiting = TcpStream::connect(client_addr).expect("connect while no tcplb runs");
    waiting.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let data = pattern(99, 5000);
    let mut second = activate();
    assert!(
        echo_through(waiting, &data) == data,
        "the waiting client is served"
    );

    // An upgrade hands systemd's sockets on, still binding nothing.
    let new = upgrade(&second, &pid_file, 1);
    let mut descendants = Descendants::default();
    descendants.add(new);
    assert!(
        start_line(&second, 2).contains(&format!(
            "listening sockets taken over from pid {}",
            second.pid()
        )),
        "{}",
        start_line(&second, 2)
    );
    assert_eq!(second.wait_exit(PATIENCE), Some(0));
    for seed in 100..110 {
        echo_once(seed);
    }
    assert_eq!(
        listening_sockets(client_addr.port()),
        BTreeSet::from([inode(&clients)])
    );
    assert!(holds_socket(new, inode(&clients)) && holds_socket(new, inode(&admin)));
    assert_eq!(
        http_request(admin_addr, "GET /healthz HTTP/1.1\r\n\r\n").0,
        200
    );
    signal(new, libc::SIGTERM);
    assert_eq!(descendants.wait_exit(new), 0);
}

/// Runs tcplb the way systemd runs a socket-activated service: `sockets` become descriptors
/// 3, 4, ... and `LISTEN_FDS`/`LISTEN_PID` name them. A shell sets `LISTEN_PID` to its own
/// pid, which the `exec` hands on to tcplb.
fn launcher<const N: usize>(exe: &Path, args: &[String], sockets: [&TcpListener; N]) -> Command {
    let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(exe)
        .args(args)
        .env("LISTEN_FDS", N.to_string())
        .env("RUST_LOG", "info");
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close) on numbers computed before
    // the fork. (Should one of 3, 4, ... be the pipe std uses to report a failed exec, that
    // report is lost; the exec of /bin/sh does not fail.)
    unsafe {
        command.pre_exec(move || {
            // Out of the way first, so that moving one cannot overwrite another.
            let mut high = [0; N];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD, 64);
                if high[i] == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in high.iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) == -1 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    command
}

/// systemd (`Type=notify`) hears `READY=1` once tcplb serves, `MAINPID=` of the new process
/// when an upgrade hands over (so it follows the service instead of stopping it when the
/// old process exits), and `STOPPING=1` when the service drains; nothing else.
#[test]
fn systemd_hears_ready_the_new_main_pid_and_stopping() {
    become_subreaper();
    let install = Install::new("notify");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let notify_socket = install.path("notify");
    let manager = UnixDatagram::bind(&notify_socket).expect("bind the notification socket");
    manager.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let backend = Backend::start(1, echo());
    let mut tcplb = Tcplb::spawn_program(
        &exe,
        &[
            "--pid-file",
            arg(&pid_file),
            "--upgrade-probation",
            "1s",
            &backend.arg(),
        ],
        |c| {
            c.env("NOTIFY_SOCKET", &notify_socket);
        },
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = manager.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    tcplb.wait_listening();
    let new = upgrade(&tcplb, &pid_file, 1);
    let mut descendants = Descendants::default();
    descendants.add(new);
    // Once the probation has passed: until then, the old process is the main one.
    assert_eq!(next(), format!("MAINPID={new}"));
    tcplb.wait_for_log(&format!(
        "upgrade: pid {new} has served through its probation (1s); handing over"
    ));
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
    signal(new, libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(descendants.wait_exit(new), 0);
    manager.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    let more = manager.recv(&mut buf);
    assert!(
        matches!(&more, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "one notification too many: {:?}",
        more.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
}

/// A pid file that cannot be written is a start-up failure naming it (exit 1).
#[test]
fn a_pid_file_that_cannot_be_written_stops_the_start() {
    let (code, _, stderr) = run_cli(&[
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        "/nonexistent/tcplb/tcplb.pid",
        "127.0.0.1:9",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "cannot write pid file /nonexistent/tcplb/tcplb.pid: No such file or directory"
        ),
        "{stderr}"
    );
}

/// SIGTERM while an upgrade is under way gives the upgrade up: the new process is sent
/// SIGTERM too, and the old one drains, reaps it and exits as usual.
#[test]
fn a_sigterm_during_an_upgrade_gives_it_up() {
    become_subreaper();
    let install = Install::new("sigterm");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let backend = Backend::start(1, echo());
    let mut tcplb = start(&exe, &["--pid-file", arg(&pid_file), &backend.arg()]);
    // A new binary that says nothing (within the default 30 s).
    install.put_script("tcplb", "exec sleep 60");
    tcplb.signal(libc::SIGUSR2);
    let new = started_pid(&tcplb, 1);
    let mut descendants = Descendants::default();
    descendants.add(new);
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log(&format!("SIGTERM: giving up the upgrade to pid {new}"));
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
    assert!(
        !pid_file.exists(),
        "the pid file named the old process, which removed it"
    );
    descendants.reaped(new);
    tcplb.wait_for_log(&format!(
        "the abandoned new process (pid {new}) was killed by signal {}",
        libc::SIGTERM
    ));
}

/// The id of the process an upgrade started, from the old process's `n`-th "upgrading:
/// started" line.
fn started_pid(tcplb: &Tcplb, n: usize) -> u32 {
    let line = tcplb.wait_for_nth_log("SIGUSR2: upgrading: started", n);
    line.split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// Whether `pid` is nobody's child this test can wait for: ended and reaped by its parent
/// (after that parent has exited, an unreaped one would be this subreaper's child).
fn reaped_by_its_parent(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local; WNOHANG never blocks.
    let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

/// A SIGTERM during an upgrade whose new process ignores SIGTERM (or hangs in start-up,
/// its signals not yet handled): the old process kills it (SIGKILL, after a grace) and
/// reaps it before it exits itself. No orphan is left holding the listening sockets, and
/// once the old process has exited, the port refuses new clients instead of queueing them
/// where nobody will ever accept them.
#[test]
fn a_sigterm_during_an_upgrade_leaves_no_orphan_holding_the_port() {
    become_subreaper();
    let install = Install::new("orphan");
    let exe = install.put_binary("tcplb");
    let backend = Backend::start(1, echo());
    let mut tcplb = start(&exe, &[&backend.arg()]);
    let addr = tcplb.addr;
    let sockets = listening_sockets(addr.port());
    // The sockets it is handed stay open in `sleep` (inherited descriptors survive exec),
    // and so does the ignored SIGTERM.
    install.put_script("tcplb", "trap '' TERM\nexec sleep 600");
    tcplb.signal(libc::SIGUSR2);
    let new = started_pid(&tcplb, 1);
    let mut descendants = Descendants::default();
    descendants.add(new);
    // A SIGTERM before the trap is set would kill the shell: wait for the exec.
    wait_until(
        || std::fs::read_to_string(format!("/proc/{new}/comm")).is_ok_and(|c| c == "sleep\n"),
        || format!("pid {new} does not run sleep"),
    );
    assert!(
        sockets.iter().all(|&s| holds_socket(new, s)),
        "the new process holds the listening sockets"
    );
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
    descendants.reaped(new);
    match TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a client connected to {addr}, where nobody serves"),
    }
    assert!(listening_sockets(addr.port()).is_empty());
    tcplb.wait_for_log(&format!(
        "the abandoned new process (pid {new}) has not ended 2s after SIGTERM; killing it"
    ));
    tcplb.wait_for_log(&format!(
        "the abandoned new process (pid {new}) was killed by signal {}",
        libc::SIGKILL
    ));
}

/// Echoes `n` short connections through `addr`, checking every byte.
fn echo_connections(addr: SocketAddr, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let data = pattern(seed, 1000 + seed as usize * 37);
        one_connection(addr, &data).unwrap_or_else(|e| panic!("connection {seed}: {e}"));
    }
}

/// An upgrade to a binary that dies just after it says it serves: the old process, on
/// probation, accepts nothing meanwhile (the new one takes every client and the admin
/// endpoint) but keeps every socket; when the new one dies, it takes over again: it serves
/// clients and `/healthz`, the pid file names it, and its log says how the new one ended.
/// A SIGUSR2 to the old process on probation is refused; a SIGTERM ends the probation early
/// (the new process keeps the service, the old one drains and exits).
#[test]
fn an_upgrade_that_dies_on_probation_hands_back_to_the_old_process() {
    become_subreaper();
    let install = Install::new("probation");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let backend = Backend::start(1, echo());
    let mut tcplb = start(
        &exe,
        &[
            "--admin",
            "127.0.0.1:0",
            "--pid-file",
            arg(&pid_file),
            // Long: every probation here ends on an event, none by the clock.
            "--upgrade-probation",
            "120s",
            &backend.arg(),
        ],
    );
    let old = tcplb.pid();
    let addr = tcplb.addr;
    let sockets = listening_sockets(addr.port());
    let admin_socket = listening_sockets(tcplb.admin_addr().port());
    let mut descendants = Descendants::default();
    let accepted = |tcplb: &Tcplb| tcplb.metrics().get("tcplb_connections_accepted_total", &[]);
    echo_connections(addr, 0..30);
    assert_eq!(accepted(&tcplb), 30.0);

    install.put_binary("tcplb");
    let new = upgrade(&tcplb, &pid_file, 1);
    descendants.add(new);
    // On probation: every client and the admin endpoint go to the new process (its count
    // is exactly these; the old one's would include the 30 above), yet the old one holds
    // every socket still.
    echo_connections(addr, 100..120);
    assert_eq!(accepted(&tcplb), 20.0, "the old process accepted some");
    for &socket in sockets.iter().chain(&admin_socket) {
        assert!(
            holds_socket(old, socket),
            "the old process let go of a socket"
        );
    }
    signal(old, libc::SIGUSR2);
    tcplb.wait_for_log(&format!(
        "SIGUSR2: not upgrading: pid {new} serves, on probation"
    ));
    // A reload for the main process (systemd's idea of it) reaches the new one too: both
    // write to this log.
    signal(old, libc::SIGHUP);
    tcplb.wait_for_log(&format!("passing the signal on to pid {new}"));
    tcplb.wait_for_nth_log("SIGHUP: reloading", 2);

    // The new binary dies.
    signal(new, libc::SIGKILL);
    let line = tcplb.wait_for_log("taking over again");
    assert!(
        line.contains(&format!(
            "the new process (pid {new}) was killed by signal 9"
        )) && line.ends_with(&format!("serving (pid {old})")),
        "{line}"
    );
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert_eq!(pid_in(&pid_file), old, "the pid file names the old process");
    echo_connections(addr, 200..220);
    // The old process answers again: its own count, the 30 before and the 20 since.
    assert_eq!(accepted(&tcplb), 50.0);
    assert_eq!(
        http_request(tcplb.admin_addr(), "GET /healthz HTTP/1.1\r\n\r\n").0,
        200
    );
    assert_eq!(
        listening_sockets(addr.port()),
        sockets,
        "no socket closed or added"
    );
    assert!(tcplb.is_running());

    // Another upgrade, retired by hand: a SIGTERM on probation hands over at once.
    install.put_binary("tcplb");
    let second = upgrade(&tcplb, &pid_file, 2);
    descendants.add(second);
    tcplb.signal(libc::SIGTERM);
    tcplb.wait_for_log(&format!(
        "SIGTERM: ending the probation of pid {second} early; handing over"
    ));
    assert_eq!(tcplb.wait_exit(PATIENCE), Some(0));
    echo_connections(addr, 300..320);
    assert_eq!(pid_in(&pid_file), second);
    assert!(sockets.iter().all(|&s| holds_socket(second, s)));

    // A new process that exits 0 on probation stopped in order (here a SIGTERM; or it
    // handed over to an upgrade of its own): the old one does not take over again.
    install.put_binary("tcplb");
    let third = upgrade(&tcplb, &pid_file, 3);
    descendants.add(third);
    signal(third, libc::SIGTERM);
    tcplb.wait_for_log(&format!(
        "upgrade: pid {third} exited with status 0 during its probation: it stopped in order"
    ));
    assert_eq!(descendants.wait_exit(second), 0);
    // (Reaped by its parent, which read its exit status.)
    descendants.reaped(third);
    assert_eq!(tcplb.count_logs("taking over again: serving"), 1);
}

/// A config file's three services, each on its own port with its own pool, upgraded twice
/// under load on all three: every listener is handed over (the same sockets, named by
/// service), no connection fails on any of them, and each service still reaches its own
/// pool.
#[test]
fn an_upgrade_with_three_services_hands_every_listener_over_under_load() {
    become_subreaper();
    let install = Install::new("three");
    let exe = install.put_binary("tcplb");
    let pid_file = install.pid_file();
    let names = ["web", "cache", "db"];
    let backends: Vec<Arc<Backend>> = (0..3).map(|i| Backend::start(i + 1, echo())).collect();
    let mut toml = format!(
        "[global]\nadmin = \"127.0.0.1:0\"\npid-file = \"{}\"\ndrain-timeout = \"60s\"\n\
         upgrade-probation = \"1s\"\n\n",
        arg(&pid_file)
    );
    for (name, backend) in names.iter().zip(&backends) {
        toml.push_str(&format!(
            "[services.{name}]\nlisten = [\"127.0.0.1:0\"]\npool = \"{name}\"\n\n\
             [pools.{name}]\nbackends = [\"{}\"]\n\n",
            backend.arg()
        ));
    }
    let tcplb = Launch::config(&toml).program(&exe).start();
    let mut descendants = Descendants::default();
    let addrs: Vec<SocketAddr> = names.iter().map(|n| tcplb.service_addr(n)).collect();
    let sockets: Vec<BTreeSet<u64>> = addrs.iter().map(|a| listening_sockets(a.port())).collect();
    for set in &sockets {
        assert_eq!(set.len(), test_workers(), "one socket per worker");
    }
    let loads: Vec<Load> = addrs.iter().map(|&a| Load::start(a, 2)).collect();
    loads.iter().for_each(|l| l.wait_for(200));
    let mut previous = tcplb.pid();
    for n in 1..=2 {
        install.put_binary("tcplb");
        let accepted: Vec<usize> = backends
            .iter()
            .map(|b| b.accepted.load(Ordering::SeqCst))
            .collect();
        let new = upgrade(&tcplb, &pid_file, n);
        descendants.add(new);
        for (i, addr) in addrs.iter().enumerate() {
            // The same sockets, now the new process's (named for its service in the
            // hand-over, so each goes to the service that had it).
            assert_eq!(listening_sockets(addr.port()), sockets[i], "{}", names[i]);
            assert!(sockets[i].iter().all(|&s| holds_socket(new, s)));
            let line =
                tcplb.wait_for_nth_log(&format!("service {}: listening on ", names[i]), n + 1);
            assert!(line.contains(&addr.to_string()), "{line}");
        }
        loads.iter().for_each(|l| l.wait_for(200));
        wait_until(
            || !sockets.iter().flatten().any(|&s| holds_socket(previous, s)),
            || format!("process {previous} still holds a listening socket after handing over"),
        );
        // Each service's load kept reaching its own pool.
        for (b, before) in backends.iter().zip(&accepted) {
            assert!(b.accepted.load(Ordering::SeqCst) > before + 100);
        }
        previous = new;
    }
    let mut total = 0;
    for load in loads {
        total += load.finish().0;
    }
    let last = pid_in(&pid_file);
    signal(last, libc::SIGTERM);
    assert_eq!(descendants.wait_exit(last), 0);
    eprintln!("2 upgrades of 3 services: {total} connections, none failed");
}
