//! How large a QUIC packet a direct path may carry.
//!
//! quinn searches a path's MTU up to 1452 bytes of UDP payload by default: what fits a
//! 1500-byte Ethernet link under IPv6 headers, so right for the internet. A route with a larger
//! MTU (loopback: 65536; a LAN with jumbo frames: 9000) carries more per packet, and nearly
//! all of a tunnel's CPU is spent per packet, not per byte (seal, open, syscalls, quinn's
//! bookkeeping): measured on loopback, 256 MiB went at 0.57× the CPU and 1.85× the speed with
//! packets of 4000 bytes instead of 1452. So a connection dialled or accepted on a real address
//! searches up to its route's MTU (capped at [`MAX_PAYLOAD`]); quinn's path MTU discovery
//! still proves every size before using it, and falls back if a larger packet is lost. A peer
//! on this host's loopback is the exception: the loopback route is the whole path, so it starts
//! at that size and probes nothing ([`LargePath::on_host`]).
//!
//! A connection on a virtual address (relayed, or punched after a relay) keeps quinn's default:
//! its path can move to a relay at any moment, and a relay carries at most 1452 bytes per
//! datagram ([`crate::proto::channel::MAX_LIMIT`]). So does a peer on a public address: a
//! cloud VM's NIC may have a 9001-byte MTU while the internet beyond carries 1500, and every
//! connection would spend lost probes finding that out. Only loopback, private and link-local
//! peers (the same host, LAN or VPC) search past 1452.

use std::net::{IpAddr, SocketAddr};

/// Largest UDP payload keynet sends or receives. quinn sends up to 10 packets in one segmented
/// send, and the kernel takes at most 64 KiB in one: 10 × 6400 bytes plus headers fits.
pub const MAX_PAYLOAD: u16 = 6400;

/// quinn's own upper bound of the search (a 1500-byte link under IPv6 headers).
pub const INTERNET_PAYLOAD: u16 = 1452;

/// Bytes the kernel delivers at most in one coalesced (GRO) read: a receive slot needs this.
pub const GRO_BYTES: usize = 64 * 1024;

/// The MTU of the route toward `to`, as the kernel has it (Linux: `IP_MTU` / `IPV6_MTU` of a
/// socket connected there; nothing is sent). `None` where unknown.
pub fn route_mtu(to: SocketAddr) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let probe = super::route::probe(to)?;
        let (level, name) = if to.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_MTU)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_MTU)
        };
        let mut mtu: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `mtu` and `len` are valid for the kernel to write an int into.
        let r = unsafe {
            libc::getsockopt(
                probe.as_raw_fd(),
                level,
                name,
                (&mut mtu as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0 && mtu > 0).then_some(mtu as u32)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = to;
        None
    }
}

/// The UDP payload a route of `mtu` bytes carries toward `to` (IP and UDP headers off).
fn payload_of(mtu: u32, to: SocketAddr) -> u32 {
    let v4 = match to {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    mtu.saturating_sub(if v4 { 20 + 8 } else { 40 + 8 })
}

/// An Ethernet link's MTU: a route no larger keeps quinn's default search (the internet
/// beyond it is rarely larger, often smaller).
pub const ETHERNET_MTU: u32 = 1500;

/// Whether `to` may search past the internet's bound: a real (not virtual) address on this
/// host, a private network or a link.
pub fn may_search_large(to: SocketAddr) -> bool {
    if super::paths::is_virtual(&to) {
        return false;
    }
    let v4 = match to.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    match (v4, to.ip()) {
        (Some(v4), _) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        (None, IpAddr::V6(v6)) => {
            // fc00::/7 (unique local) and fe80::/10 (link-local), by hand for Rust 1.80.
            let first = v6.segments()[0];
            v6.is_loopback() || first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
        (None, IpAddr::V4(_)) => false,
    }
}

/// The upper bound of the MTU search for a connection with `to` over a route of `mtu` bytes:
/// `None` (quinn's default) unless the route is larger than Ethernet and `to` may search past
/// it ([`may_search_large`]).
pub fn bound_for(to: SocketAddr, mtu: Option<u32>) -> Option<u16> {
    let mtu = mtu.filter(|m| *m > ETHERNET_MTU)?;
    if !may_search_large(to) {
        return None;
    }
    let payload = payload_of(mtu, to).min(u32::from(MAX_PAYLOAD)) as u16;
    (payload > INTERNET_PAYLOAD).then_some(payload)
}

/// A connection whose route carries packets larger than the internet's: how it differs from
/// quinn's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargePath {
    /// The largest UDP payload its MTU search may reach.
    pub bound: u16,
    /// The peer is on this host (a loopback address): the route's MTU is the path's, so the
    /// connection starts at `bound` and sends no probe.
    pub on_host: bool,
}

/// The search stops once a probe would change the MTU by less than this (quinn: 20 bytes,
/// nine probes each way from 1200 to 6400; with this, four: 3926, 5163, 5781, 6400, the last
/// being the bound itself). Measured with 500 connections opened at once on loopback: with
/// nine probes, opening took 0.22 ms per connection more than without the large search; with
/// four, the difference was within the noise.
const MINIMUM_CHANGE: u16 = 400;

impl LargePath {
    /// Sets `transport`'s packet sizes. A peer on this host starts at `bound` and probes
    /// nothing: the loopback route is the whole path. Probing cost about 0.3 ms of CPU (both
    /// ends) and 0.2 ms of wall time per connection (quinn-proto parses each padding byte of the
    /// four probes, about 21 KB each way, as a frame of its own): with 500 connections opened at
    /// once on loopback, 0.91 → 0.72 ms of wall time and 1.63 → 1.30 ms of CPU per connection. Any other peer starts at
    /// 1452 bytes (any Ethernet hop carries them; a route larger than Ethernet has no smaller
    /// hop of its own) and searches up to `bound`. Either way quinn falls back to 1200 if
    /// large packets are lost, and searches again later.
    pub fn configure(&self, transport: &mut quinn::TransportConfig) {
        let mut d = quinn::MtuDiscoveryConfig::default();
        d.upper_bound(self.bound).minimum_change(MINIMUM_CHANGE);
        let start = if self.on_host {
            self.bound
        } else {
            INTERNET_PAYLOAD
        };
        transport.initial_mtu(start).mtu_discovery_config(Some(d));
    }

    /// The initial congestion window: ten packets of the largest size, as TCP starts on the
    /// same route (ten segments of its MSS: 640 KiB on loopback). quinn's 12,000 bytes are
    /// under two such packets: one unacknowledged MTU probe then holds back every other
    /// packet, keep-alives and a tunnel's FIN included, until the probe is declared lost.
    pub fn initial_window(&self) -> u64 {
        10 * u64::from(self.bound)
    }
}

/// The large path toward `to`, if its route is one ([`bound_for`]); `None` keeps quinn's
/// defaults.
pub fn large_path_toward(to: SocketAddr) -> Option<LargePath> {
    // The cheap check first: the route lookup costs a socket and two system calls.
    if !may_search_large(to) {
        return None;
    }
    let bound = bound_for(to, route_mtu(to))?;
    Some(LargePath {
        bound,
        // IPv4-mapped too: nothing but the loopback route lies between.
        on_host: to.ip().to_canonical().is_loopback(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_address_on_a_large_route_searches_past_the_internet_bound() {
        let lo: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(bound_for(lo, Some(65536)), Some(MAX_PAYLOAD));
        assert_eq!(
            bound_for(lo, Some(9000)),
            Some(9000 - 28).map(|b| b.min(MAX_PAYLOAD))
        );
        assert_eq!(bound_for(lo, Some(4000)), Some(4000 - 28));
        assert_eq!(bound_for(lo, Some(1500)), None);
        assert_eq!(bound_for(lo, Some(1492)), None);
        assert_eq!(bound_for(lo, None), None);
        let v6: SocketAddr = "[fd12::1]:4433".parse().unwrap();
        assert_eq!(bound_for(v6, Some(3000)), Some(3000 - 48));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4433".parse().unwrap();
        assert_eq!(bound_for(mapped, Some(3000)), Some(3000 - 28));
        // A relayed peer's virtual address: its path may move to a relay.
        let virtual_addr: SocketAddr = "240.0.0.7:1".parse().unwrap();
        assert_eq!(bound_for(virtual_addr, Some(65536)), None);
        // A public peer behind a large NIC: the internet beyond carries 1500.
        for public in [
            "203.0.113.9:4433",
            "[2001:db8::1]:4433",
            "[::ffff:8.8.8.8]:53",
        ] {
            let public: SocketAddr = public.parse().unwrap();
            assert_eq!(bound_for(public, Some(9001)), None, "{public}");
        }
        for local in [
            "192.168.1.2:1",
            "172.16.0.1:1",
            "169.254.1.1:1",
            "[fe80::1]:1",
            "[::1]:1",
        ] {
            assert!(may_search_large(local.parse().unwrap()), "{local}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_routes_report_their_large_mtu() {
        let mtu = route_mtu("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(mtu > 1500, "loopback MTU {mtu}");
        let large = large_path_toward("127.0.0.1:9".parse().unwrap()).unwrap();
        assert_eq!(large.bound, MAX_PAYLOAD);
        assert!(large.on_host);
        let mapped = large_path_toward("[::ffff:127.0.0.1]:9".parse().unwrap());
        assert!(mapped.is_some_and(|l| l.on_host));
        assert_eq!(large.initial_window(), 64_000);
    }
}
