//! Events to the JS listener.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use super::{NativeAddress, NativeConnectionInfo, NativeRelayStatus};

/// JS `ConnectionEvent`, with its event name in `kind`; `address` events carry
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
            reason: e.reason.map(|r| r.as_str().to_string()),
            previous_path: e.previous_path.map(|p| p.as_str().to_string()),
            addresses,
            relay: e.relay.map(|(spec, st)| NativeRelayStatus::new(&spec, st)),
        };
        let _ = listener.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
    })
}
