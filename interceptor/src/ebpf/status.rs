//! `ebpf status`: what is loaded, and each enrolled pod's policy and counters, read back
//! from the kernel (the maps are the truth, not a file beside them).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use std::os::fd::AsFd;

use anyhow::Result;
use aya::programs::ProgramInfo;
use interceptor_common::{AF_INET, CidrData, PodConfig, Reason, map_names, pod_flags, port_flags};
use serde::Serialize;

use super::{
    PinDir, gc,
    loader::pinned_pods,
    lock::{InstallLock, Mode},
    maps::{PinnedMaps, c_str},
    marker::require_installation,
    object::{ACCEL_PROGRAM, CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM, program_names},
    raw,
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
    /// Policy generations present in the maps (referenced by a pod or not).
    pub generations: usize,
    /// Generations no pod references (left by interrupted commands; `ebpf gc` deletes them).
    pub orphaned_generations: usize,
    /// Enrolled pods whose network namespace is gone (`ebpf gc` unenrolls them).
    pub dead_pods: usize,
    /// Every pinned map: entries in use and capacity.
    pub maps: BTreeMap<String, MapUsage>,
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

#[derive(Debug, Serialize)]
pub struct PodStatus {
    pub netns_cookie: u64,
    pub netns: String,
    pub pod: String,
    pub enrolled_at: u64,
    pub policy_id: u32,
    pub proxy_uid: u32,
    pub local_proxy_mode: String,
    /// osm-edge's local DNS proxy rule (UDP 127.0.0.153:53 → :5300) is applied.
    pub local_dns_proxy: bool,
    pub pod_ips: Vec<IpAddr>,
    /// The addresses inbound steering finds the pod by.
    pub addresses: Vec<String>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub outbound_ip_range_exclusions: Vec<String>,
    pub outbound_ip_range_inclusions: Vec<String>,
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

/// Entries and capacity of every pinned map.
pub fn map_usage(pins: &PinDir) -> BTreeMap<String, MapUsage> {
    let mut out = BTreeMap::new();
    for name in map_names::ALL.iter().chain(&[map_names::POD_INFO, map_names::GENERATIONS]) {
        let Ok(fd) = raw::obj_get(&pins.map(name)) else { continue };
        let Ok(info) = raw::map_info(fd.as_fd()) else { continue };
        let entries = if info.map_type == raw::BPF_MAP_TYPE_RINGBUF {
            None
        } else {
            raw::count_entries(fd.as_fd(), info.key_size).ok()
        };
        let kind = map_kind(info.map_type);
        out.insert(name.to_string(), MapUsage { entries, max_entries: info.max_entries, kind });
    }
    out
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
        generations: 0,
        orphaned_generations: 0,
        dead_pods: 0,
        maps: BTreeMap::new(),
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
    let links = pinned_pods(pins)?.len();
    programs.push(ProgramStatus {
        name: SK_LOOKUP_PROGRAM.into(),
        id,
        attached: format!("{links} pod network namespace(s)"),
    });
    let accelerate = super::loader::acceleration(pins);
    let id = ProgramInfo::from_pin(pins.prog(ACCEL_PROGRAM)).map(|i| i.id()).unwrap_or(0);
    programs.push(ProgramStatus {
        name: ACCEL_PROGRAM.into(),
        id,
        attached: format!("map ACCEL_SOCKETS (acceleration {})", if accelerate { "on" } else { "off" }),
    });

    let steering = pinned_pods(pins)?;
    let mut counters: BTreeMap<u64, (Counters, Counters)> = BTreeMap::new();
    for item in maps.counters.iter().filter_map(Result::ok) {
        let (key, values) = item;
        let total: u64 = values.iter().sum();
        let Some(reason) = Reason::from_u32(key.reason) else { continue };
        let entry = counters.entry(key.netns_cookie).or_default();
        let c = if reason.is_inbound() { &mut entry.1 } else { &mut entry.0 };
        let redirected = reason.is_redirect();
        if redirected {
            c.redirected += total;
            *c.redirected_by_reason.entry(reason.name().into()).or_default() += total;
        } else {
            *c.passed.entry(reason.name().into()).or_default() += total;
        }
        if Action::of(reason) == Some(Action::Refuse) {
            *c.refused.entry(reason.name().into()).or_default() += total;
        }
    }
    let outside = processes_outside(&maps, marker.cgroup_id);

    let mut pods = Vec::new();
    let entries: Vec<(u64, PodConfig)> = maps.pods.iter().filter_map(Result::ok).collect();
    for (cookie, cfg) in entries {
        let id = cfg.policy_id.to_be_bytes();
        let list = |trie: &aya::maps::LpmTrie<aya::maps::MapData, CidrData, u8>| -> Vec<String> {
            trie.keys()
                .filter_map(Result::ok)
                .filter(|k| k.data().policy_id_be == id)
                .map(|k| cidr_text(k.prefix_len(), &k.data()))
                .collect()
        };
        let mut out_ports = Vec::new();
        let mut in_ports = Vec::new();
        for (k, f) in maps.ports.iter().filter_map(Result::ok).filter(|(k, _)| k.policy_id == cfg.policy_id) {
            if f & port_flags::OUTBOUND_EXCLUDED != 0 {
                out_ports.push(k.port);
            }
            if f & port_flags::INBOUND_EXCLUDED != 0 {
                in_ports.push(k.port);
            }
        }
        out_ports.sort_unstable();
        in_ports.sort_unstable();
        let mut ifaces: Vec<u32> = maps
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.policy_id == cfg.policy_id)
            .map(|k| k.ifindex)
            .collect();
        ifaces.sort_unstable();
        let info = maps.pod_info.get(&cookie, 0).ok();
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
        let tracking = Tracking {
            in_flight: maps.pod_tracking.get(&cookie, 0).map(|t| t.in_flight).unwrap_or(0),
            limit: settings.max_in_flight_pod,
        };
        let mut addresses: Vec<String> = maps
            .pod_addrs
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| *c == cookie)
            .map(|(k, _)| addr_text(&k))
            .collect();
        addresses.sort();
        pods.push(PodStatus {
            netns_cookie: cookie,
            netns: info.map(|i| c_str(&i.netns_path)).unwrap_or_default(),
            pod: info.map(|i| c_str(&i.pod_name)).unwrap_or_default(),
            enrolled_at: info.map(|i| i.enrolled_at).unwrap_or(0),
            policy_id: cfg.policy_id,
            proxy_uid: cfg.proxy_uid,
            local_proxy_mode: if cfg.flags & pod_flags::POD_IP_MODE != 0 { "PodIP" } else { "Localhost" }.into(),
            local_dns_proxy: cfg.flags & pod_flags::LOCAL_DNS_PROXY != 0,
            pod_ips,
            addresses,
            outbound_port: cfg.outbound_port,
            inbound_port: cfg.inbound_port,
            outbound_ip_range_exclusions: list(&maps.excluded),
            outbound_ip_range_inclusions: list(&maps.included),
            outbound_port_exclusions: out_ports,
            inbound_port_exclusions: in_ports,
            interface_exclusion_ifindexes: ifaces,
            inbound_steering: steering.contains(&cookie),
            tracking,
            netns_gone,
            outbound,
            inbound,
            untracked,
            processes_outside_cgroup,
            problems,
        });
    }
    pods.sort_by_key(|p| p.netns_cookie);
    let referenced: std::collections::BTreeSet<u32> = pods.iter().map(|p| p.policy_id).collect();
    let present = gc::present_generations(&maps);
    let next_pins = program_names().any(|n| pins.prog_next(n).exists());
    let mut status = Status {
        pin_dir: pins.path().display().to_string(),
        loaded: true,
        debug: settings.debug != 0,
        accelerate,
        layout_version: settings.layout_version,
        fingerprint: format!("{:016x}", settings.fingerprint),
        cgroup: marker.cgroup_path(),
        upgrade_interrupted: settings.fingerprint == 0 || next_pins,
        generations: present.union(&referenced).count(),
        orphaned_generations: present.difference(&referenced).count(),
        dead_pods: pods.iter().filter(|p| p.netns_gone).count(),
        maps: map_usage(pins),
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
        writeln!(
            f,
            "policy generations: {} ({} orphaned); pods whose namespace is gone: {}{}",
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
        writeln!(f, "maps:")?;
        for (name, m) in &self.maps {
            match m.entries {
                Some(n) => match m.fill() {
                    Some(fill) => writeln!(f, "  {name:<16} {n:>9} / {} ({:.1} %)", m.max_entries, 100.0 * fill)?,
                    None => writeln!(f, "  {name:<16} {n:>9} / {} ({})", m.max_entries, m.kind)?,
                },
                None if m.kind == "ringbuf" => writeln!(f, "  {name:<16} {:>9} / {} bytes", "-", m.max_entries)?,
                None => writeln!(f, "  {name:<16} {:>9} ({}: one entry per socket)", "-", m.kind)?,
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
                "    policy {} uid {} mode {} listeners {}/{} inbound steering {} dns proxy {}",
                p.policy_id,
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
            writeln!(
                f,
                "    exclude {} include {} out-ports {} in-ports {} ifindexes {:?}",
                show(&p.outbound_ip_range_exclusions),
                show(&p.outbound_ip_range_inclusions),
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
