//! The command line: `Config` and `BackendSpec`, parsing and validation.
//!
//! Pure: no sockets, no name resolution, no files. Every error names the bad value so `main`
//! can print it on one line and exit with status 2.

use crate::health::{BreakerPolicy, CheckPolicy};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default size of one pool buffer.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;
/// Memory the pool gets by default when `--buffers` is not given: a default run fits in
/// about 64 MiB with the rest of the process.
pub const DEFAULT_POOL_BYTES: usize = 56 * 1024 * 1024;
/// Largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 256;

/// A backend as the user wrote it: `HOST:PORT[,weight=N][,backup]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// Used only when no primary backend is up.
    pub backup: bool,
}

impl BackendSpec {
    /// Parses one backend spec such as `10.0.0.1:80,weight=2` or `[::1]:5432,backup`.
    pub fn parse(text: &str) -> Result<BackendSpec, ConfigError> {
        let mut parts = text.split(',');
        let addr = parts.next().unwrap_or_default();
        let (host, port) = parse_host_port(addr, false).map_err(|why| ConfigError::BadBackend {
            spec: text.to_string(),
            why,
        })?;
        let mut spec = BackendSpec {
            host,
            port,
            weight: 1,
            backup: false,
        };
        for option in parts {
            let bad = |why: String| ConfigError::BadBackend {
                spec: text.to_string(),
                why,
            };
            match option.split_once('=') {
                Some(("weight", value)) => {
                    spec.weight = parse_number(value, 1, u64::from(MAX_WEIGHT))
                        .ok_or_else(|| bad(format!("weight '{value}' is not 1..={MAX_WEIGHT}")))?
                        as u32;
                }
                None if option == "backup" => spec.backup = true,
                _ => return Err(bad(format!("unknown option '{option}'"))),
            }
        }
        Ok(spec)
    }

    /// `host:port`, with brackets around an IPv6 literal: the name used in logs and metrics.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())?;
        if self.weight != 1 {
            write!(f, ",weight={}", self.weight)?;
        }
        if self.backup {
            f.write_str(",backup")?;
        }
        Ok(())
    }
}

/// Everything the balancer needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `HOST:PORT` to listen on (host may be a name; port 0 picks a free port).
    pub listen: (String, u16),
    pub backends: Vec<BackendSpec>,
    pub buffer_size: usize,
    pub buffers: usize,
    pub connect_timeout: Duration,
    pub retries: u32,
    /// `None` = sessions never time out for idleness.
    pub idle_timeout: Option<Duration>,
    pub max_conns: usize,
    pub backlog: i32,
    /// The passive circuit breaker (`--max-fails`, `--fail-timeout`).
    pub breaker: BreakerPolicy,
    /// Active health checks; `None` = off.
    pub checks: Option<CheckPolicy>,
    /// More backends, one spec per line, re-read on SIGHUP.
    pub backends_file: Option<PathBuf>,
    /// Re-resolve backend names this often; `None` = only at start and on reload.
    pub resolve_interval: Option<Duration>,
    /// How long live sessions may run on after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
    /// Where the admin HTTP endpoint listens; `None` = off.
    pub admin: Option<(String, u16)>,
    /// Where the access log goes (`-` = stdout); `None` = off.
    pub access_log: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Run(Box<Config>),
    Help,
    Version,
}

/// A usage error: the message names the bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Usage(String),
    BadValue {
        option: &'static str,
        value: String,
        expected: String,
    },
    BadBackend {
        spec: String,
        why: String,
    },
    BadListen {
        value: String,
        why: String,
    },
    /// A line of a backends file.
    BadLine {
        line: usize,
        error: Box<ConfigError>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(msg) => f.write_str(msg),
            ConfigError::BadValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "invalid value '{value}' for --{option}: expected {expected}"
            ),
            ConfigError::BadBackend { spec, why } => write!(f, "invalid backend '{spec}': {why}"),
            ConfigError::BadListen { value, why } => {
                write!(f, "invalid listen address '{value}': {why}")
            }
            ConfigError::BadLine { line, error } => write!(f, "line {line}: {error}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The option table, shared by the parser and `--help`.
fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt(
        "l",
        "listen",
        &format!("address to accept clients on (default {DEFAULT_LISTEN})"),
        "HOST:PORT",
    );
    o.optopt(
        "",
        "connect-timeout",
        "give up a backend connect after this long (default 3000)",
        "MS",
    );
    o.optopt(
        "",
        "retries",
        "connect attempts on other backends after a failed one (default 2, max 16)",
        "N",
    );
    o.optopt(
        "",
        "idle-timeout",
        "close a session with no bytes either way for this long; 0 = never (default 300)",
        "SECS",
    );
    o.optopt(
        "",
        "max-conns",
        "sessions at once; past it new clients are closed at once (default 10000)",
        "N",
    );
    o.optopt("", "backlog", "listen backlog (default 1024)", "N");
    o.optopt(
        "",
        "buffer-size",
        "size of one pool buffer; k/m suffixes allowed (default 16k)",
        "BYTES",
    );
    o.optopt(
        "",
        "buffers",
        "buffers in the pool, allocated once at start (default: 56 MiB worth)",
        "N",
    );
    o.optopt(
        "",
        "max-fails",
        "failed connects in a row that take a backend out; 0 = never (default 3)",
        "N",
    );
    o.optopt(
        "",
        "fail-timeout",
        "how long a failing backend stays out before one trial session; doubles while \
         trials fail, up to 300 (default 10)",
        "SECS",
    );
    o.optopt(
        "",
        "health-interval",
        "probe every backend with a TCP connect this often; 0 = off (default 0)",
        "SECS",
    );
    o.optopt(
        "",
        "rise",
        "passed probes in a row that bring a backend up (default 2)",
        "N",
    );
    o.optopt(
        "",
        "fall",
        "failed probes in a row that take a backend down (default 3)",
        "N",
    );
    o.optopt(
        "",
        "backends-file",
        "more backends, one BACKEND per line (# comments); re-read on SIGHUP",
        "PATH",
    );
    o.optopt(
        "",
        "resolve-interval",
        "re-resolve backend host names this often; 0 = at start and reload only (default 0)",
        "SECS",
    );
    o.optopt(
        "",
        "drain-timeout",
        "after SIGTERM/SIGINT, let live sessions finish for up to this long (default 30)",
        "SECS",
    );
    o.optopt(
        "",
        "admin",
        "serve /metrics, /healthz and /backends over HTTP here; keep it on loopback or a \
         private network (default off)",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "access-log",
        "write one line per finished session to PATH (- = stdout) (default off)",
        "PATH",
    );
    o.optflag("h", "help", "print this help and exit");
    o.optflag("V", "version", "print the version and exit");
    o
}

/// The `--help` text.
pub fn usage() -> String {
    let brief = "Usage: tcplb [OPTIONS] BACKEND...\n\n\
        A Layer-4 TCP load balancer: each client connection is piped to the backend with the\n\
        fewest active sessions per unit of weight.\n\n\
        BACKEND is HOST:PORT[,weight=N][,backup]  (N from 1 to 256, default 1;\n\
        HOST may be an IPv4 address, [IPv6] or a name: every address it resolves to is a backend)";
    let mut text = options().usage(brief);
    text.push_str(
        "\nExamples:\n  tcplb --listen 0.0.0.0:8080 10.0.0.11:80 10.0.0.12:80,weight=2\n  \
         RUST_LOG=debug tcplb -l [::]:5432 db-a.internal:5432 db-b.internal:5432\n",
    );
    text
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[OsString]) -> Result<Action, ConfigError> {
    let mut utf8 = Vec::with_capacity(args.len());
    for arg in args {
        match arg.to_str() {
            Some(s) => utf8.push(s.to_string()),
            None => {
                return Err(ConfigError::Usage(format!(
                    "argument '{}' is not valid UTF-8",
                    arg.to_string_lossy()
                )));
            }
        }
    }
    let matches = options().parse(&utf8).map_err(|e| {
        ConfigError::Usage(match e {
            getopts::Fail::UnrecognizedOption(o) => format!("unknown option '{}'", dashed(&o)),
            getopts::Fail::ArgumentMissing(o) => format!("option '{}' needs a value", dashed(&o)),
            getopts::Fail::OptionDuplicated(o) => {
                format!("option '{}' given more than once", dashed(&o))
            }
            other => other.to_string(),
        })
    })?;
    if matches.opt_present("help") {
        return Ok(Action::Help);
    }
    if matches.opt_present("version") {
        return Ok(Action::Version);
    }

    let listen_text = matches
        .opt_str("listen")
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen = parse_host_port(&listen_text, true).map_err(|why| ConfigError::BadListen {
        value: listen_text.clone(),
        why,
    })?;

    let backends = matches
        .free
        .iter()
        .map(|s| BackendSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let backends_file = matches.opt_str("backends-file").map(PathBuf::from);
    if backends.is_empty() && backends_file.is_none() {
        return Err(ConfigError::Usage("no backend given".to_string()));
    }
    let admin = match matches.opt_str("admin") {
        None => None,
        Some(text) => Some(
            parse_host_port(&text, true).map_err(|why| ConfigError::BadValue {
                option: "admin",
                value: text.clone(),
                expected: format!("HOST:PORT ({why})"),
            })?,
        ),
    };
    let health_interval = opt_seconds(&matches, "health-interval", 0.0, 0.0, 86_400.0)?;

    let buffer_size = match matches.opt_str("buffer-size") {
        None => DEFAULT_BUFFER_SIZE,
        Some(v) => parse_size(&v)
            .filter(|n| (1024..=1 << 20).contains(n))
            .ok_or(ConfigError::BadValue {
                option: "buffer-size",
                value: v,
                expected: "a size from 1k to 1m".to_string(),
            })?,
    };
    let buffers = match matches.opt_str("buffers") {
        None => (DEFAULT_POOL_BYTES / buffer_size).max(2),
        Some(_) => opt_number(&matches, "buffers", 0, 2, 16 << 20)? as usize,
    };
    if buffers.saturating_mul(buffer_size) > 64 << 30 {
        return Err(ConfigError::BadValue {
            option: "buffers",
            value: buffers.to_string(),
            expected: format!("at most 64 GiB of buffers in all ({buffer_size}-byte buffers)"),
        });
    }
    let idle = opt_seconds(&matches, "idle-timeout", 300.0, 0.0, 365.0 * 86_400.0)?;
    let resolve = opt_seconds(&matches, "resolve-interval", 0.0, 0.0, 86_400.0)?;

    Ok(Action::Run(Box::new(Config {
        listen,
        backends,
        buffer_size,
        buffers,
        connect_timeout: Duration::from_millis(opt_number(
            &matches,
            "connect-timeout",
            3000,
            1,
            3_600_000,
        )?),
        retries: opt_number(&matches, "retries", 2, 0, 16)? as u32,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        max_conns: opt_number(&matches, "max-conns", 10_000, 1, 1_000_000)? as usize,
        backlog: opt_number(&matches, "backlog", 1024, 1, 65_535)? as i32,
        breaker: BreakerPolicy {
            max_fails: opt_number(&matches, "max-fails", 3, 0, 1_000_000)? as u32,
            fail_timeout: opt_seconds(&matches, "fail-timeout", 10.0, 0.01, 86_400.0)?,
        },
        checks: (!health_interval.is_zero())
            .then(|| -> Result<CheckPolicy, ConfigError> {
                Ok(CheckPolicy {
                    interval: health_interval,
                    rise: opt_number(&matches, "rise", 2, 1, 1000)? as u32,
                    fall: opt_number(&matches, "fall", 3, 1, 1000)? as u32,
                })
            })
            .transpose()?,
        backends_file,
        resolve_interval: (!resolve.is_zero()).then_some(resolve),
        drain_timeout: opt_seconds(&matches, "drain-timeout", 30.0, 0.0, 86_400.0)?,
        admin,
        access_log: matches.opt_str("access-log").map(PathBuf::from),
    })))
}

fn dashed(name: &str) -> String {
    if name.len() == 1 {
        format!("-{name}")
    } else {
        format!("--{name}")
    }
}

/// Reads `--option N` as a whole number in `min..=max`, or `default` when absent.
fn opt_number(
    matches: &getopts::Matches,
    option: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match matches.opt_str(option) {
        None => Ok(default),
        Some(value) => parse_number(&value, min, max).ok_or_else(|| ConfigError::BadValue {
            option,
            value,
            expected: format!("a whole number from {min} to {max}"),
        }),
    }
}

/// Reads `--option SECS` (decimals allowed: `0.5`) in `min..=max`, or `default` when absent.
fn opt_seconds(
    matches: &getopts::Matches,
    option: &'static str,
    default: f64,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    let secs = match matches.opt_str(option) {
        None => default,
        Some(value) => parse_seconds(&value)
            .filter(|s| (min..=max).contains(s))
            .ok_or_else(|| ConfigError::BadValue {
                option,
                value,
                expected: format!("a number of seconds from {min} to {max}"),
            })?,
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Seconds as digits with at most one decimal point (`30`, `0.25`); no signs or exponents.
fn parse_seconds(text: &str) -> Option<f64> {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    let dots = text.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || digits + dots != text.len() || dots > 1 {
        return None;
    }
    text.parse().ok()
}

/// Parses a backends file: one backend spec per line; `#` starts a comment; blank lines are
/// ignored. Errors carry the line number.
pub fn parse_backends_file(text: &str) -> Result<Vec<BackendSpec>, ConfigError> {
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let spec = BackendSpec::parse(content).map_err(|error| ConfigError::BadLine {
            line: i + 1,
            error: Box::new(error),
        })?;
        specs.push(spec);
    }
    Ok(specs)
}

/// A decimal whole number in `min..=max`.
pub fn parse_number(text: &str, min: u64, max: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

/// A byte count with an optional `k`/`m` suffix (powers of 1024).
fn parse_size(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.trim_end_matches("ib").trim_end_matches('b') {
        s if s.ends_with('k') => (&s[..s.len() - 1], 1024),
        s if s.ends_with('m') => (&s[..s.len() - 1], 1024 * 1024),
        s => (s, 1),
    };
    let n = parse_number(digits, 0, u64::from(u32::MAX))? as usize;
    n.checked_mul(unit)
}

/// Splits `HOST:PORT` or `[IPv6]:PORT`. Port 0 is allowed only where `allow_zero_port`.
pub fn parse_host_port(text: &str, allow_zero_port: bool) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| "expected [IPv6]:PORT".to_string())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{host}' is not an IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "expected HOST:PORT".to_string())?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets: [ADDR]:PORT".to_string());
        }
        if host.is_empty() {
            return Err("the host is empty".to_string());
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(format!("'{host}' is not a host name or IP address"));
        }
        (host, port)
    };
    let min = if allow_zero_port { 0 } else { 1 };
    let port = parse_number(port, min, 65_535)
        .ok_or_else(|| format!("port '{port}' is not a number from {min} to 65535"))?;
    Ok((host.to_string(), port as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run(list: &[&str]) -> Config {
        match parse_args(&args(list)) {
            Ok(Action::Run(c)) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn err(list: &[&str]) -> String {
        match parse_args(&args(list)) {
            Err(e) => e.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["10.0.0.1:80"]);
        assert_eq!(c.listen, ("127.0.0.1".to_string(), 8080));
        assert_eq!(c.buffer_size, 16 * 1024);
        assert_eq!(c.buffers, 3584);
        assert_eq!(c.connect_timeout, Duration::from_millis(3000));
        assert_eq!(c.retries, 2);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.max_conns, 10_000);
        assert_eq!(c.backlog, 1024);
        assert_eq!(c.breaker.max_fails, 3);
        assert_eq!(c.breaker.fail_timeout, Duration::from_secs(10));
        assert_eq!(c.checks, None);
        assert_eq!(c.backends_file, None);
        assert_eq!(c.resolve_interval, None);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.admin, None);
        assert_eq!(c.access_log, None);
    }

    #[test]
    fn resilience_and_observability_options() {
        let c = run(&[
            "--max-fails",
            "0",
            "--fail-timeout",
            "0.5",
            "--health-interval",
            "2",
            "--rise",
            "1",
            "--fall",
            "4",
            "--backends-file",
            "/etc/tcplb/backends",
            "--resolve-interval",
            "30",
            "--drain-timeout",
            "0",
            "--admin",
            "127.0.0.1:9090",
            "--access-log",
            "-",
        ]);
        assert!(
            c.backends.is_empty(),
            "a backends file may replace positional backends"
        );
        assert_eq!(c.breaker.max_fails, 0);
        assert_eq!(c.breaker.fail_timeout, Duration::from_millis(500));
        assert_eq!(
            c.checks,
            Some(CheckPolicy {
                interval: Duration::from_secs(2),
                rise: 1,
                fall: 4
            })
        );
        assert_eq!(c.backends_file, Some(PathBuf::from("/etc/tcplb/backends")));
        assert_eq!(c.resolve_interval, Some(Duration::from_secs(30)));
        assert_eq!(c.drain_timeout, Duration::ZERO);
        assert_eq!(c.admin, Some(("127.0.0.1".to_string(), 9090)));
        assert_eq!(c.access_log, Some(PathBuf::from("-")));
    }

    #[test]
    fn backends_files() {
        let specs = parse_backends_file(
            "# web fleet\n\n10.0.0.1:80\n  10.0.0.2:80,weight=3   # the big one\n\
             [::1]:80,backup\n",
        )
        .expect("parses");
        let shown: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            ["10.0.0.1:80", "10.0.0.2:80,weight=3", "[::1]:80,backup"]
        );
        assert_eq!(parse_backends_file("# nothing\n"), Ok(vec![]));
        let err = parse_backends_file("10.0.0.1:80\n\nfoo:bar\n").expect_err("bad line");
        assert_eq!(
            err.to_string(),
            "line 3: invalid backend 'foo:bar': port 'bar' is not a number from 1 to 65535"
        );
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("30"), Some(30.0));
        assert_eq!(parse_seconds("0.25"), Some(0.25));
        assert_eq!(parse_seconds(".5"), Some(0.5));
        for bad in ["", ".", "1.2.3", "-1", "1e3", "inf", "NaN", " 1"] {
            assert_eq!(parse_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backend_specs() {
        let c = run(&[
            "-l",
            "0.0.0.0:9000",
            "10.0.0.11:80",
            "10.0.0.12:80,weight=2",
            "[::1]:5432,backup",
            "db-replica.internal:5432,weight=256,backup",
        ]);
        assert_eq!(c.listen, ("0.0.0.0".to_string(), 9000));
        let specs: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
        assert_eq!(
            specs,
            [
                "10.0.0.11:80",
                "10.0.0.12:80,weight=2",
                "[::1]:5432,backup",
                "db-replica.internal:5432,weight=256,backup"
            ]
        );
        assert_eq!(c.backends[2].host, "::1");
        assert!(c.backends[2].backup);
        assert_eq!(c.backends[1].weight, 2);
    }

    #[test]
    fn every_option() {
        let c = run(&[
            "--connect-timeout",
            "250",
            "--retries",
            "0",
            "--idle-timeout",
            "0",
            "--max-conns",
            "7",
            "--backlog",
            "16",
            "--buffer-size",
            "64k",
            "--buffers",
            "10",
            "h:1",
        ]);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.retries, 0);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.max_conns, 7);
        assert_eq!(c.backlog, 16);
        assert_eq!(c.buffer_size, 65536);
        assert_eq!(c.buffers, 10);
        let c = run(&["--buffer-size", "4096", "h:1"]);
        assert_eq!(c.buffers, DEFAULT_POOL_BYTES / 4096);
    }

    #[test]
    fn errors_name_the_bad_value() {
        assert_eq!(err(&[]), "no backend given");
        assert_eq!(err(&["--bogus", "h:1"]), "unknown option '--bogus'");
        assert_eq!(err(&["h:1", "-l"]), "option '-l' needs a value");
        assert!(err(&["foo:bar"]).contains("'foo:bar'"));
        assert!(err(&["foo:bar"]).contains("port 'bar'"));
        assert!(err(&["foo"]).contains("expected HOST:PORT"));
        assert!(err(&["::1:80"]).contains("brackets"));
        assert!(err(&["[zz]:80"]).contains("'zz' is not an IPv6"));
        assert!(err(&["h:0"]).contains("port '0'"));
        assert!(err(&["h:65536"]).contains("port '65536'"));
        assert!(err(&["h:1,weight=0"]).contains("weight '0'"));
        assert!(err(&["h:1,weight=257"]).contains("weight '257'"));
        assert!(err(&["h:1,color=red"]).contains("unknown option 'color=red'"));
        assert!(err(&["bad host:1"]).contains("'bad host'"));
        assert_eq!(
            err(&["--retries", "x", "h:1"]),
            "invalid value 'x' for --retries: expected a whole number from 0 to 16"
        );
        assert!(err(&["--retries", "17", "h:1"]).contains("'17'"));
        assert!(err(&["--max-conns", "0", "h:1"]).contains("'0'"));
        assert!(err(&["--max-conns", "-5", "h:1"]).contains("-5"));
        assert!(err(&["--buffer-size", "10", "h:1"]).contains("'10'"));
        assert!(err(&["--buffer-size", "2m", "h:1"]).contains("'2m'"));
        assert!(err(&["--listen", "nope", "h:1"]).contains("'nope'"));
        assert!(err(&["--retries", "1", "--retries", "2", "h:1"]).contains("more than once"));
        assert!(err(&["--connect-timeout", "99999999999999999999999", "h:1"]).contains("9999"));
        assert!(err(&["--idle-timeout", "-1", "h:1"]).contains("'-1'"));
        assert!(err(&["--fail-timeout", "0", "h:1"]).contains("'0'"));
        assert!(err(&["--rise", "0", "--health-interval", "1", "h:1"]).contains("'0'"));
        assert!(err(&["--admin", "nope", "h:1"]).contains("'nope'"));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_args(&args(&["-h"])), Ok(Action::Help));
        assert_eq!(parse_args(&args(&["--version"])), Ok(Action::Version));
        let text = usage();
        for flag in [
            "--listen",
            "--connect-timeout",
            "--retries",
            "--idle-timeout",
            "--max-conns",
            "--backlog",
            "--buffer-size",
            "--buffers",
            "--max-fails",
            "--fail-timeout",
            "--health-interval",
            "--rise",
            "--fall",
            "--backends-file",
            "--resolve-interval",
            "--drain-timeout",
            "--admin",
            "--access-log",
        ] {
            assert!(text.contains(flag), "help lacks {flag}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16k"), Some(16384));
        assert_eq!(parse_size("16KiB"), Some(16384));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("1.5k"), None);
    }
}
