//! Prometheus metrics, in the Prometheus text format (0.0.4), written with the official
//! `prometheus-client` crate.
//!
//! Two sources, one encoding:
//!
//! * [`node`]: what the kernel holds, read through [`crate::ebpf::status`] (the same read as
//!   `ebpf status`, never a second way): decisions per pod from the per-CPU `COUNTERS` map
//!   (summed over CPUs), connections that could not be tracked, hand-over tracking in use
//!   and its limits, every pinned map's entries and capacity, policy generations, orphaned
//!   state, build info. `interceptor ebpf metrics` prints only these (no daemon needed: a
//!   node-exporter textfile collector can run it);
//! * [`daemon`]: what only the daemon knows, served with the above on `GET /metrics`:
//!   enroll / re-enroll / unenroll by result and their duration, CNI requests, MeshConfig
//!   reloads, iptables-mode pods, readiness and start time.
//!
//! Every family is listed in [`FAMILIES`] (name, type, labels, meaning): the README's
//! table and the example dashboard are checked against it.
//!
//! Counters are monotonic for as long as their series lives. The eBPF counters of a pod are
//! deleted when it is unenrolled: its series disappear (a pod enrolled again starts from
//! zero, as a restarted process does). The tracking table never evicts (nothing to count:
//! a connection that does not fit is refused and counted in
//! `interceptor_untracked_connections_total`).
pub mod daemon;
pub mod node;
#[cfg(test)]
mod tests;

use prometheus_client::{encoding::prometheus_text, registry::Registry};

use crate::ebpf::{self, PinDir};

/// Every metric name starts with it (and `_`).
pub const PREFIX: &str = "interceptor";

/// The `Content-Type` of what [`render`] produces.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Without the prefix, and without `_total` for counters (the encoder appends it).
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Only the daemon serves it (`ebpf metrics` cannot know it).
    pub daemon_only: bool,
}

impl Spec {
    /// The name as Prometheus sees it: `interceptor_<name>[_total]`.
    pub fn exposed_name(&self) -> String {
        let total = if self.kind == Kind::Counter { "_total" } else { "" };
        format!("{PREFIX}_{}{total}", self.name)
    }
}

const fn spec(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
    daemon_only: bool,
) -> Spec {
    Spec { name, kind, labels, help, daemon_only }
}

const POD: &[&str] = &["namespace", "pod"];

pub const DECISIONS: Spec = spec(
    "decisions",
    Kind::Counter,
    &["namespace", "pod", "direction", "action", "reason"],
    "Connections (and local DNS proxy datagrams) the eBPF programs decided on, per pod, by direction, action \
     (redirect, pass, refuse) and the rule's reason; per-CPU counters summed",
    false,
);
pub const UNTRACKED: Spec = spec(
    "untracked_connections",
    Kind::Counter,
    &["namespace", "pod", "reason"],
    "Connections whose original destination could not be tracked: refused at connect() (refused_pod_limit, \
     refused_node_limit, refused_no_memory), redirected but lost (tracking_lost), or SO_ORIGINAL_DST answered \
     ENOENT (original_dst_unknown); every reason of every pod, zeros included",
    false,
);
pub const POD_IN_FLIGHT: Spec = spec(
    "tracking_in_flight_connections",
    Kind::Gauge,
    POD,
    "Redirected connections of the pod being handed over to its sidecar (SYN sent, the sidecar's end not yet \
     created)",
    false,
);
pub const POD_LIMIT: Spec = spec(
    "tracking_pod_limit_connections",
    Kind::Gauge,
    &[],
    "Connections a pod may have being handed over at once (--max-tracked-connections-per-pod); beyond it \
     connect() is refused",
    false,
);
pub const NODE_IN_FLIGHT: Spec = spec(
    "tracking_node_in_flight_connections",
    Kind::Gauge,
    &[],
    "Redirected connections being handed over on the node (entries of the HANDOFF table)",
    false,
);
pub const NODE_LIMIT: Spec = spec(
    "tracking_node_limit_connections",
    Kind::Gauge,
    &[],
    "Connections the node may have being handed over at once (--max-tracked-connections); beyond it connect() is \
     refused",
    false,
);
pub const MAP_ENTRIES: Spec = spec(
    "ebpf_map_entries",
    Kind::Gauge,
    &["map"],
    "Entries in use in each pinned eBPF map that can fill up (arrays, ring buffers and socket storage left out)",
    false,
);
pub const MAP_MAX_ENTRIES: Spec =
    spec("ebpf_map_max_entries", Kind::Gauge, &["map"], "Capacity of the same pinned eBPF maps", false);
pub const ENROLLED_PODS: Spec = spec(
    "enrolled_pods",
    Kind::Gauge,
    &["mode"],
    "Pods intercepted, by mode: ebpf as the maps hold them, iptables as the daemon knows them (daemon only)",
    false,
);
pub const OUTSIDE_PROCESSES: Spec = spec(
    "pod_outside_cgroup_processes",
    Kind::Gauge,
    POD,
    "Processes of the pod's network namespace outside the cgroup the programs are attached to: their connections \
     are not intercepted",
    false,
);
pub const LOADED: Spec =
    spec("ebpf_loaded", Kind::Gauge, &[], "1 when eBPF mode is loaded at the pin directory", false);
pub const GENERATIONS: Spec =
    spec("ebpf_policy_generations", Kind::Gauge, &[], "Policy generations present in the maps", false);
pub const ORPHANED_GENERATIONS: Spec = spec(
    "ebpf_orphaned_policy_generations",
    Kind::Gauge,
    &[],
    "Policy generations no pod references (left by interrupted commands; gc deletes them)",
    false,
);
pub const DEAD_PODS: Spec = spec(
    "ebpf_dead_pods",
    Kind::Gauge,
    &[],
    "Enrolled pods whose network namespace is gone (gc and the daemon's reconcile unenroll them)",
    false,
);
pub const UPGRADE_INTERRUPTED: Spec = spec(
    "ebpf_upgrade_interrupted",
    Kind::Gauge,
    &[],
    "1 when an upgrade of the programs was interrupted (the next load completes it)",
    false,
);
pub const BUILD_INFO: Spec = spec(
    "build_info",
    Kind::Gauge,
    &["version", "fingerprint", "loaded_fingerprint", "kernel_release"],
    "Always 1: this build's version and eBPF object fingerprint, the fingerprint of the programs loaded (empty when \
     none), the kernel release",
    false,
);
pub const POD_OPERATIONS: Spec = spec(
    "pod_operations",
    Kind::Counter,
    &["operation", "mode", "result"],
    "Pods enrolled, re-enrolled (policy or routes changed, repair) and unenrolled by the daemon, by mode and result \
     (ok, error)",
    true,
);
pub const POD_OPERATION_DURATION: Spec = spec(
    "pod_operation_duration_seconds",
    Kind::Histogram,
    &["operation", "mode"],
    "Time to enroll, re-enroll or unenroll a pod (programming the kernel), successful or not",
    true,
);
pub const CNI_REQUESTS: Spec = spec(
    "cni_requests",
    Kind::Counter,
    &["command", "result"],
    "Requests of the CNI plugin on the daemon's API (ADD, DEL, CHECK), by result: ok or the API's error code",
    true,
);
pub const MESH_CONFIG_RELOADS: Spec = spec(
    "mesh_config_reloads",
    Kind::Counter,
    &["result"],
    "MeshConfig edits seen by the daemon: ok (applied) or rejected (invalid or unreadable; the previous one stays \
     in force)",
    true,
);
pub const START_TIME: Spec =
    spec("daemon_start_time_seconds", Kind::Gauge, &[], "When the daemon started, in seconds since the epoch", true);
pub const READY: Spec = spec(
    "daemon_ready",
    Kind::Gauge,
    &[],
    "1 when the daemon is ready (programs attached, state reconciled, API socket serving), as /readyz says",
    true,
);

/// Every family, in the order they are written.
pub const FAMILIES: [Spec; 22] = [
    DECISIONS,
    UNTRACKED,
    POD_IN_FLIGHT,
    POD_LIMIT,
    NODE_IN_FLIGHT,
    NODE_LIMIT,
    MAP_ENTRIES,
    MAP_MAX_ENTRIES,
    ENROLLED_PODS,
    OUTSIDE_PROCESSES,
    LOADED,
    GENERATIONS,
    ORPHANED_GENERATIONS,
    DEAD_PODS,
    UPGRADE_INTERRUPTED,
    BUILD_INFO,
    POD_OPERATIONS,
    POD_OPERATION_DURATION,
    CNI_REQUESTS,
    MESH_CONFIG_RELOADS,
    START_TIME,
    READY,
];

/// The metrics could not be read (the eBPF state) or written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error("cannot encode the metrics")]
    Encode(#[source] std::fmt::Error),
}

type Result<T> = std::result::Result<T, MetricsError>;

/// Encodes a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String> {
    let mut out = String::new();
    prometheus_text::encode(&mut out, registry).map_err(MetricsError::Encode)?;
    Ok(out)
}

/// `interceptor ebpf metrics`: what the kernel holds, without the daemon.
pub fn render_ebpf(pins: &PinDir) -> Result<String> {
    let status = ebpf::status(pins)?;
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(node::NodeCollector::new(status, Default::default(), None)));
    encode(&registry)
}
