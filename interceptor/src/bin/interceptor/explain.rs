//! `interceptor explain outbound|inbound`: the decision for one flow and the rule that made it.
use std::{net::IpAddr, process::ExitCode};

use anyhow::{Result, bail};
use clap::Subcommand;
use interceptor::{
    explain::explain,
    policy::{ChainNames, Flow, chains::Proto},
};

use crate::args::PolicyArgs;

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

pub fn run(cmd: ExplainCommand) -> Result<ExitCode> {
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
