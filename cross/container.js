'use strict'
// `npm run test:container [-- --target x86_64-unknown-linux-musl]`: builds deploy/Containerfile.static
// from the static `keynet` of dist/TARGET/ (`npm run cross` makes it) with podman (installed from
// Debian when missing; it needs no registry: the image starts from scratch), then proves what a
// user of the image relies on: it runs as uid 10001, not root; an identity made in the volume
// survives a new container, with its key mode 0600 and owned by that user; `keynet reverse` in the
// container carries a tunnel (a relay and `keynet forward` on the host, curl through them by node
// id); `keynet status` answers through `podman exec`; `podman stop` (SIGTERM) ends it with exit
// code 0. Prints pass/fail per row with times; exits 1 on any failure.

const fs = require('node:fs')
const http = require('node:http')
const path = require('node:path')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const { DIST, SCRATCH } = require('./targets')
const { sh, aptInstall } = require('./tools')

const target = (() => {
  const i = process.argv.indexOf('--target')
  return i > 0 ? process.argv[i + 1] : 'x86_64-unknown-linux-musl'
})()
const BIN = path.join(DIST, target)
const KEYNET = path.join(BIN, 'keynet')
const TAG = 'localhost/keynet-ci:test'
const VOLUME = 'keynet-ci-id'
const NAME = 'keynet-ci-reverse'
const TOKEN = 'container-token'
/** Every wait here has this bound. */
const WAIT = 60_000

// vfs storage and runc work on any Linux as root (no overlay module, and crun refuses a hybrid
// cgroup tree); the limits stay under the machine's hard ones, which podman's defaults exceed
// in a sandbox.
const GLOBAL = ['--storage-driver', 'vfs', '--runtime', 'runc']
/** At most `want`, within this shell's hard limit `flag` (-n files, -u processes). */
function hardLimit(flag, want) {
  const r = sh('sh', ['-c', `ulimit -H${flag}`], { capture: true })
  const hard = r.stdout.trim()
  return hard === 'unlimited' || !/^\d+$/.test(hard) ? want : Math.min(want, Number(hard))
}
const [NOFILE, NPROC] = [hardLimit('n', 4096), hardLimit('u', 4096)]
const LIMITS = ['--ulimit', `nofile=${NOFILE}:${NOFILE}`, '--ulimit', `nproc=${NPROC}:${NPROC}`]

function podman(args, { timeout = WAIT } = {}) {
  const r = sh('podman', [...GLOBAL, ...args], { capture: true, timeout })
  if (r.code !== 0) throw new Error(`podman ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim().slice(-400)}`)
  return r.stdout.trim()
}

/** Runs `cmd args` until a stdout line matches `ready`; { child, match }. */
function startUntil(cmd, args, ready, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)))
  const lines = readline.createInterface({ input: child.stdout })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path.basename(cmd)} not ready in ${WAIT} ms: ${stderr}`)), WAIT)
    lines.on('line', (l) => {
      const match = ready.exec(l)
      if (match) {
        clearTimeout(timer)
        resolve({ child, match })
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`${path.basename(cmd)} exited ${code} before it was ready: ${stderr}`))
    })
  })
}

/** Runs `cmd args` to its end without blocking this process; { code, stdout, stderr }. */
async function output(cmd, args) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stderr.on('data', (d) => (stderr += d))
  // 'close', not 'exit': 'exit' can come before the last output is read.
  const closed = new Promise((resolve) => child.once('close', resolve))
  let timer
  const bound = new Promise((resolve, reject) => (timer = setTimeout(() => reject(new Error(`${cmd} did not end in ${WAIT} ms`)), WAIT)))
  try {
    return { code: await Promise.race([closed, bound]), stdout, stderr }
  } finally {
    clearTimeout(timer)
    child.kill('SIGKILL')
  }
}

function exited(child) {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null) return resolve(child.exitCode)
    const timer = setTimeout(() => reject(new Error('no exit within the bound')), WAIT)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve(code)
    })
  })
}

let failed = 0
async function row(name, fn) {
  const t0 = Date.now()
  try {
    await fn()
    console.log(`pass ${String(Date.now() - t0).padStart(6)} ms ${name}`)
  } catch (e) {
    failed++
    console.log(`FAIL ${String(Date.now() - t0).padStart(6)} ms ${name}\n     ${e.message}`)
  }
}

function check(ok, what) {
  if (!ok) throw new Error(what)
}

async function main() {
  if (!fs.existsSync(KEYNET)) {
    console.log(`FAIL ${KEYNET} is missing: npm run cross -- --targets ${target}`)
    process.exit(1)
  }
  // iptables: netavark sets up podman's bridge network with it (only recommended by podman,
  // so a --no-install-recommends install lacks it and `podman run` fails: "netavark: No such
  // file or directory").
  if (!aptInstall(['podman', 'runc', 'netavark', 'iptables'])) {
    console.log('FAIL podman is missing and cannot be installed here (apt-get as root)')
    process.exit(1)
  }
  const children = []
  const cleanup = () => {
    for (const c of children) c.kill('SIGKILL')
    sh('podman', [...GLOBAL, 'rm', '-f', NAME], { capture: true })
    sh('podman', [...GLOBAL, 'volume', 'rm', '-f', VOLUME], { capture: true })
    sh('podman', [...GLOBAL, 'rmi', '-f', TAG], { capture: true })
  }
  cleanup()
  const run = (args) => podman(['run', '--rm', ...LIMITS, ...args])

  await row(`deploy/Containerfile.static builds from ${path.relative(process.cwd(), BIN)} with no registry`, async () => {
    // The context is a copy with only the two programs (dist/TARGET also holds the addon).
    const ctx = path.join(SCRATCH, 'container-context')
    fs.rmSync(ctx, { recursive: true, force: true })
    fs.mkdirSync(ctx, { recursive: true })
    for (const f of ['keynet', 'keynet-relay']) fs.copyFileSync(path.join(BIN, f), path.join(ctx, f))
    podman(['build', '-q', '-f', path.join(__dirname, '..', 'deploy', 'Containerfile.static'), '-t', TAG, ctx], { timeout: 300_000 })
    check(/keynet: reach a server/.test(run([TAG])), '`keynet --help` (the default command) does not print its usage')
    check(podman(['image', 'inspect', TAG, '--format', '{{.Config.User}}']) === '10001:10001', 'the image does not run as 10001:10001')
  })

  let nodeId
  await row('an identity made in the volume survives a new container; key.pem is 0600 and owned by uid 10001', async () => {
    podman(['volume', 'create', VOLUME])
    nodeId = run(['-v', `${VOLUME}:/var/lib/keynet`, TAG, 'id', 'new', '--dir', '/var/lib/keynet/reverse'])
    check(/^[a-z0-9]{52,}$/.test(nodeId), `id new printed ${JSON.stringify(nodeId)}`)
    const again = run(['-v', `${VOLUME}:/var/lib/keynet`, TAG, 'id', 'show', '--dir', '/var/lib/keynet/reverse'])
    check(again === nodeId, `a new container shows ${again}, not ${nodeId}`)
    const mount = podman(['volume', 'inspect', VOLUME, '--format', '{{.Mountpoint}}'])
    const key = fs.statSync(path.join(mount, 'reverse', 'key.pem'))
    check(key.uid === 10001, `key.pem is owned by uid ${key.uid}`)
    check((key.mode & 0o777) === 0o600, `key.pem has mode ${(key.mode & 0o777).toString(8)}`)
  })

  // A relay and a forward proxy on the host, `keynet reverse` in the container (host network),
  // an HTTP server on the host behind it; curl reaches the server by node id.
  const server = http.createServer((req, res) => res.end(`hello through the container: ${req.url}`))
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  let reverse
  await row('`keynet reverse` in the container carries a tunnel: curl -> keynet forward -> relay -> container -> HTTP server, by node id', async () => {
    const relay = await startUntil(KEYNET, ['relay', '--listen', '127.0.0.1:0'], /^relay listening on (\S+) tcp \S+ node id (\S+)$/)
    children.push(relay.child)
    const relayArg = `${relay.match[1]}@${relay.match[2]}`
    reverse = await startUntil('podman', [...GLOBAL, 'run', '--rm', '--name', NAME, ...LIMITS, '--network', 'host', '-v', `${VOLUME}:/var/lib/keynet`, TAG,
      'reverse', '--server', `127.0.0.1:${server.address().port}`, '--relay', relayArg, '--identity-dir', '/var/lib/keynet/reverse', '--grace', '5'], /^reverse proxy node id (\S+) udp/)
    children.push(reverse.child)
    check(reverse.match[1] === nodeId, `the container's reverse proxy is ${reverse.match[1]}, not the volume's ${nodeId}`)
    const forward = await startUntil(KEYNET, ['forward', '--listen', '127.0.0.1:0', '--relay', relayArg, '--control', path.join(SCRATCH, 'container-forward.sock')], /^forward proxy http (\S+) udp/, { KEYNET_TOKEN: TOKEN })
    children.push(forward.child)
    // Not spawnSync: the HTTP server is in this process and must answer while curl runs.
    const r = await output('curl', ['-sS', '--max-time', '30', '--proxytunnel', '-x', `http://${TOKEN}@${forward.match[1]}`, `http://${nodeId}.keynet:443/ping`])
    check(r.code === 0 && r.stdout === 'hello through the container: /ping', `curl: exit ${r.code} ${r.stdout} ${r.stderr}`)
  })

  await row('`keynet status --json` answers through `podman exec` with the connection', async () => {
    check(reverse, 'no reverse proxy is running')
    const s = JSON.parse(podman(['exec', NAME, 'keynet', 'status', '--json']))
    check(s.node_id === nodeId && s.role === 'reverse', `status names ${s.role} ${s.node_id}`)
    check(s.connections.length === 1 && s.stats.tunnels_total === 1, `status: ${JSON.stringify(s.connections)} tunnels ${s.stats.tunnels_total}`)
  })

  await row('`podman stop` (SIGTERM to keynet as PID 1) ends the container with exit code 0', async () => {
    check(reverse, 'no reverse proxy is running')
    podman(['stop', '-t', '20', NAME])
    const code = await exited(reverse.child)
    check(code === 0, `exit code ${code}`)
  })

  server.close()
  cleanup()
  if (failed) process.exit(1)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
