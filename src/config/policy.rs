//! What a pool is configured to do, as plain data: how a backend is chosen ([`Balance`]),
//! when the passive breaker takes a backend out ([`BreakerPolicy`]), how active health
//! checks run ([`CheckPolicy`], with what they send and expect: [`Exchange`]), and what the
//! runtime side does with backends ([`RuntimePolicy`]: agent checks, slow start, cutting a
//! backend's sessions when it is marked down). The fleet acts on these; the configuration
//! only writes them, so neither imports the other's machinery.

use std::sync::Arc;
use std::time::Duration;

/// Breaker settings, from `max-fails` and `fail-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed connects in a row that open the breaker; 0 = never.
    pub max_fails: u32,
    /// First cool-down.
    pub fail_timeout: Duration,
}

/// Active check settings, from `health = { ... }` or `health-interval`, `rise` and `fall`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckPolicy {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// How long a probe may take, connect and answer (`timeout`, else the pool's
    /// `connect-timeout`).
    pub timeout: Duration,
    /// Check this port instead of the traffic port.
    pub port: Option<u16>,
    /// What to send and what to expect back; `None`: a TCP connect is the check.
    pub exchange: Option<Arc<Exchange>>,
}

impl CheckPolicy {
    /// A TCP connect check.
    pub fn connect(interval: Duration, rise: u32, fall: u32, timeout: Duration) -> CheckPolicy {
        CheckPolicy {
            interval,
            rise,
            fall,
            timeout,
            port: None,
            exchange: None,
        }
    }

    /// `tcp connect`, `send/expect`, `http GET /healthz`: what kind of check it is, for the
    /// start line and `/backends`.
    pub fn describe(&self) -> String {
        let what = match self.exchange.as_deref() {
            None => "tcp connect".to_string(),
            Some(Exchange {
                http: Some(http), ..
            }) => format!("http GET {}", http.path),
            Some(Exchange { expect, send, .. }) => match (send.is_empty(), expect) {
                (false, Some(_)) => "send/expect".to_string(),
                (false, None) => "send".to_string(),
                (true, _) => "expect".to_string(),
            },
        };
        match self.port {
            Some(port) => format!("{what} on port {port}"),
            None => what,
        }
    }
}

/// What an application check sends and what it expects back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Bytes sent once connected (`send`, `send-hex`; for `http`, the request).
    pub send: Vec<u8>,
    /// What the answer must contain.
    pub expect: Option<Expect>,
    /// An HTTP/1.1 GET check (`http`, `http-host`, `expect-status`).
    pub http: Option<HttpCheck>,
}

/// What an answer must contain.
#[derive(Clone, Debug)]
pub enum Expect {
    /// These bytes, anywhere (`expect`, `expect-hex`; `hex` says how to show them).
    Bytes { bytes: Vec<u8>, hex: bool },
    /// A match of this regular expression (`expect-regex`).
    Regex(regex::bytes::Regex),
}

impl PartialEq for Expect {
    fn eq(&self, other: &Expect) -> bool {
        match (self, other) {
            (Expect::Bytes { bytes: a, hex: x }, Expect::Bytes { bytes: b, hex: y }) => {
                a == b && x == y
            }
            (Expect::Regex(a), Expect::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Expect {}

impl Expect {
    /// Whether `answer` has what is expected.
    pub fn found_in(&self, answer: &[u8]) -> bool {
        match self {
            Expect::Bytes { bytes, .. } => {
                bytes.is_empty() || answer.windows(bytes.len()).any(|w| w == bytes.as_slice())
            }
            Expect::Regex(regex) => regex.is_match(answer),
        }
    }

    /// The fewest bytes an answer needs before a miss can be judged.
    pub fn min_len(&self) -> usize {
        match self {
            Expect::Bytes { bytes, .. } => bytes.len().max(1),
            Expect::Regex(_) => 1,
        }
    }

    /// How a message shows it: `"master"`, `hex 2b4f4b`, `regex "^\+OK"`.
    pub fn describe(&self) -> String {
        match self {
            Expect::Bytes { bytes, hex: true } => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("hex {hex}")
            }
            Expect::Bytes { bytes, hex: false } => {
                format!("\"{}\"", super::printable(&String::from_utf8_lossy(bytes)))
            }
            Expect::Regex(regex) => format!("regex \"{}\"", super::printable(regex.as_str())),
        }
    }
}

/// An HTTP/1.1 GET check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// The path asked for (`/healthz`).
    pub path: String,
    /// The `Host` header; `None`: the backend's address.
    pub host: Option<String>,
    /// The statuses that pass (`expect-status`, default `200-399`).
    pub status: (u16, u16),
}

impl HttpCheck {
    /// The request sent to a backend at `authority` (`host:port`).
    pub fn request(&self, authority: &str) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tcplb-health-check\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n",
            self.path,
            self.host.as_deref().unwrap_or(authority)
        )
        .into_bytes()
    }
}

/// What happens to a backend's live sessions when its checks (or its agent) mark it down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MarkedDown {
    /// They go on (the default).
    #[default]
    Leave,
    /// They are cut at once (`on-marked-down = "shutdown-sessions"`).
    ShutdownSessions,
}

/// Per-pool settings of the runtime side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimePolicy {
    /// How often a backend with an `agent-port` is asked for its word.
    pub agent_interval: Duration,
    /// How long a backend that comes back up ramps its weight (zero: off).
    pub slow_start: Duration,
    pub on_marked_down: MarkedDown,
}

/// The default `agent-interval`.
pub const DEFAULT_AGENT_INTERVAL: Duration = Duration::from_secs(2);

impl RuntimePolicy {
    /// Agents asked every 2 s, no slow start, sessions left alone.
    pub const DEFAULT: RuntimePolicy = RuntimePolicy {
        agent_interval: DEFAULT_AGENT_INTERVAL,
        slow_start: Duration::ZERO,
        on_marked_down: MarkedDown::Leave,
    };
}

impl Default for RuntimePolicy {
    fn default() -> RuntimePolicy {
        RuntimePolicy::DEFAULT
    }
}

/// Settings of `--balance source-hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashSettings {
    /// Slots in the Maglev table (`--hash-table-size`): a prime.
    pub table_size: u32,
    /// Bounded loads (`--hash-balance-factor`), in hundredths (125 = 1.25); `None` = off.
    pub balance_factor: Option<u32>,
}

/// The default `--hash-table-size`: the Maglev paper's own example size.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// The largest `--hash-table-size` (the largest prime below 2^24): 64 MiB of table.
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

impl Default for HashSettings {
    fn default() -> HashSettings {
        HashSettings {
            table_size: DEFAULT_TABLE_SIZE,
            balance_factor: None,
        }
    }
}

/// Settings of `--balance least-latency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySettings {
    /// The EWMA's time constant (`latency-decay`).
    pub decay: Duration,
}

/// The default `latency-decay`.
pub const DEFAULT_LATENCY_DECAY: Duration = Duration::from_secs(10);

impl Default for LatencySettings {
    fn default() -> LatencySettings {
        LatencySettings {
            decay: DEFAULT_LATENCY_DECAY,
        }
    }
}

/// The algorithm `--balance` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    LeastActive,
    RoundRobin,
    RandomTwo,
    SourceHash(HashSettings),
    LeastLatency(LatencySettings),
}

/// The names `--balance` takes, in the order `--help` lists them.
pub const NAMES: [&str; 5] = [
    "least-active",
    "round-robin",
    "random-two",
    "source-hash",
    "least-latency",
];

impl Balance {
    /// The algorithm called `name` (source-hash with its default settings).
    pub fn from_name(name: &str) -> Option<Balance> {
        Some(match name {
            "least-active" => Balance::LeastActive,
            "round-robin" => Balance::RoundRobin,
            "random-two" => Balance::RandomTwo,
            "source-hash" => Balance::SourceHash(HashSettings::default()),
            "least-latency" => Balance::LeastLatency(LatencySettings::default()),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Balance::LeastActive => NAMES[0],
            Balance::RoundRobin => NAMES[1],
            Balance::RandomTwo => NAMES[2],
            Balance::SourceHash(_) => NAMES[3],
            Balance::LeastLatency(_) => NAMES[4],
        }
    }

    /// The name with its settings, for the start line: `source-hash (table 65537, balance
    /// factor 1.25)`.
    pub fn describe(self) -> String {
        match self {
            Balance::SourceHash(s) => match s.balance_factor {
                Some(f) => format!(
                    "{} (table {}, balance factor {}.{:02})",
                    self.name(),
                    s.table_size,
                    f / 100,
                    f % 100
                ),
                None => format!("{} (table {})", self.name(), s.table_size),
            },
            Balance::LeastLatency(s) => format!("{} (decay {:?})", self.name(), s.decay),
            _ => self.name().to_string(),
        }
    }
}

/// Whether `n` is prime (trial division: table sizes are at most 2^24).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}
