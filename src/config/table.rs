//! The option table: every setting once, with its name, where it may be written, the kind of
//! value it takes, its default and its help. One table drives the command-line flags
//! (`getopts`), the config file's keys, `--help`, and the README's table of options (a test
//! compares them), so a default is written in exactly one place.

use std::fmt::Write as _;

/// Where a setting may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The process: `[global]` in a file.
    Global,
    /// A service (`[services.NAME]`, or `[defaults]`).
    Service,
    /// A pool (`[pools.NAME]`, or `[defaults]`).
    Pool,
    /// Both a service and a pool (a service's own value wins for its sessions).
    ServiceAndPool,
    /// The process, and a service for its own limit.
    GlobalAndService,
    /// The command line only.
    Command,
}

impl Scope {
    pub fn in_service(self) -> bool {
        matches!(
            self,
            Scope::Service | Scope::ServiceAndPool | Scope::GlobalAndService
        )
    }

    pub fn in_global(self) -> bool {
        matches!(self, Scope::Global | Scope::GlobalAndService)
    }

    pub fn in_pool(self) -> bool {
        matches!(self, Scope::Pool | Scope::ServiceAndPool)
    }

    /// Where the README's table says it goes.
    pub fn describe(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Service => "service",
            Scope::Pool => "pool",
            Scope::ServiceAndPool => "service, pool",
            Scope::GlobalAndService => "global, service",
            Scope::Command => "command line",
        }
    }
}

/// The unit of a bare number in a duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareUnit {
    Seconds,
    Milliseconds,
}

/// The kind of value a setting takes, with its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// On or off: a flag on the command line, `true`/`false` in a file.
    Switch,
    /// A whole number in `min..=max`.
    Whole { min: u64, max: u64 },
    /// A prime number from 2 to `max`.
    Prime { max: u64 },
    /// A byte count with an optional k/m suffix, in `min..=max`.
    Size { min: u64, max: u64 },
    /// A duration in `min..=max` nanoseconds; 0 is allowed only where `min` is 0.
    Duration { bare: BareUnit, min: u64, max: u64 },
    /// `HOST:PORT` (port 0: any free port).
    Address,
    /// One or more `HOST:PORT`: a list in a file.
    Addresses,
    /// A file path.
    Path,
    /// The name of a pool.
    PoolName,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// `auto` or a whole number from 1 to [`super::MAX_WORKERS`].
    Workers,
    /// A number from 1 to 100 with at most two decimals (`1.25`).
    Factor,
    /// Backend specs: positional arguments on the command line, a list in a file.
    Backends,
    /// A table of health check settings (`health = { ... }`, a file only: see
    /// `config::health`).
    Health,
    /// File permission bits in octal, such as `0660`.
    Mode,
    /// A user or group: a name or a number.
    Account,
    /// `N/s`, `N/m` or `N/h`: a rate.
    Rate,
    /// Source blocks and classes: `CIDR=CLASS,...` on the command line, a list of
    /// `{ source = CIDR, class = CLASS }` in a file.
    Priority,
    /// A file-only inline table whose keys stand for the settings `NAME-KEY`
    /// (`queue = { size = 100 }` is `queue-size = 100`).
    Group(&'static [&'static str]),
    /// A service's TLS routes: a list of `{ sni, alpn, pool }` tables (a file only).
    Routes,
}

/// A setting's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// This value, parsed like any other (so the table is the one place it is written).
    Value(&'static str),
    /// Off unless given.
    Off,
    /// Worked out from other settings; the text says how.
    Computed(&'static str),
    /// Must be given (where its scope is used).
    Required,
}

impl DefaultValue {
    /// As `--help` and the README show it.
    pub fn shown(self) -> &'static str {
        match self {
            DefaultValue::Value(v) | DefaultValue::Computed(v) => v,
            DefaultValue::Off => "off",
            DefaultValue::Required => "required",
        }
    }
}

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Opt {
    /// The key in a file and the long flag (`--NAME`).
    pub name: &'static str,
    pub short: Option<&'static str>,
    pub scope: Scope,
    /// Whether it is a command-line flag (every setting but a few file-only keys is).
    pub flag: bool,
    pub kind: Kind,
    pub default: DefaultValue,
    /// What the value looks like in `--help` (`DURATION`, `N`).
    pub hint: &'static str,
    pub help: &'static str,
}

const MILLISECOND: u64 = super::units::MILLISECONDS;
const HOUR: u64 = super::units::HOUR;
const DAY: u64 = super::units::DAY;

const fn opt(name: &'static str, scope: Scope, kind: Kind, default: DefaultValue) -> Opt {
    Opt {
        name,
        short: None,
        scope,
        flag: true,
        kind,
        default,
        hint: "",
        help: "",
    }
}

impl Opt {
    const fn hint(mut self, hint: &'static str) -> Opt {
        self.hint = hint;
        self
    }

    const fn help(mut self, help: &'static str) -> Opt {
        self.help = help;
        self
    }

    const fn short(mut self, short: &'static str) -> Opt {
        self.short = Some(short);
        self
    }

    const fn file_only(mut self) -> Opt {
        self.flag = false;
        self
    }

    /// `--name` for a flag, `name` for a file-only key.
    pub fn shown_name(&self) -> String {
        if self.flag {
            format!("--{}", self.name)
        } else {
            self.name.to_string()
        }
    }
}

const fn duration(bare: BareUnit, min: u64, max: u64) -> Kind {
    Kind::Duration { bare, min, max }
}

const fn whole(min: u64, max: u64) -> Kind {
    Kind::Whole { min, max }
}

use BareUnit::{Milliseconds, Seconds};
use DefaultValue::{Computed, Off, Value};
use Scope::{Command, Global, GlobalAndService, Pool, Service, ServiceAndPool};

/// Every setting, in the order `--help` lists them.
pub const OPTIONS: &[Opt] = &[
    opt("config", Command, Kind::Path, Off)
        .short("c")
        .hint("FILE")
        .help("read services, pools and settings from this TOML file (see README); re-read on SIGHUP"),
    opt("check", Command, Kind::Switch, Off)
        .help("with --config: check the file (every service, pool and key), print a summary and exit"),
    opt("listen", Service, Kind::Addresses, Value("127.0.0.1:8080"))
        .short("l")
        .hint("HOST:PORT")
        .help("address to accept clients on"),
    opt("pool", Service, Kind::PoolName, Computed("required without routes"))
        .file_only()
        .help("the pool a service's sessions go to (with routes: those no route takes)"),
    opt("backends", Pool, Kind::Backends, Computed("positional BACKEND arguments"))
        .file_only()
        .help("the pool's backends, in the command line's BACKEND syntax"),
    opt("connect-timeout", ServiceAndPool, duration(Milliseconds, MILLISECOND, HOUR), Value("3s"))
        .hint("DURATION")
        .help("give up a backend connect after this long and try the next backend; a bare number is milliseconds"),
    opt("retries", ServiceAndPool, whole(0, 16), Value("2"))
        .hint("N")
        .help("connect attempts on other backends after a failed one"),
    opt("idle-timeout", Service, duration(Seconds, 0, 365 * DAY), Value("300s"))
        .hint("DURATION")
        .help("close a session with no bytes either way for this long; 0 = never"),
    opt("max-conns", GlobalAndService, whole(1, 1_000_000), Value("10000"))
        .hint("N")
        .help("sessions at once for the process (in a service: its own limit too); past it new clients are closed at once"),
    opt("backlog", Service, whole(1, 65_535), Value("1024"))
        .hint("N")
        .help("listen backlog"),
    opt("workers", Global, Kind::Workers, Value("auto"))
        .hint("N|auto")
        .help("worker threads, each with its own event loop; auto = one per CPU this process may run on"),
    opt("buffer-size", Global, Kind::Size { min: 1024, max: 1 << 20 }, Value("16k"))
        .hint("BYTES")
        .help("size of one pool buffer, from 1k to 1m; k/m suffixes allowed"),
    opt("buffers", Global, whole(2, 16 << 20), Computed("56 MiB worth"))
        .hint("N")
        .help("buffers in the pool, allocated once at start"),
    opt("pipes", Global, whole(0, super::MAX_PIPES), Value("256"))
        .hint("N")
        .help("kernel pipes for moving bulk flows with splice, without a copy (Linux); each is 2 descriptors, held only while bytes sit in it; 0 = splice off"),
    opt("bpf-redirect", Global, Kind::Switch, Off)
        .help("the kernel fast path (Linux, sockmap): the kernel moves established sessions' bytes socket to socket; stays off, with a warning, on the kernels tested, whose pass path can deliver a segment twice (docs/fastpath.md)"),
    opt("bpf-redirect-bound", Global, Kind::Size { min: 16 << 10, max: 64 << 20 }, Value("256k"))
        .hint("BYTES")
        .help("with --bpf-redirect: bytes the kernel may hold in flight toward one socket before the session's bytes go through tcplb's buffers"),
    opt("balance", Pool, Kind::Choice(&super::policy::NAMES), Value("least-active"))
        .hint("NAME")
        .help("how a backend is chosen: least-active, round-robin, random-two, source-hash or least-latency"),
    opt("hash-table-size", Pool, Kind::Prime { max: super::policy::MAX_TABLE_SIZE as u64 }, Value("65537"))
        .hint("PRIME")
        .help("source-hash: slots in the Maglev table, a prime, at least the backends and best 100 times as many"),
    opt("hash-balance-factor", Pool, Kind::Factor, Off)
        .hint("F")
        .help("source-hash: bounded loads; no backend takes more than F times the mean active sessions per unit of weight, such as 1.25"),
    opt("latency-decay", Pool, duration(Seconds, 100 * MILLISECOND, HOUR), Value("10s"))
        .hint("DURATION")
        .help("least-latency: the time constant of each backend's response-time average (how fast a recovered backend wins its share back)"),
    opt("queue-size", Pool, whole(0, 1_000_000), Value("0"))
        .hint("N")
        .help("clients that may wait for a slot when every backend is at its maxconn; past it they are reset at once; 0 = no queue"),
    opt("queue-timeout", Pool, duration(Seconds, MILLISECOND, HOUR), Value("5s"))
        .hint("DURATION")
        .help("with queue-size: reset a client that has waited this long for a slot"),
    opt("queue", Pool, Kind::Group(&["size", "timeout"]), Off)
        .file_only()
        .help("{ size = N, timeout = DURATION }: queue-size and queue-timeout in one"),
    opt("max-conns-per-source", Service, whole(1, 1_000_000), Off)
        .hint("N")
        .help("sessions at once from one client source (see source-prefix); past it its new clients are reset"),
    opt("conn-rate-per-source", Service, Kind::Rate, Off)
        .hint("N/s")
        .help("new sessions from one client source, such as 50/s or 600/m (a token bucket whose burst is N); past it they are reset"),
    opt("source-prefix-v4", Service, whole(1, 32), Value("32"))
        .hint("BITS")
        .help("for the per-source limits, an IPv4 client counts as its address masked to this many bits"),
    opt("source-prefix-v6", Service, whole(1, 128), Value("64"))
        .hint("BITS")
        .help("the same for IPv6 clients"),
    opt("source-prefix", Service, Kind::Group(&["v4", "v6"]), Off)
        .file_only()
        .help("{ v4 = BITS, v6 = BITS }: source-prefix-v4 and source-prefix-v6 in one"),
    opt("source-table-size", Service, whole(16, 10_000_000), Value("65536"))
        .hint("N")
        .help("sources the per-source limits remember at most (about 100 bytes each); one with a session open is never forgotten"),
    opt("priority", Service, Kind::Priority, Off)
        .hint("CIDR=CLASS,...")
        .help("each client's class by source, first match wins (default normal): high is served from a queue first, low is turned away first"),
    opt("accept-proxy", Service, Kind::Switch, Off)
        .help("every client starts with a PROXY protocol header (v1 or v2), which gives the real client address"),
    opt("proxy-timeout", Service, duration(Seconds, MILLISECOND, HOUR), Value("5s"))
        .hint("DURATION")
        .help("with accept-proxy: reset a client whose header is not complete after this long"),
    opt("routes", Service, Kind::Routes, Off)
        .file_only()
        .help("route each TLS client by the server name (SNI) and protocols (ALPN) of its ClientHello, without terminating TLS: a list of { sni = \"NAME\" or \"*.DOMAIN\", alpn = \"PROTOCOL\", pool = \"NAME\" }; the rest go to the service's pool (reset without one)"),
    opt("sni-timeout", Service, duration(Seconds, MILLISECOND, HOUR), Value("5s"))
        .file_only()
        .hint("DURATION")
        .help("with routes: a ClientHello not whole this long after the client (or its PROXY header) came goes where no route matched"),
    opt("max-hello", Service, Kind::Size { min: 1024, max: 64 << 10 }, Value("16k"))
        .file_only()
        .hint("BYTES")
        .help("with routes: the most bytes a ClientHello may take, from 1k to 64k; a bigger one goes where no route matched"),
    opt("max-fails", Pool, whole(0, 1_000_000), Value("3"))
        .hint("N")
        .help("failed connects in a row that take a backend out; 0 = never"),
    opt("fail-timeout", Pool, duration(Seconds, 10 * MILLISECOND, DAY), Value("10s"))
        .hint("DURATION")
        .help("how long a failing backend stays out before one trial session; doubles while trials fail, up to 300s"),
    opt("health-interval", Pool, duration(Seconds, 0, DAY), Value("0"))
        .hint("DURATION")
        .help("probe every backend with a TCP connect this often, at most 64 at once; 0 = off"),
    opt("health", Pool, Kind::Health, Off)
        .file_only()
        .help("an application health check: { interval, timeout, rise, fall, send, send-hex, expect, expect-regex, expect-hex, http, http-host, expect-status, port } (see docs/configuration.md)"),
    opt("rise", Pool, whole(1, 1000), Value("2"))
        .hint("N")
        .help("passed probes in a row that bring a backend up"),
    opt("fall", Pool, whole(1, 1000), Value("3"))
        .hint("N")
        .help("failed probes in a row that take a backend down"),
    opt("on-marked-down", Pool, Kind::Choice(&["leave", "shutdown-sessions"]), Value("leave"))
        .hint("WHAT")
        .help("what happens to a backend's live sessions when its checks or its agent mark it down: leave them, or shutdown-sessions (cut them)"),
    opt("agent-interval", Pool, duration(Seconds, 100 * MILLISECOND, HOUR), Value("2s"))
        .hint("DURATION")
        .help("how often a backend with agent-port=N is asked for its word (ready, drain, maint, up, down, N%)"),
    opt("slow-start", Pool, duration(Seconds, 0, HOUR), Value("0"))
        .hint("DURATION")
        .help("a backend that comes back up ramps its weight from about nothing to full over this long; 0 = off"),
    opt("backends-file", Pool, Kind::Path, Off)
        .hint("PATH")
        .help("more backends, one BACKEND per line (# comments); re-read on SIGHUP"),
    opt("resolve-interval", Pool, duration(Seconds, 0, DAY), Value("0"))
        .hint("DURATION")
        .help("re-resolve backend host names this often; 0 = at start and reload only"),
    opt("drain-timeout", Global, duration(Seconds, 0, DAY), Value("30s"))
        .hint("DURATION")
        .help("after SIGTERM/SIGINT (or a service's removal by a reload), let live sessions finish for up to this long"),
    opt("admin", Global, Kind::Address, Off)
        .hint("HOST:PORT")
        .help("serve /metrics, /healthz and /backends over HTTP here; keep it on loopback or a private network"),
    opt("control-socket", Global, Kind::Path, Off)
        .hint("PATH")
        .help("serve tcplb ctl on a unix socket at PATH (mode 0600: owner only); never TCP"),
    opt("control-socket-mode", Global, Kind::Mode, Value("0600"))
        .hint("MODE")
        .help("the control socket's permission bits, in octal (0660 lets its group in too)"),
    opt("control-socket-group", Global, Kind::Account, Off)
        .hint("GROUP")
        .help("the control socket's group (a name or a number), with control-socket-mode 0660"),
    opt("access-log", Global, Kind::Path, Off)
        .hint("PATH")
        .help("write one line per finished session to PATH (- = stdout); SIGUSR1 reopens it"),
    opt("pid-file", Global, Kind::Path, Off)
        .hint("PATH")
        .help("write the process id to PATH at start (replaced atomically; an upgrade's new process rewrites it)"),
    opt("upgrade-timeout", Global, duration(Seconds, 100 * MILLISECOND, HOUR), Value("30s"))
        .hint("DURATION")
        .help("after SIGUSR2, how long the new process may take to start serving before the upgrade is given up"),
    opt("upgrade-probation", Global, duration(Seconds, 0, HOUR), Value("5s"))
        .hint("DURATION")
        .help("after SIGUSR2, once the new process serves, the old one stops accepting but stands by this long, and takes over again if the new one dies; 0 = hand over at once"),
    opt("help", Command, Kind::Switch, Off)
        .short("h")
        .help("print this help and exit"),
    opt("version", Command, Kind::Switch, Off)
        .short("V")
        .help("print the version, the git commit and the build date, and exit"),
];

/// The setting called `name`.
pub fn find(name: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.name == name)
}

/// The known name closest to `name` among `candidates`, if one is close enough to be a slip
/// (a typo, a missing or extra letter, `_` for `-`).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wanted = name.to_ascii_lowercase().replace('_', "-");
    candidates
        .into_iter()
        .map(|c| (edit_distance(&wanted, c), c))
        .filter(|&(d, c)| d <= (c.len() / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance by characters, a swap of two neighbours counting as one edit (optimal
/// string alignment): `retires` is one slip from `retries`, `wbe` from `web`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The flags, for the command-line parser.
pub fn flags() -> getopts::Options {
    let mut o = getopts::Options::new();
    for opt in OPTIONS.iter().filter(|o| o.flag) {
        let short = opt.short.unwrap_or("");
        let help = help_line(opt);
        if opt.kind == Kind::Switch {
            o.optflag(short, opt.name, &help);
        } else {
            o.optopt(short, opt.name, &help, opt.hint);
        }
    }
    o
}

/// An option's help with its default, as `--help` shows it.
fn help_line(opt: &Opt) -> String {
    match (opt.kind, opt.default) {
        (Kind::Switch, _) | (_, DefaultValue::Required) => opt.help.to_string(),
        (_, default) => format!("{} (default {})", opt.help, default.shown()),
    }
}

/// What `--help` says after the options: durations, signals, exit status, examples.
const USAGE_NOTES: &str = "
DURATION is a number with a unit: 250ms, 3s, 1.5s, 2m, 1h (decimals allowed). A bare
number is seconds, except for --connect-timeout, where it is milliseconds.

A config file (--config) holds [global], [defaults], [services.NAME] and [pools.NAME]
tables whose keys are the options above without '--', plus 'pool' (a service's pool),
'routes' (TLS routes by server name) and 'backends' (a pool's BACKENDs); see
docs/configuration.md. With one, only the
process-wide options (those of [global]) may be given beside it, and win over the file.

Signals:
  SIGHUP           re-read the config file (or the backends file) and re-resolve the
                   names; only what changed is touched
  SIGTERM, SIGINT  stop accepting, let live sessions finish (--drain-timeout), exit 0;
                   a second one cuts them and exits at once
  SIGUSR1          reopen the access log (after logrotate renamed it)
  SIGUSR2          upgrade: start the binary at the path tcplb was started from, with
                   the same arguments, hand it the listening sockets, and once it
                   serves, stand by for --upgrade-probation (taking over again if it
                   dies), then drain as on SIGTERM; if it fails, keep serving

Exit status:
  0  after --help or --version, after --check of a good file, and after a drain
  1  it cannot start (the port is in use, a backend name does not resolve, ...)
  2  bad usage: one line on stderr names the bad value

Examples:
  tcplb --config /etc/tcplb/tcplb.toml
  tcplb --check --config /etc/tcplb/tcplb.toml
  tcplb --listen 0.0.0.0:8080 10.0.0.11:80 10.0.0.12:80,weight=2
  tcplb -l 127.0.0.1:6379 --connect-timeout 250ms --idle-timeout 1m 10.0.1.5:6379
  RUST_LOG=debug tcplb -l [::]:5432 db-a.internal:5432 db-b.internal:5432
  tcplb -l 0.0.0.0:6379 --balance source-hash --hash-balance-factor 1.25 cache-a:6379 cache-b:6379
  tcplb -l 0.0.0.0:443 --accept-proxy web-a:443,send-proxy-v2 web-b:443,send-proxy-v2
";

/// The `--help` text.
pub fn usage() -> String {
    let brief = "Usage: tcplb [OPTIONS] BACKEND...\n       tcplb --config FILE [OPTIONS]\n\n\
        A Layer-4 TCP load balancer: each client connection is piped to the backend with the\n\
        fewest active sessions per unit of weight (or as --balance says).\n\n\
        BACKEND is HOST:PORT[,weight=N][,backup][,send-proxy|,send-proxy-v2][,agent-port=N]\n\
        (N from 1 to 256, default 1; HOST may be an IPv4 address, [IPv6] or a name: every\n\
        address it resolves to is a backend; send-proxy sends it a PROXY protocol v1 header\n\
        first, send-proxy-v2 a v2 one; agent-port: its agent answers there)\n\n\
        A running tcplb is steered with 'tcplb ctl' through --control-socket\n\
        (see 'tcplb ctl --help').";
    let mut text = flags().usage(brief);
    text.push_str(USAGE_NOTES);
    text
}

/// The README's table of options, as the option table makes it.
pub fn readme_table() -> String {
    let mut out =
        String::from("| flag / key | where | default | what it does |\n|---|---|---|---|\n");
    for opt in OPTIONS
        .iter()
        .filter(|o| o.scope != Scope::Command || o.name == "config")
    {
        let name = if opt.flag {
            format!("`--{}`", opt.name)
        } else {
            format!("`{}` (file only)", opt.name)
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            opt.scope.describe(),
            opt.default.shown(),
            opt.help.replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_look_like_flags() {
        for (i, a) in OPTIONS.iter().enumerate() {
            assert!(
                a.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                a.name
            );
            for b in &OPTIONS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert!(a.short.is_none() || a.short != b.short, "{}", a.name);
            }
            assert!(!a.help.is_empty(), "{} has no help", a.name);
            assert!(
                a.kind == Kind::Switch || !a.flag || !a.hint.is_empty(),
                "{} has no value hint",
                a.name
            );
        }
    }

    #[test]
    fn slips_find_the_name_meant() {
        let names = OPTIONS.iter().map(|o| o.name);
        assert_eq!(
            closest("conect-timeout", names.clone()),
            Some("connect-timeout")
        );
        assert_eq!(
            closest("connect_timeout", names.clone()),
            Some("connect-timeout")
        );
        assert_eq!(closest("retires", names.clone()), Some("retries"));
        assert_eq!(closest("Balance", names.clone()), Some("balance"));
        assert_eq!(closest("colour", names.clone()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("wbe", "web"), 1);
        assert_eq!(closest("wbe", ["web", "api"]), Some("web"));
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn the_readme_table_is_the_option_table() {
        let readme = include_str!("../../README.md");
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README.md's table of options differs from src/config/table.rs; it should read:\n\n{table}"
        );
    }
}
