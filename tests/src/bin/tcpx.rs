//! TCP echo pair for the tests and benchmarks, run inside container namespaces.
//!   tcpx serve PORT                         echo every connection back
//!   tcpx send IP PORT BYTES [SECONDS]       send a pattern (paced over SECONDS if given),
//!                                           read the echo, exit 0 only if every byte matches
//!   tcpx rr IP PORT SECONDS                 1-byte request/response loop; prints
//!                                           "rr <count> p50_us <x> p99_us <y>"

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) >> 3) as u8
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let code = match a.get(1).map(String::as_str) {
        Some("serve") => serve(a[2].parse().expect("port")),
        Some("send") => send(
            &a[2],
            a[3].parse().expect("port"),
            a[4].parse().expect("bytes"),
            a.get(5).map(|s| s.parse().expect("seconds")),
        ),
        Some("rr") => rr(&a[2], a[3].parse().expect("port"), a[4].parse().expect("seconds")),
        _ => {
            eprintln!("usage: tcpx serve PORT | send IP PORT BYTES [SECONDS] | rr IP PORT SECONDS");
            2
        }
    };
    std::process::exit(code);
}

fn serve(port: u16) -> i32 {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        });
    }
    0
}

fn connect(ip: &str, port: u16) -> TcpStream {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect_timeout(&format!("{ip}:{port}").parse().expect("addr"), Duration::from_secs(2)) {
            Ok(s) => return s,
            Err(e) if t0.elapsed() > Duration::from_secs(5) => {
                eprintln!("connect {ip}:{port}: {e}");
                std::process::exit(1);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn send(ip: &str, port: u16, bytes: u64, seconds: Option<f64>) -> i32 {
    let s = connect(ip, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut w = s.try_clone().expect("clone");
    let paced = seconds.map(Duration::from_secs_f64);
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        let chunk = 16 * 1024u64;
        let mut sent = 0u64;
        let mut buf = vec![0u8; chunk as usize];
        while sent < bytes {
            let n = chunk.min(bytes - sent);
            for (j, b) in buf[..n as usize].iter_mut().enumerate() {
                *b = pattern(sent + j as u64);
            }
            if w.write_all(&buf[..n as usize]).is_err() {
                return false;
            }
            sent += n;
            if let Some(d) = paced {
                // Spread the bytes evenly over the duration.
                let due = d.mul_f64(sent as f64 / bytes as f64);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        w.shutdown(Shutdown::Write).is_ok()
    });
    let mut r = s;
    let mut got = 0u64;
    let mut buf = vec![0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for (j, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(got + j as u64) {
                        eprintln!("mismatch at byte {}", got + j as u64);
                        return 1;
                    }
                }
                got += n as u64;
            }
            Err(e) => {
                eprintln!("read after {got} bytes: {e}");
                return 1;
            }
        }
    }
    let ok = writer.join().unwrap_or(false);
    if !ok || got != bytes {
        eprintln!("echoed {got} of {bytes} bytes (writer ok: {ok})");
        return 1;
    }
    println!("ok {got}");
    0
}

fn rr(ip: &str, port: u16, seconds: f64) -> i32 {
    let mut s = connect(ip, port);
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut b = [0u8; 1];
    while t0.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        if s.write_all(&[7]).is_err() || s.read_exact(&mut b).is_err() {
            eprintln!("request/response failed after {} round trips", lat.len());
            return 1;
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let p = |q: f64| lat.get(((lat.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0) / 1000;
    println!("rr {} p50_us {} p99_us {}", lat.len(), p(0.5), p(0.99));
    0
}
