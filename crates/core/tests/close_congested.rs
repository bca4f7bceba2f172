//! A proxy that closes a connection while its congestion window is full tells the peer at
//! once. quinn-proto 0.11.19 holds such a close behind the window for good (quinn#2785): the
//! peer found out at its keepalive timeout, 20 s later, unless it happened to send a packet
//! to the closing side while that still ran (see `close_gate.rs`). Shown failing without the
//! gate: no close event within 5 s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keynet_core::events::{CloseReason, Event, EventKind, Reason};
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

mod common;

/// A UDP link on loopback from the forward proxy to `to` that can go dark either way: while
/// `dark`, what the forward proxy sends is dropped, so its window fills with packets nobody
/// acknowledges; while `dark_back`, what comes back is dropped.
struct Link {
    addr: SocketAddr,
    dark: Arc<AtomicBool>,
    dark_back: Arc<AtomicBool>,
    /// Told when a dropped datagram came after a pause: the sender was held back (by its
    /// window) and sent only a loss probe.
    stalled: Arc<Notify>,
}

async fn link_to(to: SocketAddr) -> Link {
    let outer = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let inner = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    inner.connect(to).await.unwrap();
    let (dark, stalled) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
    let dark_back = Arc::new(AtomicBool::new(false));
    let (client_tx, mut client_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    let addr = outer.local_addr().unwrap();
    {
        let (outer, inner, dark, stalled) =
            (outer.clone(), inner.clone(), dark.clone(), stalled.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let (mut last_drop, mut dropped): (Option<Instant>, u32) = (None, 0);
            while let Ok((n, from)) = outer.recv_from(&mut buf).await {
                client_tx.send_replace(Some(from));
                if !dark.load(Ordering::SeqCst) {
                    let _ = inner.send(&buf[..n]).await;
                    continue;
                }
                let now = Instant::now();
                dropped += 1;
                // A window's worth of data went first (a keepalive ping alone proves nothing).
                if dropped > 8 && last_drop.is_some_and(|t| now - t > Duration::from_millis(20)) {
                    stalled.notify_one();
                }
                last_drop = Some(now);
            }
        });
    }
    let back = dark_back.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = inner.recv(&mut buf).await {
            if back.load(Ordering::SeqCst) {
                continue;
            }
            let client = *client_rx.borrow_and_update();
            if let Some(client) = client {
                let _ = outer.send_to(&buf[..n], client).await;
            }
        }
    });
    Link {
        addr,
        dark,
        dark_back,
        stalled,
    }
}

/// The next event of `kind` (earlier ones are consumed), within `within`.
async fn next(
    events: &mut mpsc::UnboundedReceiver<Event>,
    kind: EventKind,
    within: Duration,
) -> Event {
    tokio::time::timeout(within, async {
        loop {
            let e = events.recv().await.expect("the proxy is running");
            if e.kind == kind {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind:?} event within {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_while_the_window_is_full_reaches_the_peer_at_once() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let rp = common::reverse_proxy_for(common::echo_server().await, ConnOptions::default()).await;
    let (tx, mut events) = mpsc::unbounded_channel();
    rp.set_event_sink(Some(Arc::new(move |ev| {
        let _ = tx.send(ev);
    })));
    let link = link_to(rp.ingress_addr().unwrap()).await;
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let target = format!("{}?nodeId={}", link.addr, rp.node_id().unwrap());
    let (mut tunnel, head) = common::connect(&fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    next(&mut events, EventKind::Connection, Duration::from_secs(5)).await;

    link.dark.store(true, Ordering::SeqCst);
    let writer = tokio::spawn(async move {
        let _ = tunnel.write_all(&vec![7u8; 8 << 20]).await;
        tunnel
    });
    tokio::time::timeout(Duration::from_secs(10), link.stalled.notified())
        .await
        .expect("the forward proxy's window filled");
    // From now on only the forward proxy's close can tell the reverse proxy: what the reverse
    // proxy sends is lost (else the forward proxy's endpoint would answer its next packet,
    // once the connection is gone, with a stateless reset).
    link.dark_back.store(true, Ordering::SeqCst);
    link.dark.store(false, Ordering::SeqCst);
    let hurry = CancellationToken::new();
    hurry.cancel();
    fp.close_connection_hurried(link.addr, &hurry)
        .await
        .unwrap();
    // Well before the keepalive timeout (20 s), which is how the peer learned before.
    let closed = next(&mut events, EventKind::Close, Duration::from_secs(5)).await;
    assert_eq!(closed.reason, Some(Reason::Close(CloseReason::Remote)));
    writer.abort();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}
