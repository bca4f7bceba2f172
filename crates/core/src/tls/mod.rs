//! TLS for keynet's QUIC connections: mutual authentication by node id, TLS 1.3 only.

pub(crate) mod config;
pub(crate) mod verify;
