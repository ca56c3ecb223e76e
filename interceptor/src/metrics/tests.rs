//! The encoding of a known state, and the documents that name the metrics (README table,
//! alert rules, dashboard) against [`FAMILIES`].
use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::registry::Registry;

use super::{FAMILIES, Kind, PREFIX, encode, node::NodeCollector};
use crate::ebpf::status::{Counters, MapUsage, OutsideProcess, PodStatus, Status, Tracking};

fn counters(redirected: &[(&str, u64)], passed: &[(&str, u64)], refused: &[&str]) -> Counters {
    let mut c = Counters::default();
    for (r, n) in redirected {
        c.redirected += n;
        c.redirected_by_reason.insert(r.to_string(), *n);
    }
    for (r, n) in passed {
        c.passed.insert(r.to_string(), *n);
        if refused.contains(r) {
            c.refused.insert(r.to_string(), *n);
        }
    }
    c
}

fn pod(cookie: u64, name: &str, outbound: Counters, inbound: Counters) -> PodStatus {
    let mut untracked = BTreeMap::new();
    for r in crate::ebpf::status::UNTRACKED {
        untracked.insert(r.name().to_string(), outbound.passed.get(r.name()).copied().unwrap_or(0));
    }
    PodStatus {
        netns_cookie: cookie,
        netns: format!("/var/run/netns/p{cookie}"),
        pod: name.into(),
        enrolled_at: 0,
        generation: 1,
        table: 1,
        excluded_list: None,
        included_list: None,
        ports_list: None,
        proxy_uid: 1500,
        local_proxy_mode: "Localhost".into(),
        local_dns_proxy: false,
        pod_ips: vec![],
        addresses: vec![],
        outbound_port: 15001,
        inbound_port: 15003,
        own_ip_range_exclusions: vec![],
        own_ip_range_inclusions: vec![],
        outbound_ip_range_exclusions: None,
        outbound_ip_range_inclusions: None,
        outbound_port_exclusions: vec![],
        inbound_port_exclusions: vec![],
        interface_exclusion_ifindexes: vec![],
        inbound_steering: true,
        tracking: Tracking { in_flight: cookie, limit: 16 },
        netns_gone: false,
        outbound,
        inbound,
        untracked,
        processes_outside_cgroup: vec![],
        problems: vec![],
    }
}

fn status() -> Status {
    let web = pod(
        7,
        "shop/web",
        counters(
            &[("default", 12)],
            &[("loopback", 3), ("refused_pod_limit", 5), ("tracking_lost", 1)],
            &["refused_pod_limit"],
        ),
        counters(&[("redirected", 4)], &[("no_listener", 2)], &["no_listener"]),
    );
    let mut anonymous = pod(9, "", Counters::default(), Counters::default());
    anonymous.processes_outside_cgroup = vec![OutsideProcess { pid: 42, cgroup: "/elsewhere".into() }];
    // Two enrollments under one name (one left over): neither may take the plain name.
    let twin_a = pod(11, "shop/twin", counters(&[("default", 1)], &[], &[]), Counters::default());
    let twin_b = pod(12, "shop/twin", counters(&[("default", 2)], &[], &[]), Counters::default());
    let mut maps = BTreeMap::new();
    maps.insert(
        "PODS".to_string(),
        MapUsage { entries: Some(4), max_entries: 65_536, kind: "hash", memory_bytes: None },
    );
    maps.insert(
        "AYA_LOGS".to_string(),
        MapUsage { entries: None, max_entries: 4096, kind: "ringbuf", memory_bytes: None },
    );
    maps.insert(
        "SETTINGS".to_string(),
        MapUsage { entries: Some(1), max_entries: 1, kind: "array", memory_bytes: None },
    );
    Status {
        pin_dir: "/sys/fs/bpf/x".into(),
        loaded: true,
        debug: false,
        accelerate: false,
        layout_version: 7,
        fingerprint: "00000000000000aa".into(),
        cgroup: "/sys/fs/cgroup".into(),
        upgrade_interrupted: false,
        enroll_interrupted: false,
        map_memory_bytes: 0,
        objects: vec![],
        generations: 3,
        orphaned_generations: 1,
        dead_pods: 0,
        maps,
        programs: vec![],
        tracking: Tracking { in_flight: 29, limit: 64 },
        pod_tracking_limit: 16,
        pods: vec![web, anonymous, twin_a, twin_b],
        problems: vec![],
    }
}

fn render(status: Status, names: BTreeMap<u64, (String, String)>, iptables: Option<usize>) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(NodeCollector::new(status, names, iptables)));
    encode(&registry).unwrap()
}

/// The samples of the text, as (name{labels}, value).
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_node_state_becomes_labelled_counters_and_gauges() {
    let text = render(status(), BTreeMap::new(), None);
    let s = samples(&text);
    let get = |k: &str| s.get(k).unwrap_or_else(|| panic!("no sample {k} in\n{text}")).as_str();
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="web",direction="outbound",action="redirect",reason="default"}"#
        ),
        "12"
    );
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="web",direction="outbound",action="pass",reason="loopback"}"#
        ),
        "3"
    );
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="web",direction="outbound",action="refuse",reason="refused_pod_limit"}"#
        ),
        "5"
    );
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="web",direction="inbound",action="redirect",reason="redirected"}"#
        ),
        "4"
    );
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="web",direction="inbound",action="refuse",reason="no_listener"}"#
        ),
        "2"
    );
    // tracking_lost is an event after the decision, not a decision.
    assert!(!text.contains(r#"interceptor_decisions_total{namespace="shop",pod="web",direction="outbound",action="pass",reason="tracking_lost"}"#));
    assert_eq!(
        get(r#"interceptor_untracked_connections_total{namespace="shop",pod="web",reason="refused_pod_limit"}"#),
        "5"
    );
    assert_eq!(
        get(r#"interceptor_untracked_connections_total{namespace="shop",pod="web",reason="tracking_lost"}"#),
        "1"
    );
    // Every reason of every pod is present, zeros included.
    assert_eq!(
        get(r#"interceptor_untracked_connections_total{namespace="",pod="netns-9",reason="refused_no_memory"}"#),
        "0"
    );
    assert_eq!(get(r#"interceptor_pod_outside_cgroup_processes{namespace="",pod="netns-9"}"#), "1");
    assert_eq!(get(r#"interceptor_tracking_in_flight_connections{namespace="shop",pod="web"}"#), "7");
    assert_eq!(get("interceptor_tracking_pod_limit_connections"), "16");
    assert_eq!(get("interceptor_tracking_node_in_flight_connections"), "29");
    assert_eq!(get("interceptor_tracking_node_limit_connections"), "64");
    assert_eq!(get(r#"interceptor_ebpf_map_entries{map="PODS"}"#), "4");
    assert_eq!(get(r#"interceptor_ebpf_map_max_entries{map="PODS"}"#), "65536");
    assert!(!text.contains("AYA_LOGS"), "a ring buffer has no entries to count");
    assert!(!text.contains("SETTINGS"), "an array is always full: no fill to watch");
    assert_eq!(get(r#"interceptor_enrolled_pods{mode="ebpf"}"#), "4");
    assert!(!text.contains(r#"mode="iptables""#), "only the daemon knows iptables-mode pods");
    assert_eq!(get("interceptor_ebpf_policy_generations"), "3");
    assert_eq!(get("interceptor_ebpf_orphaned_policy_generations"), "1");
    assert_eq!(get("interceptor_ebpf_loaded"), "1");
    // Twins are told apart, neither takes the plain name.
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="twin@netns-11",direction="outbound",action="redirect",reason="default"}"#
        ),
        "1"
    );
    assert_eq!(
        get(
            r#"interceptor_decisions_total{namespace="shop",pod="twin@netns-12",direction="outbound",action="redirect",reason="default"}"#
        ),
        "2"
    );
    assert!(!text.contains(r#"pod="twin""#));
    let build = s.keys().find(|k| k.starts_with("interceptor_build_info{")).expect("build info");
    assert!(build.contains(r#"loaded_fingerprint="00000000000000aa""#), "{build}");
    assert!(build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))), "{build}");
    // Types: counters end in _total, every family has HELP and TYPE.
    assert!(text.contains("# TYPE interceptor_decisions_total counter\n"), "{text}");
    assert!(text.contains("# TYPE interceptor_ebpf_map_entries gauge\n"), "{text}");
    for spec in FAMILIES.iter().filter(|f| !f.daemon_only) {
        assert!(text.contains(&format!("# HELP {} ", spec.exposed_name())), "{} missing:\n{text}", spec.name);
    }
}

#[test]
fn the_daemons_names_win_and_iptables_pods_are_counted() {
    let mut names = BTreeMap::new();
    names.insert(7, ("shop".to_string(), "web-with-a-name-longer-than-the-map-keeps".to_string()));
    let text = render(status(), names, Some(2));
    assert!(text.contains(r#"pod="web-with-a-name-longer-than-the-map-keeps""#), "{text}");
    assert!(text.contains("interceptor_enrolled_pods{mode=\"iptables\"} 2\n"), "{text}");
}

#[test]
fn nothing_loaded_is_said_plainly() {
    let mut s = status();
    s.loaded = false;
    s.pods.clear();
    s.maps.clear();
    let text = render(s, BTreeMap::new(), None);
    assert!(text.contains("interceptor_ebpf_loaded 0\n"), "{text}");
    assert!(!text.contains("interceptor_tracking_node_limit_connections"), "{text}");
    assert!(text.contains("interceptor_enrolled_pods{mode=\"ebpf\"} 0\n"), "{text}");
}

#[test]
fn the_daemons_families_are_encoded_with_their_zero_series() {
    use super::daemon::{CniCommand, DaemonMetrics, Operation};
    let m = DaemonMetrics::new(crate::api::Mode::Ebpf);
    m.operation(Operation::Enroll, crate::api::Mode::Ebpf, true, Some(std::time::Duration::from_millis(3)));
    m.operation(Operation::Reenroll, crate::api::Mode::Ebpf, false, None);
    m.cni_request(CniCommand::Add, "ok");
    m.cni_request(CniCommand::Add, "invalid_policy");
    m.mesh_config_reload(false);
    let mut registry = Registry::with_prefix(PREFIX);
    m.register(&mut registry, true);
    let text = encode(&registry).unwrap();
    let s = samples(&text);
    let get = |k: &str| s.get(k).unwrap_or_else(|| panic!("no sample {k} in\n{text}")).as_str();
    assert_eq!(get(r#"interceptor_pod_operations_total{operation="enroll",mode="ebpf",result="ok"}"#), "1");
    assert_eq!(get(r#"interceptor_pod_operations_total{operation="unenroll",mode="ebpf",result="error"}"#), "0");
    assert_eq!(get(r#"interceptor_pod_operations_total{operation="reenroll",mode="ebpf",result="error"}"#), "1");
    assert_eq!(get(r#"interceptor_pod_operation_duration_seconds_count{operation="reenroll",mode="ebpf"}"#), "0");
    assert_eq!(
        get(r#"interceptor_pod_operation_duration_seconds_bucket{operation="enroll",mode="ebpf",le="0.005"}"#),
        "1"
    );
    assert_eq!(
        get(r#"interceptor_pod_operation_duration_seconds_bucket{operation="enroll",mode="ebpf",le="0.0025"}"#),
        "0"
    );
    assert_eq!(get(r#"interceptor_pod_operation_duration_seconds_count{operation="enroll",mode="ebpf"}"#), "1");
    assert_eq!(get(r#"interceptor_cni_requests_total{command="ADD",result="invalid_policy"}"#), "1");
    assert_eq!(get(r#"interceptor_cni_requests_total{command="DEL",result="ok"}"#), "0");
    assert_eq!(get(r#"interceptor_mesh_config_reloads_total{result="rejected"}"#), "1");
    assert_eq!(get(r#"interceptor_mesh_config_reloads_total{result="ok"}"#), "0");
    assert_eq!(get("interceptor_daemon_ready"), "1");
    let started: f64 = get("interceptor_daemon_start_time_seconds").parse().unwrap();
    assert!(started > 1.7e9, "{started}");
    for spec in FAMILIES.iter().filter(|f| f.daemon_only) {
        assert!(
            text.contains(&format!("# TYPE {} {}", spec.exposed_name(), spec.kind.name())),
            "{}:\n{text}",
            spec.name
        );
    }
}

const README: &str = include_str!("../../../README.md");
const ALERTS: &str = include_str!("../../deploy/prometheus/interceptor-alerts.yaml");
const ALERT_TESTS: &str = include_str!("../../deploy/prometheus/interceptor-alerts.test.yaml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/interceptor-dashboard.json");

#[test]
fn the_readme_documents_every_family_with_its_type_and_labels() {
    let mut documented = BTreeMap::new();
    for line in README.lines().filter(|l| l.starts_with("| `interceptor_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let labels: Vec<String> = cells[3].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        documented.insert(name, (cells[2].to_string(), labels));
    }
    for spec in FAMILIES {
        let (kind, labels) =
            documented.remove(&spec.exposed_name()).unwrap_or_else(|| panic!("README lacks {}", spec.exposed_name()));
        assert_eq!(kind, spec.kind.name(), "{}", spec.name);
        assert_eq!(labels, spec.labels, "{}", spec.name);
    }
    assert!(documented.is_empty(), "README documents metrics that do not exist: {documented:?}");
}

/// Every `interceptor_…` name a document uses.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("interceptor_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Not part of a longer word (a path, `job="interceptor"`).
        if i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'-' {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn known_names() -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    for spec in FAMILIES {
        let name = spec.exposed_name();
        if spec.kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{name}{suffix}"));
            }
        }
        known.insert(name);
    }
    known
}

#[test]
fn the_alert_rules_and_the_dashboard_use_only_metrics_that_exist() {
    let known = known_names();
    for (what, text) in [("alert rules", ALERTS), ("alert rule tests", ALERT_TESTS), ("dashboard", DASHBOARD)] {
        let used = names_in(text);
        assert!(!used.is_empty(), "{what} name no metric");
        let unknown: Vec<&String> = used.difference(&known).collect();
        assert!(unknown.is_empty(), "{what} use metrics that do not exist: {unknown:?}");
    }
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    // Every family an operator acts on is on the dashboard.
    for needed in
        ["interceptor_decisions_total", "interceptor_untracked_connections_total", "interceptor_ebpf_map_entries"]
    {
        assert!(exprs.iter().any(|e| e.contains(needed)), "the dashboard lacks {needed}");
    }
}
