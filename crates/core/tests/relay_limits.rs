//! Each of the relay's limits hit on purpose, over loopback with real QUIC and TCP clients: the
//! refusal is the documented one, it is counted under its reason, the relay keeps serving
//! everyone else, and its tables stay bounded (read from its own counters).

use std::time::Duration;

use keynet_core::identity::LoadedIdentity;
use keynet_core::proto::relay::Frame;
use keynet_core::relay::client::RelayClient;
use keynet_core::relay::server::stats::{Drop, Refusal};
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::ConnOptions;
use tokio::io::AsyncReadExt;

const T: Duration = Duration::from_secs(5);

async fn relay(f: impl FnOnce(&mut RelayStart)) -> RelayServer {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    f(&mut start);
    relay.start(start).await.unwrap();
    relay
}

struct Node {
    client: RelayClient,
    id: LoadedIdentity,
    _endpoint: quinn::Endpoint,
}

async fn try_node(relay: &RelayServer) -> keynet_core::Result<Node> {
    let id = LoadedIdentity::generate().unwrap();
    let (endpoint, _socket) =
        keynet_core::socket::bind("127.0.0.1:0".parse().unwrap(), None, b"test").unwrap();
    let client = RelayClient::connect(
        &endpoint,
        &id,
        relay.addr().unwrap(),
        relay.node_id().unwrap(),
        ConnOptions::default().transport(),
        T,
    )
    .await?;
    Ok(Node {
        client,
        id,
        _endpoint: endpoint,
    })
}

/// A node registered (with a public port when `want_port`); the relay's first answer.
async fn register(n: &Node, want_port: bool) -> Frame {
    n.client
        .send(&Frame::Register {
            want_port,
            caller: false,
            local_port: None,
            token: String::new(),
        })
        .await
        .unwrap();
    recv(n).await
}

async fn recv(n: &Node) -> Frame {
    tokio::time::timeout(T, n.client.recv())
        .await
        .expect("a frame in time")
        .unwrap()
        .expect("not closed")
}

async fn registered(relay: &RelayServer) -> Node {
    let n = try_node(relay).await.unwrap();
    assert!(matches!(
        register(&n, false).await,
        Frame::Registered { .. }
    ));
    n
}

/// Registration works end to end: two fresh nodes exchange a packet.
async fn still_serves(relay: &RelayServer) {
    let a = registered(relay).await;
    let b = registered(relay).await;
    a.client
        .send(&Frame::SendPacket {
            dst: b.id.node_id,
            datagram: vec![7; 100],
        })
        .await
        .unwrap();
    match recv(&b).await {
        Frame::RecvPacket { src, .. } => assert_eq!(src, a.id.node_id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_one_address_are_bounded_over_quic_and_tcp() {
    let relay = relay(|s| {
        s.limits.max_connections_per_ip = 2;
    })
    .await;
    let a = registered(&relay).await;
    let _b = registered(&relay).await;
    let refused = try_node(&relay)
        .await
        .err()
        .expect("a third session refused");
    assert!(refused.to_string().contains("refused"), "{refused}");
    // Over TCP too: closed before TLS, without a byte.
    let mut tcp = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(T, tcp.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let stats = relay.stats().unwrap();
    assert_eq!(stats.refusals(Refusal::MaxConnectionsPerIp), 2);
    assert_eq!(stats.gauges.sessions_quic, 2);
    // A session that ends gives its slot back.
    drop(a);
    relay_sees_sessions(&relay, 1).await;
    let _c = registered(&relay).await;
    relay.stop().await.unwrap();
}

/// Waits until the relay counts `n` QUIC sessions (a dropped client's close takes a moment).
async fn relay_sees_sessions(relay: &RelayServer, n: u64) {
    tokio::time::timeout(T, async {
        while relay.stats().unwrap().gauges.sessions_quic != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("sessions counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded_in_total() {
    let relay = relay(|s| {
        s.limits.max_connections = 2;
        s.limits.max_connections_per_ip = 2;
    })
    .await;
    let _a = registered(&relay).await;
    let _b = registered(&relay).await;
    assert!(try_node(&relay).await.is_err());
    assert_eq!(relay.stats().unwrap().refusals(Refusal::MaxConnections), 1);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_from_one_address_are_rate_limited() {
    let relay = relay(|s| {
        s.limits.handshake_burst = 3;
        s.limits.handshake_rate = 0.5;
    })
    .await;
    for _ in 0..3 {
        let n = try_node(&relay).await.unwrap();
        n.client.connection().unwrap().close(0u32.into(), b"done");
    }
    assert!(try_node(&relay).await.is_err());
    let stats = relay.stats().unwrap();
    assert_eq!(stats.refusals(Refusal::HandshakeRate), 1);
    assert!(stats.gauges.tracked_addresses <= 2);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ports_are_bounded_per_address_and_the_node_is_told() {
    let relay = relay(|s| s.limits.max_ports_per_ip = 1).await;
    let a = try_node(&relay).await.unwrap();
    assert!(matches!(
        register(&a, true).await,
        Frame::Registered {
            public_port: Some(_),
            ..
        }
    ));
    // The next is registered (its relayed traffic works), without a port, and told why.
    let b = try_node(&relay).await.unwrap();
    assert!(matches!(
        register(&b, true).await,
        Frame::Registered {
            public_port: None,
            ..
        }
    ));
    match recv(&b).await {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, 503);
            assert!(message.contains("no public port"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Registering again on the same session is refused (it would reset the node's budgets).
    match register(&b, false).await {
        Frame::Error { code, .. } => assert_eq!(code, 400),
        other => panic!("{other:?}"),
    }
    let stats = relay.stats().unwrap();
    assert_eq!(stats.refusals(Refusal::NoPort), 1);
    assert_eq!(stats.gauges.allocations, 1);
    still_serves(&relay).await;
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_beyond_a_nodes_queue_bytes_are_dropped_and_counted() {
    let limit = 8 * 1500;
    let relay = relay(|s| s.limits.queue_bytes = limit).await;
    let a = registered(&relay).await;
    let b = registered(&relay).await;
    // B reads nothing while A sends far more than its queue and its stream window hold.
    let sent = 12_000u64;
    for _ in 0..sent {
        let p = Frame::SendPacket {
            dst: b.id.node_id,
            datagram: vec![1; 1200],
        };
        a.client.send(&p).await.unwrap();
    }
    // A's session is still served (a ping answered) after the flood.
    a.client.send(&Frame::Ping { nonce: 5 }).await.unwrap();
    loop {
        if let Frame::Pong { nonce: 5 } = recv(&a).await {
            break;
        }
    }
    let stats = relay.stats().unwrap();
    assert!(stats.drops(Drop::QueueFull) > 0, "{stats:?}");
    assert_eq!(
        stats.drops(Drop::QueueFull) + stats.packets_relayed,
        sent,
        "every packet relayed or counted as dropped"
    );
    assert!(
        stats.gauges.queued_bytes <= limit as u64,
        "{}",
        stats.gauges.queued_bytes
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_over_max_datagram_are_dropped_and_counted() {
    let relay = relay(|s| s.limits.max_datagram = 1200).await;
    let a = registered(&relay).await;
    let b = registered(&relay).await;
    for len in [1300, 1200] {
        let p = Frame::SendPacket {
            dst: b.id.node_id,
            datagram: vec![len as u8; len],
        };
        a.client.send(&p).await.unwrap();
    }
    // Only the one that fits arrives.
    match recv(&b).await {
        Frame::RecvPacket { datagram, .. } => assert_eq!(datagram.len(), 1200),
        other => panic!("{other:?}"),
    }
    let stats = relay.stats().unwrap();
    assert_eq!(stats.drops(Drop::TooLarge), 1);
    assert_eq!(stats.packets_relayed, 1);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_sends_but_never_reads_is_disconnected_after_the_node_timeout() {
    let relay = relay(|s| s.limits.node_timeout = Duration::from_secs(1)).await;
    let deaf = registered(&relay).await;
    let loud = registered(&relay).await;
    // The deaf node keeps sending (pongs need no answer), so it is never silent...
    let keepalive = {
        let client = std::sync::Arc::new(deaf.client);
        let c = client.clone();
        tokio::spawn(async move {
            let mut nonce = 0;
            while c.send(&Frame::Pong { nonce }).await.is_ok() {
                nonce += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        client
    };
    // ...but reads nothing while the other floods it, past its stream window.
    let victim = deaf.id.node_id;
    let flood = tokio::spawn(async move {
        let p = Frame::SendPacket {
            dst: victim,
            datagram: vec![5; 1200],
        };
        while loud.client.send(&p).await.is_ok() {}
    });
    tokio::time::timeout(T * 4, async {
        while relay.registered().unwrap().contains(&deaf.id.node_id) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the node that reads nothing was disconnected");
    assert_eq!(relay.stats().unwrap().refusals(Refusal::NotReading), 1);
    flood.abort();
    still_serves(&relay).await;
    drop(keepalive);
    relay.stop().await.unwrap();
}
