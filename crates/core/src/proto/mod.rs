//! Sans-IO wire formats: the HTTP CONNECT head and the tunnel header on each QUIC stream.

pub mod connect;
pub mod tunnel;
