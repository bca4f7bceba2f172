'use strict'
// A keynode inside a lab namespace, driven by JSON lines on stdin (one answer line per command).
// Commands: startRp, startFp, punch, open, call, transfer, info, stop, exit.

const net = require('node:net')
const crypto = require('node:crypto')
const path = require('node:path')
const readline = require('node:readline')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')
const { ForwardProxy, ReverseProxy } = require('..')

const TOKEN = 'lab-token'
const proto = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(__dirname, 'echo.proto'))).echo
let fp = null
let rp = null
let servers = []
/** The forward proxy's 'path' events, and who waits for the next one. */
const pathEvents = []
const pathWaiters = []
let openedAt = 0
/** gRPC clients kept across calls (one HTTP/2 connection = one tunnel), by target. */
const clients = new Map()

function timing(opts = {}) {
  const t = {}
  for (const k of ['connConnectTime', 'connKeepAliveTimeoutTime', 'connKeepAliveIntervalTime', 'connPunchIntervalTime', '_disableKeepAlive']) {
    if (opts[k] !== undefined) t[k] = opts[k]
  }
  return t
}

async function grpcServer() {
  const server = new grpc.Server()
  server.addService(proto.Echo.service, { Unary: (call, cb) => cb(null, { text: call.request.text }) })
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  )
  servers.push({ close: () => new Promise((r) => server.tryShutdown(() => r())) })
  return port
}

async function echoServer() {
  const server = net.createServer((s) => s.pipe(s))
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  servers.push({ close: () => new Promise((r) => server.close(() => r())) })
  return server.address().port
}

async function stopAll() {
  pathEvents.splice(0)
  for (const c of clients.values()) c.close()
  clients.clear()
  if (fp) await fp.stop()
  if (rp) await rp.stop()
  fp = rp = null
  for (const s of servers.splice(0)) await s.close()
}

function connectTunnel(host, port) {
  return new Promise((resolve, reject) => {
    const s = net.connect(fp.getHttpPort(), '127.0.0.1')
    const auth = Buffer.from(TOKEN).toString('base64')
    s.once('error', reject)
    s.write(`CONNECT ${host}:${port} HTTP/1.1\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`)
    let head = Buffer.alloc(0)
    const onData = (d) => {
      head = Buffer.concat([head, d])
      const end = head.indexOf('\r\n\r\n')
      if (end < 0) return
      s.off('data', onData)
      const status = Number(head.toString('latin1').split(' ')[1])
      if (status !== 200) return reject(new Error(`CONNECT answered ${status}`))
      if (head.length > end + 4) s.unshift(head.subarray(end + 4))
      resolve(s)
    }
    s.on('data', onData)
  })
}

const handlers = {
  async startRp({ port, server = 'grpc', opts, relay }) {
    const serverPort = server === 'echo' ? await echoServer() : await grpcServer()
    rp = new ReverseProxy(timing(opts))
    await rp.start({ serverPort, ingressHost: '0.0.0.0', ingressPort: port, relay })
    return { nodeId: rp.getNodeId(), port: rp.getIngressPort(), relay: rp.getRelayStatus() }
  },
  async startFp({ port, opts }) {
    fp = new ForwardProxy({ authToken: TOKEN, ...timing(opts) })
    fp.on('path', (e) => {
      pathEvents.push({ ...e, at: performance.now() })
      for (const w of pathWaiters.splice(0)) w()
    })
    await fp.start({ egressHost: '0.0.0.0', egressPort: port })
    process.env.grpc_proxy = `http://${TOKEN}@127.0.0.1:${fp.getHttpPort()}`
    return { nodeId: fp.getNodeId(), port: fp.getEgressPort() }
  },
  async punch({ host, port, timeout }) {
    await rp.openConnection(host, port, { timeout })
    return { path: rp.getConnectionInfoByEgress(host, port)?.path }
  },
  async open({ nodeId, host, port, timeout, relay }) {
    const t0 = performance.now()
    openedAt = t0
    await fp.openConnection(nodeId, host, port, { timeout, relay })
    const info = fp.getConnectionInfoByIngress(host, port)
    return { ms: performance.now() - t0, path: info.path, rttMs: info.rttMs, transport: relay ? fp.getRelayStatus()[0]?.transport : null }
  },
  /** Resolves once the connection's path is `path` (a 'path' event), or after `timeout` ms. */
  async waitPath({ host, port, path: want, timeout = 10000 }) {
    const deadline = performance.now() + timeout
    for (;;) {
      const hit = pathEvents.find((e) => e.path === want)
      if (hit) return { path: want, upgradeMs: hit.at - openedAt }
      const left = deadline - performance.now()
      if (left <= 0) return { path: fp.getConnectionInfoByIngress(host, port)?.path ?? null, upgradeMs: null }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left)
        pathWaiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  },
  async call({ host, port, text = 'hello', deadlineMs = 5000, keep = false }) {
    const t0 = performance.now()
    const target = `${host}:${port}`
    const client = (keep && clients.get(target)) || new proto.Echo(target, grpc.credentials.createInsecure())
    if (keep) clients.set(target, client)
    try {
      const reply = await new Promise((resolve, reject) =>
        client.Unary({ text }, { deadline: Date.now() + deadlineMs }, (e, r) => (e ? reject(e) : resolve(r))),
      )
      return { ms: performance.now() - t0, text: reply.text }
    } finally {
      if (!keep) client.close()
    }
  },
  async connectStatus({ host, port, nodeId }) {
    const s = net.connect(fp.getHttpPort(), '127.0.0.1')
    const auth = Buffer.from(TOKEN).toString('base64')
    const target = nodeId ? `${host}:${port}?nodeId=${nodeId}` : `${host}:${port}`
    s.write(`CONNECT ${target} HTTP/1.1\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`)
    const head = await new Promise((resolve) => {
      let buf = ''
      s.on('data', (d) => {
        buf += d.toString('latin1')
        if (buf.includes('\r\n\r\n')) resolve(buf)
      })
      s.on('close', () => resolve(buf))
    })
    s.destroy()
    return { status: Number(head.split(' ')[1]) }
  },
  async transfer({ host, port, bytes }) {
    const pathAtStart = fp.getConnectionInfoByIngress(host, port)?.path ?? null
    const data = crypto.randomBytes(bytes)
    const sent = crypto.createHash('sha256').update(data).digest('hex')
    const s = await connectTunnel(host, port)
    const got = crypto.createHash('sha256')
    let n = 0
    const done = new Promise((resolve, reject) => {
      s.on('data', (d) => {
        got.update(d)
        n += d.length
      })
      s.on('end', resolve)
      s.on('error', reject)
    })
    s.end(data)
    await done
    s.destroy()
    const pathAtEnd = fp.getConnectionInfoByIngress(host, port)?.path ?? null
    return { sent, received: got.digest('hex'), bytes: n, pathAtStart, pathAtEnd }
  },
  async relayStatus() {
    return { status: fp ? fp.getRelayStatus() : rp.getRelayStatus() }
  },
  async info({ host, port }) {
    return { fp: fp?.getConnectionInfoByIngress(host, port) ?? null, count: fp ? fp.getConnectionCount() : rp.getConnectionCount() }
  },
  async stop() {
    await stopAll()
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
