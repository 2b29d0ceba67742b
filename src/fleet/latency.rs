//! How fast a backend answers, as one number every worker updates without a lock: a
//! peak-sensitive EWMA (Finagle's and Linkerd's "peak EWMA") of its first-response time,
//! the time from a session's first client bytes written to the backend to its first bytes
//! back (or, where the backend speaks first or never answered, the connect time).
//!
//! A sample above the estimate replaces it at once (a backend that slows down is seen at
//! once); one below pulls it down by a weight that grows with the time since the last
//! update (`1 - e^(-Δt/τ)`, τ the pool's `latency-decay`), so a fast backend that had one
//! slow answer recovers in a few τ. An estimate nobody refreshes decays toward the pool's
//! median the same way (the control thread does it, [`Latency::decay_toward`]), so a
//! backend that recovered gets sessions again to show it.

use crate::stats::{CONNECT_BUCKETS, SharedHistogram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// A backend's first-response time: the estimate and its samples.
#[derive(Debug)]
pub struct Latency {
    /// Nanoseconds; 0 = none yet (the pool's median stands in).
    estimate_ns: AtomicU64,
    /// The estimate in half-octave steps (see [`class_of`]; 0 = none yet): what
    /// least-latency compares, kept beside the estimate so a comparison takes no logarithm.
    class: AtomicU8,
    /// When the estimate was last set (ms since the clock's epoch).
    updated_ms: AtomicU64,
    /// Every sample, for `tcplb_backend_response_seconds`.
    pub responses: SharedHistogram,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            estimate_ns: AtomicU64::new(0),
            class: AtomicU8::new(0),
            updated_ms: AtomicU64::new(0),
            responses: SharedHistogram::new(&CONNECT_BUCKETS),
        }
    }
}

/// Latencies under this are all alike to least-latency: a connect on a LAN takes well
/// under it, and a strict order over such noisy figures would give every sequential session
/// to whichever measured a few microseconds less.
pub const LATENCY_FLOOR: Duration = Duration::from_millis(1);

/// `ns` in half-octave steps (powers of √2) from [`LATENCY_FLOOR`], rounded up: 1 for the
/// floor and below, then 2, 3, ... (90 for the longest duration there is).
pub fn class_of(ns: u64) -> u8 {
    let floor = LATENCY_FLOOR.as_nanos() as f64;
    let steps = ((ns.max(1) as f64 / floor).max(1.0).log2() * 2.0).ceil();
    (1.0 + steps).min(255.0) as u8
}

/// What a class stands for, relative to the floor: `√2^(class - 1)`.
pub fn class_value(class: u8) -> f64 {
    static VALUES: OnceLock<[f64; 256]> = OnceLock::new();
    VALUES.get_or_init(|| {
        let mut values = [1.0; 256];
        for (k, v) in values.iter_mut().enumerate().skip(1) {
            *v = ((k as f64 - 1.0) / 2.0).exp2();
        }
        values
    })[class as usize]
}

/// `e^(-elapsed/tau)`: how much of the old estimate stays after `elapsed` ms.
fn kept(elapsed_ms: u64, tau: Duration) -> f64 {
    let tau_ms = tau.as_millis().max(1) as f64;
    (-(elapsed_ms as f64) / tau_ms).exp()
}

impl Latency {
    /// The estimate in nanoseconds (0: none yet).
    pub fn estimate_ns(&self) -> u64 {
        self.estimate_ns.load(Ordering::Acquire)
    }

    /// The estimate's half-octave class (0: none yet).
    pub fn class(&self) -> u8 {
        self.class.load(Ordering::Acquire)
    }

    fn set(&self, old: u64, new: u64) -> bool {
        let swapped = self
            .estimate_ns
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if swapped {
            self.class
                .store(if new == 0 { 0 } else { class_of(new) }, Ordering::Release);
        }
        swapped
    }

    /// Folds in one sample taken at `now` (ms), with time constant `tau`.
    pub fn observe(&self, sample: Duration, now: u64, tau: Duration) {
        self.responses.observe(sample);
        let x = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX).max(1);
        let last = self.updated_ms.load(Ordering::Acquire);
        let mut old = self.estimate_ns.load(Ordering::Acquire);
        loop {
            let new = if old == 0 || x >= old {
                x
            } else {
                let keep = kept(now.saturating_sub(last), tau);
                (old as f64 * keep + x as f64 * (1.0 - keep)).max(1.0) as u64
            };
            if self.set(old, new) {
                break;
            }
            old = self.estimate_ns.load(Ordering::Acquire);
        }
        self.updated_ms.fetch_max(now, Ordering::AcqRel);
    }

    /// Pulls an estimate not refreshed for a while toward `median` (ns), as if a sample of
    /// the median had come for every `tau` since; one with no estimate yet takes the median.
    /// Returns whether it changed.
    pub fn decay_toward(&self, median: u64, now: u64, tau: Duration) -> bool {
        let old = self.estimate_ns.load(Ordering::Acquire);
        if median == 0 {
            return false;
        }
        let new = if old == 0 {
            median
        } else {
            let last = self.updated_ms.load(Ordering::Acquire);
            let keep = kept(now.saturating_sub(last), tau);
            (median as f64 + (old as f64 - median as f64) * keep).max(1.0) as u64
        };
        if new == old {
            return false;
        }
        let swapped = self.set(old, new);
        if swapped {
            self.updated_ms.fetch_max(now, Ordering::AcqRel);
        }
        swapped
    }

    /// Forgets the estimate (a backend that comes back after an absence starts at the
    /// pool's median, not where it left).
    pub fn reset(&self) {
        self.estimate_ns.store(0, Ordering::Release);
        self.class.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slower_answer_counts_at_once_and_faster_ones_pull_it_down_over_time() {
        let l = Latency::default();
        assert_eq!(l.estimate_ns(), 0);
        l.observe(MS * 2, 1000, TAU);
        assert_eq!(l.estimate_ns(), 2_000_000);
        // Peak: a slow answer is taken whole.
        l.observe(MS * 40, 1001, TAU);
        assert_eq!(l.estimate_ns(), 40_000_000);
        // A fast one right after barely moves it; after τ it has moved 63% of the way.
        l.observe(MS * 2, 1002, TAU);
        assert!(l.estimate_ns() > 39_000_000);
        l.observe(MS * 2, 11_002, TAU);
        let after = l.estimate_ns() as f64;
        let want = 2e6 + (40e6 - 2e6) * (-1.0f64).exp();
        assert!((after - want).abs() / want < 0.1, "{after} vs {want}");
        assert_eq!(l.responses.snapshot().count, 4);
    }

    #[test]
    fn classes_are_half_octaves_from_the_floor() {
        assert_eq!(class_of(1), 1);
        assert_eq!(class_of(900_000), 1);
        assert_eq!(class_of(1_000_000), 1);
        assert_eq!(class_of(1_400_000), 2);
        assert_eq!(class_of(2_000_000), 3);
        assert_eq!(class_of(40_000_000), 12);
        assert!((class_value(3) - 2.0).abs() < 1e-9);
        assert_eq!(class_of(u64::MAX), 90);
        let l = Latency::default();
        assert_eq!(l.class(), 0);
        l.observe(MS * 2, 0, TAU);
        assert_eq!(l.class(), 3);
    }

    #[test]
    fn an_estimate_left_alone_decays_toward_the_median() {
        let l = Latency::default();
        assert!(
            l.decay_toward(5_000_000, 0, TAU),
            "none yet: takes the median"
        );
        assert_eq!(l.estimate_ns(), 5_000_000);
        l.observe(MS * 100, 1000, TAU);
        // Three τ later most of the way back to the median.
        assert!(l.decay_toward(5_000_000, 31_000, TAU));
        let left = l.estimate_ns() as f64;
        assert!(left < 10_000_000.0, "{left}");
        l.reset();
        assert_eq!(l.estimate_ns(), 0);
    }
}
