//! A hostile relay: the real relay server with a tamper hook that rewrites what it sends to
//! nodes. Relayed packets duplicated and reordered leave every tunnel byte intact (QUIC
//! authenticates and orders them); a forged rendezvous toward an address that is not the peer
//! moves no connection off the relay, even when whoever sits there answers every punch and probe
//! it gets (acks on a rendezvous path are keyed by the nodes' shared connection).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{echo_server, echo_through};
use keynet_core::nodeid::NodeId;
use keynet_core::proto::punch::{Kind, Packet};
use keynet_core::proto::relay::Frame;
use keynet_core::relay::server::{RelayServer, RelayStart, Tamper};
use keynet_core::relay::spec::RelaySpec;
use keynet_core::{
    ConnOptions, Event, EventKind, ForwardProxy, ForwardStart, Path, ReverseProxy, ReverseStart,
};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

async fn relay(tamper: Tamper) -> (RelayServer, RelaySpec) {
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    start.tamper = Some(tamper);
    relay.start(start).await.unwrap();
    let mut s = RelaySpec::new(relay.addr().unwrap(), relay.node_id().unwrap());
    s.tcp_addr = Some(relay.tcp_addr().unwrap());
    (relay, s)
}

/// A reverse proxy on the relay, and a forward proxy with a relayed tunnel to it that never
/// asks for a rendezvous itself; the CONNECT target, and the forward proxy's events.
async fn relayed_pair(
    spec: &RelaySpec,
) -> (
    ReverseProxy,
    ForwardProxy,
    String,
    mpsc::UnboundedReceiver<Event>,
) {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        relay: Some(spec.clone()),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    let fp = ForwardProxy::new(common::TOKEN.into(), ConnOptions::default()).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    fp.set_event_sink(Some(Arc::new(move |e| {
        let _ = tx.send(e);
    })));
    fp.start(ForwardStart::default()).await.unwrap();
    let ingress: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let mut s = spec.clone();
    s.upgrade = false;
    let info = fp
        .open_connection_via(ingress, rp.node_id().unwrap(), s, None, None)
        .await
        .unwrap();
    assert_eq!(info.path, Path::Relayed);
    (rp, fp, ingress.to_string(), events)
}

/// Echoes `bytes` through a tunnel to `target` within `T`; the echo must come back identical.
async fn echo(fp: &ForwardProxy, target: &str, bytes: usize) {
    tokio::time::timeout(T, echo_through(fp, target, bytes))
        .await
        .expect("echo in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_relayed_packets_leave_the_bytes_intact() {
    // Every relayed packet is sent twice, and each pair of packets swapped.
    let held: Mutex<HashMap<NodeId, Frame>> = Mutex::new(HashMap::new());
    let tampered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = tampered.clone();
    let tamper: Tamper = Arc::new(move |node, frame| {
        if !matches!(frame, Frame::RecvPacket { .. }) {
            return vec![frame];
        }
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut held = held.lock().unwrap();
        match held.remove(&node) {
            None => {
                held.insert(node, frame.clone());
                vec![frame]
            }
            Some(earlier) => vec![frame.clone(), earlier, frame],
        }
    });
    let (relay, spec) = relay(tamper).await;
    let (rp, fp, target, _events) = relayed_pair(&spec).await;
    echo(&fp, &target, 4 << 20).await;
    echo(&fp, &target, 1000).await;
    assert!(tampered.load(std::sync::atomic::Ordering::Relaxed) > 1000);
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_rendezvous_toward_a_silent_address_moves_nothing_off_the_relay() {
    forged_rendezvous(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_rendezvous_toward_an_address_that_echoes_every_punch_moves_nothing() {
    // With acks that only echoed the nonce, this failed: the connection moved to the trap (whose
    // echoes kept its probes happy) and every tunnel on it answered 502.
    forged_rendezvous(true).await;
}

/// Both nodes are told, by the relay, to punch an address that is not the peer's; `echo`: the
/// trap there acknowledges every punch and probe, echoing its nonce as a peer would.
async fn forged_rendezvous(echo_acks: bool) {
    let trap = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let trap_addr = trap.local_addr().unwrap();
    // Both nodes, on their first relayed packet, are told to punch the trap as each other.
    let told: Mutex<Vec<NodeId>> = Mutex::new(Vec::new());
    let tamper: Tamper = Arc::new(move |node, frame| {
        let Frame::RecvPacket { src, .. } = &frame else {
            return vec![frame];
        };
        let mut told = told.lock().unwrap();
        if told.contains(&node) {
            return vec![frame];
        }
        told.push(node);
        let forged = Frame::Rendezvous {
            peer: *src,
            peer_addr: trap_addr,
            punch_in_ms: 0,
            mapping: Default::default(),
        };
        vec![forged, frame]
    });
    let (relay, spec) = relay(tamper).await;
    let (rp, fp, target, mut events) = relayed_pair(&spec).await;
    // The nodes did act on it: their punches reach the trap.
    let (punched_tx, mut punched) = mpsc::unbounded_channel();
    let t = trap.clone();
    tokio::spawn(async move {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = t.recv_from(&mut b).await {
            let _ = punched_tx.send(());
            let Ok(p) = Packet::decode(&b[..n]) else {
                continue;
            };
            if echo_acks && p.kind == Kind::Punch {
                let ack = Packet {
                    kind: Kind::Ack,
                    nonce: p.nonce,
                    sender_local: t.local_addr().unwrap(),
                    observed: Some(from),
                };
                let _ = t.send_to(&ack.encode(), from).await;
            }
        }
    });
    tokio::time::timeout(T, punched.recv())
        .await
        .expect("a punch toward the forged address");
    // Tunnels work throughout, and the connection stays on the relay: no path event, and the
    // path is still relayed once the punch sessions have given up (their budget is 5 s).
    for _ in 0..4 {
        echo(&fp, &target, 256 << 10).await;
    }
    let moved = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match events.recv().await {
                Some(e) if e.kind == EventKind::Path => return e,
                Some(_) => continue,
                None => std::future::pending().await,
            }
        }
    })
    .await;
    assert!(moved.is_err(), "moved to {:?}", moved.map(|e| e.info));
    let ingress: SocketAddr = target.parse().unwrap();
    let path = fp
        .connection_info_by_ingress(ingress)
        .unwrap()
        .unwrap()
        .path;
    assert_eq!(path, Path::Relayed);
    echo(&fp, &target, 1 << 20).await;
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}
