//! cgroup/post_bind4 and post_bind6: marks the proxy's own sockets bound to the pod's
//! inbound port, so that only they become inbound listeners (`sock_ops` registers a
//! listener at listen() only if it carries this mark). bind() runs in the caller's context,
//! where the caller's UID is known; listen() callbacks do not have it on every kernel.
//! Minimum kernel: 5.10 (socket storage in cgroup sock programs).
use aya_ebpf::{
    helpers::{bpf_get_current_uid_gid, bpf_get_netns_cookie},
    macros::cgroup_sock,
    programs::SockContext,
};
use interceptor_common::{IPPROTO_TCP, sock_kind};
use interceptor_ebpf::{ctx_read, maps::PODS, records::record_or_create};

#[cgroup_sock(post_bind4)]
pub fn mark_proxy_listener4(ctx: SockContext) -> i32 {
    mark(&ctx);
    1
}

#[cgroup_sock(post_bind6)]
pub fn mark_proxy_listener6(ctx: SockContext) -> i32 {
    mark(&ctx);
    1
}

#[inline(always)]
fn mark(ctx: &SockContext) {
    let sk = ctx.sock;
    if ctx_read!(sk, protocol) != IPPROTO_TCP {
        return;
    }
    let netns_cookie = unsafe { bpf_get_netns_cookie(sk.cast()) };
    let Some(pod) = (unsafe { PODS.get(&netns_cookie) }) else { return };
    if ctx_read!(sk, src_port) != pod.inbound_port as u32 || bpf_get_current_uid_gid() as u32 != pod.proxy_uid {
        return;
    }
    if let Some(rec) = record_or_create(sk.cast()) {
        rec.kind = sock_kind::PROXY_LISTENER;
        rec.netns_cookie = netns_cookie;
    }
}
