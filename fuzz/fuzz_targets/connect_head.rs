//! The HTTP CONNECT request head (`proto::connect::parse_head`) read from a byte stream cut at
//! fuzzer-chosen points, as the forward proxy's `read_head` does (append, parse, until the
//! head is whole or refused), and the request target (`parse_target`). Checks that:
//! - the head parses the same whole and cut: a prefix of a head is "incomplete", never an
//!   error or another head;
//! - a whole head took at most the bytes given (and at most `MAX_HEAD_LEN`), ends with a line
//!   end, parses the same without the bytes after it, and is incomplete one byte short;
//! - a target that parses names an address or a node, and its canonical form
//!   (`ip:port[?nodeId=ID]` or `ID.keynet:PORT`) parses to the same target. Targets tried: the
//!   parsed head's, and the whole stream when it is UTF-8.
//!
//! These bytes come from any local client of the forward proxy, before it is authenticated.
#![no_main]

use keynet_core::proto::connect::{
    check_proxy_auth, parse_head, parse_target, HeadError, HeadParse, MAX_HEAD_LEN,
};
use keynet_fuzz::CutStream;
use libfuzzer_sys::fuzz_target;

/// Feeds the chunks to a growing buffer until the head is whole or refused.
fn read_head<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Result<HeadParse, HeadError> {
    let mut buf = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        match parse_head(&buf)? {
            HeadParse::Incomplete => {}
            done => return Ok(done),
        }
    }
    Ok(HeadParse::Incomplete)
}

fn check_target(s: &str) {
    let Ok(t) = parse_target(s) else { return };
    let canonical = match (t.addr, t.node_id) {
        (Some(addr), None) => addr.to_string(),
        (Some(addr), Some(id)) => format!("{addr}?nodeId={id}"),
        (None, Some(id)) => format!("{id}.keynet:443"),
        (None, None) => panic!("{s:?} parsed to a target without address or node"),
    };
    assert_eq!(parse_target(&canonical), Ok(t), "{s:?} -> {canonical:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = CutStream::parse(data) else {
        return;
    };
    let bytes = input.bytes;
    let whole = parse_head(bytes);
    assert_eq!(
        read_head(input.chunks()),
        whole,
        "cut differently, the head reads differently"
    );
    match &whole {
        Ok(HeadParse::Complete(head, n)) => {
            let n = *n;
            assert!(n <= bytes.len() && n <= MAX_HEAD_LEN);
            assert!(bytes[..n].ends_with(b"\n"));
            assert_eq!(parse_head(&bytes[..n]), whole);
            assert_eq!(parse_head(&bytes[..n - 1]), Ok(HeadParse::Incomplete));
            assert!(!head.method.is_empty());
            check_target(&head.target);
            let _ = check_proxy_auth(head.proxy_authorization.as_deref(), "token");
        }
        Ok(HeadParse::Incomplete) => {}
        Err(e) => assert!(matches!(e.status(), 400 | 431)),
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        check_target(s);
    }
});
