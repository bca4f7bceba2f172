//! TCP connections carried as frames on a relay connection (public ports). Both ends use it:
//! the relay for its public clients, the node for its server connections.
//!
//! Each connection is flow-controlled on its own, in both directions: a sender may have at most
//! [`WINDOW`] bytes of `TcpData` unacknowledged, and the receiver returns credit (`TcpCredit`)
//! as it writes them to its TCP socket. So a receiver never has to wait to take a frame (its
//! queue always has room for what the window allows), a slow or stalled TCP peer slows only its
//! own connection, and the frames of everything else sharing the relay connection (relayed QUIC
//! packets, pings, other clients) are never held up or dropped. A peer that sends beyond its
//! window has broken the protocol: the caller ends its session. A TCP peer that accepts no byte
//! for the stall time is reset.
//!
//! Half-close travels as `TcpClose { reset: false }`, an abort as `reset: true`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use crate::proto::relay::Frame;

/// Bytes per `TcpData` frame.
pub const CHUNK: u32 = 16 * 1024;
/// Bytes one side may send toward one connection before the receiver returns credit.
pub const WINDOW: u32 = 256 * 1024;
/// The least a data frame is charged against the window, so a window of tiny frames cannot
/// fill a queue with per-frame overhead (at most `WINDOW / MIN_COST` frames are queued).
pub const MIN_COST: u32 = 512;
/// The receiver returns credit once it has written this much.
const CREDIT_EVERY: u32 = WINDOW / 4;
/// Frames a connection's queue holds: a window of the smallest frames, plus a close.
const QUEUE: usize = (WINDOW / MIN_COST) as usize + 2;
/// Default time a TCP peer may accept no byte while data waits for it before it is reset.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);

/// What a data frame of `len` bytes costs against the window.
pub fn cost(len: usize) -> u32 {
    (len as u32).max(MIN_COST)
}

/// What arrives for a carried connection.
#[derive(Debug, PartialEq, Eq)]
enum ToTcp {
    /// Bytes to write.
    Data(Vec<u8>),
    /// The other end finished writing.
    Fin,
    /// The other end aborted.
    Reset,
}

/// A peer broke a connection's flow control (or flooded it with closes): the session is
/// misbehaving.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("public-port connection {conn}: {why}")]
pub struct Broken {
    /// The connection.
    pub conn: u32,
    /// What the peer did.
    pub why: &'static str,
}

/// One connection as its table sees it.
struct Entry {
    serial: u64,
    tx: mpsc::Sender<ToTcp>,
    shared: Arc<Shared>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The carrier's sending half waits on credit: wake it to end.
        self.shared.credit.close();
    }
}

/// What a connection's table and its carrier share.
struct Shared {
    /// Cost of the frames queued for the TCP peer and not yet written.
    queued: AtomicU32,
    /// What we may still send (permits are bytes).
    credit: Semaphore,
    /// Cost we sent that the peer has not returned yet.
    unacked: AtomicU32,
}

/// The other end of a table entry: what [`carry`] needs.
pub struct Ends {
    conn: u32,
    serial: u64,
    rx: mpsc::Receiver<ToTcp>,
    shared: Arc<Shared>,
}

impl Ends {
    /// The connection id.
    pub fn conn(&self) -> u32 {
        self.conn
    }

    /// The entry's serial, for [`Table::forget`].
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

/// The carried connections of one relay session, seen from one side. Routing never waits.
#[derive(Default)]
pub struct Table {
    conns: HashMap<u32, Entry>,
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

impl Table {
    /// Adds connection `conn` (replacing, and so resetting, one with the same id).
    pub fn open(&mut self, conn: u32) -> Ends {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            queued: AtomicU32::new(0),
            credit: Semaphore::new(WINDOW as usize),
            unacked: AtomicU32::new(0),
        });
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(
            conn,
            Entry {
                serial,
                tx,
                shared: shared.clone(),
            },
        );
        Ends {
            conn,
            serial,
            rx,
            shared,
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Whether `conn` is open.
    pub fn contains(&self, conn: u32) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Drops connection `conn` if it is still the one opened as `serial` (its carrier resets it
    /// unless it already ended).
    pub fn forget(&mut self, conn: u32, serial: u64) {
        if self.conns.get(&conn).is_some_and(|e| e.serial == serial) {
            self.conns.remove(&conn);
        }
    }

    /// Drops every connection (the relay session ended).
    pub fn clear(&mut self) {
        self.conns.clear();
    }

    /// Hands a `TcpData`, `TcpClose` or `TcpCredit` frame to its connection. Frames for a
    /// connection that is gone are ignored (it may have just ended); other frames are ignored.
    pub fn route(&mut self, frame: Frame) -> Result<(), Broken> {
        let (conn, msg) = match frame {
            Frame::TcpData { conn, data } => (conn, ToTcp::Data(data)),
            Frame::TcpClose { conn, reset } => {
                (conn, if reset { ToTcp::Reset } else { ToTcp::Fin })
            }
            Frame::TcpCredit { conn, bytes } => return self.credit(conn, bytes),
            _ => return Ok(()),
        };
        let Some(entry) = self.conns.get(&conn) else {
            return Ok(());
        };
        let broken = |why| Broken { conn, why };
        if let ToTcp::Data(d) = &msg {
            let c = cost(d.len());
            let queued = entry.shared.queued.load(Ordering::Acquire);
            if queued.saturating_add(c) > WINDOW {
                self.conns.remove(&conn);
                return Err(broken("sent beyond its window"));
            }
            entry.shared.queued.fetch_add(c, Ordering::AcqRel);
        }
        if entry.tx.try_send(msg).is_err() && !entry.tx.is_closed() {
            self.conns.remove(&conn);
            return Err(broken("flooded it with frames"));
        }
        Ok(())
    }

    fn credit(&mut self, conn: u32, bytes: u32) -> Result<(), Broken> {
        let Some(entry) = self.conns.get(&conn) else {
            return Ok(());
        };
        let s = &entry.shared;
        let returned = s
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_sub(bytes)
            });
        if returned.is_err() {
            self.conns.remove(&conn);
            return Err(Broken {
                conn,
                why: "returned more credit than it was sent",
            });
        }
        s.credit.add_permits(bytes as usize);
        Ok(())
    }
}

/// How a carried connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both directions finished (FIN both ways).
    Closed,
    /// The other end reset it, or its table dropped it (the session ended).
    Dropped,
    /// The TCP peer accepted no byte for the stall time: reset.
    Stalled,
    /// Reading or writing the TCP socket failed: reset.
    Failed(String),
}

/// Carries `tcp` as connection `ends.conn` until both directions ended or it is reset: its
/// bytes go out as frames on `out` as the window allows, what its table routes to it is written
/// to it (credit returned as it goes). A TCP peer that accepts no byte for `stall` while data
/// waits for it is reset, and so is the connection when a read or write fails or the other end
/// resets it.
pub async fn carry(tcp: TcpStream, ends: Ends, out: mpsc::Sender<Frame>, stall: Duration) -> Ended {
    let _ = tcp.set_nodelay(true);
    let Ends {
        conn,
        mut rx,
        shared,
        ..
    } = ends;
    let (mut rd, mut wr) = tcp.into_split();
    // Our FIN went out / the peer's FIN arrived. After its FIN the peer may still reset the
    // connection, so its frames are read until the connection is closed both ways.
    let up_finished = AtomicBool::new(false);
    let fin_seen = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            // At least the least cost, then whatever else is there, up to a chunk.
            let Ok(p) = shared.credit.acquire_many(MIN_COST).await else {
                return Err(Ended::Dropped);
            };
            p.forget();
            let extra = (shared.credit.available_permits() as u32).min(CHUNK - MIN_COST);
            let extra = match shared.credit.try_acquire_many(extra) {
                Ok(p) if extra > 0 => {
                    p.forget();
                    extra
                }
                _ => 0,
            };
            let held = MIN_COST + extra;
            let frame = match rd.read(&mut buf[..held as usize]).await {
                Ok(0) => {
                    shared.credit.add_permits(held as usize);
                    Frame::TcpClose { conn, reset: false }
                }
                Ok(n) => {
                    let c = cost(n);
                    shared.credit.add_permits((held - c) as usize);
                    shared.unacked.fetch_add(c, Ordering::AcqRel);
                    Frame::TcpData {
                        conn,
                        data: buf[..n].to_vec(),
                    }
                }
                Err(e) => return Err(Ended::Failed(format!("read: {e}"))),
            };
            let fin = matches!(frame, Frame::TcpClose { .. });
            if out.send(frame).await.is_err() {
                return Err(Ended::Dropped);
            }
            if fin {
                up_finished.store(true, Ordering::Release);
                return Ok(());
            }
        }
    };
    let down = async {
        let mut written = 0u32;
        loop {
            match rx.recv().await {
                Some(ToTcp::Data(_)) if fin_seen.load(Ordering::Acquire) => {
                    return Err(Ended::Failed("data after the peer's FIN".into()));
                }
                Some(ToTcp::Data(d)) => {
                    let mut at = 0;
                    while at < d.len() {
                        match tokio::time::timeout(stall, wr.write(&d[at..])).await {
                            Ok(Ok(n)) if n > 0 => at += n,
                            Ok(Ok(_)) => return Err(Ended::Failed("write: closed".into())),
                            Ok(Err(e)) => return Err(Ended::Failed(format!("write: {e}"))),
                            Err(_) => return Err(Ended::Stalled),
                        }
                    }
                    let c = cost(d.len());
                    shared.queued.fetch_sub(c, Ordering::AcqRel);
                    written += c;
                    if written >= CREDIT_EVERY {
                        let credit = Frame::TcpCredit {
                            conn,
                            bytes: written,
                        };
                        if out.send(credit).await.is_err() {
                            return Err(Ended::Dropped);
                        }
                        written = 0;
                    }
                }
                Some(ToTcp::Fin) => {
                    if !fin_seen.swap(true, Ordering::AcqRel) {
                        let _ = wr.shutdown().await;
                    }
                    if up_finished.load(Ordering::Acquire) {
                        return Ok(());
                    }
                }
                Some(ToTcp::Reset) | None => return Err(Ended::Dropped),
            }
        }
    };
    let failed = {
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let r = tokio::select! {
                r = &mut up, if !up_done => { up_done = true; r }
                r = &mut down, if !down_done => { down_done = true; r }
            };
            match r {
                // Closed both ways: the peer's FIN arrived and ours went out.
                Ok(()) if down_done || fin_seen.load(Ordering::Acquire) => return Ended::Closed,
                Ok(()) => {}
                Err(e) => break e,
            }
        }
    };
    // An abort: RST to our TCP peer, and tell the other end unless it is the one that ended it.
    let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(Duration::ZERO));
    if failed != Ended::Dropped {
        let _ = out.send(Frame::TcpClose { conn, reset: true }).await;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (peer, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_and_half_close_cross_both_ways() {
        let (mut peer, tcp) = pair().await;
        let mut table = Table::default();
        let ends = table.open(7);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let carried = tokio::spawn(carry(tcp, ends, out_tx, DEFAULT_STALL));
        peer.write_all(b"up").await.unwrap();
        peer.shutdown().await.unwrap();
        assert_eq!(
            out_rx.recv().await,
            Some(Frame::TcpData {
                conn: 7,
                data: b"up".to_vec()
            })
        );
        assert_eq!(
            out_rx.recv().await,
            Some(Frame::TcpClose {
                conn: 7,
                reset: false
            })
        );
        let data = Frame::TcpData {
            conn: 7,
            data: b"down".to_vec(),
        };
        table.route(data).unwrap();
        table
            .route(Frame::TcpClose {
                conn: 7,
                reset: false,
            })
            .unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"down");
        assert_eq!(carried.await.unwrap(), Ended::Closed);
    }

    #[tokio::test]
    async fn a_sender_stops_at_its_window_until_credit_returns() {
        let (mut peer, tcp) = pair().await;
        let mut table = Table::default();
        let ends = table.open(1);
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        tokio::spawn(carry(tcp, ends, out_tx, DEFAULT_STALL));
        let writer = tokio::spawn(async move {
            peer.write_all(&vec![7u8; 4 * WINDOW as usize])
                .await
                .unwrap();
            peer
        });
        let mut sent = 0usize;
        // Everything the window allows arrives, then nothing more.
        while sent < WINDOW as usize {
            match out_rx.recv().await.unwrap() {
                Frame::TcpData { data, .. } => sent += data.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sent, WINDOW as usize);
        let more = tokio::time::timeout(Duration::from_millis(200), out_rx.recv()).await;
        assert!(more.is_err(), "sent beyond the window: {more:?}");
        table
            .route(Frame::TcpCredit {
                conn: 1,
                bytes: CHUNK,
            })
            .unwrap();
        match out_rx.recv().await.unwrap() {
            Frame::TcpData { data, .. } => assert_eq!(data.len(), CHUNK as usize),
            other => panic!("unexpected {other:?}"),
        }
        drop(writer);
    }

    #[tokio::test]
    async fn a_peer_beyond_the_window_or_returning_unsent_credit_is_broken() {
        let mut table = Table::default();
        let _ends = table.open(1);
        for _ in 0..WINDOW / CHUNK {
            let f = Frame::TcpData {
                conn: 1,
                data: vec![0; CHUNK as usize],
            };
            table.route(f).unwrap();
        }
        let over = Frame::TcpData {
            conn: 1,
            data: vec![0],
        };
        assert_eq!(table.route(over).unwrap_err().why, "sent beyond its window");
        assert!(!table.contains(1));
        // Tiny frames are charged MIN_COST each.
        let _ends = table.open(2);
        for _ in 0..WINDOW / MIN_COST {
            let f = Frame::TcpData {
                conn: 2,
                data: vec![0],
            };
            table.route(f).unwrap();
        }
        let f = Frame::TcpData {
            conn: 2,
            data: vec![0],
        };
        assert!(table.route(f).is_err());
        let _ends = table.open(3);
        let credit = Frame::TcpCredit { conn: 3, bytes: 1 };
        assert_eq!(
            table.route(credit).unwrap_err().why,
            "returned more credit than it was sent"
        );
        // Frames for unknown connections are ignored.
        table
            .route(Frame::TcpData {
                conn: 99,
                data: vec![1],
            })
            .unwrap();
    }

    #[tokio::test]
    async fn a_reset_after_the_peers_fin_still_ends_a_connection_waiting_for_credit() {
        let (mut peer, tcp) = pair().await;
        let mut table = Table::default();
        let ends = table.open(4);
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        let carried = tokio::spawn(carry(tcp, ends, out_tx, DEFAULT_STALL));
        let fin = Frame::TcpClose {
            conn: 4,
            reset: false,
        };
        table.route(fin).unwrap();
        // Our TCP peer sends more than a window: the carrier then waits for credit.
        peer.write_all(&vec![3u8; 2 * WINDOW as usize])
            .await
            .unwrap();
        let mut sent = 0;
        while sent < WINDOW as usize {
            if let Some(Frame::TcpData { data, .. }) = out_rx.recv().await {
                sent += data.len();
            }
        }
        // The other end resets: the carrier ends instead of waiting for ever.
        let reset = Frame::TcpClose {
            conn: 4,
            reset: true,
        };
        table.route(reset).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), carried)
            .await
            .expect("ended")
            .unwrap();
        assert_eq!(ended, Ended::Dropped);
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_is_reset_after_the_stall_time() {
        let (peer, tcp) = pair().await;
        let mut table = Table::default();
        let ends = table.open(5);
        let (out_tx, mut out_rx) = mpsc::channel(64);
        let stall = Duration::from_millis(300);
        let carried = tokio::spawn(carry(tcp, ends, out_tx, stall));
        // Fill the peer's receive buffer and our send buffer, as the window allows.
        let mut credit = WINDOW;
        let ended = loop {
            while credit >= CHUNK {
                let f = Frame::TcpData {
                    conn: 5,
                    data: vec![1; CHUNK as usize],
                };
                table.route(f).unwrap();
                credit -= CHUNK;
            }
            match out_rx.recv().await {
                Some(Frame::TcpCredit { bytes, .. }) => credit += bytes,
                Some(Frame::TcpClose { reset: true, .. }) => break carried.await.unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(ended, Ended::Stalled);
        drop(peer);
    }
}
