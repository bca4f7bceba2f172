//! Relay frames (`proto::relay`) read from a byte stream cut at fuzzer-chosen points, buffered
//! as `relay::framed::FrameReader` does. Checks that:
//! - the stream decodes to the same frames and the same error whole, cut and byte by byte
//!   (a prefix of a frame is always "incomplete", never an error or another frame);
//! - every decoded frame encodes back to exactly the bytes it came from (one encoding per
//!   frame), and those decode to the frame again;
//! - routing the public-port frames (`TcpData`, `TcpClose`, `TcpCredit`) into a table of carried
//!   connections (`relay::carried::Table`, as the relay and the node do) never panics, never
//!   queues beyond a connection's window, and drops exactly the connection a peer broke.
//!
//! A relay reads these frames from every registered node (and a node from the relay), so a
//! panic here would take down a relay session from the wire.
#![no_main]

use keynet_core::proto::relay::{Frame, MAX_DATAGRAM, MAX_MESSAGE, MAX_PAYLOAD, MAX_TOKEN};
use keynet_core::relay::carried::{Ends, Table};
use keynet_fuzz::{read_stream, CutStream};
use libfuzzer_sys::fuzz_target;

fn check_frame(frame: &Frame, wire: &[u8]) {
    assert!(wire.len() <= 3 + MAX_PAYLOAD);
    match frame {
        Frame::Register { token, .. } => assert!(token.len() <= MAX_TOKEN),
        Frame::SendPacket { datagram, .. } | Frame::RecvPacket { datagram, .. } => {
            assert!(!datagram.is_empty() && datagram.len() <= MAX_DATAGRAM)
        }
        Frame::TcpData { data, .. } => assert!(!data.is_empty()),
        Frame::Error { message, .. } => assert!(message.len() <= MAX_MESSAGE),
        _ => {}
    }
    let mut again = Vec::new();
    frame
        .encode(&mut again)
        .unwrap_or_else(|e| panic!("decoded {frame:?} does not encode: {e}"));
    assert_eq!(again, wire, "{frame:?} re-encodes to other bytes");
    assert_eq!(
        Frame::decode(&again),
        Ok(Some((frame.clone(), again.len())))
    );

}

/// Routes `frame` as a relay session would; a connection a peer broke is gone afterwards, the
/// others stay.
fn route(table: &mut Table, frame: &Frame) {
    let conn = match frame {
        Frame::TcpData { conn, .. } | Frame::TcpClose { conn, .. } | Frame::TcpCredit { conn, .. } => *conn,
        _ => return,
    };
    let before = table.len();
    match table.route(frame.clone()) {
        Ok(()) => assert_eq!(table.len(), before),
        Err(broken) => {
            assert_eq!(broken.conn, conn);
            assert!(!table.contains(conn), "a broken connection stays");
            assert_eq!(table.len(), before - 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = CutStream::parse(data) else {
        return;
    };
    // Connections 0 to 3 are open (their carriers' ends kept, reading nothing).
    let mut table = Table::default();
    let _ends: Vec<Ends> = (0..4).map(|c| table.open(c)).collect();
    let whole = read_stream(input.whole(), Frame::decode, |f, w| {
        check_frame(f, w);
        route(&mut table, f);
    });
    let cut = read_stream(input.chunks(), Frame::decode, |_, _| {});
    assert_eq!(cut, whole, "cut differently, the stream reads differently");
    let bytewise = read_stream(input.bytewise(), Frame::decode, |_, _| {});
    assert_eq!(
        bytewise, whole,
        "byte by byte, the stream reads differently"
    );
    if whole.error.is_none() {
        // What is left is a frame's beginning: no frame, and not yet an error.
        assert_eq!(Frame::decode(&whole.leftover), Ok(None));
    }
});
