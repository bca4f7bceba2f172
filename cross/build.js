'use strict'
// `npm run cross [-- --targets T1,T2] [--profile dev|release]`: builds the addon and the
// `keynet` / `keynet-relay` binaries (iOS: the crates/ffi static library) for each target of
// cross/targets.js into dist/TARGET/, checks that each artifact exports what its loader needs,
// and prints a table (also written to dist/cross-build.json for cross/test.js). A target whose
// toolchain cannot be had is a row with its error, not a stop; one no registry offers (Android's
// NDK) is 'skipped' and fails the run only when named in --targets.

const fs = require('node:fs')
const path = require('node:path')
const { ROOT, DIST, SCRATCH, TARGETS } = require('./targets')
const { sh, aptInstall, zigInstall, foreignNode } = require('./tools')

const FFI_SYMBOLS = ['keynet_runtime_new', 'keynet_reverse_proxy_start', 'keynet_forward_proxy_start', 'keynet_last_error']

function parseArgs(argv) {
  const out = { targets: Object.keys(TARGETS), profile: 'release' }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--targets') out.targets = argv[++i].split(',').filter(Boolean)
    else if (argv[i] === '--profile') out.profile = argv[++i]
    else throw new Error(`unknown argument ${argv[i]} (--targets T1,T2 --profile dev|release)`)
  }
  for (const t of out.targets) if (!TARGETS[t]) throw new Error(`unknown target ${t}: one of ${Object.keys(TARGETS).join(', ')}`)
  if (!['dev', 'release'].includes(out.profile)) throw new Error(`--profile ${out.profile}: dev or release`)
  return out
}

/** An import library for node.exe, which napi-build links the Windows addon against. */
function nodeImportLib(spec) {
  const dir = path.join(SCRATCH, 'winlib')
  if (fs.existsSync(path.join(dir, 'libnode.dll.a'))) return dir
  fs.mkdirSync(dir, { recursive: true })
  const exe = foreignNode(spec.node)
  const def = sh('gendef', ['-', exe], { capture: true })
  if (def.code !== 0 || !def.stdout.includes('EXPORTS')) throw new Error(`gendef node.exe: ${def.stderr}`)
  fs.writeFileSync(path.join(dir, 'node.def'), def.stdout)
  const lib = sh('x86_64-w64-mingw32-dlltool', ['-d', path.join(dir, 'node.def'), '-D', 'node.exe', '-l', path.join(dir, 'libnode.dll.a')], { capture: true })
  if (lib.code !== 0) throw new Error(`dlltool: ${lib.stderr}`)
  fs.writeFileSync(path.join(dir, 'libnode.dll'), '') // napi-build checks that it exists
  return dir
}

/** A toolchain this machine cannot have: the row says so, and only fails the run if named. */
class Skipped extends Error {}

/** The environment and cargo subcommand that build `target`; throws with what is missing. */
function toolchain(target, spec) {
  const key = target.toUpperCase().replaceAll('-', '_')
  const under = target.replaceAll('-', '_')
  if (spec.apt && !aptInstall(spec.apt)) throw new Error(`needs Debian packages ${spec.apt.join(' ')}`)
  if (spec.how === 'gcc') {
    return {
      cargo: ['build'],
      env: { [`CARGO_TARGET_${key}_LINKER`]: `${spec.gcc}-gcc`, [`CC_${under}`]: `${spec.gcc}-gcc`, [`AR_${under}`]: `${spec.gcc}-ar` },
    }
  }
  if (spec.how === 'mingw') {
    return { cargo: ['build'], env: { LIBNODE_PATH: nodeImportLib(spec) } }
  }
  if (spec.how === 'ndk') {
    const ndk = process.env.ANDROID_NDK_HOME || process.env.ANDROID_NDK_LATEST_HOME
    if (!ndk) throw new Skipped('needs an Android NDK (set ANDROID_NDK_HOME); no package registry carries one')
    const bin = path.join(ndk, 'toolchains', 'llvm', 'prebuilt', 'linux-x86_64', 'bin')
    const clang = path.join(bin, `${target}${spec.api}-clang`)
    return { cargo: ['build'], env: { [`CARGO_TARGET_${key}_LINKER`]: clang, [`CC_${under}`]: clang, [`AR_${under}`]: path.join(bin, 'llvm-ar') } }
  }
  if (spec.how === 'ios') {
    // A static library links nothing: only ring's C needs a compiler. Debian's clang compiles
    // it without an SDK (ring builds without libc headers; its one Apple header is stood in).
    const ar = llvmTool('llvm-ar')
    if (!ar) throw new Error('needs llvm-ar (rustup component add llvm-tools)')
    const include = path.join(__dirname, 'ios-include')
    return {
      cargo: ['build'],
      env: {
        [`CC_${under}`]: 'clang',
        [`AR_${under}`]: ar,
        [`CFLAGS_${under}`]: `-nostdlibinc -DRING_CORE_NOSTDLIBINC=1 -isystem ${include}`,
        // cc-rs asks xcrun for an SDK unless SDKROOT names a directory; nothing is read from it.
        SDKROOT: include,
        IPHONEOS_DEPLOYMENT_TARGET: '13.0',
      },
    }
  }
  if (!zigInstall()) throw new Error('needs cargo-zigbuild and ziglang (pip install ziglang cargo-zigbuild)')
  // The musl addon links the C runtime dynamically (Node loads it into its own process); zig
  // still links the programs statically (static-pie), so they run on any Linux.
  const env = spec.musl ? { [`CARGO_TARGET_${key}_RUSTFLAGS`]: '-C target-feature=-crt-static' } : {}
  return { cargo: ['zigbuild'], env }
}

/** `tool` (llvm-nm, llvm-ar) from rustup's llvm-tools component, which reads Mach-O, or null. */
function llvmTool(tool) {
  const sysroot = sh('rustc', ['--print', 'sysroot'], { capture: true }).stdout.trim()
  const host = /host: (\S+)/.exec(sh('rustc', ['-vV'], { capture: true }).stdout)?.[1]
  const file = path.join(sysroot, 'lib', 'rustlib', host || '', 'bin', tool)
  if (!fs.existsSync(file)) sh('rustup', ['component', 'add', 'llvm-tools'], { capture: true })
  return fs.existsSync(file) ? file : null
}

/** Which of `names` `file` does not define as global symbols (ELF: nm -D; PE: its export table; Mach-O and archives: llvm-nm). */
function exportsAll(file, names) {
  const head = fs.readFileSync(file).subarray(0, 4).toString('latin1')
  let text
  if (head === '\x7fELF') text = sh('nm', ['-D', '--defined-only', file], { capture: true }).stdout
  else if (head.startsWith('MZ')) text = sh('x86_64-w64-mingw32-objdump', ['-p', file], { capture: true }).stdout
  else {
    const nm = llvmTool('llvm-nm')
    if (!nm) throw new Error(`no tool here reads the symbols of ${path.basename(file)} (rustup component add llvm-tools)`)
    text = sh(nm, ['-g', '--defined-only', file], { capture: true }).stdout
  }
  return names.filter((n) => !new RegExp(`\\b_?${n}\\b`).test(text))
}

function buildOne(target, profile) {
  const spec = TARGETS[target]
  const row = { target, built: false, error: null, artifacts: [], size: 0, symbols: '-', seconds: 0 }
  const t0 = Date.now()
  try {
    const { cargo, env } = toolchain(target, spec)
    if (sh('rustup', ['target', 'add', target], { capture: true }).code !== 0) throw new Error(`rustup target add ${target} failed`)
    const packages = spec.ffi ? ['-p', 'keynet-ffi'] : ['-p', 'keynet', '-p', 'keynet-relay']
    const r = sh('cargo', [...cargo, '--profile', profile, '--target', target, ...packages], { env: { CARGO_BUILD_JOBS: process.env.CARGO_BUILD_JOBS || '2', ...env }, capture: true })
    if (r.code !== 0) {
      const lines = r.stderr.split('\n').filter((l) => /^error|note: .*(cannot find|undefined|not found)/.test(l))
      throw new Error(lines.slice(0, 3).join(' / ') || r.stderr.slice(-400))
    }
    const out = path.join(ROOT, 'target', target, profile === 'dev' ? 'debug' : 'release')
    const dist = path.join(DIST, target)
    fs.mkdirSync(dist, { recursive: true })
    const copy = (from, to) => {
      fs.copyFileSync(path.join(out, from), path.join(dist, to))
      row.artifacts.push(to)
      row.size += fs.statSync(path.join(dist, to)).size
      return path.join(dist, to)
    }
    let missing
    if (spec.ffi) {
      missing = exportsAll(copy('libkeynet_ffi.a', 'libkeynet_ffi.a'), FFI_SYMBOLS)
      fs.copyFileSync(path.join(ROOT, 'crates', 'ffi', 'include', 'keynet.h'), path.join(dist, 'keynet.h'))
    } else {
      missing = exportsAll(copy(spec.addon, `keynet.${spec.platform}.node`), ['napi_register_module_v1'])
      for (const bin of ['keynet', 'keynet-relay']) copy(bin + spec.relay, bin + spec.relay)
    }
    row.symbols = missing.length ? `missing ${missing.join(', ')}` : spec.ffi ? `${FFI_SYMBOLS.length} keynet_*` : 'napi_register_module_v1'
    row.built = !missing.length
    if (missing.length) row.error = row.symbols
  } catch (e) {
    row.error = e.message
    row.skipped = e instanceof Skipped
  }
  row.seconds = Math.round((Date.now() - t0) / 1000)
  return row
}

function main() {
  const argv = process.argv.slice(2)
  const { targets, profile } = parseArgs(argv)
  const named = argv.includes('--targets')
  const rows = []
  fs.mkdirSync(DIST, { recursive: true })
  const file = path.join(DIST, 'cross-build.json')
  for (const target of targets) {
    console.log(`=== ${target} (${profile})`)
    const row = buildOne(target, profile)
    console.log(row.built ? `built in ${row.seconds} s: ${row.artifacts.join(', ')}` : `not built: ${row.error}`)
    rows.push(row)
    // Saved per target: cross/test.js can run one while the next builds.
    const builds = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {}
    builds[target] = { ...row, profile }
    fs.writeFileSync(file, JSON.stringify(builds, null, 2))
  }
  console.log('\n| target | built | size | exports checked | time |\n|---|---|---|---|---|')
  for (const r of rows) {
    const built = r.built ? 'yes' : r.skipped ? `skipped: ${r.error}` : `no: ${r.error}`
    console.log(`| ${r.target} | ${built} | ${r.size ? (r.size / 1048576).toFixed(1) + ' MiB' : '-'} | ${r.symbols} | ${r.seconds} s |`)
  }
  process.exitCode = rows.every((r) => r.built || (r.skipped && !named)) ? 0 : 1
}

main()
