//! How the tunnels of a connection end when a side closes the connection on purpose
//! (`closeConnection`, `stop()`) or its peer goes silent, so no byte already handed to a proxy
//! is lost and each TCP end sees a FIN, not a reset:
//!
//! - **drain** (a close on purpose, by this side or announced by the peer's goaway): each tunnel
//!   stops reading its TCP socket, sends what it read and a FIN through its stream, delivers
//!   what arrives until the peer's FIN, then ends its socket. Both sides drain, so every tunnel
//!   ends within a round trip or two. Each side says `drained` once its tunnels ended (QUIC's
//!   acks only say the bytes reached the peer's buffers, not its TCP end); the connection closes
//!   when both sides drained, at the latest after `connEndTime` (then what is left is reset).
//! - **flush** (the peer is gone: keepalive timeout): nothing more will arrive, so each tunnel
//!   delivers what already arrived and ends its socket at once.
//!
//! A connection that is ending opens and accepts no new tunnels. Once it closed, whatever
//! tunnel is left (say, one blocked writing to a TCP end that reads nothing) is reset.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// The end state of one connection and its live tunnels.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    drain: CancellationToken,
    flush: CancellationToken,
    closed: CancellationToken,
    peer_drained: CancellationToken,
    tunnels: TaskTracker,
}

/// What a tunnel watches while it runs (see the module doc).
#[derive(Clone, Debug)]
pub(crate) struct EndSignals {
    /// Stop reading the TCP socket, finish the stream, deliver until the peer's FIN.
    pub drain: CancellationToken,
    /// Deliver what already arrived and end the socket now.
    pub flush: CancellationToken,
    /// The connection closed: reset what is left.
    pub closed: CancellationToken,
}

/// A live tunnel of the connection; the connection's end waits for it to drop.
#[derive(Debug)]
pub(crate) struct LiveTunnel {
    _token: TaskTrackerToken,
    /// The signals this tunnel watches.
    pub signals: EndSignals,
}

impl Ending {
    /// Registers a new tunnel; `None` once the connection is ending (it takes no new tunnels).
    pub(crate) fn tunnel(&self) -> Option<LiveTunnel> {
        // Token first, check second: a drain that begins in between still sees this tunnel
        // (its signal is already set when the tunnel starts watching it).
        let token = self.tunnels.token();
        if self.drain.is_cancelled() {
            return None;
        }
        Some(LiveTunnel {
            _token: token,
            signals: EndSignals {
                drain: self.drain.clone(),
                flush: self.flush.clone(),
                closed: self.closed.clone(),
            },
        })
    }

    /// Starts draining; true the first time (the caller then tells the peer).
    pub(crate) fn drain(&self) -> bool {
        let first = !self.drain.is_cancelled();
        self.drain.cancel();
        self.tunnels.close();
        first
    }

    /// The peer is gone: drain, and deliver only what already arrived.
    pub(crate) fn flush(&self) {
        self.flush.cancel();
        self.drain();
    }

    /// The connection closed: tunnels still running are reset.
    pub(crate) fn closed(&self) {
        self.closed.cancel();
        self.drain();
    }

    /// Whether the connection is ending.
    pub(crate) fn is_ending(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Waits until every tunnel ended, at most `grace`; true if they all did.
    pub(crate) async fn tunnels_ended(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.all_tunnels_ended())
            .await
            .is_ok()
    }

    /// Waits until every tunnel ended (once ending; the caller bounds the wait).
    pub(crate) async fn all_tunnels_ended(&self) {
        self.tunnels.wait().await
    }

    /// The peer said its tunnels ended.
    pub(crate) fn peer_drained(&self) {
        self.peer_drained.cancel();
    }

    /// Waits until the peer said its tunnels ended (the caller bounds the wait).
    pub(crate) async fn wait_peer_drained(&self) {
        self.peer_drained.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ending_connection_takes_no_tunnels_and_waits_for_its_live_ones() {
        let e = Ending::default();
        let live = e.tunnel().expect("not ending yet");
        assert!(e.drain(), "first drain");
        assert!(!e.drain(), "second drain is not the first");
        assert!(e.tunnel().is_none(), "no new tunnel once ending");
        assert!(live.signals.drain.is_cancelled());
        assert!(!live.signals.flush.is_cancelled());
        assert!(!e.tunnels_ended(Duration::from_millis(20)).await);
        drop(live);
        assert!(e.tunnels_ended(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn flush_also_drains() {
        let e = Ending::default();
        let live = e.tunnel().expect("not ending yet");
        e.flush();
        assert!(live.signals.drain.is_cancelled() && live.signals.flush.is_cancelled());
        assert!(e.is_ending());
    }
}
