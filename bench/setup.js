'use strict'
// `npm run bench:setup`: installs the peers the bench compares keynet with, into bench/.peers
// (git-ignored), where bench/peers.js finds them:
// - dumbpipe (iroh's TCP tunnel over QUIC) from crates.io, built with this machine's cargo
//   (several minutes from scratch); DUMBPIPE_VERSION pins a version;
// - hyperdht (Holepunch's DHT and UDX streams, what hypertele and hyperswarm use) from npm into
//   bench/.peers/hyperdht; HYPERDHT_VERSION pins a version (default: the latest 6.x).
// `npm run bench:setup -- dumbpipe` (or `hyperdht`) installs one. Peers that are not installed
// are left out of the bench's table, never guessed.

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.join(__dirname, '.peers')
const PEERS = [
  {
    name: 'dumbpipe',
    install() {
      const v = process.env.DUMBPIPE_VERSION
      const spec = v ? `dumbpipe@${v}` : 'dumbpipe'
      return run(spec, 'cargo', ['install', '--locked', '--root', ROOT, spec])
    },
  },
  {
    name: 'hyperdht',
    install() {
      const dir = path.join(ROOT, 'hyperdht')
      fs.mkdirSync(dir, { recursive: true })
      fs.writeFileSync(path.join(dir, 'package.json'), '{ "private": true }\n')
      const spec = `hyperdht@${process.env.HYPERDHT_VERSION || '6'}`
      // npm.cmd needs a shell on Windows (Node refuses to spawn .cmd files without one).
      return run(spec, 'npm', ['install', '--prefix', dir, '--no-audit', '--no-fund', spec], process.platform === 'win32')
    },
  },
]

function run(spec, cmd, args, shell = false) {
  console.log(`installing ${spec} into ${ROOT} ...`)
  const r = spawnSync(cmd, args, { stdio: 'inherit', shell, env: { CARGO_BUILD_JOBS: '2', ...process.env } })
  if (r.status !== 0) {
    console.error(`bench:setup: installing ${spec} failed (exit ${r.status ?? r.signal})`)
    process.exit(1)
  }
}

const wanted = process.argv.slice(2)
for (const name of wanted) {
  if (!PEERS.some((p) => p.name === name)) {
    console.error(`bench:setup: unknown peer ${name} (known: ${PEERS.map((p) => p.name).join(', ')})`)
    process.exit(2)
  }
}
for (const p of PEERS) if (wanted.length === 0 || wanted.includes(p.name)) p.install()
console.log(`peers installed in ${ROOT}`)
