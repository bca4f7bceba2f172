//! Errors of keynet-core. Each variant maps to one stable JS error code (see [`Error::code`]).

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

impl CertChainError {
    /// The stable error code of this variant.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "ErrorCertChainEmpty",
            Self::Unclaimed { .. } => "ErrorCertChainUnclaimed",
            Self::Broken(_) => "ErrorCertChainBroken",
            Self::DateInvalid(_) => "ErrorCertChainDateInvalid",
            Self::KeyInvalid(_) => "ErrorCertChainKeyInvalid",
            Self::SignatureInvalid(_) => "ErrorCertChainSignatureInvalid",
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
    ConnectionStart(String),
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
    /// The stable error code the JS layer turns into an `errors` class.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ForwardProxyNotRunning => "ErrorForwardProxyNotRunning",
            Self::ReverseProxyNotRunning => "ErrorReverseProxyNotRunning",
            Self::RelayNotRunning => "ErrorRelayNotRunning",
            Self::ConnectionStart(_) => "ErrorConnectionStart",
            Self::ConnectionStartTimeout(_) => "ErrorConnectionStartTimeout",
            Self::ConnectionTimeout(_) => "ErrorConnectionTimeout",
            Self::CertChain(e) => e.code(),
            Self::InvalidArgument(_) => "ERR_INVALID_ARG_VALUE",
            Self::InvalidTlsConfig(_) => "ErrorInvalidTlsConfig",
            Self::NodeNotFound(_) | Self::NotOnRelay(_) => "ErrorNodeNotFound",
            Self::Aborted => "ABORT_ERR",
            Self::Io(_) => "ErrorNetwork",
        }
    }

    /// The HTTP status a CONNECT client gets for this failure (API.md status table).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::ConnectionStartTimeout(_) => 504,
            Self::CertChain(_) => 526,
            Self::ForwardProxyNotRunning | Self::ReverseProxyNotRunning | Self::RelayNotRunning => {
                503
            }
            _ => 502,
        }
    }
}

/// Result alias of keynet-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
