//! Virtual addresses for peers reached through a relay, and the path each one currently takes.
//!
//! quinn knows a relayed peer only by a *virtual address* (in 240.0.0.0/8, reserved and never
//! routed): the socket sends what quinn addresses there through the relay link, or straight to
//! the peer's punched UDP address once a rendezvous opened one, and presents datagrams arriving
//! either way as coming from the virtual address. So a connection moves between relayed and
//! punched without QUIC noticing anything but a change of round-trip time: no migration, no
//! stream touched, no byte lost or duplicated (QUIC retransmits whatever was in flight).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::endpoint::canonical;
use crate::events::Path;
use crate::nodeid::NodeId;

/// First octet of every virtual address.
const VIRTUAL_NET: u8 = 240;
/// Port of every virtual address (quinn refuses port 0).
const VIRTUAL_PORT: u16 = 1;
/// Datagrams from relay links waiting for quinn before more are dropped.
const INBOUND_QUEUE: usize = 4096;
/// A direct path that has delivered nothing for this long is abandoned for the relay (the
/// connection's keepalives arrive every second when the path works).
pub const DIRECT_STALE: Duration = Duration::from_secs(5);

/// Where datagrams for relayed peers go: the outbox of one relay link.
pub type Outbox = mpsc::Sender<(NodeId, Vec<u8>)>;

/// Whether `addr` is a virtual address standing for a relayed peer.
pub fn is_virtual(addr: &SocketAddr) -> bool {
    matches!(canonical(*addr).ip(), IpAddr::V4(v4) if v4.octets()[0] == VIRTUAL_NET)
}

/// Called when a peer's path changes: its virtual address and the new path.
pub type PathListener = Arc<dyn Fn(SocketAddr, Path) + Send + Sync>;

struct Direct {
    addr: SocketAddr,
    path: Path,
    last_rx: Instant,
}

struct Route {
    node: NodeId,
    relay: Option<Outbox>,
    direct: Option<Direct>,
}

#[derive(Default)]
struct Table {
    next: u32,
    by_node: HashMap<NodeId, SocketAddr>,
    routes: HashMap<SocketAddr, Route>,
    by_direct: HashMap<SocketAddr, SocketAddr>,
}

/// The relayed peers of one socket.
pub struct Paths {
    table: Mutex<Table>,
    inbound_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    inbound_rx: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    listener: Mutex<Option<PathListener>>,
}

impl Default for Paths {
    fn default() -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        Paths {
            table: Mutex::new(Table::default()),
            inbound_tx,
            inbound_rx: Mutex::new(inbound_rx),
            listener: Mutex::new(None),
        }
    }
}

/// Where one outgoing datagram goes.
pub enum Hop {
    /// Not a virtual address: send as addressed.
    Unchanged,
    /// A punched path: send to this UDP address instead.
    Direct(SocketAddr),
    /// Through this relay link.
    Relay(NodeId, Outbox),
    /// A virtual address with no path (its relay is gone): drop, as a lossy network would.
    Nowhere,
}

impl Paths {
    /// Sets who hears of path changes.
    pub fn set_listener(&self, listener: Option<PathListener>) {
        *self.listener.lock().expect("listener lock") = listener;
    }

    /// The virtual address of `node`, reached through `relay` (allocated on first use).
    pub fn virtual_for(&self, node: NodeId, relay: &Outbox) -> SocketAddr {
        let mut t = self.table.lock().expect("paths lock");
        let addr = match t.by_node.get(&node) {
            Some(a) => *a,
            None => {
                t.next += 1;
                let n = t.next;
                let ip = Ipv4Addr::new(VIRTUAL_NET, (n >> 16) as u8, (n >> 8) as u8, n as u8);
                let addr = SocketAddr::new(ip.into(), VIRTUAL_PORT);
                t.by_node.insert(node, addr);
                addr
            }
        };
        let route = t.routes.entry(addr).or_insert(Route {
            node,
            relay: None,
            direct: None,
        });
        // Called for every relayed datagram: clone the outbox only when it changed.
        if !route.relay.as_ref().is_some_and(|o| o.same_channel(relay)) {
            route.relay = Some(relay.clone());
        }
        addr
    }

    /// A datagram from `src` arrived through `relay`: queue it for quinn.
    pub fn from_relay(&self, src: NodeId, datagram: Vec<u8>, relay: &Outbox) {
        let from = self.virtual_for(src, relay);
        // Unreliable like UDP: a full queue drops (QUIC retransmits).
        let _ = self.inbound_tx.try_send((from, datagram));
    }

    /// Where a datagram quinn addressed to `to` goes.
    pub fn route(&self, to: SocketAddr) -> Hop {
        if !is_virtual(&to) {
            return Hop::Unchanged;
        }
        let mut changed = None;
        let route = {
            let mut t = self.table.lock().expect("paths lock");
            let key = canonical(to);
            let Some(r) = t.routes.get_mut(&key) else {
                return Hop::Nowhere;
            };
            let stale = r.direct.as_ref().is_some_and(|d| {
                d.last_rx.elapsed() > DIRECT_STALE
                    && r.relay.as_ref().is_some_and(|o| !o.is_closed())
            });
            if stale {
                let d = r.direct.take().expect("direct path");
                t.by_direct.remove(&d.addr);
                changed = Some(key);
                let r = t.routes.get(&key).expect("route");
                r.relay
                    .clone()
                    .map_or(Hop::Nowhere, |o| Hop::Relay(r.node, o))
            } else if let Some(d) = &r.direct {
                Hop::Direct(d.addr)
            } else {
                r.relay
                    .clone()
                    .map_or(Hop::Nowhere, |o| Hop::Relay(r.node, o))
            }
        };
        if let Some(addr) = changed {
            tracing::info!(%addr, "direct path went silent: back to the relay");
            self.notify(addr, Path::Relayed);
        }
        route
    }

    /// The virtual address a datagram from `from` is presented with (itself if not punched).
    pub fn inbound_source(&self, from: SocketAddr) -> SocketAddr {
        let mut t = self.table.lock().expect("paths lock");
        if t.by_direct.is_empty() {
            return from;
        }
        let Some(v) = t.by_direct.get(&canonical(from)).copied() else {
            return from;
        };
        if let Some(d) = t.routes.get_mut(&v).and_then(|r| r.direct.as_mut()) {
            d.last_rx = Instant::now();
        }
        v
    }

    /// Starts presenting datagrams from `direct` as coming from `node`'s virtual address (the
    /// peer's punch arrived from there); does not send there yet.
    pub fn accept_direct(&self, node: NodeId, direct: SocketAddr) -> Option<SocketAddr> {
        let mut t = self.table.lock().expect("paths lock");
        let v = *t.by_node.get(&node)?;
        t.by_direct.insert(canonical(direct), v);
        Some(v)
    }

    /// Sends `node`'s datagrams straight to `direct` from now on (the punch was acknowledged).
    pub fn use_direct(&self, node: NodeId, direct: SocketAddr, path: Path) {
        let v = {
            let mut t = self.table.lock().expect("paths lock");
            let Some(v) = t.by_node.get(&node).copied() else {
                return;
            };
            let direct = canonical(direct);
            t.by_direct.insert(direct, v);
            if let Some(r) = t.routes.get_mut(&v) {
                r.direct = Some(Direct {
                    addr: direct,
                    path,
                    last_rx: Instant::now(),
                });
            }
            v
        };
        tracing::info!(%node, %direct, path = path.as_str(), "relayed connection upgraded");
        self.notify(v, path);
    }

    /// The path datagrams to `addr` take now (`None` if it is not a relayed peer).
    pub fn path_of(&self, addr: &SocketAddr) -> Option<Path> {
        let t = self.table.lock().expect("paths lock");
        let r = t.routes.get(&canonical(*addr))?;
        Some(r.direct.as_ref().map_or(Path::Relayed, |d| d.path))
    }

    /// Fills `bufs` with datagrams that came through relays, registering `cx` when none wait.
    pub fn poll_inbound(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> usize {
        let mut rx = self.inbound_rx.lock().expect("inbound lock");
        let mut n = 0;
        while n < bufs.len() && n < meta.len() {
            match rx.poll_recv(cx) {
                Poll::Ready(Some((from, datagram))) => {
                    if datagram.len() > bufs[n].len() {
                        continue;
                    }
                    bufs[n][..datagram.len()].copy_from_slice(&datagram);
                    meta[n] = quinn::udp::RecvMeta {
                        addr: from,
                        len: datagram.len(),
                        stride: datagram.len(),
                        ecn: None,
                        dst_ip: None,
                    };
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }

    fn notify(&self, addr: SocketAddr, path: Path) {
        let listener = self.listener.lock().expect("listener lock").clone();
        if let Some(l) = listener {
            l(addr, path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    #[test]
    fn virtual_addresses_are_stable_per_node_and_never_routable_ones() {
        let p = Paths::default();
        let (tx, _rx) = mpsc::channel(4);
        let a = p.virtual_for(node(1), &tx);
        let b = p.virtual_for(node(2), &tx);
        assert_ne!(a, b);
        assert_eq!(p.virtual_for(node(1), &tx), a);
        assert!(is_virtual(&a) && is_virtual(&b));
        assert!(!is_virtual(&"127.0.0.1:1".parse().unwrap()));
        assert!(matches!(p.route(a), Hop::Relay(n, _) if n == node(1)));
        assert_eq!(p.path_of(&a), Some(Path::Relayed));
    }

    #[test]
    fn upgrade_moves_sends_and_receives_to_the_punched_address() {
        let p = Paths::default();
        let (tx, _rx) = mpsc::channel(4);
        let v = p.virtual_for(node(1), &tx);
        let x: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        assert!(matches!(p.route(v), Hop::Relay(n, _) if n == node(1)));
        assert_eq!(p.inbound_source(x), x);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        p.set_listener(Some(Arc::new(move |a, path| {
            s.lock().unwrap().push((a, path))
        })));
        p.accept_direct(node(1), x);
        assert_eq!(p.inbound_source(x), v);
        assert!(matches!(p.route(v), Hop::Relay(..)), "not before the ack");
        p.use_direct(node(1), x, Path::Punched);
        assert!(matches!(p.route(v), Hop::Direct(a) if a == x));
        assert_eq!(p.path_of(&v), Some(Path::Punched));
        assert_eq!(*seen.lock().unwrap(), vec![(v, Path::Punched)]);
        assert!(matches!(
            p.route("127.0.0.1:9".parse().unwrap()),
            Hop::Unchanged
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_direct_path_falls_back_to_the_relay() {
        let p = Paths::default();
        let (tx, _rx) = mpsc::channel(4);
        let v = p.virtual_for(node(1), &tx);
        let x: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        p.use_direct(node(1), x, Path::Punched);
        assert!(matches!(p.route(v), Hop::Direct(_)));
        // std Instant is not paused: age the path by hand.
        {
            let mut t = p.table.lock().unwrap();
            let d = t.routes.get_mut(&v).unwrap().direct.as_mut().unwrap();
            d.last_rx = Instant::now() - DIRECT_STALE - Duration::from_millis(1);
        }
        assert!(matches!(p.route(v), Hop::Relay(..)));
        assert_eq!(p.path_of(&v), Some(Path::Relayed));
        assert_eq!(p.inbound_source(x), x);
    }

    #[test]
    fn an_unknown_virtual_address_goes_nowhere() {
        let p = Paths::default();
        assert!(matches!(
            p.route("240.9.9.9:1".parse().unwrap()),
            Hop::Nowhere
        ));
    }
}
