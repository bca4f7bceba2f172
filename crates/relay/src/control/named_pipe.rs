//! The control endpoint on Windows: a named pipe, `\\.\pipe\keynet-USER-SIDE` by default. Its
//! access list lets in only its owner (the user who started keynet) and SYSTEM, the pipe form of
//! the Unix socket's 0600; clients from other machines are refused.

use std::ffi::c_void;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use tokio::sync::Mutex;
use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;

use super::WAIT;

const PREFIX: &str = r"\\.\pipe\";
/// Every instance of the pipe is busy: the client waits and tries again.
const ERROR_PIPE_BUSY: i32 = 231;
/// Full access for the owner (OW) and SYSTEM (SY), nobody else; not inherited (P).
const OWNER_ONLY: &str = "D:P(A;;GA;;;OW)(A;;GA;;;SY)";

/// `\\.\pipe\keynet-USER-SIDE` unless `--control` says.
pub fn default_path(side: &str) -> PathBuf {
    let user = std::env::var("USERNAME").unwrap_or_default();
    PathBuf::from(format!("{PREFIX}keynet-{user}-{side}"))
}

/// The pipe name in `path`, which must be `\\.\pipe\NAME`.
fn pipe_name(path: &Path) -> Result<&str, String> {
    path.to_str()
        .filter(|p| {
            p.len() > PREFIX.len()
                && p.is_char_boundary(PREFIX.len())
                && p[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        })
        .ok_or_else(|| {
            format!(
                "control endpoint {}: on Windows it is a named pipe, \\\\.\\pipe\\NAME",
                path.display()
            )
        })
}

/// A security descriptor made from `OWNER_ONLY`, freed on drop.
struct OwnerOnly(*mut c_void);

// SAFETY: the descriptor is plain memory that nothing else holds; it is only read.
unsafe impl Send for OwnerOnly {}
// SAFETY: as above; shared use only reads it.
unsafe impl Sync for OwnerOnly {}

impl OwnerOnly {
    fn new() -> io::Result<Self> {
        let sddl: Vec<u16> = OWNER_ONLY.encode_utf16().chain([0]).collect();
        let mut sd = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated and outlives the call; on success `sd` points to a
        // LocalAlloc'd descriptor that Drop frees.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(sd))
    }

    /// A new instance of pipe `name` with this descriptor.
    fn create(&self, options: &ServerOptions, name: &str) -> io::Result<NamedPipeServer> {
        let mut attrs = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0,
            bInheritHandle: 0,
        };
        // SAFETY: `attrs` and the descriptor it points to are valid for the whole call.
        unsafe {
            options.create_with_security_attributes_raw(name, std::ptr::addr_of_mut!(attrs).cast())
        }
    }
}

impl Drop for OwnerOnly {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW, freed once.
        unsafe { LocalFree(self.0) };
    }
}

/// The error for a pipe name another instance holds.
fn taken(name: &str) -> String {
    format!("control pipe {name}: another keynet instance answers there (give --control PATH)")
}

/// A control pipe: its first instance, made when bound, waits for the first client.
pub struct Control {
    name: String,
    descriptor: OwnerOnly,
    next: Mutex<NamedPipeServer>,
}

impl Control {
    /// Creates the pipe. A live instance with that name is an error.
    pub async fn bind(path: &Path) -> Result<Self, String> {
        let name = pipe_name(path)?.to_owned();
        // Asked first, as on Unix: the first-instance flag alone is not honoured everywhere (wine).
        let answered = match ClientOptions::new().open(&name) {
            Ok(_) => true,
            Err(e) => e.raw_os_error() == Some(ERROR_PIPE_BUSY),
        };
        if answered {
            return Err(taken(&name));
        }
        let descriptor =
            OwnerOnly::new().map_err(|e| format!("control pipe {name}: access list: {e}"))?;
        let mut options = ServerOptions::new();
        options
            .first_pipe_instance(true)
            .reject_remote_clients(true);
        let first = descriptor.create(&options, &name).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                taken(&name)
            } else {
                format!("control pipe {name}: {e}")
            }
        })?;
        Ok(Self {
            name,
            descriptor,
            next: Mutex::new(first),
        })
    }

    /// Answers clients one at a time with `status()` until dropped (the caller selects on it).
    pub async fn serve(&self, status: impl Fn() -> Value) {
        let mut options = ServerOptions::new();
        options.reject_remote_clients(true);
        let mut next = self.next.lock().await;
        loop {
            let connected = next.connect().await;
            // The next instance exists before this one is answered, so clients never find none.
            let fresh = match self.descriptor.create(&options, &self.name) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "control pipe: cannot make the next instance");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut client = std::mem::replace(&mut *next, fresh);
            if let Err(e) = connected {
                // A client that left before it was seen, say: this instance is done with.
                tracing::debug!(error = %e, "control pipe: connect failed");
                continue;
            }
            let text = format!("{}\n", status());
            let _ = tokio::time::timeout(WAIT, async {
                let _ = client.write_all(text.as_bytes()).await;
                // Closing before the client has read would lose the answer: wait for it to hang up.
                let _ = client.read(&mut [0u8; 1]).await;
            })
            .await;
        }
    }
}

/// A connection to the control pipe `path`, waiting while every instance is busy.
pub(super) async fn connect(path: &Path) -> Result<NamedPipeClient, String> {
    let name = pipe_name(path)?;
    loop {
        match ClientOptions::new().open(name) {
            Ok(c) => return Ok(c),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(format!("{}: {e} (is keynet running?)", path.display())),
        }
    }
}
