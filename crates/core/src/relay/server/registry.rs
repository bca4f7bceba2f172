//! The relay's policy without I/O: who is registered (one session per node id; a newer
//! registration replaces the older), who may send to whom (only registered senders, only to
//! registered nodes, at most `max_peers` peers a node starts relaying with; answering a node
//! that relays to you is free), who may ask for a rendezvous with whom (only a peer it already
//! relays packets with, at a bounded rate), whom to tell when a node leaves, and the frame each
//! refusal is answered with. The server (`mod.rs`) holds it under
//! one lock and does what it decides; every rule is unit-tested here without sockets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::admission::Bucket;
use super::limits::Limits;
use crate::nodeid::NodeId;
use crate::proto::connect::constant_time_eq;
use crate::proto::relay::{Frame, GoneReason};

/// Why the relay will not do what a node asked. Each maps to one answer ([`Refusal::frame`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The registration token is wrong (the session then ends).
    BadToken,
    /// A caller registration at a relay that takes none (the session then ends).
    NoCallers,
    /// Something only a node registered to be reached may do (a public port, an announce).
    CallerOnly(&'static str),
    /// The sender is not (or no longer) the registered session of its node id.
    NotRegistered,
    /// The node asked for is not registered here.
    UnknownPeer(NodeId),
    /// The sender already relays to `limit` peers; `dst` would be one more.
    PeerLimit {
        /// The refused peer.
        dst: NodeId,
        /// The relay's `maxPeers`.
        limit: usize,
    },
    /// A rendezvous with a node the sender relays no packets with (it would learn any node's
    /// address from its id, and make it punch).
    NoRelayedTraffic(NodeId),
    /// Rendezvous requests faster than `rendezvous_rate` allows. (A node's direct paths ask
    /// again at most every 3 s per peer, backing off to 5 min: a well-behaved node with its 64
    /// peers stays far below the default.)
    RendezvousRate,
    /// A frame only the relay sends, or one out of place.
    Unexpected(String),
}

impl Refusal {
    /// The frame the sender gets.
    pub(crate) fn frame(&self) -> Frame {
        let error = |code, node, message: String| Frame::Error {
            code,
            node,
            message,
        };
        match self {
            Self::BadToken => error(401, None, "registration token refused".into()),
            Self::NoCallers => error(401, None, "this relay takes no callers".into()),
            Self::CallerOnly(what) => {
                error(403, None, format!("a caller registration cannot {what}"))
            }
            Self::NotRegistered => error(401, None, "register first".into()),
            Self::UnknownPeer(node) => Frame::PeerGone {
                node: *node,
                reason: GoneReason::Unknown,
            },
            Self::PeerLimit { dst, limit } => error(
                429,
                Some(*dst),
                format!("too many relayed peers (limit {limit}): {dst} refused"),
            ),
            // Not naming the peer: the node must not take a refused rendezvous for a refused
            // peer (its relayed connection goes on).
            Self::NoRelayedTraffic(peer) => error(
                403,
                None,
                format!("rendezvous refused: no relayed packets with {peer}"),
            ),
            Self::RendezvousRate => error(429, None, "rendezvous requests too fast".into()),
            Self::Unexpected(what) => error(
                400,
                None,
                format!("unexpected frame {what}")
                    .chars()
                    .take(200)
                    .collect(),
            ),
        }
    }
}

/// One registered session.
struct Entry<H> {
    session: u64,
    handle: Arc<H>,
    /// Registered only to call others: reachable only by the nodes it sent to.
    caller: bool,
    /// Nodes this one started relaying packets to (at most `max_peers`).
    initiated: HashSet<NodeId>,
    /// Nodes that relayed packets to this one (answering them is free).
    heard_from: HashSet<NodeId>,
    /// Rendezvous requests left.
    rendezvous: Bucket,
}

impl<H> Entry<H> {
    /// Whether this node relays packets with `peer`, either way.
    fn relays_with(&self, peer: &NodeId) -> bool {
        self.initiated.contains(peer) || self.heard_from.contains(peer)
    }
}

/// The registered sessions; `H` is the server's handle to a session (its queues).
pub(crate) struct Registry<H> {
    max_peers: usize,
    rendezvous_burst: f64,
    rendezvous_rate: f64,
    token: Option<String>,
    callers: bool,
    nodes: HashMap<NodeId, Entry<H>>,
}

impl<H> Registry<H> {
    /// An empty registry: `token` required to register to be reached when given; caller
    /// registrations (no token) taken when `callers`; peers and rendezvous bounded by `limits`.
    pub(crate) fn new(limits: &Limits, token: Option<String>, callers: bool) -> Self {
        Self {
            max_peers: limits.max_peers,
            rendezvous_burst: limits.rendezvous_burst as f64,
            rendezvous_rate: limits.rendezvous_rate,
            token,
            callers,
            nodes: HashMap::new(),
        }
    }

    /// Registers `session` as `node` (constant-time token check; none for a `caller`, which
    /// may only call nodes registered to be reached). Returns the session it replaced, if
    /// another (the server ends it).
    pub(crate) fn register(
        &mut self,
        node: NodeId,
        session: u64,
        handle: Arc<H>,
        token: &str,
        caller: bool,
    ) -> Result<Option<Arc<H>>, Refusal> {
        if caller {
            if !self.callers {
                return Err(Refusal::NoCallers);
            }
        } else if let Some(want) = &self.token {
            if !constant_time_eq(want.as_bytes(), token.as_bytes()) {
                return Err(Refusal::BadToken);
            }
        }
        let mut entry = Entry {
            session,
            handle,
            caller,
            initiated: HashSet::new(),
            heard_from: HashSet::new(),
            rendezvous: Bucket::full(self.rendezvous_burst, Instant::now()),
        };
        let Some(old) = self.nodes.remove(&node) else {
            self.nodes.insert(node, entry);
            return Ok(None);
        };
        // The same node (its key proved again) moving its session, for example from
        // WebSocket to QUIC: its peers still relay with it (their entries name it), so it keeps
        // them, and its rendezvous budget (a new session must not refill it).
        entry.initiated = old.initiated;
        entry.heard_from = old.heard_from;
        entry.rendezvous = old.rendezvous;
        self.nodes.insert(node, entry);
        Ok((old.session != session).then_some(old.handle))
    }

    /// Whether `session` is the registered session of `node`.
    pub(crate) fn is_current(&self, node: NodeId, session: u64) -> bool {
        self.nodes.get(&node).is_some_and(|e| e.session == session)
    }

    /// May `session` (as `node`) send a packet to `dst`? Then both remember it (`dst` counts
    /// against `node`'s limit unless `dst` relayed to `node` first), and `dst`'s handle is
    /// returned.
    pub(crate) fn forward(
        &mut self,
        node: NodeId,
        session: u64,
        dst: NodeId,
    ) -> Result<Arc<H>, Refusal> {
        if !self.is_current(node, session) {
            return Err(Refusal::NotRegistered);
        }
        // A caller is reachable only by the nodes it called: to anyone else it is not here.
        let Some(target) = self
            .nodes
            .get(&dst)
            .filter(|e| !e.caller || e.initiated.contains(&node))
            .map(|e| e.handle.clone())
        else {
            return Err(Refusal::UnknownPeer(dst));
        };
        let limit = self.max_peers;
        let me = self.nodes.get_mut(&node).expect("checked above");
        if !me.relays_with(&dst) {
            if me.initiated.len() >= limit {
                return Err(Refusal::PeerLimit { dst, limit });
            }
            me.initiated.insert(dst);
        }
        if let Some(e) = self.nodes.get_mut(&dst) {
            e.heard_from.insert(node);
        }
        Ok(target)
    }

    /// May `session` (as `node`) ask for a rendezvous with `peer` at `now`? Only with a peer
    /// it relays packets with, at most `rendezvous_burst` at once and `rendezvous_rate` a
    /// second. Returns `peer`'s handle.
    pub(crate) fn pair(
        &mut self,
        node: NodeId,
        session: u64,
        peer: NodeId,
        now: Instant,
    ) -> Result<Arc<H>, Refusal> {
        if !self.is_current(node, session) {
            return Err(Refusal::NotRegistered);
        }
        let Some(target) = self.nodes.get(&peer).map(|e| e.handle.clone()) else {
            return Err(Refusal::UnknownPeer(peer));
        };
        let me = self.nodes.get_mut(&node).expect("checked above");
        // A caller must have been answered: else one junk packet would buy it any registered
        // node's address.
        let answered = if me.caller {
            me.heard_from.contains(&peer)
        } else {
            me.relays_with(&peer)
        };
        if !answered {
            return Err(Refusal::NoRelayedTraffic(peer));
        }
        if !me
            .rendezvous
            .take(self.rendezvous_burst, self.rendezvous_rate, now)
        {
            return Err(Refusal::RendezvousRate);
        }
        Ok(target)
    }

    /// Every registered session's handle.
    pub(crate) fn handles(&self) -> impl Iterator<Item = &Arc<H>> {
        self.nodes.values().map(|e| &e.handle)
    }

    /// Removes `session`'s registration of `node` if it is still the current one; returns the
    /// handles of the peers to tell it left (None: it was not registered).
    pub(crate) fn unregister(&mut self, node: NodeId, session: u64) -> Option<Vec<Arc<H>>> {
        if !self.is_current(node, session) {
            return None;
        }
        self.nodes.remove(&node);
        Some(
            self.nodes
                .values_mut()
                .filter_map(|e| {
                    let initiated = e.initiated.remove(&node);
                    let heard = e.heard_from.remove(&node);
                    (initiated || heard).then(|| e.handle.clone())
                })
                .collect(),
        )
    }

    /// The node ids registered to be reached (callers aside).
    pub(crate) fn registered(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, e)| !e.caller)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `session` is `node`'s current registration as a caller.
    pub(crate) fn is_caller(&self, node: NodeId, session: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|e| e.session == session && e.caller)
    }

    /// Empties the registry (the relay stops); returns every session's handle.
    pub(crate) fn drain(&mut self) -> Vec<Arc<H>> {
        self.nodes.drain().map(|(_, e)| e.handle).collect()
    }
}

/// The frame a node that left leaves its peers.
pub(crate) fn left(node: NodeId) -> Frame {
    Frame::PeerGone {
        node,
        reason: GoneReason::Left,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    /// A registry whose handles are just the session ids.
    fn registry(max_peers: usize, token: Option<&str>) -> Registry<u64> {
        let limits = Limits {
            max_peers,
            ..Limits::default()
        };
        Registry::new(&limits, token.map(Into::into), true)
    }

    fn reg(r: &mut Registry<u64>, node: NodeId, session: u64) -> Option<u64> {
        r.register(node, session, Arc::new(session), "", false)
            .unwrap()
            .map(|h| *h)
    }

    #[test]
    fn a_caller_needs_no_token_and_is_reached_only_by_whom_it_called() {
        let mut r = registry(8, Some("s3cret"));
        r.register(n(1), 1, Arc::new(1), "s3cret", false).unwrap();
        r.register(n(2), 2, Arc::new(2), "s3cret", false).unwrap();
        // Callers 3 and 4 register without the token.
        r.register(n(3), 3, Arc::new(3), "", true).unwrap();
        r.register(n(4), 4, Arc::new(4), "guess", true).unwrap();
        assert!(r.is_caller(n(3), 3) && !r.is_caller(n(1), 1));
        let mut listed = r.registered();
        listed.sort();
        assert_eq!(
            listed,
            vec![n(1), n(2)],
            "callers are not listed as reachable"
        );
        // Nobody reaches a caller it was not called by, callers included…
        assert_eq!(
            r.forward(n(1), 1, n(3)).err(),
            Some(Refusal::UnknownPeer(n(3)))
        );
        assert_eq!(
            r.forward(n(4), 4, n(3)).err(),
            Some(Refusal::UnknownPeer(n(3)))
        );
        // …a caller reaches a registered node, which may then answer it (and only it).
        assert_eq!(r.forward(n(3), 3, n(1)).map(|h| *h), Ok(1));
        assert_eq!(r.forward(n(1), 1, n(3)).map(|h| *h), Ok(3));
        assert_eq!(
            r.forward(n(2), 2, n(3)).err(),
            Some(Refusal::UnknownPeer(n(3)))
        );
        // A caller gets a rendezvous only with a node that answered it: C sent to 1, which
        // never answered.
        r.forward(n(4), 4, n(2)).unwrap();
        assert_eq!(
            r.pair(n(4), 4, n(2), Instant::now()).err(),
            Some(Refusal::NoRelayedTraffic(n(2)))
        );
        assert!(
            r.pair(n(3), 3, n(1), Instant::now()).is_ok(),
            "1 answered 3"
        );
        // A relay may take no callers at all.
        let mut closed = Registry::new(&Limits::default(), None, false);
        assert_eq!(
            closed.register(n(5), 5, Arc::new(5), "", true).err(),
            Some(Refusal::NoCallers)
        );
        assert!(closed.register(n(5), 5, Arc::new(5), "", false).is_ok());
    }

    #[test]
    fn a_wrong_token_is_refused_and_registers_nothing() {
        let mut r = registry(8, Some("s3cret"));
        assert_eq!(
            r.register(n(1), 1, Arc::new(1), "guess", false).err(),
            Some(Refusal::BadToken)
        );
        assert_eq!(
            r.register(n(1), 1, Arc::new(1), "", false).err(),
            Some(Refusal::BadToken)
        );
        assert!(r.registered().is_empty());
        assert!(r.register(n(1), 1, Arc::new(1), "s3cret", false).is_ok());
        assert_eq!(r.registered(), vec![n(1)]);
        assert_eq!(
            Refusal::BadToken.frame(),
            Frame::Error {
                code: 401,
                node: None,
                message: "registration token refused".into()
            }
        );
    }

    #[test]
    fn a_newer_registration_replaces_the_older_which_loses_its_rights() {
        let mut r = registry(8, None);
        assert_eq!(reg(&mut r, n(1), 1), None);
        assert_eq!(reg(&mut r, n(2), 2), None);
        // The same session registering again replaces nothing.
        assert_eq!(reg(&mut r, n(1), 1), None);
        // A new session for node 1 ends session 1…
        assert_eq!(reg(&mut r, n(1), 3), Some(1));
        // …which may no longer send, nor unregister the new one.
        assert_eq!(r.forward(n(1), 1, n(2)).err(), Some(Refusal::NotRegistered));
        assert_eq!(
            r.pair(n(1), 1, n(2), Instant::now()).err(),
            Some(Refusal::NotRegistered)
        );
        assert_eq!(r.unregister(n(1), 1), None);
        assert!(r.is_current(n(1), 3));
        assert_eq!(r.forward(n(1), 3, n(2)).map(|h| *h), Ok(2));
    }

    #[test]
    fn only_registered_senders_reach_only_registered_nodes() {
        let mut r = registry(8, None);
        reg(&mut r, n(1), 1);
        // An unregistered sender: refused (the relay is not an open proxy).
        assert_eq!(r.forward(n(9), 9, n(1)).err(), Some(Refusal::NotRegistered));
        assert_eq!(
            r.pair(n(9), 9, n(1), Instant::now()).err(),
            Some(Refusal::NotRegistered)
        );
        // An unknown destination: PeerGone(unknown), nothing remembered.
        assert_eq!(
            r.forward(n(1), 1, n(2)).err(),
            Some(Refusal::UnknownPeer(n(2)))
        );
        assert_eq!(
            r.pair(n(1), 1, n(2), Instant::now()).err(),
            Some(Refusal::UnknownPeer(n(2)))
        );
        assert_eq!(
            Refusal::UnknownPeer(n(2)).frame(),
            Frame::PeerGone {
                node: n(2),
                reason: GoneReason::Unknown
            }
        );
        assert_eq!(Refusal::NotRegistered.frame().clone(), {
            Frame::Error {
                code: 401,
                node: None,
                message: "register first".into(),
            }
        });
    }

    #[test]
    fn the_peer_limit_counts_distinct_peers_and_names_the_refused_one() {
        let mut r = registry(2, None);
        for i in 1..=4 {
            reg(&mut r, n(i), i as u64);
        }
        assert!(r.forward(n(1), 1, n(2)).is_ok());
        assert!(r.forward(n(1), 1, n(3)).is_ok());
        // Known peers go on; a third is refused, with its node id in the frame.
        assert!(r.forward(n(1), 1, n(2)).is_ok());
        let refusal = r.forward(n(1), 1, n(4)).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::PeerLimit {
                dst: n(4),
                limit: 2
            }
        );
        match refusal.frame() {
            Frame::Error { code, node, .. } => {
                assert_eq!(code, 429);
                assert_eq!(node, Some(n(4)));
            }
            other => panic!("{other:?}"),
        }
        // The limit is per sender: node 4 may still reach node 1.
        assert!(r.forward(n(4), 4, n(1)).is_ok());
        // The refused send left no trace: node 4 leaving tells node 1 only (it relayed with
        // node 1), not as a peer of its own refused attempt.
        let told: Vec<u64> = r.unregister(n(4), 4).unwrap().iter().map(|h| **h).collect();
        assert_eq!(told, vec![1]);
    }

    #[test]
    fn a_node_that_leaves_is_announced_to_its_peers_only_once() {
        let mut r = registry(8, None);
        for i in 1..=3 {
            reg(&mut r, n(i), i as u64);
        }
        r.forward(n(1), 1, n(2)).unwrap();
        let mut told: Vec<u64> = r.unregister(n(1), 1).unwrap().iter().map(|h| **h).collect();
        told.sort();
        assert_eq!(told, vec![2], "node 2 relayed with node 1; node 3 did not");
        assert_eq!(r.unregister(n(1), 1), None, "idempotent");
        // Node 2 forgot node 1: a later leave of node 2 tells no one.
        assert_eq!(r.unregister(n(2), 2).unwrap().len(), 0);
        assert_eq!(r.registered(), vec![n(3)]);
    }

    #[test]
    fn nodes_that_relay_to_you_do_not_use_up_your_peer_slots() {
        let mut r = registry(2, None);
        for i in 1..=6 {
            reg(&mut r, n(i), i as u64);
        }
        // Nodes 2 and 3 relay to node 1: answering them is free…
        assert!(r.forward(n(2), 2, n(1)).is_ok());
        assert!(r.forward(n(3), 3, n(1)).is_ok());
        assert!(r.forward(n(1), 1, n(2)).is_ok());
        assert!(r.forward(n(1), 1, n(3)).is_ok());
        // …and node 1 may still start relaying with two peers of its own, not a third.
        assert!(r.forward(n(1), 1, n(4)).is_ok());
        assert!(r.forward(n(1), 1, n(5)).is_ok());
        assert_eq!(
            r.forward(n(1), 1, n(6)).err(),
            Some(Refusal::PeerLimit {
                dst: n(6),
                limit: 2
            })
        );
    }

    #[test]
    fn a_rendezvous_only_with_a_peer_the_asker_relays_with() {
        let mut r = registry(8, None);
        for i in 1..=3 {
            reg(&mut r, n(i), i as u64);
        }
        let now = Instant::now();
        // Registered, but no packets between 1 and 2: refused, without naming the peer.
        let refused = r.pair(n(1), 1, n(2), now).unwrap_err();
        assert_eq!(refused, Refusal::NoRelayedTraffic(n(2)));
        assert!(matches!(
            refused.frame(),
            Frame::Error {
                code: 403,
                node: None,
                ..
            }
        ));
        // Either direction of relayed packets makes them peers.
        r.forward(n(1), 1, n(2)).unwrap();
        assert_eq!(r.pair(n(1), 1, n(2), now).map(|h| *h), Ok(2));
        assert_eq!(r.pair(n(2), 2, n(1), now).map(|h| *h), Ok(1));
        assert!(r.pair(n(3), 3, n(1), now).is_err());
    }

    #[test]
    fn rendezvous_requests_are_rate_limited_per_node() {
        let mut r = registry(8, None);
        reg(&mut r, n(1), 1);
        reg(&mut r, n(2), 2);
        r.forward(n(1), 1, n(2)).unwrap();
        let t0 = Instant::now();
        let burst = (0..100)
            .take_while(|_| r.pair(n(1), 1, n(2), t0).is_ok())
            .count();
        let (burst_limit, rate) = (
            Limits::default().rendezvous_burst,
            Limits::default().rendezvous_rate,
        );
        assert_eq!(burst, burst_limit);
        assert_eq!(
            r.pair(n(1), 1, n(2), t0).err(),
            Some(Refusal::RendezvousRate)
        );
        // The other node's budget is its own.
        assert!(r.pair(n(2), 2, n(1), t0).is_ok());
        // Tokens come back at the rate.
        let later = t0 + Duration::from_secs_f64(1.0 / rate);
        assert!(r.pair(n(1), 1, n(2), later).is_ok());
        assert!(r.pair(n(1), 1, n(2), later).is_err());
    }

    #[test]
    fn a_node_registering_again_keeps_its_peers_and_its_rendezvous_budget() {
        let mut r = registry(8, None);
        reg(&mut r, n(1), 1);
        reg(&mut r, n(2), 2);
        r.forward(n(2), 2, n(1)).unwrap();
        let t0 = Instant::now();
        while r.pair(n(1), 1, n(2), t0).is_ok() {}
        // Node 1 moves to a new session (its old one is returned, to be ended).
        assert_eq!(reg(&mut r, n(1), 11), Some(1));
        assert_eq!(r.pair(n(1), 1, n(2), t0), Err(Refusal::NotRegistered));
        // Still node 2's peer, with no packet since the move; its budget is not refilled.
        assert_eq!(
            r.pair(n(1), 11, n(2), t0).err(),
            Some(Refusal::RendezvousRate)
        );
        let later = t0 + Duration::from_secs_f64(1.0 / Limits::default().rendezvous_rate);
        assert_eq!(r.pair(n(1), 11, n(2), later).map(|h| *h), Ok(2));
        assert_eq!(r.forward(n(1), 11, n(2)).map(|h| *h), Ok(2));
    }

    #[test]
    fn unexpected_frames_get_a_short_400() {
        match Refusal::Unexpected("x".repeat(1000)).frame() {
            Frame::Error { code, message, .. } => {
                assert_eq!(code, 400);
                assert_eq!(message.chars().count(), 200);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drain_returns_every_session() {
        let mut r = registry(8, None);
        reg(&mut r, n(1), 1);
        reg(&mut r, n(2), 2);
        let mut all: Vec<u64> = r.drain().iter().map(|h| **h).collect();
        all.sort();
        assert_eq!(all, vec![1, 2]);
        assert!(r.registered().is_empty());
    }
}
