//! The backend set, least-active selection, and each backend's counters and health.
//!
//! Each [`Backend`] counts its active sessions (connecting ones included). [`Balancer::pick`]
//! chooses, among the backends that may take a session, the lowest `active / weight`,
//! compared by cross-multiplying so no division is done; among equals it rotates by smooth
//! weighted round-robin (as nginx's `least_conn` does), so equal backends take turns and
//! weighted ones share in proportion even at low load.
//!
//! Who may take a session: primaries that are up (health checks and circuit breaker, see
//! `health.rs`); if none is, backups that are up; if none is either, the backend whose
//! cool-down ends soonest (fail open: a whole-fleet blip must not become an outage).
//!
//! The count is taken and released by one RAII [`Lease`]: whichever way a session ends, the
//! lease is dropped exactly once and the count goes back down.
//!
//! The set can change while running ([`Balancer::apply`]): new backends take traffic at once,
//! removed ones get no new sessions and drain (their `Rc` lives on in their sessions' leases),
//! unchanged ones keep their counters and state.

use crate::health::{Breaker, BreakerPolicy, BreakerState, CheckPolicy, CheckState, Transition};
use crate::logging::{Throttle, suppressed_note};
use log::{info, warn};
use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// A backend as configured and resolved: the input to [`Balancer::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBackend {
    pub addr: SocketAddr,
    /// What the user wrote (`host:port`), for logs.
    pub name: String,
    pub weight: u32,
    pub backup: bool,
}

/// One backend address and its live state. Shared (`Rc`) between the balancer and the
/// leases of its sessions, so a backend removed from the set lives on while it drains.
#[derive(Debug)]
pub struct Backend {
    /// Stable for the life of the process; never reused.
    pub id: u32,
    pub addr: SocketAddr,
    pub name: String,
    weight: Cell<u32>,
    backup: Cell<bool>,
    active: Cell<u32>,
    /// Smooth weighted round-robin state for breaking ties.
    current_weight: Cell<i64>,
    breaker: Cell<Breaker>,
    checks: Cell<CheckState>,
    /// Taken out of the set: draining its last sessions.
    removed: Cell<bool>,
    /// A health check probe is under way.
    probing: Cell<bool>,
    pub stats: BackendStats,
    /// Keeps a burst of connect failures down to one warning.
    pub warn_throttle: Throttle,
}

/// Counters per backend, bumped on the reactor thread.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Sessions whose connect succeeded.
    pub sessions: Cell<u64>,
    pub connect_failures: Cell<u64>,
    /// Bytes written to the backend.
    pub bytes_sent: Cell<u64>,
    /// Bytes read from the backend.
    pub bytes_received: Cell<u64>,
}

/// Adds to a counter.
pub fn bump(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get().wrapping_add(n));
}

impl Backend {
    fn new(id: u32, spec: &ResolvedBackend, policy: BreakerPolicy) -> Backend {
        Backend {
            id,
            addr: spec.addr,
            name: spec.name.clone(),
            weight: Cell::new(spec.weight.max(1)),
            backup: Cell::new(spec.backup),
            active: Cell::new(0),
            current_weight: Cell::new(0),
            breaker: Cell::new(Breaker::new(policy)),
            checks: Cell::new(CheckState::default()),
            removed: Cell::new(false),
            probing: Cell::new(false),
            stats: BackendStats::default(),
            warn_throttle: Throttle::default(),
        }
    }

    /// Sessions on this backend right now, connecting ones included.
    pub fn active(&self) -> u32 {
        self.active.get()
    }

    pub fn weight(&self) -> u32 {
        self.weight.get()
    }

    pub fn is_backup(&self) -> bool {
        self.backup.get()
    }

    /// Removed from the set and draining.
    pub fn is_removed(&self) -> bool {
        self.removed.get()
    }

    /// A health check probe is under way.
    pub fn is_probing(&self) -> bool {
        self.probing.get()
    }

    pub fn set_probing(&self, probing: bool) {
        self.probing.set(probing);
    }

    pub fn breaker(&self) -> Breaker {
        self.breaker.get()
    }

    /// What the active health checks say (up when checks are off).
    pub fn checks_up(&self) -> bool {
        self.checks.get().is_up()
    }

    /// Up: health checks pass and the circuit breaker is closed.
    pub fn is_up(&self) -> bool {
        self.checks_up() && self.breaker().state() == BreakerState::Up
    }

    /// May take a new session now (before failing open).
    fn eligible(&self, now: Instant) -> bool {
        self.checks_up() && self.breaker().allows(now)
    }

    /// `self.active / self.weight < other.active / other.weight`, without dividing.
    fn less_loaded_than(&self, other: &Backend) -> bool {
        u64::from(self.active()) * u64::from(other.weight())
            < u64::from(other.active()) * u64::from(self.weight())
    }

    fn equally_loaded(&self, other: &Backend) -> bool {
        u64::from(self.active()) * u64::from(other.weight())
            == u64::from(other.active()) * u64::from(self.weight())
    }

    fn update_breaker(
        &self,
        change: impl FnOnce(&mut Breaker) -> Option<Transition>,
    ) -> Option<Transition> {
        let mut breaker = self.breaker.get();
        let transition = change(&mut breaker);
        self.breaker.set(breaker);
        transition
    }
}

impl fmt::Display for Backend {
    /// The address, followed by the name the user gave when that differs (`10.0.0.5:80
    /// (web.internal:80)`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name == self.addr.to_string() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.addr, self.name)
        }
    }
}

/// One session's hold on a backend: counts it active until dropped.
#[derive(Debug)]
pub struct Lease {
    backend: Rc<Backend>,
    /// This session is the breaker's trial and its connect has no outcome yet.
    trial: bool,
}

impl Lease {
    fn new(backend: Rc<Backend>, trial: bool) -> Lease {
        backend.active.set(backend.active.get() + 1);
        Lease { backend, trial }
    }

    pub fn backend(&self) -> &Rc<Backend> {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let active = &self.backend.active;
        active.set(active.get() - 1);
        if self.trial {
            self.backend.update_breaker(|b| {
                b.on_trial_abandoned();
                None
            });
        }
    }
}

/// What [`Balancer::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
}

/// The backend set.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<Rc<Backend>>,
    /// Removed backends that still have sessions.
    draining: Vec<Rc<Backend>>,
    next_id: u32,
    breaker_policy: BreakerPolicy,
    check_policy: Option<CheckPolicy>,
    fail_open_throttle: Throttle,
}

impl Balancer {
    /// A balancer over `initial` (duplicate addresses are taken once).
    pub fn new(
        breaker_policy: BreakerPolicy,
        check_policy: Option<CheckPolicy>,
        initial: &[ResolvedBackend],
    ) -> Balancer {
        let mut backends: Vec<Rc<Backend>> = Vec::with_capacity(initial.len());
        for spec in initial {
            if !backends.iter().any(|b| b.addr == spec.addr) {
                let id = backends.len() as u32;
                backends.push(Rc::new(Backend::new(id, spec, breaker_policy)));
            }
        }
        Balancer {
            next_id: backends.len() as u32,
            backends,
            draining: Vec::new(),
            breaker_policy,
            check_policy,
            fail_open_throttle: Throttle::default(),
        }
    }

    /// The backends in the set.
    pub fn backends(&self) -> &[Rc<Backend>] {
        &self.backends
    }

    /// Removed backends still draining sessions.
    pub fn draining(&mut self) -> &[Rc<Backend>] {
        self.draining.retain(|b| b.active() > 0);
        &self.draining
    }

    pub fn check_policy(&self) -> Option<CheckPolicy> {
        self.check_policy
    }

    /// Whether any backend would take a new session now without failing open: health
    /// checks pass and the breaker allows (closed, or cooled down and ready for its trial).
    /// What `/healthz` reports: counting only closed breakers would keep a readiness probe
    /// at 503 after a blip until some client came to make the trial — which the 503 stops.
    pub fn any_available(&self, now: Instant) -> bool {
        self.backends.iter().any(|b| b.eligible(now))
    }

    /// Makes the set exactly `wanted` (keyed by address; a duplicate address is taken once).
    /// Backends already there keep their counters and health, taking the new weight and
    /// backup flag; new ones take traffic at once; missing ones stop getting sessions and
    /// drain.
    pub fn apply(&mut self, wanted: &[ResolvedBackend]) -> Changes {
        let mut changes = Changes::default();
        let mut next: Vec<Rc<Backend>> = Vec::with_capacity(wanted.len());
        for spec in wanted {
            if next.iter().any(|b| b.addr == spec.addr) {
                continue;
            }
            let kept = self.backends.iter().position(|b| b.addr == spec.addr);
            let revived = self.draining.iter().position(|b| b.addr == spec.addr);
            let backend = match (kept, revived) {
                (Some(i), _) => self.backends.remove(i),
                (None, Some(i)) => {
                    let b = self.draining.remove(i);
                    b.removed.set(false);
                    info!("backend {b} is back in the set");
                    changes.added += 1;
                    b
                }
                (None, None) => {
                    let b = Rc::new(Backend::new(self.next_id, spec, self.breaker_policy));
                    self.next_id += 1;
                    info!(
                        "backend {b} added (weight {}{})",
                        spec.weight,
                        backup_note(spec.backup)
                    );
                    changes.added += 1;
                    next.push(b);
                    continue;
                }
            };
            if backend.weight() != spec.weight.max(1) || backend.is_backup() != spec.backup {
                info!(
                    "backend {backend}: weight {}{} now weight {}{}",
                    backend.weight(),
                    backup_note(backend.is_backup()),
                    spec.weight,
                    backup_note(spec.backup)
                );
                backend.weight.set(spec.weight.max(1));
                backend.backup.set(spec.backup);
                changes.updated += 1;
            }
            next.push(backend);
        }
        for gone in std::mem::replace(&mut self.backends, next) {
            gone.removed.set(true);
            changes.removed += 1;
            info!(
                "backend {gone} removed; {} sessions left to drain",
                gone.active()
            );
            self.draining.push(gone);
        }
        self.draining.retain(|b| b.active() > 0);
        changes
    }

    /// Leases the backend that should take a new session, never one in `tried`; `None` if
    /// no backend is left to try.
    pub fn pick(&self, now: Instant, tried: &[u32]) -> Option<Lease> {
        let untried = |b: &&Rc<Backend>| !tried.contains(&b.id);
        let eligible = |b: &&Rc<Backend>| b.eligible(now);
        let primaries = || {
            self.backends
                .iter()
                .filter(untried)
                .filter(eligible)
                .filter(|b| !b.is_backup())
        };
        let backups = || {
            self.backends
                .iter()
                .filter(untried)
                .filter(eligible)
                .filter(|b| b.is_backup())
        };
        if let Some(chosen) = least_active(primaries).or_else(|| least_active(backups)) {
            let trial = {
                let mut breaker = chosen.breaker.get();
                let trial = breaker.on_pick(now);
                chosen.breaker.set(breaker);
                trial
            };
            return Some(Lease::new(Rc::clone(chosen), trial));
        }
        // Failing open is never the breaker's trial: its outcome only counts if it succeeds.
        self.fail_open(now, tried)
            .map(|chosen| Lease::new(Rc::clone(chosen), false))
    }

    /// Every untried backend is down: one the health checks still pass if any, and among
    /// those the one whose breaker allows a session soonest.
    fn fail_open(&self, now: Instant, tried: &[u32]) -> Option<&Rc<Backend>> {
        let chosen = self
            .backends
            .iter()
            .filter(|b| !tried.contains(&b.id))
            .min_by(|a, b| {
                let (a_at, b_at) = (a.breaker().allows_from(now), b.breaker().allows_from(now));
                b.checks_up()
                    .cmp(&a.checks_up())
                    .then_with(|| a_at.cmp(&b_at))
                    .then_with(|| a.active().cmp(&b.active()))
            })?;
        if let Some(n) = self.fail_open_throttle.allow(now) {
            warn!(
                "every backend is down; trying {chosen}, the first due back{}",
                suppressed_note(n)
            );
        }
        Some(chosen)
    }

    /// The lease's connect succeeded.
    pub fn connect_succeeded(&self, lease: &mut Lease) {
        lease.trial = false;
        let backend = &lease.backend;
        bump(&backend.stats.sessions, 1);
        if let Some(Transition::CameUp) =
            backend.update_breaker(|b| b.on_success(self.breaker_policy))
        {
            info!("backend {backend} is up again: a connect succeeded");
        }
    }

    /// The lease's connect failed (refused, reset, unreachable, timed out).
    pub fn connect_failed(&self, lease: &mut Lease, now: Instant, error: &io::Error) {
        let trial = std::mem::replace(&mut lease.trial, false);
        let backend = &lease.backend;
        bump(&backend.stats.connect_failures, 1);
        let transition = backend.update_breaker(|b| b.on_failure(now, self.breaker_policy, trial));
        if let Some(Transition::WentDown { cooldown }) = transition {
            warn!(
                "backend {backend} is down: {} connects failed in a row (last: {error}); \
                 next try in {cooldown:?}",
                backend.breaker().consecutive_failures()
            );
        } else if let Some(n) = backend.warn_throttle.allow(now) {
            warn!(
                "backend {backend}: connect failed: {error}{}",
                suppressed_note(n)
            );
        }
    }

    /// Folds in an active probe's result.
    pub fn probe_result(&self, backend: &Backend, result: &io::Result<()>) {
        let Some(policy) = self.check_policy else {
            return;
        };
        let mut checks = backend.checks.get();
        let flipped = checks.record(result.is_ok(), policy);
        backend.checks.set(checks);
        // A passing probe while the checks say up has just shown connects succeed: close a
        // breaker opened meanwhile by failing clients, without waiting for a client's trial.
        let breaker_open = backend.breaker().state() != BreakerState::Up;
        match (flipped, result) {
            (Some(true), _) => {
                backend.update_breaker(|b| {
                    b.reset(self.breaker_policy);
                    None
                });
                info!(
                    "backend {backend} is up: {} health checks passed in a row",
                    policy.rise
                );
            }
            (None, Ok(())) if checks.is_up() && breaker_open => {
                backend.update_breaker(|b| {
                    b.reset(self.breaker_policy);
                    None
                });
                info!("backend {backend} is up again: a health check connected");
            }
            (Some(false), Err(e)) => warn!(
                "backend {backend} is down: {} health checks failed in a row (last: {e})",
                policy.fall
            ),
            _ => {}
        }
    }
}

fn backup_note(backup: bool) -> &'static str {
    if backup { ", backup" } else { "" }
}

/// The lowest `active / weight` among `candidates`; ties broken by smooth weighted
/// round-robin. Two passes, no allocation.
fn least_active<'a, I>(candidates: impl Fn() -> I) -> Option<&'a Rc<Backend>>
where
    I: Iterator<Item = &'a Rc<Backend>>,
{
    let mut least = None::<&Rc<Backend>>;
    for b in candidates() {
        if least.is_none_or(|l| b.less_loaded_than(l)) {
            least = Some(b);
        }
    }
    let least = least?;
    let mut total = 0i64;
    let mut chosen = least;
    for b in candidates().filter(|b| b.equally_loaded(least)) {
        let w = i64::from(b.weight());
        b.current_weight.set(b.current_weight.get() + w);
        total += w;
        if b.current_weight.get() > chosen.current_weight.get() {
            chosen = b;
        }
    }
    chosen
        .current_weight
        .set(chosen.current_weight.get() - total);
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const POLICY: BreakerPolicy = BreakerPolicy {
        max_fails: 2,
        fail_timeout: Duration::from_secs(10),
    };

    fn spec(port: u16, weight: u32, backup: bool) -> ResolvedBackend {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        ResolvedBackend {
            addr,
            name: addr.to_string(),
            weight,
            backup,
        }
    }

    fn balancer(weights: &[u32]) -> Balancer {
        let specs: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| spec(1000 + i as u16, w, false))
            .collect();
        Balancer::new(POLICY, None, &specs)
    }

    fn pick_id(b: &Balancer, leases: &mut Vec<Lease>) -> u32 {
        let lease = b.pick(Instant::now(), &[]).expect("a backend");
        let id = lease.backend().id;
        leases.push(lease);
        id
    }

    fn refused() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionRefused)
    }

    #[test]
    fn equal_backends_take_turns_at_low_load() {
        let b = balancer(&[1, 1, 1]);
        let seen: Vec<u32> = (0..9)
            .map(|_| b.pick(Instant::now(), &[]).expect("a backend").backend().id)
            .collect();
        assert_eq!(seen, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert!(b.backends().iter().all(|x| x.active() == 0));
    }

    #[test]
    fn least_active_wins() {
        let b = balancer(&[1, 1, 1]);
        let mut held = Vec::new();
        for _ in 0..9 {
            pick_id(&b, &mut held);
        }
        assert_eq!(
            b.backends().iter().map(|x| x.active()).collect::<Vec<_>>(),
            [3, 3, 3]
        );
        // Free two sessions on backend 1: the next two picks must go there.
        let mut freed = 0;
        held.retain(|l| {
            let keep = !(l.backend().id == 1 && freed < 2);
            if !keep {
                freed += 1;
            }
            keep
        });
        assert_eq!(pick_id(&b, &mut held), 1);
        assert_eq!(pick_id(&b, &mut held), 1);
    }

    #[test]
    fn weights_share_in_proportion_under_load_and_when_idle() {
        let b = balancer(&[1, 2, 3]);
        let mut held = Vec::new();
        for _ in 0..60 {
            pick_id(&b, &mut held);
        }
        assert_eq!(
            b.backends().iter().map(|x| x.active()).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        drop(held);
        let mut counts = [0; 3];
        for _ in 0..600 {
            let lease = b.pick(Instant::now(), &[]).expect("a backend");
            counts[lease.backend().id as usize] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn tried_backends_are_skipped() {
        let b = balancer(&[1, 1, 1]);
        let lease = b.pick(Instant::now(), &[0, 2]).expect("backend 1 is left");
        assert_eq!(lease.backend().id, 1);
        assert!(b.pick(Instant::now(), &[0, 1, 2]).is_none());
    }

    #[test]
    fn lease_counts_exactly_once() {
        let b = balancer(&[1]);
        let l1 = b.pick(Instant::now(), &[]).expect("a backend");
        let l2 = b.pick(Instant::now(), &[]).expect("a backend");
        assert_eq!(b.backends()[0].active(), 2);
        drop(l1);
        assert_eq!(b.backends()[0].active(), 1);
        drop(l2);
        assert_eq!(b.backends()[0].active(), 0);
    }

    #[test]
    fn no_backends_no_pick() {
        assert!(
            Balancer::new(POLICY, None, &[])
                .pick(Instant::now(), &[])
                .is_none()
        );
    }

    #[test]
    fn a_down_backend_gets_nothing_until_its_trial() {
        let b = balancer(&[1, 1]);
        let t0 = Instant::now();
        for _ in 0..2 {
            let mut lease = b.pick(t0, &[1]).expect("backend 0");
            b.connect_failed(&mut lease, t0, &refused());
        }
        assert!(!b.backends()[0].is_up());
        for _ in 0..10 {
            assert_eq!(b.pick(t0, &[]).expect("backend 1").backend().id, 1);
        }
        // After the cool-down: exactly one trial goes to backend 0.
        let later = t0 + Duration::from_secs(10);
        let mut trial = b.pick(later, &[1]).expect("the trial");
        assert_eq!(trial.backend().id, 0);
        let meanwhile: Vec<u32> = (0..5)
            .map(|_| b.pick(later, &[]).expect("a backend").backend().id)
            .collect();
        assert_eq!(meanwhile, [1, 1, 1, 1, 1]);
        b.connect_succeeded(&mut trial);
        assert!(b.backends()[0].is_up());
    }

    #[test]
    fn every_backend_down_fails_open_to_the_first_due_back() {
        let b = balancer(&[1, 1, 1]);
        let t0 = Instant::now();
        for (id, at) in [(0u32, 0u64), (1, 5), (2, 2)] {
            let others: Vec<u32> = (0..3).filter(|&i| i != id).collect();
            for _ in 0..2 {
                let mut lease = b.pick(t0, &others).expect("a backend");
                b.connect_failed(&mut lease, t0 + Duration::from_secs(at), &refused());
            }
        }
        assert!(!b.any_available(t0 + Duration::from_secs(6)));
        let lease = b.pick(t0 + Duration::from_secs(6), &[]).expect("fail open");
        assert_eq!(lease.backend().id, 0, "backend 0's cool-down ends first");
        assert!(!lease.trial, "failing open is not the breaker's trial");
        drop(lease);
        assert!(
            b.any_available(t0 + Duration::from_secs(10)),
            "cooled down: ready for a trial, so available"
        );
    }

    #[test]
    fn failing_open_prefers_a_backend_the_checks_still_pass() {
        let checks = CheckPolicy {
            interval: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        };
        let b = Balancer::new(
            POLICY,
            Some(checks),
            &[spec(1, 1, false), spec(2, 1, false)],
        );
        let t0 = Instant::now();
        // Backend 0: breaker open (cooling down), checks up. Backend 1: checks down.
        for _ in 0..2 {
            let mut lease = b.pick(t0, &[1]).expect("backend 0");
            b.connect_failed(&mut lease, t0, &refused());
        }
        b.probe_result(&b.backends()[1], &Err(refused()));
        let lease = b.pick(t0 + Duration::from_secs(1), &[]).expect("fail open");
        assert_eq!(lease.backend().id, 0, "not the one the checks say is dead");
    }

    #[test]
    fn a_passing_probe_closes_a_breaker_opened_by_clients() {
        let checks = CheckPolicy {
            interval: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let b = Balancer::new(POLICY, Some(checks), &[spec(1, 1, false)]);
        let t0 = Instant::now();
        for _ in 0..2 {
            let mut lease = b.pick(t0, &[]).expect("backend 0");
            b.connect_failed(&mut lease, t0, &refused());
        }
        assert!(!b.any_available(t0));
        b.probe_result(&b.backends()[0], &Ok(()));
        assert!(b.backends()[0].is_up());
        assert!(b.any_available(t0));
    }

    #[test]
    fn backups_only_when_no_primary_is_up() {
        let b = Balancer::new(POLICY, None, &[spec(1, 1, false), spec(2, 1, true)]);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(b.pick(t0, &[]).expect("primary").backend().id, 0);
        }
        for _ in 0..2 {
            let mut lease = b.pick(t0, &[]).expect("primary");
            b.connect_failed(&mut lease, t0, &refused());
        }
        for _ in 0..4 {
            assert_eq!(b.pick(t0, &[]).expect("backup").backend().id, 1);
        }
        // The primary recovers: traffic returns to it.
        let later = t0 + Duration::from_secs(10);
        let mut trial = b.pick(later, &[]).expect("trial");
        assert_eq!(trial.backend().id, 0);
        b.connect_succeeded(&mut trial);
        assert_eq!(b.pick(later, &[]).expect("primary").backend().id, 0);
    }

    #[test]
    fn apply_adds_removes_and_keeps_state() {
        let mut b = Balancer::new(POLICY, None, &[]);
        assert_eq!(
            b.apply(&[spec(1, 1, false), spec(2, 1, false)]),
            Changes {
                added: 2,
                ..Changes::default()
            }
        );
        let held = b.pick(Instant::now(), &[]).expect("a backend");
        assert_eq!(held.backend().id, 0);
        bump(&b.backends()[1].stats.bytes_sent, 7);

        let changes = b.apply(&[spec(2, 3, false), spec(3, 1, false), spec(3, 1, false)]);
        assert_eq!(
            changes,
            Changes {
                added: 1,
                removed: 1,
                updated: 1
            }
        );
        let ids: Vec<u32> = b.backends().iter().map(|x| x.id).collect();
        assert_eq!(
            ids,
            [1, 2],
            "kept backend 1 (port 2) with its id, added port 3"
        );
        assert_eq!(b.backends()[0].stats.bytes_sent.get(), 7, "counters kept");
        assert_eq!(b.backends()[0].weight(), 3);
        // The removed backend drains: no new sessions, its lease still counts.
        assert!(held.backend().is_removed());
        assert_eq!(b.draining().len(), 1);
        for _ in 0..10 {
            assert_ne!(
                b.pick(Instant::now(), &[]).expect("a backend").backend().id,
                0
            );
        }
        drop(held);
        assert!(b.draining().is_empty());
    }

    #[test]
    fn an_abandoned_trial_frees_the_half_open_slot() {
        let b = balancer(&[1]);
        let t0 = Instant::now();
        for _ in 0..2 {
            let mut lease = b.pick(t0, &[]).expect("a backend");
            b.connect_failed(&mut lease, t0, &refused());
        }
        let later = t0 + Duration::from_secs(10);
        let trial = b.pick(later, &[]).expect("trial");
        drop(trial);
        assert!(b.backends()[0].breaker().allows(later));
    }
}
