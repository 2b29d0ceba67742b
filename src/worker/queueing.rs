//! A pool's wait queue as the workers use it: a client joins when every backend is at its
//! `maxconn`; whoever frees a slot (a session ending on any worker, a connect failing, the
//! control thread's tick) serves the queue's head by sending the slot to the head's worker
//! ([`Command::Slot`]). A client put out of a full queue for a higher-class one is told the
//! same way ([`Command::PutOut`]).
//!
//! No slot stays free while someone waits: a slot is freed and the queue then looked at
//! ([`give_back`]), a client joins and a slot is then looked for ([`serve`]), each with a
//! sequentially consistent fence between. Either the one freeing sees the waiter, or the
//! one joining sees the slot.

use crate::fleet::Fleet;
use crate::fleet::lease::Lease;
use crate::fleet::queue::{Joined, Ticket, Waiter};
use crate::fleet::select::PickRequest;
use crate::service::Topology;
use crate::worker::handle::{Command, Shared};
use std::sync::atomic::{Ordering, fence};

/// Puts `waiter` in `fleet`'s queue; `None` if it is full. A waiter put out to make room
/// is told to go.
pub fn join(fleet: &Fleet, shared: &Shared, waiter: Waiter) -> Option<Ticket> {
    match fleet.queue().join(waiter) {
        Joined::Waiting(ticket) => Some(ticket),
        Joined::Displaced(ticket, out) => {
            // A worker that is gone took its sessions with it.
            let _ = shared.send_to(out.worker, Command::PutOut { conn: out.conn });
            Some(ticket)
        }
        Joined::Full => None,
    }
}

/// Hands free slots to the queue's waiters, head first, while there are both.
pub fn serve(fleet: &Fleet, shared: &Shared, now_ms: u64) {
    // Pairs with the fence in `give_back`: see the module's comment.
    fence(Ordering::SeqCst);
    let queue = fleet.queue();
    if queue.is_empty() {
        return;
    }
    queue.serve(
        |waiter| {
            fleet.pick(&PickRequest {
                client: Some(waiter.client),
                now: now_ms,
                tried: &[],
            })
        },
        |waiter, lease| {
            let slot = Command::Slot {
                conn: waiter.conn,
                lease,
            };
            if let Err(Command::Slot { lease, .. }) = shared.send_to(waiter.worker, slot) {
                // Its worker has exited: the slot is free again, for the next waiter.
                fleet.release(lease, now_ms);
            }
        },
    );
}

/// Ends a lease and, if anyone waits for its pool, serves them.
pub fn give_back(lease: Lease, topology: &Topology, shared: &Shared, now_ms: u64) {
    let pool = lease.backend().pool;
    topology.release(lease, now_ms);
    let Some(fleet) = topology.pool(pool) else {
        return;
    };
    // A pool without a queue pays no fence. (A queue a reload has just turned on, seen
    // off here, is served by the control thread's next tick.)
    if !fleet.queue().is_on() {
        return;
    }
    // The slot was freed above; whoever joined the queue before this fence is seen below,
    // and whoever joins after it sees the slot when it calls `serve`.
    fence(Ordering::SeqCst);
    if !fleet.queue().is_empty() {
        serve(fleet, shared, now_ms);
    }
}
