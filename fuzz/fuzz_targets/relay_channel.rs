//! The relay's UDP channel datagrams (`proto::channel`) and a node's check of them
//! (`socket::paths::Paths::from_channel`). Checks that:
//! - a datagram parses only if `is_channel` says it looks like one, never has QUIC's fixed bit,
//!   and encodes back to exactly its bytes;
//! - a node takes one in only when it comes from its relay's address, is meant for a node and
//!   carries its session's key.
//!
//! Anyone on the internet can send these to a keynode's or a relay's UDP socket.
#![no_main]

use keynet_core::proto::channel::{encode, is_channel, parse, Kind};
use keynet_core::socket::paths::{Channel, Outbox, Paths};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if let Some(d) = &parsed {
        assert!(is_channel(data));
        assert_eq!(data[0] & 0x40, 0, "never taken for QUIC");
        assert_eq!(encode(d.kind, &d.key, &d.node, d.packet), data);
    }
    let relay = "198.51.100.1:7000".parse().unwrap();
    let key = [0x5a; 8];
    let paths = Paths::default();
    let (outbox, _queued) = Outbox::bounded(4);
    let (src_ip, limit, confirmed) = (None, 1452, false);
    paths.open_channel(&outbox, Channel { relay, key, src_ip, limit, confirmed });
    let from = if data.last().is_some_and(|b| b & 1 == 1) {
        relay
    } else {
        "198.51.100.2:7000".parse().unwrap()
    };
    let taken = paths.from_channel(from, data);
    let expected = from == relay
        && parsed.is_some_and(|d| matches!(d.kind, Kind::FromRelay | Kind::ProbeAck) && d.key == key);
    assert_eq!(taken, expected);
});
