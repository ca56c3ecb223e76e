//! osm-edge's local DNS proxy rule without NAT:
//!
//! ```text
//! -A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT --to-destination 127.0.0.153:5300
//! ```
//!
//! For every UID of an enrolled pod whose policy enables it (`pod_flags::LOCAL_DNS_PROXY`),
//! as the hooks see the datagram:
//!
//! * connect4/6 of a UDP socket to 127.0.0.153:53 (or ::ffff:127.0.0.153 on a dual-stack
//!   socket: IPv4 on the wire, where the IPv4 rule applies) connects it to :5300;
//! * sendmsg4 of a datagram to 127.0.0.153:53 sends it to :5300. A dual-stack socket's
//!   datagram to ::ffff:127.0.0.153 also runs sendmsg4: `udpv6_sendmsg` hands v4-mapped
//!   destinations to `udp_sendmsg` before the sendmsg6 hook, which therefore never sees one;
//! * recvmsg4/6: a reply from 127.0.0.153:5300 appears to come from :53, as conntrack's
//!   un-NAT makes it, but only on a socket whose traffic was rewritten (`dns_mark::NATED`):
//!   conntrack un-NATs the replies of NATed flows only;
//! * getpeername4/6 of a socket connected through the rule answers :53.
//!
//! The destination address stays 127.0.0.153 (only the port changes, as in the rule), so the
//! kernel picks the same source as under NAT. Without a listener on :5300 the kernel answers
//! as it does under the DNAT rule: a connected socket gets ECONNREFUSED (ICMP port
//! unreachable), an unconnected one waits for a reply that never comes — never another server.
//! A connect() elsewhere ends the socket's marks (it then hears only from its new peer).
//!
//! Where the replies could not get the source conntrack gives them, the send is refused
//! (EPERM, counted as `dns_proxy_refused`) instead of answered wrongly: one unconnected socket
//! that sends both through the rule and straight to 127.0.0.153:5300 (conntrack keeps the two
//! flows apart by moving a source port; here their replies look alike), or no memory for the
//! socket's mark.
//!
//! The per-socket mark lives in socket storage (`DNS_SOCKETS`), freed with the socket.
//! Minimum kernel: 5.3 (bpf_sk_storage_get in cgroup sock_addr programs); recvmsg4/6 5.2,
//! sendmsg4 4.18.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_uid_gid, bpf_get_netns_cookie},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use interceptor_common::{DnsMark, IPPROTO_UDP, Reason, dns_mark, dns_proxy, pod_flags};

use crate::{
    addr::{V4_MAPPED_WORD2, port_from_be_low16, port_to_be_low16},
    counters::count,
    maps::{DNS_SOCKETS, PODS, debug_enabled},
};

/// 127.0.0.153 as a 32-bit load of network-order bytes.
pub const NAMESERVER4: u32 = u32::from_ne_bytes(dns_proxy::ADDR);

/// The destination of a sock_addr context, if it is IPv4 (or v4-mapped on an IPv6 socket):
/// (address word, port in host order).
#[inline(always)]
fn ipv4_peer(sa: *mut bpf_sock_addr, v6_socket: bool) -> Option<(u32, u16)> {
    let port = port_from_be_low16(ctx_read!(sa, user_port));
    if !v6_socket {
        return Some((ctx_read!(sa, user_ip4), port));
    }
    // Read word by word; only a v4-mapped address can match the IPv4 rule.
    if ctx_read!(sa, user_ip6[0]) != 0
        || ctx_read!(sa, user_ip6[1]) != 0
        || ctx_read!(sa, user_ip6[2]) != V4_MAPPED_WORD2
    {
        return None;
    }
    Some((ctx_read!(sa, user_ip6[3]), port))
}

/// Writes only the port: the rule keeps the address.
#[inline(always)]
fn set_port(sa: *mut bpf_sock_addr, port: u16) {
    unsafe { core::ptr::write_volatile(&mut (*sa).user_port, port_to_be_low16(port)) };
}

/// Whether the pod this socket belongs to is enrolled with the DNS proxy enabled; its
/// network namespace cookie if so.
#[inline(always)]
fn enabled_pod(sa: *mut bpf_sock_addr) -> Option<u64> {
    let netns_cookie = unsafe { bpf_get_netns_cookie(sa as *mut c_void) };
    let pod = unsafe { PODS.get(&netns_cookie) }?;
    if pod.flags & pod_flags::LOCAL_DNS_PROXY == 0 {
        return None;
    }
    Some(netns_cookie)
}

/// The socket's mark, if it has one.
#[inline(always)]
fn mark(ctx: &SockAddrContext) -> Option<&'static mut DnsMark> {
    let p = unsafe { DNS_SOCKETS.get_ptr_mut(ctx) };
    if p.is_null() { None } else { Some(unsafe { &mut *p }) }
}

/// Return value of a sock_addr program: let the call go on.
pub const ALLOW: i32 = 1;
/// Return value of a connect/sendmsg program: the call fails with EPERM.
pub const REFUSE: i32 = 0;

/// What the rule did to a connect() or sendmsg().
#[derive(PartialEq, Eq)]
enum Dnat {
    /// Not UDP to 127.0.0.153:53 of a pod with the DNS proxy enabled.
    NotMatched,
    /// Sent to :5300; the socket is marked.
    Rewritten,
    /// Refused (EPERM, counted): see `refuse`.
    Refused,
}

/// Rewrites a query to 127.0.0.153:53 to :5300 and marks the socket; watches datagrams sent
/// straight to :5300 (`direct`).
#[inline(always)]
fn dnat(ctx: &SockAddrContext, v6_socket: bool, connecting: bool) -> Dnat {
    let sa = ctx.sock_addr;
    if ctx_read!(sa, protocol) != IPPROTO_UDP {
        return Dnat::NotMatched;
    }
    let Some((ip, port)) = ipv4_peer(sa, v6_socket) else { return Dnat::NotMatched };
    if ip != NAMESERVER4 {
        return Dnat::NotMatched;
    }
    if port == dns_proxy::PROXY_PORT && !connecting {
        return direct(ctx);
    }
    if port != dns_proxy::PORT {
        return Dnat::NotMatched;
    }
    let Some(netns_cookie) = enabled_pod(sa) else { return Dnat::NotMatched };
    let p = unsafe { DNS_SOCKETS.get_or_insert_ptr_mut(ctx, None) };
    if p.is_null() {
        // No memory for the mark: without it the reply could not be un-NATed, and sending
        // to :53 instead would be a silent fallback.
        return refuse(ctx, netns_cookie, false);
    }
    let m = unsafe { &mut *p };
    if connecting {
        // Connected through the rule: the socket now hears only from the proxy.
        m.flags = dns_mark::NATED | dns_mark::CONNECTED;
    } else if m.flags & dns_mark::DIRECT != 0 {
        // The socket also talks to :5300 directly: replies of both would look alike here.
        return refuse(ctx, netns_cookie, true);
    } else {
        m.flags |= dns_mark::NATED;
    }
    set_port(sa, dns_proxy::PROXY_PORT);
    count(netns_cookie, Reason::OutDnsProxy);
    if debug_enabled() {
        let (uid, connect) = (bpf_get_current_uid_gid() as u32, connecting as u32);
        debug!(ctx, "dns proxy uid={} connect={} 127.0.0.153:53 -> :5300", uid, connect);
    }
    Dnat::Rewritten
}

/// A datagram sent straight to 127.0.0.153:5300 (sendmsg4). Conntrack keeps such a flow
/// apart from the DNATed one even on the same socket (it moves its source port) and does not
/// un-NAT its replies; here both flows' replies reach the socket from 127.0.0.153:5300 and
/// only the mark tells them apart. So a socket never uses both: the second kind is refused.
#[inline(always)]
fn direct(ctx: &SockAddrContext) -> Dnat {
    let sa = ctx.sock_addr;
    if let Some(m) = mark(ctx) {
        if m.flags & dns_mark::CONNECTED != 0 {
            // The socket's own peer (a dual-stack socket's send() runs sendmsg4 with it).
            return Dnat::NotMatched;
        }
        if m.flags & dns_mark::NATED != 0 {
            let netns_cookie = unsafe { bpf_get_netns_cookie(sa as *mut c_void) };
            return refuse(ctx, netns_cookie, true);
        }
    }
    let Some(netns_cookie) = enabled_pod(sa) else { return Dnat::NotMatched };
    let p = unsafe { DNS_SOCKETS.get_or_insert_ptr_mut(ctx, None) };
    if p.is_null() {
        return refuse(ctx, netns_cookie, false);
    }
    unsafe { (*p).flags |= dns_mark::DIRECT };
    Dnat::NotMatched
}

/// Refuses a send or connect whose reply could not be given the source conntrack would give
/// it: visible (EPERM, the `dns_proxy_refused` counter) rather than silently wrong.
#[inline(always)]
fn refuse(ctx: &SockAddrContext, netns_cookie: u64, mixed: bool) -> Dnat {
    if debug_enabled() {
        let (uid, mixed) = (bpf_get_current_uid_gid() as u32, mixed as u32);
        debug!(ctx, "dns proxy refused uid={} mixed={} (0: no memory for the socket's mark)", uid, mixed);
    }
    // Counted for enrolled pods only (a socket marked before its pod was unenrolled must not
    // leave a counter nobody removes).
    if unsafe { PODS.get(&netns_cookie) }.is_some() {
        count(netns_cookie, Reason::OutDnsProxyRefused);
    }
    Dnat::Refused
}

/// connect4/connect6 of a UDP socket: the program's return value.
#[inline(always)]
pub fn on_connect(ctx: &SockAddrContext, v6_socket: bool) -> i32 {
    match dnat(ctx, v6_socket, true) {
        Dnat::Rewritten => ALLOW,
        Dnat::Refused => REFUSE,
        Dnat::NotMatched => {
            // Connected elsewhere (or no longer through the rule): from now on the socket
            // hears only from its new peer, so getpeername() and the replies' source are
            // the kernel's again — also if that peer is 127.0.0.153:5300 itself, whose
            // replies conntrack would not un-NAT (a flow of its own).
            if let Some(m) = mark(ctx) {
                m.flags = 0;
            }
            ALLOW
        }
    }
}

/// sendmsg4: a datagram with an explicit destination. The program's return value.
#[inline(always)]
pub fn on_sendmsg(ctx: &SockAddrContext) -> i32 {
    if dnat(ctx, false, false) == Dnat::Refused { REFUSE } else { ALLOW }
}

/// Whether the context's address is 127.0.0.153:5300 on a UDP socket carrying `flag`.
#[inline(always)]
fn from_proxy(ctx: &SockAddrContext, v6_socket: bool, flag: u32) -> bool {
    let sa = ctx.sock_addr;
    let Some((ip, port)) = ipv4_peer(sa, v6_socket) else { return false };
    if ip != NAMESERVER4 || port != dns_proxy::PROXY_PORT || ctx_read!(sa, protocol) != IPPROTO_UDP {
        return false;
    }
    match mark(ctx) {
        Some(m) => m.flags & flag != 0,
        None => false,
    }
}

/// recvmsg4/6: the source of a reply of DNATed traffic is the address the query went to.
#[inline(always)]
pub fn on_recvmsg(ctx: &SockAddrContext, v6_socket: bool) {
    if from_proxy(ctx, v6_socket, dns_mark::NATED) {
        set_port(ctx.sock_addr, dns_proxy::PORT);
    }
}

/// getpeername4/6 of a UDP socket (the caller checked the protocol).
#[inline(always)]
pub fn on_getpeername(ctx: &SockAddrContext, v6_socket: bool) {
    if from_proxy(ctx, v6_socket, dns_mark::CONNECTED) {
        set_port(ctx.sock_addr, dns_proxy::PORT);
    }
}
