//! The node daemon at the scale benchmark's size: the same lightweight pod namespaces added
//! through its API (as the CNI plugin adds them), under the same MeshConfig, then the
//! MeshConfig file edited — the way an operator changes it — until every pod is re-applied.
//!
//! Measured end to end, as an operator sees it: each add's answer time, the time from the
//! file's write until the daemon has re-applied the change to the last pod (its counters
//! say so), the daemon's resident memory and its state file. Checked: after the change,
//! the daemon's own check (`GET /v1/pods/{id}/check`: the kernel's lists against the pod's
//! policy) for a sample of pods.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use interceptor::api::{AddPod, CheckResult, DaemonStatus, PodView, client::Client};
use interceptor_tests::{Sandbox, daemon::TestDaemon};
use serde::Serialize;

/// How long the change may take before the benchmark gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Serialize)]
pub struct DaemonScale {
    pub pods: usize,
    pub add_first_ms: f64,
    pub add_median_ms: f64,
    pub add_last_ms: f64,
    /// From the MeshConfig file's write until the daemon re-applied it to every pod.
    pub change_in_force_ms: f64,
    pub rss_mib: f64,
    pub rss_after_change_mib: f64,
    pub state_file_kib: f64,
    /// Pods whose check was asked after the change, and the problems found.
    pub checked: usize,
    pub check_failures: Vec<String>,
}

/// The daemon's resident memory (MiB).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kib| kib.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `pods[i]`: a pod namespace's name (under /var/run/netns) and its annotations.
pub fn run(
    pods: &[(String, BTreeMap<String, String>)],
    mesh_before: &str,
    mesh_after: &str,
    sample: usize,
) -> Result<DaemonScale> {
    // A sandbox of its own: its world namespace runs the daemon, its pin directory and
    // cgroup are the daemon's installation (unloaded when it is dropped).
    let sb = Sandbox::with_host(5)?;
    let daemon = TestDaemon::start(&sb, mesh_before, &[])?;
    let client = Client::new(&daemon.socket, Duration::from_secs(60));
    let mut add_ms = Vec::with_capacity(pods.len());
    let t = Instant::now();
    for (i, (netns, annotations)) in pods.iter().enumerate() {
        let req = AddPod {
            container_id: format!("scale{i:05}"),
            netns: format!("/var/run/netns/{netns}"),
            namespace: Some("scale".into()),
            name: Some(format!("pod{i}")),
            annotations: Some(annotations.clone()),
            ips: vec![],
        };
        let started = Instant::now();
        let _: PodView = client.post("/v1/pods", &req).with_context(|| format!("adding pod {i} to the daemon"))?;
        add_ms.push(millis(started.elapsed()));
        if (i + 1) % 200 == 0 {
            eprintln!("scale: daemon: {} pods added ({:.1?})", i + 1, t.elapsed());
        }
    }
    let pid = daemon.pid().context("the daemon is not running")?;
    let rss = rss_mib(pid);
    let state_file_kib = std::fs::metadata(daemon.state_dir.join("pods.json"))?.len() as f64 / 1024.0;

    let reapplied = |client: &Client| -> Result<u64> {
        let s: DaemonStatus = client.get("/v1/status")?;
        Ok(s.counters.get("reapply_mesh_config").copied().unwrap_or(0))
    };
    let before = reapplied(&client)?;
    eprintln!("scale: daemon: MeshConfig change");
    let t = Instant::now();
    std::fs::write(&daemon.mesh_config, mesh_after)?;
    loop {
        if reapplied(&client)? >= before + pods.len() as u64 {
            break;
        }
        if t.elapsed() > CHANGE_TIMEOUT {
            bail!(
                "the daemon re-applied {} of {} pods in {CHANGE_TIMEOUT:?}",
                reapplied(&client)? - before,
                pods.len()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let change_in_force_ms = millis(t.elapsed());
    let rss_after_change_mib = rss_mib(pid);

    let step = (pods.len() / sample.max(1)).max(1);
    let mut checked = 0;
    let mut check_failures = Vec::new();
    for i in (0..pods.len()).step_by(step) {
        checked += 1;
        match client.get::<CheckResult>(&format!("/v1/pods/scale{i:05}/check")) {
            Ok(c) if c.problems.is_empty() => {}
            Ok(c) => check_failures.push(format!("daemon pod {i}: {}", c.problems.join("; "))),
            Err(e) => check_failures.push(format!("daemon pod {i}: {e}")),
        }
    }
    drop(daemon);
    drop(sb);
    Ok(DaemonScale {
        pods: pods.len(),
        add_first_ms: add_ms[0],
        add_median_ms: super::scale::quantile(&add_ms, 0.5),
        add_last_ms: *add_ms.last().expect("pods"),
        change_in_force_ms,
        rss_mib: rss,
        rss_after_change_mib,
        state_file_kib,
        checked,
        check_failures,
    })
}
