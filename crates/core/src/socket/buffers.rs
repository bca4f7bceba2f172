//! Kernel buffer sizes for the proxy's UDP socket.
//!
//! A QUIC connection at full speed keeps a bandwidth-delay product of datagrams in flight; with
//! the kernel's default receive buffer (208 KiB on Linux) a burst can overflow it, datagrams are
//! dropped and the sender backs off. Like quic-go and iroh we ask for several MiB. Linux caps the request at `net.core.rmem_max` /
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
    let (recv, send) = granted(&s);
    // Root may go past the sysctl cap (Linux only).
    #[cfg(target_os = "linux")]
    let (recv, send) = if recv < wanted || send < wanted {
        force(&s, wanted);
        granted(&s)
    } else {
        (recv, send)
    };
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
fn force(s: &socket2::SockRef<'_>, wanted: usize) {
    let size = wanted.min(i32::MAX as usize) as libc::c_int;
    set_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size);
    set_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size);
}

/// Turns the kernel's receive offload (GRO) off: the slow path, for tests and systems that
/// misbehave with it. quinn-udp turns it on where it exists.
pub fn disable_gro(s: socket2::SockRef<'_>) {
    #[cfg(target_os = "linux")]
    set_int(&s, libc::SOL_UDP, libc::UDP_GRO, 0);
    #[cfg(not(target_os = "linux"))]
    let _ = s;
}

/// An integer socket option socket2 has no setter for; best effort (a refusal keeps the
/// kernel's setting, which callers read back where it matters).
#[cfg(target_os = "linux")]
fn set_int(s: &socket2::SockRef<'_>, level: libc::c_int, opt: libc::c_int, value: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket descriptor and a c_int option value of the right length.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
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
