//! `interceptor pods list|show`: the daemon's pods, asked over its API socket.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use interceptor::api::{AnnotationSource, DEFAULT_SOCKET, DaemonStatus, PodList, PodView, client::Client};

#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// The daemon's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value = "10")]
    pub timeout: u64,
}

impl SocketArg {
    fn client(&self) -> Client {
        Client::new(&self.socket, Duration::from_secs(self.timeout))
    }
}

#[derive(Subcommand, Debug)]
pub enum PodsCommand {
    /// Every pod the daemon intercepts, with its mode.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// One pod (by container ID, ID prefix, namespace/name or name): its policy and what the
    /// kernel enforces.
    Show {
        pod: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The daemon: mode, readiness, MeshConfig, counters.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub fn run(cmd: PodsCommand) -> Result<ExitCode> {
    match cmd {
        PodsCommand::List { json, socket } => {
            let list: PodList = socket.client().get("/v1/pods")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<40} {:<12} {:<8} {:<9} {:<24} NETNS", "POD", "ID", "MODE", "APPLIES", "LAST");
            for p in &list.pods {
                let last = match &p.last_error {
                    Some(_) => format!("{} (FAILED)", p.last_reason),
                    None => p.last_reason.clone(),
                };
                println!(
                    "{:<40} {:<12} {:<8} {:<9} {:<24} {}",
                    format!("{}/{}", p.namespace, p.name),
                    short(&p.id),
                    p.mode.to_string(),
                    p.applies,
                    last,
                    p.netns
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PodsCommand::Show { pod, json, socket } => {
            let client = socket.client();
            let list: PodList = client.get("/v1/pods")?;
            let matches: Vec<&PodView> = list
                .pods
                .iter()
                .filter(|p| {
                    p.id == pod
                        || format!("{}/{}", p.namespace, p.name) == pod
                        || p.name == pod
                        || p.id.starts_with(&pod)
                })
                .collect();
            let id = match matches.as_slice() {
                [] => bail!("no pod matches {pod:?} (see `interceptor pods list`)"),
                [one] => one.id.clone(),
                many => match many.iter().find(|p| p.id == pod) {
                    Some(exact) => exact.id.clone(),
                    None => bail!(
                        "{pod:?} matches {} pods: {}",
                        many.len(),
                        many.iter().map(|p| short(&p.id)).collect::<Vec<_>>().join(", ")
                    ),
                },
            };
            let view: PodView = client.get(&format!("/v1/pods/{id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_pod(&view);
            }
            Ok(if view.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        PodsCommand::Status { json, socket } => {
            let s: DaemonStatus = socket.client().get("/v1/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("interceptor daemon {} — {} mode ({})", s.version, s.mode, s.mode_reason);
                println!("ready: {}   pods: {}   pin dir: {}", s.ready, s.pods, s.pin_dir);
                let m = &s.mesh_config;
                println!(
                    "MeshConfig: {} — {} reload(s), {} rejected edit(s){}",
                    m.path.as_deref().unwrap_or("(none)"),
                    m.reloads,
                    m.rejected,
                    m.last_error.as_ref().map(|e| format!("\n  last error: {e}")).unwrap_or_default()
                );
                for (k, v) in &s.counters {
                    println!("  {k:<32} {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_pod(p: &PodView) {
    println!("pod {}/{}", p.namespace, p.name);
    println!("  id          {}", p.id);
    println!("  mode        {}", p.mode);
    println!("  netns       {}{}", p.netns, p.netns_cookie.map(|c| format!(" (cookie {c})")).unwrap_or_default());
    if !p.ips.is_empty() {
        println!("  addresses   {}", p.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    }
    let from = match &p.annotations_from {
        AnnotationSource::Runtime => "the container runtime".to_string(),
        AnnotationSource::Manifest { path } => path.clone(),
        AnnotationSource::None => "none (MeshConfig only)".to_string(),
    };
    println!("  annotations {from}");
    println!("  applied     {} time(s), last: {}", p.applies, p.last_reason);
    // A MeshConfig list may hold thousands of ranges: the first few, and how many (`--json`
    // prints them all).
    const SHOWN: usize = 8;
    let list = |key: &str| -> String {
        match p.policy.as_ref().and_then(|policy| policy.get(key)) {
            Some(serde_json::Value::Array(a)) if !a.is_empty() => {
                let mut text = a
                    .iter()
                    .take(SHOWN)
                    .map(|v| {
                        v.get("text").and_then(|t| t.as_str()).map(str::to_string).unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                if a.len() > SHOWN {
                    text.push_str(&format!(",… ({} in all)", a.len()));
                }
                text
            }
            _ => "-".to_string(),
        }
    };
    println!(
        "  policy      exclude {} include {} out-ports {} in-ports {} ifaces {}",
        list("outbound_ip_range_exclusions"),
        list("outbound_ip_range_inclusions"),
        list("outbound_port_exclusions"),
        list("inbound_port_exclusions"),
        list("network_interface_exclusions")
    );
    if let Some(e) = &p.last_error {
        println!("  LAST ERROR  {e}");
    }
    if let Some(serde_json::Value::Object(o)) = &p.enforcement {
        print_traffic(o);
    }
    if p.problems.is_empty() {
        println!("  in force    yes");
    } else {
        for pr in &p.problems {
            println!("  PROBLEM     {pr}");
        }
    }
    for pr in &p.observed_problems {
        println!("  PROBLEM     {pr}");
    }
}

/// The pod's counters from its `ebpf status` entry, as the metrics name them: decisions by
/// direction and action, untracked connections, connections being handed over.
fn print_traffic(o: &serde_json::Map<String, serde_json::Value>) {
    let counts = |v: Option<&serde_json::Value>, skip: &[&str]| -> String {
        let items: Vec<String> = v
            .and_then(|v| v.as_object())
            .map(|m| m.iter().filter(|(k, _)| !skip.contains(&k.as_str())).map(|(k, n)| format!("{k} {n}")).collect())
            .unwrap_or_default();
        if items.is_empty() { "-".into() } else { items.join(", ") }
    };
    for direction in ["outbound", "inbound"] {
        let Some(c) = o.get(direction) else { continue };
        let refused: Vec<&str> = c
            .get("refused")
            .and_then(|r| r.as_object())
            .map(|r| r.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut skip = refused.clone();
        skip.extend(["tracking_lost", "original_dst_unknown"]);
        println!(
            "  {:<11} redirected {} ({}); passed {}; refused {}",
            direction,
            c.get("redirected").and_then(|n| n.as_u64()).unwrap_or(0),
            counts(c.get("redirected_by_reason"), &[]),
            counts(c.get("passed"), &skip),
            counts(c.get("refused"), &[]),
        );
    }
    if let Some(u) = o.get("untracked").and_then(|u| u.as_object()) {
        let total: u64 = u.values().filter_map(|n| n.as_u64()).sum();
        let zero: Vec<&str> = u.iter().filter(|(_, n)| n.as_u64() == Some(0)).map(|(k, _)| k.as_str()).collect();
        let u = serde_json::Value::Object(u.clone());
        println!(
            "  untracked   {total}{}",
            if total > 0 { format!(" ({})", counts(Some(&u), &zero)) } else { String::new() }
        );
    }
    if let Some(t) = o.get("tracking") {
        println!(
            "  handing over {} of {}",
            t.get("in_flight").and_then(|n| n.as_u64()).unwrap_or(0),
            t.get("limit").and_then(|n| n.as_u64()).unwrap_or(0)
        );
    }
}
