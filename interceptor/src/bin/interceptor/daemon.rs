//! `interceptor daemon`: the node daemon's flags (the daemon itself is the library's).
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, ValueEnum};
use interceptor::{
    api::DEFAULT_SOCKET,
    daemon::{DEFAULT_STATE_DIR, DaemonOptions, ModeChoice},
    ebpf::pins::DEFAULT_PIN_DIR,
    policy::sources::AnnotationLimits,
};

use crate::args::NamesArg;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// eBPF when this kernel has every feature it needs (`ebpf probe`), else iptables.
    Auto,
    /// eBPF programs (refuses to start on a kernel without what they need).
    Ebpf,
    /// osm-edge's nat chains inside each pod's network namespace.
    Iptables,
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// How pods are intercepted.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,
    /// Directory (on a bpf filesystem) holding the pinned eBPF state.
    #[arg(long = "pin-dir", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Cgroup (v2) to attach the eBPF programs at (default: the cgroup v2 root, every pod).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// The API's unix socket (created with mode 0600).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Where the daemon keeps what must survive a restart (pods.json, the last valid
    /// MeshConfig) and its lock.
    #[arg(long = "state-dir", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The MeshConfig (YAML or JSON), watched: valid edits apply live to every pod.
    #[arg(long = "mesh-config", value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// Pod manifests `<DIR>/<namespace>/<name>.yaml|yml|json`, for pods whose runtime passes
    /// no annotations (watched).
    #[arg(long = "pod-manifest-dir", value_name = "DIR")]
    pub pod_manifest_dir: Option<PathBuf>,
    /// Serve GET /healthz, /readyz and /metrics (Prometheus) on this TCP address (e.g.
    /// 127.0.0.1:9464).
    #[arg(long = "metrics-addr", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often to reconcile (e.g. 10s, 500ms).
    #[arg(long = "reconcile-interval", default_value = "10s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,
    /// eBPF mode: redirected connections being handed over at once on the node (see
    /// `ebpf load`).
    #[arg(long)]
    pub max_tracked_connections: Option<u32>,
    /// eBPF mode: the same limit per pod (see `ebpf load`).
    #[arg(long)]
    pub max_tracked_connections_per_pod: Option<u32>,
    /// eBPF mode: socket-level acceleration of app ↔ sidecar connections (see `ebpf load
    /// --accelerate`).
    #[arg(long)]
    pub accelerate: bool,
    /// The most ranges one IP range annotation of a pod may list (a pod asking for more is
    /// refused: a pod's own ranges are stored with it, the MeshConfig's once for all pods).
    #[arg(long = "max-annotation-cidrs", value_name = "N", default_value_t = interceptor_common::annotation_limits::CIDRS)]
    pub max_annotation_cidrs: usize,
    /// The most ports one port annotation of a pod may list.
    #[arg(long = "max-annotation-ports", value_name = "N", default_value_t = interceptor_common::annotation_limits::PORTS)]
    pub max_annotation_ports: usize,
    #[command(flatten)]
    pub names: NamesArg,
    /// Remove everything the daemon installed (every pod's interception, the pinned eBPF
    /// state, the state file) and exit.
    #[arg(long)]
    pub uninstall: bool,
}

/// `10s`, `500ms`, `2m`, or seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s or m)")),
    };
    if secs <= 0.0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(args: DaemonArgs) -> Result<ExitCode> {
    interceptor::daemon::run(DaemonOptions {
        mode: match args.mode {
            ModeArg::Auto => ModeChoice::Auto,
            ModeArg::Ebpf => ModeChoice::Ebpf,
            ModeArg::Iptables => ModeChoice::Iptables,
        },
        pin_dir: args.pin_dir,
        cgroup: args.cgroup,
        socket: args.socket,
        state_dir: args.state_dir,
        mesh_config: args.mesh_config,
        pod_manifest_dir: args.pod_manifest_dir,
        metrics_addr: args.metrics_addr,
        reconcile_interval: args.reconcile_interval,
        max_tracked_connections: args.max_tracked_connections,
        max_tracked_connections_per_pod: args.max_tracked_connections_per_pod,
        accelerate: args.accelerate,
        annotation_limits: AnnotationLimits { cidrs: args.max_annotation_cidrs, ports: args.max_annotation_ports },
        names: args.names.names(),
        uninstall: args.uninstall,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
