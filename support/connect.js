'use strict'
// A raw HTTP CONNECT client of the forward proxy: what grpc-js, curl and every other proxy-aware
// client do, in a few lines the tests, the bench and the lab can watch byte by byte.

const net = require('node:net')
const { withTimeout } = require('./timeout')

const LOOPBACK = '127.0.0.1'
const WAIT = 10_000

/** The forward proxy takes its auth token as Basic credentials (no password). */
function basicAuth(token) {
  return 'Basic ' + Buffer.from(token).toString('base64')
}

/**
 * The bytes of a request head: `METHOD target` with a Host line, then Proxy-Authorization (from
 * `auth`, else from `token`; left out when both are missing or `auth` is null) and `headers`.
 * A method other than CONNECT, or a missing auth, lets tests probe the proxy's refusals.
 */
function requestHead({ method = 'CONNECT', target, token, auth = token === undefined ? null : basicAuth(token), headers = [] }) {
  const lines = [`${method} ${target} HTTP/1.1`, `Host: ${target}`]
  if (auth != null) lines.push(`Proxy-Authorization: ${auth}`)
  lines.push(...headers)
  return lines.join('\r\n') + '\r\n\r\n'
}

/** `{ status (null if the status line is not HTTP/1.x), statusLine, headers (lower-case names), head }` */
function parseHead(text) {
  const lines = text.split('\r\n')
  const statusLine = lines[0]
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine)
  const headers = {}
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':')
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
  }
  return { status: m ? Number(m[1]) : null, statusLine, headers, head: text }
}

/**
 * Reads from `socket` until `enough(buffered)` returns `[value, used]`: resolves `value`, pushes
 * the bytes after `used` back and leaves the socket paused, so later readers get exactly what
 * follows. If the socket ends first, settles with `onClose(buffered)` (a thrown error rejects).
 * `timeout` 0: no limit; `what` names the wait in the timeout error.
 */
function readUntil(socket, { enough, onClose, timeout = WAIT, what }) {
  let cleanup
  const p = new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    const onData = (d) => {
      buf = Buffer.concat([buf, d])
      const got = enough(buf)
      if (!got) return
      socket.pause()
      const [value, used] = got
      if (buf.length > used) socket.unshift(buf.subarray(used))
      cleanup()
      resolve(value)
    }
    const onEnd = () => {
      cleanup()
      try {
        resolve(onClose(buf))
      } catch (e) {
        reject(e)
      }
    }
    cleanup = () => {
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('close', onEnd)
    }
    socket.on('data', onData)
    socket.on('end', onEnd)
    socket.on('close', onEnd)
    socket.resume()
  })
  return withTimeout(p, timeout, what).finally(() => cleanup())
}

/**
 * Reads a response head from `socket`. Bytes after the head are pushed back into the socket,
 * which is left paused: later readers get exactly the tunnel's bytes. If the socket closes first,
 * resolves `{ status: null, closed: true, raw }`. `timeout` 0: no limit.
 */
function readHead(socket, timeout = WAIT) {
  return readUntil(socket, {
    enough: (buf) => {
      const i = buf.indexOf('\r\n\r\n')
      return i < 0 ? null : [parseHead(buf.subarray(0, i + 4).toString('latin1')), i + 4]
    },
    onClose: (buf) => ({ status: null, closed: true, raw: buf.toString('latin1') }),
    timeout,
    what: 'response head',
  })
}

/**
 * Connects to the forward proxy's HTTP port (`host:port`), sends a request head (requestHead's
 * options, or `raw` bytes) and reads the answer. Resolves `{ status, statusLine, headers, head,
 * socket }` (or `{ status: null, closed: true, raw, socket }`), the socket paused right after
 * the head: the tunnel's bytes for a 200, the body otherwise. `timeout` bounds the connect and
 * the answer together (0: no limit); `socketOpts` go to net.connect. A socket error before the
 * answer rejects (the socket destroyed); afterwards errors are the caller's to handle.
 */
async function request({ port, host = LOOPBACK, socketOpts, timeout = WAIT, raw, ...req }) {
  const socket = net.connect({ port, host, ...socketOpts })
  let error = null
  const onError = (e) => (error = error || e)
  socket.on('error', onError)
  const exchange = (async () => {
    await new Promise((resolve) => {
      const done = () => {
        socket.off('connect', done).off('close', done)
        resolve()
      }
      socket.once('connect', done).once('close', done)
    })
    if (error || socket.destroyed) throw error || new Error('the proxy connection closed before it was established')
    const answer = readHead(socket, 0)
    socket.write(raw ?? requestHead(req))
    return answer
  })()
  try {
    const res = await withTimeout(exchange, timeout, 'the CONNECT answer', () => socket.destroy())
    if (error) throw error
    return { ...res, socket }
  } catch (e) {
    socket.destroy()
    throw e
  } finally {
    socket.off('error', onError)
  }
}

/** A CONNECT tunnel (request's options): resolves request's answer; rejects unless it is 200. */
async function openTunnel(opts) {
  const res = await request(opts)
  if (res.status !== 200) {
    res.socket.destroy()
    throw new Error(`CONNECT answered ${res.statusLine || JSON.stringify(res.raw)}`)
  }
  return res
}

module.exports = { basicAuth, requestHead, parseHead, readUntil, readHead, request, openTunnel }
