//! The destination space of a pod, cut into cells within which the kernel routes every
//! destination the same way and picks the same source address.
//!
//! The cells are the prefixes of the pod's routes, a few special ranges (so that no cell's
//! sample is a special address), and — for a family with several global addresses — the
//! prefixes of each address down to its own length: IPv6 source selection prefers the
//! address sharing the longest prefix with the destination (RFC 6724 rule 8, capped at the
//! address's prefix length), which is constant only within those. The kernel is then asked
//! (RTM_GETROUTE) about one sample destination per cell: its answer holds for the whole
//! cell, and a longest-prefix-match over the cells finds it for any destination.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Ranges that are cells of their own whatever the routes say.
const SPECIAL_V4: [&str; 3] = ["0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"];
const SPECIAL_V6: [&str; 10] = [
    "::/128",
    "::1/128",
    "::/96",
    "2001::/32",
    "2002::/16",
    "3ffe::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// The cells of a namespace with these route prefixes and (address, prefix length) pairs
/// (its global addresses): each cell with a destination that lies in it and in no smaller
/// cell. Cells entirely covered by smaller ones are left out (no destination falls in them).
pub fn cells(routes: &[IpNet], addrs: &[(IpAddr, u8)]) -> Vec<(IpNet, IpAddr)> {
    let mut prefixes: Vec<IpNet> = routes.iter().map(IpNet::trunc).collect();
    prefixes.extend(SPECIAL_V4.iter().chain(SPECIAL_V6.iter()).map(|s| s.parse::<IpNet>().expect("special range")));
    for v6 in [false, true] {
        let family: Vec<&(IpAddr, u8)> = addrs.iter().filter(|(a, _)| a.is_ipv6() == v6).collect();
        if family.len() < 2 {
            continue;
        }
        for (addr, len) in family {
            for l in 0..=*len {
                if let Ok(net) = IpNet::new(*addr, l) {
                    prefixes.push(net.trunc());
                }
            }
        }
    }
    prefixes.sort_by_key(|p| (p.addr().is_ipv6(), p.prefix_len(), p.addr()));
    prefixes.dedup();
    prefixes
        .iter()
        .filter_map(|p| {
            let inside: Vec<IpNet> = prefixes.iter().filter(|c| *c != p && p.contains(*c)).copied().collect();
            sample(*p, &inside).map(|d| (*p, d))
        })
        .collect()
}

/// A destination in `net` outside every prefix of `inside` (all within `net`), if any.
fn sample(net: IpNet, inside: &[IpNet]) -> Option<IpAddr> {
    if inside.is_empty() {
        return Some(first_host(net));
    }
    if inside.contains(&net) {
        return None;
    }
    let halves = net.subnets(net.prefix_len() + 1).ok()?;
    for half in halves {
        let within: Vec<IpNet> = inside.iter().filter(|c| half.contains(*c)).copied().collect();
        if let Some(d) = sample(half, &within) {
            return Some(d);
        }
    }
    None
}

/// A representative address of a prefix: its second address when it has one (the first of
/// a range, like 198.51.100.0, is a valid destination but reads like a network address).
fn first_host(net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) if n.prefix_len() < 32 => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)),
        IpNet::V6(n) if n.prefix_len() < 128 => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)),
        other => other.addr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn find(cells: &[(IpNet, IpAddr)], dst: &str) -> IpNet {
        let d: IpAddr = dst.parse().unwrap();
        cells.iter().filter(|(p, _)| p.contains(&d)).max_by_key(|(p, _)| p.prefix_len()).unwrap().0
    }

    #[test]
    fn every_sample_lies_in_its_own_cell_and_no_smaller_one() {
        let routes =
            [net("0.0.0.0/0"), net("198.51.100.0/25"), net("198.51.100.2/32"), net("127.0.0.0/8"), net("::/0")];
        let addrs = [("2001:db8:1::2".parse().unwrap(), 64), ("2001:db8:3::2".parse().unwrap(), 64)];
        let cells = cells(&routes, &addrs);
        for (p, d) in &cells {
            assert_eq!(find(&cells, &d.to_string()), *p, "sample {d} of {p} falls in a smaller cell");
        }
        // The default route's sample avoids the special ranges.
        let default = cells.iter().find(|(p, _)| *p == net("0.0.0.0/0")).unwrap().1;
        assert!(!default.to_string().starts_with("0."), "{default}");
        // Two IPv6 addresses: destinations closer to one or the other are in different cells.
        assert_ne!(find(&cells, "2001:db8:2::10"), find(&cells, "2001:db8:1::10"));
        assert_eq!(find(&cells, "2001:db8:3::77"), net("2001:db8:3::/64"));
    }

    #[test]
    fn a_prefix_covered_by_smaller_ones_has_no_cell() {
        let routes = [net("203.0.113.0/24"), net("203.0.113.0/25"), net("203.0.113.128/25")];
        let cells = cells(&routes, &[]);
        assert!(!cells.iter().any(|(p, _)| *p == net("203.0.113.0/24")));
        assert!(cells.iter().any(|(p, _)| *p == net("203.0.113.128/25")));
    }
}
