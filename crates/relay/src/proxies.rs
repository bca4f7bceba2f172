//! `keynet reverse` and `keynet forward`: a proxy from its flags and config file, run until
//! SIGINT or SIGTERM, then stopped gracefully (open tunnels drain for up to `grace`). The same
//! core proxies the JS classes are; nothing here that they lack.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keynet_core::relay::spec::RelaySpec;
use keynet_core::{
    ConnOptions, DiscoveryOptions, ForwardProxy, ForwardStart, NodeId, ReverseProxy, ReverseStart,
    TlsConfig,
};

use crate::config::{self, Raw, Side, Value};
use crate::control::{self, connection_json, relay_json, stats_json, Control};
use crate::identity::IdentitySource;
use crate::signal::shutdown_signal;

/// Where the forward proxy's token may come from besides `token-file`.
pub const TOKEN_ENV: &str = "KEYNET_TOKEN";

/// A proxy's settings, checked.
#[derive(Debug)]
pub struct Settings {
    pub server: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    pub egress: Option<SocketAddr>,
    pub relays: Vec<RelaySpec>,
    pub discovery: bool,
    pub bootstrap: Vec<String>,
    pub allow: Vec<NodeId>,
    pub identity_dir: Option<PathBuf>,
    pub token: Option<String>,
    pub grace: Option<Duration>,
    /// The control socket (`keynet status`).
    pub control: PathBuf,
}

fn addr(v: &Value) -> Result<SocketAddr, String> {
    v.text
        .parse()
        .map_err(|_| format!("{}: {:?} is not an IP HOST:PORT", v.origin, v.text))
}

/// Checks what flags and the config file (flags winning) say about `side`; `env_token` is
/// `KEYNET_TOKEN`'s value.
pub fn settings(side: Side, flags: Raw, env_token: Option<String>) -> Result<Settings, String> {
    let file = match &flags.config {
        Some(path) => config::load(path, side)?,
        None => Raw::default(),
    };
    let (token_arg, insecure) = (flags.token_arg.clone(), flags.insecure_token_arg);
    let raw = flags.over(file);
    let one = |k: &str| raw.one.get(k);
    let many = |k: &str| raw.many.get(k).map(Vec::as_slice).unwrap_or_default();
    let grace = match one("grace") {
        Some(v) => {
            let s: f64 = v
                .text
                .parse()
                .map_err(|_| format!("{}: {:?} is not a number of seconds", v.origin, v.text))?;
            if !(s > 0.0 && s.is_finite()) {
                return Err(format!("{}: must be more than 0 seconds", v.origin));
            }
            Some(Duration::from_secs_f64(s))
        }
        None => None,
    };
    let token = if side == Side::Forward {
        Some(token(one("token-file"), token_arg, insecure, env_token)?)
    } else {
        None
    };
    let s = Settings {
        server: one("server").map(addr).transpose()?,
        listen: one("listen").map(addr).transpose()?,
        egress: one("egress").map(addr).transpose()?,
        relays: many("relays")
            .iter()
            .map(|v| v.text.parse().map_err(|e| format!("{}: {e}", v.origin)))
            .collect::<Result<_, String>>()?,
        discovery: raw.discovery.unwrap_or(false),
        bootstrap: many("bootstrap")
            .iter()
            .map(|v| addr(v).map(|_| v.text.clone()))
            .collect::<Result<_, String>>()?,
        allow: many("allow")
            .iter()
            .map(|v| v.text.parse().map_err(|e| format!("{}: {e}", v.origin)))
            .collect::<Result<_, String>>()?,
        identity_dir: one("identity-dir").map(|v| PathBuf::from(&v.text)),
        token,
        grace,
        control: one("control").map_or_else(
            || control::default_path(side.name()),
            |v| PathBuf::from(&v.text),
        ),
    };
    if side == Side::Reverse && s.server.is_none() {
        return Err("--server HOST:PORT is required (the server tunnels are carried to)".into());
    }
    if !s.bootstrap.is_empty() && !s.discovery {
        return Err("bootstrap nodes given without --discovery".into());
    }
    Ok(s)
}

/// The forward proxy's token: from `token-file`, else `KEYNET_TOKEN`, else `--token` if
/// `--insecure-token-arg` allows it.
fn token(
    file: Option<&Value>,
    arg: Option<Value>,
    insecure: bool,
    env: Option<String>,
) -> Result<String, String> {
    let t = if let Some(f) = file {
        let text = std::fs::read_to_string(&f.text)
            .map_err(|e| format!("{}: cannot read {:?}: {e}", f.origin, f.text))?;
        text.trim_end_matches(['\r', '\n']).to_string()
    } else if let Some(t) = env.filter(|t| !t.is_empty()) {
        t
    } else if let Some(a) = arg {
        if !insecure {
            return Err(format!(
                "--token: a token on the command line is visible to every user of this machine; \
                 give --token-file FILE or {TOKEN_ENV}, or add --insecure-token-arg"
            ));
        }
        a.text
    } else {
        return Err(format!(
            "the forward proxy needs a token: --token-file FILE or {TOKEN_ENV}"
        ));
    };
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(t)
}

fn identity(dir: &Option<PathBuf>) -> keynet_core::Result<Option<TlsConfig>> {
    match dir {
        Some(d) => IdentitySource::Dir(d.clone()).load(),
        None => {
            tracing::warn!("no --identity-dir: a fresh identity (and node id) for this run only");
            Ok(None)
        }
    }
}

fn discovery(s: &Settings) -> Option<DiscoveryOptions> {
    s.discovery.then(|| DiscoveryOptions {
        bootstrap: (!s.bootstrap.is_empty()).then(|| s.bootstrap.clone()),
        ..Default::default()
    })
}

fn options(s: &Settings) -> ConnOptions {
    let mut o = ConnOptions::default();
    if let Some(g) = s.grace {
        o.end_time = g;
    }
    o
}

/// Why a run failed: a setting found bad late (exit 2), or a start that failed (exit 1).
#[derive(Debug)]
pub enum RunError {
    Usage(String),
    Start(keynet_core::Error),
}

impl From<keynet_core::Error> for RunError {
    fn from(e: keynet_core::Error) -> Self {
        Self::Start(e)
    }
}

/// Runs `keynet reverse` until SIGINT/SIGTERM; on SIGHUP it reads its settings again
/// (`reload`) and applies the allow-list (a bad file is logged and changes nothing).
pub async fn run_reverse(
    s: Settings,
    reload: impl Fn() -> Result<Settings, String>,
) -> Result<(), RunError> {
    let mut hangups = crate::signal::Hangups::new();
    let control = Control::bind(&s.control).await.map_err(RunError::Usage)?;
    let rp = ReverseProxy::new(options(&s))?;
    let mut start = ReverseStart::new(s.server.expect("checked by settings()"));
    if let Some(l) = s.listen {
        start.ingress_addr = l;
    }
    start.tls = identity(&s.identity_dir)?;
    start.allowed_node_ids = (!s.allow.is_empty()).then(|| s.allow.clone());
    start.relays = s.relays.clone();
    start.discovery = discovery(&s);
    rp.start(start).await?;
    let id = rp.node_id()?;
    println!(
        "reverse proxy node id {id} udp {} server {}",
        rp.ingress_addr()?,
        rp.server_addr()?
    );
    println!("reach it: grpc_proxy=http://TOKEN@FORWARD_HOST:PORT and the target {id}.keynet:443");
    let status = || {
        serde_json::json!({
            "role": "reverse",
            "node_id": rp.node_id().map(|n| n.to_string()).ok(),
            "udp": rp.ingress_addr().map(|a| a.to_string()).ok(),
            "server": rp.server_addr().map(|a| a.to_string()).ok(),
            "relays": rp.relays_status().map(|(links, _)| links.iter().map(|(s, l)| relay_json(s, l)).collect::<Vec<_>>()).unwrap_or_default(),
            "stats": rp.stats().map(|s| stats_json(&s)).ok(),
            "connections": rp.connections().map(|c| c.iter().map(connection_json).collect::<Vec<_>>()).unwrap_or_default(),
        })
    };
    let reloads = async {
        loop {
            hangups.next().await;
            match reload() {
                Ok(new) => {
                    let ids = (!new.allow.is_empty()).then_some(new.allow);
                    let n = ids.as_ref().map_or(0, Vec::len);
                    match rp.set_allowed_node_ids(ids) {
                        Ok(()) if n == 0 => tracing::info!("SIGHUP: any node may connect"),
                        Ok(()) => tracing::info!(allowed = n, "SIGHUP: allow-list reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: allow-list not applied"),
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: settings not reloaded, nothing changed")
                }
            }
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = control.serve(status) => {}
        _ = reloads => {}
    }
    tracing::info!("stopping: open tunnels drain");
    Ok(rp.stop().await?)
}

/// Runs `keynet forward` until a signal.
pub async fn run_forward(s: Settings) -> Result<(), RunError> {
    let control = Control::bind(&s.control).await.map_err(RunError::Usage)?;
    let fp = ForwardProxy::new(s.token.clone().expect("checked by settings()"), options(&s))?;
    let mut start = ForwardStart {
        proxy_addr: s.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
        tls: identity(&s.identity_dir)?,
        relays: s.relays.clone(),
        discovery: discovery(&s),
        ..ForwardStart::default()
    };
    if let Some(e) = s.egress {
        start.egress_addr = e;
    }
    fp.start(start).await?;
    println!(
        "forward proxy http {} udp {} node id {}",
        fp.proxy_addr()?,
        fp.egress_addr()?,
        fp.node_id()?
    );
    let status = || {
        serde_json::json!({
            "role": "forward",
            "node_id": fp.node_id().map(|n| n.to_string()).ok(),
            "udp": fp.egress_addr().map(|a| a.to_string()).ok(),
            "http": fp.proxy_addr().map(|a| a.to_string()).ok(),
            "relays": fp.relay_status().map(|links| links.iter().map(|(s, l)| relay_json(s, l)).collect::<Vec<_>>()).unwrap_or_default(),
            "stats": fp.stats().map(|s| stats_json(&s)).ok(),
            "connections": fp.connections().map(|c| c.iter().map(connection_json).collect::<Vec<_>>()).unwrap_or_default(),
        })
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = control.serve(status) => {}
    }
    tracing::info!("stopping: open tunnels drain");
    Ok(fp.stop().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(side: Side, a: &[&str]) -> Raw {
        config::parse_flags(side, a.iter().map(|s| s.to_string()))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_token_on_the_command_line_is_refused_unless_asked_for() {
        let e = settings(Side::Forward, raw(Side::Forward, &["--token", "t"]), None).unwrap_err();
        assert!(
            e.starts_with("--token: a token on the command line is visible"),
            "{e}"
        );
        let s = settings(
            Side::Forward,
            raw(Side::Forward, &["--token", "t", "--insecure-token-arg"]),
            None,
        )
        .unwrap();
        assert_eq!(s.token.as_deref(), Some("t"));
        let s = settings(
            Side::Forward,
            raw(Side::Forward, &[]),
            Some("from-env".into()),
        )
        .unwrap();
        assert_eq!(s.token.as_deref(), Some("from-env"));
        let e = settings(Side::Forward, raw(Side::Forward, &[]), None).unwrap_err();
        assert!(e.contains("needs a token"), "{e}");
        let dir = std::env::temp_dir().join(format!("keynet-cli-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let s = settings(
            Side::Forward,
            raw(Side::Forward, &["--token-file", file.to_str().unwrap()]),
            Some("env".into()),
        )
        .unwrap();
        assert_eq!(
            s.token.as_deref(),
            Some("from-file"),
            "the file wins, without its newline"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `settings` of `keynet reverse FLAGS` without a config file or KEYNET_TOKEN.
    fn reverse(flags: &[&str]) -> Result<Settings, String> {
        settings(Side::Reverse, raw(Side::Reverse, flags), None)
    }

    #[test]
    fn values_are_checked_and_errors_name_their_origin() {
        let e = reverse(&[]).unwrap_err();
        assert!(e.starts_with("--server HOST:PORT is required"), "{e}");
        let e = reverse(&["--server", "localhost:1"]).unwrap_err();
        assert_eq!(e, "--server: \"localhost:1\" is not an IP HOST:PORT");
        let e = reverse(&["--server", "127.0.0.1:1", "--relay", "127.0.0.1:7000"]).unwrap_err();
        assert!(e.starts_with("--relay: "), "{e}");
        let e = reverse(&["--server", "127.0.0.1:1", "--grace", "0"]).unwrap_err();
        assert_eq!(e, "--grace: must be more than 0 seconds");
        let e = reverse(&["--server", "127.0.0.1:1", "--bootstrap", "127.0.0.1:6881"]).unwrap_err();
        assert_eq!(e, "bootstrap nodes given without --discovery");
        let s = reverse(&["--server", "127.0.0.1:1", "--grace", "2.5"]).unwrap();
        assert_eq!(s.grace, Some(Duration::from_millis(2500)));
    }
}
