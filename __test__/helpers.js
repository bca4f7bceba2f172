'use strict'
// Shared helpers of the ava suite: servers behind the reverse proxy, proxy pairs, raw CONNECT
// requests, child processes, and waits that always have a deadline. Everything a helper starts
// is registered with `t.teardown`, so it is cleaned up even when the test fails. The echo
// servers, the proto and the CONNECT client come from ../support (shared with the demo, the
// bench and the NAT lab); what is here adds the ava side: teardown, recorded calls and errors.

const net = require('node:net')
const dgram = require('node:dgram')
const path = require('node:path')
const crypto = require('node:crypto')
const fs = require('node:fs')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const keynet = require('..')
const support = require('../support')

const HOST = '127.0.0.1'
const TOKEN = 'keynet-test-token'
const ROOT = path.join(__dirname, '..')
const FIXTURES = path.join(__dirname, 'fixtures')
const { PROTO_PATH, withTimeout, loadEcho, parseHead, readHead, readUntil } = support
/** Upper bound for any single wait in the suite unless a test says otherwise. */
const WAIT = 10_000

// ---- waiting --------------------------------------------------------------------------------

/** Resolves with the first argument of the next `event` (passing `filter`) within `timeout`. */
function waitEvent(emitter, event, { timeout = WAIT, filter = () => true } = {}) {
  let listener
  const p = new Promise((resolve) => {
    listener = (...args) => {
      if (filter(...args)) resolve(args[0])
    }
    emitter.on(event, listener)
  })
  return withTimeout(p, timeout, `'${event}' event`).finally(() => emitter.off(event, listener))
}

/** Polls `predicate` until it returns a truthy value; only for state that emits no event. */
async function waitFor(predicate, { timeout = WAIT, interval = 10, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    try {
      last = await predicate()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last})`)
    }
    await new Promise((r) => setTimeout(r, interval))
  }
}

/**
 * Records every 'connection' / 'close' / 'path' event of a proxy from now on, so a test can wait
 * for an event that may already have fired.
 */
function recordEvents(proxy) {
  const list = []
  const waiters = new Set()
  const push = (kind) => (e) => {
    list.push({ kind, ...e })
    for (const w of waiters) w()
  }
  for (const kind of ['connection', 'close', 'path']) proxy.on(kind, push(kind))
  return {
    list,
    of(kind) {
      return list.filter((e) => e.kind === kind)
    },
    /** The first recorded `kind` event matching `filter` (waiting for it up to `timeout`). */
    wait(kind, filter = () => true, timeout = WAIT) {
      let waiter
      const p = new Promise((resolve) => {
        waiter = () => {
          const hit = list.find((e) => e.kind === kind && filter(e))
          if (hit) resolve(hit)
        }
        waiters.add(waiter)
        waiter()
      })
      return withTimeout(p, timeout, `'${kind}' event`).finally(() => waiters.delete(waiter))
    },
  }
}

// ---- bytes ----------------------------------------------------------------------------------

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

function basicAuth(token = TOKEN) {
  return support.basicAuth(token)
}

// ---- plain TCP servers (what the reverse proxy carries tunnels to) ------------------------------

/** Closes a support server (its open sockets first) in teardown, bounded. */
function closedInTeardown(t, server) {
  t.teardown(() => withTimeout(server.close(), WAIT, 'server close'))
  return server
}

/**
 * Starts a TCP server on 127.0.0.1:0 calling `onSocket(socket)` for each connection. Returns
 * `{ server, port, sockets (open ones), count (accepted so far), nextSocket() }`; `nextSocket()`
 * resolves with the next accepted socket not yet taken. Every socket and the server are closed in teardown.
 */
async function startTcpServer(t, onSocket = () => {}, { allowHalfOpen = false } = {}) {
  return closedInTeardown(t, await support.startTcpServer(onSocket, { host: HOST, allowHalfOpen, timeout: WAIT }))
}

/** A TCP echo server; with `greeting`, writes it first on every connection. */
async function startEchoServer(t, { greeting, allowHalfOpen = false } = {}) {
  return closedInTeardown(t, await support.startTcpEchoServer({ greeting, host: HOST, allowHalfOpen, timeout: WAIT }))
}

/**
 * Starts fixtures/rp-child.js (an echo server and a ReverseProxy in their own process, so a test
 * can freeze them with SIGSTOP); resolves `{ child, rp }`, `rp` offering the getters
 * targetOf() and openTunnel() use. Killed in teardown.
 */
async function startReverseProxyChild(t) {
  const child = spawn(process.execPath, [path.join(FIXTURES, 'rp-child.js')], { env: cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  t.teardown(() => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  })
  const line = await withTimeout(
    new Promise((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        const i = out.indexOf('\n')
        if (i >= 0) resolve(out.slice(0, i))
      })
      child.on('exit', (code) => reject(new Error(`rp-child exited ${code}: ${stderr}`)))
    }),
    WAIT,
    'rp-child to start',
  )
  const info = JSON.parse(line)
  // targetOf() and openTunnel() only need these two getters.
  const rp = { getNodeId: () => info.nodeId, getIngressPort: () => info.ingressPort }
  return { child, rp }
}

/** Whether every thread of process `pid` is stopped (SIGSTOP took effect), from /proc. */
function processStopped(pid) {
  const dir = `/proc/${pid}/task`
  return fs.readdirSync(dir).every((tid) => {
    const stat = fs.readFileSync(`${dir}/${tid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')
  })
}

/** A TCP port on 127.0.0.1 nothing listens on (bound then released). */
async function closedTcpPort() {
  const server = net.createServer().listen(0, HOST)
  await withTimeout(waitEvent(server, 'listening'), WAIT, 'listening')
  const { port } = server.address()
  await new Promise((r) => server.close(r))
  return port
}

/** A UDP socket on 127.0.0.1 that never answers (a peer that swallows QUIC). */
async function startSilentUdp(t) {
  const socket = dgram.createSocket('udp4')
  const messages = []
  socket.on('message', (m) => messages.push(m))
  socket.bind(0, HOST)
  await withTimeout(waitEvent(socket, 'listening'), WAIT, 'udp listening')
  t.teardown(() => new Promise((r) => socket.close(r)))
  return {
    socket,
    port: socket.address().port,
    messages,
    /** Resolves once a datagram has arrived (the proxy is dialing). */
    firstMessage(timeout = WAIT) {
      if (messages.length) return Promise.resolve(messages[0])
      return waitEvent(socket, 'message', { timeout })
    },
  }
}

/** Whether `port` can be bound on 127.0.0.1 now (`type` 'tcp', 'udp4'). */
function canBind(type, port) {
  return new Promise((resolve) => {
    if (type === 'tcp') {
      const s = net.createServer()
      s.once('error', () => resolve(false))
      s.listen(port, HOST, () => s.close(() => resolve(true)))
    } else {
      const s = dgram.createSocket(type)
      s.once('error', () => {
        s.close()
        resolve(false)
      })
      s.bind(port, HOST, () => s.close(() => resolve(true)))
    }
  })
}

// ---- gRPC echo server --------------------------------------------------------------------------

/**
 * Starts the echo service of support/echo.proto on 127.0.0.1:0 (insecure). Every call is
 * recorded in `calls` as `{ method, peer, ...onCall(peer, method) }`; `onCall` runs inside the
 * handler, while the caller's tunnel is up.
 */
async function startGrpcEchoServer(t, { onCall } = {}) {
  const calls = []
  const record = (call, method) => {
    const peer = call.getPeer()
    calls.push({ method, peer, ...(onCall ? onCall(peer, method) : {}) })
  }
  const { server, port } = await support.startGrpcEchoServer({ host: HOST, onCall: record, timeout: WAIT })
  t.teardown(() => server.forceShutdown())
  return { server, port, calls }
}

/** Splits a `host:port` peer string. */
function splitPeer(peer) {
  const i = peer.lastIndexOf(':')
  return { host: peer.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(peer.slice(i + 1)) }
}

// ---- proxies ------------------------------------------------------------------------------------

/** Stops a proxy, bounded, ignoring errors (teardown must not hang or throw on a stopped proxy). */
async function stopQuietly(proxy) {
  await withTimeout(proxy.stop(), 15_000, 'proxy stop').catch(() => {})
}

async function startReverseProxy(t, startOpts, ctorOpts) {
  const rp = new keynet.ReverseProxy(ctorOpts)
  t.teardown(() => stopQuietly(rp))
  await rp.start(startOpts)
  return rp
}

async function startForwardProxy(t, ctorOpts = {}, startOpts) {
  const fp = new keynet.ForwardProxy({ authToken: TOKEN, ...ctorOpts })
  t.teardown(() => stopQuietly(fp))
  await fp.start(startOpts)
  return fp
}

/** A ReverseProxy carrying tunnels to `serverPort` and a ForwardProxy; both stopped in teardown. */
async function startPair(t, { serverPort, fp: fpOpts, rp: rpOpts, rpStart = {}, fpStart } = {}) {
  const rp = await startReverseProxy(t, { serverPort, ...rpStart }, rpOpts)
  const fp = await startForwardProxy(t, fpOpts, fpStart)
  return { fp, rp }
}

/** The CONNECT target of `rp`'s ingress, pinned to its node id unless `pin` is false. */
function targetOf(rp, { pin = true, nodeId = rp.getNodeId() } = {}) {
  const addr = `${HOST}:${rp.getIngressPort()}`
  return pin ? `${addr}?nodeId=${nodeId}` : addr
}

// ---- raw HTTP CONNECT ----------------------------------------------------------------------------

/** Reads exactly `n` bytes (surplus is pushed back, the socket left paused). */
function readBytes(socket, n, timeout = WAIT) {
  return readUntil(socket, {
    enough: (buf) => (buf.length < n ? null : [buf.subarray(0, n), n]),
    onClose: (buf) => {
      throw new Error(`socket closed after ${buf.length} of ${n} bytes`)
    },
    timeout,
    what: `${n} bytes`,
  })
}

/** Reads until the peer ends (or the socket closes); resolves with everything read. */
function readToEnd(socket, timeout = WAIT) {
  const chunks = []
  const p = new Promise((resolve) => {
    if (socket.readableEnded || socket.destroyed) return resolve()
    socket.on('data', (d) => chunks.push(d))
    socket.once('end', resolve)
    socket.once('close', resolve)
    socket.resume()
  })
  return withTimeout(p, timeout, 'end of stream').then(() => Buffer.concat(chunks))
}

/**
 * Resolves when `socket` has emitted 'close' (immediately if it already has). Unread data is
 * discarded: a paused socket would never see its end, and so never close.
 */
function socketClosed(socket, timeout = WAIT) {
  if (socket.closed || socket.destroyed) return Promise.resolve()
  const closed = waitEvent(socket, 'close', { timeout })
  socket.resume()
  return closed
}

/** Opens a TCP connection to 127.0.0.1:port; destroyed in teardown. Errors are recorded in `socket.errors`. */
async function connectTcp(t, port, opts = {}) {
  const socket = net.connect({ port, host: HOST, ...opts })
  socket.errors = []
  socket.on('error', (e) => socket.errors.push(e))
  t.teardown(() => socket.destroy())
  await withTimeout(waitEvent(socket, 'connect'), WAIT, 'tcp connect')
  return socket
}

/** The bytes of a request head, with the suite's token unless told. `auth: null` leaves Proxy-Authorization out. */
function requestHead({ auth = basicAuth(), ...req }) {
  return support.requestHead({ auth, ...req })
}

/**
 * Sends a request head (or `raw` bytes) to the forward proxy's HTTP port and reads the answer.
 * Resolves `{ status, statusLine, headers, head, socket }`; the socket is positioned right after
 * the head (tunnel bytes for a 200, the body otherwise).
 */
async function rawConnect(t, port, { raw, timeout = WAIT, socketOpts, ...req } = {}) {
  const socket = await connectTcp(t, port, socketOpts)
  socket.write(raw ?? requestHead(req))
  const res = await readHead(socket, timeout)
  return { ...res, socket }
}

/** A CONNECT tunnel through `fp` to `rp`'s server; fails the test unless the answer is 200. */
async function openTunnel(t, fp, rp, { pin = true, socketOpts } = {}) {
  const res = await rawConnect(t, fp.getProxyPort(), { target: targetOf(rp, { pin }), socketOpts })
  if (res.status !== 200) throw new Error(`CONNECT answered ${res.statusLine || JSON.stringify(res.raw)}`)
  return res.socket
}

/** Sends `msg` through a tunnel to an echo server and checks it comes back. */
async function assertEchoes(t, socket, msg = `ping-${crypto.randomUUID()}`) {
  socket.write(msg)
  const back = await readBytes(socket, Buffer.byteLength(msg))
  t.is(back.toString(), msg)
}

// ---- child processes -------------------------------------------------------------------------

const PROXY_VARS = ['grpc_proxy', 'http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'no_grpc_proxy']

/** `process.env` without any proxy variable (either case), plus `extra`. */
function cleanEnv(extra = {}) {
  const env = { ...process.env }
  for (const v of PROXY_VARS) {
    delete env[v]
    delete env[v.toUpperCase()]
  }
  return { ...env, ...extra }
}

/**
 * Runs a command to completion (killed in teardown or after `timeout`). Resolves
 * `{ code, signal, stdout, stderr }`.
 */
function run(t, cmd, args, { env = cleanEnv(), timeout = 60_000, cwd = ROOT } = {}) {
  const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stderr.on('data', (d) => (stderr += d))
  const p = new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))
  })
  return withTimeout(p, timeout, `${path.basename(cmd)} ${args.join(' ')} to exit`).catch((e) => {
    child.kill('SIGKILL')
    e.message += `\nstdout: ${stdout}\nstderr: ${stderr}`
    throw e
  })
}

const RELAY_BIN = path.join(ROOT, 'target', 'debug', process.platform === 'win32' ? 'keynet-relay.exe' : 'keynet-relay')
/** The `keynet` command (same package as keynet-relay: built with it). */
const KEYNET_BIN = path.join(ROOT, 'target', 'debug', process.platform === 'win32' ? 'keynet.exe' : 'keynet')

/** Starts `keynet-relay --dht 127.0.0.1:0 ...`; resolves its DHT address once it prints it. */
async function startDhtNode(t, bootstrap = []) {
  const args = ['--dht', '127.0.0.1:0', ...bootstrap.flatMap((b) => ['--dht-bootstrap', b])]
  const { match } = await spawnKeynetRelay(t, args, /^dht listening on (\S+)$/)
  return match[1]
}

/** A private DHT of `n` `keynet-relay --dht` nodes on loopback; resolves the bootstrap list (all). */
async function privateDht(t, n = 8) {
  const first = await startDhtNode(t)
  const rest = await Promise.all(Array.from({ length: n - 1 }, () => startDhtNode(t, [first])))
  return [first, ...rest]
}

/**
 * Starts the `keynet-relay` binary with `args` (stopped with SIGTERM in teardown) and resolves
 * `{ child, match }` once a stdout line matches `ready` (its RegExp match).
 */
async function spawnKeynetRelay(t, args, ready, { bin = RELAY_BIN, env = {} } = {}) {
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: npm test builds it (cargo build -p keynet-relay)`)
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn', ...env } })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    await withTimeout(exited, 5000, 'keynet-relay to exit on SIGTERM').catch(() => child.kill('SIGKILL'))
  })
  const lines = readline.createInterface({ input: child.stdout })
  const seen = []
  const listening = new Promise((resolve, reject) => {
    lines.on('line', (line) => {
      seen.push(line)
      const match = ready.exec(line)
      if (match) resolve({ child, match, lines: seen })
    })
    child.once('exit', (code) => reject(new Error(`keynet-relay exited ${code}: ${stderr}`)))
    child.once('error', reject)
  })
  return withTimeout(listening, WAIT, `keynet-relay ${args.join(' ')} to be ready`)
}

/** Runs a fixture client that prints one JSON line; resolves the parsed output or throws with its stderr. */
async function runJsonClient(t, cmd, args, opts) {
  const r = await run(t, cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}\nstderr: ${r.stderr}\nstdout: ${r.stdout}`)
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop())
  } catch {
    throw new Error(`no JSON from ${cmd}: ${r.stdout}\nstderr: ${r.stderr}`)
  }
}

module.exports = {
  keynet,
  KEYNET_BIN,
  RELAY_BIN,
  HOST,
  TOKEN,
  ROOT,
  FIXTURES,
  PROTO_PATH,
  WAIT,
  withTimeout,
  waitEvent,
  waitFor,
  recordEvents,
  sha256,
  basicAuth,
  startTcpServer,
  startEchoServer,
  closedTcpPort,
  startSilentUdp,
  canBind,
  loadEcho,
  startGrpcEchoServer,
  splitPeer,
  stopQuietly,
  startReverseProxy,
  startReverseProxyChild,
  processStopped,
  startForwardProxy,
  startPair,
  targetOf,
  parseHead,
  readHead,
  readBytes,
  readToEnd,
  socketClosed,
  connectTcp,
  requestHead,
  rawConnect,
  openTunnel,
  assertEchoes,
  cleanEnv,
  run,
  runJsonClient,
  spawnKeynetRelay,
  privateDht,
}
