//! Reads one fact from the running kernel's type information (`/sys/kernel/btf/vmlinux`):
//! the byte offset of a member of a kernel struct. The fast path's program reads
//! `tcp_sock.bytes_acked` of the socket it redirects to, and that offset differs from one
//! kernel build to the next; the verifier checks the read against the same information.

use std::io;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// The byte offset of `member` in `struct name`, from BTF data.
pub fn member_offset(btf: &[u8], name: &str, member: &str) -> io::Result<u32> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("BTF: {what}"));
    let u16_at = |at: usize| -> io::Result<u16> {
        btf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("cut short"))
    };
    let u32_at = |at: usize| -> io::Result<u32> {
        btf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("cut short"))
    };
    if u16_at(0)? != MAGIC {
        return Err(bad("not BTF (or not little-endian)"));
    }
    let header = u32_at(4)? as usize;
    let types = header + u32_at(8)? as usize;
    let types_end = types + u32_at(12)? as usize;
    let strings = header + u32_at(16)? as usize;
    let string_at = |offset: u32| -> &[u8] {
        let start = strings + offset as usize;
        let tail = btf.get(start..).unwrap_or(&[]);
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    };
    let mut at = types;
    while at < types_end {
        let name_off = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        at += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
            3 => 12,                   // ARRAY
            4 | 5 => 12 * vlen,        // STRUCT, UNION
            6 | 13 => 8 * vlen,        // ENUM, FUNC_PROTO
            15 | 19 => 12 * vlen,      // DATASEC, ENUM64
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
            other => return Err(bad(&format!("unknown kind {other}"))),
        };
        if kind == KIND_STRUCT && string_at(name_off) == name.as_bytes() {
            for i in 0..vlen {
                let m = at + 12 * i;
                if string_at(u32_at(m)?) == member.as_bytes() {
                    let offset = u32_at(m + 8)?;
                    let bits = if kind_flag {
                        offset & 0xff_ffff
                    } else {
                        offset
                    };
                    if bits % 8 != 0 {
                        return Err(bad(&format!("{name}.{member} is a bit field")));
                    }
                    return Ok(bits / 8);
                }
            }
        }
        at += extra;
    }
    Err(bad(&format!("no struct {name} with a member {member}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made BTF blob: `struct pair { int a; long b; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0pair\0a\0b\0int\0".to_vec();
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, words: &[u32]| {
            for w in words {
                v.extend_from_slice(&w.to_le_bytes());
            }
        };
        // [1] int: name "int", INT, size 4, encoding word.
        push(&mut types, &[10, 1 << 24, 4, 32]);
        // [2] struct pair, 2 members: a at bit 0, b at bit 64.
        push(&mut types, &[1, (4 << 24) | 2, 16, 6, 1, 0, 8, 1, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        push(
            &mut out,
            &[
                24,
                0,
                types.len() as u32,
                types.len() as u32,
                strings.len() as u32,
            ],
        );
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn a_members_offset_is_found_in_bytes() {
        let b = blob();
        assert_eq!(member_offset(&b, "pair", "b").expect("found"), 8);
        assert_eq!(member_offset(&b, "pair", "a").expect("found"), 0);
        assert!(member_offset(&b, "pair", "c").is_err());
        assert!(member_offset(&b[..20], "pair", "a").is_err());
    }

    #[test]
    fn the_running_kernel_has_tcp_sock_bytes_acked() {
        let Ok(vmlinux) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return; // a kernel without BTF: the fast path says so at start
        };
        let offset = member_offset(&vmlinux, "tcp_sock", "bytes_acked").expect("found");
        assert!(offset > 1000 && offset % 8 == 0, "offset {offset}");
    }
}
