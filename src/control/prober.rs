//! Active health checks: a probe is a non-blocking TCP connect to one backend, run by the
//! control thread's event loop, once per pool's `health-interval` for the whole process
//! (not once per worker). It passes when the connect completes, fails when it is refused,
//! errors or outlasts the pool's connect timeout; then the socket is closed. The pool's
//! fleet folds the result into the backend's shared check state, which every worker obeys.
//!
//! [`Prober`] owns the probes in flight (in a slab, tokens `ConnId::token(1)`) and each
//! pool's round timer; it hands results back for the dispatcher to fold in.

use crate::control::TimerKey;
use crate::fleet::backend::Backend;
use crate::fleet::{Fleet, PoolId};
use crate::net;
use crate::worker::ConnId;
use crate::worker::timer::{TimerId, Timers};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::collections::HashMap;
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

#[derive(Default)]
pub struct Prober {
    probes: Slab<Probe>,
    next_generation: u32,
    /// Each checked pool's next round.
    rounds: HashMap<PoolId, TimerId>,
}

impl Prober {
    /// Whether `token` is a probe's.
    pub fn owns(token: Token) -> bool {
        ConnId::from_token(token).1 == PROBE_SOCKET
    }

    /// Probes in flight.
    pub fn in_flight(&self) -> usize {
        self.probes.len()
    }

    /// Schedules `pool`'s rounds from `at` (its first now, with a new or changed pool), or
    /// stops them when it has no checks.
    pub fn schedule(&mut self, fleet: &Fleet, timers: &mut Timers<TimerKey>, at: Instant) {
        self.unschedule(fleet.pool(), timers);
        if fleet.policy().checks.is_some() {
            let timer = timers.insert(at, TimerKey::HealthRound(fleet.pool()));
            self.rounds.insert(fleet.pool(), timer);
        }
    }

    /// Stops `pool`'s rounds (it was removed).
    pub fn unschedule(&mut self, pool: PoolId, timers: &mut Timers<TimerKey>) {
        if let Some(timer) = self.rounds.remove(&pool) {
            timers.cancel(timer);
        }
    }

    /// `pool`'s round is due: probes every backend of `fleet` that has no probe under way
    /// and schedules the next round. Probes that could not start are outcomes at once
    /// (except for a lack of descriptors: that is not the backend's fault, and is
    /// returned as the error to report).
    pub fn round(
        &mut self,
        fleet: &Fleet,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
        now: Instant,
    ) -> (Vec<Outcome>, Option<io::Error>) {
        self.rounds.remove(&fleet.pool());
        let Some(policy) = fleet.policy().checks else {
            return (Vec::new(), None);
        };
        let mut failed = Vec::new();
        let mut exhausted = None;
        for backend in fleet.backends().filter(|b| !b.is_probing()) {
            self.next_generation = self.next_generation.wrapping_add(1);
            let id = ConnId {
                slot: self.probes.vacant_key() as u32,
                generation: self.next_generation,
            };
            match Probe::start(Arc::clone(backend), registry, id) {
                Ok(mut probe) => {
                    probe.timer = Some(timers.insert(now + policy.timeout, TimerKey::Probe(id)));
                    self.probes.insert(probe);
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    exhausted = Some(e);
                    break;
                }
                Err(e) => failed.push((Arc::clone(backend), Err(e))),
            }
        }
        let timer = timers.insert(now + policy.interval, TimerKey::HealthRound(fleet.pool()));
        self.rounds.insert(fleet.pool(), timer);
        (failed, exhausted)
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
        (Arc::clone(&probe.backend), result)
    }
}
