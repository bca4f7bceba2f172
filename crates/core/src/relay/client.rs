//! A bare relay session, frames in and out, pinned to the relay's node id: what tests and the
//! load test use to play many nodes (or misbehaving ones) without a whole proxy each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, RelayError, Result, StartError};
use crate::identity::LoadedIdentity;
use crate::nodeid::NodeId;
use crate::options::ConnOptions;
use crate::proto::relay::Frame;
use crate::relay::framed::{write_frame, BoxWrite, FrameReader};
use crate::relay::link::transport::{self, Dialer};
use crate::relay::spec::RelaySpec;
use crate::task::Tasks;
use crate::tls::config::{client_config, SERVER_NAME};
use crate::tls::verify::{handshake_error, Acceptable, VerifyOutcome};

/// An open relay connection.
pub struct RelayClient {
    /// The QUIC connection (none over WebSocket).
    conn: Option<quinn::Connection>,
    send: tokio::sync::Mutex<BoxWrite>,
    frames: tokio::sync::Mutex<FrameReader>,
    /// The WebSocket pump, ended with the client.
    tasks: Tasks,
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.tasks.token().cancel();
    }
}

impl RelayClient {
    /// Connects from `endpoint` to the relay at `relay`, which must prove `relay_id`, speaking
    /// `keynet-relay/2` (no UDP channel: relayed packets are frames on the stream).
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        identity: &LoadedIdentity,
        relay: SocketAddr,
        relay_id: NodeId,
        transport: Arc<quinn::TransportConfig>,
        timeout: Duration,
    ) -> Result<Self> {
        let alpns = &[crate::tls::config::RELAY_ALPN];
        Self::connect_alpns(
            endpoint, identity, relay, relay_id, transport, timeout, alpns,
        )
        .await
    }

    /// As [`RelayClient::connect`], offering `keynet-relay/3`: the relay gives the session a UDP
    /// channel key (`Frame::Channel`) after `Registered`. Once a valid channel datagram from
    /// this client's socket reached the relay, packets for it go to that socket as channel
    /// datagrams, no longer to [`RelayClient::recv`].
    pub async fn connect_with_channel(
        endpoint: &quinn::Endpoint,
        identity: &LoadedIdentity,
        relay: SocketAddr,
        relay_id: NodeId,
        transport: Arc<quinn::TransportConfig>,
        timeout: Duration,
    ) -> Result<Self> {
        let alpns = crate::tls::config::RELAY_ALPNS;
        Self::connect_alpns(
            endpoint, identity, relay, relay_id, transport, timeout, alpns,
        )
        .await
    }

    async fn connect_alpns(
        endpoint: &quinn::Endpoint,
        identity: &LoadedIdentity,
        relay: SocketAddr,
        relay_id: NodeId,
        transport: Arc<quinn::TransportConfig>,
        timeout: Duration,
        alpns: &[&[u8]],
    ) -> Result<Self> {
        let outcome = VerifyOutcome::default();
        let config = client_config(
            identity,
            Acceptable::OneOf(vec![relay_id]),
            outcome.clone(),
            transport,
            alpns,
        )?;
        let connecting = endpoint
            .connect_with(config, relay, SERVER_NAME)
            .map_err(|source| StartError::Dial {
                to: relay.to_string(),
                source,
            })?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(Error::ConnectionStartTimeout(timeout.as_millis() as u64)),
            Ok(Err(source)) => {
                let to = relay.to_string();
                return Err(handshake_error(
                    &outcome,
                    StartError::Handshake { to, source },
                ));
            }
            Ok(Ok(conn)) => conn,
        };
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|source| StartError::Handshake {
                to: relay.to_string(),
                source,
            })?;
        Ok(Self {
            conn: Some(conn),
            send: tokio::sync::Mutex::new(Box::new(send)),
            frames: tokio::sync::Mutex::new(FrameReader::new(Box::new(recv))),
            tasks: Tasks::new(),
        })
    }

    /// Connects as `identity` to the relay `spec` names, over its transport (QUIC from
    /// `endpoint`, or TLS + WebSocket to `spec.tcp_addr`), speaking `keynet-relay/2`: packets
    /// for this client come as frames.
    pub async fn connect_spec(
        endpoint: &quinn::Endpoint,
        identity: &LoadedIdentity,
        spec: &RelaySpec,
        opts: &ConnOptions,
        timeout: Duration,
    ) -> Result<Self> {
        let tasks = Tasks::new();
        let dialer = Dialer {
            endpoint: endpoint.clone(),
            identity: identity.clone(),
            opts: opts.clone(),
            tasks: tasks.clone(),
            channel: false,
        };
        let c = transport::connect(spec, &dialer, timeout).await?;
        Ok(Self {
            conn: c.quic,
            send: tokio::sync::Mutex::new(c.write),
            frames: tokio::sync::Mutex::new(FrameReader::new(c.read)),
            tasks,
        })
    }

    /// Sends a frame.
    pub async fn send(&self, frame: &Frame) -> Result<()> {
        let mut send = self.send.lock().await;
        write_frame(&mut send, frame)
            .await
            .map_err(|why| RelayError::Closed(why).into())
    }

    /// Sends raw bytes (tests use it to send malformed frames).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.send
            .lock()
            .await
            .write_all(bytes)
            .await
            .map_err(|e| RelayError::Closed(e.to_string()).into())
    }

    /// The next frame from the relay; `None` when the relay ended the stream.
    pub async fn recv(&self) -> Result<Option<Frame>> {
        match self.frames.lock().await.next().await {
            Ok(f) => Ok(f),
            Err(e) => Err(e.relay_error("the relay").into()),
        }
    }

    /// The QUIC connection (close reason, stats); none over WebSocket.
    pub fn connection(&self) -> Option<&quinn::Connection> {
        self.conn.as_ref()
    }
}
