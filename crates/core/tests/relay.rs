//! The relay server over loopback: registration, forwarding only between registered nodes,
//! keepalive, malformed frames closing only the offending connection, pinning of the relay.

mod common;

use std::time::Duration;

use common::recv_frame;

use keynet_core::identity::LoadedIdentity;
use keynet_core::proto::relay::{Frame, GoneReason};
use keynet_core::relay::client::RelayClient;
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::ConnOptions;

const T: Duration = Duration::from_secs(5);

async fn relay() -> RelayServer {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    relay.start(start).await.unwrap();
    relay
}

async fn node(relay: &RelayServer) -> (RelayClient, LoadedIdentity, quinn::Endpoint) {
    let id = LoadedIdentity::generate().unwrap();
    let (endpoint, _socket) =
        keynet_core::socket::bind("127.0.0.1:0".parse().unwrap(), None, b"test").unwrap();
    let transport = ConnOptions::default().transport();
    let client = RelayClient::connect(
        &endpoint,
        &id,
        relay.addr().unwrap(),
        relay.node_id().unwrap(),
        transport,
        T,
    )
    .await
    .unwrap();
    (client, id, endpoint)
}

/// A registration without a public port or token.
fn register() -> Frame {
    Frame::Register {
        want_port: false,
        caller: false,
        local_port: None,
        token: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_exchange_packets_and_nothing_else_gets_through() {
    let relay = relay().await;
    let (a, a_id, _ea) = node(&relay).await;
    let (b, b_id, _eb) = node(&relay).await;
    a.send(&register()).await.unwrap();
    match recv_frame(&a).await {
        Frame::Registered {
            observed,
            public_port,
        } => {
            assert_eq!(
                observed,
                a.connection().unwrap().local_ip().map_or(
                    observed,
                    |ip| std::net::SocketAddr::new(ip, observed.port())
                )
            );
            assert_eq!(public_port, None);
        }
        other => panic!("{other:?}"),
    }
    // B is not registered yet: A's packet is refused with PeerGone, not forwarded.
    a.send(&Frame::SendPacket {
        dst: b_id.node_id,
        datagram: vec![1, 2, 3],
    })
    .await
    .unwrap();
    assert_eq!(
        recv_frame(&a).await,
        Frame::PeerGone {
            node: b_id.node_id,
            reason: GoneReason::Unknown
        }
    );
    // An unregistered sender cannot use the relay at all.
    b.send(&Frame::SendPacket {
        dst: a_id.node_id,
        datagram: vec![9],
    })
    .await
    .unwrap();
    assert!(matches!(
        recv_frame(&b).await,
        Frame::Error { code: 401, .. }
    ));
    b.send(&register()).await.unwrap();
    assert!(matches!(recv_frame(&b).await, Frame::Registered { .. }));
    let mut ids = relay.registered().unwrap();
    ids.sort();
    let mut want = vec![a_id.node_id, b_id.node_id];
    want.sort();
    assert_eq!(ids, want);
    // Now the packet goes through, tagged with the proven sender.
    a.send(&Frame::SendPacket {
        dst: b_id.node_id,
        datagram: vec![1, 2, 3],
    })
    .await
    .unwrap();
    assert_eq!(
        recv_frame(&b).await,
        Frame::RecvPacket {
            src: a_id.node_id,
            datagram: vec![1, 2, 3]
        }
    );
    b.send(&Frame::Ping { nonce: 42 }).await.unwrap();
    assert_eq!(recv_frame(&b).await, Frame::Pong { nonce: 42 });
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_the_offending_connection() {
    let relay = relay().await;
    let (a, _a_id, _ea) = node(&relay).await;
    let (b, _b_id, _eb) = node(&relay).await;
    for c in [&a, &b] {
        c.send(&register()).await.unwrap();
        assert!(matches!(recv_frame(c).await, Frame::Registered { .. }));
    }
    a.send_raw(&[0x42, 0, 0]).await.unwrap();
    let closed = tokio::time::timeout(T, a.connection().unwrap().closed())
        .await
        .expect("closed in time");
    assert!(
        closed.to_string().contains("unknown relay frame type"),
        "{closed}"
    );
    b.send(&Frame::Ping { nonce: 7 }).await.unwrap();
    assert_eq!(recv_frame(&b).await, Frame::Pong { nonce: 7 });
    assert_eq!(
        relay.registered().unwrap().len(),
        1,
        "the offender's registration is gone"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_is_pinned_and_allowed_node_ids_are_enforced() {
    let relay = relay().await;
    let id = LoadedIdentity::generate().unwrap();
    let (endpoint, _s) =
        keynet_core::socket::bind("127.0.0.1:0".parse().unwrap(), None, b"t").unwrap();
    let wrong = LoadedIdentity::generate().unwrap().node_id;
    let err = RelayClient::connect(
        &endpoint,
        &id,
        relay.addr().unwrap(),
        wrong,
        ConnOptions::default().transport(),
        T,
    )
    .await
    .err()
    .expect("a relay that does not prove the pinned id is refused");
    assert_eq!(err.code(), "ErrorCertChainUnclaimed");
    relay.stop().await.unwrap();

    let allowed = LoadedIdentity::generate().unwrap();
    let strict = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    start.allowed_node_ids = Some(vec![allowed.node_id]);
    strict.start(start).await.unwrap();
    // A node outside the list completes its side of the handshake, but the relay refuses its
    // certificate: its stream dies and nothing registers.
    let outsider = RelayClient::connect(
        &endpoint,
        &id,
        strict.addr().unwrap(),
        strict.node_id().unwrap(),
        ConnOptions::default().transport(),
        T,
    )
    .await;
    if let Ok(c) = outsider {
        let _ = c.send(&register()).await;
        assert!(tokio::time::timeout(T, c.recv())
            .await
            .expect("answered in time")
            .is_err());
    }
    assert!(strict.registered().unwrap().is_empty());
    strict.stop().await.unwrap();
}

/// A relayed bulk transfer fills the relay's packet queue toward a node (it drops packets, as
/// UDP would); the rendezvous that moves the pair off the relay must still reach it. Before
/// control frames had their own queue, the rendezvous was dropped with the packets and the pair
/// stayed relayed until the next request (seen in the lab as an 8 s late upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendezvous_gets_through_while_relayed_packets_fill_the_queue() {
    let relay = relay().await;
    let (a, a_id, _ea) = node(&relay).await;
    let (b, b_id, _eb) = node(&relay).await;
    for c in [&a, &b] {
        c.send(&register()).await.unwrap();
        assert!(matches!(recv_frame(c).await, Frame::Registered { .. }));
    }
    // B stops reading: more than its stream window (8 MiB) plus the relay's queue.
    const PACKETS: usize = 12_000;
    for i in 0..PACKETS {
        a.send(&Frame::SendPacket {
            dst: b_id.node_id,
            datagram: vec![i as u8; 1200],
        })
        .await
        .unwrap();
    }
    a.send(&Frame::CallMeMaybe { peer: b_id.node_id })
        .await
        .unwrap();
    match recv_frame(&a).await {
        Frame::Rendezvous { peer, .. } => assert_eq!(peer, b_id.node_id),
        other => panic!("A expected its rendezvous, got {other:?}"),
    }
    // B reads again: the rendezvous is there, although packets were dropped.
    let mut packets = 0;
    let mut rendezvous = None;
    while let Ok(frame) = tokio::time::timeout(Duration::from_secs(1), b.recv()).await {
        match frame.unwrap().expect("not closed") {
            Frame::RecvPacket { .. } => packets += 1,
            Frame::Rendezvous { peer, .. } => rendezvous = Some(peer),
            other => panic!("B: unexpected {other:?}"),
        }
    }
    assert!(
        packets < PACKETS,
        "the relay dropped packets (its queue toward B was full): {packets} of {PACKETS} arrived"
    );
    assert_eq!(
        rendezvous,
        Some(a_id.node_id),
        "B got A's rendezvous ({packets} packets read)"
    );
    relay.stop().await.unwrap();
}

/// A session that never registers is closed at the registration deadline, however often it
/// pings; one that registers stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_session_is_closed_at_the_registration_deadline() {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    start.limits.register_timeout = Duration::from_millis(500);
    relay.start(start).await.unwrap();
    let (idle, _, _e1) = node(&relay).await;
    let (member, _, _e2) = node(&relay).await;
    member.send(&register()).await.unwrap();
    assert!(matches!(
        recv_frame(&member).await,
        Frame::Registered { .. }
    ));
    let t0 = std::time::Instant::now();
    let mut pongs = 0;
    let ended = loop {
        idle.send(&Frame::Ping { nonce: pongs }).await.ok();
        match tokio::time::timeout(Duration::from_millis(200), idle.recv()).await {
            Ok(Ok(Some(Frame::Pong { .. }))) => pongs += 1,
            Ok(Ok(Some(other))) => panic!("unexpected {other:?}"),
            Ok(Ok(None)) | Ok(Err(_)) => break t0.elapsed(),
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a pinging, unregistered session outlived the 500 ms deadline by 4.5 s ({pongs} pongs)"
        );
    };
    assert!(pongs >= 1, "it was served until the deadline");
    assert!(
        ended >= Duration::from_millis(400),
        "closed at the deadline, not before: {ended:?}"
    );
    // The registered one is still served after the deadline.
    member.send(&Frame::Ping { nonce: 7 }).await.unwrap();
    assert_eq!(recv_frame(&member).await, Frame::Pong { nonce: 7 });
    relay.stop().await.unwrap();
}

/// `from` sends `to` a one-byte packet through the relay, and it arrives tagged with its sender.
async fn delivered(
    (from, from_id): (&RelayClient, &LoadedIdentity),
    (to, to_id): (&RelayClient, &LoadedIdentity),
    byte: u8,
) {
    from.send(&Frame::SendPacket {
        dst: to_id.node_id,
        datagram: vec![byte],
    })
    .await
    .unwrap();
    assert_eq!(
        recv_frame(to).await,
        Frame::RecvPacket {
            src: from_id.node_id,
            datagram: vec![byte]
        }
    );
}

async fn relay_with(set: impl FnOnce(&mut RelayStart)) -> RelayServer {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    set(&mut start);
    relay.start(start).await.unwrap();
    relay
}

fn register_as(caller: bool, token: &str) -> Frame {
    Frame::Register {
        want_port: false,
        caller,
        local_port: None,
        token: token.into(),
    }
}

/// `id`'s signed discovery record, signed `skew_ms` from now.
fn record_of(id: &LoadedIdentity, skew_ms: i64) -> Vec<u8> {
    use keynet_core::discovery::record::{self, Record};
    let seed = record::ed25519_seed_of_pkcs8(id.key.secret_der()).expect("an Ed25519 identity");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    Record {
        node_id: id.node_id,
        signed_at_ms: (now + skew_ms) as u64,
        observed: None,
        addrs: vec!["192.0.2.1:4433".parse().unwrap()],
        relays: vec![],
    }
    .sign(&seed)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_needs_no_token_and_only_the_nodes_it_called_reach_it() {
    let relay = relay_with(|s| s.token = Some("s3cret".into())).await;
    let (b, b_id, _eb) = node(&relay).await;
    let (a, a_id, _ea) = node(&relay).await;
    let (c, _c_id, _ec) = node(&relay).await;
    b.send(&register_as(false, "s3cret")).await.unwrap();
    assert!(matches!(recv_frame(&b).await, Frame::Registered { .. }));
    // A and C have no token: as callers they register anyway, and are not listed.
    for x in [&a, &c] {
        x.send(&register_as(true, "")).await.unwrap();
        assert!(matches!(recv_frame(x).await, Frame::Registered { .. }));
    }
    assert_eq!(relay.registered().unwrap(), vec![b_id.node_id]);
    // B cannot reach A before A called it, nor can C ever.
    b.send(&Frame::SendPacket {
        dst: a_id.node_id,
        datagram: vec![1],
    })
    .await
    .unwrap();
    assert_eq!(
        recv_frame(&b).await,
        Frame::PeerGone {
            node: a_id.node_id,
            reason: GoneReason::Unknown
        }
    );
    // A calls B, B answers A.
    delivered((&a, &a_id), (&b, &b_id), 2).await;
    delivered((&b, &b_id), (&a, &a_id), 3).await;
    c.send(&Frame::SendPacket {
        dst: a_id.node_id,
        datagram: vec![4],
    })
    .await
    .unwrap();
    assert!(matches!(recv_frame(&c).await, Frame::PeerGone { node, .. } if node == a_id.node_id));
    // A caller announces nothing, and a caller asking for a public port gets none (told why).
    a.send(&Frame::Announce {
        record: record_of(&a_id, 0),
    })
    .await
    .unwrap();
    assert!(matches!(
        recv_frame(&a).await,
        Frame::Error { code: 403, .. }
    ));
    let (f, _f_id, _ef) = node(&relay).await;
    f.send(&Frame::Register {
        want_port: true,
        caller: true,
        local_port: None,
        token: String::new(),
    })
    .await
    .unwrap();
    assert!(matches!(
        recv_frame(&f).await,
        Frame::Registered {
            public_port: None,
            ..
        }
    ));
    match recv_frame(&f).await {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, 403);
            assert!(message.contains("public port"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    relay.stop().await.unwrap();

    // A relay that takes no callers ends a caller's session with a 401.
    let closed = relay_with(|s| {
        s.token = Some("s3cret".into());
        s.callers = false;
    })
    .await;
    let (d, _d_id, _ed) = node(&closed).await;
    d.send(&register_as(true, "")).await.unwrap();
    match recv_frame(&d).await {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, 401);
            assert!(message.contains("no callers"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(closed.registered().unwrap().is_empty());
    closed.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_announces_only_its_own_fresh_record_and_not_too_often() {
    let (queue, mut stored) = tokio::sync::mpsc::channel(8);
    let relay = relay_with(|s| s.records = Some(queue)).await;
    let (_b, b_id, _eb) = node(&relay).await;
    // Each check on a session of its own: one announce per session per 5 s, refused or not.
    let registered = || async {
        let (c, id, ep) = node(&relay).await;
        c.send(&register()).await.unwrap();
        assert!(matches!(recv_frame(&c).await, Frame::Registered { .. }));
        (c, id, ep)
    };
    let refusal = |f: Frame| match f {
        Frame::Error { code, message, .. } => (code, message),
        other => panic!("{other:?}"),
    };
    // Before registering: refused.
    let (a, a_id, _ea) = node(&relay).await;
    a.send(&Frame::Announce {
        record: record_of(&a_id, 0),
    })
    .await
    .unwrap();
    assert_eq!(refusal(recv_frame(&a).await).0, 401);
    // Another node's record (validly signed by it): refused, nothing stored.
    let (c, _c_id, _ec) = registered().await;
    c.send(&Frame::Announce {
        record: record_of(&b_id, 0),
    })
    .await
    .unwrap();
    assert_eq!(refusal(recv_frame(&c).await).0, 403);
    // A refused record counts against the rate too (its check cost a signature check).
    c.send(&Frame::Announce {
        record: record_of(&b_id, 0),
    })
    .await
    .unwrap();
    assert_eq!(refusal(recv_frame(&c).await).0, 429);
    // A forged one: refused.
    let (d, d_id, _ed) = registered().await;
    let mut forged = record_of(&d_id, 0);
    let at = forged.len() - 1;
    forged[at] ^= 1;
    d.send(&Frame::Announce { record: forged }).await.unwrap();
    let (code, message) = refusal(recv_frame(&d).await);
    assert_eq!(code, 400);
    assert!(message.contains("signature"), "{message}");
    // Its own: taken to the store, as sent; again at once: too fast.
    let (e, e_id, _ee) = registered().await;
    let own = record_of(&e_id, 0);
    e.send(&Frame::Announce {
        record: own.clone(),
    })
    .await
    .unwrap();
    let (who, got) = tokio::time::timeout(T, stored.recv())
        .await
        .expect("stored in time")
        .unwrap();
    assert_eq!((who, got), (e_id.node_id, own));
    e.send(&Frame::Announce {
        record: record_of(&e_id, 0),
    })
    .await
    .unwrap();
    assert_eq!(refusal(recv_frame(&e).await).0, 429);
    assert!(stored.try_recv().is_err(), "only the first was stored");
    relay.stop().await.unwrap();

    // A relay without a record store says so.
    let plain = relay_with(|_| {}).await;
    let (c, c_id, _ec) = node(&plain).await;
    c.send(&register()).await.unwrap();
    assert!(matches!(recv_frame(&c).await, Frame::Registered { .. }));
    c.send(&Frame::Announce {
        record: record_of(&c_id, 0),
    })
    .await
    .unwrap();
    assert!(matches!(
        recv_frame(&c).await,
        Frame::Error { code: 501, .. }
    ));
    plain.stop().await.unwrap();
}

/// The relay tells both sides of a rendezvous whose NAT changed ports (it compares the port a
/// node says it binds with the port it sees): the birthday punch's roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendezvous_says_whose_nat_changed_its_port() {
    use keynet_core::proto::relay::Mapping;
    let relay = relay().await;
    let (a, _a_id, ea) = node(&relay).await;
    let (b, b_id, eb) = node(&relay).await;
    // A reports its real port (loopback: no NAT); B one its "NAT" did not keep.
    let reg = |port: u16| Frame::Register {
        want_port: false,
        caller: false,
        local_port: Some(port),
        token: String::new(),
    };
    a.send(&reg(ea.local_addr().unwrap().port())).await.unwrap();
    b.send(&reg(eb.local_addr().unwrap().port() ^ 1))
        .await
        .unwrap();
    for c in [&a, &b] {
        assert!(matches!(recv_frame(c).await, Frame::Registered { .. }));
    }
    a.send(&Frame::SendPacket {
        dst: b_id.node_id,
        datagram: vec![1],
    })
    .await
    .unwrap();
    assert!(matches!(recv_frame(&b).await, Frame::RecvPacket { .. }));
    a.send(&Frame::CallMeMaybe { peer: b_id.node_id })
        .await
        .unwrap();
    let mapping_of = |f: Frame| match f {
        Frame::Rendezvous { mapping, .. } => mapping,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        mapping_of(recv_frame(&a).await),
        Mapping {
            peer_varies: true,
            you_vary: false
        }
    );
    assert_eq!(
        mapping_of(recv_frame(&b).await),
        Mapping {
            peer_varies: false,
            you_vary: true
        }
    );
    relay.stop().await.unwrap();
}
