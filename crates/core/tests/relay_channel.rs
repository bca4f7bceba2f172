//! The relay's UDP packet channel (`keynet-relay/3`): relayed packets between nodes that
//! negotiated it travel as plain UDP datagrams beside their QUIC relay connection; a node on
//! the stream (WebSocket, or an older `keynet-relay/2` node) still reaches them and is reached;
//! a link that fell back to WebSocket moves to QUIC (and the channel) once UDP answers;
//! and the relay forwards a channel datagram only for its session's key from its session's
//! address.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo_server, echo_through, recv_frame};
use keynet_core::events::Event;
use keynet_core::identity::LoadedIdentity;
use keynet_core::nodeid::NodeId;
use keynet_core::proto::channel;
use keynet_core::proto::relay::Frame;
use keynet_core::relay::client::RelayClient;
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::relay::spec::{LinkStatus, RelaySpec, Transport};
use keynet_core::socket::KeynetSocket;
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, Path, ReverseProxy, ReverseStart};

const T: Duration = Duration::from_secs(10);

async fn relay() -> RelayServer {
    relay_at("127.0.0.1:0").await
}

async fn relay_at(addr: &str) -> RelayServer {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    relay
        .start(RelayStart::new(addr.parse().unwrap()))
        .await
        .unwrap();
    relay
}

fn spec(relay: &RelayServer, transport: Transport) -> RelaySpec {
    spec_at(relay, relay.addr().unwrap(), transport)
}

/// The relay reached at `addr` (one of its addresses).
fn spec_at(relay: &RelayServer, addr: SocketAddr, transport: Transport) -> RelaySpec {
    let mut s = RelaySpec::new(addr, relay.node_id().unwrap());
    s.tcp_addr = Some(relay.tcp_addr().unwrap());
    s.transport = transport;
    s.upgrade = false;
    s
}

/// A reverse proxy in front of an echo server, registered with the relay `via`.
async fn reverse_proxy_on(via: RelaySpec) -> ReverseProxy {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        relay: Some(via),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    rp
}

/// A forward proxy whose relayed connection to `rp` goes through `relay` over `transport`,
/// tracked under `ingress`.
async fn relayed_forward_proxy(
    relay: &RelayServer,
    rp: &ReverseProxy,
    transport: Transport,
    ingress: SocketAddr,
) -> ForwardProxy {
    relayed_forward_proxy_via(spec(relay, transport), rp, ingress).await
}

async fn relayed_forward_proxy_via(
    via: RelaySpec,
    rp: &ReverseProxy,
    ingress: SocketAddr,
) -> ForwardProxy {
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let info = fp
        .open_connection_via(ingress, rp.node_id().unwrap(), via, None, None)
        .await
        .unwrap();
    assert_eq!(info.path, Path::Relayed);
    fp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_packets_take_the_udp_channel_and_stream_only_nodes_still_reach_channel_nodes() {
    let relay = relay().await;
    let rp = reverse_proxy_on(spec(&relay, Transport::Quic)).await;

    // Both over QUIC: every relayed packet, both ways, goes on the channel.
    let quic_ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let fp = relayed_forward_proxy(&relay, &rp, Transport::Quic, quic_ingress).await;
    echo_through(&fp, &quic_ingress.to_string(), 8 << 20).await;
    let s = relay.stats().unwrap();
    assert!(s.packets_relayed > 5_000, "{s:?}");
    assert_eq!(s.packets_on_channel, s.packets_relayed, "{s:?}");
    assert_eq!(s.gauges.queued_bytes, 0);

    // A WebSocket node (no UDP) to the same reverse proxy: its packets that fit a channel
    // datagram reach the reverse proxy on the channel, its full-size ones (its stream carries
    // any size, so its path MTU grew past what a channel datagram holds) and every answer to
    // it go as frames on a stream.
    let ws_ingress: SocketAddr = "192.0.2.2:9".parse().unwrap();
    let ws = relayed_forward_proxy(&relay, &rp, Transport::WebSocket, ws_ingress).await;
    echo_through(&ws, &ws_ingress.to_string(), 4 << 20).await;
    let after = relay.stats().unwrap();
    let on_channel = after.packets_on_channel - s.packets_on_channel;
    let on_stream = (after.packets_relayed - s.packets_relayed) - on_channel;
    assert!(
        on_channel > 0 && on_stream > 2_000,
        "channel {on_channel}, stream {on_stream}"
    );

    ws.stop().await.unwrap();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_relaying_bulk_to_two_peers_at_once_gets_every_byte_back_from_each() {
    // The node's packets to both peers leave on one UDP flow to the relay, and both peers'
    // answers come back on one flow from it, batched per connection. (A batch that mixes
    // destinations does not arise on loopback, where a segmented send arrives unsplit: the
    // test `a_batch_from_one_node_to_several_peers…` sends one on purpose.)
    let relay = relay().await;
    let mut rps = Vec::new();
    for _ in 0..2 {
        let rp = reverse_proxy_on(spec(&relay, Transport::Quic)).await;
        rps.push(rp);
    }
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let ingress: [SocketAddr; 2] = [
        "192.0.2.1:9".parse().unwrap(),
        "192.0.2.2:9".parse().unwrap(),
    ];
    for (rp, at) in rps.iter().zip(ingress) {
        let via = spec(&relay, Transport::Quic);
        let info = fp
            .open_connection_via(at, rp.node_id().unwrap(), via, None, None)
            .await
            .unwrap();
        assert_eq!(info.path, Path::Relayed);
    }
    let (a, b) = (ingress[0].to_string(), ingress[1].to_string());
    tokio::join!(
        echo_through(&fp, &a, 8 << 20),
        echo_through(&fp, &b, 8 << 20)
    );
    let s = relay.stats().unwrap();
    assert_eq!(s.packets_on_channel, s.packets_relayed, "{s:?}");
    assert!(s.packets_relayed > 20_000, "{s:?}");
    fp.stop().await.unwrap();
    for rp in rps {
        rp.stop().await.unwrap();
    }
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_every_address_sends_channel_datagrams_from_the_one_each_node_reached() {
    // Listening on 0.0.0.0 (asked for), reached at 127.0.0.2: toward the nodes on 127.0.0.1
    // the kernel's own choice of source would be 127.0.0.1, which the nodes do not take.
    let relay = relay_at("0.0.0.0:0").await;
    let port = relay.addr().unwrap().port();
    let at: SocketAddr = ([127, 0, 0, 2], port).into();
    let rp = reverse_proxy_on(spec_at(&relay, at, Transport::Quic)).await;
    let ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let fp = relayed_forward_proxy_via(spec_at(&relay, at, Transport::Quic), &rp, ingress).await;
    echo_through(&fp, &ingress.to_string(), 1 << 20).await;
    let s = relay.stats().unwrap();
    assert!(s.packets_on_channel > 100, "{s:?}");
    assert_eq!(s.packets_on_channel, s.packets_relayed, "{s:?}");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

/// A UDP hop in front of the relay that passes QUIC and drops channel datagrams both ways (a
/// middlebox that lets QUIC through and nothing else), for one client; it runs until its task
/// is aborted.
async fn quic_only_hop(relay: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    hop(relay, |d| !channel::is_channel(d)).await
}

/// A UDP hop in front of the relay for one client that passes, both ways, the datagrams `pass`
/// takes; it runs until its task is aborted.
async fn hop(
    relay: SocketAddr,
    pass: impl Fn(&[u8]) -> bool + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(relay).await.unwrap();
    let addr = front.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut client = None;
        let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut up) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if pass(&up[..n]) {
                        let _ = back.send(&up[..n]).await;
                    }
                }
                r = back.recv(&mut down) => {
                    let Ok(n) = r else { return };
                    if let (Some(c), true) = (client, pass(&down[..n])) {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_channel_datagrams_are_dropped_on_the_way_keeps_its_packets_on_the_stream() {
    let relay = relay().await;
    // The reverse proxy reaches the relay only through the hop: its QUIC session works, its
    // channel never does (no probe answered, no datagram from it arrives).
    let (hop, hop_task) = quic_only_hop(relay.addr().unwrap()).await;
    let rp = reverse_proxy_on(spec_at(&relay, hop, Transport::Quic)).await;
    let ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let fp = relayed_forward_proxy(&relay, &rp, Transport::Quic, ingress).await;
    echo_through(&fp, &ingress.to_string(), 2 << 20).await;
    let s = relay.stats().unwrap();
    let on_stream = s.packets_relayed - s.packets_on_channel;
    // Toward the reverse proxy on its stream; toward the forward proxy on its working channel
    // when a packet fits it (the reverse proxy's full-size ones, grown on its stream, do not).
    assert!(s.packets_on_channel > 0 && on_stream > 1_000, "{s:?}");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
    hop_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_fell_back_to_websocket_moves_to_quic_once_udp_answers_and_its_connection_goes_on(
) {
    let relay = relay().await;
    // UDP between the reverse proxy and the relay is blocked at first (a firewall, a network
    // that is still coming up); its TCP is not.
    let open = Arc::new(AtomicBool::new(false));
    let pass = open.clone();
    let (hop, hop_task) = hop(relay.addr().unwrap(), move |_| pass.load(Ordering::Relaxed)).await;
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let (tx, mut states) = tokio::sync::mpsc::unbounded_channel();
    rp.set_event_sink(Some(Arc::new(move |e: Event| {
        if let Some((_, state)) = e.relay {
            let _ = tx.send(state);
        }
    })));
    rp.start(ReverseStart {
        relay: Some(spec_at(&relay, hop, Transport::Auto)),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    let on = |rp: &ReverseProxy| match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { transport, .. } => Some(transport),
        _ => None,
    };
    assert_eq!(on(&rp), Some(Transport::WebSocket), "QUIC did not answer");
    let ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let fp = relayed_forward_proxy(&relay, &rp, Transport::Quic, ingress).await;
    echo_through(&fp, &ingress.to_string(), 1 << 20).await;
    let before = relay.stats().unwrap();
    assert_eq!(before.gauges.sessions_websocket, 1, "{before:?}");

    // UDP answers: the link moves to QUIC on its own, with no `down` in between.
    open.store(true, Ordering::Relaxed);
    let moved = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(state) = states.recv().await {
            match state {
                LinkStatus::Up {
                    transport: Transport::Quic,
                    ..
                } => return Ok(()),
                down @ LinkStatus::Down(..) => return Err(down),
                _ => {}
            }
        }
        Err(LinkStatus::Connecting)
    })
    .await
    .expect("the link did not move to QUIC within 20 s");
    moved.expect("the link went down on its way to QUIC");

    // The connection relayed before the move goes on, its packets now on the relay's channel;
    // the relay holds one session per node, none on WebSocket.
    echo_through(&fp, &ingress.to_string(), 1 << 20).await;
    let after = relay.stats().unwrap();
    assert_eq!(rp.connections().unwrap().len(), 1, "the same connection");
    assert!(
        after.packets_on_channel - before.packets_on_channel > 500,
        "{before:?}\n{after:?}"
    );
    assert_eq!(after.gauges.sessions_websocket, 0, "{after:?}");
    assert_eq!(
        after.gauges.registered, before.gauges.registered,
        "{after:?}"
    );
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
    hop_task.abort();
}

/// A bare node registered with `relay` over QUIC from a socket of its own (so a test can send
/// raw channel datagrams from the session's own address), with or without a channel.
async fn bare_node(
    relay: &RelayServer,
    with_channel: bool,
) -> (
    RelayClient,
    LoadedIdentity,
    Arc<KeynetSocket>,
    quinn::Endpoint,
) {
    let id = LoadedIdentity::generate().unwrap();
    let (endpoint, socket) =
        keynet_core::socket::bind("127.0.0.1:0".parse().unwrap(), None, b"test").unwrap();
    let transport = ConnOptions::default().transport();
    let (addr, relay_id) = (relay.addr().unwrap(), relay.node_id().unwrap());
    let client = if with_channel {
        RelayClient::connect_with_channel(&endpoint, &id, addr, relay_id, transport, T).await
    } else {
        RelayClient::connect(&endpoint, &id, addr, relay_id, transport, T).await
    }
    .unwrap();
    client
        .send(&Frame::Register {
            want_port: false,
            caller: false,
            local_port: None,
            token: String::new(),
        })
        .await
        .unwrap();
    assert!(matches!(
        recv_frame(&client).await,
        Frame::Registered { .. }
    ));
    (client, id, socket, endpoint)
}

/// The channel key a `/3` session's relay sends after `Registered`.
async fn channel_key(client: &RelayClient) -> channel::Key {
    match recv_frame(client).await {
        Frame::Channel { key } => key,
        other => panic!("expected the channel key, got {other:?}"),
    }
}

/// A bare node with a channel whose relay sends it channel datagrams: what arrives on its socket
/// goes to the returned receiver, one datagram each. Its channel works at the relay (it probed
/// and was answered).
async fn watched_node(
    relay: &RelayServer,
) -> (
    RelayClient,
    NodeId,
    channel::Key,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    quinn::Endpoint,
) {
    let (client, id, socket, endpoint) = bare_node(relay, true).await;
    let key = channel_key(&client).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    socket.set_channel_sink(Box::new(move |_from, segments, stride| {
        for d in segments.chunks(stride.max(1)) {
            let _ = tx.send(d.to_vec());
        }
    }));
    let probe = channel::signal(channel::Kind::Probe, &key);
    socket
        .try_send_now(relay.addr().unwrap(), None, &probe)
        .unwrap();
    let ack = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(channel::parse(&ack).unwrap().kind, channel::Kind::ProbeAck);
    (client, id.node_id, key, rx, endpoint)
}

/// The first bytes of the next `n` packets relayed to a watched node, each checked: from
/// `from`, with the node's own `key`, 255 bytes.
async fn relayed_tags(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    n: usize,
    key: channel::Key,
    from: NodeId,
) -> Vec<u8> {
    let mut tags = Vec::new();
    while tags.len() < n {
        let d = tokio::time::timeout(T, rx.recv())
            .await
            .expect("a packet for this peer did not arrive")
            .unwrap();
        let d = channel::parse(&d).unwrap();
        assert_eq!(d.kind, channel::Kind::FromRelay);
        assert_eq!(d.key, key, "sent with the peer's own key");
        assert_eq!(d.node, from);
        assert_eq!(d.packet.len(), 255);
        tags.push(d.packet[0]);
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_one_node_to_several_peers_reaches_each_peer_with_only_its_own_packets() {
    let relay = relay().await;
    let relay_addr = relay.addr().unwrap();
    let (a, a_id, a_socket, _ea) = bare_node(&relay, true).await;
    let a_key = channel_key(&a).await;
    let (_b, b, b_key, mut b_rx, _eb) = watched_node(&relay).await;
    let (_c, c, c_key, mut c_rx, _ec) = watched_node(&relay).await;
    let seg =
        |dst: &NodeId, tag: u8| channel::encode(channel::Kind::ToRelay, &a_key, dst, &[tag; 255]);
    // One segmented send (the relay receives it as one batch): B, C, B. Then a batch of one
    // destination, forwarded whole: C, C.
    let mixed = [seg(&b, 1), seg(&c, 2), seg(&b, 3)].concat();
    assert_eq!(a_socket.try_send_segments(relay_addr, None, &mixed, 300), 3);
    let uniform = [seg(&c, 4), seg(&c, 5)].concat();
    assert_eq!(
        a_socket.try_send_segments(relay_addr, None, &uniform, 300),
        2
    );
    let from = a_id.node_id;
    assert_eq!(relayed_tags(&mut c_rx, 3, c_key, from).await, [2, 4, 5]);
    assert_eq!(relayed_tags(&mut b_rx, 2, b_key, from).await, [1, 3]);
    assert!(
        b_rx.try_recv().is_err(),
        "B got a packet that was not its own"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_a_channel_datagram_only_with_its_sessions_key_from_its_address() {
    let relay = relay().await;
    let relay_addr = relay.addr().unwrap();
    let (a, a_id, a_socket, _ea) = bare_node(&relay, true).await;
    let key = channel_key(&a).await;
    // B speaks keynet-relay/2: no channel, packets for it come as frames.
    let (b, b_id, _b_socket, _eb) = bare_node(&relay, false).await;
    let b_node = b_id.node_id;
    let drops = |r: &RelayServer| {
        let s = r.stats().unwrap();
        s.drops.iter().find(|(k, _)| *k == "bad_channel").unwrap().1
    };

    // A has sent nothing on its channel yet: B's packets for it still go as frames.
    b.send(&Frame::SendPacket {
        dst: a_id.node_id,
        datagram: b"early".to_vec(),
    })
    .await
    .unwrap();
    assert!(
        matches!(recv_frame(&a).await, Frame::RecvPacket { datagram, .. } if datagram == b"early")
    );

    // The right key from another address: dropped, counted.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = channel::encode(channel::Kind::ToRelay, &key, &b_node, b"forged");
    stranger.send_to(&forged, relay_addr).unwrap();
    // A wrong key from A's own address: dropped, counted.
    let mut wrong = key;
    wrong[0] ^= 1;
    let guessed = channel::encode(channel::Kind::ToRelay, &wrong, &b_node, b"guessed");
    a_socket.try_send_now(relay_addr, None, &guessed).unwrap();
    // The right key from A's address: forwarded to B on its stream, from A.
    let real = channel::encode(channel::Kind::ToRelay, &key, &b_node, b"real");
    a_socket.try_send_now(relay_addr, None, &real).unwrap();
    match recv_frame(&b).await {
        Frame::RecvPacket { src, datagram } => {
            assert_eq!(src, a_id.node_id);
            assert_eq!(datagram, b"real", "only the real datagram was forwarded");
        }
        other => panic!("{other:?}"),
    }
    // The drops were counted before the real one was forwarded (one socket, in order).
    assert_eq!(drops(&relay), 2);
    assert_eq!(
        relay.stats().unwrap().packets_on_channel,
        0,
        "B has no channel"
    );
    // A's datagram arrived, so its channel works: B's packets for it now take it (A's socket
    // drops them: this bare client has no relayed peers), not A's stream.
    b.send(&Frame::SendPacket {
        dst: a_id.node_id,
        datagram: b"late".to_vec(),
    })
    .await
    .unwrap();
    tokio::time::timeout(T, async {
        while relay.stats().unwrap().packets_on_channel == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("sent on A's channel");

    relay.stop().await.unwrap();
}
