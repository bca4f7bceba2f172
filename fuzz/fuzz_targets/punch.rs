//! Punch datagrams (`proto::punch::Packet`) and the punch state machine fed with them.
//! Checks that:
//! - a datagram decodes only if `is_punch` says it looks like one (the socket demultiplexer's
//!   cheap check never hides a valid punch), and it never has QUIC's fixed bit;
//! - a decoded datagram encodes back to exactly its bytes, an ack always says what it observed;
//! - a `Puncher` answers a datagram from its target with an ack exactly when it is a valid
//!   punch (the ack echoes the nonce and where it came from), counts an ack only when it
//!   echoes its own nonce, and ignores everything else and everyone else.
//!
//! Anyone on the internet can send these to a keynode's UDP socket.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keynet_core::proto::punch::{is_punch, Kind, Packet, Puncher, LEN};
use libfuzzer_sys::fuzz_target;

fn puncher(now: Instant, target: SocketAddr, nonce: u64) -> Puncher {
    let local = "192.0.2.1:1000".parse().unwrap();
    let second = Duration::from_secs(1);
    Puncher::new(now, local, target, second / 20, 60 * second, 100, nonce)
}

fuzz_target!(|data: &[u8]| {
    let decoded = Packet::decode(data);
    if !is_punch(data) {
        assert!(decoded.is_err(), "is_punch refuses a valid punch datagram");
    }
    let target: SocketAddr = "198.51.100.2:2000".parse().unwrap();
    let stranger: SocketAddr = "198.51.100.3:2000".parse().unwrap();
    let now = Instant::now();
    match decoded {
        Ok(p) => {
            assert_eq!(data.len(), LEN);
            assert_eq!(data[0] & 0x40, 0, "a punch datagram with QUIC's fixed bit");
            assert_eq!(&p.encode()[..], data, "{p:?} re-encodes to other bytes");
            assert_eq!(Packet::decode(&p.encode()), Ok(p));
            if p.kind == Kind::Ack {
                assert!(p.observed.is_some());
            }

            // Our nonce, or another one.
            for nonce in [p.nonce, !p.nonce] {
                let mut m = puncher(now, target, nonce);
                assert_eq!(m.handle(now, stranger, data), None);
                assert!(!m.take_path_opened() && !m.peer_punching());
                let answer = m.handle(now, target, data);
                match p.kind {
                    Kind::Punch => {
                        let ack = Packet::decode(&answer.expect("a punch is acked")).unwrap();
                        assert_eq!(ack.kind, Kind::Ack);
                        assert_eq!(ack.nonce, p.nonce);
                        assert_eq!(ack.observed, Some(target));
                        assert!(m.peer_punching() && !m.path_confirmed());
                        assert!(m.take_path_opened());
                        assert_eq!(m.nat_between(), p.sender_local != target);
                    }
                    Kind::Ack => {
                        assert_eq!(answer, None);
                        let ours = nonce == p.nonce;
                        assert_eq!(m.path_confirmed(), ours);
                        assert_eq!(m.take_path_opened(), ours);
                        assert!(!m.peer_punching());
                        let local: SocketAddr = "192.0.2.1:1000".parse().unwrap();
                        let natted = p.sender_local != target || p.observed != Some(local);
                        assert_eq!(m.nat_between(), ours && natted);
                    }
                }
            }
        }
        Err(_) => {
            let mut m = puncher(now, target, 7);
            assert_eq!(m.handle(now, target, data), None);
            assert!(!m.take_path_opened() && !m.peer_punching() && !m.path_confirmed());
            assert!(!m.nat_between());
        }
    }
});
