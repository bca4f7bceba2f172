'use strict'
// Discovery on a private mainline DHT of 8 `keynet-relay --dht` nodes on loopback: a node
// announces, another finds it by node id, and a grpc-js client reaches it through `grpc_proxy`
// knowing only the node id. The public DHT is never contacted (every node here has a bootstrap
// list of loopback addresses).

const path = require('node:path')
const test = require('ava')
const h = require('./helpers')

const CLIENT = path.join(h.FIXTURES, 'grpc-client.js')
const UDP_SOCKETS = path.join(h.FIXTURES, 'udp-sockets.js')

const { privateDht } = h

test('a grpc-js client reaches a node by node id alone, found on a private DHT', async (t) => {
  const bootstrap = await privateDht(t)
  const grpcServer = await h.startGrpcEchoServer(t)
  const rp = new h.keynet.ReverseProxy()
  t.teardown(() => h.stopQuietly(rp))
  const announced = h.waitEvent(rp, 'address', { timeout: 20_000 })
  await rp.start({ serverPort: grpcServer.port, discovery: { bootstrap } })
  const { addresses } = await announced
  t.deepEqual(addresses, [{ host: h.HOST, port: rp.getIngressPort() }])
  t.deepEqual(rp.getAnnouncedAddresses(), addresses)

  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, announce: false } })
  const nodeId = rp.getNodeId()
  const started = Date.now()
  const found = await fp.lookup(nodeId)
  t.true(Date.now() - started < 5000, `lookup took ${Date.now() - started} ms`)
  // On first contact the node's signed record is found under its locator (derived from the
  // node id), with its age.
  const hit = found.find((f) => f.port === rp.getIngressPort())
  t.truthy(hit, JSON.stringify(found))
  t.is(hit.host, h.HOST)
  t.true(hit.signed, JSON.stringify(found))
  t.true(hit.ageMs >= 0 && hit.ageMs < 60_000, JSON.stringify(found))

  // The client knows the node id and nothing else; grpc_proxy carries it to the server.
  const env = h.cleanEnv({ grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}` })
  const result = (await h.runJsonClient(t, process.execPath, [CLIENT, `${nodeId}.keynet:443`, 'unary'], { env })).result
  t.deepEqual(result, { text: 'hello keynet', count: 42 })
  t.is(grpcServer.calls.filter((c) => c.method === 'Unary').length, 1)
  const info = fp.getConnectionInfoByIngress(h.HOST, rp.getIngressPort())
  t.is(info.nodeId, nodeId)
  t.is(info.path, 'direct')

  // Verified once, the record under the node's own key is read too.
  const again = await fp.lookup(nodeId)
  t.true(again[0].signed, JSON.stringify(again))
  t.is(again[0].port, rp.getIngressPort())
})

test('openConnection(nodeId) resolves the connection; unknown ids reject ErrorNodeNotFound', async (t) => {
  const bootstrap = await privateDht(t)
  const server = await h.startEchoServer(t)
  const rp = new h.keynet.ReverseProxy()
  t.teardown(() => h.stopQuietly(rp))
  const announced = h.waitEvent(rp, 'address', { timeout: 20_000 })
  await rp.start({ serverPort: server.port, discovery: { bootstrap } })
  await announced
  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, announce: false } })
  const info = await fp.openConnection(rp.getNodeId())
  t.is(info.nodeId, rp.getNodeId())
  t.is(info.ingressPort, rp.getIngressPort())
  t.is(fp.getConnectionCount(), 1)
  // A CONNECT to NODEID.keynet carries bytes like any tunnel.
  const res = await h.rawConnect(t, fp.getHttpPort(), { target: `${rp.getNodeId()}.keynet:443` })
  t.is(res.status, 200)
  await h.assertEchoes(t, res.socket)

  const { nodeId: nobody } = await h.keynet.generateIdentity()
  const err = await t.throwsAsync(fp.openConnection(nobody, { timeout: 10_000 }))
  t.true(err instanceof h.keynet.errors.ErrorNodeNotFound, String(err))
  t.is(err.code, 'ErrorNodeNotFound')
  t.deepEqual(await fp.lookup(nobody), [])
})

test('without discovery: no DHT socket exists, node-id forms are refused clearly', async (t) => {
  if (process.platform === 'linux') {
    const off = await h.runJsonClient(t, process.execPath, [UDP_SOCKETS])
    t.is(off.udp, 2, 'only the two QUIC sockets')
    // The same check sees the DHT sockets when discovery is on (so it can fail).
    const bootstrap = await privateDht(t, 1)
    const on = await h.runJsonClient(t, process.execPath, [UDP_SOCKETS, JSON.stringify({ bootstrap })])
    t.is(on.udp, 4)
  } else {
    t.log('socket count skipped: it reads /proc (Linux only)')
  }

  const fp = await h.startForwardProxy(t)
  const { nodeId } = await h.keynet.generateIdentity()
  const err = await t.throwsAsync(fp.openConnection(nodeId))
  t.is(err.code, 'ERR_INVALID_ARG_VALUE')
  t.regex(err.message, /discovery is off/)
  await t.throwsAsync(fp.lookup(nodeId), { code: 'ERR_INVALID_ARG_VALUE' })
  const res = await h.rawConnect(t, fp.getHttpPort(), { target: `${nodeId}.keynet:443` })
  t.is(res.status, 400)
})

test('bad discovery options are typed errors naming the option', async (t) => {
  const fp = new h.keynet.ForwardProxy({ authToken: h.TOKEN })
  t.teardown(() => h.stopQuietly(fp))
  await t.throwsAsync(fp.start({ discovery: { bootstrap: 'x' } }), { instanceOf: TypeError, message: /opts\.discovery\.bootstrap/ })
  await t.throwsAsync(fp.start({ discovery: { bootstrap: ['nope'] } }), { instanceOf: TypeError, message: /bootstrap\[0\]/ })
  await t.throwsAsync(fp.start({ discovery: { announce: 'yes' } }), { instanceOf: TypeError, message: /announce/ })
  await t.throwsAsync(fp.start({ discovery: { reannounceInterval: 0 } }), { instanceOf: RangeError, message: /reannounceInterval/ })
  await t.throwsAsync(fp.start({ discovery: { announceAddresses: 1 } }), { instanceOf: TypeError, message: /announceAddresses/ })
  await t.throwsAsync(fp.start({ discovery: { relayIdleTime: 0 } }), { instanceOf: RangeError, message: /relayIdleTime/ })
  await t.throwsAsync(fp.start({ discovery: { relayNetwork: 7 } }), { instanceOf: TypeError, message: /relayNetwork/ })
  await t.throwsAsync(fp.start({ discovery: { relayNetwork: '' } }), { instanceOf: RangeError, message: /relayNetwork/ })
  await t.throwsAsync(fp.start({ discovery: { host: '::1' } }), { message: /IPv4/ })
  await t.throwsAsync(fp.lookup('not-a-node-id'), { instanceOf: TypeError, message: /nodeId/ })
  // Still startable afterwards.
  await fp.start()
  t.true(fp.getHttpPort() > 0)
})

test('several relays: bad relays options are typed errors naming the entry', async (t) => {
  const rp = new h.keynet.ReverseProxy()
  t.teardown(() => h.stopQuietly(rp))
  await t.throwsAsync(rp.start({ serverPort: 1, relays: 'x' }), { instanceOf: TypeError, message: /opts\.relays/ })
  await t.throwsAsync(rp.start({ serverPort: 1, relays: [{ host: '127.0.0.1', port: 1 }] }), { instanceOf: TypeError, message: /opts\.relays\[0\]/ })
  const many = Array.from({ length: 9 }, () => ({ host: '127.0.0.1', port: 1, nodeId: rp.constructor.name }))
  await t.throwsAsync(rp.start({ serverPort: 1, relays: many }), { instanceOf: RangeError, message: /opts\.relays.*at most 8/ })
})

test('a grpc-js client reaches a node that announces only its home relay (a token relay: the caller needs no token); locate() names the relay', async (t) => {
  const bootstrap = await privateDht(t, 4)
  const relay = new h.keynet.Relay()
  t.teardown(() => h.stopQuietly(relay))
  await t.throwsAsync(relay.start({ token: 's3cret', callers: 'yes' }), { instanceOf: TypeError, message: /opts\.callers/ })
  await relay.start({ token: 's3cret' })
  const relayOpts = { host: relay.getHost(), port: relay.getPort(), tcpPort: relay.getTcpPort(), nodeId: relay.getNodeId() }
  const grpcServer = await h.startGrpcEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: grpcServer.port, relay: { ...relayOpts, token: 's3cret' }, discovery: { bootstrap, announceAddresses: false } })
  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, announce: false } })
  const nodeId = rp.getNodeId()
  // Each lookup is itself the wait for the first announce.
  let located
  const until = Date.now() + 20_000
  do located = await fp.locate(nodeId)
  while (!located.relays.length && Date.now() < until)
  t.deepEqual(located.relays, [{ ...relayOpts, quic: true, websocket: false }])
  t.deepEqual(located.addresses, [], 'no direct address, not even an unsigned hint')
  t.deepEqual(fp.getRelayStatus(), [])

  const env = h.cleanEnv({ grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}` })
  const result = (await h.runJsonClient(t, process.execPath, [CLIENT, `${nodeId}.keynet:443`, 'unary'], { env })).result
  t.deepEqual(result, { text: 'hello keynet', count: 42 })
  const links = fp.getRelayStatus()
  t.is(links.length, 1, 'a link to the home relay, opened on demand')
  t.is(links[0].nodeId, relay.getNodeId())
  t.deepEqual(relay.getRegisteredNodeIds(), [rp.getNodeId()], 'the caller is not listed as reachable')
  await t.throwsAsync(fp.locate('nope'), { instanceOf: TypeError, message: /nodeId/ })
})
