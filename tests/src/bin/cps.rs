//! Connection-rate client for the benchmarks, run inside a container namespace:
//!   cps IP PORT SECONDS   open a TCP connection, send one byte, read its echo, close; again and
//!                         again for SECONDS; prints "cps <connections per second> failed <n>"
//! The server is `tcpx serve PORT` (an echo). Each connection is a new flow: a new conntrack
//! entry and a scheduler pick through a VIP, a new DNAT through nftables.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        eprintln!("usage: cps IP PORT SECONDS");
        std::process::exit(2);
    }
    let Ok(addr) = format!("{}:{}", a[1], a[2]).parse::<SocketAddr>() else {
        eprintln!("cps: bad address {}:{}", a[1], a[2]);
        std::process::exit(2);
    };
    let Ok(secs) = a[3].parse::<f64>() else {
        eprintln!("cps: bad duration {}", a[3]);
        std::process::exit(2);
    };
    let (mut ok, mut failed) = (0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        if once(addr) {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    println!("cps {:.0} failed {failed}", ok as f64 / t0.elapsed().as_secs_f64());
    std::process::exit(if ok > 0 { 0 } else { 1 });
}

fn once(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    s.write_all(&[7]).is_ok() && s.read_exact(&mut b).is_ok() && b[0] == 7
}
