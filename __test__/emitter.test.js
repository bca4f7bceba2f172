'use strict'
// The proxies are EventEmitters: events.once / events.on work on them, listeners run with
// `this` = the proxy, removeListener and listenerCount behave as on any emitter, and a misspelt
// event name is refused.

const { once, on } = require('node:events')
const test = require('ava')
const h = require('./helpers')

test('events.once and events.on on both proxies; this, removeListener, listenerCount', async (t) => {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  t.true(fp instanceof require('node:events').EventEmitter)

  let self = null
  const removed = () => t.fail('a removed listener was called')
  fp.on('connection', removed)
  fp.removeListener('connection', removed)
  fp.once('connection', function () {
    self = this
  })
  const connected = Promise.all([once(fp, 'connection'), once(rp, 'connection')])
  await h.assertEchoes(t, await h.openTunnel(t, fp, rp))
  const [[fpEvent], [rpEvent]] = await connected
  t.is(fpEvent.nodeId, rp.getNodeId())
  t.is(rpEvent.nodeId, fp.getNodeId())
  t.is(self, fp, 'listeners run with this = the proxy')
  t.is(fp.listenerCount('connection'), 0, 'once listeners are gone after firing')

  const closes = on(rp, 'close')
  await fp.closeConnection(h.HOST, rp.getIngressPort())
  for await (const [e] of closes) {
    t.is(e.reason, 'remote')
    break
  }
  t.is(rp.listenerCount('close'), 0, 'leaving the loop removed its listener')
  t.is(rp.listenerCount('error'), 0)
})

test('a misspelt event name is a TypeError', (t) => {
  const fp = new h.keynet.ForwardProxy({ authToken: h.TOKEN })
  const e = t.throws(() => fp.on('conection', () => {}), { instanceOf: TypeError })
  t.is(e.code, 'ERR_INVALID_ARG_TYPE')
  t.throws(() => fp.once('clsoe', () => {}), { instanceOf: TypeError })
})
