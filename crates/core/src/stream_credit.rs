//! The stream limit a reverse proxy grants a connection, grown with use.
//!
//! quinn keeps state for every stream the peer may open (two map entries, ~85 bytes), so
//! granting `maxStreamsPerConnection` (1024) up front cost ~85 KiB per connection whether or
//! not it ever carried a tunnel. A connection starts with [`INITIAL`] and the grant doubles,
//! up to the maximum, whenever more than half of it is in use: memory follows the tunnels a
//! connection really has, and a burst waits about one round trip per doubling for credit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Streams a new connection may open at once before the grant grows.
pub(crate) const INITIAL: u32 = 64;

/// One connection's grant and the tunnels open on it.
pub(crate) struct StreamCredit {
    max: u32,
    granted: Mutex<u32>,
    open: AtomicU32,
}

impl StreamCredit {
    /// The starting grant for a connection allowed `max` streams at once.
    pub(crate) fn initial(max: u32) -> u32 {
        INITIAL.min(max)
    }

    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            granted: Mutex::new(Self::initial(max)),
            open: AtomicU32::new(0),
        }
    }

    /// A stream was accepted: returns the new grant to announce when it should grow.
    pub(crate) fn opened(&self) -> Option<u32> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let mut granted = self.granted.lock().expect("credit lock");
        if open * 2 > *granted && *granted < self.max {
            *granted = granted.saturating_mul(2).min(self.max);
            return Some(*granted);
        }
        None
    }

    /// A stream ended. The grant never shrinks (quinn would take it back only as streams close).
    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_doubles_past_half_use_up_to_the_maximum() {
        let c = StreamCredit::new(200);
        let grown: Vec<_> = (0..200).filter_map(|_| c.opened()).collect();
        assert_eq!(grown, vec![128, 200]);
        for _ in 0..200 {
            c.closed();
        }
        assert_eq!(c.opened(), None, "closed streams leave the grant as it is");
    }

    #[test]
    fn a_small_maximum_is_granted_whole_from_the_start() {
        assert_eq!(StreamCredit::initial(2), 2);
        let c = StreamCredit::new(2);
        assert_eq!((c.opened(), c.opened(), c.opened()), (None, None, None));
    }
}
