//! A forward proxy that reconnects to a node it verified before resumes the TLS session: the
//! connection says so on both sides and its first tunnel works (its header rode 0-RTT). A
//! resumed client is accepted only under the rules in force: a reverse proxy that changed its
//! allow-list, or a forward proxy that changed its identity, starts over with a full handshake.

use keynet_core::{generate_identity, ConnOptions, ForwardProxy, ForwardStart, ReverseProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{connect, echo_server, reverse_proxy_for, tunnel_to, TOKEN};

async fn pair() -> (ForwardProxy, ReverseProxy) {
    let rp = reverse_proxy_for(echo_server().await, ConnOptions::default()).await;
    let fp = ForwardProxy::new(TOKEN.into(), ConnOptions::default()).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    (fp, rp)
}

async fn echo(fp: &ForwardProxy, rp: &ReverseProxy, what: &[u8]) {
    let mut s = tunnel_to(fp, rp).await;
    s.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, what);
}

fn resumed(fp: &ForwardProxy, rp: &ReverseProxy) -> (bool, bool) {
    let ingress = rp.ingress_addr().unwrap();
    let f = fp
        .connection_info_by_ingress(ingress)
        .unwrap()
        .expect("fp's connection");
    let r = rp.connections().unwrap();
    assert_eq!(r.len(), 1, "one connection at the reverse proxy");
    (f.resumed, r[0].resumed)
}

#[tokio::test]
async fn a_returning_forward_proxy_resumes_and_its_tunnel_works() {
    let (fp, rp) = pair().await;
    let ingress = rp.ingress_addr().unwrap();
    echo(&fp, &rp, b"first").await;
    assert_eq!(
        resumed(&fp, &rp),
        (false, false),
        "a first visit is a full handshake"
    );
    fp.close_connection(ingress).await.unwrap();
    echo(&fp, &rp, b"second").await;
    assert_eq!(resumed(&fp, &rp), (true, true), "a returning visit resumes");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_allow_list_forgets_the_tickets_it_gave() {
    let (fp, rp) = pair().await;
    let ingress = rp.ingress_addr().unwrap();
    echo(&fp, &rp, b"first").await;
    fp.close_connection(ingress).await.unwrap();
    // Still allowed, but under a new allow-list: the session given under the old one is gone.
    rp.set_allowed_node_ids(Some(vec![fp.node_id().unwrap()]))
        .unwrap();
    echo(&fp, &rp, b"second").await;
    assert_eq!(resumed(&fp, &rp), (false, false));
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test]
async fn a_changed_allow_list_refuses_a_client_it_resumed_before() {
    let (fp, rp) = pair().await;
    let ingress = rp.ingress_addr().unwrap();
    echo(&fp, &rp, b"first").await;
    fp.close_connection(ingress).await.unwrap();
    let other = generate_identity().unwrap().node_id;
    rp.set_allowed_node_ids(Some(vec![other])).unwrap();
    let target = format!("{}?nodeId={}", ingress, rp.node_id().unwrap());
    let (_s, head) = connect(&fp, &target).await;
    assert!(
        !head.starts_with("HTTP/1.1 200"),
        "refused after the allow-list changed: {head}"
    );
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_identity_does_not_resume_the_old_ones_session() {
    let (fp, rp) = pair().await;
    let ingress = rp.ingress_addr().unwrap();
    echo(&fp, &rp, b"first").await;
    fp.close_connection(ingress).await.unwrap();
    let before = fp.node_id().unwrap();
    fp.set_tls_config(&generate_identity().unwrap().tls)
        .unwrap();
    echo(&fp, &rp, b"second").await;
    assert_eq!(resumed(&fp, &rp), (false, false));
    let seen = &rp.connections().unwrap()[0].node_id;
    assert_ne!(
        *seen,
        before.to_string(),
        "the reverse proxy sees the new identity"
    );
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
}
