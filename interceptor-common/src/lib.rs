//! Types shared by the eBPF programs (`interceptor-ebpf`) and their loader (`interceptor`).
//!
//! Every map key and value is `#[repr(C)]`, has no implicit padding and is `bytemuck::Pod`, so
//! both sides agree on the bytes. Addresses are stored in network byte order in 16-byte
//! arrays (IPv4 in the first 4 bytes); ports in host byte order unless a field says otherwise.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Names of the maps, as the loader pins them (`<pin-dir>/maps/<NAME>`).
pub mod map_names {
    pub const PODS: &str = "PODS";
    pub const POD_ADDRS: &str = "POD_ADDRS";
    pub const EXCLUDED_CIDRS: &str = "EXCLUDED_CIDRS";
    pub const INCLUDED_CIDRS: &str = "INCLUDED_CIDRS";
    pub const ROUTES: &str = "ROUTES";
    pub const PORTS: &str = "PORTS";
    pub const IFACES: &str = "IFACES";
    pub const SOCKETS: &str = "SOCKETS";
    pub const HANDOFF: &str = "HANDOFF";
    pub const NODE_TRACKING: &str = "NODE_TRACKING";
    pub const POD_TRACKING: &str = "POD_TRACKING";
    pub const LISTENERS: &str = "LISTENERS";
    pub const STEER_NETNS: &str = "STEER_NETNS";
    pub const STEER_PROGRAM: &str = "STEER_PROGRAM";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const DNS_SOCKETS: &str = "DNS_SOCKETS";
    pub const AYA_LOGS: &str = "AYA_LOGS";
    pub const ACCEL_SOCKETS: &str = "ACCEL_SOCKETS";
    pub const ACCELERATION: &str = "ACCELERATION";
    /// Created by the loader, not by the object: only user space uses them.
    pub const POD_INFO: &str = "POD_INFO";
    pub const GENERATIONS: &str = "GENERATIONS";
    /// Maps defined in the eBPF object.
    pub const ALL: [&str; 20] = [
        PODS,
        POD_ADDRS,
        EXCLUDED_CIDRS,
        INCLUDED_CIDRS,
        ROUTES,
        PORTS,
        IFACES,
        SOCKETS,
        HANDOFF,
        NODE_TRACKING,
        POD_TRACKING,
        LISTENERS,
        STEER_NETNS,
        STEER_PROGRAM,
        COUNTERS,
        SETTINGS,
        DNS_SOCKETS,
        AYA_LOGS,
        ACCEL_SOCKETS,
        ACCELERATION,
    ];
}

/// Capacity of the maps. LPM tries and hashes that hold policy entries are allocated on
/// demand (`BPF_F_NO_PREALLOC`), so a large capacity costs nothing until it is used.
pub mod capacity {
    pub const PODS: usize = 65_536;
    pub const POD_ADDRS: usize = 262_144;
    /// Chunks of `GENERATION_CHUNK` records.
    pub const GENERATIONS: usize = 1_048_576;
    pub const CIDRS: usize = 4_194_304;
    pub const ROUTES: usize = 1_048_576;
    pub const PORTS: usize = 1_048_576;
    pub const IFACES: usize = 65_536;
    /// Redirected connections being handed over node-wide: from the application's SYN
    /// until the kernel has created the sidecar's end (`HANDOFF`, preallocated).
    /// `ebpf load --max-tracked-connections` overrides it.
    pub const TRACKED_CONNECTIONS: usize = 65_536;
    /// The same, per pod (`--max-tracked-connections-per-pod`): one pod cannot take the
    /// whole node's.
    pub const TRACKED_CONNECTIONS_PER_POD: usize = 8_192;
    /// Room in `HANDOFF` beyond the admitted number: connect()s admitted at once on
    /// several CPUs may overshoot the limit by a few before they are counted.
    pub const HANDOFF_HEADROOM: usize = 4_096;
    /// Inbound listeners (SO_REUSEPORT workers) registered per pod and address family.
    pub const LISTENER_SLOTS: u32 = 32;
    pub const LISTENERS: usize = 131_072;
    pub const COUNTERS: usize = 1_048_576;
    /// Sockets of accelerated app ↔ sidecar connections (`ebpf load --accelerate`), both
    /// ends: beyond it a connection is simply not accelerated.
    pub const ACCEL_SOCKETS: usize = 131_072;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// osm-edge's local DNS proxy (`spec.sidecar.localDNSProxy.enable`): the pod's nameserver is
/// 127.0.0.153 and the rule `-A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT
/// --to-destination 127.0.0.153:5300` sends its queries to the sidecar's DNS proxy. The
/// values are osm-edge's constants (`pkg/injector/iptables.go`), not configurable there either.
pub mod dns_proxy {
    /// The nameserver address the pod's resolv.conf names.
    pub const ADDR: [u8; 4] = [127, 0, 0, 153];
    /// The port the application queries.
    pub const PORT: u16 = 53;
    /// The port the sidecar's DNS proxy listens on (same address).
    pub const PROXY_PORT: u16 = 5300;
}

/// Why a flow was redirected or passed. The same numbering is used by the pure decision
/// model (`interceptor::policy::decide`), the eBPF counters and `ebpf status`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Outbound, proxy UID to a local address other than 127.0.0.1: to the inbound listener.
    OutProxyToLocal = 0,
    /// Outbound, not the proxy UID, destination local to the pod: pass.
    OutLocalNotProxy = 1,
    /// Outbound, the proxy's own traffic: pass.
    OutProxyUid = 2,
    /// Outbound to 127.0.0.1: pass.
    OutLoopback = 3,
    /// Outbound through an excluded interface: pass.
    OutExcludedInterface = 4,
    /// Outbound to an excluded CIDR: pass.
    OutExcludedCidr = 5,
    /// Outbound to an excluded port: pass.
    OutExcludedPort = 6,
    /// Outbound to an included CIDR: to the outbound listener.
    OutIncluded = 7,
    /// Outbound, inclusion list set and the destination not in it: pass.
    OutNotIncluded = 8,
    /// Outbound, nothing else matched: to the outbound listener.
    OutDefault = 9,
    /// Outbound, PodIP mode: the proxy's connection to 127.0.0.1 goes to the pod IP.
    OutPodIpDnat = 10,
    /// Inbound to an excluded port: pass.
    InExcludedPort = 11,
    /// Inbound on an excluded interface: pass.
    InExcludedInterface = 12,
    /// Inbound to a reserved port (Prometheus, probes, healthcheck): pass.
    InReservedPort = 13,
    /// Inbound, nothing else matched: to the inbound listener.
    InRedirect = 14,
    /// Inbound from the pod itself (loopback or its own address): never seen by PREROUTING.
    InFromPod = 15,
    /// Inbound, would be redirected but no inbound listener exists: refused.
    InNoListener = 16,
    /// Outbound UDP to 127.0.0.153:53 with the local DNS proxy enabled: to 127.0.0.153:5300.
    OutDnsProxy = 17,
    /// Outbound UDP to 127.0.0.153 refused (EPERM) where the eBPF mode could not give the
    /// replies the source conntrack would: one unconnected socket sending both through the
    /// rule (to :53) and straight to :5300, or no memory for the socket's mark.
    OutDnsProxyRefused = 18,
    /// Outbound, would be redirected, but the pod already has its limit of connections
    /// being handed over to the sidecar: connect() refused (EPERM).
    OutRefusedPodLimit = 19,
    /// The same for the node-wide limit.
    OutRefusedNodeLimit = 20,
    /// Outbound, would be redirected, but the kernel had no memory for the connection's
    /// record: connect() refused (EPERM).
    OutRefusedNoMemory = 21,
    /// A redirected connection whose hand-over record could not be written (the hand-over
    /// table overflowed its headroom): the sidecar's SO_ORIGINAL_DST will fail (ENOENT).
    OutTrackingLost = 22,
    /// getsockopt(SO_ORIGINAL_DST) on the sidecar's end of a connection whose original
    /// destination is unknown: answered ENOENT, as conntrack does without an entry.
    OrigDstUnknown = 23,
}

impl Reason {
    pub const COUNT: usize = 24;
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::OutProxyToLocal,
        Reason::OutLocalNotProxy,
        Reason::OutProxyUid,
        Reason::OutLoopback,
        Reason::OutExcludedInterface,
        Reason::OutExcludedCidr,
        Reason::OutExcludedPort,
        Reason::OutIncluded,
        Reason::OutNotIncluded,
        Reason::OutDefault,
        Reason::OutPodIpDnat,
        Reason::InExcludedPort,
        Reason::InExcludedInterface,
        Reason::InReservedPort,
        Reason::InRedirect,
        Reason::InFromPod,
        Reason::InNoListener,
        Reason::OutDnsProxy,
        Reason::OutDnsProxyRefused,
        Reason::OutRefusedPodLimit,
        Reason::OutRefusedNodeLimit,
        Reason::OutRefusedNoMemory,
        Reason::OutTrackingLost,
        Reason::OrigDstUnknown,
    ];

    pub fn from_u32(v: u32) -> Option<Reason> {
        Self::ALL.get(v as usize).copied()
    }

    /// A stable snake_case name, used in `status` output and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::OutProxyToLocal => "proxy_to_local",
            Reason::OutLocalNotProxy => "local_destination",
            Reason::OutProxyUid => "proxy_uid",
            Reason::OutLoopback => "loopback",
            Reason::OutExcludedInterface => "excluded_interface",
            Reason::OutExcludedCidr => "excluded_cidr",
            Reason::OutExcludedPort => "excluded_port",
            Reason::OutIncluded => "included_cidr",
            Reason::OutNotIncluded => "not_included",
            Reason::OutDefault => "default",
            Reason::OutPodIpDnat => "pod_ip_dnat",
            Reason::InExcludedPort => "excluded_port",
            Reason::InExcludedInterface => "excluded_interface",
            Reason::InReservedPort => "reserved_port",
            Reason::InRedirect => "redirected",
            Reason::InFromPod => "from_pod",
            Reason::InNoListener => "no_listener",
            Reason::OutDnsProxy => "dns_proxy",
            Reason::OutDnsProxyRefused => "dns_proxy_refused",
            Reason::OutRefusedPodLimit => "refused_pod_limit",
            Reason::OutRefusedNodeLimit => "refused_node_limit",
            Reason::OutRefusedNoMemory => "refused_no_memory",
            Reason::OutTrackingLost => "tracking_lost",
            Reason::OrigDstUnknown => "original_dst_unknown",
        }
    }

    pub const fn is_inbound(self) -> bool {
        // Numbers are appended as reasons are added: test the variants, not a range.
        matches!(
            self,
            Reason::InExcludedPort
                | Reason::InExcludedInterface
                | Reason::InReservedPort
                | Reason::InRedirect
                | Reason::InFromPod
                | Reason::InNoListener
        )
    }

    /// A decision that sent the connection to a sidecar listener (or the DNS query to the
    /// sidecar's DNS proxy).
    pub const fn is_redirect(self) -> bool {
        matches!(
            self,
            Reason::OutProxyToLocal
                | Reason::OutIncluded
                | Reason::OutDefault
                | Reason::OutPodIpDnat
                | Reason::OutDnsProxy
                | Reason::InRedirect
        )
    }

    /// A failure an operator must see: a refused connection or an unknown answer.
    pub const fn is_failure(self) -> bool {
        matches!(
            self,
            Reason::InNoListener
                | Reason::OutRefusedPodLimit
                | Reason::OutRefusedNodeLimit
                | Reason::OutRefusedNoMemory
                | Reason::OutTrackingLost
                | Reason::OrigDstUnknown
                | Reason::OutDnsProxyRefused
        )
    }
}

/// `PodConfig::flags` bits.
pub mod pod_flags {
    /// The IPv4 inclusion list is non-empty (only included IPv4 CIDRs are redirected).
    pub const HAS_INCLUSIONS_V4: u32 = 1 << 0;
    /// The IPv6 inclusion list is non-empty.
    pub const HAS_INCLUSIONS_V6: u32 = 1 << 1;
    /// localProxyMode PodIP: the proxy's connections to 127.0.0.1 go to the pod IP.
    pub const POD_IP_MODE: u32 = 1 << 2;
    /// `pod_ip4` holds an address.
    pub const HAS_POD_IP4: u32 = 1 << 3;
    /// `pod_ip6` holds an address.
    pub const HAS_POD_IP6: u32 = 1 << 4;
    /// At least one inbound interface exclusion exists (IFACES has entries).
    pub const HAS_IFACE_EXCLUSIONS: u32 = 1 << 5;
    /// The local DNS proxy is enabled: UDP to 127.0.0.153:53 goes to 127.0.0.153:5300.
    pub const LOCAL_DNS_PROXY: u32 = 1 << 6;
}

/// Value of `PODS`, keyed by the pod's network namespace cookie (u64).
///
/// Replacing this one value switches a pod from one policy generation to the next
/// atomically: every other policy entry is keyed by `policy_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct PodConfig {
    pub policy_id: u32,
    pub proxy_uid: u32,
    pub flags: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Inbound ports that are never redirected: Prometheus, liveness, readiness, startup,
    /// healthcheck. Zero means unused.
    pub reserved_inbound_ports: [u16; 6],
    pub pod_ip4: [u8; 4],
    pub pod_ip6: [u8; 16],
}

/// Key of `POD_ADDRS`: one of a pod's own (universe-scope) addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct PodAddrKey {
    pub family: u32,
    pub addr: [u8; 16],
}

/// Key of the LPM tries `EXCLUDED_CIDRS`, `INCLUDED_CIDRS` and `ROUTES`.
///
/// `prefix_len` counts bits of `data`: 64 bits of (policy_id, family) followed by the
/// CIDR's own prefix length. IPv4 and IPv6 share a trie without ever matching each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct CidrKey {
    pub prefix_len: u32,
    /// Big-endian policy id (big-endian so that it is a prefix in bit order).
    pub policy_id_be: [u8; 4],
    /// Big-endian address family (AF_INET or AF_INET6 as u32).
    pub family_be: [u8; 4],
    pub addr: [u8; 16],
}

impl CidrKey {
    /// Bits of the key before the address: policy id and family.
    pub const HEADER_BITS: u32 = 64;

    pub fn new(policy_id: u32, family: u16, addr: [u8; 16], addr_prefix_len: u32) -> Self {
        Self {
            prefix_len: Self::HEADER_BITS + addr_prefix_len,
            policy_id_be: policy_id.to_be_bytes(),
            family_be: (family as u32).to_be_bytes(),
            addr,
        }
    }
}

/// The bytes of `CidrKey` after `prefix_len`: what aya's LPM `Key<K>` calls the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct CidrData {
    pub policy_id_be: [u8; 4],
    pub family_be: [u8; 4],
    pub addr: [u8; 16],
}

/// `RouteValue::flags` bits.
pub mod route_flags {
    /// The destination is a local address of the pod (iptables sees `-o lo`).
    pub const LOCAL: u32 = 1 << 0;
    /// The route's output interface is in the interface exclusion list.
    pub const EXCLUDED_INTERFACE: u32 = 1 << 1;
    /// `src` holds the source address the kernel would choose for this route.
    pub const HAS_SRC: u32 = 1 << 2;
    /// No route: the kernel fails a connect() before any packet (unreachable, blackhole,
    /// prohibit, broadcast, multicast): nothing to decide.
    pub const UNREACHABLE: u32 = 1 << 3;
}

/// Value of `ROUTES`: what the pod's routing table says about a destination prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct RouteValue {
    pub flags: u32,
    pub ifindex: u32,
    pub src: [u8; 16],
}

/// Direction bits of `PORTS` values.
pub mod port_flags {
    pub const OUTBOUND_EXCLUDED: u8 = 1 << 0;
    pub const INBOUND_EXCLUDED: u8 = 1 << 1;
}

/// Key of `PORTS`: one entry per excluded port of a policy; the value is `port_flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub policy_id: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of `IFACES`: inbound interface exclusions by ifindex (of the pod's namespace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    pub policy_id: u32,
    pub ifindex: u32,
}

/// `SockRecord::kind`: what a socket of an enrolled pod is, for SO_ORIGINAL_DST and
/// getpeername().
pub mod sock_kind {
    /// The application's end of a redirected connection: `orig` is what it dialled.
    pub const CLIENT_REDIRECTED: u8 = 1;
    /// The sidecar's end of a redirected connection (or of a connection dialled straight
    /// to a sidecar listener): `orig` is the destination the application dialled.
    pub const SIDECAR: u8 = 2;
    /// An accepted connection that was not redirected: SO_ORIGINAL_DST is its local address.
    pub const ACCEPTED: u8 = 3;
    /// An application socket dialling a sidecar listener directly (not redirected): its
    /// destination is handed to the listener's end like a redirected one.
    pub const CLIENT_DIRECT: u8 = 4;
    /// A socket the proxy bound to the pod's inbound port: it becomes an inbound listener
    /// at listen().
    pub const PROXY_LISTENER: u8 = 5;
}

/// `SockRecord::flags` bits.
pub mod sock_flags {
    /// The connect() program bound the socket to the pod address (`bound`), to be undone if
    /// the socket connects again.
    pub const BOUND_BY_US: u8 = 1 << 0;
    /// Acceleration (`sk_msg`): this socket's sends were decided at its first one, for the
    /// connection's whole life — redirected to the peer socket (`ACCEL_REDIRECT`) or through
    /// TCP — so the bytes of one direction never take two paths and never reorder.
    pub const ACCEL_DECIDED: u8 = 1 << 1;
    pub const ACCEL_REDIRECT: u8 = 1 << 2;
}

/// Value of `SOCKETS` (socket-local storage: lives exactly as long as the socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct SockRecord {
    pub netns_cookie: u64,
    /// The original destination (network-order bytes, IPv4 in the first 4).
    pub addr: [u8; 16],
    /// The address the connect() program bound the socket to (`BOUND_BY_US`).
    pub bound: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub kind: u8,
    pub flags: u8,
    pub _pad: u16,
}

/// Value of `HANDOFF`: a redirected connection's original destination, from the
/// application's SYN until the kernel creates the sidecar's end, which takes it over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct OrigDst {
    pub netns_cookie: u64,
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Key of `HANDOFF`: a connection as the listener's end sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub netns_cookie: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub family: u32,
}

/// Value of `NODE_TRACKING[0]` and `POD_TRACKING[netns cookie]`: connections being handed
/// over (entries of `HANDOFF`), updated atomically by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Default)]
pub struct Tracking {
    pub in_flight: u64,
}

/// Value of `STEER_NETNS` (per CPU): which pod the running sk_lookup is for, written by the
/// pod's own program just before it tail-calls the shared one, with the lookup context it
/// ran for. The shared program uses the cookie only if the context is its own: two lookups
/// interleaved on one CPU (possible where softirqs are preemptible, PREEMPT_RT) are refused
/// instead of steered with another pod's cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Default)]
pub struct SteerNetns {
    pub netns_cookie: u64,
    /// The address of the sk_lookup context (a kernel pointer, compared, never read).
    pub ctx: u64,
}

/// Key of `LISTENERS`: the pod's inbound listeners, per family, one slot per socket (one
/// per SO_REUSEPORT worker), registered when the proxy calls listen().
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns_cookie: u64,
    pub family: u32,
    pub slot: u32,
}

/// Key of `COUNTERS` (per-CPU u64 values).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub netns_cookie: u64,
    pub reason: u32,
    pub _pad: u32,
}

/// Value of `DNS_SOCKETS` (socket storage: freed with its socket): what the local DNS proxy
/// rule did to one UDP socket, so that only the replies of DNATed traffic are un-NATed, as
/// conntrack does. Bits of `dns_mark`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Default)]
pub struct DnsMark {
    pub flags: u32,
}

/// `DnsMark::flags` bits.
pub mod dns_mark {
    /// Some datagram of the socket was sent to 127.0.0.153:5300 instead of :53: replies
    /// from 127.0.0.153:5300 appear to come from :53. Cleared by a connect() elsewhere.
    pub const NATED: u32 = 1 << 0;
    /// The socket's connect() to 127.0.0.153:53 was rewritten to :5300 (and not replaced
    /// by another connect() since): getpeername() answers :53.
    pub const CONNECTED: u32 = 1 << 1;
    /// The unconnected socket sent a datagram straight to 127.0.0.153:5300 (in a pod with the
    /// option): its replies must keep :5300, so it may not also send through the rule.
    pub const DIRECT: u32 = 1 << 2;
}

/// Version of the map layout. Bump it whenever a map's type, key or value changes: a load
/// over pinned state of another layout refuses to reuse it.
pub const LAYOUT_VERSION: u32 = 6;

/// Value of `SETTINGS[0]`: run-time switches of the programs and what is loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Default)]
pub struct Settings {
    /// Non-zero: the programs log their decisions through aya-log.
    pub debug: u32,
    /// `LAYOUT_VERSION` of the loader that created the maps.
    pub layout_version: u32,
    /// Fingerprint of the loaded eBPF object (user space only).
    pub fingerprint: u64,
    /// Connections being handed over to a sidecar at once, node-wide and per pod; more
    /// connect()s are refused.
    pub max_in_flight_node: u64,
    pub max_in_flight_pod: u64,
}

/// Value of `POD_INFO` (user space only, keyed by netns cookie): what `status` shows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct PodInfo {
    /// NUL-padded path of the network namespace given at enroll.
    pub netns_path: [u8; 192],
    /// NUL-padded `namespace/name` of the pod manifest, if one was given.
    pub pod_name: [u8; 56],
    /// Seconds since the epoch of the last enroll.
    pub enrolled_at: u64,
}

/// Records per `GENERATIONS` chunk.
pub const GENERATION_CHUNK: usize = 256;

/// Key of `GENERATIONS` (user space only): which entries a policy generation wrote, so
/// that deleting it costs its own size, not the size of every pod's policies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct GenerationKey {
    pub policy_id: u32,
    pub chunk: u32,
}

/// One entry a generation wrote: which map (`GenerationRecord::KIND_*`) and its key, padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct GenerationRecord {
    pub kind: u32,
    pub key: [u8; 28],
}

impl GenerationRecord {
    pub const KIND_UNUSED: u32 = 0;
    pub const KIND_EXCLUDED: u32 = 1;
    pub const KIND_INCLUDED: u32 = 2;
    pub const KIND_ROUTE: u32 = 3;
    pub const KIND_PORT: u32 = 4;
    pub const KIND_IFACE: u32 = 5;
}

/// Value of `GENERATIONS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GenerationChunk {
    pub records: [GenerationRecord; GENERATION_CHUNK],
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for PodConfig {}
    unsafe impl aya::Pod for CidrData {}
    unsafe impl aya::Pod for RouteValue {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for SockRecord {}
    unsafe impl aya::Pod for Tracking {}
    unsafe impl aya::Pod for SteerNetns {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for PodInfo {}
    unsafe impl aya::Pod for PodAddrKey {}
    unsafe impl aya::Pod for GenerationKey {}
    unsafe impl aya::Pod for GenerationChunk {}
}
