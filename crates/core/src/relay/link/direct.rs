//! The direct path of one relayed peer, from rendezvous to the end of its connections: punch
//! toward the address the relay gave, use the path once the peer acknowledged our punch, probe
//! it (authenticated by nonce echo, [`PathLiveness`]), fall back to the relay when it stops
//! answering, find it again with recovery probes, and ask the relay for a fresh rendezvous with
//! a backoff when the addresses may have changed. One task per peer and link, owned by the
//! proxy's tasks; a newer rendezvous for the same peer replaces it.
//!
//! Everything here runs in its own task: the socket's send and receive paths (inside quinn's
//! connection driver) only read the routing table, so a path change can never deadlock them.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::birthday::{self, Role};
use crate::events::{Path, PathReason};
use crate::holepunch::{PunchDriver, PunchEvent};
use crate::nodeid::NodeId;
use crate::proto::liveness::{Liveness, PathLiveness, Transition};
use crate::proto::punch::{AckKey, Kind, Packet};
use crate::proto::relay::Mapping;
use crate::socket::KeynetSocket;
use crate::tracker::Tracker;

/// How long a rendezvous punches before the peer stays relayed (until the next attempt).
pub(crate) const RENDEZVOUS_BUDGET: Duration = Duration::from_secs(5);
/// When one side's NAT maps per destination, plain punching gets this long (a peer-reflexive
/// punch to a full cone succeeds well within it) before the birthday punch starts.
const BEFORE_BIRTHDAY: Duration = Duration::from_secs(2);
/// A fresh rendezvous is asked for this long after the path died (recovery probes find a path
/// that merely blinked sooner; one whose addresses changed needs the relay)…
pub(crate) const RECALL_MIN: Duration = Duration::from_secs(3);
/// …doubling up to this, so a peer that can never be punched costs the relay one request per
/// five minutes.
pub(crate) const RECALL_MAX: Duration = Duration::from_secs(300);
/// After a network change, a rendezvous is asked for this long after the path died: time for
/// the link to register again from the new network (a request sent while it is down is lost).
const AFTER_NETWORK_CHANGE: Duration = Duration::from_secs(1);
/// How long a rendezvous waits for the connection to the peer to be tracked (the relay can
/// deliver it just before the accepted connection's hello is done).
const KEY_WAIT: Duration = Duration::from_secs(2);
/// The connections to the peer count as gone once quinn sent it nothing for this long (live
/// connections send keepalives every `connKeepAliveIntervalTime`); at least 5 s.
fn idle_limit(keepalive_interval: Duration) -> Duration {
    (keepalive_interval * 3).max(Duration::from_secs(5))
}

/// What a direct path asks of the relay link that arranged its rendezvous (the link keeps the
/// request backoff per peer, so it outlives a replaced task).
pub(crate) trait Arranger: Send + Sync {
    /// Asks the relay for a fresh rendezvous with `peer`.
    fn recall(&self, peer: NodeId);
    /// How long to wait before the next request for `peer` (backs off).
    fn recall_delay(&self, peer: NodeId) -> Duration;
    /// `peer`'s direct path works (again): the backoff starts afresh.
    fn recall_succeeded(&self, peer: NodeId);
    /// `peer`'s connections are gone: forget its rendezvous.
    fn forget_rendezvous(&self, peer: &NodeId);
}

/// What a direct-path task works with.
pub(crate) struct DirectPath {
    /// The proxy's socket.
    pub socket: Arc<KeynetSocket>,
    /// The link that arranged the rendezvous (asked again for new ones).
    pub link: Weak<dyn Arranger>,
    /// The relayed peer.
    pub peer: NodeId,
    /// The peer's UDP address, as the relay observed it.
    pub addr: SocketAddr,
    /// Punch cadence.
    pub punch_interval: Duration,
    /// The connections' keepalive cadence (to tell a gone connection from an idle one).
    pub keepalive_interval: Duration,
    /// Whether this side asks the relay for rendezvous with this peer (the side that dialled).
    pub initiator: bool,
    /// Bumped when the application reports a network change.
    pub network: watch::Receiver<u64>,
    /// The node's connections: acks are keyed with a secret of a connection to the peer.
    pub tracker: Weak<Tracker>,
    /// This node's id (acks are bound to the acking node).
    pub me: NodeId,
    /// What the relay saw of both NATs (decides the birthday punch's roles).
    pub mapping: Mapping,
}

impl DirectPath {
    /// Runs until the peer's connections are gone, the punch session is taken over by a newer
    /// one, or the task is cancelled.
    pub(crate) async fn run(mut self) {
        let paths = &self.socket.paths;
        let (peer, mut addr) = (self.peer, self.addr);
        let mut strays = self.socket.strays();
        let Some(key) = self.ack_key().await else {
            tracing::info!(%peer, "rendezvous without a connection to the peer: ignored");
            return;
        };
        if paths.direct_of(peer).is_some_and(|d| d != addr) {
            // The relay reports the peer somewhere else: its old address is stale.
            paths.drop_direct(peer, PathReason::Rebinding);
        }
        let role = birthday::role(self.mapping);
        let first = if role.is_some() {
            BEFORE_BIRTHDAY
        } else {
            RENDEZVOUS_BUDGET
        };
        let (mut punch, found) = self.punch_phase(addr, &key, Some(&mut strays), first).await;
        addr = found;
        drop(strays);
        // Held while this task runs: the hard side's datagrams to the peer leave from the
        // socket the birthday punch found.
        let mut _via = None;
        if let (false, Some(role)) = (punch.confirmed(), role) {
            let found = match role {
                Role::Hard => birthday::open_many(&self.socket, peer, addr, &key)
                    .await
                    .map(|(aux, from)| {
                        _via = Some(ViaPath {
                            _via: self.socket.adopt_via(from, aux),
                            socket: self.socket.clone(),
                            peer,
                            addr: from,
                        });
                        from
                    }),
                Role::Easy => birthday::spray(&self.socket, peer, addr, &key).await,
            };
            match found {
                Some(found) => {
                    (punch, addr) = self.punch_phase(found, &key, None, RENDEZVOUS_BUDGET).await;
                }
                None => {
                    tracing::info!(%peer, ?role, "birthday punch found no mapping: relayed for now")
                }
            }
        }
        let kind = path_kind(punch.nat_between());
        let confirmed = punch.confirmed();
        let mut session = punch.into_session();
        let local = self.socket.local_toward(addr);

        let now = Instant::now();
        let mut live = if confirmed || paths.direct_of(peer) == Some(addr) {
            PathLiveness::alive(now)
        } else {
            tracing::info!(%peer, %addr, "rendezvous punch failed: relayed for now");
            PathLiveness::dead(now)
        };
        if confirmed {
            self.with_link(|l| l.recall_succeeded(peer));
        }
        let mut recall_at = (live.state() == Liveness::Dead).then(|| now + self.recall_delay());
        let idle = idle_limit(self.keepalive_interval);
        let mut idle_at = now + idle;
        let mut last_sent = paths.sent_to(peer);
        // Set by a network change until the path proved itself or died of it.
        let mut network_moved = false;

        loop {
            let wake = [Some(live.poll_timeout()), recall_at, Some(idle_at)]
                .into_iter()
                .flatten()
                .min()
                .expect("a wake-up time");
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                d = session.rx.recv() => {
                    // A newer punch session for the same address took the datagrams.
                    let Some(d) = d else { return };
                    let Ok(p) = Packet::decode(&d) else { continue };
                    match p.kind {
                        Kind::Punch => {
                            // The peer probes or punches: answer, and if our side thinks the
                            // path dead, check at once whether it works again.
                            let ack = Packet { kind: Kind::Ack, nonce: key.ours(p.nonce), sender_local: local, observed: Some(addr) };
                            self.socket.send_to(addr, &ack.encode()).await;
                            if live.state() == Liveness::Dead {
                                live.probe_now(Instant::now());
                            }
                        }
                        Kind::Ack => {
                            // Only the peer, with the key, can answer one of our probes.
                            let answered = live.outstanding().iter().copied().find(|n| key.accepts(*n, p.nonce));
                            let Some(nonce) = answered else { continue };
                            if live.on_ack(Instant::now(), nonce) == Some(Transition::Recovered) {
                                paths.use_direct(peer, addr, kind, PathReason::Upgrade);
                                self.with_link(|l| l.recall_succeeded(peer));
                                recall_at = None;
                            }
                        }
                    }
                }
                changed = self.network.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = Instant::now();
                    live.probe_now(now);
                    network_moved = true;
                    if recall_at.is_some() {
                        // New addresses are likely: ask for a rendezvous as soon as the link
                        // has registered again from the new network.
                        self.with_link(|l| l.recall_succeeded(peer));
                        recall_at = Some(now + AFTER_NETWORK_CHANGE);
                    }
                }
            }
            let now = Instant::now();
            let (transition, probe) = live.poll(now, crate::addr::random_u64());
            match transition {
                Some(Transition::Died) if network_moved => {
                    paths.drop_direct(peer, PathReason::NetworkChanged);
                    recall_at = Some(now + AFTER_NETWORK_CHANGE);
                }
                Some(Transition::Died) => {
                    paths.drop_direct(peer, PathReason::ProbeTimeout);
                    recall_at = Some(now + self.recall_delay());
                }
                _ => {}
            }
            if transition.is_some() || live.state() == Liveness::Alive {
                network_moved = false;
            }
            if let Some(nonce) = probe {
                let p = Packet {
                    kind: Kind::Punch,
                    nonce,
                    sender_local: local,
                    observed: None,
                };
                self.socket.send_to(addr, &p.encode()).await;
            }
            if recall_at.is_some_and(|t| t <= now) {
                recall_at = Some(now + self.recall_delay());
                if self.initiator {
                    match self.link.upgrade() {
                        Some(l) => l.recall(peer),
                        None => return,
                    }
                }
            }
            if idle_at <= now {
                let sent = paths.sent_to(peer);
                if sent == last_sent {
                    tracing::debug!(%peer, "no connection to the peer any more: direct path forgotten");
                    paths.forget_direct(peer);
                    if let Some(l) = self.link.upgrade() {
                        l.forget_rendezvous(&peer);
                    }
                    return;
                }
                last_sent = sent;
                idle_at = now + idle;
            }
        }
    }
}

/// The socket a birthday punch found, held for the peer's direct path: when the task that
/// found it ends (the peer's connections are gone, or a newer rendezvous replaced it), the
/// path through it ends too, and the peer's datagrams go through the relay again until the
/// next punch (from the main socket they would meet a NAT mapping the peer's NAT filters).
struct ViaPath {
    _via: crate::socket::ViaGuard,
    socket: Arc<KeynetSocket>,
    peer: NodeId,
    addr: SocketAddr,
}

impl Drop for ViaPath {
    fn drop(&mut self) {
        if self.socket.paths.direct_of(self.peer) == Some(self.addr) {
            self.socket
                .paths
                .drop_direct(self.peer, PathReason::Rebinding);
        }
    }
}

impl DirectPath {
    /// Punches `addr` for `budget`, until the path works both ways and the peer's punch was
    /// acknowledged: accepts the peer's packets from the address before acknowledging its first
    /// punch (it sends there once the ack arrives), sends there once our punch was
    /// acknowledged. With `strays`, follows once a punch from the peer's IP on another port.
    /// Returns the punch (confirmed or not) and the address it ended on.
    async fn punch_phase(
        &self,
        mut addr: SocketAddr,
        key: &AckKey,
        mut strays: Option<&mut tokio::sync::broadcast::Receiver<crate::socket::Stray>>,
        budget: Duration,
    ) -> (PunchDriver, SocketAddr) {
        let (paths, peer) = (&self.socket.paths, self.peer);
        let mut punch = self.rendezvous_punch(addr, key);
        let _ = tokio::time::timeout(budget, async {
            let (mut seen, mut confirmed, mut followed) = (false, false, strays.is_none());
            while !(seen && confirmed) {
                let event = tokio::select! {
                    e = punch.next_event() => e,
                    stray = async { strays.as_mut().expect("following").recv().await }, if !(followed || seen || confirmed) => {
                        let Some(from) = peer_reflexive(stray, addr) else { continue };
                        // The peer's NAT maps per destination: its punches to us come from a
                        // port the relay never saw. Punch there instead (once). Only the peer,
                        // with the key, can acknowledge it: a forged source costs this
                        // rendezvous, never the path.
                        tracing::debug!(%peer, relay_saw = %addr, %from, "the peer punches from another port: following it");
                        addr = from;
                        followed = true;
                        punch = self.rendezvous_punch(addr, key);
                        continue;
                    }
                };
                match event {
                    PunchEvent::PeerPunched => {
                        if !seen && !confirmed {
                            paths.accept_direct(peer, addr);
                        }
                        seen = true;
                    }
                    PunchEvent::Confirmed => {
                        if !seen {
                            paths.accept_direct(peer, addr);
                        }
                        confirmed = true;
                        let kind = path_kind(punch.nat_between());
                        paths.use_direct(peer, addr, kind, PathReason::Upgrade);
                    }
                    PunchEvent::PathOpened => {}
                }
            }
            punch.flush().await;
        })
        .await;
        (punch, addr)
    }

    /// A rendezvous punch session toward `addr`, its acks keyed with `key`.
    fn rendezvous_punch(&self, addr: SocketAddr, key: &AckKey) -> PunchDriver {
        PunchDriver::start(
            &self.socket,
            addr,
            self.punch_interval,
            RENDEZVOUS_BUDGET,
            u32::MAX,
        )
        .for_rendezvous(key.clone())
    }

    /// The key of this path's acks, once a connection to the peer is tracked.
    async fn ack_key(&self) -> Option<AckKey> {
        let tracker = self.tracker.upgrade()?;
        let peer = self.peer;
        let _ = tokio::time::timeout(
            KEY_WAIT,
            tracker.wait_until(|t| !t.ack_secrets(peer).is_empty()),
        )
        .await;
        let secrets = tracker.ack_secrets(peer);
        (!secrets.is_empty()).then(|| AckKey::new(&secrets, self.me.as_bytes(), peer.as_bytes()))
    }

    fn with_link(&self, f: impl FnOnce(&dyn Arranger)) {
        if let Some(l) = self.link.upgrade() {
            f(&*l);
        }
    }

    /// The wait before the next rendezvous request. The backoff lives in the link, not in this
    /// task: each rendezvous starts a new task, and the wait must keep growing across them.
    fn recall_delay(&self) -> Duration {
        self.link
            .upgrade()
            .map_or(RECALL_MAX, |l| l.recall_delay(self.peer))
    }
}

/// The source of a stray punch that may be the peer's (whose address the relay saw as
/// `relayed`): a punch from the same IP on another port, as a NAT that maps per destination
/// sends it.
fn peer_reflexive(
    stray: Result<crate::socket::Stray, tokio::sync::broadcast::error::RecvError>,
    relayed: SocketAddr,
) -> Option<SocketAddr> {
    let (from, datagram) = stray.ok()?;
    let same_host = from.ip() == relayed.ip() && from.port() != relayed.port();
    let punch = matches!(Packet::decode(&datagram), Ok(p) if p.kind == Kind::Punch);
    (same_host && punch).then_some(from)
}

fn path_kind(nat_between: bool) -> Path {
    if nat_between {
        Path::Punched
    } else {
        Path::Direct
    }
}
