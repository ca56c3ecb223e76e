//! The differential test: one table of flows, run in iptables mode and in eBPF mode on
//! fresh namespaces. Every flow must land on the same listener with the same original
//! destination and the same peer address in both modes, both must agree with the pure
//! decision function, and the eBPF counters must name the oracle's reason.
use std::fmt::Write as _;

use anyhow::Result;
use interceptor::{
    iptables::{self, ApplyOptions},
    netns::Netns,
    policy::{ChainNames, Family, Policy},
};
use interceptor_tests::{
    Actor, FlowCase, Sandbox,
    flows::{counted_reasons, matrix, matrix_policy, policy_from},
    sandbox::{POD_IP, POD_IP6},
};

fn iptables_sandbox(policy: &Policy) -> Result<Sandbox> {
    let sb = Sandbox::new()?;
    sb.start_servers()?;
    let opts = ApplyOptions {
        netns: Netns::at(sb.pod_netns()),
        pod_ips: vec![POD_IP.parse()?, POD_IP6.parse()?],
        families: vec![Family::Ipv4, Family::Ipv6],
        families_explicit: true,
        names: ChainNames::DOCUMENTED,
    };
    iptables::apply(policy, &opts)?;
    Ok(sb)
}

fn ebpf_sandbox(policy: &Policy) -> Result<Sandbox> {
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(policy)?;
    // The sidecar starts after enrollment, as in a pod whose containers start later.
    sb.start_servers()?;
    Ok(sb)
}

/// Runs `flows` in both modes; returns (rows of the report, failures).
fn compare(label: &str, policy: &Policy, flows: &[FlowCase]) -> Result<(Vec<String>, Vec<String>)> {
    let ipt = iptables_sandbox(policy)?;
    let ebpf = ebpf_sandbox(policy)?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for c in flows {
        let a = ipt.check_flow(policy, c);
        let before = ebpf.counters()?;
        let b = ebpf.check_flow(policy, c);
        let after = ebpf.counters()?;
        let (la, lb, expected) = match (a, b) {
            (Ok((la, e)), Ok((lb, _))) => (la, lb, e),
            (a, b) => {
                if let Err(e) = a {
                    failures.push(format!("[{label}] iptables: {e:#}"));
                }
                if let Err(e) = b {
                    failures.push(format!("[{label}] eBPF: {e:#}"));
                }
                continue;
            }
        };
        if (&la.server, &la.orig, &la.peer_ip) != (&lb.server, &lb.orig, &lb.peer_ip) {
            failures.push(format!("[{label}] {:?}: iptables {la:?} ≠ eBPF {lb:?}", c.name));
        }
        if !c.udp {
            let counted = counted_reasons(&before, &after, c.actor == Actor::Peer);
            let want: Vec<_> = expected.decision.reason.into_iter().collect();
            if counted != want {
                failures
                    .push(format!("[{label}] {:?}: eBPF counted {counted:?}, the oracle's reason is {want:?}", c.name));
            }
        }
        rows.push(format!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            c.name,
            c.dst,
            la.server.as_deref().unwrap_or("-"),
            la.orig.as_deref().unwrap_or("-"),
            expected.decision.reason.map(|r| r.name()).unwrap_or("-"),
            if la.server == lb.server && la.orig == lb.orig && la.peer_ip == lb.peer_ip { "agree" } else { "DIFFER" },
        ));
    }
    Ok((rows, failures))
}

#[test]
fn both_modes_land_every_flow_at_the_same_place() -> Result<()> {
    interceptor_tests::needs_root!();
    let outbound: Vec<FlowCase> = matrix().into_iter().filter(|c| c.actor != Actor::Peer).collect();
    let cases: Vec<(&str, Policy, Vec<FlowCase>)> = vec![
        ("exclusions", matrix_policy(), matrix()),
        (
            "inclusion",
            policy_from(&[("outbound-ip-range-inclusion-list", "203.0.113.0/25,2001:db8:2::/64")]),
            outbound.clone(),
        ),
        ("pod-ip", policy_from(&[("local-proxy-mode", "PodIP")]), outbound),
    ];
    let mut report = String::from(
        "| policy | flow | destination | landed on | original destination | reason | modes |\n|---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    let mut total = 0;
    for (label, policy, flows) in &cases {
        let (rows, f) = compare(label, policy, flows)?;
        total += flows.len();
        for r in rows {
            writeln!(report, "{r}")?;
        }
        failures.extend(f);
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("differential.md");
    std::fs::write(&path, &report)?;
    println!("{report}\n{total} flows compared, {} disagreements (report: {})", failures.len(), path.display());
    assert!(failures.is_empty(), "{} of {total} flows disagree:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
