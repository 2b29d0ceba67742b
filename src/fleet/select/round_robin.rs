//! `round-robin`: smooth weighted round robin, shared by every worker.
//!
//! The turns of one cycle are computed when the generation is built ([`Schedule`]); a pick
//! takes the next turn with one atomic `fetch_add` on a shared cursor, so every worker
//! walks the same cycle and the whole process hands out turns in order. A turn whose
//! backend does not take sessions (or was tried for this client) is passed, and the next
//! turn taken, as if that backend were not in the cycle: its share goes to the others in
//! their proportions; a backend on its slow-start ramp takes its turn with the
//! probability of its ramp. Load is not looked at: use it for backends that are alike and
//! sessions that cost about the same.

use crate::fleet::backend::Backend;
use crate::fleet::select::schedule::Schedule;
use crate::fleet::select::{PickRequest, Selector, first_allowed, ramp_admits};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Turns a pick takes from the cursor before it looks at every member instead.
const PROBES: usize = 16;

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Schedule,
    cursor: AtomicU64,
}

impl RoundRobin {
    pub fn new(members: &[Arc<Backend>]) -> RoundRobin {
        let weights: Vec<u32> = members.iter().map(|b| b.weight()).collect();
        RoundRobin {
            schedule: Schedule::new(&weights),
            cursor: AtomicU64::new(0),
        }
    }
}

impl Selector for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let mut turn = 0;
        for _ in 0..PROBES {
            turn = self.cursor.fetch_add(1, Ordering::Relaxed);
            let i = self.schedule.at(turn);
            if request.allows(&members[i]) && ramp_admits(&members[i], request.now) {
                return Some(i);
            }
        }
        first_allowed(members, self.schedule.at(turn), request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::select::testing::{break_down, bring_up, members, request};

    fn picks(rr: &RoundRobin, m: &[Arc<Backend>], n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| rr.pick(m, &request(&[])).expect("a backend"))
            .collect()
    }

    #[test]
    fn turns_go_round_in_proportion_to_weight() {
        let m = members(&[1, 1, 1]);
        let rr = RoundRobin::new(&m);
        assert_eq!(picks(&rr, &m, 7), [0, 1, 2, 0, 1, 2, 0]);
        let m = members(&[5, 1, 1]);
        let rr = RoundRobin::new(&m);
        assert_eq!(
            picks(&rr, &m, 14),
            [0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 1, 2, 0, 0]
        );
    }

    #[test]
    fn load_does_not_matter() {
        let m = members(&[1, 1]);
        let rr = RoundRobin::new(&m);
        for _ in 0..10 {
            m[0].acquire();
        }
        assert_eq!(picks(&rr, &m, 4), [0, 1, 0, 1]);
    }

    #[test]
    fn a_backend_that_does_not_take_sessions_or_was_tried_is_passed() {
        let m = members(&[1, 1, 1]);
        let rr = RoundRobin::new(&m);
        break_down(&m[1]);
        assert_eq!(picks(&rr, &m, 4), [0, 2, 0, 2]);
        assert_eq!(rr.pick(&m, &request(&[0])), Some(2));
        assert_eq!(rr.pick(&m, &request(&[0, 2])), None);
        bring_up(&m[1]);
        assert!(picks(&rr, &m, 3).contains(&1));
        // Everyone down but the last: found past the probes too.
        let many = members(&[1; 100]);
        let rr = RoundRobin::new(&many);
        for b in &many[..99] {
            break_down(b);
        }
        assert_eq!(picks(&rr, &many, 3), [99, 99, 99]);
    }

    #[test]
    fn concurrent_workers_share_one_cycle() {
        let m = members(&[3, 2, 1]);
        let rr = RoundRobin::new(&m);
        let counts: Vec<[usize; 3]> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut counts = [0; 3];
                        for _ in 0..6_000 {
                            counts[rr.pick(&m, &request(&[])).expect("a backend")] += 1;
                        }
                        counts
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let total = counts.iter().fold([0; 3], |acc, c| {
            [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2]]
        });
        // 24,000 turns = 4,000 whole cycles of 3 + 2 + 1: exact shares.
        assert_eq!(total, [12_000, 8_000, 4_000]);
    }
}
