//! The markdown report: latency table with ratios to no interception from the same run,
//! apply times, bulk throughput, per-program eBPF cost, and each goal met or not.
use std::fmt::Write;

use crate::{
    Config,
    measure::{CpsRow, LatencyRow, Mode, Results, Workload},
};

fn row(r: &Results, k: usize, mode: Mode, w: Workload) -> Option<&LatencyRow> {
    r.latency.iter().find(|x| x.k == k && x.mode == mode && x.workload == w)
}

/// The ratio of a mode to its baseline, paired by round: the median over rounds of
/// (the mode's batch median / the baseline's batch median in the same round). Rounds run
/// all modes back to back in shuffled order, so pairing cancels drift between rounds.
pub fn ratio(row: &LatencyRow, base: &LatencyRow) -> f64 {
    if row.round_medians_us.is_empty() {
        return row.median_us / base.median_us;
    }
    paired(&row.round_medians_us, &base.round_medians_us)
}

/// The median over rounds of a / b, pairing round i of each.
pub fn paired(a: &[f64], b: &[f64]) -> f64 {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    if r.is_empty() {
        return f64::NAN;
    }
    r.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let m = r.len() / 2;
    if r.len() % 2 == 1 { r[m] } else { (r[m - 1] + r[m]) / 2.0 }
}

/// A distribution-free 95% confidence interval of that median over rounds: the order
/// statistics n/2 ∓ 0.98·√n of the sorted per-round ratios (the binomial interval of a
/// median). It says how finely the bench resolves a ratio on this machine.
pub fn paired_ci(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    if r.len() < 6 {
        return None;
    }
    r.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let n = r.len() as f64;
    let half = 0.98 * n.sqrt();
    let lo = (n / 2.0 - half).floor().max(0.0) as usize;
    let hi = ((n / 2.0 + half).ceil() as usize).min(r.len() - 1);
    Some((r[lo], r[hi]))
}

/// "1.088× (95% CI 1.031–1.152)", or the ratio alone when there are too few rounds.
fn ratio_with_ci(row: &LatencyRow, base: &LatencyRow) -> String {
    match paired_ci(&row.round_medians_us, &base.round_medians_us) {
        Some((lo, hi)) => format!("{:.3}× (95% CI {lo:.3}–{hi:.3})", ratio(row, base)),
        None => format!("{:.3}×", ratio(row, base)),
    }
}

fn cps_row(r: &Results, m: Mode) -> Option<&CpsRow> {
    r.cps.iter().find(|c| c.mode == m)
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

    let _ = writeln!(s, "\n### Where the redirect cost goes (µs of median latency; ratios paired by round)\n");
    let _ = writeln!(
        s,
        "Empty programs: no interception, but a program that only returns \"carry on\" at each hook a redirected connection passes (connect4, sock_ops, getpeername4, getsockopt, sk_lookup) — the kernel's price for running programs there at all, the floor of any eBPF design.\n"
    );
    let _ = writeln!(
        s,
        "| K | none → listener | empty programs → listener | eBPF pod → listener (tracked as conntrack would) | eBPF redirect → listener | the hooks' floor | eBPF on a direct connection | added by the redirect itself |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &k in &cfg.ks {
        let (Some(n), Some(l), Some(rd)) = (
            row(r, k, Mode::None, Workload::Listener),
            row(r, k, Mode::Ebpf, Workload::Listener),
            row(r, k, Mode::Ebpf, Workload::Redirect),
        ) else {
            continue;
        };
        let (empty, floor) = match row(r, k, Mode::EmptyPrograms, Workload::Listener) {
            Some(e) => {
                (format!("{:.1}", e.median_us), format!("{:+.1} ({:.3}×)", e.median_us - n.median_us, ratio(e, n)))
            }
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {k} | {:.1} | {empty} | {:.1} | {:.1} | {floor} | {:+.1} ({:.3}×) | {:+.1} ({:.3}×) |",
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
        "\n### eBPF programs per connection (kernel BPF run-time statistics, separate phase, each workload alone, K = {})\n",
        r.later_phases_k
    );
    let _ = writeln!(
        s,
        "| program | pass: runs/conn | ns/run | ns/conn | redirect: runs/conn | ns/run | ns/conn | pod → listener: runs/conn | ns/run | ns/conn |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let stat = |w: Workload, name: &str| r.bpf_stats.iter().find(|p| p.workload == w && p.program == name);
    let mut names: Vec<&str> = Vec::new();
    for p in &r.bpf_stats {
        if !names.contains(&p.program.as_str()) {
            names.push(&p.program);
        }
    }
    let workloads = [Workload::Pass, Workload::Redirect, Workload::Listener];
    let mut totals = [(0.0, 0.0); 3];
    for name in names {
        let cells: Vec<Option<&crate::measure::ProgStat>> = workloads.iter().map(|w| stat(*w, name)).collect();
        if cells.iter().all(|c| c.is_none_or(|p| p.runs == 0)) {
            continue;
        }
        let mut line = format!("| {name} |");
        for (t, c) in totals.iter_mut().zip(&cells) {
            match c {
                Some(p) => {
                    t.0 += p.runs_per_conn;
                    t.1 += p.ns_per_conn;
                    let _ = write!(line, " {:.2} | {:.0} | {:.0} |", p.runs_per_conn, p.avg_ns, p.ns_per_conn);
                }
                None => line.push_str(" - | - | - |"),
            }
        }
        let _ = writeln!(s, "{line}");
    }
    let mut line = "| **all programs** |".to_string();
    for t in totals {
        let _ = write!(line, " {:.2} | | {:.0} |", t.0, t.1);
    }
    let _ = writeln!(s, "{line}");

    if !r.cps.is_empty() {
        let threads = r.cps.first().map(|c| c.threads).unwrap_or(0);
        let _ = writeln!(
            s,
            "\n### Connections per second under load ({threads} concurrent clients, connect + 1-byte request/response + close, the sink closing first; K = {})\n",
            r.later_phases_k
        );
        let _ = writeln!(
            s,
            "| mode | connections/s (median of rounds) | ratio to none (paired by round) | CPU per connection (µs, pod cgroup) | CPU ratio to none | latency under load median (p99) µs |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        let none = cps_row(r, Mode::None);
        for c in &r.cps {
            let (ratio, cpu_ratio) = match none {
                Some(n) => (
                    format!("{:.3}×", paired(&c.rounds_cps, &n.rounds_cps)),
                    format!("{:.3}×", paired(&c.rounds_cpu_us_per_conn, &n.rounds_cpu_us_per_conn)),
                ),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {ratio} | {:.1} | {cpu_ratio} | {:.1} ({:.1}) |",
                c.mode.name(),
                c.median_cps,
                c.median_cpu_us_per_conn,
                c.median_us,
                c.p99_us
            );
        }
    }

    if let Some(a) = &r.accel {
        let _ = writeln!(
            s,
            "\n### Socket-level acceleration (`ebpf load --accelerate`) against eBPF mode without it (same run, rounds interleaved)\n"
        );
        let _ = writeln!(s, "| measure | eBPF | eBPF --accelerate | ratio (paired by round) |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (rows, what) in [
            (&a.pingpong, "1-byte request/response on one connection, µs median (p99)"),
            (&a.rr, "connect + 1-byte request/response + close, µs median (p99)"),
        ] {
            if let [p, x] = &rows[..] {
                let _ = writeln!(
                    s,
                    "| {what} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.3}× |",
                    p.median_us,
                    p.p99_us,
                    x.median_us,
                    x.p99_us,
                    ratio(x, p)
                );
            }
        }
        if let [p, x] = &a.bulk[..] {
            let _ = writeln!(
                s,
                "| bulk app → 15001 listener, MB/s median ({} runs) | {:.0} | {:.0} | {:.3}× |",
                p.mb_per_s.len(),
                p.median_mb_per_s,
                x.median_mb_per_s,
                paired(&x.mb_per_s, &p.mb_per_s)
            );
        }
    }

    let _ = writeln!(s, "\n### Goals\n");
    for line in goals(r, cfg) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

/// "MET" only when the measured numbers meet the goal.
fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

/// Each goal of the benchmark issues, with the measured numbers; a goal is called met only
/// when the numbers meet it, and a goal whose phase did not run says so.
pub fn goals(r: &Results, cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let ks: Vec<usize> = cfg.ks.iter().copied().filter(|k| r.latency.iter().any(|x| x.k == *k)).collect();
    for (w, name, goal) in [(Workload::Redirect, "redirect", 1.02), (Workload::Pass, "pass", 1.05)] {
        let ratios: Vec<(usize, f64)> =
            ks.iter().filter_map(|&k| Some((k, ratio(row(r, k, Mode::Ebpf, w)?, baseline(r, k, w)?)))).collect();
        match ratios.iter().copied().max_by(|a, b| a.1.partial_cmp(&b.1).unwrap()) {
            None => out.push(format!("eBPF {name} ≤ {goal:.2}× of no interception at every K: not measured")),
            Some((worst_k, worst)) => {
                // Each K's ratio of `mode` on `workload` against this goal's baseline, with
                // its interval.
                let at_each_k = |mode: Mode, workload: Workload| -> Vec<String> {
                    ks.iter()
                        .filter_map(|&k| {
                            Some(format!("K={k}: {}", ratio_with_ci(row(r, k, mode, workload)?, baseline(r, k, w)?)))
                        })
                        .collect()
                };
                let shown = at_each_k(Mode::Ebpf, w);
                // The same hooks running empty programs: what no program design can go below,
                // measured with the same resolution (a redirect's floor dials the listener).
                let floors = at_each_k(
                    Mode::EmptyPrograms,
                    if w == Workload::Pass { Workload::Pass } else { Workload::Listener },
                );
                let floor = if floors.is_empty() {
                    String::new()
                } else {
                    format!("; empty programs at the same hooks: {}", floors.join(", "))
                };
                out.push(format!(
                    "eBPF {name} ≤ {goal:.2}× of no interception at every K: {} (worst {worst:.3}× at K={worst_k}; {}{floor})",
                    verdict(worst <= goal),
                    shown.join(", ")
                ));
            }
        }
    }
    if let Some(&k) = ks.last() {
        for (w, name) in [(Workload::Pass, "pass"), (Workload::Redirect, "redirect")] {
            let (Some(b), Some(i), Some(e)) =
                (baseline(r, k, w), row(r, k, Mode::Iptables, w), row(r, k, Mode::Ebpf, w))
            else {
                continue;
            };
            // Added latency from the paired ratios (robust to drift), in µs of the baseline.
            let ipt_added = (ratio(i, b) - 1.0) * b.median_us;
            let ebpf_added = (ratio(e, b) - 1.0) * b.median_us;
            let met = ipt_added > 0.0 && 3.0 * ebpf_added <= ipt_added;
            let how = if ebpf_added <= 0.0 {
                "eBPF adds nothing measurable".to_string()
            } else {
                format!("{:.1}× lower", ipt_added / ebpf_added)
            };
            out.push(format!(
                "eBPF's added latency ≤ ⅓ of iptables' at K={k} ({name}): iptables {ipt_added:+.1} µs, eBPF {ebpf_added:+.1} µs ({how}): {}",
                verdict(met)
            ));
        }
    }
    let k = ks.last().copied();
    for a in r.apply.iter().filter(|a| Some(a.k) == k) {
        match a.mode {
            Mode::Ebpf => {
                let in_force = a.in_force_ms.unwrap_or(f64::NAN);
                out.push(format!(
                    "apply / live change of {} CIDRs in eBPF mode ≤ 50 ms: first apply (whole call) {:.1} ms: {}; live change in force after {in_force:.1} ms: {}; live change whole call (removing the old generation after an RCU grace period included) {:.1} ms: {}; held connection survived: {}",
                    a.k,
                    a.apply_ms,
                    verdict(a.apply_ms <= 50.0),
                    verdict(in_force <= 50.0),
                    a.change_ms,
                    verdict(a.change_ms <= 50.0),
                    if a.held_connection_survived { "yes" } else { "NO" }
                ))
            }
            Mode::Iptables => out.push(format!(
                "(beside it) iptables-restore of {} CIDRs: apply {:.1} ms, change {:.1} ms, held connection survived: {}",
                a.k,
                a.apply_ms,
                a.change_ms,
                if a.held_connection_survived { "yes" } else { "NO" }
            )),
            Mode::None | Mode::EbpfAccelerated | Mode::EmptyPrograms => {}
        }
    }
    let bulk = |m: Mode| r.bulk.iter().find(|b| b.mode == m).map(|b| b.median_mb_per_s);
    match (bulk(Mode::Ebpf), bulk(Mode::Iptables), bulk(Mode::None)) {
        (Some(e), Some(i), Some(n)) => {
            let rel = (e / i - 1.0) * 100.0;
            out.push(format!(
                "bulk throughput eBPF ≥ iptables: eBPF {e:.0} MB/s, iptables {i:.0} MB/s ({rel:+.1}%), none {n:.0} MB/s: {}",
                if e >= i {
                    "MET".to_string()
                } else if rel >= -2.0 {
                    format!("NOT MET (by {:.1}%, within the run-to-run noise of ±2%)", -rel)
                } else {
                    "NOT MET".to_string()
                }
            ));
        }
        _ => out.push("bulk throughput eBPF ≥ iptables: not measured".into()),
    }
    match (cps_row(r, Mode::Ebpf), cps_row(r, Mode::Iptables), cps_row(r, Mode::None)) {
        (Some(e), Some(i), Some(n)) => {
            let vs_ipt = paired(&e.rounds_cps, &i.rounds_cps);
            out.push(format!(
                "connections per second under load, eBPF ≥ iptables: eBPF {:.0}/s ({:.3}× of none), iptables {:.0}/s ({:.3}× of none), eBPF/iptables {vs_ipt:.3}× (paired): {}",
                e.median_cps,
                paired(&e.rounds_cps, &n.rounds_cps),
                i.median_cps,
                paired(&i.rounds_cps, &n.rounds_cps),
                verdict(vs_ipt >= 1.0)
            ));
        }
        _ => out.push("connections per second under load: not measured".into()),
    }
    match &r.accel {
        Some(a) => {
            let (Some(bp), Some(bx)) = (a.bulk.first(), a.bulk.get(1)) else { return out };
            let throughput = paired(&bx.mb_per_s, &bp.mb_per_s);
            let lat: Vec<(f64, &str)> =
                [(&a.pingpong, "request/response on one connection"), (&a.rr, "connect + request/response + close")]
                    .iter()
                    .filter_map(|(rows, name)| match &rows[..] {
                        [p, x] => Some((ratio(x, p), *name)),
                        _ => None,
                    })
                    .collect();
            let regression = lat.iter().any(|(v, _)| *v > 1.0);
            let lat_text: Vec<String> = lat.iter().map(|(v, n)| format!("{n} {v:.3}×")).collect();
            out.push(format!(
                "acceleration becomes the default only with bulk throughput ≥ 1.3× and no latency regression: throughput {throughput:.3}× ({}), latency {} ({}); and only if it is invisible to every application, which it is not on this kernel (a blocking reader can get EAGAIN at the peer's close, a splice() reader does not see redirected bytes: tests/ebpf_accelerate.rs) → {}",
                verdict(throughput >= 1.3),
                lat_text.join(", "),
                if regression { "NOT MET: a regression" } else { "MET: no regression" },
                "stays off by default (opt-in `--accelerate`)"
            ));
        }
        None => out.push("socket-level acceleration: not measured".into()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confidence_interval_is_the_binomial_order_statistics_around_the_median() {
        // Per-round ratios 1.00, 1.01, …, 1.59 (shuffled: pairing sorts them itself).
        let mut a: Vec<f64> = (0..60).map(|i| 100.0 + i as f64).collect();
        a.reverse();
        let b = vec![100.0; 60];
        let (lo, hi) = paired_ci(&a, &b).unwrap();
        // n = 60: ranks 30 ∓ 0.98·√60 = 30 ∓ 7.59 → 22 and 38 (0-based).
        assert!((lo - 1.22).abs() < 1e-9, "{lo}");
        assert!((hi - 1.38).abs() < 1e-9, "{hi}");
        let m = paired(&a, &b);
        assert!(lo <= m && m <= hi, "{lo} {m} {hi}");
        assert_eq!(paired_ci(&a[..5], &b[..5]), None, "too few rounds for an interval");
    }
}
