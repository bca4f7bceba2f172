'use strict'
// The one bounded wait every support helper (and its users) builds on: no wait in the tests,
// the demo, the bench or the lab may hang forever.

/**
 * Rejects with a message naming `what` if `promise` has not settled within `ms` (calling
 * `onTimeout` first, e.g. to destroy a socket). `ms` 0 or Infinity: no limit.
 */
function withTimeout(promise, ms, what, onTimeout) {
  if (!ms || ms === Infinity) return Promise.resolve(promise)
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      if (onTimeout) onTimeout()
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`))
    }, ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

module.exports = { withTimeout }
