//! A relay's public port under careless clients: a slow server or a client that never reads
//! slows only its own connection; other clients' bytes arrive intact and the node's relayed
//! tunnels keep flowing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::connect;
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::relay::spec::{LinkStatus, RelaySpec};
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, ReverseProxy, ReverseStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

/// What the test server does with a connection, by its first byte.
const SLOW: u8 = b'S'; // reads 1 KiB a second, checking the pattern
const HASH: u8 = b'H'; // reads to the end, answers the SHA-256
const ECHO: u8 = b'E'; // echoes
const WRITE: u8 = b'W'; // writes for ever; reports when a write fails

/// The byte at `i` of every test stream: a hole or a reorder shows.
fn pattern(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

struct Server {
    addr: SocketAddr,
    /// Set when the slow reader saw a byte out of pattern.
    corrupted: Arc<AtomicBool>,
    /// A `WRITE` connection's write failed (it was reset).
    write_failed: mpsc::UnboundedReceiver<()>,
}

async fn server() -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let corrupted = Arc::new(AtomicBool::new(false));
    let (failed_tx, write_failed) = mpsc::unbounded_channel();
    let c = corrupted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (c, failed_tx) = (c.clone(), failed_tx.clone());
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                match mode[0] {
                    SLOW => {
                        let mut at = 0;
                        let mut buf = [0u8; 1024];
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        loop {
                            tick.tick().await;
                            let Ok(n) = s.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            if (0..n).any(|i| buf[i] != pattern(at + i)) {
                                c.store(true, Ordering::SeqCst);
                            }
                            at += n;
                        }
                    }
                    HASH => {
                        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) => break,
                                Ok(n) => ctx.update(&buf[..n]),
                                Err(_) => return,
                            }
                        }
                        let _ = s.write_all(ctx.finish().as_ref()).await;
                        let _ = s.shutdown().await;
                    }
                    ECHO => {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    _ => {
                        let chunk = vec![1u8; 64 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                        let _ = failed_tx.send(());
                    }
                }
            });
        }
    });
    Server {
        addr,
        corrupted,
        write_failed,
    }
}

async fn relay(f: impl FnOnce(&mut RelayStart)) -> (RelayServer, RelaySpec) {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    f(&mut start);
    relay.start(start).await.unwrap();
    let mut s = RelaySpec::new(relay.addr().unwrap(), relay.node_id().unwrap());
    s.tcp_addr = Some(relay.tcp_addr().unwrap());
    (relay, s)
}

/// A reverse proxy for `server` with a public port on the relay; and the port.
async fn node(server: SocketAddr, spec: &RelaySpec) -> (ReverseProxy, u16) {
    let mut s = spec.clone();
    s.want_port = true;
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        relay: Some(s),
        ..ReverseStart::new(server)
    })
    .await
    .unwrap();
    let port = match rp.relay_status().unwrap().unwrap().1 {
        LinkStatus::Up { public_port, .. } => public_port.expect("a public port"),
        other => panic!("{other:?}"),
    };
    (rp, port)
}

/// A forward proxy with a tunnel to `rp` that stays on the relay; CONNECT to the returned
/// target reaches it.
async fn relayed_tunnel(rp: &ReverseProxy, spec: &RelaySpec) -> (ForwardProxy, String) {
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut s = spec.clone();
    s.upgrade = false;
    fp.open_connection_via(ingress, rp.node_id().unwrap(), s, None, None)
        .await
        .unwrap();
    (fp, ingress.to_string())
}

/// Echoes 1 KiB round trips through a relayed tunnel (at least one) until `stop`; the longest
/// round trip.
async fn echo_until(fp: &ForwardProxy, target: &str, stop: Arc<AtomicBool>) -> Duration {
    let (mut s, head) = connect(fp, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&[ECHO]).await.unwrap();
    let out: Vec<u8> = (0..1024).map(pattern).collect();
    let mut back = vec![0u8; 1024];
    let mut longest = Duration::ZERO;
    loop {
        let started = Instant::now();
        s.write_all(&out).await.unwrap();
        tokio::time::timeout(T, s.read_exact(&mut back))
            .await
            .expect("relayed echo stalled")
            .unwrap();
        assert_eq!(back, out);
        longest = longest.max(started.elapsed());
        if stop.load(Ordering::SeqCst) {
            return longest;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_slows_only_its_own_public_client() {
    let mut srv = server().await;
    let (relay, spec) = relay(|_| {}).await;
    let (rp, port) = node(srv.addr, &spec).await;
    // A client whose server connection reads 1 KiB a second, sending far more than that.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let slow_writer = tokio::spawn(async move {
        slow.write_all(&[SLOW]).await.unwrap();
        let data: Vec<u8> = (0..8 << 20).map(pattern).collect();
        let _ = slow.write_all(&data).await;
        slow
    });
    let (fp, target) = relayed_tunnel(&rp, &spec).await;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (stop, fp, target) = (stop.clone(), fp.clone(), target.clone());
        tokio::spawn(async move { echo_until(&fp, &target, stop).await })
    };
    // Meanwhile another public client uploads 16 MiB: it arrives whole.
    let data: Vec<u8> = (0..16 << 20).map(|i| (i * 13 % 256) as u8).collect();
    let want = ring::digest::digest(&ring::digest::SHA256, &data);
    let mut up = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let digest = tokio::time::timeout(T * 3, async {
        up.write_all(&[HASH]).await.unwrap();
        up.write_all(&data).await.unwrap();
        up.shutdown().await.unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        got
    })
    .await
    .expect("upload in time");
    assert_eq!(digest, want.as_ref(), "the upload arrived altered");
    stop.store(true, Ordering::SeqCst);
    let longest = echo.await.unwrap();
    assert!(
        longest < Duration::from_secs(1),
        "the relayed echo stalled for {longest:?}"
    );
    assert!(
        !srv.corrupted.load(Ordering::SeqCst),
        "the slow stream got a hole"
    );
    assert!(srv.write_failed.try_recv().is_err());
    slow_writer.abort();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_that_never_reads_is_reset_after_the_stall_time() {
    let mut srv = server().await;
    let (relay, spec) = relay(|s| s.limits.stall_timeout = Duration::from_secs(1)).await;
    let (rp, port) = node(srv.addr, &spec).await;
    let (fp, target) = relayed_tunnel(&rp, &spec).await;
    // A client that asks for an endless download and reads none of it.
    let mut deaf = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    deaf.write_all(&[WRITE]).await.unwrap();
    // The relay resets it after its stall time; the reset reaches the server's connection.
    let started = Instant::now();
    tokio::time::timeout(T, srv.write_failed.recv())
        .await
        .expect("the stalled client was not reset")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(T, deaf.read_to_end(&mut rest))
        .await
        .expect("the client's connection ended");
    assert!(read.is_err(), "ended with a FIN, not a reset: {read:?}");
    // Everyone else is served: another public client and the node's relayed tunnel.
    let mut other = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    other.write_all(&[ECHO]).await.unwrap();
    other.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    tokio::time::timeout(T, other.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"still here");
    let stop = Arc::new(AtomicBool::new(true));
    echo_until(&fp, &target, stop).await;
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_clients_are_bounded_on_the_whole_relay() {
    let srv = server().await;
    let (relay, spec) = relay(|s| s.limits.max_public_clients = 1).await;
    let (a, port_a) = node(srv.addr, &spec).await;
    let (b, port_b) = node(srv.addr, &spec).await;
    // The one slot: a client of A's port, carried (its echo proves it).
    let mut first = TcpStream::connect(("127.0.0.1", port_a)).await.unwrap();
    first.write_all(&[ECHO]).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut got = [0u8; 3];
    tokio::time::timeout(T, first.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    // A client of B's port is closed at once, without a byte.
    let mut second = TcpStream::connect(("127.0.0.1", port_b)).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, second.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(rest.is_empty());
    let stats = relay.stats().unwrap();
    assert_eq!(
        stats.refusals(keynet_core::relay::server::stats::Refusal::MaxClients),
        1
    );
    assert_eq!(stats.gauges.public_clients, 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    relay.stop().await.unwrap();
}
