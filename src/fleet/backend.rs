//! One backend: its identity, its shared counters and its health, all readable and
//! updatable from every thread without a lock; and [`Backend::state`], the one answer to
//! "is this backend taking sessions?" that selection, `/healthz`, `/backends`, `tcplb ctl`
//! and the metrics all use.
//!
//! Besides what the configuration says, a backend carries its runtime state, each part an
//! atomic: what the operator set through the control socket ([`Admin`]: ready, drain or
//! maint, and a weight), what its agent last said ([`AgentWord`]s), and when it last came
//! back up (slow start: its effective weight ramps from about nothing to full over the
//! pool's `slow-start`). [`Backend::weight`] is the weight after the operator and the
//! agent; [`Backend::share`] that weight on the slow-start ramp, in thousandths, which is
//! what the selectors compare.
//!
//! A backend lives in an `Arc`: the fleet generations that list it and the leases of its
//! sessions share it, so a backend removed from the set lives on while it drains, and a
//! backend kept across a reload keeps its counters, health and runtime state.

use crate::fleet::health::{Breaker, BreakerPolicy, BreakerState, SharedBreaker, SharedChecks};
use crate::fleet::latency::Latency;
use crate::proxy_protocol::Version;
use crate::reactor::Throttle;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

/// The largest weight (as `weight=N` allows, and `tcplb ctl set weight`).
pub use crate::config::MAX_WEIGHT;

/// One unit of weight in [`Backend::share`]: a backend at full weight `w` has a share of
/// `w * SHARE_UNIT`; on the slow-start ramp, a fraction of that.
pub const SHARE_UNIT: u64 = 1000;
/// The least share a backend on the slow-start ramp has, in thousandths of its weight.
pub const RAMP_FLOOR: u64 = 10;

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
    /// The port its agent answers on (`agent-port=N`), if it has one.
    pub agent_port: Option<u16>,
    /// Sessions it takes at once (`maxconn=N`); `None`: no limit of its own.
    pub maxconn: Option<u32>,
}

/// What an operator (or the backend's agent) says about a backend, apart from its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// Takes sessions when healthy.
    Ready,
    /// No new sessions; live ones go on; checks go on.
    Drain,
    /// No new sessions, no health checks (maintenance).
    Maint,
}

impl Admin {
    pub fn as_str(self) -> &'static str {
        match self {
            Admin::Ready => "ready",
            Admin::Drain => "drain",
            Admin::Maint => "maint",
        }
    }

    pub fn from_name(name: &str) -> Option<Admin> {
        match name {
            "ready" => Some(Admin::Ready),
            "drain" => Some(Admin::Drain),
            "maint" => Some(Admin::Maint),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Admin::Ready => 0,
            Admin::Drain => 1,
            Admin::Maint => 2,
        }
    }

    fn from_code(code: u8) -> Admin {
        match code {
            1 => Admin::Drain,
            2 => Admin::Maint,
            _ => Admin::Ready,
        }
    }
}

/// What a backend's agent last said (HAProxy's agent protocol): its administrative word,
/// whether it calls itself down, and its weight as a percentage of the configured one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentState {
    pub admin: Admin,
    pub down: bool,
    /// 100 until it says otherwise.
    pub percent: u32,
    /// Its `maxconn:N`: the backend's `maxconn` while it stands (0: no limit).
    pub maxconn: Option<u32>,
}

impl Default for AgentState {
    fn default() -> AgentState {
        AgentState {
            admin: Admin::Ready,
            down: false,
            percent: 100,
            maxconn: None,
        }
    }
}

/// What the operator and the agent said, kept in one atomic word so that
/// [`Backend::state`] and [`Backend::weight`] read it once: the operator's word (2 bits),
/// the agent's word (2), its down (1), its percent (16), the operator's weight (9; 0: none),
/// the agent's maxconn + 1 (32; 0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Runtime {
    admin: Admin,
    weight_set: u32,
    agent: AgentState,
}

impl Runtime {
    const READY: Runtime = Runtime {
        admin: Admin::Ready,
        weight_set: 0,
        agent: AgentState {
            admin: Admin::Ready,
            down: false,
            percent: 100,
            maxconn: None,
        },
    };

    fn pack(self) -> u64 {
        u64::from(self.admin.code())
            | u64::from(self.agent.admin.code()) << 2
            | u64::from(self.agent.down) << 4
            | u64::from(self.agent.percent.min(0xffff)) << 5
            | u64::from(self.weight_set.min(0x1ff)) << 21
            | self
                .agent
                .maxconn
                .map_or(0, |m| u64::from(m) + 1)
                .min(0xffff_ffff)
                << 30
    }

    fn unpack(word: u64) -> Runtime {
        let maxconn = (word >> 30) & 0xffff_ffff;
        Runtime {
            admin: Admin::from_code((word & 3) as u8),
            weight_set: ((word >> 21) & 0x1ff) as u32,
            agent: AgentState {
                admin: Admin::from_code(((word >> 2) & 3) as u8),
                down: word & (1 << 4) != 0,
                percent: ((word >> 5) & 0xffff) as u32,
                maxconn: (maxconn != 0).then(|| (maxconn - 1) as u32),
            },
        }
    }

    /// Whether neither the operator nor the agent holds the backend out.
    fn ready(self) -> bool {
        self.admin == Admin::Ready && self.agent.admin == Admin::Ready && self.agent.percent > 0
    }
}

/// What the last health check and the last agent check said, for `/backends`, `tcplb ctl`
/// and the log (why a backend is down). Written by the control thread only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// The last health check: `ok`, `refused`, `timeout`, `expect "master" not found in 58
    /// bytes`, `status 503`, ...
    pub check: Option<String>,
    /// The last agent check: its words, or why it failed.
    pub agent: Option<String>,
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
    /// Set to drain (by `tcplb ctl` or its agent): no new sessions, live ones go on.
    Drain,
    /// In maintenance (by `tcplb ctl` or its agent): no new sessions, no health checks.
    Maint,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::HalfOpen { .. } => "half_open",
            State::Draining => "draining",
            State::Drain => "drain",
            State::Maint => "maint",
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
    /// The weight the configuration gives it.
    weight: AtomicU32,
    /// What `tcplb ctl` set (its state and weight) and what its agent last said
    /// ([`Runtime`], packed).
    runtime: AtomicU64,
    /// Its agent's port (0: none).
    agent_port: AtomicU32,
    /// One past when it last came back up (ms since the clock's epoch; 0: not ramping).
    up_since: AtomicU64,
    /// Its pool's slow-start window (ms; 0: off).
    slow_start: AtomicU64,
    /// Sessions it takes at once (0: no limit of its own): its agent's `maxconn:N` if it
    /// said one, else the configured one.
    maxconn: AtomicU32,
    /// The `maxconn` the configuration gives it (0: none).
    configured_maxconn: AtomicU32,
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
    /// An agent check is under way (the prober's own mark).
    agent_probing: AtomicBool,
    /// What the last checks said (the control thread's alone: never locked by a worker).
    notes: Mutex<Notes>,
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
            runtime: AtomicU64::new(Runtime::READY.pack()),
            agent_port: AtomicU32::new(u32::from(spec.agent_port.unwrap_or(0))),
            up_since: AtomicU64::new(0),
            slow_start: AtomicU64::new(0),
            maxconn: AtomicU32::new(spec.maxconn.unwrap_or(0)),
            configured_maxconn: AtomicU32::new(spec.maxconn.unwrap_or(0)),
            backup: AtomicBool::new(spec.backup),
            send_proxy: AtomicU8::new(proxy_code(spec.send_proxy)),
            removed: AtomicBool::new(false),
            breaker: SharedBreaker::default(),
            checks: SharedChecks::default(),
            seat: AtomicU64::new(u64::MAX),
            probing: AtomicBool::new(false),
            agent_probing: AtomicBool::new(false),
            notes: Mutex::new(Notes::default()),
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
        let runtime = self.runtime();
        match (runtime.admin, runtime.agent.admin) {
            (Admin::Maint, _) | (_, Admin::Maint) => return State::Maint,
            (Admin::Drain, _) | (_, Admin::Drain) => return State::Drain,
            _ if runtime.agent.percent == 0 => return State::Drain,
            _ => {}
        }
        if !self.checks_up() || runtime.agent.down {
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

    /// Counts a new session if it has room for one (below its `maxconn`): one atomic
    /// compare-and-swap, so two workers never both take its last slot.
    pub(crate) fn try_acquire(&self) -> bool {
        let max = self.maxconn.load(Ordering::Acquire);
        if max == 0 {
            self.acquire();
            return true;
        }
        let taken = self
            .load
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < max).then_some(a + 1)
            })
            .is_ok();
        if taken {
            self.load.picks.fetch_add(1, Ordering::AcqRel);
        }
        taken
    }

    /// Whether it would take one more session (below its `maxconn`, if it has one).
    pub fn has_room(&self) -> bool {
        let max = self.maxconn.load(Ordering::Acquire);
        max == 0 || self.active() < max
    }

    /// The `maxconn` the configuration gives it.
    pub fn configured_maxconn(&self) -> Option<u32> {
        match self.configured_maxconn.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    /// Its `maxconn` now (`None`: no limit of its own): its agent's, else the configured.
    pub fn maxconn(&self) -> Option<u32> {
        match self.maxconn.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn release(&self) {
        self.load.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Its weight now: the one `tcplb ctl set weight` gave it, else the configured one; as
    /// a percentage if its agent said one (at least 1, at most [`MAX_WEIGHT`]).
    pub fn weight(&self) -> u32 {
        self.weight_of(self.runtime())
    }

    fn weight_of(&self, runtime: Runtime) -> u32 {
        let base = match runtime.weight_set {
            0 => self.configured_weight(),
            set => set,
        };
        let percent = runtime.agent.percent;
        if percent == 100 {
            return base;
        }
        let scaled = (u64::from(base) * u64::from(percent) + 50) / 100;
        scaled.clamp(1, u64::from(MAX_WEIGHT)) as u32
    }

    /// [`Backend::weight`] and [`Backend::share`] at `now`, each word read once: what a
    /// selector's comparison needs.
    pub fn weight_and_share(&self, now: u64) -> (u32, u64) {
        let weight = self.weight_of(self.runtime());
        (
            weight,
            u64::from(weight) * self.ramp(now) * SHARE_UNIT / 1000,
        )
    }

    /// The weight the configuration gives it.
    pub fn configured_weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    /// The weight `tcplb ctl set weight` gave it, if any.
    pub fn weight_set(&self) -> Option<u32> {
        match self.runtime().weight_set {
            0 => None,
            n => Some(n),
        }
    }

    /// Sets (or with `None` clears) the operator's weight.
    pub fn set_weight(&self, weight: Option<u32>) {
        let w = weight.map_or(0, |w| w.clamp(1, MAX_WEIGHT));
        self.update_runtime(|r| r.weight_set = w);
    }

    fn runtime(&self) -> Runtime {
        Runtime::unpack(self.runtime.load(Ordering::Acquire))
    }

    /// Changes the runtime word atomically; returns it as it was.
    fn update_runtime(&self, change: impl Fn(&mut Runtime)) -> Runtime {
        let word = self
            .runtime
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let mut runtime = Runtime::unpack(word);
                change(&mut runtime);
                Some(runtime.pack())
            })
            .unwrap_or_else(|word| word);
        Runtime::unpack(word)
    }

    /// What selection compares: [`Backend::weight`] in thousandths ([`SHARE_UNIT`]), on
    /// the slow-start ramp if it came back up less than the pool's `slow-start` ago.
    pub fn share(&self, now: u64) -> u64 {
        u64::from(self.weight()) * self.ramp(now) * SHARE_UNIT / 1000
    }

    /// Where it is on the slow-start ramp at `now`, in thousandths of its weight: 1000
    /// once the ramp is over (or without slow start), from [`RAMP_FLOOR`] up before.
    pub fn ramp(&self, now: u64) -> u64 {
        let since = self.up_since.load(Ordering::Acquire);
        if since == 0 {
            return 1000;
        }
        let window = self.slow_start.load(Ordering::Acquire);
        if window == 0 {
            return 1000;
        }
        // (Stored one past the time it came up, so that 0 can mean "not ramping".)
        let elapsed = (now + 1).saturating_sub(since);
        if elapsed >= window {
            return 1000;
        }
        (elapsed * 1000 / window).max(RAMP_FLOOR)
    }

    /// Whether it is on the slow-start ramp at `now`.
    pub fn ramping(&self, now: u64) -> bool {
        self.ramp(now) < 1000
    }

    /// It has come back up at `now` (checks, breaker, `set state ready`, its agent, or
    /// added): with slow start, it ramps from here.
    pub fn came_up(&self, now: u64) {
        if self.slow_start.load(Ordering::Acquire) > 0 {
            self.up_since.store(now + 1, Ordering::Release);
        }
    }

    /// Once its ramp is over, forgets when it came up (so that [`Backend::share`] reads
    /// one word less from then on). Returns whether it is still ramping.
    pub fn settle_ramp(&self, now: u64) -> bool {
        if self.ramping(now) {
            return true;
        }
        self.up_since.store(0, Ordering::Release);
        false
    }

    /// Its pool's slow-start window (set with every generation built).
    pub(crate) fn set_slow_start(&self, window_ms: u64) {
        self.slow_start.store(window_ms, Ordering::Release);
        if window_ms == 0 {
            self.up_since.store(0, Ordering::Release);
        }
    }

    /// What `tcplb ctl set state` said.
    pub fn admin(&self) -> Admin {
        self.runtime().admin
    }

    /// Sets the operator's word; returns the one before.
    pub fn set_admin(&self, admin: Admin) -> Admin {
        self.update_runtime(|r| r.admin = admin).admin
    }

    /// Whether neither the operator nor its agent holds it out (drain, maint or `0%`):
    /// failing open never picks one they do.
    pub fn admin_ready(&self) -> bool {
        self.runtime().ready()
    }

    /// What its agent last said.
    pub fn agent(&self) -> AgentState {
        self.runtime().agent
    }

    /// Records what its agent said; returns what it had said before.
    pub fn set_agent(&self, state: AgentState) -> AgentState {
        let was = self.update_runtime(|r| r.agent = state).agent;
        self.apply_maxconn(state.maxconn);
        was
    }

    /// Its `maxconn` from now on: the agent's if it said one, else the configured one.
    fn apply_maxconn(&self, agent: Option<u32>) {
        let configured = self.configured_maxconn.load(Ordering::Acquire);
        self.maxconn
            .store(agent.unwrap_or(configured), Ordering::Release);
    }

    /// The port its agent answers on.
    pub fn agent_port(&self) -> Option<u16> {
        match self.agent_port.load(Ordering::Acquire) {
            0 => None,
            port => Some(port as u16),
        }
    }

    /// What the last checks said (a copy).
    pub fn notes(&self) -> Notes {
        self.notes
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |n| n.clone())
    }

    /// Records what the last check (`agent`: agent check) said.
    pub fn note(&self, agent: bool, text: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if agent {
            notes.agent = Some(text);
        } else {
            notes.check = Some(text);
        }
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
        // A file that changes the weight is newer news than a weight set at run time.
        if self.configured_weight() != spec.weight.max(1) {
            self.set_weight(None);
        }
        self.weight.store(spec.weight.max(1), Ordering::Release);
        self.agent_port
            .store(u32::from(spec.agent_port.unwrap_or(0)), Ordering::Release);
        self.configured_maxconn
            .store(spec.maxconn.unwrap_or(0), Ordering::Release);
        self.apply_maxconn(self.runtime().agent.maxconn);
        self.backup.store(spec.backup, Ordering::Release);
        self.send_proxy
            .store(proxy_code(spec.send_proxy), Ordering::Release);
    }

    /// Whether its options differ from `spec`'s.
    pub(crate) fn options_differ(&self, spec: &ResolvedBackend) -> bool {
        self.configured_weight() != spec.weight.max(1)
            || self.configured_maxconn() != spec.maxconn
            || self.is_backup() != spec.backup
            || self.send_proxy() != spec.send_proxy
            || self.agent_port() != spec.agent_port
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

    /// An agent check is under way.
    pub fn is_agent_probing(&self) -> bool {
        self.agent_probing.load(Ordering::Acquire)
    }

    pub fn set_agent_probing(&self, probing: bool) {
        self.agent_probing.store(probing, Ordering::Release);
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

    /// `self.active / self.share` compared with `other`'s at `now`, without dividing:
    /// `Less` if `self` is less loaded.
    pub fn compare_load(&self, other: &Backend, now: u64) -> std::cmp::Ordering {
        // Sessions (u32) times a share (at most 256 × SHARE_UNIT): no overflow in u64.
        let (a, wa) = (u64::from(self.active()), self.share(now));
        let (b, wb) = (u64::from(other.active()), other.share(now));
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

    /// The options of a backend at 127.0.0.1:80 of weight 1 and nothing else.
    fn plain_spec() -> ResolvedBackend {
        let addr: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        ResolvedBackend {
            addr,
            name: addr.to_string(),
            weight: 1,
            backup: false,
            send_proxy: None,
            agent_port: None,
            maxconn: None,
        }
    }

    fn backend() -> Backend {
        Backend::new(1, &plain_spec())
    }

    #[test]
    fn an_agents_maxconn_stands_for_the_configured_one_while_it_says_so() {
        let b = backend();
        let mut spec = ResolvedBackend {
            agent_port: Some(81),
            maxconn: Some(2),
            ..plain_spec()
        };
        b.set_options(&spec);
        assert_eq!(b.maxconn(), Some(2));
        b.set_agent(AgentState {
            maxconn: Some(1),
            ..AgentState::default()
        });
        assert_eq!((b.maxconn(), b.configured_maxconn()), (Some(1), Some(2)));
        assert!(b.try_acquire());
        assert!(!b.try_acquire(), "the agent's limit of 1 holds");
        // A reload that changes the configured limit does not undo the agent's word.
        spec.maxconn = Some(3);
        b.set_options(&spec);
        assert_eq!(b.maxconn(), Some(1));
        // The agent stops saying it: the configured limit again.
        b.set_agent(AgentState::default());
        assert_eq!(b.maxconn(), Some(3));
        assert!(b.try_acquire());
        b.release();
        b.release();
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
        let checks = &CheckPolicy::connect(Duration::from_secs(1), 1, 1, Duration::from_secs(3));
        b.checks().record(false, checks);
        assert_eq!(b.state(0), State::Down);
        b.checks().record(true, checks);
        b.set_removed(true);
        assert_eq!(b.state(0), State::Draining);
        assert_eq!(State::Draining.as_str(), "draining");
    }

    #[test]
    fn the_operator_and_the_agent_hold_a_backend_out_and_weigh_it() {
        let b = backend();
        for (admin, state) in [
            (Admin::Drain, State::Drain),
            (Admin::Maint, State::Maint),
            (Admin::Ready, State::Up),
        ] {
            b.set_admin(admin);
            assert_eq!(b.state(0), state);
            assert_eq!(b.state(0).takes_sessions(), admin == Admin::Ready);
            assert_eq!(b.admin_ready(), admin == Admin::Ready);
        }
        let agent = |admin, down, percent| AgentState {
            admin,
            down,
            percent,
            maxconn: None,
        };
        b.set_agent(agent(Admin::Drain, false, 100));
        assert_eq!(b.state(0), State::Drain);
        b.set_agent(agent(Admin::Ready, true, 100));
        assert_eq!(b.state(0), State::Down);
        assert!(b.admin_ready(), "down is health, not the operator's word");
        b.set_agent(agent(Admin::Ready, false, 0));
        assert_eq!(b.state(0), State::Drain, "0% drains");
        // Weights: configured, set at run time, then the agent's percentage of it.
        b.set_agent(AgentState::default());
        assert_eq!((b.configured_weight(), b.weight()), (1, 1));
        b.set_weight(Some(4));
        assert_eq!(b.weight(), 4);
        b.set_agent(agent(Admin::Ready, false, 50));
        assert_eq!(b.weight(), 2);
        b.set_agent(agent(Admin::Ready, false, 10));
        assert_eq!(b.weight(), 1, "never below 1");
        b.set_agent(agent(Admin::Ready, false, 10_000));
        assert_eq!(b.weight(), MAX_WEIGHT, "never above the most");
        b.set_agent(AgentState::default());
        // A file that changes the configured weight wins over the one set at run time.
        let mut spec = plain_spec();
        b.set_options(&spec);
        assert_eq!(b.weight_set(), Some(4), "unchanged in the file: kept");
        spec.weight = 3;
        b.set_options(&spec);
        assert_eq!((b.weight_set(), b.weight()), (None, 3));
    }

    #[test]
    fn slow_start_ramps_the_share_from_almost_nothing() {
        let b = backend();
        assert_eq!(b.share(0), SHARE_UNIT);
        b.came_up(1_000);
        assert!(!b.ramping(1_000), "no slow start: no ramp");
        b.set_slow_start(2_000);
        b.came_up(1_000);
        assert_eq!(b.ramp(1_000), RAMP_FLOOR);
        assert_eq!(b.ramp(2_000), 500);
        assert_eq!(b.share(2_000), SHARE_UNIT / 2);
        assert!(b.ramping(2_999));
        assert_eq!(b.ramp(3_000), 1000);
        assert!(!b.ramping(3_000));
        b.came_up(5_000);
        b.set_slow_start(0);
        assert!(!b.ramping(5_000), "turned off: no ramp left");
    }

    #[test]
    fn the_runtime_word_packs() {
        for runtime in [
            Runtime::READY,
            Runtime {
                admin: Admin::Drain,
                weight_set: MAX_WEIGHT,
                agent: AgentState {
                    admin: Admin::Maint,
                    down: true,
                    percent: 0,
                    maxconn: Some(0),
                },
            },
            Runtime {
                admin: Admin::Maint,
                weight_set: 1,
                agent: AgentState {
                    admin: Admin::Drain,
                    down: false,
                    percent: 0xffff,
                    maxconn: Some(u32::MAX - 1),
                },
            },
        ] {
            assert_eq!(Runtime::unpack(runtime.pack()), runtime);
        }
        assert_eq!(AgentState::default(), Runtime::READY.agent);
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
