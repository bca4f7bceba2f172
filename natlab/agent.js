'use strict'
// A keynode inside a lab namespace, driven by JSON lines on stdin (one answer line per command;
// commands overlap: a long `transfer` does not hold up the others).
// Proxies: startRp, startFp, punch, open, info, relayStatus, lookup, locate, openNode, relays, networkChanged,
// stop, exit.
// Traffic: call (unary gRPC), transfer / waitBytes / abortTransfer (bytes through a tunnel to
// the echo server), chatOpen / chatSend / chatClose (a gRPC Bidi stream), connectStatus. The
// servers, support/echo.proto and the CONNECT client come from ../support (shared with the tests).
// Events: waitPath, waitEvent, waitCurrentPath, events. Plain UDP (lab self-tests, no keynet):
// udpOpen, udpSend, udpWait, udpClose.
// Times (`at`, `after`, `closedAt`, ...) are epoch milliseconds read from the system clock at
// the moment (Date.now()), so the lab's processes agree on them. (performance.timeOrigin is
// fixed when a process starts: after the machine was paused and its wall clock stepped, a
// process started later is ahead of one started earlier by the step; a full run once saw 34 s.)

const net = require('node:net')
const dgram = require('node:dgram')
const crypto = require('node:crypto')
const readline = require('node:readline')
const { grpc, loadEcho, startGrpcEchoServer, startTcpEchoServer, request, openTunnel } = require('../support')

// Loaded on first use: the UDP commands work without the native addon.
let keynet = null
const lib = () => (keynet = keynet || require('..'))

const TOKEN = 'lab-token'
const proto = loadEcho()
const now = () => Date.now()
let fp = null
let rp = null
let servers = []
/**
 * Events of both proxies, oldest first: { kind: 'path' | 'close' | 'relay' | 'connection',
 * proxy: 'fp' | 'rp', at, ...the event's fields (certificates left out) }.
 */
const events = []
const eventWaiters = new Set()
let openedAt = 0
/** gRPC clients kept across calls (one HTTP/2 connection = one tunnel), by target. */
const clients = new Map()
/** Running and finished transfers by tag: { bytes, received, abort, done }. */
const transfers = new Map()
/** Who waits for transfer progress (woken on every chunk and every end). */
const byteWaiters = new Set()
/** The open chat stream: { client, call, pending: Map<text, resolve>, received, late, error }. */
let chat = null
let udp = null

function timing(opts = {}) {
  const t = {}
  for (const k of ['connConnectTime', 'connKeepAliveTimeoutTime', 'connKeepAliveIntervalTime', 'connPunchIntervalTime', 'connEndTime', '_disableKeepAlive']) {
    if (opts[k] !== undefined) t[k] = opts[k]
  }
  return t
}

/** Resolves when `pred()` is true (checked now and after each event), or false after `ms`. */
function until(pred, ms, waiters = eventWaiters) {
  if (pred()) return Promise.resolve(true)
  return new Promise((resolve) => {
    const w = () => {
      if (!pred()) return
      clearTimeout(t)
      waiters.delete(w)
      resolve(true)
    }
    const t = setTimeout(() => {
      waiters.delete(w)
      resolve(false)
    }, Math.max(0, ms))
    waiters.add(w)
  })
}

function wake(waiters) {
  for (const w of [...waiters]) w()
}

function record(kind, proxyName, proxy, e) {
  if (proxy !== fp && proxy !== rp) return // a late event of a stopped proxy
  const { certificates, ...rest } = e || {}
  events.push({ kind, proxy: proxyName, at: now(), ...rest })
  wake(eventWaiters)
}

function listen(proxy, name) {
  for (const kind of ['path', 'close', 'connection', 'relay']) {
    try {
      proxy.on(kind, (e) => record(kind, name, proxy, e))
    } catch {
      // 'relay' events are newer than this build: without them the log just has none.
    }
  }
}

function matches(e, f) {
  if (f.kind && e.kind !== f.kind) return false
  if (f.proxy && e.proxy !== f.proxy) return false
  if (f.after != null && e.at < f.after) return false
  for (const k of ['path', 'reason', 'state', 'previousPath', 'transport']) if (f[k] != null && e[k] !== f[k]) return false
  return true
}

async function grpcServer() {
  const { server, port } = await startGrpcEchoServer()
  servers.push({ close: () => new Promise((r) => server.tryShutdown(() => r())) })
  return port
}

async function echoServer() {
  const server = await startTcpEchoServer()
  servers.push(server)
  return server.port
}

/**
 * gRPC and echo behind one port: a tunnel whose first bytes are the HTTP/2 preface goes to the
 * gRPC server, any other to the echo server (so one reverse proxy serves chat and transfers).
 */
async function bothServer() {
  const grpcPort = await grpcServer()
  const echoPort = await echoServer()
  // Half-open: the tunnel's end is passed on, and the echo of the last bytes still comes back.
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {})
    s.once('data', (first) => {
      const to = net.connect({ port: first.subarray(0, 4).toString('latin1') === 'PRI ' ? grpcPort : echoPort, host: '127.0.0.1', allowHalfOpen: true })
      // s closes only once both ways are done (or it failed): to has nothing left to carry.
      to.on('error', () => s.destroy())
      s.on('close', () => to.destroy())
      to.write(first)
      s.pipe(to).pipe(s)
    })
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  servers.push({ close: () => new Promise((r) => server.close(() => r())) })
  return server.address().port
}

function closeChat(why = 'closed') {
  if (!chat) return
  const c = chat
  chat = null
  for (const resolve of c.pending.values()) resolve({ error: why })
  c.pending.clear()
  try {
    c.call.cancel()
  } catch {}
  c.client.close()
}

/** Stops both proxies; resolves how long each stop() took (ms). */
async function stopAll() {
  closeChat('stopped')
  for (const c of clients.values()) c.close()
  clients.clear()
  for (const tr of transfers.values()) tr.abort?.('stopped')
  const took = {}
  const errors = {}
  for (const [name, proxy] of [['fp', fp], ['rp', rp]]) {
    if (!proxy) continue
    const t0 = now()
    try {
      await proxy.stop()
    } catch (e) {
      errors[name] = String(e.message)
    }
    took[name] = now() - t0
  }
  fp = rp = null
  for (const s of servers.splice(0)) await s.close()
  return { fpStopMs: took.fp ?? null, rpStopMs: took.rp ?? null, errors }
}

/** A tunnel through the forward proxy to host:port (its tracked connection), no time limit. */
async function connectTunnel(host, port) {
  return (await openTunnel({ port: fp.getHttpPort(), target: `${host}:${port}`, token: TOKEN, timeout: 0 })).socket
}

/** Writes `data` in 64 chunks, chunk k not before k/64 of `paceMs`, then ends the socket. */
async function writePaced(s, data, paceMs) {
  const chunks = 64
  const size = Math.ceil(data.length / chunks)
  const t0 = now()
  for (let k = 0; k < chunks && !s.destroyed; k++) {
    const due = t0 + (k * paceMs) / chunks
    if (now() < due) await new Promise((r) => setTimeout(r, due - now()))
    // The tunnel may have closed during the wait: a write to a destroyed socket returns false
    // and never emits 'drain' or 'close' again (waiting for them would hang the transfer).
    if (s.destroyed) break
    if (!s.write(data.subarray(k * size, (k + 1) * size))) {
      await new Promise((resolve) => {
        const done = () => {
          s.off('drain', done).off('close', done)
          resolve()
        }
        s.on('drain', done).on('close', done)
      })
    }
  }
  s.end()
}

function currentPath(host, port) {
  try {
    return fp?.getConnectionInfoByIngress(host, port)?.path ?? null
  } catch {
    return null
  }
}

function fresh() {
  if (fp || rp) return
  events.splice(0)
  transfers.clear()
}

const handlers = {
  /** server: 'grpc' (support/echo.proto's Echo), 'echo' (TCP echo) or 'both' (sniffed per tunnel). */
  async startRp({ port, host = '0.0.0.0', server = 'grpc', opts, relay, relays, discovery }) {
    fresh()
    const serverPort = server === 'echo' ? await echoServer() : server === 'both' ? await bothServer() : await grpcServer()
    const proxy = new (lib().ReverseProxy)(timing(opts))
    rp = proxy
    listen(proxy, 'rp')
    try {
      await proxy.start({ serverPort, ingressHost: host, ingressPort: port, relay, relays, discovery })
    } catch (e) {
      rp = null
      throw e
    }
    return { nodeId: proxy.getNodeId(), port: proxy.getIngressPort(), relay: proxy.getRelayStatus() }
  },
  async startFp({ port, opts, relay, host = '0.0.0.0', discovery }) {
    fresh()
    const proxy = new (lib().ForwardProxy)({ authToken: TOKEN, ...timing(opts) })
    fp = proxy
    listen(proxy, 'fp')
    try {
      await proxy.start({ egressHost: host, egressPort: port, relay, discovery })
    } catch (e) {
      fp = null
      throw e
    }
    process.env.grpc_proxy = `http://${TOKEN}@127.0.0.1:${proxy.getHttpPort()}`
    return { nodeId: proxy.getNodeId(), port: proxy.getEgressPort() }
  },
  /** The forward proxy's DHT lookup of `nodeId` (its addresses). */
  async lookup({ nodeId, timeout }) {
    return { found: await fp.lookup(nodeId, { timeout }) }
  },
  /** The forward proxy's locate(nodeId): { addresses, relays } from the node's record. */
  async locate({ nodeId, timeout }) {
    return await fp.locate(nodeId, { timeout })
  },
  /** openConnection(nodeId) alone: { ms, path, ingress, relays (the links then) }. */
  async openNode({ nodeId, timeout }) {
    const t0 = now()
    openedAt = t0
    const info = await fp.openConnection(nodeId, { timeout })
    return { ms: now() - t0, at: now(), path: info.path, ingress: `${info.ingressHost}:${info.ingressPort}`, relays: fp.getRelayStatus() }
  },
  async punch({ host, port, timeout }) {
    await rp.openConnection(host, port, { timeout })
    return { path: rp.getConnectionInfoByEgress(host, port)?.path }
  },
  async open({ nodeId, host, port, timeout, relay }) {
    const t0 = now()
    openedAt = t0
    await fp.openConnection(nodeId, host, port, { timeout, relay })
    const info = fp.getConnectionInfoByIngress(host, port)
    return { ms: now() - t0, at: now(), path: info.path, rttMs: info.rttMs, transport: relay ? fp.getRelayStatus()[0]?.transport : null }
  },
  /** Resolves once the forward proxy reported path `path` (a 'path' event), or after `timeout` ms. */
  async waitPath({ host, port, path: want, timeout = 10000 }) {
    const hit = () => events.find((e) => e.kind === 'path' && e.proxy === 'fp' && e.path === want)
    await until(() => hit(), timeout)
    const e = hit()
    if (e) return { path: want, upgradeMs: e.at - openedAt, at: e.at }
    return { path: currentPath(host, port), upgradeMs: null }
  },
  /**
   * Waits for the `n`-th event matching { kind ('path'), proxy, path, reason, state,
   * previousPath, transport, after (epoch ms) }; resolves { found, at, event, count } (found: false with
   * the count so far and the last event of that kind when `timeout` ms pass first).
   */
  async waitEvent({ timeout = 10000, n = 1, ...f }) {
    const filter = { kind: 'path', ...f }
    const hits = () => events.filter((e) => matches(e, filter))
    const found = await until(() => hits().length >= n, timeout)
    const all = hits()
    if (found) return { found: true, at: all[n - 1].at, event: all[n - 1], count: all.length }
    const last = [...events].reverse().find((e) => e.kind === filter.kind && (!filter.proxy || e.proxy === filter.proxy)) ?? null
    return { found: false, at: null, event: null, count: all.length, last }
  },
  /**
   * Resolves once the forward proxy's connection to host:port is on `path`: at once when it is
   * (`at`: its last 'path' event, when it was to `path`), else at the next 'path' event saying
   * so; { reached, at, path } (the path then).
   */
  async waitCurrentPath({ host, port, path: want, timeout = 10000 }) {
    const t0 = now()
    if (currentPath(host, port) === want) {
      // Since when: the last 'path' event of the forward proxy (on `want`), else now.
      const last = [...events].reverse().find((e) => e.kind === 'path' && e.proxy === 'fp')
      return { reached: true, at: last?.path === want ? last.at : t0, path: want, already: true }
    }
    const hit = () => events.find((e) => e.kind === 'path' && e.proxy === 'fp' && e.path === want && e.at >= t0)
    await until(() => hit(), timeout)
    const e = hit()
    return e ? { reached: true, at: e.at, path: want, already: false } : { reached: false, at: null, path: currentPath(host, port) }
  },
  /** The event log (optionally { kind, proxy, after }). */
  async events(f = {}) {
    const { cmd, id, ...filter } = f
    return { events: events.filter((e) => matches(e, filter)), now: now() }
  },
  async call({ host, port, text = 'hello', deadlineMs = 5000, keep = false }) {
    const t0 = now()
    const target = `${host}:${port}`
    const client = (keep && clients.get(target)) || new proto.Echo(target, grpc.credentials.createInsecure())
    if (keep) clients.set(target, client)
    try {
      const reply = await new Promise((resolve, reject) =>
        client.Unary({ text }, { deadline: Date.now() + deadlineMs }, (e, r) => (e ? reject(e) : resolve(r))),
      )
      return { ms: now() - t0, at: now(), text: reply.text }
    } finally {
      if (!keep) client.close()
    }
  },
  /** The forward proxy's answer to a CONNECT (null if it closed without one), no time limit. */
  async connectStatus({ host, port, nodeId }) {
    const target = nodeId ? `${host}:${port}?nodeId=${nodeId}` : `${host}:${port}`
    const { status, socket } = await request({ port: fp.getHttpPort(), target, token: TOKEN, timeout: 0 })
    socket.destroy()
    return { status }
  },
  /**
   * Sends `bytes` random bytes through a tunnel to the echo server and reads them back. Resolves
   * when the tunnel client socket closes: { ok: true, ... } when every byte came back, else
   * { ok: false, error, closedAt, ... } (the tunnel was closed early, `timeout` ms passed, or
   * abortTransfer). `sent`/`received` are sha256 hex, `bytes` the count that came back.
   * `paceMs` spreads the writes over at least that long (so a path change is sure to land
   * mid-transfer however fast the machine is); 0 writes everything at once.
   */
  async transfer({ host, port, bytes, tag = 'default', timeout = 0, paceMs = 0 }) {
    const pathAtStart = currentPath(host, port)
    const data = crypto.randomBytes(bytes)
    const sent = crypto.createHash('sha256').update(data).digest('hex')
    const startedAt = now()
    const tr = { bytes, received: 0, abort: null, done: false, startedAt }
    transfers.set(tag, tr)
    const s = await connectTunnel(host, port)
    const got = crypto.createHash('sha256')
    let error = null
    let ended = false
    const closed = new Promise((resolve) => {
      s.on('data', (d) => {
        got.update(d)
        tr.received += d.length
        wake(byteWaiters)
      })
      s.on('end', () => (ended = true))
      s.on('error', (e) => (error = error || e.message))
      s.on('close', resolve)
      s.resume() // connectTunnel hands the socket over paused, right after the answer head
    })
    tr.abort = (why) => {
      error = error || why
      s.destroy()
    }
    const timer = timeout ? setTimeout(() => tr.abort(`no end within ${timeout} ms`), timeout) : null
    if (paceMs > 0) await writePaced(s, data, paceMs)
    else s.end(data)
    await closed
    clearTimeout(timer)
    const closedAt = now()
    tr.abort = null
    tr.done = true
    wake(byteWaiters)
    const received = got.digest('hex')
    const pathAtEnd = currentPath(host, port)
    const ok = !error && ended && tr.received === bytes && received === sent
    if (!ok && !error) error = tr.received < bytes ? `tunnel closed after ${tr.received} of ${bytes} bytes` : 'the bytes that came back differ'
    return { ok, error, sent, received, bytes: tr.received, sentBytes: bytes, pathAtStart, pathAtEnd, startedAt, closedAt, ms: closedAt - startedAt }
  },
  /** Resolves once transfer `tag` got `bytes` back (or ended): { reached, received, at }. */
  async waitBytes({ tag = 'default', bytes, timeout = 10000 }) {
    await until(() => !!transfers.get(tag) && (transfers.get(tag).received >= bytes || transfers.get(tag).done), timeout, byteWaiters)
    const tr = transfers.get(tag)
    return { reached: !!tr && tr.received >= bytes, received: tr?.received ?? 0, done: !!tr?.done, at: now() }
  },
  async abortTransfer({ tag = 'default', why = 'aborted' }) {
    const tr = transfers.get(tag)
    if (tr?.abort) tr.abort(why)
    return { received: tr?.received ?? 0 }
  },
  /** Opens a Bidi stream through the forward proxy and waits for the echo of a first message. */
  async chatOpen({ host, port, deadlineMs = 10000 }) {
    closeChat('reopened')
    const client = new proto.Echo(`${host}:${port}`, grpc.credentials.createInsecure())
    const call = client.Bidi()
    const c = { client, call, pending: new Map(), received: 0, late: [], error: null, endedAt: null }
    chat = c
    call.on('data', (m) => {
      c.received++
      const resolve = c.pending.get(m.text)
      if (!resolve) return c.late.push(m.text)
      c.pending.delete(m.text)
      resolve({ text: m.text })
    })
    const fail = (why) => {
      c.error = c.error || why
      c.endedAt = c.endedAt || now()
      for (const resolve of c.pending.values()) resolve({ error: c.error })
      c.pending.clear()
    }
    call.on('error', (e) => fail(`${e.code}: ${e.details || e.message}`))
    call.on('end', () => fail('the stream ended'))
    const first = await handlers.chatSend({ text: 'open', deadlineMs })
    if (first.ok === false) {
      closeChat(first.message)
      return first
    }
    return { ms: first.ms }
  },
  /** Sends `text` (unique per stream) on the chat stream; resolves the echo or an error. */
  async chatSend({ text, deadlineMs = 5000 }) {
    if (!chat) return { ok: false, code: 'NoChat', message: 'no chat stream is open' }
    const c = chat
    if (c.error) return { ok: false, code: 'ChatClosed', message: c.error }
    const t0 = now()
    const answer = await new Promise((resolve) => {
      const t = setTimeout(() => {
        c.pending.delete(text)
        resolve({ error: `no echo within ${deadlineMs} ms` })
      }, deadlineMs)
      c.pending.set(text, (r) => {
        clearTimeout(t)
        resolve(r)
      })
      c.call.write({ text })
    })
    if (answer.error) return { ok: false, code: 'ChatFailed', message: answer.error, sentAt: t0 }
    return { text: answer.text, ms: now() - t0, sentAt: t0, at: now() }
  },
  async chatClose() {
    const c = chat
    if (!c) return { received: 0 }
    const out = { received: c.received, late: c.late, error: c.error }
    closeChat()
    return out
  },
  /** The reverse proxy's relay links, `home` marking its home relay. */
  async relays() {
    return { relays: rp.getRelays() }
  },
  async relayStatus() {
    return { status: fp ? fp.getRelayStatus() : rp.getRelayStatus() }
  },
  async info({ host, port }) {
    return { fp: fp?.getConnectionInfoByIngress(host, port) ?? null, count: fp ? fp.getConnectionCount() : rp.getConnectionCount() }
  },
  /** Tells the proxies the network changed (the new sync `networkChanged()`), where they have it. */
  async networkChanged() {
    const called = []
    for (const [name, proxy] of [['fp', fp], ['rp', rp]]) {
      if (proxy && typeof proxy.networkChanged === 'function') {
        proxy.networkChanged()
        called.push(name)
      }
    }
    return { supported: called.length > 0, called, at: now() }
  },
  async stop() {
    return stopAll()
  },
  // ---- plain UDP, for lab self-tests --------------------------------------------------------
  async udpOpen({ port = 0 }) {
    if (udp) udp.socket.close()
    const socket = dgram.createSocket('udp4')
    const u = { socket, got: [], waiters: new Set() }
    udp = u
    socket.on('message', (msg, rinfo) => {
      u.got.push({ text: msg.toString(), host: rinfo.address, port: rinfo.port, at: now() })
      wake(u.waiters)
    })
    await new Promise((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(port, '0.0.0.0', resolve)
    })
    return { port: socket.address().port }
  },
  async udpSend({ host, port, text }) {
    await new Promise((resolve, reject) => udp.socket.send(text, port, host, (e) => (e ? reject(e) : resolve())))
    return {}
  },
  /** Waits for a datagram `text`: { found, host, port } (where it came from). */
  async udpWait({ text, timeout = 2000 }) {
    const hit = () => udp.got.find((m) => m.text === text)
    await until(() => hit(), timeout, udp.waiters)
    const m = hit()
    return m ? { found: true, host: m.host, port: m.port, at: m.at } : { found: false }
  },
  async udpClose() {
    udp?.socket.close()
    udp = null
    return {}
  },
}

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const msg = JSON.parse(line)
  if (msg.cmd === 'exit') {
    await stopAll().catch(() => {})
    process.exit(0)
  }
  try {
    const result = await handlers[msg.cmd](msg)
    process.stdout.write(JSON.stringify({ ok: true, ...result, id: msg.id }) + '\n')
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, code: e.code ?? e.name, message: String(e.message), id: msg.id }) + '\n')
  }
})
