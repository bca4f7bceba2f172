//! Every bound the relay enforces, in one table: the field, its default, its name as a
//! `keynet-relay` flag and as a `Relay.start()` option, and what it means. The CLI's help, the
//! flag parser, the JS binding and the README's limits table all read this table, so a limit
//! cannot be settable in one place and missing in another.

use std::time::Duration;

use crate::error::{Error, Result};

/// What a limit's number means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A whole number (at least 1).
    Count,
    /// Bytes (a whole number).
    Bytes,
    /// Seconds on the CLI, milliseconds in JS.
    Seconds,
    /// Events per second (may be fractional).
    PerSecond,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct LimitInfo {
    /// The `Relay.start()` option (camelCase).
    pub key: &'static str,
    /// The `keynet-relay` flag (without the leading `--`).
    pub flag: &'static str,
    /// What the number means.
    pub unit: Unit,
    /// What it bounds, and what happens beyond it.
    pub doc: &'static str,
}

/// A value a limit can hold, read from and shown as a number in its unit.
trait LimitValue: Sized {
    fn from_number(v: f64) -> Option<Self>;
    fn number(&self) -> f64;
}

impl LimitValue for usize {
    fn from_number(v: f64) -> Option<Self> {
        (v >= 1.0 && v.fract() == 0.0 && v <= 1e12).then_some(v as Self)
    }
    fn number(&self) -> f64 {
        *self as f64
    }
}

impl LimitValue for f64 {
    fn from_number(v: f64) -> Option<Self> {
        (v > 0.0 && v.is_finite()).then_some(v)
    }
    fn number(&self) -> f64 {
        *self
    }
}

impl LimitValue for Duration {
    fn from_number(v: f64) -> Option<Self> {
        (v > 0.0 && v.is_finite() && v < 1e9).then(|| Self::from_secs_f64(v))
    }
    fn number(&self) -> f64 {
        self.as_secs_f64()
    }
}

macro_rules! limits {
    ($( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty = $default:expr,
        $key:literal, $flag:literal, $unit:ident, $doc:literal; )*) => {
        /// The relay's limits; see [`TABLE`] for what each bounds.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Limits {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// Every limit, in the order `--help` lists them.
        pub const TABLE: &[LimitInfo] = &[
            $( LimitInfo { key: $key, flag: $flag, unit: Unit::$unit, doc: $doc }, )*
        ];

        impl Limits {
            /// Sets the limit named `name` (its option key or its flag) to `value` in its unit
            /// (seconds for times).
            pub fn set(&mut self, name: &str, value: f64) -> Result<()> {
                $(
                    if name == $key || name == $flag {
                        self.$field = LimitValue::from_number(value).ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "{}: {value} is not {}",
                                $key,
                                Unit::$unit.expects()
                            ))
                        })?;
                        return Ok(());
                    }
                )*
                Err(Error::InvalidArgument(format!("no relay limit is called {name:?}")))
            }

            /// The value of the limit named `name`, in its unit.
            pub fn get(&self, name: &str) -> Option<f64> {
                $( if name == $key || name == $flag { return Some(self.$field.number()); } )*
                None
            }
        }
    };
}

limits! {
    /// Relay sessions at once (handshaking or registered), over both transports.
    max_connections: usize = 10_000, "maxConnections", "max-connections", Count,
        "relay sessions at once, both transports; more are refused at once";
    /// Sessions at once from one IP address (one IPv6 /64).
    max_connections_per_ip: usize = 100, "maxConnectionsPerIp", "max-connections-per-ip", Count,
        "sessions at once from one IP (an IPv6 /64)";
    /// New sessions a second from one IP, sustained.
    handshake_rate: f64 = 5.0, "handshakeRate", "handshake-rate", PerSecond,
        "new sessions a second from one IP, sustained (a token bucket)";
    /// New sessions from one IP in a burst.
    handshake_burst: usize = 20, "handshakeBurst", "handshake-burst", Count,
        "new sessions from one IP in a burst";
    /// Time to register after the handshake.
    register_timeout: Duration = Duration::from_secs(10), "registerTimeout", "register-timeout", Seconds,
        "close a session not registered this long after its handshake, however often it pings";
    /// Time a registered node may stay silent (nodes ping every 15 s).
    node_timeout: Duration = Duration::from_secs(45), "nodeTimeout", "node-timeout", Seconds,
        "disconnect a node silent this long, or one that reads nothing the relay writes this long";
    /// Peers one node may start relaying packets to.
    max_peers: usize = 64, "maxPeers", "max-peers", Count,
        "distinct nodes one node may start sending packets to (answering is free)";
    /// Largest relayed datagram (at most the protocol's 1500).
    max_datagram: usize = 1500, "maxDatagram", "max-datagram", Bytes,
        "largest relayed datagram, 1200 to 1500 (QUIC's minimum to an Ethernet MTU); larger ones are dropped";
    /// Bytes of relayed packets queued toward one node.
    queue_bytes: usize = 1 << 20, "queueBytes", "queue-bytes", Bytes,
        "relayed packets queued toward one node; beyond, packets are dropped (QUIC recovers; public-port bytes are never dropped)";
    /// Rendezvous requests of one node in a burst.
    rendezvous_burst: usize = 16, "rendezvousBurst", "rendezvous-burst", Count,
        "rendezvous requests of one node in a burst (only with a node it relays packets with)";
    /// Rendezvous requests of one node a second, sustained.
    rendezvous_rate: f64 = 4.0, "rendezvousRate", "rendezvous-rate", PerSecond,
        "rendezvous requests of one node a second, sustained";
    /// Public ports held at once (connected and retained nodes).
    max_ports: usize = 1024, "maxPorts", "max-ports", Count,
        "public ports held at once, for connected and retained nodes";
    /// Public ports held at once for nodes from one IP.
    max_ports_per_ip: usize = 4, "maxPortsPerIp", "max-ports-per-ip", Count,
        "public ports held at once for nodes that registered from one IP (fresh identities are free to make)";
    /// Clients at once on one public port.
    max_clients: usize = 256, "maxClients", "max-clients", Count,
        "clients at once on one public port; more are closed at once";
    /// Public-port clients at once on the whole relay.
    max_public_clients: usize = 4096, "maxPublicClients", "max-public-clients", Count,
        "public-port clients at once on the whole relay (each may hold a 256 KiB window of queued bytes: 1 GiB at most by default)";
    /// Time a public client may accept no byte while data waits for it.
    stall_timeout: Duration = Duration::from_secs(30), "stallTimeout", "stall-timeout", Seconds,
        "reset a public-port client that accepts no byte this long while data waits for it";
}

impl Unit {
    /// What a value must be, for error messages.
    fn expects(self) -> &'static str {
        match self {
            Self::Count | Self::Bytes => "a whole number of at least 1",
            Self::Seconds => "a time greater than 0",
            Self::PerSecond => "a rate greater than 0",
        }
    }

    /// The placeholder `--help` shows.
    fn placeholder(self) -> &'static str {
        match self {
            Self::Count => "N",
            Self::Bytes => "BYTES",
            Self::Seconds => "SECONDS",
            Self::PerSecond => "PER_SECOND",
        }
    }
}

impl Limits {
    /// The limits as enforced: a per-address limit above its total is the total (lowering
    /// `maxConnections` alone must not need `maxConnectionsPerIp` lowered too).
    pub fn effective(mut self) -> Self {
        self.max_connections_per_ip = self.max_connections_per_ip.min(self.max_connections);
        self.max_ports_per_ip = self.max_ports_per_ip.min(self.max_ports);
        self
    }

    /// Checks the limits against the protocol.
    pub fn validate(&self) -> Result<()> {
        let max_datagram = crate::proto::relay::MAX_DATAGRAM;
        if self.queue_bytes < max_datagram {
            return Err(Error::InvalidArgument(format!(
                "queueBytes must hold one datagram ({max_datagram} bytes)"
            )));
        }
        if !(1200..=max_datagram).contains(&self.max_datagram) {
            return Err(Error::InvalidArgument(format!(
                "maxDatagram must be 1200 to {max_datagram} bytes"
            )));
        }
        Ok(())
    }

    /// The limits section of `keynet-relay --help`, one flag per limit with its default.
    pub fn help() -> String {
        let defaults = Self::default();
        let mut out = String::new();
        for l in TABLE {
            let value = defaults.get(l.key).expect("every row has a field");
            let head = format!("    --{} {}", l.flag, l.unit.placeholder());
            // The default stays on one line (a no-break space until wrapped).
            let doc = format!("{} (default\u{a0}{})", l.doc, show(value));
            out.push_str(&wrap(&head, &doc));
        }
        out
    }
}

/// A number as the help shows it: whole numbers without a fraction.
fn show(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as u64)
    } else {
        format!("{v}")
    }
}

/// `head` then `doc` wrapped at 100 columns, indented under column 29.
fn wrap(head: &str, doc: &str) -> String {
    const COL: usize = 29;
    let mut out = String::new();
    let mut line = if head.len() + 1 < COL {
        format!("{head:COL$}")
    } else {
        out.push_str(head);
        out.push('\n');
        " ".repeat(COL)
    };
    for word in doc.split(' ') {
        if line.len() + word.len() + 1 > 100 && !line.trim().is_empty() {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(COL);
        }
        line.push_str(word);
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out.replace('\u{a0}', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_settable_by_key_and_by_flag_and_shown_with_its_default() {
        let mut l = Limits::default();
        for row in TABLE {
            let before = l.get(row.key).unwrap();
            l.set(row.key, before + 1.0).unwrap();
            assert_eq!(l.get(row.flag), Some(before + 1.0), "{}", row.key);
            assert!(Limits::help().contains(&format!("--{} ", row.flag)));
        }
        assert!(Limits::help().contains("(default 10000)"));
        assert!(Limits::help().contains("(default 30)"));
    }

    #[test]
    fn bad_values_and_names_are_refused_with_the_option_named() {
        let mut l = Limits::default();
        let e = l.set("maxPeers", 0.0).unwrap_err().to_string();
        assert!(e.contains("maxPeers") && e.contains("whole number"), "{e}");
        assert!(l.set("max-peers", 1.5).is_err());
        assert!(l.set("stallTimeout", -1.0).is_err());
        assert!(l.set("handshakeRate", f64::NAN).is_err());
        assert!(l.set("nope", 1.0).unwrap_err().to_string().contains("nope"));
        l.set("queueBytes", 100.0).unwrap();
        assert!(l.validate().is_err());
        assert!(Limits::default().validate().is_ok());
        let mut low = Limits::default();
        low.set("maxConnections", 50.0).unwrap();
        assert_eq!(low.effective().max_connections_per_ip, 50);
    }
}
