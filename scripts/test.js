'use strict'
// `npm test`: the Rust tests of every workspace crate but the binding (napi crates do not link
// under `cargo test`), then the native build, then the ava suite. Stops at the first failure.
const { spawnSync } = require('node:child_process')
const path = require('node:path')

const root = path.join(__dirname, '..')
const env = { CARGO_BUILD_JOBS: '2', ...process.env }

function run(title, cmd, args) {
  console.log(`\n=== ${title}: ${cmd} ${args.join(' ')}`)
  const t0 = Date.now()
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env })
  const took = `${((Date.now() - t0) / 1000).toFixed(0)} s`
  if (r.status !== 0) {
    console.error(`\n=== ${title} failed (exit ${r.status ?? r.signal}) after ${took}`)
    process.exit(r.status || 1)
  }
  console.log(`=== ${title}: done in ${took}`)
}

run('rust tests', 'cargo', ['test', '--workspace', '--exclude', 'keynet'])
run('relay build', 'cargo', ['build', '-p', 'keynet-relay'])
run('native build', 'node', ['scripts/ensure-built.js'])
run('ava', 'npx', ['ava', ...process.argv.slice(2)])
