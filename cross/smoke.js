'use strict'
// The smoke suite of a prebuilt addon on another platform, in one Node process (an emulated Node
// cannot fork a second emulated one): a gRPC call through ForwardProxy -> QUIC -> ReverseProxy,
// one through a local Relay by node id, generateIdentity, typed errors, and stop() freeing the
// ports. Prints one JSON line per test ({ test, ok, ms, error }) and a last { done, passed,
// failed } line; exits 1 if any failed. Run by cross/test.js under qemu and wine:
//   node cross/smoke.js [ADDON.node | --app DIR]   (default: the repository's own loader)

const path = require('node:path')
const dgram = require('node:dgram')
const net = require('node:net')
const { createRequire } = require('node:module')

// `--app DIR`: keynet, grpc-js and proto-loader as installed in the app DIR (the packed packages,
// loaded the way a user's app loads them); else the repository's, with ADDON if given.
const app = process.argv[2] === '--app' ? path.resolve(process.argv[3]) : null
if (!app && process.argv[2]) process.env.NAPI_RS_NATIVE_LIBRARY_PATH = path.resolve(process.argv[2])
// A require from inside the app: require.resolve('keynet') from here would find this repository
// (a package resolves its own name first).
const need = app ? createRequire(path.join(app, 'package.json')) : require
const keynet = app ? need('keynet') : require('..')
const grpc = need('@grpc/grpc-js')
const protoLoader = need('@grpc/proto-loader')

const { Echo } = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(__dirname, '..', 'support', 'echo.proto'))).echo
const NODE_ID = /^v[0-9a-v]{52}$/
const WAIT = 30_000

function check(ok, what) {
  if (!ok) throw new Error(what)
}

function withTimeout(p, ms, what) {
  let timer
  return Promise.race([p, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)))]).finally(() =>
    clearTimeout(timer),
  )
}

async function grpcServer() {
  const server = new grpc.Server()
  server.addService(Echo.service, { Unary: (call, done) => done(null, { text: `echo ${call.request.text}` }) })
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  )
  return { server, port }
}

function unary(target, text) {
  const client = new Echo(target, grpc.credentials.createInsecure())
  return new Promise((resolve, reject) =>
    client.Unary({ text }, { deadline: Date.now() + WAIT }, (e, r) => {
      client.close()
      return e ? reject(e) : resolve(r.text)
    }),
  )
}

/** Whether UDP `port` on 127.0.0.1 can be bound again (the proxy let it go). */
function udpFree(port) {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4')
    s.once('error', () => resolve(false))
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

function tcpFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer()
    s.once('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

const tests = {
  async 'generateIdentity gives a key, a certificate and its node id'() {
    const id = await keynet.generateIdentity()
    check(NODE_ID.test(id.nodeId), `node id ${id.nodeId}`)
    check(/BEGIN PRIVATE KEY/.test(id.tlsConfig.keyPrivatePem) && /BEGIN CERTIFICATE/.test(id.tlsConfig.certChainPem), 'PEM key and certificate')
    check(keynet.nodeIdFromCertificate(id.tlsConfig.certChainPem) === id.nodeId, 'the node id is the certificate\'s')
  },

  async 'a grpc-js call crosses ForwardProxy -> QUIC -> ReverseProxy, and stop() frees every port'() {
    const { server, port } = await grpcServer()
    const rp = new keynet.ReverseProxy()
    const fp = new keynet.ForwardProxy({ authToken: 'smoke' })
    try {
      await rp.start({ serverHost: '127.0.0.1', serverPort: port })
      await fp.start()
      process.env.grpc_proxy = `http://smoke@127.0.0.1:${fp.getProxyPort()}`
      const [host, ingress] = [rp.getIngressHost(), rp.getIngressPort()]
      const info = await fp.openConnection(rp.getNodeId(), host, ingress)
      check(info.path === 'direct', `path ${info.path}`)
      for (let i = 0; i < 3; i++) check((await unary(`${host}:${ingress}`, `hi ${i}`)) === `echo hi ${i}`, 'the reply')
      const ports = { udpRp: ingress, udpFp: fp.getEgressPort(), http: fp.getProxyPort() }
      await fp.stop()
      await rp.stop()
      for (const [what, p] of Object.entries(ports)) check(await (what === 'http' ? tcpFree(p) : udpFree(p)), `${what} port ${p} is free after stop()`)
    } finally {
      delete process.env.grpc_proxy
      await fp.stop().catch(() => {})
      await rp.stop().catch(() => {})
      server.forceShutdown()
    }
  },

  async 'a grpc-js call reaches a server by node id through a local Relay'() {
    const { server, port } = await grpcServer()
    const relay = new keynet.Relay()
    const rp = new keynet.ReverseProxy()
    const fp = new keynet.ForwardProxy({ authToken: 'smoke' })
    try {
      await relay.start({ host: '127.0.0.1', port: 0 })
      const relayOpt = { host: '127.0.0.1', port: relay.getPort(), nodeId: relay.getNodeId() }
      await rp.start({ serverPort: port, relay: relayOpt })
      check(rp.getRelayStatus().state === 'up', `relay link ${JSON.stringify(rp.getRelayStatus())}`)
      await fp.start({ relay: relayOpt })
      process.env.grpc_proxy = `http://smoke@127.0.0.1:${fp.getProxyPort()}`
      check((await unary(`${rp.getNodeId()}.keynet:443`, 'relayed')) === 'echo relayed', 'the reply')
    } finally {
      delete process.env.grpc_proxy
      await fp.stop().catch(() => {})
      await rp.stop().catch(() => {})
      await relay.stop().catch(() => {})
      server.forceShutdown()
    }
  },

  async 'bad input is a typed error with a code'() {
    const fp = new keynet.ForwardProxy({ authToken: 'smoke' })
    try {
      await fp.start()
      let err
      try {
        await fp.openConnection('not-a-node-id', '127.0.0.1', 1)
      } catch (e) {
        err = e
      }
      check(err instanceof TypeError && err.code === 'ERR_INVALID_ARG_TYPE', `a malformed node id: ${err && err.code} ${err}`)
      err = null
      try {
        await new keynet.ReverseProxy().start({ serverHost: '127.0.0.1', serverPort: 70000 })
      } catch (e) {
        err = e
      }
      check(err instanceof RangeError && err.code === 'ERR_OUT_OF_RANGE', `port 70000: ${err && err.code} ${err}`)
    } finally {
      await fp.stop()
    }
  },
}

async function main() {
  let [passed, failed] = [0, 0]
  for (const [name, fn] of Object.entries(tests)) {
    const t0 = Date.now()
    let error = null
    try {
      await withTimeout(fn(), 120_000, name)
    } catch (e) {
      error = String(e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e)
    }
    if (error) failed++
    else passed++
    console.log(JSON.stringify({ test: name, ok: !error, ms: Date.now() - t0, error }))
  }
  // On Linux, which C library this Node runs on (the report names glibc's version, or none).
  const libc = process.platform === 'linux' ? (process.report.getReport().header.glibcVersionRuntime ? '-gnu' : '-musl') : ''
  console.log(JSON.stringify({ done: true, platform: `${process.platform}-${process.arch}${libc}`, node: process.version, passed, failed }))
  process.exitCode = failed ? 1 : 0
}

main()
