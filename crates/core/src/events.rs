//! Connection information and the events reported to the user.

use std::net::SocketAddr;
use std::sync::Arc;

/// How a connection reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The remote address answered directly.
    Direct,
    /// Both sides punched through their NATs.
    Punched,
    /// Through a relay.
    Relayed,
}

impl Path {
    /// The name JS sees.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Punched => "punched",
            Self::Relayed => "relayed",
        }
    }
}

/// Why a connection closed (the `reason` of a `close` event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Closed by this side (`closeConnection`, `removeConnection`, a superseded dial).
    Local,
    /// Closed by the peer.
    Remote,
    /// The peer went silent for longer than `connKeepAliveTimeoutTime`.
    KeepaliveTimeout,
    /// This proxy was stopped (or dropped).
    Stopped,
    /// The relay carrying the connection went away.
    RelayLost,
    /// A transport error quinn reported, as its text.
    Other(String),
}

impl CloseReason {
    /// The name JS sees.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
            Self::KeepaliveTimeout => "keepaliveTimeout",
            Self::Stopped => "stopped",
            Self::RelayLost => "relayLost",
            Self::Other(text) => text,
        }
    }

    /// Why quinn ended a connection this side did not close with a reason of its own.
    pub fn of(err: &quinn::ConnectionError) -> Self {
        match err {
            quinn::ConnectionError::TimedOut => Self::KeepaliveTimeout,
            quinn::ConnectionError::ApplicationClosed(_)
            | quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::Reset => Self::Remote,
            quinn::ConnectionError::LocallyClosed => Self::Local,
            other => Self::Other(other.to_string()),
        }
    }
}

/// The `reason` of a `close` or `path` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Why a connection closed.
    Close(CloseReason),
    /// Why a connection changed path.
    Path(PathReason),
}

impl Reason {
    /// The name JS sees.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Close(r) => r.as_str(),
            Self::Path(r) => r.as_str(),
        }
    }
}

/// Why a connection changed path (the `reason` of a `path` event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathReason {
    /// A rendezvous (or a dead path that answered again) opened a direct path.
    Upgrade,
    /// The direct path stopped answering probes.
    ProbeTimeout,
    /// The peer's address changed (a NAT gave it a new mapping).
    Rebinding,
    /// The application reported a network change.
    NetworkChanged,
}

impl PathReason {
    /// The JS name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::ProbeTimeout => "probeTimeout",
            Self::Rebinding => "rebinding",
            Self::NetworkChanged => "networkChanged",
        }
    }
}

/// A snapshot of one connection (JS `ConnectionInfo`).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// Node id the peer proved.
    pub node_id: String,
    /// The peer's certificates, PEM, leaf first.
    pub certificates: Vec<String>,
    /// The forward proxy's UDP address.
    pub egress: SocketAddr,
    /// The reverse proxy's UDP address.
    pub ingress: SocketAddr,
    /// How the connection reaches the peer.
    pub path: Path,
    /// Smoothed round-trip time.
    pub rtt_ms: f64,
    /// UDP bytes sent on this connection.
    pub bytes_sent: u64,
    /// UDP bytes received on this connection.
    pub bytes_received: u64,
    /// UDP datagrams sent on this connection.
    pub datagrams_sent: u64,
    /// System calls that sent them (fewer than datagrams when the kernel's segment offload
    /// batches them).
    pub send_calls: u64,
    /// Packets QUIC declared lost (and sent again).
    pub lost_packets: u64,
    /// The largest UDP payload QUIC sends on the path now (its path MTU, in bytes): 1200 to
    /// 1452 across the internet or through a relay, more on a LAN or loopback.
    pub mtu: u16,
    /// The connection resumed an earlier TLS session with this node (a session ticket: no
    /// certificates exchanged, the first tunnel's header sent in 0-RTT).
    pub resumed: bool,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A connection was established.
    Connection,
    /// A connection ended.
    Close,
    /// A connection changed path.
    Path,
    /// The proxy's own announced addresses changed (discovery).
    Address,
    /// A relay link changed state.
    Relay,
}

impl EventKind {
    /// The JS event name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Close => "close",
            Self::Path => "path",
            Self::Address => "address",
            Self::Relay => "relay",
        }
    }
}

/// An event about a connection (JS `ConnectionEvent`) or about the proxy's own addresses.
#[derive(Clone, Debug)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The connection, as it was when it happened (`None` for `Address`).
    pub info: Option<ConnectionInfo>,
    /// For `Close` and `Path`: why.
    pub reason: Option<Reason>,
    /// For `Path`: the path before the change.
    pub previous_path: Option<Path>,
    /// For `Address`: the addresses now announced.
    pub addresses: Vec<SocketAddr>,
    /// For `Relay`: the link's new state.
    pub relay: Option<RelayEvent>,
}

/// A relay link's state change (the `relay` event): the relay and where its link stands now
/// (the same as a proxy's `relay_status`).
pub type RelayEvent = (
    crate::relay::spec::RelaySpec,
    crate::relay::spec::LinkStatus,
);

impl Event {
    /// An `Address` event.
    pub fn address(addresses: Vec<SocketAddr>) -> Self {
        Self {
            kind: EventKind::Address,
            info: None,
            reason: None,
            previous_path: None,
            addresses,
            relay: None,
        }
    }

    /// A `Relay` event.
    pub fn relay(relay: RelayEvent) -> Self {
        Self {
            kind: EventKind::Relay,
            info: None,
            reason: None,
            previous_path: None,
            addresses: Vec::new(),
            relay: Some(relay),
        }
    }
}

/// Receives events; called from network tasks, so it must not block.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;
