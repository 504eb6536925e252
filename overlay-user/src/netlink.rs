//! Every netlink call the agent makes goes through `Netlink`: one socket bound to one network
//! namespace, with the operations the agent needs named for what they do. Lookups of something
//! that is not there return `None`, not an error.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{anyhow, Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlag, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute},
};
use rtnetlink::{Handle, IpVersion};

use crate::{
    datapath::{Neighbour, Route},
    netns,
};

/// The main routing table's id.
const RT_TABLE_MAIN: u32 = 254;

/// A link as the agent sees it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Vec<u8>,
    pub up: bool,
    pub is_veth: bool,
    pub is_bridge: bool,
    /// ifindex of the bridge (or other controller) it is a port of.
    pub master: Option<u32>,
}

impl From<&LinkMessage> for Link {
    fn from(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mtu: 1500,
            mac: Vec::new(),
            up: m.header.flags.contains(&LinkFlag::Up),
            is_veth: false,
            is_bridge: false,
            master: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(n) => l.mtu = *n,
                LinkAttribute::Address(a) => l.mac = a.clone(),
                LinkAttribute::LinkInfo(infos) => {
                    l.is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                    l.is_bridge = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
                }
                LinkAttribute::Controller(m) => l.master = Some(*m),
                _ => {}
            }
        }
        l
    }
}

fn is_no_device(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc::ENODEV)
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc::EEXIST)
}

/// A netlink socket bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Bound to the calling thread's namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Bound to the namespace at `path`: the socket is created inside it and stays there.
    pub fn connect_in(path: &Path) -> Result<Self> {
        netns::run_in(path, Self::connect)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from)),
            Err(e) if is_no_device(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await.context("listing links")?;
        Ok(msgs.iter().map(Link::from).collect())
    }

    /// Deleting a link that is already gone succeeds.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_no_device(&e) => Ok(()),
            Err(e) => Err(e).context("deleting link"),
        }
    }

    pub async fn delete_link_named(&self, name: &str) -> Result<()> {
        match self.link(name).await? {
            Some(l) => self.delete_link(l.index).await,
            None => Ok(()),
        }
    }

    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add()
            .veth(name.to_string(), peer.to_string())
            .execute()
            .await
            .with_context(|| format!("creating veth {name}"))
    }

    /// A bridge with a fixed MAC: a bridge left to choose takes its lowest port's MAC, which
    /// changes as containers come and go (and the datapath matches on it).
    pub async fn create_bridge(&self, name: &str, mac: &[u8; 6]) -> Result<()> {
        let req = self.handle.link().add().bridge(name.to_string()).address(mac.to_vec());
        req.execute().await.with_context(|| format!("creating bridge {name}"))
    }

    /// Make link `index` a port of bridge `bridge`.
    pub async fn set_master(&self, index: u32, bridge: u32) -> Result<()> {
        let r = self.handle.link().set(index).controller(bridge).execute().await;
        r.with_context(|| format!("adding link {index} to bridge {bridge}"))
    }

    /// Add `ip/prefix` to the link unless it has it; other addresses stay.
    pub async fn ensure_ipv4(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        if self.ipv4_addresses(index).await?.contains(&(ip, prefix)) {
            return Ok(());
        }
        match self.handle.address().add(index, IpAddr::V4(ip), prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {ip}/{prefix}")),
        }
    }

    /// The main table's default route: via `gateway` on link `index`. Idempotent (replaces
    /// another default route).
    pub async fn default_route(&self, gateway: Ipv4Addr, index: u32) -> Result<()> {
        let req = self.handle.route().add().v4().gateway(gateway).output_interface(index);
        req.replace().execute().await.with_context(|| format!("setting the default route via {gateway}"))
    }

    /// Move a link of this namespace into the namespace at `netns`.
    pub async fn move_to_netns(&self, index: u32, netns: &Path) -> Result<()> {
        let fd = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        self.handle
            .link()
            .set(index)
            .setns_by_fd(fd.as_raw_fd())
            .execute()
            .await
            .with_context(|| format!("moving link {index} into {}", netns.display()))
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let r = self.handle.link().set(index).name(name.to_string()).execute().await;
        r.with_context(|| format!("renaming link {index} to {name}"))
    }

    /// A MAC can only change while the link is down: it is left down.
    pub async fn set_mac(&self, index: u32, mac: &[u8; 6]) -> Result<()> {
        self.set_down(index).await?;
        self.handle.link().set(index).address(mac.to_vec()).execute().await.context("setting a MAC address")
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle.link().set(index).mtu(mtu).execute().await.with_context(|| format!("setting MTU {mtu}"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle.link().set(index).up().execute().await.with_context(|| format!("bringing link {index} up"))
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.handle.link().set(index).down().execute().await.with_context(|| format!("taking link {index} down"))
    }

    /// IPv4 addresses of a link with their prefix lengths.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self.address_messages(Some(index)).await?.iter().filter_map(ipv4_of).collect())
    }

    /// Make `ip/prefix` the only IPv4 address of the link.
    pub async fn set_only_ipv4(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut have = false;
        for m in self.address_messages(Some(index)).await? {
            match ipv4_of(&m) {
                Some(a) if a == (ip, prefix) => have = true,
                Some(_) => self.handle.address().del(m).execute().await.context("removing an old address")?,
                None => {}
            }
        }
        if !have {
            let r = self.handle.address().add(index, IpAddr::V4(ip), prefix).execute().await;
            r.with_context(|| format!("adding {ip}/{prefix}"))?;
        }
        Ok(())
    }

    /// The link holding `address`, if any.
    pub async fn link_with_address(&self, address: Ipv4Addr) -> Result<Option<Link>> {
        let index = self
            .address_messages(None)
            .await?
            .iter()
            .find(|m| ipv4_of(m).map(|a| a.0) == Some(address))
            .map(|m| m.header.index);
        let Some(index) = index else { return Ok(None) };
        Ok(self.links().await?.into_iter().find(|l| l.index == index))
    }

    /// Traffic from `src` is routed by `table`: its subnet on link `index`, everything else via
    /// `gateway`. Idempotent.
    pub async fn source_routes(
        &self,
        src: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        index: u32,
        table: u32,
    ) -> Result<()> {
        let subnet = Ipv4Addr::from(u32::from(src) & if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) });
        let link = self.handle.route().add().v4().destination_prefix(subnet, prefix).output_interface(index);
        link.scope(netlink_packet_route::route::RouteScope::Link)
            .table_id(table)
            .replace()
            .execute()
            .await
            .context("adding the subnet route of the mesh reply table")?;
        let via = self.handle.route().add().v4().gateway(gateway).output_interface(index).table_id(table);
        via.replace().execute().await.context("adding the default route of the mesh reply table")?;
        let rule = self.handle.rule().add().v4().source_prefix(src, 32).table_id(table);
        match rule.action(netlink_packet_route::rule::RuleAction::ToTable).priority(100).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).context("adding the mesh reply rule"),
        }
    }

    /// Traffic from local port `port` of IP protocol `proto` is routed by `table`. Idempotent.
    pub async fn port_rule(&self, proto: u8, port: u16, table: u32) -> Result<()> {
        use netlink_packet_route::{
            rule::{RuleAction, RuleAttribute, RulePortRange},
            IpProtocol,
        };
        let mut rule = self.handle.rule().add().v4().table_id(table).action(RuleAction::ToTable).priority(101);
        let attrs = &mut rule.message_mut().attributes;
        attrs.push(RuleAttribute::IpProtocol(IpProtocol::from(proto as i32)));
        attrs.push(RuleAttribute::SourcePortRange(RulePortRange { start: port, end: port }));
        match rule.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding the mesh reply rule for source port {port}")),
        }
    }

    /// Ask the kernel to resolve `ip`'s link-layer address on `index` (NTF_USE: as if a packet
    /// were waiting for it), without sending anything ourselves.
    pub async fn resolve_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        use netlink_packet_route::neighbour::{NeighbourFlag, NeighbourState};
        let req = self.handle.neighbours().add(index, IpAddr::V4(ip));
        match req.flags(vec![NeighbourFlag::Use]).state(NeighbourState::None).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e).context("asking for neighbour resolution"),
        }
    }

    /// IPv4 routes of the main table.
    pub async fn routes_v4(&self) -> Result<Vec<Route>> {
        let msgs: Vec<_> =
            self.handle.route().get(IpVersion::V4).execute().try_collect().await.context("listing routes")?;
        let mut out = Vec::new();
        for m in msgs {
            let mut r = Route {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix: m.header.destination_prefix_length,
                gateway: None,
                oif: None,
            };
            let mut table = m.header.table as u32;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
                    RouteAttribute::Oif(i) => r.oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// IPv4 neighbour entries that can be sent to now (what the kernel itself would use).
    pub async fn neighbours_v4(&self) -> Result<Vec<Neighbour>> {
        let msgs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_family(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .context("listing neighbours")?;
        let usable = |s: &NeighbourState| {
            matches!(
                s,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            )
        };
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| usable(&m.header.state)) {
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLocalAddress(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
                _ => None,
            });
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(Neighbour { ip, ifindex: m.header.ifindex, mac });
            }
        }
        Ok(out)
    }

    async fn address_messages(&self, index: Option<u32>) -> Result<Vec<AddressMessage>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        req.execute().try_collect().await.context("listing addresses")
    }
}

fn ipv4_of(m: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
        _ => None,
    })
}

/// The underlay interface: the one holding the node's address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Underlay {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    pub is_veth: bool,
    /// Its MAC: the source of every encapsulated frame.
    #[serde(default)]
    pub mac: [u8; 6],
}

pub async fn find_underlay(nl: &Netlink, address: Ipv4Addr) -> Result<Underlay> {
    let l = nl
        .link_with_address(address)
        .await?
        .ok_or_else(|| anyhow!("no interface in this network namespace holds the node address {address}"))?;
    let mac = <[u8; 6]>::try_from(l.mac.as_slice()).unwrap_or_default();
    Ok(Underlay { ifindex: l.index, name: l.name, mtu: l.mtu, is_veth: l.is_veth, mac })
}

/// Wakes when a link, IPv4 route or neighbour changes in this namespace: the next hops the
/// datapath caches must follow them within milliseconds, not at the next repair pass.
pub struct Changes {
    rx: futures::channel::mpsc::UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
}

impl Changes {
    /// Subscribe in the calling thread's namespace. Needs a tokio runtime.
    pub fn subscribe() -> Result<Self> {
        use netlink_sys::AsyncSocket as _;
        use rtnetlink::constants::{RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
        let (mut conn, _handle, rx) = rtnetlink::new_connection().context("opening a netlink socket")?;
        let groups = netlink_sys::SocketAddr::new(0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE);
        conn.socket_mut().socket_mut().bind(&groups).context("subscribing to link, route and neighbour changes")?;
        tokio::spawn(conn);
        Ok(Self { rx })
    }

    /// Waits for a change, then takes the burst that came with it.
    pub async fn next(&mut self) -> Result<()> {
        use futures::StreamExt as _;
        self.rx.next().await.ok_or_else(|| anyhow!("netlink change stream ended"))?;
        while self.rx.try_recv().is_ok() {}
        Ok(())
    }
}
