//! The balancer under test: one builder of its arguments ([`Launch`]: flags or a config
//! file), the running process ([`Tcplb`]: its log lines, signals, exit, resources), and
//! scratch files and other views of a process from `/proc`.

use super::admin::{Exposition, http_request};
use super::{PATIENCE, test_bpf_redirect, test_workers, wait_until};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How to start a tcplb under test: the one builder of its arguments. Flags get
/// `--listen 127.0.0.1:0`; a config file gets written to a scratch file and passed with
/// `--config`; both get `--workers` with the test's worker count unless they say.
/// A change to the command before it runs.
type Adjust<'a> = Box<dyn FnOnce(&mut Command) + 'a>;

pub struct Launch<'a> {
    program: std::ffi::OsString,
    args: Vec<String>,
    config: Option<String>,
    nofile: Option<u64>,
    adjust: Vec<Adjust<'a>>,
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

impl<'a> Launch<'a> {
    /// `tcplb --listen 127.0.0.1:0 ARGS...`.
    pub fn flags(args: &[&str]) -> Launch<'a> {
        Launch {
            program: env!("CARGO_BIN_EXE_tcplb").into(),
            args: ["--listen", "127.0.0.1:0"]
                .iter()
                .chain(args)
                .map(|a| a.to_string())
                .collect(),
            config: None,
            nofile: None,
            adjust: Vec::new(),
        }
    }

    /// `tcplb --config FILE` with `toml` in the file.
    pub fn config(toml: &str) -> Launch<'a> {
        Launch {
            program: env!("CARGO_BIN_EXE_tcplb").into(),
            args: Vec::new(),
            config: Some(toml.to_string()),
            nofile: None,
            adjust: Vec::new(),
        }
    }

    /// More arguments.
    pub fn args(mut self, args: &[&str]) -> Launch<'a> {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs `program` instead of the binary under test (a copy of it, or a launcher).
    pub fn program(mut self, program: impl AsRef<std::ffi::OsStr>) -> Launch<'a> {
        self.program = program.as_ref().to_owned();
        self
    }

    /// The open-file limit (soft and hard) to start with.
    pub fn nofile(mut self, nofile: u64) -> Launch<'a> {
        self.nofile = Some(nofile);
        self
    }

    /// Adjusts the command before it runs.
    pub fn adjust(mut self, adjust: impl FnOnce(&mut Command) + 'a) -> Launch<'a> {
        self.adjust.push(Box::new(adjust));
        self
    }

    /// Starts it and waits until it serves.
    pub fn start(self) -> Tcplb {
        let mut tcplb = self.spawn();
        tcplb.wait_listening();
        tcplb
    }

    /// Starts it without waiting (see [`Tcplb::wait_listening`]).
    pub fn spawn(self) -> Tcplb {
        let mut command = Command::new(&self.program);
        let config = self.config.as_ref().map(|toml| {
            let n = CONFIGS.fetch_add(1, Ordering::Relaxed);
            let file = Scratch::new(&format!("config-{n}.toml"));
            std::fs::write(&*file, toml).expect("write the config file");
            file
        });
        if let Some(file) = &config {
            command.args(["--config", &file.arg()]);
        }
        command.args(&self.args);
        let says_workers = self.args.iter().any(|a| a == "--workers")
            || self
                .config
                .as_deref()
                .is_some_and(|t| t.lines().any(|l| l.trim_start().starts_with("workers")));
        if !says_workers {
            command.args(["--workers", &test_workers().to_string()]);
        }
        let says_bpf = self.args.iter().any(|a| a.starts_with("--bpf-redirect"))
            || self
                .config
                .as_deref()
                .is_some_and(|t| t.contains("bpf-redirect"));
        if test_bpf_redirect() && !says_bpf {
            command
                .arg("--bpf-redirect")
                .env("TCPLB_BPF_REDIRECT_UNSAFE", "1");
        }
        command.env("RUST_LOG", "info").stdout(Stdio::null());
        if let Some(nofile) = self.nofile {
            use std::os::unix::process::CommandExt;
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
        }
        for adjust in self.adjust {
            adjust(&mut command);
        }
        let mut tcplb = Tcplb::spawn_command(command);
        tcplb.config = config;
        tcplb
    }
}

/// A running `tcplb` process; killed when dropped.
pub struct Tcplb {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<(Mutex<Logs>, Condvar)>,
    /// The config file, when started with one (removed when the process is dropped).
    config: Option<Scratch>,
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
        Launch::flags(args).start()
    }

    /// As [`Tcplb::start`], letting the caller adjust the command first.
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Tcplb {
        Launch::flags(args).adjust(adjust).start()
    }

    /// Starts the process without waiting for it to listen (see [`Tcplb::wait_listening`]).
    pub fn spawn_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Tcplb {
        Launch::flags(args).adjust(adjust).spawn()
    }

    /// As [`Tcplb::spawn_with`], running `program` (a copy of the binary, or a launcher).
    pub fn spawn_program(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Tcplb {
        Launch::flags(args).program(program).adjust(adjust).spawn()
    }

    /// Starts tcplb with its open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Tcplb {
        Launch::flags(args).nofile(nofile).start()
    }

    /// Starts `tcplb --config FILE ARGS...` with `toml` as the file, and waits until it
    /// serves.
    pub fn start_config(toml: &str, args: &[&str]) -> Tcplb {
        Launch::config(toml).args(args).start()
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
            config: None,
        }
    }

    /// Waits for the "listening on" line and takes the (first) address from it.
    pub fn wait_listening(&mut self) {
        let line = self.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split([';', ',']).next())
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

    /// Where service `name` listens (its first address), from its start line (`service
    /// NAME: listening on ADDR, ...`); tcplb started with a config file.
    pub fn service_addr(&self, name: &str) -> SocketAddr {
        self.service_addrs(name)[0]
    }

    /// Every address service `name` listens on, from its start line.
    pub fn service_addrs(&self, name: &str) -> Vec<SocketAddr> {
        let needle = format!("service {name}: listening on ");
        let line = self.wait_for_log(&needle);
        line.split(&needle)
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .map(|list| {
                list.split(", ")
                    .map(|a| {
                        a.parse()
                            .unwrap_or_else(|_| panic!("no address in {line:?}"))
                    })
                    .collect()
            })
            .unwrap_or_else(|| panic!("no addresses in {line:?}"))
    }

    /// Replaces the config file with `toml` (atomically: a reload never reads half a file).
    pub fn rewrite_config(&self, toml: &str) {
        let file = self
            .config
            .as_ref()
            .expect("tcplb started with a config file");
        let next = Scratch::new(&format!(
            "{}.next",
            file.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("config")
        ));
        std::fs::write(&*next, toml).expect("write the config file");
        std::fs::rename(&*next, &**file).expect("replace the config file");
    }

    /// The config file tcplb was started with.
    pub fn config_path(&self) -> &std::path::Path {
        self.config
            .as_ref()
            .expect("tcplb started with a config file")
    }
}

impl Drop for Tcplb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
