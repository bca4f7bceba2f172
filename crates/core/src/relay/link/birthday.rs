//! Hard-NAT punching by the birthday paradox, for a rendezvous where one side's NAT maps per
//! destination (it changed the port the relay saw: [`Mapping`]) and the other's keeps one
//! mapping for all. The port the hard side's NAT will pick toward the easy side is unknown, so:
//! - the **hard** side opens [`AUX_SOCKETS`] sockets and punches the easy side from each (so
//!   its NAT holds that many mappings toward the easy side's one address), every
//!   [`HARD_RESEND`];
//! - the **easy** side, [`EASY_START`] later, sends [`SPRAY`] probes to distinct random ports of
//!   the hard side's IP over [`SPRAY_TIME`] (each opens its own NAT's filter for that port).
//!
//! A probe that lands on one of the hard side's mappings gets through; the hard side punches
//! back from that socket at once (and from all of them every [`HARD_RESEND`]), which passes the
//! easy side's filter. The easy side acknowledges the first such punch alone, keyed with the
//! connection's secret, and the hard side takes the socket that ack reached: both agree on one
//! pair, and the usual punch runs on it (if that ack is lost, the usual punch's keyed ack on the
//! same pair decides instead). With 256
//! mappings among the 64,512 ports a NAT picks from, 2048 probes miss them all with probability
//! 0.03 % (`miss_probability`, tested). Both symmetric: no pair is found this way; the connection stays
//! relayed. It runs only while the relay carries the connection, at most
//! [`crate::socket::BIRTHDAYS`] at once per node and once per [`crate::socket::BIRTHDAY_SPACING`]
//! per peer (a peer cannot keep a node busy with rendezvous), each for at most
//! [`BIRTHDAY_BUDGET`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

use crate::proto::punch::{AckKey, Kind, Packet, LEN};
use crate::proto::relay::Mapping;
use crate::socket::KeynetSocket;

/// Sockets the hard side opens (each one NAT mapping toward the easy side).
pub(crate) const AUX_SOCKETS: usize = 256;
/// Probes the easy side sends, to distinct random ports.
pub(crate) const SPRAY: usize = 2048;
/// The spray is paced over this long (about 2,000 small datagrams a second).
pub(crate) const SPRAY_TIME: Duration = Duration::from_secs(1);
/// The easy side starts spraying this long after the hard side opened its mappings (probes
/// that arrive before a mapping exists are lost).
pub(crate) const EASY_START: Duration = Duration::from_millis(300);
/// The hard side punches from every socket again this often (the easy side's filter opens
/// for a port only when its probe to it went out).
pub(crate) const HARD_RESEND: Duration = Duration::from_millis(500);
/// How long either side tries.
pub(crate) const BIRTHDAY_BUDGET: Duration = Duration::from_secs(4);
/// Ports a NAT maps to (Linux picks from 1024-65535).
const PORTS: (u16, u16) = (1024, 65535);
/// Probes per pacing step.
const SPRAY_BATCH: usize = 32;

/// Which part this side plays, if the birthday punch applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// This side's NAT maps per destination: open many mappings.
    Hard,
    /// The peer's does: spray probes at its ports.
    Easy,
}

/// The part this side plays given what the relay saw: exactly one side must be hard.
pub(crate) fn role(m: Mapping) -> Option<Role> {
    match (m.you_vary, m.peer_varies) {
        (true, false) => Some(Role::Hard),
        (false, true) => Some(Role::Easy),
        _ => None,
    }
}

/// The chance that `probes` distinct random ports among `ports` miss all of `mappings`.
#[cfg(test)]
fn miss_probability(mappings: usize, probes: usize, ports: usize) -> f64 {
    // Drawing without replacement: each probe misses the mappings left among the ports left.
    (0..probes).fold(1.0, |p, i| {
        let left = (ports - i) as f64;
        p * (1.0 - mappings as f64 / left)
    })
}

/// `n` distinct random ports in [`PORTS`], none of them `skip`.
fn random_ports(n: usize, skip: u16) -> Vec<u16> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let mut bytes = [0u8; 2];
    while out.len() < n {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("system randomness");
        let port = u16::from_be_bytes(bytes);
        if port < PORTS.0 || port == skip || !seen.insert(port) {
            continue;
        }
        out.push(port);
    }
    out
}

/// The hard side: opens [`AUX_SOCKETS`] sockets on the main socket's IP, punches `peer` from
/// each (and back at once from a socket the peer's probe reached) until the peer's keyed ack of
/// one of those punches arrives, and returns that socket with the peer's address as seen there. None within the budget (or when
/// [`crate::socket::BIRTHDAYS`] run already).
pub(crate) async fn open_many(
    socket: &Arc<KeynetSocket>,
    node: crate::nodeid::NodeId,
    peer: SocketAddr,
    key: &AckKey,
) -> Option<(UdpSocket, SocketAddr)> {
    let _permit = socket.birthday_permit(node)?;
    let bind = SocketAddr::new(socket.bound_addr().ok()?.ip(), 0);
    let mut aux = Vec::with_capacity(AUX_SOCKETS);
    for _ in 0..AUX_SOCKETS {
        let s = std::net::UdpSocket::bind(bind).and_then(|s| {
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s)
        });
        match s {
            Ok(s) => aux.push((s, crate::addr::random_u64())),
            // Out of file descriptors: go on with what we have.
            Err(e) => {
                tracing::debug!(error = %e, opened = aux.len(), "birthday punch: no more sockets");
                break;
            }
        }
    }
    if aux.is_empty() {
        return None;
    }
    let local = socket.local_toward(peer);
    let deadline = Instant::now() + BIRTHDAY_BUDGET;
    let mut resend = tokio::time::interval(HARD_RESEND);
    let mut buf = [0u8; 2048];
    let found = tokio::time::timeout_at(deadline.into(), async {
        loop {
            let got = tokio::select! {
                _ = resend.tick() => {
                    for (s, nonce) in &aux {
                        let p = Packet { kind: Kind::Punch, nonce: *nonce, sender_local: local, observed: None };
                        let _ = s.try_send_to(&p.encode(), crate::socket::for_family(s, peer));
                    }
                    continue;
                }
                got = recv_any(&aux, &mut buf) => got,
            };
            let (i, from, n) = got;
            let from = crate::addr::canonical(from);
            if from.ip() != peer.ip() {
                continue;
            }
            let Ok(p) = Packet::decode(&buf[..n]) else { continue };
            match p.kind {
                // The peer's probe (or punch) landed on this socket's mapping: punch back from
                // it at once, so the peer sees this port; the peer acknowledges the one punch
                // it picks, and that ack decides (both sides agree on one pair).
                Kind::Punch => {
                    let back = Packet { kind: Kind::Punch, nonce: aux[i].1, sender_local: local, observed: None };
                    let _ = aux[i].0.try_send_to(&back.encode(), crate::socket::for_family(&aux[i].0, from));
                }
                Kind::Ack if key.accepts(aux[i].1, p.nonce) => return (i, from),
                Kind::Ack => {}
            }
        }
    })
    .await
    .ok()?;
    let (i, from) = found;
    tracing::info!(%peer, %from, sockets = aux.len(), "birthday punch: the peer answered one of our mappings");
    Some((aux.swap_remove(i).0, from))
}

/// The next datagram on any of `aux`: (its index, source, length).
async fn recv_any(aux: &[(UdpSocket, u64)], buf: &mut [u8]) -> (usize, SocketAddr, usize) {
    std::future::poll_fn(|cx| {
        for (i, (s, _)) in aux.iter().enumerate() {
            let mut rb = ReadBuf::new(buf);
            if let Poll::Ready(Ok(from)) = s.poll_recv_from(cx, &mut rb) {
                return Poll::Ready((i, from, rb.filled().len()));
            }
        }
        Poll::Pending
    })
    .await
}

/// The easy side: [`EASY_START`] after the rendezvous, probes [`SPRAY`] random ports of the
/// peer's IP (its relay-seen port aside) from the main socket, and returns the peer's address
/// that answered (its keyed ack of a probe, or a punch from one of its mappings that our probe
/// let in). None within the budget (or when [`crate::socket::BIRTHDAYS`] run already).
pub(crate) async fn spray(
    socket: &Arc<KeynetSocket>,
    node: crate::nodeid::NodeId,
    peer: SocketAddr,
    key: &AckKey,
) -> Option<SocketAddr> {
    let _permit = socket.birthday_permit(node)?;
    // Answers come from ports no punch session knows: strays.
    let mut strays = socket.strays();
    let nonce = crate::addr::random_u64();
    let local = socket.local_toward(peer);
    let probe = Packet {
        kind: Kind::Punch,
        nonce,
        sender_local: local,
        observed: None,
    }
    .encode();
    let deadline = Instant::now() + BIRTHDAY_BUDGET;
    let send = async {
        tokio::time::sleep(EASY_START).await;
        let ports = random_ports(SPRAY, peer.port());
        let pause = SPRAY_TIME / (SPRAY / SPRAY_BATCH) as u32;
        for batch in ports.chunks(SPRAY_BATCH) {
            for port in batch {
                socket
                    .send_to(SocketAddr::new(peer.ip(), *port), &probe)
                    .await;
            }
            tokio::time::sleep(pause).await;
        }
        std::future::pending::<()>().await;
    };
    let answer = async {
        loop {
            let Ok((from, d)) = strays.recv().await else {
                // Lagged: punches repeat.
                continue;
            };
            if from.ip() != peer.ip() || d.len() != LEN {
                continue;
            }
            // The first punch from one of the peer's mappings (our probe opened our NAT for
            // it): acknowledge that one alone, keyed, and it is the pair (the peer takes the
            // socket our ack reaches; several of its mappings may let punches through).
            match Packet::decode(&d) {
                Ok(p) if p.kind == Kind::Punch => {
                    let ack = Packet {
                        kind: Kind::Ack,
                        nonce: key.ours(p.nonce),
                        sender_local: local,
                        observed: Some(from),
                    };
                    socket.send_to(from, &ack.encode()).await;
                    return from;
                }
                _ => {}
            }
        }
    };
    let found = tokio::time::timeout_at(deadline.into(), async {
        tokio::select! {
            _ = send => unreachable!("the spray waits at its end"),
            from = answer => from,
        }
    })
    .await
    .ok()?;
    tracing::info!(%peer, %found, "birthday punch: found the peer's mapping");
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_bounds_find_a_mapping_almost_always() {
        let ports = (PORTS.1 - PORTS.0) as usize + 1;
        let miss = miss_probability(AUX_SOCKETS, SPRAY, ports);
        assert!(miss < 0.001, "{miss}");
        assert!(miss > 0.0001, "{miss}: the docs say 0.03 %");
        // Fewer of either makes it worse, quickly.
        assert!(miss_probability(AUX_SOCKETS / 4, SPRAY, ports) > 0.1);
        assert!(miss_probability(AUX_SOCKETS, SPRAY / 8, ports) > 0.1);
        assert_eq!(miss_probability(0, SPRAY, ports), 1.0);
        assert_eq!(miss_probability(10, 10, 10), 0.0);
    }

    #[test]
    fn exactly_one_hard_side_plays() {
        let m = |you_vary, peer_varies| Mapping {
            peer_varies,
            you_vary,
        };
        assert_eq!(role(m(true, false)), Some(Role::Hard));
        assert_eq!(role(m(false, true)), Some(Role::Easy));
        assert_eq!(role(m(true, true)), None, "both symmetric: stays relayed");
        assert_eq!(role(m(false, false)), None, "plain punching does it");
    }

    #[test]
    fn sprayed_ports_are_distinct_valid_and_skip_the_known_one() {
        let ports = random_ports(SPRAY, 40000);
        let set: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(set.len(), SPRAY);
        assert!(ports.iter().all(|p| *p >= PORTS.0 && *p != 40000));
    }
}
