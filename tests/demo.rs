//! `cargo xtask demo`: intercepts real traffic in a sandbox (a pod and a world network
//! namespace, a child cgroup, a sidecar stand-in running as UID 1500 that reads
//! SO_ORIGINAL_DST, an application, world servers), prints where each connection landed,
//! and removes everything.
use std::process::ExitCode;

use anyhow::Result;
use interceptor::{
    iptables::{self, ApplyOptions},
    netns::Netns,
    policy::{ChainNames, Family, Verdict},
};
use interceptor_tests::{
    Actor, FlowCase, Sandbox,
    flows::{matrix_policy, matrix_policy_args},
    sandbox::{POD_IP, POD_IP6},
};

fn flows() -> Vec<FlowCase> {
    let c = |name, actor, dst: &str| FlowCase { name, actor, dst: dst.parse().unwrap(), udp: false };
    let mut udp = c("app → world, UDP (never intercepted)", Actor::App, "198.51.100.1:53");
    udp.udp = true;
    vec![
        c("app → world", Actor::App, "198.51.100.1:80"),
        c("app → world over IPv6", Actor::App, "[2001:db8:2::10]:80"),
        c("app → excluded range", Actor::App, "203.0.113.10:80"),
        c("app → excluded port", Actor::App, "203.0.113.20:6379"),
        c("app → through excluded interface", Actor::App, "203.0.113.200:80"),
        c("app → itself (pod IP)", Actor::App, "198.51.100.2:8080"),
        c("sidecar → world (its own traffic)", Actor::Proxy, "198.51.100.1:80"),
        c("sidecar → app via pod IP", Actor::Proxy, "198.51.100.2:8080"),
        udp,
        c("peer → app", Actor::Peer, "198.51.100.2:8080"),
        c("peer → app over IPv6", Actor::Peer, "[2001:db8:1::2]:8080"),
        c("peer → excluded inbound port", Actor::Peer, "198.51.100.2:9090"),
        c("peer → prometheus port", Actor::Peer, "198.51.100.2:15010"),
    ]
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.iter().position(|a| a == "--mode").and_then(|i| args.get(i + 1)).map(String::as_str) {
        None | Some("ebpf") => "ebpf",
        Some("iptables") => "iptables",
        Some(other) => anyhow::bail!("unknown --mode {other:?} (ebpf or iptables)"),
    };
    let policy = matrix_policy();
    let sb = Sandbox::new()?;
    println!(
        "interceptor demo — {} mode",
        if mode == "ebpf" { "eBPF (no NAT, no iptables)" } else { "iptables (osm-edge's chains)" }
    );
    println!("sandbox: pod netns {}, world netns {}, cgroup {}", sb.pod, sb.world, sb.cgroup.display());
    let flags: Vec<String> = matrix_policy_args().iter().map(|(k, v)| format!("--{k} {v}")).collect();
    println!("policy:  {}\n", flags.join(" "));
    if mode == "ebpf" {
        sb.load_ebpf()?;
        let r = sb.enroll(&policy)?;
        println!(
            "loaded at {}; pod enrolled (netns cookie {}, generation {}: {})",
            sb.pins.path().display(),
            r.netns_cookie,
            r.generation,
            r.objects
        );
    } else {
        iptables::apply(
            &policy,
            &ApplyOptions {
                netns: Netns::at(sb.pod_netns()),
                pod_ips: vec![POD_IP.parse()?, POD_IP6.parse()?],
                families: vec![Family::Ipv4, Family::Ipv6],
                families_explicit: true,
                names: ChainNames::DOCUMENTED,
            },
        )?;
        println!("applied PROXY_INBOUND, PROXY_IN_REDIRECT, PROXY_OUTPUT, PROXY_REDIRECT (IPv4 and IPv6)");
    }
    // The sidecar (UID 1500) and the application start after interception is in place.
    sb.start_servers()?;
    println!();
    println!(
        "{:<2} {:<38} {:<22} {:<12} {:<24} decision (rule)",
        "#", "connection", "destination", "landed on", "SO_ORIGINAL_DST"
    );
    let mut all_ok = true;
    for (i, c) in flows().iter().enumerate() {
        let (landing, expected, ok) = match sb.check_flow(&policy, c) {
            Ok((l, e)) => (l, e, true),
            Err(err) => {
                eprintln!("  !! {err:#}");
                (sb.run_flow(c)?, sb.expected(&policy, c)?, false)
            }
        };
        all_ok &= ok;
        let verdict = match expected.decision.verdict {
            Verdict::RedirectOutbound { port } => format!("redirect :{port}"),
            Verdict::RedirectInbound { port } => format!("redirect :{port}"),
            Verdict::DnatPodIp { .. } => "DNAT pod IP".into(),
            Verdict::DnatDnsProxy { to } => format!("DNAT {to}"),
            Verdict::Pass => "pass".into(),
        };
        let reason = expected.decision.reason.map(|r| r.name()).unwrap_or("no rule: not TCP");
        println!(
            "{:<2} {:<38} {:<22} {:<12} {:<24} {verdict} ({reason}){}",
            i + 1,
            c.name,
            c.dst.to_string(),
            landing.server.as_deref().unwrap_or(landing.error.as_deref().unwrap_or("-")),
            landing.orig.as_deref().unwrap_or("-"),
            if ok { "" } else { "  <-- differs from the policy" },
        );
    }
    if mode == "ebpf" {
        let status = interceptor::ebpf::status(&sb.pins)?;
        if let Some(p) = status.pods.first() {
            println!(
                "\neBPF counters: outbound redirected {} passed {:?}; inbound redirected {} passed {:?}",
                p.outbound.redirected, p.outbound.passed, p.inbound.redirected, p.inbound.passed
            );
        }
    }
    println!(
        "\n{}",
        if all_ok {
            "every connection landed where the policy says; removing the sandbox"
        } else {
            "SOME CONNECTIONS DID NOT LAND WHERE THE POLICY SAYS"
        }
    );
    drop(sb);
    Ok(all_ok)
}
