//! Shared test machinery: the real `tcplb` binary started on an ephemeral port, and real
//! backend servers on loopback (echo, identify-and-hold, digest-after-EOF, streamer,
//! resetter), plus byte patterns and hashes to check every byte that crosses.
#![allow(dead_code)]

pub mod proxy;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Worker threads each tcplb under test runs, unless the test says: `TCPLB_TEST_WORKERS`
/// (CI runs the suite once with 1 and once with 2), else 1.
pub fn test_workers() -> usize {
    std::env::var("TCPLB_TEST_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

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
    logs: Arc<(Mutex<Logs>, Condvar)>,
}

/// The log lines read from a tcplb's stderr so far, and whether it has closed (every
/// process holding it has exited: no line will come any more).
#[derive(Default)]
struct Logs {
    lines: Vec<String>,
    closed: bool,
}

impl Tcplb {
    /// Starts `tcplb --listen 127.0.0.1:0 ARGS...` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Tcplb {
        Self::start_with(args, |_| {})
    }

    /// As [`Tcplb::start`], letting the caller adjust the command first.
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Tcplb {
        let mut tcplb = Self::spawn_with(args, adjust);
        tcplb.wait_listening();
        tcplb
    }

    /// Starts the process without waiting for it to listen (see [`Tcplb::wait_listening`]).
    pub fn spawn_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Tcplb {
        Self::spawn_program(env!("CARGO_BIN_EXE_tcplb"), args, adjust)
    }

    /// As [`Tcplb::spawn_with`], running `program` (a copy of the binary, or a launcher).
    pub fn spawn_program(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Tcplb {
        let mut command = Command::new(program);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        if !args.contains(&"--workers") {
            command.args(["--workers", &test_workers().to_string()]);
        }
        command.env("RUST_LOG", "info").stdout(Stdio::null());
        adjust(&mut command);
        Self::spawn_command(command)
    }

    /// Starts a command that runs tcplb (arguments and all), capturing its log lines.
    pub fn spawn_command(mut command: Command) -> Tcplb {
        command.stdin(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn tcplb");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new((Mutex::new(Logs::default()), Condvar::new()));
        let sink = Arc::clone(&logs);
        thread::spawn(move || {
            let (logs, changed) = &*sink;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                logs.lock().expect("log lock").lines.push(line);
                changed.notify_all();
            }
            logs.lock().expect("log lock").closed = true;
            changed.notify_all();
        });
        Tcplb {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            logs,
        }
    }

    /// Waits for the "listening on" line and takes the address from it.
    pub fn wait_listening(&mut self) {
        let line = self.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        self.addr = addr;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.0.lock().expect("log lock").lines.clone()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_nth_log(needle, 1)
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

impl Tcplb {
    /// Starts tcplb with its open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Tcplb {
        use std::os::unix::process::CommandExt;
        Tcplb::start_with(args, |command| {
            // SAFETY: setrlimit is async-signal-safe and touches only the struct passed,
            // which the closure owns; nothing else runs between fork and exec here.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        })
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

/// A scratch file (see `scratch_path`), removed when the test ends.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let path = scratch_path(name);
        let _ = std::fs::remove_file(&path);
        Scratch(path)
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> String {
        self.0.to_str().expect("utf-8 path").to_string()
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
    /// Starts a backend whose connections are served by `handler`. Its accept queue is
    /// deep (4096, the kernel's cap here, not std's 128): tests open thousands of sessions
    /// in a burst, and on a loaded machine an overflowing queue drops handshakes and can
    /// end a connection tcplb already counts as made in a reset.
    pub fn start(id: u8, handler: Handler) -> Arc<Backend> {
        Self::serve(id, ReservedPort::new().listen_backlog(4096), handler)
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

    /// Waits until a streaming handler is stuck: `counter` (bytes it wrote) has stopped
    /// growing because every socket buffer on the way is full.
    pub fn wait_stalled(&self) {
        let mut last = u64::MAX;
        wait_until(
            || {
                let now = self.counter.load(Ordering::SeqCst);
                let stuck = now == last && now > 0;
                last = now;
                if !stuck {
                    thread::sleep(Duration::from_millis(200));
                }
                stuck
            },
            || "the backend never filled the path".to_string(),
        );
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
    Arc::new(|mut stream, _| echo_until_eof(&mut stream))
}

/// Writes back every byte read until EOF or an error.
pub fn echo_until_eof(stream: &mut TcpStream) {
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

/// A port where nothing listens: connects to its `addr` are refused for as long as it is
/// held, and no other socket (tcplb's own listener included) can be given the port meanwhile.
/// `listen()` brings a backend up there later.
pub fn refusing_port() -> ReservedPort {
    ReservedPort::new()
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

// ---------------------------------------------------------------------------------------
// Observability: Prometheus text, raw admin HTTP exchanges, access log files, pausing the
// process, and the kernel's view of a TCP connection.

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// A parsed Prometheus text exposition (format 0.0.4). Parsing is strict: a line that is
/// not a comment, a `# HELP`/`# TYPE` line or a well-formed sample is an error.
#[derive(Debug, Default)]
pub struct Exposition {
    /// `# HELP` text (unescaped) by family name.
    pub help: std::collections::BTreeMap<String, String>,
    /// `# TYPE` by family name.
    pub types: std::collections::BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut e = Exposition::default();
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_metric_name(name).map_err(|w| fail(&w))?;
                let help = unescape(help, false).map_err(|w| fail(&w))?;
                if e.help.insert(name.to_string(), help).is_some() {
                    return Err(fail("a second HELP for the family"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| fail("TYPE lacks a type"))?;
                check_metric_name(name).map_err(|w| fail(&w))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(fail("unknown type"));
                }
                if e.samples.iter().any(|s| family_of(&s.name, name, kind)) {
                    return Err(fail("TYPE after the family's samples"));
                }
                if e.types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(fail("a second TYPE for the family"));
                }
            } else if line.starts_with('#') {
                // Any other comment.
            } else {
                e.samples.push(parse_sample(line).map_err(|w| fail(&w))?);
            }
        }
        Ok(e)
    }

    /// The value of the sample with exactly these labels (in any order), if there is one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.len() == labels.len() && s.has_labels(labels))
            .map(|s| s.value)
    }

    /// As [`Exposition::value`], failing the test if the sample is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?}; samples named so: {:?}",
                self.samples
                    .iter()
                    .filter(|s| s.name == name)
                    .collect::<Vec<_>>()
            )
        })
    }

    /// The sum over every sample named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .map(|s| s.value)
            .sum()
    }

    /// The family (a name with a `# TYPE`) a sample belongs to.
    pub fn family(&self, sample_name: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(family, kind)| family_of(sample_name, family, kind))
            .map(|(family, _)| family.as_str())
    }
}

/// Whether a sample named `sample` belongs to the family `family` of type `kind`.
fn family_of(sample: &str, family: &str, kind: &str) -> bool {
    if sample == family {
        return true;
    }
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .any(|suffix| sample.strip_suffix(suffix) == Some(family))
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

/// Undoes exposition escaping: `\\` and `\n` (HELP text), plus `\"` in label values.
fn unescape(text: &str, label_value: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label_value => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
            let key = key.trim_start_matches(',');
            check_metric_name(key).map_err(|_| format!("bad label name {key:?}"))?;
            // The value runs to the first unescaped double quote.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\n' => return Err("a raw line feed in a label value".into()),
                    _ => {}
                }
            }
            let end = end.ok_or("an unterminated label value")?;
            labels.push((key.to_string(), unescape(&after[..end], true)?));
            rest = &after[end + 1..];
            if !rest.starts_with(',') && !rest.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
        let mut keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err("a label given twice".into());
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A response read from a raw HTTP exchange.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (then half-closes if `half_close`), reads to EOF and parses the response.
/// Fails the test if the connection is reset or ends without a status line: the server
/// must answer and then close cleanly.
pub fn http_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect to admin");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(request).expect("send request");
    if half_close {
        stream.shutdown(Shutdown::Write).expect("half-close");
    }
    read_http_response(&mut stream)
}

/// Reads a whole response (to EOF) from `stream` and parses it.
pub fn read_http_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("read the response to EOF (the connection must close cleanly)");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

impl Tcplb {
    /// Scrapes `/metrics` (status 200 required) and parses it.
    pub fn metrics(&self) -> Exposition {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Exposition::parse(&body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}"))
    }

    /// Takes the process's standard output (started with `Stdio::piped()` for it).
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child.stdout.take().expect("stdout is piped")
    }

    /// Stops the process (SIGSTOP) and waits until the kernel shows it stopped, so that
    /// everything sent to it from now on waits in its sockets until [`Tcplb::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        wait_until(
            || process_state(self.pid()) == 'T',
            || format!("tcplb is in state {}", process_state(self.pid())),
        );
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
        wait_until(
            || process_state(self.pid()) != 'T',
            || "tcplb is still stopped".to_string(),
        );
    }
}

/// The state letter of a process (`R`, `S`, `T`, ...), from /proc/PID/stat.
pub fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .next()
        .and_then(|s| s.chars().next())
        .expect("state")
}

/// Whether the kernel lists a TCP socket with this local and remote address (any state but
/// closed: a socket reset by its peer is gone from the list even while its owner still holds
/// the descriptor). IPv4 only.
pub fn tcp_socket_listed(local: SocketAddr, remote: SocketAddr) -> bool {
    fn hex(addr: SocketAddr) -> String {
        match addr {
            SocketAddr::V4(a) => format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            ),
            SocketAddr::V6(_) => panic!("IPv4 only"),
        }
    }
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(local.as_str()) && fields.next() == Some(remote.as_str())
    })
}

/// Waits until the file at `path` holds at least `n` complete lines and returns them all.
pub fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end + 1]);
        complete.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let mut lines = Vec::new();
    wait_until(
        || {
            lines = read();
            lines.len() >= n
        },
        || format!("{} has {:?}, wanted {n} lines", path.display(), read()),
    );
    lines
}

// Resilience helpers (tests/resilience.rs): ports reserved while refusing, re-binding a
// killed backend's port, identifying echo backends, reading /backends and /metrics, and
// waiting for the n-th occurrence of a log line.

/// A loopback port that is bound but not listening: connects to it are refused, yet no other
/// socket (another test's backend, or an ephemeral port of an outgoing connect) can take it,
/// so it can be turned into a listener on the same port later.
pub struct ReservedPort {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind reserved port");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        ReservedPort { socket, addr }
    }

    /// Starts listening on the reserved port.
    pub fn listen(self) -> TcpListener {
        self.listen_backlog(128)
    }

    /// Starts listening with a given accept backlog.
    pub fn listen_backlog(self, backlog: i32) -> TcpListener {
        self.socket
            .listen(backlog)
            .expect("listen on reserved port");
        self.socket.into()
    }
}

/// Listens again on a port a killed backend used (retrying briefly while the old socket goes).
pub fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("re-bind {addr}: {e}"),
        }
    }
}

/// Sends its id byte, then echoes every byte back until EOF.
pub fn identify_then_echo() -> Handler {
    Arc::new(|mut stream, me| {
        if stream.write_all(&[me.id]).is_err() {
            return;
        }
        echo_until_eof(&mut stream);
    })
}

/// Sends `piece` and reads it back (through an echo backend); panics on wrong bytes.
pub fn echo_piece(stream: &mut TcpStream, piece: &[u8]) -> io::Result<()> {
    stream.write_all(piece)?;
    let mut back = vec![0u8; piece.len()];
    stream.read_exact(&mut back)?;
    assert!(back == piece, "an echoed piece came back with wrong bytes");
    Ok(())
}

/// Ends an echo session: half-closes, expects EOF with no byte more.
pub fn finish_echo(mut stream: TcpStream) {
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to EOF");
    assert!(
        rest.is_empty(),
        "{} unexpected bytes after the echo",
        rest.len()
    );
}

/// Whether an I/O error is the peer ending the connection (reset, EOF mid-read, broken pipe),
/// as opposed to a timeout (a hang).
pub fn is_peer_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// One row of the admin `/backends` JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRow {
    pub address: String,
    pub state: String,
    pub active: u64,
    pub connections_total: u64,
    pub connect_failures_total: u64,
}

/// `GET /backends`, parsed (one object per line, as tcplb writes it).
pub fn backend_rows(tcplb: &Tcplb) -> Vec<BackendRow> {
    let (status, body) = tcplb.admin_get("/backends");
    assert_eq!(status, 200, "/backends: {body}");
    let field = |line: &str, key: &str| -> String {
        let at = line
            .find(&format!("\"{key}\": "))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        let rest = &line[at + key.len() + 4..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].trim().trim_matches('"').to_string()
    };
    let number = |line: &str, key: &str| -> u64 {
        field(line, key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {line}"))
    };
    body.lines()
        .filter(|l| l.contains("\"address\""))
        .map(|l| BackendRow {
            address: field(l, "address"),
            state: field(l, "state"),
            active: number(l, "active"),
            connections_total: number(l, "connections_total"),
            connect_failures_total: number(l, "connect_failures_total"),
        })
        .collect()
}

/// The `/backends` row for `addr`, if listed.
pub fn backend_row(tcplb: &Tcplb, addr: SocketAddr) -> Option<BackendRow> {
    backend_rows(tcplb)
        .into_iter()
        .find(|r| r.address == addr.to_string())
}

/// The value of one sample of `/metrics`, named with its labels as exposed
/// (`tcplb_buffer_pool_buffers{state="free"}`).
pub fn metric(tcplb: &Tcplb, sample: &str) -> f64 {
    let (status, body) = tcplb.admin_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics"))
}

/// Parses a `Duration`'s `Debug` form as tcplb logs it (`500ms`, `1s`, `1.5s`, `250µs`).
pub fn parse_debug_duration(text: &str) -> Duration {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = text.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        panic!("not a duration: {text:?}")
    };
    let value: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text:?}"));
    Duration::from_secs_f64(value * scale)
}

impl Tcplb {
    /// Waits until `n` log lines contain `needle`; returns the n-th.
    pub fn wait_for_nth_log(&self, needle: &str, n: usize) -> String {
        let (logs, changed) = &*self.logs;
        let deadline = Instant::now() + PATIENCE;
        let mut guard = logs.lock().expect("log lock");
        loop {
            if let Some(line) = guard.lines.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.clone();
            }
            assert!(
                !guard.closed,
                "not {n} log line(s) with {needle:?} before tcplb closed its stderr; logs:\n{}",
                guard.lines.join("\n")
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "not {n} log line(s) with {needle:?} within {PATIENCE:?}; logs:\n{}",
                guard.lines.join("\n")
            );
            guard = changed.wait_timeout(guard, left).expect("log lock").0;
        }
    }
}

/// Makes a listener that is never accepted from swallow connects: fills its accept queue
/// until a connect gets no answer (the kernel drops the SYN), and returns the connections
/// that filled it (keep them open). A connect to it then hangs until the caller gives up.
pub fn fill_accept_queue(addr: SocketAddr) -> Vec<TcpStream> {
    let mut filled = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => filled.push(stream),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return filled,
            Err(e) => panic!("filling the accept queue of {addr}: {e}"),
        }
        assert!(
            filled.len() < 1000,
            "the accept queue of {addr} never fills"
        );
    }
}

/// Waits until connects to `addr` are refused. After [`Backend::kill`] the port is normally
/// closed at once, but a process being spawned at that moment (tests run in parallel) holds a
/// copy of the listening socket until it execs, and a connect in that window is accepted and
/// then reset.
pub fn wait_refused(addr: SocketAddr) {
    wait_until(
        || {
            matches!(
                TcpStream::connect(addr),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
            )
        },
        || format!("{addr} still accepts connects"),
    );
}

/// A port where a connect to any loopback address (127.x.y.z) hangs: a listener on every
/// address, never accepted, whose queue (backlog 0: one connection) is full, so the kernel
/// drops every further SYN. Connects hang for as long as this lives.
pub struct HangingPort {
    _listener: socket2::Socket,
    _filler: TcpStream,
    pub port: u16,
}

impl HangingPort {
    pub fn new() -> HangingPort {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        listener
            .bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let port = listener
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr")
            .port();
        let filler = TcpStream::connect(("127.0.0.1", port)).expect("fill the accept queue");
        HangingPort {
            _listener: listener,
            _filler: filler,
            port,
        }
    }

    /// TCP connects under way to this port (SYN sent, no answer), from any process.
    pub fn connects_hanging(&self) -> usize {
        let port = format!(":{:04X}", self.port);
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[2].ends_with(&port) && fields[3] == "02"
            })
            .count()
    }
}
