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
/// The relay protocol with its UDP packet channel (`proto::channel`): the frames of
/// [`RELAY_ALPN`] plus `Channel`. Offered first over QUIC; a relay or node that knows only
/// [`RELAY_ALPN`] negotiates that, and relayed packets stay on the stream.
pub(crate) const RELAY_ALPN_CHANNEL: &[u8] = b"keynet-relay/3";
/// What a QUIC relay connection offers, in order of preference.
pub(crate) const RELAY_ALPNS: &[&[u8]] = &[RELAY_ALPN_CHANNEL, RELAY_ALPN];
/// Server name sent in the handshake; verification ignores it (identity is the node id).
pub(crate) const SERVER_NAME: &str = "keynet";

/// ring's suites with AES-128-GCM first (ring's own order starts with AES-256-GCM). A client
/// offers them in this order and the server takes the client's choice, so two keynet nodes
/// settle on AES-128-GCM: 10 AES rounds per block instead of 14 (measured, 256 MiB A/B in one
/// batch: bulk CPU down, throughput up), with a margin that TLS 1.3 and QUIC themselves
/// rely on (it is TLS 1.3's mandatory suite and what QUIC's Initial packets use). A peer that
/// prefers another suite still gets it: every suite ring offers stays on the list.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
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
    alpns: &[&[u8]],
) -> Result<quinn::ClientConfig> {
    let tls = tls_client_config(identity, accept, outcome, alpns)?;
    let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Session tickets a server keeps for returning clients (oldest dropped first). Each holds the
/// client's chain (about 1 KiB), so this bounds the store at a few MiB.
pub(crate) const SERVER_TICKETS: usize = 4096;
/// Nodes a dialling node keeps tickets and a config for (past that, rustls drops the oldest
/// tickets and `node::tickets` an arbitrary node's config).
pub(crate) const CLIENT_TICKET_SERVERS: usize = 1024;

/// The TLS side of a dial to a node: as [`client_config`]'s, resuming with the tickets in
/// `tickets` and sending the tunnel header in 0-RTT when the server allows it (`node::early`
/// has the rule). Without `tickets` (a dial that pins no node id) it never resumes. rustls
/// resumes a ticket only under the config that earned it (the same verifier and certificate),
/// so a caller that wants resumption keeps this config per node (`node::tickets`). The server
/// name, the ticket's key, is the pinned node id; no SNI is sent, as it would name the node to
/// every observer.
pub(crate) fn tunnel_client_tls(
    identity: &LoadedIdentity,
    accept: Acceptable,
    outcome: VerifyOutcome,
    tickets: Option<Arc<dyn rustls::client::ClientSessionStore>>,
) -> Result<Arc<QuicClientConfig>> {
    let mut tls = tls_client_config(identity, accept, outcome, &[ALPN])?;
    tls.enable_sni = false;
    match tickets {
        Some(store) => {
            tls.resumption = rustls::client::Resumption::store(store);
            tls.enable_early_data = true;
        }
        None => tls.resumption = rustls::client::Resumption::disabled(),
    }
    Ok(Arc::new(QuicClientConfig::try_from(tls).map_err(tls_err)?))
}

/// The rustls client config behind [`client_config`] (also used over TCP by the relay's
/// WebSocket transport).
pub(crate) fn tls_client_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    outcome: VerifyOutcome,
    alpns: &[&[u8]],
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
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// Server (accepting) config: presents `identity` and requires a client certificate that proves
/// `accept`.
pub(crate) fn server_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    transport: Arc<quinn::TransportConfig>,
    alpns: &[&[u8]],
) -> Result<quinn::ServerConfig> {
    quic_server(tls_server_config(identity, accept, alpns)?, transport)
}

/// quinn's server config around `tls`.
fn quic_server(
    tls: rustls::ServerConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig> {
    let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Server config of a reverse proxy: as [`server_config`], issuing one single-use session ticket
/// per handshake and accepting 0-RTT from a client that presents one. Tickets live in this
/// config's memory (at most [`SERVER_TICKETS`]): a new config (another allow-list or identity)
/// forgets them, so a resumed client was accepted under the rules in force. Single use is what
/// stops a replayed first flight: its ticket is gone, so its 0-RTT data is refused.
pub(crate) fn tunnel_server_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig> {
    let mut tls = tls_server_config(identity, accept, &[ALPN])?;
    // Stateful tickets (rustls's default ticketer makes none): rustls takes an entry out of
    // the store when a client uses it.
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_TICKETS);
    tls.send_tls13_tickets = 1;
    // QUIC carries early data on streams; quinn requires this value to allow it.
    tls.max_early_data_size = u32::MAX;
    quic_server(tls, transport)
}

/// The rustls server config behind [`server_config`] (also used over TCP by the relay).
pub(crate) fn tls_server_config(
    identity: &LoadedIdentity,
    accept: Acceptable,
    alpns: &[&[u8]],
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
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// The ALPN a QUIC connection negotiated (empty if none).
pub(crate) fn negotiated_alpn(conn: &quinn::Connection) -> Vec<u8> {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS handshake in memory between `client` and `server`: the suite both settled on.
    fn negotiated(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> rustls::CipherSuite {
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..8 {
            let mut flight = Vec::new();
            c.write_tls(&mut flight).unwrap();
            s.read_tls(&mut &flight[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut flight = Vec::new();
            s.write_tls(&mut flight).unwrap();
            c.read_tls(&mut &flight[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let suite = s.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), suite);
        suite
    }

    #[test]
    fn two_nodes_settle_on_aes_128_gcm() {
        let (a, b) = (
            LoadedIdentity::generate().unwrap(),
            LoadedIdentity::generate().unwrap(),
        );
        let client =
            tls_client_config(&a, Acceptable::Any, VerifyOutcome::default(), &[ALPN]).unwrap();
        let server = tls_server_config(&b, Acceptable::Any, &[ALPN]).unwrap();
        assert_eq!(
            negotiated(client, server),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }

    /// A node built with ring's own order (keynet before AES-128 came first) still connects,
    /// with the suite it prefers: the server follows the client.
    #[test]
    fn a_node_that_prefers_aes_256_gets_it() {
        let (a, b) = (
            LoadedIdentity::generate().unwrap(),
            LoadedIdentity::generate().unwrap(),
        );
        let ring_order = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(NodeIdVerifier::new(
            Acceptable::Any,
            ring_order.clone(),
            VerifyOutcome::default(),
        ));
        let mut client = rustls::ClientConfig::builder_with_provider(ring_order)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(a.chain.clone(), a.key.clone_key())
            .unwrap();
        client.alpn_protocols = vec![ALPN.to_vec()];
        let server = tls_server_config(&b, Acceptable::Any, &[ALPN]).unwrap();
        assert_eq!(
            negotiated(client, server),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }
}
