//! Hole punching, sans-IO: the punch datagram format and the per-target state machine.
//!
//! A punch datagram can never be taken for QUIC: its first byte has the fixed bit (0x40) clear,
//! which every QUIC packet of our endpoints sets (RFC 9287 greasing is off). Layout, 52 bytes:
//!
//! ```text
//! 0      1..4   4        5      6..14      14..33              33..52
//! 0x00   "KNP"  version  kind   nonce(BE)  sender local addr   observed addr of the receiver
//!                        1=punch 2=ack      (family, ip16, port) (zeros in a punch)
//! ```
//!
//! Authentication: a machine only acts on datagrams from the exact address it punches toward;
//! an ack only counts if it echoes the machine's own random nonce (like a STUN transaction id),
//! so a stray or forged datagram from elsewhere, or a replayed ack, changes nothing.
//!
//! That is not enough where the address came from a relay (a rendezvous): a hostile relay can
//! name an address it controls, which sees the punch and can echo its nonce. There the two
//! nodes already share a QUIC connection, and acks are keyed ([`AckKey`]): an ack carries, in
//! place of the nonce, a MAC of it under a secret both ends export from that connection's TLS
//! session, bound to the acking node's id (so a node's own ack reflected back does not count).
//!
//! The machine ([`Puncher`]) sends a punch every `interval` until the connection is up
//! ([`Puncher::connected`]) or the budget runs out ([`PunchState::GaveUp`]). A valid punch from
//! the target means the peer is punching too and inbound packets from it pass our NAT: the
//! caller should (re)start the QUIC handshake at once ([`Puncher::take_path_opened`]).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Length of every punch datagram.
pub const LEN: usize = 52;
const MAGIC: &[u8; 3] = b"KNP";
const VERSION: u8 = 1;

/// What a punch datagram says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// "I am punching toward you."
    Punch,
    /// "I received your punch": echoes its nonce and tells where it came from.
    Ack,
}

/// A decoded punch datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Punch or ack.
    pub kind: Kind,
    /// The sender's nonce (punch) or the echoed nonce (ack).
    pub nonce: u64,
    /// The sender's own socket address, as it sees it.
    pub sender_local: SocketAddr,
    /// For an ack: where the sender saw our punch come from (our public address).
    pub observed: Option<SocketAddr>,
}

/// Why a datagram is not a valid punch datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Wrong length.
    #[error("punch datagram has length {0}, expected 52")]
    Length(usize),
    /// Not our magic, or the fixed bit is set.
    #[error("not a punch datagram")]
    Magic,
    /// Unknown version.
    #[error("unsupported punch version {0}")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown punch kind {0}")]
    Kind(u8),
    /// An address field is malformed.
    #[error("malformed address in punch datagram")]
    Address,
}

/// Whether a datagram looks like a punch datagram (cheap check for the socket demultiplexer).
pub fn is_punch(datagram: &[u8]) -> bool {
    datagram.len() == LEN && datagram[0] == 0 && &datagram[1..4] == MAGIC
}

pub(crate) fn put_addr(out: &mut [u8], addr: Option<SocketAddr>) {
    match addr {
        None => out.fill(0),
        Some(a) => {
            out[0] = if a.is_ipv4() { 4 } else { 6 };
            let ip = match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out[1..17].copy_from_slice(&ip.octets());
            out[17..19].copy_from_slice(&a.port().to_be_bytes());
        }
    }
}

pub(crate) fn get_addr(b: &[u8]) -> Result<Option<SocketAddr>, DecodeError> {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[1..17]);
    let v6 = Ipv6Addr::from(octets);
    let port = u16::from_be_bytes([b[17], b[18]]);
    match b[0] {
        0 if b.iter().all(|&x| x == 0) => Ok(None),
        4 => Ok(Some(SocketAddr::new(
            IpAddr::V4(v6.to_ipv4_mapped().ok_or(DecodeError::Address)?),
            port,
        ))),
        6 => Ok(Some(SocketAddr::new(IpAddr::V6(v6), port))),
        _ => Err(DecodeError::Address),
    }
}

impl Packet {
    /// Encodes the datagram.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[1..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = match self.kind {
            Kind::Punch => 1,
            Kind::Ack => 2,
        };
        out[6..14].copy_from_slice(&self.nonce.to_be_bytes());
        put_addr(&mut out[14..33], Some(self.sender_local));
        put_addr(&mut out[33..52], self.observed);
        out
    }

    /// Decodes a datagram, refusing anything malformed.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() != LEN {
            return Err(DecodeError::Length(b.len()));
        }
        if b[0] != 0 || &b[1..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        if b[4] != VERSION {
            return Err(DecodeError::Version(b[4]));
        }
        let kind = match b[5] {
            1 => Kind::Punch,
            2 => Kind::Ack,
            k => return Err(DecodeError::Kind(k)),
        };
        let sender_local = get_addr(&b[14..33])?.ok_or(DecodeError::Address)?;
        let observed = get_addr(&b[33..52])?;
        if kind == Kind::Ack && observed.is_none() {
            return Err(DecodeError::Address);
        }
        Ok(Self {
            kind,
            nonce: u64::from_be_bytes(b[6..14].try_into().expect("8 bytes")),
            sender_local,
            observed,
        })
    }
}

/// Keys the acks of a direct path between two nodes that share a connection (see the module
/// documentation).
#[derive(Clone)]
pub struct AckKey {
    /// Ours are made with the first; the peer's count under any (the two ends may not see the
    /// same set of connections at every moment).
    keys: Vec<ring::hmac::Key>,
    me: [u8; 32],
    peer: [u8; 32],
}

impl std::fmt::Debug for AckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckKey(..)")
    }
}

impl AckKey {
    /// Acks between node `me` and node `peer`, keyed by the secrets of their shared
    /// connections (at least one; both ends derive the same ones, ours are made with the
    /// first).
    pub fn new(secrets: &[[u8; 32]], me: &[u8; 32], peer: &[u8; 32]) -> Self {
        assert!(!secrets.is_empty(), "an ack key needs a secret");
        Self {
            keys: secrets
                .iter()
                .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s))
                .collect(),
            me: *me,
            peer: *peer,
        }
    }

    /// What our ack of the peer's `nonce` carries.
    pub fn ours(&self, nonce: u64) -> u64 {
        tag(&self.keys[0], &self.me, nonce)
    }

    /// Whether `ack` is the peer's ack of our `nonce`.
    pub fn accepts(&self, nonce: u64, ack: u64) -> bool {
        self.keys.iter().any(|k| tag(k, &self.peer, nonce) == ack)
    }
}

/// The MAC of `nonce` acknowledged by `acker`, truncated to the nonce field.
fn tag(key: &ring::hmac::Key, acker: &[u8; 32], nonce: u64) -> u64 {
    let mut msg = [0u8; 9 + 32 + 8];
    msg[..9].copy_from_slice(b"keynet ak");
    msg[9..41].copy_from_slice(acker);
    msg[41..].copy_from_slice(&nonce.to_be_bytes());
    let mac = ring::hmac::sign(key, &msg);
    u64::from_be_bytes(mac.as_ref()[..8].try_into().expect("8 bytes"))
}

/// Where a [`Puncher`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchState {
    /// Sending punches.
    Punching,
    /// The connection is up; nothing more to send.
    Connected,
    /// The budget ran out before the connection came up.
    GaveUp,
}

/// The punch state machine for one target address.
#[derive(Debug)]
pub struct Puncher {
    target: SocketAddr,
    local: SocketAddr,
    nonce: u64,
    interval: Duration,
    deadline: Instant,
    next_send: Instant,
    max_sends: u32,
    sent: u32,
    state: PunchState,
    peer_punching: bool,
    path_confirmed: bool,
    path_opened_pending: bool,
    peer_local: Option<SocketAddr>,
    observed_self: Option<SocketAddr>,
    /// Keyed acks (a rendezvous on a shared connection); plain nonce echoes otherwise.
    ack_key: Option<AckKey>,
}

impl Puncher {
    /// Starts punching `target` from `local` at `now`: a punch every `interval`, at most
    /// `max_sends` of them, giving up at `now + budget`. `nonce` must be random.
    pub fn new(
        now: Instant,
        local: SocketAddr,
        target: SocketAddr,
        interval: Duration,
        budget: Duration,
        max_sends: u32,
        nonce: u64,
    ) -> Self {
        Self {
            target,
            local,
            nonce,
            interval: interval.max(Duration::from_millis(1)),
            deadline: now + budget,
            next_send: now,
            max_sends,
            sent: 0,
            state: PunchState::Punching,
            peer_punching: false,
            path_confirmed: false,
            path_opened_pending: false,
            peer_local: None,
            observed_self: None,
            ack_key: None,
        }
    }

    /// Requires keyed acks from now on (and sends them).
    pub fn set_ack_key(&mut self, key: AckKey) {
        self.ack_key = Some(key);
    }

    /// The state at `now` (gives up once the deadline passed).
    pub fn state(&mut self, now: Instant) -> PunchState {
        if self.state == PunchState::Punching && now >= self.deadline {
            self.state = PunchState::GaveUp;
        }
        self.state
    }

    /// The next punch datagram to send toward the target, if one is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<[u8; LEN]> {
        if self.state(now) != PunchState::Punching
            || self.sent >= self.max_sends
            || now < self.next_send
        {
            return None;
        }
        self.sent += 1;
        // Keep the cadence even if the caller was late; never burst to catch up.
        let next = self.next_send + self.interval;
        self.next_send = if next <= now {
            now + self.interval
        } else {
            next
        };
        Some(
            Packet {
                kind: Kind::Punch,
                nonce: self.nonce,
                sender_local: self.local,
                observed: None,
            }
            .encode(),
        )
    }

    /// When the machine next wants to run: the next punch or the deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            PunchState::Punching if self.sent < self.max_sends => {
                Some(self.next_send.min(self.deadline))
            }
            PunchState::Punching => Some(self.deadline),
            _ => None,
        }
    }

    /// Handles a punch datagram received from `from` at `now`; returns an ack to send back to
    /// the target, if the datagram was a valid punch from it. Anything else is ignored.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Option<[u8; LEN]> {
        if from != self.target || self.state(now) == PunchState::GaveUp {
            return None;
        }
        let packet = Packet::decode(datagram).ok()?;
        match packet.kind {
            Kind::Punch => {
                if !self.peer_punching {
                    self.peer_punching = true;
                    self.path_opened_pending = true;
                }
                self.peer_local = Some(packet.sender_local);
                let nonce = match &self.ack_key {
                    Some(k) => k.ours(packet.nonce),
                    None => packet.nonce,
                };
                Some(
                    Packet {
                        kind: Kind::Ack,
                        nonce,
                        sender_local: self.local,
                        observed: Some(from),
                    }
                    .encode(),
                )
            }
            Kind::Ack if self.ack_counts(packet.nonce) => {
                if !self.path_confirmed {
                    self.path_confirmed = true;
                    self.path_opened_pending = true;
                }
                self.peer_local = Some(packet.sender_local);
                self.observed_self = packet.observed;
                None
            }
            Kind::Ack => None,
        }
    }

    /// Whether an ack carrying `ack` acknowledges our punches.
    fn ack_counts(&self, ack: u64) -> bool {
        match &self.ack_key {
            Some(k) => k.accepts(self.nonce, ack),
            None => ack == self.nonce,
        }
    }

    /// True once after the path to the target opened (its punch or its ack of ours arrived):
    /// the moment to (re)start the QUIC handshake.
    pub fn take_path_opened(&mut self) -> bool {
        std::mem::take(&mut self.path_opened_pending)
    }

    /// The connection is up: stop punching.
    pub fn connected(&mut self) {
        self.state = PunchState::Connected;
    }

    /// Whether the peer was punching toward us (a valid punch from the target arrived).
    pub fn peer_punching(&self) -> bool {
        self.peer_punching
    }

    /// Whether an ack of one of our punches arrived (the path works both ways).
    pub fn path_confirmed(&self) -> bool {
        self.path_confirmed
    }

    /// Punches sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Whether a NAT sits between us: the peer's own address differs from the one we reach it
    /// at, or the address it sees us at differs from ours. Only known once punches were
    /// exchanged; `false` before.
    pub fn nat_between(&self) -> bool {
        let peer_natted = self.peer_local.is_some_and(|l| l != self.target);
        let self_natted = self.observed_self.is_some_and(|o| o != self.local);
        peer_natted || self_natted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn a() -> SocketAddr {
        "192.0.2.1:1000".parse().unwrap()
    }
    fn b() -> SocketAddr {
        "198.51.100.2:2000".parse().unwrap()
    }

    #[test]
    fn snapshot() {
        let p = Packet {
            kind: Kind::Punch,
            nonce: 0x0102030405060708,
            sender_local: "10.0.0.1:258".parse().unwrap(),
            observed: None,
        };
        let bytes = p.encode();
        assert_eq!(
            &bytes[..14],
            &[0, b'K', b'N', b'P', 1, 1, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(bytes[14], 4);
        assert_eq!(
            &bytes[15..31],
            &Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]).octets()
        );
        assert_eq!(&bytes[31..33], &[1, 2]);
        assert!(bytes[33..].iter().all(|&x| x == 0));
        assert_eq!(Packet::decode(&bytes), Ok(p));
        assert!(is_punch(&bytes));
        assert_eq!(bytes[0] & 0x40, 0, "never a QUIC packet");
    }

    #[test]
    fn malformed_is_refused() {
        let good = Packet {
            kind: Kind::Ack,
            nonce: 1,
            sender_local: a(),
            observed: Some(b()),
        }
        .encode();
        assert_eq!(Packet::decode(&good[..51]), Err(DecodeError::Length(51)));
        let mut x = good;
        x[0] = 0x40;
        assert_eq!(Packet::decode(&x), Err(DecodeError::Magic));
        let mut x = good;
        x[4] = 9;
        assert_eq!(Packet::decode(&x), Err(DecodeError::Version(9)));
        let mut x = good;
        x[5] = 3;
        assert_eq!(Packet::decode(&x), Err(DecodeError::Kind(3)));
        let mut x = good;
        x[14] = 5;
        assert_eq!(Packet::decode(&x), Err(DecodeError::Address));
        let mut x = good;
        x[33..].fill(0); // an ack must say what it observed
        assert_eq!(Packet::decode(&x), Err(DecodeError::Address));
    }

    #[test]
    fn cadence_and_budget() {
        let t0 = Instant::now();
        let mut p = Puncher::new(t0, a(), b(), 50 * MS, 1000 * MS, 1000, 7);
        assert!(p.poll_transmit(t0).is_some(), "first punch at once");
        assert!(p.poll_transmit(t0).is_none());
        assert_eq!(p.poll_timeout(), Some(t0 + 50 * MS));
        assert!(p.poll_transmit(t0 + 49 * MS).is_none());
        assert!(p.poll_transmit(t0 + 50 * MS).is_some());
        // Late by 500 ms: one punch, not a burst of ten.
        assert!(p.poll_transmit(t0 + 550 * MS).is_some());
        assert!(p.poll_transmit(t0 + 551 * MS).is_none());
        assert_eq!(p.state(t0 + 999 * MS), PunchState::Punching);
        assert_eq!(p.state(t0 + 1000 * MS), PunchState::GaveUp);
        assert!(p.poll_transmit(t0 + 1000 * MS).is_none());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn sends_are_capped() {
        let t0 = Instant::now();
        let mut p = Puncher::new(t0, a(), b(), MS, 1000 * MS, 3, 7);
        let sent = (0..100)
            .filter(|i| p.poll_transmit(t0 + *i * MS).is_some())
            .count();
        assert_eq!(sent, 3);
        assert_eq!(
            p.poll_timeout(),
            Some(t0 + 1000 * MS),
            "still waits for the deadline"
        );
    }

    #[test]
    fn stops_on_success() {
        let t0 = Instant::now();
        let mut p = Puncher::new(t0, a(), b(), 50 * MS, 1000 * MS, 100, 7);
        p.poll_transmit(t0).unwrap();
        p.connected();
        assert_eq!(
            p.state(t0 + 2000 * MS),
            PunchState::Connected,
            "never gives up once connected"
        );
        assert!(p.poll_transmit(t0 + 100 * MS).is_none());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn forged_and_stray_datagrams_change_nothing() {
        let t0 = Instant::now();
        let mut p = Puncher::new(t0, a(), b(), 50 * MS, 1000 * MS, 100, 42);
        let stranger: SocketAddr = "203.0.113.9:9".parse().unwrap();
        let punch = Packet {
            kind: Kind::Punch,
            nonce: 1,
            sender_local: b(),
            observed: None,
        }
        .encode();
        // A valid punch, but from an address we are not punching toward.
        assert!(p.handle(t0, stranger, &punch).is_none());
        // An ack from the target that does not echo our nonce (forged or stale).
        let bad_ack = Packet {
            kind: Kind::Ack,
            nonce: 41,
            sender_local: b(),
            observed: Some(a()),
        }
        .encode();
        assert!(p.handle(t0, b(), &bad_ack).is_none());
        // Garbage from the target.
        assert!(p.handle(t0, b(), &[0u8; LEN]).is_none());
        assert!(p.handle(t0, b(), b"hello").is_none());
        assert!(!p.peer_punching() && !p.path_confirmed() && !p.take_path_opened());
        // The real ack counts.
        let ack = Packet {
            kind: Kind::Ack,
            nonce: 42,
            sender_local: b(),
            observed: Some(a()),
        }
        .encode();
        assert!(p.handle(t0, b(), &ack).is_none());
        assert!(p.path_confirmed() && p.take_path_opened());
        assert!(!p.take_path_opened(), "reported once");
    }

    /// Two machines behind address-and-port restricted NATs: a datagram from X reaches Y only
    /// if Y already sent one to X. Each side starts at its own time.
    fn simulate(start_b_after: Duration) -> (Duration, Duration) {
        let t0 = Instant::now();
        let tb = t0 + start_b_after;
        let mut pa = Puncher::new(t0, a(), b(), 50 * MS, 5000 * MS, 1000, 1);
        let mut pb: Option<Puncher> = None;
        let (mut a_sent, mut b_sent) = (false, false);
        let (mut a_open, mut b_open) = (None, None);
        let mut now = t0;
        while now < t0 + 5000 * MS && (a_open.is_none() || b_open.is_none()) {
            if pb.is_none() && now >= tb {
                pb = Some(Puncher::new(now, b(), a(), 50 * MS, 5000 * MS, 1000, 2));
            }
            let mut to_b = Vec::new();
            let mut to_a = Vec::new();
            if let Some(d) = pa.poll_transmit(now) {
                a_sent = true;
                to_b.push(d);
            }
            if let Some(pb) = pb.as_mut() {
                if let Some(d) = pb.poll_transmit(now) {
                    b_sent = true;
                    to_a.push(d);
                }
            }
            // B's NAT lets A's datagrams in only once B has sent to A; and vice versa.
            for d in to_b {
                if let (Some(pb), true) = (pb.as_mut(), b_sent) {
                    if let Some(ack) = pb.handle(now, a(), &d) {
                        if a_sent {
                            pa.handle(now, b(), &ack);
                        }
                    }
                }
            }
            for d in to_a {
                if a_sent {
                    if let Some(ack) = pa.handle(now, b(), &d) {
                        if let (Some(pb), true) = (pb.as_mut(), b_sent) {
                            pb.handle(now, a(), &ack);
                        }
                    }
                }
            }
            if a_open.is_none() && pa.take_path_opened() {
                a_open = Some(now);
            }
            if let Some(pb) = pb.as_mut() {
                if b_open.is_none() && pb.take_path_opened() {
                    b_open = Some(now);
                }
            }
            now += MS;
        }
        (
            a_open.expect("A saw the path open") - t0,
            b_open.expect("B saw the path open") - t0,
        )
    }

    #[test]
    fn sides_starting_apart_meet_within_an_interval() {
        for apart in [0u32, 10, 300, 999, 1000] {
            let (a_open, b_open) = simulate(apart * MS);
            // Each side sees the path open at most one interval after the later one started
            // (plus the simulation's 1 ms step).
            let later = apart * MS;
            assert!(
                a_open <= later + 60 * MS,
                "apart {apart}: A opened late ({a_open:?})"
            );
            assert!(
                b_open <= later + 60 * MS,
                "apart {apart}: B opened late ({b_open:?})"
            );
            assert!(
                a_open >= later && b_open >= later,
                "nothing opens before B punches"
            );
        }
    }

    #[test]
    fn nat_detection_from_exchanged_addresses() {
        let t0 = Instant::now();
        let public_b: SocketAddr = "198.51.100.2:40000".parse().unwrap();
        let mut p = Puncher::new(t0, a(), public_b, 50 * MS, 1000 * MS, 100, 3);
        assert!(!p.nat_between());
        // B says its own address is b() but we reach it at public_b: B is behind a NAT.
        let punch = Packet {
            kind: Kind::Punch,
            nonce: 9,
            sender_local: b(),
            observed: None,
        }
        .encode();
        p.handle(t0, public_b, &punch).unwrap();
        assert!(p.nat_between());
        // Without NAT the addresses agree.
        let mut q = Puncher::new(t0, a(), b(), 50 * MS, 1000 * MS, 100, 3);
        let punch = Packet {
            kind: Kind::Punch,
            nonce: 9,
            sender_local: b(),
            observed: None,
        }
        .encode();
        q.handle(t0, b(), &punch).unwrap();
        let ack = Packet {
            kind: Kind::Ack,
            nonce: 3,
            sender_local: b(),
            observed: Some(a()),
        }
        .encode();
        q.handle(t0, b(), &ack);
        assert!(!q.nat_between());
    }

    proptest! {
        #[test]
        fn round_trip(kind in any::<bool>(), nonce in any::<u64>(), l in any::<SocketAddr>(), o in any::<SocketAddr>()) {
            let p = Packet { kind: if kind { Kind::Punch } else { Kind::Ack }, nonce, sender_local: l, observed: if kind { None } else { Some(o) } };
            let decoded = Packet::decode(&p.encode()).unwrap();
            // v4-mapped v6 addresses decode as v6 only if they were v6; compare by value.
            prop_assert_eq!(decoded.kind, p.kind);
            prop_assert_eq!(decoded.nonce, p.nonce);
            prop_assert_eq!(decoded.sender_local.port(), l.port());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Packet::decode(&bytes);
        }
    }

    #[test]
    fn keyed_acks_count_only_from_the_peer_with_the_key() {
        let now = Instant::now();
        let (a_id, b_id) = ([1u8; 32], [2u8; 32]);
        let a_addr: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b_addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        let secret = [9u8; 32];
        // A puncher from `local` to `target` whose acks are keyed.
        let keyed = |local, target, nonce, secret: &[u8; 32], me, peer| {
            let t = Duration::from_millis(50);
            let mut p = Puncher::new(now, local, target, t, Duration::from_secs(5), 10, nonce);
            p.set_ack_key(AckKey::new(&[*secret], me, peer));
            p
        };
        let mut a = keyed(a_addr, b_addr, 77, &secret, &a_id, &b_id);
        let mut b = keyed(b_addr, a_addr, 88, &secret, &b_id, &a_id);
        let punch = a.poll_transmit(now).unwrap();
        // Whoever sits at the target's address and merely echoes the nonce does not confirm.
        let echoed = Packet {
            kind: Kind::Ack,
            nonce: 77,
            sender_local: b_addr,
            observed: Some(a_addr),
        }
        .encode();
        assert!(a.handle(now, b_addr, &echoed).is_none());
        assert!(!a.path_confirmed());
        // Nor does A's own keyed ack, reflected back to it.
        let mut reflect = keyed(a_addr, b_addr, 1, &secret, &a_id, &b_id);
        let own = reflect.handle(now, b_addr, &punch).unwrap();
        assert!(a.handle(now, b_addr, &own).is_none());
        assert!(!a.path_confirmed());
        // A key for another pair does not either.
        let mut stranger = keyed(b_addr, a_addr, 2, &[8u8; 32], &b_id, &a_id);
        let wrong = stranger.handle(now, a_addr, &punch).unwrap();
        a.handle(now, b_addr, &wrong);
        assert!(!a.path_confirmed());
        // The peer with the key does.
        let ack = b.handle(now, a_addr, &punch).unwrap();
        a.handle(now, b_addr, &ack);
        assert!(a.path_confirmed());
    }
}
