'use strict'
// Connections that survive path changes, proven in the NAT lab (natlab/): a blackholed punched
// path falls back to the relay and comes back, a path without a relay closes in time, NAT
// rebinding and a move to another uplink leave open tunnels going, a flapping path loses nothing.
// The scenarios live in natlab/pathchange.js (matrix.js runs them 10 times each). Needs root;
// elsewhere these tests are skipped with the reason. The lab's own tools (blackhole, rebind,
// uplinks, rate limit) are checked first with plain UDP, without keynet.

const test = require('ava')
const { withLab, labSupport, leftovers } = require('../natlab/lab.js')
const pc = require('../natlab/pathchange.js')

const unsupported = labSupport()
const labTest = unsupported ? test.skip : test.serial
if (unsupported) console.log(`pathchange.test.js skipped: ${unsupported}`)

/** Logs the run and asserts every check of a scenario result. */
function verify(t, r) {
  t.log(pc.summary(r))
  if (r.events?.length) t.log(`events: ${r.events.map((e) => `${e.side} ${e.kind} +${e.ms}ms ${e.path ?? e.state ?? ''}${e.reason ? ` (${e.reason})` : ''}`).join(', ')}`)
  for (const c of r.checks) {
    if (c.pass) t.pass()
    else t.fail(`${c.name}: ${c.detail}`)
  }
  t.true(r.ok, r.problem ?? '')
}

// ---- the lab's tools, with plain UDP (no keynet) ------------------------------------------------

/** Opens a plain UDP socket on each of `agents` (port `base + i`). */
async function udpOn(agents, base) {
  for (const [i, a] of agents.entries()) {
    const r = await a.request({ cmd: 'udpOpen', port: base + i })
    if (!r.ok) throw new Error(`udpOpen on ${a.side}: ${r.message}`)
  }
}

/** Sends `text` from `from` to host:port; resolves where `to` saw it come from (or found: false). */
async function udpTrip(from, to, host, port, text, timeout = 1500) {
  const s = await from.request({ cmd: 'udpSend', host, port, text })
  if (!s.ok) throw new Error(`udpSend: ${s.message}`)
  return to.request({ cmd: 'udpWait', text, timeout }, timeout + 5000)
}

labTest('lab: blackhole drops UDP between the public IPs of A and B both ways, the relay host stays reachable; idempotent', async (t) => {
  await withLab('cone', { relay: true }, async (lab, A, B) => {
    const R = lab.agent('relay')
    await udpOn([A, B, R], 45000)
    const [a, b, r] = [lab.publicAddr('A', 45000), lab.publicAddr('B', 45001), { host: lab.hosts.relay.ip, port: 45002 }]
    await udpTrip(B, A, a.host, a.port, 'open B cone', 200) // B's cone learns its port
    t.like(await udpTrip(A, B, b.host, b.port, 'a1'), { found: true, host: a.host, port: a.port }, 'A reaches B before')
    await lab.blackhole(true)
    await lab.blackhole(true) // idempotent: still one table
    t.like(await udpTrip(A, B, b.host, b.port, 'a2'), { found: false }, 'A -> B dropped')
    t.like(await udpTrip(B, A, a.host, a.port, 'b2'), { found: false }, 'B -> A dropped')
    t.like(await udpTrip(A, R, r.host, r.port, 'a-relay'), { found: true, host: a.host }, 'A reaches the relay host')
    t.like(await udpTrip(B, R, r.host, r.port, 'b-relay'), { found: true, host: b.host }, 'B reaches the relay host')
    t.like(await udpTrip(R, A, a.host, a.port, 'relay-a'), { found: true }, 'the relay host reaches A')
    t.like(await udpTrip(R, B, b.host, b.port, 'relay-b'), { found: true }, 'the relay host reaches B')
    const drops = await lab.blackholeDrops()
    t.true(drops >= 2, `${drops} datagrams dropped`)
    await lab.blackhole(false)
    await lab.blackhole(false)
    t.like(await udpTrip(A, B, b.host, b.port, 'a3'), { found: true }, 'A reaches B after')
    t.is(await lab.blackholeDrops(), 0, 'the table is gone')
    await R.close()
  })
})

labTest('lab: limitRate puts a tbf qdisc on the host egress and removes it', async (t) => {
  await withLab('restricted', {}, async (lab) => {
    await lab.addUplink('A')
    await lab.limitRate('A', '24mbit')
    const q = await lab.qdiscs('A')
    t.regex(q, /qdisc tbf \S+ dev eth0 root .*rate 24Mbit/)
    t.regex(q, /qdisc tbf \S+ dev eth1 root .*rate 24Mbit/)
    await lab.limitRate('A', null)
    t.notRegex(await lab.qdiscs('A'), /tbf/)
  })
})

for (const topology of ['restricted', 'cone']) {
  labTest(`lab: rebind gives A a new public port (${topology}); the old mapping is gone`, async (t) => {
    await withLab(topology, { relay: true }, async (lab, A, B) => {
      const R = lab.agent('relay')
      await udpOn([A, B, R], 45000)
      const r = { host: lab.hosts.relay.ip, port: 45002 }
      const before = await udpTrip(A, R, r.host, r.port, 'before')
      t.like(before, { found: true, host: '203.0.113.1', port: 45000 }, 'the NAT keeps the port at first')
      const one = await lab.rebind('A')
      const after = await udpTrip(A, R, r.host, r.port, 'after')
      t.true(after.found)
      t.is(after.host, '203.0.113.1')
      t.true(after.port >= 20000 && after.port <= 29999, `new port ${after.port} in ${one.range}`)
      t.like(await udpTrip(R, A, '203.0.113.1', 45000, 'to-old'), { found: false }, 'the old public port leads nowhere')
      t.like(await udpTrip(R, A, '203.0.113.1', after.port, 'to-new'), { found: true }, 'replies to the new port arrive')
      await lab.rebind('A')
      const again = await udpTrip(A, R, r.host, r.port, 'again')
      t.true(again.port >= 30000 && again.port <= 39999, `a second rebind changes the port again (${again.port})`)
      if (topology === 'cone') {
        // B's NAT is still a full cone: A's new address reaches B once B sent from its port.
        await udpTrip(B, A, '203.0.113.1', 45000, 'open B cone', 200)
        t.like(await udpTrip(A, B, '203.0.113.2', 45001, 'a-new'), { found: true, host: '203.0.113.1', port: again.port })
      }
      await lab.restoreNat('A')
      t.like(await udpTrip(A, R, r.host, r.port, 'restored'), { found: true, host: '203.0.113.1', port: 45000 }, 'restoreNat: the port is kept again')
      await R.close()
    })
  })
}

labTest('lab: switchUplink moves A behind a second NAT with another public address, and back', async (t) => {
  await withLab('restricted', { relay: true }, async (lab, A, B) => {
    const R = lab.agent('relay')
    await udpOn([A, R], 45000)
    const r = { host: lab.hosts.relay.ip, port: 45001 }
    await lab.addUplink('A')
    await lab.addUplink('A') // idempotent
    t.like(await udpTrip(A, R, r.host, r.port, 'one'), { found: true, host: '203.0.113.1', port: 45000 })
    const to = await lab.switchUplink('A')
    t.is(to.publicIp, '203.0.113.3')
    t.is(lab.publicAddr('A', 1).host, '203.0.113.3')
    t.like(await udpTrip(A, R, r.host, r.port, 'two'), { found: true, host: '203.0.113.3', port: 45000 }, 'the same socket now leaves through the second NAT')
    t.like(await udpTrip(R, A, '203.0.113.3', 45000, 'back-two'), { found: true }, 'replies come back through it')
    await lab.switchUplink('A')
    t.like(await udpTrip(A, R, r.host, r.port, 'three'), { found: true, host: '203.0.113.1' }, 'switched back')
    await R.close()
  })
})

// ---- the scenarios ------------------------------------------------------------------------------

// What each scenario of natlab/pathchange.js (also the rows of `npm run natmatrix -- paths`)
// asserts, as the test's title; every scenario has one.
const TITLES = {
  'blackhole-relay': 'blackhole with a relay: punched -> relayed within 10 s, back to punched within 30 s of the end, 32 MiB intact, stop() within 5 s',
  blackhole: "blackhole without a relay: the tunnel socket closes and 'close' says keepaliveTimeout within keepalive timeout + 2 s, stop() within 5 s",
  'rebinding-relay': 'rebinding with a relay (restricted NATs): a chat stream goes on, a new call works within 10 s, 16 MiB intact',
  rebinding: 'rebinding without a relay (cone NATs): a chat stream goes on, a new call works within 10 s, 16 MiB intact',
  'network-switch': "network switch (second uplink, networkChanged()): a 'path' event within 5 s, a chat stream goes on, 16 MiB intact",
  'network-switch-auto': "network switch noticed by itself (Linux netlink, no networkChanged() call): the relay link registers again, a 'path' event within 5 s, the chat stream goes on",
  'network-switch-bound': "network switch with the socket bound to the address that goes away: networkChanged() moves it to the new uplink's address, a 'path' event within 5 s, the chat stream goes on",
  flapping: 'flapping with a relay: blackhole on/off every 3 s for 30 s during 40 MiB, nothing lost, ends punched',
  forged: 'forged datagrams from the punched address (QUIC look-alikes, punches, acks) do not keep a blackholed path alive',
}

for (const sc of pc.SCENARIOS) {
  if (!TITLES[sc.key]) throw new Error(`scenario ${sc.key} has no test title`)
  labTest(TITLES[sc.key], async (t) => {
    t.timeout(240000)
    const r = await withLab(sc.topology, { relay: sc.relay }, async (lab, A, B) => sc.run(lab, A, B, sc.relay ? await lab.startRelay() : null))
    verify(t, r)
  })
}

if (!unsupported) {
  test.after.always('no namespace of this run is left behind', (t) => {
    t.deepEqual(leftovers(`kn${process.pid % 100000}x`), [])
  })
}
