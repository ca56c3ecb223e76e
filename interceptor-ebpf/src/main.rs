//! The node-wide programs of interceptor: one module per hook.
//!
//! | hook                     | module          | minimum kernel |
//! |--------------------------|-----------------|----------------|
//! | cgroup/connect4, connect6 | `connect`      | 5.7 (netns cookie) |
//! | sock_ops                 | `sock_ops`      | 5.15 (bpf_get_netns_cookie in sock_ops) |
//! | cgroup/getsockopt        | `getsockopt`    | 5.15 (bpf_get_netns_cookie in sockopt) |
//! | cgroup/getpeername4, 6   | `getpeername`   | 5.8 |
//! | sk_lookup (per pod netns) | `sk_lookup`    | 5.17 (`ingress_ifindex`) |
//!
//! The whole set therefore needs Linux 5.17.
//! All decisions read the per-pod policy that `interceptor ebpf enroll` writes (see `maps`).
#![no_std]
#![no_main]

mod connect;
mod getpeername;
mod getsockopt;
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
