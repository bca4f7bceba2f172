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

/// Logs to stderr when `KEYNET_LOG` (or `RUST_LOG`) is set, e.g. `KEYNET_LOG=keynet_core=debug`.
static LOGGING: once_cell::sync::Lazy<()> = once_cell::sync::Lazy::new(|| {
    let filter = std::env::var("KEYNET_LOG").or_else(|_| std::env::var("RUST_LOG"));
    if let Ok(filter) = filter {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
});

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
