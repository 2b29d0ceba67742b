//! One client/backend pair and its state machine.
//!
//! ```text
//!   start ─┬─(--accept-proxy)─► Header ──complete──┐    bad, cut short, too slow ──► reset
//!          ├────────────────────────────────────────┤
//!          │             ┌─────(routes)─────────────┴─► Hello ──a route, or the service's
//!          │             │                                 │    own pool (no route matched,
//!          │             │        no route, no pool: reset ◄┤    not TLS, too big, too slow)
//!          └─────────────┴─(no routes)─────────────────────┴─► Connecting ──writable──► Established
//!                │  ▲    (a send-proxy backend is sent its header first)           │
//!   refused,     │  │ next backend                                                 │
//!   unreachable, ▼  │                  both directions done, or a reset / error on ◄─┘
//!   timed out ── retry ──no backend left──► closed at once    either side ──► closed
//! ```
//!
//! Nothing is read from the client until the backend is connected: its first bytes wait in
//! the kernel, so a retry loses none of them and a connecting session holds no buffer.
//! Once established, a [`Duplex`] moves the bytes both ways. With `--accept-proxy` the
//! client's PROXY protocol header is taken first, exactly it and no byte more
//! ([`proxy_header`]): the backend is chosen for the client it names. A service with
//! `routes` then looks at the client's TLS ClientHello without taking it off the socket
//! ([`hello`]) and connects the pool its server name and protocols ask for; a service
//! without routes never looks at the client's bytes.
//!
//! Handlers return a [`Report`] of what happened (closed and why, needs a buffer, used up
//! its turn); the worker acts on it.

use crate::fleet::lease::Lease;
use crate::fleet::queue::{Class, Ticket, Waiter};
use crate::fleet::select::PickRequest;
use crate::fleet::{Fleet, PoolId, Unavailable, Verdict};
use crate::net;
use crate::reactor::ConnId;
use crate::reactor::timer::TimerId;
use crate::service::sources::{Counted, Limited};
use crate::service::{Service, ServiceStats, Target};
use crate::stats::{EndReason, ProxyError, SessionSummary, TlsInspect};
use crate::worker::direction::Pools;
use crate::worker::duplex::{Duplex, Side};
use crate::worker::fast::Pair;
use crate::worker::hello::{self, Inspected};
use crate::worker::proxy_header::{self, Received};
use crate::worker::queueing;
use crate::worker::{Env, TimerKey};
use log::{debug, warn};
use mio::event::Event;
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What a handler did to the session, for the worker to act on.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Report {
    /// The session is over, and why.
    pub closed: Option<EndReason>,
    /// Waiting for a pool buffer.
    pub need_buffer: bool,
    /// Used up its turn with work left.
    pub yielded: bool,
}

impl Report {
    fn closed(reason: EndReason) -> Report {
        Report {
            closed: Some(reason),
            ..Report::default()
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's PROXY protocol header (`--accept-proxy`).
    Header,
    /// Waiting for the client's TLS ClientHello (a service with routes): `needed` bytes must
    /// be queued before it is looked at again (0: not looked at yet).
    Hello {
        needed: u32,
    },
    /// Waiting for a non-blocking connect; counts the attempts made for this client, and
    /// the bytes of the backend's PROXY protocol header written so far.
    Connecting {
        attempts: u32,
        header_sent: u8,
    },
    /// Every backend was at its `maxconn`: waiting in pool `pool`'s queue since `since`,
    /// holding no buffer and no backend socket, the client's bytes left in the kernel.
    Queued {
        attempts: u32,
        ticket: Ticket,
        pool: PoolId,
        since: Instant,
    },
    Established,
}

pub struct Session {
    id: ConnId,
    /// The service whose listener the client came to.
    service: Arc<Service>,
    client: TcpStream,
    /// `None` until the first backend is dialled.
    backend: Option<TcpStream>,
    duplex: Duplex,
    /// `None` only while being replaced or once finished.
    lease: Option<Lease>,
    phase: Phase,
    /// Backends (ids) whose connect failed for this client (empty, unallocated, usually).
    tried: Vec<u64>,
    timer: Option<TimerId>,
    /// Last time a byte moved either way.
    last_active: Instant,
    started: Instant,
    /// How long the successful connect took (from the session's start).
    connect_time: Option<Duration>,
    /// The backend's first-response time, as far as it is known.
    first_response: FirstResponse,
    /// The client: its peer address, or the source its PROXY protocol header named.
    client_addr: SocketAddr,
    /// The destination its PROXY protocol header named (`None`: our own address).
    proxied_to: Option<SocketAddr>,
    /// Its priority class (from its source, once known).
    class: Class,
    /// How long it waited in its pool's queue, in all.
    queue_wait: Option<Duration>,
    /// Its place in its source's count (per-source limits).
    source: Option<Counted>,
    /// Where it goes: the service's pool, or the one its route names (`None`: not chosen
    /// yet, or nowhere).
    target: Option<Target>,
    /// With routes: what the client's first bytes were, and the server name it asked for.
    tls: Option<(TlsInspect, Option<Arc<str>>)>,
    /// Queued in the worker's buffer waiters.
    pub(crate) waiting_for_buffer: bool,
    /// Queued in the worker's run queue.
    pub(crate) queued: bool,
    /// The kernel fast path: its pair of slots once linked ([`Pair::to_word`]; 0: not
    /// linked), [`NEVER_LINK`] once it cannot be.
    fast: u32,
}

/// [`Session::fast`] of a session that will not be linked.
const NEVER_LINK: u32 = u32::MAX;

/// Bytes a session may move while it waits to be linked (without splicing, which would read
/// past the kernel's program); past them it stays in user space.
const LINK_WITHIN: u64 = 1 << 20;

/// Where the measure of the backend's first-response time stands: nothing sent to it yet,
/// the client's first bytes sent at a time, or measured (what least-latency learns from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstResponse {
    NotSent,
    Sent(Instant),
    Measured(Duration),
}

/// A client that could not be given a session; the caller closes it.
#[derive(Debug)]
pub struct Rejected {
    pub client: TcpStream,
    pub reason: EndReason,
    /// What it came to, for the counters and the access log (`None`: nothing yet).
    pub summary: Option<Box<SessionSummary>>,
}

impl Session {
    /// Starts a session for an accepted client: leases a backend and begins connecting,
    /// trying others (up to `--retries`) if a connect fails at once. On failure the client
    /// socket is handed back so the caller can close it.
    pub fn start(
        id: ConnId,
        mut client: TcpStream,
        client_addr: SocketAddr,
        service: Arc<Service>,
        env: &mut Env,
    ) -> Result<Session, Rejected> {
        if let Err(e) = net::prepare_client(&client).and_then(|()| {
            env.registry.register(
                &mut client,
                id.token(Side::Client as usize),
                net::session_interest(),
            )
        }) {
            debug!("client {client_addr}: {e}");
            return Err(Rejected {
                client,
                reason: EndReason::NoResources,
                summary: None,
            });
        }
        let class = service.class_of(client_addr.ip());
        let service_pool = service.pool;
        let mut session = Session {
            id,
            service,
            client,
            backend: None,
            duplex: Duplex::default(),
            lease: None,
            phase: Phase::Header,
            tried: Vec::new(),
            timer: None,
            last_active: env.now,
            started: env.now,
            connect_time: None,
            first_response: FirstResponse::NotSent,
            class,
            client_addr,
            proxied_to: None,
            queue_wait: None,
            source: None,
            target: service_pool,
            tls: None,
            waiting_for_buffer: false,
            queued: false,
            fast: 0,
        };
        if let Some(timeout) = session.service.accept_proxy {
            // The header's readable edge comes with the next poll (registering a socket
            // that has bytes waiting raises one).
            session.timer = Some(env.timers.insert(env.now + timeout, TimerKey::Conn(id)));
            return Ok(session);
        }
        let admitted = session.admit(env).and_then(|()| {
            if session.service.routing.is_some() {
                // Its listener defers accepting until the client's first bytes have come
                // (`TCP_DEFER_ACCEPT`): the hello is most likely here already, so look at
                // once and dial in this turn. If not, its edge comes with the next poll.
                session.await_hello(env);
                session.duplex.client_ready.readable = true;
                return match session.take_hello(env).closed {
                    Some(reason) => Err(reason),
                    None => Ok(()),
                };
            }
            session.connect(env)
        });
        match admitted {
            Ok(()) => Ok(session),
            Err(reason) => {
                // What it took is given back: its timer, its place in a queue and its
                // source's count (a refused client must not hold its source's slot).
                session.release(env);
                Err(Rejected {
                    summary: Some(Box::new(session.summary(env.now))),
                    client: session.client,
                    reason,
                })
            }
        }
    }

    /// The client is known (its PROXY protocol header, if any, taken): its class, and its
    /// source's limits; a client past them is reset. Comes before its hello is waited for,
    /// so a source past its limits holds nothing for `sni-timeout`.
    fn admit(&mut self, env: &mut Env) -> Result<(), EndReason> {
        let client = self.client_addr.ip();
        self.class = self.service.class_of(client);
        let Some((limits, table)) = &self.service.sources else {
            return Ok(());
        };
        match table.admit(limits, client, env.now_ms) {
            Ok(counted) => {
                self.source = counted;
                Ok(())
            }
            Err(limited) => {
                let stats = &self.service.stats;
                let (counter, reason) = match limited {
                    Limited::Conns => (&stats.limited_conns, EndReason::LimitedConns),
                    Limited::Rate => (&stats.limited_rate, EndReason::LimitedRate),
                };
                ServiceStats::add(counter, 1);
                debug!("client {}: {}", self.client_addr, limited.as_str());
                net::reset_on_close(&self.client);
                Err(reason)
            }
        }
    }

    /// Waits for the client's ClientHello, for up to the service's `sni-timeout`.
    fn await_hello(&mut self, env: &mut Env) {
        self.phase = Phase::Hello { needed: 0 };
        if let Some(routing) = &self.service.routing {
            let due = env.now + routing.sni_timeout;
            self.timer = Some(env.timers.insert(due, TimerKey::Conn(self.id)));
        }
    }

    /// Dials the first backend for the client (`Connecting` from here on), or queues it
    /// when every backend is full.
    fn connect(&mut self, env: &mut Env) -> Result<(), EndReason> {
        if self.target.is_none() {
            return Err(EndReason::NoRoute);
        }
        self.phase = Phase::Connecting {
            attempts: 0,
            header_sent: 0,
        };
        self.dial_next(env)
    }

    /// Dials the best backend left for the client. When every one is at its `maxconn`, the
    /// client waits in its pool's queue if it has one (and behind anyone already waiting
    /// there), else it is turned away.
    fn dial_next(&mut self, env: &mut Env) -> Result<(), EndReason> {
        let Phase::Connecting { mut attempts, .. } = self.phase else {
            return Err(EndReason::NoBackend);
        };
        let Some(target) = self.target else {
            return Err(EndReason::NoRoute);
        };
        let Some(fleet) = env.topology.pool(target.pool).map(Arc::clone) else {
            return Err(EndReason::NoBackend);
        };
        let queue = fleet.queue();
        if queue.is_on() && !queue.is_empty() {
            // A slot freed now is the waiters': this client goes behind them.
            return self.wait(&fleet, attempts, env);
        }
        let dialled = dial(
            self.id,
            target,
            self.client_addr,
            &mut self.tried,
            &mut attempts,
            env,
        );
        self.phase = Phase::Connecting {
            attempts,
            header_sent: 0,
        };
        match dialled {
            Ok((lease, backend)) => {
                self.connecting(lease, backend, env);
                Ok(())
            }
            Err(Dialled::Full) if queue.is_on() => self.wait(&fleet, attempts, env),
            Err(Dialled::Full) => {
                net::reset_on_close(&self.client);
                Err(EndReason::PoolFull)
            }
            Err(Dialled::End(reason)) => Err(reason),
        }
    }

    /// A backend connect is under way on `backend`, for `lease`.
    fn connecting(&mut self, lease: Lease, backend: TcpStream, env: &mut Env) {
        // (A connect that failed left its socket here: dropped, so closed, now.)
        self.lease = Some(lease);
        self.backend = Some(backend);
        self.duplex.backend_ready = Default::default();
        if let Some(target) = self.target {
            self.timer = Some(
                env.timers
                    .insert(env.now + target.connect_timeout, TimerKey::Conn(self.id)),
            );
        }
    }

    /// Joins `fleet`'s queue (`Queued` from here on), or is turned away if it is full.
    fn wait(&mut self, fleet: &Fleet, attempts: u32, env: &mut Env) -> Result<(), EndReason> {
        let waiter = Waiter {
            worker: env.worker,
            conn: self.id,
            client: self.client_addr.ip(),
            class: self.class,
            since: env.now,
            ticket: 0,
        };
        let Some(ticket) = queueing::join(fleet, env.shared, waiter) else {
            debug!(
                "client {} ({}): every backend is full and so is the queue",
                self.client_addr,
                self.class.as_str()
            );
            net::reset_on_close(&self.client);
            return Err(EndReason::PoolFull);
        };
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        self.phase = Phase::Queued {
            attempts,
            ticket,
            pool: fleet.pool(),
            since: env.now,
        };
        let timeout = fleet.queue().settings().timeout;
        self.timer = Some(
            env.timers
                .insert(env.now + timeout, TimerKey::Conn(self.id)),
        );
        // A slot may have come free between the pick that found none and the joining.
        queueing::serve(fleet, env.shared, env.now_ms);
        Ok(())
    }

    /// Whether it waits in a queue.
    pub fn is_queued(&self) -> bool {
        matches!(self.phase, Phase::Queued { .. })
    }

    /// Its pool's queue served it: `lease` is its slot (already counted). It connects to
    /// that backend (and, should that fail, goes on as any connect does).
    pub fn on_slot(&mut self, lease: Lease, env: &mut Env) -> Report {
        let Phase::Queued {
            attempts,
            pool,
            since,
            ..
        } = self.phase
        else {
            queueing::give_back(lease, env.topology, env.shared, env.now_ms);
            return Report::default();
        };
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        let waited = env.now.saturating_duration_since(since);
        self.queue_wait = Some(self.queue_wait.unwrap_or_default() + waited);
        if let Some(fleet) = env.topology.pool(pool) {
            fleet.queue().stats.wait.observe(waited);
        }
        let attempts = attempts + 1;
        self.phase = Phase::Connecting {
            attempts,
            header_sent: 0,
        };
        match open(self.id, &lease, env) {
            Ok(backend) => {
                self.connecting(lease, backend, env);
                Report::default()
            }
            Err(e) => {
                let failed = failed_open(lease, &e, &mut self.tried, env);
                if failed == Some(EndReason::NoResources) {
                    return Report::closed(EndReason::NoResources);
                }
                self.phase = Phase::Connecting {
                    attempts,
                    header_sent: 0,
                };
                match self.dial_next(env) {
                    Ok(()) => Report::default(),
                    Err(reason) => Report::closed(reason),
                }
            }
        }
    }

    /// Put out of its pool's queue for a client of a higher class: reset.
    pub fn put_out(&mut self) -> Report {
        if !self.is_queued() {
            return Report::default();
        }
        debug!(
            "client {} ({}) put out of the queue for a client of a higher class",
            self.client_addr,
            self.class.as_str()
        );
        self.abort();
        Report::closed(EndReason::PoolFull)
    }

    /// Leaves its pool's queue, if it waits in one: `true` if it did, `false` if it was
    /// not waiting there any more (a slot is on its way).
    fn leave_queue(&mut self, env: &Env) -> bool {
        let Phase::Queued { ticket, pool, .. } = self.phase else {
            return false;
        };
        env.topology
            .pool(pool)
            .is_some_and(|fleet| fleet.queue().leave(self.class, ticket))
    }

    /// Connect attempts made for this client so far.
    fn attempts(&self) -> u32 {
        match self.phase {
            Phase::Header | Phase::Hello { .. } => 0,
            Phase::Connecting { attempts, .. } | Phase::Queued { attempts, .. } => attempts,
            Phase::Established => self.tried.len() as u32 + 1,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The id of the backend it has (or is connecting to), if any.
    pub fn backend_id(&self) -> Option<u64> {
        self.lease.as_ref().map(|l| l.backend().id)
    }

    /// The service whose listener the client came to.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Makes closing this session reset both connections: it is being cut short, and a cut
    /// transfer must not look complete to either side.
    pub fn abort(&self) {
        net::reset_on_close(&self.client);
        if let Some(backend) = &self.backend {
            net::reset_on_close(backend);
        }
    }

    /// Handles readiness of one of the session's sockets.
    pub fn on_ready(&mut self, side: Side, event: &Event, env: &mut Env) -> Report {
        match side {
            Side::Client => self.duplex.client_ready.observe(event),
            Side::Backend => self.duplex.backend_ready.observe(event),
        }
        if self.phase == Phase::Header {
            return self.take_header(env);
        }
        if matches!(self.phase, Phase::Hello { .. }) {
            return self.take_hello(env);
        }
        if self.is_queued() {
            // Only a client that is gone for good ends its wait (one that only shut its
            // sending side still wants its answer).
            if side == Side::Client
                && (event.is_error() || (event.is_read_closed() && event.is_write_closed()))
            {
                self.leave_queue(env);
                return Report::closed(EndReason::ClientReset);
            }
            return Report::default();
        }
        if side == Side::Backend && matches!(self.phase, Phase::Connecting { .. }) {
            if event.is_error() || event.is_write_closed() {
                let error = self
                    .backend
                    .as_ref()
                    .map_or_else(|| io::ErrorKind::NotConnected.into(), net::connect_error);
                return self.connect_failed(error, env);
            }
            if !self.duplex.backend_ready.writable {
                return Report::default();
            }
            match self.send_proxy_header() {
                Ok(true) => {}
                Ok(false) => return Report::default(),
                Err(e) => return self.connect_failed(e, env),
            }
            self.established(env);
        }
        self.pump(env)
    }

    /// `--accept-proxy`: takes the client's header once it is all there, then connects
    /// for the client it names; a bad one resets the client.
    fn take_header(&mut self, env: &mut Env) -> Report {
        match proxy_header::receive(&self.client, &mut self.duplex.client_ready) {
            Received::Waiting => Report::default(),
            Received::Failed(why) => self.refuse_header(why, env),
            Received::Header(addresses) => {
                if let Some((source, destination)) = addresses {
                    self.client_addr = source;
                    self.proxied_to = Some(destination);
                }
                if let Some(timer) = self.timer.take() {
                    env.timers.cancel(timer);
                }
                if let Err(reason) = self.admit(env) {
                    return Report::closed(reason);
                }
                if self.service.routing.is_some() {
                    // The hello may have come with the header: look at once (the header
                    // was read, so no new edge would say so).
                    self.await_hello(env);
                    return self.take_hello(env);
                }
                match self.connect(env) {
                    Ok(()) => Report::default(),
                    Err(reason) => Report::closed(reason),
                }
            }
        }
    }

    /// A service with routes: looks at the client's ClientHello, and once it is whole (or
    /// cannot be) connects where it goes.
    fn take_hello(&mut self, env: &mut Env) -> Report {
        let (Phase::Hello { needed }, Some(routing)) =
            (&mut self.phase, self.service.routing.as_ref())
        else {
            return Report::default();
        };
        match hello::inspect(
            &self.client,
            &mut self.duplex.client_ready,
            needed,
            routing,
            env.scratch,
        ) {
            Inspected::Waiting => Report::default(),
            Inspected::Reset => Report::closed(EndReason::ClientReset),
            Inspected::Decided {
                result,
                route,
                name,
            } => self.routed(result, route, name, env),
        }
    }

    /// The hello is decided: counts what it was, and connects the route's pool, or the
    /// service's own; with neither, the client is reset.
    fn routed(
        &mut self,
        result: TlsInspect,
        route: Option<usize>,
        name: Option<Arc<str>>,
        env: &mut Env,
    ) -> Report {
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        ServiceStats::add(&self.service.stats.tls_inspect[result as usize], 1);
        let routed = route.and_then(|i| self.service.routing.as_ref()?.target(i));
        debug!(
            "{}: {} {}; {}",
            self.client_addr,
            result.as_str(),
            name.as_deref().unwrap_or("-"),
            match (route, self.service.pool) {
                (Some(i), _) => format!("route {}", i + 1),
                (None, Some(_)) => "no route: the service's pool".to_string(),
                (None, None) => "no route: reset".to_string(),
            }
        );
        self.tls = Some((result, name));
        self.target = routed.or(self.service.pool);
        // Whatever has come waits in the kernel for the backend: read it once connected
        // (no new edge may come for it).
        self.duplex.client_ready.readable = true;
        match self.connect(env) {
            Ok(()) => Report::default(),
            Err(reason) => {
                if reason == EndReason::NoRoute {
                    net::reset_on_close(&self.client);
                }
                Report::closed(reason)
            }
        }
    }

    /// Resets a client whose PROXY protocol header will not do, and counts why.
    fn refuse_header(&mut self, why: ProxyError, env: &mut Env) -> Report {
        env.stats.proxy_errors[why as usize].add(1);
        debug!(
            "{}: PROXY protocol header {}",
            self.client_addr,
            why.as_str()
        );
        if let Some(n) = env.throttles.proxy.allow(env.now) {
            warn!(
                "client {} reset: PROXY protocol header {}{}",
                self.client_addr,
                why.as_str(),
                crate::reactor::suppressed_note(n)
            );
        }
        net::reset_on_close(&self.client);
        Report::closed(EndReason::BadProxyHeader)
    }

    /// Writes the backend's PROXY protocol header, if it takes one: `Ok(true)` once done
    /// (or when there is none), `Ok(false)` while its send buffer is full.
    fn send_proxy_header(&mut self) -> io::Result<bool> {
        let Some(version) = self.lease.as_ref().and_then(|l| l.backend().send_proxy()) else {
            return Ok(true);
        };
        let (Some(backend), Phase::Connecting { header_sent, .. }) =
            (&mut self.backend, &mut self.phase)
        else {
            return Ok(true);
        };
        let destination = match self.proxied_to {
            Some(destination) => destination,
            None => self.client.local_addr()?,
        };
        proxy_header::send(
            backend,
            &mut self.duplex.backend_ready,
            version,
            (self.client_addr, destination),
            header_sent,
        )
    }

    /// Handles the session's timer: a connect that took too long, or a possible idle timeout.
    pub fn on_timer(&mut self, env: &mut Env) -> Report {
        self.timer = None;
        if self.phase == Phase::Header {
            return self.refuse_header(ProxyError::Timeout, env);
        }
        if matches!(self.phase, Phase::Hello { .. }) {
            return self.routed(TlsInspect::Timeout, None, None, env);
        }
        if let Phase::Queued { pool, .. } = self.phase {
            let fleet = env.topology.pool(pool).map(Arc::clone);
            if self.leave_queue(env) || fleet.is_none() {
                if let Some(fleet) = fleet {
                    fleet.queue().stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                debug!(
                    "client {} waited in the queue too long: reset",
                    self.client_addr
                );
                self.abort();
                return Report::closed(EndReason::QueueTimeout);
            }
            // Served just now: its slot is on the way.
            return Report::default();
        }
        if matches!(self.phase, Phase::Connecting { .. }) {
            let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            return self.connect_failed(error, env);
        }
        if self.phase == Phase::Established && self.pair().is_some() {
            let kernel_quiet = self.kernel_quiet(env);
            if let Some(idle) = self.service.idle_timeout
                && self.last_active + idle <= env.now
            {
                if !(kernel_quiet && self.is_quiet()) {
                    self.abort();
                }
                return Report::closed(EndReason::IdleTimeout);
            }
            // A direction may be waiting for the kernel (the gate's timer).
            let report = self.pump(env);
            if report.closed.is_some() || self.timer.is_some() {
                return report;
            }
            if let Some(idle) = self.service.idle_timeout {
                self.timer = Some(
                    env.timers
                        .insert(self.last_active + idle, TimerKey::Conn(self.id)),
                );
            }
            return report;
        }
        if let Some(idle) = self.service.idle_timeout {
            let due = self.last_active + idle;
            if due <= env.now {
                if !self.is_quiet() {
                    // A stalled stream, cut short: a reset on both sides, so neither mistakes
                    // what it has received for the whole stream.
                    self.abort();
                }
                // A quiet session (nothing in flight either way) is closed like any idle
                // connection: a FIN to both sides, every byte already delivered.
                return Report::closed(EndReason::IdleTimeout);
            }
            self.timer = Some(env.timers.insert(due, TimerKey::Conn(self.id)));
        }
        Report::default()
    }

    /// Nothing is in flight either way: no bytes held here and none waiting to be read for
    /// want of a buffer.
    fn is_quiet(&self) -> bool {
        self.duplex.is_quiet() && !self.waiting_for_buffer
    }

    /// Runs the pipes again: `from_run_queue` after a turn's budget ran out, otherwise after
    /// a buffer came back. Only that queue's mark is cleared, so a session queued in both is
    /// never queued twice in one.
    pub fn resume(&mut self, from_run_queue: bool, env: &mut Env) -> Report {
        if from_run_queue {
            self.queued = false;
        } else {
            self.waiting_for_buffer = false;
        }
        self.pump_again(from_run_queue, env)
    }

    /// What the session came to, so far (for the counters and the access log).
    pub fn summary(&self, now: Instant) -> SessionSummary {
        let attempts = self.attempts();
        let (bytes_up, bytes_down) = self.duplex.moved();
        SessionSummary {
            service: Arc::clone(&self.service.name),
            client_addr: self.client_addr,
            // Only a connected backend is the session's: one whose connect failed is not.
            backend: self
                .lease
                .as_ref()
                .filter(|_| self.phase == Phase::Established)
                .map(|l| l.backend().addr),
            connect_time: self.connect_time,
            first_response: match self.first_response {
                FirstResponse::Measured(d) => Some(d),
                _ => None,
            },
            duration: now.saturating_duration_since(self.started),
            bytes_up,
            bytes_down,
            retries: attempts.saturating_sub(1),
            class: self.class,
            queue_wait: self.queue_wait,
            tls: self.tls.clone(),
        }
    }

    /// Gives back what the session holds: timer cancelled, buffers and pipes returned,
    /// lease released. Dropping it then closes the sockets (with a reset if one was set up).
    pub fn release(&mut self, env: &mut Env) {
        self.unlink(env);
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        // (If it was served meanwhile, its worker gives the slot back when it finds the
        // session gone.)
        self.leave_queue(env);
        if let (Some(counted), Some((_, table))) = (self.source.take(), &self.service.sources) {
            table.release(counted);
        }
        // No answer came (nothing was asked, or the protocol has the client talk alone):
        // what is known of the backend's speed is its connect time.
        if self.phase == Phase::Established
            && !matches!(self.first_response, FirstResponse::Measured(_))
        {
            let sample = self.connect_time.unwrap_or_default();
            self.learn_latency(sample, env, false);
        }
        self.duplex.release(&mut Pools {
            buffers: env.pool,
            pipes: env.pipes,
        });
        if let Some(lease) = self.lease.take() {
            queueing::give_back(lease, env.topology, env.shared, env.now_ms);
        }
    }

    fn established(&mut self, env: &mut Env) {
        self.phase = Phase::Established;
        if let Some(lease) = &mut self.lease {
            if env.topology.connect_succeeded(lease, env.now_ms) {
                // Back up, on its slow-start ramp: its selector must see it as it climbs.
                let next = env.now_ms + crate::fleet::RAMP_TICK_MS;
                env.cooling.push((Arc::clone(lease.backend()), next));
            }
            debug!("{} connected to {}", self.client_addr, lease.backend().addr);
        }
        let took = env.now.saturating_duration_since(self.started);
        self.connect_time = Some(took);
        if let Some(fleet) = self
            .lease
            .as_ref()
            .and_then(|l| env.topology.pool(l.backend().pool))
        {
            fleet.stats().connect_duration.observe(took);
        }
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        if let Some(idle) = self.service.idle_timeout {
            self.timer = Some(env.timers.insert(env.now + idle, TimerKey::Conn(self.id)));
        }
    }

    /// A connect failed: count it against that backend and try the next one, keeping the
    /// bytes the client has sent so far.
    fn connect_failed(&mut self, error: io::Error, env: &mut Env) -> Report {
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        if !matches!(self.phase, Phase::Connecting { .. }) {
            return Report::default();
        }
        if let Some(mut lease) = self.lease.take() {
            note_failure(&mut lease, &error, env);
            self.tried.push(lease.backend().id);
            queueing::give_back(lease, env.topology, env.shared, env.now_ms);
        }
        match self.dial_next(env) {
            Ok(()) => Report::default(),
            Err(reason) => Report::closed(reason),
        }
    }

    /// Moves bytes both ways until everything blocks, and decides whether the session is over.
    ///
    /// Nothing moves while the backend is connecting: the client's first bytes wait in the
    /// kernel's receive queue, where they cost no pool buffer and survive a retry untouched.
    fn pump(&mut self, env: &mut Env) -> Report {
        self.pump_again(false, env)
    }

    /// As [`Session::pump`]; `again` says it is the retry of a turn that waited for the
    /// kernel fast path (see [`Session::wait_for_gate`]).
    fn pump_again(&mut self, again: bool, env: &mut Env) -> Report {
        let linked = self.pair();
        let (Phase::Established, Some(backend)) = (&self.phase, &mut self.backend) else {
            return Report::default();
        };
        let mut pools = Pools {
            buffers: env.pool,
            pipes: env.pipes,
        };
        let pumped = match (linked, env.fast.as_deref()) {
            (Some(pair), Some(fast)) => {
                let (client_fd, backend_fd) = (self.client.as_raw_fd(), backend.as_raw_fd());
                let up = || fast.drained(pair, Side::Client, backend_fd);
                let down = || fast.drained(pair, Side::Backend, client_fd);
                let pumped = self.duplex.pump_gated(
                    &mut self.client,
                    backend,
                    &mut pools,
                    [Some(&up), Some(&down)],
                );
                fast.note_moved(pair, self.duplex.moved());
                pumped
            }
            // May yet be linked: no splice meanwhile (a splice reads past the kernel's
            // program), which an always-open gate says.
            (None, Some(_)) if self.fast == 0 => {
                let open = || true;
                self.duplex.pump_gated(
                    &mut self.client,
                    backend,
                    &mut pools,
                    [Some(&open), Some(&open)],
                )
            }
            _ => self.duplex.pump(&mut self.client, backend, &mut pools),
        };
        if pumped.sent + pumped.received > 0 {
            self.last_active = env.now;
            // Spliced bytes first: counted no later than the totals they are part of.
            if pumped.spliced_sent + pumped.spliced_received > 0 {
                env.stats.spliced_sent.add(pumped.spliced_sent);
                env.stats.spliced_received.add(pumped.spliced_received);
            }
            if let Some(lease) = &self.lease {
                let stats = &lease.backend().stats;
                crate::fleet::backend::BackendStats::add(&stats.bytes_sent, pumped.sent);
                crate::fleet::backend::BackendStats::add(&stats.bytes_received, pumped.received);
            }
            self.note_response(pumped.sent, pumped.received, env);
        }
        let mut yielded = pumped.yielded;
        if pumped.closed.is_none() {
            if pumped.gated {
                yielded |= self.wait_for_gate(again, env);
            } else if self.fast == 0 && env.fast.is_some() {
                self.link(env);
            }
        }
        Report {
            closed: pumped.closed,
            need_buffer: pumped.need_buffer,
            yielded,
        }
    }

    /// `--bpf-redirect`: once the first exchange is over (the client's first bytes out,
    /// so a retry keeps them; the backend's first answer back, so its first-response time
    /// is measured) and the session holds no byte, its sockets go into the kernel's map and
    /// the kernel moves what follows. Until then it does not splice (a splice reads past
    /// the kernel's program); one that cannot be linked may.
    fn link(&mut self, env: &mut Env) {
        let (Some(fast), Some(backend)) = (env.fast.as_deref_mut(), &self.backend) else {
            return;
        };
        let moved = self.duplex.moved();
        if moved.0 + moved.1 > LINK_WITHIN {
            // Not linked in its first exchanges (a backend that never answers, a stream
            // that never paused): it stays in user space, where it may splice.
            self.fast = NEVER_LINK;
            return;
        }
        // Both receive queues read to the end (the last reads came up short): the kernel
        // reads whole segments from the head of the queue, so one we had read part of would
        // reach the peer twice.
        let read_out = !self.duplex.client_ready.readable && !self.duplex.backend_ready.readable;
        if !matches!(self.first_response, FirstResponse::Measured(_))
            || !self.is_quiet()
            || !read_out
            || self.duplex.any_eof()
        {
            return;
        }
        let Some((pair, linked)) = fast.link(self.client.as_raw_fd(), backend.as_raw_fd(), moved)
        else {
            // Every pair of this worker is in use: this one stays in user space, and may
            // splice.
            self.fast = NEVER_LINK;
            return;
        };
        // Linked even if the kernel refused part of it: a socket whose peer is not in the
        // map has its bytes passed up, so the session runs as in user space, through the
        // gates, until it ends.
        self.fast = pair.to_word();
        match linked {
            Ok(()) => env.stats.fast_linked.add(1),
            Err(e) => debug!(
                "{}: not handed to the kernel fast path: {e}",
                self.client_addr
            ),
        }
    }

    /// The session's pair of slots in the kernel fast path, while it is linked.
    fn pair(&self) -> Option<Pair> {
        Pair::from_word(self.fast).filter(|_| self.fast != NEVER_LINK)
    }

    /// A direction waits for the kernel to deliver what it redirected: retried at once, in
    /// the next turn (the kernel's worker usually has by then), then on the next timer tick.
    /// Says whether to run again at once.
    fn wait_for_gate(&mut self, again: bool, env: &mut Env) -> bool {
        if !again {
            return true;
        }
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        self.timer = Some(env.timers.insert(env.now, TimerKey::Conn(self.id)));
        false
    }

    /// The kernel fast path is done with the session (it is ending): the bytes the kernel
    /// moved are counted as the session's, and its pair of slots goes back.
    pub fn unlink(&mut self, env: &mut Env) {
        let (Some(pair), Some(fast)) = (self.pair(), env.fast.as_deref_mut()) else {
            return;
        };
        self.fast = NEVER_LINK;
        let (sent, received) = fast.unlink(pair);
        self.duplex.add_moved(sent, received);
        env.stats.fast_sent.add(sent);
        env.stats.fast_received.add(received);
        if let Some(lease) = &self.lease {
            let stats = &lease.backend().stats;
            crate::fleet::backend::BackendStats::add(&stats.bytes_sent, sent);
            crate::fleet::backend::BackendStats::add(&stats.bytes_received, received);
        }
    }

    /// The kernel fast path's view of the session: when it last saw a byte (folded into
    /// `last_active`), and whether it holds any.
    fn kernel_quiet(&mut self, env: &mut Env) -> bool {
        let (Some(pair), Some(fast), Some(backend)) =
            (self.pair(), env.fast.as_deref(), &self.backend)
        else {
            return true;
        };
        if let Some(seen) = env.now.checked_sub(fast.quiet_for(pair)) {
            self.last_active = self.last_active.max(seen);
        }
        fast.quiet(pair, self.client.as_raw_fd(), backend.as_raw_fd())
    }
}

impl Session {
    /// Follows the first exchange: the client's first bytes out, the backend's first bytes
    /// back. A backend that speaks first is measured by its connect time.
    fn note_response(&mut self, sent: u64, received: u64, env: &mut Env) {
        match self.first_response {
            FirstResponse::NotSent if received > 0 && sent == 0 => {
                let sample = self.connect_time.unwrap_or_default();
                self.learn_latency(sample, env, true);
            }
            // Out and back within one turn: as fast as this loop can tell.
            FirstResponse::NotSent if received > 0 => {
                self.learn_latency(Duration::from_micros(1), env, true);
            }
            FirstResponse::NotSent if sent > 0 => {
                self.first_response = FirstResponse::Sent(Instant::now());
            }
            FirstResponse::Sent(at) if received > 0 => {
                self.learn_latency(at.elapsed(), env, true);
            }
            _ => {}
        }
    }

    /// Tells the backend's latency estimate about one sample (and, where the pool balances
    /// by it, its selector).
    fn learn_latency(&mut self, sample: Duration, env: &mut Env, answered: bool) {
        if answered {
            self.first_response = FirstResponse::Measured(sample);
        }
        let Some(lease) = &self.lease else {
            return;
        };
        let backend = lease.backend();
        let Some(fleet) = env.topology.pool(backend.pool) else {
            return;
        };
        backend
            .latency
            .observe(sample, env.now_ms, fleet.latency_decay());
        if fleet.ticks() {
            fleet.refresh(backend, env.now_ms);
        }
    }
}

/// Counts a failed connect against the lease's backend; a breaker that opened gets a timer
/// so its trial comes when the cool-down ends.
fn note_failure(lease: &mut Lease, error: &io::Error, env: &mut Env) {
    if let Verdict::CoolingDown { until } = env.topology.connect_failed(lease, env.now_ms, error) {
        env.cooling
            .push((std::sync::Arc::clone(lease.backend()), until));
    }
}

/// Why no backend connect was started.
enum Dialled {
    /// Every backend that could take the client is at its `maxconn`.
    Full,
    /// The session ends, for this reason.
    End(EndReason),
}

/// Leases the best backend of `target`'s pool not yet tried and starts connecting to it. A
/// connect that fails at once (unreachable network, say) counts against that backend and
/// the next one is tried, up to `retries` retries in all.
fn dial(
    id: ConnId,
    target: Target,
    client: SocketAddr,
    tried: &mut Vec<u64>,
    attempts: &mut u32,
    env: &mut Env,
) -> Result<(Lease, TcpStream), Dialled> {
    let Some(fleet) = env.topology.pool(target.pool).map(Arc::clone) else {
        return Err(Dialled::End(EndReason::NoBackend));
    };
    loop {
        if *attempts > target.retries {
            return Err(Dialled::End(EndReason::NoBackend));
        }
        let request = PickRequest {
            client: Some(client.ip()),
            now: env.now_ms,
            tried,
        };
        let lease = match fleet.pick_or_full(&request) {
            Ok(lease) => lease,
            Err(Unavailable::Full) => return Err(Dialled::Full),
            Err(Unavailable::None) => return Err(Dialled::End(EndReason::NoBackend)),
        };
        *attempts += 1;
        match open(id, &lease, env) {
            Ok(stream) => return Ok((lease, stream)),
            Err(e) => {
                if let Some(reason) = failed_open(lease, &e, tried, env) {
                    return Err(Dialled::End(reason));
                }
            }
        }
    }
}

/// Starts a non-blocking connect to the lease's backend, registered for the session.
fn open(id: ConnId, lease: &Lease, env: &mut Env) -> io::Result<TcpStream> {
    net::connect(lease.backend().addr).and_then(|mut stream| {
        env.registry
            .register(
                &mut stream,
                id.token(Side::Backend as usize),
                net::session_interest(),
            )
            .map(|()| stream)
    })
}

/// A connect that failed at once: out of descriptors ends the session (the backend is not
/// to blame); anything else counts against the backend, which this client does not try
/// again. The lease is given back either way.
fn failed_open(
    mut lease: Lease,
    error: &io::Error,
    tried: &mut Vec<u64>,
    env: &mut Env,
) -> Option<EndReason> {
    let addr = lease.backend().addr;
    let outcome = if net::is_resource_exhaustion(error) {
        if let Some(n) = env.throttles.fds.allow(env.now) {
            warn!(
                "cannot open a socket to {addr}: {error}{}",
                crate::reactor::suppressed_note(n)
            );
        }
        Some(EndReason::NoResources)
    } else {
        note_failure(&mut lease, error, env);
        tried.push(lease.backend().id);
        None
    };
    queueing::give_back(lease, env.topology, env.shared, env.now_ms);
    outcome
}

/// The connect phase and the PROXY protocol header, driven through a real `mio::Poll` on
/// loopback sockets: a refused or timed-out connect moves to the next backend and loses
/// none of the client's early bytes, and the header decides who the client is.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use crate::fleet::backend::ResolvedBackend;
    use crate::fleet::backend::{Backend, BackendStats};
    use crate::fleet::builder::Builder;
    use crate::fleet::builder::tests::{POLICY, spec};
    use crate::fleet::queue::QueueSettings;
    use crate::fleet::select::Balance;
    use crate::reactor::timer::Timers;
    use crate::service::{self, Topology};
    use crate::stats::WorkerStats;
    use crate::worker::INBOX;
    use crate::worker::env::Throttles;
    use crate::worker::handle::{Command, Inbox, Shared};
    use crate::worker::pipes::PipePool;
    use crate::worker::pool::Pool;
    use mio::{Events, Poll};
    use mio::{Token, Waker};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::sync::Arc;
    use std::sync::mpsc::{self, Receiver};

    const ID: ConnId = ConnId {
        slot: 0,
        generation: 1,
    };

    /// What a worker lends a session, owned here; the session's sockets are registered
    /// in `poll`.
    struct Rig {
        poll: Poll,
        pool: Pool,
        pipes: PipePool,
        fleet: Arc<Fleet>,
        topology: Topology,
        service: Arc<Service>,
        timers: Timers<TimerKey>,
        stats: WorkerStats,
        throttles: Throttles,
        cooling: Vec<(Arc<Backend>, u64)>,
        scratch: Vec<u8>,
        /// The kernel fast path, for the tests that link sessions.
        fast: Option<crate::worker::fast::Fast>,
        now: Instant,
        /// tcplb's listening socket: the session's client connection is accepted here.
        front: TcpListener,
        /// What workers share; this worker's inbox is `inbox` (the queue's slots come there).
        shared: Shared,
        inbox: Receiver<Command>,
        _control: Poll,
    }

    impl Rig {
        /// A worker with these backends (`127.0.0.1:port`, equal weights) and settings.
        fn new(ports: &[u16], retries: u32, accept_proxy: Option<Duration>) -> Rig {
            Rig::with_queue(ports, retries, accept_proxy, None, QueueSettings::default())
        }

        /// The same, each backend taking `maxconn` sessions at once, with `queue`.
        fn with_queue(
            ports: &[u16],
            retries: u32,
            accept_proxy: Option<Duration>,
            maxconn: Option<u32>,
            queue: QueueSettings,
        ) -> Rig {
            let specs: Vec<_> = ports
                .iter()
                .map(|&p| ResolvedBackend {
                    maxconn,
                    ..spec(p, 1, false)
                })
                .collect();
            let now = Instant::now();
            let mut builder = Builder::new(POLICY, Balance::LeastActive);
            builder.set_queue(queue);
            let fleet = builder.build(&specs).0;
            let service = service::for_tests(retries, accept_proxy);
            let poll = Poll::new().expect("poll");
            let control = Poll::new().expect("poll");
            let shared = Shared::for_tests(
                1,
                Arc::new(Waker::new(control.registry(), Token(0)).expect("waker")),
            );
            let (commands, inbox) = mpsc::channel();
            let waker = Arc::new(Waker::new(poll.registry(), INBOX).expect("waker"));
            let _ = shared.inboxes.set(Box::new([Inbox { commands, waker }]));
            Rig {
                shared,
                inbox,
                _control: control,
                poll,
                pool: Pool::new(16 * 1024, 8).expect("pool"),
                pipes: PipePool::new(0, None),
                topology: Topology::new(1, 16, [Arc::clone(&service)], [Arc::clone(&fleet)]),
                fleet,
                service,
                timers: Timers::new(now),
                stats: WorkerStats::default(),
                throttles: Throttles::default(),
                cooling: Vec::new(),
                scratch: Vec::new(),
                fast: None,
                now,
                front: TcpListener::bind("127.0.0.1:0").expect("bind"),
            }
        }

        /// A worker whose service routes `a.example.com` to a pool (id 1) of `routed`
        /// backends; its own pool (id 0) has `ports`, or it has none.
        fn routing(
            ports: Option<&[u16]>,
            routed: &[u16],
            accept_proxy: Option<Duration>,
            sni_timeout: Duration,
        ) -> Rig {
            let mut rig = Rig::new(ports.unwrap_or(&[]), 0, accept_proxy);
            let specs: Vec<_> = routed.iter().map(|&p| spec(p, 1, false)).collect();
            let other = Builder::for_pool(1, Arc::from("routed"), POLICY, Balance::LeastActive)
                .build(&specs)
                .0;
            let target = |pool| Target {
                pool,
                connect_timeout: Duration::from_secs(5),
                retries: 0,
            };
            let route = crate::service::routes::Route {
                sni: Some("a.example.com".to_string()),
                alpn: None,
                target: target(1),
            };
            let mut service = Service::clone(&rig.service);
            service.pool = ports.map(|_| target(0));
            service.routing = Some(crate::service::Routing::new(
                vec![route],
                sni_timeout,
                crate::tls_hello::DEFAULT_CAP,
            ));
            rig.service = Arc::new(service);
            rig.topology = Topology::new(
                1,
                16,
                [Arc::clone(&rig.service)],
                [Arc::clone(&rig.fleet), other],
            );
            rig
        }

        fn env(&mut self) -> Env<'_> {
            Env {
                registry: self.poll.registry(),
                pool: &mut self.pool,
                pipes: &mut self.pipes,
                topology: &self.topology,
                timers: &mut self.timers,
                now: self.now,
                now_ms: crate::clock::millis(self.now),
                stats: &self.stats,
                throttles: &self.throttles,
                cooling: &mut self.cooling,
                worker: 0,
                shared: &self.shared,
                scratch: &mut self.scratch,
                fast: self.fast.as_mut(),
            }
        }

        /// Hands the session the events of one poll (waiting up to 100 ms for some).
        fn turn(&mut self, session: &mut Session) -> Option<EndReason> {
            let mut events = Events::with_capacity(16);
            self.poll
                .poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            self.now = Instant::now();
            for event in events.iter() {
                let (_, socket) = ConnId::from_token(event.token());
                let side = Side::from_socket(socket);
                if let Some(reason) = session.on_ready(side, event, &mut self.env()).closed {
                    return Some(reason);
                }
            }
            None
        }

        /// A client that has already sent `early`, and the session started for it.
        fn client(&mut self, early: &[u8]) -> (StdStream, Result<Session, Rejected>) {
            self.client_as(ID, early)
        }

        /// The same, for the session with id `id`.
        fn client_as(
            &mut self,
            id: ConnId,
            early: &[u8],
        ) -> (StdStream, Result<Session, Rejected>) {
            let mut client =
                StdStream::connect(self.front.local_addr().expect("addr")).expect("connect");
            client.write_all(early).expect("early bytes");
            let (accepted, peer) = self.front.accept().expect("accept");
            accepted.set_nonblocking(true).expect("non-blocking");
            let stream = TcpStream::from_std(accepted);
            let service = Arc::clone(&self.service);
            let session = Session::start(id, stream, peer, service, &mut self.env());
            (client, session)
        }

        /// Hands the session its readiness events until it is established or closed.
        fn drive(&mut self, session: &mut Session) -> Option<EndReason> {
            let mut events = Events::with_capacity(16);
            let deadline = Instant::now() + Duration::from_secs(5);
            while session.phase != Phase::Established {
                assert!(Instant::now() < deadline, "stuck in {:?}", session.phase);
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(100)))
                    .expect("poll");
                self.now = Instant::now();
                for event in events.iter() {
                    if event.token() == INBOX {
                        continue;
                    }
                    let (id, socket) = ConnId::from_token(event.token());
                    if id != session.id() {
                        continue; // another session's (one ended, say)
                    }
                    let side = if socket == Side::Client as usize {
                        Side::Client
                    } else {
                        Side::Backend
                    };
                    if let Some(reason) = session.on_ready(side, event, &mut self.env()).closed {
                        return Some(reason);
                    }
                    if session.phase != Phase::Established {
                        assert_eq!(
                            self.pool.free(),
                            self.pool.capacity(),
                            "nothing is read from the client before the backend is connected"
                        );
                    }
                }
            }
            None
        }

        fn backend(&self, port: u16) -> &Arc<Backend> {
            self.fleet
                .backends()
                .find(|b| b.addr.port() == port)
                .expect("a backend on that port")
        }

        fn connect_failures(&self, port: u16) -> u64 {
            BackendStats::get(&self.backend(port).stats.connect_failures)
        }
    }

    /// A port nothing listens on (bound, then closed).
    fn refused_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn listening() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (listener, port)
    }

    /// Accepts the session's backend connection and reads `n` bytes from it.
    fn backend_reads(listener: &TcpListener, n: usize) -> Vec<u8> {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = vec![0; n];
        conn.read_exact(&mut got).expect("the client's bytes");
        got
    }

    #[test]
    fn a_refused_connect_moves_to_the_next_backend_and_keeps_the_clients_first_bytes() {
        let dead = refused_port();
        let (live, port) = listening();
        let mut rig = Rig::new(&[dead, port], 1, None);
        let (_client, session) = rig.client(b"early bytes");
        let mut session = session.expect("a session");
        assert_eq!(rig.drive(&mut session), None);

        assert_eq!(backend_reads(&live, 11), b"early bytes");
        let summary = session.summary(rig.now);
        assert_eq!(summary.retries, 1, "the refused backend came first");
        assert_eq!(summary.backend, Some(rig.backend(port).addr));
        assert_eq!(
            (rig.connect_failures(dead), rig.connect_failures(port)),
            (1, 0)
        );
        assert_eq!(session.tried, [rig.backend(dead).id]);
        session.release(&mut rig.env());
        assert_eq!(rig.backend(port).active(), 0, "the lease is given back");
    }

    #[test]
    fn a_connect_that_times_out_moves_on_and_counts_against_the_slow_backend() {
        let (slow, slow_port) = listening();
        let (live, port) = listening();
        let mut rig = Rig::new(&[slow_port, port], 1, None);
        let (_client, session) = rig.client(b"hi");
        let mut session = session.expect("a session");
        // The connect timer fires before the first backend's connect is seen through.
        assert_eq!(session.on_timer(&mut rig.env()), Report::default());
        assert_eq!(rig.drive(&mut session), None);

        assert_eq!(backend_reads(&live, 2), b"hi");
        assert_eq!(session.summary(rig.now).retries, 1);
        assert_eq!(rig.connect_failures(slow_port), 1);
        // The abandoned connect was closed: the slow backend reads EOF on it.
        let (mut abandoned, _) = slow.accept().expect("the abandoned connect");
        abandoned
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(abandoned.read(&mut [0; 8]).expect("EOF"), 0);
        session.release(&mut rig.env());
    }

    #[test]
    fn every_backend_refusing_ends_the_session_with_no_backend_after_the_retries() {
        let ports = [refused_port(), refused_port(), refused_port()];
        let mut rig = Rig::new(&ports, 1, None);
        let (_client, session) = rig.client(b"x");
        let reason = match session {
            Err(rejected) => Some(rejected.reason),
            Ok(mut session) => {
                let reason = rig.drive(&mut session);
                session.release(&mut rig.env());
                reason
            }
        };
        assert_eq!(reason, Some(EndReason::NoBackend));
        let failures: u64 = ports.iter().map(|&p| rig.connect_failures(p)).sum();
        assert_eq!(failures, 2, "one try and one retry (--retries 1), no more");
        assert!(rig.fleet.backends().all(|b| b.active() == 0));
    }

    #[test]
    fn a_proxy_header_names_the_client_and_is_not_passed_on() {
        let (live, port) = listening();
        let mut rig = Rig::new(&[port], 0, Some(Duration::from_secs(5)));
        let (_client, session) =
            rig.client(b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 80\r\nafter the header");
        let mut session = session.expect("a session");
        assert_eq!(rig.drive(&mut session), None);

        assert_eq!(backend_reads(&live, 16), b"after the header");
        assert_eq!(
            session.summary(rig.now).client_addr,
            SocketAddr::from(([192, 0, 2, 7], 5555))
        );
        session.release(&mut rig.env());
    }

    #[test]
    fn a_client_without_a_proxy_header_is_refused_before_any_backend_is_dialled() {
        let (live, port) = listening();
        let mut rig = Rig::new(&[port], 0, Some(Duration::from_secs(5)));
        let (_client, session) = rig.client(b"GET / HTTP/1.0\r\n\r\n");
        let mut session = session.expect("a session");
        assert_eq!(rig.drive(&mut session), Some(EndReason::BadProxyHeader));
        assert_eq!(
            rig.stats.proxy_errors[ProxyError::Missing as usize].get(),
            1
        );
        session.release(&mut rig.env());
        live.set_nonblocking(true).expect("non-blocking");
        assert_eq!(
            live.accept().map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock),
            "no backend connection was made"
        );
    }

    const SECOND: ConnId = ConnId {
        slot: 1,
        generation: 2,
    };

    fn queue_of(size: usize) -> QueueSettings {
        QueueSettings {
            size,
            timeout: Duration::from_secs(5),
        }
    }

    /// A rig whose one backend takes one session at once, a session established on it,
    /// and the backend's end of that session.
    fn one_slot_taken(queue: QueueSettings) -> (Rig, TcpListener, Session, StdStream) {
        let (live, port) = listening();
        let mut rig = Rig::with_queue(&[port], 0, None, Some(1), queue);
        let (client, session) = rig.client(b"first");
        let mut first = session.expect("a session");
        assert_eq!(rig.drive(&mut first), None);
        drop(client);
        let (taken, _) = live.accept().expect("the first session's connection");
        (rig, live, first, taken)
    }

    #[test]
    fn a_client_finding_every_backend_full_waits_without_a_buffer_and_gets_the_next_slot() {
        let (mut rig, live, mut first, _taken) = one_slot_taken(queue_of(4));
        let (_client, session) = rig.client_as(SECOND, b"waited bytes");
        let mut second = session.expect("queued, not refused");
        assert!(second.is_queued());
        assert_eq!(rig.fleet.queue().len(), 1);
        assert_eq!(
            rig.pool.free(),
            rig.pool.capacity(),
            "a waiting client holds no buffer"
        );
        live.set_nonblocking(true).expect("non-blocking");
        assert_eq!(
            live.accept().map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock),
            "nobody was sent past the backend's maxconn"
        );
        assert!(rig.inbox.try_recv().is_err(), "no slot yet");

        // The first session ends: its slot goes to the waiting client, through the inbox.
        first.release(&mut rig.env());
        let Ok(Command::Slot { conn, lease }) = rig.inbox.try_recv() else {
            panic!("the freed slot was not handed over");
        };
        assert_eq!(conn, SECOND);
        assert_eq!(rig.fleet.queue().len(), 0);
        assert_eq!(second.on_slot(lease, &mut rig.env()), Report::default());
        assert_eq!(rig.drive(&mut second), None);
        live.set_nonblocking(false).expect("blocking");
        assert_eq!(backend_reads(&live, 12), b"waited bytes");
        let summary = second.summary(rig.now);
        assert!(summary.queue_wait.is_some());
        assert_eq!(rig.fleet.queue().stats.wait.snapshot().count, 1);
        second.release(&mut rig.env());
        assert!(rig.fleet.backends().all(|b| b.active() == 0));
    }

    #[test]
    fn a_wait_past_the_timeout_resets_the_client_and_is_counted() {
        let (mut rig, _live, mut first, _taken) = one_slot_taken(queue_of(4));
        let (mut client, session) = rig.client_as(SECOND, b"x");
        let mut second = session.expect("queued");
        assert_eq!(
            second.on_timer(&mut rig.env()).closed,
            Some(EndReason::QueueTimeout)
        );
        assert_eq!(rig.fleet.queue().len(), 0);
        assert_eq!(rig.fleet.queue().stats.timeouts.load(Ordering::Relaxed), 1);
        second.release(&mut rig.env());
        drop(second);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(
            client.read(&mut [0; 8]).map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::ConnectionReset),
            "a reset, not a clean close"
        );
        // The freed slot finds nobody waiting.
        first.release(&mut rig.env());
        assert!(rig.inbox.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_or_none_at_all_turns_the_client_away_at_once() {
        for size in [0, 1] {
            let (mut rig, _live, mut first, _taken) = one_slot_taken(queue_of(size));
            let mut waiting = None;
            if size == 1 {
                let (client, session) = rig.client_as(SECOND, b"x");
                waiting = Some((client, session.expect("queued")));
            }
            let third = ConnId {
                slot: 2,
                generation: 3,
            };
            let (_client, session) = rig.client_as(third, b"y");
            match session {
                Err(rejected) => assert_eq!(rejected.reason, EndReason::PoolFull),
                Ok(_) => panic!("queue size {size}: the client was not turned away"),
            }
            if let Some((_client, mut second)) = waiting {
                second.release(&mut rig.env());
                assert_eq!(rig.fleet.queue().len(), 0, "a released waiter leaves");
            }
            first.release(&mut rig.env());
        }
    }

    /// A ClientHello naming `name`, padded to over 1 KiB, in one record.
    fn hello(name: &str) -> Vec<u8> {
        use crate::tls_hello::testing::{message, records};
        records(&message(Some(name.as_bytes()), &[b"h2"], 1000), &[])
    }

    fn inspected(rig: &Rig, result: TlsInspect) -> u64 {
        ServiceStats::get(&rig.service.stats.tls_inspect[result as usize])
    }

    #[test]
    fn a_hello_is_routed_by_its_name_and_reaches_the_backend_unchanged() {
        let (default, default_port) = listening();
        let (routed, routed_port) = listening();
        let mut rig = Rig::routing(
            Some(&[default_port]),
            &[routed_port],
            None,
            Duration::from_secs(5),
        );
        let mut sent = hello("A.Example.COM");
        sent.extend(b"then the rest of the handshake");
        let (_client, session) = rig.client(&sent);
        let mut session = session.expect("a session");
        // (drive checks that no buffer is taken before the backend is connected.)
        assert_eq!(rig.drive(&mut session), None);

        assert_eq!(
            backend_reads(&routed, sent.len()),
            sent,
            "every byte, unchanged"
        );
        let summary = session.summary(rig.now);
        assert_eq!(
            summary.backend,
            Some(
                rig.topology
                    .pool(1)
                    .expect("pool")
                    .backends()
                    .next()
                    .expect("one")
                    .addr
            )
        );
        let (result, name) = summary.tls.expect("inspected");
        assert_eq!(
            (result, name.as_deref()),
            (TlsInspect::Sni, Some("A.Example.COM"))
        );
        assert_eq!(inspected(&rig, TlsInspect::Sni), 1);
        default.set_nonblocking(true).expect("non-blocking");
        assert!(
            default.accept().is_err(),
            "the service's own pool was not dialled"
        );
        session.release(&mut rig.env());
    }

    #[test]
    fn a_hello_in_pieces_is_looked_at_once_its_bytes_are_there() {
        let (routed, routed_port) = listening();
        let mut rig = Rig::routing(None, &[routed_port], None, Duration::from_secs(5));
        let sent = hello("a.example.com");
        let (mut client, session) = rig.client(&sent[..3]);
        let mut session = session.expect("a session");
        assert_eq!(rig.turn(&mut session), None);
        // Three bytes say a record header is coming, and a handshake header: 9 at least.
        assert_eq!(session.phase, Phase::Hello { needed: 9 });
        client.write_all(&sent[3..12]).expect("more");
        assert_eq!(rig.turn(&mut session), None);
        // Now the hello's length is known: nothing more is looked at before all of it.
        assert_eq!(
            session.phase,
            Phase::Hello {
                needed: sent.len() as u32
            }
        );
        client.write_all(&sent[12..100]).expect("more");
        assert_eq!(rig.turn(&mut session), None);
        assert_eq!(
            session.phase,
            Phase::Hello {
                needed: sent.len() as u32
            }
        );
        client.write_all(&sent[100..]).expect("the rest");
        assert_eq!(rig.drive(&mut session), None);
        assert_eq!(backend_reads(&routed, sent.len()), sent);
        session.release(&mut rig.env());
    }

    #[test]
    fn a_client_that_is_not_tls_goes_to_the_services_own_pool() {
        let (default, default_port) = listening();
        let mut rig = Rig::routing(
            Some(&[default_port]),
            &[refused_port()],
            None,
            Duration::from_secs(5),
        );
        let (_client, session) = rig.client(b"GET / HTTP/1.0\r\n\r\n");
        let mut session = session.expect("a session");
        assert_eq!(rig.drive(&mut session), None);
        assert_eq!(backend_reads(&default, 18), b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(inspected(&rig, TlsInspect::NotTls), 1);
        session.release(&mut rig.env());
    }

    #[test]
    fn without_a_pool_of_its_own_a_client_no_route_takes_is_reset() {
        let (routed, routed_port) = listening();
        let mut rig = Rig::routing(None, &[routed_port], None, Duration::from_secs(5));
        let (mut client, session) = rig.client(&hello("b.example.com"));
        // The hello was there when the client was accepted: decided at once.
        let Err(rejected) = session else {
            panic!("no route, no pool of its own: the client is turned away");
        };
        assert_eq!(rejected.reason, EndReason::NoRoute);
        assert_eq!(inspected(&rig, TlsInspect::Sni), 1);
        let summary = rejected.summary.as_ref().expect("what it came to");
        assert_eq!(
            summary.tls.as_ref().map(|(result, _)| *result),
            Some(TlsInspect::Sni)
        );
        drop(rejected);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let read = client.read(&mut [0u8; 16]);
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        routed.set_nonblocking(true).expect("non-blocking");
        assert!(routed.accept().is_err(), "no backend was dialled");
    }

    #[test]
    fn a_hello_too_slow_goes_to_the_services_pool_with_what_came() {
        let (default, default_port) = listening();
        let mut rig = Rig::routing(
            Some(&[default_port]),
            &[refused_port()],
            None,
            Duration::from_secs(5),
        );
        let sent = hello("a.example.com");
        let (_client, session) = rig.client(&sent[..20]);
        let mut session = session.expect("a session");
        assert_eq!(rig.turn(&mut session), None);
        assert!(matches!(session.phase, Phase::Hello { .. }));
        // sni-timeout: the 20 bytes that came go to the service's own pool.
        assert_eq!(session.on_timer(&mut rig.env()), Report::default());
        assert_eq!(rig.drive(&mut session), None);
        assert_eq!(backend_reads(&default, 20), &sent[..20]);
        let (result, name) = session.summary(rig.now).tls.expect("inspected");
        assert_eq!((result, name), (TlsInspect::Timeout, None));
        session.release(&mut rig.env());
    }

    #[test]
    fn a_hello_in_the_segment_of_a_proxy_header_is_routed_at_once() {
        let (routed, routed_port) = listening();
        let mut rig = Rig::routing(
            None,
            &[routed_port],
            Some(Duration::from_secs(5)),
            Duration::from_secs(5),
        );
        let sent = hello("a.example.com");
        let mut segment = b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 443\r\n".to_vec();
        segment.extend(&sent);
        let (_client, session) = rig.client(&segment);
        let mut session = session.expect("a session");
        assert_eq!(rig.drive(&mut session), None);
        assert_eq!(
            backend_reads(&routed, sent.len()),
            sent,
            "the hello, not the header"
        );
        assert_eq!(
            session.summary(rig.now).client_addr,
            SocketAddr::from(([192, 0, 2, 7], 5555))
        );
        session.release(&mut rig.env());
    }

    #[test]
    fn a_client_that_closes_before_its_hello_is_whole_goes_on_with_what_it_sent() {
        let (default, default_port) = listening();
        let mut rig = Rig::routing(
            Some(&[default_port]),
            &[refused_port()],
            None,
            Duration::from_secs(5),
        );
        let sent = hello("a.example.com");
        let (client, session) = rig.client(&sent[..40]);
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let mut session = session.expect("a session");
        assert_eq!(rig.drive(&mut session), None);
        let (mut conn, _) = default.accept().expect("the service's pool");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got: Vec<u8> = Vec::new();
        // Pumped on the session's events: drive it while the backend reads.
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 40 {
            assert!(Instant::now() < deadline, "{} bytes", got.len());
            let _ = rig.turn(&mut session);
            conn.set_nonblocking(true).expect("non-blocking");
            let mut buf = [0u8; 64];
            match conn.read(&mut buf) {
                Ok(n) => got.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, &sent[..40]);
        assert_eq!(inspected(&rig, TlsInspect::Malformed), 1);
        session.release(&mut rig.env());
    }
}
#[cfg(test)]
mod size {
    /// An idle connection costs its session and the kernel's sockets, nothing else (no
    /// buffer): the session's size is part of what an idle connection costs, so it grows
    /// only on purpose. 408 bytes before the queue, classes, per-source limits and TLS
    /// routes; 528 with them; 544 with the kernel fast path's pair of slots and gates.
    #[test]
    fn a_session_stays_small() {
        let size = std::mem::size_of::<super::Session>();
        assert!(size <= 544, "a Session is {size} bytes");
    }
}
