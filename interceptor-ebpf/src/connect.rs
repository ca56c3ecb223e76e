//! cgroup/connect4 and cgroup/connect6: outbound interception without NAT.
//!
//! A redirected connect() is rewritten to the sidecar's listener before the kernel routes
//! it; the socket gets a record (`SOCKETS`) with the dialled destination, for getpeername()
//! and SO_ORIGINAL_DST. A connect() that cannot be tracked is refused (EPERM), never
//! redirected untracked. Minimum kernel: 5.7 (bpf_get_netns_cookie here).
//! UDP sockets only meet osm-edge's local DNS proxy rule (`interceptor_ebpf::dns`).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{bpf_bind, bpf_get_current_uid_gid, bpf_get_netns_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use interceptor_common::{AF_INET, IPPROTO_TCP, IPPROTO_UDP, Reason, SockRecord, sock_flags, sock_kind};
use interceptor_ebpf::{
    addr::{
        Endpoint, LOOPBACK4, LOOPBACK6_LAST, SockaddrIn, SockaddrIn6, V4_MAPPED_WORD2, port_from_be_low16,
        port_to_be_low16, words_to_bytes,
    },
    counters::count,
    ctx_read,
    decide::{Outbound, outbound},
    maps::{PODS, debug_enabled},
    records::{admit, forget, record, record_or_create},
};

/// Let the connect() proceed.
const ALLOW: i32 = 1;
/// Refuse it: connect() fails with EPERM.
const REFUSE: i32 = 0;

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
    on_connect(&ctx, Endpoint::v4(ip, port_from_be_low16(port)), false)
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
    on_connect(&ctx, Endpoint::from_v6_socket(ip, port_from_be_low16(port)), true)
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, dst: Endpoint, v6_socket: bool) -> i32 {
    let sa = ctx.sock_addr;
    let sk = ctx_read!(sa, __bindgen_anon_1.sk);
    if sk.is_null() {
        return ALLOW;
    }
    // A socket connecting again (its earlier connect() failed): what an earlier decision
    // did to it is undone first, so that nothing of it leaks into this one.
    let previous = match record(sk.cast()) {
        Some(rec) => {
            undo_bind(sa, sk, rec, v6_socket);
            true
        }
        None => false,
    };
    let netns_cookie = unsafe { bpf_get_netns_cookie(sa as *mut c_void) };
    let pod = match unsafe { PODS.get(&netns_cookie) } {
        Some(p) => *p,
        None => {
            if previous {
                forget(sk.cast());
            }
            return ALLOW;
        }
    };
    let dst = unspecified_to_loopback(sk, dst, v6_socket);
    let uid = bpf_get_current_uid_gid() as u32;
    match outbound(&pod, &dst, uid) {
        Outbound::NoRoute => {
            if previous {
                forget(sk.cast());
            }
            ALLOW
        }
        Outbound::Pass { reason, local } => {
            count(netns_cookie, reason);
            if debug_enabled() {
                debug!(ctx, "connect pass uid={} port={} reason={}", uid, dst.port, reason as u32);
            }
            if local && (dst.port == pod.outbound_port || dst.port == pod.inbound_port) {
                // Dialling a sidecar listener directly: conntrack's original destination is
                // the listener itself; it is handed to the listener's end like a redirect.
                return track(ctx, sk, netns_cookie, &dst, sock_kind::CLIENT_DIRECT, None, v6_socket);
            }
            if previous {
                forget(sk.cast());
            }
            ALLOW
        }
        Outbound::Rewrite { reason, to, src } => {
            let verdict = track(ctx, sk, netns_cookie, &dst, sock_kind::CLIENT_REDIRECTED, src, v6_socket);
            if verdict == ALLOW {
                count(netns_cookie, reason);
                rewrite(sa, &to, v6_socket);
                if debug_enabled() {
                    debug!(
                        ctx,
                        "connect redirect uid={} port={} -> {} reason={}", uid, dst.port, to.port, reason as u32
                    );
                }
            }
            verdict
        }
    }
}

/// Gives the socket its record (and, for a redirect, the pod's source address), within
/// the tracking limits; refuses the connect() when it cannot be tracked.
#[inline(always)]
fn track(
    ctx: &SockAddrContext,
    sk: *mut bpf_sock,
    netns_cookie: u64,
    dst: &Endpoint,
    kind: u8,
    src: Option<[u32; 4]>,
    v6_socket: bool,
) -> i32 {
    if let Err(pod_limit) = admit(netns_cookie) {
        count(netns_cookie, if pod_limit { Reason::OutRefusedPodLimit } else { Reason::OutRefusedNodeLimit });
        if debug_enabled() {
            debug!(ctx, "connect refused: tracking limit (pod {})", pod_limit as u32);
        }
        return REFUSE;
    }
    let Some(rec) = record_or_create(sk.cast()) else {
        count(netns_cookie, Reason::OutRefusedNoMemory);
        return REFUSE;
    };
    *rec = SockRecord {
        netns_cookie,
        addr: words_to_bytes(dst.addr),
        bound: [0; 16],
        port: dst.port,
        family: dst.family,
        kind,
        flags: 0,
        _pad: 0,
    };
    if let Some(src) = src
        && bind_source(ctx.sock_addr, sk, dst.family, src, v6_socket)
    {
        rec.flags |= sock_flags::BOUND_BY_US;
        rec.bound = words_to_bytes(src);
    }
    ALLOW
}

/// The kernel connects a TCP socket dialling 0.0.0.0 to its bound address, or to
/// 127.0.0.1 when unbound; `::` to ::1 (::ffff:127.0.0.1 when bound to a v4-mapped
/// address). The chains see that destination, and so must the decision.
#[inline(always)]
fn unspecified_to_loopback(sk: *mut bpf_sock, dst: Endpoint, v6_socket: bool) -> Endpoint {
    if dst.addr[0] != 0 || dst.addr[1] != 0 || dst.addr[2] != 0 || dst.addr[3] != 0 {
        return dst;
    }
    if dst.family == AF_INET {
        // 0.0.0.0, or ::ffff:0.0.0.0 on a dual-stack socket.
        let bound = if v6_socket {
            let b = [
                ctx_read!(sk, src_ip6[0]),
                ctx_read!(sk, src_ip6[1]),
                ctx_read!(sk, src_ip6[2]),
                ctx_read!(sk, src_ip6[3]),
            ];
            if b[0] == 0 && b[1] == 0 && b[2] == V4_MAPPED_WORD2 { b[3] } else { 0 }
        } else {
            ctx_read!(sk, src_ip4)
        };
        return Endpoint::v4(if bound != 0 { bound } else { LOOPBACK4 }, dst.port);
    }
    let mapped = ctx_read!(sk, src_ip6[0]) == 0
        && ctx_read!(sk, src_ip6[1]) == 0
        && ctx_read!(sk, src_ip6[2]) == V4_MAPPED_WORD2;
    if mapped { Endpoint::v4(LOOPBACK4, dst.port) } else { Endpoint::v6([0, 0, 0, LOOPBACK6_LAST], dst.port) }
}

/// Binds an unbound socket to the source the kernel would have used for the dialled
/// destination, so that the sidecar sees the pod's address as the peer, as after REDIRECT.
/// Returns whether it bound the socket.
#[inline(always)]
fn bind_source(sa: *mut bpf_sock_addr, sk: *mut bpf_sock, family: u16, src: [u32; 4], v6_socket: bool) -> bool {
    // Leave sockets the application bound itself alone.
    if ctx_read!(sk, src_port) != 0 {
        return false;
    }
    if !v6_socket {
        if ctx_read!(sk, src_ip4) != 0 {
            return false;
        }
        return bind_to(sa, &mut SockaddrIn::new(src[0], 0));
    }
    let bound =
        [ctx_read!(sk, src_ip6[0]), ctx_read!(sk, src_ip6[1]), ctx_read!(sk, src_ip6[2]), ctx_read!(sk, src_ip6[3])];
    if bound[0] != 0 || bound[1] != 0 || bound[2] != 0 || bound[3] != 0 {
        return false;
    }
    let addr = if family == AF_INET { [0, 0, V4_MAPPED_WORD2, src[0]] } else { src };
    // A failed bind is not fatal: the kernel then picks the loopback source.
    bind_to(sa, &mut SockaddrIn6::new(addr, 0))
}

/// bpf_bind() to `addr` (a `SockaddrIn` or `SockaddrIn6`); whether it worked.
#[inline(always)]
fn bind_to<T>(sa: *mut bpf_sock_addr, addr: &mut T) -> bool {
    unsafe { bpf_bind(sa, (addr as *mut T).cast(), size_of::<T>() as i32) == 0 }
}

/// Undoes the source binding of an earlier redirected connect() of this socket (binding
/// to the unspecified address), unless the application has bound it since.
#[inline(always)]
fn undo_bind(sa: *mut bpf_sock_addr, sk: *mut bpf_sock, rec: &mut SockRecord, v6_socket: bool) {
    if rec.flags & sock_flags::BOUND_BY_US == 0 {
        return;
    }
    rec.flags &= !sock_flags::BOUND_BY_US;
    if ctx_read!(sk, src_port) != 0 {
        return;
    }
    let ours = interceptor_ebpf::addr::bytes_to_words(rec.bound);
    if !v6_socket {
        if ctx_read!(sk, src_ip4) != ours[0] {
            return;
        }
        bind_to(sa, &mut SockaddrIn::new(0, 0));
        return;
    }
    let bound =
        [ctx_read!(sk, src_ip6[0]), ctx_read!(sk, src_ip6[1]), ctx_read!(sk, src_ip6[2]), ctx_read!(sk, src_ip6[3])];
    let want = if rec.family == AF_INET { [0, 0, V4_MAPPED_WORD2, ours[0]] } else { ours };
    if bound[0] != want[0] || bound[1] != want[1] || bound[2] != want[2] || bound[3] != want[3] {
        return;
    }
    bind_to(sa, &mut SockaddrIn6::new([0; 4], 0));
}

#[inline(always)]
fn rewrite(sa: *mut bpf_sock_addr, to: &Endpoint, v6_socket: bool) {
    // Each context field is written with its own 32-bit store: the verifier rejects wider
    // or merged stores to the context.
    unsafe {
        if !v6_socket {
            core::ptr::write_volatile(&mut (*sa).user_ip4, to.addr[0]);
        } else {
            let addr = if to.family == AF_INET { [0, 0, V4_MAPPED_WORD2, to.addr[0]] } else { to.addr };
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], addr[0]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], addr[1]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], addr[2]);
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], addr[3]);
        }
        core::ptr::write_volatile(&mut (*sa).user_port, port_to_be_low16(to.port));
    }
}
