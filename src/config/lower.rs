//! From settings as written to the typed [`Global`], [`ServiceSpec`] and [`PoolSpec`]:
//! each setting is looked up through layers (a service's own table, then `[defaults]`, then
//! the option table's default), parsed by its kind, and checked against the settings it
//! depends on. The command line and a config file both end here, so they mean the same.

use super::policy::{
    Balance, BreakerPolicy, CheckPolicy, HashSettings, LatencySettings, MarkedDown, RuntimePolicy,
};
use super::protection::{Priority, QueueSettings, SourceLimits};
use super::table::{self, DefaultValue, Opt};
use super::values::{self, Raw, Value};
use super::{
    ConfigError, DEFAULT_POOL_BYTES, Global, PoolSpec, RoutingSpec, ServiceSpec, spec::BackendSpec,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a value was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// On the command line.
    Flag,
    /// In a config file.
    File {
        file: Arc<str>,
        line: usize,
        column: usize,
    },
}

impl Location {
    /// `error`, said where it was written.
    pub fn wrap(&self, error: ConfigError) -> ConfigError {
        match self {
            Location::Flag => error,
            Location::File { file, line, column } => ConfigError::At {
                file: file.to_string(),
                line: *line,
                column: *column,
                error: Box::new(error),
            },
        }
    }
}

/// Settings of one table as written: the command line, `[global]`, `[defaults]`, or one
/// service's or pool's table.
#[derive(Debug, Default)]
pub struct Written<'a> {
    entries: Vec<(&'static Opt, Raw<'a>, Location)>,
    /// Where the table itself is (for an error about a key it lacks).
    pub at: Option<Location>,
}

impl<'a> Written<'a> {
    pub fn at(at: Location) -> Written<'a> {
        Written {
            entries: Vec::new(),
            at: Some(at),
        }
    }

    pub fn push(&mut self, opt: &'static Opt, raw: Raw<'a>, at: Location) {
        self.entries.push((opt, raw, at));
    }

    fn get(&self, name: &str) -> Option<&(&'static Opt, Raw<'a>, Location)> {
        self.entries.iter().find(|(o, ..)| o.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Where `name` was written here, if it was.
    pub fn location(&self, name: &str) -> Option<&Location> {
        self.get(name).map(|(_, _, at)| at)
    }

    /// `name`'s value as written here, if it was.
    pub fn raw(&self, name: &str) -> Option<Raw<'a>> {
        self.get(name).map(|(_, raw, _)| *raw)
    }
}

/// Looks settings up through layers, the first that has one winning.
pub struct Layers<'w, 'a> {
    layers: Vec<&'w Written<'a>>,
}

impl<'w, 'a> Layers<'w, 'a> {
    pub fn new(layers: Vec<&'w Written<'a>>) -> Layers<'w, 'a> {
        Layers { layers }
    }

    fn find(&self, name: &str) -> Option<&'w (&'static Opt, Raw<'a>, Location)> {
        self.layers.iter().find_map(|w| w.get(name))
    }

    /// Whether the first layer (a table's own, or the command line) has `name`.
    pub fn own(&self, name: &str) -> bool {
        self.layers.first().is_some_and(|w| w.contains(name))
    }

    pub fn given(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// Where `name` was written, if it was.
    pub fn location(&self, name: &str) -> Option<&'w Location> {
        self.find(name).map(|(_, _, at)| at)
    }

    /// Where an error about the whole table goes: its own location.
    pub fn table_location(&self) -> Option<&'w Location> {
        self.layers.first().and_then(|w| w.at.as_ref())
    }

    /// `name`'s value: as written in the first layer that has it, else its default (`None`
    /// when the default is off, computed or required).
    pub fn value(&self, name: &str) -> Result<Option<Value>, ConfigError> {
        if let Some((opt, raw, at)) = self.find(name) {
            let shown = match at {
                Location::Flag => opt.shown_name(),
                Location::File { .. } => opt.name.to_string(),
            };
            return values::parse(opt, &shown, *raw)
                .map(Some)
                .map_err(|e| at.wrap(e));
        }
        let opt = table::find(name).ok_or_else(|| internal(name))?;
        match opt.default {
            DefaultValue::Value(text) => {
                values::parse(opt, &opt.shown_name(), Raw::Text(text)).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn required(&self, name: &str) -> Result<Value, ConfigError> {
        self.value(name)?.ok_or_else(|| internal(name))
    }

    pub fn whole(&self, name: &str) -> Result<u64, ConfigError> {
        match self.required(name)? {
            Value::Whole(n) | Value::Size(n) => Ok(n),
            _ => Err(internal(name)),
        }
    }

    pub fn opt_whole(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.value(name)? {
            None => Ok(None),
            Some(Value::Whole(n)) => Ok(Some(n)),
            Some(_) => Err(internal(name)),
        }
    }

    pub fn duration(&self, name: &str) -> Result<Duration, ConfigError> {
        match self.required(name)? {
            Value::Duration(d) => Ok(d),
            _ => Err(internal(name)),
        }
    }

    /// A duration where 0 means off.
    pub fn nonzero_duration(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        let d = self.duration(name)?;
        Ok((!d.is_zero()).then_some(d))
    }

    pub fn switch(&self, name: &str) -> Result<bool, ConfigError> {
        match self.value(name)? {
            None => Ok(false),
            Some(Value::Switch(b)) => Ok(b),
            Some(_) => Err(internal(name)),
        }
    }

    pub fn path(&self, name: &str) -> Result<Option<PathBuf>, ConfigError> {
        match self.value(name)? {
            None => Ok(None),
            Some(Value::Path(p)) => Ok(Some(p)),
            Some(_) => Err(internal(name)),
        }
    }

    pub fn address(&self, name: &str) -> Result<Option<(String, u16)>, ConfigError> {
        match self.value(name)? {
            None => Ok(None),
            Some(Value::Address(a)) => Ok(Some(a)),
            Some(_) => Err(internal(name)),
        }
    }

    /// `what`, said where `name` was written (or where the table is).
    pub fn at(&self, name: &str, what: ConfigError) -> ConfigError {
        match self.location(name).or(self.table_location()) {
            Some(at) => at.wrap(what),
            None => what,
        }
    }
}

/// A lookup of a setting the option table does not have: a mistake in this crate, said as
/// an error rather than a panic.
fn internal(name: &str) -> ConfigError {
    ConfigError::Usage(format!(
        "internal error: setting '{name}' is not in the option table"
    ))
}

/// The process-wide settings.
pub fn global(l: &Layers) -> Result<Global, ConfigError> {
    let buffer_size = l.whole("buffer-size")? as usize;
    let buffers = match l.opt_whole("buffers")? {
        None => (DEFAULT_POOL_BYTES / buffer_size).max(2),
        Some(n) => n as usize,
    };
    if buffers.saturating_mul(buffer_size) > 64 << 30 {
        return Err(l.at(
            "buffers",
            ConfigError::BadValue {
                option: shown("buffers", l),
                value: buffers.to_string(),
                expected: format!("at most 64 GiB of buffers in all ({buffer_size}-byte buffers)"),
            },
        ));
    }
    let workers = match l.value("workers")? {
        Some(Value::Workers(w)) => w,
        _ => None,
    };
    Ok(Global {
        workers,
        admin: l.address("admin")?,
        access_log: l.path("access-log")?,
        pid_file: l.path("pid-file")?,
        max_conns: l.whole("max-conns")? as usize,
        max_conns_given: l.given("max-conns"),
        buffer_size,
        buffers,
        pipes: l.whole("pipes")? as usize,
        pipes_given: l.given("pipes"),
        drain_timeout: l.duration("drain-timeout")?,
        upgrade_timeout: l.duration("upgrade-timeout")?,
        upgrade_probation: l.duration("upgrade-probation")?,
        control_socket: l.path("control-socket")?,
        control_socket_mode: match l.value("control-socket-mode")? {
            Some(Value::Mode(m)) => m,
            _ => 0o600,
        },
        control_socket_group: match l.value("control-socket-group")? {
            Some(Value::Account(g)) => Some(g),
            _ => None,
        },
        bpf_redirect: l.switch("bpf-redirect")?,
        bpf_redirect_bound: l.whole("bpf-redirect-bound")?,
    })
}

/// How an option is named in a message: `--name` from the command line, `name` in a file.
fn shown(name: &str, l: &Layers) -> String {
    match l.location(name).or(l.table_location()) {
        Some(Location::File { .. }) => name.to_string(),
        _ => format!("--{name}"),
    }
}

/// A service called `name`. `listen` falls back to its default only on the command line
/// (`listen_required` is set for a file's services).
pub fn service(name: &str, l: &Layers, listen_required: bool) -> Result<ServiceSpec, ConfigError> {
    if listen_required && !l.own("listen") {
        return Err(table_error(
            l,
            format!("service '{name}' has no listen: give it listen = [\"HOST:PORT\"]"),
        ));
    }
    let listen = match l.value("listen")? {
        Some(Value::Addresses(a)) => a,
        _ => return Err(internal("listen")),
    };
    let routing = routing(l)?;
    let pool = match l.value("pool")? {
        Some(Value::Name(p)) => Some(p),
        None if !listen_required || routing.is_some() => None,
        _ => {
            return Err(table_error(
                l,
                format!(
                    "service '{name}' has no pool: give it pool = \"NAME\" (or routes = \
                     [...] to choose one by the TLS server name)"
                ),
            ));
        }
    };
    let accept_proxy = if l.switch("accept-proxy")? {
        Some(l.duration("proxy-timeout")?)
    } else {
        if l.own("proxy-timeout") {
            return Err(l.at(
                "proxy-timeout",
                ConfigError::Usage(format!(
                    "{} applies to {} only",
                    shown("proxy-timeout", l),
                    shown("accept-proxy", l)
                )),
            ));
        }
        None
    };
    // A service's own connect-timeout and retries win over its pool's; from [defaults]
    // they are the pool's to take.
    let own_duration = |key: &str| -> Result<Option<Duration>, ConfigError> {
        if l.own(key) {
            Ok(Some(l.duration(key)?))
        } else {
            Ok(None)
        }
    };
    Ok(ServiceSpec {
        name: name.to_string(),
        listen,
        pool,
        routing,
        // In a file, its own or `[defaults]`'s (the process's is `[global]`'s, in other
        // layers); on the command line `--max-conns` is the process's alone.
        max_conns: if listen_required && l.given("max-conns") {
            Some(l.whole("max-conns")? as usize)
        } else {
            None
        },
        backlog: l.whole("backlog")? as i32,
        accept_proxy,
        idle_timeout: l.nonzero_duration("idle-timeout")?,
        connect_timeout: own_duration("connect-timeout")?,
        retries: if l.own("retries") {
            Some(l.whole("retries")? as u32)
        } else {
            None
        },
        priority: match l.value("priority")? {
            Some(Value::Priority(p)) => p,
            _ => Priority::default(),
        },
        source_limits: source_limits(l)?,
    })
}

/// `max-conns-per-source`, `conn-rate-per-source` and the settings that go with them.
fn source_limits(l: &Layers) -> Result<Option<SourceLimits>, ConfigError> {
    let max_conns = l.opt_whole("max-conns-per-source")?.map(|n| n as u32);
    let rate = match l.value("conn-rate-per-source")? {
        Some(Value::Rate(r)) => Some(r),
        _ => None,
    };
    if max_conns.is_none() && rate.is_none() {
        for option in ["source-prefix-v4", "source-prefix-v6", "source-table-size"] {
            if l.own(option) {
                return Err(l.at(
                    option,
                    ConfigError::Usage(format!(
                        "{} applies to the per-source limits only: give {} or {} too",
                        shown(option, l),
                        shown("max-conns-per-source", l),
                        shown("conn-rate-per-source", l)
                    )),
                ));
            }
        }
        return Ok(None);
    }
    Ok(Some(SourceLimits {
        max_conns,
        rate,
        prefix_v4: l.whole("source-prefix-v4")? as u8,
        prefix_v6: l.whole("source-prefix-v6")? as u8,
        table_size: l.whole("source-table-size")? as usize,
    }))
}

/// `routes` and the settings that go with them (which apply to nothing without routes).
fn routing(l: &Layers) -> Result<Option<RoutingSpec>, ConfigError> {
    let Some(Value::Routes(routes)) = l.value("routes")? else {
        for option in ["sni-timeout", "max-hello"] {
            if l.own(option) {
                return Err(l.at(
                    option,
                    ConfigError::Usage(format!("{option} applies to a service with routes only")),
                ));
            }
        }
        return Ok(None);
    };
    Ok(Some(RoutingSpec {
        routes,
        sni_timeout: l.duration("sni-timeout")?,
        max_hello: l.whole("max-hello")? as usize,
    }))
}

fn table_error(l: &Layers, message: String) -> ConfigError {
    let error = ConfigError::Usage(message);
    match l.table_location() {
        Some(at) => at.wrap(error),
        None => error,
    }
}

/// A pool called `name`; `positional` are the command line's backends (empty for a file).
pub fn pool(name: &str, l: &Layers, positional: &[String]) -> Result<PoolSpec, ConfigError> {
    let mut backends: Vec<BackendSpec> = Vec::new();
    if !positional.is_empty() {
        let opt = table::find("backends").ok_or_else(|| internal("backends"))?;
        if let Value::Backends(b) = values::parse(opt, "BACKEND", Raw::Texts(positional))? {
            backends = b;
        }
    } else if let Some(Value::Backends(b)) = l.value("backends")? {
        backends = b;
    }
    let backends_file = l.path("backends-file")?;
    if backends.is_empty() && backends_file.is_none() {
        return Err(if positional.is_empty() && l.table_location().is_some() {
            table_error(
                l,
                format!(
                    "pool '{name}' has no backend: give it backends = [\"HOST:PORT\", ...] or \
                     backends-file = \"PATH\""
                ),
            )
        } else {
            ConfigError::Usage("no backend given".to_string())
        });
    }
    let checks = checks(l)?;
    let runtime = RuntimePolicy {
        agent_interval: l.duration("agent-interval")?,
        slow_start: l.duration("slow-start")?,
        on_marked_down: match l.value("on-marked-down")? {
            Some(Value::Choice("shutdown-sessions")) => MarkedDown::ShutdownSessions,
            _ => MarkedDown::Leave,
        },
    };
    Ok(PoolSpec {
        name: name.to_string(),
        backends,
        backends_file,
        balance: balance(l)?,
        breaker: BreakerPolicy {
            max_fails: l.whole("max-fails")? as u32,
            fail_timeout: l.duration("fail-timeout")?,
        },
        checks,
        runtime,
        resolve_interval: l.nonzero_duration("resolve-interval")?,
        connect_timeout: l.duration("connect-timeout")?,
        retries: l.whole("retries")? as u32,
        queue: queue(l)?,
    })
}

/// `queue-size` and `queue-timeout`.
fn queue(l: &Layers) -> Result<QueueSettings, ConfigError> {
    let size = l.whole("queue-size")? as usize;
    if size == 0 && l.own("queue-timeout") {
        return Err(l.at(
            "queue-timeout",
            ConfigError::Usage(format!(
                "{} applies to a queue: give {} too",
                shown("queue-timeout", l),
                shown("queue-size", l)
            )),
        ));
    }
    Ok(QueueSettings {
        size,
        timeout: l.duration("queue-timeout")?,
    })
}

/// The pool's health checks: a `health` table (its own settings first, then `rise`,
/// `fall`, `connect-timeout`, and `health-interval` or 2 s), or `health-interval` alone
/// (a TCP connect check); `None` when neither is given.
fn checks(l: &Layers) -> Result<Option<CheckPolicy>, ConfigError> {
    let health_interval = l.duration("health-interval")?;
    let table = match l.value("health")? {
        Some(Value::Health(table)) => Some(table),
        _ => None,
    };
    let Some(table) = table else {
        if health_interval.is_zero() {
            return Ok(None);
        }
        return Ok(Some(CheckPolicy::connect(
            health_interval,
            l.whole("rise")? as u32,
            l.whole("fall")? as u32,
            l.duration("connect-timeout")?,
        )));
    };
    let interval = table.interval.unwrap_or(if health_interval.is_zero() {
        Duration::from_secs(2)
    } else {
        health_interval
    });
    Ok(Some(CheckPolicy {
        interval,
        rise: table.rise.unwrap_or(l.whole("rise")? as u32),
        fall: table.fall.unwrap_or(l.whole("fall")? as u32),
        timeout: table.timeout.unwrap_or(l.duration("connect-timeout")?),
        port: table.port,
        exchange: table.exchange,
    }))
}

/// `balance` and the `hash-*` settings that go with source-hash.
fn balance(l: &Layers) -> Result<Balance, ConfigError> {
    let balance = match l.value("balance")? {
        Some(Value::Choice(name)) => Balance::from_name(name).ok_or_else(|| internal("balance"))?,
        _ => return Err(internal("balance")),
    };
    if let Balance::LeastLatency(_) = balance {
        return Ok(Balance::LeastLatency(LatencySettings {
            decay: l.duration("latency-decay")?,
        }));
    }
    if l.own("latency-decay") {
        return Err(l.at(
            "latency-decay",
            ConfigError::Usage(format!(
                "{} applies to {} least-latency only (the balance is {})",
                shown("latency-decay", l),
                if shown("latency-decay", l).starts_with("--") {
                    "--balance"
                } else {
                    "balance ="
                },
                balance.name()
            )),
        ));
    }
    let Balance::SourceHash(_) = balance else {
        for option in ["hash-table-size", "hash-balance-factor"] {
            if l.own(option) {
                return Err(l.at(
                    option,
                    ConfigError::Usage(format!(
                        "{} applies to {} source-hash only (the balance is {})",
                        shown(option, l),
                        if shown(option, l).starts_with("--") {
                            "--balance"
                        } else {
                            "balance ="
                        },
                        balance.name()
                    )),
                ));
            }
        }
        return Ok(balance);
    };
    let table_size = l.whole("hash-table-size")?;
    let balance_factor = match l.value("hash-balance-factor")? {
        Some(Value::Factor(f)) => Some(f),
        _ => None,
    };
    Ok(Balance::SourceHash(HashSettings {
        table_size: table_size as u32,
        balance_factor,
    }))
}
