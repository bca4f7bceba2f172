//! `keynet-relay`: runs a keynet relay hub and/or a DHT node for a private discovery network.
//! All logic lives in keynet-core; this file parses flags, starts, and stops on SIGINT/SIGTERM.

mod args;

use std::process::ExitCode;

use keynet_core::discovery::Discovery;
use keynet_core::relay::server::{RelayServer, RelayStart};
use keynet_core::{ConnOptions, DiscoveryOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(args::Command::Help) => {
            print!("{}", args::help());
            return ExitCode::SUCCESS;
        }
        Ok(args::Command::Run(a)) => *a,
        Err(e) => {
            eprintln!("keynet-relay: {e}\n\nRun `keynet-relay --help` for the flags.");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keynet-relay: [{}] {e}", e.code());
            ExitCode::FAILURE
        }
    }
}

/// How often a relay started with `--publish` publishes itself again.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

async fn run(a: args::Args) -> keynet_core::Result<()> {
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
    shutdown_signal().await;
    tracing::info!("shutting down");
    drop(publishing);
    if let Some(relay) = relay {
        relay.stop().await?;
    }
    drop(storing);
    drop(dht);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
