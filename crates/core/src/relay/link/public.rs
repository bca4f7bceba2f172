//! The node's side of its public port on a relay: each `TcpOpen` from the relay becomes a TCP
//! connection to the node's local server, carried both ways as flow-controlled frames
//! ([`crate::relay::carried`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::proto::relay::Frame;
use crate::relay::carried::{self, Broken, Table};
use crate::task::Tasks;

/// Public-port connections one node carries at once; beyond, a new one is refused with a reset
/// (the relay has its own, lower, per-node limit: this bounds what a hostile relay can open).
pub(crate) const MAX_CONNS: usize = 4096;
/// Frames queued toward the relay (the node's public-port side of the link). They wait for
/// room, never dropped; each connection's window bounds what it can queue.
pub(crate) const QUEUE: usize = 256;
/// How long connecting to the local server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's public-port connections on one relay link.
pub(crate) struct PublicPort {
    server: SocketAddr,
    state: Mutex<Session>,
    tasks: Tasks,
}

/// The connections of the current relay session, and where their frames go. Each session has
/// its own queue: frames of a session that ended can never reach the next one (where the
/// relay may reuse their connection ids).
struct Session {
    to_relay: mpsc::Sender<Frame>,
    conns: Table,
}

impl PublicPort {
    /// Serves clients of the public port by connecting them to `server`.
    pub(crate) fn new(server: SocketAddr, tasks: Tasks) -> Arc<Self> {
        Arc::new(Self {
            server,
            state: Mutex::new(Session {
                to_relay: mpsc::channel(1).0,
                conns: Table::default(),
            }),
            tasks,
        })
    }

    /// A relay session starts: the link writes what arrives on the returned queue. The
    /// previous session's connections are reset.
    pub(crate) fn session(&self) -> mpsc::Receiver<Frame> {
        let (to_relay, rx) = mpsc::channel(QUEUE);
        *self.state.lock().expect("public port lock") = Session {
            to_relay,
            conns: Table::default(),
        };
        rx
    }

    /// A public-port frame from the relay. Never waits; an error means the relay broke the flow
    /// control (the link ends that session).
    pub(crate) fn handle(self: &Arc<Self>, frame: Frame) -> Result<(), Broken> {
        let mut state = self.state.lock().expect("public port lock");
        let Frame::TcpOpen { conn, client } = frame else {
            return state.conns.route(frame);
        };
        let to_relay = state.to_relay.clone();
        if state.conns.len() >= MAX_CONNS || state.conns.contains(conn) {
            drop(state);
            tracing::warn!(%client, conn, "public-port client refused: too many, or a duplicate id");
            // Never waits (a relay flooding opens must not pile up tasks); a full queue drops
            // the reset, and the relay's stall timer ends that client.
            let _ = to_relay.try_send(Frame::TcpClose { conn, reset: true });
            return Ok(());
        }
        let ends = state.conns.open(conn);
        drop(state);
        let me = Arc::downgrade(self);
        let server = self.server;
        self.tasks.spawn(async move {
            let serial = ends.serial();
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server)).await {
                Ok(Ok(tcp)) => {
                    tracing::debug!(%client, %server, conn, "public-port client connected");
                    let ended = carried::carry(tcp, ends, to_relay, carried::DEFAULT_STALL).await;
                    if ended == carried::Ended::Stalled {
                        tracing::info!(%client, %server, "local server read nothing for {} s: public-port client reset", carried::DEFAULT_STALL.as_secs());
                    }
                }
                other => {
                    tracing::info!(%client, %server, ?other, "public-port client: server unreachable");
                    let _ = to_relay.send(Frame::TcpClose { conn, reset: true }).await;
                }
            }
            if let Some(me) = me.upgrade() {
                me.state.lock().expect("public port lock").conns.forget(conn, serial);
            }
        });
        Ok(())
    }

    /// Whether no public-port client is carried now.
    pub(crate) fn is_idle(&self) -> bool {
        self.state
            .lock()
            .expect("public port lock")
            .conns
            .is_empty()
    }

    /// The relay session ended: every connection is reset.
    pub(crate) fn reset_all(&self) {
        self.state.lock().expect("public port lock").conns.clear();
    }
}
