//! Handing each new [`Topology`] to the workers: the current one, the one being adopted,
//! and the ones retired while workers may still use them.
//!
//! A new generation is sent to every worker at once. Once every running worker has adopted
//! it, the pools it changed replay their selectors (sessions that started or ended on the
//! old generation meanwhile are then counted in the new one), the lines that describe the
//! change are logged (so they are in effect when they are read), and the retired
//! generations are freed here — never on a worker's loop, since freeing the last reference
//! to a pool's backends is O(n).

use crate::clock;
use crate::fleet::Fleet;
use crate::service::Topology;
use crate::worker::{Command, Handle, Shared, WORKER_GONE};
use log::info;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A generation handed out and not yet adopted by every worker.
struct Adopting {
    generation: u32,
    /// Logged once it is adopted.
    lines: Vec<String>,
    /// Pools whose generation changed: their selectors replay once it is adopted.
    changed: Vec<Arc<Fleet>>,
}

pub struct Rollout {
    current: Arc<Topology>,
    adopting: Option<Adopting>,
    retired: Vec<Arc<Topology>>,
}

impl Rollout {
    /// Starts with the topology every worker starts with.
    pub fn new(initial: Arc<Topology>) -> Rollout {
        Rollout {
            current: initial,
            adopting: None,
            retired: Vec::new(),
        }
    }

    pub fn current(&self) -> &Arc<Topology> {
        &self.current
    }

    /// The number the next generation gets.
    pub fn next_generation(&self) -> u32 {
        self.current.generation().wrapping_add(1)
    }

    /// Makes `topology` current here and sends it to every worker; `changed` are the
    /// pools with a new generation in it, `lines` what to log once it is in effect.
    pub fn publish(
        &mut self,
        topology: Topology,
        mut changed: Vec<Arc<Fleet>>,
        mut lines: Vec<String>,
        workers: &[Handle],
    ) {
        if let Some(superseded) = self.adopting.take() {
            // Replaced before every worker took it: what it said and changed still holds.
            lines.splice(0..0, superseded.lines);
            let earlier: Vec<Arc<Fleet>> = superseded
                .changed
                .into_iter()
                .filter(|old| !changed.iter().any(|new| new.pool() == old.pool()))
                .collect();
            changed.extend(earlier);
        }
        let topology = Arc::new(topology);
        for w in workers {
            w.send(Command::Topology(Arc::clone(&topology)));
        }
        self.adopting = Some(Adopting {
            generation: topology.generation(),
            lines,
            changed,
        });
        let old = std::mem::replace(&mut self.current, topology);
        self.retired.push(old);
    }

    /// Once every running worker uses the newest generation: replays the changed pools'
    /// selectors, logs what changed and frees the retired generations. Returns whether a
    /// generation was still being adopted before this call and now is in effect.
    pub fn check_adopted(&mut self, shared: &Shared) -> bool {
        let Some(adopting) = &self.adopting else {
            return false;
        };
        // A worker that has exited adopts nothing any more: it is not waited for.
        let all = shared.adopted.iter().all(|g| {
            let adopted = g.load(Ordering::Acquire);
            adopted == adopting.generation || adopted == WORKER_GONE
        });
        if !all {
            return false;
        }
        let now = clock::millis(Instant::now());
        if let Some(adopting) = self.adopting.take() {
            for fleet in &adopting.changed {
                // The current generation of that pool (a later one may have replaced it).
                if let Some(current) = self.current.pool(fleet.pool()) {
                    current.refresh_all(now);
                }
            }
            adopting.lines.iter().for_each(|line| info!("{line}"));
        }
        self.retired.clear();
        true
    }

    /// Whether every worker uses the current generation.
    pub fn settled(&self) -> bool {
        self.adopting.is_none()
    }
}
