//! keynet-core: carry TCP (gRPC above all) between keynodes over QUIC with pinned node
//! identities. A [`ForwardProxy`] takes HTTP CONNECT from local clients; a [`ReverseProxy`]
//! carries tunnels to its local server. No napi here: the Node binding is a thin layer on top.

#![warn(missing_docs)]

pub mod addr;
pub(crate) mod close_gate;
pub mod discovery;
pub(crate) mod ending;
pub mod error;
pub mod events;
pub mod forward_proxy;
pub(crate) mod holepunch;
pub mod identity;
pub(crate) mod lifecycle;
pub mod logging;
pub(crate) mod netwatch;
pub(crate) mod node;
pub mod nodeid;
pub mod options;
pub mod proto;
pub mod relay;
pub mod reverse_proxy;
pub(crate) mod server_connect;
pub mod socket;
pub(crate) mod splice;
pub(crate) mod stream_credit;
pub(crate) mod task;
pub(crate) mod tls;
pub(crate) mod tracker;

pub use discovery::{DiscoveryOptions, Found};
pub use error::{CertChainError, CertChainKind, Error, ErrorKind, RelayError, Result, StartError};
pub use events::{
    CloseReason, ConnectionInfo, Event, EventKind, EventSink, Path, PathReason, Reason, RelayEvent,
};
pub use forward_proxy::{ForwardProxy, ForwardStart};
pub use identity::{
    generate_identity, node_id_from_certificate_pem, rotate_identity, Identity, TlsConfig,
};
pub use node::stats::ProxyStats;
pub use nodeid::NodeId;
pub use options::ConnOptions;
pub use reverse_proxy::{ReverseProxy, ReverseStart};
pub use tokio_util::sync::CancellationToken;
