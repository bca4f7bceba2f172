//! Copies bytes both ways between a TCP socket and a QUIC stream, propagating half-close: a FIN
//! on one side finishes the other side's writing half; a reset or error on either side aborts
//! both (the TCP socket is reset, the QUIC stream is reset and stopped).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::node::stats::Counters;

const BUF: usize = 64 * 1024;
/// QUIC application error code for an aborted tunnel.
pub(crate) const ABORTED: u32 = 1;

/// Bytes moved by a finished splice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    /// From the TCP socket into the QUIC stream.
    pub tcp_to_quic: u64,
    /// From the QUIC stream into the TCP socket.
    pub quic_to_tcp: u64,
}

/// Splices `tcp` and the stream until both directions ended. `prefix` is written into the
/// stream first (bytes the client sent right behind its request head). On an error the TCP
/// socket is reset (RST) and the stream reset, so neither end mistakes it for a clean end.
pub(crate) async fn splice(
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    prefix: &[u8],
    counters: &Counters,
) -> std::io::Result<Moved> {
    let _ = tcp.set_nodelay(true);
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let sent_all = AtomicBool::new(false);
    let result = copy_both(
        &mut tcp_r, &mut tcp_w, &mut send, &mut recv, prefix, &sent_all, counters,
    )
    .await;
    if let Err(e) = &result {
        tracing::debug!(error = %e, "tunnel aborted");
        // A direction that already ended cleanly keeps its tail: resetting a finished stream
        // would discard data still in flight (e.g. a server's last response before it closed).
        if !sent_all.load(Ordering::Relaxed) {
            let _ = send.reset(ABORTED.into());
        }
        let _ = recv.stop(ABORTED.into());
        if let Ok(tcp) = tcp_r.reunite(tcp_w) {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    result
}

async fn copy_both(
    tcp_r: &mut tokio::net::tcp::OwnedReadHalf,
    tcp_w: &mut tokio::net::tcp::OwnedWriteHalf,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    prefix: &[u8],
    sent_all: &AtomicBool,
    counters: &Counters,
) -> std::io::Result<Moved> {
    let up = async {
        let mut total = 0u64;
        if !prefix.is_empty() {
            send.write_all(prefix)
                .await
                .map_err(std::io::Error::other)?;
            total += prefix.len() as u64;
            counters.sent(prefix.len());
        }
        let mut buf = vec![0u8; BUF];
        loop {
            let n = tcp_r.read(&mut buf).await?;
            if n == 0 {
                send.finish().map_err(std::io::Error::other)?;
                sent_all.store(true, Ordering::Relaxed);
                return Ok::<_, std::io::Error>(total);
            }
            send.write_all(&buf[..n])
                .await
                .map_err(std::io::Error::other)?;
            total += n as u64;
            counters.sent(n);
        }
    };
    let down = async {
        let mut total = 0u64;
        let mut buf = vec![0u8; BUF];
        loop {
            match recv.read(&mut buf).await.map_err(std::io::Error::other)? {
                Some(n) => {
                    tcp_w.write_all(&buf[..n]).await?;
                    total += n as u64;
                    counters.received(n);
                }
                None => {
                    tcp_w.shutdown().await?;
                    return Ok::<_, std::io::Error>(total);
                }
            }
        }
    };
    let (tcp_to_quic, quic_to_tcp) = tokio::try_join!(up, down)?;
    Ok(Moved {
        tcp_to_quic,
        quic_to_tcp,
    })
}
