//! The control thread: everything that is not moving a client's bytes, on one event loop
//! of its own, so none of it can stall a worker.
//!
//! [`Control`] is a dispatcher over small owners, each with its own state:
//!
//! | owner | owns |
//! |---|---|
//! | [`Lifecycle`] | running, standing by (an upgrade's probation), draining (why, what was announced), stopping |
//! | [`sockets::Sockets`] | every service's listening sockets (the control thread's copies) |
//! | [`registry::Registry`] | the services by name: ids, counters, what the workers use |
//! | [`rollout::Rollout`] | the current [`Topology`] and handing new ones to the workers |
//! | [`prober::Prober`] | health and agent checks in flight and each pool's rounds |
//! | `admin` | the admin endpoint's connections |
//! | [`ctl::CtlSocket`] | the control socket and its connections (`tcplb ctl`; the commands: `commands`) |
//! | [`ramp::Ramp`] | backends on their slow-start ramp, replayed as their weight climbs |
//! | [`upgrade::Upgrade`] | a binary upgrade: starting, on probation, handed over |
//! | [`reaper::Reaper`] | processes of upgrades given up on, until reaped |
//!
//! | token | handler |
//! |---|---|
//! | signals | SIGHUP: reload; SIGTERM/SIGINT: drain (a second one: stop); SIGUSR1: reopen the access log; SIGUSR2: upgrade |
//! | the waker | the discovery thread has news (a reload, a re-resolve); a worker adopted a generation or exited |
//! | the admin listener | a new admin connection |
//! | the control socket | a new `tcplb ctl` connection |
//! | the upgrade pipe | the new process an upgrade started says it serves, or is gone |
//! | `ConnId` tokens | an admin connection (socket 0), a control connection (socket 0, slots from `ctl::SLOT_BASE`) or a check (socket 1) |
//!
//! It exits when the last worker has, and every process an upgrade gave up on is reaped.

mod admin;
pub mod check;
mod commands;
pub mod ctl;
pub mod failure;
pub mod pid_file;
pub mod prober;
pub mod ramp;
pub mod reaper;
pub mod registry;
mod reload;
pub mod rollout;
pub mod sockets;
pub mod start;
pub mod state;
pub mod systemd;
pub mod upgrade;

use crate::access_log::AccessLog;
use crate::admin::ReloadStats;
use crate::admin::history::{self, History};
use crate::admin::http::Endpoint;
use crate::clock;
use crate::fleet::PoolId;
use crate::fleet::discovery::{Discovery, Overlays, PoolChange, Update};
use crate::fleet::{Fleet, Marked, MarkedDown};
use crate::lifecycle::{Drain, Lifecycle};
use crate::reactor::ConnId;
use crate::reactor::timer::Timers;
use crate::reactor::{Throttle, suppressed_note};
use crate::service::Topology;
use crate::stats::WorkerStats;
use crate::worker::{Command, Handle, Shared};
use admin::AdminConns;
use commands::Pending;
use ctl::{CtlSocket, Progress};
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use pid_file::PidFile;
use prober::Prober;
use ramp::Ramp;
use reaper::Reaper;
use registry::Registry;
use rollout::Rollout;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use sockets::Sockets;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use upgrade::{Invocation, Upgrade};

const SIGNALS: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const ADMIN_LISTENER: Token = Token(usize::MAX - 2);
const UPGRADE: Token = Token(usize::MAX - 3);
const CTL_LISTENER: Token = Token(usize::MAX - 4);
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
pub enum TimerKey {
    /// An admin connection's deadline.
    Admin(ConnId),
    /// A control connection's deadline.
    Ctl(ConnId),
    /// A probe's deadline.
    Probe(ConnId),
    /// A probe's answer has had its moment to grow.
    ProbeSettle(ConnId),
    /// Time to probe every backend of a pool.
    HealthRound(PoolId),
    /// Time to ask every agent of a pool.
    AgentRound(PoolId),
    /// Replay the backends on their slow-start ramp.
    RampTick,
    /// Draining has run out of time.
    DrainDeadline,
    /// The new process of an upgrade has run out of time to say it serves.
    UpgradeDeadline,
    /// The probation of the new process of an upgrade has passed.
    ProbationEnd,
    /// Look at the processes an upgrade started ([`WATCH_INTERVAL`]).
    UpgradeWatch,
    /// Time to sample the dashboard's history ([`crate::admin::history::INTERVAL`]).
    HistoryTick,
    /// Time for the pools whose balance keeps figures over the whole pool (least-latency's
    /// median) to update them ([`BALANCE_TICK`]).
    BalanceTick,
}

/// How often pools that ask for it (least-latency) get their O(n) upkeep.
const BALANCE_TICK: Duration = Duration::from_millis(500);

/// What `max-conns` must fit in: the open-file limit and the descriptors kept aside (see
/// `limits`). A reload fits a new `max-conns` the way start-up did.
#[derive(Clone, Copy, Debug)]
pub struct FdBudget {
    pub nofile: u64,
    pub reserve: u64,
}

/// Everything the control thread starts with.
pub struct ControlConfig {
    pub poll: Poll,
    pub signals: Signals,
    pub rollout: Rollout,
    pub registry: Registry,
    pub sockets: Sockets,
    pub discovery: Discovery,
    pub admin: Option<TcpListener>,
    /// The control socket and its path.
    pub ctl: Option<(std::os::unix::net::UnixListener, std::path::PathBuf)>,
    pub access_log: Option<AccessLog>,
    pub global: crate::config::Global,
    pub fd_budget: Option<FdBudget>,
    pub workers: Vec<Handle>,
    pub worker_stats: Vec<Arc<WorkerStats>>,
    pub shared: Arc<Shared>,
    /// What an upgrade runs.
    pub invocation: Invocation,
    pub pid_file: Option<PidFile>,
}

pub struct Control {
    poll: Poll,
    events: Events,
    signals: Signals,
    timers: Timers<TimerKey>,
    fired: Vec<TimerKey>,
    now: Instant,
    started: SystemTime,
    lifecycle: Lifecycle,
    sockets: Sockets,
    registry: Registry,
    rollout: Rollout,
    discovery: Discovery,
    prober: Prober,
    admin: AdminConns,
    ctl: Option<CtlSocket>,
    /// `tcplb ctl` commands waiting for the discovery thread, by ticket.
    pending: HashMap<u64, Pending>,
    /// The last ticket given (SIGHUP's reloads take 0).
    tickets: u64,
    /// Answers to changes, written once every worker has adopted the generation.
    settling: Vec<(ConnId, Result<String, String>)>,
    ramp: Ramp,
    /// What `tcplb ctl` added and deleted, as the discovery thread last said.
    overlays: Overlays,
    access_log: Option<AccessLog>,
    /// The process-wide settings in effect (`workers`, `admin` and the pools of buffers
    /// and pipes stay as they started until an upgrade).
    global: crate::config::Global,
    fd_budget: Option<FdBudget>,
    reloads: ReloadStats,
    /// The dashboard's history (`/api/stats`), sampled every [`TimerKey::HistoryTick`].
    history: History,
    workers: Vec<Handle>,
    worker_stats: Vec<Arc<WorkerStats>>,
    shared: Arc<Shared>,
    invocation: Invocation,
    /// Where an upgrade stands.
    upgrade: Upgrade,
    /// The processes of upgrades given up on, until reaped.
    reaper: Reaper,
    /// A look at the processes an upgrade started is armed ([`TimerKey::UpgradeWatch`]).
    watching: bool,
    pid_file: Option<PidFile>,
    fds_throttle: Throttle,
}

impl Control {
    /// Where clients of the first service connect (its first address).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.sockets.all_addrs().first().map(|(_, addr)| *addr)
    }

    /// Where the admin endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.local_addr()
    }

    pub fn new(config: ControlConfig) -> io::Result<Control> {
        let ControlConfig {
            poll,
            mut signals,
            rollout,
            registry,
            sockets,
            discovery,
            admin,
            ctl,
            access_log,
            global,
            fd_budget,
            workers,
            worker_stats,
            shared,
            invocation,
            pid_file,
        } = config;
        let ctl = match ctl {
            Some((listener, path)) => Some(CtlSocket::new(
                listener,
                path,
                poll.registry(),
                CTL_LISTENER,
            )?),
            None => None,
        };
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let admin = match admin {
            Some(listener) => AdminConns::new(Some(Endpoint::new(
                listener,
                poll.registry(),
                ADMIN_LISTENER,
            )?)),
            None => AdminConns::new(None),
        };
        let now = Instant::now();
        let mut timers = Timers::new(now);
        let mut prober = Prober::default();
        for fleet in rollout.current().pools() {
            prober.schedule(fleet, &mut timers, now);
        }
        timers.insert(now + BALANCE_TICK, TimerKey::BalanceTick);
        timers.insert(now, TimerKey::HistoryTick);
        Ok(Control {
            poll,
            events: Events::with_capacity(256),
            signals,
            timers,
            fired: Vec::new(),
            now,
            started: SystemTime::now(),
            lifecycle: Lifecycle::Running,
            sockets,
            registry,
            rollout,
            discovery,
            prober,
            admin,
            ctl,
            pending: HashMap::new(),
            tickets: 0,
            settling: Vec::new(),
            ramp: Ramp::default(),
            overlays: Vec::new(),
            access_log,
            global,
            fd_budget,
            reloads: ReloadStats::default(),
            history: History::default(),
            workers,
            worker_stats,
            shared,
            invocation,
            upgrade: Upgrade::Idle,
            reaper: Reaper::new(reaper::GRACE),
            watching: false,
            pid_file,
            fds_throttle: Throttle::default(),
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
            let timeout =
                if self.admin.is_ready() || self.ctl.as_ref().is_some_and(CtlSocket::is_ready) {
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
                    ADMIN_LISTENER => self.admin.set_ready(),
                    CTL_LISTENER => {
                        if let Some(ctl) = &mut self.ctl {
                            ctl.set_ready();
                        }
                    }
                    token if Prober::owns(token) => {
                        if let Some(outcome) =
                            self.prober
                                .on_ready(token, event, &mut self.timers, self.now)
                        {
                            self.fold_probe(outcome);
                        }
                    }
                    token if CtlSocket::owns(token) => self.serve_ctl(ConnId::from_token(token).0),
                    token => self.serve_admin(ConnId::from_token(token).0),
                }
            }
            self.events = events;
            if self.admin.is_ready() {
                self.accept_admin();
            }
            if self.ctl.as_ref().is_some_and(CtlSocket::is_ready) {
                self.accept_ctl();
            }
            self.fire_timers();
        }
        self.announce_drain();
        match &self.lifecycle {
            Lifecycle::Running => warn!("every worker has stopped; exiting"),
            Lifecycle::Draining(Drain {
                announced: Some(sessions),
                ..
            }) if *sessions > 0 => info!("drained: every session has finished; exiting"),
            _ => {}
        }
        self.join_workers();
        // Writes out the last access log lines (every worker has handed over its last).
        self.access_log = None;
        if let Some(pid_file) = &self.pid_file {
            pid_file.remove();
        }
        if let Some(ctl) = &mut self.ctl {
            ctl.remove_file();
        }
        Ok(())
    }

    /// Accepts control connections and serves them at once.
    fn accept_ctl(&mut self) {
        let Some(ctl) = &mut self.ctl else {
            return;
        };
        let new = ctl.accept(self.poll.registry(), &mut self.timers, self.now);
        for id in new {
            self.serve_ctl(id);
        }
    }

    /// A control connection's socket is ready.
    fn serve_ctl(&mut self, id: ConnId) {
        let Some(ctl) = &mut self.ctl else {
            return;
        };
        match ctl.on_ready(id) {
            Progress::Nothing => {}
            Progress::Done => ctl.close(id, self.poll.registry(), &mut self.timers),
            Progress::Request(line) => self.on_ctl_request(id, line),
        }
    }

    /// A control connection's deadline: one still reading is closed; one still waiting is
    /// told so (the change it asked for may still come about: it is logged).
    fn on_ctl_timer(&mut self, id: ConnId) {
        let Some(ctl) = &mut self.ctl else {
            return;
        };
        ctl.timer_fired(id);
        if ctl.is_waiting(id) {
            self.pending.retain(|_, p| p.conn != id);
            self.ctl_answer(
                id,
                Err("timed out waiting for the answer; see the log".to_string()),
                false,
            );
        } else if let Some(ctl) = &mut self.ctl {
            if ctl.is_reading(id) {
                ctl.close(id, self.poll.registry(), &mut self.timers);
            } else {
                // Still writing its answer after all that time: give up.
                ctl.close(id, self.poll.registry(), &mut self.timers);
            }
        }
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
                    self.on_stop_signal(name);
                }
            }
        }
    }

    /// SIGHUP: reloads. On probation, the new process is told too: systemd (`systemctl
    /// reload`) signals the main process, which is this one until the probation has passed.
    fn reload(&mut self) {
        match self.upgrade.successor() {
            Some(pid) if self.lifecycle == Lifecycle::Standby => {
                info!(
                    "SIGHUP: reloading (and passing the signal on to pid {pid}, which serves on \
                     probation)"
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
            _ => info!("SIGHUP: reloading"),
        }
        self.discovery.reload(0);
    }

    /// SIGUSR1 (logrotate has renamed the access log): the writer thread opens the path
    /// again and logs how that went.
    fn reopen_access_log(&self) {
        match &self.access_log {
            Some(log) => log.reopen(),
            None => info!("SIGUSR1: no access log to reopen (--access-log is off)"),
        }
    }

    /// SIGTERM or SIGINT: the first drains (on probation: hands over early), the next stops
    /// (after an upgrade handed over, the process is draining already, and the first one is
    /// the service manager's request to stop, sent to every process of the service).
    fn on_stop_signal(&mut self, name: &str) {
        let successor = self.upgrade.successor();
        match &mut self.lifecycle {
            Lifecycle::Running => self.begin_drain(name.to_string()),
            Lifecycle::Standby => self.end_probation_early(name),
            Lifecycle::Draining(drain) if drain.stop_signals == 0 && successor.is_some() => {
                drain.stop_signals += 1;
                info!(
                    "{name}: draining already (since the upgrade to pid {}); a second signal \
                     cuts the sessions left",
                    successor.unwrap_or_default()
                );
            }
            _ => {
                warn!("second signal: exiting now");
                self.stop_workers();
                self.reaper.kill_all();
            }
        }
    }

    /// Every worker stops accepting and lets its sessions finish for up to
    /// `drain-timeout`. `/healthz` answers 503 from now. This process lets go of its
    /// listening sockets: one nobody else holds closes, so new clients are refused; one a
    /// newer tcplb (after an upgrade) or systemd holds stays open there, queue and all.
    fn begin_drain(&mut self, why: String) {
        self.give_up_upgrade(&why);
        let successor = self.upgrade.successor();
        self.lifecycle = Lifecycle::Draining(Drain {
            why,
            announced: None,
            stop_signals: 0,
        });
        self.sockets.release_all();
        for w in &self.workers {
            w.send(Command::Drain);
        }
        if successor.is_none() {
            if let Err(e) = systemd::notify("STOPPING=1") {
                debug!("cannot tell systemd that tcplb is stopping: {e}");
            }
        }
        self.timers.insert(
            self.now + self.global.drain_timeout,
            TimerKey::DrainDeadline,
        );
        self.announce_drain();
    }

    /// Once every listener is closed (so the line is true when it is read), says how many
    /// sessions are left to drain.
    fn announce_drain(&mut self) {
        if self.shared.accepting.load(Ordering::Acquire) > 0 {
            return;
        }
        let Lifecycle::Draining(drain) = &mut self.lifecycle else {
            return;
        };
        if drain.announced.is_some() {
            return;
        }
        let sessions = self.shared.sessions.load(Ordering::Acquire);
        drain.announced = Some(sessions);
        if sessions == 0 {
            info!("{}: no sessions open; exiting", drain.why);
        } else {
            info!(
                "{}: stopped accepting; draining {sessions} sessions for up to {:?}",
                drain.why, self.global.drain_timeout
            );
        }
    }

    /// Something woke us: news from the discovery thread, or from a worker.
    fn on_wake(&mut self) {
        while let Some(update) = self.discovery.next_update() {
            match update {
                Update::Reloaded {
                    tickets,
                    result,
                    overlays,
                } => {
                    self.overlays = overlays;
                    let outcome = match result {
                        Ok(reloaded) => Ok(self.apply_reload(*reloaded)),
                        Err(message) => {
                            self.reloads.errors += 1;
                            warn!("reload failed, keeping the running set: {message}");
                            Err(message)
                        }
                    };
                    self.ctl_reloaded(&tickets, &outcome);
                }
                Update::Resolved(change) => self.publish_pool(change, "re-resolve"),
                Update::Changed {
                    ticket,
                    result,
                    overlays,
                } => {
                    self.overlays = overlays;
                    self.ctl_changed(ticket, result);
                }
            }
        }
        self.rollout.check_adopted(&self.shared);
        self.answer_settled();
        self.announce_probation();
        if self.lifecycle.is_running()
            && self.shared.accepting.load(Ordering::Acquire) < self.workers.len()
        {
            let shared = Arc::clone(&self.shared);
            self.sockets
                .release_unserved(|w| shared.listening[w].load(Ordering::Acquire));
        }
        self.announce_drain();
    }

    /// Folds a check's outcome into its pool's current generation; its slot goes to the
    /// next check due.
    fn fold_probe(&mut self, outcome: prober::Outcome) {
        self.fold_outcome(outcome);
        self.start_probes();
    }

    fn fold_outcome(&mut self, outcome: prober::Outcome) {
        let now = clock::millis(self.now);
        let (backend, marked, fleet) = match outcome {
            prober::Outcome::Health {
                backend,
                passed,
                note,
            } => {
                let Some(fleet) = self.rollout.current().pool(backend.pool).map(Arc::clone) else {
                    return;
                };
                let marked = fleet.probe_result(&backend, passed, &note, now);
                (backend, marked, fleet)
            }
            prober::Outcome::Agent { backend, answer } => {
                let Some(fleet) = self.rollout.current().pool(backend.pool).map(Arc::clone) else {
                    return;
                };
                let reply = answer.map(|line| crate::fleet::agent::parse(&line));
                let marked = fleet.agent_result(&backend, reply, now);
                (backend, marked, fleet)
            }
        };
        match marked {
            Some(Marked::Up) => self.track_ramp(&backend),
            Some(Marked::Down)
                if fleet.policy().runtime.on_marked_down == MarkedDown::ShutdownSessions =>
            {
                let sessions = backend.active();
                if sessions > 0 {
                    info!(
                        "{}backend {backend}: marked down; cutting its {sessions} sessions \
                         (on-marked-down = shutdown-sessions)",
                        crate::fleet::discovery::prefix(fleet.name())
                    );
                }
                self.cut_backend(&backend);
            }
            _ => {}
        }
    }

    /// A pool's round of checks of `kind` is due.
    fn check_round(&mut self, pool: PoolId, kind: prober::ProbeKind) {
        if !self.lifecycle.may_serve() {
            return;
        }
        let Some(fleet) = self.rollout.current().pool(pool).map(Arc::clone) else {
            return;
        };
        self.prober
            .round_due(&fleet, kind, &mut self.timers, self.now);
        self.start_probes();
    }

    /// A pool's new generation (re-resolved, or changed by `tcplb ctl`) goes out to every
    /// worker; `what` names why in the log.
    pub(super) fn publish_pool(&mut self, change: PoolChange, what: &str) {
        let Some((fleet, changes)) = change.built else {
            return;
        };
        let current = Arc::clone(self.rollout.current());
        if current.pool(change.id).is_none() {
            return; // removed by a reload since
        }
        let mut lines = Vec::new();
        reload::describe_pool_named(what, &change.name, &fleet, &changes, &mut lines);
        let fleets = current
            .pools()
            .map(|f| {
                if f.pool() == change.id {
                    Arc::clone(&fleet)
                } else {
                    Arc::clone(f)
                }
            })
            .collect::<Vec<_>>();
        let topology = Topology::new(
            self.rollout.next_generation(),
            current.max_conns(),
            current.services().cloned(),
            fleets,
        );
        self.prober.schedule(&fleet, &mut self.timers, self.now);
        self.track_ramps(&fleet);
        self.rollout
            .publish(topology, vec![fleet], lines, &self.workers);
    }

    /// Follows the backends of a new generation that are on their slow-start ramp (added,
    /// or back in the set).
    pub(super) fn track_ramps(&mut self, fleet: &Arc<Fleet>) {
        let now = clock::millis(self.now);
        if fleet.policy().runtime.slow_start.is_zero() {
            return;
        }
        let ramping: Vec<Arc<crate::fleet::backend::Backend>> = fleet
            .backends()
            .filter(|b| b.ramping(now))
            .cloned()
            .collect();
        for b in &ramping {
            self.track_ramp(b);
        }
    }

    /// Starts the probes the schedule has room for.
    fn start_probes(&mut self) {
        if !self.lifecycle.may_serve() {
            return;
        }
        let topology = Arc::clone(self.rollout.current());
        let (failed, exhausted) = self.prober.start_probes(
            |pool| topology.pool(pool).map(Arc::clone),
            self.poll.registry(),
            &mut self.timers,
            self.now,
        );
        for outcome in failed {
            self.fold_outcome(outcome);
        }
        if let Some(e) = exhausted {
            if let Some(n) = self.fds_throttle.allow(self.now) {
                warn!(
                    "cannot open a health check socket: {e}{}",
                    suppressed_note(n)
                );
            }
        }
    }

    fn fire_timers(&mut self) {
        self.timers.expire(self.now, &mut self.fired);
        let mut fired = std::mem::take(&mut self.fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Admin(id) => self.on_admin_timer(id),
                TimerKey::Ctl(id) => self.on_ctl_timer(id),
                TimerKey::AgentRound(pool) => self.check_round(pool, prober::ProbeKind::Agent),
                TimerKey::RampTick => {
                    let topology = Arc::clone(self.rollout.current());
                    if self.ramp.tick(&topology, clock::millis(self.now)) {
                        self.timers
                            .insert(self.now + Ramp::interval(), TimerKey::RampTick);
                    }
                }
                TimerKey::ProbeSettle(id) => {
                    if let Some(outcome) = self.prober.on_settled(id, &mut self.timers) {
                        self.fold_probe(outcome);
                    }
                }
                TimerKey::Probe(id) => {
                    if let Some(outcome) = self.prober.on_timer(id, &mut self.timers) {
                        self.fold_probe(outcome);
                    }
                }
                TimerKey::HealthRound(pool) => self.check_round(pool, prober::ProbeKind::Health),
                TimerKey::DrainDeadline => {
                    if matches!(self.lifecycle, Lifecycle::Draining(_)) {
                        warn!("drain timeout ({:?}) reached", self.global.drain_timeout);
                        self.stop_workers();
                    }
                }
                TimerKey::UpgradeDeadline => self.upgrade_deadline(),
                TimerKey::ProbationEnd => self.probation_end(),
                TimerKey::BalanceTick => {
                    let now = clock::millis(self.now);
                    for fleet in self.rollout.current().pools() {
                        if fleet.ticks() {
                            fleet.tick(now);
                        }
                        // Slots freed where no session ended (a backend came up, a reload
                        // raised a maxconn): waiters get them within a tick.
                        crate::worker::queueing::serve(fleet, &self.shared, now);
                    }
                    self.timers
                        .insert(self.now + BALANCE_TICK, TimerKey::BalanceTick);
                }
                TimerKey::UpgradeWatch => self.on_watch(),
                TimerKey::HistoryTick => self.sample_history(),
            }
        }
        self.fired = fired;
    }

    /// Takes the dashboard's samples (only with the admin endpoint on: nobody else reads
    /// them) and arms the next.
    fn sample_history(&mut self) {
        if self.admin.local_addr().is_none() {
            return;
        }
        let (cpu, resident) = (history::cpu_time(), history::resident_bytes());
        let mut history = std::mem::take(&mut self.history);
        let view = view!(self);
        let (started, cpu_before) = (Instant::now(), history::thread_cpu_time());
        history.sample(&view, cpu, resident);
        debug!(
            "history: sampled in {:?} ({:?} of CPU; {} KiB)",
            started.elapsed(),
            history::thread_cpu_time().saturating_sub(cpu_before),
            history.bytes() / 1024
        );
        self.history = history;
        self.timers
            .insert(self.now + history::INTERVAL, TimerKey::HistoryTick);
    }
}

/// What the admin endpoint shows now: a [`View`] of disjoint borrows of the control
/// thread's fields (a method could not lend them beside a mutable borrow of its
/// connections).
macro_rules! view {
    ($control:ident) => {
        $crate::admin::View {
            topology: $control.rollout.current(),
            workers: &$control.worker_stats,
            // After a hand-over, a request accepted before it is answered for the service,
            // which the newer process runs on: "draining" would tell a health checker the
            // service is going away.
            running: $control.lifecycle.is_running() || $control.upgrade.successor().is_some(),
            lifecycle: $control.lifecycle.as_str(),
            now: $control.now,
            started: $control.started,
            access_log_dropped: $control
                .access_log
                .as_ref()
                .map($crate::access_log::AccessLog::dropped),
            reloads: $control.reloads,
            history: &$control.history,
        }
    };
}
use view;
