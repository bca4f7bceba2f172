'use strict'
// The TypeScript declarations (index.d.ts): types/usage.ts and types/esm.mts, which use every
// export, overload, option and event, type-check under strict; types/bad.ts, which misuses the
// API, fails with exactly the errors it marks (so the check can fail at all).

const test = require('ava')
const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')

const repo = path.join(__dirname, '..')
const dir = path.join(__dirname, 'types')
const tsc = path.join(repo, 'node_modules', 'typescript', 'bin', 'tsc')
const haveTsc = fs.existsSync(tsc)
const maybe = haveTsc ? test : test.skip
if (!haveTsc) console.log(`types.test.js: skipped, ${tsc} is missing (typescript is a devDependency: npm install)`)

function runTsc(project) {
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(dir, project), '--pretty', 'false'], {
    cwd: repo,
    encoding: 'utf8',
    timeout: 120000,
  })
  return { status: r.status, output: `${r.stdout}${r.stderr}${r.error ? r.error.message : ''}` }
}

maybe('usage.ts and esm.mts, using the whole public API, type-check against index.d.ts', (t) => {
  const r = runTsc('tsconfig.json')
  t.is(r.status, 0, r.output)
  t.is(r.output.trim(), '')
})

maybe('bad.ts fails with exactly the errors it marks', (t) => {
  const source = fs.readFileSync(path.join(dir, 'bad.ts'), 'utf8').split('\n')
  const expected = []
  source.forEach((text, i) => {
    const m = /\/\/ error (TS\d+)/.exec(text)
    if (m) expected.push(`${i + 1} ${m[1]}`)
  })
  t.true(expected.length >= 3, 'bad.ts marks its errors')

  const r = runTsc('tsconfig.bad.json')
  t.not(r.status, 0, `tsc accepted bad.ts:\n${r.output}`)
  // Top-level diagnostics only (overload details are indented continuation lines).
  const actual = [...r.output.matchAll(/^(?:.*[\\/])?bad\.ts\((\d+),\d+\): error (TS\d+)/gm)].map((m) => `${m[1]} ${m[2]}`)
  const other = r.output.split('\n').filter((l) => /error TS\d+/.test(l) && !/bad\.ts\(\d+,\d+\)/.test(l))
  t.deepEqual(other, [], `errors outside bad.ts:\n${r.output}`)
  t.deepEqual(actual, expected, r.output)
})
