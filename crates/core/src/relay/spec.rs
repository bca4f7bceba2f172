//! What a relay link is asked to do and where it stands: plain data shared by the link, the
//! tracker, events and the bindings (a leaf: it depends only on node ids).

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::nodeid::NodeId;

/// Keepalive cadence toward the relay (every 15 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// Which transport a link uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// QUIC, raced by WebSocket once QUIC has not connected within 1 s (`link::transport::QUIC_FIRST`).
    Auto,
    /// QUIC only.
    Quic,
    /// TLS + WebSocket over TCP only.
    WebSocket,
}

impl Transport {
    /// The name JS sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::WebSocket => "websocket",
        }
    }
}

/// How to reach a relay and what to ask of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySpec {
    /// The relay's UDP (QUIC) address.
    pub addr: SocketAddr,
    /// The relay's node id (pinned).
    pub node_id: NodeId,
    /// The relay's TLS/WebSocket address; default: `addr`'s host and port over TCP.
    pub tcp_addr: Option<SocketAddr>,
    /// Which transport to use.
    pub transport: Transport,
    /// Ping cadence (15 s); a relay silent for twice as long is reconnected.
    pub keepalive: Duration,
    /// Ask for a public TCP port carried to this node's server.
    pub want_port: bool,
    /// Wait this long after a relayed connection is up before asking for a rendezvous.
    pub upgrade_delay: Duration,
    /// Ask for rendezvous at all (relayed connections stay relayed when false).
    pub upgrade: bool,
    /// The relay's registration token, if it requires one.
    pub token: Option<String>,
    /// Register only to call nodes registered there (no token; not reachable through it; no
    /// public port): the on-demand link to a callee's home relay.
    pub caller: bool,
    /// A relay silent this long is reconnected. `None`: twice the keepalive for the relay's own
    /// pings, half the connections' idle timeout for QUIC. A node with several relays sets it
    /// short ([`crate::relay::spec::FAILOVER_SILENCE`]) so a dead home relay is left quickly.
    pub silence: Option<Duration>,
}

/// How long a relay of a node with several relays may stay silent before its link is down (and
/// the node re-homes): QUIC keepalives go every second anyway, so this costs nothing more.
pub const FAILOVER_SILENCE: Duration = Duration::from_secs(3);

impl RelaySpec {
    /// A spec with defaults: any transport, 15 s keepalive, no port, upgrade at once.
    pub fn new(addr: SocketAddr, node_id: NodeId) -> Self {
        Self {
            addr,
            node_id,
            tcp_addr: None,
            transport: Transport::Auto,
            keepalive: DEFAULT_KEEPALIVE,
            want_port: false,
            upgrade_delay: Duration::ZERO,
            upgrade: true,
            token: None,
            caller: false,
            silence: None,
        }
    }

    /// The TLS/WebSocket address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr.unwrap_or(self.addr)
    }
}

/// `HOST:PORT@NODEID` (IPv6 as `[::1]:7000@NODEID`): how a relay is named on a command line or
/// in a config file; the other fields take their defaults.
impl std::str::FromStr for RelaySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, id) = s
            .rsplit_once('@')
            .ok_or_else(|| format!("{s:?} is not HOST:PORT@NODEID"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an IP HOST:PORT"))?;
        let node_id: NodeId = id.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self::new(addr, node_id))
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn host_port_at_node_id() {
        let id = crate::generate_identity().unwrap().node_id;
        let spec: RelaySpec = format!("127.0.0.1:7000@{id}").parse().unwrap();
        assert_eq!(spec, RelaySpec::new("127.0.0.1:7000".parse().unwrap(), id));
        let v6: RelaySpec = format!("[::1]:7000@{id}").parse().unwrap();
        assert_eq!(v6.addr, "[::1]:7000".parse::<SocketAddr>().unwrap());
        for bad in [
            "127.0.0.1:7000",
            "relay.example:7000@x",
            "127.0.0.1:7000@notanid",
        ] {
            assert!(bad.parse::<RelaySpec>().is_err(), "{bad}");
        }
    }
}

/// Where the link stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// Connecting (first time, or again after a failure).
    Connecting,
    /// Registered.
    Up {
        /// The transport in use (never `Auto`).
        transport: Transport,
        /// This node's address as the relay sees it.
        observed: SocketAddr,
        /// The public TCP port the relay allocated, if asked.
        public_port: Option<u16>,
    },
    /// The last attempt failed (error code and message); retrying after backoff.
    Down(ErrorKind, String),
}
