'use strict'
// Python grpcio reaches a grpc-js server behind the reverse proxy through `grpc_proxy`, like the
// Node client does: C-core sends `CONNECT 127.0.0.1:<ingress port>` with the token as
// Basic credentials. grpcio is required (CI installs it): when it is missing these tests fail.

const path = require('node:path')
const test = require('ava')
const h = require('./helpers')

const CLIENT = path.join(h.FIXTURES, 'client.py')
const PYTHON = process.env.PYTHON || 'python3'

async function setup(t) {
  let rp
  const grpcServer = await h.startGrpcEchoServer(t, {
    onCall(peer) {
      const { host, port } = h.splitPeer(peer)
      const info = rp.getConnectionInfoByProxy(host, port)
      return { callerNodeId: info && info.nodeId }
    },
  })
  const pair = await h.startPair(t, { serverPort: grpcServer.port })
  rp = pair.rp
  const { fp } = pair
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  const env = h.cleanEnv({
    grpc_proxy: `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}`,
    // Not required (grpcio 1.85 works with its default resolver too); pinned so the result does
    // not depend on which resolver a grpcio build defaults to. Targets are IP literals anyway.
    GRPC_DNS_RESOLVER: 'native',
    PYTHONDONTWRITEBYTECODE: '1',
  })
  const target = `${h.HOST}:${rp.getIngressPort()}`
  const client = async (scenario, n = '') => {
    const r = await h.run(t, PYTHON, [CLIENT, target, scenario, String(n)], { env })
    if (r.code === 3) t.fail(`Python grpcio is required for this suite: ${r.stderr.trim()}`)
    if (r.code !== 0) throw new Error(`client.py ${scenario} exited ${r.code ?? r.signal}\n${r.stderr}`)
    return JSON.parse(r.stdout.trim().split('\n').pop()).result
  }
  return { fp, rp, grpcServer, client }
}

function assertCallsFrom(t, grpcServer, fp, method, count) {
  const calls = grpcServer.calls.filter((c) => c.method === method)
  t.is(calls.length, count)
  t.true(calls.every((c) => c.callerNodeId === fp.getNodeId()), JSON.stringify(calls.slice(0, 3)))
}

test('grpcio is importable', async (t) => {
  const r = await h.run(t, PYTHON, ['-c', 'import grpc; print(grpc.__version__)'])
  t.is(r.code, 0, `Python grpcio is required for this suite (pip install grpcio): ${r.stderr.trim()}`)
})

test('python unary call through grpc_proxy', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  t.deepEqual(await client('unary'), { text: 'hello from python', count: -7 })
  assertCallsFrom(t, grpcServer, fp, 'Unary', 1)
})

test('python server stream', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  const N = 100
  t.deepEqual(await client('serverStream', N), Array.from({ length: N }, (_, i) => ({ text: `py-${i}`, count: i })))
  assertCallsFrom(t, grpcServer, fp, 'ServerStream', 1)
})

test('python client stream', async (t) => {
  const { fp, grpcServer, client } = await setup(t)
  const N = 100
  const r = await client('clientStream', N)
  t.deepEqual(r, { text: Array.from({ length: N }, (_, i) => `p${i}`).join(','), count: N })
  assertCallsFrom(t, grpcServer, fp, 'ClientStream', 1)
})

test('python bidi stream, then 200 sequential unary calls over the same connection', async (t) => {
  const { fp, rp, grpcServer, client } = await setup(t)
  const N = 50
  t.deepEqual(await client('bidi', N), Array.from({ length: N }, (_, i) => ({ text: `q${i}`, count: i })))
  assertCallsFrom(t, grpcServer, fp, 'Bidi', 1)
  t.deepEqual(await client('unaryLoop', 200), { ok: 200 })
  assertCallsFrom(t, grpcServer, fp, 'Unary', 200)
  t.is(fp.getConnectionCount(), 1)
  t.is(rp.getConnectionCount(), 1)
})
