//! One proxy's DHT node: announces the proxy's node id and looks other node ids up.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Id, MutableItem, SigningKey};
use rustls::pki_types::CertificateDer;

use super::record::{self, Record, SALT};
use crate::error::{Error, Result};
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::task::Tasks;

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
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            bootstrap: None,
            announce: true,
            reannounce_interval: Duration::from_secs(600),
            bind: None,
            server_mode: false,
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

/// Receives the proxy's own announced addresses when they change.
pub type AddressSink = Arc<dyn Fn(Vec<SocketAddr>) + Send + Sync>;

/// A running DHT node. Dropping the last handle ends its thread and frees its port.
pub struct Discovery {
    dht: AsyncDht,
    local: SocketAddr,
    /// Ed25519 keys of node ids this proxy verified in a TLS handshake (to fetch their signed
    /// records).
    keys: Mutex<HashMap<NodeId, [u8; 32]>>,
    announced: Mutex<Vec<SocketAddr>>,
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

impl Discovery {
    /// Binds and starts a DHT node. `proxy_ip` is the host the proxy's QUIC socket is bound to:
    /// the DHT binds the same IPv4 host unless `opts.bind` says otherwise.
    pub async fn start(opts: &DiscoveryOptions, proxy_ip: IpAddr) -> Result<Arc<Self>> {
        let bind = opts.bind.unwrap_or_else(|| {
            let ip = match proxy_ip {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) if ip.is_unspecified() => Ipv4Addr::UNSPECIFIED,
                IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
            };
            SocketAddrV4::new(ip, 0)
        });
        let bootstrap = opts.bootstrap.clone();
        let server_mode = opts.server_mode;
        let dht = tokio::task::spawn_blocking(move || -> Result<mainline::Dht> {
            let bootstrap = bootstrap.map(|b| resolve_bootstrap(&b)).transpose()?;
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
        Ok(Arc::new(Self {
            dht,
            local,
            keys: Mutex::new(HashMap::new()),
            announced: Mutex::new(Vec::new()),
        }))
    }

    /// The DHT node's own UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The addresses last announced.
    pub fn announced(&self) -> Vec<SocketAddr> {
        self.announced.lock().expect("announced lock").clone()
    }

    /// Announces `identity`'s node id at `quic` now and every `interval` until `tasks` stop;
    /// `on_change` hears of every change of the announced addresses.
    pub fn spawn_announcer(
        self: &Arc<Self>,
        tasks: &Tasks,
        identity: &LoadedIdentity,
        quic: SocketAddr,
        interval: Duration,
        on_change: Option<AddressSink>,
    ) {
        let me = self.clone();
        let node_id = identity.node_id;
        let signer = record::ed25519_seed_of_pkcs8(identity.key.secret_der())
            .map(|seed| SigningKey::from_bytes(&seed))
            .filter(|k| record::node_id_of_ed25519(&k.verifying_key().to_bytes()) == node_id);
        if signer.is_none() {
            tracing::warn!(%node_id, "identity key is not Ed25519: announcing unsigned hints only");
        }
        let stop = tasks.token().clone();
        tasks.spawn(async move {
            loop {
                let ok = me
                    .announce_once(node_id, signer.as_ref(), quic, &on_change)
                    .await;
                // A failed announce (no DHT node answered yet) is retried soon.
                let wait = if ok { interval } else { interval.min(RETRY) };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    async fn announce_once(
        &self,
        node_id: NodeId,
        signer: Option<&SigningKey>,
        quic: SocketAddr,
        on_change: &Option<AddressSink>,
    ) -> bool {
        let addrs = self.own_addresses(quic).await;
        let hint = self
            .dht
            .announce_peer(Id::from(record::info_hash(&node_id)), Some(quic.port()));
        let signed = async {
            let Some(signer) = signer else {
                return Ok(());
            };
            let value = Record {
                node_id,
                addrs: addrs.clone(),
            }
            .encode();
            let seq = unix_ms() as i64;
            let item = MutableItem::new(signer.clone(), &value, seq, Some(SALT));
            self.dht
                .put_mutable(item, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let both = async { tokio::join!(hint, signed) };
        let Ok((hint, signed)) = tokio::time::timeout(ANNOUNCE_TIME, both).await else {
            tracing::warn!(%node_id, "DHT announce did not complete in time");
            return false;
        };
        if let Err(e) = &hint {
            tracing::warn!(%node_id, error = %e, "DHT announce failed");
        }
        if let Err(e) = &signed {
            tracing::warn!(%node_id, error = %e, "DHT signed record not stored");
        }
        let ok = hint.is_ok() && signed.is_ok();
        if ok {
            tracing::debug!(%node_id, ?addrs, "announced on the DHT");
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

    /// Where others can reach `quic`: the public IP the DHT observed (with the QUIC port,
    /// right for port-preserving NATs), then the bound IP when it is a specific one.
    async fn own_addresses(&self, quic: SocketAddr) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if let Some(public) = self.dht.info().await.public_address() {
            out.push(SocketAddr::new(IpAddr::V4(*public.ip()), quic.port()));
        }
        if !quic.ip().is_unspecified() && !out.contains(&quic) {
            out.push(quic);
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

    /// Looks `node` up until `deadline`: its signed record first (when its key is known), then
    /// the unsigned hints not already in it. Duplicates are removed; the list may be empty.
    pub async fn lookup(&self, node: NodeId, deadline: Instant) -> Vec<Found> {
        let key = self.keys.lock().expect("keys lock").get(&node).copied();
        let signed = async {
            let Some(key) = key else { return Vec::new() };
            let mut newest: Option<MutableItem> = None;
            let items = self.dht.get_mutable(&key, Some(SALT), None);
            gather(items, |item: MutableItem| {
                if newest.as_ref().is_none_or(|n| item.seq() > n.seq()) {
                    newest = Some(item);
                }
            })
            .await;
            let Some(item) = newest else {
                return Vec::new();
            };
            match Record::decode(item.value()) {
                Ok(r) if r.node_id == node => {
                    let signed_at = item.seq().max(0) as u64;
                    let age = Duration::from_millis(unix_ms().saturating_sub(signed_at));
                    r.addrs
                        .into_iter()
                        .map(|addr| Found {
                            addr,
                            age: Some(age),
                            signed: true,
                        })
                        .collect()
                }
                Ok(_) => {
                    tracing::warn!(%node, "signed DHT record names another node id: ignored");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "malformed signed DHT record: ignored");
                    Vec::new()
                }
            }
        };
        let hints = async {
            let mut found = Vec::new();
            let peers = self.dht.get_peers(Id::from(record::info_hash(&node)));
            gather(peers, |batch: Vec<SocketAddrV4>| {
                for a in batch {
                    let a = SocketAddr::V4(a);
                    if !found.contains(&a) {
                        found.push(a);
                    }
                }
            })
            .await;
            found
        };
        let both = async { tokio::join!(signed, hints) };
        let (signed, hints) = tokio::time::timeout_at(deadline.into(), both)
            .await
            .unwrap_or_default();
        let mut out = signed;
        for addr in hints {
            if !out.iter().any(|f| f.addr == addr) {
                out.push(Found {
                    addr,
                    age: None,
                    signed: false,
                });
            }
        }
        out
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

/// Retry cadence of a failed announce.
const RETRY: Duration = Duration::from_secs(2);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a proxy's DHT node and, when `opts.announce`, its announcer; address changes reach
/// the proxy's event sink as `address` events.
pub async fn start_for_proxy(
    opts: &DiscoveryOptions,
    identity: &LoadedIdentity,
    quic: SocketAddr,
    tasks: &Tasks,
    sink: Arc<std::sync::RwLock<Option<crate::events::EventSink>>>,
) -> Result<Arc<Discovery>> {
    let discovery = Discovery::start(opts, quic.ip()).await?;
    if opts.announce {
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
        );
    }
    Ok(discovery)
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
    if opts.reannounce_interval.is_zero() {
        return Err(Error::InvalidArgument(
            "discovery.reannounceInterval must be greater than 0".into(),
        ));
    }
    Ok(())
}
