'use strict'
// The peers the bench compares keynet with, each run as its users run it: its own processes,
// one forwarding a local TCP port over its protocol (QUIC, UDX), the other forwarding to the
// bench's server.
// `npm run bench:setup` installs them into bench/.peers; a peer that is not there is left out.
//
// dumbpipe (iroh): `dumbpipe listen-tcp --host SERVER` prints a ticket; `dumbpipe connect-tcp
// --addr 127.0.0.1:PORT TICKET` accepts TCP on PORT, each connection a QUIC stream to the
// listener (on a connection it opens per TCP connection).
//
// hyperdht (Holepunch, UDX): bench/hyperdht-peer.js, what hypertele does, on a private DHT of
// three bootstrap nodes in a third process whose CPU is not counted; each TCP connection is a
// hyperdht connection of its own (DHT lookup, Noise handshake, UDX stream).
// KEYNET_BENCH_PEER_DEBUG=1 copies every peer process's stderr to this one's.

const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { withTimeout } = require('../support/timeout')

const PEERS_DIR = path.join(__dirname, '.peers')
/** util-linux's setpriv, to have the kernel kill a peer when the bench dies (Linux only). */
const PDEATHSIG = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => process.platform === 'linux' && fs.existsSync(p))
const BIN = path.join(PEERS_DIR, 'bin')
const START_TIMEOUT_MS = 30_000

/**
 * The installed peers: `[{ name, installed, start }]`, in the table's order. KEYNET_BENCH_PEERS
 * (`dumbpipe,hyperdht`) keeps only those named.
 */
function installedPeers() {
  const exe = process.platform === 'win32' ? '.exe' : ''
  const dumbpipe = path.join(BIN, `dumbpipe${exe}`)
  const only = process.env.KEYNET_BENCH_PEERS?.split(',').map((n) => n.trim())
  return [
    { name: 'dumbpipe', installed: fs.existsSync(dumbpipe), start: (spawnChild, serverPort, port) => startDumbpipe(dumbpipe, spawnChild, serverPort, port) },
    {
      name: 'hyperdht',
      installed: fs.existsSync(path.join(PEERS_DIR, 'hyperdht', 'node_modules', 'hyperdht', 'package.json')),
      start: startHyperdht,
    },
  ].filter((p) => p.installed && (!only || only.includes(p.name)))
}

/** A free TCP port on 127.0.0.1 (closed again; the peer binds it right after). */
async function freePort() {
  const s = net.createServer().listen(0, '127.0.0.1')
  await new Promise((r) => s.once('listening', r))
  const { port } = s.address()
  await new Promise((r) => s.close(r))
  return port
}

/**
 * Resolves with the first match of `re` in the child's stderr (rejects if it exits first);
 * stops reading for it once matched (the child's stderr keeps flowing, see `spawnChild`).
 */
function stderrMatch(child, re, what) {
  let text = ''
  let onData
  let onExit
  return withTimeout(
    new Promise((resolve, reject) => {
      onData = (d) => {
        text += d
        const m = re.exec(text)
        if (m) resolve(m)
      }
      onExit = (c) => reject(new Error(`${what} exited (${c}) before it was ready: ${text.trim()}`))
      child.stderr.on('data', onData)
      child.once('exit', onExit)
    }),
    START_TIMEOUT_MS,
    what,
  ).finally(() => {
    child.stderr.off('data', onData)
    child.off('exit', onExit)
  })
}

/** Connects until `port` accepts (the peer is listening), bounded. */
async function untilListening(port, what) {
  const deadline = Date.now() + START_TIMEOUT_MS
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' })
      s.once('connect', () => {
        s.destroy()
        resolve(true)
      })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`${what} never listened on ${port}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); 0 elsewhere. */
function processCpuS(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100 // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return 0
  }
}

/**
 * A `/proc/PID/status` field in bytes (`VmRSS`, `VmHWM`: the peak RSS); NaN where unknown (a
 * process gone), so a sum over a peer's processes reads n/a instead of too small.
 */
function statusBytes(pid, field) {
  try {
    const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'))
    return m ? Number(m[1]) * 1024 : NaN
  } catch {
    return NaN
  }
}

/** Starts a new peak-RSS measurement of `pid` (Linux resets VmHWM on "5" into clear_refs). */
function resetPeakRss(pid) {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

/** dumbpipe's two processes: `listen-tcp` in front of the server, `connect-tcp` on `port`. */
async function startDumbpipe(bin, spawnChild, serverPort, port) {
  const env = { ...process.env, RUST_LOG: 'error' }
  const listen = spawnChild(bin, ['listen-tcp', '--host', `127.0.0.1:${serverPort}`], env)
  const [, ticket] = await stderrMatch(listen, /dumbpipe connect-tcp (\S+)/, 'dumbpipe listen-tcp')
  const connect = spawnChild(bin, ['connect-tcp', '--addr', `127.0.0.1:${port}`, ticket], env)
  return [listen, connect]
}

/** hyperdht: a private DHT (not counted), then the listening and the connecting side. */
async function startHyperdht(spawnChild, serverPort, port) {
  const script = path.join(__dirname, 'hyperdht-peer.js')
  const node = process.execPath
  const boot = spawnChild(node, [script, 'bootstrap'], process.env)
  const [, bootstrap] = await stderrMatch(boot, /bootstrap (\S+)/, 'hyperdht bootstrap')
  const listen = spawnChild(node, [script, 'listen', bootstrap, `127.0.0.1:${serverPort}`], process.env)
  const [, key] = await stderrMatch(listen, /key ([0-9a-f]+)/, 'hyperdht listen')
  const connect = spawnChild(node, [script, 'connect', bootstrap, String(port), key], process.env)
  return [listen, connect]
}

/** Every peer process still running: killed when this process exits without stopping them. */
const live = new Set()
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL')
})

/**
 * Starts `peer` in front of the server on `serverPort`. Resolves `{ name, port, cpuS(), rss,
 * stop() }`: TCP connections to 127.0.0.1:`port` reach the server through the peer; `cpuS` counts
 * the two tunnel processes only, and `rss` measures their memory: `rss.startPeak()` (false where
 * the peak cannot be reset), then `rss.now()` and `rss.peak()`, in bytes, both processes summed.
 */
async function startPeer(peer, serverPort) {
  const children = []
  const stop = async () => {
    await Promise.all(
      children.map((c) => {
        if (c.exitCode !== null || c.signalCode !== null) return null
        const gone = new Promise((r) => c.once('exit', r))
        c.kill('SIGTERM')
        return withTimeout(gone, 5000, `${peer.name} exit`).catch(() => c.kill('SIGKILL'))
      }),
    )
  }
  const spawnChild = (bin, args, env) => {
    // stdin is a pipe the child never reads: it ends when this process goes, however it goes
    // (bench/hyperdht-peer.js exits on that); `live` covers an exit that skips `stop`. A peer
    // that ignores its stdin (dumbpipe) gets SIGKILL from the kernel when this process dies, even
    // by SIGKILL, where util-linux's setpriv can ask for that (it execs the peer: same pid).
    const [file, argv] = PDEATHSIG ? [PDEATHSIG, ['--pdeathsig', 'KILL', '--', bin, ...args]] : [bin, args]
    const c = spawn(file, argv, { stdio: ['pipe', 'ignore', 'pipe'], env })
    live.add(c)
    c.once('exit', () => live.delete(c))
    // Always drained (a full pipe would stall the peer); shown with KEYNET_BENCH_PEER_DEBUG.
    if (process.env.KEYNET_BENCH_PEER_DEBUG) c.stderr.on('data', (d) => process.stderr.write(`[${peer.name}] ${d}`))
    c.stderr.resume()
    children.push(c)
    return c
  }
  try {
    const port = await freePort()
    const tunnel = await peer.start(spawnChild, serverPort, port)
    await untilListening(port, `${peer.name} connecting side`)
    const sum = (fn) => tunnel.reduce((s, c) => s + fn(c.pid), 0)
    const rss = {
      startPeak: () => tunnel.map((c) => resetPeakRss(c.pid)).every(Boolean),
      now: () => sum((pid) => statusBytes(pid, 'VmRSS')),
      peak: () => sum((pid) => statusBytes(pid, 'VmHWM')),
    }
    return { name: peer.name, port, cpuS: () => sum(processCpuS), rss, stop }
  } catch (e) {
    await stop()
    throw e
  }
}

module.exports = { installedPeers, startPeer }
