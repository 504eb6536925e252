//! Services, as `docker service inspect` describes them: a name balanced over VIPs (`vip` mode)
//! or resolved to its tasks (`dnsrr`). Checked after endpoints, which their backends name.

use std::{
    cell::OnceCell,
    collections::{btree_map, hash_map::Entry, BTreeMap},
    net::Ipv4Addr,
};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    error::{entry_name, Problems},
    raw::{RawCluster, RawRefs},
    validate::endpoint_ip,
    values::parse_ipv4,
    Backend, Endpoint, EndpointMode, Network, Node, Protocol, PublishMode, Scheduler, Service, ServicePort, ServiceVip,
    DEFAULT_MAGLEV_SLOTS_PER_BACKEND, MAX_BACKENDS, MAX_MAGLEV_SLOTS, MAX_MAGLEV_SLOTS_PER_BACKEND, MAX_SERVICES,
    MIN_MAGLEV_SLOTS_PER_BACKEND,
};
use crate::datapath::maglev::table_size;

pub(super) fn slots_per_backend(c: Option<&RawCluster>, p: &mut Problems) -> u32 {
    let range = i64::from(MIN_MAGLEV_SLOTS_PER_BACKEND)..=i64::from(MAX_MAGLEV_SLOTS_PER_BACKEND);
    match c.and_then(|c| c.maglev_slots_per_backend) {
        None => DEFAULT_MAGLEV_SLOTS_PER_BACKEND,
        Some(v) if range.contains(&v) => v as u32,
        Some(v) => {
            p.add(
                "cluster",
                "maglev_slots_per_backend",
                format!("{v} is out of range ({MIN_MAGLEV_SLOTS_PER_BACKEND}..={MAX_MAGLEV_SLOTS_PER_BACKEND})"),
            );
            DEFAULT_MAGLEV_SLOTS_PER_BACKEND
        }
    }
}

/// A keyword field's value, or why not, listing the spellings allowed.
fn keyword<T: Copy>(v: &str, what: &str, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    all.iter().copied().find(|&t| name(t) == v).ok_or_else(|| {
        let allowed: Vec<&str> = all.iter().map(|&t| name(t)).collect();
        format!("`{v}` is not {what} ({})", allowed.join(", "))
    })
}

/// A published port as collisions are checked: (service, index in its `ports`, mode).
type Publication = (usize, usize, PublishMode);

pub(super) fn services(
    raw: &RawRefs<'_>,
    vxlan_port: u16,
    nodes: &BTreeMap<String, Node>,
    networks: &BTreeMap<String, Network>,
    endpoints: &FxHashMap<String, Endpoint>,
    p: &mut Problems,
) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    if raw.services.is_empty() {
        return services;
    }
    let node_of_addr: FxHashMap<Ipv4Addr, &str> = nodes.values().map(|n| (n.address, n.name.as_str())).collect();
    // Only for the hint on an unknown backend, so built on the first one only.
    let raw_endpoints: OnceCell<FxHashSet<&str>> = OnceCell::new();
    let mut names: FxHashSet<&str> = FxHashSet::default();
    // (network, VIP) -> (service, index in its `vips`). Keys borrow from the raw file.
    let mut vip_owner: FxHashMap<(&str, Ipv4Addr), (usize, usize)> = FxHashMap::default();
    // Endpoint -> the service it backs: in Docker a task belongs to one service.
    let mut backs: FxHashMap<&str, usize> = FxHashMap::default();
    let ingress = networks.values().find(|n| n.ingress).map(|n| n.name.as_str());
    // (protocol, published port) -> its publications so far.
    let mut published: FxHashMap<(Protocol, u16), Vec<Publication>> = FxHashMap::default();
    // Service publishing in host mode -> the nodes of its backends on the ingress network.
    let mut host_nodes: FxHashMap<usize, BTreeMap<&str, &str>> = FxHashMap::default();
    for (i, s) in raw.services.iter().enumerate() {
        // Built only when there is something to report.
        let entry = || entry_name("services", i, &s.name);
        let before = p.len();
        if s.name.is_empty() {
            p.add(entry(), "name", "must not be empty");
        } else if !names.insert(&s.name) {
            p.add(entry(), "name", "duplicate service name");
        }
        let mode = match s.endpoint_mode.as_deref() {
            None => Some(EndpointMode::Vip),
            Some(v) => keyword(v, "an endpoint mode", &EndpointMode::ALL, EndpointMode::as_str)
                .map_err(|e| p.add(entry(), "endpoint_mode", e))
                .ok(),
        };
        // Checked in dnsrr mode too, where it is unused: a misspelling is still a mistake.
        let scheduler = match s.scheduler.as_deref() {
            None => Some(Scheduler::Maglev),
            Some(v) => keyword(v, "a scheduler", &Scheduler::ALL, Scheduler::as_str)
                .map_err(|e| p.add(entry(), "scheduler", e))
                .ok(),
        };

        let mut vips = Vec::with_capacity(s.vips.len());
        if mode == Some(EndpointMode::Dnsrr) && !s.vips.is_empty() {
            p.add(entry(), "vips", "a dnsrr service has no VIP (Docker resolves its name to the tasks)");
        } else {
            let mut on_network: FxHashMap<&str, usize> = FxHashMap::default();
            for (j, v) in s.vips.iter().enumerate() {
                let network = networks.get(&v.network);
                let mut second = false;
                if network.is_none() {
                    let known = if raw.networks.iter().any(|n| n.name == v.network) {
                        " (that network is invalid)"
                    } else {
                        ""
                    };
                    p.add(entry(), &format!("vips[{j}].network"), format!("unknown network \"{}\"{known}", v.network));
                } else if let Some(k) = on_network.insert(&v.network, j) {
                    second = true;
                    p.add(
                        entry(),
                        &format!("vips[{j}].network"),
                        format!(
                            "a second VIP on network \"{}\" (vips[{k}]); a service has one VIP a network",
                            v.network
                        ),
                    );
                }
                let ip = parse_ipv4(&v.ip).map_err(|e| p.add(entry(), &format!("vips[{j}].ip"), e)).ok();
                let (Some(ip), Some(net), false) = (ip, network, second) else { continue };
                // A VIP is answered like an endpoint (ARP, the MAC derived from it): the same
                // addresses are off limits.
                if let Err(why) = endpoint_ip(ip, net, &node_of_addr) {
                    p.add(entry(), &format!("vips[{j}].ip"), why);
                    continue;
                }
                match vip_owner.entry((v.network.as_str(), ip)) {
                    Entry::Occupied(o) => {
                        let other = &raw.services[o.get().0].name;
                        p.add(
                            entry(),
                            &format!("vips[{j}].ip"),
                            format!("{ip} is already the VIP of service \"{other}\" on network \"{}\"", net.name),
                        );
                    }
                    Entry::Vacant(slot) => {
                        slot.insert((i, j));
                        vips.push(ServiceVip { network: v.network.clone(), ip });
                    }
                }
            }
        }

        let mut ports = Vec::with_capacity(s.ports.len());
        let mut listed: FxHashMap<(&str, i64), usize> = FxHashMap::default();
        // This service's valid publications, checked against the others' once its backends are known.
        let mut publishes: Vec<(Protocol, u16, usize, PublishMode)> = Vec::new();
        let mut published_here: FxHashMap<(Protocol, u16), usize> = FxHashMap::default();
        for (j, port) in s.ports.iter().enumerate() {
            let protocol = keyword(&port.protocol, "a protocol", &Protocol::ALL, Protocol::as_str)
                .map_err(|e| p.add(entry(), &format!("ports[{j}].protocol"), e))
                .ok();
            let target = match u16::try_from(port.target) {
                Ok(t) if t != 0 => Some(t),
                _ => {
                    p.add(entry(), &format!("ports[{j}].target"), format!("{} is not a port (1..=65535)", port.target));
                    None
                }
            };
            let (published_port, publish_mode) = publication(raw, i, j, mode, protocol, ingress, vxlan_port, p);
            let (Some(protocol), Some(target), Some(publish_mode)) = (protocol, target, publish_mode) else { continue };
            if let Some(k) = listed.insert((&port.protocol, port.target), j) {
                p.add(entry(), &format!("ports[{j}]"), format!("{protocol}/{target} is already listed (ports[{k}])"));
                continue;
            }
            if let Some(pp) = published_port {
                // Docker refuses this whatever the modes ("duplicate published ports provided").
                if let Some(k) = published_here.insert((protocol, pp), j) {
                    p.add(
                        entry(),
                        &format!("ports[{j}].published"),
                        format!("{protocol}/{pp} is already published (ports[{k}])"),
                    );
                } else {
                    publishes.push((protocol, pp, j, publish_mode));
                }
            }
            ports.push(ServicePort { protocol, target, published: published_port, publish_mode });
        }
        if mode == Some(EndpointMode::Vip) && !s.vips.is_empty() && s.ports.is_empty() {
            p.add(entry(), "ports", "a VIP balances the listed ports only: list at least one");
        }

        let publishing = s.ports.iter().any(|port| port.published.is_some());
        let backends = backends(raw, i, mode, ingress, publishing, endpoints, &raw_endpoints, &mut backs, p);
        if !publishes.is_empty() {
            // Node -> the first of the service's backends there on the ingress network.
            let mut on_node: BTreeMap<&str, &str> = BTreeMap::new();
            let mut second: Option<(&str, &str, &str)> = None;
            for ep in on_ingress(&backends, endpoints, ingress) {
                match on_node.entry(&ep.node) {
                    btree_map::Entry::Vacant(v) => {
                        v.insert(&ep.name);
                    }
                    btree_map::Entry::Occupied(o) => {
                        second = second.or(Some((&ep.node, *o.get(), &ep.name)));
                    }
                }
            }
            for &(protocol, pp, j, m) in &publishes {
                if let (PublishMode::Host, Some((node, a, b))) = (m, second) {
                    p.add(
                        entry(),
                        &format!("ports[{j}].publish_mode"),
                        format!(
                            "host mode takes {protocol}/{pp} on the node of each backend on the ingress network, \
                             but node \"{node}\" has two (\"{a}\", \"{b}\"): a node's port reaches one task"
                        ),
                    );
                }
                let earlier = published.entry((protocol, pp)).or_default();
                if let Some(why) = earlier.iter().find_map(|&(k, kj, km)| {
                    let other = &raw.services[k].name;
                    if km == PublishMode::Ingress || m == PublishMode::Ingress {
                        return Some(format!(
                            "{protocol}/{pp} is already published by service \"{other}\" (ports[{kj}]); \
                             a port published in ingress mode is taken on every node"
                        ));
                    }
                    let theirs = host_nodes.get(&k)?;
                    on_node.keys().find(|n| theirs.contains_key(*n)).map(|n| {
                        format!(
                            "{protocol}/{pp} is already published in host mode by service \"{other}\" (ports[{kj}]), \
                             which also has a backend on the ingress network on node \"{n}\""
                        )
                    })
                }) {
                    p.add(entry(), &format!("ports[{j}].published"), why);
                }
                earlier.push((i, j, m));
            }
            if publishes.iter().any(|&(.., m)| m == PublishMode::Host) {
                host_nodes.insert(i, on_node);
            }
        }
        if let (Some(endpoint_mode), Some(scheduler), true) = (mode, scheduler, p.len() == before) {
            let service = Service { name: s.name.clone(), endpoint_mode, scheduler, vips, ports, backends };
            services.insert(s.name.clone(), service);
        }
    }
    // An endpoint on a VIP would take the service's traffic. Checked from the endpoints' side,
    // one lookup each, so that no index of every endpoint's address is built for a few VIPs.
    if !vip_owner.is_empty() {
        for ep in endpoints.values() {
            if let Some(&(i, j)) = vip_owner.get(&(ep.network.as_str(), ep.ip)) {
                let s = raw.services[i];
                p.add(
                    entry_name("services", i, &s.name),
                    &format!("vips[{j}].ip"),
                    format!("{} is the address of endpoint \"{}\" on network \"{}\"", ep.ip, ep.name, ep.network),
                );
                services.remove(&s.name);
            }
        }
    }
    services
}

/// Port `j` of service `i`: its published port and publish mode, checked (`None`: a problem was
/// added). Without a published port the mode stays the default, `Ingress`, or is a problem.
#[allow(clippy::too_many_arguments)]
fn publication(
    raw: &RawRefs<'_>,
    i: usize,
    j: usize,
    mode: Option<EndpointMode>,
    protocol: Option<Protocol>,
    ingress: Option<&str>,
    vxlan_port: u16,
    p: &mut Problems,
) -> (Option<u16>, Option<PublishMode>) {
    let s = raw.services[i];
    let port = &s.ports[j];
    let entry = || entry_name("services", i, &s.name);
    let (published_field, mode_field) = (format!("ports[{j}].published"), format!("ports[{j}].publish_mode"));
    let publish_mode = match port.publish_mode.as_deref() {
        None => Some(PublishMode::Ingress),
        Some(v) => keyword(v, "a publish mode", &PublishMode::ALL, PublishMode::as_str)
            .map_err(|e| p.add(entry(), &mode_field, e))
            .ok(),
    };
    let Some(v) = port.published else {
        if port.publish_mode.is_some() && publish_mode.is_some() {
            p.add(entry(), &mode_field, "needs `published` (the port to publish on the nodes' addresses)");
        }
        return (None, publish_mode);
    };
    if mode == Some(EndpointMode::Dnsrr) && publish_mode == Some(PublishMode::Ingress) {
        p.add(
            entry(),
            &mode_field,
            "port published with ingress mode can't be used with dnsrr mode (as in Docker): \
             set `publish_mode = \"host\"`",
        );
    }
    let published = match u16::try_from(v) {
        Ok(t) if t != 0 => Some(t),
        _ => {
            p.add(entry(), &published_field, format!("{v} is not a port (1..=65535)"));
            None
        }
    };
    // Host mode goes over the ingress network too, until docker_gwbridge (a node's own bridge to
    // its local tasks) is built.
    if ingress.is_none() {
        let hint = match raw.networks.iter().find(|n| n.ingress == Some(true)) {
            Some(n) => format!(" (network \"{}\" has it, but is invalid)", n.name),
            None => String::new(),
        };
        p.add(
            entry(),
            &published_field,
            format!(
                "a published port needs a network with `ingress = true` (Docker's ingress network) to carry \
                 routing-mesh traffic between nodes{hint}"
            ),
        );
    }
    if let (Some(Protocol::Udp), Some(pp)) = (protocol, published) {
        if pp == vxlan_port {
            p.add(
                entry(),
                &published_field,
                format!(
                    "udp/{pp} is the cluster's VXLAN port (`vxlan_port`): the nodes' overlay traffic arrives on it"
                ),
            );
        }
    }
    (published, publish_mode)
}

/// A service's backends on the ingress network: where its published ports' traffic goes.
pub(super) fn on_ingress<'a: 'b, 'b>(
    backends: &'b [Backend],
    endpoints: &'a FxHashMap<String, Endpoint>,
    ingress: Option<&'b str>,
) -> impl Iterator<Item = &'a Endpoint> + 'b {
    backends.iter().filter_map(|b| endpoints.get(&b.endpoint)).filter(move |e| Some(e.network.as_str()) == ingress)
}

/// Service `i`'s backends, adding a problem for each that is not usable.
#[allow(clippy::too_many_arguments)]
fn backends<'a>(
    raw: &RawRefs<'a>,
    i: usize,
    mode: Option<EndpointMode>,
    ingress: Option<&str>,
    publishing: bool,
    endpoints: &FxHashMap<String, Endpoint>,
    raw_endpoints: &OnceCell<FxHashSet<&'a str>>,
    backs: &mut FxHashMap<&'a str, usize>,
    p: &mut Problems,
) -> Vec<Backend> {
    let s = raw.services[i];
    let entry = || entry_name("services", i, &s.name);
    // A backend receives traffic sent to a VIP on its own network only: the datapath does not
    // route between networks. Published traffic arrives on the ingress network.
    let vip_networks: Vec<&str> = s.vips.iter().map(|v| v.network.as_str()).collect();
    let mut out = Vec::with_capacity(s.backends.len());
    let mut listed: FxHashMap<&str, usize> = FxHashMap::default();
    for (j, b) in s.backends.iter().enumerate() {
        let field = format!("backends[{j}].endpoint");
        let before = p.len();
        let endpoint = endpoints.get(&b.endpoint);
        match endpoint {
            None => {
                let known = raw_endpoints.get_or_init(|| raw.endpoints.iter().map(|e| e.name.as_str()).collect());
                let hint = if known.contains(b.endpoint.as_str()) { " (that endpoint is invalid)" } else { "" };
                p.add(entry(), &field, format!("unknown endpoint \"{}\"{hint}", b.endpoint));
            }
            Some(_) if listed.contains_key(b.endpoint.as_str()) => {
                let k = listed[b.endpoint.as_str()];
                p.add(entry(), &field, format!("endpoint \"{}\" is already a backend (backends[{k}])", b.endpoint));
            }
            Some(ep) => {
                listed.insert(&b.endpoint, j);
                let on_ingress = Some(ep.network.as_str()) == ingress;
                let reached = vip_networks.contains(&ep.network.as_str()) || (on_ingress && publishing);
                if mode == Some(EndpointMode::Vip) && !vip_networks.is_empty() && !reached {
                    let on = vip_networks.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
                    let hint = if on_ingress {
                        " (the ingress network serves published ports: it publishes none)"
                    } else {
                        ""
                    };
                    p.add(
                        entry(),
                        &field,
                        format!(
                            "endpoint \"{}\" is on network \"{}\", but the service's VIPs are on {on}{hint}",
                            ep.name, ep.network
                        ),
                    );
                }
                if let Some(&other) = backs.get(b.endpoint.as_str()).filter(|&&k| k != i) {
                    p.add(
                        entry(),
                        &field,
                        format!(
                            "endpoint \"{}\" already backs service \"{}\" (a task belongs to one service)",
                            b.endpoint, raw.services[other].name
                        ),
                    );
                } else {
                    backs.insert(&b.endpoint, i);
                }
            }
        }
        let weight = match b.weight {
            None => 1,
            Some(w) if (0..=65535).contains(&w) => w as u32,
            Some(w) => {
                p.add(entry(), &format!("backends[{j}].weight"), format!("{w} is out of range (0..=65535; 0 drains)"));
                0
            }
        };
        if p.len() == before {
            out.push(Backend { endpoint: b.endpoint.clone(), weight });
        }
    }
    out
}

/// The datapath's service maps have fixed sizes: a state whose services cannot fit is refused
/// here, so `check` says so before `run` would. A published port is one more key, and a service
/// that publishes one more table, over `published_backends` (its backends on the ingress network).
pub(super) fn capacity(
    services: &BTreeMap<String, Service>,
    slots_per_backend: u32,
    published_backends: impl Fn(&Service) -> usize,
    p: &mut Problems,
) {
    let balanced = || services.values().filter(|s| s.endpoint_mode == EndpointMode::Vip);
    // Each publishing service with the number of its backends on the ingress network.
    let publishing: Vec<(&Service, usize)> = services
        .values()
        .filter(|s| s.ports.iter().any(|port| port.published.is_some()))
        .map(|s| (s, published_backends(s)))
        .collect();
    let published_ports: usize =
        publishing.iter().map(|(s, _)| s.ports.iter().filter(|port| port.published.is_some()).count()).sum();
    let keys: usize = balanced().map(|s| s.vips.len() * s.ports.len()).sum::<usize>() + published_ports;
    if keys > MAX_SERVICES as usize {
        p.add(
            "services",
            "ports",
            format!(
                "{keys} (VIP, port) pairs and published ports over all services; the datapath holds at most \
                 {MAX_SERVICES}"
            ),
        );
    }
    // A vip-mode service's backends are all in its `backends` already; a dnsrr one's published
    // ports add theirs.
    let backends: usize = balanced().map(|s| s.backends.len()).sum::<usize>()
        + publishing.iter().filter(|(s, _)| s.endpoint_mode == EndpointMode::Dnsrr).map(|&(_, n)| n).sum::<usize>();
    if backends > MAX_BACKENDS as usize {
        p.add(
            "services",
            "backends",
            format!(
                "{backends} backends over all vip-mode services and published ports; the datapath holds at most \
                 {MAX_BACKENDS}"
            ),
        );
    }
    // Every table side by side, plus room to write the largest beside the one it replaces.
    let vip_tables = balanced().filter(|s| !s.vips.is_empty()).map(|s| s.backends.len());
    let tables = vip_tables.chain(publishing.iter().map(|&(_, n)| n));
    let (mut total, mut largest, mut backend_total, mut backend_largest) = (0u64, 0u64, 0u64, 0u64);
    for backends in tables {
        let slots = table_slots(backends, slots_per_backend);
        total += slots;
        largest = largest.max(slots);
        let n = backends.max(1) as u64;
        backend_total += n;
        backend_largest = backend_largest.max(n);
    }
    let needed = total + largest;
    if needed > u64::from(MAX_MAGLEV_SLOTS) {
        // Sizes are backends times slots a backend, rounded up to a prime: about this many fit.
        let fits = (u64::from(MAX_MAGLEV_SLOTS) / (backend_total + backend_largest))
            .min(u64::from(slots_per_backend).saturating_sub(1));
        let advice = if fits >= u64::from(MIN_MAGLEV_SLOTS_PER_BACKEND) {
            format!("lower maglev_slots_per_backend to about {fits} or less")
        } else {
            format!("even {MIN_MAGLEV_SLOTS_PER_BACKEND} would not fit: balance fewer backends")
        };
        p.add(
            "cluster",
            "maglev_slots_per_backend",
            format!(
                "the services' Maglev tables need {needed} slots at {slots_per_backend} a backend (every table, \
                 plus room to rebuild the largest); the datapath holds at most {MAX_MAGLEV_SLOTS}: {advice}"
            ),
        );
    }
}

/// A service's table size. Past the datapath's limit the product is enough to refuse, and
/// `table_size` (a prime search, returning u32) is not asked.
fn table_slots(backends: usize, slots_per_backend: u32) -> u64 {
    let at_least = backends.max(1).next_power_of_two() as u64 * u64::from(slots_per_backend.max(1));
    if at_least > u64::from(MAX_MAGLEV_SLOTS) {
        at_least
    } else {
        u64::from(table_size(backends, slots_per_backend))
    }
}
