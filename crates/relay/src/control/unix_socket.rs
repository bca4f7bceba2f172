//! The control endpoint on Unix: a Unix socket, `$XDG_RUNTIME_DIR/keynet/SIDE.sock` (else
//! `/tmp/keynet-UID/SIDE.sock`) by default. File permissions are its only authentication: its
//! directory is made 0700 and the socket is 0600, so only the same user can ask.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::WAIT;

/// Where `side`'s control socket is unless `--control` says.
pub fn default_path(side: &str) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("keynet"),
        _ => std::env::temp_dir().join(format!("keynet-{}", uid())),
    };
    dir.join(format!("{side}.sock"))
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A bound control socket; the file is removed when it drops.
pub struct Control {
    path: PathBuf,
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

    /// Answers requests one at a time with `status()` until dropped (the caller selects on it).
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
            let text = format!("{}\n", status());
            let _ = tokio::time::timeout(WAIT, async {
                let _ = stream.write_all(text.as_bytes()).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    }
}

/// A connection to the control socket at `path`.
pub(super) async fn connect(path: &Path) -> Result<tokio::net::UnixStream, String> {
    tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| format!("{}: {e} (is keynet running?)", path.display()))
}
