//! How the control thread and a worker talk: the commands it sends ([`Command`]), what
//! every worker and the control thread share ([`Shared`]), what a worker starts with
//! ([`WorkerConfig`]) and the control thread's [`Handle`] on it.

use crate::access_log::AccessLogBatch;
use crate::fleet::lease::Lease;
use crate::reactor::ConnId;
use crate::service::{Service, ServiceId, Topology};
use crate::stats::WorkerStats;
use crate::worker::pipes::PipePool;
use crate::worker::pool::Pool;
use log::warn;
use mio::Waker;
use mio::net::TcpListener;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};

/// What the control thread tells a worker.
#[derive(Debug)]
pub enum Command {
    /// A new view of the services and pools.
    Topology(Arc<Topology>),
    /// Accept on these sockets too, for `service` (added, or given more addresses).
    Listen {
        service: ServiceId,
        sockets: Vec<TcpListener>,
    },
    /// Close this worker's copies of `service`'s listeners (every one, or only those on
    /// `only`'s addresses). A removed service's live sessions are `retire`d: they may finish
    /// until the deadline, then they are cut.
    Unlisten {
        service: ServiceId,
        only: Option<Vec<SocketAddr>>,
        retire: Option<(Arc<Service>, std::time::Instant)>,
    },
    /// Stop accepting but keep the listeners open (an upgrade's probation: another
    /// process accepts on the same sockets, and this one may have to take over again). The
    /// worker stays up, sessions or not, until told to resume, drain or stop.
    Pause,
    /// Accept again after a [`Command::Pause`].
    Resume,
    /// Stop accepting (close this worker's copies of the listeners: a socket another
    /// process also holds stays open there, queued clients included); exit once the last
    /// session has ended.
    Drain,
    /// Close this worker's copies of the listeners (no client is taken after this), cut
    /// every session with a reset and exit.
    Stop,
    /// Cut every session on the backend with this id now, with a reset both ways (`tcplb
    /// ctl kill sessions`, or `on-marked-down = "shutdown-sessions"`).
    CutBackend(u64),
    /// From whichever worker freed it: a backend slot (already counted) for this worker's
    /// session `conn`, which was waiting in its pool's queue.
    Slot { conn: ConnId, lease: Lease },
    /// Session `conn`, waiting in its pool's queue, was put out for a client of a higher
    /// class: reset it.
    PutOut { conn: ConnId },
}

/// What a worker that has exited leaves in [`Shared::adopted`].
pub const WORKER_GONE: u32 = u32::MAX;

/// What every worker and the control thread share.
#[derive(Debug)]
pub struct Shared {
    /// Sessions open now, over every worker: `--max-conns` is one limit for the process.
    pub sessions: AtomicUsize,
    /// The topology generation each worker has adopted ([`WORKER_GONE`] once it has exited).
    pub adopted: Box<[AtomicU32]>,
    /// Workers still running.
    pub running: AtomicUsize,
    /// Workers accepting now: their listeners are open and they are not paused.
    pub accepting: AtomicUsize,
    /// For each worker, whether its listeners are still open.
    pub listening: Box<[AtomicBool]>,
    /// Wakes the control thread (a worker adopted a generation, or exited).
    pub control: Arc<Waker>,
    /// Every worker's inbox, by index: set once, before any worker starts, so a worker
    /// that frees a backend slot can hand it to a client queued on another.
    pub inboxes: OnceLock<Box<[Inbox]>>,
}

impl Shared {
    /// Sends `command` to worker `index`; hands it back if that worker is gone (or the
    /// inboxes are not set).
    pub fn send_to(&self, index: usize, command: Command) -> Result<(), Command> {
        match self.inboxes.get().and_then(|all| all.get(index)) {
            Some(inbox) => inbox.send(command),
            None => Err(command),
        }
    }
}

#[cfg(test)]
impl Shared {
    /// What `workers` workers share, for tests: `control` wakes the test's control poll.
    pub fn for_tests(workers: usize, control: Arc<Waker>) -> Shared {
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
        Shared {
            sessions: AtomicUsize::new(0),
            adopted: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            running: AtomicUsize::new(workers),
            accepting: AtomicUsize::new(workers),
            listening: (0..workers).map(|_| AtomicBool::new(true)).collect(),
            control,
            inboxes: OnceLock::new(),
        }
    }
}

/// Where a worker's commands go: its channel, and the waker of its poll.
#[derive(Clone, Debug)]
pub struct Inbox {
    pub(super) commands: Sender<Command>,
    pub(super) waker: Arc<Waker>,
}

impl Inbox {
    /// Sends a command and wakes the worker; hands the command back if the worker is gone.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        self.commands.send(command).map_err(|e| e.0)?;
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake a worker: {e}");
        }
        Ok(())
    }
}

/// What a worker needs to start.
pub struct WorkerConfig {
    pub index: usize,
    /// The listeners it accepts on, each for its service (at most
    /// [`MAX_LISTENERS`](crate::worker::MAX_LISTENERS)).
    pub listeners: Vec<(ServiceId, TcpListener)>,
    pub topology: Arc<Topology>,
    pub pool: Pool,
    pub pipes: PipePool,
    pub shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
    pub access_log: Option<AccessLogBatch>,
    /// Its share of the kernel fast path (`--bpf-redirect`), if loaded.
    pub fast: Option<crate::worker::fast::Fast>,
}

/// The control thread's handle on a running worker.
pub struct Handle {
    pub(super) inbox: Inbox,
    pub thread: std::thread::JoinHandle<()>,
}

impl Handle {
    /// Sends a command and wakes the worker (a worker that has exited takes nothing).
    pub fn send(&self, command: Command) {
        let _ = self.inbox.send(command);
    }
}
