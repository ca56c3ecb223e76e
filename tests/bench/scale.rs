//! `cargo xtask bench --scale`: a node with many pods sharing one large MeshConfig.
//!
//! N pod network namespaces (1 000 by default; lightweight: a namespace with lo and a veth
//! pair whose both ends stay inside, an IPv6 address of its own, default routes, no process)
//! are enrolled in one installation with a shared MeshConfig of 10 000 excluded ranges and
//! small lists of their own (annotations: one excluded range, one excluded port). Three of
//! them are full sandboxes (pod + world namespaces, servers, a sidecar stand-in), enrolled
//! among the others with the same MeshConfig.
//!
//! Measured: the installation's map memory as the kernel accounts it (fdinfo `memlock` of
//! every pinned map), the time to enrol the first and the last pods, the time for a
//! MeshConfig change to be in force on every pod (every pod re-enrolled with the changed
//! list), and `status` (library call and command). Checked, before and after the change:
//! real connections of the full sandboxes against the iptables-mode oracle (every flow of
//! the flow matrix), and for a sample of the lightweight pods the decision the maps give
//! (the programs' lookups, made with the kernel's own longest-prefix matches) against the
//! oracle's.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use interceptor::{
    ebpf::{self, EnrollOptions, PinDir, maps::PinnedMaps},
    netns::Netns,
    policy::{
        Flow, Policy, decide,
        sources::{Document, FlagValues, build_policy_from_documents},
    },
};
use interceptor_common::{
    AF_INET, AF_INET6, CidrData, CidrKey, PortKey, Reason, RouteValue, pod_flags, port_flags, route_flags,
};
use interceptor_tests::{
    Sandbox,
    flows::matrix,
    procs::ip,
    sandbox::{APP_UID, next_id},
};
use serde::Serialize;

/// A small deterministic generator (xorshift64*): the same seed gives the same lists.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The goals (issue 14).
pub const GOAL_MEMORY_MIB: f64 = 64.0;
pub const GOAL_ENROLL_MS: f64 = 5.0;
pub const GOAL_CHANGE_S: f64 = 1.0;

pub struct ScaleConfig {
    pub pods: usize,
    pub cidrs: usize,
    pub seed: u64,
    /// Lightweight pods whose map decisions are checked.
    pub sample: usize,
    /// A smoke run (said so in the report).
    pub quick: bool,
}

#[derive(Debug, Serialize)]
pub struct ScaleResults {
    pub kernel: String,
    pub cpus: usize,
    pub quick: bool,
    /// The machine's load average when the run started and ended (1 minute).
    pub load_before: f64,
    pub load_after: f64,
    pub pods: usize,
    pub cidrs: usize,
    /// Kernel memory of every map, loaded with no pod, then with every pod enrolled.
    pub memory_empty_mib: f64,
    pub memory_mib: f64,
    pub memory_after_change_mib: f64,
    pub memory_by_map: BTreeMap<String, f64>,
    /// Entries of the policy maps with every pod enrolled.
    pub entries: BTreeMap<String, u64>,
    /// Wall time of each `enroll` call, in order (ms).
    pub enroll_ms: Vec<f64>,
    pub first_ms: f64,
    pub last_ms: f64,
    /// Median and p99 of the last 10 % of the enrolls: the cost of one more pod at that size.
    pub last_tenth_median_ms: f64,
    pub last_tenth_p99_ms: f64,
    /// From the start of the MeshConfig change until the last pod is switched (ms), with the
    /// policies built beforehand; and the time building the pods' policies took. Each pod
    /// is switched as the node daemon does on a MeshConfig change: `update_policy` (its
    /// lists change, its table and routes are kept).
    pub change_in_force_ms: f64,
    pub change_total_ms: f64,
    pub change_policy_build_ms: f64,
    /// The slowest single switch during the change (ms).
    pub change_max_ms: f64,
    /// Pods the policy-only switch refused (a full enroll was needed): none expected.
    pub change_fallbacks: usize,
    /// Then every pod re-enrolled in full (routes read again) with the changed policy: the
    /// median and total (ms), and the objects written (none: every table and list is stored).
    pub reenroll_median_ms: f64,
    pub reenroll_total_ms: f64,
    pub reenroll_written: usize,
    pub status_ms: f64,
    pub status_cli_ms: f64,
    /// Objects after the change (pod tables + shared lists) and orphans.
    pub objects: usize,
    pub orphaned: usize,
    /// (flows, disagreements) of the real connections, and of the map decisions.
    pub real_flows: usize,
    pub real_failures: Vec<String>,
    pub map_checks: usize,
    pub map_failures: Vec<String>,
    /// The same pods and MeshConfig change through the node daemon.
    pub daemon: super::daemon_scale::DaemonScale,
}

/// The lightweight pods' namespaces, deleted on drop (also on failure).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `ip -n NS -batch -` with the given commands.
fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run ip")?;
    child.stdin.take().expect("piped").write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -n {ns} -batch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Pod `n`'s own IPv6 prefix (its address is ::2 in it) and its own excluded range.
fn pod_prefix(n: usize) -> String {
    format!("2001:db8:{:x}:{:x}", 0xa000 + n / 0x10000, n % 0x10000)
}

fn own_range(n: usize) -> String {
    format!("2001:db8:{:x}:{:x}::/64", 0xb000 + n / 0x10000, n % 0x10000)
}

fn own_port(n: usize) -> u16 {
    7000 + (n % 50) as u16
}

/// A lightweight pod: lo, a veth pair with both ends inside, an IPv6 address with nodad and
/// no link-local addresses (no duplicate address detection: its routes are final at once,
/// as a pod's are once its addresses have settled), default routes.
fn make_pod(name: &str, n: usize) -> Result<()> {
    ip(&["netns", "add", name])?;
    let p = pod_prefix(n);
    ip_batch(
        name,
        &format!(
            "link set lo up\nlink add eth0 type veth peer name eth0p\n\
             link set eth0 addrgenmode none\nlink set eth0p addrgenmode none\nlink set eth0 up\nlink set eth0p up\n\
             addr add {p}::2/64 dev eth0 nodad\nroute add default dev eth0\nroute add default via {p}::1 dev eth0\n"
        ),
    )
}

/// The MeshConfig: `k` random ranges that no flow targets, the matrix's excluded world
/// destinations (or, after the change, another one), its ports and interfaces.
fn mesh_config(k: usize, rng: &mut Rng, changed: bool) -> Document {
    // k distinct networks (a range that truncates to one already listed is drawn again).
    let mut seen = std::collections::HashSet::new();
    let mut cidrs: Vec<String> = Vec::with_capacity(k + 2);
    while cidrs.len() < k {
        let r = rng.next();
        let len = 16 + (r % 17) as u8;
        let base: u32 = if r & (1 << 40) == 0 {
            0x0a00_0000 | ((r >> 8) as u32 & 0x00ff_ffff)
        } else {
            0x6440_0000 | ((r >> 8) as u32 & 0x003f_ffff)
        };
        let net = base & (u32::MAX << (32 - len as u32));
        if seen.insert((net, len)) {
            cidrs.push(format!("{}/{len}", std::net::Ipv4Addr::from(net)));
        }
    }
    if changed {
        cidrs.push("203.0.113.200/32".into());
    } else {
        cidrs.extend(["203.0.113.10/32".into(), "2001:db8:2::20/128".into()]);
    }
    let doc = serde_json::json!({
        "kind": "MeshConfig",
        "spec": {"traffic": {
            "outboundIPRangeExclusionList": cidrs,
            "outboundPortExclusionList": [6379],
            "inboundPortExclusionList": [9090],
            "networkInterfaceExclusionList": ["eth1"],
        }},
    });
    Document { shown: format!("MeshConfig ({k} ranges{})", if changed { ", changed" } else { "" }), doc }
}

/// A pod's annotations: one excluded range and one excluded port of its own.
fn annotation_map(range: &str, port: u16) -> BTreeMap<String, String> {
    [
        ("openservicemesh.io/outbound-ip-range-exclusion-list".to_string(), range.to_string()),
        ("openservicemesh.io/outbound-port-exclusion-list".to_string(), port.to_string()),
    ]
    .into()
}

fn annotations(range: &str, port: u16) -> Document {
    Document::pod_annotations("pod annotations", &annotation_map(range, port))
}

fn policy(mesh: &Document, pod: &Document) -> Result<Policy> {
    Ok(build_policy_from_documents(&FlagValues::default(), Some(mesh), Some(pod))?.0)
}

/// Which pod of the enrollment order is which: lightweight (its number), or a full sandbox.
#[derive(Clone, Copy)]
enum Slot {
    Light(usize),
    Full(usize),
}

struct Node {
    full: Vec<Sandbox>,
    light: Vec<(String, u64)>,
    order: Vec<Slot>,
    pins: PinDir,
}

impl Node {
    fn options(&self, slot: Slot) -> EnrollOptions {
        let (netns, name) = match slot {
            Slot::Light(i) => (Netns::at(format!("/var/run/netns/{}", self.light[i].0)), self.light[i].0.clone()),
            Slot::Full(i) => (Netns::at(self.full[i].pod_netns()), self.full[i].id.clone()),
        };
        EnrollOptions {
            netns,
            pod_ips: vec![],
            pin_dir: self.pins.clone(),
            pod_name: Some(format!("scale/{name}")),
            allow_host_netns: false,
        }
    }

    fn cookie(&self, slot: Slot) -> Result<u64> {
        Ok(match slot {
            Slot::Light(i) => self.light[i].1,
            Slot::Full(i) => Netns::at(self.full[i].pod_netns()).cookie()?,
        })
    }

    /// The pod's annotations (the full sandboxes' own: an excluded range of the world and a
    /// port the world listens on).
    fn own(&self, slot: Slot) -> Document {
        match slot {
            Slot::Light(i) => annotations(&own_range(i), own_port(i)),
            Slot::Full(0) => annotations("203.0.113.20/32", 7070),
            Slot::Full(i) => annotations(&format!("2001:db8:2::{i:x}/128"), 443),
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() { f64::NAN } else { s[((s.len() - 1) as f64 * q).round() as usize] }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn memory(pins: &PinDir) -> (f64, BTreeMap<String, f64>) {
    let usage = ebpf::status::map_usage(pins);
    let by_map: BTreeMap<String, f64> =
        usage.iter().map(|(n, m)| (n.clone(), m.memory_bytes.unwrap_or(0) as f64 / 1048576.0)).collect();
    (by_map.values().sum(), by_map)
}

pub fn run(cfg: &ScaleConfig) -> Result<ScaleResults> {
    let load_before = load_average();
    let mut rng = Rng(cfg.seed.max(1));
    eprintln!("scale: {} pods, a MeshConfig of {} ranges", cfg.pods, cfg.cidrs);
    let full: Vec<Sandbox> = vec![Sandbox::with_host(2)?, Sandbox::with_host(3)?, Sandbox::with_host(4)?];
    full[0].load_ebpf()?;
    for sb in &full[1..] {
        sb.share_cgroup_of(&full[0]);
    }
    for sb in &full {
        sb.start_servers()?;
    }
    let pins = full[0].pins.clone();
    let (memory_empty_mib, _) = memory(&pins);

    let n_light = cfg.pods.saturating_sub(full.len()).max(1);
    let mut namespaces = Namespaces(Vec::new());
    let t = Instant::now();
    let mut light = Vec::with_capacity(n_light);
    for n in 0..n_light {
        let name = format!("{}n", next_id());
        namespaces.0.push(name.clone());
        make_pod(&name, n)?;
        let cookie = Netns::at(format!("/var/run/netns/{name}")).cookie()?;
        light.push((name, cookie));
    }
    eprintln!("scale: {n_light} namespaces created in {:.1?}", t.elapsed());
    // The full sandboxes are enrolled among the others (neither first nor last, whose
    // times are reported: their own processes make enroll look for listeners and cgroups).
    let mut order: Vec<Slot> = (0..n_light).map(Slot::Light).collect();
    for (i, at) in [cfg.pods / 10, cfg.pods / 2, cfg.pods * 9 / 10].into_iter().enumerate() {
        order.insert(at.clamp(1, order.len() - 1), Slot::Full(i));
    }
    let node = Node { full, light, order, pins: pins.clone() };

    let mesh = mesh_config(cfg.cidrs, &mut rng, false);
    let mut enroll_ms = Vec::with_capacity(node.order.len());
    let t = Instant::now();
    for (i, slot) in node.order.iter().enumerate() {
        let p = policy(&mesh, &node.own(*slot))?;
        let opts = node.options(*slot);
        let started = Instant::now();
        ebpf::enroll(&p, &opts).with_context(|| format!("enrolling pod {i}"))?;
        enroll_ms.push(millis(started.elapsed()));
        if (i + 1) % 100 == 0 {
            eprintln!("scale: {} pods enrolled ({:.1?}); last enroll {:.2} ms", i + 1, t.elapsed(), enroll_ms[i]);
        }
    }
    let (memory_mib, memory_by_map) = memory(&pins);
    let status = ebpf::status(&pins)?;
    let entries: BTreeMap<String, u64> =
        status.maps.iter().filter_map(|(n, m)| m.entries.map(|e| (n.clone(), e))).collect();
    if status.pods.len() != node.order.len() {
        bail!("{} pods enrolled, {} in status", node.order.len(), status.pods.len());
    }

    let (mut real_flows, mut real_failures, mut map_checks, mut map_failures) = (0, vec![], 0, vec![]);
    check(&node, &mesh, cfg, &mut real_flows, &mut real_failures, &mut map_checks, &mut map_failures)?;

    // The MeshConfig changes: every pod re-enrolled with the changed list. The policies are
    // built first (parsing the MeshConfig for each pod is the caller's work, timed apart).
    let changed = mesh_config(cfg.cidrs, &mut rng, true);
    eprintln!("scale: MeshConfig change");
    let t = Instant::now();
    let policies: Vec<Policy> = node.order.iter().map(|s| policy(&changed, &node.own(*s))).collect::<Result<_>>()?;
    let change_policy_build_ms = millis(t.elapsed());
    let cookies: Vec<u64> = node.order.iter().map(|s| node.cookie(*s)).collect::<Result<_>>()?;
    let t = Instant::now();
    let mut in_force = Duration::ZERO;
    let mut change_max_ms: f64 = 0.0;
    let mut change_fallbacks = 0;
    for ((slot, p), cookie) in node.order.iter().zip(&policies).zip(&cookies) {
        let started = Instant::now();
        let r = match ebpf::enroll::update_policy(&pins, *cookie, p)? {
            Some(r) => r,
            None => {
                change_fallbacks += 1;
                ebpf::enroll(p, &node.options(*slot))?
            }
        };
        // This pod is on the new policy from here (the rest deletes what no pod refers to
        // any more).
        in_force = started.duration_since(t) + r.in_force;
        change_max_ms = change_max_ms.max(millis(started.elapsed()));
    }
    let change_total_ms = millis(t.elapsed());
    let change_in_force_ms = millis(in_force);
    eprintln!("scale: change in force on every pod after {change_in_force_ms:.0} ms; full re-enroll of every pod");
    let mut reenroll = Vec::with_capacity(policies.len());
    let mut reenroll_written = 0;
    let t = Instant::now();
    for (slot, p) in node.order.iter().zip(&policies) {
        let started = Instant::now();
        reenroll_written += ebpf::enroll(p, &node.options(*slot))?.written.len();
        reenroll.push(millis(started.elapsed()));
    }
    let reenroll_total_ms = millis(t.elapsed());
    drop(policies);
    let (memory_after_change_mib, _) = memory(&pins);
    check(&node, &changed, cfg, &mut real_flows, &mut real_failures, &mut map_checks, &mut map_failures)?;

    let t = Instant::now();
    let status = ebpf::status(&pins)?;
    let status_ms = millis(t.elapsed());
    let t = Instant::now();
    let out = std::process::Command::new(interceptor_tests::procs::sibling_binary("interceptor"))
        .args(["ebpf", "status", "--json", "--pin-dir", pins.path().to_str().expect("utf-8 path")])
        .output()?;
    let status_cli_ms = millis(t.elapsed());
    if !out.status.success() {
        bail!("interceptor ebpf status failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    let results = ScaleResults {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        quick: cfg.quick,
        load_before,
        load_after: load_average(),
        pods: node.order.len(),
        cidrs: cfg.cidrs,
        memory_empty_mib,
        memory_mib,
        memory_after_change_mib,
        memory_by_map,
        entries,
        first_ms: enroll_ms[0],
        last_ms: *enroll_ms.last().expect("pods"),
        last_tenth_median_ms: quantile(&enroll_ms[enroll_ms.len() * 9 / 10..], 0.5),
        last_tenth_p99_ms: quantile(&enroll_ms[enroll_ms.len() * 9 / 10..], 0.99),
        enroll_ms,
        change_in_force_ms,
        change_total_ms,
        change_policy_build_ms,
        change_max_ms,
        change_fallbacks,
        reenroll_median_ms: quantile(&reenroll, 0.5),
        reenroll_total_ms,
        reenroll_written,
        status_ms,
        status_cli_ms,
        objects: status.generations,
        orphaned: status.orphaned_generations,
        real_flows,
        real_failures,
        map_checks,
        map_failures,
        daemon: super::daemon_scale::DaemonScale::default(),
    };
    // Unenrolled with the installation (the full sandboxes' drop unloads it); the
    // lightweight pods are then added to the node daemon, with the same MeshConfigs; the
    // namespaces go last (Namespaces' drop).
    let light_pods: Vec<(String, BTreeMap<String, String>)> = node
        .light
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), annotation_map(&own_range(i), own_port(i))))
        .collect();
    drop(node);
    eprintln!("scale: the node daemon, {} pods", light_pods.len());
    let daemon = super::daemon_scale::run(
        &light_pods,
        &serde_json::to_string(&mesh.doc)?,
        &serde_json::to_string(&changed.doc)?,
        cfg.sample,
    )?;
    drop(namespaces);
    Ok(ScaleResults { daemon, ..results })
}

/// Real connections of the full sandboxes, and the maps' decisions for a sample of the
/// lightweight pods, against the oracle.
fn check(
    node: &Node,
    mesh: &Document,
    cfg: &ScaleConfig,
    real_flows: &mut usize,
    real_failures: &mut Vec<String>,
    map_checks: &mut usize,
    map_failures: &mut Vec<String>,
) -> Result<()> {
    for (i, sb) in node.full.iter().enumerate() {
        let p = policy(mesh, &node.own(Slot::Full(i)))?;
        for c in matrix_for(sb) {
            *real_flows += 1;
            if let Err(e) = sb.check_flow(&p, &c) {
                real_failures.push(format!("{}: {e:#}", sb.id));
            }
        }
    }
    let maps = PinnedMaps::open(&node.pins)?;
    let step = (node.light.len() / cfg.sample.max(1)).max(1);
    for n in (0..node.light.len()).step_by(step) {
        let p = policy(mesh, &node.own(Slot::Light(n)))?;
        let other = (n + 1) % node.light.len();
        let dsts = [
            "10.0.0.1:80".to_string(),
            "203.0.113.10:80".into(),
            "203.0.113.200:80".into(),
            "[2001:db8:2::20]:80".into(),
            format!("[{}5]:80", own_range(n).trim_end_matches("/64")),
            format!("[{}5]:80", own_range(other).trim_end_matches("/64")),
            "198.51.100.1:6379".into(),
            format!("198.51.100.1:{}", own_port(n)),
            format!("198.51.100.1:{}", own_port(n) + 50),
            "198.51.100.1:80".into(),
            "[2001:db8:3::1]:443".into(),
        ];
        for dst in dsts {
            let dst: SocketAddr = dst.parse().with_context(|| dst.clone())?;
            let want = decide(&p, &Flow::outbound(dst, APP_UID).via("eth0")).reason;
            let got = map_decision(&maps, node.light[n].1, dst, APP_UID)?;
            *map_checks += 1;
            if want != got {
                map_failures
                    .push(format!("pod {n} ({}) → {dst}: maps decide {got:?}, oracle {want:?}", node.light[n].0));
            }
        }
    }
    Ok(())
}

/// The flow matrix (written for the pod of host number 2) with this sandbox's addresses.
fn matrix_for(sb: &Sandbox) -> Vec<interceptor_tests::FlowCase> {
    let swaps = [
        ("198.51.100.2:".to_string(), format!("{}:", sb.pod_ip())),
        ("198.51.100.130:".to_string(), format!("198.51.100.{}:", 128 + sb.host as u16)),
        ("[2001:db8:1::2]".to_string(), format!("[{}]", sb.pod_ip6())),
    ];
    matrix()
        .into_iter()
        .map(|mut c| {
            let mut dst = c.dst.to_string();
            for (from, to) in &swaps {
                if dst.starts_with(from.as_str()) {
                    dst = dst.replacen(from.as_str(), to, 1);
                }
            }
            c.dst = dst.parse().expect("an address");
            c
        })
        .collect()
}

/// The outbound decision the maps hold for a TCP connect() of `uid` in the pod (`decide.rs`'s
/// lookups in its order, each made by the kernel: `BPF_MAP_LOOKUP_ELEM` on a trie is a
/// longest-prefix match). None: the pod is not enrolled, or there is no route. (PodIP mode
/// is not used here.)
fn map_decision(maps: &PinnedMaps, cookie: u64, dst: SocketAddr, uid: u32) -> Result<Option<Reason>> {
    let Ok(pod) = maps.pods.get(&cookie, 0) else { return Ok(None) };
    let (family, bits, addr) = match dst {
        SocketAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.ip().octets());
            (AF_INET, 32, b)
        }
        SocketAddr::V6(a) => (AF_INET6, 128, a.ip().octets()),
    };
    let key = |id: u32| {
        aya::maps::lpm_trie::Key::new(
            CidrKey::HEADER_BITS + bits,
            CidrData { policy_id_be: id.to_be_bytes(), family_be: (family as u32).to_be_bytes(), addr },
        )
    };
    let route: RouteValue = match maps.routes.get(&key(pod.policy_id), 0) {
        Ok(r) if r.flags & route_flags::UNREACHABLE == 0 => r,
        _ => return Ok(None),
    };
    let local = route.flags & route_flags::LOCAL != 0;
    let loopback = dst.ip().is_loopback();
    let proxy = uid == pod.proxy_uid;
    let reason = if local && !loopback && proxy {
        Reason::OutProxyToLocal
    } else if local && !proxy {
        Reason::OutLocalNotProxy
    } else if proxy {
        Reason::OutProxyUid
    } else if loopback {
        Reason::OutLoopback
    } else if route.flags & route_flags::EXCLUDED_INTERFACE != 0 {
        Reason::OutExcludedInterface
    } else if route.flags & route_flags::POD_EXCLUDED != 0
        || (pod.excluded_list != 0 && maps.excluded.get(&key(pod.excluded_list), 0).is_ok())
    {
        Reason::OutExcludedCidr
    } else if pod.ports_list != 0
        && maps
            .ports
            .get(&PortKey { policy_id: pod.ports_list, port: dst.port(), _pad: 0 }, 0)
            .is_ok_and(|f| f & port_flags::OUTBOUND_EXCLUDED != 0)
    {
        Reason::OutExcludedPort
    } else {
        let inclusions = if family == AF_INET { pod_flags::HAS_INCLUSIONS_V4 } else { pod_flags::HAS_INCLUSIONS_V6 };
        if pod.flags & inclusions == 0 {
            Reason::OutDefault
        } else if route.flags & route_flags::POD_INCLUDED != 0
            || (pod.included_list != 0 && maps.included.get(&key(pod.included_list), 0).is_ok())
        {
            Reason::OutIncluded
        } else {
            Reason::OutNotIncluded
        }
    };
    Ok(Some(reason))
}

/// The markdown table; each goal met only when the measured number meets it.
pub fn markdown(r: &ScaleResults) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let met = |ok: bool| if ok { "**met**" } else { "**NOT met**" };
    let _ = writeln!(
        s,
        "## interceptor scale benchmark — kernel {}, {} CPUs, load average {:.2} → {:.2}{}\n",
        r.kernel,
        r.cpus,
        r.load_before,
        r.load_after,
        if r.quick { ", QUICK (smoke run, not for conclusions)" } else { "" }
    );
    let _ = writeln!(
        s,
        "{} pods (3 of them full sandboxes with real traffic) enrolled in one installation, sharing a MeshConfig of {} excluded ranges; each pod adds one range and one port of its own.\n",
        r.pods, r.cidrs
    );
    let _ = writeln!(s, "| measure | value | goal | |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    let _ = writeln!(s, "| map memory, loaded, no pod | {:.1} MiB | | |", r.memory_empty_mib);
    let _ = writeln!(
        s,
        "| map memory, {} pods | {:.1} MiB | ≤ {GOAL_MEMORY_MIB} MiB | {} |",
        r.pods,
        r.memory_mib,
        met(r.memory_mib <= GOAL_MEMORY_MIB)
    );
    let _ = writeln!(s, "| map memory after the MeshConfig change | {:.1} MiB | | |", r.memory_after_change_mib);
    let _ = writeln!(s, "| enroll of the 1st pod | {:.2} ms | | |", r.first_ms);
    let _ = writeln!(s, "| enroll of pod {} (the last) | {:.2} ms | | |", r.pods, r.last_ms);
    let _ = writeln!(
        s,
        "| enroll, last 10 % of the pods: median (p99) | {:.2} ms ({:.2} ms) | ≤ {GOAL_ENROLL_MS} ms per pod | {} |",
        r.last_tenth_median_ms,
        r.last_tenth_p99_ms,
        met(r.last_tenth_median_ms <= GOAL_ENROLL_MS)
    );
    let _ = writeln!(
        s,
        "| MeshConfig change in force on all {} pods (policy-only switch, as the daemon does) | {:.0} ms | ≤ {:.0} ms | {} |",
        r.pods,
        r.change_in_force_ms,
        GOAL_CHANGE_S * 1e3,
        met(r.change_in_force_ms <= GOAL_CHANGE_S * 1e3 && r.change_fallbacks == 0)
    );
    let _ = writeln!(
        s,
        "| … every switch done (old list deleted) / slowest switch / full enrolls needed | {:.0} ms / {:.2} ms / {} | | |",
        r.change_total_ms, r.change_max_ms, r.change_fallbacks
    );
    let _ = writeln!(
        s,
        "| full re-enroll of every pod (routes read again): median / total / objects written | {:.2} ms / {:.0} ms / {} | | |",
        r.reenroll_median_ms, r.reenroll_total_ms, r.reenroll_written
    );
    let _ = writeln!(
        s,
        "| … building the {} policies beforehand (not counted) | {:.0} ms | | |",
        r.pods, r.change_policy_build_ms
    );
    let _ = writeln!(
        s,
        "| `status` (library) / `ebpf status --json` (command) | {:.0} ms / {:.0} ms | | |",
        r.status_ms, r.status_cli_ms
    );
    let _ = writeln!(s, "| policy objects after the change (orphaned) | {} ({}) | | |", r.objects, r.orphaned);
    let correct = r.real_failures.is_empty() && r.map_failures.is_empty();
    let _ = writeln!(
        s,
        "| decisions checked: real connections / map decisions of sampled pods (disagreements) | {} / {} ({}) | 0 disagreements | {} |",
        r.real_flows,
        r.map_checks,
        r.real_failures.len() + r.map_failures.len(),
        met(correct)
    );
    let _ = writeln!(s, "\nMap memory by map (MiB, {} pods): {}", r.pods, {
        let v: Vec<String> =
            r.memory_by_map.iter().filter(|(_, m)| **m >= 0.05).map(|(n, m)| format!("{n} {m:.1}")).collect();
        v.join(", ")
    });
    let _ = writeln!(s, "\nEntries ({} pods): {}", r.pods, {
        let v: Vec<String> = r.entries.iter().filter(|(_, e)| **e > 0).map(|(n, e)| format!("{n} {e}")).collect();
        v.join(", ")
    });
    let d = &r.daemon;
    let _ = writeln!(
        s,
        "\nThrough the node daemon (`interceptor daemon`, the same {} lightweight pods added through its API, the MeshConfig file then edited):\n",
        d.pods
    );
    let _ = writeln!(s, "| measure | value | goal | |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    let _ = writeln!(
        s,
        "| pod added (API answer): 1st / median / last | {:.1} ms / {:.1} ms / {:.1} ms | | |",
        d.add_first_ms, d.add_median_ms, d.add_last_ms
    );
    let _ = writeln!(
        s,
        "| MeshConfig file written → re-applied to all {} pods | {:.0} ms | ≤ {:.0} ms | {} |",
        d.pods,
        d.change_in_force_ms,
        GOAL_CHANGE_S * 1e3,
        met(d.change_in_force_ms <= GOAL_CHANGE_S * 1e3)
    );
    let _ = writeln!(
        s,
        "| daemon memory (RSS) with {} pods / after the change / state file | {:.0} MiB / {:.0} MiB / {:.0} KiB | | |",
        d.pods, d.rss_mib, d.rss_after_change_mib, d.state_file_kib
    );
    let _ = writeln!(
        s,
        "| pods whose check (kernel lists against the policy) passed after the change | {} of {} | all | {} |",
        d.checked - d.check_failures.len(),
        d.checked,
        met(d.check_failures.is_empty())
    );
    for f in r.real_failures.iter().chain(&r.map_failures).chain(&d.check_failures).take(20) {
        let _ = writeln!(s, "\nDISAGREEMENT: {f}");
    }
    s
}
