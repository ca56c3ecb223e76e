//! cgroup/getsockopt: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) and
//! getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for TCP sockets of enrolled pods, as conntrack
//! does in iptables mode:
//!
//! * either end of a redirected connection: the destination the application dialled (from
//!   the socket's own record, or the hand-over while the sidecar's end is being created);
//! * an accepted socket: its local address (for sk_lookup-steered connections, the
//!   destination the client used);
//! * any other connected socket: its remote address;
//! * the sidecar's end of a pod-internal connection whose original destination is unknown:
//!   ENOENT, as conntrack answers without an entry — never the socket's own address.
//!
//! Every other call, and every socket of a pod that is not enrolled, is left exactly as the
//! kernel answered it. Minimum kernel: 5.15 (bpf_get_netns_cookie in cgroup sockopt).
use aya_ebpf::{bindings::bpf_sock, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext};
use interceptor_common::{AF_INET, AF_INET6, IPPROTO_TCP, Reason, route_flags, sock_kind};
use interceptor_ebpf::{
    addr::{Endpoint, SockaddrIn, SockaddrIn6, bytes_to_words, conn_key},
    counters::count,
    ctx_read,
    maps::{PODS, ROUTES},
    records::{handed_over, record},
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST share the value 80.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = size_of::<SockaddrIn>();
const SOCKADDR_IN6_LEN: usize = size_of::<SockaddrIn6>();

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

/// ENOENT, as a negative return value.
const ENOENT: i32 = 2;

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
    let (local, remote) = endpoints(sk);
    if remote.port == 0 {
        // Not connected (e.g. a listener): conntrack has nothing either.
        return;
    }
    let netns_cookie = unsafe { bpf_get_netns_cookie(so.cast()) };
    let orig = match record(sk.cast()) {
        Some(rec) => match rec.kind {
            sock_kind::CLIENT_REDIRECTED | sock_kind::CLIENT_DIRECT | sock_kind::SIDECAR => {
                Endpoint { family: rec.family, addr: bytes_to_words(rec.addr), port: rec.port }
            }
            sock_kind::ACCEPTED => local,
            _ => return,
        },
        None => {
            if let Some(o) = handed_over(&conn_key(netns_cookie, &local, &remote)) {
                // The sidecar's end whose record could not be made: the hand-over holds it
                // while the application's end lives.
                Endpoint { family: o.family, addr: bytes_to_words(o.addr), port: o.port }
            } else {
                let Some(pod) = (unsafe { PODS.get(&netns_cookie) }) else { return };
                let sidecar_port = local.port == pod.outbound_port || local.port == pod.inbound_port;
                if sidecar_port && is_local(pod.policy_id, &remote) {
                    // A connection from inside the pod to a sidecar listener without a
                    // record: its original destination is unknown. Fail, visibly.
                    count(netns_cookie, Reason::OrigDstUnknown);
                    fail(ctx, ENOENT);
                    return;
                }
                if local.port == pod.inbound_port { local } else { remote }
            }
        }
    };
    let optval = ctx_read!(so, __bindgen_anon_2.optval).cast::<u8>();
    let optval_end = ctx_read!(so, __bindgen_anon_3.optval_end).cast::<u8>();
    if level == SOL_IP && orig.family == AF_INET {
        if unsafe { optval.add(SOCKADDR_IN_LEN) } > optval_end {
            return;
        }
        let sin = SockaddrIn::new(orig.addr[0], orig.port.to_be());
        unsafe { core::ptr::write_unaligned(optval.cast::<SockaddrIn>(), sin) };
        finish(ctx, SOCKADDR_IN_LEN as i32);
    } else if level == SOL_IPV6 && orig.family == AF_INET6 {
        if unsafe { optval.add(SOCKADDR_IN6_LEN) } > optval_end {
            return;
        }
        let sin6 = SockaddrIn6::new(orig.addr, orig.port.to_be());
        unsafe { core::ptr::write_unaligned(optval.cast::<SockaddrIn6>(), sin6) };
        finish(ctx, SOCKADDR_IN6_LEN as i32);
    }
}

/// Whether an address is one of the pod's own (a connection from inside the pod).
#[inline(always)]
fn is_local(policy_id: u32, addr: &Endpoint) -> bool {
    match ROUTES.get(&addr.lpm_key(policy_id)) {
        Some(route) => route.flags & route_flags::LOCAL != 0,
        None => false,
    }
}

/// Makes the call fail with `errno` and no result.
#[inline(always)]
fn fail(ctx: &SockoptContext, errno: i32) {
    let so = ctx.sockopt;
    unsafe {
        core::ptr::write_volatile(&mut (*so).optlen, 0);
        core::ptr::write_volatile(&mut (*so).retval, -errno);
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
