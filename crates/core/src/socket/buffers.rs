//! Kernel buffer sizes for the proxy's UDP socket.
//!
//! A QUIC connection at full speed keeps a bandwidth-delay product of datagrams in flight; with
//! the kernel's default receive buffer (208 KiB on Linux) a burst overflows it, datagrams are
//! dropped and the sender backs off (0.5 % drops at loopback speed before this). Like quic-go
//! and iroh we ask for several MiB. Linux caps the request at `net.core.rmem_max` /
//! `wmem_max` unless the process may override it (CAP_NET_ADMIN); when the grant falls short we
//! keep what we got, and say once how to raise the cap. The buffers cost kernel memory only as
//! datagrams queue, not per socket up front.

use std::sync::atomic::{AtomicBool, Ordering};

/// The buffer size asked for, each direction.
pub const WANTED: usize = 7 * 1024 * 1024;

static WARNED: AtomicBool = AtomicBool::new(false);

/// Sizes `socket`'s receive and send buffers toward `wanted` (normally [`WANTED`]); never
/// fails (a system that refuses keeps its defaults). Returns the sizes granted (as the kernel
/// reports them).
pub fn size(s: socket2::SockRef<'_>, wanted: usize) -> (usize, usize) {
    let _ = s.set_recv_buffer_size(wanted);
    let _ = s.set_send_buffer_size(wanted);
    let (mut recv, mut send) = granted(&s);
    #[cfg(target_os = "linux")]
    if recv < wanted || send < wanted {
        force(&s, wanted);
        (recv, send) = granted(&s);
    }
    if (recv < wanted || send < wanted) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            recv,
            send,
            wanted,
            "UDP socket buffers are smaller than wanted: fast transfers may drop datagrams \
             (on Linux raise net.core.rmem_max and net.core.wmem_max)"
        );
    }
    (recv, send)
}

/// Linux reports twice the size set (the kernel's bookkeeping overhead); halve it back.
fn granted(s: &socket2::SockRef<'_>) -> (usize, usize) {
    let scale = if cfg!(target_os = "linux") { 2 } else { 1 };
    (
        s.recv_buffer_size().unwrap_or(0) / scale,
        s.send_buffer_size().unwrap_or(0) / scale,
    )
}

/// SO_RCVBUFFORCE / SO_SNDBUFFORCE: past the sysctl caps, for a process allowed to.
#[cfg(target_os = "linux")]
fn force(socket: &socket2::SockRef<'_>, wanted: usize) {
    use std::os::fd::AsRawFd;
    let size = wanted.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid socket descriptor and a c_int option value of the right length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Turns the kernel's receive offload (GRO) off: the slow path, for tests and systems that
/// misbehave with it. quinn-udp turns it on where it exists.
pub fn disable_gro(s: socket2::SockRef<'_>) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let off: libc::c_int = 0;
        // SAFETY: a valid socket descriptor and a c_int option value of the right length.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = s;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_more_than_the_default_or_keeps_the_socket_working() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = granted(&socket2::SockRef::from(&socket));
        let after = size((&socket).into(), WANTED);
        assert!(
            after.0 >= before.0 && after.1 >= before.1,
            "{before:?} -> {after:?}"
        );
        // Root (as in CI) may force past the sysctl cap: the full size.
        #[cfg(target_os = "linux")]
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(after, (WANTED, WANTED));
        }
        socket.send_to(b"x", socket.local_addr().unwrap()).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(socket.recv(&mut b).unwrap(), 1);
    }
}
