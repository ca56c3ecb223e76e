//! cgroup/getpeername4 and getpeername6: the application's view stays what it dialled.
//! A redirected socket is really connected to the sidecar; getpeername() reports the
//! original destination instead, as it does under NAT. Minimum kernel: 5.8.
//! A UDP socket connected through the local DNS proxy rule answers 127.0.0.153:53
//! (`interceptor_ebpf::dns`).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use interceptor_common::{AF_INET, IPPROTO_UDP, sock_kind};
use interceptor_ebpf::{
    addr::{V4_MAPPED_WORD2, bytes_to_words, port_to_be_low16},
    ctx_read,
    records::record,
};

#[cgroup_sock_addr(getpeername4)]
pub fn dialled_peer4(ctx: SockAddrContext) -> i32 {
    if ctx_read!(ctx.sock_addr, protocol) == IPPROTO_UDP {
        interceptor_ebpf::dns::on_getpeername(&ctx, false);
        return 1;
    }
    restore(&ctx, false);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn dialled_peer6(ctx: SockAddrContext) -> i32 {
    if ctx_read!(ctx.sock_addr, protocol) == IPPROTO_UDP {
        interceptor_ebpf::dns::on_getpeername(&ctx, true);
        return 1;
    }
    restore(&ctx, true);
    1
}

#[inline(always)]
fn restore(ctx: &SockAddrContext, v6_socket: bool) {
    let sa = ctx.sock_addr;
    let sk = ctx_read!(sa, __bindgen_anon_1.sk);
    if sk.is_null() {
        return;
    }
    let Some(rec) = record(sk.cast()) else { return };
    if rec.kind != sock_kind::CLIENT_REDIRECTED {
        return;
    }
    let addr = bytes_to_words(rec.addr);
    unsafe {
        if !v6_socket {
            if rec.family != AF_INET {
                return;
            }
            core::ptr::write_volatile(&mut (*sa).user_ip4, addr[0]);
        } else {
            let w = if rec.family == AF_INET { [0, 0, V4_MAPPED_WORD2, addr[0]] } else { addr };
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], w[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], w[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], w[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], w[3]);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, port_to_be_low16(rec.port));
    }
}
