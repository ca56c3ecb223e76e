//! A few BPF instructions, encoded by hand for the programs the loader writes itself (each
//! pod's sk_lookup program is a handful of instructions: see `trampoline`). The encoding is
//! the kernel's `struct bpf_insn` (UAPI, stable): opcode, registers (dst in the low nibble),
//! 16-bit offset, 32-bit immediate.
use std::os::fd::{AsRawFd, BorrowedFd};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Registers: R0 return value, R1-R5 arguments, R6-R9 callee-saved, R10 frame pointer.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R6: Reg = 6;
pub const R10: Reg = 10;

const fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0xf), off, imm }
}

/// dst = src (64-bit).
pub const fn mov_reg(dst: Reg, src: Reg) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}

/// dst = imm (64-bit, sign-extended).
pub const fn mov_imm(dst: Reg, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}

/// dst += imm (64-bit).
pub const fn add_imm(dst: Reg, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}

/// dst |= src (64-bit).
pub const fn or_reg(dst: Reg, src: Reg) -> Insn {
    insn(0x4f, dst, src, 0, 0)
}

/// *(u32 *)(dst + off) = imm.
pub const fn store_u32_imm(dst: Reg, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}

/// *(u64 *)(dst + off) = src.
pub const fn store_u64(dst: Reg, off: i16, src: Reg) -> Insn {
    insn(0x7b, dst, src, off, 0)
}

/// dst = *(u32 *)(src + off).
pub const fn load_u32(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}

/// lock *(u64 *)(dst + off) += src.
pub const fn atomic_add_u64(dst: Reg, off: i16, src: Reg) -> Insn {
    insn(0xdb, dst, src, off, 0)
}

/// dst = a 64-bit immediate (two instructions).
pub const fn load_imm64(dst: Reg, value: u64) -> [Insn; 2] {
    [insn(0x18, dst, 0, 0, value as u32 as i32), insn(0, 0, 0, 0, (value >> 32) as u32 as i32)]
}

/// dst = the map behind `fd` (BPF_PSEUDO_MAP_FD; the kernel resolves it at load).
pub fn load_map_fd(dst: Reg, fd: BorrowedFd<'_>) -> [Insn; 2] {
    const BPF_PSEUDO_MAP_FD: Reg = 1;
    [insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd.as_raw_fd()), insn(0, 0, 0, 0, 0)]
}

/// goto +off.
pub const fn ja(off: i16) -> Insn {
    insn(0x05, 0, 0, off, 0)
}

/// if dst == imm goto +off.
pub const fn jeq_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}

/// if dst != imm goto +off.
pub const fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}

/// Calls helper number `helper`.
pub const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}

pub const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}

/// Helper numbers (UAPI `enum bpf_func_id`, stable).
pub mod helper {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const TAIL_CALL: i32 = 12;
    pub const SOCK_OPS_CB_FLAGS_SET: i32 = 59;
}

/// The raw bytes of a program, as BPF_PROG_LOAD reads them.
pub fn bytes(prog: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&[i.code, i.regs]);
        out.extend_from_slice(&i.off.to_le_bytes());
        out.extend_from_slice(&i.imm.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel_headers() {
        // r6 = r1: BPF_ALU64 | BPF_MOV | BPF_X, dst 6, src 1.
        assert_eq!(bytes(&[mov_reg(R6, R1)]), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        // *(u32 *)(r10 - 4) = 0.
        assert_eq!(bytes(&[store_u32_imm(R10, -4, 0)]), [0x62, 0x0a, 0xfc, 0xff, 0, 0, 0, 0]);
        // r1 = 0x1122334455667788 (ld_imm64: low word first).
        assert_eq!(
            bytes(&load_imm64(R1, 0x1122_3344_5566_7788)),
            [0x18, 0x01, 0, 0, 0x88, 0x77, 0x66, 0x55, 0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(bytes(&[call(helper::TAIL_CALL), exit()]), [0x85, 0, 0, 0, 12, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]);
    }
}
