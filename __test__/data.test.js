'use strict'
// Tunnels carry bytes exactly: large transfers both ways at once, many concurrent tunnels over
// one connection, and half-close in both directions.

const crypto = require('node:crypto')
const test = require('ava')
const h = require('./helpers')

/** Hashes everything read from `socket` until its end; resolves `{ hash, bytes }`. */
function hashToEnd(socket, timeout = 60_000) {
  const hash = crypto.createHash('sha256')
  let bytes = 0
  const done = new Promise((resolve, reject) => {
    socket.on('data', (d) => {
      hash.update(d)
      bytes += d.length
    })
    socket.once('end', () => resolve({ hash: hash.digest('hex'), bytes }))
    socket.once('close', () => reject(new Error(`closed without an end after ${bytes} bytes`)))
    socket.resume()
  })
  return h.withTimeout(done, timeout, 'end of the stream')
}

test('32 MiB each way through one tunnel, at the same time, arrive intact', async (t) => {
  const SIZE = 32 * 1024 * 1024
  const down = crypto.randomBytes(SIZE)
  const up = crypto.randomBytes(SIZE)
  let serverReceived
  const server = await h.startTcpServer(
    t,
    (socket) => {
      serverReceived = hashToEnd(socket)
      socket.end(down)
    },
    { allowHalfOpen: true },
  )
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const socket = await h.openTunnel(t, fp, rp, { socketOpts: { allowHalfOpen: true } })
  const clientReceived = hashToEnd(socket)
  socket.end(up)
  await h.waitFor(() => serverReceived, { what: 'the server to accept the tunnel' })
  const [atClient, atServer] = await Promise.all([clientReceived, serverReceived])
  t.is(atClient.bytes, SIZE)
  t.is(atClient.hash, h.sha256(down))
  t.is(atServer.bytes, SIZE)
  t.is(atServer.hash, h.sha256(up))
})

test('100 concurrent tunnels over one connection each echo their own data', async (t) => {
  const N = 100
  const SIZE = 64 * 1024
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const sockets = await Promise.all(Array.from({ length: N }, () => h.openTunnel(t, fp, rp)))
  // Each 200 came after the reverse proxy connected; the server's accept callback may lag.
  await h.waitFor(() => server.count === N, { what: `${N} server connections` })
  t.is(server.count, N, 'one server connection per tunnel')
  t.is(fp.getConnectionCount(), 1)
  t.is(rp.getConnectionCount(), 1)
  const payloads = sockets.map(() => crypto.randomBytes(SIZE))
  const echoed = await Promise.all(
    sockets.map((s, i) => {
      const back = h.readBytes(s, SIZE, 30_000)
      s.write(payloads[i])
      return back
    }),
  )
  for (let i = 0; i < N; i++) {
    if (!echoed[i].equals(payloads[i])) t.fail(`tunnel ${i} echoed other bytes`)
  }
  // Both proxies count the tunnels (open now) and their bytes, as they move.
  for (const [proxy, sent, received] of [[fp, N * SIZE, N * SIZE], [rp, N * SIZE, N * SIZE]]) {
    const s = proxy.getStats()
    t.is(s.tunnelsOpen, N)
    t.is(s.tunnelsTotal, N)
    t.is(s.bytesSent, sent)
    t.is(s.bytesReceived, received)
    t.deepEqual(s.connections, { direct: 1, punched: 0, relayed: 0 })
    t.deepEqual(s.failures, {})
  }
  await Promise.all(sockets.map((s) => new Promise((resolve) => { s.once('close', resolve); s.end() })))
  await h.waitFor(() => fp.getStats().tunnelsOpen === 0 && rp.getStats().tunnelsOpen === 0, { what: 'the tunnels to close' })
  t.is(fp.getStats().tunnelsTotal, N)
})

test('half-close: the client ends its write side and still receives the server remaining data', async (t) => {
  const tail = crypto.randomBytes(1024 * 1024)
  const server = await h.startTcpServer(
    t,
    (socket) => {
      hashToEnd(socket).then(({ hash, bytes }) => {
        // Only after the client's end arrived: the reply and a large tail, then our end.
        socket.write(`got ${bytes} ${hash}\n`)
        socket.end(tail)
      }, () => {})
    },
    { allowHalfOpen: true },
  )
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const socket = await h.openTunnel(t, fp, rp, { socketOpts: { allowHalfOpen: true } })
  const sent = crypto.randomBytes(300 * 1024)
  const received = h.readToEnd(socket, 30_000)
  socket.end(sent)
  const all = await received
  const nl = all.indexOf('\n')
  t.is(all.subarray(0, nl).toString(), `got ${sent.length} ${h.sha256(sent)}`)
  t.true(all.subarray(nl + 1).equals(tail))
})

test('half-close: the server ends its write side and still receives the client data', async (t) => {
  let atServer
  const server = await h.startTcpServer(
    t,
    (socket) => {
      atServer = hashToEnd(socket)
      socket.end('bye\n')
    },
    { allowHalfOpen: true },
  )
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const socket = await h.openTunnel(t, fp, rp, { socketOpts: { allowHalfOpen: true } })
  t.is((await h.readToEnd(socket)).toString(), 'bye\n') // the server's end arrived...
  const sent = crypto.randomBytes(512 * 1024)
  socket.end(sent) // ...and the client can still send
  const got = await atServer
  t.is(got.bytes, sent.length)
  t.is(got.hash, h.sha256(sent))
  await h.socketClosed(socket)
})
