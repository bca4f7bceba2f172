//! Service names on a private DHT of 8 mainline nodes on loopback: replicas announce a name, a
//! lookup finds them all, calls by name spread over them and skip a stopped one, a restricted
//! name admits only its members, and bad or unknown names are typed errors.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use keynet_core::discovery::service_entry::Membership;
use keynet_core::discovery::{record, ServiceOffer, ServiceTrust};
use keynet_core::{
    generate_identity, ConnOptions, DiscoveryOptions, ForwardProxy, ForwardStart, Identity, NodeId,
    ReverseProxy, ReverseStart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{connect, echo_server, TOKEN};
const WAIT: Duration = Duration::from_secs(20);

fn testnet() -> mainline::Testnet {
    mainline::Testnet::builder(8).build().unwrap()
}

fn discovery(net: &mainline::Testnet) -> DiscoveryOptions {
    DiscoveryOptions {
        bootstrap: Some(net.bootstrap.clone()),
        network: "test".into(),
        ..Default::default()
    }
}

/// A reverse proxy offering `offers` as `identity`.
async fn replica(
    net: &mainline::Testnet,
    identity: &Identity,
    offers: Vec<ServiceOffer>,
) -> ReverseProxy {
    let rp = ReverseProxy::new(ConnOptions::default()).unwrap();
    rp.start(ReverseStart {
        tls: Some(identity.tls.clone()),
        discovery: Some(DiscoveryOptions {
            services: offers,
            ..discovery(net)
        }),
        ..ReverseStart::new(echo_server().await)
    })
    .await
    .unwrap();
    rp
}

fn offer(name: &str) -> ServiceOffer {
    ServiceOffer {
        name: name.into(),
        membership: None,
    }
}

async fn caller(net: &mainline::Testnet, trust: HashMap<String, ServiceTrust>) -> ForwardProxy {
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart {
        discovery: Some(DiscoveryOptions {
            announce: false,
            service_trust: trust,
            ..discovery(net)
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    fp
}

/// A caller's trust for the name `vault`.
fn vault_trust(node_ids: Vec<NodeId>, owner: Option<[u8; 32]>) -> HashMap<String, ServiceTrust> {
    HashMap::from([("vault".to_string(), ServiceTrust { node_ids, owner })])
}

/// Looks `name` up until what is found satisfies `done` (each lookup is the wait).
async fn found_when(
    fp: &ForwardProxy,
    name: &str,
    done: impl Fn(&[keynet_core::discovery::Member]) -> bool,
) -> Vec<keynet_core::discovery::Member> {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = fp.lookup_service(name, None, None).await.unwrap();
            if done(&m) {
                return m;
            }
        }
    })
    .await
    .expect("the replicas in time")
}

/// A CONNECT to `name`.service.keynet echoes `msg`.
async fn echoes_by_name(fp: &ForwardProxy, name: &str, msg: &[u8]) {
    let (mut s, head) = connect(fp, &format!("{name}.service.keynet:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

fn ids(members: &[keynet_core::discovery::Member]) -> HashSet<NodeId> {
    members.iter().map(|m| m.node_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_are_found_used_in_turn_and_a_stopped_one_is_skipped() {
    let net = testnet();
    let identities: Vec<Identity> = (0..3).map(|_| generate_identity().unwrap()).collect();
    let mut replicas = Vec::new();
    for id in &identities {
        replicas.push(replica(&net, id, vec![offer("echo")]).await);
    }
    let fp = caller(&net, HashMap::new()).await;
    let all: HashSet<NodeId> = identities.iter().map(|i| i.node_id).collect();
    let found = found_when(&fp, "echo", |m| ids(m) == all).await;
    assert!(
        found.iter().all(|m| !m.verified),
        "an unrestricted name verifies no one"
    );
    assert_eq!(replicas[0].services().unwrap(), vec!["echo".to_string()]);

    // Calls by name go round the replicas.
    let mut used = HashSet::new();
    for _ in 0..6 {
        let info = fp
            .open_connection_to_service("echo", None, None)
            .await
            .unwrap();
        used.insert(info.node_id.parse::<NodeId>().unwrap());
    }
    assert_eq!(used, all, "every replica was used");
    echoes_by_name(&fp, "echo", b"by name").await;

    // One replica stops: it withdraws, and is never picked again.
    let gone = identities[0].node_id;
    replicas.remove(0).stop().await.unwrap();
    let after = found_when(&fp, "echo", |m| !ids(m).contains(&gone)).await;
    assert_eq!(ids(&after).len(), 2);
    let fresh = caller(&net, HashMap::new()).await;
    for _ in 0..6 {
        let info = fresh
            .open_connection_to_service("echo", None, None)
            .await
            .unwrap();
        assert_ne!(info.node_id, gone.to_string());
    }

    // Unknown names: ErrorServiceNotFound; bad ones: typed argument errors.
    let t0 = Instant::now();
    let err = fresh
        .open_connection_to_service("nobody", Some(Duration::from_secs(5)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorServiceNotFound", "{err}");
    assert!(t0.elapsed() < Duration::from_secs(6));
    let (_, head) = connect(&fresh, "nobody.service.keynet:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    for bad in ["", "a.b", &"x".repeat(64), "é"] {
        let err = fresh
            .open_connection_to_service(bad, None, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), "ERR_INVALID_ARG_VALUE", "{bad:?}: {err}");
    }
    let (_, head) = connect(&fresh, "a_b!.service.keynet:443").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    for rp in replicas {
        rp.stop().await.unwrap();
    }
    fp.stop().await.unwrap();
    fresh.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_name_admits_only_its_members() {
    let net = testnet();
    let owner_seed = [7u8; 32];
    let owner = record::ed25519_public_of_seed(&owner_seed);
    let member_id = generate_identity().unwrap();
    let listed_id = generate_identity().unwrap();
    let impostor_id = generate_identity().unwrap();
    let membership = Membership::sign(&owner_seed, "test", "vault", &member_id.node_id);
    let member = replica(
        &net,
        &member_id,
        vec![ServiceOffer {
            name: "vault".into(),
            membership: Some(membership),
        }],
    )
    .await;
    let listed = replica(&net, &listed_id, vec![offer("vault")]).await;
    let impostor = replica(&net, &impostor_id, vec![offer("vault")]).await;

    let trust = vault_trust(vec![listed_id.node_id], Some(owner));
    let fp = caller(&net, trust).await;
    let found = found_when(&fp, "vault", |m| m.len() == 3).await;
    let verified: HashSet<NodeId> = found
        .iter()
        .filter(|m| m.verified)
        .map(|m| m.node_id)
        .collect();
    assert_eq!(
        verified,
        HashSet::from([member_id.node_id, listed_id.node_id])
    );
    // The impostor is found, never connected to.
    for _ in 0..8 {
        let info = fp
            .open_connection_to_service("vault", None, None)
            .await
            .unwrap();
        assert_ne!(info.node_id, impostor_id.node_id.to_string());
    }
    // A caller that trusts only the owner's members reaches only the member.
    let strict = caller(&net, vault_trust(vec![], Some(owner))).await;
    for _ in 0..4 {
        let info = strict
            .open_connection_to_service("vault", None, None)
            .await
            .unwrap();
        assert_eq!(info.node_id, member_id.node_id.to_string());
    }
    // A name whose replicas are all outside the trust: not found, not connected.
    let nobody = caller(&net, vault_trust(vec![], Some([1u8; 32]))).await;
    let _ = found_when(&nobody, "vault", |m| m.len() == 3).await;
    let err = nobody
        .open_connection_to_service("vault", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ErrorServiceNotFound");
    assert!(err.to_string().contains("none admitted"), "{err}");
    for p in [fp, strict, nobody] {
        p.stop().await.unwrap();
    }
    for rp in [member, listed, impostor] {
        rp.stop().await.unwrap();
    }
}
