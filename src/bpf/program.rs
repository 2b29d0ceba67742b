//! The stream-verdict program, assembled here instruction by instruction (no compiler, no
//! object file: the machine that builds tcplb needs nothing but cargo).
//!
//! For each segment arriving on a socket in the map it finds the socket's [`Record`]
//! (socket cookie → slot → record) and either redirects the segment to the peer socket's
//! send side or passes it up to user space:
//!
//! ```text
//! record.stamp = now
//! if len == 0                                     → pass    (a FIN: user space passes it on)
//! if record.passed != record.forwarded            → pass    (user space holds bytes before it)
//! peer = socks[record.peer]; acked = peer.bytes_acked
//! if record.written + record.redirected + len - acked > bound
//!                                                 → pass    (the peer is not taking them)
//! record.redirected += len                        → redirect to peer
//! pass: record.passed += len
//! ```
//!
//! `written + redirected - acked` is everything handed to the peer socket and not yet
//! acknowledged by its reader: the kernel's redirect queue (which has no limit of its own)
//! plus the socket's send queue. Past the bound the bytes go to user space instead, where a
//! full buffer stops reading and TCP's window holds the sender back. Once user space has
//! forwarded every byte it was passed, redirecting resumes; never before, so no byte
//! overtakes another.
//!
//! [`Record`]: super::Record

use super::record;

/// One eBPF instruction: opcode, registers, offset, immediate, as the kernel lays it out.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;

const MOV_REG: u8 = 0xbf;
const MOV_IMM: u8 = 0xb7;
const ADD_IMM: u8 = 0x07;
const ADD_REG: u8 = 0x0f;
const SUB_REG: u8 = 0x1f;
const LDX_W: u8 = 0x61;
const LDX_DW: u8 = 0x79;
const STX_W: u8 = 0x63;
const STX_DW: u8 = 0x7b;
const ATOMIC_DW: u8 = 0xdb;
const ATOMIC_ADD: i32 = 0x00;
const JEQ_IMM: u8 = 0x15;
const JNE_REG: u8 = 0x5d;
const JSGT_REG: u8 = 0x6d;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_KTIME_GET_NS: i32 = 5;
const FN_GET_SOCKET_COOKIE: i32 = 46;
const FN_SK_REDIRECT_HASH: i32 = 72;
const FN_SK_RELEASE: i32 = 86;
const FN_SKC_TO_TCP_SOCK: i32 = 137;

const SK_PASS: i32 = 1;

/// The descriptors and the one kernel offset the program is built from.
pub struct Inputs {
    /// Hash: socket cookie (u64) → slot (u32).
    pub slots: i32,
    /// Array of records, by slot.
    pub records: i32,
    /// Sockhash: slot (u32) → socket.
    pub socks: i32,
    /// `offsetof(struct tcp_sock, bytes_acked)` in the running kernel.
    pub bytes_acked: i32,
    /// Bytes that may be in flight to a peer before its bytes go to user space.
    pub bound: u64,
}

/// A tiny assembler with forward labels, resolved in [`Asm::finish`].
struct Asm {
    code: Vec<u64>,
    /// (instruction index, label) of jumps to patch.
    jumps: Vec<(usize, Label)>,
    labels: [Option<usize>; 3],
}

#[derive(Clone, Copy)]
enum Label {
    Release = 0,
    Pass = 1,
    PassUncounted = 2,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Asm {
        self.code.push(insn(code, dst, src, off, imm));
        self
    }

    fn map(&mut self, dst: u8, fd: i32) -> &mut Asm {
        self.op(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd)
            .op(0, 0, 0, 0, 0)
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) -> &mut Asm {
        self.jumps.push((self.code.len(), to));
        self.op(code, dst, src, 0, imm)
    }

    /// r0 = bpf_map_lookup_elem(map, r10 + key_at); to `miss` if there is none.
    fn lookup(&mut self, map: i32, key_at: i32, miss: Label) -> &mut Asm {
        self.map(R1, map)
            .op(MOV_REG, R2, R10, 0, 0)
            .op(ADD_IMM, R2, 0, 0, key_at)
            .call(FN_MAP_LOOKUP_ELEM)
            .jump(JEQ_IMM, R0, 0, 0, miss)
    }

    fn call(&mut self, function: i32) -> &mut Asm {
        self.op(CALL, 0, 0, 0, function)
    }

    fn label(&mut self, label: Label) -> &mut Asm {
        self.labels[label as usize] = Some(self.code.len());
        self
    }

    fn finish(mut self) -> Vec<u64> {
        for (at, label) in std::mem::take(&mut self.jumps) {
            let target = self.labels[label as usize].expect("every label is placed");
            let off = (target as i64 - at as i64 - 1) as i16;
            self.code[at] = (self.code[at] & !(0xffff << 16)) | (u64::from(off as u16) << 16);
        }
        self.code
    }
}

/// The verdict program's instructions.
pub fn verdict(inputs: &Inputs) -> Vec<u64> {
    use Label::*;
    let mut a = Asm {
        code: Vec::new(),
        jumps: Vec::new(),
        labels: [None; 3],
    };
    let f = |offset: usize| offset as i16;
    // r6 = skb; the socket's slot from its cookie.
    a.op(MOV_REG, R6, R1, 0, 0)
        .call(FN_GET_SOCKET_COOKIE)
        .op(STX_DW, R10, R0, -8, 0)
        .lookup(inputs.slots, -8, PassUncounted)
        // r7 = its record.
        .op(LDX_W, R1, R0, 0, 0)
        .op(STX_W, R10, R1, -12, 0)
        .lookup(inputs.records, -12, PassUncounted)
        .op(MOV_REG, R7, R0, 0, 0)
        // r8 = len; record.stamp = now.
        .op(LDX_W, R8, R6, 0, 0)
        .call(FN_KTIME_GET_NS)
        .op(STX_DW, R7, R0, f(record::STAMP), 0)
        // No payload (a FIN): user space passes the end of stream on, after the bytes.
        .jump(JEQ_IMM, R8, 0, 0, Pass)
        // User space still holds bytes passed to it: pass this one too.
        .op(LDX_DW, R1, R7, f(record::PASSED), 0)
        .op(LDX_DW, R2, R7, f(record::FORWARDED), 0)
        .jump(JNE_REG, R1, R2, 0, Pass)
        // r9 = the peer socket (a reference, released below).
        .op(LDX_W, R1, R7, f(record::PEER), 0)
        .op(STX_W, R10, R1, -16, 0)
        .lookup(inputs.socks, -16, Pass)
        .op(MOV_REG, R9, R0, 0, 0)
        // acked (stack -24) = peer's tcp_sock.bytes_acked, 0 if it is not a TCP socket.
        .op(MOV_IMM, R1, 0, 0, 0)
        .op(STX_DW, R10, R1, -24, 0)
        .op(MOV_REG, R1, R9, 0, 0)
        .call(FN_SKC_TO_TCP_SOCK)
        .jump(JEQ_IMM, R0, 0, 0, Release)
        .op(LDX_DW, R1, R0, inputs.bytes_acked as i16, 0)
        .op(STX_DW, R10, R1, -24, 0)
        .label(Release)
        .op(MOV_REG, R1, R9, 0, 0)
        .call(FN_SK_RELEASE)
        // in flight = written + redirected + len - acked; past the bound: pass.
        .op(LDX_DW, R1, R7, f(record::WRITTEN), 0)
        .op(LDX_DW, R2, R7, f(record::REDIRECTED), 0)
        .op(ADD_REG, R1, R2, 0, 0)
        .op(ADD_REG, R1, R8, 0, 0)
        .op(LDX_DW, R2, R10, -24, 0)
        .op(SUB_REG, R1, R2, 0, 0)
        .op(LD_IMM64, R2, 0, 0, inputs.bound as u32 as i32)
        .op(0, 0, 0, 0, (inputs.bound >> 32) as u32 as i32)
        .jump(JSGT_REG, R1, R2, 0, Pass)
        // Redirect: counted first, then handed to the peer's send side.
        .op(ATOMIC_DW, R7, R8, f(record::REDIRECTED), ATOMIC_ADD)
        .op(MOV_REG, R1, R6, 0, 0)
        .map(R2, inputs.socks)
        .op(MOV_REG, R3, R10, 0, 0)
        .op(ADD_IMM, R3, 0, 0, -16)
        .op(MOV_IMM, R4, 0, 0, 0)
        .call(FN_SK_REDIRECT_HASH)
        .op(EXIT, 0, 0, 0, 0)
        .label(Pass)
        .op(ATOMIC_DW, R7, R8, f(record::PASSED), ATOMIC_ADD)
        .label(PassUncounted)
        .op(MOV_IMM, R0, 0, 0, SK_PASS)
        .op(EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instruction_is_laid_out_as_the_kernel_reads_it() {
        // r2 += -8: opcode 0x07, dst 2, imm -8.
        assert_eq!(insn(ADD_IMM, R2, 0, 0, -8), 0xffff_fff8_0000_0207);
        // *(u64 *)(r10 - 8) = r0
        assert_eq!(insn(STX_DW, R10, R0, -8, 0), 0x0000_0000_fff8_0a7b);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let code = verdict(&Inputs {
            slots: 3,
            records: 4,
            socks: 5,
            bytes_acked: 1600,
            bound: 1 << 18,
        });
        for (at, &i) in code.iter().enumerate() {
            let op = (i & 0xff) as u8;
            if op & 0x07 == 0x05 && op != CALL && op != EXIT {
                let off = ((i >> 16) & 0xffff) as u16 as i16;
                let target = at as i64 + 1 + i64::from(off);
                assert!(target > at as i64 && (target as usize) < code.len());
            }
        }
        assert_eq!(code.last().map(|i| i & 0xff), Some(u64::from(EXIT)));
    }
}
