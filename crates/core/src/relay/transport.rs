//! How a keynode reaches its relay: QUIC from the proxy's own UDP socket, or, when UDP is
//! blocked, TLS over TCP with a WebSocket upgrade (passes HTTP-only firewalls). Both run mutual
//! TLS with the node's identity and pin the relay's node id.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::relay::link::{LinkContext, RelayConn, RelaySpec};
use crate::tls::config::{client_config, SERVER_NAME};
use crate::tls::verify::{Acceptable, VerifyOutcome};

/// Which transport a link uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// QUIC, falling back to WebSocket when QUIC does not answer within [`QUIC_FIRST`].
    Auto,
    /// QUIC only.
    Quic,
    /// TLS + WebSocket over TCP only.
    WebSocket,
}

/// How long `Auto` waits for QUIC before trying WebSocket.
pub const QUIC_FIRST: Duration = Duration::from_secs(3);

/// Opens a connection to the relay within `budget`.
pub async fn connect(spec: &RelaySpec, ctx: &LinkContext, budget: Duration) -> Result<RelayConn> {
    match spec.transport {
        Transport::Quic => connect_quic(spec, ctx, budget).await,
        Transport::WebSocket => {
            crate::relay::ws::connect(spec, &ctx.identity, &ctx.tasks, budget).await
        }
        Transport::Auto => match connect_quic(spec, ctx, QUIC_FIRST.min(budget)).await {
            Ok(c) => Ok(c),
            Err(e @ Error::CertChain(_)) => Err(e),
            Err(e) => {
                tracing::info!(relay = %spec.addr, error = %e, "QUIC to the relay failed: trying WebSocket");
                crate::relay::ws::connect(spec, &ctx.identity, &ctx.tasks, budget).await
            }
        },
    }
}

async fn connect_quic(spec: &RelaySpec, ctx: &LinkContext, budget: Duration) -> Result<RelayConn> {
    let outcome = VerifyOutcome::default();
    let config = client_config(
        &ctx.identity,
        Acceptable::OneOf(vec![spec.node_id]),
        outcome.clone(),
        relay_transport(&ctx.opts),
    )?;
    let connecting = ctx
        .endpoint
        .connect_with(config, spec.addr, SERVER_NAME)
        .map_err(|e| Error::ConnectionStart(format!("relay {}: {e}", spec.addr)))?;
    let conn = match tokio::time::timeout(budget, connecting).await {
        Err(_) => return Err(Error::ConnectionStartTimeout(budget.as_millis() as u64)),
        Ok(Err(e)) => {
            if let Some(cert) = outcome.lock().expect("outcome lock").take() {
                return Err(cert.into());
            }
            return Err(Error::ConnectionStart(format!("relay {}: {e}", spec.addr)));
        }
        Ok(Ok(conn)) => conn,
    };
    let (send, recv) = tokio::time::timeout(budget, conn.open_bi())
        .await
        .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))?
        .map_err(|e| Error::ConnectionStart(e.to_string()))?;
    Ok(RelayConn {
        name: "quic",
        read: Box::new(recv),
        write: Box::new(send),
        quic: Some(conn),
    })
}

/// The QUIC transport toward a relay: the proxies' settings, with half their idle timeout, so a
/// dead relay is noticed (and its relayed connections closed as `relayLost`) before those
/// connections' own idle timeout would end them anonymously.
fn relay_transport(opts: &crate::options::ConnOptions) -> Arc<quinn::TransportConfig> {
    let mut o = opts.clone();
    o.keepalive_timeout = opts.keepalive_timeout / 2;
    if o.keepalive_interval * 3 > o.keepalive_timeout {
        o.keepalive_interval = o.keepalive_timeout / 3;
    }
    o.transport()
}
