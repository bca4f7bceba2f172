//! The relay (hub), groundwork of the relay issue: a QUIC server that authenticated keynodes
//! register with (mutual TLS: the node id is proven in the handshake), and that forwards packets
//! between registered nodes only. Not yet wired into the proxies' paths.

pub mod client;
mod framed;
pub mod server;
