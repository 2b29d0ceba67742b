//! What a session borrows from its worker while a handler runs ([`Env`], lent by
//! `lend_env!`), and the small types around it: session ids and their poll tokens
//! ([`ConnId`]), what a worker's timers are for ([`TimerKey`]),
//! and the throttles of bursty warnings.

use crate::fleet::backend::Backend;
use crate::reactor::ConnId;
use crate::reactor::Throttle;
use crate::reactor::timer::Timers;
use crate::service::Topology;
use crate::stats::WorkerStats;
use crate::worker::handle::Shared;
use crate::worker::pipes::PipePool;
use crate::worker::pool::Pool;
use mio::Registry;
use std::sync::Arc;
use std::time::Instant;

/// What a worker's timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A session's connect or idle timeout.
    Conn(ConnId),
    /// Accepting was paused for lack of descriptors: try again.
    ResumeAccept,
    /// A backend's breaker cool-down is over, or its slow-start ramp has climbed: let its
    /// selector see it again (index into the worker's cool-down list).
    Cooldown(usize),
    /// A removed service's drain time is over: cut its sessions left (index into the
    /// worker's retired services).
    Retire(usize),
}

/// Warnings that come in bursts, one throttle each.
#[derive(Debug, Default)]
pub struct Throttles {
    pub accept: Throttle,
    pub fds: Throttle,
    pub no_backend: Throttle,
    pub pipes: Throttle,
    pub shed: Throttle,
    pub proxy: Throttle,
}

/// What a session borrows from its worker while a handler runs.
pub struct Env<'a> {
    pub registry: &'a Registry,
    pub pool: &'a mut Pool,
    pub pipes: &'a mut PipePool,
    /// Every service and every pool's current generation.
    pub topology: &'a Topology,
    pub timers: &'a mut Timers<TimerKey>,
    /// The time at the start of this turn (one clock read per wake-up), and the same in
    /// milliseconds since the clock's epoch (for shared state).
    pub now: Instant,
    pub now_ms: u64,
    pub stats: &'a WorkerStats,
    pub throttles: &'a Throttles,
    /// Backends whose selector must see them again at a time (ms): a breaker's cool-down
    /// ends, or a slow-start ramp climbs.
    pub cooling: &'a mut Vec<(Arc<Backend>, u64)>,
    /// This worker's index, and what the workers share (their inboxes: a freed backend
    /// slot goes to whoever waits for it, on any worker).
    pub worker: usize,
    pub shared: &'a Shared,
    /// Where a client's TLS ClientHello is peeked at (see [`crate::worker::hello`]): empty
    /// until a service with routes needs it.
    pub scratch: &'a mut Vec<u8>,
    /// The worker's share of the kernel fast path (`--bpf-redirect`), if loaded.
    pub fast: Option<&'a mut crate::worker::fast::Fast>,
}

/// Lends a session the worker's resources: an [`Env`] of disjoint borrows of the worker's
/// fields (a method could not, with the session itself borrowed from the slab).
macro_rules! lend_env {
    ($worker:ident) => {
        $crate::worker::Env {
            registry: $worker.poll.registry(),
            pool: &mut $worker.pool,
            pipes: &mut $worker.pipes,
            topology: &$worker.topology,
            timers: &mut $worker.timers,
            now: $worker.now,
            now_ms: $crate::clock::millis($worker.now),
            stats: &$worker.stats,
            throttles: &$worker.throttles,
            cooling: &mut $worker.cooling,
            worker: $worker.index,
            shared: &$worker.shared,
            scratch: &mut $worker.scratch,
            fast: $worker.fast.as_mut(),
        }
    };
}
pub(crate) use lend_env;
