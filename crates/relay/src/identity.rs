//! Identities on disk: a directory holding `key.pem` (mode 0600) and `cert.pem`, used by
//! `--identity-dir` and by `keynet id new|show`.

use std::path::{Path, PathBuf};

use keynet_core::{generate_identity, NodeId, TlsConfig};

/// Where the identity comes from.
#[derive(Debug, Default)]
pub enum IdentitySource {
    /// A fresh identity per run.
    #[default]
    Fresh,
    /// PEM files.
    Files { key: PathBuf, cert: PathBuf },
    /// A directory holding key.pem and cert.pem, created on first use.
    Dir(PathBuf),
}

impl IdentitySource {
    /// Loads (or creates and saves) the identity; `None` lets the relay generate one.
    pub fn load(&self) -> keynet_core::Result<Option<TlsConfig>> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| {
                keynet_core::Error::InvalidTlsConfig(format!("cannot read {}: {e}", p.display()))
            })
        };
        match self {
            Self::Fresh => Ok(None),
            Self::Files { key, cert } => Ok(Some(TlsConfig {
                key_private_pem: read(key)?,
                cert_chain_pem: read(cert)?,
            })),
            Self::Dir(dir) => {
                let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
                if !key.exists() && !cert.exists() {
                    let id = generate_identity()?;
                    std::fs::create_dir_all(dir)?;
                    write_private(&key, &id.tls.key_private_pem)?;
                    std::fs::write(&cert, &id.tls.cert_chain_pem)?;
                    tracing::info!(node_id = %id.node_id, dir = %dir.display(), "identity generated and saved");
                }
                Ok(Some(TlsConfig {
                    key_private_pem: read(&key)?,
                    cert_chain_pem: read(&cert)?,
                }))
            }
        }
    }
}

pub(crate) fn write_private(path: &PathBuf, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(content.as_bytes())
}

/// `keynet id new --dir D`: a fresh identity saved in `dir` (refused if one is there).
pub fn create(dir: &Path) -> Result<NodeId, String> {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    if key.exists() || cert.exists() {
        return Err(format!(
            "{} already holds an identity (key.pem or cert.pem); `keynet id show --dir {}` prints it",
            dir.display(),
            dir.display()
        ));
    }
    let id = generate_identity().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_private(&key, &id.tls.key_private_pem)
        .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    std::fs::write(&cert, &id.tls.cert_chain_pem)
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    Ok(id.node_id)
}

/// `keynet id show --dir D`: the node id of the identity saved in `dir`.
pub fn show(dir: &Path) -> Result<NodeId, String> {
    let cert = dir.join("cert.pem");
    let pem = std::fs::read_to_string(&cert).map_err(|e| {
        format!(
            "cannot read {}: {e} (`keynet id new --dir {}` makes one)",
            cert.display(),
            dir.display()
        )
    })?;
    keynet_core::node_id_from_certificate_pem(&pem).map_err(|e| format!("{}: {e}", cert.display()))
}
