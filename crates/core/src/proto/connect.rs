//! Parsing of the HTTP CONNECT request head a gRPC client sends to the forward proxy, and the
//! proxy's answers. Check-then-parse: [`parse_head`] says `Incomplete` until the whole head is in.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;

use crate::nodeid::NodeId;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_LEN: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// The parts of a request head the proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The request method, e.g. `CONNECT`.
    pub method: String,
    /// The raw request target.
    pub target: String,
    /// Value of `Proxy-Authorization`, if present.
    pub proxy_authorization: Option<Vec<u8>>,
}

/// Outcome of feeding bytes to [`parse_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadParse {
    /// More bytes are needed.
    Incomplete,
    /// A whole head, and how many bytes it took (the rest belongs to the tunnel).
    Complete(RequestHead, usize),
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x syntax.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// Longer than [`MAX_HEAD_LEN`] or more than 64 headers.
    #[error("request head too large")]
    TooLarge,
}

impl HeadError {
    /// HTTP status answering this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::TooLarge => 431,
        }
    }
}

/// Parses a request head from the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<HeadParse, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_LEN {
                Err(HeadError::TooLarge)
            } else {
                Ok(HeadParse::Incomplete)
            }
        }
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_HEAD_LEN {
                return Err(HeadError::TooLarge);
            }
            let method = req.method.unwrap_or_default().to_string();
            let target = req.path.unwrap_or_default().to_string();
            let proxy_authorization = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                .map(|h| h.value.to_vec());
            Ok(HeadParse::Complete(
                RequestHead {
                    method,
                    target,
                    proxy_authorization,
                },
                n,
            ))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// A CONNECT target: the remote reverse proxy's UDP address and an optional pinned node id,
/// or only a node id (`NODEID.keynet:PORT`, found through discovery; the port is ignored), or a
/// service name (`NAME.service.keynet:PORT`: one of its replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Address of the reverse proxy's QUIC socket; `None` for a `.keynet` target.
    pub addr: Option<SocketAddr>,
    /// Node id the peer must prove, from `?nodeId=` or the `.keynet` host.
    pub node_id: Option<NodeId>,
    /// A service name (checked and folded to lower case).
    pub service: Option<String>,
}

/// Host suffix of a target named by node id alone.
pub const NODE_HOST_SUFFIX: &str = ".keynet";
/// Host suffix of a target named by service name.
pub const SERVICE_HOST_SUFFIX: &str = ".service.keynet";

/// Why a request target was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Host is not an IPv4 or bracketed IPv6 address.
    #[error("invalid host in request target {0:?}")]
    Host(String),
    /// Port missing, not a number, or above 65535.
    #[error("invalid port in request target {0:?}")]
    Port(String),
    /// `nodeId` is not a node id.
    #[error("invalid nodeId in request target: {0}")]
    NodeId(String),
    /// The service name of a `NAME.service.keynet` host is not one.
    #[error("invalid service name in request target: {0}")]
    Service(String),
}

/// Parses `host:port`, `[v6]:port`, optionally followed by `?nodeId=ID` or `/?nodeId=ID`.
pub fn parse_target(target: &str) -> Result<Target, TargetError> {
    let (authority, query) = match target.find(['?', '/']) {
        Some(i) => {
            let rest = &target[i..];
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            if !rest.is_empty() && !rest.starts_with('?') {
                return Err(TargetError::Port(target.to_string()));
            }
            (&target[..i], rest.strip_prefix('?'))
        }
        None => (target, None),
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| TargetError::Host(target.to_string()))?;
        let port = rest[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| TargetError::Port(target.to_string()))?;
        (&rest[..end], port)
    } else {
        let i = authority
            .rfind(':')
            .ok_or_else(|| TargetError::Port(target.to_string()))?;
        let host = &authority[..i];
        if host.contains(':') {
            return Err(TargetError::Host(target.to_string()));
        }
        (host, &authority[i + 1..])
    };
    let strip = |suffix: &str| {
        host.len()
            .checked_sub(suffix.len())
            .filter(|&i| host.is_char_boundary(i))
            .filter(|&i| host[i..].eq_ignore_ascii_case(suffix))
            .map(|i| &host[..i])
    };
    if let Some(name) = strip(SERVICE_HOST_SUFFIX) {
        check_port(port, target)?;
        if query.is_some() {
            return Err(TargetError::Service(format!(
                "{target:?}: a service target takes no ?nodeId= (its replicas prove their own)"
            )));
        }
        let name = crate::discovery::service_entry::check_name(name)
            .map_err(|e| TargetError::Service(format!("{name:?}: {e}")))?;
        return Ok(Target {
            addr: None,
            node_id: None,
            service: Some(name),
        });
    }
    let by_node = strip(NODE_HOST_SUFFIX);
    if let Some(id) = by_node {
        check_port(port, target)?;
        let id: NodeId = id
            .to_ascii_lowercase()
            .parse()
            .map_err(|e: crate::nodeid::NodeIdParseError| TargetError::NodeId(e.to_string()))?;
        if let Some(q) = query_node_id(query)? {
            if q != id {
                return Err(TargetError::NodeId(format!(
                    "?nodeId={q} contradicts the host {id}{NODE_HOST_SUFFIX}"
                )));
            }
        }
        return Ok(Target {
            addr: None,
            node_id: Some(id),
            service: None,
        });
    }
    let ip: IpAddr = host
        .parse()
        .map_err(|_| TargetError::Host(target.to_string()))?;
    if authority.starts_with('[') != ip.is_ipv6() {
        return Err(TargetError::Host(target.to_string()));
    }
    let port = check_port(port, target)?;
    Ok(Target {
        addr: Some(crate::addr::zero_to_loopback(SocketAddr::new(ip, port))),
        node_id: query_node_id(query)?,
        service: None,
    })
}

fn check_port(port: &str, target: &str) -> Result<u16, TargetError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::Port(target.to_string()));
    }
    port.parse()
        .map_err(|_| TargetError::Port(target.to_string()))
}

fn query_node_id(query: Option<&str>) -> Result<Option<NodeId>, TargetError> {
    let mut node_id = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "nodeId" {
            node_id = Some(v.parse().map_err(|e: crate::nodeid::NodeIdParseError| {
                TargetError::NodeId(e.to_string())
            })?);
        }
    }
    Ok(node_id)
}

/// Checks a `Proxy-Authorization` value against the token, in constant time.
///
/// The token is the whole credential: `Basic base64(token)`; `base64(token + ":")` (a user name
/// with an empty password, as curl sends for `http://TOKEN@host`) is accepted too.
pub fn check_proxy_auth(header: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = header else { return false };
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let mut parts = value.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let cred = parts.next().unwrap_or("").trim();
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(cred) else {
        return false;
    };
    let with_colon = format!("{token}:");
    // Evaluate both comparisons, always, so timing does not tell which form was close.
    let a = constant_time_eq(&decoded, token.as_bytes());
    let b = constant_time_eq(&decoded, with_colon.as_bytes());
    a | b
}

/// Compares two byte strings in time independent of their contents (and of where they differ):
/// both are hashed, and the digests compared with a full XOR fold.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let da = ring::digest::digest(&ring::digest::SHA256, a);
    let db = ring::digest::digest(&ring::digest::SHA256, b);
    let diff = da
        .as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Canonical reason phrase of the statuses the proxy answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "Connection Established",
        400 => "Bad Request",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        526 => "Invalid SSL Certificate",
        _ => "Error",
    }
}

/// The bytes of a proxy answer. Failures close the connection and carry a one-line text body.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    if status == 200 {
        return b"HTTP/1.1 200 Connection Established\r\n\r\n".to_vec();
    }
    let mut extra = String::new();
    if status == 407 {
        extra.push_str("Proxy-Authenticate: Basic realm=\"keynet\"\r\n");
    }
    if status == 405 {
        extra.push_str("Allow: CONNECT\r\n");
    }
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 {status} {}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> NodeId {
        NodeId::from_spki_der(b"x")
    }

    #[test]
    fn parses_complete_head_and_leaves_tunnel_bytes() {
        let buf = b"CONNECT 127.0.0.1:4433 HTTP/1.1\r\nHost: 127.0.0.1:4433\r\nProxy-Authorization: Basic YWJj\r\n\r\nTUNNEL";
        match parse_head(buf).unwrap() {
            HeadParse::Complete(h, n) => {
                assert_eq!(h.method, "CONNECT");
                assert_eq!(h.target, "127.0.0.1:4433");
                assert_eq!(h.proxy_authorization.as_deref(), Some(&b"Basic YWJj"[..]));
                assert_eq!(&buf[n..], b"TUNNEL");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_head_is_incomplete() {
        assert_eq!(
            parse_head(b"CONNECT 1.2.3.4:5 HTTP/1.1\r\nHost: x").unwrap(),
            HeadParse::Incomplete
        );
        assert_eq!(parse_head(b"").unwrap(), HeadParse::Incomplete);
    }

    #[test]
    fn oversize_head_is_too_large() {
        let mut buf = b"CONNECT 1.2.3.4:5 HTTP/1.1\r\nX-Pad: ".to_vec();
        buf.resize(MAX_HEAD_LEN + 10, b'a');
        assert_eq!(parse_head(&buf).unwrap_err(), HeadError::TooLarge);
        assert_eq!(HeadError::TooLarge.status(), 431);
        let mut many = b"CONNECT 1.2.3.4:5 HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn garbage_is_malformed() {
        let err = parse_head(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn zero_ip_targets_mean_this_machine() {
        assert_eq!(
            parse_target("0.0.0.0:50051").unwrap().addr,
            Some("127.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(
            parse_target("[::]:50051").unwrap().addr,
            Some("[::1]:50051".parse().unwrap())
        );
    }

    #[test]
    fn node_id_targets() {
        let want = Target {
            addr: None,
            node_id: Some(id()),
            service: None,
        };
        assert_eq!(parse_target(&format!("{}.keynet:443", id())).unwrap(), want);
        // A service name: folded to lower case; bad names and a ?nodeId= are refused.
        assert_eq!(
            parse_target("Fibonacci_Worker.service.keynet:443").unwrap(),
            Target {
                addr: None,
                node_id: None,
                service: Some("fibonacci_worker".into()),
            }
        );
        assert!(matches!(
            parse_target("a.b.service.keynet:443"),
            Err(TargetError::Service(_))
        ));
        assert!(matches!(
            parse_target(".service.keynet:443"),
            Err(TargetError::Service(_))
        ));
        assert!(matches!(
            parse_target(&format!("echo.service.keynet:443?nodeId={}", id())),
            Err(TargetError::Service(_))
        ));
        assert!(matches!(
            parse_target("echo.service.keynet"),
            Err(TargetError::Port(_))
        ));
        let upper = format!("{}.KEYNET:1", id().to_string().to_uppercase());
        assert_eq!(parse_target(&upper).unwrap(), want);
        let same = format!("{0}.keynet:0?nodeId={0}", id());
        assert_eq!(parse_target(&same).unwrap(), want);
        let other = crate::nodeid::NodeId::from_bytes([9; 32]);
        let contradicts = format!("{}.keynet:0?nodeId={other}", id());
        assert!(matches!(
            parse_target(&contradicts),
            Err(TargetError::NodeId(_))
        ));
        assert!(matches!(
            parse_target("vnotanid.keynet:443"),
            Err(TargetError::NodeId(_))
        ));
        assert!(matches!(
            parse_target(&format!("{}.keynet:x", id())),
            Err(TargetError::Port(_))
        ));
        assert!(matches!(
            parse_target(&format!("{}.keynet", id())),
            Err(TargetError::Port(_))
        ));
        assert!(matches!(
            parse_target("example.com:443"),
            Err(TargetError::Host(_))
        ));
    }

    #[test]
    fn target_forms() {
        let t = parse_target("127.0.0.1:80").unwrap();
        assert_eq!(t.addr, Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(t.node_id, None);
        let t = parse_target("[::1]:443").unwrap();
        assert_eq!(t.addr, Some("[::1]:443".parse().unwrap()));
        let t = parse_target("[fe80::1:2]:0").unwrap();
        assert_eq!(t.addr.unwrap().port(), 0);
        let q = format!("10.0.0.1:9?nodeId={}", id());
        assert_eq!(parse_target(&q).unwrap().node_id, Some(id()));
        let q = format!("[::1]:9/?nodeId={}", id());
        assert_eq!(parse_target(&q).unwrap().node_id, Some(id()));
        let q = format!("1.1.1.1:9?x=1&nodeId={}&y", id());
        assert_eq!(parse_target(&q).unwrap().node_id, Some(id()));
    }

    #[test]
    fn target_errors() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:65536",
            "127.0.0.1:99999999",
            "127.0.0.1:-1",
            "127.0.0.1:8a",
        ] {
            assert!(
                matches!(parse_target(bad), Err(TargetError::Port(_))),
                "{bad}"
            );
        }
        for bad in [
            "example.com:80",
            "::1:80",
            "[127.0.0.1]:80",
            "[::1:80",
            ":80",
            "1.2.3:4",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_target("1.2.3.4:5?nodeId=nope"),
            Err(TargetError::NodeId(_))
        ));
        assert!(parse_target("1.2.3.4:5/path").is_err());
    }

    #[test]
    fn auth_accepts_token_and_token_colon_only() {
        let b64 = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(check_proxy_auth(Some(b64("secret").as_bytes()), "secret"));
        assert!(check_proxy_auth(Some(b64("secret:").as_bytes()), "secret"));
        assert!(check_proxy_auth(Some(b"basic c2VjcmV0"), "secret"));
        assert!(!check_proxy_auth(
            Some(b64("secret:x").as_bytes()),
            "secret"
        ));
        assert!(!check_proxy_auth(Some(b64("secre").as_bytes()), "secret"));
        assert!(!check_proxy_auth(Some(b"Bearer c2VjcmV0"), "secret"));
        assert!(!check_proxy_auth(Some(b"Basic !!!"), "secret"));
        assert!(!check_proxy_auth(None, "secret"));
    }

    #[test]
    fn responses_are_well_formed() {
        let r = String::from_utf8(response(407, "auth")).unwrap();
        assert!(r.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"));
        assert!(r.contains("Proxy-Authenticate: Basic realm=\"keynet\"\r\n"));
        assert!(r.ends_with("\r\n\r\nauth\n"));
        assert_eq!(
            response(200, ""),
            b"HTTP/1.1 200 Connection Established\r\n\r\n"
        );
    }

    proptest! {
        #[test]
        fn any_v4_or_v6_target_round_trips(ip in any::<IpAddr>(), port in any::<u16>(), pin in any::<bool>(), slash in any::<bool>()) {
            let addr = SocketAddr::new(ip, port);
            let mut s = addr.to_string();
            if pin {
                s.push_str(if slash { "/?nodeId=" } else { "?nodeId=" });
                s.push_str(&id().to_string());
            }
            let t = parse_target(&s).unwrap();
            // (A zero IP means this machine: see `zero_ip_targets_mean_this_machine`.)
            prop_assert_eq!(t.addr, Some(crate::addr::zero_to_loopback(addr)));
            prop_assert_eq!(t.node_id, pin.then(id));
        }

        #[test]
        fn parse_head_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_head(&bytes);
        }

        #[test]
        fn parse_target_never_panics(s in ".{0,80}") {
            let _ = parse_target(&s);
        }

        #[test]
        fn head_split_anywhere_parses_the_same(split in 0usize..80) {
            let buf = b"CONNECT [::1]:7 HTTP/1.1\r\nProxy-Authorization: Basic eA==\r\nHost: h\r\n\r\n";
            let split = split.min(buf.len() - 1);
            prop_assert_eq!(parse_head(&buf[..split]).unwrap(), HeadParse::Incomplete);
            let whole = parse_head(buf).unwrap();
            prop_assert!(matches!(whole, HeadParse::Complete(_, n) if n == buf.len()));
        }
    }
}
