//! What JS reads back: identities, connection information, addresses, relay status.

use std::net::SocketAddr;

use napi_derive::napi;

/// A generated identity.
#[napi(object)]
pub struct NativeIdentity {
    pub node_id: String,
    pub key_private_pem: String,
    pub cert_chain_pem: String,
}

impl From<keynet_core::Identity> for NativeIdentity {
    fn from(id: keynet_core::Identity) -> Self {
        Self {
            node_id: id.node_id.to_string(),
            key_private_pem: id.tls.key_private_pem,
            cert_chain_pem: id.tls.cert_chain_pem,
        }
    }
}

/// JS `ConnectionInfo`.
#[napi(object)]
#[derive(Clone)]
pub struct NativeConnectionInfo {
    pub node_id: String,
    pub certificates: Vec<String>,
    pub egress_host: String,
    pub egress_port: u32,
    pub ingress_host: String,
    pub ingress_port: u32,
    pub path: String,
    pub rtt_ms: f64,
    pub bytes_sent: f64,
    pub bytes_received: f64,
    pub datagrams_sent: f64,
    pub send_calls: f64,
    pub lost_packets: f64,
    pub mtu: u32,
    pub resumed: bool,
}

impl From<keynet_core::ConnectionInfo> for NativeConnectionInfo {
    fn from(i: keynet_core::ConnectionInfo) -> Self {
        Self {
            node_id: i.node_id,
            certificates: i.certificates,
            egress_host: i.egress.ip().to_string(),
            egress_port: i.egress.port() as u32,
            ingress_host: i.ingress.ip().to_string(),
            ingress_port: i.ingress.port() as u32,
            path: i.path.as_str().to_string(),
            rtt_ms: i.rtt_ms,
            bytes_sent: i.bytes_sent as f64,
            bytes_received: i.bytes_received as f64,
            datagrams_sent: i.datagrams_sent as f64,
            send_calls: i.send_calls as f64,
            lost_packets: i.lost_packets as f64,
            mtu: u32::from(i.mtu),
            resumed: i.resumed,
        }
    }
}

/// A host and port.
#[napi(object)]
#[derive(Clone)]
pub struct NativeAddress {
    pub host: String,
    pub port: u32,
}

impl From<SocketAddr> for NativeAddress {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: a.ip().to_string(),
            port: a.port() as u32,
        }
    }
}

/// An address found on the DHT.
#[napi(object)]
pub struct NativeFound {
    pub host: String,
    pub port: u32,
    /// Milliseconds since the node signed it; absent for unsigned hints.
    pub age_ms: Option<f64>,
    pub signed: bool,
}

impl From<keynet_core::Found> for NativeFound {
    fn from(f: keynet_core::Found) -> Self {
        Self {
            host: f.addr.ip().to_string(),
            port: f.addr.port() as u32,
            age_ms: f.age.map(|a| a.as_secs_f64() * 1000.0),
            signed: f.signed,
        }
    }
}

/// A relay a node's record names (`locate()`).
#[napi(object)]
pub struct NativeRelayHint {
    pub host: String,
    pub port: u32,
    pub node_id: String,
    pub tcp_port: u32,
    /// The node reaches it over QUIC / TLS+WebSocket.
    pub quic: bool,
    pub websocket: bool,
}

/// What `locate()` found: direct candidates and the node's relays, home first.
#[napi(object)]
pub struct NativeLocated {
    pub addresses: Vec<NativeFound>,
    pub relays: Vec<NativeRelayHint>,
}

impl From<keynet_core::discovery::Located> for NativeLocated {
    fn from(l: keynet_core::discovery::Located) -> Self {
        Self {
            addresses: l.addrs.into_iter().map(NativeFound::from).collect(),
            relays: l
                .relays
                .into_iter()
                .map(|r| NativeRelayHint {
                    host: r.addr.ip().to_string(),
                    port: r.addr.port() as u32,
                    node_id: r.node_id.to_string(),
                    tcp_port: r.tcp_port as u32,
                    quic: r.quic,
                    websocket: r.websocket,
                })
                .collect(),
        }
    }
}

/// A replica a service lookup found (`lookupService()`).
#[napi(object)]
pub struct NativeMember {
    pub node_id: String,
    pub age_ms: f64,
    pub verified: bool,
    pub addresses: Vec<NativeFound>,
    pub relays: Vec<NativeRelayHint>,
}

impl From<keynet_core::discovery::Member> for NativeMember {
    fn from(m: keynet_core::discovery::Member) -> Self {
        let located = NativeLocated::from(m.located);
        Self {
            node_id: m.node_id.to_string(),
            age_ms: m.age.as_millis() as f64,
            verified: m.verified,
            addresses: located.addresses,
            relays: located.relays,
        }
    }
}

/// A relay link's status (`getRelayStatus()`).
#[napi(object)]
#[derive(Clone)]
pub struct NativeRelayStatus {
    pub host: String,
    pub port: u32,
    pub node_id: String,
    /// `connecting`, `up` or `down`.
    pub state: String,
    pub transport: Option<String>,
    pub observed_host: Option<String>,
    pub observed_port: Option<u32>,
    pub public_port: Option<u32>,
    pub error: Option<String>,
    /// The node's home relay (the one its records name first); absent in events.
    pub home: Option<bool>,
}

impl NativeRelayStatus {
    /// The status of the link to `spec`.
    pub fn new(
        spec: &keynet_core::relay::spec::RelaySpec,
        status: keynet_core::relay::spec::LinkStatus,
    ) -> Self {
        use keynet_core::relay::spec::LinkStatus;
        let mut s = Self {
            host: spec.addr.ip().to_string(),
            port: spec.addr.port() as u32,
            node_id: spec.node_id.to_string(),
            state: "connecting".into(),
            transport: None,
            observed_host: None,
            observed_port: None,
            public_port: None,
            error: None,
            home: None,
        };
        match status {
            LinkStatus::Connecting => {}
            LinkStatus::Up {
                transport,
                observed,
                public_port,
            } => {
                s.state = "up".into();
                s.transport = Some(transport.as_str().into());
                s.observed_host = Some(observed.ip().to_string());
                s.observed_port = Some(observed.port() as u32);
                s.public_port = public_port.map(u32::from);
            }
            LinkStatus::Down(kind, message) => {
                s.state = "down".into();
                s.error = Some(format!("[{}] {message}", kind.code()));
            }
        }
        s
    }
}

/// A proxy's `getStats()`.
#[napi(object)]
pub struct NativeProxyStats {
    pub direct: f64,
    pub punched: f64,
    pub relayed: f64,
    pub tunnels_open: f64,
    pub tunnels_total: f64,
    pub bytes_sent: f64,
    pub bytes_received: f64,
    pub failure_codes: Vec<String>,
    pub failure_counts: Vec<f64>,
}

impl From<keynet_core::ProxyStats> for NativeProxyStats {
    fn from(s: keynet_core::ProxyStats) -> Self {
        Self {
            direct: s.direct as f64,
            punched: s.punched as f64,
            relayed: s.relayed as f64,
            tunnels_open: s.tunnels_open as f64,
            tunnels_total: s.tunnels_total as f64,
            bytes_sent: s.bytes_sent as f64,
            bytes_received: s.bytes_received as f64,
            failure_codes: s.failures.iter().map(|(k, _)| (*k).to_string()).collect(),
            failure_counts: s.failures.iter().map(|(_, v)| *v as f64).collect(),
        }
    }
}
