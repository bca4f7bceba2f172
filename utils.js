'use strict'
// The original's network helpers that callers used (its `utils` module), for code written
// against it. Hosts are IP addresses, as everywhere in keynet.

const net = require('node:net')

/** `host:port`, IPv6 in brackets: `buildAddress('::1', 100)` is `'[::1]:100'`. */
function buildAddress(host, port = 0) {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`
}

/**
 * The `[host, port]` of `host:port` or `[v6]:port` (brackets removed); the port defaults to 80,
 * as the original's URL-based parse did. Throws a TypeError for something that is not one.
 */
function parseAddress(address) {
  if (typeof address !== 'string') throw new TypeError(`address must be a string, got ${typeof address}`)
  let url
  try {
    url = new URL(`pk://${address}`)
  } catch {
    throw new TypeError(`not a host:port address: ${JSON.stringify(address)}`)
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
  if (host === '' || url.pathname !== '' || url.search !== '' || url.username !== '') {
    throw new TypeError(`not a host:port address: ${JSON.stringify(address)}`)
  }
  return [host, url.port === '' ? 80 : Number(url.port)]
}

/** Whether `host` is an IPv4 or IPv6 address. */
function isValidHost(host) {
  return typeof host === 'string' && net.isIP(host) !== 0
}

/** `0.0.0.0` → `127.0.0.1` and `::` (in any spelling) → `::1`; any other host unchanged. */
function resolvesZeroIP(host) {
  if (net.isIPv4(host) && host === '0.0.0.0') return '127.0.0.1'
  if (net.isIPv6(host) && /^[0:]+$/.test(host)) return '::1'
  return host
}

/** The `Proxy-Authorization` value for `token`: `Basic ` and its base64. */
function toAuthToken(token) {
  return `Basic ${Buffer.from(token).toString('base64')}`
}

/**
 * The original's timer object (`{ timer, timedOut, timerP }`): `timerP` resolves and `timedOut`
 * turns true after `ms`. `openConnection` takes one where the original did, as its deadline.
 */
function timerStart(ms) {
  const timer = { timer: undefined, timedOut: false, timerP: undefined }
  timer.timerP = new Promise((resolve) => {
    timer.timer = setTimeout(() => {
      timer.timedOut = true
      resolve()
    }, ms)
  })
  return timer
}

/** Cancels a `timerStart` timer (its `timerP` then never resolves). */
function timerStop(timer) {
  clearTimeout(timer.timer)
}

module.exports = { buildAddress, parseAddress, isValidHost, resolvesZeroIP, toAuthToken, timerStart, timerStop }
