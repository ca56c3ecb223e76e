//! What several command families share: the policy flags (named after osm-edge's keys) and
//! manifests, the target namespace of iptables mode, the chain names, the pin directory.
use std::{net::IpAddr, path::PathBuf};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use interceptor::{
    ebpf::{PinDir, pins::DEFAULT_PIN_DIR},
    iptables::{ApplyOptions, apply::default_families},
    netns::{self, Netns},
    policy::{
        ChainNames, Family, Policy, PolicyInputs,
        sources::{AnnotationLimits, FlagValues, NamedPolicy, PortOverrides, build_named_policy},
    },
};

/// The policy flags (osm-edge's keys), and the manifests.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// CIDRs never redirected (comma separated, repeatable).
    #[arg(long = "outbound-ip-range-exclusion-list", value_name = "CIDRS")]
    pub outbound_ip_range_exclusion_list: Vec<String>,
    /// If set, only these CIDRs are redirected (comma separated, repeatable).
    #[arg(long = "outbound-ip-range-inclusion-list", value_name = "CIDRS")]
    pub outbound_ip_range_inclusion_list: Vec<String>,
    /// Destination ports never redirected (comma separated, repeatable).
    #[arg(long = "outbound-port-exclusion-list", value_name = "PORTS")]
    pub outbound_port_exclusion_list: Vec<String>,
    /// Pod ports that inbound connections reach directly (comma separated, repeatable).
    #[arg(long = "inbound-port-exclusion-list", value_name = "PORTS")]
    pub inbound_port_exclusion_list: Vec<String>,
    /// Interfaces whose traffic is never intercepted (comma separated, repeatable; eth+ matches eth*).
    #[arg(long = "network-interface-exclusion-list", value_name = "IFACES")]
    pub network_interface_exclusion_list: Vec<String>,
    /// UID the proxy runs as (its traffic is never redirected).
    #[arg(long = "proxy-uid", value_name = "UID")]
    pub proxy_uid: Option<u32>,
    /// Localhost (default) or PodIP.
    #[arg(long = "local-proxy-mode", value_name = "MODE")]
    pub local_proxy_mode: Option<String>,
    /// osm-edge's local DNS proxy rule: UDP to 127.0.0.153:53 goes to the sidecar's DNS proxy on
    /// 127.0.0.153:5300 (spec.sidecar.localDNSProxy.enable).
    #[arg(long = "enable-local-dns-proxy")]
    pub local_dns_proxy: bool,
    /// A MeshConfig manifest (YAML or JSON): spec.traffic.*, spec.sidecar.localProxyMode,
    /// spec.sidecar.localDNSProxy.enable.
    #[arg(long = "mesh-config", value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// A Pod manifest (YAML or JSON): its openservicemesh.io/* annotations.
    #[arg(long = "pod", value_name = "FILE")]
    pub pod: Option<PathBuf>,
    /// The most ranges one IP range annotation of a pod may list (a longer one is refused:
    /// a pod's own ranges are stored with it, the MeshConfig's once for all pods).
    #[arg(long = "max-annotation-cidrs", value_name = "N", default_value_t = interceptor_common::annotation_limits::CIDRS)]
    pub max_annotation_cidrs: usize,
    /// The most ports one port annotation of a pod may list.
    #[arg(long = "max-annotation-ports", value_name = "N", default_value_t = interceptor_common::annotation_limits::PORTS)]
    pub max_annotation_ports: usize,
    #[arg(long = "admin-port", value_name = "PORT", hide_short_help = true)]
    pub admin_port: Option<String>,
    #[arg(long = "outbound-port", value_name = "PORT", hide_short_help = true)]
    pub outbound_port: Option<String>,
    #[arg(long = "inbound-port", value_name = "PORT", hide_short_help = true)]
    pub inbound_port: Option<String>,
    #[arg(long = "prometheus-port", value_name = "PORT", hide_short_help = true)]
    pub prometheus_port: Option<String>,
    #[arg(long = "liveness-probe-port", value_name = "PORT", hide_short_help = true)]
    pub liveness_probe_port: Option<String>,
    #[arg(long = "readiness-probe-port", value_name = "PORT", hide_short_help = true)]
    pub readiness_probe_port: Option<String>,
    #[arg(long = "startup-probe-port", value_name = "PORT", hide_short_help = true)]
    pub startup_probe_port: Option<String>,
    #[arg(long = "healthcheck-port", value_name = "PORT", hide_short_help = true)]
    pub healthcheck_port: Option<String>,
}

impl PolicyArgs {
    /// The library's inputs (clap stays out of the library's types: the flags are moved
    /// into them here).
    pub fn into_inputs(self) -> PolicyInputs {
        PolicyInputs {
            flags: FlagValues {
                outbound_ip_range_exclusion_list: self.outbound_ip_range_exclusion_list,
                outbound_ip_range_inclusion_list: self.outbound_ip_range_inclusion_list,
                outbound_port_exclusion_list: self.outbound_port_exclusion_list,
                inbound_port_exclusion_list: self.inbound_port_exclusion_list,
                network_interface_exclusion_list: self.network_interface_exclusion_list,
                proxy_uid: self.proxy_uid,
                local_proxy_mode: self.local_proxy_mode,
                local_dns_proxy: self.local_dns_proxy,
                ports: PortOverrides {
                    admin: self.admin_port,
                    outbound: self.outbound_port,
                    inbound: self.inbound_port,
                    prometheus: self.prometheus_port,
                    liveness_probe: self.liveness_probe_port,
                    readiness_probe: self.readiness_probe_port,
                    startup_probe: self.startup_probe_port,
                    healthcheck: self.healthcheck_port,
                },
                annotation_limits: AnnotationLimits {
                    cidrs: self.max_annotation_cidrs,
                    ports: self.max_annotation_ports,
                },
            },
            mesh_config: self.mesh_config,
            pod: self.pod,
        }
    }

    /// Builds the policy, printing warnings to stderr.
    pub fn build(self) -> Result<Policy> {
        Ok(self.build_named()?.policy)
    }

    /// [`Self::build`], with the pod's name from its manifest.
    pub fn build_named(self) -> Result<NamedPolicy> {
        let built = build_named_policy(&self.into_inputs())?;
        for w in &built.warnings {
            eprintln!("warning: {w}");
        }
        Ok(built)
    }
}

#[derive(Args, Debug, Clone)]
pub struct NamesArg {
    /// Chain names: the documented ones (PROXY_INBOUND, …) or osm-edge's current ones (OSM_PROXY_INBOUND, …).
    #[arg(long = "chain-names", value_enum, default_value = "documented")]
    pub chain_names: NamesChoice,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NamesChoice {
    Documented,
    Osm,
}

impl NamesArg {
    pub fn names(&self) -> ChainNames {
        match self.chain_names {
            NamesChoice::Documented => ChainNames::DOCUMENTED,
            NamesChoice::Osm => ChainNames::OSM,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Network namespace (path, or a name under /var/run/netns); default: the current one.
    #[arg(long)]
    pub netns: Option<String>,
    /// The pod's address(es) for localProxyMode PodIP (one per family).
    #[arg(long = "pod-ip", env = "POD_IP", value_delimiter = ',')]
    pub pod_ip: Vec<IpAddr>,
    /// Address families to program (default: ipv4, and ipv6 when available).
    #[arg(long, value_delimiter = ',')]
    pub family: Vec<Family>,
    #[command(flatten)]
    pub names: NamesArg,
    /// Accept --netns naming the host's own network namespace (that of PID 1).
    #[arg(long)]
    pub allow_host_netns: bool,
}

/// Opens `--netns` once (checked to be a network namespace); the host's is refused unless allowed.
pub fn open_netns(arg: &str, allow_host: bool) -> Result<Netns> {
    let ns = Netns::open(netns::resolve(arg))?;
    if !allow_host && ns.is_host()? {
        bail!(
            "--netns {arg} is the host's own network namespace (that of PID 1), not a pod's; pass --allow-host-netns if that is really intended"
        );
    }
    Ok(ns)
}

impl TargetArgs {
    pub fn options(&self) -> Result<ApplyOptions> {
        Ok(ApplyOptions {
            netns: match self.netns.as_deref() {
                Some(n) => open_netns(n, self.allow_host_netns)?,
                None => Netns::current(),
            },
            pod_ips: self.pod_ip.clone(),
            families: if self.family.is_empty() { default_families() } else { self.family.clone() },
            families_explicit: !self.family.is_empty(),
            names: self.names.names(),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct PinArg {
    /// Directory (on a bpf filesystem) holding all pinned state.
    #[arg(long = "pin-dir", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl PinArg {
    pub fn pins(&self) -> PinDir {
        PinDir::new(&self.pin_dir)
    }
}
