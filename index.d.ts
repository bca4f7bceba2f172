// keynet — public TypeScript declarations (API.md). The generated binding types are in
// native.d.ts; this file describes what `require('keynet')` exports.

/** PEM material of a node identity. */
export interface TlsConfig {
  /** PKCS#8 private key of the leaf certificate. */
  keyPrivatePem: string
  /** Certificate chain, leaf first (a rotated identity carries its previous certificates). */
  certChainPem: string
}

/** A node identity: its node id and PEM material. */
export interface Identity {
  nodeId: string
  tlsConfig: TlsConfig
}

/** Generates an Ed25519 identity with a self-signed certificate. */
export declare function generateIdentity(): Promise<Identity>
/** Rotates to a fresh key whose certificate is signed by the previous key (keynet extension). */
export declare function rotateIdentity(tlsConfig: TlsConfig): Identity
/** `'v'` + base32hex(SHA-256(SubjectPublicKeyInfo)) of the first certificate in `certPem`. */
export declare function nodeIdFromCertificate(certPem: string): string

export type Path = 'direct' | 'punched' | 'relayed'

export interface ConnectionInfo {
  nodeId: string
  /** The peer's certificates, PEM, leaf first. */
  certificates: string[]
  /** The forward proxy's UDP address. */
  egressHost: string
  egressPort: number
  /** The reverse proxy's UDP address. */
  ingressHost: string
  ingressPort: number
  path: Path
  rttMs: number
  bytesSent: number
  bytesReceived: number
}

export interface ConnectionEvent extends ConnectionInfo {
  /** For `close`: 'local' | 'remote' | 'keepaliveTimeout' | 'stopped' | an error text. */
  reason?: string
}

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

export interface ForwardProxyOptions extends ConnOptions {
  /** The token gRPC clients present: `grpc_proxy=http://TOKEN@127.0.0.1:PORT`. */
  authToken: string
}

export interface ForwardProxyStartOptions {
  /** HTTP CONNECT listener host. Default '127.0.0.1'. */
  proxyHost?: string
  proxyPort?: number
  /** UDP (QUIC) socket host. Default '127.0.0.1' (pass '0.0.0.0' to reach other machines). */
  egressHost?: string
  egressPort?: number
  /** Identity; a fresh one is generated when omitted. */
  tlsConfig?: TlsConfig
  authToken?: string
}

export interface OpenOptions {
  /** Overrides connConnectTime for this call. */
  timeout?: number
  signal?: AbortSignal
}

export declare class ForwardProxy {
  constructor(opts: ForwardProxyOptions)
  start(opts?: ForwardProxyStartOptions | string): Promise<void>
  stop(): Promise<void>
  getNodeId(): string
  getProxyHost(): string
  getProxyPort(): number
  getEgressHost(): string
  getEgressPort(): number
  /** = getProxyPort() (first form). */
  getHttpPort(): number
  /** = getEgressPort() (first form). */
  getSocketPort(): number
  openConnection(nodeId: string, host: string, port: number, opts?: OpenOptions): Promise<void>
  openConnection(host: string, port: number, opts?: OpenOptions & { nodeId?: string }): Promise<void>
  closeConnection(host: string, port: number): Promise<void>
  getConnectionCount(): number
  getConnectionInfoByIngress(host: string, port: number): ConnectionInfo | undefined
  /** The connection carrying the tunnel of the CONNECT client at this address. */
  getConnectionInfoByClient(clientHost: string, clientPort: number): ConnectionInfo | undefined
  /** Identity used by connections opened afterwards. */
  setTlsConfig(tlsConfig: TlsConfig): void
  /** First form: track a directly connectable reverse proxy (connects on first use). */
  addDirectConnection(port: number, host: string): void
  /** First form: connect while punching; resolves whether the connection came up. */
  addNatConnection(port: number, host: string, attempts?: number): Promise<boolean>
  /** First form: forget the address and close its connection. */
  removeConnection(port: number, host: string): void
  on(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  once(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  off(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
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
}

export declare class ReverseProxy {
  constructor(opts?: ConnOptions)
  start(opts: ReverseProxyStartOptions): Promise<void>
  start(grpcHost: string, grpcPort: number): Promise<void>
  stop(): Promise<void>
  getNodeId(): string
  getIngressHost(): string
  getIngressPort(): number
  getServerHost(): string
  getServerPort(): number
  /** = getIngressPort() (first form). */
  getSocketPort(): number
  /** Punch toward a forward proxy until its connection arrives; rejects with ErrorConnectionStartTimeout. */
  openConnection(egressHost: string, egressPort: number, opts?: OpenOptions): Promise<void>
  closeConnection(egressHost: string, egressPort: number): Promise<void>
  getConnectionCount(): number
  getConnectionInfoByEgress(egressHost: string, egressPort: number): ConnectionInfo | undefined
  /** Who is calling: the local TCP source address the server sees for a tunnel -> its connection. */
  getConnectionInfoByProxy(proxyHost: string, proxyPort: number): ConnectionInfo | undefined
  setTlsConfig(tlsConfig: TlsConfig): void
  addNatConnection(port: number, host: string, attempts?: number): Promise<boolean>
  addDirectConnection(port: number, host: string): void
  removeConnection(port: number, host: string): void
  on(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  once(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
  off(event: ConnectionEventName, listener: (e: ConnectionEvent) => void): this
}

/** Base of every keynet error; `code` is the class name. */
declare class ErrorNetwork extends Error {
  code: string
}
declare class ErrorForwardProxy extends ErrorNetwork {}
declare class ErrorForwardProxyNotRunning extends ErrorForwardProxy {}
declare class ErrorForwardProxyAuth extends ErrorForwardProxy {}
declare class ErrorForwardProxyInvalidUrl extends ErrorForwardProxy {}
declare class ErrorForwardProxyMissingNodeId extends ErrorForwardProxy {}
declare class ErrorReverseProxy extends ErrorNetwork {}
declare class ErrorReverseProxyNotRunning extends ErrorReverseProxy {}
declare class ErrorConnection extends ErrorNetwork {}
declare class ErrorConnectionStart extends ErrorConnection {}
declare class ErrorConnectionStartTimeout extends ErrorConnectionStart {}
declare class ErrorConnectionTimeout extends ErrorConnection {}
declare class ErrorCertChain extends ErrorNetwork {}
declare class ErrorCertChainUnclaimed extends ErrorCertChain {}
declare class ErrorCertChainEmpty extends ErrorCertChain {}
declare class ErrorCertChainBroken extends ErrorCertChain {}
declare class ErrorCertChainDateInvalid extends ErrorCertChain {}
declare class ErrorCertChainKeyInvalid extends ErrorCertChain {}
declare class ErrorCertChainSignatureInvalid extends ErrorCertChain {}
declare class ErrorInvalidTlsConfig extends ErrorNetwork {}

export declare const errors: {
  ErrorNetwork: typeof ErrorNetwork
  ErrorForwardProxy: typeof ErrorForwardProxy
  ErrorForwardProxyNotRunning: typeof ErrorForwardProxyNotRunning
  ErrorForwardProxyAuth: typeof ErrorForwardProxyAuth
  ErrorForwardProxyInvalidUrl: typeof ErrorForwardProxyInvalidUrl
  ErrorForwardProxyMissingNodeId: typeof ErrorForwardProxyMissingNodeId
  ErrorReverseProxy: typeof ErrorReverseProxy
  ErrorReverseProxyNotRunning: typeof ErrorReverseProxyNotRunning
  ErrorConnection: typeof ErrorConnection
  ErrorConnectionStart: typeof ErrorConnectionStart
  ErrorConnectionStartTimeout: typeof ErrorConnectionStartTimeout
  ErrorConnectionTimeout: typeof ErrorConnectionTimeout
  ErrorCertChain: typeof ErrorCertChain
  ErrorCertChainUnclaimed: typeof ErrorCertChainUnclaimed
  ErrorCertChainEmpty: typeof ErrorCertChainEmpty
  ErrorCertChainBroken: typeof ErrorCertChainBroken
  ErrorCertChainDateInvalid: typeof ErrorCertChainDateInvalid
  ErrorCertChainKeyInvalid: typeof ErrorCertChainKeyInvalid
  ErrorCertChainSignatureInvalid: typeof ErrorCertChainSignatureInvalid
  ErrorInvalidTlsConfig: typeof ErrorInvalidTlsConfig
}
