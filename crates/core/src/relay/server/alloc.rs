//! Public TCP ports on the relay: a registered node may ask for one; plain TCP clients that
//! connect there are carried, as flow-controlled frames on the node's relay connection
//! ([`crate::relay::carried`]), to the node, which connects them to its local server.
//!
//! A node gets its port back when it reconnects within the retention time; meanwhile the port
//! stays bound (clients are closed at once) so nothing else takes it, and it is released after.
//! One task releases every retained port when its time comes (not a sleeping task per port).
//! Ports are bounded in total and per source address (fresh identities cost nothing, so a
//! bound per identity would not hold). With a state file, allocations survive a relay restart:
//! it is written in the background after each change, atomically (a temporary file renamed
//! over it), and a corrupt one stops the start with the line that is wrong.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::admission::source;
use super::limits::Limits;
use super::stats::{self, Counters};
use crate::error::{Error, Result};
use crate::nodeid::NodeId;
use crate::proto::relay::Frame;
use crate::relay::carried::{self, Broken, Table};
use crate::task::Tasks;

/// Default retention of a disconnected node's port (180 minutes).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(180 * 60);
/// The state file's first line.
const STATE_HEADER: &str = "# keynet-relay allocations v1";

/// How the relay allocates public ports (their limits are in [`Limits`]).
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
        if self.retention.is_zero() {
            return Err(Error::InvalidArgument(
                "retention must be greater than 0".into(),
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
    /// The source address the node registered from (ports are bounded per address).
    ip: Option<IpAddr>,
    listener: CancellationToken,
}

#[derive(Default)]
struct State {
    by_node: HashMap<NodeId, Alloc>,
    /// Retained ports by release time.
    expiries: BTreeSet<(u64, NodeId)>,
}

/// The relay's allocations.
pub struct Allocations {
    opts: AllocOptions,
    max_clients: usize,
    max_public_clients: usize,
    stall: Duration,
    max_ports: usize,
    max_ports_per_ip: usize,
    host: IpAddr,
    tasks: Tasks,
    counters: Arc<Counters>,
    state: Mutex<State>,
    /// The earliest release time changed.
    rewake: Notify,
    /// The state file is out of date.
    dirty: Notify,
    /// One state-file write at a time (the writer task, and the final one at stop).
    writing: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Allocations {
    /// Loads the state file (if any), rebinds the ports it retains, and starts the release and
    /// state-file tasks.
    pub(crate) async fn start(
        opts: AllocOptions,
        limits: &Limits,
        host: IpAddr,
        tasks: Tasks,
        counters: Arc<Counters>,
    ) -> Result<Arc<Self>> {
        let me = Arc::new(Self {
            max_clients: limits.max_clients,
            max_public_clients: limits.max_public_clients,
            stall: limits.stall_timeout,
            max_ports: limits.max_ports,
            max_ports_per_ip: limits.max_ports_per_ip,
            opts,
            host,
            tasks,
            counters,
            state: Mutex::new(State::default()),
            rewake: Notify::new(),
            dirty: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
        });
        if let Some(path) = me.opts.state_file.clone() {
            me.load(&path).await?;
            me.tasks.spawn(me.clone().write_state(path));
        }
        me.tasks.spawn(me.clone().release_due());
        Ok(me)
    }

    async fn load(self: &Arc<Self>, path: &Path) -> Result<()> {
        let text = match tokio::fs::read_to_string(path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "state file {}: {e}",
                    path.display()
                )))
            }
        };
        let entries = parse_state(&text).map_err(|e| {
            Error::InvalidArgument(format!(
                "state file {}: {e} (fix or remove it)",
                path.display()
            ))
        })?;
        for entry in entries {
            let expires = if entry.expires == 0 {
                now_ms() + self.opts.retention.as_millis() as u64
            } else {
                entry.expires
            };
            if expires <= now_ms() {
                continue;
            }
            match self.bind(entry.port).await {
                Ok(listener) => {
                    let token = CancellationToken::new();
                    let mut st = self.state.lock().expect("alloc lock");
                    st.by_node.insert(
                        entry.node,
                        Alloc {
                            port: entry.port,
                            expires: Some(expires),
                            owner: None,
                            ip: entry.ip,
                            listener: token.clone(),
                        },
                    );
                    st.expiries.insert((expires, entry.node));
                    drop(st);
                    self.spawn_listener(entry.node, listener, token);
                }
                Err(e) => {
                    tracing::warn!(node = %entry.node, port = entry.port, error = %e, "retained port not rebound")
                }
            }
        }
        tracing::info!(count = self.list().len(), file = %path.display(), "allocations loaded");
        Ok(())
    }

    /// The allocated ports.
    pub fn list(&self) -> Vec<(NodeId, u16)> {
        let st = self.state.lock().expect("alloc lock");
        st.by_node.iter().map(|(n, a)| (*n, a.port)).collect()
    }

    /// Ports held, and public clients connected.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.state.lock().expect("alloc lock");
        let clients = st
            .by_node
            .values()
            .filter_map(|a| a.owner.as_ref())
            .map(|o| o.clients.len() as u64)
            .sum();
        (st.by_node.len() as u64, clients)
    }

    async fn bind(&self, port: u16) -> std::io::Result<TcpListener> {
        TcpListener::bind(SocketAddr::new(self.host, port)).await
    }

    /// Gives `node` (now connected from `ip`, frames to it on `tx`) its port: the one it had,
    /// else a new one within the limits.
    pub async fn claim(
        self: &Arc<Self>,
        node: NodeId,
        ip: IpAddr,
        tx: mpsc::Sender<Frame>,
    ) -> Result<u16> {
        if !self.opts.enabled {
            return Err(Error::InvalidArgument(
                "this relay does not allocate public ports".into(),
            ));
        }
        let ip = source(ip);
        {
            let mut st = self.state.lock().expect("alloc lock");
            let st = &mut *st;
            if let Some(a) = st.by_node.get_mut(&node) {
                if let Some(at) = a.expires.take() {
                    st.expiries.remove(&(at, node));
                }
                a.owner = Some(Owner::new(tx));
                // A port counts against the address it was made from: reconnecting from
                // elsewhere must not free that address's quota.
                a.ip.get_or_insert(ip);
                let port = a.port;
                self.dirty.notify_one();
                return Ok(port);
            }
            if st.by_node.len() >= self.max_ports {
                return Err(Error::InvalidArgument(format!(
                    "all {} public ports are held",
                    self.max_ports
                )));
            }
            let from_ip = st.by_node.values().filter(|a| a.ip == Some(ip)).count();
            if from_ip >= self.max_ports_per_ip {
                return Err(Error::InvalidArgument(format!(
                    "nodes from {ip} hold {from_ip} public ports already (the limit)"
                )));
            }
        }
        let listener = self.bind_new().await?;
        let port = listener.local_addr()?.port();
        let token = CancellationToken::new();
        {
            // Checked again: another claim may have run while we bound.
            let mut st = self.state.lock().expect("alloc lock");
            let taken = st.by_node.len() >= self.max_ports
                || st.by_node.values().filter(|a| a.ip == Some(ip)).count()
                    >= self.max_ports_per_ip;
            if st.by_node.contains_key(&node) || taken {
                return Err(Error::InvalidArgument(
                    "public ports were claimed meanwhile: try again".into(),
                ));
            }
            st.by_node.insert(
                node,
                Alloc {
                    port,
                    expires: None,
                    owner: Some(Owner::new(tx)),
                    ip: Some(ip),
                    listener: token.clone(),
                },
            );
        }
        self.spawn_listener(node, listener, token);
        self.dirty.notify_one();
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
    pub fn node_left(&self, node: NodeId) {
        let mut st = self.state.lock().expect("alloc lock");
        let st = &mut *st;
        let Some(a) = st.by_node.get_mut(&node) else {
            return;
        };
        a.owner = None; // dropping the clients' table resets them
        if let Some(at) = a.expires.take() {
            st.expiries.remove(&(at, node));
        }
        let at = now_ms() + self.opts.retention.as_millis() as u64;
        a.expires = Some(at);
        st.expiries.insert((at, node));
        self.rewake.notify_one();
        self.dirty.notify_one();
    }

    /// Releases retained ports as their time comes: one task for all of them (it ends with the
    /// relay's tasks).
    async fn release_due(self: Arc<Self>) {
        loop {
            let rewake = self.rewake.notified();
            tokio::pin!(rewake);
            rewake.as_mut().enable();
            let next = self
                .state
                .lock()
                .expect("alloc lock")
                .expiries
                .first()
                .map(|(at, _)| *at);
            let Some(at) = next else {
                rewake.await;
                continue;
            };
            let wait = Duration::from_millis(at.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => self.release(now_ms()),
                _ = rewake => {}
            }
        }
    }

    /// Releases every retained port due by `now`.
    fn release(&self, now: u64) {
        let mut released = Vec::new();
        {
            let mut st = self.state.lock().expect("alloc lock");
            while let Some(&(at, node)) = st.expiries.first() {
                if at > now {
                    break;
                }
                st.expiries.pop_first();
                let due = st
                    .by_node
                    .get(&node)
                    .is_some_and(|a| a.owner.is_none() && a.expires == Some(at));
                if due {
                    let a = st.by_node.remove(&node).expect("allocation");
                    a.listener.cancel();
                    released.push((node, a.port));
                }
            }
        }
        for (node, port) in &released {
            tracing::info!(%node, port, "public port released after retention");
        }
        if !released.is_empty() {
            self.dirty.notify_one();
        }
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
                let stall = me.stall;
                let weak = Arc::downgrade(&me);
                tasks.spawn(async move {
                    let (conn, serial) = (ends.conn(), ends.serial());
                    let open = Frame::TcpOpen {
                        conn,
                        client: crate::addr::canonical(client),
                    };
                    if tx.send(open).await.is_err() {
                        // The node's session is gone.
                        if let Some(me) = weak.upgrade() {
                            me.forget_client(node, conn, serial);
                        }
                        return;
                    }
                    let ended = carried::carry(tcp, ends, tx, stall).await;
                    let Some(me) = weak.upgrade() else { return };
                    if ended == carried::Ended::Stalled {
                        me.counters.stalled_reset();
                        tracing::info!(%node, %client, "public-port client accepted no byte for {} s: reset", stall.as_secs_f32());
                    }
                    me.forget_client(node, conn, serial);
                });
            }
        });
    }

    fn open_client(
        &self,
        node: NodeId,
        client: SocketAddr,
    ) -> Option<(carried::Ends, mpsc::Sender<Frame>)> {
        let mut st = self.state.lock().expect("alloc lock");
        let everyone: usize = st
            .by_node
            .values()
            .filter_map(|a| a.owner.as_ref())
            .map(|o| o.clients.len())
            .sum();
        let owner = st.by_node.get_mut(&node)?.owner.as_mut()?;
        if owner.clients.len() >= self.max_clients || everyone >= self.max_public_clients {
            drop(st);
            let n = self.counters.refused(stats::Refusal::MaxClients);
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(%node, %client, count = n, "public-port client limit (maxClients or maxPublicClients) reached: refused");
            }
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
        let mut st = self.state.lock().expect("alloc lock");
        if let Some(owner) = st.by_node.get_mut(&node).and_then(|a| a.owner.as_mut()) {
            owner.clients.forget(conn, serial);
        }
    }

    /// A `TcpData`, `TcpClose` or `TcpCredit` from `node` for one of its clients. Never waits;
    /// an error means the node broke the flow control (its session should end).
    pub fn from_node(&self, node: NodeId, frame: Frame) -> Result<(), Broken> {
        let mut st = self.state.lock().expect("alloc lock");
        match st.by_node.get_mut(&node).and_then(|a| a.owner.as_mut()) {
            Some(owner) => owner.clients.route(frame),
            None => Ok(()),
        }
    }

    /// The state file's text now.
    fn state_text(&self) -> String {
        let st = self.state.lock().expect("alloc lock");
        let mut lines: Vec<String> = st
            .by_node
            .iter()
            .map(|(n, a)| {
                let ip = a.ip.map(|ip| format!(" {ip}")).unwrap_or_default();
                format!("{n} {} {}{ip}", a.port, a.expires.unwrap_or(0))
            })
            .collect();
        lines.sort();
        let mut text = format!("{STATE_HEADER}\n");
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        text
    }

    /// Writes the state file whenever it is out of date (changes in between coalesce; it ends
    /// with the relay's tasks).
    async fn write_state(self: Arc<Self>, path: PathBuf) {
        loop {
            self.dirty.notified().await;
            let _one = self.writing.lock().await;
            if let Err(e) = write_atomically(&path, &self.state_text()).await {
                tracing::warn!(file = %path.display(), error = %e, "state file not written");
            }
        }
    }

    /// Writes the state file now (the relay is stopping).
    pub async fn flush(&self) {
        if let Some(path) = &self.opts.state_file {
            let _one = self.writing.lock().await;
            if let Err(e) = write_atomically(path, &self.state_text()).await {
                tracing::warn!(file = %path.display(), error = %e, "state file not written");
            }
        }
    }
}

/// Writes `text` to a temporary file beside `path`, syncs it and renames it over `path`: a
/// crash leaves the old file or the new one, never half of one.
async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let tmp = path.with_extension("tmp");
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(text.as_bytes()).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, path).await
}

/// One line of the state file.
#[derive(Debug, PartialEq, Eq)]
struct StateEntry {
    node: NodeId,
    port: u16,
    /// Unix ms of the release; 0: held by a connected node.
    expires: u64,
    ip: Option<IpAddr>,
}

/// Parses the state file: an optional header, then lines `NODEID PORT EXPIRES_UNIX_MS [IP]`
/// (blank lines and `#` comments aside). Any other line is an error naming it: a damaged file
/// must not silently give ports away.
fn parse_state(text: &str) -> std::result::Result<Vec<StateEntry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        let w: Vec<&str> = line.split_whitespace().collect();
        if !(3..=4).contains(&w.len()) {
            return Err(bad("expected NODEID PORT EXPIRES [IP]"));
        }
        let node = w[0].parse().map_err(|_| bad("not a node id"))?;
        let port = w[1]
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("not a port"))?;
        let expires = w[2].parse().map_err(|_| bad("not a time"))?;
        let ip = match w.get(3) {
            Some(ip) => Some(ip.parse().map_err(|_| bad("not an IP"))?),
            None => None,
        };
        out.push(StateEntry {
            node,
            port,
            expires,
            ip,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_parse_and_a_bad_line_is_an_error_naming_it() {
        let n = NodeId::from_bytes([3; 32]);
        let text = format!("{STATE_HEADER}\n{n} 40001 0\n\n{n} 40002 1700000000000 192.0.2.1\n");
        assert_eq!(
            parse_state(&text).unwrap(),
            vec![
                StateEntry {
                    node: n,
                    port: 40001,
                    expires: 0,
                    ip: None
                },
                StateEntry {
                    node: n,
                    port: 40002,
                    expires: 1_700_000_000_000,
                    ip: Some("192.0.2.1".parse().unwrap())
                }
            ]
        );
        let e = parse_state(&format!("{n} 40001 0\nnot a line\n")).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_state(&format!("{n} 0 0\n")).is_err());
        assert!(parse_state(&format!("{n} 1 0 not-an-ip\n")).is_err());
    }

    async fn allocations(limits: Limits, state_file: Option<PathBuf>) -> Arc<Allocations> {
        let opts = AllocOptions {
            state_file,
            retention: Duration::from_millis(300),
            ..AllocOptions::default()
        };
        Allocations::start(
            opts,
            &limits,
            "127.0.0.1".parse().unwrap(),
            Tasks::new(),
            Arc::default(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn ports_are_bounded_in_total_and_per_address() {
        let limits = Limits {
            max_ports: 3,
            max_ports_per_ip: 2,
            ..Limits::default()
        };
        let a = allocations(limits, None).await;
        let tx = || mpsc::channel(1).0;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let n = |b| NodeId::from_bytes([b; 32]);
        a.claim(n(1), ip("10.0.0.1"), tx()).await.unwrap();
        a.claim(n(2), ip("10.0.0.1"), tx()).await.unwrap();
        let e = a.claim(n(3), ip("10.0.0.1"), tx()).await.unwrap_err();
        assert!(e.to_string().contains("10.0.0.1"), "{e}");
        // A node that has a port gets it back whatever the limits.
        a.claim(n(1), ip("10.0.0.1"), tx()).await.unwrap();
        a.claim(n(3), ip("10.0.0.2"), tx()).await.unwrap();
        let e = a.claim(n(4), ip("10.0.0.3"), tx()).await.unwrap_err();
        assert!(e.to_string().contains("all 3"), "{e}");
        // Retained ports count until released; then the room is back.
        a.node_left(n(3));
        assert!(a.claim(n(4), ip("10.0.0.3"), tx()).await.is_err());
        a.release(now_ms() + 1_000);
        a.claim(n(4), ip("10.0.0.3"), tx()).await.unwrap();
    }

    #[tokio::test]
    async fn retained_ports_are_released_by_one_task_and_saved_atomically() {
        let dir = std::env::temp_dir().join(format!("keynet-alloc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state");
        let a = allocations(Limits::default(), Some(file.clone())).await;
        let n = NodeId::from_bytes([9; 32]);
        let port = a
            .claim(n, "127.0.0.1".parse().unwrap(), mpsc::channel(1).0)
            .await
            .unwrap();
        a.node_left(n);
        // Released after the 300 ms retention, by the release task (polled: releasing
        // announces nothing but the state file).
        tokio::time::timeout(Duration::from_secs(5), async {
            while !a.list().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("released");
        a.flush().await;
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, format!("{STATE_HEADER}\n"));
        assert!(!file.with_extension("tmp").exists());
        assert!(TcpListener::bind(("127.0.0.1", port)).await.is_ok());
        // A corrupt file stops the start with the line named.
        std::fs::write(&file, "garbage\n").unwrap();
        let started = Allocations::start(
            AllocOptions {
                state_file: Some(file.clone()),
                ..AllocOptions::default()
            },
            &Limits::default(),
            "127.0.0.1".parse().unwrap(),
            Tasks::new(),
            Arc::default(),
        )
        .await;
        let e = started.err().expect("refused").to_string();
        assert!(e.contains("line 1") && e.contains("state"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
