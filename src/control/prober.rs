//! Active health checks: a probe is a non-blocking TCP connect to one backend, run by the
//! control thread's event loop, once per pool's `health-interval` for the whole process
//! (not once per worker). It passes when the connect completes, fails when it is refused,
//! errors or outlasts the pool's connect timeout; then the socket is closed. The pool's
//! fleet folds the result into the backend's shared check state, which every worker obeys.
//!
//! At most [`MAX_PROBES_IN_FLIGHT`] probes are open at once (their descriptors are kept out
//! of the sessions' reach: `limits::reserve`); [`Schedule`] says which backend is next. A
//! probe that cannot start yet (every slot taken, or no descriptor left) waits for a slot:
//! it is not a failure of its backend.
//!
//! [`Prober`] owns the probes in flight (in a slab, tokens `ConnId::token(1)`), the
//! schedule and each pool's round timer; it hands results back for the dispatcher to fold
//! in.

use crate::control::TimerKey;
use crate::fleet::backend::Backend;
use crate::fleet::{Fleet, PoolId};
pub use crate::limits::MAX_PROBES_IN_FLIGHT;
use crate::net;
use crate::reactor::ConnId;
use crate::reactor::timer::{TimerId, Timers};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Instant;

/// Which of a connection id's two tokens a probe uses (admin connections use the other).
pub const PROBE_SOCKET: usize = 1;

pub struct Probe {
    id: ConnId,
    stream: TcpStream,
    backend: Arc<Backend>,
    timer: Option<TimerId>,
}

impl Probe {
    /// Starts connecting to `backend`; readiness comes with `token`.
    fn start(backend: Arc<Backend>, registry: &Registry, id: ConnId) -> io::Result<Probe> {
        let mut stream = net::connect(backend.addr)?;
        registry.register(&mut stream, id.token(PROBE_SOCKET), Interest::WRITABLE)?;
        backend.set_probing(true);
        Ok(Probe {
            id,
            stream,
            backend,
            timer: None,
        })
    }

    /// The connect's outcome, once the socket reports one.
    fn on_ready(&mut self, event: &Event) -> Option<io::Result<()>> {
        if event.is_error() || event.is_write_closed() {
            return Some(Err(net::connect_error(&self.stream)));
        }
        event.is_writable().then_some(Ok(()))
    }

    /// The error for a probe whose time ran out.
    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "health check connect timed out")
    }
}

impl Drop for Probe {
    /// Ends the probe: the socket closes and the backend may be probed again.
    fn drop(&mut self) {
        self.backend.set_probing(false);
    }
}

/// A finished probe: its backend and how it went.
pub type Outcome = (Arc<Backend>, io::Result<()>);

/// A round under way: one generation of a pool, walked in order.
struct Round {
    fleet: Arc<Fleet>,
    next: usize,
}

/// Which backend to probe next, in rounds over each checked pool, with at most
/// [`MAX_PROBES_IN_FLIGHT`] probes open for the whole process. A round walks one
/// generation's backends in order, starting each probe as a slot frees (a backend still
/// being probed is passed over). A pool's round is due every `health-interval`; one due
/// while the pool's previous round is under way starts when that one ends, so slow rounds
/// run back to back rather than pile up.
#[derive(Default)]
pub struct Schedule {
    rounds: VecDeque<Round>,
    /// Pools whose next round came due while one was under way.
    due_again: Vec<PoolId>,
    in_flight: usize,
}

impl Schedule {
    /// `fleet`'s pool has a round due (over `fleet`, the generation in use).
    pub fn round_due(&mut self, fleet: &Arc<Fleet>) {
        if self.rounds.iter().any(|r| r.fleet.pool() == fleet.pool()) {
            if !self.due_again.contains(&fleet.pool()) {
                self.due_again.push(fleet.pool());
            }
        } else {
            self.rounds.push_back(Round {
                fleet: Arc::clone(fleet),
                next: 0,
            });
        }
    }

    /// Forgets `pool`'s rounds (it was removed).
    pub fn forget(&mut self, pool: PoolId) {
        self.rounds.retain(|r| r.fleet.pool() != pool);
        self.due_again.retain(|p| *p != pool);
    }

    /// The backend to probe now, if a slot is free and a round has one left; a round that
    /// came due again starts on its pool's generation in use (`current`).
    pub fn next(&mut self, current: impl Fn(PoolId) -> Option<Arc<Fleet>>) -> Option<Arc<Backend>> {
        if self.in_flight >= MAX_PROBES_IN_FLIGHT {
            return None;
        }
        loop {
            let round = self.rounds.front_mut()?;
            match round.fleet.backend_at(round.next) {
                Some(backend) => {
                    round.next += 1;
                    if !backend.is_probing() {
                        return Some(Arc::clone(backend));
                    }
                }
                None => {
                    let done = self.rounds.pop_front().map(|r| r.fleet.pool());
                    if let Some(pool) = done {
                        if let Some(i) = self.due_again.iter().position(|p| *p == pool) {
                            self.due_again.swap_remove(i);
                            if let Some(fleet) = current(pool) {
                                self.round_due(&fleet);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The backend [`Schedule::next`] gave last could not be probed for now (no
    /// descriptor): it comes first again when a slot frees or the next round is due.
    pub fn put_back(&mut self) {
        if let Some(round) = self.rounds.front_mut() {
            round.next = round.next.saturating_sub(1);
        }
    }

    /// A probe has started.
    pub fn started(&mut self) {
        self.in_flight += 1;
    }

    /// A probe has ended: its slot is free.
    pub fn ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// The probes in flight, their schedule, and each checked pool's round timer.
#[derive(Default)]
pub struct Prober {
    probes: Slab<Probe>,
    next_generation: u32,
    schedule: Schedule,
    /// Each checked pool's next round.
    timers: HashMap<PoolId, TimerId>,
}

impl Prober {
    /// Whether `token` is a probe's.
    pub fn owns(token: Token) -> bool {
        ConnId::from_token(token).1 == PROBE_SOCKET
    }

    /// Schedules `fleet`'s pool's rounds from `at` (its first now, for a new or changed
    /// pool), or stops them when it has no checks.
    pub fn schedule(&mut self, fleet: &Fleet, timers: &mut Timers<TimerKey>, at: Instant) {
        if let Some(timer) = self.timers.remove(&fleet.pool()) {
            timers.cancel(timer);
        }
        if fleet.policy().checks.is_some() {
            let timer = timers.insert(at, TimerKey::HealthRound(fleet.pool()));
            self.timers.insert(fleet.pool(), timer);
        } else {
            self.schedule.forget(fleet.pool());
        }
    }

    /// Stops `pool`'s rounds (it was removed).
    pub fn unschedule(&mut self, pool: PoolId, timers: &mut Timers<TimerKey>) {
        if let Some(timer) = self.timers.remove(&pool) {
            timers.cancel(timer);
        }
        self.schedule.forget(pool);
    }

    /// `fleet`'s round is due: it joins the schedule, and the next one is timed.
    pub fn round_due(&mut self, fleet: &Arc<Fleet>, timers: &mut Timers<TimerKey>, now: Instant) {
        self.timers.remove(&fleet.pool());
        let Some(policy) = fleet.policy().checks else {
            return;
        };
        self.schedule.round_due(fleet);
        let timer = timers.insert(now + policy.interval, TimerKey::HealthRound(fleet.pool()));
        self.timers.insert(fleet.pool(), timer);
    }

    /// Starts the probes the schedule has room for. Those that fail at once are outcomes
    /// now; out of descriptors, the backend waits for the next slot or round (that is not
    /// its failure) and the error is returned to report.
    pub fn start_probes(
        &mut self,
        current: impl Fn(PoolId) -> Option<Arc<Fleet>>,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
        now: Instant,
    ) -> (Vec<Outcome>, Option<io::Error>) {
        let mut failed = Vec::new();
        while let Some(backend) = self.schedule.next(&current) {
            let timeout = current(backend.pool)
                .and_then(|f| f.policy().checks)
                .map_or(std::time::Duration::from_secs(3), |c| c.timeout);
            self.next_generation = self.next_generation.wrapping_add(1);
            let id = ConnId {
                slot: self.probes.vacant_key() as u32,
                generation: self.next_generation,
            };
            match Probe::start(Arc::clone(&backend), registry, id) {
                Ok(mut probe) => {
                    probe.timer = Some(timers.insert(now + timeout, TimerKey::Probe(id)));
                    self.probes.insert(probe);
                    self.schedule.started();
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    self.schedule.put_back();
                    return (failed, Some(e));
                }
                Err(e) => failed.push((backend, Err(e))),
            }
        }
        (failed, None)
    }

    /// A probe's socket is ready: its outcome, if it has one now.
    pub fn on_ready(
        &mut self,
        token: Token,
        event: &Event,
        timers: &mut Timers<TimerKey>,
    ) -> Option<Outcome> {
        let (id, _) = ConnId::from_token(token);
        let probe = self.probes.get_mut(id.slot as usize)?;
        if probe.id != id {
            return None; // a late event for a probe that has ended
        }
        let result = probe.on_ready(event)?;
        Some(self.finish(id, result, timers))
    }

    /// A probe's time ran out: it failed.
    pub fn on_timer(&mut self, id: ConnId, timers: &mut Timers<TimerKey>) -> Option<Outcome> {
        let probe = self.probes.get_mut(id.slot as usize)?;
        if probe.id != id {
            return None;
        }
        probe.timer = None;
        Some(self.finish(id, Err(Probe::timed_out()), timers))
    }

    fn finish(
        &mut self,
        id: ConnId,
        result: io::Result<()>,
        timers: &mut Timers<TimerKey>,
    ) -> Outcome {
        let mut probe = self.probes.remove(id.slot as usize);
        if let Some(timer) = probe.timer.take() {
            timers.cancel(timer);
        }
        self.schedule.ended();
        (Arc::clone(&probe.backend), result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Policy;
    use crate::fleet::builder::Builder;
    use crate::fleet::builder::tests::spec;
    use crate::fleet::health::BreakerPolicy;
    use crate::fleet::select::Balance;
    use std::time::Duration;

    fn fleet(n: usize) -> Arc<Fleet> {
        let policy = Policy {
            breaker: BreakerPolicy {
                max_fails: 3,
                fail_timeout: Duration::from_secs(10),
            },
            checks: None,
        };
        let specs: Vec<_> = (0..n)
            .map(|i| spec(1000 + i as u16, 1, i % 3 == 2))
            .collect();
        Builder::new(policy, Balance::LeastActive).build(&specs).0
    }

    /// Takes what `schedule` gives now, marking each started and probing.
    fn start_all(schedule: &mut Schedule, fleet: &Arc<Fleet>) -> Vec<Arc<Backend>> {
        let mut started = Vec::new();
        while let Some(backend) = schedule.next(|_| Some(Arc::clone(fleet))) {
            backend.set_probing(true);
            schedule.started();
            started.push(backend);
        }
        started
    }

    fn end(schedule: &mut Schedule, backend: &Backend) {
        backend.set_probing(false);
        schedule.ended();
    }

    #[test]
    fn a_round_probes_every_backend_once_with_at_most_the_cap_open() {
        let fleet = fleet(150);
        let mut schedule = Schedule::default();
        assert!(
            schedule.next(|_| Some(Arc::clone(&fleet))).is_none(),
            "no round is due yet"
        );
        schedule.round_due(&fleet);
        let mut seen = Vec::new();
        let mut open = start_all(&mut schedule, &fleet);
        while !open.is_empty() {
            assert!(open.len() <= MAX_PROBES_IN_FLIGHT);
            let done = open.remove(0);
            end(&mut schedule, &done);
            seen.push(done.addr);
            open.extend(start_all(&mut schedule, &fleet));
        }
        let all: Vec<_> = fleet.backends().map(|b| b.addr).collect();
        assert_eq!(seen, all, "backups included, each once, in order");
        // The round is over: nothing until the next is due.
        assert!(schedule.next(|_| Some(Arc::clone(&fleet))).is_none());
    }

    #[test]
    fn a_round_due_during_another_follows_it_and_passes_over_backends_still_probed() {
        let fleet = fleet(4);
        let all: Vec<_> = fleet.backends().map(|b| b.addr).collect();
        let mut schedule = Schedule::default();
        schedule.round_due(&fleet);
        let first = start_all(&mut schedule, &fleet);
        assert_eq!(first.len(), 4);
        // Due again while all four are open: the next round waits for this one's end, which
        // comes once it has no backend left (it has none: every probe is started).
        schedule.round_due(&fleet);
        end(&mut schedule, &first[1]);
        let second = start_all(&mut schedule, &fleet);
        // It passes over the three still being probed.
        assert_eq!(second.iter().map(|b| b.addr).collect::<Vec<_>>(), [all[1]]);
        end(&mut schedule, &first[0]);
        assert!(
            start_all(&mut schedule, &fleet).is_empty(),
            "no round is due"
        );
    }

    #[test]
    fn a_backend_put_back_comes_first_again() {
        let fleet = fleet(3);
        let mut schedule = Schedule::default();
        schedule.round_due(&fleet);
        let first = schedule
            .next(|_| Some(Arc::clone(&fleet)))
            .expect("a backend");
        schedule.put_back();
        let again = schedule
            .next(|_| Some(Arc::clone(&fleet)))
            .expect("a backend");
        assert!(Arc::ptr_eq(&first, &again));
    }
}
