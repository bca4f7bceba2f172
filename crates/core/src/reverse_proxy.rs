//! The reverse proxy: accepts QUIC connections from forward proxies (mutual TLS, optional
//! `allowedNodeIds`), and for every stream dials its server, acknowledges, and splices.
//!
//! Actor view: the accept loop owns the endpoint's incoming queue; one task per incoming
//! handshake (bounded by `connConnectTime`); one stream-accept loop per connection; one task per
//! tunnel. All belong to the proxy's tasks (`crate::task::Tasks`) and end on `stop()`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::close_gate::CloseGate;
use crate::discovery::{DiscoveryOptions, Found, Located};
use crate::error::{Error, Result, StartError};
use crate::events::{CloseReason, ConnectionInfo, EventSink, Path};
use crate::holepunch::{exchange_hello, judge_path, receive_hello, send_hello, PunchDriver};
use crate::identity::TlsConfig;
use crate::lifecycle::{self, Identities, Lifecycle};
use crate::node::{Node, NodeConfig};
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::hello::Hello;
use crate::proto::tunnel::{self, Ack};
use crate::relay::spec::{LinkStatus, RelaySpec};
use crate::splice::splice;
use crate::stream_credit::StreamCredit;
use crate::tls::config::tunnel_server_config;
use crate::tls::verify::{verify_chain, Acceptable};
use crate::tracker::{Peer, Role};

/// Each relay link's spec and status.
pub type RelayLinks = Vec<(RelaySpec, LinkStatus)>;

/// Where the reverse proxy listens and what it serves.
#[derive(Clone, Debug)]
pub struct ReverseStart {
    /// The local server every tunnel is carried to.
    pub server_addr: SocketAddr,
    /// QUIC socket (UDP); default 127.0.0.1:0.
    pub ingress_addr: SocketAddr,
    /// Identity; a fresh one is generated when absent.
    pub tls: Option<TlsConfig>,
    /// When given, only these node ids may connect (checked in the handshake).
    pub allowed_node_ids: Option<Vec<NodeId>>,
    /// Join the DHT (announce this node id, look others up); off when absent.
    pub discovery: Option<DiscoveryOptions>,
    /// Register with this relay (reachable through it, by node id); none when absent.
    pub relay: Option<RelaySpec>,
    /// More relays to register with (after `relay`): the node picks its home among them by
    /// round trip, names it first in its records, and moves when it dies.
    pub relays: Vec<RelaySpec>,
    /// Connections from forward proxies at once (each may carry many tunnels); more are refused
    /// in the handshake (`maxConnections`, 4096).
    pub max_connections: usize,
    /// Tunnels at once on one connection, each a TCP connection to the server: QUIC's stream
    /// limit, so a caller waits for a free one rather than being refused
    /// (`maxStreamsPerConnection`, 1024).
    pub max_streams_per_connection: u32,
    /// Cancelled while starting: the start gives up with `Aborted` and leaves nothing running.
    pub cancel: Option<CancellationToken>,
}

/// Default of [`ReverseStart::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default of [`ReverseStart::max_streams_per_connection`].
pub const DEFAULT_MAX_STREAMS: u32 = 1024;

impl ReverseStart {
    /// Carries tunnels to `server_addr`; QUIC on 127.0.0.1 (any port), a fresh identity, any
    /// caller, no discovery, no relay.
    pub fn new(server_addr: SocketAddr) -> Self {
        Self {
            server_addr,
            ingress_addr: ([127, 0, 0, 1], 0).into(),
            tls: None,
            allowed_node_ids: None,
            discovery: None,
            relay: None,
            relays: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS,
            cancel: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.max_connections == 0 || self.max_streams_per_connection == 0 {
            return Err(Error::InvalidArgument(
                "maxConnections and maxStreamsPerConnection must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The QUIC transport of a connection the reverse proxy accepts from `remote`
/// ([`crate::node::peer_transport`]) with the starting stream grant (it grows toward
/// `max_streams` with use: [`StreamCredit`]), and its close gate.
fn accepted_transport(
    opts: &ConnOptions,
    max_streams: u32,
    remote: SocketAddr,
) -> (Arc<quinn::TransportConfig>, CloseGate) {
    let (mut t, gate) = crate::node::peer_transport(opts, remote);
    t.max_concurrent_bidi_streams(StreamCredit::initial(max_streams).into());
    (Arc::new(t), gate)
}

/// The reverse proxy. Cheap to clone; clones share state. Dropping the last clone of a started
/// proxy without `stop()` cancels its tasks and closes its connections.
#[derive(Clone)]
pub struct ReverseProxy {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Held only by handles: its drop is the last handle going.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(running) = self.0.life.take() {
            running.node.abandon();
        }
    }
}

struct Inner {
    opts: ConnOptions,
    identities: Arc<Identities>,
    sink: Arc<RwLock<Option<EventSink>>>,
    life: Lifecycle<Running>,
    /// Where this proxy's log lines go besides stderr (the JS `logger` option).
    log: RwLock<Option<crate::logging::LogRoute>>,
}

/// A started reverse proxy: the server front on its node.
struct Running {
    node: Arc<Node>,
    server_addr: SocketAddr,
    /// Which node ids may connect (`set_allowed_node_ids` changes it while running).
    accept: RwLock<Acceptable>,
    /// Local TCP address of each server connection -> the calling connection.
    by_proxy: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    /// The endpoint's default transport, which a server config needs; no connection uses it:
    /// each is accepted with its own ([`Running::config_for`]).
    transport: Arc<quinn::TransportConfig>,
    /// The endpoint's server config, which each accepted connection gets a copy of with its
    /// own close gate (the TLS config is shared: session tickets are unchanged).
    server_config: RwLock<quinn::ServerConfig>,
    max_connections: usize,
    /// Streams one connection may have at once (`maxStreamsPerConnection`).
    max_streams: u32,
    /// Connections accepted (or in their handshake) now.
    connections: AtomicUsize,
    /// Connections refused at `max_connections` so far.
    refused: AtomicU64,
}

impl Running {
    /// Makes `config` the endpoint's server config (one lock around both: the copy and the
    /// endpoint's never differ).
    fn install(&self, config: quinn::ServerConfig) {
        let mut kept = self.server_config.write().expect("server config lock");
        self.node.endpoint.set_server_config(Some(config.clone()));
        *kept = config;
    }

    /// The server config of one connection accepted from `remote`: the endpoint's, with the
    /// connection's own transport ([`accepted_transport`]), and that transport's close gate.
    fn config_for(
        &self,
        opts: &ConnOptions,
        remote: SocketAddr,
    ) -> (quinn::ServerConfig, CloseGate) {
        let (transport, gate) = accepted_transport(opts, self.max_streams, remote);
        let mut config = self
            .server_config
            .read()
            .expect("server config lock")
            .clone();
        config.transport_config(transport);
        (config, gate)
    }
}

impl ReverseProxy {
    /// A stopped reverse proxy.
    pub fn new(opts: ConnOptions) -> Result<Self> {
        opts.validate()?;
        let inner = Arc::new(Inner {
            opts,
            identities: Arc::default(),
            sink: Arc::new(RwLock::new(None)),
            life: Lifecycle::default(),
            log: RwLock::new(None),
        });
        Ok(Self {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        })
    }

    /// Sets the receiver of connection events.
    pub fn set_event_sink(&self, sink: Option<EventSink>) {
        *self.inner.sink.write().expect("sink lock") = sink;
    }

    /// Sends this proxy's log lines to `route` (replacing any before; `None`: to none). Calls
    /// and tasks started afterwards carry it.
    pub fn set_log_route(&self, route: Option<crate::logging::LogRoute>) {
        *self.inner.log.write().expect("log lock") = route;
    }

    /// The span this proxy's work runs in (none without a log route).
    fn log_span(&self) -> tracing::Span {
        match &*self.inner.log.read().expect("log lock") {
            Some(route) => route.span(),
            None => tracing::Span::none(),
        }
    }

    /// Starts accepting; does nothing if already running.
    pub async fn start(&self, start: ReverseStart) -> Result<()> {
        let span = self.log_span();
        async move {
            let inner = &self.inner;
            inner.life.start(async {
            start.validate()?;
            let identity = inner.identities.for_start(start.tls.as_ref())?;
            let accept = match start.allowed_node_ids {
                Some(ids) => Acceptable::OneOf(ids),
                None => Acceptable::Any,
            };
            let transport = Arc::new(inner.opts.peer_transport_config());
            let config = tunnel_server_config(&identity, accept.clone(), transport.clone())?;
            let server_config = RwLock::new(config.clone());
            let node = Node::start(
                &inner.opts,
                &inner.identities,
                &inner.sink,
                NodeConfig {
                    role: Role::Reverse,
                    bind: start.ingress_addr,
                    identity,
                    server_config: Some(config),
                    discovery: start.discovery,
                    relays: start.relay.into_iter().chain(start.relays).collect(),
                    server: Some(start.server_addr),
                    cancel: start.cancel.clone(),
                },
            )
            .await?;
            let (ingress_addr, node_id, tasks) = (node.addr, node.node_id, node.tasks.clone());
            let running = Arc::new(Running {
                node,
                server_addr: start.server_addr,
                accept: RwLock::new(accept),
                by_proxy: Mutex::new(HashMap::new()),
                transport,
                server_config,
                max_connections: start.max_connections,
                max_streams: start.max_streams_per_connection,
                connections: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            });
            tasks.spawn(inner.clone().accept_loop(running.clone()));
            tracing::info!(%ingress_addr, server = %start.server_addr, %node_id, "reverse proxy started");
            Ok(running)
            })
            .await
        }
        .instrument(span)
        .await
    }

    /// The device changed networks: as [`crate::ForwardProxy::network_changed`].
    pub fn network_changed(&self) -> Result<()> {
        self.running()?.node.network_changed();
        Ok(())
    }

    /// The home relay link's status (`None` without a relay): see [`Self::relays_status`] for
    /// every relay.
    pub fn relay_status(&self) -> Result<Option<(RelaySpec, LinkStatus)>> {
        Ok(self
            .running()?
            .node
            .start_link()
            .map(|l| (l.spec().clone(), l.status())))
    }

    /// Every relay link's status, and the home relay's node id.
    pub fn relays_status(&self) -> Result<(RelayLinks, Option<NodeId>)> {
        let node = &self.running()?.node;
        Ok((node.relay_status(), node.home_relay()))
    }

    /// The addresses the DHT holds for `node` (signed record first, then hints).
    pub async fn lookup(&self, node: NodeId, timeout: Option<Duration>) -> Result<Vec<Found>> {
        let span = self.log_span();
        async move { self.running()?.node.lookup(node, timeout).await }
            .instrument(span)
            .await
    }

    /// The addresses this proxy announced last (empty before the first announce succeeded).
    pub fn announced_addrs(&self) -> Result<Vec<SocketAddr>> {
        Ok(self.running()?.node.announced_addrs())
    }

    /// What the DHT says about reaching `node`: direct candidates and its relays (home first).
    pub async fn locate(&self, node: NodeId, timeout: Option<Duration>) -> Result<Located> {
        let span = self.log_span();
        async move { self.running()?.node.locate(node, timeout).await }
            .instrument(span)
            .await
    }

    /// Starts offering the service `offer` (announced at once; needs discovery and an Ed25519
    /// identity, the default).
    pub fn announce_service(&self, offer: crate::discovery::ServiceOffer) -> Result<()> {
        let running = self.running()?;
        let d = running
            .node
            .discovery()
            .ok_or_else(crate::discovery::discovery_off)?;
        d.offer_service(offer)
    }

    /// Stops offering `name` (a withdrawn entry replaces its entry at once); false when it was
    /// not offered.
    pub fn withdraw_service(&self, name: &str) -> Result<bool> {
        let running = self.running()?;
        let d = running
            .node
            .discovery()
            .ok_or_else(crate::discovery::discovery_off)?;
        d.withdraw_service(name)
    }

    /// The service names offered now.
    pub fn services(&self) -> Result<Vec<String>> {
        Ok(self
            .running()?
            .node
            .discovery()
            .map(|d| d.offered())
            .unwrap_or_default())
    }

    /// Stops: ends every tunnel and connection, awaits every task and releases the port.
    pub async fn stop(&self) -> Result<()> {
        self.stop_hurried(&CancellationToken::new()).await
    }

    /// `stop()`, where `hurry` cancelled cuts the drain short (what is left is reset at once).
    pub async fn stop_hurried(&self, hurry: &CancellationToken) -> Result<()> {
        let span = self.log_span();
        async move {
            self.inner
                .life
                .stop(|running| async move {
                    let socket = running.node.shutdown(hurry).await;
                    drop(running);
                    lifecycle::wait_released(socket).await;
                    tracing::info!("reverse proxy stopped");
                })
                .await
        }
        .instrument(span)
        .await
    }

    fn running(&self) -> Result<Arc<Running>> {
        self.inner.life.get().ok_or(Error::ReverseProxyNotRunning)
    }

    /// This proxy's node id.
    pub fn node_id(&self) -> Result<NodeId> {
        let running = self.running()?;
        Ok(self
            .inner
            .identities
            .current()
            .map_or(running.node.node_id, |id| id.node_id))
    }

    /// The QUIC socket's address.
    pub fn ingress_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.node.addr)
    }

    /// The server tunnels are carried to.
    pub fn server_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.server_addr)
    }

    /// Number of live QUIC connections; 0 when not running (the original answered in any
    /// state).
    pub fn connection_count(&self) -> usize {
        self.running().map_or(0, |r| r.node.tracker.count())
    }

    /// The timing options in use.
    pub fn options(&self) -> &ConnOptions {
        &self.inner.opts
    }

    /// Connections by path, tunnels, their bytes, and failed attempts by error code.
    pub fn stats(&self) -> Result<crate::ProxyStats> {
        Ok(self.running()?.node.stats())
    }

    /// Every live connection, as `connection_info_by_egress` tells one.
    pub fn connections(&self) -> Result<Vec<ConnectionInfo>> {
        Ok(self.running()?.node.tracker.infos())
    }

    /// The connection from a forward proxy at `addr`.
    pub fn connection_info_by_egress(&self, addr: SocketAddr) -> Result<Option<ConnectionInfo>> {
        Ok(self.running()?.node.tracker.info(&addr))
    }

    /// Who is calling: the connection whose tunnel reaches the server from local address `addr`.
    pub fn connection_info_by_proxy(&self, addr: SocketAddr) -> Result<Option<ConnectionInfo>> {
        let running = self.running()?;
        let peer = running
            .by_proxy
            .lock()
            .expect("by_proxy lock")
            .get(&addr)
            .cloned();
        Ok(peer.map(|p| running.node.tracker.info_of(&p)))
    }

    /// Changes which node ids may connect (`None`: any), as `allowed_node_ids` at start did:
    /// handshakes from now on are checked against the new list, and the connections of nodes
    /// no longer on it end (their tunnels drain, as on `close_connection`).
    pub fn set_allowed_node_ids(&self, ids: Option<Vec<NodeId>>) -> Result<()> {
        let running = self.running()?;
        let accept = match ids {
            Some(ids) => Acceptable::OneOf(ids),
            None => Acceptable::Any,
        };
        *running.accept.write().expect("accept lock") = accept.clone();
        if let Some(id) = self.inner.identities.current() {
            let config = tunnel_server_config(&id, accept.clone(), running.transport.clone())?;
            running.install(config);
        }
        if let Acceptable::OneOf(list) = &accept {
            for info in running.node.tracker.infos() {
                if !list.iter().any(|n| n.to_string() == info.node_id) {
                    tracing::info!(node_id = %info.node_id, "no longer allowed: ending its connection");
                    running
                        .node
                        .tracker
                        .end_soon(info.egress, CloseReason::Local);
                }
            }
        }
        Ok(())
    }

    /// Identity for connections accepted from now on, and for later starts.
    pub fn set_tls_config(&self, tls: &TlsConfig) -> Result<()> {
        let id = self.inner.identities.set(tls)?;
        if let Ok(running) = self.running() {
            let config = tunnel_server_config(
                &id,
                running.accept.read().expect("accept lock").clone(),
                running.transport.clone(),
            )?;
            running.install(config);
        }
        Ok(())
    }

    /// Punches toward a forward proxy at `addr` every `connPunchIntervalTime` (at most
    /// `attempts` datagrams) until its connection arrives; gives up after `timeout` (default
    /// `connConnectTime`). Returns whether the connection is up.
    pub async fn punch_toward(
        &self,
        addr: SocketAddr,
        attempts: u32,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    ) -> Result<bool> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            if addr.port() == 0 || addr.ip().is_unspecified() {
                return Err(StartError::Unroutable {
                    action: "punch toward",
                    addr,
                }
                .into());
            }
            running.node.tracker.register(addr, None);
            let budget = timeout.unwrap_or(self.inner.opts.connect_time);
            let cancel = cancel.unwrap_or_default();
            let mut punch = PunchDriver::start(
                &running.node.socket,
                addr,
                self.inner.opts.punch_interval,
                budget,
                attempts,
            );
            let connected = async {
                loop {
                    tokio::select! {
                        _ = running.node.tracker.wait_until(|t| t.get(&addr).is_some()) => return,
                        _ = punch.next_event() => {}
                    }
                }
            };
            let stopping = running.node.tasks.token().clone();
            let up = tokio::select! {
                r = tokio::time::timeout(budget, connected) => r.is_ok(),
                _ = cancel.cancelled() => return Err(Error::Aborted),
                _ = stopping.cancelled() => return Err(Error::ReverseProxyNotRunning),
            };
            punch.connected();
            Ok(up)
        }
        .instrument(span)
        .await
    }

    /// Ends the connection from `addr` and forgets it, as the forward proxy's
    /// `close_connection` does (tunnels drain); resolves at most `connEndTime` after the call.
    pub async fn close_connection(&self, addr: SocketAddr) -> Result<()> {
        self.close_connection_hurried(addr, &CancellationToken::new())
            .await
    }

    /// `close_connection`, where `hurry` cancelled cuts the drain short.
    pub async fn close_connection_hurried(
        &self,
        addr: SocketAddr,
        hurry: &CancellationToken,
    ) -> Result<()> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            running
                .node
                .tracker
                .end(&addr, CloseReason::Local, hurry)
                .await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Forgets `addr` and ends its connection like `close_connection`, without waiting (first
    /// form).
    pub fn remove_connection(&self, addr: SocketAddr) -> Result<()> {
        self.running()?
            .node
            .tracker
            .end_soon(addr, CloseReason::Local);
        Ok(())
    }

    /// Registers `addr` without punching (first form).
    pub fn add_direct_connection(&self, addr: SocketAddr) -> Result<()> {
        self.running()?.node.tracker.register(addr, None);
        Ok(())
    }
}

/// What is left of a resumed connection's setup once its tunnels may open (see
/// `Inner::handshake`).
type Settling = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

impl Running {
    /// The path of a connection from `remote`, once both hellos are known.
    fn path_toward(&self, remote: SocketAddr, ours: Hello, theirs: &Hello) -> Path {
        self.node
            .socket
            .paths
            .path_of(&remote)
            .unwrap_or_else(|| judge_path(ours.punching, theirs.nat_between(remote, ours.own)))
    }
}

/// A connection slot of [`ReverseStart::max_connections`], held by a connection's task.
struct Slot(Arc<Running>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    async fn accept_loop(self: Arc<Self>, running: Arc<Running>) {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        while let Some(incoming) = running.node.endpoint.accept().await {
            // Bound the work unauthenticated packets can cause: past half the budget, make
            // unvalidated sources prove their address (Retry); at the limit, drop new ones.
            let in_flight = MAX_HANDSHAKES - handshakes.available_permits();
            if in_flight >= MAX_HANDSHAKES / 2 && !incoming.remote_address_validated() {
                let _ = incoming.retry();
                continue;
            }
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                incoming.ignore();
                continue;
            };
            // A connection slot, held until the connection ends.
            let held = running.connections.fetch_add(1, Ordering::AcqRel);
            if held >= running.max_connections {
                running.connections.fetch_sub(1, Ordering::AcqRel);
                running.node.counters.failed("maxConnections");
                let n = running.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(remote = %incoming.remote_address(), limit = running.max_connections, count = n, "maxConnections reached: connection refused");
                }
                incoming.refuse();
                continue;
            }
            let me = self.clone();
            let r = running.clone();
            running.node.tasks.spawn(async move {
                // Gives the slot back however the task ends.
                let _slot = Slot(r.clone());
                let remote = incoming.remote_address();
                let handshake = me.handshake(&r, incoming).await;
                drop(permit);
                match handshake {
                    Ok((peer, settling)) => me.serve_connection(&r, peer, settling).await,
                    Err(e) => {
                        r.node.counters.failed(e.code());
                        tracing::info!(%remote, error = %e, "refused incoming connection")
                    }
                }
            });
        }
    }

    /// Accepts a connection. A client that resumes a session it was given (it was accepted
    /// before, under the same allow-list and identity) is known from its first flight: its
    /// connection is returned at once, with what is left of the setup (the rest of the
    /// handshake, the hellos), so the tunnel headers it sent in 0-RTT are served meanwhile.
    async fn handshake(
        &self,
        running: &Arc<Running>,
        incoming: quinn::Incoming,
    ) -> Result<(Arc<Peer>, Option<Settling>)> {
        let remote = incoming.remote_address();
        let handshake_failed = move |source| -> Error {
            StartError::Handshake {
                to: remote.to_string(),
                source,
            }
            .into()
        };
        let (config, gate) = running.config_for(&self.opts, remote);
        let connecting = incoming
            .accept_with(Arc::new(config))
            .map_err(handshake_failed)?;
        let budget = self.opts.connect_time;
        let timed_out = move || Error::ConnectionStartTimeout(budget.as_millis() as u64);
        // On the server this always succeeds (quinn's "0.5-RTT"); `done` resolves once the
        // handshake completed or failed.
        let (conn, done) = match connecting.into_0rtt() {
            Ok(converted) => converted,
            Err(connecting) => {
                let conn = tokio::time::timeout(budget, connecting)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(handshake_failed)?;
                return self.accepted(running, conn, gate).await.map(|p| (p, None));
            }
        };
        let complete = {
            let conn = conn.clone();
            async move {
                tokio::time::timeout(budget, done)
                    .await
                    .map_err(|_| timed_out())?;
                match conn.close_reason() {
                    Some(source) => Err(handshake_failed(source)),
                    None => Ok(()),
                }
            }
        };
        // A resumed session carries the client's chain from the first flight on.
        if crate::tls::verify::peer_chain(&conn).is_empty() {
            complete.await?;
            return self.accepted(running, conn, gate).await.map(|p| (p, None));
        }
        let (node_id, ours) = self.check_peer(running, &conn)?;
        let peer = Arc::new(Peer::new(conn, gate, node_id, Path::Direct).resumed(true));
        let deadline = std::time::Instant::now() + budget;
        let settling = {
            let peer = peer.clone();
            let running = running.clone();
            Box::pin(async move {
                // Our hello now: the forward proxy's dial ends with it, one round trip early.
                // Its hello is read once the handshake completed (nothing but tunnel headers is
                // taken from 0-RTT).
                let theirs = async {
                    complete.await?;
                    receive_hello(&peer.conn)
                        .await
                        .map_err(|e| Error::from(StartError::Hello(e)))
                };
                let sent = async {
                    send_hello(&peer.conn, ours)
                        .await
                        .map_err(|e| Error::from(StartError::Hello(e)))
                };
                let ((), theirs) = tokio::time::timeout_at(deadline.into(), async {
                    tokio::try_join!(sent, theirs)
                })
                .await
                .map_err(|_| {
                    Error::from(StartError::Hello("no hello from the peer in time".into()))
                })??;
                peer.settle_path(running.path_toward(peer.remote, ours, &theirs));
                running.node.tracker.insert(peer.clone());
                tracing::debug!(remote = %peer.remote, node_id = %peer.node_id, "accepted connection (resumed)");
                Ok(())
            }) as Settling
        };
        Ok((peer, Some(settling)))
    }

    /// The node id `conn`'s client proved, checked against the allow-list now in force, and
    /// our hello to it.
    fn check_peer(
        &self,
        running: &Arc<Running>,
        conn: &quinn::Connection,
    ) -> Result<(NodeId, Hello)> {
        let certs = crate::tls::verify::peer_chain(conn);
        let node_id = verify_chain(
            &certs,
            &running.accept.read().expect("accept lock").clone(),
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )?;
        let remote = conn.remote_address();
        // Our hello tells the forward proxy we accepted it, and both learn the path.
        let ours = Hello {
            punching: running.node.socket.has_session(&remote),
            observed: remote,
            own: running.node.socket.local_toward(remote),
        };
        Ok((node_id, ours))
    }

    /// Finishes a connection whose handshake completed: checks the client, exchanges hellos,
    /// tracks it.
    async fn accepted(
        &self,
        running: &Arc<Running>,
        conn: quinn::Connection,
        gate: CloseGate,
    ) -> Result<Arc<Peer>> {
        let (node_id, ours) = self.check_peer(running, &conn)?;
        let deadline = std::time::Instant::now() + self.opts.connect_time;
        let theirs = exchange_hello(&conn, ours, deadline)
            .await
            .map_err(StartError::Hello)?;
        let remote = conn.remote_address();
        let peer = Arc::new(Peer::new(
            conn,
            gate,
            node_id,
            running.path_toward(remote, ours, &theirs),
        ));
        running.node.tracker.insert(peer.clone());
        tracing::debug!(%remote, %node_id, "accepted connection");
        Ok(peer)
    }

    /// Serves `peer`'s tunnels; with `settling` (a resumed session), also finishes its setup,
    /// and lets no tunnel carry a byte before that is done (closing the connection if it
    /// fails).
    async fn serve_connection(
        self: &Arc<Self>,
        running: &Arc<Running>,
        peer: Arc<Peer>,
        settling: Option<Settling>,
    ) {
        let (settled_tx, settled) = tokio::sync::watch::channel(settling.is_none());
        let settle = async {
            let Some(settling) = settling else { return };
            match settling.await {
                Ok(()) => {
                    let _ = settled_tx.send(true);
                }
                Err(e) => {
                    running.node.counters.failed(e.code());
                    tracing::info!(remote = %peer.remote, error = %e, "refused incoming connection");
                    peer.close(CloseReason::Local);
                }
            }
        };
        let serve = async {
            let credit = Arc::new(StreamCredit::new(running.max_streams));
            loop {
                let (send, recv) = match peer.conn.accept_bi().await {
                    Ok(s) => s,
                    Err(_) => return,
                };
                if let Some(grant) = credit.opened() {
                    peer.conn.set_max_concurrent_bi_streams(grant.into());
                }
                let me = self.clone();
                let r = running.clone();
                let p = peer.clone();
                let credit = credit.clone();
                let settled = settled.clone();
                running.node.tasks.spawn(async move {
                    me.serve_tunnel(&r, p, send, recv, settled).await;
                    credit.closed();
                });
            }
        };
        tokio::join!(settle, serve);
    }

    async fn serve_tunnel(
        &self,
        running: &Arc<Running>,
        peer: Arc<Peer>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        mut settled: tokio::sync::watch::Receiver<bool>,
    ) {
        let budget = self.opts.connect_time;
        // A tunnel opened as the connection began to end (the peer had not heard yet) is
        // refused: the forward proxy answers its client 502 instead of a tunnel that ends at once.
        let Some(live) = peer.ending.tunnel() else {
            return refuse(send, recv, "the connection is ending".into()).await;
        };
        let mut header = [0u8; tunnel::OPEN_LEN];
        match tokio::time::timeout(budget, recv.read_exact(&mut header)).await {
            Ok(Ok(())) => {}
            _ => {
                let _ = recv.stop(crate::splice::ABORTED.into());
                return;
            }
        }
        if let Err(e) = tunnel::decode_open(&header) {
            tracing::info!(remote = %peer.remote, error = %e, "refused tunnel");
            let _ = send
                .write_all(&tunnel::encode_ack(&Ack::ServerUnreachable(e.to_string())))
                .await;
            let _ = send.finish();
            return;
        }
        // The caller is known by our local address before the tunnel carries a byte (a server
        // may ask who is calling the moment it accepts); see `server_connect`.
        let server = running.server_addr;
        let mut entry = CallerEntry {
            by_proxy: &running.by_proxy,
            peer: &peer,
            local: None,
        };
        let connected = tokio::time::timeout(
            budget,
            crate::server_connect::connect(server, |local| entry.set(local)),
        )
        .await;
        let tcp = match connected {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return refuse(send, recv, format!("{server}: {e}")).await,
            Err(_) => return refuse(send, recv, format!("{server}: connect timed out")).await,
        };
        let _tunnel = running.node.counters.tunnel();
        let counters = &running.node.counters;
        if let Err(e) = send.write_all(&tunnel::encode_ack(&Ack::Ok)).await {
            tracing::debug!(remote = %peer.remote, error = %e, "tunnel aborted");
            return;
        }
        // A tunnel opened in 0-RTT carries nothing before the handshake completed: whatever
        // else its stream holds may be a replay's until then.
        let settle = tokio::time::timeout(budget, async {
            settled.wait_for(|done| *done).await.is_ok()
        })
        .await;
        if settle != Ok(true) {
            let _ = send.reset(crate::splice::ABORTED.into());
            let _ = recv.stop(crate::splice::ABORTED.into());
            return;
        }
        let result = splice(tcp, send, recv, &[], counters, &live.signals).await;
        match result {
            Ok(m) => {
                tracing::debug!(remote = %peer.remote, up = m.tcp_to_quic, down = m.quic_to_tcp, "tunnel ended")
            }
            Err(e) => tracing::debug!(remote = %peer.remote, error = %e, "tunnel aborted"),
        }
    }
}

/// One tunnel's entry in `by_proxy` (its local address toward the server -> the caller), kept
/// at the latest address the connect reported and removed when the tunnel ends, whichever way.
struct CallerEntry<'a> {
    by_proxy: &'a Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    peer: &'a Arc<Peer>,
    local: Option<SocketAddr>,
}

impl CallerEntry<'_> {
    fn set(&mut self, local: SocketAddr) {
        let mut map = self.by_proxy.lock().expect("by_proxy lock");
        if let Some(old) = self.local.replace(local) {
            map.remove(&old);
        }
        map.insert(local, self.peer.clone());
    }
}

impl Drop for CallerEntry<'_> {
    fn drop(&mut self) {
        if let Some(local) = self.local {
            self.by_proxy.lock().expect("by_proxy lock").remove(&local);
        }
    }
}

/// Most handshakes in progress at once (see `accept_loop`).
const MAX_HANDSHAKES: usize = 256;

async fn refuse(mut send: quinn::SendStream, _recv: quinn::RecvStream, why: String) {
    tracing::info!(reason = %why, "could not reach server");
    let _ = send
        .write_all(&tunnel::encode_ack(&Ack::ServerUnreachable(why)))
        .await;
    let _ = send.finish();
    let _ = send.stopped().await;
}
