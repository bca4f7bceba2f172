'use strict'
// start/stop: idempotence, restart, released ports, given identities, the first-form API
// (start(token), start(host, port), addNatConnection), and that stopped proxies let Node exit.

const test = require('ava')
const h = require('./helpers')

const { ForwardProxy, ReverseProxy, generateIdentity } = h.keynet

test('start twice, stop twice and stop before start all resolve', async (t) => {
  const server = await h.startEchoServer(t)
  const fp = new ForwardProxy({ authToken: h.TOKEN })
  const rp = new ReverseProxy()
  t.teardown(() => Promise.all([h.stopQuietly(fp), h.stopQuietly(rp)]))
  await fp.stop()
  await rp.stop()
  await fp.start()
  await rp.start({ serverPort: server.port })
  const before = [fp.getNodeId(), fp.getProxyPort(), fp.getEgressPort(), rp.getNodeId(), rp.getIngressPort()]
  await fp.start()
  await rp.start({ serverPort: server.port })
  t.deepEqual([fp.getNodeId(), fp.getProxyPort(), fp.getEgressPort(), rp.getNodeId(), rp.getIngressPort()], before, 'a second start changes nothing')
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  await fp.stop()
  await fp.stop()
  await rp.stop()
  await rp.stop()
  t.throws(() => fp.getProxyPort())
  t.throws(() => rp.getIngressPort())
})

test('concurrent start() calls start once', async (t) => {
  const fp = new ForwardProxy({ authToken: h.TOKEN })
  t.teardown(() => h.stopQuietly(fp))
  await Promise.all([fp.start(), fp.start(), fp.start()])
  const port = fp.getProxyPort()
  await Promise.all([fp.stop(), fp.stop()])
  t.true(await h.canBind('tcp', port))
})

test('restart: after stop and start, a CONNECT works end to end', async (t) => {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  await fp.stop()
  await rp.stop()
  await rp.start({ serverPort: server.port })
  await fp.start()
  const events = h.recordEvents(fp)
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  t.is((await events.wait('connection')).nodeId, rp.getNodeId(), 'events still arrive after a restart')
  t.is(fp.getConnectionCount(), 1)
  t.is(rp.getConnectionCount(), 1)
})

test('after stop every port is free again', async (t) => {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const tunnel = await h.openTunnel(t, fp, rp)
  await h.assertEchoes(t, tunnel)
  const ports = { proxy: fp.getProxyPort(), egress: fp.getEgressPort(), ingress: rp.getIngressPort() }
  await fp.stop()
  await rp.stop()
  t.true(await h.canBind('tcp', ports.proxy), 'forward proxy HTTP port')
  t.true(await h.canBind('udp4', ports.egress), 'forward proxy UDP port')
  t.true(await h.canBind('udp4', ports.ingress), 'reverse proxy UDP port')
  // And a proxy can be started on exactly those ports.
  await rp.start({ serverPort: server.port, ingressPort: ports.ingress })
  await fp.start({ proxyPort: ports.proxy, egressPort: ports.egress })
  t.is(fp.getProxyPort(), ports.proxy)
  t.is(rp.getIngressPort(), ports.ingress)
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
})

test('after stop the UDP port is free even if a dial to a silent peer failed', async (t) => {
  // The abandoned handshake keeps quinn's endpoint driver (and so the socket) alive for a few
  // PTOs after endpoint.close(); stop() must still not resolve before the port is released.
  // (With an initial RTT of 333 ms that took ~3 s, beyond stop()'s 2 s wait for the socket.)
  const fp = await h.startForwardProxy(t, { connConnectTime: 1000, connEndTime: 200 })
  const silent = await h.startSilentUdp(t)
  const id = (await generateIdentity()).nodeId
  await t.throwsAsync(fp.openConnection(id, h.HOST, silent.port, { timeout: 300 }))
  const egress = fp.getEgressPort()
  await fp.stop()
  t.true(await h.canBind('udp4', egress), 'forward proxy UDP port bound after stop() resolved')
})

test('start with a given tlsConfig uses that identity', async (t) => {
  const server = await h.startEchoServer(t)
  const fpId = await generateIdentity()
  const rpId = await generateIdentity()
  t.regex(fpId.nodeId, /^v[0-9a-v]{52}$/)
  t.is(h.keynet.nodeIdFromCertificate(fpId.tlsConfig.certChainPem), fpId.nodeId)
  const { fp, rp } = await h.startPair(t, {
    serverPort: server.port,
    rpStart: { tlsConfig: rpId.tlsConfig },
    fpStart: { tlsConfig: fpId.tlsConfig },
  })
  t.is(fp.getNodeId(), fpId.nodeId)
  t.is(rp.getNodeId(), rpId.nodeId)
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  t.is(rp.getConnectionInfoByEgress(h.HOST, fp.getEgressPort()).nodeId, fpId.nodeId)
  t.is(fp.getConnectionInfoByIngress(h.HOST, rp.getIngressPort()).nodeId, rpId.nodeId)
})

test('first form: start(token), start(host, port), addNatConnection from both sides at once', async (t) => {
  const server = await h.startEchoServer(t)
  const fp = new ForwardProxy({ authToken: 'constructor-token' })
  const rp = new ReverseProxy()
  t.teardown(() => Promise.all([h.stopQuietly(fp), h.stopQuietly(rp)]))
  await fp.start('first-form-token')
  await rp.start(h.HOST, server.port)
  t.is(rp.getServerHost(), h.HOST)
  t.is(rp.getServerPort(), server.port)
  t.is(fp.getHttpPort(), fp.getProxyPort())
  t.is(fp.getSocketPort(), fp.getEgressPort())
  t.is(rp.getSocketPort(), rp.getIngressPort())

  const both = await h.withTimeout(
    Promise.all([
      fp.addNatConnection(rp.getSocketPort(), h.HOST),
      rp.addNatConnection(fp.getSocketPort(), h.HOST),
    ]),
    h.WAIT,
    'addNatConnection on both sides',
  )
  t.deepEqual(both, [true, true])
  t.is(fp.getConnectionCount(), 1)
  await h.waitFor(() => rp.getConnectionCount() === 1, { what: 'rp count 1' })
  t.log('path', fp.getConnectionInfoByIngress(h.HOST, rp.getIngressPort()).path)

  // The address is tracked: a CONNECT without nodeId works, with the token given to start().
  const target = h.targetOf(rp, { pin: false })
  const ok = await h.rawConnect(t, fp.getHttpPort(), { target, auth: h.basicAuth('first-form-token') })
  t.is(ok.status, 200)
  await h.assertEchoes(t, ok.socket)
  const old = await h.rawConnect(t, fp.getHttpPort(), { target, auth: h.basicAuth('constructor-token') })
  t.is(old.status, 407, 'start(token) replaced the constructor token')
  t.is(fp.getConnectionCount(), 1, 'the tunnel used the punched connection')
})

test('first form: removeConnection forgets the address', async (t) => {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  fp.addDirectConnection(rp.getIngressPort(), h.HOST)
  const target = h.targetOf(rp, { pin: false })
  await h.assertEchoes(t, (await h.rawConnect(t, fp.getProxyPort(), { target })).socket)
  fp.removeConnection(rp.getIngressPort(), h.HOST)
  await h.waitFor(() => fp.getConnectionCount() === 0, { what: 'fp count 0' })
  t.is((await h.rawConnect(t, fp.getProxyPort(), { target })).status, 400)
})

test('a process with a started and stopped pair exits by itself', async (t) => {
  const script = `
    const net = require('node:net')
    const { ForwardProxy, ReverseProxy } = require(${JSON.stringify(h.ROOT)})
    const events = []
    ;(async () => {
      const server = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1')
      await new Promise((r) => server.once('listening', r))
      const rp = new ReverseProxy()
      const fp = new ForwardProxy({ authToken: 't' })
      for (const p of [fp, rp]) {
        p.on('connection', () => events.push('connection'))
        p.on('close', (e) => events.push('close:' + e.reason))
      }
      await rp.start({ serverPort: server.address().port })
      await fp.start()
      await fp.openConnection(rp.getNodeId(), '127.0.0.1', rp.getIngressPort())
      await fp.stop()
      await rp.stop()
      server.close()
      process.on('exit', () => console.log(JSON.stringify(events.sort())))
    })().catch((e) => { console.error(e); process.exit(2) })
  `
  const started = Date.now()
  const r = await h.run(t, process.execPath, ['-e', script], { timeout: 10_000 })
  t.is(r.code, 0, r.stderr)
  t.true(Date.now() - started < 10_000)
  t.deepEqual(JSON.parse(r.stdout.trim()), ['close:remote', 'close:stopped', 'connection', 'connection'])
})

test('a started proxy keeps the process alive until stop(), like a listening net.Server; unref() lets it go', async (t) => {
  const { spawn } = require('node:child_process')
  const script = (after) => `
    const { ForwardProxy, ReverseProxy, Relay } = require(${JSON.stringify(h.ROOT)})
    ;(async () => {
      const fp = new ForwardProxy({ authToken: 'x' })
      await fp.start()
      const rp = new ReverseProxy()
      await rp.start({ serverPort: 1 })
      const relay = new Relay()
      await relay.start()
      console.log(fp.getHttpPort())
      ${after}
    })()`
  // Nothing else holds the loop: the process lives on while the proxies run.
  const child = spawn(process.execPath, ['-e', script('')], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  const port = Number((await h.waitEvent(child.stdout, 'data')).toString().trim())
  const res = await h.rawConnect(t, port, { target: '127.0.0.1:1', auth: null })
  t.is(res.status, 407, 'still answering after the script ran to its end')
  t.is(child.exitCode, null)
  // stop() releases the process; so does unref() without a stop.
  for (const after of ['await fp.stop(); await rp.stop(); await relay.stop()', 'fp.unref(); rp.unref(); relay.unref()']) {
    const r = await h.run(t, process.execPath, ['-e', script(after)], { timeout: 20_000 })
    t.is(r.code, 0, `${after}: ${r.stderr}`)
  }
})
