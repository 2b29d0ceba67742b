//! What every handler shares with the reactor: connection ids and their poll tokens, the
//! registry, the buffer pool, the backend set, the timers, the clock of the current turn,
//! the settings and the counters.
//!
//! One `Context` lives in the reactor, next to (not inside) the slab of connections, so a
//! handler can hold a connection and the context mutably at the same time.

use crate::access_log::AccessLog;
use crate::balancer::Balancer;
use crate::logging::Throttle;
use crate::metrics::Histogram;
use crate::pool::Pool;
use crate::timer::Timers;
use mio::{Registry, Token};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// A connection's slot in the reactor's slab plus a generation, so an event or timer meant
/// for a connection that has ended is never delivered to the next one in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

// Tokens pack a generation into the upper half of the word.
const _: () = assert!(usize::BITS >= 64, "tcplb needs a 64-bit target");

impl ConnId {
    /// The poll token of one of the connection's sockets (`socket` is 0 or 1): generation,
    /// slot and socket packed in one word. Tokens at the very top of the range are left to
    /// the reactor's own sockets.
    pub fn token(self, socket: usize) -> Token {
        Token(((self.generation as usize) << 32) | ((self.slot as usize) << 1) | (socket & 1))
    }

    /// The connection and socket (0 or 1) a token names.
    pub fn from_token(token: Token) -> (ConnId, usize) {
        let id = ConnId {
            slot: ((token.0 >> 1) & 0x7fff_ffff) as u32,
            generation: (token.0 >> 32) as u32,
        };
        (id, token.0 & 1)
    }
}

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A connection's deadline: a session's connect or idle timeout, a probe's or an admin
    /// request's time limit.
    Conn(ConnId),
    /// Accepting was paused for lack of descriptors: try again.
    ResumeAccept,
    /// Time to probe every backend.
    HealthRound,
    /// Draining has run out of time.
    DrainDeadline,
}

/// Settings the handlers read on every session.
#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub retries: u32,
    pub idle_timeout: Option<Duration>,
    pub max_conns: usize,
}

/// Process-wide counters and gauges (per-backend ones live in `Backend`).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    pub shed_max_conns: u64,
    pub shed_pool: u64,
    pub accept_errors: u64,
    /// Clients closed because no backend could be reached.
    pub no_backend: u64,
    /// Sessions open right now.
    pub sessions: usize,
    pub session_duration: Histogram,
    pub connect_duration: Histogram,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            session_duration: Histogram::new(&crate::metrics::SESSION_BUCKETS),
            connect_duration: Histogram::new(&crate::metrics::CONNECT_BUCKETS),
            ..Stats::default()
        }
    }
}

/// Warnings that come in bursts, one throttle each.
#[derive(Debug, Default)]
pub struct Throttles {
    pub accept: Throttle,
    pub fds: Throttle,
    pub no_backend: Throttle,
    pub shed: Throttle,
}

pub struct Context {
    pub registry: Registry,
    pub pool: Pool,
    pub balancer: Balancer,
    pub timers: Timers<TimerKey>,
    /// The time at the start of this turn of the loop (one clock read per wake-up).
    pub now: Instant,
    /// When the process started, by the wall clock.
    pub started: SystemTime,
    pub settings: Settings,
    pub stats: Stats,
    pub throttles: Throttles,
    /// Sessions stopped for want of a buffer, oldest first.
    pub buffer_waiters: VecDeque<ConnId>,
    /// Sessions that used up their turn with work left, to run before the next poll.
    pub run_queue: Vec<ConnId>,
    /// Set when descriptors ran out: accepting pauses until a session ends or a timer fires.
    pub fds_exhausted: bool,
    /// One line per finished session, when `--access-log` is on.
    pub access_log: Option<AccessLog>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (slot, generation) in [
            (0, 0),
            (1, 7),
            (0x7fff_fffe, u32::MAX - 1),
            (12345, 1 << 31),
        ] {
            let id = ConnId { slot, generation };
            for socket in [0, 1] {
                assert_eq!(ConnId::from_token(id.token(socket)), (id, socket));
            }
        }
        let a = ConnId {
            slot: 3,
            generation: 1,
        }
        .token(0);
        let b = ConnId {
            slot: 3,
            generation: 2,
        }
        .token(0);
        assert_ne!(a, b, "a reused slot gets a different token");
    }
}
