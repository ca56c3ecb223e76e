//! `interceptor ebpf …`: the node-wide programs, pods enrolled by network namespace.
use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Subcommand;
use interceptor::{
    ebpf::{self, EnrollOptions, LoadOptions, LoadOutcome},
    policy::sources::NamedPolicy,
};

use crate::args::{PinArg, PolicyArgs, open_netns};

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

pub fn run(cmd: EbpfCommand) -> Result<ExitCode> {
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
        EbpfCommand::Metrics { pins } => print!("{}", interceptor::metrics::render_ebpf(&pins.pins())?),
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
