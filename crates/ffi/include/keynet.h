/* keynet C API: the forward and reverse proxies of keynet-core behind a C ABI, for runtimes
 * that embed the core as a static library (iOS: link libkeynet_ffi.a into the app, call these
 * functions from Swift/Objective-C through this header, and point the app's gRPC client at
 * the forward proxy as an HTTP CONNECT proxy).
 *
 * Every function returning int returns 0 on success and -1 on failure; keynet_last_error()
 * then tells why ("Code: message", e.g. "ErrorConnectionStartTimeout: ..."). Addresses are
 * "ip:port" strings. Handles are freed by their stop function. Thread-safe. */
#ifndef KEYNET_H
#define KEYNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keynet_runtime keynet_runtime;
typedef struct keynet_forward_proxy keynet_forward_proxy;
typedef struct keynet_reverse_proxy keynet_reverse_proxy;

/* The last error of the calling thread, or NULL. Valid until the thread's next keynet call. */
const char *keynet_last_error(void);

/* A runtime (network threads). Free it after every proxy on it was stopped. */
keynet_runtime *keynet_runtime_new(void);
void keynet_runtime_free(keynet_runtime *rt);

/* Reverse proxy: carries arriving tunnels to the TCP server at server_addr. */
int keynet_reverse_proxy_start(keynet_runtime *rt, const char *server_addr, const char *ingress_addr,
                               keynet_reverse_proxy **out);
/* Writes the node id (53 characters and a NUL) into buf; returns -1 if len < 54. */
int keynet_reverse_proxy_node_id(const keynet_reverse_proxy *rp, char *buf, size_t len);
uint16_t keynet_reverse_proxy_port(const keynet_reverse_proxy *rp);
void keynet_reverse_proxy_stop(keynet_runtime *rt, keynet_reverse_proxy *rp);

/* Forward proxy: an HTTP CONNECT proxy on proxy_addr for clients presenting auth_token. */
int keynet_forward_proxy_start(keynet_runtime *rt, const char *auth_token, const char *proxy_addr,
                               const char *egress_addr, keynet_forward_proxy **out);
uint16_t keynet_forward_proxy_http_port(const keynet_forward_proxy *fp);
/* Opens (or reuses) the connection to a reverse proxy, pinned to node_id; blocks until it is
 * up or timeout_ms ran out. */
int keynet_forward_proxy_open(keynet_runtime *rt, keynet_forward_proxy *fp, const char *node_id,
                              const char *addr, uint32_t timeout_ms);
void keynet_forward_proxy_stop(keynet_runtime *rt, keynet_forward_proxy *fp);

/* The device changed networks (Wi-Fi to cellular, a new hotspot): call it from the platform's
 * network callback (NWPathMonitor, ConnectivityManager). Either proxy may be NULL. Rebinds a
 * socket whose address is gone, registers with relays again, re-probes every direct path. */
int keynet_network_changed(const keynet_forward_proxy *fp, const keynet_reverse_proxy *rp);

#ifdef __cplusplus
}
#endif

#endif /* KEYNET_H */
