'use strict'
// The README's "Discovery" section in one program: a private DHT of four `keynet-relay --dht`
// nodes (build it first: cargo build -p keynet-relay; npm test does), a gRPC server whose
// ReverseProxy announces its node id there, and a gRPC client that names nothing but that node
// id ('NODEID.keynet:443'). Run: node examples/discovery.js (npm test runs it).

const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { once } = require('node:events')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')
const { ForwardProxy, ReverseProxy } = require('keynet')

const ROOT = path.join(__dirname, '..')
const RELAY_BIN = path.join(ROOT, 'target', 'debug', process.platform === 'win32' ? 'keynet-relay.exe' : 'keynet-relay')
const { Echo } = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(ROOT, 'support', 'echo.proto'))).echo
const children = []

/** Starts `keynet-relay --dht 127.0.0.1:0` (joining `bootstrap`); resolves its 'host:port'. */
async function dhtNode(bootstrap = []) {
  const child = spawn(RELAY_BIN, ['--dht', '127.0.0.1:0', ...bootstrap.flatMap((b) => ['--dht-bootstrap', b])], { stdio: ['ignore', 'pipe', 'ignore'] })
  children.push(child)
  for await (const line of readline.createInterface({ input: child.stdout })) {
    const m = /^dht listening on (\S+)$/.exec(line)
    if (m) return m[1]
  }
  throw new Error('keynet-relay --dht exited before listening')
}

async function main() {
  const first = await dhtNode()
  const bootstrap = [first, ...(await Promise.all([1, 2, 3].map(() => dhtNode([first]))))]
  console.log(`private DHT: ${bootstrap.length} nodes`)

  const server = new grpc.Server()
  server.addService(Echo.service, { Unary: (call, done) => done(null, { text: call.request.text }) })
  const grpcPort = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  )
  const rp = new ReverseProxy()
  const announced = once(rp, 'address') // the first announce is a moment after start
  await rp.start({ serverPort: grpcPort, discovery: { bootstrap } })
  const [{ addresses }] = await announced
  console.log(`announced ${rp.getNodeId()} at ${addresses.map((a) => `${a.host}:${a.port}`).join(', ')}`)

  const fp = new ForwardProxy({ authToken: 'tok' })
  await fp.start({ discovery: { bootstrap, announce: false } })
  const found = await fp.lookup(rp.getNodeId(), { signal: AbortSignal.timeout(10_000) })
  console.log(`lookup: ${found.length} address(es), signed ${found[0]?.signed}`)

  process.env.grpc_proxy = `http://tok@127.0.0.1:${fp.getProxyPort()}`
  const client = new Echo(`${rp.getNodeId()}.keynet:443`, grpc.credentials.createInsecure())
  const reply = await new Promise((resolve, reject) =>
    client.Unary({ text: 'found by node id' }, { deadline: Date.now() + 15_000 }, (e, r) => (e ? reject(e) : resolve(r))),
  )
  console.log(`reply: ${reply.text}`)

  client.close()
  await fp.stop()
  await rp.stop()
  server.forceShutdown()
}

main()
  .catch((e) => {
    console.error(e)
    process.exitCode = 1
  })
  .finally(() => children.forEach((c) => c.kill()))
