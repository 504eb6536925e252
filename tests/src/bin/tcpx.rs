//! TCP echo pair for the tests and benchmarks, run inside container namespaces.
//!   tcpx serve PORT                         echo every connection back
//!   tcpx send IP PORT BYTES [SECONDS]       send a pattern (paced over SECONDS if given),
//!                                           read the echo, exit 0 only if every byte matches
//!   tcpx rr IP PORT SECONDS                 1-byte request/response loop; prints
//!                                           "rr <count> p50_us <x> p99_us <y>"
//! For service VIPs, a server that says who it is and clients that count who answered:
//!   tcpx id PORT NAME                       TCP: write "NAME\n" on accept, then echo until EOF;
//!                                           UDP on the same port: answer each datagram "NAME\n"
//!   tcpx cps IP PORT N                      N sequential TCP connections: read the name, check a
//!                                           2-byte echo, close; print {"name": count, ...} (JSON);
//!                                           exit 1 at the first failure
//!   tcpx ucps IP PORT N                     N UDP requests, each from a new socket (a new source
//!                                           port, none reused); the reply must come from
//!                                           IP:PORT; same output
//!   tcpx hold IP PORT                       one TCP connection: print "id NAME LOCALPORT",
//!                                           then for each line on stdin one 2-byte echo round
//!                                           trip, printing ok | reset | refused | timeout | eof |
//!                                           error ...
//!   tcpx uhold IP PORT                      one connected UDP socket: print "id - LOCALPORT",
//!                                           then for each stdin line a request, printing
//!                                           "ok NAME" or the outcome as above
//! Every wait is bounded by IO_TIMEOUT, so a client never hangs.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

/// Bound on every connect, read and write of the service modes: the rigs answer in well under
/// a millisecond, so 10 s tells "no answer" (a hang, a black hole) apart from an answer or an
/// error without being a timing measurement.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

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
        Some("id") => id_server(a[2].parse().expect("port"), &a[3]),
        Some("cps") => tally(addr(&a[2], &a[3]), a[4].parse().expect("count"), &mut tcp_once),
        Some("ucps") => {
            // Every socket stays open until the end: no source port repeats, so every request
            // is a new flow (a closed socket's port may be drawn again).
            let mut open = Vec::new();
            tally(addr(&a[2], &a[3]), a[4].parse().expect("count"), &mut |to| udp_once(to, &mut open))
        }
        Some("hold") => hold(addr(&a[2], &a[3])),
        Some("uhold") => uhold(addr(&a[2], &a[3])),
        _ => {
            eprintln!(
                "usage: tcpx serve PORT | send IP PORT BYTES [SECONDS] | rr IP PORT SECONDS | id PORT NAME \
                 | cps IP PORT N | ucps IP PORT N | hold IP PORT | uhold IP PORT"
            );
            2
        }
    };
    std::process::exit(code);
}

/// Echo everything back until the peer closes, then close our side.
fn echo(s: &mut TcpStream) {
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
}

fn serve(port: u16) -> i32 {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            echo(&mut s);
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

fn addr(ip: &str, port: &str) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("IP PORT")
}

/// TCP and UDP on `port`, each answering with `name`.
fn id_server(port: u16, name: &str) -> i32 {
    let udp = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
    let reply = format!("{name}\n");
    let udp_reply = reply.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(udp_reply.as_bytes(), from);
            }
        }
    });
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let reply = reply.clone();
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            if s.write_all(reply.as_bytes()).is_ok() {
                echo(&mut s);
            }
        });
    }
    0
}

/// The server's name: bytes up to a newline.
fn read_name(s: &mut TcpStream) -> io::Result<String> {
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            break;
        }
        name.push(b[0]);
        if name.len() > 256 {
            return Err(io::Error::other("no newline in the first 256 bytes"));
        }
    }
    Ok(String::from_utf8_lossy(&name).into_owned())
}

fn tcp_connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn echo_round(s: &mut TcpStream) -> io::Result<()> {
    s.write_all(b"x\n")?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    if &b != b"x\n" {
        return Err(io::Error::other(format!("echo came back as {b:?}")));
    }
    Ok(())
}

/// One connection: who answered, after a working echo both ways.
fn tcp_once(to: SocketAddr) -> io::Result<String> {
    let mut s = tcp_connect(to)?;
    let name = read_name(&mut s)?;
    echo_round(&mut s)?;
    Ok(name)
}

/// One request from a fresh socket, kept in `open`; the reply must come from the address asked.
fn udp_once(to: SocketAddr, open: &mut Vec<UdpSocket>) -> io::Result<String> {
    let u = UdpSocket::bind("0.0.0.0:0")?;
    u.set_read_timeout(Some(IO_TIMEOUT))?;
    u.send_to(b"?", to)?;
    let mut buf = [0u8; 512];
    let (n, from) = u.recv_from(&mut buf)?;
    if from != to {
        return Err(io::Error::other(format!("reply from {from}, not from {to}")));
    }
    open.push(u);
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

fn json_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn print_tally(t: &BTreeMap<String, u64>) {
    let body: Vec<String> = t.iter().map(|(k, v)| format!("{}: {v}", json_string(k))).collect();
    println!("{{{}}}", body.join(", "));
}

/// `n` exchanges one after the other, counted by who answered.
fn tally(to: SocketAddr, n: u64, once: &mut dyn FnMut(SocketAddr) -> io::Result<String>) -> i32 {
    let mut t: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        match once(to) {
            Ok(name) => *t.entry(name).or_default() += 1,
            Err(e) => {
                eprintln!("exchange {} of {n} with {to}: {} ({:?})", i + 1, e, e.kind());
                print_tally(&t);
                return 1;
            }
        }
    }
    print_tally(&t);
    0
}

fn outcome(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timeout".into(),
        ErrorKind::UnexpectedEof => "eof".into(),
        k => format!("error {k:?}: {e}"),
    }
}

fn hold(to: SocketAddr) -> i32 {
    let mut s = match tcp_connect(to).and_then(|mut s| read_name(&mut s).map(|n| (s, n))) {
        Ok((s, name)) => {
            println!("id {name} {}", s.local_addr().map(|a| a.port()).unwrap_or(0));
            s
        }
        Err(e) => {
            println!("{}", outcome(&e));
            return 1;
        }
    };
    for line in io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        match echo_round(&mut s) {
            Ok(()) => println!("ok"),
            Err(e) => println!("{}", outcome(&e)),
        }
    }
    0
}

fn uhold(to: SocketAddr) -> i32 {
    let u = match UdpSocket::bind("0.0.0.0:0").and_then(|u| {
        u.connect(to)?;
        u.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(u)
    }) {
        Ok(u) => u,
        Err(e) => {
            println!("{}", outcome(&e));
            return 1;
        }
    };
    println!("id - {}", u.local_addr().map(|a| a.port()).unwrap_or(0));
    let mut buf = [0u8; 512];
    for line in io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        match u.send(b"?").and_then(|_| u.recv(&mut buf)) {
            Ok(n) => println!("ok {}", String::from_utf8_lossy(&buf[..n]).trim_end()),
            Err(e) => println!("{}", outcome(&e)),
        }
    }
    0
}
