'use strict'
// `npm run natmatrix`: every lab topology end to end, 10 fresh attempts each, as a table; the
// same with a relay; then the path changes (natlab/pathchange.js: blackhole, rebinding, network
// switch, flapping), 10 runs each. Exits non-zero if a topology that must work did not work every
// time, or a path change scenario failed once or lost a byte.
//   node natlab/matrix.js [topology ...]        only these topologies (no path changes)
//   node natlab/matrix.js paths [scenario ...]  only the path changes (scenario keys: see
//                                                pathchange.js SCENARIOS, e.g. blackhole-relay)
//   node natlab/matrix.js bynodeid              only the "by node id" table: A's NAT x B's NAT,
//                                                B homed on a relay, A knowing only B's node id
// NATMATRIX_ATTEMPTS (10) sets the attempts per topology, NATMATRIX_PATH_RUNS (10) or
// --runs=N the runs per path change scenario.

const { Lab, TOPOLOGIES, labSupport } = require('./lab.js')
const { attempt, relayedAttempt, byNodeIdCell, failoverRun } = require('./attempt.js')
const { SCENARIOS, summary } = require('./pathchange.js')

/** With a relay: where each topology must end (blocked UDP stays relayed; symmetric against
 * port-restricted goes punched through the birthday punch). */
const RELAYED = {
  direct: 'direct',
  cone: 'punched',
  restricted: 'punched',
  symmetric: 'punched',
  'udp-blocked': 'relayed',
}

const ATTEMPTS = Number(process.env.NATMATRIX_ATTEMPTS || 10)
const runsArg = process.argv.find((a) => a.startsWith('--runs='))
const PATH_RUNS = Number(runsArg ? runsArg.slice('--runs='.length) : process.env.NATMATRIX_PATH_RUNS || 10)

function median(xs) {
  if (!xs.length) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor((s.length - 1) / 2)]
}

async function main() {
  const why = labSupport()
  if (why) {
    console.error(`natmatrix: ${why}`)
    process.exit(2)
  }
  const all = process.argv.slice(2).filter((a) => !a.startsWith('--'))
  const byId = all.includes('bynodeid') || !all.length
  if (all.length === 1 && byId) {
    const { failed } = await byNodeIdTable()
    process.exit(failed ? 1 : 0)
  }
  const words = all.filter((w) => w !== 'bynodeid')
  const paths = words.includes('paths')
  const only = words.filter((w) => w !== 'paths' && !SCENARIOS.some((s) => s.key === w))
  // `paths` alone: no topology table; topology names alone: no path changes; nothing: all.
  const names = paths && !only.length ? [] : Object.keys(TOPOLOGIES).filter((t) => !only.length || only.includes(t))
  const rows = []
  let failed = false
  for (const name of names) {
    const results = []
    let lab, A, B
    try {
      lab = await Lab.create(name)
      A = lab.agent('A')
      B = lab.agent('B')
      for (let i = 0; i < ATTEMPTS; i++) {
        const mustWork = TOPOLOGIES[name].mustWork
        results.push(await attempt(lab, A, B, { timeout: mustWork ? 10000 : 3000 }))
      }
    } catch (e) {
      results.push({ ok: false, code: `harness: ${e.message}`, path: '-' })
    } finally {
      await Promise.all([A?.close(), B?.close()])
      await lab?.destroy()
    }
    const oks = results.filter((r) => r.ok)
    const codes = [...new Set(results.filter((r) => !r.ok).map((r) => r.code))]
    const paths = [...new Set(oks.map((r) => r.path))]
    const row = {
      topology: name,
      result: codes.length ? (oks.length ? `ok+${codes.join(',')}` : codes.join(',')) : 'ok',
      path: paths.join(',') || '-',
      ttfr: oks.length ? `${median(oks.map((r) => r.ttfrMs)).toFixed(0)} ms` : '-',
      rate: `${oks.length}/${results.length}`,
      expected: TOPOLOGIES[name].mustWork ? 'must work' : 'must fail without a relay',
    }
    if (TOPOLOGIES[name].mustWork && oks.length !== ATTEMPTS) failed = true
    if (!TOPOLOGIES[name].mustWork && oks.length) row.expected += ' (worked!)'
    rows.push(row)
    console.error(`natmatrix: ${name}: ${row.rate} ${row.result}`)
  }
  // The same topologies with a relay on the public segment: every attempt opens through it.
  const relayRows = []
  const relayNames = paths && !only.length ? [] : Object.keys(RELAYED).filter((t) => !only.length || only.includes(t))
  for (const name of relayNames) {
    const results = []
    let lab, A, B
    try {
      lab = await Lab.create(name, { relay: true })
      const relay = await lab.startRelay()
      A = lab.agent('A')
      B = lab.agent('B')
      for (let i = 0; i < ATTEMPTS; i++) {
        // Wait for the upgrade where one is expected; elsewhere only the last attempt waits
        // out the rendezvous (to show the path stays relayed).
        const waitMs = RELAYED[name] !== 'relayed' || i === ATTEMPTS - 1 ? 7000 : 0
        results.push(await relayedAttempt(lab, A, B, relay, { timeout: 10000, waitMs, want: RELAYED[name] === 'relayed' ? 'punched' : RELAYED[name] }))
      }
    } catch (e) {
      results.push({ ok: false, code: `harness: ${e.message}`, path: '-' })
    } finally {
      await Promise.all([A?.close(), B?.close()])
      await lab?.destroy()
    }
    const want = RELAYED[name]
    const good = results.filter((r) => r.ok && r.path === 'relayed' && r.upgradedTo === want)
    const finals = [...new Set(results.filter((r) => r.ok).map((r) => `${r.path}->${r.upgradedTo ?? r.path}`))]
    const codes = [...new Set(results.filter((r) => !r.ok).map((r) => r.code))]
    const ups = results.filter((r) => r.upgradeMs != null).map((r) => r.upgradeMs)
    const transports = [...new Set(results.filter((r) => r.ok).map((r) => r.transport))]
    const row = {
      topology: `${name} + relay`,
      result: codes.length ? (good.length ? `ok+${codes.join(',')}` : codes.join(',')) : 'ok',
      path: finals.join(',') || '-',
      ttfr: results.some((r) => r.ok) ? `${median(results.filter((r) => r.ok).map((r) => r.ttfrMs)).toFixed(0)} ms` : '-',
      upgrade: ups.length ? `${median(ups).toFixed(0)} ms` : '-',
      transport: transports.join(',') || '-',
      rate: `${good.length}/${results.length}`,
      expected: `ends ${want}`,
    }
    if (good.length !== ATTEMPTS) failed = true
    relayRows.push(row)
    console.error(`natmatrix: ${name} + relay: ${row.rate} ${row.result} ${row.path}`)
  }

  // Path changes under running connections: each scenario PATH_RUNS times in one lab.
  const pathRows = []
  const keys = words.filter((w) => SCENARIOS.some((s) => s.key === w))
  const scenarios = paths || !words.length ? SCENARIOS.filter((s) => !keys.length || keys.includes(s.key)) : []
  for (const sc of scenarios) {
    const results = []
    let lab, A, B
    try {
      lab = await Lab.create(sc.topology, { relay: sc.relay })
      const relay = sc.relay ? await lab.startRelay() : null
      A = lab.agent('A')
      B = lab.agent('B')
      for (let i = 0; i < PATH_RUNS; i++) {
        const r = await sc.run(lab, A, B, relay)
        results.push(r)
        console.error(`natmatrix: ${sc.name} ${i + 1}/${PATH_RUNS}: ${summary(r)}${r.ok ? '' : `\n  ${r.problem}`}`)
        if (r.stuck) {
          // A stop() that never resolved: these agents are unusable, start fresh ones.
          await Promise.all([A.close(), B.close()])
          A = lab.agent('A')
          B = lab.agent('B')
        }
      }
    } catch (e) {
      results.push({ ok: false, problem: `harness: ${e.message}`, bytesLost: null, timeMs: null })
    } finally {
      await Promise.all([A?.close(), B?.close()])
      await lab?.destroy()
    }
    const oks = results.filter((r) => r.ok)
    const times = results.filter((r) => r.timeMs != null).map((r) => r.timeMs)
    const losses = results.filter((r) => r.bytesLost != null)
    const lost = losses.reduce((n, r) => n + r.bytesLost, 0)
    const label = results.find((r) => r.timeLabel)?.timeLabel ?? 'recovery'
    const problems = [...new Set(results.filter((r) => !r.ok).flatMap((r) => (r.checks?.length ? r.checks.filter((c) => !c.pass).map((c) => c.name) : [r.problem])))]
    const row = {
      scenario: `${sc.name} (${sc.topology})`,
      result: `${oks.length}/${PATH_RUNS} ok`,
      time: times.length ? `${label} ${median(times).toFixed(0)} ms` : '-',
      lost: losses.length ? `${lost}` : '-',
      problems: problems.join('; ') || '-',
    }
    if (oks.length !== PATH_RUNS || lost !== 0) failed = true
    pathRows.push(row)
    console.error(`natmatrix: ${sc.name}: ${row.result}, ${row.time}, bytes lost ${row.lost}`)
  }

  const cols = ['topology', 'result', 'path', 'ttfr', 'rate', 'expected']
  const head = { topology: 'topology', result: 'result', path: 'path', ttfr: 'first reply (median)', rate: 'success', expected: 'expectation' }
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[head, ...rows].map((r) => String(r[c]).length))]))
  const line = (r) => cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')
  if (rows.length) {
    console.log(line(head))
    console.log(cols.map((c) => '-'.repeat(width[c])).join('-|-'))
    for (const r of rows) console.log(line(r))
  }
  if (relayRows.length) {
    const rc = ['topology', 'result', 'path', 'transport', 'ttfr', 'upgrade', 'rate', 'expected']
    const rh = { topology: 'with a relay', result: 'result', path: 'path (open->after)', transport: "A's relay transport", ttfr: 'first reply (median)', upgrade: 'upgrade (median, from open)', rate: 'success', expected: 'expectation' }
    const rw = Object.fromEntries(rc.map((c) => [c, Math.max(...[rh, ...relayRows].map((r) => String(r[c]).length))]))
    const rl = (r) => rc.map((c) => String(r[c]).padEnd(rw[c])).join(' | ')
    if (rows.length) console.log('')
    console.log(rl(rh))
    console.log(rc.map((c) => '-'.repeat(rw[c])).join('-|-'))
    for (const r of relayRows) console.log(rl(r))
  }
  if (pathRows.length) {
    const pc = ['scenario', 'result', 'time', 'lost', 'problems']
    const ph = { scenario: 'path changes', result: 'result', time: 'recovery time (median; close: time to close)', lost: 'bytes lost (sum)', problems: 'failed checks' }
    const pw = Object.fromEntries(pc.map((c) => [c, Math.max(...[ph, ...pathRows].map((r) => String(r[c]).length))]))
    const pl = (r) => pc.map((c) => String(r[c]).padEnd(pw[c])).join(' | ')
    if (rows.length || relayRows.length) console.log('')
    console.log(pl(ph))
    console.log(pc.map((c) => '-'.repeat(pw[c])).join('-|-'))
    for (const r of pathRows) console.log(pl(r))
  }
  if (byId) {
    console.log('')
    if ((await byNodeIdTable()).failed) failed = true
  }
  process.exit(failed ? 1 : 0)
}

/** NAT kinds of the "by node id" table (B's rows, A's columns). */
const BY_ID_KINDS = ['none', 'cone', 'restricted', 'symmetric']

/**
 * The "by node id" table: for each B NAT x A NAT, ATTEMPTS fresh forward proxies on A that
 * know only B's node id reach B's gRPC server (B homed on the lab relay, announced on the lab's
 * DHT); result, opening and final path, first reply. Prints it; resolves { rows, failed }.
 */
async function byNodeIdTable() {
  const rows = []
  let failed = false
  // B's rows also include a B whose UDP is blocked (it reaches its relay over TLS/WebSocket and
  // its record reaches the DHT through the relay); A needs UDP for its own lookup.
  for (const kindB of [...BY_ID_KINDS, 'udp-blocked']) {
    for (const kindA of BY_ID_KINDS) {
      let res
      try {
        res = await byNodeIdCell(Lab, [kindA, kindB], { attempts: ATTEMPTS })
      } catch (e) {
        res = { rows: [{ ok: false, code: `harness: ${e.message}` }], expect: '?' }
      }
      const oks = res.rows.filter((r) => r.ok)
      const ended = (r) => (res.expect === 'relayed' ? r.finalPath === 'relayed' : r.finalPath !== 'relayed')
      const good = oks.filter(ended)
      const codes = [...new Set(res.rows.filter((r) => !r.ok).map((r) => r.code))]
      const row = {
        b: kindB,
        a: kindA,
        result: codes.length ? (oks.length ? `ok+${codes.join(',')}` : codes.join(',')) : 'ok',
        path: [...new Set(oks.map((r) => `${r.path}->${r.finalPath}`))].join(',') || '-',
        ttfr: oks.length ? `${median(oks.map((r) => r.ttfrMs)).toFixed(0)} ms` : '-',
        rate: `${good.length}/${ATTEMPTS}`,
        expected: res.expect === 'relayed' ? 'ends relayed' : 'ends direct/punched',
      }
      if (good.length !== ATTEMPTS) failed = true
      rows.push(row)
      console.error(`natmatrix: by node id, B ${kindB} x A ${kindA}: ${row.rate} ${row.result} ${row.path}`)
    }
  }
  const cols = ['b', 'a', 'result', 'path', 'ttfr', 'rate', 'expected']
  const head = { b: "B's NAT", a: "A's NAT", result: 'result', path: 'path (open->final)', ttfr: 'first reply (median)', rate: 'success', expected: 'expectation' }
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[head, ...rows].map((r) => String(r[c]).length))]))
  const line = (r) => cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')
  console.log('by node id (A: discovery only; B: homed on the relay)')
  console.log(line(head))
  console.log(cols.map((c) => '-'.repeat(width[c])).join('-|-'))
  for (const r of rows) console.log(line(r))
  if (!(await failoverTable())) failed = true
  return { rows, failed }
}

/** Home relay failover, FAILOVER_RUNS (3) times: prints the times; resolves whether all passed. */
async function failoverTable() {
  const runs = Number(process.env.FAILOVER_RUNS || 3)
  const rows = []
  for (let i = 0; i < runs; i++) {
    let r
    try {
      r = await failoverRun(Lab)
    } catch (e) {
      r = { ok: false, error: e.message }
    }
    const ms = (v) => (v == null ? '-' : `${v} ms`)
    rows.push({ run: String(i + 1), noticed: ms(r.noticedMs), announced: ms(r.announcedMs), reached: ms(r.reachedMs), result: r.ok && r.rehomed ? 'ok' : `failed ${r.error ?? JSON.stringify(r.call)}` })
    console.error(`natmatrix: failover run ${i + 1}: ${JSON.stringify(rows[i])}`)
  }
  const cols = ['run', 'noticed', 'announced', 'reached', 'result']
  const head = { run: 'failover', noticed: 'B noticed', announced: 'lookup names the new home', reached: 'a caller got through', result: 'result' }
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[head, ...rows].map((r) => String(r[c]).length))]))
  const line = (r) => cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')
  console.log('')
  console.log('home relay failover (times from the kill of B\'s home relay)')
  console.log(line(head))
  console.log(cols.map((c) => '-'.repeat(width[c])).join('-|-'))
  for (const r of rows) console.log(line(r))
  return rows.every((r) => r.result === 'ok')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
