//! 64 MiB each way through one tunnel, on the fast path (large socket buffers, segment
//! offload, zero-copy splice) and on the slow path real systems fall back to (small socket
//! buffers, so the kernel drops datagrams and QUIC recovers; no GSO/GRO): every byte arrives,
//! in order. The same on the portable socket keynet falls back to where the system refuses
//! quinn-udp's socket options (wine's Winsock): no ECN, packet info or don't-fragment.

use keynet_core::options::UdpTuning;
use keynet_core::{ConnOptions, ForwardProxy, ForwardStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{echo_server, reverse_proxy_for, tunnel_to, TOKEN};

const TOTAL: usize = 64 * 1024 * 1024;

/// Byte `i` of the stream: position-dependent, so a lost, repeated or reordered chunk shows.
fn pattern(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i >> 16) as u8
}

/// Carries the data; returns the forward proxy's and the reverse proxy's view of the connection
/// afterwards.
async fn carry_64_mib_each_way(
    udp: UdpTuning,
) -> (keynet_core::ConnectionInfo, keynet_core::ConnectionInfo) {
    let opts = ConnOptions {
        udp,
        ..Default::default()
    };
    let server = echo_server().await;
    let rp = reverse_proxy_for(server, opts.clone()).await;
    let fp = ForwardProxy::new(TOKEN.into(), opts).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();
    let mut s = tunnel_to(&fp, &rp).await;
    let (mut r, mut w) = s.split();
    let writer = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0;
        while at < TOTAL {
            let n = buf.len().min(TOTAL - at);
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(at + k);
            }
            w.write_all(&buf[..n]).await.unwrap();
            at += n;
        }
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return at;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(at + k), "byte {} differs", at + k);
            }
            at += n;
        }
    };
    let ((), echoed) = tokio::time::timeout(std::time::Duration::from_secs(240), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("64 MiB each way in time");
    assert_eq!(echoed, TOTAL);
    let info = fp
        .connection_info_by_ingress(rp.ingress_addr().unwrap())
        .unwrap()
        .expect("the connection");
    let accepted = rp
        .connections()
        .unwrap()
        .pop()
        .expect("the accepted connection");
    fp.stop().await.unwrap();
    rp.stop().await.unwrap();
    (info, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_on_the_fast_path() {
    let (info, accepted) = carry_64_mib_each_way(UdpTuning::default()).await;
    // Linux batches datagrams into fewer send calls (GSO): the fast path really ran.
    if cfg!(target_os = "linux") {
        assert!(info.send_calls < info.datagrams_sent, "{info:?}");
        // Loopback's route is far larger than Ethernet: both ends' MTU search (the dialling
        // one's and the accepting one's) went past 1500 bytes, so most packets are larger than
        // any on the internet. With quinn's default search they averaged 1,451 bytes.
        for side in [&info, &accepted] {
            let average = side.bytes_sent / side.datagrams_sent;
            assert!(average > 1500, "average datagram {average} bytes: {side:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_with_small_socket_buffers_and_no_segment_offload() {
    let (info, _) = carry_64_mib_each_way(UdpTuning {
        buffer: 32 * 1024,
        segment_offload: false,
        ..Default::default()
    })
    .await;
    assert_eq!(
        info.send_calls, info.datagrams_sent,
        "one datagram per call: {info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_on_the_portable_socket() {
    let (info, _) = carry_64_mib_each_way(UdpTuning {
        portable: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        info.send_calls, info.datagrams_sent,
        "one datagram per call: {info:?}"
    );
}
