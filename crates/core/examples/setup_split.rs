//! Where a tunnel's setup time goes, timed from the client's connect to the `200` head: first
//! visits (a fresh forward proxy, a full handshake), returning visits (the connection closed
//! first, so the next one resumes with the tunnel header in 0-RTT) and warm tunnels (on a live
//! connection), with the process's CPU time per tunnel. Run it under `perf record` to see the
//! CPU split; wall minus CPU is waiting (round trips, timers). `SETUP_SPLIT_EACH=1` prints each
//! tunnel. `KEYNET_LOG` (an `EnvFilter` directive, e.g. `quinn_proto=trace,keynet_core=debug`)
//! prints a timeline of each step to stderr.
//!
//! With a delay (`DELAY_MS`), the forward proxy reaches the reverse proxy through a UDP hop that
//! holds every datagram that long each way, so the medians count round trips: the kernel here
//! has no `netem`.
//!
//! `cargo run --release --example setup_split -p keynet-core -- [N] [DELAY_MS]`

use std::time::{Duration, Instant};

use keynet_core::{ConnOptions, ForwardProxy, ForwardStart};
use tokio::net::TcpStream;

#[path = "../tests/common/mod.rs"]
mod common;

use common::{echo_server, process_cpu as cpu, reverse_proxy_for, TOKEN};

/// A CONNECT through `fp` to `target`, timed to its `200` head.
async fn open(fp: &ForwardProxy, target: &str) -> (TcpStream, Duration) {
    let t0 = Instant::now();
    let (s, head) = common::connect(fp, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (s, t0.elapsed())
}

/// A UDP hop to `to` that holds each datagram `delay` each way, in order (one client at a
/// time).
async fn delay_hop(to: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use std::sync::Arc;
    use tokio::sync::mpsc;
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    // Each direction: a queue of (due, datagram, destination), sent in arrival order.
    let pipe = |socket: Arc<tokio::net::UdpSocket>| {
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(Instant, Vec<u8>, Option<std::net::SocketAddr>)>();
        tokio::spawn(async move {
            while let Some((due, d, to)) = rx.recv().await {
                tokio::time::sleep_until(due.into()).await;
                let _ = match to {
                    Some(to) => socket.send_to(&d, to).await,
                    None => socket.send(&d).await,
                };
            }
        });
        tx
    };
    let (up, down) = (pipe(back.clone()), pipe(front.clone()));
    let client = Arc::new(std::sync::Mutex::new(None));
    {
        let client = client.clone();
        let front = front.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let _ = up.send((Instant::now() + delay, buf[..n].to_vec(), None));
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = [0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let Some(c) = *client.lock().unwrap() else {
                continue;
            };
            let _ = down.send((Instant::now() + delay, buf[..n].to_vec(), Some(c)));
        }
    });
    addr
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    keynet_core::logging::install(std::env::var("KEYNET_LOG").ok().as_deref());
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let delay: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let server = echo_server().await;
    let rp = reverse_proxy_for(server, ConnOptions::default()).await;
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let mut ingress = rp.ingress_addr().unwrap();
    if delay > 0 {
        ingress = delay_hop(ingress, Duration::from_millis(delay)).await;
        println!(
            "through a hop holding each datagram {delay} ms each way (round trip {} ms)",
            2 * delay
        );
    }
    let target = format!("{}?nodeId={}", ingress, rp.node_id().unwrap());
    // `SETUP_SPLIT_ONLY=warm` (or `returning`, or `first`: n first visits) measures just that
    // kind: a profile of it alone.
    let only = std::env::var("SETUP_SPLIT_ONLY").ok();
    // A first visit: a fresh forward proxy each time (no ticket).
    let mut firsts = Vec::new();
    let mut first_cpu = Duration::ZERO;
    let visits = match only.as_deref() {
        None => n.min(20),
        Some("first") => n,
        Some(_) => 0,
    };
    for _ in 0..visits {
        let fresh = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
        fresh.start(ForwardStart::default()).await.unwrap();
        let c0 = cpu();
        firsts.push(open(&fresh, &target).await.1);
        first_cpu += cpu() - c0;
        fresh.stop().await.unwrap();
    }
    if !firsts.is_empty() {
        let k = firsts.len();
        println!(
            "first visit: n={k} median {:.3} ms, CPU {:.3} ms per tunnel",
            median(firsts).as_secs_f64() * 1e3,
            first_cpu.as_secs_f64() * 1e3 / k as f64
        );
    }
    for kind in ["returning", "warm"] {
        if only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        let mut walls = Vec::new();
        let c0 = cpu();
        let t0 = Instant::now();
        for _ in 0..n {
            if kind == "returning" {
                fp.close_connection(ingress).await.unwrap();
            }
            let (s, wall) = open(&fp, &target).await;
            if std::env::var_os("SETUP_SPLIT_EACH").is_some() {
                let info = fp.connection_info_by_ingress(ingress).unwrap();
                let resumed = info.is_some_and(|i| i.resumed);
                println!(
                    "  {kind}: {:.3} ms, resumed {resumed}",
                    wall.as_secs_f64() * 1e3
                );
            }
            walls.push(wall);
            drop(s);
        }
        let total = t0.elapsed();
        let cpu_each = (cpu() - c0) / n as u32;
        println!(
            "{kind}: n={n} median {:.3} ms, loop {:.3} ms per tunnel, CPU {:.3} ms per tunnel",
            median(walls).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3 / n as f64,
            cpu_each.as_secs_f64() * 1e3
        );
    }
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}
