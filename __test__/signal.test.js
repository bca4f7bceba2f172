'use strict'
// AbortSignal on the calls that wait. start() and lookup() give up (AbortError, nothing left
// running); stop() and closeConnection() cannot "not happen", so their signal hurries them: the
// drain is cut short, what is still open is reset, and they resolve.

const test = require('ava')
const net = require('node:net')
const h = require('./helpers')
const { generateIdentity, errors } = h.keynet

/** Longer than any wait below: a close that waited for it would time the test out. */
const END_TIME = 60_000

test('start({ signal }) aborted while waiting for a relay rejects with AbortError and leaves nothing running', async (t) => {
  const silentRelay = await h.startSilentUdp(t)
  const relayId = (await generateIdentity()).nodeId
  for (const [Proxy, startOpts] of [
    [h.keynet.ForwardProxy, {}],
    [h.keynet.ReverseProxy, { serverPort: 1 }],
  ]) {
    const proxy = Proxy === h.keynet.ForwardProxy ? new Proxy({ authToken: h.TOKEN, connConnectTime: END_TIME }) : new Proxy({ connConnectTime: END_TIME })
    t.teardown(() => h.stopQuietly(proxy))
    const controller = new AbortController()
    const pending = proxy.start({ ...startOpts, relay: { host: h.HOST, port: silentRelay.port, nodeId: relayId }, signal: controller.signal })
    await silentRelay.firstMessage() // the start is waiting for the relay's answer
    controller.abort()
    const e = await t.throwsAsync(h.withTimeout(pending, h.WAIT, 'start to reject'), { any: true })
    t.is(e.name, 'AbortError')
    t.is(proxy.getConnectionCount(), 0)
    t.throws(() => proxy.getNodeId(), { instanceOf: Proxy === h.keynet.ForwardProxy ? errors.ErrorForwardProxyNotRunning : errors.ErrorReverseProxyNotRunning })
    // Nothing half-started is in the way of the next start.
    await proxy.start(startOpts)
    t.true(proxy.getSocketPort() > 0)
    await proxy.stop()
  }
  // An already aborted signal: nothing starts at all.
  const fp = new h.keynet.ForwardProxy({ authToken: h.TOKEN })
  const e = await t.throwsAsync(fp.start({ signal: AbortSignal.abort() }), { any: true })
  t.is(e.name, 'AbortError')
  t.throws(() => fp.getProxyPort(), { instanceOf: errors.ErrorForwardProxyNotRunning })
})

/** A tunnel whose server never reads, with more bytes in flight than any buffer holds. */
async function stuckTunnel(t) {
  const server = await h.startTcpServer(t, (s) => s.pause())
  const { fp, rp } = await h.startPair(t, { serverPort: server.port, fp: { connEndTime: END_TIME }, rp: { connEndTime: END_TIME } })
  const client = await h.openTunnel(t, fp, rp)
  const seen = { end: false, errors: [] }
  client.on('end', () => (seen.end = true))
  client.on('error', (e) => seen.errors.push(e.code))
  client.write(Buffer.alloc(32 << 20))
  await h.waitFor(() => fp.getStats().bytesSent > 0, { what: 'bytes in flight' })
  return { fp, rp, client, seen }
}

for (const [name, close] of [
  ['fp.closeConnection', ({ fp, rp }, signal) => fp.closeConnection(h.HOST, rp.getIngressPort(), { signal })],
  ['rp.closeConnection', ({ fp, rp }, signal) => rp.closeConnection(h.HOST, fp.getEgressPort(), { signal })],
  ['fp.stop', ({ fp }, signal) => fp.stop({ signal })],
  ['rp.stop', ({ rp }, signal) => rp.stop({ signal })],
]) {
  test(`${name}({ signal }): aborting cuts the drain short, resets what is left and resolves`, async (t) => {
    const pair = await stuckTunnel(t)
    const controller = new AbortController()
    const closing = close(pair, controller.signal)
    let settled = false
    closing.finally(() => (settled = true)).catch(() => {})
    // Draining: the stuck tunnel holds the close (connEndTime is a minute). Seen from the side
    // that is not closing (a stopping proxy answers no questions).
    const other = name.startsWith('fp') ? pair.rp : pair.fp
    await h.waitFor(() => other.getStats().tunnelsOpen === 1, { what: 'the tunnel still open' })
    t.false(settled)
    controller.abort()
    await h.withTimeout(closing, h.WAIT, `${name} to resolve after the abort`)
    await h.socketClosed(pair.client)
    // Its upload was not all delivered, and it is told so: a reset (an end alone would be a lie;
    // the drain may have ended the other direction first, which is fine).
    t.true(pair.seen.errors.some((c) => c === 'ECONNRESET' || c === 'EPIPE'), `client errors: ${pair.seen.errors}`)
    // (The peer is told by a CONNECTION_CLOSE sent into a full-rate burst: its full receive
    // buffer can drop it, and then it learns at its keepalive timeout. Not asserted here.)
    const closer = name.startsWith('fp') ? pair.fp : pair.rp
    t.is(closer.getConnectionCount(), 0)
  })
}

test('lookup({ signal }) and locate({ signal }) reject with the abort reason', async (t) => {
  const bootstrap = await h.privateDht(t, 2)
  const fp = await h.startForwardProxy(t, {}, { discovery: { bootstrap, announce: false } })
  const id = (await generateIdentity()).nodeId
  const reason = new Error('no longer needed')
  for (const call of [(signal) => fp.lookup(id, { signal }), (signal) => fp.locate(id, { signal })]) {
    const controller = new AbortController()
    const pending = call(controller.signal)
    controller.abort(reason)
    t.is(await t.throwsAsync(h.withTimeout(pending, h.WAIT, 'to reject')), reason)
    const e = await t.throwsAsync(call(AbortSignal.abort()), { any: true })
    t.is(e.name, 'AbortError')
  }
  await t.throwsAsync(fp.lookup(id, { signal: 'soon' }), { code: 'ERR_INVALID_ARG_TYPE' })
})
