'use strict'
// `npm run test:cross [-- --targets T1,T2]`: packs the main package and each built target's
// platform package (dist/TARGET/ from `npm run cross`), installs them into a fresh app, and runs
// cross/smoke.js there with the target's own Node (from the npm registry, or PyPI for musl), so
// keynet loads as a user's app loads it: linux arm64 under qemu-aarch64, Windows x64 under wine,
// linux musl x64 with musl's loader, arm64 musl with it under qemu. Also runs the installed
// `keynet-relay --help`, and `keynet status` against a running `keynet reverse` (two of the
// target's processes at once, over the control socket, or the control pipe on Windows). Prints
// pass/fail per test per target with times; exits 1 on any failure (a target that was not built,
// or has no emulator here, is reported and fails only if named).

const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { ROOT, DIST, SCRATCH, TARGETS } = require('./targets')
const { sh, aptInstall, foreignNode, muslLoader, muslNode } = require('./tools')

const SMOKE = path.join(__dirname, 'smoke.js')

/** A wine prefix that reports Windows 10 (Node refuses older) with the DLL wine 8 lacks. */
function winePrefix() {
  const prefix = path.join(SCRATCH, 'wineprefix')
  const env = { WINEPREFIX: prefix, WINEDEBUG: '-all', WINEDLLOVERRIDES: 'mscoree,mshtml=' }
  const marker = path.join(prefix, '.keynet-ready')
  if (fs.existsSync(marker)) return env
  if (sh('wineboot', ['-i'], { env, capture: true }).code !== 0) throw new Error('wineboot failed')
  sh('wine', ['winecfg', '-v', 'win10'], { env, capture: true })
  // Rust's standard library imports ProcessPrng from bcryptprimitives.dll, which wine 8 lacks.
  const dll = path.join(prefix, 'drive_c', 'windows', 'system32', 'bcryptprimitives.dll')
  if (!fs.existsSync(dll)) {
    const cc = sh('x86_64-w64-mingw32-gcc', ['-shared', '-O2', '-o', dll, path.join(__dirname, 'wine-bcryptprimitives.c'), '-ladvapi32'], { capture: true })
    if (cc.code !== 0) throw new Error(`the bcryptprimitives stand-in: ${cc.stderr}`)
  }
  fs.writeFileSync(marker, '')
  return env
}

/** How to run a program of `target` here: { prefix: [cmd, ...args], env, toFile }. */
function runner(target, spec) {
  if (spec.apt && !aptInstall(spec.apt)) throw new Error(`needs ${spec.apt.join(' ')}`)
  if (spec.run === 'qemu') {
    return { prefix: ['qemu-aarch64', '-L', '/usr/aarch64-linux-gnu'], env: {}, toFile: false }
  }
  if (spec.run === 'wine') {
    // Under wine a pipe as stdout gives EBADF: output goes to a file.
    return { prefix: ['wine'], env: winePrefix(), toFile: true }
  }
  if (spec.run === 'musl') {
    // musl's libc.so run as a program is its dynamic loader: no musl needed in /lib. The
    // keynet programs are static (no loader), Node is not.
    const loader = muslLoader(spec.node.arch)
    const qemu = spec.node.qemu ? [spec.node.qemu] : []
    return { prefix: [...qemu, loader], programPrefix: qemu, env: {}, toFile: false }
  }
  throw new Error('no emulator for this target here')
}

/** The version of `name` installed in the repository (the app gets the same). */
function installedVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version
}

/**
 * A fresh app with the packed main package and the target's platform package (npm/PLATFORM's
 * package.json with dist/TARGET's addon and programs, as the release workflow assembles it),
 * installed by this machine's npm (--force: the platform package is for another cpu/os/libc);
 * returns the app's directory.
 */
function installedApp(target, spec) {
  const work = path.join(SCRATCH, 'app', target)
  fs.rmSync(work, { recursive: true, force: true })
  const plat = path.join(work, 'platform')
  fs.mkdirSync(plat, { recursive: true })
  fs.copyFileSync(path.join(ROOT, 'npm', spec.platform, 'package.json'), path.join(plat, 'package.json'))
  const dist = path.join(DIST, target)
  for (const f of [`keynet.${spec.platform}.node`, `keynet${spec.relay}`, `keynet-relay${spec.relay}`]) fs.copyFileSync(path.join(dist, f), path.join(plat, f))
  const pack = (dir) => {
    const r = sh('npm', ['pack', '--silent', '--pack-destination', work], { capture: true, cwd: dir })
    if (r.code !== 0) throw new Error(`npm pack ${dir}: ${r.stderr.slice(-300)}`)
    return path.join(work, r.stdout.trim().split('\n').pop())
  }
  const tarballs = [pack(ROOT), pack(plat)]
  const app = path.join(work, 'app')
  fs.mkdirSync(app)
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }))
  const deps = ['@grpc/grpc-js', '@grpc/proto-loader'].map((n) => `${n}@${installedVersion(n)}`)
  const args = ['install', '--force', '--omit=optional', '--no-audit', '--no-fund', '--prefer-offline', ...tarballs, ...deps]
  const r = sh('npm', args, { capture: true, cwd: app })
  if (r.code !== 0) throw new Error(`npm install in the app: ${r.stderr.slice(-400)}`)
  return app
}

/** The target's own Node binary. */
function nodeOf(spec) {
  return spec.node.wheel ? muslNode(spec.node.wheel) : foreignNode(spec.node)
}

/** Runs `args` under `prefix` (the runner's emulator or loader; an empty prefix runs natively), killed after `timeout` ms. */
function execute(run, args, prefix = run.prefix, timeout = 300_000) {
  const [cmd, ...rest] = [...prefix, ...args]
  if (!run.toFile) return sh(cmd, rest, { env: run.env, capture: true, cwd: ROOT, timeout })
  const out = path.join(SCRATCH, 'wine.out')
  const err = path.join(SCRATCH, 'wine.err')
  const quoted = [cmd, ...rest].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ')
  const r = sh('sh', ['-c', `${quoted} >'${out}' 2>'${err}'`], { env: run.env, capture: true, cwd: ROOT, timeout })
  return { code: r.code, stdout: fs.readFileSync(out, 'utf8'), stderr: fs.readFileSync(err, 'utf8') }
}

const REVERSE_READY = /^reverse proxy node id (v[0-9a-v]{52}) udp \S+ server \S+$/m

/** Resolves when `ready()` holds, polling every 100 ms; rejects after `ms`. */
async function until(ready, ms, what) {
  const end = Date.now() + ms
  while (!ready()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** The installed `keynet reverse` runs with a control endpoint, and `keynet status --json` reads its node id there. */
async function statusRow(run, spec, installed) {
  const t0 = Date.now()
  const keynet = path.join(installed, `keynet${spec.relay}`)
  const control = spec.relay === '.exe' ? '\\\\.\\pipe\\keynet-cross-test' : path.join(SCRATCH, 'cross-test.sock')
  const prefix = run.programPrefix ?? run.prefix
  // Output to a file, read as it grows: under wine a pipe as stdout gives EBADF.
  const out = path.join(SCRATCH, 'reverse.out')
  const fd = fs.openSync(out, 'w')
  const [cmd, ...rest] = [...prefix, keynet, 'reverse', '--server', '127.0.0.1:1', '--control', control]
  const child = spawn(cmd, rest, { env: { ...process.env, ...run.env }, stdio: ['ignore', fd, fd] })
  fs.closeSync(fd)
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const row = { test: 'keynet status --json reads a running keynet reverse over its control endpoint; a second instance there is refused', ok: false, ms: null, error: null }
  try {
    let code = null
    exited.then((c) => (code = c))
    await until(() => code !== null || REVERSE_READY.test(fs.readFileSync(out, 'utf8')), 60_000, 'keynet reverse to start')
    const nodeId = REVERSE_READY.exec(fs.readFileSync(out, 'utf8'))?.[1]
    if (!nodeId) throw new Error(`keynet reverse exited ${code}: ${fs.readFileSync(out, 'utf8').slice(-400)}`)
    const status = execute(run, [keynet, 'status', '--control', control, '--json'], prefix)
    const got = status.code === 0 ? JSON.parse(status.stdout) : null
    // A second instance on the same endpoint is refused (exit 2), and the first still answers.
    const second = execute(run, [keynet, 'reverse', '--server', '127.0.0.1:1', '--control', control], prefix, 60_000)
    const again = execute(run, [keynet, 'status', '--control', control, '--json'], prefix)
    const refused = second.code === 2 && /another keynet instance answers there/.test(second.stderr)
    row.ok = got?.role === 'reverse' && got?.node_id === nodeId && refused && again.code === 0 && JSON.parse(again.stdout).node_id === nodeId
    row.ms = Date.now() - t0
    if (!row.ok) row.error = `status exit ${status.code}: ${status.stdout.slice(0, 200)} ${status.stderr.slice(-300)}; second instance exit ${second.code}: ${second.stderr.slice(-300)}`
  } catch (e) {
    row.error = e.message
  } finally {
    child.kill('SIGKILL')
    await exited
    // Under wine a program can outlive its launcher (a second instance that was not refused).
    if (run.toFile) sh('wineserver', ['-k'], { env: run.env, capture: true })
  }
  return row
}

async function testOne(target, built) {
  const spec = TARGETS[target]
  const rows = []
  const t0 = Date.now()
  const stopped = (error) => ({ target, error, rows, seconds: Math.round((Date.now() - t0) / 1000) })
  if (!built?.built) return stopped(`not built${built?.error ? `: ${built.error}` : ' (npm run cross)'}`)
  let run, app, node
  try {
    run = runner(target, spec)
    app = installedApp(target, spec)
    node = nodeOf(spec)
  } catch (e) {
    return stopped(e.message)
  }
  const installed = path.join(app, 'node_modules', `keynet-${spec.platform}`)
  const relay = execute(run, [path.join(installed, `keynet-relay${spec.relay}`), '--help'], run.programPrefix ?? run.prefix)
  rows.push({ test: 'keynet-relay --help runs (from the installed platform package)', ok: relay.code === 0 && /keynet-relay/.test(relay.stdout), ms: null, error: relay.code === 0 ? null : relay.stderr.slice(-300) })
  rows.push(await statusRow(run, spec, installed))
  const smoke = execute(run, [node, SMOKE, '--app', app])
  const lines = smoke.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
  rows.push(...lines.filter((l) => l.test))
  const done = lines.find((l) => l.done)
  const result = stopped(done ? null : `the smoke suite did not finish (exit ${smoke.code}): ${smoke.stderr.slice(-600)}`)
  return { ...result, node: done?.node, platform: done?.platform }
}

async function main() {
  const argv = process.argv.slice(2)
  const named = argv[0] === '--targets' ? argv[1].split(',') : null
  const file = path.join(DIST, 'cross-build.json')
  const builds = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {}
  const targets = named || Object.keys(TARGETS).filter((t) => TARGETS[t].run && builds[t]?.built)
  let failed = 0
  for (const target of targets) {
    if (!TARGETS[target]) throw new Error(`unknown target ${target}`)
    const r = await testOne(target, builds[target])
    console.log(`\n=== ${target}${r.platform ? ` (${r.platform}, Node ${r.node}, ${builds[target].profile} build)` : ''}: ${r.seconds} s`)
    if (r.error) {
      failed++
      console.log(`FAILED: ${r.error}`)
    }
    for (const row of r.rows) {
      if (!row.ok) failed++
      console.log(`${row.ok ? 'pass' : 'FAIL'} ${row.ms === null ? '' : `${String(row.ms).padStart(6)} ms `}${row.test}${row.error ? `\n     ${row.error}` : ''}`)
    }
  }
  if (!targets.length) console.log('nothing to run: npm run cross builds the targets first')
  process.exitCode = failed ? 1 : 0
}

main().catch((e) => {
  console.error(e)
  process.exitCode = 1
})
