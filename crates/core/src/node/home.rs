//! Choosing a node's home relay among the relays it is registered with. Sans-IO: link states,
//! round-trip samples and the time are passed in, so the rules are tested with simulated time.
//!
//! The home relay is the one the node's records name first: callers dial it. Rules (iroh's
//! net-report hysteresis, plus a floor in milliseconds):
//! - with no home (at start, or once the home is down), the relay up with the lowest round trip
//!   becomes home (a relay without a sample yet ranks last; the configured order breaks ties);
//! - a home that is up stays home unless another relay's round trip is under two thirds of the
//!   home's **and** at least [`MIN_GAIN`] lower: two close relays never take turns;
//! - a relay's round trip is its best sample over the last [`WINDOW`] (a single slow sample does
//!   not move the home; a relay that got worse for good does once its good samples age out).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::nodeid::NodeId;

/// How long a round-trip sample counts.
pub(crate) const WINDOW: Duration = Duration::from_secs(300);
/// The least improvement that moves the home (with the two-thirds ratio).
pub(crate) const MIN_GAIN: Duration = Duration::from_millis(10);
/// Samples kept per relay (one per keepalive: 15 s, so 20 in the window).
const MAX_SAMPLES: usize = 32;

/// The home relay choice of one node.
#[derive(Default)]
pub(crate) struct HomeChooser {
    home: Option<NodeId>,
    samples: HashMap<NodeId, VecDeque<(Instant, Duration)>>,
}

impl HomeChooser {
    /// Records a round-trip sample of `relay` taken at `now`.
    pub(crate) fn sample(&mut self, relay: NodeId, rtt: Duration, now: Instant) {
        let s = self.samples.entry(relay).or_default();
        if s.len() == MAX_SAMPLES {
            s.pop_front();
        }
        s.push_back((now, rtt));
    }

    /// Forgets a relay the node no longer registers with.
    pub(crate) fn forget(&mut self, relay: &NodeId) {
        self.samples.remove(relay);
        if self.home == Some(*relay) {
            self.home = None;
        }
    }

    /// `relay`'s best round trip in the window ending at `now`.
    fn best(&self, relay: &NodeId, now: Instant) -> Option<Duration> {
        self.samples
            .get(relay)?
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= WINDOW)
            .map(|(_, rtt)| *rtt)
            .min()
    }

    /// The home among `relays` (in configured order, with whether each is up) at `now`.
    pub(crate) fn choose(&mut self, relays: &[(NodeId, bool)], now: Instant) -> Option<NodeId> {
        let up: Vec<NodeId> = relays
            .iter()
            .filter(|(_, up)| *up)
            .map(|(r, _)| *r)
            .collect();
        let rank = |r: &NodeId| self.best(r, now).unwrap_or(Duration::MAX);
        let fastest = up.iter().min_by_key(|r| rank(r)).copied();
        self.home = match self.home.filter(|h| up.contains(h)) {
            None => fastest,
            Some(home) => match (
                self.best(&home, now),
                fastest.and_then(|f| Some((f, self.best(&f, now)?))),
            ) {
                (Some(h), Some((f, r))) if f != home && r * 3 < h * 2 && h - r >= MIN_GAIN => {
                    Some(f)
                }
                _ => Some(home),
            },
        };
        self.home
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_nearer_relay_becomes_home_and_order_breaks_ties() {
        let t0 = Instant::now();
        let mut c = HomeChooser::default();
        let both = [(id(1), true), (id(2), true)];
        // No samples yet: the first configured.
        assert_eq!(c.choose(&both, t0), Some(id(1)));
        let mut c = HomeChooser::default();
        c.sample(id(1), ms(80), t0);
        c.sample(id(2), ms(20), t0);
        assert_eq!(c.choose(&both, t0), Some(id(2)));
        // Only relays that are up count.
        let mut c = HomeChooser::default();
        c.sample(id(2), ms(20), t0);
        assert_eq!(c.choose(&[(id(1), true), (id(2), false)], t0), Some(id(1)));
        assert_eq!(c.choose(&[(id(1), false), (id(2), false)], t0), None);
    }

    #[test]
    fn close_relays_do_not_take_turns() {
        let t0 = Instant::now();
        let mut c = HomeChooser::default();
        let both = [(id(1), true), (id(2), true)];
        c.sample(id(1), ms(30), t0);
        assert_eq!(c.choose(&both, t0), Some(id(1)));
        // 25 vs 30 ms: faster, but not under two thirds.
        c.sample(id(2), ms(25), t0);
        assert_eq!(c.choose(&both, t0), Some(id(1)));
        // Under two thirds but only 4 ms apart: no switch either.
        let mut c = HomeChooser::default();
        c.sample(id(1), ms(12), t0);
        c.choose(&both, t0);
        c.sample(id(2), ms(8), t0);
        assert_eq!(c.choose(&both, t0), Some(id(1)));
        // Samples going back and forth around each other never move it.
        let mut c = HomeChooser::default();
        c.sample(id(1), ms(40), t0);
        c.choose(&both, t0);
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(15 * i);
            c.sample(id(1), ms(38 + i % 5), now);
            c.sample(id(2), ms(36 + (i + 2) % 5), now);
            assert_eq!(c.choose(&both, now), Some(id(1)), "sample {i}");
        }
    }

    #[test]
    fn a_clearly_better_relay_or_a_dead_home_moves_it() {
        let t0 = Instant::now();
        let mut c = HomeChooser::default();
        let both = [(id(1), true), (id(2), true)];
        c.sample(id(1), ms(30), t0);
        c.sample(id(2), ms(35), t0);
        assert_eq!(c.choose(&both, t0), Some(id(1)));
        // The home got worse for good: once its good samples age out, 90 vs 35 ms moves it.
        let later = t0 + WINDOW + Duration::from_secs(1);
        c.sample(id(1), ms(90), later);
        c.sample(id(2), ms(35), later);
        assert_eq!(c.choose(&both, later), Some(id(2)));
        // The new home dies: the other one, at once, whatever its round trip.
        assert_eq!(
            c.choose(&[(id(1), true), (id(2), false)], later),
            Some(id(1))
        );
        // It comes back, still clearly faster (35 vs 90 ms): home again.
        assert_eq!(c.choose(&both, later), Some(id(2)));
        c.forget(&id(2));
        assert_eq!(c.choose(&[(id(1), true)], later), Some(id(1)));
    }
}
