//! Maps shared by all programs. The loader pins each one as `<pin-dir>/maps/<NAME>`, so
//! the per-pod `sk_lookup` programs and later loads reuse the same maps.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, ProgramArray, SkStorage, SockHash},
    macros::btf_map,
};
use interceptor_common::{
    CidrData, ConnKey, CounterKey, DnsMark, IfaceKey, ListenerKey, OrigDst, PodAddrKey, PodConfig, PortKey, RouteValue,
    Settings, SockRecord, SteerNetns, Tracking, capacity,
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// Enrolled pods: network namespace cookie → the pod's current policy generation.
#[btf_map]
pub static PODS: HashMap<u64, PodConfig, { capacity::PODS }, NO_PREALLOC> = HashMap::new();

/// Pod addresses → the pod's network namespace cookie. Written at enroll so that an
/// address cannot be enrolled for two pods; the programs do not read it.
#[btf_map]
pub static POD_ADDRS: HashMap<PodAddrKey, u64, { capacity::POD_ADDRS }, NO_PREALLOC> = HashMap::new();

/// Outbound IP range exclusions of every policy (value unused, presence matters).
#[btf_map]
pub static EXCLUDED_CIDRS: LpmTrie<CidrData, u8, { capacity::CIDRS }> = LpmTrie::new();

/// Outbound IP range inclusions of every policy.
#[btf_map]
pub static INCLUDED_CIDRS: LpmTrie<CidrData, u8, { capacity::CIDRS }> = LpmTrie::new();

/// Each pod's routing table, reduced to what the chains look at: is the destination local
/// (`-o lo`), does it leave through an excluded interface, and which source the kernel
/// would pick for it.
#[btf_map]
pub static ROUTES: LpmTrie<CidrData, RouteValue, { capacity::ROUTES }> = LpmTrie::new();

/// Excluded ports (value: `port_flags`).
#[btf_map]
pub static PORTS: HashMap<PortKey, u8, { capacity::PORTS }, NO_PREALLOC> = HashMap::new();

/// Inbound interface exclusions by ifindex.
#[btf_map]
pub static IFACES: HashMap<IfaceKey, u8, { capacity::IFACES }, NO_PREALLOC> = HashMap::new();

/// What each socket of an enrolled pod is (`SockRecord`): socket-local storage, created
/// with the record and freed with the socket — never evicted, never leaked, whichever end
/// closes first and however.
#[btf_map]
pub static SOCKETS: SkStorage<SockRecord> = SkStorage::new();

/// Redirected connections being handed over, by their tuple as the listener's end sees
/// it: written when the application's SYN leaves, taken over by the sidecar's end when the
/// kernel creates it, removed if the application's socket closes first. A plain hash map:
/// nothing is evicted; capacity is enforced at connect() (`NODE_TRACKING`, `POD_TRACKING`).
/// Its size is set by the loader (node limit + headroom).
#[btf_map]
pub static HANDOFF: HashMap<ConnKey, OrigDst, { capacity::TRACKED_CONNECTIONS + capacity::HANDOFF_HEADROOM }> =
    HashMap::new();

/// Node-wide count of `HANDOFF` entries (index 0).
#[btf_map]
pub static NODE_TRACKING: Array<Tracking, 1> = Array::new();

/// Per-pod count of `HANDOFF` entries, by network namespace cookie.
#[btf_map]
pub static POD_TRACKING: HashMap<u64, Tracking, { capacity::PODS }, NO_PREALLOC> = HashMap::new();

/// Each enrolled pod's inbound listeners (every SO_REUSEPORT worker of the proxy), in slots
/// per family; the kernel drops a closed socket from the map by itself.
#[btf_map]
pub static LISTENERS: SockHash<ListenerKey, { capacity::LISTENERS }> = SockHash::new();

/// The network namespace the running `sk_lookup` is for: each pod's own small program
/// writes its cookie here and tail-calls the shared one (softirq, one CPU: no interleaving).
#[btf_map]
pub static STEER_NETNS: PerCpuArray<SteerNetns, 1> = PerCpuArray::new();

/// Slot 0: the shared inbound steering program, tail-called by every pod's program.
/// Replacing it upgrades every pod at once.
#[btf_map]
pub static STEER_PROGRAM: ProgramArray<1> = ProgramArray::new();

/// UDP sockets the local DNS proxy rule rewrote (see `dns`). Socket storage, not a hash:
/// it is freed with its socket (no capacity, nothing to evict or leak), and DNS traffic is
/// too rare for its allocation cost to matter.
#[btf_map]
pub static DNS_SOCKETS: SkStorage<DnsMark> = SkStorage::new();

/// Decisions per pod and reason.
#[btf_map]
pub static COUNTERS: PerCpuHashMap<CounterKey, u64, { capacity::COUNTERS }, NO_PREALLOC> = PerCpuHashMap::new();

/// Accelerated connections (`ebpf load --accelerate`): both ends of a redirected app ↔
/// sidecar connection, each under the tuple as it sees it (`ConnKey`, local first). The
/// `accelerate` sk_msg program is attached to this map; the kernel drops a socket from it
/// when the socket closes.
#[btf_map]
pub static ACCEL_SOCKETS: SockHash<ConnKey, { capacity::ACCEL_SOCKETS }> = SockHash::new();

/// Index 0: non-zero when new redirected connections are accelerated (set at load).
#[btf_map]
pub static ACCELERATION: Array<u32, 1> = Array::new();

#[inline(always)]
pub fn acceleration_enabled() -> bool {
    matches!(ACCELERATION.get(0), Some(v) if *v != 0)
}

/// Run-time switches (`ebpf debug on|off`) and limits.
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

#[inline(always)]
pub fn debug_enabled() -> bool {
    match SETTINGS.get(0) {
        Some(s) => s.debug != 0,
        None => false,
    }
}
