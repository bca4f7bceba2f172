//! The relay (hub): a server that authenticated keynodes register with over QUIC or
//! TLS/WebSocket, that carries their QUIC packets to each other (end-to-end encrypted: it sees
//! only ciphertext), arranges rendezvous for punching, and allocates public TCP ports; and the
//! keynode's side of it (the link).
//!
//! - `link/`: the keynode side (the link, its transports, direct paths, public-port serving);
//! - `server/`: the relay itself (sessions, port allocations);
//! - beside them, what both sides share: `spec` (plain data), `framed` and `carried` (frame
//!   code), `ws` (the WebSocket transport's two ends), `client` (a bare frame client for tests).

pub mod carried;
pub mod client;
mod framed;
pub mod link;
pub mod server;
pub mod spec;
mod ws;

pub use server::alloc;
