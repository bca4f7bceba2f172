//! A keynode's standing connection to one relay: registers with it (the node's own identity, the
//! relay's node id pinned), keeps it alive, reconnects with backoff when the relay goes away,
//! carries the keynode's QUIC packets for relayed peers both ways, and punches when the relay
//! calls a rendezvous. Owned by a node; its task ends on the node's `stop()`.
//!
//! Actor view. One task (`Runner::run`) owns the relay connection:
//! ```text
//!   Connecting ──registered──▶ Up ──error, silence, renew──▶ Down ──backoff──▶ Connecting
//!        └──────────────failed───────────────────────────────▲
//! ```
//! - An `Auto` link that came up on WebSocket (QUIC did not answer in its head start) keeps
//!   trying QUIC, and once it answers registers over it and drops the WebSocket session, with
//!   no `Down` in between (`Runner::quic_again`).
//! - States are published on a watch channel (`LinkStatus`; `relay` events and
//!   `getRelayStatus()` read it). `Down` carries the error kind and text.
//! - Inboxes, each bounded: the outbox (QUIC packets for relayed peers, 1024 of them, dropped
//!   when full as a congested network would), the control queue (rendezvous requests; written
//!   first), the public-port queue of the session (flow-controlled frames, never dropped; it
//!   shares the link fairly with packets), `renew` (a network change: end the session and
//!   register again at once), and `kill` (the owner stops the link).
//! - Reconnects back off from 200 ms to 10 s ([`Backoff`]); a session that lived 10 s, or a
//!   renewal, starts the backoff over.
//! - Outputs besides frames: `gone` notices (a relayed peer is unknown or refused), and one
//!   `DirectPath` task per rendezvous (`direct.rs`).

pub(crate) mod birthday;

/// A link hands its relay the node's record at most this often: a second more than the relay
/// takes ([`crate::proto::relay::ANNOUNCE_EVERY`]); a newer record waits for its turn.
pub(crate) const ANNOUNCE_EVERY: Duration =
    crate::proto::relay::ANNOUNCE_EVERY.saturating_add(Duration::from_secs(1));
pub(crate) mod direct;
pub(crate) mod public;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::{CertChainKind, Error, ErrorKind, RelayError, Result};
use crate::nodeid::NodeId;
use crate::proto::backoff::Backoff;
use crate::proto::relay::{Frame, GoneReason, Mapping};
use crate::relay::framed::{write_frames, BoxWrite, FrameReader, RelayConn};
use crate::relay::spec::{LinkStatus, RelaySpec, Transport};
use crate::socket::paths::Outbox;
use crate::socket::KeynetSocket;
use direct::{Arranger, DirectPath, RECALL_MAX, RECALL_MIN};
use transport::Dialer;

/// Packets waiting for the relay connection before more are dropped.
const OUTBOX: usize = 1024;
/// Punch sessions (direct-path tasks) a link runs at once: each comes from a rendezvous, and a
/// relay that sent rendezvous for many peers must not make the node punch toward all of them.
pub(crate) const MAX_DIRECT: usize = 64;
/// Frames a relay may send before its answer to our registration that are kept for after it.
const EARLY_FRAMES: usize = 256;
/// Reconnect backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A session that lived this long resets the backoff.
const HEALTHY: Duration = Duration::from_secs(10);
/// A link on WebSocket under `Auto` tries QUIC again this long after registering, then at
/// doubling intervals up to [`QUIC_AGAIN_MAX`] (a blocked try costs a few Initial packets).
const QUIC_AGAIN_MIN: Duration = Duration::from_secs(2);
const QUIC_AGAIN_MAX: Duration = Duration::from_secs(60);
/// How long one such try may take.
const QUIC_AGAIN_BUDGET: Duration = Duration::from_secs(3);

/// What a link needs from its node.
#[derive(Clone)]
pub(crate) struct LinkContext {
    /// How it reaches the relay.
    pub dialer: Dialer,
    /// The node's socket (relayed packets, punches).
    pub socket: Arc<KeynetSocket>,
    /// The node's public-port connections, when it serves a public port.
    pub public: Option<Arc<public::PublicPort>>,
    /// The node's connections (direct paths key their acks with them).
    pub tracker: std::sync::Weak<crate::tracker::Tracker>,
}

/// A running link to one relay.
pub struct RelayLink {
    spec: RelaySpec,
    outbox: Outbox,
    control: mpsc::Sender<Frame>,
    status: watch::Receiver<LinkStatus>,
    /// The latest round-trip time to the relay (at registration, then every keepalive).
    rtt: watch::Receiver<Option<Duration>>,
    gone: broadcast::Sender<(NodeId, String)>,
    rendezvous_done: Mutex<std::collections::HashSet<NodeId>>,
    /// The direct-path task of each peer a rendezvous was arranged with (id, cancel).
    direct: Mutex<HashMap<NodeId, (u64, CancellationToken)>>,
    next_direct: AtomicU64,
    /// Rendezvous-request backoff per peer whose direct path is down (bounded by the relayed
    /// peers; an entry goes when the path is up again or the peer's connections are gone).
    recalls: Mutex<HashMap<NodeId, Backoff>>,
    /// Bumped by [`RelayLink::network_changed`]; direct-path tasks re-probe.
    network: watch::Sender<u64>,
    /// Ends the current relay session so the link registers again at once.
    renew: Arc<Notify>,
    /// The node's latest signed discovery record, sent to the relay (`Announce`) when it
    /// changes and on each registration, for the relay's DHT node to store.
    record: watch::Sender<Option<Vec<u8>>>,
    kill: CancellationToken,
}

impl RelayLink {
    /// Starts the link's task on the node's tasks.
    pub(crate) fn start(spec: RelaySpec, ctx: LinkContext) -> Arc<Self> {
        let (outbox, outbox_rx) = Outbox::bounded(OUTBOX);
        let (control, control_rx) = mpsc::channel(256);
        let (status_tx, status) = watch::channel(LinkStatus::Connecting);
        let (rtt_tx, rtt) = watch::channel(None);
        let (gone, _) = broadcast::channel(64);
        let (record, record_rx) = watch::channel(None);
        let link = Arc::new(Self {
            record,
            spec,
            outbox,
            control,
            status,
            rtt,
            gone,
            rendezvous_done: Mutex::new(Default::default()),
            direct: Mutex::new(HashMap::new()),
            recalls: Mutex::new(HashMap::new()),
            next_direct: AtomicU64::new(0),
            network: watch::channel(0).0,
            renew: Arc::new(Notify::new()),
            kill: CancellationToken::new(),
        });
        let runner = Runner {
            link: Arc::downgrade(&link),
            spec: link.spec.clone(),
            ctx: ctx.clone(),
            status: status_tx,
            rtt: rtt_tx,
            gone: link.gone.clone(),
            outbox: link.outbox.clone(),
            renew: link.renew.clone(),
            record: record_rx,
        };
        let kill = link.kill.clone();
        ctx.dialer.tasks.spawn(async move {
            tokio::select! {
                _ = runner.run(outbox_rx, control_rx) => {}
                _ = kill.cancelled() => {}
            }
        });
        link
    }

    /// Ends the link (its relay connection closes).
    pub fn stop(&self) {
        self.kill.cancel();
        for (_, cancel) in self.direct.lock().expect("direct lock").values() {
            cancel.cancel();
        }
    }

    /// Hands the relay the node's signed record (sent now if registered, else on
    /// registration). A caller link announces nothing.
    pub fn announce(&self, record: Vec<u8>) {
        if !self.spec.caller {
            self.record.send_replace(Some(record));
        }
    }

    /// Whether `other` asks for the same registration (relay, transport, token, port).
    pub fn same_registration(&self, other: &RelaySpec) -> bool {
        let s = &self.spec;
        s.addr == other.addr
            && s.node_id == other.node_id
            && s.tcp_addr == other.tcp_addr
            && s.transport == other.transport
            && s.token == other.token
            && s.want_port == other.want_port
            && s.caller == other.caller
    }

    /// The relay this link goes to.
    pub fn spec(&self) -> &RelaySpec {
        &self.spec
    }

    /// The outbox quinn's packets for relayed peers go to.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The current status.
    pub fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    /// The latest round-trip time to the relay, once registered.
    pub fn rtt(&self) -> Option<Duration> {
        *self.rtt.borrow()
    }

    /// A receiver of the round-trip times to the relay.
    pub fn watch_rtt(&self) -> watch::Receiver<Option<Duration>> {
        self.rtt.clone()
    }

    /// Waits until registered, or until `deadline` (or the first failure when `fail_fast`);
    /// returns the last failure otherwise.
    pub async fn wait_up(&self, deadline: Instant, fail_fast: bool) -> Result<()> {
        let mut rx = self.status.clone();
        let up = tokio::time::timeout_at(deadline.into(), async {
            loop {
                match &*rx.borrow_and_update() {
                    LinkStatus::Up { .. } => return true,
                    LinkStatus::Down(..) if fail_fast => return false,
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        if matches!(up, Ok(true)) {
            return Ok(());
        }
        let relay = self.spec.addr;
        Err(match self.status() {
            LinkStatus::Down(ErrorKind::CertChain(CertChainKind::Unclaimed), _) => {
                crate::error::CertChainError::Unclaimed {
                    expected: self.spec.node_id.to_string(),
                }
                .into()
            }
            LinkStatus::Down(_, why) => RelayError::Down { relay, why }.into(),
            _ => RelayError::NotRegistered(relay).into(),
        })
    }

    /// Status changes.
    pub fn watch(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Resolves with the relay's reason when it says `node` cannot be reached through it.
    pub fn gone_notices(&self) -> broadcast::Receiver<(NodeId, String)> {
        self.gone.subscribe()
    }

    /// Asks the relay to tell `peer` and us each other's address and punch (once per peer while
    /// connections to it live: afterwards its direct-path task asks again when needed).
    pub fn call_me_maybe(&self, peer: NodeId) {
        if !self
            .rendezvous_done
            .lock()
            .expect("rendezvous lock")
            .insert(peer)
        {
            return;
        }
        self.recall(peer);
    }

    /// The device changed networks: register again (the relay then observes the new
    /// address) and re-probe every direct path at once.
    pub fn network_changed(&self) {
        self.network.send_modify(|n| *n += 1);
        self.renew.notify_one();
    }

    /// Forgets that a rendezvous with `node` was asked for (the next relayed dial asks again).
    pub(crate) fn forget_rendezvous(&self, node: &NodeId) {
        self.recall_succeeded(*node);
        self.rendezvous_done
            .lock()
            .expect("rendezvous lock")
            .remove(node);
    }
}

/// A direct path asks its link for fresh rendezvous through this.
impl Arranger for RelayLink {
    /// Asks the relay for another rendezvous with `peer` (its direct path died; the addresses
    /// may have changed).
    fn recall(&self, peer: NodeId) {
        let _ = self.control.try_send(Frame::CallMeMaybe { peer });
    }

    /// How long `peer`'s direct-path task waits before its next rendezvous request.
    fn recall_delay(&self, peer: NodeId) -> Duration {
        self.recalls
            .lock()
            .expect("recalls lock")
            .entry(peer)
            .or_insert_with(|| Backoff::new(RECALL_MIN, RECALL_MAX))
            .next_delay()
    }

    /// `peer`'s direct path works (again): the next failure starts the backoff afresh.
    fn recall_succeeded(&self, peer: NodeId) {
        self.recalls.lock().expect("recalls lock").remove(&peer);
    }

    fn forget_rendezvous(&self, peer: &NodeId) {
        Self::forget_rendezvous(self, peer);
    }
}

struct Runner {
    link: std::sync::Weak<RelayLink>,
    spec: RelaySpec,
    ctx: LinkContext,
    status: watch::Sender<LinkStatus>,
    rtt: watch::Sender<Option<Duration>>,
    gone: broadcast::Sender<(NodeId, String)>,
    outbox: Outbox,
    renew: Arc<Notify>,
    record: watch::Receiver<Option<Vec<u8>>>,
}

impl Runner {
    async fn run(
        self,
        mut outbox_rx: mpsc::Receiver<(NodeId, Vec<u8>)>,
        mut control_rx: mpsc::Receiver<Frame>,
    ) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        // A registration over QUIC made while on WebSocket, for the next session.
        let mut moved: Option<Registration> = None;
        loop {
            if self.link.strong_count() == 0 {
                return;
            }
            let started = Instant::now();
            let mut renewing = false;
            let ended = tokio::select! {
                r = self.session(&mut outbox_rx, &mut control_rx, moved.take()) => r,
                _ = self.renew.notified() => {
                    renewing = true;
                    Err(RelayError::NetworkChanged.into())
                }
            };
            let ended = match ended {
                Ok(SessionEnd::MovedToQuic(conn)) => {
                    // No `Down` in between: the link stays up on WebSocket until the QUIC
                    // session registers (the relay then replaces the older session).
                    tracing::info!(relay = %self.spec.addr, "UDP answers the relay again: the link moves from WebSocket to QUIC");
                    moved = Some(conn);
                    backoff.reset();
                    continue;
                }
                Ok(SessionEnd::Closed) => Ok(()),
                Err(e) => Err(e),
            };
            let replaced = ended.as_ref().is_err_and(is_replaced);
            let (code, why) = match ended {
                Ok(()) => (
                    ErrorKind::ConnectionStart,
                    "the relay closed the connection".to_string(),
                ),
                Err(e) => (e.kind(), e.to_string()),
            };
            tracing::info!(relay = %self.spec.addr, reason = %why, "relay link down");
            let _ = self.status.send(LinkStatus::Down(code, why));
            if replaced {
                // Another instance of this identity holds the registration: retrying would
                // take it back, and that one would retry in turn. Wait for a network change.
                tracing::warn!(relay = %self.spec.addr, "replaced by a newer registration of this node id: not reconnecting");
                loop {
                    tokio::select! {
                        _ = self.renew.notified() => break,
                        p = outbox_rx.recv() => if p.is_none() { return },
                        c = control_rx.recv() => if c.is_none() { return },
                    }
                }
                backoff.reset();
                let _ = self.status.send(LinkStatus::Connecting);
                continue;
            }
            if started.elapsed() > HEALTHY || renewing {
                backoff.reset();
            }
            // While down, packets for relayed peers are lost (as on a broken network).
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    // A network change while down: try again at once from the new network.
                    _ = self.renew.notified() => break,
                    p = outbox_rx.recv() => if p.is_none() { return },
                    c = control_rx.recv() => if c.is_none() { return },
                }
            }
            let _ = self.status.send(LinkStatus::Connecting);
        }
    }

    /// One relay session: connects and registers (or takes `ready`, a registration made
    /// while the previous session still ran), then carries frames until the session fails,
    /// or until a session on WebSocket finds QUIC answering (see [`Runner::quic_again`]).
    async fn session(
        &self,
        outbox_rx: &mut mpsc::Receiver<(NodeId, Vec<u8>)>,
        control_rx: &mut mpsc::Receiver<Frame>,
        ready: Option<Registration>,
    ) -> Result<SessionEnd> {
        let moved = ready.is_some();
        // However the session ends (even dropped), packets go to the next session's stream
        // until it opens a channel of its own.
        let _channel = ChannelGuard {
            paths: &self.ctx.socket.paths,
            outbox: &self.outbox,
        };
        let reg = match ready {
            Some(reg) => reg,
            None => {
                let budget = self.budget();
                let conn = transport::connect(&self.spec, &self.ctx.dialer, budget).await?;
                self.register(conn, budget).await?
            }
        };
        let Registration {
            transport: on,
            quic,
            mut frames,
            mut send,
            early,
            observed,
            public_port,
            rtt,
        } = reg;
        let _ = self.rtt.send(Some(rtt));
        tracing::info!(relay = %self.spec.addr, transport = on.as_str(), %observed, ?public_port, "registered with the relay");
        let _ = self.status.send(LinkStatus::Up {
            transport: on,
            observed,
            public_port,
        });
        if moved {
            self.rendezvous_again();
        }
        let mut public_rx = self.ctx.public.as_ref().map(|p| p.session());
        let handled: Result<()> = early.into_iter().try_for_each(|f| self.handle(f));
        let moving = AtomicBool::new(false);
        let tried = AtomicBool::new(false);
        let ended = async {
            handled?;
            let carry = self.carry(
                &mut frames,
                &mut send,
                outbox_rx,
                control_rx,
                &mut public_rx,
                quic,
            );
            let again = self.quic_again(on, &moving, &tried);
            tokio::pin!(carry, again);
            tokio::select! {
                reg = &mut again => Ok(SessionEnd::MovedToQuic(reg)),
                r = &mut carry => {
                    // Once a move registers, the relay ends this session (a `REPLACED` notice,
                    // then a close): the move in flight finishes, within its bound.
                    if moving.load(Ordering::Relaxed) {
                        if let Ok(reg) = tokio::time::timeout(QUIC_AGAIN_BUDGET, &mut again).await {
                            return Ok(SessionEnd::MovedToQuic(reg));
                        }
                    }
                    match r {
                        // Our own move replaced it, and then failed (its answer was lost): not
                        // another instance of this node, so reconnect as after any failure.
                        Err(e) if is_replaced(&e) && tried.load(Ordering::Relaxed) => {
                            Err(RelayError::Closed("the move to QUIC replaced this session, then failed".into()).into())
                        }
                        r => r.map(|()| SessionEnd::Closed),
                    }
                }
            }
        }
        .await;
        if let Some(p) = &self.ctx.public {
            p.reset_all();
        }
        ended
    }

    /// How long connecting, and registering, may each take.
    fn budget(&self) -> Duration {
        self.ctx
            .dialer
            .opts
            .connect_time
            .min(Duration::from_secs(10))
    }

    /// Registers on `conn` within `budget`: the relay's answer, and the frames it wrote before
    /// it (a peer's packet, a public-port client that came early), to handle once registered.
    async fn register(&self, conn: RelayConn, budget: Duration) -> Result<Registration> {
        let quic = conn.quic.clone();
        let (mut frames, mut send): (FrameReader, BoxWrite) =
            (FrameReader::new(conn.read), conn.write);
        let asked = Instant::now();
        write_frames(
            &mut send,
            &[Frame::Register {
                want_port: self.spec.want_port && !self.spec.caller,
                caller: self.spec.caller,
                // Over QUIC the relay sees our UDP mapping: the port we bind tells it whether
                // our NAT changes ports (for the birthday punch).
                local_port: quic
                    .as_ref()
                    .and_then(|_| self.ctx.socket.bound_addr().ok())
                    .map(|a| a.port()),
                token: if self.spec.caller {
                    String::new()
                } else {
                    self.spec.token.clone().unwrap_or_default()
                },
            }],
        )
        .await
        .map_err(RelayError::Closed)?;
        let mut early = Vec::new();
        let answer = tokio::time::timeout(budget, async {
            loop {
                match next(&mut frames).await? {
                    Some(f @ (Frame::Registered { .. } | Frame::Error { .. })) => {
                        return Ok::<_, Error>(Some(f));
                    }
                    None => return Ok(None),
                    Some(f) if early.len() < EARLY_FRAMES => early.push(f),
                    Some(_) => {}
                }
            }
        })
        .await
        .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))??;
        let (observed, public_port) = match answer {
            Some(Frame::Registered {
                observed,
                public_port,
            }) => (observed, public_port),
            Some(Frame::Error { code, message, .. }) => {
                return Err(RelayError::Refused { code, message }.into())
            }
            other => return Err(RelayError::UnexpectedAnswer(format!("{other:?}")).into()),
        };
        Ok(Registration {
            transport: conn.transport,
            quic,
            frames,
            send,
            early,
            observed,
            public_port,
            rtt: asked.elapsed(),
        })
    }

    /// Resolves with a registration over QUIC once one succeeds, when this session runs on
    /// WebSocket only because QUIC did not answer (`Auto`): UDP blocked at start, or slow for
    /// a second. Tried from [`QUIC_AGAIN_MIN`] to [`QUIC_AGAIN_MAX`] apart, connecting and
    /// registering each bounded by [`QUIC_AGAIN_BUDGET`]; `moving` is set while a registration
    /// is asked for, `tried` once one was. Registering before the WebSocket session is dropped
    /// keeps the node registered throughout, so the relay keeps its peers (a node that left
    /// loses them).
    /// Over QUIC relayed packets travel as datagrams, and the relay learns the UDP mapping
    /// peers punch to (it arranges no rendezvous for a node without one). Not while
    /// public-port clients are carried: a new session resets them. Never resolves otherwise.
    async fn quic_again(
        &self,
        on: Transport,
        moving: &AtomicBool,
        tried: &AtomicBool,
    ) -> Registration {
        if on != Transport::WebSocket || self.spec.transport != Transport::Auto {
            return std::future::pending().await;
        }
        let busy = || self.ctx.public.as_ref().is_some_and(|p| !p.is_idle());
        let mut backoff = Backoff::new(QUIC_AGAIN_MIN, QUIC_AGAIN_MAX);
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            if busy() {
                continue;
            }
            let attempt = async {
                let conn = transport::connect_quic(&self.spec, &self.ctx.dialer, QUIC_AGAIN_BUDGET)
                    .await?;
                if busy() {
                    return Ok(None);
                }
                moving.store(true, Ordering::Relaxed);
                tried.store(true, Ordering::Relaxed);
                self.register(conn, QUIC_AGAIN_BUDGET).await.map(Some)
            };
            match attempt.await {
                Ok(Some(reg)) => return reg,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(relay = %self.spec.addr, error = %e, "QUIC to the relay still fails: staying on WebSocket");
                }
            }
            moving.store(false, Ordering::Relaxed);
        }
    }

    /// The link moved from WebSocket to QUIC: the relay now has our UDP mapping, and answers a
    /// rendezvous request for us (it arranges none for a node without one). Asks at once for
    /// each peer whose live connection is relayed through this link: a request made while we
    /// were on WebSocket got no answer, and nothing would ask again.
    /// Not when this link asks for no rendezvous (`upgrade` off).
    fn rendezvous_again(&self) {
        if !self.spec.upgrade {
            return;
        }
        let (Some(link), Some(tracker)) = (self.link.upgrade(), self.ctx.tracker.upgrade()) else {
            return;
        };
        let paths = &self.ctx.socket.paths;
        for peer in tracker.peers() {
            let here = paths
                .relay_of(&peer.node_id)
                .is_some_and(|o| o.same_channel(&self.outbox));
            if peer.path() == crate::events::Path::Relayed && here {
                link.forget_rendezvous(&peer.node_id);
                link.call_me_maybe(peer.node_id);
            }
        }
    }

    /// Carries frames both ways on a registered session until it fails.
    async fn carry(
        &self,
        frames: &mut FrameReader,
        send: &mut BoxWrite,
        outbox_rx: &mut mpsc::Receiver<(NodeId, Vec<u8>)>,
        control_rx: &mut mpsc::Receiver<Frame>,
        public_rx: &mut Option<mpsc::Receiver<Frame>>,
        quic: Option<quinn::Connection>,
    ) -> Result<()> {
        // Reading and writing run concurrently: a write waiting for the relay must never stop
        // us from reading what the relay sends (both sides would wait on each other).
        let last_heard = std::sync::Mutex::new(Instant::now());
        // The ping in flight (nonce, sent at): its pong is a round-trip sample.
        let pinged = std::sync::Mutex::new((0u64, Instant::now()));
        let silence = self.spec.silence.unwrap_or(self.spec.keepalive * 2);
        let cadence = match self.spec.silence {
            Some(s) => self.spec.keepalive.min(s / 3),
            None => self.spec.keepalive,
        };
        let reader = async {
            loop {
                let Some(f) = next(frames).await? else {
                    return Ok::<(), Error>(());
                };
                *last_heard.lock().expect("last heard lock") = Instant::now();
                if let (Frame::Channel { key }, Some(q)) = (&f, &quic) {
                    // From now on relayed packets go to the relay's UDP address straight from
                    // the socket (and come from it), beside this connection.
                    let channel = crate::socket::paths::Channel {
                        relay: q.remote_address(),
                        key: *key,
                        src_ip: q.local_ip(),
                        limit: crate::proto::channel::limit_for(q.stats().path.current_mtu.into()),
                        confirmed: false,
                    };
                    self.ctx.socket.paths.open_channel(&self.outbox, channel);
                    // Used once the relay answers (again on each ping until it does).
                    self.probe_channel();
                    tracing::debug!(relay = %self.spec.addr, "relayed packets travel on the relay's UDP channel");
                    continue;
                }
                if let Frame::Pong { nonce } = f {
                    let (sent, at) = *pinged.lock().expect("pinged lock");
                    if nonce == sent && quic.is_none() {
                        let _ = self.rtt.send(Some(at.elapsed()));
                    }
                }
                self.handle(f)?;
            }
        };
        // The record goes again on every registration (the relay keeps none across sessions),
        // at most every ANNOUNCE_EVERY: a newer one waits its turn (the relay refuses faster).
        let mut record = self.record.clone();
        record.mark_changed();
        let mut pending: Option<Vec<u8>> = None;
        let mut announced_at: Option<Instant> = None;
        let writer = async {
            let mut ping = tokio::time::interval(cadence);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            let mut nonce = 0u64;
            let mut batch = Vec::new();
            loop {
                // Control frames (rendezvous requests) and pings go first; packets and
                // public-port frames share the rest fairly.
                let data = tokio::select! {
                    biased;
                    c = control_rx.recv() => {
                        let Some(c) = c else { return Ok(()) };
                        write_frames(send, &[c]).await.map_err(RelayError::Closed)?;
                        continue;
                    }
                    changed = record.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        pending = record.borrow_and_update().clone().or(pending.take());
                        continue;
                    }
                    _ = tokio::time::sleep_until(announced_at.map_or_else(Instant::now, |t| t + ANNOUNCE_EVERY).into()), if pending.is_some() => {
                        let record = pending.take().expect("pending");
                        announced_at = Some(Instant::now());
                        write_frames(send, &[Frame::Announce { record }]).await.map_err(RelayError::Closed)?;
                        continue;
                    }
                    _ = ping.tick() => {
                        let silent = last_heard.lock().expect("last heard lock").elapsed();
                        if silent > silence {
                            return Err(RelayError::Silent(silent.as_millis()).into());
                        }
                        if let Some(q) = &quic {
                            // QUIC measures it continuously.
                            let _ = self.rtt.send(Some(q.rtt()));
                            // And the path MTU, which bounds the channel's datagrams.
                            let mtu = q.stats().path.current_mtu.into();
                            self.ctx.socket.paths.set_channel_limit(&self.outbox, mtu);
                            self.probe_channel();
                        }
                        nonce += 1;
                        *pinged.lock().expect("pinged lock") = (nonce, Instant::now());
                        write_frames(send, &[Frame::Ping { nonce }]).await.map_err(RelayError::Closed)?;
                        continue;
                    }
                    d = async {
                        tokio::select! {
                            p = outbox_rx.recv() => p.map(|(dst, datagram)| Frame::SendPacket { dst, datagram }),
                            f = recv_public(public_rx) => f,
                        }
                    } => d,
                };
                let Some(first) = data else { return Ok(()) };
                batch.push(first);
                while batch.len() < 64 {
                    let mut packet = || {
                        outbox_rx
                            .try_recv()
                            .map(|(dst, datagram)| Frame::SendPacket { dst, datagram })
                    };
                    let next = match public_rx.as_mut() {
                        Some(p) if batch.len() % 2 == 1 => p.try_recv().or_else(|_| packet()),
                        Some(p) => packet().or_else(|_| p.try_recv()),
                        None => packet(),
                    };
                    match next {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                write_frames(send, &batch)
                    .await
                    .map_err(RelayError::Closed)?;
                batch.clear();
            }
        };
        tokio::select! {
            r = reader => r,
            r = writer => r,
        }
    }

    /// Asks the relay whether this session's UDP channel works, if it has one not confirmed
    /// yet (the answer arrives through `Paths::from_channel`).
    fn probe_channel(&self) {
        if let Some(c) = self.outbox.channel().filter(|c| !c.confirmed) {
            let probe = crate::proto::channel::signal(crate::proto::channel::Kind::Probe, &c.key);
            if let Err(e) = self.ctx.socket.try_send_now(c.relay, c.src_ip, &probe) {
                tracing::debug!(error = %e, "channel probe not sent");
            }
        }
    }

    /// Acts on a frame from the relay; an error ends the session (the relay broke the
    /// public-port flow control).
    fn handle(&self, frame: Frame) -> Result<()> {
        match frame {
            Frame::RecvPacket { src, datagram } => {
                self.ctx
                    .socket
                    .paths
                    .from_relay(src, datagram, &self.outbox)
            }
            Frame::PeerGone { node, reason } => {
                let why = match reason {
                    GoneReason::Unknown => "is not registered with the relay",
                    GoneReason::Left => "left the relay",
                };
                let _ = self.gone.send((node, format!("node {node} {why}")));
            }
            Frame::Rendezvous {
                peer,
                peer_addr,
                punch_in_ms,
                mapping,
            } => self.rendezvous(
                peer,
                peer_addr,
                Duration::from_millis(punch_in_ms as u64),
                mapping,
            ),
            Frame::Error {
                code: crate::proto::relay::REPLACED,
                node: None,
                message,
            } => {
                return Err(RelayError::Replaced {
                    relay: self.spec.addr,
                    message,
                }
                .into());
            }
            Frame::Error {
                code: crate::proto::relay::NO_RECORDS,
                node: None,
                message,
            } => {
                // A relay without a DHT node: the node's own announces are all there is.
                tracing::debug!(relay = %self.spec.addr, %message, "relay stores no records");
            }
            Frame::Error {
                code,
                node,
                message,
            } => {
                tracing::warn!(relay = %self.spec.addr, code, %message, "relay error");
                if let Some(node) = node {
                    let _ = self
                        .gone
                        .send((node, format!("relay refused ({code}): {message}")));
                }
            }
            f @ (Frame::TcpOpen { .. }
            | Frame::TcpData { .. }
            | Frame::TcpClose { .. }
            | Frame::TcpCredit { .. }) => {
                if let Some(public) = &self.ctx.public {
                    public
                        .handle(f)
                        .map_err(|e| RelayError::Closed(format!("the relay broke {e}")))?;
                }
            }
            Frame::Pong { .. } | Frame::Ping { .. } | Frame::Registered { .. } => {}
            other => tracing::debug!(?other, "unexpected frame from the relay"),
        }
        Ok(())
    }

    /// Starts (or restarts) the direct-path task of `peer` at `addr`: punch, then keep the
    /// path alive or fall back to the relay.
    fn rendezvous(&self, peer: NodeId, addr: SocketAddr, delay: Duration, mapping: Mapping) {
        let Some(link) = self.link.upgrade() else {
            return;
        };
        let cancel = CancellationToken::new();
        let id = link.next_direct.fetch_add(1, Ordering::Relaxed);
        {
            let mut direct = link.direct.lock().expect("direct lock");
            if direct.len() >= MAX_DIRECT && !direct.contains_key(&peer) {
                tracing::warn!(relay = %self.spec.addr, %peer, "{MAX_DIRECT} punch sessions run already: rendezvous ignored");
                return;
            }
            if let Some((_, older)) = direct.insert(peer, (id, cancel.clone())) {
                older.cancel();
            }
        }
        let initiator = link
            .rendezvous_done
            .lock()
            .expect("rendezvous lock")
            .contains(&peer);
        let task = DirectPath {
            socket: self.ctx.socket.clone(),
            link: self.link.clone(),
            peer,
            addr,
            punch_interval: self.ctx.dialer.opts.punch_interval,
            keepalive_interval: self.ctx.dialer.opts.keepalive_interval,
            initiator,
            network: link.network.subscribe(),
            tracker: self.ctx.tracker.clone(),
            me: self.ctx.dialer.identity.node_id,
            mapping,
        };
        let weak = self.link.clone();
        self.ctx.dialer.tasks.spawn(async move {
            let run = async {
                tokio::time::sleep(delay).await;
                task.run().await
            };
            tokio::select! {
                _ = run => {}
                _ = cancel.cancelled() => return,
            }
            if let Some(l) = weak.upgrade() {
                let mut direct = l.direct.lock().expect("direct lock");
                if direct.get(&peer).is_some_and(|(i, _)| *i == id) {
                    direct.remove(&peer);
                }
            }
        });
    }
}

/// How a session that did not fail ended.
enum SessionEnd {
    /// The relay closed it.
    Closed,
    /// QUIC answers again: the next session runs on this registration.
    MovedToQuic(Registration),
}

/// A relay connection that registered, and what came with the answer.
struct Registration {
    transport: Transport,
    quic: Option<quinn::Connection>,
    frames: FrameReader,
    send: BoxWrite,
    /// Frames the relay wrote before its answer.
    early: Vec<Frame>,
    /// This node's address as the relay sees it.
    observed: SocketAddr,
    public_port: Option<u16>,
    /// From the registration to its answer.
    rtt: Duration,
}

/// Closes a session's UDP channel when the session ends.
struct ChannelGuard<'a> {
    paths: &'a crate::socket::paths::Paths,
    outbox: &'a Outbox,
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        self.paths.close_channel(self.outbox);
    }
}

/// Whether the relay ended the session because a newer registration of this node id replaced it.
fn is_replaced(e: &Error) -> bool {
    matches!(
        e,
        Error::ConnectionStart(crate::error::StartError::Relay(RelayError::Replaced { .. }))
    )
}

/// The next frame of the session's public-port queue; never, when the node has no public port.
async fn recv_public(rx: &mut Option<mpsc::Receiver<Frame>>) -> Option<Frame> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next(frames: &mut FrameReader) -> Result<Option<Frame>> {
    frames
        .next()
        .await
        .map_err(|e| e.relay_error("the relay").into())
}
