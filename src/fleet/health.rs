//! Whether a backend should get new sessions: a passive circuit breaker fed by real connects,
//! and the state of active health checks fed by probes. Pure state machines, plus their
//! atomic homes ([`SharedBreaker`], [`SharedChecks`]) so every worker and the prober see one
//! breaker and one check state per backend. Times are milliseconds since the process epoch
//! (`clock.rs`).
//!
//! ## Passive: the circuit breaker
//! ```text
//!        N connects fail in a row                 cool-down over
//!   Up ──────────────────────────► Down(until) ─────────────────► HalfOpen
//!    ▲                               ▲   ▲                           │ one trial session
//!    │ success                       │   └── trial fails: cool-down ─┤
//!    └───────────────────────────────┼────── doubled (capped) ───────┘
//!                                    │                               │ trial succeeds
//!                                    └───────────────────────────────┴──────────► Up
//! ```
//! `--max-fails 0` turns the breaker off. Failures count from every worker, and the one
//! half-open trial is one for the whole process: the state is one atomic word, changed by
//! compare-and-swap.
//!
//! ## Active: health checks
//! Every `--health-interval` a probe connects to the backend. `--fall` failures in a row mark
//! it down, `--rise` successes in a row mark it up. A backend starts up, so a restart of
//! tcplb does not hold traffic back until the first checks pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest a cool-down grows to by doubling.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);

pub use crate::config::policy::{BreakerPolicy, CheckPolicy};

/// The cool-down after `doublings` failed trials, in milliseconds.
fn cooldown_ms(policy: &BreakerPolicy, doublings: u32) -> u64 {
    let base = policy.fail_timeout.as_millis() as u64;
    let cap = (MAX_COOLDOWN.as_millis() as u64).max(base);
    base.saturating_mul(1u64 << doublings.min(40)).min(cap)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Up,
    /// No new sessions until `until` (ms); then one trial.
    Down {
        until: u64,
    },
    /// The cool-down is over: one trial session decides. `trial` = it is under way.
    HalfOpen {
        trial: bool,
    },
}

/// A change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentDown { cooldown: Duration, until: u64 },
    CameUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
    /// Failed connects in a row (saturates at 65535).
    fails: u32,
    /// Failed trials since the last success: the next cool-down is doubled this often.
    doublings: u32,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            state: BreakerState::Up,
            fails: 0,
            doublings: 0,
        }
    }
}

const MAX_FAILS_KEPT: u32 = 0xffff;
const MAX_DOUBLINGS: u32 = 31;
const MAX_UNTIL: u64 = (1 << 40) - 1;

impl Breaker {
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failed connects in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.fails
    }

    /// May a new session go there at `now`?
    pub fn allows(&self, now: u64) -> bool {
        match self.state {
            BreakerState::Up => true,
            BreakerState::Down { until } => now >= until,
            BreakerState::HalfOpen { trial } => !trial,
        }
    }

    /// When it will next allow a session (`now` if it does already): orders backends for
    /// failing open.
    pub fn allows_from(&self, now: u64, policy: BreakerPolicy) -> u64 {
        match self.state {
            BreakerState::Down { until } => until.max(now),
            // A trial under way: after the cool-down it would get if that trial fails.
            BreakerState::HalfOpen { trial: true } => now + cooldown_ms(&policy, self.doublings),
            _ => now,
        }
    }

    /// A session was given this backend. Returns true if that session is the one half-open
    /// trial. An attempt made while failing open (picked although down, because every
    /// backend is) is not a trial: its failure leaves the cool-down as it is, or a few
    /// clients during a fleet-wide outage would double every backend's cool-down again and
    /// again, and after the outage all but one would stay out for up to [`MAX_COOLDOWN`].
    pub fn on_pick(&mut self, now: u64) -> bool {
        match self.state {
            BreakerState::Up => false,
            BreakerState::Down { until } if now >= until => {
                self.state = BreakerState::HalfOpen { trial: true };
                true
            }
            BreakerState::HalfOpen { trial: false } => {
                self.state = BreakerState::HalfOpen { trial: true };
                true
            }
            // Failing open: picked although down (or while another session is the trial).
            BreakerState::Down { .. } | BreakerState::HalfOpen { trial: true } => false,
        }
    }

    /// A connect succeeded.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.fails = 0;
        self.doublings = 0;
        match self.state {
            BreakerState::Up => None,
            _ => {
                self.state = BreakerState::Up;
                Some(Transition::CameUp)
            }
        }
    }

    /// A connect failed (refused, reset, unreachable or timed out). `trial` says whether the
    /// session was a trial (see [`Breaker::on_pick`]); a connect that was already under way
    /// when the breaker opened changes nothing.
    pub fn on_failure(
        &mut self,
        now: u64,
        policy: BreakerPolicy,
        trial: bool,
    ) -> Option<Transition> {
        self.fails = (self.fails + 1).min(MAX_FAILS_KEPT);
        if policy.max_fails == 0 {
            return None;
        }
        match self.state {
            BreakerState::Up if self.fails < policy.max_fails.min(MAX_FAILS_KEPT) => None,
            BreakerState::Up => Some(self.open(now, policy)),
            // A trial failed: wait twice as long next time.
            BreakerState::HalfOpen { .. } | BreakerState::Down { .. } if trial => {
                self.doublings = (self.doublings + 1).min(MAX_DOUBLINGS);
                Some(self.open(now, policy))
            }
            BreakerState::HalfOpen { .. } | BreakerState::Down { .. } => None,
        }
    }

    fn open(&mut self, now: u64, policy: BreakerPolicy) -> Transition {
        let cooldown = cooldown_ms(&policy, self.doublings);
        let until = (now + cooldown).min(MAX_UNTIL);
        self.state = BreakerState::Down { until };
        Transition::WentDown {
            cooldown: Duration::from_millis(cooldown),
            until,
        }
    }

    /// The cool-down is over at `now`: half-open, waiting for its trial. `Down { until }`
    /// past `until` means the same to [`Breaker::allows`] and [`Breaker::on_pick`], but only
    /// in the eyes of a caller whose clock has reached `until`; written down, it holds for
    /// every thread, whatever its clock says (a worker whose turn began a moment earlier).
    pub fn end_cooldown(&mut self, now: u64) {
        if let BreakerState::Down { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen { trial: false };
            }
        }
    }

    /// The trial session ended without a connect outcome (cut by shutdown): let another try.
    pub fn on_trial_abandoned(&mut self) {
        if self.state == (BreakerState::HalfOpen { trial: true }) {
            self.state = BreakerState::HalfOpen { trial: false };
        }
    }

    /// Active checks say the backend accepts connects again: close the breaker.
    pub fn reset(&mut self) {
        *self = Breaker::default();
    }

    /// Packs into one word: state (2 bits), trial (1), doublings (5), fails (16), until (40).
    fn pack(self) -> u64 {
        let (tag, trial, until) = match self.state {
            BreakerState::Up => (0u64, 0u64, 0u64),
            BreakerState::Down { until } => (1, 0, until.min(MAX_UNTIL)),
            BreakerState::HalfOpen { trial } => (2, u64::from(trial), 0),
        };
        tag | trial << 2
            | u64::from(self.doublings.min(MAX_DOUBLINGS)) << 3
            | u64::from(self.fails.min(MAX_FAILS_KEPT)) << 8
            | until << 24
    }

    fn unpack(word: u64) -> Breaker {
        let state = match word & 3 {
            0 => BreakerState::Up,
            1 => BreakerState::Down { until: word >> 24 },
            _ => BreakerState::HalfOpen {
                trial: word & 4 != 0,
            },
        };
        Breaker {
            state,
            doublings: ((word >> 3) & 0x1f) as u32,
            fails: ((word >> 8) & 0xffff) as u32,
        }
    }
}

/// A breaker every worker reads and changes: one word, updated by compare-and-swap, so
/// exactly one session can become the half-open trial.
#[derive(Debug, Default)]
pub struct SharedBreaker(AtomicU64);

impl SharedBreaker {
    pub fn get(&self) -> Breaker {
        Breaker::unpack(self.0.load(Ordering::Acquire))
    }

    /// Applies `change` atomically and returns what it returned.
    pub fn update<R>(&self, mut change: impl FnMut(&mut Breaker) -> R) -> R {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let mut breaker = Breaker::unpack(current);
            let result = change(&mut breaker);
            let next = breaker.pack();
            if next == current {
                return result;
            }
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return result,
                Err(actual) => current = actual,
            }
        }
    }
}

/// What the active checks say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckState {
    up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
}

impl Default for CheckState {
    fn default() -> CheckState {
        CheckState {
            up: true,
            streak: 0,
        }
    }
}

impl CheckState {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Folds in one probe result; returns the new state if it flipped.
    pub fn record(&mut self, passed: bool, policy: &CheckPolicy) -> Option<bool> {
        if passed == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if passed { policy.rise } else { policy.fall };
        if self.streak >= needed.max(1) {
            self.up = passed;
            self.streak = 0;
            Some(passed)
        } else {
            None
        }
    }
}

/// A check state every worker reads; only the prober writes it.
#[derive(Debug)]
pub struct SharedChecks(AtomicU64);

impl Default for SharedChecks {
    fn default() -> SharedChecks {
        SharedChecks(AtomicU64::new(1))
    }
}

impl SharedChecks {
    pub fn get(&self) -> CheckState {
        let word = self.0.load(Ordering::Acquire);
        CheckState {
            up: word & 1 != 0,
            streak: (word >> 1) as u32,
        }
    }

    /// Folds in one probe result; returns the new state if it flipped.
    pub fn record(&self, passed: bool, policy: &CheckPolicy) -> Option<bool> {
        let mut state = self.get();
        let flipped = state.record(passed, policy);
        self.0.store(
            u64::from(state.up) | u64::from(state.streak) << 1,
            Ordering::Release,
        );
        flipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        max_fails: 3,
        fail_timeout: Duration::from_secs(10),
    };
    const S: u64 = 1000;

    #[test]
    fn opens_after_max_fails_in_a_row_and_a_success_resets_the_count() {
        let t0 = 5 * S;
        let mut b = Breaker::default();
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(b.on_success(), None);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(
            b.on_failure(t0, POLICY, false),
            Some(Transition::WentDown {
                cooldown: Duration::from_secs(10),
                until: t0 + 10 * S
            })
        );
        assert!(!b.allows(t0));
        assert!(!b.allows(t0 + 9 * S));
        assert!(b.allows(t0 + 10 * S));
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let t0 = 0;
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(t0, POLICY, false);
        }
        let later = t0 + 10 * S;
        assert!(
            b.on_pick(later),
            "the first pick after the cool-down is the trial"
        );
        assert_eq!(b.state(), BreakerState::HalfOpen { trial: true });
        assert!(!b.allows(later), "no second session while the trial runs");
        assert_eq!(b.on_success(), Some(Transition::CameUp));
        assert!(b.allows(later));
        assert!(!b.on_pick(later));
    }

    #[test]
    fn a_failed_trial_doubles_the_cooldown_up_to_the_cap() {
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(0, POLICY, false);
        }
        let mut now = 10 * S;
        let mut expected = Duration::from_secs(10);
        for _ in 0..8 {
            assert!(b.on_pick(now));
            expected = (expected * 2).min(MAX_COOLDOWN);
            let until = now + expected.as_millis() as u64;
            assert_eq!(
                b.on_failure(now, POLICY, true),
                Some(Transition::WentDown {
                    cooldown: expected,
                    until
                })
            );
            assert!(!b.allows(until - 1));
            now = until;
            assert!(b.allows(now));
        }
        assert_eq!(expected, MAX_COOLDOWN);
        // Recovery resets the cool-down to the configured one.
        assert!(b.on_pick(now));
        assert_eq!(b.on_success(), Some(Transition::CameUp));
        for _ in 0..3 {
            b.on_failure(now, POLICY, true);
        }
        assert_eq!(b.allows_from(now, POLICY), now + 10 * S);
    }

    #[test]
    fn connects_already_under_way_when_it_opens_do_not_stretch_the_cooldown() {
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(0, POLICY, false);
        }
        for _ in 0..7 {
            assert_eq!(b.on_failure(0, POLICY, false), None);
        }
        assert!(b.allows(10 * S));
    }

    #[test]
    fn failing_open_is_not_a_trial_and_does_not_stretch_the_cooldown() {
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(0, POLICY, false);
        }
        let soon = S;
        for _ in 0..5 {
            assert!(!b.on_pick(soon), "picked while down: every backend is down");
            assert_eq!(b.on_failure(soon, POLICY, false), None);
        }
        assert_eq!(b.allows_from(soon, POLICY), 10 * S);
        // The real trial after the cool-down still doubles it when it fails.
        let later = 10 * S;
        assert!(b.on_pick(later));
        assert_eq!(
            b.on_failure(later, POLICY, true),
            Some(Transition::WentDown {
                cooldown: Duration::from_secs(20),
                until: later + 20 * S
            })
        );
        // A fail-open attempt that succeeds brings it up.
        assert!(!b.on_pick(later));
        assert_eq!(b.on_success(), Some(Transition::CameUp));
    }

    #[test]
    fn an_abandoned_trial_lets_another_one_try() {
        let mut b = Breaker::default();
        for _ in 0..3 {
            b.on_failure(0, POLICY, false);
        }
        let later = 11 * S;
        assert!(b.on_pick(later));
        b.on_trial_abandoned();
        assert!(b.allows(later));
        assert!(b.on_pick(later));
    }

    #[test]
    fn max_fails_zero_never_opens() {
        let off = BreakerPolicy {
            max_fails: 0,
            ..POLICY
        };
        let mut b = Breaker::default();
        for _ in 0..100 {
            assert_eq!(b.on_failure(0, off, false), None);
        }
        assert!(b.allows(0));
    }

    #[test]
    fn packing_keeps_every_field() {
        let cases = [
            Breaker::default(),
            Breaker {
                state: BreakerState::Down {
                    until: 123_456_789_012,
                },
                fails: 70_000,
                doublings: 5,
            },
            Breaker {
                state: BreakerState::HalfOpen { trial: true },
                fails: 3,
                doublings: 31,
            },
            Breaker {
                state: BreakerState::HalfOpen { trial: false },
                fails: 0,
                doublings: 0,
            },
        ];
        for b in cases {
            let mut expected = b;
            expected.fails = expected.fails.min(MAX_FAILS_KEPT);
            assert_eq!(Breaker::unpack(b.pack()), expected);
        }
    }

    #[test]
    fn one_trial_across_threads() {
        let shared = std::sync::Arc::new(SharedBreaker::default());
        for _ in 0..3 {
            shared.update(|b| b.on_failure(0, POLICY, false));
        }
        let trials: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let shared = &shared;
                    s.spawn(move || {
                        (0..1000)
                            .filter(|_| shared.update(|b| b.on_pick(10 * S)))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(trials, 1, "exactly one trial whatever the threads");
    }

    #[test]
    fn checks_flip_after_rise_or_fall_in_a_row() {
        let policy = &CheckPolicy::connect(Duration::from_secs(1), 2, 3, Duration::from_secs(3));
        let c = SharedChecks::default();
        assert!(c.get().is_up());
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(true, policy), None, "a pass breaks the streak");
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(false, policy), Some(false));
        assert!(!c.get().is_up());
        assert_eq!(c.record(true, policy), None);
        assert_eq!(c.record(true, policy), Some(true));
        assert!(c.get().is_up());
    }
}
