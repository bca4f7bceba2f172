//! Load test of the relay (`npm run loadtest`; not part of `npm test`). Runs the
//! `keynet-relay` binary in its own process (so its memory and CPU are its own), then from this
//! process:
//! 1. registers many nodes, each a real link with its own identity (QUIC, or TLS + WebSocket
//!    for a share of them);
//! 2. runs one relayed packet flow per node (node i sends to node i + n/2) at a fixed rate,
//!    timestamps in the packets, and a direct UDP flow beside them as the baseline;
//! 3. carries public-port clients (1 MiB echo each) to a reverse proxy's server;
//! 4. measures one tunnel's throughput through the relay next to the direct path.
//!
//! It prints the relay's memory per node, CPU seconds per GiB relayed, the latency the relay
//! adds (p50, p99), drops by reason, and the throughputs. It asserts nothing about speed: it
//! fails only on errors or altered or lost tunnel bytes.
//!
//! Flags: `--nodes N` (1000), `--seconds S` (10), `--rate PACKETS_PER_S_PER_NODE` (20),
//! `--public-clients N` (100), `--flow-mib N` (128), `--websocket PERCENT` (25: the share of
//! nodes on the TLS/WebSocket transport). `KEYNET_RELAY` names the relay binary
//! (default `target/release/keynet-relay`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keynet_core::identity::LoadedIdentity;
use keynet_core::proto::relay::Frame;
use keynet_core::relay::client::RelayClient;
use keynet_core::relay::spec::{LinkStatus, RelaySpec, Transport};
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, NodeId, ReverseProxy, ReverseStart};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const PACKET: usize = 1200;

struct Args {
    nodes: usize,
    seconds: u64,
    rate: u64,
    public_clients: usize,
    flow_mib: usize,
    websocket: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 1000,
        seconds: 10,
        rate: 20,
        public_clients: 100,
        flow_mib: 128,
        websocket: 25,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{flag} {v:?}: not a number"))?;
        match flag.as_str() {
            "--nodes" => a.nodes = (n as usize).max(2),
            "--seconds" => a.seconds = n.max(1),
            "--rate" => a.rate = n.max(1),
            "--public-clients" => a.public_clients = n as usize,
            "--flow-mib" => a.flow_mib = (n as usize).max(1),
            "--websocket" => a.websocket = (n as usize).min(100),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// The relay process and where it listens.
struct Relay {
    child: tokio::process::Child,
    addr: SocketAddr,
    tcp: SocketAddr,
    node_id: NodeId,
    metrics: SocketAddr,
}

impl Relay {
    async fn spawn(nodes: usize) -> Result<Self, String> {
        let bin = std::env::var("KEYNET_RELAY").unwrap_or("target/release/keynet-relay".into());
        let many = (nodes * 4).to_string();
        let mut child = tokio::process::Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            // Every node comes from 127.0.0.1 here: lift the per-address limits.
            .args([
                "--max-connections",
                &many,
                "--max-connections-per-ip",
                &many,
            ])
            .args(["--handshake-burst", &many, "--handshake-rate", &many])
            .args(["--max-peers", "4"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{bin}: {e} (build it: cargo build --release -p keynet-relay)"))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next_line().await.map_err(|e| e.to_string())?;
        let second = lines.next_line().await.map_err(|e| e.to_string())?;
        let (first, second) = (first.unwrap_or_default(), second.unwrap_or_default());
        // "relay listening on ADDR tcp ADDR node id ID", "metrics listening on ADDR"
        let w: Vec<&str> = first.split_whitespace().collect();
        let m: Vec<&str> = second.split_whitespace().collect();
        let parse_err = || format!("unexpected relay output: {first:?} {second:?}");
        Ok(Self {
            addr: w
                .get(3)
                .and_then(|a| a.parse().ok())
                .ok_or_else(parse_err)?,
            tcp: w
                .get(5)
                .and_then(|a| a.parse().ok())
                .ok_or_else(parse_err)?,
            node_id: w
                .get(8)
                .and_then(|a| a.parse().ok())
                .ok_or_else(parse_err)?,
            metrics: m
                .get(3)
                .and_then(|a| a.parse().ok())
                .ok_or_else(parse_err)?,
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU seconds used (user + system).
    fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        ticks as f64 / 100.0
    }

    /// The Prometheus metrics, by `name{labels}`.
    async fn metrics(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        let Ok(mut s) = TcpStream::connect(self.metrics).await else {
            return out;
        };
        let _ = s
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        for line in text.lines().filter(|l| l.starts_with("keynet_relay_")) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                out.insert(k.to_string(), v.parse().unwrap_or(0.0));
            }
        }
        out
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Node {
    client: Arc<RelayClient>,
    id: NodeId,
}

/// Registers `n` nodes; also returns the QUIC endpoint they share (the caller keeps it open).
async fn register_nodes(
    relay: &Relay,
    n: usize,
    ws_percent: usize,
) -> Result<(Vec<Node>, quinn::Endpoint), String> {
    let (endpoint, _socket) =
        keynet_core::socket::bind("127.0.0.1:0".parse().unwrap(), None, b"load")
            .map_err(|e| e.to_string())?;
    let mut nodes = Vec::with_capacity(n);
    // A few dozen handshakes at a time.
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut joins = Vec::new();
        for &i in chunk {
            let endpoint = endpoint.clone();
            let mut spec = RelaySpec::new(relay.addr, relay.node_id);
            spec.tcp_addr = Some(relay.tcp);
            spec.transport = if i * 100 < n * ws_percent {
                Transport::WebSocket
            } else {
                Transport::Quic
            };
            joins.push(tokio::spawn(async move {
                let id = LoadedIdentity::generate().map_err(|e| e.to_string())?;
                let opts = ConnOptions::default();
                let timeout = Duration::from_secs(20);
                let c = RelayClient::connect_spec(&endpoint, &id, &spec, &opts, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                c.send(&Frame::Register {
                    want_port: false,
                    caller: false,
                    local_port: None,
                    token: String::new(),
                })
                .await
                .map_err(|e| e.to_string())?;
                match c.recv().await.map_err(|e| e.to_string())? {
                    Some(Frame::Registered { .. }) => Ok(Node {
                        client: Arc::new(c),
                        id: id.node_id,
                    }),
                    other => Err(format!("registration answered {other:?}")),
                }
            }));
        }
        for j in joins {
            nodes.push(j.await.map_err(|e| e.to_string())??);
        }
    }
    Ok((nodes, endpoint))
}

/// Latencies (µs) and counts of the relayed flows.
#[derive(Default)]
struct FlowStats {
    latencies: Mutex<Vec<u64>>,
    sent: AtomicU64,
    received: AtomicU64,
}

async fn run_flows(nodes: &[Node], seconds: u64, rate: u64, t0: Instant) -> Arc<FlowStats> {
    let stats = Arc::new(FlowStats::default());
    let n = nodes.len();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        // Receiver: read until the flows are over (plus a grace for packets in flight).
        let (c, s) = (node.client.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let end = until + Duration::from_secs(2);
            while let Ok(Ok(Some(f))) = tokio::time::timeout_at(end.into(), c.recv()).await {
                if let Frame::RecvPacket { datagram, .. } = f {
                    let sent_us = u64::from_be_bytes(datagram[..8].try_into().unwrap());
                    let now_us = t0.elapsed().as_micros() as u64;
                    s.received.fetch_add(1, Ordering::Relaxed);
                    s.latencies
                        .lock()
                        .unwrap()
                        .push(now_us.saturating_sub(sent_us));
                }
            }
        }));
        // Sender: `rate` packets a second to the partner, staggered.
        let dst = nodes[(i + n / 2) % n].id;
        let (c, s) = (node.client.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.tick().await;
            tokio::time::sleep(Duration::from_micros((i as u64 * 7919) % 1_000_000 / rate)).await;
            let mut datagram = vec![0u8; PACKET];
            while Instant::now() < until {
                tick.tick().await;
                let now_us = t0.elapsed().as_micros() as u64;
                datagram[..8].copy_from_slice(&now_us.to_be_bytes());
                if c.send(&Frame::SendPacket {
                    dst,
                    datagram: datagram.clone(),
                })
                .await
                .is_err()
                {
                    return;
                }
                s.sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stats
}

/// A direct UDP flow over loopback at the same per-flow rate, for the same time: the baseline.
async fn direct_baseline(seconds: u64, rate: u64, t0: Instant) -> Vec<u64> {
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = b.local_addr().unwrap();
    let until = Instant::now() + Duration::from_secs(seconds);
    let recv = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(
            (until + Duration::from_secs(1)).into(),
            b.recv_from(&mut buf),
        )
        .await
        {
            if n >= 8 {
                let sent = u64::from_be_bytes(buf[..8].try_into().unwrap());
                lat.push((t0.elapsed().as_micros() as u64).saturating_sub(sent));
            }
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut p = vec![0u8; PACKET];
    while Instant::now() < until {
        tick.tick().await;
        p[..8].copy_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
        let _ = a.send_to(&p, to).await;
    }
    recv.await.unwrap_or_default()
}

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + seed) * 131 % 251) as u8).collect()
}

/// Sends `data` on `s` and reads the echo back; whether it came back whole and the same.
async fn echo_check(mut s: TcpStream, data: &[u8]) -> Result<(), String> {
    let (mut r, mut w) = s.split();
    let (wrote, got) = tokio::join!(
        async {
            w.write_all(data).await?;
            w.shutdown().await
        },
        async {
            let mut got = Vec::with_capacity(data.len());
            r.read_to_end(&mut got).await.map(|_| got)
        }
    );
    wrote.map_err(|e| e.to_string())?;
    let got = got.map_err(|e| e.to_string())?;
    if got != data {
        return Err(format!(
            "echo altered: {} of {} bytes back",
            got.len(),
            data.len()
        ));
    }
    Ok(())
}

async fn public_port_clients(relay: &Relay, clients: usize) -> Result<Duration, String> {
    let mut spec = RelaySpec::new(relay.addr, relay.node_id);
    spec.want_port = true;
    let rp = ReverseProxy::new(ConnOptions::default()).map_err(|e| e.to_string())?;
    rp.start(ReverseStart {
        relay: Some(spec),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .map_err(|e| e.to_string())?;
    let port = match rp.relay_status().map_err(|e| e.to_string())? {
        Some((
            _,
            LinkStatus::Up {
                public_port: Some(p),
                ..
            },
        )) => p,
        other => return Err(format!("no public port: {other:?}")),
    };
    let started = Instant::now();
    let mut joins = Vec::new();
    for i in 0..clients {
        joins.push(tokio::spawn(async move {
            let s = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| e.to_string())?;
            echo_check(s, &pattern(1 << 20, i)).await
        }));
    }
    let mut errors = Vec::new();
    for j in joins {
        if let Err(e) = j.await.map_err(|e| e.to_string()).and_then(|r| r) {
            errors.push(e);
        }
    }
    let took = started.elapsed();
    let _ = rp.stop().await;
    if errors.is_empty() {
        Ok(took)
    } else {
        Err(format!(
            "{} of {clients} public clients failed: {}",
            errors.len(),
            errors[0]
        ))
    }
}

/// One tunnel's echo of `mib` MiB, relayed (through the relay, no upgrade) or direct; MiB/s
/// each way.
async fn tunnel_throughput(relay: &Relay, mib: usize, relayed: bool) -> Result<f64, String> {
    let spec = RelaySpec {
        upgrade: false,
        ..RelaySpec::new(relay.addr, relay.node_id)
    };
    let rp = ReverseProxy::new(ConnOptions::default()).map_err(|e| e.to_string())?;
    rp.start(ReverseStart {
        relay: relayed.then(|| spec.clone()),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .map_err(|e| e.to_string())?;
    let fp = ForwardProxy::new("t".into(), ConnOptions::default()).map_err(|e| e.to_string())?;
    fp.start(ForwardStart::default())
        .await
        .map_err(|e| e.to_string())?;
    let node = rp.node_id().map_err(|e| e.to_string())?;
    let target = if relayed {
        let ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
        fp.open_connection_via(ingress, node, spec, None, None)
            .await
            .map_err(|e| e.to_string())?;
        ingress.to_string()
    } else {
        format!(
            "{}?nodeId={node}",
            rp.ingress_addr().map_err(|e| e.to_string())?
        )
    };
    let mut s = TcpStream::connect(fp.proxy_addr().map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    let token = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("t")
    };
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
            break;
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "CONNECT answered {}",
            String::from_utf8_lossy(&head)
        ));
    }
    let data = pattern(mib << 20, 7);
    let started = Instant::now();
    echo_check(s, &data).await?;
    let secs = started.elapsed().as_secs_f64();
    let _ = fp.stop().await;
    let _ = rp.stop().await;
    Ok(mib as f64 / secs)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("relay_load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay_load: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> Result<(), String> {
    let t0 = Instant::now();
    let relay = Relay::spawn(a.nodes).await?;
    let rss0 = relay.rss();
    println!(
        "relay pid {} at {}; {} nodes ({} % over WebSocket), {} s at {} packets/s each ({} B)",
        relay.pid(),
        relay.addr,
        a.nodes,
        a.websocket,
        a.seconds,
        a.rate,
        PACKET
    );

    let started = Instant::now();
    let (nodes, _endpoint) = register_nodes(&relay, a.nodes, a.websocket).await?;
    let registered_in = started.elapsed();
    let rss1 = relay.rss();
    let m = relay.metrics().await;
    let ws_sessions = m
        .get("keynet_relay_sessions{transport=\"websocket\"}")
        .copied()
        .unwrap_or(0.0);
    let registered = m
        .get("keynet_relay_registered_nodes")
        .copied()
        .unwrap_or(0.0);
    if registered as usize != a.nodes {
        return Err(format!(
            "{registered} nodes registered, {} expected",
            a.nodes
        ));
    }

    let cpu0 = relay.cpu();
    let bytes0 = m
        .get("keynet_relay_bytes_relayed_total")
        .copied()
        .unwrap_or(0.0);
    let baseline = tokio::spawn(direct_baseline(a.seconds, a.rate, t0));
    let flows = run_flows(&nodes, a.seconds, a.rate, t0).await;
    let mut direct = baseline.await.unwrap_or_default();
    let cpu1 = relay.cpu();
    let rss2 = relay.rss();
    let m = relay.metrics().await;
    let bytes1 = m
        .get("keynet_relay_bytes_relayed_total")
        .copied()
        .unwrap_or(0.0);
    let mut lat = std::mem::take(&mut *flows.latencies.lock().unwrap());
    lat.sort_unstable();
    direct.sort_unstable();
    let (sent, received) = (
        flows.sent.load(Ordering::Relaxed),
        flows.received.load(Ordering::Relaxed),
    );
    let gib = (bytes1 - bytes0) / (1u64 << 30) as f64;

    let public = if a.public_clients > 0 {
        Some(public_port_clients(&relay, a.public_clients).await?)
    } else {
        None
    };
    let relayed_mibs = tunnel_throughput(&relay, a.flow_mib, true).await?;
    let direct_mibs = tunnel_throughput(&relay, a.flow_mib, false).await?;
    let m_end = relay.metrics().await;

    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| nodes registered | {} in {:.1} s ({} over TLS/WebSocket) |",
        a.nodes,
        registered_in.as_secs_f64(),
        ws_sessions
    );
    println!(
        "| relay RSS idle / registered / under load | {:.1} / {:.1} / {:.1} MiB |",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss2 as f64 / 1048576.0
    );
    println!(
        "| relay RSS per registered node | {:.1} KiB |",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 / a.nodes as f64
    );
    println!(
        "| relayed packets sent / received | {sent} / {received} ({:.2} % lost) |",
        100.0 * (sent.saturating_sub(received)) as f64 / sent.max(1) as f64
    );
    println!("| relayed bytes | {:.3} GiB in {} s |", gib, a.seconds);
    println!(
        "| relay CPU | {:.2} s, {:.1} s per GiB relayed |",
        cpu1 - cpu0,
        (cpu1 - cpu0) / gib.max(1e-9)
    );
    println!(
        "| one-way latency relayed p50 / p99 | {} / {} µs |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "| one-way latency direct UDP p50 / p99 | {} / {} µs |",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99)
    );
    println!(
        "| added by the relay p50 / p99 | {} / {} µs |",
        percentile(&lat, 0.5).saturating_sub(percentile(&direct, 0.5)),
        percentile(&lat, 0.99).saturating_sub(percentile(&direct, 0.99))
    );
    let mut drops: Vec<String> = m_end
        .iter()
        .filter(|(k, _)| k.starts_with("keynet_relay_drops_total"))
        .map(|(k, v)| format!("{}={v}", k.split('"').nth(1).unwrap_or(k)))
        .collect();
    drops.sort();
    println!("| drops by reason | {} |", drops.join(", "));
    let mut refusals: Vec<String> = m_end
        .iter()
        .filter(|(k, v)| k.starts_with("keynet_relay_refusals_total") && **v > 0.0)
        .map(|(k, v)| format!("{}={v}", k.split('"').nth(1).unwrap_or(k)))
        .collect();
    refusals.sort();
    println!(
        "| refusals by reason | {} |",
        if refusals.is_empty() {
            "none".into()
        } else {
            refusals.join(", ")
        }
    );
    if let Some(p) = public {
        println!(
            "| public-port clients | {} × 1 MiB echoed intact in {:.2} s |",
            a.public_clients,
            p.as_secs_f64()
        );
    }
    println!(
        "| one tunnel, relayed | {relayed_mibs:.1} MiB/s each way ({} MiB echo) |",
        a.flow_mib
    );
    println!("| one tunnel, direct | {direct_mibs:.1} MiB/s each way |");
    println!("| relayed / direct | {:.2} |", relayed_mibs / direct_mibs);
    Ok(())
}
