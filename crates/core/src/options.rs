//! Connection timing options shared by both proxies (their JS names in parentheses).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Timing of connections. Defaults are the JS API's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnOptions {
    /// Budget to establish a connection: punch + handshake + ack (`connConnectTime`, 20 s).
    pub connect_time: Duration,
    /// Silence after which a connection is declared dead (`connKeepAliveTimeoutTime`, 20 s).
    pub keepalive_timeout: Duration,
    /// Keepalive cadence (`connKeepAliveIntervalTime`, 1 s); must be below the timeout and below
    /// the NAT's UDP timeout so the mapping stays open.
    pub keepalive_interval: Duration,
    /// Punch datagram cadence while punching (`connPunchIntervalTime`, 50 ms).
    pub punch_interval: Duration,
    /// Grace for an orderly close before a hard close (`connEndTime`, 1 s).
    pub end_time: Duration,
    /// Test-only: send no keepalives (proves the NAT lab's keepalive test can fail).
    pub keepalive_disabled: bool,
    /// The UDP socket's kernel settings (defaults: large buffers, segment offload on).
    pub udp: UdpTuning,
}

/// Kernel settings of a proxy's UDP socket. The defaults are the fast path; the others exist so
/// the slow paths real systems fall back to (small buffers, no segment offload) stay tested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpTuning {
    /// Receive and send buffer size asked for, bytes (default
    /// [`crate::socket::buffers::WANTED`], 7 MiB).
    pub buffer: usize,
    /// Send and receive batches of datagrams in one system call where the kernel can (GSO
    /// and GRO on Linux). Default on.
    pub segment_offload: bool,
    /// Run the socket without ECN, packet info, don't-fragment and segment offload, one
    /// datagram per system call: what keynet falls back to on its own where the system refuses
    /// those options (wine's Winsock does). Default off.
    pub portable: bool,
}

impl Default for UdpTuning {
    fn default() -> Self {
        Self {
            buffer: crate::socket::buffers::WANTED,
            segment_offload: true,
            portable: false,
        }
    }
}

impl Default for ConnOptions {
    fn default() -> Self {
        Self {
            connect_time: Duration::from_millis(20_000),
            keepalive_timeout: Duration::from_millis(20_000),
            keepalive_interval: Duration::from_millis(1_000),
            punch_interval: Duration::from_millis(50),
            end_time: Duration::from_millis(1_000),
            keepalive_disabled: false,
            udp: UdpTuning::default(),
        }
    }
}

impl ConnOptions {
    /// Checks the options are usable together.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("connConnectTime", self.connect_time),
            ("connKeepAliveTimeoutTime", self.keepalive_timeout),
            ("connKeepAliveIntervalTime", self.keepalive_interval),
            ("connPunchIntervalTime", self.punch_interval),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be greater than 0"
                )));
            }
        }
        if self.keepalive_interval >= self.keepalive_timeout {
            return Err(Error::InvalidArgument(
                "connKeepAliveIntervalTime must be less than connKeepAliveTimeoutTime".into(),
            ));
        }
        Ok(())
    }

    /// The QUIC transport these options imply.
    pub fn transport(&self) -> Arc<quinn::TransportConfig> {
        Arc::new(self.transport_config())
    }

    /// The transport of a connection between two proxies: like [`ConnOptions::transport_config`],
    /// but quinn's idle timeout comes later than `connKeepAliveTimeoutTime` (by `connEndTime`
    /// and a keepalive interval), so the proxy's own silence watch ends the connection first, in
    /// order: its tunnels deliver what arrived and end with a FIN, and the peer is told.
    pub fn peer_transport_config(&self) -> quinn::TransportConfig {
        let mut t = self.transport_config();
        let idle = self.keepalive_timeout + self.end_time + self.keepalive_interval;
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).unwrap_or(quinn::VarInt::MAX.into()),
        ));
        t
    }

    /// The same, to adjust before use.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval((!self.keepalive_disabled).then_some(self.keepalive_interval));
        // Initial packets toward a peer that is still punching are dropped by its NAT; a lower
        // initial RTT estimate makes quinn retransmit them sooner (and the dial restarts the
        // handshake as soon as the punched path opens).
        t.initial_rtt(Duration::from_millis(100));
        // Idle timeout is capped by QUIC's varint range (about 146 years); ours is far below.
        let idle = quinn::IdleTimeout::try_from(self.keepalive_timeout)
            .unwrap_or(quinn::VarInt::MAX.into());
        t.max_idle_timeout(Some(idle));
        // Tunnels are long-lived and numerous: allow many concurrent streams per connection and
        // windows large enough for a single tunnel to fill a fast link.
        t.max_concurrent_bidi_streams(4096u32.into());
        // One unidirectional stream each way at a time: the hello (see proto::hello), later
        // the goaway (proto::goaway).
        t.max_concurrent_uni_streams(1u32.into());
        t.stream_receive_window((8u32 * 1024 * 1024).into());
        t.receive_window((32u32 * 1024 * 1024).into());
        t.send_window(32 * 1024 * 1024);
        t
    }
}
