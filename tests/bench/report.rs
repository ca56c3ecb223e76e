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

/// The ratio of a mode to its baseline, paired by round: the median over rounds of
/// (the mode's batch median / the baseline's batch median in the same round). Rounds run
/// all modes back to back in shuffled order, so pairing cancels drift between rounds.
pub fn ratio(row: &LatencyRow, base: &LatencyRow) -> f64 {
    let mut r: Vec<f64> = row.round_medians_us.iter().zip(&base.round_medians_us).map(|(a, b)| a / b).collect();
    if r.is_empty() {
        return row.median_us / base.median_us;
    }
    r.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = r.len() / 2;
    if r.len() % 2 == 1 { r[m] } else { (r[m - 1] + r[m]) / 2.0 }
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
    let _ = writeln!(
        s,
        "## interceptor benchmark — kernel {}, {} CPUs{}",
        r.kernel,
        r.cpus,
        if r.quick { ", QUICK (smoke run, not for conclusions)" } else { "" }
    );
    let _ = writeln!(
        s,
        "\n{} rounds × {} connections per mode, workload and K, modes interleaved in shuffled order.\n",
        r.rounds, r.batch
    );
    let _ = writeln!(
        s,
        "### Connect + 1-byte request/response + close (µs; ratio to no interception, paired by round: median of per-round median ratios)\n"
    );
    let _ = writeln!(
        s,
        "| K | workload | none median (p99) | iptables median (p99) | iptables ratio | eBPF median (p99) | eBPF ratio |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|");
    for &k in &cfg.ks {
        for w in [Workload::Pass, Workload::Redirect] {
            let (Some(base), Some(ipt), Some(e)) =
                (baseline(r, k, w), row(r, k, Mode::Iptables, w), row(r, k, Mode::Ebpf, w))
            else {
                continue;
            };
            let label = match w {
                Workload::Pass => "a. pass (excluded dst)",
                _ => "b. redirect → 15001",
            };
            let _ = writeln!(
                s,
                "| {k} | {label} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.3}× | {:.1} ({:.1}) | {:.3}× |",
                base.median_us,
                base.p99_us,
                ipt.median_us,
                ipt.p99_us,
                ratio(ipt, base),
                e.median_us,
                e.p99_us,
                ratio(e, base)
            );
        }
        if let Some(world) = row(r, k, Mode::None, Workload::Redirect) {
            let _ = writeln!(
                s,
                "| {k} | (none dialling the redirected dst's world server) | {:.1} ({:.1}) | | | | |",
                world.median_us, world.p99_us
            );
        }
    }

    let _ = writeln!(s, "\n### Where the redirect cost goes (eBPF, µs of median latency)\n");
    let _ = writeln!(
        s,
        "| K | none → listener | eBPF pod → listener (programs run, pass) | eBPF redirect → listener | programs' cost on a passing connection | added by the redirect itself |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for &k in &cfg.ks {
        let (Some(n), Some(l), Some(rd)) = (
            row(r, k, Mode::None, Workload::Listener),
            row(r, k, Mode::Ebpf, Workload::Listener),
            row(r, k, Mode::Ebpf, Workload::Redirect),
        ) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {k} | {:.1} | {:.1} | {:.1} | {:+.1} ({:.3}×) | {:+.1} ({:.3}×) |",
            n.median_us,
            l.median_us,
            rd.median_us,
            l.median_us - n.median_us,
            ratio(l, n),
            rd.median_us - l.median_us,
            ratio(rd, l)
        );
    }

    let _ = writeln!(s, "\n### Applying a policy of K excluded CIDRs (ms)\n");
    let _ = writeln!(
        s,
        "| K | mode | apply (whole call) | live change (whole call) | eBPF change in force after | held connection survived |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---|");
    for a in &r.apply {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {} | {} |",
            a.k,
            a.mode.name(),
            a.apply_ms,
            a.change_ms,
            a.in_force_ms.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
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

    let _ = writeln!(
        s,
        "\n### eBPF programs (kernel BPF run-time statistics, separate phase: pass + redirect connections)\n"
    );
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
                let r = ratio(e, b);
                if r > worst.0 {
                    worst = (r, k, name);
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
        if let (Some(b), Some(i), Some(e)) = (baseline(r, k, w), row(r, k, Mode::Iptables, w), row(r, k, Mode::Ebpf, w))
        {
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
            Mode::Ebpf => {
                let in_force = a.in_force_ms.unwrap_or(f64::NAN);
                out.push(format!(
                    "apply / live change of {k} CIDRs in eBPF mode ≤ 50 ms: first apply {:.1} ms (whole call); live change in force after {in_force:.1} ms, whole call {:.1} ms (the rest removes the previous generation after an RCU grace period); held connection survived: {} → {}",
                    a.apply_ms,
                    a.change_ms,
                    a.held_connection_survived,
                    match (a.apply_ms <= 50.0 && in_force <= 50.0 && a.held_connection_survived, a.change_ms <= 50.0) {
                        (true, true) => "MET",
                        (true, false) => "MET for the policy being in force; the whole change call is longer",
                        _ => "NOT MET",
                    }
                ))
            }
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
