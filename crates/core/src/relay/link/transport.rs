//! How a keynode reaches its relay: QUIC from the proxy's own UDP socket, or, when UDP is
//! blocked, TLS over TCP with a WebSocket upgrade (passes HTTP-only firewalls). Both run mutual
//! TLS with the node's identity and pin the relay's node id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, RelayError, Result, StartError};
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::relay::framed::RelayConn;
use crate::relay::spec::{RelaySpec, Transport};
use crate::task::Tasks;
use crate::tls::config::{client_config, SERVER_NAME};
use crate::tls::verify::{handshake_error, Acceptable, VerifyOutcome};

/// What reaching a relay takes.
#[derive(Clone)]
pub struct Dialer {
    /// The node's QUIC endpoint: the QUIC transport dials from it, so the relay observes the
    /// same NAT mapping the peers will punch to.
    pub endpoint: quinn::Endpoint,
    /// The node's identity (mutual TLS).
    pub identity: LoadedIdentity,
    /// Connection timing.
    pub opts: ConnOptions,
    /// The node's tasks (the WebSocket pump runs there).
    pub tasks: Tasks,
    /// Offer `keynet-relay/3` over QUIC (the UDP channel): a node's link does, a bare
    /// `RelayClient` (tests, the load test) that reads packets as frames does not.
    pub channel: bool,
}

/// How long `Auto` lets QUIC try alone before WebSocket joins the race.
pub const QUIC_FIRST: Duration = Duration::from_secs(1);

/// Opens a connection to the relay within `budget`.
pub async fn connect(spec: &RelaySpec, ctx: &Dialer, budget: Duration) -> Result<RelayConn> {
    match spec.transport {
        Transport::Quic => connect_quic(spec, ctx, budget).await,
        Transport::WebSocket => {
            crate::relay::ws::connect(spec, &ctx.identity, &ctx.tasks, budget).await
        }
        Transport::Auto => {
            // QUIC gets a head start; WebSocket joins the race after it (UDP may be blocked).
            // The first to connect wins; a wrong relay pin ends the race at once.
            let quic = connect_quic(spec, ctx, budget);
            let ws = async {
                tokio::time::sleep(QUIC_FIRST.min(budget)).await;
                tracing::info!(relay = %spec.addr, "no QUIC answer yet from the relay: trying WebSocket too");
                crate::relay::ws::connect(spec, &ctx.identity, &ctx.tasks, budget).await
            };
            tokio::pin!(quic, ws);
            let (mut quic_err, mut ws_err) = (None, None);
            loop {
                tokio::select! {
                    r = &mut quic, if quic_err.is_none() => match r {
                        Ok(c) => return Ok(c),
                        Err(e @ Error::CertChain(_)) => return Err(e),
                        Err(e) => quic_err = Some(e),
                    },
                    r = &mut ws, if ws_err.is_none() => match r {
                        Ok(c) => return Ok(c),
                        Err(e @ Error::CertChain(_)) => return Err(e),
                        Err(e) => ws_err = Some(e),
                    },
                }
                if quic_err.is_some() && ws_err.is_some() {
                    return Err(RelayError::Unreachable {
                        addr: spec.addr,
                        quic: Box::new(quic_err.take().expect("checked")),
                        websocket: Box::new(ws_err.take().expect("checked")),
                    }
                    .into());
                }
            }
        }
    }
}

/// Opens a QUIC connection to the relay within `budget` (its stream opened, nothing sent).
pub(crate) async fn connect_quic(
    spec: &RelaySpec,
    ctx: &Dialer,
    budget: Duration,
) -> Result<RelayConn> {
    let accept = Acceptable::OneOf(vec![spec.node_id]);
    let conn = handshake(ctx, spec.addr, accept, spec.silence, budget).await?;
    let (send, recv) = tokio::time::timeout(budget, conn.open_bi())
        .await
        .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))?
        .map_err(|source| StartError::Handshake {
            to: format!("relay {}", spec.addr),
            source,
        })?;
    Ok(RelayConn {
        transport: Transport::Quic,
        read: Box::new(recv),
        write: Box::new(send),
        quic: Some(conn),
    })
}

/// A QUIC handshake with the relay at `addr` proving a node id `accept` takes, within `budget`.
async fn handshake(
    ctx: &Dialer,
    addr: SocketAddr,
    accept: Acceptable,
    silence: Option<Duration>,
    budget: Duration,
) -> Result<quinn::Connection> {
    let outcome = VerifyOutcome::default();
    let config = client_config(
        &ctx.identity,
        accept,
        outcome.clone(),
        relay_transport(&ctx.opts, silence),
        if ctx.channel {
            crate::tls::config::RELAY_ALPNS
        } else {
            &[crate::tls::config::RELAY_ALPN]
        },
    )?;
    let connecting = ctx
        .endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|source| StartError::Dial {
            to: format!("relay {addr}"),
            source,
        })?;
    match tokio::time::timeout(budget, connecting).await {
        Err(_) => Err(Error::ConnectionStartTimeout(budget.as_millis() as u64)),
        Ok(Err(source)) => {
            let to = format!("relay {addr}");
            Err(handshake_error(
                &outcome,
                StartError::Handshake { to, source },
            ))
        }
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// Learns the node id of whatever relay answers QUIC at `addr` (and the handshake's round
/// trip), then closes: for relays found on the DHT, whose node ids no one gave. Trust on first
/// use: a relay only carries packets that are end-to-end encrypted and pinned to node ids.
pub async fn probe(ctx: &Dialer, addr: SocketAddr, budget: Duration) -> Result<(NodeId, Duration)> {
    let started = std::time::Instant::now();
    let conn = handshake(ctx, addr, Acceptable::Any, None, budget).await?;
    let rtt = started.elapsed();
    let chain = crate::tls::verify::peer_chain(&conn);
    let node = crate::tls::verify::verify_chain(
        &chain,
        &Acceptable::Any,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    );
    conn.close(0u32.into(), b"probe");
    Ok((node?, rtt))
}

/// The QUIC transport toward a relay: the proxies' settings, with half their idle timeout (or
/// `silence`, when shorter), so a dead relay is noticed (and its relayed connections closed as
/// `relayLost`) before those connections' own idle timeout would end them anonymously.
fn relay_transport(opts: &ConnOptions, silence: Option<Duration>) -> Arc<quinn::TransportConfig> {
    let mut o = opts.clone();
    o.keepalive_timeout = (opts.keepalive_timeout / 2).min(silence.unwrap_or(Duration::MAX));
    if o.keepalive_interval * 3 > o.keepalive_timeout {
        o.keepalive_interval = o.keepalive_timeout / 3;
    }
    o.transport()
}
