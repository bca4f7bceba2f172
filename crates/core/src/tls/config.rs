//! Builds quinn client and server configs from an identity and what the peer must prove.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;

use crate::error::{Error, Result};
use crate::identity::LoadedIdentity;
use crate::tls::verify::{Acceptable, NodeIdVerifier, VerifyOutcome};

/// ALPN of keynet's tunnel protocol (node to node).
pub(crate) const ALPN: &[u8] = b"keynet/1";
/// ALPN of the relay protocol (node to relay, over QUIC or TLS + WebSocket). Its version moves
/// with the relay frames (`proto::relay`): a node and a relay of different versions fail the
/// handshake with a clear error instead of closing on a frame the other does not know.
pub(crate) const RELAY_ALPN: &[u8] = b"keynet-relay/2";
/// Server name sent in the handshake; verification ignores it (identity is the node id).
pub(crate) const SERVER_NAME: &str = "keynet";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidTlsConfig(e.to_string())
}

/// Client (dialing) config: presents `identity`, accepts a server that proves `accept`, and
/// leaves the reason of a refusal in `outcome`.
pub(crate) fn client_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    outcome: VerifyOutcome,
    transport: Arc<quinn::TransportConfig>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig> {
    let tls = tls_client_config(identity, accept, outcome, alpn)?;
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The rustls client config behind [`client_config`] (also used over TCP by the relay's
/// WebSocket transport).
pub(crate) fn tls_client_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    outcome: VerifyOutcome,
    alpn: &[u8],
) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(NodeIdVerifier::new(accept, provider.clone(), outcome));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Server (accepting) config: presents `identity` and requires a client certificate that proves
/// `accept`.
pub(crate) fn server_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    transport: Arc<quinn::TransportConfig>,
    alpn: &[u8],
) -> Result<quinn::ServerConfig> {
    let tls = tls_server_config(identity, accept, alpn)?;
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The rustls server config behind [`server_config`] (also used over TCP by the relay).
pub(crate) fn tls_server_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    alpn: &[u8],
) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(NodeIdVerifier::new(
        accept,
        provider.clone(),
        VerifyOutcome::default(),
    ));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}
