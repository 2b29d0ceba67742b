//! A worker's share of the kernel fast path ([`crate::bpf`]): the slot pairs it links its
//! sessions in (a disjoint range per worker, two slots a session: the client's socket
//! then the backend's), and what a session asks of them: link, gate, last activity,
//! quiet, and the kernel's byte counts when it ends.

use crate::bpf::{self, FastPath};
use crate::worker::duplex::Side;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A linked session's pair of slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair(u32);

impl Pair {
    /// The slot of the socket on `side`: its record is about the bytes arriving on it.
    fn slot(self, side: Side) -> u32 {
        self.0 * 2 + side as u32
    }

    /// For a session's one-word field: 0 is "not linked".
    pub fn to_word(self) -> u32 {
        self.0 + 1
    }

    pub fn from_word(word: u32) -> Option<Pair> {
        word.checked_sub(1).map(Pair)
    }
}

pub struct Fast {
    path: Arc<FastPath>,
    free: Vec<u32>,
    /// The first pair of this worker's range, and the cookies each of its pairs entered.
    first: u32,
    cookies: Vec<[u64; 2]>,
}

impl Fast {
    /// Worker `index` of `workers` takes its equal share of the pairs.
    pub fn new(path: Arc<FastPath>, index: usize, workers: usize) -> Fast {
        let pairs = path.capacity() / 2;
        let share = pairs / workers.max(1) as u32;
        let first = share * index as u32;
        // Taken from the end: the lowest pairs first.
        let free = (first..first + share).rev().collect();
        Fast {
            path,
            free,
            first,
            cookies: vec![[0; 2]; share as usize],
        }
    }

    /// Puts a session's sockets in the map; `moved` is what user space has written to the
    /// backend and to the client so far. `None` when this worker's pairs are all in use.
    pub fn link(
        &mut self,
        client: RawFd,
        backend: RawFd,
        moved: (u64, u64),
    ) -> Option<(Pair, io::Result<()>)> {
        let pair = Pair(self.free.pop()?);
        let slots = [pair.slot(Side::Client), pair.slot(Side::Backend)];
        let cookies = &mut self.cookies[(pair.0 - self.first) as usize];
        *cookies = [0; 2];
        let linked = self
            .path
            .link(slots, [client, backend], [moved.1, moved.0], cookies);
        Some((pair, linked))
    }

    /// User space has written `moved` (to the backend, to the client) in all.
    pub fn note_moved(&self, pair: Pair, moved: (u64, u64)) {
        self.path.note_written(pair.slot(Side::Client), moved.0);
        self.path.note_written(pair.slot(Side::Backend), moved.1);
    }

    /// The kernel has delivered into `to_fd` (the other side's socket) everything it
    /// redirected from `from`'s socket. An error reading the socket's state opens the gate:
    /// the write that follows meets the error and ends the session as it should.
    pub fn drained(&self, pair: Pair, from: Side, to_fd: RawFd) -> bool {
        self.path.drained(pair.slot(from), to_fd).unwrap_or(true)
    }

    /// Nothing the kernel holds for the session: every byte passed up was forwarded and
    /// every byte redirected delivered, both ways.
    pub fn quiet(&self, pair: Pair, client: RawFd, backend: RawFd) -> bool {
        [(Side::Client, backend), (Side::Backend, client)]
            .into_iter()
            .all(|(from, to)| {
                let r = self.path.record(pair.slot(from));
                r.passed.load(Ordering::Acquire) == r.forwarded.load(Ordering::Acquire)
                    && self.drained(pair, from, to)
            })
    }

    /// How long ago the kernel last saw a segment of the session.
    pub fn quiet_for(&self, pair: Pair) -> std::time::Duration {
        let last = [Side::Client, Side::Backend]
            .into_iter()
            .map(|side| {
                self.path
                    .record(pair.slot(side))
                    .stamp
                    .load(Ordering::Acquire)
            })
            .max()
            .unwrap_or(0);
        std::time::Duration::from_nanos(bpf::monotonic_ns().saturating_sub(last))
    }

    /// The session is over: what the kernel moved to the backend and to the client, and
    /// its pair back for the next.
    pub fn unlink(&mut self, pair: Pair) -> (u64, u64) {
        let moved = |side| {
            self.path
                .record(pair.slot(side))
                .redirected
                .load(Ordering::Acquire)
        };
        let totals = (moved(Side::Client), moved(Side::Backend));
        self.path
            .forget(self.cookies[(pair.0 - self.first) as usize]);
        self.free.push(pair.0);
        totals
    }
}
