'use strict'
// Ends on purpose lose nothing: closeConnection or stop() on either proxy delivers the bytes
// the proxies hold in flight both ways, then the CONNECT client and the server each read an end
// (a FIN, not a reset) well within connEndTime, and only then does the close event come.

const test = require('ava')
const h = require('./helpers')

const SIZE = 1 << 20
/** Long: an end that came from the hard close after it would show as a reset, and late. */
const END_TIME = 10000

function pattern(seed) {
  const b = Buffer.alloc(SIZE)
  for (let i = 0; i < SIZE; i++) b[i] = (i * seed) >>> 3
  return b
}

/** Records how `socket` ends: 'end' (a FIN) or an error code, and when. */
function watchEnd(socket) {
  const seen = { end: null, errors: [] }
  socket.on('end', () => (seen.end = Date.now()))
  socket.on('error', (e) => seen.errors.push(e.code || e.message))
  return seen
}

const closers = {
  'fp.closeConnection()': ({ fp, rp }) => fp.closeConnection(h.HOST, rp.getIngressPort()),
  'rp.closeConnection()': ({ fp, rp }) => rp.closeConnection(h.HOST, fp.getEgressPort()),
  'fp.stop()': ({ fp }) => fp.stop(),
  'rp.stop()': ({ rp }) => rp.stop(),
}

for (const [name, close] of Object.entries(closers)) {
  test(`${name}: bytes in flight both ways arrive, then both ends read a FIN, then 'close'`, async (t) => {
    const server = await h.startTcpServer(t)
    const { fp, rp } = await h.startPair(t, {
      serverPort: server.port,
      fp: { connEndTime: END_TIME },
      rp: { connEndTime: END_TIME },
    })
    const fpEvents = h.recordEvents(fp)
    const rpEvents = h.recordEvents(rp)
    const client = await h.openTunnel(t, fp, rp)
    const serverSocket = await server.nextSocket()
    const clientEnd = watchEnd(client)
    const serverEnd = watchEnd(serverSocket)

    // Nobody reads yet: once each proxy has read its end's megabyte, it is in flight.
    const up = pattern(7)
    const down = pattern(13)
    client.write(up)
    serverSocket.write(down)
    await h.waitFor(() => fp.getStats().bytesSent === SIZE && rp.getStats().bytesSent === SIZE, {
      what: 'both proxies hold their end’s bytes',
    })

    const started = Date.now()
    const closing = close({ fp, rp })
    const [atServer, atClient] = await Promise.all([h.readToEnd(serverSocket), h.readToEnd(client)])
    await closing
    t.deepEqual(serverEnd.errors, [], 'the server saw no reset')
    t.deepEqual(clientEnd.errors, [], 'the client saw no reset')
    t.true(atServer.equals(up), `the server got ${atServer.length} of ${SIZE} bytes, in order`)
    t.true(atClient.equals(down), `the client got ${atClient.length} of ${SIZE} bytes, in order`)
    t.truthy(serverEnd.end, 'the server read an end')
    t.truthy(clientEnd.end, 'the client read an end')
    t.true(Math.max(serverEnd.end, clientEnd.end) - started < END_TIME, 'ended by the drain, not by the hard close')

    // Then each proxy reports the close, after the ends.
    const [fpClose, rpClose] = await Promise.all([fpEvents.wait('close'), rpEvents.wait('close')])
    const local = name.startsWith('fp') ? fpClose : rpClose
    const remote = name.startsWith('fp') ? rpClose : fpClose
    t.is(local.reason, name.endsWith('stop()') ? 'stopped' : 'local')
    t.is(remote.reason, 'remote')
  })
}

test('ending one connection leaves the tunnels of another untouched', async (t) => {
  // Two reverse proxies, one forward proxy: ending one connection drains only its tunnels.
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const rp2 = await h.startReverseProxy(t, { serverPort: server.port })
  const kept = await h.openTunnel(t, fp, rp2)
  const ended = await h.openTunnel(t, fp, rp)
  const keptEnd = watchEnd(kept)
  await fp.closeConnection(h.HOST, rp.getIngressPort())
  await h.readToEnd(ended)
  await h.assertEchoes(t, kept)
  t.is(keptEnd.end, null)
  t.deepEqual(keptEnd.errors, [])
  t.is(fp.getConnectionCount(), 1)
})

test('a tunnel whose peer cannot drain (frozen) is reset, and only after connEndTime', async (t) => {
  const END = 800
  const { child, rp } = await h.startReverseProxyChild(t)
  const fp = await h.startForwardProxy(t, { connEndTime: END })
  const client = await h.openTunnel(t, fp, rp)
  await h.assertEchoes(t, client)
  const clientEnd = watchEnd(client)
  process.kill(child.pid, 'SIGSTOP')
  await h.waitFor(() => h.processStopped(child.pid), { what: 'the reverse proxy to freeze' })

  const started = Date.now()
  await fp.closeConnection(h.HOST, rp.getIngressPort())
  const took = Date.now() - started
  await h.socketClosed(client)
  t.true(took >= END - 50, `closeConnection waited for connEndTime (${took} ms)`)
  t.is(clientEnd.end, null, 'no end came from a peer that could not send one')
  t.deepEqual(clientEnd.errors, ['ECONNRESET'], 'then the client was reset')
})
