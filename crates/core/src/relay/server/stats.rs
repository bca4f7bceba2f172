//! The relay's counters: what it carried, dropped and refused, by reason. Counting is a relaxed
//! atomic add on paths that already do far more work; a snapshot ([`RelayStats`]) is what
//! `RelayServer::stats()`, the JS `getMetrics()` and the Prometheus endpoint show.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a relayed packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The target's queue was at `queue_bytes`.
    QueueFull,
    /// The target is not registered.
    UnknownPeer,
    /// The sender is at `max_peers`.
    PeerLimit,
    /// Larger than `max_datagram`.
    TooLarge,
    /// A UDP channel datagram whose key names no session, or that came from an address not
    /// its session's.
    BadChannel,
}

/// Why the relay refused something (a session, a registration, a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` sessions open.
    MaxConnections,
    /// `max_connections_per_ip` sessions from one address open.
    MaxConnectionsPerIp,
    /// An address opened sessions too fast.
    HandshakeRate,
    /// A TLS or QUIC handshake failed (or took too long).
    Handshake,
    /// A wrong registration token.
    Token,
    /// Not registered within `register_timeout`.
    RegisterTimeout,
    /// A malformed frame, or a broken public-port window.
    Malformed,
    /// A node that reads none of its replies.
    NotReading,
    /// A rendezvous with a node the asker relays nothing with.
    NoRelayedTraffic,
    /// Rendezvous requests too fast.
    RendezvousRate,
    /// No public port: at `max_ports` or `max_ports_per_ip`, or ports are off.
    NoPort,
    /// A public-port client beyond `max_clients` or `max_public_clients`.
    MaxClients,
}

impl Drop {
    const ALL: [Self; 5] = [
        Self::QueueFull,
        Self::UnknownPeer,
        Self::PeerLimit,
        Self::TooLarge,
        Self::BadChannel,
    ];

    /// The reason's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::UnknownPeer => "unknown_peer",
            Self::PeerLimit => "peer_limit",
            Self::TooLarge => "too_large",
            Self::BadChannel => "bad_channel",
        }
    }
}

impl Refusal {
    const ALL: [Self; 12] = [
        Self::MaxConnections,
        Self::MaxConnectionsPerIp,
        Self::HandshakeRate,
        Self::Handshake,
        Self::Token,
        Self::RegisterTimeout,
        Self::Malformed,
        Self::NotReading,
        Self::NoRelayedTraffic,
        Self::RendezvousRate,
        Self::NoPort,
        Self::MaxClients,
    ];

    /// The reason's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::HandshakeRate => "handshake_rate",
            Self::Handshake => "handshake",
            Self::Token => "token",
            Self::RegisterTimeout => "register_timeout",
            Self::Malformed => "malformed",
            Self::NotReading => "not_reading",
            Self::NoRelayedTraffic => "no_relayed_traffic",
            Self::RendezvousRate => "rendezvous_rate",
            Self::NoPort => "no_port",
            Self::MaxClients => "max_clients",
        }
    }
}

/// The running counters.
#[derive(Default)]
pub(crate) struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    on_channel: AtomicU64,
    rendezvous: AtomicU64,
    stalled: AtomicU64,
    drops: [AtomicU64; Drop::ALL.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
}

impl Counters {
    /// A packet of `len` bytes was queued for its target.
    pub(crate) fn relayed(&self, len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// `count` packets of `bytes` bytes in all were sent to their target on its UDP channel.
    pub(crate) fn relayed_on_channel(&self, count: u64, bytes: usize) {
        self.packets.fetch_add(count, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.on_channel.fetch_add(count, Ordering::Relaxed);
    }

    /// `count` packets were dropped for `why`.
    pub(crate) fn dropped(&self, why: Drop, count: u64) {
        self.drops[why as usize].fetch_add(count, Ordering::Relaxed);
    }

    /// Counts a refusal; returns how many of its kind there were so far.
    pub(crate) fn refused(&self, why: Refusal) -> u64 {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn rendezvous_sent(&self) {
        self.rendezvous.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stalled_reset(&self) {
        self.stalled.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, with the gauges the caller read.
    pub(crate) fn snapshot(&self, gauges: Gauges) -> RelayStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            gauges,
            packets_relayed: get(&self.packets),
            bytes_relayed: get(&self.bytes),
            packets_on_channel: get(&self.on_channel),
            rendezvous_sent: get(&self.rendezvous),
            stalled_resets: get(&self.stalled),
            drops: Drop::ALL
                .iter()
                .map(|d| (d.as_str(), get(&self.drops[*d as usize])))
                .collect(),
            refusals: Refusal::ALL
                .iter()
                .map(|r| (r.as_str(), get(&self.refusals[*r as usize])))
                .collect(),
        }
    }
}

/// What the relay holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Sessions over QUIC (handshaking or registered).
    pub sessions_quic: u64,
    /// Sessions over TLS/WebSocket.
    pub sessions_websocket: u64,
    /// Registered nodes.
    pub registered: u64,
    /// Public ports held (connected and retained nodes).
    pub allocations: u64,
    /// Public-port clients connected.
    pub public_clients: u64,
    /// Bytes of relayed packets queued toward nodes.
    pub queued_bytes: u64,
    /// Addresses the admission tables remember.
    pub tracked_addresses: u64,
}

/// A snapshot of the relay's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// What it holds now.
    pub gauges: Gauges,
    /// Relayed packets queued for their target.
    pub packets_relayed: u64,
    /// Their bytes.
    pub bytes_relayed: u64,
    /// Of the relayed packets, those sent on their target's UDP channel (the rest were
    /// queued for its stream).
    pub packets_on_channel: u64,
    /// Rendezvous pairs arranged.
    pub rendezvous_sent: u64,
    /// Public-port clients reset for accepting no byte for the stall time.
    pub stalled_resets: u64,
    /// Dropped packets, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Refusals, by reason.
    pub refusals: Vec<(&'static str, u64)>,
}

impl RelayStats {
    /// Refusals for `why` so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals
            .iter()
            .find(|(k, _)| *k == why.as_str())
            .map_or(0, |(_, v)| *v)
    }

    /// Drops for `why` so far.
    pub fn drops(&self, why: Drop) -> u64 {
        self.drops
            .iter()
            .find(|(k, _)| *k == why.as_str())
            .map_or(0, |(_, v)| *v)
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let g = &self.gauges;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            out.push_str(&format!("# HELP keynet_relay_{name} {help}\n"));
            out.push_str(&format!("# TYPE keynet_relay_{name} {kind}\n"));
            for (labels, v) in rows {
                out.push_str(&format!("keynet_relay_{name}{labels} {v}\n"));
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        metric(
            "sessions",
            "gauge",
            "Relay sessions open, by transport.",
            &[
                ("{transport=\"quic\"}".into(), g.sessions_quic),
                ("{transport=\"websocket\"}".into(), g.sessions_websocket),
            ],
        );
        let single = [
            (
                "registered_nodes",
                "gauge",
                "Registered nodes.",
                g.registered,
            ),
            (
                "allocations",
                "gauge",
                "Public ports held (connected and retained nodes).",
                g.allocations,
            ),
            (
                "public_clients",
                "gauge",
                "Public-port clients connected.",
                g.public_clients,
            ),
            (
                "queued_bytes",
                "gauge",
                "Bytes of relayed packets queued toward nodes.",
                g.queued_bytes,
            ),
            (
                "packets_relayed_total",
                "counter",
                "Relayed packets.",
                self.packets_relayed,
            ),
            (
                "bytes_relayed_total",
                "counter",
                "Relayed packet bytes.",
                self.bytes_relayed,
            ),
            (
                "packets_on_channel_total",
                "counter",
                "Relayed packets sent on their target's UDP channel.",
                self.packets_on_channel,
            ),
            (
                "rendezvous_total",
                "counter",
                "Rendezvous pairs arranged.",
                self.rendezvous_sent,
            ),
            (
                "stalled_resets_total",
                "counter",
                "Public-port clients reset for accepting no byte for the stall time.",
                self.stalled_resets,
            ),
        ];
        for (name, kind, help, v) in single {
            metric(name, kind, help, &one(v));
        }
        let labelled = |rows: &[(&str, u64)]| {
            rows.iter()
                .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v))
                .collect::<Vec<_>>()
        };
        metric(
            "drops_total",
            "counter",
            "Relayed packets dropped, by reason.",
            &labelled(&self.drops),
        );
        metric(
            "refusals_total",
            "counter",
            "Refused sessions and requests, by reason.",
            &labelled(&self.refusals),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_by_reason_and_in_prometheus_text() {
        let c = Counters::default();
        c.relayed(1200);
        c.relayed(100);
        c.dropped(Drop::QueueFull, 1);
        c.refused(Refusal::HandshakeRate);
        c.refused(Refusal::HandshakeRate);
        let s = c.snapshot(Gauges {
            registered: 3,
            ..Gauges::default()
        });
        assert_eq!(s.packets_relayed, 2);
        assert_eq!(s.bytes_relayed, 1300);
        assert_eq!(s.drops(Drop::QueueFull), 1);
        assert_eq!(s.refusals(Refusal::HandshakeRate), 2);
        assert_eq!(s.refusals(Refusal::Token), 0);
        let text = s.prometheus();
        assert!(text.contains("keynet_relay_registered_nodes 3\n"), "{text}");
        assert!(text.contains("keynet_relay_refusals_total{reason=\"handshake_rate\"} 2\n"));
        assert!(text.contains("# TYPE keynet_relay_bytes_relayed_total counter\n"));
    }
}
