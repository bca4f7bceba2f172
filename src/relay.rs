//! `NativeRelay`: the binding of keynet-core's relay server (the `Relay` class).

use keynet_core::relay::alloc::AllocOptions;
use keynet_core::relay::server::limits::{Limits, Unit, TABLE};
use keynet_core::relay::server::{RelayServer, RelayStart};
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::convert::{self, addr, arg_err, err, NativeOptions};

/// `Relay.start()` options (index.js validated the types).
#[napi(object)]
pub struct NativeRelayStart {
    pub host: String,
    pub port: u32,
    pub tcp_port: Option<u32>,
    pub key_private_pem: Option<String>,
    pub cert_chain_pem: Option<String>,
    pub allowed_node_ids: Option<Vec<String>>,
    pub token: Option<String>,
    pub callers: Option<bool>,
    pub public_ports: Option<bool>,
    pub public_host: Option<String>,
    pub port_range_start: Option<u32>,
    pub port_range_end: Option<u32>,
    pub retention: Option<f64>,
    pub state_file: Option<String>,
    /// Limits by option key, times in milliseconds.
    pub limits: Option<std::collections::HashMap<String, f64>>,
}

/// One of the relay's limits, as `Relay.start()` takes it.
#[napi(object)]
pub struct NativeLimit {
    pub key: String,
    /// `count`, `bytes`, `ms` or `perSecond`.
    pub unit: String,
    pub default_value: f64,
    pub doc: String,
}

/// The relay's limits: the options `Relay.start()` takes besides the others.
pub(crate) fn limits_table() -> Vec<NativeLimit> {
    let defaults = Limits::default();
    TABLE
        .iter()
        .map(|l| {
            let v = defaults.get(l.key).expect("every row has a field");
            let (unit, v) = match l.unit {
                Unit::Count => ("count", v),
                Unit::Bytes => ("bytes", v),
                Unit::Seconds => ("ms", v * 1000.0),
                Unit::PerSecond => ("perSecond", v),
            };
            NativeLimit {
                key: l.key.into(),
                unit: unit.into(),
                default_value: v,
                doc: l.doc.into(),
            }
        })
        .collect()
}

/// A count by reason.
#[napi(object)]
pub struct NativeReasonCount {
    pub reason: String,
    pub count: f64,
}

/// `Relay.getMetrics()`.
#[napi(object)]
pub struct NativeRelayMetrics {
    pub sessions_quic: f64,
    pub sessions_websocket: f64,
    pub registered_nodes: f64,
    pub allocations: f64,
    pub public_clients: f64,
    pub queued_bytes: f64,
    pub tracked_addresses: f64,
    pub packets_relayed: f64,
    pub bytes_relayed: f64,
    pub packets_on_channel: f64,
    pub rendezvous_sent: f64,
    pub stalled_resets: f64,
    pub drops: Vec<NativeReasonCount>,
    pub refusals: Vec<NativeReasonCount>,
    /// The same in Prometheus text.
    pub prometheus: String,
}

/// A public port held for a node.
#[napi(object)]
pub struct NativeAllocation {
    pub node_id: String,
    pub port: u32,
}

#[napi]
pub struct NativeRelayServer {
    inner: RelayServer,
}

#[napi]
impl NativeRelayServer {
    #[napi(constructor, catch_unwind)]
    pub fn new(options: Option<NativeOptions>) -> Result<Self> {
        let opts = options.unwrap_or_default().into_core();
        Ok(Self {
            inner: RelayServer::new(opts).map_err(err)?,
        })
    }

    #[napi]
    pub async fn start(&self, o: NativeRelayStart) -> Result<()> {
        let mut start = RelayStart::new(addr("opts.host", &o.host, o.port)?);
        if let Some(p) = o.tcp_port {
            start.tcp_addr = Some(addr("opts.host", &o.host, p)?);
        }
        start.tls = convert::tls(o.key_private_pem, o.cert_chain_pem);
        if let Some(ids) = o.allowed_node_ids {
            start.allowed_node_ids = Some(
                ids.into_iter()
                    .map(|s| convert::node_id(Some(s)).map(|o| o.expect("some in, some out")))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        start.token = o.token;
        start.callers = o.callers.unwrap_or(true);
        let mut alloc = AllocOptions {
            enabled: o.public_ports.unwrap_or(true),
            ..AllocOptions::default()
        };
        if let Some(h) = o.public_host {
            alloc.host = Some(addr("opts.publicPorts.host", &h, 0)?.ip());
        }
        if let (Some(a), Some(b)) = (o.port_range_start, o.port_range_end) {
            let a = u16::try_from(a).map_err(|_| arg_err("port range out of 1..65535".into()))?;
            let b = u16::try_from(b).map_err(|_| arg_err("port range out of 1..65535".into()))?;
            alloc.range = Some((a, b));
        }
        if let Some(r) = o.retention {
            alloc.retention = convert::ms(r);
        }
        alloc.state_file = o.state_file.map(Into::into);
        start.alloc = alloc;
        for (key, value) in o.limits.unwrap_or_default() {
            let seconds = TABLE
                .iter()
                .any(|l| l.key == key && l.unit == Unit::Seconds);
            let value = if seconds { value / 1000.0 } else { value };
            start.limits.set(&key, value).map_err(err)?;
        }
        self.inner.start(start).await.map_err(err)
    }

    #[napi]
    pub async fn stop(&self) -> Result<()> {
        self.inner.stop().await.map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn node_id(&self) -> Result<String> {
        self.inner.node_id().map(|n| n.to_string()).map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn host(&self) -> Result<String> {
        self.inner.addr().map(|a| a.ip().to_string()).map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn port(&self) -> Result<u32> {
        self.inner.addr().map(|a| a.port() as u32).map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn tcp_port(&self) -> Result<u32> {
        self.inner.tcp_addr().map(|a| a.port() as u32).map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn registered(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .inner
            .registered()
            .map_err(err)?
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        ids.sort();
        Ok(ids)
    }

    #[napi(catch_unwind)]
    pub fn metrics(&self) -> Result<NativeRelayMetrics> {
        let s = self.inner.stats().map_err(err)?;
        let g = &s.gauges;
        let reasons = |rows: &[(&str, u64)]| {
            rows.iter()
                .map(|(r, n)| NativeReasonCount {
                    reason: (*r).into(),
                    count: *n as f64,
                })
                .collect()
        };
        Ok(NativeRelayMetrics {
            sessions_quic: g.sessions_quic as f64,
            sessions_websocket: g.sessions_websocket as f64,
            registered_nodes: g.registered as f64,
            allocations: g.allocations as f64,
            public_clients: g.public_clients as f64,
            queued_bytes: g.queued_bytes as f64,
            tracked_addresses: g.tracked_addresses as f64,
            packets_relayed: s.packets_relayed as f64,
            bytes_relayed: s.bytes_relayed as f64,
            packets_on_channel: s.packets_on_channel as f64,
            rendezvous_sent: s.rendezvous_sent as f64,
            stalled_resets: s.stalled_resets as f64,
            drops: reasons(&s.drops),
            refusals: reasons(&s.refusals),
            prometheus: s.prometheus(),
        })
    }

    #[napi(catch_unwind)]
    pub fn allocations(&self) -> Result<Vec<NativeAllocation>> {
        Ok(self
            .inner
            .allocations()
            .map_err(err)?
            .into_iter()
            .map(|(n, p)| NativeAllocation {
                node_id: n.to_string(),
                port: p as u32,
            })
            .collect())
    }
}
