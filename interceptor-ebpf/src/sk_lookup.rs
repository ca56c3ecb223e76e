//! sk_lookup: inbound interception without NAT. Hands a new TCP connection to the pod's
//! inbound listener (15003) unless the PROXY_INBOUND chain would let it through. The
//! accepted socket's local address stays the destination the client used, so it is the
//! original destination.
//!
//! A sk_lookup program cannot ask which network namespace it runs in, and the kernel would
//! let it hand a connection to a socket of another namespace. So each pod gets its own tiny
//! program (written by the loader: `interceptor::ebpf::trampoline`) that stores the pod's
//! network namespace cookie in `STEER_NETNS` and tail-calls this shared one: a connection
//! can only ever reach a listener registered for the namespace it arrived in.
//! Minimum kernel: 5.17 (`ingress_ifindex`).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_sock, sk_action::SK_DROP, sk_action::SK_PASS},
    helpers::generated::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use interceptor_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, IfaceKey, ListenerKey, PodConfig, PortKey, Reason, capacity::LISTENER_SLOTS,
    pod_flags, port_flags, route_flags,
};
use interceptor_ebpf::{
    addr::Endpoint,
    counters::count,
    ctx_read,
    maps::{IFACES, LISTENERS, PODS, PORTS, ROUTES, STEER_NETNS},
};

const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    let Some(steer) = STEER_NETNS.get(0) else { return SK_DROP };
    if steer.ctx != ctx.lookup as u64 {
        // Not written for this lookup: another one ran on this CPU in between. Refuse rather
        // than risk another pod's listener.
        return SK_DROP;
    }
    let netns_cookie = steer.netns_cookie;
    let Some(pod) = (unsafe { PODS.get(&netns_cookie) }).copied() else { return SK_PASS };
    match decide(&ctx, netns_cookie, &pod) {
        Some(reason) => {
            count(netns_cookie, reason);
            if matches!(reason, Reason::InNoListener) { SK_DROP } else { SK_PASS }
        }
        None => SK_PASS,
    }
}

#[inline(always)]
fn decide(ctx: &SkLookupContext, netns_cookie: u64, pod: &PodConfig) -> Option<Reason> {
    let l = ctx.lookup;
    if ctx_read!(l, protocol) != IPPROTO_TCP {
        return None;
    }
    let family = ctx_read!(l, family);
    let ifindex = ctx_read!(l, ingress_ifindex);
    // The pod talking to itself never traverses PREROUTING. Traffic arriving on lo (ifindex
    // 1 in every namespace) is the cheap case; connections to the pod's own address report
    // the address's device, so the source is also checked against the pod's local routes.
    if ifindex == LOOPBACK_IFINDEX {
        return Some(Reason::InFromPod);
    }
    let remote = if family == AF_INET as u32 {
        Endpoint::v4(ctx_read!(l, remote_ip4), 0)
    } else {
        let r = [
            ctx_read!(l, remote_ip6[0]),
            ctx_read!(l, remote_ip6[1]),
            ctx_read!(l, remote_ip6[2]),
            ctx_read!(l, remote_ip6[3]),
        ];
        Endpoint::v6(r, 0)
    };
    if let Some(route) = ROUTES.get(&remote.lpm_key(pod.policy_id))
        && route.flags & route_flags::LOCAL != 0
    {
        return Some(Reason::InFromPod);
    }
    let port = ctx_read!(l, local_port) as u16;
    // The chain's order: -I'd port exclusions, -I'd interface exclusions, reserved ports.
    let port_key = PortKey { policy_id: pod.policy_id, port, _pad: 0 };
    if let Some(flags) = unsafe { PORTS.get(&port_key) }
        && *flags & port_flags::INBOUND_EXCLUDED != 0
    {
        return Some(Reason::InExcludedPort);
    }
    if pod.flags & pod_flags::HAS_IFACE_EXCLUSIONS != 0 {
        let key = IfaceKey { policy_id: pod.policy_id, ifindex };
        if unsafe { IFACES.get(&key) }.is_some() {
            return Some(Reason::InExcludedInterface);
        }
    }
    let reserved = pod.reserved_inbound_ports;
    if port != 0
        && (port == reserved[0]
            || port == reserved[1]
            || port == reserved[2]
            || port == reserved[3]
            || port == reserved[4]
            || port == reserved[5])
    {
        return Some(Reason::InReservedPort);
    }
    // An IPv4 connection may go to an IPv4 listener or to a dual-stack IPv6 one.
    if family == AF_INET as u32 && assign(ctx, netns_cookie, AF_INET, pod.inbound_port) {
        return Some(Reason::InRedirect);
    }
    if assign(ctx, netns_cookie, AF_INET6, pod.inbound_port) {
        return Some(Reason::InRedirect);
    }
    Some(Reason::InNoListener)
}

/// Hands the connection to the first registered listener of the family that still listens
/// on the inbound port (a stale one, from before a port change, is skipped). With
/// SO_REUSEPORT, the kernel then picks among that listener's group.
#[inline(always)]
fn assign(ctx: &SkLookupContext, netns_cookie: u64, family: u16, port: u16) -> bool {
    for slot in 0..LISTENER_SLOTS {
        let key = ListenerKey { netns_cookie, family: family as u32, slot };
        let sk = unsafe {
            bpf_map_lookup_elem(core::ptr::addr_of!(LISTENERS) as *mut c_void, (&key as *const ListenerKey).cast())
        }
        .cast::<bpf_sock>();
        if sk.is_null() {
            continue;
        }
        let ok =
            ctx_read!(sk, src_port) == port as u32 && unsafe { bpf_sk_assign(ctx.lookup.cast(), sk.cast(), 0) } == 0;
        unsafe { bpf_sk_release(sk.cast()) };
        if ok {
            return true;
        }
    }
    false
}
