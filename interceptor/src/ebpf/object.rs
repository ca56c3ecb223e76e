//! The eBPF object built by build.rs from `interceptor-ebpf`, embedded in the binary.
use std::hash::{DefaultHasher, Hash, Hasher};

use aya_obj::generated::bpf_attach_type;

use super::EbpfError;

/// The ELF object (aligned: aya parses it in place).
pub fn bytes() -> Result<&'static [u8], EbpfError> {
    let b: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor"));
    if b.is_empty() {
        return Err(EbpfError::NoPrograms);
    }
    Ok(b)
}

/// A fingerprint of the embedded object: loading the same build twice is a no-op, a
/// different build is an in-place upgrade.
pub fn fingerprint() -> u64 {
    let mut h = DefaultHasher::new();
    bytes().unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Cgroup programs: (name in the object, attach type).
pub const CGROUP_PROGRAMS: [(&str, bpf_attach_type); 11] = [
    ("intercept_connect4", super::raw::attach_type::CGROUP_INET4_CONNECT),
    ("intercept_connect6", super::raw::attach_type::CGROUP_INET6_CONNECT),
    ("dialled_peer4", super::raw::attach_type::CGROUP_INET4_GETPEERNAME),
    ("dialled_peer6", super::raw::attach_type::CGROUP_INET6_GETPEERNAME),
    ("track_connections", super::raw::attach_type::CGROUP_SOCK_OPS),
    ("original_dst", super::raw::attach_type::CGROUP_GETSOCKOPT),
    ("mark_proxy_listener4", super::raw::attach_type::CGROUP_INET4_POST_BIND),
    ("mark_proxy_listener6", super::raw::attach_type::CGROUP_INET6_POST_BIND),
    // osm-edge's local DNS proxy rule (UDP 127.0.0.153:53 → :5300); connect4/6 and
    // getpeername4/6 above handle its connected sockets.
    ("dns_proxy_sendmsg4", super::raw::attach_type::CGROUP_UDP4_SENDMSG),
    ("dns_proxy_recvmsg4", super::raw::attach_type::CGROUP_UDP4_RECVMSG),
    ("dns_proxy_recvmsg6", super::raw::attach_type::CGROUP_UDP6_RECVMSG),
];

/// The program linked to each enrolled pod's network namespace.
pub const SK_LOOKUP_PROGRAM: &str = "steer_inbound";

/// The sk_msg program of `ebpf load --accelerate`, attached to the `ACCEL_SOCKETS` map
/// (loaded and attached in every installation; the `ACCELERATION` switch decides whether
/// sockets join the map).
pub const ACCEL_PROGRAM: &str = "accelerate";

/// Every program an installation pins (`progs/<name>`), in load order.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    CGROUP_PROGRAMS.iter().map(|(n, _)| *n).chain([SK_LOOKUP_PROGRAM, ACCEL_PROGRAM])
}
