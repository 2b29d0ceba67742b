//! Binary upgrade on `SIGUSR2`, refusing no connection.
//!
//! The old process ([`Upgrade`], the stages; [`NewProcess`], the process it starts):
//! 1. starts the binary at the path it was itself started from ([`Invocation`], resolved at
//!    start: after `mv tcplb-new /usr/local/bin/tcplb`, `/proc/self/exe` names the old,
//!    deleted file) with the same arguments, handing it every client listening socket, the
//!    admin listening socket, the control socket, the runtime state `tcplb ctl` set
//!    (`control::state`: an anonymous file) and the write end of a pipe as inherited
//!    descriptors, listed in the environment variable [`ENV`]. Only those descriptors lose
//!    close-on-exec, and only in the child;
//! 2. keeps serving meanwhile. The new process adopts the sockets instead of binding
//!    (`control::sockets`), starts its workers, and writes [`READY`] to the pipe
//!    ([`report_ready`]);
//! 3. on that, stops accepting and stands by for `--upgrade-probation`: its workers stop
//!    polling their listeners but keep them, and so does the control thread. They are the
//!    very sockets the new process accepts on (the same kernel sockets, not more members of
//!    a `SO_REUSEPORT` group), so a copy kept here takes no client: every new client goes
//!    to the new process. Live sessions go on here;
//! 4. if the new process dies in that time (a signal, or an exit status other than 0), it
//!    takes over again: its workers accept again on the sockets they kept (clients queued
//!    meanwhile included), it serves the admin endpoint again, rewrites the pid file and
//!    logs how the new process ended. Otherwise, once the probation has passed (or on a
//!    SIGTERM, or when the new process exits 0, having stopped in order), it hands over:
//!    each worker closes its own copy of the sockets, which stay open in the new process
//!    with every client queued on them (no listening socket is ever closed, so no SYN is
//!    refused and no queued connection is reset), it tells systemd the new main pid, and it
//!    drains as on SIGTERM and exits 0.
//!
//! If the new process cannot be started (no such file, not executable), exits or closes the
//! pipe without saying ready (bad flags, a backends file that no longer parses, a crash), or
//! says nothing within `--upgrade-timeout` (it is then killed), the old process logs why
//! and goes on serving as if nothing had happened. A process given up on is reaped before
//! this one exits, and killed if it ignores SIGTERM ([`super::reaper`]).

use super::reaper::{Reaper, describe_exit};
use super::{ADMIN_LISTENER, CTL_LISTENER, Control, TimerKey, UPGRADE, WATCH_INTERVAL, systemd};
use crate::lifecycle::Lifecycle;
use crate::reactor::timer::TimerId;
use crate::worker::Command as WorkerCommand;
use log::{error, info, warn};
use mio::unix::pipe;
use mio::{Interest, Registry, Token};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Names the descriptors a new process inherits from the one it upgrades:
/// `listen=FD@SERVICE,FD@SERVICE...;admin=FD;control=FD;state=FD;ready=FD;from=PID`
/// (`admin` only with `--admin`, `control` only with a control socket, `state` only with
/// runtime state to hand over; an older tcplb names no service: `listen=FD,FD`).
pub const ENV: &str = "TCPLB_UPGRADE_FDS";
/// What the new process writes to the pipe once it serves.
pub const READY: &[u8] = b"READY\n";
/// Most descriptors one hand-over names.
const MAX_FDS: usize = 4096;

/// How this process was started: what `SIGUSR2` runs again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The binary's path as started (made absolute at start, symlinks kept).
    pub exe: PathBuf,
    /// The arguments after the program name.
    pub args: Vec<OsString>,
}

impl Invocation {
    /// This process's: `argv[0]` resolved now (against the working directory, or `PATH`
    /// for a bare name, as the shell found it) and the arguments.
    pub fn current() -> Invocation {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let args = argv.collect();
        let cwd = std::env::current_dir().ok();
        let path = std::env::var_os("PATH");
        let exe = resolve_exe(&argv0, cwd.as_deref(), path.as_deref())
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from(argv0));
        Invocation { exe, args }
    }
}

/// The path `argv0` names, as `execvp` found it: a name with a `/` is a path (relative ones
/// against `cwd`); a bare name is looked up in `path` (the first executable file).
pub fn resolve_exe(argv0: &OsStr, cwd: Option<&Path>, path: Option<&OsStr>) -> Option<PathBuf> {
    if argv0.is_empty() {
        return None;
    }
    // `.` components are dropped; `..` and symlinks are kept (the path names what it did).
    let absolute = |p: PathBuf| -> PathBuf {
        match cwd {
            Some(cwd) if p.is_relative() => cwd.join(p).components().collect(),
            _ => p.components().collect(),
        }
    };
    if argv0.as_bytes().contains(&b'/') {
        return Some(absolute(PathBuf::from(argv0)));
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(argv0))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(absolute)
}

/// The descriptors a process was handed by the one it upgrades (parsed from [`ENV`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Handoff {
    /// Client sockets, each with the service it listens for.
    pub listen: Vec<(RawFd, Option<String>)>,
    pub admin: Option<RawFd>,
    /// The control socket.
    pub control: Option<RawFd>,
    /// The runtime state (`control::state`).
    pub state: Option<RawFd>,
    pub ready: RawFd,
    /// The process that handed them over.
    pub from: u32,
}

impl Handoff {
    /// The [`ENV`] value naming these descriptors.
    pub fn encode(&self) -> String {
        let listen: Vec<String> = self
            .listen
            .iter()
            .map(|(fd, service)| match service {
                Some(name) => format!("{fd}@{name}"),
                None => fd.to_string(),
            })
            .collect();
        let mut text = format!("listen={}", listen.join(","));
        if let Some(admin) = self.admin {
            text.push_str(&format!(";admin={admin}"));
        }
        if let Some(control) = self.control {
            text.push_str(&format!(";control={control}"));
        }
        if let Some(state) = self.state {
            text.push_str(&format!(";state={state}"));
        }
        text.push_str(&format!(";ready={};from={}", self.ready, self.from));
        text
    }

    /// Parses an [`ENV`] value. Every descriptor must be above 2 and named once.
    pub fn parse(text: &str) -> Result<Handoff, String> {
        let bad = |why: &str| format!("{ENV}='{}': {why}", crate::config::printable(text));
        let fd = |value: &str| -> Result<RawFd, String> {
            value
                .parse::<RawFd>()
                .ok()
                .filter(|&fd| fd > 2)
                .ok_or_else(|| bad(&format!("'{value}' is not a descriptor number above 2")))
        };
        let (mut listen, mut admin, mut ready, mut from) = (None, None, None, None);
        let (mut control, mut state) = (None, None);
        for part in text.split(';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(&format!("'{part}' is not KEY=VALUE")));
            };
            let slot_taken = match key {
                "listen" => listen
                    .replace(
                        value
                            .split(',')
                            .map(|item| match item.split_once('@') {
                                Some((number, service)) if service_name(service) => {
                                    Ok((fd(number)?, Some(service.to_string())))
                                }
                                Some(_) => Err(bad(&format!("'{item}' names no service"))),
                                None => Ok((fd(item)?, None)),
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                    .is_some(),
                "admin" => admin.replace(fd(value)?).is_some(),
                "control" => control.replace(fd(value)?).is_some(),
                "state" => state.replace(fd(value)?).is_some(),
                "ready" => ready.replace(fd(value)?).is_some(),
                "from" => from
                    .replace(
                        value
                            .parse::<u32>()
                            .map_err(|_| bad(&format!("'{value}' is not a process id")))?,
                    )
                    .is_some(),
                _ => return Err(bad(&format!("unknown key '{key}'"))),
            };
            if slot_taken {
                return Err(bad(&format!("'{key}' given twice")));
            }
        }
        let handoff = Handoff {
            listen: listen.ok_or_else(|| bad("no listen="))?,
            admin,
            control,
            state,
            ready: ready.ok_or_else(|| bad("no ready="))?,
            from: from.ok_or_else(|| bad("no from="))?,
        };
        let mut all: Vec<RawFd> = handoff.all().collect();
        if all.len() > MAX_FDS {
            return Err(bad("too many descriptors"));
        }
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("a descriptor is named twice"));
        }
        Ok(handoff)
    }

    fn all(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.listen
            .iter()
            .map(|(fd, _)| *fd)
            .chain(self.admin)
            .chain(self.control)
            .chain(self.state)
            .chain(Some(self.ready))
    }
}

/// What a process started by an upgrade was handed, each descriptor owned once.
pub struct Inherited {
    /// Client sockets, each with the service it listens for (if named).
    pub listen: Vec<(OwnedFd, Option<String>)>,
    pub admin: Option<OwnedFd>,
    /// The control socket.
    pub control: Option<OwnedFd>,
    /// The runtime state handed over (`control::state`).
    pub state: Option<File>,
    /// Where to say ready ([`report_ready`]).
    pub ready: File,
    pub from: u32,
}

impl Inherited {
    /// The descriptors named in [`ENV`], if this process was started by an upgrade.
    pub fn from_env() -> Result<Option<Inherited>, String> {
        let Some(text) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let text = text
            .to_str()
            .ok_or_else(|| format!("{ENV} is not valid UTF-8"))?;
        let handoff = Handoff::parse(text)?;
        for fd in handoff.all() {
            // SAFETY: F_GETFD only reads the descriptor's flags; an unused number fails.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                return Err(format!(
                    "{ENV} names descriptor {fd}, which is not open: {}",
                    io::Error::last_os_error()
                ));
            }
        }
        // SAFETY (all three): each descriptor is open (checked above), was handed to this
        // process by the one that started it for this purpose, is named once (`parse`
        // rejects repeats), and nothing else in this process owns it.
        let own = |fd: RawFd| unsafe { OwnedFd::from_raw_fd(fd) };
        let ready = File::from(own(handoff.ready));
        set_cloexec(&ready);
        Ok(Some(Inherited {
            listen: handoff
                .listen
                .iter()
                .map(|(fd, service)| (own(*fd), service.clone()))
                .collect(),
            admin: handoff.admin.map(own),
            control: handoff.control.map(own),
            state: handoff.state.map(|fd| {
                let file = File::from(own(fd));
                set_cloexec(&file);
                file
            }),
            ready,
            from: handoff.from,
        }))
    }
}

fn set_cloexec(fd: &impl AsRawFd) {
    // SAFETY: F_SETFD on a descriptor we own; no memory is involved.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Tells the process that started this one (by an upgrade) that this one serves now.
pub fn report_ready(mut ready: File, from: u32) {
    if let Err(e) = ready.write_all(READY) {
        warn!(
            "cannot tell pid {from} that this process serves ({e}); it will give up the \
             upgrade and keep serving too"
        );
    }
}

/// Where an upgrade stands, with what each stage holds.
pub(super) enum Upgrade {
    /// None under way.
    Idle,
    /// The new process starts; it has until `deadline` to say it serves.
    Starting { new: NewProcess, deadline: TimerId },
    /// The new process serves; this one stands by ([`Lifecycle::Standby`]) until `ends`,
    /// and takes over again if the new one dies first. `announced`: the line saying so has
    /// been logged (once every worker has stopped accepting, so it is true when read).
    Probation {
        new: NewProcess,
        ends: TimerId,
        announced: bool,
    },
    /// Handed over for good: this process drains and exits.
    HandedOver { pid: u32 },
}

impl Upgrade {
    /// The process that serves in this one's place, once one does (on probation or for
    /// good).
    pub fn successor(&self) -> Option<u32> {
        match self {
            Upgrade::Probation { new, .. } => Some(new.pid()),
            Upgrade::HandedOver { pid } => Some(*pid),
            Upgrade::Idle | Upgrade::Starting { .. } => None,
        }
    }

    /// Takes the new process (and its deadline) out of the `Starting` stage, leaving
    /// `Idle`; any other stage is left as it is.
    fn take_starting(&mut self) -> Option<(NewProcess, TimerId)> {
        match std::mem::replace(self, Upgrade::Idle) {
            Upgrade::Starting { new, deadline } => Some((new, deadline)),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Takes the new process (and the probation's end) out of the `Probation` stage,
    /// leaving `Idle`; any other stage is left as it is.
    fn take_probation(&mut self) -> Option<(NewProcess, TimerId)> {
        match std::mem::replace(self, Upgrade::Idle) {
            Upgrade::Probation { new, ends, .. } => Some((new, ends)),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// How a new process that has not said it serves yet is doing.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing decided yet.
    Waiting,
    /// The new process serves.
    Ready,
    /// The new process is gone or broke the protocol; the message says how.
    Failed(String),
}

/// The new process of an upgrade, seen from the old one (its parent).
pub struct NewProcess {
    child: Child,
    exe: PathBuf,
    /// The read end of the readiness pipe (`None` once it has reached EOF, or the new
    /// process has said it serves).
    ready: Option<pipe::Receiver>,
    received: Vec<u8>,
    started: Instant,
    /// When it said it serves.
    ready_at: Option<Instant>,
}

impl NewProcess {
    /// Starts `invocation` again, handing it `listen` (the client sockets), `admin`, the
    /// control socket and the runtime state, and registers the readiness pipe under
    /// `token`.
    pub fn start(
        invocation: &Invocation,
        listen: &[(RawFd, String)],
        (admin, control, state): (Option<RawFd>, Option<RawFd>, Option<RawFd>),
        registry: &Registry,
        token: Token,
    ) -> io::Result<NewProcess> {
        let (sender, mut receiver) = pipe::new()?;
        let handoff = Handoff {
            listen: listen
                .iter()
                .map(|(fd, name)| (*fd, Some(name.clone())))
                .collect(),
            admin,
            control,
            state,
            ready: sender.as_raw_fd(),
            from: std::process::id(),
        };
        let inherit: Vec<RawFd> = handoff.all().collect();
        let mut command = Command::new(&invocation.exe);
        command
            .args(&invocation.args)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env(ENV, handoff.encode());
        // SAFETY: the hook runs in the child between fork and exec, so it must only make
        // async-signal-safe calls: it calls fcntl on numbers from a vector built before the
        // fork, allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                for &fd in &inherit {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags == -1
                        || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        // Registered first: a process started with nobody listening for its word would
        // serve beside this one.
        registry.register(&mut receiver, token, Interest::READABLE)?;
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = registry.deregister(&mut receiver);
                return Err(e);
            }
        };
        // Only the child holds the write end now: its exit (or a close) reads as EOF here.
        drop(sender);
        Ok(NewProcess {
            child,
            exe: invocation.exe.clone(),
            ready: Some(receiver),
            received: Vec::new(),
            started: Instant::now(),
            ready_at: None,
        })
    }

    /// The new process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// How long ago it was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long it took to say it serves, and how long ago it did (once it has).
    pub fn ready_times(&self) -> Option<(Duration, Duration)> {
        self.ready_at
            .map(|at| (at.saturating_duration_since(self.started), at.elapsed()))
    }

    /// Reads what the new process wrote to the pipe.
    pub fn on_readable(&mut self, registry: &Registry) -> Progress {
        let Some(receiver) = &mut self.ready else {
            return self.check_exit();
        };
        let mut buf = [0u8; 64];
        loop {
            match receiver.read(&mut buf) {
                Ok(0) => {
                    self.close_pipe(registry);
                    return self.check_exit();
                }
                Ok(n) => {
                    self.received.extend_from_slice(&buf[..n]);
                    if self.received.starts_with(READY) {
                        return Progress::Ready;
                    }
                    if !READY.starts_with(&self.received) || self.received.len() > READY.len() {
                        return Progress::Failed(format!(
                            "the new process (pid {}) wrote {:?} instead of saying it is ready",
                            self.pid(),
                            String::from_utf8_lossy(&self.received)
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Progress::Failed(format!("cannot read the readiness pipe: {e}"));
                }
            }
        }
    }

    /// After the pipe closed without a word: whether the new process has exited yet (it
    /// closes the pipe as it exits, a moment before it can be reaped).
    pub fn check_exit(&mut self) -> Progress {
        match self.child.try_wait() {
            Ok(Some(status)) => Progress::Failed(format!(
                "the new process (pid {}) {} before it was ready",
                self.pid(),
                describe_exit(status)
            )),
            Ok(None) => Progress::Waiting,
            Err(e) => Progress::Failed(format!(
                "cannot wait for the new process (pid {}): {e}",
                self.pid()
            )),
        }
    }

    /// How it ended, if it has (reaping it). Never blocks.
    pub fn exit_status(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Whether the pipe has closed (no word can come any more).
    pub fn pipe_closed(&self) -> bool {
        self.ready.is_none()
    }

    /// It has said it serves: the pipe has nothing more to say.
    pub fn set_ready(&mut self, registry: &Registry) {
        self.ready_at = Some(Instant::now());
        self.close_pipe(registry);
    }

    fn close_pipe(&mut self, registry: &Registry) {
        if let Some(mut receiver) = self.ready.take() {
            let _ = registry.deregister(&mut receiver);
        }
    }

    /// Gives it up to `reaper` (SIGTERM, or with `kill` SIGKILL; reaped once it ends).
    pub fn abandon(mut self, registry: &Registry, reaper: &mut Reaper, kill: bool, now: Instant) {
        self.close_pipe(registry);
        reaper.abandon(self.child, kill, now);
    }
}

/// A service name as a hand-over may carry it (as the config file allows them).
fn service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The upgrade, as the control thread runs it.
impl Control {
    /// `SIGUSR2`: starts the new process, unless one is starting or on probation already,
    /// or this process is on its way out.
    pub(super) fn begin_upgrade(&mut self) {
        match &self.upgrade {
            Upgrade::Starting { new, .. } => {
                info!(
                    "SIGUSR2: an upgrade is under way already (pid {}, started {:?} ago)",
                    new.pid(),
                    new.elapsed()
                );
                return;
            }
            Upgrade::Probation { new, .. } => {
                info!(
                    "SIGUSR2: not upgrading: pid {} serves, on probation for {:.1}s more; \
                     signal that one (the pid file names it)",
                    new.pid(),
                    self.probation_left(new).as_secs_f64()
                );
                return;
            }
            Upgrade::Idle | Upgrade::HandedOver { .. } => {}
        }
        if !self.lifecycle.is_running() {
            info!("SIGUSR2: not upgrading: {}", self.lifecycle.as_str());
            return;
        }
        let listen = self.sockets.handoff();
        if listen.is_empty() {
            warn!("SIGUSR2: not upgrading: no worker is accepting, no socket is left to hand over");
            return;
        }
        let admin = self.admin.listener_fd();
        let control = self
            .ctl
            .as_ref()
            .and_then(super::ctl::CtlSocket::listener_fd);
        // What `tcplb ctl` set, for the new process (the file closes here once it has it).
        let text = super::state::capture(self.rollout.current(), &self.overlays);
        let state = match super::state::to_file(&text) {
            Ok(file) => Some(file),
            Err(e) => {
                warn!(
                    "SIGUSR2: cannot hand the runtime state over ({e}); the new process starts without it"
                );
                None
            }
        };
        match NewProcess::start(
            &self.invocation,
            &listen,
            (admin, control, state.as_ref().map(AsRawFd::as_raw_fd)),
            self.poll.registry(),
            UPGRADE,
        ) {
            Ok(new) => {
                info!(
                    "SIGUSR2: upgrading: started {} (pid {}); serving on until it is ready \
                     (up to {:?})",
                    new.exe().display(),
                    new.pid(),
                    self.global.upgrade_timeout
                );
                let deadline = self.timers.insert(
                    self.now + self.global.upgrade_timeout,
                    TimerKey::UpgradeDeadline,
                );
                self.upgrade = Upgrade::Starting { new, deadline };
            }
            Err(e) => {
                self.upgrade_failed(format!("cannot run {}: {e}", self.invocation.exe.display()))
            }
        }
    }

    fn probation_left(&self, new: &NewProcess) -> Duration {
        new.ready_times()
            .map_or(self.global.upgrade_probation, |(_, since)| {
                self.global.upgrade_probation.saturating_sub(since)
            })
    }

    /// The readiness pipe has news.
    pub(super) fn on_upgrade_pipe(&mut self) {
        let Upgrade::Starting { new, .. } = &mut self.upgrade else {
            return;
        };
        let progress = new.on_readable(self.poll.registry());
        self.upgrade_progress(progress);
    }

    /// The new process of an upgrade has not said it serves in time: it is killed.
    pub(super) fn upgrade_deadline(&mut self) {
        let Some((mut new, _)) = self.upgrade.take_starting() else {
            return;
        };
        let why = match new.check_exit() {
            Progress::Failed(why) => why,
            _ => format!(
                "the new process (pid {}) did not say it serves within {:?}; killed it",
                new.pid(),
                self.global.upgrade_timeout
            ),
        };
        new.abandon(self.poll.registry(), &mut self.reaper, true, self.now);
        self.watch_children();
        self.upgrade_failed(why);
    }

    fn upgrade_progress(&mut self, progress: Progress) {
        match progress {
            Progress::Waiting => self.watch_children(),
            Progress::Ready => self.on_ready(),
            Progress::Failed(why) => {
                if let Some((new, deadline)) = self.upgrade.take_starting() {
                    self.timers.cancel(deadline);
                    new.abandon(self.poll.registry(), &mut self.reaper, true, self.now);
                    self.watch_children();
                }
                self.upgrade_failed(why);
            }
        }
    }

    /// Gives up an upgrade that is starting (this process is on its way out): the new
    /// process gets SIGTERM, then SIGKILL if it does not end within the grace, and this
    /// process does not exit before it is reaped.
    pub(super) fn give_up_upgrade(&mut self, why: &str) {
        if let Some((new, deadline)) = self.upgrade.take_starting() {
            info!("{why}: giving up the upgrade to pid {}", new.pid());
            self.timers.cancel(deadline);
            new.abandon(self.poll.registry(), &mut self.reaper, false, self.now);
            self.watch_children();
        }
    }

    /// The new process says it serves: this one stops accepting and stands by for the
    /// probation, or with none, hands over at once.
    fn on_ready(&mut self) {
        let Some((mut new, deadline)) = self.upgrade.take_starting() else {
            return;
        };
        self.timers.cancel(deadline);
        new.set_ready(self.poll.registry());
        if self.global.upgrade_probation.is_zero() {
            info!(
                "upgrade: pid {} serves (ready {:?} after it was started); handing over",
                new.pid(),
                new.elapsed()
            );
            self.hand_over(new.pid(), true);
            return;
        }
        self.lifecycle = Lifecycle::Standby;
        for w in &self.workers {
            w.send(WorkerCommand::Pause);
        }
        self.admin.pause(self.poll.registry());
        if let Some(ctl) = &mut self.ctl {
            ctl.pause(self.poll.registry());
        }
        let ends = self.timers.insert(
            self.now + self.global.upgrade_probation,
            TimerKey::ProbationEnd,
        );
        self.upgrade = Upgrade::Probation {
            new,
            ends,
            announced: false,
        };
        self.announce_probation();
        self.watch_children();
    }

    /// Once every worker has stopped accepting (so the line is true when read), says that
    /// this process stands by.
    pub(super) fn announce_probation(&mut self) {
        let Upgrade::Probation { new, announced, .. } = &mut self.upgrade else {
            return;
        };
        if *announced || self.shared.accepting.load(Ordering::Acquire) > 0 {
            return;
        }
        *announced = true;
        let took = new.ready_times().map_or(Duration::ZERO, |(took, _)| took);
        info!(
            "upgrade: pid {} serves (ready {took:?} after it was started); stopped accepting; \
             standing by for {:?} (--upgrade-probation), to take over again if it dies",
            new.pid(),
            self.global.upgrade_probation
        );
    }

    /// On probation: whether the new process has ended. One that exited 0 stopped in
    /// order (a SIGTERM, or it handed over to an upgrade of its own and drained): this
    /// process does not take over again. One that crashed, was killed or exited with an
    /// error: it does.
    fn check_probation(&mut self) {
        let Upgrade::Probation { new, .. } = &mut self.upgrade else {
            return;
        };
        let pid = new.pid();
        match new.exit_status() {
            Ok(None) => {}
            Ok(Some(status)) if status.success() => {
                info!(
                    "upgrade: pid {pid} {} during its probation: it stopped in order (a \
                     SIGTERM, or an upgrade of its own); not taking over again",
                    describe_exit(status)
                );
                self.hand_over(pid, false);
            }
            Ok(Some(status)) => self.take_over_again(describe_exit(status)),
            Err(e) => {
                warn!("upgrade: cannot wait for pid {pid} ({e}); ending its probation");
                self.hand_over(pid, true);
            }
        }
    }

    /// The probation has run its course: the new process keeps the service.
    pub(super) fn probation_end(&mut self) {
        self.check_probation();
        if let Upgrade::Probation { new, .. } = &self.upgrade {
            let pid = new.pid();
            info!(
                "upgrade: pid {pid} has served through its probation ({:?}); handing over",
                self.global.upgrade_probation
            );
            self.hand_over(pid, true);
        }
    }

    /// A SIGTERM while on probation: the new process keeps the service from now (the
    /// usual way to retire the old process by hand); this one drains.
    pub(super) fn end_probation_early(&mut self, signal: &str) {
        self.check_probation();
        match &self.upgrade {
            Upgrade::Probation { new, .. } => {
                let pid = new.pid();
                info!("{signal}: ending the probation of pid {pid} early; handing over");
                self.hand_over(pid, true);
            }
            // It had died, unseen till now: this process took over again, and stops.
            _ if self.lifecycle.is_running() => self.begin_drain(signal.to_string()),
            // It had exited 0: this process drains already.
            _ => {}
        }
    }

    /// The new process serves for good: this one gives up the admin socket, tells systemd
    /// (`tell_systemd`: the new process still runs) which process is the service now, and
    /// drains.
    fn hand_over(&mut self, pid: u32, tell_systemd: bool) {
        if let Some((_, ends)) = self.upgrade.take_probation() {
            self.timers.cancel(ends);
        }
        self.upgrade = Upgrade::HandedOver { pid };
        if tell_systemd {
            if let Err(e) = systemd::notify(&format!("MAINPID={pid}")) {
                warn!("cannot tell systemd that pid {pid} is the service now: {e}");
            }
        }
        self.admin.stop_listening(self.poll.registry());
        if let Some(ctl) = &mut self.ctl {
            ctl.stop_listening(self.poll.registry());
        }
        self.begin_drain(format!("upgrade to pid {pid}"));
    }

    /// The new process died on probation: this one accepts again, on every socket it
    /// kept, and is the service again.
    fn take_over_again(&mut self, how: String) {
        let Some((new, ends)) = self.upgrade.take_probation() else {
            return;
        };
        self.timers.cancel(ends);
        let after = new.ready_times().map_or(Duration::ZERO, |(_, since)| since);
        self.lifecycle = Lifecycle::Running;
        for w in &self.workers {
            w.send(WorkerCommand::Resume);
        }
        if let Err(e) = self.admin.resume(self.poll.registry(), ADMIN_LISTENER) {
            warn!("cannot serve the admin endpoint again: {e}");
        }
        if let Some(ctl) = &mut self.ctl {
            if let Err(e) = ctl.resume(self.poll.registry(), CTL_LISTENER) {
                warn!("cannot serve the control socket again: {e}");
            }
        }
        if let Some(pid_file) = &self.pid_file {
            if let Err(e) = pid_file.write() {
                warn!("cannot rewrite pid file {}: {e}", pid_file.path().display());
            }
        }
        error!(
            "upgrade failed: the new process (pid {}) {how} {after:?} after it said it serves, \
             during its probation; taking over again: serving (pid {})",
            new.pid(),
            std::process::id()
        );
    }

    /// Looks at the processes an upgrade started: a starting one that closed its pipe, one
    /// on probation, and the ones given up on (see [`super::reaper`]).
    pub(super) fn on_watch(&mut self) {
        self.watching = false;
        if let Upgrade::Starting { new, .. } = &mut self.upgrade {
            if new.pipe_closed() {
                let progress = new.check_exit();
                self.upgrade_progress(progress);
            }
        }
        self.check_probation();
        self.reaper.poll(self.now);
        self.watch_children();
    }

    /// Arms the next look at the child processes, if one is needed and none is armed.
    pub(super) fn watch_children(&mut self) {
        let needed = match &self.upgrade {
            Upgrade::Starting { new, .. } => new.pipe_closed(),
            Upgrade::Probation { .. } => true,
            Upgrade::Idle | Upgrade::HandedOver { .. } => false,
        } || !self.reaper.is_empty();
        if needed && !self.watching {
            self.watching = true;
            self.timers
                .insert(self.now + WATCH_INTERVAL, TimerKey::UpgradeWatch);
        }
    }

    fn upgrade_failed(&mut self, why: String) {
        // The new process may have written its id there before it failed. (Before the
        // line below, which then is true when it is read.)
        if let Some(pid_file) = &self.pid_file {
            if let Err(e) = pid_file.write() {
                warn!("cannot rewrite pid file {}: {e}", pid_file.path().display());
            }
        }
        warn!(
            "upgrade failed: {why}; still serving (pid {})",
            std::process::id()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_round_trips_and_rejects_nonsense() {
        let named = |fd: RawFd, service: &str| (fd, Some(service.to_string()));
        let handoff = Handoff {
            listen: vec![named(5, "web"), named(6, "web"), named(7, "cache.v2")],
            admin: Some(9),
            control: Some(12),
            state: Some(13),
            ready: 11,
            from: 4242,
        };
        assert_eq!(
            handoff.encode(),
            "listen=5@web,6@web,7@cache.v2;admin=9;control=12;state=13;ready=11;from=4242"
        );
        assert_eq!(Handoff::parse(&handoff.encode()), Ok(handoff));
        // From an older tcplb: no service names.
        let without_admin = Handoff::parse("listen=3;ready=4;from=1").expect("parses");
        assert_eq!(without_admin.admin, None);
        assert_eq!(without_admin.listen, vec![(3, None)]);
        for (bad, why) in [
            ("listen=3;ready=3;from=1", "named twice"),
            ("listen=3,3;ready=4;from=1", "named twice"),
            ("listen=2;ready=4;from=1", "'2' is not a descriptor"),
            ("listen=x;ready=4;from=1", "'x' is not a descriptor"),
            ("listen=;ready=4;from=1", "'' is not a descriptor"),
            ("listen=3;from=1", "no ready="),
            ("ready=4;from=1", "no listen="),
            ("listen=3;ready=4", "no from="),
            ("listen=3;ready=4;from=1;color=red", "unknown key 'color'"),
            ("listen=3;ready=4;ready=5;from=1", "'ready' given twice"),
            ("listen=3;ready=4;from=-1", "not a process id"),
            ("listen=3;ready", "is not KEY=VALUE"),
            ("listen=3@;ready=4;from=1", "names no service"),
            ("listen=3@a b;ready=4;from=1", "names no service"),
            ("listen=3@web,3@db;ready=4;from=1", "named twice"),
        ] {
            let err = Handoff::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with(&format!("{ENV}='{bad}'")), "{err}");
        }
    }

    #[test]
    fn the_binary_is_found_as_the_shell_found_it() {
        let dir = std::env::temp_dir().join(format!("tcplb-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        let exe = dir.join("bin/tcplb");
        std::fs::write(&exe, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let plain = dir.join("bin/plain");
        std::fs::write(&plain, b"").expect("write");
        let cwd = Path::new("/srv/lb");
        let path =
            std::env::join_paths([Path::new("/nonexistent"), &dir.join("bin")]).expect("PATH");
        let resolve = |argv0: &str| resolve_exe(OsStr::new(argv0), Some(cwd), Some(&path));
        // A path is kept as given (symlinks included), made absolute.
        assert_eq!(
            resolve("/usr/local/bin/tcplb"),
            Some(PathBuf::from("/usr/local/bin/tcplb"))
        );
        assert_eq!(
            resolve("./target/tcplb"),
            Some(PathBuf::from("/srv/lb/target/tcplb"))
        );
        assert_eq!(
            resolve("bin/tcplb"),
            Some(PathBuf::from("/srv/lb/bin/tcplb"))
        );
        // A bare name: the first executable file of that name on PATH.
        assert_eq!(resolve("tcplb"), Some(exe.clone()));
        assert_eq!(resolve("plain"), None, "not executable");
        assert_eq!(resolve("missing"), None);
        assert_eq!(resolve(""), None);
        assert_eq!(
            resolve_exe(OsStr::new("tcplb"), Some(cwd), None),
            None,
            "no PATH"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
