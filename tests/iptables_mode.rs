//! iptables mode on the real kernel: osm-edge's chains applied in a fresh pod namespace,
//! real connections, the pure decision function as the oracle.
use anyhow::Result;
use interceptor::{
    iptables::{self, ApplyOptions, apply::save},
    netns::Netns,
    policy::{ChainNames, Family, Policy},
};
use interceptor_tests::{
    Sandbox,
    flows::{FlowCase, matrix, matrix_policy, policy_from},
    sandbox::{POD_IP, POD_IP6},
};

fn options(sb: &Sandbox) -> ApplyOptions {
    ApplyOptions {
        netns: Netns::at(sb.pod_netns()),
        pod_ips: vec![POD_IP.parse().unwrap(), POD_IP6.parse().unwrap()],
        families: vec![Family::Ipv4, Family::Ipv6],
        families_explicit: true,
        names: ChainNames::DOCUMENTED,
    }
}

/// iptables-save of both families without its timestamp comments.
fn tables(sb: &Sandbox) -> String {
    let ns = Netns::at(sb.pod_netns());
    let mut out = String::new();
    for f in [Family::Ipv4, Family::Ipv6] {
        for table in ["nat", "filter"] {
            let cmd = ns.command(f.save_command()).unwrap().args(["-t", table]).output().unwrap();
            out.push_str(&String::from_utf8_lossy(&cmd.stdout));
        }
    }
    out.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

fn run_all(sb: &Sandbox, policy: &Policy, flows: &[FlowCase]) -> Result<()> {
    let mut failures = Vec::new();
    for c in flows {
        if let Err(e) = sb.check_flow(policy, c) {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} flows disagree with the oracle:\n{}",
        failures.len(),
        flows.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn every_flow_of_the_matrix_lands_where_the_decision_function_says() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.start_servers()?;
    let policy = matrix_policy();
    iptables::apply(&policy, &options(&sb))?;
    run_all(&sb, &policy, &matrix())
}

#[test]
fn inclusion_list_redirects_only_included_ranges() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.start_servers()?;
    let policy = policy_from(&[("outbound-ip-range-inclusion-list", "203.0.113.0/25")]);
    iptables::apply(&policy, &options(&sb))?;
    let flows: Vec<FlowCase> = matrix().into_iter().filter(|c| !c.name.starts_with("peer")).collect();
    run_all(&sb, &policy, &flows)?;
    // Spot checks of what the oracle said, so this test cannot pass vacuously.
    let included = sb.run_flow(&flows.iter().find(|c| c.dst.to_string() == "203.0.113.20:443").unwrap().clone())?;
    assert_eq!(included.server.as_deref(), Some("sidecar-out"));
    let not_included = sb.run_flow(&flows.iter().find(|c| c.dst.to_string() == "198.51.100.1:80").unwrap().clone())?;
    assert_eq!(not_included.server.as_deref(), Some("world"));
    Ok(())
}

#[test]
fn pod_ip_mode_sends_the_proxys_localhost_connections_to_the_pod_ip() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.start_servers()?;
    let policy = policy_from(&[("local-proxy-mode", "PodIP")]);
    iptables::apply(&policy, &options(&sb))?;
    let flows: Vec<FlowCase> =
        matrix().into_iter().filter(|c| c.name.starts_with("proxy") || c.name.starts_with("app →")).collect();
    run_all(&sb, &policy, &flows)?;
    let c = flows.iter().find(|c| c.name == "proxy → 127.0.0.1 (the app)").unwrap();
    let landing = sb.run_flow(c)?;
    assert_eq!(landing.server.as_deref(), Some("app"));
    assert_eq!(landing.peer_ip.as_deref(), Some("127.0.0.1"), "DNAT keeps the loopback source");
    Ok(())
}

#[test]
fn more_than_15_excluded_ports_apply_and_work() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.start_servers()?;
    let ports: Vec<String> = (7000..7020).map(|p| p.to_string()).chain(["6379".to_string()]).collect();
    let list = ports.join(",");
    let policy = policy_from(&[("outbound-port-exclusion-list", &list)]);
    iptables::apply(&policy, &options(&sb))?;
    let c = FlowCase {
        name: "app → 21st excluded port",
        actor: interceptor_tests::Actor::App,
        dst: "203.0.113.20:6379".parse()?,
        udp: false,
    };
    let (landing, expected) = sb.check_flow(&policy, &c)?;
    assert_eq!(landing.server.as_deref(), Some("world"));
    assert_eq!(
        expected.decision.rule.as_deref(),
        Some("-A PROXY_OUTPUT -p tcp --match multiport --dports 7015,7016,7017,7018,7019,6379 -j RETURN")
    );
    Ok(())
}

#[test]
fn apply_is_idempotent_and_a_changed_policy_replaces_the_old_one() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    let opts = options(&sb);
    let pod_ip = policy_from(&[("local-proxy-mode", "PodIP"), ("outbound-port-exclusion-list", "6379")]);
    iptables::apply(&pod_ip, &opts)?;
    let once = tables(&sb);
    iptables::apply(&pod_ip, &opts)?;
    assert_eq!(tables(&sb), once, "applying twice must equal applying once");
    // One jump per family (IPv4 and IPv6 tables), one DNAT per family.
    assert_eq!(once.matches("-A PREROUTING -p tcp -j PROXY_INBOUND").count(), 2, "{once}");
    assert_eq!(once.matches("-A OUTPUT -p tcp -j PROXY_OUTPUT").count(), 2);
    assert_eq!(once.matches("DNAT --to-destination 198.51.100.2").count(), 1);
    assert_eq!(once.matches("DNAT --to-destination 2001:db8:1::2").count(), 1);

    let other = policy_from(&[("outbound-ip-range-exclusion-list", "203.0.113.0/24")]);
    iptables::apply(&other, &opts)?;
    let now = tables(&sb);
    assert!(iptables::verify(&other, &opts)?.is_empty(), "{:?}", iptables::verify(&other, &opts)?);
    assert!(!now.contains("DNAT"), "the old PodIP rule must be gone:\n{now}");
    assert!(!now.contains("6379"), "the old port exclusion must be gone:\n{now}");
    assert_eq!(now.matches("-A OUTPUT -p tcp -j PROXY_OUTPUT").count(), 2);
    Ok(())
}

#[test]
fn cleanup_restores_the_tables_exactly_and_keeps_other_rules() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    let ns = Netns::at(sb.pod_netns());
    // Somebody else's rules, which must survive.
    let theirs = "*nat\n:THEIRS - [0:0]\n-A PREROUTING -p udp --dport 9999 -j THEIRS\n-A OUTPUT -p tcp --dport 9998 -j RETURN\n-A THEIRS -j RETURN\nCOMMIT\n";
    for f in [Family::Ipv4, Family::Ipv6] {
        let mut child =
            ns.command(f.restore_command())?.arg("--noflush").stdin(std::process::Stdio::piped()).spawn()?;
        use std::io::Write;
        child.stdin.take().unwrap().write_all(theirs.as_bytes())?;
        assert!(child.wait()?.success());
    }
    let before = tables(&sb);
    let opts = options(&sb);
    iptables::apply(&matrix_policy(), &opts)?;
    assert_ne!(tables(&sb), before);
    let removed = iptables::cleanup(&opts)?;
    assert!(removed >= 12, "removed {removed}");
    assert_eq!(tables(&sb), before);
    assert_eq!(iptables::cleanup(&opts)?, 0, "a second cleanup has nothing to do");
    Ok(())
}

#[test]
fn verify_reports_a_tampered_table() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    let opts = options(&sb);
    let policy = matrix_policy();
    iptables::apply(&policy, &opts)?;
    assert_eq!(iptables::verify(&policy, &opts)?, Vec::<String>::new());
    let ns = Netns::at(sb.pod_netns());
    let st = ns
        .command("iptables")?
        .args(["-t", "nat", "-D", "PROXY_OUTPUT", "-d", "203.0.113.10/32", "-j", "RETURN"])
        .status()?;
    assert!(st.success());
    let st = ns.command("iptables")?.args(["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "PROXY_OUTPUT"]).status()?;
    assert!(st.success());
    let problems = iptables::verify(&policy, &opts)?;
    assert!(problems.iter().any(|p| p.contains("missing") && p.contains("203.0.113.10/32")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("unexpected") && p.contains("-j PROXY_OUTPUT")), "{problems:?}");
    Ok(())
}

#[test]
fn ipv6_ranges_are_applied_to_ip6tables_only() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    let opts = options(&sb);
    iptables::apply(&matrix_policy(), &opts)?;
    let v4 = save(&opts.netns, Family::Ipv4)?;
    let v6 = save(&opts.netns, Family::Ipv6)?;
    assert!(v4.contains("-A PROXY_OUTPUT -d 203.0.113.10/32 -j RETURN"), "{v4}");
    assert!(!v4.contains("2001:db8"), "{v4}");
    assert!(v6.contains("-A PROXY_OUTPUT -d 2001:db8:2::20/128 -j RETURN"), "{v6}");
    assert!(v6.contains("! -d ::1/128"), "{v6}");
    assert!(!v6.contains("203.0.113"), "{v6}");
    Ok(())
}
