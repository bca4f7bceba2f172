//! A tunnel opened while its connection is still being set up, so the tunnel's round trip
//! overlaps the connection's: the header leaves with the handshake's last flight, or, to a
//! node that gave this one a session ticket, in 0-RTT with the first flight.
//!
//! The 0-RTT rule: only the tunnel header (8 bytes, no payload) is ever sent before the
//! handshake completes. The client sends its hello and every payload byte afterwards; the
//! reverse proxy carries no byte of a tunnel until the handshake completed, and a replayed
//! first flight finds its single-use ticket gone, so its 0-RTT data is refused.

use futures_lite::future::poll_once;

use crate::proto::tunnel;

/// A stream whose tunnel header is written; the reverse proxy's acknowledgement is not read yet.
pub(crate) struct EarlyTunnel {
    /// Our side of the stream.
    pub send: quinn::SendStream,
    /// The peer's side.
    pub recv: quinn::RecvStream,
}

impl EarlyTunnel {
    /// Opens a stream on `conn` and writes the header (in 0-RTT while the handshake runs);
    /// `None` when the connection has no stream or credit to give now. It never waits: the
    /// caller then opens the tunnel the ordinary way, under its own deadline.
    pub(crate) async fn open(conn: &quinn::Connection) -> Option<Self> {
        let (mut send, recv) = poll_once(conn.open_bi()).await?.ok()?;
        match poll_once(send.write_all(&tunnel::encode_open())).await {
            Some(Ok(())) => Some(Self { send, recv }),
            _ => {
                let _ = send.reset(crate::splice::ABORTED.into());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
