//! `random-two`: the power of two random choices (Mitzenmacher), as Envoy's least-request
//! balancer: draw two backends at random, in proportion to their weight, and take the one
//! with fewer active sessions per unit of weight (the first drawn on a tie). A backend on
//! its slow-start ramp is kept in a draw with the probability of its ramp.
//!
//! O(1) whatever the size of the group and nothing shared is written: each worker thread
//! draws from its own generator, and a draw is a uniform position in the generation's
//! smooth [`Schedule`] (where each backend has `weight` turns). Almost as even as
//! least-active under load, without its tree to keep up to date; and with several
//! balancers in front of the same backends, random choices do not herd onto the one that
//! looked least loaded to all of them at once.

use crate::fleet::backend::Backend;
use crate::fleet::select::schedule::Schedule;
use crate::fleet::select::{PickRequest, Selector, first_allowed, ramp_admits};
use std::cell::Cell;
use std::cmp::Ordering as CmpOrdering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Draws a pick makes before it looks at every member instead (when most are down or
/// tried).
const DRAWS: usize = 16;

#[derive(Debug)]
pub struct RandomTwo {
    schedule: Schedule,
}

impl RandomTwo {
    pub fn new(members: &[Arc<Backend>]) -> RandomTwo {
        let weights: Vec<u32> = members.iter().map(|b| b.weight()).collect();
        RandomTwo {
            schedule: Schedule::new(&weights),
        }
    }
}

impl Selector for RandomTwo {
    fn name(&self) -> &'static str {
        "random-two"
    }

    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let mut first: Option<usize> = None;
        let mut last = 0;
        for _ in 0..DRAWS {
            last = self.schedule.at(random());
            if !request.allows(&members[last]) || !ramp_admits(&members[last], request.now) {
                continue;
            }
            match first {
                None => first = Some(last),
                Some(a) => {
                    return Some(match members[last].compare_load(&members[a], request.now) {
                        CmpOrdering::Less => last,
                        _ => a,
                    });
                }
            }
        }
        first.or_else(|| first_allowed(members, last, request))
    }
}

/// Seeds the threads' generators apart from each other.
static SEEDS: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

thread_local! {
    static STATE: Cell<u64> = Cell::new({
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ salt) | 1
    });
}

/// A pseudo-random number from this thread's xorshift64* generator.
pub(crate) fn random() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::select::testing::{break_down, members, request};

    #[test]
    fn idle_backends_share_in_proportion_to_weight() {
        let m = members(&[1, 2, 5]);
        let p2c = RandomTwo::new(&m);
        let mut counts = [0u32; 3];
        for _ in 0..80_000 {
            counts[p2c.pick(&m, &request(&[])).expect("a backend")] += 1;
        }
        // Shares 1/8, 2/8, 5/8 of 80,000, within 5% (a ~10 sigma margin here).
        for (i, expected) in [10_000.0, 20_000.0, 50_000.0].iter().enumerate() {
            let got = f64::from(counts[i]);
            assert!(
                (got - expected).abs() < expected * 0.05,
                "backend {i}: {got} of 80,000 (expected about {expected}): {counts:?}"
            );
        }
    }

    #[test]
    fn the_less_loaded_of_the_two_wins() {
        // Two backends: both are drawn (or the same one twice) every pick; whenever they
        // differ, the idle one wins. A held session on each pick keeps them level.
        let m = members(&[1, 1]);
        let p2c = RandomTwo::new(&m);
        for _ in 0..1_000 {
            let i = p2c.pick(&m, &request(&[])).expect("a backend");
            m[i].acquire();
        }
        let (a, b) = (m[0].active(), m[1].active());
        assert_eq!(a + b, 1_000);
        assert!(a.abs_diff(b) <= 20, "{a} vs {b}");
        // Far more even than picking at random (which strays by ~30 here).
        let m = members(&[1; 8]);
        let p2c = RandomTwo::new(&m);
        for _ in 0..8_000 {
            let i = p2c.pick(&m, &request(&[])).expect("a backend");
            m[i].acquire();
        }
        let loads: Vec<u32> = m.iter().map(|b| b.active()).collect();
        let spread = loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);
        assert!(spread <= 10, "{loads:?}");
    }

    #[test]
    fn never_a_backend_that_is_down_or_tried() {
        let m = members(&[1, 1, 1, 1]);
        let p2c = RandomTwo::new(&m);
        break_down(&m[0]);
        for _ in 0..2_000 {
            let i = p2c.pick(&m, &request(&[2])).expect("a backend");
            assert!(i == 1 || i == 3, "picked {i}");
        }
        assert_eq!(p2c.pick(&m, &request(&[1, 2, 3])), None);
        let many = members(&[1; 1000]);
        let p2c = RandomTwo::new(&many);
        for b in &many[1..] {
            break_down(b);
        }
        for _ in 0..100 {
            assert_eq!(p2c.pick(&many, &request(&[])), Some(0));
        }
    }
}
