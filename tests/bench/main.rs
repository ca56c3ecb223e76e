//! `cargo xtask bench`: what interception costs, measured side by side in one run.
//!
//! Sandboxes exist at once — no interception, iptables mode, eBPF mode, and "empty
//! programs" (no interception, a program that only returns at each hook a redirected
//! connection passes: the floor of any eBPF design) — each a pod and a world namespace with
//! the same servers. For every policy size K (excluded CIDRs:
//! random ranges that are never targets, plus the target's own /32 last, the worst case for
//! a rule list), rounds of connections run in every mode in a shuffled order, so drift
//! cancels. Workloads:
//!
//! * a. pass: connect, 1-byte request/response, close to an excluded world destination;
//! * b. redirect: the same to a redirected destination, landing on a minimal listener on
//!   15001 in the pod (no proxy logic). Its "none" baseline dials that listener directly
//!   (the interception's own cost); dialling the world destination is reported too;
//! * c. apply and live-change of the policy per mode and K (a connection held open across
//!   the change must survive);
//! * d. bulk transfer app → 15001 listener, MB/s.
//!
//! Output: a markdown table on stdout, JSON and a PNG chart under target/bench/.
mod chart;
mod daemon_scale;
mod measure;
mod report;
mod scale;

use std::{path::PathBuf, time::Instant};

use anyhow::Result;

pub struct Config {
    pub ks: Vec<usize>,
    pub rounds: usize,
    pub batch: usize,
    pub bulk_bytes: u64,
    pub bulk_reps: usize,
    pub seed: u64,
    /// Connections per second: rounds (each runs every mode once, shuffled), the length of
    /// one mode's run, and the concurrent clients (and sink workers).
    pub cps_rounds: usize,
    pub cps_ms: u64,
    pub cps_threads: usize,
    /// Acceleration phase: rounds of each workload in both modes.
    pub accel_rounds: usize,
    pub out_dir: PathBuf,
    pub quick: bool,
    /// Which phases run (all by default; `--phases stats,cps` for profiling runs).
    pub phases: Vec<String>,
}

impl Config {
    pub fn phase(&self, name: &str) -> bool {
        self.phases.iter().any(|p| p == name)
    }
}

/// Every phase, in the order they run.
pub const PHASES: [&str; 5] = ["latency", "bulk", "stats", "cps", "accel"];

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out_dir = std::env::current_dir()?.join("target/bench");
    if args.iter().any(|a| a == "--scale") {
        return run_scale(&args, &out_dir, quick);
    }
    if args.iter().any(|a| a == "--trace") {
        // The library's debug log (enroll's phase timings) on stderr.
        interceptor::logging::init(2);
    }
    let cfg = if quick {
        Config {
            ks: vec![0, 100, 1000, 10000],
            rounds: 4,
            batch: 100,
            bulk_bytes: 256 << 20,
            bulk_reps: 1,
            seed: 42,
            cps_rounds: 1,
            cps_ms: 300,
            cps_threads: 8,
            accel_rounds: 2,
            out_dir,
            quick,
            phases: PHASES.iter().map(|p| p.to_string()).collect(),
        }
    } else {
        Config {
            ks: vec![0, 100, 1000, 10000],
            rounds: 60,
            batch: 150,
            bulk_bytes: 512 << 20,
            bulk_reps: 7,
            seed: 42,
            cps_rounds: 8,
            cps_ms: 1500,
            cps_threads: 8,
            accel_rounds: 20,
            out_dir,
            quick,
            phases: PHASES.iter().map(|p| p.to_string()).collect(),
        }
    };
    let mut cfg = cfg;
    // Overrides for profiling runs: --ks 0,10000 --rounds N --batch N --phases stats,cps.
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    if let Some(v) = value("--ks") {
        cfg.ks = v.split(',').map(|k| k.parse()).collect::<Result<_, _>>()?;
    }
    if let Some(v) = value("--rounds") {
        cfg.rounds = v.parse()?;
    }
    if let Some(v) = value("--batch") {
        cfg.batch = v.parse()?;
    }
    if let Some(v) = value("--phases") {
        cfg.phases = v.split(',').map(str::to_string).collect();
        if let Some(bad) = cfg.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
            anyhow::bail!("unknown phase {bad:?} (phases: {})", PHASES.join(","));
        }
    }
    std::fs::create_dir_all(&cfg.out_dir)?;
    let started = Instant::now();
    let results = measure::run(&cfg)?;
    let table = report::markdown(&results, &cfg);
    println!("{table}");
    let json = cfg.out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(cfg.out_dir.join("results.md"), &table)?;
    let png = cfg.out_dir.join("latency.png");
    chart::draw(&results, &png)?;
    println!(
        "\nJSON: {}\nchart: {}\nmarkdown: {}\nwall time: {:.0?}",
        json.display(),
        png.display(),
        cfg.out_dir.join("results.md").display(),
        started.elapsed()
    );
    if quick {
        // A smoke run of the scale benchmark too (a few pods: not for conclusions).
        run_scale(&args, &cfg.out_dir, true)?;
    }
    Ok(())
}

/// `--scale [--pods N] [--cidrs K] [--trace]`: see `scale`. `--quick`: 20 pods, a MeshConfig
/// of 1 000 ranges (a smoke run: the debug build parses policies slowly).
fn run_scale(args: &[String], out_dir: &std::path::Path, quick: bool) -> Result<()> {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    let mut cfg = if quick {
        scale::ScaleConfig { pods: 20, cidrs: 1000, seed: 42, sample: 5, quick: true }
    } else {
        scale::ScaleConfig { pods: 1000, cidrs: 10_000, seed: 42, sample: 50, quick: false }
    };
    if let Some(v) = value("--pods") {
        cfg.pods = v.parse()?;
    }
    if let Some(v) = value("--cidrs") {
        cfg.cidrs = v.parse()?;
    }
    if args.iter().any(|a| a == "--trace") {
        // The library's debug log (enroll's phase timings) on stderr.
        interceptor::logging::init(2);
    }
    std::fs::create_dir_all(out_dir)?;
    let started = Instant::now();
    let results = scale::run(&cfg)?;
    let table = scale::markdown(&results);
    println!("{table}");
    let json = out_dir.join("scale.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(out_dir.join("scale.md"), &table)?;
    println!("\nJSON: {}\nwall time: {:.0?}", json.display(), started.elapsed());
    if !results.real_failures.is_empty() || !results.map_failures.is_empty() {
        anyhow::bail!("decisions disagree with the oracle (see above)");
    }
    Ok(())
}
