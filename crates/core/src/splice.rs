//! Copies bytes both ways between a TCP socket and a QUIC stream, propagating half-close: a FIN
//! on one side finishes the other side's writing half; a reset or error on either side aborts
//! both (the TCP socket is reset, the QUIC stream is reset and stopped). When the connection
//! ends on purpose the tunnel drains or flushes instead (see [`crate::ending`]).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::ending::EndSignals;
use crate::node::stats::Counters;

/// Bytes one TCP read takes at first (one allocation, handed to quinn whole).
const BUF: usize = 64 * 1024;
/// Most bytes one TCP read takes: a sender that keeps filling [`BUF`] is read in reads up to
/// this size, so a bulk transfer costs a quarter of the reads. Measured (256 MiB, A/B in one
/// batch): bulk CPU down, throughput up; 512 KiB was worse than 256 KiB.
const BIG_BUF: usize = 256 * 1024;
/// Most received chunks (about one QUIC packet each) written to TCP in one `writev`.
const CHUNKS: usize = 32;

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
    end: &EndSignals,
) -> std::io::Result<Moved> {
    let _ = tcp.set_nodelay(true);
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let sent_all = AtomicBool::new(false);
    let copy = copy_both(
        Halves {
            tcp_r: &mut tcp_r,
            tcp_w: &mut tcp_w,
            send: &mut send,
            recv: &mut recv,
        },
        prefix,
        &sent_all,
        counters,
        end,
    );
    // A direction blocked on its TCP end (one that reads nothing) would not notice the
    // connection's close: the close ends it.
    let result = tokio::select! {
        r = copy => r,
        _ = end.closed.cancelled() => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the connection closed",
        )),
    };
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

/// The four ends a splice moves bytes between.
struct Halves<'a> {
    tcp_r: &'a mut tokio::net::tcp::OwnedReadHalf,
    tcp_w: &'a mut tokio::net::tcp::OwnedWriteHalf,
    send: &'a mut quinn::SendStream,
    recv: &'a mut quinn::RecvStream,
}

async fn copy_both(
    h: Halves<'_>,
    prefix: &[u8],
    sent_all: &AtomicBool,
    counters: &Counters,
    end: &EndSignals,
) -> std::io::Result<Moved> {
    let Halves {
        tcp_r,
        tcp_w,
        send,
        recv,
    } = h;
    let up = async {
        let mut total = 0u64;
        if !prefix.is_empty() {
            send.write_all(prefix)
                .await
                .map_err(std::io::Error::other)?;
            total += prefix.len() as u64;
            counters.sent(prefix.len());
        }
        let mut draining = false;
        let mut size = BUF;
        loop {
            // No buffer while waiting: an idle tunnel holds none (see `read_chunk`).
            let chunk = if draining {
                // Only what the TCP end had sent before the end (its sender can hold the end
                // off no longer than `connEndTime`: then the connection closes).
                try_read_chunk(tcp_r)?
            } else {
                tokio::select! {
                    biased;
                    _ = end.drain.cancelled() => {
                        draining = true;
                        continue;
                    }
                    chunk = read_chunk(tcp_r, &mut size) => chunk?,
                }
            };
            let Some(chunk) = chunk else {
                send.finish().map_err(std::io::Error::other)?;
                sent_all.store(true, Ordering::Relaxed);
                break;
            };
            let n = chunk.len();
            // Handed to quinn as is: no copy into its send buffer. A flush gives up on it
            // (the peer is gone).
            tokio::select! {
                biased;
                _ = end.flush.cancelled() => {
                    // Bytes read from TCP that cannot be sent: the stream must not end
                    // cleanly (quinn finishes a dropped stream), the peer is told they are lost.
                    let _ = send.reset(ABORTED.into());
                    sent_all.store(true, Ordering::Relaxed);
                    return Ok(total);
                }
                written = send.write_chunk(chunk) => written.map_err(std::io::Error::other)?,
            }
            total += n as u64;
            counters.sent(n);
        }
        // Until the peer acknowledged all of it: a connection closed once its tunnels ended
        // must not discard a tail still in flight.
        tokio::select! {
            _ = send.stopped() => {}
            _ = end.flush.cancelled() => {}
        }
        Ok::<_, std::io::Error>(total)
    };
    let down = async {
        let mut total = 0u64;
        // quinn's own buffers, written out as they are (one writev for what is ready): no
        // copy into one of ours, and none held while the tunnel is idle.
        let mut chunks: [Bytes; CHUNKS] = Default::default();
        let mut flushing = false;
        loop {
            let read = if flushing {
                // The peer is gone: only what already arrived.
                futures_lite::future::poll_once(recv.read_chunks(&mut chunks))
                    .await
                    .unwrap_or(Ok(None))
            } else {
                tokio::select! {
                    biased;
                    read = recv.read_chunks(&mut chunks) => read,
                    _ = end.flush.cancelled() => {
                        flushing = true;
                        continue;
                    }
                }
            };
            match read.map_err(std::io::Error::other)? {
                Some(n) => {
                    let bytes = write_all_chunks(tcp_w, &chunks[..n]).await?;
                    total += bytes as u64;
                    counters.received(bytes);
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

/// Writes every chunk, in as few `writev` calls as the socket allows; returns the bytes written.
async fn write_all_chunks(
    tcp: &mut tokio::net::tcp::OwnedWriteHalf,
    chunks: &[Bytes],
) -> std::io::Result<usize> {
    let mut slices = [std::io::IoSlice::new(&[]); CHUNKS];
    for (slot, c) in slices.iter_mut().zip(chunks) {
        *slot = std::io::IoSlice::new(c);
    }
    let mut left = &mut slices[..chunks.len().min(CHUNKS)];
    let mut total = 0;
    while !left.is_empty() {
        let n = tcp.write_vectored(left).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += n;
        std::io::IoSlice::advance_slices(&mut left, n);
    }
    Ok(total)
}

/// The next bytes `tcp` has, as a buffer of their own; `None` at end of stream. Waits for
/// readiness before allocating, so a tunnel waiting for data holds no buffer. `size` is the
/// read's size, grown up to [`BIG_BUF`] while reads fill it and back to [`BUF`] when one
/// does not.
async fn read_chunk(
    tcp: &tokio::net::tcp::OwnedReadHalf,
    size: &mut usize,
) -> std::io::Result<Option<Bytes>> {
    loop {
        tcp.readable().await?;
        let mut buf = Vec::with_capacity(*size);
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                *size = if n == buf.capacity() {
                    (*size * 2).min(BIG_BUF)
                } else {
                    BUF
                };
                return Ok(Some(held_as_read(buf)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What `tcp` has already received, without waiting; `None` if nothing (or its end).
fn try_read_chunk(tcp: &tokio::net::tcp::OwnedReadHalf) -> std::io::Result<Option<Bytes>> {
    let mut buf = Vec::with_capacity(BUF);
    match tcp.try_read_buf(&mut buf) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(held_as_read(buf))),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// A read's buffer as quinn will hold it until the bytes are acknowledged: one that is less than
/// half full is shrunk to its length first (glibc's `realloc` shrinks in place, no copy), so
/// quinn never holds more than twice the memory it accounts for.
fn held_as_read(mut buf: Vec<u8>) -> Bytes {
    if buf.len() < buf.capacity() / 2 {
        buf.shrink_to_fit();
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_read_is_held_at_its_length_and_a_full_one_as_it_is() {
        let mut short = Vec::with_capacity(BUF);
        short.extend_from_slice(&[7u8; 100]);
        let held = held_as_read(short);
        assert_eq!(&held[..], &[7u8; 100][..]);
        // Back as the Vec quinn's bytes keep alive (bytes hands a unique buffer back whole).
        let back: Vec<u8> = held.into();
        assert!(back.capacity() < BUF / 2, "capacity {}", back.capacity());

        let mut most = Vec::with_capacity(BUF);
        most.extend_from_slice(&vec![1u8; BUF * 3 / 4]);
        assert_eq!(held_as_read(most).len(), BUF * 3 / 4);
    }
}
