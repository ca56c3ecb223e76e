//! Policy errors and warnings. Each names where the item came from (flag, file and key, or
//! annotation) and the item itself, so an operator can fix it without guessing.
use std::fmt;

use serde::Serialize;

/// Where a policy item came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Origin {
    /// A command-line flag, e.g. `--outbound-port-exclusion-list`.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A key of a manifest file, e.g. `spec.traffic.outboundPortExclusionList[2]`.
    File { path: String, key: String },
    /// A pod annotation.
    Annotation { path: String, name: String },
    /// The merged policy (for warnings about the result of the merge).
    Merged(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag --{name}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File { path, key } if key.is_empty() => write!(f, "{path}"),
            Origin::File { path, key } => write!(f, "{path}: key {key}"),
            Origin::Annotation { path, name } => write!(f, "{path}: annotation {name}"),
            Origin::Merged(what) => write!(f, "merged {what}"),
        }
    }
}

/// One invalid input. Nothing is applied while any exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: invalid CIDR {item:?}: {reason}")]
    InvalidCidr { origin: Origin, item: String, reason: String },
    #[error("{origin}: invalid port {item:?}: {reason}")]
    InvalidPort { origin: Origin, item: String, reason: String },
    #[error("{origin}: invalid interface name {item:?}: {reason}")]
    InvalidInterface { origin: Origin, item: String, reason: String },
    #[error("{origin}: unknown localProxyMode {item:?} (expected one of: Localhost, PodIP)")]
    UnknownLocalProxyMode { origin: Origin, item: String },
    #[error("{origin}: invalid {what} {item:?}: {reason}")]
    InvalidValue { origin: Origin, what: &'static str, item: String, reason: String },
    #[error(
        "{origin}: {count} {what}, more than the per-pod limit of {limit} ({flag}): lists many pods share belong in the MeshConfig, which is stored once for all of them"
    )]
    TooManyItems { origin: Origin, what: &'static str, count: usize, limit: usize, flag: &'static str },
    #[error("{path}: malformed {format}: {message}")]
    Malformed { path: String, format: &'static str, message: String },
    #[error("{path}: cannot read: {message}")]
    Unreadable { path: String, message: String },
}

impl PolicyError {
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            PolicyError::InvalidCidr { origin, .. }
            | PolicyError::InvalidPort { origin, .. }
            | PolicyError::InvalidInterface { origin, .. }
            | PolicyError::UnknownLocalProxyMode { origin, .. }
            | PolicyError::InvalidValue { origin, .. }
            | PolicyError::TooManyItems { origin, .. } => Some(origin),
            PolicyError::Malformed { .. } | PolicyError::Unreadable { .. } => None,
        }
    }
}

/// Every error found in the inputs (they are all reported at once).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "invalid policy ({n} error{}); nothing was applied", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// A suspicious but legal input: accepted, reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}
