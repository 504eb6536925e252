//! docker_gwbridge on this node (`[gwbridge]`): the bridge, one interface on it in each local
//! container's sandbox (an address of the subnet allocated here, the sandbox's default route via
//! the bridge), and the node's nftables table (masquerade to the outside; nothing from outside
//! to the containers but replies). The ICC block is the datapath's: `ov_from_gwbridge` on the
//! host end of each interface, attached before it comes up.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::Ipv4Addr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context as _, Result};
use overlay_common::{maps::SNAT_PORT_MIN, vxlan::default_mac};
use serde::{Deserialize, Serialize};

use crate::{
    netlink::Netlink,
    netns,
    plumb::{create_pair, name_hash},
    state::Gwbridge,
};

/// Host ends of gwbridge interfaces: this prefix and 8 hex digits of the sandbox's path.
pub const PORT_PREFIX: &str = "ovg";
const PEER_PREFIX: &str = "ovh";
/// The node's nftables table for the gwbridge (`overlay down` removes it).
pub const NFT_TABLE: &str = "overlay_gwbridge";

pub fn port_name(netns: &Path) -> String {
    let h = name_hash(&String::from_utf8_lossy(netns.as_os_str().as_bytes()));
    format!("{PORT_PREFIX}{h:08x}")
}

pub fn is_port_name(name: &str) -> bool {
    name.len() == PORT_PREFIX.len() + 8
        && name.starts_with(PORT_PREFIX)
        && name[PORT_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bridge as this node has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Created by the agent (removed with the gwbridge), or adopted (left in place).
    pub created: bool,
}

/// One sandbox's interface on the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub ifname: String,
    pub mtu: u32,
    pub host_veth: String,
    pub host_ifindex: u32,
}

/// Make the bridge exist with the gateway address, up. A link of that name that is not a bridge
/// is refused (never reused as one).
pub async fn ensure_bridge(nl: &Netlink, g: &Gwbridge, mtu: u32) -> Result<Bridge> {
    let mut created = false;
    let link = match nl.link(&g.name).await? {
        Some(l) => l,
        None => {
            // A subnet the node already routes elsewhere (its own LAN, another bridge) would be
            // taken over by the bridge: refused, nothing created (a bad config never takes a
            // node off its network).
            for r in nl.routes_v4().await? {
                let theirs = crate::state::Subnet { addr: r.dst, prefix: r.prefix };
                if r.prefix > 0 && theirs.overlaps(g.subnet) {
                    bail!(
                        "subnet {} overlaps the route to {}/{} this node already has; choose another \
                         [gwbridge] subnet",
                        g.subnet,
                        r.dst,
                        r.prefix
                    );
                }
            }
            nl.create_bridge(&g.name, &default_mac(g.gateway.octets())).await?;
            created = true;
            nl.link(&g.name).await?.ok_or_else(|| anyhow!("bridge {} vanished", g.name))?
        }
    };
    if !link.is_bridge {
        bail!("{} exists and is not a bridge", g.name);
    }
    if created && link.mtu != mtu {
        nl.set_mtu(link.index, mtu).await?;
    }
    nl.ensure_ipv4(link.index, g.gateway, g.subnet.prefix).await?;
    if !link.up {
        nl.set_up(link.index).await?;
    }
    // Containers reach the outside through the node: it must route. No IPv6 on the bridge.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", g.name), "1");
    let mac: [u8; 6] = link.mac.as_slice().try_into().map_err(|_| anyhow!("bridge {} has no MAC", g.name))?;
    Ok(Bridge { name: g.name.clone(), ifindex: link.index, mac, created })
}

/// Addresses for `sandboxes`: each keeps the one it has (`have`) while it is still assignable;
/// the others get the lowest free ones. `None` when the subnet is full (validation prevents it).
pub fn allocate(
    g: &Gwbridge,
    sandboxes: &BTreeSet<PathBuf>,
    have: &BTreeMap<PathBuf, Ipv4Addr>,
) -> BTreeMap<PathBuf, Option<Ipv4Addr>> {
    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for s in sandboxes {
        if let Some(ip) = have.get(s).filter(|ip| g.assignable(**ip) && !used.contains(ip)) {
            used.insert(*ip);
            out.insert(s.clone(), Some(*ip));
        }
    }
    let mut next = u32::from(g.subnet.addr);
    for s in sandboxes {
        if out.contains_key(s) {
            continue;
        }
        let ip = loop {
            next = next.wrapping_add(1);
            let ip = Ipv4Addr::from(next);
            if !g.subnet.contains(ip) {
                break None;
            }
            if g.assignable(ip) && !used.contains(&ip) {
                break Some(ip);
            }
        };
        if let Some(ip) = ip {
            used.insert(ip);
        }
        out.insert(s.clone(), ip);
    }
    out
}

/// The address of the subnet the sandbox's gwbridge interface already has, if any.
pub async fn existing_address(netns: &Path, g: &Gwbridge) -> Option<Ipv4Addr> {
    let sandbox = Netlink::connect_in(netns).ok()?;
    let link = sandbox.link(&g.ifname).await.ok()??;
    let addrs = sandbox.ipv4_addresses(link.index).await.ok()?;
    addrs.into_iter().find(|(ip, prefix)| *prefix == g.subnet.prefix && g.assignable(*ip)).map(|(ip, _)| ip)
}

/// Make the sandbox's interface exist and match (address, MAC, MTU, default route), its host end
/// a port of the bridge, left down until the program is attached.
pub async fn plumb_port(
    node: &Netlink,
    bridge: &Bridge,
    g: &Gwbridge,
    netns: &Path,
    ip: Ipv4Addr,
    mtu: u32,
) -> Result<Port> {
    if !netns::is_netns(netns)? {
        bail!("{} is not a network namespace", netns.display());
    }
    let host = port_name(netns);
    let sandbox = Netlink::connect_in(netns)?;
    let healthy = node.link(&host).await?.is_some() && sandbox.link(&g.ifname).await?.is_some();
    if !healthy {
        let tmp = format!("{PEER_PREFIX}{}", &host[PORT_PREFIX.len()..]);
        create_pair(node, &sandbox, &host, &tmp, netns, &g.ifname).await?;
    }
    // Docker's convention: the MAC is 02:42 and the address.
    let mac = default_mac(ip.octets());
    let inner = sandbox.link(&g.ifname).await?.ok_or_else(|| anyhow!("{} vanished", g.ifname))?;
    if inner.mac != mac {
        sandbox.set_mac(inner.index, &mac).await?;
    }
    if inner.mtu != mtu {
        sandbox.set_mtu(inner.index, mtu).await?;
    }
    sandbox.set_only_ipv4(inner.index, ip, g.subnet.prefix).await?;
    sandbox.set_up(inner.index).await?;
    // The overlay subnets keep their own (more specific) routes; the rest leaves here.
    sandbox.default_route(g.gateway, inner.index).await?;
    let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", g.ifname);
    let _ = netns::run_in(netns, || std::fs::write(&path, "1").map_err(Into::into));
    let link = node.link(&host).await?.ok_or_else(|| anyhow!("{host} vanished"))?;
    if link.mtu != mtu {
        node.set_mtu(link.index, mtu).await?;
    }
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
    if link.master != Some(bridge.ifindex) {
        node.set_master(link.index, bridge.ifindex).await?;
    }
    Ok(Port { ip, mac, ifname: g.ifname.clone(), mtu, host_veth: host, host_ifindex: link.index })
}

/// The node's nftables table for `g`, replaced in one transaction: masquerade of what the
/// containers send beyond the node that the datapath left to the kernel (ICMP, and anything
/// routed out of another interface than the underlay; TCP and UDP out of the underlay are
/// masqueraded in eBPF, nat.rs), if asked; and no new connection from outside into them
/// (Docker's FORWARD rules; published ports reach them through the datapath, before netfilter).
pub fn nft_rules(g: &Gwbridge) -> String {
    let (name, subnet) = (&g.name, g.subnet);
    // Ports stay below the datapath's own masquerade range: a kernel-masqueraded flow's replies
    // must never look like an eBPF-masqueraded flow's.
    let (lo, hi) = (1024, SNAT_PORT_MIN - 1);
    let masquerade = if g.masquerade {
        format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             meta l4proto {{ tcp, udp }} ip saddr {subnet} oifname != \"{name}\" masquerade to :{lo}-{hi}\n    \
             ip saddr {subnet} oifname != \"{name}\" masquerade\n  }}\n"
        )
    } else {
        String::new()
    };
    format!(
        "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n{masquerade}  \
         chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
         oifname \"{name}\" ct state established,related accept\n    \
         oifname \"{name}\" iifname != \"{name}\" counter drop\n  }}\n}}\n"
    )
}

/// Apply `rules` (from `nft_rules`) with the nft tool.
pub fn nft_apply(rules: &str) -> Result<()> {
    nft(&["-f", "-"], Some(rules))
}

/// Remove the table (absent: nothing to do).
pub fn nft_remove() -> Result<()> {
    nft(&["-f", "-"], Some(&format!("table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n")))
}

/// Packets the table's forward chain dropped (new connections from outside into the bridge):
/// netfilter's drops, shown beside the datapath's. `None`: no table.
pub fn nft_inbound_dropped() -> Result<Option<u64>> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", NFT_TABLE])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| anyhow!("running nft: {e}"))?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading nft's JSON")?;
    let packets = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .filter(|expr| expr.iter().any(|e| e.get("drop").is_some()))
        .flat_map(|expr| expr.iter().filter_map(|e| e["counter"]["packets"].as_u64()))
        .sum();
    Ok(Some(packets))
}

fn nft(args: &[&str], input: Option<&str>) -> Result<()> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("running nft: {e} (the gwbridge's masquerade needs nftables: apt install nftables)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).context("writing to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!("nft refused the gwbridge rules: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Subnet;

    fn g(subnet: &str) -> Gwbridge {
        let (a, p) = subnet.split_once('/').unwrap();
        let subnet = Subnet { addr: a.parse().unwrap(), prefix: p.parse().unwrap() };
        Gwbridge {
            name: "docker_gwbridge".into(),
            subnet,
            gateway: subnet.first_host().unwrap(),
            ifname: "eth1".into(),
            icc: false,
            masquerade: true,
        }
    }

    #[test]
    fn addresses_stay_with_their_sandbox_and_freed_ones_are_reused() {
        let g = g("172.18.0.0/16");
        let s = |n: &str| PathBuf::from(format!("/run/netns/{n}"));
        let all: BTreeSet<PathBuf> = [s("a"), s("b"), s("c")].into();
        let first = allocate(&g, &all, &BTreeMap::new());
        let ip = |m: &BTreeMap<PathBuf, Option<Ipv4Addr>>, n| m[&s(n)].unwrap().to_string();
        assert_eq!(
            (ip(&first, "a"), ip(&first, "b"), ip(&first, "c")),
            ("172.18.0.2".into(), "172.18.0.3".into(), "172.18.0.4".into())
        );
        // "a" leaves, "d" arrives: b and c keep theirs, d takes the freed lowest one.
        let have: BTreeMap<PathBuf, Ipv4Addr> = first.iter().map(|(k, v)| (k.clone(), v.unwrap())).collect();
        let now: BTreeSet<PathBuf> = [s("b"), s("c"), s("d")].into();
        let second = allocate(&g, &now, &have);
        assert_eq!(
            (ip(&second, "b"), ip(&second, "c"), ip(&second, "d")),
            ("172.18.0.3".into(), "172.18.0.4".into(), "172.18.0.2".into())
        );
    }

    #[test]
    fn a_full_subnet_gives_none_and_a_changed_subnet_reallocates() {
        let small = g("10.9.0.0/30"); // .1 gateway, .2 the only host address
        let s = |n: &str| PathBuf::from(format!("/run/netns/{n}"));
        let out = allocate(&small, &[s("a"), s("b")].into(), &BTreeMap::new());
        assert_eq!(out[&s("a")], Some("10.9.0.2".parse().unwrap()));
        assert_eq!(out[&s("b")], None);
        let have = [(s("a"), "172.18.0.9".parse().unwrap())].into();
        assert_eq!(allocate(&small, &[s("a")].into(), &have)[&s("a")], Some("10.9.0.2".parse().unwrap()));
    }

    #[test]
    fn the_rules_replace_the_table_and_masquerade_only_when_asked() {
        let mut g = g("172.18.0.0/16");
        let r = nft_rules(&g);
        assert!(r.starts_with("table ip overlay_gwbridge {}\ndelete table ip overlay_gwbridge\n"));
        assert!(r.contains("ip saddr 172.18.0.0/16 oifname != \"docker_gwbridge\" masquerade to :1024-60999"));
        assert!(r.contains("oifname \"docker_gwbridge\" iifname != \"docker_gwbridge\" counter drop"));
        g.masquerade = false;
        assert!(!nft_rules(&g).contains("masquerade"));
    }

    #[test]
    fn port_names_are_ours_and_stable() {
        let n = port_name(Path::new("/run/netns/web1"));
        assert!(is_port_name(&n) && n.len() <= 15);
        assert_eq!(n, port_name(Path::new("/run/netns/web1")));
        assert!(!crate::plumb::is_host_veth_name(&n));
    }
}
