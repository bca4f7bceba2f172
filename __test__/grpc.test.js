'use strict'
// A grpc-js client in a child process reaches a grpc-js server behind the reverse proxy, only by
// setting `grpc_proxy=http://TOKEN@127.0.0.1:<http port>` and dialing the reverse proxy's address.

const path = require('node:path')
const test = require('ava')
const h = require('./helpers')

const CLIENT = path.join(h.FIXTURES, 'grpc-client.js')

/** echo server <- rp <- fp, the rp's address tracked by fp, and a way to run the child client. */
async function setup(t) {
  let rp
  const grpcServer = await h.startGrpcEchoServer(t, {
    // Who is calling, as the server can find out while the call runs.
    onCall(peer) {
      const { host, port } = h.splitPeer(peer)
      const info = rp.getConnectionInfoByProxy(host, port)
      return { callerNodeId: info && info.nodeId }
    },
  })
  const pair = await h.startPair(t, { serverPort: grpcServer.port })
  rp = pair.rp
  const { fp } = pair
  // A CONNECT without ?nodeId= needs the address in the tracker, with its pin.
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  const env = h.cleanEnv({ grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}` })
  const target = `${h.HOST}:${rp.getIngressPort()}`
  const client = async (scenario, n = '') =>
    (await h.runJsonClient(t, process.execPath, [CLIENT, target, scenario, String(n)], { env })).result
  return { fp, rp, grpcServer, client }
}

/** Every call the server saw came through the reverse proxy, from fp's node. */
function assertCallsFrom(t, grpcServer, fp, method, count) {
  const calls = grpcServer.calls.filter((c) => c.method === method)
  t.is(calls.length, count)
  t.true(calls.every((c) => c.callerNodeId === fp.getNodeId()), JSON.stringify(calls.slice(0, 3)))
}

test('unary call through grpc_proxy reaches the server, which can tell the caller node', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  const r = await client('unary')
  t.deepEqual(r, { text: 'hello keynet', count: 42 })
  assertCallsFrom(t, grpcServer, fp, 'Unary', 1)
  t.regex(grpcServer.calls[0].peer, /^127\.0\.0\.1:\d+$/)
})

test('server stream delivers every message in order', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  const N = 200
  const r = await client('serverStream', N)
  t.is(r.length, N)
  t.deepEqual(r, Array.from({ length: N }, (_, i) => ({ text: `s-${i}`, count: i })))
  assertCallsFrom(t, grpcServer, fp, 'ServerStream', 1)
})

test('client stream delivers every message to the server', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  const N = 150
  const r = await client('clientStream', N)
  t.is(r.count, N)
  t.is(r.text, Array.from({ length: N }, (_, i) => `c${i}`).join(','))
  assertCallsFrom(t, grpcServer, fp, 'ClientStream', 1)
})

test('bidi stream ping-pongs', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  const N = 100
  const r = await client('bidi', N)
  t.deepEqual(r, Array.from({ length: N }, (_, i) => ({ text: `b${i}`, count: i })))
  assertCallsFrom(t, grpcServer, fp, 'Bidi', 1)
})

test('1,000 sequential unary calls succeed over one connection, whose info both sides report', async (t) => {
  const { fp, rp, grpcServer, client } = await setup(t)
  const r = await client('unaryLoop', 1000)
  t.deepEqual(r, { ok: 1000, failures: [], failureCount: 0 })
  assertCallsFrom(t, grpcServer, fp, 'Unary', 1000)

  t.is(fp.getConnectionCount(), 1)
  t.is(rp.getConnectionCount(), 1)

  const byIngress = fp.getConnectionInfoByIngress(h.HOST, rp.getIngressPort())
  t.truthy(byIngress)
  t.is(byIngress.nodeId, rp.getNodeId())
  t.is(byIngress.path, 'direct')
  t.true(byIngress.rttMs >= 0)
  t.is(byIngress.ingressPort, rp.getIngressPort())
  t.is(byIngress.egressPort, fp.getEgressPort())
  t.true(byIngress.bytesSent > 0 && byIngress.bytesReceived > 0)
  t.true(byIngress.datagramsSent > 0 && byIngress.sendCalls > 0 && byIngress.sendCalls <= byIngress.datagramsSent)
  t.is(typeof byIngress.lostPackets, 'number')
  // A peer on this host's loopback: packets of the largest size keynet sends, from the start,
  // where the kernel reports the route's MTU (Linux); elsewhere QUIC's own sizes.
  if (process.platform === 'linux') t.is(byIngress.mtu, 6400)
  else t.true(byIngress.mtu >= 1200 && byIngress.mtu <= 6400, `mtu ${byIngress.mtu}`)

  const byEgress = rp.getConnectionInfoByEgress(h.HOST, fp.getEgressPort())
  t.truthy(byEgress)
  t.is(byEgress.nodeId, fp.getNodeId())
  t.is(byEgress.ingressPort, rp.getIngressPort())
})
