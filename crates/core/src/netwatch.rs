//! Network changes: what a proxy does when the device moved to another network, and, on Linux,
//! noticing such a move without being told (a netlink socket reports address and route
//! changes). Mobile platforms do not let a library watch routes; there the app calls
//! `networkChanged()` itself.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::socket::{route_source, KeynetSocket};
use crate::task::Tasks;

/// Changes are acted on once they have settled this long (a network switch is a burst of
/// address and route messages). Only Linux watches on its own.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const SETTLE: Duration = Duration::from_millis(500);

/// What identifies the network the host is on: the source address the kernel picks toward the
/// internet, per family (`None` without a route). Nothing is sent to find it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint(Option<IpAddr>, Option<IpAddr>);

/// The host's current [`Fingerprint`].
pub(crate) fn fingerprint() -> Fingerprint {
    Fingerprint(
        route_source("8.8.8.8:53".parse().expect("address")),
        route_source("[2001:4860:4860::8888]:53".parse().expect("address")),
    )
}

/// If the socket is bound to a specific address that the host no longer has, moves it to the
/// address the kernel now routes from (same port when free), never to all interfaces, and
/// tells quinn (its connections migrate). Returns whether it moved.
pub(crate) fn rebind_if_gone(endpoint: &quinn::Endpoint, socket: &Arc<KeynetSocket>) -> bool {
    use quinn::AsyncUdpSocket;
    let Ok(local) = socket.local_addr() else {
        return false;
    };
    if local.ip().is_unspecified() || local.ip().is_loopback() {
        // A wildcard socket follows the routes by itself; loopback never goes away.
        return false;
    }
    match UdpSocket::bind(SocketAddr::new(local.ip(), 0)) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {}
        _ => return false,
    }
    let Fingerprint(v4, v6) = fingerprint();
    let Some(ip) = (if local.is_ipv4() { v4 } else { v6 }) else {
        tracing::warn!(%local, "the socket's address is gone and there is no route to move to");
        return false;
    };
    let fresh = UdpSocket::bind(SocketAddr::new(ip, local.port()))
        .or_else(|_| UdpSocket::bind(SocketAddr::new(ip, 0)));
    let moved = fresh
        .and_then(|s| socket.replace_os_socket(s))
        .and_then(|()| endpoint.rebind_abstract(socket.clone()));
    match moved {
        Ok(()) => {
            tracing::info!(old = %local, new = ?socket.local_addr().ok(), "socket moved: its address is gone");
            true
        }
        Err(e) => {
            tracing::warn!(%local, error = %e, "could not move the socket off its gone address");
            false
        }
    }
}

/// Runs [`watch`] for a proxy on its `tasks`: `act` is called on the proxy's running state
/// (held weakly) at each change.
pub(crate) fn spawn_watcher<R: Send + Sync + 'static>(
    tasks: &Tasks,
    running: &Arc<R>,
    seen: Arc<Seen>,
    act: fn(&R),
) {
    let weak = Arc::downgrade(running);
    tasks.spawn(watch(seen, move || {
        if let Some(r) = weak.upgrade() {
            act(&r);
        }
    }));
}

/// The last network a proxy acted on, so a manual `networkChanged()` and the watcher do not
/// both act on one change.
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<Fingerprint>);

impl Seen {
    /// Starts from the current network.
    pub(crate) fn now() -> Self {
        Self(Mutex::new(fingerprint()))
    }

    /// The app reported a change: records the current network so the watcher does not act on
    /// the same change again.
    pub(crate) fn mark_current(&self) {
        self.update(fingerprint());
    }

    /// Records `fp`; returns whether it differs from the one before.
    pub(crate) fn update(&self, fp: Fingerprint) -> bool {
        let mut last = self.0.lock().expect("fingerprint lock");
        std::mem::replace(&mut *last, fp) != fp
    }
}

/// Calls `on_change` whenever the host's network changed (Linux: netlink address and route
/// messages, settled for [`SETTLE`], then a changed [`Fingerprint`]). Runs until cancelled;
/// elsewhere, or where netlink is refused, returns at once (the app calls `networkChanged()`).
pub(crate) async fn watch(seen: Arc<Seen>, on_change: impl Fn() + Send + 'static) {
    #[cfg(target_os = "linux")]
    {
        let mut events = match netlink::RouteEvents::open() {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(error = %e, "no netlink: network changes are not noticed by themselves");
                return;
            }
        };
        loop {
            if events.next().await.is_err() {
                return;
            }
            // Let the burst settle: keep reading until it is quiet for SETTLE.
            while let Ok(r) = tokio::time::timeout(SETTLE, events.next()).await {
                if r.is_err() {
                    return;
                }
            }
            if seen.update(fingerprint()) {
                tracing::info!("the network changed");
                on_change();
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (seen, on_change);
    }
}

#[cfg(target_os = "linux")]
mod netlink {
    //! A NETLINK_ROUTE socket subscribed to address, route and link changes. Messages are not
    //! parsed: any of them means "look again".

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub(super) struct RouteEvents(AsyncFd<OwnedFd>);

    impl RouteEvents {
        pub(super) fn open() -> io::Result<Self> {
            // SAFETY: plain socket(2); the result is checked before use.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            sa.nl_groups = (libc::RTMGRP_LINK
                | libc::RTMGRP_IPV4_IFADDR
                | libc::RTMGRP_IPV6_IFADDR
                | libc::RTMGRP_IPV4_ROUTE
                | libc::RTMGRP_IPV6_ROUTE) as u32;
            // SAFETY: `sa` is a valid sockaddr_nl of the length given.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: an OwnedFd keeps its descriptor open and unchanged until it is dropped
            // with the AsyncFd.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| io::Error::other(e.to_string()))?;
            Ok(Self(fd))
        }

        /// Waits for the next message (its content is dropped).
        pub(super) async fn next(&mut self) -> io::Result<()> {
            let mut buf = [0u8; 8192];
            loop {
                let mut ready = self.0.readable().await?;
                let r = ready.try_io(|fd| {
                    // SAFETY: `buf` is valid for its length.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr() as *mut libc::c_void,
                            buf.len(),
                            0,
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
                match r {
                    Ok(Ok(())) => return Ok(()),
                    // ENOBUFS: messages were lost; that still means "look again".
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_reports_only_real_changes() {
        let seen = Seen::default();
        let a = Fingerprint(Some("10.0.0.2".parse().unwrap()), None);
        let b = Fingerprint(Some("10.1.0.2".parse().unwrap()), None);
        assert!(seen.update(a));
        assert!(!seen.update(a));
        assert!(seen.update(b));
    }

    #[tokio::test]
    async fn a_socket_on_a_live_address_is_left_alone() {
        let (ep, sock) = crate::socket::bind("127.0.0.1:0".parse().unwrap(), None, b"k").unwrap();
        let before = ep.local_addr().unwrap();
        assert!(!rebind_if_gone(&ep, &sock));
        assert_eq!(ep.local_addr().unwrap(), before);
    }
}
