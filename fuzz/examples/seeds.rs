//! Writes the seed inputs of every fuzz target to `fuzz/corpus/TARGET/seed-NAME`, made with
//! keynet-core's own encoders so they stay valid when a format changes:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`. The fuzzer grows the corpora
//! from these; rerunning only rewrites the seed files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keynet_core::discovery::record::{
    ed25519_public_of_seed, node_id_of_ed25519, Record, RelayHint,
};
use keynet_core::proto::hello::Hello;
use keynet_core::proto::punch::{Kind, Packet};
use keynet_core::proto::relay::{Frame, GoneReason};
use keynet_core::proto::tunnel::{encode_ack, encode_open, Ack};
use keynet_core::proto::websocket::{encode, Opcode};
use keynet_core::NodeId;
use keynet_fuzz::stream_header;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn node(b: u8) -> NodeId {
    NodeId::from_bytes([b; 32])
}

struct Corpus(PathBuf);

impl Corpus {
    fn write(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }

    /// A stream seed: its head (flags and chunk lengths), then the stream.
    fn stream(&self, target: &str, name: &str, flags: u8, cuts: &[usize], stream: &[u8]) {
        let mut input = stream_header(flags, cuts);
        input.extend_from_slice(stream);
        self.write(target, name, &input);
    }
}

fn relay_frames() -> Vec<Frame> {
    vec![
        Frame::Register {
            want_port: true,
            caller: false,
            local_port: None,
            token: "secret".into(),
        },
        Frame::Registered {
            observed: addr("203.0.113.7:443"),
            public_port: Some(40000),
        },
        Frame::SendPacket {
            dst: node(1),
            datagram: vec![0xc0; 40],
        },
        Frame::RecvPacket {
            src: node(2),
            datagram: vec![0x40, 1, 2, 3],
        },
        Frame::PeerGone {
            node: node(3),
            reason: GoneReason::Left,
        },
        Frame::Ping { nonce: 7 },
        Frame::Pong { nonce: 7 },
        Frame::CallMeMaybe { peer: node(4) },
        Frame::Rendezvous {
            peer: node(5),
            peer_addr: addr("[2001:db8::1]:4433"),
            punch_in_ms: 250,
            mapping: Default::default(),
        },
        Frame::TcpOpen {
            conn: 9,
            client: addr("198.51.100.9:55000"),
        },
        Frame::TcpData {
            conn: 9,
            data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        },
        Frame::TcpClose {
            conn: 9,
            reset: false,
        },
        Frame::Error {
            code: 429,
            node: Some(node(6)),
            message: "too many peers".into(),
        },
    ]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let c = Corpus(root);

    // connect_head
    let id = node(0xab);
    let heads = [
        (
            "auth",
            "CONNECT 127.0.0.1:4433 HTTP/1.1\r\nHost: 127.0.0.1:4433\r\n\
             Proxy-Authorization: Basic dG9rZW4=\r\n\r\nTUNNEL"
                .to_string(),
        ),
        (
            "v6-pinned",
            format!("CONNECT [::1]:7/?nodeId={id} HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        (
            "by-node",
            format!("CONNECT {id}.keynet:443 HTTP/1.1\r\n\r\n"),
        ),
        ("get", "GET / HTTP/1.0\nHost: a\n\n".to_string()),
        (
            "partial",
            "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: ".to_string(),
        ),
    ];
    for (i, (name, head)) in heads.iter().enumerate() {
        let cuts: &[usize] = if i % 2 == 0 { &[] } else { &[5, 1, 17] };
        c.stream("connect_head", name, 0, cuts, head.as_bytes());
    }

    // relay_stream: every frame type in one stream, cut; and single frames whole
    let frames = relay_frames();
    let mut all = Vec::new();
    for f in &frames {
        f.encode(&mut all).unwrap();
    }
    c.stream("relay_stream", "all-cut", 0, &[1, 7, 64, 3], &all);
    for (i, f) in frames.iter().enumerate() {
        let mut one = Vec::new();
        f.encode(&mut one).unwrap();
        c.stream("relay_stream", &format!("frame-{i:02}"), 0, &[], &one);
    }

    // websocket_stream: a client's masked frames and a server's, with a fragmented message
    let key = Some([0x37, 0xfa, 0x21, 0x3d]);
    for (name, mask, flags) in [("client", key, 0x80), ("server", None, 0)] {
        let mut s = Vec::new();
        let first = s.len();
        encode(Opcode::Binary, b"frag", mask, &mut s);
        s[first] &= 0x7f; // not final
        encode(Opcode::Ping, b"hi", mask, &mut s);
        encode(Opcode::Continuation, &[7; 200], mask, &mut s);
        encode(Opcode::Pong, b"", mask, &mut s);
        encode(Opcode::Binary, &[1; 300], mask, &mut s);
        encode(Opcode::Close, &[3, 0xe8], mask, &mut s);
        c.stream("websocket_stream", name, flags, &[2, 9, 130], &s);
        let mut one = Vec::new();
        encode(Opcode::Binary, b"relay frame bytes", mask, &mut one);
        c.stream("websocket_stream", &format!("{name}-one"), flags, &[], &one);
    }

    // punch
    let punch = Packet {
        kind: Kind::Punch,
        nonce: 0x0102030405060708,
        sender_local: addr("10.0.0.1:1000"),
        observed: None,
    };
    c.write("punch", "punch", &punch.encode());
    let ack = Packet {
        kind: Kind::Ack,
        nonce: 42,
        sender_local: addr("[fd00::1]:2000"),
        observed: Some(addr("198.51.100.2:2000")),
    };
    c.write("punch", "ack", &ack.encode());

    // hello
    for (name, punching, observed, own) in [
        ("v4", true, "203.0.113.1:40000", "198.51.100.66:40001"),
        ("v6", false, "[2001:db8::2]:1", "[::1]:2"),
    ] {
        let h = Hello {
            punching,
            observed: addr(observed),
            own: addr(own),
        };
        c.write("hello", name, &h.encode());
    }

    // tunnel_header
    for (name, ack) in [
        ("ok", Ack::Ok),
        (
            "unreachable",
            Ack::ServerUnreachable("connection refused".into()),
        ),
    ] {
        let mut b = encode_open().to_vec();
        b.extend_from_slice(&encode_ack(&ack));
        c.write("tunnel_header", name, &b);
    }

    // discovery_record
    let records = [
        ("empty", vec![]),
        ("v4", vec![addr("1.2.3.4:443")]),
        (
            "v4-v6",
            vec![addr("1.2.3.4:443"), addr("[2001:db8::7]:4433")],
        ),
    ];
    for (name, addrs) in records {
        let seed = [7; 32];
        let r = Record {
            node_id: node_id_of_ed25519(&ed25519_public_of_seed(&seed)),
            signed_at_ms: 1_700_000_000_000,
            observed: addrs.first().copied(),
            addrs,
            relays: vec![RelayHint {
                node_id: node(9),
                addr: addr("203.0.113.100:7000"),
                tcp_port: 7000,
                quic: true,
                websocket: false,
            }],
        };
        c.write("discovery_record", name, &r.sign(&seed).unwrap());
    }
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(&[9; 32]);
    c.write("discovery_record", "spki", &spki);
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&[5; 32]);
    c.write("discovery_record", "pkcs8", &pkcs8);
    println!("seeds written under {}", c.0.display());
}
