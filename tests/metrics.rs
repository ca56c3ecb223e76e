//! Observability on the real kernel: the daemon's `GET /metrics` and `ebpf metrics` after
//! real traffic (redirected, passed, refused at a tracking limit, DNS proxy, inbound)
//! pass `promtool check metrics` with every counter family moved; a real Prometheus server
//! scrapes the daemon and its query API counts exactly the connections made, 500 at once
//! included; the shipped alert rules pass `promtool check rules` and their unit tests.
//!
//! The daemon runs without a container runtime (pods are added by the real CNI plugin
//! binary, as a runtime calls it) in the sandbox's world namespace; Prometheus too, on its
//! loopback. Nothing listens outside the test's namespaces.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use interceptor::metrics::{FAMILIES, Kind};
use interceptor_tests::{
    Actor, FlowCase, Sandbox,
    daemon::{PROMETHEUS, PROMTOOL, Prometheus, TestDaemon},
    procs::{Collecting, Identity, command, netprobe},
    sandbox::{APP_UID, PROXY_UID},
};
use serde_json::Value;

const MESH: &str = "apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
spec:
  traffic:
    outboundIPRangeExclusionList: [203.0.113.10/32]
";

const MESH_WITH_DNS: &str = "apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata:
  name: osm-mesh-config
spec:
  sidecar:
    localDNSProxy:
      enable: true
  traffic:
    outboundIPRangeExclusionList: [203.0.113.10/32]
";

const WEB: &str = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interceptor/deploy").join(file)
}

/// Why the Prometheus tests cannot run (None: they can); `cargo xtask setup` installs it.
fn prometheus_missing() -> Option<String> {
    [PROMETHEUS, PROMTOOL]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| format!("{p} is missing (Debian package prometheus; `cargo xtask setup` installs it)"))
}

/// `promtool ARGS` with `stdin`; its exit status and everything it printed.
fn promtool(args: &[&str], stdin: Option<&str>) -> Result<(bool, String)> {
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool")?;
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("piped");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes())?;
        }
    }
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The samples of a scrape: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of a family's samples whose labels contain every `key="value"` of `having`.
fn sum(s: &BTreeMap<String, f64>, name: &str, having: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && having.iter().all(|h| k.contains(h)))
        .map(|(_, v)| v)
        .sum()
}

fn connect(sb: &Sandbox, who: &Identity, dst: &str, timeout_ms: u32) -> Result<Value> {
    let t = timeout_ms.to_string();
    let out = sb.probe(who, &["connect", "--to", dst, "--timeout-ms", &t], Duration::from_secs(20))?;
    Ok(serde_json::from_str(out.trim())?)
}

#[test]
fn every_counter_family_moves_and_promtool_accepts_the_metrics() -> Result<()> {
    interceptor_tests::needs_root!();
    if let Some(why) = prometheus_missing() {
        panic!("{why}");
    }
    let sb = Sandbox::new()?;
    let other = Sandbox::with_host(3)?;
    other.share_cgroup_of(&sb);
    // Drops before the sandboxes (declared after them): nothing reloads their pins.
    let d =
        TestDaemon::start(&sb, MESH, &["--max-tracked-connections", "64", "--max-tracked-connections-per-pod", "16"])?;
    d.cni_ok("ADD", "ctr-web", &sb.pod_netns(), WEB)?;
    d.cni_ok("CHECK", "ctr-web", &sb.pod_netns(), WEB)?;
    // A second pod comes and goes (enroll, unenroll).
    d.cni_ok("ADD", "ctr-other", &other.pod_netns(), "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=other")?;
    d.cni_ok("DEL", "ctr-other", &other.pod_netns(), "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=other")?;
    sb.start_servers()?;

    let app = sb.in_pod(APP_UID);
    for _ in 0..3 {
        let v = connect(&sb, &app, "203.0.113.20:80", 3000)?;
        ensure!(v["reply"]["server"] == "sidecar-out" && v["reply"]["orig"] == "203.0.113.20:80", "redirect: {v}");
    }
    for _ in 0..2 {
        let v = connect(&sb, &app, "203.0.113.10:80", 3000)?;
        ensure!(v["reply"]["server"] == "world", "excluded destination: {v}");
    }
    for _ in 0..2 {
        let l = sb.run_flow(&FlowCase {
            name: "inbound",
            actor: Actor::Peer,
            dst: format!("{}:8080", sb.pod_ip()).parse()?,
            udp: false,
        })?;
        ensure!(l.server.as_deref() == Some("sidecar-in"), "inbound: {l:?}");
    }

    // A MeshConfig edit: reloaded, re-applied to the pod; it turns the DNS proxy rule on.
    std::fs::write(&d.mesh_config, MESH_WITH_DNS)?;
    d.wait_line("policy re-applied (mesh-config)", Duration::from_secs(20))?;
    let dns = sb.probe(
        &app,
        &["connect", "--udp", "--to", "127.0.0.153:53", "--timeout-ms", "200"],
        Duration::from_secs(10),
    )?;
    ensure!(!dns.trim().is_empty(), "the DNS probe printed nothing");

    // Beyond the pod's tracking limit: a sidecar that accepts nothing for a second with a
    // backlog of 1 keeps handshakes in flight; connect()s beyond 16 are refused (EPERM).
    sb.kill_named("sidecar-out");
    let mut slow = command(&netprobe(), &sb.in_pod(PROXY_UID))?;
    slow.args(["hold-accept", "--listen", "0.0.0.0:15001", "--listen", "[::]:15001", "--wait-ms", "1000"]);
    slow.args(["--backlog", "1", "--idle-ms", "2500"]);
    let slow = Collecting::start(slow, "slow sidecar")?;
    // (Never 203.0.113.10, which the MeshConfig excludes.)
    let dsts: Vec<String> = (0..48u32).map(|i| format!("203.0.113.{}:{}", 100 + i % 100, 20000 + i)).collect();
    let results = sb.connect_many(&app, &dsts)?;
    let _ = slow.finish(Duration::from_secs(60))?;
    let refused =
        results.iter().filter(|(_, v)| v["error"].as_str().unwrap_or_default().contains("not permitted")).count();
    ensure!(refused > 0, "48 at once beyond a limit of 16 must refuse some: {results:?}");

    // Inbound without a sidecar listener: refused.
    sb.kill_named("sidecar-in");
    let world = sb.in_world();
    let v = connect(&sb, &world, &format!("{}:8080", sb.pod_ip()), 500)?;
    ensure!(v["ok"] == false, "inbound without a listener must fail: {v}");

    // A process of the pod's namespace outside the attach cgroup.
    let stray = Identity { netns: sb.pod_netns(), cgroup_procs: None, userns: None, uid: 0 };
    sb.start(&stray, &["serve", "--name", "stray", "--listen", "127.0.0.1:7777"])?;

    let text = d.scrape()?;
    let s = samples(&text);
    println!("{text}");
    let (ok, lint) = promtool(&["check", "metrics"], Some(&text))?;
    ensure!(ok && lint.trim().is_empty(), "promtool check metrics refuses the daemon's /metrics:\n{lint}");

    // Every counter family moved (and the histogram).
    for spec in FAMILIES.iter().filter(|f| f.kind != Kind::Gauge) {
        let name = match spec.kind {
            Kind::Histogram => format!("{}_count", spec.exposed_name()),
            _ => spec.exposed_name(),
        };
        ensure!(sum(&s, &name, &[]) > 0.0, "{name} did not move:\n{text}");
    }
    let web = [r#"namespace="shop""#, r#"pod="web""#];
    let with = |extra: &[&'static str]| -> Vec<&str> { web.iter().copied().chain(extra.iter().copied()).collect() };
    let decisions = "interceptor_decisions_total";
    ensure!(sum(&s, decisions, &with(&[r#"action="redirect""#, r#"reason="default""#])) >= 3.0);
    ensure!(sum(&s, decisions, &with(&[r#"action="pass""#, r#"reason="excluded_cidr""#])) == 2.0);
    ensure!(sum(&s, decisions, &with(&[r#"direction="inbound""#, r#"reason="redirected""#])) == 2.0);
    ensure!(
        sum(&s, decisions, &with(&[r#"direction="inbound""#, r#"action="refuse""#, r#"reason="no_listener""#])) >= 1.0
    );
    ensure!(sum(&s, decisions, &with(&[r#"action="redirect""#, r#"reason="dns_proxy""#])) >= 1.0);
    ensure!(
        sum(&s, decisions, &with(&[r#"action="refuse""#, r#"reason="refused_pod_limit""#])) == refused as f64,
        "the refusals the client saw ({refused}) are the decisions counted"
    );
    ensure!(
        sum(&s, "interceptor_untracked_connections_total", &with(&[r#"reason="refused_pod_limit""#])) == refused as f64
    );
    let one = |name: &str, having: &[&str]| sum(&s, name, having);
    ensure!(one("interceptor_cni_requests_total", &[r#"command="ADD""#, r#"result="ok""#]) == 2.0);
    ensure!(one("interceptor_cni_requests_total", &[r#"command="DEL""#, r#"result="ok""#]) == 1.0);
    ensure!(one("interceptor_cni_requests_total", &[r#"command="CHECK""#, r#"result="ok""#]) == 1.0);
    ensure!(one("interceptor_pod_operations_total", &[r#"operation="enroll""#, r#"result="ok""#]) == 2.0);
    ensure!(one("interceptor_pod_operations_total", &[r#"operation="unenroll""#, r#"result="ok""#]) == 1.0);
    ensure!(one("interceptor_pod_operations_total", &[r#"operation="reenroll""#, r#"result="ok""#]) >= 1.0);
    ensure!(one("interceptor_pod_operations_total", &[r#"result="error""#]) == 0.0);
    ensure!(one("interceptor_mesh_config_reloads_total", &[r#"result="ok""#]) == 1.0);
    ensure!(one("interceptor_enrolled_pods", &[r#"mode="ebpf""#]) == 1.0);
    ensure!(one("interceptor_enrolled_pods", &[r#"mode="iptables""#]) == 0.0);
    ensure!(one("interceptor_tracking_pod_limit_connections", &[]) == 16.0);
    ensure!(one("interceptor_tracking_node_limit_connections", &[]) == 64.0);
    ensure!(one("interceptor_pod_outside_cgroup_processes", &web) == 1.0, "the stray process:\n{text}");
    ensure!(one("interceptor_ebpf_map_max_entries", &[r#"map="PODS""#]) > 0.0);
    ensure!(one("interceptor_ebpf_map_entries", &[r#"map="PODS""#]) == 1.0);
    ensure!(one("interceptor_daemon_ready", &[]) == 1.0);

    // `ebpf metrics` (no daemon needed): the same eBPF families, none of the daemon's.
    let out = d.cli(&["ebpf", "metrics", "--pin-dir", &d.pin_dir.display().to_string()])?;
    ensure!(out.status.success(), "ebpf metrics: {}", String::from_utf8_lossy(&out.stderr));
    let offline = String::from_utf8(out.stdout)?;
    let (ok, lint) = promtool(&["check", "metrics"], Some(&offline))?;
    ensure!(ok && lint.trim().is_empty(), "promtool check metrics refuses `ebpf metrics`:\n{lint}");
    let o = samples(&offline);
    for spec in FAMILIES {
        let present = o.keys().any(|k| k.starts_with(&spec.exposed_name()));
        ensure!(
            present != spec.daemon_only || spec.name == "enrolled_pods",
            "{}: daemon only {}",
            spec.name,
            spec.daemon_only
        );
    }
    for family in ["interceptor_decisions_total", "interceptor_untracked_connections_total"] {
        let daemon: BTreeMap<&String, &f64> = s.iter().filter(|(k, _)| k.starts_with(family)).collect();
        let cli: BTreeMap<&String, &f64> = o.iter().filter(|(k, _)| k.starts_with(family)).collect();
        ensure!(daemon == cli, "{family}: the daemon and `ebpf metrics` disagree:\n{daemon:?}\n{cli:?}");
    }

    // `ebpf status` and `pods show` name the same facts and the problems.
    let pins = d.pin_dir.display().to_string();
    let status = d.cli(&["ebpf", "status", "--pin-dir", &pins])?;
    let status = String::from_utf8(status.stdout)?;
    println!("{status}");
    ensure!(status.contains(&format!("PROBLEM: {refused} connect()s refused: the pod's tracking limit")), "{status}");
    ensure!(status.contains("outside the cgroup eBPF mode is attached to"), "{status}");
    ensure!(status.contains(&format!("untracked: {refused}")), "{status}");
    let json = d.cli(&["ebpf", "status", "--json", "--pin-dir", &pins])?;
    let json: Value = serde_json::from_slice(&json.stdout)?;
    let pod = &json["pods"][0];
    // Backward compatible: refusals stay under `passed`; the new fields are added.
    ensure!(pod["outbound"]["passed"]["refused_pod_limit"] == refused as u64, "{pod}");
    ensure!(pod["outbound"]["refused"]["refused_pod_limit"] == refused as u64, "{pod}");
    ensure!(pod["untracked"]["refused_pod_limit"] == refused as u64, "{pod}");
    ensure!(pod["processes_outside_cgroup"].as_array().is_some_and(|a| a.len() == 1), "{pod}");
    ensure!(json["problems"].as_array().is_some_and(|p| !p.is_empty()), "{json}");
    let show = d.cli(&["pods", "show", "shop/web", "--socket", &d.socket.display().to_string()])?;
    let show_text = String::from_utf8_lossy(&show.stdout).into_owned();
    println!("{show_text}");
    ensure!(show.status.success(), "pods show: {}", String::from_utf8_lossy(&show.stderr));
    ensure!(show_text.contains("in force    yes"), "{show_text}");
    ensure!(show_text.contains("PROBLEM") && show_text.contains("refused_pod_limit"), "{show_text}");
    ensure!(show_text.contains(&format!("untracked   {refused}")), "{show_text}");
    Ok(())
}

#[test]
fn prometheus_scrapes_the_daemon_and_counts_every_connection() -> Result<()> {
    interceptor_tests::needs_root!();
    if let Some(why) = prometheus_missing() {
        panic!("{why}");
    }
    let sb = Sandbox::new()?;
    let d = TestDaemon::start(&sb, MESH, &[])?;
    d.cni_ok("ADD", "ctr-web", &sb.pod_netns(), WEB)?;
    sb.start_servers()?;
    let rules = deploy("prometheus/interceptor-alerts.yaml");
    let prom = Prometheus::start(&d.netns, &d.dir.join("prometheus"), &d.metrics_addr, &[&rules])?;
    prom.wait_for(r#"up{job="interceptor"}"#, 1.0, Duration::from_secs(20))?;

    // A known number of redirected and passed connections, one at a time …
    let app = sb.in_pod(APP_UID);
    let (redirected, passed, at_once) = (7, 5, 500);
    for _ in 0..redirected {
        let v = connect(&sb, &app, "203.0.113.20:80", 3000)?;
        ensure!(v["reply"]["server"] == "sidecar-out" && v["reply"]["orig"] == "203.0.113.20:80", "{v}");
    }
    for _ in 0..passed {
        let v = connect(&sb, &app, "203.0.113.10:80", 3000)?;
        ensure!(v["reply"]["server"] == "world", "{v}");
    }
    // … and 500 at once (one thread each), every one redirected and answered.
    let many: Vec<String> = (0..at_once).map(|i| format!("203.0.113.20:{}", [80, 443, 7070][i % 3])).collect();
    let results = sb.connect_many(&app, &many)?;
    let answered = results
        .iter()
        .filter(|(to, v)| v["ok"] == true && v["reply"]["server"] == "sidecar-out" && v["reply"]["orig"] == to.as_str())
        .count();
    ensure!(answered == at_once, "{answered} of {at_once} concurrent connections redirected and answered");

    let pod = r#"namespace="shop",pod="web""#;
    let q = |sel: &str| format!("interceptor_decisions_total{{{pod},{sel}}}");
    let total_redirected = (redirected + at_once) as f64;
    let results = [
        (q(r#"direction="outbound",action="redirect",reason="default""#), total_redirected),
        (q(r#"direction="outbound",action="pass",reason="excluded_cidr""#), passed as f64),
        (
            format!(r#"sum(interceptor_decisions_total{{{pod},direction="outbound"}})"#),
            total_redirected + passed as f64,
        ),
        (format!(r#"sum(interceptor_untracked_connections_total{{{pod}}})"#), 0.0),
        (r#"interceptor_cni_requests_total{command="ADD",result="ok"}"#.to_string(), 1.0),
        (r#"interceptor_pod_operations_total{operation="enroll",mode="ebpf",result="ok"}"#.to_string(), 1.0),
        (r#"interceptor_enrolled_pods{mode="ebpf"}"#.to_string(), 1.0),
        ("interceptor_daemon_ready".to_string(), 1.0),
        (r#"count(interceptor_build_info{version!=""})"#.to_string(), 1.0),
    ];
    println!("Prometheus query API (GET /api/v1/query):");
    for (expr, want) in &results {
        let got = prom.wait_for(expr, *want, Duration::from_secs(20))?;
        println!("  {expr} = {got}");
    }
    // The shipped alert rules load into the real server and evaluate without error; none
    // fires on this healthy pod.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rules = prom.api("/api/v1/rules")?;
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        ensure!(all.len() >= 10, "the alert rules did not load: {rules}");
        let bad: Vec<&&Value> = all.iter().filter(|r| r["health"] == "err").collect();
        ensure!(bad.is_empty(), "rules fail to evaluate: {bad:?}");
        if all.iter().all(|r| r["health"] == "ok") {
            let firing: Vec<&str> =
                all.iter().filter(|r| r["state"] != "inactive").filter_map(|r| r["name"].as_str()).collect();
            ensure!(firing.is_empty(), "alerts on a healthy node: {firing:?}");
            println!("  {} alert rules evaluated, none firing", all.len());
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "the rules were never evaluated: {rules}");
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    if let Some(why) = prometheus_missing() {
        panic!("{why}");
    }
    let rules = deploy("prometheus/interceptor-alerts.yaml");
    let (ok, out) = promtool(&["check", "rules", &rules.display().to_string()], None)?;
    ensure!(ok, "promtool check rules:\n{out}");
    let tests = deploy("prometheus/interceptor-alerts.test.yaml");
    let (ok, out) = promtool(&["test", "rules", &tests.display().to_string()], None)?;
    ensure!(ok, "promtool test rules:\n{out}");
    Ok(())
}
