//! The command line: clap definitions and dispatch. Policy flags are named after osm-edge's
//! keys and shared by every command that takes a policy.
use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    ebpf::{self, EnrollOptions, LoadOptions, LoadOutcome, PinDir, pins::DEFAULT_PIN_DIR},
    explain::explain,
    iptables::{self, ApplyOptions, Format, apply::default_families},
    netns::{self, Netns},
    policy::{
        ChainNames, Family, Flow, Policy, PolicyInputs,
        chains::Proto,
        error::PolicyErrors,
        sources::{AnnotationLimits, FlagValues, NamedPolicy, PortOverrides, build_named_policy},
    },
};

#[derive(Parser, Debug)]
#[command(
    name = "interceptor",
    version,
    about = "Transparent traffic interception for osm-edge sidecars: eBPF without NAT, or osm-edge's iptables chains"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Init-container mode: osm-edge's nat-table chains.
    #[command(subcommand)]
    Iptables(IptablesCommand),
    /// Node-daemon mode: eBPF programs, pods enrolled by network namespace.
    #[command(subcommand)]
    Ebpf(EbpfCommand),
    /// Show the decision for one flow and the rule that made it.
    #[command(subcommand)]
    Explain(ExplainCommand),
    /// The node daemon: enrolls pods on the CNI plugin's requests, keeps them reconciled.
    Daemon(crate::daemon::DaemonArgs),
    /// The pods the node daemon intercepts (asks its API socket).
    #[command(subcommand)]
    Pods(crate::api::cli::PodsCommand),
    /// Chain the CNI plugin into the node's CNI configuration, or remove it.
    #[command(subcommand)]
    Cni(crate::cni::install::CniCommand),
    /// Print the merged policy and any warnings.
    Policy {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum IptablesCommand {
    /// Print the iptables-restore payload (byte-identical to osm-edge's generator).
    Render {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_enum, default_value = "restore")]
        format: Format,
        #[command(flatten)]
        names: NamesArg,
        /// Address family of the payload.
        #[arg(long, default_value = "ipv4")]
        family: Family,
    },
    /// Program the chains (one atomic iptables-restore per family; idempotent).
    Apply {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// Print the payloads instead of applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly what apply added.
    Cleanup {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Compare the live tables with the policy; exit 1 with the difference if they differ.
    Verify {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
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
fn open_netns(arg: &str, allow_host: bool) -> Result<Netns> {
    let ns = Netns::open(netns::resolve(arg))?;
    if !allow_host && ns.is_host()? {
        bail!(
            "--netns {arg} is the host's own network namespace (that of PID 1), not a pod's; pass --allow-host-netns if that is really intended"
        );
    }
    Ok(ns)
}

impl TargetArgs {
    fn options(&self) -> Result<ApplyOptions> {
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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum EbpfCommand {
    /// Load the programs and attach them at a cgroup (no-op if already loaded).
    Load {
        /// Cgroup to attach at (default: the cgroup v2 root, i.e. every pod).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Redirected connections being handed over to a sidecar at once on the node (from
        /// the application's SYN until the kernel has created the sidecar's end); more
        /// connect()s are refused with EPERM and counted. Preallocated: ~140 bytes each.
        /// Established connections are not limited (their records live with the sockets).
        /// [default: 65536]
        #[arg(long)]
        max_tracked_connections: Option<u32>,
        /// The same limit per pod, so that one pod cannot take the node's. [default: 8192]
        #[arg(long)]
        max_tracked_connections_per_pod: Option<u32>,
        /// Socket-level acceleration: the payload of each new redirected connection goes
        /// straight between the application's socket and the sidecar's (sockmap + sk_msg),
        /// skipping TCP/IP on loopback; addresses and SO_ORIGINAL_DST stay the same.
        /// Applied at every load (a load without it switches it off for new connections).
        /// Read README's Benchmarks section before using it: sidecars that read with
        /// splice() are not supported.
        #[arg(long)]
        accelerate: bool,
        #[command(flatten)]
        pins: PinArg,
    },
    /// Check that this kernel has every feature eBPF mode needs.
    Probe,
    /// Intercept a pod's traffic with its policy (again: switch to a new policy atomically).
    Enroll {
        /// The pod's network namespace (path, or a name under /var/run/netns).
        #[arg(long)]
        netns: String,
        /// The pod's address(es) for PodIP mode (default: the namespace's global addresses).
        #[arg(long = "pod-ip", value_delimiter = ',')]
        pod_ip: Vec<IpAddr>,
        /// Accept the host's own network namespace (that of PID 1): the node's traffic
        /// would be intercepted.
        #[arg(long)]
        allow_host_netns: bool,
        /// An enrolled pod: switch its lists and switches to this policy without re-reading
        /// its routes (what the node daemon does when the MeshConfig changes; much faster).
        /// If the policy changes what its table was made from (its own ranges, the interface
        /// exclusions, the proxy UID, the inbound port), a full enroll is made instead.
        #[arg(long)]
        policy_only: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        pins: PinArg,
    },
    /// Stop intercepting a pod.
    Unenroll {
        /// The pod's network namespace (path, or a name under /var/run/netns).
        #[arg(long, required_unless_present = "netns_cookie", conflicts_with = "netns_cookie")]
        netns: Option<String>,
        /// The pod's network namespace cookie (see `ebpf status`), for a pod whose namespace
        /// is already gone.
        #[arg(long)]
        netns_cookie: Option<u64>,
        #[command(flatten)]
        pins: PinArg,
    },
    /// Programs, attach points, enrolled pods with their policy and counters.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: PinArg,
    },
    /// Print the Prometheus metrics of the pinned state once (text format; for
    /// node-exporter's textfile collector on nodes without the daemon). The daemon serves
    /// the same, and its own families, on `--metrics-addr` /metrics.
    Metrics {
        #[command(flatten)]
        pins: PinArg,
    },
    /// Remove every program, link, map and pin (refuses a directory that is not an
    /// interceptor installation; leaves entries it did not create).
    Unload {
        #[command(flatten)]
        pins: PinArg,
    },
    /// Remove what interrupted commands and departed pods left: pods whose network
    /// namespace is gone, policy generations no pod references, stale staging pins.
    Gc {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: PinArg,
    },
    /// Switch the programs' debug logging on or off (at run time).
    Debug {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        pins: PinArg,
    },
    /// Print the programs' debug log (see `ebpf debug on`).
    Log {
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
        #[command(flatten)]
        pins: PinArg,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PinArg {
    /// Directory (on a bpf filesystem) holding all pinned state.
    #[arg(long = "pin-dir", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl PinArg {
    fn pins(&self) -> PinDir {
        PinDir::new(&self.pin_dir)
    }
}

#[derive(Subcommand, Debug)]
pub enum ExplainCommand {
    /// A connection the pod opens.
    Outbound {
        /// Destination IP:PORT ([IPv6]:PORT; a v4-mapped [::ffff:a.b.c.d]:PORT is decided as IPv4).
        #[arg(long)]
        dst: std::net::SocketAddr,
        /// UID of the process (default: an application, not the proxy).
        #[arg(long)]
        uid: Option<u32>,
        /// Output interface of the route (lo = the destination is the pod's own address).
        #[arg(long)]
        oif: Option<String>,
        /// The destination is a local address of the pod (same as --oif lo).
        #[arg(long)]
        local: bool,
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
    /// A connection arriving at the pod.
    Inbound {
        /// Destination port.
        #[arg(long = "dst-port")]
        dst_port: u16,
        /// Destination address (only its family matters; default 0.0.0.0).
        #[arg(long, default_value = "0.0.0.0")]
        dst: IpAddr,
        /// Input interface.
        #[arg(long)]
        iif: Option<String>,
        /// The connection comes from the pod itself.
        #[arg(long = "from-pod")]
        from_pod: bool,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long)]
        json: bool,
    },
}

/// The policy flags (osm-edge's keys), and the manifests.
#[derive(Args, Debug, Clone, Default)]
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
    pub fn inputs(&self) -> PolicyInputs {
        // Every field named: a flag added here and not passed on does not compile.
        let PolicyArgs {
            outbound_ip_range_exclusion_list,
            outbound_ip_range_inclusion_list,
            outbound_port_exclusion_list,
            inbound_port_exclusion_list,
            network_interface_exclusion_list,
            proxy_uid,
            local_proxy_mode,
            local_dns_proxy,
            mesh_config,
            pod,
            max_annotation_cidrs,
            max_annotation_ports,
            admin_port,
            outbound_port,
            inbound_port,
            prometheus_port,
            liveness_probe_port,
            readiness_probe_port,
            startup_probe_port,
            healthcheck_port,
        } = self.clone();
        PolicyInputs {
            flags: FlagValues {
                outbound_ip_range_exclusion_list,
                outbound_ip_range_inclusion_list,
                outbound_port_exclusion_list,
                inbound_port_exclusion_list,
                network_interface_exclusion_list,
                proxy_uid,
                local_proxy_mode,
                local_dns_proxy,
                ports: PortOverrides {
                    admin: admin_port,
                    outbound: outbound_port,
                    inbound: inbound_port,
                    prometheus: prometheus_port,
                    liveness_probe: liveness_probe_port,
                    readiness_probe: readiness_probe_port,
                    startup_probe: startup_probe_port,
                    healthcheck: healthcheck_port,
                },
                annotation_limits: AnnotationLimits { cidrs: max_annotation_cidrs, ports: max_annotation_ports },
            },
            mesh_config,
            pod,
        }
    }

    /// Builds the policy, printing warnings to stderr.
    pub fn build(&self) -> Result<Policy> {
        Ok(self.build_named()?.policy)
    }

    /// [`Self::build`], with the pod's name from its manifest.
    pub fn build_named(&self) -> Result<NamedPolicy> {
        let built = build_named_policy(&self.inputs())?;
        for w in &built.warnings {
            eprintln!("warning: {w}");
        }
        Ok(built)
    }
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).without_time().try_init();
}

/// 2 for invalid input (nothing applied), 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<PolicyErrors>().is_some() { 2 } else { 1 }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Iptables(cmd) => run_iptables(cmd),
        Command::Ebpf(cmd) => run_ebpf(cmd),
        Command::Explain(cmd) => run_explain(cmd),
        Command::Daemon(args) => crate::daemon::run(args),
        Command::Pods(cmd) => crate::api::cli::run(cmd),
        Command::Cni(cmd) => crate::cni::install::run(cmd),
        Command::Policy { policy, json } => {
            let p = policy.build()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("{p:#?}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_iptables(cmd: IptablesCommand) -> Result<ExitCode> {
    match cmd {
        IptablesCommand::Render { policy, format, names, family } => {
            let p = policy.build()?;
            let names = names.names();
            let text = match format {
                Format::Restore => iptables::payload(&p, family, &names),
                Format::Shell => iptables::shell(&p, family, &names),
            };
            print!("{text}");
        }
        IptablesCommand::Apply { policy, target, dry_run } => {
            let p = policy.build()?;
            let opts = target.options()?;
            if dry_run {
                for plan in iptables::apply::plan(&p, &opts)? {
                    println!("# {} payload for {}", plan.family, opts.netns.describe());
                    print!("{}", plan.payload);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let plans = iptables::apply(&p, &opts)?;
            for plan in plans {
                let rules = plan.payload.lines().filter(|l| l.starts_with("-A ") || l.starts_with("-I ")).count();
                eprintln!("applied {rules} {} rules in {}", plan.family, opts.netns.describe());
            }
        }
        IptablesCommand::Cleanup { target } => {
            let opts = target.options()?;
            let n = iptables::cleanup(&opts)?;
            eprintln!("removed {n} rules and chains from {}", opts.netns.describe());
        }
        IptablesCommand::Verify { policy, target } => {
            let p = policy.build()?;
            let opts = target.options()?;
            let problems = iptables::verify(&p, &opts)?;
            if problems.is_empty() {
                eprintln!("the live rules match the policy");
            } else {
                for pr in &problems {
                    println!("{pr}");
                }
                eprintln!("{} difference(s) between the live rules and the policy", problems.len());
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_ebpf(cmd: EbpfCommand) -> Result<ExitCode> {
    match cmd {
        EbpfCommand::Load { cgroup, max_tracked_connections, max_tracked_connections_per_pod, accelerate, pins } => {
            let opts = LoadOptions {
                cgroup,
                pin_dir: pins.pins(),
                max_tracked_connections,
                max_tracked_connections_per_pod,
                accelerate,
            };
            let r = ebpf::load_report(&opts)?;
            if let Some(on) = r.acceleration_switched {
                eprintln!("acceleration of new connections switched {}", if on { "on" } else { "off" });
            }
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            for line in r.gc.lines() {
                eprintln!("{line}");
            }
            match r.outcome {
                LoadOutcome::Loaded { cgroup } => eprintln!("loaded and attached at cgroup {}", cgroup.display()),
                LoadOutcome::AlreadyLoaded => eprintln!("already loaded (this build); nothing changed"),
                LoadOutcome::Upgraded { pods } => eprintln!("upgraded in place ({pods} pods kept)"),
            }
        }
        EbpfCommand::Enroll { netns, pod_ip, allow_host_netns, policy_only, policy, pins } => {
            let NamedPolicy { policy: p, pod_name, .. } = policy.build_named()?;
            if policy_only {
                let cookie = open_netns(&netns, allow_host_netns)?.cookie()?;
                match ebpf::enroll::update_policy(&pins.pins(), cookie, &p)? {
                    Some(r) => {
                        for line in r.gc.lines() {
                            eprintln!("{line}");
                        }
                        eprintln!(
                            "switched {netns} (cookie {}): generation {} replaced {}: {}; {} new object(s) written{}; in force after {:?} (policy only: routes kept)",
                            r.netns_cookie,
                            r.generation,
                            r.replaced_generation.unwrap_or(0),
                            r.objects,
                            r.written.len(),
                            if r.deleted.is_empty() { String::new() } else { format!(", {} deleted", r.deleted.len()) },
                            r.in_force
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    None => eprintln!(
                        "{netns}: not enrolled, or the policy changes what its table is made from: enrolling in full"
                    ),
                }
            }
            let opts = EnrollOptions {
                netns: open_netns(&netns, allow_host_netns)?,
                pod_ips: pod_ip,
                pin_dir: pins.pins(),
                pod_name,
                allow_host_netns,
            };
            let r = ebpf::enroll(&p, &opts)?;
            let mut warnings = r.warnings.clone();
            if r.replaced_generation.is_none() {
                warnings.extend(ebpf::enroll::cgroup_warnings(&opts.netns, &opts.pin_dir));
            }
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            for line in r.gc.lines() {
                eprintln!("{line}");
            }
            let wrote = format!(
                "{} new object(s) written{}",
                r.written.len(),
                if r.deleted.is_empty() { String::new() } else { format!(", {} deleted", r.deleted.len()) }
            );
            match r.replaced_generation {
                Some(old) => eprintln!(
                    "re-enrolled {netns} (cookie {}): generation {} replaced {old}: {}; {wrote}; switched in {:?}",
                    r.netns_cookie, r.generation, r.objects, r.apply_time
                ),
                None => eprintln!(
                    "enrolled {netns} (cookie {}): generation {}: {}; {wrote}",
                    r.netns_cookie, r.generation, r.objects
                ),
            }
        }
        EbpfCommand::Probe => {
            let missing = ebpf::probe::missing_features();
            if missing.is_empty() {
                eprintln!(
                    "this kernel has every feature eBPF mode needs (minimum Linux {})",
                    ebpf::probe::MINIMUM_KERNEL
                );
            } else {
                for m in &missing {
                    println!("missing: {} (Linux {}+)", m.feature, m.since);
                }
                return Ok(ExitCode::from(1));
            }
        }
        EbpfCommand::Unenroll { netns, netns_cookie, pins } => {
            let (cookie, what) = match (netns, netns_cookie) {
                (Some(n), _) => (open_netns(&n, true)?.cookie()?, n),
                (None, Some(c)) => (c, format!("netns cookie {c}")),
                (None, None) => unreachable!("clap requires one"),
            };
            let (done, gc) = ebpf::enroll::unenroll_report(&pins.pins(), cookie)?;
            for line in gc.lines() {
                eprintln!("{line}");
            }
            if done {
                eprintln!("unenrolled {what}");
            } else {
                eprintln!("{what} was not enrolled");
            }
        }
        EbpfCommand::Status { json, pins } => {
            let s = ebpf::status(&pins.pins())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
        }
        EbpfCommand::Metrics { pins } => print!("{}", crate::metrics::render_ebpf(&pins.pins())?),
        EbpfCommand::Unload { pins } => match ebpf::unload_report(&pins.pins())? {
            ebpf::Unloaded::Removed { left } if left.is_empty() => {
                eprintln!("unloaded: every program, link, map and pin removed")
            }
            ebpf::Unloaded::Removed { left } => {
                eprintln!("unloaded: every program, link, map and pin of interceptor removed");
                eprintln!(
                    "warning: {} entries interceptor did not create are left in {} (not removed):",
                    left.len(),
                    pins.pin_dir.display()
                );
                for p in left {
                    eprintln!("  {}", p.display());
                }
            }
            ebpf::Unloaded::Nothing => eprintln!("nothing was loaded at {}", pins.pin_dir.display()),
        },
        EbpfCommand::Gc { json, pins } => {
            let r = ebpf::gc(&pins.pins())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.is_empty() {
                eprintln!("nothing to collect");
            } else {
                for line in r.lines() {
                    eprintln!("{line}");
                }
            }
        }
        EbpfCommand::Debug { state, pins } => {
            ebpf::debug::set_debug(&pins.pins(), state == "on").context("is eBPF mode loaded?")?;
            eprintln!("debug logging {state}");
        }
        EbpfCommand::Log { seconds, pins } => ebpf::debug::follow(&pins.pins(), seconds.map(Duration::from_secs))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn run_explain(cmd: ExplainCommand) -> Result<ExitCode> {
    let (policy_args, flow, json) = match cmd {
        ExplainCommand::Outbound { dst, uid, oif, local, udp, policy, json } => {
            let p = policy.build()?;
            // A v4-mapped destination (a dual-stack socket's) is IPv4 on the wire: the IPv4
            // rules decide it.
            let dst = match dst {
                std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => std::net::SocketAddr::new(v4.into(), v6.port()),
                    None => dst,
                },
                v4 => v4,
            };
            let mut flow = Flow::outbound(dst, uid.unwrap_or(0).max(if uid.is_none() { 1000 } else { 0 }));
            if let Some(u) = uid {
                flow.uid = Some(u);
            }
            if local || oif.as_deref() == Some("lo") {
                flow = flow.local();
            } else if let Some(o) = oif {
                flow = flow.via(&o);
            }
            if udp {
                flow.proto = Proto::Udp;
            }
            (p, flow, json)
        }
        ExplainCommand::Inbound { dst_port, dst, iif, from_pod, policy, json } => {
            let p = policy.build()?;
            let mut flow = Flow::inbound(std::net::SocketAddr::new(dst, dst_port));
            if let Some(i) = iif {
                flow = flow.via(&i);
            }
            if from_pod {
                flow = flow.from_pod();
            }
            (p, flow, json)
        }
    };
    let e = explain(&policy_args, flow, &ChainNames::DOCUMENTED);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{e}");
    }
    if e.decision.reason.is_none() && e.flow.proto == Proto::Tcp {
        bail!("no rule decided this flow");
    }
    Ok(ExitCode::SUCCESS)
}
