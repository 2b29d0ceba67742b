//! Slow start on the control thread's side: the backends it brought back up (checks, an
//! agent, `tcplb ctl set state ready`, added by a reload or `tcplb ctl add backend`) that
//! are on their slow-start ramp. Every [`RAMP_TICK_MS`] each is replayed into its pool's
//! selector, so the selectors see its weight climb; once at full weight it is dropped. A
//! tick costs O(backends ramping), never O(fleet). (A backend a worker's session brought
//! back up, its breaker's trial, is replayed by that worker's timers instead.)

use crate::fleet::RAMP_TICK_MS;
use crate::fleet::backend::Backend;
use crate::service::Topology;
use std::sync::Arc;

/// The backends on their ramp, and whether a tick is armed.
#[derive(Default)]
pub struct Ramp {
    climbing: Vec<Arc<Backend>>,
    armed: bool,
}

impl Ramp {
    /// Follows `backend` while it ramps at `now` (once). Returns whether a tick must be
    /// armed (none is yet).
    pub fn track(&mut self, backend: &Arc<Backend>, now: u64) -> bool {
        if !backend.ramping(now) {
            return false;
        }
        if !self.climbing.iter().any(|b| Arc::ptr_eq(b, backend)) {
            self.climbing.push(Arc::clone(backend));
        }
        self.arm()
    }

    fn arm(&mut self) -> bool {
        let arm = !self.armed && !self.climbing.is_empty();
        self.armed |= arm;
        arm
    }

    /// A tick: each backend replayed in its pool's current generation; those at full
    /// weight are dropped. Returns whether to arm the next tick.
    pub fn tick(&mut self, topology: &Topology, now: u64) -> bool {
        self.armed = false;
        self.climbing.retain(|backend| {
            topology.refresh(backend, now);
            backend.settle_ramp(now) && !backend.is_removed()
        });
        self.arm()
    }

    /// How long between ticks.
    pub fn interval() -> std::time::Duration {
        std::time::Duration::from_millis(RAMP_TICK_MS)
    }

    /// Backends on their ramp now.
    pub fn len(&self) -> usize {
        self.climbing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.climbing.is_empty()
    }
}
