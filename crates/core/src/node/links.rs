//! Wiring a relay link into a node: path changes reach the tracker (and the user as `path`
//! events), link states reach the user as `relay` events and discovery as the node's [`Reach`],
//! relayed connections close with `relayLost` when the link stays down, a reverse proxy's
//! public-port traffic goes to its server, and links opened on demand close once idle.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::home::HomeChooser;
use super::Node;
use crate::discovery::record::{RelayHint, MAX_RELAYS};
use crate::discovery::Reach;
use crate::events::{CloseReason, Event, Path};
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::relay::link::public;
use crate::relay::link::transport::Dialer;
use crate::relay::link::{LinkContext, RelayLink};
use crate::relay::spec::{LinkStatus, RelaySpec, Transport};
use crate::socket::KeynetSocket;
use crate::task::Tasks;
use crate::tracker::Tracker;

/// One relay link of a node.
struct Entry {
    link: Arc<RelayLink>,
    /// Opened to reach a node through its home relay: never announced, closed once idle.
    on_demand: bool,
    /// Since when no relayed connection used it (on-demand links only).
    idle_since: Option<Instant>,
}

/// A node's relay links, in the order they were made (the start relays first, in the order
/// given), and the choice of its home relay among the registered ones.
/// The third field is the node's latest signed record, which every registered link hands its
/// relay (a relay with a DHT node stores it for the node).
#[derive(Default)]
pub(crate) struct Links(
    Mutex<Vec<Entry>>,
    Mutex<HomeChooser>,
    Mutex<Option<Vec<u8>>>,
);

impl Links {
    /// Adds a link.
    pub(super) fn add(&self, link: Arc<RelayLink>, on_demand: bool) {
        // Under the links lock (as in `get_or_attach`): a record set meanwhile reaches it.
        let mut links = self.0.lock().expect("links lock");
        self.give_record(&link, on_demand);
        links.push(Entry {
            link,
            on_demand,
            idle_since: None,
        });
    }

    /// The node signed a new record: its registered links hand it to their relays.
    pub(crate) fn set_record(&self, record: Vec<u8>) {
        *self.2.lock().expect("record lock") = Some(record.clone());
        for e in self.0.lock().expect("links lock").iter() {
            if !e.on_demand {
                e.link.announce(record.clone());
            }
        }
    }

    fn give_record(&self, link: &RelayLink, on_demand: bool) {
        if on_demand {
            return;
        }
        if let Some(r) = self.2.lock().expect("record lock").clone() {
            link.announce(r);
        }
    }

    /// Records a round-trip sample of the relay `relay`.
    pub(crate) fn sample(&self, relay: NodeId, rtt: Duration) {
        self.1
            .lock()
            .expect("home lock")
            .sample(relay, rtt, Instant::now());
    }

    /// The registered links (not those opened on demand) in order, the home first, with the
    /// home's node id. Decides the home now.
    fn registered(&self) -> (Vec<Arc<RelayLink>>, Option<NodeId>) {
        let mut links: Vec<Arc<RelayLink>> = {
            let all = self.0.lock().expect("links lock");
            all.iter()
                .filter(|e| !e.on_demand)
                .map(|e| e.link.clone())
                .collect()
        };
        let states: Vec<(NodeId, bool)> = links
            .iter()
            .map(|l| {
                let up = matches!(l.status(), LinkStatus::Up { .. });
                (l.spec().node_id, up)
            })
            .collect();
        let home = self
            .1
            .lock()
            .expect("home lock")
            .choose(&states, Instant::now());
        if let Some(i) = links.iter().position(|l| Some(l.spec().node_id) == home) {
            let h = links.remove(i);
            links.insert(0, h);
        }
        (links, home)
    }

    /// The first link given at start (a registered one).
    pub(crate) fn first_registered(&self) -> Option<Arc<RelayLink>> {
        let all = self.0.lock().expect("links lock");
        all.iter().find(|e| !e.on_demand).map(|e| e.link.clone())
    }

    /// The home relay's link, if one is up.
    pub(crate) fn home(&self) -> Option<Arc<RelayLink>> {
        let (links, home) = self.registered();
        home.and(links.into_iter().next())
    }

    /// Every link.
    pub(crate) fn all(&self) -> Vec<Arc<RelayLink>> {
        let links = self.0.lock().expect("links lock");
        links.iter().map(|e| e.link.clone()).collect()
    }

    /// A link to the relay with node id `relay`, whatever it registered with.
    pub(crate) fn by_relay(&self, relay: &NodeId) -> Option<Arc<RelayLink>> {
        let links = self.0.lock().expect("links lock");
        links
            .iter()
            .find(|e| e.link.spec().node_id == *relay)
            .map(|e| e.link.clone())
    }

    /// The link registered as `spec` asks, else a new one from `attach`; a link to the same relay
    /// registered differently (token, transport) is replaced. A link a user asked for
    /// (`on_demand` false) is kept from then on.
    pub(super) fn get_or_attach(
        &self,
        spec: &RelaySpec,
        on_demand: bool,
        attach: impl FnOnce() -> Arc<RelayLink>,
    ) -> Arc<RelayLink> {
        let mut links = self.0.lock().expect("links lock");
        if let Some(e) = links.iter_mut().find(|e| e.link.same_registration(spec)) {
            e.on_demand &= on_demand;
            self.give_record(&e.link, e.on_demand);
            return e.link.clone();
        }
        links.retain(|e| {
            let same_relay =
                e.link.spec().addr == spec.addr && e.link.spec().node_id == spec.node_id;
            if same_relay {
                e.link.stop();
            }
            !same_relay
        });
        let link = attach();
        self.give_record(&link, on_demand);
        links.push(Entry {
            link: link.clone(),
            on_demand,
            idle_since: None,
        });
        link
    }

    /// How the node is reached through its registered links (not those opened on demand): the
    /// relays up, the home first, and the address the first QUIC one observed.
    pub(crate) fn reach(&self) -> Reach {
        let (links, _) = self.registered();
        let mut reach = Reach::default();
        for link in links {
            let LinkStatus::Up {
                transport,
                observed,
                ..
            } = link.status()
            else {
                continue;
            };
            if reach.relays.len() == MAX_RELAYS {
                break;
            }
            let spec = link.spec();
            if transport == Transport::Quic && reach.observed.is_none() {
                reach.observed = Some(observed);
            }
            reach.relays.push(RelayHint {
                node_id: spec.node_id,
                addr: spec.addr,
                tcp_port: spec.tcp_addr().port(),
                quic: transport == Transport::Quic,
                websocket: transport == Transport::WebSocket,
            });
        }
        reach
    }

    /// Stops and removes the on-demand links no relayed connection used for `idle`;
    /// `in_use(link)` says whether one uses it now.
    fn reap(&self, idle: Duration, now: Instant, in_use: impl Fn(&RelayLink) -> bool) {
        let mut links = self.0.lock().expect("links lock");
        links.retain_mut(|e| {
            if !e.on_demand {
                return true;
            }
            if in_use(&e.link) {
                e.idle_since = None;
                return true;
            }
            let since = *e.idle_since.get_or_insert(now);
            if now.duration_since(since) < idle {
                return true;
            }
            tracing::debug!(relay = %e.link.spec().addr, "idle on-demand relay link closed");
            self.1
                .lock()
                .expect("home lock")
                .forget(&e.link.spec().node_id);
            e.link.stop();
            false
        });
    }
}

/// Waits until one of `links` registered (the others go on trying in the background), until
/// `deadline`; else the first failure (each wait ends at its link's first failure, as the start
/// with one relay always did).
pub(super) async fn wait_any_up(
    links: &[Arc<RelayLink>],
    deadline: Instant,
) -> crate::error::Result<()> {
    let mut waits = tokio::task::JoinSet::new();
    for link in links {
        let link = link.clone();
        waits.spawn(async move { link.wait_up(deadline, true).await });
    }
    let mut first_error = None;
    while let Some(joined) = waits.join_next().await {
        match joined {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(crate::error::StartError::Task(e.into()).into());
            }
        }
    }
    Err(first_error.unwrap_or(crate::error::Error::ForwardProxyNotRunning))
}

/// Relays found on the DHT under `network`, nearest first (at most [`MAX_RELAYS`]): each
/// candidate is probed over QUIC (in parallel, within `budget`) for its node id and round trip.
pub(super) async fn discover(
    discovery: &crate::discovery::Discovery,
    dialer: &crate::relay::link::transport::Dialer,
    network: &str,
    budget: Duration,
) -> Vec<RelaySpec> {
    let deadline = Instant::now() + budget;
    let found = discovery.find_relays(network, deadline).await;
    let mut probes = tokio::task::JoinSet::new();
    for addr in found.into_iter().take(MAX_PROBES) {
        let dialer = dialer.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        probes.spawn(async move {
            crate::relay::link::transport::probe(&dialer, addr, left)
                .await
                .map(|(id, rtt)| (addr, id, rtt))
        });
    }
    let mut answered = Vec::new();
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(Ok(r)) => answered.push(r),
            Ok(Err(e)) => tracing::debug!(error = %e, "a published relay did not answer"),
            Err(_) => {}
        }
    }
    answered.sort_by_key(|(_, _, rtt)| *rtt);
    tracing::info!(%network, relays = answered.len(), "relays found on the DHT");
    answered
        .into_iter()
        .take(MAX_RELAYS)
        .map(|(addr, id, _)| RelaySpec::new(addr, id))
        .collect()
}

/// Published relays probed at once.
const MAX_PROBES: usize = 8;

/// Closes on-demand relay links once no relayed connection used them for `idle` (checked every
/// quarter of it, at most every 15 s).
pub(super) fn spawn_idle_reaper(node: &Arc<Node>, idle: Duration) {
    let weak = Arc::downgrade(node);
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    node.tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(node) = weak.upgrade() else { return };
            let relayed: Vec<_> = node
                .tracker
                .peers()
                .into_iter()
                .filter(|p| p.is_relay_backed())
                .map(|p| p.node_id)
                .collect();
            let paths = &node.socket.paths;
            node.links.reap(idle, Instant::now(), |link| {
                relayed.iter().any(|n| {
                    paths
                        .relay_of(n)
                        .is_some_and(|o| o.same_channel(link.outbox()))
                })
            });
        }
    });
}

/// How long relayed connections outlive their relay's link (it may come back): 2 s, or a
/// quarter of the keepalive timeout when that is shorter (the link notices a dead relay at half
/// of it, and the connections must be closed before their own timeout). A link that notices a
/// dead relay quickly (`fast`: several relays, or opened on demand) gives a quarter of the
/// keepalive timeout (5 s): time for the caller to move the connection to another relay.
fn relay_loss_grace(opts: &ConnOptions, fast: bool) -> std::time::Duration {
    let quarter = opts.keepalive_timeout / 4;
    if fast {
        quarter
    } else {
        std::time::Duration::from_secs(2).min(quarter)
    }
}

/// Applies the path changes of `socket`'s relayed peers to `tracker` (which reports them as
/// `path` events), in a task of the proxy's own: the socket only queues them.
pub(super) fn watch_paths(socket: &KeynetSocket, tracker: &Arc<Tracker>, tasks: &Tasks) {
    let Some(mut changes) = socket.paths.take_changes() else {
        return;
    };
    let weak = Arc::downgrade(tracker);
    tasks.spawn(async move {
        while let Some(change) = changes.recv().await {
            let Some(t) = weak.upgrade() else { return };
            t.set_path(change);
        }
    });
}

/// Starts a link to `spec` for `node`, registering as `identity`, and wires it.
pub(super) fn attach(node: &Node, spec: RelaySpec, identity: &LoadedIdentity) -> Arc<RelayLink> {
    let link = RelayLink::start(
        spec,
        LinkContext {
            dialer: Dialer {
                endpoint: node.endpoint.clone(),
                identity: identity.clone(),
                opts: node.opts.clone(),
                tasks: node.tasks.clone(),
                channel: true,
            },
            socket: node.socket.clone(),
            public: node
                .server
                .map(|server| public::PublicPort::new(server, node.tasks.clone())),
            tracker: Arc::downgrade(&node.tracker),
        },
    );
    // Every state change of the link reaches the user as a `relay` event, and discovery as
    // the node's reach.
    let mut status = link.watch();
    let tracker = Arc::downgrade(&node.tracker);
    let spec = link.spec().clone();
    let links = Arc::downgrade(&node.links);
    let discovery = node.discovery.clone();
    node.tasks.spawn(async move {
        while status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            if let (Some(d), Some(links)) = (&discovery, links.upgrade()) {
                d.set_reach(links.reach());
            }
            let Some(t) = tracker.upgrade() else { return };
            t.send(Event::relay((spec.clone(), now)));
        }
    });
    // Round trips feed the home choice; a new home is announced.
    let mut rtt = link.watch_rtt();
    let links = Arc::downgrade(&node.links);
    let discovery = node.discovery.clone();
    let relay = link.spec().node_id;
    node.tasks.spawn(async move {
        while rtt.changed().await.is_ok() {
            let sample = *rtt.borrow_and_update();
            let Some(links) = links.upgrade() else { return };
            if let Some(sample) = sample {
                links.sample(relay, sample);
            }
            if let Some(d) = &discovery {
                d.set_reach(links.reach());
            }
        }
    });
    // Relayed connections cannot outlive their relay: once it has been gone for a grace period
    // (a rendezvous in flight may still move them off it, a quick relay restart lets them go
    // on), close those still relayed through it with a clear reason (those through another
    // relay of this node go on).
    let mut status = link.watch();
    let tracker = Arc::downgrade(&node.tracker);
    let grace = relay_loss_grace(&node.opts, link.spec().silence.is_some());
    let socket = Arc::downgrade(&node.socket);
    let outbox = link.outbox().clone();
    let me = node.me.clone();
    let relay = link.spec().node_id;
    node.tasks.spawn(async move {
        while status.changed().await.is_ok() {
            if !matches!(*status.borrow_and_update(), LinkStatus::Down(..)) {
                continue;
            }
            // Try to move them to another relay of their peer at once (callers with discovery).
            if let Some(node) = me.get().and_then(Weak::upgrade) {
                node.move_relayed_from(&outbox, relay);
            }
            let back = tokio::time::timeout(grace, async {
                while status.changed().await.is_ok() {
                    if matches!(*status.borrow_and_update(), LinkStatus::Up { .. }) {
                        return;
                    }
                }
                std::future::pending::<()>().await
            })
            .await;
            if back.is_ok() {
                continue;
            }
            let (Some(t), Some(socket)) = (tracker.upgrade(), socket.upgrade()) else {
                return;
            };
            for peer in t.peers() {
                let through_this = socket
                    .paths
                    .relay_of(&peer.node_id)
                    .is_some_and(|o| o.same_channel(&outbox));
                if peer.is_relay_backed() && peer.path() == Path::Relayed && through_this {
                    peer.close(CloseReason::RelayLost);
                }
            }
        }
    });
    link
}
