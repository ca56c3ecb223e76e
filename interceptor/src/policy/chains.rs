//! The policy as osm-edge's nat-table rules, in emission order: the one rule model that
//! the iptables renderer prints and the decision function walks.
use std::{net::IpAddr, str::FromStr};

use interceptor_common::{Reason, dns_proxy};
use ipnet::IpNet;
use serde::Serialize;

use super::{Family, LocalProxyMode, Policy, interface_matches};

/// An iptables multiport match takes at most 15 ports; longer lists are split.
pub const MULTIPORT_MAX: usize = 15;

/// What the rules of a family need to know of it besides the family itself.
impl Family {
    /// The loopback host of the chains' `-d 127.0.0.1/32`.
    pub fn loopback_cidr(self) -> &'static str {
        match self {
            Family::Ipv4 => "127.0.0.1/32",
            Family::Ipv6 => "::1/128",
        }
    }

    /// The shell variable the init container expands to the pod's address.
    pub fn pod_ip_variable(self) -> &'static str {
        match self {
            Family::Ipv4 => "$POD_IP",
            Family::Ipv6 => "$POD_IPV6",
        }
    }
}

/// The chains the rules touch: two built-in nat chains and osm-edge's four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chain {
    Prerouting,
    Output,
    Inbound,
    InRedirect,
    Outbound,
    OutRedirect,
}

impl Chain {
    pub const OURS: [Chain; 4] = [Chain::Inbound, Chain::InRedirect, Chain::Outbound, Chain::OutRedirect];
}

/// Names of osm-edge's four chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainNames {
    pub inbound: &'static str,
    pub in_redirect: &'static str,
    pub outbound: &'static str,
    pub out_redirect: &'static str,
}

impl ChainNames {
    /// The names of osm-edge's documentation (the default).
    pub const DOCUMENTED: ChainNames = ChainNames {
        inbound: "PROXY_INBOUND",
        in_redirect: "PROXY_IN_REDIRECT",
        outbound: "PROXY_OUTPUT",
        out_redirect: "PROXY_REDIRECT",
    };
    /// The names of osm-edge's current code.
    pub const OSM: ChainNames = ChainNames {
        inbound: "OSM_PROXY_INBOUND",
        in_redirect: "OSM_PROXY_IN_REDIRECT",
        outbound: "OSM_PROXY_OUTBOUND",
        out_redirect: "OSM_PROXY_OUT_REDIRECT",
    };

    pub fn name(&self, chain: Chain) -> &'static str {
        match chain {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => self.inbound,
            Chain::InRedirect => self.in_redirect,
            Chain::Outbound => self.outbound,
            Chain::OutRedirect => self.out_redirect,
        }
    }

    /// osm-edge's four chains, in declaration order.
    pub fn ours(&self) -> [&'static str; 4] {
        Chain::OURS.map(|c| self.name(c))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Append,
    Insert,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Proto {
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "udp")]
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Jump(Chain),
    Return,
    Accept,
    Redirect(u16),
    /// DNAT to an address given as text (`$POD_IP` until it is substituted).
    Dnat(String),
}

/// A destination match, kept as written for rendering and parsed for matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dst {
    pub negated: bool,
    pub text: String,
    pub net: IpNet,
}

impl Dst {
    fn new(negated: bool, text: &str) -> Dst {
        let net = IpNet::from_str(text)
            .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
            .expect("rule destinations are validated CIDRs or addresses");
        Dst { negated, text: text.to_string(), net }
    }
}

/// One nat-table rule. Fields render in this order, which is osm-edge's for every rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub op: Op,
    pub chain: Chain,
    pub proto: Option<Proto>,
    pub in_iface: Option<String>,
    pub out_iface: Option<String>,
    pub dst: Option<Dst>,
    pub dport: Option<u16>,
    pub dports: Option<Vec<u16>>,
    /// `-m owner [!] --uid-owner UID`: (negated, uid).
    pub uid_owner: Option<(bool, u32)>,
    pub target: Target,
    /// What the rule means when it decides a flow (None for plumbing such as jumps
    /// from the built-in chains).
    pub reason: Option<Reason>,
}

impl Rule {
    fn new(op: Op, chain: Chain, target: Target) -> Rule {
        Rule {
            op,
            chain,
            proto: None,
            in_iface: None,
            out_iface: None,
            dst: None,
            dport: None,
            dports: None,
            uid_owner: None,
            target,
            reason: None,
        }
    }
    fn tcp(mut self) -> Self {
        self.proto = Some(Proto::Tcp);
        self
    }
    fn proto(mut self, p: Proto) -> Self {
        self.proto = Some(p);
        self
    }
    fn iif(mut self, i: &str) -> Self {
        self.in_iface = Some(i.to_string());
        self
    }
    fn oif(mut self, i: &str) -> Self {
        self.out_iface = Some(i.to_string());
        self
    }
    fn dst(mut self, negated: bool, text: &str) -> Self {
        self.dst = Some(Dst::new(negated, text));
        self
    }
    fn dport(mut self, p: u16) -> Self {
        self.dport = Some(p);
        self
    }
    fn dports(mut self, p: &[u16]) -> Self {
        self.dports = Some(p.to_vec());
        self
    }
    fn uid(mut self, negated: bool, uid: u32) -> Self {
        self.uid_owner = Some((negated, uid));
        self
    }
    fn why(mut self, r: Reason) -> Self {
        self.reason = Some(r);
        self
    }

    /// The rule exactly as osm-edge's generator writes it.
    pub fn render(&self, names: &ChainNames) -> String {
        let mut s = String::with_capacity(96);
        s.push_str(match self.op {
            Op::Append => "-A ",
            Op::Insert => "-I ",
        });
        s.push_str(names.name(self.chain));
        if let Some(p) = self.proto {
            s.push_str(match p {
                Proto::Tcp => " -p tcp",
                Proto::Udp => " -p udp",
            });
        }
        if let Some(i) = &self.in_iface {
            s.push_str(" -i ");
            s.push_str(i);
        }
        if let Some(o) = &self.out_iface {
            s.push_str(" -o ");
            s.push_str(o);
        }
        if let Some(d) = &self.dst {
            s.push_str(if d.negated { " ! -d " } else { " -d " });
            s.push_str(&d.text);
        }
        if let Some(p) = self.dport {
            s.push_str(&format!(" --dport {p}"));
        }
        if let Some(ports) = &self.dports {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            s.push_str(" --match multiport --dports ");
            s.push_str(&list.join(","));
        }
        if let Some((negated, uid)) = self.uid_owner {
            s.push_str(if negated { " -m owner ! --uid-owner " } else { " -m owner --uid-owner " });
            s.push_str(&uid.to_string());
        }
        s.push_str(" -j ");
        match &self.target {
            Target::Jump(c) => s.push_str(names.name(*c)),
            Target::Return => s.push_str("RETURN"),
            Target::Accept => s.push_str("ACCEPT"),
            Target::Redirect(p) => s.push_str(&format!("REDIRECT --to-port {p}")),
            Target::Dnat(to) => {
                s.push_str("DNAT --to-destination ");
                s.push_str(to);
            }
        }
        s
    }

    /// Whether the rule's matches accept a packet with these properties.
    pub fn matches(&self, m: &PacketView<'_>) -> bool {
        if let Some(p) = self.proto
            && p != m.proto
        {
            return false;
        }
        if let Some(i) = &self.in_iface {
            match m.in_iface {
                Some(actual) if interface_matches(i, actual) => {}
                _ => return false,
            }
        }
        if let Some(o) = &self.out_iface {
            match m.out_iface {
                Some(actual) if interface_matches(o, actual) => {}
                _ => return false,
            }
        }
        if let Some(d) = &self.dst
            && d.net.contains(&m.dst_ip) == d.negated
        {
            return false;
        }
        if let Some(p) = self.dport
            && p != m.dst_port
        {
            return false;
        }
        if let Some(ports) = &self.dports
            && !ports.contains(&m.dst_port)
        {
            return false;
        }
        if let Some((negated, uid)) = self.uid_owner {
            // The owner match only exists in OUTPUT; without a socket owner it never matches.
            match m.uid {
                Some(actual) if (actual == uid) != negated => {}
                _ => return false,
            }
        }
        true
    }
}

/// What a rule can look at in a packet.
pub struct PacketView<'a> {
    pub proto: Proto,
    pub in_iface: Option<&'a str>,
    pub out_iface: Option<&'a str>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub uid: Option<u32>,
}

/// All rules of one family, in emission order.
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub family: Family,
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// osm-edge's `GenerateIptablesCommands`, for one address family.
    pub fn build(policy: &Policy, family: Family) -> RuleSet {
        use Chain::*;
        let ports = &policy.ports;
        let uid = policy.proxy_uid;
        let lo = family.loopback_cidr();
        let mut r = Vec::new();

        // 1. Inbound static rules.
        r.push(Rule::new(Op::Append, InRedirect, Target::Redirect(ports.inbound)).tcp());
        r.push(Rule::new(Op::Append, Prerouting, Target::Jump(Inbound)).tcp());
        for p in ports.inbound_bypass() {
            r.push(Rule::new(Op::Append, Inbound, Target::Return).tcp().dport(p).why(Reason::InReservedPort));
        }
        r.push(Rule::new(Op::Append, Inbound, Target::Jump(InRedirect)).tcp().why(Reason::InRedirect));
        for iface in &policy.network_interface_exclusions {
            r.push(Rule::new(Op::Insert, Inbound, Target::Return).iif(iface).why(Reason::InExcludedInterface));
        }
        // 2. Inbound port exclusions (split: a multiport match takes at most 15 ports).
        for chunk in policy.inbound_port_exclusions.chunks(MULTIPORT_MAX) {
            r.push(Rule::new(Op::Insert, Inbound, Target::Return).tcp().dports(chunk).why(Reason::InExcludedPort));
        }
        // 3. Outbound static rules.
        r.push(Rule::new(Op::Append, OutRedirect, Target::Redirect(ports.outbound)).tcp());
        r.push(Rule::new(Op::Append, OutRedirect, Target::Accept).tcp().dport(ports.admin));
        r.push(Rule::new(Op::Append, Output, Target::Jump(Outbound)).tcp());
        r.push(
            Rule::new(Op::Append, Outbound, Target::Jump(InRedirect))
                .oif("lo")
                .dst(true, lo)
                .uid(false, uid)
                .why(Reason::OutProxyToLocal),
        );
        r.push(Rule::new(Op::Append, Outbound, Target::Return).oif("lo").uid(true, uid).why(Reason::OutLocalNotProxy));
        r.push(Rule::new(Op::Append, Outbound, Target::Return).uid(false, uid).why(Reason::OutProxyUid));
        r.push(Rule::new(Op::Append, Outbound, Target::Return).dst(false, lo).why(Reason::OutLoopback));
        // IPv4 only, as osm-edge emits it (ip6tables has no such rule; a v4-mapped destination
        // of a dual-stack socket is IPv4 on the wire and meets this one).
        if policy.local_dns_proxy && family == Family::Ipv4 {
            let nameserver = std::net::Ipv4Addr::from(dns_proxy::ADDR);
            r.push(
                Rule::new(Op::Append, Output, Target::Dnat(format!("{nameserver}:{}", dns_proxy::PROXY_PORT)))
                    .proto(Proto::Udp)
                    .dst(false, &nameserver.to_string())
                    .dport(dns_proxy::PORT)
                    .why(Reason::OutDnsProxy),
            );
        }
        if policy.local_proxy_mode == LocalProxyMode::PodIp {
            r.push(
                Rule::new(Op::Insert, Output, Target::Dnat(family.pod_ip_variable().into()))
                    .tcp()
                    .oif("lo")
                    .dst(false, lo)
                    .uid(false, uid)
                    .why(Reason::OutPodIpDnat),
            );
        }
        for iface in &policy.network_interface_exclusions {
            r.push(Rule::new(Op::Append, Outbound, Target::Return).oif(iface).why(Reason::OutExcludedInterface));
        }
        // 4. Outbound IP range exclusions.
        for cidr in policy.exclusions(family) {
            r.push(Rule::new(Op::Append, Outbound, Target::Return).dst(false, &cidr.text).why(Reason::OutExcludedCidr));
        }
        // 5. Outbound port exclusions.
        for chunk in policy.outbound_port_exclusions.chunks(MULTIPORT_MAX) {
            r.push(Rule::new(Op::Append, Outbound, Target::Return).tcp().dports(chunk).why(Reason::OutExcludedPort));
        }
        // 6. Inclusions, or redirect everything left.
        if policy.has_inclusions(family) {
            for cidr in policy.inclusions(family) {
                r.push(
                    Rule::new(Op::Append, Outbound, Target::Jump(OutRedirect))
                        .dst(false, &cidr.text)
                        .why(Reason::OutIncluded),
                );
            }
            r.push(Rule::new(Op::Append, Outbound, Target::Return).why(Reason::OutNotIncluded));
        } else {
            r.push(Rule::new(Op::Append, Outbound, Target::Jump(OutRedirect)).why(Reason::OutDefault));
        }
        RuleSet { family, rules: r }
    }

    /// A chain's rules in the order the kernel holds them after the restore: `-A` appends,
    /// `-I` (without a position) inserts at the top.
    pub fn live_chain(&self, chain: Chain) -> Vec<&Rule> {
        let mut out: Vec<&Rule> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.chain == chain) {
            match rule.op {
                Op::Append => out.push(rule),
                Op::Insert => out.insert(0, rule),
            }
        }
        out
    }
}
