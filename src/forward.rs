//! `NativeForwardProxy`: the binding of keynet-core's ForwardProxy.

use keynet_core::ForwardProxy;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::convert::{
    self, addr, err, target, Listener, NativeAddress, NativeConnectionInfo, NativeForwardStart,
    NativeFound, NativeLocated, NativeMember, NativeOptions, NativeRelay, NativeRelayStatus, Ops,
};

#[napi]
pub struct NativeForwardProxy {
    inner: ForwardProxy,
    ops: Ops,
}

#[napi]
impl NativeForwardProxy {
    #[napi(constructor, catch_unwind)]
    pub fn new(auth_token: String, options: Option<NativeOptions>) -> Result<Self> {
        let opts = options.unwrap_or_default().into_core();
        Ok(Self {
            inner: ForwardProxy::new(auth_token, opts).map_err(err)?,
            ops: Ops::default(),
        })
    }

    #[napi(catch_unwind)]
    pub fn set_event_listener(&self, listener: Option<Listener>) {
        self.inner.set_event_sink(listener.map(convert::sink));
    }

    /// Sends this proxy's log lines at `level` ('error' ... 'trace') and more severe to
    /// `listener`; none: to no one.
    #[napi(catch_unwind)]
    pub fn set_logger(&self, listener: Option<convert::LogListener>, level: String) -> Result<()> {
        let route = listener
            .map(|l| convert::log_route(l, &level))
            .transpose()?;
        self.inner.set_log_route(route);
        Ok(())
    }

    #[napi]
    /// Starts; an abort of `op_id` makes the start give up, leaving nothing running.
    pub async fn start(&self, start: NativeForwardStart, op_id: Option<u32>) -> Result<()> {
        let mut start = start.into_core()?;
        start.cancel = self.ops.token(op_id);
        self.inner.start(start).await.map_err(err)
    }

    /// The addresses the DHT holds for `node_id`, signed record first.
    #[napi]
    pub async fn lookup(
        &self,
        node_id: String,
        timeout_ms: Option<f64>,
    ) -> Result<Vec<NativeFound>> {
        let node = convert::node_id(Some(node_id))?.expect("some in, some out");
        let found = self
            .inner
            .lookup(node, timeout_ms.map(convert::ms))
            .await
            .map_err(err)?;
        Ok(found.into_iter().map(NativeFound::from).collect())
    }

    /// Direct candidates and relays the DHT holds for `node_id`.
    #[napi]
    pub async fn locate(&self, node_id: String, timeout_ms: Option<f64>) -> Result<NativeLocated> {
        let node = convert::node_id(Some(node_id))?.expect("some in, some out");
        let located = self
            .inner
            .locate(node, timeout_ms.map(convert::ms))
            .await
            .map_err(err)?;
        Ok(NativeLocated::from(located))
    }

    /// The addresses announced last.
    #[napi(catch_unwind)]
    pub fn announced(&self) -> Result<Vec<NativeAddress>> {
        let addrs = self.inner.announced_addrs().map_err(err)?;
        Ok(addrs.into_iter().map(NativeAddress::from).collect())
    }

    /// Opens (or reuses) a connection to a node known only by its node id.
    #[napi]
    pub async fn open_connection_to_node(
        &self,
        node_id: String,
        timeout_ms: Option<f64>,
        op_id: Option<u32>,
    ) -> Result<NativeConnectionInfo> {
        let node = convert::node_id(Some(node_id))?.expect("some in, some out");
        let token = self.ops.token(op_id);
        self.inner
            .open_connection_to_node(node, timeout_ms.map(convert::ms), token)
            .await
            .map(Into::into)
            .map_err(err)
    }

    /// Opens (or reuses) a connection to one replica of a service name.
    #[napi]
    pub async fn open_connection_to_service(
        &self,
        name: String,
        timeout_ms: Option<f64>,
        op_id: Option<u32>,
    ) -> Result<NativeConnectionInfo> {
        let token = self.ops.token(op_id);
        self.inner
            .open_connection_to_service(&name, timeout_ms.map(convert::ms), token)
            .await
            .map(Into::into)
            .map_err(err)
    }

    /// The replicas of a service name.
    #[napi]
    pub async fn lookup_service(
        &self,
        name: String,
        timeout_ms: Option<f64>,
        op_id: Option<u32>,
    ) -> Result<Vec<NativeMember>> {
        let token = self.ops.token(op_id);
        Ok(self
            .inner
            .lookup_service(&name, timeout_ms.map(convert::ms), token)
            .await
            .map_err(err)?
            .into_iter()
            .map(NativeMember::from)
            .collect())
    }

    #[napi]
    /// Stops; an abort of `op_id` cuts the drain short.
    pub async fn stop(&self, op_id: Option<u32>) -> Result<()> {
        let hurry = self.ops.token(op_id).unwrap_or_default();
        self.inner.stop_hurried(&hurry).await.map_err(err)
    }

    /// The token CONNECT clients must present.
    #[napi(catch_unwind)]
    pub fn auth_token(&self) -> String {
        self.inner.auth_token()
    }

    #[napi(catch_unwind)]
    pub fn node_id(&self) -> Result<String> {
        self.inner.node_id().map(|n| n.to_string()).map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn proxy_host(&self) -> Result<String> {
        self.inner
            .proxy_addr()
            .map(|a| a.ip().to_string())
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn proxy_port(&self) -> Result<u32> {
        self.inner
            .proxy_addr()
            .map(|a| a.port() as u32)
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn egress_host(&self) -> Result<String> {
        self.inner
            .egress_addr()
            .map(|a| a.ip().to_string())
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn egress_port(&self) -> Result<u32> {
        self.inner
            .egress_addr()
            .map(|a| a.port() as u32)
            .map_err(err)
    }

    /// Opens a connection; `op_id` lets `abort(op_id)` cancel it.
    #[napi]
    pub async fn open_connection(
        &self,
        host: String,
        port: u32,
        node_id: Option<String>,
        timeout_ms: Option<f64>,
        op_id: Option<u32>,
        relay: Option<NativeRelay>,
    ) -> Result<NativeConnectionInfo> {
        let target = target("host", &host, port)?;
        let pin = convert::node_id(node_id)?;
        let relay = relay.map(NativeRelay::into_core).transpose()?;
        let token = self.ops.token(op_id);
        let timeout = timeout_ms.map(convert::ms);
        match (relay, pin) {
            (Some(spec), Some(node)) => {
                self.inner
                    .open_connection_via(target, node, spec, timeout, token)
                    .await
            }
            (Some(_), None) => Err(keynet_core::Error::InvalidArgument(
                "opts.relay needs the node id".into(),
            )),
            (None, pin) => {
                self.inner
                    .open_connection(target, pin, timeout, token)
                    .await
            }
        }
        .map(Into::into)
        .map_err(err)
    }

    /// The status of every relay link.
    #[napi(catch_unwind)]
    pub fn relay_status(&self) -> Result<Vec<NativeRelayStatus>> {
        Ok(self
            .inner
            .relay_status()
            .map_err(err)?
            .into_iter()
            .map(|(spec, st)| NativeRelayStatus::new(&spec, st))
            .collect())
    }

    /// Registers a cancellable operation before it starts, so an abort can never come too early.
    #[napi(catch_unwind)]
    pub fn begin_op(&self, op_id: u32) {
        self.ops.begin(op_id);
    }

    /// Cancels a registered operation (it stays registered until it ends).
    #[napi(catch_unwind)]
    pub fn abort(&self, op_id: u32) {
        self.ops.abort(op_id);
    }

    /// Forgets an operation's registration.
    #[napi(catch_unwind)]
    pub fn end_op(&self, op_id: u32) {
        self.ops.end(op_id);
    }

    #[napi]
    /// Ends a connection; an abort of `op_id` cuts the drain short.
    pub async fn close_connection(
        &self,
        host: String,
        port: u32,
        op_id: Option<u32>,
    ) -> Result<()> {
        let hurry = self.ops.token(op_id).unwrap_or_default();
        self.inner
            .close_connection_hurried(target("host", &host, port)?, &hurry)
            .await
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn add_direct_connection(&self, host: String, port: u32) -> Result<()> {
        self.inner
            .add_direct_connection(target("host", &host, port)?)
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn remove_connection(&self, host: String, port: u32) -> Result<()> {
        self.inner
            .remove_connection(target("host", &host, port)?)
            .map_err(err)
    }

    /// The device changed networks: rebind a gone socket, register with relays again,
    /// re-probe every direct path.
    #[napi(catch_unwind)]
    pub fn network_changed(&self) -> Result<()> {
        self.inner.network_changed().map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn connection_count(&self) -> u32 {
        self.inner.connection_count() as u32
    }

    /// The timing options in use, every field filled in.
    #[napi(catch_unwind)]
    pub fn options(&self) -> NativeOptions {
        self.inner.options().into()
    }

    #[napi(catch_unwind)]
    pub fn stats(&self) -> Result<crate::convert::NativeProxyStats> {
        self.inner.stats().map(Into::into).map_err(err)
    }

    /// Every live connection.
    #[napi(catch_unwind)]
    pub fn connections(&self) -> Result<Vec<NativeConnectionInfo>> {
        let all = self.inner.connections().map_err(err)?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    #[napi(catch_unwind)]
    pub fn info_by_ingress(&self, host: String, port: u32) -> Result<Option<NativeConnectionInfo>> {
        let info = self
            .inner
            .connection_info_by_ingress(target("host", &host, port)?)
            .map_err(err)?;
        Ok(info.map(Into::into))
    }

    #[napi(catch_unwind)]
    pub fn info_by_client(&self, host: String, port: u32) -> Result<Option<NativeConnectionInfo>> {
        let info = self
            .inner
            .connection_info_by_client(addr("clientHost", &host, port)?)
            .map_err(err)?;
        Ok(info.map(Into::into))
    }

    #[napi(catch_unwind)]
    pub fn set_tls_config(&self, key_private_pem: String, cert_chain_pem: String) -> Result<()> {
        let tls = keynet_core::TlsConfig {
            key_private_pem,
            cert_chain_pem,
        };
        self.inner.set_tls_config(&tls).map_err(err)
    }
}
