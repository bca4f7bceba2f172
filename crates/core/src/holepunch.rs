//! Drives a [`Puncher`] on a proxy's socket: sends its punches, feeds it the peer's datagrams,
//! and reports when the path opens. Owned by the operation that punches (a dial or a
//! `openConnection` on the reverse proxy); dropping it stops punching.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::endpoint::{KeynetSocket, PunchSession};
use crate::events::Path;
use crate::proto::punch::{PunchState, Puncher};

/// What happened while punching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchEvent {
    /// The peer's punch (or its ack of ours) arrived: inbound packets from it pass our NAT.
    PathOpened,
}

/// A punch session toward one address.
pub struct PunchDriver {
    socket: Arc<KeynetSocket>,
    target: SocketAddr,
    session: PunchSession,
    puncher: Puncher,
}

impl PunchDriver {
    /// Starts punching `target` every `interval` (at most `max_sends` datagrams) for `budget`.
    pub fn start(
        socket: &Arc<KeynetSocket>,
        target: SocketAddr,
        interval: Duration,
        budget: Duration,
        max_sends: u32,
    ) -> PunchDriver {
        let session = socket.register(target);
        let local = socket.local_toward(target);
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .expect("system randomness");
        let puncher = Puncher::new(
            Instant::now(),
            local,
            target,
            interval,
            budget,
            max_sends,
            u64::from_be_bytes(nonce),
        );
        PunchDriver {
            socket: socket.clone(),
            target,
            session,
            puncher,
        }
    }

    /// Punches until the path opens. Pending forever once the machine has nothing left to do
    /// (the caller's own deadline ends the wait).
    pub async fn next_event(&mut self) -> PunchEvent {
        loop {
            if self.puncher.take_path_opened() {
                return PunchEvent::PathOpened;
            }
            let now = Instant::now();
            while let Some(d) = self.puncher.poll_transmit(now) {
                self.socket.send_to(self.target, &d).await;
            }
            let wake = match self.puncher.state(now) {
                PunchState::Punching => self.puncher.poll_timeout(),
                _ => None,
            };
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                d = self.session.rx.recv() => {
                    let Some(d) = d else { return std::future::pending().await };
                    if let Some(ack) = self.puncher.handle(Instant::now(), self.target, &d) {
                        self.socket.send_to(self.target, &ack).await;
                    }
                }
            }
        }
    }

    /// The connection is up: stop punching.
    pub fn connected(&mut self) {
        self.puncher.connected();
    }

    /// Whether the peer took part in punching (its punch, or its ack of ours, arrived).
    pub fn peer_took_part(&self) -> bool {
        self.puncher.peer_punching() || self.puncher.path_confirmed()
    }

    /// After the handshake: the peer's ack of our first punch travels about as long as the
    /// handshake did, so give it up to two round trips (bounded) to arrive before the path is
    /// judged. A peer that does not punch costs that short wait, nothing more.
    pub async fn settle(&mut self, rtt: Duration) {
        if self.peer_took_part() {
            return;
        }
        let wait = (rtt * 2).clamp(Duration::from_millis(2), Duration::from_millis(250));
        let _ = tokio::time::timeout(wait, self.next_event()).await;
    }

    /// `Punched` if the peer punched toward us and a NAT sits between us, else `Direct`.
    pub fn path(&self) -> Path {
        if self.peer_took_part() && self.puncher.nat_between() {
            Path::Punched
        } else {
            Path::Direct
        }
    }
}
