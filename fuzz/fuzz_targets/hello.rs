//! The post-handshake hello (`proto::hello::Hello`): the input's first 43 bytes (zero-padded)
//! are a hello as read from the peer's unidirectional stream. Checks that a hello decodes only
//! with its magic, version 1 and known flags, that a decoded hello encodes back to exactly its
//! bytes (and decodes to itself), and that a hello whose addresses agree with ours sees no NAT.
//!
//! The hello is read from the peer before anything else on the connection.
#![no_main]

use keynet_core::proto::hello::{Hello, LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; LEN];
    let n = data.len().min(LEN);
    b[..n].copy_from_slice(&data[..n]);
    let Ok(h) = Hello::decode(&b) else { return };
    assert_eq!(&b[..4], b"KNH\x01");
    assert!(b[4] <= 1);
    assert_eq!(h.encode(), b, "{h:?} re-encodes to other bytes");
    assert_eq!(Hello::decode(&h.encode()), Ok(h));
    // The peer is where it says it is and sees us where we are: no NAT between us.
    assert!(!h.nat_between(h.own, h.observed));
});
