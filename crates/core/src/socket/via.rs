//! Extra UDP sockets that carry one peer's datagrams: a hard-NAT punch
//! (`relay::link::birthday`) finds the peer through one of many sockets, whose NAT mapping is the
//! one the peer's NAT lets in. Datagrams to the peer's address then leave from that socket, and
//! what arrives on it joins the main socket's stream: punches go to their sessions, QUIC to
//! quinn (presented as from the peer's virtual address, like any direct path). A via lives as
//! long as its [`ViaGuard`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};

use tokio::net::UdpSocket;

use super::KeynetSocket;
use crate::addr::canonical;
use crate::proto::punch;

/// The socket a peer address's datagrams leave from, and the task that reads it (ended when
/// the via is removed).
struct Via {
    socket: Arc<UdpSocket>,
    /// The socket is IPv6 (IPv4 peers are sent to as mapped addresses): read once.
    v6: bool,
    id: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Via {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The vias of one [`KeynetSocket`], by peer address.
#[derive(Default)]
pub(crate) struct Vias {
    table: RwLock<std::collections::HashMap<SocketAddr, Via>>,
    /// How many there are: the send path skips the lock when there are none (nearly always).
    count: AtomicUsize,
    next_id: AtomicU64,
}

impl Vias {
    /// The socket datagrams to `to` leave from (and `to` in its family), if a via was adopted
    /// for it.
    pub(crate) fn get(&self, to: SocketAddr) -> Option<(Arc<UdpSocket>, SocketAddr)> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let table = self.table.read().expect("vias lock");
        table
            .get(&canonical(to))
            .map(|v| (v.socket.clone(), in_family(v.v6, to)))
    }

    fn remove(&self, to: SocketAddr, id: u64) {
        let mut table = self.table.write().expect("vias lock");
        if table.get(&to).is_some_and(|v| v.id == id) {
            table.remove(&to);
            self.count.store(table.len(), Ordering::Release);
        }
    }
}

/// Keeps a via adopted; dropping it sends `to`'s datagrams from the main socket again and
/// closes the extra socket.
pub struct ViaGuard {
    socket: Weak<KeynetSocket>,
    to: SocketAddr,
    id: u64,
}

impl Drop for ViaGuard {
    fn drop(&mut self) {
        if let Some(s) = self.socket.upgrade() {
            s.vias.remove(self.to, self.id);
        }
    }
}

impl KeynetSocket {
    /// Sends datagrams to `to` from `aux` from now on, and takes in what arrives on it (a newer
    /// via for `to` replaces this one).
    pub fn adopt_via(self: &Arc<Self>, to: SocketAddr, aux: UdpSocket) -> ViaGuard {
        let to = canonical(to);
        let v6 = aux.local_addr().is_ok_and(|a| a.is_ipv6());
        // It carries the connection from now on: full-speed buffers, like the main socket.
        super::buffers::size((&aux).into(), self.udp.buffer);
        let aux = Arc::new(aux);
        let id = self.vias.next_id.fetch_add(1, Ordering::Relaxed);
        let reader = self.rt.spawn(read_via(Arc::downgrade(self), aux.clone()));
        let mut table = self.vias.table.write().expect("vias lock");
        table.insert(
            to,
            Via {
                socket: aux,
                v6,
                id,
                reader,
            },
        );
        self.vias.count.store(table.len(), Ordering::Release);
        tracing::debug!(%to, "datagrams to the peer leave from a socket of their own now");
        ViaGuard {
            socket: Arc::downgrade(self),
            to,
            id,
        }
    }
}

/// `to` in the address family of `socket` (an IPv6 socket sends to IPv4 peers as mapped).
pub(crate) fn for_family(socket: &UdpSocket, to: SocketAddr) -> SocketAddr {
    in_family(socket.local_addr().is_ok_and(|a| a.is_ipv6()), to)
}

fn in_family(v6: bool, to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => to,
    }
}

/// Sends `contents` in segments of `size` bytes from `socket` to `to` (in its family) without
/// waiting: a full socket drops them, as a congested network would (QUIC retransmits).
pub(crate) fn send_now(socket: &UdpSocket, to: SocketAddr, contents: &[u8], size: usize) {
    for segment in contents.chunks(size.max(1)) {
        if let Err(e) = socket.try_send_to(segment, to) {
            if e.kind() != io::ErrorKind::WouldBlock {
                tracing::trace!(%to, error = %e, "datagram not sent on a via");
            }
        }
    }
}

/// Reads a via's socket until the via is removed or the main socket is gone.
async fn read_via(main: Weak<KeynetSocket>, aux: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = match aux.recv_from(&mut buf).await {
            Ok(got) => got,
            // Per-datagram errors (an ICMP error surfaces as a reset on some systems): read on.
            Err(e) => {
                tracing::trace!(error = %e, "via receive error");
                if main.strong_count() == 0 {
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            }
        };
        let Some(main) = main.upgrade() else { return };
        let from = canonical(from);
        let datagram = &buf[..n];
        if punch::is_punch(datagram) {
            main.deliver_punch(from, datagram);
        } else {
            main.paths.from_direct(from, datagram.to_vec());
        }
    }
}
