//! Builds each fleet generation from a resolved backend list, off the event loops, in
//! O(n): backends are found by address in a hash map, so a reload of 20,000 backends costs
//! milliseconds on the discovery thread and an `Arc` swap on each worker.
//!
//! Backends already in the set keep their `Arc` (counters, health, sessions) and take the
//! new weight and backup flag; new ones are created; missing ones are marked removed and
//! drain (a later generation that lists them again revives them). Duplicate addresses are
//! taken once.

use crate::clock;
use crate::fleet::backend::{Backend, ResolvedBackend};
use crate::fleet::queue::{Queue, QueueSettings};
use crate::fleet::select::{self, Balance};
use crate::fleet::{Fleet, Policy, PoolId, PoolStats, assemble};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// Per-backend changes named one by one in the log before they are only counted.
pub const NAMED_CHANGES: usize = 5;

/// What a build changed, for the log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
    /// The first few changes, described (`added 10.0.0.5:80 (weight 2)`).
    pub named: Vec<String>,
}

impl Changes {
    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.named.len() < NAMED_CHANGES {
            self.named.push(what());
        }
    }

    /// `3 added, 1 removed, 0 changed`.
    pub fn counts(&self) -> String {
        format!(
            "{} added, {} removed, {} changed",
            self.added, self.removed, self.updated
        )
    }

    /// The lines to log one by one: the first few changes, then how many more there were.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.named.iter().map(|l| format!("backend {l}")).collect();
        let total = self.added + self.removed + self.updated;
        if total > self.named.len() {
            lines.push(format!(
                "and {} more backend changes",
                total - self.named.len()
            ));
        }
        lines
    }
}

/// Keeps the current set between builds.
#[derive(Debug)]
pub struct Builder {
    current: HashMap<SocketAddr, Arc<Backend>>,
    /// Removed backends with sessions left, by address (revived if listed again).
    draining: HashMap<SocketAddr, Arc<Backend>>,
    next_id: u64,
    generation: u32,
    pool: PoolId,
    name: Arc<str>,
    stats: Arc<PoolStats>,
    /// Its wait queue (who waits outlives a generation).
    queue: Arc<Queue>,
    policy: Policy,
    balance: Balance,
}

impl Builder {
    /// A builder of a pool called `default` (id 0).
    pub fn new(policy: Policy, balance: Balance) -> Builder {
        Builder::for_pool(0, Arc::from(crate::config::DEFAULT_NAME), policy, balance)
    }

    /// A builder of pool `pool`, called `name`. Backend ids are unique across pools: the
    /// pool's id is in their upper bits.
    pub fn for_pool(pool: PoolId, name: Arc<str>, policy: Policy, balance: Balance) -> Builder {
        Builder {
            current: HashMap::new(),
            draining: HashMap::new(),
            next_id: u64::from(pool) << 40,
            generation: 0,
            pool,
            name,
            stats: Arc::default(),
            queue: Arc::default(),
            policy,
            balance,
        }
    }

    /// The pool's queue settings: in effect at once (the queue is every generation's).
    pub fn set_queue(&mut self, settings: QueueSettings) {
        self.queue.configure(settings);
    }

    /// The pool's settings changed: the next generation is built with these.
    pub fn set_policy(&mut self, policy: Policy, balance: Balance) {
        self.policy = policy;
        self.balance = balance;
    }

    pub fn pool(&self) -> PoolId {
        self.pool
    }

    /// Whether `wanted` suits `balance` (see [`select::check_fleet`]): `Err(why)` when some
    /// backend would never be chosen, `Ok(Some(warning))` when the spread is uneven.
    pub fn check(balance: Balance, wanted: &[ResolvedBackend]) -> Result<Option<String>, String> {
        let mut seen = HashSet::with_capacity(wanted.len());
        let (mut primaries, mut backups) = (0, 0);
        for spec in wanted.iter().filter(|s| seen.insert(s.addr)) {
            if spec.backup {
                backups += 1;
            } else {
                primaries += 1;
            }
        }
        select::check_fleet(balance, primaries, backups)
    }

    /// The next generation: exactly `wanted` (in order, duplicates taken once).
    pub fn build(&mut self, wanted: &[ResolvedBackend]) -> (Arc<Fleet>, Changes) {
        let now = clock::now_millis();
        let mut changes = Changes::default();
        let mut next: HashMap<SocketAddr, Arc<Backend>> = HashMap::with_capacity(wanted.len());
        let (mut primaries, mut backups) = (Vec::new(), Vec::new());
        let mut rejoined = Vec::new();
        for spec in wanted {
            if next.contains_key(&spec.addr) {
                continue;
            }
            let backend = if let Some(b) = self.current.remove(&spec.addr) {
                if b.options_differ(spec) {
                    changes.updated += 1;
                    changes.note(|| format!("{b} now weight {}{}", spec.weight, notes(spec)));
                    b.set_options(spec);
                }
                b
            } else if let Some(b) = self.draining.remove(&spec.addr) {
                b.set_removed(false);
                b.set_options(spec);
                changes.added += 1;
                changes.note(|| format!("{b} back in the set"));
                rejoined.push(Arc::clone(&b));
                b
            } else {
                let b = Arc::new(Backend::in_pool(self.next_id, self.pool, spec));
                self.next_id += 1;
                changes.added += 1;
                changes.note(|| format!("added {b} (weight {}{})", spec.weight, notes(spec)));
                rejoined.push(Arc::clone(&b));
                b
            };
            if backend.is_backup() {
                backups.push(Arc::clone(&backend));
            } else {
                primaries.push(Arc::clone(&backend));
            }
            next.insert(spec.addr, backend);
        }
        for (addr, gone) in std::mem::replace(&mut self.current, next) {
            gone.set_removed(true);
            changes.removed += 1;
            changes.note(|| format!("removed {gone} ({} sessions left to drain)", gone.active()));
            self.draining.insert(addr, gone);
        }
        self.draining.retain(|_, b| b.active() > 0);
        self.generation = self.generation.wrapping_add(1);
        let fleet = assemble(
            (
                self.pool,
                Arc::clone(&self.name),
                self.generation,
                Arc::clone(&self.stats),
                Arc::clone(&self.queue),
            ),
            primaries,
            backups,
            self.draining.values().cloned().collect(),
            self.policy.clone(),
            self.balance,
            now,
        );
        if self.generation > 1 {
            for b in &rejoined {
                b.came_up(now);
                fleet.rejoin(b, now);
            }
            fleet.refresh_all(now);
        }
        (Arc::new(fleet), changes)
    }
}

/// `, backup, send-proxy-v2`: the options besides the weight, for the log.
fn notes(spec: &ResolvedBackend) -> String {
    let mut notes = String::new();
    if spec.backup {
        notes.push_str(", backup");
    }
    if let Some(version) = spec.send_proxy {
        notes.push_str(", ");
        notes.push_str(version.option());
    }
    notes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::health::BreakerPolicy;
    use crate::fleet::select::PickRequest;
    use std::time::Duration;

    pub(crate) const POLICY: Policy = Policy {
        breaker: BreakerPolicy {
            max_fails: 2,
            fail_timeout: Duration::from_secs(10),
        },
        checks: None,
        runtime: crate::fleet::RuntimePolicy::DEFAULT,
    };

    /// `127.0.0.1:port` with these options (also the fleet tests' fixture).
    pub(crate) fn spec(port: u16, weight: u32, backup: bool) -> ResolvedBackend {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        ResolvedBackend {
            addr,
            name: addr.to_string(),
            weight,
            backup,
            send_proxy: None,
            agent_port: None,
            maxconn: None,
        }
    }

    fn pick_port(fleet: &Fleet) -> u16 {
        let lease = fleet
            .pick(&PickRequest {
                client: None,
                now: 0,
                tried: &[],
            })
            .expect("a backend");
        lease.backend().addr.port()
    }

    #[test]
    fn a_rebuild_keeps_backends_and_drains_the_removed() {
        let mut builder = Builder::new(POLICY, Balance::LeastActive);
        let (first, changes) = builder.build(&[spec(1, 1, false), spec(2, 1, false)]);
        assert_eq!((changes.added, changes.removed, changes.updated), (2, 0, 0));
        let held = first
            .pick(&PickRequest {
                client: None,
                now: 0,
                tried: &[],
            })
            .expect("a backend");
        assert_eq!(held.backend().addr.port(), 1);
        let kept = Arc::clone(first.backends().nth(1).expect("port 2"));
        crate::fleet::backend::BackendStats::add(&kept.stats.bytes_sent, 7);

        let (second, changes) =
            builder.build(&[spec(2, 3, false), spec(3, 1, false), spec(3, 1, false)]);
        assert_eq!((changes.added, changes.removed, changes.updated), (1, 1, 1));
        let ports: Vec<u16> = second.backends().map(|b| b.addr.port()).collect();
        assert_eq!(ports, [2, 3]);
        let again = second.backends().next().expect("port 2");
        assert!(
            Arc::ptr_eq(again, &kept),
            "the same backend, counters and all"
        );
        assert_eq!(again.weight(), 3);
        assert!(held.backend().is_removed());
        assert_eq!(second.draining().count(), 1);
        for _ in 0..10 {
            assert_ne!(pick_port(&second), 1, "a removed backend gets no session");
        }
        let removed = Arc::clone(held.backend());
        drop(held);
        assert_eq!(second.draining().count(), 0);

        // Listed again while still known: revived, the same backend.
        let (third, changes) = builder.build(&[spec(1, 1, false)]);
        assert_eq!((changes.added, changes.removed), (1, 2));
        let revived = third.backends().next().expect("port 1");
        assert!(Arc::ptr_eq(revived, &removed));
        assert!(!revived.is_removed());
    }

    #[test]
    fn past_a_few_changes_the_summary_counts_them() {
        let mut builder = Builder::new(POLICY, Balance::LeastActive);
        let specs: Vec<_> = (1..=1000).map(|p| spec(p, 1, false)).collect();
        let (_, changes) = builder.build(&specs);
        assert_eq!(changes.added, 1000);
        assert_eq!(changes.named.len(), NAMED_CHANGES);
        assert_eq!(changes.counts(), "1000 added, 0 removed, 0 changed");
        let lines = changes.lines();
        assert_eq!(lines.len(), NAMED_CHANGES + 1);
        assert_eq!(lines[0], "backend added 127.0.0.1:1 (weight 1)");
        assert_eq!(lines[NAMED_CHANGES], "and 995 more backend changes");
    }

    #[test]
    fn building_a_large_set_is_linear() {
        // 50,000 backends, twice (the second a no-op reload): quick even in a debug build.
        let mut builder = Builder::new(POLICY, Balance::LeastActive);
        let specs: Vec<_> = (0..50_000u32)
            .map(|i| ResolvedBackend {
                addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80)),
                name: String::new(),
                weight: 1,
                backup: false,
                send_proxy: None,
                agent_port: None,
                maxconn: None,
            })
            .collect();
        let started = std::time::Instant::now();
        let (fleet, _) = builder.build(&specs);
        let (again, changes) = builder.build(&specs);
        assert_eq!(fleet.len(), 50_000);
        assert_eq!(again.len(), 50_000);
        assert_eq!((changes.added, changes.removed, changes.updated), (0, 0, 0));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
