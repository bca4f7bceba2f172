//! The tunnel header (`proto::tunnel`): the input's first 8 bytes (zero-padded) are an open
//! header as the reverse proxy reads it; the rest is an acknowledgement as the forward proxy
//! reads it (a 3-byte prefix, then the reason length it announces). Checks that:
//! - an open header is accepted exactly when it starts with `KNT` and version 1;
//! - the ack prefix accepts only status 0 or 1 and reasons up to `MAX_REASON` bytes;
//! - an ack encodes back to one that decodes to it, and to exactly the bytes read when those
//!   were canonical (a UTF-8 reason with status 1, or status 0 with no reason).
//!
//! An ack's reason is decoded lossily, so a reason of invalid UTF-8 can grow past `MAX_REASON`
//! bytes; `encode_ack` then cuts it on a character boundary within the limit (this target
//! found it cut inside a character once), and the peer reads a prefix of it.
#![no_main]

use keynet_core::proto::tunnel::{
    decode_ack, decode_ack_prefix, decode_open, encode_ack, encode_open, Ack, AckError, MAX_REASON,
    OPEN_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut open = [0u8; OPEN_LEN];
    let n = data.len().min(OPEN_LEN);
    open[..n].copy_from_slice(&data[..n]);
    assert_eq!(decode_open(&open).is_ok(), open[..4] == encode_open()[..4]);
    assert_eq!(decode_open(&encode_open()), Ok(()));

    let ack_bytes = &data[n..];
    let Some(prefix) = ack_bytes.get(..3) else {
        return;
    };
    let prefix: [u8; 3] = prefix.try_into().expect("3 bytes");
    let (status, len) = match decode_ack_prefix(&prefix) {
        Ok(ok) => ok,
        Err(AckError::Status(s)) => return assert!(s > 1 && s == prefix[0]),
        Err(AckError::TooLong(l)) => return assert!(l > MAX_REASON),
    };
    assert!(status <= 1 && len <= MAX_REASON);
    let Some(reason) = ack_bytes[3..].get(..len) else {
        return; // the stream ends inside the reason
    };
    let ack = decode_ack(status, reason);

    let again = encode_ack(&ack);
    let (s2, l2) = decode_ack_prefix(again[..3].try_into().expect("3 bytes")).expect("prefix");
    assert_eq!(again.len(), 3 + l2);
    let back = decode_ack(s2, &again[3..]);
    match &ack {
        Ack::Ok => {
            assert_eq!(status, 0);
            assert_eq!(again, [0, 0, 0]);
            assert_eq!(back, ack);
        }
        Ack::ServerUnreachable(why) if why.len() <= MAX_REASON => {
            assert_eq!(back, ack);
            if std::str::from_utf8(reason).is_ok() {
                assert_eq!(
                    again,
                    ack_bytes[..3 + len],
                    "{ack:?} re-encodes to other bytes"
                );
            }
        }
        Ack::ServerUnreachable(why) => {
            // A long reason is cut on a character boundary, within the limit: the peer reads
            // a prefix of it, never a broken character.
            assert!(l2 <= MAX_REASON && l2 > MAX_REASON - 4);
            match back {
                Ack::ServerUnreachable(cut) => assert!(why.starts_with(&cut), "{cut:?}"),
                other => panic!("{other:?}"),
            }
        }
    }
});
