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

use crate::discovery::{self, Discovery, DiscoveryOptions, Found};
use crate::endpoint::{self, KeynetSocket};
use crate::error::{Error, Result};
use crate::events::{ConnectionInfo, EventSink, Path};
use crate::holepunch::{exchange_hello, judge_path, PunchDriver, PunchEvent};
use crate::identity::TlsConfig;
use crate::lifecycle::{self, Identities};
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::connect::{self, HeadParse, MAX_HEAD_LEN};
use crate::proto::hello::Hello;
use crate::proto::tunnel::{self, Ack};
use crate::relay::attach::{attach, for_start as relay_for_start, ProxyParts};
use crate::relay::link::{LinkStatus, RelayLink, RelaySpec};
use crate::splice::splice;
use crate::task::Tasks;
use crate::tls::config::{client_config, SERVER_NAME};
use crate::tls::verify::{handshake_error, verify_chain, Acceptable, VerifyOutcome};
use crate::tracker::{reason, Peer, Role, Tracker};

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
}

impl Default for ForwardStart {
    fn default() -> Self {
        ForwardStart {
            proxy_addr: ([127, 0, 0, 1], 0).into(),
            egress_addr: ([127, 0, 0, 1], 0).into(),
            tls: None,
            discovery: None,
            relay: None,
        }
    }
}

/// The forward proxy. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ForwardProxy {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ConnOptions,
    auth_token: RwLock<String>,
    identities: Identities,
    sink: Arc<RwLock<Option<EventSink>>>,
    lifecycle: tokio::sync::Mutex<()>,
    running: RwLock<Option<Arc<Running>>>,
}

struct Running {
    endpoint: quinn::Endpoint,
    socket: Arc<KeynetSocket>,
    tracker: Arc<Tracker>,
    tasks: Tasks,
    proxy_addr: SocketAddr,
    egress_addr: SocketAddr,
    node_id: NodeId,
    clients: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    stopping: AtomicBool,
    discovery: Option<Arc<Discovery>>,
    /// The relay given at start.
    relay: Option<Arc<RelayLink>>,
    /// Every relay link (the start one and those `openConnection` asked for), by relay.
    links: Mutex<Vec<Arc<RelayLink>>>,
    /// The network last acted on.
    network: Arc<crate::netwatch::Seen>,
}

impl Running {
    fn network_changed(&self) {
        crate::netwatch::react(
            &self.endpoint,
            &self.socket,
            self.links.lock().expect("links lock").iter(),
        );
    }
}

impl ForwardProxy {
    /// A stopped forward proxy that will accept clients presenting `auth_token`.
    pub fn new(auth_token: String, opts: ConnOptions) -> Result<ForwardProxy> {
        opts.validate()?;
        Ok(ForwardProxy {
            inner: Arc::new(Inner {
                opts,
                auth_token: RwLock::new(auth_token),
                identities: Identities::default(),
                sink: Arc::new(RwLock::new(None)),
                lifecycle: tokio::sync::Mutex::new(()),
                running: RwLock::new(None),
            }),
        })
    }

    /// Sets the receiver of connection events.
    pub fn set_event_sink(&self, sink: Option<EventSink>) {
        *self.inner.sink.write().expect("sink lock") = sink;
    }

    /// Replaces the token CONNECT clients must present.
    pub fn set_auth_token(&self, token: String) {
        *self.inner.auth_token.write().expect("token lock") = token;
    }

    /// Starts listening; does nothing if already running.
    pub async fn start(&self, start: ForwardStart) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        if self.running().is_ok() {
            return Ok(());
        }
        if let Some(d) = &start.discovery {
            discovery::validate(d)?;
        }
        let identity = self.inner.identities.for_start(start.tls.as_ref())?;
        let node_id = identity.node_id;
        let listener = TcpListener::bind(start.proxy_addr).await?;
        let proxy_addr = listener.local_addr()?;
        let (endpoint, socket) = endpoint::bind(
            start.egress_addr,
            None,
            &identity.derived_secret("quic stateless reset"),
        )?;
        let egress_addr = endpoint.local_addr()?;
        let tasks = Tasks::new();
        let tracker = Arc::new(Tracker::new(
            Role::Forward,
            egress_addr,
            tasks.clone(),
            self.inner.sink.clone(),
        ));
        let discovery = match &start.discovery {
            Some(opts) => Some(
                discovery::start_for_proxy(
                    opts,
                    &identity,
                    egress_addr,
                    &tasks,
                    self.inner.sink.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let relay = relay_for_start(
            start.relay.clone(),
            ProxyParts {
                endpoint: &endpoint,
                socket: &socket,
                identity: &identity,
                opts: &self.inner.opts,
                tasks: &tasks,
                tracker: &tracker,
                server: None,
            },
        )
        .await?;
        let running = Arc::new(Running {
            endpoint,
            socket,
            tracker,
            tasks: tasks.clone(),
            proxy_addr,
            egress_addr,
            node_id,
            clients: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            discovery,
            links: Mutex::new(relay.iter().cloned().collect()),
            relay,
            network: Arc::new(crate::netwatch::Seen::now()),
        });
        *self.inner.running.write().expect("running lock") = Some(running.clone());
        crate::netwatch::spawn_watcher(
            &tasks,
            &running,
            running.network.clone(),
            Running::network_changed,
        );
        let me = self.clone();
        tasks.spawn(me.accept_loop(listener, running));
        tracing::info!(%proxy_addr, %egress_addr, %node_id, "forward proxy started");
        Ok(())
    }

    /// Stops: answers 503 to new clients, ends every tunnel and connection, awaits every task
    /// and releases both ports. Does nothing if not running.
    pub async fn stop(&self) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        let Some(running) = self.inner.running.write().expect("running lock").take() else {
            return Ok(());
        };
        running.stopping.store(true, Ordering::SeqCst);
        lifecycle::shutdown(
            &running.endpoint,
            &running.tracker,
            &running.tasks,
            self.inner.opts.end_time,
        )
        .await;
        let socket = lifecycle::release_port(&running.endpoint, &running.socket);
        drop(running);
        lifecycle::wait_released(socket).await;
        tracing::info!("forward proxy stopped");
        Ok(())
    }

    fn running(&self) -> Result<Arc<Running>> {
        self.inner
            .running
            .read()
            .expect("running lock")
            .clone()
            .ok_or(Error::ForwardProxyNotRunning)
    }

    /// This proxy's node id.
    pub fn node_id(&self) -> Result<NodeId> {
        let running = self.running()?;
        Ok(self
            .inner
            .identities
            .current()
            .map_or(running.node_id, |id| id.node_id))
    }

    /// The HTTP CONNECT listener's address.
    pub fn proxy_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.proxy_addr)
    }

    /// The QUIC socket's address.
    pub fn egress_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.egress_addr)
    }

    /// Number of live QUIC connections.
    pub fn connection_count(&self) -> Result<usize> {
        Ok(self.running()?.tracker.count())
    }

    /// The connection to a reverse proxy at `addr`.
    pub fn connection_info_by_ingress(&self, addr: SocketAddr) -> Result<Option<ConnectionInfo>> {
        Ok(self.running()?.tracker.info(&addr))
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
        Ok(peer.map(|p| running.tracker.info_of(&p)))
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
        let running = self.running()?;
        let budget = timeout.unwrap_or(self.inner.opts.connect_time);
        let dial = self.connect(&running, addr, pin, budget);
        let peer = cancellable(&running, cancel, dial).await?;
        running.tracker.register(addr, pin);
        Ok(running.tracker.info_of(&peer))
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
        let running = self.running()?;
        let budget = timeout.unwrap_or(self.inner.opts.connect_time);
        let dial = self.connect_via(&running, addr, Some(node), Some(relay.clone()), budget);
        let peer = cancellable(&running, cancel, dial).await?;
        running.tracker.register_relayed(addr, node, relay);
        Ok(running.tracker.info_of(&peer))
    }

    /// The device changed networks (the app says so; see [`crate::netwatch`] for Linux, where
    /// it is noticed without being asked): rebinds the UDP socket if its address is gone,
    /// registers with every relay again and re-probes every direct path at once.
    pub fn network_changed(&self) -> Result<()> {
        let running = self.running()?;
        running.network.mark_current();
        running.network_changed();
        Ok(())
    }

    /// The status of every relay link.
    pub fn relay_status(&self) -> Result<Vec<(RelaySpec, LinkStatus)>> {
        let running = self.running()?;
        let links = running.links.lock().expect("links lock");
        Ok(links
            .iter()
            .map(|l| (l.spec().clone(), l.status()))
            .collect())
    }

    /// The link to `spec`'s relay, started on first use.
    fn link_for(&self, running: &Arc<Running>, spec: &RelaySpec) -> Result<Arc<RelayLink>> {
        let mut links = running.links.lock().expect("links lock");
        if let Some(l) = links.iter().find(|l| l.same_registration(spec)) {
            return Ok(l.clone());
        }
        // One registration per relay: a link asking differently (token, transport) replaces it.
        links.retain(|l| {
            let same_relay = l.spec().addr == spec.addr && l.spec().node_id == spec.node_id;
            if same_relay {
                l.stop();
            }
            !same_relay
        });
        let identity = self
            .inner
            .identities
            .current()
            .ok_or(Error::ForwardProxyNotRunning)?;
        let link = attach(
            spec.clone(),
            ProxyParts {
                endpoint: &running.endpoint,
                socket: &running.socket,
                identity: &identity,
                opts: &self.inner.opts,
                tasks: &running.tasks,
                tracker: &running.tracker,
                server: None,
            },
        );
        links.push(link.clone());
        Ok(link)
    }

    /// Tracks `addr` without connecting (first form): CONNECTs to it are then accepted and the
    /// connection opens on the first one.
    pub fn add_direct_connection(&self, addr: SocketAddr) -> Result<()> {
        self.running()?.tracker.register(addr, None);
        Ok(())
    }

    /// Closes the connection to `addr` (tunnels on it end) and forgets the address. Waits up to
    /// `connEndTime` for the close to be acknowledged.
    pub async fn close_connection(&self, addr: SocketAddr) -> Result<()> {
        let running = self.running()?;
        if let Some(peer) = running.tracker.remove(&addr, reason::LOCAL) {
            let _ = tokio::time::timeout(self.inner.opts.end_time, peer.conn.closed()).await;
        }
        Ok(())
    }

    /// Forgets `addr` and closes its connection without waiting (first form).
    pub fn remove_connection(&self, addr: SocketAddr) -> Result<()> {
        self.running()?.tracker.remove(&addr, reason::LOCAL);
        Ok(())
    }

    /// The addresses the DHT holds for `node` (signed record first, then hints).
    pub async fn lookup(&self, node: NodeId, timeout: Option<Duration>) -> Result<Vec<Found>> {
        discovery::lookup_on(self.running()?.discovery.as_ref(), node, timeout).await
    }

    /// The addresses this proxy announced last (empty before the first announce succeeded).
    pub fn announced_addrs(&self) -> Result<Vec<SocketAddr>> {
        Ok(discovery::announced_on(self.running()?.discovery.as_ref()))
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
        let running = self.running()?;
        let budget = timeout.unwrap_or(self.inner.opts.connect_time);
        let dial = self.connect_to_node(&running, node, budget);
        let peer = cancellable(&running, cancel, dial).await?;
        Ok(running.tracker.info_of(&peer))
    }

    async fn connect_to_node(
        &self,
        running: &Arc<Running>,
        node: NodeId,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        if let Some(peer) = running
            .tracker
            .peers()
            .into_iter()
            .find(|p| p.claims(&node))
        {
            return Ok(peer);
        }
        let Some(d) = running.discovery.clone() else {
            return match &running.relay {
                Some(link) => self.connect_by_relay(running, node, link, budget).await,
                None => Err(discovery::discovery_off()),
            };
        };
        let deadline = Instant::now() + budget;
        let found = d.lookup(node, deadline).await;
        if found.is_empty() {
            if let Some(link) = &running.relay {
                let left = deadline.saturating_duration_since(Instant::now());
                return self.connect_by_relay(running, node, link, left).await;
            }
            if Instant::now() >= deadline {
                return Err(Error::ConnectionStartTimeout(budget.as_millis() as u64));
            }
            return Err(Error::NodeNotFound(node.to_string()));
        }
        let mut dials = tokio::task::JoinSet::new();
        for f in found.iter().take(MAX_CANDIDATES) {
            let me = self.clone();
            let r = running.clone();
            let addr = f.addr;
            let mut left = deadline.saturating_duration_since(Instant::now());
            if running.relay.is_some() {
                // Leave time for the relay when no found address answers.
                left = left.min(DIRECT_BEFORE_RELAY);
            }
            dials.spawn(async move {
                let peer = me.connect(&r, addr, Some(node), left).await?;
                r.tracker.register(addr, Some(node));
                Ok::<_, Error>(peer)
            });
        }
        // Prefer the pin's verdict over a timeout: it says a record pointed at another node.
        let mut failure: Option<Error> = None;
        while let Some(joined) = dials.join_next().await {
            match joined {
                Ok(Ok(peer)) => return Ok(peer),
                Ok(Err(e)) => {
                    tracing::debug!(%node, error = %e, "candidate address failed");
                    let keep = matches!(failure, Some(Error::CertChain(_)));
                    if !keep {
                        failure = Some(e);
                    }
                }
                Err(e) => failure = Some(Error::ConnectionStart(e.to_string())),
            }
        }
        let failure = failure.unwrap_or_else(|| Error::NodeNotFound(node.to_string()));
        // Found but unreachable (a symmetric NAT, blocked UDP): try the start relay, if any.
        match &running.relay {
            Some(link) if Instant::now() < deadline => {
                tracing::debug!(%node, error = %failure, "no found address answered: trying the relay");
                let left = deadline.saturating_duration_since(Instant::now());
                self.connect_by_relay(running, node, link, left)
                    .await
                    .map_err(|_| failure)
            }
            _ => Err(failure),
        }
    }

    /// Reaches `node` through the start relay, tracked under its virtual address.
    async fn connect_by_relay(
        &self,
        running: &Arc<Running>,
        node: NodeId,
        link: &Arc<RelayLink>,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        let key = running.socket.paths.virtual_for(node, link.outbox());
        let spec = link.spec().clone();
        self.connect_via(running, key, Some(node), Some(spec), budget)
            .await
    }

    /// Finds or opens the connection to `addr` (through the relay it was registered with, if
    /// any); one dial per address at a time.
    async fn connect(
        &self,
        running: &Arc<Running>,
        addr: SocketAddr,
        pin: Option<NodeId>,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        let via = running.tracker.via(&addr);
        self.connect_via(running, addr, pin, via, budget).await
    }

    /// Finds or opens the connection to `addr`, through `via` when given.
    async fn connect_via(
        &self,
        running: &Arc<Running>,
        addr: SocketAddr,
        pin: Option<NodeId>,
        via: Option<RelaySpec>,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        let deadline = Instant::now() + budget;
        let timed_out = || Error::ConnectionStartTimeout(budget.as_millis() as u64);
        let lock = running.tracker.dial_lock(addr);
        // Forgets the entry of a dial that never connected, also when this future is dropped
        // mid-dial (aborted, or another address of the same node won the race).
        let _forget = ForgetFailedDial {
            tracker: &running.tracker,
            addr,
            lock: &lock,
        };
        let _dial = tokio::time::timeout_at(deadline.into(), lock.lock())
            .await
            .map_err(|_| timed_out())?;
        if let Some(peer) = running.tracker.get(&addr) {
            if let Some(pin) = pin {
                if !peer.claims(&pin) {
                    return Err(crate::error::CertChainError::Unclaimed {
                        expected: pin.to_string(),
                    }
                    .into());
                }
            }
            return Ok(peer);
        }
        match (via, pin) {
            (Some(spec), Some(node)) => {
                self.dial_relayed(running, addr, node, &spec, budget, deadline, &lock)
                    .await
            }
            (Some(_), None) => Err(Error::InvalidArgument(
                "a connection through a relay needs the node id".into(),
            )),
            (None, _) => self.dial(running, addr, pin, budget, deadline, &lock).await,
        }
    }

    /// A client config for a dial that accepts a server proving `accept`; the outcome keeps
    /// the reason a certificate was refused.
    fn dial_config(&self, accept: &Acceptable) -> Result<(quinn::ClientConfig, VerifyOutcome)> {
        let identity = self
            .inner
            .identities
            .current()
            .ok_or(Error::ForwardProxyNotRunning)?;
        let outcome = VerifyOutcome::default();
        let config = client_config(
            &identity,
            accept.clone(),
            outcome.clone(),
            self.inner.opts.transport(),
        )?;
        Ok((config, outcome))
    }

    /// Finishes a dial to `addr` (the caller holds its dial lock `lock`) once the handshake and
    /// the hellos are done: checks the chain, learns the key for discovery, and tracks the
    /// connection under `addr` with `path`.
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &self,
        running: &Arc<Running>,
        conn: quinn::Connection,
        accept: &Acceptable,
        addr: SocketAddr,
        lock: &Arc<tokio::sync::Mutex<()>>,
        path: Path,
    ) -> Result<Arc<Peer>> {
        let peer_certs = crate::tls::verify::peer_chain(&conn);
        let node_id = verify_chain(
            &peer_certs,
            accept,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )?;
        if !running.tracker.is_current_dial(&addr, lock) {
            conn.close(0u32.into(), reason::LOCAL.as_bytes());
            return Err(Error::ConnectionStart(format!(
                "{addr} was closed while its connection was being opened"
            )));
        }
        if let Some(d) = &running.discovery {
            d.learn_key(node_id, &peer_certs);
        }
        let peer = Arc::new(Peer::with_remote(conn, node_id, path, addr));
        running.tracker.insert(peer.clone());
        tracing::debug!(%addr, %node_id, path = path.as_str(), "connection established");
        Ok(peer)
    }

    /// Dials `node` through the relay `spec` (the caller holds the dial lock of `addr`, the
    /// address the connection is tracked under).
    #[allow(clippy::too_many_arguments)]
    async fn dial_relayed(
        &self,
        running: &Arc<Running>,
        addr: SocketAddr,
        node: NodeId,
        spec: &RelaySpec,
        budget: Duration,
        deadline: Instant,
        lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Arc<Peer>> {
        let timed_out = || Error::ConnectionStartTimeout(budget.as_millis() as u64);
        let link = self.link_for(running, spec)?;
        link.wait_up(deadline, false).await?;
        let target = running.socket.paths.virtual_for(node, link.outbox());
        let accept = Acceptable::OneOf(vec![node]);
        let (config, outcome) = self.dial_config(&accept)?;
        let mut gone = link.gone_notices();
        let connecting = running
            .endpoint
            .connect_with(config, target, SERVER_NAME)
            .map_err(|e| Error::ConnectionStart(format!("{node} via relay: {e}")))?;
        let refused = async {
            loop {
                match gone.recv().await {
                    Ok((n, why)) if n == node => return why,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => std::future::pending::<()>().await,
                }
            }
        };
        let conn = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), connecting) => match r {
                Err(_) => return Err(timed_out()),
                Ok(Err(e)) => return Err(handshake_error(&outcome, format_args!("{node} via relay"), e)),
                Ok(Ok(conn)) => conn,
            },
            why = refused => return Err(Error::NotOnRelay(format!("{why} ({})", spec.addr))),
        };
        let ours = Hello {
            punching: false,
            observed: target,
            own: running.egress_addr,
        };
        exchange_hello(&conn, ours, deadline).await.map_err(|e| {
            Error::ConnectionStart(format!(
                "{node} refused this node after the handshake (allowedNodeIds?): {e}"
            ))
        })?;
        let path = running
            .socket
            .paths
            .path_of(&target)
            .unwrap_or(Path::Relayed);
        let peer = self.adopt(running, conn, &accept, addr, lock, path)?;
        if spec.upgrade {
            let delay = spec.upgrade_delay;
            running.tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                link.call_me_maybe(node);
            });
        }
        Ok(peer)
    }

    /// Dials `addr` (the caller holds its dial lock `lock`): punches, handshakes, exchanges
    /// hellos, and adds the connection to the tracker.
    async fn dial(
        &self,
        running: &Arc<Running>,
        addr: SocketAddr,
        pin: Option<NodeId>,
        budget: Duration,
        deadline: Instant,
        lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Arc<Peer>> {
        let timed_out = || Error::ConnectionStartTimeout(budget.as_millis() as u64);
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(Error::ConnectionStart(format!("cannot connect to {addr}")));
        }
        let accept = pin
            .map(|p| Acceptable::OneOf(vec![p]))
            .unwrap_or(Acceptable::Any);
        let (config, outcome) = self.dial_config(&accept)?;
        let dial = || {
            running
                .endpoint
                .connect_with(config.clone(), addr, SERVER_NAME)
                .map_err(|e| Error::ConnectionStart(format!("{addr}: {e}")))
        };
        let mut connecting = dial()?;
        let mut attempt_started = Instant::now();
        let mut restarts = 0;
        let mut punch = PunchDriver::start(
            &running.socket,
            addr,
            self.inner.opts.punch_interval,
            budget,
            u32::MAX,
        );
        let conn = loop {
            tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), &mut connecting) => match r {
                    Err(_) => return Err(timed_out()),
                    // The handshake's own idle timeout (connKeepAliveTimeoutTime) ran out before
                    // our budget did: the peer may still start punching, so dial again.
                    Ok(Err(quinn::ConnectionError::TimedOut)) if Instant::now() < deadline => {
                        connecting = dial()?;
                        attempt_started = Instant::now();
                    }
                    Ok(Err(e)) => return Err(handshake_error(&outcome, addr, e)),
                    Ok(Ok(conn)) => break conn,
                },
                PunchEvent::PathOpened = punch.next_event() => {
                    // The path just opened. An attempt still pending after a while had its
                    // Initial packets dropped by a NAT and waits for a backed-off retransmit:
                    // start a fresh handshake now instead.
                    if attempt_started.elapsed() > RESTART_AFTER && restarts < MAX_RESTARTS {
                        tracing::debug!(%addr, "path opened: restarting the handshake");
                        connecting = dial()?;
                        attempt_started = Instant::now();
                        restarts += 1;
                    }
                }
            }
        };
        punch.connected();
        // The reverse proxy says hello only after it accepted our certificate.
        let own = running.socket.local_toward(addr);
        let ours = Hello {
            punching: true,
            observed: addr,
            own,
        };
        let theirs = exchange_hello(&conn, ours, deadline).await.map_err(|e| {
            Error::ConnectionStart(format!(
                "{addr} refused this node after the handshake (allowedNodeIds?): {e}"
            ))
        })?;
        let path = judge_path(
            theirs.punching || punch.peer_took_part(),
            theirs.nat_between(addr, own),
        );
        self.adopt(running, conn, &accept, addr, lock, path)
    }

    async fn accept_loop(self, listener: TcpListener, running: Arc<Running>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = match limit.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            };
            match listener.accept().await {
                Ok((tcp, client)) => {
                    backoff = Duration::from_millis(5);
                    let me = self.clone();
                    let r = running.clone();
                    running.tasks.spawn(async move {
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
        let budget = self.inner.opts.connect_time;
        let (head, rest) = match tokio::time::timeout(budget, read_head(&mut tcp)).await {
            Err(_) => return answer(&mut tcp, 408, "request head not received in time").await,
            Ok(Err(HeadFailure::Io)) => return,
            Ok(Err(HeadFailure::Bad(e))) => {
                return answer(&mut tcp, e.status(), &e.to_string()).await
            }
            Ok(Ok(h)) => h,
        };
        let token = self.inner.auth_token.read().expect("token lock").clone();
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
        let dial = match (target.addr, target.node_id) {
            (Some(addr), Some(id)) => Dial::Addr(addr, Some(id)),
            (Some(addr), None) => match running.tracker.registration(&addr) {
                Some(pin) => Dial::Addr(addr, pin),
                None => {
                    let msg = format!("{addr} is not in the connection tracker: add ?nodeId=");
                    return answer(&mut tcp, 400, &msg).await;
                }
            },
            (None, Some(id)) if running.discovery.is_some() || running.relay.is_some() => {
                Dial::Node(id)
            }
            (None, _) => {
                let msg =
                    "a NODEID.keynet target needs discovery or a relay: start the proxy with one";
                return answer(&mut tcp, 400, msg).await;
            }
        };
        let deadline = Instant::now() + budget;
        let opened = tokio::time::timeout_at(deadline.into(), async {
            let peer = match dial {
                Dial::Addr(addr, pin) => self.connect(running, addr, pin, budget).await?,
                Dial::Node(id) => self.connect_to_node(running, id, budget).await?,
            };
            let (send, recv) = open_tunnel(&peer).await?;
            Ok::<_, Error>((peer, send, recv))
        })
        .await
        .unwrap_or_else(|_| Err(Error::ConnectionStartTimeout(budget.as_millis() as u64)));
        let (peer, send, recv) = match opened {
            Ok(x) => x,
            Err(e) => {
                let status = if running.stopping.load(Ordering::SeqCst) {
                    503
                } else {
                    e.http_status()
                };
                return answer(&mut tcp, status, &e.to_string()).await;
            }
        };
        if tcp.write_all(&connect::response(200, "")).await.is_err() {
            return;
        }
        running
            .clients
            .lock()
            .expect("clients lock")
            .insert(client, peer.clone());
        match splice(tcp, send, recv, &rest).await {
            Ok(m) => {
                tracing::debug!(%client, up = m.tcp_to_quic, down = m.quic_to_tcp, "tunnel ended")
            }
            Err(e) => tracing::debug!(%client, error = %e, "tunnel aborted"),
        }
    }
}

/// On drop, forgets the tracker entry of `addr` unless a connection or registration uses it.
struct ForgetFailedDial<'a> {
    tracker: &'a Tracker,
    addr: SocketAddr,
    lock: &'a Arc<tokio::sync::Mutex<()>>,
}

impl Drop for ForgetFailedDial<'_> {
    fn drop(&mut self) {
        self.tracker.forget_failed_dial(&self.addr, self.lock);
    }
}

/// Runs `op` until it ends, the caller aborts it (`cancel`) or the proxy stops.
async fn cancellable<T>(
    running: &Running,
    cancel: Option<CancellationToken>,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let cancel = cancel.unwrap_or_default();
    let stopping = running.tasks.token().clone();
    tokio::select! {
        r = op => r,
        _ = cancel.cancelled() => Err(Error::Aborted),
        _ = stopping.cancelled() => Err(Error::ForwardProxyNotRunning),
    }
}

/// What a CONNECT asks to reach.
enum Dial {
    /// A reverse proxy's address, with the pin that applies.
    Addr(SocketAddr, Option<NodeId>),
    /// A node id, found through discovery.
    Node(NodeId),
}

/// With a relay at hand, how long the addresses found on the DHT may try before the relay.
const DIRECT_BEFORE_RELAY: Duration = Duration::from_secs(3);

/// Most addresses of one lookup dialled at once.
const MAX_CANDIDATES: usize = 8;

/// A pending handshake older than this is restarted when the punched path opens.
const RESTART_AFTER: Duration = Duration::from_millis(150);
/// Restarts per dial.
const MAX_RESTARTS: u32 = 3;

/// Most concurrent CONNECT clients; more wait in the listen backlog.
const MAX_CLIENTS: usize = 8192;

/// Opens a stream, writes the tunnel header and waits for the reverse proxy's acknowledgement.
async fn open_tunnel(peer: &Peer) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = peer
        .conn
        .open_bi()
        .await
        .map_err(|e| Error::ConnectionStart(format!("cannot open tunnel: {e}")))?;
    send.write_all(&tunnel::encode_open())
        .await
        .map_err(|e| Error::ConnectionStart(format!("cannot open tunnel: {e}")))?;
    let mut prefix = [0u8; 3];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| Error::ConnectionStart(format!("reverse proxy did not acknowledge: {e}")))?;
    let (status, len) =
        tunnel::decode_ack_prefix(&prefix).map_err(|e| Error::ConnectionStart(e.to_string()))?;
    let mut reason = vec![0u8; len];
    recv.read_exact(&mut reason)
        .await
        .map_err(|e| Error::ConnectionStart(format!("reverse proxy did not acknowledge: {e}")))?;
    match tunnel::decode_ack(status, &reason) {
        Ack::Ok => Ok((send, recv)),
        Ack::ServerUnreachable(why) => Err(Error::ConnectionStart(format!(
            "reverse proxy could not reach its server: {why}"
        ))),
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
