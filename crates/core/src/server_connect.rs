//! Connects to the local server for a tunnel without reserving a port up front.
//!
//! The reverse proxy must know its own end of the TCP connection (so a server that asks "who is
//! calling?" finds the peer) before any byte reaches the server. Binding `(source, 0)` first did
//! that, but a bind reserves a port from the ephemeral range for any destination, and ports left
//! in TIME_WAIT exhaust the range at a few hundred tunnels per second. Here the kernel picks the
//! port inside `connect()` (where ports can be shared across different four-tuples and TIME_WAIT
//! entries reused), and the local address is read right after that call returns, while the
//! handshake is still in flight and before the tunnel carries anything.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Connects to `server`, calling `local` with the connection's local address as soon as the
/// kernel has chosen it, and again if the address seen once connected differs (a system may
/// report the source IP only when the handshake completes). No timeout: the caller bounds it.
pub(crate) async fn connect(
    server: SocketAddr,
    mut local: impl FnMut(SocketAddr),
) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    let early = socket.local_addr()?.as_socket();
    if let Some(addr) = early {
        local(addr);
    }
    let tcp = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    tcp.writable().await?;
    if let Some(e) = tcp.take_error()? {
        return Err(e);
    }
    let connected = tcp.local_addr()?;
    if early != Some(connected) {
        local(connected);
    }
    Ok(tcp)
}

/// A non-blocking connect that has started (EINPROGRESS on Unix, WSAEWOULDBLOCK on Windows).
fn in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reports_the_address_the_server_sees_before_it_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let mut seen = Vec::new();
        let mut tcp = connect(server, |a| seen.push(a)).await.unwrap();
        let (mut accepted, from) = listener.accept().await.unwrap();
        assert_eq!(seen, vec![from], "one report, the server's view of us");
        tcp.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        accepted.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(server, |_| {}).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
