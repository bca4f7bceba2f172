//! `NativeReverseProxy`: the binding of keynet-core's ReverseProxy.

use keynet_core::ReverseProxy;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::convert::{
    self, addr, err, target, Listener, NativeAddress, NativeConnectionInfo, NativeFound,
    NativeLocated, NativeOptions, NativeRelayStatus, NativeReverseStart, Ops,
};

#[napi]
pub struct NativeReverseProxy {
    inner: ReverseProxy,
    ops: Ops,
}

#[napi]
impl NativeReverseProxy {
    #[napi(constructor, catch_unwind)]
    pub fn new(options: Option<NativeOptions>) -> Result<Self> {
        let opts = options.unwrap_or_default().into_core();
        Ok(Self {
            inner: ReverseProxy::new(opts).map_err(err)?,
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
    pub async fn start(&self, start: NativeReverseStart, op_id: Option<u32>) -> Result<()> {
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

    /// Starts offering a service name.
    #[napi(catch_unwind)]
    pub fn announce_service(&self, offer: crate::convert::NativeServiceOffer) -> Result<()> {
        self.inner.announce_service(offer.into_core()?).map_err(err)
    }

    /// Stops offering a service name; false when it was not offered.
    #[napi(catch_unwind)]
    pub fn withdraw_service(&self, name: String) -> Result<bool> {
        self.inner.withdraw_service(&name).map_err(err)
    }

    /// The service names offered now.
    #[napi(catch_unwind)]
    pub fn services(&self) -> Result<Vec<String>> {
        self.inner.services().map_err(err)
    }

    #[napi]
    /// Stops; an abort of `op_id` cuts the drain short.
    pub async fn stop(&self, op_id: Option<u32>) -> Result<()> {
        let hurry = self.ops.token(op_id).unwrap_or_default();
        self.inner.stop_hurried(&hurry).await.map_err(err)
    }

    /// The home relay link's status (null without a relay).
    #[napi(catch_unwind)]
    pub fn relay_status(&self) -> Result<Option<NativeRelayStatus>> {
        let status = self.inner.relay_status().map_err(err)?;
        Ok(status.map(|(spec, st)| NativeRelayStatus::new(&spec, st)))
    }

    /// Every relay link's status, with which is home.
    #[napi(catch_unwind)]
    pub fn relays_status(&self) -> Result<Vec<NativeRelayStatus>> {
        let (all, home) = self.inner.relays_status().map_err(err)?;
        Ok(all
            .into_iter()
            .map(|(spec, st)| {
                let mut s = NativeRelayStatus::new(&spec, st);
                s.home = Some(Some(spec.node_id) == home);
                s
            })
            .collect())
    }

    #[napi(catch_unwind)]
    pub fn node_id(&self) -> Result<String> {
        self.inner.node_id().map(|n| n.to_string()).map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn ingress_host(&self) -> Result<String> {
        self.inner
            .ingress_addr()
            .map(|a| a.ip().to_string())
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn ingress_port(&self) -> Result<u32> {
        self.inner
            .ingress_addr()
            .map(|a| a.port() as u32)
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn server_host(&self) -> Result<String> {
        self.inner
            .server_addr()
            .map(|a| a.ip().to_string())
            .map_err(err)
    }

    #[napi(catch_unwind)]
    pub fn server_port(&self) -> Result<u32> {
        self.inner
            .server_addr()
            .map(|a| a.port() as u32)
            .map_err(err)
    }

    /// Punches toward a forward proxy until its connection arrives; resolves whether it did.
    #[napi]
    pub async fn punch(
        &self,
        host: String,
        port: u32,
        attempts: u32,
        timeout_ms: Option<f64>,
        op_id: Option<u32>,
    ) -> Result<bool> {
        let target = target("egressHost", &host, port)?;
        let token = self.ops.token(op_id);
        self.inner
            .punch_toward(target, attempts, timeout_ms.map(convert::ms), token)
            .await
            .map_err(err)
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
            .close_connection_hurried(target("egressHost", &host, port)?, &hurry)
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

    /// Changes which node ids may connect (none: any).
    #[napi(catch_unwind)]
    pub fn set_allowed_node_ids(&self, ids: Option<Vec<String>>) -> Result<()> {
        let ids = ids
            .map(|ids| {
                ids.into_iter()
                    .map(|s| convert::node_id(Some(s)).map(|o| o.expect("some in, some out")))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        self.inner.set_allowed_node_ids(ids).map_err(err)
    }

    /// Every live connection.
    #[napi(catch_unwind)]
    pub fn connections(&self) -> Result<Vec<NativeConnectionInfo>> {
        let all = self.inner.connections().map_err(err)?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    #[napi(catch_unwind)]
    pub fn info_by_egress(&self, host: String, port: u32) -> Result<Option<NativeConnectionInfo>> {
        let info = self
            .inner
            .connection_info_by_egress(target("egressHost", &host, port)?)
            .map_err(err)?;
        Ok(info.map(Into::into))
    }

    #[napi(catch_unwind)]
    pub fn info_by_proxy(&self, host: String, port: u32) -> Result<Option<NativeConnectionInfo>> {
        let info = self
            .inner
            .connection_info_by_proxy(addr("proxyHost", &host, port)?)
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
