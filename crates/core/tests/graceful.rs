//! Ends on purpose lose nothing: when either proxy closes the connection (`close_connection`)
//! or stops, bytes the proxies hold in flight both ways are delivered and both TCP ends then
//! read a clean end of stream (a FIN, not a reset), well before `connEndTime` runs out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keynet_core::{ConnOptions, ForwardProxy, ForwardStart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{reverse_proxy_for, tunnel_to, TOKEN};

/// Bytes each end writes before the close (held by the proxies when it happens).
const SIZE: usize = 1 << 20;
/// Long enough that an end arriving by the hard close after it cannot pass for a drained one.
const END_TIME: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Closer {
    ForwardCloses,
    ReverseCloses,
    ForwardStops,
    ReverseStops,
}

fn pattern(seed: u32) -> Vec<u8> {
    (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(seed) >> 3) as u8)
        .collect()
}

/// A client and a server each write `SIZE` bytes into one tunnel and read nothing until the
/// proxies hold all of it; then `closer` ends the connection, and each end reads to the end.
async fn ends_deliver_everything(closer: Closer) {
    let opts = ConnOptions {
        end_time: END_TIME,
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rp = reverse_proxy_for(listener.local_addr().unwrap(), opts.clone()).await;
    let fp = ForwardProxy::new(TOKEN.into(), opts).unwrap();
    fp.start(ForwardStart::default()).await.unwrap();

    let mut client = tunnel_to(&fp, &rp).await;
    let (mut server, _) = listener.accept().await.unwrap();
    let up = pattern(7);
    let down = pattern(13);
    client.write_all(&up).await.unwrap();
    server.write_all(&down).await.unwrap();
    // In flight: each proxy has read all of its end's bytes (they sit in QUIC and the far
    // side's buffers, as nobody reads yet).
    wait_until("both proxies read their end's bytes", || {
        fp.stats().unwrap().bytes_sent == SIZE as u64
            && rp.stats().unwrap().bytes_sent == SIZE as u64
    })
    .await;

    let started = Instant::now();
    let fp_addr: SocketAddr = fp.egress_addr().unwrap();
    let rp_addr = rp.ingress_addr().unwrap();
    let close = async {
        match closer {
            Closer::ForwardCloses => fp.close_connection(rp_addr).await.unwrap(),
            Closer::ReverseCloses => rp.close_connection(fp_addr).await.unwrap(),
            Closer::ForwardStops => fp.stop().await.unwrap(),
            Closer::ReverseStops => rp.stop().await.unwrap(),
        }
        started.elapsed()
    };
    let (closed_after, at_server, at_client) =
        tokio::join!(close, read_all(&mut server), read_all(&mut client));
    let at_server = at_server.unwrap_or_else(|e| panic!("{closer:?}: server read {e}"));
    let at_client = at_client.unwrap_or_else(|e| panic!("{closer:?}: client read {e}"));
    assert!(
        at_server == up,
        "{closer:?}: server got {} of {SIZE} bytes",
        at_server.len()
    );
    assert!(
        at_client == down,
        "{closer:?}: client got {} of {SIZE} bytes",
        at_client.len()
    );
    // The close waited for the drain, not for the hard close.
    assert!(
        closed_after < END_TIME,
        "{closer:?}: closing took {closed_after:?}"
    );
    let _ = fp.stop().await;
    let _ = rp.stop().await;
}

/// Reads `s` to its end; an error (a reset) is returned as such.
async fn read_all(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).await?;
    Ok(got)
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_close_connection_delivers_both_ways_then_fins() {
    ends_deliver_everything(Closer::ForwardCloses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_close_connection_delivers_both_ways_then_fins() {
    ends_deliver_everything(Closer::ReverseCloses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stop_delivers_both_ways_then_fins() {
    ends_deliver_everything(Closer::ForwardStops).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_stop_delivers_both_ways_then_fins() {
    ends_deliver_everything(Closer::ReverseStops).await;
}
