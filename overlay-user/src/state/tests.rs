//! Validation as a user meets it: each rule with the entry and field it names.

use std::path::Path;

use super::*;

const GOOD: &str = r#"
[cluster]
vxlan_port = 4789

[[nodes]]
name = "node-a"
address = "192.168.50.11"

[[nodes]]
name = "node-b"
address = "192.168.50.12"

[[networks]]
name = "app-net"
vni = 4097
subnet = "10.0.9.0/24"
gateway = "10.0.9.1"
mtu = 1450

[[endpoints]]
name = "web.1"
network = "app-net"
node = "node-a"
ip = "10.0.9.3"
mac = "02:42:0a:00:09:03"
netns = "/var/run/netns/web1"
ifname = "eth0"

[[endpoints]]
name = "web.2"
network = "app-net"
node = "node-b"
ip = "10.0.9.4"
netns = "/var/run/netns/web2"
"#;

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("t.toml")) {
        Err(e) => e.problems().to_vec(),
        Ok(_) => panic!("expected an invalid state"),
    }
}

fn has(problems: &[Problem], entry: &str, field: &str, reason_part: &str) -> bool {
    problems.iter().any(|p| p.entry == entry && p.field == field && p.reason.contains(reason_part))
}

#[test]
fn good_state_parses_with_defaults() {
    let s = parse(GOOD, Path::new("t.toml")).unwrap();
    assert_eq!(s.vxlan_port, 4789);
    let w2 = &s.endpoints["web.2"];
    assert_eq!(w2.mac, [0x02, 0x42, 10, 0, 9, 4], "Docker's MAC rule");
    assert_eq!(w2.ifname, "eth0");
    assert_eq!(s.networks["app-net"].mtu, Some(1450));
    assert_eq!(s.local_endpoints("node-a").count(), 1);
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = parse(&GOOD.replace("mtu = 1450", "mtu = 1450\ncolour = \"red\""), Path::new("t.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("colour"), "{msg}");
}

#[test]
fn every_problem_is_named() {
    let bad = GOOD
        .replace("vni = 4097", "vni = 16777216")
        .replace("ip = \"10.0.9.4\"", "ip = \"10.0.8.4\"")
        .replace("address = \"192.168.50.12\"", "address = \"192.168.50.11\"");
    let p = problems(&bad);
    assert!(has(&p, "networks \"app-net\"", "vni", "out of range"), "{p:?}");
    assert!(has(&p, "nodes \"node-b\"", "address", "already the address of node \"node-a\""), "{p:?}");
    // The endpoints name the network as invalid rather than unknown.
    assert!(has(&p, "endpoints \"web.1\"", "network", "that network is invalid"), "{p:?}");
}

#[test]
fn endpoint_checks() {
    let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.8.4\""));
    assert!(has(&p, "endpoints \"web.2\"", "ip", "outside subnet 10.0.9.0/24"), "{p:?}");
    let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.9.3\""));
    assert!(has(&p, "endpoints \"web.2\"", "ip", "already used by endpoint \"web.1\""), "{p:?}");
    let p = problems(&GOOD.replace("node = \"node-b\"", "node = \"node-z\""));
    assert!(has(&p, "endpoints \"web.2\"", "node", "unknown node \"node-z\""), "{p:?}");
    let p = problems(&GOOD.replace("mac = \"02:42:0a:00:09:03\"", "mac = \"03:42:0a:00:09:03\""));
    assert!(has(&p, "endpoints \"web.1\"", "mac", "multicast"), "{p:?}");
    let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.9.1\""));
    assert!(has(&p, "endpoints \"web.2\"", "ip", "gateway"), "{p:?}");
    let p = problems(&GOOD.replace("ip = \"10.0.9.4\"", "ip = \"10.0.9.300\""));
    assert!(has(&p, "endpoints \"web.2\"", "ip", "not an IPv4 address"), "{p:?}");
    let p = problems(&GOOD.replace("name = \"web.2\"", "name = \"web.1\""));
    assert!(has(&p, "endpoints \"web.1\"", "name", "duplicate"), "{p:?}");
    let p = problems(&GOOD.replace("netns = \"/var/run/netns/web2\"", "netns = \"web2\""));
    assert!(has(&p, "endpoints \"web.2\"", "netns", "absolute"), "{p:?}");
}

#[test]
fn network_checks() {
    let p = problems(&GOOD.replace("10.0.9.0/24", "10.0.9.5/24"));
    assert!(has(&p, "networks \"app-net\"", "subnet", "host bits"), "{p:?}");
    let p = problems(&GOOD.replace("gateway = \"10.0.9.1\"", "gateway = \"10.0.10.1\""));
    assert!(has(&p, "networks \"app-net\"", "gateway", "not a host address"), "{p:?}");
    let p = problems(&GOOD.replace("vni = 4097", "vni = 0"));
    assert!(has(&p, "networks \"app-net\"", "vni", "out of range"), "{p:?}");
    let p = problems(&GOOD.replace("vxlan_port = 4789", "vxlan_port = 70000"));
    assert!(has(&p, "cluster", "vxlan_port", "not a UDP port"), "{p:?}");
    let dup = format!("{GOOD}\n[[networks]]\nname = \"db-net\"\nvni = 4097\nsubnet = \"10.0.10.0/24\"\n");
    let p = problems(&dup);
    assert!(has(&p, "networks \"db-net\"", "vni", "already used by network \"app-net\""), "{p:?}");
}

#[test]
fn incremental_parse_equals_full_parse() {
    let mut inc = IncrementalParser::default();
    let path = Path::new("t.toml");
    let a = inc.parse(GOOD, path).unwrap();
    assert_eq!(a, parse(GOOD, path).unwrap());
    // An edit, an addition, a comment and odd spacing: same result as a full parse.
    let edited = GOOD.replace("10.0.9.4", "10.0.9.40") + "\n# more\n[[endpoints]] # a comment\nname = \"web.3\"\nnetwork = \"app-net\"\nnode = \"node-b\"\nip = \"10.0.9.5\"\n";
    assert_eq!(inc.parse(&edited, path).unwrap(), parse(&edited, path).unwrap());
    // Errors are the full parser's, with the same problems.
    let bad = edited.replace("ip = \"10.0.9.5\"", "ip = \"10.0.7.5\"");
    assert_eq!(inc.parse(&bad, path).unwrap_err().problems(), parse(&bad, path).unwrap_err().problems());
    // Cases the fast path must not accept on its own.
    let twice = format!("{GOOD}\n[cluster]\nvxlan_port = 4790\n");
    assert!(inc.parse(&twice, path).is_err(), "a second [cluster] table is a TOML error");
    let top = format!("nodes = []\n{GOOD}");
    assert!(inc.parse(&top, path).is_err(), "top-level keys conflict with [[nodes]]");
    let syntax = GOOD.replace("vni = 4097", "vni = ");
    assert!(matches!(inc.parse(&syntax, path), Err(StateError::Syntax { .. })));
}

#[test]
fn node_checks_need_the_sandbox() {
    let s = parse(GOOD, Path::new("t.toml")).unwrap();
    let p = check_for_node(&s, "node-a").unwrap_err();
    assert!(has(&p, "endpoints \"web.1\"", "netns", "does not exist"), "{p:?}");
    let p = check_for_node(&s, "node-q").unwrap_err();
    assert!(has(&p, "nodes \"node-q\"", "name", "not in the state file"), "{p:?}");
}

#[test]
fn every_problem_of_one_network_is_reported() {
    let p = problems(&GOOD.replace("vni = 4097", "vni = 0").replace("10.0.9.0/24", "10.0.9.0/33"));
    assert!(has(&p, "networks \"app-net\"", "vni", "out of range"), "{p:?}");
    assert!(has(&p, "networks \"app-net\"", "subnet", "out of range"), "{p:?}");
}

#[test]
fn overlapping_subnets_are_refused() {
    let wider = format!("{GOOD}\n[[networks]]\nname = \"big\"\nvni = 5000\nsubnet = \"10.0.0.0/16\"\n");
    let p = problems(&wider);
    assert!(has(&p, "networks \"app-net\"", "subnet", "overlaps subnet 10.0.0.0/16 of network \"big\""), "{p:?}");
    let same = format!("{GOOD}\n[[networks]]\nname = \"twin\"\nvni = 5000\nsubnet = \"10.0.9.0/24\"\n");
    assert!(problems(&same).iter().any(|x| x.field == "subnet" && x.reason.contains("overlaps")));
    let apart = format!("{GOOD}\n[[networks]]\nname = \"db\"\nvni = 5000\nsubnet = \"10.0.10.0/24\"\n");
    assert!(parse(&apart, Path::new("t.toml")).is_ok());
}

#[test]
fn reserved_ranges_and_non_unicast_nodes_are_refused() {
    for s in ["127.0.0.0/24", "0.0.0.0/8", "224.1.0.0/16", "240.0.0.0/24"] {
        let p = problems(&GOOD.replace("10.0.9.0/24", s));
        assert!(has(&p, "networks \"app-net\"", "subnet", "range"), "{s}: {p:?}");
    }
    for a in ["224.0.0.5", "0.0.0.0", "255.255.255.255", "240.1.1.1", "127.0.0.1"] {
        let p = problems(&GOOD.replace("192.168.50.12", a));
        assert!(has(&p, "nodes \"node-b\"", "address", "not a unicast address"), "{a}: {p:?}");
    }
}

#[test]
fn an_endpoint_may_not_use_a_node_address() {
    let text = GOOD.replace("192.168.50.12", "10.0.9.4");
    let p = problems(&text);
    assert!(has(&p, "endpoints \"web.2\"", "ip", "underlay address of node \"node-b\""), "{p:?}");
}

#[test]
fn node_names_must_be_safe_file_names() {
    for bad in ["", "..", "a/b", "/"] {
        let p = problems(&GOOD.replace("name = \"node-b\"", &format!("name = \"{bad}\"")));
        assert!(p.iter().any(|x| x.field == "name" && x.entry.starts_with("nodes")), "{bad:?}: {p:?}");
    }
}

#[test]
fn an_empty_file_is_invalid() {
    for text in ["", "# nothing here\n", "[cluster]\nvxlan_port = 4789\n"] {
        let p = problems(text);
        assert!(has(&p, "nodes", "name", "no nodes"), "{text:?}: {p:?}");
    }
}

#[test]
fn map_capacity_is_checked_in_validation() {
    use std::fmt::Write as _;
    let n = overlay_common::maps::MAX_LOCAL_IFACES as usize + 1;
    let mut text = String::from(
        "[[nodes]]\nname = \"a\"\naddress = \"192.168.50.11\"\n[[networks]]\nname = \"n\"\nvni = 1\nsubnet = \"10.0.0.0/8\"\n",
    );
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(0x0a00_0100 + i as u32);
        let _ = write!(text, "[[endpoints]]\nname = \"e{i}\"\nnetwork = \"n\"\nnode = \"a\"\nip = \"{ip}\"\n");
    }
    let p = problems(&text);
    assert!(has(&p, "nodes \"a\"", "name", "a node's datapath holds at most"), "{:?}", &p[..p.len().min(3)]);
}

#[test]
fn oversized_files_are_refused_before_parsing() {
    let dir = std::env::temp_dir().join(format!("overlay-state-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("big.toml");
    let mut text = GOOD.to_string();
    text.push_str(&"# padding\n".repeat((MAX_FILE_BYTES as usize / 10) + 1));
    std::fs::write(&f, &text).unwrap();
    let err = load(&f).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, StateError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
}

// Services. `SERVICES` follows `GOOD`: a second network, three more endpoints, a vip-mode
// service and a dnsrr one.

const SERVICES: &str = r#"
[[networks]]
name = "db-net"
vni = 4098
subnet = "10.0.10.0/24"

[[endpoints]]
name = "db.1"
network = "db-net"
node = "node-a"
ip = "10.0.10.3"

[[endpoints]]
name = "db.2"
network = "db-net"
node = "node-b"
ip = "10.0.10.4"

[[endpoints]]
name = "api.1"
network = "app-net"
node = "node-a"
ip = "10.0.9.5"

[[services]]
name = "web"
vips = [ { network = "app-net", ip = "10.0.9.2" } ]
ports = [ { protocol = "tcp", target = 80 }, { protocol = "udp", target = 53 } ]
backends = [ { endpoint = "web.1", weight = 3 }, { endpoint = "web.2" } ]

[[services]]
name = "db"
endpoint_mode = "dnsrr"
backends = [ { endpoint = "db.1" }, { endpoint = "db.2", weight = 0 } ]
"#;

fn with_services() -> String {
    format!("{GOOD}{SERVICES}")
}

/// The file with `SERVICES`' web service replaced by `web`, written as one `[[services]]` table.
fn with_web(web: &str) -> String {
    let start = SERVICES.find("[[services]]\nname = \"web\"").unwrap();
    let end = SERVICES.find("[[services]]\nname = \"db\"").unwrap();
    format!("{GOOD}{}[[services]]\n{web}\n\n{}", &SERVICES[..start], &SERVICES[end..])
}

const WEB: &str = r#"name = "web"
vips = [ { network = "app-net", ip = "10.0.9.2" } ]
ports = [ { protocol = "tcp", target = 80 } ]
backends = [ { endpoint = "web.1" }, { endpoint = "web.2" } ]"#;

#[test]
fn services_parse_with_defaults() {
    let s = parse(&with_services(), Path::new("t.toml")).unwrap();
    assert_eq!(s.maglev_slots_per_backend, DEFAULT_MAGLEV_SLOTS_PER_BACKEND);
    let web = Service {
        name: "web".into(),
        endpoint_mode: EndpointMode::Vip,
        scheduler: Scheduler::Maglev,
        vips: vec![ServiceVip { network: "app-net".into(), ip: Ipv4Addr::new(10, 0, 9, 2) }],
        ports: vec![
            ServicePort { protocol: Protocol::Tcp, target: 80, published: None, publish_mode: PublishMode::Ingress },
            ServicePort { protocol: Protocol::Udp, target: 53, published: None, publish_mode: PublishMode::Ingress },
        ],
        backends: vec![
            Backend { endpoint: "web.1".into(), weight: 3 },
            Backend { endpoint: "web.2".into(), weight: 1 },
        ],
    };
    assert_eq!(s.services["web"], web);
    let db = Service {
        name: "db".into(),
        endpoint_mode: EndpointMode::Dnsrr,
        scheduler: Scheduler::Maglev,
        vips: vec![],
        ports: vec![],
        backends: vec![Backend { endpoint: "db.1".into(), weight: 1 }, Backend { endpoint: "db.2".into(), weight: 0 }],
    };
    assert_eq!(s.services["db"], db);
    assert_eq!(s.services.len(), 2);
    assert_eq!((Protocol::Tcp.number(), Protocol::Udp.number()), (6, 17));
    assert_eq!(Scheduler::Wrr.to_string(), "wrr");
    // Every scheduler spelling is accepted, and the slots setting within its range.
    for sched in Scheduler::ALL {
        let text = with_web(&format!("{WEB}\nscheduler = \"{sched}\""))
            .replace("vxlan_port = 4789", "vxlan_port = 4789\nmaglev_slots_per_backend = 100");
        let s = parse(&text, Path::new("t.toml")).unwrap();
        assert_eq!((s.services["web"].scheduler, s.maglev_slots_per_backend), (sched, 100));
    }
    assert!(parse(GOOD, Path::new("t.toml")).unwrap().services.is_empty());
}

#[test]
fn services_as_tables_equal_inline_tables() {
    let tables = with_web(
        "name = \"web\"\n\
         [[services.vips]]\nnetwork = \"app-net\"\nip = \"10.0.9.2\"\n\
         [[services.ports]]\nprotocol = \"tcp\"\ntarget = 80\n\
         [[services.backends]]\nendpoint = \"web.1\"\n\
         [[services.backends]]\nendpoint = \"web.2\"",
    );
    let path = Path::new("t.toml");
    assert_eq!(parse(&tables, path).unwrap(), parse(&with_web(WEB), path).unwrap());
}

#[test]
fn service_unknown_keys_are_rejected() {
    let err = parse(&with_web(&format!("{WEB}\nmode = \"vip\"")), Path::new("t.toml")).unwrap_err();
    assert!(err.to_string().contains("mode"), "{err}");
    let text = with_web(&WEB.replace("target = 80", "target = 80, host_port = 8080"));
    let err = parse(&text, Path::new("t.toml")).unwrap_err();
    assert!(err.to_string().contains("host_port"), "{err}");
}

#[test]
fn service_name_checks() {
    let p = problems(&with_web(&WEB.replace("name = \"web\"", "name = \"\"")));
    assert!(has(&p, "services[0]", "name", "must not be empty"), "{p:?}");
    let p = problems(&with_web(&WEB.replace("name = \"web\"", "name = \"db\"")));
    assert!(has(&p, "services \"db\"", "name", "duplicate service name"), "{p:?}");
}

#[test]
fn service_keywords_list_the_allowed_values() {
    let p = problems(&with_web(&format!("{WEB}\nendpoint_mode = \"VIP\"")));
    assert!(has(&p, "services \"web\"", "endpoint_mode", "`VIP` is not an endpoint mode (vip, dnsrr)"), "{p:?}");
    let p = problems(&with_web(&format!("{WEB}\nscheduler = \"roundrobin\"")));
    assert!(has(&p, "services \"web\"", "scheduler", "(maglev, sh, rr, wrr)"), "{p:?}");
    // A dnsrr service does not use its scheduler, but a misspelt one is still refused.
    let p =
        problems(&with_services().replace("endpoint_mode = \"dnsrr\"", "endpoint_mode = \"dnsrr\"\nscheduler = \"x\""));
    assert!(has(&p, "services \"db\"", "scheduler", "`x` is not a scheduler"), "{p:?}");
    let p = problems(&with_web(&WEB.replace("\"tcp\"", "\"sctp\"")));
    assert!(has(&p, "services \"web\"", "ports[0].protocol", "`sctp` is not a protocol (tcp, udp)"), "{p:?}");
}

#[test]
fn a_dnsrr_service_has_no_vip() {
    let p = problems(&with_web(&format!("{WEB}\nendpoint_mode = \"dnsrr\"")));
    assert!(has(&p, "services \"web\"", "vips", "a dnsrr service has no VIP"), "{p:?}");
    assert_eq!(p.len(), 1, "{p:?}");
    // Without VIPs, its backends may be on any network, and it needs no ports.
    let ok = with_services().replace("{ endpoint = \"db.1\" }", "{ endpoint = \"db.1\" }, { endpoint = \"api.1\" }");
    assert!(parse(&ok, Path::new("t.toml")).is_ok());
}

#[test]
fn vip_checks() {
    let vip = |net: &str, ip: &str| {
        with_web(
            &WEB.replace("network = \"app-net\", ip = \"10.0.9.2\"", &format!("network = \"{net}\", ip = \"{ip}\"")),
        )
    };
    let e = "services \"web\"";
    let p = problems(&vip("nope", "10.0.9.2"));
    assert!(has(&p, e, "vips[0].network", "unknown network \"nope\""), "{p:?}");
    let p = problems(&vip("app-net", "10.0.9.256"));
    assert!(has(&p, e, "vips[0].ip", "not an IPv4 address"), "{p:?}");
    let p = problems(&vip("app-net", "10.0.10.2"));
    assert!(has(&p, e, "vips[0].ip", "outside subnet 10.0.9.0/24 of network \"app-net\""), "{p:?}");
    for reserved in ["10.0.9.0", "10.0.9.255"] {
        let p = problems(&vip("app-net", reserved));
        assert!(has(&p, e, "vips[0].ip", "network or broadcast address"), "{reserved}: {p:?}");
    }
    let p = problems(&vip("app-net", "10.0.9.1"));
    assert!(has(&p, e, "vips[0].ip", "gateway of network \"app-net\""), "{p:?}");
    let p = problems(&vip("app-net", "10.0.9.5"));
    assert!(has(&p, e, "vips[0].ip", "10.0.9.5 is the address of endpoint \"api.1\" on network \"app-net\""), "{p:?}");
    let p = problems(&vip("app-net", "10.0.9.2").replace("192.168.50.12", "10.0.9.2"));
    assert!(has(&p, e, "vips[0].ip", "underlay address of node \"node-b\""), "{p:?}");
    // The network is named as invalid rather than unknown.
    let p = problems(&vip("app-net", "10.0.9.2").replace("vni = 4097", "vni = 0"));
    assert!(has(&p, e, "vips[0].network", "unknown network \"app-net\" (that network is invalid)"), "{p:?}");
    // One VIP a network.
    let two = WEB.replace(
        "{ network = \"app-net\", ip = \"10.0.9.2\" }",
        "{ network = \"app-net\", ip = \"10.0.9.2\" }, { network = \"app-net\", ip = \"10.0.9.6\" }",
    );
    let p = problems(&with_web(&two));
    assert!(has(&p, e, "vips[1].network", "a second VIP on network \"app-net\" (vips[0])"), "{p:?}");
    // Another service's VIP.
    let api = "\n[[services]]\nname = \"api\"\nvips = [ { network = \"app-net\", ip = \"10.0.9.2\" } ]\n\
               ports = [ { protocol = \"tcp\", target = 80 } ]\nbackends = [ { endpoint = \"api.1\" } ]\n";
    let p = problems(&(with_services() + api));
    assert!(
        has(
            &p,
            "services \"api\"",
            "vips[0].ip",
            "10.0.9.2 is already the VIP of service \"web\" on network \"app-net\""
        ),
        "{p:?}"
    );
    assert!(parse(&(with_services() + &api.replace("10.0.9.2", "10.0.9.7")), Path::new("t.toml")).is_ok());
}

#[test]
fn port_checks() {
    let e = "services \"web\"";
    for bad in ["0", "65536", "-80"] {
        let p = problems(&with_web(&WEB.replace("target = 80", &format!("target = {bad}"))));
        assert!(has(&p, e, "ports[0].target", &format!("{bad} is not a port (1..=65535)")), "{p:?}");
    }
    let dup = WEB.replace(
        "{ protocol = \"tcp\", target = 80 }",
        "{ protocol = \"tcp\", target = 80 }, { protocol = \"udp\", target = 80 }, { protocol = \"tcp\", target = 80 }",
    );
    let p = problems(&with_web(&dup));
    assert!(has(&p, e, "ports[2]", "tcp/80 is already listed (ports[0])"), "{p:?}");
    assert_eq!(p.len(), 1, "tcp/80 and udp/80 are different ports: {p:?}");
    let p = problems(&with_web(&WEB.replace("ports = [ { protocol = \"tcp\", target = 80 } ]", "")));
    assert!(has(&p, e, "ports", "a VIP balances the listed ports only: list at least one"), "{p:?}");
}

#[test]
fn backend_checks() {
    let e = "services \"web\"";
    let backends = |list: &str| {
        with_web(&WEB.replace(
            "backends = [ { endpoint = \"web.1\" }, { endpoint = \"web.2\" } ]",
            &format!("backends = [ {list} ]"),
        ))
    };
    let p = problems(&backends("{ endpoint = \"web.9\" }"));
    assert!(has(&p, e, "backends[0].endpoint", "unknown endpoint \"web.9\""), "{p:?}");
    let p = problems(&backends("{ endpoint = \"web.1\" }").replace("ip = \"10.0.9.3\"", "ip = \"10.0.8.3\""));
    assert!(has(&p, e, "backends[0].endpoint", "unknown endpoint \"web.1\" (that endpoint is invalid)"), "{p:?}");
    let p =
        problems(&backends("{ endpoint = \"web.1\" }, { endpoint = \"web.2\" }, { endpoint = \"web.1\", weight = 2 }"));
    assert!(has(&p, e, "backends[2].endpoint", "endpoint \"web.1\" is already a backend (backends[0])"), "{p:?}");
    for bad in ["-1", "65536"] {
        let p = problems(&backends(&format!("{{ endpoint = \"web.1\", weight = {bad} }}")));
        assert!(has(&p, e, "backends[0].weight", &format!("{bad} is out of range (0..=65535")), "{p:?}");
    }
    let p = problems(&backends("{ endpoint = \"web.1\" }, { endpoint = \"db.2\" }"));
    assert!(
        has(
            &p,
            e,
            "backends[1].endpoint",
            "endpoint \"db.2\" is on network \"db-net\", but the service's VIPs are on \"app-net\""
        ),
        "{p:?}"
    );
    // db.1 already backs the dnsrr service "db".
    let p = problems(&with_services().replace("{ endpoint = \"db.1\" }", "{ endpoint = \"web.1\" }"));
    assert!(
        has(
            &p,
            "services \"db\"",
            "backends[0].endpoint",
            "endpoint \"web.1\" already backs service \"web\" (a task belongs to one service)"
        ),
        "{p:?}"
    );
}

#[test]
fn maglev_slots_per_backend_is_range_checked() {
    for bad in ["99", "5001", "-1"] {
        let text = with_services()
            .replace("vxlan_port = 4789", &format!("vxlan_port = 4789\nmaglev_slots_per_backend = {bad}"));
        let p = problems(&text);
        assert!(has(&p, "cluster", "maglev_slots_per_backend", "out of range (100..=5000)"), "{bad}: {p:?}");
    }
}

#[test]
fn a_bad_service_makes_the_whole_state_invalid() {
    let path = Path::new("t.toml");
    let mut inc = IncrementalParser::default();
    inc.parse(&with_services(), path).unwrap();
    // Every problem of the service is reported; the good parts produce no state on their own.
    let bad = with_web(&WEB.replace("10.0.9.2", "10.0.10.2").replace("\"web.2\"", "\"web.9\""));
    let err = inc.parse(&bad, path).unwrap_err();
    let p = err.problems();
    assert!(has(p, "services \"web\"", "vips[0].ip", "outside subnet"), "{p:?}");
    assert!(has(p, "services \"web\"", "backends[1].endpoint", "unknown endpoint \"web.9\""), "{p:?}");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(parse(&bad, path).is_err());
}

#[test]
fn service_capacity_is_checked() {
    use super::{error::Problems, services::capacity};
    let service = |name: &str, backends: usize, vips: usize, ports: usize| Service {
        name: name.into(),
        endpoint_mode: EndpointMode::Vip,
        scheduler: Scheduler::Maglev,
        vips: (0..vips).map(|i| ServiceVip { network: format!("n{i}"), ip: Ipv4Addr::from(i as u32) }).collect(),
        ports: (0..ports)
            .map(|i| ServicePort {
                protocol: Protocol::Tcp,
                target: i as u16 + 1,
                published: None,
                publish_mode: PublishMode::Ingress,
            })
            .collect(),
        backends: (0..backends).map(|i| Backend { endpoint: format!("e{i}"), weight: 1 }).collect(),
    };
    // Every publishing service is given `published` backends on the ingress network.
    let check_published = |services: &[Service], slots: u32, published: usize| {
        let mut p = Problems::default();
        capacity(&services.iter().map(|s| (s.name.clone(), s.clone())).collect(), slots, |_| published, &mut p);
        p.0
    };
    let check = |services: &[Service], slots: u32| check_published(services, slots, 0);
    // One table of about 6M slots fits twice (itself and its replacement); two plus room do not.
    assert!(check(&[service("a", 4, 1, 1)], 1_500_000).is_empty());
    let p = check(&[service("a", 3, 1, 1), service("b", 4, 1, 1)], 1_500_000);
    assert!(has(&p, "cluster", "maglev_slots_per_backend", "need 18000"), "{p:?}");
    assert!(has(&p, "cluster", "maglev_slots_per_backend", "lower maglev_slots_per_backend to about"), "{p:?}");
    // Past the limit, table_size is not asked (it returns u32).
    let p = check(&[service("a", 4, 1, 1)], u32::MAX);
    assert!(has(&p, "cluster", "maglev_slots_per_backend", "at most 16777216"), "{p:?}");
    // A dnsrr service and one without a VIP have no table.
    let mut dns = service("d", 4, 0, 0);
    dns.endpoint_mode = EndpointMode::Dnsrr;
    assert!(check(&[dns, service("n", 4, 0, 1)], 5_000_000).is_empty());
    // (VIP, port) keys and backends.
    let p = check(&[service("a", 1, 257, 256)], 100);
    assert!(has(&p, "services", "ports", "65792 (VIP, port) pairs"), "{p:?}");
    let p = check(&[service("a", MAX_BACKENDS as usize + 1, 0, 0)], 100);
    assert!(has(&p, "services", "backends", &format!("{} backends", MAX_BACKENDS + 1)), "{p:?}");

    // A published port is one more key: 256 x 256 fits exactly, one published port more does not.
    let mut full = service("a", 1, 256, 256);
    assert!(check(&[full.clone()], 100).is_empty());
    full.ports[0].published = Some(8080);
    let p = check(&[full], 100);
    assert!(has(&p, "services", "ports", "65537 (VIP, port) pairs and published ports"), "{p:?}");
    // A publishing service has one more table, sized by its backends on the ingress network: the
    // one-table case above fits with an empty published table, not with one as large as its own.
    let mut publishing = service("a", 4, 1, 1);
    publishing.ports[0].published = Some(8080);
    assert!(check_published(&[publishing.clone()], 1_500_000, 0).is_empty());
    let p = check_published(&[publishing], 1_500_000, 4);
    assert!(has(&p, "cluster", "maglev_slots_per_backend", "need 18000"), "{p:?}");
    // A dnsrr service's published ports bring their backends on the ingress network into the
    // datapath; one that publishes nothing has none there.
    let mut dns = service("d", 1, 0, 1);
    dns.endpoint_mode = EndpointMode::Dnsrr;
    let over = MAX_BACKENDS as usize + 1;
    assert!(check_published(&[dns.clone()], 100, over).is_empty());
    dns.ports[0].published = Some(8080);
    dns.ports[0].publish_mode = PublishMode::Host;
    let p = check_published(&[dns], 100, over);
    assert!(has(&p, "services", "backends", &format!("{over} backends")), "{p:?}");
}

#[test]
fn incremental_parse_with_services_equals_full_parse() {
    let mut inc = IncrementalParser::default();
    let path = Path::new("t.toml");
    let text = with_services();
    assert_eq!(inc.parse(&text, path).unwrap(), parse(&text, path).unwrap());
    // One backend's weight: only its [[services]] table changes.
    let edited = text.replace("{ endpoint = \"web.1\", weight = 3 }", "{ endpoint = \"web.1\", weight = 0 }");
    let a = inc.parse(&edited, path).unwrap();
    assert_eq!(a, parse(&edited, path).unwrap());
    assert_eq!(a.services["web"].backends[0].weight, 0);
    // Multi-line arrays, sub-tables of a service, a comment after the header, a service between
    // endpoints: the split still falls on the top-level headers only.
    let spread = edited.replace(
        "backends = [ { endpoint = \"web.1\", weight = 0 }, { endpoint = \"web.2\" } ]",
        "backends = [\n  { endpoint = \"web.1\", weight = 0 },\n  # [[nodes]]\n  { endpoint = \"web.2\" },\n]",
    )
        + "\n[[services]] # api\nname = \"api\"\n[[services.vips]]\nnetwork = \"app-net\"\nip = \"10.0.9.7\"\n\
         [[services.ports]]\nprotocol = \"tcp\"\ntarget = 8080\n[[services.backends]]\nendpoint = \"api.1\"\n\
         \n[[endpoints]]\nname = \"api.2\"\nnetwork = \"app-net\"\nnode = \"node-b\"\nip = \"10.0.9.8\"\n";
    let a = inc.parse(&spread, path).unwrap();
    assert_eq!(a, parse(&spread, path).unwrap());
    let api_port =
        ServicePort { protocol: Protocol::Tcp, target: 8080, published: None, publish_mode: PublishMode::Ingress };
    assert_eq!(a.services["api"].ports, vec![api_port]);
    let reweighted = spread.replace("{ endpoint = \"web.2\" },", "{ endpoint = \"web.2\", weight = 5 },");
    let a = inc.parse(&reweighted, path).unwrap();
    assert_eq!(a, parse(&reweighted, path).unwrap());
    assert_eq!(a.services["web"].backends[1].weight, 5);
    // A service's problems are the full parser's.
    let bad = reweighted.replace("target = 8080", "target = 0");
    assert_eq!(inc.parse(&bad, path).unwrap_err().problems(), parse(&bad, path).unwrap_err().problems());
}

// The routing mesh. `INGRESS` adds Docker's ingress network and the web tasks' endpoints on it
// (`web.3i` shares node-a with `web.1i`).

const INGRESS: &str = r#"
[[networks]]
name = "ingress"
vni = 4096
subnet = "10.0.0.0/24"
ingress = true

[[endpoints]]
name = "web.1i"
network = "ingress"
node = "node-a"
ip = "10.0.0.3"

[[endpoints]]
name = "web.2i"
network = "ingress"
node = "node-b"
ip = "10.0.0.4"

[[endpoints]]
name = "web.3i"
network = "ingress"
node = "node-a"
ip = "10.0.0.5"
"#;

/// `with_web(web)` plus the ingress network.
fn with_ingress(web: &str) -> String {
    with_web(web) + INGRESS
}

/// `WEB` publishing `ports` and balancing over `web.1`, `web.2` and the listed `backends` too.
fn published_web(ports: &str, backends: &str) -> String {
    WEB.replace("ports = [ { protocol = \"tcp\", target = 80 } ]", &format!("ports = [ {ports} ]"))
        .replace("{ endpoint = \"web.2\" } ]", &format!("{{ endpoint = \"web.2\" }}{backends} ]"))
}

const MESH_PORTS: &str = "{ protocol = \"tcp\", target = 80, published = 8080 }, \
     { protocol = \"udp\", target = 53, published = 5353, publish_mode = \"ingress\" }, \
     { protocol = \"tcp\", target = 9100, published = 9100, publish_mode = \"host\" }";

/// A second service, `api`, publishing `ports` with `backends`.
fn api(ports: &str, backends: &str) -> String {
    format!("\n[[services]]\nname = \"api\"\nports = [ {ports} ]\nbackends = [ {backends} ]\n")
}

#[test]
fn published_ports_and_the_ingress_network_parse() {
    let web = published_web(MESH_PORTS, ", { endpoint = \"web.1i\" }, { endpoint = \"web.2i\" }");
    let text = with_ingress(&web);
    let path = Path::new("t.toml");
    let s = parse(&text, path).unwrap();
    let port = |protocol, target, published, publish_mode| ServicePort {
        protocol,
        target,
        published: Some(published),
        publish_mode,
    };
    assert_eq!(
        s.services["web"].ports,
        vec![
            port(Protocol::Tcp, 80, 8080, PublishMode::Ingress),
            port(Protocol::Udp, 53, 5353, PublishMode::Ingress),
            port(Protocol::Tcp, 9100, 9100, PublishMode::Host),
        ]
    );
    let backends: Vec<&str> = s.services["web"].backends.iter().map(|b| b.endpoint.as_str()).collect();
    assert_eq!(backends, ["web.1", "web.2", "web.1i", "web.2i"]);
    let ingress = &s.networks["ingress"];
    assert!(ingress.ingress);
    assert_eq!(ingress.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)), "Docker's default gateway");
    assert_eq!(s.ingress_network().map(|n| n.name.as_str()), Some("ingress"));
    assert!(!s.networks["app-net"].ingress);
    assert_eq!(s.networks["app-net"].gateway, Some(Ipv4Addr::new(10, 0, 9, 1)));
    assert_eq!(s.networks["db-net"].gateway, None, "only the ingress network gets a default gateway");
    assert_eq!(inc_parse(&text), s);
    assert_eq!(PublishMode::Host.to_string(), "host");
    assert_eq!(PublishMode::ALL.map(PublishMode::as_str), ["ingress", "host"]);

    // A gateway written in the file is kept; `ingress = false` is the default.
    let own = text.replace("subnet = \"10.0.0.0/24\"\n", "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.254\"\n");
    assert_eq!(parse(&own, path).unwrap().networks["ingress"].gateway, Some(Ipv4Addr::new(10, 0, 0, 254)));
    let off = with_services().replace("mtu = 1450", "mtu = 1450\ningress = false");
    let s = parse(&off, path).unwrap();
    assert!(!s.networks["app-net"].ingress && s.ingress_network().is_none());
}

fn inc_parse(text: &str) -> ClusterState {
    IncrementalParser::default().parse(text, Path::new("t.toml")).unwrap()
}

#[test]
fn a_published_service_needs_no_vip() {
    let text =
        with_ingress(WEB) + &api("{ protocol = \"tcp\", target = 80, published = 8081 }", "{ endpoint = \"web.3i\" }");
    let s = parse(&text, Path::new("t.toml")).unwrap();
    assert!(s.services["api"].vips.is_empty());
    assert_eq!(s.services["api"].ports[0].published, Some(8081));
    // A VIP still needs a port, published or not.
    let p = problems(&with_ingress(&WEB.replace("ports = [ { protocol = \"tcp\", target = 80 } ]", "")));
    assert!(has(&p, "services \"web\"", "ports", "a VIP balances the listed ports only"), "{p:?}");
}

#[test]
fn published_port_values_are_checked() {
    let e = "services \"web\"";
    for bad in ["0", "65536", "-1"] {
        let p = problems(&with_ingress(&published_web(
            &format!("{{ protocol = \"tcp\", target = 80, published = {bad} }}"),
            "",
        )));
        assert!(has(&p, e, "ports[0].published", &format!("{bad} is not a port (1..=65535)")), "{p:?}");
        assert_eq!(p.len(), 1, "{p:?}");
    }
    let p = problems(&with_ingress(&published_web(
        "{ protocol = \"tcp\", target = 80, published = 8080, publish_mode = \"Host\" }",
        "",
    )));
    assert!(has(&p, e, "ports[0].publish_mode", "`Host` is not a publish mode (ingress, host)"), "{p:?}");
    let p = problems(&with_ingress(&published_web("{ protocol = \"tcp\", target = 80, publish_mode = \"host\" }", "")));
    assert!(has(&p, e, "ports[0].publish_mode", "needs `published`"), "{p:?}");
    assert_eq!(p.len(), 1, "{p:?}");
    // The nodes' VXLAN port is not free to publish, over UDP.
    let p = problems(&with_ingress(&published_web("{ protocol = \"udp\", target = 53, published = 4789 }", "")));
    assert!(has(&p, e, "ports[0].published", "udp/4789 is the cluster's VXLAN port"), "{p:?}");
    assert!(parse(
        &with_ingress(&published_web("{ protocol = \"tcp\", target = 80, published = 4789 }", "")),
        Path::new("t.toml")
    )
    .is_ok());
}

#[test]
fn one_ingress_network_with_a_gateway() {
    let second = "\n[[networks]]\nname = \"mesh2\"\nvni = 4095\nsubnet = \"10.0.1.0/24\"\ningress = true\n";
    let p = problems(&(with_ingress(WEB) + second));
    assert!(
        has(
            &p,
            "networks \"mesh2\"",
            "ingress",
            "network \"ingress\" is already the ingress network; a cluster has one"
        ),
        "{p:?}"
    );
    assert_eq!(p.len(), 1, "{p:?}");
    // The default gateway is reserved like a written one, for endpoints and VIPs.
    let p = problems(&with_ingress(WEB).replace("ip = \"10.0.0.4\"", "ip = \"10.0.0.1\""));
    assert!(has(&p, "endpoints \"web.2i\"", "ip", "10.0.0.1 is the gateway of network \"ingress\""), "{p:?}");
    let vip =
        WEB.replace("{ network = \"app-net\", ip = \"10.0.9.2\" }", "{ network = \"ingress\", ip = \"10.0.0.1\" }");
    let p = problems(&with_ingress(&vip));
    assert!(has(&p, "services \"web\"", "vips[0].ip", "gateway of network \"ingress\""), "{p:?}");
    // Parsing refuses /31 and /32 before this; the default is still never a non-host address.
    let subnet = |a: [u8; 4], prefix| Subnet { addr: Ipv4Addr::from(a), prefix };
    assert_eq!(subnet([10, 0, 0, 0], 30).first_host(), Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(subnet([10, 0, 0, 0], 31).first_host(), None);
    assert_eq!(subnet([10, 0, 0, 0], 32).first_host(), None);
    assert_eq!(subnet([255, 255, 255, 255], 32).first_host(), None);
}

#[test]
fn publishing_needs_the_ingress_network() {
    let e = "services \"web\"";
    let ports = "{ protocol = \"tcp\", target = 80 }, \
                 { protocol = \"tcp\", target = 81, published = 8081, publish_mode = \"host\" }";
    let web = published_web(ports, "");
    let p = problems(&with_web(&web));
    assert!(
        has(
            &p,
            e,
            "ports[1].published",
            "a published port needs a network with `ingress = true` (Docker's ingress network)"
        ),
        "{p:?}"
    );
    assert_eq!(p.len(), 1, "{p:?}");
    // An ingress network that is invalid is named.
    let p = problems(&with_ingress(&web).replace("vni = 4096", "vni = 0"));
    assert!(has(&p, e, "ports[1].published", "(network \"ingress\" has it, but is invalid)"), "{p:?}");
}

#[test]
fn published_ports_collide() {
    let path = Path::new("t.toml");
    let web = published_web(MESH_PORTS, ", { endpoint = \"web.1i\" }, { endpoint = \"web.2i\" }");
    let api_e = "services \"api\"";
    // Ingress mode takes the port on every node, whatever the other's mode and backends.
    for mode in ["ingress", "host"] {
        let text = with_ingress(&web)
            + &api(&format!("{{ protocol = \"tcp\", target = 80, published = 8080, publish_mode = \"{mode}\" }}"), "");
        let p = problems(&text);
        assert!(
            has(
                &p,
                api_e,
                "ports[0].published",
                "tcp/8080 is already published by service \"web\" (ports[0]); \
                 a port published in ingress mode is taken on every node"
            ),
            "{mode}: {p:?}"
        );
        assert_eq!(p.len(), 1, "{p:?}");
    }
    let text = with_ingress(&web) + &api("{ protocol = \"tcp\", target = 80, published = 9100 }", "");
    let p = problems(&text);
    assert!(
        has(&p, api_e, "ports[0].published", "tcp/9100 is already published by service \"web\" (ports[2])"),
        "{p:?}"
    );
    // Another protocol is another port.
    assert!(
        parse(&(with_ingress(&web) + &api("{ protocol = \"udp\", target = 80, published = 8080 }", "")), path).is_ok()
    );
    // Host mode collides only on a node where both have a backend on the ingress network.
    let host = "{ protocol = \"tcp\", target = 9100, published = 9100, publish_mode = \"host\" }";
    let web_a = published_web(MESH_PORTS, ", { endpoint = \"web.1i\" }");
    assert!(parse(&(with_ingress(&web_a) + &api(host, "{ endpoint = \"web.2i\" }")), path).is_ok());
    let p = problems(&(with_ingress(&web_a) + &api(host, "{ endpoint = \"web.3i\" }")));
    assert!(
        has(
            &p,
            api_e,
            "ports[0].published",
            "tcp/9100 is already published in host mode by service \"web\" (ports[2]), \
             which also has a backend on the ingress network on node \"node-a\""
        ),
        "{p:?}"
    );
    assert_eq!(p.len(), 1, "{p:?}");
    // Within one service, any two publications of a port collide, as Docker refuses them.
    let twice = "{ protocol = \"tcp\", target = 80, published = 8080, publish_mode = \"host\" }, \
                 { protocol = \"tcp\", target = 81, published = 8080, publish_mode = \"host\" }";
    let p = problems(&with_ingress(&published_web(twice, "")));
    assert!(has(&p, "services \"web\"", "ports[1].published", "tcp/8080 is already published (ports[0])"), "{p:?}");
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn published_traffic_backends_are_on_the_ingress_network() {
    let e = "services \"web\"";
    // Without a published port, a vip-mode backend on the ingress network is off the VIPs' networks.
    let p =
        problems(&with_ingress(&published_web("{ protocol = \"tcp\", target = 80 }", ", { endpoint = \"web.1i\" }")));
    assert!(
        has(
            &p,
            e,
            "backends[2].endpoint",
            "endpoint \"web.1i\" is on network \"ingress\", but the service's VIPs are on \"app-net\" \
             (the ingress network serves published ports: it publishes none)"
        ),
        "{p:?}"
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        parse(&with_ingress(&published_web(MESH_PORTS, ", { endpoint = \"web.1i\" }")), Path::new("t.toml")).is_ok()
    );
    // Publishing admits the ingress network only.
    let p = problems(&with_ingress(&published_web(MESH_PORTS, ", { endpoint = \"db.1\" }")));
    assert!(has(&p, e, "backends[2].endpoint", "endpoint \"db.1\" is on network \"db-net\""), "{p:?}");
}

#[test]
fn a_dnsrr_service_publishes_in_host_mode_only() {
    let dnsrr = |ports: &str| {
        with_ingress(WEB)
            .replace("endpoint_mode = \"dnsrr\"", &format!("endpoint_mode = \"dnsrr\"\nports = [ {ports} ]"))
            .replace(
                "{ endpoint = \"db.2\", weight = 0 }",
                "{ endpoint = \"db.2\", weight = 0 }, { endpoint = \"web.3i\" }",
            )
    };
    for written in ["", ", publish_mode = \"ingress\""] {
        let p = problems(&dnsrr(&format!("{{ protocol = \"tcp\", target = 5432, published = 5432{written} }}")));
        assert!(
            has(
                &p,
                "services \"db\"",
                "ports[0].publish_mode",
                "port published with ingress mode can't be used with dnsrr mode"
            ),
            "{written:?}: {p:?}"
        );
        assert_eq!(p.len(), 1, "{p:?}");
    }
    let s = parse(
        &dnsrr("{ protocol = \"tcp\", target = 5432, published = 5432, publish_mode = \"host\" }"),
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(s.services["db"].ports[0].publish_mode, PublishMode::Host);
    assert_eq!(s.services["db"].backends[2].endpoint, "web.3i");
}

#[test]
fn host_mode_takes_one_backend_a_node() {
    let e = "services \"web\"";
    let two_on_a = ", { endpoint = \"web.1i\" }, { endpoint = \"web.3i\" }";
    let p = problems(&with_ingress(&published_web(MESH_PORTS, two_on_a)));
    assert!(
        has(
            &p,
            e,
            "ports[2].publish_mode",
            "node \"node-a\" has two (\"web.1i\", \"web.3i\"): a node's port reaches one task"
        ),
        "{p:?}"
    );
    assert_eq!(p.len(), 1, "only the host-mode port: {p:?}");
    // In ingress mode the mesh balances over both.
    let ingress_only = "{ protocol = \"tcp\", target = 80, published = 8080 }";
    assert!(parse(&with_ingress(&published_web(ingress_only, two_on_a)), Path::new("t.toml")).is_ok());
}

#[test]
fn gwbridge_defaults_are_dockers() {
    let s = parse(&format!("{GOOD}\n[gwbridge]\n"), Path::new("t.toml")).unwrap();
    let g = s.gwbridge.unwrap();
    assert_eq!(
        (g.name.as_str(), g.subnet.to_string(), g.gateway.to_string()),
        ("docker_gwbridge", "172.18.0.0/16".into(), "172.18.0.1".into())
    );
    assert_eq!((g.ifname.as_str(), g.icc, g.masquerade), ("eth1", false, true));
    assert!(parse(GOOD, Path::new("t.toml")).unwrap().gwbridge.is_none(), "no [gwbridge]: none");
    // The incremental parser sees the same.
    assert!(inc_parse(&format!("{GOOD}\n[gwbridge]\nicc = true\n")).gwbridge.unwrap().icc);
}

#[test]
fn gwbridge_checks() {
    let bad = |t: &str| problems(&format!("{GOOD}\n[gwbridge]\n{t}\n"));
    assert!(has(
        &bad("subnet = \"10.0.9.0/25\""),
        "gwbridge",
        "subnet",
        "overlaps subnet 10.0.9.0/24 of network \"app-net\""
    ));
    assert!(has(&bad("subnet = \"192.168.50.0/24\""), "gwbridge", "subnet", "address of node \"node-a\""));
    assert!(has(&bad("subnet = \"172.18.0.0/31\""), "gwbridge", "subnet", "out of range (8..=30)"));
    assert!(has(&bad("subnet = \"nope\""), "gwbridge", "subnet", ""));
    assert!(has(&bad("gateway = \"172.19.0.1\""), "gwbridge", "gateway", "not a host address of subnet 172.18.0.0/16"));
    assert!(has(&bad("name = \"a-name-far-too-long\""), "gwbridge", "name", "1 to 15"));
    assert!(has(&bad("ifname = \"eth0\""), "endpoints \"web.1\"", "ifname", "gwbridge interface's name"));
    let e = parse(&format!("{GOOD}\n[gwbridge]\nicc = \"no\"\n"), Path::new("t.toml")).unwrap_err();
    assert!(e.to_string().contains("icc"), "{e}");
    let e = parse(&format!("{GOOD}\n[gwbridge]\ncolour = 1\n"), Path::new("t.toml")).unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}
