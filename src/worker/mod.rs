//! A worker: one thread running one single-threaded `mio` event loop, in the shape of
//! Python's `selectors` pattern. Each turn waits for readiness, then dispatches by token:
//!
//! | token | handler |
//! |---|---|
//! | one of its listeners | accept ([`accept`]) → a new [`Session`] (or shed) |
//! | its inbox waker | commands from the control thread: a new topology, listeners added or closed, pause, resume, drain, stop |
//! | a slab entry (slot, socket and generation in one word) | that [`Session`]'s handler |
//!
//! then runs sessions that were waiting for a buffer or had used up their turn, fires due
//! timers, and hands the access log its lines.
//!
//! A worker owns everything on its data path: its listener (usually one `SO_REUSEPORT`
//! socket per worker; after an upgrade to fewer workers, or with sockets from systemd, a
//! worker may accept on several, see [`crate::control::sockets`]), slab, buffer pool (its
//! share of `--buffers`), kernel pipe pool (its share of `--pipes`, for the splice path),
//! timer wheel and run queues. What
//! it shares with the others is the fleet (atomics only) and a process-wide session count
//! for `--max-conns`. Sockets are registered once, for both directions, edge-triggered;
//! sessions remember readiness themselves. A session ended by one event is removed at once:
//! its slot may be reused within the same batch, but the generation in its tokens tells a
//! late event apart.

pub mod accept;
pub mod direction;
pub mod duplex;
pub mod env;
pub mod fast;
pub mod handle;
pub mod hello;
pub mod pipes;
pub mod pool;
pub mod proxy_header;
pub mod queueing;
pub mod session;
pub mod splice;
pub mod stream;

use crate::access_log::AccessLogBatch;
use crate::clock;
use crate::fleet::backend::Backend;
use crate::reactor::suppressed_note;
use crate::reactor::timer::{TimerId, Timers};
use crate::service::{Service, ServiceId, ServiceStats, Topology};
use crate::stats::{EndReason, SessionSummary, WorkerStats};
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use pipes::PipePool;
use pool::Pool;
use session::{Report, Session};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime};

use crate::reactor::ConnId;
pub(crate) use env::lend_env;
pub use env::{Env, Throttles, TimerKey};
pub use handle::{Command, Handle, Inbox, Shared, WORKER_GONE, WorkerConfig};

pub(crate) const INBOX: Token = Token(usize::MAX);
/// Listener `i` (its slot) has the token `LISTENERS_TOP - i`. Session tokens never come
/// this high: that would take a session slot near 2^31 - 2^20, far past the most sessions a
/// worker can hold.
const LISTENERS_TOP: usize = usize::MAX - 1;
/// Most listeners one worker accepts on.
pub const MAX_LISTENERS: usize = 1 << 20;

/// Events taken from the kernel per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// Where this worker's loop is (the process's own stage is [`crate::lifecycle::Lifecycle`],
/// on the control thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoopState {
    Running,
    /// Not accepting, listeners open but not polled; stays up, sessions or not, until told
    /// to resume, drain or stop.
    Paused,
    /// Not accepting; exits when the last session ends.
    Draining,
    /// The loop ends after this turn.
    Stopped,
}

/// A listening socket, the service its clients are for, and whether clients may be
/// waiting on it (its edge has not been drained).
struct Listener {
    socket: TcpListener,
    service: ServiceId,
    ready: bool,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    events: Events,
    /// Empty once draining.
    listeners: Slab<Listener>,
    /// Whether the listeners were closed for good (drain or stop).
    closed: bool,
    /// Some listener may have clients waiting.
    listener_ready: bool,
    /// Accepting is paused for lack of descriptors; a timer (or a session ending) resumes it.
    accept_paused: bool,
    resume_accept_timer: Option<TimerId>,
    inbox: Receiver<Command>,
    sessions: Slab<Session>,
    next_generation: u32,
    topology: Arc<Topology>,
    pool: Pool,
    pipes: PipePool,
    timers: Timers<TimerKey>,
    now: Instant,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    throttles: Throttles,
    /// Sessions stopped for want of a buffer, oldest first.
    buffer_waiters: VecDeque<ConnId>,
    /// Sessions that used up their turn with work left, to run before the next poll.
    run_queue: Vec<ConnId>,
    resumable: Vec<ConnId>,
    fired: Vec<TimerKey>,
    /// Backends whose cool-down ends at a timer of ours (slots reused once fired).
    cooldowns: Slab<Arc<Backend>>,
    cooling: Vec<(Arc<Backend>, u64)>,
    /// Removed services whose sessions are cut at a timer of ours.
    retired: Slab<Arc<Service>>,
    access_log: Option<AccessLogBatch>,
    /// Where the ClientHellos of services with routes are peeked at (one for the worker;
    /// grown to twice the largest `max-hello` when first needed).
    scratch: Vec<u8>,
    /// Its share of the kernel fast path (`--bpf-redirect`), if loaded.
    fast: Option<fast::Fast>,
    state: LoopState,
}

impl Worker {
    /// Builds a worker, not yet running, and its inbox.
    pub fn build(config: WorkerConfig) -> io::Result<(Worker, Inbox)> {
        let (commands, inbox) = mpsc::channel();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), INBOX)?);
        let worker = Worker::new(poll, inbox, config)?;
        Ok((worker, Inbox { commands, waker }))
    }

    /// Starts a built worker's thread.
    pub fn spawn(worker: Worker, inbox: Inbox) -> io::Result<Handle> {
        let thread = std::thread::Builder::new()
            .name(format!("worker-{}", worker.index))
            .spawn(move || worker.run())?;
        Ok(Handle { inbox, thread })
    }

    fn new(poll: Poll, inbox: Receiver<Command>, config: WorkerConfig) -> io::Result<Worker> {
        let mut listeners = Slab::with_capacity(config.listeners.len());
        for (service, socket) in config.listeners {
            add_listener(&poll, &mut listeners, service, socket)?;
        }
        let now = Instant::now();
        // Room for every session up front: address space only (pages are touched as sessions
        // fill them), and the slab never has to move its entries to grow.
        let max_conns = config.topology.max_conns();
        config
            .stats
            .buffers_total
            .set(config.pool.capacity() as u64);
        config
            .stats
            .buffer_bytes
            .set((config.pool.capacity() * config.pool.buffer_size()) as u64);
        config.stats.buffers_free.set(config.pool.free() as u64);
        config.stats.pipes_total.set(config.pipes.capacity() as u64);
        config.stats.pipes_free.set(config.pipes.free() as u64);
        Ok(Worker {
            index: config.index,
            poll,
            events: Events::with_capacity(EVENTS_PER_WAIT),
            listeners,
            closed: false,
            listener_ready: true,
            accept_paused: false,
            resume_accept_timer: None,
            inbox,
            sessions: Slab::with_capacity(max_conns),
            next_generation: 0,
            topology: config.topology,
            pool: config.pool,
            pipes: config.pipes,
            timers: Timers::with_capacity(now, max_conns + 64),
            now,
            shared: config.shared,
            stats: config.stats,
            throttles: Throttles::default(),
            buffer_waiters: VecDeque::new(),
            run_queue: Vec::new(),
            resumable: Vec::new(),
            fired: Vec::new(),
            cooldowns: Slab::new(),
            cooling: Vec::new(),
            retired: Slab::new(),
            access_log: config.access_log,
            scratch: Vec::new(),
            fast: config.fast,
            state: LoopState::Running,
        })
    }

    /// Runs until drained or stopped. A poll failure other than an interruption is fatal for
    /// this worker: it is logged, its sessions are cut, and the control thread is told.
    fn run(mut self) {
        while self.state != LoopState::Stopped {
            if let Err(e) = self.turn() {
                warn!(
                    "worker {}: event loop failed: {e}; its sessions are cut",
                    self.index
                );
                self.cut_sessions();
                break;
            }
        }
        self.close_listeners();
        // Hands the last access log lines to the writer.
        if let Some(log) = &mut self.access_log {
            log.flush();
        }
        // Gone: it adopts no generation any more, so none waits for it.
        self.shared.adopted[self.index].store(WORKER_GONE, Ordering::Release);
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
        let _ = self.shared.control.wake();
    }

    /// One turn of the loop: wait, dispatch, run deferred work, fire timers.
    fn turn(&mut self) -> io::Result<()> {
        let timeout = if self.has_pending_work() {
            Some(Duration::ZERO)
        } else {
            self.timers.next_timeout(Instant::now())
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.now = Instant::now();

        // Take the events out so handlers can borrow `self` mutably; put them back after.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                INBOX => self.on_commands(),
                token => match self.listener_index(token) {
                    // (A paused worker may still find its listeners' events in this batch.)
                    Some(i) if self.state == LoopState::Running => {
                        self.listeners[i].ready = true;
                        self.listener_ready = true;
                    }
                    Some(_) => {}
                    None => self.dispatch(token, event),
                },
            }
        }
        self.events = events;
        if self.listener_ready && !self.accept_paused {
            self.accept_clients();
        }
        self.run_deferred();
        self.fire_timers();
        self.arm_cooldowns();
        if let Some(log) = &mut self.access_log {
            log.flush();
        }
        self.stats.buffers_free.set(self.pool.free() as u64);
        self.stats.pipes_free.set(self.pipes.free() as u64);
        if let Some((n, e)) = self.pipes.take_refusals() {
            if let Some(held_back) = self.throttles.pipes.allow(self.now) {
                warn!(
                    "cannot make a pipe for splicing ({n} refused): {e}; those reads go through \
                     buffers{}",
                    suppressed_note(held_back)
                );
            }
        }
        Ok(())
    }

    /// The listener a token names, if it names one.
    fn listener_index(&self, token: Token) -> Option<usize> {
        LISTENERS_TOP
            .checked_sub(token.0)
            .filter(|&i| i < MAX_LISTENERS && self.listeners.contains(i))
    }

    fn has_pending_work(&self) -> bool {
        !self.run_queue.is_empty()
            || (self.listener_ready && !self.accept_paused && !self.listeners.is_empty())
            || (!self.buffer_waiters.is_empty() && self.pool.free() > 0)
    }

    /// Runs `handler` on the session with `id` (if it is still there), with the worker's
    /// resources lent, and settles its report.
    fn with_session(&mut self, id: ConnId, handler: impl FnOnce(&mut Session, &mut Env) -> Report) {
        let Some(session) = self.sessions.get_mut(id.slot as usize) else {
            return;
        };
        if session.id() != id {
            return; // a late event for a session that has ended
        }
        let report = handler(session, &mut lend_env!(self));
        self.settle(id, report);
    }

    fn dispatch(&mut self, token: Token, event: &mio::event::Event) {
        let (id, socket) = ConnId::from_token(token);
        let side = duplex::Side::from_socket(socket);
        self.with_session(id, |session, env| session.on_ready(side, event, env));
    }

    /// Acts on what a handler reported.
    fn settle(&mut self, id: ConnId, report: Report) {
        if let Some(reason) = report.closed {
            let session = self.sessions.remove(id.slot as usize);
            self.end_session(session, reason);
            return;
        }
        let Some(session) = self.sessions.get_mut(id.slot as usize) else {
            return;
        };
        if report.need_buffer && !session.waiting_for_buffer {
            session.waiting_for_buffer = true;
            self.buffer_waiters.push_back(id);
        }
        if report.yielded && !session.queued {
            session.queued = true;
            self.run_queue.push(id);
        }
    }

    /// Counts a session that has ended and gives back what it held, then closes its sockets:
    /// in that order, so a client that sees its connection close and asks `/metrics` finds
    /// it counted and its buffers and lease returned.
    fn end_session(&mut self, mut session: Session, reason: EndReason) {
        // The bytes the kernel fast path moved are the session's too.
        session.unlink(&mut lend_env!(self));
        let summary = session.summary(self.now);
        session.release(&mut lend_env!(self));
        self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
        let service = Arc::clone(session.service());
        service.stats.active.fetch_sub(1, Ordering::AcqRel);
        self.stats.buffers_free.set(self.pool.free() as u64);
        self.stats.pipes_free.set(self.pipes.free() as u64);
        self.stats.sessions.set(self.sessions.len() as u64);
        service.stats.session_duration.observe(summary.duration);
        self.record(&summary, Some(&service), reason);
        drop(session);
        // Descriptors were freed: a paused listener may go on.
        if self.accept_paused {
            self.resume_accepting();
        }
        if reason == EndReason::NoResources {
            self.pause_accepting();
        }
        if self.state == LoopState::Draining && self.sessions.is_empty() {
            debug!("worker {}: drained", self.index);
            self.state = LoopState::Stopped;
        }
    }

    /// Counts, logs and writes the access log line for a finished (or refused) client.
    fn record(&mut self, summary: &SessionSummary, service: Option<&Service>, reason: EndReason) {
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
        if matches!(
            reason,
            EndReason::ShedMaxConns | EndReason::ShedPool | EndReason::PoolFull
        ) {
            if let Some(service) = service {
                ServiceStats::add(&service.stats.shed_by_class[summary.class as usize], 1);
                if reason == EndReason::PoolFull {
                    ServiceStats::add(&service.stats.pool_full, 1);
                }
            }
        }
        if reason == EndReason::NoBackend {
            self.stats.no_backend.add(1);
            if let Some(service) = service {
                ServiceStats::add(&service.stats.no_backend, 1);
            }
            if let Some(n) = self.throttles.no_backend.allow(self.now) {
                warn!(
                    "no backend could take client {}{}",
                    summary.client_addr,
                    suppressed_note(n)
                );
            }
        }
        if let Some(log) = &mut self.access_log {
            log.record(summary, reason, SystemTime::now());
        }
    }

    /// The id the next slab insert will get.
    fn next_id(&mut self) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        ConnId {
            slot: self.sessions.vacant_key() as u32,
            generation: self.next_generation,
        }
    }

    fn on_commands(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Topology(topology) => {
                    let generation = topology.generation();
                    // The old view is dropped here: the control thread holds every retired
                    // generation until all workers have moved on, so this is never the last
                    // reference (freeing a pool's backends is O(n), not for a worker's loop).
                    self.topology = topology;
                    self.shared.adopted[self.index].store(generation, Ordering::Release);
                    let _ = self.shared.control.wake();
                }
                Command::Listen { service, sockets } => {
                    if self.closed {
                        continue; // draining or stopped: no new listener
                    }
                    let paused = self.state == LoopState::Paused;
                    for socket in sockets {
                        let added = add_listener(&self.poll, &mut self.listeners, service, socket)
                            .and_then(|key| {
                                if paused {
                                    // Kept for a resume, not polled meanwhile.
                                    let socket = &mut self.listeners[key].socket;
                                    self.poll.registry().deregister(socket)?;
                                }
                                Ok(())
                            });
                        if let Err(e) = added {
                            warn!(
                                "worker {}: cannot accept on a new listener: {e}",
                                self.index
                            );
                        }
                    }
                    // Clients may already be queued on them.
                    self.listener_ready = !paused;
                }
                Command::Pause => self.pause(),
                Command::Resume => self.resume(),
                Command::Unlisten {
                    service,
                    only,
                    retire,
                } => {
                    self.unlisten(service, only.as_deref());
                    if let Some((service, deadline)) = retire {
                        let slot = self.retired.insert(service);
                        self.timers.insert(deadline, TimerKey::Retire(slot));
                    }
                }
                Command::Slot { conn, lease } => {
                    let waiting = self
                        .sessions
                        .get(conn.slot as usize)
                        .is_some_and(|s| s.id() == conn && s.is_queued());
                    if waiting {
                        self.with_session(conn, |session, env| session.on_slot(lease, env));
                    } else {
                        // It went (reset, timed out) while its slot was on the way.
                        let now_ms = clock::millis(self.now);
                        queueing::give_back(lease, &self.topology, &self.shared, now_ms);
                    }
                }
                Command::PutOut { conn } => self.with_session(conn, |session, _| session.put_out()),
                Command::Drain => self.drain(),
                Command::CutBackend(backend) => self.cut_backend(backend),
                Command::Stop => {
                    // Listeners first: clients waiting on them are not taken in this turn.
                    self.close_listeners();
                    self.cut_sessions();
                    self.state = LoopState::Stopped;
                }
            }
        }
    }

    /// Stops accepting and lets live sessions finish.
    fn drain(&mut self) {
        self.close_listeners();
        self.state = if self.sessions.is_empty() {
            LoopState::Stopped
        } else {
            LoopState::Draining
        };
    }

    /// Closes this worker's copies of its listeners and tells the control thread. A socket
    /// nobody else holds closes with it (new clients are refused); one the control thread,
    /// another worker, a newer tcplb or systemd also holds stays open there, and clients
    /// queued on it wait for whoever accepts next.
    fn close_listeners(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        for mut listener in self.listeners.drain() {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        self.listener_ready = false;
        self.shared.listening[self.index].store(false, Ordering::Release);
        // A paused worker was counted out of `accepting` already.
        if self.state != LoopState::Paused {
            self.shared.accepting.fetch_sub(1, Ordering::AcqRel);
        }
        let _ = self.shared.control.wake();
    }

    /// Stops accepting, keeping the listeners (their queues wait for whoever accepts on
    /// the same sockets) and staying up until told more.
    fn pause(&mut self) {
        if self.state != LoopState::Running {
            return;
        }
        for (_, listener) in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut listener.socket);
            listener.ready = false;
        }
        self.listener_ready = false;
        self.state = LoopState::Paused;
        self.shared.accepting.fetch_sub(1, Ordering::AcqRel);
        let _ = self.shared.control.wake();
    }

    /// Accepts again after a pause, first what queued meanwhile. A listener that cannot be
    /// registered again is closed here (logged); the others go on.
    fn resume(&mut self) {
        if self.state != LoopState::Paused {
            return;
        }
        self.state = LoopState::Running;
        self.shared.accepting.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<usize> = self.listeners.iter().map(|(key, _)| key).collect();
        for key in keys {
            let listener = &mut self.listeners[key];
            let token = Token(LISTENERS_TOP - key);
            match self
                .poll
                .registry()
                .register(&mut listener.socket, token, Interest::READABLE)
            {
                Ok(()) => listener.ready = true,
                Err(e) => {
                    warn!(
                        "worker {}: cannot accept on a listening socket again: {e}; closing \
                         this worker's copy",
                        self.index
                    );
                    self.listeners.remove(key);
                }
            }
        }
        self.listener_ready = !self.listeners.is_empty();
        let _ = self.shared.control.wake();
    }

    /// Closes this worker's copies of `service`'s listeners (those on `only`'s addresses,
    /// if given). A socket another worker or the control thread still holds stays open
    /// there.
    fn unlisten(&mut self, service: ServiceId, only: Option<&[std::net::SocketAddr]>) {
        let doomed: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.service == service)
            .filter(|(_, l)| {
                only.is_none_or(|addrs| l.socket.local_addr().is_ok_and(|a| addrs.contains(&a)))
            })
            .map(|(key, _)| key)
            .collect();
        for key in doomed {
            let mut listener = self.listeners.remove(key);
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
    }

    /// Cuts the sessions of a removed service whose drain time is over.
    fn cut_service(&mut self, service: &Arc<Service>) {
        let ids: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| Arc::ptr_eq(s.service(), service))
            .map(|(_, s)| s.id())
            .collect();
        if !ids.is_empty() {
            info!(
                "worker {}: service {} was removed: cutting its {} sessions left after the \
                 drain timeout",
                self.index,
                service.name,
                ids.len()
            );
        }
        for id in ids {
            let session = self.sessions.remove(id.slot as usize);
            session.abort();
            self.end_session(session, EndReason::Shutdown);
        }
    }

    /// Cuts the sessions on backend `id` (a scan of this worker's sessions: a rare command).
    fn cut_backend(&mut self, id: u64) {
        let ids: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.backend_id() == Some(id))
            .map(|(_, s)| s.id())
            .collect();
        if !ids.is_empty() {
            debug!(
                "worker {}: cutting {} sessions of a backend",
                self.index,
                ids.len()
            );
        }
        for id in ids {
            let session = self.sessions.remove(id.slot as usize);
            session.abort();
            self.end_session(session, EndReason::Killed);
        }
    }

    /// Resets every open session (at exit: a cut transfer must not look complete).
    fn cut_sessions(&mut self) {
        let ids: Vec<ConnId> = self.sessions.iter().map(|(_, s)| s.id()).collect();
        if !ids.is_empty() {
            info!(
                "worker {}: cutting {} sessions still open",
                self.index,
                ids.len()
            );
        }
        for id in ids {
            let session = self.sessions.remove(id.slot as usize);
            session.abort();
            self.end_session(session, EndReason::Shutdown);
        }
    }

    /// Runs sessions that had used up their turn, then those waiting for a buffer while
    /// buffers are free.
    fn run_deferred(&mut self) {
        std::mem::swap(&mut self.resumable, &mut self.run_queue);
        let mut queue = std::mem::take(&mut self.resumable);
        for id in queue.drain(..) {
            self.with_session(id, |session, env| session.resume(true, env));
        }
        self.resumable = queue;
        while self.pool.free() > 0 {
            let Some(id) = self.buffer_waiters.pop_front() else {
                break;
            };
            self.with_session(id, |session, env| session.resume(false, env));
        }
    }

    fn fire_timers(&mut self) {
        self.timers.expire(self.now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn(id) => self.with_session(id, |session, env| session.on_timer(env)),
                TimerKey::ResumeAccept => {
                    self.resume_accept_timer = None;
                    self.accept_paused = false;
                }
                TimerKey::Cooldown(slot) => {
                    if let Some(backend) = self.cooldowns.try_remove(slot) {
                        let now = clock::millis(self.now);
                        self.topology.refresh(&backend, now);
                        // Back in the running: it may take someone waiting.
                        if let Some(fleet) = self.topology.pool(backend.pool) {
                            queueing::serve(fleet, &self.shared, now);
                        }
                        // Still climbing its slow-start ramp: again in a moment.
                        if backend.settle_ramp(now) {
                            let next = now + crate::fleet::RAMP_TICK_MS;
                            self.cooling.push((backend, next));
                        }
                    }
                }
                TimerKey::Retire(slot) => {
                    if let Some(service) = self.retired.try_remove(slot) {
                        self.cut_service(&service);
                    }
                }
            }
        }
        self.fired = fired;
    }

    /// Arms a timer for each breaker that opened this turn, so the backend's selector sees
    /// it again (for its trial) when the cool-down ends.
    fn arm_cooldowns(&mut self) {
        for (backend, until) in self.cooling.drain(..) {
            let slot = self.cooldowns.insert(backend);
            self.timers
                .insert(clock::instant(until), TimerKey::Cooldown(slot));
        }
    }
}

/// Registers `socket` for `service` in a free listener slot; returns the slot.
fn add_listener(
    poll: &Poll,
    listeners: &mut Slab<Listener>,
    service: ServiceId,
    mut socket: TcpListener,
) -> io::Result<usize> {
    if listeners.len() >= MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("more than {MAX_LISTENERS} listeners for one worker"),
        ));
    }
    let entry = listeners.vacant_entry();
    poll.registry().register(
        &mut socket,
        Token(LISTENERS_TOP - entry.key()),
        Interest::READABLE,
    )?;
    let key = entry.key();
    entry.insert(Listener {
        socket,
        service,
        ready: true,
    });
    Ok(key)
}

/// A worker built but not spawned, run one turn at a time.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::builder::Builder;
    use crate::fleet::builder::tests::{POLICY, spec};
    use crate::fleet::select::Balance;
    use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
    use std::sync::mpsc::Sender;

    /// A worker whose one backend is `backend`, its command channel and waker, and the
    /// address it listens on.
    fn worker(backend: &StdListener) -> (Worker, Sender<Command>, Waker, SocketAddr) {
        let port = backend.local_addr().expect("addr").port();
        let fleet = Builder::new(POLICY, Balance::LeastActive)
            .build(&[spec(port, 1, false)])
            .0;
        let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let poll = Poll::new().expect("poll");
        let waker = Waker::new(poll.registry(), INBOX).expect("waker");
        // The control thread's waker (one waker per poll: it gets a poll of its own).
        let control_poll = Poll::new().expect("poll");
        let control = Arc::new(Waker::new(control_poll.registry(), Token(0)).expect("waker"));
        let (commands, inbox) = mpsc::channel();
        let config = WorkerConfig {
            index: 0,
            listeners: vec![(0, listener)],
            topology: Arc::new(Topology::new(
                0,
                16,
                [crate::service::for_tests(0, None)],
                [fleet],
            )),
            pool: Pool::new(16 * 1024, 8).expect("pool"),
            pipes: PipePool::new(0, None),
            shared: Arc::new(Shared::for_tests(1, control)),
            stats: Arc::new(WorkerStats::default()),
            access_log: None,
            fast: None,
        };
        let worker = Worker::new(poll, inbox, config).expect("worker");
        (worker, commands, waker, addr)
    }

    /// Runs turns until `done`, for at most five seconds.
    fn turn_until(worker: &mut Worker, done: impl Fn(&Worker) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(worker) {
            assert!(Instant::now() < deadline, "the worker did not get there");
            worker.turn().expect("turn");
        }
    }

    #[test]
    fn a_queued_client_is_accepted_and_connected() {
        let backend = StdListener::bind("127.0.0.1:0").expect("bind");
        let (mut worker, _commands, _waker, addr) = worker(&backend);
        let _client = StdStream::connect(addr).expect("connect");
        turn_until(&mut worker, |w| !w.sessions.is_empty());
        assert!(backend.accept().is_ok(), "the backend was dialled");
    }

    #[test]
    fn a_stop_in_the_same_turn_as_waiting_clients_accepts_none_of_them() {
        let backend = StdListener::bind("127.0.0.1:0").expect("bind");
        let (mut worker, commands, waker, addr) = worker(&backend);
        let _client = StdStream::connect(addr).expect("connect");
        commands.send(Command::Stop).expect("send");
        waker.wake().expect("wake");
        // One turn sees both: the command, and a listener with a client queued.
        worker.turn().expect("turn");
        assert_eq!(worker.state, LoopState::Stopped);
        assert!(
            worker.sessions.is_empty(),
            "a session was opened after Stop"
        );
        assert_eq!(worker.shared.accepting.load(Ordering::Acquire), 0);
        backend.set_nonblocking(true).expect("non-blocking");
        assert_eq!(
            backend.accept().map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock),
            "no backend was dialled after Stop"
        );
    }

    #[test]
    fn a_paused_worker_accepts_nothing_until_it_resumes() {
        let backend = StdListener::bind("127.0.0.1:0").expect("bind");
        let (mut worker, commands, waker, addr) = worker(&backend);
        commands.send(Command::Pause).expect("send");
        waker.wake().expect("wake");
        // The pause and a waiting client in the same turn: the client is not taken.
        let _first = StdStream::connect(addr).expect("connect");
        worker.turn().expect("turn");
        assert_eq!(worker.state, LoopState::Paused);
        assert_eq!(worker.shared.accepting.load(Ordering::Acquire), 0);
        assert!(worker.shared.listening[0].load(Ordering::Acquire));
        let _second = StdStream::connect(addr).expect("connect: the listener stays open");
        // (Not `turn`: with nothing to do it would wait for ever.)
        for _ in 0..5 {
            worker
                .poll
                .poll(&mut worker.events, Some(Duration::from_millis(20)))
                .expect("poll");
            assert!(
                worker
                    .events
                    .iter()
                    .all(|e| e.token() != Token(LISTENERS_TOP)),
                "a paused listener is not polled"
            );
        }
        assert!(worker.sessions.is_empty(), "a paused worker accepted");
        assert_eq!(worker.state, LoopState::Paused, "no session, still up");
        commands.send(Command::Resume).expect("send");
        waker.wake().expect("wake");
        turn_until(&mut worker, |w| w.sessions.len() == 2);
        assert_eq!(worker.shared.accepting.load(Ordering::Acquire), 1);
        // And a client that comes later is seen through the listener's events again.
        let _third = StdStream::connect(addr).expect("connect");
        turn_until(&mut worker, |w| w.sessions.len() == 3);
        // Draining from a pause counts the worker out once.
        commands.send(Command::Pause).expect("send");
        commands.send(Command::Drain).expect("send");
        waker.wake().expect("wake");
        turn_until(&mut worker, |w| w.state == LoopState::Draining);
        assert_eq!(worker.shared.accepting.load(Ordering::Acquire), 0);
        assert!(!worker.shared.listening[0].load(Ordering::Acquire));
    }
}
