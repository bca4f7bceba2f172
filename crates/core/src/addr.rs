//! Address helpers every layer shares (a leaf: it depends on nothing in the crate).

use std::net::SocketAddr;

/// The one form of an address used as a key everywhere: a dual-stack socket reports IPv4 peers
/// as IPv4-mapped IPv6 (`[::ffff:1.2.3.4]:p`); callers say `1.2.3.4:p`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
