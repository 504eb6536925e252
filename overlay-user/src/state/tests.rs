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
