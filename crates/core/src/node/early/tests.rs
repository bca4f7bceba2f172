//! The 0-RTT rule against a real reverse proxy, with a client that breaks it: tunnel payload
//! sent in 0-RTT is not carried while the handshake is incomplete (and never, if it never
//! completes), and a replayed first flight opens nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use crate::holepunch::send_hello;
use crate::identity::LoadedIdentity;
use crate::node::tickets::Tickets;
use crate::nodeid::NodeId;
use crate::proto::hello::Hello;
use crate::proto::tunnel;
use crate::{ConnOptions, ReverseProxy, ReverseStart};

/// Bounds every wait of these tests.
const WAIT: Duration = Duration::from_secs(20);

/// A TCP echo server that reports each accepted connection with everything it received before
/// the caller's FIN or reset.
async fn recording_server() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<mpsc::UnboundedReceiver<Vec<u8>>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, conns) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (done, received) = mpsc::unbounded_channel();
            let _ = accepted.send(received);
            tokio::spawn(async move {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                }
                let _ = done.send(all);
            });
        }
    });
    (addr, conns)
}

/// A UDP hop between the client and the reverse proxy that records the client's first flight
/// (what it sent before the server's first answer) and, when `first_flight_only`, drops the
/// client's later datagrams: its handshake then never completes.
struct Hop {
    addr: SocketAddr,
    first_flight: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn hop(to: SocketAddr, first_flight_only: bool) -> Hop {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    let first_flight = Arc::new(Mutex::new(Vec::new()));
    let recorded = first_flight.clone();
    let server_spoke = AtomicBool::new(false);
    tokio::spawn(async move {
        let mut client = None;
        let (mut up, mut down) = ([0u8; 2048], [0u8; 2048]);
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    if !server_spoke.load(Ordering::Relaxed) {
                        recorded.lock().unwrap().push(up[..n].to_vec());
                    } else if first_flight_only {
                        continue;
                    }
                    let _ = back.send(&up[..n]).await;
                }
                Ok(n) = back.recv(&mut down) => {
                    server_spoke.store(true, Ordering::Relaxed);
                    if let Some(c) = client {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    Hop { addr, first_flight }
}

/// A dialling node's QUIC side: its identity, its tickets and an endpoint.
struct Client {
    identity: LoadedIdentity,
    tickets: Tickets,
    endpoint: quinn::Endpoint,
}

impl Client {
    fn new() -> Self {
        Self {
            identity: LoadedIdentity::generate().unwrap(),
            tickets: Tickets::default(),
            endpoint: quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap(),
        }
    }

    fn connect(&self, to: SocketAddr, node: NodeId) -> quinn::Connecting {
        let (tls, _) = self.tickets.config_for(&self.identity, node).unwrap();
        let config = quinn::ClientConfig::new(tls);
        self.endpoint
            .connect_with(config, to, &node.to_string())
            .unwrap()
    }
}

/// The hello a forward proxy sends once its handshake completed.
async fn say_hello(conn: &quinn::Connection) {
    let hello = Hello {
        punching: false,
        observed: conn.remote_address(),
        own: "127.0.0.1:1".parse().unwrap(),
    };
    send_hello(conn, hello).await.unwrap();
}

/// What a forward proxy does on a connection: its hello, then one tunnel carrying `payload`
/// back and forth.
async fn tunnel_through(conn: &quinn::Connection, payload: &[u8]) {
    say_hello(conn).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&tunnel::encode_open()).await.unwrap();
    let mut ack = [0u8; 3];
    recv.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0, 0, 0], "the tunnel opened");
    send.write_all(payload).await.unwrap();
    let mut echoed = vec![0u8; payload.len()];
    recv.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, payload);
}

/// A reverse proxy in front of a recording server, giving up on a handshake after 2 s.
async fn reverse_proxy(server: SocketAddr) -> ReverseProxy {
    let opts = ConnOptions {
        connect_time: Duration::from_secs(2),
        ..Default::default()
    };
    let rp = ReverseProxy::new(opts).unwrap();
    rp.start(ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        ..ReverseStart::new(server)
    })
    .await
    .unwrap();
    rp
}

/// A first visit: a full handshake and one tunnel, after which the client holds a ticket.
async fn first_visit(client: &Client, rp: &ReverseProxy) {
    let node = rp.node_id().unwrap();
    let conn = client
        .connect(rp.ingress_addr().unwrap(), node)
        .await
        .unwrap();
    tunnel_through(&conn, b"first visit").await;
    conn.close(0u32.into(), b"done");
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap_or_else(|| panic!("{what}"))
}

#[tokio::test]
async fn payload_in_0rtt_is_not_carried_until_the_handshake_completes() {
    let (server, mut conns) = recording_server().await;
    let rp = reverse_proxy(server).await;
    let client = Client::new();
    first_visit(&client, &rp).await;
    next(&mut conns, "the first visit's server connection").await;
    // The returning client puts payload after the header in 0-RTT, and its handshake never
    // completes (the hop drops everything it sends after its first flight).
    let hop = hop(rp.ingress_addr().unwrap(), true).await;
    let (conn, _accepted) = client
        .connect(hop.addr, rp.node_id().unwrap())
        .into_0rtt()
        .unwrap_or_else(|_| panic!("the client holds a ticket"));
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&tunnel::encode_open()).await.unwrap();
    send.write_all(b"DELETE everything").await.unwrap();
    // The header was acted on (the tunnel's server connection opened in 0-RTT) ...
    let mut received = next(&mut conns, "a server connection from the 0-RTT header").await;
    // ... but the payload never reached the server: the reverse proxy gave up on the
    // handshake and closed the server connection without a byte.
    let bytes = next(&mut received, "the server connection's end").await;
    assert_eq!(bytes, b"", "0-RTT payload reached the server");
    rp.stop().await.unwrap();
}

#[tokio::test]
async fn a_replayed_first_flight_opens_nothing() {
    let (server, mut conns) = recording_server().await;
    let rp = reverse_proxy(server).await;
    let node = rp.node_id().unwrap();
    let client = Client::new();
    first_visit(&client, &rp).await;
    next(&mut conns, "the first visit's server connection").await;
    // The returning visit: its tunnel header rides 0-RTT, through a hop that records the first
    // flight.
    let hop = hop(rp.ingress_addr().unwrap(), false).await;
    let (conn, accepted) = client
        .connect(hop.addr, node)
        .into_0rtt()
        .unwrap_or_else(|_| panic!("the client holds a ticket"));
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&tunnel::encode_open()).await.unwrap();
    assert!(accepted.await, "the server accepted 0-RTT");
    say_hello(&conn).await;
    let mut ack = [0u8; 3];
    recv.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0, 0, 0]);
    send.write_all(b"once").await.unwrap();
    let mut echoed = [0u8; 4];
    recv.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"once");
    next(&mut conns, "the returning visit's server connection").await;
    conn.close(0u32.into(), b"done");
    let first_flight = hop.first_flight.lock().unwrap().clone();
    // (quinn coalesces the Initial and the 0-RTT packet into one datagram.)
    assert!(!first_flight.is_empty(), "the first flight was recorded");

    // An attacker replays that first flight from elsewhere, until the reverse proxy answers it
    // as a new connection (the old one's ids are freed once it drained).
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answered = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 2048];
        loop {
            for d in &first_flight {
                attacker
                    .send_to(d, rp.ingress_addr().unwrap())
                    .await
                    .unwrap();
            }
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), attacker.recv_from(&mut buf)).await
            {
                return;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "the reverse proxy answered the replay");
    // A new visit after the replay: its server connection must be the next one (a replayed
    // header would have opened one before it, as the reverse proxy reads in order).
    let later = Client::new();
    let conn = later
        .connect(rp.ingress_addr().unwrap(), node)
        .await
        .unwrap();
    tunnel_through(&conn, b"later").await;
    let mut received = next(&mut conns, "the later visit's server connection").await;
    conn.close(0u32.into(), b"done");
    assert_eq!(
        next(&mut received, "its end").await,
        b"later",
        "the next server connection is the later visit's, not the replay's"
    );
    rp.stop().await.unwrap();
}
