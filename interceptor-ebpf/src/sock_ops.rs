//! sock_ops: follows a redirected connection from the application's socket to the sidecar's
//! accepted socket, records every other connection's original destination, and registers
//! each pod's inbound listener for `sk_lookup`.
//!
//! Minimum kernel: 5.15 (bpf_get_netns_cookie in sock_ops; TCP_LISTEN_CB sockhash updates
//! since 5.9).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock_ops,
    },
    helpers::{bpf_get_netns_cookie, generated::bpf_sk_storage_get},
    macros::sock_ops,
    programs::SockOpsContext,
};
use interceptor_common::{AF_INET, ConnKey, ListenerKey, OrigDst, orig_kind};

use crate::{
    addr::{Endpoint, words_to_bytes},
    maps::{LISTENERS, PENDING, PODS, SOCK_ORIG},
};

/// The function is not named `sock_ops`: the macro's section has that name.
#[sock_ops]
pub fn track_connections(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(ops),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ops),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(ops),
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
        let l = [ctx_read!(ops, local_ip6[0]), ctx_read!(ops, local_ip6[1]), ctx_read!(ops, local_ip6[2]), ctx_read!(ops, local_ip6[3])];
        let r = [ctx_read!(ops, remote_ip6[0]), ctx_read!(ops, remote_ip6[1]), ctx_read!(ops, remote_ip6[2]), ctx_read!(ops, remote_ip6[3])];
        (Endpoint::from_v6_socket(l, local_port), Endpoint::from_v6_socket(r, remote_port))
    }
}

#[inline(always)]
fn storage(ops: *mut bpf_sock_ops, init: Option<&mut OrigDst>) -> *mut OrigDst {
    let sk = ctx_read!(ops, __bindgen_anon_2.sk);
    if sk.is_null() {
        return core::ptr::null_mut();
    }
    let map = core::ptr::from_ref(&SOCK_ORIG).cast_mut().cast::<c_void>();
    match init {
        Some(v) => unsafe {
            bpf_sk_storage_get(map, sk.cast(), (v as *mut OrigDst).cast(), BPF_SK_STORAGE_GET_F_CREATE as u64)
        }
        .cast(),
        None => unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast(),
    }
}

#[inline(always)]
fn conn_key(netns_cookie: u64, local: &Endpoint, remote: &Endpoint) -> ConnKey {
    ConnKey {
        netns_cookie,
        local_addr: words_to_bytes(local.addr),
        remote_addr: words_to_bytes(remote.addr),
        local_port: local.port,
        remote_port: remote.port,
        family: local.family as u32,
    }
}

/// Client side established. A redirected socket announces its original destination to the
/// listener's side; any other client socket of an enrolled pod records its remote address.
#[inline(always)]
fn on_active_established(ops: *mut bpf_sock_ops) {
    let (local, remote) = endpoints(ops);
    let existing = storage(ops, None);
    if !existing.is_null() {
        let orig = unsafe { *existing };
        if orig.kind == orig_kind::REDIRECTED {
            // Seen from the listener: local = where we connected to, remote = us.
            let key = conn_key(orig.netns_cookie, &remote, &local);
            let _ = PENDING.insert(&key, &orig, 0);
        }
        return;
    }
    let netns_cookie = unsafe { bpf_get_netns_cookie(ops.cast()) };
    if unsafe { PODS.get(&netns_cookie) }.is_none() {
        return;
    }
    let mut value = orig_of(netns_cookie, &remote, orig_kind::CONNECTED);
    let _ = storage(ops, Some(&mut value));
}

/// Server side established: the sidecar's end of a redirected connection takes the dialled
/// destination; any other accepted socket of an enrolled pod records its local address
/// (which, for connections steered by sk_lookup, is the destination the client used).
#[inline(always)]
fn on_passive_established(ops: *mut bpf_sock_ops) {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ops.cast()) };
    if unsafe { PODS.get(&netns_cookie) }.is_none() {
        return;
    }
    let (local, remote) = endpoints(ops);
    let key = conn_key(netns_cookie, &local, &remote);
    let mut value = match unsafe { PENDING.get(&key) } {
        Some(orig) => {
            let mut v = *orig;
            v.kind = orig_kind::REDIRECTED_PEER;
            v
        }
        None => orig_of(netns_cookie, &local, orig_kind::ACCEPTED),
    };
    let _ = PENDING.remove(&key);
    let _ = storage(ops, Some(&mut value));
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

#[inline(always)]
fn orig_of(netns_cookie: u64, ep: &Endpoint, kind: u32) -> OrigDst {
    OrigDst { netns_cookie, addr: words_to_bytes(ep.addr), port: ep.port, family: ep.family, kind }
}
