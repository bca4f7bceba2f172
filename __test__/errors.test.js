'use strict'
// The typed errors of the public API: what openConnection rejects with, getters of a stopped proxy,
// argument validation, AbortSignal, allowedNodeIds, and key rotation.

const test = require('ava')
const h = require('./helpers')

const { errors, ForwardProxy, ReverseProxy, generateIdentity, rotateIdentity } = h.keynet

async function pairWithServer(t, opts = {}) {
  const server = await h.startEchoServer(t)
  return h.startPair(t, { serverPort: server.port, ...opts })
}

test('pinned node id mismatch rejects with ErrorCertChainUnclaimed', async (t) => {
  const { fp, rp } = await pairWithServer(t)
  const wrong = (await generateIdentity()).nodeId
  const e = await t.throwsAsync(fp.openConnection(wrong, h.HOST, rp.getIngressPort(), { timeout: 5000 }))
  t.true(e instanceof errors.ErrorCertChainUnclaimed, `${e.name}: ${e.message}`)
  t.true(e instanceof errors.ErrorCertChain)
  t.true(e instanceof errors.ErrorNetwork)
  t.is(e.code, 'ErrorCertChainUnclaimed')
  t.is(e.name, 'ErrorCertChainUnclaimed')
  t.is(fp.getConnectionCount(), 0)
  // The right pin still connects.
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  t.is(fp.getConnectionCount(), 1)
})

test('a failed openConnection counts in getStats().failures by its code (an aborted one does not)', async (t) => {
  const { fp, rp } = await pairWithServer(t)
  const wrong = (await generateIdentity()).nodeId
  await t.throwsAsync(fp.openConnection(wrong, h.HOST, rp.getIngressPort(), { timeout: 5000 }))
  const silent = await h.startSilentUdp(t)
  await t.throwsAsync(fp.openConnection(wrong, h.HOST, silent.port, { timeout: 200 }))
  await t.throwsAsync(fp.openConnection(wrong, h.HOST, silent.port, { signal: AbortSignal.abort() }), { any: true })
  t.deepEqual(fp.getStats().failures, { ErrorCertChainUnclaimed: 1, ErrorConnectionStartTimeout: 1 })
})

test('a wrong pin is refused even when a connection to the address is already up', async (t) => {
  const { fp, rp } = await pairWithServer(t)
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  const wrong = (await generateIdentity()).nodeId
  const e = await t.throwsAsync(fp.openConnection(h.HOST, rp.getIngressPort(), { nodeId: wrong, timeout: 5000 }))
  t.true(e instanceof errors.ErrorCertChainUnclaimed, `${e.name}: ${e.message}`)
})

test('silent peer: a per-call timeout overrides connConnectTime and rejects with ErrorConnectionStartTimeout', async (t) => {
  const fp = await h.startForwardProxy(t, { connConnectTime: 20000 })
  const silent = await h.startSilentUdp(t)
  const id = (await generateIdentity()).nodeId
  const started = Date.now()
  const e = await t.throwsAsync(fp.openConnection(id, h.HOST, silent.port, { timeout: 300 }))
  const elapsed = Date.now() - started
  t.true(e instanceof errors.ErrorConnectionStartTimeout, `${e.name}: ${e.message}`)
  t.true(e instanceof errors.ErrorConnectionStart)
  t.true(e instanceof errors.ErrorNetwork)
  t.is(e.code, 'ErrorConnectionStartTimeout')
  t.true(elapsed >= 250 && elapsed < 5000, `rejected after ${elapsed} ms`)
  t.true(silent.messages.length > 0, 'the proxy did send to the peer')
})

test('port 0 rejects with ErrorConnectionStart within 2 s', async (t) => {
  const fp = await h.startForwardProxy(t)
  const id = (await generateIdentity()).nodeId
  const started = Date.now()
  const e = await t.throwsAsync(fp.openConnection(id, h.HOST, 0, { timeout: 5000 }))
  t.true(e instanceof errors.ErrorConnectionStart, `${e.name}: ${e.message}`)
  t.is(e.code, 'ErrorConnectionStart')
  t.true(Date.now() - started < 2000)
})

test('getters before start and after stop throw the NotRunning errors (getConnectionCount answers 0)', async (t) => {
  const server = await h.startEchoServer(t)
  const fp = new ForwardProxy({ authToken: h.TOKEN })
  const rp = new ReverseProxy()
  t.teardown(() => Promise.all([h.stopQuietly(fp), h.stopQuietly(rp)]))
  const fpGetters = ['getNodeId', 'getProxyHost', 'getProxyPort', 'getEgressHost', 'getEgressPort', 'getHttpPort', 'getSocketPort']
  const rpGetters = ['getNodeId', 'getIngressHost', 'getIngressPort', 'getServerHost', 'getServerPort', 'getSocketPort']
  const check = (when) => {
    for (const g of fpGetters) {
      const e = t.throws(() => fp[g](), { instanceOf: errors.ErrorForwardProxyNotRunning }, `fp.${g} ${when}`)
      t.is(e && e.code, 'ErrorForwardProxyNotRunning')
    }
    for (const g of rpGetters) {
      const e = t.throws(() => rp[g](), { instanceOf: errors.ErrorReverseProxyNotRunning }, `rp.${g} ${when}`)
      t.is(e && e.code, 'ErrorReverseProxyNotRunning')
    }
    t.is(fp.getConnectionCount(), 0, `fp.getConnectionCount ${when}`)
    t.is(rp.getConnectionCount(), 0, `rp.getConnectionCount ${when}`)
    t.throws(() => fp.getConnectionInfoByIngress(h.HOST, 1), { instanceOf: errors.ErrorForwardProxyNotRunning })
    t.throws(() => rp.getConnectionInfoByEgress(h.HOST, 1), { instanceOf: errors.ErrorReverseProxyNotRunning })
  }
  check('before start')
  await t.throwsAsync(fp.openConnection(h.HOST, 1), { instanceOf: errors.ErrorForwardProxyNotRunning })
  await fp.start()
  await rp.start({ serverPort: server.port })
  t.is(typeof fp.getNodeId(), 'string')
  t.is(rp.getServerPort(), server.port)
  await fp.stop()
  await rp.stop()
  check('after stop')
})

// ---- argument validation --------------------------------------------------------------------

/** Asserts `fn` throws `Cls` (synchronously or as a rejection) with `name` in the message. */
async function assertArgError(t, fn, Cls, name) {
  let err
  try {
    await fn()
  } catch (e) {
    err = e
  }
  t.true(err instanceof Cls, `expected ${Cls.name} naming "${name}", got ${err && `${err.name}: ${err.message}`}`)
  if (err) t.true(err.message.includes(name), `message should name "${name}": ${err.message}`)
}

test('bad arguments throw TypeError / RangeError naming the argument', async (t) => {
  const fp = await h.startForwardProxy(t)
  const rp = await h.startReverseProxy(t, { serverPort: 1 })
  const id = (await generateIdentity()).nodeId
  await assertArgError(t, () => fp.openConnection(id, 'nope', 1), TypeError, 'host')
  await assertArgError(t, () => fp.openConnection(h.HOST, 'nope'), TypeError, 'port')
  await assertArgError(t, () => fp.openConnection(id, h.HOST, -1), RangeError, 'port')
  await assertArgError(t, () => fp.openConnection(id, h.HOST, 70000), RangeError, 'port')
  await assertArgError(t, () => fp.openConnection(id, h.HOST, 1.5), TypeError, 'port')
  await assertArgError(t, () => fp.openConnection(h.HOST, 1, { nodeId: 'x' }), TypeError, 'nodeId')
  await assertArgError(t, () => fp.openConnection(id, h.HOST, 1, { timeout: -1 }), RangeError, 'timeout')
  await assertArgError(t, () => fp.openConnection(id, h.HOST, 1, { signal: 'no' }), TypeError, 'signal')
  await assertArgError(t, () => fp.closeConnection('nope', 1), TypeError, 'host')
  await assertArgError(t, () => fp.getConnectionInfoByIngress(h.HOST, 65536), RangeError, 'port')
  await assertArgError(t, () => fp.addDirectConnection(-1, h.HOST), RangeError, 'port')
  await assertArgError(t, () => fp.on('nope', () => {}), TypeError, 'event')
  await assertArgError(t, () => rp.getConnectionInfoByEgress('nope', 1), TypeError, 'egressHost')
  await assertArgError(t, () => rp.openConnection(h.HOST, 1.5), TypeError, 'egressPort')
  await assertArgError(t, () => new ForwardProxy({ authToken: h.TOKEN, connConnectTime: -5 }), RangeError, 'connConnectTime')
  await assertArgError(t, () => new ReverseProxy({ connKeepAliveTimeoutTime: 'soon' }), TypeError, 'connKeepAliveTimeoutTime')
  await assertArgError(t, () => new ForwardProxy({}), TypeError, 'authToken')
  await assertArgError(t, () => new ForwardProxy(), TypeError, 'authToken')
  await assertArgError(t, () => new ReverseProxy().start({}), TypeError, 'serverPort')
  await assertArgError(t, () => new ReverseProxy().start({ serverPort: 1, allowedNodeIds: ['x'] }), TypeError, 'allowedNodeIds')
  await assertArgError(t, () => new ForwardProxy({ authToken: h.TOKEN }).start({ proxyPort: 99999 }), RangeError, 'proxyPort')
  await assertArgError(t, () => new ForwardProxy({ authToken: h.TOKEN }).start({ maxConnections: 0 }), RangeError, 'maxConnections')
  await assertArgError(t, () => new ReverseProxy().start({ serverPort: 1, maxConnections: 1.5 }), TypeError, 'maxConnections')
  await assertArgError(t, () => new ReverseProxy().start({ serverPort: 1, maxStreamsPerConnection: -1 }), RangeError, 'maxStreamsPerConnection')
})

test('openConnection(nodeId, host, port) with a malformed nodeId names "nodeId"', async (t) => {
  // index.js picks the (nodeId, host, port) form only if the first argument already is a valid
  // node id; a malformed one makes it read the call as (host, port, opts) = ('x', '127.0.0.1', 1)
  // and the TypeError says: The "opts" argument must be an object. Received type number (1).
  const fp = await h.startForwardProxy(t)
  await assertArgError(t, () => fp.openConnection('x', h.HOST, 1), TypeError, 'nodeId')
})

// ---- AbortSignal ------------------------------------------------------------------------------

/** The rejection reason of `promise` (fails if it resolves); AbortErrors may be DOMExceptions. */
async function rejection(t, promise) {
  try {
    await promise
  } catch (e) {
    return e
  }
  t.fail('expected a rejection')
  return {}
}

test('AbortSignal aborts an openConnection in progress with an AbortError', async (t) => {
  const fp = await h.startForwardProxy(t, { connConnectTime: 20000 })
  const silent = await h.startSilentUdp(t)
  const id = (await generateIdentity()).nodeId
  const controller = new AbortController()
  const pending = fp.openConnection(id, h.HOST, silent.port, { signal: controller.signal })
  await silent.firstMessage() // the dial has started
  const abortedAt = Date.now()
  controller.abort()
  const e = await rejection(t, h.withTimeout(pending, 5000, 'openConnection to reject'))
  t.is(e.name, 'AbortError')
  t.true(Date.now() - abortedAt < 2000)
  t.is(fp.getConnectionCount(), 0)
  // An already aborted signal rejects at once.
  const e2 = await rejection(t, fp.openConnection(id, h.HOST, silent.port, { signal: AbortSignal.abort() }))
  t.is(e2.name, 'AbortError')
  // The reason given to abort() is what the promise rejects with.
  const silent2 = await h.startSilentUdp(t)
  const reason = new Error('changed my mind')
  const c3 = new AbortController()
  const p3 = fp.openConnection(id, h.HOST, silent2.port, { signal: c3.signal })
  await silent2.firstMessage()
  c3.abort(reason)
  t.is(await rejection(t, h.withTimeout(p3, 5000, 'openConnection to reject')), reason)
})

/**
 * Calls `start(signal)` and aborts in the same tick, up to `tries` times; fails on the first
 * call that does not reject within 1 s (its abort was lost).
 */
async function assertImmediateAbortsArePrompt(t, start, tries = 300) {
  for (let i = 0; i < tries; i++) {
    const controller = new AbortController()
    const pending = start(controller.signal)
    controller.abort()
    const outcome = await Promise.race([
      pending.then(() => 'resolved', (e) => e.name),
      new Promise((r) => setTimeout(() => r('still pending after 1 s'), 1000)),
    ])
    if (outcome !== 'AbortError') {
      t.fail(`call ${i}: abort() right after the call was lost: ${outcome}`)
      return
    }
  }
  t.pass()
}

test('fp.openConnection aborted in the same tick rejects promptly', async (t) => {
  // The abort may arrive before the native async body starts: index.js registers the operation
  // synchronously (beginOp) so the cancellation is never lost.
  const fp = await h.startForwardProxy(t, { connConnectTime: 20000 })
  const silent = await h.startSilentUdp(t)
  const id = (await generateIdentity()).nodeId
  await assertImmediateAbortsArePrompt(t, (signal) => fp.openConnection(id, h.HOST, silent.port, { signal }))
})

test('rp.openConnection aborted in the same tick rejects promptly', async (t) => {
  // The same for the reverse proxy's punch.
  const rp = await h.startReverseProxy(t, { serverPort: 1 }, { connConnectTime: 20000 })
  const silent = await h.startSilentUdp(t)
  await assertImmediateAbortsArePrompt(t, (signal) => rp.openConnection(h.HOST, silent.port, { signal }))
})

// ---- allowedNodeIds ---------------------------------------------------------------------------

test('allowedNodeIds: a forward proxy not in the list cannot tunnel to the server', async (t) => {
  const server = await h.startEchoServer(t)
  const other = (await generateIdentity()).nodeId
  const { fp, rp } = await h.startPair(t, { serverPort: server.port, rpStart: { allowedNodeIds: [other] } })
  const rpEvents = h.recordEvents(rp)
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp) })
  t.is(res.status, 502, res.head)
  t.is(server.count, 0, 'the server was never reached')
  t.is(rpEvents.of('connection').length, 0, 'the reverse proxy never accepted the connection')
  t.is(rp.getConnectionCount(), 0)
  await h.waitFor(() => fp.getConnectionCount() === 0, { what: 'fp count 0' })
})

test('allowedNodeIds: openConnection from a node not in the list rejects', async (t) => {
  // With TLS 1.3 the client's side of the handshake completes before the server has checked
  // the client certificate. forward_proxy.rs connect() takes the completed `Connecting` as
  // success: openConnection resolves and a 'connection' event fires, then the reverse proxy's
  // refusal arrives as a 'close' with reason 'remote'.
  const server = await h.startEchoServer(t)
  const other = (await generateIdentity()).nodeId
  const { fp, rp } = await h.startPair(t, { serverPort: server.port, rpStart: { allowedNodeIds: [other] } })
  const fpEvents = h.recordEvents(fp)
  const e = await rejection(t, fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort(), { timeout: 5000 }))
  t.true(e instanceof errors.ErrorNetwork, `${e.name}: ${e.message}`)
  t.is(fpEvents.of('connection').length, 0, 'no connection event for a refused connection')
})

test('setAllowedNodeIds while running: a node taken off the list is disconnected and refused; null lets any in again', async (t) => {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const rpEvents = h.recordEvents(rp)
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  await rpEvents.wait('connection')
  const other = (await generateIdentity()).nodeId
  rp.setAllowedNodeIds([other])
  t.is((await rpEvents.wait('close')).reason, 'local', 'its connection ended')
  await h.waitFor(() => fp.getConnectionCount() === 0, { what: 'fp count 0' })
  const e = await rejection(t, fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort(), { timeout: 5000 }))
  t.true(e instanceof errors.ErrorNetwork, `${e.name}: ${e.message}`)
  rp.setAllowedNodeIds([other, fp.getNodeId()])
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  rp.setAllowedNodeIds(null)
  t.is(fp.getConnectionCount(), 1)
  t.throws(() => rp.setAllowedNodeIds(['nope']), { code: 'ERR_INVALID_ARG_TYPE' })
})

test('allowedNodeIds: a forward proxy in the list connects', async (t) => {
  const allowed = await generateIdentity()
  const server = await h.startEchoServer(t)
  const other = (await generateIdentity()).nodeId
  const rp = await h.startReverseProxy(t, { serverPort: server.port, allowedNodeIds: [other, allowed.nodeId] })
  const fp = await h.startForwardProxy(t, {}, { tlsConfig: allowed.tlsConfig })
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  t.is(rp.getConnectionInfoByEgress(h.HOST, fp.getEgressPort()).nodeId, allowed.nodeId)
})

// ---- key rotation ----------------------------------------------------------------------------

test('key rotation: a reverse proxy with a rotated identity is accepted for the old and the new node id', async (t) => {
  const old = await generateIdentity()
  const rotated = rotateIdentity(old.tlsConfig)
  t.not(rotated.nodeId, old.nodeId)
  const server = await h.startEchoServer(t)
  const rp = await h.startReverseProxy(t, { serverPort: server.port, tlsConfig: rotated.tlsConfig })
  t.is(rp.getNodeId(), rotated.nodeId)
  const fpOld = await h.startForwardProxy(t)
  const fpNew = await h.startForwardProxy(t)
  await fpOld.openConnection(old.nodeId, h.HOST, rp.getIngressPort())
  await fpNew.openConnection(rotated.nodeId, h.HOST, rp.getIngressPort())
  // Tunnels pinned to either id work.
  await h.assertEchoes(t, await h.openTunnel(t, fpOld, rp, { pin: false }))
  const pinnedOld = await h.rawConnect(t, fpOld.getProxyPort(), { target: h.targetOf(rp, { nodeId: old.nodeId }) })
  t.is(pinnedOld.status, 200)
  await h.assertEchoes(t, await h.openTunnel(t, fpNew, rp))
  // A node id that is in neither certificate is still refused.
  const stranger = (await generateIdentity()).nodeId
  const fp3 = await h.startForwardProxy(t)
  const e = await t.throwsAsync(fp3.openConnection(stranger, h.HOST, rp.getIngressPort(), { timeout: 5000 }))
  t.true(e instanceof errors.ErrorCertChainUnclaimed, `${e.name}: ${e.message}`)
})

const keynet = h.keynet

test('unusable TLS material is ErrorInvalidTlsConfig from every entry point (sync and async)', async (t) => {
  const bad = { keyPrivatePem: 'not a key', certChainPem: 'not a certificate' }
  const check = (e, where) => {
    t.true(e instanceof errors.ErrorInvalidTlsConfig, `${where}: ${e?.constructor?.name}`)
    t.true(e instanceof errors.ErrorNetwork, `${where}: in the ErrorNetwork hierarchy`)
    t.is(e.code, 'ErrorInvalidTlsConfig', where)
    t.regex(e.message, /^invalid TLS config: /, where)
  }
  check(t.throws(() => keynet.nodeIdFromCertificate('garbage')), 'nodeIdFromCertificate')
  check(t.throws(() => keynet.rotateIdentity(bad)), 'rotateIdentity')
  const rp = new keynet.ReverseProxy()
  check(await t.throwsAsync(rp.start({ serverPort: 1, tlsConfig: bad })), 'ReverseProxy.start')
  const fp = new keynet.ForwardProxy({ authToken: 't' })
  check(await t.throwsAsync(fp.start({ tlsConfig: bad })), 'ForwardProxy.start')
  t.throws(() => rp.getNodeId(), { instanceOf: errors.ErrorReverseProxyNotRunning }, 'nothing started')
})
