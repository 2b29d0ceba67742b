//! Least active sessions per unit of weight, shared by every worker, in O(1) per pick.
//!
//! A tournament tree over a group's backends: every internal node holds the index of the
//! best backend in its subtree, so the root names the backend to pick. "Best" is a [`Key`]:
//! for least-active ([`ByLoad`]) it compares `active / share` (cross-multiplied, no
//! division; the share is the weight, less while the backend is on its slow-start ramp); a
//! tie goes to the backend with the fewest sessions ever given per unit of weight
//! (`picks / weight`), so equal backends take turns and weighted ones share in proportion
//! even when no session is held; a tie in that too goes to the lower index.
//! (Least-latency, `least_latency.rs`, is the same tree with another key.) A backend that
//! does not take sessions now (down, its trial under way, draining) never wins.
//!
//! A change to one backend (a session taken or released, a state change) replays the
//! matches on its path to the root: O(log n) atomic loads and compare-and-swaps, no lock.
//! Every node carries a version bumped by each write, so two workers replaying overlapping
//! paths at once cannot leave a stale winner behind: a replay computed from children that
//! changed underneath fails its compare-and-swap and is computed again.
//!
//! Nodes store winners, not keys: keys are read live from the backends' counters. A pick
//! descends from the root, skipping (with their whole path re-checked below them) winners
//! the caller has already tried for this client or that stopped taking sessions since the
//! tree last heard of them: O(log n) per skipped backend.

use crate::fleet::backend::Backend;
use crate::fleet::select::{PickRequest, Selector};
use std::cmp::Ordering as CmpOrdering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// No backend in the subtree takes sessions.
const NONE: u32 = u32::MAX;

/// How two backends compare: `Less` when `a` should get the next session before `b`.
pub trait Key: Send + Sync + std::fmt::Debug {
    /// `Less` if `a` is the better pick at `now`.
    fn compare(&self, a: &Backend, b: &Backend, now: u64) -> CmpOrdering;
}

/// Least `active / share` first, then least `picks / weight`.
#[derive(Debug, Default)]
pub struct ByLoad;

impl Key for ByLoad {
    fn compare(&self, a: &Backend, b: &Backend, now: u64) -> CmpOrdering {
        compare(a, b, now)
    }
}

/// A tournament tree over a group, by `K`.
#[derive(Debug)]
pub struct Tree<K> {
    /// Leaves in the tree: a power of two, at least the group's size.
    leaves: usize,
    /// `nodes[1]` is the root; node `k` has children `2k` and `2k + 1`; `leaves..2*leaves`
    /// would be the leaves, which are implicit (leaf `i` is backend `i`). Each word is
    /// `version << 32 | winner`.
    nodes: Box<[AtomicU64]>,
    key: K,
}

/// Least active sessions per unit of weight.
pub type LeastActive = Tree<ByLoad>;

impl LeastActive {
    /// A tree over `members`, built from their state at `now`.
    pub fn new(members: &[Arc<Backend>], now: u64) -> LeastActive {
        Tree::with_key(members, now, ByLoad)
    }
}

impl<K: Key> Tree<K> {
    /// A tree over `members` by `key`, built from their state at `now`.
    pub fn with_key(members: &[Arc<Backend>], now: u64, key: K) -> Tree<K> {
        let leaves = members.len().max(1).next_power_of_two();
        let nodes = (0..leaves)
            .map(|_| AtomicU64::new(u64::from(NONE)))
            .collect();
        let tree = Tree { leaves, nodes, key };
        tree.rebuild(members, now);
        tree
    }

    /// The key it compares by.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Recomputes every node bottom-up (at build, and to catch up after a reload).
    pub(super) fn rebuild(&self, members: &[Arc<Backend>], now: u64) {
        for i in 0..members.len() {
            self.replay(members, i, now);
        }
    }

    fn winner_of(&self, node: usize, members: &[Arc<Backend>], now: u64) -> u32 {
        if node >= self.leaves {
            let i = node - self.leaves;
            match members.get(i) {
                Some(b) if b.state(now).takes_sessions() && b.has_room() => i as u32,
                _ => NONE,
            }
        } else {
            (self.nodes[node].load(Ordering::Acquire) & 0xffff_ffff) as u32
        }
    }

    /// Replays the matches from leaf `index` up to the root (node 1; with a single leaf,
    /// node 1 is that leaf and there is nothing to replay).
    pub(super) fn replay(&self, members: &[Arc<Backend>], index: usize, now: u64) {
        let mut node = (index + self.leaves) / 2;
        while node >= 1 {
            loop {
                let old = self.nodes[node].load(Ordering::Acquire);
                let left = self.winner_of(2 * node, members, now);
                let right = self.winner_of(2 * node + 1, members, now);
                let winner = self.better(members, left, right, now);
                let new = (old >> 32).wrapping_add(1) << 32 | u64::from(winner);
                if self.nodes[node]
                    .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Ancestors compare this node's winner: if it is the same backend and
                    // not the one that changed, nothing above depends on the change.
                    if winner == (old & 0xffff_ffff) as u32 && winner != index as u32 {
                        return;
                    }
                    break;
                }
            }
            node /= 2;
        }
    }

    /// The best backend below `node` that takes sessions now and is not in `tried`.
    fn best_below(
        &self,
        node: usize,
        members: &[Arc<Backend>],
        request: &PickRequest,
        stale: &mut Stale,
    ) -> u32 {
        let winner = self.winner_of(node, members, request.now);
        if winner == NONE {
            return NONE;
        }
        let b = &members[winner as usize];
        let usable = !request.tried.contains(&b.id);
        if usable && b.state(request.now).takes_sessions() && b.has_room() {
            return winner;
        }
        if usable {
            stale.note(winner);
        }
        if node >= self.leaves {
            return NONE;
        }
        let left = self.best_below(2 * node, members, request, stale);
        let right = self.best_below(2 * node + 1, members, request, stale);
        self.better(members, left, right, request.now)
    }

    /// The better of two candidates (either may be `NONE`) at `now`.
    fn better(&self, members: &[Arc<Backend>], a: u32, b: u32, now: u64) -> u32 {
        match (a, b) {
            (NONE, x) | (x, NONE) => x,
            (a, b) => match self
                .key
                .compare(&members[a as usize], &members[b as usize], now)
            {
                CmpOrdering::Greater => b,
                CmpOrdering::Equal if b < a => b,
                _ => a,
            },
        }
    }

    /// The pick itself (see [`Selector::pick`]).
    pub fn pick_best(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize> {
        let mut stale = Stale {
            found: [NONE; 4],
            len: 0,
        };
        let chosen = self.best_below(1, members, request, &mut stale);
        for &index in &stale.found[..stale.len] {
            self.replay(members, index as usize, request.now);
        }
        (chosen != NONE).then_some(chosen as usize)
    }
}

/// Winners found no longer taking sessions during a pick: replayed after it.
struct Stale {
    found: [u32; 4],
    len: usize,
}

impl Stale {
    fn note(&mut self, index: u32) {
        if self.len < self.found.len() && !self.found[..self.len].contains(&index) {
            self.found[self.len] = index;
            self.len += 1;
        }
    }
}

/// Least `active / share` first, then least `picks / weight`.
pub fn compare(a: &Backend, b: &Backend, now: u64) -> CmpOrdering {
    let ((wa, sa), (wb, sb)) = (a.weight_and_share(now), b.weight_and_share(now));
    // Sessions (u32) times a share (at most 256 × SHARE_UNIT): no overflow in u64.
    (u64::from(a.active()) * sb)
        .cmp(&(u64::from(b.active()) * sa))
        .then_with(|| {
            (u128::from(a.picks()) * u128::from(wb)).cmp(&(u128::from(b.picks()) * u128::from(wa)))
        })
}

impl Selector for LeastActive {
    fn name(&self) -> &'static str {
        "least-active"
    }

    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize> {
        self.pick_best(members, request)
    }

    fn refresh(&self, members: &[Arc<Backend>], index: usize, now: u64) {
        self.replay(members, index, now);
    }

    fn refresh_all(&self, members: &[Arc<Backend>], now: u64) {
        self.rebuild(members, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::health::BreakerPolicy;
    use std::time::Duration;

    use crate::fleet::select::testing::members;

    fn request(tried: &[u64]) -> PickRequest<'_> {
        PickRequest {
            client: None,
            now: 0,
            tried,
        }
    }

    /// Picks and holds a session, as the fleet does.
    fn take(tree: &LeastActive, m: &[Arc<Backend>]) -> usize {
        let i = tree.pick(m, &request(&[])).expect("a backend");
        m[i].acquire();
        tree.refresh(m, i, 0);
        i
    }

    fn give_back(tree: &LeastActive, m: &[Arc<Backend>], i: usize) {
        m[i].release();
        tree.refresh(m, i, 0);
    }

    /// What an O(n) scan would pick: least load, then least picks per weight, then index.
    fn brute_force(m: &[Arc<Backend>]) -> Option<usize> {
        (0..m.len())
            .filter(|&i| m[i].state(0).takes_sessions())
            .min_by(|&a, &b| compare(&m[a], &m[b], 0).then(a.cmp(&b)))
    }

    #[test]
    fn equal_backends_take_turns_when_idle() {
        let m = members(&[1, 1, 1]);
        let tree = LeastActive::new(&m, 0);
        let seen: Vec<usize> = (0..9)
            .map(|_| {
                let i = take(&tree, &m);
                give_back(&tree, &m, i);
                i
            })
            .collect();
        assert_eq!(seen, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_least_active_wins() {
        let m = members(&[1, 1, 1]);
        let tree = LeastActive::new(&m, 0);
        let held: Vec<usize> = (0..9).map(|_| take(&tree, &m)).collect();
        assert_eq!(m.iter().map(|b| b.active()).collect::<Vec<_>>(), [3, 3, 3]);
        // Two sessions on backend 1 end: the next two go there.
        let ones: Vec<usize> = held.iter().copied().filter(|&i| i == 1).take(2).collect();
        for i in ones {
            give_back(&tree, &m, i);
        }
        assert_eq!(take(&tree, &m), 1);
        assert_eq!(take(&tree, &m), 1);
    }

    #[test]
    fn weights_share_in_proportion_under_load_and_when_idle() {
        let m = members(&[1, 2, 3]);
        let tree = LeastActive::new(&m, 0);
        let held: Vec<usize> = (0..60).map(|_| take(&tree, &m)).collect();
        assert_eq!(
            m.iter().map(|b| b.active()).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        for i in held {
            give_back(&tree, &m, i);
        }
        let mut counts = [0; 3];
        for _ in 0..600 {
            let i = take(&tree, &m);
            counts[i] += 1;
            give_back(&tree, &m, i);
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn tried_backends_are_skipped() {
        let m = members(&[1, 1, 1]);
        let tree = LeastActive::new(&m, 0);
        assert_eq!(tree.pick(&m, &request(&[0, 2])), Some(1));
        assert_eq!(tree.pick(&m, &request(&[0, 1, 2])), None);
        assert_eq!(tree.pick(&m, &request(&[0])), Some(1));
    }

    #[test]
    fn a_backend_that_stops_taking_sessions_is_passed_over() {
        let policy = BreakerPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        };
        let m = members(&[1, 1]);
        let tree = LeastActive::new(&m, 0);
        // Backend 0's breaker opens behind the tree's back: the pick still avoids it...
        m[0].shared_breaker()
            .update(|b| b.on_failure(0, policy, false));
        for _ in 0..3 {
            assert_eq!(tree.pick(&m, &request(&[])), Some(1));
        }
        // ...and none is left when backend 1 goes too.
        m[1].shared_breaker()
            .update(|b| b.on_failure(0, policy, false));
        assert_eq!(tree.pick(&m, &request(&[])), None);
        // After the cool-down (and the refresh the worker's timer makes) 0 is back.
        tree.refresh(&m, 0, 10_000);
        let late = PickRequest {
            client: None,
            now: 10_000,
            tried: &[],
        };
        assert_eq!(tree.pick(&m, &late), Some(0));
    }

    #[test]
    fn a_pick_among_1024_backends_is_the_true_minimum() {
        let weights: Vec<u32> = (0..1024u32).map(|i| 1 + (i * 7919) % 5).collect();
        let m = members(&weights);
        let tree = LeastActive::new(&m, 0);
        let mut held = Vec::new();
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 && !held.is_empty() {
                let i = held.swap_remove((x as usize / 3) % held.len());
                give_back(&tree, &m, i);
            } else {
                assert_eq!(tree.pick(&m, &request(&[])), brute_force(&m));
                held.push(take(&tree, &m));
            }
        }
    }

    #[test]
    fn concurrent_workers_leave_an_exact_tree_and_exact_counts() {
        let m = members(&[1, 2, 1, 3, 1, 1, 2, 1]);
        let tree = LeastActive::new(&m, 0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (tree, m) = (&tree, &m);
                s.spawn(move || {
                    let mut held = Vec::new();
                    let mut x = 0x9E37_79B9 ^ t;
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if x % 2 == 0 && !held.is_empty() {
                            let i = held.swap_remove((x as usize) % held.len());
                            give_back(tree, m, i);
                        } else {
                            held.push(take(tree, m));
                        }
                    }
                    for i in held {
                        give_back(tree, m, i);
                    }
                });
            }
        });
        assert!(
            m.iter().all(|b| b.active() == 0),
            "every lease counted once"
        );
        // Quiet again: the root is exactly what a scan would pick.
        assert_eq!(tree.pick(&m, &request(&[])), brute_force(&m));
    }

    fn assert_consistent(tree: &LeastActive, m: &[Arc<Backend>]) {
        for node in 1..tree.leaves {
            let stored = (tree.nodes[node].load(Ordering::Acquire) & 0xffff_ffff) as u32;
            let l = tree.winner_of(2 * node, m, 0);
            let r = tree.winner_of(2 * node + 1, m, 0);
            assert_eq!(
                stored,
                tree.better(m, l, r, 0),
                "node {node} of {}",
                tree.leaves
            );
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn rebuild_after_missed_replays_is_exact() {
        let mut rng = Rng(0xdead_beef);
        for _ in 0..3000 {
            let n = 1 + (rng.next() % 40) as usize;
            let weights: Vec<u32> = (0..n).map(|_| 1 + (rng.next() % 4) as u32).collect();
            let m = members(&weights);
            let tree = LeastActive::new(&m, 0);
            // Loads change behind the tree's back (replays dropped on an old generation).
            for _ in 0..(rng.next() % 60) {
                let i = (rng.next() as usize) % n;
                if rng.next() % 3 == 0 && m[i].active() > 0 {
                    m[i].release();
                } else {
                    m[i].acquire();
                }
            }
            tree.rebuild(&m, 0);
            assert_consistent(&tree, &m);
        }
    }

    #[test]
    fn concurrent_replays_and_rebuilds_leave_every_node_exact() {
        for round in 0..20u64 {
            let m = members(&[1, 2, 1, 3, 1]);
            let tree = LeastActive::new(&m, 0);
            std::thread::scope(|s| {
                for t in 0..3u64 {
                    let (tree, m) = (&tree, &m);
                    s.spawn(move || {
                        let mut rng = Rng(0x9E37_79B9 ^ (t + 1) ^ (round << 8));
                        let mut held = Vec::new();
                        for _ in 0..20_000 {
                            if rng.next() % 2 == 0 && !held.is_empty() {
                                let k = (rng.next() as usize) % held.len();
                                let i: usize = held.swap_remove(k);
                                m[i].release();
                                tree.refresh(m, i, 0);
                            } else {
                                let i = tree
                                    .pick(
                                        m,
                                        &PickRequest {
                                            client: None,
                                            now: 0,
                                            tried: &[],
                                        },
                                    )
                                    .expect("one");
                                m[i].acquire();
                                tree.refresh(m, i, 0);
                                held.push(i);
                            }
                        }
                        // Leave some held, so the final loads differ.
                        for i in held.drain(..held.len() / 2) {
                            m[i].release();
                            tree.refresh(m, i, 0);
                        }
                    });
                }
                let (tree, m) = (&tree, &m);
                s.spawn(move || {
                    for _ in 0..2000 {
                        tree.refresh_all(m, 0);
                    }
                });
            });
            assert_consistent(&tree, &m);
        }
    }
}
