//! Counters: why a packet was dropped, and what was forwarded. Indexes into per-CPU arrays.
//! Each enum, its count, its list and its names come from one table (`counters!`), so the
//! datapath, the agent and the CLI can never disagree on a reason.

/// Declares a `#[repr(u32)]` counter enum from one table of `Variant = index, "name"`, with
/// `COUNT` (array size: highest index + 1), `ALL` (in table order) and `name()`.
macro_rules! counters {
    ($(#[$m:meta])* pub enum $ty:ident { $($(#[$vm:meta])* $v:ident = $i:literal, $name:literal;)+ }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $ty { $($(#[$vm])* $v = $i,)+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v,)+];
            /// Size of the per-CPU counter array (highest index + 1).
            pub const COUNT: u32 = max_of(&[$($i,)+]) + 1;
            /// Stable name used by the CLI and the tests.
            pub const fn name(self) -> &'static str {
                match self { $($ty::$v => $name,)+ }
            }
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.name() == name)
            }
        }
    };
}

const fn max_of(v: &[u32]) -> u32 {
    let (mut i, mut max) = (0, 0);
    while i < v.len() {
        if v[i] > max {
            max = v[i];
        }
        i += 1;
    }
    max
}

counters! {
    /// Every drop in the datapath has exactly one of these reasons. Index 0 is reserved.
    pub enum DropReason {
        /// Packet shorter than the headers it claims (or than the path needs).
        Truncated = 1, "truncated";
        /// IPv4 header length below 5 words.
        BadIpHeaderLen = 2, "bad-ip-header-len";
        /// Outer IPv4 header with options (IHL > 5) on VXLAN to our port.
        OuterIpOptions = 3, "outer-ip-options";
        /// IPv4 total length / UDP length inconsistent with the frame or too short for what it
        /// must carry (reads are bounded by these lengths, never by the frame).
        BadLength = 4, "bad-length";
        /// Outer IPv4 fragment addressed to our VXLAN port (VTEPs do not reassemble).
        OuterFragment = 5, "outer-fragment";
        /// VXLAN header without the I flag.
        VxlanNoIFlag = 6, "vxlan-no-i-flag";
        /// VXLAN network identifier that no network here uses.
        UnknownVni = 7, "unknown-vni";
        /// VLAN-tagged inner frame (not allowed on the overlay).
        InnerVlan = 8, "inner-vlan";
        /// Inner frame that is neither IPv4 nor ARP.
        InnerNotIpv4 = 9, "inner-not-ipv4";
        /// Decapsulated frame whose destination is not an endpoint on this node.
        DecapNotLocal = 10, "decap-not-local";
        /// Container sent to an address that is not an endpoint of its network.
        UnknownDestination = 11, "unknown-destination";
        /// Container sent something other than IPv4 or ARP (IPv6, LLDP, ...).
        NotIpv4 = 12, "not-ipv4";
        /// ARP request for an address that is not an endpoint of the sender's network.
        ArpUnknownTarget = 13, "arp-unknown-target";
        /// ARP that is not Ethernet/IPv4, or not a request.
        ArpUnsupported = 14, "arp-unsupported";
        /// Container used a source IPv4 address that is not its own.
        SpoofedSource = 15, "spoofed-source";
        /// Packet on a container interface the maps do not know (stale attach).
        UnknownInterface = 16, "unknown-interface";
        /// Datapath configuration missing (agent never configured this node).
        NoConfig = 17, "no-config";
        /// The kernel FIB has no route to the peer's VTEP.
        FibLookupFailed = 18, "fib-lookup-failed";
        /// Packet (or, for GSO, each segment) would exceed the underlay MTU once encapsulated.
        TooBig = 19, "too-big";
        /// A kernel helper refused to resize or rewrite the packet.
        HelperFailed = 20, "helper-failed";
        /// Broadcast or multicast IPv4 (the overlay has no flooding).
        Broadcast = 21, "broadcast";
        /// VXLAN from an outer source address that is no node of the cluster.
        UnknownVtep = 22, "unknown-vtep";
        /// VXLAN from a cluster node that does not host the inner source endpoint.
        VtepMismatch = 23, "vtep-mismatch";
        /// Inner source address that is no endpoint of the frame's network.
        UnknownInnerSource = 24, "unknown-inner-source";
        /// Inner destination MAC that is not the destination endpoint's MAC.
        InnerMacMismatch = 25, "inner-mac-mismatch";
        /// Container sent with a source MAC that is not its own.
        SpoofedMac = 26, "spoofed-mac";
        /// To a VIP on a port and protocol no service balances.
        NoService = 27, "no-service";
        /// New connection to a service none of whose backends takes new ones.
        NoBackend = 28, "no-backend";
        /// A tracked flow's backend was removed and no reset could be sent in its place.
        BackendGone = 29, "backend-gone";
        /// The conntrack map refused an entry.
        ConntrackFull = 30, "conntrack-full";
        /// To a VIP with IP options, as a fragment, or neither TCP, UDP nor ICMP echo; to a
        /// published port with IP options or as a fragment.
        VipUnsupported = 31, "vip-unsupported";
        /// Routing mesh: a backend's packet to an outside address, or such a packet returned
        /// to its entry node, that belongs to no tracked mesh flow.
        MeshNoFlow = 32, "mesh-no-flow";
        /// Routing mesh in XDP: no next hop towards the backend's node is cached or resolvable.
        NoNextHop = 33, "no-next-hop";
        /// docker_gwbridge with `icc = false`: a container sent to another container over the
        /// bridge (an address of the bridge's subnet other than the gateway, a MAC other than
        /// the bridge's, ARP for anything but the gateway).
        IccBlocked = 34, "icc-blocked";
    }
}

counters! {
    /// What the datapath did with packets it did not drop.
    pub enum FwdCounter {
        /// Container to a container on the same node, redirected veth to veth.
        LocalDelivery = 0, "local-delivery";
        /// Container to a remote node, VXLAN-encapsulated, next hop from the FIB helper.
        Encap = 1, "encap";
        /// Encapsulated, next hop resolved by the kernel (neighbour not cached yet, or IP
        /// forwarding off on the underlay so the FIB helper declines).
        EncapNeighResolve = 2, "encap-kernel-route";
        /// Encapsulated, next hop from the agent's cache (no FIB lookup).
        EncapCached = 7, "encap-cached";
        /// VXLAN from the underlay, decapsulated to a local container.
        Decap = 3, "decap";
        /// ARP request answered from the maps.
        ArpReply = 4, "arp-reply";
        /// Underlay traffic that is not ours, passed to the host untouched.
        PassHost = 5, "pass-host";
        /// ICMP "fragmentation needed" sent back to a container whose DF packet was too big.
        IcmpFragNeeded = 6, "icmp-frag-needed";
        /// New connection to a VIP: backend picked by the scheduler, DNATed.
        LbNew = 8, "lb-new";
        /// Packet of a tracked flow to a VIP, DNATed to its backend.
        LbForward = 9, "lb-forward";
        /// Reply from a backend, reverse-NATed to the VIP.
        LbReverse = 10, "lb-reverse";
        /// Ping to a VIP, answered.
        LbEchoReply = 11, "lb-echo-reply";
        /// TCP to a removed backend: the client got a reset from the VIP.
        LbReset = 12, "lb-reset";
        /// UDP to a removed backend: the client got ICMP port unreachable from the VIP.
        IcmpPortUnreachable = 13, "icmp-port-unreachable";
        /// Mid-flow packet with no conntrack entry: the hash picked its backend again.
        LbRepick = 14, "lb-repick";
        /// New connection to a published port: backend picked, DNATed.
        MeshNew = 15, "mesh-new";
        /// Packet of a tracked flow to a published port, DNATed to its backend.
        MeshForward = 16, "mesh-forward";
        /// Of those (new or tracked), sent on the ingress network to the backend's node.
        MeshEncap = 17, "mesh-encap";
        /// Reply reverse-NATed to this node's address and published port, sent to the client.
        MeshReverse = 18, "mesh-reverse";
        /// A local backend's reply sent back to the flow's entry node.
        MeshReturn = 19, "mesh-return";
        /// Routing-mesh packet from another node's entry accepted for a local backend.
        MeshIn = 20, "mesh-in";
        /// From a container's gwbridge interface, passed to the node (outside traffic, masqueraded).
        GwOut = 21, "gw-out";
        /// A host-mode published port's reply on the gwbridge, reverse-NATed and sent to the client.
        GwReverse = 22, "gw-reverse";
        /// A container's TCP/UDP to the outside, masqueraded in eBPF and sent out of the underlay.
        GwSnat = 23, "gw-snat";
        /// A reply to a masqueraded flow, translated back and delivered into its container.
        GwUnsnat = 24, "gw-unsnat";
        /// A new flow to the outside found every SNAT port it tried taken (busy peer): it takes the
        /// kernel path (nftables masquerade) for its whole life.
        GwSnatFull = 25, "gw-snat-full";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_consistent() {
        assert_eq!(DropReason::COUNT, 35);
        assert_eq!(DropReason::ALL.len(), 34);
        assert_eq!(FwdCounter::COUNT as usize, FwdCounter::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "drop reasons are dense from 1 (0 is reserved)");
            assert_eq!(DropReason::from_name(r.name()), Some(*r));
        }
        for (i, a) in DropReason::ALL.iter().enumerate() {
            assert!(DropReason::ALL[i + 1..].iter().all(|b| a.name() != b.name()), "names are unique");
        }
    }
}
