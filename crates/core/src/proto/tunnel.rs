//! The tunnel header the forward proxy writes first on each QUIC stream, and the reverse proxy's
//! acknowledgement. Everything after the acknowledgement is tunnel payload.
//!
//! ```text
//! open:  b"KNT" version(1) flags(1) reserved(3)         = 8 bytes
//! ack:   status(1) reason_len(2, BE) reason(utf-8)
//! ```

/// Magic that starts every tunnel stream.
pub const MAGIC: &[u8; 3] = b"KNT";
/// Protocol version of this header.
pub const VERSION: u8 = 1;
/// Length of the open header.
pub const OPEN_LEN: usize = 8;
/// Longest reason carried in an acknowledgement.
pub const MAX_REASON: usize = 1024;

/// Encodes the open header.
pub fn encode_open() -> [u8; OPEN_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], VERSION, 0, 0, 0, 0]
}

/// Why an open header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a keynet tunnel stream.
    #[error("bad tunnel magic")]
    Magic,
    /// A version this build does not speak.
    #[error("unsupported tunnel version {0}")]
    Version(u8),
}

/// Checks an open header.
pub fn decode_open(buf: &[u8; OPEN_LEN]) -> Result<(), OpenError> {
    if &buf[..3] != MAGIC {
        return Err(OpenError::Magic);
    }
    if buf[3] != VERSION {
        return Err(OpenError::Version(buf[3]));
    }
    Ok(())
}

/// What the reverse proxy answers once it tried its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Connected to the server: tunnel bytes follow.
    Ok,
    /// The server could not be reached; the reason says why.
    ServerUnreachable(String),
}

/// Encodes an acknowledgement.
pub fn encode_ack(ack: &Ack) -> Vec<u8> {
    match ack {
        Ack::Ok => vec![0, 0, 0],
        Ack::ServerUnreachable(reason) => {
            // At most MAX_REASON bytes, cut on a character boundary (the peer reads UTF-8).
            let mut end = reason.len().min(MAX_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let r = &reason.as_bytes()[..end];
            let mut out = vec![1];
            out.extend_from_slice(&(r.len() as u16).to_be_bytes());
            out.extend_from_slice(r);
            out
        }
    }
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Unknown status byte.
    #[error("unknown ack status {0}")]
    Status(u8),
    /// Reason longer than [`MAX_REASON`].
    #[error("ack reason too long ({0} bytes)")]
    TooLong(usize),
}

/// Reads the fixed part of an ack: returns the status byte and the reason length to read next.
pub fn decode_ack_prefix(buf: &[u8; 3]) -> Result<(u8, usize), AckError> {
    let status = buf[0];
    if status > 1 {
        return Err(AckError::Status(status));
    }
    let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
    if len > MAX_REASON {
        return Err(AckError::TooLong(len));
    }
    Ok((status, len))
}

/// Builds the ack from its status and reason.
pub fn decode_ack(status: u8, reason: &[u8]) -> Ack {
    match status {
        0 => Ack::Ok,
        _ => Ack::ServerUnreachable(String::from_utf8_lossy(reason).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let reason = format!("{}é", "x".repeat(MAX_REASON - 1));
        let wire = encode_ack(&Ack::ServerUnreachable(reason));
        let (status, len) = decode_ack_prefix(wire[..3].try_into().unwrap()).unwrap();
        assert_eq!(len, MAX_REASON - 1);
        assert!(std::str::from_utf8(&wire[3..]).is_ok());
        assert_eq!(
            decode_ack(status, &wire[3..]),
            Ack::ServerUnreachable("x".repeat(MAX_REASON - 1))
        );
    }

    #[test]
    fn open_snapshot() {
        assert_eq!(encode_open(), [0x4b, 0x4e, 0x54, 0x01, 0, 0, 0, 0]);
        assert_eq!(decode_open(&encode_open()), Ok(()));
        assert_eq!(decode_open(b"HTTP/1.1"), Err(OpenError::Magic));
        assert_eq!(
            decode_open(&[b'K', b'N', b'T', 9, 0, 0, 0, 0]),
            Err(OpenError::Version(9))
        );
    }

    #[test]
    fn ack_snapshot() {
        assert_eq!(encode_ack(&Ack::Ok), [0, 0, 0]);
        assert_eq!(
            encode_ack(&Ack::ServerUnreachable("no".into())),
            [1, 0, 2, b'n', b'o']
        );
        assert_eq!(decode_ack_prefix(&[7, 0, 0]), Err(AckError::Status(7)));
        assert_eq!(
            decode_ack_prefix(&[1, 0xff, 0xff]),
            Err(AckError::TooLong(65535))
        );
    }

    proptest! {
        #[test]
        fn ack_round_trip(reason in ".{0,300}") {
            let ack = Ack::ServerUnreachable(reason.clone());
            let bytes = encode_ack(&ack);
            let (status, len) = decode_ack_prefix(bytes[..3].try_into().unwrap()).unwrap();
            prop_assert_eq!(len, bytes.len() - 3);
            prop_assert_eq!(decode_ack(status, &bytes[3..]), ack);
        }
    }
}
