//! sock_ops: follows a redirected connection from the application's socket to the sidecar's
//! accepted socket, remembers which connections of enrolled pods were accepted, and
//! registers each pod's inbound listener for `sk_lookup`.
//!
//! Minimum kernel: 5.15 (bpf_get_netns_cookie in sock_ops; TCP_LISTEN_CB sockhash updates
//! since 5.9).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock_ops,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_sock_ops_cb_flags_set},
    macros::sock_ops,
    programs::SockOpsContext,
};
use interceptor_common::{AF_INET, ListenerKey};

use interceptor_ebpf::{
    addr::{Endpoint, conn_key},
    ctx_read,
    maps::{ACCEPTED, LISTENERS, ORIG_BY_COOKIE, PENDING, PODS},
};

/// TCP_CLOSE in the kernel's TCP state numbering.
const TCP_CLOSE: u32 = 7;

/// The function is not named `sock_ops`: the macro's section has that name.
#[sock_ops]
pub fn track_connections(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(ops),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ops),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(ops),
        BPF_SOCK_OPS_STATE_CB => on_state_change(ops),
        _ => {}
    }
    1
}

/// The two ends of the connection as this socket sees them.
#[inline(always)]
fn endpoints(ops: *mut bpf_sock_ops) -> (Endpoint, Endpoint) {
    // local_port is in host order; remote_port is network order in the high 16 bits.
    let local_port = ctx_read!(ops, local_port) as u16;
    let remote_port = u16::from_be((ctx_read!(ops, remote_port) >> 16) as u16);
    if ctx_read!(ops, family) == AF_INET as u32 {
        (Endpoint::v4(ctx_read!(ops, local_ip4), local_port), Endpoint::v4(ctx_read!(ops, remote_ip4), remote_port))
    } else {
        let l = [
            ctx_read!(ops, local_ip6[0]),
            ctx_read!(ops, local_ip6[1]),
            ctx_read!(ops, local_ip6[2]),
            ctx_read!(ops, local_ip6[3]),
        ];
        let r = [
            ctx_read!(ops, remote_ip6[0]),
            ctx_read!(ops, remote_ip6[1]),
            ctx_read!(ops, remote_ip6[2]),
            ctx_read!(ops, remote_ip6[3]),
        ];
        (Endpoint::from_v6_socket(l, local_port), Endpoint::from_v6_socket(r, remote_port))
    }
}

/// Client side established. A redirected socket (its connect() left its dialled destination
/// under its cookie) announces that destination under the tuple the listener will see, and
/// asks for state callbacks to withdraw it when it closes.
#[inline(always)]
fn on_active_established(ops: *mut bpf_sock_ops) {
    let cookie = unsafe { bpf_get_socket_cookie(ops as *mut c_void) };
    let orig = match unsafe { ORIG_BY_COOKIE.get(&cookie) } {
        Some(o) => *o,
        None => return,
    };
    let (local, remote) = endpoints(ops);
    // Seen from the listener: local = where we connected to, remote = us.
    let key = conn_key(orig.netns_cookie, &remote, &local);
    let _ = PENDING.insert(&key, &orig, 0);
    unsafe { bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG as i32) };
}

/// A redirected application socket closed: its tuple may be reused, so withdraw it.
/// (TCP_CLOSE comes after the peer's FIN or a reset: the sidecar has already read it.)
#[inline(always)]
fn on_state_change(ops: *mut bpf_sock_ops) {
    let new_state = unsafe { (*ops).__bindgen_anon_1.args[1] };
    if new_state != TCP_CLOSE {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ops as *mut c_void) };
    let orig = match unsafe { ORIG_BY_COOKIE.get(&cookie) } {
        Some(o) => *o,
        None => return,
    };
    let (local, remote) = endpoints(ops);
    let _ = PENDING.remove(&conn_key(orig.netns_cookie, &remote, &local));
    let _ = ORIG_BY_COOKIE.remove(&cookie);
}

/// Server side established in an enrolled pod: unless it is the sidecar's end of a
/// redirected connection (in PENDING), remember that this socket was accepted, so that
/// SO_ORIGINAL_DST answers its local address — which, for connections steered by sk_lookup,
/// is the destination the client used.
#[inline(always)]
fn on_passive_established(ops: *mut bpf_sock_ops) {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ops.cast()) };
    if unsafe { PODS.get(&netns_cookie) }.is_none() {
        return;
    }
    let (local, remote) = endpoints(ops);
    let key = conn_key(netns_cookie, &local, &remote);
    if unsafe { PENDING.get(&key) }.is_none() {
        let _ = ACCEPTED.insert(&key, &1u8, 0);
    }
}

/// listen(): the pod's inbound listener becomes the target of its sk_lookup program. The
/// newest listener wins; the kernel drops closed sockets from the map by itself.
#[inline(always)]
fn on_listen(ops: *mut bpf_sock_ops) {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ops.cast()) };
    let pod = match unsafe { PODS.get(&netns_cookie) } {
        Some(p) => *p,
        None => return,
    };
    let local_port = ctx_read!(ops, local_port) as u16;
    if local_port != pod.inbound_port {
        return;
    }
    let family = ctx_read!(ops, family);
    let mut key = ListenerKey { netns_cookie, family, _pad: 0 };
    let _ = LISTENERS.update(&mut key, unsafe { &mut *ops }, 0);
}
