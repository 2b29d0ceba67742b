//! The event loop: one `mio::Poll` on one thread, in the shape of Python's `selectors`
//! pattern. Each turn waits for readiness, then dispatches by token:
//!
//! | token | handler |
//! |---|---|
//! | the listener | [`Reactor::accept_clients`] → a new [`Session`] (or shed) |
//! | the admin listener | [`Reactor::accept_admin`] → a new [`AdminConn`] |
//! | signals | SIGHUP: reload; SIGTERM/SIGINT: drain, then exit |
//! | the waker | a new backend set from the discovery thread |
//! | a slab entry (slot, socket and generation in one word) | that [`Conn`]'s handler |
//!
//! then runs sessions that were waiting for a buffer or had used up their turn, then fires
//! due timers, then hands the access log its lines.
//!
//! Sockets are registered once, for both directions, edge-triggered; connections remember
//! readiness themselves. A connection ended by one event is removed at once: its slot may be
//! reused within the same batch, but the generation in its tokens tells a late event apart.

use crate::access_log::AccessLog;
use crate::admin::{self, AdminConn};
use crate::balancer::Balancer;
use crate::context::{ConnId, Context, Settings, Stats, Throttles, TimerKey};
use crate::discovery::{Cause, Discovery, Plan};
use crate::logging::suppressed_note;
use crate::net;
use crate::pool::Pool;
use crate::probe::Probe;
use crate::session::{EndReason, Rejected, Session, SessionSummary, Side, Status};
use crate::timer::{TimerId, Timers};
use log::{debug, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const LISTENER: Token = Token(usize::MAX);
const ADMIN_LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Events taken from the kernel per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Clients accepted per turn before the loop serves the sessions it has.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after running out of descriptors (unless a session ends first).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// New clients are shed when fewer than 1/SHED_POOL_FRACTION of the buffers are free.
const SHED_POOL_FRACTION: usize = 20;

/// What a slab entry is: a connection with a handler.
// Sessions are by far the most numerous entries: boxing them to shrink the others would cost
// an allocation per session.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Session(Session),
    Probe(Probe),
    Admin(AdminConn),
}

impl Conn {
    fn id(&self) -> ConnId {
        match self {
            Conn::Session(s) => s.id(),
            Conn::Probe(p) => p.id(),
            Conn::Admin(a) => a.id(),
        }
    }
}

/// Catches the signals the loop handles. Called first thing at start, so that a SIGHUP or
/// SIGTERM during start-up (resolving names, allocating the pool) is held for the loop
/// instead of killing the process with the default action.
pub fn catch_signals() -> io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// Everything the loop needs to start.
pub struct ReactorConfig {
    pub settings: Settings,
    /// SIGTERM, SIGINT and SIGHUP, caught since the process started (see [`catch_signals`]):
    /// a signal that came during start-up is handled once the loop runs.
    pub signals: Signals,
    /// The buffer pool, allocated by the caller (a failed allocation is a start-up error).
    pub pool: Pool,
    pub drain_timeout: Duration,
    /// A bound admin listener, if `--admin` is on.
    pub admin: Option<TcpListener>,
    pub access_log: Option<AccessLog>,
    /// What the discovery thread starts from.
    pub discovery: Plan,
}

pub struct Reactor {
    poll: Poll,
    events: Events,
    /// `None` once draining: new clients are refused by the kernel.
    listener: Option<TcpListener>,
    /// The listener may have clients waiting (its edge has not been drained).
    listener_ready: bool,
    /// Accepting is paused for lack of descriptors; a timer (or a session ending) resumes it.
    accept_paused: bool,
    resume_accept_timer: Option<TimerId>,
    admin: Option<admin::Endpoint>,
    signals: Signals,
    discovery: Discovery,
    conns: Slab<Conn>,
    next_generation: u32,
    ctx: Context,
    fired: Vec<TimerKey>,
    resumable: Vec<ConnId>,
    draining: bool,
    drain_timeout: Duration,
    exiting: bool,
}

impl Reactor {
    /// Sets up the loop around a bound listener and starts the discovery thread.
    pub fn new(
        mut listener: TcpListener,
        balancer: Balancer,
        config: ReactorConfig,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let admin = match config.admin {
            Some(listener) => Some(admin::Endpoint::new(
                listener,
                poll.registry(),
                ADMIN_LISTENER,
            )?),
            None => None,
        };
        let mut signals = config.signals;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let discovery = Discovery::spawn(config.discovery, waker)?;

        let now = Instant::now();
        // Room for every session up front: address space only (pages are touched as sessions
        // fill them), and the slabs never have to move their entries to grow.
        let max_conns = config.settings.max_conns;
        let mut ctx = Context {
            registry: poll.registry().try_clone()?,
            pool: config.pool,
            balancer,
            timers: Timers::with_capacity(now, max_conns + 64),
            now,
            started: SystemTime::now(),
            settings: config.settings,
            stats: Stats::new(),
            throttles: Throttles::default(),
            buffer_waiters: VecDeque::new(),
            run_queue: Vec::new(),
            fds_exhausted: false,
            access_log: config.access_log,
        };
        if ctx.balancer.check_policy().is_some() {
            ctx.timers.insert(now, TimerKey::HealthRound);
        }
        Ok(Reactor {
            poll,
            events: Events::with_capacity(EVENTS_PER_WAIT),
            listener: Some(listener),
            listener_ready: true,
            accept_paused: false,
            resume_accept_timer: None,
            admin,
            signals,
            discovery,
            conns: Slab::with_capacity(max_conns + admin::MAX_ADMIN_CONNS),
            next_generation: 0,
            ctx,
            fired: Vec::new(),
            resumable: Vec::new(),
            draining: false,
            drain_timeout: config.drain_timeout,
            exiting: false,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The admin endpoint's address, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Runs until shut down by a signal (Ok) or a fatal poll error.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.exiting {
            self.turn()?;
        }
        // Writes out the last access log lines.
        self.ctx.access_log = None;
        Ok(())
    }

    /// One turn of the loop: wait, dispatch, run deferred work, fire timers.
    pub fn turn(&mut self) -> io::Result<()> {
        let timeout = if self.has_pending_work() {
            Some(Duration::ZERO)
        } else {
            self.ctx.timers.next_timeout(Instant::now())
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.ctx.now = Instant::now();

        // Take the events out so handlers can borrow `self` mutably; put them back after.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                LISTENER => self.listener_ready = true,
                ADMIN_LISTENER => {
                    if let Some(admin) = &mut self.admin {
                        admin.set_ready();
                    }
                }
                SIGNALS => self.on_signals(),
                WAKER => self.on_discovery(),
                token => self.dispatch(token, event),
            }
        }
        self.events = events;
        if self.listener_ready && !self.accept_paused {
            self.accept_clients();
        }
        if self.admin.as_ref().is_some_and(admin::Endpoint::is_ready) {
            self.accept_admin();
        }
        self.run_deferred();
        self.fire_timers();
        if let Some(log) = &mut self.ctx.access_log {
            log.flush();
        }
        Ok(())
    }

    fn has_pending_work(&self) -> bool {
        !self.ctx.run_queue.is_empty()
            || (self.listener_ready && !self.accept_paused && self.listener.is_some())
            || (!self.ctx.buffer_waiters.is_empty() && self.ctx.pool.free() > 0)
            || self.admin.as_ref().is_some_and(admin::Endpoint::is_ready)
    }

    fn dispatch(&mut self, token: Token, event: &Event) {
        let (id, socket) = ConnId::from_token(token);
        let Some(conn) = self.conns.get_mut(id.slot as usize) else {
            return;
        };
        if conn.id() != id {
            return; // a late event for a connection that has ended
        }
        match conn {
            Conn::Session(session) => {
                let status = session.on_ready(Side::from_socket(socket), event, &mut self.ctx);
                self.settle(id, status);
            }
            Conn::Probe(probe) => {
                if let Some(result) = probe.on_ready(event) {
                    self.end_probe(id, result);
                }
            }
            Conn::Admin(_) => self.serve_admin(id),
        }
    }

    /// Removes a session that a handler reported closed.
    fn settle(&mut self, id: ConnId, status: Status) {
        if let Status::Closed(reason) = status {
            if let Conn::Session(session) = self.conns.remove(id.slot as usize) {
                self.end_session(session, reason);
            }
        }
    }

    fn end_session(&mut self, session: Session, reason: EndReason) {
        let summary = session.finish(&mut self.ctx);
        self.ctx.stats.sessions -= 1;
        self.ctx
            .stats
            .session_duration
            .observe(summary.duration.as_secs_f64());
        self.record(&summary, reason);
        // Descriptors were freed: a paused listener may go on.
        if self.accept_paused {
            self.resume_accepting();
        }
        if self.draining && self.ctx.stats.sessions == 0 && reason != EndReason::Shutdown {
            info!("drained: every session has finished; exiting");
            self.exiting = true;
        }
    }

    /// Counts, logs and writes the access log line for a finished (or refused) client.
    fn record(&mut self, summary: &SessionSummary, reason: EndReason) {
        debug!(
            "{} via {}: {} after {:?}, {} bytes up, {} down",
            summary.client_addr,
            summary
                .backend
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            reason.as_str(),
            summary.duration,
            summary.bytes_up,
            summary.bytes_down
        );
        if reason == EndReason::NoBackend {
            self.ctx.stats.no_backend += 1;
            if let Some(n) = self.ctx.throttles.no_backend.allow(self.ctx.now) {
                warn!(
                    "no backend could take client {}{}",
                    summary.client_addr,
                    suppressed_note(n)
                );
            }
        }
        if let Some(log) = &mut self.ctx.access_log {
            log.record(summary, reason, SystemTime::now());
        }
    }

    /// A client closed before it became a session (shed, or no backend).
    fn record_refused(&mut self, client: SocketAddr, reason: EndReason, attempts: u32) {
        let summary = SessionSummary {
            client_addr: client,
            backend: None,
            connect_time: None,
            duration: Duration::ZERO,
            bytes_up: 0,
            bytes_down: 0,
            retries: attempts.saturating_sub(1),
        };
        self.record(&summary, reason);
    }

    /// Accepts waiting clients, up to a turn's worth.
    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e) if net::is_transient_accept_error(&e) => {}
                Err(e) => {
                    self.ctx.stats.accept_errors += 1;
                    if let Some(n) = self.ctx.throttles.accept.allow(self.ctx.now) {
                        warn!(
                            "accept failed: {e}; pausing accepts for {ACCEPT_PAUSE:?}{}",
                            suppressed_note(n)
                        );
                    }
                    self.pause_accepting();
                    return;
                }
            }
            if self.ctx.fds_exhausted {
                self.pause_accepting();
                return;
            }
        }
    }

    fn pause_accepting(&mut self) {
        self.ctx.fds_exhausted = false;
        if !self.accept_paused {
            self.accept_paused = true;
            self.resume_accept_timer = Some(
                self.ctx
                    .timers
                    .insert(self.ctx.now + ACCEPT_PAUSE, TimerKey::ResumeAccept),
            );
        }
    }

    fn resume_accepting(&mut self) {
        self.accept_paused = false;
        if let Some(timer) = self.resume_accept_timer.take() {
            self.ctx.timers.cancel(timer);
        }
    }

    /// Turns a new client into a session, or sheds it: past `--max-conns`, or when the
    /// buffer pool is nearly empty (a session admitted then could not move bytes).
    fn admit(&mut self, client: TcpStream, addr: SocketAddr) {
        self.ctx.stats.accepted += 1;
        let shed = if self.ctx.stats.sessions >= self.ctx.settings.max_conns {
            self.ctx.stats.shed_max_conns += 1;
            Some("shed_max_conns")
        } else if self.ctx.pool.free() * SHED_POOL_FRACTION < self.ctx.pool.capacity() {
            self.ctx.stats.shed_pool += 1;
            Some("shed_pool")
        } else {
            None
        };
        if let Some(why) = shed {
            debug!("{addr}: {why}, {} sessions open", self.ctx.stats.sessions);
            if let Some(n) = self.ctx.throttles.shed.allow(self.ctx.now) {
                warn!(
                    "shedding new clients ({why}): {} sessions open, {} of {} buffers free{}",
                    self.ctx.stats.sessions,
                    self.ctx.pool.free(),
                    self.ctx.pool.capacity(),
                    suppressed_note(n)
                );
            }
            net::reset_on_close(&client);
            let reason = if why == "shed_pool" {
                EndReason::ShedPool
            } else {
                EndReason::ShedMaxConns
            };
            self.record_refused(addr, reason, 0);
            return;
        }
        let id = self.next_id();
        match Session::start(id, client, addr, &mut self.ctx) {
            Ok(session) => {
                self.conns.insert(Conn::Session(session));
                self.ctx.stats.sessions += 1;
            }
            Err(Rejected {
                client,
                reason,
                attempts,
            }) => {
                drop(client);
                self.record_refused(addr, reason, attempts);
            }
        }
    }

    /// The id the next slab insert will get.
    fn next_id(&mut self) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        ConnId {
            slot: self.conns.vacant_key() as u32,
            generation: self.next_generation,
        }
    }

    /// Accepts admin connections, up to a turn's worth. When every slot is taken, the
    /// connection doing least makes room ([`AdminConn::eviction_rank`]), so idle or slow
    /// clients cannot lock a probe out. A new connection is served at once: its request is
    /// usually there already, and it is then no longer the idlest.
    fn accept_admin(&mut self) {
        for _ in 0..admin::ACCEPTS_PER_TURN {
            let Some(endpoint) = &mut self.admin else {
                return;
            };
            let (stream, addr) = match endpoint.accept() {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => {
                    if let Some(n) = self.ctx.throttles.accept.allow(self.ctx.now) {
                        warn!("admin accept failed: {e}{}", suppressed_note(n));
                    }
                    return;
                }
            };
            if endpoint.is_full() {
                let victim = endpoint
                    .open()
                    .iter()
                    .filter_map(|&id| match self.conns.get(id.slot as usize) {
                        Some(Conn::Admin(conn)) if conn.id() == id => Some(conn),
                        _ => None,
                    })
                    .min_by_key(|conn| conn.eviction_rank())
                    .map(AdminConn::id);
                if let Some(victim) = victim {
                    debug!("admin {addr}: every admin slot taken; closing the idlest");
                    self.end_admin(victim);
                }
            }
            let id = self.next_id();
            match AdminConn::new(id, stream, &mut self.ctx) {
                Ok(conn) => {
                    self.conns.insert(Conn::Admin(conn));
                    if let Some(endpoint) = &mut self.admin {
                        endpoint.added(id);
                    }
                    self.serve_admin(id);
                }
                Err(e) => debug!("admin {addr}: {e}"),
            }
        }
    }

    /// Runs an admin connection's handler; removes it once it is done.
    fn serve_admin(&mut self, id: ConnId) {
        let (Some(Conn::Admin(conn)), Some(endpoint)) =
            (self.conns.get_mut(id.slot as usize), &mut self.admin)
        else {
            return;
        };
        if conn.id() == id && conn.on_ready(&mut self.ctx, endpoint.shared()) {
            self.end_admin(id);
        }
    }

    fn end_admin(&mut self, id: ConnId) {
        if let Conn::Admin(conn) = self.conns.remove(id.slot as usize) {
            conn.finish(&mut self.ctx);
            if let Some(endpoint) = &mut self.admin {
                endpoint.removed(id);
            }
        }
    }

    /// Probes every backend that has no probe under way.
    fn health_round(&mut self) {
        let Some(policy) = self.ctx.balancer.check_policy() else {
            return;
        };
        if self.draining {
            return;
        }
        let backends: Vec<_> = self
            .ctx
            .balancer
            .backends()
            .iter()
            .filter(|b| !b.is_probing())
            .cloned()
            .collect();
        for backend in backends {
            let id = self.next_id();
            match Probe::start(id, std::rc::Rc::clone(&backend), &mut self.ctx) {
                Ok(probe) => {
                    self.conns.insert(Conn::Probe(probe));
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    if let Some(n) = self.ctx.throttles.fds.allow(self.ctx.now) {
                        warn!(
                            "cannot open a health check socket: {e}{}",
                            suppressed_note(n)
                        );
                    }
                }
                Err(e) => self.ctx.balancer.probe_result(&backend, &Err(e)),
            }
        }
        self.ctx
            .timers
            .insert(self.ctx.now + policy.interval, TimerKey::HealthRound);
    }

    fn end_probe(&mut self, id: ConnId, result: io::Result<()>) {
        if let Conn::Probe(probe) = self.conns.remove(id.slot as usize) {
            let backend = std::rc::Rc::clone(probe.backend());
            probe.finish(&mut self.ctx);
            self.ctx.balancer.probe_result(&backend, &result);
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGHUP if !self.draining => {
                    info!("SIGHUP: reloading the backend set");
                    self.discovery.reload();
                }
                SIGHUP => {}
                _ if self.draining => {
                    warn!("second signal: exiting now");
                    self.cut_sessions();
                    self.exiting = true;
                }
                _ => self.begin_drain(if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                }),
            }
        }
    }

    /// Stops accepting (the listener is closed, so new clients are refused) and lets live
    /// sessions finish for up to `--drain-timeout`.
    fn begin_drain(&mut self, signal: &str) {
        self.draining = true;
        if let Some(admin) = &mut self.admin {
            admin.set_draining();
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let sessions = self.ctx.stats.sessions;
        if sessions == 0 {
            info!("{signal}: no sessions open; exiting");
            self.exiting = true;
            return;
        }
        info!(
            "{signal}: stopped accepting; draining {sessions} sessions for up to {:?}",
            self.drain_timeout
        );
        self.ctx
            .timers
            .insert(self.ctx.now + self.drain_timeout, TimerKey::DrainDeadline);
    }

    /// Resets every open session (at exit: a cut transfer must not look complete).
    fn cut_sessions(&mut self) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(_, c)| match c {
                Conn::Session(s) => Some(s.id()),
                _ => None,
            })
            .collect();
        if !ids.is_empty() {
            warn!("cutting {} sessions still open", ids.len());
        }
        for id in ids {
            if let Conn::Session(session) = self.conns.remove(id.slot as usize) {
                session.abort();
                self.end_session(session, EndReason::Shutdown);
            }
        }
    }

    fn on_discovery(&mut self) {
        while let Some(update) = self.discovery.next_update() {
            let what = match update.cause {
                Cause::Reload => "reload",
                Cause::Resolve => "re-resolve",
            };
            match update.result {
                Ok(set) => {
                    let changes = self.ctx.balancer.apply(&set);
                    let total = self.ctx.balancer.backends().len();
                    info!(
                        "{what}: {} added, {} removed, {} changed; {total} backends",
                        changes.added, changes.removed, changes.updated
                    );
                    if total == 0 {
                        warn!("{what}: the backend set is empty; new clients will be closed");
                    }
                }
                Err(message) => warn!("{what} failed, keeping the running set: {message}"),
            }
        }
    }

    /// Runs sessions that had used up their turn, then those waiting for a buffer while
    /// buffers are free.
    fn run_deferred(&mut self) {
        std::mem::swap(&mut self.resumable, &mut self.ctx.run_queue);
        let mut queue = std::mem::take(&mut self.resumable);
        for id in queue.drain(..) {
            self.resume(id, true);
        }
        self.resumable = queue;
        while self.ctx.pool.free() > 0 {
            let Some(id) = self.ctx.buffer_waiters.pop_front() else {
                break;
            };
            self.resume(id, false);
        }
    }

    fn resume(&mut self, id: ConnId, from_run_queue: bool) {
        if let Some(Conn::Session(session)) = self.conns.get_mut(id.slot as usize) {
            if session.id() == id {
                let status = session.resume(from_run_queue, &mut self.ctx);
                self.settle(id, status);
            }
        }
    }

    fn fire_timers(&mut self) {
        self.ctx.timers.expire(self.ctx.now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn(id) => self.on_conn_timer(id),
                TimerKey::ResumeAccept => {
                    self.resume_accept_timer = None;
                    self.accept_paused = false;
                }
                TimerKey::HealthRound => self.health_round(),
                TimerKey::DrainDeadline => {
                    warn!("drain timeout ({:?}) reached", self.drain_timeout);
                    self.cut_sessions();
                    self.exiting = true;
                }
            }
        }
        self.fired = fired;
    }

    fn on_conn_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.slot as usize) else {
            return;
        };
        if conn.id() != id {
            return;
        }
        match conn {
            Conn::Session(session) => {
                let status = session.on_timer(&mut self.ctx);
                self.settle(id, status);
            }
            Conn::Probe(probe) => {
                let error = probe.timed_out();
                self.end_probe(id, Err(error));
            }
            Conn::Admin(admin) => {
                if admin.on_timer(&mut self.ctx) {
                    self.end_admin(id);
                }
            }
        }
    }

    /// Sessions open right now.
    pub fn sessions(&self) -> usize {
        self.ctx.stats.sessions
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}
