//! `ebpf status`: what is loaded, and each enrolled pod's policy and counters, read back
//! from the kernel (the maps are the truth, not a file beside them).
//!
//! Every map is read once, in batches (`BPF_MAP_LOOKUP_BATCH`): the cost grows with the size
//! of the maps, not with pods × entries. The node-wide status shows each pod's references to
//! the shared lists and its own ranges; the full lists of one pod are in [`pod_status`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
};

use anyhow::Result;
use aya::programs::ProgramInfo;
use interceptor_common::{
    AF_INET, CidrData, CounterKey, PodConfig, PortKey, Reason, RouteValue, map_names, pod_flags, port_flags,
    route_flags,
};
use serde::Serialize;

use super::{
    PinDir,
    enroll::map_fd,
    gc,
    loader::pinned_pods,
    lock::{InstallLock, Mode},
    maps::{PinnedMaps, c_str, read_all},
    marker::require_installation,
    object::{ACCEL_PROGRAM, CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM, program_names},
    objects, raw,
};

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
    pub pods: Vec<PodStatus>,
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

#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub redirected: u64,
    pub passed: BTreeMap<String, u64>,
    pub redirected_by_reason: BTreeMap<String, u64>,
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
    /// What an operator must look at: refused connections, unknown answers.
    pub problems: Vec<String>,
}

/// A pod address key as text.
pub fn addr_text(k: &interceptor_common::PodAddrKey) -> String {
    if k.family == AF_INET as u32 {
        Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).to_string()
    } else {
        Ipv6Addr::from(k.addr).to_string()
    }
}

fn cidr_text(len: u32, d: &CidrData) -> String {
    let bits = len.saturating_sub(64);
    if u32::from_be_bytes(d.family_be) == AF_INET as u32 {
        let ip = Ipv4Addr::new(d.addr[0], d.addr[1], d.addr[2], d.addr[3]);
        format!("{ip}/{bits}")
    } else {
        format!("{}/{bits}", Ipv6Addr::from(d.addr))
    }
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
        let entries = if info.map_type == raw::BPF_MAP_TYPE_RINGBUF {
            None
        } else {
            // Per-CPU maps hand back one value per possible CPU, each rounded up to 8 bytes.
            let value = if matches!(info.map_type, raw::BPF_MAP_TYPE_PERCPU_HASH | raw::BPF_MAP_TYPE_PERCPU_ARRAY) {
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
            MapUsage { entries, max_entries: info.max_entries, memory_bytes: map_memory(fd.as_fd()) },
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

/// Reads a LPM trie's keys (and values of `value_size`) as (prefix length, data, value).
fn read_trie(fd: BorrowedFd<'_>, value_size: usize) -> Result<Vec<(u32, CidrData, Vec<u8>)>> {
    let key_size = 4 + size_of::<CidrData>();
    let (keys, values, n) = raw::lookup_batch(fd, key_size, value_size)?;
    Ok((0..n)
        .map(|i| {
            let k = &keys[i * key_size..(i + 1) * key_size];
            let len = u32::from_ne_bytes(k[..4].try_into().expect("4 bytes"));
            let data: CidrData = bytemuck::pod_read_unaligned(&k[4..]);
            (len, data, values[i * value_size..(i + 1) * value_size].to_vec())
        })
        .collect())
}

fn id_of(d: &CidrData) -> u32 {
    u32::from_be_bytes(d.policy_id_be)
}

impl Snapshot {
    fn read(maps: &PinnedMaps) -> Result<Snapshot> {
        let pods = objects::pods(maps)?;
        let mut ids_in_maps = BTreeSet::new();
        let mut own_ranges: BTreeMap<u32, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for (len, data, value) in read_trie(map_fd(&maps.routes), size_of::<RouteValue>())? {
            ids_in_maps.insert(id_of(&data));
            let v: RouteValue = bytemuck::pod_read_unaligned(&value);
            let entry = own_ranges.entry(id_of(&data)).or_default();
            if v.flags & route_flags::POD_EXCLUSION != 0 {
                entry.0.push(cidr_text(len, &data));
            }
            if v.flags & route_flags::POD_INCLUSION != 0 {
                entry.1.push(cidr_text(len, &data));
            }
        }
        for trie in [&maps.excluded, &maps.included] {
            let (keys, _, n) = raw::lookup_batch(map_fd(trie), 4 + size_of::<CidrData>(), 1)?;
            for k in keys.chunks(4 + size_of::<CidrData>()).take(n) {
                ids_in_maps.insert(u32::from_be_bytes(k[4..8].try_into().expect("4 bytes")));
            }
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
            addresses.entry(cookie).or_default().push(addr_text(&k));
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
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
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
        pods: vec![],
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
        let problems = problems(&outbound, &inbound);
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
            netns_gone: gc::netns_gone(pins, cookie),
            outbound,
            inbound,
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
    Ok(Status {
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
        pods,
    })
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
            for (len, data, _) in read_trie(map_fd(trie), 1)? {
                if id_of(&data) == l.id {
                    all.push(cidr_text(len, &data));
                }
            }
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
        writeln!(f, "maps ({:.1} MiB of kernel memory):", self.map_memory_bytes as f64 / 1048576.0)?;
        for (name, m) in &self.maps {
            let mem = m.memory_bytes.map(|b| format!("{:>9.1} KiB", b as f64 / 1024.0)).unwrap_or_default();
            match m.entries {
                Some(n) => writeln!(f, "  {name:<16} {n:>9} / {:<9} {mem}", m.max_entries)?,
                None => writeln!(f, "  {name:<16} {:>9} / {:<9} {mem} (ring buffer bytes)", "-", m.max_entries)?,
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
            writeln!(
                f,
                "    outbound: redirected {} {:?} passed {:?}",
                p.outbound.redirected, p.outbound.redirected_by_reason, p.outbound.passed
            )?;
            writeln!(f, "    inbound:  redirected {} passed {:?}", p.inbound.redirected, p.inbound.passed)?;
            writeln!(f, "    being handed over: {} of {}", p.tracking.in_flight, p.tracking.limit)?;
            for problem in &p.problems {
                writeln!(f, "    PROBLEM: {problem}")?;
            }
        }
        Ok(())
    }
}
