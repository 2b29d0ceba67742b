//! Least latency: the backend with the lowest `latency × (active + 1) / weight`, where
//! latency is the backend's peak-EWMA first-response time ([`crate::fleet::latency`]); ties
//! as least-active breaks them. The same tournament tree as least-active
//! ([`super::least_active::Tree`]) with another key: O(log n) per change, O(1) per pick.
//!
//! Latency is compared in half-octave steps (a factor of √2) from a floor of
//! [`crate::fleet::latency::LATENCY_FLOOR`]: backends whose estimates are that close, or both under the floor, are
//! equally fast, and share as least-active shares (a strict minimum over noisy estimates
//! would give every sequential session to whichever measured a few microseconds less; a
//! connect on a LAN takes well under the floor, so backends that speak first are balanced
//! by load). A backend with no estimate yet (new, or back after an absence)
//! counts at the group's median, so it is tried, neither starved nor flooded. The median, and the decay of
//! estimates nobody refreshes toward it, are the control thread's to keep
//! ([`Selector::tick`], about twice a second): O(n) there, never on a worker.

use crate::fleet::backend::Backend;
use crate::fleet::latency::{class_of, class_value};
use crate::fleet::select::least_active::{Key, Tree, compare as by_load};
use crate::fleet::select::{PickRequest, Selector};
use std::cmp::Ordering as CmpOrdering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// The key: cost by latency, then load.
#[derive(Debug)]
pub struct ByLatency {
    /// The group's median estimate (ns), for backends without one (0: none known yet).
    median: AtomicU64,
    /// Its half-octave class.
    median_class: AtomicU8,
    decay: Duration,
}

impl ByLatency {
    /// `b`'s latency in half-octave steps (its own estimate, else the median's).
    fn class(&self, b: &Backend) -> u8 {
        let own = b.latency.class();
        let class = if own == 0 {
            self.median_class.load(Ordering::Acquire)
        } else {
            own
        };
        class.max(1)
    }
}

impl Key for ByLatency {
    fn compare(&self, a: &Backend, b: &Backend, now: u64) -> CmpOrdering {
        let (ca, cb) = (self.class(a), self.class(b));
        // Sessions (u32) times a share (at most 256 × SHARE_UNIT): no overflow in u64.
        let load = |x: &Backend, other: &Backend| u64::from(x.active() + 1) * other.share(now);
        let cost = if ca == cb {
            // Alike (the usual case, by the rounding): load alone decides.
            load(a, b).cmp(&load(b, a))
        } else {
            let value = |class, x, other| class_value(class) * load(x, other) as f64;
            value(ca, a, b).total_cmp(&value(cb, b, a))
        };
        cost.then_with(|| by_load(a, b, now))
    }
}

pub type LeastLatency = Tree<ByLatency>;

impl LeastLatency {
    pub fn new(members: &[Arc<Backend>], decay: Duration, now: u64) -> LeastLatency {
        let m = median(members);
        let key = ByLatency {
            median: AtomicU64::new(m),
            median_class: AtomicU8::new(if m == 0 { 0 } else { class_of(m) }),
            decay,
        };
        Tree::with_key(members, now, key)
    }
}

/// The (lower) median of the estimates there are (0 if none): with two backends, the
/// faster one's, so a backend that recovered decays toward its healthy peer's speed and
/// is tried again.
fn median(members: &[Arc<Backend>]) -> u64 {
    let mut known: Vec<u64> = members
        .iter()
        .map(|b| b.latency.estimate_ns())
        .filter(|&e| e > 0)
        .collect();
    if known.is_empty() {
        return 0;
    }
    let mid = (known.len() - 1) / 2;
    *known.select_nth_unstable(mid).1
}

impl Selector for LeastLatency {
    fn name(&self) -> &'static str {
        "least-latency"
    }

    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize> {
        self.pick_best(members, request)
    }

    fn refresh(&self, members: &[Arc<Backend>], index: usize, now: u64) {
        self.replay(members, index, now);
    }

    fn refresh_all(&self, members: &[Arc<Backend>], now: u64) {
        self.rebuild(members, now);
    }

    fn ticks(&self) -> bool {
        true
    }

    /// The median again, estimates left alone pulled toward it, the tree rebuilt.
    fn tick(&self, members: &[Arc<Backend>], now: u64) {
        let key = self.key();
        let median = median(members);
        key.median.store(median, Ordering::Release);
        let class = if median == 0 { 0 } else { class_of(median) };
        key.median_class.store(class, Ordering::Release);
        for b in members {
            b.latency.decay_toward(median, now, key.decay);
        }
        self.rebuild(members, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::select::testing::{members, request};

    const TAU: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_fast_backend_wins_until_its_load_outweighs_its_speed() {
        let m = members(&[1, 1]);
        m[0].latency.observe(ms(2), 0, TAU);
        m[1].latency.observe(ms(40), 0, TAU);
        let tree = LeastLatency::new(&m, TAU, 0);
        // 2 ms × (n + 1) stays under 40 ms × 1 for about 20 sessions on the fast one (the
        // half-octave steps make it 22).
        let mut on_fast = 0;
        while tree.pick(&m, &request(&[])) == Some(0) {
            m[0].acquire();
            tree.refresh(&m, 0, 0);
            on_fast += 1;
            assert!(on_fast < 100, "the slow one is never chosen");
        }
        assert_eq!(on_fast, 22);
        assert_eq!(tree.pick(&m, &request(&[])), Some(1));
    }

    #[test]
    fn weights_count_and_a_backend_without_an_estimate_stands_at_the_median() {
        let m = members(&[1, 3, 1]);
        for (i, ms_) in [(0, 10), (1, 10)] {
            m[i].latency.observe(ms(ms_), 0, TAU);
        }
        let tree = LeastLatency::new(&m, TAU, 0);
        tree.tick(&m, 0);
        // Equal latency, weight 3: backend 1 first; backend 2 (no estimate) is at the
        // median, 10 ms, and comes in once the others carry load.
        assert_eq!(tree.pick(&m, &request(&[])), Some(1));
        assert_eq!(
            m[2].latency.estimate_ns(),
            10_000_000,
            "the median stands in"
        );
    }

    #[test]
    fn a_pick_is_the_true_minimum_among_1024() {
        let m = members(&vec![1; 1024]);
        for (i, b) in m.iter().enumerate() {
            b.latency.observe(ms(1 + (i as u64 * 7919) % 50), 0, TAU);
        }
        let tree = LeastLatency::new(&m, TAU, 0);
        for _ in 0..200 {
            let i = tree.pick(&m, &request(&[])).expect("a backend");
            let best = (0..m.len())
                .min_by(|&a, &b| tree.key().compare(&m[a], &m[b], 0).then(a.cmp(&b)))
                .expect("one");
            assert_eq!(i, best);
            m[i].acquire();
            tree.refresh(&m, i, 0);
        }
    }
}
