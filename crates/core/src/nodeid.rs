//! Node ids: `'v'` + lowercase unpadded base32hex of SHA-256 over a SubjectPublicKeyInfo DER.

use std::fmt;
use std::str::FromStr;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
/// Length of a node id string: `'v'` + 52 base32hex characters.
pub const NODE_ID_LEN: usize = 53;

/// The identity a tunnel is pinned to: the SHA-256 of a node's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Derives the node id of a SubjectPublicKeyInfo (DER).
    pub fn from_spki_der(spki: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a node id from its raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(NODE_ID_LEN);
        out.push('v');
        let mut acc: u32 = 0;
        let mut bits = 0;
        for &b in &self.0 {
            acc = (acc << 8) | b as u32;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {0:?}: expected 'v' followed by 52 base32hex characters")]
pub struct NodeIdParseError(pub String);

impl FromStr for NodeId {
    type Err = NodeIdParseError;

    fn from_str(s: &str) -> Result<Self, NodeIdParseError> {
        let err = || NodeIdParseError(s.chars().take(80).collect());
        let body = s.strip_prefix('v').ok_or_else(err)?;
        if body.len() != NODE_ID_LEN - 1 {
            return Err(err());
        }
        let mut bytes = [0u8; 32];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut i = 0;
        for c in body.bytes() {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'v' => c - b'a' + 10,
                b'A'..=b'V' => c - b'A' + 10,
                _ => return Err(err()),
            } as u32;
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[i] = (acc >> bits) as u8;
                i += 1;
            }
        }
        // 52 * 5 = 260 bits: the last 4 bits are padding and must be zero (canonical form).
        if acc & ((1 << bits) - 1) != 0 {
            return Err(err());
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn length_and_prefix() {
        let id = NodeId::from_spki_der(b"key");
        let s = id.to_string();
        assert_eq!(s.len(), NODE_ID_LEN);
        assert!(s.starts_with('v'));
        assert!(s[1..].bytes().all(|c| ALPHABET.contains(&c)));
    }

    #[test]
    fn rejects_bad_strings() {
        assert!("".parse::<NodeId>().is_err());
        assert!("x".repeat(53).parse::<NodeId>().is_err());
        let good = NodeId::from_spki_der(b"k").to_string();
        assert!(good[..52].parse::<NodeId>().is_err());
        let mut bad = good.clone();
        bad.replace_range(5..6, "z");
        assert!(bad.parse::<NodeId>().is_err());
        // non-zero padding bits are not canonical
        let mut pad = good.clone();
        pad.replace_range(52..53, "v");
        if pad != good {
            assert!(pad.parse::<NodeId>().is_err());
        }
    }

    proptest! {
        #[test]
        fn round_trip(bytes in any::<[u8; 32]>()) {
            let id = NodeId(bytes);
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }
    }
}
