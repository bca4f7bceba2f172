//! A UDP socket for quinn without quinn-udp's extras (ECN, packet info, don't-fragment, segment
//! offload): one datagram per system call through tokio's socket. It is the fallback where the
//! system refuses those socket options (wine's Winsock refuses them, so may older or locked-down
//! systems), and it is chosen outright with `UdpTuning::portable`. QUIC works without them:
//! ECN and packet info are hints, and quinn probes the path MTU on its own.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// A bound UDP socket registered with the current tokio runtime.
pub(crate) struct PlainUdp {
    io: tokio::net::UdpSocket,
}

impl fmt::Debug for PlainUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainUdp")
            .field("local", &self.io.local_addr().ok())
            .finish()
    }
}

impl PlainUdp {
    /// Wraps `socket`; call it inside the tokio runtime that will drive it.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            io: tokio::net::UdpSocket::from_std(socket)?,
        })
    }
}

/// Logs the first send error that is not back-pressure; later ones go to debug. Like quinn-udp,
/// a failed send is not fatal to the endpoint: QUIC retransmits, and one unreachable peer must
/// not end the connections to the others.
fn log_send_error(to: SocketAddr, e: &io::Error) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(%to, error = %e, "udp send failed (further ones are logged at debug)");
    } else {
        tracing::debug!(%to, error = %e, "udp send failed");
    }
}

impl AsyncUdpSocket for PlainUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for (i, datagram) in transmit.contents.chunks(size).enumerate() {
            match self.io.try_send_to(datagram, transmit.destination) {
                Ok(_) => {}
                // Nothing sent yet: quinn waits for the socket and tries again. Part of a batch
                // sent: the rest is lost like any datagram, and QUIC recovers it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if i == 0 { Err(e) } else { Ok(()) };
                }
                Err(e) => {
                    log_send_error(transmit.destination, &e);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut read = tokio::io::ReadBuf::new(buf);
        let addr = ready!(self.io.poll_recv_from(cx, &mut read))?;
        let len = read.filled().len();
        *m = RecvMeta {
            addr,
            len,
            stride: len,
            ecn: None,
            dst_ip: None,
        };
        Poll::Ready(Ok(1))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        // Don't-fragment was not set: a datagram too large for the path may be fragmented.
        true
    }
}

/// Waits for the socket to become writable for one sender (quinn keeps one per connection).
struct Writable {
    socket: Arc<PlainUdp>,
    waiting: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let socket = &this.socket;
        let waiting = this.waiting.get_or_insert_with(|| {
            let socket = socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let result = waiting.as_mut().poll(cx);
        if result.is_ready() {
            this.waiting = None;
        }
        result
    }
}
