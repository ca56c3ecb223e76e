//! sock_ops: hands a redirected connection's original destination from the application's
//! socket to the sidecar's, gives accepted sockets of enrolled pods their record, and
//! registers the proxy's inbound listeners for `sk_lookup`.
//!
//! | callback              | socket                         | does                                     |
//! |-----------------------|--------------------------------|------------------------------------------|
//! | TCP_CONNECT_CB        | the application's, SYN leaving | files the original destination in HANDOFF under the tuple the listener will see; asks for state callbacks |
//! | PASSIVE_ESTABLISHED   | the sidecar's, just created    | takes the hand-over into its own record (lives as long as it does) |
//! | STATE_CB (TCP_CLOSE)  | the application's              | withdraws a hand-over nobody took (refused, timed out, reset) |
//! | TCP_LISTEN_CB         | a listener                     | the proxy's inbound listener (marked at bind, `post_bind`) joins LISTENERS |
//! | ACTIVE_ESTABLISHED    | the application's, handshake done | with `--accelerate`: joins ACCEL_SOCKETS (see `accelerate`) |
//!
//! With `--accelerate`, the sidecar's end joins ACCEL_SOCKETS at PASSIVE_ESTABLISHED too.
//! A socket joins only before any payload has moved on it (no data in the SYN: TCP Fast
//! Open), so the `accelerate` program sees every byte it sends.
//!
//! Minimum kernel: 5.15 (bpf_get_netns_cookie in sock_ops; sockhash updates from
//! TCP_LISTEN_CB since 5.9; socket storage since 5.2).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, bpf_sock_ops,
    },
    helpers::{bpf_get_netns_cookie, bpf_sock_ops_cb_flags_set},
    macros::sock_ops,
    programs::SockOpsContext,
};
use interceptor_common::{
    AF_INET, ConnKey, ListenerKey, OrigDst, Reason, SockRecord, capacity::LISTENER_SLOTS, sock_kind,
};
use interceptor_ebpf::{
    addr::{Endpoint, conn_key},
    counters::count,
    ctx_read,
    maps::{ACCEL_SOCKETS, LISTENERS, PODS, acceleration_enabled},
    records::{hand_over, handed_over, record, record_or_create, withdraw},
};

/// TCP_CLOSE in the kernel's TCP state numbering.
const TCP_CLOSE: u32 = 7;
/// BPF_NOEXIST: a listener slot is taken only if free.
const NOEXIST: u64 = 1;

/// The function is not named `sock_ops`: the macro's section has that name.
#[sock_ops]
pub fn track_connections(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // Most runs are state changes of tracked application sockets (four per connection) and
    // callbacks the kernel makes for every socket whatever the flags (timeout, window, ECN):
    // those leave first.
    match ctx.op() {
        BPF_SOCK_OPS_STATE_CB => on_state_change(ops),
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ops),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ops),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(ops),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(ops),
        _ => {}
    }
    1
}

/// With `--accelerate`: the socket joins ACCEL_SOCKETS under its tuple as it sees it, if no
/// payload has moved on it yet. A full map or any failure leaves the connection on TCP.
#[inline(always)]
fn accelerate(ops: *mut bpf_sock_ops, key: &ConnKey) {
    if ctx_read!(ops, data_segs_in) != 0 || ctx_read!(ops, data_segs_out) != 0 {
        return;
    }
    let mut key = *key;
    let _ = ACCEL_SOCKETS.update(&mut key, unsafe { &mut *ops }, NOEXIST);
}

/// The application's end of a connection completed its handshake.
#[inline(always)]
fn on_active_established(ops: *mut bpf_sock_ops) {
    if !acceleration_enabled() {
        return;
    }
    let Some(sk) = socket(ops) else { return };
    let Some(rec) = record(sk) else { return };
    if rec.kind != sock_kind::CLIENT_REDIRECTED {
        return;
    }
    let (local, remote) = endpoints(ops);
    accelerate(ops, &conn_key(rec.netns_cookie, &local, &remote));
}

/// The socket of the callback, as the socket-storage helpers take it.
#[inline(always)]
fn socket(ops: *mut bpf_sock_ops) -> Option<*mut c_void> {
    let sk = ctx_read!(ops, __bindgen_anon_2.sk);
    (!sk.is_null()).then_some(sk.cast())
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

/// Asks for more callbacks, keeping the ones another program on the cgroup asked for.
#[inline(always)]
fn add_cb_flags(ops: *mut bpf_sock_ops, flags: u32) {
    let current = ctx_read!(ops, bpf_sock_ops_cb_flags);
    if current & flags != flags {
        unsafe { bpf_sock_ops_cb_flags_set(ops, (current | flags) as i32) };
    }
}

/// The SYN of a tracked application socket is leaving: its source port is known, so the
/// tuple the listener's end will see is known.
#[inline(always)]
fn on_connect(ops: *mut bpf_sock_ops) {
    let Some(sk) = socket(ops) else { return };
    let Some(rec) = record(sk) else { return };
    if rec.kind != sock_kind::CLIENT_REDIRECTED && rec.kind != sock_kind::CLIENT_DIRECT {
        return;
    }
    let (local, remote) = endpoints(ops);
    // Seen from the listener: local = where we connect to, remote = us.
    let key = conn_key(rec.netns_cookie, &remote, &local);
    let orig = OrigDst { netns_cookie: rec.netns_cookie, addr: rec.addr, port: rec.port, family: rec.family, _pad: 0 };
    if hand_over(&key, &orig).is_err() {
        // Only if far more connect()s were admitted at once than the headroom allows: the
        // sidecar's SO_ORIGINAL_DST will fail (ENOENT) rather than answer wrongly.
        count(rec.netns_cookie, Reason::OutTrackingLost);
    }
    // The close of this socket withdraws a hand-over nobody took.
    add_cb_flags(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

/// A tracked application socket closed. If the sidecar's end was never created (refused,
/// timed out, reset before the handshake completed), its hand-over goes.
#[inline(always)]
fn on_state_change(ops: *mut bpf_sock_ops) {
    let new_state = unsafe { (*ops).__bindgen_anon_1.args[1] };
    if new_state != TCP_CLOSE {
        return;
    }
    let Some(sk) = socket(ops) else { return };
    let Some(rec) = record(sk) else { return };
    if rec.kind != sock_kind::CLIENT_REDIRECTED && rec.kind != sock_kind::CLIENT_DIRECT {
        return;
    }
    let (local, remote) = endpoints(ops);
    withdraw(&conn_key(rec.netns_cookie, &remote, &local), rec.netns_cookie);
}

/// The kernel created the server end of a connection in an enrolled pod (before accept()).
/// The sidecar's end of a redirected connection takes its original destination into its
/// own record, which lives as long as the socket, whenever the application's end closes.
#[inline(always)]
fn on_passive_established(ops: *mut bpf_sock_ops) {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ops.cast()) };
    let Some(sk) = socket(ops) else { return };
    let (local, remote) = endpoints(ops);
    let key = conn_key(netns_cookie, &local, &remote);
    if let Some(orig) = handed_over(&key) {
        match record_or_create(sk) {
            Some(rec) => {
                *rec = SockRecord {
                    netns_cookie,
                    addr: orig.addr,
                    bound: [0; 16],
                    port: orig.port,
                    family: orig.family,
                    kind: sock_kind::SIDECAR,
                    flags: 0,
                    _pad: 0,
                };
                withdraw(&key, orig.netns_cookie);
                if acceleration_enabled() {
                    accelerate(ops, &key);
                }
            }
            // No memory for the record: the hand-over stays for as long as the application's
            // end lives, and getsockopt reads it from there.
            None => count(netns_cookie, Reason::OutTrackingLost),
        }
        return;
    }
    let Some(pod) = (unsafe { PODS.get(&netns_cookie) }) else { return };
    // Connections steered to the inbound listener need no record (its accepted sockets
    // answer their local address); any other accepted socket is marked as such.
    if local.port == pod.inbound_port {
        return;
    }
    if let Some(rec) = record_or_create(sk) {
        rec.kind = sock_kind::ACCEPTED;
        rec.netns_cookie = netns_cookie;
    }
}

/// listen() by the proxy on the pod's inbound port: the socket takes a free slot of the
/// pod's listeners (one per SO_REUSEPORT worker). The kernel drops closed sockets itself.
#[inline(always)]
fn on_listen(ops: *mut bpf_sock_ops) {
    let netns_cookie = unsafe { bpf_get_netns_cookie(ops.cast()) };
    let Some(pod) = (unsafe { PODS.get(&netns_cookie) }) else { return };
    let local_port = ctx_read!(ops, local_port) as u16;
    if local_port != pod.inbound_port {
        return;
    }
    // Only the proxy's own listener is a target: post_bind marked it, knowing the caller.
    let Some(sk) = socket(ops) else { return };
    if record(sk).is_none_or(|r| r.kind != sock_kind::PROXY_LISTENER) {
        return;
    }
    let family = ctx_read!(ops, family);
    for slot in 0..LISTENER_SLOTS {
        let mut key = ListenerKey { netns_cookie, family, slot };
        if LISTENERS.update(&mut key, unsafe { &mut *ops }, NOEXIST).is_ok() {
            return;
        }
    }
}
