//! Reading and writing relay frames on a byte stream (a QUIC stream, or the WebSocket byte
//! stream of the TCP transport).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::relay::{Frame, FrameError, MAX_PAYLOAD};

/// The reading half of a relay connection.
pub(super) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a relay connection.
pub(super) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The peer sent bytes that are not a frame.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// The stream ended or failed.
    #[error("relay stream ended: {0}")]
    Closed(String),
}

impl ReadError {
    /// As a relay error; `from` names the sender (`the relay`, a node).
    pub(super) fn relay_error(self, from: impl std::fmt::Display) -> crate::error::RelayError {
        match self {
            Self::Malformed(source) => crate::error::RelayError::Malformed {
                from: from.to_string(),
                source,
            },
            Self::Closed(why) => crate::error::RelayError::Closed(why),
        }
    }
}

/// Buffers a byte stream into frames.
pub(super) struct FrameReader {
    recv: BoxRead,
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`. Frames taken are dropped from the buffer once per
    /// read, not once per frame (which would move the rest of a read of many small frames
    /// again for each of them).
    start: usize,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub(super) fn new(recv: BoxRead) -> Self {
        Self {
            recv,
            buf: Vec::with_capacity(4096),
            start: 0,
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub(super) async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some((frame, used)) = Frame::decode(&self.buf[self.start..])? {
                self.start += used;
                return Ok(Some(frame));
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(ReadError::Closed("stream ended inside a frame".into())),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // A frame is at most 3 + MAX_PAYLOAD bytes: more than that buffered without a
                    // whole frame cannot happen with a well-formed peer.
                    if self.buf.len() > 3 + MAX_PAYLOAD + chunk.len() {
                        return Err(ReadError::Closed("frame buffer overflow".into()));
                    }
                }
                Err(e) => return Err(ReadError::Closed(e.to_string())),
            }
        }
    }
}

/// Encodes and writes frames, flushing once.
pub(super) async fn write_frames(send: &mut BoxWrite, frames: &[Frame]) -> Result<(), String> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out).map_err(|e| e.to_string())?;
    }
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    send.flush().await.map_err(|e| e.to_string())
}

/// Encodes and writes one frame.
pub(super) async fn write_frame(send: &mut BoxWrite, frame: &Frame) -> Result<(), String> {
    write_frames(send, std::slice::from_ref(frame)).await
}

/// An open connection to a relay, split for reading and writing.
pub struct RelayConn {
    /// `Quic` or `WebSocket`.
    pub transport: crate::relay::spec::Transport,
    /// Reading half.
    pub read: BoxRead,
    /// Writing half.
    pub write: BoxWrite,
    /// The QUIC connection (kept open while the halves live).
    pub quic: Option<quinn::Connection>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_small_frames_in_one_read_come_out_in_order_and_whole() {
        let mut bytes = Vec::new();
        for nonce in 0..10_000u64 {
            Frame::Ping { nonce }.encode(&mut bytes).unwrap();
        }
        // A frame cut across reads, at the end.
        Frame::Pong { nonce: 7 }.encode(&mut bytes).unwrap();
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            let (head, tail) = bytes.split_at(bytes.len() - 5);
            w.write_all(head).await.unwrap();
            w.flush().await.unwrap();
            tokio::task::yield_now().await;
            w.write_all(tail).await.unwrap();
        });
        let mut frames = FrameReader::new(Box::new(r));
        for nonce in 0..10_000u64 {
            assert_eq!(frames.next().await.unwrap(), Some(Frame::Ping { nonce }));
        }
        assert_eq!(frames.next().await.unwrap(), Some(Frame::Pong { nonce: 7 }));
        writer.await.unwrap();
        assert_eq!(frames.next().await.unwrap(), None);
        assert!(frames.buf.is_empty());
    }
}
