//! Address helpers every layer shares (a leaf: it depends on nothing in the crate).

use std::net::{IpAddr, SocketAddr};

/// The one form of an address used as a key everywhere: a dual-stack socket reports IPv4 peers
/// as IPv4-mapped IPv6 (`[::ffff:1.2.3.4]:p`); callers say `1.2.3.4:p`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A target of `0.0.0.0` or `::` means this machine, as the original proxies read it (their
/// `resolvesZeroIP`): code that dials `getIngressHost()` of a proxy bound to every interface
/// reaches it on loopback instead of failing.
pub fn zero_to_loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// A random u64 from the system's secure source (punch nonces, round-robin starts).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system randomness");
    u64::from_be_bytes(b)
}

/// Whether a UDP socket bound to `local` can send to `to`: an IPv4 socket only to IPv4, an
/// IPv6 socket bound to a specific address only to IPv6, a dual-stack one (`[::]`) to both. A
/// dial by node id skips the candidates it cannot send to (an IPv4-only caller and a node's
/// IPv6 addresses).
pub fn can_send(local: SocketAddr, to: SocketAddr) -> bool {
    let to_v4 = to.ip().to_canonical().is_ipv4();
    match local.ip() {
        IpAddr::V4(_) => to_v4,
        IpAddr::V6(ip) if ip.is_unspecified() => true,
        IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => to_v4,
        IpAddr::V6(_) => !to_v4,
    }
}

/// Whether `ip` is a global unicast IPv6 address (2000::/3): one that needs no NAT, only a
/// firewall punch, so a node announces it as a direct candidate.
pub fn is_global_v6(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.segments()[0] & 0xe000 == 0x2000,
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_socket_sends_to_the_families_it_is_bound_for() {
        let (v4, v6, mapped) = (
            a("192.0.2.1:1"),
            a("[2001:db8::1]:1"),
            a("[::ffff:192.0.2.1]:1"),
        );
        assert!(can_send(a("0.0.0.0:0"), v4) && can_send(a("0.0.0.0:0"), mapped));
        assert!(!can_send(a("0.0.0.0:0"), v6));
        assert!(can_send(a("[::]:0"), v4) && can_send(a("[::]:0"), v6));
        assert!(can_send(a("[2001:db8::2]:0"), v6) && !can_send(a("[2001:db8::2]:0"), v4));
        assert!(can_send(a("[::1]:0"), v6) && !can_send(a("[::1]:0"), mapped));
    }

    #[test]
    fn zero_ip_targets_mean_loopback() {
        assert_eq!(zero_to_loopback(a("0.0.0.0:5")), a("127.0.0.1:5"));
        assert_eq!(zero_to_loopback(a("[::]:5")), a("[::1]:5"));
        assert_eq!(zero_to_loopback(a("192.0.2.1:5")), a("192.0.2.1:5"));
    }

    #[test]
    fn only_global_unicast_ipv6_counts_as_global() {
        assert!(is_global_v6("2001:db8::1".parse().unwrap()));
        assert!(is_global_v6("2a00:1450::1".parse().unwrap()));
        for not in ["fe80::1", "::1", "fd00::1", "ff02::1", "::", "192.0.2.1"] {
            assert!(!is_global_v6(not.parse().unwrap()), "{not}");
        }
    }
}
