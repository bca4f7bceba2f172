//! WebSocket frames (`proto::websocket`) read from a byte stream cut at fuzzer-chosen points,
//! buffered as the relay's WebSocket pump does; bit 7 of the first input byte picks the side
//! (set: frames from a client, which must be masked). Checks that:
//! - the stream decodes to the same frames and the same error whole, cut and byte by byte;
//! - every decoded frame encodes back (same opcode, payload, FIN, and the mask key it came
//!   with) to a frame that decodes to it; the encoder's minimal length form is never longer
//!   than what came in, and when it is as long, the bytes are the same;
//! - a decoded frame is refused by the other side (masking is per role), control frames are
//!   final and at most 125 bytes, and no payload exceeds `MAX_FRAME`.
//!
//! This codec reads whatever a TCP client of a relay's public WebSocket port sends, before any
//! relay frame is checked.
#![no_main]

use keynet_core::proto::websocket::{decode, encode, Opcode, WsError, WsFrame, MAX_FRAME};
use keynet_fuzz::{read_stream, CutStream};
use libfuzzer_sys::fuzz_target;

fn check_frame(frame: &WsFrame, wire: &[u8], from_client: bool) {
    let len = frame.payload.len();
    assert!(len <= MAX_FRAME);
    if matches!(frame.opcode, Opcode::Close | Opcode::Ping | Opcode::Pong) {
        assert!(frame.fin && len <= 125, "control frame {frame:?}");
    }
    assert_eq!(decode(wire, !from_client), Err(WsError::Mask));

    // The masking key is the 4 bytes right before the payload.
    let key = from_client.then(|| {
        let at = wire.len() - len - 4;
        <[u8; 4]>::try_from(&wire[at..at + 4]).expect("4 bytes")
    });
    let mut again = Vec::new();
    encode(frame.opcode, &frame.payload, key, &mut again);
    if !frame.fin {
        // The encoder writes final frames only; a fragment differs in that bit alone.
        again[0] &= 0x7f;
    }
    assert_eq!(
        decode(&again, from_client),
        Ok(Some((frame.clone(), again.len())))
    );
    assert!(again.len() <= wire.len());
    if again.len() == wire.len() {
        assert_eq!(again, wire, "{frame:?} re-encodes to other bytes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = CutStream::parse(data) else {
        return;
    };
    let from_client = input.flags & 0x80 != 0;
    let dec = |b: &[u8]| decode(b, from_client);
    let whole = read_stream(input.whole(), dec, |f, w| check_frame(f, w, from_client));
    let cut = read_stream(input.chunks(), dec, |_, _| {});
    assert_eq!(cut, whole, "cut differently, the stream reads differently");
    let bytewise = read_stream(input.bytewise(), dec, |_, _| {});
    assert_eq!(
        bytewise, whole,
        "byte by byte, the stream reads differently"
    );
    if whole.error.is_none() {
        assert_eq!(decode(&whole.leftover, from_client), Ok(None));
    }
});
