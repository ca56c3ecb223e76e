//! sk_msg, attached to `ACCEL_SOCKETS` (`ebpf load --accelerate`): the payload of an
//! accelerated app ↔ sidecar connection goes straight into the peer socket's receive queue
//! (`bpf_msg_redirect_hash` with `BPF_F_INGRESS`), skipping TCP/IP on loopback. Both sockets
//! stay what they are — same addresses, same SO_ORIGINAL_DST, same bytes in the same order;
//! FIN, RST and the handshake still travel over TCP.
//!
//! Each socket decides at its first send, once for the connection's life, how its bytes
//! travel: redirected if the peer socket is in the map then, else through TCP. A direction
//! therefore never mixes the two paths (which could reorder bytes: the receiver reads
//! redirected data before what waits in its TCP queue), also when the sidecar's end joined
//! late (an accept queue that overflowed). Sockets join the map only before any payload has
//! moved (`sock_ops`). If the peer has left the map since (it closed), the bytes go through
//! TCP, where they meet the closed socket as they would without acceleration.
//!
//! Minimum kernel: 5.17 for the whole set (sk_msg 4.17, `BPF_F_INGRESS` 4.19, socket
//! storage and `sk` in sk_msg 5.8).
use aya_ebpf::{bindings::BPF_F_INGRESS, macros::sk_msg, programs::SkMsgContext};
use interceptor_common::{AF_INET, sock_flags};
use interceptor_ebpf::{
    addr::{Endpoint, conn_key},
    ctx_read,
    maps::ACCEL_SOCKETS,
    records::record,
};

/// SK_PASS: deliver (through TCP, or to the socket the redirect chose).
const SK_PASS: u32 = 1;

#[sk_msg]
pub fn accelerate(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    let sk = ctx_read!(md, __bindgen_anon_3.sk);
    if sk.is_null() {
        return SK_PASS;
    }
    let Some(rec) = record(sk.cast()) else { return SK_PASS };
    let decided = rec.flags & sock_flags::ACCEL_DECIDED != 0;
    if decided && rec.flags & sock_flags::ACCEL_REDIRECT == 0 {
        return SK_PASS;
    }
    // local_port is in host order; remote_port is network order in the high 16 bits.
    let local_port = ctx_read!(md, local_port) as u16;
    let remote_port = u16::from_be((ctx_read!(md, remote_port) >> 16) as u16);
    let (local, remote) = if ctx_read!(md, family) == AF_INET as u32 {
        (Endpoint::v4(ctx_read!(md, local_ip4), local_port), Endpoint::v4(ctx_read!(md, remote_ip4), remote_port))
    } else {
        let l = [
            ctx_read!(md, local_ip6[0]),
            ctx_read!(md, local_ip6[1]),
            ctx_read!(md, local_ip6[2]),
            ctx_read!(md, local_ip6[3]),
        ];
        let r = [
            ctx_read!(md, remote_ip6[0]),
            ctx_read!(md, remote_ip6[1]),
            ctx_read!(md, remote_ip6[2]),
            ctx_read!(md, remote_ip6[3]),
        ];
        (Endpoint::from_v6_socket(l, local_port), Endpoint::from_v6_socket(r, remote_port))
    };
    // The peer is filed under the tuple as it sees it.
    let mut peer = conn_key(rec.netns_cookie, &remote, &local);
    let redirected = ACCEL_SOCKETS.redirect_msg(&ctx, &mut peer, BPF_F_INGRESS as u64) == SK_PASS as i64;
    if !decided {
        rec.flags |= sock_flags::ACCEL_DECIDED | if redirected { sock_flags::ACCEL_REDIRECT } else { 0 };
    }
    SK_PASS
}
