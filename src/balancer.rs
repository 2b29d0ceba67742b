//! The backend set and least-active selection.
//!
//! Each [`Backend`] counts its active sessions (connecting ones included). [`Balancer::pick`]
//! chooses the lowest `active / weight`, compared by cross-multiplying so no division is done;
//! among equals it rotates by smooth weighted round-robin (as nginx's `least_conn` does), so
//! equal backends take turns and weighted ones share in proportion even at low load.
//!
//! The count is taken and released by one RAII [`Lease`]: whichever way a session ends, the
//! lease is dropped exactly once and the count goes back down.

use crate::logging::Throttle;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

/// One backend address and its live counters. Shared (`Rc`) between the balancer and the
/// leases of its sessions, so a backend removed from the set lives on while it drains.
#[derive(Debug)]
pub struct Backend {
    /// Stable for the life of the process; never reused.
    pub id: u32,
    pub addr: SocketAddr,
    /// What the user wrote (`host:port`), for logs.
    pub name: String,
    pub weight: u32,
    active: Cell<u32>,
    /// Smooth weighted round-robin state for breaking ties.
    current_weight: Cell<i64>,
    pub stats: BackendStats,
    /// Keeps a burst of connect failures down to one warning.
    pub warn_throttle: Throttle,
}

/// Counters per backend, bumped on the reactor thread.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub sessions: Cell<u64>,
    pub connect_failures: Cell<u64>,
    /// Bytes written to the backend.
    pub bytes_sent: Cell<u64>,
    /// Bytes read from the backend.
    pub bytes_received: Cell<u64>,
}

impl Backend {
    pub fn new(id: u32, addr: SocketAddr, name: String, weight: u32) -> Backend {
        Backend {
            id,
            addr,
            name,
            weight: weight.max(1),
            active: Cell::new(0),
            current_weight: Cell::new(0),
            stats: BackendStats::default(),
            warn_throttle: Throttle::default(),
        }
    }

    /// Sessions on this backend right now, connecting ones included.
    pub fn active(&self) -> u32 {
        self.active.get()
    }

    /// `self.active / self.weight < other.active / other.weight`, without dividing.
    fn less_loaded_than(&self, other: &Backend) -> bool {
        u64::from(self.active()) * u64::from(other.weight)
            < u64::from(other.active()) * u64::from(self.weight)
    }

    fn equally_loaded(&self, other: &Backend) -> bool {
        u64::from(self.active()) * u64::from(other.weight)
            == u64::from(other.active()) * u64::from(self.weight)
    }
}

impl std::fmt::Display for Backend {
    /// The address, followed by the name the user gave when that differs (`10.0.0.5:80
    /// (web.internal:80)`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.addr.to_string() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.addr, self.name)
        }
    }
}

/// One session's hold on a backend: counts it active until dropped.
#[derive(Debug)]
pub struct Lease {
    backend: Rc<Backend>,
}

impl Lease {
    fn new(backend: Rc<Backend>) -> Lease {
        backend.active.set(backend.active.get() + 1);
        Lease { backend }
    }

    pub fn backend(&self) -> &Rc<Backend> {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let active = &self.backend.active;
        active.set(active.get() - 1);
    }
}

/// The backend set.
#[derive(Debug, Default)]
pub struct Balancer {
    backends: Vec<Rc<Backend>>,
}

impl Balancer {
    pub fn new(backends: Vec<Backend>) -> Balancer {
        Balancer {
            backends: backends.into_iter().map(Rc::new).collect(),
        }
    }

    pub fn backends(&self) -> &[Rc<Backend>] {
        &self.backends
    }

    /// Leases the least active backend not in `tried`, or `None` if there is none.
    pub fn pick(&self, tried: &[u32]) -> Option<Lease> {
        let candidates = || self.backends.iter().filter(|b| !tried.contains(&b.id));
        least_active(candidates).map(|b| Lease::new(Rc::clone(b)))
    }
}

/// The lowest `active / weight` among `candidates`; ties broken by smooth weighted
/// round-robin. Two passes, no allocation.
fn least_active<'a, I>(candidates: impl Fn() -> I) -> Option<&'a Rc<Backend>>
where
    I: Iterator<Item = &'a Rc<Backend>>,
{
    let mut least = None::<&Rc<Backend>>;
    for b in candidates() {
        if least.is_none_or(|l| b.less_loaded_than(l)) {
            least = Some(b);
        }
    }
    let least = least?;
    let mut total = 0i64;
    let mut chosen = least;
    for b in candidates().filter(|b| b.equally_loaded(least)) {
        let w = i64::from(b.weight);
        b.current_weight.set(b.current_weight.get() + w);
        total += w;
        if b.current_weight.get() > chosen.current_weight.get() {
            chosen = b;
        }
    }
    chosen
        .current_weight
        .set(chosen.current_weight.get() - total);
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(weights: &[u32]) -> Balancer {
        Balancer::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                    Backend::new(i as u32, addr, addr.to_string(), w)
                })
                .collect(),
        )
    }

    fn pick_id(b: &Balancer, leases: &mut Vec<Lease>) -> u32 {
        let lease = b.pick(&[]).expect("a backend");
        let id = lease.backend().id;
        leases.push(lease);
        id
    }

    #[test]
    fn equal_backends_take_turns_at_low_load() {
        let b = balancer(&[1, 1, 1]);
        let mut seen = Vec::new();
        for _ in 0..9 {
            let lease = b.pick(&[]).expect("a backend");
            seen.push(lease.backend().id);
            // dropped at once: every pick sees all backends idle
        }
        assert_eq!(seen, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert!(b.backends().iter().all(|x| x.active() == 0));
    }

    #[test]
    fn least_active_wins() {
        let b = balancer(&[1, 1, 1]);
        let mut held = Vec::new();
        for _ in 0..9 {
            pick_id(&b, &mut held);
        }
        assert_eq!(
            b.backends().iter().map(|x| x.active()).collect::<Vec<_>>(),
            [3, 3, 3]
        );
        // Free two sessions on backend 1: the next two picks must go there.
        let mut freed = 0;
        held.retain(|l| {
            let keep = !(l.backend().id == 1 && freed < 2);
            if !keep {
                freed += 1;
            }
            keep
        });
        assert_eq!(pick_id(&b, &mut held), 1);
        assert_eq!(pick_id(&b, &mut held), 1);
    }

    #[test]
    fn weights_share_in_proportion_under_load_and_when_idle() {
        let b = balancer(&[1, 2, 3]);
        let mut held = Vec::new();
        for _ in 0..60 {
            pick_id(&b, &mut held);
        }
        assert_eq!(
            b.backends().iter().map(|x| x.active()).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        drop(held);
        let mut counts = [0; 3];
        for _ in 0..600 {
            let lease = b.pick(&[]).expect("a backend");
            counts[lease.backend().id as usize] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn tried_backends_are_skipped() {
        let b = balancer(&[1, 1, 1]);
        let lease = b.pick(&[0, 2]).expect("backend 1 is left");
        assert_eq!(lease.backend().id, 1);
        assert!(b.pick(&[0, 1, 2]).is_none());
    }

    #[test]
    fn lease_counts_exactly_once() {
        let b = balancer(&[1]);
        let l1 = b.pick(&[]).expect("a backend");
        let l2 = b.pick(&[]).expect("a backend");
        assert_eq!(b.backends()[0].active(), 2);
        drop(l1);
        assert_eq!(b.backends()[0].active(), 1);
        drop(l2);
        assert_eq!(b.backends()[0].active(), 0);
    }

    #[test]
    fn no_backends_no_pick() {
        assert!(Balancer::default().pick(&[]).is_none());
    }
}
