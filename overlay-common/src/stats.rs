//! Counters: why a packet was dropped, and what was forwarded. Indexes into per-CPU arrays.

/// Every drop in the datapath has exactly one of these reasons. Index 0 is reserved.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Packet shorter than the headers it claims (or than the path needs).
    Truncated = 1,
    /// IPv4 header length below 5 words.
    BadIpHeaderLen = 2,
    /// Outer IPv4 header with options (IHL > 5) on VXLAN to our port.
    OuterIpOptions = 3,
    /// IPv4 total length / UDP length inconsistent with the frame.
    BadLength = 4,
    /// Outer IPv4 fragment addressed to our VXLAN port (VTEPs do not reassemble).
    OuterFragment = 5,
    /// VXLAN header without the I flag.
    VxlanNoIFlag = 6,
    /// VXLAN network identifier that no network here uses.
    UnknownVni = 7,
    /// VLAN-tagged inner frame (not allowed on the overlay).
    InnerVlan = 8,
    /// Inner frame that is neither IPv4 nor ARP.
    InnerNotIpv4 = 9,
    /// Decapsulated frame whose destination is not an endpoint on this node.
    DecapNotLocal = 10,
    /// Container sent to an address that is not an endpoint of its network.
    UnknownDestination = 11,
    /// Container sent something other than IPv4 or ARP (IPv6, LLDP, ...).
    NotIpv4 = 12,
    /// ARP request for an address that is not an endpoint of the sender's network.
    ArpUnknownTarget = 13,
    /// ARP that is not Ethernet/IPv4, or not a request.
    ArpUnsupported = 14,
    /// Container used a source IPv4 address that is not its own.
    SpoofedSource = 15,
    /// Packet on a container interface the maps do not know (stale attach).
    UnknownInterface = 16,
    /// Datapath configuration missing (agent never configured this node).
    NoConfig = 17,
    /// The kernel FIB has no route to the peer's VTEP.
    FibLookupFailed = 18,
    /// Packet would exceed the underlay MTU after encapsulation.
    TooBig = 19,
    /// A kernel helper refused to resize or rewrite the packet.
    HelperFailed = 20,
    /// Broadcast or multicast IPv4 (the overlay has no flooding).
    Broadcast = 21,
}

impl DropReason {
    /// Size of the per-CPU drop counter array (highest reason + 1).
    pub const COUNT: u32 = 22;

    pub const ALL: [DropReason; 21] = [
        Self::Truncated,
        Self::BadIpHeaderLen,
        Self::OuterIpOptions,
        Self::BadLength,
        Self::OuterFragment,
        Self::VxlanNoIFlag,
        Self::UnknownVni,
        Self::InnerVlan,
        Self::InnerNotIpv4,
        Self::DecapNotLocal,
        Self::UnknownDestination,
        Self::NotIpv4,
        Self::ArpUnknownTarget,
        Self::ArpUnsupported,
        Self::SpoofedSource,
        Self::UnknownInterface,
        Self::NoConfig,
        Self::FibLookupFailed,
        Self::TooBig,
        Self::HelperFailed,
        Self::Broadcast,
    ];

    /// Stable name used by the CLI and the tests.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadIpHeaderLen => "bad-ip-header-len",
            Self::OuterIpOptions => "outer-ip-options",
            Self::BadLength => "bad-length",
            Self::OuterFragment => "outer-fragment",
            Self::VxlanNoIFlag => "vxlan-no-i-flag",
            Self::UnknownVni => "unknown-vni",
            Self::InnerVlan => "inner-vlan",
            Self::InnerNotIpv4 => "inner-not-ipv4",
            Self::DecapNotLocal => "decap-not-local",
            Self::UnknownDestination => "unknown-destination",
            Self::NotIpv4 => "not-ipv4",
            Self::ArpUnknownTarget => "arp-unknown-target",
            Self::ArpUnsupported => "arp-unsupported",
            Self::SpoofedSource => "spoofed-source",
            Self::UnknownInterface => "unknown-interface",
            Self::NoConfig => "no-config",
            Self::FibLookupFailed => "fib-lookup-failed",
            Self::TooBig => "too-big",
            Self::HelperFailed => "helper-failed",
            Self::Broadcast => "broadcast",
        }
    }
}

/// What the datapath did with packets it did not drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwdCounter {
    /// Container to a container on the same node, redirected veth to veth.
    LocalDelivery = 0,
    /// Container to a remote node, VXLAN-encapsulated.
    Encap = 1,
    /// Encapsulated, next hop resolved by the kernel (neighbour not cached yet, or IP
    /// forwarding off on the underlay so the FIB helper declines).
    EncapNeighResolve = 2,
    /// VXLAN from the underlay, decapsulated to a local container.
    Decap = 3,
    /// ARP request answered from the maps.
    ArpReply = 4,
    /// Underlay traffic that is not ours, passed to the host untouched.
    PassHost = 5,
    /// ICMP "fragmentation needed" sent back to a container whose DF packet was too big.
    IcmpFragNeeded = 6,
}

impl FwdCounter {
    pub const COUNT: u32 = 7;
    pub const ALL: [FwdCounter; 7] = [
        Self::LocalDelivery,
        Self::Encap,
        Self::EncapNeighResolve,
        Self::Decap,
        Self::ArpReply,
        Self::PassHost,
        Self::IcmpFragNeeded,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            Self::LocalDelivery => "local-delivery",
            Self::Encap => "encap",
            Self::EncapNeighResolve => "encap-kernel-route",
            Self::Decap => "decap",
            Self::ArpReply => "arp-reply",
            Self::PassHost => "pass-host",
            Self::IcmpFragNeeded => "icmp-frag-needed",
        }
    }
}
