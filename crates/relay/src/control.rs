//! The control endpoint of a running `keynet reverse|forward|relay`: it answers each client with
//! the instance's status (one line of JSON) and closes. Only the user who started keynet can ask:
//! a 0600 Unix socket, or on Windows a named pipe whose access list names only its owner.
//! `keynet status` is its client.

use serde_json::{json, Value};
use std::io;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};

use keynet_core::relay::server::RelayServer;
use keynet_core::relay::spec::{LinkStatus, RelaySpec};
use keynet_core::{ConnectionInfo, ProxyStats};

#[cfg(windows)]
mod named_pipe;
#[cfg(unix)]
mod unix_socket;
pub use endpoint::{default_path, Control};
#[cfg(windows)]
use named_pipe as endpoint;
#[cfg(unix)]
use unix_socket as endpoint;

/// How long a status request may take, either side.
const WAIT: Duration = Duration::from_secs(5);
/// Largest status answer `keynet status` reads (a status of thousands of connections fits).
const MAX_STATUS: u64 = 16 << 20;

/// `keynet status`: the status JSON of the instance whose control endpoint is `path`.
pub async fn query(path: &Path) -> Result<Value, String> {
    let ask = async { read_status(endpoint::connect(path).await?, path).await };
    tokio::time::timeout(WAIT, ask)
        .await
        .map_err(|_| format!("{}: no answer within {} s", path.display(), WAIT.as_secs()))?
}

/// Reads one status answer: JSON up to a newline or the end (a closed pipe counts as the end).
async fn read_status(stream: impl AsyncRead + Unpin, path: &Path) -> Result<Value, String> {
    let mut text = Vec::new();
    let mut reader = tokio::io::BufReader::new(stream.take(MAX_STATUS));
    match reader.read_until(b'\n', &mut text).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe && !text.is_empty() => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    serde_json::from_slice(&text).map_err(|e| format!("{}: not a status: {e}", path.display()))
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
        "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received, "lost_packets": c.lost_packets, "mtu": c.mtu,
    })
}

/// A running relay's status: where it listens, who is registered, its counters.
pub fn relay_status(relay: &RelayServer) -> Value {
    let stats = relay.stats().unwrap_or_default();
    let g = &stats.gauges;
    let pairs = |rows: &[(&str, u64)]| -> serde_json::Map<String, Value> {
        rows.iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect()
    };
    json!({
        "role": "relay",
        "node_id": relay.node_id().ok().map(|n| n.to_string()),
        "udp": relay.addr().ok().map(|a| a.to_string()),
        "tcp": relay.tcp_addr().ok().map(|a| a.to_string()),
        "metrics": relay.metrics_addr().ok().flatten().map(|a| a.to_string()),
        "registered": relay.registered().unwrap_or_default().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "allocations": relay.allocations().unwrap_or_default().iter()
            .map(|(n, port)| json!({ "node_id": n.to_string(), "port": port })).collect::<Vec<_>>(),
        "stats": {
            "sessions_quic": g.sessions_quic, "sessions_websocket": g.sessions_websocket,
            "queued_bytes": g.queued_bytes, "public_clients": g.public_clients,
            "packets_relayed": stats.packets_relayed, "bytes_relayed": stats.bytes_relayed,
            "packets_on_channel": stats.packets_on_channel,
            "rendezvous_sent": stats.rendezvous_sent, "stalled_resets": stats.stalled_resets,
            "drops": pairs(&stats.drops), "refusals": pairs(&stats.refusals),
        },
    })
}

/// The relay's status as `keynet status` prints it without `--json`.
fn relay_table(s: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let st = &s["stats"];
    let mut out = format!(
        "relay {}  udp {}  tcp {}\n",
        str_of(&s["node_id"]),
        str_of(&s["udp"]),
        str_of(&s["tcp"])
    );
    out += &format!(
        "sessions quic {} websocket {}; relayed packets {} bytes {}; rendezvous {}\n",
        st["sessions_quic"],
        st["sessions_websocket"],
        st["packets_relayed"],
        st["bytes_relayed"],
        st["rendezvous_sent"]
    );
    let nonzero = |v: &Value| -> String {
        let rows: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if rows.is_empty() {
            "none".into()
        } else {
            rows.join(", ")
        }
    };
    out += &format!(
        "drops: {}; refusals: {}\n",
        nonzero(&st["drops"]),
        nonzero(&st["refusals"])
    );
    out += &format!("{:<54} {:>6}\n", "REGISTERED NODE ID", "PORT");
    let allocs = s["allocations"].as_array().cloned().unwrap_or_default();
    for n in s["registered"].as_array().into_iter().flatten() {
        let port = allocs
            .iter()
            .find(|a| a["node_id"] == *n)
            .map_or("-".to_string(), |a| a["port"].to_string());
        out += &format!("{:<54} {:>6}\n", str_of(n), port);
    }
    out
}

/// `keynet status` without `--json`: a few lines and a table of connections (or, for a relay,
/// of registered nodes).
pub fn table(s: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_string();
    if s["role"] == "relay" {
        return relay_table(s);
    }
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
            // Numbers, not JSON values: a `Value`'s Display ignores the column width.
            c["bytes_sent"].as_u64().unwrap_or(0),
            c["bytes_received"].as_u64().unwrap_or(0)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every number of a connection row ends where its column's heading ends.
    #[test]
    fn the_connection_table_lines_up_under_its_headings() {
        let s = json!({
            "role": "reverse", "node_id": "n", "udp": "127.0.0.1:1", "server": "127.0.0.1:2",
            "relays": [], "stats": { "tunnels_open": 0, "tunnels_total": 1, "bytes_sent": 1,
                "bytes_received": 2, "failures": {} },
            "connections": [{ "node_id": "v".repeat(53), "path": "direct", "rtt_ms": 1.5,
                "bytes_sent": 10633, "bytes_received": 3670 }],
        });
        let out = table(&s);
        let lines: Vec<&str> = out.lines().collect();
        let head = lines
            .iter()
            .find(|l| l.starts_with("NODE ID"))
            .expect("heading");
        let row = lines.last().expect("row");
        assert_eq!(row.len(), head.len(), "{head}\n{row}");
        assert!(row.ends_with("        10633         3670"), "{row}");
    }
}
