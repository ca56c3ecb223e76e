//! eBPF mode answers exactly as REDIRECT + conntrack would — or fails visibly — at the edges
//! where connection state is created, outlived, raced or reused. Wherever iptables mode has
//! the behaviour, each scenario runs in both modes and the answers must be equal.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, ensure};
use interceptor::policy::Policy;
use interceptor_tests::{
    Actor, FlowCase, Mode, Sandbox,
    flows::{Landing, matrix_policy},
    procs::{Collecting, command, netprobe},
    sandbox::{APP_UID, PROXY_UID},
};
use serde_json::Value;

fn lines_json(lines: &[String]) -> Result<Vec<Value>> {
    lines.iter().map(|l| serde_json::from_str(l).with_context(|| format!("bad line {l:?}"))).collect()
}

fn flow(actor: Actor, dst: &str) -> FlowCase {
    FlowCase { name: "flow", actor, dst: dst.parse().unwrap(), udp: false }
}

/// A sidecar stand-in that accepts nothing for `wait_ms`, then accepts and reports.
fn slow_sidecar(sb: &Sandbox, wait_ms: u64, backlog: u32) -> Result<Collecting> {
    let mut cmd = command(&netprobe(), &sb.in_pod(PROXY_UID))?;
    let (wait, backlog) = (wait_ms.to_string(), backlog.to_string());
    cmd.args(["hold-accept", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001", "--wait-ms", &wait]);
    cmd.args(["--backlog", &backlog, "--idle-ms", "1500"]);
    Collecting::start(cmd, "slow sidecar")
}

/// Item 1: the application connects, sends and closes (FIN, or a reset with SO_LINGER 0)
/// while the sidecar is slow to accept; conntrack keeps the entry, so must we.
#[test]
fn the_original_destination_outlives_a_client_that_closes_before_the_sidecar_accepts() -> Result<()> {
    let mut results = BTreeMap::new();
    for mode in Mode::BOTH {
        let sb = Sandbox::new()?;
        sb.intercept(mode, &Policy::default())?;
        let sidecar = slow_sidecar(&sb, 1500, 128)?;
        let mut sent = Vec::new();
        for (dst, linger0) in [
            ("203.0.113.20:80", false),
            ("203.0.113.20:443", true),
            ("[2001:db8:2::10]:80", false),
            ("[2001:db8:2::10]:443", true),
        ] {
            let mut args = vec!["send-close", "--to", dst, "--count", "5"];
            if linger0 {
                args.push("--linger0");
            }
            let out = sb.probe(&sb.in_pod(APP_UID), &args, Duration::from_secs(30))?;
            for v in lines_json(&out.lines().map(str::to_string).collect::<Vec<_>>())? {
                ensure!(v["ok"] == true, "{mode:?}: connect to {dst} failed: {v}");
                sent.push((v["sockname"].as_str().unwrap_or_default().to_string(), dst.to_string(), linger0));
            }
        }
        let accepted = lines_json(&sidecar.finish(Duration::from_secs(20))?)?;
        // Every connection that was closed gracefully is accepted (the kernel completed it);
        // each one's SO_ORIGINAL_DST must be the destination its application dialled.
        let mut wrong = Vec::new();
        let mut answered = 0;
        for a in &accepted {
            // A reset connection has no peer any more: the line it sent names it.
            let data_peer = a["data"].as_str().and_then(|d| d.split(' ').nth(2)).unwrap_or_default();
            let peer = a["peer"].as_str().filter(|p| !p.is_empty()).unwrap_or(data_peer);
            let Some((_, dst, _)) =
                sent.iter().find(|(sock, _, _)| interceptor_tests::flows::same_endpoint(sock, peer))
            else {
                wrong.push(format!("accepted a connection nobody sent: {a}"));
                continue;
            };
            if a["orig"].as_str() != Some(dst.as_str()) {
                wrong.push(format!("{peer} dialled {dst}, SO_ORIGINAL_DST said {} / {}", a["orig"], a["orig_error"]));
            } else {
                answered += 1;
            }
        }
        let graceful = sent.iter().filter(|s| !s.2).count();
        ensure!(wrong.is_empty(), "{mode:?}: {} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
        ensure!(
            answered >= graceful,
            "{mode:?}: only {answered} of the {graceful} gracefully closed connections accepted"
        );
        results.insert(format!("{mode:?}"), answered);
    }
    println!("connections answered correctly after the client closed: {results:?}");
    assert_eq!(results["Iptables"], results["Ebpf"], "both modes accept and answer the same connections");
    Ok(())
}

/// Item 3: connect() to 0.0.0.0, :: or ::ffff:0.0.0.0 goes to the loopback address (or to
/// the socket's bound address), where osm-edge's rules let it through.
#[test]
fn unspecified_destinations_are_loopback_as_the_kernel_makes_them() -> Result<()> {
    let cases: [(Actor, &str, Option<&str>); 5] = [
        (Actor::App, "0.0.0.0:8080", None),
        (Actor::App, "[::]:8080", None),
        (Actor::App, "[::ffff:0.0.0.0]:8080", None),
        (Actor::Proxy, "0.0.0.0:8080", None),
        (Actor::App, "0.0.0.0:8080", Some("198.51.100.2:0")),
    ];
    let mut seen: BTreeMap<usize, Vec<Landing>> = BTreeMap::new();
    for mode in Mode::BOTH {
        let sb = Sandbox::new()?;
        sb.intercept(mode, &Policy::default())?;
        sb.start_servers()?;
        for (i, (actor, dst, bind)) in cases.iter().enumerate() {
            let who = sb.in_pod(if *actor == Actor::App { APP_UID } else { PROXY_UID });
            let mut args = vec!["connect", "--to", dst, "--timeout-ms", "2000"];
            if let Some(b) = bind {
                args.extend(["--bind", b]);
            }
            let out = sb.probe(&who, &args, Duration::from_secs(10))?;
            let l = Landing::from_json(&serde_json::from_str(out.trim())?);
            ensure!(l.server.as_deref() == Some("app"), "{mode:?} {actor:?} → {dst} (bind {bind:?}) landed {l:?}");
            seen.entry(i).or_default().push(l);
        }
    }
    for (i, l) in &seen {
        assert_eq!(l[0], l[1], "case {:?}: iptables {:?} ≠ eBPF {:?}", cases[*i], l[0], l[1]);
    }
    Ok(())
}

/// Item 4: a pod with its own user namespace (hostUsers: false). The proxy's UID 1500 is a
/// different kernel UID; its traffic must still be recognised and never redirected.
#[test]
fn a_user_namespaced_pod_keeps_its_proxy_traffic_direct() -> Result<()> {
    for mode in Mode::BOTH {
        let sb = Sandbox::with_userns()?;
        sb.intercept(mode, &Policy::default())?;
        sb.start_servers()?;
        let app = sb.run_flow(&flow(Actor::App, "198.51.100.1:80"))?;
        assert_eq!(
            (app.server.as_deref(), app.orig.as_deref()),
            (Some("sidecar-out"), Some("198.51.100.1:80")),
            "{mode:?}: the app's connection goes to the sidecar"
        );
        let proxy = sb.run_flow(&flow(Actor::Proxy, "198.51.100.1:80"))?;
        assert_eq!(proxy.server.as_deref(), Some("world"), "{mode:?}: the proxy's own traffic is never redirected");
        let inbound = sb.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
        assert_eq!(inbound.server.as_deref(), Some("sidecar-in"), "{mode:?}: inbound reaches the sidecar");
    }
    // A proxy UID the user namespace does not map cannot be recognised: enroll refuses.
    let sb = Sandbox::with_userns()?;
    sb.load_ebpf()?;
    let unmapped = Policy { proxy_uid: 70_000, ..Policy::default() };
    let err = sb.enroll(&unmapped).expect_err("an unmapped proxy UID must be refused");
    let text = format!("{err:#}");
    assert!(text.contains("70000") && text.contains("user namespace"), "{text}");
    Ok(())
}

/// Item 5: a connection is only ever steered to a listener of its own network namespace.
#[test]
fn inbound_steering_never_crosses_network_namespaces() -> Result<()> {
    let a = Sandbox::new()?;
    a.load_ebpf()?;
    let b = Sandbox::with_host(3)?;
    b.share_cgroup_of(&a);
    a.enroll(&Policy::default())?;
    b.enroll_in(&a.pins, &Policy::default())?;
    a.start_servers()?;
    b.serve(&b.in_pod(PROXY_UID), "b-sidecar-in", &["0.0.0.0:15003".into(), "[::]:15003".into()], &[])?;
    // b takes a's address after enrollment, and b's world dials it.
    interceptor_tests::procs::ip(&["-n", &b.pod, "addr", "add", "198.51.100.2/32", "dev", "eth0"])?;
    let l = b.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
    assert_ne!(l.server.as_deref(), Some("sidecar-in"), "steered into another pod's listener: {l:?}");
    assert_eq!(l.server.as_deref(), Some("b-sidecar-in"), "steered to its own sidecar: {l:?}");
    // a is untouched.
    let la = a.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
    assert_eq!(la.server.as_deref(), Some("sidecar-in"));

    // Enrolling a pod that holds an address already enrolled for another pod is refused,
    // naming both.
    let c = Sandbox::with_host(4)?;
    c.share_cgroup_of(&a);
    interceptor_tests::procs::ip(&["-n", &c.pod, "addr", "add", "198.51.100.2/32", "dev", "eth0"])?;
    let err = c.enroll_in(&a.pins, &Policy::default()).expect_err("a duplicate address must be refused");
    let text = format!("{err:#}");
    assert!(text.contains("198.51.100.2") && text.contains(&a.pod) && text.contains(&c.pod), "{text}");
    Ok(())
}

/// Item 6: one SO_REUSEPORT listener per worker (Envoy's default). Inbound keeps working
/// while any of them is open; a listener not owned by the proxy UID is never a target; a
/// changed inbound port takes effect on re-enroll.
#[test]
fn several_reuseport_listeners_and_only_the_proxys() -> Result<()> {
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&Policy::default())?;
    for i in 0..3 {
        sb.start(
            &sb.in_pod(PROXY_UID),
            &["serve", "--name", &format!("worker-{i}"), "--listen", "0.0.0.0:15003", "--reuseport", "1"],
        )?;
    }
    // The application listens on the inbound port too (IPv6 only): never a target.
    sb.serve(&sb.in_pod(APP_UID), "app-15003", &["[::]:15003".into()], &[])?;
    for closing in ["worker-2", "worker-0", "worker-1"] {
        for _ in 0..4 {
            let l = sb.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
            let server = l.server.clone().unwrap_or_default();
            assert!(server.starts_with("worker-"), "inbound must reach a live worker: {l:?}");
            assert_eq!(l.orig.as_deref(), Some("198.51.100.2:8080"));
        }
        let v6 = sb.run_flow(&flow(Actor::Peer, "[2001:db8:1::2]:8080"))?;
        assert_ne!(v6.server.as_deref(), Some("app-15003"), "a listener of another UID is not the sidecar: {v6:?}");
        let name = format!("serve --name {closing} --listen 0.0.0.0:15003 --reuseport 1");
        assert_eq!(sb.kill_named(&name), 1, "{name}");
    }
    let l = sb.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
    assert_eq!(l.server, None, "no proxy listener left: refused, {l:?}");

    // A new inbound port on re-enroll: its listener (already listening) is the target.
    sb.serve(&sb.in_pod(PROXY_UID), "sidecar-in", &["0.0.0.0:15003".into()], &[])?;
    sb.serve(&sb.in_pod(PROXY_UID), "sidecar-in-15033", &["0.0.0.0:15033".into()], &[])?;
    assert_eq!(sb.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?.server.as_deref(), Some("sidecar-in"));
    let mut moved = Policy::default();
    moved.ports.inbound = 15033;
    sb.enroll(&moved)?;
    let l = sb.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
    assert_eq!((l.server.as_deref(), l.orig.as_deref()), (Some("sidecar-in-15033"), Some("198.51.100.2:8080")));
    Ok(())
}

/// Item 8: a socket whose redirected connect() failed, connected again elsewhere, reports
/// the right peer and source: no stale record, no stale bind.
#[test]
fn a_socket_reused_after_a_failed_redirect_has_no_stale_state() -> Result<()> {
    let cases = [
        // (first destination: fails, second destination)
        ("203.0.113.20:80", "203.0.113.200:80"), // redirected (no sidecar) → excluded interface eth1
        ("203.0.113.20:80", "203.0.113.10:80"),  // redirected (no sidecar) → excluded CIDR
        ("[2001:db8:2::10]:80", "[2001:db8:2::20]:80"),
    ];
    let mut seen: Vec<Vec<Value>> = vec![Vec::new(); cases.len()];
    for mode in Mode::BOTH {
        let sb = Sandbox::new()?;
        sb.intercept(mode, &matrix_policy())?;
        // The world only: nothing listens on 15001, so the redirected connect is refused.
        let world: Vec<String> = ["0.0.0.0:80", "[::]:80"].iter().map(|s| s.to_string()).collect();
        sb.serve(&sb.in_world(), "world", &world, &[])?;
        for (i, (first, then)) in cases.iter().enumerate() {
            let out =
                sb.probe(&sb.in_pod(APP_UID), &["reconnect", "--to", first, "--then", then], Duration::from_secs(10))?;
            let v: Value = serde_json::from_str(out.trim())?;
            ensure!(v["ok"] == true, "{mode:?} {first} then {then}: {v}");
            ensure!(v["first"].as_str().unwrap_or_default().contains("refused"), "{mode:?}: first connect {v}");
            ensure!(v["reply"]["server"] == "world", "{mode:?}: {v}");
            ensure!(v["peername"].as_str() == Some(*then), "{mode:?}: getpeername after reconnect: {v}");
            seen[i].push(serde_json::json!({"peer_seen_by_world": v["reply"]["peer"].as_str().map(|p| p.rsplit_once(':').map(|x| x.0.to_string())), "sockname_ip": v["sockname"].as_str().map(|p| p.rsplit_once(':').map(|x| x.0.to_string()))}));
        }
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s[0], s[1], "case {:?}: iptables {} ≠ eBPF {}", cases[i], s[0], s[1]);
    }
    Ok(())
}

/// Item 9: a pod with several addresses: the sidecar sees the peer address the kernel's
/// source selection picks (gateway subnet for IPv4, longest matching prefix for IPv6),
/// exactly as under REDIRECT.
#[test]
fn the_peer_address_follows_the_kernels_source_selection() -> Result<()> {
    let dsts = ["203.0.113.40:80", "203.0.113.5:80", "[2001:db8:2::10]:80", "198.51.100.1:80"];
    let mut seen: Vec<Vec<Option<String>>> = vec![Vec::new(); dsts.len()];
    for mode in Mode::BOTH {
        let sb = Sandbox::new()?;
        let ip = |args: &[&str]| {
            let mut a = vec!["-n", sb.pod.as_str()];
            a.extend_from_slice(args);
            interceptor_tests::procs::ip(&a)
        };
        // A second subnet on eth0 with its own gateway, a route with a preferred source,
        // and a second IPv6 prefix.
        ip(&["addr", "add", "203.0.113.66/26", "dev", "eth0"])?;
        ip(&["route", "add", "203.0.113.32/27", "via", "203.0.113.65", "dev", "eth0"])?;
        ip(&["addr", "add", "198.51.100.20/25", "dev", "eth0"])?;
        ip(&["route", "add", "203.0.113.0/28", "via", "198.51.100.1", "dev", "eth0", "src", "198.51.100.20"])?;
        ip(&["addr", "add", "2001:db8:3::2/64", "dev", "eth0", "nodad"])?;
        sb.intercept(mode, &Policy::default())?;
        sb.start_sidecar()?;
        for (i, dst) in dsts.iter().enumerate() {
            let l = sb.run_flow(&flow(Actor::App, dst))?;
            ensure!(l.server.as_deref() == Some("sidecar-out"), "{mode:?} {dst}: {l:?}");
            ensure!(l.orig.as_deref() == Some(*dst), "{mode:?} {dst}: {l:?}");
            seen[i].push(l.peer_ip);
        }
    }
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s[0], s[1], "{}: the sidecar saw peer {:?} under iptables, {:?} under eBPF", dsts[i], s[0], s[1]);
    }
    Ok(())
}
