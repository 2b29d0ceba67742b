//! The splice path of a direction: bytes go socket → kernel pipe → socket with `splice(2)`
//! and never enter user space (the kernel moves page references instead of copying).
//!
//! [`Splice`] is the state one direction keeps for it: whether its reads go through a pipe
//! now, and the pipe while bytes sit in it (taken from the worker's [`PipePool`], given
//! back the moment it is empty). When and why a direction switches between this path and
//! the buffer path is decided in `direction.rs`; this module only moves bytes.
//!
//! What a splice call tells, and what it does not:
//! - Socket → pipe returns 0 at end of stream and `WouldBlock` when the receive queue is
//!   empty. A short count does **not** mean the queue is empty: the pipe may have run out
//!   of slots (one per socket buffer fragment), so unlike a short `read`, the caller must
//!   splice again to learn that.
//! - A splice never reads past TCP urgent data (the kernel stops at the urgent mark), so a
//!   source with urgent data pending is read with `recv` instead (which reads it in line),
//!   until [`urgent_pending`] says it has been read.
//! - Pipe → socket returning less than asked means the send buffer is full, as with `write`.
//!
//! Linux only; elsewhere the pipe pool is empty and these calls are never reached.

use crate::worker::pipes::{KernelPipe, PipePool};
use std::io;
use std::os::fd::RawFd;

/// The splice path's state in one direction.
#[derive(Debug, Default)]
pub struct Splice {
    /// Reads go through a pipe: the flow is bulk.
    pub on: bool,
    /// Splices in a row that brought less than a buffer's worth.
    pub small: u8,
    /// The pipe, held only while bytes sit in it.
    pipe: Option<KernelPipe>,
    /// Bytes in the pipe.
    held: usize,
    /// Bytes written out of pipes so far.
    spliced: u64,
}

impl Splice {
    /// Bytes sit in the pipe.
    pub fn holds_bytes(&self) -> bool {
        self.held > 0
    }

    /// Bytes in the pipe.
    pub fn held(&self) -> usize {
        self.held
    }

    /// A pipe is held (exactly while bytes sit in it).
    pub fn holds_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// Bytes written out of pipes so far.
    pub fn spliced(&self) -> u64 {
        self.spliced
    }

    /// Splices what `src` has (up to a pipe's worth) into a pipe from `pipes`. `Ok(None)`
    /// when no pipe can be had; `Ok(Some(0))` at end of stream.
    pub fn fill(&mut self, src: RawFd, pipes: &mut PipePool) -> io::Result<Option<usize>> {
        debug_assert!(self.held == 0, "a pipe is filled only when empty");
        let Some(pipe) = self.pipe.take().or_else(|| pipes.take()) else {
            return Ok(None);
        };
        match socket_to_pipe(src, &pipe, pipe.size()) {
            Ok(0) => {
                pipes.give(pipe);
                Ok(Some(0))
            }
            Ok(n) => {
                self.held = n;
                self.pipe = Some(pipe);
                Ok(Some(n))
            }
            Err(e) => {
                // A failed splice moved nothing: the pipe is still empty.
                pipes.give(pipe);
                Err(e)
            }
        }
    }

    /// Splices the pipe's bytes out to `dst`; gives the pipe back once it is empty. Returns
    /// the bytes written.
    pub fn drain(&mut self, dst: RawFd, pipes: &mut PipePool) -> io::Result<usize> {
        let Some(pipe) = &self.pipe else {
            return Ok(0);
        };
        let n = pipe_to_socket(pipe, dst, self.held)?;
        self.held -= n.min(self.held);
        self.spliced += n as u64;
        if self.held == 0 {
            if let Some(pipe) = self.pipe.take() {
                pipes.give(pipe);
            }
        }
        Ok(n)
    }

    /// Gives the pipe back: to be reused if empty, else closed (its bytes are dropped: the
    /// session is ending).
    pub fn release(&mut self, pipes: &mut PipePool) {
        if let Some(pipe) = self.pipe.take() {
            if self.held == 0 {
                pipes.give(pipe);
            } else {
                pipes.discard(pipe);
            }
        }
        self.held = 0;
    }
}

/// Whether the socket still has TCP urgent data not yet read (`POLLPRI`, which the kernel
/// reports until the urgent byte has been read past). One `poll` call, made only while a
/// spliced direction is reading past urgent data.
#[cfg(target_os = "linux")]
pub fn urgent_pending(socket: RawFd) -> bool {
    let mut fd = libc::pollfd {
        fd: socket,
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we pass, which outlives the call; a zero
    // timeout never blocks.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    // On failure, say pending: the caller then keeps reading with recv, which is always safe.
    n != 0 && (n < 0 || fd.revents & libc::POLLPRI != 0)
}

#[cfg(not(target_os = "linux"))]
pub fn urgent_pending(_socket: RawFd) -> bool {
    true
}

/// Moves up to `len` bytes from a socket's receive queue into a pipe.
#[cfg(target_os = "linux")]
fn socket_to_pipe(socket: RawFd, pipe: &KernelPipe, len: usize) -> io::Result<usize> {
    splice(socket, pipe.write_fd(), len)
}

/// Moves up to `len` bytes from a pipe into a socket's send queue.
#[cfg(target_os = "linux")]
fn pipe_to_socket(pipe: &KernelPipe, socket: RawFd, len: usize) -> io::Result<usize> {
    splice(pipe.read_fd(), socket, len)
}

#[cfg(target_os = "linux")]
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice takes two descriptors (both open: the caller owns them for the call),
    // null offsets (neither is a file) and a length; it touches no memory of ours.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(not(target_os = "linux"))]
fn socket_to_pipe(_socket: RawFd, _pipe: &KernelPipe, _len: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(not(target_os = "linux"))]
fn pipe_to_socket(_pipe: &KernelPipe, _socket: RawFd, _len: usize) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}
