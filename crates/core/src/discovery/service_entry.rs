//! Service names on the DHT: the rules of a name, the keys it maps to, and the signed entry a
//! replica stores there (sans-IO; `service.rs` does the DHT traffic).
//!
//! A replica of service `NAME` (in network `NET`, default empty) is found in two steps:
//! - a BEP 5 peer under [`topic`]`(NET, NAME)`, whose port is the replica's **tag**
//!   ([`tag_of`]: 16 bits of its node id). Storing DHT nodes keep one peer per announcing DHT
//!   node, so replicas sit side by side and none displaces another;
//! - an [`Entry`] as a BEP 44 mutable item under the service's key pair ([`service_seed`],
//!   derived from `NET` and `NAME` alone, so anyone can find it and anyone could write there),
//!   salt [`entry_salt`]`(hour, tag)`: the replica's signed node record ([`Record`]), signed again
//!   by the node's key together with `NET` and `NAME` (only the node can say it serves the name),
//!   and for a **restricted** service the owner's signature over the name and the node id
//!   ([`Membership`]). A withdrawn entry says the node left the service.
//!
//! Anyone can announce any unrestricted name: such a name is a hint that any node can answer.
//! A writer could also hide a replica by pinning junk in its slot for the rest of the hour (as
//! with node locators). Each node found is still proven by its node id in the TLS handshake.

use super::record::{self, Record, RecordError};
use crate::nodeid::NodeId;

/// Longest service (and network) name, in bytes.
pub const MAX_NAME: usize = 63;
const MAGIC: &[u8; 4] = b"KNS1";
const SIGNED_DOMAIN: &[u8] = b"keynet service v1\0";
const MEMBER_DOMAIN: &[u8] = b"keynet service member v1\0";
const SIG_LEN: usize = 64;
const FLAG_WITHDRAWN: u8 = 1;
const FLAG_MEMBER: u8 = 2;

/// Why a service name (or network name) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("an empty name")]
    Empty,
    /// Longer than [`MAX_NAME`] bytes.
    #[error("{0} bytes: at most {MAX_NAME}")]
    TooLong(usize),
    /// A character outside `a-z`, `0-9`, `-` and `_` (upper case is folded first).
    #[error("{0:?} is not one of a-z, 0-9, '-', '_'")]
    Char(char),
}

/// `name` checked and folded to lower case: 1 to [`MAX_NAME`] bytes of `a-z`, `0-9`, `-`, `_`
/// (so it is also a host label: `NAME.service.keynet`).
pub fn check_name(name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name.len()));
    }
    let folded = name.to_ascii_lowercase();
    if let Some(c) = folded
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(NameError::Char(c));
    }
    Ok(folded)
}

/// A network name: empty (the default namespace) or a valid name.
pub fn check_network(network: &str) -> Result<String, NameError> {
    if network.is_empty() {
        return Ok(String::new());
    }
    check_name(network)
}

fn label(domain: &[u8], network: &str, name: &str) -> Vec<u8> {
    let mut v = domain.to_vec();
    v.extend_from_slice(network.as_bytes());
    v.push(0);
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v
}

/// The BEP 5 info hash a service's replicas announce their tags under.
pub fn topic(network: &str, name: &str) -> [u8; 20] {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &label(b"keynet/2 service\0", network, name),
    );
    d.as_ref().try_into().expect("20 bytes")
}

/// The seed of the service's key pair (its entries are stored under it).
pub fn service_seed(network: &str, name: &str) -> [u8; 32] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        &label(b"keynet/2 service key\0", network, name),
    );
    d.as_ref().try_into().expect("32 bytes")
}

/// A replica's tag: 16 bits of its node id, never 0 (a BEP 5 port).
pub fn tag_of(node: &NodeId) -> u16 {
    let b = node.as_bytes();
    u16::from_be_bytes([b[0], b[1]]).max(1)
}

/// The BEP 44 salt of the entry of the replica tagged `tag` in `epoch` (an hour, as
/// [`record::locator_epoch`]).
pub fn entry_salt(epoch: u64, tag: u16) -> Vec<u8> {
    format!("keynet/2 service {epoch} {tag}").into_bytes()
}

/// An owner's word that a node belongs to a restricted service: the owner's Ed25519 public key
/// and its signature over the network, the name and the node id. Made once with
/// [`Membership::sign`] and handed to the node (as [`Membership::to_hex`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The owner's public key.
    pub owner: [u8; 32],
    /// Its signature.
    pub signature: [u8; SIG_LEN],
}

impl Membership {
    fn message(network: &str, name: &str, node: &NodeId) -> Vec<u8> {
        let mut m = label(MEMBER_DOMAIN, network, name);
        m.extend_from_slice(node.as_bytes());
        m
    }

    /// The owner (whose Ed25519 seed is `owner_seed`) admits `node` to `name`.
    pub fn sign(owner_seed: &[u8; 32], network: &str, name: &str, node: &NodeId) -> Self {
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_unchecked(owner_seed).expect("any 32 bytes");
        let sig = pair.sign(&Self::message(network, name, node));
        Self {
            owner: record::ed25519_public_of_seed(owner_seed),
            signature: sig.as_ref().try_into().expect("64 bytes"),
        }
    }

    /// Whether this admits `node` to `name` in `network`.
    pub fn admits(&self, network: &str, name: &str, node: &NodeId) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.owner)
            .verify(&Self::message(network, name, node), &self.signature)
            .is_ok()
    }

    /// 192 hex digits: the owner key, then the signature.
    pub fn to_hex(&self) -> String {
        hex(&[&self.owner[..], &self.signature[..]].concat())
    }

    /// Reads [`Membership::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = unhex(s)?;
        (b.len() == 32 + SIG_LEN).then(|| Self {
            owner: b[..32].try_into().expect("32 bytes"),
            signature: b[32..].try_into().expect("64 bytes"),
        })
    }
}

/// A fresh service owner key: (its Ed25519 seed, its public key), for
/// [`Membership::sign`] and [`crate::discovery::ServiceTrust::owner`].
pub fn generate_owner() -> ([u8; 32], [u8; 32]) {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .expect("system randomness");
    (seed, record::ed25519_public_of_seed(&seed))
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads hex (either case); None if it is not.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why bytes are not an [`Entry`] of the name asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not a service entry.
    #[error("not a keynet service entry")]
    Magic,
    /// Cut short, or bytes left over.
    #[error("malformed service entry: {0}")]
    Malformed(&'static str),
    /// The node record inside does not open.
    #[error("the node record inside: {0}")]
    Record(#[from] RecordError),
    /// The node's signature does not cover this network and name.
    #[error("not signed by the node for this service")]
    Signature,
    /// Over mainline's 1000 bytes.
    #[error("{0} bytes: over the DHT's 1000")]
    TooLarge(usize),
}

/// A replica's entry: its node record, when it signed, whether it left, and its membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the node signed the entry (Unix ms): the newest one of a node wins.
    pub signed_at_ms: u64,
    /// The node left the service (`withdrawService`, `stop()`).
    pub withdrawn: bool,
    /// The node's record (its id, addresses and relays).
    pub record: Record,
    /// The owner's word, for a restricted service.
    pub membership: Option<Membership>,
}

impl Entry {
    /// Encodes the entry, `record_bytes` being the node's signed [`Record`], and signs it with
    /// the node's key (`seed`) for `network` and `name`:
    /// `KNS1`, signed-at ms (8), flags (1: withdrawn, membership), record length (2), record,
    /// [owner key (32), owner signature (64)], node signature (64).
    pub fn sign(
        seed: &[u8; 32],
        network: &str,
        name: &str,
        signed_at_ms: u64,
        withdrawn: bool,
        record_bytes: &[u8],
        membership: Option<&Membership>,
    ) -> Result<Vec<u8>, EntryError> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&signed_at_ms.to_be_bytes());
        out.push(
            if withdrawn { FLAG_WITHDRAWN } else { 0 }
                | if membership.is_some() { FLAG_MEMBER } else { 0 },
        );
        out.extend_from_slice(&(record_bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(record_bytes);
        if let Some(m) = membership {
            out.extend_from_slice(&m.owner);
            out.extend_from_slice(&m.signature);
        }
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes");
        let mut signed = label(SIGNED_DOMAIN, network, name);
        signed.extend_from_slice(&out);
        out.extend_from_slice(pair.sign(&signed).as_ref());
        if out.len() > record::MAX_RECORD_BYTES {
            return Err(EntryError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Reads an entry of `name` in `network` and checks both the record's and the entry's
    /// signatures (the membership is read, not judged: see [`Membership::admits`]).
    pub fn open(bytes: &[u8], network: &str, name: &str) -> Result<Self, EntryError> {
        if bytes.len() > record::MAX_RECORD_BYTES {
            return Err(EntryError::TooLarge(bytes.len()));
        }
        let rest = bytes.strip_prefix(&MAGIC[..]).ok_or(EntryError::Magic)?;
        let short = EntryError::Malformed("cut short");
        if rest.len() < 8 + 1 + 2 + SIG_LEN {
            return Err(short);
        }
        let signed_at_ms = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let flags = rest[8];
        if flags & !(FLAG_WITHDRAWN | FLAG_MEMBER) != 0 {
            return Err(EntryError::Malformed("unknown flags"));
        }
        let len = u16::from_be_bytes([rest[9], rest[10]]) as usize;
        let rest = &rest[11..];
        let member_len = if flags & FLAG_MEMBER != 0 {
            32 + SIG_LEN
        } else {
            0
        };
        if rest.len() != len + member_len + SIG_LEN {
            return Err(EntryError::Malformed("lengths do not add up"));
        }
        let record_bytes = &rest[..len];
        let parsed = Record::parse(record_bytes)?;
        let record = Record::open(record_bytes)?;
        let membership = (member_len > 0).then(|| Membership {
            owner: rest[len..len + 32].try_into().expect("32 bytes"),
            signature: rest[len + 32..len + member_len]
                .try_into()
                .expect("64 bytes"),
        });
        let sig_at = bytes.len() - SIG_LEN;
        let mut signed = label(SIGNED_DOMAIN, network, name);
        signed.extend_from_slice(&bytes[..sig_at]);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &parsed.key)
            .verify(&signed, &bytes[sig_at..])
            .map_err(|_| EntryError::Signature)?;
        Ok(Self {
            signed_at_ms,
            withdrawn: flags & FLAG_WITHDRAWN != 0,
            record,
            membership,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(seed: u8) -> ([u8; 32], NodeId, Vec<u8>) {
        let seed = [seed; 32];
        let id = record::node_id_of_ed25519(&record::ed25519_public_of_seed(&seed));
        let rec = Record {
            node_id: id,
            signed_at_ms: 5,
            observed: None,
            addrs: vec!["192.0.2.1:4433".parse().unwrap()],
            relays: vec![],
        }
        .sign(&seed)
        .unwrap();
        (seed, id, rec)
    }

    #[test]
    fn names_are_checked_and_folded() {
        assert_eq!(
            check_name("Fibonacci_Worker-2").unwrap(),
            "fibonacci_worker-2"
        );
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name(&"a".repeat(64)), Err(NameError::TooLong(64)));
        assert!(check_name(&"a".repeat(63)).is_ok());
        assert_eq!(check_name("echo.svc"), Err(NameError::Char('.')));
        assert_eq!(check_name("é"), Err(NameError::Char('é')));
        assert_eq!(check_name("a b"), Err(NameError::Char(' ')));
        assert_eq!(check_network("").unwrap(), "");
        assert_eq!(check_network("Lab").unwrap(), "lab");
    }

    #[test]
    fn keys_differ_by_network_and_name() {
        assert_ne!(topic("", "echo"), topic("lab", "echo"));
        assert_ne!(topic("", "echo"), topic("", "echo2"));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(service_seed("a", "bc"), service_seed("ab", "c"));
        assert_eq!(entry_salt(7, 513), b"keynet/2 service 7 513".to_vec());
        assert!(
            entry_salt(u64::MAX, u16::MAX).len() <= 64,
            "BEP 44 salts are at most 64 bytes"
        );
        assert_ne!(tag_of(&NodeId::from_bytes([0; 32])), 0);
    }

    #[test]
    fn an_entry_opens_only_for_its_name_and_unchanged() {
        let (seed, id, rec) = node(1);
        let bytes = Entry::sign(&seed, "lab", "echo", 9, false, &rec, None).unwrap();
        let e = Entry::open(&bytes, "lab", "echo").unwrap();
        assert_eq!(e.record.node_id, id);
        assert_eq!(
            (e.signed_at_ms, e.withdrawn, e.membership),
            (9, false, None)
        );
        // Another name or network: the node never said it serves that.
        assert_eq!(
            Entry::open(&bytes, "lab", "fib"),
            Err(EntryError::Signature)
        );
        assert_eq!(Entry::open(&bytes, "", "echo"), Err(EntryError::Signature));
        // Any flipped byte is refused.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Entry::open(&b, "lab", "echo").is_err(), "byte {i}");
        }
        // Someone else's record under a node's entry signature: refused.
        let (_, _, other) = node(2);
        let mut swapped = bytes[..15].to_vec();
        swapped.extend_from_slice(&other);
        swapped.extend_from_slice(&bytes[15 + rec.len()..]);
        assert!(Entry::open(&swapped, "lab", "echo").is_err());
        assert_eq!(Entry::open(b"nope", "lab", "echo"), Err(EntryError::Magic));
        assert_eq!(
            Entry::open(&[0u8; 1001], "lab", "echo"),
            Err(EntryError::TooLarge(1001))
        );
    }

    #[test]
    fn a_membership_admits_one_node_to_one_name() {
        let owner = [9u8; 32];
        let (seed, id, rec) = node(1);
        let (_, other, _) = node(2);
        let m = Membership::sign(&owner, "", "echo", &id);
        assert!(m.admits("", "echo", &id));
        assert!(!m.admits("", "echo", &other));
        assert!(!m.admits("", "fib", &id));
        assert!(!m.admits("lab", "echo", &id));
        assert_eq!(Membership::from_hex(&m.to_hex()), Some(m.clone()));
        assert_eq!(Membership::from_hex("zz"), None);
        let bytes = Entry::sign(&seed, "", "echo", 1, true, &rec, Some(&m)).unwrap();
        let e = Entry::open(&bytes, "", "echo").unwrap();
        assert!(e.withdrawn);
        assert_eq!(e.membership, Some(m));
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = Entry::open(&b, "", "echo");
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&b);
            let _ = Entry::open(&with_magic, "", "echo");
        }
    }
}
