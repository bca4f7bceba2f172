'use strict'
// One end-to-end attempt in a lab: fresh proxies on fresh ports, both sides opening toward each
// other's public address at the same time (as the seed describes), then a grpc-js call from A
// through A's ForwardProxy to the gRPC server behind B's ReverseProxy.

let nextPort = 40000

/** Starts a fresh pair; returns the addresses each side must use. */
async function startPair(lab, A, B, { opts = {}, server = 'grpc' } = {}) {
  const pA = nextPort++
  const pB = nextPort++
  if (nextPort > 60000) nextPort = 40000
  const rp = await B.request({ cmd: 'startRp', port: pB, server, opts })
  if (!rp.ok) throw new Error(`B could not start: ${rp.message}`)
  const fp = await A.request({ cmd: 'startFp', port: pA, opts })
  if (!fp.ok) throw new Error(`A could not start: ${fp.message}`)
  return { nodeIdB: rp.nodeId, pubA: lab.publicAddr('A', pA), pubB: lab.publicAddr('B', pB) }
}

/** Both sides open toward each other; resolves A's and B's answers. */
async function openBoth(A, B, pair, timeout) {
  const { nodeIdB, pubA, pubB } = pair
  const budget = timeout + 10000
  const [punch, open] = await Promise.all([
    B.request({ cmd: 'punch', host: pubA.host, port: pubA.port, timeout }, budget),
    A.request({ cmd: 'open', nodeId: nodeIdB, host: pubB.host, port: pubB.port, timeout }, budget),
  ])
  return { punch, open }
}

/**
 * One attempt: { ok, code, path, rpPath, ttfrMs }: `path` as the forward proxy reports it,
 * `rpPath` as the reverse proxy does, ttfrMs the time to the first gRPC reply.
 */
async function attempt(lab, A, B, { timeout = 5000, opts = {} } = {}) {
  const pair = await startPair(lab, A, B, { opts: { connConnectTime: timeout, ...opts } })
  try {
    const t0 = performance.now()
    const { open, punch } = await openBoth(A, B, pair, timeout)
    if (!open.ok) return { ok: false, code: `${open.code}: ${open.message}`, path: '-' }
    const call = await A.request({ cmd: 'call', host: pair.pubB.host, port: pair.pubB.port })
    if (!call.ok) return { ok: false, code: call.code, path: open.path }
    const ok = call.text === 'hello'
    return { ok, code: ok ? null : 'BadReply', path: open.path, rpPath: punch.path, ttfrMs: performance.now() - t0 }
  } finally {
    await Promise.all([A.request({ cmd: 'stop' }), B.request({ cmd: 'stop' })])
  }
}

/** Starts a pair registered with the lab's relay; A opens through it (no punching by B). */
async function startRelayedPair(lab, A, B, relay, { opts = {}, server = 'grpc', upgradeDelay = 0, fpHost } = {}) {
  const pA = nextPort++
  const pB = nextPort++
  if (nextPort > 60000) nextPort = 40000
  const rp = await B.request({ cmd: 'startRp', port: pB, server, opts, relay })
  if (!rp.ok) throw new Error(`B could not start: ${rp.message}`)
  const fp = await A.request({ cmd: 'startFp', port: pA, opts, host: fpHost })
  if (!fp.ok) throw new Error(`A could not start: ${fp.message}`)
  return { nodeIdB: rp.nodeId, pubB: lab.publicAddr('B', pB), portA: pA, relay: { ...relay, upgradeDelay }, rpTransport: rp.relay?.transport }
}

/**
 * One attempt through the relay: { ok, code, path, upgradedTo, upgradeMs, ttfrMs, transport }:
 * `path` is the path when the connection opened, `upgradedTo` the path once it became `want` or
 * `waitMs` later.
 */
async function relayedAttempt(lab, A, B, relay, { timeout = 10000, waitMs = 6000, want = 'punched' } = {}) {
  const pair = await startRelayedPair(lab, A, B, relay, { opts: { connConnectTime: timeout } })
  try {
    const t0 = performance.now()
    const open = await A.request({ cmd: 'open', nodeId: pair.nodeIdB, host: pair.pubB.host, port: pair.pubB.port, timeout, relay: pair.relay }, timeout + 10000)
    if (!open.ok) return { ok: false, code: `${open.code}: ${open.message}`, path: '-' }
    const call = await A.request({ cmd: 'call', host: pair.pubB.host, port: pair.pubB.port })
    if (!call.ok) return { ok: false, code: `${call.code}: ${call.message}`, path: open.path }
    const ttfrMs = performance.now() - t0
    const ok = call.text === 'hello'
    const up = await A.request({ cmd: 'waitPath', host: pair.pubB.host, port: pair.pubB.port, path: want, timeout: waitMs }, waitMs + 5000)
    return { ok, code: ok ? null : 'BadReply', path: open.path, upgradedTo: up.path, upgradeMs: up.upgradeMs, ttfrMs, transport: open.transport }
  } finally {
    await Promise.all([A.request({ cmd: 'stop' }), B.request({ cmd: 'stop' })])
  }
}

module.exports = { attempt, startPair, openBoth, startRelayedPair, relayedAttempt }
