//! One UDP socket per proxy, shared by quinn and by punch datagrams. [`KeynetSocket`] wraps
//! quinn's socket, takes punch datagrams out of what quinn receives and hands them to the punch
//! session registered for their source address; it sends punch datagrams from the same port,
//! which is what opens NAT mappings for the QUIC packets that follow. It owns the routing table
//! of relayed peers ([`paths`]) and the punch sessions.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

pub mod buffers;
pub mod mtu;
pub mod paths;
mod plain;
mod route;
mod via;

pub(crate) use via::for_family;
pub use via::ViaGuard;

use crate::addr::canonical;
use crate::error::Result;
use crate::options::UdpTuning;
use crate::proto::{channel, punch};
use paths::{Hop, Paths};

/// What a relay does with the channel datagrams nodes send it (`proto::channel`): those of one
/// receive from one source, segments of `stride` bytes (the last may be shorter), which it may
/// rewrite in place. Called on the receive path, so it must not block.
pub type ChannelSink = Box<dyn Fn(SocketAddr, &mut [u8], usize) + Send + Sync>;

/// Punch datagrams queued per session before further ones are dropped (they repeat anyway).
const SESSION_QUEUE: usize = 64;
/// Punch datagrams from addresses no session punches, kept for the rendezvous that listen for
/// them before older ones are dropped.
const STRAYS: usize = 64;

/// A punch datagram from an address no session punches: its source and bytes.
pub type Stray = (SocketAddr, [u8; punch::LEN]);

/// Where the punch datagrams of one peer address go: the session's id and its queue.
type SessionSlot = (u64, mpsc::Sender<[u8; punch::LEN]>);

/// The OS socket under a [`KeynetSocket`], with its family read once (not per datagram).
#[derive(Clone)]
struct OsSocket {
    io: Arc<dyn AsyncUdpSocket>,
    v6: bool,
}

impl OsSocket {
    /// Registers `socket` with the reactor of `rt` (callers may be outside any runtime: a
    /// synchronous `networkChanged()` from JS).
    fn wrap(
        socket: std::net::UdpSocket,
        rt: &tokio::runtime::Handle,
        udp: &UdpTuning,
    ) -> io::Result<Self> {
        let v6 = socket.local_addr()?.is_ipv6();
        buffers::size((&socket).into(), udp.buffer);
        // GRO goes off after quinn-udp's setup, which turns it on: keep a handle to the socket.
        let handle = if udp.segment_offload {
            None
        } else {
            Some(socket2::SockRef::from(&socket).try_clone()?)
        };
        let _in_runtime = rt.enter();
        let io: Arc<dyn AsyncUdpSocket> = if udp.portable {
            Arc::new(plain::PlainUdp::new(socket)?)
        } else {
            // quinn-udp sets its options (ECN, packet info, don't-fragment) or fails; where the
            // system refuses them, the plain socket carries QUIC without them.
            let spare = socket.try_clone()?;
            match quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket) {
                Ok(io) => io,
                Err(e) => {
                    refused_options(&e);
                    Arc::new(plain::PlainUdp::new(spare)?)
                }
            }
        };
        if let Some(handle) = &handle {
            buffers::disable_gro(handle.into());
        }
        Ok(Self { io, v6 })
    }

    /// `to` in this socket's address family (an IPv6 socket sends to IPv4 peers as mapped
    /// addresses).
    fn for_socket(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => to,
        }
    }
}

/// Logs, once per process, that the system refused quinn-udp's socket options.
fn refused_options(e: &io::Error) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        tracing::warn!(
            error = %e,
            "the system refused the UDP socket options for ECN, packet info and segment offload: \
             sockets run without them (one datagram per system call)"
        );
    });
}

/// The local address the kernel would send from toward `to`: a route lookup on an unbound
/// UDP socket, no packet sent. `None` without a route.
pub fn route_source(to: SocketAddr) -> Option<std::net::IpAddr> {
    Some(route::probe(to)?.local_addr().ok()?.ip())
}

/// quinn's UDP socket with punch datagrams demultiplexed out.
pub struct KeynetSocket {
    /// The OS socket; replaced when the network changed and its address is gone.
    inner: RwLock<OsSocket>,
    /// The runtime the socket's I/O is registered with (a replacement registers there too).
    rt: tokio::runtime::Handle,
    sessions: Mutex<HashMap<SocketAddr, SessionSlot>>,
    next_session: std::sync::atomic::AtomicU64,
    /// Punches from unknown sources: a peer behind a NAT that maps per destination punches from
    /// a port the relay never saw ([`KeynetSocket::strays`]).
    strays: tokio::sync::broadcast::Sender<Stray>,
    /// Peers reached through a relay (virtual addresses) and their current paths.
    pub paths: Paths,
    /// Peer addresses whose datagrams leave from a socket of their own ([`via`]).
    vias: via::Vias,
    /// Kernel settings, for a replacement socket and for vias too.
    udp: UdpTuning,
    /// Hard-NAT punches running at once (each holds up to 256 extra sockets, or sprays 2048
    /// probes): [`BIRTHDAYS`].
    birthdays: tokio::sync::Semaphore,
    /// When each peer's last hard-NAT punch started.
    birthday_last: Mutex<HashMap<crate::nodeid::NodeId, std::time::Instant>>,
    /// A relay's handler of channel datagrams from nodes (unset on a node: it drops them).
    channel_sink: std::sync::OnceLock<ChannelSink>,
}

/// Hard-NAT punches a node runs at once; more wait for a later rendezvous.
pub const BIRTHDAYS: usize = 2;
/// A node tries a hard-NAT punch with one peer at most this often (a peer asking for
/// rendezvous again and again cannot keep it spraying or holding sockets).
pub const BIRTHDAY_SPACING: std::time::Duration = std::time::Duration::from_secs(20);
/// Peers whose last hard-NAT punch is remembered (for [`BIRTHDAY_SPACING`]).
const BIRTHDAY_PEERS: usize = 1024;

impl fmt::Debug for KeynetSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeynetSocket")
            .field("local", &self.inner().local_addr().ok())
            .finish()
    }
}

/// Punch datagrams arriving from one address, while the session lives.
pub struct PunchSession {
    socket: Arc<KeynetSocket>,
    peer: SocketAddr,
    id: u64,
    /// Datagrams from `peer`.
    pub rx: mpsc::Receiver<[u8; punch::LEN]>,
}

impl Drop for PunchSession {
    fn drop(&mut self) {
        let mut map = self.socket.sessions.lock().expect("sessions lock");
        if map.get(&self.peer).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.peer);
        }
    }
}

impl KeynetSocket {
    fn os(&self) -> OsSocket {
        self.inner.read().expect("socket lock").clone()
    }

    fn inner(&self) -> Arc<dyn AsyncUdpSocket> {
        self.os().io
    }

    /// Moves to a fresh OS socket (the old one's address is gone). The caller then tells the
    /// endpoint (`rebind_abstract`), so quinn's connections register with the new one.
    pub fn replace_os_socket(&self, socket: std::net::UdpSocket) -> io::Result<()> {
        *self.inner.write().expect("socket lock") = OsSocket::wrap(socket, &self.rt, &self.udp)?;
        Ok(())
    }

    /// Lets go of the OS socket's port at once: swaps in a socket bound to an ephemeral loopback
    /// port (for a proxy that stopped while quinn still drains a connection).
    pub fn detach_os_socket(&self) -> io::Result<()> {
        let loopback: SocketAddr = match self.inner().local_addr() {
            Ok(SocketAddr::V6(_)) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
            _ => ([127, 0, 0, 1], 0).into(),
        };
        self.replace_os_socket(std::net::UdpSocket::bind(loopback)?)
    }

    /// A permit for a hard-NAT punch with `peer`: None while [`BIRTHDAYS`] run, or when the
    /// last one with `peer` started less than [`BIRTHDAY_SPACING`] ago.
    pub(crate) fn birthday_permit(
        &self,
        peer: crate::nodeid::NodeId,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let now = std::time::Instant::now();
        {
            let mut last = self.birthday_last.lock().expect("birthday lock");
            if last
                .get(&peer)
                .is_some_and(|t| now.duration_since(*t) < BIRTHDAY_SPACING)
            {
                tracing::debug!(%peer, "hard-NAT punch with this peer tried moments ago: skipped");
                return None;
            }
            if last.len() >= BIRTHDAY_PEERS {
                last.retain(|_, t| now.duration_since(*t) < BIRTHDAY_SPACING);
            }
            if last.len() >= BIRTHDAY_PEERS {
                return None;
            }
            last.insert(peer, now);
        }
        let permit = self.birthdays.try_acquire().ok();
        if permit.is_none() {
            tracing::debug!(%peer, "{BIRTHDAYS} hard-NAT punches run already: skipped");
        }
        permit
    }

    /// The address the OS socket is bound to.
    pub fn bound_addr(&self) -> io::Result<SocketAddr> {
        self.inner().local_addr()
    }

    /// Sends one datagram to `to`, waiting (at most a second) for the socket to be writable.
    pub async fn send_to(&self, to: SocketAddr, datagram: &[u8]) {
        if let Some((aux, to)) = self.vias.get(to) {
            let sent =
                tokio::time::timeout(std::time::Duration::from_secs(1), aux.send_to(datagram, to));
            if let Ok(Err(e)) = sent.await {
                tracing::trace!(%to, error = %e, "punch datagram not sent on a via");
            }
            return;
        }
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: datagram,
            segment_size: None,
            src_ip: None,
        };
        let mut poller: Option<Pin<Box<dyn UdpPoller>>> = None;
        let inner = self.inner();
        let send = async {
            loop {
                match inner.try_send(&transmit) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let p = poller.get_or_insert_with(|| inner.clone().create_io_poller());
                        if std::future::poll_fn(|cx| p.as_mut().poll_writable(cx))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::trace!(%to, error = %e, "punch datagram not sent");
                        return;
                    }
                    Ok(()) => return,
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
    }

    /// Sends one datagram to `to` now, from the OS socket; a full socket buffer drops it (as
    /// a congested network would). For a relay's channel datagrams.
    /// `src_ip`: the local IP to send from (a relay answers from the address the node
    /// reached it at, as quinn does), `None` for the kernel's choice.
    pub fn try_send_now(
        &self,
        to: SocketAddr,
        src_ip: Option<std::net::IpAddr>,
        datagram: &[u8],
    ) -> io::Result<()> {
        self.send_raw(to, src_ip, datagram, None)
    }

    /// Sends `contents` (segments of `segment_size`, if given) from the OS socket now, bypassing
    /// the paths: what the channel sends itself.
    fn send_raw(
        &self,
        to: SocketAddr,
        src_ip: Option<std::net::IpAddr>,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let os = self.os();
        os.io.try_send(&Transmit {
            destination: os.for_socket(to),
            ecn: None,
            contents,
            segment_size,
            src_ip,
        })
    }

    /// Hands the channel datagrams nodes send to this socket to `sink` (a relay; once).
    pub fn set_channel_sink(&self, sink: ChannelSink) {
        let _ = self.channel_sink.set(sink);
    }

    /// Channel datagrams arrived (segments of `stride` bytes, from one receive): a relay's
    /// sink takes those for the relay, the paths those for this node.
    fn deliver_channel(&self, from: SocketAddr, segments: &mut [u8], stride: usize) {
        match self.channel_sink.get() {
            Some(sink) => sink(canonical(from), segments, stride),
            None => {
                for datagram in segments.chunks(stride.max(1)) {
                    self.paths.from_channel(from, datagram);
                }
            }
        }
    }

    /// When a receive (`meta`, `buf`) is relayed packets from one peer on one of this node's
    /// relay channels, all with one header (a relay forwards a bulk transfer so), cuts the
    /// headers out in place and makes it a receive from the peer's virtual address; true if
    /// it did. A relay's own socket, and any other receive, are left alone.
    fn relayed_run(&self, meta: &mut RecvMeta, buf: &mut [u8]) -> bool {
        let (stride, len) = (meta.stride.max(1), meta.len);
        if self.channel_sink.get().is_some() || !channel::one_header(&buf[..len], stride) {
            return false;
        }
        let Some(from) = self.paths.channel_run(meta.addr, &buf[..stride.min(len)]) else {
            return false;
        };
        let (mut read, mut write) = (0, 0);
        while read < len {
            let end = (read + stride).min(len);
            buf.copy_within(read + channel::HEADER..end, write);
            write += end - read - channel::HEADER;
            read = end;
        }
        meta.addr = from;
        meta.len = write;
        meta.stride = stride - channel::HEADER;
        true
    }

    /// Sends `contents`, segments of `segment_size` bytes (the last may be shorter), to `to`
    /// from the OS socket now: in one system call when the socket segments (at most its
    /// segment count per call), else one call per segment. Stops at the first error (a full
    /// buffer); returns how many segments were sent. The caller makes sure a segment fits the
    /// way out: the kernel refuses an oversized segmented send whole.
    pub fn try_send_segments(
        &self,
        to: SocketAddr,
        src_ip: Option<std::net::IpAddr>,
        contents: &[u8],
        segment_size: usize,
    ) -> usize {
        let size = segment_size.max(1);
        let per_call = self.max_transmit_segments().max(1);
        let mut sent = 0;
        for batch in contents.chunks(size * per_call) {
            let gso = (batch.len() > size).then_some(size);
            if self.send_raw(to, src_ip, batch, gso).is_err() {
                break;
            }
            sent += batch.len().div_ceil(size);
        }
        sent
    }

    /// Sends `contents` (segments of `size` bytes, for `node`) as channel datagrams to the
    /// relay: one header per segment, segmentation offload kept (the last may be shorter).
    /// Segments too long for the channel's limit are dropped (see [`paths::Channel::limit`]).
    fn send_on_channel(
        &self,
        ch: paths::Channel,
        node: crate::nodeid::NodeId,
        contents: &[u8],
        size: usize,
    ) -> io::Result<()> {
        let mut size = size.max(1);
        let mut contents = contents;
        if size + channel::HEADER > ch.limit {
            // Only the last, shorter segment can fit.
            let last = contents.len() - (contents.len() - 1) % size - 1;
            contents = &contents[last..];
            if contents.len() + channel::HEADER > ch.limit {
                return Ok(());
            }
            size = contents.len();
        }
        let segments = contents.len().div_ceil(size);
        let mut out = Vec::with_capacity(contents.len() + segments * channel::HEADER);
        for segment in contents.chunks(size) {
            channel::put_header(&mut out, channel::Kind::ToRelay, &ch.key, &node);
            out.extend_from_slice(segment);
        }
        let segment_size = (segments > 1).then_some(size + channel::HEADER);
        self.send_raw(ch.relay, ch.src_ip, &out, segment_size)
    }

    /// Starts receiving the punch datagrams that `peer` sends (replacing an older session).
    pub fn register(self: &Arc<Self>, peer: SocketAddr) -> PunchSession {
        let peer = canonical(peer);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(peer, (id, tx));
        PunchSession {
            socket: self.clone(),
            peer,
            id,
            rx,
        }
    }

    /// Whether a punch session toward `peer` is running.
    pub fn has_session(&self, peer: &SocketAddr) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .contains_key(peer)
    }

    /// This socket's address as `peer` will see it before any NAT: the bound address, with an
    /// unspecified IP replaced by the one the kernel routes toward `peer` from.
    pub fn local_toward(&self, peer: SocketAddr) -> SocketAddr {
        let mut local = self
            .inner()
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if local.ip().is_unspecified() {
            if let Some(ip) = route_source(peer) {
                local.set_ip(ip);
            }
        }
        local
    }

    /// Punch datagrams from addresses no session punches, while the receiver lives (lagging
    /// receivers lose the oldest: punches repeat).
    pub fn strays(&self) -> tokio::sync::broadcast::Receiver<Stray> {
        self.strays.subscribe()
    }

    fn deliver_punch(&self, from: SocketAddr, datagram: &[u8]) {
        let from = canonical(from);
        let mut d = [0u8; punch::LEN];
        d.copy_from_slice(datagram);
        let map = self.sessions.lock().expect("sessions lock");
        match map.get(&from) {
            Some((_, tx)) => {
                let _ = tx.try_send(d);
            }
            None if self.strays.receiver_count() > 0 => {
                let _ = self.strays.send((from, d));
            }
            None => {}
        }
    }
}

impl AsyncUdpSocket for KeynetSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let hop = self.paths.route(transmit.destination);
        let to = match &hop {
            Hop::Unchanged => Some(transmit.destination),
            Hop::Direct(to) => Some(*to),
            _ => None,
        };
        if let Some((aux, to)) = to.and_then(|to| self.vias.get(to)) {
            let size = transmit.segment_size.unwrap_or(transmit.contents.len());
            via::send_now(&aux, to, transmit.contents, size);
            return Ok(());
        }
        match hop {
            Hop::Unchanged => self.inner().try_send(transmit),
            Hop::Direct(to) => {
                let os = self.os();
                os.io.try_send(&Transmit {
                    destination: os.for_socket(to),
                    ecn: transmit.ecn,
                    contents: transmit.contents,
                    segment_size: transmit.segment_size,
                    src_ip: None,
                })
            }
            Hop::Relay(node, outbox) => {
                let size = transmit.segment_size.unwrap_or(transmit.contents.len());
                if let Some(ch) = outbox.sending_channel() {
                    // Straight to the relay: a full socket makes quinn wait, as for any path.
                    return self.send_on_channel(ch, node, transmit.contents, size);
                }
                for segment in transmit.contents.chunks(size.max(1)) {
                    // Unreliable like UDP: a full outbox drops (QUIC retransmits).
                    outbox.try_send(node, segment.to_vec());
                }
                Ok(())
            }
            Hop::Nowhere => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Sources are given in the socket's family: quinn on a dual-stack socket knows its
        // peers by IPv4-mapped addresses, virtual ones included.
        let os = self.os();
        let relayed = self.paths.poll_inbound(cx, bufs, meta);
        if relayed > 0 {
            for m in &mut meta[..relayed] {
                m.addr = os.for_socket(m.addr);
            }
            return Poll::Ready(Ok(relayed));
        }
        let inner = os.io.clone();
        loop {
            let n = match inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut any_quic = false;
            for (m, buf) in meta.iter_mut().zip(bufs.iter_mut()).take(n) {
                let stride = m.stride.max(1);
                if self.relayed_run(m, buf) {
                    m.addr = os.for_socket(m.addr);
                    any_quic = true;
                    continue;
                }
                // Walk the (GRO) segments, keeping QUIC ones, compacting punches and channel
                // datagrams out.
                // Consecutive channel segments go together (a relay forwards a run at once),
                // before a later segment is compacted over them.
                let (mut read, mut write) = (0, 0);
                let mut run: Option<usize> = None;
                while read < m.len {
                    let end = (read + stride).min(m.len);
                    let is_channel = channel::is_channel(&buf[read..end]);
                    if let (Some(start), false) = (run, is_channel) {
                        self.deliver_channel(m.addr, &mut buf[start..read], stride);
                        run = None;
                    }
                    if punch::is_punch(&buf[read..end]) {
                        self.deliver_punch(m.addr, &buf[read..end]);
                    } else if is_channel {
                        run.get_or_insert(read);
                    } else {
                        if write != read {
                            buf.copy_within(read..end, write);
                        }
                        write += end - read;
                    }
                    read = end;
                }
                if let Some(start) = run {
                    self.deliver_channel(m.addr, &mut buf[start..m.len], stride);
                }
                m.len = write;
                any_quic |= write > 0;
                if write > 0 {
                    m.addr = os.for_socket(self.paths.inbound_source(m.addr));
                }
            }
            if any_quic {
                return Poll::Ready(Ok(n));
            }
            // Channel datagrams for this node were queued as relayed packets: hand those over.
            let relayed = self.paths.poll_inbound(cx, bufs, meta);
            if relayed > 0 {
                for m in &mut meta[..relayed] {
                    m.addr = os.for_socket(m.addr);
                }
                return Poll::Ready(Ok(relayed));
            }
            // Only punches arrived: read again (the inner socket registers the waker if empty).
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner().local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        if !self.udp.segment_offload {
            return 1;
        }
        self.inner().max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        if !self.udp.segment_offload {
            return 1;
        }
        // quinn sizes each receive slot as segments × the largest payload; the kernel
        // coalesces at most 64 KiB into one read, so a slot need hold no more.
        let enough = mtu::GRO_BYTES.div_ceil(usize::from(mtu::MAX_PAYLOAD));
        self.inner().max_receive_segments().min(enough)
    }

    fn may_fragment(&self) -> bool {
        self.inner().may_fragment()
    }
}

/// Binds a UDP socket at `addr` and builds a quinn endpoint on it (server role if
/// `server_config` is given). `reset_secret` keys QUIC stateless resets: derived from the node's
/// identity, it survives a restart, so a restarted node's reset ends its peers' stale
/// connections at once instead of after their idle timeout. Returns the endpoint and the socket.
/// Call it inside the tokio runtime that will drive the socket.
pub fn bind(
    addr: SocketAddr,
    server_config: Option<quinn::ServerConfig>,
    reset_secret: &[u8],
) -> Result<(quinn::Endpoint, Arc<KeynetSocket>)> {
    bind_tuned(addr, server_config, reset_secret, &UdpTuning::default())
}

/// [`bind`] with the socket's kernel settings given.
pub fn bind_tuned(
    addr: SocketAddr,
    server_config: Option<quinn::ServerConfig>,
    reset_secret: &[u8],
    udp: &UdpTuning,
) -> Result<(quinn::Endpoint, Arc<KeynetSocket>)> {
    let std_socket = std::net::UdpSocket::bind(addr)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let rt = tokio::runtime::Handle::current();
    let socket = Arc::new(KeynetSocket {
        inner: RwLock::new(OsSocket::wrap(std_socket, &rt, udp)?),
        udp: udp.clone(),
        rt,
        sessions: Mutex::new(HashMap::new()),
        next_session: Default::default(),
        strays: tokio::sync::broadcast::channel(STRAYS).0,
        paths: Paths::default(),
        vias: Default::default(),
        birthdays: tokio::sync::Semaphore::new(BIRTHDAYS),
        birthday_last: Mutex::new(HashMap::new()),
        channel_sink: std::sync::OnceLock::new(),
    });
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.grease_quic_bit(false);
    // What peers may send us (a transport parameter): up to keynet's largest packet, which a
    // direct path uses once its route and quinn's MTU discovery allow (see `mtu`).
    config
        .max_udp_payload_size(mtu::MAX_PAYLOAD)
        .expect("within QUIC's bounds");
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, server_config, socket.clone(), runtime)?;
    Ok((endpoint, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_via_carries_a_peers_datagrams_both_ways_until_its_guard_drops() {
        let (_ep, sock) = bind("127.0.0.1:0".parse().unwrap(), None, b"a").unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = peer.local_addr().unwrap();
        let aux = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let aux_addr = aux.local_addr().unwrap();
        let mut session = sock.register(to);
        let guard = sock.adopt_via(to, aux);
        let punch = punch::Packet {
            kind: punch::Kind::Punch,
            nonce: 7,
            sender_local: aux_addr,
            observed: None,
        }
        .encode();
        // Out through the via…
        sock.send_to(to, &punch).await;
        let mut buf = [0u8; 128];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!((n, from), (punch::LEN, aux_addr));
        // …and in: the peer's punch to the via's port reaches the session for its address.
        peer.send_to(&punch, aux_addr).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), session.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, punch);
        // Without the guard, the main socket sends again.
        drop(guard);
        sock.send_to(to, &punch).await;
        let (_, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, sock.bound_addr().unwrap());
    }

    #[tokio::test]
    async fn punches_reach_their_session_and_never_quinn() {
        let (ep_a, sock_a) = bind("127.0.0.1:0".parse().unwrap(), None, b"a").unwrap();
        let (ep_b, sock_b) = bind("127.0.0.1:0".parse().unwrap(), None, b"b").unwrap();
        let a = ep_a.local_addr().unwrap();
        let b = ep_b.local_addr().unwrap();
        let mut session = sock_b.register(a);
        let p = punch::Packet {
            kind: punch::Kind::Punch,
            nonce: 5,
            sender_local: a,
            observed: None,
        }
        .encode();
        sock_a.send_to(b, &p).await;
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), session.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, p);
        assert_eq!(sock_b.local_toward(a), b);
        drop(session);
        assert!(sock_b.sessions.lock().unwrap().is_empty());
    }
}
