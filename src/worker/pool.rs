//! The fixed-size buffer pool: one arena allocated up front, a free list, buffer handles.
//!
//! Every byte tcplb moves passes through a buffer from here. The arena is one zeroed
//! allocation made at start, so the pool can never grow past its cap, and the kernel maps
//! its pages only when they are first written: a pool of 56 MiB costs nothing until traffic
//! touches it. The allocation is fallible: a pool the machine cannot provide is a clear
//! start-up error, not an abort.
//!
//! The free list is a stack of returned buffers plus a count of buffers never handed out
//! (taken in index order when the stack is empty). The stack's room is reserved up front but
//! written only as buffers come back, so it too costs memory only in proportion to the
//! buffers ever used at once. Buffers handed out are the most recently returned (already
//! resident and warm in cache), so a lightly loaded balancer keeps touching the same few
//! pages.

use std::alloc::{self, Layout};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::num::NonZeroU32;

/// A handle to one buffer of the pool. Deliberately neither `Clone` nor `Copy`: a handle is
/// owned by exactly one pipe and goes back with [`Pool::give`].
///
/// Stores the index plus one, so `Option<Buf>` is four bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Buf(NonZeroU32);

impl Buf {
    fn new(index: u32) -> Buf {
        Buf(NonZeroU32::MIN.saturating_add(index))
    }

    fn index(&self) -> usize {
        self.0.get() as usize - 1
    }
}

pub struct Pool {
    arena: Box<[u8]>,
    buffer_size: usize,
    /// Buffers given back, most recent last. Its capacity (every buffer) is reserved at start.
    returned: Vec<u32>,
    /// Buffers `fresh..count` have never been handed out.
    fresh: u32,
    count: u32,
}

/// The pool could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// Zero buffers, zero-sized buffers, or more than the handles can count.
    BadSize { buffer_size: usize, count: usize },
    /// The allocator refused the arena or the free list.
    OutOfMemory { bytes: usize },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::BadSize { buffer_size, count } => {
                write!(
                    f,
                    "a pool of {count} buffers of {buffer_size} bytes is not possible"
                )
            }
            PoolError::OutOfMemory { bytes } => write!(
                f,
                "cannot allocate the buffer pool ({} MiB): not enough memory; lower --buffers \
                 or --buffer-size",
                bytes >> 20
            ),
        }
    }
}

impl std::error::Error for PoolError {}

impl Pool {
    /// Allocates `count` buffers of `buffer_size` bytes each, all free.
    pub fn new(buffer_size: usize, count: usize) -> Result<Pool, PoolError> {
        let bad = PoolError::BadSize { buffer_size, count };
        if buffer_size == 0 || count == 0 || count >= u32::MAX as usize {
            return Err(bad);
        }
        let bytes = buffer_size.checked_mul(count).ok_or(bad.clone())?;
        let arena = zeroed_arena(bytes).ok_or(PoolError::OutOfMemory { bytes })?;
        let mut returned = Vec::new();
        returned
            .try_reserve_exact(count)
            .map_err(|_| PoolError::OutOfMemory { bytes })?;
        Ok(Pool {
            arena,
            buffer_size,
            returned,
            fresh: 0,
            count: count as u32,
        })
    }

    /// Takes a free buffer, or `None` when all are in use.
    #[inline]
    pub fn take(&mut self) -> Option<Buf> {
        if let Some(index) = self.returned.pop() {
            return Some(Buf::new(index));
        }
        if self.fresh < self.count {
            self.fresh += 1;
            return Some(Buf::new(self.fresh - 1));
        }
        None
    }

    /// Returns a buffer to the pool.
    #[inline]
    pub fn give(&mut self, buf: Buf) {
        let index = buf.index() as u32;
        debug_assert!(
            !self.returned.contains(&index),
            "buffer {index} given twice"
        );
        // Never reallocates: the room for every buffer was reserved at start.
        self.returned.push(index);
    }

    /// The bytes of a buffer.
    #[inline]
    pub fn bytes(&self, buf: &Buf) -> &[u8] {
        let start = buf.index() * self.buffer_size;
        &self.arena[start..start + self.buffer_size]
    }

    /// The bytes of a buffer, writable.
    #[inline]
    pub fn bytes_mut(&mut self, buf: &Buf) -> &mut [u8] {
        let start = buf.index() * self.buffer_size;
        &mut self.arena[start..start + self.buffer_size]
    }

    /// Hands `bufs` (one to four buffers, in order) to `read` as one scatter list and
    /// returns what it returned: the bytes read into them.
    pub fn read_into(
        &mut self,
        bufs: &[Option<Buf>],
        read: impl FnOnce(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let size = self.buffer_size;
        let range = |b: &Option<Buf>| match b {
            Some(b) => Ok(b.index() * size..(b.index() + 1) * size),
            None => Err(io::Error::other("no buffer in that place")),
        };
        let overlap = |_| io::Error::other("buffers overlap");
        match bufs {
            [a] => read(&mut [IoSliceMut::new(&mut self.arena[range(a)?])]),
            [a, b] => {
                let [x, y] = self
                    .arena
                    .get_disjoint_mut([range(a)?, range(b)?])
                    .map_err(overlap)?;
                read(&mut [IoSliceMut::new(x), IoSliceMut::new(y)])
            }
            [a, b, c] => {
                let [x, y, z] = self
                    .arena
                    .get_disjoint_mut([range(a)?, range(b)?, range(c)?])
                    .map_err(overlap)?;
                read(&mut [IoSliceMut::new(x), IoSliceMut::new(y), IoSliceMut::new(z)])
            }
            [a, b, c, d] => {
                let [w, x, y, z] = self
                    .arena
                    .get_disjoint_mut([range(a)?, range(b)?, range(c)?, range(d)?])
                    .map_err(overlap)?;
                read(&mut [
                    IoSliceMut::new(w),
                    IoSliceMut::new(x),
                    IoSliceMut::new(y),
                    IoSliceMut::new(z),
                ])
            }
            _ => Err(io::Error::other("read_into takes one to four buffers")),
        }
    }

    pub fn buffer_size(&self) -> usize {
        self.buffer_size
    }

    /// Buffers in the pool, free or not.
    pub fn capacity(&self) -> usize {
        self.count as usize
    }

    /// Buffers free right now.
    pub fn free(&self) -> usize {
        self.returned.len() + (self.count - self.fresh) as usize
    }

    /// Buffers held by pipes right now.
    pub fn used(&self) -> usize {
        self.capacity() - self.free()
    }
}

/// A zeroed arena of `bytes` bytes, or `None` if the allocator refuses. Zeroed memory this
/// large comes straight from the kernel as an anonymous mapping: resident only once written.
fn zeroed_arena(bytes: usize) -> Option<Box<[u8]>> {
    let layout = Layout::array::<u8>(bytes).ok()?;
    if layout.size() == 0 {
        return None;
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[u8; bytes]`
    // (align 1), is zero-initialised and owned by nobody else; that is the layout a
    // `Box<[u8]>` of that length deallocates with.
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, bytes)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_until_empty_then_reuse() {
        let mut pool = Pool::new(1024, 3).expect("pool");
        assert_eq!((pool.capacity(), pool.free(), pool.used()), (3, 3, 0));
        let a = pool.take().expect("first");
        let b = pool.take().expect("second");
        let c = pool.take().expect("third");
        assert_eq!(pool.take(), None, "the pool never grows past its cap");
        assert_eq!(pool.used(), 3);
        pool.give(b);
        let again = pool.take().expect("a returned buffer is reused");
        assert_eq!(again, Buf::new(1));
        for buf in [a, again, c] {
            pool.give(buf);
        }
        assert_eq!(pool.free(), 3);
    }

    #[test]
    fn buffers_are_disjoint_and_full_size() {
        let mut pool = Pool::new(4096, 4).expect("pool");
        let bufs: Vec<Buf> = (0..4).map(|_| pool.take().expect("free")).collect();
        for (i, buf) in bufs.iter().enumerate() {
            let bytes = pool.bytes_mut(buf);
            assert_eq!(bytes.len(), 4096);
            bytes.fill(i as u8 + 1);
        }
        for (i, buf) in bufs.iter().enumerate() {
            assert!(pool.bytes(buf).iter().all(|&b| b == i as u8 + 1));
        }
        for buf in bufs {
            pool.give(buf);
        }
    }

    #[test]
    fn read_into_fills_buffers_in_order() {
        let mut pool = Pool::new(1024, 8).expect("pool");
        let bufs = [pool.take(), pool.take(), pool.take()];
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut src = &data[..];
        let n = pool
            .read_into(&bufs, |slices| {
                std::io::Read::read_vectored(&mut src, slices)
            })
            .expect("read");
        assert_eq!(n, 2500);
        let got: Vec<u8> = bufs
            .iter()
            .flatten()
            .flat_map(|b| pool.bytes(b).to_vec())
            .take(2500)
            .collect();
        assert_eq!(got, data);
        for buf in bufs.into_iter().flatten() {
            pool.give(buf);
        }
        assert!(pool.read_into(&[None], |_| Ok(0)).is_err());
    }

    #[test]
    fn impossible_pools_are_errors_not_aborts() {
        assert!(matches!(Pool::new(0, 4), Err(PoolError::BadSize { .. })));
        assert!(matches!(Pool::new(1024, 0), Err(PoolError::BadSize { .. })));
        // More than any allocator gives: refused cleanly.
        let err = Pool::new(1 << 20, (u32::MAX - 1) as usize).err();
        assert!(
            matches!(err, Some(PoolError::OutOfMemory { .. })),
            "{err:?}"
        );
        assert!(err.expect("error").to_string().contains("--buffers"));
    }

    #[test]
    fn most_recently_returned_is_handed_out_first() {
        let mut pool = Pool::new(1024, 8).expect("pool");
        let first = pool.take().expect("free");
        assert_eq!(first, Buf::new(0));
        pool.give(first);
        // Lightly loaded: the same warm buffer again and again.
        for _ in 0..100 {
            let buf = pool.take().expect("free");
            assert_eq!(buf, Buf::new(0));
            pool.give(buf);
        }
    }
}
