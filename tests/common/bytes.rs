//! Bytes that cross the balancer: deterministic patterns, and hashes to check every one.

use std::io::{self, Read};

/// A deterministic pseudo-random byte pattern (xorshift), different per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Reads until EOF, returning (length, hash), streaming so huge transfers need no memory.
pub fn read_digest(stream: &mut impl Read) -> io::Result<(u64, u64)> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((len, hasher.digest())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Digest of `pattern(seed, len)` without holding it all: the streamer's output.
pub fn stream_digest(seed: u64, len: u64) -> (u64, u64) {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let chunk = pattern(seed, 1 << 20);
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    (len, hasher.digest())
}
