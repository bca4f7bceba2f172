'use strict'
// keynet demo: a gRPC client reaches a gRPC server it cannot dial, through
//   client --HTTP CONNECT--> ForwardProxy ==QUIC==> ReverseProxy --TCP--> server.
//
// Run: node demo/demo.js   (exits 0 only if every call succeeded)
//
// The server and both proxies live in this process; the client is a separate process
// (demo/client.js) that only gets `grpc_proxy=http://TOKEN@127.0.0.1:<forward proxy port>` and the
// reverse proxy's UDP address as its target. Everything is on 127.0.0.1.

const path = require('node:path')
const net = require('node:net')
const crypto = require('node:crypto')
const { fork } = require('node:child_process')
const { ForwardProxy, ReverseProxy } = require('..')
// The echo service of support/echo.proto, shared with the tests and the NAT lab.
const { startGrpcEchoServer, withTimeout } = require('../support')

const HOST = '127.0.0.1'
const OVERALL_TIMEOUT_MS = 60_000
const CLIENT_TIMEOUT_MS = 30_000

const t0 = Date.now()
const elapsed = () => `${String(Date.now() - t0).padStart(5)} ms`
const say = (line) => console.log(line)
const short = (id) => (typeof id === 'string' && id.length > 14 ? id.slice(0, 12) + '…' : String(id))

/** "127.0.0.1:1234" / "[::1]:1234" / "ipv4:127.0.0.1:1234" -> { host, port } */
function parsePeer(peer) {
  const s = peer.replace(/^ipv[46]:/, '')
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) }
}

const state = { fp: null, rp: null, server: null, child: null }

async function main() {
  const token = crypto.randomBytes(12).toString('hex')
  const serverCalls = []
  const events = []

  // --- 1. the gRPC server (only ever reached through the reverse proxy) -----------------------
  say(`[${elapsed()}] 1. gRPC echo server`)
  // Runs inside each call's handler; what it returns goes back to the client as `caller`.
  const whoCalled = (call, method) => {
    const peer = call.getPeer()
    const { host, port } = parsePeer(peer)
    const info = state.rp ? state.rp.getConnectionInfoByProxy(host, port) : undefined
    const caller = info ? info.nodeId : undefined
    const ok = caller !== undefined && caller === state.fpNodeId
    serverCalls.push({ method, peer, caller, ok })
    say(`     server │ ${method.padEnd(12)} peer ${peer} -> caller ${short(caller)} ${ok ? '= forward proxy ✓' : '≠ forward proxy ✗'}`)
    return caller || ''
  }
  const { server, port: serverPort } = await startGrpcEchoServer({ host: HOST, onCall: whoCalled, timeout: 5000 })
  state.server = server
  say(`     listening on ${HOST}:${serverPort} (TCP); the client is never told this address`)

  // --- 2. the reverse proxy, in front of the server ---------------------------------------------
  say(`[${elapsed()}] 2. ReverseProxy -> ${HOST}:${serverPort}`)
  const rp = new ReverseProxy()
  state.rp = rp
  const onEvent = (who, kind) => (e) => {
    events.push({ who, kind, e })
    const peerRole = who === 'rp' ? 'forward proxy' : 'reverse proxy'
    const addr = who === 'rp' ? `${e.egressHost}:${e.egressPort}` : `${e.ingressHost}:${e.ingressPort}`
    say(
      `     event  │ ${who === 'rp' ? 'ReverseProxy' : 'ForwardProxy'} '${kind}': ${peerRole} ${short(e.nodeId)} at ${addr}, path ${e.path}` +
        (e.reason !== undefined ? `, reason '${e.reason}'` : ''),
    )
  }
  rp.on('connection', onEvent('rp', 'connection')).on('close', onEvent('rp', 'close'))
  await withTimeout(rp.start({ serverHost: HOST, serverPort, ingressHost: HOST, ingressPort: 0 }), 10_000, 'rp.start')
  say(`     node id      ${rp.getNodeId()}`)
  say(`     ingress      ${rp.getIngressHost()}:${rp.getIngressPort()} (UDP, QUIC)`)

  // --- 3. the forward proxy ---------------------------------------------------------------------
  say(`[${elapsed()}] 3. ForwardProxy({ authToken })`)
  const fp = new ForwardProxy({ authToken: token })
  state.fp = fp
  fp.on('connection', onEvent('fp', 'connection')).on('close', onEvent('fp', 'close'))
  await withTimeout(fp.start(), 10_000, 'fp.start')
  const fpNodeId = fp.getNodeId()
  state.fpNodeId = fpNodeId
  say(`     node id      ${fpNodeId}`)
  say(`     HTTP CONNECT ${fp.getProxyHost()}:${fp.getHttpPort()} (TCP)   egress ${fp.getEgressHost()}:${fp.getEgressPort()} (UDP)`)

  // --- 4. open the QUIC connection, pinned to the reverse proxy's node id ------------------------
  const ingressPort = rp.getIngressPort()
  say(`[${elapsed()}] 4. fp.openConnection(rp.getNodeId(), '${HOST}', ${ingressPort})`)
  const tOpen = process.hrtime.bigint()
  await withTimeout(fp.openConnection(rp.getNodeId(), HOST, ingressPort, { timeout: 10_000 }), 15_000, 'openConnection')
  say(`     connected in ${(Number(process.hrtime.bigint() - tOpen) / 1e6).toFixed(1)} ms; connections: fp ${fp.getConnectionCount()}, rp ${rp.getConnectionCount()}`)

  // Sanity: the client's target is a UDP socket; nothing answers TCP there, so without the proxy
  // the client could not get anywhere.
  const direct = await withTimeout(
    new Promise((resolve) => {
      const s = net.connect(ingressPort, HOST)
      s.once('connect', () => { s.destroy(); resolve('accepted (some other TCP listener happens to use this port)') })
      s.once('error', (e) => resolve(e.code))
    }),
    5000,
    'direct TCP probe',
  )
  say(`     (a plain TCP dial of ${HOST}:${ingressPort}, without the proxy: ${direct})`)

  // --- 5. the client, in its own process, through grpc_proxy ------------------------------------
  const proxyUrl = `http://${token}@${HOST}:${fp.getHttpPort()}`
  const target = `${HOST}:${ingressPort}`
  say(`[${elapsed()}] 5. child process: grpc-js client -> ${target} with grpc_proxy=http://<token>@${HOST}:${fp.getHttpPort()}`)
  const env = { ...process.env, grpc_proxy: proxyUrl }
  for (const k of ['no_grpc_proxy', 'no_proxy', 'NO_PROXY', 'GRPC_TRACE', 'GRPC_VERBOSITY']) delete env[k]
  const child = fork(path.join(__dirname, 'client.js'), [target], { env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
  state.child = child
  let summary
  child.on('message', (m) => { summary = m })
  const prefix = (stream, tag) => {
    let buf = ''
    stream.setEncoding('utf8')
    stream.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        say(`     ${tag} │${buf.slice(0, i)}`)
        buf = buf.slice(i + 1)
      }
    })
    stream.on('end', () => { if (buf) say(`     ${tag} │${buf}`) })
  }
  prefix(child.stdout, 'client')
  prefix(child.stderr, 'client!')
  const exitCode = await withTimeout(
    new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? `signal ${signal}`))),
    CLIENT_TIMEOUT_MS,
    'client process',
  ).catch((e) => {
    child.kill('SIGKILL')
    throw e
  })
  say(`     client exited with code ${exitCode}`)

  // --- 6. what the proxies know about the connection --------------------------------------------
  say(`[${elapsed()}] 6. the connection`)
  const fi = fp.getConnectionInfoByIngress(HOST, ingressPort)
  const ri = rp.getConnectionInfoByEgress(fp.getEgressHost(), fp.getEgressPort())
  const checks = []
  const check = (ok, text) => { checks.push(ok); say(`     ${ok ? '✓' : '✗'} ${text}`) }
  check(!!fi, `fp.getConnectionInfoByIngress(${HOST}, ${ingressPort}) ${fi ? 'found' : 'is undefined'}`)
  if (fi) {
    check(fi.nodeId === rp.getNodeId(), `node id ${fi.nodeId} ${fi.nodeId === rp.getNodeId() ? '=' : '≠'} rp.getNodeId()`)
    check(fi.path === 'direct', `path '${fi.path}'`)
    say(`       rtt ${fi.rttMs.toFixed(3)} ms, UDP bytes sent ${fi.bytesSent}, received ${fi.bytesReceived}, certificates ${fi.certificates.length}`)
    say(`       egress ${fi.egressHost}:${fi.egressPort} -> ingress ${fi.ingressHost}:${fi.ingressPort}`)
  }
  check(!!ri, `rp.getConnectionInfoByEgress(${fp.getEgressHost()}, ${fp.getEgressPort()}) ${ri ? 'found' : 'is undefined'}`)
  if (ri) {
    check(ri.nodeId === fp.getNodeId(), `the reverse proxy sees node id ${short(ri.nodeId)} ${ri.nodeId === fp.getNodeId() ? '=' : '≠'} fp.getNodeId()`)
    say(`       (rp side) rtt ${ri.rttMs.toFixed(3)} ms, UDP bytes sent ${ri.bytesSent}, received ${ri.bytesReceived}`)
  }
  const callersOk = serverCalls.length > 0 && serverCalls.every((c) => c.ok)
  check(callersOk, `server: ${serverCalls.filter((c) => c.ok).length}/${serverCalls.length} calls identified as coming from the forward proxy (getPeer -> getConnectionInfoByProxy)`)

  // --- 7. stop -----------------------------------------------------------------------------------
  say(`[${elapsed()}] 7. stop`)
  await stopAll(state)
  // Close events travel through a threadsafe function; give them a moment to arrive.
  await waitFor(() => events.filter((e) => e.kind === 'close').length >= 2, 2000)
  const closes = events.filter((e) => e.kind === 'close').map((e) => `${e.who}:${e.e.reason}`)
  say(`     stopped; close events seen: ${closes.join(', ') || 'none'}`)

  const clientOk = exitCode === 0 && summary && summary.failed === 0
  const ok = clientOk && checks.every(Boolean)
  const calls = summary ? `${summary.callsOk}/${summary.calls} calls ok` : 'no summary from the client'
  say(
    `${ok ? 'OK' : 'FAILED'}: ${calls}, ${serverCalls.length} server handlers saw caller ${short(fpNodeId)}` +
      `, ${checks.filter(Boolean).length}/${checks.length} checks passed, total ${Date.now() - t0} ms`,
  )
  return ok
}

function waitFor(cond, ms) {
  return new Promise((resolve) => {
    const start = Date.now()
    const tick = () => {
      if (cond() || Date.now() - start > ms) return resolve()
      setTimeout(tick, 20)
    }
    tick()
  })
}

/** Stops, in order: the gRPC server, the forward proxy, the reverse proxy (each bounded). */
async function stopAll(state) {
  if (state.server) {
    const server = state.server
    state.server = null
    await withTimeout(new Promise((resolve) => server.tryShutdown(() => resolve())), 3000, 'server.tryShutdown').catch(() =>
      server.forceShutdown(),
    )
  }
  const errors = []
  for (const key of ['fp', 'rp']) {
    const proxy = state[key]
    if (!proxy) continue
    state[key] = null
    const t = Date.now()
    await withTimeout(proxy.stop(), 10_000, `${key}.stop`).then(
      () => say(`     ${key === 'fp' ? 'ForwardProxy' : 'ReverseProxy'}.stop() resolved in ${Date.now() - t} ms`),
      (e) => errors.push(e),
    )
  }
  if (errors.length) throw errors[0]
}

const watchdog = setTimeout(() => {
  console.error(`demo: did not finish within ${OVERALL_TIMEOUT_MS} ms`)
  process.exit(3)
}, OVERALL_TIMEOUT_MS)
watchdog.unref()

main().then(
  (ok) => {
    process.exitCode = ok ? 0 : 1
  },
  (e) => {
    console.error(`demo failed: ${e && e.stack ? e.stack : e}`)
    if (state.child && state.child.exitCode === null) state.child.kill('SIGKILL')
    stopAll(state)
      .catch((err) => console.error(`cleanup: ${err.message}`))
      .finally(() => process.exit(1))
  },
)
