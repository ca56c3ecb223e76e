//! cgroup/recvmsg4 and recvmsg6: the source address recvfrom()/recvmsg() report for a
//! reply of traffic the local DNS proxy rule sent to 127.0.0.153:5300 is 127.0.0.153:53, as
//! after conntrack's un-NAT (recvmsg6: ::ffff:127.0.0.153 on a dual-stack socket). Replies
//! on sockets the rule never rewrote are untouched. The kernel runs these hooks only when
//! the caller asks for the source address, and a recvmsg program cannot refuse the call.
//! Minimum kernel: 5.2 (the hooks), 5.3 (socket storage in them; see `interceptor_ebpf::dns`).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

#[cgroup_sock_addr(recvmsg4)]
pub fn dns_proxy_recvmsg4(ctx: SockAddrContext) -> i32 {
    interceptor_ebpf::dns::on_recvmsg(&ctx, false);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn dns_proxy_recvmsg6(ctx: SockAddrContext) -> i32 {
    interceptor_ebpf::dns::on_recvmsg(&ctx, true);
    1
}
