//! Byte-exact frames for BPF_PROG_TEST_RUN, written out field by field (independently of the
//! datapath's own code) so a golden comparison means something.

pub const MAC_A: [u8; 6] = [0x02, 0x42, 10, 0, 9, 3];
pub const MAC_B: [u8; 6] = [0x02, 0x42, 10, 0, 9, 4];
pub const MAC_C: [u8; 6] = [0x02, 0x42, 10, 0, 9, 5];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v
}

/// IPv4 header (no options) with a valid checksum. `frags` is the flags+offset field.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize, frags: u16, tos: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frags.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    h
}

/// A TCP-looking L4 payload: ports then filler (checksums are not the datapath's business).
pub fn tcp_ish(sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(20)];
    v[0..2].copy_from_slice(&sport.to_be_bytes());
    v[2..4].copy_from_slice(&dport.to_be_bytes());
    v[12] = 0x50;
    for (i, b) in v.iter_mut().enumerate().skip(20) {
        *b = i as u8;
    }
    v
}

/// An inner frame as container A sends it (A's MAC to B's MAC): Ethernet + IPv4 + TCP-ish.
pub fn inner_tcp(src_ip: [u8; 4], dst_ip: [u8; 4], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    inner_tcp_macs(MAC_B, MAC_A, src_ip, dst_ip, sport, dport, payload)
}

/// An inner frame with the given Ethernet destination and source.
pub fn inner_tcp_macs(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    sport: u16,
    dport: u16,
    payload: usize,
) -> Vec<u8> {
    let l4 = tcp_ish(sport, dport, payload);
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(src_ip, dst_ip, 6, l4.len(), 0x4000, 0));
    f.extend(l4);
    f
}

pub fn vxlan_hdr(vni: u32, flags: u8) -> Vec<u8> {
    vec![flags, 0, 0, 0, (vni >> 16) as u8, (vni >> 8) as u8, vni as u8, 0]
}

/// The full underlay frame carrying `inner` in VXLAN, as a standard VTEP sends it.
// One argument per header field a test varies: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn vxlan_frame(
    outer_dst_mac: [u8; 6],
    outer_src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut f = eth(outer_dst_mac, outer_src_mac, 0x0800);
    let udp_payload = 8 + inner.len();
    f.extend(ipv4(src, dst, 17, 8 + udp_payload, 0x4000, 0));
    f.extend(udp(sport, dport, udp_payload));
    f.extend(vxlan_hdr(vni, 0x08));
    f.extend_from_slice(inner);
    f
}

pub fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = eth([0xff; 6], sha, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

/// Rewrite IPv4 total length (and checksum) and UDP length of an underlay frame so that it
/// ends at `len` bytes: a consistent frame that is simply too short.
pub fn fix_lengths(frame: &mut [u8], len: usize) {
    if len >= 34 {
        let tot = (len - 14) as u16;
        frame[16..18].copy_from_slice(&tot.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let c = csum(&frame[14..34]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
    }
    if len >= 42 {
        frame[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    }
}

/// Internet checksum of an L4 segment with its IPv4 pseudo header (source, destination,
/// protocol, length): 0 when the segment's own checksum field is right.
pub fn l4_csum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let mut v = Vec::with_capacity(12 + l4.len());
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&[0, proto]);
    v.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    v.extend_from_slice(l4);
    csum(&v)
}

/// A TCP segment (20-byte header, window 65535) with a valid checksum for `src` -> `dst`.
// One argument per header field a test varies.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 0x50;
    h[13] = flags;
    h[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    h.extend_from_slice(payload);
    let c = l4_csum(src, dst, 6, &h);
    h[16..18].copy_from_slice(&c.to_be_bytes());
    h
}

/// A UDP datagram for `src` -> `dst`: with `checksum`, a valid one (a computed 0 is sent as
/// 0xffff, RFC 768), else 0 (none).
pub fn udp_dgram(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8], checksum: bool) -> Vec<u8> {
    let mut d = udp(sport, dport, payload.len());
    d.extend_from_slice(payload);
    if checksum {
        let c = match l4_csum(src, dst, 17, &d) {
            0 => 0xffff,
            c => c,
        };
        d[6..8].copy_from_slice(&c.to_be_bytes());
    }
    d
}

/// An ICMP message with a valid checksum: type, code, the 4 bytes after the checksum, body.
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = csum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Ethernet + IPv4 (DF, TTL 64, no options) + `l4`.
pub fn ip_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend(ipv4(src, dst, proto, l4.len(), 0x4000, 0));
    f.extend_from_slice(l4);
    f
}
