//! Plumbing of a local endpoint: a veth pair whose container end lives in the endpoint's sandbox
//! (name, MAC, MTU, one address, up) and whose host end stays in the node's namespace for the
//! container-side program. Each step is idempotent, so a restarted agent adopts what exists.
//! The host end is left down: the agent attaches the program first, then calls `activate`, so no
//! container packet ever reaches the node unfiltered.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    netlink::{Link, Netlink},
    netns,
};

/// Prefix of every host-side veth the agent creates; `overlay down` removes them all.
pub const HOST_PREFIX: &str = "ov";
const PEER_PREFIX: &str = "ovp";

/// Everything plumbing needs to know about one endpoint, and all the record keeps of it: two
/// specs are equal exactly when nothing has to be redone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethSpec {
    /// The sandbox (a network namespace file).
    pub netns: PathBuf,
    /// Interface name inside the sandbox.
    pub ifname: String,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
    /// Name of the host end, derived from the endpoint's name.
    pub host: String,
    /// On the ingress network: its gateway. Replies from this address to routing-mesh clients
    /// (outside addresses) must leave through this interface whatever the container's default
    /// route is (docker_gwbridge's, in Docker): a source rule sends them to `MESH_TABLE`.
    #[serde(default)]
    pub mesh_gateway: Option<Ipv4Addr>,
    /// (IP protocol, port) of the published ports this endpoint serves: replies from a socket
    /// bound to no address (UDP servers on 0.0.0.0) carry no source address when they are
    /// routed, so a rule on their source port sends them to `MESH_TABLE` too.
    #[serde(default)]
    pub mesh_ports: Vec<(u8, u16)>,
}

/// The container's routing table for replies from its ingress-network address.
pub const MESH_TABLE: u32 = 4096;

/// Where an endpoint was plumbed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plumbed {
    pub host_veth: String,
    pub host_ifindex: u32,
}

pub(crate) fn name_hash(name: &str) -> u32 {
    // FNV-1a: stable across runs and versions (the name must be found again after a restart).
    name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

pub fn host_veth_name(endpoint: &str) -> String {
    format!("{HOST_PREFIX}{:08x}", name_hash(endpoint))
}

/// The peer's name while it is still in the node's namespace, before it moves into the sandbox.
fn peer_tmp_name(host: &str) -> String {
    format!("{PEER_PREFIX}{}", &host[HOST_PREFIX.len()..])
}

pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 8
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Make the endpoint's veth pair exist and match `spec`; the host end is configured but down.
pub async fn plumb(node: &Netlink, spec: &VethSpec) -> Result<Plumbed> {
    if !netns::is_netns(&spec.netns)? {
        bail!("{} is not a network namespace", spec.netns.display());
    }
    let sandbox = Netlink::connect_in(&spec.netns)?;
    let healthy = node.link(&spec.host).await?.is_some() && sandbox.link(&spec.ifname).await?.is_some();
    if !healthy {
        create_pair(node, &sandbox, &spec.host, &peer_tmp_name(&spec.host), &spec.netns, &spec.ifname).await?;
    }
    configure_sandbox_end(&sandbox, spec).await?;
    let host = configure_host_end(node, spec).await?;
    Ok(Plumbed { host_veth: spec.host.clone(), host_ifindex: host.index })
}

/// Bring the host end up: only once the container-side program is attached to it.
pub async fn activate(node: &Netlink, p: &Plumbed) -> Result<()> {
    node.set_up(p.host_ifindex).await
}

/// A fresh pair `host` / `tmp`: any half of an old one goes first, then the peer moves into the
/// sandbox `netns` under the name `ifname`. The host end is left down.
pub(crate) async fn create_pair(
    node: &Netlink,
    sandbox: &Netlink,
    host: &str,
    tmp: &str,
    netns: &Path,
    ifname: &str,
) -> Result<()> {
    node.delete_link_named(host).await?;
    node.delete_link_named(tmp).await?;
    if sandbox.link(ifname).await?.is_some() {
        bail!("{} already has an interface named {ifname} that the agent did not create", netns.display());
    }
    node.create_veth(host, tmp).await?;
    // The host end must not carry traffic before the program is attached.
    let link = node.link(host).await?.ok_or_else(|| anyhow!("veth {host} vanished"))?;
    node.set_down(link.index).await?;
    enable_gro(tmp)?;
    let peer = node.link(tmp).await?.ok_or_else(|| anyhow!("veth peer {tmp} vanished"))?;
    node.move_to_netns(peer.index, netns).await?;
    let moved = sandbox.link(tmp).await?.ok_or_else(|| anyhow!("{tmp} did not arrive in the sandbox"))?;
    sandbox.rename(moved.index, ifname).await
}

/// Container end: MAC, MTU, the one address, up; only what differs is changed.
async fn configure_sandbox_end(sandbox: &Netlink, spec: &VethSpec) -> Result<()> {
    let inner = sandbox.link(&spec.ifname).await?.ok_or_else(|| anyhow!("{} vanished", spec.ifname))?;
    if inner.mac != spec.mac {
        sandbox.set_mac(inner.index, &spec.mac).await?;
    }
    if inner.mtu != spec.mtu {
        sandbox.set_mtu(inner.index, spec.mtu).await?;
    }
    sandbox.set_only_ipv4(inner.index, spec.ip, spec.prefix).await?;
    sandbox.set_up(inner.index).await?;
    if let Some(gw) = spec.mesh_gateway {
        sandbox.source_routes(spec.ip, spec.prefix, gw, inner.index, MESH_TABLE).await?;
        for &(proto, port) in &spec.mesh_ports {
            sandbox.port_rule(proto, port, MESH_TABLE).await?;
        }
    }
    if let Some(lo) = sandbox.link("lo").await? {
        if !lo.up {
            sandbox.set_up(lo.index).await?;
        }
    }
    // The overlay is IPv4: keep IPv6 (router solicitations, DAD) off the wire, as Docker does.
    let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.ifname);
    let _ = netns::run_in(&spec.netns, || std::fs::write(&path, "1").map_err(Into::into));
    Ok(())
}

/// Host end: MTU and no IPv6; its state (up or down) is left to `activate`.
async fn configure_host_end(node: &Netlink, spec: &VethSpec) -> Result<Link> {
    let host = node.link(&spec.host).await?.ok_or_else(|| anyhow!("{} vanished", spec.host))?;
    if host.mtu != spec.mtu {
        node.set_mtu(host.index, spec.mtu).await?;
    }
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.host), "1");
    Ok(host)
}

/// Remove an endpoint's veth pair (its sandbox loses the interface).
pub async fn unplumb(node: &Netlink, host_veth: &str) -> Result<()> {
    node.delete_link_named(host_veth).await.with_context(|| format!("removing {host_veth}"))
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
