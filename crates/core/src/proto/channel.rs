//! The relay's UDP packet channel (relay ALPN `keynet-relay/3`): relayed QUIC packets travel
//! between a node and its relay as plain UDP datagrams on the same sockets as the QUIC
//! connection that registered the node, instead of as frames on its stream.
//!
//! Why: a relayed packet is already end-to-end encrypted and authenticated by the two nodes'
//! own QUIC connection. Carrying it on the relay connection's stream encrypted it a second
//! time on each hop, made the relay decrypt and re-encrypt it, and put a reliable, ordered
//! stream (retransmits, flow control, head-of-line blocking) under a protocol that does its own
//! recovery. On the channel the relay only reads a header and sends the packet on.
//!
//! ```text
//! 0      1..4   4      5..13       13..45                      45..
//! 0x00   "KNR"  kind   key(8)      node(32)                    packet (1..=MAX_DATAGRAM)
//!               1 = node -> relay: key = the sender's channel key, node = where it goes
//!               2 = relay -> node: key = the receiver's channel key, node = who sent it
//!               3 = node -> relay: probe (key = the node's, node and packet ignored)
//!               4 = relay -> node: the probe arrived (key = the node's)
//! ```
//!
//! A channel is used only once both ends saw it work: the node sends packets on it only after
//! the relay answered a probe, and the relay sends a node's packets on it only after a valid
//! datagram from that node arrived (a probe comes first). Until then, and for good where
//! something on the path drops these datagrams while it lets QUIC through, packets stay
//! frames on the stream.
//!
//! Like a punch datagram, the first byte has QUIC's fixed bit (0x40) clear, so no channel
//! datagram can be taken for QUIC and the other way around.
//!
//! Authentication (TURN-like): the relay gives each `keynet-relay/3` session a random key on
//! its encrypted stream (`Frame::Channel`). The relay forwards a datagram only if its key
//! names a registered session **and** it comes from that session's current QUIC address; a
//! node takes one in only from its relay's address with its own key. An off-path attacker
//! knows neither; an on-path one sees ciphertext it cannot alter (the nodes' QUIC drops
//! anything forged) and could already drop or delay what it sees.

use crate::nodeid::NodeId;

/// Bytes before the packet.
pub const HEADER: usize = 45;
/// A channel datagram is never held to less than this: QUIC's smallest packet (1200 bytes)
/// with its header, so every relayed connection can start.
pub const MIN_LIMIT: usize = 1200 + HEADER;
/// Nor sent longer than this: quinn's own largest datagram (what fits a 1500-byte IPv6 link).
pub const MAX_LIMIT: usize = 1452;

/// The channel datagram limit for a relay connection whose path MTU is `mtu`. Until its path
/// MTU discovery found more than QUIC's initial 1200 bytes, [`MAX_LIMIT`]: a relayed
/// connection whose packets were held to the relay connection's first guess would find a
/// path MTU of 1200 and keep it (QUIC searches again only minutes later).
pub fn limit_for(mtu: usize) -> usize {
    if mtu <= 1200 {
        return MAX_LIMIT;
    }
    mtu.clamp(MIN_LIMIT, MAX_LIMIT)
}
const MAGIC: &[u8; 3] = b"KNR";
const NODE: usize = 32;

/// A session's channel key.
pub type Key = [u8; 8];

/// Which way a channel datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A node's packet for another node (`node` = the destination).
    ToRelay,
    /// A relayed packet for the receiving node (`node` = the sender).
    FromRelay,
    /// A node asks whether its channel works.
    Probe,
    /// The relay answers a probe.
    ProbeAck,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Self::ToRelay => 1,
            Self::FromRelay => 2,
            Self::Probe => 3,
            Self::ProbeAck => 4,
        }
    }
}

/// A probe or its answer: `kind` with `key`, a zero node id and a one-byte packet.
pub fn signal(kind: Kind, key: &Key) -> Vec<u8> {
    encode(kind, key, &NodeId::from_bytes([0; 32]), &[0])
}

/// A parsed channel datagram, borrowing its packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Which way.
    pub kind: Kind,
    /// The channel key.
    pub key: Key,
    /// The destination (to the relay) or the source (from the relay).
    pub node: NodeId,
    /// The relayed QUIC packet.
    pub packet: &'a [u8],
}

/// Whether `datagram` is a channel datagram (not QUIC, not a punch): cheap, for the receive
/// path's demultiplexing.
pub fn is_channel(datagram: &[u8]) -> bool {
    datagram.len() > HEADER && datagram[0] == 0 && &datagram[1..4] == MAGIC
}

/// Whether `segments` (one receive, `stride` bytes each, the last may be shorter) are channel
/// datagrams that all carry the first one's header and a packet: a run one check covers.
pub fn one_header(segments: &[u8], stride: usize) -> bool {
    let stride = stride.max(1);
    if !is_channel(&segments[..stride.min(segments.len())]) {
        return false;
    }
    let head = &segments[..HEADER];
    segments
        .chunks(stride)
        .all(|s| s.len() > HEADER && s[..HEADER] == *head)
}

/// Parses a channel datagram; `None` if it is not one (or carries no packet).
pub fn parse(datagram: &[u8]) -> Option<Datagram<'_>> {
    if !is_channel(datagram) {
        return None;
    }
    let kind = match datagram[4] {
        1 => Kind::ToRelay,
        2 => Kind::FromRelay,
        3 => Kind::Probe,
        4 => Kind::ProbeAck,
        _ => return None,
    };
    Some(Datagram {
        kind,
        key: datagram[5..13].try_into().expect("8 bytes"),
        node: NodeId::from_bytes(datagram[13..13 + NODE].try_into().expect("32 bytes")),
        packet: &datagram[HEADER..],
    })
}

/// The header of a channel datagram (the packet follows it).
pub fn header(kind: Kind, key: &Key, node: &NodeId) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[1..4].copy_from_slice(MAGIC);
    h[4] = kind.byte();
    h[5..13].copy_from_slice(key);
    h[13..].copy_from_slice(node.as_bytes());
    h
}

/// Appends the header of a channel datagram to `out` (the packet follows).
pub fn put_header(out: &mut Vec<u8>, kind: Kind, key: &Key, node: &NodeId) {
    out.extend_from_slice(&header(kind, key, node));
}

/// A whole channel datagram.
pub fn encode(kind: Kind, key: &Key, node: &NodeId, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + packet.len());
    put_header(&mut out, kind, key, node);
    out.extend_from_slice(packet);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    #[test]
    fn a_run_has_one_header_only_when_every_segment_carries_the_first_ones() {
        let seg = |n: u8, len: usize| encode(Kind::ToRelay, &[1; 8], &node(n), &vec![n; len]);
        let same = [seg(2, 10), seg(2, 10), seg(2, 4)].concat();
        assert!(one_header(&same, HEADER + 10));
        let mixed = [seg(2, 10), seg(3, 10)].concat();
        assert!(!one_header(&mixed, HEADER + 10));
        // A last segment with a header and no packet, and a run of something else.
        let bare = [seg(2, 10), seg(2, 10)[..HEADER].to_vec()].concat();
        assert!(!one_header(&bare, HEADER + 10));
        assert!(!one_header(&[0x40; 100], 50));
    }

    #[test]
    fn a_datagram_parses_back_to_what_was_encoded() {
        let d = encode(Kind::ToRelay, &[7; 8], &node(3), b"quic packet");
        assert_eq!(d.len(), HEADER + 11);
        assert_eq!(
            parse(&d),
            Some(Datagram {
                kind: Kind::ToRelay,
                key: [7; 8],
                node: node(3),
                packet: b"quic packet",
            })
        );
        let back = encode(Kind::FromRelay, &[1; 8], &node(9), b"x");
        assert_eq!(parse(&back).unwrap().kind, Kind::FromRelay);
    }

    #[test]
    fn quic_punches_and_empty_or_unknown_datagrams_are_not_channel_datagrams() {
        // A QUIC long header (fixed bit set), a punch, a header with no packet, a bad kind.
        let mut quic = encode(Kind::ToRelay, &[0; 8], &node(1), b"p");
        quic[0] = 0xc0;
        assert!(parse(&quic).is_none());
        let mut punch = encode(Kind::ToRelay, &[0; 8], &node(1), b"p");
        punch[3] = b'P';
        assert!(parse(&punch).is_none());
        let header_only = encode(Kind::ToRelay, &[0; 8], &node(1), b"");
        assert!(!is_channel(&header_only));
        let mut bad_kind = encode(Kind::ToRelay, &[0; 8], &node(1), b"p");
        bad_kind[4] = 5;
        assert!(parse(&bad_kind).is_none());
        assert!(parse(&[]).is_none());
    }
}
