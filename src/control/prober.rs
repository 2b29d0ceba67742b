//! Active checks, run by the control thread's event loop, never a worker's: each is one
//! non-blocking connection to one backend, once per interval for the whole process (not
//! once per worker). Two kinds:
//!
//! - a **health check**, every pool's check interval: a TCP connect, or an application check
//!   (`send`/`expect`, `http`; see [`super::check`]), on the traffic port or the check's
//!   `port`. It passes or fails with a note saying why (`refused`, `timeout`, `expect
//!   "master" not found in 58 bytes`, `status 503`), and the pool's fleet folds the result
//!   into the backend's shared check state, which every worker obeys. A backend in
//!   maintenance is not checked.
//! - an **agent check**, every pool's `agent-interval`, for backends with an `agent-port`:
//!   one line read and handed to the fleet ([`crate::fleet::agent`]).
//!
//! At most [`MAX_PROBES_IN_FLIGHT`] checks are open at once, both kinds together (their
//! descriptors are kept out of the sessions' reach: `limits::reserve`); a check reads at
//! most [`super::check::MAX_ANSWER`] bytes. [`Schedule`] says which backend is next. A check
//! that cannot start yet (every slot taken, or no descriptor left) waits for a slot: it is
//! not a failure of its backend.
//!
//! [`Prober`] owns the checks in flight (in a slab, tokens `ConnId::token(1)`), the
//! schedule and each pool's round timers; it hands results back for the dispatcher to fold
//! in.

use crate::control::TimerKey;
use crate::control::check::{Conversation, Purpose, Step, Verdict};
use crate::fleet::backend::{Admin, Backend};
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
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which of a connection id's two tokens a probe uses (admin connections use the other).
pub const PROBE_SOCKET: usize = 1;

/// A health check or an agent check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Health,
    Agent,
}

impl ProbeKind {
    /// Whether `backend` is one a round of this kind checks now: not being checked already
    /// (by this kind), and for a health check not in maintenance; for an agent check, one
    /// with an agent.
    fn wants(self, backend: &Backend) -> bool {
        match self {
            ProbeKind::Health => {
                !backend.is_probing()
                    && backend.admin() != Admin::Maint
                    && backend.agent().admin != Admin::Maint
            }
            ProbeKind::Agent => backend.agent_port().is_some() && !backend.is_agent_probing(),
        }
    }

    fn mark(self, backend: &Backend, on: bool) {
        match self {
            ProbeKind::Health => backend.set_probing(on),
            ProbeKind::Agent => backend.set_agent_probing(on),
        }
    }
}

/// How long an answer that looks whole but lacks what is expected may still grow (a
/// segment a moment behind) before the check fails.
pub const SETTLE: Duration = Duration::from_millis(50);

/// What a probe has after an event.
enum Next {
    /// Nothing yet.
    Wait,
    /// The answer looks whole and lacks what is expected: it fails unless more comes
    /// within [`SETTLE`].
    Settle,
    Done(Verdict),
}

pub struct Probe {
    id: ConnId,
    kind: ProbeKind,
    stream: TcpStream,
    backend: Arc<Backend>,
    timer: Option<TimerId>,
    /// Armed while the answer settles, with the answer's length then.
    settle: Option<(TimerId, usize)>,
    conversation: Conversation,
    connected: bool,
}

impl Probe {
    /// Starts connecting to `addr` for a check of `backend`; readiness comes with `token`.
    fn start(
        kind: ProbeKind,
        backend: Arc<Backend>,
        addr: SocketAddr,
        purpose: Purpose,
        registry: &Registry,
        id: ConnId,
    ) -> io::Result<Probe> {
        let mut stream = net::connect(addr)?;
        registry.register(
            &mut stream,
            id.token(PROBE_SOCKET),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        kind.mark(&backend, true);
        let authority = crate::config::authority(&(backend.addr.ip().to_string(), addr.port()));
        Ok(Probe {
            id,
            kind,
            stream,
            backend,
            timer: None,
            settle: None,
            conversation: Conversation::new(purpose, &authority),
            connected: false,
        })
    }

    /// Moves the conversation on after a readiness event.
    fn on_ready(&mut self, event: &Event) -> Next {
        if !self.connected {
            if event.is_error() || (event.is_write_closed() && !event.is_writable()) {
                let error = net::connect_error(&self.stream);
                return Next::Done(self.conversation.failed(&error, false));
            }
            if !event.is_writable() {
                return Next::Wait;
            }
            if let Some(error) = self.stream.take_error().ok().flatten() {
                return Next::Done(self.conversation.failed(&error, false));
            }
            self.connected = true;
            match self.conversation.connected() {
                Step::Done(verdict) => return Next::Done(verdict),
                Step::Write | Step::Read => {}
            }
        }
        self.converse()
    }

    /// Writes what is left to send, then reads what came, until either would block.
    fn converse(&mut self) -> Next {
        while !self.conversation.to_send().is_empty() {
            match self.stream.write(self.conversation.to_send()) {
                Ok(0) => {
                    return Next::Done(Verdict::Fail("closed before the request was sent".into()));
                }
                Ok(n) => {
                    if let Step::Done(verdict) = self.conversation.wrote(n) {
                        return Next::Done(verdict);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Next::Done(self.conversation.failed(&e, true)),
            }
        }
        let mut buf = [0u8; 4096];
        loop {
            let room = self.conversation.room().min(buf.len());
            if room == 0 {
                // Full: the conversation has judged (it does when it fills).
                return Next::Done(self.conversation.closed());
            }
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => return Next::Done(self.conversation.closed()),
                Ok(n) => {
                    if let Some(verdict) = self.conversation.received(&buf[..n]) {
                        return Next::Done(verdict);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match self.conversation.paused() {
                        Some(_) => Next::Settle,
                        None => Next::Wait,
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Next::Done(self.conversation.failed(&e, true)),
            }
        }
    }
}

impl Drop for Probe {
    /// Ends the probe: the socket closes and the backend may be checked again.
    fn drop(&mut self) {
        self.kind.mark(&self.backend, false);
    }
}

/// A finished check: its backend and how it went.
#[derive(Debug)]
pub enum Outcome {
    /// A health check passed or failed; the note says how.
    Health {
        backend: Arc<Backend>,
        passed: bool,
        note: String,
    },
    /// An agent's line, or why it could not be had.
    Agent {
        backend: Arc<Backend>,
        answer: Result<Vec<u8>, String>,
    },
}

impl Outcome {
    fn of(kind: ProbeKind, backend: Arc<Backend>, verdict: Verdict) -> Outcome {
        match (kind, verdict) {
            (ProbeKind::Health, Verdict::Pass(note)) => Outcome::Health {
                backend,
                passed: true,
                note,
            },
            (ProbeKind::Health, Verdict::Fail(note)) => Outcome::Health {
                backend,
                passed: false,
                note,
            },
            (ProbeKind::Health, Verdict::Line(_)) => Outcome::Health {
                backend,
                passed: true,
                note: "ok".to_string(),
            },
            (ProbeKind::Agent, Verdict::Line(line)) => Outcome::Agent {
                backend,
                answer: Ok(line),
            },
            (ProbeKind::Agent, Verdict::Pass(note) | Verdict::Fail(note)) => Outcome::Agent {
                backend,
                answer: Err(note),
            },
        }
    }
}

/// A round under way: one generation of a pool, walked in order.
struct Round {
    fleet: Arc<Fleet>,
    kind: ProbeKind,
    next: usize,
}

/// Which backend to check next, in rounds over each checked pool, with at most
/// [`MAX_PROBES_IN_FLIGHT`] checks open for the whole process. A round walks one
/// generation's backends in order, starting each check as a slot frees (a backend still
/// being checked is passed over). A pool's round is due every interval; one due while the
/// pool's previous round of that kind is under way starts when that one ends, so slow
/// rounds run back to back rather than pile up.
#[derive(Default)]
pub struct Schedule {
    rounds: VecDeque<Round>,
    /// Pools whose next round came due while one was under way.
    due_again: Vec<(PoolId, ProbeKind)>,
    in_flight: usize,
}

impl Schedule {
    /// `fleet`'s pool has a round of `kind` due (over `fleet`, the generation in use).
    pub fn round_due(&mut self, fleet: &Arc<Fleet>, kind: ProbeKind) {
        let key = (fleet.pool(), kind);
        if self
            .rounds
            .iter()
            .any(|r| r.fleet.pool() == fleet.pool() && r.kind == kind)
        {
            if !self.due_again.contains(&key) {
                self.due_again.push(key);
            }
        } else {
            self.rounds.push_back(Round {
                fleet: Arc::clone(fleet),
                kind,
                next: 0,
            });
        }
    }

    /// Forgets `pool`'s rounds of `kind` (it was removed, or has no such checks now).
    pub fn forget(&mut self, pool: PoolId, kind: ProbeKind) {
        self.rounds
            .retain(|r| r.fleet.pool() != pool || r.kind != kind);
        self.due_again.retain(|k| *k != (pool, kind));
    }

    /// The backend to check now and how, if a slot is free and a round has one left; a
    /// round that came due again starts on its pool's generation in use (`current`).
    pub fn next(
        &mut self,
        current: impl Fn(PoolId) -> Option<Arc<Fleet>>,
    ) -> Option<(Arc<Backend>, ProbeKind)> {
        if self.in_flight >= MAX_PROBES_IN_FLIGHT {
            return None;
        }
        loop {
            let round = self.rounds.front_mut()?;
            match round.fleet.backend_at(round.next) {
                Some(backend) => {
                    round.next += 1;
                    if round.kind.wants(backend) {
                        return Some((Arc::clone(backend), round.kind));
                    }
                }
                None => {
                    let done = self.rounds.pop_front().map(|r| (r.fleet.pool(), r.kind));
                    if let Some(key) = done {
                        if let Some(i) = self.due_again.iter().position(|k| *k == key) {
                            self.due_again.swap_remove(i);
                            if let Some(fleet) = current(key.0) {
                                self.round_due(&fleet, key.1);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The backend [`Schedule::next`] gave last could not be checked for now (no
    /// descriptor): it comes first again when a slot frees or the next round is due.
    pub fn put_back(&mut self) {
        if let Some(round) = self.rounds.front_mut() {
            round.next = round.next.saturating_sub(1);
        }
    }

    /// A check has started.
    pub fn started(&mut self) {
        self.in_flight += 1;
    }

    /// A check has ended: its slot is free.
    pub fn ended(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// The checks in flight, their schedule, and each checked pool's round timers.
#[derive(Default)]
pub struct Prober {
    probes: Slab<Probe>,
    next_generation: u32,
    schedule: Schedule,
    /// Each checked pool's next round of each kind.
    timers: HashMap<(PoolId, ProbeKind), TimerId>,
}

/// The interval of `fleet`'s rounds of `kind`, if it has such checks.
fn interval(fleet: &Fleet, kind: ProbeKind) -> Option<Duration> {
    match kind {
        ProbeKind::Health => fleet.policy().checks.as_ref().map(|c| c.interval),
        ProbeKind::Agent => fleet
            .has_agents()
            .then_some(fleet.policy().runtime.agent_interval),
    }
}

fn key(kind: ProbeKind, pool: PoolId) -> TimerKey {
    match kind {
        ProbeKind::Health => TimerKey::HealthRound(pool),
        ProbeKind::Agent => TimerKey::AgentRound(pool),
    }
}

impl Prober {
    /// Whether `token` is a probe's.
    pub fn owns(token: Token) -> bool {
        ConnId::from_token(token).1 == PROBE_SOCKET
    }

    /// Schedules `fleet`'s pool's rounds from `at` (its first now, for a new or changed
    /// pool), or stops those it has no checks for.
    pub fn schedule(&mut self, fleet: &Fleet, timers: &mut Timers<TimerKey>, at: Instant) {
        for kind in [ProbeKind::Health, ProbeKind::Agent] {
            if let Some(timer) = self.timers.remove(&(fleet.pool(), kind)) {
                timers.cancel(timer);
            }
            if interval(fleet, kind).is_some() {
                let timer = timers.insert(at, key(kind, fleet.pool()));
                self.timers.insert((fleet.pool(), kind), timer);
            } else {
                self.schedule.forget(fleet.pool(), kind);
            }
        }
    }

    /// Stops `pool`'s rounds (it was removed).
    pub fn unschedule(&mut self, pool: PoolId, timers: &mut Timers<TimerKey>) {
        for kind in [ProbeKind::Health, ProbeKind::Agent] {
            if let Some(timer) = self.timers.remove(&(pool, kind)) {
                timers.cancel(timer);
            }
            self.schedule.forget(pool, kind);
        }
    }

    /// `fleet`'s round of `kind` is due: it joins the schedule, and the next one is timed.
    pub fn round_due(
        &mut self,
        fleet: &Arc<Fleet>,
        kind: ProbeKind,
        timers: &mut Timers<TimerKey>,
        now: Instant,
    ) {
        self.timers.remove(&(fleet.pool(), kind));
        let Some(every) = interval(fleet, kind) else {
            return;
        };
        self.schedule.round_due(fleet, kind);
        let timer = timers.insert(now + every, key(kind, fleet.pool()));
        self.timers.insert((fleet.pool(), kind), timer);
    }

    /// Starts the checks the schedule has room for. Those that fail at once are outcomes
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
        while let Some((backend, kind)) = self.schedule.next(&current) {
            let Some(fleet) = current(backend.pool) else {
                continue;
            };
            let policy = fleet.policy();
            let (addr, purpose, timeout) = match (kind, &policy.checks) {
                (ProbeKind::Health, Some(checks)) => {
                    let port = checks.port.unwrap_or(backend.addr.port());
                    let purpose = match &checks.exchange {
                        Some(exchange) => Purpose::Exchange(Arc::clone(exchange)),
                        None => Purpose::Connect,
                    };
                    (
                        SocketAddr::new(backend.addr.ip(), port),
                        purpose,
                        checks.timeout,
                    )
                }
                (ProbeKind::Agent, _) => {
                    let Some(port) = backend.agent_port() else {
                        continue;
                    };
                    (
                        SocketAddr::new(backend.addr.ip(), port),
                        Purpose::Agent,
                        policy.runtime.agent_interval,
                    )
                }
                (ProbeKind::Health, None) => continue,
            };
            self.next_generation = self.next_generation.wrapping_add(1);
            let id = ConnId {
                slot: self.probes.vacant_key() as u32,
                generation: self.next_generation,
            };
            match Probe::start(
                kind,
                Arc::clone(&backend),
                addr,
                purpose.clone(),
                registry,
                id,
            ) {
                Ok(mut probe) => {
                    probe.timer = Some(timers.insert(now + timeout, TimerKey::Probe(id)));
                    self.probes.insert(probe);
                    self.schedule.started();
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    self.schedule.put_back();
                    return (failed, Some(e));
                }
                Err(e) => {
                    let verdict = Conversation::new(purpose, "").failed(&e, false);
                    failed.push(Outcome::of(kind, backend, verdict));
                }
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
        now: Instant,
    ) -> Option<Outcome> {
        let (id, _) = ConnId::from_token(token);
        let probe = self.probes.get_mut(id.slot as usize)?;
        if probe.id != id {
            return None; // a late event for a probe that has ended
        }
        match probe.on_ready(event) {
            Next::Wait => None,
            Next::Done(verdict) => Some(self.finish(id, verdict, timers)),
            Next::Settle => {
                // Armed once per length of answer: more bytes start the wait again.
                let len = probe.conversation.answer_len();
                if probe.settle.as_ref().is_none_or(|(_, at)| *at != len) {
                    if let Some((timer, _)) = probe.settle.take() {
                        timers.cancel(timer);
                    }
                    let timer = timers.insert(now + SETTLE, TimerKey::ProbeSettle(id));
                    probe.settle = Some((timer, len));
                }
                None
            }
        }
    }

    /// An answer has had [`SETTLE`] to grow: judged as it is.
    pub fn on_settled(&mut self, id: ConnId, timers: &mut Timers<TimerKey>) -> Option<Outcome> {
        let probe = self.probes.get_mut(id.slot as usize)?;
        if probe.id != id {
            return None;
        }
        probe.settle = None;
        let verdict = probe.conversation.paused()?;
        Some(self.finish(id, verdict, timers))
    }

    /// A probe's time ran out: it failed.
    pub fn on_timer(&mut self, id: ConnId, timers: &mut Timers<TimerKey>) -> Option<Outcome> {
        let probe = self.probes.get_mut(id.slot as usize)?;
        if probe.id != id {
            return None;
        }
        probe.timer = None;
        let verdict = probe.conversation.timed_out(probe.connected);
        Some(self.finish(id, verdict, timers))
    }

    fn finish(&mut self, id: ConnId, verdict: Verdict, timers: &mut Timers<TimerKey>) -> Outcome {
        let mut probe = self.probes.remove(id.slot as usize);
        if let Some(timer) = probe.timer.take() {
            timers.cancel(timer);
        }
        if let Some((timer, _)) = probe.settle.take() {
            timers.cancel(timer);
        }
        self.schedule.ended();
        Outcome::of(probe.kind, Arc::clone(&probe.backend), verdict)
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
            runtime: crate::fleet::RuntimePolicy::DEFAULT,
        };
        let specs: Vec<_> = (0..n)
            .map(|i| spec(1000 + i as u16, 1, i % 3 == 2))
            .collect();
        Builder::new(policy, Balance::LeastActive).build(&specs).0
    }

    /// Takes what `schedule` gives now, marking each started and probing.
    fn start_all(schedule: &mut Schedule, fleet: &Arc<Fleet>) -> Vec<Arc<Backend>> {
        let mut started = Vec::new();
        while let Some((backend, _)) = schedule.next(|_| Some(Arc::clone(fleet))) {
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
        schedule.round_due(&fleet, ProbeKind::Health);
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
        schedule.round_due(&fleet, ProbeKind::Health);
        let first = start_all(&mut schedule, &fleet);
        assert_eq!(first.len(), 4);
        // Due again while all four are open: the next round waits for this one's end, which
        // comes once it has no backend left (it has none: every probe is started).
        schedule.round_due(&fleet, ProbeKind::Health);
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
        schedule.round_due(&fleet, ProbeKind::Health);
        let (first, _) = schedule
            .next(|_| Some(Arc::clone(&fleet)))
            .expect("a backend");
        schedule.put_back();
        let (again, _) = schedule
            .next(|_| Some(Arc::clone(&fleet)))
            .expect("a backend");
        assert!(Arc::ptr_eq(&first, &again));
    }
}
