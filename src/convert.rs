//! Conversions between keynet-core types and the plain objects the JS layer sees.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

/// Turns a core error into a JS error whose message starts with `[Code] `.
pub(crate) fn err(e: keynet_core::Error) -> Error {
    Error::new(Status::GenericFailure, format!("[{}] {}", e.code(), e))
}

/// An argument error (index.js validates first; this is the backstop).
pub(crate) fn arg_err(msg: String) -> Error {
    Error::new(Status::InvalidArg, format!("[ERR_INVALID_ARG_VALUE] {msg}"))
}

/// Parses `host` (an IP string) and `port` into an address.
pub(crate) fn addr(name: &str, host: &str, port: u32) -> Result<SocketAddr> {
    let ip: IpAddr = host.parse().map_err(|_| {
        arg_err(format!(
            "{name} must be an IPv4 or IPv6 address, got {host:?}"
        ))
    })?;
    let port =
        u16::try_from(port).map_err(|_| arg_err(format!("port must be 0..65535, got {port}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses an optional node id string.
pub(crate) fn node_id(s: Option<String>) -> Result<Option<keynet_core::NodeId>> {
    s.map(|s| {
        s.parse()
            .map_err(|e: keynet_core::nodeid::NodeIdParseError| arg_err(format!("nodeId: {e}")))
    })
    .transpose()
}

/// Optional PEM pair into a TLS config.
pub(crate) fn tls(key: Option<String>, cert: Option<String>) -> Option<keynet_core::TlsConfig> {
    match (key, cert) {
        (Some(key_private_pem), Some(cert_chain_pem)) => Some(keynet_core::TlsConfig {
            key_private_pem,
            cert_chain_pem,
        }),
        _ => None,
    }
}

/// Milliseconds into a duration.
pub(crate) fn ms(v: f64) -> Duration {
    Duration::from_micros((v.max(0.0) * 1000.0) as u64)
}

/// Timing options in milliseconds (undefined: API.md default).
#[napi(object)]
#[derive(Default)]
pub struct NativeOptions {
    pub conn_connect_time: Option<f64>,
    pub conn_keep_alive_timeout_time: Option<f64>,
    pub conn_keep_alive_interval_time: Option<f64>,
    pub conn_punch_interval_time: Option<f64>,
    pub conn_end_time: Option<f64>,
    /// Test-only: no keepalives.
    pub disable_keep_alive: Option<bool>,
}

impl NativeOptions {
    /// Into core options.
    pub fn into_core(self) -> keynet_core::ConnOptions {
        let d = keynet_core::ConnOptions::default();
        keynet_core::ConnOptions {
            connect_time: self.conn_connect_time.map(ms).unwrap_or(d.connect_time),
            keepalive_timeout: self
                .conn_keep_alive_timeout_time
                .map(ms)
                .unwrap_or(d.keepalive_timeout),
            keepalive_interval: self
                .conn_keep_alive_interval_time
                .map(ms)
                .unwrap_or(d.keepalive_interval),
            punch_interval: self
                .conn_punch_interval_time
                .map(ms)
                .unwrap_or(d.punch_interval),
            end_time: self.conn_end_time.map(ms).unwrap_or(d.end_time),
            keepalive_disabled: self.disable_keep_alive.unwrap_or(false),
        }
    }
}

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

/// API.md `ConnectionInfo`.
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
        }
    }
}

/// API.md `ConnectionEvent`, with its event name in `kind`; `address` events carry
/// `addresses` instead of `info`.
#[napi(object)]
#[derive(Clone)]
pub struct NativeEvent {
    pub kind: String,
    pub info: Option<NativeConnectionInfo>,
    pub reason: Option<String>,
    /// For `path`: the path before the change.
    pub previous_path: Option<String>,
    pub addresses: Option<Vec<NativeAddress>>,
    /// For `relay`: the link's new status (as `relayStatus`).
    pub relay: Option<NativeRelayStatus>,
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

/// `discovery` start options (checked by index.js).
#[napi(object)]
pub struct NativeDiscovery {
    pub bootstrap: Option<Vec<String>>,
    pub announce: Option<bool>,
    pub reannounce_interval: Option<f64>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub server: Option<bool>,
}

impl NativeDiscovery {
    /// The core options.
    pub fn into_core(self) -> Result<keynet_core::DiscoveryOptions> {
        let defaults = keynet_core::DiscoveryOptions::default();
        let bind = match self.host {
            Some(host) => match addr("discovery.host", &host, self.port.unwrap_or(0))? {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => {
                    return Err(arg_err(
                        "discovery.host must be an IPv4 address (the mainline DHT is IPv4)".into(),
                    ))
                }
            },
            None => None,
        };
        if bind.is_none() && self.port.is_some_and(|p| p != 0) {
            return Err(arg_err("discovery.port needs discovery.host".into()));
        }
        Ok(keynet_core::DiscoveryOptions {
            bootstrap: self.bootstrap,
            announce: self.announce.unwrap_or(defaults.announce),
            reannounce_interval: self
                .reannounce_interval
                .map(ms)
                .unwrap_or(defaults.reannounce_interval),
            bind,
            server_mode: self.server.unwrap_or(defaults.server_mode),
        })
    }
}

/// `relay` options of `start()` and `openConnection()` (index.js validated the types).
#[napi(object)]
pub struct NativeRelay {
    pub host: String,
    pub port: u32,
    pub node_id: String,
    pub tcp_port: Option<u32>,
    pub transport: Option<String>,
    pub keepalive_interval: Option<f64>,
    pub public_port: Option<bool>,
    pub upgrade: Option<bool>,
    pub upgrade_delay: Option<f64>,
    pub token: Option<String>,
}

impl NativeRelay {
    /// The core spec.
    pub fn into_core(self) -> Result<keynet_core::relay::spec::RelaySpec> {
        use keynet_core::relay::spec::Transport;
        let addr_ = addr("relay.host", &self.host, self.port)?;
        let node = node_id(Some(self.node_id))?.expect("some in, some out");
        let mut spec = keynet_core::relay::spec::RelaySpec::new(addr_, node);
        if let Some(p) = self.tcp_port {
            spec.tcp_addr = Some(addr("relay.host", &self.host, p)?);
        }
        spec.transport = match self.transport.as_deref() {
            None | Some("auto") => Transport::Auto,
            Some("quic") => Transport::Quic,
            Some("websocket") => Transport::WebSocket,
            Some(other) => {
                return Err(arg_err(format!(
                    "relay.transport must be 'auto', 'quic' or 'websocket', got {other:?}"
                )))
            }
        };
        if let Some(k) = self.keepalive_interval {
            if k <= 0.0 {
                return Err(arg_err(
                    "relay.keepaliveInterval must be greater than 0".into(),
                ));
            }
            spec.keepalive = ms(k);
        }
        spec.want_port = self.public_port.unwrap_or(false);
        spec.upgrade = self.upgrade.unwrap_or(true);
        spec.upgrade_delay = self.upgrade_delay.map(ms).unwrap_or_default();
        spec.token = self.token;
        Ok(spec)
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
        };
        match status {
            LinkStatus::Connecting => {}
            LinkStatus::Up {
                transport,
                observed,
                public_port,
            } => {
                s.state = "up".into();
                s.transport = Some(transport.into());
                s.observed_host = Some(observed.ip().to_string());
                s.observed_port = Some(observed.port() as u32);
                s.public_port = public_port.map(u32::from);
            }
            LinkStatus::Down(code, message) => {
                s.state = "down".into();
                s.error = Some(format!("[{code}] {message}"));
            }
        }
        s
    }
}

/// Cancellable operations of one proxy, by the id index.js gave them.
#[derive(Default)]
pub(crate) struct Ops(
    std::sync::Mutex<std::collections::HashMap<u32, keynet_core::CancellationToken>>,
);

impl Ops {
    /// Registers an operation before it starts, so an abort can never come too early.
    pub(crate) fn begin(&self, id: u32) {
        self.0
            .lock()
            .expect("ops lock")
            .insert(id, keynet_core::CancellationToken::new());
    }

    /// The token of a registered operation.
    pub(crate) fn token(&self, id: Option<u32>) -> Option<keynet_core::CancellationToken> {
        id.and_then(|id| self.0.lock().expect("ops lock").get(&id).cloned())
    }

    /// Cancels an operation (it stays registered until it ends).
    pub(crate) fn abort(&self, id: u32) {
        if let Some(t) = self.0.lock().expect("ops lock").get(&id) {
            t.cancel();
        }
    }

    /// Forgets an operation.
    pub(crate) fn end(&self, id: Option<u32>) {
        if let Some(id) = id {
            self.0.lock().expect("ops lock").remove(&id);
        }
    }
}

/// A weak listener: it never keeps Node alive.
pub(crate) type Listener = ThreadsafeFunction<NativeEvent, (), NativeEvent, Status, false, true>;

/// An event sink that calls the JS listener without blocking the network task.
pub(crate) fn sink(listener: Listener) -> keynet_core::EventSink {
    let listener = Arc::new(listener);
    Arc::new(move |e: keynet_core::Event| {
        let addresses = (e.kind == keynet_core::EventKind::Address)
            .then(|| e.addresses.into_iter().map(NativeAddress::from).collect());
        let ev = NativeEvent {
            kind: e.kind.as_str().to_string(),
            info: e.info.map(Into::into),
            reason: e.reason,
            previous_path: e.previous_path.map(|p| p.as_str().to_string()),
            addresses,
            relay: e.relay.map(|(spec, st)| NativeRelayStatus::new(&spec, st)),
        };
        let _ = listener.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
    })
}
