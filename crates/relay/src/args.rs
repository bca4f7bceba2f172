//! Command-line flags of `keynet-relay`.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use keynet_core::relay::server::limits::{Limits, TABLE};
use keynet_core::NodeId;

pub use crate::identity::IdentitySource;

/// `--help` text: every flag, the limits from keynet-core's table.
pub fn help() -> String {
    format!(
        "{HEAD}\nLIMITS (the relay's bounds; each flag takes a number):\n{}{TAIL}",
        Limits::help()
    )
}

const HEAD: &str = "\
keynet-relay: a keynet relay hub and/or a DHT node for a private discovery network

USAGE:
    keynet-relay [--listen HOST:PORT] [--dht HOST:PORT] [flags]

RELAY:
    --listen HOST:PORT       UDP address of the relay's QUIC endpoint (port 0: any free port)
    --key FILE --cert FILE   identity as PEM files (private key; certificate chain, leaf first)
    --identity-dir DIR       load the identity from DIR/key.pem and DIR/cert.pem, generating and
                             saving a fresh one there on first use
                             (neither: a fresh identity per run)
    --tcp-listen HOST:PORT   TCP address of the TLS/WebSocket listener, for nodes whose UDP is
                             blocked (default: the --listen address, over TCP)
    --allow NODEID           only this node id may register (repeatable; default: any node)
    --token TOKEN            registration requires this token (default: none); nodes that
                             register only to call nodes registered here need none
    --no-callers             refuse those caller registrations too: only token holders are
                             served
    --metrics HOST:PORT      serve GET /metrics (Prometheus text: sessions, registered nodes,
                             relayed packets and bytes, drops and refusals by reason, ports)
    --control PATH           answer `keynet status --control PATH` there: a Unix socket (mode
                             0600 in a 0700 directory: the same user only), on Windows a named
                             pipe \\\\.\\pipe\\NAME (its owner only); default: none

PUBLIC PORTS (a registered node may ask for a TCP port carried to its server):
    --public-host IP         IP to bind public ports on (default: the --listen IP)
    --port-range FIRST-LAST  allocate public ports from this range (default: any free port)
    --retention MINUTES      keep a disconnected node's port this long (default 180)
    --state-file FILE        save allocations there and restore them at start (written after
                             each change, atomically; a corrupt file stops the start)
    --no-public-ports        refuse public port requests

DISCOVERY (BitTorrent mainline DHT):
    --dht HOST:PORT          run a DHT node at this IPv4 UDP address (port 0: any free port);
                             it answers queries from the start, as a bootstrap node; with
                             --listen it also stores, under each node's locator, the signed
                             records registered nodes announce through the relay (so a node
                             whose UDP is blocked is still found by its node id)
    --dht-bootstrap HOST:PORT
                             join the DHT through this node (repeatable); without it the node
                             is the first of a private network
    --dht-public             join the public mainline DHT through its usual bootstrap nodes
    --publish NETWORK        publish this relay on the DHT under the network name NETWORK (needs
                             --listen and --dht on the same IP), every 10 min: proxies started
                             with discovery.relayNetwork NETWORK and no relay find it there
";

const TAIL: &str = "
OTHER:
    --log-format text|json   log lines as text (default) or one JSON object per line
    -h, --help               print this help

Each service prints one line on stdout when it listens ('relay listening on ADDR tcp ADDR node id ID',
'dht listening on ADDR'). Logs go to stderr; RUST_LOG sets the level (default info).
SIGINT or SIGTERM stops the relay cleanly.
";

/// What to do.
#[derive(Debug)]
pub enum Command {
    /// Print [`HELP`].
    Help,
    /// Run with these arguments.
    Run(Box<Args>),
}

/// Parsed flags.
#[derive(Debug, Default)]
pub struct Args {
    pub listen: Option<SocketAddr>,
    pub identity: IdentitySource,
    pub allowed: Option<Vec<NodeId>>,
    pub dht: Option<SocketAddrV4>,
    pub dht_bootstrap: Vec<String>,
    pub dht_public: bool,
    pub publish: Option<String>,
    pub tcp_listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub limits: Limits,
    pub metrics: Option<SocketAddr>,
    pub public_host: Option<std::net::IpAddr>,
    pub port_range: Option<(u16, u16)>,
    pub retention: Option<std::time::Duration>,
    pub state_file: Option<PathBuf>,
    pub no_public_ports: bool,
    pub no_callers: bool,
    /// The control socket `keynet status` asks (none unless given: tests and hosts run several
    /// relays as one user).
    pub control: Option<PathBuf>,
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name} {v:?}: not a valid number"))
}

fn seconds(name: &str, v: &str) -> Result<std::time::Duration, String> {
    let s: f64 = number(name, v)?;
    if !(s > 0.0 && s.is_finite()) {
        return Err(format!("{name} must be greater than 0"));
    }
    Ok(std::time::Duration::from_secs_f64(s))
}

/// Parses the flags (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut a = Args::default();
    let (mut key, mut cert, mut dir) = (None, None, None);
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => {
                let v = value("--listen")?;
                a.listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen {v:?}: not HOST:PORT"))?,
                );
            }
            "--key" => key = Some(PathBuf::from(value("--key")?)),
            "--cert" => cert = Some(PathBuf::from(value("--cert")?)),
            "--identity-dir" => dir = Some(PathBuf::from(value("--identity-dir")?)),
            "--allow" => {
                let v = value("--allow")?;
                let id: NodeId = v.parse().map_err(|e| format!("--allow: {e}"))?;
                a.allowed.get_or_insert_with(Vec::new).push(id);
            }
            "--dht" => {
                let v = value("--dht")?;
                a.dht = Some(
                    v.parse()
                        .map_err(|_| format!("--dht {v:?}: not an IPv4 HOST:PORT"))?,
                );
            }
            "--dht-bootstrap" => a.dht_bootstrap.push(value("--dht-bootstrap")?),
            "--dht-public" => a.dht_public = true,
            "--publish" => {
                let v = value("--publish")?;
                if v.is_empty() || v.len() > 64 {
                    return Err(format!("--publish {v:?}: a network name of 1 to 64 bytes"));
                }
                a.publish = Some(v);
            }
            "--tcp-listen" => {
                let v = value("--tcp-listen")?;
                a.tcp_listen = Some(
                    v.parse()
                        .map_err(|_| format!("--tcp-listen {v:?}: not HOST:PORT"))?,
                );
            }
            "--token" => a.token = Some(value("--token")?),
            "--no-callers" => a.no_callers = true,
            "--control" => a.control = Some(PathBuf::from(value("--control")?)),
            "--metrics" => {
                let v = value("--metrics")?;
                a.metrics = Some(
                    v.parse()
                        .map_err(|_| format!("--metrics {v:?}: not HOST:PORT"))?,
                );
            }
            limit
                if limit
                    .strip_prefix("--")
                    .is_some_and(|f| TABLE.iter().any(|l| l.flag == f)) =>
            {
                let v: f64 = number(limit, &value(limit)?)?;
                a.limits
                    .set(&limit[2..], v)
                    .map_err(|e| format!("{limit}: {e}"))?;
            }
            "--public-host" => {
                let v = value("--public-host")?;
                a.public_host = Some(
                    v.parse()
                        .map_err(|_| format!("--public-host {v:?}: not an IP"))?,
                );
            }
            "--port-range" => {
                let v = value("--port-range")?;
                let (lo, hi) = v
                    .split_once('-')
                    .ok_or_else(|| format!("--port-range {v:?}: not FIRST-LAST"))?;
                let (lo, hi): (u16, u16) =
                    (number("--port-range", lo)?, number("--port-range", hi)?);
                if lo == 0 || lo > hi {
                    return Err(format!("--port-range {v:?}: empty or starting at 0"));
                }
                a.port_range = Some((lo, hi));
            }
            "--retention" => {
                let m = seconds("--retention", &value("--retention")?)?;
                a.retention = Some(m * 60);
            }
            "--state-file" => a.state_file = Some(PathBuf::from(value("--state-file")?)),
            "--no-public-ports" => a.no_public_ports = true,
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    a.identity = match (key, cert, dir) {
        (None, None, None) => IdentitySource::Fresh,
        (Some(key), Some(cert), None) => IdentitySource::Files { key, cert },
        (None, None, Some(d)) => IdentitySource::Dir(d),
        (Some(_), None, None) | (None, Some(_), None) => {
            return Err("--key and --cert go together".into())
        }
        _ => return Err("use either --key/--cert or --identity-dir".into()),
    };
    if a.dht_public && !a.dht_bootstrap.is_empty() {
        return Err("--dht-public and --dht-bootstrap exclude each other".into());
    }
    if a.dht.is_none() && (a.dht_public || !a.dht_bootstrap.is_empty()) {
        return Err("--dht-bootstrap/--dht-public need --dht".into());
    }
    if a.publish.is_some() && (a.dht.is_none() || a.listen.is_none()) {
        return Err("--publish needs --listen and --dht".into());
    }
    if a.listen.is_none() && a.dht.is_none() {
        return Err("nothing to run: give --listen and/or --dht".into());
    }
    if a.control.is_some() && a.listen.is_none() {
        return Err("--control needs --listen: a DHT node alone has no status".into());
    }
    Ok(Command::Run(Box::new(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(a) => Ok(*a),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn flags_parse() {
        let a = run(&["--dht", "127.0.0.1:0", "--dht-bootstrap", "127.0.0.1:7000"]).unwrap();
        assert_eq!(a.dht, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(a.dht_bootstrap, vec!["127.0.0.1:7000".to_string()]);
        assert!(a.listen.is_none());
        let a = run(&["--listen", "[::1]:4433"]).unwrap();
        assert_eq!(a.listen, Some("[::1]:4433".parse().unwrap()));
        let a = run(&[
            "--listen",
            "0.0.0.0:7000",
            "--tcp-listen",
            "0.0.0.0:443",
            "--token",
            "t",
            "--port-range",
            "40000-40099",
            "--retention",
            "1.5",
            "--max-peers",
            "8",
            "--state-file",
            "/var/lib/keynet/alloc",
            "--node-timeout",
            "30",
            "--register-timeout",
            "5",
            "--metrics",
            "127.0.0.1:9100",
        ])
        .unwrap();
        assert_eq!(a.tcp_listen, Some("0.0.0.0:443".parse().unwrap()));
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(a.port_range, Some((40000, 40099)));
        assert_eq!(a.retention, Some(std::time::Duration::from_secs(90)));
        assert_eq!(a.limits.max_peers, 8);
        assert_eq!(a.limits.node_timeout, std::time::Duration::from_secs(30));
        assert_eq!(a.limits.register_timeout, std::time::Duration::from_secs(5));
        assert!(a.state_file.is_some() && !a.no_public_ports);
        assert_eq!(a.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn every_limit_has_a_flag_in_the_help() {
        let help = help();
        for l in TABLE {
            assert!(help.contains(&format!("--{} ", l.flag)), "{}", l.flag);
            let a = run(&["--listen", "1.2.3.4:1", &format!("--{}", l.flag), "7"]).unwrap();
            assert_eq!(a.limits.get(l.key), Some(7.0), "{}", l.flag);
        }
    }

    #[test]
    fn control_needs_a_relay() {
        let a = run(&["--listen", "1.2.3.4:1", "--control", "/tmp/r.sock"]).unwrap();
        assert_eq!(
            a.control.as_deref(),
            Some(std::path::Path::new("/tmp/r.sock"))
        );
        assert!(run(&["--dht", "1.2.3.4:1", "--control", "/tmp/r.sock"])
            .unwrap_err()
            .contains("--control needs --listen"));
    }

    #[test]
    fn publish_needs_a_relay_and_a_dht_node() {
        let a = run(&[
            "--listen",
            "1.2.3.4:1",
            "--dht",
            "1.2.3.4:6881",
            "--publish",
            "lab",
        ])
        .unwrap();
        assert_eq!(a.publish.as_deref(), Some("lab"));
        assert!(run(&["--listen", "1.2.3.4:1", "--publish", "lab"])
            .unwrap_err()
            .contains("--publish needs --listen and --dht"));
        assert!(run(&["--dht", "1.2.3.4:1", "--publish", "lab"])
            .unwrap_err()
            .contains("--publish needs"));
        let long = "x".repeat(65);
        assert!(run(&[
            "--listen",
            "1.2.3.4:1",
            "--dht",
            "1.2.3.4:2",
            "--publish",
            &long
        ])
        .unwrap_err()
        .contains("1 to 64 bytes"));
        assert!(help().contains("--publish NETWORK"));
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(run(&[]).unwrap_err().contains("nothing to run"));
        assert!(run(&["--dht"]).unwrap_err().contains("--dht needs a value"));
        assert!(run(&["--dht", "[::1]:1"]).unwrap_err().contains("IPv4"));
        assert!(run(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(run(&["--listen", "1.2.3.4:1", "--key", "k"])
            .unwrap_err()
            .contains("--key and --cert"));
        assert!(run(&["--listen", "1.2.3.4:1", "--allow", "x"])
            .unwrap_err()
            .contains("--allow"));
        assert!(run(&["--dht-public"]).unwrap_err().contains("need --dht"));
        let l = |more: &[&str]| {
            let mut v = vec!["--listen", "1.2.3.4:1"];
            v.extend_from_slice(more);
            run(&v).unwrap_err()
        };
        assert!(l(&["--port-range", "9-3"]).contains("--port-range"));
        assert!(l(&["--port-range", "0-3"]).contains("--port-range"));
        assert!(l(&["--retention", "-1"]).contains("--retention"));
        assert!(l(&["--max-peers", "many"]).contains("--max-peers"));
        assert!(l(&["--max-peers", "0"]).contains("--max-peers"));
        assert!(l(&["--stall-timeout", "0"]).contains("--stall-timeout"));
        assert!(matches!(parse(["--help".to_string()]), Ok(Command::Help)));
    }
}
