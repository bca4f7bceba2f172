// keynet — public TypeScript declarations (the contract). The generated binding types are in
// native.d.ts; this file describes what `require('keynet')` exports.

import { EventEmitter } from 'node:events'

/** PEM material of a node identity. */
export interface TlsConfig {
  /** PKCS#8 private key of the leaf certificate. */
  keyPrivatePem: string
  /** Certificate chain, leaf first (a rotated identity carries its previous certificates). */
  certChainPem: string
}

/** A node identity: its node id and PEM material. */
export interface Identity {
  /** 'v' + base32hex(SHA-256 of the public key): what peers pin. */
  nodeId: string
  /** The key and certificate chain, for `start({ tlsConfig })` and `setTlsConfig`. */
  tlsConfig: TlsConfig
}

/** Generates an Ed25519 identity with a self-signed certificate. */
export declare function generateIdentity(): Promise<Identity>
/** Rotates to a fresh key whose certificate is signed by the previous key (keynet extension). */
export declare function rotateIdentity(tlsConfig: TlsConfig): Identity
/** `'v'` + base32hex(SHA-256(SubjectPublicKeyInfo)) of the first certificate in `certPem`. */
export declare function nodeIdFromCertificate(certPem: string): string
/** The original's network helpers, for code written against it. */
export declare const utils: {
  /** `host:port`, IPv6 in brackets (`'[::1]:100'`). */
  buildAddress(host: string, port?: number): string
  /** `[host, port]` of `host:port` or `[v6]:port`; the port defaults to 80. */
  parseAddress(address: string): [string, number]
  /** Whether `host` is an IPv4 or IPv6 address. */
  isValidHost(host: string): boolean
  /** `0.0.0.0` -> `127.0.0.1`, `::` -> `::1`, anything else unchanged. */
  resolvesZeroIP(host: string): string
  /** The Proxy-Authorization value for a token: `'Basic ' + base64(token)`. */
  toAuthToken(token: string): string
  /** The node id a certificate (PEM) proves; = nodeIdFromCertificate. */
  certNodeId(certPem: string): string
  /** The original's timer: `timerP` resolves and `timedOut` turns true after `ms`. */
  timerStart(ms: number): Timer
  /** Cancels a timerStart timer. */
  timerStop(timer: Timer): void
}

/**
 * The original's timer object (`utils.timerStart`), accepted as openConnection's deadline where
 * the original took one: when `timerP` resolves first the call rejects with
 * ErrorConnectionStartTimeout and `timedOut` is true. `null` there means no deadline of its own.
 */
export interface Timer {
  timer: ReturnType<typeof setTimeout> | undefined
  timedOut: boolean
  timerP: Promise<void>
}

/** A logger in the original's shape: @matrixai/logger's Logger, `console`, pino, winston... */
export interface Logger {
  error(message: string): unknown
  warn(message: string): unknown
  info(message: string): unknown
  debug(message: string): unknown
  /** @matrixai/logger's: NOTSET 0 (everything), DEBUG 1, INFO 2, WARN 3, ERROR 4. */
  getEffectiveLevel?(): number
}

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace'

/**
 * What keynet logs to stderr from now on: a filter directive (`'info'`, `'keynet_core=debug'`,
 * `'keynet_core=debug,quinn=warn'`), or null for nothing. At load it is `KEYNET_LOG` (or
 * `RUST_LOG`), else nothing. A directive that does not parse is a TypeError
 * (ERR_INVALID_ARG_VALUE).
 */
export declare function setLogFilter(directive: string | null): void
/** A fresh service owner key (64 hex digits each; keep privateKey secret). */
export declare function generateServiceOwner(): { publicKey: string; privateKey: string }
/**
 * The owner's membership (192 hex digits) admitting `nodeId` to the restricted service `name`
 * (in `opts.network`): the node offers the name with it, callers trusting the owner's
 * publicKey accept it.
 */
export declare function signServiceMember(ownerPrivateKey: string, name: string, nodeId: string, opts?: { network?: string }): string

/**
 * How a connection's packets travel now: 'direct' (to the address dialled, no NAT between),
 * 'punched' (through a NAT, after hole punching), 'relayed' (through a relay; it sees ciphertext only).
 */
export type Path = 'direct' | 'punched' | 'relayed'

/** One QUIC connection between a forward and a reverse proxy, as one side sees it now. */
export interface ConnectionInfo {
  /** The peer's node id, proven in the TLS handshake (never just claimed). */
  nodeId: string
  /** The peer's certificates, PEM, leaf first (`new crypto.X509Certificate(pem)` parses one). */
  certificates: string[]
  /**
   * The forward proxy's UDP address: on the forward proxy its own socket; on the reverse proxy
   * where the caller's packets come from (its NAT's public address when punched; for a relayed
   * peer a virtual address in 240.0.0.0/8 that names the caller's relay route, never routed).
   */
  egressHost: string
  egressPort: number
  /**
   * The reverse proxy's UDP address: on the reverse proxy its own socket; on the forward proxy
   * the address it dialled (`openConnection`'s host and port, also when relayed; a virtual one
   * after a bare node id was reached through a relay).
   */
  ingressHost: string
  ingressPort: number
  /** How the packets travel now; a 'path' event reports every change. */
  path: Path
  /** QUIC's smoothed round-trip time, in milliseconds. */
  rttMs: number
  /**
   * UDP payload bytes this side sent and received on this connection, QUIC overhead and
   * retransmissions included (all tunnels together; getStats() counts tunnel bytes).
   */
  bytesSent: number
  bytesReceived: number
  /** UDP datagrams sent, and the system calls that sent them (fewer where the kernel batches). */
  datagramsSent: number
  sendCalls: number
  /** Packets QUIC declared lost and sent again: a lossy path shows here first. */
  lostPackets: number
  /**
   * The largest UDP payload QUIC sends on the path now (its path MTU, in bytes): 1200 to 1452
   * across the internet or through a relay, more on a LAN or on loopback (up to 6400).
   */
  mtu: number
  /**
   * The connection resumed an earlier TLS session with this node (a forward proxy reconnecting
   * to a node it verified before): no certificates exchanged, and the first tunnel's header
   * travelled in 0-RTT, so the tunnel opened about one round trip after the first packet.
   */
  resumed: boolean
}

export interface ConnectionEvent extends ConnectionInfo {
  /**
   * For `close`: 'local' | 'remote' | 'keepaliveTimeout' | 'stopped' | 'relayLost' | an error text.
   * For `path`: a PathReason.
   */
  reason?: string
  /** For `path`: the path before the change (`path` is the new one). */
  previousPath?: Path
}

/**
 * Why a connection changed path: 'upgrade' (a rendezvous, or a dead direct path that answers
 * again), 'probeTimeout' (the direct path stopped answering its probes: back to the relay),
 * 'rebinding' (the peer's address changed), 'networkChanged'.
 */
export type PathReason = 'upgrade' | 'probeTimeout' | 'rebinding' | 'networkChanged'

/** A relay link changed state (the `relay` event): its new status, as getRelayStatus() gives it. */
export type RelayEvent = RelayStatus

export type ConnectionEventName = 'connection' | 'close' | 'path'

/** Timing options shared by both proxies, in milliseconds. */
export interface ConnOptions {
  /** Budget to establish a connection: punch + handshake + ack. Default 20000. */
  connConnectTime?: number
  /** Silence after which a connection is declared dead. Default 20000. */
  connKeepAliveTimeoutTime?: number
  /** Keepalive cadence; keep it below the NAT's UDP timeout. Default 1000. */
  connKeepAliveIntervalTime?: number
  /** Punch datagram cadence while punching. Default 50. */
  connPunchIntervalTime?: number
  /** Grace for an orderly close before a hard close. Default 1000. */
  connEndTime?: number
}

/** A proxy's constructor options: the timing, and where its log lines go. */
export interface ProxyOptions extends ConnOptions {
  /**
   * Receives this proxy's log lines (its own only), each as one string to the method of its
   * level (trace lines go to debug). Unset: none (stderr follows setLogFilter either way).
   */
  logger?: Logger
  /** The least severe level `logger` gets. Default: the logger's getEffectiveLevel(), else 'info'. */
  logLevel?: LogLevel
}

/** Options of calls that end something on purpose (stop, closeConnection). */
export interface EndOptions {
  /**
   * Aborting cuts the drain short: tunnels still open are reset at once and the call resolves
   * (it does not reject: what it ends, it still ends).
   */
  signal?: AbortSignal
}

/**
 * Discovery on the BitTorrent mainline DHT: announce this node id, look others up by node id.
 * `discovery: true` = all defaults (public mainline bootstrap nodes). Off when omitted: then no
 * DHT is contacted at all.
 */
export interface DiscoveryOptions {
  /** 'host:port' of the DHT nodes to join through (a private network); [] = join nobody
   * (the first node). Default: the public mainline bootstrap nodes. */
  bootstrap?: string[]
  /** Announce this proxy's node id and address. Default true. */
  announce?: boolean
  /** Re-announce cadence in ms. Default 600000 (10 min). */
  reannounceInterval?: number
  /**
   * IPv4 host of the DHT's UDP socket. Default: the proxy's own UDP host; when that is loopback
   * and the bootstrap nodes are elsewhere (the public DHT by default), the address of the
   * interface that routes to them (start() fails with ERR_INVALID_ARG_VALUE when none does).
   */
  host?: string
  /** Port of the DHT's UDP socket (needs host). Default 0 (any free port). */
  port?: number
  /** Answer other nodes' queries from the start (always-on, reachable nodes). Default false. */
  server?: boolean
  /**
   * Publish this proxy's direct addresses in its record. Default true. `false` publishes only
   * its relays: callers reach it through its home relay first, and its IPs stay private until a
   * rendezvous moves the connection to a punched path.
   */
  announceAddresses?: boolean
  /**
   * How long (ms) a relay link this proxy opened on its own, to reach a node through that node's
   * home relay, stays after its last relayed connection closed. Default 60000.
   */
  relayIdleTime?: number
  /**
   * With no `relay`/`relays` given: find relays published on the DHT under this network name
   * (`keynet-relay --dht ... --publish NAME`), probe them, and register with the nearest three
   * (their node ids are learnt on first contact: a relay only carries end-to-end encrypted
   * packets). start() goes on without a relay when none answers.
   */
  relayNetwork?: string
  /**
   * The namespace of service names (so unrelated users of the public DHT do not share names).
   * Default '' (the default namespace).
   */
  network?: string
  /**
   * Service names this reverse proxy offers: 1 to 63 characters among a-z, 0-9, '-', '_'
   * (upper case folded), at most 16; `{ name, membership }` for a restricted name (see
   * signServiceMember). Announced with the node's record, every reannounceInterval; withdrawn
   * on stop().
   */
  services?: Array<string | { name: string; membership?: string }>
  /**
   * Restricted names, for a caller: only these node ids, and nodes the owner (public key, 64 hex
   * digits) admitted, are connected to. A name not listed is unrestricted: a hint any node can
   * answer (each is still proven by its node id in the TLS handshake).
   */
  serviceTrust?: Record<string, { nodeIds?: string[]; owner?: string }>
}

/** A replica a service lookup found (`lookupService()`). */
export interface ServiceMember {
  /** The replica's node id (a connection to it pins it). */
  nodeId: string
  /** How long ago the replica signed its entry. */
  ageMs: number
  /** The name is restricted (serviceTrust) and this node belongs to it. */
  verified: boolean
  addresses: FoundAddress[]
  relays: RelayHint[]
}

/** A relay a node's signed record names (`locate()`). */
export interface RelayHint {
  /** Its UDP (QUIC) address. */
  host: string
  port: number
  /** Its node id (pinned when dialled). */
  nodeId: string
  /** Its TLS/WebSocket port on the same host. */
  tcpPort: number
  /** The node reaches it over QUIC / TLS+WebSocket. */
  quic: boolean
  websocket: boolean
}

/** What `locate()` found for a node id. */
export interface Located {
  /** Direct candidates, the node's signed record first. */
  addresses: FoundAddress[]
  /** From the node's newest signed record, its home relay first. */
  relays: RelayHint[]
}

/** An address found on the DHT for a node id: a hint; the TLS pin on the node id decides. */
export interface FoundAddress {
  /** A UDP address the node announced (or a hint others stored for it). */
  host: string
  port: number
  /** Milliseconds since the node signed this address; null for unsigned hints. */
  ageMs: number | null
  /** From a record signed by the node's own Ed25519 key (known once the node was verified). */
  signed: boolean
}

export interface LookupOptions {
  /** Lookup budget in ms. Default 10000. */
  timeout?: number
  /** Aborting rejects the call with the signal's reason (the query itself ends by its timeout). */
  signal?: AbortSignal
}

/** The `address` event: this proxy's announced addresses changed. */
export interface AddressEvent {
  addresses: Array<{ host: string; port: number }>
}

export interface ForwardProxyOptions extends ProxyOptions {
  /** The token gRPC clients present: `grpc_proxy=http://TOKEN@127.0.0.1:PORT`. */
  authToken: string
}

export interface ForwardProxyStartOptions {
  /** HTTP CONNECT listener host. Default '127.0.0.1'. */
  proxyHost?: string
  /** HTTP CONNECT listener port; 0 (default) picks a free one (getProxyPort()). */
  proxyPort?: number
  /** UDP (QUIC) socket host. Default '127.0.0.1' (pass '0.0.0.0' to reach other machines). */
  egressHost?: string
  /** UDP port; 0 (default) picks a free one (getEgressPort()). */
  egressPort?: number
  /** Identity; a fresh one is generated when omitted. */
  tlsConfig?: TlsConfig
  /** The token CONNECT clients present from this start on (ignored when already running). */
  authToken?: string
  /** Join the DHT; enables openConnection(nodeId) and CONNECT to 'NODEID.keynet:PORT'. */
  discovery?: DiscoveryOptions | boolean
  /** Register with a relay at start: node ids the DHT does not find (or all, without discovery)
   * are reached through it, by openConnection(nodeId) and CONNECT to 'NODEID.keynet:PORT'. */
  relay?: RelayOptions
  /**
   * More relays to register with (after `relay`; up to 8). The proxy picks its home relay by
   * round trip (moving only to one under two thirds of the home's and 10 ms faster), names it
   * first in its discovery records, and re-homes within seconds when it dies (with several
   * relays, a relay silent for 3 s counts as dead). start() resolves once one registered.
   */
  relays?: RelayOptions[]
  /** CONNECT clients (and their tunnels) at once; more are answered 503 (default 8192). */
  maxConnections?: number
  /** Aborting gives the start up: it rejects with an AbortError and nothing is left running. */
  signal?: AbortSignal
}

export interface OpenOptions {
  /** Overrides connConnectTime for this call. */
  timeout?: number
  signal?: AbortSignal
}

/** How a proxy reaches a relay (`keynet-relay` or `Relay`). */
export interface RelayOptions {
  /** The relay's UDP (QUIC) address. */
  host: string
  port: number
  /** The relay's node id: pinned like any peer's. */
  nodeId: string
  /** The relay's TCP (TLS/WebSocket) port; default `port`. */
  tcpPort?: number
  /** 'auto' (default): QUIC; WebSocket over TCP joins the race after 1 s (UDP blocked). */
  transport?: 'auto' | 'quic' | 'websocket'
  /** Ping cadence toward the relay, ms (default 15000); a relay silent twice as long is redialled. */
  keepaliveInterval?: number
  /** ReverseProxy: ask for a public TCP port on the relay, carried to the server (see getRelayStatus). */
  publicPort?: boolean
  /** Try to move relayed connections to a punched path through the relay's rendezvous (default true). */
  upgrade?: boolean
  /** Wait this long (ms) after a relayed connection is up before the rendezvous (default 0). */
  upgradeDelay?: number
  /** The relay's registration token, when it requires one. */
  token?: string
}

/** A relay link as a proxy sees it. */
export interface RelayStatus {
  /** The relay's UDP address and node id, as given. */
  host: string
  port: number
  nodeId: string
  /** 'up': registered; 'connecting': dialling (first time or after a loss); 'down': failed, retrying later. */
  state: 'connecting' | 'up' | 'down'
  /** What carries the link now (null while not up). */
  transport: 'quic' | 'websocket' | null
  /** This proxy's address as the relay sees it. */
  observedHost: string | null
  observedPort: number | null
  /** The relay port plain TCP clients use to reach this proxy's server (publicPort: true). */
  publicPort: number | null
  /** Why the last attempt failed ('[Code] message'), while down. */
  error: string | null
  /** From getRelays(): whether this is the proxy's home relay (the one its records name first). */
  home?: boolean
}

/** An EventEmitter: `events.once(fp, 'close')`, `events.on(fp, 'connection')` and every
 * EventEmitter method work; listeners run with `this` = the proxy. */
export declare class ForwardProxy extends EventEmitter {
  constructor(opts: ForwardProxyOptions)
  /** The token CONNECT clients must present (the original's readonly field). */
  readonly authToken: string
  /** The timing in use (the original's readonly fields; defaults filled in). */
  readonly connConnectTime: number
  readonly connKeepAliveTimeoutTime: number
  readonly connKeepAliveIntervalTime: number
  readonly connPunchIntervalTime: number
  /** How long an end on purpose may drain (closeConnection, stop(), removeConnection): the
   * tunnels deliver what is in flight and both TCP ends read a FIN; what is left is reset. */
  readonly connEndTime: number
  /** Once started, the proxy keeps the Node process alive until stop() (see unref()). */
  start(opts?: ForwardProxyStartOptions | string): Promise<void>
  /** Ends every connection (tunnels drain up to connEndTime) and frees the ports. */
  stop(opts?: EndOptions): Promise<void>
  /** Let the process exit while the proxy runs (as net.Server#unref). */
  unref(): this
  ref(): this
  getNodeId(): string
  /** The HTTP CONNECT listener's address (throws ErrorForwardProxyNotRunning when stopped). */
  getProxyHost(): string
  getProxyPort(): number
  /** The UDP (QUIC) socket's address: the bound host, e.g. '127.0.0.1' or '0.0.0.0'. */
  getEgressHost(): string
  getEgressPort(): number
  /** = getProxyPort() (first form). */
  getHttpPort(): number
  /** = getEgressPort() (first form). */
  getSocketPort(): number
  /** Opens (or reuses) the connection and tracks it under host:port. With `relay`, the node is
   * reached through the relay (path 'relayed'; host:port is only the tracking key), then moved to
   * a punched path when the relay's rendezvous succeeds (a 'path' event); CONNECTs to host:port
   * use it. Rejects ErrorNodeNotFound when the node is not registered with the relay. */
  openConnection(nodeId: string, host: string, port: number, opts?: OpenOptions & { relay?: RelayOptions }): Promise<ConnectionInfo>
  openConnection(host: string, port: number, opts?: OpenOptions & { nodeId?: string; relay?: RelayOptions }): Promise<ConnectionInfo>
  /** With discovery: finds the node on the DHT, dials every address found at once, and resolves
   * the connection that proved the node id (rejects ErrorNodeNotFound, ErrorCertChainUnclaimed
   * when only other nodes answered, or ErrorConnectionStartTimeout). */
  openConnection(nodeId: string, opts?: OpenOptions): Promise<ConnectionInfo>
  /** With discovery: one replica of a service name (round robin among the trusted ones, the
   * next on failure); rejects ErrorServiceNotFound when none was found or none answered. A
   * CONNECT to 'NAME.service.keynet:PORT' does the same. */
  openConnection(opts: OpenOptions & { service: string }): Promise<ConnectionInfo>
  /** With discovery: the replicas of a service name, newest first. */
  lookupService(name: string, opts?: LookupOptions): Promise<ServiceMember[]>
  /**
   * The original's form: `timer` (utils.timerStart) is the deadline instead of connConnectTime;
   * `null` means none of its own.
   */
  openConnection(nodeId: string, host: string, port: number, timer: Timer | null): Promise<ConnectionInfo>
  /** Ends the connection: its tunnels drain (see connEndTime); resolves once it closed. */
  closeConnection(host: string, port: number, opts?: EndOptions): Promise<void>
  /** Live connections; 0 when not running (as the original). */
  getConnectionCount(): number
  /** Every live connection (throws ErrorForwardProxyNotRunning when stopped). */
  getConnections(): ConnectionInfo[]
  /** Connections by path, tunnels, bytes, failed attempts by error code. */
  getStats(): ProxyStats
  getConnectionInfoByIngress(host: string, port: number): ConnectionInfo | undefined
  /** The connection carrying the tunnel of the CONNECT client at this address. */
  getConnectionInfoByClient(clientHost: string, clientPort: number): ConnectionInfo | undefined
  /** Identity used by connections opened afterwards. */
  setTlsConfig(tlsConfig: TlsConfig): void
  /** The original's name for setTlsConfig. */
  setTLSConfig(tlsConfig: TlsConfig): void
  /** First form: track a directly connectable reverse proxy (connects on first use). */
  addDirectConnection(port: number, host: string): void
  /**
   * First form: connect while punching, for at most `attempts` (default 50) punch intervals
   * (connPunchIntervalTime each); resolves whether the connection came up.
   */
  addNatConnection(port: number, host: string, attempts?: number): Promise<boolean>
  /** First form: forget the address and close its connection. */
  removeConnection(port: number, host: string): void
  /** With discovery: the addresses the DHT holds for a node id, its signed record first. */
  lookup(nodeId: string, opts?: LookupOptions): Promise<FoundAddress[]>
  /** Direct candidates and the relays (home first) the DHT holds for a node id. */
  locate(nodeId: string, opts?: LookupOptions): Promise<Located>
  /** With discovery: the addresses announced last ([] before the first announce). */
  getAnnouncedAddresses(): Array<{ host: string; port: number }>
  /** Every relay link (the start one and those openConnection used). */
  getRelayStatus(): RelayStatus[]
  on(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  once(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  off(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  on(event: 'address', listener: (e: AddressEvent) => void): this
  once(event: 'address', listener: (e: AddressEvent) => void): this
  off(event: 'address', listener: (e: AddressEvent) => void): this
  on(event: 'relay', listener: (e: RelayEvent) => void): this
  once(event: 'relay', listener: (e: RelayEvent) => void): this
  off(event: 'relay', listener: (e: RelayEvent) => void): this
  /** EventEmitter's own; keynet never emits 'error' (see the README's Errors). */
  on(event: 'error', listener: (e: Error) => void): this
  once(event: 'error', listener: (e: Error) => void): this
  off(event: 'error', listener: (e: Error) => void): this
  /**
   * The device changed networks (call it from the platform's network callback; on Linux it is
   * noticed without being asked): rebinds the UDP socket if its address is gone, registers with
   * relays again, re-probes every direct path. Open tunnels go on.
   */
  networkChanged(): void
}

export interface ReverseProxyStartOptions {
  /** The local server tunnels are carried to. Default '127.0.0.1'. */
  serverHost?: string
  serverPort?: number
  /** First-form names of serverHost/serverPort. */
  grpcHost?: string
  grpcPort?: number
  /** UDP (QUIC) socket host. Default '127.0.0.1' (pass '0.0.0.0' to be reachable from other machines). */
  ingressHost?: string
  ingressPort?: number
  tlsConfig?: TlsConfig
  /** Only these node ids may connect (checked in the TLS handshake). */
  allowedNodeIds?: string[]
  /** Join the DHT and announce this node id, so callers need only the node id. */
  discovery?: DiscoveryOptions | boolean
  /** Register with a relay (start() resolves once registered, rejects if the first attempt
   * fails); kept alive and re-registered with backoff when the relay goes away. */
  relay?: RelayOptions
  /**
   * More relays to register with (after `relay`; up to 8). The proxy picks its home relay by
   * round trip (moving only to one under two thirds of the home's and 10 ms faster), names it
   * first in its discovery records, and re-homes within seconds when it dies (with several
   * relays, a relay silent for 3 s counts as dead). start() resolves once one registered.
   */
  relays?: RelayOptions[]
  /** Connections from forward proxies at once; more are refused in the handshake (default 4096). */
  maxConnections?: number
  /** Tunnels at once on one connection (each a TCP connection to the server); more wait until
   * some end (default 1024; granted 64 at first, doubling with use). */
  maxStreamsPerConnection?: number
  /** Aborting gives the start up: it rejects with an AbortError and nothing is left running. */
  signal?: AbortSignal
}

/** An EventEmitter, as ForwardProxy. */
export declare class ReverseProxy extends EventEmitter {
  constructor(opts?: ProxyOptions)
  /** The timing in use (the original's readonly fields; defaults filled in). */
  readonly connConnectTime: number
  readonly connKeepAliveTimeoutTime: number
  readonly connKeepAliveIntervalTime: number
  readonly connPunchIntervalTime: number
  /** How long an end on purpose may drain (closeConnection, stop(), removeConnection): the
   * tunnels deliver what is in flight and both TCP ends read a FIN; what is left is reset. */
  readonly connEndTime: number
  start(opts: ReverseProxyStartOptions): Promise<void>
  start(grpcHost: string, grpcPort: number): Promise<void>
  /**
   * The first (seed-era) form: the server at grpcHost (default '127.0.0.1'):grpcPort; port 0
   * (the default) means no server yet: every tunnel is refused (502) until a restart names one.
   */
  start(opts?: { grpcHost?: string; grpcPort?: number }): Promise<void>
  /** Ends every connection (tunnels drain up to connEndTime) and frees the ports. */
  stop(opts?: EndOptions): Promise<void>
  /** Let the process exit while the proxy runs (as net.Server#unref). */
  unref(): this
  ref(): this
  getNodeId(): string
  /** The UDP (QUIC) socket's address (throws ErrorReverseProxyNotRunning when stopped). */
  getIngressHost(): string
  getIngressPort(): number
  /** The server tunnels are carried to. */
  getServerHost(): string
  getServerPort(): number
  /** = getIngressPort() (first form). */
  getSocketPort(): number
  /** Punch toward a forward proxy until its connection arrives; rejects with ErrorConnectionStartTimeout. */
  openConnection(egressHost: string, egressPort: number, opts?: OpenOptions): Promise<void>
  /** The original's form: `timer` is the deadline instead of connConnectTime; null: none. */
  openConnection(egressHost: string, egressPort: number, timer: Timer | null): Promise<void>
  /** Ends the connection: its tunnels drain (see connEndTime); resolves once it closed. */
  closeConnection(egressHost: string, egressPort: number, opts?: EndOptions): Promise<void>
  /** Live connections; 0 when not running (as the original). */
  /**
   * Changes which node ids may connect while running (null: any), as `allowedNodeIds` at start:
   * later handshakes are checked against the new list; connections of nodes no longer on it end
   * (their tunnels drain). `keynet reverse` does it on SIGHUP.
   */
  setAllowedNodeIds(ids: string[] | null): void
  /** Every live connection (throws ErrorReverseProxyNotRunning when stopped). */
  getConnections(): ConnectionInfo[]
  getConnectionCount(): number
  /** Connections by path, tunnels, bytes, failed attempts by error code. */
  getStats(): ProxyStats
  getConnectionInfoByEgress(egressHost: string, egressPort: number): ConnectionInfo | undefined
  /** Who is calling: the local TCP source address the server sees for a tunnel -> its connection. */
  getConnectionInfoByProxy(proxyHost: string, proxyPort: number): ConnectionInfo | undefined
  setTlsConfig(tlsConfig: TlsConfig): void
  /** The original's name for setTlsConfig. */
  setTLSConfig(tlsConfig: TlsConfig): void
  /**
   * First form: punch toward a forward proxy `attempts` times (default 50), one per
   * connPunchIntervalTime; resolves whether its connection arrived by the end of the last.
   */
  addNatConnection(port: number, host: string, attempts?: number): Promise<boolean>
  addDirectConnection(port: number, host: string): void
  removeConnection(port: number, host: string): void
  /** With discovery: the addresses the DHT holds for a node id, its signed record first. */
  lookup(nodeId: string, opts?: LookupOptions): Promise<FoundAddress[]>
  /** Direct candidates and the relays (home first) the DHT holds for a node id. */
  locate(nodeId: string, opts?: LookupOptions): Promise<Located>
  /** With discovery: the addresses announced last ([] before the first announce). */
  getAnnouncedAddresses(): Array<{ host: string; port: number }>
  /** The relay link, or null without `relay` at start. */
  getRelayStatus(): RelayStatus | null
  /** Every relay link (`relay` and `relays`), `home` marking the home relay. */
  getRelays(): RelayStatus[]
  /** With discovery: starts offering a service name (announced at once). */
  announceService(name: string, opts?: { membership?: string }): void
  /** Stops offering a service name (callers skip this node at once); false if not offered. */
  withdrawService(name: string): boolean
  /** The service names offered now. */
  getServices(): string[]
  on(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  once(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  off(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  on(event: 'address', listener: (e: AddressEvent) => void): this
  once(event: 'address', listener: (e: AddressEvent) => void): this
  off(event: 'address', listener: (e: AddressEvent) => void): this
  on(event: 'relay', listener: (e: RelayEvent) => void): this
  once(event: 'relay', listener: (e: RelayEvent) => void): this
  off(event: 'relay', listener: (e: RelayEvent) => void): this
  /** EventEmitter's own; keynet never emits 'error' (see the README's Errors). */
  on(event: 'error', listener: (e: Error) => void): this
  once(event: 'error', listener: (e: Error) => void): this
  off(event: 'error', listener: (e: Error) => void): this
  /**
   * The device changed networks (call it from the platform's network callback; on Linux it is
   * noticed without being asked): rebinds the UDP socket if its address is gone, registers with
   * relays again, re-probes every direct path. Open tunnels go on.
   */
  networkChanged(): void
}

export interface RelayStartOptions {
  /** UDP (QUIC) host and port. Default '127.0.0.1', 0. */
  host?: string
  port?: number
  /** TCP (TLS/WebSocket) port on the same host; default the UDP port number (any free one if
   * that is taken and port was 0). */
  tcpPort?: number
  tlsConfig?: TlsConfig
  /** Only these node ids may connect and register. */
  allowedNodeIds?: string[]
  /** Registration to be reached requires this token. */
  token?: string
  /** Take *caller* registrations (default true): a node registers without the token only to
   * call nodes registered here (a caller dialling its callee's home relay on demand). A caller
   * is reachable only by the nodes it called, gets no public port and announces nothing.
   * `false`: only token holders are served. */
  callers?: boolean
  /** Public TCP ports for registered nodes (on by default; false refuses requests). */
  publicPorts?: false | {
    /** IP the ports are bound on; default `host`. */
    host?: string
    /** Allocate from [first, last]; default any free port. */
    range?: [number, number]
    /** How long (ms) a disconnected node's port is kept for it; default 180 minutes. */
    retention?: number
    /** Save allocations here and restore them at start. */
    stateFile?: string
    /** Same as the top-level `maxClients` (accepted here too). */
    maxClients?: number
  }
  // The relay's limits (`Relay.limits` lists them with their defaults; `keynet-relay --help`
  // has the same as flags). Times are in ms.
  /** Relay sessions at once, both transports (default 10000). */
  maxConnections?: number
  /** Sessions at once from one IP, an IPv6 /64 (default 100). */
  maxConnectionsPerIp?: number
  /** New sessions a second from one IP, sustained (default 5). */
  handshakeRate?: number
  /** New sessions from one IP in a burst (default 20). */
  handshakeBurst?: number
  /** Close a session not registered this long after its handshake, ms (default 10000). */
  registerTimeout?: number
  /** Disconnect a node silent this long, or reading nothing this long, ms (default 45000). */
  nodeTimeout?: number
  /** Most distinct nodes one node may start sending packets to (default 64). */
  maxPeers?: number
  /** Largest relayed datagram, 1200 to 1500 bytes (default 1500). */
  maxDatagram?: number
  /** Bytes of relayed packets queued toward one node; beyond, packets drop (default 1048576). */
  queueBytes?: number
  /** Rendezvous requests of one node in a burst (default 16). */
  rendezvousBurst?: number
  /** Rendezvous requests of one node a second, sustained (default 4). */
  rendezvousRate?: number
  /** Public ports held at once, connected and retained nodes (default 1024). */
  maxPorts?: number
  /** Public ports held at once for nodes from one IP (default 4). */
  maxPortsPerIp?: number
  /** Clients at once on one public port (default 256). */
  maxClients?: number
  /** Public-port clients at once on the whole relay (default 4096). */
  maxPublicClients?: number
  /** Reset a public client that accepts no byte this long while data waits, ms (default 30000). */
  stallTimeout?: number
}

/** A proxy's counters (`getStats()`). */
export interface ProxyStats {
  /** Connections by their path now. */
  connections: { direct: number; punched: number; relayed: number }
  tunnelsOpen: number
  tunnelsTotal: number
  /** Tunnel bytes from the local TCP side into QUIC. */
  bytesSent: number
  /** Tunnel bytes from QUIC to the local TCP side. */
  bytesReceived: number
  /** Failed connection attempts by error code; `maxConnections` for refusals at the limit. */
  failures: Record<string, number>
}

/** One of the relay's limits. */
export interface RelayLimit {
  /** Its `Relay.start()` option. */
  key: string
  unit: 'count' | 'bytes' | 'ms' | 'perSecond'
  defaultValue: number
  doc: string
}

/** What a relay holds, carried, dropped and refused (`Relay.getMetrics()`). */
export interface RelayMetrics {
  /** Sessions open, by transport. */
  sessions: { quic: number; websocket: number }
  registeredNodes: number
  /** Public ports held (connected and retained nodes). */
  allocations: number
  publicClients: number
  /** Bytes of relayed packets queued toward nodes now. */
  queuedBytes: number
  /** Addresses the admission tables remember (bounded). */
  trackedAddresses: number
  packetsRelayed: number
  bytesRelayed: number
  /** Of `packetsRelayed`, those sent on their target's UDP channel (`keynet-relay/3` over QUIC);
   * the rest went as frames on the target's relay stream. */
  packetsOnChannel: number
  rendezvousSent: number
  /** Public clients reset for accepting no byte for `stallTimeout`. */
  stalledResets: number
  /** Dropped packets by reason: `queue_full`, `unknown_peer`, `peer_limit`, `too_large`,
   * `bad_channel` (a UDP channel datagram with an unknown key, or from an address not its session's). */
  drops: Record<string, number>
  /** Refusals by reason: `max_connections`, `max_connections_per_ip`, `handshake_rate`,
   * `handshake`, `token`, `register_timeout`, `malformed`, `not_reading`, `no_relayed_traffic`,
   * `rendezvous_rate`, `no_port`, `max_clients`. */
  refusals: Record<string, number>
}

/** The relay hub (same server as the keynet-relay binary). */
export declare class Relay {
  constructor(opts?: ConnOptions)
  start(opts?: RelayStartOptions): Promise<void>
  /** Stops serving: every session ends, the ports are freed. */
  stop(): Promise<void>
  /** Let the process exit while the relay runs (as net.Server#unref). */
  unref(): this
  ref(): this
  getNodeId(): string
  getHost(): string
  /** UDP (QUIC) port. */
  getPort(): number
  /** TCP (TLS/WebSocket) port. */
  getTcpPort(): number
  /** Node ids registered now, sorted. */
  getRegisteredNodeIds(): string[]
  /** Public ports held now (connected and retained nodes). */
  getAllocations(): Array<{ nodeId: string; port: number }>
  /** Counters and gauges. */
  getMetrics(): RelayMetrics
  /** The same in the Prometheus text format. */
  getMetricsText(): string
  /** Every limit `start()` takes, with its default. */
  static readonly limits: ReadonlyArray<RelayLimit>
}

/**
 * The error classes, with their hierarchy: every error keynet throws or rejects with is
 * one of these (or a TypeError/RangeError for a bad argument, or an AbortError) and carries
 * `code` = its class name. A namespace, so each class is both a value (`instanceof
 * errors.ErrorCertChain`) and a type (`let e: errors.ErrorCertChain`); only `errors` itself is
 * exported by index.js, never the classes at the top level.
 */
export declare namespace errors {
  /**
   * Base of every keynet error. As in the original: `code` is the class name, `description`
   * what the class means, `exitCode` a sysexits value a CLI can exit with, `data` an object
   * (`{}` unless given). Each class also has `description` and `exitCode` as static fields.
   */
  class ErrorNetwork extends Error {
    constructor(message?: string, options?: { cause?: unknown; data?: Record<string, unknown> })
    static readonly description: string
    static readonly exitCode: number
    code: string
    description: string
    exitCode: number
    data: Record<string, unknown>
  }
  class ErrorForwardProxy extends ErrorNetwork {}
  class ErrorForwardProxyNotRunning extends ErrorForwardProxy {}
  class ErrorForwardProxyAuth extends ErrorForwardProxy {}
  class ErrorForwardProxyInvalidUrl extends ErrorForwardProxy {}
  class ErrorForwardProxyMissingNodeId extends ErrorForwardProxy {}
  class ErrorReverseProxy extends ErrorNetwork {}
  class ErrorReverseProxyNotRunning extends ErrorReverseProxy {}
  class ErrorRelay extends ErrorNetwork {}
  class ErrorRelayNotRunning extends ErrorRelay {}
  class ErrorConnection extends ErrorNetwork {}
  /** The original's; keynet never throws it (there is no per-tunnel connection object). */
  class ErrorConnectionNotRunning extends ErrorConnection {}
  /** The original's; keynet never throws it (no uTP composition). */
  class ErrorConnectionComposed extends ErrorConnection {}
  /** The original's; keynet never throws it (no uTP composition). */
  class ErrorConnectionNotComposed extends ErrorConnection {}
  /** The original's; keynet never throws it (malformed datagrams are dropped). */
  class ErrorConnectionMessageParse extends ErrorConnection {}
  class ErrorConnectionTimeout extends ErrorConnection {}
  /** The original's; keynet never throws it (an end that does not finish within connEndTime is reset). */
  class ErrorConnectionEndTimeout extends ErrorConnection {}
  class ErrorConnectionStart extends ErrorConnection {}
  class ErrorConnectionStartTimeout extends ErrorConnectionStart {}
  /** The original's; keynet never throws it (no uTP composition). */
  class ErrorConnectionCompose extends ErrorConnection {}
  /** The original's; keynet never throws it (no uTP composition). */
  class ErrorConnectionComposeTimeout extends ErrorConnectionCompose {}
  class ErrorCertChain extends ErrorNetwork {}
  class ErrorCertChainUnclaimed extends ErrorCertChain {}
  class ErrorCertChainEmpty extends ErrorCertChain {}
  class ErrorCertChainBroken extends ErrorCertChain {}
  class ErrorCertChainDateInvalid extends ErrorCertChain {}
  /** The original's; keynet never throws it (node ids come from the key, not the common name). */
  class ErrorCertChainNameInvalid extends ErrorCertChain {}
  class ErrorCertChainKeyInvalid extends ErrorCertChain {}
  class ErrorCertChainSignatureInvalid extends ErrorCertChain {}
  /** The original's; keynet never throws it (hosts are IP addresses, never resolved). */
  class ErrorHostnameResolutionFailed extends ErrorNetwork {}
  /** Discovery (or a relay) found no address for the node id. */
  class ErrorNodeNotFound extends ErrorConnectionStart {}
  class ErrorServiceNotFound extends ErrorConnectionStart {}
  /** PEM material that cannot be used (not PEM, key does not match the leaf certificate). */
  class ErrorInvalidTlsConfig extends ErrorNetwork {}
}
