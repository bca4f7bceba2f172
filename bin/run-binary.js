'use strict'
// Runs one of the native programs (`keynet`, `keynet-relay`) that the keynet-<platform> package
// ships next to the addon, as `npx keynet-relay ...` after `npm install keynet`: stdio is the
// caller's, SIGINT/SIGTERM/SIGHUP are passed on (SIGTERM drains, SIGHUP reloads), and the exit
// code is the program's. In a checkout, the cargo build in target/ is used instead.

const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { platformName } = require('../loader.js')

/** Where `name` is: the platform package first, then a local cargo build; null if nowhere. */
function findBinary(name) {
  const file = process.platform === 'win32' ? `${name}.exe` : name
  const candidates = []
  try {
    candidates.push(path.join(path.dirname(require.resolve(`keynet-${platformName()}/package.json`)), file))
  } catch {}
  const shipped = candidates.find((p) => fs.existsSync(p))
  if (shipped) return shipped
  // A checkout: the newer of the release and debug builds.
  const root = path.join(__dirname, '..')
  const built = ['release', 'debug'].map((p) => path.join(root, 'target', p, file)).filter((p) => fs.existsSync(p))
  built.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)
  return built[0] || null
}

function run(name) {
  const bin = findBinary(name)
  if (!bin) {
    const pkg = `keynet-${platformName()}`
    console.error(
      `${name}: no ${name} binary for this platform (${platformName()}). It ships in the package ${pkg} ` +
        `(an optional dependency of keynet: npm install ${pkg}), or build it with cargo build --release -p keynet-relay.`,
    )
    process.exit(1)
  }
  const child = spawn(bin, process.argv.slice(2), { stdio: 'inherit' })
  const signals = process.platform === 'win32' ? ['SIGINT', 'SIGTERM'] : ['SIGINT', 'SIGTERM', 'SIGHUP']
  for (const s of signals) process.on(s, () => child.kill(s))
  child.on('error', (e) => {
    console.error(`${name}: cannot run ${bin}: ${e.message}`)
    process.exit(1)
  })
  child.on('exit', (code, signal) => {
    if (signal) {
      // End the same way, so a supervisor sees the signal.
      for (const s of signals) process.removeAllListeners(s)
      process.kill(process.pid, signal)
    } else process.exit(code)
  })
}

module.exports = { findBinary, run }
