//! Node.js binding of keynet-core: translation only. Arguments arrive validated by `index.js`;
//! errors leave as `[Code] message` for `index.js` to turn into `errors` classes.

#![deny(clippy::all)]

mod convert;
mod forward;
mod relay;
mod reverse;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use convert::NativeIdentity;
pub use relay::NativeLimit;

/// The relay's limits, with their defaults (`Relay.limits`).
#[napi(catch_unwind)]
pub fn relay_limits() -> Vec<NativeLimit> {
    relay::limits_table()
}

/// Logs to stderr as `KEYNET_LOG` (or `RUST_LOG`) says, e.g. `KEYNET_LOG=keynet_core=debug`
/// (`setLogFilter` changes it later); each proxy's `logger` gets its own lines.
static LOGGING: once_cell::sync::Lazy<()> = once_cell::sync::Lazy::new(|| {
    let filter = std::env::var("KEYNET_LOG").or_else(|_| std::env::var("RUST_LOG"));
    keynet_core::logging::install(filter.ok().as_deref());
});

/// What goes to stderr from now on: an `EnvFilter` directive (`info`,
/// `keynet_core=debug,quinn=warn`), or null for nothing.
#[napi(catch_unwind)]
pub fn set_log_filter(directive: Option<String>) -> Result<()> {
    keynet_core::logging::set_stderr_filter(directive.as_deref()).map_err(|e| {
        let shown = directive.as_deref().unwrap_or("null");
        convert::arg_err(format!("log filter {shown:?}: {e}"))
    })
}

#[napi(module_exports)]
pub fn init(_exports: Object) -> Result<()> {
    once_cell::sync::Lazy::force(&LOGGING);
    Ok(())
}

/// Generates an Ed25519 identity with a self-signed certificate.
#[napi]
pub async fn generate_identity() -> Result<NativeIdentity> {
    keynet_core::generate_identity()
        .map(NativeIdentity::from)
        .map_err(convert::err)
}

/// A fresh service owner key, hex: `{ publicKey, privateKey }` (the private one is a seed).
#[napi(object)]
pub struct NativeServiceOwner {
    pub public_key: String,
    pub private_key: String,
}

/// Generates a service owner key (it signs the node ids of a restricted name's members).
#[napi(catch_unwind)]
pub fn generate_service_owner() -> NativeServiceOwner {
    use keynet_core::discovery::service_entry::{generate_owner, hex};
    let (seed, public) = generate_owner();
    NativeServiceOwner {
        public_key: hex(&public),
        private_key: hex(&seed),
    }
}

/// The owner's membership (hex) admitting `node_id` to `name` in `network`.
#[napi(catch_unwind)]
pub fn sign_service_member(
    owner_private_key: String,
    name: String,
    node_id: String,
    network: Option<String>,
) -> Result<String> {
    use keynet_core::discovery::service_entry::{check_name, check_network, unhex, Membership};
    let seed: [u8; 32] = unhex(&owner_private_key)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| convert::arg_err("ownerPrivateKey is not 64 hex digits".into()))?;
    let name = check_name(&name).map_err(|e| convert::arg_err(format!("name {name:?}: {e}")))?;
    let network = check_network(network.as_deref().unwrap_or(""))
        .map_err(|e| convert::arg_err(format!("network: {e}")))?;
    let node = convert::node_id(Some(node_id))?.expect("some in, some out");
    Ok(Membership::sign(&seed, &network, &name, &node).to_hex())
}

/// Rotates an identity to a fresh key: the new leaf is signed by the previous key.
#[napi(catch_unwind)]
pub fn rotate_identity(key_private_pem: String, cert_chain_pem: String) -> Result<NativeIdentity> {
    let tls = keynet_core::TlsConfig {
        key_private_pem,
        cert_chain_pem,
    };
    keynet_core::rotate_identity(&tls)
        .map(NativeIdentity::from)
        .map_err(convert::err)
}

/// Node id of the first certificate in a PEM string.
#[napi(catch_unwind)]
pub fn node_id_from_certificate(cert_pem: String) -> Result<String> {
    keynet_core::node_id_from_certificate_pem(&cert_pem)
        .map(|id| id.to_string())
        .map_err(convert::err)
}
