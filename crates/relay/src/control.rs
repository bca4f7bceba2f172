//! The control socket of a running `keynet reverse|forward`: a Unix socket that answers each
//! connection with the instance's status (JSON) and closes. File permissions are its only
//! authentication: its directory is 0700 and the socket 0600, so only the same user can ask.
//! `keynet status` is its client.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::time::Duration;
#[cfg(unix)]
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use keynet_core::relay::spec::{LinkStatus, RelaySpec};
use keynet_core::{ConnectionInfo, ProxyStats};

/// How long a status request may take, either side.
#[cfg(unix)]
const WAIT: Duration = Duration::from_secs(5);
/// Largest status answer `keynet status` reads (a status of thousands of connections fits).
#[cfg(unix)]
const MAX_STATUS: u64 = 16 << 20;

/// Where `side`'s control socket is unless `--control` says: `$XDG_RUNTIME_DIR/keynet/SIDE.sock`,
/// else `/tmp/keynet-UID/SIDE.sock`.
pub fn default_path(side: &str) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("keynet"),
        _ => std::env::temp_dir().join(format!("keynet-{}", uid())),
    };
    dir.join(format!("{side}.sock"))
}

#[cfg(unix)]
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(not(unix))]
fn uid() -> u32 {
    0
}

/// A bound control socket; the file is removed when it drops.
pub struct Control {
    path: PathBuf,
    #[cfg(unix)]
    listener: tokio::net::UnixListener,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Control {
    /// Binds `path` (its directory made 0700 if new). A live instance there is an error; a
    /// stale file left by a crashed one is replaced.
    #[cfg(unix)]
    pub async fn bind(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("control socket: cannot create {}: {e}", dir.display()))?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        if path.exists() {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(format!(
                    "control socket {}: another keynet instance answers there (give --control PATH)",
                    path.display()
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            listener,
        })
    }

    /// Without Unix sockets there is no control socket (yet): the proxy runs without one.
    #[cfg(not(unix))]
    pub async fn bind(path: &Path) -> Result<Self, String> {
        tracing::warn!(
            path = %path.display(),
            "no control socket on this platform: keynet status cannot ask this instance"
        );
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Answers requests one at a time with `status()` until dropped (the caller selects on it).
    #[cfg(unix)]
    pub async fn serve(&self, status: impl Fn() -> Value) {
        loop {
            let (mut stream, _) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning on the error.
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let text = status().to_string();
            let _ = tokio::time::timeout(WAIT, async {
                let _ = stream.write_all(text.as_bytes()).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    }

    #[cfg(not(unix))]
    pub async fn serve(&self, _status: impl Fn() -> Value) {
        std::future::pending::<()>().await
    }
}

/// `keynet status`: the status JSON of the instance at `path`.
#[cfg(unix)]
pub async fn query(path: &Path) -> Result<Value, String> {
    let read = async {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("{}: {e} (is keynet running?)", path.display()))?;
        let mut text = String::new();
        stream
            .take(MAX_STATUS)
            .read_to_string(&mut text)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a status: {e}", path.display()))
    };
    tokio::time::timeout(WAIT, read)
        .await
        .map_err(|_| format!("{}: no answer within 5 s", path.display()))?
}

#[cfg(not(unix))]
pub async fn query(path: &Path) -> Result<Value, String> {
    Err(format!("{}: needs Unix sockets", path.display()))
}

/// A relay link as the status shows it.
pub fn relay_json(spec: &RelaySpec, status: &LinkStatus) -> Value {
    let (state, transport, error) = match status {
        LinkStatus::Connecting => ("connecting", None, None),
        LinkStatus::Up { transport, .. } => ("up", Some(transport.as_str()), None),
        LinkStatus::Down(kind, message) => {
            ("down", None, Some(format!("[{}] {message}", kind.code())))
        }
    };
    json!({ "relay": spec.addr.to_string(), "node_id": spec.node_id.to_string(), "state": state, "transport": transport, "error": error })
}

/// The counters as the status shows them.
pub fn stats_json(s: &ProxyStats) -> Value {
    let failures: serde_json::Map<String, Value> = s
        .failures
        .iter()
        .map(|(code, n)| ((*code).to_string(), json!(n)))
        .collect();
    json!({
        "direct": s.direct, "punched": s.punched, "relayed": s.relayed,
        "tunnels_open": s.tunnels_open, "tunnels_total": s.tunnels_total,
        "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received, "failures": failures,
    })
}

/// A connection as the status shows it.
pub fn connection_json(c: &ConnectionInfo) -> Value {
    json!({
        "node_id": c.node_id, "path": c.path.as_str(), "rtt_ms": c.rtt_ms,
        "egress": c.egress.to_string(), "ingress": c.ingress.to_string(),
        "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received, "lost_packets": c.lost_packets,
    })
}

/// `keynet status` without `--json`: a few lines and a table of connections.
pub fn table(s: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "{} proxy {}  udp {}",
        str_of(&s["role"]),
        str_of(&s["node_id"]),
        str_of(&s["udp"])
    );
    if let Some(server) = s["server"].as_str() {
        out += &format!("  server {server}");
    }
    if let Some(http) = s["http"].as_str() {
        out += &format!("  http {http}");
    }
    out.push('\n');
    for r in s["relays"].as_array().into_iter().flatten() {
        out += &format!(
            "relay {} {}{}\n",
            str_of(&r["relay"]),
            str_of(&r["state"]),
            r["transport"]
                .as_str()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        );
    }
    let st = &s["stats"];
    out += &format!(
        "tunnels open {} total {}; bytes sent {} received {}; failures {}\n",
        st["tunnels_open"],
        st["tunnels_total"],
        st["bytes_sent"],
        st["bytes_received"],
        st["failures"]
    );
    out += &format!(
        "{:<54} {:<8} {:>8} {:>12} {:>12}\n",
        "NODE ID", "PATH", "RTT ms", "SENT", "RECEIVED"
    );
    for c in s["connections"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<54} {:<8} {:>8.2} {:>12} {:>12}\n",
            str_of(&c["node_id"]),
            str_of(&c["path"]),
            c["rtt_ms"].as_f64().unwrap_or(0.0),
            c["bytes_sent"],
            c["bytes_received"]
        );
    }
    out
}
