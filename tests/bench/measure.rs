//! Runs the workloads in the sandboxes (none, iptables, eBPF, empty programs; eBPF
//! --accelerate for its phase) and collects the numbers.
use std::{
    os::fd::{AsFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use interceptor::{
    ebpf::object::{CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM},
    iptables::{self, ApplyOptions},
    netns::Netns,
    policy::{ChainNames, Cidr, Family, Policy},
};
use interceptor_tests::{
    Sandbox,
    procs::{Held, netprobe},
    sandbox::{APP_UID, PROXY_UID},
};
use serde::Serialize;

use crate::Config;

/// The excluded world destination (pass) and the redirected one.
pub const PASS_DST: &str = "203.0.113.10:80";
pub const REDIRECT_DST: &str = "203.0.113.20:80";
pub const LISTENER: &str = "127.0.0.1:15001";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    None,
    Iptables,
    Ebpf,
    /// eBPF mode loaded with `--accelerate` (the acceleration phase only).
    #[serde(rename = "ebpf-accelerated")]
    EbpfAccelerated,
    /// No interception, but a program that only returns "carry on" at every hook a
    /// redirected connection passes (connect4, sock_ops, getpeername4, getsockopt and the
    /// namespace's sk_lookup): what the kernel charges for running programs there at all.
    #[serde(rename = "empty-programs")]
    EmptyPrograms,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::None, Mode::Iptables, Mode::Ebpf];
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Iptables => "iptables",
            Mode::Ebpf => "ebpf",
            Mode::EbpfAccelerated => "ebpf --accelerate",
            Mode::EmptyPrograms => "empty programs",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// a: to an excluded world destination.
    Pass,
    /// b: to a redirected destination (in "none": the world destination itself).
    Redirect,
    /// b's baseline: "none" dialling the 15001 listener directly.
    Listener,
    /// One redirected connection, 1-byte request/responses on it (acceleration phase).
    PingPong,
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub k: usize,
    pub mode: Mode,
    pub workload: Workload,
    pub samples: usize,
    pub errors: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// The batch median of each round (µs), for ratios paired by round.
    pub round_medians_us: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct ApplyRow {
    pub k: usize,
    pub mode: Mode,
    /// First application of the policy (wall time of the whole command).
    pub apply_ms: f64,
    /// Replacing it by another policy of the same size, live.
    pub change_ms: f64,
    /// eBPF: from the call until the new policy is in force (the rest of the call removes
    /// the previous generation, after an RCU grace period).
    pub in_force_ms: Option<f64>,
    /// A redirected connection held open across the change still works.
    pub held_connection_survived: bool,
}

#[derive(Debug, Serialize)]
pub struct BulkRow {
    pub mode: Mode,
    pub bytes: u64,
    pub mb_per_s: Vec<f64>,
    pub median_mb_per_s: f64,
}

/// One program's cost on one workload (kernel BPF run-time statistics).
#[derive(Debug, Serialize)]
pub struct ProgStat {
    pub workload: Workload,
    pub program: String,
    pub runs: u64,
    /// Program runs per connection of the workload.
    pub runs_per_conn: f64,
    pub avg_ns: f64,
    /// Run time of this program per connection (runs per connection × average).
    pub ns_per_conn: f64,
}

/// Connections per second under load: `threads` clients at once, both cores busy.
#[derive(Debug, Serialize)]
pub struct CpsRow {
    pub mode: Mode,
    pub threads: usize,
    /// Connections per second of each round (paired with the other modes' by index).
    pub rounds_cps: Vec<f64>,
    /// CPU time of the pod's processes (client and sink, with the kernel work done in their
    /// context: cgroup cpu.stat usage) per connection, µs, per round.
    pub rounds_cpu_us_per_conn: Vec<f64>,
    pub conns: usize,
    pub errors: usize,
    pub median_cps: f64,
    pub median_cpu_us_per_conn: f64,
    /// Latency of a connection under that load (connect … close), µs.
    pub median_us: f64,
    pub p99_us: f64,
}

/// Socket-level acceleration against the same eBPF mode without it, in the same run.
#[derive(Debug, Serialize)]
pub struct AccelResults {
    /// Connect + 1-byte request/response + close: [eBPF, eBPF --accelerate].
    pub rr: Vec<LatencyRow>,
    /// 1-byte request/responses on one connection: [eBPF, eBPF --accelerate].
    pub pingpong: Vec<LatencyRow>,
    /// Bulk app → 15001 listener: [eBPF, eBPF --accelerate].
    pub bulk: Vec<BulkRow>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub kernel: String,
    pub cpus: usize,
    pub quick: bool,
    pub rounds: usize,
    pub batch: usize,
    pub latency: Vec<LatencyRow>,
    pub apply: Vec<ApplyRow>,
    pub bulk: Vec<BulkRow>,
    pub bpf_stats: Vec<ProgStat>,
    pub cps: Vec<CpsRow>,
    pub accel: Option<AccelResults>,
    /// The policy size (K) in force during the bulk, statistics and CPS phases.
    pub later_phases_k: usize,
}

/// A small deterministic generator (xorshift64*): the same seed gives the same policies.
pub struct Rng(u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// K random ranges inside 10.0.0.0/8 and 100.64.0.0/10 (never a target), then the
/// excluded target's /32 last: the rule every pass flow needs is the last one.
pub fn policy_with(k: usize, rng: &mut Rng) -> Policy {
    let mut cidrs = Vec::with_capacity(k + 1);
    for _ in 0..k {
        let r = rng.next();
        let len = 16 + (r % 17) as u8;
        let base: u32 = if r & (1 << 40) == 0 {
            0x0a00_0000 | ((r >> 8) as u32 & 0x00ff_ffff)
        } else {
            0x6440_0000 | ((r >> 8) as u32 & 0x003f_ffff)
        };
        let ip = std::net::Ipv4Addr::from(base);
        let text = format!("{ip}/{len}");
        cidrs.push(Cidr { net: text.parse().unwrap(), text: text.into() });
    }
    cidrs.push(Cidr { text: "203.0.113.10/32".into(), net: "203.0.113.10/32".parse().unwrap() });
    Policy { outbound_ip_range_exclusions: cidrs, ..Policy::default() }
}

struct Pods {
    /// The empty programs' links (dropped, so detached, before their sandbox goes).
    _empty_links: Vec<OwnedFd>,
    empty: Sandbox,
    none: Sandbox,
    ipt: Sandbox,
    ebpf: Sandbox,
    /// eBPF mode with `--accelerate`, for the acceleration phase.
    accel: Option<Sandbox>,
}

impl Pods {
    fn get(&self, m: Mode) -> &Sandbox {
        match m {
            Mode::None => &self.none,
            Mode::Iptables => &self.ipt,
            Mode::Ebpf => &self.ebpf,
            Mode::EbpfAccelerated => self.accel.as_ref().expect("the acceleration sandbox"),
            Mode::EmptyPrograms => &self.empty,
        }
    }
}

fn ipt_options(sb: &Sandbox) -> ApplyOptions {
    ApplyOptions {
        netns: Netns::at(sb.pod_netns()),
        pod_ips: vec![],
        families: vec![Family::Ipv4],
        families_explicit: true,
        names: ChainNames::DOCUMENTED,
    }
}

/// The pod's 15001 listener (a sidecar stand-in without proxy logic: it asks
/// SO_ORIGINAL_DST of every connection, as a sidecar does) and the world's server.
fn start(sb: &Sandbox) -> Result<()> {
    let workers = CPS_WORKERS.to_string();
    sb.start(&sb.in_pod(PROXY_UID), &["sink", "--listen", "0.0.0.0:15001", "--workers", &workers, "--orig-dst"])?;
    sb.start(&sb.in_world(), &["sink", "--listen", "0.0.0.0:80"])?;
    Ok(())
}

/// Attaches a program that only returns "carry on" (1) at each hook the eBPF mode's
/// programs run at for a redirected connection, in the sandbox's pod (cgroup and network
/// namespace). The links are the attachments: dropping them detaches the programs.
fn attach_empty_programs(sb: &Sandbox) -> Result<Vec<OwnedFd>> {
    use interceptor::ebpf::raw::{self, attach_type as at, prog_type as pt};
    let cgroup = std::fs::File::open(&sb.cgroup).with_context(|| format!("open {}", sb.cgroup.display()))?;
    let netns = std::fs::File::open(sb.pod_netns()).context("open the pod's network namespace")?;
    let hooks = [
        (pt::CGROUP_SOCK_ADDR, at::CGROUP_INET4_CONNECT, &cgroup),
        (pt::CGROUP_SOCK_ADDR, at::CGROUP_INET4_GETPEERNAME, &cgroup),
        (pt::SOCK_OPS, at::CGROUP_SOCK_OPS, &cgroup),
        (pt::CGROUP_SOCKOPT, at::CGROUP_GETSOCKOPT, &cgroup),
        (pt::SK_LOOKUP, at::SK_LOOKUP, &netns),
    ];
    let mut links = Vec::new();
    for (prog_type, attach_type, target) in hooks {
        let prog = raw::prog_load_returning(prog_type as u32, attach_type, 1, "empty")
            .with_context(|| format!("load an empty program for {attach_type:?}"))?;
        links.push(
            raw::link_create(prog.as_fd(), target.as_fd(), attach_type)
                .with_context(|| format!("attach an empty program at {attach_type:?}"))?,
        );
    }
    Ok(links)
}

/// Applies a policy in one mode; returns (wall time, eBPF switch time).
fn apply(pods: &Pods, mode: Mode, policy: &Policy) -> Result<(Duration, Option<Duration>)> {
    let t = Instant::now();
    match mode {
        Mode::None | Mode::EmptyPrograms => Ok((Duration::ZERO, None)),
        Mode::Iptables => {
            iptables::apply(policy, &ipt_options(&pods.ipt))?;
            Ok((t.elapsed(), None))
        }
        Mode::Ebpf | Mode::EbpfAccelerated => {
            let r = pods.get(mode).enroll(policy)?;
            Ok((t.elapsed(), Some(r.in_force)))
        }
    }
}

/// One batch of `count` connect/request/response/close; latencies in ns and errors.
fn batch(sb: &Sandbox, dst: &str, count: usize) -> Result<(Vec<u64>, usize)> {
    let n = count.to_string();
    let out =
        sb.probe(&sb.in_pod(APP_UID), &["rr", "--to", dst, "--count", &n, "--linger0"], Duration::from_secs(120))?;
    let mut lat = Vec::with_capacity(count);
    let mut errors = 0;
    for line in out.lines() {
        match line.parse::<u64>() {
            Ok(ns) => lat.push(ns),
            Err(_) => errors += 1,
        }
    }
    Ok((lat, errors))
}

fn stats(mut v: Vec<u64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0;
    (at(0.5), at(0.99), mean)
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

pub fn run(cfg: &Config) -> Result<Results> {
    let mut rng = Rng(cfg.seed.max(1));
    eprintln!("bench: building the sandboxes (none, iptables, eBPF, empty programs; eBPF --accelerate for its phase)");
    let accel_sb = if cfg.phase("accel") { Some(Sandbox::new()?) } else { None };
    let empty = Sandbox::new()?;
    let pods = Pods {
        _empty_links: attach_empty_programs(&empty)?,
        empty,
        none: Sandbox::new()?,
        ipt: Sandbox::new()?,
        ebpf: Sandbox::new()?,
        accel: accel_sb,
    };
    pods.ebpf.load_ebpf()?;
    for m in Mode::ALL.into_iter().chain([Mode::EmptyPrograms]) {
        start(pods.get(m))?;
    }
    if let Some(sb) = &pods.accel {
        sb.load_ebpf_accelerated()?;
        start(sb)?;
    }
    let mut latency = Vec::new();
    let mut applies = Vec::new();
    let ks: &[usize] = if cfg.phase("latency") { &cfg.ks } else { &[] };
    for &k in ks {
        eprintln!("bench: K = {k}");
        let first = policy_with(k, &mut rng);
        let second = policy_with(k, &mut rng);
        for mode in [Mode::Iptables, Mode::Ebpf] {
            let (apply_t, _) = apply(&pods, mode, &first)?;
            let sb = pods.get(mode);
            let mut held = Held::open(&netprobe(), &sb.in_pod(APP_UID), REDIRECT_DST)?;
            let ok_before = held.first.server.as_deref() == Some("sink");
            let (change_t, switch) = apply(&pods, mode, &second)?;
            let after = held.exchange()?;
            let survived =
                ok_before && after.server.as_deref() == Some("sink") && after.orig.as_deref() == Some(REDIRECT_DST);
            applies.push(ApplyRow {
                k,
                mode,
                apply_ms: apply_t.as_secs_f64() * 1e3,
                change_ms: change_t.as_secs_f64() * 1e3,
                in_force_ms: switch.map(|d| d.as_secs_f64() * 1e3),
                held_connection_survived: survived,
            });
        }
        let mut combos: Vec<(Mode, Workload)> = vec![
            (Mode::None, Workload::Pass),
            (Mode::None, Workload::Redirect),
            (Mode::None, Workload::Listener),
            (Mode::Iptables, Workload::Pass),
            (Mode::Iptables, Workload::Redirect),
            (Mode::Ebpf, Workload::Pass),
            (Mode::Ebpf, Workload::Redirect),
            // Where the redirect cost goes: the same listener dialled directly from the
            // intercepted pods (a local destination: passes).
            (Mode::Iptables, Workload::Listener),
            (Mode::Ebpf, Workload::Listener),
            // The floor of any eBPF design: the same hooks running programs that do nothing.
            (Mode::EmptyPrograms, Workload::Pass),
            (Mode::EmptyPrograms, Workload::Listener),
        ];
        let mut samples: Vec<(Vec<u64>, usize)> = vec![(Vec::new(), 0); combos.len()];
        let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); combos.len()];
        let order: Vec<usize> = (0..combos.len()).collect();
        for _ in 0..cfg.rounds {
            let mut o = order.clone();
            shuffle(&mut o, &mut rng);
            for i in o {
                let (mode, w) = combos[i];
                let dst = match w {
                    Workload::Pass => PASS_DST,
                    Workload::Redirect | Workload::PingPong => REDIRECT_DST,
                    Workload::Listener => LISTENER,
                };
                let (lat, err) = batch(pods.get(mode), dst, cfg.batch)?;
                rounds[i].push(stats(lat.clone()).0);
                samples[i].0.extend(lat);
                samples[i].1 += err;
            }
        }
        for (i, (mode, workload)) in combos.drain(..).enumerate() {
            let (lat, errors) = std::mem::take(&mut samples[i]);
            let n = lat.len();
            let (median_us, p99_us, mean_us) = stats(lat);
            let round_medians_us = std::mem::take(&mut rounds[i]);
            latency.push(LatencyRow {
                k,
                mode,
                workload,
                samples: n,
                errors,
                median_us,
                p99_us,
                mean_us,
                round_medians_us,
            });
        }
    }
    // The later phases run under the last K's policy (the largest).
    let later_phases_k = *cfg.ks.last().unwrap_or(&0);
    if !cfg.phase("latency") {
        let policy = policy_with(later_phases_k, &mut rng);
        for mode in [Mode::Iptables, Mode::Ebpf] {
            apply(&pods, mode, &policy)?;
        }
    }
    if pods.accel.is_some() {
        apply(&pods, Mode::EbpfAccelerated, &policy_with(later_phases_k, &mut rng))?;
    }
    let bulk = if cfg.phase("bulk") { bulk(&pods, cfg, &mut rng)? } else { vec![] };
    let bpf_stats = if cfg.phase("stats") { bpf_stats(&pods.ebpf, cfg)? } else { vec![] };
    let cps = if cfg.phase("cps") { cps(&pods, cfg, &mut rng)? } else { vec![] };
    let accel = if cfg.phase("accel") { Some(acceleration(&pods, cfg, &mut rng)?) } else { None };
    // Every redirected connection must really have been intercepted: a check, not a timing.
    for row in &latency {
        if row.errors > 0 {
            bail!("{} errors in {:?}/{:?} at K={}", row.errors, row.mode, row.workload, row.k);
        }
    }
    for row in &cps {
        if row.errors > 0 {
            bail!("{} failed connections in the CPS run of {:?}", row.errors, row.mode);
        }
    }
    Ok(Results {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        quick: cfg.quick,
        rounds: cfg.rounds,
        batch: cfg.batch,
        latency,
        apply: applies,
        bulk,
        bpf_stats,
        cps,
        accel,
        later_phases_k,
    })
}

fn bulk(pods: &Pods, cfg: &Config, rng: &mut Rng) -> Result<Vec<BulkRow>> {
    eprintln!("bench: bulk transfer");
    let mut rows: Vec<BulkRow> = Mode::ALL
        .iter()
        .map(|m| BulkRow { mode: *m, bytes: cfg.bulk_bytes, mb_per_s: vec![], median_mb_per_s: 0.0 })
        .collect();
    let bytes = cfg.bulk_bytes.to_string();
    for _ in 0..cfg.bulk_reps {
        let mut order = [0usize, 1, 2];
        shuffle(&mut order, rng);
        for i in order {
            let mode = Mode::ALL[i];
            let dst = if mode == Mode::None { LISTENER } else { REDIRECT_DST };
            let sb = pods.get(mode);
            let out =
                sb.probe(&sb.in_pod(APP_UID), &["bulk", "--to", dst, "--bytes", &bytes], Duration::from_secs(300))?;
            rows[i].mb_per_s.push(out.trim().parse().context("bulk output")?);
        }
    }
    for r in &mut rows {
        let mut v = r.mb_per_s.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        r.median_mb_per_s = v[v.len() / 2];
    }
    Ok(rows)
}

/// Acceleration against the same eBPF mode without it, rounds interleaved in shuffled order:
/// connect + request/response + close, request/responses on one connection, and bulk.
fn acceleration(pods: &Pods, cfg: &Config, rng: &mut Rng) -> Result<AccelResults> {
    eprintln!("bench: socket-level acceleration");
    let modes = [Mode::Ebpf, Mode::EbpfAccelerated];
    let combos: Vec<(Mode, Workload)> =
        modes.iter().flat_map(|m| [(*m, Workload::Redirect), (*m, Workload::PingPong)]).collect();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); combos.len()];
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); combos.len()];
    let mut errors = vec![0usize; combos.len()];
    let exchanges = (cfg.batch * 10).to_string();
    let mut order: Vec<usize> = (0..combos.len()).collect();
    for _ in 0..cfg.accel_rounds {
        shuffle(&mut order, rng);
        for &i in &order {
            let (mode, w) = combos[i];
            let sb = pods.get(mode);
            let (lat, err) = match w {
                Workload::PingPong => {
                    let out = sb.probe(
                        &sb.in_pod(APP_UID),
                        &["pingpong", "--to", REDIRECT_DST, "--count", &exchanges],
                        Duration::from_secs(120),
                    )?;
                    let lat: Vec<u64> = out.lines().filter_map(|l| l.parse().ok()).collect();
                    let err = if lat.len() == cfg.batch * 10 { 0 } else { 1 };
                    (lat, err)
                }
                _ => batch(sb, REDIRECT_DST, cfg.batch)?,
            };
            rounds[i].push(stats(lat.clone()).0);
            samples[i].extend(lat);
            errors[i] += err;
        }
    }
    let mut rows: Vec<LatencyRow> = combos
        .iter()
        .enumerate()
        .map(|(i, &(mode, workload))| {
            let lat = std::mem::take(&mut samples[i]);
            let n = lat.len();
            let (median_us, p99_us, mean_us) = stats(lat);
            LatencyRow {
                k: 0,
                mode,
                workload,
                samples: n,
                errors: errors[i],
                median_us,
                p99_us,
                mean_us,
                round_medians_us: std::mem::take(&mut rounds[i]),
            }
        })
        .collect();
    if let Some(r) = rows.iter().find(|r| r.errors > 0) {
        bail!("{} failed runs in the acceleration phase ({:?}, {:?})", r.errors, r.mode, r.workload);
    }
    let (rr, pingpong): (Vec<LatencyRow>, Vec<LatencyRow>) =
        rows.drain(..).partition(|r| r.workload == Workload::Redirect);
    let mut bulk: Vec<BulkRow> = modes
        .iter()
        .map(|m| BulkRow { mode: *m, bytes: cfg.bulk_bytes, mb_per_s: vec![], median_mb_per_s: 0.0 })
        .collect();
    let bytes = cfg.bulk_bytes.to_string();
    for _ in 0..cfg.bulk_reps {
        let mut o = [0usize, 1];
        shuffle(&mut o, rng);
        for i in o {
            let sb = pods.get(modes[i]);
            let out = sb.probe(
                &sb.in_pod(APP_UID),
                &["bulk", "--to", REDIRECT_DST, "--bytes", &bytes],
                Duration::from_secs(300),
            )?;
            bulk[i].mb_per_s.push(out.trim().parse().context("bulk output")?);
        }
    }
    for b in &mut bulk {
        let mut v = b.mb_per_s.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        b.median_mb_per_s = v[v.len() / 2];
    }
    Ok(AccelResults { rr, pingpong, bulk })
}

/// The sink's accepting threads: as many as the CPS phase's clients at most.
const CPS_WORKERS: usize = 16;

/// CPU time used by a sandbox's pod processes so far (cgroup v2 cpu.stat), µs.
fn cpu_usage_us(sb: &Sandbox) -> Result<u64> {
    let path = sb.cgroup.join("cpu.stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no usage_usec in {}", path.display()))
}

/// Connections per second under load, every mode in each round (shuffled): `cps_threads`
/// clients connect again and again to the 15001 sink (none: directly; iptables and eBPF:
/// the redirected destination), so both cores are busy.
fn cps(pods: &Pods, cfg: &Config, rng: &mut Rng) -> Result<Vec<CpsRow>> {
    eprintln!("bench: connections per second");
    let threads = cfg.cps_threads.min(CPS_WORKERS);
    let mut rows: Vec<CpsRow> = Mode::ALL
        .iter()
        .map(|m| CpsRow {
            mode: *m,
            threads,
            rounds_cps: vec![],
            rounds_cpu_us_per_conn: vec![],
            conns: 0,
            errors: 0,
            median_cps: 0.0,
            median_cpu_us_per_conn: 0.0,
            median_us: 0.0,
            p99_us: 0.0,
        })
        .collect();
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); Mode::ALL.len()];
    let (threads_arg, ms_arg) = (threads.to_string(), cfg.cps_ms.to_string());
    for _ in 0..cfg.cps_rounds {
        let mut order = [0usize, 1, 2];
        shuffle(&mut order, rng);
        for i in order {
            let mode = Mode::ALL[i];
            let dst = if mode == Mode::None { LISTENER } else { REDIRECT_DST };
            let sb = pods.get(mode);
            let cpu0 = cpu_usage_us(sb)?;
            let out = sb.probe(
                &sb.in_pod(APP_UID),
                &["cps", "--to", dst, "--threads", &threads_arg, "--duration-ms", &ms_arg],
                Duration::from_secs(120),
            )?;
            let cpu1 = cpu_usage_us(sb)?;
            let mut lines = out.lines();
            let head: Vec<u128> = lines
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(|v| v.parse())
                .collect::<Result<_, _>>()
                .context("cps output")?;
            let [conns, errors, elapsed_ns] = head[..] else { bail!("cps output: {out:.200}") };
            let row = &mut rows[i];
            row.conns += conns as usize;
            row.errors += errors as usize;
            row.rounds_cps.push(conns as f64 / (elapsed_ns as f64 / 1e9));
            row.rounds_cpu_us_per_conn.push((cpu1 - cpu0) as f64 / (conns.max(1)) as f64);
            latencies[i].extend(lines.filter_map(|l| l.parse::<u64>().ok()));
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
    };
    for (row, lat) in rows.iter_mut().zip(latencies) {
        row.median_cps = median(&row.rounds_cps);
        row.median_cpu_us_per_conn = median(&row.rounds_cpu_us_per_conn);
        let (median_us, p99_us, _) = stats(lat);
        row.median_us = median_us;
        row.p99_us = p99_us;
    }
    Ok(rows)
}

/// Per-program cost, measured in a separate phase: the kernel's run-time statistics add two
/// clock reads to every program run, so they stay off while latencies are measured. Each
/// workload runs alone, so runs and time per connection are the workload's own.
fn bpf_stats(sb: &Sandbox, cfg: &Config) -> Result<Vec<ProgStat>> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enable BPF run-time statistics")?;
    let mut out = Vec::new();
    for (workload, dst) in
        [(Workload::Pass, PASS_DST), (Workload::Redirect, REDIRECT_DST), (Workload::Listener, LISTENER)]
    {
        let before = prog_totals(sb)?;
        let mut conns = 0;
        for _ in 0..cfg.rounds.min(10) {
            let (lat, _) = batch(sb, dst, cfg.batch)?;
            conns += lat.len();
        }
        let after = prog_totals(sb)?;
        for ((name, runs0, ns0), (_, runs1, ns1)) in before.into_iter().zip(after) {
            let runs = runs1 - runs0;
            let avg_ns = if runs == 0 { 0.0 } else { (ns1 - ns0) as f64 / runs as f64 };
            let per_conn = |v: f64| if conns == 0 { 0.0 } else { v / conns as f64 };
            out.push(ProgStat {
                workload,
                program: name,
                runs,
                runs_per_conn: per_conn(runs as f64),
                avg_ns,
                ns_per_conn: per_conn((ns1 - ns0) as f64),
            });
        }
    }
    drop(stats);
    Ok(out)
}

/// (program, run count, total run time ns) of every program of the sandbox.
fn prog_totals(sb: &Sandbox) -> Result<Vec<(String, u64, u128)>> {
    use aya::programs::ProgramInfo;
    let mut out = Vec::new();
    let mut paths: Vec<(String, std::path::PathBuf)> =
        CGROUP_PROGRAMS.iter().map(|(n, _)| (n.to_string(), sb.pins.prog(n))).collect();
    paths.push((SK_LOOKUP_PROGRAM.into(), sb.pins.prog(SK_LOOKUP_PROGRAM)));
    for (name, path) in paths {
        let info = ProgramInfo::from_pin(&path)?;
        out.push((name, info.run_count(), info.run_time().as_nanos()));
    }
    Ok(out)
}
