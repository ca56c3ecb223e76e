//! The flow table: one list of connections run in iptables mode and in eBPF mode, each
//! checked against the pure decision function (the oracle) and against each other.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use interceptor::policy::{Decision, Flow, Policy, Verdict, decide};
use interceptor_common::Reason;
use serde::Serialize;
use serde_json::Value;

use crate::sandbox::{APP_UID, PROXY_UID, Sandbox};

/// Who opens the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Actor {
    /// The application, in the pod (UID 1000).
    App,
    /// The sidecar, in the pod (UID 1500).
    Proxy,
    /// A peer in the world namespace (inbound).
    Peer,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowCase {
    pub name: &'static str,
    pub actor: Actor,
    pub dst: SocketAddr,
    pub udp: bool,
}

fn case(name: &'static str, actor: Actor, dst: &str) -> FlowCase {
    FlowCase { name, actor, dst: dst.parse().expect("flow address"), udp: false }
}

/// The policy the matrix runs under (flags, as an operator would pass them).
pub fn matrix_policy_args() -> Vec<(&'static str, &'static str)> {
    vec![
        ("outbound-ip-range-exclusion-list", "203.0.113.10/32,2001:db8:2::20/128"),
        ("outbound-port-exclusion-list", "6379"),
        ("inbound-port-exclusion-list", "9090"),
        ("network-interface-exclusion-list", "eth1"),
    ]
}

pub fn matrix_policy() -> Policy {
    policy_from(&matrix_policy_args())
}

pub fn policy_from(flags: &[(&str, &str)]) -> Policy {
    use interceptor::policy::{PolicyInputs, build_policy};
    build_policy(&PolicyInputs { flags: flag_values(flags), ..Default::default() }).expect("valid test policy").0
}

/// A policy from flags (the global lists) and a pod's annotations (`outbound-ip-range-…`
/// without the `openservicemesh.io/` prefix): its own lists, which eBPF mode stores with
/// the pod rather than in the shared lists.
pub fn policy_from_pod(flags: &[(&str, &str)], annotations: &[(&str, &str)]) -> Policy {
    use interceptor::policy::sources::{Document, build_policy_from_documents};
    let map: std::collections::BTreeMap<String, String> =
        annotations.iter().map(|(k, v)| (format!("openservicemesh.io/{k}"), v.to_string())).collect();
    let pod = Document::pod_annotations("test pod", &map);
    build_policy_from_documents(&flag_values(flags), None, Some(&pod)).expect("valid test policy").0
}

fn flag_values(flags: &[(&str, &str)]) -> interceptor::policy::sources::FlagValues {
    let mut f = interceptor::policy::sources::FlagValues::default();
    for (k, v) in flags {
        let v = v.to_string();
        match *k {
            "outbound-ip-range-exclusion-list" => f.outbound_ip_range_exclusion_list.push(v),
            "outbound-ip-range-inclusion-list" => f.outbound_ip_range_inclusion_list.push(v),
            "outbound-port-exclusion-list" => f.outbound_port_exclusion_list.push(v),
            "inbound-port-exclusion-list" => f.inbound_port_exclusion_list.push(v),
            "network-interface-exclusion-list" => f.network_interface_exclusion_list.push(v),
            "local-proxy-mode" => f.local_proxy_mode = Some(v),
            other => panic!("unknown flag {other}"),
        }
    }
    f
}

/// Every kind of flow the chains distinguish.
pub fn matrix() -> Vec<FlowCase> {
    use Actor::*;
    let mut udp = case("app → world UDP 53 (never intercepted)", App, "198.51.100.1:53");
    udp.udp = true;
    let mut udp6 = case("app → world UDP6 53 (never intercepted)", App, "[2001:db8:1::1]:53");
    udp6.udp = true;
    vec![
        case("app → world (default route)", App, "198.51.100.1:80"),
        case("app → excluded CIDR", App, "203.0.113.10:80"),
        case("app → excluded port", App, "203.0.113.20:6379"),
        case("app → world 443", App, "203.0.113.20:443"),
        case("app → via excluded interface eth1", App, "203.0.113.200:80"),
        case("app → its own pod IP", App, "198.51.100.2:8080"),
        case("app → 127.0.0.1", App, "127.0.0.1:8080"),
        case("app → sidecar outbound listener directly", App, "198.51.100.2:15001"),
        case("proxy → world (own traffic)", Proxy, "198.51.100.1:80"),
        case("proxy → pod IP (to the inbound listener)", Proxy, "198.51.100.2:8080"),
        case("proxy → 127.0.0.1 (the app)", Proxy, "127.0.0.1:8080"),
        case("app → world IPv6", App, "[2001:db8:2::10]:80"),
        case("app → excluded IPv6 CIDR", App, "[2001:db8:2::20]:80"),
        case("app → excluded port IPv6", App, "[2001:db8:2::10]:6379"),
        case("app → v4-mapped on a dual-stack socket", App, "[::ffff:198.51.100.1]:80"),
        case("app → v4-mapped excluded CIDR", App, "[::ffff:203.0.113.10]:80"),
        udp,
        udp6,
        case("peer → app port", Peer, "198.51.100.2:8080"),
        case("peer → prometheus 15010", Peer, "198.51.100.2:15010"),
        case("peer → liveness 15901", Peer, "198.51.100.2:15901"),
        case("peer → readiness 15902", Peer, "198.51.100.2:15902"),
        case("peer → startup 15903", Peer, "198.51.100.2:15903"),
        case("peer → healthcheck 15904", Peer, "198.51.100.2:15904"),
        case("peer → excluded inbound port", Peer, "198.51.100.2:9090"),
        case("peer → via excluded interface eth1", Peer, "198.51.100.130:8080"),
        case("peer → outbound listener port", Peer, "198.51.100.2:15001"),
        case("peer → app port IPv6", Peer, "[2001:db8:1::2]:8080"),
        case("peer → prometheus IPv6", Peer, "[2001:db8:1::2]:15010"),
    ]
}

/// Where a connection ended up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Landing {
    /// Which server answered (app, world, sidecar-out, sidecar-in), or None if it failed.
    pub server: Option<String>,
    /// What that server read with SO_ORIGINAL_DST.
    pub orig: Option<String>,
    /// The peer address that server saw (its IP).
    pub peer_ip: Option<String>,
    /// The client's getpeername().
    pub peername: Option<String>,
    pub error: Option<String>,
}

impl Landing {
    pub fn from_json(v: &Value) -> Landing {
        if v["ok"].as_bool() != Some(true) {
            return Landing {
                server: None,
                orig: None,
                peer_ip: None,
                peername: None,
                error: Some(v["error"].as_str().unwrap_or("?").to_string()),
            };
        }
        let r = &v["reply"];
        let peer: Option<SocketAddr> = r["peer"].as_str().and_then(|p| p.parse().ok());
        Landing {
            server: r["server"].as_str().map(str::to_string),
            orig: r["orig"].as_str().map(str::to_string),
            peer_ip: peer.map(|p| normalize(p).ip().to_string()),
            peername: v["peername"].as_str().map(str::to_string),
            error: None,
        }
    }
}

/// v4-mapped addresses are IPv4 on the wire.
pub fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Whether two printed socket addresses are the same endpoint (v4-mapped = IPv4).
pub fn same_endpoint(a: &str, b: &str) -> bool {
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(a), Ok(b)) => normalize(a) == normalize(b),
        _ => false,
    }
}

/// What the oracle says about a flow, and the listener that should answer.
#[derive(Clone, Debug, Serialize)]
pub struct Expected {
    pub decision: Decision,
    pub server: String,
    pub orig: Option<String>,
    /// The destination the kernel connects to (the dialled one, but loopback for an
    /// unspecified one): what getpeername() answers.
    pub dst: SocketAddr,
}

impl Sandbox {
    /// The oracle's description of a flow: the kernel's route for outbound, the arrival
    /// interface for inbound.
    pub fn oracle_flow(&self, c: &FlowCase) -> Result<Flow> {
        let dst = normalize(c.dst);
        let mut flow = match c.actor {
            Actor::App | Actor::Proxy => {
                let uid = if c.actor == Actor::App { APP_UID } else { PROXY_UID };
                // 0.0.0.0, :: and ::ffff:0.0.0.0: the kernel connects to the loopback address.
                let dst = match interceptor::policy::decide::unspecified_to_loopback(dst.ip()) {
                    Some(lo) => SocketAddr::new(lo, dst.port()),
                    None => dst,
                };
                let (dev, local) = self.pod_route(&dst.ip().to_string())?;
                let f = Flow::outbound(dst, uid);
                if local { f.local() } else { f.via(&dev) }
            }
            Actor::Peer => {
                let eth1 = format!("198.51.100.{}", 128 + self.host as u16);
                let iif = if dst.ip().to_string() == eth1 { "eth1" } else { "eth0" };
                Flow::inbound(dst).via(iif)
            }
        };
        if c.udp {
            flow = flow.udp();
        }
        Ok(flow)
    }

    pub fn expected(&self, policy: &Policy, c: &FlowCase) -> Result<Expected> {
        let flow = self.oracle_flow(c)?;
        let decision = decide(policy, &flow);
        let dst = normalize(flow.dst);
        let server = match decision.verdict {
            Verdict::RedirectOutbound { .. } => "sidecar-out".to_string(),
            Verdict::RedirectInbound { .. } => "sidecar-in".to_string(),
            // To the pod's own address, same port: whoever listens there.
            Verdict::DnatPodIp { .. } => match dst.port() {
                15001 => "sidecar-out".to_string(),
                15003 => "sidecar-in".to_string(),
                _ => "app".to_string(),
            },
            Verdict::DnatDnsProxy { .. } => "dns-proxy".to_string(),
            Verdict::Pass => {
                let local = flow.dst_is_local || c.actor == Actor::Peer;
                match (local, dst.port()) {
                    (false, _) => "world".to_string(),
                    (true, 15001) => "sidecar-out".to_string(),
                    (true, 15003) => "sidecar-in".to_string(),
                    (true, _) => "app".to_string(),
                }
            }
        };
        // Whatever the path, a listener of the pod reads the dialled destination. (The
        // world is not intercepted: what it reads is not the pod's business.)
        let orig = if c.udp || server == "world" { None } else { Some(dst.to_string()) };
        Ok(Expected { decision, server, orig, dst })
    }

    /// Opens the connection for real and reports where it landed.
    pub fn run_flow(&self, c: &FlowCase) -> Result<Landing> {
        let who = match c.actor {
            Actor::App => self.in_pod(APP_UID),
            Actor::Proxy => self.in_pod(PROXY_UID),
            Actor::Peer => self.in_world(),
        };
        let dst = c.dst.to_string();
        let mut args = vec!["connect", "--to", dst.as_str(), "--timeout-ms", "2000"];
        if c.udp {
            args.push("--udp");
        }
        let out = self.probe(&who, &args, Duration::from_secs(10)).with_context(|| c.name.to_string())?;
        let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("{}: bad output {out:?}", c.name))?;
        Ok(Landing::from_json(&v))
    }

    /// Runs a flow and checks it against the oracle; returns the landing.
    pub fn check_flow(&self, policy: &Policy, c: &FlowCase) -> Result<(Landing, Expected)> {
        let expected = self.expected(policy, c)?;
        let landing = self.run_flow(c)?;
        let orig_ok = expected.orig.is_none() || landing.orig == expected.orig;
        if landing.server.as_deref() != Some(expected.server.as_str()) || !orig_ok {
            bail!(
                "flow {:?} ({} → {}): expected {} with original destination {:?} (decision {:?}, rule {:?}), got {:?}",
                c.name,
                serde_json::to_string(&c.actor)?,
                c.dst,
                expected.server,
                expected.orig,
                expected.decision.verdict,
                expected.decision.rule,
                landing
            );
        }
        if c.actor != Actor::Peer && !c.udp {
            // The application's view is unchanged: getpeername() is what it dialled (what the
            // kernel connected it to).
            let want = expected.dst.to_string();
            if !landing.peername.as_deref().is_some_and(|p| same_endpoint(p, &want)) {
                bail!("flow {:?}: getpeername() returned {:?}, expected {want}", c.name, landing.peername);
            }
        }
        Ok((landing, expected))
    }
}

/// The reasons counted by the eBPF programs in one direction, from a before/after pair of
/// counter snapshots.
pub fn counted_reasons(
    before: &std::collections::BTreeMap<u32, u64>,
    after: &std::collections::BTreeMap<u32, u64>,
    inbound: bool,
) -> Vec<Reason> {
    let mut out = Vec::new();
    for (reason, n) in after {
        let was = before.get(reason).copied().unwrap_or(0);
        if *n > was
            && let Some(r) = Reason::from_u32(*reason)
            && r.is_inbound() == inbound
        {
            out.push(r);
        }
    }
    out
}
