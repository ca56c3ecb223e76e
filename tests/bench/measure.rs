//! Runs the workloads in the three sandboxes and collects the numbers.
use std::time::{Duration, Instant};

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
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::None, Mode::Iptables, Mode::Ebpf];
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Iptables => "iptables",
            Mode::Ebpf => "ebpf",
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

#[derive(Debug, Serialize)]
pub struct ProgStat {
    pub program: String,
    pub runs: u64,
    pub avg_ns: f64,
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
        cidrs.push(Cidr { net: text.parse().unwrap(), text });
    }
    cidrs.push(Cidr { text: "203.0.113.10/32".into(), net: "203.0.113.10/32".parse().unwrap() });
    Policy { outbound_ip_range_exclusions: cidrs, ..Policy::default() }
}

struct Pods {
    none: Sandbox,
    ipt: Sandbox,
    ebpf: Sandbox,
}

impl Pods {
    fn get(&self, m: Mode) -> &Sandbox {
        match m {
            Mode::None => &self.none,
            Mode::Iptables => &self.ipt,
            Mode::Ebpf => &self.ebpf,
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

fn start(sb: &Sandbox) -> Result<()> {
    sb.start(&sb.in_pod(PROXY_UID), &["sink", "--listen", "0.0.0.0:15001"])?;
    sb.start(&sb.in_world(), &["sink", "--listen", "0.0.0.0:80"])?;
    Ok(())
}

/// Applies a policy in one mode; returns (wall time, eBPF switch time).
fn apply(pods: &Pods, mode: Mode, policy: &Policy) -> Result<(Duration, Option<Duration>)> {
    let t = Instant::now();
    match mode {
        Mode::None => Ok((Duration::ZERO, None)),
        Mode::Iptables => {
            iptables::apply(policy, &ipt_options(&pods.ipt))?;
            Ok((t.elapsed(), None))
        }
        Mode::Ebpf => {
            let r = pods.ebpf.enroll(policy)?;
            Ok((t.elapsed(), Some(r.in_force)))
        }
    }
}

/// One batch of `count` connect/request/response/close; latencies in ns and errors.
fn batch(sb: &Sandbox, dst: &str, count: usize) -> Result<(Vec<u64>, usize)> {
    let n = count.to_string();
    let out = sb.probe(&sb.in_pod(APP_UID), &["rr", "--to", dst, "--count", &n], Duration::from_secs(120))?;
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
    eprintln!("bench: building three sandboxes (none, iptables, eBPF)");
    let pods = Pods { none: Sandbox::new()?, ipt: Sandbox::new()?, ebpf: Sandbox::new()? };
    pods.ebpf.load_ebpf()?;
    for m in Mode::ALL {
        start(pods.get(m))?;
    }
    let mut latency = Vec::new();
    let mut applies = Vec::new();
    for &k in &cfg.ks {
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
                    Workload::Redirect => REDIRECT_DST,
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
    let bulk = bulk(&pods, cfg, &mut rng)?;
    let bpf_stats = bpf_stats(&pods.ebpf, cfg)?;
    // Every redirected connection must really have been intercepted: a check, not a timing.
    for row in &latency {
        if row.errors > 0 {
            bail!("{} errors in {:?}/{:?} at K={}", row.errors, row.mode, row.workload, row.k);
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

/// Per-program cost, measured in a separate phase: the kernel's run-time statistics add two
/// clock reads to every program run, so they stay off while latencies are measured.
fn bpf_stats(sb: &Sandbox, cfg: &Config) -> Result<Vec<ProgStat>> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enable BPF run-time statistics")?;
    let before = prog_totals(sb)?;
    for _ in 0..cfg.rounds.min(10) {
        for dst in [PASS_DST, REDIRECT_DST] {
            batch(sb, dst, cfg.batch)?;
        }
    }
    let after = prog_totals(sb)?;
    drop(stats);
    let mut out = Vec::new();
    for ((name, runs0, ns0), (_, runs1, ns1)) in before.into_iter().zip(after) {
        let runs = runs1 - runs0;
        let avg_ns = if runs == 0 { 0.0 } else { (ns1 - ns0) as f64 / runs as f64 };
        out.push(ProgStat { program: name, runs, avg_ns });
    }
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
