//! Helpers shared by the integration tests: an echo server and a raw CONNECT client.
#![allow(dead_code)] // each test crate uses a different subset

use std::net::SocketAddr;

use base64::Engine;
use keynet_core::ForwardProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// CPU time (user + system) this process has used so far: the examples' per-tunnel CPU.
#[cfg(unix)]
pub(crate) fn process_cpu() -> std::time::Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t =
        |tv: libc::timeval| std::time::Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// The token every test forward proxy accepts.
pub(crate) const TOKEN: &str = "s3cret";

/// A TCP echo server on loopback that half-closes after echoing.
pub(crate) async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A started reverse proxy with `opts`, on a loopback ingress port, in front of `server`.
pub(crate) async fn reverse_proxy_for(
    server: SocketAddr,
    opts: keynet_core::ConnOptions,
) -> keynet_core::ReverseProxy {
    let rp = keynet_core::ReverseProxy::new(opts).unwrap();
    rp.start(keynet_core::ReverseStart {
        ingress_addr: "127.0.0.1:0".parse().unwrap(),
        ..keynet_core::ReverseStart::new(server)
    })
    .await
    .unwrap();
    rp
}

/// A tunnel through `fp` to `rp`'s ingress, pinned to its node id; panics unless it opened.
pub(crate) async fn tunnel_to(fp: &ForwardProxy, rp: &keynet_core::ReverseProxy) -> TcpStream {
    let target = format!(
        "{}?nodeId={}",
        rp.ingress_addr().unwrap(),
        rp.node_id().unwrap()
    );
    let (s, head) = connect(fp, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// Sends a CONNECT for `target` through `fp`; returns the stream and the response head.
pub(crate) async fn connect(fp: &ForwardProxy, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(fp.proxy_addr().unwrap()).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(TOKEN);
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Echoes `bytes` through a tunnel of `fp` to `target` (`host:port`), both ways at once,
/// checking every byte; returns what came back.
pub(crate) async fn echo_through(fp: &ForwardProxy, target: &str, bytes: usize) -> Vec<u8> {
    let (mut s, head) = connect(fp, target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let (_, got) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    got
}

/// The next frame a bare relay client gets, within 10 s; the session must still be open.
pub(crate) async fn recv_frame(
    c: &keynet_core::relay::client::RelayClient,
) -> keynet_core::proto::relay::Frame {
    tokio::time::timeout(std::time::Duration::from_secs(10), c.recv())
        .await
        .expect("a frame in time")
        .unwrap()
        .expect("not closed")
}
