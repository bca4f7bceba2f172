//! Reading and writing relay frames on a QUIC stream.

use crate::proto::relay::{Frame, FrameError, MAX_PAYLOAD};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent bytes that are not a frame.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// The stream ended or failed.
    #[error("relay stream ended: {0}")]
    Closed(String),
}

/// Buffers a receive stream into frames.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some((frame, used)) = Frame::decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await {
                Ok(Some(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // A frame is at most 3 + MAX_PAYLOAD bytes: more than that buffered without a
                    // whole frame cannot happen with a well-formed peer.
                    if self.buf.len() > 3 + MAX_PAYLOAD + chunk.len() {
                        return Err(ReadError::Closed("frame buffer overflow".into()));
                    }
                }
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => return Err(ReadError::Closed("stream ended inside a frame".into())),
                Err(e) => return Err(ReadError::Closed(e.to_string())),
            }
        }
    }
}

/// Encodes and writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), String> {
    let mut out = Vec::new();
    frame.encode(&mut out).map_err(|e| e.to_string())?;
    send.write_all(&out).await.map_err(|e| e.to_string())
}
