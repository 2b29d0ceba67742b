//! One client/backend pair and its state machine.
//!
//! ```text
//!   start ──► Connecting ──writable──► Established ──both directions done──► closed
//!                │  ▲                       │
//!   refused,     │  │ next backend          └── reset / error on either side ──► closed
//!   unreachable, ▼  │                            (reset passed on to the other side)
//!   timed out ── retry ──no backend left──► closed at once
//! ```
//!
//! Nothing is read from the client until the backend is connected: its first bytes wait in
//! the kernel, so a retry loses none of them and a connecting session holds no buffer.
//! Once established, a [`Duplex`] moves the bytes both ways.
//!
//! Handlers return a [`Report`] of what happened (closed and why, needs a buffer, used up
//! its turn); the worker acts on it.

use crate::fleet::Verdict;
use crate::fleet::lease::Lease;
use crate::fleet::select::PickRequest;
use crate::net;
use crate::stats::{EndReason, SessionSummary};
use crate::worker::duplex::{Duplex, Side};
use crate::worker::timer::TimerId;
use crate::worker::{ConnId, Env, TimerKey};
use log::{debug, warn};
use mio::event::Event;
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
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
    /// Waiting for a non-blocking connect; counts the attempts made for this client.
    Connecting {
        attempts: u32,
    },
    Established,
}

pub struct Session {
    id: ConnId,
    client: TcpStream,
    backend: TcpStream,
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
    client_addr: SocketAddr,
    /// Queued in the worker's buffer waiters.
    pub(crate) waiting_for_buffer: bool,
    /// Queued in the worker's run queue.
    pub(crate) queued: bool,
}

/// A client that could not be given a session; the caller closes it.
#[derive(Debug)]
pub struct Rejected {
    pub client: TcpStream,
    pub reason: EndReason,
    pub attempts: u32,
}

impl Session {
    /// Starts a session for an accepted client: leases a backend and begins connecting,
    /// trying others (up to `--retries`) if a connect fails at once. On failure the client
    /// socket is handed back so the caller can close it.
    pub fn start(
        id: ConnId,
        mut client: TcpStream,
        client_addr: SocketAddr,
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
                attempts: 0,
            });
        }
        let mut tried = Vec::new();
        let mut attempts = 0;
        let (lease, backend) = match dial(id, client_addr, &mut tried, &mut attempts, env) {
            Ok(connected) => connected,
            Err(reason) => {
                return Err(Rejected {
                    client,
                    reason,
                    attempts,
                });
            }
        };
        let timer = Some(
            env.timers
                .insert(env.now + env.settings.connect_timeout, TimerKey::Conn(id)),
        );
        Ok(Session {
            id,
            client,
            backend,
            duplex: Duplex::default(),
            lease: Some(lease),
            phase: Phase::Connecting { attempts },
            tried,
            timer,
            last_active: env.now,
            started: env.now,
            connect_time: None,
            client_addr,
            waiting_for_buffer: false,
            queued: false,
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Makes closing this session reset both connections: it is being cut short, and a cut
    /// transfer must not look complete to either side.
    pub fn abort(&self) {
        net::reset_on_close(&self.client);
        net::reset_on_close(&self.backend);
    }

    /// Handles readiness of one of the session's sockets.
    pub fn on_ready(&mut self, side: Side, event: &Event, env: &mut Env) -> Report {
        match side {
            Side::Client => self.duplex.client_ready.observe(event),
            Side::Backend => self.duplex.backend_ready.observe(event),
        }
        if side == Side::Backend && matches!(self.phase, Phase::Connecting { .. }) {
            if event.is_error() || event.is_write_closed() {
                let error = net::connect_error(&self.backend);
                return self.connect_failed(error, env);
            }
            if !self.duplex.backend_ready.writable {
                return Report::default();
            }
            self.established(env);
        }
        self.pump(env)
    }

    /// Handles the session's timer: a connect that took too long, or a possible idle timeout.
    pub fn on_timer(&mut self, env: &mut Env) -> Report {
        self.timer = None;
        if matches!(self.phase, Phase::Connecting { .. }) {
            let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            return self.connect_failed(error, env);
        }
        if let Some(idle) = env.settings.idle_timeout {
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
        self.pump(env)
    }

    /// What the session came to, so far (for the counters and the access log).
    pub fn summary(&self, now: Instant) -> SessionSummary {
        let attempts = match self.phase {
            Phase::Connecting { attempts } => attempts,
            Phase::Established => self.tried.len() as u32 + 1,
        };
        let (bytes_up, bytes_down) = self.duplex.moved();
        SessionSummary {
            client_addr: self.client_addr,
            // Only a connected backend is the session's: one whose connect failed is not.
            backend: self
                .lease
                .as_ref()
                .filter(|_| self.phase == Phase::Established)
                .map(|l| l.backend().addr),
            connect_time: self.connect_time,
            duration: now.saturating_duration_since(self.started),
            bytes_up,
            bytes_down,
            retries: attempts.saturating_sub(1),
        }
    }

    /// Gives back what the session holds: timer cancelled, buffers returned, lease
    /// released. Dropping it then closes the sockets (with a reset if one was set up).
    pub fn release(&mut self, env: &mut Env) {
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        self.duplex.release(env.pool);
        if let Some(lease) = self.lease.take() {
            env.fleet.release(lease, env.now_ms);
        }
    }

    fn established(&mut self, env: &mut Env) {
        self.phase = Phase::Established;
        if let Some(lease) = &mut self.lease {
            env.fleet.connect_succeeded(lease, env.now_ms);
            debug!("{} connected to {}", self.client_addr, lease.backend().addr);
        }
        let took = env.now.saturating_duration_since(self.started);
        self.connect_time = Some(took);
        env.stats.connect_duration.observe(took.as_secs_f64());
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        if let Some(idle) = env.settings.idle_timeout {
            self.timer = Some(env.timers.insert(env.now + idle, TimerKey::Conn(self.id)));
        }
    }

    /// A connect failed: count it against that backend and try the next one, keeping the
    /// bytes the client has sent so far.
    fn connect_failed(&mut self, error: io::Error, env: &mut Env) -> Report {
        if let Some(timer) = self.timer.take() {
            env.timers.cancel(timer);
        }
        let Phase::Connecting { mut attempts } = self.phase else {
            return Report::default();
        };
        if let Some(mut lease) = self.lease.take() {
            note_failure(&mut lease, &error, env);
            self.tried.push(lease.backend().id);
            env.fleet.release(lease, env.now_ms);
        }
        match dial(
            self.id,
            self.client_addr,
            &mut self.tried,
            &mut attempts,
            env,
        ) {
            Ok((lease, backend)) => {
                // The old socket is dropped here: closed.
                self.lease = Some(lease);
                self.backend = backend;
                self.duplex.backend_ready = Default::default();
                self.phase = Phase::Connecting { attempts };
                self.timer = Some(env.timers.insert(
                    env.now + env.settings.connect_timeout,
                    TimerKey::Conn(self.id),
                ));
                Report::default()
            }
            Err(reason) => Report::closed(reason),
        }
    }

    /// Moves bytes both ways until everything blocks, and decides whether the session is over.
    ///
    /// Nothing moves while the backend is connecting: the client's first bytes wait in the
    /// kernel's receive queue, where they cost no pool buffer and survive a retry untouched.
    fn pump(&mut self, env: &mut Env) -> Report {
        if self.phase != Phase::Established {
            return Report::default();
        }
        let pumped = self
            .duplex
            .pump(&mut self.client, &mut self.backend, env.pool);
        if pumped.sent + pumped.received > 0 {
            self.last_active = env.now;
            if let Some(lease) = &self.lease {
                let stats = &lease.backend().stats;
                crate::fleet::backend::BackendStats::add(&stats.bytes_sent, pumped.sent);
                crate::fleet::backend::BackendStats::add(&stats.bytes_received, pumped.received);
            }
        }
        Report {
            closed: pumped.closed,
            need_buffer: pumped.need_buffer,
            yielded: pumped.yielded,
        }
    }
}

/// Counts a failed connect against the lease's backend; a breaker that opened gets a timer
/// so its trial comes when the cool-down ends.
fn note_failure(lease: &mut Lease, error: &io::Error, env: &mut Env) {
    if let Verdict::CoolingDown { until } = env.fleet.connect_failed(lease, env.now_ms, error) {
        env.cooling
            .push((std::sync::Arc::clone(lease.backend()), until));
    }
}

/// Leases the best backend not yet tried and starts connecting to it. A connect that fails
/// at once (unreachable network, say) counts against that backend and the next one is
/// tried, up to `--retries` retries in all.
fn dial(
    id: ConnId,
    client: SocketAddr,
    tried: &mut Vec<u64>,
    attempts: &mut u32,
    env: &mut Env,
) -> Result<(Lease, TcpStream), EndReason> {
    loop {
        if *attempts > env.settings.retries {
            return Err(EndReason::NoBackend);
        }
        let request = PickRequest {
            client: Some(client.ip()),
            now: env.now_ms,
            tried,
        };
        let Some(mut lease) = env.fleet.pick(&request) else {
            return Err(EndReason::NoBackend);
        };
        *attempts += 1;
        let addr = lease.backend().addr;
        let connected = net::connect(addr).and_then(|mut stream| {
            env.registry
                .register(
                    &mut stream,
                    id.token(Side::Backend as usize),
                    net::session_interest(),
                )
                .map(|()| stream)
        });
        match connected {
            Ok(stream) => return Ok((lease, stream)),
            Err(e) if net::is_resource_exhaustion(&e) => {
                if let Some(n) = env.throttles.fds.allow(env.now) {
                    warn!(
                        "cannot open a socket to {addr}: {e}{}",
                        crate::logging::suppressed_note(n)
                    );
                }
                env.fleet.release(lease, env.now_ms);
                return Err(EndReason::NoResources);
            }
            Err(e) => {
                note_failure(&mut lease, &e, env);
                tried.push(lease.backend().id);
                env.fleet.release(lease, env.now_ms);
            }
        }
    }
}
