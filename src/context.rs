//! What every handler shares with the reactor: the registry, the buffer pool, the backend
//! set, the timers, the clock of the current turn, the settings and the counters.
//!
//! One `Context` lives in the reactor, next to (not inside) the slab of connections, so a
//! handler can hold a connection and the context mutably at the same time.

use crate::balancer::Balancer;
use crate::logging::Throttle;
use crate::pool::Pool;
use crate::session::SessionId;
use crate::timer::Timers;
use mio::Registry;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A session's connect or idle deadline.
    Session(SessionId),
    /// Accepting was paused for lack of descriptors: try again.
    ResumeAccept,
}

/// Settings the handlers read on every session.
#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub retries: u32,
    pub idle_timeout: Option<Duration>,
    pub max_conns: usize,
}

/// Process-wide counters (per-backend ones live in `Backend`).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    pub shed_max_conns: u64,
    pub accept_errors: u64,
    /// Clients closed because no backend could be reached.
    pub no_backend: u64,
}

/// Warnings that come in bursts, one throttle each.
#[derive(Debug, Default)]
pub struct Throttles {
    pub accept: Throttle,
    pub fds: Throttle,
    pub no_backend: Throttle,
}

pub struct Context {
    pub registry: Registry,
    pub pool: Pool,
    pub balancer: Balancer,
    pub timers: Timers<TimerKey>,
    /// The time at the start of this turn of the loop (one clock read per wake-up).
    pub now: Instant,
    pub settings: Settings,
    pub stats: Stats,
    pub throttles: Throttles,
    /// Sessions stopped for want of a buffer, oldest first.
    pub buffer_waiters: VecDeque<SessionId>,
    /// Sessions that used up their turn with work left, to run before the next poll.
    pub run_queue: Vec<SessionId>,
    /// Set when descriptors ran out: accepting pauses until a session ends or a timer fires.
    pub fds_exhausted: bool,
}
