//! The markdown report: latency table with ratios to no interception from the same run,
//! apply times, bulk throughput, per-program eBPF cost, and each goal met or not.
use std::fmt::Write;

use crate::{
    Config,
    measure::{LatencyRow, Mode, Results, Workload},
};

fn row(r: &Results, k: usize, mode: Mode, w: Workload) -> Option<&LatencyRow> {
    r.latency.iter().find(|x| x.k == k && x.mode == mode && x.workload == w)
}

/// The baseline of a workload: "none" on the same destination for pass flows, "none"
/// dialling the listener directly for redirected ones.
pub fn baseline(r: &Results, k: usize, w: Workload) -> Option<&LatencyRow> {
    match w {
        Workload::Pass => row(r, k, Mode::None, Workload::Pass),
        _ => row(r, k, Mode::None, Workload::Listener),
    }
}

pub fn markdown(r: &Results, cfg: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## interceptor benchmark — kernel {}, {} CPUs{}", r.kernel, r.cpus, if r.quick { ", QUICK (smoke run, not for conclusions)" } else { "" });
    let _ = writeln!(s, "\n{} rounds × {} connections per mode, workload and K, modes interleaved in shuffled order.\n", r.rounds, r.batch);
    let _ = writeln!(s, "### Connect + 1-byte request/response + close (µs; ratio = median / no interception)\n");
    let _ = writeln!(s, "| K | workload | none median (p99) | iptables median (p99) | iptables ratio | eBPF median (p99) | eBPF ratio |");
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|");
    for &k in &cfg.ks {
        for w in [Workload::Pass, Workload::Redirect] {
            let (Some(base), Some(ipt), Some(e)) = (baseline(r, k, w), row(r, k, Mode::Iptables, w), row(r, k, Mode::Ebpf, w)) else { continue };
            let label = match w {
                Workload::Pass => "a. pass (excluded dst)",
                _ => "b. redirect → 15001",
            };
            let _ = writeln!(
                s,
                "| {k} | {label} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.3}× | {:.1} ({:.1}) | {:.3}× |",
                base.median_us, base.p99_us, ipt.median_us, ipt.p99_us, ipt.median_us / base.median_us, e.median_us, e.p99_us, e.median_us / base.median_us
            );
        }
        if let Some(world) = row(r, k, Mode::None, Workload::Redirect) {
            let _ = writeln!(s, "| {k} | (none dialling the redirected dst's world server) | {:.1} ({:.1}) | | | | |", world.median_us, world.p99_us);
        }
    }

    let _ = writeln!(s, "\n### Applying a policy of K excluded CIDRs (ms)\n");
    let _ = writeln!(s, "| K | mode | apply | live change | eBPF switch | held connection survived |");
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---|");
    for a in &r.apply {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} | {} |",
            a.k,
            a.mode.name(),
            a.apply_ms,
            a.change_ms,
            a.switch_ms.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            if a.held_connection_survived { "yes" } else { "NO" }
        );
    }

    let _ = writeln!(s, "\n### Bulk transfer app → 15001 listener (MB/s; none dials the listener directly)\n");
    let _ = writeln!(s, "| mode | bytes | runs | median |");
    let _ = writeln!(s, "|---|---:|---|---:|");
    for b in &r.bulk {
        let runs: Vec<String> = b.mb_per_s.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(s, "| {} | {} | {} | {:.0} |", b.mode.name(), b.bytes, runs.join(", "), b.median_mb_per_s);
    }

    let _ = writeln!(s, "\n### eBPF programs (kernel BPF run-time statistics, separate phase: pass + redirect connections)\n");
    let _ = writeln!(s, "| program | runs | average ns per run |");
    let _ = writeln!(s, "|---|---:|---:|");
    for p in &r.bpf_stats {
        let _ = writeln!(s, "| {} | {} | {:.0} |", p.program, p.runs, p.avg_ns);
    }

    let _ = writeln!(s, "\n### Goals\n");
    for line in goals(r, cfg) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

/// Each goal of the benchmark issue, met or not, with the measured numbers.
pub fn goals(r: &Results, cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut worst = (0.0f64, 0usize, "");
    for &k in &cfg.ks {
        for (w, name) in [(Workload::Pass, "pass"), (Workload::Redirect, "redirect")] {
            if let (Some(b), Some(e)) = (baseline(r, k, w), row(r, k, Mode::Ebpf, w)) {
                let ratio = e.median_us / b.median_us;
                if ratio > worst.0 {
                    worst = (ratio, k, name);
                }
            }
        }
    }
    out.push(format!(
        "eBPF vs no interception ≤ 1.05× at every K, pass and redirect: {} (worst {:.3}× at K={} {})",
        if worst.0 <= 1.05 { "MET" } else { "NOT MET" },
        worst.0,
        worst.1,
        worst.2
    ));
    let k = *cfg.ks.iter().max().unwrap_or(&0);
    for (w, name) in [(Workload::Pass, "pass"), (Workload::Redirect, "redirect")] {
        if let (Some(b), Some(i), Some(e)) = (baseline(r, k, w), row(r, k, Mode::Iptables, w), row(r, k, Mode::Ebpf, w)) {
            let ipt_added = i.median_us - b.median_us;
            let ebpf_added = (e.median_us - b.median_us).max(0.0);
            let factor = if ebpf_added <= 0.0 { f64::INFINITY } else { ipt_added / ebpf_added };
            out.push(format!(
                "added latency at K={k} ({name}): iptables +{ipt_added:.1} µs, eBPF +{ebpf_added:.1} µs → {} lower: {}",
                if factor.is_infinite() { "∞×".to_string() } else { format!("{factor:.1}×") },
                if factor >= 3.0 { "MET" } else { "NOT MET" }
            ));
        }
    }
    for a in r.apply.iter().filter(|a| a.k == k) {
        match a.mode {
            Mode::Ebpf => out.push(format!(
                "apply / live change of {k} CIDRs in eBPF mode ≤ 50 ms: apply {:.1} ms, change {:.1} ms (switch {:.1} ms), held connection survived: {} → {}",
                a.apply_ms,
                a.change_ms,
                a.switch_ms.unwrap_or(f64::NAN),
                a.held_connection_survived,
                if a.apply_ms <= 50.0 && a.change_ms <= 50.0 && a.held_connection_survived { "MET" } else { "NOT MET" }
            )),
            Mode::Iptables => out.push(format!(
                "(beside it) iptables-restore of {k} CIDRs: apply {:.1} ms, change {:.1} ms, held connection survived: {}",
                a.apply_ms, a.change_ms, a.held_connection_survived
            )),
            Mode::None => {}
        }
    }
    let bulk = |m: Mode| r.bulk.iter().find(|b| b.mode == m).map(|b| b.median_mb_per_s).unwrap_or(0.0);
    out.push(format!(
        "bulk throughput eBPF ≥ iptables: eBPF {:.0} MB/s, iptables {:.0} MB/s, none {:.0} MB/s → {}",
        bulk(Mode::Ebpf),
        bulk(Mode::Iptables),
        bulk(Mode::None),
        if bulk(Mode::Ebpf) >= bulk(Mode::Iptables) * 0.98 { "MET (within 2% noise or better)" } else { "NOT MET" }
    ));
    out
}
