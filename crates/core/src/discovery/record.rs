//! What keynet stores on the DHT, and how node ids map to DHT keys.
//!
//! Three kinds of entries, all hints: the TLS pin on the node id decides in every case.
//! - a BEP 5 peer under [`info_hash`] of the node id: the storing DHT node records the
//!   announcer's source IP, so it is the public IP. Anyone can announce there; many announcers
//!   sit side by side and none displaces another.
//! - a [`Record`] as a BEP 44 mutable item under the node's own Ed25519 key, salt [`SALT`]. Only
//!   the key owner can write it and a newer one replaces an older one, but a caller needs the key
//!   first (a node id is a hash of it), so it is read once a TLS handshake proved the key.
//! - the same record under the node's **locator** ([`locator_seed`]): a key pair derived from the
//!   node id alone, so anyone can find it on first contact, and anyone could write there. The
//!   record inside is signed by the node's own key and carries that key, so a forged one fails
//!   [`Record::open`]; what a writer could do is pin a stale or junk item with a high sequence
//!   number. The salt names the hour ([`locator_salt`]), so such pinning lasts an hour at most.
//!
//! A record says how to reach the node: its direct addresses, the public address a relay saw,
//! and up to [`MAX_RELAYS`] relays it is registered with, the first its home relay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::nodeid::NodeId;

/// Salt of the record under the node's own key (and the version of its format).
pub const SALT: &[u8] = b"keynet/2";
/// Most direct addresses one record carries.
pub const MAX_ADDRS: usize = 8;
/// Most relays one record names (the home relay and two more).
pub const MAX_RELAYS: usize = 3;
/// Mainline's limit on a BEP 44 value.
pub const MAX_RECORD_BYTES: usize = 1000;
/// How long a locator salt names (one hour).
pub const LOCATOR_EPOCH_SECS: u64 = 3600;
const MAGIC: &[u8; 3] = b"KNR";
const VERSION: u8 = b'2';
/// What the node's signature covers besides the record: a domain, so it is never valid elsewhere.
const SIGNED_DOMAIN: &[u8] = b"keynet record v2\0";
const SIG_LEN: usize = 64;

/// DER of an Ed25519 SubjectPublicKeyInfo, up to the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The BEP 5 info hash a node id is announced under: SHA-1 over a keynet label and the id.
pub fn info_hash(node: &NodeId) -> [u8; 20] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(b"keynet/1 node\0");
    ctx.update(node.as_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The BEP 5 info hash relays of the network `network` are published under: SHA-1 over a
/// keynet label and the name (an unrelated user of the public DHT picks another name).
pub fn relay_topic(network: &str) -> [u8; 20] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(b"keynet/2 relays\0");
    ctx.update(network.as_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The seed of `node`'s locator key pair: derived from the node id alone, so a caller that knows
/// only the id finds the record (and so could anyone write there: see the module docs).
pub fn locator_seed(node: &NodeId) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"keynet/2 locator\0");
    ctx.update(node.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The locator epoch (hour) a Unix time in seconds falls in.
pub fn locator_epoch(unix_secs: u64) -> u64 {
    unix_secs / LOCATOR_EPOCH_SECS
}

/// The BEP 44 salt of the locator record of `epoch`.
pub fn locator_salt(epoch: u64) -> Vec<u8> {
    format!("keynet/2 locator {epoch}").into_bytes()
}

/// The node id of an Ed25519 public key.
pub fn node_id_of_ed25519(public: &[u8; 32]) -> NodeId {
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public);
    NodeId::from_spki_der(&spki)
}

/// The raw Ed25519 key of a SubjectPublicKeyInfo, if it is one.
pub fn ed25519_of_spki(spki: &[u8]) -> Option<[u8; 32]> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    key.try_into().ok()
}

/// The 32-byte seed of an Ed25519 private key in PKCS#8 (v1 or v2) DER, if it is one.
pub fn ed25519_seed_of_pkcs8(der: &[u8]) -> Option<[u8; 32]> {
    // SEQUENCE { INTEGER 0|1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING(32) } ..}
    const AFTER_LEN: [u8; 3] = [0x02, 0x01, 0x00];
    const ALG: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
    const KEY: [u8; 4] = [0x04, 0x22, 0x04, 0x20];
    if der.len() < 2 + 3 + 7 + 4 + 32 || der[0] != 0x30 || der[1] >= 0x80 {
        return None;
    }
    let body = &der[2..];
    if body[..2] != AFTER_LEN[..2] || body[2] > 1 {
        return None;
    }
    let rest = body[3..].strip_prefix(&ALG[..])?;
    let rest = rest.strip_prefix(&KEY[..])?;
    rest.get(..32)?.try_into().ok()
}

/// The Ed25519 public key of a seed.
pub fn ed25519_public_of_seed(seed: &[u8; 32]) -> [u8; 32] {
    use ring::signature::KeyPair;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes");
    pair.public_key().as_ref().try_into().expect("32 bytes")
}

/// Why bytes are not a [`Record`] (or a record cannot be signed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Does not start with the record magic.
    #[error("not a keynet record")]
    Magic,
    /// A keynet record of another format version (the digit after `KNR`).
    #[error("keynet record version {0:?} is not supported (this build reads version '2')")]
    Version(char),
    /// Ends before its declared content.
    #[error("record truncated")]
    Truncated,
    /// An address family other than 4 or 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// Too many addresses or relays, unknown flags, or bytes after the last field.
    #[error("record malformed: {0}")]
    Malformed(&'static str),
    /// Larger than mainline stores ([`MAX_RECORD_BYTES`]).
    #[error("record of {0} bytes exceeds the DHT's {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The node's signature does not verify.
    #[error("record signature invalid")]
    Signature,
    /// Signing with a key that is not the record's node id.
    #[error("the signing key is not node {0}'s key")]
    KeyMismatch(NodeId),
}

/// A relay a node is registered with, as its record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHint {
    /// The relay's node id (pinned when dialling it).
    pub node_id: NodeId,
    /// Its QUIC (UDP) address.
    pub addr: SocketAddr,
    /// Its TLS/WebSocket port on the same IP.
    pub tcp_port: u16,
    /// The node reaches it over QUIC.
    pub quic: bool,
    /// The node reaches it over TLS/WebSocket.
    pub websocket: bool,
}

/// A node's announcement: which node, how to reach it, signed when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node the record speaks for (the signing key's node id).
    pub node_id: NodeId,
    /// When the node signed it (Unix ms): the newest record wins.
    pub signed_at_ms: u64,
    /// The node's public UDP address as its home relay saw it.
    pub observed: Option<SocketAddr>,
    /// Where its QUIC socket can be reached directly, best first.
    pub addrs: Vec<SocketAddr>,
    /// Relays it is registered with, its home relay first.
    pub relays: Vec<RelayHint>,
}

/// A record as read, before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The record (its node id is the key's).
    pub record: Record,
    /// The Ed25519 key it claims to be signed with.
    pub key: [u8; 32],
    /// The signature over [`SIGNED_DOMAIN`] and every byte before it.
    pub signature: [u8; SIG_LEN],
}

impl Record {
    /// Encodes and signs the record with `seed`, the node's Ed25519 key:
    /// `KNR2`, key (32), signed-at ms (8), observed (address or 0), address count (1) and
    /// addresses, relay count (1) and relays (node id, address, TCP port, flags), signature (64).
    /// An address is family 4|6, IP, port; integers are big endian.
    pub fn sign(&self, seed: &[u8; 32]) -> Result<Vec<u8>, RecordError> {
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes");
        let key = ed25519_public_of_seed(seed);
        if node_id_of_ed25519(&key) != self.node_id {
            return Err(RecordError::KeyMismatch(self.node_id));
        }
        let mut out = self.body(&key)?;
        let mut signed = SIGNED_DOMAIN.to_vec();
        signed.extend_from_slice(&out);
        out.extend_from_slice(pair.sign(&signed).as_ref());
        if out.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(out.len()));
        }
        Ok(out)
    }

    fn body(&self, key: &[u8; 32]) -> Result<Vec<u8>, RecordError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::Malformed("too many addresses"));
        }
        if self.relays.len() > MAX_RELAYS {
            return Err(RecordError::Malformed("too many relays"));
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(key);
        out.extend_from_slice(&self.signed_at_ms.to_be_bytes());
        match self.observed {
            Some(a) => put_addr(&mut out, a),
            None => out.push(0),
        }
        out.push(self.addrs.len() as u8);
        for a in &self.addrs {
            put_addr(&mut out, *a);
        }
        out.push(self.relays.len() as u8);
        for r in &self.relays {
            out.extend_from_slice(r.node_id.as_bytes());
            put_addr(&mut out, r.addr);
            out.extend_from_slice(&r.tcp_port.to_be_bytes());
            out.push(r.quic as u8 | (r.websocket as u8) << 1);
        }
        Ok(out)
    }

    /// Reads a record without checking its signature (see [`Record::open`]).
    pub fn parse(bytes: &[u8]) -> Result<Parsed, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let rest = bytes.strip_prefix(&MAGIC[..]).ok_or(RecordError::Magic)?;
        let (version, rest) = split(rest, 1)?;
        if version[0] != VERSION {
            return Err(RecordError::Version(version[0] as char));
        }
        let (key, rest) = split(rest, 32)?;
        let key: [u8; 32] = key.try_into().expect("32 bytes");
        let (at, rest) = split(rest, 8)?;
        let signed_at_ms = u64::from_be_bytes(at.try_into().expect("8 bytes"));
        let (observed, rest) = match rest.first() {
            Some(0) => (None, &rest[1..]),
            _ => {
                let (a, r) = take_addr(rest)?;
                (Some(a), r)
            }
        };
        let (count, mut rest) = split(rest, 1)?;
        if count[0] as usize > MAX_ADDRS {
            return Err(RecordError::Malformed("too many addresses"));
        }
        let mut addrs = Vec::with_capacity(count[0] as usize);
        for _ in 0..count[0] {
            let (a, r) = take_addr(rest)?;
            addrs.push(a);
            rest = r;
        }
        let (count, mut rest) = split(rest, 1)?;
        if count[0] as usize > MAX_RELAYS {
            return Err(RecordError::Malformed("too many relays"));
        }
        let mut relays = Vec::with_capacity(count[0] as usize);
        for _ in 0..count[0] {
            let (id, r) = split(rest, 32)?;
            let node_id = NodeId::from_bytes(id.try_into().expect("32 bytes"));
            let (addr, r) = take_addr(r)?;
            let (port, r) = split(r, 2)?;
            let (flags, r) = split(r, 1)?;
            if flags[0] & !3 != 0 {
                return Err(RecordError::Malformed("unknown relay flags"));
            }
            relays.push(RelayHint {
                node_id,
                addr,
                tcp_port: u16::from_be_bytes([port[0], port[1]]),
                quic: flags[0] & 1 != 0,
                websocket: flags[0] & 2 != 0,
            });
            rest = r;
        }
        let (signature, rest) = split(rest, SIG_LEN)?;
        if !rest.is_empty() {
            return Err(RecordError::Malformed("bytes after the signature"));
        }
        Ok(Parsed {
            record: Self {
                node_id: node_id_of_ed25519(&key),
                signed_at_ms,
                observed,
                addrs,
                relays,
            },
            key,
            signature: signature.try_into().expect("64 bytes"),
        })
    }

    /// Reads a record and checks the node's signature: a record that opens was written by the
    /// holder of its node id's key, whoever stored it.
    pub fn open(bytes: &[u8]) -> Result<Self, RecordError> {
        let parsed = Self::parse(bytes)?;
        let mut signed = SIGNED_DOMAIN.to_vec();
        signed.extend_from_slice(&bytes[..bytes.len() - SIG_LEN]);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &parsed.key)
            .verify(&signed, &parsed.signature)
            .map_err(|_| RecordError::Signature)?;
        Ok(parsed.record)
    }
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn take_addr(b: &[u8]) -> Result<(SocketAddr, &[u8]), RecordError> {
    let (family, r) = split(b, 1)?;
    let (ip, r) = match family[0] {
        4 => {
            let (ip, r) = split(r, 4)?;
            let o: [u8; 4] = ip.try_into().expect("4 bytes");
            (IpAddr::V4(Ipv4Addr::from(o)), r)
        }
        6 => {
            let (ip, r) = split(r, 16)?;
            let o: [u8; 16] = ip.try_into().expect("16 bytes");
            (IpAddr::V6(Ipv6Addr::from(o)), r)
        }
        f => return Err(RecordError::Family(f)),
    };
    let (port, r) = split(r, 2)?;
    Ok((
        SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])),
        r,
    ))
}

fn split(b: &[u8], n: usize) -> Result<(&[u8], &[u8]), RecordError> {
    if b.len() < n {
        return Err(RecordError::Truncated);
    }
    Ok(b.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{generate_identity, LoadedIdentity};
    use proptest::prelude::*;

    const SEED: [u8; 32] = [3; 32];

    fn me() -> NodeId {
        node_id_of_ed25519(&ed25519_public_of_seed(&SEED))
    }

    fn sample() -> Record {
        Record {
            node_id: me(),
            signed_at_ms: 0x0102_0304_0506_0708,
            observed: Some("203.0.113.2:40001".parse().unwrap()),
            addrs: vec!["1.2.3.4:443".parse().unwrap(), "[::1]:5".parse().unwrap()],
            relays: vec![RelayHint {
                node_id: NodeId::from_bytes([9; 32]),
                addr: "203.0.113.100:7000".parse().unwrap(),
                tcp_port: 7000,
                quic: true,
                websocket: true,
            }],
        }
    }

    #[test]
    fn record_snapshot() {
        let bytes = sample().sign(&SEED).unwrap();
        let mut want = b"KNR2".to_vec();
        want.extend_from_slice(&ed25519_public_of_seed(&SEED));
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[4, 203, 0, 113, 2, 0x9c, 0x41]);
        want.extend_from_slice(&[2, 4, 1, 2, 3, 4, 0x01, 0xbb, 6]);
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 0, 5]);
        want.push(1);
        want.extend_from_slice(&[9; 32]);
        want.extend_from_slice(&[4, 203, 0, 113, 100, 0x1b, 0x58, 0x1b, 0x58, 3]);
        assert_eq!(&bytes[..bytes.len() - 64], &want[..]);
        assert_eq!(bytes.len(), want.len() + 64);
        assert_eq!(Record::open(&bytes).unwrap(), sample());
    }

    #[test]
    fn the_largest_record_fits_the_dht() {
        let v6 = |p: u16| SocketAddr::new("2001:db8::1".parse().unwrap(), p);
        let r = Record {
            addrs: (0..MAX_ADDRS as u16).map(v6).collect(),
            relays: (0..MAX_RELAYS as u16)
                .map(|p| RelayHint {
                    node_id: NodeId::from_bytes([1; 32]),
                    addr: v6(p),
                    tcp_port: p,
                    quic: true,
                    websocket: false,
                })
                .collect(),
            observed: Some(v6(9)),
            ..sample()
        };
        let bytes = r.sign(&SEED).unwrap();
        assert!(bytes.len() <= MAX_RECORD_BYTES, "{}", bytes.len());
        assert_eq!(Record::open(&bytes).unwrap(), r);
        let mut over = r.clone();
        over.addrs.push(v6(1));
        assert_eq!(
            over.sign(&SEED),
            Err(RecordError::Malformed("too many addresses"))
        );
    }

    #[test]
    fn malformed_records_are_typed_errors() {
        let good = sample().sign(&SEED).unwrap();
        assert_eq!(Record::open(b"XXXX"), Err(RecordError::Magic));
        let mut old = good.clone();
        old[3] = b'1';
        assert_eq!(Record::open(&old), Err(RecordError::Version('1')));
        assert_eq!(
            Record::open(&good[..good.len() - 1]),
            Err(RecordError::Truncated)
        );
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            Record::open(&extra),
            Err(RecordError::Malformed(_))
        ));
        let mut family = good.clone();
        family[44] = 5;
        assert_eq!(Record::open(&family), Err(RecordError::Family(5)));
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert_eq!(
            Record::open(&big),
            Err(RecordError::TooLarge(MAX_RECORD_BYTES + 1))
        );
    }

    #[test]
    fn a_changed_byte_or_another_key_fails_the_signature() {
        let good = sample().sign(&SEED).unwrap();
        // A byte of the second direct address.
        let mut moved = good.clone();
        moved[60] ^= 1;
        assert_eq!(Record::open(&moved), Err(RecordError::Signature));
        // Another key's record claiming this node: signing refuses, and a swapped key changes
        // the node id the record speaks for.
        assert_eq!(sample().sign(&[4; 32]), Err(RecordError::KeyMismatch(me())));
        let mut other = good.clone();
        other[4..36].copy_from_slice(&ed25519_public_of_seed(&[4; 32]));
        assert_eq!(Record::open(&other), Err(RecordError::Signature));
    }

    #[test]
    fn generated_identity_key_maps_to_its_node_id() {
        let identity = generate_identity().unwrap();
        let loaded = LoadedIdentity::from_tls_config(&identity.tls).unwrap();
        let seed = ed25519_seed_of_pkcs8(loaded.key.secret_der()).expect("ed25519 seed");
        let public = mainline::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        assert_eq!(public, ed25519_public_of_seed(&seed));
        assert_eq!(node_id_of_ed25519(&public), identity.node_id);
        let (_, leaf) = x509_parser::parse_x509_certificate(&loaded.chain[0]).unwrap();
        assert_eq!(
            ed25519_of_spki(leaf.tbs_certificate.subject_pki.raw),
            Some(public)
        );
    }

    #[test]
    fn non_ed25519_material_has_no_seed() {
        assert_eq!(ed25519_seed_of_pkcs8(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        let rsa = include_bytes!("../../tests/fixtures/rsa1024.der");
        assert_eq!(ed25519_seed_of_pkcs8(rsa), None);
    }

    #[test]
    fn keys_and_salts_differ_per_node_and_hour() {
        let id = |n| NodeId::from_bytes([n; 32]);
        assert_ne!(info_hash(&id(1)), info_hash(&id(2)));
        assert_eq!(info_hash(&id(1)), info_hash(&id(1)));
        assert_ne!(locator_seed(&id(1)), locator_seed(&id(2)));
        assert_eq!(locator_epoch(7199), 1);
        assert_eq!(locator_epoch(7200), 2);
        assert_ne!(locator_salt(1), locator_salt(2));
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        any::<(IpAddr, u16)>().prop_map(|(ip, port)| SocketAddr::new(ip, port))
    }

    proptest! {
        #[test]
        fn records_round_trip(
            seed in any::<[u8; 32]>(),
            at in any::<u64>(),
            observed in proptest::option::of(addr()),
            addrs in proptest::collection::vec(addr(), 0..=MAX_ADDRS),
            relays in proptest::collection::vec(
                (any::<[u8; 32]>(), addr(), any::<u16>(), any::<bool>(), any::<bool>()),
                0..=MAX_RELAYS,
            ),
        ) {
            let r = Record {
                node_id: node_id_of_ed25519(&ed25519_public_of_seed(&seed)),
                signed_at_ms: at,
                observed,
                addrs,
                relays: relays
                    .into_iter()
                    .map(|(id, addr, tcp_port, quic, websocket)| RelayHint {
                        node_id: NodeId::from_bytes(id),
                        addr,
                        tcp_port,
                        quic,
                        websocket,
                    })
                    .collect(),
            };
            let bytes = r.sign(&seed).unwrap();
            prop_assert!(bytes.len() <= MAX_RECORD_BYTES);
            prop_assert_eq!(Record::open(&bytes).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = Record::open(&bytes);
        }
    }
}
