//! Relayed connections over loopback: a forward proxy reaches a reverse proxy only through a
//! relay (QUIC or WebSocket), the tunnel carries bytes end to end, the rendezvous moves it off
//! the relay without losing a byte, refusals are typed, and the relay's public port carries
//! plain TCP clients.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{echo_server, echo_through};
use keynet_core::relay::alloc::AllocOptions;
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::relay::spec::Transport;
use keynet_core::relay::spec::{LinkStatus, RelaySpec};
use keynet_core::{
    ConnOptions, Event, EventKind, ForwardProxy, ForwardStart, Path, ReverseProxy, ReverseStart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

async fn relay_with(f: impl FnOnce(&mut RelayStart)) -> RelayServer {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    f(&mut start);
    relay.start(start).await.unwrap();
    relay
}

fn spec(relay: &RelayServer) -> RelaySpec {
    let mut s = RelaySpec::new(relay.addr().unwrap(), relay.node_id().unwrap());
    s.tcp_addr = Some(relay.tcp_addr().unwrap());
    s
}

async fn reverse_proxy(server: SocketAddr, relay: RelaySpec) -> ReverseProxy {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        relay: Some(relay),
        ..ReverseStart::new(server)
    })
    .await
    .unwrap();
    rp
}

type Events = mpsc::UnboundedReceiver<Event>;

async fn forward_proxy() -> (ForwardProxy, Events) {
    forward_proxy_with(ForwardStart::default()).await
}

/// A forward proxy started with `start`, and its events.
async fn forward_proxy_with(start: ForwardStart) -> (ForwardProxy, Events) {
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    fp.set_event_sink(Some(Arc::new(move |ev| {
        let _ = tx.send(ev);
    })));
    fp.start(start).await.unwrap();
    (fp, rx)
}

/// An address nothing answers at: the relayed connection is tracked under it.
fn unreachable() -> SocketAddr {
    "192.0.2.1:9".parse().unwrap()
}

/// The next event that satisfies `f` (earlier ones are consumed).
async fn wait_for(events: &mut Events, f: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(T, async {
        loop {
            let e = events.recv().await.expect("the proxy is running");
            if f(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

/// `fp` opens a relayed connection to `rp` through `relay` (rendezvous 300 ms after it is up),
/// tracked under [`unreachable`].
async fn open_relayed(
    fp: &ForwardProxy,
    rp: &ReverseProxy,
    relay: &RelayServer,
) -> keynet_core::ConnectionInfo {
    let mut s = spec(relay);
    s.upgrade_delay = Duration::from_millis(300);
    let info = fp
        .open_connection_via(unreachable(), rp.node_id().unwrap(), s, None, None)
        .await
        .unwrap();
    assert_eq!(info.path, Path::Relayed);
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_tunnel_carries_bytes_then_moves_off_the_relay_without_losing_any() {
    let relay = relay_with(|_| {}).await;
    let rp = reverse_proxy(echo_server().await, spec(&relay)).await;
    let (fp, mut events) = forward_proxy().await;
    let info = open_relayed(&fp, &rp, &relay).await;
    assert_eq!(info.node_id, rp.node_id().unwrap().to_string());
    // A 16 MiB echo runs while the rendezvous moves the connection to the direct path.
    echo_through(&fp, &unreachable().to_string(), 16 << 20).await;
    let moved = wait_for(&mut events, |e| e.kind == EventKind::Path).await;
    let info = moved.info.unwrap();
    assert_ne!(info.path, Path::Relayed);
    assert_eq!(
        fp.connection_info_by_ingress(unreachable())
            .unwrap()
            .unwrap()
            .path,
        info.path
    );
    // Still the same connection, now off the relay: stopping the relay does not touch it.
    relay.stop().await.unwrap();
    echo_through(&fp, &unreachable().to_string(), 1 << 20).await;
    assert_eq!(fp.connection_count(), 1);
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upgrade_it_stays_relayed_and_closes_with_relay_lost_when_the_relay_goes() {
    let relay = relay_with(|_| {}).await;
    let rp = reverse_proxy(echo_server().await, spec(&relay)).await;
    let (fp, mut events) = forward_proxy().await;
    let mut s = spec(&relay);
    s.upgrade = false;
    s.keepalive = Duration::from_millis(500);
    fp.open_connection_via(unreachable(), rp.node_id().unwrap(), s, None, None)
        .await
        .unwrap();
    echo_through(&fp, &unreachable().to_string(), 1 << 20).await;
    relay.stop().await.unwrap();
    let closed = wait_for(&mut events, |e| e.kind == EventKind::Close).await;
    assert_eq!(
        closed.reason,
        Some(keynet_core::events::Reason::Close(
            keynet_core::events::CloseReason::RelayLost
        ))
    );
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_transport_carries_a_relayed_tunnel() {
    let relay = relay_with(|_| {}).await;
    let mut ws = spec(&relay);
    ws.transport = Transport::WebSocket;
    let rp = reverse_proxy(echo_server().await, ws.clone()).await;
    match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { transport, .. } => assert_eq!(transport, Transport::WebSocket),
        other => panic!("{other:?}"),
    }
    let (fp, _events) = forward_proxy().await;
    let info = fp
        .open_connection_via(unreachable(), rp.node_id().unwrap(), ws, None, None)
        .await
        .unwrap();
    assert_eq!(info.path, Path::Relayed);
    // Both directions at full speed at once: neither side may stop reading while it writes.
    echo_through(&fp, &unreachable().to_string(), 16 << 20).await;
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_the_relay_keeps_serving() {
    let relay = relay_with(|s| s.token = Some("letmein".into())).await;
    let (fp, _events) = forward_proxy().await;
    // Wrong token: the link never registers.
    let mut bad = spec(&relay);
    bad.token = Some("wrong".into());
    let err = fp
        .open_connection_via(
            unreachable(),
            relay.node_id().unwrap(),
            bad,
            Some(Duration::from_secs(3)),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    // Right token, unregistered target: a quick, typed refusal.
    let mut good = spec(&relay);
    good.token = Some("letmein".into());
    let stranger = keynet_core::identity::LoadedIdentity::generate()
        .unwrap()
        .node_id;
    let started = std::time::Instant::now();
    let err = fp
        .open_connection_via(unreachable(), stranger, good.clone(), None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorNodeNotFound", "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A wrong relay pin.
    let mut pinned = good.clone();
    pinned.node_id = stranger;
    pinned.addr = relay.addr().unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let err = rp
        .start(ReverseStart {
            relay: Some(pinned),
            ..ReverseStart::new(echo_server().await)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorCertChainUnclaimed");
    // The relay still serves a well-behaved pair.
    let rp = reverse_proxy(echo_server().await, good.clone()).await;
    fp.open_connection_via(unreachable(), rp.node_id().unwrap(), good, None, None)
        .await
        .unwrap();
    echo_through(&fp, &unreachable().to_string(), 64 << 10).await;
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_carries_plain_tcp_and_comes_back_after_a_reconnect() {
    let relay = relay_with(|s| {
        s.alloc = AllocOptions {
            retention: Duration::from_millis(1500),
            ..AllocOptions::default()
        }
    })
    .await;
    let mut s = spec(&relay);
    s.want_port = true;
    let server = echo_server().await;
    let rp = reverse_proxy(server, s.clone()).await;
    let port = match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => public_port.expect("a public port"),
        other => panic!("{other:?}"),
    };
    let echo = |port: u16| async move {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"plain tcp").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(T, c.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    };
    assert_eq!(echo(port).await, b"plain tcp");
    // The node goes away and comes back (same identity) within the retention: same port.
    let id = keynet_core::generate_identity().unwrap();
    rp.stop().await.unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let start = ReverseStart {
        tls: Some(id.tls.clone()),
        relay: Some(s.clone()),
        ..ReverseStart::new(server)
    };
    rp.start(start.clone()).await.unwrap();
    let first = match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => public_port.unwrap(),
        other => panic!("{other:?}"),
    };
    rp.stop().await.unwrap();
    rp.start(start.clone()).await.unwrap();
    match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => assert_eq!(public_port, Some(first)),
        other => panic!("{other:?}"),
    }
    assert_eq!(echo(first).await, b"plain tcp");
    // Away longer than the retention: the port is released (nothing listens there).
    rp.stop().await.unwrap();
    tokio::time::timeout(T, async {
        while tokio::net::TcpStream::connect(("127.0.0.1", first))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("released after the retention");
    assert!(relay
        .allocations()
        .unwrap()
        .iter()
        .all(|(_, p)| *p != first));
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_peer_limit_refuses_the_next_peer_with_a_typed_error() {
    let relay = relay_with(|s| s.limits.max_peers = 1).await;
    let rp1 = reverse_proxy(echo_server().await, spec(&relay)).await;
    let rp2 = reverse_proxy(echo_server().await, spec(&relay)).await;
    let (fp, _events) = forward_proxy().await;
    let mut s = spec(&relay);
    s.upgrade = false;
    fp.open_connection_via(unreachable(), rp1.node_id().unwrap(), s.clone(), None, None)
        .await
        .unwrap();
    let other: SocketAddr = "192.0.2.2:9".parse().unwrap();
    let err = fp
        .open_connection_via(other, rp2.node_id().unwrap(), s, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorNodeNotFound", "{err}");
    assert!(err.to_string().contains("too many relayed peers"), "{err}");
    // The first peer still works.
    echo_through(&fp, &unreachable().to_string(), 64 << 10).await;
    fp.stop().await.unwrap();
    rp1.stop().await.unwrap();
    rp2.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_is_not_an_open_proxy() {
    let relay = relay_with(|_| {}).await;
    // An echo server that counts who reaches it.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    // Plain HTTP CONNECT to the relay's TCP port: not TLS, so the relay closes it unanswered.
    let mut c = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
        .await
        .unwrap();
    c.write_all(
        format!("CONNECT {target_addr} HTTP/1.1\r\nHost: {target_addr}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, c.read_to_end(&mut got))
        .await
        .expect("closed in time");
    assert!(!String::from_utf8_lossy(&got).contains("200"), "{got:?}");
    // Nothing was dialled on the client's behalf.
    let accepted = tokio::time::timeout(Duration::from_millis(300), target.accept()).await;
    assert!(
        accepted.is_err(),
        "the relay connected to the requested address"
    );
    // Nor can a QUIC node name an address: frames carry node ids only, so a packet for an
    // unregistered node is refused (covered by refusals_are_typed_and_the_relay_keeps_serving).
    relay.stop().await.unwrap();
}

/// A port free for both UDP and TCP on 127.0.0.1, below Linux's ephemeral range (32768 on), so
/// no socket bound to port 0 is given it meanwhile.
fn port_outside_ephemeral_range() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64);
    (0..2000u64)
        .map(|i| 20000 + ((seed.wrapping_mul(2654435761).wrapping_add(i * 7919)) % 12000) as u16)
        .find(|&p| {
            std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        })
        .expect("a free port in 20000..32000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_survive_a_relay_restart_with_a_state_file() {
    let dir = std::env::temp_dir().join(format!("keynet-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("alloc");
    let relay_id = keynet_core::generate_identity().unwrap();
    let start = |addr: SocketAddr, tcp: Option<SocketAddr>| {
        let mut s = RelayStart::new(addr);
        s.tcp_addr = tcp;
        s.tls = Some(relay_id.tls.clone());
        s.alloc.state_file = Some(state.clone());
        s
    };
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    // A port below the ephemeral range: between the stop and the restart below, another test
    // binding port 0 can be handed an ephemeral port just freed (seen once in CI: AddrInUse).
    let fixed = SocketAddr::from(([127, 0, 0, 1], port_outside_ephemeral_range()));
    relay.start(start(fixed, None)).await.unwrap();
    let (addr, tcp) = (relay.addr().unwrap(), relay.tcp_addr().unwrap());
    let node = keynet_core::generate_identity().unwrap();
    let mut s = spec(&relay);
    s.want_port = true;
    let rp_start = ReverseStart {
        tls: Some(node.tls.clone()),
        relay: Some(s),
        ..ReverseStart::new(echo_server().await)
    };
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(rp_start.clone()).await.unwrap();
    let port = match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => public_port.unwrap(),
        other => panic!("{other:?}"),
    };
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
    // A new relay process (same identity, same addresses) reads the state file back.
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    relay.start(start(addr, Some(tcp))).await.unwrap();
    assert_eq!(relay.allocations().unwrap(), vec![(node.node_id, port)]);
    rp.start(rp_start).await.unwrap();
    match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => assert_eq!(public_port, Some(port)),
        other => panic!("{other:?}"),
    }
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_refuses_clients_over_its_limit() {
    let relay = relay_with(|s| s.limits.max_clients = 1).await;
    let mut s = spec(&relay);
    s.want_port = true;
    let rp = reverse_proxy(echo_server().await, s).await;
    let port = match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => public_port.unwrap(),
        other => panic!("{other:?}"),
    };
    // The first client holds the only slot: its echo proves it is carried.
    let mut first = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    first.write_all(b"one").await.unwrap();
    let mut b = [0u8; 3];
    tokio::time::timeout(T, first.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"one");
    // The second is closed at once, without a byte.
    let mut second = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, second.read_to_end(&mut got))
        .await
        .expect("closed in time");
    assert!(got.is_empty());
    // The first still works.
    first.write_all(b"two").await.unwrap();
    tokio::time::timeout(T, first.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"two");
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

/// A reverse proxy running as `identity` through `relay`, with its event receiver.
async fn reverse_as(
    identity: &keynet_core::Identity,
    server: SocketAddr,
    relay: RelaySpec,
) -> (ReverseProxy, Events) {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    rp.set_event_sink(Some(Arc::new(move |ev| {
        let _ = tx.send(ev);
    })));
    rp.start(ReverseStart {
        tls: Some(identity.tls.clone()),
        relay: Some(relay),
        ..ReverseStart::new(server)
    })
    .await
    .unwrap();
    (rp, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_registration_of_an_identity_wins_and_the_older_stops_retrying() {
    let relay = relay_with(|_| {}).await;
    let identity = keynet_core::generate_identity().unwrap();
    let server = echo_server().await;
    let (first, mut first_events) = reverse_as(&identity, server, spec(&relay)).await;
    let (second, mut second_events) = reverse_as(&identity, server, spec(&relay)).await;

    // The older instance is told, in its relay event.
    let down = wait_for(
        &mut first_events,
        |e| matches!(&e.relay, Some((_, LinkStatus::Down(_, why))) if why.contains("replaced")),
    )
    .await;
    let Some((_, LinkStatus::Down(_, why))) = &down.relay else {
        unreachable!()
    };
    assert!(why.contains("registered again from 127.0.0.1"), "{why}");

    // No loop: for 2 s (ten reconnects at the link's first backoff) the older does not try
    // again and the newer is not kicked out.
    let retrying = |e: &Event| !matches!(&e.relay, None | Some((_, LinkStatus::Down(..))));
    let kicked = |e: &Event| !matches!(&e.relay, None | Some((_, LinkStatus::Up { .. })));
    let quiet = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::select! {
            e = wait_for(&mut first_events, retrying) => e,
            e = wait_for(&mut second_events, kicked) => e,
        }
    })
    .await;
    assert!(quiet.is_err(), "a link changed state: {quiet:?}");
    assert!(matches!(
        first.relay_status().unwrap().unwrap().1,
        LinkStatus::Down(..)
    ));
    assert!(matches!(
        second.relay_status().unwrap().unwrap().1,
        LinkStatus::Up { .. }
    ));

    // The newer instance is the one the relay carries to.
    let (fp, _events) = forward_proxy().await;
    let info = fp
        .open_connection_via(unreachable(), identity.node_id, spec(&relay), None, None)
        .await
        .unwrap();
    assert_eq!(info.node_id, identity.node_id.to_string());
    wait_for(&mut second_events, |e| e.kind == EventKind::Connection).await;
    assert_eq!(first.connection_count(), 0);

    fp.stop().await.unwrap();
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_relay_ends_only_the_connections_relayed_through_it() {
    let r1 = relay_with(|_| {}).await;
    let r2 = relay_with(|_| {}).await;
    let stay = |r: &RelayServer| RelaySpec {
        upgrade: false,
        ..spec(r)
    };
    let identity = keynet_core::generate_identity().unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    rp.set_event_sink(Some(Arc::new(move |ev| {
        let _ = tx.send(ev);
    })));
    rp.start(ReverseStart {
        tls: Some(identity.tls.clone()),
        relay: Some(stay(&r1)),
        relays: vec![stay(&r2)],
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    // Both relays up (the start waits for one).
    tokio::time::timeout(T, async {
        while rp
            .relays_status()
            .unwrap()
            .0
            .iter()
            .any(|(_, s)| !matches!(s, LinkStatus::Up { .. }))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both relays up");
    // One caller through each relay.
    let (via1, mut via1_events) = forward_proxy().await;
    let (via2, _e2) = forward_proxy().await;
    via1.open_connection_via(unreachable(), identity.node_id, stay(&r1), None, None)
        .await
        .unwrap();
    via2.open_connection_via(unreachable(), identity.node_id, stay(&r2), None, None)
        .await
        .unwrap();
    echo_through(&via1, &unreachable().to_string(), 1 << 16).await;
    echo_through(&via2, &unreachable().to_string(), 1 << 16).await;
    assert_eq!(rp.connection_count(), 2);

    // The second relay dies: its connection ends as relayLost, the first goes on.
    r2.stop().await.unwrap();
    let closed = wait_for(&mut events, |e| e.kind == EventKind::Close).await;
    assert_eq!(
        closed.reason,
        Some(keynet_core::events::Reason::Close(
            keynet_core::events::CloseReason::RelayLost
        ))
    );
    // The other connection is not closed (a redial would hide it: watch its close events).
    let closed_too = tokio::time::timeout(
        Duration::from_secs(1),
        wait_for(&mut via1_events, |e| e.kind == EventKind::Close),
    )
    .await;
    assert!(closed_too.is_err(), "{closed_too:?}");
    echo_through(&via1, &unreachable().to_string(), 1 << 16).await;
    assert_eq!(rp.connection_count(), 1);

    via1.stop().await.unwrap();
    via2.stop().await.unwrap();
    rp.stop().await.unwrap();
    r1.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_nodes_relay_over_ipv6_and_move_off_the_relay() {
    // The relay on IPv6 loopback; both proxies on dual-stack sockets (`[::]`).
    let relay = relay_with(|s| s.addr = "[::1]:0".parse().unwrap()).await;
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        ingress_addr: "[::]:0".parse().unwrap(),
        relay: Some(spec(&relay)),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    let (fp, mut events) = forward_proxy_with(ForwardStart {
        egress_addr: "[::]:0".parse().unwrap(),
        ..Default::default()
    })
    .await;
    open_relayed(&fp, &rp, &relay).await;
    echo_through(&fp, &unreachable().to_string(), 1 << 20).await;
    // The rendezvous gives each side the other's IPv6 address: the path goes direct.
    let moved = wait_for(&mut events, |e| e.kind == EventKind::Path).await;
    assert_ne!(moved.info.unwrap().path, Path::Relayed);
    relay.stop().await.unwrap();
    echo_through(&fp, &unreachable().to_string(), 1 << 20).await;
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}
