//! `keynet relay` / `keynet dht` (and the `keynet-relay` binary): a relay hub and/or a DHT node
//! for a private discovery network, from today's flags (see [`crate::args`]).

use keynet_core::discovery::Discovery;
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::{ConnOptions, DiscoveryOptions};

use crate::args;
use crate::control::Control;
use crate::signal::shutdown_signal;

/// How often a relay started with `--publish` publishes itself again.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs until SIGINT or SIGTERM, then stops cleanly.
pub async fn run(a: args::Args) -> keynet_core::Result<()> {
    let mut publishing = None;
    // The DHT node first: the relay stores the records its nodes announce through it.
    let dht = match a.dht {
        Some(bind) => {
            let opts = DiscoveryOptions {
                bootstrap: if a.dht_public {
                    None
                } else {
                    Some(a.dht_bootstrap)
                },
                announce: false,
                bind: Some(bind),
                server_mode: true,
                ..Default::default()
            };
            let dht = Discovery::start(&opts, bind.ip().to_owned().into()).await?;
            println!("dht listening on {}", dht.local_addr());
            Some(dht)
        }
        None => None,
    };
    let mut storing = None;
    let relay = match a.listen {
        Some(addr) => {
            let tls = a.identity.load()?;
            let relay = RelayServer::new(ConnOptions::default())?;
            let mut start = RelayStart::new(addr);
            start.tcp_addr = a.tcp_listen;
            start.tls = tls;
            start.allowed_node_ids = a.allowed;
            start.token = a.token;
            start.callers = !a.no_callers;
            start.limits = a.limits;
            start.metrics = a.metrics;
            start.alloc.enabled = !a.no_public_ports;
            start.alloc.host = a.public_host;
            start.alloc.range = a.port_range;
            if let Some(r) = a.retention {
                start.alloc.retention = r;
            }
            start.alloc.state_file = a.state_file;
            if let Some(dht) = &dht {
                let (queue, store) = dht.store_records();
                start.records = Some(queue);
                storing = Some(store);
            }
            relay.start(start).await?;
            // One line per service on stdout, for scripts and tests to read.
            println!(
                "relay listening on {} tcp {} node id {}",
                relay.addr()?,
                relay.tcp_addr()?,
                relay.node_id()?
            );
            if let Some(m) = relay.metrics_addr()? {
                println!("metrics listening on {m}");
            }
            Some(relay)
        }
        None => None,
    };
    if let (Some(dht), Some(network), Some(relay)) = (&dht, &a.publish, &relay) {
        let port = relay.addr()?.port();
        publishing = Some(dht.publish_relay(network.clone(), port, PUBLISH_EVERY));
        println!("relay published on the dht as network {network:?}");
    }
    // The control socket answers `keynet status` (args checked that --control comes with --listen).
    let status = match (&a.control, &relay) {
        (Some(path), Some(relay)) => Some((
            Control::bind(path)
                .await
                .map_err(keynet_core::Error::InvalidArgument)?,
            relay,
        )),
        _ => None,
    };
    match &status {
        Some((control, relay)) => {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = control.serve(|| crate::control::relay_status(relay)) => {}
            }
        }
        None => shutdown_signal().await,
    }
    drop(status);
    tracing::info!("shutting down");
    drop(publishing);
    if let Some(relay) = relay {
        relay.stop().await?;
    }
    drop(storing);
    drop(dht);
    Ok(())
}
