'use strict'
// `npm run natmatrix`: every lab topology end to end, 10 fresh attempts each, as a table.
// Exits non-zero if a topology that must work did not work every time.

const { Lab, TOPOLOGIES, labSupport } = require('./lab.js')
const { attempt, relayedAttempt } = require('./attempt.js')

/** With a relay: where each topology must end (symmetric NAT and blocked UDP stay relayed). */
const RELAYED = {
  direct: 'direct',
  cone: 'punched',
  restricted: 'punched',
  symmetric: 'relayed',
  'udp-blocked': 'relayed',
}

const ATTEMPTS = Number(process.env.NATMATRIX_ATTEMPTS || 10)

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
  const only = process.argv.slice(2)
  const names = Object.keys(TOPOLOGIES).filter((t) => !only.length || only.includes(t))
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
  const relayNames = Object.keys(RELAYED).filter((t) => !only.length || only.includes(t))
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

  const cols = ['topology', 'result', 'path', 'ttfr', 'rate', 'expected']
  const head = { topology: 'topology', result: 'result', path: 'path', ttfr: 'first reply (median)', rate: 'success', expected: 'expectation' }
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[head, ...rows].map((r) => String(r[c]).length))]))
  const line = (r) => cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')
  console.log(line(head))
  console.log(cols.map((c) => '-'.repeat(width[c])).join('-|-'))
  for (const r of rows) console.log(line(r))
  if (relayRows.length) {
    const rc = ['topology', 'result', 'path', 'transport', 'ttfr', 'upgrade', 'rate', 'expected']
    const rh = { topology: 'with a relay', result: 'result', path: 'path (open->after)', transport: "A's relay transport", ttfr: 'first reply (median)', upgrade: 'upgrade (median, from open)', rate: 'success', expected: 'expectation' }
    const rw = Object.fromEntries(rc.map((c) => [c, Math.max(...[rh, ...relayRows].map((r) => String(r[c]).length))]))
    const rl = (r) => rc.map((c) => String(r[c]).padEnd(rw[c])).join(' | ')
    console.log('')
    console.log(rl(rh))
    console.log(rc.map((c) => '-'.repeat(rw[c])).join('-|-'))
    for (const r of relayRows) console.log(rl(r))
  }
  process.exit(failed ? 1 : 0)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
