//! The control thread: everything that is not moving a client's bytes, on one event loop
//! of its own, so none of it can stall a worker.
//!
//! | token | handler |
//! |---|---|
//! | signals | SIGHUP: reload; SIGTERM/SIGINT: drain (a second one: stop); SIGUSR1: reopen the access log; SIGUSR2: upgrade |
//! | the waker | a new fleet generation from the discovery thread; a worker adopted a generation or exited |
//! | the admin listener | a new admin connection ([`crate::admin::http`]) |
//! | the upgrade pipe | the new process an upgrade started says it serves, or is gone ([`upgrade`]) |
//! | a slab entry | an admin connection or a health probe (`conns.rs`, [`prober`]) |
//!
//! It owns the process's [`Lifecycle`]: running, standing by (an upgrade's probation:
//! workers stop accepting but keep their listeners, and accept again if the new process
//! dies), draining (workers stop accepting and finish their sessions, up to
//! `--drain-timeout`), stopping (workers cut what is left).
//! It keeps a descriptor of every client listening socket ([`sockets`]) for an upgrade to
//! hand over, and lets go of them when a drain begins (or when every worker accepting on
//! one has died), so that a socket nobody serves does not stay open.
//! It does not exit while a process an upgrade gave up on is left unreaped ([`reaper`]).
//! It hands each new fleet generation to every worker, and once all have adopted it,
//! replays the generation's selectors so changes made on the old one meanwhile count. It
//! exits when the last worker has.

mod conns;
pub mod pid_file;
pub mod prober;
pub mod reaper;
pub mod sockets;
pub mod start;
pub mod systemd;
pub mod upgrade;

use crate::admin::access_log::AccessLog;
use crate::admin::http::Endpoint;
use crate::clock;
use crate::fleet::Fleet;
use crate::fleet::discovery::{Cause, Discovery};
use crate::lifecycle::Lifecycle;
use crate::logging::Throttle;
use crate::stats::WorkerStats;
use crate::worker::timer::Timers;
use crate::worker::{Command, ConnId, Handle, Shared, WORKER_GONE};
use conns::Conn;
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use pid_file::PidFile;
use reaper::Reaper;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use upgrade::{Invocation, Upgrade};

const SIGNALS: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const ADMIN_LISTENER: Token = Token(usize::MAX - 2);
const UPGRADE: Token = Token(usize::MAX - 3);
/// How often the processes an upgrade started are looked at (has one that closed its pipe,
/// or one on probation, exited? has one given up on ended?), while there is one to look at.
const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Catches the signals the control thread handles. Called first thing at start, so that a
/// SIGHUP or SIGTERM during start-up (resolving names, allocating pools) is held for the
/// loop instead of killing the process with the default action.
pub fn catch_signals() -> io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
}

/// The control thread's poll and the waker workers and helper threads wake it with (made
/// before the workers, which need the waker).
pub fn poll() -> io::Result<(Poll, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    Ok((poll, waker))
}

/// What a control timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TimerKey {
    /// An admin connection's or a probe's deadline.
    Conn(ConnId),
    /// Time to probe every backend.
    HealthRound,
    /// Draining has run out of time.
    DrainDeadline,
    /// The new process of an upgrade has run out of time to say it serves.
    UpgradeDeadline,
    /// The probation of the new process of an upgrade has passed.
    ProbationEnd,
    /// Look at the processes an upgrade started ([`WATCH_INTERVAL`]).
    UpgradeWatch,
}

/// Everything the control thread starts with.
pub struct ControlConfig {
    pub poll: Poll,
    pub signals: Signals,
    pub fleet: Arc<Fleet>,
    pub discovery: Discovery,
    pub admin: Option<TcpListener>,
    pub access_log: Option<AccessLog>,
    pub drain_timeout: Duration,
    /// How long a health probe may take to connect.
    pub probe_timeout: Duration,
    pub workers: Vec<Handle>,
    pub worker_stats: Vec<Arc<WorkerStats>>,
    pub shared: Arc<Shared>,
    /// Where clients connect (every worker's listener is bound to it).
    pub local_addr: std::net::SocketAddr,
    /// Every client listening socket, for an upgrade to hand over.
    pub sockets: Vec<std::net::TcpListener>,
    /// For each worker, the sockets it accepts on (indexes into `sockets`).
    pub plan: Vec<Vec<usize>>,
    /// What an upgrade runs.
    pub invocation: Invocation,
    pub upgrade_timeout: Duration,
    /// After an upgrade's new process says it serves, how long this one stands by
    /// (zero: it hands over at once).
    pub upgrade_probation: Duration,
    pub pid_file: Option<PidFile>,
}

pub struct Control {
    poll: Poll,
    events: Events,
    signals: Signals,
    discovery: Discovery,
    admin: Option<Endpoint>,
    conns: Slab<Conn>,
    /// Which backend to probe next, and how many probes are open.
    probes: prober::Schedule,
    next_generation: u32,
    timers: Timers<TimerKey>,
    fired: Vec<TimerKey>,
    now: Instant,
    started: SystemTime,
    fleet: Arc<Fleet>,
    /// A generation handed to the workers and not yet adopted by all, with the lines to
    /// log once it is.
    adopting: Option<(u32, Vec<String>)>,
    /// Generations replaced while workers may still use them: held until every worker has
    /// moved on, so that the last reference goes here and not on a worker's loop (freeing a
    /// generation, and the backends only it still lists, is O(n)).
    retired: Vec<Arc<Fleet>>,
    workers: Vec<Handle>,
    worker_stats: Vec<Arc<WorkerStats>>,
    shared: Arc<Shared>,
    access_log: Option<AccessLog>,
    lifecycle: Lifecycle,
    drain_timeout: Duration,
    probe_timeout: Duration,
    /// Sessions open when the drain began (0: nothing to say when it ends).
    draining_sessions: usize,
    /// What started the drain, until every listener is closed and that is announced.
    drain_unannounced: Option<String>,
    accept_throttle: Throttle,
    fds_throttle: Throttle,
    local_addr: std::net::SocketAddr,
    /// This process's copies of the client listening sockets (`None` once let go of).
    sockets: Vec<Option<std::net::TcpListener>>,
    plan: Vec<Vec<usize>>,
    invocation: Invocation,
    upgrade_timeout: Duration,
    upgrade_probation: Duration,
    /// Where an upgrade stands.
    upgrade: Upgrade,
    /// The processes of upgrades given up on, until reaped.
    reaper: Reaper,
    /// A look at the processes an upgrade started is armed ([`TimerKey::UpgradeWatch`]).
    watching: bool,
    /// SIGTERMs and SIGINTs so far (the second one cuts the sessions left).
    stop_signals: u32,
    pid_file: Option<PidFile>,
}

impl Control {
    /// Where clients connect.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    pub fn new(config: ControlConfig) -> io::Result<Control> {
        let ControlConfig {
            poll,
            mut signals,
            fleet,
            discovery,
            admin,
            access_log,
            drain_timeout,
            probe_timeout,
            workers,
            worker_stats,
            shared,
            local_addr,
            sockets,
            plan,
            invocation,
            upgrade_timeout,
            upgrade_probation,
            pid_file,
        } = config;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let admin = match admin {
            Some(listener) => Some(Endpoint::new(listener, poll.registry(), ADMIN_LISTENER)?),
            None => None,
        };
        let now = Instant::now();
        let mut timers = Timers::new(now);
        if fleet.policy().checks.is_some() {
            timers.insert(now, TimerKey::HealthRound);
        }
        Ok(Control {
            poll,
            events: Events::with_capacity(256),
            signals,
            discovery,
            admin,
            conns: Slab::new(),
            probes: prober::Schedule::default(),
            next_generation: 0,
            timers,
            fired: Vec::new(),
            now,
            started: SystemTime::now(),
            fleet,
            adopting: None,
            retired: Vec::new(),
            workers,
            worker_stats,
            shared,
            access_log,
            lifecycle: Lifecycle::Running,
            drain_timeout,
            probe_timeout,
            draining_sessions: 0,
            drain_unannounced: None,
            accept_throttle: Throttle::default(),
            fds_throttle: Throttle::default(),
            local_addr,
            sockets: sockets.into_iter().map(Some).collect(),
            plan,
            invocation,
            upgrade_timeout,
            upgrade_probation,
            upgrade: Upgrade::Idle,
            reaper: Reaper::new(reaper::GRACE),
            watching: false,
            stop_signals: 0,
            pid_file,
        })
    }

    /// Runs until every worker has exited and every process an upgrade gave up on has been
    /// reaped; then waits for the threads and the access log.
    pub fn run(mut self) -> io::Result<()> {
        loop {
            if self.shared.running.load(Ordering::Acquire) == 0 {
                // (Workers that all failed while an upgrade was starting.)
                self.give_up_upgrade("every worker has stopped");
                if self.reaper.is_empty() {
                    break;
                }
            }
            let timeout = if self.admin.as_ref().is_some_and(Endpoint::is_ready) {
                Some(Duration::ZERO)
            } else {
                self.timers.next_timeout(Instant::now())
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stop_workers();
                    self.join_workers();
                    return Err(e);
                }
            }
            self.now = Instant::now();
            let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    WAKER => self.on_wake(),
                    UPGRADE => self.on_upgrade_pipe(),
                    ADMIN_LISTENER => {
                        if let Some(admin) = &mut self.admin {
                            admin.set_ready();
                        }
                    }
                    token => self.dispatch(token, event),
                }
            }
            self.events = events;
            if self.admin.as_ref().is_some_and(Endpoint::is_ready) {
                self.accept_admin();
            }
            self.fire_timers();
        }
        self.announce_drain();
        if self.lifecycle == Lifecycle::Running {
            warn!("every worker has stopped; exiting");
        } else if self.lifecycle == Lifecycle::Draining && self.draining_sessions > 0 {
            info!("drained: every session has finished; exiting");
        }
        self.join_workers();
        // Writes out the last access log lines (every worker has handed over its last).
        self.access_log = None;
        if let Some(pid_file) = &self.pid_file {
            pid_file.remove();
        }
        Ok(())
    }

    fn join_workers(&mut self) {
        for handle in self.workers.drain(..) {
            let _ = handle.thread.join();
        }
    }

    fn stop_workers(&mut self) {
        self.lifecycle = Lifecycle::Stopping;
        for w in &self.workers {
            w.send(Command::Stop);
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGUSR1 => self.reopen_access_log(),
                SIGUSR2 => self.begin_upgrade(),
                SIGHUP if self.lifecycle.may_serve() => self.reload(),
                SIGHUP => {}
                _ => {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    self.stop_signals += 1;
                    match (self.lifecycle, self.stop_signals, self.upgrade.successor()) {
                        (Lifecycle::Running, ..) => self.begin_drain(name.to_string()),
                        (Lifecycle::Standby, ..) => self.end_probation_early(name),
                        // Draining since an upgrade handed over: this is the first request
                        // to stop (systemd's stop sends it to every process of the service).
                        (Lifecycle::Draining, 1, Some(pid)) => info!(
                            "{name}: draining already (since the upgrade to pid {pid}); a \
                             second signal cuts the sessions left"
                        ),
                        _ => {
                            warn!("second signal: exiting now");
                            self.stop_workers();
                            self.reaper.kill_all();
                        }
                    }
                }
            }
        }
    }

    /// SIGHUP: re-reads the backends. On probation, the new process is told too: systemd
    /// (`systemctl reload`) signals the main process, which is this one until the
    /// probation has passed.
    fn reload(&mut self) {
        match self.upgrade.successor() {
            Some(pid) if self.lifecycle == Lifecycle::Standby => {
                info!(
                    "SIGHUP: reloading the backend set (and passing the signal on to pid {pid}, \
                     which serves on probation)"
                );
                // SAFETY: kill has no memory effects; `pid` is our own child, not reaped
                // yet (it is looked at on probation only through `try_wait`, and a reaped
                // one ends the probation), so it names no other process.
                if unsafe { libc::kill(pid as libc::pid_t, SIGHUP) } == -1 {
                    warn!(
                        "cannot pass SIGHUP on to pid {pid}: {}",
                        io::Error::last_os_error()
                    );
                }
            }
            _ => info!("SIGHUP: reloading the backend set"),
        }
        self.discovery.reload();
    }

    /// SIGUSR1 (logrotate has renamed the access log): the writer thread opens the path
    /// again and logs how that went.
    fn reopen_access_log(&self) {
        match &self.access_log {
            Some(log) => log.reopen(),
            None => info!("SIGUSR1: no access log to reopen (--access-log is off)"),
        }
    }

    /// Every worker stops accepting and lets its sessions finish for up to
    /// `--drain-timeout`. `/healthz` answers 503 from now. This process lets go of its
    /// listening sockets: one nobody else holds closes, so new clients are refused; one a
    /// newer tcplb (after an upgrade) or systemd holds stays open there, queue and all.
    fn begin_drain(&mut self, why: String) {
        self.lifecycle = Lifecycle::Draining;
        self.give_up_upgrade(&why);
        self.sockets.iter_mut().for_each(|s| *s = None);
        for w in &self.workers {
            w.send(Command::Drain);
        }
        if self.upgrade.successor().is_none() {
            if let Err(e) = systemd::notify("STOPPING=1") {
                debug!("cannot tell systemd that tcplb is stopping: {e}");
            }
        }
        self.drain_unannounced = Some(why);
        self.timers
            .insert(self.now + self.drain_timeout, TimerKey::DrainDeadline);
        self.announce_drain();
    }

    /// Lets go of the sockets no running worker accepts on any more (its worker's loop
    /// failed), so that they close instead of queueing clients nobody serves.
    fn release_orphaned_sockets(&mut self) {
        if !self.lifecycle.is_running()
            || self.shared.accepting.load(Ordering::Acquire) == self.workers.len()
        {
            return;
        }
        for (j, socket) in self.sockets.iter_mut().enumerate() {
            let served = self.plan.iter().enumerate().any(|(w, sockets)| {
                sockets.contains(&j) && self.shared.listening[w].load(Ordering::Acquire)
            });
            if !served {
                *socket = None;
            }
        }
    }

    /// Once every listener is closed (so the line is true when it is read), says how many
    /// sessions are left to drain.
    fn announce_drain(&mut self) {
        if self.shared.accepting.load(Ordering::Acquire) > 0 {
            return;
        }
        let Some(why) = self.drain_unannounced.take() else {
            return;
        };
        let sessions = self.shared.sessions.load(Ordering::Acquire);
        self.draining_sessions = sessions;
        if sessions == 0 {
            info!("{why}: no sessions open; exiting");
        } else {
            info!(
                "{why}: stopped accepting; draining {sessions} sessions for up to {:?}",
                self.drain_timeout
            );
        }
    }

    /// Something woke us: a new fleet generation, or news from a worker.
    fn on_wake(&mut self) {
        while let Some(update) = self.discovery.next_update() {
            let what = match update.cause {
                Cause::Reload => "reload",
                Cause::Resolve => "re-resolve",
            };
            match update.result {
                Ok((fleet, changes)) => {
                    let mut lines = vec![format!(
                        "{what}: {}; {} backends",
                        changes.counts(),
                        fleet.len()
                    )];
                    lines.extend(changes.lines().into_iter().map(|l| format!("{what}: {l}")));
                    if fleet.is_empty() {
                        lines.push(format!(
                            "{what}: the backend set is empty; new clients will be closed"
                        ));
                    }
                    self.adopt(fleet, lines);
                }
                Err(message) => warn!("{what} failed, keeping the running set: {message}"),
            }
        }
        self.check_adopted();
        self.release_orphaned_sockets();
        self.announce_probation();
        self.announce_drain();
    }

    /// Makes `fleet` the current generation, here and on every worker; `lines` are logged
    /// once every worker uses it (so what they say is in effect when they are read).
    fn adopt(&mut self, fleet: Arc<Fleet>, lines: Vec<String>) {
        if let Some((_, pending)) = self.adopting.take() {
            // Superseded before every worker took it: say what it was anyway.
            pending.iter().for_each(|line| info!("{line}"));
        }
        self.adopting = Some((fleet.generation(), lines));
        for w in &self.workers {
            w.send(Command::Fleet(Arc::clone(&fleet)));
        }
        let old = std::mem::replace(&mut self.fleet, fleet);
        self.retired.push(old);
        self.check_adopted();
    }

    /// Once every running worker uses the newest generation, replays its selectors (the
    /// sessions that started or ended on the old one meanwhile are then counted in it) and
    /// logs what changed.
    fn check_adopted(&mut self) {
        let Some((generation, _)) = &self.adopting else {
            return;
        };
        // A worker that has exited adopts nothing any more: it is not waited for.
        let all = self.shared.adopted.iter().all(|g| {
            let adopted = g.load(Ordering::Acquire);
            adopted == *generation || adopted == WORKER_GONE
        });
        if all {
            self.fleet.refresh_all(clock::millis(Instant::now()));
            self.retired.clear();
            if let Some((_, lines)) = self.adopting.take() {
                lines.iter().for_each(|line| info!("{line}"));
            }
        }
    }

    fn fire_timers(&mut self) {
        self.timers.expire(self.now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Conn(id) => self.on_conn_timer(id),
                TimerKey::HealthRound => self.health_round(),
                TimerKey::DrainDeadline => {
                    if self.lifecycle == Lifecycle::Draining {
                        warn!("drain timeout ({:?}) reached", self.drain_timeout);
                        self.stop_workers();
                    }
                }
                TimerKey::UpgradeDeadline => self.upgrade_deadline(),
                TimerKey::ProbationEnd => self.probation_end(),
                TimerKey::UpgradeWatch => self.on_watch(),
            }
        }
        self.fired = fired;
    }
}
