//! The decision function: where the nat table sends a flow. It walks the rules osm-edge
//! generates (`chains::RuleSet`) as the kernel does, so the iptables backend is right by
//! construction and the eBPF backend is tested against it.
use std::net::{IpAddr, SocketAddr};

use interceptor_common::Reason;
use serde::Serialize;

use super::{
    Policy,
    chains::{Chain, ChainNames, PacketView, Proto, RuleSet, Target},
    family::Family,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// A connection the pod opens (nat OUTPUT).
    #[serde(rename = "outbound")]
    Outbound,
    /// A connection arriving at the pod (nat PREROUTING).
    #[serde(rename = "inbound")]
    Inbound,
}

/// A new connection, described by what the nat table can see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub direction: Direction,
    pub proto: Proto,
    pub dst: SocketAddr,
    /// The owner of the socket (outbound only).
    pub uid: Option<u32>,
    /// Output interface (outbound) or input interface (inbound).
    pub iface: Option<String>,
    /// Outbound: the destination is a local address of the pod (its route leaves through `lo`).
    pub dst_is_local: bool,
    /// Inbound: the connection comes from the pod itself; PREROUTING never sees it.
    pub src_is_local: bool,
}

impl Flow {
    /// A connection the pod opens. A destination of 0.0.0.0, `::` or ::ffff:0.0.0.0 is the
    /// loopback address (the kernel connects an unbound socket there before any rule sees
    /// a packet; a socket bound to an address connects to that address instead).
    pub fn outbound(dst: SocketAddr, uid: u32) -> Flow {
        let flow = Flow {
            direction: Direction::Outbound,
            proto: Proto::Tcp,
            dst,
            uid: Some(uid),
            iface: None,
            dst_is_local: false,
            src_is_local: false,
        };
        match unspecified_to_loopback(dst.ip()) {
            Some(lo) => Flow { dst: SocketAddr::new(lo, dst.port()), ..flow }.local(),
            None => flow,
        }
    }

    pub fn inbound(dst: SocketAddr) -> Flow {
        Flow {
            direction: Direction::Inbound,
            proto: Proto::Tcp,
            dst,
            uid: None,
            iface: None,
            dst_is_local: true,
            src_is_local: false,
        }
    }

    pub fn via(mut self, iface: &str) -> Flow {
        self.iface = Some(iface.to_string());
        self
    }

    /// Outbound to a local address of the pod (iptables sees `-o lo`).
    pub fn local(mut self) -> Flow {
        self.dst_is_local = true;
        self.iface = Some("lo".to_string());
        self
    }

    pub fn from_pod(mut self) -> Flow {
        self.src_is_local = true;
        self
    }

    pub fn udp(mut self) -> Flow {
        self.proto = Proto::Udp;
        self
    }

    pub fn family(&self) -> Family {
        Family::of(&self.dst.ip())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// To the sidecar's outbound listener.
    RedirectOutbound { port: u16 },
    /// To the sidecar's inbound listener.
    RedirectInbound { port: u16 },
    /// PodIP mode: to the pod's own address, same port.
    DnatPodIp { port: u16 },
    /// The local DNS proxy rule: to the sidecar's DNS proxy (127.0.0.153:5300).
    DnatDnsProxy { to: SocketAddr },
    /// Not intercepted.
    Pass,
}

impl Verdict {
    pub fn is_redirect(&self) -> bool {
        !matches!(self, Verdict::Pass)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Why (shared with the eBPF counters); None when no rule matched.
    #[serde(serialize_with = "reason_name")]
    pub reason: Option<Reason>,
    /// The rule that decided, rendered as the generator writes it.
    pub rule: Option<String>,
    /// Every rule that matched, in traversal order.
    pub path: Vec<String>,
}

fn reason_name<S: serde::Serializer>(r: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(r.name()),
        None => s.serialize_none(),
    }
}

/// Where the kernel connects an unbound socket dialling an unspecified address.
pub fn unspecified_to_loopback(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some(std::net::Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified()) => {
            Some(std::net::Ipv4Addr::LOCALHOST.into())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => Some(std::net::Ipv6Addr::LOCALHOST.into()),
        _ => None,
    }
}

/// Decides a flow with the documented chain names.
pub fn decide(policy: &Policy, flow: &Flow) -> Decision {
    let rules = RuleSet::build(policy, flow.family());
    decide_with(policy, &rules, &ChainNames::DOCUMENTED, flow)
}

/// Decides a flow against prebuilt rules (for many flows and one policy).
pub fn decide_with(policy: &Policy, rules: &RuleSet, names: &ChainNames, flow: &Flow) -> Decision {
    let pass = |reason: Option<Reason>| Decision { verdict: Verdict::Pass, reason, rule: None, path: vec![] };
    if flow.family() != rules.family {
        return pass(None);
    }
    if flow.direction == Direction::Inbound && flow.src_is_local {
        return pass(Some(Reason::InFromPod));
    }
    let out_iface = if flow.dst_is_local { Some("lo") } else { flow.iface.as_deref() };
    let view = match flow.direction {
        Direction::Outbound => PacketView {
            proto: flow.proto,
            in_iface: None,
            out_iface,
            dst_ip: flow.dst.ip(),
            dst_port: flow.dst.port(),
            uid: flow.uid,
        },
        Direction::Inbound => PacketView {
            proto: flow.proto,
            in_iface: flow.iface.as_deref(),
            out_iface: None,
            dst_ip: flow.dst.ip(),
            dst_port: flow.dst.port(),
            uid: None,
        },
    };
    let start = match flow.direction {
        Direction::Outbound => Chain::Output,
        Direction::Inbound => Chain::Prerouting,
    };

    let mut path = Vec::new();
    let mut deciding = None;
    // (chain, next rule index) frames: at most built-in → ours → ours.
    let mut stack = vec![(start, 0usize)];
    while let Some((chain, index)) = stack.pop() {
        let live = rules.live_chain(chain);
        let Some((offset, rule)) = live.iter().enumerate().skip(index).find(|(_, r)| r.matches(&view)) else {
            // End of a user chain returns to the caller; end of a built-in one is ACCEPT.
            continue;
        };
        path.push(rule.render(names));
        if rule.reason.is_some() {
            deciding = Some(*rule);
        }
        let verdict = match &rule.target {
            Target::Jump(next) => {
                stack.push((chain, offset + 1));
                stack.push((*next, 0));
                continue;
            }
            Target::Return => {
                if matches!(chain, Chain::Prerouting | Chain::Output) {
                    break;
                }
                continue;
            }
            Target::Accept => Verdict::Pass,
            Target::Redirect(port) if *port == policy.ports.inbound => Verdict::RedirectInbound { port: *port },
            Target::Redirect(port) => Verdict::RedirectOutbound { port: *port },
            Target::Dnat(to) if rule.reason == Some(Reason::OutDnsProxy) => {
                Verdict::DnatDnsProxy { to: to.parse().expect("the DNS proxy rule DNATs to an address and port") }
            }
            Target::Dnat(_) if flow.proto == Proto::Tcp => Verdict::DnatPodIp { port: flow.dst.port() },
            Target::Dnat(_) => Verdict::Pass,
        };
        return Decision {
            verdict,
            reason: deciding.and_then(|r| r.reason),
            rule: deciding.map(|r| r.render(names)),
            path,
        };
    }
    Decision {
        verdict: Verdict::Pass,
        reason: deciding.and_then(|r| r.reason),
        rule: deciding.map(|r| r.render(names)),
        path,
    }
}

/// Convenience for callers holding an address and port.
pub fn socket(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("valid address"), port)
}
