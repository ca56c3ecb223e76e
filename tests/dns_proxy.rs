//! osm-edge's local DNS proxy rule, `-A OUTPUT -p udp -d 127.0.0.153 --dport 53 -j DNAT
//! --to-destination 127.0.0.153:5300`, in iptables mode and in eBPF mode, with real
//! resolvers: dnsmasq stands in for the sidecar's DNS proxy on 127.0.0.153:5300 and a second
//! dnsmasq on 127.0.0.153:53 answers differently, so every answer tells where its query went.
//! The clients are the pod's processes (its cgroup and network namespace): the glibc resolver
//! (`getent hosts`, with the pod's own resolv.conf), `dig @127.0.0.153`, and `netprobe dns`
//! on connected and unconnected (sendto) sockets, IPv4 and dual-stack (v4-mapped), which
//! prints the source of the reply (recvfrom) and getpeername(). Both modes must give the
//! same result for every query, and that result is the one written here.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use interceptor::{
    ebpf,
    iptables::{self, ApplyOptions},
    netns::Netns,
    policy::{ChainNames, Family, Policy},
};
use interceptor_common::Reason;
use interceptor_tests::{
    Sandbox,
    dns::{Dnsmasq, NAMES, PLAIN_ANSWERS, PROXY_ANSWERS, PodResolver, query, query_waiting},
    procs::Identity,
    sandbox::{APP_UID, PROXY_UID},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Iptables,
    Ebpf,
}

/// A pod with its DNS servers and resolver configuration (dropped before the sandbox).
struct Pod {
    resolver: PodResolver,
    _servers: Vec<Dnsmasq>,
    sb: Sandbox,
}

fn policy(dns: bool) -> Policy {
    Policy { local_dns_proxy: dns, ..Policy::default() }
}

fn pod(mode: Mode, dns: bool, listener: bool) -> Result<Pod> {
    let sb = Sandbox::new()?;
    match mode {
        Mode::Iptables => {
            let opts = ApplyOptions {
                netns: Netns::at(sb.pod_netns()),
                pod_ips: vec![sb.pod_ip().parse()?, sb.pod_ip6().parse()?],
                families: vec![Family::Ipv4, Family::Ipv6],
                families_explicit: true,
                names: ChainNames::DOCUMENTED,
            };
            iptables::apply(&policy(dns), &opts)?;
        }
        Mode::Ebpf => {
            sb.load_ebpf()?;
            sb.enroll(&policy(dns))?;
        }
    }
    sb.start_servers()?;
    let mut servers = vec![Dnsmasq::plain(&sb)?];
    if listener {
        servers.push(Dnsmasq::proxy(&sb)?);
    }
    let resolver = PodResolver::new(&sb)?;
    Ok(Pod { resolver, _servers: servers, sb })
}

/// One `netprobe dns` result as a line: the answer (or the netprobe server that replied),
/// the reply's source and getpeername().
fn probe(who: &Identity, to: &str, name: &str, sendto: bool) -> Result<String> {
    // One second where a lost query is expected; longer for the world, whose first IPv6
    // packet waits for neighbour discovery on links that just came up.
    let timeout = Duration::from_secs(if to.starts_with("127.") || to.starts_with("[::ffff:127.") { 1 } else { 5 });
    let v = query_waiting(who, to, name, sendto, timeout)?;
    let mut line = outcome(&v);
    for next in v["then"].as_array().into_iter().flatten() {
        line.push_str(&format!(", then {}", outcome(next)));
    }
    Ok(line)
}

fn outcome(v: &serde_json::Value) -> String {
    if v["ok"] != true {
        return format!("error: {}", v["error"].as_str().unwrap_or("?"));
    }
    let what = match v["reply"]["server"].as_str() {
        Some(server) => format!("reply of {server}"),
        None => v["answer"].as_str().unwrap_or("no answer").to_string(),
    };
    format!("{what} from {} peer {}", v["from"].as_str().unwrap_or("?"), v["peername"].as_str().unwrap_or("-"))
}

/// What each client got, in a fixed order: (query, result).
fn run_queries(p: &Pod) -> Result<Vec<(String, String)>> {
    let sb = &p.sb;
    let (app, proxy, root) = (sb.in_pod(APP_UID), sb.in_pod(PROXY_UID), sb.in_pod(0));
    let ns = "127.0.0.153:53";
    let mapped = "[::ffff:127.0.0.153]:53";
    let mut out = Vec::new();
    let mut add = |label: &str, got: Result<String>| -> Result<()> {
        out.push((label.to_string(), got?));
        Ok(())
    };
    add("getent hosts app.mesh.test (glibc; uid 1000)", p.resolver.getent(&app, NAMES[0]))?;
    add("getent hosts db.mesh.test (glibc; uid 1500, the proxy)", p.resolver.getent(&proxy, NAMES[1]))?;
    add("dig @127.0.0.153 app.mesh.test (uid 1000)", p.resolver.dig(&app, NAMES[0], false))?;
    add("dig +tcp @127.0.0.153 app.mesh.test (TCP: not the rule's)", p.resolver.dig(&app, NAMES[0], true))?;
    add("connected UDP to 127.0.0.153:53 (uid 1000)", probe(&app, ns, NAMES[0], false))?;
    add("sendto 127.0.0.153:53 (uid 1000)", probe(&app, ns, NAMES[0], true))?;
    add("connected UDP to [::ffff:127.0.0.153]:53 (dual-stack)", probe(&app, mapped, NAMES[0], false))?;
    add("sendto [::ffff:127.0.0.153]:53 (dual-stack)", probe(&app, mapped, NAMES[0], true))?;
    add("connected UDP to 127.0.0.153:53 (uid 1500, the proxy)", probe(&proxy, ns, NAMES[1], false))?;
    add("sendto 127.0.0.153:53 (uid 0)", probe(&root, ns, NAMES[1], true))?;
    add("sendto 127.0.0.153:5300 directly", probe(&app, "127.0.0.153:5300", NAMES[0], true))?;
    add("connected UDP to the world 198.51.100.1:53", probe(&app, "198.51.100.1:53", NAMES[0], false))?;
    add("sendto the world 198.51.100.1:53", probe(&app, "198.51.100.1:53", NAMES[0], true))?;
    add("sendto the world [2001:db8:1::1]:53", probe(&app, "[2001:db8:1::1]:53", NAMES[0], true))?;
    // The same socket, first through the rule, then elsewhere: its later peer and replies
    // are the kernel's own.
    // (A socket bound to loopback by its first connect() can only reconnect within it.)
    let (direct, world) = ("127.0.0.153:5300", "198.51.100.1:53");
    add(
        "connected to 127.0.0.153:53, then to 127.0.0.153:5300 directly",
        probe(&app, &format!("{ns} --to {direct}"), NAMES[0], false),
    )?;
    add("sendto 127.0.0.153:53, then the world", probe(&app, &format!("{ns} --to {world}"), NAMES[0], true))?;
    Ok(out)
}

/// What the DNAT rule and conntrack make of each query of `run_queries`.
fn expected(dns: bool, listener: bool) -> Vec<String> {
    let redirected = dns;
    let answers = if redirected { PROXY_ANSWERS } else { PLAIN_ANSWERS };
    // Redirected to a port nothing listens on: the kernel answers the connected socket with
    // ICMP port unreachable (ECONNREFUSED); an unconnected one never hears back.
    let lost = redirected && !listener;
    let via_ns = |i: usize, connected: bool, from: &str| {
        if lost {
            if connected { "error: connection refused".to_string() } else { "error: timeout".to_string() }
        } else {
            format!("{} from {from} peer {}", answers[i], if connected { from } else { "-" })
        }
    };
    let resolver = |i: usize, failed_exit: i32| {
        if lost { format!("error: exit {failed_exit}") } else { answers[i].to_string() }
    };
    let (ns, mapped) = ("127.0.0.153:53", "[::ffff:127.0.0.153]:53");
    vec![
        // getent exits 2 when nothing resolves, dig 9 when no server replies.
        resolver(0, 2),
        resolver(1, 2),
        resolver(0, 9),
        // TCP from the application to a local address: PROXY_OUTPUT lets it through, to :53.
        PLAIN_ANSWERS[0].to_string(),
        via_ns(0, true, ns),
        via_ns(0, false, ns),
        via_ns(0, true, mapped),
        via_ns(0, false, mapped),
        via_ns(1, true, ns),
        via_ns(1, false, ns),
        // Straight to the proxy's port: nothing to un-NAT, the reply shows :5300.
        if listener {
            format!("{} from 127.0.0.153:5300 peer -", PROXY_ANSWERS[0])
        } else {
            "error: timeout".to_string()
        },
        "reply of world from 198.51.100.1:53 peer 198.51.100.1:53".to_string(),
        "reply of world from 198.51.100.1:53 peer -".to_string(),
        "reply of world from [2001:db8:1::1]:53 peer -".to_string(),
        format!(
            "{}, then {}",
            via_ns(0, true, ns),
            if listener {
                format!("{} from 127.0.0.153:5300 peer 127.0.0.153:5300", PROXY_ANSWERS[0])
            } else {
                "error: connection refused".to_string()
            }
        ),
        format!("{}, then reply of world from 198.51.100.1:53 peer -", via_ns(0, false, ns)),
    ]
}

/// Runs the queries in both modes at once; fails on any difference between the modes or
/// from `expected`. Prints the table.
fn both_modes(title: &str, dns: bool, listener: bool) -> Result<()> {
    let (ipt, ebpf) = std::thread::scope(|s| {
        let a = s.spawn(|| pod(Mode::Iptables, dns, listener).and_then(|p| run_queries(&p)));
        let b = s.spawn(|| pod(Mode::Ebpf, dns, listener).and_then(|p| run_queries(&p)));
        (a.join().expect("iptables thread"), b.join().expect("eBPF thread"))
    });
    let (ipt, ebpf) = (ipt?, ebpf?);
    let want = expected(dns, listener);
    let mut table = format!("\n{title}\n| query | iptables mode | eBPF mode |\n|---|---|---|\n");
    let mut failures = Vec::new();
    for (((label, a), (_, b)), w) in ipt.iter().zip(&ebpf).zip(&want) {
        table.push_str(&format!("| {label} | {a} | {b} |\n"));
        if a != b {
            failures.push(format!("{label}: iptables {a:?} ≠ eBPF {b:?}"));
        }
        if a != w || b != w {
            failures.push(format!("{label}: expected {w:?}, got iptables {a:?}, eBPF {b:?}"));
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "{table}\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn with_the_option_queries_reach_the_dns_proxy_and_replies_come_from_port_53() -> Result<()> {
    interceptor_tests::needs_root!();
    both_modes("local DNS proxy enabled, dnsmasq on 127.0.0.153:5300 and :53", true, true)
}

#[test]
fn without_the_option_queries_reach_127_0_0_153_port_53_unchanged() -> Result<()> {
    interceptor_tests::needs_root!();
    both_modes("local DNS proxy disabled, dnsmasq on 127.0.0.153:5300 and :53", false, true)
}

#[test]
fn without_the_proxy_listener_queries_fail_as_under_the_dnat_rule_never_reaching_port_53() -> Result<()> {
    interceptor_tests::needs_root!();
    both_modes("local DNS proxy enabled, nothing on :5300, dnsmasq on :53", true, false)
}

/// The pod's `dns_proxy` counter.
fn dns_counter(sb: &Sandbox, pins: &ebpf::PinDir) -> Result<u64> {
    Ok(sb.counters_in(pins)?.get(&(Reason::OutDnsProxy as u32)).copied().unwrap_or(0))
}

#[test]
fn ebpf_counts_each_rewrite_shows_it_in_status_and_follows_policy_changes() -> Result<()> {
    interceptor_tests::needs_root!();
    let p = pod(Mode::Ebpf, true, true)?;
    let sb = &p.sb;
    let app = sb.in_pod(APP_UID);
    let answer = |to: &str, sendto: bool| -> Result<String> {
        let v = query(&app, to, NAMES[0], sendto)?;
        Ok(v["answer"].as_str().unwrap_or_default().to_string())
    };

    // One rewrite per connect() or sendto() through the rule, none for anything else.
    for sendto in [false, true] {
        let before = dns_counter(sb, &sb.pins)?;
        assert_eq!(answer("127.0.0.153:53", sendto)?, PROXY_ANSWERS[0]);
        assert_eq!(dns_counter(sb, &sb.pins)? - before, 1, "sendto={sendto}");
    }
    let before = dns_counter(sb, &sb.pins)?;
    answer("127.0.0.153:5300", true)?;
    query(&app, "198.51.100.1:53", NAMES[0], true)?;
    assert_eq!(dns_counter(sb, &sb.pins)?, before, "UDP elsewhere is not counted");

    // One unconnected socket both through the rule and straight to :5300: conntrack would
    // tell the two flows' replies apart, the eBPF mode cannot, so the second kind is refused
    // (visibly: EPERM and a counter) — in either order.
    let refused = |sb: &Sandbox| -> Result<u64> {
        Ok(sb.counters()?.get(&(Reason::OutDnsProxyRefused as u32)).copied().unwrap_or(0))
    };
    for (first, second, first_from) in [
        ("127.0.0.153:53", "127.0.0.153:5300", "127.0.0.153:53"),
        ("127.0.0.153:5300", "127.0.0.153:53", "127.0.0.153:5300"),
    ] {
        let before = refused(sb)?;
        let v = query(&app, &format!("{first} --to {second}"), NAMES[0], true)?;
        assert_eq!((v["answer"].as_str(), v["from"].as_str()), (Some(PROXY_ANSWERS[0]), Some(first_from)), "{v}");
        assert_eq!(v["then"][0]["error"], "operation not permitted", "{first} then {second}: {v}");
        assert_eq!(refused(sb)? - before, 1);
    }
    // (A dual-stack socket connected through the rule sends to its peer through sendmsg4 too:
    // that is no direct send — the dual-stack rows of the tables above show it works.)

    let status = ebpf::status(&sb.pins)?;
    let names: Vec<&str> = status.programs.iter().filter(|p| p.id != 0).map(|p| p.name.as_str()).collect();
    for prog in
        ["dns_proxy_sendmsg4", "dns_proxy_recvmsg4", "dns_proxy_recvmsg6", "intercept_connect4", "dialled_peer6"]
    {
        assert!(names.contains(&prog), "{prog} not loaded: {names:?}");
    }
    let pod_status = &status.pods[0];
    assert!(pod_status.local_dns_proxy);
    assert!(pod_status.outbound.redirected_by_reason.get("dns_proxy").is_some_and(|n| *n >= 2), "{pod_status:?}");
    let text = status.to_string();
    println!("{text}");
    assert!(text.contains("dns proxy on") && text.contains("\"dns_proxy\""), "{text}");

    // Re-enrolled without the option: the next query goes where it is sent...
    sb.enroll(&policy(false))?;
    assert_eq!(answer("127.0.0.153:53", false)?, PLAIN_ANSWERS[0]);
    assert_eq!(answer("127.0.0.153:53", true)?, PLAIN_ANSWERS[0]);
    assert!(!ebpf::status(&sb.pins)?.pods[0].local_dns_proxy);
    // ...and with it again, to the proxy.
    sb.enroll(&policy(true))?;
    assert_eq!(answer("127.0.0.153:53", true)?, PROXY_ANSWERS[0]);
    assert_eq!(p.resolver.getent(&app, NAMES[1])?, PROXY_ANSWERS[1]);
    // Unenrolled: untouched.
    ebpf::unenroll(&Netns::at(sb.pod_netns()), &sb.pins)?;
    assert_eq!(answer("127.0.0.153:53", false)?, PLAIN_ANSWERS[0]);
    assert_eq!(p.resolver.getent(&app, NAMES[1])?, PLAIN_ANSWERS[1]);
    Ok(())
}

#[test]
fn ebpf_pods_without_the_option_on_the_same_node_are_untouched() -> Result<()> {
    interceptor_tests::needs_root!();
    let a = pod(Mode::Ebpf, true, true)?;
    // b: enrolled without the option; c: not enrolled. Both under a's programs.
    let mut results = BTreeMap::new();
    for (host, enroll) in [(3u8, true), (4, false)] {
        let sb = Sandbox::with_host(host)?;
        sb.share_cgroup_of(&a.sb);
        if enroll {
            sb.enroll_in(&a.sb.pins, &policy(false))?;
        }
        let servers = [Dnsmasq::plain(&sb)?, Dnsmasq::proxy(&sb)?];
        let resolver = PodResolver::new(&sb)?;
        let app = sb.in_pod(APP_UID);
        let v = query(&app, "127.0.0.153:53", NAMES[0], true)?;
        let got = (
            resolver.getent(&app, NAMES[0])?,
            v["answer"].as_str().unwrap_or_default().to_string(),
            v["from"].as_str().unwrap_or_default().to_string(),
        );
        drop((resolver, servers));
        results.insert(if enroll { "enrolled without the option" } else { "not enrolled" }, got);
    }
    for (what, got) in &results {
        let want = (PLAIN_ANSWERS[0].to_string(), PLAIN_ANSWERS[0].to_string(), "127.0.0.153:53".to_string());
        assert_eq!(got, &want, "{what}");
    }
    // Meanwhile the pod with the option still gets its proxy.
    let app = a.sb.in_pod(APP_UID);
    assert_eq!(a.resolver.getent(&app, NAMES[0])?, PROXY_ANSWERS[0]);
    Ok(())
}
