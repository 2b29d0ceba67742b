//! The kernel pipe pool: the splice path's counterpart of the buffer pool.
//!
//! A direction on the splice path moves bytes socket → pipe → socket with `splice(2)`, so
//! the bytes never enter user space; the pipe is where they wait in between. Like a pool
//! buffer, a pipe is taken only while bytes sit in it and given back the moment it is
//! empty, so idle sessions hold none, and the pool never grows past `--pipes` (each pipe is
//! two descriptors, budgeted at start with the sessions' own).
//!
//! Pipes are made on first use (`pipe2`, non-blocking, grown to [`PIPE_SIZE`]) and kept
//! for reuse, most recently returned first; a lightly loaded balancer makes only a few. A pipe that still holds
//! bytes when its session ends cannot be reused (its bytes would leak into the next
//! session): it is closed, and a fresh one is made when next needed. When no pipe can be
//! had (all in use, or the kernel refuses a new one) the caller moves the bytes through
//! pool buffers instead: a pipe is an optimisation, never a reason to wait or fail.
//!
//! Only Linux has `splice`; elsewhere the pool is always empty.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The size asked of each pipe (`F_SETPIPE_SZ`). Measured through `scripts/bench.sh`'s bulk
/// load (ab, four concurrent 64 MiB downloads from nginx, medians of five interleaved runs
/// on a busy 2-core machine), CPU per 64 MiB of the proxy / the backend / the client:
/// 64 KiB (the kernel's default) 28 / 11 / 21 ms; 256 KiB 24 / 12 / 21 ms, as many MB/s;
/// 1 MiB 16 / 18 / 35 ms, a quarter fewer MB/s and less even sessions. Bigger pipes hand the
/// destination more at once, which lowers the proxy's own CPU, but past 256 KiB that
/// mostly moves work onto the peers (on loopback the sender's socket pays for the receiver;
/// a large queued burst is sent from the receiver's acknowledgements instead) and the
/// machine as a whole does more. 256 KiB is also what lets an unprivileged user's pipe
/// quota (64 MiB, `/proc/sys/fs/pipe-user-pages-soft`) hold the default 256 pipes, and what
/// a stalled reader pins at most in its direction's pipe (on top of the socket buffers the
/// kernel keeps for any connection).
pub const PIPE_SIZE: usize = 256 * 1024;

/// A pipe smaller than this is not worth splicing through (the kernel gives 8 KiB pipes to
/// a user past its pipe quota, `/proc/sys/fs/pipe-user-pages-soft`): the pool stops making
/// pipes once it gets one.
const MIN_PIPE_SIZE: usize = 64 * 1024;

/// A kernel pipe, owned by one direction while bytes sit in it. Deliberately not `Clone`:
/// it goes back with [`PipePool::give`] (empty) or [`PipePool::discard`].
#[derive(Debug)]
pub struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the pipe holds at most, in bytes (`F_GETPIPE_SZ`).
    size: u32,
}

impl KernelPipe {
    /// The end bytes are spliced out of.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The end bytes are spliced into.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// What the pipe holds at most, in bytes.
    pub fn size(&self) -> usize {
        self.size as usize
    }
}

/// A worker's pipes: at most `capacity`, made on demand.
#[derive(Debug)]
pub struct PipePool {
    /// Made and empty, most recently returned last. Room for every pipe is reserved at start.
    free: Vec<KernelPipe>,
    /// Pipes not made yet (or closed after a session ended with bytes in them).
    unmade: usize,
    capacity: usize,
    /// Size asked of each new pipe (`F_SETPIPE_SZ`); `None` keeps the kernel's (64 KiB).
    size: Option<usize>,
    /// Pipes the kernel refused to make (`EMFILE`, `ENFILE`, ...), not yet reported.
    refused: u64,
    last_refusal: Option<io::Error>,
}

impl PipePool {
    /// A pool of up to `capacity` pipes (none on platforms without `splice`), each of the
    /// kernel's default size or, with `size`, as close to it as the kernel allows.
    pub fn new(capacity: usize, size: Option<usize>) -> PipePool {
        let capacity = if cfg!(target_os = "linux") {
            capacity
        } else {
            0
        };
        PipePool {
            free: Vec::with_capacity(capacity),
            unmade: capacity,
            capacity,
            size,
            refused: 0,
            last_refusal: None,
        }
    }

    /// A pool without pipes: every direction stays on the buffer path.
    pub fn disabled() -> PipePool {
        PipePool::new(0, None)
    }

    /// Takes an empty pipe: a free one, else a new one while under the cap. `None` when all
    /// are in use or the kernel will not make another (counted; see [`Self::take_refusals`]).
    #[inline]
    pub fn take(&mut self) -> Option<KernelPipe> {
        if let Some(pipe) = self.free.pop() {
            return Some(pipe);
        }
        if self.unmade == 0 {
            return None;
        }
        match make(self.size) {
            Ok(pipe) if pipe.size() >= MIN_PIPE_SIZE => {
                self.unmade -= 1;
                Some(pipe)
            }
            Ok(small) => {
                // Over the user's pipe quota: no pipe made from now on would be bigger.
                self.refused += 1;
                self.last_refusal = Some(io::Error::other(format!(
                    "the kernel gave a {}-byte pipe: this user's pipe quota is used up \
                     (/proc/sys/fs/pipe-user-pages-soft); no more pipes are made, {} stay \
                     in use",
                    small.size(),
                    self.capacity - self.unmade
                )));
                self.capacity -= self.unmade;
                self.unmade = 0;
                None
            }
            Err(e) => {
                self.refused += 1;
                self.last_refusal = Some(e);
                None
            }
        }
    }

    /// Gives back a pipe that holds no bytes.
    #[inline]
    pub fn give(&mut self, pipe: KernelPipe) {
        // Never reallocates: the room for every pipe was reserved at start.
        self.free.push(pipe);
    }

    /// Closes a pipe that may still hold bytes; a fresh one will be made in its place.
    pub fn discard(&mut self, pipe: KernelPipe) {
        drop(pipe);
        self.unmade += 1;
    }

    /// Pipes in the pool, in use or not (made or not).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pipes held by directions right now.
    pub fn used(&self) -> usize {
        self.capacity - self.free.len() - self.unmade
    }

    /// Pipes a direction could take right now (made or still to be made).
    pub fn free(&self) -> usize {
        self.capacity - self.used()
    }

    /// How many pipes the kernel refused to make since the last call, and the last error.
    pub fn take_refusals(&mut self) -> Option<(u64, io::Error)> {
        let error = self.last_refusal.take()?;
        let n = std::mem::take(&mut self.refused);
        Some((n, error))
    }
}

/// Makes a non-blocking pipe, sized if asked, and reads back the size it got.
#[cfg(target_os = "linux")]
fn make(size: Option<usize>) -> io::Result<KernelPipe> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass, which outlives the call.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if let Some(bytes) = size {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int. Best effort:
        // past /proc/sys/fs/pipe-max-size (or the user's pipe quota) the kernel refuses and
        // the pipe keeps its size, read back below.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    }
    // SAFETY: fcntl on a descriptor we own; F_GETPIPE_SZ takes no argument.
    let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if got <= 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(KernelPipe {
        read,
        write,
        size: got as u32,
    })
}

#[cfg(not(target_os = "linux"))]
fn make(_size: Option<usize>) -> io::Result<KernelPipe> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_made_on_demand_reused_and_capped() {
        let mut pipes = PipePool::new(2, None);
        assert_eq!((pipes.capacity(), pipes.used(), pipes.free()), (2, 0, 2));
        let a = pipes.take().expect("first");
        let b = pipes.take().expect("second");
        assert!(pipes.take().is_none(), "never past the cap");
        assert_eq!((pipes.used(), pipes.free()), (2, 0));
        assert!(a.size() >= 4096, "a pipe holds at least a page");
        let fd = b.read_fd();
        pipes.give(b);
        let again = pipes.take().expect("a returned pipe is reused");
        assert_eq!(again.read_fd(), fd, "the most recently returned first");
        pipes.give(again);
        pipes.discard(a);
        assert_eq!((pipes.used(), pipes.free()), (0, 2));
        // A discarded pipe is replaced by a fresh one when needed.
        let c = pipes.take().expect("made again");
        let d = pipes.take().expect("the free one");
        assert!(pipes.take().is_none());
        pipes.give(c);
        pipes.give(d);
        assert!(pipes.take_refusals().is_none());
    }

    #[test]
    fn a_pipe_is_sized_and_its_size_read_back() {
        let mut pipes = PipePool::new(1, Some(PIPE_SIZE));
        let pipe = pipes.take().expect("pipe");
        // Unprivileged users near their pipe quota get less: read back, not assumed.
        assert!(pipe.size() >= MIN_PIPE_SIZE && pipe.size() <= PIPE_SIZE);
        pipes.give(pipe);
        let mut pipes = PipePool::new(1, Some(128 * 1024));
        let pipe = pipes.take().expect("pipe");
        assert!(pipe.size() <= 128 * 1024);
        pipes.give(pipe);
    }

    #[test]
    fn a_pipe_too_small_to_be_worth_it_stops_the_pool_making_more() {
        // As the kernel does past the user's pipe quota: an 8 KiB pipe.
        let mut pipes = PipePool::new(3, Some(8192));
        assert!(pipes.take().is_none());
        let (n, e) = pipes.take_refusals().expect("reported");
        assert_eq!(n, 1);
        assert!(e.to_string().contains("pipe-user-pages-soft"), "{e}");
        assert_eq!((pipes.capacity(), pipes.used(), pipes.free()), (0, 0, 0));
        assert!(pipes.take().is_none());
    }

    #[test]
    fn a_disabled_pool_has_no_pipes() {
        let mut pipes = PipePool::disabled();
        assert!(pipes.take().is_none());
        assert_eq!((pipes.capacity(), pipes.used(), pipes.free()), (0, 0, 0));
    }
}
