//! The node's side of its public port on a relay: each `TcpOpen` from the relay becomes a TCP
//! connection to the node's local server, carried both ways in `TcpData`/`TcpClose` frames
//! (with half-close: a FIN travels as `TcpClose { reset: false }`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::proto::relay::Frame;
use crate::relay::alloc::CHUNK;
use crate::relay::link::LinkStatus;
use crate::task::Tasks;

/// Frames toward one server connection.
type ConnTx = mpsc::Sender<Option<Vec<u8>>>;

/// Serves the public-port frames arriving on `frames`, answering on `to_relay`, until the task
/// set stops. Every connection is dropped when the link goes down (the relay closed its side).
pub async fn serve(
    server: SocketAddr,
    mut frames: mpsc::Receiver<Frame>,
    to_relay: mpsc::Sender<Frame>,
    mut status: watch::Receiver<LinkStatus>,
    tasks: Tasks,
) {
    let mut conns: HashMap<u32, (ConnTx, tokio_util::sync::CancellationToken)> = HashMap::new();
    loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                if !matches!(*status.borrow_and_update(), LinkStatus::Up { .. }) {
                    for (_, (_, kill)) in conns.drain() {
                        kill.cancel();
                    }
                }
            }
            f = frames.recv() => {
                let Some(f) = f else { return };
                match f {
                    Frame::TcpOpen { conn, client } => {
                        let (tx, rx) = mpsc::channel(64);
                        let kill = tokio_util::sync::CancellationToken::new();
                        if let Some((_, old)) = conns.insert(conn, (tx, kill.clone())) {
                            old.cancel();
                        }
                        let to_relay = to_relay.clone();
                        tasks.spawn(async move {
                            tokio::select! {
                                _ = carry(server, conn, client, rx, to_relay) => {}
                                _ = kill.cancelled() => {}
                            }
                        });
                    }
                    Frame::TcpData { conn, data } => {
                        if let Some((tx, _)) = conns.get(&conn) {
                            let _ = tx.send(Some(data)).await;
                        }
                    }
                    Frame::TcpClose { conn, reset } => {
                        if reset {
                            if let Some((_, kill)) = conns.remove(&conn) {
                                kill.cancel();
                            }
                        } else if let Some((tx, _)) = conns.get(&conn) {
                            let _ = tx.send(None).await;
                        }
                    }
                    _ => {}
                }
                conns.retain(|_, (tx, kill)| !tx.is_closed() && !kill.is_cancelled());
            }
        }
    }
}

/// One public-port client, carried to the local server.
async fn carry(
    server: SocketAddr,
    conn: u32,
    client: SocketAddr,
    mut from_relay: mpsc::Receiver<Option<Vec<u8>>>,
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
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; CHUNK];
    let (mut up_open, mut down_open) = (true, true);
    while up_open || down_open {
        tokio::select! {
            n = rd.read(&mut buf), if up_open => match n {
                Ok(0) => {
                    up_open = false;
                    let _ = to_relay.send(Frame::TcpClose { conn, reset: false }).await;
                }
                Ok(n) => {
                    if to_relay.send(Frame::TcpData { conn, data: buf[..n].to_vec() }).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = to_relay.send(Frame::TcpClose { conn, reset: true }).await;
                    return;
                }
            },
            m = from_relay.recv(), if down_open => match m {
                Some(Some(d)) => {
                    if wr.write_all(&d).await.is_err() {
                        let _ = to_relay.send(Frame::TcpClose { conn, reset: true }).await;
                        return;
                    }
                }
                Some(None) => {
                    down_open = false;
                    let _ = wr.shutdown().await;
                }
                None => return,
            },
        }
    }
}
