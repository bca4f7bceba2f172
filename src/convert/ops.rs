//! Cancellable operations (`AbortSignal`s) of one proxy.

/// Cancellable operations of one proxy, by the id index.js gave them. index.js registers each
/// (`beginOp`) before the call and forgets it (`endOp`) when the call settled, whatever the
/// outcome: the calls themselves only read their token.
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
    pub(crate) fn end(&self, id: u32) {
        self.0.lock().expect("ops lock").remove(&id);
    }
}
