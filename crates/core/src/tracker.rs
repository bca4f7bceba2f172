//! The connection tracker: QUIC connections by remote address, the addresses a caller
//! registered (with their pins), and the close/connection events of those connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::addr::canonical;
use crate::close_gate::CloseGate;
use crate::ending::Ending;
use crate::events::{CloseReason, ConnectionInfo, Event, EventKind, EventSink, Path, Reason};
use crate::identity::certs_to_pem;
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::goaway::{self, EndMessage};
use crate::relay::spec::RelaySpec;
use crate::socket::paths::PathChange;
use crate::task::Tasks;
use crate::tls::verify::{verify_chain, Acceptable};

/// How long a keepalive close lets the tunnels' queued FINs leave before the close: sending
/// them is one turn of the connection's driver (the peer was silent, so nothing else is in
/// flight to hold them back).
const FIN_SEND_TIME: Duration = Duration::from_millis(50);

/// Which side of the tunnel the tracker belongs to (decides which address is egress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The forward proxy: local address is the egress.
    Forward,
    /// The reverse proxy: local address is the ingress.
    Reverse,
}

/// One established QUIC connection to a peer whose identity was verified.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Lets the close past a full congestion window: close through [`Peer::close`].
    gate: CloseGate,
    /// The node id the peer proved.
    pub node_id: NodeId,
    /// The peer's chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The peer's UDP address.
    pub remote: SocketAddr,
    /// The address quinn knows the peer by (virtual for a relay-backed connection), read once:
    /// asking the connection takes its lock, which the socket's send path may hold.
    quic_addr: SocketAddr,
    path: Mutex<Path>,
    close_reason: Mutex<Option<CloseReason>>,
    /// How its tunnels end (see [`crate::ending`]).
    pub ending: Ending,
    /// It resumed an earlier TLS session (see [`crate::node::early`]).
    pub resumed: bool,
}

impl Peer {
    /// Wraps an established connection whose peer proved `node_id`.
    /// `gate` is the one in the connection's transport config ([`crate::close_gate`]).
    pub(crate) fn new(
        conn: quinn::Connection,
        gate: CloseGate,
        node_id: NodeId,
        path: Path,
    ) -> Self {
        let remote = conn.remote_address();
        Self::with_remote(conn, gate, node_id, path, remote)
    }

    /// Like [`Peer::new`], tracked under `remote` (a relayed connection's QUIC address is
    /// virtual; it is tracked under the address the caller named).
    pub(crate) fn with_remote(
        conn: quinn::Connection,
        gate: CloseGate,
        node_id: NodeId,
        path: Path,
        remote: SocketAddr,
    ) -> Self {
        let certs = crate::tls::verify::peer_chain(&conn);
        let remote = canonical(remote);
        let quic_addr = canonical(conn.remote_address());
        Self {
            quic_addr,
            conn,
            gate,
            node_id,
            certs,
            remote,
            path: Mutex::new(path),
            close_reason: Mutex::new(None),
            ending: Ending::default(),
            resumed: false,
        }
    }

    /// Marks a peer whose connection resumed an earlier TLS session.
    pub(crate) fn resumed(mut self, resumed: bool) -> Self {
        self.resumed = resumed;
        self
    }

    /// Whether the peer's chain claims `id` (it is the leaf's id, or a rotation ancestor's).
    pub(crate) fn claims(&self, id: &NodeId) -> bool {
        *id == self.node_id
            || verify_chain(
                &self.certs,
                &Acceptable::OneOf(vec![*id]),
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )
            .is_ok()
    }

    /// The current path.
    pub(crate) fn path(&self) -> Path {
        *self.path.lock().expect("path lock")
    }

    /// Sets the path of a peer not tracked yet (a resumed connection learns it after its
    /// tunnels may open; no event, the `connection` event carries it).
    pub(crate) fn settle_path(&self, path: Path) {
        *self.path.lock().expect("path lock") = path;
    }

    /// Whether the QUIC connection runs on a virtual (relay-backed) address.
    pub(crate) fn is_relay_backed(&self) -> bool {
        crate::socket::paths::is_virtual(&self.quic_addr)
    }

    /// Closes the connection at once, recording why (the close event carries it); its tunnels
    /// are reset. See [`Peer::end`] for the orderly way.
    pub(crate) fn close(&self, why: CloseReason) {
        // Recorded before the close: the close watcher reads it as soon as quinn reports.
        let text = why.as_str().as_bytes().to_vec();
        self.record(why);
        self.gate.close(&self.conn, 0u32.into(), &text);
    }

    fn record(&self, why: CloseReason) {
        self.close_reason
            .lock()
            .expect("reason lock")
            .get_or_insert(why);
    }

    /// Ends the connection on purpose: tells the peer (goaway), lets the tunnels on both sides
    /// drain until both said `drained`, for at most `grace`, then closes it with `why` (what is
    /// left is reset). See [`crate::ending`].
    pub(crate) async fn end(&self, why: CloseReason, grace: Duration) {
        self.record(why.clone());
        let first = self.ending.drain();
        let both_drained = async {
            if first {
                tokio::join!(
                    self.say_goaway_then_drained(),
                    self.ending.wait_peer_drained()
                );
            } else {
                // Already ending (an earlier call, or the peer began): what that end waits for.
                tokio::join!(
                    self.ending.all_tunnels_ended(),
                    self.ending.wait_peer_drained()
                );
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(grace, both_drained) => {}
            _ = self.conn.closed() => {}
        }
        self.close(why);
    }

    /// Says `goaway` on our second unidirectional stream, then `drained` once our tunnels
    /// ended (the caller bounds the wait).
    async fn say_goaway_then_drained(&self) {
        let opened = async {
            let mut uni = self.conn.open_uni().await.ok()?;
            uni.write_all(&EndMessage::Goaway.encode()).await.ok()?;
            Some(uni)
        };
        let (uni, ()) = tokio::join!(opened, self.ending.all_tunnels_ended());
        if let Some(mut uni) = uni {
            if uni.write_all(&EndMessage::Drained.encode()).await.is_ok() {
                let _ = uni.finish();
            }
        }
    }

    /// Listens for the peer's end messages (on its second unidirectional stream). On its
    /// goaway this side drains and answers in kind, then waits (at most `grace`) for the peer to
    /// close the connection once both drained, and closes it itself if the peer does not.
    async fn listen_for_end(&self, grace: Duration) {
        let Ok(mut uni) = self.conn.accept_uni().await else {
            return;
        };
        let mut buf = [0u8; goaway::LEN];
        match tokio::time::timeout(grace, uni.read_exact(&mut buf)).await {
            Ok(Ok(())) if EndMessage::decode(&buf) == Some(EndMessage::Goaway) => {}
            _ => return,
        }
        let answering = self.ending.drain();
        tracing::debug!(remote = %self.remote, "peer announced its end: draining");
        let drained = async {
            if uni.read_exact(&mut buf).await.is_ok()
                && EndMessage::decode(&buf) == Some(EndMessage::Drained)
            {
                self.ending.peer_drained();
            }
        };
        if !answering {
            // This side began ending too: its own `end` closes the connection within `grace`,
            // which ends this read.
            return drained.await;
        }
        let ours = tokio::time::timeout(grace, self.say_goaway_then_drained());
        let theirs = tokio::time::timeout(grace * 2, drained);
        let _ = tokio::join!(ours, theirs);
        let _ = tokio::time::timeout(grace, self.conn.closed()).await;
        self.close(CloseReason::Remote);
    }

    /// Ends the connection with `keepaliveTimeout` once nothing arrived from the peer for
    /// `silence`: its tunnels deliver what arrived and end with a FIN (nothing more will come),
    /// and the close tells the peer, if it still hears us. quinn's own idle timeout is set
    /// later than this (see [`ConnOptions::peer_transport_config`]), so this one decides.
    async fn watch_silence(&self, silence: Duration, every: Duration, grace: Duration) {
        let mut seen = self.conn.stats().udp_rx.datagrams;
        let mut heard = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let now = self.conn.stats().udp_rx.datagrams;
            if now != seen {
                seen = now;
                heard = Instant::now();
            } else if heard.elapsed() >= silence {
                break;
            }
        }
        tracing::debug!(remote = %self.remote, "peer silent: ending the connection");
        self.record(CloseReason::KeepaliveTimeout);
        self.ending.flush();
        self.ending.tunnels_ended(grace).await;
        // The tunnels' FINs are queued, not sent: a close now would go out first and discard
        // them (a peer that still hears us would reset its ends instead of ending them). The
        // connection's driver sends them on its next turn, window permitting: give it that.
        tokio::time::sleep(grace.min(FIN_SEND_TIME)).await;
        self.close(CloseReason::KeepaliveTimeout);
    }

    /// A snapshot for the user; `local` is this proxy's UDP address.
    pub(crate) fn info(&self, local: SocketAddr, role: Role) -> ConnectionInfo {
        let stats = self.conn.stats();
        let (egress, ingress) = match role {
            Role::Forward => (local, self.remote),
            Role::Reverse => (self.remote, local),
        };
        ConnectionInfo {
            node_id: self.node_id.to_string(),
            certificates: certs_to_pem(&self.certs),
            egress,
            ingress,
            path: self.path(),
            rtt_ms: self.conn.rtt().as_secs_f64() * 1000.0,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            datagrams_sent: stats.udp_tx.datagrams,
            send_calls: stats.udp_tx.ios,
            lost_packets: stats.path.lost_packets,
            mtu: stats.path.current_mtu,
            resumed: self.resumed,
        }
    }

    fn reason_for(&self, err: &quinn::ConnectionError) -> CloseReason {
        let recorded = self.close_reason.lock().expect("reason lock").clone();
        recorded.unwrap_or_else(|| CloseReason::of(err))
    }
}

/// The end timing of a tracker's connections, from its [`ConnOptions`].
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// `connEndTime`.
    grace: Duration,
    /// `connKeepAliveTimeoutTime`.
    silence: Duration,
    /// How often the silence is checked: the keepalive interval, at most a quarter of the
    /// timeout.
    every: Duration,
}

impl Timing {
    fn of(o: &ConnOptions) -> Self {
        Self {
            grace: o.end_time,
            silence: o.keepalive_timeout,
            every: o.keepalive_interval.min(o.keepalive_timeout / 4),
        }
    }
}

#[derive(Default)]
struct Entry {
    /// Registered by the caller (kept when the connection dies, so a later CONNECT redials).
    registered: bool,
    pin: Option<NodeId>,
    /// The relay a registered address is reached through.
    via: Option<RelaySpec>,
    /// Live connections from/to this address, newest last. Normally one; briefly two when a
    /// peer restarted its handshake and the older one has not closed yet.
    peers: Vec<Arc<Peer>>,
    dialing: Arc<tokio::sync::Mutex<()>>,
}

/// QUIC connections by remote address.
pub(crate) struct Tracker {
    role: Role,
    local: SocketAddr,
    timing: Timing,
    tasks: Tasks,
    entries: Mutex<HashMap<SocketAddr, Entry>>,
    sink: Arc<RwLock<Option<EventSink>>>,
    changed: tokio::sync::Notify,
}

impl Tracker {
    /// A tracker for a proxy bound at `local`, spawning its watchers on `tasks`.
    pub(crate) fn new(
        role: Role,
        local: SocketAddr,
        opts: &ConnOptions,
        tasks: Tasks,
        sink: Arc<RwLock<Option<EventSink>>>,
    ) -> Self {
        Self {
            role,
            local,
            timing: Timing::of(opts),
            tasks,
            entries: Mutex::new(HashMap::new()),
            sink,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Registers `addr` so CONNECTs without `nodeId` may use it; `pin` applies to them.
    pub(crate) fn register(&self, addr: SocketAddr, pin: Option<NodeId>) {
        let addr = canonical(addr);
        let mut map = self.entries.lock().expect("tracker lock");
        let e = map.entry(addr).or_default();
        e.registered = true;
        if pin.is_some() {
            e.pin = pin;
        }
    }

    /// Registers `addr` as reached through `relay` with `pin`.
    pub(crate) fn register_relayed(&self, addr: SocketAddr, pin: NodeId, relay: RelaySpec) {
        let addr = canonical(addr);
        let mut map = self.entries.lock().expect("tracker lock");
        let e = map.entry(addr).or_default();
        e.registered = true;
        e.pin = Some(pin);
        e.via = Some(relay);
    }

    /// The relay a registered address is reached through.
    pub(crate) fn via(&self, addr: &SocketAddr) -> Option<RelaySpec> {
        let map = self.entries.lock().expect("tracker lock");
        map.get(&canonical(*addr)).and_then(|e| e.via.clone())
    }

    /// Applies a path change to the connections running on its virtual address and reports
    /// it as a `path` event (called by the proxy's event task, never from the socket).
    pub(crate) fn set_path(&self, change: PathChange) {
        let addr = canonical(change.addr);
        let changed: Vec<(Arc<Peer>, Path)> = self
            .peers()
            .into_iter()
            .filter(|p| p.quic_addr == addr)
            .filter_map(|p| {
                let before = std::mem::replace(&mut *p.path.lock().expect("path lock"), change.to);
                (before != change.to).then_some((p, before))
            })
            .collect();
        for (p, before) in changed {
            self.emit_path(&p, before, change.reason);
        }
    }

    /// The pin of a registered address: `None` if not registered.
    pub(crate) fn registration(&self, addr: &SocketAddr) -> Option<Option<NodeId>> {
        let addr = &canonical(*addr);
        let map = self.entries.lock().expect("tracker lock");
        map.get(addr).filter(|e| e.registered).map(|e| e.pin)
    }

    /// The live connection to `addr`.
    pub(crate) fn get(&self, addr: &SocketAddr) -> Option<Arc<Peer>> {
        // Copied out first: no connection is asked anything while the tracker lock is held
        // (asking takes the connection's lock, which its driver may hold for a while).
        let peers = {
            let map = self.entries.lock().expect("tracker lock");
            map.get(&canonical(*addr))?.peers.clone()
        };
        // A connection that is already closing (e.g. reset by a restarted peer) or ending is
        // not reused.
        peers
            .into_iter()
            .rev()
            .find(|p| p.conn.close_reason().is_none() && !p.ending.is_ending())
    }

    /// The lock serialising dials to `addr` (one QUIC connection per address).
    pub(crate) fn dial_lock(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let addr = canonical(addr);
        let mut map = self.entries.lock().expect("tracker lock");
        map.entry(addr).or_default().dialing.clone()
    }

    /// Whether `lock` is still the dial lock of `addr` (false if the address was removed, e.g.
    /// by `closeConnection`, while the dial was in flight).
    pub(crate) fn is_current_dial(
        &self,
        addr: &SocketAddr,
        lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> bool {
        let map = self.entries.lock().expect("tracker lock");
        map.get(&canonical(*addr))
            .is_some_and(|e| Arc::ptr_eq(&e.dialing, lock))
    }

    /// Drops the entry of `addr` after a failed dial if nothing else uses it.
    pub(crate) fn forget_failed_dial(&self, addr: &SocketAddr, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.entries.lock().expect("tracker lock");
        let key = canonical(*addr);
        let unused = map.get(&key).is_some_and(|e| {
            Arc::ptr_eq(&e.dialing, lock)
                && !e.registered
                && e.peers.is_empty()
                && Arc::strong_count(&e.dialing) <= 2
        });
        if unused {
            map.remove(&key);
        }
    }

    /// Number of live connections.
    pub(crate) fn count(&self) -> usize {
        let map = self.entries.lock().expect("tracker lock");
        map.values().filter(|e| !e.peers.is_empty()).count()
    }

    /// Every live connection.
    pub(crate) fn peers(&self) -> Vec<Arc<Peer>> {
        let map = self.entries.lock().expect("tracker lock");
        map.values().flat_map(|e| e.peers.iter().cloned()).collect()
    }

    /// The secrets a direct path to `peer` keys its acks with: one exported from the TLS
    /// session of each connection to it, least first (both ends make their acks with the least
    /// and accept any, as one may still see a connection the other has closed).
    pub(crate) fn ack_secrets(&self, peer: NodeId) -> Vec<[u8; 32]> {
        let mut secrets: Vec<[u8; 32]> = self
            .peers()
            .iter()
            .filter(|p| p.node_id == peer)
            .filter_map(|p| {
                let mut k = [0u8; 32];
                p.conn
                    .export_keying_material(&mut k, b"keynet direct-path acks", b"")
                    .ok()
                    .map(|()| k)
            })
            .collect();
        secrets.sort_unstable();
        secrets
    }

    /// Resolves once `done(self)` holds, re-checking whenever a connection is added or removed.
    pub(crate) async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// Adds an established connection, emits `connection`, and watches it until it closes.
    pub(crate) fn insert(self: &Arc<Self>, peer: Arc<Peer>) {
        {
            let mut map = self.entries.lock().expect("tracker lock");
            map.entry(peer.remote).or_default().peers.push(peer.clone());
        }
        self.changed.notify_waiters();
        self.emit(EventKind::Connection, &peer, None);
        let me = self.clone();
        let t = self.timing;
        self.tasks.spawn(async move {
            let watch = async {
                tokio::join!(
                    peer.listen_for_end(t.grace),
                    peer.watch_silence(t.silence, t.every, t.grace)
                )
            };
            let err = tokio::select! {
                err = peer.conn.closed() => err,
                _ = watch => peer.conn.closed().await,
            };
            peer.ending.closed();
            let why = peer.reason_for(&err);
            tracing::debug!(remote = %peer.remote, node = %peer.node_id, reason = why.as_str(), "connection closed");
            {
                let mut map = me.entries.lock().expect("tracker lock");
                if let Some(e) = map.get_mut(&peer.remote) {
                    e.peers.retain(|p| !Arc::ptr_eq(p, &peer));
                    if !e.registered && e.peers.is_empty() && Arc::strong_count(&e.dialing) == 1 {
                        map.remove(&peer.remote);
                    }
                }
            }
            me.changed.notify_waiters();
            me.emit(EventKind::Close, &peer, Some(Reason::Close(why)));
        });
    }

    /// Forgets `addr` and ends its connections on purpose with `why` (see [`Peer::end`]);
    /// resolves once they closed, at most `connEndTime` after the call.
    /// `hurry` cancelled cuts the drain short: what is left is closed at once.
    pub(crate) async fn end(&self, addr: &SocketAddr, why: CloseReason, hurry: &CancellationToken) {
        end_peers(self.forget(addr), why, self.timing.grace, hurry).await;
    }

    /// Like [`Tracker::end`], without waiting: the end runs on the tracker's tasks. The
    /// address is forgotten at once, so what the caller does next (e.g. register it again)
    /// does not meet the ending connection.
    pub(crate) fn end_soon(&self, addr: SocketAddr, why: CloseReason) {
        let peers = self.forget(&addr);
        let grace = self.timing.grace;
        self.tasks
            .spawn(async move { end_peers(peers, why, grace, &CancellationToken::new()).await });
    }

    /// Ends every connection on purpose with `why` (see [`Peer::end`]), all at once; resolves
    /// when they closed, at most `connEndTime` after the call (at once when `hurry` is cancelled).
    pub(crate) async fn end_all(&self, why: CloseReason, hurry: &CancellationToken) {
        end_peers(self.peers(), why, self.timing.grace, hurry).await;
    }

    /// Drops the entry of `addr`; returns its connections.
    fn forget(&self, addr: &SocketAddr) -> Vec<Arc<Peer>> {
        let entry = self
            .entries
            .lock()
            .expect("tracker lock")
            .remove(&canonical(*addr));
        self.changed.notify_waiters();
        entry.map(|e| e.peers).unwrap_or_default()
    }

    /// Closes every connection with `why` at once (their tunnels are reset).
    pub(crate) fn close_all(&self, why: CloseReason) {
        for p in self.peers() {
            p.close(why.clone());
        }
    }

    /// A snapshot of the connection to `addr`.
    pub(crate) fn info(&self, addr: &SocketAddr) -> Option<ConnectionInfo> {
        self.get(addr).map(|p| p.info(self.local, self.role))
    }

    /// A snapshot of every live connection.
    pub(crate) fn infos(&self) -> Vec<ConnectionInfo> {
        self.peers().iter().map(|p| self.info_of(p)).collect()
    }

    /// A snapshot of `peer` from this tracker's side.
    pub(crate) fn info_of(&self, peer: &Peer) -> ConnectionInfo {
        peer.info(self.local, self.role)
    }

    fn emit(&self, kind: EventKind, peer: &Peer, reason: Option<Reason>) {
        self.send(Event {
            kind,
            info: Some(peer.info(self.local, self.role)),
            reason,
            previous_path: None,
            addresses: Vec::new(),
            relay: None,
        });
    }

    fn emit_path(&self, peer: &Peer, before: Path, reason: crate::events::PathReason) {
        self.send(Event {
            kind: EventKind::Path,
            info: Some(peer.info(self.local, self.role)),
            reason: Some(Reason::Path(reason)),
            previous_path: Some(before),
            addresses: Vec::new(),
            relay: None,
        });
    }

    /// Hands an event to the user's sink, if one is set.
    pub(crate) fn send(&self, event: Event) {
        let sink = self.sink.read().expect("sink lock").clone();
        if let Some(sink) = sink {
            sink(event);
        }
    }
}

/// Ends `peers` on purpose with `why`, side by side (see [`Peer::end`]).
/// Ends `peers` side by side; `hurry` cancelled closes those still draining at once.
async fn end_peers(
    peers: Vec<Arc<Peer>>,
    why: CloseReason,
    grace: Duration,
    hurry: &CancellationToken,
) {
    tokio::select! {
        _ = crate::task::join_all(peers.iter().map(|p| p.end(why.clone(), grace))) => {}
        _ = hurry.cancelled() => {
            for p in &peers {
                p.close(why.clone());
            }
        }
    }
}
