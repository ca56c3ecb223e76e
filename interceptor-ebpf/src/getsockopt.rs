//! cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) and
//! getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for sockets of enrolled pods, as conntrack does
//! in iptables mode. Every other call, and every socket without our storage, is left exactly
//! as the kernel answered it. Minimum kernel: 5.3 (cgroup sockopt hooks).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_sk_storage_get, macros::cgroup_sockopt, programs::SockoptContext,
};
use interceptor_common::{AF_INET, AF_INET6, OrigDst, orig_kind};

use crate::{addr::bytes_to_words, maps::SOCK_ORIG};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST share the value 80.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn original_dst(ctx: SockoptContext) -> i32 {
    answer(&ctx);
    // 1: keep going (a getsockopt program cannot refuse the call, only change its result).
    1
}

#[inline(always)]
fn answer(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    let (level, optname) = (ctx_read!(so, level), ctx_read!(so, optname));
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return;
    }
    let sk = ctx_read!(so, __bindgen_anon_1.sk);
    if sk.is_null() {
        return;
    }
    let map = core::ptr::from_ref(&SOCK_ORIG).cast_mut().cast::<c_void>();
    let orig = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<OrigDst>();
    if orig.is_null() {
        return;
    }
    let orig = unsafe { *orig };
    if orig.kind == 0 || orig.kind > orig_kind::CONNECTED {
        return;
    }
    let optval = ctx_read!(so, __bindgen_anon_2.optval).cast::<u8>();
    let optval_end = ctx_read!(so, __bindgen_anon_3.optval_end).cast::<u8>();
    if level == SOL_IP && orig.family == AF_INET {
        if unsafe { optval.add(SOCKADDR_IN_LEN) } > optval_end {
            return;
        }
        let sin = SockaddrIn {
            family: AF_INET,
            port: orig.port.to_be(),
            addr: bytes_to_words(orig.addr)[0],
            zero: [0; 8],
        };
        unsafe { core::ptr::write_unaligned(optval.cast::<SockaddrIn>(), sin) };
        finish(ctx, SOCKADDR_IN_LEN as i32);
    } else if level == SOL_IPV6 && orig.family == AF_INET6 {
        if unsafe { optval.add(SOCKADDR_IN6_LEN) } > optval_end {
            return;
        }
        let sin6 = SockaddrIn6 {
            family: AF_INET6,
            port: orig.port.to_be(),
            flowinfo: 0,
            addr: bytes_to_words(orig.addr),
            scope_id: 0,
        };
        unsafe { core::ptr::write_unaligned(optval.cast::<SockaddrIn6>(), sin6) };
        finish(ctx, SOCKADDR_IN6_LEN as i32);
    }
}

/// Sets the result length and clears the kernel's error (ENOPROTOOPT without conntrack,
/// ENOENT without a conntrack entry). One 32-bit store per field: the verifier rejects
/// merged stores to the context.
#[inline(always)]
fn finish(ctx: &SockoptContext, len: i32) {
    let so = ctx.sockopt;
    unsafe {
        core::ptr::write_volatile(&mut (*so).optlen, len);
        core::ptr::write_volatile(&mut (*so).retval, 0);
    }
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}
