//! Wiring a relay link into a proxy: path changes reach the tracker (and the user as `path`
//! events), relayed connections close with `relayLost` when the link goes down, and a reverse
//! proxy's public-port traffic goes to its server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::endpoint::KeynetSocket;
use crate::error::Result;
use crate::events::{Event, Path};
use crate::identity::LoadedIdentity;
use crate::options::ConnOptions;
use crate::relay::link::{LinkContext, LinkStatus, RelayLink, RelaySpec};
use crate::relay::public;
use crate::task::Tasks;
use crate::tracker::{reason, Tracker};

/// How long relayed connections outlive their relay's link (it may come back): 2 s, or a
/// quarter of the keepalive timeout when that is shorter (the link notices a dead relay at half
/// of it, and the connections must be closed before their own timeout).
fn relay_loss_grace(opts: &ConnOptions) -> std::time::Duration {
    std::time::Duration::from_secs(2).min(opts.keepalive_timeout / 4)
}

/// What a proxy hands to [`attach`].
pub struct ProxyParts<'a> {
    /// The proxy's endpoint.
    pub endpoint: &'a quinn::Endpoint,
    /// The proxy's socket.
    pub socket: &'a Arc<KeynetSocket>,
    /// The proxy's identity.
    pub identity: &'a LoadedIdentity,
    /// Connection timing.
    pub opts: &'a ConnOptions,
    /// The proxy's tasks.
    pub tasks: &'a Tasks,
    /// The proxy's tracker.
    pub tracker: &'a Arc<Tracker>,
    /// The reverse proxy's server (public-port clients go there).
    pub server: Option<SocketAddr>,
}

/// Applies the path changes of `socket`'s relayed peers to `tracker` (which reports them as
/// `path` events), in a task of the proxy's own: the socket only queues them.
pub fn watch_paths(socket: &KeynetSocket, tracker: &Arc<Tracker>, tasks: &Tasks) {
    let Some(mut changes) = socket.paths.take_changes() else {
        return;
    };
    let weak = Arc::downgrade(tracker);
    tasks.spawn(async move {
        while let Some(change) = changes.recv().await {
            let Some(t) = weak.upgrade() else { return };
            t.set_path(change);
        }
    });
}

/// Starts a link to `spec` for a proxy and wires it.
pub fn attach(spec: RelaySpec, p: ProxyParts<'_>) -> Arc<RelayLink> {
    let (tcp_tx, tcp_rx) = mpsc::channel(256);
    let link = RelayLink::start(
        spec,
        LinkContext {
            endpoint: p.endpoint.clone(),
            socket: p.socket.clone(),
            identity: p.identity.clone(),
            opts: p.opts.clone(),
            tasks: p.tasks.clone(),
            tcp: p.server.map(|_| tcp_tx),
        },
    );
    if let Some(server) = p.server {
        p.tasks.spawn(public::serve(
            server,
            tcp_rx,
            link.sender(),
            link.watch(),
            p.tasks.clone(),
        ));
    }
    // Every state change of the link reaches the user as a `relay` event.
    let mut status = link.watch();
    let tracker = Arc::downgrade(p.tracker);
    let spec = link.spec().clone();
    p.tasks.spawn(async move {
        while status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            let Some(t) = tracker.upgrade() else { return };
            t.send(Event::relay((spec.clone(), now)));
        }
    });
    // Relayed connections cannot outlive their relay: once it has been gone for a grace period
    // (a rendezvous in flight may still move them off it, a quick relay restart lets them go
    // on), close those still relayed with a clear reason.
    let mut status = link.watch();
    let tracker = Arc::downgrade(p.tracker);
    let grace = relay_loss_grace(p.opts);
    p.tasks.spawn(async move {
        while status.changed().await.is_ok() {
            if !matches!(*status.borrow_and_update(), LinkStatus::Down(..)) {
                continue;
            }
            let back = tokio::time::timeout(grace, async {
                while status.changed().await.is_ok() {
                    if matches!(*status.borrow_and_update(), LinkStatus::Up { .. }) {
                        return;
                    }
                }
                std::future::pending::<()>().await
            })
            .await;
            if back.is_ok() {
                continue;
            }
            let Some(t) = tracker.upgrade() else { return };
            for peer in t.peers() {
                if peer.is_relay_backed() && peer.path() == Path::Relayed {
                    peer.close(reason::RELAY_LOST);
                }
            }
        }
    });
    link
}

/// What a proxy's `start()` does about relays: routes path changes to its tracker, and with a
/// `relay` option starts the link and waits for its first registration (bounded by
/// `connConnectTime`; the first failure fails the start). On failure the proxy's tasks (the
/// link's among them) are shut down and its endpoint closed, so nothing is left behind.
pub async fn for_start(
    spec: Option<RelaySpec>,
    p: ProxyParts<'_>,
) -> Result<Option<Arc<RelayLink>>> {
    watch_paths(p.socket, p.tracker, p.tasks);
    let Some(spec) = spec else {
        return Ok(None);
    };
    let (endpoint, tasks) = (p.endpoint.clone(), p.tasks.clone());
    let deadline = Instant::now() + p.opts.connect_time;
    let link = attach(spec, p);
    if let Err(e) = link.wait_up(deadline, true).await {
        endpoint.close(0u32.into(), b"start failed");
        tasks.shutdown(std::time::Duration::from_secs(1)).await;
        return Err(e);
    }
    Ok(Some(link))
}
