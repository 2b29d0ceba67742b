//! The command line: `Config` and `BackendSpec`, parsing and validation.
//!
//! Pure: no sockets, no name resolution, no files. Every error names the bad value so `main`
//! can print it on one line and exit with status 2.

use std::ffi::OsString;
use std::fmt;
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
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Run(Config),
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
    if backends.is_empty() {
        return Err(ConfigError::Usage("no backend given".to_string()));
    }

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
    let idle = opt_number(&matches, "idle-timeout", 300, 0, 365 * 86_400)?;

    Ok(Action::Run(Config {
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
        idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
        max_conns: opt_number(&matches, "max-conns", 10_000, 1, 1_000_000)? as usize,
        backlog: opt_number(&matches, "backlog", 1024, 1, 65_535)? as i32,
    }))
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
            Ok(Action::Run(c)) => c,
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
