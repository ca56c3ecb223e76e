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
        out.insert(name.to_string(), MapUsage { entries, max_entries: info.max_entries });
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
    }

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
        let problems = problems(&outbound, &inbound);
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
            netns_gone: gc::netns_gone(pins, cookie),
            outbound,
            inbound,
            problems,
        });
    }
    pods.sort_by_key(|p| p.netns_cookie);
    let referenced: std::collections::BTreeSet<u32> = pods.iter().map(|p| p.policy_id).collect();
    let present = gc::present_generations(&maps);
    let next_pins = program_names().any(|n| pins.prog_next(n).exists());
    Ok(Status {
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
        pods,
    })
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
        writeln!(f, "maps:")?;
        for (name, m) in &self.maps {
            match m.entries {
                Some(n) => writeln!(f, "  {name:<16} {n:>9} / {}", m.max_entries)?,
                None => writeln!(f, "  {name:<16} {:>9} / {} bytes", "-", m.max_entries)?,
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
