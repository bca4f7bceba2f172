//! Service names on a proxy's DHT node: the offers a reverse proxy announces (with its node
//! record, on the announcer's cadence), their withdrawal, and the lookup of a name's replicas
//! (keys and entries: [`super::service_entry`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use mainline::{Id, MutableItem, SigningKey};

use super::record::locator_epoch;
use super::service::{unix_ms, Discovery, Located};
use super::service_entry::{self as entry, Entry, Membership};
use crate::error::{Error, Result};
use crate::nodeid::NodeId;

/// Most names one proxy offers.
pub const MAX_OFFERS: usize = 16;
/// Most replica tags one lookup follows (a flood of fake tags costs at most this many reads).
pub const MAX_TAGS: usize = 32;
/// Entries signed longer ago than this are ignored (replicas re-announce every
/// `reannounceInterval`, 10 min by default; this is four missed announces and a half).
pub const MAX_ENTRY_AGE: Duration = Duration::from_secs(45 * 60);

/// A name this node offers, with the owner's membership when the name is restricted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOffer {
    /// The service name ([`entry::check_name`]).
    pub name: String,
    /// The owner's word that this node belongs to the name.
    pub membership: Option<Membership>,
}

/// Whom a caller accepts for a restricted name: these node ids, and nodes the owner key
/// admitted ([`Membership`]). A name without trust is unrestricted: any node can answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTrust {
    /// Node ids accepted as they are.
    pub node_ids: Vec<NodeId>,
    /// The owner's Ed25519 public key.
    pub owner: Option<[u8; 32]>,
}

impl ServiceTrust {
    /// Whether `entry`'s node belongs to `name` in `network` by this trust.
    pub fn admits(&self, network: &str, name: &str, e: &Entry) -> bool {
        let node = e.record.node_id;
        self.node_ids.contains(&node)
            || matches!((&self.owner, &e.membership), (Some(owner), Some(m))
                if m.owner == *owner && m.admits(network, name, &node))
    }
}

/// A replica a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its node id (still proven in the TLS handshake).
    pub node_id: NodeId,
    /// How long ago it signed its entry.
    pub age: Duration,
    /// The name is restricted and the node belongs to it (`false` for unrestricted names).
    pub verified: bool,
    /// How to reach it (its node record).
    pub located: Located,
}

/// What one proxy offers, changed at run time by `announceService` / `withdrawService`.
#[derive(Default)]
pub(crate) struct Offers {
    list: std::sync::Mutex<Vec<(ServiceOffer, bool)>>,
    /// Wakes the announcer at once.
    pub(crate) changed: tokio::sync::Notify,
}

impl Offers {
    /// The offers a proxy starts with (checked by [`validate_services`]).
    pub(crate) fn set(&self, offers: &[ServiceOffer]) {
        *self.list.lock().expect("offers lock") = offers
            .iter()
            .filter_map(|o| {
                let name = entry::check_name(&o.name).ok()?;
                Some((ServiceOffer { name, ..o.clone() }, false))
            })
            .collect();
    }

    /// The offers, each with whether it is withdrawn (announced once more as such).
    pub(crate) fn snapshot(&self) -> Vec<(ServiceOffer, bool)> {
        self.list.lock().expect("offers lock").clone()
    }

    /// Forgets the withdrawals that were published.
    pub(crate) fn published(&self, withdrawn: &[String]) {
        self.list
            .lock()
            .expect("offers lock")
            .retain(|(o, w)| !(*w && withdrawn.contains(&o.name)));
    }
}

/// `name` checked and folded ([`entry::check_name`]), or the typed error naming it.
pub(crate) fn checked_name(name: &str) -> Result<String> {
    entry::check_name(name)
        .map_err(|e| Error::InvalidArgument(format!("service name {name:?}: {e}")))
}

impl Discovery {
    /// Starts offering `offer` (replacing an offer of the same name); announced at once.
    pub fn offer_service(&self, offer: ServiceOffer) -> Result<()> {
        let name = checked_name(&offer.name)?;
        let offer = ServiceOffer { name, ..offer };
        {
            let mut list = self.offers.list.lock().expect("offers lock");
            list.retain(|(o, _)| o.name != offer.name);
            if list.iter().filter(|(_, w)| !w).count() >= MAX_OFFERS {
                return Err(Error::InvalidArgument(format!(
                    "at most {MAX_OFFERS} services per proxy"
                )));
            }
            list.push((offer, false));
        }
        self.offers.changed.notify_one();
        Ok(())
    }

    /// Stops offering `name`: its entry is replaced by a withdrawn one at once (lookups skip it;
    /// the BEP 5 tag stays until storing nodes evict it: mainline keeps the latest 500 per
    /// topic). False when it was not offered.
    pub fn withdraw_service(&self, name: &str) -> Result<bool> {
        let name = checked_name(name)?;
        let found = {
            let mut list = self.offers.list.lock().expect("offers lock");
            let mut found = false;
            for (o, w) in list.iter_mut() {
                if o.name == name && !*w {
                    *w = true;
                    found = true;
                }
            }
            found
        };
        if found {
            self.offers.changed.notify_one();
        }
        Ok(found)
    }

    /// Whom the caller accepts for `name` (None: unrestricted).
    pub fn trust_of(&self, name: &str) -> Option<&ServiceTrust> {
        self.trust.get(name)
    }

    /// The names offered now (withdrawn ones aside).
    pub fn offered(&self) -> Vec<String> {
        self.offers
            .snapshot()
            .into_iter()
            .filter(|(_, w)| !w)
            .map(|(o, _)| o.name)
            .collect()
    }

    /// Withdraws every offer at once (the node stops), within `within`: needs the record the
    /// node announced last (nothing was offered on the DHT before one).
    pub(crate) async fn withdraw_all(&self, node: NodeId, seed: &[u8; 32], within: Duration) {
        let any = {
            let mut list = self.offers.list.lock().expect("offers lock");
            list.iter_mut().for_each(|(_, w)| *w = true);
            !list.is_empty()
        };
        let record = self.last_record.lock().expect("record lock").clone();
        let (true, Some(record)) = (any, record) else {
            return;
        };
        let done = tokio::time::timeout(
            within,
            self.announce_services(node, seed, &record, unix_ms()),
        )
        .await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::info!(%node, "services not withdrawn in time: their entries age out");
        }
    }

    /// Publishes every offer with the node's signed `record`: a BEP 5 tag under the name's
    /// topic and the entry under the service key for this hour and the next. Withdrawn offers
    /// are published once as such, then forgotten.
    pub(crate) async fn announce_services(
        &self,
        node: NodeId,
        seed: &[u8; 32],
        record: &[u8],
        now_ms: u64,
    ) -> std::result::Result<(), String> {
        let offers = self.offers.snapshot();
        if offers.is_empty() {
            return Ok(());
        }
        let tag = entry::tag_of(&node);
        let epoch = locator_epoch(now_ms / 1000);
        let network = self.network.clone();
        let one = |offer: ServiceOffer, withdrawn: bool| {
            let network = network.clone();
            async move {
                let value = Entry::sign(
                    seed,
                    &network,
                    &offer.name,
                    now_ms,
                    withdrawn,
                    record,
                    offer.membership.as_ref(),
                )
                .map_err(|e| e.to_string())?;
                let key = SigningKey::from_bytes(&entry::service_seed(&network, &offer.name));
                let puts = [epoch, epoch + 1].map(|e| {
                    let item = MutableItem::new(
                        key.clone(),
                        &value,
                        now_ms as i64,
                        Some(&entry::entry_salt(e, tag)),
                    );
                    self.dht.put_mutable(item, None)
                });
                let topic = Id::from(entry::topic(&network, &offer.name));
                let hint = async {
                    if withdrawn {
                        return Ok(());
                    }
                    self.dht
                        .announce_peer(topic, Some(tag))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                let (stored, hint) = tokio::join!(crate::task::join_all(puts), hint);
                for r in stored {
                    r.map_err(|e| e.to_string())?;
                }
                hint?;
                Ok::<_, String>((offer.name, withdrawn))
            }
        };
        let results = crate::task::join_all(offers.into_iter().map(|(o, w)| one(o, w))).await;
        let mut done = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok((name, true)) => done.push(name),
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        }
        self.offers.published(&done);
        failure.map_or(Ok(()), Err)
    }

    /// The replicas of `name` (checked by the caller): every tag under its topic, then each
    /// tag's entry of this hour and the last; the newest entry per node, withdrawn and stale
    /// ones dropped, `verified` by `trust`. Ends when every query ended, at `deadline`, or once
    /// no new replica arrived for `grace`.
    pub async fn lookup_service(
        &self,
        name: &str,
        trust: Option<&ServiceTrust>,
        deadline: Instant,
        grace: Option<Duration>,
    ) -> Vec<Member> {
        let network = self.network.clone();
        let key = SigningKey::from_bytes(&entry::service_seed(&network, name))
            .verifying_key()
            .to_bytes();
        let epoch = locator_epoch(unix_ms() / 1000);
        let newest: std::sync::Mutex<HashMap<NodeId, Entry>> = Default::default();
        let first = tokio::sync::Notify::new();
        let search = async {
            let mut tags = HashSet::new();
            // Each tag's reads stream their items here as they arrive (a read's query ends
            // only when its slowest node answered or timed out).
            let (items_tx, mut items) = tokio::sync::mpsc::channel::<MutableItem>(64);
            // Dropped once the tags are all known: the channel then ends with the last read.
            let mut items_tx = Some(items_tx);
            let mut reads = tokio::task::JoinSet::new();
            let mut peers = self.dht.get_peers(Id::from(entry::topic(&network, name)));
            let mut peers_done = false;
            loop {
                tokio::select! {
                    batch = peers.next(), if !peers_done => {
                        let Some(batch) = batch else {
                            peers_done = true;
                            items_tx = None;
                            continue;
                        };
                        let Some(items_tx) = &items_tx else { continue };
                        for peer in batch {
                            let tag = peer.port();
                            if tags.len() >= MAX_TAGS || !tags.insert(tag) {
                                continue;
                            }
                            for e in [epoch, epoch.saturating_sub(1)] {
                                let dht = self.dht.clone();
                                let salt = entry::entry_salt(e, tag);
                                let tx = items_tx.clone();
                                reads.spawn(async move {
                                    let mut stream = dht.get_mutable(&key, Some(&salt), None);
                                    while let Some(item) = stream.next().await {
                                        if tx.send(item).await.is_err() {
                                            return;
                                        }
                                    }
                                });
                            }
                        }
                    }
                    Some(item) = items.recv() => {
                        let Ok(e) = Entry::open(item.value(), &network, name) else { continue };
                        let mut n = newest.lock().expect("newest lock");
                        let node = e.record.node_id;
                        if n.get(&node).is_none_or(|old| e.signed_at_ms > old.signed_at_ms) {
                            n.insert(node, e);
                            first.notify_one();
                        }
                    }
                    _ = reads.join_next(), if !reads.is_empty() => {}
                    else => return,
                }
            }
        };
        // Quiet for `grace` since the last new replica: the queries left are the slow ends of
        // the DHT traversal (nodes that never answer), which rarely hold one more.
        let graced = async {
            match grace {
                Some(g) => {
                    first.notified().await;
                    while tokio::time::timeout(g, first.notified()).await.is_ok() {}
                }
                None => std::future::pending().await,
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), async {
            tokio::select! {
                _ = search => {}
                _ = graced => {}
            }
        })
        .await;
        let now = unix_ms();
        let mut out: Vec<Member> = newest
            .into_inner()
            .expect("newest lock")
            .into_values()
            .filter(|e| !e.withdrawn)
            .filter_map(|e| {
                let age = Duration::from_millis(now.saturating_sub(e.signed_at_ms));
                (age <= MAX_ENTRY_AGE).then_some((e, age))
            })
            .map(|(e, age)| {
                let verified = trust.is_some_and(|t| t.admits(&network, name, &e));
                Member {
                    node_id: e.record.node_id,
                    age,
                    verified,
                    located: Located::from_record(&e.record, now),
                }
            })
            .collect();
        out.sort_by_key(|m| m.age);
        out
    }
}

/// Checks the service part of discovery options: the network, each offered name (at most
/// [`MAX_OFFERS`]) and each trusted name.
pub(super) fn validate_services(
    network: &str,
    offers: &[ServiceOffer],
    trust: &HashMap<String, ServiceTrust>,
) -> Result<()> {
    entry::check_network(network)
        .map_err(|e| Error::InvalidArgument(format!("discovery.network {network:?}: {e}")))?;
    if offers.len() > MAX_OFFERS {
        return Err(Error::InvalidArgument(format!(
            "discovery.services: at most {MAX_OFFERS} names"
        )));
    }
    for (i, o) in offers.iter().enumerate() {
        entry::check_name(&o.name).map_err(|e| {
            Error::InvalidArgument(format!("discovery.services[{i}] {:?}: {e}", o.name))
        })?;
    }
    for name in trust.keys() {
        entry::check_name(name)
            .map_err(|e| Error::InvalidArgument(format!("discovery.serviceTrust {name:?}: {e}")))?;
    }
    Ok(())
}
