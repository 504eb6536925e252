//! Crafted VXLAN for the underlay tests: what any host on the underlay could send us.
//!   vxinject send FROM TO VNI INNER_SRC INNER_DST INNER_DST_MAC TAG
//!       one VXLAN datagram from FROM to TO:4789 carrying Ethernet + IPv4 + UDP to INNER_DST:7777
//!       with payload TAG (inner source MAC: Docker's rule for INNER_SRC)
//!   vxinject listen SECONDS
//!       print every UDP payload received on port 7777 for SECONDS, one a line
//! It uses a plain UDP socket: the kernel writes the outer headers, the payload is ours.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

const INNER_PORT: u16 = 7777;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let code = match (a.get(1).map(String::as_str), a.len()) {
        (Some("send"), 9) => send(&a[2..]),
        (Some("listen"), 3) => listen(a[2].parse().unwrap_or(2.0)),
        _ => {
            eprintln!("usage: vxinject send FROM TO VNI INNER_SRC INNER_DST INNER_DST_MAC TAG | listen SECONDS");
            2
        }
    };
    std::process::exit(code);
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|_| panic!("not an IPv4 address: {s}"))
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a MAC: {s}"));
    }
    m
}

fn csum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn send(a: &[String]) -> i32 {
    let (from, to, vni) = (ip(&a[0]), ip(&a[1]), a[2].parse::<u32>().expect("vni"));
    let (isrc, idst, dmac, tag) = (ip(&a[3]), ip(&a[4]), mac(&a[5]), a[6].as_bytes());
    let o = isrc.octets();
    let smac = [0x02, 0x42, o[0], o[1], o[2], o[3]];
    let mut f = vec![0x08, 0, 0, 0, (vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0];
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&((20 + 8 + tag.len()) as u16).to_be_bytes());
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&isrc.octets());
    iph[16..20].copy_from_slice(&idst.octets());
    let c = csum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&INNER_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + tag.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // UDP checksum 0: none, valid for IPv4
    f.extend_from_slice(tag);
    let s = match UdpSocket::bind(SocketAddrV4::new(from, 0)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bind {from}: {e}");
            return 1;
        }
    };
    match s.send_to(&f, SocketAddrV4::new(to, 4789)) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("send to {to}: {e}");
            1
        }
    }
}

fn listen(seconds: f64) -> i32 {
    let s = UdpSocket::bind(("0.0.0.0", INNER_PORT)).expect("bind 7777");
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let mut buf = [0u8; 2048];
    while t0.elapsed() < end {
        let _ = s.set_read_timeout(Some((end - t0.elapsed()).max(Duration::from_millis(1))));
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
        }
    }
    0
}
