//! Per-source limits: how many sessions one client source has open and how fast it opens
//! new ones, one count per source for the whole process (every worker asks the same
//! table), so `max-conns-per-source` and `conn-rate-per-source` hold however the kernel
//! spreads a client's connections over the workers.
//!
//! A source is the client's address masked to `source-prefix` (v4 /32 and v6 /64 by
//! default). The table is sharded (16 locks: two workers rarely meet on one) and bounded:
//! at most `source-table-size` sources. When a shard is full, a new source takes the place
//! of one found by a clock sweep (second chance): a source with a session open is never
//! put out, and one seen since the last sweep passed it gets one more round. So:
//!
//! - a source's concurrent count is exact while it has a session open;
//! - a source's rate state is kept until at least a shard's worth of other sources (the
//!   table size / 16) has arrived with the sweep finding it idle twice: churn through
//!   fewer distinct sources than that never resets anyone's bucket;
//! - memory stays bounded under a flood of distinct addresses; should every entry of a
//!   shard have a session open (more live sources than the table can hold: a table smaller
//!   than `max-conns`), a new source is let in uncounted and that is counted
//!   ([`SourceStats::untracked`]).

use crate::config::protection::SourceLimits;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 16;

/// Why a client was turned away by its source's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// Its source has `max-conns-per-source` sessions open.
    Conns,
    /// Its source has used up `conn-rate-per-source`.
    Rate,
}

impl Limited {
    /// The `reason` label of `tcplb_connections_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Conns => "per_source_conns",
            Limited::Rate => "per_source_rate",
        }
    }
}

/// What the table knows of one source.
#[derive(Debug)]
struct Entry {
    /// Its sessions open now.
    conns: u32,
    /// Its token bucket: tokens left, as of `refilled` (ms).
    tokens: f64,
    refilled: u64,
    /// Seen since the sweep last passed it.
    referenced: bool,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<u128, Entry, RandomState>,
    /// The sweep's order: every key of `entries`, once.
    sweep: VecDeque<u128>,
}

/// The table's counters.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Clients turned away, by [`Limited`] (`Conns`, `Rate`).
    pub limited: [AtomicU64; 2],
    /// Clients let in uncounted because their shard was full of sources with sessions open.
    pub untracked: AtomicU64,
    /// Sources put out to make room for new ones.
    pub evicted: AtomicU64,
}

/// One service's sources: kept across reloads (by service name), so a reload does not
/// forget who has what open.
#[derive(Debug)]
pub struct Sources {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Sources a shard holds at most.
    shard_capacity: AtomicUsize,
    pub stats: SourceStats,
}

/// A session's place in its source's count: give it back with [`Sources::release`] when
/// the session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    key: u128,
}

impl Sources {
    pub fn new(table_size: usize) -> Sources {
        let sources = Sources {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            shard_capacity: AtomicUsize::new(1),
            stats: SourceStats::default(),
        };
        sources.resize(table_size);
        sources
    }

    /// A new table size (a reload): shards shrink as new sources arrive.
    pub fn resize(&self, table_size: usize) {
        self.shard_capacity
            .store(table_size.div_ceil(SHARDS).max(1), Ordering::Release);
    }

    /// Sources known now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[i])
    }

    /// Asks for a new session from `client` under `limits` at `now` (ms): `Ok(Some)` counts
    /// it (release it at the end), `Ok(None)` lets it in uncounted (the table is full of
    /// live sources), `Err` turns it away.
    pub fn admit(
        &self,
        limits: &SourceLimits,
        client: IpAddr,
        now: u64,
    ) -> Result<Option<Counted>, Limited> {
        let key = key_of(limits.source_of(client));
        let capacity = self.shard_capacity.load(Ordering::Acquire);
        let mut shard = self.shard(key);
        if !shard.entries.contains_key(&key) {
            if shard.entries.len() >= capacity && !self.evict_one(&mut shard) {
                self.stats.untracked.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            shard.entries.insert(
                key,
                Entry {
                    conns: 0,
                    tokens: limits.rate.map_or(0.0, |r| f64::from(r.count)),
                    refilled: now,
                    referenced: false,
                },
            );
            shard.sweep.push_back(key);
        }
        let Some(entry) = shard.entries.get_mut(&key) else {
            return Ok(None);
        };
        entry.referenced = true;
        if limits.max_conns.is_some_and(|max| entry.conns >= max) {
            self.stats.limited[0].fetch_add(1, Ordering::Relaxed);
            return Err(Limited::Conns);
        }
        if let Some(rate) = limits.rate {
            let burst = f64::from(rate.count);
            let elapsed = now.saturating_sub(entry.refilled) as f64;
            entry.tokens = (entry.tokens + elapsed * rate.per_milli()).min(burst);
            entry.refilled = now.max(entry.refilled);
            if entry.tokens < 1.0 {
                self.stats.limited[1].fetch_add(1, Ordering::Relaxed);
                return Err(Limited::Rate);
            }
            entry.tokens -= 1.0;
        }
        entry.conns += 1;
        Ok(Some(Counted { key }))
    }

    /// A counted session ended.
    pub fn release(&self, counted: Counted) {
        let mut shard = self.shard(counted.key);
        if let Some(entry) = shard.entries.get_mut(&counted.key) {
            entry.conns = entry.conns.saturating_sub(1);
        }
    }

    /// The sessions `client`'s source has open (for tests and `/backends`).
    pub fn open_from(&self, limits: &SourceLimits, client: IpAddr) -> u32 {
        let key = key_of(limits.source_of(client));
        self.shard(key).entries.get(&key).map_or(0, |e| e.conns)
    }

    /// Puts out one source with no session open that the sweep finds unreferenced (two
    /// passes at most); `false` if every source of the shard has sessions open.
    fn evict_one(&self, shard: &mut Shard) -> bool {
        for _ in 0..2 * shard.sweep.len() {
            let Some(key) = shard.sweep.pop_front() else {
                return false;
            };
            let Some(entry) = shard.entries.get_mut(&key) else {
                continue;
            };
            if entry.conns > 0 || entry.referenced {
                entry.referenced = false;
                shard.sweep.push_back(key);
                continue;
            }
            shard.entries.remove(&key);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A source as one number: IPv4 addresses in the IPv4-mapped range, as IPv6 has them.
fn key_of(source: IpAddr) -> u128 {
    match source {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A table shared by whoever holds it.
pub type SharedSources = Arc<Sources>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::protection::Rate;

    fn limits(max_conns: Option<u32>, rate: Option<&str>, table_size: usize) -> SourceLimits {
        SourceLimits {
            max_conns,
            rate: rate.and_then(Rate::parse),
            prefix_v4: 32,
            prefix_v6: 64,
            table_size,
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from((0x7f00_0000 | n).to_be_bytes())
    }

    #[test]
    fn a_source_gets_its_concurrent_limit_and_no_more_while_others_are_unaffected() {
        let l = limits(Some(3), None, 1024);
        let t = Sources::new(l.table_size);
        let held: Vec<Counted> = (0..3)
            .map(|_| t.admit(&l, ip(1), 0).expect("admitted").expect("counted"))
            .collect();
        assert_eq!(t.admit(&l, ip(1), 0), Err(Limited::Conns));
        assert!(t.admit(&l, ip(2), 0).is_ok(), "another source");
        t.release(held[0]);
        assert!(t.admit(&l, ip(1), 0).is_ok(), "one came free");
        assert_eq!(t.open_from(&l, ip(1)), 3);
        assert_eq!(t.stats.limited[0].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_rate_is_a_token_bucket_whose_burst_is_the_rate() {
        let l = limits(None, Some("10/s"), 1024);
        let t = Sources::new(l.table_size);
        for _ in 0..10 {
            let c = t.admit(&l, ip(1), 1000).expect("within the burst");
            t.release(c.expect("counted"));
        }
        assert_eq!(t.admit(&l, ip(1), 1000), Err(Limited::Rate));
        assert_eq!(
            t.admit(&l, ip(1), 1099),
            Err(Limited::Rate),
            "0.99 of a token"
        );
        assert!(t.admit(&l, ip(1), 1100).is_ok(), "one token after 100 ms");
        assert_eq!(t.admit(&l, ip(1), 1100), Err(Limited::Rate));
        // A long pause refills the bucket only up to the burst.
        for _ in 0..10 {
            assert!(t.admit(&l, ip(1), 60_000).is_ok());
        }
        assert_eq!(t.admit(&l, ip(1), 60_000), Err(Limited::Rate));
        assert!(t.admit(&l, ip(2), 60_000).is_ok(), "another source");
    }

    #[test]
    fn a_prefix_makes_one_source_of_a_block() {
        let mut l = limits(Some(1), None, 1024);
        l.prefix_v4 = 24;
        let t = Sources::new(l.table_size);
        assert!(t.admit(&l, ip(0x0101), 0).is_ok());
        assert_eq!(t.admit(&l, ip(0x0102), 0), Err(Limited::Conns));
        assert!(t.admit(&l, ip(0x0201), 0).is_ok());
    }

    #[test]
    fn a_flood_of_sources_stays_within_the_table_and_never_puts_out_a_live_one() {
        let l = limits(Some(2), Some("5/s"), 1024);
        let t = Sources::new(l.table_size);
        // The abuser holds its two sessions and has used its rate.
        let _a = t.admit(&l, ip(1), 0).expect("ok");
        let _b = t.admit(&l, ip(1), 0).expect("ok");
        for n in 2..100_000 {
            if let Ok(Some(c)) = t.admit(&l, ip(n), 0) {
                t.release(c);
            }
        }
        assert!(t.len() <= 1024 + SHARDS, "{} sources kept", t.len());
        assert!(t.stats.evicted.load(Ordering::Relaxed) > 90_000);
        assert_eq!(t.admit(&l, ip(1), 0), Err(Limited::Conns), "still counted");
        assert_eq!(t.open_from(&l, ip(1)), 2);
        assert_eq!(t.stats.untracked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_rate_limited_source_keeps_its_state_through_churn_smaller_than_a_shard() {
        let l = limits(None, Some("3/m"), 16 * 64);
        let t = Sources::new(l.table_size);
        for _ in 0..3 {
            assert!(t.admit(&l, ip(1), 0).is_ok());
        }
        // Fewer distinct others than one shard holds: nobody is put out at all.
        for n in 2..60 {
            let _ = t.admit(&l, ip(n), 1);
        }
        assert_eq!(t.stats.evicted.load(Ordering::Relaxed), 0);
        assert_eq!(t.admit(&l, ip(1), 2), Err(Limited::Rate));
    }

    #[test]
    fn a_shard_full_of_live_sources_lets_new_ones_in_uncounted() {
        let l = limits(Some(5), None, SHARDS);
        let t = Sources::new(l.table_size);
        let mut held = Vec::new();
        for n in 0..200 {
            if let Ok(Some(c)) = t.admit(&l, ip(n), 0) {
                held.push(c);
            }
        }
        assert!(t.len() <= SHARDS);
        assert!(t.stats.untracked.load(Ordering::Relaxed) >= 200 - SHARDS as u64);
        for c in held {
            t.release(c);
        }
    }
}
