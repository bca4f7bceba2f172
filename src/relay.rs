//! `NativeRelay`: the binding of keynet-core's relay server (the `Relay` class).

use std::time::Duration;

use keynet_core::relay::alloc::AllocOptions;
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
    pub public_ports: Option<bool>,
    pub public_host: Option<String>,
    pub port_range_start: Option<u32>,
    pub port_range_end: Option<u32>,
    pub retention: Option<f64>,
    pub state_file: Option<String>,
    pub max_clients: Option<u32>,
    pub max_peers: Option<u32>,
    pub node_timeout: Option<f64>,
    pub register_timeout: Option<f64>,
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
        if let Some(m) = o.max_clients {
            alloc.max_clients = m as usize;
        }
        start.alloc = alloc;
        if let Some(m) = o.max_peers {
            start.max_peers = m as usize;
        }
        if let Some(t) = o.node_timeout {
            start.node_timeout = convert::ms(t).max(Duration::from_millis(1));
        }
        if let Some(t) = o.register_timeout {
            start.register_timeout = convert::ms(t).max(Duration::from_millis(1));
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
