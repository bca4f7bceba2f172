//! Public TCP ports on the relay: a registered node may ask for one; plain TCP
//! clients that connect there are carried, as `TcpOpen`/`TcpData`/`TcpClose` frames on the
//! node's relay connection, to the node, which connects them to its local server. A node gets
//! its port back when it reconnects within the retention time; meanwhile the port stays bound
//! (clients are closed at once) so nothing else takes it, and it is released after. With a
//! state file, allocations also survive a relay restart.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::nodeid::NodeId;
use crate::proto::relay::Frame;
use crate::relay::carried::{self, Broken, Table};
use crate::task::Tasks;

/// Default retention of a disconnected node's port (180 minutes).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(180 * 60);

/// How the relay allocates public ports.
#[derive(Clone, Debug)]
pub struct AllocOptions {
    /// IP to bind public ports on; default the relay's UDP IP.
    pub host: Option<IpAddr>,
    /// Inclusive port range; default any free port the OS picks.
    pub range: Option<(u16, u16)>,
    /// How long a disconnected node's port is kept for it.
    pub retention: Duration,
    /// Where allocations are saved (and loaded from at start).
    pub state_file: Option<PathBuf>,
    /// Most concurrent public-port clients per node.
    pub max_clients: usize,
    /// A public client that accepts no byte this long while data waits for it is reset.
    pub stall: Duration,
    /// Whether nodes may ask for ports at all.
    pub enabled: bool,
}

impl Default for AllocOptions {
    fn default() -> Self {
        Self {
            host: None,
            range: None,
            retention: DEFAULT_RETENTION,
            state_file: None,
            max_clients: 256,
            stall: carried::DEFAULT_STALL,
            enabled: true,
        }
    }
}

impl AllocOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if let Some((lo, hi)) = self.range {
            if lo == 0 || lo > hi {
                return Err(Error::InvalidArgument(format!(
                    "port range {lo}-{hi} is empty or starts at 0"
                )));
            }
        }
        if self.retention.is_zero() || self.max_clients == 0 || self.stall.is_zero() {
            return Err(Error::InvalidArgument(
                "retention, maxClients and stallTimeout must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

struct Owner {
    /// The node's public-port queue (frames wait there: they are never dropped).
    tx: mpsc::Sender<Frame>,
    clients: Table,
    next_conn: u32,
}

impl Owner {
    fn new(tx: mpsc::Sender<Frame>) -> Self {
        Self {
            tx,
            clients: Table::default(),
            next_conn: 1,
        }
    }
}

struct Alloc {
    port: u16,
    /// Unix ms when the port is released; `None` while the node is connected.
    expires: Option<u64>,
    owner: Option<Owner>,
    generation: u64,
    listener: CancellationToken,
}

/// The relay's allocations.
pub struct Allocations {
    opts: AllocOptions,
    host: IpAddr,
    tasks: Tasks,
    by_node: Mutex<HashMap<NodeId, Alloc>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Allocations {
    /// Loads the state file (if any) and rebinds the ports it retains.
    pub async fn start(opts: AllocOptions, host: IpAddr, tasks: Tasks) -> Result<Arc<Self>> {
        let me = Arc::new(Self {
            opts,
            host,
            tasks,
            by_node: Mutex::new(HashMap::new()),
        });
        if let Some(path) = me.opts.state_file.clone() {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "state file {}: {e}",
                        path.display()
                    )))
                }
            };
            for (node, port, expires) in parse_state(&text) {
                let expires = if expires == 0 {
                    now_ms() + me.opts.retention.as_millis() as u64
                } else {
                    expires
                };
                if expires <= now_ms() {
                    continue;
                }
                match me.bind(port).await {
                    Ok(listener) => {
                        let token = CancellationToken::new();
                        me.by_node.lock().expect("alloc lock").insert(
                            node,
                            Alloc {
                                port,
                                expires: Some(expires),
                                owner: None,
                                generation: 0,
                                listener: token.clone(),
                            },
                        );
                        me.spawn_listener(node, listener, token);
                        me.expire_later(node, 0, expires);
                    }
                    Err(e) => tracing::warn!(%node, port, error = %e, "retained port not rebound"),
                }
            }
            tracing::info!(count = me.list().len(), file = %path.display(), "allocations loaded");
        }
        Ok(me)
    }

    /// The allocated ports.
    pub fn list(&self) -> Vec<(NodeId, u16)> {
        let map = self.by_node.lock().expect("alloc lock");
        map.iter().map(|(n, a)| (*n, a.port)).collect()
    }

    async fn bind(&self, port: u16) -> std::io::Result<TcpListener> {
        TcpListener::bind(SocketAddr::new(self.host, port)).await
    }

    /// Gives `node` (now connected, frames to it on `tx`) its port: the one it had, else a new
    /// one.
    pub async fn claim(self: &Arc<Self>, node: NodeId, tx: mpsc::Sender<Frame>) -> Result<u16> {
        if !self.opts.enabled {
            return Err(Error::InvalidArgument(
                "this relay does not allocate public ports".into(),
            ));
        }
        {
            let mut map = self.by_node.lock().expect("alloc lock");
            if let Some(a) = map.get_mut(&node) {
                a.generation += 1;
                a.expires = None;
                a.owner = Some(Owner::new(tx));
                let port = a.port;
                drop(map);
                self.save();
                return Ok(port);
            }
        }
        let listener = self.bind_new().await?;
        let port = listener.local_addr()?.port();
        let token = CancellationToken::new();
        self.by_node.lock().expect("alloc lock").insert(
            node,
            Alloc {
                port,
                expires: None,
                owner: Some(Owner::new(tx)),
                generation: 0,
                listener: token.clone(),
            },
        );
        self.spawn_listener(node, listener, token);
        self.save();
        tracing::info!(%node, port, "public port allocated");
        Ok(port)
    }

    async fn bind_new(&self) -> Result<TcpListener> {
        let Some((lo, hi)) = self.opts.range else {
            return Ok(self.bind(0).await?);
        };
        let taken: Vec<u16> = self.list().into_iter().map(|(_, p)| p).collect();
        for port in lo..=hi {
            if taken.contains(&port) {
                continue;
            }
            if let Ok(l) = self.bind(port).await {
                return Ok(l);
            }
        }
        Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("every port in {lo}-{hi} is taken"),
        )))
    }

    /// `node` disconnected: close its clients, keep its port for the retention time.
    pub fn node_left(self: &Arc<Self>, node: NodeId) {
        let (generation, expires) = {
            let mut map = self.by_node.lock().expect("alloc lock");
            let Some(a) = map.get_mut(&node) else { return };
            a.owner = None; // dropping the client senders closes those clients
            a.generation += 1;
            let expires = now_ms() + self.opts.retention.as_millis() as u64;
            a.expires = Some(expires);
            (a.generation, expires)
        };
        self.save();
        self.expire_later(node, generation, expires);
    }

    fn expire_later(self: &Arc<Self>, node: NodeId, generation: u64, at_ms: u64) {
        let me = Arc::downgrade(self);
        self.tasks.spawn(async move {
            let wait = at_ms.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let Some(me) = me.upgrade() else { return };
            let released = {
                let mut map = me.by_node.lock().expect("alloc lock");
                match map.get(&node) {
                    Some(a) if a.generation == generation && a.owner.is_none() => {
                        let a = map.remove(&node).expect("allocation");
                        a.listener.cancel();
                        Some(a.port)
                    }
                    _ => None,
                }
            };
            if let Some(port) = released {
                tracing::info!(%node, port, "public port released after retention");
                me.save();
            }
        });
    }

    fn spawn_listener(
        self: &Arc<Self>,
        node: NodeId,
        listener: TcpListener,
        stop: CancellationToken,
    ) {
        let me = Arc::downgrade(self);
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((tcp, client)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(me) = me.upgrade() else { return };
                let opened = me.open_client(node, client);
                let Some((ends, tx)) = opened else {
                    // The node is away or at its limit: close at once.
                    drop(tcp);
                    continue;
                };
                let stall = me.opts.stall;
                let weak = Arc::downgrade(&me);
                tasks.spawn(async move {
                    let (conn, serial) = (ends.conn(), ends.serial());
                    let open = Frame::TcpOpen {
                        conn,
                        client: crate::addr::canonical(client),
                    };
                    if tx.send(open).await.is_err() {
                        return;
                    }
                    let ended = carried::carry(tcp, ends, tx, stall).await;
                    if ended == carried::Ended::Stalled {
                        tracing::info!(%node, %client, "public-port client read nothing for {} s: reset", stall.as_secs_f32());
                    }
                    if let Some(me) = weak.upgrade() {
                        me.forget_client(node, conn, serial);
                    }
                });
            }
        });
    }

    fn open_client(
        &self,
        node: NodeId,
        client: SocketAddr,
    ) -> Option<(carried::Ends, mpsc::Sender<Frame>)> {
        let mut map = self.by_node.lock().expect("alloc lock");
        let owner = map.get_mut(&node)?.owner.as_mut()?;
        if owner.clients.len() >= self.opts.max_clients {
            tracing::warn!(%node, %client, "public-port client limit reached: refused");
            return None;
        }
        // Skip ids still in use (after a wrap).
        while owner.clients.contains(owner.next_conn) {
            owner.next_conn = owner.next_conn.wrapping_add(1).max(1);
        }
        let conn = owner.next_conn;
        owner.next_conn = owner.next_conn.wrapping_add(1).max(1);
        Some((owner.clients.open(conn), owner.tx.clone()))
    }

    fn forget_client(&self, node: NodeId, conn: u32, serial: u64) {
        let mut map = self.by_node.lock().expect("alloc lock");
        if let Some(owner) = map.get_mut(&node).and_then(|a| a.owner.as_mut()) {
            owner.clients.forget(conn, serial);
        }
    }

    /// A `TcpData`, `TcpClose` or `TcpCredit` from `node` for one of its clients. Never waits;
    /// an error means the node broke the flow control (its session should end).
    pub fn from_node(&self, node: NodeId, frame: Frame) -> Result<(), Broken> {
        let mut map = self.by_node.lock().expect("alloc lock");
        match map.get_mut(&node).and_then(|a| a.owner.as_mut()) {
            Some(owner) => owner.clients.route(frame),
            None => Ok(()),
        }
    }

    /// Writes the state file (best effort; a failure is logged).
    pub fn save(&self) {
        let Some(path) = &self.opts.state_file else {
            return;
        };
        let text = {
            let map = self.by_node.lock().expect("alloc lock");
            let mut lines: Vec<String> = map
                .iter()
                .map(|(n, a)| format!("{n} {} {}", a.port, a.expires.unwrap_or(0)))
                .collect();
            lines.sort();
            lines.join("\n")
        };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, text + "\n").and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "state file not written");
        }
    }
}

/// Parses state file lines `NODEID PORT EXPIRES_UNIX_MS` (0: held by a connected node);
/// malformed lines are skipped.
fn parse_state(text: &str) -> Vec<(NodeId, u16, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let node = w.next()?.parse().ok()?;
            let port = w.next()?.parse().ok().filter(|p| *p != 0)?;
            let expires = w.next()?.parse().ok()?;
            Some((node, port, expires))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_parse_and_bad_ones_are_skipped() {
        let n = NodeId::from_bytes([3; 32]);
        let text = format!("{n} 40001 0\n{n} 40002 1700000000000\nnot a line\n{n} 0 0\n");
        assert_eq!(
            parse_state(&text),
            vec![(n, 40001, 0), (n, 40002, 1_700_000_000_000)]
        );
    }
}
