'use strict'
// Keepalive: an idle connection stays up past connKeepAliveTimeoutTime while the peer answers,
// and a peer that goes silent (its process frozen with SIGSTOP) is declared dead after it; its
// tunnels end with a FIN (what arrived was delivered), not a reset.

const test = require('ava')
const h = require('./helpers')

const INTERVAL = 200
const TIMEOUT = 1500

test('a frozen reverse proxy is declared dead after connKeepAliveTimeoutTime, and its tunnels end', async (t) => {
  const { child, rp } = await h.startReverseProxyChild(t)
  const fp = await h.startForwardProxy(t, {
    connKeepAliveIntervalTime: INTERVAL,
    connKeepAliveTimeoutTime: TIMEOUT,
  })
  const events = h.recordEvents(fp)
  const socket = await h.openTunnel(t, fp, rp)
  await h.assertEchoes(t, socket)

  // Idle for longer than the keepalive timeout while the peer runs: keepalives hold the
  // connection. (That nothing happens over a period can only be seen by letting it pass.)
  await new Promise((r) => setTimeout(r, TIMEOUT + 1000))
  t.is(events.of('close').length, 0, 'an idle but answering peer is not dropped')
  t.is(fp.getConnectionCount(), 1)
  await h.assertEchoes(t, socket)

  process.kill(child.pid, 'SIGSTOP')
  const frozenAt = Date.now()
  const close = await events.wait('close', () => true, TIMEOUT + 8000)
  const after = Date.now() - frozenAt
  t.is(close.reason, 'keepaliveTimeout')
  t.is(close.nodeId, rp.getNodeId())
  t.true(after >= TIMEOUT - 500 && after < TIMEOUT + 5000, `declared dead after ${after} ms`)
  await h.socketClosed(socket)
  // What had arrived was delivered and the client read an end, not a reset: nothing more
  // could come from a silent peer.
  t.deepEqual(socket.errors.map((e) => e.code), [], 'the client saw no reset')
  t.true(socket.readableEnded, 'the client read an end')
  await h.waitFor(() => fp.getConnectionCount() === 0, { what: 'fp count 0' })
  t.is(fp.getConnectionInfoByIngress(h.HOST, rp.getIngressPort()), undefined)
})
