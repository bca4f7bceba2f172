//! The end messages: a side about to close a connection on purpose (`closeConnection`,
//! `stop()`) says `goaway` on a second unidirectional stream (the first carried the hello), so
//! the peer opens no new tunnel on it and drains those it has (see [`crate::ending`]) instead
//! of waiting to be reset; the peer answers `goaway` on its own second stream. Each side then
//! says `drained` on its stream once its tunnels ended, and finishes the stream.
//!
//! ```text
//! b"KNG" version(1)   goaway   = 4 bytes
//! b"KND" version(1)   drained  = 4 bytes
//! ```

/// Length of a message.
pub const LEN: usize = 4;
const GOAWAY: [u8; LEN] = *b"KNG\x01";
const DRAINED: [u8; LEN] = *b"KND\x01";

/// One end message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndMessage {
    /// The sender is ending the connection: open no tunnel on it, drain those you have.
    Goaway,
    /// The sender's tunnels ended: every byte it received was delivered.
    Drained,
}

impl EndMessage {
    /// The message's bytes.
    pub fn encode(self) -> [u8; LEN] {
        match self {
            Self::Goaway => GOAWAY,
            Self::Drained => DRAINED,
        }
    }

    /// The message `bytes` carry, if this build knows it.
    pub fn decode(bytes: &[u8; LEN]) -> Option<Self> {
        match *bytes {
            GOAWAY => Some(Self::Goaway),
            DRAINED => Some(Self::Drained),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        for m in [EndMessage::Goaway, EndMessage::Drained] {
            assert_eq!(EndMessage::decode(&m.encode()), Some(m));
        }
        assert_eq!(EndMessage::decode(b"KNG\x02"), None);
        assert_eq!(EndMessage::decode(b"KNH\x01"), None);
    }
}
