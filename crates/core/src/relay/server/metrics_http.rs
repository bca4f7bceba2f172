//! The relay's Prometheus endpoint: `GET /metrics` answers the counters as text. A minimal
//! HTTP/1.1 responder (one request per connection), bounded like everything else that listens:
//! a few connections at once, a small request head, a short deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::stats::RelayStats;
use crate::task::Tasks;

/// Scrapes served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 8;
/// Largest request head.
const MAX_HEAD: usize = 8 * 1024;
/// Time to send the request head.
const DEADLINE: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` with what `stats` returns, until the tasks stop.
pub(crate) async fn serve(
    listener: TcpListener,
    stats: Arc<dyn Fn() -> RelayStats + Send + Sync>,
    tasks: Tasks,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stats = stats.clone();
        tasks.spawn(async move {
            let _ = tokio::time::timeout(DEADLINE * 2, answer(tcp, &*stats)).await;
            drop(permit);
        });
    }
}

async fn answer(mut tcp: TcpStream, stats: &(dyn Fn() -> RelayStats + Send + Sync)) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    })
    .await;
    let response = match read {
        Ok(Some(())) => respond(&head, stats),
        _ => return,
    };
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// The whole response to a request head.
fn respond(head: &[u8], stats: &(dyn Fn() -> RelayStats + Send + Sync)) -> String {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            stats().prometheus(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".into(),
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_metrics_answers_prometheus_text_and_anything_else_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tasks = Tasks::new();
        let stats: Arc<dyn Fn() -> RelayStats + Send + Sync> = Arc::new(RelayStats::default);
        tasks.spawn(serve(l, stats, tasks.clone()));
        let get = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP keynet_relay_sessions"), "{ok}");
        assert!(get("GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        tasks.shutdown(Duration::from_secs(1)).await;
    }
}
