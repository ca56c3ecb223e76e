//! What only the daemon knows: its operations on pods, the CNI plugin's requests, MeshConfig
//! reloads, readiness, start time — `prometheus-client` families it updates as they happen —
//! served on `GET /metrics` with the node's eBPF state ([`super::node`]).
use std::{
    collections::BTreeMap,
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::{PREFIX, node::NodeCollector};
use crate::{api::Mode, daemon::core::Daemon, ebpf};

/// What the daemon does to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A new pod (CNI ADD): eBPF enroll or iptables apply.
    Enroll,
    /// A known pod again: ADD repeated, MeshConfig or manifest edit, routes changed, repair.
    Reenroll,
    /// DEL, a pod whose namespace went, an orphaned enrollment.
    Unenroll,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Enroll => "enroll",
            Operation::Reenroll => "reenroll",
            Operation::Unenroll => "unenroll",
        }
    }
}

/// The CNI commands, as the API sees them (ADD = POST /v1/pods, DEL = DELETE
/// /v1/pods/{id}, CHECK = GET /v1/pods/{id}/check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    fn name(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    operation: &'static str,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    command: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Upper bounds of the duration histogram, seconds: an eBPF enroll of a small policy takes
/// milliseconds, an iptables-restore tens, a policy of 100 000 CIDRs seconds.
const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Ebpf => "ebpf",
        Mode::Iptables => "iptables",
    }
}

#[derive(Debug)]
pub struct DaemonMetrics {
    operations: Family<OperationLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    cni: Family<CniLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    start_time: Gauge<f64, AtomicU64>,
}

impl DaemonMetrics {
    /// Families with their usual series present at zero (a series that appears only with
    /// its first increment hides that increment from `increase()` and `rate()`).
    pub fn new(mode: Mode) -> DaemonMetrics {
        let m = DaemonMetrics {
            operations: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            cni: Family::default(),
            reloads: Family::default(),
            start_time: Gauge::default(),
        };
        let mode = mode_name(mode);
        for op in [Operation::Enroll, Operation::Reenroll, Operation::Unenroll] {
            for result in ["ok", "error"] {
                let _ = m.operations.get_or_create(&OperationLabels { operation: op.name(), mode, result });
            }
            let _ = m.durations.get_or_create(&DurationLabels { operation: op.name(), mode });
        }
        for command in [CniCommand::Add, CniCommand::Del, CniCommand::Check] {
            let _ = m.cni.get_or_create(&CniLabels { command: command.name(), result: "ok" });
        }
        for result in ["ok", "rejected"] {
            let _ = m.reloads.get_or_create(&ResultLabel { result });
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        m.start_time.set(now.as_secs_f64());
        m
    }

    /// One enroll, re-enroll or unenroll, successful or not, and how long programming the
    /// kernel took (`None`: it failed before, e.g. an invalid policy).
    pub fn operation(&self, op: Operation, mode: Mode, ok: bool, took: Option<Duration>) {
        let mode = mode_name(mode);
        let result = if ok { "ok" } else { "error" };
        self.operations.get_or_create(&OperationLabels { operation: op.name(), mode, result }).inc();
        if let Some(took) = took {
            self.durations.get_or_create(&DurationLabels { operation: op.name(), mode }).observe(took.as_secs_f64());
        }
    }

    /// A CNI plugin's request answered: `result` is "ok" or the API's error code.
    pub fn cni_request(&self, command: CniCommand, result: &'static str) {
        self.cni.get_or_create(&CniLabels { command: command.name(), result }).inc();
    }

    /// A MeshConfig edit applied (`ok`) or refused.
    pub fn mesh_config_reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "rejected" } }).inc();
    }

    pub(super) fn register(&self, registry: &mut Registry, ready: bool) {
        use super::{CNI_REQUESTS, MESH_CONFIG_RELOADS, POD_OPERATION_DURATION, POD_OPERATIONS, READY, START_TIME};
        registry.register(POD_OPERATIONS.name, POD_OPERATIONS.help, self.operations.clone());
        registry.register(POD_OPERATION_DURATION.name, POD_OPERATION_DURATION.help, self.durations.clone());
        registry.register(CNI_REQUESTS.name, CNI_REQUESTS.help, self.cni.clone());
        registry.register(MESH_CONFIG_RELOADS.name, MESH_CONFIG_RELOADS.help, self.reloads.clone());
        registry.register(START_TIME.name, START_TIME.help, self.start_time.clone());
        let gauge: Gauge = Gauge::default();
        gauge.set(ready as i64);
        registry.register(READY.name, READY.help, gauge);
    }
}

/// `GET /metrics`: the daemon's families and the node's eBPF state, read now (blocking: it
/// reads the pinned maps under the installation's shared lock).
pub fn render(d: &Daemon) -> Result<String, super::MetricsError> {
    let status = ebpf::status(&d.cfg.pins)?;
    let records = d.records();
    let names: BTreeMap<u64, (String, String)> = records
        .iter()
        .filter(|r| r.mode == Mode::Ebpf)
        .filter_map(|r| Some((r.netns_cookie?, (r.namespace.clone(), r.name.clone()))))
        .collect();
    let iptables = records.iter().filter(|r| r.mode == Mode::Iptables).count();
    let mut registry = Registry::with_prefix(PREFIX);
    d.metrics.register(&mut registry, crate::daemon::http::not_ready_reasons(d).is_empty());
    registry.register_collector(Box::new(NodeCollector::new(status, names, Some(iptables))));
    super::encode(&registry)
}
