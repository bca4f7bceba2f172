//! Errors of keynet-core: one [`Error`] per failed operation, with its typed reason and its
//! source kept ([`StartError`], [`RelayError`], [`CertChainError`]). Front ends map
//! [`Error::kind`] to their own names (JS classes, HTTP statuses, C strings) in one place each.

use std::io;

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertChainError {
    /// The peer presented no certificate.
    #[error("certificate chain is empty")]
    Empty,
    /// The chain is valid but no certificate in it claims the expected node id.
    #[error("certificate chain does not claim node id {expected}")]
    Unclaimed {
        /// The node id (or ids) that was expected.
        expected: String,
    },
    /// A certificate could not be parsed, or a link's issuer does not match its parent's subject.
    #[error("certificate chain is broken: {0}")]
    Broken(String),
    /// A certificate in the chain is not yet valid or has expired.
    #[error("certificate is outside its validity period: {0}")]
    DateInvalid(String),
    /// A key is of an unsupported type or too weak (RSA below 2048 bits).
    #[error("certificate key is invalid: {0}")]
    KeyInvalid(String),
    /// A certificate's signature does not verify against its parent's key.
    #[error("certificate signature is invalid: {0}")]
    SignatureInvalid(String),
}

/// Why a connection (to a reverse proxy, or to a relay) could not be started. Each keeps what
/// it came from, as a `source` where there is one.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// quinn would not begin the dial (an unusable address, a closing endpoint).
    #[error("{to}: {source}")]
    Dial {
        /// What was dialled.
        to: String,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The QUIC handshake (or the connection right after it) failed.
    #[error("{to}: {source}")]
    Handshake {
        /// Who the handshake was with.
        to: String,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The handshake completed but the peer then refused this node (`allowedNodeIds`), or the
    /// hello exchange failed.
    #[error("{to} refused this node after the handshake (allowedNodeIds?): {why}")]
    NotAccepted {
        /// The peer.
        to: String,
        /// What the hello exchange saw.
        why: String,
    },
    /// The hello exchange after the handshake failed (the caller went away, or sent garbage).
    #[error("{0}")]
    Hello(String),
    /// An address nothing can be reached at (port 0, unspecified).
    #[error("cannot {action} {addr}")]
    Unroutable {
        /// `connect to`, `punch toward`.
        action: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// The address was closed (`closeConnection`) while its dial was in progress.
    #[error("{0} was closed while its connection was being opened")]
    ClosedWhileOpening(std::net::SocketAddr),
    /// The connection began to end (`closeConnection`, `stop()`, the peer's goaway) before
    /// the tunnel opened on it.
    #[error("cannot open tunnel: the connection is ending")]
    Ending,
    /// A tunnel stream could not be opened on a live connection.
    #[error("cannot open tunnel: {0}")]
    Tunnel(#[source] BoxError),
    /// The reverse proxy did not acknowledge a tunnel.
    #[error("reverse proxy did not acknowledge: {0}")]
    NoAck(#[source] BoxError),
    /// The reverse proxy could not reach its server.
    #[error("reverse proxy could not reach its server: {0}")]
    ServerUnreachable(String),
    /// The relay link, or a session on the relay, failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A dial task ended without an answer (it panicked or was cancelled).
    #[error("dial task ended: {0}")]
    Task(#[source] BoxError),
}

/// Why a relay link (or a relay session) failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The link is down.
    #[error("{relay}: {why}")]
    Down {
        /// The relay.
        relay: std::net::SocketAddr,
        /// The link's last failure.
        why: String,
    },
    /// The link did not register within the budget.
    #[error("{0}: not registered in time")]
    NotRegistered(std::net::SocketAddr),
    /// The app reported a network change: the link registers again.
    #[error("the network changed: registering again")]
    NetworkChanged,
    /// The relay refused the registration.
    #[error("relay refused registration ({code}): {message}")]
    Refused {
        /// The relay's status code.
        code: u16,
        /// The relay's message.
        message: String,
    },
    /// A newer registration of this node id replaced this one (the same identity runs
    /// elsewhere); the link does not retry until the network changes or it is restarted.
    #[error("relay {relay}: {message}; not reconnecting (the same identity runs elsewhere)")]
    Replaced {
        /// The relay.
        relay: std::net::SocketAddr,
        /// The relay's notice.
        message: String,
    },
    /// The relay answered a registration with something else.
    #[error("relay answered {0} to a registration")]
    UnexpectedAnswer(String),
    /// Nothing heard from the relay for twice the keepalive.
    #[error("relay silent for {0} ms")]
    Silent(u128),
    /// Bytes that are not a relay frame.
    #[error("malformed frame from {from}: {source}")]
    Malformed {
        /// `the relay`, or the node that sent them.
        from: String,
        /// What is wrong with them.
        #[source]
        source: crate::proto::relay::FrameError,
    },
    /// The relay stream ended or failed.
    #[error("{0}")]
    Closed(String),
    /// Neither transport reached the relay.
    #[error("relay {addr} not reachable: QUIC: {quic}; WebSocket: {websocket}")]
    Unreachable {
        /// The relay.
        addr: std::net::SocketAddr,
        /// Why QUIC failed.
        quic: Box<Error>,
        /// Why WebSocket failed.
        websocket: Box<Error>,
    },
    /// The TCP connection to the relay failed.
    #[error("relay {addr} (TCP): {source}")]
    Tcp {
        /// The relay's TCP address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The WebSocket upgrade failed (either side).
    #[error("{0}")]
    Upgrade(String),
    /// TLS failed on an accepted TCP connection.
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
}

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure an [`Error`] is: what a front end maps to its own names (JS error
/// classes, HTTP statuses, C error strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The forward proxy is not running.
    ForwardProxyNotRunning,
    /// The reverse proxy is not running.
    ReverseProxyNotRunning,
    /// The relay is not running.
    RelayNotRunning,
    /// A connection could not be started.
    ConnectionStart,
    /// The connect budget ran out.
    ConnectionStartTimeout,
    /// An established connection stopped answering.
    ConnectionTimeout,
    /// A certificate chain was refused.
    CertChain(CertChainKind),
    /// An argument out of its range.
    InvalidArgument,
    /// Unusable TLS material.
    InvalidTlsConfig,
    /// No address found for a node id (on the DHT, or on the relay).
    NodeNotFound,
    /// No replica of a service name answered.
    ServiceNotFound,
    /// Aborted by the caller.
    Aborted,
    /// An I/O error while binding or serving.
    Io,
}

/// Which rule a refused certificate chain broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertChainKind {
    /// No certificate.
    Empty,
    /// Does not claim the expected node id.
    Unclaimed,
    /// Unparsable, or a broken issuer link.
    Broken,
    /// Outside its validity period.
    DateInvalid,
    /// Unsupported or weak key.
    KeyInvalid,
    /// A signature does not verify.
    SignatureInvalid,
}

impl ErrorKind {
    /// The stable code every front end shows (JS picks its error class by it, the C
    /// ABI prefixes its messages with it).
    pub fn code(self) -> &'static str {
        match self {
            Self::ForwardProxyNotRunning => "ErrorForwardProxyNotRunning",
            Self::ReverseProxyNotRunning => "ErrorReverseProxyNotRunning",
            Self::RelayNotRunning => "ErrorRelayNotRunning",
            Self::ConnectionStart => "ErrorConnectionStart",
            Self::ConnectionStartTimeout => "ErrorConnectionStartTimeout",
            Self::ConnectionTimeout => "ErrorConnectionTimeout",
            Self::CertChain(k) => match k {
                CertChainKind::Empty => "ErrorCertChainEmpty",
                CertChainKind::Unclaimed => "ErrorCertChainUnclaimed",
                CertChainKind::Broken => "ErrorCertChainBroken",
                CertChainKind::DateInvalid => "ErrorCertChainDateInvalid",
                CertChainKind::KeyInvalid => "ErrorCertChainKeyInvalid",
                CertChainKind::SignatureInvalid => "ErrorCertChainSignatureInvalid",
            },
            Self::InvalidArgument => "ERR_INVALID_ARG_VALUE",
            Self::InvalidTlsConfig => "ErrorInvalidTlsConfig",
            Self::NodeNotFound => "ErrorNodeNotFound",
            Self::ServiceNotFound => "ErrorServiceNotFound",
            Self::Aborted => "ABORT_ERR",
            Self::Io => "ErrorNetwork",
        }
    }
}

impl CertChainError {
    /// Which rule the chain broke.
    pub fn kind(&self) -> CertChainKind {
        match self {
            Self::Empty => CertChainKind::Empty,
            Self::Unclaimed { .. } => CertChainKind::Unclaimed,
            Self::Broken(_) => CertChainKind::Broken,
            Self::DateInvalid(_) => CertChainKind::DateInvalid,
            Self::KeyInvalid(_) => CertChainKind::KeyInvalid,
            Self::SignatureInvalid(_) => CertChainKind::SignatureInvalid,
        }
    }
}

/// Every error keynet-core returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The forward proxy is not running (call `start` first).
    #[error("forward proxy is not running")]
    ForwardProxyNotRunning,
    /// The reverse proxy is not running (call `start` first).
    #[error("reverse proxy is not running")]
    ReverseProxyNotRunning,
    /// The relay is not running (call `start` first).
    #[error("relay is not running")]
    RelayNotRunning,
    /// A connection could not be established (unreachable, refused, handshake failure).
    #[error("connection could not be started: {0}")]
    ConnectionStart(#[from] StartError),
    /// The connect budget (`connConnectTime` or a per-call timeout) ran out.
    #[error("connection start timed out after {0} ms")]
    ConnectionStartTimeout(u64),
    /// An established connection stopped answering.
    #[error("connection timed out: {0}")]
    ConnectionTimeout(String),
    /// The peer's certificate chain was refused.
    #[error(transparent)]
    CertChain(#[from] CertChainError),
    /// An argument was out of its range (port, time).
    #[error("{0}")]
    InvalidArgument(String),
    /// TLS material (PEM) could not be used.
    #[error("invalid TLS config: {0}")]
    InvalidTlsConfig(String),
    /// Discovery found no address for the node id.
    #[error("node {0} was not found on the DHT")]
    NodeNotFound(String),
    /// No replica of a service name was found, or none answered.
    #[error("service {0}: {1}")]
    ServiceNotFound(String, String),
    /// Discovery found the node only at addresses of a family this proxy's socket cannot use.
    #[error("node {0} was found only at {1} addresses, which this proxy's socket cannot reach (bind it to '::' for both families)")]
    OtherFamily(String, &'static str),
    /// The relay says the node is not registered with it (or refused to carry to it).
    #[error("{0}")]
    NotOnRelay(String),
    /// The operation was aborted by the caller.
    #[error("operation aborted")]
    Aborted,
    /// An I/O error while binding or serving.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::ForwardProxyNotRunning => ErrorKind::ForwardProxyNotRunning,
            Self::ReverseProxyNotRunning => ErrorKind::ReverseProxyNotRunning,
            Self::RelayNotRunning => ErrorKind::RelayNotRunning,
            Self::ConnectionStart(_) => ErrorKind::ConnectionStart,
            Self::ConnectionStartTimeout(_) => ErrorKind::ConnectionStartTimeout,
            Self::ConnectionTimeout(_) => ErrorKind::ConnectionTimeout,
            Self::CertChain(e) => ErrorKind::CertChain(e.kind()),
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::InvalidTlsConfig(_) => ErrorKind::InvalidTlsConfig,
            Self::NodeNotFound(_) | Self::NotOnRelay(_) | Self::OtherFamily(..) => {
                ErrorKind::NodeNotFound
            }
            Self::ServiceNotFound(..) => ErrorKind::ServiceNotFound,
            Self::Aborted => ErrorKind::Aborted,
            Self::Io(_) => ErrorKind::Io,
        }
    }
}

impl Error {
    /// The stable code of this error's kind.
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }
}

impl From<RelayError> for Error {
    fn from(e: RelayError) -> Self {
        Self::ConnectionStart(StartError::Relay(e))
    }
}

/// Result alias of keynet-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_failed_start_keeps_its_source_and_its_message() {
        let e: Error = StartError::Dial {
            to: "192.0.2.1:9".into(),
            source: quinn::ConnectError::EndpointStopping,
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::ConnectionStart);
        assert_eq!(
            e.to_string(),
            "connection could not be started: 192.0.2.1:9: endpoint stopping"
        );
        let start = e.source().expect("the start error");
        let quinn = start.source().expect("quinn's error");
        assert!(quinn.downcast_ref::<quinn::ConnectError>().is_some());
        let relay: Error = RelayError::Malformed {
            from: "the relay".into(),
            source: crate::proto::relay::FrameError::UnknownType(0x42),
        }
        .into();
        assert_eq!(relay.kind(), ErrorKind::ConnectionStart);
        assert!(relay
            .source()
            .and_then(|s| s.source())
            .and_then(|s| s.downcast_ref::<crate::proto::relay::FrameError>())
            .is_some());
    }

    #[test]
    fn every_kind_has_its_documented_code() {
        let cases = [
            (Error::ForwardProxyNotRunning, "ErrorForwardProxyNotRunning"),
            (Error::ReverseProxyNotRunning, "ErrorReverseProxyNotRunning"),
            (Error::RelayNotRunning, "ErrorRelayNotRunning"),
            (
                StartError::ServerUnreachable("x".into()).into(),
                "ErrorConnectionStart",
            ),
            (
                Error::ConnectionStartTimeout(1),
                "ErrorConnectionStartTimeout",
            ),
            (
                Error::ConnectionTimeout("x".into()),
                "ErrorConnectionTimeout",
            ),
            (CertChainError::Empty.into(), "ErrorCertChainEmpty"),
            (
                CertChainError::Unclaimed {
                    expected: "v".into(),
                }
                .into(),
                "ErrorCertChainUnclaimed",
            ),
            (
                CertChainError::Broken("x".into()).into(),
                "ErrorCertChainBroken",
            ),
            (
                CertChainError::DateInvalid("x".into()).into(),
                "ErrorCertChainDateInvalid",
            ),
            (
                CertChainError::KeyInvalid("x".into()).into(),
                "ErrorCertChainKeyInvalid",
            ),
            (
                CertChainError::SignatureInvalid("x".into()).into(),
                "ErrorCertChainSignatureInvalid",
            ),
            (Error::InvalidArgument("x".into()), "ERR_INVALID_ARG_VALUE"),
            (Error::InvalidTlsConfig("x".into()), "ErrorInvalidTlsConfig"),
            (Error::NodeNotFound("x".into()), "ErrorNodeNotFound"),
            (Error::NotOnRelay("x".into()), "ErrorNodeNotFound"),
            (Error::OtherFamily("x".into(), "IPv6"), "ErrorNodeNotFound"),
            (
                Error::ServiceNotFound("echo".into(), "no replica found".into()),
                "ErrorServiceNotFound",
            ),
            (Error::Aborted, "ABORT_ERR"),
            (Error::Io(io::Error::other("x")), "ErrorNetwork"),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e:?}");
        }
    }
}
