//! One proxy's DHT node: announces the proxy's node id and looks other node ids up.

use std::collections::HashMap;
#[cfg(test)]
use std::net::Ipv6Addr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Id, MutableItem, SigningKey};
use rustls::pki_types::CertificateDer;

use super::record::{self, Record, RelayHint, SALT};
use super::services::{Offers, ServiceOffer, ServiceTrust};
use crate::error::{Error, Result};
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::task::{join_all, Tasks};

/// How a proxy takes part in the DHT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// `host:port` of the nodes to join through. `None`: the public mainline bootstrap nodes.
    /// Empty: join nobody (the first node of a private network).
    pub bootstrap: Option<Vec<String>>,
    /// Announce this proxy's node id and addresses (default true).
    pub announce: bool,
    /// Re-announce cadence, well below the DHT's record lifetime (default 10 min).
    pub reannounce_interval: Duration,
    /// Address of the DHT's UDP socket; `None`: the proxy's own IPv4 host, port 0.
    pub bind: Option<SocketAddrV4>,
    /// Answer other nodes' queries from the start (bootstrap and always-on nodes).
    pub server_mode: bool,
    /// Publish direct addresses in the record (default true). `false` publishes only the relays
    /// (and their observed address is left out too): callers reach the node through its home
    /// relay first, and its IPs stay private until a rendezvous.
    pub announce_direct: bool,
    /// How long a relay link opened on demand (to reach a node through its home relay) stays
    /// after its last relayed connection closed (default 60 s).
    pub relay_idle: Duration,
    /// Find relays published on the DHT under this network name when the proxy was given none
    /// (`keynet-relay --publish NETWORK`); register with the nearest [`record::MAX_RELAYS`].
    pub relay_network: Option<String>,
    /// The namespace of service names (empty: the default one), so unrelated users of the
    /// public DHT do not share names.
    pub network: String,
    /// Names this node offers (a reverse proxy's replicas are found by them).
    pub services: Vec<ServiceOffer>,
    /// Restricted names a caller accepts only some nodes for.
    pub service_trust: HashMap<String, ServiceTrust>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            bootstrap: None,
            announce: true,
            reannounce_interval: Duration::from_secs(600),
            bind: None,
            server_mode: false,
            announce_direct: true,
            relay_idle: Duration::from_secs(60),
            relay_network: None,
            network: String::new(),
            services: Vec::new(),
            service_trust: HashMap::new(),
        }
    }
}

/// An address found for a node id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where the node's QUIC socket may be.
    pub addr: SocketAddr,
    /// How long ago the node signed it (`None` for unsigned BEP 5 hints).
    pub age: Option<Duration>,
    /// From a record signed by the node's own key.
    pub signed: bool,
}

/// What a lookup found: direct candidates, and the relays the node is registered with (its
/// home relay first), from its newest signed record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Located {
    /// Direct candidates, best first.
    pub addrs: Vec<Found>,
    /// Relays that carry packets to the node.
    pub relays: Vec<RelayHint>,
}

impl Located {
    /// The ways a node's record names (its observed address first, each address once), aged as
    /// of `now_ms`.
    pub(crate) fn from_record(r: &Record, now_ms: u64) -> Self {
        let age = Some(Duration::from_millis(now_ms.saturating_sub(r.signed_at_ms)));
        let mut addrs: Vec<Found> = Vec::new();
        for addr in r.observed.iter().chain(&r.addrs) {
            if !addrs.iter().any(|f| f.addr == *addr) {
                addrs.push(Found {
                    addr: *addr,
                    age,
                    signed: true,
                });
            }
        }
        Self {
            addrs,
            relays: r.relays.clone(),
        }
    }

    /// Whether `other` names the same addresses and relays (ages aside: two lookups of one
    /// record differ only in them).
    pub fn same_ways(&self, other: &Self) -> bool {
        self.relays == other.relays
            && self.addrs.len() == other.addrs.len()
            && self
                .addrs
                .iter()
                .zip(&other.addrs)
                .all(|(a, b)| a.addr == b.addr && a.signed == b.signed)
    }
}

/// How a node is reached besides its direct addresses: its relays (home first) and the public
/// address the home relay observed. The node updates it as its relay links change; a change is
/// announced at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// The node's public UDP address as its home relay saw it (QUIC links only).
    pub observed: Option<SocketAddr>,
    /// Relays it is registered with, home first.
    pub relays: Vec<RelayHint>,
}

/// A relay's publication on the DHT: stops when dropped.
pub struct Publishing(tokio::task::JoinHandle<()>);

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A relay's record store ([`Discovery::store_records`]): stops when dropped.
pub struct Storing(tokio::task::JoinHandle<()>);

impl Drop for Storing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records a relay's store holds waiting (beyond, the relay answers 503 and the node's next
/// announce tries again).
pub const STORE_QUEUE: usize = 256;
/// Records a relay's store writes to the DHT at once.
pub const STORE_AT_ONCE: usize = 16;

/// Receives the proxy's own announced addresses when they change.
pub type AddressSink = Arc<dyn Fn(Vec<SocketAddr>) + Send + Sync>;

/// Receives the node's signed record when its contents change, and at least every announce
/// interval: the node hands it to its relays, which store it on the DHT for it (a node whose
/// own DHT traffic is blocked is still found).
pub type RecordSink = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// Decides when a signed record goes to the record sink: when what it says changes (its
/// signing time aside), and at least every `every`.
struct RecordPacer {
    every: Duration,
    last: Option<(Record, Instant)>,
}

impl RecordPacer {
    fn due(&mut self, record: &Record, now: Instant) -> bool {
        let mut timeless = record.clone();
        timeless.signed_at_ms = 0;
        let due = match &self.last {
            Some((said, at)) => *said != timeless || now.duration_since(*at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((timeless, now));
        }
        due
    }
}

/// A running DHT node. Dropping the last handle ends its thread and frees its port.
pub struct Discovery {
    pub(super) dht: AsyncDht,
    local: SocketAddr,
    /// Ed25519 keys of node ids this proxy verified in a TLS handshake (to fetch their signed
    /// records).
    keys: Mutex<HashMap<NodeId, [u8; 32]>>,
    announced: Mutex<Vec<SocketAddr>>,
    /// The node's relays and observed address, for the next record.
    reach: tokio::sync::watch::Sender<Reach>,
    announce_direct: bool,
    /// The namespace of service names.
    pub(super) network: String,
    /// Names offered (announced with the node's record).
    pub(super) offers: Offers,
    /// Restricted names and whom they admit.
    pub(super) trust: HashMap<String, ServiceTrust>,
    /// The node's record as last signed (services are withdrawn with it on stop).
    pub(super) last_record: Mutex<Option<Vec<u8>>>,
}

/// Resolves `host:port` bootstrap entries to IPv4 addresses; names the bad entry.
pub fn resolve_bootstrap(entries: &[String]) -> Result<Vec<SocketAddrV4>> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let bad = |why: String| {
            Error::InvalidArgument(format!("discovery.bootstrap[{i}] ({e:?}): {why}"))
        };
        let addrs = e.to_socket_addrs().map_err(|err| bad(err.to_string()))?;
        let v4: Vec<SocketAddrV4> = addrs
            .filter_map(|a| match a {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() {
            return Err(bad("no IPv4 address (the mainline DHT is IPv4)".into()));
        }
        out.extend(v4);
    }
    Ok(out)
}

/// Where a proxy's DHT socket binds: `explicit` if given; else the proxy's own IPv4 host
/// (`0.0.0.0` for an unspecified IPv6 host), except that a loopback host cannot reach
/// bootstrap nodes elsewhere: then the local address `route` finds toward the first such node
/// (the public mainline nodes when `bootstrap` is `None`), so the DHT talks to the network
/// through one interface and never listens on all of them unasked. No route is a clear error.
pub(crate) fn choose_bind(
    explicit: Option<SocketAddrV4>,
    proxy_ip: IpAddr,
    bootstrap: Option<&[SocketAddrV4]>,
    route: impl Fn(SocketAddrV4) -> std::io::Result<Ipv4Addr>,
) -> Result<SocketAddrV4> {
    if let Some(bind) = explicit {
        return Ok(bind);
    }
    let ip = match proxy_ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(ip) if ip.is_loopback() => Ipv4Addr::LOCALHOST,
        // An IPv6-only host: the DHT is IPv4, so let the routing table pick.
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    if !ip.is_loopback() {
        return Ok(SocketAddrV4::new(ip, 0));
    }
    let away = match bootstrap {
        None => Some(PUBLIC_PROBE),
        Some(list) => list.iter().copied().find(|a| !a.ip().is_loopback()),
    };
    let Some(away) = away else {
        return Ok(SocketAddrV4::new(ip, 0));
    };
    match route(away) {
        Ok(local) if !local.is_unspecified() => Ok(SocketAddrV4::new(local, 0)),
        Ok(_) | Err(_) => Err(Error::InvalidArgument(format!(
            "discovery: the proxy is on loopback and no interface routes to the DHT bootstrap \
             node {away}: give discovery.host (an IPv4 address of this machine)"
        ))),
    }
}

/// Where the public mainline DHT is, for the route lookup of [`choose_bind`] (no datagram is
/// sent: connecting a UDP socket only asks the routing table).
const PUBLIC_PROBE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(1, 1, 1, 1), 6881);
/// A global IPv6 address whose route names the interface and source address a dual-stack node
/// announces (only a route lookup: nothing is sent).
const V6_PROBE: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0x4860, 0, 0, 0, 0, 0, 0x8888);

/// The local IPv4 address the routing table uses toward `to`.
fn route_toward(to: SocketAddrV4) -> std::io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect(to)?;
    match s.local_addr()?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(std::io::Error::other("an IPv6 route")),
    }
}

impl Discovery {
    /// Binds and starts a DHT node. `proxy_ip` is the host the proxy's QUIC socket is bound to:
    /// the DHT binds the same IPv4 host unless `opts.bind` says otherwise, or that host is
    /// loopback while the bootstrap nodes are not (see [`choose_bind`]).
    pub async fn start(opts: &DiscoveryOptions, proxy_ip: IpAddr) -> Result<Arc<Self>> {
        let bootstrap = opts.bootstrap.clone();
        let server_mode = opts.server_mode;
        let explicit = opts.bind;
        let dht = tokio::task::spawn_blocking(move || -> Result<mainline::Dht> {
            let bootstrap = bootstrap.map(|b| resolve_bootstrap(&b)).transpose()?;
            let bind = choose_bind(explicit, proxy_ip, bootstrap.as_deref(), route_toward)?;
            let config = mainline::Config {
                bootstrap,
                // Port 0 must stay 0: mainline reads `None` as "try 6881 first".
                port: Some(bind.port()),
                server_mode,
                bind_address: Some(*bind.ip()),
                ..Default::default()
            };
            Ok(mainline::Dht::new(config)?)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))??
        .as_async();
        let local = SocketAddr::V4(dht.info().await.local_addr());
        tracing::info!(%local, "DHT node started");
        let d = Arc::new(Self {
            dht,
            local,
            keys: Mutex::new(HashMap::new()),
            announced: Mutex::new(Vec::new()),
            reach: tokio::sync::watch::channel(Reach::default()).0,
            announce_direct: opts.announce_direct,
            network: super::service_entry::check_network(&opts.network).unwrap_or_default(),
            offers: Offers::default(),
            trust: opts
                .service_trust
                .iter()
                .filter_map(|(n, t)| Some((super::service_entry::check_name(n).ok()?, t.clone())))
                .collect(),
            last_record: Mutex::new(None),
        });
        d.offers.set(&opts.services);
        Ok(d)
    }

    /// The DHT node's own UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The addresses last announced.
    pub fn announced(&self) -> Vec<SocketAddr> {
        self.announced.lock().expect("announced lock").clone()
    }

    /// Sets how the node is reached through relays; a change is announced at once.
    pub fn set_reach(&self, reach: Reach) {
        self.reach.send_if_modified(|r| {
            let changed = *r != reach;
            *r = reach;
            changed
        });
    }

    /// Announces `identity`'s node id at `quic` now, every `interval`, and at once when the
    /// node's [`Reach`] changes, until `tasks` stop; `on_change` hears of every change of the
    /// announced addresses.
    pub fn spawn_announcer(
        self: &Arc<Self>,
        tasks: &Tasks,
        identity: &LoadedIdentity,
        quic: SocketAddr,
        interval: Duration,
        on_change: Option<AddressSink>,
        on_record: Option<RecordSink>,
    ) {
        let me = self.clone();
        let node_id = identity.node_id;
        let seed = record::ed25519_seed_of_pkcs8(identity.key.secret_der()).filter(|seed| {
            record::node_id_of_ed25519(&record::ed25519_public_of_seed(seed)) == node_id
        });
        if seed.is_none() {
            tracing::warn!(%node_id, "identity key is not Ed25519: announcing unsigned hints only (no relays)");
        }
        let mut reach = self.reach.subscribe();
        let stop = tasks.token().clone();
        let mut pacer = RecordPacer {
            every: interval,
            last: None,
        };
        tasks.spawn(async move {
            loop {
                reach.mark_unchanged();
                let record = |r: &Record, bytes: &[u8]| {
                    if let Some(sink) = &on_record {
                        if pacer.due(r, Instant::now()) {
                            sink(bytes.to_vec());
                        }
                    }
                };
                let ok = me
                    .announce_once(node_id, seed.as_ref(), quic, &on_change, record)
                    .await;
                // A failed announce (no DHT node answered yet) is retried soon.
                let wait = if ok { interval } else { interval.min(RETRY) };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.offers.changed.notified() => {}
                    changed = reach.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Several links settle at once on start and after a network change.
                        tokio::time::sleep(SETTLE).await;
                    }
                }
            }
        });
    }

    async fn announce_once(
        &self,
        node_id: NodeId,
        seed: Option<&[u8; 32]>,
        quic: SocketAddr,
        on_change: &Option<AddressSink>,
        on_record: impl FnOnce(&Record, &[u8]),
    ) -> bool {
        let reach = self.reach.borrow().clone();
        let addrs = self.own_addresses(quic, &reach).await;
        let now = unix_ms();
        let signed = seed.map(|seed| {
            let record = Record {
                node_id,
                signed_at_ms: now,
                observed: reach.observed.filter(|_| self.announce_direct),
                addrs: addrs.iter().take(record::MAX_ADDRS).copied().collect(),
                relays: reach
                    .relays
                    .iter()
                    .take(record::MAX_RELAYS)
                    .cloned()
                    .collect(),
            };
            let bytes = record.sign(seed);
            if let Ok(b) = &bytes {
                on_record(&record, b);
            }
            bytes
        });
        // The unsigned hint carries the node's IP and port: not published when it announces its
        // relays only.
        let hint = async {
            // A socket bound to one IPv6 address takes no IPv4: the hint (IPv4, the DHT's view)
            // would name a port nothing listens on.
            let v6_only = quic.is_ipv6() && !quic.ip().is_unspecified();
            if !self.announce_direct || v6_only {
                return Ok(());
            }
            self.dht
                .announce_peer(Id::from(record::info_hash(&node_id)), Some(quic.port()))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let record_bytes = signed.as_ref().and_then(|r| r.as_ref().ok().cloned());
        if record_bytes.is_some() {
            *self.last_record.lock().expect("record lock") = record_bytes.clone();
        }
        let services = async {
            match (seed, &record_bytes) {
                (Some(seed), Some(record)) => {
                    self.announce_services(node_id, seed, record, now).await
                }
                _ => Ok(()),
            }
        };
        let signed = async {
            let (Some(seed), Some(value)) = (seed, signed) else {
                return Ok(());
            };
            let value = value.map_err(|e| e.to_string())?;
            // Under the node's own key, and under its locator (so a caller that knows only the
            // node id finds it).
            let own =
                MutableItem::new(SigningKey::from_bytes(seed), &value, now as i64, Some(SALT));
            let (mine, located) = tokio::join!(
                self.dht.put_mutable(own, None),
                self.put_located(node_id, &value, now)
            );
            mine.map_err(|e| e.to_string())?;
            located
        };
        let all = async { tokio::join!(hint, signed, services) };
        let Ok((hint, signed, services)) = tokio::time::timeout(ANNOUNCE_TIME, all).await else {
            tracing::warn!(%node_id, "DHT announce did not complete in time");
            return false;
        };
        if let Err(e) = &services {
            tracing::warn!(%node_id, error = %e, "service entries not stored");
        }
        if let Err(e) = &hint {
            tracing::warn!(%node_id, error = %e, "DHT announce failed");
        }
        if let Err(e) = &signed {
            tracing::warn!(%node_id, error = %e, "DHT signed record not stored");
        }
        // Service entries are retried on the announce cadence, not every RETRY: a permanent
        // failure (an entry over the DHT's size) must not make the node re-put its record.
        let ok = hint.is_ok() && signed.is_ok();
        if ok {
            tracing::debug!(%node_id, ?addrs, ?reach, "announced on the DHT");
            let changed = {
                let mut last = self.announced.lock().expect("announced lock");
                let changed = *last != addrs;
                *last = addrs.clone();
                changed
            };
            if changed {
                if let Some(sink) = on_change {
                    sink(addrs);
                }
            }
        }
        ok
    }

    /// Stores a node's signed record under its locator, for this hour and the next (so a
    /// caller finds it across the hour's turn before the next announce); `seq` orders versions.
    async fn put_located(
        &self,
        node: NodeId,
        value: &[u8],
        signed_at_ms: u64,
    ) -> std::result::Result<(), String> {
        let locator = SigningKey::from_bytes(&record::locator_seed(&node));
        let epoch = record::locator_epoch(signed_at_ms / 1000);
        let seq = signed_at_ms as i64;
        let items = [epoch, epoch + 1]
            .map(|e| MutableItem::new(locator.clone(), value, seq, Some(&record::locator_salt(e))));
        for r in join_all(items.map(|item| self.dht.put_mutable(item, None))).await {
            r.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A relay's DHT node stores the record a registered node sent it (over its relay link)
    /// under that node's locator: the node is found even when its own DHT traffic is blocked.
    /// Anyone may write there; the record is checked here and again by every reader. Records
    /// signed more than [`RECORD_SKEW`] ahead or [`RECORD_MAX_AGE`] ago are refused (the DHT's
    /// sequence numbers keep an older record from replacing a newer one).
    pub async fn store_for(&self, node: NodeId, value: &[u8]) -> Result<()> {
        let r = Record::open(value)
            .map_err(|e| Error::InvalidArgument(format!("record refused: {e}")))?;
        if r.node_id != node {
            return Err(Error::InvalidArgument(format!(
                "record refused: it is {}'s, not {node}'s",
                r.node_id
            )));
        }
        let now = unix_ms();
        let ahead = r.signed_at_ms.saturating_sub(now);
        let behind = now.saturating_sub(r.signed_at_ms);
        if ahead > RECORD_SKEW.as_millis() as u64 || behind > RECORD_MAX_AGE.as_millis() as u64 {
            return Err(Error::InvalidArgument(format!(
                "record refused: signed {} s ago (or {} s ahead)",
                behind / 1000,
                ahead / 1000
            )));
        }
        let stored =
            tokio::time::timeout(ANNOUNCE_TIME, self.put_located(node, value, r.signed_at_ms))
                .await
                .map_err(|_| Error::Io(std::io::Error::other("DHT store timed out")))?;
        stored.map_err(|e| Error::Io(std::io::Error::other(format!("DHT store failed: {e}"))))
    }

    /// Runs a relay's record store: the records its registered nodes announce over their relay
    /// links ([`crate::relay::server::RelayStart::records`]) are stored with
    /// [`Discovery::store_for`], at most [`STORE_AT_ONCE`] at a time, [`STORE_QUEUE`] waiting.
    pub fn store_records(
        self: &Arc<Self>,
    ) -> (tokio::sync::mpsc::Sender<(NodeId, Vec<u8>)>, Storing) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(NodeId, Vec<u8>)>(STORE_QUEUE);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            while let Some((node, record)) = rx.recv().await {
                while running.len() >= STORE_AT_ONCE {
                    running.join_next().await;
                }
                let me = me.clone();
                running.spawn(async move {
                    match me.store_for(node, &record).await {
                        Ok(()) => tracing::debug!(%node, "stored a node's record for it"),
                        Err(e) => tracing::info!(%node, error = %e, "a node's record not stored"),
                    }
                });
                while running.try_join_next().is_some() {}
            }
        });
        (tx, Storing(task))
    }

    /// Where others can reach `quic` directly: the public address the home relay observed, the
    /// public IP the DHT observed (with the QUIC port, right for port-preserving NATs), then the
    /// bound IP when it is a specific one. None when the node announces relays only.
    async fn own_addresses(&self, quic: SocketAddr, reach: &Reach) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if !self.announce_direct {
            return out;
        }
        let mut add = |a: SocketAddr| {
            if !out.contains(&a) {
                out.push(a);
            }
        };
        if let Some(observed) = reach.observed {
            add(observed);
        }
        if let Some(public) = self.dht.info().await.public_address() {
            add(SocketAddr::new(IpAddr::V4(*public.ip()), quic.port()));
        }
        if !quic.ip().is_unspecified() {
            add(quic);
        } else if quic.is_ipv6() {
            // A dual-stack socket: the global IPv6 address the kernel sends from (no NAT in
            // front of it, only a firewall a rendezvous punches).
            let toward = SocketAddr::new(IpAddr::V6(V6_PROBE), 443);
            if let Some(ip) =
                crate::socket::route_source(toward).filter(|ip| crate::addr::is_global_v6(*ip))
            {
                add(SocketAddr::new(ip, quic.port()));
            }
        }
        out
    }

    /// Remembers the Ed25519 key of a node id proven by `chain` (a verified peer chain), so
    /// later lookups of that id can use its signed record.
    pub fn learn_key(&self, node: NodeId, chain: &[CertificateDer<'_>]) {
        let Some(leaf) = chain.first() else { return };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            return;
        };
        if let Some(key) = record::ed25519_of_spki(cert.tbs_certificate.subject_pki.raw) {
            if record::node_id_of_ed25519(&key) == node {
                self.keys.lock().expect("keys lock").insert(node, key);
            }
        }
    }

    /// Looks `node` up until `deadline`: the newest of its records (under its own key when
    /// known, and under its locator for this hour and the last), then the unsigned hints not
    /// already in it; [`GRACE`] after the first record (a newer one may come from another
    /// node). Duplicates are removed; the lists may be empty.
    pub async fn locate(&self, node: NodeId, deadline: Instant) -> Located {
        self.locate_within(node, deadline, GRACE).await
    }

    /// [`Discovery::locate`], ending `grace` after the first record: zero when a dial starts at
    /// once (and looks again with [`Discovery::locate`] if that record led nowhere).
    pub async fn locate_within(&self, node: NodeId, deadline: Instant, grace: Duration) -> Located {
        let key = self.keys.lock().expect("keys lock").get(&node).copied();
        let locator = SigningKey::from_bytes(&record::locator_seed(&node))
            .verifying_key()
            .to_bytes();
        let epoch = record::locator_epoch(unix_ms() / 1000);
        let mut queries = vec![
            (locator, record::locator_salt(epoch)),
            (locator, record::locator_salt(epoch.saturating_sub(1))),
        ];
        if let Some(key) = key {
            queries.push((key, SALT.to_vec()));
        }
        let newest: Mutex<Option<Record>> = Mutex::new(None);
        // The first record found starts a grace period for the other queries: the query of an
        // hour with no record runs until its slowest node answered or timed out.
        let found_one = tokio::sync::Notify::new();
        let records = join_all(queries.iter().map(|(key, salt)| {
            let newest = &newest;
            let found_one = &found_one;
            let items = self.dht.get_mutable(key, Some(salt), None);
            gather(items, move |item: MutableItem| {
                match Record::open(item.value()) {
                    Ok(r) if r.node_id == node => {
                        let mut n = newest.lock().expect("newest lock");
                        if n.as_ref().is_none_or(|n| r.signed_at_ms > n.signed_at_ms) {
                            *n = Some(r);
                        }
                        found_one.notify_one();
                    }
                    Ok(_) => tracing::debug!(%node, "DHT record of another node id: ignored"),
                    Err(e) => tracing::debug!(%node, error = %e, "unusable DHT record: ignored"),
                }
            })
        }));
        let hints = Mutex::new(Vec::new());
        let hinted = async {
            let peers = self.dht.get_peers(Id::from(record::info_hash(&node)));
            gather(peers, |batch: Vec<SocketAddrV4>| {
                let mut found = hints.lock().expect("hints lock");
                for a in batch {
                    let a = SocketAddr::V4(a);
                    if !found.contains(&a) {
                        found.push(a);
                    }
                }
            })
            .await;
        };
        let all = async { tokio::join!(records, hinted) };
        let graced = async {
            found_one.notified().await;
            tokio::time::sleep(grace).await;
        };
        let _ = tokio::time::timeout_at(deadline.into(), async {
            tokio::select! {
                _ = all => {}
                _ = graced => {}
            }
        })
        .await;
        let hints = hints.into_inner().expect("hints lock");
        let mut out = Located::default();
        if let Some(r) = newest.into_inner().expect("newest lock") {
            out = Located::from_record(&r, unix_ms());
        }
        for addr in hints {
            if !out.addrs.iter().any(|f| f.addr == addr) {
                out.addrs.push(Found {
                    addr,
                    age: None,
                    signed: false,
                });
            }
        }
        out
    }

    /// Publishes a relay of the network `network` whose QUIC socket is on this DHT node's host
    /// at `quic_port`: now, every `interval`, and 2 s after a failure, until the returned
    /// handle is dropped. The storing DHT nodes record the source IP, so the relay's DHT node
    /// must share its IP.
    pub fn publish_relay(
        self: &Arc<Self>,
        network: String,
        quic_port: u16,
        interval: Duration,
    ) -> Publishing {
        let me = self.clone();
        let topic = Id::from(record::relay_topic(&network));
        Publishing(tokio::spawn(async move {
            loop {
                let put = me.dht.announce_peer(topic, Some(quic_port));
                let ok = matches!(tokio::time::timeout(ANNOUNCE_TIME, put).await, Ok(Ok(_)));
                if ok {
                    tracing::debug!(%network, quic_port, "relay published on the DHT");
                } else {
                    tracing::warn!(%network, "relay not published on the DHT yet: retrying");
                }
                tokio::time::sleep(if ok { interval } else { interval.min(RETRY) }).await;
            }
        }))
    }

    /// The QUIC addresses of the relays published under `network`, until `deadline`.
    pub async fn find_relays(&self, network: &str, deadline: Instant) -> Vec<SocketAddr> {
        let mut found = Vec::new();
        let peers = self.dht.get_peers(Id::from(record::relay_topic(network)));
        let _ = tokio::time::timeout_at(
            deadline.into(),
            gather(peers, |batch: Vec<SocketAddrV4>| {
                for a in batch {
                    let a = SocketAddr::V4(a);
                    if !found.contains(&a) {
                        found.push(a);
                    }
                }
            }),
        )
        .await;
        found
    }

    /// The direct candidates of [`Discovery::locate`].
    pub async fn lookup(&self, node: NodeId, deadline: Instant) -> Vec<Found> {
        self.locate(node, deadline).await.addrs
    }
}

/// Feeds a DHT query's results to `take` until the query ends or [`GRACE`] after the first
/// result: a query only ends when its slowest node answered or timed out (seconds on the public
/// DHT), while the nodes closest to the target, which hold the records, answer first.
async fn gather<S, T>(mut results: S, mut take: impl FnMut(T))
where
    S: futures_lite::Stream<Item = T> + Unpin,
{
    let Some(first) = results.next().await else {
        return;
    };
    take(first);
    let until = tokio::time::Instant::now() + GRACE;
    while let Ok(Some(more)) = tokio::time::timeout_at(until, results.next()).await {
        take(more);
    }
}

/// How long a lookup keeps collecting after its first result.
const GRACE: Duration = Duration::from_millis(300);

/// Budget of one announce (both puts).
const ANNOUNCE_TIME: Duration = Duration::from_secs(30);

/// How far ahead of a relay's clock a record it stores for a node may be signed.
pub const RECORD_SKEW: Duration = Duration::from_secs(600);
/// How old a record a relay stores for a node may be: a link hands its relay the node's latest
/// record again on every registration, which may be one announce interval old; older than the
/// two hours a locator is read for, it would hide nothing (the DHT keeps the newest sequence).
pub const RECORD_MAX_AGE: Duration = Duration::from_secs(2 * 3600);

/// How long a changed [`Reach`] waits before it is announced (the links of a node settle
/// together).
const SETTLE: Duration = Duration::from_millis(200);

/// Retry cadence of a failed announce.
const RETRY: Duration = Duration::from_secs(2);

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a proxy's announcer when `opts.announce`: address changes reach the proxy's event
/// sink as `address` events. The node calls it once its start relay is up (or absent), so its
/// first record already names that relay.
pub fn announce_for_proxy(
    discovery: &Arc<Discovery>,
    opts: &DiscoveryOptions,
    identity: &LoadedIdentity,
    quic: SocketAddr,
    tasks: &Tasks,
    sink: Arc<std::sync::RwLock<Option<crate::events::EventSink>>>,
    on_record: Option<RecordSink>,
) {
    if !opts.announce {
        return;
    }
    let on_change: AddressSink = Arc::new(move |addrs| {
        let sink = sink.read().expect("sink lock").clone();
        if let Some(sink) = sink {
            sink(crate::events::Event::address(addrs));
        }
    });
    discovery.spawn_announcer(
        tasks,
        identity,
        quic,
        opts.reannounce_interval,
        Some(on_change),
        on_record,
    );
}

/// The error of a node-id operation on a proxy without discovery.
pub fn discovery_off() -> Error {
    Error::InvalidArgument(
        "discovery is off: start the proxy with discovery options, or give host and port".into(),
    )
}

/// The lookup budget when the caller gives none.
pub const LOOKUP_TIME: Duration = Duration::from_secs(10);

/// Checks discovery options.
pub fn validate(opts: &DiscoveryOptions) -> Result<()> {
    if let Some(net) = &opts.relay_network {
        if net.is_empty() || net.len() > 64 {
            return Err(Error::InvalidArgument(
                "discovery.relayNetwork must be 1 to 64 bytes".into(),
            ));
        }
    }
    if opts.relay_idle.is_zero() {
        return Err(Error::InvalidArgument(
            "discovery.relayIdleTime must be greater than 0".into(),
        ));
    }
    if opts.reannounce_interval.is_zero() {
        return Err(Error::InvalidArgument(
            "discovery.reannounceInterval must be greater than 0".into(),
        ));
    }
    super::services::validate_services(&opts.network, &opts.services, &opts.service_trust)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_loopback_proxy_binds_its_dht_where_the_bootstrap_nodes_are_reached() {
        let lan = Ipv4Addr::new(192, 0, 2, 7);
        let route = |_| Ok(lan);
        let loopback: IpAddr = Ipv4Addr::LOCALHOST.into();
        // Public bootstrap (the default, or a listed one): the routed interface, never loopback.
        assert_eq!(
            choose_bind(None, loopback, None, route).unwrap(),
            SocketAddrV4::new(lan, 0)
        );
        let list = [v4("127.0.0.1:1"), v4("203.0.113.5:6881")];
        assert_eq!(
            choose_bind(None, loopback, Some(&list), route).unwrap(),
            SocketAddrV4::new(lan, 0)
        );
        // A private DHT on loopback stays on loopback.
        assert_eq!(
            choose_bind(None, loopback, Some(&list[..1]), route).unwrap(),
            v4("127.0.0.1:0")
        );
        // A specific or unspecified proxy host is kept; an explicit bind wins.
        let host: IpAddr = lan.into();
        assert_eq!(
            choose_bind(None, host, None, route).unwrap(),
            SocketAddrV4::new(lan, 0)
        );
        assert_eq!(
            choose_bind(None, Ipv6Addr::UNSPECIFIED.into(), None, route).unwrap(),
            v4("0.0.0.0:0")
        );
        let explicit = v4("127.0.0.1:6881");
        assert_eq!(
            choose_bind(Some(explicit), loopback, None, route).unwrap(),
            explicit
        );
    }

    #[test]
    fn no_route_to_the_bootstrap_nodes_is_a_clear_error() {
        let none = |_| Err(std::io::Error::other("unreachable"));
        let e = choose_bind(None, Ipv4Addr::LOCALHOST.into(), None, none).unwrap_err();
        assert_eq!(e.code(), "ERR_INVALID_ARG_VALUE");
        assert!(e.to_string().contains("discovery.host"), "{e}");
    }

    #[test]
    fn a_record_goes_to_the_relays_when_it_says_something_new_or_is_due_again() {
        let mut pacer = RecordPacer {
            every: Duration::from_secs(600),
            last: None,
        };
        let t0 = Instant::now();
        let mut r = Record {
            node_id: NodeId::from_bytes([1; 32]),
            signed_at_ms: 1,
            observed: None,
            addrs: vec!["192.0.2.1:1".parse().unwrap()],
            relays: vec![],
        };
        assert!(pacer.due(&r, t0), "the first record goes");
        // Signed again a moment later (a failed DHT announce retries every 2 s): not sent.
        r.signed_at_ms = 2;
        assert!(!pacer.due(&r, t0 + Duration::from_secs(2)));
        // Something changed: sent at once.
        r.addrs.push("192.0.2.2:1".parse().unwrap());
        assert!(pacer.due(&r, t0 + Duration::from_secs(3)));
        assert!(!pacer.due(&r, t0 + Duration::from_secs(500)));
        // Unchanged, but due again (the relay's copy must not age out).
        assert!(pacer.due(&r, t0 + Duration::from_secs(603)));
    }

    #[test]
    fn two_lookups_of_one_record_name_the_same_ways() {
        let found = |addr: &str, age| Found {
            addr: addr.parse().unwrap(),
            age: Some(Duration::from_millis(age)),
            signed: true,
        };
        let first = Located {
            addrs: vec![found("192.0.2.1:1", 10)],
            relays: Vec::new(),
        };
        let later = Located {
            addrs: vec![found("192.0.2.1:1", 900)],
            relays: Vec::new(),
        };
        assert_ne!(first, later, "ages differ");
        assert!(first.same_ways(&later));
        let moved = Located {
            addrs: vec![found("192.0.2.1:2", 10)],
            relays: Vec::new(),
        };
        assert!(!first.same_ways(&moved));
    }

    #[test]
    fn the_route_lookup_reads_the_routing_table() {
        assert_eq!(
            route_toward(v4("127.0.0.1:9")).unwrap(),
            Ipv4Addr::LOCALHOST
        );
    }
}
