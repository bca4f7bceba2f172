//! The relay's policy without I/O: who is registered (one session per node id; a newer
//! registration replaces the older), who may send to whom (only registered senders, only to
//! registered nodes, at most `max_peers` relayed peers per node), whom to tell when a node
//! leaves, and the frame each refusal is answered with. The server (`mod.rs`) holds it under
//! one lock and does what it decides; every rule is unit-tested here without sockets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::nodeid::NodeId;
use crate::proto::connect::constant_time_eq;
use crate::proto::relay::{Frame, GoneReason};

/// Why the relay will not do what a node asked. Each maps to one answer ([`Refusal::frame`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The registration token is wrong (the session then ends).
    BadToken,
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
    /// The nodes this one relayed packets with (told when it leaves).
    peers: HashSet<NodeId>,
}

/// The registered sessions; `H` is the server's handle to a session (its queues).
pub(crate) struct Registry<H> {
    max_peers: usize,
    token: Option<String>,
    nodes: HashMap<NodeId, Entry<H>>,
}

impl<H> Registry<H> {
    /// An empty registry: `token` required to register when given; at most `max_peers`
    /// relayed peers per node.
    pub(crate) fn new(max_peers: usize, token: Option<String>) -> Self {
        Self {
            max_peers,
            token,
            nodes: HashMap::new(),
        }
    }

    /// Registers `session` as `node` (constant-time token check). Returns the session it
    /// replaced, if another (the server ends it).
    pub(crate) fn register(
        &mut self,
        node: NodeId,
        session: u64,
        handle: Arc<H>,
        token: &str,
    ) -> Result<Option<Arc<H>>, Refusal> {
        if let Some(want) = &self.token {
            if !constant_time_eq(want.as_bytes(), token.as_bytes()) {
                return Err(Refusal::BadToken);
            }
        }
        let old = self.nodes.insert(
            node,
            Entry {
                session,
                handle,
                peers: HashSet::new(),
            },
        );
        Ok(old.filter(|o| o.session != session).map(|o| o.handle))
    }

    /// Whether `session` is the registered session of `node`.
    pub(crate) fn is_current(&self, node: NodeId, session: u64) -> bool {
        self.nodes.get(&node).is_some_and(|e| e.session == session)
    }

    /// May `session` (as `node`) send a packet to `dst`? Then both remember each other as
    /// peers, and `dst`'s handle is returned.
    pub(crate) fn forward(
        &mut self,
        node: NodeId,
        session: u64,
        dst: NodeId,
    ) -> Result<Arc<H>, Refusal> {
        if !self.is_current(node, session) {
            return Err(Refusal::NotRegistered);
        }
        let Some(target) = self.nodes.get(&dst).map(|e| e.handle.clone()) else {
            return Err(Refusal::UnknownPeer(dst));
        };
        let limit = self.max_peers;
        let me = self.nodes.get_mut(&node).expect("checked above");
        if !me.peers.contains(&dst) {
            if me.peers.len() >= limit {
                return Err(Refusal::PeerLimit { dst, limit });
            }
            me.peers.insert(dst);
        }
        if let Some(e) = self.nodes.get_mut(&dst) {
            e.peers.insert(node);
        }
        Ok(target)
    }

    /// May `session` (as `node`) ask for a rendezvous with `peer`? Returns `peer`'s handle.
    pub(crate) fn pair(&self, node: NodeId, session: u64, peer: NodeId) -> Result<Arc<H>, Refusal> {
        if !self.is_current(node, session) {
            return Err(Refusal::NotRegistered);
        }
        self.nodes
            .get(&peer)
            .map(|e| e.handle.clone())
            .ok_or(Refusal::UnknownPeer(peer))
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
                .filter_map(|e| e.peers.remove(&node).then(|| e.handle.clone()))
                .collect(),
        )
    }

    /// The registered node ids.
    pub(crate) fn registered(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
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
    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    /// A registry whose handles are just the session ids.
    fn registry(max_peers: usize, token: Option<&str>) -> Registry<u64> {
        Registry::new(max_peers, token.map(Into::into))
    }

    fn reg(r: &mut Registry<u64>, node: NodeId, session: u64) -> Option<u64> {
        r.register(node, session, Arc::new(session), "")
            .unwrap()
            .map(|h| *h)
    }

    #[test]
    fn a_wrong_token_is_refused_and_registers_nothing() {
        let mut r = registry(8, Some("s3cret"));
        assert_eq!(
            r.register(n(1), 1, Arc::new(1), "guess").err(),
            Some(Refusal::BadToken)
        );
        assert_eq!(
            r.register(n(1), 1, Arc::new(1), "").err(),
            Some(Refusal::BadToken)
        );
        assert!(r.registered().is_empty());
        assert!(r.register(n(1), 1, Arc::new(1), "s3cret").is_ok());
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
        assert_eq!(r.pair(n(1), 1, n(2)).err(), Some(Refusal::NotRegistered));
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
        assert_eq!(r.pair(n(9), 9, n(1)).err(), Some(Refusal::NotRegistered));
        // An unknown destination: PeerGone(unknown), nothing remembered.
        assert_eq!(
            r.forward(n(1), 1, n(2)).err(),
            Some(Refusal::UnknownPeer(n(2)))
        );
        assert_eq!(
            r.pair(n(1), 1, n(2)).err(),
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
    fn a_rendezvous_needs_no_peer_slot() {
        let mut r = registry(1, None);
        for i in 1..=3 {
            reg(&mut r, n(i), i as u64);
        }
        r.forward(n(1), 1, n(2)).unwrap();
        assert_eq!(r.pair(n(1), 1, n(3)).map(|h| *h), Ok(3));
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
