//! The admin surface: the HTTP endpoint (`--admin`: `/metrics`, `/healthz`, `/backends`)
//! served by the control thread, never by a worker, so a scrape of a large fleet cannot
//! stall traffic; the Prometheus rendering, which adds up every worker's figures; and the
//! access log, written by one thread for every worker.
//!
//! Everything here reads the process through a [`View`]: the fleet, the workers' stats,
//! the lifecycle. Nothing here changes any of it.

pub mod access_log;
pub mod http;
pub mod metrics;

use crate::fleet::Fleet;
use crate::lifecycle::Lifecycle;
use crate::stats::WorkerStats;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// What the admin endpoint shows, borrowed from the control thread for one request.
pub struct View<'a> {
    pub fleet: &'a Fleet,
    /// Every worker's figures, in worker order.
    pub workers: &'a [Arc<WorkerStats>],
    pub lifecycle: Lifecycle,
    pub now: Instant,
    /// When the process started, by the wall clock.
    pub started: SystemTime,
    /// Access log lines dropped so far (`None`: the log is off).
    pub access_log_dropped: Option<u64>,
}
