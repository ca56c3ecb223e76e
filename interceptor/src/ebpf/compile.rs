//! Policy + the pod's routing snapshot → the policy objects a pod refers to. Pure: what the
//! kernel programs will read is decided here and unit-tested.
//!
//! A pod's policy is split into immutable objects, each identified by its content (see
//! `objects`): the pod's own table (its route cells, its own annotation ranges folded into
//! them, its inbound interface exclusions), the global excluded and included range lists
//! (identical for every pod of a MeshConfig: stored once), and its excluded ports (global
//! and its own together: small, and shared by every pod with the same).
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use interceptor_common::{
    CidrData, CidrKey, GenerationRecord, IfaceKey, PodAddrKey, PodConfig, PortKey, RouteValue, object_kind, pod_flags,
    port_flags, route_flags,
};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::{
    policy::{Family, LocalProxyMode, PodIpError, PodIps, Policy, interface_matches},
    routes::{NetSnapshot, RouteKind},
};

/// An LPM key as aya's `Key<CidrData>` holds it: prefix length (in bits of `CidrData`) and data.
pub type Lpm = (u32, CidrData);

/// The value bytes of an entry (a flag byte, or a whole `RouteValue`).
pub type ValueBytes = [u8; size_of::<RouteValue>()];

/// One entry of a policy object, its key without the object's id (stamped in when it is
/// written: see `GenerationRecord::with_object_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub record: GenerationRecord,
    pub value: ValueBytes,
}

impl Entry {
    fn lpm(kind: u32, (len, data): Lpm, value: &[u8]) -> Entry {
        Entry::new(GenerationRecord::lpm(kind, CidrKey::from_parts(len, data)), value)
    }

    fn small(kind: u32, key_bytes: &[u8], value: u8) -> Entry {
        Entry::new(GenerationRecord::from_key_bytes(kind, key_bytes), &[value])
    }

    fn new(record: GenerationRecord, value: &[u8]) -> Entry {
        let mut v = [0u8; size_of::<RouteValue>()];
        v[..value.len()].copy_from_slice(value);
        Entry { record, value: v }
    }

    /// The value as the map stores it.
    pub fn value_bytes(&self) -> &[u8] {
        &self.value[..GenerationRecord::value_len(self.record.kind)]
    }
}

/// An immutable set of map entries that pods refer to by id (see `interceptor_common::PodConfig`).
#[derive(Clone, Debug, Default)]
pub struct Object {
    /// `interceptor_common::object_kind`.
    pub kind: u32,
    /// Sorted, without duplicates: the same content always gives the same object.
    pub entries: Vec<Entry>,
    /// The digest, computed once.
    digest: std::sync::OnceLock<[u8; 32]>,
}

impl PartialEq for Object {
    fn eq(&self, other: &Object) -> bool {
        self.kind == other.kind && self.entries == other.entries
    }
}

impl Object {
    pub fn new(kind: u32, mut entries: Vec<Entry>) -> Object {
        entries.sort_unstable();
        entries.dedup_by(|a, b| a.record == b.record);
        Object { kind, entries, digest: Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// SHA-256 of the kind and the entries: the object's identity. A cryptographic hash,
    /// because a pod's annotations are part of what is hashed, and an object found by its
    /// digest is reused as it is.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| self.compute_digest())
    }

    fn compute_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"interceptor policy object v1\0");
        h.update(self.kind.to_le_bytes());
        h.update((self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            h.update(bytemuck::bytes_of(&e.record));
            h.update(e.value_bytes());
        }
        h.finalize().into()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The pod's `PODS` value, object ids still 0 (the enroll fills them in).
    pub config: PodConfig,
    /// The pod's own table: `ROUTES` and `IFACES` entries.
    pub table: Arc<Object>,
    pub lists: Lists,
    /// The pod's own addresses, by which sk_lookup finds it.
    pub addrs: Vec<PodAddrKey>,
    /// See `interceptor_common::PodInfo::table_inputs`.
    pub table_inputs: [u8; 32],
}

/// The objects of a policy that do not depend on the pod's routes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lists {
    pub excluded: Arc<Object>,
    pub included: Arc<Object>,
    pub ports: Arc<Object>,
}

impl Compiled {
    /// Every object, in the order of the `PodConfig` fields they go to (`policy_id`,
    /// `excluded_list`, `included_list`, `ports_list`).
    pub fn objects(&self) -> [&Object; 4] {
        [&self.table, &self.lists.excluded, &self.lists.included, &self.lists.ports]
    }

    pub fn entry_count(&self) -> usize {
        self.objects().iter().map(|o| o.entries.len()).sum()
    }
}

/// The LPM key of a network (host bits cleared) in object `policy_id`.
pub fn lpm(policy_id: u32, net: &IpNet) -> Lpm {
    let net = net.trunc();
    CidrKey::of(policy_id, net.addr(), net.prefix_len()).parts()
}

pub fn compile(policy: &Policy, snap: &NetSnapshot, given_pod_ips: &[IpAddr]) -> Result<Compiled, PodIpError> {
    let pod_ips = PodIps::given(given_pod_ips).or_from(snap.global_addrs());
    pod_ips.require_any(policy)?;
    let mut flags = policy_flags(policy);
    let mut pod_ip4 = [0u8; 4];
    let mut pod_ip6 = [0u8; 16];
    if let Some(IpAddr::V4(v4)) = pod_ips.v4 {
        pod_ip4 = v4.octets();
        flags |= pod_flags::HAS_POD_IP4;
    }
    if let Some(IpAddr::V6(v6)) = pod_ips.v6 {
        pod_ip6 = v6.octets();
        flags |= pod_flags::HAS_POD_IP6;
    }

    let pod = &policy.pod_ranges;
    let excluded_iface = |index: Option<u32>| -> bool {
        let Some(name) = index.and_then(|i| snap.link_name(i)) else { return false };
        policy.network_interface_exclusions.iter().any(|p| interface_matches(p, name))
    };
    let mut table = Vec::new();
    for (index, name) in &snap.links {
        if policy.network_interface_exclusions.iter().any(|p| interface_matches(p, name)) {
            let key = IfaceKey { policy_id: 0, ifindex: *index };
            table.push(Entry::small(GenerationRecord::KIND_IFACE, bytemuck::bytes_of(&key), 1));
            flags |= pod_flags::HAS_IFACE_EXCLUSIONS;
        }
    }
    for (net, value) in routes(snap, &excluded_iface, &pod.exclusions, &pod.inclusions) {
        table.push(Entry::lpm(GenerationRecord::KIND_ROUTE, lpm(0, &net), bytemuck::bytes_of(&value)));
    }

    let mut addrs: Vec<IpAddr> = snap.global_addrs().chain(given_pod_ips.iter().copied()).collect();
    addrs.sort();
    addrs.dedup();

    Ok(Compiled {
        config: PodConfig {
            proxy_uid: policy.proxy_uid,
            flags,
            outbound_port: policy.ports.outbound,
            inbound_port: policy.ports.inbound,
            reserved_inbound_ports: reserved_ports(policy),
            pod_ip4,
            pod_ip6,
            ..PodConfig::default()
        },
        table: Arc::new(Object::new(object_kind::POD_TABLE, table)),
        lists: lists(policy),
        addrs: addrs.into_iter().map(PodAddrKey::new).collect(),
        table_inputs: table_inputs(policy),
    })
}

/// The `PodConfig` flags the policy alone decides (not those of the pod's addresses and
/// interfaces).
pub fn policy_flags(policy: &Policy) -> u32 {
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
    flags
}

pub fn reserved_ports(policy: &Policy) -> [u16; 6] {
    let b = policy.ports.inbound_bypass();
    [b[0], b[1], b[2], b[3], b[4], 0]
}

/// What the pod's table depends on besides its routes: its own ranges and the interface
/// exclusions (SHA-256).
pub fn table_inputs(policy: &Policy) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"interceptor table inputs v1\0");
    for (tag, nets) in [(b'x', &policy.pod_ranges.exclusions), (b'i', &policy.pod_ranges.inclusions)] {
        for n in nets {
            h.update([tag]);
            h.update(n.to_string().as_bytes());
            h.update([0]);
        }
    }
    for name in &policy.network_interface_exclusions {
        h.update([b'f']);
        h.update(name.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// The lists of a policy: the global excluded and included ranges (every range of the
/// merged list that the pod's annotations do not add), and the excluded ports (global and
/// the pod's own together).
pub fn lists(policy: &Policy) -> Lists {
    let pod = &policy.pod_ranges;
    // A pod adds a few ranges at most to a global list of thousands: a scan of its own is
    // cheaper than hashing every global range (this runs for every pod at a MeshConfig change).
    let nets = |list: &[crate::policy::Cidr], own: &[IpNet]| -> Vec<IpNet> {
        if own.len() <= 16 {
            return list.iter().map(|c| c.net.trunc()).filter(|n| !own.contains(n)).collect();
        }
        let own: std::collections::HashSet<IpNet> = own.iter().copied().collect();
        list.iter().map(|c| c.net.trunc()).filter(|n| !own.contains(n)).collect()
    };
    let mut ports: BTreeMap<u16, u8> = Default::default();
    for p in &policy.outbound_port_exclusions {
        *ports.entry(*p).or_default() |= port_flags::OUTBOUND_EXCLUDED;
    }
    for p in &policy.inbound_port_exclusions {
        *ports.entry(*p).or_default() |= port_flags::INBOUND_EXCLUDED;
    }
    Lists {
        excluded: shared_list(object_kind::EXCLUDED, nets(&policy.outbound_ip_range_exclusions, &pod.exclusions)),
        included: shared_list(object_kind::INCLUDED, nets(&policy.outbound_ip_range_inclusions, &pod.inclusions)),
        ports: Arc::new(Object::new(
            object_kind::PORTS,
            ports
                .into_iter()
                .map(|(port, f)| {
                    let key = PortKey { policy_id: 0, port, _pad: 0 };
                    Entry::small(GenerationRecord::KIND_PORT, bytemuck::bytes_of(&key), f)
                })
                .collect(),
        )),
    }
}

/// The object of a list of ranges. The last few are remembered with the exact input they
/// were built from: a daemon (or a benchmark) enrolling a thousand pods with one MeshConfig
/// builds, sorts and hashes its 10 000 ranges once, and only compares them afterwards.
fn shared_list(kind: u32, nets: Vec<IpNet>) -> Arc<Object> {
    /// (object kind, the ranges it was built from, the object)
    type Built = (u32, Vec<IpNet>, Arc<Object>);
    static CACHE: Mutex<Vec<Built>> = Mutex::new(Vec::new());
    const KEPT: usize = 4;
    if let Some((_, _, obj)) = CACHE.lock().unwrap().iter().find(|(k, n, _)| *k == kind && *n == nets) {
        return obj.clone();
    }
    let record =
        if kind == object_kind::INCLUDED { GenerationRecord::KIND_INCLUDED } else { GenerationRecord::KIND_EXCLUDED };
    let obj = Arc::new(Object::new(kind, nets.iter().map(|n| Entry::lpm(record, lpm(0, n), &[1])).collect()));
    // Small lists are cheap to build: only large ones are worth keeping.
    if nets.len() >= 64 {
        let mut cache = CACHE.lock().unwrap();
        if cache.len() >= KEPT {
            cache.remove(0);
        }
        cache.push((kind, nets, obj.clone()));
    }
    obj
}

/// The routes the programs look up: one entry per cell of the destination space (see
/// `cells`), with the kernel's own answer for it: local to the pod (`-o lo`), leaving through
/// an excluded interface, the source address a connection gets, or no route at all.
///
/// The pod's own excluded and included ranges are folded in: each range becomes an entry
/// of its own (with the answer of the cell that holds it, as a longest-prefix match over the
/// cells gives it) unless it is a cell already, and every entry within a range carries its
/// flag. A longest-prefix match then finds, for any destination, both the kernel's answer
/// and whether one of the pod's ranges holds it — in the lookup the programs make anyway.
fn routes(
    snap: &NetSnapshot,
    excluded_iface: &dyn Fn(Option<u32>) -> bool,
    pod_exclusions: &[IpNet],
    pod_inclusions: &[IpNet],
) -> Vec<(IpNet, RouteValue)> {
    let cells: Vec<(IpNet, RouteValue)> = snap
        .cells
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
                    let src = a.prefsrc.map(|s| interceptor_common::addr_bytes(&s)).unwrap_or_default();
                    RouteValue { flags, ifindex: a.oif.unwrap_or(0), src }
                }
                _ => RouteValue { flags: route_flags::UNREACHABLE, ifindex: 0, src: [0; 16] },
            };
            (cell.net.trunc(), value)
        })
        .collect();
    let within = |outer: &IpNet, inner: &IpNet| outer.prefix_len() <= inner.prefix_len() && outer.contains(inner);
    let mut out = cells.clone();
    for range in pod_exclusions.iter().chain(pod_inclusions).map(IpNet::trunc) {
        if out.iter().any(|(n, _)| *n == range) {
            continue;
        }
        let holder = cells.iter().filter(|(n, _)| within(n, &range)).max_by_key(|(n, _)| n.prefix_len());
        let value =
            holder.map(|(_, v)| *v).unwrap_or(RouteValue { flags: route_flags::UNREACHABLE, ..Default::default() });
        out.push((range, value));
    }
    for (net, value) in &mut out {
        for (ranges, inside, listed) in [
            (pod_exclusions, route_flags::POD_EXCLUDED, route_flags::POD_EXCLUSION),
            (pod_inclusions, route_flags::POD_INCLUDED, route_flags::POD_INCLUSION),
        ] {
            for r in ranges.iter().map(IpNet::trunc) {
                if within(&r, net) {
                    value.flags |= inside;
                }
                if r == *net {
                    value.flags |= listed;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{Cidr, PodRanges, Ports},
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

    fn cidr(s: &str) -> Cidr {
        Cidr { text: s.into(), net: net(s) }
    }

    /// The entries of an object as (map kind, prefix length of the address, first 4 address
    /// bytes, value bytes), for LPM entries.
    fn lpm_entries(o: &Object) -> Vec<(u32, u32, [u8; 4], Vec<u8>)> {
        o.entries
            .iter()
            .filter(|e| e.record.kind != GenerationRecord::KIND_PORT && e.record.kind != GenerationRecord::KIND_IFACE)
            .map(|e| {
                let len = u32::from_ne_bytes(e.record.key[..4].try_into().unwrap()) - CidrKey::HEADER_BITS;
                (e.record.kind, len, e.record.key[12..16].try_into().unwrap(), e.value_bytes().to_vec())
            })
            .collect()
    }

    fn route_flags_of(o: &Object, prefix: &str) -> Option<u32> {
        let n = net(prefix);
        let IpAddr::V4(a) = n.addr() else { unreachable!() };
        lpm_entries(o)
            .into_iter()
            .find(|(k, len, addr, _)| {
                *k == GenerationRecord::KIND_ROUTE && *len == n.prefix_len() as u32 && *addr == a.octets()
            })
            .map(|(_, _, _, v)| bytemuck::pod_read_unaligned::<RouteValue>(&v).flags)
    }

    #[test]
    fn compiles_lists_ports_routes_and_flags() {
        let policy = Policy {
            outbound_ip_range_exclusions: vec![cidr("10.0.0.1/8")],
            outbound_ip_range_inclusions: vec![cidr("2001:db8::/32")],
            outbound_port_exclusions: vec![6379, 7070],
            inbound_port_exclusions: vec![7070],
            network_interface_exclusions: vec!["eth1".into()],
            ports: Ports::default(),
            ..Policy::default()
        };
        let c = compile(&policy, &snap(), &[]).unwrap();
        let cfg = c.config;
        assert_eq!(cfg.flags & pod_flags::HAS_INCLUSIONS_V6, pod_flags::HAS_INCLUSIONS_V6);
        assert_eq!(cfg.flags & pod_flags::HAS_INCLUSIONS_V4, 0);
        assert_eq!(cfg.flags & pod_flags::HAS_IFACE_EXCLUSIONS, pod_flags::HAS_IFACE_EXCLUSIONS);
        assert_eq!(cfg.pod_ip4, [198, 51, 100, 2]);
        assert_eq!(cfg.reserved_inbound_ports, [15010, 15901, 15902, 15903, 15904, 0]);
        // 10.0.0.1/8 is matched as 10.0.0.0/8: 64 header bits + 8; no id yet.
        assert_eq!(lpm_entries(&c.lists.excluded), vec![(GenerationRecord::KIND_EXCLUDED, 8, [10, 0, 0, 0], vec![1])]);
        assert_eq!(c.lists.excluded.kind, object_kind::EXCLUDED);
        assert_eq!(c.lists.included.entries.len(), 1);
        let mut ports: Vec<(u16, u8)> = c
            .lists
            .ports
            .entries
            .iter()
            .map(|e| (bytemuck::pod_read_unaligned::<PortKey>(&e.record.key[..8]).port, e.value[0]))
            .collect();
        ports.sort_unstable();
        assert_eq!(
            ports,
            vec![
                (6379, port_flags::OUTBOUND_EXCLUDED),
                (7070, port_flags::OUTBOUND_EXCLUDED | port_flags::INBOUND_EXCLUDED)
            ]
        );
        let ifaces: Vec<u32> = c
            .table
            .entries
            .iter()
            .filter(|e| e.record.kind == GenerationRecord::KIND_IFACE)
            .map(|e| bytemuck::pod_read_unaligned::<IfaceKey>(&e.record.key[..8]).ifindex)
            .collect();
        assert_eq!(ifaces, vec![3]);
        // One entry per cell, as the kernel answered: local, via an interface (excluded or
        // not, with its source), or no route.
        for (cell, flags) in [
            ("127.0.0.0/8", route_flags::LOCAL | route_flags::HAS_SRC),
            ("198.51.100.2/32", route_flags::LOCAL | route_flags::HAS_SRC),
            ("198.51.100.0/24", route_flags::HAS_SRC),
            ("203.0.113.0/24", route_flags::EXCLUDED_INTERFACE),
            ("224.0.0.0/4", route_flags::UNREACHABLE),
            ("0.0.0.0/0", route_flags::UNREACHABLE),
        ] {
            assert_eq!(route_flags_of(&c.table, cell), Some(flags), "{cell}");
        }
        assert_eq!(lpm_entries(&c.table).len(), 6);
    }

    #[test]
    fn the_pods_own_ranges_are_folded_into_its_routes() {
        let policy = Policy {
            outbound_ip_range_exclusions: vec![cidr("203.0.113.7/32"), cidr("198.51.100.0/23"), cidr("10.0.0.0/8")],
            outbound_ip_range_inclusions: vec![cidr("203.0.113.0/25")],
            network_interface_exclusions: vec!["eth1".into()],
            pod_ranges: PodRanges {
                exclusions: vec![net("203.0.113.7/32"), net("198.51.100.0/23")],
                inclusions: vec![net("203.0.113.0/25")],
            },
            ..Policy::default()
        };
        let c = compile(&policy, &snap(), &[]).unwrap();
        // Only the global range is in the shared list.
        assert_eq!(lpm_entries(&c.lists.excluded), vec![(GenerationRecord::KIND_EXCLUDED, 8, [10, 0, 0, 0], vec![1])]);
        assert!(c.lists.included.is_empty(), "the only inclusion is the pod's own");
        assert_eq!(c.config.flags & pod_flags::HAS_INCLUSIONS_V4, pod_flags::HAS_INCLUSIONS_V4);
        use route_flags::*;
        // A /32 inside 203.0.113.0/24 (a cell, here with an excluded interface): its own
        // entry, with the cell's answer, and inside the included /25 too.
        assert_eq!(
            route_flags_of(&c.table, "203.0.113.7/32"),
            Some(EXCLUDED_INTERFACE | POD_EXCLUDED | POD_EXCLUSION | POD_INCLUDED)
        );
        assert_eq!(route_flags_of(&c.table, "203.0.113.0/25"), Some(EXCLUDED_INTERFACE | POD_INCLUDED | POD_INCLUSION));
        // The cell itself is not inside the /25.
        assert_eq!(route_flags_of(&c.table, "203.0.113.0/24"), Some(EXCLUDED_INTERFACE));
        let ifindex = lpm_entries(&c.table)
            .into_iter()
            .find(|(_, len, addr, _)| (*len, *addr) == (32, [203, 0, 113, 7]))
            .map(|(_, _, _, v)| bytemuck::pod_read_unaligned::<RouteValue>(&v).ifindex);
        assert_eq!(ifindex, Some(3), "the /32 has the cell's interface");
        // A /23 holding the cells 198.51.100.0/24 and 198.51.100.2/32: both flagged, and the
        // /23 entry itself has the answer of the cell that holds it (the default: no route).
        assert_eq!(route_flags_of(&c.table, "198.51.100.0/23"), Some(UNREACHABLE | POD_EXCLUDED | POD_EXCLUSION));
        assert_eq!(route_flags_of(&c.table, "198.51.100.0/24"), Some(HAS_SRC | POD_EXCLUDED));
        assert_eq!(route_flags_of(&c.table, "198.51.100.2/32"), Some(LOCAL | HAS_SRC | POD_EXCLUDED));
        assert_eq!(route_flags_of(&c.table, "127.0.0.0/8"), Some(LOCAL | HAS_SRC));
        assert_eq!(lpm_entries(&c.table).len(), 9);
    }

    #[test]
    fn identical_content_is_one_object_whatever_the_order() {
        let a = Policy {
            outbound_ip_range_exclusions: vec![cidr("10.0.0.0/8"), cidr("192.168.0.0/16"), cidr("10.0.0.0/8")],
            outbound_port_exclusions: vec![80, 443],
            ..Policy::default()
        };
        let b = Policy {
            outbound_ip_range_exclusions: vec![cidr("192.168.0.0/16"), cidr("10.1.2.3/8")],
            outbound_port_exclusions: vec![443, 80],
            ..Policy::default()
        };
        let (ca, cb) = (compile(&a, &snap(), &[]).unwrap(), compile(&b, &snap(), &[]).unwrap());
        assert_eq!(ca.lists.excluded.digest(), cb.lists.excluded.digest());
        assert_eq!(ca.lists.ports.digest(), cb.lists.ports.digest());
        assert_eq!(ca.table.digest(), cb.table.digest());
        // Same entries, another kind: another object.
        assert_ne!(
            Object::new(object_kind::INCLUDED, ca.lists.excluded.entries.clone()).digest(),
            ca.lists.excluded.digest()
        );
        let c = Policy { outbound_port_exclusions: vec![80], ..a.clone() };
        assert_ne!(compile(&c, &snap(), &[]).unwrap().lists.ports.digest(), ca.lists.ports.digest());
    }

    #[test]
    fn stamping_puts_the_id_where_the_programs_look() {
        let (len, data) = lpm(0x0102_0304, &net("10.0.0.0/8"));
        let stamped = Entry::lpm(GenerationRecord::KIND_EXCLUDED, lpm(0, &net("10.0.0.0/8")), &[1])
            .record
            .with_object_id(0x0102_0304);
        assert_eq!(&stamped.key[..4], &len.to_ne_bytes());
        assert_eq!(&stamped.key[4..], bytemuck::bytes_of(&data));
        assert_eq!(stamped.object_id(), 0x0102_0304);
        let port = Entry::small(
            GenerationRecord::KIND_PORT,
            bytemuck::bytes_of(&PortKey { policy_id: 0, port: 80, _pad: 0 }),
            1,
        );
        let stamped = port.record.with_object_id(77);
        assert_eq!(&stamped.key[..8], bytemuck::bytes_of(&PortKey { policy_id: 77, port: 80, _pad: 0 }));
        assert_eq!(stamped.object_id(), 77);
    }

    #[test]
    fn the_local_dns_proxy_is_a_pod_flag() {
        let dns = Policy { local_dns_proxy: true, ..Policy::default() };
        let flags = compile(&dns, &snap(), &[]).unwrap().config.flags;
        assert_eq!(flags & pod_flags::LOCAL_DNS_PROXY, pod_flags::LOCAL_DNS_PROXY);
        let flags = compile(&Policy::default(), &snap(), &[]).unwrap().config.flags;
        assert_eq!(flags & pod_flags::LOCAL_DNS_PROXY, 0);
    }

    #[test]
    fn refuses_pod_ip_without_address() {
        let podip = Policy { local_proxy_mode: LocalProxyMode::PodIp, ..Policy::default() };
        assert!(compile(&podip, &NetSnapshot::default(), &[]).is_err());
        let c = compile(&podip, &snap(), &["203.0.113.9".parse().unwrap()]).unwrap();
        assert_eq!(c.config.pod_ip4, [203, 0, 113, 9]);
    }
}
