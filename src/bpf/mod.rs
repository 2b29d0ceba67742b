//! The kernel fast path (`--bpf-redirect`, Linux): established sessions' sockets go into a
//! SOCKHASH whose `sk_skb` stream-verdict program ([`program`]) hands each segment that
//! arrives on one socket straight to its peer's send side, so tcplb's loop never wakes for
//! it. Loaded once per process with raw `bpf(2)` calls ([`sys`]); if that fails (no
//! privilege, an old kernel, a container without `CAP_BPF`), tcplb says so once and runs
//! on the user-space path.
//!
//! One [`Record`] per socket, in an array shared with user space (mmap), says where its
//! bytes go and counts them: `redirected` (by the kernel), `passed` (to user space),
//! `forwarded` (by user space, of those passed), `written` (bytes user space has written
//! into the peer socket), `stamp` (the last segment's time, for the idle timeout). User
//! space ([`Link`]) never takes a socket out of the map (that would drop bytes the kernel
//! still holds for it): a session stays linked until it closes, and any part of it that
//! needs user space (bytes passed past the memory bound, an end of stream, an error) is
//! handled there, after every byte redirected before it has left (see [`Link::drained`]).

pub mod btf;
mod program;
mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What the kernel and user space know about one socket of a linked session and the bytes
/// that arrive on it (64 bytes, one cache line). Written by the program (redirected,
/// passed, stamp) and by user space (the rest); the array is mapped into both.
#[repr(C, align(64))]
pub struct Record {
    /// Slot of the socket this one's bytes go to.
    pub peer: AtomicU32,
    _pad: u32,
    /// Bytes the kernel redirected to the peer.
    pub redirected: AtomicU64,
    /// Bytes the program passed up to user space.
    pub passed: AtomicU64,
    /// Of those, bytes user space has written to the peer.
    pub forwarded: AtomicU64,
    /// Bytes user space has written into the peer socket (its payload count).
    pub written: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds of the last segment seen.
    pub stamp: AtomicU64,
    /// What the peer socket's kernel count (acknowledged + queued) is ahead of `written`:
    /// its SYN, a PROXY protocol header (fixed at link time).
    pub offset: AtomicU64,
    /// `written` when the session was linked (so `written - linked_at` is what user space
    /// has forwarded since).
    pub linked_at: AtomicU64,
}

/// Byte offsets of [`Record`]'s fields, for the program.
pub mod record {
    pub const PEER: usize = std::mem::offset_of!(super::Record, peer);
    pub const REDIRECTED: usize = std::mem::offset_of!(super::Record, redirected);
    pub const PASSED: usize = std::mem::offset_of!(super::Record, passed);
    pub const FORWARDED: usize = std::mem::offset_of!(super::Record, forwarded);
    pub const WRITTEN: usize = std::mem::offset_of!(super::Record, written);
    pub const STAMP: usize = std::mem::offset_of!(super::Record, stamp);
}

const RECORD_SIZE: usize = std::mem::size_of::<Record>();
const _: () = assert!(RECORD_SIZE == 64);

/// `SO_COOKIE`: the socket's 64-bit id, the same one `bpf_get_socket_cookie` returns.
const SO_COOKIE: libc::c_int = 57;

/// The loaded program and its maps. Shared by every worker; each worker links sessions in
/// its own range of slots.
pub struct FastPath {
    /// The verdict program (kept open: attached to `socks` for as long as we live).
    prog: Option<OwnedFd>,
    socks: OwnedFd,
    slots: OwnedFd,
    _records_fd: OwnedFd,
    records: NonNull<Record>,
    mapped: usize,
    capacity: u32,
}

// SAFETY: the mapped records are only ever touched through atomics (`Record`'s fields), and
// the mapping lives as long as the FastPath.
unsafe impl Send for FastPath {}
// SAFETY: as above.
unsafe impl Sync for FastPath {}

impl FastPath {
    /// Loads the program for up to `sessions` linked sessions at once (two slots each).
    pub fn load(sessions: u32, bound: u64) -> io::Result<FastPath> {
        let capacity = sessions.saturating_mul(2).max(2);
        let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| io::Error::new(e.kind(), format!("no kernel type information: {e}")))?;
        let bytes_acked = btf::member_offset(&vmlinux, "tcp_sock", "bytes_acked")?;
        let socks = sys::map_create(sys::MAP_TYPE_SOCKHASH, 4, 4, capacity, 0, "tcplb_socks")
            .map_err(|e| context("create the socket map", e))?;
        let slots = sys::map_create(sys::MAP_TYPE_HASH, 8, 4, capacity, 0, "tcplb_slots")
            .map_err(|e| context("create the cookie map", e))?;
        let records_fd = sys::map_create(
            sys::MAP_TYPE_ARRAY,
            4,
            RECORD_SIZE as u32,
            capacity,
            sys::F_MMAPABLE,
            "tcplb_records",
        )
        .map_err(|e| context("create the record array", e))?;
        let mapped = (RECORD_SIZE * capacity as usize).next_multiple_of(page_size());
        // SAFETY: a shared read-write mapping of the whole array map, which the kernel
        // allows for BPF_F_MMAPABLE arrays; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                records_fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(context("map the record array", io::Error::last_os_error()));
        }
        let records =
            NonNull::new(base.cast::<Record>()).ok_or_else(|| io::Error::other("mmap"))?;
        let mut fast = FastPath {
            prog: None,
            socks,
            slots,
            _records_fd: records_fd,
            records,
            mapped,
            capacity,
        };
        let code = program::verdict(&program::Inputs {
            slots: fast.slots.as_raw_fd(),
            records: fast._records_fd.as_raw_fd(),
            socks: fast.socks.as_raw_fd(),
            bytes_acked: bytes_acked as i32,
            bound,
        });
        let prog = sys::prog_load(
            sys::PROG_TYPE_SK_SKB,
            &code,
            "Dual MIT/GPL",
            "tcplb_verdict",
        )
        .map_err(|e| context("load the verdict program", e))?;
        sys::prog_attach(
            fast.socks.as_raw_fd(),
            prog.as_raw_fd(),
            sys::SK_SKB_STREAM_VERDICT,
        )
        .map_err(|e| context("attach the verdict program", e))?;
        fast.prog = Some(prog);
        Ok(fast)
    }

    /// Slots in all (two per session).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The record of a slot.
    pub fn record(&self, slot: u32) -> &Record {
        assert!(slot < self.capacity, "slot {slot} out of range");
        // SAFETY: in range (checked above) of a mapping that lives as long as `self`.
        unsafe { &*self.records.as_ptr().add(slot as usize) }
    }

    /// Puts a session's two sockets into the map: from now on the kernel moves their bytes.
    /// `written[i]` is the payload user space has written into socket `i` so far; the
    /// sockets' cookies go into `cookies` as they are entered (for [`FastPath::forget`]).
    /// On an error nothing is lost: a socket whose peer is not in the map has all its bytes
    /// passed up to user space, as before.
    pub fn link(
        &self,
        slots: [u32; 2],
        fds: [RawFd; 2],
        written: [u64; 2],
        cookies: &mut [u64; 2],
    ) -> io::Result<()> {
        let now = monotonic_ns();
        for i in 0..2 {
            let (r, peer) = (self.record(slots[i]), 1 - i);
            let offset = settled_taken(fds[peer])?.saturating_sub(written[peer]);
            r.peer.store(slots[peer], Ordering::Relaxed);
            for counter in [&r.redirected, &r.passed, &r.forwarded] {
                counter.store(0, Ordering::Relaxed);
            }
            r.written.store(written[peer], Ordering::Relaxed);
            r.linked_at.store(written[peer], Ordering::Relaxed);
            r.offset.store(offset, Ordering::Relaxed);
            r.stamp.store(now, Ordering::Release);
        }
        for i in 0..2 {
            let cookie = cookie(fds[i])?;
            sys::map_update(
                self.slots.as_raw_fd(),
                &cookie.to_ne_bytes(),
                &slots[i].to_ne_bytes(),
            )?;
            cookies[i] = cookie;
        }
        for (&slot, &fd) in slots.iter().zip(&fds) {
            sys::map_update(
                self.socks.as_raw_fd(),
                &slot.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
            )?;
        }
        Ok(())
    }

    /// A linked session has ended: its sockets' cookies leave the map (a socket leaves the
    /// socket map by itself when it closes). Cookies are never reused, so a missed one
    /// only costs a map entry.
    pub fn forget(&self, cookies: [u64; 2]) {
        for cookie in cookies.into_iter().filter(|&c| c != 0) {
            if let Err(e) = sys::map_delete(self.slots.as_raw_fd(), &cookie.to_ne_bytes()) {
                log::debug!("fast path: cookie {cookie} not forgotten: {e}");
            }
        }
    }

    /// User space has written `written` bytes of payload into the peer of `slot`'s socket
    /// in all: every byte written since linking was one the program passed up.
    pub fn note_written(&self, slot: u32, written: u64) {
        let r = self.record(slot);
        r.written.store(written, Ordering::Relaxed);
        let forwarded = written.saturating_sub(r.linked_at.load(Ordering::Relaxed));
        r.forwarded.store(forwarded, Ordering::Release);
    }

    /// Every byte the kernel redirected from `slot`'s socket has reached the peer socket
    /// `peer_fd`'s send queue: user space may write to it (or shut it) without a byte of
    /// its own overtaking one of the kernel's.
    pub fn drained(&self, slot: u32, peer_fd: RawFd) -> io::Result<bool> {
        let r = self.record(slot);
        let redirected = r.redirected.load(Ordering::Acquire);
        if redirected == 0 {
            return Ok(true);
        }
        let expected =
            r.written.load(Ordering::Relaxed) + redirected + r.offset.load(Ordering::Relaxed);
        Ok(taken_by_kernel(peer_fd)? >= expected)
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `load`, unmapped once.
        unsafe { libc::munmap(self.records.as_ptr().cast(), self.mapped) };
    }
}

fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("could not {what}: {e}"))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The socket's cookie.
fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which lives on our stack.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// [`taken_by_kernel`], exactly: read until no acknowledgement came in between (a few
/// tries: the loop must not wait on a busy connection; linking fails instead).
fn settled_taken(fd: RawFd) -> io::Result<u64> {
    for _ in 0..8 {
        let (before, taken) = (acked(fd)?, taken_by_kernel(fd)?);
        if acked(fd)? == before {
            return Ok(taken);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "acknowledgements kept coming while the socket's count was read",
    ))
}

fn acked(fd: RawFd) -> io::Result<u64> {
    Ok(tcp_info(fd)?.tcpi_bytes_acked)
}

fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: an all-zero tcp_info is valid; getsockopt fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Everything written into a socket so far, as far as the kernel has taken it: bytes
/// acknowledged plus bytes in its send queue. Read in that order, so a moment's new
/// acknowledgement can only make it smaller than the truth, never larger.
pub fn taken_by_kernel(fd: RawFd) -> io::Result<u64> {
    let acked = acked(fd)?;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked + queued.max(0) as u64)
}
