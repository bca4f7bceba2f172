//! Discovery on a private DHT of 8 mainline nodes on loopback: announce, find by node id,
//! connect by node id alone, forged records, re-announce after a move.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keynet_core::discovery::record;
use keynet_core::{
    generate_identity, ConnOptions, DiscoveryOptions, Event, EventKind, ForwardProxy, ForwardStart,
    Identity, ReverseProxy, ReverseStart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

mod common;

use common::{connect, echo_server, TOKEN};
const WAIT: Duration = Duration::from_secs(20);

fn testnet() -> mainline::Testnet {
    mainline::Testnet::builder(8).build().unwrap()
}

fn discovery(net: &mainline::Testnet, announce: bool, every: Duration) -> DiscoveryOptions {
    DiscoveryOptions {
        bootstrap: Some(net.bootstrap.clone()),
        announce,
        reannounce_interval: every,
        ..Default::default()
    }
}

/// A reverse proxy announcing `identity`; returns it and the receiver of its `address` events.
async fn announced_reverse(
    net: &mainline::Testnet,
    identity: &Identity,
    every: Duration,
) -> (ReverseProxy, mpsc::UnboundedReceiver<Vec<SocketAddr>>) {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    rp.set_event_sink(Some(std::sync::Arc::new(move |e: Event| {
        if e.kind == EventKind::Address {
            let _ = tx.send(e.addresses);
        }
    })));
    rp.start(ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        tls: Some(identity.tls.clone()),
        allowed_node_ids: None,
        discovery: Some(discovery(net, true, every)),
        relay: None,
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    (rp, rx)
}

async fn next_address(rx: &mut mpsc::UnboundedReceiver<Vec<SocketAddr>>) -> Vec<SocketAddr> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an address event")
        .expect("sender alive")
}

async fn looking_forward(net: &mainline::Testnet) -> ForwardProxy {
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart {
        discovery: Some(discovery(net, false, Duration::from_secs(600))),
        relay: None,
        ..Default::default()
    })
    .await
    .unwrap();
    fp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_found_and_reached_by_node_id_alone() {
    let net = testnet();
    let identity = generate_identity().unwrap();
    let (rp, mut addrs) = announced_reverse(&net, &identity, Duration::from_secs(600)).await;
    let ingress = rp.ingress_addr().unwrap();
    assert_eq!(next_address(&mut addrs).await, vec![ingress]);
    assert_eq!(rp.announced_addrs().unwrap(), vec![ingress]);

    let fp = looking_forward(&net).await;
    // Found within 5 s, every time; the times are printed (see `--nocapture`), not asserted.
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let found = fp.lookup(identity.node_id, None).await.unwrap();
        times.push(started.elapsed());
        assert!(found.iter().any(|f| f.addr == ingress), "{found:?}");
    }
    times.sort();
    assert!(times[19] < Duration::from_secs(5), "{times:?}");
    eprintln!(
        "lookup on a private 8-node DHT: median {:?}, p95 {:?}",
        times[10], times[18]
    );

    // A CONNECT naming only the node id reaches the server; the connection is then reused.
    let target = format!("{}.keynet:443", identity.node_id);
    let (mut s, head) = connect(&fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"by node id").await.unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"by node id");
    let info = fp
        .open_connection_to_node(identity.node_id, None, None)
        .await
        .unwrap();
    assert_eq!(info.node_id, identity.node_id.to_string());
    assert_eq!(info.ingress, ingress);
    assert_eq!(fp.connection_count(), 1);

    // Having verified the node once, the proxy now also reads its signed record.
    let found = fp.lookup(identity.node_id, None).await.unwrap();
    let first = &found[0];
    assert!(first.signed, "{found:?}");
    assert_eq!(first.addr, ingress);
    assert!(first.age.unwrap() < Duration::from_secs(60), "{found:?}");

    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_id_is_not_found() {
    let net = testnet();
    let fp = looking_forward(&net).await;
    let nobody = generate_identity().unwrap().node_id;
    let err = fp
        .open_connection_to_node(nobody, Some(Duration::from_secs(10)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorNodeNotFound", "{err}");
    let (_, head) = connect(&fp, &format!("{nobody}.keynet:443")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    fp.stop().await.unwrap();
}

/// Another key announces its own address under the victim's node id.
async fn forge(net: &mainline::Testnet, victim: &Identity) -> ReverseProxy {
    let forger = ReverseProxy::new(ConnOptions::default()).unwrap();
    forger
        .start(ReverseStart::new(echo_server().await))
        .await
        .unwrap();
    let dht = mainline::Dht::builder()
        .bootstrap(&net.bootstrap)
        .bind_address(std::net::Ipv4Addr::LOCALHOST)
        .build()
        .unwrap()
        .as_async();
    let port = forger.ingress_addr().unwrap().port();
    let hash = mainline::Id::from(record::info_hash(&victim.node_id));
    dht.announce_peer(hash, Some(port)).await.unwrap();
    forger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_never_yields_a_tunnel_to_the_forger() {
    let net = testnet();
    let victim = generate_identity().unwrap();
    let forger = forge(&net, &victim).await;
    let fp = looking_forward(&net).await;

    // Only the forger announced: the pin refuses it.
    let err = fp
        .open_connection_to_node(victim.node_id, Some(Duration::from_secs(10)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorCertChainUnclaimed", "{err}");
    let (_, head) = connect(&fp, &format!("{}.keynet:443", victim.node_id)).await;
    assert!(head.starts_with("HTTP/1.1 526"), "{head}");
    assert_eq!(fp.connection_count(), 0);

    // The real node announces too: the forged record does not displace it.
    let (rp, mut addrs) = announced_reverse(&net, &victim, Duration::from_secs(600)).await;
    next_address(&mut addrs).await;
    let found = fp.lookup(victim.node_id, None).await.unwrap();
    assert!(found.len() >= 2, "{found:?}");
    let info = fp
        .open_connection_to_node(victim.node_id, None, None)
        .await
        .unwrap();
    assert_eq!(info.node_id, victim.node_id.to_string());
    assert_eq!(info.ingress, rp.ingress_addr().unwrap());
    assert_ne!(info.ingress, forger.ingress_addr().unwrap());

    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    forger.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_node_is_found_at_its_new_port_within_one_reannounce() {
    let net = testnet();
    let identity = generate_identity().unwrap();
    let every = Duration::from_secs(2);
    let (rp, mut addrs) = announced_reverse(&net, &identity, every).await;
    let old = next_address(&mut addrs).await;
    let fp = looking_forward(&net).await;
    fp.open_connection_to_node(identity.node_id, None, None)
        .await
        .unwrap();

    // The node moves: same identity, new port.
    rp.stop().await.unwrap();
    let (rp, mut addrs) = announced_reverse(&net, &identity, every).await;
    let new = next_address(&mut addrs).await;
    assert_ne!(new, old);
    let moved = Instant::now();
    let found = loop {
        let found = fp.lookup(identity.node_id, None).await.unwrap();
        if found.first().map(|f| f.addr) == Some(new[0]) || moved.elapsed() > every {
            break found;
        }
    };
    assert_eq!(found[0].addr, new[0], "{found:?}");
    assert!(found[0].signed);
    assert!(
        !found.iter().any(|f| f.signed && old.contains(&f.addr)),
        "{found:?}"
    );

    // A new connection by node id goes to the new address.
    fp.close_connection(old[0]).await.unwrap();
    let info = fp
        .open_connection_to_node(identity.node_id, None, None)
        .await
        .unwrap();
    assert_eq!(info.ingress, new[0]);
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_discovery_a_node_id_target_is_refused() {
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let id = generate_identity().unwrap().node_id;
    let err = fp
        .open_connection_to_node(id, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ERR_INVALID_ARG_VALUE");
    assert!(fp.lookup(id, None).await.is_err());
    let (_, head) = connect(&fp, &format!("{id}.keynet:443")).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    fp.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_dht_points_only_at_an_impostor_the_relay_reaches_the_real_node() {
    use keynet_core::relay::server::{RelayServer, RelayStart};
    use keynet_core::relay::spec::RelaySpec;
    let net = testnet();
    let victim = generate_identity().unwrap();
    let forger = forge(&net, &victim).await;
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    relay
        .start(RelayStart::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let spec = RelaySpec::new(relay.addr().unwrap(), relay.node_id().unwrap());
    // The real node is registered with the relay but not on the DHT.
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        tls: Some(victim.tls.clone()),
        relay: Some(spec.clone()),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart {
        discovery: Some(discovery(&net, false, Duration::from_secs(600))),
        relay: Some(spec),
        ..Default::default()
    })
    .await
    .unwrap();
    let (mut s, head) = connect(&fp, &format!("{}.keynet:443", victim.node_id)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    assert_eq!(fp.connection_count(), 1, "no connection to the impostor");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    forger.stop().await.unwrap();
    relay.stop().await.unwrap();
}

/// A relay on loopback, and how a node registers with it.
async fn loopback_relay() -> (
    keynet_core::relay::server::RelayServer,
    keynet_core::relay::spec::RelaySpec,
) {
    use keynet_core::relay::server::{RelayServer, RelayStart};
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    relay
        .start(RelayStart::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let mut spec =
        keynet_core::relay::spec::RelaySpec::new(relay.addr().unwrap(), relay.node_id().unwrap());
    spec.tcp_addr = Some(relay.tcp_addr().unwrap());
    (relay, spec)
}

/// The DHT node a relay runs beside it (as `keynet-relay --dht`): joined to `net`, answering
/// queries from the start, announcing nothing of its own.
async fn relay_dht_node(
    net: &mainline::Testnet,
) -> std::sync::Arc<keynet_core::discovery::Discovery> {
    keynet_core::discovery::Discovery::start(
        &DiscoveryOptions {
            announce: false,
            server_mode: true,
            ..discovery(net, false, Duration::from_secs(600))
        },
        std::net::Ipv4Addr::LOCALHOST.into(),
    )
    .await
    .unwrap()
}

/// Discovery for a node that announces its relays only (its IPs stay private).
fn relays_only(net: &mainline::Testnet) -> DiscoveryOptions {
    DiscoveryOptions {
        announce_direct: false,
        ..discovery(net, true, Duration::from_secs(600))
    }
}

/// A reverse proxy running as `identity`, registered with `relays` (the first as `relay`),
/// announcing its relays only.
async fn homed_reverse(
    net: &mainline::Testnet,
    identity: &Identity,
    relays: &[keynet_core::relay::spec::RelaySpec],
) -> ReverseProxy {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        tls: Some(identity.tls.clone()),
        discovery: Some(relays_only(net)),
        relay: relays.first().cloned(),
        relays: relays.iter().skip(1).cloned().collect(),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    rp
}

/// Looks `node` up until what is found satisfies `done` (each lookup is itself the wait for the
/// node's next announce), within [`WAIT`].
async fn located_when(
    fp: &ForwardProxy,
    node: keynet_core::NodeId,
    done: impl Fn(&keynet_core::discovery::Located) -> bool,
) -> keynet_core::discovery::Located {
    tokio::time::timeout(WAIT, async {
        loop {
            let l = fp.locate(node, None).await.unwrap();
            if done(&l) {
                return l;
            }
        }
    })
    .await
    .expect("the record in time")
}

/// A CONNECT to `node`.keynet through `fp` echoes `msg`.
async fn echoes_by_node_id(fp: &ForwardProxy, node: keynet_core::NodeId, msg: &[u8]) {
    let (mut s, head) = connect(fp, &format!("{node}.keynet:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_announces_only_its_home_relay_is_reached_through_it_on_demand() {
    let net = testnet();
    let (relay, spec) = loopback_relay().await;
    let identity = generate_identity().unwrap();
    let rp = homed_reverse(&net, &identity, std::slice::from_ref(&spec)).await;

    // The caller has discovery and no relay of its own.
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart {
        discovery: Some(DiscoveryOptions {
            relay_idle: Duration::from_millis(400),
            ..discovery(&net, false, Duration::from_secs(600))
        }),
        relay: None,
        ..Default::default()
    })
    .await
    .unwrap();

    // The record names the home relay and no direct address.
    let located = located_when(&fp, identity.node_id, |l| !l.relays.is_empty()).await;
    assert_eq!(located.relays.len(), 1, "{located:?}");
    assert_eq!(located.relays[0].node_id, spec.node_id);
    assert_eq!(located.relays[0].addr, spec.addr);
    assert_eq!(located.relays[0].tcp_port, spec.tcp_addr().port());
    assert!(located.addrs.iter().all(|f| !f.signed), "{located:?}");
    assert!(fp.relay_status().unwrap().is_empty());

    // A CONNECT naming only the node id reaches the server through the home relay.
    echoes_by_node_id(&fp, identity.node_id, b"through its home relay").await;
    let links = fp.relay_status().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(
        links[0].0.node_id, spec.node_id,
        "an on-demand link to the home relay"
    );

    // Once its last relayed connection is gone, the on-demand link closes after the idle time.
    let info = fp
        .open_connection_to_node(identity.node_id, None, None)
        .await
        .unwrap();
    fp.close_connection(info.ingress).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        while !fp.relay_status().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the on-demand link stayed: {:?}",
        fp.relay_status()
    );

    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_home_relay_dies_the_node_rehomes_and_reannounces_and_callers_follow() {
    let net = testnet();
    let (r1, s1) = loopback_relay().await;
    let (r2, s2) = loopback_relay().await;
    let identity = generate_identity().unwrap();
    let rp = homed_reverse(&net, &identity, &[s1.clone(), s2.clone()]).await;
    let fp = looking_forward(&net).await;
    let home_named = |fp: &ForwardProxy, want: keynet_core::NodeId, relays: usize| {
        let fp = fp.clone();
        let node = identity.node_id;
        async move {
            located_when(&fp, node, |l| {
                l.relays.first().map(|r| r.node_id) == Some(want) && l.relays.len() == relays
            })
            .await
        }
    };

    // Both relays registered; the record names the home first and the other second.
    let up = tokio::time::timeout(WAIT, async {
        loop {
            let (all, home) = rp.relays_status().unwrap();
            let ups = all
                .iter()
                .filter(|(_, s)| matches!(s, keynet_core::relay::spec::LinkStatus::Up { .. }))
                .count();
            if ups == 2 {
                if let Some(home) = home {
                    return home;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let home = up.expect("both relays up, one home");
    home_named(&fp, home, 2).await;
    let (dead, other, other_spec) = if home == s1.node_id {
        (r1, r2, s2)
    } else {
        (r2, r1, s1)
    };

    // The home relay goes away: the node re-homes and re-announces within 5 s.
    let t0 = Instant::now();
    dead.stop().await.unwrap();
    home_named(&fp, other_spec.node_id, 1).await;
    let rehomed = t0.elapsed();
    eprintln!("re-homed and re-announced in {rehomed:?}");
    assert!(rehomed < Duration::from_secs(5), "{rehomed:?}");
    assert_eq!(rp.relays_status().unwrap().1, Some(other_spec.node_id));

    // A caller that knows only the node id reaches it through the new home.
    let caller = looking_forward(&net).await;
    echoes_by_node_id(&caller, identity.node_id, b"new home").await;
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    caller.stop().await.unwrap();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    other.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_no_relay_finds_a_published_one_and_callers_reach_it_there() {
    let net = testnet();
    let (relay, spec) = loopback_relay().await;
    // The relay publishes itself from a DHT node on its host (as `keynet-relay --publish`).
    let relay_dht = relay_dht_node(&net).await;
    let _publishing =
        relay_dht.publish_relay("lab".into(), spec.addr.port(), Duration::from_secs(600));
    let identity = generate_identity().unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let started = Instant::now();
    let found = loop {
        // The publication may still be on its way: each start is itself the wait.
        let opts = DiscoveryOptions {
            relay_network: Some("lab".into()),
            ..relays_only(&net)
        };
        rp.start(ReverseStart {
            tls: Some(identity.tls.clone()),
            discovery: Some(opts),
            ..ReverseStart::new(echo_server().await)
        })
        .await
        .unwrap();
        let (links, home) = rp.relays_status().unwrap();
        if !links.is_empty() || started.elapsed() > WAIT {
            break (links, home);
        }
        rp.stop().await.unwrap();
    };
    assert_eq!(found.0.len(), 1, "{found:?}");
    assert_eq!(
        found.0[0].0.node_id, spec.node_id,
        "the relay's node id, learnt on first contact"
    );
    assert_eq!(found.1, Some(spec.node_id));

    // A caller knowing only the node id reaches it through that relay, once the record names
    // it (each lookup is itself the wait).
    let fp = looking_forward(&net).await;
    let named = located_when(&fp, identity.node_id, |l| !l.relays.is_empty()).await;
    assert_eq!(named.relays[0].node_id, spec.node_id);
    echoes_by_node_id(&fp, identity.node_id, b"found relay").await;

    // A network nobody published: the node starts without a relay.
    let lonely = ReverseProxy::new(ConnOptions::default()).unwrap();
    lonely
        .start(ReverseStart {
            discovery: Some(DiscoveryOptions {
                relay_network: Some("nobody".into()),
                ..discovery(&net, false, Duration::from_secs(600))
            }),
            ..ReverseStart::new(echo_server().await)
        })
        .await
        .unwrap();
    assert!(lonely.relays_status().unwrap().0.is_empty());

    lonely.stop().await.unwrap();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_found_relay_that_refuses_the_node_does_not_fail_its_start() {
    use keynet_core::relay::server::{RelayServer, RelayStart};
    let net = testnet();
    // A relay that wants a registration token the node does not have.
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    start.token = Some("members only".into());
    relay.start(start).await.unwrap();
    let relay_dht = relay_dht_node(&net).await;
    let port = relay.addr().unwrap().port();
    let _publishing = relay_dht.publish_relay("closed".into(), port, Duration::from_secs(600));
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    let started = Instant::now();
    let links = loop {
        // Each start is itself the wait for the publication; none may fail.
        rp.start(ReverseStart {
            discovery: Some(DiscoveryOptions {
                relay_network: Some("closed".into()),
                ..discovery(&net, false, Duration::from_secs(600))
            }),
            ..ReverseStart::new(echo_server().await)
        })
        .await
        .expect("a found relay never fails the start");
        let (links, _) = rp.relays_status().unwrap();
        if !links.is_empty() || started.elapsed() > WAIT {
            break links;
        }
        rp.stop().await.unwrap();
    };
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(
        !matches!(links[0].1, keynet_core::relay::spec::LinkStatus::Up { .. }),
        "{links:?}"
    );
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_dht_is_blocked_is_found_by_the_record_its_token_relay_stores() {
    use keynet_core::relay::server::{RelayServer, RelayStart};
    let net = testnet();
    // The relay runs a DHT node on the network and stores what its nodes announce through it;
    // it requires a token to register to be reached.
    let dht = relay_dht_node(&net).await;
    let (queue, _storing) = dht.store_records();
    let relay = RelayServer::new(ConnOptions::default()).unwrap();
    let mut start = RelayStart::new("127.0.0.1:0".parse().unwrap());
    start.token = Some("s3cret".into());
    start.records = Some(queue);
    relay.start(start).await.unwrap();
    let mut spec =
        keynet_core::relay::spec::RelaySpec::new(relay.addr().unwrap(), relay.node_id().unwrap());
    spec.token = Some("s3cret".into());

    // B's own DHT traffic goes nowhere (its only bootstrap node does not exist).
    let identity = generate_identity().unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        tls: Some(identity.tls.clone()),
        discovery: Some(DiscoveryOptions {
            bootstrap: Some(vec!["127.0.0.1:9".into()]),
            ..relays_only(&net)
        }),
        relay: Some(spec.clone()),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();

    // A, with discovery and no relay, finds B's record (stored by the relay)…
    let fp = looking_forward(&net).await;
    let located = located_when(&fp, identity.node_id, |l| !l.relays.is_empty()).await;
    assert_eq!(located.relays[0].node_id, spec.node_id, "{located:?}");
    // …and reaches B through that relay, as a caller: it has no token.
    echoes_by_node_id(&fp, identity.node_id, b"through a token relay, as a caller").await;
    let links = fp.relay_status().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(
        links[0].0.caller,
        "the on-demand link registers as a caller"
    );

    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_ipv6_is_announced_and_reached_there_by_node_id_while_the_dht_stays_ipv4() {
    let net = testnet();
    let identity = generate_identity().unwrap();
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        ingress_addr: "[::1]:0".parse().unwrap(),
        tls: Some(identity.tls.clone()),
        discovery: Some(discovery(&net, true, Duration::from_secs(600))),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    let port = rp.ingress_addr().unwrap().port();
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart {
        egress_addr: "[::1]:0".parse().unwrap(),
        discovery: Some(discovery(&net, false, Duration::from_secs(600))),
        ..Default::default()
    })
    .await
    .unwrap();
    // The record (on the IPv4 DHT) names the IPv6 address.
    let want: SocketAddr = SocketAddr::new("::1".parse().unwrap(), port);
    let located = located_when(&fp, identity.node_id, |l| {
        l.addrs.iter().any(|f| f.signed && f.addr == want)
    })
    .await;
    assert!(
        located.addrs.iter().all(|f| f.addr.is_ipv6() || !f.signed),
        "{located:?}"
    );
    echoes_by_node_id(&fp, identity.node_id, b"over IPv6").await;
    let info = fp
        .open_connection_to_node(identity.node_id, None, None)
        .await
        .unwrap();
    assert_eq!(info.ingress, want, "{info:?}");

    // An IPv4-only caller skips the IPv6 candidate at once: no way left, not a 20 s wait.
    let v4 = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    v4.start(ForwardStart {
        egress_addr: "127.0.0.1:0".parse().unwrap(),
        discovery: Some(discovery(&net, false, Duration::from_secs(600))),
        ..Default::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let err = v4
        .open_connection_to_node(identity.node_id, Some(Duration::from_secs(8)), None)
        .await
        .unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "{err} after {:?}",
        t0.elapsed()
    );
    assert!(err.to_string().contains("only at IPv6 addresses"), "{err}");
    assert_eq!(err.code(), "ErrorNodeNotFound");
    v4.stop().await.unwrap();
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}
