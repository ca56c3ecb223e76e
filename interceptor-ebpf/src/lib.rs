//! The parts of the eBPF programs that are not a hook: maps, address handling, counters, the
//! outbound decision and the local DNS proxy rule. The programs themselves are in `src/main.rs` and its modules.
#![no_std]
// The atomic add intrinsic (counters shared by all CPUs): the BPF target has no atomics in core.
#![allow(internal_features)]
#![feature(core_intrinsics)]

/// Reads one field of a program context with its own load at the field's offset. The
/// verifier rejects loads through a context pointer the compiler has moved (`ctx + off`),
/// which ordinary reads may produce.
#[macro_export]
macro_rules! ctx_read {
    ($ptr:expr, $($field:tt)+) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$($field)+)) }
    };
}

pub mod addr;
pub mod counters;
pub mod decide;
pub mod dns;
pub mod maps;
pub mod records;
