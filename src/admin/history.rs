//! The dashboard's history: the last 15 minutes of every service's, pool's and backend's
//! rates and gauges, and the process's, in fixed-size rings ([`Ring`]; the backends' in
//! frames of the whole fleet, `frames.rs`): memory is bounded by the number of things
//! watched, never by time or traffic.
//!
//! [`History::sample`] runs on the control thread every [`INTERVAL`] (never on a worker):
//! it reads the same atomics `/metrics` does, turns counters into rates over the time
//! since the last sample, histograms into the interval's percentiles, and pushes one
//! sample per thing. Things that are gone from the topology (a reload removed them, a
//! drained backend finished) are forgotten at the next sample.
//!
//! A sample is kept as a 16-bit float ([`Sample`]: the top half of an `f32`, about three
//! significant digits, ample for a chart); a missing one (the first of a thing, an interval
//! with no connects for a percentile) is NaN, `null` in JSON.

use crate::admin::View;
use crate::admin::frames::{BUCKETS, BackendFrames, Reading};
pub use crate::admin::sample::{SAMPLES, Sample, quantile};
use crate::clock;
use crate::fleet::backend::State;
use crate::service::ServiceStats;
use crate::stats::Snapshot;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A ring of the last `capacity` values pushed: a fixed allocation, the oldest value
/// overwritten once it is full.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    slots: Box<[T]>,
    /// Where the next value goes.
    next: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    /// An empty ring for `capacity` values (at least one); `fill` only initialises the
    /// allocation, it is never read back.
    pub fn new(capacity: usize, fill: T) -> Ring<T> {
        Ring {
            slots: vec![fill; capacity.max(1)].into_boxed_slice(),
            next: 0,
            len: 0,
        }
    }

    pub fn push(&mut self, value: T) {
        self.slots[self.next] = value;
        self.next = (self.next + 1) % self.slots.len();
        self.len = (self.len + 1).min(self.slots.len());
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The values, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = T> + '_ {
        let cap = self.slots.len();
        let start = (self.next + cap - self.len) % cap;
        (0..self.len).map(move |i| self.slots[(start + i) % cap])
    }

    /// The newest value.
    pub fn last(&self) -> Option<T> {
        self.iter().next_back()
    }

    /// Bytes it holds, allocation included.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(&*self.slots)
    }
}

/// A thing's samples: one ring of rows of `K` series (one head for all of them).
type Rows<const K: usize> = Ring<[Sample; K]>;

fn rows<const K: usize>() -> Rows<K> {
    Ring::new(SAMPLES, [Sample::MISSING; K])
}

/// The process's series.
pub const PROCESS_SERIES: [&str; 6] = [
    "sessions",
    "accepted_per_s",
    "buffers_used",
    "pipes_used",
    "cpu_percent",
    "resident_mib",
];
/// A service's series.
pub const SERVICE_SERIES: [&str; 5] = [
    "active",
    "accepted_per_s",
    "shed_per_s",
    "limited_per_s",
    "no_backend_per_s",
];
/// A pool's series (`connect_*`: successful connects of the interval, milliseconds).
pub const POOL_SERIES: [&str; 6] = [
    "active",
    "sessions_per_s",
    "queued",
    "connect_p50_ms",
    "connect_p99_ms",
    "backends_up",
];
/// A backend's series (`response_*`: first-response times of the interval, milliseconds;
/// `state`: a [`STATES`] index), kept in [`BackendFrames`].
pub const BACKEND_SERIES: [&str; crate::admin::frames::SERIES] = [
    "active",
    "sessions_per_s",
    "sent_bytes_per_s",
    "received_bytes_per_s",
    "connect_failures_per_s",
    "response_p50_ms",
    "response_p99_ms",
    "state",
];
/// The backend states of the `state` series, by index.
pub const STATES: [&str; 6] = ["up", "down", "half_open", "draining", "drain", "maint"];

fn state_index(state: State) -> usize {
    match state {
        State::Up => 0,
        State::Down => 1,
        State::HalfOpen { .. } => 2,
        State::Draining => 3,
        State::Drain => 4,
        State::Maint => 5,
    }
}

/// Counters as they were at the last sample, to make rates of.
#[derive(Clone, Debug)]
struct Last<const N: usize> {
    counts: [u64; N],
    histogram: Vec<u64>,
}

/// One thing's history: its rows and what its next rates are taken against.
#[derive(Debug)]
pub struct Track<const K: usize, const N: usize> {
    pub rows: Rows<K>,
    last: Option<Last<N>>,
    /// The sample that last saw it: those not seen by the newest one are forgotten.
    seen: u64,
}

impl<const K: usize, const N: usize> Default for Track<K, N> {
    fn default() -> Self {
        Track {
            rows: rows(),
            last: None,
            seen: 0,
        }
    }
}

impl<const K: usize, const N: usize> Track<K, N> {
    /// Rates of `counts` per second since the last sample (NaN for a first sample), and
    /// the percentiles of `histogram` over the same interval (NaN without any); remembers
    /// both for the next one.
    fn step(
        &mut self,
        counts: [u64; N],
        histogram: Option<&Snapshot>,
        secs: f64,
    ) -> ([f64; N], [f64; 2]) {
        let mut rates = [f64::NAN; N];
        let mut quantiles = [f64::NAN; 2];
        if let Some(last) = &self.last {
            for (rate, (now, then)) in rates.iter_mut().zip(counts.iter().zip(last.counts)) {
                *rate = now.saturating_sub(then) as f64 / secs;
            }
            if let Some(h) = histogram {
                let delta: Vec<u64> = h
                    .counts
                    .iter()
                    .zip(last.histogram.iter().chain(std::iter::repeat(&0)))
                    .map(|(now, then)| now.saturating_sub(*then))
                    .collect();
                quantiles = [
                    quantile(h.bounds, &delta, 0.5) * 1e3,
                    quantile(h.bounds, &delta, 0.99) * 1e3,
                ];
            }
        }
        self.last = Some(Last {
            counts,
            histogram: histogram.map(|h| h.counts.clone()).unwrap_or_default(),
        });
        (rates, quantiles)
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.rows.bytes()
            + self.last.as_ref().map_or(0, |l| l.histogram.capacity() * 8)
    }

    /// The newest value of series `k` that is not missing, among the last `within`
    /// samples (a percentile may be missing for an interval without connects).
    pub fn recent(&self, k: usize, within: usize) -> f64 {
        self.rows
            .iter()
            .rev()
            .take(within)
            .map(|row| row[k].get())
            .find(|v| !v.is_nan())
            .unwrap_or(f64::NAN)
    }
}

/// Every history, keyed by what it belongs to.
#[derive(Debug, Default)]
pub struct History {
    pub process: Track<6, 2>,
    /// By service name.
    pub services: HashMap<String, Track<5, 4>>,
    /// By pool name.
    pub pools: HashMap<String, Track<6, 1>>,
    /// By backend id (stable, never reused), in frames (`frames.rs`).
    pub backends: BackendFrames,
    /// Samples taken so far.
    ticks: u64,
    last_at: Option<Instant>,
    /// When the newest sample was taken, by the wall clock.
    pub last_wall: Option<SystemTime>,
}

impl History {
    /// Samples everything `view` shows; `cpu` is the process's CPU time so far, `resident`
    /// its resident memory in bytes (each `None` where unknown).
    pub fn sample(&mut self, view: &View, cpu: Option<Duration>, resident: Option<u64>) {
        self.ticks += 1;
        let tick = self.ticks;
        let secs = self
            .last_at
            .map_or(INTERVAL.as_secs_f64(), |at| {
                view.now.saturating_duration_since(at).as_secs_f64()
            })
            .max(1e-3);
        self.last_at = Some(view.now);
        self.last_wall = Some(SystemTime::now());
        let now = clock::millis(view.now);

        // The process.
        let workers = view.workers;
        let total = |get: fn(&crate::stats::WorkerStats) -> u64| -> u64 {
            workers.iter().map(|w| get(w)).sum()
        };
        let (rates, _) = self.process.step(
            [
                total(|w| w.accepted.get()),
                cpu.map_or(0, |c| c.as_micros() as u64),
            ],
            None,
            secs,
        );
        let cpu_percent = match cpu {
            Some(_) => rates[1] / 1e4,
            None => f64::NAN,
        };
        self.process.rows.push([
            Sample::new(total(|w| w.sessions.get()) as f64),
            Sample::new(rates[0]),
            Sample::new(
                total(|w| w.buffers_total.get()).saturating_sub(total(|w| w.buffers_free.get()))
                    as f64,
            ),
            Sample::new(
                total(|w| w.pipes_total.get()).saturating_sub(total(|w| w.pipes_free.get())) as f64,
            ),
            Sample::new(cpu_percent),
            Sample::new(resident.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))),
        ]);

        for service in view.topology.services() {
            let s = &service.stats;
            let get = ServiceStats::get;
            let track = self.services.entry(service.name.to_string()).or_default();
            track.seen = tick;
            let (rates, _) = track.step(
                [
                    get(&s.accepted),
                    get(&s.shed_max_conns)
                        + get(&s.shed_service_max_conns)
                        + get(&s.shed_pool)
                        + get(&s.pool_full),
                    get(&s.limited_conns) + get(&s.limited_rate),
                    get(&s.no_backend),
                ],
                None,
                secs,
            );
            track.rows.push([
                Sample::new(s.active.load(Ordering::Relaxed) as f64),
                Sample::new(rates[0]),
                Sample::new(rates[1]),
                Sample::new(rates[2]),
                Sample::new(rates[3]),
            ]);
        }

        self.backends.begin(tick);
        for fleet in view.topology.pools() {
            let mut active = 0u64;
            let mut sessions = 0u64;
            let mut up = 0u64;
            for b in fleet.backends().chain(fleet.draining()) {
                let stats = &b.stats;
                let get = crate::fleet::backend::BackendStats::get;
                let state = b.state(now);
                active += u64::from(b.active());
                sessions += get(&stats.sessions);
                up += u64::from(state == State::Up);
                let mut histogram = [0u64; BUCKETS];
                b.latency.responses.counts_into(&mut histogram);
                let reading = Reading {
                    active: f64::from(b.active()),
                    state: state_index(state) as f64,
                    counts: [
                        get(&stats.sessions),
                        get(&stats.bytes_sent),
                        get(&stats.bytes_received),
                        get(&stats.connect_failures),
                    ],
                    histogram,
                    bounds: b.latency.responses.bounds(),
                };
                self.backends.record(b.id, &reading, secs);
            }
            let [low, normal, high] = fleet.queue().by_class();
            let track = self.pools.entry(fleet.name().to_string()).or_default();
            track.seen = tick;
            let connects = fleet.stats().connect_duration.snapshot();
            let (rates, [p50, p99]) = track.step([sessions], Some(&connects), secs);
            track.rows.push([
                Sample::new(active as f64),
                Sample::new(rates[0]),
                Sample::new((low + normal + high) as f64),
                Sample::new(p50),
                Sample::new(p99),
                Sample::new(up as f64),
            ]);
        }
        self.services.retain(|_, t| t.seen == tick);
        self.pools.retain(|_, t| t.seen == tick);
        self.backends.end();
    }

    /// Bytes the history holds (the maps' own tables roughly included).
    pub fn bytes(&self) -> usize {
        fn map<K, T>(m: &HashMap<K, T>, each: impl Fn(&T) -> usize) -> usize {
            m.values().map(each).sum::<usize>()
                + m.capacity() * (std::mem::size_of::<K>() + std::mem::size_of::<usize>())
        }
        self.process.bytes()
            + map(&self.services, |t| t.bytes())
            + map(&self.pools, |t| t.bytes())
            + self.backends.bytes()
    }
}

/// The process's CPU time so far (user and system), from `getrusage`.
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: getrusage writes only the struct it is given, which is ours and zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is a valid target; `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Some(Duration::from_micros(
        micros(usage.ru_utime) + micros(usage.ru_stime),
    ))
}

/// The calling thread's CPU time so far (zero where it cannot be read).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given, which is ours.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The process's resident memory in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::admin::metrics::page_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest_values_in_order_and_wraps_around() {
        let mut ring = Ring::new(4, 0u32);
        assert!(ring.is_empty());
        assert_eq!(ring.last(), None);
        for v in 1..=3 {
            ring.push(v);
        }
        assert_eq!(ring.iter().collect::<Vec<_>>(), [1, 2, 3]);
        for v in 4..=10 {
            ring.push(v);
            assert_eq!(ring.len(), 4.min(v as usize));
        }
        assert_eq!(ring.iter().collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert_eq!(ring.iter().rev().collect::<Vec<_>>(), [10, 9, 8, 7]);
        assert_eq!(ring.last(), Some(10));
        // Every point of a wrap: the order holds wherever the head is.
        for extra in 0..9u32 {
            ring.push(11 + extra);
            let got: Vec<u32> = ring.iter().collect();
            let want: Vec<u32> = (8 + extra..=11 + extra).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_ring_never_grows_past_its_capacity() {
        let mut ring = Ring::new(SAMPLES, [Sample::MISSING; 8]);
        let bytes = ring.bytes();
        assert_eq!(bytes, std::mem::size_of::<Rows<8>>() + SAMPLES * 16);
        for i in 0..SAMPLES * 3 + 7 {
            ring.push([Sample::new(i as f64); 8]);
            assert!(ring.len() <= SAMPLES);
        }
        assert_eq!(ring.len(), SAMPLES);
        assert_eq!(ring.capacity(), SAMPLES);
        assert_eq!(ring.bytes(), bytes);
        assert_eq!(Ring::new(0, 1u8).capacity(), 1, "a ring holds at least one");
    }

    #[test]
    fn samples_keep_three_digits_and_missing_values() {
        for v in [0.0, 1.0, 2.0, 255.0, 1000.0, 0.5, 12.25] {
            assert_eq!(Sample::new(v).get(), v);
        }
        for v in [2.71234, 123_456.0, 9.87e9, 0.000_123] {
            let got = Sample::new(v).get();
            assert!((got - v).abs() / v < 0.004, "{v} -> {got}");
        }
        assert!(Sample::new(f64::NAN).get().is_nan());
        assert!(Sample::MISSING.get().is_nan());
    }

    #[test]
    fn quantiles_interpolate_in_their_bucket() {
        let bounds = [1.0, 2.0, 4.0];
        assert!(quantile(&bounds, &[0, 0, 0, 0], 0.5).is_nan());
        assert_eq!(quantile(&bounds, &[0, 10, 0, 0], 0.5), 1.5);
        assert_eq!(quantile(&bounds, &[10, 0, 0, 0], 1.0), 1.0);
        assert_eq!(quantile(&bounds, &[50, 0, 49, 1], 0.99), 4.0);
        assert_eq!(
            quantile(&bounds, &[0, 0, 0, 5], 0.5),
            4.0,
            "past the last bound"
        );
    }

    #[test]
    fn a_track_turns_counters_into_rates_over_the_interval() {
        let mut track: Track<1, 2> = Track::default();
        let (rates, q) = track.step([100, 7], None, 2.0);
        assert!(
            rates.iter().all(|r| r.is_nan()),
            "no rate without a last sample"
        );
        assert!(q[0].is_nan());
        let (rates, _) = track.step([300, 7], None, 2.0);
        assert_eq!(rates, [100.0, 0.0]);
        // A counter that went back (it cannot, but) is no negative rate.
        let (rates, _) = track.step([200, 9], None, 0.5);
        assert_eq!(rates, [0.0, 4.0]);
    }

    #[test]
    fn a_track_takes_percentiles_of_the_interval_only() {
        let bounds: &'static [f64] = &[0.001, 0.01, 0.1];
        let snap = |counts: Vec<u64>| Snapshot {
            bounds,
            counts,
            sum: 0.0,
            count: 0,
        };
        let mut track: Track<1, 1> = Track::default();
        track.step([0], Some(&snap(vec![1000, 0, 0, 0])), 2.0);
        // 10 connects in this interval, all in the second bucket: the 1000 fast ones
        // before it do not count.
        let (_, [p50, p99]) = track.step([0], Some(&snap(vec![1000, 10, 0, 0])), 2.0);
        assert!((p50 - 5.5).abs() < 1e-9, "{p50}");
        assert!((p99 - 9.91).abs() < 1e-9, "{p99}");
        let (_, [p50, _]) = track.step([0], Some(&snap(vec![1000, 10, 0, 0])), 2.0);
        assert!(
            p50.is_nan(),
            "an interval without connects has no percentile"
        );
    }
}
