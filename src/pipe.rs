//! One direction of a session: read from a source socket into a pooled buffer, write it out
//! to the destination, pass the end of stream on as `shutdown(Write)`.
//!
//! A pipe holds a buffer only while it has bytes in flight: it takes one when the source is
//! readable and gives it back the moment it is written out. With no free buffer it stops
//! reading (backpressure) and reports [`Flow::NeedBuffer`]; with a full destination it keeps
//! its buffer and stops reading until the destination drains.
//!
//! Readiness is edge-triggered and remembered in user space ([`Readiness`]): the pipe reads
//! and writes until the kernel says `WouldBlock`, with two safe shortcuts that each save a
//! syscall per wake-up. A read that returns less than asked means the receive queue is empty
//! (any byte arriving later raises a new edge), unless the peer's FIN was already reported,
//! in which case one more read collects the EOF. A write that takes less than offered means
//! the send buffer is full (the kernel raises a new edge when it drains).

use crate::pool::{Buf, Pool};
use mio::event::Event;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::Shutdown;

/// Buffers' worth of bytes one pipe may move per turn before it lets other sessions run.
const TURN_BUDGET: u32 = 8;

/// What the reactor has observed about one socket since the pipe last hit `WouldBlock`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or a hang-up) has been reported: reading will reach EOF.
    pub read_closed: bool,
}

impl Readiness {
    /// Folds an event in. Errors and hang-ups count as both readable and writable, so the
    /// next read or write meets the error and reports it.
    pub fn observe(&mut self, event: &Event) {
        let failed = event.is_error();
        self.readable |= event.is_readable() || event.is_read_closed() || failed;
        self.writable |= event.is_writable() || event.is_write_closed() || failed;
        self.read_closed |= event.is_read_closed();
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
}

/// A socket error, by the side it came from.
#[derive(Debug)]
pub enum Fault {
    /// Reading the source failed (typically a reset).
    Source(io::Error),
    /// Writing to (or shutting down) the destination failed.
    Destination(io::Error),
}

#[derive(Debug, Default)]
pub struct Pipe {
    buf: Option<Buf>,
    /// Bytes `head..tail` of `buf` are read but not yet written.
    head: u32,
    tail: u32,
    /// The source has reached end of stream.
    eof: bool,
    /// The destination has been told (or will be, by closing it) that no more bytes come.
    shut: bool,
    /// Bytes written to the destination so far.
    moved: u64,
}

impl Pipe {
    /// Bytes written to the destination so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// The source has reached end of stream.
    pub fn eof(&self) -> bool {
        self.eof
    }

    /// Every byte is delivered and the end of stream passed on.
    pub fn is_done(&self) -> bool {
        self.shut && self.buf.is_none()
    }

    /// Whether a buffer is held.
    pub fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }

    /// Moves bytes from `src` to `dst` until both block. `closing` says the session closes
    /// as soon as this pipe is done, so the end of stream need not be sent with `shutdown`:
    /// closing the socket sends it.
    pub fn pump(
        &mut self,
        src: &mut TcpStream,
        src_ready: &mut Readiness,
        dst: &mut TcpStream,
        dst_ready: &mut Readiness,
        pool: &mut Pool,
        closing: bool,
    ) -> Result<Flow, Fault> {
        let mut budget = TURN_BUDGET;
        loop {
            if let Some(buf) = &self.buf {
                if !dst_ready.writable {
                    return Ok(Flow::Blocked);
                }
                let pending = &pool.bytes(buf)[self.head as usize..self.tail as usize];
                match dst.write(pending) {
                    Ok(n) => {
                        self.moved += n as u64;
                        self.head += n as u32;
                        if self.head < self.tail {
                            dst_ready.writable = false;
                            return Ok(Flow::Blocked);
                        }
                        if let Some(buf) = self.buf.take() {
                            pool.give(buf);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst_ready.writable = false;
                        return Ok(Flow::Blocked);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Fault::Destination(e)),
                }
            }

            if self.eof {
                if !self.shut {
                    if !closing {
                        match dst.shutdown(Shutdown::Write) {
                            Ok(()) => {}
                            // The peer is already gone; closing will tell the rest.
                            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                            Err(e) => return Err(Fault::Destination(e)),
                        }
                    }
                    self.shut = true;
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
            let Some(buf) = pool.take() else {
                return Ok(Flow::NeedBuffer);
            };
            let space = pool.bytes_mut(&buf);
            let capacity = space.len();
            match src.read(space) {
                Ok(0) => {
                    pool.give(buf);
                    self.eof = true;
                    src_ready.readable = false;
                }
                Ok(n) => {
                    if n < capacity && !src_ready.read_closed {
                        src_ready.readable = false;
                    }
                    self.buf = Some(buf);
                    self.head = 0;
                    self.tail = n as u32;
                }
                Err(e) => {
                    pool.give(buf);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            src_ready.readable = false;
                            return Ok(Flow::Blocked);
                        }
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(Fault::Source(e)),
                    }
                }
            }
        }
    }

    /// Gives the buffer back, dropping any bytes not yet written (the session is ending).
    pub fn release(&mut self, pool: &mut Pool) {
        if let Some(buf) = self.buf.take() {
            pool.give(buf);
        }
    }
}
