//! One TCP connection carried as `TcpData`/`TcpClose` frames on a relay connection (public
//! ports). Both ends use it: the relay for the public client, the node for its server
//! connection. Half-close travels as `TcpClose { reset: false }`, an abort as `reset: true`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::proto::relay::Frame;

/// Bytes per `TcpData` frame.
pub const CHUNK: usize = 16 * 1024;
/// Frames queued toward one carried connection.
pub const QUEUE: usize = 64;
/// A carried connection that leaves its queue full this long is reset, so one stalled TCP peer
/// cannot hold up the relay connection it shares with everything else.
pub const STALL: Duration = Duration::from_secs(30);

/// What arrives for a carried connection.
#[derive(Debug, PartialEq, Eq)]
pub enum ToTcp {
    /// Bytes to write.
    Data(Vec<u8>),
    /// The other end finished writing.
    Fin,
    /// The other end aborted.
    Reset,
}

/// The connection id and message of a `TcpData`/`TcpClose` frame.
pub fn from_frame(frame: Frame) -> Option<(u32, ToTcp)> {
    match frame {
        Frame::TcpData { conn, data } => Some((conn, ToTcp::Data(data))),
        Frame::TcpClose { conn, reset } => {
            Some((conn, if reset { ToTcp::Reset } else { ToTcp::Fin }))
        }
        _ => None,
    }
}

/// Hands `msg` to a carried connection; false when it is gone or stalled for [`STALL`] (the
/// caller then forgets it, which resets it).
pub async fn deliver(tx: &mpsc::Sender<ToTcp>, msg: ToTcp) -> bool {
    matches!(tokio::time::timeout(STALL, tx.send(msg)).await, Ok(Ok(())))
}

/// Carries `tcp` as connection `conn` until both directions ended: its bytes go out as frames on
/// `out`, what arrives on `inbound` is written to it. A reset, a write error or `inbound`
/// closing aborts it with an RST.
pub async fn carry(
    tcp: TcpStream,
    conn: u32,
    out: mpsc::Sender<Frame>,
    mut inbound: mpsc::Receiver<ToTcp>,
) {
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; CHUNK];
    let (mut up_open, mut down_open) = (true, true);
    let reset = |out: &mpsc::Sender<Frame>| {
        let _ = out.try_send(Frame::TcpClose { conn, reset: true });
    };
    while up_open || down_open {
        tokio::select! {
            n = rd.read(&mut buf), if up_open => {
                let frame = match n {
                    Ok(0) => {
                        up_open = false;
                        Frame::TcpClose { conn, reset: false }
                    }
                    Ok(n) => Frame::TcpData { conn, data: buf[..n].to_vec() },
                    Err(_) => return reset(&out),
                };
                if out.send(frame).await.is_err() {
                    return;
                }
            }
            m = inbound.recv(), if down_open => match m {
                Some(ToTcp::Data(d)) => {
                    if wr.write_all(&d).await.is_err() {
                        return reset(&out);
                    }
                }
                Some(ToTcp::Fin) => {
                    down_open = false;
                    let _ = wr.shutdown().await;
                }
                Some(ToTcp::Reset) | None => {
                    let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(Duration::ZERO));
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_and_half_close_cross_both_ways() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = l.accept().await.unwrap();
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let (in_tx, in_rx) = mpsc::channel(8);
        let carried = tokio::spawn(carry(tcp, 7, out_tx, in_rx));
        peer.write_all(b"up").await.unwrap();
        peer.shutdown().await.unwrap();
        assert_eq!(
            out_rx.recv().await,
            Some(Frame::TcpData {
                conn: 7,
                data: b"up".to_vec()
            })
        );
        assert_eq!(
            out_rx.recv().await,
            Some(Frame::TcpClose {
                conn: 7,
                reset: false
            })
        );
        assert!(deliver(&in_tx, ToTcp::Data(b"down".to_vec())).await);
        assert!(deliver(&in_tx, ToTcp::Fin).await);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"down");
        carried.await.unwrap();
        assert_eq!(
            from_frame(Frame::TcpClose {
                conn: 3,
                reset: true
            }),
            Some((3, ToTcp::Reset))
        );
    }
}
