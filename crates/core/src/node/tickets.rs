//! The session tickets a dialling node holds for the nodes it verified before, so a returning
//! dial resumes (no certificates, no signatures) and sends its tunnel header in 0-RTT.
//!
//! rustls resumes a ticket only under the client config that earned it (the same verifier and
//! certificate), so the config of each pinned node is kept too. A ticket resumes the session of
//! the identity it was issued to (the server takes the client to be whoever presented the
//! certificate back then), so everything here belongs to one identity: a node whose identity
//! changed (`setTlsConfig`, rotation) starts with none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::ClientSessionMemoryCache;
use rustls::pki_types::CertificateDer;

use crate::error::Result;
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::tls::config::{tunnel_client_tls, CLIENT_TICKET_SERVERS};
use crate::tls::verify::{Acceptable, VerifyOutcome};

/// Tickets and configs for the identity that earned them, for at most
/// [`CLIENT_TICKET_SERVERS`] nodes (past that an arbitrary node's are dropped).
#[derive(Default)]
pub(crate) struct Tickets(Mutex<Option<Held>>);

struct Held {
    /// The leaf certificate the tickets were issued to.
    leaf: Option<CertificateDer<'static>>,
    store: Arc<ClientSessionMemoryCache>,
    /// Per pinned node: its config, and where its verifier leaves the reason of a refusal.
    configs: HashMap<NodeId, (Arc<QuicClientConfig>, VerifyOutcome)>,
}

impl Tickets {
    /// The TLS config of a dial from `identity` that pins `node` (the same one each time), and
    /// its refusal slot, emptied for this dial.
    pub(crate) fn config_for(
        &self,
        identity: &LoadedIdentity,
        node: NodeId,
    ) -> Result<(Arc<QuicClientConfig>, VerifyOutcome)> {
        let leaf = identity.chain.first().cloned();
        let mut held = self.0.lock().expect("tickets lock");
        if held.as_ref().is_none_or(|h| h.leaf != leaf) {
            *held = Some(Held {
                leaf,
                store: Arc::new(ClientSessionMemoryCache::new(CLIENT_TICKET_SERVERS)),
                configs: HashMap::new(),
            });
        }
        let held = held.as_mut().expect("just set");
        if let Some((config, outcome)) = held.configs.get(&node) {
            *outcome.lock().expect("outcome lock") = None;
            return Ok((config.clone(), outcome.clone()));
        }
        if held.configs.len() >= CLIENT_TICKET_SERVERS {
            if let Some(old) = held.configs.keys().next().copied() {
                held.configs.remove(&old);
            }
        }
        let outcome = VerifyOutcome::default();
        let config = tunnel_client_tls(
            identity,
            Acceptable::OneOf(vec![node]),
            outcome.clone(),
            Some(held.store.clone()),
        )?;
        held.configs.insert(node, (config.clone(), outcome.clone()));
        Ok((config, outcome))
    }
}
