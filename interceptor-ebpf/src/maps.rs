//! Maps shared by all programs. The loader pins each one as `<pin-dir>/maps/<NAME>`, so
//! the per-namespace `sk_lookup` instances and later loads reuse the same maps.
use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap, SkStorage, SockHash},
    macros::btf_map,
};
use interceptor_common::{
    CidrData, ConnKey, CounterKey, DnsMark, IfaceKey, ListenerKey, OrigDst, PodAddrKey, PodConfig, PortKey, RouteValue,
    Settings, capacity,
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
/// Per-CPU LRU lists: no global lock on the connection path.
const PER_CPU_LRU: usize = BPF_F_NO_COMMON_LRU as usize;

/// Enrolled pods: network namespace cookie → the pod's current policy generation.
#[btf_map]
pub static PODS: HashMap<u64, PodConfig, { capacity::PODS }, NO_PREALLOC> = HashMap::new();

/// Pod addresses → the pod's network namespace cookie: how sk_lookup (which cannot ask which
/// namespace it runs in) finds the pod a connection is for.
#[btf_map]
pub static POD_ADDRS: HashMap<PodAddrKey, u64, { capacity::POD_ADDRS }, NO_PREALLOC> = HashMap::new();

/// Outbound IP range exclusions of every policy (value unused, presence matters).
#[btf_map]
pub static EXCLUDED_CIDRS: LpmTrie<CidrData, u8, { capacity::CIDRS }> = LpmTrie::new();

/// Outbound IP range inclusions of every policy.
#[btf_map]
pub static INCLUDED_CIDRS: LpmTrie<CidrData, u8, { capacity::CIDRS }> = LpmTrie::new();

/// Each pod's routing table, reduced to what the chains look at: is the destination local
/// (`-o lo`), does it leave through an excluded interface, and which source it would use.
#[btf_map]
pub static ROUTES: LpmTrie<CidrData, RouteValue, { capacity::ROUTES }> = LpmTrie::new();

/// Excluded ports (value: `port_flags`).
#[btf_map]
pub static PORTS: HashMap<PortKey, u8, { capacity::PORTS }, NO_PREALLOC> = HashMap::new();

/// Inbound interface exclusions by ifindex.
#[btf_map]
pub static IFACES: HashMap<IfaceKey, u8, { capacity::IFACES }, NO_PREALLOC> = HashMap::new();

/// Redirected connections by their tuple as the listener sees it, from the application's
/// established connect() until its socket closes: what the sidecar's getsockopt answers.
#[btf_map]
pub static PENDING: LruHashMap<ConnKey, OrigDst, { capacity::TRACKED_CONNECTIONS }, PER_CPU_LRU> = LruHashMap::new();

/// Redirected application sockets by socket cookie: what their getpeername() restores.
/// (Hash maps instead of socket storage: no allocation and memory charge per connection.)
#[btf_map]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst, { capacity::TRACKED_CONNECTIONS }, PER_CPU_LRU> = LruHashMap::new();

/// Connections accepted in enrolled pods that were not redirected: SO_ORIGINAL_DST is their
/// local address (any other TCP socket of an enrolled pod is a client: its remote address).
#[btf_map]
pub static ACCEPTED: LruHashMap<ConnKey, u8, { capacity::TRACKED_CONNECTIONS }, PER_CPU_LRU> = LruHashMap::new();

/// Each enrolled pod's inbound listener (15003), registered when the sidecar calls listen().
#[btf_map]
pub static LISTENERS: SockHash<ListenerKey, { capacity::LISTENERS }> = SockHash::new();

/// UDP sockets the local DNS proxy rule rewrote (see `dns`). Socket storage, not a hash:
/// it is freed with its socket (no capacity, nothing to evict or leak), and DNS traffic is
/// too rare for its allocation cost to matter.
#[btf_map]
pub static DNS_SOCKETS: SkStorage<DnsMark> = SkStorage::new();

/// Decisions per pod and reason.
#[btf_map]
pub static COUNTERS: PerCpuHashMap<CounterKey, u64, { capacity::COUNTERS }, NO_PREALLOC> = PerCpuHashMap::new();

/// Run-time switches (`ebpf debug on|off`).
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

#[inline(always)]
pub fn debug_enabled() -> bool {
    match SETTINGS.get(0) {
        Some(s) => s.debug != 0,
        None => false,
    }
}
