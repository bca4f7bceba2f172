//! What JS passes in: timing options and start options (checked by index.js first).

use std::net::SocketAddr;

use keynet_core::{ForwardStart, ReverseStart};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::{addr, arg_err, ms, node_id, tls};

/// Timing options in milliseconds (undefined: the default).
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

impl From<&keynet_core::ConnOptions> for NativeOptions {
    fn from(o: &keynet_core::ConnOptions) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        Self {
            conn_connect_time: Some(ms(o.connect_time)),
            conn_keep_alive_timeout_time: Some(ms(o.keepalive_timeout)),
            conn_keep_alive_interval_time: Some(ms(o.keepalive_interval)),
            conn_punch_interval_time: Some(ms(o.punch_interval)),
            conn_end_time: Some(ms(o.end_time)),
            disable_keep_alive: Some(o.keepalive_disabled),
        }
    }
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
            udp: d.udp,
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
    pub announce_addresses: Option<bool>,
    pub relay_idle_time: Option<f64>,
    pub relay_network: Option<String>,
    /// The namespace of service names.
    pub network: Option<String>,
    /// Names offered (reverse proxy).
    pub services: Option<Vec<NativeServiceOffer>>,
    /// Restricted names and whom they admit (forward proxy).
    pub service_trust: Option<Vec<NativeServiceTrust>>,
}

/// A name offered, with the owner's membership (hex) for a restricted name.
#[napi(object)]
pub struct NativeServiceOffer {
    pub name: String,
    pub membership: Option<String>,
}

impl NativeServiceOffer {
    /// The core offer.
    pub fn into_core(self) -> Result<keynet_core::discovery::ServiceOffer> {
        let membership = match self.membership {
            Some(hex) => Some(
                keynet_core::discovery::service_entry::Membership::from_hex(&hex).ok_or_else(
                    || {
                        arg_err(format!(
                            "service {:?}: membership is not 192 hex digits",
                            self.name
                        ))
                    },
                )?,
            ),
            None => None,
        };
        Ok(keynet_core::discovery::ServiceOffer {
            name: self.name,
            membership,
        })
    }
}

/// Whom a caller accepts for a restricted name.
#[napi(object)]
pub struct NativeServiceTrust {
    pub name: String,
    pub node_ids: Option<Vec<String>>,
    /// The owner's public key, 64 hex digits.
    pub owner: Option<String>,
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
            announce_direct: self.announce_addresses.unwrap_or(defaults.announce_direct),
            relay_idle: self.relay_idle_time.map(ms).unwrap_or(defaults.relay_idle),
            relay_network: self.relay_network,
            network: self.network.unwrap_or_default(),
            services: self
                .services
                .unwrap_or_default()
                .into_iter()
                .map(NativeServiceOffer::into_core)
                .collect::<Result<_>>()?,
            service_trust: self
                .service_trust
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    let node_ids = t
                        .node_ids
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| node_id(Some(s)).map(|o| o.expect("some in, some out")))
                        .collect::<Result<Vec<_>>>()?;
                    let owner = match t.owner {
                        Some(hex) => Some(
                            keynet_core::discovery::service_entry::unhex(&hex)
                                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                                .ok_or_else(|| {
                                    arg_err(format!(
                                        "serviceTrust {:?}: owner is not 64 hex digits",
                                        t.name
                                    ))
                                })?,
                        ),
                        None => None,
                    };
                    Ok((
                        t.name,
                        keynet_core::discovery::ServiceTrust { node_ids, owner },
                    ))
                })
                .collect::<Result<_>>()?,
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

/// `ForwardProxy.start` options, already checked and defaulted by index.js.
#[napi(object)]
pub struct NativeForwardStart {
    pub proxy_host: String,
    pub proxy_port: u32,
    pub egress_host: String,
    pub egress_port: u32,
    pub key_private_pem: Option<String>,
    pub cert_chain_pem: Option<String>,
    /// Replaces the token given to the constructor.
    pub auth_token: Option<String>,
    pub discovery: Option<NativeDiscovery>,
    pub relay: Option<NativeRelay>,
    pub relays: Option<Vec<NativeRelay>>,
    pub max_connections: Option<u32>,
}

impl NativeForwardStart {
    /// The core's start.
    pub fn into_core(self) -> Result<ForwardStart> {
        let start = ForwardStart {
            proxy_addr: addr("proxyHost", &self.proxy_host, self.proxy_port)?,
            egress_addr: addr("egressHost", &self.egress_host, self.egress_port)?,
            tls: tls(self.key_private_pem, self.cert_chain_pem),
            discovery: self.discovery.map(NativeDiscovery::into_core).transpose()?,
            relay: self.relay.map(NativeRelay::into_core).transpose()?,
            relays: relays(self.relays)?,
            max_connections: self
                .max_connections
                .map_or(keynet_core::forward_proxy::DEFAULT_MAX_CONNECTIONS, |n| {
                    n as usize
                }),
            auth_token: self.auth_token,
            cancel: None,
        };
        Ok(start)
    }
}

/// `ReverseProxy.start` options, already checked and defaulted by index.js.
#[napi(object)]
pub struct NativeReverseStart {
    pub server_host: String,
    pub server_port: u32,
    pub ingress_host: String,
    pub ingress_port: u32,
    pub key_private_pem: Option<String>,
    pub cert_chain_pem: Option<String>,
    pub allowed_node_ids: Option<Vec<String>>,
    pub discovery: Option<NativeDiscovery>,
    pub relay: Option<NativeRelay>,
    pub relays: Option<Vec<NativeRelay>>,
    pub max_connections: Option<u32>,
    pub max_streams_per_connection: Option<u32>,
}

impl NativeReverseStart {
    /// The core's start.
    pub fn into_core(self) -> Result<ReverseStart> {
        let allowed_node_ids = self
            .allowed_node_ids
            .map(|ids| {
                ids.into_iter()
                    .map(|s| node_id(Some(s)).map(|o| o.expect("some in, some out")))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(ReverseStart {
            server_addr: addr("serverHost", &self.server_host, self.server_port)?,
            ingress_addr: addr("ingressHost", &self.ingress_host, self.ingress_port)?,
            tls: tls(self.key_private_pem, self.cert_chain_pem),
            allowed_node_ids,
            discovery: self.discovery.map(NativeDiscovery::into_core).transpose()?,
            relay: self.relay.map(NativeRelay::into_core).transpose()?,
            relays: relays(self.relays)?,
            max_connections: self
                .max_connections
                .map_or(keynet_core::reverse_proxy::DEFAULT_MAX_CONNECTIONS, |n| {
                    n as usize
                }),
            max_streams_per_connection: self
                .max_streams_per_connection
                .unwrap_or(keynet_core::reverse_proxy::DEFAULT_MAX_STREAMS),
            cancel: None,
        })
    }
}

/// The `relays` start option.
fn relays(list: Option<Vec<NativeRelay>>) -> Result<Vec<keynet_core::relay::spec::RelaySpec>> {
    list.unwrap_or_default()
        .into_iter()
        .map(NativeRelay::into_core)
        .collect()
}
