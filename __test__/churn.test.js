'use strict'
// Tunnel churn must not exhaust the ephemeral port range: a busy keynode opens and closes
// tunnels all the time (the original usage creates a gRPC client per call), and every tunnel
// opens a TCP connection from the reverse proxy to the server. Reserving a port per tunnel
// (bind before connect) left each one in TIME_WAIT for 60 s and answered 502 once the range
// ran out. Here a network namespace gets a range of 2,048 ports and carries 4,000 tunnels
// (bench/soak.js, the `npm run soak` script, in that namespace): every one must echo intact.
// Needs root (network namespaces).

const test = require('ava')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { run, cleanEnv } = require('./helpers')

function nsSupport() {
  if (process.platform !== 'linux') return 'needs Linux network namespaces'
  if (process.getuid() !== 0) return 'needs root (network namespaces)'
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' })
  } catch {
    return "needs 'ip' (apt-get install iproute2)"
  }
  return null
}

const unsupported = nsSupport()
const nsTest = unsupported ? test.skip : test.serial
if (unsupported) console.log(`churn.test.js skipped: ${unsupported}`)

const RANGE = [40000, 42047]
const TUNNELS = 4000

nsTest(`${TUNNELS} tunnels through one proxy pair in a namespace whose ephemeral range holds ${RANGE[1] - RANGE[0] + 1} ports: no errors, every byte echoed`, async (t) => {
  const ns = `knchurn${process.pid}`
  const ip = (...args) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] })
  ip('netns', 'add', ns)
  t.teardown(() => ip('netns', 'del', ns))
  ip('-n', ns, 'link', 'set', 'lo', 'up')
  // tcp_tw_reuse=2 is Linux's default (reuse TIME_WAIT for loopback after 1 s), set here so
  // the test does not depend on the host's choice.
  ip('netns', 'exec', ns, 'sysctl', '-qw', `net.ipv4.ip_local_port_range=${RANGE[0]} ${RANGE[1]}`, 'net.ipv4.tcp_tw_reuse=2')
  const soak = path.join(__dirname, '..', 'bench', 'soak.js')
  // Two workers keep the rate well under the range's 2,048 ports per second that TIME_WAIT
  // reuse allows, so only ports reserved for a whole TIME_WAIT (60 s) can run out.
  const { stdout } = await run(t, 'ip', ['netns', 'exec', ns, process.execPath, soak, '--count', String(TUNNELS), '--workers', '2', '--no-direct', '--json'], { timeout: 120_000, env: cleanEnv({ KEYNET_BENCH_PROFILE: 'dev' }) })
  const summary = JSON.parse(stdout.trim().split('\n').pop())
  t.log(`${summary.ok} tunnels in ${summary.seconds} s (${summary.perSec.toFixed(0)}/s), errors ${JSON.stringify(summary.errorsByKind)}`)
  t.deepEqual(summary.errorsByKind, {}, `first error: ${summary.firstError}`)
  t.is(summary.ok, TUNNELS)
})
