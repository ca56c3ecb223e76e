//! The node-wide programs of interceptor: one module per hook.
//!
//! | hook                     | module          | minimum kernel |
//! |--------------------------|-----------------|----------------|
//! | cgroup/connect4, connect6 | `connect`      | 5.7 (netns cookie) |
//! | sock_ops                 | `sock_ops`      | 5.15 (bpf_get_netns_cookie in sock_ops) |
//! | cgroup/getsockopt        | `getsockopt`    | 5.15 (bpf_get_netns_cookie in sockopt) |
//! | cgroup/getpeername4, 6   | `getpeername`   | 5.8 |
//! | cgroup/sendmsg4          | `sendmsg`       | 4.18 (hook); 5.3 (socket storage) |
//! | cgroup/recvmsg4, 6       | `recvmsg`       | 5.2 (hooks); 5.3 (socket storage) |
//! | sk_lookup (per pod netns) | `sk_lookup`    | 5.17 (`ingress_ifindex`) |
//! | sk_msg on `ACCEL_SOCKETS` | `accelerate`   | 5.8 (socket storage, `sk`); only with `--accelerate` |
//!
//! The whole set therefore needs Linux 5.17. The UDP paths (connect4/6, sendmsg4,
//! recvmsg4/6, getpeername4/6) only apply osm-edge's local DNS proxy rule (`dns` in the
//! library), for pods whose policy enables it.
//! All decisions read the per-pod policy that `interceptor ebpf enroll` writes (see `maps`).
#![no_std]
#![no_main]

mod accelerate;
mod connect;
mod getpeername;
mod getsockopt;
mod post_bind;
mod recvmsg;
mod sendmsg;
mod sk_lookup;
mod sock_ops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
