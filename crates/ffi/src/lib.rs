//! C ABI of keynet-core (see `include/keynet.h`), for runtimes that link the core as a static
//! library instead of loading the Node addon (iOS). Translation only: every call maps to one
//! keynet-core call; errors are kept per thread for `keynet_last_error`.

#![allow(clippy::missing_safety_doc)] // the safety contract is the header's

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::net::SocketAddr;
use std::time::Duration;

use keynet_core::{ConnOptions, ForwardProxy, ForwardStart, ReverseProxy, ReverseStart};

/// Network threads for the proxies.
pub struct KeynetRuntime(tokio::runtime::Runtime);
/// A started forward proxy.
pub struct KeynetForwardProxy(ForwardProxy);
/// A started reverse proxy.
pub struct KeynetReverseProxy(ReverseProxy);

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn fail(msg: String) -> i32 {
    let c = CString::new(msg.replace('\0', " ")).expect("no NUL left");
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
    -1
}

fn core_err(e: keynet_core::Error) -> i32 {
    fail(format!("{}: {e}", e.code()))
}

unsafe fn text<'a>(p: *const c_char, name: &str) -> Result<&'a str, i32> {
    if p.is_null() {
        return Err(fail(format!("ERR_INVALID_ARG_VALUE: {name} is NULL")));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| fail(format!("ERR_INVALID_ARG_VALUE: {name} is not UTF-8")))
}

unsafe fn addr(p: *const c_char, name: &str) -> Result<SocketAddr, i32> {
    let s = text(p, name)?;
    s.parse().map_err(|_| {
        fail(format!(
            "ERR_INVALID_ARG_VALUE: {name} must be ip:port, got {s:?}"
        ))
    })
}

/// The calling thread's last error, or NULL.
#[no_mangle]
pub extern "C" fn keynet_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// A runtime with two network threads; NULL on failure.
#[no_mangle]
pub extern "C" fn keynet_runtime_new() -> *mut KeynetRuntime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Box::into_raw(Box::new(KeynetRuntime(rt))),
        Err(e) => {
            fail(format!("ErrorNetwork: cannot start the runtime: {e}"));
            std::ptr::null_mut()
        }
    }
}

/// Frees a runtime.
#[no_mangle]
pub unsafe extern "C" fn keynet_runtime_free(rt: *mut KeynetRuntime) {
    if !rt.is_null() {
        drop(Box::from_raw(rt));
    }
}

/// Starts a reverse proxy.
#[no_mangle]
pub unsafe extern "C" fn keynet_reverse_proxy_start(
    rt: *mut KeynetRuntime,
    server_addr: *const c_char,
    ingress_addr: *const c_char,
    out: *mut *mut KeynetReverseProxy,
) -> i32 {
    let (Some(rt), false) = (rt.as_ref(), out.is_null()) else {
        return fail("ERR_INVALID_ARG_VALUE: rt and out must not be NULL".into());
    };
    let (server, ingress) = match (
        addr(server_addr, "server_addr"),
        addr(ingress_addr, "ingress_addr"),
    ) {
        (Ok(s), Ok(i)) => (s, i),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let rp = match ReverseProxy::new(ConnOptions::default()) {
        Ok(rp) => rp,
        Err(e) => return core_err(e),
    };
    let start = ReverseStart {
        ingress_addr: ingress,
        ..ReverseStart::new(server)
    };
    if let Err(e) = rt.0.block_on(rp.start(start)) {
        return core_err(e);
    }
    *out = Box::into_raw(Box::new(KeynetReverseProxy(rp)));
    0
}

/// Writes the reverse proxy's node id into `buf`.
#[no_mangle]
pub unsafe extern "C" fn keynet_reverse_proxy_node_id(
    rp: *const KeynetReverseProxy,
    buf: *mut c_char,
    len: usize,
) -> i32 {
    let Some(rp) = rp.as_ref() else {
        return fail("ERR_INVALID_ARG_VALUE: rp is NULL".into());
    };
    let id = match rp.0.node_id() {
        Ok(id) => id.to_string(),
        Err(e) => return core_err(e),
    };
    if buf.is_null() || len < id.len() + 1 {
        return fail(format!(
            "ERR_INVALID_ARG_VALUE: buf needs {} bytes",
            id.len() + 1
        ));
    }
    std::ptr::copy_nonoverlapping(id.as_ptr(), buf as *mut u8, id.len());
    *buf.add(id.len()) = 0;
    0
}

/// The reverse proxy's UDP port (0 if stopped).
#[no_mangle]
pub unsafe extern "C" fn keynet_reverse_proxy_port(rp: *const KeynetReverseProxy) -> u16 {
    rp.as_ref()
        .and_then(|rp| rp.0.ingress_addr().ok())
        .map_or(0, |a| a.port())
}

/// Stops and frees a reverse proxy.
#[no_mangle]
pub unsafe extern "C" fn keynet_reverse_proxy_stop(
    rt: *mut KeynetRuntime,
    rp: *mut KeynetReverseProxy,
) {
    if let (Some(rt), false) = (rt.as_ref(), rp.is_null()) {
        let rp = Box::from_raw(rp);
        let _ = rt.0.block_on(rp.0.stop());
    }
}

/// Starts a forward proxy.
#[no_mangle]
pub unsafe extern "C" fn keynet_forward_proxy_start(
    rt: *mut KeynetRuntime,
    auth_token: *const c_char,
    proxy_addr: *const c_char,
    egress_addr: *const c_char,
    out: *mut *mut KeynetForwardProxy,
) -> i32 {
    let (Some(rt), false) = (rt.as_ref(), out.is_null()) else {
        return fail("ERR_INVALID_ARG_VALUE: rt and out must not be NULL".into());
    };
    let token = match text(auth_token, "auth_token") {
        Ok(t) => t.to_string(),
        Err(e) => return e,
    };
    let (proxy, egress) = match (
        addr(proxy_addr, "proxy_addr"),
        addr(egress_addr, "egress_addr"),
    ) {
        (Ok(p), Ok(e)) => (p, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let fp = match ForwardProxy::new(token, ConnOptions::default()) {
        Ok(fp) => fp,
        Err(e) => return core_err(e),
    };
    let start = ForwardStart {
        proxy_addr: proxy,
        egress_addr: egress,
        ..ForwardStart::default()
    };
    if let Err(e) = rt.0.block_on(fp.start(start)) {
        return core_err(e);
    }
    *out = Box::into_raw(Box::new(KeynetForwardProxy(fp)));
    0
}

/// The forward proxy's HTTP CONNECT port (0 if stopped).
#[no_mangle]
pub unsafe extern "C" fn keynet_forward_proxy_http_port(fp: *const KeynetForwardProxy) -> u16 {
    fp.as_ref()
        .and_then(|fp| fp.0.proxy_addr().ok())
        .map_or(0, |a| a.port())
}

/// Opens the connection to a reverse proxy, pinned to `node_id`.
#[no_mangle]
pub unsafe extern "C" fn keynet_forward_proxy_open(
    rt: *mut KeynetRuntime,
    fp: *mut KeynetForwardProxy,
    node_id: *const c_char,
    target: *const c_char,
    timeout_ms: u32,
) -> i32 {
    let (Some(rt), Some(fp)) = (rt.as_ref(), fp.as_ref()) else {
        return fail("ERR_INVALID_ARG_VALUE: rt and fp must not be NULL".into());
    };
    let id = match text(node_id, "node_id").map(|s| s.parse::<keynet_core::NodeId>()) {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return fail(format!("ERR_INVALID_ARG_VALUE: node_id: {e}")),
        Err(e) => return e,
    };
    let target = match addr(target, "addr") {
        Ok(a) => a,
        Err(e) => return e,
    };
    let timeout = Some(Duration::from_millis(timeout_ms.max(1) as u64));
    match rt
        .0
        .block_on(fp.0.open_connection(target, Some(id), timeout, None))
    {
        Ok(_) => 0,
        Err(e) => core_err(e),
    }
}

/// The device changed networks (the app heard it from the OS): both proxies, either may be
/// NULL. Rebinds a socket whose address is gone, registers with relays again and re-probes
/// every direct path. Returns 0, or -1 if a given proxy is not running.
#[no_mangle]
pub unsafe extern "C" fn keynet_network_changed(
    fp: *const KeynetForwardProxy,
    rp: *const KeynetReverseProxy,
) -> i32 {
    if let Some(Err(e)) = fp.as_ref().map(|fp| fp.0.network_changed()) {
        return core_err(e);
    }
    if let Some(Err(e)) = rp.as_ref().map(|rp| rp.0.network_changed()) {
        return core_err(e);
    }
    0
}

/// Stops and frees a forward proxy.
#[no_mangle]
pub unsafe extern "C" fn keynet_forward_proxy_stop(
    rt: *mut KeynetRuntime,
    fp: *mut KeynetForwardProxy,
) {
    if let (Some(rt), false) = (rt.as_ref(), fp.is_null()) {
        let fp = Box::from_raw(fp);
        let _ = rt.0.block_on(fp.0.stop());
    }
}
