'use strict'
// Builds the native addon for this machine (dev profile: our code unoptimised, dependencies
// optimised; see Cargo.toml). Cargo is incremental, so this is quick when nothing changed.
// Set KEYNET_SKIP_BUILD=1 to use whatever binary is present.
const { spawnSync } = require('node:child_process')
const path = require('node:path')

if (process.env.KEYNET_SKIP_BUILD === '1') process.exit(0)
const root = path.join(__dirname, '..')
const args = ['napi', 'build', '--platform', '--js', 'native.js', '--dts', 'native.d.ts']
if (process.env.KEYNET_RELEASE === '1') args.push('--release')
const r = spawnSync('npx', args, {
  cwd: root,
  stdio: 'inherit',
  env: { CARGO_BUILD_JOBS: '2', ...process.env },
})
if (r.status !== 0) {
  console.error('keynet: building the native addon failed (is a Rust toolchain installed? https://rustup.rs)')
  process.exit(r.status || 1)
}
