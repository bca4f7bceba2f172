'use strict'
// The build the benchmarks measure: cargo profile `profiling` (release code generation, LTO,
// with symbols kept so `perf` can name functions; see Cargo.toml), for the addon and
// keynet-relay. Cargo is incremental: quick when nothing changed, several minutes from scratch.
// `KEYNET_BENCH_PROFILE=dev` measures the dev build instead (whatever `npm test` built);
// NAPI_RS_NATIVE_LIBRARY_PATH=FILE measures that addon binary as it is (e.g. an older build).
//
// Required before `require('..')`: it points the loader at the build through napi-rs's
// NAPI_RS_NATIVE_LIBRARY_PATH, leaving the dev build the tests use untouched.

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.join(__dirname, '..')

/** Builds (if needed) and selects the measured build; returns `{ profile, addon, relayBin }`. */
function useBenchBuild() {
  const exe = process.platform === 'win32' ? '.exe' : ''
  if (process.env.KEYNET_BENCH_PROFILE === 'dev') {
    return { profile: 'dev', addon: null, relayBin: path.join(ROOT, 'target', 'debug', `keynet-relay${exe}`) }
  }
  const profile = 'profiling'
  const dir = path.join(ROOT, 'target', profile)
  const addon = path.join(dir, 'keynet.node')
  const relayBin = path.join(dir, `keynet-relay${exe}`)
  // A binary chosen by the caller (an older build to compare with), or inherited by a child
  // process of a benchmark: measured as it is, no build.
  const chosen = process.env.NAPI_RS_NATIVE_LIBRARY_PATH
  if (chosen) return { profile: chosen === addon ? profile : `given (${chosen})`, addon: chosen, relayBin }
  console.log(`building the ${profile} profile (release code, symbols kept) of the addon and keynet-relay ...`)
  const r = spawnSync('cargo', ['build', '--profile', profile, '-p', 'keynet', '-p', 'keynet-relay'], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { CARGO_BUILD_JOBS: '2', ...process.env },
  })
  if (r.status !== 0) throw new Error(`cargo build --profile ${profile} failed (exit ${r.status ?? r.signal})`)
  const lib = { linux: 'libkeynet.so', darwin: 'libkeynet.dylib', win32: 'keynet.dll' }[process.platform] || 'libkeynet.so'
  fs.copyFileSync(path.join(dir, lib), addon)
  process.env.NAPI_RS_NATIVE_LIBRARY_PATH = addon
  return { profile, addon, relayBin }
}

module.exports = { useBenchBuild }
