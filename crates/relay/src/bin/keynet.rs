//! `keynet`: a reverse proxy, a forward proxy, a relay or a DHT node from the command line, for
//! servers and clients in any language. A thin layer over keynet-core (see the crate docs).

use std::process::ExitCode;

use keynet_relay::config::{self, Side};
use keynet_relay::{args, identity, logging, proxies, relay};

const HELP: &str = "\
keynet: reach a server behind a NAT or firewall by its node id

USAGE:
    keynet reverse --server HOST:PORT [flags]   carry arriving tunnels to a local server
    keynet forward [flags]                      an HTTP CONNECT proxy for gRPC clients (grpc_proxy)
    keynet relay [flags]                        a relay hub (keynet-relay's flags)
    keynet dht HOST:PORT [--dht-bootstrap HOST:PORT ...]   a DHT node for a private network
    keynet id new|show --dir DIR                an identity on disk (key.pem mode 0600, cert.pem)
    keynet status [--control PATH] [--json]     what a running reverse/forward holds: connections,
                                                paths, RTT, relays, counters (a relay started
                                                with --control PATH: registered nodes, counters)

`keynet COMMAND --help` lists a command's flags. Logs go to stderr (RUST_LOG, default info;
--log-format json: one JSON object per line).
Exit codes: 0 stopped cleanly, 1 could not start, 2 bad flags or config.
";

fn usage(e: String, command: &str) -> ExitCode {
    eprintln!("keynet {command}: {e}");
    ExitCode::from(2)
}

fn failed(e: keynet_core::Error, command: &str) -> ExitCode {
    eprintln!("keynet {command}: [{}] {e}", e.code());
    ExitCode::FAILURE
}

/// `keynet status`: asks the control endpoint given, or the default ones that answer.
async fn status(args: Vec<String>) -> ExitCode {
    let (mut paths, mut json) = (Vec::new(), false);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--control" => match it.next() {
                Some(p) => paths.push(std::path::PathBuf::from(p)),
                None => return usage("--control needs a value".into(), "status"),
            },
            "-h" | "--help" => {
                println!("keynet status [--control PATH] [--json]: the status of a running keynet reverse/forward (default sockets), or of a relay started with --control PATH");
                return ExitCode::SUCCESS;
            }
            other => return usage(format!("unknown flag {other:?}"), "status"),
        }
    }
    let mut all = Vec::new();
    if paths.is_empty() {
        // The default endpoints: whichever of them answers (a Windows pipe has no file to look for).
        for side in ["reverse", "forward"] {
            if let Ok(s) =
                keynet_relay::control::query(&keynet_relay::control::default_path(side)).await
            {
                all.push(s);
            }
        }
        if all.is_empty() {
            eprintln!(
                "keynet status: no keynet reverse or forward answers here (or give --control PATH)"
            );
            return ExitCode::FAILURE;
        }
    }
    for p in &paths {
        match keynet_relay::control::query(p).await {
            Ok(s) => all.push(s),
            Err(e) => {
                eprintln!("keynet status: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if json {
        let out = if all.len() == 1 {
            all.remove(0)
        } else {
            serde_json::Value::Array(all)
        };
        println!("{out}");
    } else {
        for s in &all {
            print!("{}", keynet_relay::control::table(s));
        }
    }
    ExitCode::SUCCESS
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let log_format = match logging::take_format(&mut argv) {
        Ok(f) => f,
        Err(e) => return usage(e, ""),
    };
    let mut argv = argv.into_iter();
    let command = argv.next().unwrap_or_default();
    let rest: Vec<String> = argv.collect();
    match command.as_str() {
        "reverse" | "forward" => {
            let side = if command == "reverse" {
                Side::Reverse
            } else {
                Side::Forward
            };
            let flags = match config::parse_flags(side, rest) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    print!("{}", config::help(side));
                    return ExitCode::SUCCESS;
                }
                Err(e) => return usage(e, &command),
            };
            let env_token = std::env::var(proxies::TOKEN_ENV).ok();
            let reload = {
                let (flags, env_token) = (flags.clone(), env_token.clone());
                move || proxies::settings(side, flags.clone(), env_token.clone())
            };
            let settings = match proxies::settings(side, flags, env_token) {
                Ok(s) => s,
                Err(e) => return usage(e, &command),
            };
            logging::init_as(log_format);
            let r = match side {
                Side::Reverse => proxies::run_reverse(settings, reload).await,
                Side::Forward => proxies::run_forward(settings).await,
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(proxies::RunError::Usage(e)) => usage(e, &command),
                Err(proxies::RunError::Start(e)) => failed(e, &command),
            }
        }
        "status" => status(rest).await,
        "relay" | "dht" => {
            let argv =
                if command == "dht" {
                    match rest.split_first() {
                        Some((addr, more)) if !addr.starts_with('-') => {
                            let mut a = vec!["--dht".to_string(), addr.clone()];
                            a.extend(more.iter().cloned());
                            a
                        }
                        _ if rest.iter().any(|a| a == "-h" || a == "--help") => rest,
                        _ => return usage(
                            "needs the DHT node's HOST:PORT first (e.g. keynet dht 0.0.0.0:6881)"
                                .into(),
                            &command,
                        ),
                    }
                } else {
                    rest
                };
            let a = match args::parse(argv) {
                Ok(args::Command::Help) => {
                    print!("{}", args::help());
                    return ExitCode::SUCCESS;
                }
                Ok(args::Command::Run(a)) => *a,
                Err(e) => return usage(e, &command),
            };
            logging::init_as(log_format);
            match relay::run(a).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(e, &command),
            }
        }
        "id" => {
            let (sub, dir) = match rest.as_slice() {
                [sub, flag, dir] if flag == "--dir" => {
                    (sub.as_str(), std::path::PathBuf::from(dir))
                }
                _ => return usage("usage: keynet id new|show --dir DIR".into(), &command),
            };
            let r = match sub {
                "new" => identity::create(&dir),
                "show" => identity::show(&dir),
                _ => {
                    return usage(
                        format!("unknown {sub:?}: keynet id new|show --dir DIR"),
                        &command,
                    )
                }
            };
            match r {
                Ok(id) => {
                    println!("{id}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keynet id {sub}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "" | "-h" | "--help" | "help" => {
            print!("{HELP}");
            if command.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        other => {
            eprintln!("keynet: unknown command {other:?}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}
