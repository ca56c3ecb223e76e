//! Policy + the pod's routing snapshot → the map entries of one policy generation. Pure:
//! what the kernel programs will read is decided here and unit-tested.
use std::net::IpAddr;

use anyhow::{Result, bail};
use interceptor_common::{
    AF_INET, AF_INET6, CidrData, CidrKey, GenerationRecord, IfaceKey, PodAddrKey, PodConfig, PortKey, RouteValue,
    pod_flags, port_flags, route_flags,
};
use ipnet::IpNet;

use crate::{
    policy::{Family, LocalProxyMode, Policy, interface_matches},
    routes::{NetSnapshot, RouteKind},
};

/// An LPM key: prefix length (in bits of `CidrData`) and data.
pub type Lpm = (u32, CidrData);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub config: Option<PodConfig>,
    pub excluded: Vec<Lpm>,
    pub included: Vec<Lpm>,
    pub routes: Vec<(Lpm, RouteValue)>,
    pub ports: Vec<(PortKey, u8)>,
    pub ifaces: Vec<IfaceKey>,
    /// The pod's own addresses, by which sk_lookup finds it.
    pub addrs: Vec<PodAddrKey>,
}

impl Compiled {
    pub fn entry_count(&self) -> usize {
        self.excluded.len() + self.included.len() + self.routes.len() + self.ports.len() + self.ifaces.len()
    }

    /// What this generation writes (except `addrs`, which belong to the pod), for deleting it
    /// later without scanning every pod's entries.
    pub fn records(&self) -> Vec<GenerationRecord> {
        let lpm = |kind, (len, data): &Lpm| {
            let mut key = [0u8; 28];
            key[..4].copy_from_slice(&len.to_ne_bytes());
            key[4..].copy_from_slice(bytemuck::bytes_of(data));
            GenerationRecord { kind, key }
        };
        let small = |kind, bytes: &[u8]| {
            let mut key = [0u8; 28];
            key[..bytes.len()].copy_from_slice(bytes);
            GenerationRecord { kind, key }
        };
        let mut out = Vec::with_capacity(self.entry_count());
        out.extend(self.excluded.iter().map(|k| lpm(GenerationRecord::KIND_EXCLUDED, k)));
        out.extend(self.included.iter().map(|k| lpm(GenerationRecord::KIND_INCLUDED, k)));
        out.extend(self.routes.iter().map(|(k, _)| lpm(GenerationRecord::KIND_ROUTE, k)));
        out.extend(self.ports.iter().map(|(k, _)| small(GenerationRecord::KIND_PORT, bytemuck::bytes_of(k))));
        out.extend(self.ifaces.iter().map(|k| small(GenerationRecord::KIND_IFACE, bytemuck::bytes_of(k))));
        out
    }
}

pub fn family_code(f: Family) -> u16 {
    match f {
        Family::Ipv4 => AF_INET,
        Family::Ipv6 => AF_INET6,
    }
}

pub fn addr_bytes(ip: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

pub fn lpm(policy_id: u32, net: &IpNet) -> Lpm {
    let net = net.trunc();
    let key =
        CidrKey::new(policy_id, family_code(Family::of(&net.addr())), addr_bytes(&net.addr()), net.prefix_len() as u32);
    (key.prefix_len, CidrData { policy_id_be: key.policy_id_be, family_be: key.family_be, addr: key.addr })
}

/// The pod addresses used for PodIP mode: the given ones, else the namespace's first global
/// address of each family.
pub fn pod_ips(given: &[IpAddr], snap: &NetSnapshot) -> (Option<IpAddr>, Option<IpAddr>) {
    let pick = |v6: bool| {
        given
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6)
            .or_else(|| snap.global_addrs().find(|ip| ip.is_ipv6() == v6))
    };
    (pick(false), pick(true))
}

pub fn compile(policy: &Policy, snap: &NetSnapshot, policy_id: u32, given_pod_ips: &[IpAddr]) -> Result<Compiled> {
    let mut out = Compiled::default();
    let (ip4, ip6) = pod_ips(given_pod_ips, snap);
    if policy.local_proxy_mode == LocalProxyMode::PodIp && ip4.is_none() && ip6.is_none() {
        bail!("localProxyMode PodIP needs the pod's address: pass --pod-ip (the namespace has no global address)");
    }

    let mut flags = 0;
    if policy.has_inclusions(Family::Ipv4) {
        flags |= pod_flags::HAS_INCLUSIONS_V4;
    }
    if policy.has_inclusions(Family::Ipv6) {
        flags |= pod_flags::HAS_INCLUSIONS_V6;
    }
    if policy.local_proxy_mode == LocalProxyMode::PodIp {
        flags |= pod_flags::POD_IP_MODE;
    }
    if policy.local_dns_proxy {
        flags |= pod_flags::LOCAL_DNS_PROXY;
    }
    let mut pod_ip4 = [0u8; 4];
    let mut pod_ip6 = [0u8; 16];
    if let Some(IpAddr::V4(v4)) = ip4 {
        pod_ip4 = v4.octets();
        flags |= pod_flags::HAS_POD_IP4;
    }
    if let Some(IpAddr::V6(v6)) = ip6 {
        pod_ip6 = v6.octets();
        flags |= pod_flags::HAS_POD_IP6;
    }

    for c in &policy.outbound_ip_range_exclusions {
        out.excluded.push(lpm(policy_id, &c.net));
    }
    for c in &policy.outbound_ip_range_inclusions {
        out.included.push(lpm(policy_id, &c.net));
    }
    let mut ports: std::collections::BTreeMap<u16, u8> = Default::default();
    for p in &policy.outbound_port_exclusions {
        *ports.entry(*p).or_default() |= port_flags::OUTBOUND_EXCLUDED;
    }
    for p in &policy.inbound_port_exclusions {
        *ports.entry(*p).or_default() |= port_flags::INBOUND_EXCLUDED;
    }
    out.ports = ports.into_iter().map(|(port, f)| (PortKey { policy_id, port, _pad: 0 }, f)).collect();

    let excluded_iface = |index: Option<u32>| -> bool {
        let Some(name) = index.and_then(|i| snap.link_name(i)) else { return false };
        policy.network_interface_exclusions.iter().any(|p| interface_matches(p, name))
    };
    for (index, name) in &snap.links {
        if policy.network_interface_exclusions.iter().any(|p| interface_matches(p, name)) {
            out.ifaces.push(IfaceKey { policy_id, ifindex: *index });
        }
    }
    if !out.ifaces.is_empty() {
        flags |= pod_flags::HAS_IFACE_EXCLUSIONS;
    }
    out.routes = routes(policy_id, snap, &excluded_iface);
    let mut addrs: Vec<IpAddr> = snap.global_addrs().chain(given_pod_ips.iter().copied()).collect();
    addrs.sort();
    addrs.dedup();
    out.addrs = addrs
        .iter()
        .map(|ip| PodAddrKey { family: family_code(Family::of(ip)) as u32, addr: addr_bytes(ip) })
        .collect();

    out.config = Some(PodConfig {
        policy_id,
        proxy_uid: policy.proxy_uid,
        flags,
        outbound_port: policy.ports.outbound,
        inbound_port: policy.ports.inbound,
        reserved_inbound_ports: {
            let b = policy.ports.inbound_bypass();
            [b[0], b[1], b[2], b[3], b[4], 0]
        },
        pod_ip4,
        pod_ip6,
    });
    Ok(out)
}

/// The routes the programs look up: one entry per cell of the destination space (see
/// `cells`), with the kernel's own answer for it: local to the pod (`-o lo`), leaving through
/// an excluded interface, the source address a connection gets, or no route at all.
fn routes(policy_id: u32, snap: &NetSnapshot, excluded_iface: &dyn Fn(Option<u32>) -> bool) -> Vec<(Lpm, RouteValue)> {
    snap.cells
        .iter()
        .map(|cell| {
            let value = match cell.answer {
                Some(a) if a.kind != RouteKind::Other => {
                    let mut flags = 0;
                    if a.kind == RouteKind::Local {
                        flags |= route_flags::LOCAL;
                    }
                    if excluded_iface(a.oif) {
                        flags |= route_flags::EXCLUDED_INTERFACE;
                    }
                    if a.prefsrc.is_some() {
                        flags |= route_flags::HAS_SRC;
                    }
                    let src = a.prefsrc.map(|s| addr_bytes(&s)).unwrap_or_default();
                    RouteValue { flags, ifindex: a.oif.unwrap_or(0), src }
                }
                _ => RouteValue { flags: route_flags::UNREACHABLE, ifindex: 0, src: [0; 16] },
            };
            (lpm(policy_id, &cell.net), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{Cidr, Ports},
        routes::{AddrEntry, Cell, RouteAnswer},
    };

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn snap() -> NetSnapshot {
        // What the kernel answered for each cell of the destination space.
        let cell = |dst: &str, kind: Option<RouteKind>, oif: u32, src: Option<&str>| Cell {
            net: net(dst),
            answer: kind.map(|kind| RouteAnswer { kind, oif: Some(oif), prefsrc: src.map(|s| s.parse().unwrap()) }),
        };
        NetSnapshot {
            links: vec![(1, "lo".into()), (2, "eth0".into()), (3, "eth1".into())],
            addrs: vec![AddrEntry { ifindex: 2, addr: "198.51.100.2".parse().unwrap(), prefix_len: 24, global: true }],
            routes: vec![],
            cells: vec![
                cell("127.0.0.0/8", Some(RouteKind::Local), 1, Some("127.0.0.1")),
                cell("198.51.100.2/32", Some(RouteKind::Local), 1, Some("198.51.100.2")),
                cell("198.51.100.0/24", Some(RouteKind::Unicast), 2, Some("198.51.100.2")),
                cell("203.0.113.0/24", Some(RouteKind::Unicast), 3, None),
                cell("224.0.0.0/4", Some(RouteKind::Other), 2, None),
                cell("0.0.0.0/0", None, 0, None),
            ],
        }
    }

    #[test]
    fn compiles_lists_ports_routes_and_flags() {
        let policy = Policy {
            outbound_ip_range_exclusions: vec![Cidr { text: "10.0.0.1/8".into(), net: net("10.0.0.1/8") }],
            outbound_ip_range_inclusions: vec![Cidr { text: "2001:db8::/32".into(), net: net("2001:db8::/32") }],
            outbound_port_exclusions: vec![6379, 7070],
            inbound_port_exclusions: vec![7070],
            network_interface_exclusions: vec!["eth1".into()],
            ports: Ports::default(),
            ..Policy::default()
        };
        let c = compile(&policy, &snap(), 7, &[]).unwrap();
        let cfg = c.config.unwrap();
        assert_eq!(cfg.policy_id, 7);
        assert_eq!(cfg.flags & pod_flags::HAS_INCLUSIONS_V6, pod_flags::HAS_INCLUSIONS_V6);
        assert_eq!(cfg.flags & pod_flags::HAS_INCLUSIONS_V4, 0);
        assert_eq!(cfg.flags & pod_flags::HAS_IFACE_EXCLUSIONS, pod_flags::HAS_IFACE_EXCLUSIONS);
        assert_eq!(cfg.pod_ip4, [198, 51, 100, 2]);
        assert_eq!(cfg.reserved_inbound_ports, [15010, 15901, 15902, 15903, 15904, 0]);
        // 10.0.0.1/8 is matched as 10.0.0.0/8: 64 header bits + 8.
        assert_eq!(c.excluded[0].0, 72);
        assert_eq!(&c.excluded[0].1.addr[..4], &[10, 0, 0, 0]);
        assert_eq!(c.included[0].0, 64 + 32);
        assert_eq!(
            c.ports,
            vec![
                (PortKey { policy_id: 7, port: 6379, _pad: 0 }, port_flags::OUTBOUND_EXCLUDED),
                (
                    PortKey { policy_id: 7, port: 7070, _pad: 0 },
                    port_flags::OUTBOUND_EXCLUDED | port_flags::INBOUND_EXCLUDED
                ),
            ]
        );
        assert_eq!(c.ifaces, vec![IfaceKey { policy_id: 7, ifindex: 3 }]);
        // One entry per cell, as the kernel answered: local, via an interface (excluded or
        // not, with its source), or no route.
        let routes: Vec<(u32, [u8; 4], u32)> = c
            .routes
            .iter()
            .map(|((len, d), v)| (*len - 64, [d.addr[0], d.addr[1], d.addr[2], d.addr[3]], v.flags))
            .collect();
        assert_eq!(
            routes,
            vec![
                (8, [127, 0, 0, 0], route_flags::LOCAL | route_flags::HAS_SRC),
                (32, [198, 51, 100, 2], route_flags::LOCAL | route_flags::HAS_SRC),
                (24, [198, 51, 100, 0], route_flags::HAS_SRC),
                (24, [203, 0, 113, 0], route_flags::EXCLUDED_INTERFACE),
                (4, [224, 0, 0, 0], route_flags::UNREACHABLE),
                (0, [0, 0, 0, 0], route_flags::UNREACHABLE),
            ]
        );
    }

    #[test]
    fn the_local_dns_proxy_is_a_pod_flag() {
        let dns = Policy { local_dns_proxy: true, ..Policy::default() };
        let flags = compile(&dns, &snap(), 1, &[]).unwrap().config.unwrap().flags;
        assert_eq!(flags & pod_flags::LOCAL_DNS_PROXY, pod_flags::LOCAL_DNS_PROXY);
        let flags = compile(&Policy::default(), &snap(), 1, &[]).unwrap().config.unwrap().flags;
        assert_eq!(flags & pod_flags::LOCAL_DNS_PROXY, 0);
    }

    #[test]
    fn refuses_pod_ip_without_address() {
        let podip = Policy { local_proxy_mode: LocalProxyMode::PodIp, ..Policy::default() };
        assert!(compile(&podip, &NetSnapshot::default(), 1, &[]).is_err());
        let c = compile(&podip, &snap(), 1, &["203.0.113.9".parse().unwrap()]).unwrap();
        assert_eq!(c.config.unwrap().pod_ip4, [203, 0, 113, 9]);
    }
}
