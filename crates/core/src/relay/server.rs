//! The relay server: accepts QUIC connections from keynodes (mutual TLS; optionally only
//! `allowed_node_ids`), and on each connection's first bidirectional stream reads relay frames.
//! It forwards `SendPacket` only from a registered node to a registered node (it is not an
//! open proxy), answers `Ping`, and closes a connection that sends a malformed frame, logging
//! why. One registration per node id: a newer connection replaces (and closes) the older one.
//!
//! Not yet here (the relay issue): public port allocation, rendezvous, the TCP/WebSocket
//! transport, per-node limits beyond the bounded queues.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::endpoint::{self, KeynetSocket};
use crate::error::{Error, Result};
use crate::identity::TlsConfig;
use crate::lifecycle::{self, Identities};
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::relay::{Frame, GoneReason};
use crate::relay::framed::{write_frame, FrameReader, ReadError};
use crate::task::Tasks;
use crate::tls::config::server_config;
use crate::tls::verify::{verify_chain, Acceptable};

/// Frames queued toward one node before packets for it are dropped (they are unreliable).
const NODE_QUEUE: usize = 256;
/// QUIC application close code for a protocol violation.
const PROTOCOL_ERROR: u32 = 2;

/// Where the relay listens and whom it serves.
#[derive(Clone, Debug)]
pub struct RelayStart {
    /// UDP address of the relay's QUIC endpoint.
    pub addr: SocketAddr,
    /// Identity; a fresh one is generated when absent.
    pub tls: Option<TlsConfig>,
    /// When given, only these node ids may connect and register.
    pub allowed_node_ids: Option<Vec<NodeId>>,
}

/// The relay server. Cheap to clone.
#[derive(Clone)]
pub struct RelayServer {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ConnOptions,
    identities: Identities,
    lifecycle: tokio::sync::Mutex<()>,
    running: RwLock<Option<Arc<Running>>>,
}

struct Registration {
    conn: quinn::Connection,
    tx: mpsc::Sender<Frame>,
}

struct Running {
    endpoint: quinn::Endpoint,
    socket: Arc<KeynetSocket>,
    tasks: Tasks,
    addr: SocketAddr,
    node_id: NodeId,
    accept: Acceptable,
    nodes: Mutex<HashMap<NodeId, Registration>>,
}

impl RelayServer {
    /// A stopped relay.
    pub fn new(opts: ConnOptions) -> Result<RelayServer> {
        opts.validate()?;
        Ok(RelayServer {
            inner: Arc::new(Inner {
                opts,
                identities: Identities::default(),
                lifecycle: tokio::sync::Mutex::new(()),
                running: RwLock::new(None),
            }),
        })
    }

    /// Starts listening; does nothing if already running.
    pub async fn start(&self, start: RelayStart) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        if self.running().is_ok() {
            return Ok(());
        }
        let identity = self.inner.identities.for_start(start.tls.as_ref())?;
        let accept = start
            .allowed_node_ids
            .map_or(Acceptable::Any, Acceptable::OneOf);
        let config = server_config(&identity, accept.clone(), self.inner.opts.transport())?;
        let secret = identity.derived_secret("quic stateless reset");
        let (endpoint, socket) = endpoint::bind(start.addr, Some(config), &secret)?;
        let running = Arc::new(Running {
            addr: endpoint.local_addr()?,
            endpoint,
            socket,
            tasks: Tasks::new(),
            node_id: identity.node_id,
            accept,
            nodes: Mutex::new(HashMap::new()),
        });
        *self.inner.running.write().expect("running lock") = Some(running.clone());
        running
            .tasks
            .spawn(self.clone().accept_loop(running.clone()));
        tracing::info!(addr = %running.addr, node_id = %running.node_id, "relay started");
        Ok(())
    }

    /// Stops: closes every connection, awaits every task, releases the port.
    pub async fn stop(&self) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        let Some(running) = self.inner.running.write().expect("running lock").take() else {
            return Ok(());
        };
        running.nodes.lock().expect("nodes lock").clear();
        running.endpoint.close(0u32.into(), b"relay stopped");
        let grace = self.inner.opts.end_time;
        let _ = tokio::time::timeout(
            grace.max(Duration::from_secs(3)),
            running.endpoint.wait_idle(),
        )
        .await;
        running.tasks.shutdown(grace + Duration::from_secs(1)).await;
        let socket = Arc::downgrade(&running.socket);
        drop(running);
        lifecycle::wait_released(socket).await;
        tracing::info!("relay stopped");
        Ok(())
    }

    fn running(&self) -> Result<Arc<Running>> {
        self.inner
            .running
            .read()
            .expect("running lock")
            .clone()
            .ok_or(Error::RelayNotRunning)
    }

    /// The relay's UDP address.
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.addr)
    }

    /// The relay's node id (clients pin it).
    pub fn node_id(&self) -> Result<NodeId> {
        Ok(self.running()?.node_id)
    }

    /// Node ids registered now.
    pub fn registered(&self) -> Result<Vec<NodeId>> {
        Ok(self
            .running()?
            .nodes
            .lock()
            .expect("nodes lock")
            .keys()
            .copied()
            .collect())
    }

    async fn accept_loop(self, running: Arc<Running>) {
        while let Some(incoming) = running.endpoint.accept().await {
            let me = self.clone();
            let r = running.clone();
            running.tasks.spawn(async move {
                let remote = incoming.remote_address();
                if let Err(e) = me.serve(&r, incoming).await {
                    tracing::info!(%remote, error = %e, "relay connection ended");
                }
            });
        }
    }

    async fn serve(&self, running: &Arc<Running>, incoming: quinn::Incoming) -> Result<()> {
        let budget = self.inner.opts.connect_time;
        let connecting = incoming
            .accept()
            .map_err(|e| Error::ConnectionStart(e.to_string()))?;
        let conn = tokio::time::timeout(budget, connecting)
            .await
            .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))?
            .map_err(|e| Error::ConnectionStart(e.to_string()))?;
        let certs = crate::tls::verify::peer_chain(&conn);
        let node = verify_chain(
            &certs,
            &running.accept,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )?;
        let (mut send, recv) = tokio::time::timeout(budget, conn.accept_bi())
            .await
            .map_err(|_| Error::ConnectionStartTimeout(budget.as_millis() as u64))?
            .map_err(|e| Error::ConnectionStart(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<Frame>(NODE_QUEUE);
        running.tasks.spawn(async move {
            while let Some(frame) = rx.recv().await {
                if write_frame(&mut send, &frame).await.is_err() {
                    return;
                }
            }
        });
        let result = self
            .read_frames(running, &conn, node, &tx, FrameReader::new(recv))
            .await;
        let mut nodes = running.nodes.lock().expect("nodes lock");
        if nodes
            .get(&node)
            .is_some_and(|r| r.conn.stable_id() == conn.stable_id())
        {
            nodes.remove(&node);
        }
        drop(nodes);
        result
    }

    async fn read_frames(
        &self,
        running: &Arc<Running>,
        conn: &quinn::Connection,
        node: NodeId,
        tx: &mpsc::Sender<Frame>,
        mut frames: FrameReader,
    ) -> Result<()> {
        let mut registered = false;
        loop {
            let frame = match frames.next().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(ReadError::Malformed(e)) => {
                    tracing::warn!(%node, error = %e, "malformed relay frame: closing the connection");
                    conn.close(PROTOCOL_ERROR.into(), e.to_string().as_bytes());
                    return Err(Error::ConnectionStart(format!(
                        "malformed frame from {node}: {e}"
                    )));
                }
                Err(ReadError::Closed(why)) => return Err(Error::ConnectionStart(why)),
            };
            let reply = match frame {
                Frame::Register { .. } => {
                    let old = running.nodes.lock().expect("nodes lock").insert(
                        node,
                        Registration {
                            conn: conn.clone(),
                            tx: tx.clone(),
                        },
                    );
                    if let Some(old) = old.filter(|o| o.conn.stable_id() != conn.stable_id()) {
                        old.conn.close(0u32.into(), b"registered again elsewhere");
                    }
                    registered = true;
                    Some(Frame::Registered {
                        observed: endpoint::canonical(conn.remote_address()),
                        public_port: None,
                    })
                }
                Frame::SendPacket { dst, datagram } if registered => {
                    let target = running
                        .nodes
                        .lock()
                        .expect("nodes lock")
                        .get(&dst)
                        .map(|r| r.tx.clone());
                    match target {
                        // Packets are unreliable: a full queue drops, never blocks the sender.
                        Some(t) => t
                            .try_send(Frame::RecvPacket {
                                src: node,
                                datagram,
                            })
                            .err()
                            .and(None),
                        None => Some(Frame::PeerGone {
                            node: dst,
                            reason: GoneReason::Unknown,
                        }),
                    }
                }
                Frame::SendPacket { .. } => Some(Frame::Error {
                    code: 401,
                    message: "register first".into(),
                }),
                Frame::Ping { nonce } => Some(Frame::Pong { nonce }),
                other => Some(Frame::Error {
                    code: 400,
                    message: format!("unexpected frame {other:?}")
                        .chars()
                        .take(200)
                        .collect(),
                }),
            };
            if let Some(reply) = reply {
                if tx.send(reply).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
