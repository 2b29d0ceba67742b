//! What tcplb is asked to run: the command line or a config file, parsed and checked into a
//! [`Config`] of process-wide settings ([`Global`]), services ([`ServiceSpec`]: listeners
//! and how their clients are handled) and pools ([`PoolSpec`]: backends and how one is
//! chosen).
//!
//! | module | owns |
//! |---|---|
//! | [`table`] | the option table: every setting's name, scope, kind, default and help |
//! | [`values`] | one setting's value, flag text or TOML, parsed by its kind |
//! | `lower` | settings looked up through layers (own table, `[defaults]`, default) into typed specs |
//! | `flags` | the command line: one service and one pool, or `--config FILE` |
//! | [`file`] | the config file's tables and keys, with `FILE:LINE:COLUMN` errors |
//! | [`spec`] | a backend as written (`HOST:PORT,weight=2`), `HOST:PORT`, [`printable`] |
//! | [`policy`] | balance, breaker and check settings as plain data |
//! | `taken` | which listen addresses clash, or are a backend's, found by lookups |
//! | [`units`] | numbers, sizes and durations as written |
//!
//! Pure but for reading the config file: no sockets, no name resolution. Every error names
//! the bad value so `main` can print it on one line and exit with status 2; text from the
//! user reaches a message only through [`printable`], so a control character cannot forge
//! or colour a log line.

pub mod file;
mod flags;
mod lower;
pub mod policy;
pub mod protection;
pub mod spec;
pub mod table;
mod taken;
pub mod units;
pub mod values;

pub use flags::{DEFAULT_NAME, parse_args};
pub use lower::Location;
pub use spec::{BackendSpec, MAX_WEIGHT, Origin, parse_host_port, printable};
pub use table::usage;
pub use units::{parse_duration, parse_number};

use policy::{Balance, BreakerPolicy, CheckPolicy};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use taken::{BackendPlaces, Taken, clash};

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
/// Most worker threads `--workers` takes.
pub const MAX_WORKERS: usize = 1024;

/// Everything the balancer needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub global: Global,
    /// In the order written (one, `default`, from the command line).
    pub services: Vec<ServiceSpec>,
    pub pools: Vec<PoolSpec>,
    /// The config file it was read from (`None`: the command line).
    pub file: Option<PathBuf>,
}

/// Process-wide settings (`[global]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    /// Worker threads (event loops); `None` = `auto`, one per CPU this process may use.
    pub workers: Option<usize>,
    /// Where the admin HTTP endpoint listens; `None` = off.
    pub admin: Option<(String, u16)>,
    /// Where the access log goes (`-` = stdout); `None` = off.
    pub access_log: Option<PathBuf>,
    /// Where to write the process id (rewritten by the process an upgrade starts).
    pub pid_file: Option<PathBuf>,
    /// Sessions at once for the whole process.
    pub max_conns: usize,
    /// Whether `max-conns` was given (a default that does not fit the open-file limit is
    /// lowered quietly; the user's own value, with a warning).
    pub max_conns_given: bool,
    pub buffer_size: usize,
    pub buffers: usize,
    /// Kernel pipes for splicing bulk flows (0 = splice off).
    pub pipes: usize,
    pub pipes_given: bool,
    /// How long live sessions may run on after SIGTERM/SIGINT, or after their service was
    /// removed by a reload.
    pub drain_timeout: Duration,
    /// How long the process an upgrade (`SIGUSR2`) starts may take to serve.
    pub upgrade_timeout: Duration,
    /// How long the old process of an upgrade stands by once the new one serves, to take
    /// over again if it dies (zero: it hands over at once).
    pub upgrade_probation: Duration,
}

/// A service: where clients connect and how they are handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// `HOST:PORT`s to listen on (host may be a name; port 0 picks a free port).
    pub listen: Vec<(String, u16)>,
    /// The pool its sessions go to.
    pub pool: String,
    /// Its own limit of sessions at once (the process's `max-conns` holds too).
    pub max_conns: Option<usize>,
    pub backlog: i32,
    /// Every client starts with a PROXY protocol header, due within this long; `None` = off.
    pub accept_proxy: Option<Duration>,
    /// `None` = sessions never time out for idleness.
    pub idle_timeout: Option<Duration>,
    /// Its own connect timeout and retries; `None`: its pool's.
    pub connect_timeout: Option<Duration>,
    pub retries: Option<u32>,
    /// Its clients' classes by source (empty: every client is `normal`).
    pub priority: protection::Priority,
    /// Per-source limits; `None` = off.
    pub source_limits: Option<protection::SourceLimits>,
}

/// A pool: backends and how one is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub backends: Vec<BackendSpec>,
    /// More backends, one spec per line, re-read on SIGHUP.
    pub backends_file: Option<PathBuf>,
    pub balance: Balance,
    /// The passive circuit breaker (`max-fails`, `fail-timeout`).
    pub breaker: BreakerPolicy,
    /// Active health checks; `None` = off.
    pub checks: Option<CheckPolicy>,
    /// Re-resolve backend names this often; `None` = only at start and on reload.
    pub resolve_interval: Option<Duration>,
    /// How long a connect (a session's, or a probe's) may take.
    pub connect_timeout: Duration,
    /// Connect attempts on other backends after a failed one.
    pub retries: u32,
    /// Its wait queue for clients that find every backend at its `maxconn`.
    pub queue: protection::QueueSettings,
}

impl Config {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks what spans services and pools: every service names a pool that exists, no
    /// two services listen on one address, no service listens where a backend is, the
    /// admin endpoint is not a service's address. The error comes with the index of the
    /// service it is about, if it is about one.
    pub fn validate(&self) -> Result<(), (Option<usize>, ConfigError)> {
        if self.services.is_empty() {
            return Err((
                None,
                ConfigError::Usage(
                    "no service: add a [services.NAME] table with listen and pool".to_string(),
                ),
            ));
        }
        let mut pools: HashMap<&str, (&PoolSpec, Option<BackendPlaces>)> = HashMap::new();
        for pool in &self.pools {
            pools.entry(&pool.name).or_insert((pool, None));
        }
        let mut taken = Taken::new();
        for (i, service) in self.services.iter().enumerate() {
            let Some((pool, places)) = pools.get_mut(service.pool.as_str()) else {
                let known: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
                let hint = match table::closest(&service.pool, known.iter().copied()) {
                    Some(meant) => format!(" (did you mean '{meant}'?)"),
                    None if known.is_empty() => " (add a [pools.NAME] table)".to_string(),
                    None => format!(" (the pools are {})", known.join(", ")),
                };
                return Err((
                    Some(i),
                    ConfigError::Usage(format!(
                        "service '{}' names pool '{}', which is not defined{hint}",
                        service.name,
                        printable(&service.pool)
                    )),
                ));
            };
            let places = places.get_or_insert_with(|| BackendPlaces::new(&pool.backends));
            for addr in &service.listen {
                if let Err((other_addr, other)) = taken.take(addr, service.name.as_str()) {
                    return Err((
                        Some(i),
                        ConfigError::Usage(format!(
                            "service '{}' listens on {}, which service '{other}' already \
                             listens on ({})",
                            service.name,
                            authority(addr),
                            authority(other_addr)
                        )),
                    ));
                }
                if let Some(b) = places.at(addr) {
                    return Err((
                        Some(i),
                        ConfigError::Usage(format!(
                            "service '{}' listens on {}, which is a backend of its pool '{}' \
                             ({}): sessions would loop back into tcplb",
                            service.name,
                            authority(addr),
                            pool.name,
                            b.authority()
                        )),
                    ));
                }
            }
        }
        self.check_admin_address().map_err(|e| (None, e))
    }

    /// The admin endpoint cannot share a service's address.
    pub fn check_admin_address(&self) -> Result<(), ConfigError> {
        let Some(admin) = &self.global.admin else {
            return Ok(());
        };
        for service in &self.services {
            if let Some(addr) = service.listen.iter().find(|a| clash(a, admin)) {
                return Err(ConfigError::Usage(
                    if self.file.is_some() || service.name != DEFAULT_NAME {
                        format!(
                            "admin {} and service '{}' (listen {}) are the same address: give \
                             the admin endpoint a port of its own",
                            authority(admin),
                            service.name,
                            authority(addr)
                        )
                    } else {
                        format!(
                            "--admin {} and --listen {} are the same address: give the admin \
                             endpoint a port of its own",
                            authority(admin),
                            authority(addr)
                        )
                    },
                ));
            }
        }
        Ok(())
    }

    /// One line per service for `--check`: `web: 0.0.0.0:80, [::]:80 -> pool web (3
    /// backends, least-active)`.
    pub fn summary(&self) -> Vec<String> {
        self.services
            .iter()
            .map(|s| {
                let listen: Vec<String> = s.listen.iter().map(authority).collect();
                let pool = match self.pool(&s.pool) {
                    Some(p) => {
                        let mut from = format!(
                            "{} backend{}",
                            p.backends.len(),
                            if p.backends.len() == 1 { "" } else { "s" }
                        );
                        if let Some(file) = &p.backends_file {
                            from.push_str(&format!(
                                " + {}",
                                printable(&file.display().to_string())
                            ));
                        }
                        format!("{from}, {}", p.balance.describe())
                    }
                    None => "undefined".to_string(),
                };
                format!(
                    "service {}: {} -> pool {} ({pool})",
                    s.name,
                    listen.join(", "),
                    s.pool
                )
            })
            .collect()
    }
}

/// `host:port` with brackets around an IPv6 literal.
pub fn authority((host, port): &(String, u16)) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Action {
    Run(Box<Config>),
    /// `--check --config FILE`: the file parsed and checked; print its summary.
    Check(Box<Config>),
    Help,
    Version,
}

/// A usage error: the message names the bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Usage(String),
    /// `option` as written: `--retries` on the command line, `retries` in a file.
    BadValue {
        option: String,
        value: String,
        expected: String,
    },
    BadBackend {
        spec: String,
        why: String,
    },
    /// `--listen`, `--admin` or a `listen` key.
    BadAddress {
        option: String,
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
    /// Somewhere in a config file.
    At {
        file: String,
        line: usize,
        column: usize,
        error: Box<ConfigError>,
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
                "invalid value '{}' for {option}: expected {}",
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
                "invalid {option} address '{}': {}",
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
            ConfigError::At {
                file,
                line,
                column,
                error,
            } => write!(f, "{}:{line}:{column}: {error}", printable(file)),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
