//! A keynode: what a forward proxy and a reverse proxy share. One QUIC endpoint on one UDP
//! socket (with its relayed paths and punch sessions), the identity, connection options, the
//! tasks, the connection tracker, DHT discovery and relay links. The proxies are fronts on a
//! `Node`: the forward proxy an HTTP CONNECT listener that dials ([`dial`]), the reverse proxy a
//! QUIC acceptor that carries tunnels to its server.
//!
//! Ownership: the front's `start()` builds the node and its `stop()` shuts it down; every task
//! here is on [`Node::tasks`] and ends then.

pub(crate) mod dial;
pub(crate) mod early;
mod home;
mod links;
pub(crate) mod services;
pub(crate) mod stats;
mod tickets;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::close_gate::CloseGate;
use crate::discovery::record::RelayHint;
use crate::discovery::{self, Discovery, DiscoveryOptions, Found, Located};
use crate::error::{Error, Result};
use crate::events::{CloseReason, EventSink};
use crate::identity::LoadedIdentity;
use crate::lifecycle::{self, Identities};
use crate::netwatch::{self, Seen};
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::relay::link::RelayLink;
use crate::relay::spec::{LinkStatus, RelaySpec, FAILOVER_SILENCE};
use crate::socket::{self, KeynetSocket};
use crate::task::Tasks;
use crate::tracker::{Role, Tracker};

/// Relayed connections moved at once when their relay dies (one lookup each).
const MAX_MOVES: usize = 64;
/// The budget of one move (lookup and link).
const MOVE_TIME: Duration = Duration::from_secs(4);

/// How a node starts.
pub(crate) struct NodeConfig {
    /// Which side it plays (events name it).
    pub role: Role,
    /// The UDP address to bind.
    pub bind: SocketAddr,
    /// The identity for this start.
    pub identity: LoadedIdentity,
    /// Accept QUIC connections with this configuration (reverse proxies).
    pub server_config: Option<quinn::ServerConfig>,
    /// Join the DHT.
    pub discovery: Option<DiscoveryOptions>,
    /// Register with these relays; the start fails if none registers in time.
    pub relays: Vec<RelaySpec>,
    /// The server public-port clients of the relay are carried to (reverse proxies).
    pub server: Option<SocketAddr>,
    /// Cancelled: the start gives up (`Aborted`) and leaves nothing running.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

/// Resolves when `cancel` is cancelled; never without one.
async fn cancelled(cancel: &Option<tokio_util::sync::CancellationToken>) {
    match cancel {
        Some(c) => c.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The transport of one connection between proxies with the peer at `to` (dialled or
/// accepted), and the gate that lets its close past a full congestion window
/// ([`crate::close_gate`]): each connection has its own. On a route that carries large packets
/// it searches for them and starts with a window of ten ([`socket::mtu`]).
pub(crate) fn peer_transport(
    opts: &ConnOptions,
    to: SocketAddr,
) -> (quinn::TransportConfig, CloseGate) {
    let mut transport = opts.peer_transport_config();
    let gate = CloseGate::new();
    let large = socket::mtu::large_path_toward(to);
    gate.install(&mut transport, large.map(|l| l.initial_window()));
    if let Some(large) = large {
        large.configure(&mut transport);
    }
    (transport, gate)
}

/// How long `stop()` spends withdrawing the services a node offered.
const WITHDRAW_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// A running keynode.
pub(crate) struct Node {
    /// Connection timing.
    pub opts: ConnOptions,
    /// The front's identities (kept across starts; `setTlsConfig` changes them).
    pub identities: Arc<Identities>,
    /// The QUIC endpoint.
    pub endpoint: quinn::Endpoint,
    /// Its UDP socket.
    pub socket: Arc<KeynetSocket>,
    /// Every connection and registered address.
    pub tracker: Arc<Tracker>,
    /// Every task of this start.
    pub tasks: Tasks,
    /// The UDP socket's address at start.
    pub addr: SocketAddr,
    /// The node id this start runs as.
    pub node_id: NodeId,
    /// Tunnels, bytes and failures, for `getStats()`.
    pub counters: Arc<stats::Counters>,
    /// The reverse proxy's server, for public-port traffic.
    server: Option<SocketAddr>,
    discovery: Option<Arc<Discovery>>,
    /// Every relay link: the start one, those dials asked for, and those opened on demand to
    /// reach a node through its home relay.
    links: Arc<links::Links>,
    /// Recent service lookups (round-robin positions).
    services: services::ServiceCache,
    /// The network last acted on.
    network: Arc<Seen>,
    /// Session tickets of the nodes this node dialled (see [`tickets`]).
    tickets: tickets::Tickets,
    /// This node, for tasks started before it was shared (a link's relay-loss task moves the
    /// connections it carried to other relays).
    me: Arc<std::sync::OnceLock<Weak<Self>>>,
}

impl Node {
    /// Binds the socket, starts discovery and the start relay's link (waiting for its first
    /// registration, bounded by `connConnectTime`), and the network watcher. On failure nothing
    /// is left running.
    pub(crate) async fn start(
        opts: &ConnOptions,
        identities: &Arc<Identities>,
        sink: &Arc<RwLock<Option<EventSink>>>,
        config: NodeConfig,
    ) -> Result<Arc<Self>> {
        if let Some(d) = &config.discovery {
            discovery::validate(d)?;
        }
        let identity = config.identity;
        let (endpoint, socket) = socket::bind_tuned(
            config.bind,
            config.server_config,
            &identity.derived_secret("quic stateless reset"),
            &opts.udp,
        )?;
        let addr = endpoint.local_addr()?;
        // A live connection sends at least every keepalive interval, and is gone after its
        // timeout and drain: no route of one is forgotten as silent before that.
        socket
            .paths
            .forget_silent_after(opts.keepalive_timeout + opts.end_time + opts.keepalive_interval);
        let tasks = Tasks::new();
        let tracker = Arc::new(Tracker::new(
            config.role,
            addr,
            opts,
            tasks.clone(),
            sink.clone(),
        ));
        let discovery = match &config.discovery {
            Some(d) => match tokio::select! {
                r = Discovery::start(d, addr.ip()) => r,
                _ = cancelled(&config.cancel) => Err(Error::Aborted),
            } {
                Ok(d) => Some(d),
                Err(e) => {
                    endpoint.close(0u32.into(), b"start failed");
                    tasks.shutdown(Duration::from_secs(1)).await;
                    return Err(e);
                }
            },
            None => None,
        };
        links::watch_paths(&socket, &tracker, &tasks);
        let node = Self {
            opts: opts.clone(),
            identities: identities.clone(),
            endpoint,
            socket,
            tracker,
            tasks,
            addr,
            node_id: identity.node_id,
            counters: Arc::default(),
            server: config.server,
            discovery,
            links: Arc::default(),
            services: Default::default(),
            network: Arc::new(Seen::now()),
            tickets: Default::default(),
            me: Arc::default(),
        };
        let mut relays = config.relays;
        // Relays found on the DHT, not given: the start does not depend on them.
        let mut discovered = false;
        let network = config
            .discovery
            .as_ref()
            .and_then(|o| o.relay_network.clone());
        if let (true, Some(d), Some(network)) = (relays.is_empty(), &node.discovery, network) {
            let dialer = crate::relay::link::transport::Dialer {
                endpoint: node.endpoint.clone(),
                identity: identity.clone(),
                opts: node.opts.clone(),
                tasks: node.tasks.clone(),
                channel: true,
            };
            relays = tokio::select! {
                found = links::discover(d, &dialer, &network, opts.connect_time) => found,
                _ = cancelled(&config.cancel) => {
                    node.endpoint.close(0u32.into(), b"start aborted");
                    node.tasks.shutdown(Duration::from_secs(1)).await;
                    return Err(Error::Aborted);
                }
            };
            discovered = true;
            if relays.is_empty() {
                tracing::warn!(%network, "no relay found on the DHT: starting without one");
            }
        }
        if relays.len() > 1 {
            // Several relays: notice a dead home quickly, so the node re-homes in seconds.
            for spec in &mut relays {
                spec.silence.get_or_insert(FAILOVER_SILENCE);
            }
        }
        if !relays.is_empty() {
            let deadline = Instant::now() + opts.connect_time;
            let started: Vec<_> = relays
                .into_iter()
                .map(|spec| links::attach(&node, spec, &identity))
                .collect();
            for link in &started {
                node.links.add(link.clone(), false);
            }
            let up = tokio::select! {
                up = links::wait_any_up(&started, deadline) => up,
                _ = cancelled(&config.cancel) => Err(Error::Aborted),
            };
            match up {
                Err(e) if discovered && !matches!(e, Error::Aborted) => {
                    tracing::warn!(error = %e, "no relay found on the DHT registered yet: starting without one (the links keep trying)");
                }
                Err(e) => {
                    node.endpoint.close(0u32.into(), b"start failed");
                    node.tasks.shutdown(Duration::from_secs(1)).await;
                    return Err(e);
                }
                Ok(()) => {}
            }
        }
        node.publish_reach();
        if let (Some(d), Some(opts)) = (&node.discovery, &config.discovery) {
            let links = Arc::downgrade(&node.links);
            let on_record: discovery::RecordSink = Arc::new(move |record| {
                if let Some(links) = links.upgrade() {
                    links.set_record(record);
                }
            });
            discovery::announce_for_proxy(
                d,
                opts,
                &identity,
                addr,
                &node.tasks,
                sink.clone(),
                Some(on_record),
            );
        }
        let node = Arc::new(node);
        let _ = node.me.set(Arc::downgrade(&node));
        if let Some(opts) = &config.discovery {
            links::spawn_idle_reaper(&node, opts.relay_idle);
        }
        netwatch::spawn_watcher(&node.tasks, &node, node.network.clone(), Self::react);
        Ok(node)
    }

    /// The counters, with the connections' paths now.
    pub(crate) fn stats(&self) -> stats::ProxyStats {
        self.counters
            .snapshot(self.tracker.peers().iter().map(|p| p.path()))
    }

    /// Closes every connection, lets them drain (up to `connEndTime`) and ends every task;
    /// then frees the UDP port (see [`lifecycle::release_port`]). The caller drops its handles
    /// and awaits [`lifecycle::wait_released`] with the result.
    pub(crate) async fn shutdown(
        &self,
        hurry: &tokio_util::sync::CancellationToken,
    ) -> Option<Weak<KeynetSocket>> {
        // Services this node offered are withdrawn first (best effort, bounded): callers stop
        // picking it at once instead of when its entry ages out.
        if let (Some(d), Some(identity)) = (&self.discovery, self.identities.current()) {
            if let Some(seed) =
                crate::discovery::record::ed25519_seed_of_pkcs8(identity.key.secret_der())
            {
                d.withdraw_all(self.node_id, &seed, WITHDRAW_TIME).await;
            }
        }
        lifecycle::shutdown(
            &self.endpoint,
            &self.tracker,
            &self.tasks,
            self.opts.end_time,
            hurry,
        )
        .await;
        lifecycle::release_port(&self.endpoint, &self.socket)
    }

    /// The last handle went without `stop()`: closes every connection and cancels every task
    /// (they end at their next await; the UDP port is freed once quinn's driver is gone).
    pub(crate) fn abandon(&self) {
        self.tracker.close_all(CloseReason::Stopped);
        self.endpoint
            .close(0u32.into(), CloseReason::Stopped.as_str().as_bytes());
        self.tasks.token().cancel();
    }

    /// The app says the network changed: act now, and let the watcher skip this change.
    pub(crate) fn network_changed(&self) {
        self.network.mark_current();
        self.react();
    }

    /// What the node does when its network changed: moves its socket if its address is gone
    /// and registers with every relay again (whose direct paths then re-probe).
    fn react(&self) {
        netwatch::rebind_if_gone(&self.endpoint, &self.socket);
        for link in self.links.all() {
            link.network_changed();
        }
    }

    /// The home relay's link (or the first relay given at start while none is up).
    pub(crate) fn start_link(&self) -> Option<Arc<RelayLink>> {
        self.links.home().or_else(|| self.links.first_registered())
    }

    /// Whether the node was given a relay at start (cheap: no home choice).
    pub(crate) fn has_relay(&self) -> bool {
        self.links.first_registered().is_some()
    }

    /// The home relay's node id.
    pub(crate) fn home_relay(&self) -> Option<NodeId> {
        self.links.home().map(|l| l.spec().node_id)
    }

    /// The status of every relay link.
    pub(crate) fn relay_status(&self) -> Vec<(RelaySpec, LinkStatus)> {
        self.links
            .all()
            .iter()
            .map(|l| (l.spec().clone(), l.status()))
            .collect()
    }

    /// The link to `spec`'s relay, started on first use. One registration per relay: a spec
    /// asking differently (token, transport) replaces the link.
    pub(crate) fn link_for(&self, spec: &RelaySpec, not_running: Error) -> Result<Arc<RelayLink>> {
        let identity = self.identities.current().ok_or(not_running)?;
        Ok(self
            .links
            .get_or_attach(spec, false, || links::attach(self, spec.clone(), &identity)))
    }

    /// A link to the relay `hint` names: one this node has (any registration), else one opened
    /// on demand (closed once idle, never announced).
    pub(crate) fn link_to_hint(&self, hint: &RelayHint) -> Result<Arc<RelayLink>> {
        if let Some(l) = self.links.by_relay(&hint.node_id) {
            return Ok(l);
        }
        let mut spec = RelaySpec::new(hint.addr, hint.node_id);
        // Only to call the node whose record names it: no token needed, not reachable there.
        spec.caller = true;
        // Notice a dead relay within seconds: its connections then move to another relay.
        spec.silence = Some(FAILOVER_SILENCE);
        if hint.tcp_port != 0 {
            spec.tcp_addr = Some(SocketAddr::new(hint.addr.ip(), hint.tcp_port));
        }
        let identity = self
            .identities
            .current()
            .ok_or(Error::ForwardProxyNotRunning)?;
        Ok(self
            .links
            .get_or_attach(&spec, true, || links::attach(self, spec.clone(), &identity)))
    }

    /// Moves the connections relayed through `dead` (the link to relay `dead_relay`, down) to
    /// another relay their peer's record names, where one comes up within
    /// [`dial::RELAY_LINK_WAIT`]: the route of the peer's virtual address is re-pointed, so QUIC
    /// sees no change and no byte is lost. Those that cannot move close as `relayLost` later.
    pub(crate) fn move_relayed_from(
        self: &Arc<Self>,
        dead: &crate::socket::paths::Outbox,
        dead_relay: NodeId,
    ) {
        let Some(d) = self.discovery.clone() else {
            return;
        };
        let mut peers: Vec<NodeId> = self
            .tracker
            .peers()
            .into_iter()
            .filter(|p| p.is_relay_backed() && p.path() == crate::events::Path::Relayed)
            .filter(|p| {
                self.socket
                    .paths
                    .relay_of(&p.node_id)
                    .is_some_and(|o| o.same_channel(dead))
            })
            .map(|p| p.node_id)
            .collect();
        peers.sort();
        peers.dedup();
        for peer in peers.into_iter().take(MAX_MOVES) {
            let me = self.clone();
            let d = d.clone();
            self.tasks.spawn(async move {
                let deadline = Instant::now() + MOVE_TIME;
                let located = d.locate_within(peer, deadline, Duration::ZERO).await;
                for hint in located.relays.iter().filter(|h| h.node_id != dead_relay) {
                    let Ok(link) = me.link_to_hint(hint) else { continue };
                    let wait = deadline.min(Instant::now() + dial::RELAY_LINK_WAIT);
                    if link.wait_up(wait, true).await.is_err() {
                        continue;
                    }
                    me.socket.paths.virtual_for(peer, link.outbox());
                    tracing::info!(%peer, relay = %hint.addr, "relayed connection moved to another relay");
                    return;
                }
                tracing::info!(%peer, "no other relay of the peer: its relayed connection will close");
            });
        }
    }

    /// Tells discovery how this node is reached through its relays (announced on change).
    pub(crate) fn publish_reach(&self) {
        if let Some(d) = &self.discovery {
            d.set_reach(self.links.reach());
        }
    }

    /// The DHT, when discovery is on.
    pub(crate) fn discovery(&self) -> Option<&Arc<Discovery>> {
        self.discovery.as_ref()
    }

    /// The addresses the DHT holds for `node` (signed record first, then hints).
    pub(crate) async fn lookup(
        &self,
        node: NodeId,
        timeout: Option<Duration>,
    ) -> Result<Vec<Found>> {
        let d = self
            .discovery
            .as_ref()
            .ok_or_else(discovery::discovery_off)?;
        let deadline = Instant::now() + timeout.unwrap_or(discovery::LOOKUP_TIME);
        Ok(d.lookup(node, deadline).await)
    }

    /// The direct candidates and relays the DHT holds for `node`.
    pub(crate) async fn locate(&self, node: NodeId, timeout: Option<Duration>) -> Result<Located> {
        let d = self
            .discovery
            .as_ref()
            .ok_or_else(discovery::discovery_off)?;
        let deadline = Instant::now() + timeout.unwrap_or(discovery::LOOKUP_TIME);
        Ok(d.locate(node, deadline).await)
    }

    /// The addresses this node announced last (empty before the first announce succeeded).
    pub(crate) fn announced_addrs(&self) -> Vec<SocketAddr> {
        self.discovery
            .as_ref()
            .map(|d| d.announced())
            .unwrap_or_default()
    }
}
