//! The node's side of its public port on a relay: each `TcpOpen` from the relay becomes a TCP
//! connection to the node's local server, carried both ways in `TcpData`/`TcpClose` frames
//! (with half-close: a FIN travels as `TcpClose { reset: false }`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::proto::relay::Frame;
use crate::relay::spec::LinkStatus;
use crate::relay::tcp_frames::{self, ToTcp};
use crate::task::Tasks;

/// Serves the public-port frames arriving on `frames`, answering on `to_relay`, until the task
/// set stops. Every connection is dropped when the link goes down (the relay closed its side).
pub(crate) async fn serve(
    server: SocketAddr,
    mut frames: mpsc::Receiver<Frame>,
    to_relay: mpsc::Sender<Frame>,
    mut status: watch::Receiver<LinkStatus>,
    tasks: Tasks,
) {
    let mut conns: HashMap<u32, mpsc::Sender<ToTcp>> = HashMap::new();
    loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                if !matches!(*status.borrow_and_update(), LinkStatus::Up { .. }) {
                    // Dropping the senders resets those connections.
                    conns.clear();
                }
            }
            f = frames.recv() => {
                let Some(f) = f else { return };
                if let Frame::TcpOpen { conn, client } = f {
                    let (tx, rx) = mpsc::channel(tcp_frames::QUEUE);
                    conns.insert(conn, tx);
                    tasks.spawn(open(server, conn, client, rx, to_relay.clone()));
                } else if let Some((conn, msg)) = tcp_frames::from_frame(f) {
                    let delivered = match conns.get(&conn) {
                        Some(tx) => tcp_frames::deliver(tx, msg).await,
                        None => true,
                    };
                    if !delivered {
                        conns.remove(&conn);
                    }
                }
                conns.retain(|_, tx| !tx.is_closed());
            }
        }
    }
}

/// Connects one public-port client to the local server and carries it.
async fn open(
    server: SocketAddr,
    conn: u32,
    client: SocketAddr,
    from_relay: mpsc::Receiver<ToTcp>,
    to_relay: mpsc::Sender<Frame>,
) {
    let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(server)).await
    {
        Ok(Ok(t)) => t,
        other => {
            tracing::info!(%client, %server, ?other, "public-port client: server unreachable");
            let _ = to_relay.send(Frame::TcpClose { conn, reset: true }).await;
            return;
        }
    };
    tracing::debug!(%client, %server, conn, "public-port client connected");
    tcp_frames::carry(tcp, conn, to_relay, from_relay).await;
}
