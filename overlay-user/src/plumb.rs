//! Plumbing of local endpoints with rtnetlink: a veth pair per endpoint, the container end
//! moved into its sandbox and configured (name, MAC, MTU, address, up), the host end left in
//! the node's namespace for the container-side program. Every step is idempotent so a
//! restarted agent adopts what exists.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{anyhow, bail, Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoKind, LinkAttribute, LinkFlag, LinkInfo, LinkMessage},
};
use rtnetlink::Handle;

use crate::{netns, state::Endpoint};

/// Prefix of every host-side veth the agent creates; `overlay down` removes them all.
pub const HOST_PREFIX: &str = "ov";
const PEER_PREFIX: &str = "ovp";

fn name_hash(name: &str) -> u32 {
    // FNV-1a: stable across runs and versions (the name must be found again after a restart).
    name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

pub fn host_veth_name(endpoint: &str) -> String {
    format!("{HOST_PREFIX}{:08x}", name_hash(endpoint))
}

fn peer_tmp_name(endpoint: &str) -> String {
    format!("{PEER_PREFIX}{:08x}", name_hash(endpoint))
}

pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 8
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A netlink handle bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    pub handle: Handle,
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

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkMessage>> {
        self.handle.link().get().execute().try_collect().await.context("listing links")
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(e).context("deleting link"),
        }
    }
}

pub fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(n) => Some(*n),
        _ => None,
    })
}

fn link_mac(m: &LinkMessage) -> Option<Vec<u8>> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(n) => Some(n.clone()),
        _ => None,
    })
}

pub fn is_veth(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

/// The underlay interface: the one holding the node's address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Underlay {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    pub is_veth: bool,
}

pub async fn find_underlay(nl: &Netlink, address: Ipv4Addr) -> Result<Underlay> {
    let addrs: Vec<_> = nl.handle.address().get().execute().try_collect().await.context("listing addresses")?;
    let ifindex = addrs
        .iter()
        .find(|m| m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)))
        .map(|m| m.header.index)
        .ok_or_else(|| anyhow!("no interface in this network namespace holds the node address {address}"))?;
    let link = nl
        .links()
        .await?
        .into_iter()
        .find(|l| l.header.index == ifindex)
        .ok_or_else(|| anyhow!("interface {ifindex} vanished"))?;
    Ok(Underlay {
        ifindex,
        name: link_name(&link).unwrap_or_default().to_string(),
        mtu: link_mtu(&link).unwrap_or(1500),
        is_veth: is_veth(&link),
    })
}

/// Turn GRO on for a veth end. XDP_REDIRECT into a veth needs NAPI on the receiving end, which
/// GRO enables without attaching a program in the container.
fn enable_gro(ifname: &str) -> Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_SGRO: u32 = 0x2c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut val = EthtoolValue { cmd: ETHTOOL_SGRO, data: 1 };
    let mut ifr = Ifreq { name: [0; 16], data: &mut val, _pad: [0; 16] };
    ifr.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: a plain socket used only for this ioctl, closed right after; ifr outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            bail!("enabling GRO on {ifname}: {err}");
        }
    }
    Ok(())
}

/// What the agent needs to know of a plumbed endpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plumbed {
    pub host_veth: String,
    pub host_ifindex: u32,
}

/// Make the endpoint's veth pair exist and match the endpoint. Returns the host end.
pub async fn ensure_endpoint(node: &Netlink, ep: &Endpoint, prefix: u8, mtu: u32) -> Result<Plumbed> {
    let netns_path = ep.netns.as_deref().ok_or_else(|| anyhow!("endpoint {} has no netns", ep.name))?;
    let sandbox = Netlink::connect_in(netns_path)?;
    let host = host_veth_name(&ep.name);
    let tmp = peer_tmp_name(&ep.name);

    let existing = node.link_by_name(&host).await?;
    let healthy = match &existing {
        Some(_) => sandbox.link_by_name(&ep.ifname).await?.is_some(),
        None => false,
    };
    if !healthy {
        if let Some(l) = existing {
            node.delete_link(l.header.index).await?;
        }
        if let Some(l) = node.link_by_name(&tmp).await? {
            node.delete_link(l.header.index).await?;
        }
        if sandbox.link_by_name(&ep.ifname).await?.is_some() {
            bail!("{} already has an interface named {} that the agent did not create", netns_path.display(), ep.ifname);
        }
        node.handle.link().add().veth(host.clone(), tmp.clone()).execute().await
            .with_context(|| format!("creating veth {host}"))?;
        enable_gro(&tmp)?;
        let peer = node.link_by_name(&tmp).await?.ok_or_else(|| anyhow!("veth peer {tmp} vanished"))?;
        let fd = File::open(netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
        node.handle.link().set(peer.header.index).setns_by_fd(fd.as_raw_fd()).execute().await
            .with_context(|| format!("moving {tmp} into {}", netns_path.display()))?;
        let moved = sandbox.link_by_name(&tmp).await?.ok_or_else(|| anyhow!("{tmp} did not arrive in the sandbox"))?;
        sandbox.handle.link().set(moved.header.index).name(ep.ifname.clone()).execute().await
            .with_context(|| format!("renaming {tmp} to {}", ep.ifname))?;
    }

    // Container end: MAC, MTU, the one address, up. Only what differs is changed.
    let inner = sandbox.link_by_name(&ep.ifname).await?.ok_or_else(|| anyhow!("{} vanished", ep.ifname))?;
    let idx = inner.header.index;
    if link_mac(&inner).as_deref() != Some(&ep.mac[..]) {
        sandbox.handle.link().set(idx).down().execute().await?;
        sandbox.handle.link().set(idx).address(ep.mac.to_vec()).execute().await.context("setting the endpoint MAC")?;
    }
    if link_mtu(&inner) != Some(mtu) {
        sandbox.handle.link().set(idx).mtu(mtu).execute().await.context("setting the endpoint MTU")?;
    }
    let addrs: Vec<_> = sandbox.handle.address().get().set_link_index_filter(idx).execute().try_collect().await?;
    let mut have = false;
    for a in addrs {
        let ip = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let Some(ip) = ip else { continue };
        if ip == ep.ip && a.header.prefix_len == prefix {
            have = true;
        } else {
            sandbox.handle.address().del(a).execute().await.context("removing an old endpoint address")?;
        }
    }
    if !have {
        sandbox.handle.address().add(idx, IpAddr::V4(ep.ip), prefix).execute().await
            .with_context(|| format!("adding {}/{prefix}", ep.ip))?;
    }
    sandbox.handle.link().set(idx).up().execute().await?;
    if let Some(lo) = sandbox.link_by_name("lo").await? {
        if !lo.header.flags.contains(&LinkFlag::Up) {
            sandbox.handle.link().set(lo.header.index).up().execute().await?;
        }
    }
    // The overlay is IPv4: keep IPv6 (router solicitations, DAD) off the wire, as Docker does.
    let ifname = ep.ifname.clone();
    let _ = netns::run_in(netns_path, || {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1").map_err(Into::into)
    });

    // Host end.
    let host_link = node.link_by_name(&host).await?.ok_or_else(|| anyhow!("{host} vanished"))?;
    if link_mtu(&host_link) != Some(mtu) {
        node.handle.link().set(host_link.header.index).mtu(mtu).execute().await?;
    }
    node.handle.link().set(host_link.header.index).up().execute().await?;
    let host_ifindex = host_link.header.index;
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
    Ok(Plumbed { host_veth: host, host_ifindex })
}

/// Remove an endpoint's veth pair (its sandbox loses the interface).
pub async fn remove_endpoint(node: &Netlink, host_veth: &str) -> Result<()> {
    if let Some(l) = node.link_by_name(host_veth).await? {
        node.delete_link(l.header.index).await?;
    }
    Ok(())
}
