//! Whether a backend should get new sessions: a passive circuit breaker fed by real connects,
//! and the state of active health checks fed by probes. Pure state machines, no I/O; the
//! probes themselves live in `probe.rs`.
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
//! `--max-fails 0` turns the breaker off.
//!
//! ## Active: health checks
//! Every `--health-interval` a probe connects to the backend. `--fall` failures in a row mark
//! it down, `--rise` successes in a row mark it up. A backend starts up, so a restart of
//! tcplb does not hold traffic back until the first checks pass.
//!
//! ## Combined
//! A backend takes new sessions when its checks say up (or checks are off) *and* its breaker
//! allows. Checks coming back up close the breaker too: the probe has just shown that connects
//! succeed.

use std::time::{Duration, Instant};

/// The longest a cool-down grows to by doubling.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(300);

/// Breaker settings, from `--max-fails` and `--fail-timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed connects in a row that open the breaker; 0 = never.
    pub max_fails: u32,
    /// First cool-down.
    pub fail_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Up,
    /// No new sessions until `until`; then one trial.
    Down {
        until: Instant,
    },
    /// The cool-down is over: one trial session decides. `trial` = it is under way.
    HalfOpen {
        trial: bool,
    },
}

/// A change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentDown { cooldown: Duration },
    CameUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
    /// Failed connects in a row.
    fails: u32,
    /// The cool-down the next opening uses.
    cooldown: Duration,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            state: BreakerState::Up,
            fails: 0,
            cooldown: policy.fail_timeout,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failed connects in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.fails
    }

    /// May a new session go there now?
    pub fn allows(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Up => true,
            BreakerState::Down { until } => now >= until,
            BreakerState::HalfOpen { trial } => !trial,
        }
    }

    /// When it will next allow a session (`now` if it does already): orders backends for
    /// failing open.
    pub fn allows_from(&self, now: Instant) -> Instant {
        match self.state {
            BreakerState::Down { until } => until.max(now),
            // A trial under way: after the cool-down it would get if that trial fails.
            BreakerState::HalfOpen { trial: true } => now + self.cooldown,
            _ => now,
        }
    }

    /// A session was given this backend. Returns true if that session is the one half-open
    /// trial. An attempt made while failing open (picked although down, because every
    /// backend is) is not a trial: its failure leaves the cool-down as it is, or a few
    /// clients during a fleet-wide outage would double every backend's cool-down again and
    /// again, and after the outage all but one would stay out for up to [`MAX_COOLDOWN`].
    pub fn on_pick(&mut self, now: Instant) -> bool {
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
    pub fn on_success(&mut self, policy: BreakerPolicy) -> Option<Transition> {
        self.fails = 0;
        self.cooldown = policy.fail_timeout;
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
        now: Instant,
        policy: BreakerPolicy,
        trial: bool,
    ) -> Option<Transition> {
        self.fails = self.fails.saturating_add(1);
        if policy.max_fails == 0 {
            return None;
        }
        match self.state {
            BreakerState::Up if self.fails < policy.max_fails => None,
            BreakerState::Up => Some(self.open(now)),
            // A trial failed: wait twice as long next time.
            BreakerState::HalfOpen { .. } | BreakerState::Down { .. } if trial => {
                self.cooldown = (self.cooldown * 2).min(MAX_COOLDOWN.max(policy.fail_timeout));
                Some(self.open(now))
            }
            BreakerState::HalfOpen { .. } | BreakerState::Down { .. } => None,
        }
    }

    fn open(&mut self, now: Instant) -> Transition {
        self.state = BreakerState::Down {
            until: now + self.cooldown,
        };
        Transition::WentDown {
            cooldown: self.cooldown,
        }
    }

    /// The trial session ended without a connect outcome (cut by shutdown): let another try.
    pub fn on_trial_abandoned(&mut self) {
        if self.state == (BreakerState::HalfOpen { trial: true }) {
            self.state = BreakerState::HalfOpen { trial: false };
        }
    }

    /// Active checks say the backend accepts connects again: close the breaker.
    pub fn reset(&mut self, policy: BreakerPolicy) {
        *self = Breaker::new(policy);
    }
}

/// Active check settings, from `--health-interval`, `--rise` and `--fall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckPolicy {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
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
    pub fn record(&mut self, passed: bool, policy: CheckPolicy) -> Option<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        max_fails: 3,
        fail_timeout: Duration::from_secs(10),
    };

    #[test]
    fn opens_after_max_fails_in_a_row_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(b.on_success(POLICY), None);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(b.on_failure(t0, POLICY, false), None);
        assert_eq!(
            b.on_failure(t0, POLICY, false),
            Some(Transition::WentDown {
                cooldown: Duration::from_secs(10)
            })
        );
        assert!(!b.allows(t0));
        assert!(!b.allows(t0 + Duration::from_secs(9)));
        assert!(b.allows(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY);
        for _ in 0..3 {
            b.on_failure(t0, POLICY, false);
        }
        let later = t0 + Duration::from_secs(10);
        assert!(
            b.on_pick(later),
            "the first pick after the cool-down is the trial"
        );
        assert_eq!(b.state(), BreakerState::HalfOpen { trial: true });
        assert!(!b.allows(later), "no second session while the trial runs");
        assert_eq!(b.on_success(POLICY), Some(Transition::CameUp));
        assert!(b.allows(later));
        assert!(!b.on_pick(later));
    }

    #[test]
    fn a_failed_trial_doubles_the_cooldown_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY);
        for _ in 0..3 {
            b.on_failure(t0, POLICY, false);
        }
        let mut now = t0 + Duration::from_secs(10);
        let mut expected = Duration::from_secs(10);
        for _ in 0..8 {
            assert!(b.on_pick(now));
            expected = (expected * 2).min(MAX_COOLDOWN);
            assert_eq!(
                b.on_failure(now, POLICY, true),
                Some(Transition::WentDown { cooldown: expected })
            );
            assert!(!b.allows(now + expected - Duration::from_millis(1)));
            now += expected;
            assert!(b.allows(now));
        }
        assert_eq!(expected, MAX_COOLDOWN);
        // Recovery resets the cool-down to the configured one.
        assert!(b.on_pick(now));
        assert_eq!(b.on_success(POLICY), Some(Transition::CameUp));
        for _ in 0..3 {
            b.on_failure(now, POLICY, true);
        }
        assert_eq!(b.allows_from(now), now + Duration::from_secs(10));
    }

    #[test]
    fn connects_already_under_way_when_it_opens_do_not_stretch_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY);
        for _ in 0..3 {
            b.on_failure(t0, POLICY, false);
        }
        for _ in 0..7 {
            assert_eq!(b.on_failure(t0, POLICY, false), None);
        }
        assert!(b.allows(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn failing_open_is_not_a_trial_and_does_not_stretch_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY);
        for _ in 0..3 {
            b.on_failure(t0, POLICY, false);
        }
        let soon = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(!b.on_pick(soon), "picked while down: every backend is down");
            assert_eq!(b.on_failure(soon, POLICY, false), None);
        }
        assert_eq!(b.allows_from(soon), t0 + Duration::from_secs(10));
        // The real trial after the cool-down still doubles it when it fails.
        let later = t0 + Duration::from_secs(10);
        assert!(b.on_pick(later));
        assert_eq!(
            b.on_failure(later, POLICY, true),
            Some(Transition::WentDown {
                cooldown: Duration::from_secs(20)
            })
        );
        // A fail-open attempt that succeeds brings it up.
        assert!(!b.on_pick(later));
        assert_eq!(b.on_success(POLICY), Some(Transition::CameUp));
    }

    #[test]
    fn an_abandoned_trial_lets_another_one_try() {
        let t0 = Instant::now();
        let mut b = Breaker::new(POLICY);
        for _ in 0..3 {
            b.on_failure(t0, POLICY, false);
        }
        let later = t0 + Duration::from_secs(11);
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
        let t0 = Instant::now();
        let mut b = Breaker::new(off);
        for _ in 0..100 {
            assert_eq!(b.on_failure(t0, off, false), None);
        }
        assert!(b.allows(t0));
    }

    #[test]
    fn checks_flip_after_rise_or_fall_in_a_row() {
        let policy = CheckPolicy {
            interval: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let mut c = CheckState::default();
        assert!(c.is_up());
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(true, policy), None, "a pass breaks the streak");
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(false, policy), None);
        assert_eq!(c.record(false, policy), Some(false));
        assert!(!c.is_up());
        assert_eq!(c.record(true, policy), None);
        assert_eq!(c.record(true, policy), Some(true));
        assert!(c.is_up());
    }
}
