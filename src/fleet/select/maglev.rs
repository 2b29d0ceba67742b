//! `source-hash`: Maglev consistent hashing of the client's IP address (Eisenbud et al.,
//! "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016), with optional
//! bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded
//! Loads", SODA 2018; HAProxy's `hash-balance-factor`).
//!
//! **The table.** `M` slots (`--hash-table-size`, a prime), each naming a backend. Every
//! backend has its own permutation of the slots, `(offset + j × skip) mod M`, with
//! `offset` and `skip` hashed from its address; backends take turns claiming their next
//! preferred free slot until the table is full, a backend of weight `w` taking `w` turns
//! for every `max weight` turns of the heaviest. The backends take their turns in address
//! order, so the table is a function of the backends' addresses and weights and of `M`
//! only: two processes given the same backends build the same table, whatever the order
//! they were listed or found in, and neither needs the other. Removing a backend frees
//! its slots and disturbs few others (the paper measures about 1% of slots beyond the
//! removed one's for `M` ≈ 100 × backends); adding it back builds the earlier table again.
//!
//! **A pick.** The client's address (an IPv4-mapped IPv6 address counts as the IPv4 one)
//! hashes to a slot `h` and a step `s`; the client's preference order is the backends of
//! slots `h, h + s, h + 2s, …` (mod `M`). Its backend is the first in that order that
//! takes sessions and was not tried for it: while its own backend is down, breaker-open
//! or draining, it goes to the next in *its* order (clients of other backends stay where
//! they are), and it comes back when its backend is up again. After [`PROBES`] slots (so
//! only when most backends are down) every member is looked at from the last one on.
//!
//! **Bounded loads** (`--hash-balance-factor F`). A backend also has to have room: it is
//! passed over while `active ≥ ⌈F × (A + 1) / W⌉ × weight`, where `A` is the sessions on
//! the group's backends that take sessions and `W` their total weight (so the new session
//! counted, no backend holds more than ⌈F × the mean per unit of weight⌉ of it). Some
//! backend always has room; if none in the probes does, every member is looked at for one
//! that has; if none has (the totals lag a little behind concurrent picks), the first one
//! probed that takes sessions is used. The totals are kept by
//! [`Selector::refresh`], which the fleet calls on every change of a member's load or
//! state, from what it last saw of each member: O(1) per change, no scan.

use crate::fleet::backend::Backend;
use crate::fleet::select::{HashSettings, PickRequest, Selector, first_allowed};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots of the client's preference order a pick looks at before scanning every member.
pub const PROBES: usize = 64;

/// Marks a slot no backend has claimed yet (only while the table is built).
const FREE: u32 = u32::MAX;

/// Seeds of the three hashes: a backend's offset, its skip, and a client.
const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032;
const SEED_CLIENT: u64 = 0x6d61_676c_6576_3033;

#[derive(Debug)]
pub struct Maglev {
    /// Member index per slot; empty for an empty group.
    table: Box<[u32]>,
    bound: Option<Bound>,
}

/// What bounded loads need: the group's totals, and what was last counted of each member.
#[derive(Debug)]
struct Bound {
    /// F in hundredths.
    factor: u64,
    /// Sessions on members that take sessions (as last seen).
    active: AtomicU64,
    /// Total weight of the members that take sessions (as last seen).
    weight: AtomicU64,
    /// Per member, `active << 32 | weight`, both 0 while it does not take sessions.
    seen: Box<[AtomicU64]>,
}

impl Maglev {
    /// The table over `members` (slots name indexes into `members`).
    pub fn new(members: &[Arc<Backend>], settings: HashSettings, now: u64) -> Maglev {
        let entries: Vec<(SocketAddr, u32)> =
            members.iter().map(|b| (b.addr, b.weight())).collect();
        let table = build_table(&entries, settings.table_size);
        let bound = settings.balance_factor.map(|factor| Bound {
            factor: u64::from(factor),
            active: AtomicU64::new(0),
            weight: AtomicU64::new(0),
            seen: (0..members.len()).map(|_| AtomicU64::new(0)).collect(),
        });
        let maglev = Maglev { table, bound };
        maglev.refresh_all(members, now);
        maglev
    }

    /// The backend (member index) of each slot.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Whether `b` has room for one more session under the bound.
    fn has_room(bound: &Bound, b: &Backend) -> bool {
        let active = bound.active.load(Ordering::Relaxed);
        let weight = bound.weight.load(Ordering::Relaxed).max(1);
        // ⌈F × (A + 1) / W⌉ with F in hundredths.
        let per_weight = (bound.factor * (active + 1)).div_ceil(100 * weight);
        u64::from(b.active()) < per_weight * u64::from(b.weight())
    }
}

impl Selector for Maglev {
    fn name(&self) -> &'static str {
        "source-hash"
    }

    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        let key = client_key(request.client);
        let (mut slot, step) = (key % m, (key >> 32) % (m - 1).max(1) + 1);
        let mut overloaded = None;
        for _ in 0..PROBES {
            let i = self.table[slot as usize] as usize;
            let b = &members[i];
            if request.allows(b) {
                match &self.bound {
                    Some(bound) if !Maglev::has_room(bound, b) => {
                        overloaded.get_or_insert(i);
                    }
                    _ => return Some(i),
                }
            }
            slot = (slot + step) % m;
        }
        let last = self.table[slot as usize] as usize;
        if let (Some(bound), Some(_)) = (&self.bound, overloaded) {
            // Every probed backend is full, yet some backend has room. The probes alone may
            // never find it: neighbouring slots of a client's order repeat the same few
            // backends in runs (with four backends, 64 probes miss one for about one client
            // in 150). Look at every member, from the last one probed on: O(n), but only
            // when the client's own backends are all at the bound.
            let n = members.len();
            let with_room = (1..=n)
                .map(|k| (last + k) % n)
                .find(|&i| request.allows(&members[i]) && Maglev::has_room(bound, &members[i]));
            if with_room.is_some() {
                return with_room;
            }
        }
        overloaded.or_else(|| first_allowed(members, last, request))
    }

    fn refresh(&self, members: &[Arc<Backend>], index: usize, now: u64) {
        let Some(bound) = &self.bound else {
            return;
        };
        let (Some(b), Some(seen)) = (members.get(index), bound.seen.get(index)) else {
            return;
        };
        let now_seen = if b.state(now).takes_sessions() {
            u64::from(b.active()) << 32 | u64::from(b.weight())
        } else {
            0
        };
        let before = seen.swap(now_seen, Ordering::AcqRel);
        // Wrapping additions of the differences: the totals stay exact sums of `seen`.
        let delta = |word: u64, shift: u32| (word >> shift) & 0xffff_ffff;
        bound.active.fetch_add(
            delta(now_seen, 32).wrapping_sub(delta(before, 32)),
            Ordering::AcqRel,
        );
        bound.weight.fetch_add(
            delta(now_seen, 0).wrapping_sub(delta(before, 0)),
            Ordering::AcqRel,
        );
    }

    fn refresh_all(&self, members: &[Arc<Backend>], now: u64) {
        if self.bound.is_some() {
            for i in 0..members.len() {
                self.refresh(members, i, now);
            }
        }
    }
}

/// The Maglev table of `size` slots over `backends` (address, weight), naming each
/// backend by its index in `backends`. Independent of the order of `backends`.
pub fn build_table(backends: &[(SocketAddr, u32)], size: u32) -> Box<[u32]> {
    if backends.is_empty() || size == 0 {
        return Box::new([]);
    }
    let m = u64::from(size);
    struct Turns {
        index: u32,
        offset: u64,
        skip: u64,
        /// Position in its permutation of the next slot to try.
        next: u64,
        weight: u64,
        /// Turns are taken while `round × weight ≥ due`; each turn adds `max weight`.
        due: u64,
    }
    let max_weight = backends
        .iter()
        .map(|&(_, w)| u64::from(w.max(1)))
        .max()
        .unwrap_or(1);
    let mut turns: Vec<Turns> = backends
        .iter()
        .enumerate()
        .map(|(index, &(addr, weight))| {
            let key = addr_bytes(addr);
            Turns {
                index: index as u32,
                offset: hash(SEED_OFFSET, &key.0[..key.1]) % m,
                skip: hash(SEED_SKIP, &key.0[..key.1]) % (m - 1).max(1) + 1,
                next: 0,
                weight: u64::from(weight.max(1)),
                due: max_weight,
            }
        })
        .collect();
    // Address order: the table must not depend on the order the backends came in.
    turns.sort_by_key(|t| backends[t.index as usize].0);
    turns.dedup_by_key(|t| backends[t.index as usize].0);
    let mut table = vec![FREE; size as usize];
    let mut filled = 0;
    let mut round = 1u64;
    while filled < size {
        for t in turns.iter_mut() {
            if round * t.weight < t.due {
                continue;
            }
            t.due += max_weight;
            loop {
                let slot = ((t.offset + t.next * t.skip) % m) as usize;
                t.next += 1;
                if table[slot] == FREE {
                    table[slot] = t.index;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break;
            }
        }
        round += 1;
    }
    table.into_boxed_slice()
}

/// A backend address as bytes: the IP's octets, then the port (big-endian).
fn addr_bytes(addr: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let len = match addr.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
    (out, len + 2)
}

/// The hash of a client's address (the same for an IPv4 address and its IPv4-mapped IPv6
/// form); a fixed value without one.
pub fn client_key(client: Option<IpAddr>) -> u64 {
    match client.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(ip)) => hash(SEED_CLIENT, &ip.octets()),
        Some(IpAddr::V6(ip)) => hash(SEED_CLIENT, &ip.octets()),
        None => hash(SEED_CLIENT, &[]),
    }
}

/// A stable 64-bit hash: FNV-1a over the bytes from a seeded start, then MurmurHash3's
/// finalizer so every input bit reaches every output bit. Fixed here, never a library's
/// (whose output may change between versions): the tables of every tcplb process and
/// every version must agree.
pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

pub use crate::config::policy::is_prime;

/// Slots per backend the Maglev paper asks for (M ≥ 100 × N): then backends' shares of
/// the slots differ by at most 1%, and a change of backends moves few clients it need not.
pub const SLOTS_PER_BACKEND: u64 = 100;

/// Whether a table of `size` slots suits a group of `backends` (named `group` in the
/// messages: "backends", "backup backends"). Refused (`Err`) with fewer slots than
/// backends: some backend would have no slot and never get a client. A warning
/// (`Ok(Some)`) under [`SLOTS_PER_BACKEND`] slots per backend.
pub fn check_size(size: u32, backends: usize, group: &str) -> Result<Option<String>, String> {
    let (m, n) = (u64::from(size), backends as u64);
    if n == 0 || m >= SLOTS_PER_BACKEND * n {
        return Ok(None);
    }
    let suggested = next_prime(SLOTS_PER_BACKEND * n);
    if m < n {
        return Err(format!(
            "--hash-table-size {size} is smaller than the {n} {group}: some would have no \
             slot and never get a client; use a prime of at least {n}, best about 100 times \
             as many, such as {suggested}"
        ));
    }
    // Each backend has ⌊M/N⌋ or ⌈M/N⌉ slots: shares differ by up to one slot in ⌊M/N⌋.
    let apart = 100 / (m / n);
    Ok(Some(format!(
        "--hash-table-size {size} is under {SLOTS_PER_BACKEND} slots per backend for the \
         {n} {group} (the Maglev paper's bound for an even spread): their shares of the \
         clients can differ by {apart}%; a prime such as {suggested} spreads them evenly"
    )))
}

/// The smallest prime from `n` on, at most [`super::MAX_TABLE_SIZE`].
fn next_prime(n: u64) -> u64 {
    let max = u64::from(super::MAX_TABLE_SIZE);
    (n.min(max)..=max).find(|&p| is_prime(p)).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_table_needs_a_slot_per_backend_and_wants_a_hundred() {
        assert_eq!(check_size(65_537, 3, "backends"), Ok(None));
        assert_eq!(check_size(307, 3, "backends"), Ok(None));
        assert_eq!(check_size(2, 0, "backends"), Ok(None));
        let refused = check_size(2, 3, "backends").unwrap_err();
        assert!(
            refused.starts_with("--hash-table-size 2 is smaller than the 3 backends")
                && refused.ends_with("such as 307"),
            "{refused}"
        );
        let warned = check_size(3, 3, "backends").unwrap().expect("a warning");
        assert!(warned.contains("differ by 100%"), "{warned}");
        let warned = check_size(101, 3, "backup backends")
            .unwrap()
            .expect("a warning");
        assert!(
            warned.contains("for the 3 backup backends") && warned.contains("differ by 3%"),
            "{warned}"
        );
        assert_eq!(
            next_prime(100_000_000),
            u64::from(super::super::MAX_TABLE_SIZE)
        );
        assert_eq!(next_prime(65_536), 65_537);
    }

    use super::*;
    use crate::fleet::select::testing::{backend, break_down, bring_up, request};
    use std::net::Ipv4Addr;

    const M: u32 = 65_537;

    fn settings(balance_factor: Option<u32>) -> HashSettings {
        HashSettings {
            table_size: M,
            balance_factor,
        }
    }

    /// `n` backends 10.1.0.i:6379 of weight 1 (ids from `first_id`).
    fn fleet(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 6379));
                backend(i as u64, addr, 1)
            })
            .collect()
    }

    /// 10,000 client addresses 127.x.y.z, as the black-box tests bind them.
    fn clients() -> Vec<IpAddr> {
        (0..10_000u32)
            .map(|i| {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    1 + (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8,
                ))
            })
            .collect()
    }

    /// Each client's backend, by address.
    fn mapping(maglev: &Maglev, m: &[Arc<Backend>], clients: &[IpAddr]) -> Vec<SocketAddr> {
        clients
            .iter()
            .map(|&ip| {
                let req = PickRequest {
                    client: Some(ip),
                    now: 0,
                    tried: &[],
                };
                m[maglev.pick(m, &req).expect("a backend")].addr
            })
            .collect()
    }

    fn moved(a: &[SocketAddr], b: &[SocketAddr]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn the_same_client_always_reaches_the_same_backend() {
        let m = fleet(5);
        let maglev = Maglev::new(&m, settings(None), 0);
        let first = mapping(&maglev, &m, &clients());
        assert_eq!(first, mapping(&maglev, &m, &clients()));
        // Its IPv4-mapped IPv6 form too (a client of a dual-stack listener).
        let v4 = IpAddr::V4(Ipv4Addr::new(127, 1, 2, 3));
        let v6 = IpAddr::V6(Ipv4Addr::new(127, 1, 2, 3).to_ipv6_mapped());
        assert_eq!(client_key(Some(v4)), client_key(Some(v6)));
    }

    #[test]
    fn the_table_depends_only_on_addresses_weights_and_size() {
        let m = fleet(7);
        let entries: Vec<(SocketAddr, u32)> = m.iter().map(|b| (b.addr, b.weight())).collect();
        let mut reversed = entries.clone();
        reversed.reverse();
        let a = build_table(&entries, M);
        let b = build_table(&reversed, M);
        // Same backend in every slot (indexes differ: reversed).
        let n = entries.len() as u32;
        assert!(a.iter().zip(b.iter()).all(|(&x, &y)| x == n - 1 - y));
        // Pinned: a change to the hash or to the fill would remap every client of every
        // deployed balancer (and two versions side by side would disagree), so it must not
        // go unnoticed.
        assert_eq!(
            hash(SEED_CLIENT, &[127, 0, 0, 1]),
            12_422_624_978_735_309_712
        );
        let digest = a
            .iter()
            .fold(0u64, |h, &i| h.wrapping_mul(0x100_0000_01b3) ^ u64::from(i));
        assert_eq!(digest, 2_964_911_830_225_992_835);
    }

    #[test]
    fn equal_backends_get_an_equal_share_of_clients() {
        for n in [2, 3, 4, 5, 10] {
            let m = fleet(n);
            let maglev = Maglev::new(&m, settings(None), 0);
            let map = mapping(&maglev, &m, &clients());
            let share = 10_000.0 / n as f64;
            for b in &m {
                let got = map.iter().filter(|&&a| a == b.addr).count() as f64;
                assert!(
                    (got - share).abs() <= share * 0.05,
                    "{n} backends: {} has {got} clients, an equal share is {share}",
                    b.addr
                );
            }
        }
    }

    #[test]
    fn every_backend_gets_an_equal_share_of_the_table() {
        let m = fleet(1024);
        let maglev = Maglev::new(&m, settings(None), 0);
        let mut slots = vec![0usize; m.len()];
        for &i in maglev.table() {
            slots[i as usize] += 1;
        }
        // 65,537 slots over 1,024 backends: 64 or 65 each.
        assert_eq!(slots.iter().min(), Some(&64));
        assert_eq!(slots.iter().max(), Some(&65));
    }

    #[test]
    fn weights_are_honoured_by_the_table() {
        let m: Vec<Arc<Backend>> = (0..3)
            .map(|i| backend(i, SocketAddr::from(([10, 2, 0, i as u8], 80)), 1 + i as u32))
            .collect();
        let maglev = Maglev::new(&m, settings(None), 0);
        let mut slots = [0usize; 3];
        for &i in maglev.table() {
            slots[i as usize] += 1;
        }
        // Weights 1, 2, 3 of 65,537 slots.
        for (i, &got) in slots.iter().enumerate() {
            let want = 65_537.0 * (i + 1) as f64 / 6.0;
            assert!((got as f64 - want).abs() < 3.0, "{slots:?}");
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients_and_adding_it_back_restores_them() {
        for n in [4, 5, 10, 50, 100] {
            let all = fleet(n);
            let before = mapping(&Maglev::new(&all, settings(None), 0), &all, &clients());
            for gone in (0..n).step_by(n.div_ceil(10)) {
                let fewer: Vec<Arc<Backend>> = all
                    .iter()
                    .filter(|b| b.addr != all[gone].addr)
                    .cloned()
                    .collect();
                let after = mapping(&Maglev::new(&fewer, settings(None), 0), &fewer, &clients());
                let own = before.iter().filter(|&&a| a == all[gone].addr).count();
                let total = moved(&before, &after);
                assert!(total >= own, "every client of the removed backend moved");
                // Besides its own clients, under 1% of the others (the paper's figure).
                assert!(
                    total - own <= 100,
                    "{n} backends: {total} of 10,000 clients moved, {own} of them its own"
                );
                // With a few backends (where 10,000 clients make a backend's own share
                // exact to a few percent), at most 1.2/N of them in all.
                if n <= 10 {
                    assert!(
                        total as f64 <= 1.2 * 10_000.0 / n as f64,
                        "{n} backends: {total} of 10,000 clients moved"
                    );
                }
                // Back in the set, in another place in the list: the old mapping again.
                let mut again = fewer.clone();
                again.insert(0, Arc::clone(&all[gone]));
                let restored = mapping(&Maglev::new(&again, settings(None), 0), &again, &clients());
                assert_eq!(moved(&before, &restored), 0);
            }
        }
    }

    #[test]
    fn a_down_backends_clients_go_to_their_own_next_choice_and_nobody_else_moves() {
        let m = fleet(5);
        let maglev = Maglev::new(&m, settings(None), 0);
        let before = mapping(&maglev, &m, &clients());
        break_down(&m[2]);
        let during = mapping(&maglev, &m, &clients());
        let mut went_to = std::collections::HashSet::new();
        for (b, d) in before.iter().zip(&during) {
            if *b == m[2].addr {
                assert_ne!(*d, m[2].addr);
                went_to.insert(*d);
            } else {
                assert_eq!(b, d, "a client of another backend moved");
            }
        }
        assert_eq!(
            went_to.len(),
            4,
            "its clients spread over every other backend"
        );
        // A second client of the same address, tried on its next choice: the one after.
        let client = clients()
            .into_iter()
            .zip(&before)
            .find(|(_, b)| **b == m[2].addr)
            .map(|(c, _)| c);
        let req = |tried: &'static [u64]| PickRequest {
            client,
            now: 0,
            tried,
        };
        let next = maglev.pick(&m, &req(&[])).expect("a backend");
        let tried: &'static [u64] = Box::leak(vec![m[next].id].into_boxed_slice());
        let after_next = maglev.pick(&m, &req(tried)).expect("a backend");
        assert!(after_next != next && after_next != 2);
        // Up again: everyone is back where they were.
        bring_up(&m[2]);
        assert_eq!(mapping(&maglev, &m, &clients()), before);
    }

    /// Picks a backend for `sessions` sessions of `client`, each held; the active counts.
    fn hold_sessions(
        maglev: &Maglev,
        m: &[Arc<Backend>],
        client: Option<IpAddr>,
        sessions: usize,
    ) -> Vec<u32> {
        for _ in 0..sessions {
            let req = PickRequest {
                client,
                now: 0,
                tried: &[],
            };
            let i = maglev.pick(m, &req).expect("a backend");
            m[i].acquire();
            maglev.refresh(m, i, 0);
        }
        m.iter().map(|b| b.active()).collect()
    }

    /// Four backends on ports picked as the black-box tests' are: for some port sets the
    /// client's first [`PROBES`] slots never name one of them (the table repeats backends in
    /// runs along a client's order). The bound must hold there too: found by the end-to-end
    /// test failing about once in 50 runs.
    #[test]
    fn bounded_loads_hold_when_the_probes_miss_a_backend() {
        let one = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let key = client_key(one);
        let mut seed = 1u64;
        let mut fleets_missed = 0;
        for _ in 0..3000 {
            if fleets_missed == 3 {
                break;
            }
            let m: Vec<Arc<Backend>> = (0..4u64)
                .map(|i| {
                    seed = hash(seed, &i.to_le_bytes());
                    let port = 32768 + (seed % 28_000) as u16;
                    backend(i, SocketAddr::from(([127, 0, 0, 1], port)), 1)
                })
                .collect();
            let maglev = Maglev::new(&m, settings(Some(125)), 0);
            let table = maglev.table();
            let size = table.len() as u64;
            let (start, step) = (key % size, (key >> 32) % (size - 1) + 1);
            let probed: std::collections::HashSet<u32> = (0..PROBES as u64)
                .map(|k| table[((start + k * step) % size) as usize])
                .collect();
            if probed.len() == 4 {
                continue;
            }
            fleets_missed += 1;
            let active = hold_sessions(&maglev, &m, one, 200);
            assert!(
                active.iter().all(|&a| a <= 63),
                "F = 1.25: no backend over 63 though the probes miss one: {active:?}"
            );
        }
        assert_eq!(
            fleets_missed, 3,
            "port sets that made the probes miss a backend"
        );
    }

    #[test]
    fn bounded_loads_cap_one_busy_client() {
        let one = Some(IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9)));
        let hold = |factor: Option<u32>| {
            let m = fleet(4);
            let maglev = Maglev::new(&m, settings(factor), 0);
            hold_sessions(&maglev, &m, one, 200)
        };
        assert_eq!(
            hold(None).iter().max(),
            Some(&200),
            "without a bound: one backend"
        );
        let bounded = hold(Some(125));
        assert_eq!(bounded.iter().sum::<u32>(), 200);
        assert!(
            bounded.iter().all(|&a| a <= 63),
            "F = 1.25: no backend over ⌈1.25 × 200 / 4⌉ = 63: {bounded:?}"
        );
        // Sessions ending make room again: released, the client's own backend comes first.
        let m = fleet(4);
        let maglev = Maglev::new(&m, settings(Some(125)), 0);
        let req = PickRequest {
            client: one,
            now: 0,
            tried: &[],
        };
        let own = maglev.pick(&m, &req).expect("a backend");
        m[own].acquire();
        maglev.refresh(&m, own, 0);
        m[own].release();
        maglev.refresh(&m, own, 0);
        assert_eq!(maglev.pick(&m, &req), Some(own));
    }

    #[test]
    fn the_bound_counts_only_backends_that_take_sessions() {
        let m = fleet(4);
        let maglev = Maglev::new(&m, settings(Some(125)), 0);
        break_down(&m[0]);
        maglev.refresh(&m, 0, 0);
        let one = Some(IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9)));
        for _ in 0..120 {
            let req = PickRequest {
                client: one,
                now: 0,
                tried: &[],
            };
            let i = maglev.pick(&m, &req).expect("a backend");
            assert_ne!(i, 0);
            m[i].acquire();
            maglev.refresh(&m, i, 0);
        }
        // ⌈1.25 × 120 / 3⌉ = 50 over the three that are up.
        assert!(
            m.iter().all(|b| b.active() <= 50),
            "{:?}",
            m.iter().map(|b| b.active()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn no_client_is_turned_away_while_a_backend_is_up() {
        let m = fleet(100);
        let maglev = Maglev::new(&m, settings(None), 0);
        for b in &m[..99] {
            break_down(b);
        }
        for ip in clients().into_iter().take(200) {
            let req = PickRequest {
                client: Some(ip),
                now: 0,
                tried: &[],
            };
            assert_eq!(maglev.pick(&m, &req), Some(99));
        }
        assert_eq!(maglev.pick(&m, &request(&[99])), None);
    }

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(is_prime(u64::from(crate::fleet::select::MAX_TABLE_SIZE)));
        assert!(!is_prime(65_536));
        assert!(!is_prime(16_777_215));
    }
}
