//! sk_lookup: inbound interception without NAT. One program, linked to each enrolled pod's
//! network namespace; hands a new TCP connection to the pod's inbound listener (15003)
//! unless the PROXY_INBOUND chain would let it through. The accepted socket's local address
//! stays the destination the client used, so it is the original destination.
//!
//! A sk_lookup program cannot ask which namespace it runs in; it finds the pod by the
//! connection's destination address (`POD_ADDRS`, written at enroll: pod addresses are
//! unique on a node). A destination that is not a pod address passes untouched.
//! Minimum kernel: 5.17 (`ingress_ifindex`).
use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use interceptor_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, IfaceKey, ListenerKey, PodAddrKey, PortKey, Reason, pod_flags, port_flags,
    route_flags,
};

use interceptor_ebpf::{
    addr::{Endpoint, words_to_bytes},
    counters::count,
    ctx_read,
    maps::{IFACES, LISTENERS, POD_ADDRS, PODS, PORTS, ROUTES},
};

const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    match decide(&ctx) {
        Some((netns_cookie, reason)) => {
            count(netns_cookie, reason);
            if matches!(reason, Reason::InNoListener) { SK_DROP } else { SK_PASS }
        }
        None => SK_PASS,
    }
}

#[inline(always)]
fn decide(ctx: &SkLookupContext) -> Option<(u64, Reason)> {
    let l = ctx.lookup;
    if ctx_read!(l, protocol) != IPPROTO_TCP {
        return None;
    }
    let family = ctx_read!(l, family);
    let local = if family == AF_INET as u32 {
        Endpoint::v4(ctx_read!(l, local_ip4), 0)
    } else {
        let a = [
            ctx_read!(l, local_ip6[0]),
            ctx_read!(l, local_ip6[1]),
            ctx_read!(l, local_ip6[2]),
            ctx_read!(l, local_ip6[3]),
        ];
        Endpoint::v6(a, 0)
    };
    let addr_key = PodAddrKey { family: local.family as u32, addr: words_to_bytes(local.addr) };
    let netns_cookie = *unsafe { POD_ADDRS.get(&addr_key) }?;
    let reason = decide_for_pod(ctx, netns_cookie, family)?;
    Some((netns_cookie, reason))
}

#[inline(always)]
fn decide_for_pod(ctx: &SkLookupContext, netns_cookie: u64, family: u32) -> Option<Reason> {
    let l = ctx.lookup;
    let pod = unsafe { PODS.get(&netns_cookie) }.copied()?;
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
    if let Some(route) = ROUTES.get(&remote.lpm_key(pod.policy_id)) {
        if route.flags & route_flags::LOCAL != 0 {
            return Some(Reason::InFromPod);
        }
    }
    let port = ctx_read!(l, local_port) as u16;
    // The chain's order: -I'd port exclusions, -I'd interface exclusions, reserved ports.
    let port_key = PortKey { policy_id: pod.policy_id, port, _pad: 0 };
    if let Some(flags) = unsafe { PORTS.get(&port_key) } {
        if *flags & port_flags::INBOUND_EXCLUDED != 0 {
            return Some(Reason::InExcludedPort);
        }
    }
    if pod.flags & pod_flags::HAS_IFACE_EXCLUSIONS != 0 {
        let key = IfaceKey { policy_id: pod.policy_id, ifindex };
        if unsafe { IFACES.get(&key) }.is_some() {
            return Some(Reason::InExcludedInterface);
        }
    }
    let reserved = pod.reserved_inbound_ports;
    if port == reserved[0]
        || port == reserved[1]
        || port == reserved[2]
        || port == reserved[3]
        || port == reserved[4]
        || port == reserved[5]
    {
        if port != 0 {
            return Some(Reason::InReservedPort);
        }
    }
    // An IPv4 connection may go to an IPv4 listener or to a dual-stack IPv6 one.
    if family == AF_INET as u32 && assign(ctx, netns_cookie, AF_INET) {
        return Some(Reason::InRedirect);
    }
    if assign(ctx, netns_cookie, AF_INET6) {
        return Some(Reason::InRedirect);
    }
    Some(Reason::InNoListener)
}

#[inline(always)]
fn assign(ctx: &SkLookupContext, netns_cookie: u64, family: u16) -> bool {
    let key = ListenerKey { netns_cookie, family: family as u32, _pad: 0 };
    LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok()
}
