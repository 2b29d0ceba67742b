//! The fleet: one generation of the backend set, shared (`Arc`) by the control thread and
//! every worker, and everything done to backends on the data path.
//!
//! A generation lists the backends in two groups, primaries and backups, each with its
//! [`Selector`]. It is built off the event loops by [`builder::Builder`] and swapped in whole
//! on reload; backends kept across generations are the same `Arc<Backend>`, so their
//! counters and health carry over.
//!
//! [`Fleet::pick`] leases the backend a new session should use: the group selector's choice
//! among primaries that take sessions; else among backups; else, so a whole-fleet blip does
//! not become an outage, the backend due back first (fail open). Connect outcomes feed the
//! shared breaker ([`Fleet::connect_succeeded`], [`Fleet::connect_failed`]), probe results
//! the checks ([`Fleet::probe_result`]), agents' answers their agent state
//! ([`Fleet::agent_result`]), and `tcplb ctl` the operator's state ([`Fleet::set_admin`]);
//! each change is replayed into the selector. A backend that comes back up by any of these
//! starts its slow-start ramp ([`Backend::came_up`]).

pub mod agent;
pub mod backend;
pub mod backends_file;
pub mod builder;
pub mod discovery;
pub mod health;
pub mod latency;
pub mod lease;
pub mod queue;
pub mod resolver;
pub mod select;

use crate::clock;
pub use crate::config::policy::{MarkedDown, RuntimePolicy};
use crate::reactor::{Throttle, suppressed_note};
use crate::stats::{CONNECT_BUCKETS, SharedHistogram};
use backend::{Admin, Backend, Seat};
use health::{BreakerPolicy, CheckPolicy, Transition};
use lease::Lease;
use log::{info, warn};
use queue::Queue;
use select::{PickRequest, Selector};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Health settings every generation shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub breaker: BreakerPolicy,
    /// Active health checks; `None` = off.
    pub checks: Option<CheckPolicy>,
    /// Agent checks, slow start, on-marked-down.
    pub runtime: RuntimePolicy,
}

/// A change of a backend's health worth acting on (and logging).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// It takes sessions again.
    Up,
    /// Its checks or its agent took it down.
    Down,
}

/// Backends of one kind (primaries or backups) and the selector over them.
#[derive(Debug)]
pub struct Group {
    members: Vec<Arc<Backend>>,
    selector: Box<dyn Selector>,
}

impl Group {
    pub fn members(&self) -> &[Arc<Backend>] {
        &self.members
    }
}

/// A pool's number, stable while the pool (by name) is configured; a removed pool's may be
/// given to a pool added later.
pub type PoolId = u32;

/// A pool's figures, kept across its generations.
#[derive(Debug)]
pub struct PoolStats {
    /// How long successful backend connects took.
    pub connect_duration: SharedHistogram,
}

impl Default for PoolStats {
    fn default() -> PoolStats {
        PoolStats {
            connect_duration: SharedHistogram::new(&CONNECT_BUCKETS),
        }
    }
}

/// One generation of one pool's backends.
#[derive(Debug)]
pub struct Fleet {
    pool: PoolId,
    name: Arc<str>,
    stats: Arc<PoolStats>,
    /// Its wait queue, the same for every generation.
    queue: Arc<Queue>,
    balance: select::Balance,
    generation: u32,
    primaries: Group,
    backups: Group,
    /// Some backend has an `agent-port`.
    has_agents: bool,
    /// Removed backends that still had sessions when this generation was built.
    draining: Vec<Arc<Backend>>,
    policy: Policy,
    fail_open_throttle: Throttle,
    /// The last fail-open choice (an index of [`Fleet::backends`]) and until when (ms) it
    /// stands.
    fail_open_index: AtomicU32,
    fail_open_until: AtomicU64,
}

/// How often a backend on its slow-start ramp is replayed into its selector (ms), so the
/// selectors see its weight climb.
pub const RAMP_TICK_MS: u64 = 100;

/// How long a fail-open choice stands before the set is scanned again (ms).
pub const FAIL_OPEN_CHOICE_MS: u64 = 100;

/// The fail-open choice that says the pool is full (see [`Unavailable::Full`]).
const FULL: u32 = u32::MAX - 1;

/// What the fail-open scan found.
enum Scan<'a> {
    /// A backend takes sessions, but none has room: the pool is full.
    Full,
    /// The backend to fail open to.
    Chosen(&'a Arc<Backend>),
    /// Nothing to try.
    None,
}

/// Why [`Fleet::pick_or_full`] found no backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Every backend that takes sessions is at its `maxconn`.
    Full,
    /// No backend is left to try.
    None,
}

/// A connect outcome's consequence for the worker that saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Noted,
    /// The breaker opened until this time (ms): the backend must be looked at again then,
    /// so it gets its trial.
    CoolingDown { until: u64 },
}

impl Fleet {
    /// The pool this is a generation of.
    pub fn pool(&self) -> PoolId {
        self.pool
    }

    /// The pool's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The pool's figures (the same for every generation).
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// The pool's wait queue (see [`queue`]).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Which generation this is (counts reloads).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether some backend has an agent to ask.
    pub fn has_agents(&self) -> bool {
        self.has_agents
    }

    /// Whether its selectors took the weights when it was built (round-robin, random-two
    /// and source-hash): a weight changed at run time needs a new generation to count.
    /// Least-active reads weights live.
    pub fn static_weights(&self) -> bool {
        self.balance != select::Balance::LeastActive
    }

    /// The algorithm both groups use.
    pub fn balance_name(&self) -> &'static str {
        self.primaries.selector.name()
    }

    /// Every backend in the set: primaries, then backups.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.primaries.members.iter().chain(&self.backups.members)
    }

    /// The `i`-th backend of [`Fleet::backends`].
    pub fn backend_at(&self, i: usize) -> Option<&Arc<Backend>> {
        let primaries = &self.primaries.members;
        match i.checked_sub(primaries.len()) {
            None => primaries.get(i),
            Some(j) => self.backups.members.get(j),
        }
    }

    /// Backends in the set.
    pub fn len(&self) -> usize {
        self.primaries.members.len() + self.backups.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removed backends still draining sessions.
    pub fn draining(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.draining.iter().filter(|b| b.active() > 0)
    }

    /// Whether any backend would take a new session now without failing open: what
    /// `/healthz` reports. Counting only closed breakers would keep a readiness probe at 503
    /// after a blip until some client came to make the trial — which the 503 stops.
    pub fn any_taking_sessions(&self, now: u64) -> bool {
        self.backends().any(|b| b.state(now).takes_sessions())
    }

    /// Leases the backend that should take a new session, never one in `tried`; `None` if
    /// no backend is left to try (or every one is full).
    pub fn pick(&self, request: &PickRequest) -> Option<Lease> {
        self.pick_or_full(request).ok()
    }

    /// As [`Fleet::pick`], saying why there is none: every backend that takes sessions is
    /// at its `maxconn` (a client may wait in the pool's queue), or none is left to try.
    pub fn pick_or_full(&self, request: &PickRequest) -> Result<Lease, Unavailable> {
        for group in [&self.primaries, &self.backups] {
            // A pick races with other workers: the chosen backend may have just given its
            // half-open trial to someone else. Then look again (bounded: each retry sees a
            // replayed tree).
            for _ in 0..4 {
                let Some(index) = group.selector.pick(&group.members, request) else {
                    break;
                };
                let backend = &group.members[index];
                // Its last slot may have gone to another worker meanwhile.
                if !backend.try_acquire() {
                    group.selector.refresh(&group.members, index, request.now);
                    continue;
                }
                let taken = backend
                    .shared_breaker()
                    .update(|b| b.allows(request.now).then(|| b.on_pick(request.now)));
                let Some(trial) = taken else {
                    backend.release();
                    group.selector.refresh(&group.members, index, request.now);
                    continue;
                };
                let lease = Lease::counted(Arc::clone(backend), trial);
                group.selector.refresh(&group.members, index, request.now);
                return Ok(lease);
            }
        }
        // Failing open is never the breaker's trial: its outcome only counts if it succeeds.
        let chosen = self.fail_open(request)?;
        if !chosen.try_acquire() {
            return Err(Unavailable::Full);
        }
        let lease = Lease::counted(Arc::clone(chosen), false);
        self.refresh(chosen, request.now);
        Ok(lease)
    }

    /// No untried backend takes sessions: one the health checks still pass if any, and
    /// among those the one whose breaker allows a session soonest. That takes a scan of the
    /// set, so its answer stands for [`FAIL_OPEN_CHOICE_MS`] (every client meanwhile goes to
    /// the same backend anyway): a whole-fleet outage costs a worker one scan per interval,
    /// not one per client.
    fn fail_open(&self, request: &PickRequest) -> Result<&Arc<Backend>, Unavailable> {
        let now = request.now;
        let cached = self.fail_open_index.load(Ordering::Acquire);
        let fresh = now < self.fail_open_until.load(Ordering::Acquire);
        if cached == FULL && fresh {
            return Err(Unavailable::Full);
        }
        let chosen = match self.at(cached as usize) {
            Some(b)
                if fresh && !request.tried.contains(&b.id) && b.has_room() && b.admin_ready() =>
            {
                b
            }
            _ => {
                let scanned = self.scan_for_fail_open(request);
                if request.tried.is_empty() {
                    let index = match scanned {
                        Scan::Full => Some(FULL),
                        Scan::Chosen(chosen) => self
                            .backends()
                            .position(|b| Arc::ptr_eq(b, chosen))
                            .map(|i| i as u32),
                        Scan::None => None,
                    };
                    if let Some(index) = index {
                        self.fail_open_index.store(index, Ordering::Release);
                        self.fail_open_until
                            .store(now + FAIL_OPEN_CHOICE_MS, Ordering::Release);
                    }
                }
                match scanned {
                    Scan::Chosen(chosen) => chosen,
                    Scan::Full => return Err(Unavailable::Full),
                    Scan::None => return Err(Unavailable::None),
                }
            }
        };
        if let Some(n) = self.fail_open_throttle.allow(clock::instant(now)) {
            let tried_up = self
                .backends()
                .filter(|b| request.tried.contains(&b.id))
                .any(|b| b.state(now).takes_sessions());
            let why = if tried_up {
                "no backend left to try for this client is up (the ones up were tried)"
            } else {
                "every backend is down"
            };
            warn!(
                "{why}; trying {chosen}, the first due back{}",
                suppressed_note(n)
            );
        }
        Ok(chosen)
    }

    /// The backend at `index` of [`Fleet::backends`] (primaries, then backups).
    fn at(&self, index: usize) -> Option<&Arc<Backend>> {
        let primaries = &self.primaries.members;
        primaries.get(index).or_else(|| {
            self.backups
                .members
                .get(index.checked_sub(primaries.len())?)
        })
    }

    /// The whole-set scan behind [`Fleet::fail_open`].
    fn scan_for_fail_open(&self, request: &PickRequest) -> Scan<'_> {
        let now = request.now;
        // Backends that take sessions but are all at their maxconn are full, not failing:
        // the pool is at capacity, and nobody is sent past a backend's limit. (One that
        // takes sessions and has room is found below: the selection had not seen it come
        // back yet — its cool-down just ended, and this worker's timer has not said so.)
        let mut takers = self
            .backends()
            .filter(|b| !request.tried.contains(&b.id) && b.state(now).takes_sessions())
            .peekable();
        if takers.peek().is_some() && takers.all(|b| !b.has_room()) {
            return Scan::Full;
        }
        // Never one the operator or its agent holds out (drain, maint).
        let untried = self
            .backends()
            .filter(|b| !request.tried.contains(&b.id) && b.admin_ready())
            .filter(|b| b.has_room());
        let chosen = untried.min_by(|a, b| {
            let (a_at, b_at) = (
                a.allowed_from(now, self.policy.breaker),
                b.allowed_from(now, self.policy.breaker),
            );
            b.checks_up()
                .cmp(&a.checks_up())
                .then_with(|| a_at.cmp(&b_at))
                .then_with(|| a.active().cmp(&b.active()))
        });
        chosen.map_or(Scan::None, Scan::Chosen)
    }

    /// Ends a lease: the session is over (or moves to another backend). Its backend's
    /// counts drop and the selector hears of it.
    pub fn release(&self, lease: Lease, now: u64) {
        let backend = Arc::clone(lease.backend());
        drop(lease);
        self.refresh(&backend, now);
    }

    /// The lease's connect succeeded. Returns whether that brought the backend back up
    /// onto a slow-start ramp (its selector must then see it again as the ramp climbs).
    pub fn connect_succeeded(&self, lease: &mut Lease, now: u64) -> bool {
        lease.settle_trial();
        let backend = lease.backend();
        backend::BackendStats::add(&backend.stats.sessions, 1);
        // Nothing to write on the usual path: already up, no failures counted.
        let b = backend.breaker();
        if b.consecutive_failures() == 0 && b.state() == health::BreakerState::Up {
            return false;
        }
        let came_up =
            backend.shared_breaker().update(|b| b.on_success()) == Some(Transition::CameUp);
        if came_up {
            backend.came_up(now);
            self.rejoin(backend, now);
        }
        self.refresh(backend, now);
        if came_up {
            info!("backend {backend} is up again: a connect succeeded");
        }
        came_up && backend.ramping(now)
    }

    /// The lease's connect failed (refused, reset, unreachable, timed out).
    pub fn connect_failed(&self, lease: &mut Lease, now: u64, error: &io::Error) -> Verdict {
        let trial = lease.settle_trial();
        let backend = lease.backend();
        backend::BackendStats::add(&backend.stats.connect_failures, 1);
        let policy = self.policy.breaker;
        let transition = backend
            .shared_breaker()
            .update(|b| b.on_failure(now, policy, trial));
        self.refresh(backend, now);
        match transition {
            Some(Transition::WentDown { cooldown, until }) => {
                warn!(
                    "backend {backend} is down: {} connects failed in a row (last: {error}); \
                     next try in {cooldown:?}",
                    backend.breaker().consecutive_failures()
                );
                Verdict::CoolingDown { until }
            }
            _ => {
                if let Some(n) = backend.warn_throttle.allow(clock::instant(now)) {
                    warn!(
                        "backend {backend}: connect failed: {error}{}",
                        suppressed_note(n)
                    );
                }
                Verdict::Noted
            }
        }
    }

    /// Folds in an active probe's result (`passed`, and what it said: `note`, kept for
    /// `/backends` and `tcplb ctl`). The selectors hear of a change before it is logged, so
    /// whoever reads the log line finds it in effect. Returns the change, if any.
    pub fn probe_result(
        &self,
        backend: &Arc<Backend>,
        passed: bool,
        note: &str,
        now: u64,
    ) -> Option<Marked> {
        let policy = self.policy.checks.as_ref()?;
        backend.note(false, note.to_string());
        let flipped = backend.checks().record(passed, policy);
        // A passing probe while the checks say up has just shown connects succeed: close a
        // breaker opened meanwhile by failing clients, without waiting for a client's trial.
        let breaker_open = backend.breaker().state() != health::BreakerState::Up;
        // Up again: the checks flipped to up, or a probe passed while they said up but
        // the breaker was open.
        let came_up = matches!(flipped, Some(true))
            || (flipped.is_none() && passed && backend.checks_up() && breaker_open);
        if came_up {
            backend.shared_breaker().update(|b| b.reset());
            backend.came_up(now);
            self.rejoin(backend, now);
        }
        self.refresh(backend, now);
        match flipped {
            Some(true) => info!(
                "{}backend {backend} is up: {} health checks passed in a row ({note})",
                discovery::prefix(&self.name),
                policy.rise
            ),
            _ if came_up => info!(
                "{}backend {backend} is up again: a health check {}",
                discovery::prefix(&self.name),
                if policy.exchange.is_none() {
                    "connected"
                } else {
                    "passed"
                }
            ),
            Some(false) => warn!(
                "{}backend {backend} is down: {} health checks failed in a row (last: {note})",
                discovery::prefix(&self.name),
                policy.fall
            ),
            None => {}
        }
        match flipped {
            Some(false) => Some(Marked::Down),
            _ if came_up => Some(Marked::Up),
            _ => None,
        }
    }

    /// Folds in what a backend's agent answered (`Err`: it could not be asked). Returns
    /// whether the backend came back up or was marked down by it.
    pub fn agent_result(
        &self,
        backend: &Arc<Backend>,
        reply: Result<agent::Reply, String>,
        now: u64,
    ) -> Option<Marked> {
        let reply = match reply {
            Ok(reply) => reply,
            Err(why) => {
                // An agent that does not answer changes nothing (as HAProxy's).
                backend.note(true, format!("no answer: {why}"));
                return None;
            }
        };
        let took_before = backend.admin_ready() && !backend.agent().down;
        let before = backend.agent();
        let after = reply.apply(before);
        backend.set_agent(after);
        let mut note = agent::describe(&after);
        if !reply.unknown.is_empty() {
            note.push_str(&format!(" (unknown: {})", reply.unknown.join(" ")));
        }
        backend.note(true, note.clone());
        if after == before {
            return None;
        }
        let takes_now = backend.admin_ready() && !after.down;
        let marked = match (took_before, takes_now) {
            (false, true) => {
                backend.came_up(now);
                self.rejoin(backend, now);
                Some(Marked::Up)
            }
            (true, false) if after.down => Some(Marked::Down),
            _ => None,
        };
        self.refresh(backend, now);
        info!(
            "{}backend {backend}: its agent says {} (was {})",
            discovery::prefix(&self.name),
            agent::describe(&after),
            agent::describe(&before)
        );
        marked
    }

    /// `tcplb ctl set state`: the operator's word for `backend`. Returns the one before.
    /// Back to ready from drain or maint, it rejoins (and ramps, with slow start).
    pub fn set_admin(&self, backend: &Arc<Backend>, admin: Admin, now: u64) -> Admin {
        let held_out = !backend.admin_ready();
        let before = backend.set_admin(admin);
        if held_out && backend.admin_ready() {
            backend.came_up(now);
            self.rejoin(backend, now);
        }
        self.refresh(backend, now);
        before
    }

    /// The group and index `backend` has in this generation, if it is in it.
    fn locate(&self, backend: &Backend) -> Option<(&Group, usize)> {
        let seat = backend.seat();
        if seat.generation != self.generation {
            return None;
        }
        let group = if seat.backup {
            &self.backups
        } else {
            &self.primaries
        };
        let index = seat.index as usize;
        group
            .members
            .get(index)
            .filter(|b| std::ptr::eq(b.as_ref(), backend))
            .map(|_| (group, index))
    }

    /// `backend`'s load or state changed: the selector of its group replays it. A backend
    /// not in this generation (removed, or seated by a newer one) is left alone.
    pub fn refresh(&self, backend: &Backend, now: u64) {
        // A cool-down seen over is written down first: the selector's replays run on each
        // caller's clock, and one whose turn began before the cool-down ended would
        // otherwise take the backend out of the tree again after its timer put it back.
        if matches!(backend.breaker().state(), health::BreakerState::Down { until } if now >= until)
        {
            backend.shared_breaker().update(|b| b.end_cooldown(now));
        }
        if let Some((group, index)) = self.locate(backend) {
            group.selector.refresh(&group.members, index, now);
        }
    }

    /// Whether its selectors want the control thread's [`Fleet::tick`]s.
    pub fn ticks(&self) -> bool {
        self.primaries.selector.ticks() || self.backups.selector.ticks()
    }

    /// Time passes, for selectors that keep something up to date over the whole group
    /// (least-latency's median): the control thread's, O(n).
    pub fn tick(&self, now: u64) {
        for group in [&self.primaries, &self.backups] {
            group.selector.tick(&group.members, now);
        }
    }

    /// The time constant of its backends' latency estimates.
    pub fn latency_decay(&self) -> std::time::Duration {
        match self.balance {
            select::Balance::LeastLatency(s) => s.decay,
            _ => crate::config::policy::DEFAULT_LATENCY_DECAY,
        }
    }

    /// Replays every backend (once every worker has adopted this generation, to take in
    /// the changes made meanwhile on older ones).
    pub fn refresh_all(&self, now: u64) {
        for group in [&self.primaries, &self.backups] {
            group.selector.refresh_all(&group.members, now);
        }
    }

    /// A backend takes sessions again after an absence: its tie-breaking clock moves up to
    /// that of the best other backend of its group, so it takes its share of tied sessions,
    /// not all of them until it has caught up.
    ///
    /// Only its group is needed, not its place in this generation: a worker still on an
    /// older generation than the backend's seat must catch it up too, or once the newer
    /// generation is in use the backend would take every tied session for a while.
    pub fn rejoin(&self, backend: &Backend, now: u64) {
        // Back after an absence: its old answer times say nothing of now.
        backend.latency.reset();
        let group = if backend.is_backup() {
            &self.backups
        } else {
            &self.primaries
        };
        let others = PickRequest {
            client: None,
            now,
            tried: &[backend.id],
        };
        let Some(reference) = group.selector.pick(&group.members, &others) else {
            return;
        };
        let reference = &group.members[reference];
        let picks = u128::from(reference.picks()) * u128::from(backend.weight())
            / u128::from(reference.weight().max(1));
        backend.catch_up_picks(picks.min(u128::from(u64::MAX)) as u64);
    }
}

/// Puts a generation together (the builder's last step): seats every backend and builds
/// the selectors.
pub(crate) fn assemble(
    (pool, name, generation, stats, queue): (PoolId, Arc<str>, u32, Arc<PoolStats>, Arc<Queue>),
    primaries: Vec<Arc<Backend>>,
    backups: Vec<Arc<Backend>>,
    draining: Vec<Arc<Backend>>,
    policy: Policy,
    balance: select::Balance,
    now: u64,
) -> Fleet {
    let slow_start = policy.runtime.slow_start.as_millis() as u64;
    let has_agents = primaries
        .iter()
        .chain(&backups)
        .any(|b| b.agent_port().is_some());
    for (backup, members) in [(false, &primaries), (true, &backups)] {
        for (index, b) in members.iter().enumerate() {
            b.set_seat(Seat {
                generation,
                backup,
                index: index as u32,
            });
            b.set_slow_start(slow_start);
        }
    }
    Fleet {
        pool,
        name,
        stats,
        queue,
        balance,
        generation,
        primaries: Group {
            selector: select::build(balance, &primaries, now),
            members: primaries,
        },
        backups: Group {
            selector: select::build(balance, &backups, now),
            members: backups,
        },
        has_agents,
        draining,
        policy,
        fail_open_throttle: Throttle::default(),
        fail_open_index: AtomicU32::new(0),
        fail_open_until: AtomicU64::new(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::backend::{ResolvedBackend, State};
    use crate::fleet::builder::Builder;
    use select::Balance;
    use std::time::Duration;

    const BREAKER: BreakerPolicy = BreakerPolicy {
        max_fails: 2,
        fail_timeout: Duration::from_secs(10),
    };
    const S: u64 = 1000;

    use crate::fleet::builder::tests::spec;

    fn fleet_of(specs: &[ResolvedBackend], checks: Option<CheckPolicy>) -> Arc<Fleet> {
        let policy = Policy {
            breaker: BREAKER,
            checks,
            runtime: RuntimePolicy::DEFAULT,
        };
        Builder::new(policy, Balance::LeastActive).build(specs).0
    }

    fn fleet(weights: &[u32]) -> Arc<Fleet> {
        let specs: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| spec(1000 + i as u16, w, false))
            .collect();
        fleet_of(&specs, None)
    }

    fn pick(f: &Fleet, now: u64, tried: &[u64]) -> Option<Lease> {
        f.pick(&PickRequest {
            client: None,
            now,
            tried,
        })
    }

    fn id(lease: &Lease) -> u64 {
        lease.backend().id
    }

    fn refused() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionRefused)
    }

    /// Fails `times` connects on the backend with id `target` at `now`.
    fn fail(f: &Fleet, target: u64, times: usize, now: u64) {
        let others: Vec<u64> = f
            .backends()
            .map(|b| b.id)
            .filter(|&i| i != target)
            .collect();
        for _ in 0..times {
            let mut lease = pick(f, now, &others).expect("the target");
            assert_eq!(id(&lease), target);
            f.connect_failed(&mut lease, now, &refused());
            f.release(lease, now);
        }
    }

    #[test]
    fn a_lease_counts_exactly_once_and_the_choice_follows_it() {
        let f = fleet(&[1, 1]);
        let a = pick(&f, 0, &[]).expect("a backend");
        let b = pick(&f, 0, &[]).expect("a backend");
        assert_ne!(id(&a), id(&b), "the second goes to the one left idle");
        let on_a = Arc::clone(a.backend());
        assert_eq!(on_a.active(), 1);
        f.release(a, 0);
        assert_eq!(on_a.active(), 0);
        // A dropped lease (no release) counts down too.
        let c = pick(&f, 0, &[]).expect("a backend");
        assert!(Arc::ptr_eq(c.backend(), &on_a), "the least active");
        drop(c);
        assert_eq!(on_a.active(), 0);
        drop(b);
        assert!(f.backends().all(|b| b.active() == 0));
    }

    #[test]
    fn no_backends_no_pick() {
        assert!(pick(&fleet_of(&[], None), 0, &[]).is_none());
    }

    #[test]
    fn a_down_backend_gets_nothing_until_its_one_trial() {
        let f = fleet(&[1, 1]);
        fail(&f, 0, 2, 0);
        assert_eq!(f.backends().next().expect("0").state(0), State::Down);
        for _ in 0..10 {
            assert_eq!(id(&pick(&f, 0, &[]).expect("backend 1")), 1);
        }
        // After the cool-down (the worker's timer replays it): exactly one trial.
        let later = 10 * S;
        f.refresh(f.backends().next().expect("0"), later);
        let mut trial = pick(&f, later, &[1]).expect("the trial");
        assert_eq!(id(&trial), 0);
        let meanwhile: Vec<u64> = (0..5)
            .map(|_| id(&pick(&f, later, &[]).expect("one")))
            .collect();
        assert_eq!(
            meanwhile,
            [1, 1, 1, 1, 1],
            "no second session during the trial"
        );
        f.connect_succeeded(&mut trial, later);
        assert_eq!(f.backends().next().expect("0").state(later), State::Up);
        // Back in the selection: with backend 1 busier, 0 takes the next session.
        let held: Vec<Lease> = (0..2).map(|_| pick(&f, later, &[0]).expect("1")).collect();
        assert_eq!(id(&pick(&f, later, &[]).expect("a backend")), 0);
        drop(held);
    }

    #[test]
    fn an_abandoned_trial_frees_the_half_open_slot() {
        let f = fleet(&[1]);
        fail(&f, 0, 2, 0);
        let later = 10 * S;
        let trial = pick(&f, later, &[]).expect("trial");
        assert_eq!(
            f.backends().next().expect("0").state(later),
            State::HalfOpen { trial: true }
        );
        f.release(trial, later);
        assert_eq!(
            f.backends().next().expect("0").state(later),
            State::HalfOpen { trial: false }
        );
        let again = pick(&f, later, &[]).expect("another trial");
        assert!(
            again.backend().breaker().state() == health::BreakerState::HalfOpen { trial: true }
        );
    }

    #[test]
    fn every_backend_down_fails_open_to_the_first_due_back() {
        let f = fleet(&[1, 1, 1]);
        for (target, at) in [(0u64, 0u64), (1, 5 * S), (2, 2 * S)] {
            fail(&f, target, 2, at);
        }
        assert!(!f.any_taking_sessions(6 * S));
        let lease = pick(&f, 6 * S, &[]).expect("fail open");
        assert_eq!(id(&lease), 0, "backend 0's cool-down ends first");
        assert_eq!(
            lease.backend().state(6 * S),
            State::Down,
            "failing open is not the breaker's trial"
        );
        drop(lease);
        assert!(
            f.any_taking_sessions(10 * S),
            "cooled down: ready for a trial, so taking sessions"
        );
    }

    #[test]
    fn a_backend_whose_cool_down_just_ended_is_picked_before_the_selection_has_seen_it() {
        // Both down; at 10 s both cool-downs are over, but no timer has told the selection
        // (as on a worker whose timer has not fired yet): the client still gets a backend,
        // not "every backend is full".
        let f = fleet(&[1, 1]);
        fail(&f, 0, 2, 0);
        fail(&f, 1, 2, 0);
        let later = 10 * S;
        assert!(f.backends().all(|b| b.state(0) == State::Down));
        assert!(f.backends().all(|b| b.state(later).takes_sessions()));
        let request = PickRequest {
            client: None,
            now: later,
            tried: &[],
        };
        let lease = f.pick_or_full(&request).expect("a backend, not full");
        f.release(lease, later);
    }

    #[test]
    fn a_fail_open_choice_stands_for_a_moment_instead_of_a_scan_per_client() {
        let f = fleet(&[1, 1]);
        fail(&f, 0, 2, 0);
        fail(&f, 1, 2, S);
        // Backend 0 is due back first: chosen, and the choice stands...
        assert_eq!(id(&pick(&f, 2 * S, &[]).expect("fail open")), 0);
        // ...even when backend 1 would now be the better choice, for a moment...
        f.backends()
            .next()
            .expect("0")
            .shared_breaker()
            .update(|b| b.on_failure(2 * S, BREAKER, true));
        assert_eq!(id(&pick(&f, 2 * S + 50, &[]).expect("fail open")), 0);
        // ...not after it, nor for a client that has tried it.
        assert_eq!(
            id(&pick(&f, 2 * S + FAIL_OPEN_CHOICE_MS, &[]).expect("fail open")),
            1
        );
        assert_eq!(id(&pick(&f, 2 * S, &[1]).expect("fail open")), 0);
    }

    #[test]
    fn failing_open_prefers_a_backend_the_checks_still_pass() {
        let checks = CheckPolicy::connect(Duration::from_secs(1), 1, 1, Duration::from_secs(3));
        let f = fleet_of(&[spec(1, 1, false), spec(2, 1, false)], Some(checks));
        // Backend 0: breaker open (cooling down), checks up. Backend 1: checks down.
        fail(&f, 0, 2, 0);
        let one = Arc::clone(f.backends().nth(1).expect("1"));
        f.probe_result(&one, false, "refused", 0);
        let lease = pick(&f, S, &[]).expect("fail open");
        assert_eq!(id(&lease), 0, "not the one the checks say is dead");
    }

    #[test]
    fn a_passing_probe_closes_a_breaker_opened_by_clients() {
        let checks = CheckPolicy::connect(Duration::from_secs(1), 2, 3, Duration::from_secs(3));
        let f = fleet_of(&[spec(1, 1, false)], Some(checks));
        fail(&f, 0, 2, 0);
        assert!(!f.any_taking_sessions(0));
        let zero = Arc::clone(f.backends().next().expect("0"));
        f.probe_result(&zero, true, "ok", 0);
        assert_eq!(zero.state(0), State::Up);
        assert!(f.any_taking_sessions(0));
        assert_eq!(id(&pick(&f, 0, &[]).expect("back in the selection")), 0);
    }

    #[test]
    fn backups_only_while_no_primary_takes_sessions() {
        let f = fleet_of(&[spec(1, 1, false), spec(2, 1, true)], None);
        for _ in 0..4 {
            assert_eq!(id(&pick(&f, 0, &[]).expect("primary")), 0);
        }
        for _ in 0..2 {
            let mut lease = pick(&f, 0, &[]).expect("primary");
            f.connect_failed(&mut lease, 0, &refused());
            f.release(lease, 0);
        }
        for _ in 0..4 {
            assert_eq!(id(&pick(&f, 0, &[]).expect("backup")), 1);
        }
        // The primary recovers: traffic returns to it.
        let later = 10 * S;
        f.refresh(f.backends().next().expect("0"), later);
        let mut trial = pick(&f, later, &[]).expect("trial");
        assert_eq!(id(&trial), 0);
        f.connect_succeeded(&mut trial, later);
        assert_eq!(id(&pick(&f, later, &[]).expect("primary")), 0);
    }

    #[test]
    fn a_backend_back_up_on_a_worker_still_on_the_old_generation_rejoins_too() {
        // A reload builds generation 2 (the same set) while a worker still uses 1: the
        // trial that brings backend 0 back succeeds on that worker. Once generation 2 is
        // adopted, backend 0 must take its share of tied sessions, not every one of them
        // until its tie-breaking clock has caught up with backend 1's hundred sessions.
        let specs = [spec(1000, 1, false), spec(1001, 1, false)];
        let policy = Policy {
            breaker: BREAKER,
            checks: None,
            runtime: RuntimePolicy::DEFAULT,
        };
        let mut builder = Builder::new(policy, Balance::LeastActive);
        let (old, _) = builder.build(&specs);
        fail(&old, 0, 2, 0);
        for _ in 0..100 {
            let lease = pick(&old, 0, &[]).expect("1");
            old.release(lease, 0);
        }
        let (new, _) = builder.build(&specs);
        let later = 10 * S;
        old.refresh(old.backends().next().expect("0"), later);
        let mut trial = pick(&old, later, &[1]).expect("the trial, on the old generation");
        old.connect_succeeded(&mut trial, later);
        old.release(trial, later);
        new.refresh_all(later); // every worker has adopted generation 2
        let next: Vec<u64> = (0..6)
            .map(|_| {
                let lease = pick(&new, later, &[]).expect("a backend");
                let i = id(&lease);
                new.release(lease, later);
                i
            })
            .collect();
        assert_eq!(
            next.iter().filter(|&&i| i == 0).count(),
            3,
            "{next:?}: they take turns"
        );
    }

    #[test]
    fn a_replay_on_an_older_clock_does_not_undo_the_cool_down_timer() {
        // Two workers. Backend 2's breaker opens until 10 s; worker B's cool-down timer
        // fires at 10 s and replays it. Worker A's turn began 1 ms earlier (its clock says
        // 9.999 s), and a pick in that turn meets backend 2 as the tree's winner. Whatever A
        // makes of it, backend 2 must get its one trial: A must not replay it out of the
        // tree on its older clock, with no timer left to put it back (and, as the last of
        // three, no neighbour whose replays would look at it again).
        let f = fleet(&[1, 1, 1]);
        fail(&f, 2, 2, 0);
        let two = Arc::clone(f.backends().nth(2).expect("2"));
        let mut held: Vec<Lease> = (0..4).map(|_| pick(&f, 0, &[2]).expect("0 or 1")).collect();
        let later = 10 * S;
        f.refresh(&two, later); // B's timer
        held.push(pick(&f, later - 1, &[]).expect("a backend, on A's clock"));
        for at in 1..=10 {
            held.push(pick(&f, later + at, &[]).expect("a backend"));
        }
        let picked: Vec<u64> = held[4..].iter().map(id).collect();
        assert_eq!(
            picked.iter().filter(|&&i| i == 2).count(),
            1,
            "{picked:?}: backend 2 gets its trial, and one only"
        );
    }

    #[test]
    fn a_held_out_backend_gets_no_session_not_even_failing_open() {
        let f = fleet(&[1, 1]);
        let zero = Arc::clone(f.backends().next().expect("0"));
        assert_eq!(f.set_admin(&zero, Admin::Drain, 0), Admin::Ready);
        for _ in 0..6 {
            let lease = pick(&f, 0, &[]).expect("backend 1");
            assert_eq!(id(&lease), 1);
            f.release(lease, 0);
        }
        // Backend 1 down too: failing open never goes to the drained one.
        fail(&f, 1, 2, 0);
        assert_eq!(id(&pick(&f, S, &[]).expect("fail open")), 1);
        assert!(!f.any_taking_sessions(S));
        f.set_admin(&zero, Admin::Ready, S);
        assert_eq!(id(&pick(&f, S, &[]).expect("back")), 0);
    }

    #[test]
    fn a_backend_on_its_ramp_takes_a_share_of_held_sessions_that_grows() {
        let specs = [spec(1000, 1, false), spec(1001, 1, false)];
        let policy = Policy {
            breaker: BREAKER,
            checks: None,
            runtime: RuntimePolicy {
                slow_start: std::time::Duration::from_secs(10),
                ..RuntimePolicy::DEFAULT
            },
        };
        let f = Builder::new(policy, select::Balance::LeastActive)
            .build(&specs)
            .0;
        let zero = Arc::clone(f.backends().next().expect("0"));
        f.set_admin(&zero, Admin::Maint, 0);
        f.set_admin(&zero, Admin::Ready, 0);
        let share_at = |now: u64| {
            let held: Vec<Lease> = (0..40).map(|_| pick(&f, now, &[]).expect("one")).collect();
            let on_zero = held.iter().filter(|l| id(l) == 0).count();
            for lease in held {
                f.release(lease, now);
            }
            on_zero
        };
        let shares: Vec<usize> = [0, 2, 5, 8, 10].iter().map(|&s| share_at(s * S)).collect();
        assert!(shares[0] <= 2, "{shares:?}");
        assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        assert_eq!(shares[4], 20, "full share after the window: {shares:?}");
    }

    #[test]
    fn round_robin_gives_a_ramping_backend_turns_with_the_probability_of_its_ramp() {
        let specs = [spec(1000, 1, false), spec(1001, 1, false)];
        let policy = Policy {
            breaker: BREAKER,
            checks: None,
            runtime: RuntimePolicy {
                slow_start: std::time::Duration::from_secs(10),
                ..RuntimePolicy::DEFAULT
            },
        };
        let f = Builder::new(policy, select::Balance::RoundRobin)
            .build(&specs)
            .0;
        let zero = Arc::clone(f.backends().next().expect("0"));
        f.set_admin(&zero, Admin::Maint, 0);
        f.set_admin(&zero, Admin::Ready, 0);
        let turns_at = |now: u64| {
            (0..2000)
                .filter(|_| {
                    let lease = pick(&f, now, &[]).expect("one");
                    let on_zero = id(&lease) == 0;
                    f.release(lease, now);
                    on_zero
                })
                .count()
        };
        let early = turns_at(S);
        let late = turns_at(10 * S);
        assert!(early < 250, "10% of its half at 1 s of 10: {early} of 2000");
        assert_eq!(late, 1000, "its half once the ramp is over");
    }

    #[test]
    fn a_rejoining_backend_takes_its_share_of_ties_not_all_of_them() {
        let f = fleet(&[1, 1]);
        fail(&f, 0, 2, 0);
        // Backend 1 serves a hundred sessions one after another while 0 is out.
        for _ in 0..100 {
            let lease = pick(&f, 0, &[]).expect("1");
            f.release(lease, 0);
        }
        let later = 10 * S;
        f.refresh(f.backends().next().expect("0"), later);
        let mut trial = pick(&f, later, &[]).expect("trial");
        f.connect_succeeded(&mut trial, later);
        f.release(trial, later);
        let next: Vec<u64> = (0..6)
            .map(|_| {
                let lease = pick(&f, later, &[]).expect("a backend");
                let i = id(&lease);
                f.release(lease, later);
                i
            })
            .collect();
        assert_eq!(
            next.iter().filter(|&&i| i == 0).count(),
            3,
            "{next:?}: they take turns"
        );
    }
}
