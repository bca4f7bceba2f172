//! A started proxy or relay whose last handle is dropped without `stop()` does not live on: its
//! tasks end, its connections close (the peer sees it), and its ports are free again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, ReverseProxy, ReverseStart};

mod common;

/// Waits (bounded) until both ports can be bound again: a freed port has no event to await.
async fn wait_free(tcp: Option<SocketAddr>, udp: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcp_free = tcp.is_none_or(|a| std::net::TcpListener::bind(a).is_ok());
        let udp_free = std::net::UdpSocket::bind(udp).is_ok();
        if tcp_free && udp_free {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still bound 5 s after the drop: tcp {tcp:?} free {tcp_free}, udp {udp} free {udp_free}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_started_forward_proxy_frees_its_ports() {
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let (tcp, udp) = (fp.proxy_addr().unwrap(), fp.egress_addr().unwrap());
    assert!(
        std::net::TcpListener::bind(tcp).is_err(),
        "in use while running"
    );
    drop(fp);
    wait_free(Some(tcp), udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_connected_reverse_proxy_closes_its_connections_and_frees_its_port() {
    let server = common::echo_server().await;
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart::new(server)).await.unwrap();
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let ingress = rp.ingress_addr().unwrap();
    fp.open_connection(ingress, rp.node_id().ok(), None, None)
        .await
        .unwrap();
    assert_eq!(fp.connection_count(), 1);
    drop(rp);
    // The forward proxy hears the close at once (not after its idle timeout).
    let deadline = Instant::now() + Duration::from_secs(3);
    while fp.connection_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the connection outlived the dropped proxy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_free(None, ingress).await;
    fp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_started_relay_frees_its_ports() {
    use keynet_core::relay::server::{RelayServer, RelayStart};
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    relay
        .start(RelayStart::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let (udp, tcp) = (relay.addr().unwrap(), relay.tcp_addr().unwrap());
    drop(relay);
    wait_free(Some(tcp), udp).await;
}
