//! End-to-end over loopback: a TCP client -> ForwardProxy (HTTP CONNECT) -> QUIC ->
//! ReverseProxy -> a TCP echo server.

use std::time::Duration;

use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, ReverseProxy, ReverseStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod common;

use common::{connect, echo_server, tunnel_to, TOKEN};

async fn pair() -> (ForwardProxy, ReverseProxy) {
    let server = echo_server().await;
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        allowed_node_ids: None,
        discovery: None,
        relay: None,
        ..ReverseStart::new(server)
    })
    .await
    .unwrap();
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    (fp, rp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_echoes_and_half_closes() {
    let (fp, rp) = pair().await;
    let mut s = tunnel_to(&fp, &rp).await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
    let (mut r, mut w) = s.split();
    let writer = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: the echo server sees EOF and closes back
    };
    let mut got = Vec::new();
    let reader = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(writer, reader);
    assert_eq!(n.unwrap(), data.len());
    assert_eq!(got, data);
    assert_eq!(fp.connection_count(), 1);
    let info = fp
        .connection_info_by_ingress(rp.ingress_addr().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(info.node_id, rp.node_id().unwrap().to_string());
    assert_eq!(info.path.as_str(), "direct");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_526_and_unknown_address_is_400() {
    let (fp, rp) = pair().await;
    let other = keynet_core::generate_identity().unwrap().node_id;
    let (_, head) = connect(
        &fp,
        &format!("{}?nodeId={other}", rp.ingress_addr().unwrap()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 526"), "{head}");
    let (_, head) = connect(&fp, &rp.ingress_addr().unwrap().to_string()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_with_504() {
    let fp = ForwardProxy::new(
        TOKEN.into(),
        ConnOptions {
            connect_time: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let id = keynet_core::generate_identity().unwrap().node_id;
    let t = std::time::Instant::now();
    let (_, head) = connect(
        &fp,
        &format!("{}?nodeId={id}", silent.local_addr().unwrap()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(5));
    fp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_frees_ports_and_works_again() {
    let (fp, rp) = pair().await;
    let ingress = rp.ingress_addr().unwrap();
    let proxy = fp.proxy_addr().unwrap();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    // The ports are free again: bind them ourselves.
    drop(std::net::UdpSocket::bind(ingress).unwrap());
    drop(std::net::TcpListener::bind(proxy).unwrap());
    rp.start(ReverseStart {
        ingress_addr: ingress,
        tls: None,
        allowed_node_ids: None,
        discovery: None,
        relay: None,
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    fp.start(ForwardStart {
        proxy_addr: proxy,
        ..Default::default()
    })
    .await
    .unwrap();
    let (mut s, head) = connect(&fp, &format!("{ingress}?nodeId={}", rp.node_id().unwrap())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_egress_tracks_ipv4_peers_under_their_ipv4_address() {
    let server = echo_server().await;
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let start = ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        allowed_node_ids: None,
        discovery: None,
        relay: None,
        ..ReverseStart::new(server)
    };
    rp.start(start).await.unwrap();
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    let egress = "[::]:0".parse().unwrap();
    fp.start(ForwardStart {
        egress_addr: egress,
        ..Default::default()
    })
    .await
    .unwrap();
    let ingress = rp.ingress_addr().unwrap();
    let id = rp.node_id().unwrap();
    fp.open_connection(ingress, Some(id), None, None)
        .await
        .unwrap();
    // The second open and a CONNECT reuse it: still one connection, found by its IPv4 address.
    fp.open_connection(ingress, Some(id), None, None)
        .await
        .unwrap();
    let (mut s, head) = connect(&fp, &ingress.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"v4").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(fp.connection_count(), 1);
    assert!(fp.connection_info_by_ingress(ingress).unwrap().is_some());
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_pending_punch_and_frees_the_port() {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let start = ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        allowed_node_ids: None,
        discovery: None,
        relay: None,
        ..ReverseStart::new("127.0.0.1:9".parse().unwrap())
    };
    rp.start(start).await.unwrap();
    let ingress = rp.ingress_addr().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let punching = {
        let rp = rp.clone();
        let to = silent.local_addr().unwrap();
        tokio::spawn(async move { rp.punch_toward(to, 50, None, None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // let the punch start
    let t = std::time::Instant::now();
    rp.stop().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), punching)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(r, Err(keynet_core::Error::ReverseProxyNotRunning)),
        "{r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stop did not wait for the punch's budget"
    );
    drop(std::net::UdpSocket::bind(ingress).expect("the port is free once stop() resolved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_appears_after_the_handshake_idle_timeout_is_still_reached() {
    // connKeepAliveTimeoutTime (the QUIC idle timeout, which also bounds a handshake) is 1 s;
    // the connect budget is 6 s; the reverse proxy starts 2 s late.
    let opts = ConnOptions {
        keepalive_timeout: Duration::from_millis(1000),
        keepalive_interval: Duration::from_millis(200),
        connect_time: Duration::from_millis(6000),
        ..Default::default()
    };
    let identity = keynet_core::generate_identity().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let fp = ForwardProxy::new(TOKEN.into(), opts.clone()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let dial = {
        let fp = fp.clone();
        tokio::spawn(async move {
            fp.open_connection(port, Some(identity.node_id), None, None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(2000)).await; // the subject: a late peer
    let rp = ReverseProxy::new(opts).unwrap();
    let start = ReverseStart {
        ingress_addr: port,
        tls: Some(identity.tls.clone()),
        allowed_node_ids: None,
        discovery: None,
        relay: None,
        ..ReverseStart::new(echo_server().await)
    };
    rp.start(start).await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(10), dial)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(info.node_id, identity.node_id.to_string());
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_knows_who_calls_the_moment_it_accepts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let start = ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        allowed_node_ids: None,
        discovery: None,
        relay: None,
        ..ReverseStart::new(listener.local_addr().unwrap())
    };
    rp.start(start).await.unwrap();
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let target = format!(
        "{}?nodeId={}",
        rp.ingress_addr().unwrap(),
        rp.node_id().unwrap()
    );
    let client = tokio::spawn({
        let fp = fp.clone();
        async move { connect(&fp, &target).await }
    });
    let (_conn, from) = listener.accept().await.unwrap();
    // Asked on accept, before the tunnel carried a byte.
    let info = rp
        .connection_info_by_proxy(from)
        .unwrap()
        .expect("the caller is known at accept");
    assert_eq!(info.node_id, fp.node_id().unwrap().to_string());
    let (_s, head) = client.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

/// A peer on this host's loopback starts at the route's packet size: the loopback route is the
/// whole path, so there is nothing to probe (probing cost about 0.3 ms of CPU per connection).
/// The moment the connection is open, both ends already send 6400-byte packets; with a search
/// they would still be below that (it starts at 1452: four probes, one round trip each). Linux only:
/// elsewhere keynet does not learn a route's MTU, and every path keeps quinn's sizes.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_connection_starts_at_full_packet_size() {
    let (fp, rp) = pair().await;
    let info = fp
        .open_connection(
            rp.ingress_addr().unwrap(),
            Some(rp.node_id().unwrap()),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(info.mtu, keynet_core::socket::mtu::MAX_PAYLOAD, "{info:?}");
    // The reverse proxy lists the connection once the hellos are through: a tunnel's echo
    // comes after that.
    let mut s = tunnel_to(&fp, &rp).await;
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    let accepted = rp.connections().unwrap().pop().expect("accepted");
    assert_eq!(
        accepted.mtu,
        keynet_core::socket::mtu::MAX_PAYLOAD,
        "{accepted:?}"
    );
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}
