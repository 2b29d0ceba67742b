//! The admin surface: the HTTP endpoint (`--admin`: `/metrics`, `/healthz`, `/backends`,
//! the dashboard at `/` and its `/api/stats`) served by the control thread, never by a
//! worker, so a scrape of a large fleet cannot stall traffic; the Prometheus rendering,
//! which adds up every worker's figures; the `/backends` document; the dashboard's page
//! (`dashboard`), JSON (`stats`) and the history it charts (`history`, sampled by the
//! control thread).
//!
//! Everything here reads the process through a [`View`]: the services and pools, the
//! workers' stats, the lifecycle. Nothing here changes any of it.

pub mod backends;
pub mod dashboard;
pub mod frames;
pub mod history;
pub mod http;
pub mod json;
pub mod metrics;
pub mod sample;
pub mod show;
pub mod stats;

use crate::service::Topology;
use crate::stats::WorkerStats;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// How reloads have gone, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReloadStats {
    pub ok: u64,
    pub errors: u64,
    /// When the last one that succeeded did.
    pub last_success: Option<SystemTime>,
    /// Listeners a reload could not bind (their service was left out).
    pub bind_failures: u64,
}

/// What the admin endpoint shows, borrowed from the control thread for one request.
pub struct View<'a> {
    /// Every service and every pool's current generation.
    pub topology: &'a Topology,
    /// Every worker's figures, in worker order.
    pub workers: &'a [Arc<WorkerStats>],
    /// Whether the process serves (`/healthz` says so).
    pub running: bool,
    /// The lifecycle's name.
    pub lifecycle: &'static str,
    pub now: Instant,
    /// When the process started, by the wall clock.
    pub started: SystemTime,
    /// Access log lines dropped so far (`None`: the log is off).
    pub access_log_dropped: Option<u64>,
    pub reloads: ReloadStats,
    /// The dashboard's history, sampled by the control thread.
    pub history: &'a history::History,
}

impl View<'_> {
    /// Whether the service called `name` (every service, for `None`) would take a new
    /// client now: the process serves and its pool (one of its pools, with routes) has a
    /// backend that takes sessions.
    /// Without a name: whether any service would (the process is worth sending clients
    /// to; a pool whose backends are all down is the backends' fault, and another
    /// balancer would find them down too).
    pub fn healthy(&self, name: Option<&str>) -> Option<bool> {
        let now = crate::clock::millis(self.now);
        let up = |pool| {
            self.topology
                .pool(pool)
                .is_some_and(|f| f.any_taking_sessions(now))
        };
        match name {
            Some(name) => {
                let service = self.topology.services().find(|s| &*s.name == name)?;
                Some(self.running && service.pools().any(up))
            }
            None => Some(self.running && self.topology.services().any(|s| s.pools().any(up))),
        }
    }
}
