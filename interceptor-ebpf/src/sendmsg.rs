//! cgroup/sendmsg4: osm-edge's local DNS proxy rule for datagrams sent with an explicit
//! destination (sendto/sendmsg on an unconnected UDP socket, or on any socket naming one).
//! A dual-stack IPv6 socket's datagram to ::ffff:127.0.0.153 runs this hook too: the kernel
//! hands v4-mapped destinations to the IPv4 send path, so no sendmsg6 program is needed.
//! Minimum kernel: 4.18 (the hook), 5.3 (socket storage in it; see `interceptor_ebpf::dns`).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

#[cgroup_sock_addr(sendmsg4)]
pub fn dns_proxy_sendmsg4(ctx: SockAddrContext) -> i32 {
    interceptor_ebpf::dns::on_sendmsg(&ctx)
}
