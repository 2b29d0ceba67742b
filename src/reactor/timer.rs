//! Deadlines without a thread per timer: a hashed timing wheel run by the reactor.
//!
//! Time is cut into ticks of [`TICK`]; the wheel has [`SLOTS`] slots, each the head of an
//! intrusive doubly linked list of timers whose tick maps to it. Insert and cancel are O(1)
//! and allocate nothing once the node slab has grown to the peak number of timers. A timer
//! never fires early: its deadline is rounded up to the next tick. A timer more than one turn
//! of the wheel away simply stays in its slot until its own turn comes round.
//!
//! A [`TimerId`] carries the generation of its node, as connection tokens do: cancelling a
//! timer that has already fired (or been cancelled) is a no-op even when its node has been
//! reused by a newer timer in the meantime.

use slab::Slab;
use std::time::{Duration, Instant};

/// Resolution of every deadline.
pub const TICK: Duration = Duration::from_millis(10);
/// Slots in the wheel: one turn is `SLOTS * TICK` (about 82 s).
pub const SLOTS: usize = 8192;

const NIL: u32 = u32::MAX;

/// A pending timer, for [`Timers::cancel`]: its node plus that node's generation.
#[derive(Debug, PartialEq, Eq)]
pub struct TimerId {
    node: u32,
    generation: u32,
}

struct Node<K> {
    due: u64,
    key: K,
    generation: u32,
    prev: u32,
    next: u32,
}

pub struct Timers<K> {
    origin: Instant,
    slots: Box<[u32]>,
    nodes: Slab<Node<K>>,
    /// Every tick before this one has been processed.
    cursor: u64,
    /// No timer is due before this tick (a lower bound; cancels may leave it early).
    earliest: u64,
    /// Generation of the next timer inserted.
    next_generation: u32,
}

impl<K: Copy> Timers<K> {
    pub fn new(origin: Instant) -> Timers<K> {
        Self::with_capacity(origin, 0)
    }

    /// A wheel with room for `capacity` pending timers before it has to grow.
    pub fn with_capacity(origin: Instant, capacity: usize) -> Timers<K> {
        Timers {
            origin,
            slots: vec![NIL; SLOTS].into_boxed_slice(),
            nodes: Slab::with_capacity(capacity),
            cursor: 0,
            earliest: u64::MAX,
            next_generation: 0,
        }
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The first tick at or after `at`: where a deadline goes, so it never fires early.
    fn tick_at_or_after(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.origin).as_nanos();
        ns.div_ceil(TICK.as_nanos()) as u64
    }

    /// The last tick at or before `at`: how far the clock has come.
    fn tick_at_or_before(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.origin).as_nanos();
        (ns / TICK.as_nanos()) as u64
    }

    /// Arms a timer that fires at `deadline` (or at the next tick, if that has passed).
    pub fn insert(&mut self, deadline: Instant, key: K) -> TimerId {
        let due = self.tick_at_or_after(deadline).max(self.cursor);
        let slot = (due % SLOTS as u64) as usize;
        let head = self.slots[slot];
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let id = self.nodes.insert(Node {
            due,
            key,
            generation,
            prev: NIL,
            next: head,
        }) as u32;
        if head != NIL {
            self.nodes[head as usize].prev = id;
        }
        self.slots[slot] = id;
        self.earliest = self.earliest.min(due);
        TimerId {
            node: id,
            generation,
        }
    }

    /// Disarms a timer that has not fired and returns its key; `None` (and nothing changes)
    /// if it has already fired or been cancelled, even if its node now holds another timer.
    pub fn cancel(&mut self, id: TimerId) -> Option<K> {
        let node = self.nodes.get(id.node as usize)?;
        if node.generation != id.generation {
            return None;
        }
        self.unlink(id.node)
    }

    /// Takes a node out of its slot's list and frees it.
    fn unlink(&mut self, id: u32) -> Option<K> {
        let node = self.nodes.try_remove(id as usize)?;
        if node.prev != NIL {
            self.nodes[node.prev as usize].next = node.next;
        } else {
            self.slots[(node.due % SLOTS as u64) as usize] = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        Some(node.key)
    }

    /// Moves every timer due at or before `now` into `fired`, in no particular order.
    pub fn expire(&mut self, now: Instant, fired: &mut Vec<K>) {
        let now_tick = self.tick_at_or_before(now);
        if now_tick < self.earliest || self.cursor > now_tick {
            return;
        }
        // At most one full turn: after that every slot has been looked at.
        let first = self.cursor.max(self.earliest.min(now_tick));
        let last = now_tick.min(first + SLOTS as u64 - 1);
        for tick in first..=last {
            let slot = (tick % SLOTS as u64) as usize;
            let mut id = self.slots[slot];
            while id != NIL {
                let node = &self.nodes[id as usize];
                let next = node.next;
                if node.due <= now_tick {
                    fired.push(node.key);
                    self.unlink(id);
                }
                id = next;
            }
        }
        self.cursor = now_tick + 1;
        self.earliest = self.find_earliest();
    }

    /// The lowest due tick of any timer. Scans at most one turn from the cursor: the first
    /// node found in its own turn is the earliest, since every node in an earlier slot belongs
    /// to a later turn.
    fn find_earliest(&self) -> u64 {
        let mut best = u64::MAX;
        if self.nodes.is_empty() {
            return best;
        }
        for tick in self.cursor..self.cursor + SLOTS as u64 {
            let mut id = self.slots[(tick % SLOTS as u64) as usize];
            while id != NIL {
                let node = &self.nodes[id as usize];
                if node.due == tick {
                    return tick;
                }
                best = best.min(node.due);
                id = node.next;
            }
        }
        best
    }

    /// How long the reactor may sleep before the next timer is due (`None`: no timers).
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let ns = self.earliest.checked_mul(TICK.as_nanos() as u64)?;
        let at = self.origin.checked_add(Duration::from_nanos(ns))?;
        Some(at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired_at(timers: &mut Timers<u32>, at: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        timers.expire(at, &mut out);
        out.sort();
        out
    }

    #[test]
    fn fires_in_order_never_early() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0);
        timers.insert(t0 + Duration::from_millis(25), 1);
        timers.insert(t0 + Duration::from_millis(5), 2);
        timers.insert(t0 + Duration::from_secs(200), 3); // more than one turn away
        assert_eq!(timers.len(), 3);
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(4)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(10)),
            vec![2]
        );
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(29)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(30)),
            vec![1]
        );
        // A full turn later the far timer is still not due.
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_secs(100)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_secs(199)),
            Vec::<u32>::new()
        );
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_secs(200)),
            vec![3]
        );
        assert!(timers.is_empty());
        assert_eq!(timers.next_timeout(t0), None);
    }

    #[test]
    fn cancelled_timers_do_not_fire() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0);
        let ids: Vec<TimerId> = (0..10)
            .map(|i| timers.insert(t0 + Duration::from_millis(50), i))
            .collect();
        for (i, id) in ids.into_iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(timers.cancel(id), Some(i as u32));
            }
        }
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(60)),
            vec![1, 3, 5, 7, 9]
        );
    }

    #[test]
    fn a_stale_cancel_never_removes_the_timer_that_reused_its_node() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0);
        let fired_id = timers.insert(t0 + Duration::from_millis(10), 1);
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(10)),
            vec![1]
        );
        // The freed node is reused by the next timer (the slab hands out the same slot).
        let live = timers.insert(t0 + Duration::from_millis(50), 2);
        assert_eq!(live.node, fired_id.node, "the node was reused");
        assert_eq!(
            timers.cancel(fired_id),
            None,
            "the old id no longer names a timer"
        );
        assert_eq!(timers.len(), 1);
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(50)),
            vec![2],
            "the newer timer still fires"
        );
        // A cancelled id is just as stale.
        let a = timers.insert(t0 + Duration::from_millis(80), 3);
        let again = TimerId {
            node: a.node,
            generation: a.generation,
        };
        assert_eq!(timers.cancel(a), Some(3));
        let b = timers.insert(t0 + Duration::from_millis(80), 4);
        assert_eq!(b.node, again.node);
        assert_eq!(timers.cancel(again), None);
        assert_eq!(timers.cancel(b), Some(4));
    }

    #[test]
    fn next_timeout_tracks_the_earliest() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0);
        assert_eq!(timers.next_timeout(t0), None);
        timers.insert(t0 + Duration::from_millis(300), 1);
        timers.insert(t0 + Duration::from_millis(100), 2);
        assert_eq!(timers.next_timeout(t0), Some(Duration::from_millis(100)));
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(100)),
            vec![2]
        );
        assert_eq!(
            timers.next_timeout(t0 + Duration::from_millis(100)),
            Some(Duration::from_millis(200))
        );
        // A deadline already past fires on the next expiry.
        timers.insert(t0, 3);
        assert_eq!(
            timers.next_timeout(t0 + Duration::from_millis(150)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            fired_at(&mut timers, t0 + Duration::from_millis(150)),
            vec![3]
        );
    }

    #[test]
    fn falling_far_behind_still_fires_everything_due() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0);
        for i in 0..100u32 {
            timers.insert(t0 + Duration::from_millis(u64::from(i) * 997), i);
        }
        let fired = fired_at(&mut timers, t0 + Duration::from_secs(1000));
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
    }
}
