//! VXLAN wire constants (RFC 7348) and the UDP source port choice.

pub const DEFAULT_PORT: u16 = 4789;
/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const ENCAP_OVERHEAD: u32 = 14 + 20 + 8 + 8;
/// The I flag: the VNI field is valid. Reserved bits are sent as zero, ignored on receive.
pub const FLAG_I: u8 = 0x08;
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Source ports spread over the dynamic range, as Linux's vxlan does by default.
pub const SRC_PORT_MIN: u16 = 49152;
pub const SRC_PORT_MAX: u16 = 65535;

#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of the inner flow. Inputs are taken as read from the packet (network order);
/// `ports` is the 4 bytes after the IP header for TCP/UDP, 0 otherwise.
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, proto: u8, ports: u32) -> u32 {
    let mut h = fmix32(saddr ^ 0x9e37_79b9);
    h = fmix32(h ^ daddr);
    h = fmix32(h ^ ports);
    fmix32(h ^ proto as u32)
}

/// UDP source port for a flow: stable per flow, within [SRC_PORT_MIN, SRC_PORT_MAX], so the
/// underlay's ECMP spreads flows. Host order.
#[inline(always)]
pub const fn src_port(hash: u32) -> u16 {
    let range = (SRC_PORT_MAX - SRC_PORT_MIN) as u64 + 1;
    SRC_PORT_MIN + ((hash as u64 * range) >> 32) as u16
}

/// Docker's rule for an endpoint MAC: 02:42 followed by the four bytes of its IPv4.
pub const fn default_mac(ip: [u8; 4]) -> [u8; 6] {
    [0x02, 0x42, ip[0], ip[1], ip[2], ip[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_flow_same_port_and_in_range() {
        let h = flow_hash(0x0a00_0903, 0x0a00_0904, 6, 0x1234_0050);
        assert_eq!(src_port(h), src_port(flow_hash(0x0a00_0903, 0x0a00_0904, 6, 0x1234_0050)));
        for sp in 0..5000u32 {
            let p = src_port(flow_hash(1, 2, 17, sp << 16 | 80));
            assert!(p >= SRC_PORT_MIN);
        }
    }

    #[test]
    fn ports_spread_over_many_flows() {
        // 4096 flows differing only in the source port: expect most buckets of 64 used.
        let mut buckets = [0u32; 64];
        for sp in 0..4096u32 {
            let p = src_port(flow_hash(0x0a000903, 0x0a000904, 6, (sp + 30000) << 16 | 80));
            buckets[((p - SRC_PORT_MIN) / 256) as usize] += 1;
        }
        let max = *buckets.iter().max().unwrap();
        let min = *buckets.iter().min().unwrap();
        // Uniform would be 64 per bucket; allow generous noise but catch a constant or a narrow hash.
        assert!(min >= 30 && max <= 110, "uneven spread: min {min} max {max}");
    }

    #[test]
    fn docker_mac_rule() {
        assert_eq!(default_mac([10, 0, 9, 3]), [0x02, 0x42, 10, 0, 9, 3]);
    }
}
