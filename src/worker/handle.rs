//! How the control thread and a worker talk: the commands it sends ([`Command`]), what
//! every worker and the control thread share ([`Shared`]), what a worker starts with
//! ([`WorkerConfig`]) and the control thread's [`Handle`] on it.

use crate::access_log::AccessLogBatch;
use crate::service::{Service, ServiceId, Topology};
use crate::stats::WorkerStats;
use crate::worker::pipes::PipePool;
use crate::worker::pool::Pool;
use log::warn;
use mio::Waker;
use mio::net::TcpListener;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::mpsc::Sender;

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
}

/// The control thread's handle on a running worker.
pub struct Handle {
    pub(super) commands: Sender<Command>,
    pub(super) waker: Arc<Waker>,
    pub thread: std::thread::JoinHandle<()>,
}

impl Handle {
    /// Sends a command and wakes the worker.
    pub fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            if let Err(e) = self.waker.wake() {
                warn!("cannot wake a worker: {e}");
            }
        }
    }
}
