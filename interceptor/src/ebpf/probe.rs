//! Before loading anything, check that the kernel has every program type, map type and
//! helper eBPF mode uses. A missing one is one clear error naming it (and the fix: iptables
//! mode), never a half-working interception.
//!
//! | feature                                   | minimum kernel |
//! |-------------------------------------------|----------------|
//! | cgroup sock_addr (connect4/6), cgroup sock (post_bind4/6) | 4.17 |
//! | cgroup/sendmsg4 hook (DNS proxy rule)     | 4.18           |
//! | cgroup/recvmsg4/6 hooks, sk_storage maps  | 5.2            |
//! | bpf_sk_storage_get in cgroup sock_addr, sock_ops, getsockopt | 5.3 |
//! | cgroup sockopt (getsockopt)               | 5.3            |
//! | bpf_get_netns_cookie in connect4/6        | 5.7            |
//! | getpeername4/6 hooks, ring buffers        | 5.8            |
//! | sk_lookup (with tail calls), sockhash from TCP_LISTEN_CB | 5.9 |
//! | bpf_sk_storage_get, bpf_get_current_uid_gid in post_bind4/6 | 5.10 |
//! | SO_NETNS_COOKIE                           | 5.14           |
//! | bpf_get_netns_cookie in sock_ops, sockopt | 5.15           |
//! | sk_lookup `ingress_ifindex`               | 5.17           |
//!
//! `ingress_ifindex` is a context field, not a helper: it is checked by loading the
//! sk_lookup program itself (without attaching it) before anything is installed. The
//! sendmsg/recvmsg hooks are attach types of the cgroup sock_addr program type: each is
//! probed by loading a trivial program for it (`raw::prog_load_probe`).
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The documented minimum kernel.
pub const MINIMUM_KERNEL: &str = "5.17";

/// One missing kernel feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub feature: String,
    pub since: &'static str,
}

/// Every feature eBPF mode needs; an empty list means the kernel has them all.
pub fn missing_features() -> Vec<Missing> {
    let mut missing = Vec::new();
    let programs = [
        (
            ProgramType::CgroupSockAddr,
            "program type cgroup_sock_addr (cgroup/connect4, connect6, getpeername4, getpeername6, sendmsg4, recvmsg4, recvmsg6)",
            "4.17",
        ),
        (ProgramType::SockOps, "program type sock_ops", "4.13"),
        (ProgramType::CgroupSockopt, "program type cgroup_sockopt (cgroup/getsockopt)", "5.3"),
        (ProgramType::SkLookup, "program type sk_lookup", "5.9"),
        (ProgramType::CgroupSock, "program type cgroup_sock (cgroup/post_bind4, post_bind6)", "4.17"),
    ];
    for (t, name, since) in programs {
        if !is_program_supported(t).unwrap_or(false) {
            missing.push(Missing { feature: name.to_string(), since });
        }
    }
    // Attach types within the cgroup sock_addr type (the local DNS proxy rule's hooks).
    const CGROUP_SOCK_ADDR: u32 = aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32;
    let hooks = [
        (super::raw::attach_type::CGROUP_UDP4_SENDMSG, "attach type cgroup/sendmsg4", "4.18"),
        (super::raw::attach_type::CGROUP_UDP4_RECVMSG, "attach type cgroup/recvmsg4", "5.2"),
        (super::raw::attach_type::CGROUP_UDP6_RECVMSG, "attach type cgroup/recvmsg6", "5.2"),
    ];
    for (attach_type, name, since) in hooks {
        if !super::raw::prog_load_probe(CGROUP_SOCK_ADDR, attach_type) {
            missing.push(Missing { feature: name.to_string(), since });
        }
    }
    let maps = [
        (MapType::Hash, "map type hash", "3.19"),
        (MapType::Array, "map type array", "3.19"),
        (MapType::LpmTrie, "map type lpm_trie", "4.11"),
        (MapType::PerCpuHash, "map type percpu_hash", "4.6"),
        (MapType::PerCpuArray, "map type percpu_array", "4.6"),
        (MapType::ProgramArray, "map type prog_array", "4.2"),
        (MapType::SockHash, "map type sockhash", "4.18"),
        (MapType::RingBuf, "map type ringbuf", "5.8"),
        (MapType::SkStorage, "map type sk_storage", "5.2"),
    ];
    for (t, name, since) in maps {
        if !is_map_supported(t).unwrap_or(false) {
            missing.push(Missing { feature: name.to_string(), since });
        }
    }
    let helpers = [
        (
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_netns_cookie,
            "helper bpf_get_netns_cookie in cgroup/connect4",
            "5.7",
        ),
        (
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_socket_cookie,
            "helper bpf_get_socket_cookie in cgroup/connect4",
            "4.12",
        ),
        (ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_bind, "helper bpf_bind in cgroup/connect4", "4.17"),
        (
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_sk_storage_get,
            "helper bpf_sk_storage_get in cgroup sock_addr programs",
            "5.3",
        ),
        (ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie, "helper bpf_get_netns_cookie in sock_ops", "5.15"),
        (
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_get_socket_cookie,
            "helper bpf_get_socket_cookie in sock_ops",
            "5.10",
        ),
        (ProgramType::SockOps, BpfHelper::BPF_FUNC_sock_hash_update, "helper bpf_sock_hash_update in sock_ops", "4.18"),
        (ProgramType::SockOps, BpfHelper::BPF_FUNC_sk_storage_get, "helper bpf_sk_storage_get in sock_ops", "5.3"),
        (
            ProgramType::SockOps,
            BpfHelper::BPF_FUNC_sock_ops_cb_flags_set,
            "helper bpf_sock_ops_cb_flags_set in sock_ops",
            "4.16",
        ),
        (
            ProgramType::CgroupSockopt,
            BpfHelper::BPF_FUNC_sk_storage_get,
            "helper bpf_sk_storage_get in cgroup/getsockopt",
            "5.3",
        ),
        (
            ProgramType::CgroupSock,
            BpfHelper::BPF_FUNC_sk_storage_get,
            "helper bpf_sk_storage_get in cgroup/post_bind4, post_bind6",
            "5.10",
        ),
        (
            ProgramType::CgroupSock,
            BpfHelper::BPF_FUNC_get_current_uid_gid,
            "helper bpf_get_current_uid_gid in cgroup/post_bind4, post_bind6",
            "5.10",
        ),
        (ProgramType::SkLookup, BpfHelper::BPF_FUNC_tail_call, "helper bpf_tail_call in sk_lookup", "5.9"),
        (
            ProgramType::CgroupSockopt,
            BpfHelper::BPF_FUNC_get_netns_cookie,
            "helper bpf_get_netns_cookie in cgroup/getsockopt",
            "5.15",
        ),
        (ProgramType::SkLookup, BpfHelper::BPF_FUNC_sk_assign, "helper bpf_sk_assign in sk_lookup", "5.9"),
    ];
    for (t, helper, name, since) in helpers {
        if !is_helper_supported(t, helper).unwrap_or(false) {
            missing.push(Missing { feature: name.to_string(), since });
        }
    }
    if crate::netns::current_cookie().is_err() {
        missing.push(Missing { feature: "socket option SO_NETNS_COOKIE".into(), since: "5.14" });
    }
    missing
}

/// The error for a kernel without every feature.
pub fn check() -> Result<(), super::EbpfError> {
    let missing = missing_features();
    if missing.is_empty() {
        return Ok(());
    }
    Err(super::EbpfError::KernelLacks(missing))
}
