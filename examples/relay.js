'use strict'
// The README's "Relay" section in one process: a Relay (the same server as the keynet-relay
// binary), a gRPC server whose ReverseProxy only registers with it (nothing of it is dialled),
// and a gRPC client that names nothing but the server's node id ('NODEID.keynet:443').
// Run: node examples/relay.js (npm test runs it).

const path = require('node:path')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')
const { ForwardProxy, ReverseProxy, Relay } = require('keynet')

const { Echo } = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(__dirname, '..', 'support', 'echo.proto'))).echo

async function main() {
  const relay = new Relay()
  await relay.start({ host: '127.0.0.1', port: 0 })
  const relayOpt = { host: '127.0.0.1', port: relay.getPort(), nodeId: relay.getNodeId() }
  console.log(`relay ${relay.getNodeId()} on udp 127.0.0.1:${relay.getPort()}`)

  const server = new grpc.Server()
  server.addService(Echo.service, { Unary: (call, done) => done(null, { text: call.request.text }) })
  const grpcPort = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  )
  const rp = new ReverseProxy()
  await rp.start({ serverPort: grpcPort, relay: relayOpt }) // resolves once registered
  console.log(`server's node id ${rp.getNodeId()}, relay link ${rp.getRelayStatus().state}`)

  const fp = new ForwardProxy({ authToken: 'tok' })
  fp.on('connection', (e) => console.log(`connection to ${e.nodeId.slice(0, 10)}… path ${e.path}`))
  await fp.start({ relay: relayOpt })
  process.env.grpc_proxy = `http://tok@127.0.0.1:${fp.getProxyPort()}`
  const client = new Echo(`${rp.getNodeId()}.keynet:443`, grpc.credentials.createInsecure())
  const reply = await new Promise((resolve, reject) =>
    client.Unary({ text: 'through the relay' }, { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))),
  )
  console.log(`reply: ${reply.text}`)

  client.close()
  await fp.stop()
  await rp.stop()
  await relay.stop()
  server.forceShutdown()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
