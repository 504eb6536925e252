//! The routing mesh in a running cluster, seen from outside: an external host on the underlay
//! (`Cluster::add_external`) connects to nodes' addresses on published ports.
//!
//! - `PeerServer`: a TCP and UDP server in a container that records every peer address it sees
//!   and answers `NAME@PEER_IP` (so `tcpx cps`/`ucps`/`hold` tally backends and the client
//!   address they saw at once); it runs on threads of the test process moved into the
//!   container's namespace (`setns`), no binary needed;
//! - `Capture`: what an interface receives and sends (AF_PACKET, headers parsed), to check the
//!   source of replies and of ICMP errors;
//! - `udp_path_mtu`: a DF datagram through the mesh and the path MTU the sender's kernel learnt;
//! - clients run in the external host: `tcpx` tallies (`Cluster::mesh_cps`, `mesh_ucps`) and held
//!   connections (`mesh_hold`, `mesh_uhold`).

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cleanup::{track, untrack},
    cluster::{tcpx_bin, Cluster, Proc},
    netns::{in_netns, spawn_in, wait_for, Netns},
    vip::Tally,
};

/// Move the calling thread into the namespace at `path` (network namespaces are per thread).
fn enter(path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {}", path.display()))?;
    Ok(())
}

/// Run `f` on a thread inside `ns` and wait for its result.
pub fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        enter(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a namespace panicked"))?
}

/// A peer a `PeerServer` saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub udp: bool,
    pub addr: SocketAddrV4,
}

/// TCP and UDP on a port in a container, answering `NAME@PEER_IP` (TCP: on accept, then echo
/// until EOF, as `tcpx id` does; UDP: to each datagram) and recording every peer. Stopped on drop.
pub struct PeerServer {
    pub name: String,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<Peer>>>,
    threads: Vec<JoinHandle<()>>,
}

impl PeerServer {
    /// Listening on `port` (TCP and UDP, every address) in `ns` when it returns.
    pub fn start(ns: &Netns, name: &str, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (path, name, stop, peers, tx) = (ns.path(), name.to_string(), stop.clone(), peers.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                if let Err(e) = enter(&path) {
                    let _ = tx.send(Err(e));
                    return;
                }
                if udp {
                    udp_server(port, &name, &stop, &peers, tx)
                } else {
                    tcp_server(port, &name, &stop, &peers, tx)
                }
            }));
        }
        drop(tx);
        let s = Self { name: name.to_string(), stop, peers, threads };
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10)).context("peer server did not start")??;
        }
        Ok(s)
    }

    /// Every peer seen so far (TCP: one per accepted connection; UDP: one per datagram).
    pub fn peers(&self) -> Vec<Peer> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(a.ip().to_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED), a.port()),
    }
}

fn tcp_server(port: u16, name: &str, stop: &Arc<AtomicBool>, peers: &Mutex<Vec<Peer>>, tx: mpsc::Sender<Result<()>>) {
    let l = match TcpListener::bind(("0.0.0.0", port)).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
        Ok(l) => l,
        Err(e) => {
            let _ = tx.send(Err(anyhow::anyhow!("bind tcp {port}: {e}")));
            return;
        }
    };
    let _ = tx.send(Ok(()));
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((mut s, from)) => {
                let from = v4(from);
                peers.lock().unwrap().push(Peer { udp: false, addr: from });
                let reply = format!("{name}@{}\n", from.ip());
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    if s.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::SeqCst) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn udp_server(port: u16, name: &str, stop: &AtomicBool, peers: &Mutex<Vec<Peer>>, tx: mpsc::Sender<Result<()>>) {
    let u = match UdpSocket::bind(("0.0.0.0", port))
        .and_then(|u| u.set_read_timeout(Some(Duration::from_millis(100))).map(|_| u))
    {
        Ok(u) => u,
        Err(e) => {
            let _ = tx.send(Err(anyhow::anyhow!("bind udp {port}: {e}")));
            return;
        }
    };
    let _ = tx.send(Ok(()));
    let mut buf = [0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((_, from)) = u.recv_from(&mut buf) {
            let from = v4(from);
            peers.lock().unwrap().push(Peer { udp: true, addr: from });
            let _ = u.send_to(format!("{name}@{}\n", from.ip()).as_bytes(), from);
        }
    }
}

/// An ICMP error as captured: type, code, the next-hop MTU field, and the header it quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
    pub mtu: u16,
    pub quoted_src: Ipv4Addr,
    pub quoted_dst: Ipv4Addr,
    pub quoted_proto: u8,
    pub quoted_sport: u16,
    pub quoted_dport: u16,
}

/// One captured IPv4 frame's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Sent by this host (else received).
    pub outgoing: bool,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// TCP/UDP ports (0 for other protocols).
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP destination unreachable / time exceeded, with what it quotes.
    pub icmp: Option<IcmpError>,
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

fn parse_frame(b: &[u8], outgoing: bool) -> Option<Frame> {
    if b.len() < 34 || b[12..14] != [0x08, 0x00] || b[14] >> 4 != 4 {
        return None;
    }
    let ip = &b[14..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let addr = |x: &[u8]| Ipv4Addr::new(x[0], x[1], x[2], x[3]);
    let l4 = ip.get(ihl..)?;
    let port = |x: &[u8], at: usize| x.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]])).unwrap_or(0);
    let mut f = Frame {
        outgoing,
        src: addr(&ip[12..16]),
        dst: addr(&ip[16..20]),
        proto: ip[9],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: None,
    };
    match f.proto {
        PROTO_TCP | PROTO_UDP => {
            f.sport = port(l4, 0);
            f.dport = port(l4, 2);
            if f.proto == PROTO_TCP {
                f.tcp_flags = l4.get(13).copied().unwrap_or(0);
            }
        }
        PROTO_ICMP if l4.len() >= 8 + 20 && (l4[0] == 3 || l4[0] == 11) => {
            let q = &l4[8..];
            let qihl = (q[0] & 0x0f) as usize * 4;
            let ql4 = q.get(qihl..).unwrap_or(&[]);
            f.icmp = Some(IcmpError {
                kind: l4[0],
                code: l4[1],
                mtu: u16::from_be_bytes([l4[6], l4[7]]),
                quoted_src: addr(&q[12..16]),
                quoted_dst: addr(&q[16..20]),
                quoted_proto: q[9],
                quoted_sport: port(ql4, 0),
                quoted_dport: port(ql4, 2),
            });
        }
        _ => {}
    }
    Some(f)
}

/// The IPv4 frames an interface of a namespace receives and sends, from `start` to `finish`.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Frame>>>,
}

impl Capture {
    /// Capturing on `ifname` in `ns` when it returns.
    pub fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let (path, ifname, stop2) = (ns.path(), ifname.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let fd = match enter(&path).and_then(|_| packet_socket(&ifname)) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Vec::new();
                }
            };
            let _ = tx.send(Ok(()));
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536 + 64];
            loop {
                // SAFETY: a plain recvfrom into our buffer, with a sockaddr_ll of the right size.
                let (n, pkttype) = unsafe {
                    let mut from: libc::sockaddr_ll = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    let n = libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &mut len,
                    );
                    (n, from.sll_pkttype)
                };
                if n < 0 {
                    // Timeout (or an interrupted call): done once asked to stop and drained.
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                if let Some(f) = parse_frame(&buf[..n as usize], pkttype == libc::PACKET_OUTGOING) {
                    frames.push(f);
                }
            }
            frames
        });
        rx.recv_timeout(Duration::from_secs(10)).context("capture did not start")??;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stop (after what is queued is read) and return the frames, in order.
    pub fn finish(mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An AF_PACKET socket bound to `ifname` (every protocol), reads bounded by 100 ms.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on a descriptor we own; structures zeroed and sized.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, all as i32);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(ifname)?;
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex as i32;
        let size = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        if libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), size) != 0 {
            bail!("bind AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), tv_len);
        let rcvbuf: libc::c_int = 8 << 20;
        let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const rcvbuf).cast(), int_len);
        Ok(fd)
    }
}

/// What a DF datagram too big for the path came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathMtu {
    /// The datagram was answered (it went through: nothing was too big).
    pub answered: bool,
    /// The socket's path MTU (`IP_MTU`) afterwards: what the sender's kernel learnt from a
    /// "fragmentation needed" that quoted this socket's flow.
    pub mtu: u32,
}

/// From `ns`, a connected UDP socket to `to` sends `payload` bytes with DF (`IP_PMTUDISC_DO`),
/// up to `tries` times until it is answered or told the datagram is too big.
pub fn udp_path_mtu(ns: &Netns, to: SocketAddrV4, payload: usize, tries: u32) -> Result<PathMtu> {
    in_ns(ns, move || {
        let u = UdpSocket::bind("0.0.0.0:0")?;
        u.connect(to)?;
        u.set_read_timeout(Some(Duration::from_millis(500)))?;
        let fd = u.as_raw_fd();
        let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: setsockopt with an int option on our socket.
        if unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, (&raw const on).cast(), int_len) }
            != 0
        {
            bail!("IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
        }
        let data = vec![0x5au8; payload];
        let mut buf = [0u8; 2048];
        let mut answered = false;
        for _ in 0..tries {
            match u.send(&data) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => break,
                Err(e) => bail!("send: {e}"),
            }
            match u.recv(&mut buf) {
                Ok(_) => {
                    answered = true;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => bail!("recv: {e}"),
            }
        }
        let mut mtu: libc::c_int = 0;
        let mut len = int_len;
        // SAFETY: getsockopt with an int option on our (connected) socket.
        if unsafe { libc::getsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU, (&raw mut mtu).cast(), &mut len) } != 0 {
            bail!("IP_MTU: {}", std::io::Error::last_os_error());
        }
        Ok(PathMtu { answered, mtu: mtu as u32 })
    })
}

/// A TCP connection (`tcpx hold`) or connected UDP socket (`tcpx uhold`) held open from a
/// namespace, one round trip at a time. Killed on drop.
pub struct Hold {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    /// TCP: what the server said first (a `PeerServer`: `NAME@CLIENT_IP`). UDP: "-".
    pub id: String,
    /// The client's source port.
    pub port: u16,
}

impl Hold {
    /// One round trip: "ok" (TCP), "ok NAME" (UDP), or "reset", "refused", "timeout", "eof",
    /// "error ...", "exited" (as `vip::Held`).
    pub fn round(&mut self) -> String {
        if writeln!(self.stdin, "x").and_then(|_| self.stdin.flush()).is_err() {
            return "exited".into();
        }
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) | Err(_) => "exited".into(),
            Ok(_) => line.trim().to_string(),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        untrack(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tcpx hold` (or `uhold` with `udp`) from `ns` to ip:port. Err with tcpx's first line (e.g.
/// "refused") when it could not connect.
pub fn hold(ns: &Netns, ip: &str, port: u16, udp: bool, log: &std::path::Path) -> Result<Hold> {
    let mode = if udp { "uhold" } else { "hold" };
    let cmd = format!("exec {} {mode} {ip} {port}", tcpx_bin().display());
    let mut child = in_netns(&ns.name, &cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    track(&child);
    let stdin = child.stdin.take().context("stdin")?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut h = Hold { child, stdin, out, id: String::new(), port: 0 };
    let mut first = String::new();
    h.out.read_line(&mut first)?;
    match first.split_whitespace().collect::<Vec<_>>()[..] {
        ["id", id, p] => {
            h.id = id.to_string();
            h.port = p.parse().with_context(|| format!("{mode}: {first:?}"))?;
            Ok(h)
        }
        _ => bail!("{mode} to {ip}:{port}: {}", first.trim()),
    }
}

/// `tcpx cps` or `ucps` from `ns`: `n` exchanges with ip:port, counted by what the server said.
pub fn tally(ns: &Netns, mode: &str, ip: &str, port: u16, n: u64) -> Result<Tally> {
    let cmd = format!("{} {mode} {ip} {port} {n}", tcpx_bin().display());
    let out = in_netns(&ns.name, &cmd).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{mode} to {ip}:{port} failed: {}after {stdout}", String::from_utf8_lossy(&out.stderr));
    }
    let line = stdout.lines().last().unwrap_or("{}");
    serde_json::from_str(line).with_context(|| format!("tally {line:?}"))
}

impl Cluster {
    /// `n` sequential TCP connections from external host `ext` to `node`'s address, `port`.
    pub fn mesh_cps(&self, ext: &str, node: &str, port: u16, n: u64) -> Result<Tally> {
        tally(&self.external(ext).ns, "cps", &self.address_of(node), port, n)
    }

    /// `n` UDP requests (each from a new source port) from `ext` to `node`'s address, `port`;
    /// every reply must come from that address and port.
    pub fn mesh_ucps(&self, ext: &str, node: &str, port: u16, n: u64) -> Result<Tally> {
        tally(&self.external(ext).ns, "ucps", &self.address_of(node), port, n)
    }

    /// A TCP connection from `ext` to `node`'s address, `port`, held open.
    pub fn mesh_hold(&self, ext: &str, node: &str, port: u16) -> Result<Hold> {
        let log = self.logs.join(format!("hold-{ext}-{node}-{port}.log"));
        hold(&self.external(ext).ns, &self.address_of(node), port, false, &log)
    }

    /// A connected UDP socket from `ext` to `node`'s address, `port`.
    pub fn mesh_uhold(&self, ext: &str, node: &str, port: u16) -> Result<Hold> {
        let log = self.logs.join(format!("uhold-{ext}-{node}-{port}.log"));
        hold(&self.external(ext).ns, &self.address_of(node), port, true, &log)
    }

    /// `tcpx id PORT NAME` in the node's own namespace (the host's own service, no container),
    /// answering on the node's loopback when it returns.
    pub fn start_host_id_server(&mut self, node: &str, port: u16, name: &str) -> Result<()> {
        let ns = &self.nodes[node];
        let log = std::fs::File::create(self.logs.join(format!("host-id-{node}-{port}.log")))?;
        let child = spawn_in(&ns.name, &format!("{} id {port} {name}", tcpx_bin().display()), log)?;
        self.servers.push(Proc(child));
        let probe = format!("{} cps 127.0.0.1 {port} 1", tcpx_bin().display());
        if !wait_for(Duration::from_secs(10), || ns.ok(&probe)) {
            bail!("host server on {node} does not answer on port {port}");
        }
        Ok(())
    }
}
