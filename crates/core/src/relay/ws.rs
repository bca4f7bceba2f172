//! The relay's TCP transport: TLS (mutual, node-id certificates, as over QUIC) carrying an
//! HTTP/1.1 upgrade to WebSocket, so it passes firewalls and proxies that allow only HTTPS.
//! After the upgrade the relay frames travel as a byte stream split across binary WebSocket
//! messages; a pump task per connection translates between the WebSocket and a local pipe
//! whose halves the relay code reads and writes like any stream.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, RelayError, Result};
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::proto::websocket::{self, Opcode};
use crate::relay::framed::RelayConn;
use crate::relay::framed::{BoxRead, BoxWrite};
use crate::relay::spec::RelaySpec;
use crate::task::Tasks;
use crate::tls::config::{tls_client_config, SERVER_NAME};
use crate::tls::verify::{handshake_error, verify_chain, Acceptable, VerifyOutcome};

/// Longest HTTP head accepted in the upgrade.
const MAX_HEAD: usize = 8 * 1024;
/// Pipe buffer between the pump and the relay code.
const PIPE: usize = 256 * 1024;

/// Connects to the relay's TCP address, upgrades to WebSocket, and returns the byte stream.
pub(super) async fn connect(
    spec: &RelaySpec,
    identity: &LoadedIdentity,
    tasks: &Tasks,
    budget: Duration,
) -> Result<RelayConn> {
    let addr = spec.tcp_addr();
    let timed_out = || Error::ConnectionStartTimeout(budget.as_millis() as u64);
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| RelayError::Tcp { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let outcome = VerifyOutcome::default();
        let tls = tls_client_config(
            identity,
            Acceptable::OneOf(vec![spec.node_id]),
            outcome.clone(),
            &[crate::tls::config::RELAY_ALPN],
        )?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
            .map_err(|e| Error::InvalidTlsConfig(e.to_string()))?;
        let mut stream = match connector.connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => {
                let why = format!("relay {addr} (TLS): {e}");
                return Err(handshake_error(&outcome, RelayError::Upgrade(why)));
            }
        };
        let mut key = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| RelayError::Upgrade("no randomness".into()))?;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        stream
            .write_all(websocket::client_request(&addr.to_string(), &key).as_bytes())
            .await?;
        let (head, rest) = read_head(&mut stream).await?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head)
            .map_err(|e| RelayError::Upgrade(format!("relay upgrade answer: {e}")))?;
        if resp.code != Some(101) {
            return Err(RelayError::Upgrade(format!(
                "relay refused the WebSocket upgrade: {} {}",
                resp.code.unwrap_or(0),
                resp.reason.unwrap_or("")
            ))
            .into());
        }
        let accept = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string());
        if accept.as_deref() != Some(websocket::accept_key(&key).as_str()) {
            return Err(RelayError::Upgrade("relay's WebSocket accept key is wrong".into()).into());
        }
        let (read, write, _kill) = pipe(stream, rest, true, tasks);
        Ok(RelayConn {
            transport: crate::relay::spec::Transport::WebSocket,
            read,
            write,
            quic: None,
        })
    };
    tokio::time::timeout(budget, work)
        .await
        .map_err(|_| timed_out())?
}

/// Accepts a node on the relay's TCP listener: TLS (the client certificate must prove a node id
/// in `accept`), then the upgrade. Returns the node id, the byte stream, and a token that kills
/// the connection.
pub(super) async fn accept(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    accept: &Acceptable,
    tasks: &Tasks,
) -> Result<(NodeId, BoxRead, BoxWrite, CancellationToken)> {
    let mut stream = acceptor.accept(tcp).await.map_err(RelayError::Tls)?;
    let certs: Vec<_> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let node = verify_chain(
        &certs,
        accept,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )?;
    let (head, rest) = read_head(&mut stream).await?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(&head);
    let answer = match parsed {
        Ok(httparse::Status::Complete(_)) => {
            let hs: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            websocket::server_answer(req.method.unwrap_or(""), req.path.unwrap_or(""), &hs)
        }
        _ => Err((400, "malformed upgrade request".to_string())),
    };
    match answer {
        Ok(ok) => stream.write_all(ok.as_bytes()).await?,
        Err((status, why)) => {
            let body = format!(
                "HTTP/1.1 {status} Refused\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
                why.len()
            );
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
            return Err(RelayError::Upgrade(format!("upgrade refused: {why}")).into());
        }
    }
    let (read, write, kill) = pipe(stream, rest, false, tasks);
    Ok((node, read, write, kill))
}

/// Reads an HTTP head (up to the blank line); returns it and the bytes after it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(RelayError::Upgrade("upgrade head too large".into()).into());
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(RelayError::Upgrade("connection closed during the upgrade".into()).into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Starts the pump between the WebSocket `ws` and a pipe; returns the pipe's halves and a token
/// that ends the pump (closing the connection).
fn pipe<S>(
    ws: S,
    leftover: Vec<u8>,
    client: bool,
    tasks: &Tasks,
) -> (BoxRead, BoxWrite, CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let kill = CancellationToken::new();
    let k = kill.clone();
    tasks.spawn(async move {
        tokio::select! {
            r = pump(ws, theirs, leftover, client) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "websocket pump ended");
                }
            }
            _ = k.cancelled() => {}
        }
    });
    let (r, w) = tokio::io::split(ours);
    (Box::new(r), Box::new(w), kill)
}

async fn pump<S>(
    ws: S,
    local: tokio::io::DuplexStream,
    mut inbuf: Vec<u8>,
    client: bool,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut ws_r, mut ws_w) = tokio::io::split(ws);
    let (mut local_r, mut local_w) = tokio::io::split(local);
    // Control frames (pong, close) the inbound side asks the outbound side to send.
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel::<(Opcode, Vec<u8>)>(8);
    let bad = |e: websocket::WsError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    // The two directions run concurrently: each may wait for its reader without blocking the
    // other (a single loop would deadlock when both pipes are full).
    let inbound = async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            // Frames taken leave the buffer once per read, not once per frame.
            let mut start = 0;
            while let Some((frame, used)) =
                websocket::decode(&inbuf[start..], !client).map_err(bad)?
            {
                start += used;
                match frame.opcode {
                    Opcode::Binary | Opcode::Continuation => {
                        local_w.write_all(&frame.payload).await?
                    }
                    Opcode::Ping => {
                        let _ = control_tx.send((Opcode::Pong, frame.payload)).await;
                    }
                    Opcode::Pong => {}
                    Opcode::Close => {
                        let _ = control_tx.send((Opcode::Close, Vec::new())).await;
                        return Ok(());
                    }
                    Opcode::Text => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "text message on the relay WebSocket",
                        ))
                    }
                }
            }
            inbuf.drain(..start);
            let n = ws_r.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            inbuf.extend_from_slice(&chunk[..n]);
        }
    };
    let outbound = async move {
        let rng = ring::rand::SystemRandom::new();
        let mask = || {
            let mut k = [0u8; 4];
            let _ = ring::rand::SecureRandom::fill(&rng, &mut k);
            client.then_some(k)
        };
        let mut chunk = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        loop {
            out.clear();
            tokio::select! {
                c = control_rx.recv() => {
                    let Some((op, payload)) = c else { return Ok(()) };
                    websocket::encode(op, &payload, mask(), &mut out);
                    ws_w.write_all(&out).await?;
                    ws_w.flush().await?;
                    if op == Opcode::Close {
                        let _ = ws_w.shutdown().await;
                        return Ok(());
                    }
                }
                n = local_r.read(&mut chunk) => {
                    let n = n?;
                    if n == 0 {
                        websocket::encode(Opcode::Close, &[], mask(), &mut out);
                        let _ = ws_w.write_all(&out).await;
                        let _ = ws_w.shutdown().await;
                        return Ok(());
                    }
                    websocket::encode(Opcode::Binary, &chunk[..n], mask(), &mut out);
                    ws_w.write_all(&out).await?;
                    ws_w.flush().await?;
                }
            }
        }
    };
    tokio::select! {
        r = inbound => r,
        r = outbound => r,
    }
}
