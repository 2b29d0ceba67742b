//! Shared test machinery: the real `tcplb` binary started on an ephemeral port, and real
//! backend servers on loopback (echo, identify-and-hold, digest-after-EOF, streamer,
//! resetter), plus byte patterns and hashes to check every byte that crosses.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Bytes

/// A deterministic pseudo-random byte pattern (xorshift), different per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Reads until EOF, returning (length, hash), streaming so huge transfers need no memory.
pub fn read_digest(stream: &mut impl Read) -> io::Result<(u64, u64)> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((len, hasher.digest())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Digest of `pattern(seed, len)` without holding it all: the streamer's output.
pub fn stream_digest(seed: u64, len: u64) -> (u64, u64) {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let chunk = pattern(seed, 1 << 20);
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    (len, hasher.digest())
}

// ---------------------------------------------------------------------------------------
// The balancer under test

/// A running `tcplb` process; killed when dropped.
pub struct Tcplb {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Tcplb {
    /// Starts `tcplb --listen 127.0.0.1:0 ARGS...` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Tcplb {
        Self::start_with(args, |_| {})
    }

    /// As [`Tcplb::start`], letting the caller adjust the command first.
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Tcplb {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tcplb"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn tcplb");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new((Mutex::new(Vec::<String>::new()), Condvar::new()));
        let sink = Arc::clone(&logs);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, changed) = &*sink;
                lines.lock().expect("log lock").push(line);
                changed.notify_all();
            }
        });
        let mut tcplb = Tcplb {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            logs,
        };
        let line = tcplb.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        tcplb.addr = addr;
        tcplb
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.0.lock().expect("log lock").clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let (lines, changed) = &*self.logs;
        let deadline = Instant::now() + PATIENCE;
        let mut guard = lines.lock().expect("log lock");
        loop {
            if let Some(line) = guard.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needle:?} within {PATIENCE:?}; logs:\n{}",
                guard.join("\n")
            );
            guard = changed.wait_timeout(guard, left).expect("log lock").0;
        }
    }

    /// Counts log lines containing `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:")
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name (which is in parentheses): utime is field 14.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no memory effects; _SC_CLK_TCK is a valid name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our own child's.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "tcplb did not exit within {within:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The admin endpoint's address (tcplb started with `--admin 127.0.0.1:0`).
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("admin on http://");
        line.split("admin on http://")
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no admin address in {line:?}"))
    }

    /// `GET path` on the admin endpoint: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_request(
            self.admin_addr(),
            &format!("GET {path} HTTP/1.1\r\nHost: tcplb\r\n\r\n"),
        )
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to tcplb");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        stream
    }
}

impl Drop for Tcplb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a raw HTTP request and reads the response to EOF: (status, body).
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to admin");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A scratch file path unique to this test process and `name`.
pub fn scratch_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tcplb-test-{}-{name}", std::process::id()))
}

/// A numeric field (in kB) of /proc/PID/status.
pub fn proc_status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Runs the binary to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tcplb"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run tcplb");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Backends

/// What a backend server does with each connection.
pub type Handler = Arc<dyn Fn(TcpStream, &Backend) + Send + Sync>;

/// A backend server on 127.0.0.1, a thread per connection; counts what it sees.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: AtomicUsize,
    /// Connections open right now.
    pub active: AtomicUsize,
    pub id: u8,
    stop: AtomicBool,
    pub counter: AtomicU64,
    /// Clones of open connections by number, so `kill` can cut them; a connection's clone
    /// is dropped as soon as its handler returns, so it never holds the socket open.
    conns: Mutex<std::collections::HashMap<usize, TcpStream>>,
    acceptor: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Backend {
    /// Starts a backend whose connections are served by `handler`.
    pub fn start(id: u8, handler: Handler) -> Arc<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        Self::serve(id, listener, handler)
    }

    /// Starts a backend on a given listener.
    pub fn serve(id: u8, listener: TcpListener, handler: Handler) -> Arc<Backend> {
        let backend = Arc::new(Backend {
            addr: listener.local_addr().expect("addr"),
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            id,
            stop: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            conns: Mutex::new(std::collections::HashMap::new()),
            acceptor: Mutex::new(None),
        });
        let me = Arc::clone(&backend);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if me.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let number = me.accepted.fetch_add(1, Ordering::SeqCst);
                me.active.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    me.conns.lock().expect("conns").insert(number, clone);
                }
                let (me, handler) = (Arc::clone(&me), Arc::clone(&handler));
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        handler(stream, &me);
                        me.conns.lock().expect("conns").remove(&number);
                        me.active.fetch_sub(1, Ordering::SeqCst);
                    })
                    .expect("spawn backend connection thread");
            }
        });
        *backend.acceptor.lock().expect("acceptor") = Some(acceptor);
        backend
    }

    /// Like a crashed server: the port closes (connects are refused) and every open
    /// connection is cut.
    pub fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.lock().expect("acceptor").take() {
            acceptor.join().expect("acceptor thread");
        }
        for (_, conn) in self.conns.lock().expect("conns").drain() {
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// The `HOST:PORT` argument for tcplb.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Stops accepting (the listener closes after one more connection attempt).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    /// Waits until `active` equals `n`.
    pub fn wait_active(&self, n: usize) {
        wait_until(
            || self.active.load(Ordering::SeqCst) == n,
            || {
                format!(
                    "backend {} has {} active, wanted {n}",
                    self.id,
                    self.active.load(Ordering::SeqCst)
                )
            },
        );
    }
}

/// Polls `done` until it holds (the condition is observable state, not elapsed time).
pub fn wait_until(mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {}", why());
        thread::sleep(Duration::from_millis(5));
    }
}

/// Echoes every byte back until EOF, then closes.
pub fn echo() -> Handler {
    Arc::new(|mut stream, _| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Sends its id byte, then holds the connection until the client closes.
pub fn identify_and_hold() -> Handler {
    Arc::new(|mut stream, me| {
        if stream.write_all(&[me.id]).is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// Reads until EOF, then answers "LEN HASH\n" and closes.
pub fn digest_after_eof() -> Handler {
    Arc::new(|mut stream, _| {
        if let Ok((len, hash)) = read_digest(&mut stream) {
            let _ = stream.write_all(format!("{len} {hash}\n").as_bytes());
        }
    })
}

/// Writes `pattern(seed, len)` and closes; counts bytes written in `counter`.
pub fn streamer(seed: u64, len: u64) -> Handler {
    Arc::new(move |mut stream, me| {
        let chunk = pattern(seed, 1 << 20);
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            // Small writes so the counter tracks how far the kernel let us get.
            for piece in chunk[..n].chunks(64 * 1024) {
                if stream.write_all(piece).is_err() {
                    return;
                }
                me.counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
            left -= n as u64;
        }
    })
}

/// An address where nothing listens: connects to it are refused.
pub fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Connects through tcplb, reads the backend's id byte.
pub fn connect_and_identify(tcplb: &Tcplb) -> (TcpStream, u8) {
    let mut stream = tcplb.connect();
    let mut id = [0u8; 1];
    stream.read_exact(&mut id).expect("backend id");
    (stream, id[0])
}

/// Ends a held session cleanly and waits until tcplb has closed it: after our FIN the
/// backend closes, and tcplb closes us only once the session (and its lease) is gone.
pub fn close_and_wait(mut stream: TcpStream) {
    // Fails only if tcplb already reset the connection, which ends it just as well.
    let _ = stream.shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

/// Sends `data` and reads the same number of bytes back concurrently; returns what came back.
pub fn echo_through(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut reader = stream.try_clone().expect("clone");
    let mut writer = stream;
    thread::scope(|s| {
        s.spawn(move || {
            writer.write_all(data).expect("write");
            writer.shutdown(Shutdown::Write).expect("shutdown");
        });
        let mut back = Vec::with_capacity(data.len());
        reader.read_to_end(&mut back).expect("read echo");
        back
    })
}
