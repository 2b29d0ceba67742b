//! One direction of a session: read from a source socket, write to the destination, pass
//! the end of stream on as `shutdown(Write)`. Bytes take one of two paths:
//!
//! - **Buffer path** (every platform): read into pooled buffers, write them out. A
//!   direction holds buffers only while it has bytes in flight: it takes one when the source
//!   is readable (up to [`MAX_GATHER`] while the source keeps filling them) and gives each
//!   back the moment it is written out. With no free buffer it stops reading
//!   (backpressure) and reports [`Flow::NeedBuffer`].
//! - **Splice path** (Linux, [`splice`](crate::worker::splice)): socket → kernel pipe →
//!   socket, no copy through user space. The pipe comes from the worker's pipe pool while
//!   bytes sit in it and goes back the moment it is empty; with no pipe to be had, that
//!   read takes the buffer path instead (never a wait).
//!
//! Which path: small exchanges (request/response, keep-alive) stay on the buffer path, where
//! a read and a write per message is the least there is, and a short read tells that the
//! queue is empty (a splice cannot tell that, so it costs one more call per wake-up). A
//! direction goes to the splice path when two reads in a row fill every buffer they were
//! given (16 KiB, then the 64 KiB gathered: a bulk flow, as HAProxy's `splice-auto` judges
//! it), and back when two splices in a row bring less than one buffer's worth each (the
//! flow went quiet, or is trickling). While TCP urgent data is pending it reads with `recv` (a splice stops at
//! the urgent mark), and splices again once the urgent byte has been read. Bytes in flight are always delivered before the next read, so they
//! never sit in a pipe and in buffers at once: the order is kept across every switch.
//!
//! With a full destination a direction keeps what it holds (at most a pipe's or
//! [`MAX_GATHER`] buffers' worth) and stops reading until the destination drains.
//!
//! Readiness is edge-triggered and remembered in user space ([`Readiness`]): a direction
//! reads and writes until the kernel says `WouldBlock`, with safe shortcuts that each save
//! a syscall per wake-up:
//! - A read that returns less than asked means the receive queue is empty (any byte arriving
//!   later raises a new edge) — except around TCP urgent data, where a read stops short at
//!   the urgent mark: while urgent data is reported, the direction reads until
//!   `WouldBlock`. (Buffer path only; see above.)
//! - If the peer's FIN had already been reported when such a short read ran, the FIN is
//!   next in the stream: the read reached the end, and no extra read is made to hear EOF.
//!   (Only a clean FIN: after a hang-up or error one more read collects EOF or the error,
//!   so a reset is never mistaken for an orderly close.)
//! - A write that takes less than offered means the send buffer is full (the kernel raises
//!   a new edge when it drains).
//!
//! When the last bytes before an end of stream are written, they go with `MSG_MORE` so the
//! FIN that follows at once rides in the same segment: one packet fewer per closing
//! direction, and the kernel work that packet costs on both ends.

use crate::worker::pipes::PipePool;
use crate::worker::pool::{Buf, Pool};
use crate::worker::splice::{Splice, urgent_pending};
use crate::worker::stream::Stream;
use mio::event::Event;
use std::io::{self, IoSlice};

/// Reads one direction may make per turn before it lets other sessions run: with gathered
/// reads at most 128 KiB a turn, with splices at most two pipes' worth (512 KiB). Measured with four
/// concurrent 64 MiB downloads: a budget of 8 (512 KiB a turn) let some sessions run far
/// ahead of others (p99 3-7x the median); 1 or 2 keep them even (p99 within ~20% of the
/// median) at no cost in CPU per byte.
const TURN_BUDGET: u32 = 2;

/// Buffers one read may fill when the source keeps filling whatever it is given: a bulk
/// transfer then moves 4 × 16 KiB per `readv`/`writev` instead of 16 KiB, which means a
/// quarter of the syscalls and segments (each segment costs kernel work on both ends).
pub const MAX_GATHER: usize = 4;

/// Splices in a row that bring less than one buffer's worth before a direction goes back to
/// the buffer path: two, so that a bulk flow that momentarily catches up with its sender
/// (one short splice) keeps splicing, while request/response traffic after a bulk phase
/// is back on buffers after its second message.
const QUIET_SPLICES: u8 = 2;

/// What the reactor has observed about one socket since a direction last hit `WouldBlock`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN or a hang-up has been reported: reading will reach EOF or an error.
    pub read_closed: bool,
    /// A clean FIN has been reported (no error, no hang-up): the data in the receive queue
    /// is all that is left before EOF.
    pub fin: bool,
    /// TCP urgent data has been reported and may still be queued: a read stops short at the
    /// urgent mark, so a short read does not mean the queue is empty. Cleared at `WouldBlock`.
    pub urgent: bool,
    /// An error has been reported on this socket (kept, so a reset that arrives after the
    /// peer's FIN is still passed on once the stream before it is delivered).
    pub error: bool,
}

impl Readiness {
    /// Folds an event in. Errors and hang-ups count as both readable and writable, so the
    /// next read or write meets the error and reports it.
    pub fn observe(&mut self, event: &Event) {
        let failed = event.is_error();
        self.readable |= event.is_readable() || event.is_read_closed() || failed;
        self.writable |= event.is_writable() || event.is_write_closed() || failed;
        self.read_closed |= event.is_read_closed();
        self.fin |= event.is_read_closed() && !event.is_write_closed() && !failed;
        self.urgent |= event.is_priority();
        self.error |= failed;
    }
}

/// Why a pump stopped without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Waiting for readiness (or done): a future event resumes it.
    Blocked,
    /// The source is readable but the pool is empty: resume when a buffer comes back.
    NeedBuffer,
    /// The turn's budget ran out with work left: resume soon, without waiting for an event.
    Yielded,
    /// Bytes (or the end of stream) read on a session the kernel fast path moves wait for
    /// the kernel to deliver what it redirected to the destination first (see
    /// [`crate::bpf`]): resume once it has.
    Gated,
}

/// A socket error, by the side it came from.
#[derive(Debug)]
pub enum Fault {
    /// Reading the source failed (typically a reset).
    Source(io::Error),
    /// Writing to (or shutting down) the destination failed.
    Destination(io::Error),
}

/// The bytes in flight in one direction: up to [`MAX_GATHER`] pool buffers, in order; all
/// but the last are full. Bytes `head..` of the first and `..tail` of the last are unwritten.
#[derive(Debug, Default)]
struct Chain {
    bufs: [Option<Buf>; MAX_GATHER],
    held: u8,
    head: u32,
    tail: u32,
    /// What was read last (these bytes, or the end of stream behind them) came on a
    /// session the kernel fast path moves, and the gate has not let it out yet. Kept here,
    /// where the chain's padding has room, so a direction grows by nothing.
    unchecked: bool,
}

impl Chain {
    fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// The unwritten bytes, as slices for `writev`; returns how many slices are used.
    fn slices<'a>(&self, pool: &'a Pool, out: &mut [IoSlice<'a>; MAX_GATHER]) -> usize {
        let held = usize::from(self.held);
        for (i, buf) in self.bufs[..held].iter().flatten().enumerate() {
            let start = if i == 0 { self.head as usize } else { 0 };
            let end = if i + 1 == held {
                self.tail as usize
            } else {
                pool.buffer_size()
            };
            out[i] = IoSlice::new(&pool.bytes(buf)[start..end]);
        }
        held
    }

    /// Drops `n` written bytes from the front, giving emptied buffers back.
    fn consume(&mut self, mut n: usize, pool: &mut Pool) {
        while n > 0 && self.held > 0 {
            let end = if self.held == 1 {
                self.tail as usize
            } else {
                pool.buffer_size()
            };
            let left = end - self.head as usize;
            if n < left {
                self.head += n as u32;
                return;
            }
            n -= left;
            if let Some(buf) = self.bufs[0].take() {
                pool.give(buf);
            }
            self.bufs[..usize::from(self.held)].rotate_left(1);
            self.held -= 1;
            self.head = 0;
        }
    }

    /// Gives every buffer back, written or not.
    fn release(&mut self, pool: &mut Pool) {
        for buf in self.bufs.iter_mut().filter_map(Option::take) {
            pool.give(buf);
        }
        *self = Chain::default();
    }
}

/// What a direction draws on: the worker's buffer pool and pipe pool.
pub struct Pools<'a> {
    pub buffers: &'a mut Pool,
    pub pipes: &'a mut PipePool,
}

#[derive(Debug, Default)]
pub struct Direction {
    /// Bytes in flight on the buffer path.
    chain: Chain,
    /// The splice path: on or off, and its pipe while bytes sit in it.
    splice: Splice,
    /// The last read filled every buffer it had: take several next time.
    bulk: bool,
    /// How far the end of stream has come.
    end: End,
    /// Bytes written to the destination so far, by either path.
    moved: u64,
}

/// Where a direction's end of stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum End {
    #[default]
    Open,
    /// The source has reached it.
    Reached,
    /// The destination has been told (or will be, by closing it) that no more bytes come.
    PassedOn,
}

impl Direction {
    /// Bytes written to the destination so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Counts bytes moved outside this direction (by the kernel fast path) in its total.
    pub fn add_moved(&mut self, n: u64) {
        self.moved += n;
    }

    /// Of those, bytes moved by splice.
    pub fn spliced(&self) -> u64 {
        self.splice.spliced()
    }

    /// The source has reached end of stream.
    pub fn eof(&self) -> bool {
        self.end != End::Open
    }

    /// Every byte is delivered and the end of stream passed on.
    pub fn is_done(&self) -> bool {
        self.end == End::PassedOn && !self.holds_bytes()
    }

    /// Bytes are in flight here (in pool buffers or in a pipe).
    pub fn holds_bytes(&self) -> bool {
        !self.chain.is_empty() || self.splice.holds_bytes()
    }

    /// Pool buffers held right now.
    pub fn buffers_held(&self) -> usize {
        usize::from(self.chain.held)
    }

    /// A kernel pipe is held right now (exactly while bytes sit in it).
    pub fn pipe_held(&self) -> bool {
        self.splice.holds_pipe()
    }

    /// Reads go through a pipe now (the splice path).
    pub fn splicing(&self) -> bool {
        self.splice.on
    }

    /// Bytes waiting in the pipe.
    pub fn pipe_bytes(&self) -> usize {
        self.splice.held()
    }

    /// Moves bytes from `src` to `dst` until both block. `closing` says the session closes
    /// as soon as this direction is done, so the end of stream need not be sent with
    /// `shutdown`: closing the socket sends it.
    ///
    /// `gate` is given while the kernel fast path moves the session's bytes: what this
    /// direction reads then was passed up by the kernel behind bytes it may still be
    /// delivering to `dst`, so nothing read is written (nor the end of stream passed on)
    /// before `gate` says the kernel is done with them. Such a direction never splices.
    #[allow(clippy::too_many_arguments)]
    pub fn pump<S: Stream + ?Sized, D: Stream + ?Sized>(
        &mut self,
        src: &mut S,
        src_ready: &mut Readiness,
        dst: &mut D,
        dst_ready: &mut Readiness,
        pools: &mut Pools<'_>,
        closing: bool,
        gate: Option<&dyn Fn() -> bool>,
    ) -> Result<Flow, Fault> {
        let can_splice = gate.is_none()
            && pools.pipes.capacity() > 0
            && src.splice_fd().is_some()
            && dst.splice_fd().is_some();
        let mut budget = TURN_BUDGET;
        loop {
            if self.chain.unchecked && (self.holds_bytes() || self.end == End::Reached) {
                if gate.is_some_and(|open| !open()) {
                    return Ok(Flow::Gated);
                }
                self.chain.unchecked = false;
            }
            // What is in flight goes first: bytes leave in the order they came.
            if self.holds_bytes() {
                if !dst_ready.writable {
                    return Ok(Flow::Blocked);
                }
                let written = if self.splice.holds_bytes() {
                    self.splice_out(dst, pools.pipes)
                } else {
                    self.write(dst, pools.buffers)
                };
                match written {
                    Ok(true) => {}
                    Ok(false) => {
                        dst_ready.writable = false;
                        return Ok(Flow::Blocked);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst_ready.writable = false;
                        return Ok(Flow::Blocked);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Fault::Destination(e)),
                }
            }

            if self.end != End::Open {
                if self.end == End::Reached {
                    if !closing {
                        match dst.shutdown_write() {
                            Ok(()) => {}
                            // The peer is already gone; closing will tell the rest.
                            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                            Err(e) => return Err(Fault::Destination(e)),
                        }
                    }
                    self.end = End::PassedOn;
                }
                return Ok(Flow::Blocked);
            }

            if !src_ready.readable {
                return Ok(Flow::Blocked);
            }
            if budget == 0 {
                return Ok(Flow::Yielded);
            }
            budget -= 1;
            if self.splice.on && src_ready.urgent && !src.splice_fd().is_some_and(urgent_pending) {
                // The urgent byte has been read past: splicing may go on.
                src_ready.urgent = false;
            }
            let spliced = if self.splice.on && !src_ready.urgent {
                self.splice_in(src, src_ready, pools)
            } else {
                None
            };
            let read = match spliced {
                Some(result) => result,
                None => self.read(src, src_ready, pools.buffers, can_splice),
            };
            match read {
                Ok(true) => self.chain.unchecked = gate.is_some(),
                Ok(false) => return Ok(Flow::NeedBuffer),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        src_ready.readable = false;
                        src_ready.urgent = false;
                        return Ok(Flow::Blocked);
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(Fault::Source(e)),
                },
            }
        }
    }

    /// Writes what is in flight. Ok(true) when all of it went, Ok(false) when the socket
    /// took only part (its send buffer is full).
    fn write<D: Stream + ?Sized>(&mut self, dst: &mut D, pool: &mut Pool) -> io::Result<bool> {
        let mut slices = [IoSlice::new(&[]); MAX_GATHER];
        let count = self.chain.slices(pool, &mut slices);
        let slices = &slices[..count];
        let offered: usize = slices.iter().map(|s| s.len()).sum();
        // After EOF the FIN follows these bytes at once: let it share their segment.
        let n = dst.write_vectored(slices, self.end != End::Open)?;
        self.moved += n as u64;
        self.chain.consume(n, pool);
        Ok(n == offered)
    }

    /// Splices what the pipe holds out to `dst`. Ok(true) when all of it went (and the
    /// pipe is back in the pool), Ok(false) when the send buffer filled first.
    fn splice_out<D: Stream + ?Sized>(
        &mut self,
        dst: &mut D,
        pipes: &mut PipePool,
    ) -> io::Result<bool> {
        let fd = dst.splice_fd().ok_or(io::ErrorKind::Unsupported)?;
        let n = self.splice.drain(fd, pipes)?;
        self.moved += n as u64;
        Ok(!self.splice.holds_bytes())
    }

    /// Splices what the source has into a pipe. `None` when no pipe can be had: the caller
    /// reads into buffers instead. [`QUIET_SPLICES`] splices in a row that bring less than a
    /// buffer's worth mean the flow is no longer bulk: the next read takes the buffer path.
    fn splice_in<S: Stream + ?Sized>(
        &mut self,
        src: &mut S,
        src_ready: &mut Readiness,
        pools: &mut Pools<'_>,
    ) -> Option<io::Result<bool>> {
        let fd = src.splice_fd()?;
        match self.splice.fill(fd, pools.pipes) {
            Ok(None) => None,
            Ok(Some(0)) => {
                self.end = End::Reached;
                src_ready.readable = false;
                Some(Ok(true))
            }
            Ok(Some(n)) if n < pools.buffers.buffer_size() => {
                self.splice.small += 1;
                if self.splice.small >= QUIET_SPLICES {
                    self.splice.on = false;
                    self.splice.small = 0;
                    self.bulk = false;
                }
                Some(Ok(true))
            }
            Ok(Some(_)) => {
                self.splice.small = 0;
                Some(Ok(true))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Reads into fresh pool buffers: one, or several while the source keeps filling them.
    /// Ok(false) when the pool has no buffer to give. Two full reads in a row turn the
    /// splice path on, if `can_splice`.
    fn read<S: Stream + ?Sized>(
        &mut self,
        src: &mut S,
        src_ready: &mut Readiness,
        pool: &mut Pool,
        can_splice: bool,
    ) -> io::Result<bool> {
        // Gather only while the pool has plenty to spare.
        let want = if self.bulk && pool.free() > pool.capacity() / 4 {
            MAX_GATHER
        } else {
            1
        };
        let mut bufs: [Option<Buf>; MAX_GATHER] = Default::default();
        let mut got = 0;
        while got < want {
            match pool.take() {
                Some(buf) => {
                    bufs[got] = Some(buf);
                    got += 1;
                }
                None => break,
            }
        }
        if got == 0 {
            return Ok(false);
        }
        let asked = got * pool.buffer_size();
        let result = pool.read_into(&bufs[..got], |slices| src.read_vectored(slices));
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                bufs.iter_mut()
                    .filter_map(Option::take)
                    .for_each(|b| pool.give(b));
                return Err(e);
            }
        };
        let used = n.div_ceil(pool.buffer_size());
        bufs[used..]
            .iter_mut()
            .filter_map(Option::take)
            .for_each(|b| pool.give(b));
        if n == 0 {
            self.end = End::Reached;
            src_ready.readable = false;
            return Ok(true);
        }
        self.chain = Chain {
            bufs,
            held: used as u8,
            head: 0,
            tail: (n - (used - 1) * pool.buffer_size()) as u32,
            unchecked: false,
        };
        let full = n == asked;
        if full && self.bulk && can_splice {
            self.splice.on = true;
        }
        self.bulk = full;
        if n < asked && !src_ready.urgent {
            if src_ready.fin {
                // The receive queue is empty and the FIN was next in line.
                self.end = End::Reached;
                src_ready.readable = false;
            } else if !src_ready.read_closed {
                src_ready.readable = false;
            }
        }
        Ok(true)
    }

    /// Gives the buffers and the pipe back, dropping any bytes not yet written (the session
    /// is ending).
    pub fn release(&mut self, pools: &mut Pools<'_>) {
        self.chain.release(pools.buffers);
        self.splice.release(pools.pipes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::stream::scripted::{Read, Scripted};

    fn ready() -> Readiness {
        Readiness {
            readable: true,
            writable: true,
            ..Readiness::default()
        }
    }

    fn bytes(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    struct Rig {
        dir: Direction,
        src: Scripted,
        dst: Scripted,
        src_ready: Readiness,
        dst_ready: Readiness,
        pool: Pool,
        pipes: PipePool,
    }

    impl Rig {
        fn new(reads: impl IntoIterator<Item = Read>) -> Rig {
            Rig {
                dir: Direction::default(),
                src: Scripted::reading(reads),
                dst: Scripted::default(),
                src_ready: ready(),
                dst_ready: ready(),
                pool: Pool::new(1024, 16).expect("pool"),
                pipes: PipePool::disabled(),
            }
        }

        fn pump(&mut self, closing: bool) -> Result<Flow, Fault> {
            self.dir.pump(
                &mut self.src,
                &mut self.src_ready,
                &mut self.dst,
                &mut self.dst_ready,
                &mut Pools {
                    buffers: &mut self.pool,
                    pipes: &mut self.pipes,
                },
                closing,
                None,
            )
        }
    }

    #[test]
    fn bytes_cross_in_order_and_the_end_is_passed_on() {
        let (a, b) = (bytes(1, 700), bytes(2, 3000));
        let mut rig = Rig::new([Read::Data(a.clone()), Read::Data(b.clone()), Read::Eof]);
        // Short reads mean "empty for now": the test marks the source readable again.
        while !rig.dir.is_done() {
            assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
            rig.src_ready.readable = true;
        }
        assert_eq!(rig.dst.written, [a, b].concat());
        assert!(rig.dst.shut, "EOF passed on as shutdown(Write)");
        assert_eq!(rig.dir.moved(), 3700);
        assert_eq!(rig.pool.free(), 16, "every buffer back");
    }

    #[test]
    fn a_partial_write_keeps_the_rest_until_the_destination_drains() {
        let data = bytes(3, 900);
        let mut rig = Rig::new([Read::Data(data.clone())]);
        rig.dst.write_room = Some(100);
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert_eq!(rig.dst.written.len(), 100);
        assert!(
            !rig.dst_ready.writable,
            "a short write means the send buffer is full"
        );
        assert_eq!(rig.dir.buffers_held(), 1, "the rest waits in its buffer");
        // Still full: nothing is written, nothing more is read.
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert_eq!(rig.dst.written.len(), 100);
        // Drained.
        rig.dst.write_room = None;
        rig.dst_ready.writable = true;
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert_eq!(rig.dst.written, data);
        assert_eq!(
            rig.dir.buffers_held(),
            0,
            "the buffer went back once written"
        );
    }

    #[test]
    fn would_block_on_read_waits_for_the_next_edge() {
        let mut rig = Rig::new([Read::WouldBlock]);
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert!(!rig.src_ready.readable);
        assert_eq!(rig.pool.free(), 16);
    }

    #[test]
    fn an_empty_pool_stops_reading_and_asks_for_a_buffer() {
        let mut rig = Rig::new([Read::Data(bytes(4, 10))]);
        let taken: Vec<_> = (0..16).map(|_| rig.pool.take().expect("free")).collect();
        assert_eq!(rig.pump(false).expect("no fault"), Flow::NeedBuffer);
        assert_eq!(rig.src.read_calls, 0, "nothing read without a buffer");
        for b in taken {
            rig.pool.give(b);
        }
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert_eq!(rig.dst.written, bytes(4, 10));
    }

    #[test]
    fn a_reset_while_reading_is_the_sources_fault() {
        let mut rig = Rig::new([
            Read::Data(bytes(5, 64)),
            Read::Fail(io::ErrorKind::ConnectionReset),
        ]);
        // The first read fills less than asked: readable is cleared; the reset comes on the
        // next edge.
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        rig.src_ready.readable = true;
        match rig.pump(false) {
            Err(Fault::Source(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected a source fault, got {other:?}"),
        }
        assert_eq!(
            rig.dst.written,
            bytes(5, 64),
            "what came before the reset went through"
        );
    }

    #[test]
    fn a_failing_write_is_the_destinations_fault() {
        let mut rig = Rig::new([Read::Data(bytes(6, 64))]);
        rig.dst.write_error = Some(io::ErrorKind::BrokenPipe);
        match rig.pump(false) {
            Err(Fault::Destination(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected a destination fault, got {other:?}"),
        }
    }

    #[test]
    fn a_bulk_source_yields_after_its_turn_budget() {
        // Each read fills every buffer offered: the direction gathers, then yields.
        let chunks = (0..10).map(|i| Read::Data(bytes(i, 64 * 1024)));
        let mut rig = Rig::new(chunks);
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Yielded);
        assert_eq!(rig.src.read_calls, TURN_BUDGET as usize);
        assert!(rig.src_ready.readable, "work left: still readable");
    }

    #[test]
    fn after_a_clean_fin_a_short_read_is_the_end_without_another_read() {
        let data = bytes(7, 500);
        let mut rig = Rig::new([Read::Data(data.clone())]);
        rig.src_ready.fin = true;
        rig.src_ready.read_closed = true;
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert_eq!(rig.src.read_calls, 1, "EOF inferred from the short read");
        assert!(rig.dir.eof() && rig.dir.is_done());
        assert_eq!(rig.dst.written, data);
        assert_eq!(
            rig.dst.written_with_more, 1,
            "the last bytes ride with the FIN"
        );
        assert!(rig.dst.shut);
    }

    #[test]
    fn when_the_session_closes_next_the_end_is_left_to_the_close() {
        let mut rig = Rig::new([Read::Eof]);
        assert_eq!(rig.pump(true).expect("no fault"), Flow::Blocked);
        assert!(rig.dir.is_done());
        assert!(
            !rig.dst.shut,
            "no shutdown: closing the socket sends the FIN"
        );
    }

    #[test]
    fn urgent_data_keeps_reading_past_a_short_read() {
        let mut rig = Rig::new([
            Read::Data(bytes(8, 10)),
            Read::Data(bytes(9, 10)),
            Read::WouldBlock,
        ]);
        rig.src_ready.urgent = true;
        // Two short reads, and the source is still taken as readable: its turn ends.
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Yielded);
        assert_eq!(rig.dst.written, [bytes(8, 10), bytes(9, 10)].concat());
        assert_eq!(rig.pump(false).expect("no fault"), Flow::Blocked);
        assert!(!rig.src_ready.urgent, "cleared at WouldBlock");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod splice_tests;
