//! Where the time goes when one forward proxy opens connections to many reverse proxies at
//! once (the bench's "500 peers" row), without Node: `N` reverse proxies, one forward proxy,
//! all `N` connections opened together, closed, and opened again `ROUNDS` times. Prints the
//! wall time and the process's CPU time per connection for each round; run it under
//! `perf record` to see the split (the reverse proxies' start-up is one pass, the opens are
//! `ROUNDS` passes).
//!
//! `cargo run --profile profiling --example many_peers -p keynet-core -- [N] [ROUNDS]`

use std::time::Instant;

use keynet_core::{ConnOptions, ForwardProxy, ForwardStart};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{echo_server, process_cpu as cpu, reverse_proxy_for, TOKEN};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (n, rounds) = (arg(1, 500), arg(2, 5));
    let server = echo_server().await;
    let mut rps = Vec::with_capacity(n);
    for _ in 0..n {
        let rp = reverse_proxy_for(server, ConnOptions::default()).await;
        let addr = rp.ingress_addr().unwrap();
        let id = rp.node_id().unwrap();
        rps.push((rp, addr, id));
    }
    let fp = std::sync::Arc::new(ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap());
    fp.start(ForwardStart::default()).await.unwrap();
    for round in 0..rounds {
        let c0 = cpu();
        let t0 = Instant::now();
        let mut opens = tokio::task::JoinSet::new();
        for (_, addr, id) in &rps {
            let (fp, addr, id) = (fp.clone(), *addr, *id);
            opens.spawn(async move { fp.open_connection(addr, Some(id), None, None).await });
        }
        while let Some(r) = opens.join_next().await {
            r.unwrap().unwrap();
        }
        let (wall, used) = (t0.elapsed(), cpu() - c0);
        assert_eq!(fp.connection_count(), n);
        println!(
            "round {round}: {n} connections, {:.3} ms wall and {:.3} ms CPU per connection",
            wall.as_secs_f64() * 1e3 / n as f64,
            used.as_secs_f64() * 1e3 / n as f64
        );
        for (_, addr, _) in &rps {
            fp.close_connection(*addr).await.unwrap();
        }
    }
    fp.stop().await.unwrap();
    for (rp, _, _) in rps {
        rp.stop().await.unwrap();
    }
}
