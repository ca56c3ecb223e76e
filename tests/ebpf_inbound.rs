//! eBPF mode, inbound: sk_lookup hands every inbound TCP connection to the sidecar's 15003
//! listener without NAT; the listener is discovered when the sidecar calls listen().
use anyhow::Result;
use interceptor::{ebpf, policy::Policy};
use interceptor_common::Reason;
use interceptor_tests::{
    Actor, FlowCase, Sandbox,
    flows::policy_from,
    sandbox::{APP_UID, PROXY_UID},
};

fn inbound(dst: &str) -> FlowCase {
    FlowCase { name: "inbound", actor: Actor::Peer, dst: dst.parse().unwrap(), udp: false }
}

fn count(sb: &Sandbox, r: Reason) -> Result<u64> {
    Ok(sb.counters()?.get(&(r as u32)).copied().unwrap_or(0))
}

fn app_only(sb: &Sandbox) -> Result<()> {
    let ports: Vec<String> =
        [8080u16, 9090].iter().flat_map(|p| [format!("0.0.0.0:{p}"), format!("[::]:{p}")]).collect();
    sb.serve(&sb.in_pod(APP_UID), "app", &ports, &[])
}

#[test]
fn without_a_sidecar_inbound_connections_are_refused_never_delivered_to_the_app() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&policy_from(&[("inbound-port-exclusion-list", "9090")]))?;
    app_only(&sb)?;
    let l = sb.run_flow(&inbound("198.51.100.2:8080"))?;
    assert_eq!(l.server, None, "the app must not see an intercepted connection: {l:?}");
    assert!(l.error.as_deref().unwrap_or_default().contains("refused"), "{l:?}");
    assert_eq!(count(&sb, Reason::InNoListener)?, 1);
    // Excluded ports still reach the app.
    assert_eq!(sb.run_flow(&inbound("198.51.100.2:9090"))?.server.as_deref(), Some("app"));

    // The sidecar starts after enrollment: its listener is found by itself.
    sb.serve(&sb.in_pod(PROXY_UID), "sidecar-in", &["0.0.0.0:15003".into(), "[::]:15003".into()], &[])?;
    let l = sb.run_flow(&inbound("198.51.100.2:8080"))?;
    assert_eq!((l.server.as_deref(), l.orig.as_deref()), (Some("sidecar-in"), Some("198.51.100.2:8080")));

    // Restarted on a new socket: steering follows.
    assert_eq!(sb.kill_named("sidecar-in"), 1);
    let l = sb.run_flow(&inbound("198.51.100.2:8080"))?;
    assert_eq!(l.server, None, "no listener again: refused, {l:?}");
    sb.serve(&sb.in_pod(PROXY_UID), "sidecar-in-2", &["0.0.0.0:15003".into(), "[::]:15003".into()], &[])?;
    let l = sb.run_flow(&inbound("198.51.100.2:8080"))?;
    assert_eq!((l.server.as_deref(), l.orig.as_deref()), (Some("sidecar-in-2"), Some("198.51.100.2:8080")));
    let l6 = sb.run_flow(&inbound("[2001:db8:1::2]:8080"))?;
    assert_eq!((l6.server.as_deref(), l6.orig.as_deref()), (Some("sidecar-in-2"), Some("[2001:db8:1::2]:8080")));
    assert_eq!(count(&sb, Reason::InNoListener)?, 2);
    assert_eq!(count(&sb, Reason::InRedirect)?, 3);

    let status = ebpf::status(&sb.pins)?;
    let pod = &status.pods[0];
    assert_eq!(pod.inbound.redirected, 3);
    assert_eq!(pod.inbound.passed.get("no_listener"), Some(&2));
    assert_eq!(pod.inbound.passed.get("excluded_port"), Some(&1));
    Ok(())
}

#[test]
fn five_hundred_concurrent_inbound_connections_each_see_their_original_destination() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&Policy::default())?;
    sb.start_sidecar()?;
    // No listener exists on these ports: only sk_lookup can make them connect.
    let dsts: Vec<String> =
        (0..500u32)
            .map(|i| {
                if i % 2 == 0 {
                    format!("198.51.100.2:{}", 30000 + i)
                } else {
                    format!("[2001:db8:1::2]:{}", 30000 + i)
                }
            })
            .collect();
    let mut ok = 0;
    let mut wrong = Vec::new();
    for (to, v) in sb.connect_many(&sb.in_world(), &dsts)? {
        // No NAT: the accepted socket's own local address is the original destination.
        if v["ok"] == true
            && v["reply"]["server"] == "sidecar-in"
            && v["reply"]["orig"] == to
            && v["reply"]["local"] == to
        {
            ok += 1;
        } else {
            wrong.push(v.to_string());
        }
    }
    assert_eq!(ok, 500, "{} wrong, e.g. {:?}", wrong.len(), wrong.first());
    Ok(())
}

#[test]
fn live_inbound_policy_changes_and_unenroll() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&Policy::default())?;
    sb.start_servers()?;
    assert_eq!(sb.run_flow(&inbound("198.51.100.2:8080"))?.server.as_deref(), Some("sidecar-in"));
    sb.enroll(&policy_from(&[("inbound-port-exclusion-list", "8080")]))?;
    assert_eq!(
        sb.run_flow(&inbound("198.51.100.2:8080"))?.server.as_deref(),
        Some("app"),
        "excluded without restarting anything"
    );
    assert_eq!(sb.run_flow(&inbound("198.51.100.2:9090"))?.server.as_deref(), Some("sidecar-in"));
    // The proxy reaching its own pod is steered once (by connect4, to 15003), not twice.
    let p = sb.run_flow(&FlowCase {
        name: "proxy → pod",
        actor: Actor::Proxy,
        dst: "198.51.100.2:9090".parse()?,
        udp: false,
    })?;
    assert_eq!((p.server.as_deref(), p.orig.as_deref()), (Some("sidecar-in"), Some("198.51.100.2:9090")));
    assert!(ebpf::unenroll(&interceptor::netns::Netns::at(sb.pod_netns()), &sb.pins)?);
    assert!(
        !sb.pins.pod(interceptor::netns::Netns::at(sb.pod_netns()).cookie()?).exists(),
        "the pod's sk_lookup link is gone"
    );
    for dst in ["198.51.100.2:8080", "198.51.100.2:9090", "[2001:db8:1::2]:8080"] {
        assert_eq!(sb.run_flow(&inbound(dst))?.server.as_deref(), Some("app"), "{dst}: direct delivery after unenroll");
    }
    assert_eq!(
        sb.run_flow(&FlowCase { name: "out", actor: Actor::App, dst: "198.51.100.1:80".parse()?, udp: false })?
            .server
            .as_deref(),
        Some("world")
    );
    Ok(())
}

#[test]
fn a_sidecar_listening_before_enrollment_is_adopted() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    app_only(&sb)?;
    sb.serve(&sb.in_pod(PROXY_UID), "sidecar-in", &["0.0.0.0:15003".into(), "[::]:15003".into()], &[])?;
    sb.enroll(&Policy::default())?;
    for dst in ["198.51.100.2:8080", "[2001:db8:1::2]:8080"] {
        let l = sb.run_flow(&inbound(dst))?;
        assert_eq!((l.server.as_deref(), l.orig.as_deref()), (Some("sidecar-in"), Some(dst)), "{dst}");
    }
    Ok(())
}
