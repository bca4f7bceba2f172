'use strict'
// `npm run bench:setup`: installs the peers the bench compares keynet with, into bench/.peers
// (git-ignored), where bench/peers.js finds them. Today: dumbpipe (iroh's TCP tunnel over QUIC)
// from crates.io, built with this machine's cargo (several minutes from scratch). Peers that
// are not installed are left out of the bench's table, never guessed.

const { spawnSync } = require('node:child_process')
const path = require('node:path')

const ROOT = path.join(__dirname, '.peers')
const PEERS = [{ name: 'dumbpipe', crate: 'dumbpipe', version: process.env.DUMBPIPE_VERSION }]

for (const p of PEERS) {
  const spec = p.version ? `${p.crate}@${p.version}` : p.crate
  console.log(`installing ${spec} into ${ROOT} ...`)
  const r = spawnSync('cargo', ['install', '--locked', '--root', ROOT, spec], {
    stdio: 'inherit',
    env: { CARGO_BUILD_JOBS: '2', ...process.env },
  })
  if (r.status !== 0) {
    console.error(`bench:setup: installing ${spec} failed (exit ${r.status ?? r.signal})`)
    process.exit(1)
  }
}
console.log(`peers installed in ${ROOT}/bin`)
