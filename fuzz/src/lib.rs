//! What keynet's fuzz targets share: the input format of the stream targets, which says where
//! the stream is cut, and a reader that buffers a cut stream the way the real readers do.
//!
//! A stream target's input is
//!
//! ```text
//! byte 0        high nibble: flags of the target; low nibble: k, the number of cut lengths
//! bytes 1..=k   chunk lengths minus one (1..=256 bytes), used in turn, cyclically
//! the rest      the stream
//! ```
//!
//! With k = 0 the stream arrives in one piece. The same bytes are also read whole and one byte
//! at a time, and every way must give the same result: a decoder that says "incomplete" on a
//! prefix and something else on the whole (or the reverse) fails the target.

/// A stream target's input, split into its parts.
#[derive(Clone, Copy, Debug)]
pub struct CutStream<'a> {
    /// The high nibble of the first byte (the low nibble is zero).
    pub flags: u8,
    lens: &'a [u8],
    /// The stream itself.
    pub bytes: &'a [u8],
}

impl<'a> CutStream<'a> {
    /// Splits a fuzz input; `None` if it is too short to hold its cut lengths.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&head, rest) = data.split_first()?;
        let k = (head & 0x0f) as usize;
        if rest.len() < k {
            return None;
        }
        let (lens, bytes) = rest.split_at(k);
        Some(Self {
            flags: head & 0xf0,
            lens,
            bytes,
        })
    }

    /// The stream as the fuzzer cut it.
    pub fn chunks(&self) -> Chunks<'a> {
        Chunks {
            rest: self.bytes,
            lens: self.lens,
            next: 0,
        }
    }

    /// The stream in one piece.
    pub fn whole(&self) -> impl Iterator<Item = &'a [u8]> {
        std::iter::once(self.bytes).filter(|b| !b.is_empty())
    }

    /// The stream one byte at a time.
    pub fn bytewise(&self) -> impl Iterator<Item = &'a [u8]> {
        self.bytes.chunks(1)
    }
}

/// The head of a stream input (for seed files): `flags` (high nibble) and the chunk lengths,
/// each 1..=256 (at most 15 of them).
pub fn stream_header(flags: u8, chunk_lens: &[usize]) -> Vec<u8> {
    assert!(chunk_lens.len() <= 15 && flags & 0x0f == 0);
    let mut out = vec![flags | chunk_lens.len() as u8];
    for &n in chunk_lens {
        assert!((1..=256).contains(&n));
        out.push((n - 1) as u8);
    }
    out
}

/// Iterator over the fuzzer-chosen chunks of a stream.
#[derive(Clone, Debug)]
pub struct Chunks<'a> {
    rest: &'a [u8],
    lens: &'a [u8],
    next: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let n = match self.lens {
            [] => self.rest.len(),
            lens => lens[self.next % lens.len()] as usize + 1,
        };
        self.next += 1;
        let (chunk, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }
}

/// What a reader made of a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<T, E> {
    /// What it decoded, in order.
    pub items: Vec<T>,
    /// The error that stopped it, if one did.
    pub error: Option<E>,
    /// Bytes buffered when the stream ended without an error (a partial frame); empty after an
    /// error, where the reader stops reading.
    pub leftover: Vec<u8>,
}

/// Reads a stream as keynet's readers do (`relay::framed::FrameReader`, the WebSocket pump):
/// append each chunk to a buffer, then decode from its start until the decoder wants more
/// bytes; a decode error ends the reading. `check` sees each item with the exact bytes it was
/// decoded from.
pub fn read_stream<'a, T, E>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    mut decode: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, E>,
    mut check: impl FnMut(&T, &[u8]),
) -> Outcome<T, E> {
    let mut buf = Vec::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&buf) {
                Ok(Some((item, used))) => {
                    assert!(
                        used > 0 && used <= buf.len(),
                        "decoder took {used} of {} bytes",
                        buf.len()
                    );
                    check(&item, &buf[..used]);
                    items.push(item);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        items,
                        error: Some(error),
                        leftover: Vec::new(),
                    }
                }
            }
        }
    }
    Outcome {
        items,
        error: None,
        leftover: buf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cycle_and_cover_the_stream() {
        let mut input = stream_header(0x80, &[1, 3]);
        input.extend_from_slice(b"abcdefgh");
        let s = CutStream::parse(&input).unwrap();
        assert_eq!(s.flags, 0x80);
        let got: Vec<&[u8]> = s.chunks().collect();
        assert_eq!(got, [&b"a"[..], b"bcd", b"e", b"fgh"]);
        let whole = CutStream::parse(&[0, 1, 2]).unwrap();
        assert_eq!(whole.chunks().collect::<Vec<_>>(), [&[1u8, 2][..]]);
        assert!(CutStream::parse(&[3, 0]).is_none());
    }
}
