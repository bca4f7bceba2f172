//! Discovery records (`discovery::record::Record`), the values keynodes store on the DHT, and
//! the key-material helpers beside them. Checks that:
//! - a parsed record has at most `MAX_ADDRS` addresses and `MAX_RELAYS` relays, its node id is
//!   its key's, and it opens (signature checked) only if its bytes are what signing it gives;
//! - `ed25519_of_spki` finds a key only in an Ed25519 SPKI (the key is its last 32 bytes, and
//!   that key maps to the same node id as the SPKI does); `ed25519_seed_of_pkcs8` never panics
//!   and finds a seed inside the input.
//!
//! Records are read from the DHT, which anyone can write to: a record under a node's locator key
//! is checked only by the node's signature inside it.
#![no_main]

use keynet_core::discovery::record::{
    ed25519_of_spki, ed25519_seed_of_pkcs8, node_id_of_ed25519, Record, MAX_ADDRS, MAX_RELAYS,
    MAX_RECORD_BYTES,
};
use keynet_core::NodeId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opened = Record::open(data);
    match Record::parse(data) {
        Ok(p) => {
            assert!(data.len() <= MAX_RECORD_BYTES);
            assert!(p.record.addrs.len() <= MAX_ADDRS);
            assert!(p.record.relays.len() <= MAX_RELAYS);
            assert_eq!(p.record.node_id, node_id_of_ed25519(&p.key));
            if let Ok(r) = opened {
                assert_eq!(r, p.record);
            }
        }
        Err(e) => assert_eq!(opened, Err(e)),
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
