//! The node daemon's local API: HTTP/1.1 + JSON on a unix socket (default
//! `/run/interceptor/interceptor.sock`, mode 0600), versioned under `/v1`.
//!
//! | method and path              | does                                           | answers            |
//! |------------------------------|------------------------------------------------|--------------------|
//! | `POST /v1/pods`              | add (enroll) a pod: [`AddPod`]                 | 201 (200 if known) |
//! | `GET /v1/pods`               | list the pods: [`PodList`]                     | 200                |
//! | `GET /v1/pods/{id}`          | one pod, with what the kernel enforces         | 200, 404           |
//! | `GET /v1/pods/{id}/check`    | is the pod's policy in force? [`CheckResult`]  | 200, 404, 409      |
//! | `DELETE /v1/pods/{id}`       | remove (unenroll) a pod                        | 200, 404           |
//! | `GET /v1/status`             | the daemon: mode, readiness, MeshConfig, counters | 200             |
//!
//! `{id}` is the container ID the runtime gave the CNI plugin (CNI_CONTAINERID). Every
//! answer other than 2xx carries an [`ErrorBody`]: `{"error": {"code": "...", "message": "..."}}`
//! with one of the [`codes`].
pub mod client;
pub mod server;

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/interceptor/interceptor.sock";

/// Stable machine-readable error codes.
pub mod codes {
    /// The request is malformed (bad JSON, a missing or invalid field).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The pod's policy (MeshConfig + annotations) is invalid: nothing was applied.
    pub const INVALID_POLICY: &str = "invalid_policy";
    /// The network namespace path does not exist (or is not a namespace).
    pub const NETNS_NOT_FOUND: &str = "netns_not_found";
    /// Another pod is already enrolled with this network namespace.
    pub const NETNS_IN_USE: &str = "netns_in_use";
    /// No pod with this ID.
    pub const POD_NOT_FOUND: &str = "pod_not_found";
    /// Programming the kernel failed (eBPF maps or iptables).
    pub const APPLY_FAILED: &str = "apply_failed";
    /// Removing the pod's interception failed.
    pub const REMOVE_FAILED: &str = "remove_failed";
    /// The pod is known but its policy is not (fully) in force.
    pub const NOT_ENFORCED: &str = "not_enforced";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// How a pod's traffic is intercepted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// eBPF programs (node-wide) with the pod enrolled by network namespace.
    Ebpf,
    /// osm-edge's nat chains inside the pod's network namespace.
    Iptables,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
        })
    }
}

/// `POST /v1/pods`: what the CNI plugin knows about a pod.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddPod {
    /// CNI_CONTAINERID: the pod's key.
    pub container_id: String,
    /// CNI_NETNS: the pod's network namespace.
    pub netns: String,
    /// K8S_POD_NAMESPACE (default "default").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// K8S_POD_NAME (default: the container ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pod's annotations as the runtime passed them; `None` when it passed none (the
    /// daemon then reads `--pod-manifest-dir/<namespace>/<name>.yaml|json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The pod's addresses from the previous plugin's result (for localProxyMode PodIP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

/// Where a pod's annotations came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AnnotationSource {
    /// Passed by the container runtime (`io.kubernetes.cri.pod-annotations`).
    Runtime,
    /// Read from a manifest under `--pod-manifest-dir`.
    Manifest { path: String },
    /// Neither: MeshConfig only.
    None,
}

/// One pod as the daemon knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodView {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub mode: Mode,
    /// The network namespace cookie (eBPF mode's key for the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    pub ips: Vec<IpAddr>,
    pub annotations_from: AnnotationSource,
    /// The pod's merged policy (MeshConfig + annotations, as `interceptor policy --json`
    /// prints it) that the kernel is checked against (`GET /v1/pods/{id}` only: a list
    /// would repeat the MeshConfig's lists for every pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// The digest of the policy last applied (hex; changes with every policy change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// Unix time of the ADD, and of the last time the policy was (re)applied.
    pub added_at: u64,
    pub applied_at: u64,
    /// How many times the policy was applied (ADD, MeshConfig edits, route changes, repairs).
    pub applies: u64,
    /// Why it was last applied ("add", "mesh-config", "routes", "repair", …).
    pub last_reason: String,
    /// The last failure to (re)apply, if the latest attempt failed (the previous policy
    /// then stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the kernel enforces (`GET /v1/pods/{id}` only): eBPF mode, the pod's entry of
    /// `ebpf status`; iptables mode, the differences `iptables verify` finds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<serde_json::Value>,
    /// What is wrong with the pod's interception (`GET /v1/pods/{id}` only; empty: in force).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What the kernel shows going wrong for the pod while its policy is in force (eBPF
    /// mode, `GET /v1/pods/{id}` only): refused or untracked connections, processes outside
    /// the attach cgroup — the pod's `problems` in `ebpf status`. They do not fail CHECK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodList {
    pub pods: Vec<PodView>,
}

/// `GET /v1/pods/{id}/check`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    pub id: String,
    pub mode: Mode,
    /// Empty when the policy is in force.
    pub problems: Vec<String>,
}

/// `DELETE /v1/pods/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deleted {
    pub id: String,
    pub mode: Mode,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DaemonStatus {
    pub version: String,
    pub mode: Mode,
    /// Why this mode ("forced", or the probe's verdict in auto mode).
    pub mode_reason: String,
    pub ready: bool,
    pub pin_dir: String,
    pub pods: usize,
    pub mesh_config: MeshConfigStatus,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshConfigStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Reloads applied, and edits refused (invalid: the previous MeshConfig stays in force).
    pub reloads: u64,
    pub rejected: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
