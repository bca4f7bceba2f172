//! The WebSocket subset the relay's TCP transport speaks (RFC 6455): the HTTP/1.1 upgrade and
//! binary, continuation, ping, pong and close frames. Clients mask, servers do not. Sans-IO.

use base64::Engine;

/// Path of the relay's WebSocket endpoint.
pub const PATH: &str = "/keynet/relay";
/// Largest payload of one frame we accept.
pub const MAX_FRAME: usize = 1 << 20;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation,
    /// Text (refused by the relay protocol).
    Text,
    /// Binary.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xa => Self::Pong,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xa,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsFrame {
    /// Final fragment.
    pub fin: bool,
    /// Opcode.
    pub opcode: Opcode,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

/// Why bytes are not an acceptable frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Reserved bits set.
    #[error("websocket frame has reserved bits set")]
    Reserved,
    /// Unknown opcode.
    #[error("unknown websocket opcode {0:#x}")]
    Opcode(u8),
    /// Masking does not match the role (clients must mask, servers must not).
    #[error("websocket frame masking is wrong for this side")]
    Mask,
    /// Payload over [`MAX_FRAME`], or a control frame over 125 bytes or fragmented.
    #[error("websocket frame too large or malformed control frame ({0} bytes)")]
    Size(u64),
}

/// Encodes a frame; `mask` is the client's masking key (None for a server).
pub fn encode(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(0x80 | opcode.as_u8());
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Decodes the frame at the start of `buf`: `Ok(None)` until it is whole. `from_client` says
/// whether the sender must have masked it.
pub fn decode(buf: &[u8], from_client: bool) -> Result<Option<(WsFrame, usize)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x70 != 0 {
        return Err(WsError::Reserved);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = Opcode::from_u8(buf[0] & 0x0f).ok_or(WsError::Opcode(buf[0] & 0x0f))?;
    let masked = buf[1] & 0x80 != 0;
    if masked != from_client {
        return Err(WsError::Mask);
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                10,
            )
        }
        n => (n as u64, 2),
    };
    if len > MAX_FRAME as u64 || (opcode.is_control() && (len > 125 || !fin)) {
        return Err(WsError::Size(len));
    }
    let key = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let k: [u8; 4] = buf[at..at + 4].try_into().expect("4 bytes");
        at += 4;
        Some(k)
    } else {
        None
    };
    let len = len as usize;
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Ok(Some((
        WsFrame {
            fin,
            opcode,
            payload,
        },
        at + len,
    )))
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The client's upgrade request.
pub fn client_request(host: &str, key: &str) -> String {
    format!(
        "GET {PATH} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Checks a parsed upgrade request; returns the `101` answer or the status and reason to refuse.
pub fn server_answer(
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<String, (u16, String)> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if method != "GET" {
        return Err((405, "only GET upgrades to the relay".into()));
    }
    if path != PATH {
        return Err((404, format!("the relay's WebSocket endpoint is {PATH}")));
    }
    let upgrade = get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = get("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade || !connection || get("sec-websocket-version") != Some("13") {
        return Err((426, "a WebSocket upgrade (version 13) is required".into()));
    }
    let Some(key) = get("sec-websocket-key") else {
        return Err((400, "Sec-WebSocket-Key is missing".into()));
    };
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.trim())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn fixed_bytes_of_a_masked_and_an_unmasked_frame() {
        let mut out = Vec::new();
        encode(
            Opcode::Binary,
            b"Hello",
            Some([0x37, 0xfa, 0x21, 0x3d]),
            &mut out,
        );
        assert_eq!(
            out,
            [0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        out.clear();
        encode(Opcode::Ping, b"Hello", None, &mut out);
        assert_eq!(out, [0x89, 0x05, b'H', b'e', b'l', b'l', b'o']);
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(
            decode(&[0xc2, 0x80, 0, 0, 0, 0], true),
            Err(WsError::Reserved)
        );
        assert_eq!(
            decode(&[0x83, 0x80, 0, 0, 0, 0], true),
            Err(WsError::Opcode(3))
        );
        assert_eq!(decode(&[0x82, 0x00], true), Err(WsError::Mask));
        assert_eq!(decode(&[0x82, 0x80, 0, 0, 0, 0], false), Err(WsError::Mask));
        let mut big = vec![0x82, 0xff];
        big.extend_from_slice(&(MAX_FRAME as u64 + 1).to_be_bytes());
        assert!(matches!(decode(&big, true), Err(WsError::Size(_))));
        assert!(matches!(
            decode(&[0x09, 0x80, 0, 0, 0, 0], true),
            Err(WsError::Size(_))
        ));
    }

    #[test]
    fn upgrade_answers() {
        let h = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let good = h(&[
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let ok = server_answer("GET", PATH, &good).unwrap();
        assert!(ok.starts_with("HTTP/1.1 101 "));
        assert!(ok.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(server_answer("POST", PATH, &good).unwrap_err().0, 405);
        assert_eq!(server_answer("GET", "/", &good).unwrap_err().0, 404);
        assert_eq!(server_answer("GET", PATH, &good[..2]).unwrap_err().0, 426);
    }

    proptest! {
        #[test]
        fn frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                             key in any::<[u8; 4]>(), masked in any::<bool>()) {
            let mut out = Vec::new();
            encode(Opcode::Binary, &payload, masked.then_some(key), &mut out);
            let (f, used) = decode(&out, masked).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(f.payload, payload);
            prop_assert!(f.fin);
            for cut in [0, 1, out.len() / 2, out.len() - 1] {
                prop_assert_eq!(decode(&out[..cut], masked), Ok(None));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), c in any::<bool>()) {
            let _ = decode(&bytes, c);
        }
    }
}
