//! The command line: parsing and validation into a [`Config`]. The option table (flags,
//! defaults and `--help` in one place) is in `options.rs`; backend specs and the backends
//! file in [`spec`]; numbers, sizes and durations in [`units`].
//!
//! Pure: no sockets, no name resolution, no files. Every error names the bad value so `main`
//! can print it on one line and exit with status 2; text from the user reaches a message
//! only through [`printable`], so a control character cannot forge or colour a log line.

mod options;
pub mod spec;
pub mod units;

use options::options;
pub use options::usage;

pub use spec::{BackendSpec, MAX_WEIGHT, Origin, parse_backends_file, parse_host_port, printable};
pub use units::{parse_duration, parse_number};

use crate::fleet::health::{BreakerPolicy, CheckPolicy};
use crate::fleet::select::{self, Balance, HashSettings, maglev};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use units::{DAY, HOUR, MILLISECONDS, SECONDS, parse_size, show_duration};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default size of one pool buffer.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;
/// Memory the pool gets by default when `--buffers` is not given: a default run fits in
/// about 64 MiB with the rest of the process.
pub const DEFAULT_POOL_BYTES: usize = 56 * 1024 * 1024;
/// Kernel pipes for the splice path when `--pipes` is not given: up to 256 bulk directions
/// spliced at once, at most 64 MiB held in pipes (256 KiB each, and only while stalled
/// readers leave bytes in them), 512 descriptors.
pub const DEFAULT_PIPES: usize = 256;
/// Most pipes `--pipes` takes.
pub const MAX_PIPES: u64 = 1 << 20;
/// Sessions at once when `--max-conns` is not given.
pub const DEFAULT_MAX_CONNS: u64 = 10_000;
/// Most worker threads `--workers` takes.
pub const MAX_WORKERS: usize = 1024;

/// Everything the balancer needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `HOST:PORT` to listen on (host may be a name; port 0 picks a free port).
    pub listen: (String, u16),
    pub backends: Vec<BackendSpec>,
    pub buffer_size: usize,
    pub buffers: usize,
    /// Kernel pipes for splicing bulk flows (0 = splice off).
    pub pipes: usize,
    /// Whether `--pipes` was given (see `max_conns_given`).
    pub pipes_given: bool,
    pub connect_timeout: Duration,
    pub retries: u32,
    /// `None` = sessions never time out for idleness.
    pub idle_timeout: Option<Duration>,
    pub max_conns: usize,
    /// Whether `--max-conns` was given (a default that does not fit the open-file limit is
    /// lowered quietly; the user's own value, with a warning).
    pub max_conns_given: bool,
    pub backlog: i32,
    /// Worker threads (event loops); `None` = `auto`, one per CPU this process may use.
    pub workers: Option<usize>,
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
    /// Where to write the process id (rewritten by the process an upgrade starts).
    pub pid_file: Option<PathBuf>,
    /// How long the process an upgrade (`SIGUSR2`) starts may take to serve.
    pub upgrade_timeout: Duration,
    /// How long the old process of an upgrade stands by once the new one serves, to take
    /// over again if it dies (zero: it hands over at once).
    pub upgrade_probation: Duration,
    /// How a backend is chosen (`--balance`, with `--hash-*` for source-hash).
    pub balance: Balance,
    /// Every client starts with a PROXY protocol header, due within this long
    /// (`--accept-proxy`, `--proxy-timeout`); `None` = off.
    pub accept_proxy: Option<Duration>,
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
    /// `--listen` or `--admin`.
    BadAddress {
        option: &'static str,
        value: String,
        why: String,
    },
    /// A line of a backends file.
    BadLine {
        line: usize,
        error: Box<ConfigError>,
    },
    /// Several lines of a backends file: the first few (each a `BadLine`) of `total`.
    BadLines {
        shown: Vec<ConfigError>,
        total: usize,
    },
}

impl fmt::Display for ConfigError {
    /// Every piece that came from the user goes through [`printable`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(msg) => f.write_str(&printable(msg)),
            ConfigError::BadValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "invalid value '{}' for --{option}: expected {}",
                printable(value),
                printable(expected)
            ),
            ConfigError::BadBackend { spec, why } => write!(
                f,
                "invalid backend '{}': {}",
                printable(spec),
                printable(why)
            ),
            ConfigError::BadAddress { option, value, why } => write!(
                f,
                "invalid --{option} address '{}': {}",
                printable(value),
                printable(why)
            ),
            ConfigError::BadLine { line, error } => write!(f, "line {line}: {error}"),
            ConfigError::BadLines { shown, total } => {
                write!(f, "{total} bad lines: ")?;
                for (i, error) in shown.iter().enumerate() {
                    write!(f, "{}{error}", if i == 0 { "" } else { "; " })?;
                }
                match total.saturating_sub(shown.len()) {
                    0 => Ok(()),
                    1 => f.write_str("; and 1 more bad line"),
                    more => write!(f, "; and {more} more bad lines"),
                }
            }
        }
    }
}

impl std::error::Error for ConfigError {}

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
    let listen = parse_host_port(&listen_text, true).map_err(|why| ConfigError::BadAddress {
        option: "listen",
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
        Some(text) => {
            Some(
                parse_host_port(&text, true).map_err(|why| ConfigError::BadAddress {
                    option: "admin",
                    value: text.clone(),
                    why,
                })?,
            )
        }
    };
    if let Some(admin) = admin.as_ref().filter(|admin| clash(&listen, admin)) {
        return Err(ConfigError::Usage(format!(
            "--admin {} and --listen {} are the same address: give the admin endpoint a \
             port of its own",
            show_host_port(admin),
            show_host_port(&listen)
        )));
    }
    let health_interval = opt_duration(&matches, "health-interval", 0, SECONDS, (0, DAY))?;

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
    let idle = opt_duration(
        &matches,
        "idle-timeout",
        300 * SECONDS,
        SECONDS,
        (0, 365 * DAY),
    )?;
    let resolve = opt_duration(&matches, "resolve-interval", 0, SECONDS, (0, DAY))?;

    Ok(Action::Run(Box::new(Config {
        listen,
        backends,
        buffer_size,
        buffers,
        pipes: opt_number(&matches, "pipes", DEFAULT_PIPES as u64, 0, MAX_PIPES)? as usize,
        pipes_given: matches.opt_present("pipes"),
        connect_timeout: opt_duration(
            &matches,
            "connect-timeout",
            3 * SECONDS,
            MILLISECONDS,
            (MILLISECONDS, HOUR),
        )?,
        retries: opt_number(&matches, "retries", 2, 0, 16)? as u32,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        max_conns: opt_number(&matches, "max-conns", DEFAULT_MAX_CONNS, 1, 1_000_000)? as usize,
        max_conns_given: matches.opt_present("max-conns"),
        backlog: opt_number(&matches, "backlog", 1024, 1, 65_535)? as i32,
        workers: match matches.opt_str("workers") {
            None => None,
            Some(v) if v == "auto" => None,
            Some(value) => Some(parse_number(&value, 1, MAX_WORKERS as u64).ok_or_else(|| {
                ConfigError::BadValue {
                    option: "workers",
                    value,
                    expected: format!("auto or a whole number from 1 to {MAX_WORKERS}"),
                }
            })? as usize),
        },
        breaker: BreakerPolicy {
            max_fails: opt_number(&matches, "max-fails", 3, 0, 1_000_000)? as u32,
            fail_timeout: opt_duration(
                &matches,
                "fail-timeout",
                10 * SECONDS,
                SECONDS,
                (10 * MILLISECONDS, DAY),
            )?,
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
        drain_timeout: opt_duration(&matches, "drain-timeout", 30 * SECONDS, SECONDS, (0, DAY))?,
        admin,
        access_log: matches.opt_str("access-log").map(PathBuf::from),
        pid_file: matches.opt_str("pid-file").map(PathBuf::from),
        upgrade_timeout: opt_duration(
            &matches,
            "upgrade-timeout",
            30 * SECONDS,
            SECONDS,
            (100 * MILLISECONDS, HOUR),
        )?,
        upgrade_probation: opt_duration(
            &matches,
            "upgrade-probation",
            5 * SECONDS,
            SECONDS,
            (0, HOUR),
        )?,
        balance: parse_balance(&matches)?,
        accept_proxy: parse_accept_proxy(&matches)?,
    })))
}

/// Whether `--listen` and `--admin` would be bound to the same address (the second bind
/// would fail with only "Address already in use"): the same port, not 0 (each 0 picks a
/// free port of its own), and the same host (names compared as written, without
/// resolving them) or a wildcard address that takes the other's (`0.0.0.0` any IPv4
/// address; `[::]` any address, since it takes IPv4 too unless the system says otherwise).
fn clash(listen: &(String, u16), admin: &(String, u16)) -> bool {
    use std::net::IpAddr;
    let ((a, a_port), (b, b_port)) = (listen, admin);
    if a_port != b_port || *a_port == 0 {
        return false;
    }
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let covers = |wild: &IpAddr, other: &IpAddr| match wild {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    };
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b || covers(&a, &b) || covers(&b, &a),
        _ => false,
    }
}

/// `HOST:PORT` as the user wrote it (an IPv6 address in brackets).
fn show_host_port((host, port): &(String, u16)) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `--balance` and the `--hash-*` settings that go with source-hash.
fn parse_balance(matches: &getopts::Matches) -> Result<Balance, ConfigError> {
    let balance = match matches.opt_str("balance") {
        None => Balance::default(),
        Some(name) => Balance::from_name(&name).ok_or_else(|| ConfigError::BadValue {
            option: "balance",
            value: name,
            expected: format!("one of {}", select::NAMES.join(", ")),
        })?,
    };
    let Balance::SourceHash(defaults) = balance else {
        for option in ["hash-table-size", "hash-balance-factor"] {
            if matches.opt_present(option) {
                return Err(ConfigError::Usage(format!(
                    "--{option} applies to --balance source-hash only (the balance is {})",
                    balance.name()
                )));
            }
        }
        return Ok(balance);
    };
    let table_size = match matches.opt_str("hash-table-size") {
        None => defaults.table_size,
        Some(value) => parse_number(&value, 2, u64::from(select::MAX_TABLE_SIZE))
            .filter(|&n| maglev::is_prime(n))
            .ok_or_else(|| ConfigError::BadValue {
                option: "hash-table-size",
                value,
                expected: format!(
                    "a prime number from 2 to {}, such as 65537 (the default) or 655373",
                    select::MAX_TABLE_SIZE
                ),
            })? as u32,
    };
    let balance_factor = match matches.opt_str("hash-balance-factor") {
        None => None,
        Some(value) => Some(parse_factor(&value).ok_or_else(|| ConfigError::BadValue {
            option: "hash-balance-factor",
            value,
            expected: "a number from 1 to 100 with at most two decimals, such as 1.25".to_string(),
        })?),
    };
    Ok(Balance::SourceHash(HashSettings {
        table_size,
        balance_factor,
    }))
}

/// `1.25` as 125 (hundredths), from 1 to 100 with at most two decimals.
fn parse_factor(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 3 || fraction.len() > 2 || !digits(whole) {
        return None;
    }
    if !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
        return None;
    }
    let hundredths: u32 =
        whole.parse::<u32>().ok()? * 100 + format!("{fraction:0<2}").parse::<u32>().ok()?;
    (100..=10_000).contains(&hundredths).then_some(hundredths)
}

/// `--accept-proxy` and its `--proxy-timeout`.
fn parse_accept_proxy(matches: &getopts::Matches) -> Result<Option<Duration>, ConfigError> {
    if !matches.opt_present("accept-proxy") {
        if matches.opt_present("proxy-timeout") {
            return Err(ConfigError::Usage(
                "--proxy-timeout applies to --accept-proxy only".to_string(),
            ));
        }
        return Ok(None);
    }
    opt_duration(
        matches,
        "proxy-timeout",
        5 * SECONDS,
        SECONDS,
        (MILLISECONDS, HOUR),
    )
    .map(Some)
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

/// Reads a duration option (see [`parse_duration`]; a bare number is in `bare_unit`) in
/// `min..=max`, or `default` when absent. Everything in nanoseconds.
fn opt_duration(
    matches: &getopts::Matches,
    option: &'static str,
    default: u64,
    bare_unit: u64,
    (min, max): (u64, u64),
) -> Result<Duration, ConfigError> {
    let Some(value) = matches.opt_str(option) else {
        return Ok(Duration::from_nanos(default));
    };
    let range = Duration::from_nanos(min)..=Duration::from_nanos(max);
    parse_duration(&value, bare_unit)
        .filter(|d| range.contains(d))
        .ok_or_else(|| ConfigError::BadValue {
            option,
            value,
            expected: format!(
                "a duration from {} to {}, such as 250ms, 3s, 1.5s or 2m; a bare number is {}",
                show_duration(min),
                show_duration(max),
                if bare_unit == MILLISECONDS {
                    "milliseconds"
                } else {
                    "seconds"
                }
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::path::Path;

    fn file(text: &str) -> Result<Vec<BackendSpec>, ConfigError> {
        parse_backends_file(text, Path::new("/etc/tcplb/backends"))
    }

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
        assert_eq!((c.pipes, c.pipes_given), (256, false));
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
        assert_eq!(c.pid_file, None);
        assert_eq!(c.upgrade_timeout, Duration::from_secs(30));
        assert_eq!(c.upgrade_probation, Duration::from_secs(5));
    }

    #[test]
    fn admin_on_the_listen_address_is_a_usage_error() {
        let clashes = |listen: &str, admin: &str| match parse_args(&args(&[
            "--listen", listen, "--admin", admin, "h:1",
        ])) {
            Ok(_) => false,
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("--admin {admin} and --listen {listen}")),
                    "{e}"
                );
                true
            }
        };
        assert!(clashes("127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(clashes("Localhost:8080", "localhost:8080"));
        assert!(clashes("0.0.0.0:8080", "127.0.0.1:8080"));
        assert!(clashes("10.0.0.5:8080", "0.0.0.0:8080"));
        assert!(clashes("[::]:8080", "127.0.0.1:8080"));
        assert!(clashes("[::1]:8080", "[::]:8080"));
        assert!(clashes("[::1]:8080", "[0:0::1]:8080"));
        // Each port 0 is a free port of its own.
        assert!(!clashes("127.0.0.1:0", "127.0.0.1:0"));
        assert!(!clashes("127.0.0.1:8080", "127.0.0.1:9090"));
        assert!(!clashes("127.0.0.1:8080", "127.0.0.2:8080"));
        assert!(!clashes("0.0.0.0:8080", "[::1]:8080"));
        // Names are not resolved here: the bind says which flag failed.
        assert!(!clashes("localhost:8080", "127.0.0.1:8080"));
    }

    #[test]
    fn upgrade_options() {
        let c = run(&[
            "--pid-file",
            "/run/tcplb/tcplb.pid",
            "--upgrade-timeout",
            "2.5s",
            "h:1",
        ]);
        assert_eq!(c.pid_file, Some(PathBuf::from("/run/tcplb/tcplb.pid")));
        assert_eq!(c.upgrade_timeout, Duration::from_millis(2500));
        assert_eq!(
            run(&["--upgrade-timeout", "5", "h:1"]).upgrade_timeout,
            Duration::from_secs(5)
        );
        assert!(err(&["--upgrade-timeout", "50ms", "h:1"]).contains("'50ms'"));
        assert!(err(&["--upgrade-timeout", "2h", "h:1"]).contains("'2h'"));
        assert_eq!(
            run(&["--upgrade-probation", "1.5s", "h:1"]).upgrade_probation,
            Duration::from_millis(1500)
        );
        assert_eq!(
            run(&["--upgrade-probation", "0", "h:1"]).upgrade_probation,
            Duration::ZERO
        );
        assert!(err(&["--upgrade-probation", "2h", "h:1"]).contains("'2h'"));
        assert!(err(&["--upgrade-probation", "soon", "h:1"]).contains("'soon'"));
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
    fn control_characters_from_the_file_are_shown_escaped() {
        let err = file("10.0.0.1:80\x1b[31m\n").expect_err("bad line");
        assert_eq!(
            err.to_string(),
            "line 1: invalid backend '10.0.0.1:80\\x1b[31m': port '80\\x1b[31m' is not a \
             number from 1 to 65535"
        );
        let err = file("ok.example\u{202e}:80\n").expect_err("bad line");
        assert!(err.to_string().contains("ok.example\\u{202e}:80"), "{err}");
        let err = parse_args(&args(&["h:1,\x07\x00\u{85}\\"])).expect_err("bad option");
        assert_eq!(
            err.to_string(),
            "invalid backend 'h:1,\\x07\\x00\\u{85}\\\\': unknown option '\\x07\\x00\\u{85}\\\\'"
        );
        assert!(matches!(printable("plain [::1]:80 é"), Cow::Borrowed(_)));
        assert_eq!(printable("a\tb\r\n\x7f"), "a\\tb\\r\\n\\x7f");
    }

    #[test]
    fn every_duration_option_takes_a_unit() {
        let c = run(&[
            "--connect-timeout",
            "1.5s",
            "--idle-timeout",
            "2m",
            "--fail-timeout",
            "250ms",
            "--health-interval",
            "1.5",
            "--resolve-interval",
            "1h",
            "--drain-timeout",
            "0.5m",
            "h:1",
        ]);
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.breaker.fail_timeout, Duration::from_millis(250));
        assert_eq!(
            c.checks.map(|c| c.interval),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(c.resolve_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        // A bare number keeps the unit the option always had.
        let c = run(&["--connect-timeout", "3", "--idle-timeout", "3", "h:1"]);
        assert_eq!(c.connect_timeout, Duration::from_millis(3));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(3)));
        // `0s` is zero like `0`: never time out.
        assert_eq!(run(&["--idle-timeout", "0s", "h:1"]).idle_timeout, None);
        // The ranges are in real time, whatever the unit.
        assert_eq!(
            run(&["--connect-timeout", "60m", "h:1"]).connect_timeout,
            Duration::from_secs(3600)
        );
        assert!(err(&["--connect-timeout", "61m", "h:1"]).contains("'61m'"));
        assert!(err(&["--connect-timeout", "0.5ms", "h:1"]).contains("'0.5ms'"));
        assert!(err(&["--fail-timeout", "9ms", "h:1"]).contains("'9ms'"));
        assert!(err(&["--drain-timeout", "25h", "h:1"]).contains("'25h'"));
        assert!(err(&["--idle-timeout", "8761h", "h:1"]).contains("'8761h'"));
        assert_eq!(
            run(&["--idle-timeout", "8760h", "h:1"]).idle_timeout,
            Some(Duration::from_secs(365 * 86_400))
        );
    }

    #[test]
    fn a_bad_duration_names_itself_and_the_accepted_forms() {
        assert_eq!(
            err(&["--connect-timeout", "3x", "h:1"]),
            "invalid value '3x' for --connect-timeout: expected a duration from 1ms to 1h, \
             such as 250ms, 3s, 1.5s or 2m; a bare number is milliseconds"
        );
        assert_eq!(
            err(&["--fail-timeout", "0", "h:1"]),
            "invalid value '0' for --fail-timeout: expected a duration from 10ms to 24h, \
             such as 250ms, 3s, 1.5s or 2m; a bare number is seconds"
        );
        for option in [
            "idle-timeout",
            "health-interval",
            "resolve-interval",
            "drain-timeout",
        ] {
            let message = err(&[&format!("--{option}"), "5 s", "h:1"]);
            assert!(
                message.starts_with(&format!("invalid value '5 s' for --{option}: "))
                    && message.contains("such as 250ms, 3s, 1.5s or 2m")
                    && message.contains("a bare number is seconds"),
                "{message}"
            );
        }
    }

    #[test]
    fn address_slips_get_a_message_that_says_what_to_write() {
        assert_eq!(
            err(&["--admin", "9090", "h:1"]),
            "invalid --admin address '9090': expected HOST:PORT, such as 127.0.0.1:9090"
        );
        assert_eq!(
            err(&["--listen", "8080", "h:1"]),
            "invalid --listen address '8080': expected HOST:PORT, such as 127.0.0.1:8080"
        );
        assert_eq!(
            err(&["http://127.0.0.1:6379"]),
            "invalid backend 'http://127.0.0.1:6379': expected HOST:PORT, not a URL: drop \
             'http://'"
        );
        assert_eq!(
            err(&["https://web:443/index.html"]),
            "invalid backend 'https://web:443/index.html': expected HOST:PORT, not a URL: drop \
             'https://' and '/index.html'"
        );
        assert_eq!(
            err(&["127.0.0.1:6379:weight=2"]),
            "invalid backend '127.0.0.1:6379:weight=2': options follow a comma: \
             127.0.0.1:6379,weight=2"
        );
        assert!(
            err(&["[::1]:6379:backup,weight=2"])
                .ends_with("options follow a comma: [::1]:6379,backup,weight=2")
        );
        assert!(err(&["::1:80"]).ends_with("an IPv6 address needs brackets: [ADDR]:PORT"));
        assert!(err(&["2001:db8::5:5432"]).ends_with("needs brackets: [ADDR]:PORT"));
        assert!(err(&["a:b:80"]).contains("expected one ':'"));
        // No message says the same thing twice.
        for bad in [
            vec!["--admin", "9090", "h:1"],
            vec!["--admin", "nope", "h:1"],
            vec!["--listen", "nope", "h:1"],
            vec!["nope"],
        ] {
            let message = err(&bad);
            assert_eq!(
                message.matches("HOST:PORT").count(),
                1,
                "{bad:?}: {message}"
            );
        }
    }

    #[test]
    fn balance_and_proxy_options() {
        let c = run(&["h:1"]);
        assert_eq!(c.balance, Balance::LeastActive);
        assert_eq!(c.accept_proxy, None);
        assert_eq!(
            run(&["--balance", "round-robin", "h:1"]).balance,
            Balance::RoundRobin
        );
        assert_eq!(
            run(&["--balance", "random-two", "h:1"]).balance,
            Balance::RandomTwo
        );
        assert_eq!(
            run(&["--balance", "source-hash", "h:1"]).balance,
            Balance::SourceHash(HashSettings {
                table_size: 65_537,
                balance_factor: None
            })
        );
        let c = run(&[
            "--balance",
            "source-hash",
            "--hash-table-size",
            "16777213",
            "--hash-balance-factor",
            "1.25",
            "--accept-proxy",
            "--proxy-timeout",
            "250ms",
            "h:1,send-proxy",
            "h:2,send-proxy-v2,weight=2",
        ]);
        assert_eq!(
            c.balance,
            Balance::SourceHash(HashSettings {
                table_size: 16_777_213,
                balance_factor: Some(125)
            })
        );
        assert_eq!(c.accept_proxy, Some(Duration::from_millis(250)));
        assert_eq!(c.backends[0].to_string(), "h:1,send-proxy");
        assert_eq!(c.backends[1].to_string(), "h:2,weight=2,send-proxy-v2");
        assert_eq!(
            run(&["--accept-proxy", "h:1"]).accept_proxy,
            Some(Duration::from_secs(5))
        );
        for (text, hundredths) in [("1", 100), ("1.5", 150), ("1.25", 125), ("100", 10_000)] {
            assert_eq!(parse_factor(text), Some(hundredths), "{text}");
        }
        for bad in [
            "0.99", "1.255", "1.", ".5", "100.01", "-1", "1e2", "", "1,5",
        ] {
            assert_eq!(parse_factor(bad), None, "{bad}");
        }
        for bad in ["1", "65536", "16777259", "x"] {
            assert!(
                err(&["--balance", "source-hash", "--hash-table-size", bad, "h:1"])
                    .contains("a prime number"),
                "{bad}"
            );
        }
        assert!(err(&["h:1,send-proxy-v3"]).contains("unknown option 'send-proxy-v3'"));
        assert!(err(&["h:1:send-proxy"]).contains("options follow a comma: h:1,send-proxy"));
    }

    #[test]
    fn max_conns_remembers_whether_it_was_given() {
        assert!(!run(&["h:1"]).max_conns_given);
        let c = run(&["--max-conns", "10000", "h:1"]);
        assert!(c.max_conns_given);
        assert_eq!(c.max_conns, 10_000);
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
            "--pipes",
            "0",
            "h:1",
        ]);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.retries, 0);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.max_conns, 7);
        assert_eq!(c.backlog, 16);
        assert_eq!(c.buffer_size, 65536);
        assert_eq!(c.buffers, 10);
        assert_eq!((c.pipes, c.pipes_given), (0, true));
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
        assert!(err(&["--buffer-size", "2m", "h:1"]).contains("from 1k to 1m"));
        assert_eq!(
            err(&["--pipes", "-1", "h:1"]),
            "invalid value '-1' for --pipes: expected a whole number from 0 to 1048576"
        );
        assert!(err(&["--pipes", "1048577", "h:1"]).contains("'1048577'"));
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
            "--pipes",
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
            "--pid-file",
            "--upgrade-timeout",
            "--upgrade-probation",
            "--balance",
            "--hash-table-size",
            "--hash-balance-factor",
            "--accept-proxy",
            "--proxy-timeout",
            "send-proxy-v2",
        ] {
            assert!(text.contains(flag), "help lacks {flag}");
        }
        for note in [
            "from 1k to 1m",
            "250ms, 3s, 1.5s, 2m",
            "a bare number is milliseconds",
            "SIGHUP",
            "SIGTERM, SIGINT",
            "a second one",
            "SIGUSR2",
            "Exit status",
            "0  after --help",
            "1  it cannot start",
            "2  bad usage",
        ] {
            assert!(text.contains(note), "help lacks {note:?}:\n{text}");
        }
    }
}
