//! The control socket (`control-socket`): a unix socket, never TCP, created owner-only
//! (mode 0600 unless `control-socket-mode` widens it, group `control-socket-group`), served
//! by the control thread. [`CtlSocket`] owns the listener and its connections (a slab of at
//! most [`MAX_CTL_CONNS`], their descriptors counted in `limits::reserve`; one past that is
//! told `error: busy` and closed). A connection sends one request line
//! (`ctl::protocol`), is answered, and closed; the commands themselves are carried out by
//! `control::commands`. Tokens: a connection's id on socket 0 with its slot above
//! [`SLOT_BASE`], a range of its own beside the admin connections' (socket 0, low slots)
//! and the probes' (socket 1).
//!
//! At start a socket file left by a process that is gone is replaced; one a live process
//! answers on is an error. An upgrade hands the listening socket to the new process, which
//! keeps the path; the process that bound it removes the file when it exits for good.

use crate::control::TimerKey;
use crate::ctl::protocol::MAX_REQUEST;
pub use crate::limits::MAX_CTL_CONNS;
use crate::reactor::ConnId;
use crate::reactor::timer::{TimerId, Timers};
use log::{debug, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Control connections' slots start here in their tokens (admin connections' slots are
/// far below).
pub const SLOT_BASE: u32 = 1 << 24;
/// How long a connection has to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may wait for its answer (a reload, an added backend's name).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections accepted per turn of the loop.
const ACCEPTS_PER_TURN: usize = 8;

/// Where a connection is.
enum Phase {
    /// Reading the request line.
    Reading(Vec<u8>),
    /// Its command waits for another thread (the discovery thread).
    Waiting,
    /// Writing the answer, then closing.
    Writing { out: Vec<u8>, written: usize },
}

/// One control connection.
pub struct CtlConn {
    id: ConnId,
    stream: UnixStream,
    phase: Phase,
    timer: Option<TimerId>,
}

/// What a connection has for the dispatcher after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing yet.
    Nothing,
    /// A whole request line.
    Request(String),
    /// It is finished: close it.
    Done,
}

impl CtlConn {
    /// Reads and writes what it can.
    fn on_ready(&mut self) -> Progress {
        match &mut self.phase {
            Phase::Reading(buf) => {
                let mut chunk = [0u8; 1024];
                loop {
                    match self.stream.read(&mut chunk) {
                        Ok(0) => {
                            // Closed before a line end: what came is the request, if any.
                            if buf.is_empty() {
                                return Progress::Done;
                            }
                            let line = String::from_utf8_lossy(buf).into_owned();
                            return Progress::Request(line);
                        }
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                                let line = String::from_utf8_lossy(&buf[..end])
                                    .trim_end_matches('\r')
                                    .to_string();
                                return Progress::Request(line);
                            }
                            if buf.len() > MAX_REQUEST {
                                return Progress::Request(String::new());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Progress::Nothing;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Progress::Done,
                    }
                }
            }
            Phase::Waiting => Progress::Nothing,
            Phase::Writing { out, written } => loop {
                if *written >= out.len() {
                    return Progress::Done;
                }
                match self.stream.write(&out[*written..]) {
                    Ok(0) => return Progress::Done,
                    Ok(n) => *written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Nothing,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Progress::Done,
                }
            },
        }
    }
}

/// The control socket and its connections.
pub struct CtlSocket {
    /// `None` once handed over to a newer tcplb (its connections are still served).
    listener: Option<UnixListener>,
    path: PathBuf,
    /// This process made the socket file (or took it over) and removes it at exit.
    owns_path: bool,
    ready: bool,
    paused: bool,
    conns: Slab<CtlConn>,
    next_generation: u32,
}

impl CtlSocket {
    /// Registers `listener` (at `path`) under `token`.
    pub fn new(
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
        registry: &Registry,
        token: Token,
    ) -> io::Result<CtlSocket> {
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(CtlSocket {
            listener: Some(listener),
            path,
            owns_path: true,
            ready: true,
            paused: false,
            conns: Slab::new(),
            next_generation: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket's descriptor, for an upgrade to hand over.
    pub fn listener_fd(&self) -> Option<RawFd> {
        self.listener.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether `token` is a control connection's.
    pub fn owns(token: Token) -> bool {
        let (id, socket) = ConnId::from_token(token);
        socket == 0 && id.slot >= SLOT_BASE
    }

    pub fn set_ready(&mut self) {
        self.ready = !self.paused;
    }

    pub fn is_ready(&self) -> bool {
        self.ready && self.listener.is_some()
    }

    /// An upgrade's probation: stop accepting, keep the socket.
    pub fn pause(&mut self, registry: &Registry) {
        if let Some(listener) = &mut self.listener {
            let _ = registry.deregister(listener);
        }
        self.ready = false;
        self.paused = true;
    }

    /// Accept again after [`CtlSocket::pause`].
    pub fn resume(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if let Some(listener) = &mut self.listener {
            registry.register(listener, token, Interest::READABLE)?;
            self.ready = true;
        }
        self.paused = false;
        Ok(())
    }

    /// After an upgrade handed over: the newer process answers, and keeps the path.
    pub fn stop_listening(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        self.ready = false;
        self.owns_path = false;
    }

    /// Accepts connections, up to a turn's worth; returns the new ones (their request is
    /// usually there already: serve them at once).
    pub fn accept(
        &mut self,
        registry: &Registry,
        timers: &mut Timers<TimerKey>,
        now: Instant,
    ) -> Vec<ConnId> {
        let mut new = Vec::new();
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else {
                break;
            };
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("control socket: accept failed: {e}");
                    break;
                }
            };
            if self.conns.len() >= MAX_CTL_CONNS {
                let _ = stream.write(b"error: busy: too many control connections; try again\n");
                continue;
            }
            self.next_generation = self.next_generation.wrapping_add(1);
            let id = ConnId {
                slot: SLOT_BASE + self.conns.vacant_key() as u32,
                generation: self.next_generation,
            };
            if let Err(e) = registry.register(
                &mut stream,
                id.token(0),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                debug!("control socket: {e}");
                continue;
            }
            let timer = timers.insert(now + REQUEST_TIMEOUT, TimerKey::Ctl(id));
            self.conns.insert(CtlConn {
                id,
                stream,
                phase: Phase::Reading(Vec::new()),
                timer: Some(timer),
            });
            new.push(id);
        }
        new
    }

    fn get(&mut self, id: ConnId) -> Option<&mut CtlConn> {
        let slot = id.slot.checked_sub(SLOT_BASE)? as usize;
        self.conns.get_mut(slot).filter(|c| c.id == id)
    }

    /// A connection's socket is ready (or it was just accepted).
    pub fn on_ready(&mut self, id: ConnId) -> Progress {
        match self.get(id) {
            Some(conn) => conn.on_ready(),
            None => Progress::Nothing, // a late event for a connection that has ended
        }
    }

    /// Its command waits for another thread: up to [`ANSWER_TIMEOUT`] more.
    pub fn wait(&mut self, id: ConnId, timers: &mut Timers<TimerKey>, now: Instant) {
        if let Some(conn) = self.get(id) {
            conn.phase = Phase::Waiting;
            if let Some(timer) = conn.timer.take() {
                timers.cancel(timer);
            }
            conn.timer = Some(timers.insert(now + ANSWER_TIMEOUT, TimerKey::Ctl(id)));
        }
    }

    /// Answers `id` (`answer`: the whole text, status line first) and writes what it can;
    /// returns whether it is finished.
    pub fn answer(&mut self, id: ConnId, answer: String) -> bool {
        let Some(conn) = self.get(id) else {
            return false;
        };
        conn.phase = Phase::Writing {
            out: answer.into_bytes(),
            written: 0,
        };
        conn.on_ready() == Progress::Done
    }

    /// Whether `id` still waits for its answer.
    pub fn is_waiting(&mut self, id: ConnId) -> bool {
        self.get(id)
            .is_some_and(|c| matches!(c.phase, Phase::Waiting))
    }

    /// Whether `id` is still reading its request.
    pub fn is_reading(&mut self, id: ConnId) -> bool {
        self.get(id)
            .is_some_and(|c| matches!(c.phase, Phase::Reading(_)))
    }

    /// Ends a connection: its timer is cancelled, its slot freed.
    pub fn close(&mut self, id: ConnId, registry: &Registry, timers: &mut Timers<TimerKey>) {
        if self.get(id).is_none() {
            return;
        }
        let mut conn = self.conns.remove((id.slot - SLOT_BASE) as usize);
        if let Some(timer) = conn.timer.take() {
            timers.cancel(timer);
        }
        let _ = registry.deregister(&mut conn.stream);
    }

    /// The timer of `id` fired (it is gone now).
    pub fn timer_fired(&mut self, id: ConnId) {
        if let Some(conn) = self.get(id) {
            conn.timer = None;
        }
    }

    /// Removes the socket file, if this process owns it (at exit).
    pub fn remove_file(&mut self) {
        if self.owns_path {
            self.owns_path = false;
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(
                        "cannot remove the control socket {}: {e}",
                        self.path.display()
                    );
                }
            }
        }
    }
}

/// Makes the control socket at `path`: owner-only while it is made (the umask is
/// narrowed around the bind), then given `mode` and `group`. A socket file no process
/// answers on is replaced; anything else there is an error.
pub fn bind(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<std::os::unix::net::UnixListener, String> {
    let shown = crate::config::printable(&path.display().to_string()).into_owned();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "control socket {shown} is in use: another tcplb answers on it"
                    ));
                }
                Err(_) => {
                    // Left behind by a process that is gone.
                    std::fs::remove_file(path).map_err(|e| {
                        format!("cannot replace the stale control socket {shown}: {e}")
                    })?;
                }
            }
        }
        Ok(_) => {
            return Err(format!(
                "control socket {shown}: something that is not a socket is there"
            ));
        }
        Err(_) => {}
    }
    // SAFETY: umask only changes this process's file creation mask, and is restored right
    // after the bind; start-up runs it before any other thread that creates files.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| format!("cannot make the control socket {shown}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of the control socket {shown}: {e}"))?;
    if let Some(group) = group {
        let gid = group_id(group).ok_or_else(|| {
            format!("control-socket-group '{group}' is not a group on this system")
        })?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("cannot give the control socket {shown} group {group}: {e}"))?;
    }
    Ok(listener)
}

/// Adopts a control socket handed over by the process this one upgrades.
pub fn adopt(fd: OwnedFd) -> std::os::unix::net::UnixListener {
    std::os::unix::net::UnixListener::from(fd)
}

/// The path a listening unix socket is bound to.
pub fn bound_path(listener: &std::os::unix::net::UnixListener) -> Option<PathBuf> {
    listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
}

/// A group's id, by name or number.
fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    let name = std::ffi::CString::new(group).ok()?;
    // SAFETY: getgrnam reads a NUL-terminated string we own; the result points into static
    // storage that is read at once, before any other call could reuse it (start-up).
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: `entry` is a valid pointer returned by getgrnam (checked non-null above).
    Some(unsafe { (*entry).gr_gid })
}
