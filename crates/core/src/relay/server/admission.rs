//! Who may open a relay session, without I/O: at most `max_connections` at once, at most
//! `max_connections_per_ip` from one address, and new ones from one address at a bounded rate
//! (a token bucket per address). Addresses are IPv4 addresses or IPv6 /64 prefixes (one host
//! usually has a whole /64). The per-address tables are bounded too: an address's entry goes
//! when it holds no session and its bucket is full again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::limits::Limits;

/// Addresses whose handshake buckets are remembered at once. Past it, buckets that are full
/// again are forgotten; if none is, all are (the session limits still hold).
const MAX_BUCKETS: usize = 65_536;

/// Why a session was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` sessions are open.
    Total,
    /// `max_connections_per_ip` sessions from this address are open.
    PerIp,
    /// This address opens sessions faster than `handshake_rate` allows.
    Rate,
}

/// A token bucket: `burst` tokens, refilled at `rate` a second.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, burst: f64, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, burst: f64, rate: f64, now: Instant) -> bool {
        self.refill(burst, rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, burst: f64, rate: f64, now: Instant) -> bool {
        self.refill(burst, rate, now);
        self.tokens >= burst
    }
}

/// The key sessions are counted under.
pub(crate) fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
        v4 => v4,
    }
}

/// Open sessions and handshake buckets.
pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    burst: f64,
    rate: f64,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            burst: limits.handshake_burst as f64,
            rate: limits.handshake_rate,
            total: 0,
            per_ip: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    /// Admits a session from `ip` (then counted until [`Admission::release`]) or says why not.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let ip = source(ip);
        if self.total >= self.max_total {
            return Err(Refused::Total);
        }
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_BUCKETS {
            self.prune(now);
        }
        let (burst, rate) = (self.burst, self.rate);
        let bucket = self
            .buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(burst, now));
        if !bucket.take(burst, rate, now) {
            return Err(Refused::Rate);
        }
        self.total += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// Whether a source that has not proved its address (QUIC Retry) must before it is counted:
    /// when sessions are past half the total, or its address has spent half its burst. A
    /// spoofed flood then cannot drain another address's budget nor fill the table, and a
    /// relay at ease costs nobody a round trip.
    pub(crate) fn needs_proof(&mut self, ip: IpAddr, now: Instant) -> bool {
        let (burst, rate) = (self.burst, self.rate);
        let low = self.buckets.get_mut(&source(ip)).is_some_and(|b| {
            b.refill(burst, rate, now);
            b.tokens <= burst / 2.0
        });
        low || self.total >= self.max_total / 2
    }

    /// A session admitted from `ip` ended.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        let ip = source(ip);
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Sessions open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.total
    }

    /// Addresses remembered now (sessions or buckets), for the bounded-memory tests.
    pub(crate) fn tracked(&self) -> usize {
        self.per_ip.len() + self.buckets.len()
    }

    fn prune(&mut self, now: Instant) {
        let (burst, rate) = (self.burst, self.rate);
        self.buckets.retain(|_, b| !b.is_full(burst, rate, now));
        if self.buckets.len() >= MAX_BUCKETS {
            tracing::warn!(
                "{MAX_BUCKETS} addresses are opening sessions: handshake rates forgotten"
            );
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(total: usize, per_ip: usize, burst: usize, rate: f64) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            handshake_burst: burst,
            handshake_rate: rate,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sessions_are_bounded_in_total_and_per_address_and_released() {
        let mut a = Admission::new(&limits(3, 2, 100, 100.0));
        let now = Instant::now();
        a.admit(ip("10.0.0.1"), now).unwrap();
        a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1"), now), Err(Refused::PerIp));
        a.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3"), now), Err(Refused::Total));
        a.release(ip("10.0.0.1"));
        a.admit(ip("10.0.0.3"), now).unwrap();
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address_and_mapped_v4_as_its_v4() {
        let mut a = Admission::new(&limits(10, 1, 100, 100.0));
        let now = Instant::now();
        a.admit(ip("2001:db8:1:2::1"), now).unwrap();
        assert_eq!(a.admit(ip("2001:db8:1:2::ffff"), now), Err(Refused::PerIp));
        a.admit(ip("2001:db8:1:3::1"), now).unwrap();
        a.admit(ip("192.0.2.9"), now).unwrap();
        assert_eq!(a.admit(ip("::ffff:192.0.2.9"), now), Err(Refused::PerIp));
    }

    #[test]
    fn handshakes_beyond_the_burst_wait_for_the_rate() {
        let mut a = Admission::new(&limits(100, 100, 2, 2.0));
        let t0 = Instant::now();
        a.admit(ip("10.0.0.1"), t0).unwrap();
        a.admit(ip("10.0.0.1"), t0).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1"), t0), Err(Refused::Rate));
        // Another address has its own bucket.
        a.admit(ip("10.0.0.2"), t0).unwrap();
        // Half a second later one token is back (2 a second).
        a.admit(ip("10.0.0.1"), t0 + Duration::from_millis(500))
            .unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1"), t0 + Duration::from_millis(500)),
            Err(Refused::Rate)
        );
    }

    #[test]
    fn proof_is_asked_once_an_address_spent_half_its_burst_or_the_table_is_half_full() {
        let mut a = Admission::new(&limits(4, 4, 4, 0.001));
        let t0 = Instant::now();
        assert!(!a.needs_proof(ip("10.0.0.1"), t0));
        a.admit(ip("10.0.0.1"), t0).unwrap();
        assert!(!a.needs_proof(ip("10.0.0.1"), t0));
        a.admit(ip("10.0.0.1"), t0).unwrap();
        // Half the total is open now, and 10.0.0.1 spent half its burst.
        assert!(a.needs_proof(ip("10.0.0.1"), t0));
        assert!(a.needs_proof(ip("10.0.0.2"), t0));
        a.release(ip("10.0.0.1"));
        assert!(!a.needs_proof(ip("10.0.0.2"), t0));
        assert!(a.needs_proof(ip("10.0.0.1"), t0));
    }

    #[test]
    fn the_bucket_table_stays_bounded() {
        let mut a = Admission::new(&limits(usize::MAX, 100, 2, 1.0));
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 + 10) {
            let v4 = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            a.admit(IpAddr::V4(v4), t0).unwrap();
            a.release(IpAddr::V4(v4));
        }
        assert!(a.tracked() <= MAX_BUCKETS, "{}", a.tracked());
    }
}
