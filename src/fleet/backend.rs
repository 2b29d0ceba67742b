//! One backend: its identity, its shared counters and its health, all readable and
//! updatable from every thread without a lock; and [`Backend::state`], the one answer to
//! "is this backend taking sessions?" that selection, `/healthz`, `/backends` and the
//! metrics all use.
//!
//! A backend lives in an `Arc`: the fleet generations that list it and the leases of its
//! sessions share it, so a backend removed from the set lives on while it drains, and a
//! backend kept across a reload keeps its counters and health.

use crate::fleet::health::{Breaker, BreakerPolicy, BreakerState, SharedBreaker, SharedChecks};
use crate::fleet::latency::Latency;
use crate::proxy_protocol::Version;
use crate::reactor::Throttle;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

/// A backend as configured and resolved: the input to a fleet build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBackend {
    pub addr: SocketAddr,
    /// What the user wrote (`host:port`), for logs.
    pub name: String,
    pub weight: u32,
    pub backup: bool,
    /// The PROXY protocol header it is sent first (`send-proxy`, `send-proxy-v2`).
    pub send_proxy: Option<Version>,
}

/// Whether a backend takes sessions, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Checks pass and the breaker is closed.
    Up,
    /// Checks fail, or the breaker is open and cooling down.
    Down,
    /// The cool-down is over: one trial session decides (`trial`: it is under way).
    HalfOpen { trial: bool },
    /// Taken out of the set: no new sessions, the last ones finishing.
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::HalfOpen { .. } => "half_open",
            State::Draining => "draining",
        }
    }

    /// Would a new session be given to it now (without failing open)? Up, or cooled down
    /// with no trial under way yet.
    pub fn takes_sessions(self) -> bool {
        matches!(self, State::Up | State::HalfOpen { trial: false })
    }
}

/// The counters a backend's sessions move on every connection: alone on their cache line,
/// so two workers bumping two different backends never contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Load {
    /// Sessions on it now, connecting ones included.
    active: AtomicU32,
    /// Sessions ever given to it (the "virtual time" that breaks least-active ties in
    /// proportion to weight; see `select/least_active.rs`).
    picks: AtomicU64,
}

/// Counters per backend, summed over every worker.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct BackendStats {
    /// Sessions whose connect succeeded.
    pub sessions: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Bytes written to the backend.
    pub bytes_sent: AtomicU64,
    /// Bytes read from the backend.
    pub bytes_received: AtomicU64,
}

impl BackendStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Backend {
    load: Load,
    /// Stable for the life of the process; never reused.
    pub id: u64,
    /// The pool it belongs to ([`crate::fleet::PoolId`]).
    pub pool: u32,
    pub addr: SocketAddr,
    pub name: String,
    weight: AtomicU32,
    backup: AtomicBool,
    /// The PROXY protocol version it is sent: 0 none, 1, 2.
    send_proxy: AtomicU8,
    /// Taken out of the set: draining its last sessions.
    removed: AtomicBool,
    breaker: SharedBreaker,
    checks: SharedChecks,
    /// Where it sits in the newest fleet generation (see [`Seat`]).
    seat: AtomicU64,
    /// A health check probe is under way (the prober's own mark).
    probing: AtomicBool,
    pub stats: BackendStats,
    /// How fast it answers (least-latency's measure; kept for every pool).
    pub latency: Latency,
    /// Keeps a burst of connect failures down to one warning.
    pub warn_throttle: Throttle,
}

/// A backend's place in one fleet generation: which group (primaries or backups) and which
/// index in it, so a change to the backend reaches the right leaf of its selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat {
    pub generation: u32,
    pub backup: bool,
    pub index: u32,
}

impl Seat {
    fn pack(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.backup) << 31 | u64::from(self.index)
    }

    fn unpack(word: u64) -> Seat {
        Seat {
            generation: (word >> 32) as u32,
            backup: word & (1 << 31) != 0,
            index: (word & 0x7fff_ffff) as u32,
        }
    }
}

impl Backend {
    pub fn new(id: u64, spec: &ResolvedBackend) -> Backend {
        Backend::in_pool(id, 0, spec)
    }

    /// A backend of pool `pool`.
    pub fn in_pool(id: u64, pool: u32, spec: &ResolvedBackend) -> Backend {
        Backend {
            load: Load::default(),
            id,
            pool,
            addr: spec.addr,
            name: spec.name.clone(),
            weight: AtomicU32::new(spec.weight.max(1)),
            backup: AtomicBool::new(spec.backup),
            send_proxy: AtomicU8::new(proxy_code(spec.send_proxy)),
            removed: AtomicBool::new(false),
            breaker: SharedBreaker::default(),
            checks: SharedChecks::default(),
            seat: AtomicU64::new(u64::MAX),
            probing: AtomicBool::new(false),
            stats: BackendStats::default(),
            latency: Latency::default(),
            warn_throttle: Throttle::default(),
        }
    }

    /// Whether it takes sessions at `now` (ms since the clock's epoch): the one place that
    /// decides, for selection, `/healthz`, `/backends` and `tcplb_backend_up` alike.
    pub fn state(&self, now: u64) -> State {
        if self.is_removed() {
            return State::Draining;
        }
        if !self.checks_up() {
            return State::Down;
        }
        match self.breaker().state() {
            BreakerState::Up => State::Up,
            BreakerState::Down { until } if now < until => State::Down,
            BreakerState::Down { .. } => State::HalfOpen { trial: false },
            BreakerState::HalfOpen { trial } => State::HalfOpen { trial },
        }
    }

    /// Sessions on this backend right now, connecting ones included.
    pub fn active(&self) -> u32 {
        self.load.active.load(Ordering::Acquire)
    }

    /// Sessions ever given to it.
    pub fn picks(&self) -> u64 {
        self.load.picks.load(Ordering::Acquire)
    }

    /// Moves its tie-breaking clock forward to `picks` (when it rejoins after an absence,
    /// so it does not take every tied session until it has caught up).
    pub(crate) fn catch_up_picks(&self, picks: u64) {
        self.load.picks.fetch_max(picks, Ordering::AcqRel);
    }

    pub(crate) fn acquire(&self) {
        self.load.active.fetch_add(1, Ordering::AcqRel);
        self.load.picks.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn release(&self) {
        self.load.active.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Acquire)
    }

    /// Removed from the set and draining.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Release);
    }

    /// Takes the options of a newer spec of the same address (a reload).
    pub(crate) fn set_options(&self, spec: &ResolvedBackend) {
        self.weight.store(spec.weight.max(1), Ordering::Release);
        self.backup.store(spec.backup, Ordering::Release);
        self.send_proxy
            .store(proxy_code(spec.send_proxy), Ordering::Release);
    }

    /// Whether its options differ from `spec`'s.
    pub(crate) fn options_differ(&self, spec: &ResolvedBackend) -> bool {
        self.weight() != spec.weight.max(1)
            || self.is_backup() != spec.backup
            || self.send_proxy() != spec.send_proxy
    }

    /// The PROXY protocol header a session sends it before any client byte, if any.
    pub fn send_proxy(&self) -> Option<Version> {
        match self.send_proxy.load(Ordering::Acquire) {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }

    /// A health check probe is under way.
    pub fn is_probing(&self) -> bool {
        self.probing.load(Ordering::Acquire)
    }

    pub fn set_probing(&self, probing: bool) {
        self.probing.store(probing, Ordering::Release);
    }

    pub fn breaker(&self) -> Breaker {
        self.breaker.get()
    }

    pub(crate) fn shared_breaker(&self) -> &SharedBreaker {
        &self.breaker
    }

    /// What the active health checks say (up when checks are off).
    pub fn checks_up(&self) -> bool {
        self.checks.get().is_up()
    }

    pub(crate) fn checks(&self) -> &SharedChecks {
        &self.checks
    }

    pub(crate) fn seat(&self) -> Seat {
        Seat::unpack(self.seat.load(Ordering::Acquire))
    }

    pub(crate) fn set_seat(&self, seat: Seat) {
        self.seat.store(seat.pack(), Ordering::Release);
    }

    /// `self.active / self.weight` compared with `other`'s, without dividing: `Less` if
    /// `self` is less loaded.
    pub fn compare_load(&self, other: &Backend) -> std::cmp::Ordering {
        let (a, wa) = (u64::from(self.active()), u64::from(self.weight()));
        let (b, wb) = (u64::from(other.active()), u64::from(other.weight()));
        (a * wb).cmp(&(b * wa))
    }

    /// When its breaker will next allow a session (for failing open).
    pub fn allowed_from(&self, now: u64, policy: BreakerPolicy) -> u64 {
        self.breaker().allows_from(now, policy)
    }
}

fn proxy_code(version: Option<Version>) -> u8 {
    match version {
        None => 0,
        Some(Version::V1) => 1,
        Some(Version::V2) => 2,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::health::CheckPolicy;
    use std::time::Duration;

    fn backend() -> Backend {
        let addr: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        Backend::new(
            1,
            &ResolvedBackend {
                addr,
                name: addr.to_string(),
                weight: 1,
                backup: false,
                send_proxy: None,
            },
        )
    }

    #[test]
    fn one_state_from_checks_breaker_and_removal() {
        let policy = BreakerPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        };
        let b = backend();
        assert_eq!(b.state(0), State::Up);
        assert!(b.state(0).takes_sessions());
        b.shared_breaker()
            .update(|x| x.on_failure(0, policy, false));
        assert_eq!(b.state(5_000), State::Down);
        assert!(!b.state(5_000).takes_sessions());
        assert_eq!(b.state(10_000), State::HalfOpen { trial: false });
        assert!(b.state(10_000).takes_sessions());
        assert!(b.shared_breaker().update(|x| x.on_pick(10_000)));
        assert_eq!(b.state(10_000), State::HalfOpen { trial: true });
        assert!(!b.state(10_000).takes_sessions());
        b.shared_breaker().update(|x| x.on_success());
        let checks = CheckPolicy {
            interval: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            timeout: Duration::from_secs(3),
        };
        b.checks().record(false, checks);
        assert_eq!(b.state(0), State::Down);
        b.checks().record(true, checks);
        b.set_removed(true);
        assert_eq!(b.state(0), State::Draining);
        assert_eq!(State::Draining.as_str(), "draining");
    }

    #[test]
    fn seats_pack() {
        for seat in [
            Seat {
                generation: 0,
                backup: false,
                index: 0,
            },
            Seat {
                generation: u32::MAX,
                backup: true,
                index: 0x7fff_ffff,
            },
        ] {
            assert_eq!(Seat::unpack(seat.pack()), seat);
        }
    }

    #[test]
    fn the_hot_counters_have_a_cache_line_of_their_own() {
        assert_eq!(std::mem::align_of::<Load>(), 64);
        assert!(std::mem::size_of::<Load>() <= 64);
    }
}
