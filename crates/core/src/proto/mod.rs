//! Sans-IO wire formats and state machines: the HTTP CONNECT head, the tunnel header on each
//! QUIC stream, and hole punching.

pub mod connect;
pub mod hello;
pub mod punch;
pub mod tunnel;
