// Type test (never run): uses every export, class, method, overload, option and event of
// index.d.ts the way an application would, through the package root as `require('keynet')` /
// `import ... from 'keynet'` resolves it (package.json "types"). `tsc -p tsconfig.json` must pass
// with strict on; __test__/types.test.js runs it. Exact-type checks (`same<...>()`) make a
// widened or loosened declaration fail here too, not only a missing one.

import {
  ForwardProxy,
  ReverseProxy,
  Relay,
  generateIdentity,
  rotateIdentity,
  nodeIdFromCertificate,
  generateServiceOwner,
  signServiceMember,
  errors,
  utils,
  setLogFilter,
} from '../..'
import { EventEmitter, once, on } from 'node:events'
import type {
  TlsConfig,
  Identity,
  Path,
  ConnectionInfo,
  ConnectionEvent,
  PathReason,
  RelayEvent,
  ConnectionEventName,
  ConnOptions,
  DiscoveryOptions,
  FoundAddress,
  Timer,
  Logger,
  LookupOptions,
  AddressEvent,
  ForwardProxyOptions,
  ForwardProxyStartOptions,
  OpenOptions,
  RelayOptions,
  RelayStatus,
  ReverseProxyStartOptions,
  RelayStartOptions,
  RelayMetrics,
  ProxyStats,
  ServiceMember,
} from '../..'

// ---- exact-type assertions ----------------------------------------------------------------

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
/** Compiles only when A and B are the same type. */
function same<A, B>(..._proof: Equal<A, B> extends true ? [] : [never]): void {}

// ---- identity -----------------------------------------------------------------------------

async function identities(): Promise<TlsConfig> {
  const id: Identity = await generateIdentity()
  same<typeof id.nodeId, string>()
  same<typeof id.tlsConfig, TlsConfig>()
  const tls: TlsConfig = { keyPrivatePem: id.tlsConfig.keyPrivatePem, certChainPem: id.tlsConfig.certChainPem }
  const rotated = rotateIdentity(tls)
  same<typeof rotated, Identity>()
  const nodeId: string = nodeIdFromCertificate(rotated.tlsConfig.certChainPem)
  same<ReturnType<typeof generateIdentity>, Promise<Identity>>()
  return nodeId === id.nodeId ? tls : rotated.tlsConfig
}

// ---- options ------------------------------------------------------------------------------

const timing: ConnOptions = {
  connConnectTime: 20000,
  connKeepAliveTimeoutTime: 20000,
  connKeepAliveIntervalTime: 1000,
  connPunchIntervalTime: 50,
  connEndTime: 1000,
}

const discovery: DiscoveryOptions = {
  bootstrap: ['127.0.0.1:6881', '[::1]:6881'],
  announce: true,
  reannounceInterval: 600000,
  host: '127.0.0.1',
  port: 0,
  server: false,
}

const relayOpts: RelayOptions = {
  host: '127.0.0.1',
  port: 7000,
  nodeId: 'v' + '0'.repeat(52),
  tcpPort: 7000,
  transport: 'auto',
  keepaliveInterval: 15000,
  publicPort: true,
  upgrade: true,
  upgradeDelay: 0,
  token: 'relay-token',
}
const transports: Array<NonNullable<RelayOptions['transport']>> = ['auto', 'quic', 'websocket']

// ---- events -------------------------------------------------------------------------------

function describeInfo(i: ConnectionInfo): string {
  const p: Path = i.path
  const certs: string[] = i.certificates
  return [
    i.nodeId, certs.length, i.egressHost, i.egressPort, i.ingressHost, i.ingressPort,
    p, i.rttMs.toFixed(1), i.bytesSent + i.bytesReceived,
  ].join(' ')
}

function onConnectionEvent(e: ConnectionEvent): void {
  describeInfo(e) // a ConnectionEvent is a ConnectionInfo
  const reason: string | undefined = e.reason
  const previous: Path | undefined = e.previousPath
  if (e.previousPath !== undefined) {
    // on 'path' the reason is a PathReason
    const why = e.reason as PathReason
    const reasons: PathReason[] = ['upgrade', 'probeTimeout', 'rebinding', 'networkChanged']
    void [why, reasons, previous, reason]
  }
}

function onAddress(e: AddressEvent): void {
  for (const a of e.addresses) void `${a.host}:${a.port.toString()}`
}

function describeRelay(s: RelayStatus): string {
  const state: 'connecting' | 'up' | 'down' = s.state
  const transport: 'quic' | 'websocket' | null = s.transport
  const observed = s.observedHost === null ? 'unknown' : `${s.observedHost}:${s.observedPort ?? 0}`
  const publicPort: number | null = s.publicPort
  const error: string | null = s.error
  return `${s.host}:${s.port} ${s.nodeId} ${state} ${transport} ${observed} ${publicPort} ${error}`
}

function onRelay(e: RelayEvent): void {
  same<RelayEvent, RelayStatus>()
  describeRelay(e)
}

function listen(proxy: ForwardProxy): ForwardProxy
function listen(proxy: ReverseProxy): ReverseProxy
function listen(proxy: ForwardProxy | ReverseProxy): ForwardProxy | ReverseProxy {
  const names: ConnectionEventName[] = ['connection', 'close', 'path']
  for (const name of names) proxy.on(name, onConnectionEvent)
  // Contextually typed listeners: the payload type follows the event name.
  proxy.on('connection', (e) => { same<typeof e, ConnectionEvent>(); describeInfo(e) })
  proxy.on('close', (e) => { const r: string | undefined = e.reason; void r })
  proxy.on('path', (e) => { const before: Path | undefined = e.previousPath; const now: Path = e.path; void [before, now] })
  proxy.on('address', (e) => { same<typeof e, AddressEvent>(); onAddress(e) })
  proxy.on('relay', (e) => { same<typeof e, RelayEvent>(); onRelay(e) })
  // once/off take the same forms and chain (`this`).
  return proxy
    .once('connection', onConnectionEvent)
    .once('address', onAddress)
    .once('relay', onRelay)
    .off('close', onConnectionEvent)
    .off('address', onAddress)
    .off('relay', onRelay)
}

// ---- errors -------------------------------------------------------------------------------

const errorClasses = [
  errors.ErrorNetwork,
  errors.ErrorForwardProxy,
  errors.ErrorForwardProxyNotRunning,
  errors.ErrorForwardProxyAuth,
  errors.ErrorForwardProxyInvalidUrl,
  errors.ErrorForwardProxyMissingNodeId,
  errors.ErrorReverseProxy,
  errors.ErrorReverseProxyNotRunning,
  errors.ErrorRelay,
  errors.ErrorRelayNotRunning,
  errors.ErrorConnection,
  errors.ErrorConnectionStart,
  errors.ErrorConnectionStartTimeout,
  errors.ErrorConnectionTimeout,
  errors.ErrorCertChain,
  errors.ErrorCertChainUnclaimed,
  errors.ErrorCertChainEmpty,
  errors.ErrorCertChainBroken,
  errors.ErrorCertChainDateInvalid,
  errors.ErrorCertChainKeyInvalid,
  errors.ErrorCertChainSignatureInvalid,
  errors.ErrorNodeNotFound,
  errors.ErrorInvalidTlsConfig,
  // The original's, never thrown by keynet: still usable in instanceof checks.
  errors.ErrorConnectionNotRunning,
  errors.ErrorConnectionComposed,
  errors.ErrorConnectionNotComposed,
  errors.ErrorConnectionMessageParse,
  errors.ErrorConnectionEndTimeout,
  errors.ErrorConnectionCompose,
  errors.ErrorConnectionComposeTimeout,
  errors.ErrorCertChainNameInvalid,
  errors.ErrorHostnameResolutionFailed,
] as const

// The original's fields on every error (and on every class).
export function exitWith(e: errors.ErrorNetwork): number {
  const d: string = e.description
  const data: Record<string, unknown> = e.data
  const fromClass: number = errors.ErrorConnectionStartTimeout.exitCode
  const made = new errors.ErrorConnectionStart('start failed', { data: { code: 'ECONNREFUSED' }, cause: e })
  return d.length + Object.keys(data).length + fromClass + made.exitCode + e.exitCode
}

// ---- EventEmitter ---------------------------------------------------------------------------

export async function asEmitter(fp: ForwardProxy, rp: ReverseProxy): Promise<number> {
  const [closed] = await once(fp, 'close')
  const emitter: EventEmitter = rp
  for await (const [e] of on(rp, 'connection')) {
    const c = e as ConnectionEvent
    if (c.nodeId) break
  }
  fp.on('error', (e: Error) => e.message)
  return fp.listenerCount('close') + emitter.listenerCount('path') + (closed ? 1 : 0)
}

// ---- the original's names and shapes ------------------------------------------------------

export function original(fp: ForwardProxy, rp: ReverseProxy, tls: TlsConfig): number {
  fp.setTLSConfig(tls)
  rp.setTLSConfig(tls)
  const token: string = fp.authToken
  const times: number[] = [
    fp.connConnectTime,
    fp.connKeepAliveTimeoutTime,
    fp.connKeepAliveIntervalTime,
    fp.connPunchIntervalTime,
    fp.connEndTime,
    rp.connEndTime,
  ]
  const [host, port]: [string, number] = utils.parseAddress(utils.buildAddress('::1', 80))
  const ok: boolean = utils.isValidHost(utils.resolvesZeroIP(host))
  const header: string = utils.toAuthToken(token)
  const id: string = utils.certNodeId(tls.certChainPem)
  return times.length + port + Number(ok) + header.length + id.length + fp.getConnectionCount()
}

function classify(e: unknown): string {
  if (e instanceof errors.ErrorNodeNotFound) {
    // the hierarchy: NodeNotFound -> ConnectionStart -> Connection -> Network -> Error
    const start: errors.ErrorConnectionStart = e
    const conn: errors.ErrorConnection = start
    const net: errors.ErrorNetwork = conn
    const base: Error = net
    return `${base.message} ${e.code}`
  }
  if (e instanceof errors.ErrorConnectionStartTimeout) return 'timeout: ' + e.code
  if (e instanceof errors.ErrorCertChain) {
    const pinned = e instanceof errors.ErrorCertChainUnclaimed ? 'wrong node' : 'bad chain'
    return `${pinned} (${e.code})`
  }
  if (e instanceof errors.ErrorForwardProxyNotRunning || e instanceof errors.ErrorReverseProxyNotRunning) return 'stopped'
  if (e instanceof errors.ErrorRelayNotRunning) return 'relay stopped'
  if (e instanceof errors.ErrorNetwork) {
    const code: string = e.code
    return `${e.name} ${code} ${e.message} ${String(e.stack)}`
  }
  if (e instanceof TypeError || e instanceof RangeError) return 'bad argument'
  return String(e)
}

function makeErrors(): errors.ErrorNetwork[] {
  const cause = new Error('underlying')
  return errorClasses.map((C) => new C('message', { cause }))
}

// ---- ForwardProxy -------------------------------------------------------------------------

async function forward(tls: TlsConfig, serverNodeId: string): Promise<void> {
  const options: ForwardProxyOptions = { authToken: 'token', ...timing }
  const fp = listen(new ForwardProxy(options))
  const chained: ForwardProxy = fp.on('close', onConnectionEvent).once('relay', onRelay).off('address', onAddress)
  new ForwardProxy({ authToken: 'token' })

  const start: ForwardProxyStartOptions = {
    proxyHost: '127.0.0.1',
    proxyPort: 0,
    egressHost: '0.0.0.0',
    egressPort: 0,
    tlsConfig: tls,
    authToken: 'other-token',
    discovery,
    relay: relayOpts,
    maxConnections: 8192,
  }
  await fp.start(start)
  await fp.start({ discovery: true })
  await fp.start({ discovery: false, proxyPort: 8080 })
  await fp.start('token') // first form: the auth token
  await fp.start()

  const nodeId: string = fp.getNodeId()
  const host: string = fp.getProxyHost()
  const ports: number[] = [fp.getProxyPort(), fp.getEgressPort(), fp.getHttpPort(), fp.getSocketPort()]
  const egressHost: string = fp.getEgressHost()
  const grpcProxy = `http://token@${host}:${fp.getProxyPort()}`
  void [nodeId, ports, egressHost, grpcProxy, chained]

  const controller = new AbortController()
  const open: OpenOptions = { timeout: 5000, signal: controller.signal }
  // (nodeId, host, port, opts?)
  const a: ConnectionInfo = await fp.openConnection(serverNodeId, '127.0.0.1', 9000)
  await fp.openConnection(serverNodeId, '::1', 9000, open)
  await fp.openConnection(serverNodeId, '127.0.0.1', 9000, { ...open, relay: relayOpts })
  // (host, port, opts?)
  const b = await fp.openConnection('127.0.0.1', 9000)
  await fp.openConnection('127.0.0.1', 9000, { nodeId: serverNodeId, timeout: 1000 })
  await fp.openConnection('127.0.0.1', 9000, { nodeId: serverNodeId, relay: relayOpts, signal: AbortSignal.timeout(1000) })
  // (nodeId, opts?) with discovery or a relay
  const c = await fp.openConnection(serverNodeId)
  await fp.openConnection(serverNodeId, { timeout: 10000 })
  await fp.openConnection(serverNodeId, open)
  same<typeof b, ConnectionInfo>()
  same<typeof c, ConnectionInfo>()
  describeInfo(a)

  await fp.closeConnection('127.0.0.1', 9000)
  const count: number = fp.getConnectionCount()
  const fpStats: ProxyStats = fp.getStats()
  void [fpStats.connections.relayed, fpStats.tunnelsOpen, fpStats.bytesSent, fpStats.failures['ErrorConnectionStartTimeout']]
  const byIngress: ConnectionInfo | undefined = fp.getConnectionInfoByIngress('127.0.0.1', 9000)
  const byClient = fp.getConnectionInfoByClient('127.0.0.1', 54321)
  same<typeof byClient, ConnectionInfo | undefined>()
  if (byIngress) describeInfo(byIngress)
  if (byClient !== undefined) void byClient.nodeId
  void count

  fp.setTlsConfig(tls)
  fp.addDirectConnection(9000, '127.0.0.1')
  const up: boolean = await fp.addNatConnection(9000, '127.0.0.1')
  await fp.addNatConnection(9000, '127.0.0.1', 10)
  fp.removeConnection(9000, '127.0.0.1')
  void up

  const lookupOpts: LookupOptions = { timeout: 10000 }
  const found: FoundAddress[] = await fp.lookup(serverNodeId, lookupOpts)
  await fp.lookup(serverNodeId)
  for (const f of found) {
    const age: number | null = f.ageMs
    const signed: boolean = f.signed
    void `${f.host}:${f.port} ${age ?? 'hint'} ${signed}`
  }
  const announced: Array<{ host: string; port: number }> = fp.getAnnouncedAddresses()
  const relays: RelayStatus[] = fp.getRelayStatus()
  relays.map(describeRelay)
  void announced

  fp.networkChanged()
  const same1: ForwardProxy = fp.unref()
  const same2: ForwardProxy = fp.ref().unref()
  void [same1, same2]
  await fp.stop()
}

// ---- ReverseProxy -------------------------------------------------------------------------

async function reverse(tls: TlsConfig, clientNodeId: string): Promise<void> {
  const rp = listen(new ReverseProxy(timing))
  const chained: ReverseProxy = rp.once('path', onConnectionEvent).on('address', onAddress).off('relay', onRelay)
  new ReverseProxy()
  new ReverseProxy({ connConnectTime: 5000 })

  const start: ReverseProxyStartOptions = {
    serverHost: '127.0.0.1',
    serverPort: 50051,
    ingressHost: '0.0.0.0',
    ingressPort: 0,
    tlsConfig: tls,
    allowedNodeIds: [clientNodeId],
    discovery: { bootstrap: [], announce: true },
    relay: { host: '127.0.0.1', port: 7000, nodeId: relayOpts.nodeId, publicPort: true },
    maxConnections: 4096,
    maxStreamsPerConnection: 1024,
  }
  await rp.start(start)
  await rp.start({ grpcHost: '127.0.0.1', grpcPort: 50051 }) // first-form names
  await rp.start({ serverPort: 50051, discovery: true })
  await rp.start('127.0.0.1', 50051) // first form

  const id: string = rp.getNodeId()
  const ingress = `${rp.getIngressHost()}:${rp.getIngressPort()}`
  const server = `${rp.getServerHost()}:${rp.getServerPort()}`
  const socketPort: number = rp.getSocketPort()
  void [id, ingress, server, socketPort, chained]

  const punched: void = await rp.openConnection('127.0.0.1', 40000)
  await rp.openConnection('127.0.0.1', 40000, { timeout: 5000, signal: new AbortController().signal })
  await rp.closeConnection('127.0.0.1', 40000)
  const count: number = rp.getConnectionCount()
  const rpStats: ProxyStats = rp.getStats()
  void [rpStats.connections.direct, rpStats.tunnelsTotal, rpStats.bytesReceived]
  const byEgress: ConnectionInfo | undefined = rp.getConnectionInfoByEgress('127.0.0.1', 40000)
  // who is calling: the TCP source address the server sees
  const caller = rp.getConnectionInfoByProxy('127.0.0.1', 61000)
  same<typeof caller, ConnectionInfo | undefined>()
  void [punched, count, byEgress]

  rp.setTlsConfig(tls)
  const ok: boolean = await rp.addNatConnection(40000, '127.0.0.1', 50)
  rp.addDirectConnection(40000, '127.0.0.1')
  rp.removeConnection(40000, '127.0.0.1')
  void ok

  const found = await rp.lookup(clientNodeId, { timeout: 2000 })
  same<typeof found, FoundAddress[]>()
  rp.getAnnouncedAddresses().forEach(({ host, port }) => void `${host}:${port}`)
  const status: RelayStatus | null = rp.getRelayStatus()
  if (status !== null && status.publicPort !== null) void `public TCP port ${status.publicPort}`

  rp.networkChanged()
  rp.unref().ref()
  await rp.stop()
}

// ---- Relay --------------------------------------------------------------------------------

async function relay(tls: TlsConfig): Promise<Relay> {
  const r = new Relay({ connConnectTime: 20000, connKeepAliveTimeoutTime: 20000, connKeepAliveIntervalTime: 1000, connEndTime: 1000 })
  new Relay()
  const start: RelayStartOptions = {
    host: '127.0.0.1',
    port: 0,
    tcpPort: 0,
    tlsConfig: tls,
    allowedNodeIds: ['v' + '1'.repeat(52)],
    token: 'relay-token',
    publicPorts: {
      host: '0.0.0.0',
      range: [20000, 20999],
      retention: 180 * 60 * 1000,
      stateFile: '/var/lib/keynet/ports.json',
      maxClients: 256,
    },
    maxPeers: 64,
    nodeTimeout: 45000,
    registerTimeout: 10000,
    maxConnections: 10000,
    maxConnectionsPerIp: 100,
    handshakeRate: 5,
    handshakeBurst: 20,
    maxDatagram: 1500,
    queueBytes: 1 << 20,
    rendezvousBurst: 16,
    rendezvousRate: 4,
    maxPorts: 1024,
    maxPortsPerIp: 4,
    maxClients: 256,
    maxPublicClients: 4096,
    stallTimeout: 30000,
  }
  await r.start(start)
  await r.start({ publicPorts: false })
  await r.start({ publicPorts: {} })
  await r.start()

  const where = `${r.getHost()}:${r.getPort()} tcp ${r.getTcpPort()} node id ${r.getNodeId()}`
  const registered: string[] = r.getRegisteredNodeIds()
  for (const { nodeId, port } of r.getAllocations()) void `${nodeId} -> ${port}`
  void [where, registered]
  const m: RelayMetrics = r.getMetrics()
  const refusedPerIp: number = m.refusals['max_connections_per_ip'] ?? 0
  const text: string = r.getMetricsText()
  for (const l of Relay.limits) void `${l.key} ${l.unit} ${l.defaultValue} ${l.doc}`
  void [m.sessions.quic, m.drops, refusedPerIp, text]

  const chained: Relay = r.unref().ref()
  await chained.stop()
  return r
}

// ---- services by name ---------------------------------------------------------------------

export async function services(tls: TlsConfig): Promise<void> {
  const owner: { publicKey: string; privateKey: string } = generateServiceOwner()
  const membership: string = signServiceMember(owner.privateKey, 'vault', 'vabc', { network: 'lab' })
  const rp = new ReverseProxy()
  await rp.start({ serverPort: 50051, tlsConfig: tls, discovery: { network: 'lab', services: ['echo', { name: 'vault', membership }] } })
  rp.announceService('fib')
  const withdrawn: boolean = rp.withdrawService('fib')
  const names: string[] = rp.getServices()
  const fp = new ForwardProxy({ authToken: 't' })
  await fp.start({ discovery: { network: 'lab', serviceTrust: { vault: { owner: owner.publicKey, nodeIds: [] } } } })
  const found: ServiceMember[] = await fp.lookupService('echo', { timeout: 5000, signal: new AbortController().signal })
  const info: ConnectionInfo = await fp.openConnection({ service: 'echo', timeout: 5000 })
  void [withdrawn, names, found.map((m) => [m.nodeId, m.ageMs, m.verified]), info.nodeId, errors.ErrorServiceNotFound]
}

// ---- all together -------------------------------------------------------------------------

export async function main(): Promise<void> {
  const tls = await identities()
  try {
    const r = await relay(tls)
    await reverse(tls, r.getNodeId())
    await forward(tls, r.getNodeId())
    await services(tls)
    await originalShapes(tls)
  } catch (e) {
    classify(e)
    makeErrors().map(classify)
    throw e
  }
  void transports
}

// ---- the original's shapes, signals and logging --------------------------------------------

export async function originalShapes(tls: TlsConfig): Promise<void> {
  const logger: Logger = console
  const fp = new ForwardProxy({ authToken: 't', logger, logLevel: 'debug', connEndTime: 1000 })
  const rp = new ReverseProxy({ logger: { ...console, getEffectiveLevel: () => 3 } })
  await rp.start()
  await rp.start({ grpcHost: '127.0.0.1', grpcPort: 50051 })
  await fp.start({ tlsConfig: tls, signal: AbortSignal.timeout(5000) })
  const timer: Timer = utils.timerStart(2000)
  const info: ConnectionInfo = await fp.openConnection(rp.getNodeId(), '127.0.0.1', rp.getIngressPort(), timer)
  utils.timerStop(timer)
  await fp.openConnection(rp.getNodeId(), '127.0.0.1', rp.getIngressPort(), null)
  await rp.openConnection('127.0.0.1', fp.getEgressPort(), utils.timerStart(1000))
  const punched: boolean = await fp.addNatConnection(rp.getIngressPort(), '127.0.0.1', 3)
  const found: FoundAddress[] = await fp.lookup(info.nodeId, { signal: new AbortController().signal })
  await fp.closeConnection('127.0.0.1', rp.getIngressPort(), { signal: AbortSignal.timeout(100) })
  setLogFilter('keynet_core=info')
  setLogFilter(null)
  await fp.stop({ signal: AbortSignal.timeout(100) })
  await rp.stop()
  const all: ConnectionInfo[] = [...fp.getConnections(), ...rp.getConnections()]
  void [timer.timedOut, punched, found, all]
}
