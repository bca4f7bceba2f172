//! What keynet stores on the DHT, and how node ids map to DHT keys.
//!
//! Two kinds of entries:
//! - a BEP 5 peer under [`info_hash`] of the node id: the address a node announced (the storing
//!   DHT node records the announcer's source IP, so it is the public IP). Anyone can announce
//!   there, so it is only a hint; many announcers sit side by side and none displaces another.
//! - a BEP 44 mutable item signed by the node's own Ed25519 key, salt [`SALT`], holding a
//!   [`Record`]: the node's addresses, with the announce time as sequence number. Only the key
//!   owner can write it, and a newer one replaces an older one.
//!
//! The TLS pin on the node id decides in every case: a record is a hint where to dial.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::nodeid::NodeId;

/// Salt of keynet's BEP 44 records (and the version of their format).
pub const SALT: &[u8] = b"keynet/1";
/// Most addresses one record carries.
pub const MAX_ADDRS: usize = 16;
const MAGIC: &[u8; 4] = b"KNR1";

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

/// Why bytes are not a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Does not start with the record magic.
    #[error("not a keynet record")]
    Magic,
    /// Ends before its declared content.
    #[error("record truncated")]
    Truncated,
    /// An address family other than 4 or 6.
    #[error("unknown address family {0}")]
    Family(u8),
    /// More than [`MAX_ADDRS`] addresses, or bytes after the last one.
    #[error("record malformed: {0}")]
    Malformed(&'static str),
}

/// A node's signed announcement: which node, at which addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node the record speaks for (must match the signing key).
    pub node_id: NodeId,
    /// Where its QUIC socket can be reached, best first.
    pub addrs: Vec<SocketAddr>,
}

impl Record {
    /// `KNR1`, node id (32), count (1), then per address: family 4|6, IP, port (big endian).
    pub fn encode(&self) -> Vec<u8> {
        let addrs = &self.addrs[..self.addrs.len().min(MAX_ADDRS)];
        let mut out = Vec::with_capacity(4 + 32 + 1 + addrs.len() * 19);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.node_id.as_bytes());
        out.push(addrs.len() as u8);
        for a in addrs {
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
        out
    }

    /// Parses [`Record::encode`]'s output; anything else is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let rest = bytes.strip_prefix(&MAGIC[..]).ok_or(RecordError::Magic)?;
        let (id, rest) = split(rest, 32)?;
        let node_id = NodeId::from_bytes(id.try_into().expect("32 bytes"));
        let (count, mut rest) = split(rest, 1)?;
        let count = count[0] as usize;
        if count > MAX_ADDRS {
            return Err(RecordError::Malformed("too many addresses"));
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let (family, r) = split(rest, 1)?;
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
            addrs.push(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])));
            rest = r;
        }
        if !rest.is_empty() {
            return Err(RecordError::Malformed("bytes after the last address"));
        }
        Ok(Self { node_id, addrs })
    }
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

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[test]
    fn record_snapshot() {
        let r = Record {
            node_id: id(7),
            addrs: vec!["1.2.3.4:443".parse().unwrap(), "[::1]:5".parse().unwrap()],
        };
        let bytes = r.encode();
        let mut want = b"KNR1".to_vec();
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(&[2, 4, 1, 2, 3, 4, 0x01, 0xbb, 6]);
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(&[1, 0, 5]);
        assert_eq!(bytes, want);
        assert_eq!(Record::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn malformed_records_are_typed_errors() {
        let good = Record {
            node_id: id(1),
            addrs: vec!["1.2.3.4:1".parse().unwrap()],
        }
        .encode();
        assert_eq!(Record::decode(b"XXXX"), Err(RecordError::Magic));
        assert_eq!(
            Record::decode(&good[..good.len() - 1]),
            Err(RecordError::Truncated)
        );
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            Record::decode(&extra),
            Err(RecordError::Malformed(_))
        ));
        let mut family = good.clone();
        family[37] = 5;
        assert_eq!(Record::decode(&family), Err(RecordError::Family(5)));
        let mut many = good[..36].to_vec();
        many.push(17);
        assert!(matches!(
            Record::decode(&many),
            Err(RecordError::Malformed(_))
        ));
    }

    #[test]
    fn generated_identity_key_maps_to_its_node_id() {
        let identity = generate_identity().unwrap();
        let loaded = LoadedIdentity::from_tls_config(&identity.tls).unwrap();
        let seed = ed25519_seed_of_pkcs8(loaded.key.secret_der()).expect("ed25519 seed");
        let public = mainline::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
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
    fn info_hash_differs_per_node() {
        assert_ne!(info_hash(&id(1)), info_hash(&id(2)));
        assert_eq!(info_hash(&id(1)), info_hash(&id(1)));
    }

    proptest! {
        #[test]
        fn records_round_trip(
            node in any::<[u8; 32]>(),
            addrs in proptest::collection::vec(
                any::<(IpAddr, u16)>().prop_map(|(ip, port)| SocketAddr::new(ip, port)),
                0..=MAX_ADDRS,
            ),
        ) {
            let r = Record { node_id: NodeId::from_bytes(node), addrs };
            prop_assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }
    }
}
