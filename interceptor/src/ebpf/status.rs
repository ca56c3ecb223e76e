//! `ebpf status`: what is loaded, and each enrolled pod's policy and counters, read back
//! from the kernel (the maps are the truth, not a file beside them).
//!
//! Every map is read once, in batches (`BPF_MAP_LOOKUP_BATCH`): the cost grows with the size
//! of the maps, not with pods × entries. The node-wide status shows each pod's references to
//! the shared lists and its own ranges; the full lists of one pod are in [`pod_status`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
};

use aya::programs::ProgramInfo;
use aya_obj::generated::bpf_map_type;
use interceptor_common::{
    CidrKey, CounterKey, PodConfig, PortKey, Reason, map_names, pod_flags, port_flags, route_flags,
};
use serde::Serialize;

use super::{
    EbpfError, PinDir,
    enroll::map_fd,
    gc,
    loader::pinned_pods,
    lock::{InstallLock, Mode},
    maps::{PinnedMaps, c_str, read_all, read_trie},
    marker::require_installation,
    object::{ACCEL_PROGRAM, CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM, program_names},
    objects, raw,
};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub loaded: bool,
    pub debug: bool,
    /// New redirected connections are accelerated (`ebpf load --accelerate`).
    pub accelerate: bool,
    pub layout_version: u32,
    pub fingerprint: String,
    /// The cgroup the programs are attached to (from the installation marker).
    pub cgroup: String,
    /// An upgrade was interrupted (the next `ebpf load` completes it).
    pub upgrade_interrupted: bool,
    /// An enroll or unenroll was interrupted (the next one, or `ebpf gc`, repairs).
    pub enroll_interrupted: bool,
    /// Policy generations — the policy objects (pod tables and shared lists) — present in
    /// the maps, referenced by a pod or not.
    pub generations: usize,
    /// Objects no pod references (left by interrupted commands; `ebpf gc` deletes them).
    pub orphaned_generations: usize,
    /// Enrolled pods whose network namespace is gone (`ebpf gc` unenrolls them).
    pub dead_pods: usize,
    /// Every pinned map: entries in use, capacity, and the kernel memory it takes.
    pub maps: BTreeMap<String, MapUsage>,
    /// Kernel memory of all the installation's maps (the sum of `maps[*].memory_bytes`).
    pub map_memory_bytes: u64,
    /// The registered policy objects, and how many pods refer to each.
    pub objects: Vec<ObjectStatus>,
    pub programs: Vec<ProgramStatus>,
    /// Redirected connections being handed over to a sidecar, node-wide.
    pub tracking: Tracking,
    /// The same limit per pod (each pod's `tracking.limit`).
    pub pod_tracking_limit: u64,
    pub pods: Vec<PodStatus>,
    /// What an operator must look at, node-wide (each pod's own are in its `problems`):
    /// an interrupted upgrade, orphaned state, a table more than 80 % full, pods with
    /// problems.
    pub problems: Vec<String>,
}

/// Redirected connections being handed over (from the application's SYN until the kernel
/// has created the sidecar's end) and the limits beyond which connect() is refused.
#[derive(Debug, Default, Serialize)]
pub struct Tracking {
    pub in_flight: u64,
    pub limit: u64,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    /// `null` for a ring buffer (no entries to count).
    pub entries: Option<u64>,
    pub max_entries: u32,
    /// The kernel's own account of the map's memory (`memlock` in its fdinfo: since Linux
    /// 6.4 what the map really uses — preallocated tables whole, others by their entries —
    /// before that an estimate from its capacity). `null` if the kernel does not say.
    pub memory_bytes: Option<u64>,
    /// The map's type (`hash`, `array`, `lpm_trie`, `sk_storage`, …).
    pub kind: &'static str,
}
impl MapUsage {
    /// An array: every slot always exists (its entries are its capacity), so it never
    /// "fills up".
    pub fn fixed_size(&self) -> bool {
        matches!(self.kind, "array" | "percpu_array" | "prog_array" | "array_of_maps")
    }

    /// Entries in use as a share of the capacity, for maps that can fill up.
    pub fn fill(&self) -> Option<f64> {
        match self.entries {
            Some(n) if self.max_entries > 0 && !self.fixed_size() => Some(n as f64 / self.max_entries as f64),
            _ => None,
        }
    }
}

/// The kernel's name of a map type (`enum bpf_map_type`).
fn map_kind(map_type: u32) -> &'static str {
    match map_type {
        1 => "hash",
        2 => "array",
        3 => "prog_array",
        5 => "percpu_hash",
        6 => "percpu_array",
        9 => "lru_hash",
        10 => "lru_percpu_hash",
        11 => "lpm_trie",
        12 => "array_of_maps",
        13 => "hash_of_maps",
        15 => "sockmap",
        18 => "sockhash",
        24 => "sk_storage",
        27 => "ringbuf",
        _ => "other",
    }
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    pub id: u32,
    /// `pod_table`, `excluded_ranges`, `included_ranges` or `excluded_ports`.
    pub kind: &'static str,
    pub entries: u32,
    /// Pods referring to it (0: an orphan, for `ebpf gc`).
    pub pods: usize,
}

#[derive(Debug, Serialize)]
pub struct ProgramStatus {
    pub name: String,
    pub id: u32,
    pub attached: String,
}

/// One direction's counters, summed over CPUs, by reason name. `passed` holds every
/// reason that is not a redirect (refusals and tracking failures included, as it always
/// did); `refused` repeats the refusals on their own.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub redirected: u64,
    pub passed: BTreeMap<String, u64>,
    pub redirected_by_reason: BTreeMap<String, u64>,
    /// Connections (or DNS queries) refused: no sidecar listener, a tracking limit, no
    /// memory, the DNS rule's conflict.
    pub refused: BTreeMap<String, u64>,
}

/// What the programs did with a connection, for a decision reason (`None`: the reason
/// counts an event after the decision, not a decision: `tracking_lost`,
/// `original_dst_unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Redirect,
    Pass,
    Refuse,
}

impl Action {
    pub fn of(reason: Reason) -> Option<Action> {
        match reason {
            Reason::OutTrackingLost | Reason::OrigDstUnknown => None,
            r if r.is_redirect() => Some(Action::Redirect),
            Reason::InNoListener
            | Reason::OutDnsProxyRefused
            | Reason::OutRefusedPodLimit
            | Reason::OutRefusedNodeLimit
            | Reason::OutRefusedNoMemory => Some(Action::Refuse),
            _ => Some(Action::Pass),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Redirect => "redirect",
            Action::Pass => "pass",
            Action::Refuse => "refuse",
        }
    }
}

/// Connections whose original destination could not be tracked: refused at connect()
/// (the tracking limits, no memory), or redirected but lost (the hand-over table overflowed
/// its headroom), or asked for and unknown (SO_ORIGINAL_DST answered ENOENT).
pub const UNTRACKED: [Reason; 5] = [
    Reason::OutRefusedPodLimit,
    Reason::OutRefusedNodeLimit,
    Reason::OutRefusedNoMemory,
    Reason::OutTrackingLost,
    Reason::OrigDstUnknown,
];

/// A process of a pod's network namespace that is not under the attach cgroup: its
/// connections are not intercepted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutsideProcess {
    pub pid: u32,
    /// Its cgroup v2 path.
    pub cgroup: String,
}

/// A shared list a pod refers to.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct ListRef {
    pub id: u32,
    pub entries: u32,
    /// Pods referring to it (this one included).
    pub pods: usize,
}

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub netns_cookie: u64,
    pub netns: String,
    pub pod: String,
    pub enrolled_at: u64,
    /// Identifies the enroll whose policy is in force (fresh at every enroll).
    pub generation: u32,
    /// The pod's own table (its route cells, own ranges, interface exclusions).
    pub table: u32,
    /// The shared lists it refers to (`null`: none).
    pub excluded_list: Option<ListRef>,
    pub included_list: Option<ListRef>,
    pub ports_list: Option<ListRef>,
    pub proxy_uid: u32,
    pub local_proxy_mode: String,
    /// osm-edge's local DNS proxy rule (UDP 127.0.0.153:53 → :5300) is applied.
    pub local_dns_proxy: bool,
    pub pod_ips: Vec<IpAddr>,
    /// The addresses inbound steering finds the pod by.
    pub addresses: Vec<String>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// The excluded ranges the pod's own annotations add (stored with the pod).
    pub own_ip_range_exclusions: Vec<String>,
    /// The included ranges the pod's own annotations add.
    pub own_ip_range_inclusions: Vec<String>,
    /// Every excluded range in force for the pod (shared list and own ranges), sorted;
    /// only in the status of one pod ([`pod_status`]), where a node's status would repeat a
    /// shared list for every pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_ip_range_exclusions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_ip_range_inclusions: Option<Vec<String>>,
    pub outbound_port_exclusions: Vec<u16>,
    pub inbound_port_exclusions: Vec<u16>,
    pub interface_exclusion_ifindexes: Vec<u32>,
    pub inbound_steering: bool,
    pub tracking: Tracking,
    /// The pod's network namespace no longer exists (its sk_lookup link is detached).
    pub netns_gone: bool,
    pub outbound: Counters,
    pub inbound: Counters,
    /// Connections that could not be tracked, by reason (every reason of [`UNTRACKED`],
    /// zeros included).
    pub untracked: BTreeMap<String, u64>,
    /// Processes of the pod's network namespace outside the attach cgroup (their traffic is
    /// not intercepted). Only checked when the programs are not attached at the root.
    pub processes_outside_cgroup: Vec<OutsideProcess>,
    /// What an operator must look at: refused connections, unknown answers, processes
    /// outside the attach cgroup, a namespace that is gone.
    pub problems: Vec<String>,
}

/// A range of an LPM key as text (`addr/len`).
fn cidr_text(k: &CidrKey) -> String {
    format!("{}/{}", k.ip(), k.addr_prefix_len())
}

/// What the kernel says a map's memory is (`memlock:` in the descriptor's fdinfo).
pub fn map_memory(fd: BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// Entries, capacity and memory of every pinned map.
pub fn map_usage(pins: &PinDir) -> BTreeMap<String, MapUsage> {
    let mut out = BTreeMap::new();
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    for name in map_names::ALL.iter().chain(&map_names::USER) {
        let Ok(fd) = raw::obj_get(&pins.map(name)) else { continue };
        let Ok(info) = raw::map_info(fd.as_fd()) else { continue };
        let entries = if info.is(bpf_map_type::BPF_MAP_TYPE_RINGBUF) {
            None
        } else {
            // Per-CPU maps hand back one value per possible CPU, each rounded up to 8 bytes.
            let value = if info.is(bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH)
                || info.is(bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY)
            {
                (info.value_size as usize).div_ceil(8) * 8 * cpus
            } else {
                info.value_size as usize
            };
            match raw::lookup_batch(fd.as_fd(), info.key_size as usize, value) {
                Ok((_, _, n)) => Some(n as u64),
                // Maps without batch lookups (socket maps, storage): walk the keys.
                Err(_) => raw::count_entries(fd.as_fd(), info.key_size).ok(),
            }
        };
        out.insert(
            name.to_string(),
            MapUsage {
                entries,
                max_entries: info.max_entries,
                memory_bytes: map_memory(fd.as_fd()),
                kind: map_kind(info.map_type),
            },
        );
    }
    out
}

/// The policy maps, each read once.
struct Snapshot {
    pods: Vec<(u64, PodConfig)>,
    /// Table id → (own exclusions, own inclusions).
    own_ranges: BTreeMap<u32, (Vec<String>, Vec<String>)>,
    /// Ports list id → (outbound, inbound).
    ports: BTreeMap<u32, (Vec<u16>, Vec<u16>)>,
    /// Table id → interface exclusions.
    ifaces: BTreeMap<u32, Vec<u32>>,
    /// Object ids owning entries in any policy map.
    ids_in_maps: BTreeSet<u32>,
    /// Registered objects: id → (kind, entries).
    objects: BTreeMap<u32, (u32, u32)>,
    recorded: BTreeSet<u32>,
    addresses: BTreeMap<u64, Vec<String>>,
}

impl Snapshot {
    fn read(maps: &PinnedMaps) -> Result<Snapshot> {
        let pods = objects::pods(maps)?;
        let mut ids_in_maps = BTreeSet::new();
        let mut own_ranges: BTreeMap<u32, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for (k, v) in read_trie(&maps.routes)? {
            ids_in_maps.insert(k.policy_id());
            let entry = own_ranges.entry(k.policy_id()).or_default();
            if v.flags & route_flags::POD_EXCLUSION != 0 {
                entry.0.push(cidr_text(&k));
            }
            if v.flags & route_flags::POD_INCLUSION != 0 {
                entry.1.push(cidr_text(&k));
            }
        }
        for trie in [&maps.excluded, &maps.included] {
            ids_in_maps.extend(read_trie(trie)?.iter().map(|(k, _)| k.policy_id()));
        }
        let mut ports: BTreeMap<u32, (Vec<u16>, Vec<u16>)> = BTreeMap::new();
        for (k, f) in read_all::<_, PortKey, u8>(&maps.ports)? {
            ids_in_maps.insert(k.policy_id);
            let entry = ports.entry(k.policy_id).or_default();
            if f & port_flags::OUTBOUND_EXCLUDED != 0 {
                entry.0.push(k.port);
            }
            if f & port_flags::INBOUND_EXCLUDED != 0 {
                entry.1.push(k.port);
            }
        }
        let mut ifaces: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (k, _) in read_all::<_, interceptor_common::IfaceKey, u8>(&maps.ifaces)? {
            ids_in_maps.insert(k.policy_id);
            ifaces.entry(k.policy_id).or_default().push(k.ifindex);
        }
        for v in own_ranges.values_mut() {
            v.0.sort();
            v.1.sort();
        }
        for v in ports.values_mut() {
            v.0.sort_unstable();
            v.1.sort_unstable();
        }
        for v in ifaces.values_mut() {
            v.sort_unstable();
        }
        let objects = objects::registered(maps)?.into_iter().map(|(id, i)| (id, (i.kind, i.entries))).collect();
        let mut addresses: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (k, cookie) in read_all(&maps.pod_addrs)? {
            addresses.entry(cookie).or_default().push(k.ip().to_string());
        }
        for v in addresses.values_mut() {
            v.sort();
        }
        Ok(Snapshot {
            pods,
            own_ranges,
            ports,
            ifaces,
            ids_in_maps,
            objects,
            recorded: objects::recorded(maps)?,
            addresses,
        })
    }

    /// How many pods refer to each object.
    fn references(&self) -> BTreeMap<u32, usize> {
        let mut refs: BTreeMap<u32, usize> = BTreeMap::new();
        for (_, c) in &self.pods {
            for id in c.objects() {
                *refs.entry(id).or_default() += 1;
            }
        }
        refs
    }

    fn list_ref(&self, id: u32, refs: &BTreeMap<u32, usize>) -> Option<ListRef> {
        (id != 0).then(|| ListRef {
            id,
            entries: self.objects.get(&id).map(|(_, n)| *n).unwrap_or(0),
            pods: refs.get(&id).copied().unwrap_or(0),
        })
    }
}

/// Decision counters per pod: (outbound, inbound).
fn read_counters(maps: &PinnedMaps) -> Result<BTreeMap<u64, (Counters, Counters)>> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| EbpfError::Io { what: what.to_string(), source: e })?;
    let (keys, values, n) = raw::lookup_batch(map_fd(&maps.counters), size_of::<CounterKey>(), 8 * cpus)?;
    let mut counters: BTreeMap<u64, (Counters, Counters)> = BTreeMap::new();
    for i in 0..n {
        let key: CounterKey =
            bytemuck::pod_read_unaligned(&keys[i * size_of::<CounterKey>()..(i + 1) * size_of::<CounterKey>()]);
        let total: u64 = values[i * 8 * cpus..(i + 1) * 8 * cpus]
            .chunks(8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
            .sum();
        let Some(reason) = Reason::from_u32(key.reason) else { continue };
        let entry = counters.entry(key.netns_cookie).or_default();
        let c = if reason.is_inbound() { &mut entry.1 } else { &mut entry.0 };
        if reason.is_redirect() {
            c.redirected += total;
            *c.redirected_by_reason.entry(reason.name().into()).or_default() += total;
        } else {
            *c.passed.entry(reason.name().into()).or_default() += total;
        }
        if Action::of(reason) == Some(Action::Refuse) {
            *c.refused.entry(reason.name().into()).or_default() += total;
        }
    }
    Ok(counters)
}

pub fn status(pins: &PinDir) -> Result<Status> {
    let not_loaded = || Status {
        pin_dir: pins.path().display().to_string(),
        loaded: false,
        debug: false,
        accelerate: false,
        layout_version: 0,
        fingerprint: String::new(),
        cgroup: String::new(),
        upgrade_interrupted: false,
        enroll_interrupted: false,
        generations: 0,
        orphaned_generations: 0,
        dead_pods: 0,
        maps: BTreeMap::new(),
        map_memory_bytes: 0,
        objects: vec![],
        programs: vec![],
        tracking: Tracking::default(),
        pod_tracking_limit: 0,
        pods: vec![],
        problems: vec![],
    };
    let Some(_lock) = InstallLock::acquire(pins, Mode::Shared)? else { return Ok(not_loaded()) };
    let marker = require_installation(pins)?;
    if !pins.is_loaded() {
        return Ok(not_loaded());
    }
    let maps = PinnedMaps::open(pins)?;
    let settings = maps.settings()?;
    let mut programs = Vec::new();
    for (name, _) in CGROUP_PROGRAMS {
        let id = ProgramInfo::from_pin(pins.prog(name)).map(|i| i.id()).unwrap_or(0);
        programs.push(ProgramStatus { name: name.to_string(), id, attached: "cgroup".into() });
    }
    let id = ProgramInfo::from_pin(pins.prog(SK_LOOKUP_PROGRAM)).map(|i| i.id()).unwrap_or(0);
    let steering: BTreeSet<u64> = pinned_pods(pins)?.into_iter().collect();
    programs.push(ProgramStatus {
        name: SK_LOOKUP_PROGRAM.into(),
        id,
        attached: format!("{} pod network namespace(s)", steering.len()),
    });
    let accelerate = super::loader::acceleration(pins);
    let id = ProgramInfo::from_pin(pins.prog(ACCEL_PROGRAM)).map(|i| i.id()).unwrap_or(0);
    programs.push(ProgramStatus {
        name: ACCEL_PROGRAM.into(),
        id,
        attached: format!("map ACCEL_SOCKETS (acceleration {})", if accelerate { "on" } else { "off" }),
    });

    let snap = Snapshot::read(&maps)?;
    let refs = snap.references();
    let mut counters = read_counters(&maps)?;
    let info: BTreeMap<u64, interceptor_common::PodInfo> = read_all(&maps.pod_info)?.into_iter().collect();
    let tracking: BTreeMap<u64, u64> = read_all(&maps.pod_tracking)?
        .into_iter()
        .map(|(c, t): (u64, interceptor_common::Tracking)| (c, t.in_flight))
        .collect();
    let outside = processes_outside(&maps, marker.cgroup_id);
    let mut pods = Vec::new();
    for (cookie, cfg) in &snap.pods {
        let (cookie, cfg) = (*cookie, *cfg);
        let (own_ex, own_in) = snap.own_ranges.get(&cfg.policy_id).cloned().unwrap_or_default();
        let (out_ports, in_ports) = snap.ports.get(&cfg.ports_list).cloned().unwrap_or_default();
        let info = info.get(&cookie);
        let mut pod_ips = Vec::new();
        if cfg.flags & pod_flags::HAS_POD_IP4 != 0 {
            pod_ips.push(IpAddr::from(cfg.pod_ip4));
        }
        if cfg.flags & pod_flags::HAS_POD_IP6 != 0 {
            pod_ips.push(IpAddr::from(cfg.pod_ip6));
        }
        let (outbound, inbound) = counters.remove(&cookie).unwrap_or_default();
        let untracked: BTreeMap<String, u64> = UNTRACKED
            .iter()
            .map(|r| {
                let c = if r.is_inbound() { &inbound } else { &outbound };
                (r.name().to_string(), c.passed.get(r.name()).copied().unwrap_or(0))
            })
            .collect();
        let processes_outside_cgroup = outside.get(&cookie).cloned().unwrap_or_default();
        let netns_gone = gc::netns_gone(pins, cookie);
        let mut problems = problems(&outbound, &inbound);
        if !processes_outside_cgroup.is_empty() {
            let pids: Vec<String> =
                processes_outside_cgroup.iter().take(8).map(|p| format!("{} in {}", p.pid, p.cgroup)).collect();
            problems.push(format!(
                "{} process(es) of the pod's network namespace are outside the cgroup eBPF mode is attached to \
                 ({}): their connections are not intercepted (pids {}{})",
                processes_outside_cgroup.len(),
                marker.cgroup_path(),
                pids.join(", "),
                if processes_outside_cgroup.len() > 8 { ", …" } else { "" }
            ));
        }
        if netns_gone {
            problems.push("the pod's network namespace is gone: `interceptor ebpf gc` unenrolls it".into());
        }
        pods.push(PodStatus {
            netns_cookie: cookie,
            netns: info.map(|i| c_str(&i.netns_path)).unwrap_or_default(),
            pod: info.map(|i| c_str(&i.pod_name)).unwrap_or_default(),
            enrolled_at: info.map(|i| i.enrolled_at).unwrap_or(0),
            generation: cfg.generation,
            table: cfg.policy_id,
            excluded_list: snap.list_ref(cfg.excluded_list, &refs),
            included_list: snap.list_ref(cfg.included_list, &refs),
            ports_list: snap.list_ref(cfg.ports_list, &refs),
            proxy_uid: cfg.proxy_uid,
            local_proxy_mode: if cfg.flags & pod_flags::POD_IP_MODE != 0 { "PodIP" } else { "Localhost" }.into(),
            local_dns_proxy: cfg.flags & pod_flags::LOCAL_DNS_PROXY != 0,
            pod_ips,
            addresses: snap.addresses.get(&cookie).cloned().unwrap_or_default(),
            outbound_port: cfg.outbound_port,
            inbound_port: cfg.inbound_port,
            own_ip_range_exclusions: own_ex,
            own_ip_range_inclusions: own_in,
            outbound_ip_range_exclusions: None,
            outbound_ip_range_inclusions: None,
            outbound_port_exclusions: out_ports,
            inbound_port_exclusions: in_ports,
            interface_exclusion_ifindexes: snap.ifaces.get(&cfg.policy_id).cloned().unwrap_or_default(),
            inbound_steering: steering.contains(&cookie),
            tracking: Tracking {
                in_flight: tracking.get(&cookie).copied().unwrap_or(0),
                limit: settings.max_in_flight_pod,
            },
            netns_gone,
            outbound,
            inbound,
            untracked,
            processes_outside_cgroup,
            problems,
        });
    }
    pods.sort_by_key(|p| p.netns_cookie);
    let mut present: BTreeSet<u32> = snap.recorded.union(&snap.ids_in_maps).copied().collect();
    present.extend(refs.keys());
    let next_pins = program_names().any(|n| pins.prog_next(n).exists());
    let maps_usage = map_usage(pins);
    let objects = snap
        .objects
        .iter()
        .map(|(id, (kind, entries))| ObjectStatus {
            id: *id,
            kind: objects::kind_name(*kind),
            entries: *entries,
            pods: refs.get(id).copied().unwrap_or(0),
        })
        .collect();
    let mut status = Status {
        pin_dir: pins.path().display().to_string(),
        loaded: true,
        debug: settings.debug != 0,
        accelerate,
        layout_version: settings.layout_version,
        fingerprint: format!("{:016x}", settings.fingerprint),
        cgroup: marker.cgroup_path(),
        upgrade_interrupted: settings.fingerprint == 0 || next_pins,
        enroll_interrupted: maps.objects.get(&interceptor_common::ObjectInfo::JOURNAL, 0).is_ok(),
        generations: present.len(),
        orphaned_generations: present.iter().filter(|id| !refs.contains_key(id)).count(),
        dead_pods: pods.iter().filter(|p| p.netns_gone).count(),
        map_memory_bytes: maps_usage.values().filter_map(|m| m.memory_bytes).sum(),
        maps: maps_usage,
        objects,
        programs,
        tracking: Tracking {
            in_flight: maps.node_tracking.get(&0, 0).map(|t| t.in_flight).unwrap_or(0),
            limit: settings.max_in_flight_node,
        },
        pod_tracking_limit: settings.max_in_flight_pod,
        pods,
        problems: vec![],
    };
    status.problems = node_problems(&status);
    Ok(status)
}

/// A table is "filling up" beyond this share of its capacity.
pub const FILL_WARNING: f64 = 0.8;

/// The node-wide problems of a status.
fn node_problems(s: &Status) -> Vec<String> {
    let mut out = Vec::new();
    if s.upgrade_interrupted {
        out.push("an upgrade was interrupted: run `interceptor ebpf load` to complete it".to_string());
    }
    if s.orphaned_generations > 0 {
        out.push(format!(
            "{} orphaned policy generation(s) (left by interrupted commands): `interceptor ebpf gc` deletes them",
            s.orphaned_generations
        ));
    }
    if s.dead_pods > 0 {
        out.push(format!(
            "{} enrolled pod(s) whose network namespace is gone: `interceptor ebpf gc` unenrolls them",
            s.dead_pods
        ));
    }
    for (name, m) in &s.maps {
        if let (Some(fill), Some(n)) = (m.fill(), m.entries)
            && fill > FILL_WARNING
        {
            out.push(format!("map {name} is {:.0} % full ({n} of {})", 100.0 * fill, m.max_entries));
        }
    }
    if s.tracking.limit > 0 && s.tracking.in_flight as f64 > FILL_WARNING * s.tracking.limit as f64 {
        out.push(format!(
            "{} of the node's {} connections being handed over are in use: beyond the limit connect()s are refused",
            s.tracking.in_flight, s.tracking.limit
        ));
    }
    let troubled: Vec<String> = s.pods.iter().filter(|p| !p.problems.is_empty()).map(|p| p.display_name()).collect();
    if !troubled.is_empty() {
        out.push(format!("{} pod(s) with problems: {}", troubled.len(), troubled.join(", ")));
    }
    out
}

impl PodStatus {
    /// `namespace/name` when the pod was enrolled with a name, else its netns cookie.
    pub fn display_name(&self) -> String {
        if self.pod.is_empty() { format!("netns-{}", self.netns_cookie) } else { self.pod.clone() }
    }

    /// Every decision counter of the pod with its action: (reason, action, count).
    pub fn decisions(&self) -> Vec<(Reason, Action, u64)> {
        let mut out = Vec::new();
        for r in Reason::ALL {
            let Some(action) = Action::of(r) else { continue };
            let c = if r.is_inbound() { &self.inbound } else { &self.outbound };
            let n = if r.is_redirect() { c.redirected_by_reason.get(r.name()) } else { c.passed.get(r.name()) };
            if let Some(&n) = n {
                out.push((r, action, n));
            }
        }
        out
    }
}

/// For each enrolled pod (by cookie), its processes outside the attach cgroup. Empty when
/// the programs are attached at the cgroup v2 root (every process is under it) or the
/// check cannot be made (it is advice: a failure only shows in the debug log).
fn processes_outside(maps: &PinnedMaps, attach_id: u64) -> BTreeMap<u64, Vec<OutsideProcess>> {
    let mut out = BTreeMap::new();
    let root_id = super::cgroup::cgroup2_root().and_then(|r| super::cgroup::cgroup_id(&r));
    if root_id.as_ref().is_ok_and(|id| *id == attach_id) {
        return out;
    }
    // Each pod's namespace identity, from the path it was enrolled with, if that path still
    // names the same namespace (its cookie says so).
    let mut wanted = std::collections::HashMap::new();
    for (cookie, info) in maps.pod_info.iter().filter_map(Result::ok) {
        let path = c_str(&info.netns_path);
        if path.is_empty() {
            continue;
        }
        let ns = crate::netns::Netns::at(&path);
        if ns.cookie().ok() == Some(cookie)
            && let Ok(id) = ns.id()
        {
            wanted.insert(id, cookie);
        }
    }
    if wanted.is_empty() {
        return out;
    }
    match super::cgroup::processes_outside_of(
        &wanted.keys().copied().collect::<std::collections::HashSet<_>>(),
        attach_id,
    ) {
        Ok(found) => {
            for (id, procs) in found {
                let list = procs.into_iter().map(|(pid, cgroup)| OutsideProcess { pid, cgroup }).collect();
                out.insert(wanted[&id], list);
            }
        }
        Err(e) => tracing::debug!("cannot check the pods' cgroups: {e:#}"),
    }
    out
}

/// The status of one pod, with every range in force for it (its shared lists' and its own);
/// `None` if it is not enrolled.
pub fn pod_status(pins: &PinDir, cookie: u64) -> Result<Option<PodStatus>> {
    let mut s = status(pins)?;
    let Some(i) = s.pods.iter().position(|p| p.netns_cookie == cookie) else { return Ok(None) };
    let mut pod = s.pods.swap_remove(i);
    let _lock = InstallLock::acquire(pins, Mode::Shared)?;
    let maps = PinnedMaps::open(pins)?;
    for (trie, list, own, out) in [
        (&maps.excluded, &pod.excluded_list, &pod.own_ip_range_exclusions, &mut pod.outbound_ip_range_exclusions),
        (&maps.included, &pod.included_list, &pod.own_ip_range_inclusions, &mut pod.outbound_ip_range_inclusions),
    ] {
        let mut all: Vec<String> = own.clone();
        if let Some(l) = list {
            all.extend(read_trie(trie)?.iter().filter(|(k, _)| k.policy_id() == l.id).map(|(k, _)| cidr_text(k)));
        }
        all.sort();
        all.dedup();
        *out = Some(all);
    }
    Ok(Some(pod))
}

/// The failures among a pod's counters, as sentences.
fn problems(outbound: &Counters, inbound: &Counters) -> Vec<String> {
    let mut out = Vec::new();
    for (direction, c) in [("outbound", outbound), ("inbound", inbound)] {
        for r in Reason::ALL.iter().filter(|r| r.is_failure()) {
            let Some(&n) = c.passed.get(r.name()) else { continue };
            if n == 0 || r.is_inbound() != (direction == "inbound") {
                continue;
            }
            let what = match r {
                Reason::InNoListener => "inbound connections refused: no sidecar listener",
                Reason::OutRefusedPodLimit => "connect()s refused: the pod's tracking limit",
                Reason::OutRefusedNodeLimit => "connect()s refused: the node's tracking limit",
                Reason::OutRefusedNoMemory => "connect()s refused: no memory for the connection's record",
                Reason::OutTrackingLost => "redirected connections whose original destination was lost",
                Reason::OrigDstUnknown => "SO_ORIGINAL_DST answered ENOENT (original destination unknown)",
                Reason::OutDnsProxyRefused => "DNS queries refused (see dns_proxy_refused)",
                _ => r.name(),
            };
            out.push(format!("{n} {what} ({})", r.name()));
        }
    }
    out
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.loaded {
            return writeln!(f, "eBPF mode: not loaded (pin directory {})", self.pin_dir);
        }
        writeln!(
            f,
            "eBPF mode: loaded at {} (build {}, debug {}, acceleration {}), attached at cgroup {}",
            self.pin_dir,
            self.fingerprint,
            if self.debug { "on" } else { "off" },
            if self.accelerate { "on" } else { "off" },
            self.cgroup
        )?;
        if self.upgrade_interrupted {
            writeln!(f, "an upgrade was interrupted: run `interceptor ebpf load` to complete it")?;
        }
        if self.enroll_interrupted {
            writeln!(f, "an enroll or unenroll was interrupted: the next one (or `interceptor ebpf gc`) repairs")?;
        }
        writeln!(
            f,
            "policy generations (objects): {} ({} orphaned); pods whose namespace is gone: {}{}",
            self.generations,
            self.orphaned_generations,
            self.dead_pods,
            if self.orphaned_generations + self.dead_pods > 0 { " (run `interceptor ebpf gc`)" } else { "" }
        )?;
        if self.problems.is_empty() {
            writeln!(f, "problems: none")?;
        } else {
            writeln!(f, "problems: {}", self.problems.len())?;
            for problem in &self.problems {
                writeln!(f, "  PROBLEM: {problem}")?;
            }
        }
        writeln!(f, "maps ({:.1} MiB of kernel memory):", self.map_memory_bytes as f64 / 1048576.0)?;
        for (name, m) in &self.maps {
            let mem = m.memory_bytes.map(|b| format!("{:>9.1} KiB", b as f64 / 1024.0)).unwrap_or_default();
            match m.entries {
                Some(n) => match m.fill() {
                    Some(fill) => {
                        writeln!(f, "  {name:<16} {n:>9} / {:<9} {mem} ({:.1} %)", m.max_entries, 100.0 * fill)?
                    }
                    None => writeln!(f, "  {name:<16} {n:>9} / {:<9} {mem} ({})", m.max_entries, m.kind)?,
                },
                None if m.kind == "ringbuf" => {
                    writeln!(f, "  {name:<16} {:>9} / {:<9} {mem} (ring buffer bytes)", "-", m.max_entries)?
                }
                None => writeln!(f, "  {name:<16} {:>9} {mem} ({}: one entry per socket)", "-", m.kind)?,
            }
        }
        let shared: Vec<&ObjectStatus> = self.objects.iter().filter(|o| o.kind != "pod_table").collect();
        if !shared.is_empty() {
            writeln!(f, "shared lists:")?;
            for o in shared {
                writeln!(f, "  {:<16} {:<10} {:>7} entries, {} pod(s)", o.kind, o.id, o.entries, o.pods)?;
            }
        }
        writeln!(f, "programs:")?;
        for p in &self.programs {
            writeln!(f, "  {:<20} id {:<6} {}", p.name, p.id, p.attached)?;
        }
        writeln!(f, "connections being handed over: {} of {} (node)", self.tracking.in_flight, self.tracking.limit)?;
        writeln!(f, "pods: {}", self.pods.len())?;
        for p in &self.pods {
            writeln!(
                f,
                "- netns {} (cookie {}){} addresses {}{}",
                p.netns,
                p.netns_cookie,
                if p.pod.is_empty() { String::new() } else { format!(" pod {}", p.pod) },
                p.addresses.join(","),
                if p.netns_gone { " — NAMESPACE GONE" } else { "" }
            )?;
            writeln!(
                f,
                "    generation {} table {} uid {} mode {} listeners {}/{} inbound steering {} dns proxy {}",
                p.generation,
                p.table,
                p.proxy_uid,
                p.local_proxy_mode,
                p.outbound_port,
                p.inbound_port,
                if p.inbound_steering { "on" } else { "off" },
                if p.local_dns_proxy { "on (udp 127.0.0.153:53 -> :5300)" } else { "off" }
            )?;
            let show = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
            let ports = |v: &[u16]| {
                if v.is_empty() { "-".to_string() } else { v.iter().map(u16::to_string).collect::<Vec<_>>().join(",") }
            };
            let with_list = |list: &Option<ListRef>, own: &[String]| match (list, own.is_empty()) {
                (None, _) => show(own),
                (Some(l), true) => format!("list {} ({} ranges)", l.id, l.entries),
                (Some(l), false) => format!("list {} ({} ranges) + {}", l.id, l.entries, own.join(",")),
            };
            writeln!(
                f,
                "    exclude {} include {} out-ports {} in-ports {} ifindexes {:?}",
                with_list(&p.excluded_list, &p.own_ip_range_exclusions),
                with_list(&p.included_list, &p.own_ip_range_inclusions),
                ports(&p.outbound_port_exclusions),
                ports(&p.inbound_port_exclusions),
                p.interface_exclusion_ifindexes
            )?;
            for (direction, c) in [("outbound", &p.outbound), ("inbound", &p.inbound)] {
                let passed: BTreeMap<&String, &u64> =
                    c.passed.iter().filter(|(r, _)| !c.refused.contains_key(*r) && !is_untracked_event(r)).collect();
                writeln!(
                    f,
                    "    {:<9} redirected {} {} passed {} refused {}",
                    format!("{direction}:"),
                    c.redirected,
                    counts(c.redirected_by_reason.iter()),
                    counts(passed.into_iter()),
                    counts(c.refused.iter()),
                )?;
            }
            let untracked: u64 = p.untracked.values().sum();
            writeln!(
                f,
                "    untracked: {}{}",
                untracked,
                if untracked > 0 {
                    format!(" {}", counts(p.untracked.iter().filter(|(_, n)| **n > 0)))
                } else {
                    String::new()
                }
            )?;
            writeln!(f, "    being handed over: {} of {}", p.tracking.in_flight, p.tracking.limit)?;
            for problem in &p.problems {
                writeln!(f, "    PROBLEM: {problem}")?;
            }
        }
        Ok(())
    }
}

/// `tracking_lost` and `original_dst_unknown`: events after a decision, shown as untracked.
fn is_untracked_event(reason: &str) -> bool {
    reason == Reason::OutTrackingLost.name() || reason == Reason::OrigDstUnknown.name()
}

/// `{"a": 1, "b": 2}` (as `status` always printed its counters).
fn counts<'a>(it: impl Iterator<Item = (&'a String, &'a u64)>) -> String {
    format!("{:?}", it.collect::<BTreeMap<_, _>>())
}
