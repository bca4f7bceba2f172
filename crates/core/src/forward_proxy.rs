//! The forward proxy: an HTTP CONNECT listener for local clients (gRPC via `grpc_proxy`), and a
//! QUIC endpoint that dials reverse proxies. Each CONNECT becomes one bidirectional stream on
//! the one connection to its target address.
//!
//! Actor view: the accept loop owns the TCP listener; one task per client reads the request head
//! (bounded by [`MAX_HEAD_LEN`] and `connConnectTime`), answers, and splices; one watcher per QUIC
//! connection (in the tracker) reports its close. `stop()` cancels all of them and awaits them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::discovery::{DiscoveryOptions, Found, Located};
use crate::error::{Error, ErrorKind, Result, StartError};
use crate::events::{CloseReason, ConnectionInfo, EventSink};
use crate::identity::TlsConfig;
use crate::lifecycle::{self, Identities, Lifecycle};
use crate::node::dial::Dial;
use crate::node::early::EarlyTunnel;
use crate::node::{Node, NodeConfig};
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::connect::{self, HeadParse, MAX_HEAD_LEN};
use crate::proto::tunnel::{self, Ack};
use crate::relay::spec::{LinkStatus, RelaySpec};
use crate::splice::splice;
use crate::tracker::{Peer, Role};

/// Where the forward proxy listens.
#[derive(Clone, Debug)]
pub struct ForwardStart {
    /// HTTP CONNECT listener (TCP); default 127.0.0.1:0.
    pub proxy_addr: SocketAddr,
    /// QUIC socket (UDP); default 127.0.0.1:0.
    pub egress_addr: SocketAddr,
    /// Identity; a fresh one is generated when absent.
    pub tls: Option<TlsConfig>,
    /// Join the DHT (announce and look up node ids); off when absent.
    pub discovery: Option<DiscoveryOptions>,
    /// Register with this relay at start (node ids not found otherwise are reached through it).
    pub relay: Option<RelaySpec>,
    /// More relays to register with (after `relay`): the node picks its home among them by
    /// round trip and moves when the home dies.
    pub relays: Vec<RelaySpec>,
    /// Client connections (CONNECT requests and their tunnels) at once; more are answered `503`
    /// (`maxConnections`, 8192).
    pub max_connections: usize,
    /// The token CONNECT clients present from this start on (replaces the constructor's);
    /// like every other field, ignored when the proxy is already running.
    pub auth_token: Option<String>,
    /// Cancelled while starting: the start gives up with `Aborted` and leaves nothing running.
    pub cancel: Option<CancellationToken>,
}

/// Default of [`ForwardStart::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;

impl Default for ForwardStart {
    fn default() -> Self {
        Self {
            proxy_addr: ([127, 0, 0, 1], 0).into(),
            egress_addr: ([127, 0, 0, 1], 0).into(),
            tls: None,
            discovery: None,
            relay: None,
            relays: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            auth_token: None,
            cancel: None,
        }
    }
}

/// The forward proxy. Cheap to clone; clones share state. Dropping the last clone of a started
/// proxy without `stop()` cancels its tasks and closes its connections (its tasks hold the
/// state, never a handle, so the drop is seen).
#[derive(Clone)]
pub struct ForwardProxy {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Held only by handles: its drop is the last handle going.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(running) = self.0.life.take() {
            running.stopping.store(true, Ordering::SeqCst);
            running.node.abandon();
        }
    }
}

struct Inner {
    opts: ConnOptions,
    auth_token: RwLock<String>,
    identities: Arc<Identities>,
    sink: Arc<RwLock<Option<EventSink>>>,
    life: Lifecycle<Running>,
    /// Where this proxy's log lines go besides stderr (the JS `logger` option).
    log: RwLock<Option<crate::logging::LogRoute>>,
}

/// A started forward proxy: the CONNECT front on its node.
struct Running {
    node: Arc<Node>,
    proxy_addr: SocketAddr,
    /// The connection each CONNECT client's tunnel is on.
    clients: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    stopping: AtomicBool,
    max_connections: usize,
}

impl ForwardProxy {
    /// A stopped forward proxy that will accept clients presenting `auth_token`.
    pub fn new(auth_token: String, opts: ConnOptions) -> Result<Self> {
        opts.validate()?;
        let inner = Arc::new(Inner {
            opts,
            auth_token: RwLock::new(auth_token),
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

    /// The token CONNECT clients must present (the constructor's, or the last start's).
    pub fn auth_token(&self) -> String {
        self.inner.auth_token.read().expect("token lock").clone()
    }

    /// The timing options in use.
    pub fn options(&self) -> &ConnOptions {
        &self.inner.opts
    }

    /// Starts listening; does nothing if already running.
    pub async fn start(&self, start: ForwardStart) -> Result<()> {
        let span = self.log_span();
        async move {
            let inner = &self.inner;
            inner
                .life
                .start(async {
                    if start.max_connections == 0 {
                        return Err(Error::InvalidArgument(
                            "maxConnections must be at least 1".into(),
                        ));
                    }
                    let identity = inner.identities.for_start(start.tls.as_ref())?;
                    if let Some(token) = &start.auth_token {
                        *inner.auth_token.write().expect("token lock") = token.clone();
                    }
                    let listener = TcpListener::bind(start.proxy_addr).await?;
                    let proxy_addr = listener.local_addr()?;
                    let node = Node::start(
                        &inner.opts,
                        &inner.identities,
                        &inner.sink,
                        NodeConfig {
                            role: Role::Forward,
                            bind: start.egress_addr,
                            identity,
                            server_config: None,
                            discovery: start.discovery,
                            relays: start.relay.into_iter().chain(start.relays).collect(),
                            server: None,
                            cancel: start.cancel.clone(),
                        },
                    )
                    .await?;
                    let (egress_addr, node_id, tasks) =
                        (node.addr, node.node_id, node.tasks.clone());
                    let running = Arc::new(Running {
                        node,
                        proxy_addr,
                        clients: Mutex::new(HashMap::new()),
                        stopping: AtomicBool::new(false),
                        max_connections: start.max_connections,
                    });
                    tasks.spawn(inner.clone().accept_loop(listener, running.clone()));
                    tracing::info!(%proxy_addr, %egress_addr, %node_id, "forward proxy started");
                    Ok(running)
                })
                .await
        }
        .instrument(span)
        .await
    }

    /// Stops: answers 503 to new clients, ends every tunnel and connection, awaits every task
    /// and releases both ports. Does nothing if not running.
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
                    running.stopping.store(true, Ordering::SeqCst);
                    let socket = running.node.shutdown(hurry).await;
                    drop(running);
                    lifecycle::wait_released(socket).await;
                    tracing::info!("forward proxy stopped");
                })
                .await
        }
        .instrument(span)
        .await
    }

    fn running(&self) -> Result<Arc<Running>> {
        self.inner.life.get().ok_or(Error::ForwardProxyNotRunning)
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

    /// The HTTP CONNECT listener's address.
    pub fn proxy_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.proxy_addr)
    }

    /// The QUIC socket's address.
    pub fn egress_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.node.addr)
    }

    /// Number of live QUIC connections; 0 when not running (the original answered in any
    /// state).
    pub fn connection_count(&self) -> usize {
        self.running().map_or(0, |r| r.node.tracker.count())
    }

    /// Connections by path, tunnels, their bytes, and failed attempts by error code.
    pub fn stats(&self) -> Result<crate::ProxyStats> {
        Ok(self.running()?.node.stats())
    }

    /// Every live connection, as `connection_info_by_ingress` tells one.
    pub fn connections(&self) -> Result<Vec<ConnectionInfo>> {
        Ok(self.running()?.node.tracker.infos())
    }

    /// The connection to a reverse proxy at `addr`.
    pub fn connection_info_by_ingress(&self, addr: SocketAddr) -> Result<Option<ConnectionInfo>> {
        Ok(self.running()?.node.tracker.info(&addr))
    }

    /// The connection carrying the tunnel of the CONNECT client at `client`.
    pub fn connection_info_by_client(&self, client: SocketAddr) -> Result<Option<ConnectionInfo>> {
        let running = self.running()?;
        let peer = running
            .clients
            .lock()
            .expect("clients lock")
            .get(&client)
            .cloned();
        Ok(peer.map(|p| running.node.tracker.info_of(&p)))
    }

    /// Identity used by connections opened from now on.
    pub fn set_tls_config(&self, tls: &TlsConfig) -> Result<()> {
        self.inner.identities.set(tls)?;
        Ok(())
    }

    /// Opens (or reuses) the connection to `addr`, registers it in the tracker with `pin`, and
    /// punches toward it while the handshake waits. `timeout` overrides `connConnectTime`.
    pub async fn open_connection(
        &self,
        addr: SocketAddr,
        pin: Option<NodeId>,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    ) -> Result<ConnectionInfo> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            let budget = timeout.unwrap_or(self.inner.opts.connect_time);
            let dial = running.node.connect(addr, pin, budget);
            let peer = dialled(&running, cancel, dial).await?;
            running.node.tracker.register(addr, pin);
            Ok(running.node.tracker.info_of(&peer))
        }
        .instrument(span)
        .await
    }

    /// Opens (or reuses) a connection to `node`, tracked under `addr`, through `relay`: the
    /// keynodes' own QUIC packets travel through the relay (which cannot read them) and the
    /// relay's rendezvous then tries to move the connection to a punched path. CONNECTs to
    /// `addr` use it (and redial through the relay).
    pub async fn open_connection_via(
        &self,
        addr: SocketAddr,
        node: NodeId,
        relay: RelaySpec,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    ) -> Result<ConnectionInfo> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            let budget = timeout.unwrap_or(self.inner.opts.connect_time);
            let dial = running.node.dial(Dial {
                addr,
                pin: Some(node),
                via: Some(relay.clone()),
                budget,
                early_tunnel: false,
            });
            let peer = dialled(&running, cancel, dial).await?;
            running.node.tracker.register_relayed(addr, node, relay);
            Ok(running.node.tracker.info_of(&peer))
        }
        .instrument(span)
        .await
    }

    /// The device changed networks (the app says so; see `netwatch.rs` for Linux, where
    /// it is noticed without being asked): rebinds the UDP socket if its address is gone,
    /// registers with every relay again and re-probes every direct path at once.
    pub fn network_changed(&self) -> Result<()> {
        self.running()?.node.network_changed();
        Ok(())
    }

    /// The status of every relay link.
    pub fn relay_status(&self) -> Result<Vec<(RelaySpec, LinkStatus)>> {
        Ok(self.running()?.node.relay_status())
    }

    /// Tracks `addr` without connecting (first form): CONNECTs to it are then accepted and the
    /// connection opens on the first one.
    pub fn add_direct_connection(&self, addr: SocketAddr) -> Result<()> {
        self.running()?.node.tracker.register(addr, None);
        Ok(())
    }

    /// Ends the connection to `addr` and forgets the address: its tunnels drain (what was sent
    /// arrives, both TCP ends see a FIN), what is left after `connEndTime` is reset. Resolves
    /// when the connection closed, at most `connEndTime` after the call.
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

    /// Opens (or reuses) a connection to `node` knowing only its node id: reuses a live
    /// connection that proved it, else looks it up on the DHT and dials every address found at
    /// once; the first that proves `node` wins. `timeout` covers lookup and dial.
    pub async fn open_connection_to_node(
        &self,
        node: NodeId,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    ) -> Result<ConnectionInfo> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            let budget = timeout.unwrap_or(self.inner.opts.connect_time);
            let dial = running.node.dial_node(node, budget);
            let peer = dialled(&running, cancel, dial).await?;
            Ok(running.node.tracker.info_of(&peer))
        }
        .instrument(span)
        .await
    }

    /// Opens (or reuses) a connection to one replica of the service `name` (needs discovery):
    /// the next of its trusted replicas in round-robin order, the others on failure.
    /// `ErrorServiceNotFound` when none was found or none answered.
    pub async fn open_connection_to_service(
        &self,
        name: &str,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    ) -> Result<ConnectionInfo> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            let budget = timeout.unwrap_or(self.inner.opts.connect_time);
            let dial = running.node.dial_service(name, budget);
            let peer = dialled(&running, cancel, dial).await?;
            Ok(running.node.tracker.info_of(&peer))
        }
        .instrument(span)
        .await
    }

    /// The replicas of the service `name` the DHT names (needs discovery), newest first.
    pub async fn lookup_service(
        &self,
        name: &str,
        timeout: Option<Duration>,
        cancel: Option<CancellationToken>,
    ) -> Result<Vec<crate::discovery::Member>> {
        let span = self.log_span();
        async move {
            let running = self.running()?;
            let deadline =
                std::time::Instant::now() + timeout.unwrap_or(crate::discovery::LOOKUP_TIME);
            let lookup = running.node.lookup_service(name, deadline);
            cancellable(&running, cancel, lookup).await
        }
        .instrument(span)
        .await
    }
}

impl Inner {
    async fn accept_loop(self: Arc<Self>, listener: TcpListener, running: Arc<Running>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(running.max_connections));
        // Answers to clients over the limit, at most this many at once (then they wait in the
        // kernel's backlog).
        let refusals = Arc::new(tokio::sync::Semaphore::new(64));
        let mut refused = 0u64;
        let mut backoff = Duration::from_millis(5);
        loop {
            match listener.accept().await {
                Ok((mut tcp, client)) => {
                    backoff = Duration::from_millis(5);
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        refused += 1;
                        running.node.counters.failed("maxConnections");
                        if refused == 1 || refused.is_multiple_of(1000) {
                            tracing::warn!(%client, limit = running.max_connections, count = refused, "maxConnections reached: 503");
                        }
                        let Ok(slot) = refusals.clone().acquire_owned().await else {
                            return;
                        };
                        running.node.tasks.spawn(async move {
                            let busy = "too many connections (maxConnections)";
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                answer(&mut tcp, 503, busy),
                            )
                            .await;
                            drop(slot);
                        });
                        continue;
                    };
                    let me = self.clone();
                    let r = running.clone();
                    running.node.tasks.spawn(async move {
                        me.serve_client(&r, tcp, client).await;
                        r.clients.lock().expect("clients lock").remove(&client);
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn serve_client(&self, running: &Arc<Running>, mut tcp: TcpStream, client: SocketAddr) {
        let budget = self.opts.connect_time;
        let (head, rest) = match tokio::time::timeout(budget, read_head(&mut tcp)).await {
            Err(_) => return answer(&mut tcp, 408, "request head not received in time").await,
            Ok(Err(HeadFailure::Io)) => return,
            Ok(Err(HeadFailure::Bad(e))) => {
                return answer(&mut tcp, e.status(), &e.to_string()).await
            }
            Ok(Ok(h)) => h,
        };
        let token = self.auth_token.read().expect("token lock").clone();
        if !connect::check_proxy_auth(head.proxy_authorization.as_deref(), &token) {
            return answer(&mut tcp, 407, "proxy authentication required").await;
        }
        if head.method != "CONNECT" {
            return answer(&mut tcp, 405, "only CONNECT is supported").await;
        }
        let target = match connect::parse_target(&head.target) {
            Ok(t) => t,
            Err(e) => return answer(&mut tcp, 400, &e.to_string()).await,
        };
        if running.stopping.load(Ordering::SeqCst) {
            return answer(&mut tcp, 503, "proxy is stopping").await;
        }
        let node = &running.node;
        let target = match (target.addr, target.node_id) {
            (Some(addr), Some(id)) => Target::Addr(addr, Some(id)),
            (Some(addr), None) => match running.node.tracker.registration(&addr) {
                Some(pin) => Target::Addr(addr, pin),
                None => {
                    let msg = format!("{addr} is not in the connection tracker: add ?nodeId=");
                    return answer(&mut tcp, 400, &msg).await;
                }
            },
            _ if target.service.is_some() => match node.discovery() {
                Some(_) => Target::Service(target.service.expect("checked")),
                None => {
                    let msg =
                        "a NAME.service.keynet target needs discovery: start the proxy with it";
                    return answer(&mut tcp, 400, msg).await;
                }
            },
            (None, Some(id)) if node.discovery().is_some() || node.has_relay() => Target::Node(id),
            (None, _) => {
                let msg =
                    "a NODEID.keynet target needs discovery or a relay: start the proxy with one";
                return answer(&mut tcp, 400, msg).await;
            }
        };
        let deadline = Instant::now() + budget;
        let opened = tokio::time::timeout_at(deadline.into(), async {
            let (peer, early) = match target {
                Target::Addr(addr, pin) => node.connect_for_tunnel(addr, pin, budget).await?,
                Target::Node(id) => node.dial_node_for_tunnel(id, budget).await?,
                Target::Service(name) => (node.dial_service(&name, budget).await?, None),
            };
            // Registered before the stream opens: an end that begins meanwhile drains it.
            let live = peer.ending.tunnel().ok_or(StartError::Ending)?;
            let (send, recv) = open_tunnel(&peer, early).await?;
            Ok::<_, Error>((peer, live, send, recv))
        })
        .await
        .unwrap_or_else(|_| Err(Error::ConnectionStartTimeout(budget.as_millis() as u64)));
        let (peer, live, send, recv) = match opened {
            Ok(x) => x,
            Err(e) => {
                node.counters.failed(e.code());
                let status = if running.stopping.load(Ordering::SeqCst) {
                    503
                } else {
                    connect_status(e.kind())
                };
                return answer(&mut tcp, status, &e.to_string()).await;
            }
        };
        // Recorded before the 200: a client that asks who it reached right after reading it
        // (getConnectionInfoByClient) finds its connection. `accept_loop` removes it.
        running
            .clients
            .lock()
            .expect("clients lock")
            .insert(client, peer.clone());
        if tcp.write_all(&connect::response(200, "")).await.is_err() {
            return;
        }
        let _tunnel = node.counters.tunnel();
        match splice(tcp, send, recv, &rest, &node.counters, &live.signals).await {
            Ok(m) => {
                tracing::debug!(%client, up = m.tcp_to_quic, down = m.quic_to_tcp, "tunnel ended")
            }
            Err(e) => tracing::debug!(%client, error = %e, "tunnel aborted"),
        }
    }
}

/// Runs `op` until it ends, the caller aborts it (`cancel`) or the proxy stops.
async fn cancellable<T>(
    running: &Running,
    cancel: Option<CancellationToken>,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let cancel = cancel.unwrap_or_default();
    let stopping = running.node.tasks.token().clone();
    tokio::select! {
        r = op => r,
        _ = cancel.cancelled() => Err(Error::Aborted),
        _ = stopping.cancelled() => Err(Error::ForwardProxyNotRunning),
    }
}

/// [`cancellable`] for a dial: a failure counts in `getStats().failures`, as a failed CONNECT's
/// does (an abort or a stop is no failure of the network).
async fn dialled<T>(
    running: &Running,
    cancel: Option<CancellationToken>,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let r = cancellable(running, cancel, op).await;
    if let Err(e) = &r {
        if !matches!(e, Error::Aborted | Error::ForwardProxyNotRunning) {
            running.node.counters.failed(e.code());
        }
    }
    r
}

/// The HTTP status a CONNECT client gets for a failure (the status table of the README).
fn connect_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::ConnectionStartTimeout => 504,
        ErrorKind::CertChain(_) => 526,
        ErrorKind::ForwardProxyNotRunning
        | ErrorKind::ReverseProxyNotRunning
        | ErrorKind::RelayNotRunning => 503,
        _ => 502,
    }
}

/// What a CONNECT asks to reach.
enum Target {
    /// A reverse proxy's address, with the pin that applies.
    Addr(SocketAddr, Option<NodeId>),
    /// A node id, found through discovery.
    Node(NodeId),
    /// A service name: one of its replicas.
    Service(String),
}

/// Opens a stream and writes the tunnel header (unless the dial did: `early`), then waits for
/// the reverse proxy's acknowledgement.
async fn open_tunnel(
    peer: &Peer,
    early: Option<EarlyTunnel>,
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (send, mut recv) = match early {
        Some(t) => (t.send, t.recv),
        None => {
            let (mut send, recv) = peer
                .conn
                .open_bi()
                .await
                .map_err(|e| StartError::Tunnel(e.into()))?;
            send.write_all(&tunnel::encode_open())
                .await
                .map_err(|e| StartError::Tunnel(e.into()))?;
            (send, recv)
        }
    };
    let mut prefix = [0u8; 3];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| StartError::NoAck(e.into()))?;
    let (status, len) =
        tunnel::decode_ack_prefix(&prefix).map_err(|e| StartError::NoAck(e.into()))?;
    let mut reason = vec![0u8; len];
    recv.read_exact(&mut reason)
        .await
        .map_err(|e| StartError::NoAck(e.into()))?;
    match tunnel::decode_ack(status, &reason) {
        Ack::Ok => Ok((send, recv)),
        Ack::ServerUnreachable(why) => Err(StartError::ServerUnreachable(why).into()),
    }
}

enum HeadFailure {
    Io,
    Bad(connect::HeadError),
}

/// Reads until a whole request head is in; returns it and the bytes that followed it.
async fn read_head(
    tcp: &mut TcpStream,
) -> std::result::Result<(connect::RequestHead, Vec<u8>), HeadFailure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|_| HeadFailure::Io)?;
        if n == 0 {
            return Err(HeadFailure::Io);
        }
        buf.extend_from_slice(&chunk[..n]);
        match connect::parse_head(&buf).map_err(HeadFailure::Bad)? {
            HeadParse::Incomplete => {
                if buf.len() > MAX_HEAD_LEN {
                    return Err(HeadFailure::Bad(connect::HeadError::TooLarge));
                }
            }
            HeadParse::Complete(head, used) => return Ok((head, buf.split_off(used))),
        }
    }
}

async fn answer(tcp: &mut TcpStream, status: u16, body: &str) {
    tracing::debug!(status, body, "CONNECT refused");
    let _ = tcp.write_all(&connect::response(status, body)).await;
    let _ = tcp.shutdown().await;
    // Drain briefly so the answer is not lost to a reset caused by unread request bytes.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
