'use strict'
// The relay on loopback, driven through the JS API and the keynet-relay binary: grpc-js reaches
// a server through the relay (by a tracked address and by node id alone), the rendezvous moves
// the connection off the relay with a 'path' event, a plain TCP client reaches the server through
// the relay's public port, and refusals are typed while the relay keeps serving others.

const path = require('node:path')
const os = require('node:os')
const crypto = require('node:crypto')
const fs = require('node:fs')
const test = require('ava')
const h = require('./helpers')

const { Relay, errors } = h.keynet
const CLIENT = path.join(h.FIXTURES, 'grpc-client.js')
// An address nothing answers at: relayed connections are tracked under it.
const NOWHERE = '192.0.2.1'

async function startRelay(t, opts = {}) {
  const relay = new Relay()
  t.teardown(() => relay.stop().catch(() => {}))
  await relay.start(opts)
  return relay
}

function relayOpts(relay, extra = {}) {
  return { host: relay.getHost(), port: relay.getPort(), tcpPort: relay.getTcpPort(), nodeId: relay.getNodeId(), ...extra }
}

/** Starts the keynet-relay binary with `args`; resolves `{ child, host, port, tcpPort, nodeId }`. */
async function spawnRelay(t, args) {
  const { child, match: m } = await h.spawnKeynetRelay(t, args, /^relay listening on (\S+):(\d+) tcp \S+:(\d+) node id (\S+)$/)
  return { child, host: m[1], port: Number(m[2]), tcpPort: Number(m[3]), nodeId: m[4] }
}

async function grpcUnary(t, fp, target) {
  const env = h.cleanEnv({ grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}` })
  return (await h.runJsonClient(t, process.execPath, [CLIENT, target, 'unary'], { env })).result
}

test('grpc-js reaches a server through the relay; the rendezvous then moves it off the relay', async (t) => {
  const relay = await startRelay(t)
  const grpcServer = await h.startGrpcEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: grpcServer.port, relay: relayOpts(relay) })
  t.deepEqual(relay.getRegisteredNodeIds(), [rp.getNodeId()])
  const status = rp.getRelayStatus()
  t.is(status.state, 'up')
  t.is(status.transport, 'quic')
  t.is(status.observedPort, rp.getIngressPort())

  const fp = await h.startForwardProxy(t)
  const moved = h.waitEvent(fp, 'path')
  const info = await fp.openConnection(rp.getNodeId(), NOWHERE, 443, { relay: relayOpts(relay, { upgradeDelay: 200 }) })
  t.is(info.path, 'relayed')
  t.is(info.nodeId, rp.getNodeId())
  t.deepEqual(await grpcUnary(t, fp, `${NOWHERE}:443`), { text: 'hello keynet', count: 42 })
  // Both nodes reach the relay over QUIC: every packet it relayed took their UDP channels.
  const m = relay.getMetrics()
  t.true(m.packetsRelayed > 0)
  t.is(m.packetsOnChannel, m.packetsRelayed)
  t.is(m.drops.bad_channel, 0)

  // On loopback nothing stands between the two sockets: the punch opens a direct path.
  const e = await moved
  t.is(e.path, 'direct')
  t.is(e.previousPath, 'relayed')
  t.is(e.reason, 'upgrade')
  t.is(e.nodeId, rp.getNodeId())
  t.is(fp.getConnectionInfoByIngress(NOWHERE, 443).path, 'direct')
  // Off the relay, the connection no longer needs it.
  await relay.stop()
  t.deepEqual(await grpcUnary(t, fp, `${NOWHERE}:443`), { text: 'hello keynet', count: 42 })
  t.is(grpcServer.calls.filter((c) => c.method === 'Unary').length, 2)
})

test('a forward proxy started with a relay reaches NODEID.keynet through it (grpc-js, WebSocket)', async (t) => {
  const relay = await startRelay(t)
  const grpcServer = await h.startGrpcEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: grpcServer.port, relay: relayOpts(relay, { transport: 'websocket' }) })
  t.is(rp.getRelayStatus().transport, 'websocket')
  const fp = await h.startForwardProxy(t, {}, { relay: relayOpts(relay) })
  t.is(fp.getRelayStatus()[0].state, 'up')
  t.deepEqual(await grpcUnary(t, fp, `${rp.getNodeId()}.keynet:443`), { text: 'hello keynet', count: 42 })
  t.is(fp.getConnectionCount(), 1)
})

test('a plain TCP client reaches the server through the relay public port', async (t) => {
  const relay = await startRelay(t)
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port, relay: relayOpts(relay, { publicPort: true }) })
  const port = rp.getRelayStatus().publicPort
  t.true(Number.isInteger(port) && port > 0)
  t.deepEqual(relay.getAllocations(), [{ nodeId: rp.getNodeId(), port }])
  const socket = await h.connectTcp(t, port, { host: relay.getHost() })
  const payload = Buffer.alloc(256 * 1024, 7)
  socket.end(payload)
  const got = await h.readToEnd(socket)
  t.is(h.sha256(got), h.sha256(payload))
})

test('refusals: unregistered target, wrong token, wrong relay pin, node not allowed; the relay keeps serving', async (t) => {
  const { nodeId: allowedFp, tlsConfig: fpTls } = await h.keynet.generateIdentity()
  const { nodeId: allowedRp, tlsConfig: rpTls } = await h.keynet.generateIdentity()
  const relay = await startRelay(t, { token: 'letmein', allowedNodeIds: [allowedFp, allowedRp] })
  const fp = await h.startForwardProxy(t, {}, { tlsConfig: fpTls })
  const { nodeId: stranger } = await h.keynet.generateIdentity()

  const unregistered = await t.throwsAsync(
    fp.openConnection(stranger, NOWHERE, 1, { relay: relayOpts(relay, { token: 'letmein' }) }),
  )
  t.true(unregistered instanceof errors.ErrorNodeNotFound, String(unregistered))
  t.regex(unregistered.message, /not registered with the relay/)

  const rpBadToken = new h.keynet.ReverseProxy()
  t.teardown(() => h.stopQuietly(rpBadToken))
  const badToken = await t.throwsAsync(rpBadToken.start({ serverPort: 1, tlsConfig: rpTls, relay: relayOpts(relay, { token: 'nope' }) }))
  t.regex(badToken.message, /token refused/)

  const rpBadPin = new h.keynet.ReverseProxy()
  t.teardown(() => h.stopQuietly(rpBadPin))
  const badPin = await t.throwsAsync(rpBadPin.start({ serverPort: 1, tlsConfig: rpTls, relay: relayOpts(relay, { nodeId: stranger, token: 'letmein' }) }))
  t.is(badPin.code, 'ErrorCertChainUnclaimed')

  const outsider = new h.keynet.ReverseProxy()
  t.teardown(() => h.stopQuietly(outsider))
  await t.throwsAsync(outsider.start({ serverPort: 1, relay: relayOpts(relay, { token: 'letmein', transport: 'quic' }) }))
  // Only the forward proxy (allowed, right token) ever registered.
  t.deepEqual(relay.getRegisteredNodeIds(), [allowedFp])

  // The well-behaved pair still gets through.
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port, tlsConfig: rpTls, relay: relayOpts(relay, { token: 'letmein' }) })
  await fp.openConnection(rp.getNodeId(), NOWHERE, 2, { relay: relayOpts(relay, { token: 'letmein' }) })
  const res = await h.rawConnect(t, fp.getHttpPort(), { target: `${NOWHERE}:2` })
  t.is(res.status, 200)
  await h.assertEchoes(t, res.socket)
})

test('bad relay options are typed errors', async (t) => {
  const fp = await h.startForwardProxy(t)
  const { nodeId } = await h.keynet.generateIdentity()
  await t.throwsAsync(fp.openConnection(nodeId, NOWHERE, 1, { relay: { host: 'nowhere', port: 1, nodeId } }), { instanceOf: TypeError })
  await t.throwsAsync(fp.openConnection(nodeId, NOWHERE, 1, { relay: { host: h.HOST, port: 1, nodeId: 'v123' } }), { instanceOf: TypeError })
  await t.throwsAsync(fp.openConnection(nodeId, NOWHERE, 1, { relay: { host: h.HOST, port: 1, nodeId, transport: 'carrier-pigeon' } }), { instanceOf: TypeError })
  await t.throwsAsync(fp.openConnection(NOWHERE, 1, { relay: { host: h.HOST, port: 1, nodeId } }), { instanceOf: TypeError })
  const relay = new Relay()
  await t.throwsAsync(relay.start({ publicPorts: { range: [10, 5] } }), { instanceOf: RangeError })
  await t.throwsAsync(relay.start({ maxPeers: 0 }), { instanceOf: RangeError })
  await t.throwsAsync(relay.start({ registerTimeout: 0 }), { instanceOf: RangeError, message: /opts\.registerTimeout/ })
  await t.throwsAsync(relay.start({ registerTimeout: '10s' }), { instanceOf: TypeError, message: /opts\.registerTimeout/ })
  await t.throwsAsync(relay.start({ maxConnectionsPerIp: 1.5 }), { instanceOf: RangeError, message: /opts\.maxConnectionsPerIp/ })
  await t.throwsAsync(relay.start({ handshakeRate: -1 }), { instanceOf: RangeError, message: /opts\.handshakeRate/ })
  await t.throwsAsync(relay.start({ stallTimeout: 'long' }), { instanceOf: TypeError, message: /opts\.stallTimeout/ })
  // Limits that contradict each other are the core's to refuse.
  await t.throwsAsync(relay.start({ queueBytes: 100 }), { code: 'ERR_INVALID_ARG_VALUE', message: /queueBytes/ })
  t.throws(() => relay.getNodeId(), { instanceOf: errors.ErrorRelayNotRunning })
  t.throws(() => relay.getMetrics(), { instanceOf: errors.ErrorRelayNotRunning })
})

test('relay limits: every one is listed with its default; one hit on purpose is refused, counted, and the relay serves others', async (t) => {
  const keys = Relay.limits.map((l) => l.key)
  for (const k of ['maxConnections', 'maxConnectionsPerIp', 'handshakeRate', 'registerTimeout', 'queueBytes', 'maxPorts', 'maxPortsPerIp', 'stallTimeout']) t.true(keys.includes(k), k)
  t.is(Relay.limits.find((l) => l.key === 'stallTimeout').defaultValue, 30000)
  t.is(Relay.limits.find((l) => l.key === 'stallTimeout').unit, 'ms')

  // Two sessions from 127.0.0.1 at most: a third reverse proxy cannot register.
  const relay = await startRelay(t, { maxConnectionsPerIp: 2, stallTimeout: 5000 })
  const server = await h.startEchoServer(t)
  const a = await h.startReverseProxy(t, { serverPort: server.port, relay: relayOpts(relay) })
  const b = await h.startReverseProxy(t, { serverPort: server.port, relay: relayOpts(relay) })
  const { ReverseProxy } = h.keynet
  const third = new ReverseProxy()
  t.teardown(() => third.stop().catch(() => {}))
  const err = await t.throwsAsync(third.start({ host: h.HOST, port: 0, serverHost: h.HOST, serverPort: server.port, relay: relayOpts(relay, { transport: 'quic' }) }))
  t.regex(err.message, /refused/i)
  const m = relay.getMetrics()
  t.true(m.refusals.max_connections_per_ip >= 1, JSON.stringify(m.refusals))
  t.is(m.registeredNodes, 2)
  t.is(m.sessions.quic, 2)
  t.regex(relay.getMetricsText(), /^keynet_relay_refusals_total\{reason="max_connections_per_ip"\} [1-9]/m)
  t.regex(relay.getMetricsText(), /^keynet_relay_registered_nodes 2$/m)
  // A session that ends frees its slot, and the relay serves the rest: a forward proxy takes
  // the slot and its relayed tunnel to the other node echoes.
  await a.stop()
  const fp = await h.startForwardProxy(t)
  await fp.openConnection(b.getNodeId(), NOWHERE, 7, { relay: relayOpts(relay, { upgrade: false }) })
  const res = await h.rawConnect(t, fp.getHttpPort(), { target: `${NOWHERE}:7` })
  t.is(res.status, 200)
  await h.assertEchoes(t, res.socket)
})

test('keynet-relay --metrics: curl scrapes Prometheus text that counts the sessions and refusals', async (t) => {
  const { lines } = await h.spawnKeynetRelay(t, ['--listen', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--max-connections-per-ip', '1'], /^metrics listening on (\S+)$/)
  const [, host, port, nodeId] = /^relay listening on (\S+):(\d+) tcp \S+ node id (\S+)$/.exec(lines[0])
  const metricsAt = /^metrics listening on (\S+)$/.exec(lines[1])[1]
  const server = await h.startEchoServer(t)
  const relay = { host, port: Number(port), nodeId, transport: 'quic' }
  await h.startReverseProxy(t, { serverPort: server.port, relay })
  // A second session from this address is refused (the limit is 1).
  const second = new h.keynet.ReverseProxy()
  t.teardown(() => second.stop().catch(() => {}))
  await t.throwsAsync(second.start({ host: h.HOST, port: 0, serverHost: h.HOST, serverPort: server.port, relay }))
  const r = await h.run(t, '/usr/bin/curl', ['-sS', '-i', `http://${metricsAt}/metrics`])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /^HTTP\/1\.1 200 OK\r$/m)
  t.regex(r.stdout, /^content-type: text\/plain; version=0\.0\.4/im)
  t.regex(r.stdout, /^keynet_relay_registered_nodes 1$/m)
  t.regex(r.stdout, /^keynet_relay_sessions\{transport="quic"\} 1$/m)
  t.regex(r.stdout, /^keynet_relay_refusals_total\{reason="max_connections_per_ip"\} [1-9]/m)
  const missing = await h.run(t, '/usr/bin/curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', `http://${metricsAt}/`])
  t.is(missing.stdout, '404')
})

test('keynet-relay: a reverse proxy registers with the binary, asks for a port, and tunnels work', async (t) => {
  const { child, ...r } = await spawnRelay(t, ['--listen', '127.0.0.1:0'])
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port, relay: { ...r, publicPort: true } })
  const fp = await h.startForwardProxy(t)
  await fp.openConnection(rp.getNodeId(), NOWHERE, 3, { relay: r })
  const res = await h.rawConnect(t, fp.getHttpPort(), { target: `${NOWHERE}:3` })
  t.is(res.status, 200)
  await h.assertEchoes(t, res.socket)
  const socket = await h.connectTcp(t, rp.getRelayStatus().publicPort, { host: r.host })
  await h.assertEchoes(t, socket)

  // SIGTERM stops it cleanly; the reverse proxy notices and keeps trying to come back.
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  child.kill('SIGTERM')
  t.deepEqual(await h.withTimeout(exited, 5000, 'keynet-relay to exit'), { code: 0, signal: null })
  await h.waitFor(() => rp.getRelayStatus().state !== 'up', { what: 'the reverse proxy to notice the relay left' })
})

/** Streams `total` bytes through `socket` in 64 KiB chunks; `onProgress(echoed)` after each read. */
function streamEcho(socket, total, onProgress = () => {}) {
  const chunk = Buffer.alloc(64 * 1024)
  const sent = crypto.createHash('sha256')
  const got = crypto.createHash('sha256')
  let echoed = 0
  const done = new Promise((resolve) => {
    socket.on('data', (d) => {
      got.update(d)
      echoed += d.length
      onProgress(echoed)
    })
    socket.on('end', () => resolve({ echoed, sent: sent.digest('hex'), got: got.digest('hex') }))
    socket.on('close', () => resolve({ echoed, closed: true }))
    // A tunnel whose connection died is reset: that is how it ends, not a test failure.
    socket.on('error', (e) => resolve({ echoed, closed: true, error: e.code }))
  })
  socket.resume()
  ;(async () => {
    for (let off = 0; off < total; off += chunk.length) {
      chunk.fill(off % 251)
      sent.update(chunk)
      if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r))
      // Pace the writer so the transfer is still running when the relay dies.
      await new Promise((r) => setTimeout(r, 2))
      if (socket.destroyed) return
    }
    socket.end()
  })().catch(() => {})
  return done
}

/**
 * A port free for both TCP and UDP below the kernel's ephemeral range: a relay restarted on it
 * cannot find it taken by some other socket's port-0 bind meanwhile (seen once in a full run).
 */
async function portOutsideEphemeral() {
  const net = require('node:net')
  const dgram = require('node:dgram')
  let low = 32768
  try {
    low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low
  } catch {}
  const free = (port) =>
    new Promise((resolve) => {
      const tcp = net.createServer()
      tcp.once('error', () => resolve(false))
      tcp.listen(port, '127.0.0.1', () => {
        const udp = dgram.createSocket('udp4')
        udp.once('error', () => tcp.close(() => resolve(false)))
        udp.bind(port, '127.0.0.1', () => udp.close(() => tcp.close(() => resolve(true))))
      })
    })
  for (let i = 0; i < 50; i++) {
    const port = 10000 + crypto.randomInt(Math.max(1, low - 10000))
    if (await free(port)) return port
  }
  return 0
}

test('relay killed mid-transfer: punched tunnels go on, relayed ones close with relayLost, nodes re-register', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keynet-relay-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const port = await portOutsideEphemeral()
  const first = await spawnRelay(t, ['--listen', `127.0.0.1:${port}`, '--identity-dir', dir])
  const r = { host: first.host, port: first.port, tcpPort: first.tcpPort, nodeId: first.nodeId }
  // A short keepalive timeout: the QUIC link notices a silent (killed) relay within 3 s.
  const timing = { connKeepAliveTimeoutTime: 3000, connKeepAliveIntervalTime: 500 }
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port, relay: r }, timing)
  const relayEvents = []
  rp.on('relay', (e) => relayEvents.push(e))
  const fpPunched = await h.startForwardProxy(t, timing)
  const fpRelayed = await h.startForwardProxy(t, timing)
  const upgraded = h.waitEvent(fpPunched, 'path')
  await fpPunched.openConnection(rp.getNodeId(), NOWHERE, 10, { relay: r })
  t.is((await upgraded).path, 'direct')
  await fpRelayed.openConnection(rp.getNodeId(), NOWHERE, 11, { relay: { ...r, upgrade: false } })
  t.is(fpRelayed.getConnectionInfoByIngress(NOWHERE, 11).path, 'relayed')

  const a = await h.rawConnect(t, fpPunched.getHttpPort(), { target: `${NOWHERE}:10` })
  const b = await h.rawConnect(t, fpRelayed.getHttpPort(), { target: `${NOWHERE}:11` })
  t.is(a.status, 200)
  t.is(b.status, 200)
  const relayLost = h.waitEvent(fpRelayed, 'close', { timeout: 20_000 })
  let killed = null
  const kill = () => {
    if (!killed) killed = new Promise((resolve) => { first.child.once('exit', resolve); first.child.kill('SIGKILL') })
  }
  const total = 16 * 1024 * 1024
  const [punched, relayed] = await Promise.all([
    streamEcho(a.socket, total, (n) => n > 1024 * 1024 && kill()),
    streamEcho(b.socket, total, (n) => n > 1024 * 1024 && kill()),
  ])
  await killed
  t.is(punched.echoed, total, 'the punched tunnel carried every byte')
  t.is(punched.got, punched.sent)
  t.true(relayed.echoed < total, 'the relayed tunnel ended early')
  const closed = await relayLost
  t.is(closed.reason, 'relayLost')

  // The relay returns (same identity, same port): the reverse proxy registers again by itself.
  const registered = h.waitEvent(rp, 'relay', { timeout: 30_000, filter: (e) => e.state === 'up' })
  await spawnRelay(t, ['--listen', `${r.host}:${r.port}`, '--identity-dir', dir])
  const back = await registered
  t.is(rp.getRelayStatus().state, 'up')
  t.is(back.nodeId, r.nodeId)
  t.is(back.transport, 'quic')
  t.is(back.observedPort, rp.getIngressPort())
  // The 'relay' events told the story without polling: down, connecting, up again.
  // (an 'up' event may come first: the start's own registration, reported just after.)
  const states = relayEvents.map((e) => e.state)
  const lostAt = states.indexOf('down')
  t.true(lostAt >= 0 && lostAt <= 1, states.join(' '))
  t.regex(relayEvents[lostAt].error, /^\[Error\w+\] /)
  t.true(states.indexOf('connecting', lostAt) > lostAt, states.join(' '))
  t.is(states.at(-1), 'up')
  await fpRelayed.openConnection(rp.getNodeId(), NOWHERE, 12, { relay: { ...r, upgrade: false } })
  const c = await h.rawConnect(t, fpRelayed.getHttpPort(), { target: `${NOWHERE}:12` })
  t.is(c.status, 200)
  await h.assertEchoes(t, c.socket)
})

test('networkChanged(): the relay link registers again, open tunnels go on, direct paths are re-probed and kept', async (t) => {
  const relay = await startRelay(t)
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port, relay: relayOpts(relay) })
  const fp = await h.startForwardProxy(t)
  const moved = [h.waitEvent(fp, 'path'), h.waitEvent(rp, 'path')]
  await fp.openConnection(rp.getNodeId(), NOWHERE, 20, { relay: relayOpts(relay) })
  // Both sides moved off the relay (each reports its own upgrade) before anything changes.
  t.deepEqual((await Promise.all(moved)).map((e) => e.path), ['direct', 'direct'])
  const tunnel = await h.rawConnect(t, fp.getHttpPort(), { target: `${NOWHERE}:20` })
  t.is(tunnel.status, 200)
  await h.assertEchoes(t, tunnel.socket)

  const pathEvents = []
  fp.on('path', (e) => pathEvents.push(e))
  rp.on('path', (e) => pathEvents.push(e))
  const lost = h.waitEvent(rp, 'relay', { filter: (e) => e.state === 'down' })
  const registered = h.waitEvent(rp, 'relay', { filter: (e) => e.state === 'up' })
  rp.networkChanged()
  fp.networkChanged()
  t.regex((await lost).error, /network changed/)
  t.is((await registered).observedPort, rp.getIngressPort())
  // Same network in truth: the probes prove the direct path, nothing moves, no byte is lost.
  for (let i = 0; i < 3; i++) await h.assertEchoes(t, tunnel.socket)
  t.is(fp.getConnectionInfoByIngress(NOWHERE, 20).path, 'direct')
  t.deepEqual(pathEvents, [])
  const e = t.throws(() => new h.keynet.ForwardProxy({ authToken: 'x' }).networkChanged())
  t.is(e.code, 'ErrorForwardProxyNotRunning')
})
