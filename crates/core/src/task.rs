//! The one spawn path: every background task belongs to a [`Tasks`] set that is cancelled and
//! awaited by its owner's `stop()`.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of tasks owned by one object.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The runtime the set was made on: a task spawned from outside it (a synchronous call
    /// from JS, e.g. `removeConnection`) still runs there.
    runtime: Option<tokio::runtime::Handle>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl Tasks {
    /// A fresh, running set, on the current runtime.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `fut`; it is dropped when the set is cancelled.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let task = async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        };
        // The spawner's span goes along: a proxy's log route reaches every task it started.
        let task = tracing::Instrument::in_current_span(task);
        match &self.runtime {
            Some(rt) => drop(self.tracker.spawn_on(task, rt)),
            None => drop(self.tracker.spawn(task)),
        }
    }

    /// The token cancelled on shutdown (for loops that want to finish their own way).
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether shutdown has begun.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels every task and waits up to `grace` for them to end; returns whether all ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Awaits every future of `futs` side by side (the DHT puts and gets of one step, the ends of
/// every connection).
pub(crate) async fn join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
