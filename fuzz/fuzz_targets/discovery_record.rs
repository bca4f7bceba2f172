//! Discovery records (`discovery::record::Record`), the values keynodes store on the DHT, and
//! the key-material helpers beside them. Checks that:
//! - a decoded record has at most `MAX_ADDRS` addresses and encodes back to exactly its bytes
//!   (one encoding per record), which decode to it again;
//! - `ed25519_of_spki` finds a key only in an Ed25519 SPKI (the key is its last 32 bytes, and
//!   that key maps to the same node id as the SPKI does); `ed25519_seed_of_pkcs8` never panics
//!   and finds a seed inside the input.
//!
//! Records are read from the DHT, which anyone can write to (the signature is checked by the
//! DHT library before the record is decoded, but a node's own key can sign anything).
#![no_main]

use keynet_core::discovery::record::{
    ed25519_of_spki, ed25519_seed_of_pkcs8, node_id_of_ed25519, Record, MAX_ADDRS,
};
use keynet_core::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        assert!(r.addrs.len() <= MAX_ADDRS);
        assert_eq!(r.encode(), data, "{r:?} re-encodes to other bytes");
        assert_eq!(Record::decode(&r.encode()), Ok(r));
    }
    if let Some(key) = ed25519_of_spki(data) {
        assert_eq!(data.len(), 44);
        assert_eq!(&data[12..], &key[..]);
        assert_eq!(node_id_of_ed25519(&key), NodeId::from_spki_der(data));
    }
    if let Some(seed) = ed25519_seed_of_pkcs8(data) {
        assert!(data.windows(32).any(|w| w == seed));
    }
});
