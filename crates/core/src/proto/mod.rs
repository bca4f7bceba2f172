//! Sans-IO wire formats and state machines: the HTTP CONNECT head, the tunnel header on each
//! QUIC stream, the goaway, hole punching, the liveness of punched paths, retry backoff, the post-handshake
//! hello, the relay frames and the relay's UDP packet channel.

pub mod backoff;
pub mod channel;
pub mod connect;
pub mod goaway;
pub mod hello;
pub mod liveness;
pub mod punch;
pub mod relay;
pub mod tunnel;
pub mod websocket;
