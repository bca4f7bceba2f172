//! Dialling a reverse proxy: by address (punching while the handshake waits), through a relay
//! (the keynodes' own QUIC packets carried by it), or by node id (DHT lookup, every address
//! found at once, the start relay last). One dial per tracked address at a time; the winner is
//! tracked, a failed dial leaves nothing behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::close_gate::CloseGate;
use crate::discovery;
use crate::discovery::record::RelayHint;
use crate::discovery::Located;
use crate::error::{Error, Result, StartError};
use crate::events::{CloseReason, Path};
use crate::holepunch::{exchange_hello, judge_path, PunchDriver, PunchEvent};
use crate::node::early::EarlyTunnel;
use crate::nodeid::NodeId;
use crate::proto::hello::Hello;
use crate::relay::link::RelayLink;
use crate::relay::spec::RelaySpec;
use crate::tls::config::{tunnel_client_tls, SERVER_NAME};
use crate::tls::verify::{handshake_error, verify_chain, Acceptable, VerifyOutcome};
use crate::tracker::{Peer, Tracker};

/// Happy Eyeballs for dials by node id: the node's relay joins the race this long after the
/// direct candidates (a direct path is cheaper; behind a filtering NAT the caller waits this much
/// longer for its first byte).
pub(crate) const RELAY_DELAY: Duration = Duration::from_millis(500);

/// How long a dial by node id waits for a relay link to come up before it tries the next relay
/// the node's record names.
pub(crate) const RELAY_LINK_WAIT: Duration = Duration::from_secs(2);

/// A connection, and the caller's tunnel when the dial opened it ([`EarlyTunnel`]).
type Reached = (Arc<Peer>, Option<EarlyTunnel>);

/// One relay a dial by node id may go through.
enum RelayWay {
    /// A link this node has.
    Linked(Arc<RelayLink>),
    /// A relay the record names, linked on demand when tried.
    OnDemand(RelayHint),
}

/// Most addresses of one lookup dialled at once.
const MAX_CANDIDATES: usize = 8;

/// A pending handshake older than this is restarted when the punched path opens.
const RESTART_AFTER: Duration = Duration::from_millis(150);
/// Restarts per dial.
const MAX_RESTARTS: u32 = 3;

/// One dial: where the connection is tracked, whom it must prove, the relay it goes through,
/// and its time.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    /// The address the connection is tracked under (a relayed peer's virtual address when it
    /// was reached by node id through the start relay).
    pub addr: SocketAddr,
    /// The node id the peer must prove; any node when absent (the first form, unpinned).
    pub pin: Option<NodeId>,
    /// Through this relay (needs `pin`).
    pub via: Option<RelaySpec>,
    /// The whole dial's budget.
    pub budget: Duration,
    /// Open the caller's tunnel during the handshake ([`EarlyTunnel`]): only for a dial made for
    /// a tunnel, which then takes it.
    pub early_tunnel: bool,
}

/// A completed handshake.
struct Handshaken {
    conn: quinn::Connection,
    /// It resumed a session (the server accepted our ticket and 0-RTT).
    resumed: bool,
    /// The tunnel whose header went out in 0-RTT, when the server accepted it.
    tunnel: Option<EarlyTunnel>,
}

/// A handshake in progress.
type Attempt = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = std::result::Result<Handshaken, quinn::ConnectionError>>
            + Send,
    >,
>;

/// Starts waiting for `connecting`. A dial holding a session ticket for the node resumes, and
/// with `early` sends the tunnel header in 0-RTT (see [`crate::node::early`] for the rule); a
/// refused 0-RTT loses that stream, and the caller opens it again once connected.
fn attempt(connecting: quinn::Connecting, early: bool) -> Attempt {
    match connecting.into_0rtt() {
        Ok((conn, accepted)) => Box::pin(async move {
            let tunnel = match early {
                true => EarlyTunnel::open(&conn).await,
                false => None,
            };
            let resumed = accepted.await;
            if let Some(e) = conn.close_reason() {
                return Err(e);
            }
            let tunnel = tunnel.filter(|_| resumed);
            Ok(Handshaken {
                conn,
                resumed,
                tunnel,
            })
        }),
        Err(connecting) => Box::pin(async move {
            let conn = connecting.await?;
            Ok(Handshaken {
                conn,
                resumed: false,
                tunnel: None,
            })
        }),
    }
}

/// The tunnel a dial made for a tunnel hands over: the one opened in 0-RTT, else one opened now
/// (its header leaves with the handshake's last flight, beside our hello).
async fn early_tunnel(
    want: bool,
    conn: &quinn::Connection,
    opened: Option<EarlyTunnel>,
) -> Option<EarlyTunnel> {
    match opened {
        Some(t) => Some(t),
        None if want => EarlyTunnel::open(conn).await,
        None => None,
    }
}

impl Dial {
    fn timed_out(&self) -> Error {
        Error::ConnectionStartTimeout(self.budget.as_millis() as u64)
    }
}

/// Ends the other ways of a race `winner` won: aborts those still dialling and closes any that
/// connected meanwhile.
async fn close_losers(mut dials: tokio::task::JoinSet<Result<Reached>>, winner: &Arc<Peer>) {
    dials.abort_all();
    while let Some(joined) = dials.join_next().await {
        if let Ok(Ok((peer, _))) = joined {
            if !Arc::ptr_eq(&peer, winner) {
                peer.close(CloseReason::Local);
            }
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

impl Node {
    /// Reaches `node` knowing only its id: a live connection that proved it, else a race of
    /// every way the DHT names (each direct candidate at once, the node's relay [`RELAY_DELAY`]
    /// later); the first that proves `node` wins and the others are dropped.
    pub(crate) async fn dial_node(
        self: &Arc<Self>,
        node: NodeId,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        Ok(self.dial_node_for(node, budget, false).await?.0)
    }

    /// As [`Self::dial_node`], for a tunnel: a new connection also hands over the caller's
    /// tunnel, opened during the handshake, when only one way was tried at first (a race of
    /// several would open the server connection on each, for one to be kept).
    pub(crate) async fn dial_node_for_tunnel(
        self: &Arc<Self>,
        node: NodeId,
        budget: Duration,
    ) -> Result<Reached> {
        self.dial_node_for(node, budget, true).await
    }

    async fn dial_node_for(
        self: &Arc<Self>,
        node: NodeId,
        budget: Duration,
        early: bool,
    ) -> Result<Reached> {
        if let Some(peer) = self.tracker.peers().into_iter().find(|p| p.claims(&node)) {
            return Ok((peer, None));
        }
        let Some(d) = self.discovery().cloned() else {
            return match self.start_link() {
                Some(link) => self.connect_by_relay(node, &link, budget, early).await,
                None => Err(discovery::discovery_off()),
            };
        };
        let deadline = Instant::now() + budget;
        // The dial starts with the first record found; if that record led nowhere (an older
        // one, answered first), a full lookup may find a newer one: race again with it.
        let first = d.locate_within(node, deadline, Duration::ZERO).await;
        let failure = match self.race(node, &first, deadline, budget, early).await {
            Ok(peer) => return Ok(peer),
            Err(e) => e,
        };
        // Without a record, the first lookup already ran to its end.
        let had_record = first.addrs.iter().any(|f| f.signed) || !first.relays.is_empty();
        if !had_record || Instant::now() >= deadline {
            return Err(failure);
        }
        let full = d.locate(node, deadline).await;
        if full.same_ways(&first) {
            return Err(failure);
        }
        tracing::debug!(%node, "a newer record: racing again");
        self.race(node, &full, deadline, budget, early).await
    }

    /// Races every way `located` names toward `node` (each direct candidate at once, the
    /// relays [`RELAY_DELAY`] later); the first that proves `node` wins, the others are dropped.
    /// With `early`, the way tried first opens the caller's tunnel when it is the only one.
    pub(super) async fn race(
        self: &Arc<Self>,
        node: NodeId,
        located: &Located,
        deadline: Instant,
        budget: Duration,
        early: bool,
    ) -> Result<Reached> {
        let relays = self.relays_toward(&located.relays);
        if located.addrs.is_empty() && relays.is_empty() {
            if Instant::now() >= deadline {
                return Err(Error::ConnectionStartTimeout(budget.as_millis() as u64));
            }
            return Err(Error::NodeNotFound(node.to_string()));
        }
        let mut dials = tokio::task::JoinSet::new();
        let local = self.endpoint.local_addr()?;
        let sendable: Vec<_> = located
            .addrs
            .iter()
            .filter(|f| crate::addr::can_send(local, f.addr))
            .collect();
        if sendable.is_empty() && relays.is_empty() {
            let family = if local.is_ipv4() { "IPv6" } else { "IPv4" };
            return Err(Error::OtherFamily(node.to_string(), family));
        }
        let sendable_count = sendable.len();
        for f in sendable.into_iter().take(MAX_CANDIDATES) {
            let me = self.clone();
            let addr = f.addr;
            let left = deadline.saturating_duration_since(Instant::now());
            let early = early && sendable_count == 1;
            dials.spawn(async move {
                let reached = me.connect_for(addr, Some(node), left, early).await?;
                me.tracker.register(addr, Some(node));
                Ok::<_, Error>(reached)
            });
        }
        if !relays.is_empty() {
            let me = self.clone();
            let delay = if sendable_count == 0 {
                Duration::ZERO
            } else {
                RELAY_DELAY
            };
            let early = early && sendable_count == 0;
            dials.spawn(async move {
                tokio::time::sleep(delay).await;
                me.connect_through_relays(node, relays, deadline, early)
                    .await
            });
        }
        // Prefer the pin's verdict over a timeout: it says a record pointed at another node.
        let mut failure: Option<Error> = None;
        while let Some(joined) = dials.join_next().await {
            match joined {
                Ok(Ok(reached)) => {
                    close_losers(dials, &reached.0).await;
                    return Ok(reached);
                }
                Ok(Err(e)) => {
                    tracing::debug!(%node, error = %e, "a way to the node failed");
                    let keep = matches!(failure, Some(Error::CertChain(_)));
                    if !keep {
                        failure = Some(e);
                    }
                }
                Err(e) => failure = Some(StartError::Task(e.into()).into()),
            }
        }
        Err(failure.unwrap_or_else(|| Error::NodeNotFound(node.to_string())))
    }

    /// The relays to try toward `node`, in order: those its record names that this node already
    /// has a link to, then the others it names (home first; linked on demand when tried), else
    /// the start relay (the node may be registered there without announcing it).
    fn relays_toward(&self, named: &[RelayHint]) -> Vec<RelayWay> {
        let mut have = Vec::new();
        let mut others = Vec::new();
        let local = self.endpoint.local_addr().ok();
        // A relay only reachable over a family this node's socket cannot use is skipped (a
        // link this node has is reachable, whatever the record says).
        let reachable =
            |hint: &&RelayHint| local.is_none_or(|l| crate::addr::can_send(l, hint.addr));
        for hint in named {
            if let Some(link) = self.links.by_relay(&hint.node_id) {
                have.push(RelayWay::Linked(link));
                continue;
            }
            if reachable(&hint) {
                others.push(RelayWay::OnDemand(hint.clone()));
            }
        }
        have.extend(others);
        if have.is_empty() {
            have.extend(self.start_link().map(RelayWay::Linked));
        }
        have
    }

    /// Tries `relays` in turn until one carries a connection that proves `node`: a relay that
    /// is not reachable within [`RELAY_LINK_WAIT`] (dead, or named by a stale record) yields to
    /// the next one.
    async fn connect_through_relays(
        self: &Arc<Self>,
        node: NodeId,
        relays: Vec<RelayWay>,
        deadline: Instant,
        early: bool,
    ) -> Result<Reached> {
        let mut failure = None;
        for way in relays {
            let link = match way {
                RelayWay::Linked(link) => link,
                RelayWay::OnDemand(hint) => match self.link_to_hint(&hint) {
                    Ok(link) => link,
                    Err(e) => {
                        failure = Some(e);
                        continue;
                    }
                },
            };
            let now = Instant::now();
            let wait = deadline.min(now + RELAY_LINK_WAIT);
            if let Err(e) = link.wait_up(wait, true).await {
                tracing::debug!(%node, relay = %link.spec().addr, error = %e, "relay not reachable: trying the next one");
                failure = Some(e);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.connect_by_relay(node, &link, left, early).await {
                Ok(reached) => return Ok(reached),
                Err(e) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| Error::NodeNotFound(node.to_string())))
    }

    /// Reaches `node` through the start relay, tracked under its virtual address.
    async fn connect_by_relay(
        self: &Arc<Self>,
        node: NodeId,
        link: &Arc<RelayLink>,
        budget: Duration,
        early: bool,
    ) -> Result<Reached> {
        let key = self.socket.paths.virtual_for(node, link.outbox());
        let spec = link.spec().clone();
        self.dial_for(Dial {
            addr: key,
            pin: Some(node),
            via: Some(spec),
            budget,
            early_tunnel: early,
        })
        .await
    }

    /// Finds or opens the connection to `addr` (through the relay it was registered with, if
    /// any); one dial per address at a time.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        pin: Option<NodeId>,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        Ok(self.connect_for(addr, pin, budget, false).await?.0)
    }

    /// As [`Self::connect`], for a tunnel: a new connection also hands over the caller's tunnel,
    /// opened during the handshake ([`EarlyTunnel`]).
    pub(crate) async fn connect_for_tunnel(
        self: &Arc<Self>,
        addr: SocketAddr,
        pin: Option<NodeId>,
        budget: Duration,
    ) -> Result<Reached> {
        self.connect_for(addr, pin, budget, true).await
    }

    async fn connect_for(
        self: &Arc<Self>,
        addr: SocketAddr,
        pin: Option<NodeId>,
        budget: Duration,
        early_tunnel: bool,
    ) -> Result<Reached> {
        let via = self.tracker.via(&addr);
        self.dial_for(Dial {
            addr,
            pin,
            via,
            budget,
            early_tunnel,
        })
        .await
    }

    /// Finds or opens the connection `d` asks for.
    pub(crate) async fn dial(self: &Arc<Self>, d: Dial) -> Result<Arc<Peer>> {
        let (peer, early) = self.dial_for(d).await?;
        debug_assert!(early.is_none(), "a dial opens a tunnel only when asked to");
        Ok(peer)
    }

    /// Finds or opens the connection `d` asks for, with the tunnel it asked for when it opened
    /// one.
    async fn dial_for(self: &Arc<Self>, d: Dial) -> Result<Reached> {
        let addr = d.addr;
        let deadline = Instant::now() + d.budget;
        let lock = self.tracker.dial_lock(addr);
        // Forgets the entry of a dial that never connected, also when this future is dropped
        // mid-dial (aborted, or another address of the same node won the race).
        let _forget = ForgetFailedDial {
            tracker: &self.tracker,
            addr,
            lock: &lock,
        };
        let _dial = tokio::time::timeout_at(deadline.into(), lock.lock())
            .await
            .map_err(|_| d.timed_out())?;
        if let Some(peer) = self.tracker.get(&addr) {
            if let Some(pin) = d.pin {
                if !peer.claims(&pin) {
                    return Err(crate::error::CertChainError::Unclaimed {
                        expected: pin.to_string(),
                    }
                    .into());
                }
            }
            return Ok((peer, None));
        }
        match (&d.via, d.pin) {
            (Some(spec), Some(node)) => self.dial_relayed(&d, node, spec, deadline, &lock).await,
            (Some(_), None) => Err(Error::InvalidArgument(
                "a connection through a relay needs the node id".into(),
            )),
            (None, _) => self.dial_direct(&d, deadline, &lock).await,
        }
    }

    /// A client config for a dial that accepts a server proving `accept`, and the server name
    /// its session tickets are kept under (the pinned node id; a dial without a pin never
    /// resumes); the outcome keeps the reason a certificate was refused; the gate is its
    /// transport's ([`super::peer_transport`] toward `to`).
    fn dial_config(
        &self,
        accept: &Acceptable,
        to: SocketAddr,
    ) -> Result<(quinn::ClientConfig, VerifyOutcome, String, CloseGate)> {
        let identity = self
            .identities
            .current()
            .ok_or(Error::ForwardProxyNotRunning)?;
        // Only forward proxies dial, and the reverse proxy never opens a stream toward them:
        // allow it none. quinn keeps state for every stream a peer may open (at the tunnels'
        // 4096 it was about 340 KiB per connection: measured on the relay with the loadtest).
        let (mut transport, gate) = super::peer_transport(&self.opts, to);
        transport.max_concurrent_bidi_streams(0u32.into());
        let (tls, outcome, name) = match accept {
            Acceptable::OneOf(ids) if ids.len() == 1 => {
                let (tls, outcome) = self.tickets.config_for(&identity, ids[0])?;
                (tls, outcome, ids[0].to_string())
            }
            _ => {
                let outcome = VerifyOutcome::default();
                let tls = tunnel_client_tls(&identity, accept.clone(), outcome.clone(), None)?;
                (tls, outcome, SERVER_NAME.to_string())
            }
        };
        let mut config = quinn::ClientConfig::new(tls);
        config.transport_config(std::sync::Arc::new(transport));
        Ok((config, outcome, name, gate))
    }

    /// Finishes a dial to `addr` (the caller holds its dial lock `lock`) once the handshake and
    /// the hellos are done: checks the chain, learns the key for discovery, and tracks the
    /// connection (with the close gate of its transport) under `addr` with `path`.
    fn adopt(
        self: &Arc<Self>,
        (conn, gate): (quinn::Connection, CloseGate),
        resumed: bool,
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
        if !self.tracker.is_current_dial(&addr, lock) {
            gate.close(&conn, 0u32.into(), CloseReason::Local.as_str().as_bytes());
            return Err(StartError::ClosedWhileOpening(addr).into());
        }
        if let Some(d) = self.discovery() {
            d.learn_key(node_id, &peer_certs);
        }
        let peer = Arc::new(Peer::with_remote(conn, gate, node_id, path, addr).resumed(resumed));
        self.tracker.insert(peer.clone());
        tracing::debug!(%addr, %node_id, path = path.as_str(), "connection established");
        Ok(peer)
    }

    /// Dials `node` through the relay `spec` (the caller holds the dial lock of `d.addr`, the
    /// address the connection is tracked under).
    async fn dial_relayed(
        self: &Arc<Self>,
        d: &Dial,
        node: NodeId,
        spec: &RelaySpec,
        deadline: Instant,
        lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Reached> {
        // The link registered as `spec` asks (one opened on demand stays on demand).
        let link = match self
            .links
            .by_relay(&spec.node_id)
            .filter(|l| l.same_registration(spec))
        {
            Some(link) => link,
            None => self.link_for(spec, Error::ForwardProxyNotRunning)?,
        };
        link.wait_up(deadline, false).await?;
        let target = self.socket.paths.virtual_for(node, link.outbox());
        let accept = Acceptable::OneOf(vec![node]);
        let (config, outcome, name, gate) = self.dial_config(&accept, target)?;
        let mut gone = link.gone_notices();
        let connecting = self
            .endpoint
            .connect_with(config, target, &name)
            .map_err(|source| StartError::Dial {
                to: format!("{node} via relay"),
                source,
            })?;
        let connecting = attempt(connecting, d.early_tunnel);
        let refused = async {
            loop {
                match gone.recv().await {
                    Ok((n, why)) if n == node => return why,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => std::future::pending::<()>().await,
                }
            }
        };
        let done = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), connecting) => match r {
                Err(_) => return Err(d.timed_out()),
                Ok(Err(source)) => {
                    let to = format!("{node} via relay");
                    return Err(handshake_error(&outcome, StartError::Handshake { to, source }));
                }
                Ok(Ok(done)) => done,
            },
            why = refused => return Err(Error::NotOnRelay(format!("{why} ({})", spec.addr))),
        };
        let (conn, resumed) = (done.conn, done.resumed);
        let early = early_tunnel(d.early_tunnel, &conn, done.tunnel).await;
        let ours = Hello {
            punching: false,
            observed: target,
            own: self.addr,
        };
        exchange_hello(&conn, ours, deadline).await.map_err(|e| {
            Error::from(StartError::NotAccepted {
                to: node.to_string(),
                why: e,
            })
        })?;
        let path = self.socket.paths.path_of(&target).unwrap_or(Path::Relayed);
        let peer = self.adopt((conn, gate), resumed, &accept, d.addr, lock, path)?;
        if spec.upgrade {
            let delay = spec.upgrade_delay;
            self.tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                link.call_me_maybe(node);
            });
        }
        Ok((peer, early))
    }

    /// Dials `d.addr` directly (the caller holds its dial lock `lock`): punches, handshakes,
    /// exchanges hellos, and adds the connection to the tracker.
    async fn dial_direct(
        self: &Arc<Self>,
        d: &Dial,
        deadline: Instant,
        lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Reached> {
        let addr = d.addr;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(StartError::Unroutable {
                action: "connect to",
                addr,
            }
            .into());
        }
        let accept = d
            .pin
            .map(|p| Acceptable::OneOf(vec![p]))
            .unwrap_or(Acceptable::Any);
        let (config, outcome, name, gate) = self.dial_config(&accept, addr)?;
        // A restart never tries 0-RTT again: the first attempt spent the ticket.
        let dial = |early: bool| {
            self.endpoint
                .connect_with(config.clone(), addr, &name)
                .map(|c| attempt(c, early))
                .map_err(|source| StartError::Dial {
                    to: addr.to_string(),
                    source,
                })
        };
        let mut connecting = dial(d.early_tunnel)?;
        let mut attempt_started = Instant::now();
        let mut restarts = 0;
        let mut punch = PunchDriver::start(
            &self.socket,
            addr,
            self.opts.punch_interval,
            d.budget,
            u32::MAX,
        );
        let done = loop {
            tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), &mut connecting) => match r {
                    Err(_) => return Err(d.timed_out()),
                    // The handshake's own idle timeout (connKeepAliveTimeoutTime) ran out before
                    // our budget did: the peer may still start punching, so dial again.
                    Ok(Err(quinn::ConnectionError::TimedOut)) if Instant::now() < deadline => {
                        connecting = dial(false)?;
                        attempt_started = Instant::now();
                    }
                    Ok(Err(source)) => {
                        let to = addr.to_string();
                        return Err(handshake_error(&outcome, StartError::Handshake { to, source }));
                    }
                    Ok(Ok(done)) => break done,
                },
                event = punch.next_event() => {
                    if event != PunchEvent::PathOpened {
                        continue;
                    }
                    // The path just opened. An attempt still pending after a while had its
                    // Initial packets dropped by a NAT and waits for a backed-off retransmit:
                    // start a fresh handshake now instead.
                    if attempt_started.elapsed() > RESTART_AFTER && restarts < MAX_RESTARTS {
                        tracing::debug!(%addr, "path opened: restarting the handshake");
                        connecting = dial(false)?;
                        attempt_started = Instant::now();
                        restarts += 1;
                    }
                }
            }
        };
        punch.connected();
        let (conn, resumed) = (done.conn, done.resumed);
        let early = early_tunnel(d.early_tunnel, &conn, done.tunnel).await;
        // The reverse proxy says hello only after it accepted our certificate (a resumed
        // session's client it accepted before: then in its first flight).
        let own = self.socket.local_toward(addr);
        let ours = Hello {
            punching: true,
            observed: addr,
            own,
        };
        let theirs = exchange_hello(&conn, ours, deadline).await.map_err(|e| {
            Error::from(StartError::NotAccepted {
                to: addr.to_string(),
                why: e,
            })
        })?;
        let path = judge_path(
            theirs.punching || punch.peer_took_part(),
            theirs.nat_between(addr, own),
        );
        Ok((
            self.adopt((conn, gate), resumed, &accept, addr, lock, path)?,
            early,
        ))
    }
}
