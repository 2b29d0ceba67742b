//! What happened, counted: each worker's counters, gauges and histograms, and how a session
//! ended. No dependencies on the rest of the crate.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer: an update is a plain load
//! and store of an atomic (no locked instruction, no contention), and the admin endpoint
//! reads every worker's at scrape time and adds them up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning thread may call this.
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the session duration histogram.
pub const SESSION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Upper bounds (seconds) of the backend connect time histogram.
pub const CONNECT_BUCKETS: [f64; 15] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with fixed buckets and a single writer; observing allocates nothing.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[Counter]>,
    /// The sum, as `f64` bits.
    sum: AtomicU64,
    count: Counter,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: Counter::default(),
        }
    }

    /// Records one value. Only the owning thread may call this.
    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get(bucket) {
            c.add(1);
        }
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + value;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
        self.count.add(1);
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Per-bucket counts (not cumulative), the last for `+Inf`.
    pub fn bucket_counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().map(Counter::get)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    pub fn count(&self) -> u64 {
        self.count.get()
    }
}

/// A histogram every worker writes to (a service's or a pool's): the same buckets as
/// [`Histogram`], each an atomic addition; the sum in nanoseconds, so no float needs a
/// compare-and-swap.
#[derive(Debug)]
pub struct SharedHistogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl SharedHistogram {
    pub fn new(bounds: &'static [f64]) -> SharedHistogram {
        SharedHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration, from any thread.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let bucket = self.bounds.partition_point(|&b| b < secs);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Its per-bucket counts (the last past the last bound) into `out`, as many as fit,
    /// without allocating.
    pub fn counts_into(&self, out: &mut [u64]) {
        for (o, c) in out.iter_mut().zip(self.counts.iter()) {
            *o = c.load(Ordering::Relaxed);
        }
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// What it holds now, for rendering.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's figures at one moment: per-bucket counts (not cumulative, the last for
/// `+Inf`), the sum and the count.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Snapshot {
    /// The sum of per-worker histograms that share their buckets.
    pub fn sum_of<'h>(
        parts: impl Iterator<Item = &'h Histogram>,
        bounds: &'static [f64],
    ) -> Snapshot {
        let mut total = Snapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        };
        for h in parts {
            for (t, c) in total.counts.iter_mut().zip(h.bucket_counts()) {
                *t += c;
            }
            total.sum += h.sum();
            total.count += h.count();
        }
        total
    }
}

/// One worker's figures.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub accepted: Counter,
    pub shed_max_conns: Counter,
    pub shed_pool: Counter,
    pub accept_errors: Counter,
    /// Clients closed because no backend could be reached.
    pub no_backend: Counter,
    /// Sessions open on this worker now.
    pub sessions: Gauge,
    pub buffers_free: Gauge,
    pub buffers_total: Gauge,
    pub buffer_bytes: Gauge,
    /// Kernel pipes a direction could take now (made or not yet made), and in all.
    pub pipes_free: Gauge,
    pub pipes_total: Gauge,
    /// Bytes moved by splice (through kernel pipes) to the backend and to the client.
    pub spliced_sent: Counter,
    pub spliced_received: Counter,
    /// Sessions handed to the kernel fast path (`--bpf-redirect`), and the bytes the kernel
    /// moved for them to the backend and to the client (never read by tcplb; counted when
    /// the session ends).
    pub fast_linked: Counter,
    pub fast_sent: Counter,
    pub fast_received: Counter,
    /// Clients reset for their PROXY protocol header, by [`ProxyError`].
    pub proxy_errors: [Counter; ProxyError::ALL.len()],
}

/// Why a client's PROXY protocol header (`--accept-proxy`) was refused: the `reason` of
/// `tcplb_proxy_protocol_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The client sent something else, or closed before sending anything.
    Missing,
    /// A header, but not a valid one.
    Malformed,
    /// Longer than tcplb takes (536 bytes; 107 for a version-1 line).
    Oversized,
    /// The client closed (or reset) partway through its header.
    Truncated,
    /// Not complete within `--proxy-timeout`.
    Timeout,
}

impl ProxyError {
    pub const ALL: [ProxyError; 5] = [
        ProxyError::Missing,
        ProxyError::Malformed,
        ProxyError::Oversized,
        ProxyError::Truncated,
        ProxyError::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::Missing => "missing",
            ProxyError::Malformed => "malformed",
            ProxyError::Oversized => "oversized",
            ProxyError::Truncated => "truncated",
            ProxyError::Timeout => "timeout",
        }
    }
}

/// What a client of a service with routes turned out to send first: the `result` of
/// `tcplb_tls_inspect_total`, and the access log's `tls=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsInspect {
    /// A ClientHello with a server name.
    Sni,
    /// A ClientHello without one.
    NoSni,
    /// Not TLS (or nothing at all before the client closed).
    NotTls,
    /// A ClientHello longer than `max-hello`.
    TooBig,
    /// Not a whole ClientHello within `sni-timeout`.
    Timeout,
    /// TLS records, but no well-formed ClientHello in them (or cut short by the client).
    Malformed,
}

impl TlsInspect {
    pub const ALL: [TlsInspect; 6] = [
        TlsInspect::Sni,
        TlsInspect::NoSni,
        TlsInspect::NotTls,
        TlsInspect::TooBig,
        TlsInspect::Timeout,
        TlsInspect::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsInspect::Sni => "sni",
            TlsInspect::NoSni => "no_sni",
            TlsInspect::NotTls => "not_tls",
            TlsInspect::TooBig => "too_big",
            TlsInspect::Timeout => "timeout",
            TlsInspect::Malformed => "malformed",
        }
    }
}

/// How a session ended: for the access log, the counters and debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Both directions finished; the client closed its side first.
    ClientClosed,
    /// Both directions finished; the backend closed its side first.
    BackendClosed,
    ClientReset,
    BackendReset,
    IdleTimeout,
    /// Every connect attempt failed, or no backend was available.
    NoBackend,
    /// Out of file descriptors while connecting.
    NoResources,
    /// Cut at shutdown: the drain ran out of time or a second signal came.
    Shutdown,
    /// Cut because its backend's sessions were killed (`tcplb ctl kill sessions`, or
    /// `on-marked-down = "shutdown-sessions"`).
    Killed,
    /// Turned away at once: `--max-conns` sessions were open.
    ShedMaxConns,
    /// Turned away at once: the buffer pool was nearly empty.
    ShedPool,
    /// Reset for its PROXY protocol header (`--accept-proxy`): missing, malformed, too
    /// long, cut short or too slow.
    BadProxyHeader,
    /// Turned away: every backend that could take it was at its `maxconn`, and its pool's
    /// queue was off or full (or it was put out of the queue for a higher-class client).
    PoolFull,
    /// Reset after waiting in its pool's queue for `queue-timeout`.
    QueueTimeout,
    /// Reset: its source had `max-conns-per-source` sessions open.
    LimitedConns,
    /// Reset: its source had used up `conn-rate-per-source`.
    LimitedRate,
    /// Reset: its service has routes, none took the client (no route matched, not TLS, a
    /// hello too big, malformed or too slow) and the service has no pool of its own.
    NoRoute,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_fin",
            EndReason::BackendClosed => "backend_fin",
            EndReason::ClientReset => "client_reset",
            EndReason::BackendReset => "backend_reset",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::NoBackend => "no_backend",
            EndReason::NoResources => "no_resources",
            EndReason::Shutdown => "shutdown",
            EndReason::Killed => "killed",
            EndReason::ShedMaxConns => "shed_max_conns",
            EndReason::ShedPool => "shed_pool",
            EndReason::BadProxyHeader => "bad_proxy_header",
            EndReason::PoolFull => "pool_full",
            EndReason::QueueTimeout => "queue_timeout",
            EndReason::LimitedConns => "per_source_conns",
            EndReason::LimitedRate => "per_source_rate",
            EndReason::NoRoute => "no_route",
        }
    }
}

pub use crate::config::protection::Class;

/// What is left of a session once it has ended: for the access log and the counters.
#[derive(Clone, Debug)]
pub struct SessionSummary {
    /// The service the client came to.
    pub service: std::sync::Arc<str>,
    pub client_addr: SocketAddr,
    /// The backend it ended on (`None` if it never got one).
    pub backend: Option<SocketAddr>,
    pub connect_time: Option<Duration>,
    /// The backend's first-response time: from the client's first bytes sent to it to its
    /// first bytes back (`None`: no exchange).
    pub first_response: Option<Duration>,
    pub duration: Duration,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub retries: u32,
    /// Its priority class.
    pub class: Class,
    /// How long it waited in its pool's queue (`None`: it did not wait).
    pub queue_wait: Option<Duration>,
    /// With routes: what the client's first bytes were, and the server name it asked for.
    pub tls: Option<(TlsInspect, Option<std::sync::Arc<str>>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_per_bucket() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 2.0, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.bucket_counts().collect::<Vec<_>>(), [2, 1, 2]);
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 5.65).abs() < 1e-9);
    }

    #[test]
    fn counters_and_gauges() {
        let c = Counter::default();
        c.add(2);
        c.add(3);
        assert_eq!(c.get(), 5);
        let g = Gauge::default();
        g.set(9);
        assert_eq!(g.get(), 9);
    }
}
