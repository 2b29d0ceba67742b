//! What a pool is configured to do, as plain data: how a backend is chosen ([`Balance`]),
//! when the passive breaker takes a backend out ([`BreakerPolicy`]) and how active health
//! checks run ([`CheckPolicy`]). The fleet acts on these; the configuration only writes
//! them, so neither imports the other's machinery.

use std::time::Duration;

/// Breaker settings, from `max-fails` and `fail-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed connects in a row that open the breaker; 0 = never.
    pub max_fails: u32,
    /// First cool-down.
    pub fail_timeout: Duration,
}

/// Active check settings, from `health-interval`, `rise` and `fall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckPolicy {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    /// How long a probe may take (the pool's `connect-timeout`).
    pub timeout: Duration,
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
