//! The goaway: a side about to close a connection on purpose (`closeConnection`, `stop()`)
//! tells its peer on a second unidirectional stream (the first carried the hello), so the peer
//! opens no new tunnel on it and drains those it has (see [`crate::ending`]) instead of waiting
//! to be reset.
//!
//! ```text
//! b"KNG" version(1)  = 4 bytes, then the stream's FIN
//! ```

/// Length of a goaway.
pub const LEN: usize = 4;
const MESSAGE: [u8; LEN] = *b"KNG\x01";

/// The goaway's bytes.
pub fn encode() -> [u8; LEN] {
    MESSAGE
}

/// Whether `bytes` is a goaway this build understands.
pub fn is_goaway(bytes: &[u8; LEN]) -> bool {
    *bytes == MESSAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        assert!(is_goaway(&encode()));
        assert!(!is_goaway(b"KNG\x02"));
        assert!(!is_goaway(b"KNH\x01"));
    }
}
