//! One UDP socket per proxy, shared by quinn and by punch datagrams. [`KeynetSocket`] wraps
//! quinn's socket and takes punch datagrams out of what quinn receives; it can send punch
//! datagrams from the same port, which is what opens NAT mappings for the QUIC packets.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;

use crate::error::Result;

/// A punch datagram. QUIC packets always have the fixed bit (0x40) of their first byte set (we
/// turn off RFC 9287 greasing on our endpoints), so a first byte of 0 can never be QUIC.
pub const PUNCH: [u8; 8] = [0x00, b'K', b'N', b'P', 1, 1, 0, 0];

/// Whether a datagram is a keynet punch datagram.
pub fn is_punch(datagram: &[u8]) -> bool {
    datagram.len() == PUNCH.len() && datagram[0] & 0x40 == 0 && datagram[1..4] == PUNCH[1..4]
}

/// quinn's UDP socket with punch datagrams demultiplexed out.
pub struct KeynetSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    punches: Mutex<HashMap<SocketAddr, Instant>>,
    punch_seen: Notify,
}

impl fmt::Debug for KeynetSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeynetSocket")
            .field("local", &self.inner.local_addr().ok())
            .finish()
    }
}

impl KeynetSocket {
    /// Sends one punch datagram to `to` (fire and forget: a full send buffer drops it).
    pub fn send_punch(&self, to: SocketAddr) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &PUNCH,
            segment_size: None,
            src_ip: None,
        };
        if let Err(e) = self.inner.try_send(&transmit) {
            tracing::trace!(%to, error = %e, "punch datagram not sent");
        }
    }

    /// When a punch datagram from `from` was last received.
    pub fn last_punch_from(&self, from: &SocketAddr) -> Option<Instant> {
        self.punches.lock().expect("punch map").get(from).copied()
    }

    /// Resolves when the next punch datagram arrives (from anyone).
    pub async fn punch_received(&self) {
        self.punch_seen.notified().await
    }

    fn record_punch(&self, from: SocketAddr) {
        let mut map = self.punches.lock().expect("punch map");
        if map.len() > 4096 {
            // Bound the memory a flood of spoofed sources can take.
            let cutoff = Instant::now() - std::time::Duration::from_secs(60);
            map.retain(|_, t| *t > cutoff);
        }
        map.insert(from, Instant::now());
        drop(map);
        self.punch_seen.notify_waiters();
    }
}

impl AsyncUdpSocket for KeynetSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut any_quic = false;
            for (m, buf) in meta.iter_mut().zip(bufs.iter_mut()).take(n) {
                let stride = m.stride.max(1);
                // Walk the (GRO) segments, keeping QUIC ones, compacting punches out.
                let (mut read, mut write) = (0, 0);
                while read < m.len {
                    let end = (read + stride).min(m.len);
                    if is_punch(&buf[read..end]) {
                        self.record_punch(m.addr);
                    } else {
                        if write != read {
                            buf.copy_within(read..end, write);
                        }
                        write += end - read;
                    }
                    read = end;
                }
                m.len = write;
                any_quic |= write > 0;
            }
            if any_quic {
                return Poll::Ready(Ok(n));
            }
            // Only punches arrived: read again (the inner socket registers the waker if empty).
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Binds a UDP socket at `addr` and builds a quinn endpoint on it (server role if
/// `server_config` is given). Returns the endpoint and the socket for punching.
pub fn bind(
    addr: SocketAddr,
    server_config: Option<quinn::ServerConfig>,
) -> Result<(quinn::Endpoint, Arc<KeynetSocket>)> {
    let std_socket = std::net::UdpSocket::bind(addr)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let inner = runtime.wrap_udp_socket(std_socket)?;
    let socket = Arc::new(KeynetSocket {
        inner,
        punches: Mutex::new(HashMap::new()),
        punch_seen: Notify::new(),
    });
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, server_config, socket.clone(), runtime)?;
    Ok((endpoint, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punch_is_never_quic() {
        assert!(is_punch(&PUNCH));
        assert_eq!(PUNCH[0] & 0x40, 0);
        let mut quic = PUNCH;
        quic[0] |= 0x40;
        assert!(!is_punch(&quic));
        assert!(!is_punch(&PUNCH[..7]));
    }
}
