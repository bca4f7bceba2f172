//! Drives a [`Puncher`] on a proxy's socket: sends its punches, feeds it the peer's datagrams,
//! and reports when the path opens. Owned by the operation that punches (a dial or a
//! `openConnection` on the reverse proxy); dropping it stops punching.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Path;
use crate::proto::hello::{self, Hello};
use crate::proto::punch::{AckKey, PunchState, Puncher};
use crate::socket::{KeynetSocket, PunchSession};

/// What happened while punching: the one way a driver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PunchEvent {
    /// A valid punch from the peer arrived. Its ack goes out when [`PunchDriver::next_event`]
    /// is called again, so the caller can first get ready for the peer's packets from that
    /// address (which the peer sends once the ack reaches it).
    PeerPunched,
    /// The peer's punch, or its ack of ours, arrived: inbound packets from it pass our NAT.
    PathOpened,
    /// An ack of our punch arrived: the path works both ways
    /// ([`PunchDriver::nat_between`] is known now).
    Confirmed,
}

/// A punch session toward one address.
pub(crate) struct PunchDriver {
    socket: Arc<KeynetSocket>,
    target: SocketAddr,
    session: PunchSession,
    puncher: Puncher,
    receiving: bool,
    /// The ack of the peer's last punch, sent at the next call.
    pending_ack: Option<[u8; crate::proto::punch::LEN]>,
    confirmed_reported: bool,
    /// Stop punching once confirmed (a rendezvous: the path is proven, only acks remain).
    quiet_when_confirmed: bool,
}

impl PunchDriver {
    /// Starts punching `target` every `interval` (at most `max_sends` datagrams) for `budget`.
    pub(crate) fn start(
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
            pending_ack: None,
            confirmed_reported: false,
            quiet_when_confirmed: false,
        }
    }

    /// For a rendezvous on a relayed connection: acks are keyed with `key` (the address came
    /// from the relay, which must not be able to confirm a path of its choosing), and punching
    /// stops once our punch was acknowledged (it keeps acknowledging the peer's).
    pub(crate) fn for_rendezvous(mut self, key: AckKey) -> Self {
        self.puncher.set_ack_key(key);
        self.quiet_when_confirmed = true;
        self
    }

    /// Punches, acknowledges the peer's punches, and returns what happened next. Pending
    /// forever once the machine has nothing left to do (the caller's deadline ends the wait).
    pub(crate) async fn next_event(&mut self) -> PunchEvent {
        loop {
            if let Some(ack) = self.pending_ack.take() {
                self.socket.send_to(self.target, &ack).await;
            }
            if self.puncher.path_confirmed() && !self.confirmed_reported {
                self.confirmed_reported = true;
                return PunchEvent::Confirmed;
            }
            if self.puncher.take_path_opened() {
                return PunchEvent::PathOpened;
            }
            if self.turn().await {
                return PunchEvent::PeerPunched;
            }
        }
    }

    /// Sends the ack of the peer's last punch, if one is pending (the caller stops asking for
    /// events).
    pub(crate) async fn flush(&mut self) {
        if let Some(ack) = self.pending_ack.take() {
            self.socket.send_to(self.target, &ack).await;
        }
    }

    /// One turn of the machine: sends the punches due, then waits for the next one or for a
    /// datagram. Returns whether a valid punch from the peer arrived (its ack is pending).
    async fn turn(&mut self) -> bool {
        let now = Instant::now();
        let sending = !(self.quiet_when_confirmed && self.puncher.path_confirmed());
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
                        self.pending_ack = Some(ack);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Whether an ack of our punch arrived (the path works both ways).
    pub(crate) fn confirmed(&self) -> bool {
        self.puncher.path_confirmed()
    }

    /// Whether a NAT sits between us (known once punches were exchanged).
    pub(crate) fn nat_between(&self) -> bool {
        self.puncher.nat_between()
    }

    /// The connection is up: stop punching.
    pub(crate) fn connected(&mut self) {
        self.puncher.connected();
    }

    /// Ends punching and hands over the session: the peer's punch-format datagrams (probes,
    /// acks) keep arriving there.
    pub(crate) fn into_session(self) -> PunchSession {
        self.session
    }

    /// Whether the peer took part in punching (its punch, or its ack of ours, arrived).
    pub(crate) fn peer_took_part(&self) -> bool {
        self.puncher.peer_punching() || self.puncher.path_confirmed()
    }
}

/// Sends our hello on a unidirectional stream and reads the peer's, before `deadline`.
pub(crate) async fn exchange_hello(
    conn: &quinn::Connection,
    ours: Hello,
    deadline: Instant,
) -> Result<Hello, String> {
    let both = async { tokio::try_join!(send_hello(conn, ours), receive_hello(conn)) };
    match tokio::time::timeout_at(deadline.into(), both).await {
        Ok(Ok(((), theirs))) => Ok(theirs),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no hello from the peer in time".into()),
    }
}

/// Sends our hello on a unidirectional stream.
pub(crate) async fn send_hello(conn: &quinn::Connection, ours: Hello) -> Result<(), String> {
    let mut uni = conn.open_uni().await.map_err(|e| e.to_string())?;
    uni.write_all(&ours.encode())
        .await
        .map_err(|e| e.to_string())?;
    uni.finish().map_err(|e| e.to_string())
}

/// Reads the peer's hello from its unidirectional stream.
pub(crate) async fn receive_hello(conn: &quinn::Connection) -> Result<Hello, String> {
    let mut uni = conn.accept_uni().await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; hello::LEN];
    uni.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Hello::decode(&buf).map_err(|e| e.to_string())
}

/// The path of a connection: `Punched` if the reverse proxy was punching toward the forward
/// proxy and a NAT sits between them (it had to punch), else `Direct`.
pub(crate) fn judge_path(rp_was_punching: bool, nat_between: bool) -> Path {
    if rp_was_punching && nat_between {
        Path::Punched
    } else {
        Path::Direct
    }
}
