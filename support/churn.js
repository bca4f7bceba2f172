'use strict'
// Tunnel churn, the original usage pattern (a new gRPC client per call): `workers` loops, each
// opening a CONNECT tunnel through the forward proxy, echoing a random 1-64 KiB payload through
// it, half-closing and waiting for the end, then starting over. Shared by the churn test (in a
// network namespace with a small ephemeral port range) and `npm run soak`.

const crypto = require('node:crypto')
const net = require('node:net')
const { once } = require('node:events')
const { openTunnel } = require('./connect')
const { withTimeout } = require('./timeout')

const KiB = 1024

/**
 * Runs until `count` tunnels were started or `durationMs` passed (whichever is given; both:
 * whichever comes first). `target` is the CONNECT target, `token` the proxy token. Every tunnel
 * is bounded by `tunnelTimeoutMs`. Resolves `{ tunnels, ok, bytes, errors: { kind: n },
 * firstError, ms }`; `onTick(summarySoFar)` runs once per finished tunnel (keep it cheap).
 */
async function churn({ port, host, target, token, workers = 8, count = Infinity, durationMs = Infinity, minBytes = 1 * KiB, maxBytes = 64 * KiB, tunnelTimeoutMs = 20_000, onTick = () => {} }) {
  if (count === Infinity && durationMs === Infinity) throw new Error('churn needs a count or a duration')
  const t0 = Date.now()
  const sum = { tunnels: 0, ok: 0, bytes: 0, errors: {}, firstError: null, ms: 0 }
  const more = () => sum.tunnels < count && Date.now() - t0 < durationMs
  const worker = async () => {
    while (more()) {
      sum.tunnels++
      try {
        const n = minBytes + crypto.randomInt(maxBytes - minBytes + 1)
        await withTimeout(echoOnce({ port, host, target, token, n }), tunnelTimeoutMs, 'a churn tunnel')
        sum.ok++
        sum.bytes += n
      } catch (e) {
        const kind = errorKind(e)
        sum.errors[kind] = (sum.errors[kind] || 0) + 1
        if (!sum.firstError) sum.firstError = e.message
      }
      onTick(sum)
    }
  }
  await Promise.all(Array.from({ length: workers }, worker))
  sum.ms = Date.now() - t0
  return sum
}

/**
 * One tunnel: `n` random bytes out, the same `n` bytes back, then the tunnel's clean end. Without
 * a `target`, a plain TCP connection to `host:port` (the echo server itself: the direct baseline).
 */
async function echoOnce({ port, host, target, token, n }) {
  const socket = target ? (await openTunnel({ port, host, target, token, socketOpts: { noDelay: true }, timeout: 0 })).socket : await plainConnect(port, host)
  try {
    const payload = crypto.randomBytes(n)
    const chunks = []
    let got = 0
    const ended = new Promise((resolve, reject) => {
      socket.on('data', (d) => {
        chunks.push(d)
        got += d.length
      })
      socket.on('end', resolve)
      socket.on('error', reject)
      socket.on('close', () => reject(new Error('tunnel closed before its end')))
    })
    socket.resume()
    socket.end(payload)
    await ended
    const back = Buffer.concat(chunks, got)
    if (got !== n) throw Object.assign(new Error(`echoed ${got} of ${n} bytes`), { kind: 'short' })
    if (!back.equals(payload)) throw Object.assign(new Error('echoed bytes differ'), { kind: 'corrupt' })
  } finally {
    socket.destroy()
  }
}

async function plainConnect(port, host = '127.0.0.1') {
  const socket = net.connect({ port, host, noDelay: true })
  socket.pause()
  try {
    await Promise.race([once(socket, 'connect'), once(socket, 'close').then(() => { throw new Error('closed before connecting') })])
  } catch (e) {
    socket.destroy()
    throw e
  }
  return socket
}

/** A short name for an error, for the summary's counts ('502', 'ECONNRESET', 'timeout', ...). */
function errorKind(e) {
  if (e.kind) return e.kind
  if (e.code) return e.code
  const status = /CONNECT answered HTTP\/1\.1 (\d{3})/.exec(e.message)
  if (status) return status[1]
  if (/timed out/.test(e.message)) return 'timeout'
  return 'other'
}

module.exports = { churn, echoOnce }
