//! The outbound decision: the documented PROXY_OUTPUT chain (plus osm-edge's PodIP DNAT in
//! OUTPUT), in the chain's own order, first match wins. The pure model in
//! `interceptor::policy::decide` is the oracle this must agree with.
use interceptor_common::{AF_INET, PodConfig, PortKey, Reason, RouteValue, pod_flags, port_flags, route_flags};

use crate::{
    addr::Endpoint,
    maps::{EXCLUDED_CIDRS, INCLUDED_CIDRS, PORTS, ROUTES},
};

pub enum Outbound {
    /// Leave the connect() alone. `local`: the destination is an address of the pod.
    Pass { reason: Reason, local: bool },
    /// No route to the destination: leave it alone and do not count (the kernel fails the
    /// connect() before iptables would see a packet).
    NoRoute,
    /// Rewrite the destination. `src` is the source address the kernel would have chosen
    /// for the dialled destination, to bind the socket to when it is unbound.
    Rewrite { reason: Reason, to: Endpoint, src: Option<[u32; 4]> },
}

#[inline(always)]
pub fn outbound(pod: &PodConfig, dst: &Endpoint, uid: u32) -> Outbound {
    let route: RouteValue = match ROUTES.get(&dst.lpm_key(pod.policy_id)) {
        Some(r) if r.flags & route_flags::UNREACHABLE == 0 => *r,
        _ => return Outbound::NoRoute,
    };
    let src = if route.flags & route_flags::HAS_SRC != 0 { Some(crate::addr::bytes_to_words(route.src)) } else { None };
    let local = route.flags & route_flags::LOCAL != 0;
    let loopback = dst.is_loopback_host();
    let proxy = uid == pod.proxy_uid;

    // -I OUTPUT -p tcp -o lo -d 127.0.0.1/32 -m owner --uid-owner UID -j DNAT --to $POD_IP
    if pod.flags & pod_flags::POD_IP_MODE != 0 && proxy && local && loopback {
        if let Some(pod_ip) = pod_ip(pod, dst.family) {
            let to = Endpoint { family: dst.family, addr: pod_ip, port: dst.port };
            return Outbound::Rewrite { reason: Reason::OutPodIpDnat, to, src };
        }
    }
    // -o lo ! -d 127.0.0.1/32 --uid-owner UID -j PROXY_IN_REDIRECT
    if local && !loopback && proxy {
        let to = redirect_target(dst.family, pod.inbound_port);
        return Outbound::Rewrite { reason: Reason::OutProxyToLocal, to, src };
    }
    // -o lo ! --uid-owner UID -j RETURN
    if local && !proxy {
        return Outbound::Pass { reason: Reason::OutLocalNotProxy, local };
    }
    // --uid-owner UID -j RETURN
    if proxy {
        return Outbound::Pass { reason: Reason::OutProxyUid, local };
    }
    // -d 127.0.0.1/32 -j RETURN
    if loopback {
        return Outbound::Pass { reason: Reason::OutLoopback, local };
    }
    // -o IFACE -j RETURN
    if route.flags & route_flags::EXCLUDED_INTERFACE != 0 {
        return Outbound::Pass { reason: Reason::OutExcludedInterface, local };
    }
    // -d CIDR -j RETURN: the pod's own ranges are flags of its route entry (no lookup),
    // the shared list is one lookup (none when the pod has no such list).
    if route.flags & route_flags::POD_EXCLUDED != 0
        || (pod.excluded_list != 0 && EXCLUDED_CIDRS.get(&dst.lpm_key(pod.excluded_list)).is_some())
    {
        return Outbound::Pass { reason: Reason::OutExcludedCidr, local };
    }
    // -p tcp --match multiport --dports P,... -j RETURN
    if pod.ports_list != 0 {
        let port_key = PortKey { policy_id: pod.ports_list, port: dst.port, _pad: 0 };
        if let Some(flags) = unsafe { PORTS.get(&port_key) } {
            if *flags & port_flags::OUTBOUND_EXCLUDED != 0 {
                return Outbound::Pass { reason: Reason::OutExcludedPort, local };
            }
        }
    }
    let out = redirect_target(dst.family, pod.outbound_port);
    let has_inclusions = if dst.family == AF_INET {
        pod.flags & pod_flags::HAS_INCLUSIONS_V4 != 0
    } else {
        pod.flags & pod_flags::HAS_INCLUSIONS_V6 != 0
    };
    if has_inclusions {
        // -d CIDR -j PROXY_REDIRECT ... -j RETURN
        if route.flags & route_flags::POD_INCLUDED != 0
            || (pod.included_list != 0 && INCLUDED_CIDRS.get(&dst.lpm_key(pod.included_list)).is_some())
        {
            return Outbound::Rewrite { reason: Reason::OutIncluded, to: out, src };
        }
        return Outbound::Pass { reason: Reason::OutNotIncluded, local };
    }
    // -j PROXY_REDIRECT
    Outbound::Rewrite { reason: Reason::OutDefault, to: out, src }
}

/// Where REDIRECT sends a locally generated connection: 127.0.0.1 (::1 for IPv6).
#[inline(always)]
fn redirect_target(family: u16, port: u16) -> Endpoint {
    if family == AF_INET {
        Endpoint::v4(crate::addr::LOOPBACK4, port)
    } else {
        Endpoint::v6([0, 0, 0, crate::addr::LOOPBACK6_LAST], port)
    }
}

#[inline(always)]
fn pod_ip(pod: &PodConfig, family: u16) -> Option<[u32; 4]> {
    if family == AF_INET {
        if pod.flags & pod_flags::HAS_POD_IP4 == 0 {
            return None;
        }
        Some([u32::from_ne_bytes(pod.pod_ip4), 0, 0, 0])
    } else {
        if pod.flags & pod_flags::HAS_POD_IP6 == 0 {
            return None;
        }
        Some(crate::addr::bytes_to_words(pod.pod_ip6))
    }
}
