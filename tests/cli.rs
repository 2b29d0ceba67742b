//! The command line: help, version, usage errors (one line naming the bad value, exit 2),
//! start-up failures (the address and the OS error, exit 1), and no panic on any input; the
//! checks made at start (a backend that is tcplb itself, one listed twice, `--max-conns`
//! against the open-file limit) and how the backends file is read.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn assert_usage_error(args: &[&str], names: &str) {
    let (code, stdout, stderr) = run_cli(args);
    assert_eq!(code, Some(2), "{args:?}: exit code; stderr: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: wrote to stdout: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
    assert!(lines[0].starts_with("tcplb: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(names),
        "{args:?}: {stderr} does not name {names:?}"
    );
    assert!(
        lines[0].contains("--help"),
        "{args:?}: no hint to --help: {stderr}"
    );
}

#[test]
fn usage_errors_name_the_bad_value_and_exit_2() {
    assert_usage_error(&[], "no backend");
    assert_usage_error(&["--frobnicate", "127.0.0.1:80"], "--frobnicate");
    assert_usage_error(&["foo:bar"], "foo:bar");
    assert_usage_error(&["127.0.0.1"], "127.0.0.1");
    assert_usage_error(&["127.0.0.1:99999"], "99999");
    assert_usage_error(&["127.0.0.1:80,weight=0"], "weight=0");
    assert_usage_error(&["127.0.0.1:80,weight=1000"], "1000");
    assert_usage_error(&["127.0.0.1:80,sticky"], "sticky");
    assert_usage_error(&["--retries", "many", "127.0.0.1:80"], "many");
    assert_usage_error(&["--max-conns", "0", "127.0.0.1:80"], "'0'");
    assert_usage_error(&["--connect-timeout", "-1", "127.0.0.1:80"], "-1");
    assert_usage_error(&["--idle-timeout", "1,5", "127.0.0.1:80"], "1,5");
    assert_usage_error(&["--health-interval", "-2", "127.0.0.1:80"], "-2");
    assert_usage_error(&["--admin", "127.0.0.1", "127.0.0.1:80"], "127.0.0.1");
    assert_usage_error(&["--backlog", "70000", "127.0.0.1:80"], "70000");
    assert_usage_error(&["--buffer-size", "12", "127.0.0.1:80"], "12");
    assert_usage_error(&["--buffers", "x", "127.0.0.1:80"], "'x'");
    assert_usage_error(&["--listen", "localhost", "127.0.0.1:80"], "localhost");
    assert_usage_error(&["--listen"], "--listen");
    assert_usage_error(&["[::1:80"], "[::1:80");
}

/// The usual slips get a message that says what to write instead, and none says a thing
/// twice (`expected HOST:PORT (expected HOST:PORT)`).
#[test]
fn usage_errors_say_what_to_write_instead() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["--admin", "9090", "127.0.0.1:80"],
            "invalid --admin address '9090': expected HOST:PORT, such as 127.0.0.1:9090",
        ),
        (
            &["http://127.0.0.1:6379"],
            "invalid backend 'http://127.0.0.1:6379': expected HOST:PORT, not a URL: drop \
             'http://'",
        ),
        (
            &["127.0.0.1:6379:weight=2"],
            "invalid backend '127.0.0.1:6379:weight=2': options follow a comma: \
             127.0.0.1:6379,weight=2",
        ),
        (
            &["127.0.0.1:6379:backup"],
            "options follow a comma: 127.0.0.1:6379,backup",
        ),
        (
            &["--connect-timeout", "3 s", "127.0.0.1:80"],
            "invalid value '3 s' for --connect-timeout: expected a duration from 1ms to 1h, \
             such as 250ms, 3s, 1.5s or 2m; a bare number is milliseconds",
        ),
        (
            &["--drain-timeout", "2d", "127.0.0.1:80"],
            "invalid value '2d' for --drain-timeout: expected a duration from 0 to 24h, such \
             as 250ms, 3s, 1.5s or 2m; a bare number is seconds",
        ),
    ];
    for (args, message) in cases {
        assert_usage_error(args, message);
        let (_, _, stderr) = run_cli(args);
        assert!(!stderr.contains("brackets"), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("HOST:PORT").count(),
            usize::from(message.contains("HOST:PORT")),
            "{args:?}: {stderr}"
        );
    }
}

/// Every duration flag takes a unit; a bare number keeps its old unit. Shown by the drain:
/// a session held open past `--drain-timeout 300ms` is cut after 0.3 s, not 300 s.
#[test]
fn duration_flags_take_a_unit() {
    let backend = Backend::start(1, echo());
    let mut tcplb = Tcplb::start(&[
        &backend.arg(),
        "--drain-timeout",
        "300ms",
        "--connect-timeout",
        "1.5s",
        "--idle-timeout",
        "1m",
    ]);
    let mut held = tcplb.connect();
    assert_eq!(echo_through_open(&mut held, b"hello"), b"hello");
    let began = Instant::now();
    tcplb.signal(libc::SIGTERM);
    assert_eq!(tcplb.wait_exit(Duration::from_secs(10)), Some(0));
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "drained in {took:?} with --drain-timeout 300ms"
    );
}

/// Writes `data` and reads as many bytes back, leaving the connection open.
fn echo_through_open(stream: &mut std::net::TcpStream, data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    stream.write_all(data).expect("write");
    let mut back = vec![0; data.len()];
    stream.read_exact(&mut back).expect("read the echo");
    back
}

#[test]
fn help_and_version_exit_0() {
    let (code, stdout, _) = run_cli(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--listen",
        "--retries",
        "--max-conns",
        "--buffer-size",
        "BACKEND",
        // The range of --buffer-size, how durations are written, signals and exit codes.
        "from 1k to 1m",
        "DURATION is a number with a unit: 250ms, 3s, 1.5s, 2m, 1h",
        "except for --connect-timeout, where it is milliseconds",
        "SIGHUP",
        "SIGTERM, SIGINT",
        "a second one",
        "SIGUSR1          reopen the access log",
        "Exit status:",
        "0  after --help",
        "1  it cannot start",
        "2  bad usage",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
    let (code, stdout, _) = run_cli(&["-V"]);
    assert_eq!(code, Some(0));
    let prefix = format!("tcplb {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(stdout.starts_with(&prefix), "{stdout}");
    assert!(stdout.contains(", built 20"), "{stdout}");
}

/// `--version` names the commit the binary was built from: this checkout's HEAD (build.rs
/// runs again when HEAD moves), or "unknown" where git cannot tell.
#[test]
fn version_names_the_git_commit() {
    let (code, stdout, _) = run_cli(&["--version"]);
    assert_eq!(code, Some(0));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = head.as_deref().unwrap_or("unknown");
    assert!(
        stdout.contains(&format!("(commit {expected}, built ")),
        "HEAD is {expected}: {stdout}"
    );
}

#[test]
fn start_up_failures_name_the_address_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, _, stderr) = run_cli(&["--listen", &addr, "127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().expect("a message");
    assert!(last.contains(&addr) && last.contains("in use"), "{stderr}");

    let (code, _, stderr) = run_cli(&["no-such-host.invalid:80"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no-such-host.invalid:80"), "{stderr}");
}

/// `--admin` on the `--listen` address is caught before anything is bound (a usage error
/// naming both flags), and an admin port that is taken (another tcplb's, say) is named as
/// the `--admin` port, not just "Address already in use".
#[test]
fn the_admin_port_is_named_when_it_clashes() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let same = format!("127.0.0.1:{port}");
    for (listen, admin) in [
        (same.clone(), same.clone()),
        (format!("0.0.0.0:{port}"), same.clone()),
        (format!("LOCALHOST:{port}"), format!("localhost:{port}")),
    ] {
        let args = ["--listen", &listen, "--admin", &admin, "127.0.0.1:9"];
        assert_usage_error(&args, "--admin");
        let (_, _, stderr) = run_cli(&args);
        assert!(
            stderr.contains(&format!("--admin {admin}")) && stderr.contains("--listen"),
            "{stderr}"
        );
    }

    // Both on port 0: two different free ports.
    let backend = Backend::start(1, echo());
    let tcplb = Tcplb::start(&["--admin", "127.0.0.1:0", &backend.arg()]);
    assert_ne!(tcplb.admin_addr(), tcplb.addr);
    assert_eq!(tcplb.admin_get("/healthz").0, 200);

    // A second instance on the first one's admin port.
    let admin = tcplb.admin_addr().to_string();
    let (code, _, stderr) = run_cli(&["--listen", "127.0.0.1:0", "--admin", &admin, "127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().expect("a message");
    assert!(
        last.contains(&format!("cannot listen on {admin} for --admin: "))
            && last.contains("in use"),
        "{stderr}"
    );
    // And a client port that is taken (by a socket outside any SO_REUSEPORT group: with
    // several workers, a second tcplb would join the first one's group).
    let (code, _, stderr) = run_cli(&["--listen", &same, "127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().expect("a message");
    assert!(
        last.contains(&format!("cannot listen on {same} for --listen: ")),
        "{stderr}"
    );
}

/// A port below 1024 as a user without the privilege: the "Permission denied" comes with
/// the ways to get it. Run as `nobody`, so this needs root (skipped, saying so, without).
#[test]
fn a_privileged_port_without_privilege_says_how_to_get_it() {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root, to run tcplb as nobody");
        return;
    }
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    if start <= 80 {
        eprintln!(
            "skipped: net.ipv4.ip_unprivileged_port_start is {start}: port 80 is open to all"
        );
        return;
    }
    for args in [
        ["--listen", "127.0.0.1:80", "127.0.0.1:9"],
        ["--admin", "127.0.0.1:80", "127.0.0.1:9"],
    ] {
        let listen: &[&str] = if args[0] == "--listen" {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let out = Command::new(env!("CARGO_BIN_EXE_tcplb"))
            .args(listen)
            .args(args)
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .expect("run tcplb as nobody");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.lines().last().expect("a message");
        assert!(
            last.contains(&format!("cannot listen on 127.0.0.1:80 for {}: ", args[0]))
                && last.contains("Permission denied"),
            "{last}"
        );
        for hint in [
            "setcap cap_net_bind_service=+ep ",
            "socket activation",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        ] {
            assert!(last.contains(hint), "no {hint:?} in {last}");
        }
    }
}

/// A `RUST_LOG` that is not a level (nor a filter naming tcplb) would turn every line off,
/// the start line included: it is named in a warning and `info` is used instead.
#[test]
fn a_log_filter_that_is_not_a_level_falls_back_to_info() {
    let backend = Backend::start(1, echo());
    for spec in ["verbose", "warning", "tcplb=loud"] {
        let tcplb = Tcplb::start_with(&[&backend.arg()], |command| {
            command.env("RUST_LOG", spec);
        });
        let warning = tcplb.wait_for_log("RUST_LOG");
        assert!(
            warning.contains("WARN") && warning.contains(&format!("RUST_LOG='{spec}'")),
            "{warning}"
        );
        assert!(warning.contains("logging at info"), "{warning}");
    }
    // A filter that names tcplb, or a level, is taken as it is: no warning.
    for spec in ["tcplb=info", "INFO", "tcplb::control=info,tcplb=info"] {
        let tcplb = Tcplb::start_with(&[&backend.arg()], |command| {
            command.env("RUST_LOG", spec);
        });
        assert_eq!(
            tcplb.count_logs("RUST_LOG"),
            0,
            "{spec}: {:?}",
            tcplb.logs()
        );
    }
}

#[test]
fn a_name_in_the_backends_file_that_does_not_resolve_names_the_file_and_line() {
    let file = BackendsFile::new(
        "unresolvable",
        "# fleet\n127.0.0.1:9\nno-such-host.invalid:80\n",
    );
    let (code, _, stderr) = run_cli(&["--backends-file", &file.arg()]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().expect("a message");
    assert!(
        last.contains(&format!("{}: line 3: ", file.arg()))
            && last.contains("cannot resolve backend no-such-host.invalid:80"),
        "{stderr}"
    );
}

/// A backends file at `scratch_path(name)`, removed when dropped.
struct BackendsFile(std::path::PathBuf);

impl BackendsFile {
    fn new(name: &str, text: &str) -> BackendsFile {
        let path = scratch_path(name);
        std::fs::write(&path, text).expect("write the backends file");
        BackendsFile(path)
    }

    fn write(&self, text: &str) {
        // Renamed into place, as the README says to.
        let next = self.0.with_extension("next");
        std::fs::write(&next, text).expect("write the backends file");
        std::fs::rename(&next, &self.0).expect("rename the backends file into place");
    }

    fn arg(&self) -> String {
        self.0.to_str().expect("utf-8 path").to_string()
    }
}

impl Drop for BackendsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn backends_file_lines_may_end_in_a_lone_cr() {
    let (a, b) = (Backend::start(1, echo()), Backend::start(2, echo()));
    let file = BackendsFile::new(
        "cr-only",
        &format!("# old Mac file\r{}\r{},weight=2\r", a.arg(), b.arg()),
    );
    let tcplb = Tcplb::start(&["--backends-file", &file.arg()]);
    let start = tcplb.wait_for_log("listening on ");
    assert!(
        start.contains(&format!("backends: {}, {} weight 2;", a.arg(), b.arg())),
        "{start}"
    );
}

/// Escape sequences and other control characters in the backends file are shown escaped,
/// at start (the usage error) and on reload (the warning).
#[test]
fn control_characters_from_the_backends_file_are_shown_escaped() {
    let file = BackendsFile::new("escape", "127.0.0.1:9\n10.0.0.1:80\x1b[31m\u{7}\n");
    let (code, _, stderr) = run_cli(&["--backends-file", &file.arg()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2: invalid backend '10.0.0.1:80\\x1b[31m\\x07'"),
        "{stderr:?}"
    );
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\x07'),
        "{stderr:?}"
    );

    let backend = Backend::start(1, echo());
    file.write(&format!("{}\n", backend.arg()));
    let tcplb = Tcplb::start(&["--backends-file", &file.arg()]);
    file.write("10.0.0.1:80\r\n\u{202e}evil:80\x1b]0;title\x07\r\n");
    tcplb.signal(libc::SIGHUP);
    let warning = tcplb.wait_for_log("reload failed");
    assert!(
        warning.contains("line 2: invalid backend '\\u{202e}evil:80\\x1b]0;title\\x07'"),
        "{warning:?}"
    );
    for line in tcplb.logs() {
        assert!(
            !line.contains(['\x1b', '\x07', '\u{202e}', '\r']),
            "a raw control character reached the log: {line:?}"
        );
    }
}

/// A backends file with several bad lines: every one is named (the first ten, then how
/// many more), in one line on stderr at start (exit 2), and in the warning of a reload that
/// changes nothing.
#[test]
fn every_bad_line_of_the_backends_file_is_named() {
    // Lines 2, 4 and 5 are bad, 1 and 3 good.
    let three = "127.0.0.1:9\n10.0.0.1:x\n10.0.0.2:80\nweb-a:80,weight=0\n[::1:80\n";
    let file = BackendsFile::new("bad-lines", three);
    let (code, _, stderr) = run_cli(&["--backends-file", &file.arg()]);
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tcplb: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for named in [
        &format!(
            "{}: 3 bad lines: line 2: invalid backend '10.0.0.1:x'",
            file.arg()
        ),
        "; line 4: invalid backend 'web-a:80,weight=0'",
        "; line 5: invalid backend '[::1:80'",
    ] {
        assert!(lines[0].contains(named), "no {named:?} in {}", lines[0]);
    }

    // On reload: twelve bad lines among good ones; the first ten are named.
    let backend = Backend::start(1, identify_and_hold());
    file.write(&format!("{}\n", backend.arg()));
    let tcplb = Tcplb::start(&["--backends-file", &file.arg()]);
    let mut text = format!("{}\n", backend.arg());
    for i in 0..12 {
        text.push_str(&format!("10.0.0.{i}:bad{i}\n127.0.0.1:9\n"));
    }
    file.write(&text);
    tcplb.signal(libc::SIGHUP);
    let warning = tcplb.wait_for_log("reload failed");
    assert!(warning.contains("12 bad lines: line 2: "), "{warning}");
    for i in 0..10 {
        let named = format!("line {}: invalid backend '10.0.0.{i}:bad{i}'", 2 + 2 * i);
        assert!(warning.contains(&named), "no {named:?} in {warning}");
    }
    assert!(
        !warning.contains("bad10") && warning.ends_with("; and 2 more bad lines"),
        "{warning}"
    );
    // Nothing changed: still served by the running set.
    let (stream, id) = connect_and_identify(&tcplb);
    assert_eq!(id, 1);
    close_and_wait(stream);
    assert_eq!(tcplb.count_logs("reload: "), 0, "nothing was applied");
}

/// Runs the binary with `args` for at most `within` (killed after that: exit code `None`);
/// returns (exit code, stderr).
fn run_cli_within(args: &[&str], within: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcplb"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcplb");
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    (code, stderr)
}

#[test]
fn a_backend_that_is_the_listen_address_is_refused() {
    // A port no one else takes meanwhile: bound, not listening, so tcplb can listen on it.
    let reserved = ReservedPort::new();
    let at = reserved.addr.to_string();
    let port = reserved.addr.port();
    for (listen, backend, names) in [
        (at.clone(), at.clone(), at.clone()),
        (format!("0.0.0.0:{port}"), at.clone(), at.clone()),
        (
            at.clone(),
            format!("localhost:{port}"),
            format!("localhost:{port} ({at})"),
        ),
    ]
    .into_iter()
    .chain(host_address().map(|ip| {
        let theirs = format!("{ip}:{port}");
        (format!("0.0.0.0:{port}"), theirs.clone(), theirs)
    })) {
        // One worker: one listening socket next to the reserved one.
        let args = [
            "--listen",
            &listen,
            "--workers",
            "1",
            "127.0.0.1:9",
            &backend,
        ];
        let (code, stderr) = run_cli_within(&args, Duration::from_secs(5));
        assert_eq!(code, Some(2), "{args:?} was not refused: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("backend {names} is tcplb's own listen address"))
                && last.contains("loop"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_backend_listed_twice_gets_one_warning_naming_it() {
    let (a, b) = (Backend::start(1, echo()), Backend::start(2, echo()));
    let port = a.addr.port();
    let file = BackendsFile::new("twice", &format!("{}\nlocalhost:{port}\n", a.arg()));
    let tcplb = Tcplb::start(&[&a.arg(), &b.arg(), &a.arg(), "--backends-file", &file.arg()]);
    let warnings: Vec<String> = tcplb
        .logs()
        .into_iter()
        .filter(|l| l.contains("listed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(&format!(
            "backend {} is listed 4 times (as {}, localhost:{port}); it is used once",
            a.arg(),
            a.arg()
        )),
        "{warnings:?}"
    );
    // A backend listed once is not mentioned.
    assert!(!warnings[0].contains(&b.arg()), "{warnings:?}");
    let tcplb = Tcplb::start(&[&a.arg(), &b.arg()]);
    assert_eq!(tcplb.count_logs("listed"), 0, "{:?}", tcplb.logs());
}

/// One of this host's own addresses other than loopback, if it has one: the source address
/// of a route to a documentation address (a UDP connect sends nothing).
fn host_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    if ip.is_loopback() {
        return None;
    }
    eprintln!("this host's address {ip} is checked too");
    Some(ip)
}

#[test]
fn max_conns_is_fitted_quietly_unless_the_user_gave_it() {
    let backend = Backend::start(1, echo());
    // 10000 sessions and the default 256 pipes need 20576 descriptors (2 each, 64 spare);
    // 20000 fit 9712 sessions beside the pipes.
    let tcplb = Tcplb::start_with_nofile(&[&backend.arg()], 20_000);
    let fitted = tcplb.wait_for_log("using --max-conns 9712");
    assert!(fitted.contains("INFO"), "not an info line: {fitted}");
    assert!(
        !tcplb.logs().iter().any(|l| l.contains("WARN")),
        "a default run warned: {:?}",
        tcplb.logs()
    );
    let start_line = tcplb.wait_for_log("listening on ");
    assert!(
        start_line.contains("max-conns 9712") && start_line.contains("up to 256 pipes"),
        "{start_line}"
    );

    let tcplb = Tcplb::start_with_nofile(&[&backend.arg(), "--max-conns", "10000"], 20_000);
    let warning = tcplb.wait_for_log("using --max-conns 9712");
    assert!(
        warning.contains("WARN")
            && warning.contains("--max-conns 10000 and --pipes 256 need 20576 descriptors")
            && warning.contains("the open-file limit is 20000"),
        "{warning}"
    );

    // A value that fits is left alone, without a word; without pipes, more sessions fit.
    for (args, fits) in [
        (vec!["--max-conns", "9712"], "max-conns 9712"),
        (
            vec!["--max-conns", "9968", "--pipes", "0"],
            "max-conns 9968",
        ),
    ] {
        let mut args = args.clone();
        let arg = backend.arg();
        args.push(&arg);
        let tcplb = Tcplb::start_with_nofile(&args, 20_000);
        assert_eq!(tcplb.count_logs("using --"), 0, "{:?}", tcplb.logs());
        assert!(tcplb.wait_for_log("listening on ").contains(fits));
    }
}

#[test]
fn pipes_take_at_most_a_quarter_of_the_descriptors() {
    let backend = Backend::start(1, echo());
    // 1024 descriptors, 64 spare: pipes get a quarter of the other 960 (120 pipes, 240
    // descriptors), sessions the rest (360).
    let tcplb = Tcplb::start_with_nofile(&[&backend.arg(), "--pipes", "1024"], 1024);
    let warning = tcplb.wait_for_log("using --max-conns 360 and --pipes 120");
    assert!(
        warning.contains("WARN") && warning.contains("--max-conns 10000 and --pipes 1024"),
        "the user gave --pipes: {warning}"
    );
    let start_line = tcplb.wait_for_log("listening on ");
    assert!(
        start_line.contains("max-conns 360") && start_line.contains("up to 120 pipes"),
        "{start_line}"
    );
    // And it serves.
    let data = pattern(3, 100_000);
    let mut stream = tcplb.connect();
    assert_eq!(echo_through_open(&mut stream, &data), data);
}

#[test]
fn no_input_makes_it_panic() {
    let nasty = [
        "",
        "-",
        "--",
        ":",
        "[",
        "]:",
        "[]:1",
        "::",
        "a:b:c",
        ",",
        "h:1,",
        "h:1,,",
        "h:1,weight",
        "h:1,weight=",
        "h:1,weight=1,weight=2",
        "é:80",
        "h:+1",
        "h: 1",
        " h:1",
        "--listen=",
        "-l:",
        "--buffers=0",
        "--buffer-size=1k",
        "--buffer-size=99999999999m",
        "--buffers=99999999999",
        "h:18446744073709551617",
    ];
    for a in nasty {
        for args in [
            vec![a],
            vec![a, "127.0.0.1:80"],
            vec!["127.0.0.1:80", a],
            vec!["--retries", a, "h:1"],
        ] {
            let (code, _, stderr) = run_cli_no_start(&args);
            assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
            assert!(
                matches!(code, Some(0..=2)),
                "{args:?}: exit {code:?}: {stderr}"
            );
        }
    }
}

/// Like `run_cli`, but a command line that would start serving is stopped by giving it an
/// address that is already taken, so every case ends promptly.
fn run_cli_no_start(args: &[&str]) -> (Option<i32>, String, String) {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut all = vec!["--listen", &addr];
    all.extend_from_slice(args);
    run_cli(&all)
}
