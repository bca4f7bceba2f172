'use strict'
// The servers a reverse proxy carries tunnels to: a TCP server (echo or custom) and the gRPC
// echo service of echo.proto. Each resolves once it listens and leaves shutdown to its caller
// (an ava teardown, the demo's stop, the lab's `stop` command).

const net = require('node:net')
const { once } = require('node:events')
const { grpc, loadEcho } = require('./proto')
const { withTimeout } = require('./timeout')

const LOOPBACK = '127.0.0.1'
const WAIT = 10_000
/** Accepted sockets kept for `nextSocket()` before the oldest are let go. */
const MAX_UNTAKEN = 1000

/**
 * Starts a TCP server on `host:port` (127.0.0.1:0) calling `onSocket(socket)` for each
 * connection. Resolves `{ server, port, sockets (open ones), count (accepted so far),
 * nextSocket(timeout), close() }`: `nextSocket()` resolves with the next accepted socket not yet
 * taken (the latest 1,000 untaken are kept); `close()` destroys the open sockets, then closes the server. Socket errors are
 * swallowed: a reset tunnel is a normal way for a connection to end.
 */
async function startTcpServer(onSocket = () => {}, { host = LOOPBACK, port = 0, allowHalfOpen = false, timeout = WAIT } = {}) {
  const server = net.createServer({ allowHalfOpen })
  const sockets = new Set()
  const accepted = []
  const waiting = []
  let count = 0
  server.on('connection', (socket) => {
    count++
    sockets.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
    onSocket(socket)
    const w = waiting.shift()
    if (w) w(socket)
    else {
      accepted.push(socket)
      // Bounded: a long churn that never takes them must not keep every socket it made.
      if (accepted.length > MAX_UNTAKEN) accepted.shift()
    }
  })
  server.listen(port, host)
  await withTimeout(once(server, 'listening'), timeout, 'server listening')
  return {
    server,
    port: server.address().port,
    sockets,
    /** How many connections the server accepted so far. */
    get count() {
      return count
    },
    nextSocket(ms = WAIT) {
      if (accepted.length) return Promise.resolve(accepted.shift())
      return withTimeout(new Promise((r) => waiting.push(r)), ms, 'a connection to the server')
    },
    close() {
      for (const s of sockets) s.destroy()
      return new Promise((r) => server.close(() => r()))
    },
  }
}

/** A TCP echo server (see startTcpServer); with `greeting`, writes it first on every connection. */
function startTcpEchoServer({ greeting, ...opts } = {}) {
  return startTcpServer((socket) => {
    if (greeting) socket.write(greeting)
    socket.pipe(socket)
  }, opts)
}

/**
 * Handlers of the Echo service (echo.proto says what each answers). `onCall(call, method)` runs
 * once per call, inside the handler, while the caller's tunnel is up (so a server can still ask
 * its reverse proxy who is calling); a string it returns goes back as every reply's `caller`.
 */
function echoHandlers({ onCall } = {}) {
  const seen = (call, method) => {
    const caller = onCall ? onCall(call, method) : undefined
    return typeof caller === 'string' ? { caller } : {}
  }
  // A stream's 'error' is the caller going away (a cancelled call, a tunnel closed mid-stream):
  // nothing to answer, and it must not crash the process that serves.
  const quiet = () => {}
  return {
    Unary(call, cb) {
      const extra = seen(call, 'Unary')
      cb(null, { text: call.request.text, count: call.request.count, ...extra })
    },
    ServerStream(call) {
      const extra = seen(call, 'ServerStream')
      for (let i = 0; i < call.request.count; i++) call.write({ text: `${call.request.text}-${i}`, count: i, ...extra })
      call.end()
    },
    ClientStream(call, cb) {
      const extra = seen(call, 'ClientStream')
      const texts = []
      call.on('data', (m) => texts.push(m.text))
      call.on('end', () => cb(null, { text: texts.join(','), count: texts.length, ...extra }))
      call.on('error', quiet)
    },
    Bidi(call) {
      const extra = seen(call, 'Bidi')
      call.on('data', (m) => call.write({ text: m.text, count: m.count, ...extra }))
      call.on('end', () => call.end())
      call.on('error', quiet)
    },
  }
}

/**
 * Starts the Echo service on `host:port` (127.0.0.1:0), insecure: the reverse proxy dials it
 * in plain TCP. Resolves `{ server, port }`; `onCall` as in echoHandlers.
 */
async function startGrpcEchoServer({ host = LOOPBACK, port = 0, onCall, timeout = WAIT } = {}) {
  const server = new grpc.Server()
  server.addService(loadEcho().Echo.service, echoHandlers({ onCall }))
  const bound = await withTimeout(
    new Promise((resolve, reject) =>
      server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    ),
    timeout,
    'grpc server bind',
  )
  return { server, port: bound }
}

module.exports = { startTcpServer, startTcpEchoServer, echoHandlers, startGrpcEchoServer }
