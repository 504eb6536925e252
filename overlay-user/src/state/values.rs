//! Parsers for the values a state file holds (addresses, subnets, MACs, names). Each returns the
//! reason a value is refused, worded for the user; the caller adds the entry and field.

use std::net::Ipv4Addr;

use super::Subnet;

pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>().map_err(|_| format!("`{s}` is not an IPv4 address"))
}

/// Ranges no overlay subnet may use: "this network", loopback, multicast, reserved (class E).
const RESERVED: [(Subnet, &str); 4] = [
    (Subnet { addr: Ipv4Addr::new(0, 0, 0, 0), prefix: 8 }, "\"this network\" range 0.0.0.0/8"),
    (Subnet { addr: Ipv4Addr::new(127, 0, 0, 0), prefix: 8 }, "loopback range 127.0.0.0/8"),
    (Subnet { addr: Ipv4Addr::new(224, 0, 0, 0), prefix: 4 }, "multicast range 224.0.0.0/4"),
    (Subnet { addr: Ipv4Addr::new(240, 0, 0, 0), prefix: 4 }, "reserved range 240.0.0.0/4"),
];

pub fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let (a, p) = s.split_once('/').ok_or_else(|| format!("`{s}` is not in address/prefix form"))?;
    let addr = parse_ipv4(a)?;
    let prefix: u8 = p.parse().map_err(|_| format!("`{p}` is not a prefix length"))?;
    if !(8..=30).contains(&prefix) {
        return Err(format!("prefix /{prefix} is out of range (8..=30)"));
    }
    let net = Subnet { addr, prefix };
    let base = Ipv4Addr::from(u32::from(addr) & net.mask());
    if base != addr {
        return Err(format!("`{s}` has host bits set (did you mean {base}/{prefix}?)"));
    }
    if let Some((_, what)) = RESERVED.iter().find(|(r, _)| r.overlaps(net)) {
        return Err(format!("{net} is in the {what}"));
    }
    Ok(net)
}

/// A node's underlay address must be one a VTEP can send from and be sent to.
pub fn parse_unicast(s: &str) -> Result<Ipv4Addr, String> {
    let a = parse_ipv4(s)?;
    if let Some((_, what)) = RESERVED.iter().find(|(r, _)| r.contains(a)) {
        return Err(format!("{a} is not a unicast address (it is in the {what})"));
    }
    if a.is_broadcast() {
        return Err(format!("{a} is the broadcast address, not a unicast address"));
    }
    Ok(a)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("`{s}` is not a MAC address (six hex bytes separated by colons)");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("`{s}` is a multicast MAC address"));
    }
    if mac == [0; 6] {
        return Err("the all-zero MAC address is not usable".into());
    }
    Ok(mac)
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

pub fn valid_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("`{s}` must be 1 to 15 characters long"));
    }
    if s.contains(['/', ':']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) || s == "." || s == ".." {
        return Err(format!("`{s}` is not a valid interface name"));
    }
    Ok(())
}

/// Node names become directory names under the run dir (pins, records): only names that are
/// safe there, the characters of a hostname, as Docker's node names are.
pub fn valid_node_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 64 {
        return Err(format!("`{s}` is longer than 64 characters"));
    }
    if s.starts_with('.') || !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
        return Err(format!("`{s}` is not a safe node name (letters, digits, `.`, `-`, `_`; not starting with `.`)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_in_reserved_ranges_are_refused() {
        for s in ["0.0.0.0/8", "127.0.0.0/8", "127.1.0.0/16", "224.0.0.0/8", "240.0.0.0/8", "0.1.0.0/16"] {
            assert!(parse_subnet(s).is_err(), "{s}");
        }
        assert!(parse_subnet("10.0.0.0/33").unwrap_err().contains("out of range"));
        assert!(parse_subnet("10.0.9.0/24").is_ok());
    }

    #[test]
    fn node_addresses_must_be_unicast() {
        for a in ["0.0.0.0", "0.1.2.3", "127.0.0.1", "224.0.0.1", "239.1.1.1", "240.0.0.1", "255.255.255.255"] {
            assert!(parse_unicast(a).is_err(), "{a}");
        }
        assert!(parse_unicast("192.168.50.11").is_ok());
    }

    #[test]
    fn node_names_must_be_safe_as_file_names() {
        for n in ["", ".", "..", "a/b", "/", "../x", ".hidden", "a b", "x\0y", &"n".repeat(65)] {
            assert!(valid_node_name(n).is_err(), "{n:?}");
        }
        for n in ["node-a", "worker_1.example.com", "N1"] {
            assert!(valid_node_name(n).is_ok(), "{n}");
        }
    }
}
