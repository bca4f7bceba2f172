//! Conversions between keynet-core types and the plain objects the JS layer sees, by concern:
//! start options in, information out, events out, cancellable operations; and the argument
//! parsing and error mapping every method shares (here).

mod events;
mod info;
mod logs;
mod ops;
mod options;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use napi::bindgen_prelude::*;

pub(crate) use events::{sink, Listener};
pub(crate) use info::{
    NativeAddress, NativeConnectionInfo, NativeFound, NativeIdentity, NativeLocated, NativeMember,
    NativeProxyStats, NativeRelayStatus,
};
pub(crate) use logs::{route as log_route, LogListener};
pub(crate) use ops::Ops;
pub(crate) use options::{
    NativeForwardStart, NativeOptions, NativeRelay, NativeReverseStart, NativeServiceOffer,
};

/// Turns a core error into a JS error whose message starts with `[Code] `.
pub(crate) fn err(e: keynet_core::Error) -> Error {
    Error::new(Status::GenericFailure, format!("[{}] {}", e.code(), e))
}

/// An argument error (index.js validates first; this is the backstop).
pub(crate) fn arg_err(msg: String) -> Error {
    Error::new(Status::InvalidArg, format!("[ERR_INVALID_ARG_VALUE] {msg}"))
}

/// Parses `host` (an IP string) and `port` into an address.
pub(crate) fn addr(name: &str, host: &str, port: u32) -> Result<SocketAddr> {
    let ip: IpAddr = host.parse().map_err(|_| {
        arg_err(format!(
            "{name} must be an IPv4 or IPv6 address, got {host:?}"
        ))
    })?;
    let port =
        u16::try_from(port).map_err(|_| arg_err(format!("port must be 0..65535, got {port}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses the address of a peer (a target, not a bind address): `0.0.0.0` and `::` mean this
/// machine, as in the original (see `keynet_core::addr::zero_to_loopback`).
pub(crate) fn target(name: &str, host: &str, port: u32) -> Result<SocketAddr> {
    addr(name, host, port).map(keynet_core::addr::zero_to_loopback)
}

/// Parses an optional node id string.
pub(crate) fn node_id(s: Option<String>) -> Result<Option<keynet_core::NodeId>> {
    s.map(|s| {
        s.parse()
            .map_err(|e: keynet_core::nodeid::NodeIdParseError| arg_err(format!("nodeId: {e}")))
    })
    .transpose()
}

/// Optional PEM pair into a TLS config.
pub(crate) fn tls(key: Option<String>, cert: Option<String>) -> Option<keynet_core::TlsConfig> {
    match (key, cert) {
        (Some(key_private_pem), Some(cert_chain_pem)) => Some(keynet_core::TlsConfig {
            key_private_pem,
            cert_chain_pem,
        }),
        _ => None,
    }
}

/// Milliseconds into a duration.
pub(crate) fn ms(v: f64) -> Duration {
    Duration::from_micros((v.max(0.0) * 1000.0) as u64)
}
