//! What the kernel's routing table says toward an address, asked without sending anything.

use std::net::SocketAddr;

/// A UDP socket connected toward `to`: connecting a UDP socket makes the kernel look up the
/// route (source address, MTU) and sends nothing. `None` without a route.
pub(super) fn probe(to: SocketAddr) -> Option<std::net::UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    Some(probe)
}
