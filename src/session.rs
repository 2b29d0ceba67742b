//! One client/backend pair and its state machine.
//!
//! ```text
//!   start ──► Connecting ──writable──► Established ──both pipes done──► closed
//!                │  ▲                       │
//!   refused,     │  │ next backend          └── reset / error on either side ──► closed
//!   unreachable, ▼  │                            (reset passed on to the other side)
//!   timed out ── retry ──no backend left──► closed at once
//! ```
//!
//! Nothing is read from the client until the backend is connected: its first bytes wait in
//! the kernel, so a retry loses none of them and a connecting session holds no buffer.
//!
//! Two [`Pipe`]s move the bytes: `up` from client to backend, `down` from backend to client.
//! As with tokio's `copy_bidirectional`, EOF on one side is passed on as `shutdown(Write)` on
//! the other once everything before it is delivered; the other direction keeps flowing; the
//! session ends when both directions are done.

use crate::balancer::{Lease, bump};
use crate::context::{ConnId, Context, TimerKey};
use crate::logging::suppressed_note;
use crate::net;
use crate::pipe::{Fault, Flow, Pipe, Readiness};
use crate::timer::TimerId;
use log::{debug, warn};
use mio::event::Event;
use mio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which socket of a session an event is for (the socket number in its token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Backend = 1,
}

impl Side {
    pub fn from_socket(socket: usize) -> Side {
        if socket == 0 {
            Side::Client
        } else {
            Side::Backend
        }
    }
}

/// How a session ended: for the access log, the counters and debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Both directions finished; the client closed its side first.
    ClientClosed,
    /// Both directions finished; the backend closed its side first.
    BackendClosed,
    ClientReset,
    BackendReset,
    IdleTimeout,
    /// Every connect attempt failed, or no backend was available.
    NoBackend,
    /// Out of file descriptors while connecting.
    NoResources,
    /// Cut at shutdown: the drain ran out of time or a second signal came.
    Shutdown,
    /// Turned away at once: `--max-conns` sessions were open.
    ShedMaxConns,
    /// Turned away at once: the buffer pool was nearly empty.
    ShedPool,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_fin",
            EndReason::BackendClosed => "backend_fin",
            EndReason::ClientReset => "client_reset",
            EndReason::BackendReset => "backend_reset",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::NoBackend => "no_backend",
            EndReason::NoResources => "no_resources",
            EndReason::Shutdown => "shutdown",
            EndReason::ShedMaxConns => "shed_max_conns",
            EndReason::ShedPool => "shed_pool",
        }
    }
}

/// What the reactor should do with a session after a handler ran.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Open,
    Closed(EndReason),
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
    client_ready: Readiness,
    backend_ready: Readiness,
    /// Client to backend.
    up: Pipe,
    /// Backend to client.
    down: Pipe,
    lease: Lease,
    phase: Phase,
    /// Backends whose connect failed for this client (empty, unallocated, in the usual case).
    tried: Vec<u32>,
    timer: Option<TimerId>,
    /// Last time a byte moved either way.
    last_active: Instant,
    started: Instant,
    /// How long the successful connect took (from the session's start).
    connect_time: Option<Duration>,
    client_addr: SocketAddr,
    /// Which side sent its FIN first.
    first_fin: Option<Side>,
    /// Queued in `Context::buffer_waiters`.
    waiting_for_buffer: bool,
    /// Queued in `Context::run_queue`.
    queued: bool,
}

impl Session {
    /// Starts a session for an accepted client: picks the least active backend and begins
    /// connecting, trying others (up to `--retries`) if a connect fails at once. On failure
    /// the client socket is handed back so the caller can close it.
    pub fn start(
        id: ConnId,
        mut client: TcpStream,
        client_addr: SocketAddr,
        ctx: &mut Context,
    ) -> Result<Session, Rejected> {
        if let Err(e) = net::prepare_client(&client).and_then(|()| {
            ctx.registry.register(
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
        let (lease, backend) = match dial(id, &mut tried, &mut attempts, ctx) {
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
            ctx.timers
                .insert(ctx.now + ctx.settings.connect_timeout, TimerKey::Conn(id)),
        );
        Ok(Session {
            id,
            client,
            backend,
            client_ready: Readiness::default(),
            backend_ready: Readiness::default(),
            up: Pipe::default(),
            down: Pipe::default(),
            lease,
            phase: Phase::Connecting { attempts },
            tried,
            timer,
            last_active: ctx.now,
            started: ctx.now,
            connect_time: None,
            client_addr,
            first_fin: None,
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
    pub fn on_ready(&mut self, side: Side, event: &Event, ctx: &mut Context) -> Status {
        match side {
            Side::Client => self.client_ready.observe(event),
            Side::Backend => self.backend_ready.observe(event),
        }
        if side == Side::Backend && matches!(self.phase, Phase::Connecting { .. }) {
            if event.is_error() || event.is_write_closed() {
                let error = net::connect_error(&self.backend);
                return self.connect_failed(error, ctx);
            }
            if !self.backend_ready.writable {
                return Status::Open;
            }
            self.established(ctx);
        }
        self.pump(ctx)
    }

    /// A socket reported an error that reading did not meet: a reset that came after the
    /// peer's FIN. A read past the FIN returns EOF, not the error, and the other pipe may
    /// have nothing to write to that socket, so the reset would be lost (forwarded as a clean
    /// end, the session left open on a dead peer). Once the stream before it is delivered up
    /// to the EOF, end the session and pass the reset on.
    fn collect_error(&mut self) -> Status {
        for side in [Side::Client, Side::Backend] {
            let (ready, socket, read_done) = match side {
                Side::Client => (&self.client_ready, &self.client, self.up.eof()),
                Side::Backend => (&self.backend_ready, &self.backend, self.down.eof()),
            };
            if ready.error && read_done {
                match socket.take_error() {
                    Ok(Some(e)) | Err(e) => return self.fail(Fault::Source(e), side),
                    Ok(None) => {}
                }
            }
        }
        Status::Open
    }

    /// Handles the session's timer: a connect that took too long, or a possible idle timeout.
    pub fn on_timer(&mut self, ctx: &mut Context) -> Status {
        self.timer = None;
        if matches!(self.phase, Phase::Connecting { .. }) {
            let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            return self.connect_failed(error, ctx);
        }
        if let Some(idle) = ctx.settings.idle_timeout {
            let due = self.last_active + idle;
            if due <= ctx.now {
                if !self.is_quiet() {
                    // A stalled stream, cut short: a reset on both sides, so neither mistakes
                    // what it has received for the whole stream.
                    self.abort();
                }
                // A quiet session (nothing in flight either way) is closed like any idle
                // connection: a FIN to both sides, every byte already delivered.
                return Status::Closed(EndReason::IdleTimeout);
            }
            self.timer = Some(ctx.timers.insert(due, TimerKey::Conn(self.id)));
        }
        Status::Open
    }

    /// Nothing is in flight either way: no bytes held here and none waiting to be read for
    /// want of a buffer.
    fn is_quiet(&self) -> bool {
        self.up.buffers_held() == 0 && self.down.buffers_held() == 0 && !self.waiting_for_buffer
    }

    /// Runs the pipes again: `from_run_queue` after a turn's budget ran out, otherwise after
    /// a buffer came back. Only that queue's mark is cleared, so a session queued in both is
    /// never queued twice in one.
    pub fn resume(&mut self, from_run_queue: bool, ctx: &mut Context) -> Status {
        if from_run_queue {
            self.queued = false;
        } else {
            self.waiting_for_buffer = false;
        }
        self.pump(ctx)
    }

    /// Tears the session down: timer cancelled, buffers returned, sockets closed (with a
    /// reset if one was set up), backend lease released.
    pub fn finish(mut self, ctx: &mut Context) -> SessionSummary {
        if let Some(timer) = self.timer.take() {
            ctx.timers.cancel(timer);
        }
        self.up.release(&mut ctx.pool);
        self.down.release(&mut ctx.pool);
        let attempts = match self.phase {
            Phase::Connecting { attempts } => attempts,
            Phase::Established => self.tried.len() as u32 + 1,
        };
        SessionSummary {
            client_addr: self.client_addr,
            // Only a connected backend is the session's: one whose connect failed is not.
            backend: (self.phase == Phase::Established).then_some(self.lease.backend().addr),
            connect_time: self.connect_time,
            duration: ctx.now.saturating_duration_since(self.started),
            bytes_up: self.up.moved(),
            bytes_down: self.down.moved(),
            retries: attempts.saturating_sub(1),
        }
        // Dropping `self` closes both sockets and drops the lease.
    }

    fn established(&mut self, ctx: &mut Context) {
        self.phase = Phase::Established;
        ctx.balancer.connect_succeeded(&mut self.lease);
        let took = ctx.now.saturating_duration_since(self.started);
        self.connect_time = Some(took);
        ctx.stats.connect_duration.observe(took.as_secs_f64());
        debug!(
            "{} connected to {} in {took:?}",
            self.client_addr,
            self.lease.backend().addr,
        );
        if let Some(timer) = self.timer.take() {
            ctx.timers.cancel(timer);
        }
        if let Some(idle) = ctx.settings.idle_timeout {
            self.timer = Some(ctx.timers.insert(ctx.now + idle, TimerKey::Conn(self.id)));
        }
    }

    /// A connect failed: count it against that backend and try the next one, keeping the
    /// bytes the client has sent so far.
    fn connect_failed(&mut self, error: io::Error, ctx: &mut Context) -> Status {
        if let Some(timer) = self.timer.take() {
            ctx.timers.cancel(timer);
        }
        let Phase::Connecting { mut attempts } = self.phase else {
            return Status::Open;
        };
        ctx.balancer
            .connect_failed(&mut self.lease, ctx.now, &error);
        self.tried.push(self.lease.backend().id);
        match dial(self.id, &mut self.tried, &mut attempts, ctx) {
            Ok((lease, backend)) => {
                // The old lease and socket are dropped here: count released, socket closed.
                self.lease = lease;
                self.backend = backend;
                self.backend_ready = Readiness::default();
                self.phase = Phase::Connecting { attempts };
                self.timer = Some(ctx.timers.insert(
                    ctx.now + ctx.settings.connect_timeout,
                    TimerKey::Conn(self.id),
                ));
                Status::Open
            }
            Err(reason) => Status::Closed(reason),
        }
    }

    /// Moves bytes both ways until everything blocks, and decides whether the session is over.
    ///
    /// Nothing moves while the backend is connecting: the client's first bytes wait in the
    /// kernel's receive queue, where they cost no pool buffer and survive a retry untouched.
    fn pump(&mut self, ctx: &mut Context) -> Status {
        if self.phase != Phase::Established {
            return Status::Open;
        }
        let before = (self.up.moved(), self.down.moved());

        let up = match self.up.pump(
            &mut self.client,
            &mut self.client_ready,
            &mut self.backend,
            &mut self.backend_ready,
            &mut ctx.pool,
            self.down.is_done(),
        ) {
            Ok(flow) => flow,
            Err(fault) => {
                self.count_moved(before);
                return self.fail(fault, Side::Client);
            }
        };
        let down = match self.down.pump(
            &mut self.backend,
            &mut self.backend_ready,
            &mut self.client,
            &mut self.client_ready,
            &mut ctx.pool,
            self.up.is_done(),
        ) {
            Ok(flow) => flow,
            Err(fault) => {
                self.count_moved(before);
                return self.fail(fault, Side::Backend);
            }
        };

        if self.count_moved(before) {
            self.last_active = ctx.now;
        }
        if self.first_fin.is_none() {
            if self.up.eof() {
                self.first_fin = Some(Side::Client);
            } else if self.down.eof() {
                self.first_fin = Some(Side::Backend);
            }
        }
        if self.up.is_done() && self.down.is_done() {
            return Status::Closed(match self.first_fin {
                Some(Side::Backend) => EndReason::BackendClosed,
                _ => EndReason::ClientClosed,
            });
        }
        if (up == Flow::NeedBuffer || down == Flow::NeedBuffer) && !self.waiting_for_buffer {
            self.waiting_for_buffer = true;
            ctx.buffer_waiters.push_back(self.id);
        }
        if (up == Flow::Yielded || down == Flow::Yielded) && !self.queued {
            self.queued = true;
            ctx.run_queue.push(self.id);
        }
        if self.client_ready.error || self.backend_ready.error {
            return self.collect_error();
        }
        Status::Open
    }

    /// Adds the bytes the pipes moved since `before` (their `moved()` then) to the backend's
    /// counters, also when the same pump then met a reset; true if any moved.
    fn count_moved(&self, before: (u64, u64)) -> bool {
        let (sent, received) = (self.up.moved() - before.0, self.down.moved() - before.1);
        if sent + received == 0 {
            return false;
        }
        let stats = &self.lease.backend().stats;
        bump(&stats.bytes_sent, sent);
        bump(&stats.bytes_received, received);
        true
    }

    /// A socket error ends the session. A reset is passed on as a reset to the other side.
    /// `source` is the side the failing pipe reads from.
    fn fail(&mut self, fault: Fault, source: Side) -> Status {
        let (failed_side, error) = match fault {
            Fault::Source(e) => (source, e),
            Fault::Destination(e) => (other(source), e),
        };
        debug!(
            "{} via {}: {:?} side failed: {error}",
            self.client_addr,
            self.lease.backend().addr,
            failed_side
        );
        match failed_side {
            Side::Client => {
                net::reset_on_close(&self.backend);
                Status::Closed(EndReason::ClientReset)
            }
            Side::Backend => {
                net::reset_on_close(&self.client);
                Status::Closed(EndReason::BackendReset)
            }
        }
    }
}

/// What is left of a session once it has ended: for the access log and the counters.
#[derive(Debug)]
pub struct SessionSummary {
    pub client_addr: SocketAddr,
    /// The backend it ended on (`None` if it never got one).
    pub backend: Option<SocketAddr>,
    pub connect_time: Option<Duration>,
    pub duration: Duration,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub retries: u32,
}

/// A client that could not be given a session; the caller closes it.
#[derive(Debug)]
pub struct Rejected {
    pub client: TcpStream,
    pub reason: EndReason,
    pub attempts: u32,
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    }
}

/// Leases the least active backend not yet tried and starts connecting to it. A connect that
/// fails at once (unreachable network, say) counts against that backend and the next one is
/// tried, up to `--retries` retries in all.
fn dial(
    id: ConnId,
    tried: &mut Vec<u32>,
    attempts: &mut u32,
    ctx: &mut Context,
) -> Result<(Lease, TcpStream), EndReason> {
    loop {
        if *attempts > ctx.settings.retries {
            return Err(EndReason::NoBackend);
        }
        let Some(mut lease) = ctx.balancer.pick(ctx.now, tried) else {
            return Err(EndReason::NoBackend);
        };
        *attempts += 1;
        let addr = lease.backend().addr;
        let connected = net::connect(addr).and_then(|mut stream| {
            ctx.registry
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
                ctx.fds_exhausted = true;
                if let Some(n) = ctx.throttles.fds.allow(ctx.now) {
                    warn!("cannot open a socket to {addr}: {e}{}", suppressed_note(n));
                }
                return Err(EndReason::NoResources);
            }
            Err(e) => {
                ctx.balancer.connect_failed(&mut lease, ctx.now, &e);
                tried.push(lease.backend().id);
            }
        }
    }
}
