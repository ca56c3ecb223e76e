//! The node daemon and its CNI plugin with a real container runtime: podman 4.3 (CNI
//! backend) + runc + Debian's CNI plugins, a conflist chaining `bridge` and
//! `interceptor-cni`, a sidecar container (UID 1500) and an application container sharing
//! its network namespace. Each flow is proven by where it landed and what the sidecar read
//! with SO_ORIGINAL_DST; the tables go to target/tmp/podman-<mode>.md.
//!
//! podman passes `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container name>` and no
//! namespace and no annotations: the pod is `default/<sidecar container name>` (the
//! netconf's `defaultNamespace`) and its annotations come from
//! `--pod-manifest-dir/default/<name>.yaml`.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use interceptor::{
    api::{AnnotationSource, DaemonStatus, Mode, PodList, client::ClientError},
    ebpf,
};
use interceptor_tests::{
    Landing,
    podman::{NODE_IP, Node, unavailable},
    procs::sibling_binary,
};

const EXCLUDED: &str = "openservicemesh.io/outbound-ip-range-exclusion-list";

/// One row of the report.
struct Row {
    step: String,
    from: String,
    to: String,
    expected: String,
    landing: Landing,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Checks a landing (server, and the original destination when given) and records it.
    fn expect(
        &mut self,
        step: &str,
        from: &str,
        to: &str,
        landing: Landing,
        server: &str,
        orig: Option<&str>,
    ) -> Result<()> {
        let ok = landing.server.as_deref() == Some(server) && (orig.is_none() || landing.orig.as_deref() == orig);
        let expected = match orig {
            Some(o) => format!("{server} ({o})"),
            None => server.to_string(),
        };
        let msg = format!("{step}: {from} → {to}: expected {expected}, got {landing:?}");
        self.rows.push(Row { step: step.into(), from: from.into(), to: to.into(), expected, landing });
        ensure!(ok, "{msg}");
        Ok(())
    }

    fn markdown(&self, title: &str) -> String {
        let mut s = format!(
            "## {title}\n\n| step | from | to | expected | landed | SO_ORIGINAL_DST |\n|---|---|---|---|---|---|\n"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.step,
                r.from,
                r.to,
                r.expected,
                r.landing.server.as_deref().or(r.landing.error.as_deref()).unwrap_or("-"),
                r.landing.orig.as_deref().unwrap_or("-")
            );
        }
        s
    }
}

fn save_report(name: &str, text: &str) {
    eprintln!("\n{text}");
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.md")), text);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn pods(node: &Node) -> Result<PodList> {
    Ok(node.api().get("/v1/pods")?)
}

fn status(node: &Node) -> Result<DaemonStatus> {
    Ok(node.api().get("/v1/status")?)
}

/// Polls until `f` holds (the daemon reacts to events asynchronously).
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process inside a container (`podman exec -i`) fed through stdin, read line by line.
struct Exec {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Exec {
    fn start(node: &Node, container: &str, argv: &[&str]) -> Result<Exec> {
        let mut args = vec!["exec", "-i", container];
        args.extend_from_slice(argv);
        let mut child =
            node.podman(&args)?.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Exec { child, stdin, lines })
    }

    fn line(&self) -> Result<Landing> {
        let l = self.lines.recv_timeout(Duration::from_secs(10)).context("no answer from the container")?;
        Ok(Landing::from_json(&serde_json::from_str(&l)?))
    }

    /// Closes stdin and returns every line the process printed until it exited.
    fn finish(mut self) -> Result<Vec<String>> {
        drop(self.stdin.take());
        let mut out = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(10)) {
            out.push(l);
        }
        let _ = self.child.wait();
        Ok(out)
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The flows every mode must get right; returns the pod's address.
fn common_flows(node: &Node, report: &mut Report, pod: &str, mode: Mode) -> Result<String> {
    let list = pods(node)?;
    ensure!(list.pods.len() == 1, "one pod expected: {list:?}");
    let p = &list.pods[0];
    ensure!(p.namespace == "default" && p.name == pod && p.mode == mode, "{p:?}");
    ensure!(matches!(p.annotations_from, AnnotationSource::Manifest { .. }), "annotations from the manifest: {p:?}");
    let ip = p.ips.first().context("the pod's address from the bridge plugin's result")?.to_string();
    let app = format!("{pod}-app");
    let from = "app (UID 1000)";
    let to = format!("{NODE_IP}:80");
    report.expect("redirect", from, &to, node.connect_from(&app, &to)?, "sidecar-out", Some(&to))?;
    let to = "203.0.113.20:443";
    report.expect("redirect", from, to, node.connect_from(&app, to)?, "sidecar-out", Some(to))?;
    let to = "203.0.113.10:80";
    report.expect("excluded by the pod's manifest", from, to, node.connect_from(&app, to)?, "world", None)?;
    let to = format!("{ip}:8080");
    report.expect("inbound", "node", &to, node.connect_from_node(&to)?, "sidecar-in", Some(&to))?;
    let to = format!("{NODE_IP}:7070");
    report.expect("before the MeshConfig edit", from, &to, node.connect_from(&app, &to)?, "sidecar-out", Some(&to))?;
    Ok(ip)
}

/// The netns paths in the daemon's state file (the daemon is stopped).
fn pods_offline(node: &Node) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(node.state_dir.join("pods.json"))?)?;
    Ok(v["pods"].as_array().context("pods")?.iter().filter_map(|p| p["netns"].as_str().map(str::to_string)).collect())
}

fn write_mesh_config(node: &Node, ports: &str) -> Result<()> {
    // Written in place (not renamed): the daemon watches the directory either way.
    std::fs::write(&node.mesh_config, interceptor_tests::podman::MESH_CONFIG.replace("[]", ports))?;
    Ok(())
}

#[test]
fn podman_pods_in_ebpf_mode_daemon_restart_mesh_config_edits_and_fail_closed() -> Result<()> {
    interceptor_tests::needs_root!();
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: podman cannot run here: {why}");
        return Ok(());
    }
    let t0 = Instant::now();
    let node = Node::new()?;
    node.start_world()?;
    let pod = format!("{}-web", node.id);
    node.write_manifest("default", &pod, &[(EXCLUDED, "203.0.113.10/32")])?;
    let first_start = node.start_daemon("ebpf")?;
    ensure!(node.http_get("/healthz")?.0 == 200);
    let (code, body) = node.http_get("/readyz")?;
    ensure!(code == 200 && body.contains("ebpf mode"), "readyz: {code} {body}");
    ensure!(status(&node)?.mode == Mode::Ebpf);

    let mut report = Report::default();
    let t_pod = Instant::now();
    let (sidecar_id, _) = node.start_pod(&pod, &node.network)?;
    let pod_start = t_pod.elapsed();
    let app = format!("{pod}-app");
    common_flows(&node, &mut report, &pod, Mode::Ebpf)?;
    let check: interceptor::api::CheckResult = node.api().get(&format!("/v1/pods/{sidecar_id}/check"))?;
    ensure!(check.problems.is_empty(), "{check:?}");
    // The command-line client, and the API's machine-readable errors.
    let cli = |args: &[&str]| -> Result<String> {
        let o = std::process::Command::new(sibling_binary("interceptor"))
            .args(args)
            .arg("--socket")
            .arg(&node.socket)
            .output()?;
        ensure!(o.status.success(), "interceptor {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let list = cli(&["pods", "list"])?;
    ensure!(list.contains(&format!("default/{pod}")) && list.contains("ebpf"), "{list}");
    let show = cli(&["pods", "show", &pod])?;
    for needle in ["mode        ebpf", "in force    yes", "exclude 203.0.113.10/32", "manifests/default/"] {
        ensure!(show.contains(needle), "pods show lacks {needle:?}:\n{show}");
    }
    let refused = |method: &str, path: &str, body: Option<serde_json::Value>| -> (u16, String) {
        match node.api().call::<serde_json::Value, _>(method, path, body.as_ref()) {
            Err(ClientError::Refused { status, code, .. }) => (status, code),
            other => (0, format!("{other:?}")),
        }
    };
    ensure!(refused("POST", "/v1/pods", Some(serde_json::json!({"netns": 5}))) == (400, "bad_request".into()));
    let nowhere = serde_json::json!({"container_id": "c0ffee", "netns": "/var/run/netns/interceptor-test-none"});
    ensure!(refused("POST", "/v1/pods", Some(nowhere)) == (422, "netns_not_found".into()));
    ensure!(refused("GET", "/v1/pods/nope", None) == (404, "pod_not_found".into()));
    ensure!(refused("DELETE", "/v1/pods/nope", None) == (404, "pod_not_found".into()));
    ensure!(refused("GET", "/v1/nothing", None) == (404, "not_found".into()));
    ensure!(refused("PUT", "/v1/pods", None) == (405, "method_not_allowed".into()));
    // A pod whose annotations are invalid does not start, with the plugin's error.
    let bad = format!("{}-bad", node.id);
    node.write_manifest("default", &bad, &[("openservicemesh.io/outbound-port-exclusion-list", "http")])?;
    let err = match node.run(
        &bad,
        &node.network,
        1000,
        &["/itest/netprobe", "serve", "--name", "bad", "--listen", "0.0.0.0:8080"],
    ) {
        Ok(id) => bail!("a pod with an invalid annotation started: {id}"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("a pod with an invalid annotation: {err}");
    ensure!(err.contains("invalid port \"http\""), "the policy error must reach the operator: {err}");
    ensure!(pods(&node)?.pods.len() == 1, "nothing recorded for the refused pod");

    // A route/address change in the pod after its enrollment is picked up: a new local
    // address is "-o lo" for iptables, so the app's connection to it goes direct.
    let netns = pods(&node)?.pods[0].netns.clone();
    let out = interceptor::netns::Netns::at(&netns)
        .command("ip")?
        .args(["addr", "add", "198.51.100.77/32", "dev", "lo"])
        .output()?;
    ensure!(out.status.success(), "ip addr add: {}", String::from_utf8_lossy(&out.stderr));
    wait_for("the route watcher's re-enroll", Duration::from_secs(10), || {
        Ok(pods(&node)?.pods[0].last_reason == "routes")
    })?;
    let to = "198.51.100.77:8080";
    report.expect("address added after enroll", "app (UID 1000)", to, node.connect_from(&app, to)?, "app", None)?;

    // MeshConfig edit: new exclusions apply to new connections, a held one keeps its path.
    let held = Exec::start(&node, &app, &["/itest/netprobe", "connect-hold", "--to", &format!("{NODE_IP}:7070")])?;
    let first = held.line()?;
    ensure!(first.server.as_deref() == Some("sidecar-out"), "{first:?}");
    write_mesh_config(&node, "[7070]")?;
    wait_for("the MeshConfig reload", Duration::from_secs(10), || Ok(status(&node)?.mesh_config.reloads == 1))?;
    wait_for("the re-apply", Duration::from_secs(10), || Ok(pods(&node)?.pods[0].last_reason == "mesh-config"))?;
    let to = format!("{NODE_IP}:7070");
    report.expect("after the MeshConfig edit", "app (UID 1000)", &to, node.connect_from(&app, &to)?, "world", None)?;
    ensure!(status(&node)?.mesh_config.rejected == 0, "a file being written is not a rejected edit");
    writeln!(held.stdin.as_ref().unwrap(), "again")?;
    let again = held.line()?;
    report.expect("held across the edit", "app (UID 1000)", &to, again, "sidecar-out", Some(&to))?;
    drop(held);
    // An invalid edit is refused and counted; the previous MeshConfig stays in force.
    write_mesh_config(&node, "[70000]")?;
    wait_for("the rejected edit", Duration::from_secs(10), || Ok(status(&node)?.mesh_config.rejected == 1))?;
    let s = status(&node)?;
    ensure!(s.mesh_config.last_error.as_deref().is_some_and(|e| e.contains("70000")), "{s:?}");
    report.expect("after an invalid edit", "app (UID 1000)", &to, node.connect_from(&app, &to)?, "world", None)?;

    // SIGKILL and restart while a client connects in a loop: interception never stops and
    // nothing is re-enrolled.
    let before = ebpf::status(&node.pins)?.pods;
    ensure!(before.len() == 1, "{before:?}");
    let applies = pods(&node)?.pods[0].applies;
    let dst = format!("{NODE_IP}:80");
    let looping = Exec::start(&node, &app, &["/itest/netprobe", "connect-loop", "--to", &dst, "--interval-ms", "5"])?;
    std::thread::sleep(Duration::from_millis(400));
    let t_kill = now_ms();
    node.stop_daemon(libc::SIGKILL)?;
    // Down for a while (a crash-looping daemon), then back.
    std::thread::sleep(Duration::from_millis(500));
    let restart = node.start_daemon("ebpf")?;
    let t_ready = now_ms();
    std::thread::sleep(Duration::from_millis(400));
    let lines = looping.finish()?;
    let landings: Vec<(u64, Landing)> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["t_ms"].as_u64().unwrap_or(0), Landing::from_json(&v)))
        .collect();
    let intercepted =
        |l: &Landing| l.server.as_deref() == Some("sidecar-out") && l.orig.as_deref() == Some(dst.as_str());
    let during: Vec<&(u64, Landing)> = landings.iter().filter(|(t, _)| *t >= t_kill && *t <= t_ready).collect();
    let missed: Vec<&(u64, Landing)> = landings.iter().filter(|(_, l)| !intercepted(l)).collect();
    let gap = format!(
        "restart: {} connections attempted in all, {} while the daemon was down or starting ({} ms), {} not intercepted",
        landings.len(),
        during.len(),
        t_ready - t_kill,
        missed.len()
    );
    eprintln!("{gap}");
    ensure!(during.len() >= 20, "too few connections during the restart to prove anything: {gap}");
    ensure!(missed.is_empty(), "{gap}: {:?}", missed.iter().take(5).collect::<Vec<_>>());
    let after = ebpf::status(&node.pins)?.pods;
    ensure!(
        after.iter().map(|p| p.generation).collect::<Vec<_>>()
            == before.iter().map(|p| p.generation).collect::<Vec<_>>(),
        "the restart must not re-enroll: {before:?} → {after:?}"
    );
    let p = &pods(&node)?.pods[0];
    ensure!(p.id == sidecar_id && p.applies == applies, "the pod is adopted as it was, no re-ADD: {p:?}");

    // Stopped daemon (SIGTERM): interception stays; a new pod cannot start without it
    // (the plugin fails closed); an exempt namespace still starts.
    let exit = node.stop_daemon(libc::SIGTERM)?;
    ensure!(exit.success(), "SIGTERM: {exit}");
    ensure!(node.pins.is_loaded(), "stopping the daemon must not unload anything");
    let to = format!("{NODE_IP}:80");
    report.expect("daemon stopped", "app (UID 1000)", &to, node.connect_from(&app, &to)?, "sidecar-out", Some(&to))?;
    let late = format!("{}-late", node.id);
    let err = node.run(
        &late,
        &node.network,
        1000,
        &["/itest/netprobe", "serve", "--name", "late", "--listen", "0.0.0.0:8080"],
    );
    let err = match err {
        Ok(id) => bail!("a pod started while the daemon was down: {id}"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("a new pod while the daemon is stopped: {err}");
    ensure!(err.contains("interceptor daemon is unavailable"), "the plugin's error must reach the operator: {err}");
    let exempt = format!("{}-sys", node.id);
    node.run(
        &exempt,
        &node.exempt_network,
        1000,
        &["/itest/netprobe", "serve", "--name", "sys", "--listen", "0.0.0.0:8080"],
    )?;
    node.wait_logs(&exempt, 1)?;
    let to = "198.51.100.129:80";
    report.expect(
        "exempt namespace (kube-system)",
        "exempt pod",
        to,
        node.connect_from(&exempt, to)?,
        "world",
        None,
    )?;

    // The pod is deleted while the daemon is down (its DEL succeeds without the daemon);
    // the daemon's reconcile removes it when it comes back.
    node.remove(&[&app, &pod])?;
    ensure!(ebpf::status(&node.pins)?.pods.len() == 1, "nobody unenrolled it yet");
    node.start_daemon("ebpf")?;
    ensure!(pods(&node)?.pods.is_empty(), "reconciled at start: {:?}", pods(&node)?);
    ensure!(ebpf::status(&node.pins)?.pods.is_empty(), "unenrolled at start");

    // Container removed → DEL → unenrolled at once.
    let pod2 = format!("{}-api", node.id);
    node.write_manifest("default", &pod2, &[(EXCLUDED, "203.0.113.10/32")])?;
    node.start_pod(&pod2, &node.network)?;
    let app2 = format!("{pod2}-app");
    ensure!(pods(&node)?.pods.len() == 1 && ebpf::status(&node.pins)?.pods.len() == 1);
    let to = format!("{NODE_IP}:80");
    report.expect("second pod", "app (UID 1000)", &to, node.connect_from(&app2, &to)?, "sidecar-out", Some(&to))?;
    node.remove(&[&app2, &pod2])?;
    ensure!(pods(&node)?.pods.is_empty(), "DEL removed the pod");
    ensure!(ebpf::status(&node.pins)?.pods.is_empty(), "DEL unenrolled the pod");
    node.stop_daemon(libc::SIGTERM)?;
    ensure!(node.pins.is_loaded(), "stopping never unloads");
    node.uninstall()?;
    ensure!(!node.pins.path().exists(), "daemon --uninstall removes the pinned programs");

    let mut text = report.markdown("podman + CNI, eBPF mode");
    let _ = writeln!(
        text,
        "\n{gap}.\n\nDaemon start {first_start:.0?} (first), {restart:.0?} (after SIGKILL, adopting the pinned state); pod start (sidecar + app containers) {pod_start:.0?}; test {:.1?}.",
        t0.elapsed()
    );
    save_report("podman-ebpf", &text);
    Ok(())
}

#[test]
fn podman_pods_in_iptables_mode_and_del_leaves_the_tables_clean() -> Result<()> {
    interceptor_tests::needs_root!();
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: podman cannot run here: {why}");
        return Ok(());
    }
    let t0 = Instant::now();
    let node = Node::new()?;
    node.start_world()?;
    let pod = format!("{}-web", node.id);
    node.write_manifest("default", &pod, &[(EXCLUDED, "203.0.113.10/32")])?;
    node.start_daemon("iptables")?;
    let s = status(&node)?;
    ensure!(s.mode == Mode::Iptables && s.mode_reason.contains("forced"), "{s:?}");
    let mut report = Report::default();
    let (sidecar_id, _) = node.start_pod(&pod, &node.network)?;
    let app = format!("{pod}-app");
    let ip = common_flows(&node, &mut report, &pod, Mode::Iptables)?;
    let netns = pods(&node)?.pods[0].netns.clone();
    let running = Node::nat_table(std::path::Path::new(&netns))?;
    ensure!(running.contains(":PROXY_OUTPUT") && running.contains("-j PROXY_REDIRECT"), "{running}");

    // The plugin itself, as a runtime calls it, against the running pod's namespace.
    let args = format!("IgnoreUnknown=1;K8S_POD_NAME={pod}");
    let prev = format!(r#"{{"cniVersion":"1.0.0","ips":[{{"address":"{ip}/25","gateway":"{NODE_IP}"}}]}}"#);
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"{}","type":"interceptor-cni","socket":"{}","prevResult":{prev}}}"#,
        node.network,
        node.socket.display()
    );
    let (code, _) = node.cni("CHECK", &sidecar_id, &netns, &args, &conf)?;
    ensure!(code == 0, "CHECK of an intercepted pod");
    let (code, out) = node.cni("DEL", &sidecar_id, &netns, &args, &conf)?;
    ensure!(code == 0, "DEL: {out}");
    let clean = Node::nat_table(std::path::Path::new(&netns))?;
    ensure!(!clean.contains("PROXY_"), "DEL must remove every chain and hook:\n{clean}");
    let to = format!("{NODE_IP}:80");
    report.expect("after DEL", "app (UID 1000)", &to, node.connect_from(&app, &to)?, "world", None)?;
    let (code, out) = node.cni("CHECK", &sidecar_id, &netns, &args, &conf)?;
    ensure!(code != 0 && out.contains("is not intercepted"), "CHECK after DEL must fail: {out}");

    // Someone else's rules in the pod's nat table survive an ADD/DEL cycle untouched.
    for rule in [
        &["-t", "nat", "-N", "FOREIGN"][..],
        &["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "FOREIGN"],
    ] {
        let o = interceptor::netns::Netns::at(&netns).command("iptables")?.args(rule).output()?;
        ensure!(o.status.success(), "iptables {rule:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let before = Node::nat_table(std::path::Path::new(&netns))?;
    let (code, out) = node.cni("ADD", &sidecar_id, &netns, &args, &conf)?;
    ensure!(code == 0, "ADD: {out}");
    ensure!(out.trim() == prev, "ADD passes prevResult through unchanged: {out}");
    report.expect("ADD again", "app (UID 1000)", &to, node.connect_from(&app, &to)?, "sidecar-out", Some(&to))?;
    let (code, out) = node.cni("DEL", &sidecar_id, &netns, &args, &conf)?;
    ensure!(code == 0, "DEL: {out}");
    let after = Node::nat_table(std::path::Path::new(&netns))?;
    ensure!(after == before, "DEL must leave the pod's tables as they were:\nbefore:\n{before}\nafter:\n{after}");
    let (code, _) = node.cni("DEL", &sidecar_id, &netns, &args, &conf)?;
    ensure!(code == 0, "DEL is idempotent");

    // And through podman: ADD at start, DEL at removal.
    let pod2 = format!("{}-api", node.id);
    node.write_manifest("default", &pod2, &[(EXCLUDED, "203.0.113.10/32")])?;
    node.start_pod(&pod2, &node.network)?;
    let app2 = format!("{pod2}-app");
    ensure!(pods(&node)?.pods.len() == 1);
    report.expect("second pod", "app (UID 1000)", &to, node.connect_from(&app2, &to)?, "sidecar-out", Some(&to))?;
    node.remove(&[&app, &pod])?;
    // --uninstall removes every pod's rules (here the second pod's, still running).
    node.stop_daemon(libc::SIGTERM)?;
    let netns2 = std::path::PathBuf::from(&pods_offline(&node)?[0]);
    ensure!(Node::nat_table(&netns2)?.contains("PROXY_OUTPUT"));
    node.uninstall()?;
    let table = Node::nat_table(&netns2)?;
    ensure!(!table.contains("PROXY_"), "daemon --uninstall must remove the chains:\n{table}");
    report.expect("after daemon --uninstall", "app (UID 1000)", &to, node.connect_from(&app2, &to)?, "world", None)?;
    ensure!(!node.state_dir.join("pods.json").exists(), "--uninstall removes the state file");
    node.remove(&[&app2, &pod2])?;

    let mut text = report.markdown("podman + CNI, iptables mode");
    let _ = writeln!(text, "\nTest {:.1?}.", t0.elapsed());
    save_report("podman-iptables", &text);
    Ok(())
}
