//! The proxies' own bounds, hit on purpose over loopback: a reverse proxy refuses connections
//! beyond `max_connections` and holds tunnels beyond `max_streams_per_connection` until one
//! ends; a forward proxy answers `503` to clients beyond its `max_connections`. Each time the
//! ones already served go on.

mod common;

use std::time::Duration;

use common::{connect, echo_server, TOKEN};
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, ReverseProxy, ReverseStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

async fn reverse(f: impl FnOnce(&mut ReverseStart)) -> (ReverseProxy, String) {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let mut start = ReverseStart::new(echo_server().await);
    f(&mut start);
    rp.start(start).await.unwrap();
    let target = format!(
        "{}?nodeId={}",
        rp.ingress_addr().unwrap(),
        rp.node_id().unwrap()
    );
    (rp, target)
}

async fn forward(f: impl FnOnce(&mut ForwardStart)) -> ForwardProxy {
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    let mut start = ForwardStart::default();
    f(&mut start);
    fp.start(start).await.unwrap();
    fp
}

/// A CONNECT to `target` through `fp` in a task of its own (it may wait for a stream).
fn spawn_connect(fp: &ForwardProxy, target: &str) -> tokio::task::JoinHandle<(TcpStream, String)> {
    let (fp, target) = (fp.clone(), target.to_string());
    tokio::spawn(async move { connect(&fp, &target).await })
}

async fn echoes(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).await.unwrap();
    let mut b = vec![0u8; what.len()];
    tokio::time::timeout(T, s.read_exact(&mut b))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(b, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_proxy_refuses_connections_beyond_max_connections() {
    let (rp, target) = reverse(|s| s.max_connections = 1).await;
    let first = forward(|_| {}).await;
    let (mut a, head) = connect(&first, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Another forward proxy is another connection: refused in the handshake.
    let second = forward(|_| {}).await;
    let (mut b, head) = connect(&second, &target).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let mut body = String::new();
    tokio::time::timeout(T, b.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert!(body.contains("refused"), "{body}");
    // The first is served on: its tunnel echoes, and a new tunnel on its connection opens.
    echoes(&mut a, b"still here").await;
    let (mut c, head) = connect(&first, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes(&mut c, b"and here").await;
    assert_eq!(rp.connection_count(), 1);
    // The proxies count it: the refusal at the limit, the failed dial, the tunnels and bytes.
    let stats = rp.stats().unwrap();
    assert_eq!(stats.failures, vec![("maxConnections", 1)]);
    assert_eq!(stats.direct, 1);
    assert_eq!((stats.tunnels_open, stats.tunnels_total), (2, 2));
    let echoed = (b"still here".len() + b"and here".len()) as u64;
    assert_eq!((stats.bytes_sent, stats.bytes_received), (echoed, echoed));
    let failed = second.stats().unwrap().failures;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(first.stats().unwrap().tunnels_open, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_beyond_max_streams_per_connection_wait_for_a_free_one() {
    let (_rp, target) = reverse(|s| s.max_streams_per_connection = 2).await;
    let fp = forward(|_| {}).await;
    let (mut a, head) = connect(&fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut b, head) = connect(&fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The third waits for a stream: no answer while both are open.
    let mut third = spawn_connect(&fp, &target);
    // (A tunnel opens in a few ms on loopback; half a second without one is a wait.)
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(early.is_err(), "a third tunnel opened beside two");
    echoes(&mut a, b"one").await;
    // One ends: the third gets its stream and works.
    b.shutdown().await.unwrap();
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    drop(b);
    let (mut c, head) = tokio::time::timeout(T, third).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes(&mut c, b"three").await;
    echoes(&mut a, b"one again").await;
}

/// The stream grant starts below the maximum (64) and grows with use: 100 tunnels open at once
/// on one connection, and the 101st waits until streams are free again (QUIC announces freed
/// streams in batches of more than an eighth of the limit: 13 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_grant_grows_to_the_maximum_and_no_further() {
    let (_rp, target) = reverse(|s| s.max_streams_per_connection = 100).await;
    let fp = forward(|_| {}).await;
    let opens = (0..100).map(|_| spawn_connect(&fp, &target));
    let mut tunnels = Vec::new();
    for open in opens {
        let (s, head) = tokio::time::timeout(T, open).await.unwrap().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tunnels.push(s);
    }
    for (i, s) in tunnels.iter_mut().enumerate() {
        echoes(s, format!("tunnel {i}").as_bytes()).await;
    }
    let mut extra = spawn_connect(&fp, &target);
    let early = tokio::time::timeout(Duration::from_millis(500), &mut extra).await;
    assert!(early.is_err(), "a 101st tunnel opened beside 100");
    for mut one in tunnels.drain(..13) {
        one.shutdown().await.unwrap();
        let mut rest = Vec::new();
        one.read_to_end(&mut rest).await.unwrap();
    }
    let (mut s, head) = tokio::time::timeout(T, extra).await.unwrap().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes(&mut s, b"the 101st").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_proxy_answers_503_beyond_max_connections() {
    let (_rp, target) = reverse(|_| {}).await;
    let fp = forward(|s| s.max_connections = 1).await;
    let (mut a, head) = connect(&fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_b, head) = connect(&fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    echoes(&mut a, b"served").await;
    // The slot comes back when the client leaves.
    drop(a);
    let again = tokio::time::timeout(T, async {
        loop {
            let (s, head) = connect(&fp, &target).await;
            if head.starts_with("HTTP/1.1 200") {
                return s;
            }
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slot came back");
    let mut again = again;
    echoes(&mut again, b"again").await;
}
