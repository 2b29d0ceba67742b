//! The event loop: one `mio::Poll` on one thread, in the shape of Python's `selectors`
//! pattern. Each turn waits for readiness, then dispatches: the listener's token to
//! [`Reactor::accept_clients`], a session's token (slot, side and generation packed in one
//! word) to that session's handler, then runs sessions that were waiting for a buffer or had
//! used up their turn, then fires due timers.
//!
//! Sockets are registered once, for both directions, edge-triggered; the sessions remember
//! readiness themselves. A session ended by one event is removed at once: its slot may be
//! reused within the same batch, but the generation in its tokens tells a late event apart.

use crate::balancer::Balancer;
use crate::context::{Context, Settings, Stats, Throttles, TimerKey};
use crate::logging::suppressed_note;
use crate::net;
use crate::pool::Pool;
use crate::session::{EndReason, Session, SessionId, Status};
use crate::timer::Timers;
use log::{debug, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);

/// Events taken from the kernel per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// Clients accepted per turn before the loop serves the sessions it has.
const ACCEPTS_PER_TURN: usize = 256;
/// How long accepting pauses after running out of descriptors (unless a session ends first).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Everything the loop needs to start.
pub struct ReactorConfig {
    pub settings: Settings,
    pub buffer_size: usize,
    pub buffers: usize,
}

pub struct Reactor {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    /// The listener may have clients waiting (its edge has not been drained).
    listener_ready: bool,
    /// Accepting is paused for lack of descriptors; a timer resumes it.
    accept_paused: bool,
    sessions: Slab<Session>,
    next_generation: u32,
    ctx: Context,
    fired: Vec<TimerKey>,
    resumable: Vec<SessionId>,
}

impl Reactor {
    /// Sets up the loop around a bound listener.
    pub fn new(
        mut listener: TcpListener,
        balancer: Balancer,
        config: ReactorConfig,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        // Room for every session up front: address space only (pages are touched as sessions
        // fill them), and the slab never has to move its entries to grow.
        let max_conns = config.settings.max_conns;
        let ctx = Context {
            registry: poll.registry().try_clone()?,
            pool: Pool::new(config.buffer_size, config.buffers),
            balancer,
            timers: Timers::with_capacity(now, config.settings.max_conns + 64),
            now,
            settings: config.settings,
            stats: Stats::default(),
            throttles: Throttles::default(),
            buffer_waiters: VecDeque::new(),
            run_queue: Vec::new(),
            fds_exhausted: false,
        };
        Ok(Reactor {
            poll,
            events: Events::with_capacity(EVENTS_PER_WAIT),
            listener,
            listener_ready: true,
            accept_paused: false,
            sessions: Slab::with_capacity(max_conns),
            next_generation: 0,
            ctx,
            fired: Vec::new(),
            resumable: Vec::new(),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until a fatal poll error.
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            self.turn()?;
        }
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
                token => self.dispatch(token, event),
            }
        }
        self.events = events;
        if self.listener_ready && !self.accept_paused {
            self.accept_clients();
        }
        self.run_deferred();
        self.fire_timers();
        Ok(())
    }

    fn has_pending_work(&self) -> bool {
        !self.ctx.run_queue.is_empty()
            || (self.listener_ready && !self.accept_paused)
            || (!self.ctx.buffer_waiters.is_empty() && self.ctx.pool.free() > 0)
    }

    fn dispatch(&mut self, token: Token, event: &Event) {
        let (id, side) = SessionId::from_token(token);
        let Some(session) = self.sessions.get_mut(id.slot as usize) else {
            return;
        };
        if session.id() != id {
            return; // a late event for a session that has ended
        }
        let status = session.on_ready(side, event, &mut self.ctx);
        self.settle(id, status);
    }

    /// Removes a session that a handler reported closed.
    fn settle(&mut self, id: SessionId, status: Status) {
        if let Status::Closed(reason) = status {
            let session = self.sessions.remove(id.slot as usize);
            self.end(session, reason);
        }
    }

    fn end(&mut self, session: Session, reason: EndReason) {
        let summary = session.finish(&mut self.ctx);
        debug!(
            "{} via {}: {} after {:?}, {} bytes up, {} down",
            summary.client_addr,
            summary.backend,
            reason.as_str(),
            self.ctx.now.saturating_duration_since(summary.started),
            summary.bytes_up,
            summary.bytes_down
        );
        self.count_failure(summary.client_addr, reason);
        // Descriptors were freed: a paused listener may go on.
        if self.accept_paused {
            self.accept_paused = false;
        }
    }

    /// Accepts waiting clients, up to a turn's worth.
    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    self.ctx.stats.accept_errors += 1;
                    if net::is_resource_exhaustion(&e) {
                        self.ctx.fds_exhausted = true;
                    }
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
            self.ctx
                .timers
                .insert(self.ctx.now + ACCEPT_PAUSE, TimerKey::ResumeAccept);
        }
    }

    /// Turns a new client into a session, or sheds it when `--max-conns` are open.
    fn admit(&mut self, client: TcpStream, addr: SocketAddr) {
        self.ctx.stats.accepted += 1;
        if self.sessions.len() >= self.ctx.settings.max_conns {
            self.ctx.stats.shed_max_conns += 1;
            debug!("{addr}: shed, {} sessions open", self.sessions.len());
            net::reset_on_close(&client);
            return;
        }
        let entry = self.sessions.vacant_entry();
        self.next_generation = self.next_generation.wrapping_add(1);
        let id = SessionId {
            slot: entry.key() as u32,
            generation: self.next_generation,
        };
        match Session::start(id, client, addr, &mut self.ctx) {
            Ok(session) => {
                entry.insert(session);
            }
            Err((client, reason)) => {
                debug!("{addr}: closed at once: {}", reason.as_str());
                self.count_failure(addr, reason);
                drop(client);
            }
        }
    }

    /// Counts (and logs, throttled) a client turned away because no backend could take it.
    fn count_failure(&mut self, client: SocketAddr, reason: EndReason) {
        if reason == EndReason::NoBackend {
            self.ctx.stats.no_backend += 1;
            if let Some(n) = self.ctx.throttles.no_backend.allow(self.ctx.now) {
                warn!(
                    "no backend could take client {client}{}",
                    suppressed_note(n)
                );
            }
        }
    }

    /// Runs sessions that had used up their turn, then those waiting for a buffer while
    /// buffers are free.
    fn run_deferred(&mut self) {
        std::mem::swap(&mut self.resumable, &mut self.ctx.run_queue);
        let mut queue = std::mem::take(&mut self.resumable);
        for id in queue.drain(..) {
            self.resume(id);
        }
        self.resumable = queue;
        while self.ctx.pool.free() > 0 {
            let Some(id) = self.ctx.buffer_waiters.pop_front() else {
                break;
            };
            self.resume(id);
        }
    }

    fn resume(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(id.slot as usize) else {
            return;
        };
        if session.id() != id {
            return;
        }
        let status = session.resume(&mut self.ctx);
        self.settle(id, status);
    }

    fn fire_timers(&mut self) {
        self.ctx.timers.expire(self.ctx.now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Session(id) => {
                    let Some(session) = self.sessions.get_mut(id.slot as usize) else {
                        continue;
                    };
                    if session.id() != id {
                        continue;
                    }
                    let status = session.on_timer(&mut self.ctx);
                    self.settle(id, status);
                }
                TimerKey::ResumeAccept => {
                    self.accept_paused = false;
                }
            }
        }
        self.fired = fired;
    }

    /// Sessions open right now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}
