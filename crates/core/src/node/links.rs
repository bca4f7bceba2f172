//! Wiring a relay link into a node: path changes reach the tracker (and the user as `path`
//! events), link states reach the user as `relay` events, relayed connections close with
//! `relayLost` when the link stays down, and a reverse proxy's public-port traffic goes to its
//! server.

use std::sync::Arc;

use super::Node;
use crate::events::{CloseReason, Event, Path};
use crate::identity::LoadedIdentity;
use crate::options::ConnOptions;
use crate::relay::link::public;
use crate::relay::link::transport::Dialer;
use crate::relay::link::{LinkContext, RelayLink};
use crate::relay::spec::{LinkStatus, RelaySpec};
use crate::socket::KeynetSocket;
use crate::task::Tasks;
use crate::tracker::Tracker;

/// How long relayed connections outlive their relay's link (it may come back): 2 s, or a
/// quarter of the keepalive timeout when that is shorter (the link notices a dead relay at half
/// of it, and the connections must be closed before their own timeout).
fn relay_loss_grace(opts: &ConnOptions) -> std::time::Duration {
    std::time::Duration::from_secs(2).min(opts.keepalive_timeout / 4)
}

/// Applies the path changes of `socket`'s relayed peers to `tracker` (which reports them as
/// `path` events), in a task of the proxy's own: the socket only queues them.
pub(super) fn watch_paths(socket: &KeynetSocket, tracker: &Arc<Tracker>, tasks: &Tasks) {
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

/// Starts a link to `spec` for `node`, registering as `identity`, and wires it.
pub(super) fn attach(node: &Node, spec: RelaySpec, identity: &LoadedIdentity) -> Arc<RelayLink> {
    let link = RelayLink::start(
        spec,
        LinkContext {
            dialer: Dialer {
                endpoint: node.endpoint.clone(),
                identity: identity.clone(),
                opts: node.opts.clone(),
                tasks: node.tasks.clone(),
            },
            socket: node.socket.clone(),
            public: node
                .server
                .map(|server| public::PublicPort::new(server, node.tasks.clone())),
            tracker: Arc::downgrade(&node.tracker),
        },
    );
    // Every state change of the link reaches the user as a `relay` event.
    let mut status = link.watch();
    let tracker = Arc::downgrade(&node.tracker);
    let spec = link.spec().clone();
    node.tasks.spawn(async move {
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
    let tracker = Arc::downgrade(&node.tracker);
    let grace = relay_loss_grace(&node.opts);
    node.tasks.spawn(async move {
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
                    peer.close(CloseReason::RelayLost);
                }
            }
        }
    });
    link
}
