//! A pool's wait queue: clients accepted while every backend that could take them was at
//! its `maxconn`, waiting for a slot instead of being reset (HAProxy's server queue).
//!
//! One queue per pool, shared by every worker: whichever worker frees a slot serves the
//! queue's head, wherever that client is. Three lines, one per priority [`Class`]; the
//! head of the highest non-empty line is served first, FIFO within a line. A full queue
//! takes a newcomer only in place of the newest waiter of a lower class, which is put out.
//!
//! The queue holds only who waits ([`Waiter`]: a worker, a connection id, a class), never a
//! socket or a buffer: the client stays on its worker, its bytes in the kernel. Handing a
//! served waiter its slot is the caller's (`serve`'s `deliver`).
//!
//! It is kept across the pool's generations (a reload changes its size and timeout, not
//! who waits). Its length is an atomic, so the release path of a pool nobody waits for
//! costs one load.

pub use crate::config::protection::{Class, QueueSettings};
use crate::reactor::ConnId;
use crate::stats::SharedHistogram;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the queue wait histogram.
pub const WAIT_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Ticket numbers grow with each client that joins: within a line, they are in order.
pub type Ticket = u64;

/// A client waiting for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    /// The worker the client is on, and its session there.
    pub worker: usize,
    pub conn: ConnId,
    /// Its address (a source-hash pool picks by it).
    pub client: IpAddr,
    pub class: Class,
    /// When it joined.
    pub since: Instant,
    pub ticket: Ticket,
}

/// What became of a client that asked to wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// It waits, with this ticket.
    Waiting(Ticket),
    /// It waits, in place of this lower-class waiter, who must be put out.
    Displaced(Ticket, Waiter),
    /// The queue is full (or off) and nobody waiting is of a lower class: reset it.
    Full,
}

/// The queue's figures, kept with it.
#[derive(Debug)]
pub struct QueueStats {
    /// How long served clients waited.
    pub wait: SharedHistogram,
    /// Clients reset after waiting `timeout`.
    pub timeouts: AtomicU64,
    /// Clients turned away because the queue was full, by class (`Class as usize`).
    pub full: [AtomicU64; 3],
    /// Waiters put out for a higher-class newcomer, by their class.
    pub displaced: [AtomicU64; 3],
}

impl Default for QueueStats {
    fn default() -> QueueStats {
        QueueStats {
            wait: SharedHistogram::new(&WAIT_BUCKETS),
            timeouts: AtomicU64::new(0),
            full: Default::default(),
            displaced: Default::default(),
        }
    }
}

/// One class's line: waiters in ticket order. A waiter that leaves from the middle is only
/// marked gone (found by binary search, O(log n)) and dropped when it reaches an end, so a
/// mass of timeouts or resets never shifts the line once per leaver.
#[derive(Debug, Default)]
struct Line {
    slots: VecDeque<(Waiter, bool)>,
    /// Waiters not marked gone.
    live: usize,
}

impl Line {
    fn drop_gone_ends(&mut self) {
        while self.slots.front().is_some_and(|(_, live)| !live) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|(_, live)| !live) {
            self.slots.pop_back();
        }
        // Marked-gone waiters in the middle never outnumber the live ones for long.
        if self.slots.len() > 2 * self.live + 64 {
            self.slots.retain(|(_, live)| *live);
        }
    }

    fn front(&mut self) -> Option<&Waiter> {
        self.drop_gone_ends();
        self.slots.front().map(|(w, _)| w)
    }

    fn pop_front(&mut self) -> Option<Waiter> {
        self.drop_gone_ends();
        let (waiter, _) = self.slots.pop_front()?;
        self.live -= 1;
        Some(waiter)
    }

    fn pop_back(&mut self) -> Option<Waiter> {
        self.drop_gone_ends();
        let (waiter, _) = self.slots.pop_back()?;
        self.live -= 1;
        Some(waiter)
    }

    fn mark_gone(&mut self, ticket: Ticket) -> bool {
        let Ok(i) = self.slots.binary_search_by_key(&ticket, |(w, _)| w.ticket) else {
            return false;
        };
        if !self.slots[i].1 {
            return false;
        }
        self.slots[i].1 = false;
        self.live -= 1;
        self.drop_gone_ends();
        true
    }
}

#[derive(Debug, Default)]
struct Lines {
    /// By class (`Class as usize`).
    by_class: [Line; 3],
    next_ticket: Ticket,
}

/// A pool's wait queue.
#[derive(Debug, Default)]
pub struct Queue {
    lines: Mutex<Lines>,
    /// Waiters now (what the release path reads).
    len: AtomicUsize,
    size: AtomicUsize,
    timeout_ms: AtomicU64,
    pub stats: QueueStats,
}

impl Queue {
    pub fn new(settings: QueueSettings) -> Queue {
        let queue = Queue::default();
        queue.configure(settings);
        queue
    }

    /// Takes new settings (a reload): a smaller size puts nobody out, it only turns new
    /// clients away until the queue is below it.
    pub fn configure(&self, settings: QueueSettings) {
        self.size.store(settings.size, Ordering::Release);
        self.timeout_ms.store(
            u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
    }

    pub fn settings(&self) -> QueueSettings {
        QueueSettings {
            size: self.size.load(Ordering::Acquire),
            timeout: Duration::from_millis(self.timeout_ms.load(Ordering::Acquire)),
        }
    }

    /// Whether clients may wait here at all.
    pub fn is_on(&self) -> bool {
        self.size.load(Ordering::Acquire) > 0
    }

    /// Clients waiting now. Sequentially consistent: a worker that frees a slot and then
    /// finds this 0 knows that whoever joins later will see that slot when it tries to be
    /// served (see `serve`'s callers).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A panic while holding it cannot leave the lines half-changed in a way that
        // matters more than stopping the queue would.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks for `waiter` (its ticket is given here) to wait.
    pub fn join(&self, mut waiter: Waiter) -> Joined {
        let size = self.size.load(Ordering::Acquire);
        if size == 0 {
            // Off (perhaps since a reload): nobody waiting is put out for a newcomer.
            self.stats.full[waiter.class as usize].fetch_add(1, Ordering::Relaxed);
            return Joined::Full;
        }
        let mut lines = self.lock();
        let mut displaced = None;
        if self.len.load(Ordering::SeqCst) >= size {
            // Full: put out the newest waiter of the lowest class below the newcomer's.
            let lower = Class::ALL
                .iter()
                .rev()
                .take_while(|&&c| c < waiter.class)
                .find(|&&c| lines.by_class[c as usize].live > 0);
            let Some(&lower) = lower else {
                self.stats.full[waiter.class as usize].fetch_add(1, Ordering::Relaxed);
                return Joined::Full;
            };
            displaced = lines.by_class[lower as usize].pop_back();
            if let Some(out) = &displaced {
                self.stats.displaced[out.class as usize].fetch_add(1, Ordering::Relaxed);
            }
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
        waiter.ticket = lines.next_ticket;
        lines.next_ticket += 1;
        let line = &mut lines.by_class[waiter.class as usize];
        line.slots.push_back((waiter, true));
        line.live += 1;
        self.len.fetch_add(1, Ordering::SeqCst);
        match displaced {
            Some(out) => Joined::Displaced(waiter.ticket, out),
            None => Joined::Waiting(waiter.ticket),
        }
    }

    /// Takes a waiter out (it timed out, or its client went away). `false`: it was not
    /// waiting any more — served (its slot is on the way) or put out (so is the word).
    pub fn leave(&self, class: Class, ticket: Ticket) -> bool {
        let mut lines = self.lock();
        let left = lines.by_class[class as usize].mark_gone(ticket);
        if left {
            self.len.fetch_sub(1, Ordering::SeqCst);
        }
        left
    }

    /// Serves waiters in order while slots are free: `pick` tries to find the head a slot
    /// (`None`: none free, stop), `deliver` hands the served waiter its slot. Both run under
    /// the queue's lock, so no two servers hand out the same place. Returns how many were
    /// served.
    pub fn serve<S>(
        &self,
        mut pick: impl FnMut(&Waiter) -> Option<S>,
        mut deliver: impl FnMut(Waiter, S),
    ) -> usize {
        let mut lines = self.lock();
        let mut served = 0;
        loop {
            let Some(class) = Class::ALL
                .iter()
                .find(|&&c| lines.by_class[c as usize].live > 0)
            else {
                return served;
            };
            let line = &mut lines.by_class[*class as usize];
            let Some(head) = line.front() else {
                return served;
            };
            let Some(slot) = pick(head) else {
                return served;
            };
            let Some(waiter) = line.pop_front() else {
                return served;
            };
            self.len.fetch_sub(1, Ordering::SeqCst);
            deliver(waiter, slot);
            served += 1;
        }
    }

    /// Waiters now, by class (`Class as usize`), for `/backends`.
    pub fn by_class(&self) -> [usize; 3] {
        let lines = self.lock();
        [0, 1, 2].map(|c| lines.by_class[c].live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(slot: u32, class: Class) -> Waiter {
        Waiter {
            worker: 0,
            conn: ConnId {
                slot,
                generation: 1,
            },
            client: IpAddr::from([127, 0, 0, 1]),
            class,
            since: Instant::now(),
            ticket: 0,
        }
    }

    fn queue(size: usize) -> Queue {
        Queue::new(QueueSettings {
            size,
            timeout: Duration::from_secs(5),
        })
    }

    /// Serves up to `slots` waiters; returns their slots (connection ids) in order served.
    fn serve(q: &Queue, slots: usize) -> Vec<u32> {
        let mut left = slots;
        let mut served = Vec::new();
        q.serve(
            |_| {
                (left > 0).then(|| {
                    left -= 1;
                })
            },
            |w, ()| served.push(w.conn.slot),
        );
        served
    }

    fn ticket(joined: Joined) -> Ticket {
        match joined {
            Joined::Waiting(t) | Joined::Displaced(t, _) => t,
            Joined::Full => panic!("the queue was full"),
        }
    }

    #[test]
    fn one_class_is_served_first_in_first_out() {
        let q = queue(10);
        for slot in 0..5 {
            ticket(q.join(waiter(slot, Class::Normal)));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(serve(&q, 2), [0, 1]);
        assert_eq!(serve(&q, 10), [2, 3, 4]);
        assert!(q.is_empty());
        assert_eq!(serve(&q, 1), Vec::<u32>::new());
    }

    #[test]
    fn higher_classes_are_served_first_whenever_they_came() {
        let q = queue(10);
        ticket(q.join(waiter(0, Class::Low)));
        ticket(q.join(waiter(1, Class::Normal)));
        ticket(q.join(waiter(2, Class::Low)));
        ticket(q.join(waiter(3, Class::High)));
        ticket(q.join(waiter(4, Class::Normal)));
        assert_eq!(serve(&q, 10), [3, 1, 4, 0, 2]);
    }

    #[test]
    fn a_full_queue_turns_away_equals_and_puts_out_the_newest_of_the_lowest_class() {
        let q = queue(3);
        ticket(q.join(waiter(0, Class::Low)));
        ticket(q.join(waiter(1, Class::Normal)));
        ticket(q.join(waiter(2, Class::Low)));
        assert_eq!(q.join(waiter(3, Class::Low)), Joined::Full);
        match q.join(waiter(4, Class::Normal)) {
            Joined::Displaced(_, out) => assert_eq!(out.conn.slot, 2, "the newest low one"),
            other => panic!("{other:?}"),
        }
        match q.join(waiter(5, Class::High)) {
            Joined::Displaced(_, out) => assert_eq!(out.conn.slot, 0, "the last low one"),
            other => panic!("{other:?}"),
        }
        // Now only normal and high wait: a normal newcomer has nobody below it.
        assert_eq!(q.join(waiter(6, Class::Normal)), Joined::Full);
        assert_eq!(q.len(), 3);
        assert_eq!(serve(&q, 10), [5, 1, 4]);
        assert_eq!(q.stats.full[Class::Low as usize].load(Ordering::Relaxed), 1);
        assert_eq!(
            q.stats.full[Class::Normal as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            q.stats.displaced[Class::Low as usize].load(Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn a_queue_of_size_zero_takes_nobody() {
        let q = queue(0);
        assert!(!q.is_on());
        assert_eq!(q.join(waiter(0, Class::High)), Joined::Full);
    }

    #[test]
    fn leaving_takes_a_waiter_out_once_and_not_after_it_was_served() {
        let q = queue(10);
        let tickets: Vec<Ticket> = (0..6)
            .map(|slot| ticket(q.join(waiter(slot, Class::Normal))))
            .collect();
        assert!(q.leave(Class::Normal, tickets[2]));
        assert!(!q.leave(Class::Normal, tickets[2]), "only once");
        assert!(!q.leave(Class::High, tickets[3]), "not in that line");
        assert_eq!(q.len(), 5);
        assert_eq!(serve(&q, 2), [0, 1]);
        assert!(!q.leave(Class::Normal, tickets[0]), "served already");
        assert!(q.leave(Class::Normal, tickets[5]));
        assert_eq!(serve(&q, 10), [3, 4]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn many_leaving_from_the_middle_keep_the_line_small() {
        let q = queue(100_000);
        let tickets: Vec<Ticket> = (0..10_000)
            .map(|slot| ticket(q.join(waiter(slot, Class::Normal))))
            .collect();
        // Everyone but the first leaves, newest first (the worst order for a plain list).
        for &t in tickets[1..].iter().rev() {
            assert!(q.leave(Class::Normal, t));
        }
        assert_eq!(q.len(), 1);
        assert!(q.lock().by_class[Class::Normal as usize].slots.len() <= 1 + 64);
        // And oldest first.
        let tickets: Vec<Ticket> = (0..10_000)
            .map(|slot| ticket(q.join(waiter(slot, Class::Normal))))
            .collect();
        for &t in &tickets[..9_999] {
            assert!(q.leave(Class::Normal, t));
        }
        let line_len = q.lock().by_class[Class::Normal as usize].slots.len();
        assert!(line_len <= 2 * 2 + 64, "{line_len}");
        assert_eq!(serve(&q, 10), [0, 9_999]);
    }

    #[test]
    fn a_stop_at_the_head_stops_the_round() {
        let q = queue(10);
        ticket(q.join(waiter(0, Class::Normal)));
        ticket(q.join(waiter(1, Class::Normal)));
        // The head gets no slot: nobody behind it jumps ahead.
        let mut asked = Vec::new();
        let served = q.serve(
            |w| {
                asked.push(w.conn.slot);
                None::<()>
            },
            |_, ()| {},
        );
        assert_eq!((served, asked), (0, vec![0]));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn new_settings_apply_to_new_clients_and_keep_who_waits() {
        let q = queue(2);
        ticket(q.join(waiter(0, Class::Normal)));
        ticket(q.join(waiter(1, Class::Normal)));
        q.configure(QueueSettings {
            size: 1,
            timeout: Duration::from_millis(250),
        });
        assert_eq!(q.len(), 2);
        assert_eq!(q.join(waiter(2, Class::Normal)), Joined::Full);
        assert_eq!(q.settings().timeout, Duration::from_millis(250));
        assert_eq!(serve(&q, 10), [0, 1]);
    }
}
