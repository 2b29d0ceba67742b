//! What a session borrows from its worker while a handler runs ([`Env`], lent by
//! `lend_env!`), and the small types around it: session ids and their poll tokens
//! ([`ConnId`]), what a worker's timers are for ([`TimerKey`]),
//! and the throttles of bursty warnings.

use crate::fleet::backend::Backend;
use crate::logging::Throttle;
use crate::service::Topology;
use crate::stats::WorkerStats;
use crate::worker::pipes::PipePool;
use crate::worker::pool::Pool;
use crate::worker::timer::Timers;
use mio::{Registry, Token};
use std::sync::Arc;
use std::time::Instant;

/// A session's slot in the worker's slab plus a generation, so an event or timer meant
/// for a session that has ended is never delivered to the next one in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub slot: u32,
    pub generation: u32,
}

// Tokens pack a generation into the upper half of the word.
const _: () = assert!(usize::BITS >= 64, "tcplb needs a 64-bit target");

impl ConnId {
    /// The poll token of one of the session's sockets (`socket` is 0 or 1): generation,
    /// slot and socket packed in one word. Tokens at the very top of the range are left to
    /// the worker's own sockets.
    pub fn token(self, socket: usize) -> Token {
        Token(((self.generation as usize) << 32) | ((self.slot as usize) << 1) | (socket & 1))
    }

    /// The session and socket (0 or 1) a token names.
    pub fn from_token(token: Token) -> (ConnId, usize) {
        let id = ConnId {
            slot: ((token.0 >> 1) & 0x7fff_ffff) as u32,
            generation: (token.0 >> 32) as u32,
        };
        (id, token.0 & 1)
    }
}

/// What a worker's timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKey {
    /// A session's connect or idle timeout.
    Conn(ConnId),
    /// Accepting was paused for lack of descriptors: try again.
    ResumeAccept,
    /// A backend's breaker cool-down is over: let its selector see it again (index into
    /// the worker's cool-down list).
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
    /// Backends whose breaker opened, with when their cool-down ends.
    pub cooling: &'a mut Vec<(Arc<Backend>, u64)>,
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
        }
    };
}
pub(crate) use lend_env;

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
