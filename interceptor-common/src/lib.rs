//! Types shared by the eBPF programs (`interceptor-ebpf`) and their loader (`interceptor`).
//!
//! Every map key and value is `#[repr(C)]`, has no implicit padding and is `bytemuck::Pod`, so
//! both sides agree on the bytes. Addresses are stored in network byte order in 16-byte
//! arrays (IPv4 in the first 4 bytes); ports in host byte order unless a field says otherwise.
#![no_std]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    pub const OBJECTS: &str = "OBJECTS";
    /// The maps only user space uses.
    pub const USER: [&str; 3] = [POD_INFO, GENERATIONS, OBJECTS];
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
/// demand (`BPF_F_NO_PREALLOC`), so their entries cost nothing until they are used — but a
/// hash map's bucket array (16 bytes per power-of-two slot) is allocated at load whatever
/// it holds, which is why the hashes are sized for what a node needs, not "as large as
/// possible": the installation takes about 20 MiB of kernel memory with no pod enrolled
/// (10.5 MiB of it the preallocated hand-over table), see README "Benchmarks".
pub mod capacity {
    /// Enrolled pods (network namespaces) per node.
    pub const PODS: usize = 16_384;
    pub const POD_ADDRS: usize = 65_536;
    /// Policy objects: shared lists and pod tables (`OBJECTS`).
    pub const OBJECTS: usize = 65_536;
    /// Chunks of `GENERATION_CHUNK` records: enough to record every entry of every policy
    /// map at capacity.
    pub const GENERATIONS: usize = 131_072;
    /// Each CIDR trie (exclusions, inclusions). Lists identical across pods are stored once.
    pub const CIDRS: usize = 1_048_576;
    pub const ROUTES: usize = 1_048_576;
    pub const PORTS: usize = 131_072;
    pub const IFACES: usize = 16_384;
    /// (pod, reason) pairs with a decision counter.
    pub const COUNTERS: usize = 131_072;
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
    /// Sockets of accelerated app ↔ sidecar connections (`ebpf load --accelerate`), both
    /// ends: beyond it a connection is simply not accelerated.
    pub const ACCEL_SOCKETS: usize = 131_072;
}

/// Default per-pod limits on the lists a pod's annotations may add (the MeshConfig's lists
/// are the operator's and stored once for every pod; a pod's own are stored with it, so
/// one pod must not be able to fill the node's maps). Overridden by `--max-annotation-cidrs`
/// and `--max-annotation-ports`.
pub mod annotation_limits {
    /// Ranges in one IP range annotation (exclusion or inclusion list).
    pub const CIDRS: usize = 256;
    /// Ports in one port annotation (outbound or inbound exclusion list).
    pub const PORTS: usize = 256;
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
/// A pod's policy is a set of references to immutable *policy objects*, each identified by
/// an id that prefixes every map entry it owns: the pod's own table (`policy_id`: its
/// `ROUTES` cells, with its own annotation ranges folded in, and its `IFACES`), and the
/// lists shared by every pod whose lists are identical (`excluded_list`, `included_list`,
/// `ports_list`; 0: empty, nothing to look up). Objects are written complete before a pod
/// refers to them, so replacing this one value switches the pod from one policy to the
/// next atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
pub struct PodConfig {
    /// The pod's own table (`ROUTES`, `IFACES` entries under this id).
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
    /// The shared list of excluded ranges (`EXCLUDED_CIDRS` entries under this id), 0: none.
    pub excluded_list: u32,
    /// The shared list of included ranges (`INCLUDED_CIDRS`), 0: none.
    pub included_list: u32,
    /// The excluded ports, global and the pod's own (`PORTS`), 0: none.
    pub ports_list: u32,
    /// Identifies the enroll that wrote this entry (fresh at every enroll; user space only:
    /// `status` and the enroll report show it).
    pub generation: u32,
}

impl PodConfig {
    /// The policy objects this pod refers to (non-zero ids).
    pub fn objects(&self) -> impl Iterator<Item = u32> {
        [self.policy_id, self.excluded_list, self.included_list, self.ports_list].into_iter().filter(|id| *id != 0)
    }
}

/// Key of `POD_ADDRS`: one of a pod's own (universe-scope) addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct PodAddrKey {
    pub family: u32,
    pub addr: [u8; 16],
}

impl PodAddrKey {
    pub fn new(ip: IpAddr) -> PodAddrKey {
        PodAddrKey { family: family_of(&ip) as u32, addr: addr_bytes(&ip) }
    }

    pub fn ip(&self) -> IpAddr {
        ip_of(self.family, &self.addr)
    }
}

/// `AF_INET` or `AF_INET6`.
pub fn family_of(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// An address as the maps store it: network-order bytes, IPv4 in the first 4.
pub fn addr_bytes(ip: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The address of stored bytes (`family`: `AF_INET`, else IPv6).
pub fn ip_of(family: u32, addr: &[u8; 16]) -> IpAddr {
    if family == AF_INET as u32 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// Key of the LPM tries `EXCLUDED_CIDRS`, `INCLUDED_CIDRS` and `ROUTES`.
///
/// `prefix_len` counts bits of `data`: 64 bits of (object id, family) followed by the
/// CIDR's own prefix length. IPv4 and IPv6 share a trie without ever matching each other.
/// (The field keeps its historical name: the id is that of the list or pod table the entry
/// belongs to, see `PodConfig`.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct CidrKey {
    pub prefix_len: u32,
    /// Big-endian object id (big-endian so that it is a prefix in bit order).
    pub policy_id_be: [u8; 4],
    /// Big-endian address family (AF_INET or AF_INET6 as u32).
    pub family_be: [u8; 4],
    pub addr: [u8; 16],
}

impl CidrKey {
    /// Bits of the key before the address: policy id and family.
    pub const HEADER_BITS: u32 = 64;

    pub fn new(policy_id: u32, family: u16, addr: [u8; 16], addr_prefix_len: u32) -> Self {
        Self::from_parts(Self::HEADER_BITS + addr_prefix_len, CidrData::new(policy_id, family, addr))
    }

    /// The key of a network (`addr`/`addr_prefix_len`, host bits as given) in object `policy_id`.
    pub fn of(policy_id: u32, addr: IpAddr, addr_prefix_len: u8) -> Self {
        Self::new(policy_id, family_of(&addr), addr_bytes(&addr), addr_prefix_len as u32)
    }

    /// From aya's LPM `Key<CidrData>` (its prefix length and data).
    pub fn from_parts(prefix_len: u32, data: CidrData) -> Self {
        Self { prefix_len, policy_id_be: data.policy_id_be, family_be: data.family_be, addr: data.addr }
    }

    /// The prefix length and data of aya's LPM `Key<CidrData>`.
    pub fn parts(&self) -> (u32, CidrData) {
        (self.prefix_len, CidrData { policy_id_be: self.policy_id_be, family_be: self.family_be, addr: self.addr })
    }

    /// The id of the object the entry belongs to.
    pub fn policy_id(&self) -> u32 {
        u32::from_be_bytes(self.policy_id_be)
    }

    pub fn with_policy_id(self, policy_id: u32) -> Self {
        Self { policy_id_be: policy_id.to_be_bytes(), ..self }
    }

    /// The prefix length of the network itself (without the id and family).
    pub fn addr_prefix_len(&self) -> u32 {
        self.prefix_len.saturating_sub(Self::HEADER_BITS)
    }

    pub fn ip(&self) -> IpAddr {
        ip_of(u32::from_be_bytes(self.family_be), &self.addr)
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

impl CidrData {
    #[inline(always)]
    pub fn new(policy_id: u32, family: u16, addr: [u8; 16]) -> Self {
        Self { policy_id_be: policy_id.to_be_bytes(), family_be: (family as u32).to_be_bytes(), addr }
    }

    pub fn policy_id(&self) -> u32 {
        u32::from_be_bytes(self.policy_id_be)
    }
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
    /// The destination lies in one of the pod's own excluded ranges (its annotation): the
    /// pod's ranges are folded into its route table, so that they cost no lookup of their
    /// own and the shared list stays shared (see `PodConfig`).
    pub const POD_EXCLUDED: u32 = 1 << 4;
    /// The destination lies in one of the pod's own included ranges.
    pub const POD_INCLUDED: u32 = 1 << 5;
    /// This entry *is* one of the pod's own excluded ranges (for `status`; the programs
    /// read `POD_EXCLUDED`).
    pub const POD_EXCLUSION: u32 = 1 << 6;
    /// This entry is one of the pod's own included ranges.
    pub const POD_INCLUSION: u32 = 1 << 7;
}

/// Value of `ROUTES`: what the pod's routing table says about a destination prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
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

/// Key of `PORTS`: one entry per excluded port of a ports list (`policy_id`: the list's id,
/// `PodConfig::ports_list`); the value is `port_flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub policy_id: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of `IFACES`: inbound interface exclusions by ifindex (of the pod's namespace), in the
/// pod's own table (`policy_id`: `PodConfig::policy_id`).
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
pub const LAYOUT_VERSION: u32 = 7;

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
    /// SHA-256 of what the pod's table was compiled from besides its routes (its own
    /// ranges, the interface exclusions): a policy with the same can switch the pod's lists
    /// without re-reading its routes (`ebpf enroll --policy-only`, the daemon's MeshConfig
    /// changes).
    pub table_inputs: [u8; 32],
    /// The proxy UID of the policy (before the pod's user namespace mapped it).
    pub policy_proxy_uid: u32,
    pub _pad: u32,
}

/// Records per `GENERATIONS` chunk (1 KiB values: a pod's table fits in one or two).
pub const GENERATION_CHUNK: usize = 32;

/// Key of `GENERATIONS` (user space only): which entries a policy object wrote, so that
/// deleting it costs its own size, not the size of every pod's policies. (`policy_id` is
/// the object's id; the map keeps its historical name.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, Hash)]
pub struct GenerationKey {
    pub policy_id: u32,
    pub chunk: u32,
}

/// One entry an object wrote: which map (`GenerationRecord::KIND_*`) and its key, padded
/// to the largest key (`CidrKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationRecord {
    pub kind: u32,
    pub key: [u8; size_of::<CidrKey>()],
}

// The record's size is part of the layout (`GENERATIONS` values).
const _: () = assert!(size_of::<GenerationRecord>() == 32);

impl GenerationRecord {
    pub const KIND_UNUSED: u32 = 0;
    pub const KIND_EXCLUDED: u32 = 1;
    pub const KIND_INCLUDED: u32 = 2;
    pub const KIND_ROUTE: u32 = 3;
    pub const KIND_PORT: u32 = 4;
    pub const KIND_IFACE: u32 = 5;

    /// Every kind of map entry an object may own.
    pub const KINDS: [u32; 5] =
        [Self::KIND_EXCLUDED, Self::KIND_INCLUDED, Self::KIND_ROUTE, Self::KIND_PORT, Self::KIND_IFACE];

    /// A record of `kind` from the map key's bytes (`key_len(kind)` of them).
    pub fn from_key_bytes(kind: u32, key: &[u8]) -> Self {
        let mut r = GenerationRecord { kind, key: [0; size_of::<CidrKey>()] };
        r.key[..key.len()].copy_from_slice(key);
        r
    }

    /// An entry of `EXCLUDED_CIDRS`, `INCLUDED_CIDRS` or `ROUTES`.
    pub fn lpm(kind: u32, key: CidrKey) -> Self {
        Self::from_key_bytes(kind, bytemuck::bytes_of(&key))
    }

    pub fn port(key: PortKey) -> Self {
        Self::from_key_bytes(Self::KIND_PORT, bytemuck::bytes_of(&key))
    }

    pub fn iface(key: IfaceKey) -> Self {
        Self::from_key_bytes(Self::KIND_IFACE, bytemuck::bytes_of(&key))
    }

    /// The length of the map key a record of `kind` holds (the rest is padding).
    pub fn key_len(kind: u32) -> usize {
        match kind {
            Self::KIND_PORT => size_of::<PortKey>(),
            Self::KIND_IFACE => size_of::<IfaceKey>(),
            _ => size_of::<CidrKey>(),
        }
    }

    /// The size of the values of the map a record of `kind` goes to: a `RouteValue`, or a
    /// flag byte.
    pub fn value_len(kind: u32) -> usize {
        match kind {
            Self::KIND_ROUTE => size_of::<RouteValue>(),
            _ => 1,
        }
    }

    /// The map key, as the map stores it.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key[..Self::key_len(self.kind)]
    }

    /// The id of the object the entry belongs to (in its key: the hash keys' `policy_id`,
    /// the LPM keys' big-endian prefix).
    pub fn object_id(&self) -> u32 {
        match self.kind {
            Self::KIND_PORT => bytemuck::pod_read_unaligned::<PortKey>(self.key_bytes()).policy_id,
            Self::KIND_IFACE => bytemuck::pod_read_unaligned::<IfaceKey>(self.key_bytes()).policy_id,
            _ => bytemuck::pod_read_unaligned::<CidrKey>(self.key_bytes()).policy_id(),
        }
    }

    /// The same entry in object `id`.
    pub fn with_object_id(&self, id: u32) -> Self {
        match self.kind {
            Self::KIND_PORT => Self::port(PortKey { policy_id: id, ..bytemuck::pod_read_unaligned(self.key_bytes()) }),
            Self::KIND_IFACE => {
                Self::iface(IfaceKey { policy_id: id, ..bytemuck::pod_read_unaligned(self.key_bytes()) })
            }
            kind => Self::lpm(kind, bytemuck::pod_read_unaligned::<CidrKey>(self.key_bytes()).with_policy_id(id)),
        }
    }
}

/// Value of `GENERATIONS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GenerationChunk {
    pub records: [GenerationRecord; GENERATION_CHUNK],
}

/// What a policy object is (`ObjectInfo::kind`).
pub mod object_kind {
    /// A pod's own table: its `ROUTES` cells (with its own annotation ranges) and `IFACES`.
    pub const POD_TABLE: u32 = 1;
    /// A list of excluded ranges (`EXCLUDED_CIDRS`).
    pub const EXCLUDED: u32 = 2;
    /// A list of included ranges (`INCLUDED_CIDRS`).
    pub const INCLUDED: u32 = 3;
    /// A list of excluded ports (`PORTS`).
    pub const PORTS: u32 = 4;
}

/// Value of `OBJECTS` (user space only), keyed by object id (u32, never 0): a complete
/// policy object, found again by its content. Written after every entry of the object (a
/// registered object is complete) and deleted before them (a half-deleted one is never
/// reused). Key 0 is the journal (`ObjectInfo::JOURNAL`): present while an enroll or
/// unenroll is changing the maps, so that the next one knows an earlier one was killed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct ObjectInfo {
    /// SHA-256 of the kind and the entries (without the id).
    pub digest: [u8; 32],
    pub kind: u32,
    pub entries: u32,
    /// Pods referring to it, counted under the installation's lock: raised before a pod's
    /// switch to it, lowered after a switch away. A command killed in between leaves it too
    /// high (the object stays until gc recounts), never too low; and an object whose count
    /// reaches 0 is deleted only once `PODS` confirms that no pod refers to it.
    pub refs: u32,
    pub _pad: u32,
}

impl ObjectInfo {
    /// The key of the journal entry.
    pub const JOURNAL: u32 = 0;
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
    unsafe impl aya::Pod for ObjectInfo {}
}
