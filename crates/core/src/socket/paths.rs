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
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::addr::canonical;
use crate::events::{Path, PathReason};
use crate::nodeid::NodeId;

/// First octet of every virtual address.
const VIRTUAL_NET: u8 = 240;
/// Relayed peers a socket keeps a virtual address for. Past it, a new peer whose packets
/// arrive through a relay gets one only in place of a peer silent for [`IDLE_FORGET`] (else its
/// packets are dropped): a relay that invents senders cannot grow the table. A peer this node
/// dials always gets one (the dials themselves are bounded).
const MAX_ROUTES: usize = 65_536;
/// A relayed peer quinn sent nothing to for this long has no connection left (every live one
/// sends keepalives far more often): its virtual address may be given to another. Longer when
/// the keepalive settings ask for it ([`Paths::forget_silent_after`]).
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// A full table is swept for silent peers at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Port of every virtual address (quinn refuses port 0).
const VIRTUAL_PORT: u16 = 1;
/// Datagrams from relay links waiting for quinn before more are dropped.
const INBOUND_QUEUE: usize = 4096;
/// Path changes waiting for the proxy's event task before more are dropped (a change is rare:
/// a few per peer and minute at worst, and routing never depends on this queue: only an event
/// and the `path` a getter reports could miss one).
const CHANGE_QUEUE: usize = 256;

/// Datagrams quinn addressed to relayed peers, waiting for a relay link's writer.
pub type Queued = mpsc::Receiver<(NodeId, Vec<u8>)>;

/// Where datagrams for relayed peers go: one relay link's queue of frames for its stream, and
/// the link's UDP channel (`proto::channel`) while its relay session has one, which the socket
/// then sends on itself, without the queue.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::Sender<(NodeId, Vec<u8>)>,
    channel: Arc<RwLock<Option<Channel>>>,
}

/// A relay session's UDP channel: where its relay is and the session's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The relay's UDP address (canonical).
    pub relay: SocketAddr,
    /// The session's key.
    pub key: crate::proto::channel::Key,
    /// The local IP the relay connection uses: channel datagrams leave from it too, so the
    /// relay sees them from the session's address on a host with several.
    pub src_ip: Option<IpAddr>,
    /// The largest channel datagram (header included) to send: the relay connection's path
    /// MTU once found, never below [`crate::proto::channel::MIN_LIMIT`] nor above
    /// [`crate::proto::channel::MAX_LIMIT`] (`proto::channel::limit_for`). A larger packet is dropped, as
    /// a link with a smaller MTU would drop it, so QUIC's path MTU discovery settles below it;
    /// never sent, it cannot make the kernel refuse a segmented send (which turns segmentation
    /// offload off for the whole socket).
    pub limit: usize,
    /// The relay answered a probe on it: packets may be sent on it (until then they take the
    /// stream; channel datagrams coming in are taken at once).
    pub confirmed: bool,
}

impl Outbox {
    /// An outbox holding at most `size` queued datagrams, and the queue's receiving end.
    pub fn bounded(size: usize) -> (Self, Queued) {
        let (queue, rx) = mpsc::channel(size);
        let outbox = Self {
            queue,
            channel: Arc::new(RwLock::new(None)),
        };
        (outbox, rx)
    }

    /// Whether both are the same link's.
    pub fn same_channel(&self, other: &Self) -> bool {
        self.queue.same_channel(&other.queue)
    }

    /// Queues a datagram for the link's stream; a full queue drops it (QUIC retransmits).
    pub fn try_send(&self, to: NodeId, datagram: Vec<u8>) {
        let _ = self.queue.try_send((to, datagram));
    }

    /// The link's UDP channel, while it has one.
    pub fn channel(&self) -> Option<Channel> {
        *self.channel.read().expect("channel lock")
    }

    /// The link's UDP channel, if packets may be sent on it (the relay answered a probe).
    pub fn sending_channel(&self) -> Option<Channel> {
        self.channel().filter(|c| c.confirmed)
    }

    fn set_channel(&self, channel: Option<Channel>) {
        *self.channel.write().expect("channel lock") = channel;
    }

    /// Changes the link's channel in place, if it has one.
    fn update_channel(&self, change: impl FnOnce(&mut Channel)) {
        if let Some(c) = self.channel.write().expect("channel lock").as_mut() {
            change(c);
        }
    }
}

/// Whether `addr` is a virtual address standing for a relayed peer.
pub fn is_virtual(addr: &SocketAddr) -> bool {
    matches!(canonical(*addr).ip(), IpAddr::V4(v4) if v4.octets()[0] == VIRTUAL_NET)
}

/// A peer's path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathChange {
    /// The peer's virtual address (its connections run on it).
    pub addr: SocketAddr,
    /// The path before.
    pub from: Path,
    /// The path now.
    pub to: Path,
    /// Why.
    pub reason: PathReason,
}

struct Direct {
    addr: SocketAddr,
    path: Path,
}

struct Route {
    node: NodeId,
    relay: Option<Outbox>,
    direct: Option<Direct>,
    /// Datagrams quinn addressed to this peer so far (a connection that stopped sending, even
    /// keepalives, is gone).
    sent: u64,
    /// When the route was made, or quinn last sent to it.
    active: Instant,
}

impl Route {
    fn path(&self) -> Path {
        self.direct.as_ref().map_or(Path::Relayed, |d| d.path)
    }
}

struct Table {
    next: u32,
    by_node: HashMap<NodeId, SocketAddr>,
    routes: HashMap<SocketAddr, Route>,
    by_direct: HashMap<SocketAddr, SocketAddr>,
    /// Past this many routes ([`MAX_ROUTES`]), a peer whose packets come first gets one only
    /// in place of a silent one (dialled peers count, and always get one).
    cap: usize,
    /// How long a route quinn sends nothing to is kept in a full table.
    idle_forget: Duration,
    /// The last sweep for silent peers.
    swept: Option<Instant>,
}

impl Table {
    fn with_cap(cap: usize) -> Self {
        Self {
            next: 0,
            by_node: HashMap::new(),
            routes: HashMap::new(),
            by_direct: HashMap::new(),
            cap,
            idle_forget: IDLE_FORGET,
            swept: None,
        }
    }

    /// A virtual address no route holds (the 24 bits after [`VIRTUAL_NET`] wrap around; the
    /// table is far smaller than 2^24, so one is free).
    fn free_address(&mut self) -> SocketAddr {
        loop {
            self.next = (self.next + 1) & 0x00ff_ffff;
            let n = self.next;
            let ip = Ipv4Addr::new(VIRTUAL_NET, (n >> 16) as u8, (n >> 8) as u8, n as u8);
            let addr = SocketAddr::new(ip.into(), VIRTUAL_PORT);
            if n != 0 && !self.routes.contains_key(&addr) {
                return addr;
            }
        }
    }

    /// Whether a route for a new peer may be made at `now`: under the cap, or after a sweep
    /// (at most every [`SWEEP_EVERY`]) forgot peers silent for [`IDLE_FORGET`].
    fn room(&mut self, now: Instant) -> bool {
        if self.routes.len() < self.cap {
            return true;
        }
        if self
            .swept
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return false;
        }
        self.swept = Some(now);
        let before = self.routes.len();
        let idle = self.idle_forget;
        self.routes
            .retain(|_, r| now.duration_since(r.active) < idle);
        let Self {
            routes,
            by_node,
            by_direct,
            ..
        } = self;
        by_node.retain(|_, v| routes.contains_key(v));
        by_direct.retain(|_, v| routes.contains_key(v));
        tracing::info!(
            forgotten = before - routes.len(),
            kept = routes.len(),
            "relayed peers table full: silent peers forgotten"
        );
        routes.len() < self.cap
    }
}

/// The relayed peers of one socket. Called from the socket's send and receive paths (inside
/// quinn's connection driver), so nothing here blocks or calls out: a change is queued for the
/// proxy's event task ([`Paths::take_changes`]), never delivered inline.
pub struct Paths {
    table: Mutex<Table>,
    /// The UDP channels of this socket's relay sessions, by key: what a channel datagram must
    /// match to be taken in.
    channels: RwLock<HashMap<crate::proto::channel::Key, Outbox>>,
    inbound_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    inbound_rx: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
    changes_tx: mpsc::Sender<PathChange>,
    changes_rx: Mutex<Option<mpsc::Receiver<PathChange>>>,
}

impl Default for Paths {
    fn default() -> Self {
        Self::with_cap(MAX_ROUTES)
    }
}

impl Paths {
    /// Paths whose table takes new inbound peers past `cap` routes only in place of silent ones.
    fn with_cap(cap: usize) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (changes_tx, changes_rx) = mpsc::channel(CHANGE_QUEUE);
        Self {
            table: Mutex::new(Table::with_cap(cap)),
            channels: RwLock::new(HashMap::new()),
            inbound_tx,
            inbound_rx: Mutex::new(inbound_rx),
            changes_tx,
            changes_rx: Mutex::new(Some(changes_rx)),
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
    /// Keeps a silent route in a full table for at least `live` (how long a connection can
    /// last without sending), [`IDLE_FORGET`] at the least.
    pub fn forget_silent_after(&self, live: Duration) {
        self.table.lock().expect("paths lock").idle_forget = live.max(IDLE_FORGET);
    }

    /// The queue of path changes (once: the proxy's event task takes it).
    pub fn take_changes(&self) -> Option<mpsc::Receiver<PathChange>> {
        self.changes_rx.lock().expect("changes lock").take()
    }

    /// The virtual address of `node`, reached through `relay` (allocated on first use).
    pub fn virtual_for(&self, node: NodeId, relay: &Outbox) -> SocketAddr {
        self.route_for(node, relay, false, Instant::now())
            .expect("a dialled peer always gets a route")
    }

    /// [`Paths::virtual_for`] for a peer whose packet arrived through `relay`: `None` (drop
    /// it) when the peer is new and the table is full of peers that are not silent.
    fn inbound_virtual(&self, node: NodeId, relay: &Outbox) -> Option<SocketAddr> {
        self.route_for(node, relay, true, Instant::now())
    }

    fn route_for(
        &self,
        node: NodeId,
        relay: &Outbox,
        inbound: bool,
        now: Instant,
    ) -> Option<SocketAddr> {
        let mut t = self.table.lock().expect("paths lock");
        let addr = match t.by_node.get(&node) {
            Some(a) => *a,
            None => {
                if !t.room(now) && inbound {
                    return None;
                }
                let addr = t.free_address();
                t.by_node.insert(node, addr);
                addr
            }
        };
        let route = t.routes.entry(addr).or_insert(Route {
            node,
            relay: None,
            direct: None,
            sent: 0,
            active: now,
        });
        // Called for every relayed datagram: clone the outbox only when it changed.
        if !route.relay.as_ref().is_some_and(|o| o.same_channel(relay)) {
            route.relay = Some(relay.clone());
        }
        Some(addr)
    }

    #[cfg(test)]
    fn by_node_for_test(&self, node: NodeId) -> SocketAddr {
        self.table.lock().expect("paths lock").by_node[&node]
    }

    /// The relay link `node`'s packets go through, if it has a relayed route.
    pub fn relay_of(&self, node: &NodeId) -> Option<Outbox> {
        let t = self.table.lock().expect("paths lock");
        let addr = t.by_node.get(node)?;
        t.routes.get(addr)?.relay.clone()
    }

    /// A datagram from `src` arrived through `relay`: queue it for quinn.
    pub fn from_relay(&self, src: NodeId, datagram: Vec<u8>, relay: &Outbox) {
        let Some(from) = self.inbound_virtual(src, relay) else {
            return;
        };
        // Unreliable like UDP: a full queue drops (QUIC retransmits).
        let _ = self.inbound_tx.try_send((from, datagram));
    }

    /// Opens `outbox`'s UDP channel: relayed packets to and from its peers travel as channel
    /// datagrams with `channel.relay` until [`Paths::close_channel`].
    pub fn open_channel(&self, outbox: &Outbox, channel: Channel) {
        let channel = Channel {
            relay: canonical(channel.relay),
            ..channel
        };
        let mut channels = self.channels.write().expect("channels lock");
        // A session has one key: a newer one replaces it.
        if let Some(old) = outbox.channel() {
            channels.remove(&old.key);
        }
        channels.insert(channel.key, outbox.clone());
        outbox.set_channel(Some(channel));
    }

    /// The relay connection's path MTU is `mtu`: `outbox`'s channel datagrams may be that long
    /// (`proto::channel::limit_for`).
    pub fn set_channel_limit(&self, outbox: &Outbox, mtu: usize) {
        outbox.update_channel(|c| c.limit = crate::proto::channel::limit_for(mtu));
    }

    /// Closes `outbox`'s UDP channel (its relay session ended): packets go to its queue again.
    pub fn close_channel(&self, outbox: &Outbox) {
        let Some(channel) = outbox.channel() else {
            return;
        };
        outbox.set_channel(None);
        let mut channels = self.channels.write().expect("channels lock");
        if channels
            .get(&channel.key)
            .is_some_and(|o| o.same_channel(outbox))
        {
            channels.remove(&channel.key);
        }
    }

    /// A channel datagram arrived from `from`: from a relay whose session has its key, a
    /// relayed packet for us is queued for quinn and a probe's answer confirms the channel;
    /// anything else is dropped. True if it was taken in.
    pub fn from_channel(&self, from: SocketAddr, datagram: &[u8]) -> bool {
        use crate::proto::channel;
        let Some(d) = channel::parse(datagram) else {
            return false;
        };
        if !matches!(d.kind, channel::Kind::FromRelay | channel::Kind::ProbeAck) {
            return false;
        }
        let Some(outbox) = self.channel_from(from, &d.key) else {
            return false;
        };
        if d.kind == channel::Kind::ProbeAck {
            outbox.update_channel(|c| {
                if c.key == d.key && !c.confirmed {
                    tracing::debug!(relay = %c.relay, "the relay's UDP channel works: relayed packets take it");
                    c.confirmed = true;
                }
            });
            return true;
        }
        self.from_relay(d.node, d.packet.to_vec(), &outbox);
        true
    }

    /// The relay session whose channel key is `key`, when `from` is its relay's address.
    fn channel_from(&self, from: SocketAddr, key: &crate::proto::channel::Key) -> Option<Outbox> {
        let outbox = self
            .channels
            .read()
            .expect("channels lock")
            .get(key)
            .cloned()?;
        (outbox.channel().map(|c| c.relay) == Some(canonical(from))).then_some(outbox)
    }

    /// Where relayed packets from `from` whose channel header is `first`'s go: the sending
    /// peer's virtual address, when `first` is a packet from the relay on one of our channels.
    /// A receive whose datagrams all carry that header is handed to quinn as it is, headers
    /// cut out in place: no copy, no queue.
    pub fn channel_run(&self, from: SocketAddr, first: &[u8]) -> Option<SocketAddr> {
        use crate::proto::channel;
        let d = channel::parse(first).filter(|d| d.kind == channel::Kind::FromRelay)?;
        let outbox = self.channel_from(from, &d.key)?;
        self.inbound_virtual(d.node, &outbox)
    }

    /// A datagram from `from` arrived on a socket of its own (a via): queue it for quinn, from
    /// the peer's virtual address once the path is in use.
    pub fn from_direct(&self, from: SocketAddr, datagram: Vec<u8>) {
        let from = self.inbound_source(from);
        let _ = self.inbound_tx.try_send((from, datagram));
    }

    /// Where a datagram quinn addressed to `to` goes.
    pub fn route(&self, to: SocketAddr) -> Hop {
        self.route_at(to, Instant::now())
    }

    fn route_at(&self, to: SocketAddr, now: Instant) -> Hop {
        if !is_virtual(&to) {
            return Hop::Unchanged;
        }
        let mut t = self.table.lock().expect("paths lock");
        let Some(r) = t.routes.get_mut(&canonical(to)) else {
            return Hop::Nowhere;
        };
        r.sent += 1;
        r.active = now;
        match (&r.direct, &r.relay) {
            (Some(d), _) => Hop::Direct(d.addr),
            (None, Some(o)) => Hop::Relay(r.node, o.clone()),
            (None, None) => Hop::Nowhere,
        }
    }

    /// The virtual address a datagram from `from` is presented with (itself if not punched).
    pub fn inbound_source(&self, from: SocketAddr) -> SocketAddr {
        let t = self.table.lock().expect("paths lock");
        if t.by_direct.is_empty() {
            return from;
        }
        t.by_direct.get(&canonical(from)).copied().unwrap_or(from)
    }

    /// Starts presenting datagrams from `direct` as coming from `node`'s virtual address (the
    /// peer's punch arrived from there); does not send there yet.
    pub fn accept_direct(&self, node: NodeId, direct: SocketAddr) -> Option<SocketAddr> {
        let mut t = self.table.lock().expect("paths lock");
        let v = *t.by_node.get(&node)?;
        t.by_direct.insert(canonical(direct), v);
        Some(v)
    }

    /// Sends `node`'s datagrams straight to `direct` from now on (the punch was acknowledged,
    /// or a dead path answered again).
    pub fn use_direct(&self, node: NodeId, direct: SocketAddr, path: Path, reason: PathReason) {
        let direct = canonical(direct);
        let change = {
            let mut t = self.table.lock().expect("paths lock");
            let Some(v) = t.by_node.get(&node).copied() else {
                return;
            };
            t.by_direct.insert(direct, v);
            let Some(r) = t.routes.get_mut(&v) else {
                return;
            };
            let from = r.path();
            r.direct = Some(Direct { addr: direct, path });
            PathChange {
                addr: v,
                from,
                to: path,
                reason,
            }
        };
        tracing::info!(%node, %direct, path = path.as_str(), reason = reason.as_str(), "relayed peer on a direct path");
        self.report(change);
    }

    /// Sends `node`'s datagrams through the relay again (its direct path stopped answering).
    /// Datagrams still arriving from the direct address keep being accepted.
    pub fn drop_direct(&self, node: NodeId, reason: PathReason) {
        let change = {
            let mut t = self.table.lock().expect("paths lock");
            let Some(v) = t.by_node.get(&node).copied() else {
                return;
            };
            let Some(r) = t.routes.get_mut(&v) else {
                return;
            };
            let Some(d) = r.direct.take() else {
                return;
            };
            PathChange {
                addr: v,
                from: d.path,
                to: Path::Relayed,
                reason,
            }
        };
        tracing::info!(%node, reason = reason.as_str(), "direct path given up: back to the relay");
        self.report(change);
    }

    /// Forgets `node`'s direct path entirely (its connections are gone): no event.
    pub fn forget_direct(&self, node: NodeId) {
        let mut t = self.table.lock().expect("paths lock");
        let Some(v) = t.by_node.get(&node).copied() else {
            return;
        };
        t.by_direct.retain(|_, to| *to != v);
        if let Some(r) = t.routes.get_mut(&v) {
            r.direct = None;
        }
    }

    /// The direct address `node`'s datagrams go to now, if any.
    pub fn direct_of(&self, node: NodeId) -> Option<SocketAddr> {
        let t = self.table.lock().expect("paths lock");
        let v = t.by_node.get(&node)?;
        t.routes.get(v)?.direct.as_ref().map(|d| d.addr)
    }

    /// Datagrams quinn has sent to `node` so far (`None`: not a relayed peer).
    pub fn sent_to(&self, node: NodeId) -> Option<u64> {
        let t = self.table.lock().expect("paths lock");
        let v = t.by_node.get(&node)?;
        t.routes.get(v).map(|r| r.sent)
    }

    /// The path datagrams to `addr` take now (`None` if it is not a relayed peer).
    pub fn path_of(&self, addr: &SocketAddr) -> Option<Path> {
        let t = self.table.lock().expect("paths lock");
        t.routes.get(&canonical(*addr)).map(Route::path)
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

    fn report(&self, change: PathChange) {
        if change.from == change.to {
            return;
        }
        if self.changes_tx.try_send(change).is_err() {
            tracing::warn!(addr = %change.addr, "path change not reported: the event queue is full");
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
        let (tx, _rx) = Outbox::bounded(4);
        let a = p.virtual_for(node(1), &tx);
        let b = p.virtual_for(node(2), &tx);
        assert_ne!(a, b);
        assert_eq!(p.virtual_for(node(1), &tx), a);
        assert!(is_virtual(&a) && is_virtual(&b));
        assert!(!is_virtual(&"127.0.0.1:1".parse().unwrap()));
        assert!(matches!(p.route(a), Hop::Relay(n, _) if n == node(1)));
        assert_eq!(p.path_of(&a), Some(Path::Relayed));
        assert_eq!(p.sent_to(node(1)), Some(1));
    }

    #[test]
    fn a_full_table_takes_a_new_inbound_peer_only_in_place_of_a_silent_one() {
        let p = Paths::with_cap(2);
        let (tx, _rx) = Outbox::bounded(4);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let a = p.route_for(node(1), &tx, true, t0).unwrap();
        let b = p.route_for(node(2), &tx, true, t0).unwrap();
        // Full: a third sender's packets find no address; known peers keep theirs.
        assert_eq!(p.route_for(node(3), &tx, true, t0 + s), None);
        assert_eq!(p.route_for(node(2), &tx, true, t0 + s), Some(b));
        // quinn keeps sending to A; B stays silent past IDLE_FORGET: the next new sender
        // takes B's place (a sweep), and B is forgotten everywhere.
        let later = t0 + IDLE_FORGET + SWEEP_EVERY;
        assert!(matches!(p.route_at(a, later - s), Hop::Relay(..)));
        let c = p.route_for(node(3), &tx, true, later).unwrap();
        assert!(is_virtual(&c) && c != a);
        assert!(p.relay_of(&node(2)).is_none() && p.relay_of(&node(1)).is_some());
        assert!(c != b && matches!(p.route_at(b, later), Hop::Nowhere));
        // Full again, and the next sweep is not due: refused without one. A peer this node
        // dials still gets an address.
        assert_eq!(p.route_for(node(4), &tx, true, later + s), None);
        let d = p.route_for(node(5), &tx, false, later + s).unwrap();
        assert!(![a, c].contains(&d));
    }

    #[test]
    fn virtual_addresses_wrap_around_past_those_in_use() {
        let p = Paths::default();
        let (tx, _rx) = Outbox::bounded(4);
        let first = p.virtual_for(node(1), &tx);
        p.table.lock().unwrap().next = 0x00ff_fffe;
        let last = p.virtual_for(node(2), &tx);
        assert_eq!(last, "240.255.255.255:1".parse().unwrap());
        // Wrapped: 240.0.0.0 is skipped, and so is the first one, still in use.
        let next = p.virtual_for(node(3), &tx);
        assert!(is_virtual(&next) && next != first && next != last);
        assert_eq!(next, "240.0.0.2:1".parse().unwrap());
    }

    #[test]
    fn upgrade_moves_sends_and_receives_to_the_punched_address() {
        let p = Paths::default();
        let mut changes = p.take_changes().unwrap();
        assert!(p.take_changes().is_none(), "one owner");
        let (tx, _rx) = Outbox::bounded(4);
        let v = p.virtual_for(node(1), &tx);
        let x: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        assert!(matches!(p.route(v), Hop::Relay(n, _) if n == node(1)));
        assert_eq!(p.inbound_source(x), x);
        p.accept_direct(node(1), x);
        assert_eq!(p.inbound_source(x), v);
        assert!(matches!(p.route(v), Hop::Relay(..)), "not before the ack");
        p.use_direct(node(1), x, Path::Punched, PathReason::Upgrade);
        assert!(matches!(p.route(v), Hop::Direct(a) if a == x));
        assert_eq!(p.path_of(&v), Some(Path::Punched));
        assert_eq!(p.direct_of(node(1)), Some(x));
        assert_eq!(
            changes.try_recv().unwrap(),
            PathChange {
                addr: v,
                from: Path::Relayed,
                to: Path::Punched,
                reason: PathReason::Upgrade
            }
        );
        assert!(matches!(
            p.route("127.0.0.1:9".parse().unwrap()),
            Hop::Unchanged
        ));
    }

    #[test]
    fn a_dropped_direct_path_goes_back_to_the_relay_and_still_accepts_late_packets() {
        let p = Paths::default();
        let mut changes = p.take_changes().unwrap();
        let (tx, _rx) = Outbox::bounded(4);
        let v = p.virtual_for(node(1), &tx);
        let x: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        p.use_direct(node(1), x, Path::Punched, PathReason::Upgrade);
        p.drop_direct(node(1), PathReason::ProbeTimeout);
        p.drop_direct(node(1), PathReason::ProbeTimeout);
        assert!(matches!(p.route(v), Hop::Relay(..)));
        assert_eq!(p.path_of(&v), Some(Path::Relayed));
        assert_eq!(
            p.inbound_source(x),
            v,
            "packets in flight on the old path still count"
        );
        let _ = changes.try_recv().unwrap();
        let back = changes.try_recv().unwrap();
        assert_eq!((back.from, back.to), (Path::Punched, Path::Relayed));
        assert_eq!(back.reason, PathReason::ProbeTimeout);
        assert!(changes.try_recv().is_err(), "one change, one event");
        p.forget_direct(node(1));
        assert_eq!(p.inbound_source(x), x);
    }

    #[test]
    fn a_channel_datagram_is_taken_in_only_from_its_relay_with_its_key_until_closed() {
        use crate::proto::channel::{encode, Kind};
        let p = Paths::default();
        let (outbox, _rx) = Outbox::bounded(4);
        let relay: SocketAddr = "198.51.100.1:7000".parse().unwrap();
        let key = [5u8; 8];
        p.open_channel(
            &outbox,
            Channel {
                relay,
                key,
                src_ip: None,
                limit: 1452,
                confirmed: false,
            },
        );
        assert_eq!(outbox.channel().map(|c| c.key), Some(key));
        assert_eq!(
            outbox.sending_channel(),
            None,
            "not before the relay answered a probe"
        );
        let ack = crate::proto::channel::signal(Kind::ProbeAck, &key);
        let forged_ack = crate::proto::channel::signal(Kind::ProbeAck, &[6; 8]);
        assert!(!p.from_channel(relay, &forged_ack));
        assert_eq!(
            outbox.sending_channel(),
            None,
            "not on a wrong key's answer"
        );
        assert!(p.from_channel(relay, &ack));
        assert_eq!(outbox.sending_channel().map(|c| c.key), Some(key));
        let good = encode(Kind::FromRelay, &key, &node(2), b"packet");
        let elsewhere: SocketAddr = "198.51.100.2:7000".parse().unwrap();
        assert!(!p.from_channel(elsewhere, &good), "not from the relay");
        let wrong_key = encode(Kind::FromRelay, &[6; 8], &node(2), b"packet");
        assert!(!p.from_channel(relay, &wrong_key), "not our key");
        let wrong_way = encode(Kind::ToRelay, &key, &node(2), b"packet");
        assert!(!p.from_channel(relay, &wrong_way), "meant for a relay");
        let mapped: SocketAddr = "[::ffff:198.51.100.1]:7000".parse().unwrap();
        assert!(
            p.from_channel(mapped, &good),
            "the relay, as a dual-stack socket sees it"
        );
        let v = p.by_node_for_test(node(2));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 64];
        let mut meta = [quinn::udp::RecvMeta::default()];
        let n = p.poll_inbound(&mut cx, &mut [io::IoSliceMut::new(&mut buf)], &mut meta);
        let got = (n, meta[0].addr, buf[..meta[0].len].to_vec());
        assert_eq!(
            got,
            (1, v, b"packet".to_vec()),
            "queued as from the sender's virtual address"
        );
        p.close_channel(&outbox);
        assert_eq!(outbox.channel(), None);
        assert!(!p.from_channel(relay, &good), "closed");
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
