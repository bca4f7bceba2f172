//! Liveness of one punched path, sans-IO: when to probe, when the path is dead, when it is back,
//! and when to ask the relay for a fresh rendezvous. Time is always an argument.
//!
//! Evidence is only what the peer proves: an ack that echoes the nonce of one of our recent
//! probes (punch-format datagrams, see [`super::punch`]). A datagram that merely comes from the
//! path's address proves nothing (anyone can forge a source address), so it never keeps a path
//! alive. Nonces are random 64-bit values: an off-path attacker cannot echo one.
//!
//! ```text
//!          ack                     no ack to PROBE_LIMIT probes
//!   Alive ─────▶ Alive   Probing ─────────────────────────────▶ Dead
//!     │ PROBE_INTERVAL      ▲ │ ack                              │ ack of a recovery probe
//!     └────────────────────┘ └──▶ Alive ◀─────────────────────────┘
//! ```
//!
//! While dead, recovery probes go out with a backoff (a blackholed path that comes back is
//! found again without the relay), and a [`super::backoff::Backoff`] paces rendezvous requests (a path whose
//! addresses changed, e.g. after a NAT rebinding, needs the relay to tell both sides the new
//! ones).

use std::time::{Duration, Instant};

/// A live path is probed this often. QUIC's own keepalives (1 s) keep the NAT mappings open;
/// this only bounds how long a dead path goes unnoticed (at most this plus the probe round).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// An unanswered probe is repeated after this long: well above an internet round trip (the
/// ack of any probe of the round counts, so a slow ack is not wasted).
pub const PROBE_RETRY: Duration = Duration::from_millis(500);
/// Unanswered probes in a row after which the path is dead: 4 × 500 ms, so a dead path moves
/// to the relay at most `PROBE_INTERVAL + 2 s` after its last sign of life, well before QUIC's
/// idle timeout (20 s by default) would end the connection.
pub const PROBE_LIMIT: u32 = 4;
/// Recovery probes on a dead path start this far apart…
pub const RECOVERY_MIN: Duration = Duration::from_secs(1);
/// …and double up to this: a blackholed path that comes back is used again within this long,
/// for the price of one 52-byte datagram per interval (which also keeps our NAT mapping open).
pub const RECOVERY_MAX: Duration = Duration::from_secs(8);

/// Where a path stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Proven recently.
    Alive,
    /// Unproven for a while: probes are out.
    Probing,
    /// No answer to `PROBE_LIMIT` probes; recovery probes continue with a backoff.
    Dead,
}

/// A change the caller must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The path stopped answering: send through the relay.
    Died,
    /// A dead path answered again: send on it again.
    Recovered,
}

/// The liveness machine of one path.
#[derive(Debug)]
pub struct PathLiveness {
    state: Liveness,
    /// When the next probe goes out.
    next_probe: Instant,
    /// Unanswered probes since the last proof (while probing).
    unanswered: u32,
    /// Nonces of the probes still awaiting an ack (the current round).
    outstanding: Vec<u64>,
    /// Gap between recovery probes (while dead).
    recovery: Duration,
    /// When the last probe went out (probes are never closer than `PROBE_RETRY`).
    last_sent: Option<Instant>,
}

impl PathLiveness {
    /// The nonces of the probes awaiting an ack.
    pub fn outstanding(&self) -> &[u64] {
        &self.outstanding
    }

    /// A path known to work at `now` (a punch was just acknowledged).
    pub fn alive(now: Instant) -> Self {
        Self {
            state: Liveness::Alive,
            next_probe: now + PROBE_INTERVAL,
            unanswered: 0,
            outstanding: Vec::new(),
            recovery: RECOVERY_MIN,
            last_sent: None,
        }
    }

    /// A path not known to work (a rendezvous did not confirm it): only recovery probes.
    pub fn dead(now: Instant) -> Self {
        Self {
            state: Liveness::Dead,
            next_probe: now,
            unanswered: 0,
            outstanding: Vec::new(),
            recovery: RECOVERY_MIN,
            last_sent: None,
        }
    }

    /// Where the path stands.
    pub fn state(&self) -> Liveness {
        self.state
    }

    /// When the caller must call [`Self::poll`] next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_probe
    }

    /// Advances to `now`. Returns a transition (if the path just died) and whether a probe is
    /// due; if so the caller sends a probe carrying `nonce` (fresh and random each time).
    pub fn poll(&mut self, now: Instant, nonce: u64) -> (Option<Transition>, Option<u64>) {
        if now < self.next_probe {
            return (None, None);
        }
        match self.state {
            Liveness::Alive => {
                self.state = Liveness::Probing;
                self.unanswered = 0;
                self.outstanding.clear();
                (None, Some(self.send(now, nonce, PROBE_RETRY)))
            }
            Liveness::Probing if self.unanswered >= PROBE_LIMIT => {
                self.state = Liveness::Dead;
                self.recovery = RECOVERY_MIN;
                (
                    Some(Transition::Died),
                    Some(self.recovery_probe(now, nonce)),
                )
            }
            Liveness::Probing => (None, Some(self.send(now, nonce, PROBE_RETRY))),
            Liveness::Dead => (None, Some(self.recovery_probe(now, nonce))),
        }
    }

    fn recovery_probe(&mut self, now: Instant, nonce: u64) -> u64 {
        // Only the newest recovery probe counts: older ones were surely lost.
        self.outstanding.clear();
        let gap = self.recovery;
        self.recovery = (self.recovery * 2).min(RECOVERY_MAX);
        self.send(now, nonce, gap)
    }

    fn send(&mut self, now: Instant, nonce: u64, wait: Duration) -> u64 {
        if self.state == Liveness::Probing {
            self.unanswered += 1;
        }
        self.outstanding.push(nonce);
        self.next_probe = now + wait;
        self.last_sent = Some(now);
        nonce
    }

    /// An ack echoing `nonce` arrived from the path's address at `now`. Counts only if it
    /// answers one of our outstanding probes; returns `Recovered` if the path was dead.
    pub fn on_ack(&mut self, now: Instant, nonce: u64) -> Option<Transition> {
        if !self.outstanding.contains(&nonce) {
            return None;
        }
        self.outstanding.clear();
        self.unanswered = 0;
        self.next_probe = now + PROBE_INTERVAL;
        let was = std::mem::replace(&mut self.state, Liveness::Alive);
        self.recovery = RECOVERY_MIN;
        (was == Liveness::Dead).then_some(Transition::Recovered)
    }

    /// Something suggests the path changed (the app said the network changed, the peer punches
    /// again): probe now instead of at the next interval, but never sooner than `PROBE_RETRY`
    /// after the last probe (whatever asks, even forged datagrams, cannot make us flood); a dead
    /// path restarts its recovery backoff.
    pub fn probe_now(&mut self, now: Instant) {
        let earliest = self.last_sent.map_or(now, |t| t + PROBE_RETRY);
        self.next_probe = self.next_probe.min(now.max(earliest));
        self.recovery = RECOVERY_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs the machine from `t0` to `until`, returning the probe times and the transitions.
    fn run(
        m: &mut PathLiveness,
        t0: Instant,
        until: Instant,
        mut nonce: u64,
        ack: impl Fn(Instant) -> bool,
    ) -> (Vec<Instant>, Vec<(Instant, Transition)>) {
        let (mut probes, mut changes) = (Vec::new(), Vec::new());
        let mut now = t0;
        while now <= until {
            let (t, probe) = m.poll(now, nonce);
            if let Some(t) = t {
                changes.push((now, t));
            }
            if let Some(n) = probe {
                probes.push(now);
                if ack(now) {
                    if let Some(t) = m.on_ack(now + ms(20), n) {
                        changes.push((now + ms(20), t));
                    }
                }
            }
            nonce += 1;
            now = m.poll_timeout().max(now + ms(1));
        }
        (probes, changes)
    }

    #[test]
    fn an_answering_path_is_probed_every_interval_and_stays_alive() {
        let t0 = Instant::now();
        let mut m = PathLiveness::alive(t0);
        let (probes, changes) = run(&mut m, t0, t0 + Duration::from_secs(20), 1, |_| true);
        assert!(changes.is_empty());
        assert_eq!(
            probes.len(),
            9,
            "one probe per 2 s (+20 ms ack), first after 2 s"
        );
        assert_eq!(probes[0], t0 + PROBE_INTERVAL);
        assert_eq!(m.state(), Liveness::Alive);
    }

    #[test]
    fn a_silent_path_is_dead_after_the_probe_limit_and_recovery_probes_back_off() {
        let t0 = Instant::now();
        let mut m = PathLiveness::alive(t0);
        let (probes, changes) = run(&mut m, t0, t0 + Duration::from_secs(40), 1, |_| false);
        let died = t0 + PROBE_INTERVAL + PROBE_RETRY * PROBE_LIMIT;
        assert_eq!(changes, vec![(died, Transition::Died)]);
        // 4 probes 500 ms apart, then recovery probes 1, 2, 4, 8, 8… s apart.
        let gaps: Vec<u128> = probes
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps[..8], [500, 500, 500, 500, 1000, 2000, 4000, 8000]);
        assert!(gaps[8..].iter().all(|g| *g == 8000));
        assert_eq!(m.state(), Liveness::Dead);
    }

    #[test]
    fn a_dead_path_that_answers_again_recovers() {
        let t0 = Instant::now();
        let back = t0 + Duration::from_secs(15);
        let mut m = PathLiveness::alive(t0);
        let (_, changes) = run(&mut m, t0, t0 + Duration::from_secs(30), 1, |now| {
            now >= back
        });
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].1, Transition::Died);
        assert_eq!(changes[1].1, Transition::Recovered);
        assert!(changes[1].0 >= back && changes[1].0 <= back + RECOVERY_MAX + ms(20));
        assert_eq!(m.state(), Liveness::Alive);
    }

    #[test]
    fn one_lost_probe_is_not_death() {
        let t0 = Instant::now();
        let mut m = PathLiveness::alive(t0);
        let first_probe = t0 + PROBE_INTERVAL;
        let (_, changes) = run(&mut m, t0, t0 + Duration::from_secs(10), 1, |now| {
            now != first_probe
        });
        assert!(changes.is_empty());
    }

    #[test]
    fn forged_or_stale_acks_are_ignored() {
        let t0 = Instant::now();
        let mut m = PathLiveness::alive(t0);
        let (_, probe) = m.poll(t0 + PROBE_INTERVAL, 77);
        assert_eq!(probe, Some(77));
        // An ack with a nonce we never sent (a forged datagram from the path's address).
        assert_eq!(m.on_ack(t0 + PROBE_INTERVAL, 78), None);
        assert_eq!(m.state(), Liveness::Probing);
        let mut now = t0 + PROBE_INTERVAL;
        let mut died = false;
        for n in 0..10 {
            now = m.poll_timeout();
            let (t, probe) = m.poll(now, 100 + n);
            died |= t == Some(Transition::Died);
            // Forged acks keep coming; none echoes a probe of ours.
            if let Some(p) = probe {
                assert_eq!(m.on_ack(now, p + 1_000_000), None);
            }
        }
        assert!(died, "forged evidence kept the path alive until {now:?}");
        // A late ack of a probe from an earlier round proves nothing now.
        assert_eq!(m.on_ack(now, 77), None);
        assert_eq!(m.state(), Liveness::Dead);
    }

    #[test]
    fn probe_now_starts_a_round_at_once() {
        let t0 = Instant::now();
        let mut m = PathLiveness::alive(t0);
        m.probe_now(t0 + ms(100));
        assert_eq!(m.poll_timeout(), t0 + ms(100));
        assert_eq!(m.poll(t0 + ms(100), 5), (None, Some(5)));
        assert_eq!(
            m.on_ack(t0 + ms(110), 5),
            None,
            "alive stays alive: no transition"
        );
        assert_eq!(m.state(), Liveness::Alive);
    }

    #[test]
    fn probe_now_cannot_make_probes_closer_than_the_retry_gap() {
        let t0 = Instant::now();
        let mut m = PathLiveness::dead(t0);
        assert_eq!(m.poll(t0, 1), (None, Some(1)));
        let mut sent = 1;
        // A flood of triggers (forged punches from the path's address), one every millisecond.
        for i in 0..5_000u64 {
            let now = t0 + ms(i);
            m.probe_now(now);
            if m.poll(now, 100 + i).1.is_some() {
                sent += 1;
            }
        }
        assert!(sent <= 11, "{sent} probes in 5 s");
    }
}
