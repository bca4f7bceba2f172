//! Reaching a service by name: the replicas a lookup found (cached briefly), those the caller
//! trusts for a restricted name, tried in turn from a round-robin position, each through every
//! way its record names (`race`), the next one on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Node;
use crate::discovery::{self, checked_name, Member};
use crate::error::{Error, Result};
use crate::tracker::Peer;

/// A lookup's replicas are reused this long (a CONNECT per gRPC channel does not cost a DHT
/// lookup each); a dial whose cached replicas all failed looks again at once.
pub(crate) const SERVICE_CACHE_TTL: Duration = Duration::from_secs(30);
/// Names cached at once (the oldest goes first).
const SERVICE_CACHE_MAX: usize = 64;
/// One replica gets at most this much of a dial's budget before the next is tried.
pub(crate) const PER_REPLICA: Duration = Duration::from_secs(4);
/// A dial stops looking once no new replica arrived for this long.
const LOOKUP_GRACE: Duration = Duration::from_millis(300);
/// `lookupService` stops looking once no new replica arrived for this long (the DHT traversal's
/// slow ends, nodes that never answer, rarely hold one more).
pub(crate) const LOOKUP_QUIET: Duration = Duration::from_millis(600);

/// One name's last lookup: when, the replicas, and the round-robin position.
struct Cached {
    at: Instant,
    members: Vec<Member>,
    next: usize,
}

/// Recent lookups, by name.
#[derive(Default)]
pub(crate) struct ServiceCache(Mutex<HashMap<String, Cached>>);

impl ServiceCache {
    fn get(&self, name: &str, now: Instant) -> Option<Vec<Member>> {
        let map = self.0.lock().expect("service cache lock");
        map.get(name)
            .filter(|c| now.duration_since(c.at) < SERVICE_CACHE_TTL)
            .map(|c| c.members.clone())
    }

    fn put(&self, name: &str, members: Vec<Member>, now: Instant) {
        let mut map = self.0.lock().expect("service cache lock");
        if map.len() >= SERVICE_CACHE_MAX && !map.contains_key(name) {
            if let Some(oldest) = map.iter().min_by_key(|(_, c)| c.at).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        // The round-robin position survives a refresh; a new name starts anywhere.
        let next = map
            .get(name)
            .map_or_else(|| crate::addr::random_u64() as usize, |c| c.next);
        map.insert(
            name.to_string(),
            Cached {
                at: now,
                members,
                next,
            },
        );
    }

    fn forget(&self, name: &str) {
        self.0.lock().expect("service cache lock").remove(name);
    }

    /// The position to start at among `n` replicas, moved on by one for the next dial.
    fn take_turn(&self, name: &str, n: usize) -> usize {
        let mut map = self.0.lock().expect("service cache lock");
        match map.get_mut(name) {
            Some(c) => {
                let i = c.next % n.max(1);
                c.next = c.next.wrapping_add(1);
                i
            }
            None => (crate::addr::random_u64() as usize) % n.max(1),
        }
    }
}

impl Node {
    /// The replicas of `name` the DHT names before `deadline`, or until none new arrived for
    /// [`LOOKUP_QUIET`] (withdrawn and stale entries aside), `verified` by this proxy's trust.
    pub(crate) async fn lookup_service(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<Vec<Member>> {
        let d = self.discovery().ok_or_else(discovery::discovery_off)?;
        let name = checked_name(name)?;
        let found = d
            .lookup_service(&name, d.trust_of(&name), deadline, Some(LOOKUP_QUIET))
            .await;
        self.services.put(&name, found.clone(), Instant::now());
        Ok(found)
    }

    /// Reaches one replica of `name`: among those found (and trusted, for a restricted name),
    /// the next in round-robin order, then the others on failure, each for at most
    /// [`PER_REPLICA`]. `ErrorServiceNotFound` when none was found or none answered.
    pub(crate) async fn dial_service(
        self: &Arc<Self>,
        name: &str,
        budget: Duration,
    ) -> Result<Arc<Peer>> {
        let d = self
            .discovery()
            .cloned()
            .ok_or_else(discovery::discovery_off)?;
        let name = checked_name(name)?;
        let deadline = Instant::now() + budget;
        let trust = d.trust_of(&name).cloned();
        let mut last: Option<Error> = None;
        for round in 0..2 {
            let (members, cached) = match self.services.get(&name, Instant::now()) {
                Some(m) if round == 0 => (m, true),
                _ => {
                    let m = d
                        .lookup_service(&name, trust.as_ref(), deadline, Some(LOOKUP_GRACE))
                        .await;
                    self.services.put(&name, m.clone(), Instant::now());
                    (m, false)
                }
            };
            let usable: Vec<&Member> = members
                .iter()
                .filter(|m| trust.is_none() || m.verified)
                .collect();
            if usable.is_empty() {
                if cached {
                    continue;
                }
                let why = if members.is_empty() {
                    "no replica found".to_string()
                } else {
                    format!(
                        "{} replicas found, none admitted by this proxy's trust for the name",
                        members.len()
                    )
                };
                return Err(Error::ServiceNotFound(name, why));
            }
            let start = self.services.take_turn(&name, usable.len());
            for i in 0..usable.len() {
                let m = usable[(start + i) % usable.len()];
                if let Some(peer) = self
                    .tracker
                    .peers()
                    .into_iter()
                    .find(|p| p.claims(&m.node_id))
                {
                    return Ok(peer);
                }
                let now = Instant::now();
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    break;
                }
                let per = left.min(PER_REPLICA);
                match self
                    .race(m.node_id, &m.located, now + per, per, false)
                    .await
                    .map(|r| r.0)
                {
                    Ok(peer) => return Ok(peer),
                    Err(e) => {
                        tracing::debug!(service = %name, node = %m.node_id, error = %e, "replica did not answer: trying the next");
                        last = Some(e);
                    }
                }
            }
            // Every replica failed: the next dial looks again.
            self.services.forget(&name);
            if !cached || Instant::now() >= deadline {
                break;
            }
        }
        let why = last.map_or_else(
            || "no replica answered".into(),
            |e| format!("no replica answered (last: {e})"),
        );
        Err(Error::ServiceNotFound(name, why))
    }
}
