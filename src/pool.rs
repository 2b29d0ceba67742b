//! The fixed-size buffer pool: one arena allocated up front, a free list, buffer handles.
//!
//! Every byte tcplb moves passes through a buffer from here. The arena is one zeroed
//! allocation made at start, so the pool can never grow past its cap, and the kernel maps
//! its pages only when they are first written: a pool of 56 MiB costs nothing until traffic
//! touches it. The free list is a stack, so the buffers handed out are the most recently
//! used (already resident and warm in cache) and a lightly loaded balancer keeps touching the
//! same few pages.

use std::io::{self, IoSliceMut, Read};
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
    free: Vec<u32>,
}

impl Pool {
    /// Allocates `count` buffers of `buffer_size` bytes each, all free.
    pub fn new(buffer_size: usize, count: usize) -> Pool {
        assert!(buffer_size > 0 && count > 0 && count < u32::MAX as usize);
        // vec![0; n] asks the allocator for zeroed memory: for an arena this size that is a
        // fresh anonymous mapping, resident only once written.
        let arena = vec![0u8; buffer_size * count].into_boxed_slice();
        // Reverse order so that buffer 0 is handed out first.
        let free = (0..count as u32).rev().collect();
        Pool {
            arena,
            buffer_size,
            free,
        }
    }

    /// Takes a free buffer, or `None` when all are in use.
    #[inline]
    pub fn take(&mut self) -> Option<Buf> {
        self.free.pop().map(Buf::new)
    }

    /// Returns a buffer to the pool.
    #[inline]
    pub fn give(&mut self, buf: Buf) {
        let index = buf.index() as u32;
        debug_assert!(!self.free.contains(&index), "buffer {index} given twice");
        self.free.push(index);
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

    /// Reads from `src` into `bufs` in order (one `readv` for several buffers); returns the
    /// bytes read. Up to four buffers.
    pub fn read_into(&mut self, bufs: &[Option<Buf>], src: &mut impl Read) -> io::Result<usize> {
        let size = self.buffer_size;
        let range = |b: &Option<Buf>| match b {
            Some(b) => Ok(b.index() * size..(b.index() + 1) * size),
            None => Err(io::Error::other("no buffer in that place")),
        };
        let overlap = |_| io::Error::other("buffers overlap");
        match bufs {
            [a] => src.read(&mut self.arena[range(a)?]),
            [a, b] => {
                let [x, y] = self
                    .arena
                    .get_disjoint_mut([range(a)?, range(b)?])
                    .map_err(overlap)?;
                src.read_vectored(&mut [IoSliceMut::new(x), IoSliceMut::new(y)])
            }
            [a, b, c] => {
                let [x, y, z] = self
                    .arena
                    .get_disjoint_mut([range(a)?, range(b)?, range(c)?])
                    .map_err(overlap)?;
                src.read_vectored(&mut [IoSliceMut::new(x), IoSliceMut::new(y), IoSliceMut::new(z)])
            }
            [a, b, c, d] => {
                let [w, x, y, z] = self
                    .arena
                    .get_disjoint_mut([range(a)?, range(b)?, range(c)?, range(d)?])
                    .map_err(overlap)?;
                src.read_vectored(&mut [
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
        self.arena.len() / self.buffer_size
    }

    /// Buffers free right now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Buffers held by pipes right now.
    pub fn used(&self) -> usize {
        self.capacity() - self.free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_until_empty_then_reuse() {
        let mut pool = Pool::new(1024, 3);
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
        let mut pool = Pool::new(4096, 4);
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
        let mut pool = Pool::new(1024, 8);
        let bufs = [pool.take(), pool.take(), pool.take()];
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let n = pool.read_into(&bufs, &mut &data[..]).expect("read");
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
        assert!(pool.read_into(&[None], &mut &data[..]).is_err());
    }

    #[test]
    fn most_recently_returned_is_handed_out_first() {
        let mut pool = Pool::new(1024, 8);
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
