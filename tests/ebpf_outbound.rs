//! eBPF mode, outbound: node-wide programs with per-pod policies, live policy changes,
//! pinned state that outlives the loader, load/upgrade/unload, and scale.
use std::{collections::BTreeSet, process::Command, time::Duration};

use anyhow::Result;
use aya::programs::loaded_programs;
use interceptor::{
    ebpf::{self, LoadOptions, LoadOutcome, maps::PinnedMaps},
    policy::Policy,
};
use interceptor_tests::{
    Actor, FlowCase, Sandbox,
    flows::{matrix_policy, policy_from, policy_from_pod},
    procs::{Held, netprobe, sibling_binary},
    sandbox::APP_UID,
};

fn flow(actor: Actor, dst: &str) -> FlowCase {
    FlowCase { name: "check", actor, dst: dst.parse().unwrap(), udp: false }
}

fn landed(sb: &Sandbox, dst: &str) -> Result<Option<String>> {
    Ok(sb.run_flow(&flow(Actor::App, dst))?.server)
}

fn program_ids(sb: &Sandbox) -> Result<BTreeSet<u32>> {
    Ok(ebpf::status(&sb.pins)?.programs.iter().map(|p| p.id).collect())
}

#[test]
fn two_pods_with_different_policies_and_a_pod_that_is_not_enrolled() -> Result<()> {
    interceptor_tests::needs_root!();
    let a = Sandbox::new()?;
    a.load_ebpf()?;
    // Pods on one node have distinct addresses.
    let b = Sandbox::with_host(3)?;
    let c = Sandbox::with_host(4)?;
    b.share_cgroup_of(&a);
    c.share_cgroup_of(&a);
    a.enroll(&policy_from(&[("outbound-ip-range-exclusion-list", "203.0.113.10/32")]))?;
    b.enroll_in(
        &a.pins,
        &policy_from(&[("outbound-port-exclusion-list", "80"), ("inbound-port-exclusion-list", "8080")]),
    )?;
    for sb in [&a, &b, &c] {
        sb.start_servers()?;
    }
    // a excludes 203.0.113.10, b excludes port 80, c is not enrolled.
    assert_eq!(landed(&a, "203.0.113.10:80")?.as_deref(), Some("world"));
    assert_eq!(landed(&a, "203.0.113.20:443")?.as_deref(), Some("sidecar-out"));
    assert_eq!(landed(&a, "198.51.100.1:80")?.as_deref(), Some("sidecar-out"));
    assert_eq!(landed(&b, "203.0.113.10:80")?.as_deref(), Some("world"));
    assert_eq!(landed(&b, "198.51.100.1:80")?.as_deref(), Some("world"));
    assert_eq!(landed(&b, "203.0.113.20:443")?.as_deref(), Some("sidecar-out"));
    for dst in ["203.0.113.10:80", "203.0.113.20:443", "198.51.100.1:80"] {
        assert_eq!(landed(&c, dst)?.as_deref(), Some("world"), "{dst}: a pod that is not enrolled is never touched");
    }
    // Inbound: each pod by its own policy (b excludes 8080), c untouched.
    let inbound = |sb: &Sandbox| sb.run_flow(&flow(Actor::Peer, &format!("{}:8080", sb.pod_ip())));
    assert_eq!(inbound(&a)?.server.as_deref(), Some("sidecar-in"));
    assert_eq!(inbound(&b)?.server.as_deref(), Some("app"));
    assert_eq!(inbound(&c)?.server.as_deref(), Some("app"));
    let v6 = a.run_flow(&flow(Actor::Peer, &format!("[{}]:9090", a.pod_ip6())))?;
    assert_eq!(v6.server.as_deref(), Some("sidecar-in"));
    // Without conntrack and without enrollment, SO_ORIGINAL_DST answers as the kernel does.
    let own = c.run_flow(&flow(Actor::App, &format!("{}:8080", c.pod_ip())))?;
    assert_eq!(own.server.as_deref(), Some("app"));
    assert_eq!(own.orig, None, "getsockopt in a pod that is not enrolled must be untouched");
    let own = a.run_flow(&flow(Actor::App, &format!("{}:8080", a.pod_ip())))?;
    assert_eq!(own.orig.as_deref(), Some("198.51.100.2:8080"), "an enrolled pod answers like conntrack");
    let status = ebpf::status(&a.pins)?;
    assert_eq!(status.pods.len(), 2);
    Ok(())
}

#[test]
fn identical_lists_are_stored_once_and_a_pods_own_ranges_stay_its_own() -> Result<()> {
    interceptor_tests::needs_root!();
    let a = Sandbox::new()?;
    a.load_ebpf()?;
    let b = Sandbox::with_host(3)?;
    b.share_cgroup_of(&a);
    a.start_servers()?;
    b.start_servers()?;
    // A MeshConfig list of 1 000 ranges that are never targets, then an excluded target; a
    // also excludes a range of its own (an annotation).
    let list = |last: &str| -> String {
        (0..1000)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .chain([last.to_string()])
            .collect::<Vec<_>>()
            .join(",")
    };
    let global = list("203.0.113.10/32");
    let for_a = |g: &str| {
        policy_from_pod(
            &[("outbound-ip-range-exclusion-list", g)],
            &[("outbound-ip-range-exclusion-list", "203.0.113.20/32")],
        )
    };
    let for_b = |g: &str| policy_from(&[("outbound-ip-range-exclusion-list", g)]);
    let ra = a.enroll(&for_a(&global))?;
    let rb = b.enroll_in(&a.pins, &for_b(&global))?;
    assert_eq!(ra.objects.excluded, rb.objects.excluded, "one list for both");
    assert_eq!(ra.objects.excluded.1, 1001);
    assert!(!rb.written.contains(&rb.objects.excluded.0), "b found the list stored: {rb:?}");
    let s = ebpf::status(&a.pins)?;
    assert_eq!(s.maps["EXCLUDED_CIDRS"].entries, Some(1001), "stored once");
    let shared = s.objects.iter().find(|o| o.id == ra.objects.excluded.0).expect("registered");
    assert_eq!((shared.kind, shared.entries, shared.pods), ("excluded_ranges", 1001, 2));
    let pa = s.pods.iter().find(|p| p.netns_cookie == ra.netns_cookie).unwrap();
    assert_eq!(pa.own_ip_range_exclusions, ["203.0.113.20/32"]);
    assert!(s.pods.iter().find(|p| p.netns_cookie == rb.netns_cookie).unwrap().own_ip_range_exclusions.is_empty());
    let full = ebpf::status::pod_status(&a.pins, ra.netns_cookie)?.unwrap().outbound_ip_range_exclusions.unwrap();
    assert_eq!(full.len(), 1002);
    assert!(full.contains(&"203.0.113.20/32".to_string()) && full.contains(&"10.3.231.0/24".to_string()));
    // Decisions: the shared list for both, a's own range for a only.
    let want = |sb: &Sandbox, dst: &str, server: &str| -> Result<()> {
        assert_eq!(landed(sb, dst)?.as_deref(), Some(server), "{} → {dst}", sb.id);
        Ok(())
    };
    want(&a, "203.0.113.10:80", "world")?;
    want(&a, "203.0.113.20:80", "world")?;
    want(&a, "198.51.100.1:80", "sidecar-out")?;
    want(&b, "203.0.113.10:80", "world")?;
    want(&b, "203.0.113.20:80", "sidecar-out")?;

    // The MeshConfig changes: each pod switches on its re-enroll; the old list stays while
    // one pod still refers to it and goes with the last.
    let changed = list("203.0.113.200/32");
    let ra2 = a.enroll(&for_a(&changed))?;
    // (The pods' tables may change too: IPv6 addresses of fresh namespaces add their routes
    // a moment after they appear.)
    assert!(ra2.written.contains(&ra2.objects.excluded.0), "{ra2:?}");
    assert!(!ra2.deleted.contains(&ra.objects.excluded.0), "b still refers to the old list: {ra2:?}");
    want(&a, "203.0.113.10:80", "sidecar-out")?;
    want(&b, "203.0.113.10:80", "world")?;
    let rb2 = b.enroll_in(&a.pins, &for_b(&changed))?;
    assert_eq!(rb2.objects.excluded, ra2.objects.excluded);
    assert!(rb2.deleted.contains(&ra.objects.excluded.0), "the old list goes with its last pod: {rb2:?}");
    want(&b, "203.0.113.10:80", "sidecar-out")?;
    want(&a, "203.0.113.20:80", "world")?;
    let s = ebpf::status(&a.pins)?;
    assert_eq!((s.maps["EXCLUDED_CIDRS"].entries, s.orphaned_generations), (Some(1001), 0));
    for sb in [&a, &b] {
        ebpf::unenroll(&interceptor::netns::Netns::at(sb.pod_netns()), &a.pins)?;
    }
    let s = ebpf::status(&a.pins)?;
    assert_eq!((s.maps["EXCLUDED_CIDRS"].entries, s.generations, s.objects.len()), (Some(0), 0, 0));
    for m in ["ROUTES", "PORTS", "GENERATIONS", "OBJECTS"] {
        assert_eq!(s.maps[m].entries, Some(0), "{m}");
    }
    Ok(())
}

#[test]
fn re_enrolling_changes_new_connections_only() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    let before = sb.enroll(&Policy::default())?;
    sb.start_servers()?;
    let mut held = Held::open(&netprobe(), &sb.in_pod(APP_UID), "198.51.100.1:80")?;
    assert_eq!(held.first.server.as_deref(), Some("sidecar-out"));
    let after = sb.enroll(&policy_from(&[("outbound-ip-range-exclusion-list", "198.51.100.0/24")]))?;
    assert_ne!(before.generation, after.generation);
    assert_eq!(after.replaced_generation, Some(before.generation));
    // Same routes: the same table (found by its content), a new excluded list.
    assert_eq!(before.objects.table.0, after.objects.table.0);
    assert_eq!((before.objects.excluded.0, after.objects.excluded.1), (0, 1));
    assert!(after.written.contains(&after.objects.excluded.0) && after.written.len() == 1, "{after:?}");
    // New connections follow the new policy at once...
    assert_eq!(landed(&sb, "198.51.100.1:80")?.as_deref(), Some("world"));
    // ...while the established one keeps its path and its original destination.
    let again = held.exchange()?;
    assert_eq!(again.server.as_deref(), Some("sidecar-out"));
    assert_eq!(again.orig.as_deref(), Some("198.51.100.1:80"));
    // The maps hold exactly the objects the pod refers to.
    let maps = PinnedMaps::open(&sb.pins)?;
    fn ids<V: aya::Pod>(
        trie: &aya::maps::LpmTrie<aya::maps::MapData, interceptor_common::CidrData, V>,
    ) -> BTreeSet<u32> {
        trie.keys().filter_map(Result::ok).map(|k| u32::from_be_bytes(k.data().policy_id_be)).collect()
    }
    assert_eq!(ids(&maps.routes), BTreeSet::from([after.objects.table.0]));
    assert_eq!(ids(&maps.excluded), BTreeSet::from([after.objects.excluded.0]));
    // Back to the first policy: the excluded list no pod refers to any more is deleted.
    let again = sb.enroll(&Policy::default())?;
    assert_eq!(again.deleted, vec![after.objects.excluded.0]);
    assert!(ids(&maps.excluded).is_empty());
    Ok(())
}

#[test]
fn interception_continues_after_the_loader_exits_and_load_is_idempotent() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    let bin = sibling_binary("interceptor");
    let pin = sb.pins.path().to_str().unwrap().to_string();
    let cg = sb.cgroup.to_str().unwrap().to_string();
    let run = |args: &[&str]| -> Result<String> {
        let o = Command::new(&bin).args(args).output()?;
        anyhow::ensure!(o.status.success(), "interceptor {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        Ok(String::from_utf8_lossy(&o.stderr).into_owned())
    };
    assert!(run(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin])?.contains("loaded and attached"));
    run(&[
        "ebpf",
        "enroll",
        "--netns",
        sb.pod_netns().to_str().unwrap(),
        "--pin-dir",
        &pin,
        "--outbound-port-exclusion-list",
        "6379",
    ])?;
    // Every interceptor process has exited: the pins keep programs, links and maps alive.
    sb.start_servers()?;
    let c = sb.run_flow(&flow(Actor::App, "203.0.113.20:443"))?;
    assert_eq!((c.server.as_deref(), c.orig.as_deref()), (Some("sidecar-out"), Some("203.0.113.20:443")));
    assert_eq!(landed(&sb, "203.0.113.20:6379")?.as_deref(), Some("world"));

    let ids = program_ids(&sb)?;
    assert_eq!(
        ids.len(),
        ebpf::object::CGROUP_PROGRAMS.len() + 2,
        "every cgroup program, steer_inbound and accelerate"
    );
    assert!(run(&["ebpf", "load", "--cgroup", &cg, "--pin-dir", &pin])?.contains("already loaded"));
    assert_eq!(program_ids(&sb)?, ids, "loading twice changes nothing");

    // Another build (simulated by a different fingerprint): replaced in place, pods kept.
    let maps = PinnedMaps::open(&sb.pins)?;
    let mut settings = maps.settings()?;
    settings.fingerprint ^= 1;
    let mut m = maps.settings;
    m.set(0, settings, 0)?;
    let outcome = ebpf::load(&LoadOptions {
        cgroup: Some(sb.cgroup.clone()),
        pin_dir: sb.pins.clone(),
        max_tracked_connections: None,
        max_tracked_connections_per_pod: None,
        accelerate: false,
    })?;
    assert_eq!(outcome, LoadOutcome::Upgraded { pods: 1 });
    let new_ids = program_ids(&sb)?;
    assert!(new_ids.is_disjoint(&ids), "every program was replaced: {ids:?} → {new_ids:?}");
    assert_eq!(sb.run_flow(&flow(Actor::App, "203.0.113.20:443"))?.server.as_deref(), Some("sidecar-out"));
    let inbound = sb.run_flow(&flow(Actor::Peer, "198.51.100.2:8080"))?;
    assert_eq!(inbound.server.as_deref(), Some("sidecar-in"), "the upgraded sk_lookup program steers");
    assert_eq!(landed(&sb, "203.0.113.20:6379")?.as_deref(), Some("world"), "the pod's policy survived the upgrade");
    Ok(())
}

#[test]
fn unload_removes_every_program_link_map_and_pin() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&matrix_policy())?;
    sb.start_servers()?;
    assert_eq!(landed(&sb, "198.51.100.1:80")?.as_deref(), Some("sidecar-out"));
    let ids = program_ids(&sb)?;
    assert!(ebpf::unload(&sb.pins)?);
    assert!(!sb.pins.path().exists(), "the pin directory is gone");
    // Programs are freed once the last reference is dropped (RCU): allow a moment.
    let mut left = BTreeSet::new();
    for _ in 0..100 {
        left = loaded_programs().filter_map(Result::ok).map(|p| p.id()).filter(|id| ids.contains(id)).collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(left.is_empty(), "programs still loaded after unload: {left:?}");
    assert_eq!(landed(&sb, "198.51.100.1:80")?.as_deref(), Some("world"), "nothing is intercepted any more");
    assert!(!ebpf::unload(&sb.pins)?, "a second unload finds nothing");
    Ok(())
}

#[test]
fn a_thousand_concurrent_connections_each_see_their_own_original_destination() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&Policy::default())?;
    sb.start_sidecar()?;
    let dsts: Vec<String> = (0..1000u32).map(|i| format!("203.0.113.{}:{}", 1 + i % 250, 20000 + i)).collect();
    let mut ok = 0;
    let mut wrong = Vec::new();
    for (to, v) in sb.connect_many(&sb.in_pod(APP_UID), &dsts)? {
        let reply = &v["reply"];
        if v["ok"] == true && reply["server"] == "sidecar-out" && reply["orig"] == to && v["peername"] == to {
            ok += 1;
        } else {
            wrong.push(v.to_string());
        }
    }
    assert_eq!(ok, 1000, "{} wrong, e.g. {:?}", wrong.len(), wrong.first());
    Ok(())
}

#[test]
fn kernel_feature_probe_passes_on_this_kernel() {
    interceptor_tests::needs_root!();
    assert_eq!(ebpf::probe::missing_features(), vec![]);
    // The attach-type probe tells a hook the kernel has from one it does not.
    const CGROUP_SOCK_ADDR: u32 = 18;
    assert!(ebpf::raw::prog_load_probe(CGROUP_SOCK_ADDR, ebpf::raw::attach_type::CGROUP_UDP6_RECVMSG));
    assert!(!ebpf::raw::prog_load_probe(CGROUP_SOCK_ADDR, 4096), "an attach type no kernel has");
}

#[test]
fn debug_logging_is_switched_at_run_time() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    sb.enroll(&Policy::default())?;
    sb.start_servers()?;
    let pin = sb.pins.path().to_str().unwrap().to_string();
    let log = |connect_to: &str| -> Result<String> {
        let child = Command::new(sibling_binary("interceptor"))
            .args(["ebpf", "log", "--seconds", "2", "--pin-dir", &pin])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        landed(&sb, connect_to)?;
        Ok(String::from_utf8_lossy(&child.wait_with_output()?.stdout).into_owned())
    };
    assert_eq!(log("198.51.100.1:80")?, "", "off by default");
    ebpf::debug::set_debug(&sb.pins, true)?;
    let out = log("203.0.113.20:443")?;
    assert!(out.contains("connect redirect") && out.contains("port=443"), "{out:?}");
    ebpf::debug::set_debug(&sb.pins, false)?;
    assert_eq!(log("198.51.100.1:80")?, "");
    Ok(())
}

#[test]
fn a_pod_whose_namespace_is_gone_is_unenrolled_by_cookie() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    let r = sb.enroll(&matrix_policy())?;
    // The pod goes away without being unenrolled.
    interceptor_tests::procs::ip(&["netns", "del", &sb.pod])?;
    assert_eq!(ebpf::status(&sb.pins)?.pods.len(), 1);
    let o = Command::new(sibling_binary("interceptor"))
        .args([
            "ebpf",
            "unenroll",
            "--netns-cookie",
            &r.netns_cookie.to_string(),
            "--pin-dir",
            sb.pins.path().to_str().unwrap(),
        ])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ebpf::status(&sb.pins)?.pods.is_empty());
    assert!(!sb.pins.pod(r.netns_cookie).exists());
    let maps = PinnedMaps::open(&sb.pins)?;
    assert_eq!(maps.excluded.keys().count(), 0, "the pod's policy entries are gone");
    assert_eq!(maps.pod_addrs.keys().count(), 0, "its addresses are gone");
    Ok(())
}

#[test]
fn a_load_over_an_older_layout_names_the_layout_not_an_incomplete_installation() -> Result<()> {
    interceptor_tests::needs_root!();
    let sb = Sandbox::new()?;
    sb.load_ebpf()?;
    // What an older build left: another layout, without a program this build attaches.
    let maps = PinnedMaps::open(&sb.pins)?;
    let mut settings = maps.settings()?;
    settings.layout_version -= 1;
    let mut m = maps.settings;
    m.set(0, settings, 0)?;
    std::fs::remove_file(sb.pins.link("dns_proxy_recvmsg6"))?;
    let err = ebpf::load(&LoadOptions {
        cgroup: Some(sb.cgroup.clone()),
        pin_dir: sb.pins.clone(),
        max_tracked_connections: None,
        max_tracked_connections_per_pod: None,
        accelerate: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("map layout") && err.contains("unload them first"), "{err}");
    Ok(())
}
