'use strict'
// The hyperdht peer of the bench, run as hypertele runs it: a TCP port forwarded over hyperdht's
// encrypted UDX streams, one hyperdht connection per TCP connection. Three roles, each its own
// process (bench/peers.js starts them; only `listen` and `connect` count as the tunnel's CPU):
//
//   node bench/hyperdht-peer.js bootstrap                      a private 3-node DHT on 127.0.0.1;
//                                                              prints "bootstrap HOST:PORT"
//   node bench/hyperdht-peer.js listen BOOTSTRAP HOST:PORT     serves HOST:PORT; prints "key HEX"
//   node bench/hyperdht-peer.js connect BOOTSTRAP PORT KEY     accepts TCP on 127.0.0.1:PORT;
//                                                              prints "listening PORT"
//
// hyperdht is loaded from bench/.peers/hyperdht (`npm run bench:setup`), never from the
// project's own dependencies.

const net = require('node:net')
const path = require('node:path')

const HD = path.join(__dirname, '.peers', 'hyperdht', 'node_modules')
const DHT = require(path.join(HD, 'hyperdht'))

/**
 * Both directions piped; each end is passed on as an end (the TCP sockets are half-open, the
 * bench's echo reads the client's FIN), an error on either side destroys both.
 */
function splice(tcp, dht) {
  const fail = (e) => {
    if (process.env.KEYNET_BENCH_PEER_DEBUG) console.error(`splice: ${e.message}`)
    tcp.destroy()
    dht.destroy()
  }
  tcp.on('error', fail)
  dht.on('error', fail)
  tcp.pipe(dht)
  dht.pipe(tcp)
}

function hostPort(s) {
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) }
}

async function main([role, ...args]) {
  // The bench holds our stdin open; its end means the bench is gone (crashed or killed).
  process.stdin.on('end', () => process.exit(0)).resume()
  if (role === 'bootstrap') {
    const createTestnet = require(path.join(HD, 'hyperdht', 'testnet'))
    const testnet = await createTestnet(3, { host: '127.0.0.1' })
    const b = testnet.bootstrap[0]
    console.error(`bootstrap ${b.host}:${b.port}`)
    process.once('SIGTERM', () => testnet.destroy().then(() => process.exit(0)))
    return
  }
  const bootstrap = [args[0]]
  const node = new DHT({ bootstrap, host: '127.0.0.1' })
  process.once('SIGTERM', () => node.destroy({ force: true }).then(() => process.exit(0)))
  if (role === 'listen') {
    const target = hostPort(args[1])
    const keyPair = DHT.keyPair()
    const server = node.createServer((conn) => splice(net.connect({ ...target, allowHalfOpen: true }), conn))
    await server.listen(keyPair)
    console.error(`key ${keyPair.publicKey.toString('hex')}`)
    return
  }
  if (role === 'connect') {
    const port = Number(args[1])
    const key = Buffer.from(args[2], 'hex')
    const tcp = net.createServer({ allowHalfOpen: true }, (sock) => splice(sock, node.connect(key)))
    tcp.listen(port, '127.0.0.1', () => console.error(`listening ${port}`))
    return
  }
  throw new Error(`unknown role ${role}`)
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e)
  process.exit(1)
})
