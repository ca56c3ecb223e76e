//! cgroup/connect4 and cgroup/connect6: outbound interception without NAT.
//!
//! A redirected connect() is rewritten to the sidecar's listener before the kernel routes
//! it; the dialled destination is kept by socket cookie (`ORIG_BY_COOKIE`) for
//! getpeername() and SO_ORIGINAL_DST. Minimum kernel: 5.7 (bpf_get_netns_cookie here).
//! UDP sockets only meet osm-edge's local DNS proxy rule (`interceptor_ebpf::dns`).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_bind, bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use interceptor_common::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, OrigDst};

use interceptor_ebpf::{
    addr::{Endpoint, port_from_be_low16, port_to_be_low16, words_to_bytes},
    counters::count,
    ctx_read,
    decide::{Outbound, outbound},
    maps::{ORIG_BY_COOKIE, PODS, debug_enabled},
};

/// Allow the connect() (a cgroup sock_addr program may also return 0 to refuse it; the TCP
/// path never does).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn intercept_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (protocol, ip, port) = (ctx_read!(sa, protocol), ctx_read!(sa, user_ip4), ctx_read!(sa, user_port));
    if protocol == IPPROTO_UDP {
        return interceptor_ebpf::dns::on_connect(&ctx, false);
    }
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let dst = Endpoint::v4(ip, port_from_be_low16(port));
    on_connect(&ctx, dst, false);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn intercept_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (protocol, port) = (ctx_read!(sa, protocol), ctx_read!(sa, user_port));
    if protocol == IPPROTO_UDP {
        return interceptor_ebpf::dns::on_connect(&ctx, true);
    }
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // user_ip6 is read one 32-bit word at a time.
    let ip = [
        ctx_read!(sa, user_ip6[0]),
        ctx_read!(sa, user_ip6[1]),
        ctx_read!(sa, user_ip6[2]),
        ctx_read!(sa, user_ip6[3]),
    ];
    // A v4-mapped destination on a dual-stack socket is IPv4 on the wire: IPv4 lists apply.
    let dst = Endpoint::from_v6_socket(ip, port_from_be_low16(port));
    on_connect(&ctx, dst, true);
    ALLOW
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, dst: Endpoint, v6_socket: bool) {
    let sa = ctx.sock_addr;
    let netns_cookie = unsafe { bpf_get_netns_cookie(sa as *mut c_void) };
    let pod = match unsafe { PODS.get(&netns_cookie) } {
        Some(p) => *p,
        None => return,
    };
    let uid = bpf_get_current_uid_gid() as u32;
    match outbound(&pod, &dst, uid) {
        Outbound::NoRoute => {}
        Outbound::Pass(reason) => {
            count(netns_cookie, reason);
            if debug_enabled() {
                debug!(ctx, "connect pass uid={} port={} reason={}", uid, dst.port, reason as u32);
            }
        }
        Outbound::Rewrite { reason, to, src } => {
            count(netns_cookie, reason);
            remember(ctx, netns_cookie, &dst);
            if let Some(src) = src {
                bind_source(sa, dst.family, src, v6_socket);
            }
            rewrite(sa, &to, v6_socket);
            if debug_enabled() {
                debug!(ctx, "connect redirect uid={} port={} -> {} reason={}", uid, dst.port, to.port, reason as u32);
            }
        }
    }
}

/// Keeps the dialled destination by socket cookie, for getpeername() and for sock_ops to
/// hand to the listener's side once the connection is established.
#[inline(always)]
fn remember(ctx: &SockAddrContext, netns_cookie: u64, dst: &Endpoint) {
    let value = OrigDst { netns_cookie, addr: words_to_bytes(dst.addr), port: dst.port, family: dst.family, _pad: 0 };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    // Overwrites an entry of an earlier connect() attempt of the same socket.
    let _ = ORIG_BY_COOKIE.insert(&cookie, &value, 0);
}

/// Binds an unbound socket to the source the kernel would have used for the dialled
/// destination, so that the sidecar sees the pod's address as the peer, as after REDIRECT.
#[inline(always)]
fn bind_source(sa: *mut bpf_sock_addr, family: u16, src: [u32; 4], v6_socket: bool) {
    let sk = ctx_read!(sa, __bindgen_anon_1.sk);
    if sk.is_null() {
        return;
    }
    // Leave sockets the application bound itself alone.
    let (src_ip4, src_port) = (ctx_read!(sk, src_ip4), ctx_read!(sk, src_port));
    if src_port != 0 {
        return;
    }
    if !v6_socket {
        if src_ip4 != 0 {
            return;
        }
        let mut sin = SockaddrIn { family: AF_INET, port: 0, addr: src[0], zero: [0; 8] };
        unsafe {
            bpf_bind(sa, (&mut sin as *mut SockaddrIn).cast(), size_of::<SockaddrIn>() as i32);
        }
    } else {
        let bound = [
            ctx_read!(sk, src_ip6[0]),
            ctx_read!(sk, src_ip6[1]),
            ctx_read!(sk, src_ip6[2]),
            ctx_read!(sk, src_ip6[3]),
        ];
        if bound[0] != 0 || bound[1] != 0 || bound[2] != 0 || bound[3] != 0 {
            return;
        }
        let addr = if family == AF_INET { [0, 0, interceptor_ebpf::addr::V4_MAPPED_WORD2, src[0]] } else { src };
        let mut sin6 = SockaddrIn6 { family: interceptor_common::AF_INET6, port: 0, flowinfo: 0, addr, scope_id: 0 };
        unsafe {
            bpf_bind(sa, (&mut sin6 as *mut SockaddrIn6).cast(), size_of::<SockaddrIn6>() as i32);
        }
    }
    // A failed bind is not fatal: the kernel then picks the loopback source.
}

#[inline(always)]
fn rewrite(sa: *mut bpf_sock_addr, to: &Endpoint, v6_socket: bool) {
    // Each context field is written with its own 32-bit store: the verifier rejects wider
    // or merged stores to the context.
    unsafe {
        if !v6_socket {
            core::ptr::write_volatile(&mut (*sa).user_ip4, to.addr[0]);
        } else {
            let addr = if to.family == AF_INET {
                [0, 0, interceptor_ebpf::addr::V4_MAPPED_WORD2, to.addr[0]]
            } else {
                to.addr
            };
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], addr[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], addr[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], addr[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], addr[3]);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, port_to_be_low16(to.port));
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
