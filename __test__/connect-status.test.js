'use strict'
// Every row of the CONNECT status table (README), driven by raw HTTP bytes to the forward proxy's
// port. After every refusal the proxy must keep serving: a good CONNECT through it still works.

const test = require('ava')
const h = require('./helpers')

const GREETING = 'hello from the server\n'
const ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n'

/** echo server (greeting first) <- rp <- fp */
async function setup(t, { fp: fpOpts } = {}) {
  const server = await h.startEchoServer(t, { greeting: GREETING })
  const { fp, rp } = await h.startPair(t, { serverPort: server.port, fp: fpOpts })
  return { server, fp, rp }
}

/** A refusal: the status, a well-formed closing answer, and the proxy closes the socket. */
async function assertRefused(t, res, status) {
  t.is(res.status, status, res.head || res.raw)
  t.is(res.headers.connection, 'close')
  const body = await h.readToEnd(res.socket)
  t.is(body.length, Number(res.headers['content-length']))
  await h.socketClosed(res.socket)
}

/** The proxy still serves: a pinned CONNECT gets 200, the greeting, and an echo. */
async function assertStillServes(t, fp, rp) {
  const socket = await h.openTunnel(t, fp, rp)
  t.is((await h.readBytes(socket, GREETING.length)).toString(), GREETING)
  await h.assertEchoes(t, socket)
  socket.destroy()
}

// ---- 200 ---------------------------------------------------------------------------------------

test('200: the exact answer arrives before any tunnel byte', async (t) => {
  const { fp, rp, server } = await setup(t)
  const socket = await h.connectTcp(t, fp.getProxyPort())
  socket.write(h.requestHead({ target: h.targetOf(rp) }))
  const expected = ESTABLISHED + GREETING
  const got = await h.readBytes(socket, Buffer.byteLength(expected))
  t.is(got.toString('latin1'), expected)
  t.is(server.count, 1, 'the reverse proxy connected to its server once')
  await h.assertEchoes(t, socket)
  // The tunnel is found by the CONNECT client's own address.
  const clientPort = socket.localPort
  const info = fp.getConnectionInfoByClient(h.HOST, clientPort)
  t.is(info && info.nodeId, rp.getNodeId())
  socket.destroy()
  await h.waitFor(() => fp.getConnectionInfoByClient(h.HOST, clientPort) === undefined, {
    what: 'the ended tunnel to be forgotten',
  })
})

test('200: "/?nodeId=" form, and a tracked address without nodeId', async (t) => {
  const { fp, rp } = await setup(t)
  const slash = await h.rawConnect(t, fp.getProxyPort(), {
    target: `${h.HOST}:${rp.getIngressPort()}/?nodeId=${rp.getNodeId()}`,
  })
  t.is(slash.statusLine, 'HTTP/1.1 200 Connection Established')
  t.is((await h.readBytes(slash.socket, GREETING.length)).toString(), GREETING)

  fp.addDirectConnection(rp.getIngressPort(), h.HOST)
  const tracked = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp, { pin: false }) })
  t.is(tracked.status, 200)
  t.is((await h.readBytes(tracked.socket, GREETING.length)).toString(), GREETING)
  await h.assertEchoes(t, tracked.socket)
})

test('200: bytes sent right behind the request head go through the tunnel', async (t) => {
  const { fp, rp } = await setup(t)
  const socket = await h.connectTcp(t, fp.getProxyPort())
  socket.write(h.requestHead({ target: h.targetOf(rp) }) + 'early-bytes')
  const expected = ESTABLISHED + GREETING + 'early-bytes'
  t.is((await h.readBytes(socket, Buffer.byteLength(expected))).toString('latin1'), expected)
})

// ---- 400 ---------------------------------------------------------------------------------------

for (const [name, target] of [
  ['malformed target', 'nonsense'],
  ['port above 65535', '127.0.0.1:65536'],
  ['host that is not an IP address', 'abc:1'],
  ['invalid nodeId', '127.0.0.1:9?nodeId=bogus'],
]) {
  test(`400: ${name}`, async (t) => {
    const { fp, rp } = await setup(t)
    const res = await h.rawConnect(t, fp.getProxyPort(), { target })
    await assertRefused(t, res, 400)
    await assertStillServes(t, fp, rp)
  })
}

test('400: no nodeId for an address not in the tracker', async (t) => {
  const { fp, rp, server } = await setup(t)
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp, { pin: false }) })
  await assertRefused(t, res, 400)
  t.is(fp.getConnectionCount(), 0, 'no connection was opened')
  t.is(server.count, 0)
  await assertStillServes(t, fp, rp)
})

// ---- 405 / 407 -----------------------------------------------------------------------------------

test('405: a method other than CONNECT, with valid auth', async (t) => {
  const { fp, rp } = await setup(t)
  const res = await h.rawConnect(t, fp.getProxyPort(), { method: 'GET', target: '/' })
  t.is(res.headers.allow, 'CONNECT')
  await assertRefused(t, res, 405)
  await assertStillServes(t, fp, rp)
})

for (const [name, req] of [
  ['missing Proxy-Authorization', { auth: null }],
  ['wrong token', { auth: h.basicAuth('not-the-token') }],
  ['token with a password', { auth: h.basicAuth(`${h.TOKEN}:x`) }],
  ['wrong scheme', { auth: `Bearer ${h.TOKEN}` }],
  ['GET without auth (auth is checked first)', { method: 'GET', target: '/', auth: null }],
  ['malformed target without auth (auth is checked first)', { target: 'nonsense', auth: null }],
]) {
  test(`407: ${name}`, async (t) => {
    const { fp, rp, server } = await setup(t)
    const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp), ...req })
    t.is(res.headers['proxy-authenticate'], 'Basic realm="keynet"')
    await assertRefused(t, res, 407)
    t.is(server.count, 0, 'the server was never reached')
    await assertStillServes(t, fp, rp)
  })
}

// ---- 502 ---------------------------------------------------------------------------------------

test('502: the reverse proxy cannot reach its server', async (t) => {
  const closed = await h.closedTcpPort()
  const { fp, rp } = await h.startPair(t, { serverPort: closed })
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp) })
  await assertRefused(t, res, 502)
  // The same forward proxy still reaches a reverse proxy whose server is up.
  const server = await h.startEchoServer(t, { greeting: GREETING })
  const good = await h.startReverseProxy(t, { serverPort: server.port })
  await assertStillServes(t, fp, good)
})

test('502: target port 0, within 2 s', async (t) => {
  const { fp, rp } = await setup(t)
  const started = Date.now()
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: `${h.HOST}:0?nodeId=${rp.getNodeId()}`, timeout: 2000 })
  await assertRefused(t, res, 502)
  t.true(Date.now() - started < 2000)
  await assertStillServes(t, fp, rp)
})

// ---- 503 ---------------------------------------------------------------------------------------

test('503: a CONNECT still dialing when stop() begins', async (t) => {
  const { fp, rp } = await setup(t)
  const silent = await h.startSilentUdp(t)
  const other = (await h.keynet.generateIdentity()).nodeId
  const res = h.rawConnect(t, fp.getProxyPort(), { target: `${h.HOST}:${silent.port}?nodeId=${other}` })
  await silent.firstMessage() // the proxy is dialing
  const stopped = fp.stop()
  await assertRefused(t, await res, 503)
  await stopped
  // A stopped proxy can be started again and serves.
  await fp.start()
  await assertStillServes(t, fp, rp)
})

test('503 (or close): a request head completed while stop() is in progress', async (t) => {
  // Not fully deterministic: stop() sets "stopping" first thing on the native runtime, then
  // closes connections (which takes a few PTOs while one is live), then cancels client tasks.
  // A head completed right after stop() was called is answered 503; if the client task was
  // cancelled first, the socket is closed without an answer. Both are acceptable; never 200.
  const { fp, rp } = await setup(t)
  const live = await h.openTunnel(t, fp, rp) // a live connection keeps stop() busy a little longer
  const silent = await h.startSilentUdp(t)
  const other = (await h.keynet.generateIdentity()).nodeId
  const head = h.requestHead({ target: `${h.HOST}:${silent.port}?nodeId=${other}` })
  const socket = await h.connectTcp(t, fp.getProxyPort())
  const half = Math.floor(head.length / 2)
  socket.write(head.slice(0, half))
  const answer = h.readHead(socket)
  const stopped = fp.stop()
  socket.write(head.slice(half))
  const res = await answer
  t.log(res.closed ? 'closed without an answer' : res.statusLine)
  t.true(res.closed || res.status === 503, res.head)
  await h.socketClosed(socket)
  await h.socketClosed(live)
  await stopped
})

// ---- 504 ---------------------------------------------------------------------------------------

test('504: connConnectTime runs out dialing a silent peer', async (t) => {
  const { fp, rp } = await setup(t, { fp: { connConnectTime: 1000 } })
  const silent = await h.startSilentUdp(t)
  const other = (await h.keynet.generateIdentity()).nodeId
  const started = Date.now()
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: `${h.HOST}:${silent.port}?nodeId=${other}` })
  const elapsed = Date.now() - started
  await assertRefused(t, res, 504)
  t.true(silent.messages.length > 0, 'the proxy did dial')
  t.true(elapsed >= 900 && elapsed < 5000, `answered after ${elapsed} ms`)
  await assertStillServes(t, fp, rp)
})

// ---- 526 ---------------------------------------------------------------------------------------

test('526: the peer does not prove the pinned node id', async (t) => {
  const { fp, rp, server } = await setup(t)
  const wrong = (await h.keynet.generateIdentity()).nodeId
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp, { nodeId: wrong }) })
  await assertRefused(t, res, 526)
  t.is(server.count, 0, 'the server was never reached')
  await assertStillServes(t, fp, rp)
})

test('526: a wrong pin does not ride an existing connection to the same address', async (t) => {
  const { fp, rp, server } = await setup(t)
  await assertStillServes(t, fp, rp) // the connection is up now
  t.is(fp.getConnectionCount(), 1)
  const wrong = (await h.keynet.generateIdentity()).nodeId
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp, { nodeId: wrong }) })
  await assertRefused(t, res, 526)
  t.is(server.count, 1, 'only the good tunnel reached the server')
})

// ---- oversize and slow heads -----------------------------------------------------------------

test('431: a request head over 64 KiB', async (t) => {
  const { fp, rp } = await setup(t)
  const res = await h.rawConnect(t, fp.getProxyPort(), {
    target: h.targetOf(rp),
    headers: [`X-Pad: ${'a'.repeat(70 * 1024)}`],
  })
  t.is(res.statusLine, 'HTTP/1.1 431 Request Header Fields Too Large')
  await assertRefused(t, res, 431)
  await assertStillServes(t, fp, rp)
})

test('431: more than 64 header fields', async (t) => {
  const { fp, rp } = await setup(t)
  const headers = Array.from({ length: 80 }, (_, i) => `X-H${i}: ${i}`)
  const res = await h.rawConnect(t, fp.getProxyPort(), { target: h.targetOf(rp), headers })
  await assertRefused(t, res, 431)
  await assertStillServes(t, fp, rp)
})

test('a head that never completes is answered (408) and closed within connConnectTime', async (t) => {
  const { fp, rp } = await setup(t, { fp: { connConnectTime: 500 } })
  const socket = await h.connectTcp(t, fp.getProxyPort())
  socket.write('CONNECT 127.0.0.1:1 HTTP/1.1\r\n')
  const started = Date.now()
  const res = await h.readHead(socket, 5000)
  t.is(res.status, 408)
  t.true(Date.now() - started < 3000)
  await h.socketClosed(socket)
  await assertStillServes(t, fp, rp)
})
