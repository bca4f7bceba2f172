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
    /// For `Close`: `local`, `remote`, `keepaliveTimeout`, `stopped` or an error text; for
    /// `Path`: a [`PathReason`] name.
    pub reason: Option<String>,
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
