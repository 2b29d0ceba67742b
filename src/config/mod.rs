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
//! | [`health`] | a pool's `health = { ... }` table: an application check as written |
//! | [`spec`] | a backend as written (`HOST:PORT,weight=2`), `HOST:PORT`, [`printable`] |
//! | [`policy`] | balance, breaker and check settings as plain data |
//! | [`routes`] | a service's TLS routes (SNI, ALPN → pool) as written, checked |
//! | `taken` | which listen addresses clash, or are a backend's, found by lookups |
//! | [`units`] | numbers, sizes and durations as written |
//!
//! Pure but for reading the config file: no sockets, no name resolution. Every error names
//! the bad value so `main` can print it on one line and exit with status 2; text from the
//! user reaches a message only through [`printable`], so a control character cannot forge
//! or colour a log line.

pub mod file;
mod flags;
pub mod health;
mod lower;
pub mod policy;
pub mod protection;
pub mod routes;
pub mod spec;
pub mod table;
mod taken;
pub mod units;
pub mod values;

pub use flags::{DEFAULT_NAME, parse_args};
pub use lower::Location;
pub use routes::{RouteSpec, RoutingSpec};
pub use spec::{BackendSpec, MAX_WEIGHT, Origin, parse_host_port, printable};
pub use table::usage;
pub use units::{parse_duration, parse_number};

use policy::{Balance, BreakerPolicy, CheckPolicy, RuntimePolicy};
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
    /// Where `tcplb ctl` finds this process: a unix socket; `None` = off.
    pub control_socket: Option<PathBuf>,
    /// Its permission bits (0600 unless told).
    pub control_socket_mode: u32,
    /// Its group, if not the process's.
    pub control_socket_group: Option<String>,
    /// The kernel fast path (`--bpf-redirect`), and the bytes it may hold in flight toward
    /// one socket.
    pub bpf_redirect: bool,
    pub bpf_redirect_bound: u64,
}

/// A service: where clients connect and how they are handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// `HOST:PORT`s to listen on (host may be a name; port 0 picks a free port).
    pub listen: Vec<(String, u16)>,
    /// The pool its sessions go to (with `routing`: those no route takes; `None`: such
    /// clients are reset).
    pub pool: Option<String>,
    /// Routes by the TLS ClientHello (`routes`); `None`: the bytes are never looked at.
    pub routing: Option<RoutingSpec>,
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
    /// Agent checks, slow start, what happens when a backend is marked down.
    pub runtime: RuntimePolicy,
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

    /// Checks what spans services and pools: every service and every route names a pool
    /// that exists, no two services listen on one address, no service listens where a
    /// backend of its pools is, the admin endpoint is not a service's address. The error
    /// comes with where it is about ([`Where`]), if it is about a service or a route.
    pub fn validate(&self) -> Result<(), (Option<Where>, ConfigError)> {
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
            // Its own pool, then its routes': each must exist.
            let mut own: Vec<&str> = Vec::new();
            if let Some(name) = &service.pool {
                if !pools.contains_key(name.as_str()) {
                    let what = format!("service '{}' names pool", service.name);
                    return Err((Some(Where::Service(i)), self.undefined_pool(&what, name)));
                }
                own.push(name);
            }
            for (j, route) in service.routes().iter().enumerate() {
                if !pools.contains_key(route.pool.as_str()) {
                    let what = format!(
                        "service '{}': route {} ({}) names pool",
                        service.name,
                        j + 1,
                        route.describe()
                    );
                    return Err((
                        Some(Where::Route(i, j)),
                        self.undefined_pool(&what, &route.pool),
                    ));
                }
                own.push(&route.pool);
            }
            for addr in &service.listen {
                if let Err((other_addr, other)) = taken.take(addr, service.name.as_str()) {
                    return Err((
                        Some(Where::Service(i)),
                        ConfigError::Usage(format!(
                            "service '{}' listens on {}, which service '{other}' already \
                             listens on ({})",
                            service.name,
                            authority(addr),
                            authority(other_addr)
                        )),
                    ));
                }
                for name in &own {
                    let Some((pool, places)) = pools.get_mut(name) else {
                        continue;
                    };
                    let places = places.get_or_insert_with(|| BackendPlaces::new(&pool.backends));
                    if let Some(b) = places.at(addr) {
                        return Err((
                            Some(Where::Service(i)),
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
        }
        self.check_admin_address().map_err(|e| (None, e))
    }

    /// "`what` 'NAME', which is not defined", with the pool meant if it is a slip.
    fn undefined_pool(&self, what: &str, name: &str) -> ConfigError {
        let known: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        let hint = match table::closest(name, known.iter().copied()) {
            Some(meant) => format!(" (did you mean '{meant}'?)"),
            None if known.is_empty() => " (add a [pools.NAME] table)".to_string(),
            None => format!(" (the pools are {})", known.join(", ")),
        };
        ConfigError::Usage(format!(
            "{what} '{}', which is not defined{hint}",
            printable(name)
        ))
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
    /// backends, least-active)`; a service with routes says how many, to which pools, and
    /// where the rest go.
    pub fn summary(&self) -> Vec<String> {
        self.services
            .iter()
            .map(|s| {
                let listen: Vec<String> = s.listen.iter().map(authority).collect();
                let pool = s
                    .pool
                    .as_ref()
                    .map(|name| format!("pool {name} ({})", self.describe_pool(name)));
                format!(
                    "service {}: {} -> {}",
                    s.name,
                    listen.join(", "),
                    s.destination(pool)
                )
            })
            .collect()
    }

    /// `3 backends + FILE, least-active`: a pool as `--check` shows it.
    fn describe_pool(&self, name: &str) -> String {
        let Some(p) = self.pool(name) else {
            return "undefined".to_string();
        };
        let mut from = format!(
            "{} backend{}",
            p.backends.len(),
            if p.backends.len() == 1 { "" } else { "s" }
        );
        if let Some(file) = &p.backends_file {
            from.push_str(&format!(" + {}", printable(&file.display().to_string())));
        }
        format!("{from}, {}", p.balance.describe())
    }
}

/// What a [`Config::validate`] error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// The service with this index.
    Service(usize),
    /// Route `.1` (an index) of service `.0`.
    Route(usize, usize),
}

impl ServiceSpec {
    /// Its routes, in the order written (none without `routes`).
    pub fn routes(&self) -> &[RouteSpec] {
        self.routing.as_ref().map_or(&[], |r| r.routes.as_slice())
    }

    /// Where its clients go, as a line of a log or `--check` shows it: `pool web`, or `2 TLS
    /// routes to pools api, web; otherwise pool web` (or `otherwise reset`). `pool` is how
    /// to show its own pool, if not just `pool NAME`.
    pub fn destination(&self, pool: Option<String>) -> String {
        let pool = pool
            .or_else(|| self.pool.as_ref().map(|p| format!("pool {p}")))
            .unwrap_or_else(|| "reset".to_string());
        let Some(routing) = &self.routing else {
            return pool;
        };
        let mut names: Vec<&str> = routing.routes.iter().map(|r| r.pool.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let n = routing.routes.len();
        format!(
            "{n} TLS route{} to pool{} {}; otherwise {pool}",
            if n == 1 { "" } else { "s" },
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        )
    }

    /// Every pool it sends clients to: its own, then its routes' (a name may repeat).
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.pool
            .as_deref()
            .into_iter()
            .chain(self.routes().iter().map(|r| r.pool.as_str()))
    }
}

/// What a TOML value is, for an error about its type.
pub fn describe(value: &toml::de::DeValue) -> String {
    use toml::de::DeValue;
    match value {
        DeValue::String(s) => format!("'{s}'"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "a list".to_string(),
        DeValue::Table(_) => "a table".to_string(),
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
    /// Inside a value of a config file, at this byte offset of the file: the file's reader
    /// turns it into an [`ConfigError::At`] with the line and column.
    Nested {
        offset: usize,
        error: Box<ConfigError>,
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
            ConfigError::Nested { error, .. } => write!(f, "{error}"),
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
