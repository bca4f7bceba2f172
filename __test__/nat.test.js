'use strict'
// Hole punching proven in the NAT lab (natlab/): Linux network namespaces and nftables NATs.
// Needs root (CI runs as root); elsewhere these tests are skipped with the reason.

const test = require('ava')
const { execFileSync } = require('node:child_process')
const { IP, KEYNET_BIN, RELAY_IP, withLab, Lab, labSupport, leftovers } = require('../natlab/lab.js')
const { attempt, startPair, openBoth, startRelayedPair, relayedAttempt } = require('../natlab/attempt.js')

const unsupported = labSupport()
const labTest = unsupported ? test.skip : test.serial
if (unsupported) console.log(`nat.test.js skipped: ${unsupported}`)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const run = require('node:util').promisify(require('node:child_process').execFile)

function namespacesNow() {
  return execFileSync(IP, ['netns', 'list'], { encoding: 'utf8' })
}

for (const [topology, path] of [
  ['direct', 'direct'],
  ['cone', 'punched'],
  ['restricted', 'punched'],
  ['double-nat', 'punched'],
  ['hairpin', 'punched'],
]) {
  labTest(`${topology}: a gRPC call crosses end to end 10 times out of 10, path '${path}'`, async (t) => {
    await withLab(topology, {}, async (lab, A, B) => {
      for (let i = 0; i < 10; i++) {
        const r = await attempt(lab, A, B, { timeout: 10000 })
        t.true(r.ok, `attempt ${i + 1}: ${r.code}`)
        t.is(r.path, path, `attempt ${i + 1}: the forward proxy's path`)
        t.is(r.rpPath, path, `attempt ${i + 1}: the reverse proxy's path`)
      }
    })
  })
}

labTest('lossy: 16 MiB each way through a punched tunnel with 5% loss, sha256 equal', async (t) => {
  await withLab('lossy', {}, async (lab, A, B) => {
    const pair = await startPair(lab, A, B, { server: 'echo', opts: { connConnectTime: 15000 } })
    const { open } = await openBoth(A, B, pair, 15000)
    t.true(open.ok, open.message)
    t.is(open.path, 'punched')
    const r = await A.request({ cmd: 'transfer', host: pair.pubB.host, port: pair.pubB.port, bytes: 16 * 1024 * 1024 }, 120000)
    t.true(r.ok, r.message)
    t.is(r.bytes, 16 * 1024 * 1024)
    t.is(r.received, r.sent, 'the bytes that came back are the bytes that were sent')
    const drops = await lab.lossDrops()
    t.true(drops > 100, `the public segment really dropped packets (${drops})`)
    t.log(`${drops} UDP packets dropped on the public segment (a GSO batch of datagrams counts once)`)
  })
})

for (const topology of ['symmetric', 'udp-blocked']) {
  labTest(`${topology}: openConnection rejects with ErrorConnectionStartTimeout in time, CONNECT gets 504, both keep serving`, async (t) => {
    await withLab(topology, {}, async (lab, A, B) => {
      const pair = await startPair(lab, A, B, { opts: { connConnectTime: 2000 } })
      const t0 = Date.now()
      const { open, punch } = await openBoth(A, B, pair, 2000)
      const took = Date.now() - t0
      t.false(open.ok)
      t.is(open.code, 'ErrorConnectionStartTimeout')
      t.false(punch.ok)
      t.is(punch.code, 'ErrorConnectionStartTimeout')
      t.true(took < 2000 + 3000, `both gave up about when their 2 s budget ran out (took ${took} ms)`)
      const c = await A.request({ cmd: 'connectStatus', host: pair.pubB.host, port: pair.pubB.port, nodeId: pair.nodeIdB }, 10000)
      t.is(c.status, 504)
      // Both proxies still serve: another CONNECT is answered, and the reverse proxy answers too.
      const again = await A.request({ cmd: 'connectStatus', host: pair.pubB.host, port: pair.pubB.port, nodeId: pair.nodeIdB }, 10000)
      t.is(again.status, 504)
      const info = await B.request({ cmd: 'info', host: pair.pubA.host, port: pair.pubA.port })
      t.true(info.ok)
      t.is(info.count, 0)
      const stops = await Promise.all([A.request({ cmd: 'stop' }), B.request({ cmd: 'stop' })])
      t.true(stops.every((s) => s.ok), 'both stop cleanly')
    })
  })
}

/**
 * Opens a tunnel through two port-restricted NATs whose UDP mappings expire after 5 s, makes a
 * call, leaves the tunnel idle for 20 s, and calls again over the same gRPC connection (the
 * same tunnel). Returns what the second call and B's NAT saw.
 */
async function idleTunnel(t, opts) {
  return withLab('restricted', { udpTimeout: 5 }, async (lab, A, B) => {
    const pair = await startPair(lab, A, B, { opts: { connConnectTime: 10000, connKeepAliveTimeoutTime: 60000, ...opts } })
    const { open } = await openBoth(A, B, pair, 10000)
    t.true(open.ok, open.message)
    const target = { host: pair.pubB.host, port: pair.pubB.port, keep: true }
    const first = await A.request({ cmd: 'call', ...target })
    t.true(first.ok, first.message)
    const before = await lab.conntrack('B')
    t.true(before.includes(`sport=${pair.pubA.port}`), `B's NAT tracks the flow before the idle period:\n${before}`)
    await sleep(20000) // the subject of the test: 20 s of idleness, four NAT timeouts
    const after = await lab.conntrack('B')
    const second = await A.request({ cmd: 'call', ...target, deadlineMs: 4000 }, 20000)
    return { second, mappingKept: after.includes(`sport=${pair.pubA.port}`), after }
  })
}

labTest('keepalive: with 5 s NAT timeouts, a tunnel idle for 20 s still carries a call', async (t) => {
  const r = await idleTunnel(t, {})
  t.true(r.mappingKept, `keepalives kept B's NAT mapping:\n${r.after}`)
  t.true(r.second.ok, r.second.message)
  t.is(r.second.text, 'hello')
})

labTest('keepalive disabled (test-only option): the same idle tunnel loses its NAT mapping and the call fails', async (t) => {
  const r = await idleTunnel(t, { _disableKeepAlive: true })
  t.false(r.mappingKept, `B's NAT forgot the mapping:\n${r.after}`)
  t.false(r.second.ok, 'the call cannot cross the expired mapping')
})

labTest('a lab is removed after use, also when the test body throws', async (t) => {
  let names = []
  await t.throwsAsync(
    withLab('double-nat', {}, async (lab) => {
      names = [...lab.namespaces]
      t.true(names.length >= 6)
      for (const ns of names) t.true(namespacesNow().includes(ns))
      throw new Error('test body failed')
    }),
    { message: 'test body failed' },
  )
  const now = namespacesNow()
  for (const ns of names) t.false(now.includes(ns), `${ns} is gone`)
})

if (!unsupported) {
  test.after.always('no namespace of this run is left behind', (t) => {
    t.deepEqual(leftovers(`kn${process.pid % 100000}x`), [])
  })
}

test('the lab builds nothing in the root namespace', (t) => {
  // Every ip/nft command of the lab names a namespace (ip -n NS, ip netns exec NS) or creates
  // one: read the builder's source to keep it so.
  const src = require('node:fs').readFileSync(require.resolve('../natlab/lab.js'), 'utf8')
  const calls = [...src.matchAll(/sh\(\[IP, '([^']+)'/g)].map((m) => m[1])
  t.true(calls.length > 5)
  for (const c of calls) t.true(c === '-n' || c === 'netns', `ip ${c} … runs inside a namespace`)
  t.is(typeof Lab.create, 'function')
})

// ---- with a relay ---------------------------------------------------------------------------

for (const [topology, transport] of [['udp-blocked', 'websocket']]) {
  labTest(`${topology} with a relay: a gRPC call crosses end to end 10 times out of 10, path 'relayed' (${transport})`, async (t) => {
    await withLab(topology, { relay: true }, async (lab, A, B) => {
      const relay = await lab.startRelay()
      for (let i = 0; i < 10; i++) {
        // The last attempt also waits out the rendezvous: the path must stay relayed.
        const r = await relayedAttempt(lab, A, B, relay, { timeout: 10000, waitMs: i === 9 ? 7000 : 0 })
        t.true(r.ok, `attempt ${i + 1}: ${r.code}`)
        t.is(r.path, 'relayed', `attempt ${i + 1}`)
        t.is(r.transport, transport, `attempt ${i + 1}: the forward proxy's relay transport`)
        if (i === 9) t.is(r.upgradedTo, 'relayed', 'no punched path through this NAT')
      }
    })
  })
}

// B's firewall lets it reach the relay over TCP only at first: its link comes up on WebSocket,
// where the relay observes B's TCP mapping, so no rendezvous can punch between two
// port-restricted NATs. Once UDP passes, the link moves to QUIC by itself (no 'down' between),
// asks for a fresh rendezvous, and the connection opened meanwhile ends punched.
labTest("restricted with a relay, B's UDP to the relay blocked at start: the link moves from WebSocket to QUIC once UDP passes, and the relayed connection then punches", async (t) => {
  await withLab('restricted', { relay: true }, async (lab, A, B) => {
    const relay = await lab.startRelay()
    await lab.blockRelayUdp('B')
    const pair = await startRelayedPair(lab, A, B, relay, { server: 'echo', opts: { connConnectTime: 10000 } })
    t.is(pair.rpTransport, 'websocket', 'B registered over WebSocket')
    const { host, port } = pair.pubB
    const open = await A.request({ cmd: 'open', nodeId: pair.nodeIdB, host, port, timeout: 10000, relay: pair.relay }, 20000)
    t.true(open.ok, open.message)
    t.is(open.path, 'relayed')
    const before = await A.request({ cmd: 'transfer', host, port, bytes: 1 << 20 }, 60000)
    t.true(before.ok && before.received === before.sent, JSON.stringify(before))

    await lab.blockRelayUdp('B', false)
    const moved = await B.request({ cmd: 'waitEvent', kind: 'relay', proxy: 'rp', state: 'up', transport: 'quic', timeout: 70000 }, 75000)
    t.true(moved.found, `B's link moved to QUIC: ${JSON.stringify(moved.last)}`)
    const downs = await B.request({ cmd: 'events', kind: 'relay', proxy: 'rp', state: 'down' })
    t.deepEqual(downs.events, [], 'no down between WebSocket and QUIC')
    const up = await A.request({ cmd: 'waitCurrentPath', host, port, path: 'punched', timeout: 15000 }, 20000)
    t.true(up.reached, `the connection punched after the move (path ${up.path})`)
    const after = await A.request({ cmd: 'transfer', host, port, bytes: 1 << 20 }, 60000)
    t.true(after.ok && after.received === after.sent, JSON.stringify(after))
    t.is(after.pathAtEnd, 'punched')
    t.log(`B's link on QUIC ${(moved.at - before.closedAt).toFixed(0)} ms after UDP was let through; punched ${up.already ? 'before' : 'after'} the wait began`)
  })
})

// Symmetric: A's NAT picks a new random port per destination, B's filters per address and port:
// plain punching cannot work, the birthday punch (256 mappings at A, 2048 probes from B) can.
// Its upgrade comes later (2 s of plain punching first): a longer transfer spans it.
for (const [topology, mib, paceMs] of [['cone', 64, 4000], ['restricted', 64, 4000], ['symmetric', 32, 10000]]) {
  labTest(`${topology} with a relay: starts relayed, ends punched; ${mib} MiB started while relayed arrive intact`, async (t) => {
    await withLab(topology, { relay: true }, async (lab, A, B) => {
      const relay = await lab.startRelay()
      const pair = await startRelayedPair(lab, A, B, relay, { server: 'echo', upgradeDelay: 300, opts: { connConnectTime: 10000 } })
      const { host, port } = pair.pubB
      const open = await A.request({ cmd: 'open', nodeId: pair.nodeIdB, host, port, timeout: 10000, relay: pair.relay }, 20000)
      t.true(open.ok, open.message)
      t.is(open.path, 'relayed')
      // Paced: the upgrade (about 0.4 s in, 2.5 s for the birthday punch) lands mid-transfer.
      const transfer = A.request({ cmd: 'transfer', host, port, bytes: mib * 1024 * 1024, paceMs }, 240000)
      const up = await A.request({ cmd: 'waitPath', host, port, path: 'punched', timeout: 15000 }, 20000)
      t.is(up.path, 'punched')
      const r = await transfer
      t.true(r.ok, r.message)
      t.is(r.pathAtStart, 'relayed', 'the transfer started on the relay')
      t.is(r.pathAtEnd, 'punched', 'and ended on the punched path')
      t.is(r.bytes, mib * 1024 * 1024)
      t.is(r.received, r.sent, 'not a byte lost or duplicated across the move')
      t.log(`upgraded ${up.upgradeMs.toFixed(0)} ms after openConnection`)
    })
  })
}

// ---- the `keynet` command in the lab --------------------------------------------------------

// "Any language" through a symmetric NAT: a Python grpcio server behind `keynet reverse` in B's
// LAN, a Python grpcio client in A's LAN through `keynet forward`, `keynet relay` on the public
// segment; nothing of Node in the path. The call starts on the relay and the path moves to the
// birthday-punched one, as the JS proxies' does (the CLI is the same core).
labTest("symmetric with a relay, every proxy a `keynet` process: Python grpcio calls by node id cross, the path ends 'punched'", async (t) => {
  const os = require('node:os')
  const path = require('node:path')
  const fs = require('node:fs')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keynet-natcli-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const fixtures = path.join(__dirname, 'fixtures')
  await withLab('symmetric', { relay: true }, async (lab) => {
    const py = { PYTHONDONTWRITEBYTECODE: '1' }
    const relay = await lab.spawnIn('relay', KEYNET_BIN, ['relay', '--listen', `${RELAY_IP}:7000`], { ready: /^relay listening on (\S+) tcp \S+ node id (\S+)$/ })
    const relayArg = `${relay.match[1]}@${relay.match[2]}`
    const server = await lab.spawnIn('B', 'python3', [path.join(fixtures, 'server.py')], { ready: /^listening (\d+)$/, env: py })
    const [rSock, fSock] = [path.join(dir, 'r.sock'), path.join(dir, 'f.sock')]
    const reverse = await lab.spawnIn('B', KEYNET_BIN, ['reverse', '--server', `127.0.0.1:${server.match[1]}`, '--listen', `${lab.hosts.B.ip}:0`, '--relay', relayArg, '--control', rSock], {
      ready: /^reverse proxy node id (\S+) udp/,
    })
    const nodeId = reverse.match[1]
    const forward = await lab.spawnIn('A', KEYNET_BIN, ['forward', '--listen', '127.0.0.1:0', '--egress', `${lab.hosts.A.ip}:0`, '--relay', relayArg, '--control', fSock], {
      ready: /^forward proxy http (\S+) udp/,
      env: { KEYNET_TOKEN: 'lab-token' },
    })
    const env = { ...process.env, ...py, grpc_proxy: `http://lab-token@${forward.match[1]}`, GRPC_DNS_RESOLVER: 'native' }
    const call = async () => {
      const { stdout } = await run(IP, ['netns', 'exec', lab.hosts.A.ns, 'python3', path.join(fixtures, 'client.py'), `${nodeId}.keynet:443`, 'unary'], { env, timeout: 30000 })
      return JSON.parse(stdout.trim().split('\n').pop()).result
    }
    const expected = { text: 'python server: hello from python', count: -7 }
    t.deepEqual(await call(), expected, 'the first call crosses')
    const status = async (sock) => {
      const { stdout } = await run(KEYNET_BIN, ['status', '--control', sock, '--json'], { timeout: 10000 })
      return JSON.parse(stdout)
    }
    // No event reaches the test from another process: `keynet status` is asked until the path moves.
    const deadline = Date.now() + 20000
    let paths
    for (;;) {
      const [f, r] = await Promise.all([status(fSock), status(rSock)])
      paths = [f.connections.map((c) => c.path), r.connections.map((c) => c.path)]
      if (paths.every((p) => p.length === 1 && p[0] === 'punched')) break
      if (Date.now() > deadline) break
      await sleep(200)
    }
    t.deepEqual(paths, [['punched'], ['punched']], "both `keynet status` report the one connection on the punched path")
    t.deepEqual(await call(), expected, 'a call after the move crosses the punched path')
    const f = await status(fSock)
    t.is(f.stats.tunnels_total, 2, 'both calls were tunnels of the same connection')
    t.is(f.connections[0].node_id, nodeId)
  })
})
