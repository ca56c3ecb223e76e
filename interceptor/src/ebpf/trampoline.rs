//! Each enrolled pod's own sk_lookup program: it stores the pod's network namespace cookie
//! where the shared steering program reads it (`STEER_NETNS`, per CPU) and tail-calls that
//! program (`STEER_PROGRAM[0]`). A sk_lookup program cannot ask which namespace it runs in,
//! and the kernel would let it hand a connection to a listener of another namespace: this is
//! how the shared program knows which pod a connection belongs to, whatever its addresses.
//!
//! ```text
//! r6 = r1                          ; the context, kept for the tail call
//! *(u32 *)(r10 - 4) = 0            ; key 0
//! r1 = STEER_NETNS; r2 = r10 - 4
//! r0 = map_lookup_elem(r1, r2)
//! if r0 == 0 goto drop
//! *(u64 *)(r0 + 0) = COOKIE
//! *(u64 *)(r0 + 8) = r6            ; the context this cookie is for
//! tail_call(r6, STEER_PROGRAM, 0)  ; does not return when it works
//! drop: return SK_DROP             ; no steering program: refuse, never pass untouched
//! ```
//!
//! A tiny program loads in microseconds, which keeps enroll fast. Minimum kernel: 5.9.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{
    EbpfError,
    error::Context,
    insn::{self, R0, R1, R2, R3, R6, R10, helper},
    raw,
};

/// The instructions of the program for one pod.
pub fn program(netns_cookie: u64, steer_netns: BorrowedFd<'_>, steer_program: BorrowedFd<'_>) -> Vec<insn::Insn> {
    let mut p = vec![insn::mov_reg(R6, R1), insn::store_u32_imm(R10, -4, 0)];
    p.extend(insn::load_map_fd(R1, steer_netns));
    p.extend([insn::mov_reg(R2, R10), insn::add_imm(R2, -4), insn::call(helper::MAP_LOOKUP_ELEM)]);
    // Skips the 9 instructions up to the drop.
    p.push(insn::jeq_imm(R0, 0, 9));
    p.extend(insn::load_imm64(R1, netns_cookie));
    p.push(insn::store_u64(R0, 0, R1));
    p.push(insn::store_u64(R0, 8, R6));
    p.push(insn::mov_reg(R1, R6));
    p.extend(insn::load_map_fd(R2, steer_program));
    p.extend([insn::mov_imm(R3, 0), insn::call(helper::TAIL_CALL)]);
    // drop:
    p.extend([insn::mov_imm(R0, 0), insn::exit()]);
    p
}

/// Loads the program of one pod.
pub fn load(netns_cookie: u64, steer_netns: &OwnedFd, steer_program: &OwnedFd) -> Result<OwnedFd, EbpfError> {
    let prog = program(netns_cookie, steer_netns.as_fd(), steer_program.as_fd());
    raw::prog_load(raw::ProgType::SkLookup, &prog, "steer_pod").context("the kernel refused a pod's sk_lookup program")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jump_lands_on_the_drop() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let p = program(7, fd.as_fd(), fd.as_fd());
        let jump = p.iter().position(|i| i.code == 0x15).unwrap();
        let target = jump + 1 + p[jump].off as usize;
        assert_eq!(p[target], insn::mov_imm(R0, 0), "the drop: return SK_DROP");
        assert_eq!(p[target + 1], insn::exit());
        assert_eq!(p.len(), target + 2);
    }
}
