//! A proxy's counters (`getStats()`): its connections by path, its tunnels open and in total,
//! the bytes they carried, and failed connection attempts by error code. Tunnel bytes are
//! counted as they move (a relaxed add per buffer), so a long tunnel shows up while it runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::events::Path;

/// A snapshot of a proxy's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections whose path is direct now.
    pub direct: u64,
    /// Connections on a punched path now.
    pub punched: u64,
    /// Connections carried by a relay now.
    pub relayed: u64,
    /// Tunnels open now.
    pub tunnels_open: u64,
    /// Tunnels opened since start.
    pub tunnels_total: u64,
    /// Tunnel bytes from the local TCP side into QUIC.
    pub bytes_sent: u64,
    /// Tunnel bytes from QUIC to the local TCP side.
    pub bytes_received: u64,
    /// Failed connection attempts by error code (handshakes and dials), and `maxConnections`
    /// for those refused at the proxy's limit.
    pub failures: Vec<(&'static str, u64)>,
}

/// The running counters of one start.
#[derive(Default)]
pub(crate) struct Counters {
    open: AtomicU64,
    total: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    /// Keyed by error code: a fixed, small set.
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// An open tunnel; closing it (dropping this) counts it out.
pub(crate) struct Tunnel(Arc<Counters>);

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Counters {
    /// A tunnel opened.
    pub(crate) fn tunnel(self: &Arc<Self>) -> Tunnel {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        Tunnel(self.clone())
    }

    /// `n` tunnel bytes went from TCP into QUIC.
    pub(crate) fn sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` tunnel bytes went from QUIC to TCP.
    pub(crate) fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A connection attempt failed with error `code`.
    pub(crate) fn failed(&self, code: &'static str) {
        *self
            .failures
            .lock()
            .expect("failures lock")
            .entry(code)
            .or_insert(0) += 1;
    }

    /// The counters, with the connections' current paths.
    pub(crate) fn snapshot(&self, paths: impl IntoIterator<Item = Path>) -> ProxyStats {
        let mut s = ProxyStats {
            tunnels_open: self.open.load(Ordering::Relaxed),
            tunnels_total: self.total.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
            failures: self
                .failures
                .lock()
                .expect("failures lock")
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            ..ProxyStats::default()
        };
        for p in paths {
            match p {
                Path::Direct => s.direct += 1,
                Path::Punched => s.punched += 1,
                Path::Relayed => s.relayed += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnels_bytes_and_failures_add_up() {
        let c = Arc::new(Counters::default());
        let a = c.tunnel();
        let b = c.tunnel();
        drop(a);
        c.sent(10);
        c.received(7);
        c.failed("ErrorConnectionStartTimeout");
        c.failed("ErrorConnectionStartTimeout");
        let s = c.snapshot([Path::Relayed, Path::Direct, Path::Relayed]);
        assert_eq!((s.tunnels_open, s.tunnels_total), (1, 2));
        assert_eq!((s.bytes_sent, s.bytes_received), (10, 7));
        assert_eq!((s.direct, s.punched, s.relayed), (1, 0, 2));
        assert_eq!(s.failures, vec![("ErrorConnectionStartTimeout", 2)]);
        drop(b);
        assert_eq!(c.snapshot([]).tunnels_open, 0);
    }
}
