'use strict'
// `npm run natmatrix`: every lab topology end to end, 10 fresh attempts each, as a table.
// Exits non-zero if a topology that must work did not work every time.

const { Lab, TOPOLOGIES, labSupport } = require('./lab.js')
const { attempt } = require('./attempt.js')

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
      expected: TOPOLOGIES[name].mustWork ? 'must work' : 'must fail (relay issue)',
    }
    if (TOPOLOGIES[name].mustWork && oks.length !== ATTEMPTS) failed = true
    if (!TOPOLOGIES[name].mustWork && oks.length) row.expected += ' (worked!)'
    rows.push(row)
    console.error(`natmatrix: ${name}: ${row.rate} ${row.result}`)
  }
  const cols = ['topology', 'result', 'path', 'ttfr', 'rate', 'expected']
  const head = { topology: 'topology', result: 'result', path: 'path', ttfr: 'first reply (median)', rate: 'success', expected: 'expectation' }
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[head, ...rows].map((r) => String(r[c]).length))]))
  const line = (r) => cols.map((c) => String(r[c]).padEnd(width[c])).join(' | ')
  console.log(line(head))
  console.log(cols.map((c) => '-'.repeat(width[c])).join('-|-'))
  for (const r of rows) console.log(line(r))
  process.exit(failed ? 1 : 0)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
