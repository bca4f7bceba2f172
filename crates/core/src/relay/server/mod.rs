//! The relay server: accepts keynodes over QUIC (UDP) and over TLS + WebSocket (TCP, for
//! networks that block UDP). Both run mutual TLS, so a node id is proven before the first frame
//! (and `allowed_node_ids` is enforced in the handshake). On its connection a node registers
//! (with the registration token, when the relay requires one), after which the relay:
//! - forwards its QUIC packets to other registered nodes only (it is not an open proxy: there is
//!   no frame that names an address), at most `max_peers` distinct ones per node;
//! - answers `CallMeMaybe` with a `Rendezvous` to both sides (each other's observed address);
//! - gives it a public TCP port on request ([`crate::relay::server::alloc`]).
//!
//! A malformed frame closes only the offending connection, with a logged reason. One
//! registration per node id: a newer connection replaces (and closes) the older one.

mod admission;
pub mod alloc;
pub mod limits;
mod metrics_http;
mod registry;
pub mod stats;

use admission::Admission;
use limits::Limits;
use registry::{Refusal, Registry};
use stats::{Counters, Gauges, RelayStats};

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, RelayError, Result, StartError};
use crate::identity::TlsConfig;
use crate::lifecycle::{self, Identities, Lifecycle};
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::channel;
use crate::proto::relay::{Frame, Mapping, ANNOUNCE_EVERY, NO_RECORDS};
use crate::relay::framed::{write_frames, BoxRead, BoxWrite, FrameReader, ReadError};
use crate::socket::{self, KeynetSocket};
use crate::task::Tasks;
use crate::tls::config::{server_config, tls_server_config};
use crate::tls::verify::{verify_chain, Acceptable};
use alloc::{AllocOptions, Allocations};

/// Relayed packets queued toward one node (also bounded in bytes by
/// [`Limits::queue_bytes`]); beyond either, packets for it are dropped (they are
/// unreliable: QUIC recovers).
const NODE_QUEUE: usize = 4096;
/// Public-port frames queued toward one node. They are never dropped: a carrier waits for room
/// (each connection's window bounds what it can queue).
const PUBLIC_QUEUE: usize = 256;
/// Control frames (replies, rendezvous, peer-gone notices) queued toward one node. They have
/// their own queue, written before packets, so a relayed bulk transfer that fills the packet
/// queue cannot crowd out the rendezvous that would move it off the relay.
const CONTROL_QUEUE: usize = 64;
/// How long a refused node has to read its refusal and leave before it is closed.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);
/// How long a replaced session's writer gets to flush that notice before the session ends.
const REPLACED_FLUSH: Duration = Duration::from_millis(200);
/// QUIC application close code for a protocol violation.
const PROTOCOL_ERROR: u32 = 2;

/// Where the relay listens and whom it serves.
#[derive(Clone)]
pub struct RelayStart {
    /// UDP address of the relay's QUIC endpoint.
    pub addr: SocketAddr,
    /// TCP address of the TLS/WebSocket listener: default the UDP address's host and port (an
    /// ephemeral port when that one is taken and the UDP port was ephemeral too).
    pub tcp_addr: Option<SocketAddr>,
    /// Identity; a fresh one is generated when absent.
    pub tls: Option<TlsConfig>,
    /// When given, only these node ids may connect and register.
    pub allowed_node_ids: Option<Vec<NodeId>>,
    /// When given, registration requires this token (callers aside).
    pub token: Option<String>,
    /// Take caller registrations: nodes that register without the token only to call nodes
    /// registered here (which still decide whom they answer). Default true; false makes the
    /// relay serve only token holders.
    pub callers: bool,
    /// Where verified `Announce` records go (a DHT node that stores them under their node's
    /// locator); none: the relay answers `Announce` with 501.
    pub records: Option<RecordQueue>,
    /// Public port allocation.
    pub alloc: AllocOptions,
    /// Every bound the relay enforces ([`limits::TABLE`]).
    pub limits: Limits,
    /// Where to serve `GET /metrics` (Prometheus text); none by default.
    pub metrics: Option<SocketAddr>,
    /// Test harness only: rewrites each frame the relay sends to a node (the node's id, the
    /// frame) into the frames actually sent, so tests can play a hostile relay (forge,
    /// duplicate, reorder). Never set in production.
    #[doc(hidden)]
    pub tamper: Option<Tamper>,
}

/// See [`RelayStart::records`]: the announcing node and its verified record. Bounded by its
/// sender; a full channel answers 503.
pub type RecordQueue = mpsc::Sender<(NodeId, Vec<u8>)>;

/// See [`RelayStart::tamper`].
pub type Tamper = Arc<dyn Fn(NodeId, Frame) -> Vec<Frame> + Send + Sync>;

impl RelayStart {
    /// Defaults: no token, any node, default allocation and limits.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            tcp_addr: None,
            tls: None,
            allowed_node_ids: None,
            token: None,
            callers: true,
            records: None,
            alloc: AllocOptions::default(),
            limits: Limits::default(),
            metrics: None,
            tamper: None,
        }
    }
}

/// The relay server. Cheap to clone. Dropping the last clone of a started relay without
/// `stop()` cancels its tasks and closes its connections.
#[derive(Clone)]
pub struct RelayServer {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

struct Inner {
    opts: ConnOptions,
    identities: Identities,
    life: Lifecycle<Running>,
}

/// Held only by handles: its drop is the last handle going.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(running) = self.0.life.take() {
            running.endpoint.close(0u32.into(), b"relay dropped");
            running.tasks.token().cancel();
        }
    }
}

/// One registered node.
struct NodeConn {
    id: u64,
    /// The node's QUIC connection: its UDP address, read when needed (it changes when the
    /// node's NAT rebinds and quinn migrates). None over WebSocket (no UDP path).
    quic: Option<quinn::Connection>,
    /// Relayed packets (dropped when full).
    tx: mpsc::Sender<Frame>,
    /// Bytes of the packets in `tx`.
    queued: Arc<AtomicUsize>,
    /// Public-port frames (which wait for room).
    public: mpsc::Sender<Frame>,
    /// Control frames: written first; a full queue drops (the node asks again).
    ctl: mpsc::Sender<Frame>,
    kick: CancellationToken,
    /// The port the node's UDP socket is bound to, as its Register said.
    local_port: std::sync::OnceLock<u16>,
    /// The session's UDP channel key, once given (`keynet-relay/3` over QUIC).
    channel: std::sync::OnceLock<channel::Key>,
    /// A valid channel datagram came from the node: its packets may be sent on the channel.
    channel_works: std::sync::atomic::AtomicBool,
    /// The node's UDP address and the local IP it reached us at, as last read from its QUIC
    /// connection: the channel's hot path reads this, not the connection (whose state lock
    /// its driver holds while it works). Read again when a datagram from the node arrives from
    /// elsewhere (its NAT rebound, quinn migrated) and on each of its pings.
    channel_addrs: RwLock<Option<(SocketAddr, Option<std::net::IpAddr>)>>,
}

impl NodeConn {
    /// Whether the node's NAT changed its port (it said which port it binds; QUIC only).
    fn varies(&self) -> bool {
        match (self.observed(), self.local_port.get()) {
            (Some(seen), Some(bound)) => seen.port() != *bound,
            _ => false,
        }
    }

    /// Queues a control frame for the node; false when the session ended or the node has read
    /// nothing for `idle` (a node that only sends would otherwise hold its session for ever).
    async fn reply(&self, frame: Frame, idle: Duration) -> bool {
        matches!(
            tokio::time::timeout(idle, self.ctl.send(frame)).await,
            Ok(Ok(()))
        )
    }

    /// The node's UDP address as the relay sees it now (None: no UDP path).
    fn observed(&self) -> Option<SocketAddr> {
        self.quic
            .as_ref()
            .map(|c| crate::addr::canonical(c.remote_address()))
    }

    /// [`NodeConn::channel_addrs`] read from the connection again.
    fn refresh_channel_addrs(&self) -> Option<(SocketAddr, Option<std::net::IpAddr>)> {
        let addrs = self
            .quic
            .as_ref()
            .map(|c| (crate::addr::canonical(c.remote_address()), c.local_ip()));
        *self.channel_addrs.write().expect("addrs lock") = addrs;
        addrs
    }

    /// Where the node's channel datagrams come from and go to, and the local IP to send from.
    fn channel_addrs(&self) -> Option<(SocketAddr, Option<std::net::IpAddr>)> {
        // Copied out first: the read guard must be gone before a refresh writes.
        let cached = *self.channel_addrs.read().expect("addrs lock");
        cached.or_else(|| self.refresh_channel_addrs())
    }

    /// Whether a channel datagram from `from` is this node's (re-reading its address once on
    /// a mismatch: it may have moved).
    fn sent_from(&self, from: SocketAddr) -> bool {
        self.channel_addrs().is_some_and(|(a, _)| a == from)
            || self.refresh_channel_addrs().is_some_and(|(a, _)| a == from)
    }
}

struct Running {
    endpoint: quinn::Endpoint,
    socket: Arc<KeynetSocket>,
    tasks: Tasks,
    addr: SocketAddr,
    tcp_addr: SocketAddr,
    node_id: NodeId,
    accept: Acceptable,
    start: RelayStart,
    /// The relay's policy: who is registered, who may send to whom.
    nodes: Mutex<Registry<NodeConn>>,
    next_id: AtomicU64,
    allocs: Arc<Allocations>,
    /// Who may open a session.
    admission: Mutex<Admission>,
    counters: Arc<Counters>,
    /// Sessions open over QUIC, over WebSocket.
    sessions: [AtomicU64; 2],
    /// Where `GET /metrics` is served, if anywhere.
    metrics_addr: Mutex<Option<SocketAddr>>,
    /// Sessions with a UDP channel, by key (at most one per registered session).
    channels: RwLock<HashMap<channel::Key, (NodeId, Arc<NodeConn>)>>,
}

impl Running {
    /// Gives `me` (registered as `node`) a UDP channel if its session negotiated one
    /// (`keynet-relay/3` over QUIC); the key to send it. A tampering test relay gives none:
    /// its tamper works on frames.
    fn open_channel(&self, node: NodeId, me: &Arc<NodeConn>) -> Option<channel::Key> {
        let quic = me.quic.as_ref()?;
        if self.start.tamper.is_some()
            || crate::tls::config::negotiated_alpn(quic) != crate::tls::config::RELAY_ALPN_CHANNEL
        {
            return None;
        }
        let rng = ring::rand::SystemRandom::new();
        let mut channels = self.channels.write().expect("channels lock");
        let key = loop {
            let key: channel::Key = ring::rand::generate(&rng).ok()?.expose();
            if !channels.contains_key(&key) {
                break key;
            }
        };
        me.channel.set(key).ok()?;
        channels.insert(key, (node, me.clone()));
        Some(key)
    }

    /// Forgets `me`'s channel (its session ended).
    fn close_channel(&self, me: &Arc<NodeConn>) {
        if let Some(key) = me.channel.get() {
            let mut channels = self.channels.write().expect("channels lock");
            if channels.get(key).is_some_and(|(_, c)| c.id == me.id) {
                channels.remove(key);
            }
        }
    }

    /// Channel datagrams from `from`, segments of `stride` bytes from one receive (on the UDP
    /// socket's receive path: never waits). A run of packets from one sender to one
    /// destination, the common case of a bulk transfer, is checked once and forwarded in one
    /// segmented send, each header rewritten in place (the two headers have the same length);
    /// anything else goes one datagram at a time.
    fn channel_datagrams(&self, from: SocketAddr, segments: &mut [u8], stride: usize) {
        let stride = stride.max(1);
        if segments.len() > stride && self.forward_run(from, segments, stride) {
            return;
        }
        for datagram in segments.chunks(stride) {
            self.channel_datagram(from, datagram);
        }
    }

    /// Forwards `segments` as one run if every one is a packet with the first one's header
    /// (kind, key, destination) that its sender may send and that fits its target's channel;
    /// false (nothing done) otherwise.
    fn forward_run(&self, from: SocketAddr, segments: &mut [u8], stride: usize) -> bool {
        if !channel::one_header(segments, stride) {
            return false;
        }
        let Some(first) = channel::parse(&segments[..stride]) else {
            return false;
        };
        let packet_max = stride - channel::HEADER;
        if first.kind != channel::Kind::ToRelay || packet_max > self.start.limits.max_datagram {
            return false;
        }
        let (dst, key) = (first.node, first.key);
        let Some((node, me)) = self.sender(&key, from) else {
            return false;
        };
        let Ok(target) = self.target(node, &me, dst) else {
            return false;
        };
        let Some((to_key, to, src_ip)) = Self::channel_of(&target, packet_max) else {
            return false;
        };
        // One segmented send is refused whole by the kernel (and quinn-udp then turns
        // segmentation off for the socket) when a segment is longer than the way out allows:
        // only segments our own QUIC connection to the target has proven fit go together (a
        // run may begin with a sender's path-MTU probe).
        let proven = target
            .quic
            .as_ref()
            .map_or(0, |q| usize::from(q.stats().path.current_mtu));
        if stride > proven {
            return false;
        }
        let out = channel::header(channel::Kind::FromRelay, &to_key, &node);
        for s in segments.chunks_mut(stride) {
            s[..channel::HEADER].copy_from_slice(&out);
        }
        let count = segments.len().div_ceil(stride);
        // What was not sent (a full socket buffer) is dropped, as a congested link would.
        let sent = self.socket.try_send_segments(to, src_ip, segments, stride);
        let sent_bytes = (sent * stride).min(segments.len()) - sent * channel::HEADER;
        self.counters.relayed_on_channel(sent as u64, sent_bytes);
        self.counters
            .dropped(stats::Drop::QueueFull, (count - sent) as u64);
        true
    }

    /// The registered session a channel datagram from `from` with `key` is from: `key` names
    /// it and `from` is its address. Marks its channel working (its datagrams reach us, so
    /// ours reach it: it took the key before it sent).
    fn sender(&self, key: &channel::Key, from: SocketAddr) -> Option<(NodeId, Arc<NodeConn>)> {
        let sender = self
            .channels
            .read()
            .expect("channels lock")
            .get(key)
            .cloned()
            .filter(|(_, me)| me.sent_from(from))?;
        if !sender.1.channel_works.load(Ordering::Relaxed) {
            sender.1.channel_works.store(true, Ordering::Relaxed);
        }
        Some(sender)
    }

    /// A channel datagram from `from` (on the UDP socket's receive path: never waits). Forwarded
    /// only if its key names a session and it comes from that session's QUIC address: anyone
    /// else's is dropped and counted (`bad_channel`).
    fn channel_datagram(&self, from: SocketAddr, datagram: &[u8]) {
        let Some(d) = channel::parse(datagram) else {
            return;
        };
        let sender = match d.kind {
            channel::Kind::ToRelay | channel::Kind::Probe => self.sender(&d.key, from),
            channel::Kind::FromRelay | channel::Kind::ProbeAck => None,
        };
        let Some((node, me)) = sender else {
            self.counters.dropped(stats::Drop::BadChannel, 1);
            return;
        };
        if d.kind == channel::Kind::Probe {
            let ack = channel::signal(channel::Kind::ProbeAck, &d.key);
            let src_ip = me.channel_addrs().and_then(|(_, ip)| ip);
            let _ = self.socket.try_send_now(from, src_ip, &ack);
            return;
        }
        if d.packet.len() > self.start.limits.max_datagram {
            self.counters.dropped(stats::Drop::TooLarge, 1);
            return;
        }
        if let Some(refusal) = self.forward(node, &me, d.node, Cow::Borrowed(d.packet)) {
            // As on the stream, but never waiting: a full control queue drops the notice (the
            // node's next packet earns another).
            let _ = me.ctl.try_send(refusal);
        }
    }

    /// The session `node` (as `me`) may send a packet to `dst` through, if the registry allows
    /// it.
    fn target(
        &self,
        node: NodeId,
        me: &Arc<NodeConn>,
        dst: NodeId,
    ) -> Result<Arc<NodeConn>, Refusal> {
        self.nodes
            .lock()
            .expect("nodes lock")
            .forward(node, me.id, dst)
    }

    /// Where a packet of `len` bytes for `target` goes on its UDP channel (its key, address
    /// and the local IP it reached us at), when it has one that works and the packet fits.
    fn channel_of(
        target: &NodeConn,
        len: usize,
    ) -> Option<(channel::Key, SocketAddr, Option<std::net::IpAddr>)> {
        // A packet the channel cannot hold (from a stream sender whose path allowed more)
        // takes the target's stream.
        if len + channel::HEADER > channel::MAX_LIMIT
            || !target.channel_works.load(Ordering::Relaxed)
        {
            return None;
        }
        let key = *target.channel.get()?;
        let (to, src_ip) = target.channel_addrs()?;
        Some((key, to, src_ip))
    }

    /// Sends `node`'s packet on to `dst` if the registry allows it: on `dst`'s UDP channel when
    /// it has one, else queued for its stream. Returns the refusal to tell the sender.
    fn forward(
        &self,
        node: NodeId,
        me: &Arc<NodeConn>,
        dst: NodeId,
        packet: Cow<'_, [u8]>,
    ) -> Option<Frame> {
        let target = match self.target(node, me, dst) {
            Ok(target) => target,
            Err(refusal) => {
                match refusal {
                    Refusal::PeerLimit { limit, .. } => {
                        self.counters.dropped(stats::Drop::PeerLimit, 1);
                        tracing::warn!(%node, limit, "relayed peer limit reached");
                    }
                    Refusal::UnknownPeer(_) => self.counters.dropped(stats::Drop::UnknownPeer, 1),
                    _ => {}
                }
                return Some(refusal.frame());
            }
        };
        let len = packet.len();
        if let Some((key, to, src_ip)) = Self::channel_of(&target, len) {
            let out = channel::encode(channel::Kind::FromRelay, &key, &node, &packet);
            // From the address the target reached us at (the relay may listen on all of
            // the host's); unreliable like UDP: a full socket buffer drops.
            match self.socket.try_send_now(to, src_ip, &out) {
                Ok(()) => self.counters.relayed_on_channel(1, len),
                Err(_) => self.counters.dropped(stats::Drop::QueueFull, 1),
            }
            return None;
        }
        // Packets are unreliable: a full queue drops, never blocks the sender.
        let limit = self.start.limits.queue_bytes;
        let counted = target
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= limit).then_some(q + len)
            })
            .is_ok();
        let sent = counted
            && target
                .tx
                .try_send(Frame::RecvPacket {
                    src: node,
                    datagram: packet.into_owned(),
                })
                .is_ok();
        if sent {
            self.counters.relayed(len);
        } else {
            if counted {
                target.queued.fetch_sub(len, Ordering::AcqRel);
            }
            self.counters.dropped(stats::Drop::QueueFull, 1);
        }
        None
    }

    /// The counters, and what the relay holds now.
    fn stats(&self) -> RelayStats {
        let (registered, queued) = {
            let nodes = self.nodes.lock().expect("nodes lock");
            let queued = nodes
                .handles()
                .map(|n| n.queued.load(Ordering::Relaxed) as u64)
                .sum();
            (nodes.registered().len() as u64, queued)
        };
        let (allocations, public_clients) = self.allocs.counts();
        let gauges = Gauges {
            sessions_quic: self.sessions[0].load(Ordering::Relaxed),
            sessions_websocket: self.sessions[1].load(Ordering::Relaxed),
            registered,
            allocations,
            public_clients,
            queued_bytes: queued,
            tracked_addresses: self.admission.lock().expect("admission lock").tracked() as u64,
        };
        self.counters.snapshot(gauges)
    }

    /// Admits a session from `remote` (counted until the guard drops), or counts and logs the
    /// refusal.
    fn admit(self: &Arc<Self>, remote: SocketAddr, quic: bool) -> Option<Admitted> {
        let refused = self
            .admission
            .lock()
            .expect("admission lock")
            .admit(remote.ip(), std::time::Instant::now());
        if let Err(why) = refused {
            let reason = match why {
                admission::Refused::Total => stats::Refusal::MaxConnections,
                admission::Refused::PerIp => stats::Refusal::MaxConnectionsPerIp,
                admission::Refused::Rate => stats::Refusal::HandshakeRate,
            };
            self.refuse(reason, &remote.to_string());
            return None;
        }
        self.sessions[usize::from(!quic)].fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            running: Arc::downgrade(self),
            ip: remote.ip(),
            quic,
        })
    }

    /// Counts a refusal; logs the first of each reason and then every 1000th (a flood must
    /// not flood the log).
    fn refuse(&self, why: stats::Refusal, whom: &str) {
        let n = self.counters.refused(why);
        if n == 1 || n.is_multiple_of(1000) {
            tracing::warn!(reason = why.as_str(), count = n, %whom, "relay refused");
        }
    }
}

/// An admitted session: releases its admission when it ends.
struct Admitted {
    running: std::sync::Weak<Running>,
    ip: std::net::IpAddr,
    quic: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(r) = self.running.upgrade() {
            r.admission.lock().expect("admission lock").release(self.ip);
            r.sessions[usize::from(!self.quic)].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How a node's connection is closed when it misbehaves.
type Closer = Box<dyn Fn(&str) + Send + Sync>;

impl RelayServer {
    /// A stopped relay.
    pub fn new(opts: ConnOptions) -> Result<Self> {
        opts.validate()?;
        let inner = Arc::new(Inner {
            opts,
            identities: Identities::default(),
            life: Lifecycle::default(),
        });
        Ok(Self {
            _owner: Arc::new(Owner(inner.clone())),
            inner,
        })
    }

    /// Starts listening; does nothing if already running.
    pub async fn start(&self, start: RelayStart) -> Result<()> {
        let inner = &self.inner;
        inner
            .life
            .start(async {
                let mut start = start;
                start.limits.validate()?;
                start.limits = start.limits.effective();
                start.alloc.validate()?;
                let identity = inner.identities.for_start(start.tls.as_ref())?;
                let accept = start
                    .allowed_node_ids
                    .clone()
                    .map_or(Acceptable::Any, Acceptable::OneOf);
                let config = server_config(
                    &identity,
                    accept.clone(),
                    relay_transport(&inner.opts),
                    crate::tls::config::RELAY_ALPNS,
                )?;
                let tls = Arc::new(tls_server_config(
                    &identity,
                    accept.clone(),
                    &[crate::tls::config::RELAY_ALPN],
                )?);
                let secret = identity.derived_secret("quic stateless reset");
                let (endpoint, socket) = socket::bind(start.addr, Some(config), &secret)?;
                let addr = endpoint.local_addr()?;
                let tcp = bind_tcp(&start, addr).await?;
                let tcp_addr = tcp.local_addr()?;
                let metrics = match start.metrics {
                    Some(at) => Some(TcpListener::bind(at).await?),
                    None => None,
                };
                let tasks = Tasks::new();
                let alloc_host = start.alloc.host.unwrap_or(addr.ip());
                let counters = Arc::new(Counters::default());
                let allocs = Allocations::start(
                    start.alloc.clone(),
                    &start.limits,
                    alloc_host,
                    tasks.clone(),
                    counters.clone(),
                )
                .await?;
                let running = Arc::new(Running {
                    addr,
                    tcp_addr,
                    endpoint,
                    socket,
                    tasks: tasks.clone(),
                    node_id: identity.node_id,
                    accept,
                    nodes: Mutex::new(Registry::new(
                        &start.limits,
                        start.token.clone(),
                        start.callers,
                    )),
                    admission: Mutex::new(Admission::new(&start.limits)),
                    counters,
                    sessions: [AtomicU64::new(0), AtomicU64::new(0)],
                    metrics_addr: Mutex::new(None),
                    channels: RwLock::new(HashMap::new()),
                    start,
                    next_id: AtomicU64::new(1),
                    allocs,
                });
                let weak = Arc::downgrade(&running);
                running
                    .socket
                    .set_channel_sink(Box::new(move |from, segments, stride| {
                        if let Some(r) = weak.upgrade() {
                            r.channel_datagrams(from, segments, stride);
                        }
                    }));
                if let Some(listener) = metrics {
                    let weak = Arc::downgrade(&running);
                    let stats =
                        Arc::new(move || weak.upgrade().map(|r| r.stats()).unwrap_or_default());
                    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
                    *running.metrics_addr.lock().expect("metrics lock") =
                        Some(listener.local_addr()?);
                    tasks.spawn(metrics_http::serve(listener, stats, tasks.clone()));
                }
                tasks.spawn(inner.clone().accept_quic(running.clone()));
                tasks.spawn(inner.clone().accept_tcp(running.clone(), tcp, tls));
                tracing::info!(%addr, %tcp_addr, node_id = %running.node_id, "relay started");
                Ok(running)
            })
            .await
    }

    /// Stops: closes every connection, awaits every task, releases the ports.
    pub async fn stop(&self) -> Result<()> {
        let grace = self.inner.opts.end_time;
        self.inner
            .life
            .stop(|running| async move {
                for n in running.nodes.lock().expect("nodes lock").drain() {
                    n.kick.cancel();
                }
                running.endpoint.close(0u32.into(), b"relay stopped");
                let _ = tokio::time::timeout(
                    grace.max(Duration::from_secs(3)),
                    running.endpoint.wait_idle(),
                )
                .await;
                running.allocs.flush().await;
                running.tasks.shutdown(grace + Duration::from_secs(1)).await;
                let socket = lifecycle::release_port(&running.endpoint, &running.socket);
                drop(running);
                lifecycle::wait_released(socket).await;
                tracing::info!("relay stopped");
            })
            .await
    }

    fn running(&self) -> Result<Arc<Running>> {
        self.inner.life.get().ok_or(Error::RelayNotRunning)
    }

    /// The relay's UDP address.
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.addr)
    }

    /// The relay's TCP (TLS/WebSocket) address.
    pub fn tcp_addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.tcp_addr)
    }

    /// The relay's node id (clients pin it).
    pub fn node_id(&self) -> Result<NodeId> {
        Ok(self.running()?.node_id)
    }

    /// Node ids registered now.
    pub fn registered(&self) -> Result<Vec<NodeId>> {
        Ok(self
            .running()?
            .nodes
            .lock()
            .expect("nodes lock")
            .registered())
    }

    /// The relay's counters and what it holds now.
    pub fn stats(&self) -> Result<RelayStats> {
        Ok(self.running()?.stats())
    }

    /// Where `GET /metrics` is served (when asked for with [`RelayStart::metrics`]).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(*self.running()?.metrics_addr.lock().expect("metrics lock"))
    }

    /// Public ports allocated now (held for a connected node or retained), by node.
    pub fn allocations(&self) -> Result<Vec<(NodeId, u16)>> {
        Ok(self.running()?.allocs.list())
    }
}

impl Inner {
    async fn accept_quic(self: Arc<Self>, running: Arc<Running>) {
        while let Some(mut incoming) = running.endpoint.accept().await {
            // Under pressure, count a source only once it proved its address (a QUIC Retry
            // round trip): a spoofed Initial must not spend another address's handshake
            // budget, nor hold a session slot. (Where quinn cannot send a Retry, the source is
            // counted as is.)
            let prove = !incoming.remote_address_validated()
                && running
                    .admission
                    .lock()
                    .expect("admission lock")
                    .needs_proof(incoming.remote_address().ip(), std::time::Instant::now());
            if prove {
                match incoming.retry() {
                    Ok(()) => continue,
                    Err(e) => incoming = e.into_incoming(),
                }
            }
            let remote = incoming.remote_address();
            let Some(admitted) = running.admit(remote, true) else {
                incoming.refuse();
                continue;
            };
            let me = self.clone();
            let r = running.clone();
            running.tasks.spawn(async move {
                let _admitted = admitted;
                if let Err(e) = me.serve_quic(&r, incoming).await {
                    tracing::info!(%remote, error = %e, "relay connection ended");
                }
            });
        }
    }

    async fn serve_quic(&self, running: &Arc<Running>, incoming: quinn::Incoming) -> Result<()> {
        let budget = self.opts.connect_time;
        let remote = incoming.remote_address();
        let handshake = |source| StartError::Handshake {
            to: remote.to_string(),
            source,
        };
        let shaken = async {
            let connecting = incoming.accept().map_err(handshake)?;
            let conn = tokio::time::timeout(budget, connecting)
                .await
                .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))?
                .map_err(handshake)?;
            let certs = crate::tls::verify::peer_chain(&conn);
            let node = verify_chain(
                &certs,
                &running.accept,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )?;
            let (send, recv) = tokio::time::timeout(budget, conn.accept_bi())
                .await
                .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))?
                .map_err(handshake)?;
            Ok::<_, Error>((conn, node, send, recv))
        };
        let (conn, node, send, recv) = shaken.await.inspect_err(|_| {
            running.counters.refused(stats::Refusal::Handshake);
        })?;
        let closer_conn = conn.clone();
        let closer: Closer = Box::new(move |why: &str| {
            closer_conn.close(PROTOCOL_ERROR.into(), why.as_bytes());
        });
        let result = self
            .serve_node(
                running,
                node,
                Some(conn.clone()),
                crate::addr::canonical(conn.remote_address()),
                Box::new(recv),
                Box::new(send),
                closer,
            )
            .await;
        conn.close(0u32.into(), b"relay session ended");
        result
    }

    async fn accept_tcp(
        self: Arc<Self>,
        running: Arc<Running>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "relay TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(admitted) = running.admit(remote, false) else {
                // Closed before TLS: a refused client costs no handshake.
                drop(tcp);
                continue;
            };
            let me = self.clone();
            let r = running.clone();
            let acceptor = acceptor.clone();
            running.tasks.spawn(async move {
                let _admitted = admitted;
                if let Err(e) = me.serve_tcp(&r, acceptor, tcp, remote).await {
                    tracing::info!(%remote, error = %e, "relay WebSocket connection ended");
                }
            });
        }
    }

    async fn serve_tcp(
        &self,
        running: &Arc<Running>,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> Result<()> {
        let budget = self.opts.connect_time;
        let _ = tcp.set_nodelay(true);
        let shaken = tokio::time::timeout(
            budget,
            crate::relay::ws::accept(acceptor, tcp, &running.accept, &running.tasks),
        )
        .await
        .unwrap_or(Err(
            Error::ConnectionStartTimeout(budget.as_millis() as u64),
        ));
        let (node, read, write, kill) = shaken.inspect_err(|_| {
            running.counters.refused(stats::Refusal::Handshake);
        })?;
        let closer: Closer = Box::new(move |_why: &str| kill.cancel());
        self.serve_node(
            running,
            node,
            None,
            crate::addr::canonical(remote),
            read,
            write,
            closer,
        )
        .await
    }

    /// Runs one node's relay session until it ends.
    #[allow(clippy::too_many_arguments)]
    async fn serve_node(
        &self,
        running: &Arc<Running>,
        node: NodeId,
        quic: Option<quinn::Connection>,
        remote: SocketAddr,
        read: BoxRead,
        mut write: BoxWrite,
        close: Closer,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::channel::<Frame>(NODE_QUEUE);
        let (public, mut public_rx) = mpsc::channel::<Frame>(PUBLIC_QUEUE);
        let (ctl, mut ctl_rx) = mpsc::channel::<Frame>(CONTROL_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let kick = CancellationToken::new();
        let writer_kick = kick.clone();
        let writer_queued = queued.clone();
        let tamper = running.start.tamper.clone();
        let writer_counters = running.counters.clone();
        let stuck_after = running.start.limits.node_timeout;
        running.tasks.spawn(async move {
            let mut batch = Vec::new();
            let take = |batch: &mut Vec<Frame>, f: Frame| {
                if let Frame::RecvPacket { datagram, .. } = &f {
                    writer_queued.fetch_sub(datagram.len(), Ordering::AcqRel);
                }
                match &tamper {
                    Some(t) => batch.extend(t(node, f)),
                    None => batch.push(f),
                }
            };
            loop {
                // Control frames first; packets and public-port frames share what is left
                // fairly (neither can starve the other).
                let first = tokio::select! {
                    biased;
                    _ = writer_kick.cancelled() => None,
                    f = ctl_rx.recv() => f,
                    f = async {
                        tokio::select! {
                            f = rx.recv() => f,
                            f = public_rx.recv() => f,
                        }
                    } => f,
                };
                let Some(first) = first else { break };
                take(&mut batch, first);
                // Up to 64 frames per write: control, then packets and public frames in turn.
                while batch.len() < 64 {
                    let next = ctl_rx.try_recv().or_else(|_| {
                        if batch.len() % 2 == 0 {
                            rx.try_recv().or_else(|_| public_rx.try_recv())
                        } else {
                            public_rx.try_recv().or_else(|_| rx.try_recv())
                        }
                    });
                    match next {
                        Ok(f) => take(&mut batch, f),
                        Err(_) => break,
                    }
                }
                // A node that reads nothing for the node timeout is ended: otherwise one that
                // only sends (packets, pongs, credit) would keep its session and full queues.
                match tokio::time::timeout(stuck_after, write_frames(&mut write, &batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        let n = writer_counters.refused(stats::Refusal::NotReading);
                        if n == 1 || n.is_multiple_of(1000) {
                            tracing::warn!(%node, count = n, "relay refused: node reads nothing");
                        }
                        writer_kick.cancel();
                        break;
                    }
                }
                batch.clear();
            }
            // The session is over: packets still queued leave the byte count (and no more
            // come in).
            rx.close();
            while let Ok(f) = rx.try_recv() {
                if let Frame::RecvPacket { datagram, .. } = &f {
                    writer_queued.fetch_sub(datagram.len(), Ordering::AcqRel);
                }
            }
        });
        let me = Arc::new(NodeConn {
            id: running.next_id.fetch_add(1, Ordering::Relaxed),
            quic,
            tx,
            queued,
            public,
            ctl,
            kick,
            local_port: std::sync::OnceLock::new(),
            channel: std::sync::OnceLock::new(),
            channel_works: Default::default(),
            channel_addrs: RwLock::new(None),
        });
        let result = self
            .read_frames(running, node, remote, &me, FrameReader::new(read), &close)
            .await;
        me.kick.cancel();
        self.unregister(running, node, &me);
        running.close_channel(&me);
        result
    }

    /// Removes `me`'s registration (if it is still the current one for `node`): its public port
    /// goes into retention and its peers learn it left. Idempotent.
    fn unregister(&self, running: &Arc<Running>, node: NodeId, me: &Arc<NodeConn>) {
        let peers = running
            .nodes
            .lock()
            .expect("nodes lock")
            .unregister(node, me.id);
        let Some(peers) = peers else { return };
        running.allocs.node_left(node);
        for peer in peers {
            let _ = peer.ctl.try_send(registry::left(node));
        }
        tracing::info!(%node, "node left the relay");
    }

    async fn read_frames(
        &self,
        running: &Arc<Running>,
        node: NodeId,
        remote: SocketAddr,
        me: &Arc<NodeConn>,
        mut frames: FrameReader,
        close: &Closer,
    ) -> Result<()> {
        let idle = running.start.limits.node_timeout;
        let register_by = tokio::time::Instant::now() + running.start.limits.register_timeout;
        let mut registered = false;
        let mut announced: Option<tokio::time::Instant> = None;
        loop {
            let silent_by = tokio::time::Instant::now() + idle;
            let wait = if registered {
                silent_by
            } else {
                silent_by.min(register_by)
            };
            let next = tokio::select! {
                n = tokio::time::timeout_at(wait, frames.next()) => n,
                _ = me.kick.cancelled() => return Ok(()),
            };
            let frame = match next {
                Err(_) if !registered && tokio::time::Instant::now() >= register_by => {
                    running.refuse(stats::Refusal::RegisterTimeout, &node.to_string());
                    close("not registered in time");
                    return Ok(());
                }
                Err(_) => {
                    tracing::info!(%node, "node silent for {} s: disconnecting", idle.as_secs());
                    close("keepalive timeout");
                    return Ok(());
                }
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(ReadError::Malformed(e))) => {
                    running.counters.refused(stats::Refusal::Malformed);
                    tracing::warn!(%node, error = %e, "malformed relay frame: closing the connection");
                    // Unregistered before the close, so the offender's peer never sees it
                    // registered after its connection ended.
                    self.unregister(running, node, me);
                    close(&e.to_string());
                    return Err(ReadError::Malformed(e).relay_error(node).into());
                }
                Ok(Err(ReadError::Closed(why))) => return Err(RelayError::Closed(why).into()),
            };
            let reply = match frame {
                Frame::Register { .. } if registered => {
                    // Once per session (a node moving its session registers on a new one).
                    Some(Refusal::Unexpected("a second Register".into()).frame())
                }
                Frame::Register {
                    want_port,
                    caller,
                    local_port,
                    token,
                } => {
                    if let Some(port) = local_port {
                        let _ = me.local_port.set(port);
                    }
                    let outcome = running.nodes.lock().expect("nodes lock").register(
                        node,
                        me.id,
                        me.clone(),
                        &token,
                        caller,
                    );
                    match outcome {
                        Ok(Some(old)) => {
                            registered = true;
                            // The newest registration wins. The older session is told why
                            // (bounded), then ended: its node stops retrying, so two places
                            // holding one identity do not take turns kicking each other out.
                            let message = format!(
                                "replaced: node {node} registered again from {}",
                                remote.ip()
                            );
                            tracing::info!(%node, from = %remote, "a newer registration replaced the older");
                            running.tasks.spawn(async move {
                                let notice = Frame::Error {
                                    code: crate::proto::relay::REPLACED,
                                    node: None,
                                    message,
                                };
                                let _ =
                                    tokio::time::timeout(REFUSAL_GRACE, old.ctl.send(notice)).await;
                                tokio::time::sleep(REPLACED_FLUSH).await;
                                old.kick.cancel();
                            });
                        }
                        Ok(None) => registered = true,
                        Err(refusal) => {
                            running.refuse(stats::Refusal::Token, &node.to_string());
                            let _ =
                                tokio::time::timeout(REFUSAL_GRACE, me.ctl.send(refusal.frame()))
                                    .await;
                            // The node ends the session when it reads the refusal (closing now
                            // could discard it unsent); bounded, in case it does not.
                            let _ = tokio::time::timeout(REFUSAL_GRACE, async {
                                while let Ok(Some(_)) = frames.next().await {}
                            })
                            .await;
                            close(if refusal == Refusal::NoCallers {
                                "callers refused"
                            } else {
                                "registration token refused"
                            });
                            return Ok(());
                        }
                    }
                    let (public_port, refused) = if want_port && caller {
                        (
                            None,
                            Some(Refusal::CallerOnly("have a public port").frame()),
                        )
                    } else if want_port {
                        match running
                            .allocs
                            .claim(node, remote.ip(), me.public.clone())
                            .await
                        {
                            Ok(p) => (Some(p), None),
                            Err(e) => {
                                running.refuse(stats::Refusal::NoPort, &node.to_string());
                                let notice = Frame::Error {
                                    code: 503,
                                    node: None,
                                    message: format!("no public port: {e}"),
                                };
                                (None, Some(notice))
                            }
                        }
                    } else {
                        (None, None)
                    };
                    tracing::info!(%node, %remote, ?public_port, "node registered");
                    // Registered first: a node without the port it asked for is still a node
                    // (its relayed connections work); why it has none follows.
                    let answer = Frame::Registered {
                        observed: me.observed().unwrap_or(remote),
                        public_port,
                    };
                    if !me.reply(answer, idle).await {
                        running.refuse(stats::Refusal::NotReading, &node.to_string());
                        close("not reading");
                        return Ok(());
                    }
                    if let Some(key) = running.open_channel(node, me) {
                        if !me.reply(Frame::Channel { key }, idle).await {
                            running.refuse(stats::Refusal::NotReading, &node.to_string());
                            close("not reading");
                            return Ok(());
                        }
                    }
                    refused
                }
                Frame::SendPacket { datagram, .. }
                    if datagram.len() > running.start.limits.max_datagram =>
                {
                    running.counters.dropped(stats::Drop::TooLarge, 1);
                    None
                }
                Frame::SendPacket { dst, datagram } => {
                    running.forward(node, me, dst, Cow::Owned(datagram))
                }
                Frame::CallMeMaybe { peer } => self.rendezvous(running, node, me, peer),
                Frame::TcpData { .. } | Frame::TcpClose { .. } | Frame::TcpCredit { .. } => {
                    let current = running
                        .nodes
                        .lock()
                        .expect("nodes lock")
                        .is_current(node, me.id);
                    if !current {
                        Some(Refusal::NotRegistered.frame())
                    } else if let Err(broken) = running.allocs.from_node(node, frame) {
                        running.counters.refused(stats::Refusal::Malformed);
                        tracing::warn!(%node, error = %broken, "public-port flow control broken: closing the connection");
                        self.unregister(running, node, me);
                        close(&broken.to_string());
                        return Err(RelayError::Closed(broken.to_string()).into());
                    } else {
                        None
                    }
                }
                Frame::Announce { record } => {
                    self.announce(running, node, me, record, &mut announced)
                }
                Frame::Ping { nonce } => {
                    // A node whose channel is quiet may still have moved.
                    if me.channel.get().is_some() {
                        me.refresh_channel_addrs();
                    }
                    Some(Frame::Pong { nonce })
                }
                Frame::Pong { .. } => None,
                other => Some(Refusal::Unexpected(format!("{other:?}")).frame()),
            };
            if let Some(reply) = reply {
                if !me.reply(reply, idle).await {
                    running.refuse(stats::Refusal::NotReading, &node.to_string());
                    close("not reading");
                    return Ok(());
                }
            }
        }
    }

    /// A registered node's signed record, passed to [`RelayStart::records`] once it verifies
    /// as the node's own; answered only when refused.
    fn announce(
        &self,
        running: &Arc<Running>,
        node: NodeId,
        me: &Arc<NodeConn>,
        record: Vec<u8>,
        last: &mut Option<tokio::time::Instant>,
    ) -> Option<Frame> {
        let error = |code, message: String| {
            Some(Frame::Error {
                code,
                node: None,
                message,
            })
        };
        {
            let nodes = running.nodes.lock().expect("nodes lock");
            if !nodes.is_current(node, me.id) {
                return Some(Refusal::NotRegistered.frame());
            }
            if nodes.is_caller(node, me.id) {
                return Some(Refusal::CallerOnly("announce").frame());
            }
        }
        let Some(sink) = &running.start.records else {
            return error(NO_RECORDS, "this relay stores no records".into());
        };
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now < t + ANNOUNCE_EVERY) {
            return error(429, "records announced too fast".into());
        }
        // Counted before the check: refused records cost a signature check each, too.
        *last = Some(now);
        match crate::discovery::record::Record::open(&record) {
            Err(e) => return error(400, format!("record refused: {e}")),
            Ok(r) if r.node_id != node => {
                return error(403, format!("record refused: it is {}'s", r.node_id))
            }
            Ok(_) => {}
        }
        match sink.try_send((node, record)) {
            Ok(()) => {
                tracing::debug!(%node, "record taken to store");
                None
            }
            Err(_) => error(503, "record store busy".into()),
        }
    }

    fn rendezvous(
        &self,
        running: &Arc<Running>,
        node: NodeId,
        me: &Arc<NodeConn>,
        peer: NodeId,
    ) -> Option<Frame> {
        let target = running.nodes.lock().expect("nodes lock").pair(
            node,
            me.id,
            peer,
            std::time::Instant::now(),
        );
        let target = match target {
            Ok(t) => t,
            Err(refusal) => {
                match refusal {
                    Refusal::NoRelayedTraffic(_) => {
                        running.counters.refused(stats::Refusal::NoRelayedTraffic)
                    }
                    Refusal::RendezvousRate => {
                        running.counters.refused(stats::Refusal::RendezvousRate)
                    }
                    _ => 0,
                };
                return Some(refusal.frame());
            }
        };
        // Only QUIC-connected nodes have a UDP address worth punching to.
        let (Some(mine), Some(theirs)) = (me.observed(), target.observed()) else {
            tracing::debug!(%node, %peer, "no rendezvous: a side has no UDP path");
            return None;
        };
        let (mine_vary, theirs_vary) = (me.varies(), target.varies());
        let sent = target.ctl.try_send(Frame::Rendezvous {
            peer: node,
            peer_addr: mine,
            punch_in_ms: 0,
            mapping: Mapping {
                peer_varies: mine_vary,
                you_vary: theirs_vary,
            },
        });
        if sent.is_err() {
            tracing::debug!(%node, %peer, "no rendezvous: the peer's control queue is full");
            return None;
        }
        running.counters.rendezvous_sent();
        tracing::debug!(%node, %peer, %mine, %theirs, "rendezvous");
        Some(Frame::Rendezvous {
            peer,
            peer_addr: theirs,
            punch_in_ms: 0,
            mapping: Mapping {
                peer_varies: theirs_vary,
                you_vary: mine_vary,
            },
        })
    }
}

/// The QUIC transport of relay sessions: one frame stream per node. quinn keeps state for as
/// many streams as a connection may open; at the tunnels' 4096 that was 340 KiB of the relay's
/// 423 KiB per registered node (measured with `npm run loadtest`: 83 KiB with one stream).
fn relay_transport(opts: &ConnOptions) -> Arc<quinn::TransportConfig> {
    let mut t = opts.transport_config();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

async fn bind_tcp(start: &RelayStart, udp: SocketAddr) -> Result<TcpListener> {
    if let Some(a) = start.tcp_addr {
        return Ok(TcpListener::bind(a).await?);
    }
    match TcpListener::bind(udp).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && start.addr.port() == 0 => {
            Ok(TcpListener::bind(SocketAddr::new(udp.ip(), 0)).await?)
        }
        Err(e) => Err(e.into()),
    }
}
