//! Drives a [`Puncher`] on a proxy's socket: sends its punches, feeds it the peer's datagrams,
//! and reports when the path opens. Owned by the operation that punches (a dial or a
//! `openConnection` on the reverse proxy); dropping it stops punching.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Path;
use crate::proto::hello::{self, Hello};
use crate::proto::punch::{PunchState, Puncher};
use crate::socket::{KeynetSocket, PunchSession};

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
    receiving: bool,
}

impl PunchDriver {
    /// Starts punching `target` every `interval` (at most `max_sends` datagrams) for `budget`.
    pub fn start(
        socket: &Arc<KeynetSocket>,
        target: SocketAddr,
        interval: Duration,
        budget: Duration,
        max_sends: u32,
    ) -> Self {
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
        Self {
            socket: socket.clone(),
            target,
            session,
            puncher,
            receiving: true,
        }
    }

    /// Punches until the path opens. Pending forever once the machine has nothing left to do
    /// (the caller's own deadline ends the wait).
    pub async fn next_event(&mut self) -> PunchEvent {
        loop {
            if self.puncher.take_path_opened() {
                return PunchEvent::PathOpened;
            }
            self.turn(true, || {}).await;
        }
    }

    /// Punches for a rendezvous on an existing relayed connection until the path works both ways
    /// and the peer's punch was acknowledged. `on_peer` runs when the peer's first valid punch
    /// arrives, before it is acknowledged (the caller starts accepting the peer's packets from
    /// that address, which the peer sends once our ack reaches it); `on_confirmed(nat_between)`
    /// runs once an ack of our punch arrived (the caller starts sending there). Keeps acking the
    /// peer's punches after that, until one was acknowledged. Pending forever once the machine
    /// gave up (the caller's deadline ends the wait).
    pub async fn rendezvous(
        &mut self,
        mut on_peer: impl FnMut(),
        mut on_confirmed: impl FnMut(bool),
    ) {
        let (mut seen, mut confirmed) = (false, false);
        loop {
            if self.puncher.path_confirmed() && !confirmed {
                confirmed = true;
                if !seen {
                    on_peer();
                }
                on_confirmed(self.puncher.nat_between());
            }
            if confirmed && seen {
                return;
            }
            let first = !seen && !confirmed;
            seen |= self
                .turn(!confirmed, || {
                    if first {
                        on_peer()
                    }
                })
                .await;
        }
    }

    /// One turn of the machine: sends the punches due (when `sending`), then waits for the next
    /// one or for a datagram. Returns whether a valid punch from the peer arrived; its ack is sent
    /// after `before_ack` ran.
    async fn turn(&mut self, sending: bool, before_ack: impl FnOnce()) -> bool {
        let now = Instant::now();
        if sending {
            while let Some(d) = self.puncher.poll_transmit(now) {
                self.socket.send_to(self.target, &d).await;
            }
        }
        let wake = match self.puncher.state(now) {
            PunchState::Punching if sending => self.puncher.poll_timeout(),
            _ => None,
        };
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => false,
            d = self.session.rx.recv(), if self.receiving => {
                // A newer session for the same address took the datagrams: keep punching.
                let Some(d) = d else {
                    self.receiving = false;
                    return false;
                };
                match self.puncher.handle(Instant::now(), self.target, &d) {
                    Some(ack) => {
                        before_ack();
                        self.socket.send_to(self.target, &ack).await;
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Whether an ack of our punch arrived (the path works both ways).
    pub fn confirmed(&self) -> bool {
        self.puncher.path_confirmed()
    }

    /// Whether a NAT sits between us (known once punches were exchanged).
    pub fn nat_between(&self) -> bool {
        self.puncher.nat_between()
    }

    /// The connection is up: stop punching.
    pub fn connected(&mut self) {
        self.puncher.connected();
    }

    /// Ends punching and hands over the session: the peer's punch-format datagrams (probes,
    /// acks) keep arriving there.
    pub fn into_session(self) -> PunchSession {
        self.session
    }

    /// Whether the peer took part in punching (its punch, or its ack of ours, arrived).
    pub fn peer_took_part(&self) -> bool {
        self.puncher.peer_punching() || self.puncher.path_confirmed()
    }
}

/// Sends our hello on a unidirectional stream and reads the peer's, before `deadline`.
pub async fn exchange_hello(
    conn: &quinn::Connection,
    ours: Hello,
    deadline: Instant,
) -> Result<Hello, String> {
    let send = async {
        let mut uni = conn.open_uni().await.map_err(|e| e.to_string())?;
        uni.write_all(&ours.encode())
            .await
            .map_err(|e| e.to_string())?;
        uni.finish().map_err(|e| e.to_string())
    };
    let receive = async {
        let mut uni = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; hello::LEN];
        uni.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Hello::decode(&buf).map_err(|e| e.to_string())
    };
    match tokio::time::timeout_at(deadline.into(), async { tokio::try_join!(send, receive) }).await
    {
        Ok(Ok(((), theirs))) => Ok(theirs),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no hello from the peer in time".into()),
    }
}

/// The path of a connection: `Punched` if the reverse proxy was punching toward the forward
/// proxy and a NAT sits between them (it had to punch), else `Direct`.
pub fn judge_path(rp_was_punching: bool, nat_between: bool) -> Path {
    if rp_was_punching && nat_between {
        Path::Punched
    } else {
        Path::Direct
    }
}
