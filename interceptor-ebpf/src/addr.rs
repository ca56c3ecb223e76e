//! Addresses as the programs handle them: four u32 words holding network-order bytes (what a
//! 32-bit load of `user_ip6`/`remote_ip6` gives), IPv4 in word 0. Comparisons are written
//! word by word: the BPF target has no memcmp.
use interceptor_common::{AF_INET, AF_INET6, CidrData, CidrKey};

/// A destination or source: family (AF_INET/AF_INET6), address words, port in host order.
#[derive(Clone, Copy)]
pub struct Endpoint {
    pub family: u16,
    pub addr: [u32; 4],
    pub port: u16,
}

impl Endpoint {
    #[inline(always)]
    pub const fn v4(ip: u32, port: u16) -> Self {
        Self { family: AF_INET, addr: [ip, 0, 0, 0], port }
    }

    #[inline(always)]
    pub const fn v6(ip: [u32; 4], port: u16) -> Self {
        Self { family: AF_INET6, addr: ip, port }
    }

    /// An IPv6 address as a socket reports it: v4-mapped addresses (::ffff:a.b.c.d) become
    /// IPv4, because on the wire (and for iptables) they are IPv4.
    #[inline(always)]
    pub fn from_v6_socket(ip: [u32; 4], port: u16) -> Self {
        if is_v4_mapped(&ip) { Self::v4(ip[3], port) } else { Self::v6(ip, port) }
    }

    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        words_to_bytes(self.addr)
    }

    /// Whether this is the loopback address of the chains' `-d 127.0.0.1/32` (`::1/128`).
    #[inline(always)]
    pub fn is_loopback_host(&self) -> bool {
        if self.family == AF_INET {
            self.addr[0] == LOOPBACK4
        } else {
            self.addr[0] == 0 && self.addr[1] == 0 && self.addr[2] == 0 && self.addr[3] == LOOPBACK6_LAST
        }
    }

    /// The LPM key for a full-length lookup of this address in `policy_id`'s entries.
    #[inline(always)]
    pub fn lpm_key(&self, policy_id: u32) -> aya_ebpf::maps::lpm_trie::Key<CidrData> {
        let bits = if self.family == AF_INET { 32 } else { 128 };
        aya_ebpf::maps::lpm_trie::Key::new(
            CidrKey::HEADER_BITS + bits,
            CidrData::new(policy_id, self.family, self.bytes()),
        )
    }
}

/// `struct sockaddr_in`: what bpf_bind() takes and SO_ORIGINAL_DST answers.
#[repr(C)]
pub struct SockaddrIn {
    pub family: u16,
    /// Network byte order.
    pub port: u16,
    pub addr: u32,
    pub zero: [u8; 8],
}

impl SockaddrIn {
    #[inline(always)]
    pub const fn new(addr: u32, port_be: u16) -> Self {
        Self { family: AF_INET, port: port_be, addr, zero: [0; 8] }
    }
}

/// `struct sockaddr_in6`.
#[repr(C)]
pub struct SockaddrIn6 {
    pub family: u16,
    /// Network byte order.
    pub port: u16,
    pub flowinfo: u32,
    pub addr: [u32; 4],
    pub scope_id: u32,
}

impl SockaddrIn6 {
    #[inline(always)]
    pub const fn new(addr: [u32; 4], port_be: u16) -> Self {
        Self { family: AF_INET6, port: port_be, flowinfo: 0, addr, scope_id: 0 }
    }
}

/// 127.0.0.1 as a 32-bit load of network-order bytes yields it on a little-endian host.
pub const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// The last word of ::1.
pub const LOOPBACK6_LAST: u32 = u32::from_ne_bytes([0, 0, 0, 1]);
/// The third word of a v4-mapped address (::ffff:0:0/96).
pub const V4_MAPPED_WORD2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[inline(always)]
pub fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD2
}

#[inline(always)]
pub fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, both plain integers.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

#[inline(always)]
pub fn bytes_to_words(b: [u8; 16]) -> [u32; 4] {
    // SAFETY: same size, both plain integers.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(b) }
}

/// Converts a 16-bit port from the network-order value a context field holds in its low
/// 16 bits (`user_port`, `bpf_sock.dst_port`).
#[inline(always)]
pub fn port_from_be_low16(v: u32) -> u16 {
    u16::from_be(v as u16)
}

#[inline(always)]
pub fn port_to_be_low16(port: u16) -> u32 {
    port.to_be() as u32
}

/// The key of a connection as seen from one end (`local` = that end's own address).
#[inline(always)]
pub fn conn_key(netns_cookie: u64, local: &Endpoint, remote: &Endpoint) -> interceptor_common::ConnKey {
    interceptor_common::ConnKey {
        netns_cookie,
        local_addr: words_to_bytes(local.addr),
        remote_addr: words_to_bytes(remote.addr),
        local_port: local.port,
        remote_port: remote.port,
        family: local.family as u32,
    }
}
