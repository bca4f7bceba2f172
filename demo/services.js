'use strict'
// Services by name, in one process on loopback: three replicas of a gRPC echo service behind
// three reverse proxies offer the name `echo` on a private DHT (the first replica's DHT node is
// the network's bootstrap node); a forward proxy looks the name up, then grpc-js clients that
// know only `echo.service.keynet:443` and `grpc_proxy` call it, a new client per call (each call
// a new CONNECT, which goes to the next replica). Prints the replicas found, the lookup time
// (median of 20), and which replica served each call.
//
//   npm run demo:services

const keynet = require('..')
const { grpc, loadEcho, startGrpcEchoServer } = require('../support')

const DHT_PORT = 46881
const CALLS = 12
const LOOKUPS = 20

const short = (id) => id.slice(0, 12) + '…'
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]

async function main() {
  const stops = []
  try {
    // Three replicas; the first one's DHT node is where the others join.
    const replicas = []
    for (let i = 0; i < 3; i++) {
      const served = { n: 0 }
      const { server, port } = await startGrpcEchoServer({ onCall: () => void served.n++ })
      stops.push(() => new Promise((r) => server.tryShutdown(() => r())))
      const rp = new keynet.ReverseProxy()
      const discovery =
        i === 0
          ? { bootstrap: [], server: true, host: '127.0.0.1', port: DHT_PORT, services: ['echo'] }
          : { bootstrap: [`127.0.0.1:${DHT_PORT}`], server: true, services: ['echo'] }
      await rp.start({ serverPort: port, discovery })
      stops.push(() => rp.stop())
      replicas.push({ rp, served })
      console.log(`replica ${i + 1}: node ${short(rp.getNodeId())} offers 'echo' (gRPC server on port ${port})`)
    }
    const fp = new keynet.ForwardProxy({ authToken: 'demo' })
    await fp.start({ discovery: { bootstrap: [`127.0.0.1:${DHT_PORT}`], announce: false } })
    stops.push(() => fp.stop())

    // Look the name up until the three first announces are there, then time 20 lookups.
    let found = []
    const until = Date.now() + 20_000
    while (found.length < 3 && Date.now() < until) found = await fp.lookupService('echo')
    console.log(`lookupService('echo') found ${found.length}: ${found.map((m) => short(m.nodeId)).join(', ')}`)
    const times = []
    for (let i = 0; i < LOOKUPS; i++) {
      const t0 = performance.now()
      await fp.lookupService('echo')
      times.push(performance.now() - t0)
    }
    console.log(`lookup time: median ${median(times).toFixed(0)} ms over ${LOOKUPS} (min ${Math.min(...times).toFixed(0)}, max ${Math.max(...times).toFixed(0)})`)

    // grpc-js, knowing only the name: a new client per call.
    process.env.grpc_proxy = `http://demo@127.0.0.1:${fp.getHttpPort()}`
    const Echo = loadEcho().Echo
    for (let i = 0; i < CALLS; i++) {
      const before = replicas.map((r) => r.served.n)
      const client = new Echo('echo.service.keynet:443', grpc.credentials.createInsecure())
      const t0 = performance.now()
      const reply = await new Promise((resolve, reject) =>
        client.Unary({ text: `call ${i + 1}`, count: i }, { deadline: new Date(Date.now() + 10_000) }, (e, r) => (e ? reject(e) : resolve(r))),
      )
      client.close()
      const who = replicas.findIndex((r, j) => r.served.n > before[j])
      console.log(`call ${String(i + 1).padStart(2)}: '${reply.text}' from replica ${who + 1} in ${(performance.now() - t0).toFixed(1)} ms`)
    }
    console.log(`calls per replica: ${replicas.map((r) => r.served.n).join(' / ')}`)
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {})
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e)
    process.exit(1)
  },
)
