//! How a new session's backend is chosen within a group (the primaries, or the backups):
//! the [`Selector`] seam, one type per algorithm.
//!
//! | `--balance` | type | pick |
//! |---|---|---|
//! | `least-active` | [`least_active::LeastActive`] | a tournament tree: least `active / weight` |
//! | `round-robin` | [`round_robin::RoundRobin`] | the next turn of a smooth weighted [`schedule`] |
//! | `random-two` | [`random_two::RandomTwo`] | the less loaded of two drawn by weight |
//! | `source-hash` | [`maglev::Maglev`] | the client address through a Maglev table |
//! | `least-latency` | [`least_latency::LeastLatency`] | a tournament tree: least `latency × (active + 1) / weight` |
//!
//! A selector is built with each fleet generation over that generation's group, is shared
//! by every worker, and must pick without a lock and in time independent of the group's
//! size. It only chooses: taking the lease, the breaker's trial and failing open are the
//! fleet's (`fleet/mod.rs`). It never returns a backend that does not take sessions at
//! `request.now` or that is in `request.tried`.

pub mod least_active;
pub mod least_latency;
pub mod maglev;
pub mod random_two;
pub mod round_robin;
pub mod schedule;

use crate::fleet::backend::Backend;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// What a pick may look at besides the backends' load and state.
#[derive(Clone, Copy, Debug)]
pub struct PickRequest<'a> {
    /// The client's address (for algorithms that keep a client on one backend).
    pub client: Option<IpAddr>,
    /// Milliseconds since the clock's epoch.
    pub now: u64,
    /// Backends (by id) already tried for this client: never picked again.
    pub tried: &'a [u64],
}

impl PickRequest<'_> {
    /// Whether `backend` may be given this session: it takes sessions now, has room (below
    /// its `maxconn`) and has not been tried for this client.
    pub fn allows(&self, backend: &Backend) -> bool {
        backend.state(self.now).takes_sessions()
            && backend.has_room()
            && !self.tried.contains(&backend.id)
    }
}

/// Whether a backend on its slow-start ramp takes this turn: always at full weight, else
/// with the probability of its ramp (for the selectors that do not weigh by load:
/// round-robin's turns and random-two's draws).
pub(crate) fn ramp_admits(backend: &Backend, now: u64) -> bool {
    let ramp = backend.ramp(now);
    ramp >= 1000 || random_two::random() % 1000 < ramp
}

/// A balancing algorithm over one group of backends.
pub trait Selector: Send + Sync + fmt::Debug {
    /// The name `--balance` takes and `/backends` shows.
    fn name(&self) -> &'static str;

    /// The index in `members` of the backend a new session should go to: one whose state
    /// takes sessions at `request.now` and not in `request.tried`; `None` if there is none.
    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize>;

    /// `members[index]`'s load, weight or state has changed.
    fn refresh(&self, _members: &[Arc<Backend>], _index: usize, _now: u64) {}

    /// Anything may have changed (after a reload was adopted by every worker).
    fn refresh_all(&self, _members: &[Arc<Backend>], _now: u64) {}

    /// Whether it wants [`Selector::tick`]s.
    fn ticks(&self) -> bool {
        false
    }

    /// Time passes (the control thread, about twice a second, for selectors that ask):
    /// work that may be O(n), never done on a worker.
    fn tick(&self, _members: &[Arc<Backend>], _now: u64) {}
}

pub use crate::config::policy::{
    Balance, DEFAULT_TABLE_SIZE, HashSettings, LatencySettings, MAX_TABLE_SIZE, NAMES,
};

/// Whether groups of `primaries` and `backups` backends suit `balance`: `Err(why)` when
/// some backend would never be chosen, `Ok(Some(warning))` when the spread would be uneven
/// (see [`maglev::check_size`]).
pub fn check_fleet(
    balance: Balance,
    primaries: usize,
    backups: usize,
) -> Result<Option<String>, String> {
    let Balance::SourceHash(settings) = balance else {
        return Ok(None);
    };
    let primary = maglev::check_size(settings.table_size, primaries, "backends")?;
    let backup = maglev::check_size(settings.table_size, backups, "backup backends")?;
    Ok(primary.or(backup))
}

/// A selector of `balance`'s kind over `members`.
pub fn build(balance: Balance, members: &[Arc<Backend>], now: u64) -> Box<dyn Selector> {
    match balance {
        Balance::LeastActive => Box::new(least_active::LeastActive::new(members, now)),
        Balance::RoundRobin => Box::new(round_robin::RoundRobin::new(members)),
        Balance::RandomTwo => Box::new(random_two::RandomTwo::new(members)),
        Balance::SourceHash(settings) => Box::new(maglev::Maglev::new(members, settings, now)),
        Balance::LeastLatency(settings) => Box::new(least_latency::LeastLatency::new(
            members,
            settings.decay,
            now,
        )),
    }
}

/// The first backend `request` allows, looking at every member from `start` on (wrapping
/// round). The last resort of the selectors whose few random or scheduled probes all met
/// backends that are down or tried: O(n), but only when most of the group is unusable.
pub(crate) fn first_allowed(
    members: &[Arc<Backend>],
    start: usize,
    request: &PickRequest,
) -> Option<usize> {
    let n = members.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| request.allows(&members[i]))
}

/// Test fixtures shared by the selectors' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::fleet::backend::ResolvedBackend;
    use crate::fleet::health::BreakerPolicy;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Backends `10.0.x.y:80` with these weights, ids 0, 1, ...
    pub fn members(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                backend(
                    i as u64,
                    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 80)),
                    weight,
                )
            })
            .collect()
    }

    pub fn backend(id: u64, addr: SocketAddr, weight: u32) -> Arc<Backend> {
        Arc::new(Backend::new(
            id,
            &ResolvedBackend {
                addr,
                name: addr.to_string(),
                weight,
                backup: false,
                send_proxy: None,
                agent_port: None,
                maxconn: None,
            },
        ))
    }

    pub fn request(tried: &[u64]) -> PickRequest<'_> {
        PickRequest {
            client: None,
            now: 0,
            tried,
        }
    }

    /// Opens `b`'s breaker at time 0 (down for 10 s).
    pub fn break_down(b: &Backend) {
        let policy = BreakerPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        };
        b.shared_breaker()
            .update(|x| x.on_failure(0, policy, false));
    }

    /// Closes `b`'s breaker again.
    pub fn bring_up(b: &Backend) {
        b.shared_breaker().update(|x| x.reset());
    }
}
