'use strict'
// keynet benchmark: a keynet tunnel vs a direct TCP connection, measured side by side in one run.
//
//   node bench/bench.js            full run (256 MiB bulk, 5,000 round trips, 200 tunnels, ...)
//   node bench/bench.js --quick    sizes and counts scaled down ~10x, for smoke runs
//   --rounds N                     N rounds (default 3), each number the median over them
//   --only bulk,setup              just these measurements (conc, idle, peers, rtt, setup, bulk, relayed, byid, cmp)
//   KEYNET_BENCH_PEERS=dumbpipe    compare with these installed peers only (bench/peers.js)
//
// keynet path:  client --TCP--> ForwardProxy (raw HTTP CONNECT) ==QUIC/UDP==> ReverseProxy --TCP--> server
// direct path:  client --TCP--> server
//
// Everything runs on 127.0.0.1 in this one process: the clients and the servers are plain Node
// `net` sockets on Node's event loop, and both proxies run on their own Rust threads. The numbers
// therefore measure this machine's loopback, with the client, server and proxies sharing its cores.
// Nothing here asserts a speed: the process exits non-zero only when something of keynet's
// functionally failed (a tunnel refused, a byte mismatch, a timeout); a peer's failures are
// printed under the peers table.
//
// It measures the `profiling` build (release code, symbols kept), building it first if needed
// (scripts/build-profiling.js); KEYNET_BENCH_PROFILE=dev measures the dev build instead.

const net = require('node:net')
const os = require('node:os')
const fs = require('node:fs')
const v8 = require('node:v8')
const vm = require('node:vm')
const crypto = require('node:crypto')
const { fork } = require('node:child_process')
// Before the addon loads: build and select the measured build (release code; see the script).
const BUILD = require('../scripts/build-profiling').useBenchBuild()
const { ForwardProxy, ReverseProxy, Relay } = require('..')
// The raw HTTP CONNECT client and the bounded wait shared with the tests and the NAT lab; by
// file, not '../support', which loads grpc-js (~17 MB more RSS in every number below).
const { openTunnel } = require('../support/connect')
const { withTimeout } = require('../support/timeout')
const { installedPeers, startPeer } = require('./peers')
/** Peers installed by `npm run bench:setup`, measured beside keynet in every round. */
const PEERS = installedPeers()

const QUICK = process.argv.includes('--quick')
/** `--rounds N` (default 3): the whole set of measurements N times, numbers reported as medians. */
/** `--only a,b`: just these measurements (conc, idle, peers, rtt, setup, bulk, relayed, byid, cmp). */
const ONLY = (() => {
  const i = process.argv.indexOf('--only')
  if (i < 0) return null
  const names = new Set(String(process.argv[i + 1]).split(','))
  const known = ['conc', 'idle', 'peers', 'rtt', 'setup', 'bulk', 'relayed', 'byid', 'cmp']
  for (const n of names) if (!known.includes(n)) throw new Error(`--only: unknown ${n} (known: ${known.join(', ')})`)
  return names
})()
const want = (name) => !ONLY || ONLY.has(name)
const ROUNDS = (() => {
  const i = process.argv.indexOf('--rounds')
  const n = i < 0 ? 3 : Number(process.argv[i + 1])
  if (!Number.isInteger(n) || n < 1) throw new Error('--rounds needs a whole number >= 1')
  return n
})()
const HOST = '127.0.0.1'
const MiB = 1024 * 1024
const KiB = 1024

const CFG = QUICK
  ? { bulkBytes: 26 * MiB, rttN: 500, rttWarmup: 20, coldN: 3, warmN: 10, concN: 20, concBytes: 256 * KiB, idleN: 100, peersN: 50 }
  : { bulkBytes: 256 * MiB, rttN: 5000, rttWarmup: 100, coldN: 20, warmN: 100, concN: 200, concBytes: 256 * KiB, idleN: 1000, peersN: 500 }
const RTT_SIZE = 64
const BULK_CHUNK = 1 * MiB
const RSS_SAMPLE_MS = 20

// Time limits: every wait below has one.
const CONNECT_TIMEOUT_MS = 20_000
const CLOSE_TIMEOUT_MS = 5_000
const BULK_TIMEOUT_MS = 600_000
const PHASE_TIMEOUT_MS = 180_000
const OVERALL_TIMEOUT_MS = 20 * 60_000

// Output piped into `head` and the like: stop writing quietly instead of crashing on EPIPE.
process.stdout.on('error', (e) => {
  if (e.code !== 'EPIPE') throw e
})

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc')

const MODE_SINK = 0x53 // 'S': count bytes until FIN, then answer the count (8 bytes, BE) and end
const MODE_ECHO = 0x45 // 'E': echo every byte, end on FIN

// ---- small helpers ------------------------------------------------------------------------------

const now = () => process.hrtime.bigint()
const msSince = (t0) => Number(now() - t0) / 1e6

function percentile(sorted, p) {
  if (!sorted.length) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[i]
}

function median(values) {
  if (!values?.length) return NaN
  return percentile([...values].sort((a, b) => a - b), 50)
}

function progress(line) {
  process.stdout.write(`  ${line}\n`)
}

/** Resolves on `event`; rejects on 'error' or 'close' (so a dead socket never leaves a wait hanging). */
function waitEvent(sock, event) {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      sock.off(event, onEvent)
      sock.off('error', onError)
      sock.off('close', onClose)
    }
    const onEvent = (v) => { cleanup(); resolve(v) }
    const onError = (e) => { cleanup(); reject(e) }
    const onClose = () => { cleanup(); reject(new Error(`socket closed while waiting for '${event}'`)) }
    sock.on(event, onEvent)
    sock.once('error', onError)
    sock.once('close', onClose)
  })
}

/** Waits (bounded) until the socket has emitted 'close'; destroys it on timeout. */
function waitClosed(sock, what) {
  if (sock.closed) return Promise.resolve()
  return withTimeout(
    new Promise((resolve) => sock.once('close', resolve)),
    CLOSE_TIMEOUT_MS,
    what,
    () => sock.destroy(),
  )
}

/** Ends the socket and waits (bounded) until it is fully closed. */
function closeSocket(sock) {
  if (sock.destroyed) return Promise.resolve()
  return withTimeout(
    new Promise((resolve) => {
      sock.once('close', resolve)
      sock.on('error', () => {})
      sock.resume() // read the peer's FIN
      sock.end()
    }),
    CLOSE_TIMEOUT_MS,
    'socket close',
    () => sock.destroy(),
  )
}

// ---- the server (plain Node net, 127.0.0.1) -------------------------------------------------------

function startServer() {
  const server = net.createServer({ noDelay: true }, (sock) => {
    let mode = null
    let count = 0
    sock.on('error', () => {})
    sock.on('data', (d) => {
      if (mode === null) {
        mode = d[0]
        d = d.subarray(1)
        if (mode !== MODE_SINK && mode !== MODE_ECHO) return sock.destroy()
      }
      if (mode === MODE_SINK) {
        count += d.length
      } else if (d.length && !sock.write(d)) {
        sock.pause()
        sock.once('drain', () => sock.resume())
      }
    })
    sock.on('end', () => {
      if (mode === MODE_SINK) {
        const b = Buffer.alloc(8)
        b.writeBigUInt64BE(BigInt(count))
        sock.end(b)
      } else {
        sock.end()
      }
    })
  })
  return withTimeout(
    new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, HOST, () => resolve(server))
    }),
    5000,
    'server listen',
  )
}

// ---- the two ways of reaching the server ------------------------------------------------------------

/** A plain TCP connection; resolves with { sock, ms } once connected (paused). */
function connectDirect(port) {
  const t0 = now()
  const sock = net.connect({ port, host: HOST, noDelay: true })
  sock.pause()
  return withTimeout(waitEvent(sock, 'connect'), CONNECT_TIMEOUT_MS, 'TCP connect', () => sock.destroy()).then(
    () => ({ sock, ms: msSince(t0) }),
    (e) => { sock.destroy(); throw e },
  )
}

/**
 * A tunnel through the forward proxy: raw HTTP CONNECT, resolves with { sock, ms } after the
 * `200` head (ms = from net.connect to the head), the socket paused and carrying only tunnel bytes.
 */
async function connectTunnel({ proxyPort, ingressPort, nodeId, token, host = HOST }) {
  const t0 = now()
  const { socket } = await openTunnel({
    port: proxyPort,
    target: `${host}:${ingressPort}?nodeId=${nodeId}`,
    token,
    socketOpts: { noDelay: true },
    timeout: CONNECT_TIMEOUT_MS,
  })
  return { sock: socket, ms: msSince(t0) }
}

// ---- the measurements ---------------------------------------------------------------------------------

/**
 * One-way bulk: writes the sink mode byte and `total` bytes (1 MiB chunks, honouring
 * backpressure), half-closes, and waits for the server's 8-byte count. The time runs from the
 * first byte written to the count's arrival: every byte has reached the server (and been read by
 * it), plus one small reply on the way back.
 */
/**
 * Linux's count of UDP datagrams dropped because a socket's receive buffer was full (all
 * sockets; the bench is the only heavy UDP user while it runs). `null` where unknown.
 */
function udpRcvbufErrors() {
  try {
    const lines = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'))
    const [names, values] = lines.map((l) => l.trim().split(/\s+/))
    const i = names.indexOf('RcvbufErrors')
    return i < 0 ? null : Number(values[i])
  } catch {
    return null
  }
}

async function bulk(sock, total, chunk) {
  const drops0 = udpRcvbufErrors()
  const cpu0 = process.cpuUsage()
  const t0 = now()
  const reply = readExactly(sock, 8, BULK_TIMEOUT_MS)
  // Awaited below; a failure while writing must not leave it unhandled.
  reply.catch(() => {})
  sock.write(Buffer.from([MODE_SINK]))
  let sent = 0
  try {
    while (sent < total) {
      const n = Math.min(chunk.length, total - sent)
      const ok = sock.write(n === chunk.length ? chunk : chunk.subarray(0, n))
      sent += n
      if (!ok) await withTimeout(waitEvent(sock, 'drain'), BULK_TIMEOUT_MS, 'bulk drain')
    }
  } catch (e) {
    sock.destroy()
    throw e
  }
  sock.end()
  const counted = Number((await reply).readBigUInt64BE(0))
  const ms = msSince(t0)
  const cpu = process.cpuUsage(cpu0)
  if (counted !== total) throw new Error(`bulk: the server counted ${counted} bytes, ${total} were sent`)
  await waitClosed(sock, 'bulk: close after the count')
  const drops1 = udpRcvbufErrors()
  const drops = drops0 === null || drops1 === null ? undefined : drops1 - drops0
  return { ms, mbps: total / 1e6 / (ms / 1000), cpuS: (cpu.user + cpu.system) / 1e6, drops }
}

/** Reads exactly `n` bytes (more is an error) from a paused socket. */
function readExactly(sock, n, timeoutMs) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const chunks = []
      let got = 0
      const cleanup = () => {
        sock.off('data', onData)
        sock.off('error', reject)
        sock.off('end', onEnd)
      }
      const onData = (d) => {
        chunks.push(d)
        got += d.length
        if (got >= n) {
          cleanup()
          if (got > n) return reject(new Error(`expected ${n} bytes, got ${got}`))
          resolve(Buffer.concat(chunks))
        }
      }
      const onEnd = () => { cleanup(); reject(new Error(`connection ended after ${got} of ${n} bytes`)) }
      sock.on('data', onData)
      sock.once('error', reject)
      sock.once('end', onEnd)
      sock.resume()
    }),
    timeoutMs,
    'read',
    () => sock.destroy(),
  )
}

/** `n` sequential echo round trips of `size` bytes (after `warmup` uncounted ones); µs each. */
function pingPong(sock, n, warmup, size) {
  const payload = crypto.randomBytes(size)
  const lat = new Float64Array(n)
  const p = new Promise((resolve, reject) => {
    let i = -warmup
    let got = 0
    let chunks = []
    let t0
    const send = () => {
      t0 = now()
      sock.write(payload)
    }
    const fail = (e) => {
      sock.off('data', onData)
      reject(e)
    }
    const onData = (d) => {
      chunks.push(d)
      got += d.length
      if (got < size) return
      const us = Number(now() - t0) / 1e3
      if (got > size) return fail(new Error(`round trip: ${got} bytes back for ${size}`))
      const back = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)
      if (!back.equals(payload)) return fail(new Error('round trip: echoed bytes differ'))
      chunks = []
      got = 0
      if (i >= 0) lat[i] = us
      i++
      if (i === n) {
        sock.off('data', onData)
        return resolve()
      }
      send()
    }
    sock.on('data', onData)
    sock.once('error', fail)
    sock.once('end', () => fail(new Error(`round trip: the connection ended after ${Math.max(i, 0)} of ${n}`)))
    sock.resume()
    sock.write(Buffer.from([MODE_ECHO]))
    send()
  })
  return withTimeout(p, PHASE_TIMEOUT_MS, 'round trips', () => sock.destroy()).then(() => {
    const sorted = Array.from(lat).sort((a, b) => a - b)
    return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), mean: sorted.reduce((a, b) => a + b, 0) / n }
  })
}

/**
 * `n` concurrent connections opened by `open()`, each echoing `size` bytes (its own rotation of
 * one random buffer, checked byte for byte); wall time from the first open to the last close,
 * RSS sampled every 20 ms.
 */
async function concurrent(n, size, open) {
  const base = crypto.randomBytes(size)
  const doubled = Buffer.concat([base, base])
  gc()
  await new Promise((r) => setTimeout(r, 100))
  const rssBefore = process.memoryUsage().rss
  let rssPeak = rssBefore
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, process.memoryUsage().rss)
  }, RSS_SAMPLE_MS)
  const one = async (i) => {
    const off = (i * 7919) % size
    const expected = doubled.subarray(off, off + size)
    const { sock } = await open()
    const ok = new Promise((resolve, reject) => {
      let pos = 0
      sock.on('data', (d) => {
        if (pos + d.length > size || !d.equals(expected.subarray(pos, pos + d.length))) {
          sock.destroy()
          return reject(new Error(`connection ${i}: echoed bytes differ at offset ${pos}`))
        }
        pos += d.length
      })
      sock.once('end', () => (pos === size ? resolve() : reject(new Error(`connection ${i}: ${pos} of ${size} bytes echoed`))))
      sock.once('error', reject)
    })
    sock.resume()
    sock.write(Buffer.from([MODE_ECHO]))
    sock.end(expected)
    await withTimeout(ok, PHASE_TIMEOUT_MS, `connection ${i}`, () => sock.destroy())
    await waitClosed(sock, `connection ${i}: close`)
  }
  const t0 = now()
  try {
    const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => one(i)))
    const failed = results.filter((r) => r.status === 'rejected')
    if (failed.length) throw new Error(`${failed.length}/${n} connections failed; first: ${failed[0].reason.message}`)
  } finally {
    clearInterval(sampler)
  }
  const ms = msSince(t0)
  rssPeak = Math.max(rssPeak, process.memoryUsage().rss)
  return { ms, rssBefore, rssPeak }
}

// ---- output ---------------------------------------------------------------------------------------------

function machineFacts() {
  const cpus = os.cpus()
  const nodeFile =
    Object.keys(require.cache).find((k) => k.endsWith('.node')) ||
    process.env.NAPI_RS_NATIVE_LIBRARY_PATH ||
    '(unknown)'
  let fileFacts = ''
  try {
    const st = fs.statSync(nodeFile)
    fileFacts = ` (${(st.size / 1e6).toFixed(1)} MB, built ${st.mtime.toISOString().replace(/\.\d+Z$/, 'Z')})`
  } catch {}
  const profile = BUILD.profile === 'dev'
    ? 'dev (KEYNET_BENCH_PROFILE=dev: our code unoptimised)'
    : BUILD.profile === 'profiling'
      ? 'profiling (release code generation with symbols; what users run is the same code, stripped)'
      : `${BUILD.profile} (NAPI_RS_NATIVE_LIBRARY_PATH)`
  return [
    `machine: ${cpus.length} CPU × ${cpus[0] ? cpus[0].model.trim() : '?'}, ${os.platform()} ${os.release()} ${os.arch()}, ` +
      `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, node ${process.version}`,
    `binary:  ${nodeFile}${fileFacts}, profile: ${profile}`,
    `setup:   client and servers are in-process Node (net, 127.0.0.1); both proxies run on their own Rust threads in the same process`,
  ]
}

function fmtBytes(b) {
  return b >= MiB ? `${(b / MiB).toFixed(b % MiB ? 1 : 0)} MiB` : `${(b / KiB).toFixed(0)} KiB`
}

function table(rows) {
  const head = ['metric', 'keynet', 'direct TCP', 'keynet/direct']
  const data = rows.filter((r) => !r.section)
  const width = [0, 1, 2, 3].map((c) => Math.max(head[c].length, ...data.map((r) => String(r[c]).length)))
  // Section lines span the table; widen the first column if one does not fit.
  const total = () => width.reduce((a, b) => a + b, 0) + 3 * 3
  for (const r of rows) if (r.section && r.section.length + 2 > total()) width[0] += r.section.length + 2 - total()
  const line = (r) =>
    `| ${String(r[0]).padEnd(width[0])} | ${String(r[1]).padStart(width[1])} | ${String(r[2]).padStart(width[2])} | ${String(r[3]).padStart(width[3])} |`
  const rule = `+${width.map((w) => '-'.repeat(w + 2)).join('+')}+`
  const out = [rule, line(head), rule]
  for (const r of rows) {
    if (r.section) out.push(`| ${('-- ' + r.section + ' ').padEnd(total(), '-')} |`)
    else out.push(line(r))
  }
  out.push(rule)
  return out.join('\n')
}

const f = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : 'n/a')
const ratio = (k, d) => (Number.isFinite(k) && Number.isFinite(d) && d > 0 ? `${(k / d).toFixed(2)}×` : 'n/a')

// ---- main ----------------------------------------------------------------------------------------------

const state = { server: null, rp: null, fp: null, relay: null, extraFps: new Set(), extraRps: new Set(), children: new Set(), peers: new Set() }

/** Starts the server and, with `withKeynet`, a reverse proxy in front of it and a connected forward proxy. */
async function setup(withKeynet) {
  const token = crypto.randomBytes(16).toString('hex')
  const server = await startServer()
  state.server = server
  const serverPort = server.address().port
  const ctx = { token, serverPort, direct: () => connectDirect(serverPort) }
  if (!withKeynet) return ctx
  const rp = new ReverseProxy()
  state.rp = rp
  await withTimeout(rp.start({ serverHost: HOST, serverPort }), 10_000, 'rp.start')
  const nodeId = rp.getNodeId()
  const ingressPort = rp.getIngressPort()
  const fp = new ForwardProxy({ authToken: token })
  state.fp = fp
  await withTimeout(fp.start(), 10_000, 'fp.start')
  await withTimeout(fp.openConnection(nodeId, HOST, ingressPort, { timeout: 10_000 }), 15_000, 'openConnection')
  const proxyPort = fp.getProxyPort()
  return { ...ctx, rp, fp, nodeId, ingressPort, proxyPort, tunnel: () => connectTunnel({ proxyPort, ingressPort, nodeId, token }) }
}

/** A loopback address whose route has Ethernet's MTU (set up by `bulkOnEthernetRoute`). */
const ETHERNET_HOST = '127.0.0.2'

/**
 * Bulk through keynet to a reverse proxy on a loopback address whose route has Ethernet's MTU
 * (1500, as on the internet), instead of loopback's 65536: keynet sends packets as large as a
 * direct path's route allows, so this is the figure for a path with internet-sized packets.
 * Needs root on Linux (`ip route`); resolves `{ skipped: reason }` otherwise, when a route for
 * the address exists already (it is the user's: left alone), or when the run fails. The route
 * is removed afterwards, also when the bench exits mid-run.
 */
async function bulkOnEthernetRoute(ctx, chunk) {
  const { spawnSync } = require('node:child_process')
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return { skipped: 'needs root on Linux' }
  const ip = (args) => spawnSync('ip', args, { encoding: 'utf8' })
  const shown = ip(['route', 'show', 'table', 'local', `${ETHERNET_HOST}/32`])
  if (shown.status !== 0) return { skipped: '`ip route` failed' }
  if (shown.stdout.trim()) return { skipped: `a route for ${ETHERNET_HOST} exists` }
  const added = ip(['route', 'add', 'local', `${ETHERNET_HOST}/32`, 'dev', 'lo', 'mtu', '1500', 'table', 'local'])
  if (added.status !== 0) return { skipped: '`ip route add` failed' }
  const removeRoute = () => ip(['route', 'del', 'local', `${ETHERNET_HOST}/32`, 'table', 'local'])
  process.once('exit', removeRoute)
  const rp = new ReverseProxy()
  try {
    await withTimeout(rp.start({ serverHost: HOST, serverPort: ctx.serverPort, ingressHost: ETHERNET_HOST }), 10_000, 'rp.start (Ethernet route)')
    const nodeId = rp.getNodeId()
    const ingressPort = rp.getIngressPort()
    await withTimeout(ctx.fp.openConnection(nodeId, ETHERNET_HOST, ingressPort, { timeout: 10_000 }), 15_000, 'openConnection (Ethernet route)')
    const open = () => connectTunnel({ proxyPort: ctx.proxyPort, ingressPort, nodeId, token: ctx.token, host: ETHERNET_HOST })
    const warm = await open()
    await pingPong(warm.sock, 50, 0, RTT_SIZE)
    await closeSocket(warm.sock)
    const before = ctx.fp.getConnectionInfoByIngress(ETHERNET_HOST, ingressPort)
    const { sock } = await open()
    const r = await bulk(sock, CFG.bulkBytes, chunk)
    const after = ctx.fp.getConnectionInfoByIngress(ETHERNET_HOST, ingressPort)
    if (before && after) r.packet = (after.bytesSent - before.bytesSent) / (after.datagramsSent - before.datagramsSent)
    await withTimeout(ctx.fp.closeConnection(ETHERNET_HOST, ingressPort), 10_000, 'closeConnection (Ethernet route)')
    return r
  } catch (err) {
    return { skipped: `failed: ${err.message}` }
  } finally {
    await withTimeout(rp.stop(), 10_000, 'rp.stop (Ethernet route)').catch(() => {})
    removeRoute()
    process.removeListener('exit', removeRoute)
  }
}

/** Warms up the paths (JIT, first-connection costs) outside every measurement. */
async function warmUp(ctx) {
  for (const open of [ctx.direct, ctx.tunnel]) {
    if (!open) continue
    const { sock } = await open()
    await pingPong(sock, 50, 0, RTT_SIZE)
    await closeSocket(sock)
  }
}

/** Runs the concurrency measurement of `kind` ('direct' | 'keynet') in a fresh child process. */
async function runChild(kind) {
  const args = [`--concurrency-child=${kind}`, ...(QUICK ? ['--quick'] : [])]
  const child = fork(__filename, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  let result
  child.on('message', (m) => { result = m })
  const code = await withTimeout(
    new Promise((resolve) => child.once('exit', (c, sig) => resolve(c ?? sig))),
    PHASE_TIMEOUT_MS,
    `concurrency child (${kind})`,
    () => child.kill('SIGKILL'),
  )
  if (code !== 0 || !result) throw new Error(`concurrency child (${kind}) exited with ${code}${result && result.error ? `: ${result.error}` : ''}`)
  if (result.error) throw new Error(`concurrency child (${kind}): ${result.error}`)
  return result
}

/** The child side of runChild: one measurement, its result sent to the parent. */
async function child(kind) {
  if (kind === 'peers') return childDone(await manyPeers(CFG.peersN))
  if (kind === 'idle-keynet' || kind === 'idle-direct') {
    const ctx = await setup(kind === 'idle-keynet')
    await warmUp(ctx)
    return childDone(await idleTunnels(CFG.idleN, kind === 'idle-keynet' ? ctx.tunnel : ctx.direct))
  }
  const ctx = await setup(kind === 'keynet')
  await warmUp(ctx)
  const open = kind === 'keynet' ? ctx.tunnel : ctx.direct
  const r = await withTimeout(concurrent(CFG.concN, CFG.concBytes, open), PHASE_TIMEOUT_MS, `concurrent ${kind}`)
  await childDone(r)
}

async function childDone(result) {
  process.send(result)
  await stopAll()
  process.disconnect()
}

/** RSS after a full garbage collection and a moment for freed memory to settle. */
async function settledRss() {
  gc()
  await new Promise((r) => setTimeout(r, 200))
  gc()
  return process.memoryUsage().rss
}

/**
 * `n` tunnels (or TCP connections) open at once and idle: each echoes one round trip (so it is
 * established end to end), then all sit open. RSS per tunnel above the baseline (taken after
 * the warm-up, with the server, and for keynet the proxies and their connection, up).
 */
async function idleTunnels(n, open) {
  const before = await settledRss()
  const socks = []
  try {
    for (let i = 0; i < n; i += 50) {
      const batch = await Promise.all(Array.from({ length: Math.min(50, n - i) }, async () => {
        const { sock } = await open()
        await pingPong(sock, 1, 0, RTT_SIZE)
        return sock
      }))
      socks.push(...batch)
    }
    const after = await settledRss()
    return { n, before, after, perTunnel: (after - before) / n }
  } finally {
    await Promise.all(socks.map((s) => closeSocket(s).catch(() => s.destroy())))
  }
}

/**
 * One forward proxy and `n` reverse proxies in this process: RSS per connection side (the
 * growth from opening all `n` connections at once, halved: each connection has two sides here)
 * and the time to open them all at once.
 */
async function manyPeers(n) {
  const token = crypto.randomBytes(16).toString('hex')
  const server = await startServer()
  state.server = server
  const serverPort = server.address().port
  const rps = []
  for (let i = 0; i < n; i++) {
    const rp = new ReverseProxy()
    state.extraRps.add(rp)
    await withTimeout(rp.start({ serverHost: HOST, serverPort }), 10_000, 'rp.start (peers)')
    rps.push(rp)
  }
  const fp = new ForwardProxy({ authToken: token })
  state.extraFps.add(fp)
  await withTimeout(fp.start(), 10_000, 'fp.start (peers)')
  const before = await settledRss()
  const t0 = now()
  await withTimeout(
    Promise.all(rps.map((rp) => fp.openConnection(rp.getNodeId(), HOST, rp.getIngressPort(), { timeout: 60_000 }))),
    PHASE_TIMEOUT_MS,
    `${n} connections`,
  )
  const ms = msSince(t0)
  const after = await settledRss()
  if (fp.getConnectionCount() !== n) throw new Error(`${fp.getConnectionCount()} of ${n} connections up`)
  return { n, ms, before, after, perSide: (after - before) / (2 * n) }
}

async function main() {
  const tStart = now()
  console.log(`keynet bench${QUICK ? ' (--quick: sizes scaled down ~10x)' : ''}`)
  for (const l of machineFacts()) console.log(l)
  console.log('')

  const rounds = []
  for (let i = 0; i < ROUNDS; i++) {
    if (ROUNDS > 1) progress(`-- round ${i + 1} of ${ROUNDS}`)
    rounds.push(await measureRound())
    await stopAll()
  }
  const R = mergeRounds(rounds)
  report(R, tStart)
}

/** One round of every measurement, keynet and its baselines alternating within it. */
async function measureRound() {
  const ctx = await setup(true)
  const { fp, nodeId, ingressPort, token, tunnel, direct } = ctx
  progress(`server ${HOST}:${ctx.serverPort} (TCP), reverse proxy ${HOST}:${ingressPort} (UDP), forward proxy ${HOST}:${ctx.proxyPort} (TCP) -> ${fp.getEgressHost()}:${fp.getEgressPort()} (UDP)`)
  await warmUp(ctx)

  const R = {}

  if (want('conc')) {
    // 1. concurrency, each side in a fresh child process (this script with --concurrency-child):
    //    RSS never shrinks back after a peak, so in one process the second run would start from the
    //    first one's high-water mark (and from the bulk phase's buffers).
    progress(`${CFG.concN} concurrent connections × ${fmtBytes(CFG.concBytes)} echo: direct TCP (child process) ...`)
    R.concDirect = await runChild('direct')
    progress(`${CFG.concN} concurrent connections × ${fmtBytes(CFG.concBytes)} echo: keynet (child process) ...`)
    R.concKeynet = await runChild('keynet')
  }
  if (want('idle')) {
    progress(`${CFG.idleN} idle tunnels at once: direct TCP, then keynet (child processes) ...`)
    R.idleDirect = await runChild('idle-direct')
    R.idleKeynet = await runChild('idle-keynet')
  }
  if (want('peers')) {
    progress(`one forward proxy connecting to ${CFG.peersN} reverse proxies at once (child process) ...`)
    R.peers = await runChild('peers')

  }
  if (want('rtt')) {
    // 2. round trips
    progress(`${CFG.rttN} sequential ${RTT_SIZE}-byte round trips: direct TCP ...`)
    {
      const { sock } = await direct()
      R.rttDirect = await pingPong(sock, CFG.rttN, CFG.rttWarmup, RTT_SIZE)
      await closeSocket(sock)
    }
    progress(`${CFG.rttN} sequential ${RTT_SIZE}-byte round trips: keynet ...`)
    {
      const { sock } = await tunnel()
      R.rttKeynet = await pingPong(sock, CFG.rttN, CFG.rttWarmup, RTT_SIZE)
      await closeSocket(sock)
    }

  }
  if (want('setup')) {
    // 3. setup
    progress(`connection setup: ${CFG.warmN} × TCP connect ...`)
    R.tcpConnect = []
    for (let i = 0; i < CFG.warmN; i++) {
      const { sock, ms } = await direct()
      R.tcpConnect.push(ms)
      await closeSocket(sock)
    }
    progress(`connection setup: ${CFG.warmN} × warm CONNECT (existing QUIC connection) ...`)
    R.warm = []
    for (let i = 0; i < CFG.warmN; i++) {
      const { sock, ms } = await tunnel()
      R.warm.push(ms)
      await closeSocket(sock)
    }
    progress(`connection setup: ${CFG.coldN} × cold CONNECT (fresh ForwardProxy, new QUIC connection) ...`)
    R.cold = []
    R.fpStart = []
    R.fpStop = []
    for (let i = 0; i < CFG.coldN; i++) {
      const p = new ForwardProxy({ authToken: token })
      state.extraFps.add(p)
      let t0 = now()
      await withTimeout(p.start(), 10_000, 'fp.start (cold)')
      R.fpStart.push(msSince(t0))
      const { sock, ms } = await connectTunnel({ proxyPort: p.getProxyPort(), ingressPort, nodeId, token })
      R.cold.push(ms)
      await closeSocket(sock)
      t0 = now()
      await withTimeout(p.stop(), 10_000, 'fp.stop (cold)')
      R.fpStop.push(msSince(t0))
      state.extraFps.delete(p)
    }
    progress(`connection setup: ${CFG.coldN} × cold CONNECT to a node met before (closeConnection, then CONNECT: resumed, header in 0-RTT) ...`)
    R.returning = []
    R.returningResumed = 0
    for (let i = 0; i < CFG.coldN; i++) {
      await withTimeout(state.fp.closeConnection(HOST, ingressPort), 10_000, 'closeConnection (returning)')
      const { sock, ms } = await tunnel()
      R.returning.push(ms)
      if (state.fp.getConnectionInfoByIngress(HOST, ingressPort)?.resumed) R.returningResumed++
      await closeSocket(sock)
    }

  }
  const chunk = crypto.randomBytes(BULK_CHUNK)
  if (want('bulk')) {
    // 4. bulk
    progress(`bulk: ${fmtBytes(CFG.bulkBytes)} one way, direct TCP ...`)
    {
      const { sock } = await direct()
      R.bulkDirect = await bulk(sock, CFG.bulkBytes, chunk)
    }
    progress(`bulk: ${fmtBytes(CFG.bulkBytes)} one way, keynet ...`)
    {
      const before = fp.getConnectionInfoByIngress(HOST, ingressPort)
      const { sock } = await tunnel()
      R.bulkKeynet = await bulk(sock, CFG.bulkBytes, chunk)
      const after = fp.getConnectionInfoByIngress(HOST, ingressPort)
      if (before && after) {
        R.bulkWire = after.bytesSent - before.bytesSent
        R.bulkPacket = R.bulkWire / (after.datagramsSent - before.datagramsSent)
      }
      R.connInfo = after
    }
    progress(`bulk: ${fmtBytes(CFG.bulkBytes)} one way, keynet on a route with Ethernet's MTU ...`)
    R.bulkEthernet = await bulkOnEthernetRoute(ctx, chunk)
    progress(`bulk keynet took ${(R.bulkKeynet.ms / 1000).toFixed(1)} s, direct ${(R.bulkDirect.ms / 1000).toFixed(2)} s`)

  }
  if (want('relayed')) {
    // 5. relayed: a second pair that reaches each other only through a Relay on loopback (the
    //    rendezvous is off, so every byte takes the relay: node -> relay -> node, both over QUIC).
    progress('relayed: starting a Relay and a pair registered with it ...')
    {
      const relay = new Relay()
      state.relay = relay
      await withTimeout(relay.start(), 10_000, 'relay.start')
      const relayOpts = { host: HOST, port: relay.getPort(), nodeId: relay.getNodeId(), upgrade: false }
      const rp2 = new ReverseProxy()
      state.extraRps.add(rp2)
      await withTimeout(rp2.start({ serverHost: HOST, serverPort: ctx.serverPort, relay: relayOpts }), 10_000, 'rp2.start')
      const fp2 = new ForwardProxy({ authToken: token })
      state.extraFps.add(fp2)
      await withTimeout(fp2.start(), 10_000, 'fp2.start')
      const key = { host: '192.0.2.1', port: 443 }
      const info = await withTimeout(fp2.openConnection(rp2.getNodeId(), key.host, key.port, { relay: relayOpts }), 15_000, 'relayed openConnection')
      if (info.path !== 'relayed') throw new Error(`expected a relayed path, got ${info.path}`)
      const relayed = () => connectTunnel({ proxyPort: fp2.getProxyPort(), ingressPort: key.port, nodeId: rp2.getNodeId(), token, host: key.host })
      {
        const { sock } = await relayed()
        await pingPong(sock, 50, 0, RTT_SIZE)
        await closeSocket(sock)
      }
      progress(`relayed: ${CFG.rttN} sequential ${RTT_SIZE}-byte round trips ...`)
      {
        const { sock } = await relayed()
        R.rttRelayed = await pingPong(sock, CFG.rttN, CFG.rttWarmup, RTT_SIZE)
        await closeSocket(sock)
      }
      progress(`relayed: bulk ${fmtBytes(CFG.bulkBytes)} one way ...`)
      {
        const { sock } = await relayed()
        const before = relay.getMetrics()
        R.bulkRelayed = await bulk(sock, CFG.bulkBytes, chunk)
        const m = relay.getMetrics()
        const relayedPackets = m.packetsRelayed - before.packetsRelayed
        R.bulkRelayed.onChannel = relayedPackets ? (m.packetsOnChannel - before.packetsOnChannel) / relayedPackets : 0
        R.bulkRelayed.bytesPerPacket = relayedPackets ? (m.bytesRelayed - before.bytesRelayed) / relayedPackets : 0
      }
      const after = fp2.getConnectionInfoByIngress(key.host, key.port)
      if (!after || after.path !== 'relayed') throw new Error(`the relayed connection changed path: ${after?.path}`)
      await withTimeout(fp2.stop(), 10_000, 'fp2.stop')
      state.extraFps.delete(fp2)
      await withTimeout(rp2.stop(), 10_000, 'rp2.stop')
      state.extraRps.delete(rp2)
      await withTimeout(relay.stop(), 10_000, 'relay.stop')
      state.relay = null
    }

  }
  // 6. connect by node id: a private DHT of DHT_NODES `keynet-relay --dht` processes on
  //    loopback; a fresh ForwardProxy that knows only the node id each time. Direct: the node
  //    announces its addresses; via its home relay: it announces only its relay (the caller links
  //    to that relay on demand, rendezvous off so the connection stays there).
  if (want('byid')) R.byId = await byNodeId(ctx, token)
  if (want('cmp') && PEERS.length) R.cmp = await comparePeers(ctx, chunk)
  return R
}

/**
 * The rounds as one result: each number the median over the rounds, sample arrays joined (their
 * median is taken at report time), anything else from the last round.
 */
function mergeRounds(rounds) {
  const merge = (vals) => {
    const v = vals.filter((x) => x !== undefined && x !== null)
    if (!v.length) return vals[vals.length - 1]
    if (v.every((x) => typeof x === 'number')) return median(v)
    if (v.every(Array.isArray)) return v.flat()
    if (v.every((x) => typeof x === 'object')) {
      const out = {}
      for (const k of new Set(v.flatMap(Object.keys))) out[k] = merge(v.map((x) => x[k]))
      return out
    }
    return v[v.length - 1]
  }
  return merge(rounds)
}

/** What failed for a peer, by kind (the text before the first colon), with the first reason. */
function failureLines(name, failures) {
  const kinds = new Map()
  for (const f of failures) {
    const kind = f.slice(0, f.indexOf(':')).replace(/ \d+\/\d+$/, '')
    const k = kinds.get(kind) ?? { n: 0, first: f }
    k.n += 1
    kinds.set(kind, k)
  }
  return [...kinds].map(([kind, k]) => `${name} failed: ${kind} ×${k.n} (first: ${k.first})`)
}

/** keynet beside each peer: one column each, and keynet / the best peer. */
function peerTable(cmp) {
  const names = Object.keys(cmp)
  const peers = names.filter((n) => n !== 'keynet')
  const k = cmp.keynet
  // For each metric: a value per system, and whether higher is better.
  const metrics = [
    [`bulk ${fmtBytes(CFG.bulkBytes)}, MB/s`, (r) => r.bulk?.mbps, true],
    ['bulk, CPU s of every process involved', (r) => r.bulk?.cpuS, false],
    ['bulk, UDP receive-buffer drops (all sockets)', (r) => r.bulk?.drops, false],
    [`round trip p50, µs`, (r) => r.rtt?.p50, false],
    [`round trip p99, µs`, (r) => r.rtt?.p99, false],
    ['setup + first echoed byte, keynet on its live connection, ms', (r) => median(r.setup), false],
    ['setup + first echoed byte over a new connection (keynet: full handshake), ms', (r) => median(r.setupCold), false],
    ['the same to a node met before (keynet: resumed, 0-RTT), ms', (r) => median(r.setupReturning), false],
    [`${CFG.concN} × ${fmtBytes(CFG.concBytes)} at once, wall ms`, (r) => r.conc?.ms, false],
    ['the same: peak RSS of the tunnel, MiB (see below)', (r) => r.concTunnelRss && r.concTunnelRss.peak / MiB, false],
    ['the same: RSS growth of the tunnel (peak - before), MiB', (r) => r.concTunnelRss && (r.concTunnelRss.peak - r.concTunnelRss.before) / MiB, false],
  ]
  const header = ['metric', ...names, 'keynet / best peer']
  const body = metrics.map(([label, get, higher]) => {
    const vals = names.map((n) => get(cmp[n]))
    const peerVals = peers.map((n) => get(cmp[n])).filter(Number.isFinite)
    const best = peerVals.length ? (higher ? Math.max(...peerVals) : Math.min(...peerVals)) : NaN
    return [label, ...vals.map((v) => f(v, v < 10 ? 2 : 1)), ratio(get(k), best)]
  })
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => String(r[i]).length)))
  const line = (cells) => `| ${cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ')} |`
  const sep = `+${widths.map((w) => '-'.repeat(w + 2)).join('+')}+`
  return [
    'keynet beside its peers (each peer in its own processes; keynet in this one; same server, same round):',
    sep, line(header), sep, ...body.map(line), sep,
    'setup: connect (+ CONNECT for keynet) + the first echoed byte; a peer that opens a connection per TCP connection shows the same figure in all three setup rows.',
    "  dumbpipe (iroh) keeps TLS session tickets: after its first connections each one resumes and sends 0-RTT (rustls's debug log: 'Resuming session',",
    "  'EarlyData accepted'; dumbpipe 0.40.1, iroh 1.3.0). Its setup figure is a resumed handshake: like for like, it is keynet's 'met before' row.",
    "tunnel RSS at once: a peer's two processes (peak reset before the phase); keynet's proxies share the bench's process, so its figures are the concurrency",
    '  section\'s: the keynet child process minus the direct-TCP child process (the same clients and server without keynet), peak and growth alike.',
    ...peers.flatMap((n) => failureLines(n, cmp[n].failures ?? [])),
  ].join('\n')
}

/** Prints the table of `R` (merged rounds). */
function report(R, tStart) {
  const mb = (b) => f(b / MiB, 1)
  const rows = []
  if (R.bulkKeynet && R.bulkDirect) {
    rows.push(
      { section: `bulk: ${fmtBytes(CFG.bulkBytes)} one way, one connection (1st byte written -> server's count back)` },
      ['throughput, MB/s (10^6 B/s)', f(R.bulkKeynet.mbps), f(R.bulkDirect.mbps), ratio(R.bulkKeynet.mbps, R.bulkDirect.mbps)],
      ['time, s', f(R.bulkKeynet.ms / 1000, 2), f(R.bulkDirect.ms / 1000, 2), ratio(R.bulkKeynet.ms, R.bulkDirect.ms)],
      ['CPU time of the process (user+sys), s', f(R.bulkKeynet.cpuS, 2), f(R.bulkDirect.cpuS, 2), ratio(R.bulkKeynet.cpuS, R.bulkDirect.cpuS)],
      ['UDP bytes sent by the forward proxy / payload', R.bulkWire ? f(R.bulkWire / CFG.bulkBytes, 3) : 'n/a', '-', ''],
      ['UDP datagrams dropped for a full receive buffer, ≈ % of those sent', R.bulkKeynet.drops === undefined ? 'n/a' : f((100 * R.bulkKeynet.drops) / (CFG.bulkBytes / 1200), 2), '-', ''],
      ['UDP payload per datagram sent (loopback route, MTU 65536), bytes', R.bulkPacket ? f(R.bulkPacket) : 'n/a', '-', ''],
    )
    const e = R.bulkEthernet
    if (e && e.mbps) {
      rows.push(
        ['on a route with Ethernet MTU 1500: throughput, MB/s', f(e.mbps), f(R.bulkDirect.mbps), ratio(e.mbps, R.bulkDirect.mbps)],
        ['on a route with Ethernet MTU 1500: CPU, s', f(e.cpuS, 2), f(R.bulkDirect.cpuS, 2), ratio(e.cpuS, R.bulkDirect.cpuS)],
        ['on a route with Ethernet MTU 1500: UDP payload per datagram, bytes', e.packet ? f(e.packet) : 'n/a', '-', ''],
      )
    } else if (e) {
      rows.push(['on a route with Ethernet MTU 1500', `n/a (${e.skipped})`, '-', ''])
    }
  }
  if (R.rttKeynet && R.rttDirect) {
    rows.push(
      { section: `round trips: ${CFG.rttN} sequential ${RTT_SIZE}-byte echoes, one connection (+${CFG.rttWarmup} warm-up)` },
      ['p50, µs', f(R.rttKeynet.p50), f(R.rttDirect.p50), ratio(R.rttKeynet.p50, R.rttDirect.p50)],
      ['p99, µs', f(R.rttKeynet.p99), f(R.rttDirect.p99), ratio(R.rttKeynet.p99, R.rttDirect.p99)],
      ['mean, µs', f(R.rttKeynet.mean), f(R.rttDirect.mean), ratio(R.rttKeynet.mean, R.rttDirect.mean)],
    )
  }
  if (R.bulkRelayed && R.rttRelayed) {
    rows.push(
      { section: 'relayed (keynet column: through a Relay on loopback, rendezvous off)' },
      ['bulk throughput, MB/s', f(R.bulkRelayed.mbps), f(R.bulkDirect?.mbps), ratio(R.bulkRelayed.mbps, R.bulkDirect?.mbps)],
      ['bulk throughput relayed / keynet direct path', R.bulkKeynet ? f(R.bulkRelayed.mbps / R.bulkKeynet.mbps, 2) : 'n/a', '-', ''],
      ['bulk throughput relayed / keynet direct path on the Ethernet-MTU route', R.bulkEthernet?.mbps ? f(R.bulkRelayed.mbps / R.bulkEthernet.mbps, 2) : 'n/a', '-', ''],
      ['bulk: relayed packets on the UDP channel, %', f(100 * R.bulkRelayed.onChannel, 1), '-', ''],
      ['bulk: bytes per relayed packet', f(R.bulkRelayed.bytesPerPacket), '-', ''],
      ['round trip p50, µs', f(R.rttRelayed.p50), f(R.rttDirect?.p50), ratio(R.rttRelayed.p50, R.rttDirect?.p50)],
      ['round trip p99, µs', f(R.rttRelayed.p99), f(R.rttDirect?.p99), ratio(R.rttRelayed.p99, R.rttDirect?.p99)],
    )
  }
  if (R.cold && R.warm) {
    rows.push(
      { section: "setup, median: net.connect -> '200' head (keynet) / -> 'connect' (TCP)" },
      [`cold CONNECT, new QUIC connection (n=${CFG.coldN}), ms`, f(median(R.cold), 2), f(median(R.tcpConnect), 3), ratio(median(R.cold), median(R.tcpConnect))],
      ...(R.returning ? [[`cold CONNECT to a node met before: resumed, header in 0-RTT (n=${CFG.coldN}, ${R.returningResumed} resumed), ms`, f(median(R.returning), 2), f(median(R.tcpConnect), 3), ratio(median(R.returning), median(R.tcpConnect))]] : []),
      [`warm CONNECT, existing QUIC connection (n=${CFG.warmN}), ms`, f(median(R.warm), 2), f(median(R.tcpConnect), 3), ratio(median(R.warm), median(R.tcpConnect))],
      [`ForwardProxy start() / stop() (n=${CFG.coldN}), ms`, `${f(median(R.fpStart), 1)} / ${f(median(R.fpStop), 1)}`, '-', ''],
    )
  }
  if (R.concKeynet && R.concDirect) {
    rows.push(
      { section: `concurrency: ${CFG.concN} × ${fmtBytes(CFG.concBytes)} echoed at once, verified (fresh child process each)` },
      ['wall time, ms', f(R.concKeynet.ms, 0), f(R.concDirect.ms, 0), ratio(R.concKeynet.ms, R.concDirect.ms)],
      ['RSS before, MiB', mb(R.concKeynet.rssBefore), mb(R.concDirect.rssBefore), ratio(R.concKeynet.rssBefore, R.concDirect.rssBefore)],
      ['RSS peak (sampled every 20 ms), MiB', mb(R.concKeynet.rssPeak), mb(R.concDirect.rssPeak), ratio(R.concKeynet.rssPeak, R.concDirect.rssPeak)],
      ['RSS peak - before, MiB', mb(R.concKeynet.rssPeak - R.concKeynet.rssBefore), mb(R.concDirect.rssPeak - R.concDirect.rssBefore), ratio(R.concKeynet.rssPeak - R.concKeynet.rssBefore, R.concDirect.rssPeak - R.concDirect.rssBefore)],
    )
  }
  if (R.idleKeynet && R.idleDirect) {
    rows.push(
      { section: `idle: ${CFG.idleN} tunnels open at once, one round trip each, then idle (fresh child process each)` },
      ['RSS per tunnel above the baseline, KiB', f(R.idleKeynet.perTunnel / KiB), f(R.idleDirect.perTunnel / KiB), ratio(R.idleKeynet.perTunnel, R.idleDirect.perTunnel)],
    )
  }
  if (R.peers) {
    rows.push(
      { section: `many peers: one ForwardProxy opens connections to ${CFG.peersN} ReverseProxies at once (one child process)` },
      ['RSS per connection side, KiB', f(R.peers.perSide / KiB), '-', ''],
      ['time to open them all, per connection, ms', f(R.peers.ms / R.peers.n, 2), '-', ''],
    )
  }
  if (R.byId) {
    const b = R.byId
    rows.push(
      { section: `connect by node id: private ${DHT_NODES}-node DHT on loopback, fresh ForwardProxy each time (n=${b.n}), median; keynet column: by node id, direct column: by address` },
      ['lookup(nodeId) alone, ms', f(median(b.lookup), 1), '-', ''],
      ['openConnection(nodeId): lookup + connect, direct, ms', f(median(b.direct), 1), f(median(b.byAddr), 1), ratio(median(b.direct), median(b.byAddr))],
      ['openConnection(nodeId): lookup + connect via the home relay (on demand), ms', f(median(b.relayed), 1), f(median(b.byAddr), 1), ratio(median(b.relayed), median(b.byAddr))],
    )
  } else if (want('byid')) {
    rows.push({ section: `connect by node id: skipped (${RELAY_BIN} missing: cargo build -p keynet-relay)` })
  }
  console.log('')
  console.log(table(rows))
  console.log('')
  if (R.cmp) {
    // keynet's tunnel memory at once: its child process against the direct-TCP one (the same
    // clients and server, no keynet).
    if (R.cmp.keynet && R.concKeynet && R.concDirect) {
      const k = R.concKeynet
      const d = R.concDirect
      R.cmp.keynet.concTunnelRss = { before: k.rssBefore - d.rssBefore, peak: k.rssPeak - d.rssPeak }
    }
    console.log(peerTable(R.cmp))
    console.log('')
  } else if (want('cmp')) {
    console.log('peers: none installed or none selected by KEYNET_BENCH_PEERS (npm run bench:setup installs dumbpipe and hyperdht into bench/.peers)')
    console.log('')
  }
  if (R.connInfo) {
    console.log(`QUIC connection after the run: path ${R.connInfo.path}, rtt ${f(R.connInfo.rttMs, 3)} ms, ` +
      `UDP bytes sent ${R.connInfo.bytesSent}, received ${R.connInfo.bytesReceived}`)
  }
  console.log('ratio = keynet / direct TCP (for times, > 1 means keynet is slower; for MB/s, < 1 means keynet is slower).')
  console.log('bulk "UDP bytes / payload" = QUIC datagram bytes the forward proxy sent during the bulk run / payload bytes.')
  console.log('concurrency: each side runs in a fresh child process (this script, same code) so that neither inherits the other\'s')
  console.log('  RSS high-water mark; RSS is that whole process: Node (clients, server, buffers) plus, for keynet, both proxies.')
  if (ROUNDS > 1) console.log(`every number is the median over ${ROUNDS} rounds (sample lists, e.g. setup times, are pooled first).`)
  console.log(`all checks passed; total run time ${(msSince(tStart) / 1000).toFixed(1)} s`)
}

const DHT_NODES = 4
const RELAY_BIN = BUILD.relayBin

/** Starts `keynet-relay --dht 127.0.0.1:0 [--dht-bootstrap B]`; resolves its DHT address. */
function dhtNode(bootstrap) {
  const { spawn } = require('node:child_process')
  const args = ['--dht', '127.0.0.1:0', ...(bootstrap ? ['--dht-bootstrap', bootstrap] : [])]
  const child = spawn(RELAY_BIN, args, { stdio: ['ignore', 'pipe', 'ignore'] })
  state.children.add(child)
  return withTimeout(
    new Promise((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d) => {
        out += d
        const m = /dht listening on (\S+)/.exec(out)
        if (m) resolve(m[1])
      })
      child.once('exit', (code) => reject(new Error(`keynet-relay --dht exited ${code}`)))
    }),
    10_000,
    'DHT node start',
  )
}

/** The "connect by node id" measurements; null when the relay binary is missing. */
async function byNodeId(ctx, token) {
  if (!fs.existsSync(RELAY_BIN)) return null
  progress(`connect by node id: a private ${DHT_NODES}-node DHT, a Relay, two announced nodes ...`)
  const first = await dhtNode()
  const bootstrap = [first, ...(await Promise.all(Array.from({ length: DHT_NODES - 1 }, () => dhtNode(first))))]
  const relay = new Relay()
  state.relay = relay
  await withTimeout(relay.start(), 10_000, 'relay.start')
  const relayOpts = { host: HOST, port: relay.getPort(), nodeId: relay.getNodeId(), upgrade: false }
  const announced = async (opts) => {
    const rp = new ReverseProxy()
    state.extraRps.add(rp)
    await withTimeout(rp.start({ serverHost: HOST, serverPort: ctx.serverPort, ...opts }), 15_000, 'rp.start (by node id)')
    return rp
  }
  const direct = await announced({ discovery: { bootstrap } })
  const relayed = await announced({ relay: relayOpts, discovery: { bootstrap, announceAddresses: false } })
  const caller = async (fn) => {
    const p = new ForwardProxy({ authToken: token })
    state.extraFps.add(p)
    await withTimeout(p.start({ discovery: { bootstrap, announce: false } }), 10_000, 'fp.start (by node id)')
    try {
      return await fn(p)
    } finally {
      await withTimeout(p.stop(), 10_000, 'fp.stop (by node id)')
      state.extraFps.delete(p)
    }
  }
  const timed = async (fn) => {
    const t0 = now()
    await fn()
    return msSince(t0)
  }
  // Both records are on the DHT (a caller gets through) before the clock starts.
  for (const rp of [direct, relayed]) {
    const until = Date.now() + 20_000
    for (;;) {
      const ok = await caller((p) => p.openConnection(rp.getNodeId(), { timeout: 3000 })).then(() => true, () => false)
      if (ok) break
      if (Date.now() > until) throw new Error(`node ${rp.getNodeId()} never became reachable by node id`)
    }
  }
  const n = Math.max(CFG.coldN, 5)
  const out = { n, lookup: [], direct: [], relayed: [], byAddr: [] }
  for (let i = 0; i < n; i++) {
    out.lookup.push(await caller((p) => timed(() => p.lookup(direct.getNodeId(), { timeout: 10_000 }))))
    out.direct.push(await caller((p) => timed(() => p.openConnection(direct.getNodeId(), { timeout: 10_000 }))))
    out.byAddr.push(await caller((p) => timed(() => p.openConnection(direct.getNodeId(), HOST, direct.getIngressPort(), { timeout: 10_000 }))))
    out.relayed.push(
      await caller(async (p) => {
        const ms = await timed(() => p.openConnection(relayed.getNodeId(), { timeout: 10_000 }))
        const links = p.getRelayStatus()
        if (!links.some((l) => l.nodeId === relay.getNodeId())) throw new Error('the caller did not link to the home relay')
        return ms
      }),
    )
  }
  for (const rp of [direct, relayed]) {
    await withTimeout(rp.stop(), 10_000, 'rp.stop (by node id)')
    state.extraRps.delete(rp)
  }
  await withTimeout(relay.stop(), 10_000, 'relay.stop')
  state.relay = null
  for (const c of state.children) c.kill()
  state.children.clear()
  return out
}

/**
 * Setup as a user sees it: connect (and for keynet the CONNECT exchange) plus the first echoed
 * byte, so a peer that connects lazily (after the local TCP accept) pays its handshake here too.
 */
async function setupEcho(open) {
  const t0 = now()
  const { sock } = await open()
  sock.write(Buffer.from([MODE_ECHO, 0x42]))
  await readExactly(sock, 1, CONNECT_TIMEOUT_MS)
  const ms = msSince(t0)
  await closeSocket(sock)
  return ms
}

/**
 * keynet and each installed peer side by side, alternating within the round: bulk (MB/s and
 * CPU seconds of every process involved), round trips, setup with the first echoed byte, and
 * the concurrency run's wall time. keynet's numbers here come from the same round's runs.
 */
async function comparePeers(ctx, chunk) {
  const out = {}
  const systems = [{ name: 'keynet', open: ctx.tunnel, cpuS: () => 0 }]
  for (const peer of PEERS) {
    progress(`peers: starting ${peer.name} (its own processes) ...`)
    const p = await startPeer(peer, ctx.serverPort).catch((e) => {
      out[peer.name] = { failures: [`start: ${e.message}`] }
      return null
    })
    if (!p) continue
    state.peers.add(p)
    // A peer's reset between measurements must not end the bench (the measurement that sees
    // it fails; see `tried`).
    const open = () => connectDirect(p.port).then((c) => (c.sock.on('error', () => {}), c))
    systems.push({ name: peer.name, open, cpuS: p.cpuS, rss: p.rss, stop: p.stop })
  }
  try {
    for (const sys of systems) {
      progress(`peers: ${sys.name}: bulk, round trips, setup, concurrency ...`)
      const r = { failures: [] }
      // A peer's failure is one of its results (a cell reads n/a, the reason is printed under
      // the table); keynet's is the bench's failure.
      const tried = async (what, fn) => {
        if (sys.name === 'keynet') return fn()
        try {
          return await fn()
        } catch (e) {
          r.failures.push(`${what}: ${e.message}`)
          return undefined
        }
      }
      await tried('warm-up', async () => {
        const { sock } = await sys.open()
        await pingPong(sock, 50, 0, RTT_SIZE)
        await closeSocket(sock)
      })
      r.bulk = await tried('bulk', async () => {
        const c0 = sys.cpuS()
        const { sock } = await sys.open()
        const b = await bulk(sock, CFG.bulkBytes, chunk)
        b.cpuS += sys.cpuS() - c0
        return b
      })
      r.rtt = await tried('round trips', async () => {
        const { sock } = await sys.open()
        const rtt = await pingPong(sock, CFG.rttN, CFG.rttWarmup, RTT_SIZE)
        await closeSocket(sock)
        return rtt
      })
      r.setup = []
      for (let i = 0; i < CFG.warmN; i++) {
        const ms = await tried(`setup ${i + 1}/${CFG.warmN}`, () => setupEcho(sys.open))
        if (ms !== undefined) r.setup.push(ms)
      }
      // A new QUIC connection each time: a fresh ForwardProxy for keynet (its start() not
      // counted); a peer that connects per TCP connection already did that above.
      r.setupCold = sys.name === 'keynet' ? [] : r.setup
      for (let i = 0; sys.name === 'keynet' && i < CFG.coldN; i++) {
        const fp = new ForwardProxy({ authToken: ctx.token })
        state.extraFps.add(fp)
        await withTimeout(fp.start(), 10_000, 'fp.start (peers, cold)')
        r.setupCold.push(await setupEcho(() => connectTunnel({ proxyPort: fp.getProxyPort(), ingressPort: ctx.ingressPort, nodeId: ctx.nodeId, token: ctx.token })))
        await withTimeout(fp.stop(), 10_000, 'fp.stop (peers, cold)')
        state.extraFps.delete(fp)
      }
      // keynet reconnecting to a node it verified before (a peer opens a connection per TCP
      // connection: the same as its first row).
      r.setupReturning = sys.name === 'keynet' ? [] : r.setup
      for (let i = 0; sys.name === 'keynet' && i < CFG.coldN; i++) {
        await withTimeout(ctx.fp.closeConnection(HOST, ctx.ingressPort), 10_000, 'closeConnection (peers, returning)')
        r.setupReturning.push(await setupEcho(ctx.tunnel))
      }
      // A peer's tunnel memory: its two processes' peak RSS during this phase (keynet's is
      // measured in fresh child processes, against the same load without keynet: see report).
      const peakReset = sys.rss?.startPeak()
      const rssBefore = sys.rss?.now()
      r.conc = await tried('at once', () => withTimeout(concurrent(CFG.concN, CFG.concBytes, sys.open), PHASE_TIMEOUT_MS, `concurrent ${sys.name}`))
      if (r.conc && peakReset) r.concTunnelRss = { before: rssBefore, peak: sys.rss.peak() }
      out[sys.name] = r
    }
  } finally {
    for (const sys of systems) {
      if (!sys.stop) continue
      await sys.stop()
    }
    state.peers.clear()
  }
  return out
}

async function stopAll() {
  for (const p of state.peers) await p.stop().catch(() => {})
  state.peers.clear()
  for (const c of state.children) c.kill()
  state.children.clear()
  const jobs = []
  for (const p of state.extraFps) jobs.push(withTimeout(p.stop(), 10_000, 'extra fp.stop'))
  state.extraFps.clear()
  for (const p of state.extraRps) jobs.push(withTimeout(p.stop(), 10_000, 'extra rp.stop'))
  state.extraRps.clear()
  if (state.relay) jobs.push(withTimeout(state.relay.stop(), 10_000, 'relay.stop'))
  state.relay = null
  if (state.fp) jobs.push(withTimeout(state.fp.stop(), 10_000, 'fp.stop'))
  if (state.rp) jobs.push(withTimeout(state.rp.stop(), 10_000, 'rp.stop'))
  state.fp = state.rp = null
  await Promise.allSettled(jobs)
  if (state.server) {
    const server = state.server
    state.server = null
    await withTimeout(new Promise((resolve) => server.close(() => resolve())), 5000, 'server.close').catch(() => {})
  }
}

const watchdog = setTimeout(() => {
  console.error(`bench: did not finish within ${OVERALL_TIMEOUT_MS / 1000} s`)
  process.exit(3)
}, OVERALL_TIMEOUT_MS)
watchdog.unref()

const childArg = process.argv.find((a) => a.startsWith('--concurrency-child='))
const run = childArg ? () => child(childArg.split('=')[1]) : main

run().then(
  () => {
    process.exitCode = 0
  },
  (e) => {
    console.error(`bench${childArg ? ` (${childArg})` : ''} failed: ${e && e.stack ? e.stack : e}`)
    if (childArg && process.connected) process.send({ error: String(e && e.message) })
    stopAll()
      .catch(() => {})
      .finally(() => process.exit(1))
  },
)
