//! The pure policy model: what to intercept, where it comes from, and the decision that
//! every backend (iptables rules, eBPF maps) and every test derives from.
//!
//! Nothing here does I/O except reading the manifest files named on the command line.
pub mod chains;
pub mod decide;
pub mod error;
pub mod family;
pub mod merge;
pub mod pod_ip;
pub mod sources;
pub mod validate;

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

pub use chains::{ChainNames, RuleSet};
pub use decide::{Decision, Direction, Flow, Verdict, decide};
pub use error::{PolicyError, Warning};
pub use family::Family;
pub use pod_ip::{PodIpError, PodIps};
pub use sources::{PolicyInputs, build_policy};

/// The sidecar's reserved ports (osm-edge `pkg/constants`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ports {
    pub admin: u16,
    pub outbound: u16,
    pub inbound: u16,
    pub prometheus: u16,
    pub liveness_probe: u16,
    pub readiness_probe: u16,
    pub startup_probe: u16,
    pub healthcheck: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            admin: 15000,
            outbound: 15001,
            inbound: 15003,
            prometheus: 15010,
            liveness_probe: 15901,
            readiness_probe: 15902,
            startup_probe: 15903,
            healthcheck: 15904,
        }
    }
}

impl Ports {
    /// Inbound ports PROXY_INBOUND returns before redirecting, in the chain's order.
    pub fn inbound_bypass(&self) -> [u16; 5] {
        [self.prometheus, self.liveness_probe, self.readiness_probe, self.startup_probe, self.healthcheck]
    }

    /// Every reserved port with its name, for warnings.
    pub fn named(&self) -> [(&'static str, u16); 8] {
        [
            ("admin", self.admin),
            ("outbound listener", self.outbound),
            ("inbound listener", self.inbound),
            ("prometheus", self.prometheus),
            ("liveness probe", self.liveness_probe),
            ("readiness probe", self.readiness_probe),
            ("startup probe", self.startup_probe),
            ("healthcheck", self.healthcheck),
        ]
    }
}

/// `spec.sidecar.localProxyMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum LocalProxyMode {
    /// The proxy reaches the application on 127.0.0.1 (default).
    #[default]
    Localhost,
    /// The proxy's connections to 127.0.0.1 are sent to the pod IP instead.
    #[serde(rename = "PodIP")]
    PodIp,
}

impl LocalProxyMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Localhost" => Some(Self::Localhost),
            "PodIP" => Some(Self::PodIp),
            _ => None,
        }
    }
}

impl fmt::Display for LocalProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Localhost => "Localhost",
            Self::PodIp => "PodIP",
        })
    }
}

/// A CIDR as the operator wrote it (trimmed): osm-edge renders and de-duplicates the text,
/// so `10.0.0.1/8` stays `10.0.0.1/8` in the rules while `net` is what it matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cidr {
    /// Shared: a MeshConfig's ranges are in every pod's merged policy.
    pub text: std::sync::Arc<str>,
    #[serde(skip)]
    pub net: IpNet,
}

impl Cidr {
    pub fn family(&self) -> Family {
        match self.net {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.net.contains(ip)
    }
}

/// The merged, validated interception policy of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub proxy_uid: u32,
    pub ports: Ports,
    pub outbound_ip_range_exclusions: Vec<Cidr>,
    pub outbound_ip_range_inclusions: Vec<Cidr>,
    pub outbound_port_exclusions: Vec<u16>,
    pub inbound_port_exclusions: Vec<u16>,
    pub network_interface_exclusions: Vec<String>,
    pub local_proxy_mode: LocalProxyMode,
    /// osm-edge's local DNS proxy rule (UDP 127.0.0.153:53 → :5300), in both modes.
    pub local_dns_proxy: bool,
    /// Which ranges of the merged lists only the pod's own annotations add. The rules do not
    /// need it (they hold the merged lists); eBPF mode stores these with the pod and the rest
    /// (the global lists) once for every pod that has the same.
    #[serde(skip)]
    pub pod_ranges: PodRanges,
}

/// The ranges a pod's annotations add to the global lists (by network, in the merged
/// lists' order; none that a global list holds too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRanges {
    pub exclusions: Vec<IpNet>,
    pub inclusions: Vec<IpNet>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            proxy_uid: 1500,
            ports: Ports::default(),
            outbound_ip_range_exclusions: Vec::new(),
            outbound_ip_range_inclusions: Vec::new(),
            outbound_port_exclusions: Vec::new(),
            inbound_port_exclusions: Vec::new(),
            network_interface_exclusions: Vec::new(),
            local_proxy_mode: LocalProxyMode::Localhost,
            local_dns_proxy: false,
            pod_ranges: PodRanges::default(),
        }
    }
}

impl Policy {
    /// The exclusions of one address family (IPv4 rules never see IPv6 ranges and back).
    pub fn exclusions(&self, family: Family) -> impl Iterator<Item = &Cidr> {
        self.outbound_ip_range_exclusions.iter().filter(move |c| c.family() == family)
    }

    pub fn inclusions(&self, family: Family) -> impl Iterator<Item = &Cidr> {
        self.outbound_ip_range_inclusions.iter().filter(move |c| c.family() == family)
    }

    pub fn has_inclusions(&self, family: Family) -> bool {
        self.inclusions(family).next().is_some()
    }
}

/// Whether an interface name matches an exclusion entry; `eth+` matches every name that
/// starts with `eth`, as in iptables.
pub fn interface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests;
