//! The relay (hub): a server that authenticated keynodes register with over QUIC or
//! TLS/WebSocket, that carries their QUIC packets to each other (end-to-end encrypted: it sees
//! only ciphertext), arranges rendezvous for punching, and allocates public TCP ports; and the
//! keynode's side of it (the link).

pub mod alloc;
pub mod client;
mod direct;
mod framed;
pub mod link;
pub mod public;
pub mod server;
pub mod spec;
pub mod tcp_frames;
pub mod transport;
mod ws;
