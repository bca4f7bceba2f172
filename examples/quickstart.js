'use strict'
// The README's "Forward proxy usage" and "Reverse proxy usage" as one program: a gRPC server
// behind a ReverseProxy, a gRPC client that reaches it through a ForwardProxy (grpc_proxy), the
// server learning which node called. Run: node examples/quickstart.js (npm test runs it).

const path = require('node:path')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')
const { ForwardProxy, ReverseProxy } = require('keynet')

const { Echo } = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(__dirname, '..', 'support', 'echo.proto'))).echo

async function main() {
  // The server side: a gRPC server on loopback and the reverse proxy next to it.
  const server = new grpc.Server()
  let revProxy
  server.addService(Echo.service, {
    Unary(call, done) {
      // Who is calling: the peer the server sees is the reverse proxy's end of the tunnel.
      const [host, port] = splitPeer(call.getPeer())
      const caller = revProxy.getConnectionInfoByProxy(host, port)
      done(null, { text: `${call.request.text} (from ${caller.nodeId.slice(0, 10)}…)` })
    },
  })
  const grpcPort = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  )
  revProxy = new ReverseProxy()
  await revProxy.start({ serverHost: '127.0.0.1', serverPort: grpcPort })
  const [nodeId, host, port] = [revProxy.getNodeId(), revProxy.getIngressHost(), revProxy.getIngressPort()]
  console.log(`reverse proxy ${nodeId} on udp ${host}:${port}`)

  // The client side: the forward proxy, and gRPC pointed at it.
  const fwdProxy = new ForwardProxy({ authToken: 'yoasobi' })
  await fwdProxy.start()
  process.env.grpc_proxy = `http://yoasobi@127.0.0.1:${fwdProxy.getProxyPort()}`
  const info = await fwdProxy.openConnection(nodeId, host, port) // connect + pin the node id
  console.log(`connected: path ${info.path}`)

  const client = new Echo(`${host}:${port}`, grpc.credentials.createInsecure())
  const reply = await new Promise((resolve, reject) =>
    client.Unary({ text: 'hello' }, { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))),
  )
  console.log(`reply: ${reply.text}`)

  client.close()
  await fwdProxy.stop()
  await revProxy.stop()
  server.forceShutdown()
}

/** 'ipv4:127.0.0.1:1234' or '127.0.0.1:1234' or '[::1]:1234' -> [host, port] */
function splitPeer(peer) {
  const m = /^(?:ipv[46]:)?\[?([^\]]+?)\]?:(\d+)$/.exec(peer)
  return [m[1], Number(m[2])]
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
