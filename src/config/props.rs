//! Property tests of the config file reader ([`super::file`]): no input panics it; a valid
//! file generated from the option table (services, pools, `[global]`, `[defaults]`, keys in
//! any order and layout) reads back as the values written; a slip in one key fails with
//! that key's own `FILE:LINE:COLUMN`; and lines and columns agree with a naive count.

use super::file::{line_and_column, parse, parse_bytes};
use super::lower::Written;
use super::policy::{Balance, BreakerPolicy, CheckPolicy, HashSettings};
use super::protection::{Priority, QueueSettings, Rate, SourceLimits};
use super::table::{self, BareUnit, DefaultValue, Kind, Opt};
use super::values::{self, Raw, Value};
use super::{BackendSpec, Config, ConfigError, DEFAULT_POOL_BYTES, Global, PoolSpec, ServiceSpec};
use crate::proxy_protocol::Version;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use std::path::PathBuf;
use std::time::Duration;

const FILE: &str = "t.toml";

/// One key as written: its option, its TOML text and the value it means.
#[derive(Clone, Debug)]
struct Key {
    opt: &'static Opt,
    toml: String,
    value: Value,
}

/// A service's or a pool's table.
#[derive(Clone, Debug)]
struct Named {
    name: String,
    keys: Vec<Key>,
}

/// A config file as generated, and how it is laid out.
#[derive(Clone, Debug)]
struct Model {
    global: Vec<Key>,
    defaults: Vec<Key>,
    services: Vec<Named>,
    pools: Vec<Named>,
    /// Spaces before each key.
    indent: usize,
    /// `key=value` rather than `key = value`.
    tight: bool,
    /// A comment after each value.
    comments: bool,
    /// `[services]` with `NAME.key = value` lines rather than a `[services.NAME]` table each.
    dotted: bool,
}

/// Where a key was written, for an error about it.
#[derive(Clone, Debug)]
struct KeyAt {
    offset: usize,
    name: &'static str,
}

fn opt(name: &str) -> &'static Opt {
    table::find(name).unwrap_or_else(|| panic!("'{name}' is not in the option table"))
}

fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

/// Values of an option, as TOML text, across its whole range and in each way it may be
/// written (a number or a string; a duration with a unit or bare).
fn literal(opt: &'static Opt) -> BoxedStrategy<(String, Value)> {
    const MS: u64 = 1_000_000;
    match opt.kind {
        Kind::Switch => any::<bool>()
            .prop_map(|b| (b.to_string(), Value::Switch(b)))
            .boxed(),
        Kind::Whole { min, max } => (prop_oneof![Just(min), Just(max), min..=max], 0..4u8)
            .prop_map(|(n, form)| {
                let text = match form {
                    0 => quoted(&n.to_string()),
                    1 => format!("0x{n:x}"),
                    2 => format!("0b{n:b}"),
                    _ => n.to_string(),
                };
                (text, Value::Whole(n))
            })
            .boxed(),
        Kind::Prime { max } => select(
            [2u64, 3, 65_537, 655_373]
                .into_iter()
                .filter(|&p| p <= max)
                .collect::<Vec<_>>(),
        )
        .prop_map(|p| (p.to_string(), Value::Whole(p)))
        .boxed(),
        Kind::Size { min, max } => prop_oneof![
            (min..=max).prop_map(|n| (n.to_string(), Value::Size(n))),
            (min.div_ceil(1024)..=max / 1024)
                .prop_map(|k| (quoted(&format!("{k}k")), Value::Size(k * 1024))),
        ]
        .boxed(),
        Kind::Duration { bare, min, max } => {
            let (lo, hi) = (min.div_ceil(MS), max / MS);
            (prop_oneof![Just(lo), Just(hi), lo..=hi], 0..3u8)
                .prop_map(move |(ms, form)| {
                    let text = match (form, bare) {
                        (0, _) => quoted(&format!("{ms}ms")),
                        (1, _) if ms % 1000 == 0 => quoted(&format!("{}s", ms / 1000)),
                        (_, BareUnit::Milliseconds) => ms.to_string(),
                        (_, BareUnit::Seconds) if ms % 1000 == 0 => (ms / 1000).to_string(),
                        (_, BareUnit::Seconds) => format!("{}.{:03}", ms / 1000, ms % 1000),
                    };
                    (text, Value::Duration(Duration::from_millis(ms)))
                })
                .boxed()
        }
        Kind::Choice(words) => select(words)
            .prop_map(|w| (quoted(w), Value::Choice(w)))
            .boxed(),
        Kind::Workers => prop_oneof![
            Just((quoted("auto"), Value::Workers(None))),
            (1..=super::MAX_WORKERS).prop_map(|n| (n.to_string(), Value::Workers(Some(n)))),
        ]
        .boxed(),
        Kind::Factor => (100u32..=10_000)
            .prop_map(|h| {
                let text = if h % 100 == 0 {
                    (h / 100).to_string()
                } else {
                    format!("{}.{:02}", h / 100, h % 100)
                };
                (text, Value::Factor(h))
            })
            .boxed(),
        Kind::Path => select(&["access.log", "tcplb.pid", "web.backends", "a b/ü"][..])
            .prop_map(|p| {
                let path = format!("/var/lib/tcplb/{p}");
                (quoted(&path), Value::Path(PathBuf::from(path)))
            })
            .boxed(),
        Kind::Address => Just((
            quoted("127.0.0.1:9090"),
            Value::Address(("127.0.0.1".to_string(), 9090)),
        ))
        .boxed(),
        Kind::Rate => (1u32..=1_000_000, 0..3usize)
            .prop_map(|(n, unit)| {
                let (word, secs) = [("s", 1), ("m", 60), ("h", 3600)][unit];
                let rate = Rate {
                    count: n,
                    per: Duration::from_secs(secs),
                };
                (quoted(&format!("{n}/{word}")), Value::Rate(rate))
            })
            .boxed(),
        Kind::Addresses
        | Kind::PoolName
        | Kind::Backends
        | Kind::Priority
        | Kind::Group(_)
        | Kind::Routes
        | Kind::Health
        | Kind::Mode
        | Kind::Account => {
            unreachable!("{} is generated by its table", opt.name)
        }
    }
}

/// Some of `names`' options with values, in any order.
fn keys(names: &[&str]) -> BoxedStrategy<Vec<Key>> {
    names
        .iter()
        .map(|name| {
            let opt = opt(name);
            proptest::option::weighted(0.35, literal(opt))
                .prop_map(move |v| v.map(|(toml, value)| Key { opt, toml, value }))
        })
        .collect::<Vec<_>>()
        .prop_map(|keys| keys.into_iter().flatten().collect::<Vec<_>>())
        .prop_shuffle()
        .boxed()
}

const GLOBAL: &[&str] = &[
    "workers",
    "admin",
    "access-log",
    "pid-file",
    "max-conns",
    "buffer-size",
    "buffers",
    "pipes",
    "drain-timeout",
    "upgrade-timeout",
    "upgrade-probation",
];
const SERVICE: &[&str] = &[
    "connect-timeout",
    "retries",
    "idle-timeout",
    "max-conns",
    "backlog",
    "accept-proxy",
    "proxy-timeout",
    "max-conns-per-source",
    "conn-rate-per-source",
    "source-prefix-v4",
    "source-prefix-v6",
    "source-table-size",
];
const POOL: &[&str] = &[
    "connect-timeout",
    "retries",
    "balance",
    "hash-table-size",
    "hash-balance-factor",
    "max-fails",
    "fail-timeout",
    "health-interval",
    "rise",
    "fall",
    "backends-file",
    "resolve-interval",
    "queue-size",
    "queue-timeout",
];
const DEFAULTS: &[&str] = &[
    "connect-timeout",
    "retries",
    "idle-timeout",
    "backlog",
    "accept-proxy",
    "proxy-timeout",
    "balance",
    "hash-table-size",
    "hash-balance-factor",
    "max-fails",
    "fail-timeout",
    "health-interval",
    "rise",
    "fall",
    "resolve-interval",
];

/// Hosts of listen addresses and backends, as written and as parsed.
const HOSTS: [(&str, &str); 4] = [
    ("127.0.0.1", "127.0.0.1"),
    ("localhost", "localhost"),
    ("[::1]", "::1"),
    ("db.internal", "db.internal"),
];
/// Names: a start, a number that makes them unique, an end (the file's order is not the
/// order of the names).
const NAME_STARTS: [&str; 4] = ["web", "cache", "db", "a"];
const NAME_ENDS: [&str; 4] = ["", "-web", "_db", ".v2"];

fn name(start: usize, i: usize, end: usize) -> String {
    format!("{}{i}{}", NAME_STARTS[start % 4], NAME_ENDS[end % 4])
}

fn set(keys: &mut Vec<Key>, name: &str, toml: String, value: Value) {
    keys.retain(|k| k.opt.name != name);
    keys.push(Key {
        opt: opt(name),
        toml,
        value,
    });
}

fn has<'k>(keys: &'k [Key], name: &str) -> Option<&'k Value> {
    keys.iter().find(|k| k.opt.name == name).map(|k| &k.value)
}

/// A valid config: listeners on ports of their own (10000 up, or 0), backends on others
/// (20000 up), the admin endpoint on 9090; keys that need another key have it.
fn model() -> impl Strategy<Value = Model> {
    let listen = (
        proptest::collection::vec((0..3usize, any::<bool>()), 1..=3),
        any::<bool>(),
    );
    let backends = proptest::collection::vec((0..4usize, 1..=256u32, any::<bool>(), 0..3u8), 1..=3);
    (
        keys(GLOBAL),
        keys(DEFAULTS),
        proptest::collection::vec(
            (
                keys(SERVICE),
                listen,
                any::<Index>(),
                0..16usize,
                any::<usize>(),
            ),
            1..=4,
        ),
        proptest::collection::vec((keys(POOL), backends, 0..16usize, any::<usize>()), 1..=3),
        (0..3usize, any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|(mut global, defaults, services, pools, layout)| {
            let (indent, tight, comments, dotted) = layout;
            let pool_names: Vec<String> = pools
                .iter()
                .enumerate()
                .map(|(i, (_, _, end, _))| name(*end / 4, i, *end))
                .collect();
            let services = services
                .into_iter()
                .enumerate()
                .map(|(i, (mut keys, (addrs, as_string), pool, end, turn))| {
                    let mut texts = Vec::new();
                    let mut parsed = Vec::new();
                    for (j, (host, zero)) in addrs.iter().enumerate() {
                        let port = if *zero { 0 } else { 10_000 + 8 * i + j } as u16;
                        texts.push(quoted(&format!("{}:{port}", HOSTS[*host].0)));
                        parsed.push((HOSTS[*host].1.to_string(), port));
                    }
                    let toml = if as_string && texts.len() == 1 {
                        texts[0].clone()
                    } else {
                        format!("[{}]", texts.join(", "))
                    };
                    set(&mut keys, "listen", toml, Value::Addresses(parsed));
                    let pool = pool.get(&pool_names).clone();
                    set(&mut keys, "pool", quoted(&pool), Value::Name(pool));
                    let accepts = has(&keys, "accept-proxy")
                        .or(has(&defaults, "accept-proxy"))
                        .is_some_and(|v| *v == Value::Switch(true));
                    if has(&keys, "proxy-timeout").is_some() && !accepts {
                        set(
                            &mut keys,
                            "accept-proxy",
                            "true".into(),
                            Value::Switch(true),
                        );
                    }
                    // The source settings go with a per-source limit.
                    let sourced = ["source-prefix-v4", "source-prefix-v6", "source-table-size"]
                        .iter()
                        .any(|k| has(&keys, k).is_some());
                    let limited = ["max-conns-per-source", "conn-rate-per-source"]
                        .iter()
                        .any(|k| has(&keys, k).is_some());
                    if sourced && !limited {
                        set(
                            &mut keys,
                            "max-conns-per-source",
                            "20".into(),
                            Value::Whole(20),
                        );
                    }
                    let turn = turn % keys.len();
                    keys.rotate_left(turn);
                    Named {
                        name: name(end / 4, i, end),
                        keys,
                    }
                })
                .collect();
            let pools = pools
                .into_iter()
                .enumerate()
                .map(|(i, (mut keys, backends, _, turn))| {
                    let mut texts = Vec::new();
                    let mut parsed = Vec::new();
                    for (j, (host, weight, backup, proxy)) in backends.into_iter().enumerate() {
                        let port = (20_000 + 8 * i + j) as u16;
                        let mut text = format!("{}:{port}", HOSTS[host].0);
                        if weight != 1 {
                            text.push_str(&format!(",weight={weight}"));
                        }
                        if backup {
                            text.push_str(",backup");
                        }
                        let send_proxy =
                            [None, Some(Version::V1), Some(Version::V2)][usize::from(proxy)];
                        if let Some(v) = send_proxy {
                            text.push(',');
                            text.push_str(v.option());
                        }
                        texts.push(quoted(&text));
                        parsed.push(BackendSpec {
                            host: HOSTS[host].1.to_string(),
                            port,
                            weight,
                            backup,
                            send_proxy,
                            maxconn: None,
                            agent_port: None,
                            origin: None,
                        });
                    }
                    let toml = format!("[{}]", texts.join(", "));
                    set(&mut keys, "backends", toml, Value::Backends(parsed));
                    // A queue's timeout goes with a queue.
                    let sized = matches!(has(&keys, "queue-size"), Some(Value::Whole(n)) if *n > 0);
                    if has(&keys, "queue-timeout").is_some() && !sized {
                        set(&mut keys, "queue-size", "100".into(), Value::Whole(100));
                    }
                    let hashing = ["hash-table-size", "hash-balance-factor"]
                        .iter()
                        .any(|k| has(&keys, k).is_some());
                    let source_hash = Value::Choice("source-hash");
                    if hashing
                        && has(&keys, "balance").or(has(&defaults, "balance")) != Some(&source_hash)
                    {
                        set(&mut keys, "balance", quoted("source-hash"), source_hash);
                    }
                    let turn = turn % keys.len();
                    keys.rotate_left(turn);
                    Named {
                        name: pool_names[i].clone(),
                        keys,
                    }
                })
                .collect();
            // At most 64 GiB of buffers.
            let size = match has(&global, "buffer-size") {
                Some(Value::Size(n)) => *n,
                _ => 16 * 1024,
            };
            let buffers = match has(&global, "buffers") {
                Some(Value::Whole(n)) => *n,
                _ => 0,
            };
            if buffers.saturating_mul(size) > 64 << 30 {
                global.retain(|k| k.opt.name != "buffers");
            }
            Model {
                global,
                defaults,
                services,
                pools,
                indent,
                tight,
                comments,
                dotted,
            }
        })
}

impl Model {
    /// The file's text, and where each key is in it.
    fn text(&self) -> (String, Vec<KeyAt>) {
        let mut text = String::from("# generated\n");
        let mut at = Vec::new();
        let mut line = |text: &mut String, prefix: &str, key: &Key| {
            text.push_str(&" ".repeat(self.indent));
            text.push_str(prefix);
            at.push(KeyAt {
                offset: text.len(),
                name: key.opt.name,
            });
            text.push_str(key.opt.name);
            text.push_str(if self.tight { "=" } else { " = " });
            text.push_str(&key.toml);
            if self.comments {
                text.push_str("  # é, a comment");
            }
            text.push('\n');
        };
        for (title, keys) in [("global", &self.global), ("defaults", &self.defaults)] {
            if !keys.is_empty() {
                text.push_str(&format!("[{title}]\n"));
                for key in keys {
                    line(&mut text, "", key);
                }
                text.push('\n');
            }
        }
        for (kind, tables) in [("services", &self.services), ("pools", &self.pools)] {
            if self.dotted {
                text.push_str(&format!("[{kind}]\n"));
            }
            for named in tables {
                let name = if named.name.contains('.') {
                    quoted(&named.name)
                } else {
                    named.name.clone()
                };
                if self.dotted {
                    for key in &named.keys {
                        line(&mut text, &format!("{name}."), key);
                    }
                } else {
                    text.push_str(&format!("[{kind}.{name}]\n"));
                    for key in &named.keys {
                        line(&mut text, "", key);
                    }
                }
                text.push('\n');
            }
        }
        (text, at)
    }

    /// The config the file means, worked out from the option table's rules: a table's own
    /// key, else `[defaults]`' (but for a service's own limits), else the default.
    fn config(&self) -> Config {
        let global = self.global();
        let services = self.services.iter().map(|s| self.service(s)).collect();
        let pools = self.pools.iter().map(|p| self.pool(p)).collect();
        Config {
            global,
            services,
            pools,
            file: None,
        }
    }

    fn global(&self) -> Global {
        let g = |name| effective(&self.global, &[], name);
        let buffer_size = whole(g("buffer-size"));
        Global {
            workers: match g("workers") {
                Some(Value::Workers(w)) => w,
                other => panic!("workers {other:?}"),
            },
            admin: g("admin").map(|v| match v {
                Value::Address(a) => a,
                other => panic!("admin {other:?}"),
            }),
            access_log: g("access-log").map(path),
            pid_file: g("pid-file").map(path),
            max_conns: whole(g("max-conns")) as usize,
            max_conns_given: has(&self.global, "max-conns").is_some(),
            buffer_size: buffer_size as usize,
            buffers: match g("buffers") {
                Some(v) => whole(Some(v)) as usize,
                None => (DEFAULT_POOL_BYTES / buffer_size as usize).max(2),
            },
            pipes: whole(g("pipes")) as usize,
            pipes_given: has(&self.global, "pipes").is_some(),
            drain_timeout: duration(g("drain-timeout")),
            upgrade_timeout: duration(g("upgrade-timeout")),
            upgrade_probation: duration(g("upgrade-probation")),
            control_socket: None,
            control_socket_mode: 0o600,
            control_socket_group: None,
            bpf_redirect: false,
            bpf_redirect_bound: whole(g("bpf-redirect-bound")),
        }
    }

    fn service(&self, s: &Named) -> ServiceSpec {
        let v = |name| effective(&s.keys, &self.defaults, name);
        let own = |name| has(&s.keys, name).cloned();
        ServiceSpec {
            name: s.name.clone(),
            listen: match own("listen") {
                Some(Value::Addresses(a)) => a,
                other => panic!("listen {other:?}"),
            },
            pool: match own("pool") {
                Some(Value::Name(p)) => Some(p),
                other => panic!("pool {other:?}"),
            },
            routing: None,
            max_conns: own("max-conns").map(|v| whole(Some(v)) as usize),
            backlog: whole(v("backlog")) as i32,
            accept_proxy: (v("accept-proxy") == Some(Value::Switch(true)))
                .then(|| duration(v("proxy-timeout"))),
            idle_timeout: Some(duration(v("idle-timeout"))).filter(|d| !d.is_zero()),
            connect_timeout: own("connect-timeout").map(|v| duration(Some(v))),
            retries: own("retries").map(|v| whole(Some(v)) as u32),
            priority: Priority::default(),
            source_limits: {
                let max_conns = own("max-conns-per-source").map(|v| whole(Some(v)) as u32);
                let rate = match own("conn-rate-per-source") {
                    Some(Value::Rate(r)) => Some(r),
                    _ => None,
                };
                (max_conns.is_some() || rate.is_some()).then(|| SourceLimits {
                    max_conns,
                    rate,
                    prefix_v4: whole(v("source-prefix-v4")) as u8,
                    prefix_v6: whole(v("source-prefix-v6")) as u8,
                    table_size: whole(v("source-table-size")) as usize,
                })
            },
        }
    }

    fn pool(&self, p: &Named) -> PoolSpec {
        let v = |name| effective(&p.keys, &self.defaults, name);
        let health_interval = duration(v("health-interval"));
        PoolSpec {
            name: p.name.clone(),
            backends: match has(&p.keys, "backends") {
                Some(Value::Backends(b)) => b.clone(),
                other => panic!("backends {other:?}"),
            },
            backends_file: v("backends-file").map(path),
            balance: match v("balance") {
                Some(Value::Choice("source-hash")) => Balance::SourceHash(HashSettings {
                    table_size: whole(v("hash-table-size")) as u32,
                    balance_factor: match v("hash-balance-factor") {
                        Some(Value::Factor(f)) => Some(f),
                        _ => None,
                    },
                }),
                Some(Value::Choice(name)) => Balance::from_name(name).expect("a balance"),
                other => panic!("balance {other:?}"),
            },
            breaker: BreakerPolicy {
                max_fails: whole(v("max-fails")) as u32,
                fail_timeout: duration(v("fail-timeout")),
            },
            checks: (!health_interval.is_zero()).then(|| CheckPolicy {
                interval: health_interval,
                rise: whole(v("rise")) as u32,
                fall: whole(v("fall")) as u32,
                timeout: duration(v("connect-timeout")),
                port: None,
                exchange: None,
            }),
            runtime: crate::config::policy::RuntimePolicy::DEFAULT,
            resolve_interval: Some(duration(v("resolve-interval"))).filter(|d| !d.is_zero()),
            connect_timeout: duration(v("connect-timeout")),
            retries: whole(v("retries")) as u32,
            queue: QueueSettings {
                size: whole(v("queue-size")) as usize,
                timeout: duration(v("queue-timeout")),
            },
        }
    }
}

/// `name` from `own`, else from `defaults`, else the option table's default (`None` when it
/// has none to parse).
fn effective(own: &[Key], defaults: &[Key], name: &str) -> Option<Value> {
    if let Some(v) = has(own, name).or(has(defaults, name)) {
        return Some(v.clone());
    }
    let opt = opt(name);
    match opt.default {
        DefaultValue::Value(text) => {
            Some(values::parse(opt, &opt.shown_name(), Raw::Text(text)).expect("default"))
        }
        _ => None,
    }
}

fn whole(v: Option<Value>) -> u64 {
    match v {
        Some(Value::Whole(n) | Value::Size(n)) => n,
        other => panic!("a whole number, not {other:?}"),
    }
}

fn duration(v: Option<Value>) -> Duration {
    match v {
        Some(Value::Duration(d)) => d,
        other => panic!("a duration, not {other:?}"),
    }
}

fn path(v: Value) -> PathBuf {
    match v {
        Value::Path(p) => p,
        other => panic!("a path, not {other:?}"),
    }
}

/// What must hold of any outcome: an error is told inside the text, on one line of
/// printable characters.
fn sound(text: &[u8], outcome: &Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    match outcome {
        Ok(config) => {
            prop_assert!(!config.services.is_empty());
            prop_assert!(config.validate().is_ok());
        }
        Err(error) => {
            if let ConfigError::At { line, column, .. } = error {
                let lines = text.split(|&b| b == b'\n').count();
                prop_assert!(*line >= 1 && *line <= lines, "line {line} of {lines}");
                prop_assert!(*column >= 1);
            }
            let shown = error.to_string();
            prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }
    Ok(())
}

/// Pieces of config files, to be put together at random.
const TOKENS: &[&str] = &[
    "[global]",
    "[defaults]",
    "[services.a]",
    "[pools.a]",
    "[services]",
    "[[pools]]",
    "\n",
    "\n",
    " ",
    "=",
    " = ",
    "\"",
    "'''",
    "#",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "listen",
    "pool",
    "backends",
    "retries",
    "balance",
    "workers",
    "admin",
    "idle-timeout",
    "max-conns",
    "accept-proxy",
    "hash-balance-factor",
    "\"127.0.0.1:80\"",
    "\"a\"",
    "[\"10.0.0.1:80\"]",
    "3",
    "-1",
    "0x10",
    "1.25",
    "true",
    "\"3s\"",
    "\"auto\"",
    "\"source-hash\"",
    "é",
    "\u{202e}",
    "\t",
    "\r\n",
    "\\u0000",
    "1979-05-27",
];

/// A naive count: the line and column of the character that holds byte `offset`.
fn counted(text: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() > offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// A key `name` is a slip of: one letter dropped, doubled or swapped with the next, `_` for
/// `-`, or a capital; `None` when the slip is itself a key.
fn slip(name: &str, how: u8, at: Index) -> Option<String> {
    let chars: Vec<char> = name.chars().collect();
    let i = at.index(chars.len());
    let mut slipped = chars.clone();
    match how {
        0 => {
            slipped.remove(i);
        }
        1 => slipped.insert(i, chars[i]),
        2 if i + 1 < chars.len() && chars[i] != chars[i + 1] => slipped.swap(i, i + 1),
        3 if name.contains('-') => {
            return Some(name.replacen('-', "_", 1)).filter(|s| table::find(s).is_none());
        }
        _ => slipped[0] = chars[0].to_ascii_uppercase(),
    }
    let slipped: String = slipped.into_iter().collect();
    (!slipped.is_empty() && table::find(&slipped).is_none()).then_some(slipped)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // A failure is printed with its minimal input; no file is left behind.
        failure_persistence: None,
        ..ProptestConfig::with_cases(512)
    })]

    /// (a) No bytes panic the reader, and what it says is sound.
    #[test]
    fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let outcome = parse_bytes(&bytes, FILE, &Written::default());
        sound(&bytes, &outcome)?;
    }

    /// (a) No text panics it: any characters, or pieces of config files put together.
    #[test]
    fn any_text_is_read_or_refused(
        text in prop_oneof![
            any::<String>(),
            proptest::collection::vec(select(TOKENS), 0..80).prop_map(|t| t.concat()),
        ],
    ) {
        let outcome = parse(&text, FILE, &Written::default());
        sound(text.as_bytes(), &outcome)?;
    }

    /// (b) A valid file reads back as the values written in it.
    #[test]
    fn a_generated_file_reads_back_as_written(model in model()) {
        let (text, _) = model.text();
        match parse(&text, FILE, &Written::default()) {
            Ok(config) => prop_assert_eq!(config, model.config(), "{}", text),
            Err(e) => prop_assert!(false, "{e}\n{text}"),
        }
    }

    /// (c) A character dropped or added anywhere panics nothing.
    #[test]
    fn a_character_dropped_or_added_is_read_or_refused(
        model in model(),
        at in any::<Index>(),
        added in prop_oneof![Just(None), any::<char>().prop_map(Some), select(TOKENS).prop_map(|t| t.chars().next())],
    ) {
        let (text, _) = model.text();
        let mut chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len());
        match added {
            Some(c) => chars.insert(i, c),
            None => { chars.remove(i); }
        }
        let text: String = chars.into_iter().collect();
        let outcome = parse(&text, FILE, &Written::default());
        sound(text.as_bytes(), &outcome)?;
    }

    /// (c) A slip in one key is told at that key: `FILE:LINE:COLUMN: unknown key`.
    #[test]
    fn a_slip_in_a_key_is_told_at_the_key(
        model in model(),
        which in any::<Index>(),
        how in 0..5u8,
        at in any::<Index>(),
    ) {
        let (text, keys) = model.text();
        let key = which.get(&keys);
        let slipped = slip(key.name, how, at);
        prop_assume!(slipped.is_some());
        let slipped = slipped.unwrap_or_default();
        let text = format!(
            "{}{slipped}{}",
            &text[..key.offset],
            &text[key.offset + key.name.len()..]
        );
        let (line, column) = counted(&text, key.offset);
        let error = match parse(&text, FILE, &Written::default()) {
            Err(e) => e.to_string(),
            Ok(_) => return Err(TestCaseError::fail(format!("'{slipped}' taken in\n{text}"))),
        };
        let told = format!("{FILE}:{line}:{column}: unknown key '{slipped}' in ");
        prop_assert!(error.starts_with(&told), "{error}\nnot {told}\n{text}");
    }

    /// (d) Lines and columns agree with a naive count, for any text and offset (past the
    /// end, inside a character), across the blocks the index counts characters by.
    #[test]
    fn lines_and_columns_agree_with_a_naive_count(
        text in prop_oneof![
            any::<String>(),
            (
                proptest::collection::vec(select(&["a", "\n", "é", "€", "😀", "\r\n", "\t"][..]), 1..8),
                1..1500usize,
            )
                .prop_map(|(piece, times)| piece.concat().repeat(times)),
        ],
        offsets in proptest::collection::vec(any::<Index>(), 1..16),
        past in 0..4usize,
    ) {
        for at in offsets {
            let offset = at.index(text.len() + 1);
            prop_assert_eq!(line_and_column(&text, offset), counted(&text, offset), "offset {}", offset);
        }
        let end = text.len() + past;
        prop_assert_eq!(line_and_column(&text, end), counted(&text, end));
    }
}
