'use strict'
// The original project's network test suite, ported to keynet test by test, with the original's
// names and shapes: ForwardProxy.test.ts (F1-F19), ReverseProxy.test.ts (R1-R10), index.test.ts
// (I1-I5), the seed era's Proxy.test.ts (P1-P5) and utils.test.ts (U1-U2). What each original test
// did, and how to port it, is in the review "Polykey keynode network layer: research notes",
// section 4 ("Test catalogue"); its section 6 lists the original's bugs keynet fixes on purpose.
//
// The original's fake peers were uTP/TLS sockets; keynet's peers are QUIC. Where the original
// used a fake reverse or forward proxy, these tests use a real keynet peer, a keynet Relay (a
// QUIC server whose handshake a forward proxy cannot complete), a dgram socket that swallows
// everything (a hanging remote), or a dgram relay between the two proxies that can drop one
// direction (a peer that stops answering). They assert what the original asserted on our side:
// error classes, HTTP statuses, connection counts, and that the other side ends, not resets.
// Where keynet deliberately differs, a test asserts keynet's behaviour and the original's with a
// well-formed input; the comment "difference:" says so.

const net = require('node:net')
const http = require('node:http')
const dgram = require('node:dgram')
const test = require('ava')
const h = require('./helpers')
const { grpc } = require('../support')

const { ForwardProxy, ReverseProxy, Relay, errors, utils, generateIdentity } = h.keynet
const { HOST } = h

/** The original's auth token in ForwardProxy.test.ts. */
const authToken = 'abc123'
/** The original passed a @matrixai/logger; keynet sends each proxy's own lines to it (silent here). */
const logger = { getChild: () => logger, debug() {}, info() {}, warn() {}, error() {} }

// ---- the original's helpers ---------------------------------------------------------------------

/**
 * The original's httpConnect: a CONNECT through Node's http client, resolving the socket on 200
 * and rejecting with Error(String(statusCode)) otherwise.
 */
function httpConnect(host, port, token, path) {
  const p = new Promise((resolve, reject) => {
    const req = http.request({
      method: 'CONNECT',
      path,
      host,
      port,
      headers: { 'Proxy-Authorization': `Basic ${Buffer.from(token, 'utf-8').toString('base64')}` },
    })
    req.end()
    req.once('connect', (res, clientSocket) => {
      if (res.statusCode === 200) {
        resolve(clientSocket)
      } else {
        clientSocket.destroy()
        reject(new Error(String(res.statusCode)))
      }
    })
    req.once('error', reject)
  })
  return h.withTimeout(p, h.WAIT, `CONNECT ${path}`)
}

/** httpConnect for a 200, its socket watched (see watch) and destroyed in teardown. */
async function connected(t, fp, path) {
  const socket = await httpConnect(fp.getProxyHost(), fp.getProxyPort(), authToken, path)
  t.teardown(() => socket.destroy())
  return watch(socket)
}

/**
 * Records how a socket ends: `ends` ('end' events: FINs read), `errors` (codes: a reset shows
 * here), `closed` (a promise of hadError). With `answerEnd`, answers an end with its own end, as
 * the original's clients did. The socket is kept flowing so that its end can be seen.
 */
function watch(socket, { answerEnd = true } = {}) {
  socket.ends = 0
  socket.errors = []
  socket.on('error', (e) => socket.errors.push(e.code || e.message))
  socket.on('end', () => {
    socket.ends++
    if (answerEnd) socket.end()
  })
  socket.closedP = new Promise((resolve) => socket.once('close', resolve))
  socket.resume()
  return socket
}

const within = (p, what, ms = h.WAIT) => h.withTimeout(p, ms, what)

/** A deferred promise, as the original's `promise()`. */
function promise() {
  let resolveP
  const p = new Promise((r) => (resolveP = r))
  return { p, resolveP }
}

/** A well-formed node id nobody here has (the original used 'abc' or 'somerandomnodeid'). */
async function unknownNodeId() {
  return (await generateIdentity()).nodeId
}

/** Asserts keynet refuses a malformed node id at once (difference: the original tried, then failed). */
async function assertMalformedNodeIdRefused(t, fp, nodeId, host, port) {
  const e = await t.throwsAsync(fp.openConnection(nodeId, host, port), { instanceOf: TypeError })
  t.is(e.code, 'ERR_INVALID_ARG_TYPE')
  t.regex(e.message, /"nodeId"/)
}

async function startFp(t, ctorOpts = {}, startOpts = {}) {
  return h.startForwardProxy(t, { authToken, logger, ...ctorOpts }, startOpts)
}

async function startRp(t, startOpts, ctorOpts = {}) {
  return h.startReverseProxy(t, startOpts, { logger, ...ctorOpts })
}

/**
 * The original's tcpServer (what the reverse proxy carries tunnels to): the first connection
 * resolves `serverConnP`; its end resolves `serverConnEndP` (answered with an end); its close
 * resolves `serverConnClosedP`. With `end`, it ends every connection at once. `count` is the
 * number of connections accepted.
 */
async function tcpServer(t, { end = false } = {}) {
  const conn = promise()
  const connEnd = promise()
  const connClosed = promise()
  const sockets = []
  const server = await h.startTcpServer(t, (socket) => {
    sockets.push(socket)
    conn.resolveP(socket)
    socket.errors = []
    socket.ends = 0
    socket.on('error', (e) => socket.errors.push(e.code || e.message))
    // allowHalfOpen is false: Node answers the end with an end.
    socket.on('end', () => {
      socket.ends++
      connEnd.resolveP()
    })
    socket.closedP = new Promise((resolve) => socket.once('close', resolve))
    socket.once('close', (hadError) => connClosed.resolveP(hadError))
    if (end) socket.end()
  })
  return {
    port: server.port,
    /** Every accepted socket, with `ends`, `errors` and `closedP` as watch() gives. */
    sockets,
    get count() {
      return server.count
    },
    serverConnP: () => within(conn.p, 'a connection to the server'),
    serverConnEndP: () => within(connEnd.p, "the server's connection to end"),
    serverConnClosedP: () => within(connClosed.p, "the server's connection to close"),
  }
}

/**
 * A UDP relay between one forward proxy and a reverse proxy's ingress at `targetPort`: the
 * forward proxy dials the relay's port. `dropToClient` / `dropToTarget` drop one direction (a
 * peer that stops answering). `fromTarget` counts datagrams the reverse proxy sent to the relay
 * (punches included, before the forward proxy is known).
 */
async function startUdpRelay(t, targetPort) {
  const socket = dgram.createSocket('udp4')
  const relay = { socket, client: null, dropToClient: false, dropToTarget: false, fromTarget: 0 }
  socket.on('message', (m, rinfo) => {
    if (rinfo.port === targetPort && rinfo.address === HOST) {
      relay.fromTarget++
      if (relay.client && !relay.dropToClient) socket.send(m, relay.client.port, relay.client.address)
    } else {
      relay.client = rinfo
      if (!relay.dropToTarget) socket.send(m, targetPort, HOST)
    }
  })
  socket.bind(0, HOST)
  await h.waitEvent(socket, 'listening')
  t.teardown(() => new Promise((r) => socket.close(r)))
  relay.port = socket.address().port
  return relay
}

/**
 * The distinct connection attempts among datagrams a silent peer received: the destination
 * connection ids of QUIC Initial packets (long header, type 0). Punch datagrams are not QUIC.
 */
function connectionAttempts(messages) {
  const ids = new Set()
  for (const m of messages) {
    if (m.length < 7 || (m[0] & 0xc0) !== 0xc0 || ((m[0] & 0x30) >> 4) !== 0) continue
    const len = m[5]
    ids.add(m.subarray(6, 6 + len).toString('hex'))
  }
  return ids.size
}

/** Failure counters of a proxy (`getStats().failures`), 0 for a code never seen. */
function failures(proxy, code) {
  return proxy.getStats().failures[code] || 0
}

/** A started reverse proxy (with a tcpServer behind it) and forward proxy, not yet connected; both record their events. */
async function openedPair(t, { fp: fpOpts, rp: rpOpts, rpStart } = {}) {
  const server = await tcpServer(t)
  const rp = await startRp(t, { serverPort: server.port, ...rpStart }, rpOpts)
  const fp = await startFp(t, fpOpts)
  const fpEvents = h.recordEvents(fp)
  const rpEvents = h.recordEvents(rp)
  return { server, rp, fp, fpEvents, rpEvents }
}

// ---- 4.1 ForwardProxy.test.ts ---------------------------------------------------------------------

test('F1 forward proxy readiness', async (t) => {
  const { tlsConfig } = await generateIdentity()
  const fwdProxy = new ForwardProxy({ authToken, logger })
  t.teardown(() => h.stopQuietly(fwdProxy))
  // Should be a noop (already stopped)
  await fwdProxy.stop()
  await fwdProxy.start({ tlsConfig })
  t.is(typeof fwdProxy.getProxyHost(), 'string')
  t.is(typeof fwdProxy.getProxyPort(), 'number')
  t.true(fwdProxy.getProxyPort() > 0)
  t.is(typeof fwdProxy.getEgressHost(), 'string')
  t.is(typeof fwdProxy.getEgressPort(), 'number')
  t.true(fwdProxy.getEgressPort() > 0)
  t.is(fwdProxy.getConnectionCount(), 0)
  // difference: the bind defaults are loopback (the original's egressHost was '0.0.0.0').
  t.is(fwdProxy.getProxyHost(), '127.0.0.1')
  t.is(fwdProxy.getEgressHost(), '127.0.0.1')
  const ports = [fwdProxy.getProxyPort(), fwdProxy.getEgressPort()]
  // Should be a noop (already started)
  await fwdProxy.start({ tlsConfig })
  t.deepEqual([fwdProxy.getProxyPort(), fwdProxy.getEgressPort()], ports)
  await fwdProxy.stop()
  t.throws(() => fwdProxy.getProxyHost(), { instanceOf: errors.ErrorForwardProxyNotRunning })
  await t.throwsAsync(fwdProxy.closeConnection('::1', 1), { instanceOf: errors.ErrorForwardProxyNotRunning })
  t.is(fwdProxy.getConnectionCount(), 0)
  // Start it again
  await fwdProxy.start({ proxyHost: '::1', tlsConfig })
  t.is(fwdProxy.getProxyHost(), '::1')
  // Added (review 4.1 F1 port note, bug M1): a CONNECT works after the restart.
  const server = await h.startEchoServer(t)
  const rp = await startRp(t, { serverPort: server.port })
  const socket = await connected(t, fwdProxy, `${HOST}:${rp.getIngressPort()}?nodeId=${rp.getNodeId()}`)
  await h.assertEchoes(t, socket)
  await fwdProxy.stop()
})

test('F2 HTTP CONNECT bad request failures to the forward proxy', async (t) => {
  const fwdProxy = await startFp(t, {}, { proxyHost: '::1' })
  const host = fwdProxy.getProxyHost()
  const port = fwdProxy.getProxyPort()
  // Incorrect auth token
  await t.throwsAsync(httpConnect(host, port, 'incorrect auth token', `127.0.0.1:80?nodeId=${encodeURIComponent('SOMENODEID')}`), {
    message: '407',
  })
  // No node id
  await t.throwsAsync(httpConnect(host, port, authToken, '127.0.0.1:80'), { message: '400' })
  // Missing target
  await t.throwsAsync(httpConnect(host, port, authToken, `?nodeId=${encodeURIComponent('SOMENODEID')}`), { message: '400' })
  // difference: keynet checks the token first, so a bad target with a bad token is 407 (the
  // original parsed first and answered 400).
  await t.throwsAsync(httpConnect(host, port, 'incorrect auth token', `?nodeId=${encodeURIComponent('SOMENODEID')}`), {
    message: '407',
  })
  // difference (bug M5 fixed): a port above 65535 is answered 400 (the original's handler threw).
  await t.throwsAsync(httpConnect(host, port, authToken, '127.0.0.1:99999?nodeId=x'), { message: '400' })
  // The proxy still serves.
  const server = await h.startEchoServer(t)
  const rp = await startRp(t, { serverPort: server.port })
  await h.assertEchoes(t, await connected(t, fwdProxy, `${HOST}:${rp.getIngressPort()}?nodeId=${rp.getNodeId()}`))
})

test('F3 connection to port 0 fails', async (t) => {
  const fwdProxy = await startFp(t)
  // difference: 'abc' is not a node id; keynet refuses it at once (TypeError), CONNECT with 400.
  await assertMalformedNodeIdRefused(t, fwdProxy, 'abc', HOST, 0)
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:0?nodeId=${encodeURIComponent('abc')}`), {
    message: '400',
  })
  // The original's assertions, with a well-formed node id: fails fast.
  const nodeId = await unknownNodeId()
  const started = Date.now()
  const e = await t.throwsAsync(fwdProxy.openConnection(nodeId, HOST, 0), { instanceOf: errors.ErrorConnectionStart })
  t.is(e.code, 'ErrorConnectionStart')
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:0?nodeId=${encodeURIComponent(nodeId)}`), {
    message: '502',
  })
  t.true(Date.now() - started < 2000, 'no waiting for a timeout')
})

test('F4 connection start timeout due to hanging remote', async (t) => {
  // 1 second to establish a connection; keepalive interval and end time reduced, as the original.
  const fwdProxy = await startFp(t, { connConnectTime: 1000, connKeepAliveIntervalTime: 100, connEndTime: 100 })
  // This UDP socket just hangs and never answers; "received" counts the connection attempts
  // (QUIC Initials with distinct connection ids) where the original counted accepted uTP streams.
  const hang = await h.startSilentUdp(t)
  await assertMalformedNodeIdRefused(t, fwdProxy, 'abc', HOST, hang.port)
  t.is(hang.messages.length, 0, 'a refused node id sends nothing')
  const nodeId = await unknownNodeId()
  let started = Date.now()
  await t.throwsAsync(fwdProxy.openConnection(nodeId, HOST, hang.port), { instanceOf: errors.ErrorConnectionStartTimeout })
  let elapsed = Date.now() - started
  t.true(elapsed >= 900 && elapsed < 3000, `rejected after ${elapsed} ms (connConnectTime 1000)`)
  t.is(connectionAttempts(hang.messages), 1)
  // Can override the timer
  const timer = utils.timerStart(2000)
  started = Date.now()
  await t.throwsAsync(fwdProxy.openConnection(nodeId, HOST, hang.port, timer), { instanceOf: errors.ErrorConnectionStartTimeout })
  elapsed = Date.now() - started
  utils.timerStop(timer)
  t.true(timer.timedOut, "the caller's timer ran out")
  t.true(elapsed >= 1900 && elapsed < 4000, `rejected after ${elapsed} ms (timer 2000 overrides connConnectTime 1000)`)
  t.is(connectionAttempts(hang.messages), 2)
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${hang.port}?nodeId=${encodeURIComponent(nodeId)}`), {
    message: '504',
  })
  t.is(connectionAttempts(hang.messages), 3)
  t.is(fwdProxy.getConnectionCount(), 0)
})

test('F5 connection reset due to ending remote', async (t) => {
  // The remote accepts each connection attempt and closes it at once: a reverse proxy at its
  // maxConnections limit (held by another forward proxy) refuses every new one; its counter of
  // refusals is the original's "recievedCount".
  const server = await h.startEchoServer(t)
  const rp = await startRp(t, { serverPort: server.port, maxConnections: 1 })
  const holder = await startFp(t)
  await holder.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  const fwdProxy = await startFp(t)
  const refused = () => failures(rp, 'maxConnections')
  await assertMalformedNodeIdRefused(t, fwdProxy, 'abc', HOST, rp.getIngressPort())
  await t.throwsAsync(fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort()), { instanceOf: errors.ErrorConnectionStart })
  await h.waitFor(() => refused() === 1, { what: 'one refusal' })
  // The original matched /UTP_ECONNRESET/; keynet's stable code is the class name, the message
  // says the peer closed it.
  const e = await t.throwsAsync(fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort()), { instanceOf: errors.ErrorConnectionStart })
  t.is(e.code, 'ErrorConnectionStart')
  t.regex(e.message, /refused/)
  await h.waitFor(() => refused() === 2, { what: 'two refusals' })
  // 502 Bad Gateway on HTTP Connect
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${rp.getIngressPort()}?nodeId=${rp.getNodeId()}`), {
    message: '502',
  })
  await h.waitFor(() => refused() === 3, { what: 'three refusals' })
  t.is(fwdProxy.getConnectionCount(), 0)
})

/** A QUIC server whose TLS handshake a forward proxy cannot complete: a keynet Relay (its own ALPN). */
async function startHandshakeFailingRemote(t) {
  const relay = new Relay()
  t.teardown(() => h.stopQuietly(relay))
  await relay.start()
  return {
    relay,
    port: relay.getPort(),
    nodeId: relay.getNodeId(),
    handshakeFailures: () => relay.getMetrics().refusals.handshake || 0,
    sessions: () => relay.getMetrics().sessions.quic,
  }
}

test('F6 open connection fails due to missing certificates', async (t) => {
  // The original's remote had no certificate, so the TLS handshake failed. The QUIC equivalent:
  // a remote whose handshake fails (no common application protocol).
  const fwdProxy = await startFp(t)
  const remote = await startHandshakeFailingRemote(t)
  t.is(fwdProxy.getConnectionCount(), 0)
  await assertMalformedNodeIdRefused(t, fwdProxy, 'somerandomnodeid', HOST, remote.port)
  const e = await t.throwsAsync(fwdProxy.openConnection(remote.nodeId, HOST, remote.port), { instanceOf: errors.ErrorConnectionStart })
  t.is(e.code, 'ErrorConnectionStart')
  t.is(fwdProxy.getConnectionCount(), 0)
  // The remote observed a handshake failure (the original: one TLS error, no end, close(hadError)).
  await h.waitFor(() => remote.handshakeFailures() === 1, { what: 'the remote to see a failed handshake' })
  t.is(remote.sessions(), 0)
})

test('F7 HTTP CONNECT fails due to missing certificates', async (t) => {
  const fwdProxy = await startFp(t)
  const remote = await startHandshakeFailingRemote(t)
  t.is(fwdProxy.getConnectionCount(), 0)
  // difference: a malformed node id is 400 at once.
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${remote.port}?nodeId=somerandomnodeid`), {
    message: '400',
  })
  t.is(remote.handshakeFailures(), 0, 'nothing was dialled for it')
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${remote.port}?nodeId=${remote.nodeId}`), {
    message: '502',
  })
  t.is(fwdProxy.getConnectionCount(), 0)
  await h.waitFor(() => remote.handshakeFailures() === 1, { what: 'the remote to see a failed handshake' })
  t.is(remote.sessions(), 0)
})

test('F8 open connection fails due to invalid node id', async (t) => {
  const { fp: fwdProxy, rp, rpEvents, server } = await openedPair(t)
  t.is(fwdProxy.getConnectionCount(), 0)
  // difference: 'somerandomnodeid' is refused at once; a well-formed id that the remote's
  // certificate does not claim fails as in the original.
  await assertMalformedNodeIdRefused(t, fwdProxy, 'somerandomnodeid', HOST, rp.getIngressPort())
  const wrong = await unknownNodeId()
  await t.throwsAsync(fwdProxy.openConnection(wrong, HOST, rp.getIngressPort()), { instanceOf: errors.ErrorCertChainUnclaimed })
  t.is(fwdProxy.getConnectionCount(), 0)
  // difference (a design choice, review 4.1 F8): keynet checks the node id inside the TLS
  // handshake, so the remote sees the handshake aborted (an alert), where the original completed
  // it and then ended the session gracefully. The remote never had a connection.
  await h.waitFor(() => failures(rp, 'ErrorConnectionStart') === 1, { what: 'the remote to see the aborted handshake' })
  t.is(rpEvents.of('connection').length, 0)
  t.is(rp.getConnectionCount(), 0)
  t.is(server.count, 0)
})

test('F9 HTTP CONNECT fails due to invalid node id', async (t) => {
  const { fp: fwdProxy, rp, rpEvents, server } = await openedPair(t)
  t.is(fwdProxy.getConnectionCount(), 0)
  // difference: a malformed node id is 400 at once.
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${rp.getIngressPort()}?nodeId=somerandomnodeid`), {
    message: '400',
  })
  const wrong = await unknownNodeId()
  await t.throwsAsync(httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${rp.getIngressPort()}?nodeId=${wrong}`), {
    message: '526',
  })
  t.is(fwdProxy.getConnectionCount(), 0)
  await h.waitFor(() => failures(rp, 'ErrorConnectionStart') === 1, { what: 'the remote to see the aborted handshake' })
  t.is(rpEvents.of('connection').length, 0)
  t.is(rp.getConnectionCount(), 0)
  t.is(server.count, 0)
})

test('F10 open connection success - forward initiates end', async (t) => {
  const { tlsConfig } = await generateIdentity()
  const serverNodeId = utils.certNodeId(tlsConfig.certChainPem)
  const { fp: fwdProxy, rp, fpEvents, rpEvents } = await openedPair(t, { rpStart: { tlsConfig } })
  t.is(fwdProxy.getConnectionCount(), 0)
  await fwdProxy.openConnection(serverNodeId, HOST, rp.getIngressPort())
  // Remote ready and secure: the reverse proxy has the connection, from this node.
  t.is((await rpEvents.wait('connection')).nodeId, fwdProxy.getNodeId())
  // Duplicate opening is a noop
  await fwdProxy.openConnection(serverNodeId, HOST, rp.getIngressPort())
  t.is(fpEvents.of('connection').length, 1)
  t.is(fwdProxy.getConnectionCount(), 1)
  await fwdProxy.closeConnection(HOST, rp.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 0)
  // Remote closed gracefully (the original: one TLS end, close without error).
  t.is((await rpEvents.wait('close')).reason, 'remote')
  t.is((await fpEvents.wait('close')).reason, 'local')
  await h.waitFor(() => rp.getConnectionCount() === 0, { what: 'rp count 0' })
})

test('F11 open connection success - reverse initiates end', async (t) => {
  // A long connEndTime on both sides: an end that had to wait for it would be seen.
  const { fp: fwdProxy, rp, fpEvents, rpEvents } = await openedPair(t, { fp: { connEndTime: 5000 }, rp: { connEndTime: 5000 } })
  t.is(fwdProxy.getConnectionCount(), 0)
  await fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  await rpEvents.wait('connection')
  await fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 1)
  // The remote ends, and the forward proxy answers (the original hung otherwise).
  const started = Date.now()
  await rp.closeConnection(HOST, fwdProxy.getEgressPort())
  t.true(Date.now() - started < 5000, 'the forward proxy answered the end before connEndTime')
  t.is((await rpEvents.wait('close')).reason, 'local')
  t.is((await fpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => fwdProxy.getConnectionCount() === 0, { what: 'fp count 0' })
})

test('F12 HTTP CONNECT success - forward initiates end', async (t) => {
  const { fp: fwdProxy, rp, fpEvents, rpEvents, server } = await openedPair(t)
  const serverNodeId = rp.getNodeId()
  const clientSocket = await connected(t, fwdProxy, `127.0.0.1:${rp.getIngressPort()}?nodeId=${encodeURIComponent(serverNodeId)}`)
  // Remote ready and secure, and the tunnel reached the server behind it.
  await rpEvents.wait('connection')
  const serverSocket = await server.serverConnP()
  t.true(clientSocket instanceof net.Socket)
  t.is(clientSocket.remoteAddress, fwdProxy.getProxyHost())
  t.is(clientSocket.remotePort, fwdProxy.getProxyPort())
  // Duplicate opening is a noop
  await fwdProxy.openConnection(serverNodeId, HOST, rp.getIngressPort())
  t.is(fpEvents.of('connection').length, 1)
  t.is(fwdProxy.getConnectionCount(), 1)
  await fwdProxy.closeConnection(HOST, rp.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 0)
  // The proxy wrote its end to the client before closeConnection resolved; the client's 'end'
  // event may run a turn of the event loop later, so it is awaited (briefly).
  t.false(await within(clientSocket.closedP, 'client socket close', 1000))
  t.is(clientSocket.ends, 1, 'the client read one end')
  t.deepEqual(clientSocket.errors, [], 'an end, not a reset')
  // Remote closed gracefully, and so did the server's socket.
  t.is((await rpEvents.wait('close')).reason, 'remote')
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
})

test('F13 HTTP CONNECT success - reverse initiates end', async (t) => {
  const { fp: fwdProxy, rp, fpEvents, rpEvents, server } = await openedPair(t)
  const clientSocket = await connected(t, fwdProxy, `127.0.0.1:${rp.getIngressPort()}?nodeId=${encodeURIComponent(rp.getNodeId())}`)
  await rpEvents.wait('connection')
  const serverSocket = await server.serverConnP()
  t.true(clientSocket instanceof net.Socket)
  t.is(clientSocket.remoteAddress, fwdProxy.getProxyHost())
  t.is(clientSocket.remotePort, fwdProxy.getProxyPort())
  await fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 1)
  // The remote ends the connection gracefully.
  await rp.closeConnection(HOST, fwdProxy.getEgressPort())
  t.false(await within(clientSocket.closedP, 'client socket close'))
  t.is(clientSocket.ends, 1)
  t.deepEqual(clientSocket.errors, [])
  t.is((await fpEvents.wait('close')).reason, 'remote')
  t.is((await rpEvents.wait('close')).reason, 'local')
  await h.waitFor(() => fwdProxy.getConnectionCount() === 0, { what: 'fp count 0' })
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
})

test('F14 HTTP CONNECT success - client initiates end', async (t) => {
  const { fp: fwdProxy, rp, fpEvents, rpEvents, server } = await openedPair(t)
  const socket = await httpConnect(fwdProxy.getProxyHost(), fwdProxy.getProxyPort(), authToken, `127.0.0.1:${rp.getIngressPort()}?nodeId=${encodeURIComponent(rp.getNodeId())}`)
  t.teardown(() => socket.destroy())
  const clientSocket = watch(socket, { answerEnd: false })
  await rpEvents.wait('connection')
  const serverSocket = await server.serverConnP()
  t.true(clientSocket instanceof net.Socket)
  t.is(clientSocket.remoteAddress, fwdProxy.getProxyHost())
  t.is(clientSocket.remotePort, fwdProxy.getProxyPort())
  await fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 1)
  // The client ends, then waits for the answering end (FP propagated it to the remote and back).
  const { p: clientEndP, resolveP } = promise()
  clientSocket.removeAllListeners('end')
  clientSocket.on('end', () => {
    resolveP()
    clientSocket.destroy()
  })
  clientSocket.end()
  await within(clientEndP, "the proxy's answering end")
  await within(clientSocket.closedP, 'client socket close')
  t.deepEqual(clientSocket.errors, [])
  // The remote side saw the end: the server's socket read it and closed.
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
  // difference: a client's end ends its tunnel only; the QUIC connection to the peer stays up
  // for the next tunnel (the original tore the whole uTP/TLS connection down: count 0).
  await h.waitFor(() => fwdProxy.getStats().tunnelsOpen === 0 && rp.getStats().tunnelsOpen === 0, { what: 'tunnels 0' })
  t.is(fwdProxy.getConnectionCount(), 1)
  t.is(fpEvents.of('close').length, 0)
})

test('F15 HTTP CONNECT success by opening connection first', async (t) => {
  const { fp: fwdProxy, rp, fpEvents, rpEvents, server } = await openedPair(t)
  await fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  await rpEvents.wait('connection')
  const clientSocket = await connected(t, fwdProxy, `127.0.0.1:${rp.getIngressPort()}?nodeId=${encodeURIComponent(rp.getNodeId())}`)
  t.true(clientSocket instanceof net.Socket)
  t.is(clientSocket.remoteAddress, fwdProxy.getProxyHost())
  t.is(clientSocket.remotePort, fwdProxy.getProxyPort())
  t.is(fpEvents.of('connection').length, 1, 'the CONNECT reused the opened connection')
  const serverSocket = await server.serverConnP()
  await fwdProxy.closeConnection(HOST, rp.getIngressPort())
  t.false(await within(clientSocket.closedP, 'client socket close'))
  t.is(clientSocket.ends, 1)
  t.deepEqual(clientSocket.errors, [])
  t.is((await rpEvents.wait('close')).reason, 'remote')
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
})

/**
 * The original's remote "ignores pings" (never answers keepalives). QUIC acknowledges at the
 * transport level, so the peer that stops answering is a relay that drops what the reverse
 * proxy sends back, while the forward proxy's packets still reach it.
 */
async function pairThroughRelay(t, { fp: fpOpts, rp: rpOpts } = {}) {
  const server = await tcpServer(t)
  const rp = await startRp(t, { serverPort: server.port }, rpOpts)
  const relay = await startUdpRelay(t, rp.getIngressPort())
  const fp = await startFp(t, fpOpts)
  return { server, rp, fp, relay, fpEvents: h.recordEvents(fp), rpEvents: h.recordEvents(rp) }
}

test('F16 open connection keepalive timeout', async (t) => {
  const { fp: fwdProxy, rp, relay, fpEvents, rpEvents } = await pairThroughRelay(t, {
    fp: { connKeepAliveTimeoutTime: 1000, connKeepAliveIntervalTime: 100 },
  })
  t.is(fwdProxy.getConnectionCount(), 0)
  await fwdProxy.openConnection(rp.getNodeId(), HOST, relay.port)
  await rpEvents.wait('connection')
  t.is(fwdProxy.getConnectionCount(), 1)
  relay.dropToClient = true // the remote stops answering
  const started = Date.now()
  t.is((await fpEvents.wait('close')).reason, 'keepaliveTimeout')
  const after = Date.now() - started
  t.true(after >= 800 && after < 4000, `declared dead after ${after} ms (connKeepAliveTimeoutTime 1000)`)
  t.is(fwdProxy.getConnectionCount(), 0)
  // Remote closed, gracefully: the forward proxy told it (the original: one TLS end, close(false)).
  t.is((await rpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => rp.getConnectionCount() === 0, { what: 'rp count 0' })
})

test('F17 HTTP CONNECT keepalive timeout', async (t) => {
  const { fp: fwdProxy, rp, relay, fpEvents, rpEvents, server } = await pairThroughRelay(t, {
    fp: { connKeepAliveTimeoutTime: 1000, connKeepAliveIntervalTime: 100 },
  })
  const target = `127.0.0.1:${relay.port}?nodeId=${encodeURIComponent(rp.getNodeId())}`
  const clientSocket = await connected(t, fwdProxy, target)
  t.true(clientSocket instanceof net.Socket)
  t.is(clientSocket.remoteAddress, fwdProxy.getProxyHost())
  t.is(clientSocket.remotePort, fwdProxy.getProxyPort())
  await rpEvents.wait('connection')
  const serverSocket = await server.serverConnP()
  // Added: a second tunnel on the same connection (the original had one uTP/TLS connection per
  // tunnel). With one tunnel the bug below shows about half the time; with two, every time.
  const secondClient = await connected(t, fwdProxy, target)
  await h.waitFor(() => server.sockets.length === 2, { what: 'the second server connection' })
  const secondServerSocket = server.sockets[1]
  t.is(fwdProxy.getConnectionCount(), 1)
  relay.dropToClient = true
  t.is((await fpEvents.wait('close')).reason, 'keepaliveTimeout')
  for (const c of [clientSocket, secondClient]) {
    t.false(await within(c.closedP, 'client socket close'))
    t.is(c.ends, 1, 'the client read an end')
    t.deepEqual(c.errors, [], 'not a reset')
  }
  t.is((await rpEvents.wait('close')).reason, 'remote')
  // The remote side ends gracefully too (the original: the remote's TLS socket read one end and
  // closed without error), so the servers behind it read an end.
  // (This failed every run until watch_silence let the queued FINs leave before its close:
  // the close overtook them and the reverse proxy reset a server instead of ending it.)
  for (const s of [serverSocket, secondServerSocket]) {
    await within(s.closedP, 'server socket close')
    t.deepEqual(s.errors, [], 'the server was not reset')
    t.is(s.ends, 1, 'the server read an end')
  }
  await h.waitFor(() => fwdProxy.getConnectionCount() === 0 && rp.getConnectionCount() === 0, { what: 'counts 0' })
})

test('F18 stopping the proxy with open connections', async (t) => {
  const { fp: fwdProxy, rp, rpEvents } = await openedPair(t)
  await fwdProxy.openConnection(rp.getNodeId(), HOST, rp.getIngressPort())
  await rpEvents.wait('connection')
  t.is(fwdProxy.getConnectionCount(), 1)
  await fwdProxy.stop()
  t.is(fwdProxy.getConnectionCount(), 0)
  t.is((await rpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => rp.getConnectionCount() === 0, { what: 'rp count 0' })
})

test('F19 open connection to multiple servers', async (t) => {
  const server = await tcpServer(t)
  const rp1 = await startRp(t, { serverPort: server.port, tlsConfig: (await generateIdentity()).tlsConfig })
  const rp2 = await startRp(t, { serverPort: server.port, tlsConfig: (await generateIdentity()).tlsConfig })
  t.not(rp1.getNodeId(), rp2.getNodeId())
  const [events1, events2] = [h.recordEvents(rp1), h.recordEvents(rp2)]
  const fwdProxy = await startFp(t)
  t.is(fwdProxy.getConnectionCount(), 0)
  await fwdProxy.openConnection(rp1.getNodeId(), HOST, rp1.getIngressPort())
  await fwdProxy.openConnection(rp2.getNodeId(), HOST, rp2.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 2)
  await events1.wait('connection')
  await events2.wait('connection')
  await fwdProxy.closeConnection(HOST, rp1.getIngressPort())
  await fwdProxy.closeConnection(HOST, rp2.getIngressPort())
  t.is(fwdProxy.getConnectionCount(), 0)
  t.is((await events1.wait('close')).reason, 'remote')
  t.is((await events2.wait('close')).reason, 'remote')
})

// ---- 4.2 ReverseProxy.test.ts ---------------------------------------------------------------------

test('R1 reverseProxy readiness', async (t) => {
  const { tlsConfig } = await generateIdentity()
  const revProxy = new ReverseProxy({ logger })
  t.teardown(() => h.stopQuietly(revProxy))
  // Should be a noop
  await revProxy.stop()
  const startOpts = { serverHost: '::1', serverPort: 1, ingressHost: '127.0.0.1', tlsConfig }
  await revProxy.start(startOpts)
  t.is(typeof revProxy.getServerHost(), 'string')
  t.is(typeof revProxy.getServerPort(), 'number')
  t.true(revProxy.getServerPort() > 0)
  t.is(typeof revProxy.getIngressHost(), 'string')
  t.is(typeof revProxy.getIngressPort(), 'number')
  t.true(revProxy.getIngressPort() > 0)
  const port = revProxy.getIngressPort()
  // Should be a noop (already started)
  await revProxy.start(startOpts)
  t.is(revProxy.getIngressPort(), port)
  await revProxy.stop()
  t.throws(() => revProxy.getIngressHost(), { instanceOf: errors.ErrorReverseProxyNotRunning })
  t.throws(() => revProxy.getConnectionInfoByProxy('::1', 1), { instanceOf: errors.ErrorReverseProxyNotRunning })
  t.is(revProxy.getConnectionCount(), 0)
  // Start it again
  await revProxy.start(startOpts)
  t.is(revProxy.getServerHost(), '::1')
  await revProxy.stop()
})

test('R2 open connection to port 0 fails', async (t) => {
  const server = await tcpServer(t)
  const revProxy = await startRp(t, { serverHost: '127.0.0.1', serverPort: server.port, ingressHost: '127.0.0.1' })
  const started = Date.now()
  const e = await t.throwsAsync(revProxy.openConnection('127.0.0.1', 0), { instanceOf: errors.ErrorConnectionStart })
  t.is(e.code, 'ErrorConnectionStart')
  t.true(Date.now() - started < 2000, 'no waiting for a timeout')
  // difference (review bug M10): keynet dials the server once per tunnel, not when punching, so
  // the server is never contacted here (the original connected to it, then closed).
  t.is(server.count, 0)
  t.is(revProxy.getConnectionCount(), 0)
})

test('R3 open connection timeout due to lack of ready signal', async (t) => {
  const server = await tcpServer(t)
  const revProxy = await startRp(t, { serverHost: '127.0.0.1', serverPort: server.port, ingressHost: '127.0.0.1' })
  // A UDP socket that never answers.
  const silent = await h.startSilentUdp(t)
  const timer = utils.timerStart(3000)
  const started = Date.now()
  await t.throwsAsync(revProxy.openConnection('127.0.0.1', silent.port, timer), { instanceOf: errors.ErrorConnectionStartTimeout })
  const elapsed = Date.now() - started
  utils.timerStop(timer)
  t.true(timer.timedOut)
  t.true(elapsed >= 2900 && elapsed < 5000, `rejected after ${elapsed} ms (timer 3000)`)
  t.true(silent.messages.length > 0, 'the reverse proxy punched toward it')
  // difference (M10): the server is not contacted before a tunnel arrives.
  t.is(server.count, 0)
  t.is(revProxy.getConnectionCount(), 0)
})

/**
 * The original's fake forward answered the reverse proxy's punches; keynet's is a real forward
 * proxy dialling at the same time. Resolves once both sides' openConnection did.
 */
async function openBoth(rp, fp, { host = HOST, fpTarget = rp.getIngressPort(), rpTarget = fp.getEgressPort() } = {}) {
  await Promise.all([rp.openConnection(host, rpTarget), fp.openConnection(rp.getNodeId(), host, fpTarget)])
}

test('R4 open connection success', async (t) => {
  const server = await tcpServer(t)
  const revProxy = await startRp(t, { serverHost: '127.0.0.1', serverPort: server.port, ingressHost: '127.0.0.1' })
  const fp = await startFp(t)
  await openBoth(revProxy, fp)
  t.is(revProxy.getConnectionCount(), 1)
  // difference (M10): the server is dialled per tunnel; open one to reach it.
  t.is(server.count, 0)
  const client = await connected(t, fp, `127.0.0.1:${revProxy.getIngressPort()}?nodeId=${revProxy.getNodeId()}`)
  await server.serverConnP()
  await revProxy.closeConnection(HOST, fp.getEgressPort())
  t.is(revProxy.getConnectionCount(), 0)
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  await within(client.closedP, 'client socket close')
})

test('R5 open connection to multiple clients', async (t) => {
  const server = await tcpServer(t)
  const revProxy = await startRp(t, { serverHost: '127.0.0.1', serverPort: server.port, ingressHost: '127.0.0.1' })
  const fp1 = await startFp(t)
  const fp2 = await startFp(t)
  await Promise.all([openBoth(revProxy, fp1), openBoth(revProxy, fp2)])
  t.is(revProxy.getConnectionCount(), 2)
  // The server connection (through the first client's tunnel) opens and closes.
  const client = await connected(t, fp1, `127.0.0.1:${revProxy.getIngressPort()}?nodeId=${revProxy.getNodeId()}`)
  await server.serverConnP()
  await revProxy.closeConnection(HOST, fp1.getEgressPort())
  await revProxy.closeConnection(HOST, fp2.getEgressPort())
  t.is(revProxy.getConnectionCount(), 0)
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  await within(client.closedP, 'client socket close')
})

test('R6 closed connection due to ending server', async (t) => {
  // This server will end the connection immediately
  const server = await tcpServer(t, { end: true })
  const revProxy = await startRp(t, { serverHost: '127.0.0.1', serverPort: server.port, ingressHost: '127.0.0.1' })
  const fp = await startFp(t)
  await openBoth(revProxy, fp)
  t.is(revProxy.getConnectionCount(), 1)
  const client = await connected(t, fp, `127.0.0.1:${revProxy.getIngressPort()}?nodeId=${revProxy.getNodeId()}`)
  const serverSocket = await server.serverConnP()
  // The server's end reaches the client, whose answering end reaches the server.
  await within(client.closedP, 'client socket close')
  t.is(client.ends, 1)
  t.deepEqual(client.errors, [])
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
  // difference: the server's end ends that tunnel only; the connection stays (the original
  // stopped the whole connection: count 0).
  await h.waitFor(() => revProxy.getStats().tunnelsOpen === 0, { what: 'rp tunnels 0' })
  t.is(revProxy.getConnectionCount(), 1)
})

test('R7 connect timeout due to hanging client', async (t) => {
  const { fp, rp: revProxy, relay, fpEvents, rpEvents, server } = await pairThroughRelay(t, {
    rp: { connConnectTime: 3000, connKeepAliveTimeoutTime: 3000 },
    fp: { connKeepAliveTimeoutTime: 3000 },
  })
  await openBoth(revProxy, fp, { fpTarget: relay.port, rpTarget: relay.port })
  t.is(revProxy.getConnectionCount(), 1)
  const client = await connected(t, fp, `127.0.0.1:${relay.port}?nodeId=${revProxy.getNodeId()}`)
  const serverSocket = await server.serverConnP()
  // The client hangs: nothing more gets through, either way.
  relay.dropToClient = true
  relay.dropToTarget = true
  // The reverse proxy gives up on it after connKeepAliveTimeoutTime, and ends the server's
  // connection (an end, not a reset).
  t.is((await rpEvents.wait('close')).reason, 'keepaliveTimeout')
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
  await h.waitFor(() => revProxy.getConnectionCount() === 0, { what: 'rp count 0' })
  // The client side times out too (the original's client stream closed on its own timer).
  t.is((await fpEvents.wait('close')).reason, 'keepaliveTimeout')
  await within(client.closedP, 'client socket close')
})

test('R8 connect fails due to missing client certificates', async (t) => {
  // A keynet forward proxy always presents a certificate; the closest refusal of a client's
  // certificate is a reverse proxy whose allowedNodeIds leave it out.
  const server = await tcpServer(t)
  const other = await unknownNodeId()
  const revProxy = await startRp(
    t,
    { serverHost: '127.0.0.1', serverPort: server.port, ingressHost: '127.0.0.1', allowedNodeIds: [other] },
    { connKeepAliveTimeoutTime: 2000 },
  )
  const rpEvents = h.recordEvents(revProxy)
  const fp = await startFp(t)
  const fpEvents = h.recordEvents(fp)
  const timer = utils.timerStart(2000)
  const punched = revProxy.openConnection('127.0.0.1', fp.getEgressPort(), timer)
  // difference (design choice, review 4.2 R8): the client certificate is checked in the
  // handshake, so the client sees the refusal as an error (the original's client completed TLS,
  // saw no error, and was ended after the check).
  const e = await t.throwsAsync(fp.openConnection(revProxy.getNodeId(), HOST, revProxy.getIngressPort()), { instanceOf: errors.ErrorConnectionStart })
  t.regex(e.message, /refused/)
  // The refused connection never counts: the punch finds no connection before its timer.
  await t.throwsAsync(punched, { instanceOf: errors.ErrorConnectionStartTimeout })
  utils.timerStop(timer)
  t.is(failures(revProxy, 'ErrorConnectionStart'), 1)
  t.is(revProxy.getConnectionCount(), 0)
  t.is(fp.getConnectionCount(), 0)
  t.is(rpEvents.of('connection').length, 0)
  t.is(fpEvents.of('connection').length, 0)
  t.is(server.count, 0, 'the server was never reached')
})

test('R9 connect success', async (t) => {
  const { fp, rp: revProxy, relay, fpEvents, rpEvents, server } = await pairThroughRelay(t)
  // The reverse proxy punches first; the client is "ready" once a punch reached its address.
  const punched = revProxy.openConnection('127.0.0.1', relay.port)
  await h.waitFor(() => relay.fromTarget > 0, { what: 'a punch toward the client' })
  await fp.openConnection(revProxy.getNodeId(), HOST, relay.port)
  await punched
  t.is(revProxy.getConnectionCount(), 1)
  await fpEvents.wait('connection')
  t.is((await rpEvents.wait('connection')).nodeId, fp.getNodeId())
  const client = await connected(t, fp, `127.0.0.1:${relay.port}?nodeId=${revProxy.getNodeId()}`)
  const serverSocket = await server.serverConnP()
  await revProxy.closeConnection('127.0.0.1', relay.port)
  t.is(revProxy.getConnectionCount(), 0)
  // The client's side ended gracefully.
  t.is((await fpEvents.wait('close')).reason, 'remote')
  await within(client.closedP, 'client socket close')
  t.is(client.ends, 1, 'the client read an end')
  t.deepEqual(client.errors, [])
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
})

test('R10 stopping the proxy with open connections', async (t) => {
  const { fp, rp: revProxy, relay, fpEvents, server } = await pairThroughRelay(t)
  const punched = revProxy.openConnection('127.0.0.1', relay.port)
  await h.waitFor(() => relay.fromTarget > 0, { what: 'a punch toward the client' })
  await fp.openConnection(revProxy.getNodeId(), HOST, relay.port)
  await punched
  t.is(revProxy.getConnectionCount(), 1)
  const client = await connected(t, fp, `127.0.0.1:${relay.port}?nodeId=${revProxy.getNodeId()}`)
  const serverSocket = await server.serverConnP()
  await revProxy.stop()
  t.is(revProxy.getConnectionCount(), 0)
  t.is((await fpEvents.wait('close')).reason, 'remote')
  await within(client.closedP, 'client socket close')
  t.is(client.ends, 1, 'the client read an end')
  t.deepEqual(client.errors, [])
  await server.serverConnEndP()
  t.false(await server.serverConnClosedP())
  t.deepEqual(serverSocket.errors, [])
  await h.waitFor(() => fp.getConnectionCount() === 0, { what: 'fp count 0' })
})

// ---- 4.3 index.test.ts ------------------------------------------------------------------------------

/**
 * A TCP tap in front of `port`: the reverse proxy dials the tap, which pipes to the real server,
 * so a test sees the reverse proxy's side of every server connection: `conns[i].down` (its
 * socket), with `ended` (it read a FIN), `errors` (its own), `upErrors` (the server's socket
 * failed: the tap then resets `down`, as the server's kernel would), and `closed` (a promise).
 */
async function startTap(t, port) {
  const conns = []
  const tap = await h.startTcpServer(
    t,
    (down) => {
      const up = net.connect({ port, host: HOST, allowHalfOpen: true })
      t.teardown(() => up.destroy())
      const c = { down, up, ended: false, errors: [], upErrors: [] }
      c.closed = new Promise((resolve) => down.once('close', resolve))
      down.on('end', () => (c.ended = true))
      down.on('error', (e) => {
        c.errors.push(e.code || e.message)
        up.destroy()
      })
      up.on('error', (e) => {
        c.upErrors.push(e.code || e.message)
        down.resetAndDestroy()
      })
      down.pipe(up)
      up.pipe(down)
      // Once the server's socket closed, pipe() stops reading `down`; keep reading, or its end
      // (what the test waits for) is never seen.
      up.on('close', () => down.resume())
      conns.push(c)
    },
    { allowHalfOpen: true },
  )
  return { port: tap.port, conns }
}

/**
 * The original's beforeEach: a gRPC echo server, a reverse proxy in front of it (server
 * identity), a forward proxy (client identity, auth token 'abc'), and a grpc-js client using
 * the forward proxy through the channel options the original's GRPCClient set.
 */
async function network(t) {
  const client = await generateIdentity()
  const serverId = await generateIdentity()
  const clientNodeId = utils.certNodeId(client.tlsConfig.certChainPem)
  const serverNodeId = utils.certNodeId(serverId.tlsConfig.certChainPem)
  const grpcServer = await h.startGrpcEchoServer(t)
  const tap = await startTap(t, grpcServer.port)
  const revProxy = new ReverseProxy({ logger })
  t.teardown(() => h.stopQuietly(revProxy))
  await revProxy.start({ serverHost: '127.0.0.1', serverPort: tap.port, ingressHost: '127.0.0.1', ingressPort: 0, tlsConfig: serverId.tlsConfig })
  const fwdProxy = new ForwardProxy({ authToken: 'abc', logger })
  t.teardown(() => h.stopQuietly(fwdProxy))
  await fwdProxy.start({ tlsConfig: client.tlsConfig, proxyHost: '127.0.0.1', proxyPort: 0, egressHost: '127.0.0.1', egressPort: 0 })
  const fpEvents = h.recordEvents(fwdProxy)
  const rpEvents = h.recordEvents(revProxy)
  // difference: the original's GRPCClient put the node id in the CONNECT target
  // (grpc.http_connect_target 'dns:HOST:PORT/?nodeId=ID'); grpc-js 1.14 no longer parses a
  // target with a path, and sends only HOST:PORT. So the node id is given first, with
  // openConnection, and the CONNECT without ?nodeId= uses that pinned connection.
  await fwdProxy.openConnection(serverNodeId, revProxy.getIngressHost(), revProxy.getIngressPort())
  const Echo = h.loadEcho().Echo
  const grpcClient = new Echo(`${fwdProxy.getProxyHost()}:${fwdProxy.getProxyPort()}`, grpc.credentials.createInsecure(), {
    'grpc.enable_http_proxy': 0,
    'grpc.http_connect_target': `dns:${revProxy.getIngressHost()}:${revProxy.getIngressPort()}`,
    'grpc.http_connect_creds': fwdProxy.authToken,
  })
  t.teardown(() => grpcClient.close())
  // The original's createGRPCClientTest waited for the channel to be ready.
  await within(
    new Promise((resolve, reject) => grpcClient.waitForReady(Date.now() + h.WAIT, (e) => (e ? reject(e) : resolve()))),
    'the gRPC channel to be ready',
  )
  const channelState = () => grpcClient.getChannel().getConnectivityState(false)
  t.is(channelState(), grpc.connectivityState.READY)
  await h.waitFor(() => tap.conns.length === 1, { what: 'the server connection' })
  return { grpcServer, tap, revProxy, fwdProxy, fpEvents, rpEvents, grpcClient, channelState, clientNodeId, serverNodeId }
}

/** The original's afterEach was the only check of I2-I5: it and teardown must not throw. */
async function assertLeftReady(t, { grpcClient, channelState }) {
  await h.waitFor(() => channelState() !== grpc.connectivityState.READY, { what: 'the gRPC channel to leave READY' })
  grpcClient.close()
}

test('I1 grpc integration with unary and stream calls', async (t) => {
  const n = await network(t)
  const { grpcClient: client, fwdProxy, revProxy } = n
  const challenge = 'Hello!'
  const deadline = () => Date.now() + h.WAIT
  // Unary call
  const unaryResponse = await new Promise((resolve, reject) =>
    client.Unary({ text: challenge }, { deadline: deadline() }, (e, r) => (e ? reject(e) : resolve(r))),
  )
  t.is(unaryResponse.text, challenge)
  // Server stream: the original's service sent challenge.length copies of the challenge; the
  // echo service sends `count` messages `${text}-${i}`.
  const streamed = await new Promise((resolve, reject) => {
    const got = []
    const call = client.ServerStream({ text: challenge, count: challenge.length }, { deadline: deadline() })
    call.on('data', (m) => got.push(m))
    call.on('error', reject)
    call.on('end', () => resolve(got))
  })
  t.deepEqual(
    streamed.map((m) => m.text),
    Array.from({ length: challenge.length }, (_, i) => `${challenge}-${i}`),
  )
  // Client stream: the original's reply was the concatenation (length 30); the echo service
  // joins the texts with ','.
  const clientStreamResponse = await new Promise((resolve, reject) => {
    const call = client.ClientStream({ deadline: deadline() }, (e, r) => (e ? reject(e) : resolve(r)))
    for (let i = 0; i < 5; i++) call.write({ text: challenge })
    call.end()
  })
  t.is(clientStreamResponse.count, 5)
  t.is(clientStreamResponse.text.split(',').join('').length, challenge.length * 5)
  // Duplex stream
  const duplexResponse = await within(
    new Promise((resolve, reject) => {
      const call = client.Bidi({ deadline: deadline() })
      call.once('data', resolve)
      call.on('error', reject)
      call.write({ text: challenge })
      call.end()
    }),
    'the duplex reply',
  )
  t.truthy(duplexResponse)
  t.is(duplexResponse.text, challenge)
  // Ensure that the connection count is the same
  t.is(fwdProxy.getConnectionCount(), 1)
  t.is(revProxy.getConnectionCount(), 1)
  t.like(fwdProxy.getConnectionInfoByIngress(revProxy.getIngressHost(), revProxy.getIngressPort()), {
    nodeId: n.serverNodeId,
    egressHost: fwdProxy.getEgressHost(),
    egressPort: fwdProxy.getEgressPort(),
    ingressHost: revProxy.getIngressHost(),
    ingressPort: revProxy.getIngressPort(),
  })
  t.like(revProxy.getConnectionInfoByEgress(fwdProxy.getEgressHost(), fwdProxy.getEgressPort()), {
    nodeId: n.clientNodeId,
    egressHost: fwdProxy.getEgressHost(),
    egressPort: fwdProxy.getEgressPort(),
    ingressHost: revProxy.getIngressHost(),
    ingressPort: revProxy.getIngressPort(),
  })
})

test('I2 client initiates end', async (t) => {
  const n = await network(t)
  // The client goes away: its tunnel ends on both sides, the server's connection reads an end.
  n.grpcClient.close()
  const [conn] = n.tap.conns
  await within(conn.closed, "the reverse proxy's server connection to close")
  t.true(conn.ended, 'an end, not a reset')
  t.deepEqual(conn.errors, [])
  await h.waitFor(() => n.fwdProxy.getStats().tunnelsOpen === 0 && n.revProxy.getStats().tunnelsOpen === 0, { what: 'tunnels 0' })
  // difference: the QUIC connection outlives its tunnels (the original's count went to 0).
  t.is(n.fwdProxy.getConnectionCount(), 1)
  t.is(n.revProxy.getConnectionCount(), 1)
  t.is(n.fpEvents.of('close').length + n.rpEvents.of('close').length, 0)
})

test('I3 server initiates end', async (t) => {
  const n = await network(t)
  // The original's closeTestServer: tryShutdown.
  await within(new Promise((resolve) => n.grpcServer.server.tryShutdown(resolve)), 'the gRPC server to shut down')
  const [conn] = n.tap.conns
  await within(conn.closed, "the reverse proxy's server connection to close")
  // An end; or a reset only if the gRPC server's socket had failed (it closed, and bytes from the
  // client still came): the server's own kernel would have reset that connection too.
  t.true(conn.ended || conn.upErrors.length > 0, `an end, not a reset of keynet's own (server: ${conn.upErrors})`)
  t.deepEqual(conn.errors, [])
  await assertLeftReady(t, n)
  await h.waitFor(() => n.fwdProxy.getStats().tunnelsOpen === 0 && n.revProxy.getStats().tunnelsOpen === 0, { what: 'tunnels 0' })
  // difference: the connection stays for the next tunnel.
  t.is(n.fwdProxy.getConnectionCount(), 1)
  t.is(n.revProxy.getConnectionCount(), 1)
})

test('I4 forward initiates end', async (t) => {
  const n = await network(t)
  await n.fwdProxy.stop()
  t.is(n.fwdProxy.getConnectionCount(), 0)
  t.is((await n.rpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => n.revProxy.getConnectionCount() === 0, { what: 'rp count 0' })
  const [conn] = n.tap.conns
  await within(conn.closed, "the reverse proxy's server connection to close")
  t.true(conn.ended, 'an end, not a reset')
  t.deepEqual(conn.errors, [])
  await assertLeftReady(t, n)
})

test('I5 reverse initiates end', async (t) => {
  const n = await network(t)
  await n.revProxy.stop()
  t.is(n.revProxy.getConnectionCount(), 0)
  t.is((await n.fpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => n.fwdProxy.getConnectionCount() === 0, { what: 'fp count 0' })
  const [conn] = n.tap.conns
  await within(conn.closed, "the reverse proxy's server connection to close")
  t.true(conn.ended, 'an end, not a reset')
  t.deepEqual(conn.errors, [])
  await assertLeftReady(t, n)
})

// ---- 4.4 seed era: Proxy.test.ts --------------------------------------------------------------------

test('P1 Forward Proxy is type correct', (t) => {
  const fwdProxy = new ForwardProxy({ authToken: 'TestToken', logger })
  t.true(fwdProxy instanceof ForwardProxy)
})

test('P2 Forward Proxy is able to start and stop', async (t) => {
  const fwdProxy = new ForwardProxy({ authToken: 'TestToken', logger })
  t.teardown(() => h.stopQuietly(fwdProxy))
  await fwdProxy.start()
  t.not(fwdProxy.getHttpPort(), undefined)
  t.not(fwdProxy.getSocketPort(), undefined)
  await fwdProxy.stop()
})

test('P3 Reverse Proxy is type correct', (t) => {
  const revProxy = new ReverseProxy({ logger })
  t.true(revProxy instanceof ReverseProxy)
})

test('P4 Reverse Proxy is able to start and stop', async (t) => {
  const revProxy = new ReverseProxy({ logger })
  t.teardown(() => h.stopQuietly(revProxy))
  await revProxy.start()
  t.not(revProxy.getSocketPort(), undefined)
  await revProxy.stop()
})

test('P5 Forward and Reverse can punch each other', async (t) => {
  const fwdProxy = new ForwardProxy({ authToken: 'TestToken', logger })
  const revProxy = new ReverseProxy({ logger })
  t.teardown(() => Promise.all([h.stopQuietly(fwdProxy), h.stopQuietly(revProxy)]))
  await revProxy.start()
  await fwdProxy.start()
  const revPort = revProxy.getSocketPort()
  const fwdPort = fwdProxy.getSocketPort()
  t.not(revPort, undefined)
  t.not(fwdPort, undefined)
  const [res1, res2] = await within(
    Promise.all([fwdProxy.addNatConnection(revPort, '127.0.0.1'), revProxy.addNatConnection(fwdPort, '127.0.0.1')]),
    'both punches',
  )
  t.is(res1, true)
  t.is(res2, true)
  await fwdProxy.stop()
  await revProxy.stop()
})

// ---- 4.4 utils.test.ts ----------------------------------------------------------------------------

test('U1 utils building addresses', (t) => {
  t.is(utils.buildAddress('127.0.0.1', 0), '127.0.0.1:0')
  t.is(utils.buildAddress('::1', 100), '[::1]:100')
  t.is(utils.buildAddress('::', 0), '[::]:0')
})

test('U2 utils resolving zero IPs', (t) => {
  t.is(utils.resolvesZeroIP('0.0.0.0'), '127.0.0.1')
  t.is(utils.resolvesZeroIP('::'), '::1')
  t.is(utils.resolvesZeroIP('0000:0000:0000:0000:0000:0000:0000:0000'), '::1')
})
