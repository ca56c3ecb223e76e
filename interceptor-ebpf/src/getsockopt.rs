//! cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) and
//! getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for TCP sockets of enrolled pods, as conntrack
//! does in iptables mode:
//!
//! * either end of a redirected connection: the destination the application dialled;
//! * an accepted socket: its local address (for sk_lookup-steered connections, the
//!   destination the client used);
//! * any other connected socket: its remote address.
//!
//! Every other call, and every socket of a pod that is not enrolled, is left exactly as the
//! kernel answered it. Minimum kernel: 5.15 (bpf_get_netns_cookie in cgroup sockopt).
use aya_ebpf::{bindings::bpf_sock, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext};
use interceptor_common::{AF_INET, AF_INET6, IPPROTO_TCP};

use interceptor_ebpf::{
    addr::{Endpoint, bytes_to_words, conn_key},
    ctx_read,
    maps::{ACCEPTED, PENDING, PODS},
};

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

/// The socket's own ends: (local, remote); remote port 0 means not connected.
#[inline(always)]
fn endpoints(sk: *mut bpf_sock) -> (Endpoint, Endpoint) {
    let local_port = ctx_read!(sk, src_port) as u16;
    let remote_port = u16::from_be(ctx_read!(sk, dst_port));
    if ctx_read!(sk, family) == AF_INET as u32 {
        (Endpoint::v4(ctx_read!(sk, src_ip4), local_port), Endpoint::v4(ctx_read!(sk, dst_ip4), remote_port))
    } else {
        let l = [
            ctx_read!(sk, src_ip6[0]),
            ctx_read!(sk, src_ip6[1]),
            ctx_read!(sk, src_ip6[2]),
            ctx_read!(sk, src_ip6[3]),
        ];
        let r = [
            ctx_read!(sk, dst_ip6[0]),
            ctx_read!(sk, dst_ip6[1]),
            ctx_read!(sk, dst_ip6[2]),
            ctx_read!(sk, dst_ip6[3]),
        ];
        (Endpoint::from_v6_socket(l, local_port), Endpoint::from_v6_socket(r, remote_port))
    }
}

#[inline(always)]
fn answer(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    let (level, optname) = (ctx_read!(so, level), ctx_read!(so, optname));
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return;
    }
    let sk = ctx_read!(so, __bindgen_anon_1.sk);
    if sk.is_null() || ctx_read!(sk, protocol) != IPPROTO_TCP {
        return;
    }
    let netns_cookie = unsafe { bpf_get_netns_cookie(so.cast()) };
    if unsafe { PODS.get(&netns_cookie) }.is_none() {
        return;
    }
    let (local, remote) = endpoints(sk);
    if remote.port == 0 {
        // Not connected (e.g. a listener): conntrack has nothing either.
        return;
    }
    let key = conn_key(netns_cookie, &local, &remote);
    let orig = if let Some(o) = unsafe { PENDING.get(&key) } {
        // The sidecar's end of a redirected connection.
        Endpoint { family: o.family, addr: bytes_to_words(o.addr), port: o.port }
    } else if let Some(o) = unsafe { PENDING.get(&conn_key(netns_cookie, &remote, &local)) } {
        // The application's end of a redirected connection.
        Endpoint { family: o.family, addr: bytes_to_words(o.addr), port: o.port }
    } else if unsafe { ACCEPTED.get(&key) }.is_some() {
        local
    } else {
        remote
    };
    let optval = ctx_read!(so, __bindgen_anon_2.optval).cast::<u8>();
    let optval_end = ctx_read!(so, __bindgen_anon_3.optval_end).cast::<u8>();
    if level == SOL_IP && orig.family == AF_INET {
        if unsafe { optval.add(SOCKADDR_IN_LEN) } > optval_end {
            return;
        }
        let sin = SockaddrIn { family: AF_INET, port: orig.port.to_be(), addr: orig.addr[0], zero: [0; 8] };
        unsafe { core::ptr::write_unaligned(optval.cast::<SockaddrIn>(), sin) };
        finish(ctx, SOCKADDR_IN_LEN as i32);
    } else if level == SOL_IPV6 && orig.family == AF_INET6 {
        if unsafe { optval.add(SOCKADDR_IN6_LEN) } > optval_end {
            return;
        }
        let sin6 = SockaddrIn6 { family: AF_INET6, port: orig.port.to_be(), flowinfo: 0, addr: orig.addr, scope_id: 0 };
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
