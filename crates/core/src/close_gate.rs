//! A connection's close is never held back by its congestion window.
//!
//! RFC 9002 §7 exempts packets that carry only CONNECTION_CLOSE from congestion control.
//! quinn-proto 0.11.19 holds the close behind the window while stream data is still queued
//! (quinn-rs/quinn#2785; fixed upstream by #2787, in no release yet), and `close()` stops the
//! timers that would reopen the window. So a connection closed while its window is full (mid
//! transfer, or with a packet lost just before) never sends the close: the peer learns at its
//! keepalive timeout, 20 s by default, instead of at once.
//!
//! Every keynet connection's congestion controller is quinn's Cubic behind a [`CloseGate`] that
//! the code closing the connection shares: opened just before `close()`, it lifts the window.
//! In the closed state quinn sends nothing but the close, so nothing else passes; between
//! opening the gate and the close taking hold, at most one send (10 packets) could slip past
//! the window. Drop this module once a quinn-proto release carries #2787.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Shared by a connection's congestion controller and the code that closes it.
#[derive(Clone, Default, Debug)]
pub(crate) struct CloseGate(Arc<AtomicBool>);

impl CloseGate {
    /// A closed gate: the window is the controller's own.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Lifts the window for good: call right before closing the connection.
    pub(crate) fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Closes `conn` with `code` and `reason`, its close not held back by the window.
    pub(crate) fn close(&self, conn: &quinn::Connection, code: quinn::VarInt, reason: &[u8]) {
        self.open();
        conn.close(code, reason);
    }

    /// `transport` with this gate in front of its congestion controller (quinn's default,
    /// Cubic, starting at `initial_window` bytes when given). Each connection needs its own
    /// transport config for its own gate.
    pub(crate) fn install(
        &self,
        transport: &mut quinn::TransportConfig,
        initial_window: Option<u64>,
    ) {
        let mut cubic = CubicConfig::default();
        if let Some(window) = initial_window {
            cubic.initial_window(window);
        }
        transport.congestion_controller_factory(Arc::new(GatedFactory {
            inner: Arc::new(cubic),
            gate: self.clone(),
        }));
    }
}

/// Builds [`Gated`] controllers (one per path of the connection) sharing one gate.
struct GatedFactory {
    inner: Arc<dyn ControllerFactory + Send + Sync>,
    gate: CloseGate,
}

impl ControllerFactory for GatedFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Gated {
            inner: self.inner.clone().build(now, current_mtu),
            gate: self.gate.clone(),
        })
    }
}

/// A controller whose window is unlimited once its gate is open; otherwise `inner`'s.
struct Gated {
    inner: Box<dyn Controller>,
    gate: CloseGate,
}

/// The window of an open gate: past any bytes in flight, and above `u32::MAX` so quinn's
/// pacer stands aside too.
const OPEN_WINDOW: u64 = u64::MAX / 2;

impl Controller for Gated {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        if self.gate.is_open() {
            OPEN_WINDOW
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            gate: self.gate.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_gate_lifts_the_window_of_every_path_and_a_closed_one_keeps_cubics() {
        let gate = CloseGate::new();
        let factory = Arc::new(GatedFactory {
            inner: Arc::new(CubicConfig::default()),
            gate: gate.clone(),
        });
        let now = Instant::now();
        let cubic = Arc::new(CubicConfig::default()).build(now, 1200);
        let first = factory.clone().build(now, 1200);
        let copy = first.clone_box();
        assert_eq!(first.window(), cubic.window());
        assert!(first.window() < u64::from(u32::MAX));
        gate.open();
        let later_path = factory.build(now, 1200);
        for c in [&first, &copy, &later_path] {
            assert_eq!(c.window(), OPEN_WINDOW);
        }
    }
}
