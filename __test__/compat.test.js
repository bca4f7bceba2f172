'use strict'
// The original's names and shapes, used the way its callers did: readonly fields, setTLSConfig,
// getConnectionCount() in any state, its error classes with description/exitCode/data, its
// utils, zero-IP targets meaning this machine, and start(token) on a running proxy changing
// nothing.

const test = require('ava')
const h = require('./helpers')

const { ForwardProxy, ReverseProxy, errors, utils, generateIdentity } = h.keynet

test('readonly fields: the token and the timing in use, defaults filled in', (t) => {
  const fp = new ForwardProxy({ authToken: 'abc', connEndTime: 250 })
  t.is(fp.authToken, 'abc')
  t.is(fp.connConnectTime, 20000)
  t.is(fp.connKeepAliveTimeoutTime, 20000)
  t.is(fp.connKeepAliveIntervalTime, 1000)
  t.is(fp.connPunchIntervalTime, 50)
  t.is(fp.connEndTime, 250)
  const rp = new ReverseProxy({ connConnectTime: 1234 })
  t.is(rp.connConnectTime, 1234)
  t.is(rp.connEndTime, 1000)
  t.throws(() => {
    fp.connEndTime = 5
  }, { instanceOf: TypeError }, 'readonly')
})

test('getConnectionCount() is 0 before start and after stop, as in the original', async (t) => {
  const server = await h.startEchoServer(t)
  const fp = new ForwardProxy({ authToken: h.TOKEN })
  const rp = new ReverseProxy()
  t.is(fp.getConnectionCount(), 0)
  t.is(rp.getConnectionCount(), 0)
  await rp.start({ serverPort: server.port })
  await fp.start()
  t.teardown(() => Promise.all([fp.stop(), rp.stop()]))
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  t.is(fp.getConnectionCount(), 1)
  await Promise.all([fp.stop(), rp.stop()])
  t.is(fp.getConnectionCount(), 0)
  t.is(rp.getConnectionCount(), 0)
})

test("start('token') on a running proxy changes nothing; on a stopped one it is the token", async (t) => {
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port })
  const fp = new ForwardProxy({ authToken: 'first' })
  t.teardown(() => fp.stop())
  await fp.start('second')
  t.is(fp.authToken, 'second')
  await fp.start('third')
  t.is(fp.authToken, 'second', 'a running proxy kept its token')
  const target = h.targetOf(rp)
  const refused = await h.rawConnect(t, fp.getProxyPort(), { target, auth: h.basicAuth('third') })
  t.is(refused.status, 407)
  const admitted = await h.rawConnect(t, fp.getProxyPort(), { target, auth: h.basicAuth('second') })
  t.is(admitted.status, 200)
})

test('setTLSConfig is setTlsConfig', async (t) => {
  const fp = await h.startForwardProxy(t)
  const id = await generateIdentity()
  fp.setTLSConfig(id.tlsConfig)
  t.is(fp.getNodeId(), id.nodeId)
  t.throws(() => fp.setTLSConfig({ keyPrivatePem: 'x', certChainPem: 'y' }), { instanceOf: errors.ErrorInvalidTlsConfig })
})

test("every original error class is exported, with the original's description, exitCode and data", (t) => {
  const table = {
    ErrorForwardProxyNotRunning: ['ForwardProxy is not running', 64],
    ErrorReverseProxyNotRunning: ['ReverseProxy is not running', 64],
    ErrorForwardProxyInvalidUrl: ['Invalid target host used for HTTP connect proxy', 76],
    ErrorForwardProxyAuth: ['Incorrect HTTP connect proxy password', 77],
    ErrorConnectionNotRunning: ['Connection is not running', 64],
    ErrorConnectionComposed: ['Connection is composed', 64],
    ErrorConnectionNotComposed: ['Connection is not composed', 64],
    ErrorConnectionMessageParse: ['Network message received is invalid', 75],
    ErrorConnectionTimeout: ['Connection keep-alive timed out', 69],
    ErrorConnectionEndTimeout: ['Connection end timed out', 69],
    ErrorConnectionStart: ['Connection start failed', 76],
    ErrorConnectionStartTimeout: ['Connection start timed out', 68],
    ErrorConnectionCompose: ['Connection compose failed', 76],
    ErrorConnectionComposeTimeout: ['Connection compose timed out', 68],
    ErrorCertChainEmpty: ['Certificate chain is empty', 76],
    ErrorCertChainUnclaimed: ['The target node id is not claimed by any certificate', 76],
    ErrorCertChainBroken: ['The signature chain is broken', 76],
    ErrorCertChainDateInvalid: ['Certificate in the chain is expired', 76],
    ErrorCertChainNameInvalid: ['Certificate is missing the common name', 76],
    ErrorCertChainKeyInvalid: ['Certificate public key does not generate the Node ID', 76],
    ErrorCertChainSignatureInvalid: ['Certificate self-signed signature is invalid', 76],
  }
  for (const [name, [description, exitCode]] of Object.entries(table)) {
    const Cls = errors[name]
    t.is(typeof Cls, 'function', `${name} is exported`)
    const e = new Cls('m', { data: { k: 1 } })
    t.true(e instanceof errors.ErrorNetwork, name)
    t.is(e.name, name)
    t.is(e.code, name)
    t.is(e.description, description, name)
    t.is(e.exitCode, exitCode, name)
    t.is(Cls.exitCode, exitCode, name)
    t.deepEqual(e.data, { k: 1 })
  }
  t.true(new errors.ErrorConnectionComposeTimeout() instanceof errors.ErrorConnectionCompose)
  t.true(new errors.ErrorConnectionStartTimeout() instanceof errors.ErrorConnectionStart)
  t.true(new errors.ErrorHostnameResolutionFailed() instanceof errors.ErrorNetwork)
  t.deepEqual(new errors.ErrorNetwork('x').data, {})
})

test('a thrown error carries the fields too', async (t) => {
  const fp = new ForwardProxy({ authToken: h.TOKEN })
  const e = t.throws(() => fp.getNodeId(), { instanceOf: errors.ErrorForwardProxyNotRunning })
  t.is(e.description, 'ForwardProxy is not running')
  t.is(e.exitCode, 64)
  t.deepEqual(e.data, {})
})

test("utils: the original's helpers", async (t) => {
  t.is(utils.buildAddress('127.0.0.1'), '127.0.0.1:0')
  t.is(utils.buildAddress('::1', 100), '[::1]:100')
  t.is(utils.buildAddress('::', 0), '[::]:0')
  t.deepEqual(utils.parseAddress('127.0.0.1:5'), ['127.0.0.1', 5])
  t.deepEqual(utils.parseAddress('[::1]:7'), ['::1', 7])
  t.deepEqual(utils.parseAddress('10.0.0.1'), ['10.0.0.1', 80])
  t.throws(() => utils.parseAddress('not an address'), { instanceOf: TypeError })
  t.true(utils.isValidHost('::1'))
  t.false(utils.isValidHost('localhost'))
  t.is(utils.resolvesZeroIP('0.0.0.0'), '127.0.0.1')
  t.is(utils.resolvesZeroIP('::'), '::1')
  t.is(utils.resolvesZeroIP('0:0:0:0:0:0:0:0'), '::1')
  t.is(utils.resolvesZeroIP('10.0.0.1'), '10.0.0.1')
  t.is(utils.toAuthToken('abc'), 'Basic YWJj')
  const id = await generateIdentity()
  t.is(utils.certNodeId(id.tlsConfig.certChainPem), id.nodeId)
})

test('a zero-IP target means this machine: openConnection and CONNECT to 0.0.0.0', async (t) => {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const info = await fp.openConnection('0.0.0.0', rp.getIngressPort(), { nodeId: rp.getNodeId() })
  t.is(info.nodeId, rp.getNodeId())
  t.is(info.ingressHost, '127.0.0.1')
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: `0.0.0.0:${rp.getIngressPort()}?nodeId=${rp.getNodeId()}` })
  t.is(res.status, 200)
  await h.assertEchoes(t, res.socket)
  t.is(fp.getConnectionCount(), 1, 'both reached the same connection')
})

test('getConnections() lists every live connection on both sides (what keynet status shows)', async (t) => {
  const rp1 = await h.startReverseProxy(t, { serverPort: 1 })
  const rp2 = await h.startReverseProxy(t, { serverPort: 1 })
  const fp = await h.startForwardProxy(t)
  t.deepEqual(fp.getConnections(), [])
  await fp.openConnection(rp1.getNodeId(), h.HOST, rp1.getIngressPort())
  await fp.openConnection(rp2.getNodeId(), h.HOST, rp2.getIngressPort())
  t.deepEqual(fp.getConnections().map((c) => c.nodeId).sort(), [rp1.getNodeId(), rp2.getNodeId()].sort())
  await h.waitFor(() => rp1.getConnections().length === 1, { what: "rp1's connection" })
  t.is(rp1.getConnections()[0].nodeId, fp.getNodeId())
  t.is(rp1.getConnections()[0].egressPort, fp.getEgressPort())
  await fp.stop()
  t.throws(() => fp.getConnections(), { instanceOf: h.keynet.errors.ErrorForwardProxyNotRunning })
})
