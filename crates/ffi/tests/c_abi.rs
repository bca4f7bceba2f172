//! The C ABI end to end, called as C would: a TCP echo server behind a reverse proxy, a forward
//! proxy, an HTTP CONNECT through it; and the header declares exactly the exported functions.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use keynet_ffi::*;

fn last_error() -> String {
    let p = keynet_last_error();
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn tunnel_through_the_c_api() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = CString::new(server.local_addr().unwrap().to_string()).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut buf = [0u8; 5];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).unwrap();
        }
    });
    let any = CString::new("127.0.0.1:0").unwrap();
    unsafe {
        let rt = keynet_runtime_new();
        assert!(!rt.is_null());
        let mut rp = std::ptr::null_mut();
        assert_eq!(
            keynet_reverse_proxy_start(rt, server_addr.as_ptr(), any.as_ptr(), &mut rp),
            0
        );
        let mut id = [0 as std::ffi::c_char; 54];
        assert_eq!(
            keynet_reverse_proxy_node_id(rp, id.as_mut_ptr(), id.len()),
            0
        );
        let id = CStr::from_ptr(id.as_ptr()).to_str().unwrap().to_string();
        assert_eq!(id.len(), 53);
        let mut small = [0 as std::ffi::c_char; 10];
        assert_eq!(
            keynet_reverse_proxy_node_id(rp, small.as_mut_ptr(), small.len()),
            -1
        );
        assert!(last_error().contains("54 bytes"));

        let token = CString::new("tok").unwrap();
        let mut fp = std::ptr::null_mut();
        assert_eq!(
            keynet_forward_proxy_start(rt, token.as_ptr(), any.as_ptr(), any.as_ptr(), &mut fp),
            0
        );
        let target = format!("127.0.0.1:{}", keynet_reverse_proxy_port(rp));
        let c_target = CString::new(target.clone()).unwrap();
        let c_id = CString::new(id.clone()).unwrap();
        assert_eq!(
            keynet_forward_proxy_open(rt, fp, c_id.as_ptr(), c_target.as_ptr(), 5000),
            0
        );

        let bad = CString::new("not-an-id").unwrap();
        assert_eq!(
            keynet_forward_proxy_open(rt, fp, bad.as_ptr(), c_target.as_ptr(), 5000),
            -1
        );
        assert!(last_error().starts_with("ERR_INVALID_ARG_VALUE"));

        let mut s = TcpStream::connect(("127.0.0.1", keynet_forward_proxy_http_port(fp))).unwrap();
        write!(
            s,
            "CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic dG9r\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 39];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 Connection Established\r\n\r\n");
        s.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");

        // A network change keeps the tunnel: the same stream still echoes.
        assert_eq!(keynet_network_changed(fp, rp), 0);
        assert_eq!(
            keynet_network_changed(std::ptr::null(), std::ptr::null()),
            0
        );
        s.write_all(b"again").unwrap();
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"again");

        keynet_forward_proxy_stop(rt, fp);
        keynet_reverse_proxy_stop(rt, rp);
        keynet_runtime_free(rt);
    }
}

#[test]
fn header_declares_exactly_the_exports() {
    let header = include_str!("../include/keynet.h");
    let src = include_str!("../src/lib.rs");
    let exported: Vec<&str> = src
        .split("extern \"C\" fn ")
        .skip(1)
        .map(|s| s.split('(').next().unwrap())
        .collect();
    assert!(exported.len() >= 10);
    for f in &exported {
        assert!(
            header.contains(&format!("{f}(")),
            "{f} is declared in keynet.h"
        );
    }
    let declared = header.matches(" keynet_").count() + header.matches("*keynet_").count();
    assert!(declared >= exported.len());
}
