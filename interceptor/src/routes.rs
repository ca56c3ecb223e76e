//! What a pod's routing tables say, read over rtnetlink inside its network namespace: the
//! eBPF programs need to know which destinations are local (`-o lo` for iptables), which
//! leave through an excluded interface, and which source address a connection would get.
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::{
    address::{AddressAttribute, AddressScope},
    link::LinkAttribute,
    route::{RouteAddress, RouteAttribute, RouteType},
};
use rtnetlink::{RouteMessageBuilder, new_connection};

use crate::netns::{Netns, NetnsError};

/// Reading a namespace's links, addresses and routes failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot start the netlink reader")]
    Runtime(#[source] std::io::Error),
    /// `what`: listing links, addresses or routes.
    #[error("{what}")]
    Netlink { what: &'static str, source: rtnetlink::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

type Result<T> = std::result::Result<T, RoutesError>;

fn listing(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> RoutesError {
    move |source| RoutesError::Netlink { what, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A local address of the namespace (delivered through `lo`).
    Local,
    /// A destination reachable through an interface.
    Unicast,
    /// Blackhole, unreachable, prohibit, broadcast, …: no TCP connection gets through.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub table: u32,
    pub kind: RouteKind,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub priority: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub global: bool,
}

/// What the kernel answers for a destination (RTM_GETROUTE, as `ip route get` shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteAnswer {
    pub kind: RouteKind,
    pub oif: Option<u32>,
    /// The source address a connection to it gets.
    pub prefsrc: Option<IpAddr>,
}

/// A cell of the destination space (see `cells`): the kernel's answer holds for all of it.
/// `answer` is None where there is no route (a connect() fails before any packet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub net: IpNet,
    pub answer: Option<RouteAnswer>,
}

/// A network namespace's links, addresses and routes at one moment.
#[derive(Clone, Debug, Default)]
pub struct NetSnapshot {
    pub routes: Vec<RouteEntry>,
    pub links: Vec<(u32, String)>,
    pub addrs: Vec<AddrEntry>,
    /// The kernel's routing decision for every cell of the destination space.
    pub cells: Vec<Cell>,
}

impl NetSnapshot {
    pub fn link_name(&self, index: u32) -> Option<&str> {
        self.links.iter().find(|(i, _)| *i == index).map(|(_, n)| n.as_str())
    }

    /// The namespace's global addresses (candidates for the pod IP).
    pub fn global_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().filter(|a| a.global).map(|a| a.addr)
    }
}

/// Reads the snapshot of `netns`.
pub fn snapshot(netns: &Netns) -> Result<NetSnapshot> {
    netns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RoutesError::Runtime)?;
        rt.block_on(read_snapshot())
    })
}

async fn read_snapshot() -> Result<NetSnapshot> {
    let (connection, handle, _) = new_connection().map_err(RoutesError::Socket)?;
    let task = tokio::spawn(connection);
    let mut snap = NetSnapshot::default();

    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(listing("listing links"))? {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            snap.links.push((msg.header.index, name));
        }
    }

    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(listing("listing addresses"))? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = addr.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            snap.addrs.push(AddrEntry {
                ifindex: msg.header.index,
                addr,
                prefix_len: msg.header.prefix_len,
                global: msg.header.scope == AddressScope::Universe,
            });
        }
    }

    for v6 in [false, true] {
        let request = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let mut routes = handle.route().get(request).execute();
        while let Some(msg) = routes.try_next().await.map_err(listing("listing routes"))? {
            let mut table = msg.header.table as u32;
            let mut dst = None;
            let mut oif = None;
            let mut prefsrc = None;
            let mut priority = 0;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(a) => dst = route_ip(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::PrefSource(a) => prefsrc = route_ip(a),
                    RouteAttribute::Priority(p) => priority = *p,
                    RouteAttribute::MultiPath(hops) if oif.is_none() => {
                        oif = hops.first().map(|h| h.interface_index);
                    }
                    _ => {}
                }
            }
            let len = msg.header.destination_prefix_length;
            let unspecified: IpAddr =
                if v6 { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
            let Ok(dst) = IpNet::new(dst.unwrap_or(unspecified), len) else { continue };
            let kind = route_kind(msg.header.kind);
            snap.routes.push(RouteEntry { dst: dst.trunc(), table, kind, oif, prefsrc, priority });
        }
    }
    snap.cells = ask_cells(&handle, &snap).await?;
    task.abort();
    Ok(snap)
}

/// Asks the kernel about one destination of every cell (all at once on the connection).
async fn ask_cells(handle: &rtnetlink::Handle, snap: &NetSnapshot) -> Result<Vec<Cell>> {
    let routes: Vec<IpNet> = snap.routes.iter().map(|r| r.dst).collect();
    let addrs: Vec<(IpAddr, u8)> = snap.addrs.iter().filter(|a| a.global).map(|a| (a.addr, a.prefix_len)).collect();
    let cells = crate::cells::cells(&routes, &addrs);
    let answers = futures::future::join_all(cells.iter().map(|(_, d)| route_get(handle, *d))).await;
    Ok(cells.into_iter().zip(answers).map(|((net, _), answer)| Cell { net, answer }).collect())
}

/// `ip route get DST`: None when the kernel has no usable route (unreachable, blackhole,
/// prohibit: the lookup itself fails).
async fn route_get(handle: &rtnetlink::Handle, dst: IpAddr) -> Option<RouteAnswer> {
    let request = match dst {
        IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(a, 32).build(),
        IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().destination_prefix(a, 128).build(),
    };
    let msg = handle.route().get(request).execute().try_next().await.ok()??;
    let mut answer = RouteAnswer { kind: route_kind(msg.header.kind), oif: None, prefsrc: None };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => answer.oif = Some(*i),
            RouteAttribute::PrefSource(a) => answer.prefsrc = route_ip(a),
            _ => {}
        }
    }
    Some(answer)
}

fn route_kind(t: RouteType) -> RouteKind {
    match t {
        RouteType::Local => RouteKind::Local,
        RouteType::Unicast => RouteKind::Unicast,
        _ => RouteKind::Other,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}
