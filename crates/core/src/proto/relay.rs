//! The relay protocol's frames (groundwork of the relay issue): what a keynode and a relay say on
//! their connection — a QUIC stream, or WebSocket binary messages when UDP is blocked. Identity
//! is not in the frames: both transports run mutual TLS with node-id certificates, so the relay
//! knows who is talking before the first frame.
//!
//! ```text
//! frame   = type(1) length(2, BE) payload(length)         length <= MAX_PAYLOAD
//! 0x01 Register      flags(1: bit 0 = allocate a public TCP port, bit 1 = caller only,
//!                    bit 2 = local port follows) [local port(2)] token(utf-8, <= 255)
//! 0x02 Registered    observed addr(19) public_port(2, 0 = none)
//! 0x03 SendPacket    dst node(32) datagram(1..)            node -> relay: a QUIC packet to forward
//! 0x04 RecvPacket    src node(32) datagram(1..)            relay -> node
//! 0x05 PeerGone      node(32) reason(1: 0 unknown, 1 left)
//! 0x06 Ping          nonce(8)
//! 0x07 Pong          nonce(8)
//! 0x08 CallMeMaybe   peer node(32)                          node -> relay: ask the peer to punch
//! 0x09 Rendezvous    peer node(32) peer addr(19) punch_in_ms(2) [mapping(1): bit 0 = the
//!                    peer's NAT changed its port, bit 1 = yours did]
//! 0x0a TcpOpen       conn(4) client addr(19)                relay -> node: a client on the public port
//! 0x0b TcpData       conn(4) bytes(1..)
//! 0x0c TcpClose      conn(4) reset(1: 0 or 1)
//! 0x0d Error         code(2) has_node(1) [node(32)] message(utf-8, <= 1024)
//! 0x0e TcpCredit     conn(4) bytes(4)                       the sender may send this many more bytes
//! 0x0f Announce      record(1..1000)                        node -> relay: store my signed record
//! 0x10 Channel       key(8)                                 relay -> node (keynet-relay/3 only):
//!                    relayed packets may now travel as UDP datagrams (`proto::channel`)
//! ```
//! A *caller* registration (flag bit 1) is for a node that only calls nodes registered here (an
//! on-demand link to a callee's home relay): it needs no token, gets no public port, announces
//! nothing, and only nodes it sent to may send to it.
//! Public-port connections are flow-controlled per connection (the `relay::carried` module):
//! each side may have at most a window of `TcpData` bytes unacknowledged toward the other, and
//! `TcpCredit` returns what the receiver has written to its TCP socket.
//! Addresses as in [`crate::proto::punch`]. Node ids are their 32 raw bytes.

use std::net::SocketAddr;

use crate::nodeid::NodeId;
use crate::proto::punch::{get_addr, put_addr};

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 65_535;
/// Largest relayed QUIC datagram: an Ethernet MTU. quinn sends at most 1452 bytes (its path
/// MTU discovery's upper bound), and GSO batches are split into datagrams before they reach
/// the relay; anything larger is not a QUIC packet, and would let one frame hold 64 KiB of a
/// relay's queue.
pub const MAX_DATAGRAM: usize = 1500;
/// Longest error message.
pub const MAX_MESSAGE: usize = 1024;
/// Longest registration token.
pub const MAX_TOKEN: usize = 255;
/// Longest announced record: mainline's value limit.
pub const MAX_RECORD: usize = crate::discovery::record::MAX_RECORD_BYTES;
const HEADER: usize = 3;
const ADDR: usize = 19;
const NODE: usize = 32;

/// The `Error` status that tells a session a newer registration of its node id replaced it
/// (the newest wins; the older node stops retrying).
pub const REPLACED: u16 = 409;
/// The `Error` status of an `Announce` to a relay that stores no records (no DHT node).
pub const NO_RECORDS: u16 = 501;
/// A relay takes one `Announce` per session this often (nodes pace themselves a little slower).
pub const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a peer is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneReason {
    /// Never registered with this relay.
    Unknown,
    /// Was registered and left.
    Left,
}

/// What a relay saw of the NATs on both sides of a rendezvous: whether each one's observed
/// port differs from the port its socket is bound to. A NAT that changes ports often maps per
/// destination (symmetric), so punching needs the birthday technique
/// (`relay::link::birthday`); one that keeps them is most likely endpoint-independent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// The peer's NAT changed its port.
    pub peer_varies: bool,
    /// The receiver's own NAT changed its port.
    pub you_vary: bool,
}

/// One relay frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Register the sending node; optionally ask for a public TCP port.
    Register {
        /// Ask for a public TCP port carried to the node's server.
        want_port: bool,
        /// Register only to call nodes registered here (no token needed; not reachable).
        caller: bool,
        /// The port of the node's UDP socket (QUIC sessions): the relay compares it with the
        /// port it observes, to tell both sides of a rendezvous whose NAT changes ports.
        local_port: Option<u16>,
        /// The relay's registration token when it requires one (empty otherwise).
        token: String,
    },
    /// Registration accepted.
    Registered {
        /// Where the relay sees the node.
        observed: SocketAddr,
        /// The node's public port, if it asked for one.
        public_port: Option<u16>,
    },
    /// A QUIC packet for another node.
    SendPacket {
        /// The node it is for.
        dst: NodeId,
        /// The packet (ciphertext to the relay).
        datagram: Vec<u8>,
    },
    /// A QUIC packet from another node.
    RecvPacket {
        /// The node that sent it (proven by its registration).
        src: NodeId,
        /// The packet.
        datagram: Vec<u8>,
    },
    /// A node cannot be reached through this relay.
    PeerGone {
        /// The node.
        node: NodeId,
        /// Never registered, or left.
        reason: GoneReason,
    },
    /// Keepalive request.
    Ping {
        /// Echoed in the answer.
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// Ask a peer (through the relay) to punch toward the sender.
    CallMeMaybe {
        /// The peer.
        peer: NodeId,
    },
    /// Punch toward a peer.
    Rendezvous {
        /// The peer.
        peer: NodeId,
        /// Its UDP address as the relay sees it.
        peer_addr: SocketAddr,
        /// Start punching after this many milliseconds.
        punch_in_ms: u16,
        /// What the relay saw of both sides' NATs.
        mapping: Mapping,
    },
    /// A plain TCP client connected to the node's public port.
    TcpOpen {
        /// The relay's id for the TCP connection.
        conn: u32,
        /// The client's address.
        client: SocketAddr,
    },
    /// Bytes of a public-port TCP connection.
    TcpData {
        /// The TCP connection.
        conn: u32,
        /// The bytes (never empty).
        data: Vec<u8>,
    },
    /// The receiver of a public-port connection's bytes wrote them out: the sender may send
    /// `bytes` more.
    TcpCredit {
        /// The TCP connection.
        conn: u32,
        /// Credit returned.
        bytes: u32,
    },
    /// A public-port TCP connection ended.
    TcpClose {
        /// The TCP connection.
        conn: u32,
        /// Abortively (a reset), not with a FIN.
        reset: bool,
    },
    /// The other side refuses something; the connection may go on.
    Error {
        /// An HTTP-like status: 400 malformed, 401 not registered or bad token, 429 a limit.
        code: u16,
        /// The node the refusal is about, when it is about one (the sender's packets to it
        /// are refused): the node learns it without reading the message.
        node: Option<NodeId>,
        /// For people.
        message: String,
    },
    /// The session's UDP channel key (`keynet-relay/3` only, after `Registered`, QUIC only): from
    /// now on relayed packets may travel as channel datagrams (`proto::channel`) both ways.
    Channel {
        /// The key both sides put in this session's channel datagrams.
        key: crate::proto::channel::Key,
    },
    /// The node's signed discovery record, for a relay that runs a DHT node to store under the
    /// node's locator (for nodes whose own DHT traffic is blocked).
    Announce {
        /// The record (`discovery::record`), verified by the relay before it is stored.
        record: Vec<u8>,
    },
}

/// Why bytes are not a valid frame. A relay closes only the offending connection on these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Unknown frame type.
    #[error("unknown relay frame type {0:#04x}")]
    UnknownType(u8),
    /// The payload length does not fit the frame type.
    #[error("relay frame {kind:#04x} cannot have a {len}-byte payload")]
    Length {
        /// Frame type.
        kind: u8,
        /// Payload length.
        len: usize,
    },
    /// A malformed address.
    #[error("malformed address in relay frame {0:#04x}")]
    Address(u8),
    /// Unknown flag bits, or a boolean byte other than 0 or 1.
    #[error("invalid flags {flags:#04x} in relay frame {kind:#04x}")]
    Flags {
        /// Frame type.
        kind: u8,
        /// The flags byte.
        flags: u8,
    },
    /// An error message or token that is not UTF-8.
    #[error("relay error message or token is not UTF-8")]
    Utf8,
}

/// Why a frame cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload would exceed [`MAX_PAYLOAD`] (or the message [`MAX_MESSAGE`]).
    #[error("relay frame payload too large ({0} bytes)")]
    TooLarge(usize),
    /// Packets and data need at least one byte.
    #[error("relay frame needs a non-empty payload")]
    Empty,
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Self::Register { .. } => 0x01,
            Self::Registered { .. } => 0x02,
            Self::SendPacket { .. } => 0x03,
            Self::RecvPacket { .. } => 0x04,
            Self::PeerGone { .. } => 0x05,
            Self::Ping { .. } => 0x06,
            Self::Pong { .. } => 0x07,
            Self::CallMeMaybe { .. } => 0x08,
            Self::Rendezvous { .. } => 0x09,
            Self::TcpOpen { .. } => 0x0a,
            Self::TcpData { .. } => 0x0b,
            Self::TcpClose { .. } => 0x0c,
            Self::Error { .. } => 0x0d,
            Self::TcpCredit { .. } => 0x0e,
            Self::Announce { .. } => 0x0f,
            Self::Channel { .. } => 0x10,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut p = Vec::new();
        let addr = |p: &mut Vec<u8>, a: SocketAddr| {
            let mut b = [0u8; ADDR];
            put_addr(&mut b, Some(a));
            p.extend_from_slice(&b);
        };
        match self {
            Self::Register {
                want_port,
                caller,
                local_port,
                token,
            } => {
                if token.len() > MAX_TOKEN {
                    return Err(EncodeError::TooLarge(token.len()));
                }
                p.push(*want_port as u8 | (*caller as u8) << 1 | (local_port.is_some() as u8) << 2);
                if let Some(port) = local_port {
                    p.extend_from_slice(&port.to_be_bytes());
                }
                p.extend_from_slice(token.as_bytes());
            }
            Self::Registered {
                observed,
                public_port,
            } => {
                addr(&mut p, *observed);
                p.extend_from_slice(&public_port.unwrap_or(0).to_be_bytes());
            }
            Self::SendPacket {
                dst: node,
                datagram,
            }
            | Self::RecvPacket {
                src: node,
                datagram,
            } => {
                if datagram.is_empty() {
                    return Err(EncodeError::Empty);
                }
                if datagram.len() > MAX_DATAGRAM {
                    return Err(EncodeError::TooLarge(datagram.len()));
                }
                p.extend_from_slice(node.as_bytes());
                p.extend_from_slice(datagram);
            }
            Self::PeerGone { node, reason } => {
                p.extend_from_slice(node.as_bytes());
                p.push(matches!(reason, GoneReason::Left) as u8);
            }
            Self::Ping { nonce } | Self::Pong { nonce } => {
                p.extend_from_slice(&nonce.to_be_bytes())
            }
            Self::Channel { key } => p.extend_from_slice(key),
            Self::CallMeMaybe { peer } => p.extend_from_slice(peer.as_bytes()),
            Self::Rendezvous {
                peer,
                peer_addr,
                punch_in_ms,
                mapping,
            } => {
                p.extend_from_slice(peer.as_bytes());
                addr(&mut p, *peer_addr);
                p.extend_from_slice(&punch_in_ms.to_be_bytes());
                p.push(mapping.peer_varies as u8 | (mapping.you_vary as u8) << 1);
            }
            Self::TcpOpen { conn, client } => {
                p.extend_from_slice(&conn.to_be_bytes());
                addr(&mut p, *client);
            }
            Self::TcpData { conn, data } => {
                if data.is_empty() {
                    return Err(EncodeError::Empty);
                }
                p.extend_from_slice(&conn.to_be_bytes());
                p.extend_from_slice(data);
            }
            Self::TcpClose { conn, reset } => {
                p.extend_from_slice(&conn.to_be_bytes());
                p.push(*reset as u8);
            }
            Self::TcpCredit { conn, bytes } => {
                p.extend_from_slice(&conn.to_be_bytes());
                p.extend_from_slice(&bytes.to_be_bytes());
            }
            Self::Error {
                code,
                node,
                message,
            } => {
                if message.len() > MAX_MESSAGE {
                    return Err(EncodeError::TooLarge(message.len()));
                }
                p.extend_from_slice(&code.to_be_bytes());
                match node {
                    Some(n) => {
                        p.push(1);
                        p.extend_from_slice(n.as_bytes());
                    }
                    None => p.push(0),
                }
                p.extend_from_slice(message.as_bytes());
            }
            Self::Announce { record } => {
                if record.is_empty() {
                    return Err(EncodeError::Empty);
                }
                if record.len() > MAX_RECORD {
                    return Err(EncodeError::TooLarge(record.len()));
                }
                p.extend_from_slice(record);
            }
        }
        if p.len() > MAX_PAYLOAD {
            return Err(EncodeError::TooLarge(p.len()));
        }
        out.push(self.kind());
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(&p);
        Ok(())
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` until it is whole, then the frame
    /// and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let kind = buf[0];
        if !(0x01..=0x10).contains(&kind) {
            return Err(FrameError::UnknownType(kind));
        }
        let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let p = &buf[HEADER..HEADER + len];
        let bad_len = || FrameError::Length { kind, len };
        let exact = |n: usize| if len == n { Ok(()) } else { Err(bad_len()) };
        let at_least = |n: usize| if len >= n { Ok(()) } else { Err(bad_len()) };
        let node = |b: &[u8]| NodeId::from_bytes(b[..NODE].try_into().expect("32 bytes"));
        let addr = |b: &[u8]| {
            get_addr(&b[..ADDR])
                .ok()
                .flatten()
                .ok_or(FrameError::Address(kind))
        };
        let flag = |b: u8| match b {
            0 => Ok(false),
            1 => Ok(true),
            flags => Err(FrameError::Flags { kind, flags }),
        };
        let u16_at = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        let frame = match kind {
            0x01 => {
                at_least(1)?;
                if p[0] & !0b111 != 0 {
                    return Err(FrameError::Flags { kind, flags: p[0] });
                }
                let (local_port, token) = if p[0] & 4 != 0 {
                    at_least(3)?;
                    (Some(u16_at(1)), 3)
                } else {
                    (None, 1)
                };
                if len - token > MAX_TOKEN {
                    return Err(bad_len());
                }
                Self::Register {
                    want_port: p[0] & 1 != 0,
                    caller: p[0] & 2 != 0,
                    local_port,
                    token: std::str::from_utf8(&p[token..])
                        .map_err(|_| FrameError::Utf8)?
                        .to_string(),
                }
            }
            0x02 => {
                exact(ADDR + 2)?;
                let port = u16_at(ADDR);
                Self::Registered {
                    observed: addr(p)?,
                    public_port: (port != 0).then_some(port),
                }
            }
            0x03 | 0x04 => {
                at_least(NODE + 1)?;
                if len > NODE + MAX_DATAGRAM {
                    return Err(bad_len());
                }
                let (n, d) = (node(p), p[NODE..].to_vec());
                if kind == 0x03 {
                    Self::SendPacket {
                        dst: n,
                        datagram: d,
                    }
                } else {
                    Self::RecvPacket {
                        src: n,
                        datagram: d,
                    }
                }
            }
            0x05 => {
                exact(NODE + 1)?;
                let reason = if flag(p[NODE])? {
                    GoneReason::Left
                } else {
                    GoneReason::Unknown
                };
                Self::PeerGone {
                    node: node(p),
                    reason,
                }
            }
            0x06 | 0x07 => {
                exact(8)?;
                let nonce = u64::from_be_bytes(p.try_into().expect("8 bytes"));
                if kind == 0x06 {
                    Self::Ping { nonce }
                } else {
                    Self::Pong { nonce }
                }
            }
            0x08 => {
                exact(NODE)?;
                Self::CallMeMaybe { peer: node(p) }
            }
            0x09 => {
                // Without the mapping byte: a relay that does not compare ports.
                let mapping = match len {
                    l if l == NODE + ADDR + 2 => Mapping::default(),
                    l if l == NODE + ADDR + 3 => {
                        let m = p[NODE + ADDR + 2];
                        if m & !0b11 != 0 {
                            return Err(FrameError::Flags { kind, flags: m });
                        }
                        Mapping {
                            peer_varies: m & 1 != 0,
                            you_vary: m & 2 != 0,
                        }
                    }
                    _ => return Err(bad_len()),
                };
                Self::Rendezvous {
                    peer: node(p),
                    peer_addr: addr(&p[NODE..])?,
                    punch_in_ms: u16_at(NODE + ADDR),
                    mapping,
                }
            }
            0x0a => {
                exact(4 + ADDR)?;
                Self::TcpOpen {
                    conn: u32_at(0),
                    client: addr(&p[4..])?,
                }
            }
            0x0b => {
                at_least(5)?;
                Self::TcpData {
                    conn: u32_at(0),
                    data: p[4..].to_vec(),
                }
            }
            0x0c => {
                exact(5)?;
                Self::TcpClose {
                    conn: u32_at(0),
                    reset: flag(p[4])?,
                }
            }
            0x0e => {
                exact(8)?;
                Self::TcpCredit {
                    conn: u32_at(0),
                    bytes: u32_at(4),
                }
            }
            0x0f => {
                at_least(1)?;
                if len > MAX_RECORD {
                    return Err(bad_len());
                }
                Self::Announce { record: p.to_vec() }
            }
            0x10 => {
                exact(8)?;
                Self::Channel {
                    key: p.try_into().expect("8 bytes"),
                }
            }
            _ => {
                at_least(3)?;
                let (node, text) = if flag(p[2])? {
                    at_least(3 + NODE)?;
                    (Some(node(&p[3..])), 3 + NODE)
                } else {
                    (None, 3)
                };
                if len - text > MAX_MESSAGE {
                    return Err(bad_len());
                }
                let message = std::str::from_utf8(&p[text..])
                    .map_err(|_| FrameError::Utf8)?
                    .to_string();
                Self::Error {
                    code: u16_at(0),
                    node,
                    message,
                }
            }
        };
        Ok(Some((frame, HEADER + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(f: &Frame) -> String {
        let mut out = Vec::new();
        f.encode(&mut out).unwrap();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    #[test]
    fn snapshots() {
        assert_eq!(
            hex(&Frame::Register {
                want_port: true,
                caller: false,
                local_port: None,
                token: String::new()
            }),
            "01000101"
        );
        assert_eq!(
            hex(&Frame::Register {
                want_port: false,
                caller: false,
                local_port: None,
                token: "ab".into()
            }),
            "010003006162"
        );
        assert_eq!(
            hex(&Frame::Register {
                want_port: false,
                caller: true,
                local_port: None,
                token: String::new()
            }),
            "01000102"
        );
        assert_eq!(
            hex(&Frame::Register {
                want_port: false,
                caller: false,
                local_port: Some(0x1234),
                token: "a".into()
            }),
            "01000404123461"
        );
        // The mapping byte: bit 0 the peer's NAT changed its port, bit 1 the receiver's.
        let mut r = Vec::new();
        Frame::Rendezvous {
            peer: id(1),
            peer_addr: "192.0.2.1:9".parse().unwrap(),
            punch_in_ms: 0,
            mapping: Mapping {
                peer_varies: true,
                you_vary: false,
            },
        }
        .encode(&mut r)
        .unwrap();
        assert_eq!(r.len(), 3 + 32 + 19 + 2 + 1);
        assert_eq!(*r.last().unwrap(), 1);
        let mut unknown_bit = r.clone();
        *unknown_bit.last_mut().unwrap() = 4;
        assert_eq!(
            Frame::decode(&unknown_bit),
            Err(FrameError::Flags { kind: 9, flags: 4 })
        );
        let mut longer = r.clone();
        longer.push(0);
        longer[2] += 1;
        assert!(matches!(
            Frame::decode(&longer),
            Err(FrameError::Length { kind: 9, .. })
        ));
        // An empty record is refused both ways.
        assert_eq!(
            Frame::decode(&[0x0f, 0, 0]),
            Err(FrameError::Length { kind: 0x0f, len: 0 })
        );
        assert_eq!(
            Frame::Announce { record: vec![] }.encode(&mut Vec::new()),
            Err(EncodeError::Empty)
        );
        // The longest token fits beside a local port.
        let full = Frame::Register {
            want_port: false,
            caller: false,
            local_port: Some(9),
            token: "t".repeat(MAX_TOKEN),
        };
        let mut b = Vec::new();
        full.encode(&mut b).unwrap();
        assert_eq!(Frame::decode(&b), Ok(Some((full, b.len()))));
        // A rendezvous from a relay that does not compare ports decodes with no mapping seen.
        let mut old = Vec::new();
        Frame::Rendezvous {
            peer: id(1),
            peer_addr: "192.0.2.1:9".parse().unwrap(),
            punch_in_ms: 0,
            mapping: Mapping::default(),
        }
        .encode(&mut old)
        .unwrap();
        old.pop();
        old[2] -= 1;
        assert!(matches!(
            Frame::decode(&old),
            Ok(Some((Frame::Rendezvous { mapping, .. }, _))) if mapping == Mapping::default()
        ));
        assert_eq!(
            hex(&Frame::Announce {
                record: b"KNR2".to_vec()
            }),
            "0f00044b4e5232"
        );
        // Unknown flag bits and records over mainline's limit are refused.
        assert_eq!(
            Frame::decode(&[0x01, 0, 1, 0b1000]),
            Err(FrameError::Flags {
                kind: 1,
                flags: 0b1000
            })
        );
        let mut big = vec![0x0f, 0x03, 0xe9];
        big.extend([0u8; 1001]);
        assert!(matches!(
            Frame::decode(&big),
            Err(FrameError::Length { kind: 0x0f, .. })
        ));
        assert_eq!(
            Frame::Announce {
                record: vec![0; 1001]
            }
            .encode(&mut Vec::new()),
            Err(EncodeError::TooLarge(1001))
        );
        assert_eq!(
            hex(&Frame::Ping {
                nonce: 0x0102030405060708
            }),
            "0600080102030405060708"
        );
        assert_eq!(hex(&Frame::Pong { nonce: 1 }), "0700080000000000000001");
        assert_eq!(
            hex(&Frame::Registered {
                observed: "203.0.113.7:443".parse().unwrap(),
                public_port: Some(40000)
            }),
            format!(
                "020015{}{}",
                "0400000000000000000000ffffcb00710701bb", "9c40"
            )
        );
        assert_eq!(
            hex(&Frame::SendPacket {
                dst: id(0xab),
                datagram: vec![0xc0, 0x01]
            }),
            format!("030022{}c001", "ab".repeat(32))
        );
        assert_eq!(
            hex(&Frame::PeerGone {
                node: id(1),
                reason: GoneReason::Left
            }),
            format!("050021{}01", "01".repeat(32))
        );
        assert_eq!(
            hex(&Frame::TcpClose {
                conn: 7,
                reset: false
            }),
            "0c00050000000700"
        );
        assert_eq!(
            hex(&Frame::TcpCredit {
                conn: 7,
                bytes: 65536
            }),
            "0e00080000000700010000"
        );
        assert_eq!(
            hex(&Frame::Error {
                code: 403,
                node: None,
                message: "no".into()
            }),
            "0d00050193006e6f"
        );
    }

    #[test]
    fn a_relayed_datagram_is_at_most_an_mtu() {
        let mut out = Vec::new();
        let packet = |n| Frame::SendPacket {
            dst: NodeId::from_bytes([1; 32]),
            datagram: vec![7; n],
        };
        assert!(packet(MAX_DATAGRAM).encode(&mut out).is_ok());
        assert_eq!(
            packet(MAX_DATAGRAM + 1).encode(&mut Vec::new()),
            Err(EncodeError::TooLarge(MAX_DATAGRAM + 1))
        );
        // A peer that sends one anyway sends a malformed frame (its session is closed).
        let len = (NODE + MAX_DATAGRAM + 1) as u16;
        let mut big = vec![0x03];
        big.extend_from_slice(&len.to_be_bytes());
        big.resize(3 + len as usize, 0);
        assert_eq!(
            Frame::decode(&big),
            Err(FrameError::Length {
                kind: 0x03,
                len: len as usize
            })
        );
        assert!(matches!(Frame::decode(&out), Ok(Some(_))));
    }

    #[test]
    fn malformed_frames_are_refused_with_typed_errors() {
        let dec = |b: &[u8]| Frame::decode(b);
        assert_eq!(dec(&[0x00, 0, 0]), Err(FrameError::UnknownType(0)));
        assert_eq!(dec(&[0x42, 0, 0]), Err(FrameError::UnknownType(0x42)));
        assert_eq!(
            dec(&[0x01, 0, 0]),
            Err(FrameError::Length { kind: 1, len: 0 })
        );
        assert_eq!(dec(&[0x01, 0, 2, 0, 0xff]), Err(FrameError::Utf8));
        let mut long_token = vec![0x01, 1, 1, 0];
        long_token.extend_from_slice(&[b'a'; 256]);
        assert_eq!(
            dec(&long_token),
            Err(FrameError::Length { kind: 1, len: 257 })
        );
        assert_eq!(
            dec(&[0x01, 0, 1, 8]),
            Err(FrameError::Flags { kind: 1, flags: 8 })
        );
        // The local-port flag without the port.
        assert_eq!(
            dec(&[0x01, 0, 2, 4, 1]),
            Err(FrameError::Length { kind: 1, len: 2 })
        );
        assert_eq!(
            dec(&[0x06, 0, 7, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::Length { kind: 6, len: 7 })
        );
        let mut empty_packet = vec![0x03, 0, 32];
        empty_packet.extend_from_slice(&[9; 32]);
        assert_eq!(
            dec(&empty_packet),
            Err(FrameError::Length { kind: 3, len: 32 })
        );
        let mut bad_addr = vec![0x0a, 0, 23, 0, 0, 0, 1];
        bad_addr.extend_from_slice(&[7; 19]);
        assert_eq!(dec(&bad_addr), Err(FrameError::Address(0x0a)));
        assert_eq!(
            dec(&[0x0d, 0, 5, 0, 1, 0, 0xff, 0xfe]),
            Err(FrameError::Utf8)
        );
        let mut long = vec![0x0d, 0x04, 0x04, 0, 1, 0];
        long.resize(3 + 0x0404, b'a');
        assert_eq!(
            dec(&long),
            Err(FrameError::Length {
                kind: 0x0d,
                len: 0x0404
            })
        );
        // A refusal that names a node must carry all of it.
        assert_eq!(
            dec(&[0x0d, 0, 4, 0, 1, 1, 7]),
            Err(FrameError::Length { kind: 0x0d, len: 4 })
        );
        let mut out = Vec::new();
        assert_eq!(
            Frame::TcpData {
                conn: 1,
                data: vec![]
            }
            .encode(&mut out),
            Err(EncodeError::Empty)
        );
        assert_eq!(
            Frame::TcpData {
                conn: 1,
                data: vec![0; MAX_PAYLOAD]
            }
            .encode(&mut out),
            Err(EncodeError::TooLarge(MAX_PAYLOAD + 4))
        );
        assert!(out.is_empty(), "nothing is written for a refused frame");
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            any::<std::net::SocketAddrV4>().prop_map(SocketAddr::V4),
            any::<std::net::SocketAddrV6>()
                .prop_map(|a| SocketAddr::new(std::net::IpAddr::V6(*a.ip()), a.port())),
        ]
        .prop_filter("v4-mapped v6 decodes as v4", |a| match a {
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_none(),
            _ => true,
        })
    }

    fn node() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId::from_bytes)
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..=MAX_DATAGRAM)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<bool>(),
                any::<bool>(),
                any::<Option<u16>>(),
                "[a-z0-9]{0,40}"
            )
                .prop_map(|(want_port, caller, local_port, token)| Frame::Register {
                    want_port,
                    caller,
                    local_port,
                    token
                }),
            proptest::collection::vec(any::<u8>(), 1..=MAX_RECORD)
                .prop_map(|record| Frame::Announce { record }),
            (addr(), any::<u16>()).prop_map(|(observed, p)| Frame::Registered {
                observed,
                public_port: (p != 0).then_some(p)
            }),
            (node(), bytes()).prop_map(|(dst, datagram)| Frame::SendPacket { dst, datagram }),
            (node(), bytes()).prop_map(|(src, datagram)| Frame::RecvPacket { src, datagram }),
            (node(), any::<bool>()).prop_map(|(node, l)| Frame::PeerGone {
                node,
                reason: if l {
                    GoneReason::Left
                } else {
                    GoneReason::Unknown
                }
            }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            any::<[u8; 8]>().prop_map(|key| Frame::Channel { key }),
            node().prop_map(|peer| Frame::CallMeMaybe { peer }),
            (node(), addr(), any::<u16>(), any::<(bool, bool)>()).prop_map(
                |(peer, peer_addr, punch_in_ms, (peer_varies, you_vary))| Frame::Rendezvous {
                    peer,
                    peer_addr,
                    punch_in_ms,
                    mapping: Mapping {
                        peer_varies,
                        you_vary
                    },
                }
            ),
            (any::<u32>(), addr()).prop_map(|(conn, client)| Frame::TcpOpen { conn, client }),
            (any::<u32>(), bytes()).prop_map(|(conn, data)| Frame::TcpData { conn, data }),
            (any::<u32>(), any::<u32>()).prop_map(|(conn, bytes)| Frame::TcpCredit { conn, bytes }),
            (any::<u32>(), any::<bool>()).prop_map(|(conn, reset)| Frame::TcpClose { conn, reset }),
            (any::<u16>(), proptest::option::of(node()), "[a-z ]{0,100}").prop_map(
                |(code, node, message)| Frame::Error {
                    code,
                    node,
                    message
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_and_incomplete_until_whole(frames in proptest::collection::vec(frame(), 1..5)) {
            let mut wire = Vec::new();
            for f in &frames {
                f.encode(&mut wire).unwrap();
            }
            let mut at = 0;
            for f in &frames {
                let (got, used) = Frame::decode(&wire[at..]).unwrap().unwrap();
                prop_assert_eq!(&got, f);
                // Every proper prefix of the frame is incomplete, never an error.
                for cut in 0..used {
                    prop_assert_eq!(Frame::decode(&wire[at..at + cut]), Ok(None));
                }
                at += used;
            }
            prop_assert_eq!(at, wire.len());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Frame::decode(&b);
        }
    }
}
