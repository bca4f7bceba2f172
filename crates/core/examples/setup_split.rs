//! Where a tunnel's setup time goes: N cold tunnels (a new QUIC connection each, the previous
//! one closed) and N warm ones (on a live connection), timed from the client's connect to the
//! `200` head, with the process's CPU time per tunnel. Run it under `perf record` to see the
//! CPU split; wall minus CPU is waiting (round trips, timers).
//!
//! `cargo run --release --example setup_split -p keynet-core -- [N]`

use std::time::{Duration, Instant};

use base64::Engine;
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, ReverseProxy, ReverseStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "s3cret";

fn cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(ru.ru_utime) + t(ru.ru_stime)
}

async fn open(fp: &ForwardProxy, target: &str) -> (TcpStream, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(fp.proxy_addr().unwrap()).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(TOKEN);
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (s, t0.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        ..ReverseStart::new(server)
    })
    .await
    .unwrap();
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let ingress = rp.ingress_addr().unwrap();
    let target = format!("{}?nodeId={}", ingress, rp.node_id().unwrap());
    for kind in ["cold", "warm"] {
        let mut walls = Vec::new();
        let c0 = cpu();
        let t0 = Instant::now();
        for _ in 0..n {
            if kind == "cold" {
                fp.close_connection(ingress).await.unwrap();
            }
            let (s, wall) = open(&fp, &target).await;
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
