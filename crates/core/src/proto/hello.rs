//! The hello each side sends on its one unidirectional QUIC stream right after the handshake.
//!
//! It tells the peer what punch datagrams may not have (they can be lost): whether this side was
//! punching toward it, where this side sees it, and this side's own address. From that each side
//! knows whether a NAT sits between them, so `path` is `punched` or `direct` reliably. The
//! reverse proxy sends its hello only after it accepted the forward proxy's certificate (in TLS
//! 1.3 the client finishes first), so the forward proxy waits for it before a connection is up.
//!
//! ```text
//! b"KNH" version(1) flags(1: bit 0 = punching toward you) observed(19) own(19)  = 43 bytes
//! ```
//! Addresses as in [`crate::proto::punch`]: family (4/6), IPv6 or v4-mapped (16), port (2, BE).

use std::net::SocketAddr;

use crate::proto::punch::{get_addr, put_addr, DecodeError};

/// Length of a hello.
pub const LEN: usize = 43;
const MAGIC: &[u8; 3] = b"KNH";
const VERSION: u8 = 1;

/// One side's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender was punching toward the receiver while the connection was set up.
    pub punching: bool,
    /// Where the sender sees the receiver (the receiver's public address).
    pub observed: SocketAddr,
    /// The sender's own address (before any NAT).
    pub own: SocketAddr,
}

/// Why a hello was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a keynet hello.
    #[error("not a keynet hello")]
    Magic,
    /// A version this build does not speak.
    #[error("unsupported hello version {0}")]
    Version(u8),
    /// Unknown flag bits.
    #[error("unknown hello flags {0:#x}")]
    Flags(u8),
    /// A malformed address.
    #[error("malformed address in hello")]
    Address,
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..3].copy_from_slice(MAGIC);
        out[3] = VERSION;
        out[4] = self.punching as u8;
        put_addr(&mut out[5..24], Some(self.observed));
        put_addr(&mut out[24..43], Some(self.own));
        out
    }

    /// Decodes a hello, refusing anything malformed.
    pub fn decode(b: &[u8; LEN]) -> Result<Self, HelloError> {
        if &b[..3] != MAGIC {
            return Err(HelloError::Magic);
        }
        if b[3] != VERSION {
            return Err(HelloError::Version(b[3]));
        }
        if b[4] & !1 != 0 {
            return Err(HelloError::Flags(b[4]));
        }
        let addr = |r: &[u8]| -> Result<SocketAddr, HelloError> {
            get_addr(r)
                .map_err(|_: DecodeError| HelloError::Address)?
                .ok_or(HelloError::Address)
        };
        Ok(Self {
            punching: b[4] & 1 == 1,
            observed: addr(&b[5..24])?,
            own: addr(&b[24..43])?,
        })
    }

    /// Whether a NAT sits between us, given this (received) hello, the address we reach the
    /// peer at, and our own address: the peer is not where it thinks it is, or we are not where
    /// it sees us.
    pub fn nat_between(&self, peer_at: SocketAddr, own: SocketAddr) -> bool {
        self.own != peer_at || self.observed != own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn snapshot() {
        let h = Hello {
            punching: true,
            observed: "203.0.113.1:40000".parse().unwrap(),
            own: "198.51.100.66:40001".parse().unwrap(),
        };
        let b = h.encode();
        assert_eq!(&b[..5], &[b'K', b'N', b'H', 1, 1]);
        assert_eq!(b[5], 4);
        assert_eq!(&b[16..18], &[0xff, 0xff], "v4-mapped");
        assert_eq!(&b[18..22], &[203, 0, 113, 1]);
        assert_eq!(&b[22..24], &40000u16.to_be_bytes());
        assert_eq!(Hello::decode(&b), Ok(h));
    }

    #[test]
    fn malformed_is_refused() {
        let good = Hello {
            punching: false,
            observed: "[::1]:1".parse().unwrap(),
            own: "[::1]:2".parse().unwrap(),
        }
        .encode();
        let mut x = good;
        x[0] = b'X';
        assert_eq!(Hello::decode(&x), Err(HelloError::Magic));
        let mut x = good;
        x[3] = 2;
        assert_eq!(Hello::decode(&x), Err(HelloError::Version(2)));
        let mut x = good;
        x[4] = 2;
        assert_eq!(Hello::decode(&x), Err(HelloError::Flags(2)));
        let mut x = good;
        x[5] = 9;
        assert_eq!(Hello::decode(&x), Err(HelloError::Address));
        let mut x = good;
        x[24..43].fill(0);
        assert_eq!(Hello::decode(&x), Err(HelloError::Address));
    }

    #[test]
    fn nat_detection() {
        let a: SocketAddr = "203.0.113.10:1".parse().unwrap();
        let b: SocketAddr = "203.0.113.20:2".parse().unwrap();
        // No NAT: B is where we reach it, and sees us where we are.
        assert!(!Hello {
            punching: true,
            observed: a,
            own: b
        }
        .nat_between(b, a));
        // B behind a NAT.
        assert!(Hello {
            punching: true,
            observed: a,
            own: "198.51.100.66:2".parse().unwrap()
        }
        .nat_between(b, a));
        // Us behind a NAT.
        assert!(Hello {
            punching: true,
            observed: "203.0.113.1:1".parse().unwrap(),
            own: b
        }
        .nat_between(b, a));
    }

    proptest! {
        #[test]
        fn round_trip(p in any::<bool>(), o in any::<std::net::SocketAddrV6>(), w in any::<std::net::SocketAddrV4>()) {
            let h = Hello { punching: p, observed: SocketAddr::V6(o), own: SocketAddr::V4(w) };
            let d = Hello::decode(&h.encode()).unwrap();
            prop_assert_eq!(d.punching, p);
            prop_assert_eq!(d.own, h.own);
            prop_assert_eq!(d.observed.port(), o.port());
        }
    }
}
