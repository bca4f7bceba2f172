'use strict'
// Services by name on a private mainline DHT of `keynet-relay --dht` nodes on loopback: three
// reverse proxies offer `echo`; a grpc-js client that knows only `echo.service.keynet:443` and
// `grpc_proxy` reaches them, a new client per call (as the original usage pattern), and every
// replica serves some calls. Unknown names: 502 and ErrorServiceNotFound; bad names: typed.

const path = require('node:path')
const test = require('ava')
const h = require('./helpers')

const CLIENT = path.join(h.FIXTURES, 'grpc-client.js')
const { ErrorServiceNotFound } = h.keynet.errors

test('a grpc-js client calls echo.service.keynet: 30 calls across three replicas, every replica used', async (t) => {
  const bootstrap = await h.privateDht(t, 4)
  const servers = []
  const replicas = []
  for (let i = 0; i < 3; i++) {
    const server = await h.startGrpcEchoServer(t)
    servers.push(server)
    replicas.push(await h.startReverseProxy(t, { serverPort: server.port, discovery: { bootstrap, network: 'avatest', services: ['echo'] } }))
  }
  t.deepEqual(replicas[0].getServices(), ['echo'])
  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, network: 'avatest', announce: false } })
  // Each lookup is itself the wait for the replicas' first announces.
  const ids = new Set(replicas.map((r) => r.getNodeId()))
  let found = []
  const until = Date.now() + 20_000
  do found = await fp.lookupService('echo')
  while (found.length < 3 && Date.now() < until)
  t.deepEqual(found.map((m) => m.nodeId).sort(), [...ids].sort())
  t.true(found.every((m) => m.verified === false && m.ageMs >= 0 && Array.isArray(m.addresses)))

  const env = h.cleanEnv({ grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}` })
  const t0 = Date.now()
  const { result } = await h.runJsonClient(t, process.execPath, [CLIENT, 'echo.service.keynet:443', 'unaryFresh', '30'], { env })
  t.log(`30 calls, a new grpc-js client each, in ${Date.now() - t0} ms; per replica: ${servers.map((s) => s.calls.length).join(', ')}`)
  t.is(result.ok, 30, JSON.stringify(result.failures))
  t.true(servers.every((s) => s.calls.length > 0), `every replica served calls: ${servers.map((s) => s.calls.length)}`)
  t.is(servers.reduce((n, s) => n + s.calls.length, 0), 30)

  // openConnection({ service }) reaches one of them, with the usual ConnectionInfo.
  const info = await fp.openConnection({ service: 'echo' })
  t.true(ids.has(info.nodeId))

  // A replica that withdraws is skipped from then on.
  t.true(replicas[0].withdrawService('echo'))
  t.false(replicas[0].withdrawService('echo'), 'already withdrawn')
  t.deepEqual(replicas[0].getServices(), [])
  const fresh = await h.startForwardProxy(t, {}, { discovery: { bootstrap, network: 'avatest', announce: false } })
  const gone = replicas[0].getNodeId()
  let after
  const until2 = Date.now() + 20_000
  do after = await fresh.lookupService('echo')
  while (after.some((m) => m.nodeId === gone) && Date.now() < until2)
  t.false(after.some((m) => m.nodeId === gone), 'the withdrawn replica is no longer listed')
  t.is(after.length, 2)
})

test('an unknown service name: CONNECT 502 and ErrorServiceNotFound; bad names are typed errors', async (t) => {
  const bootstrap = await h.privateDht(t, 2)
  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, network: 'avatest2', announce: false } })
  const err = await t.throwsAsync(fp.openConnection({ service: 'nobody', timeout: 4000 }), { instanceOf: ErrorServiceNotFound })
  t.is(err.code, 'ErrorServiceNotFound')
  t.regex(err.message, /nobody/)
  const res = await h.rawConnect(t, fp.getHttpPort(), { target: 'nobody.service.keynet:443' })
  t.is(res.status, 502)
  res.socket.destroy()
  for (const bad of ['', 'a.b', 'x'.repeat(64), 'é', 'a b']) {
    await t.throwsAsync(fp.lookupService(bad), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_VALUE' }, JSON.stringify(bad))
    await t.throwsAsync(fp.openConnection({ service: bad }), { instanceOf: TypeError }, JSON.stringify(bad))
  }
  await t.throwsAsync(fp.lookupService(42), { instanceOf: TypeError, code: 'ERR_INVALID_ARG_TYPE' })
  const bad400 = await h.rawConnect(t, fp.getHttpPort(), { target: 'a!b.service.keynet:443' })
  t.is(bad400.status, 400)
  bad400.socket.destroy()
  const rp = new h.keynet.ReverseProxy()
  await t.throwsAsync(rp.start({ serverPort: 1, discovery: { bootstrap, services: ['ok', 'not ok'] } }), { instanceOf: TypeError, message: /services\[1\]/ })
  await t.throwsAsync(rp.start({ serverPort: 1, discovery: { bootstrap, serviceTrust: { echo: {} } } }), { instanceOf: TypeError, message: /serviceTrust\.echo/ })
})

test('a restricted name: the owner signs its members; a caller trusting the owner reaches only them', async (t) => {
  const bootstrap = await h.privateDht(t, 4)
  const owner = h.keynet.generateServiceOwner()
  t.regex(owner.publicKey, /^[0-9a-f]{64}$/)
  const memberId = await h.keynet.generateIdentity()
  const membership = h.keynet.signServiceMember(owner.privateKey, 'vault', memberId.nodeId, { network: 'avatest3' })
  const memberServer = await h.startGrpcEchoServer(t)
  const impostorServer = await h.startGrpcEchoServer(t)
  const member = await h.startReverseProxy(t, { serverPort: memberServer.port, tlsConfig: memberId.tlsConfig, discovery: { bootstrap, network: 'avatest3', services: [{ name: 'vault', membership }] } })
  const impostor = await h.startReverseProxy(t, { serverPort: impostorServer.port, discovery: { bootstrap, network: 'avatest3', services: ['vault'] } })
  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, network: 'avatest3', announce: false, serviceTrust: { vault: { owner: owner.publicKey } } } })
  let found = []
  const until = Date.now() + 20_000
  do found = await fp.lookupService('vault')
  while (found.length < 2 && Date.now() < until)
  const byId = Object.fromEntries(found.map((m) => [m.nodeId, m.verified]))
  t.deepEqual(byId, { [member.getNodeId()]: true, [impostor.getNodeId()]: false })
  const env = h.cleanEnv({ grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}` })
  const { result } = await h.runJsonClient(t, process.execPath, [CLIENT, 'vault.service.keynet:443', 'unaryFresh', '6'], { env })
  t.is(result.ok, 6, JSON.stringify(result.failures))
  t.is(memberServer.calls.length, 6)
  t.is(impostorServer.calls.length, 0, 'the impostor is found, never called')
})
