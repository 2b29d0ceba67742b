//! The `bpf(2)` calls the fast path makes, as thin safe wrappers: create a map, load a
//! program, attach it to a map, update / delete map entries. Every call returns an owned
//! descriptor or an `io::Error` carrying the kernel's errno (and, for a program the
//! verifier refused, the verifier's log).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

pub const MAP_TYPE_ARRAY: u32 = 2;
pub const MAP_TYPE_HASH: u32 = 1;
pub const MAP_TYPE_SOCKHASH: u32 = 18;
pub const F_MMAPABLE: u32 = 1 << 10;
pub const PROG_TYPE_SK_SKB: u32 = 14;
pub const SK_SKB_STREAM_VERDICT: u32 = 5;

/// `union bpf_attr`, as large as any command this file uses needs (the kernel accepts a
/// shorter union than its own as long as the tail it would read is zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32_at(&mut self, offset: usize, value: u32) -> &mut Attr {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64_at(&mut self, offset: usize, value: u64) -> &mut Attr {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn name_at(&mut self, offset: usize, name: &str) -> &mut Attr {
        let bytes = name.as_bytes();
        let n = bytes.len().min(15);
        self.0[offset..offset + n].copy_from_slice(&bytes[..n]);
        self
    }
}

fn bpf(command: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded `union bpf_attr` of the size passed; every
    // pointer stored in it (keys, values, instructions, log) outlives this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `BPF_MAP_CREATE`.
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32_at(0, map_type)
        .u32_at(4, key_size)
        .u32_at(8, value_size)
        .u32_at(12, max_entries)
        .u32_at(16, flags)
        .name_at(28, name);
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`.
pub fn map_update(map: RawFd, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, map as u32)
        .u64_at(8, key.as_ptr() as u64)
        .u64_at(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `BPF_MAP_DELETE_ELEM`.
pub fn map_delete(map: RawFd, key: &[u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, map as u32).u64_at(8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// `BPF_PROG_LOAD`. On a refusal the error says what the verifier said.
pub fn prog_load(prog_type: u32, insns: &[u64], license: &str, name: &str) -> io::Result<OwnedFd> {
    let license = std::ffi::CString::new(license).map_err(io::Error::other)?;
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.u32_at(0, prog_type)
        .u32_at(4, insns.len() as u32)
        .u64_at(8, insns.as_ptr() as u64)
        .u64_at(16, license.as_ptr() as u64)
        .u32_at(24, 1)
        .u32_at(28, log.len() as u32)
        .u64_at(32, log.as_mut_ptr() as u64)
        .name_at(48, name);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let said = String::from_utf8_lossy(&log[..end]);
            let last: Vec<&str> = said.lines().rev().take(6).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            Err(io::Error::new(
                e.kind(),
                format!("{e}; the verifier said: {}", last.join(" | ")),
            ))
        }
    }
}

/// `BPF_PROG_ATTACH` of a program to a map (sockmap / sockhash programs).
pub fn prog_attach(map: RawFd, prog: RawFd, attach_type: u32) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, map as u32)
        .u32_at(4, prog as u32)
        .u32_at(8, attach_type);
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}
