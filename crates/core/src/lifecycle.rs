//! What the proxies and the relay do the same way when they start and stop: one start or stop
//! at a time ([`Lifecycle`]), the identity ([`Identities`]), and shutting the QUIC endpoint,
//! connections and tasks down in one order so `stop()` resolves only when everything ended and
//! the UDP port is free.

use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::events::CloseReason;
use crate::identity::{LoadedIdentity, TlsConfig};
use crate::socket::KeynetSocket;
use crate::task::Tasks;
use crate::tracker::Tracker;
use tokio_util::sync::CancellationToken;

/// The start/stop state of a long-lived object: one `start()` or `stop()` at a time, the running
/// state readable at any moment without waiting for either.
pub(crate) struct Lifecycle<R> {
    gate: tokio::sync::Mutex<()>,
    running: RwLock<Option<Arc<R>>>,
}

impl<R> Default for Lifecycle<R> {
    fn default() -> Self {
        Self {
            gate: tokio::sync::Mutex::new(()),
            running: RwLock::new(None),
        }
    }
}

impl<R> Lifecycle<R> {
    /// Runs `start` unless already running; what it returns becomes the running state.
    pub(crate) async fn start(&self, start: impl Future<Output = Result<Arc<R>>>) -> Result<()> {
        let _gate = self.gate.lock().await;
        if self.get().is_some() {
            return Ok(());
        }
        let running = start.await?;
        *self.running.write().expect("running lock") = Some(running);
        Ok(())
    }

    /// Takes the running state out and runs `stop` on it; does nothing when stopped.
    pub(crate) async fn stop<F, Fut>(&self, stop: F) -> Result<()>
    where
        F: FnOnce(Arc<R>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let _gate = self.gate.lock().await;
        if let Some(running) = self.take() {
            stop(running).await;
        }
        Ok(())
    }

    /// The running state, if started.
    pub(crate) fn get(&self) -> Option<Arc<R>> {
        self.running.read().expect("running lock").clone()
    }

    /// Takes the running state out without waiting (the last handle is being dropped).
    pub(crate) fn take(&self) -> Option<Arc<R>> {
        self.running.write().map(|mut r| r.take()).unwrap_or(None)
    }
}

/// A proxy's identities: the one in use, and the one given to `set_tls_config`.
#[derive(Default)]
pub(crate) struct Identities {
    current: RwLock<Option<LoadedIdentity>>,
    configured: RwLock<Option<LoadedIdentity>>,
}

impl Identities {
    /// The identity for a start: the given one, else `set_tls_config`'s, else a fresh one
    /// (an omitted tlsConfig means a new identity).
    pub(crate) fn for_start(&self, given: Option<&TlsConfig>) -> Result<LoadedIdentity> {
        let id = match given {
            Some(tls) => LoadedIdentity::from_tls_config(tls)?,
            None => match self.configured.read().expect("identity lock").clone() {
                Some(id) => id,
                None => LoadedIdentity::generate()?,
            },
        };
        *self.current.write().expect("identity lock") = Some(id.clone());
        Ok(id)
    }

    /// Parses and keeps `tls` for connections opened afterwards and for later starts.
    pub(crate) fn set(&self, tls: &TlsConfig) -> Result<LoadedIdentity> {
        let id = LoadedIdentity::from_tls_config(tls)?;
        *self.configured.write().expect("identity lock") = Some(id.clone());
        *self.current.write().expect("identity lock") = Some(id.clone());
        Ok(id)
    }

    /// The identity in use.
    pub(crate) fn current(&self) -> Option<LoadedIdentity> {
        self.current.read().expect("identity lock").clone()
    }
}

/// How long a hurried `stop()` keeps the socket on its port after closing every connection, so
/// the peers hear of the close (see [`shutdown`]).
const HURRIED_CLOSE_SEND: Duration = Duration::from_millis(250);

/// Ends every connection (reason `stopped`; their tunnels drain for at most `grace`, see
/// [`crate::ending`]), lets them close and their watchers report, then cancels and awaits the
/// remaining tasks. The caller then drops its handles and awaits
/// [`wait_released`].
pub(crate) async fn shutdown(
    endpoint: &quinn::Endpoint,
    tracker: &Tracker,
    tasks: &Tasks,
    grace: Duration,
    hurry: &CancellationToken,
) {
    tracker.end_all(CloseReason::Stopped, hurry).await;
    endpoint.close(0u32.into(), CloseReason::Stopped.as_str().as_bytes());
    // Closing connections (abandoned handshakes too) drain for three PTOs, which on a congested
    // path is seconds: wait at most `grace` (`connEndTime`); the peers were told already, and
    // [`wait_released`] frees the port even if quinn is still draining.
    tokio::select! {
        // Idle first: with nothing left to close, not even a hurried stop waits.
        biased;
        _ = tokio::time::timeout(grace, endpoint.wait_idle()) => {}
        _ = hurry.cancelled() => {
            // Hurried, the socket still stays on its port a moment: a close sent into a burst
            // can be dropped by the peer's full receive buffer, and the peer's next packet (its
            // acknowledgements come within 25 ms) must meet a repeated close or a stateless
            // reset, not a closed port, or it learns of the close only by timing out.
            tokio::time::sleep(grace.min(HURRIED_CLOSE_SEND)).await;
        }
    }
    let _ = tokio::time::timeout(grace, tracker.wait_until(|t| t.count() == 0)).await;
    if !tasks.shutdown(grace + Duration::from_secs(1)).await {
        tracing::warn!("tasks did not end within the grace period");
    }
}

/// Frees the UDP port after `shutdown`. If connections are still draining, moves the socket
/// off its port at once (quinn drains them on an ephemeral loopback socket that nothing
/// reaches, for at most three PTOs: on a congested path that is seconds `stop()` need not wait)
/// and returns `None`; else returns the socket to [`wait_released`] once the caller dropped its
/// handles.
pub(crate) fn release_port(
    endpoint: &quinn::Endpoint,
    socket: &Arc<KeynetSocket>,
) -> Option<Weak<KeynetSocket>> {
    if endpoint.open_connections() > 0 {
        let moved = socket
            .detach_os_socket()
            .and_then(|()| endpoint.rebind_abstract(socket.clone()));
        match moved {
            Ok(()) => return None,
            Err(e) => tracing::warn!(error = %e, "could not move a draining socket off its port"),
        }
    }
    Some(Arc::downgrade(socket))
}

/// Waits (bounded) until quinn's driver dropped the UDP socket, so the port is free. quinn
/// offers no event for that, hence the short poll.
pub(crate) async fn wait_released(socket: Option<Weak<KeynetSocket>>) {
    let Some(socket) = socket else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.strong_count() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!("UDP socket still held 5 s after stop; its port may still be bound");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
