//! cgroup/getpeername4 and getpeername6: the application's view stays what it dialled.
//! A redirected socket is really connected to the sidecar; getpeername() reports the
//! original destination instead, as it does under NAT. Minimum kernel: 5.8.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use interceptor_common::{AF_INET, orig_kind};

use crate::{
    addr::{V4_MAPPED_WORD2, bytes_to_words, port_to_be_low16},
    maps::SOCK_ORIG,
};

#[cgroup_sock_addr(getpeername4)]
pub fn dialled_peer4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, false);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn dialled_peer6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, true);
    1
}

#[inline(always)]
fn restore(ctx: &SockAddrContext, v6_socket: bool) {
    // SAFETY: the context's socket is valid for the duration of the program.
    let orig = unsafe { SOCK_ORIG.get_ptr_mut(ctx) };
    if orig.is_null() {
        return;
    }
    let orig = unsafe { *orig };
    if orig.kind != orig_kind::REDIRECTED {
        return;
    }
    let sa = ctx.sock_addr;
    let addr = bytes_to_words(orig.addr);
    unsafe {
        if !v6_socket {
            if orig.family != AF_INET {
                return;
            }
            core::ptr::write_volatile(&mut (*sa).user_ip4, addr[0]);
        } else {
            let w = if orig.family == AF_INET { [0, 0, V4_MAPPED_WORD2, addr[0]] } else { addr };
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], w[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], w[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], w[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], w[3]);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, port_to_be_low16(orig.port));
    }
}
