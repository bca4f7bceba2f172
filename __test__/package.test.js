'use strict'
// Packaging: the packed main package and the host's platform package, installed into a fresh
// Node app outside the repository, make a gRPC call through the proxies (ava runs there) and
// put `keynet` and `keynet-relay` on the app's npx; and
// without a platform package, loading keynet fails with an error naming what to install.

const test = require('ava')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { platformName } = require('../loader.js')

const repo = path.join(__dirname, '..')
const platform = platformName()

function tmp(t, prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

function npm(args, cwd) {
  return execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

function installedVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(repo, 'node_modules', name, 'package.json'), 'utf8')).version
}

test('the packed packages install into a fresh Node app and carry a grpc-js call there', async (t) => {
  const local = `keynet.${platform}.node`
  t.true(fs.existsSync(path.join(repo, local)), `${local} is built (npm test builds it first)`)
  const work = tmp(t, 'keynet-pack-')
  // The platform package, as the release workflow assembles it: npm/<platform> + the binary.
  const plat = path.join(work, 'platform')
  fs.mkdirSync(plat)
  fs.copyFileSync(path.join(repo, 'npm', platform, 'package.json'), path.join(plat, 'package.json'))
  fs.copyFileSync(path.join(repo, local), path.join(plat, local))
  // With the `keynet` and `keynet-relay` programs: the debug builds npm test made, or the
  // release workflow's (KEYNET_PROGRAMS).
  const programs = process.env.KEYNET_PROGRAMS ? path.resolve(repo, process.env.KEYNET_PROGRAMS) : path.join(repo, 'target', 'debug')
  const exe = process.platform === 'win32' ? '.exe' : ''
  for (const bin of ['keynet', 'keynet-relay']) fs.copyFileSync(path.join(programs, bin + exe), path.join(plat, bin + exe))
  npm(['pack', '--pack-destination', work], plat)
  npm(['pack', '--pack-destination', work], repo)
  const version = JSON.parse(fs.readFileSync(path.join(repo, 'package.json'), 'utf8')).version
  const mainTgz = path.join(work, `keynet-${version}.tgz`)
  const platTgz = path.join(work, `keynet-${platform}-${version}.tgz`)
  t.true(fs.existsSync(mainTgz) && fs.existsSync(platTgz))
  // The main tarball holds the JS and types only, never a binary.
  const listing = execFileSync('tar', ['-tzf', mainTgz], { encoding: 'utf8' })
  t.false(/\.node$/m.test(listing), listing)
  t.true(listing.includes('package/index.d.ts'))

  const app = path.join(work, 'app')
  fs.mkdirSync(path.join(app, 'test'), { recursive: true })
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, scripts: { test: 'ava' } }))
  fs.copyFileSync(path.join(__dirname, 'fixtures', 'app', 'grpc.app.js'), path.join(app, 'test', 'grpc.test.js'))
  npm(['install', '--prefer-offline', mainTgz, platTgz, `@grpc/grpc-js@${installedVersion('@grpc/grpc-js')}`, `ava@${installedVersion('ava')}`], app)

  const env = { ...process.env, KEYNET_REPO: repo }
  delete env.NODE_PATH
  const r = spawnSync('npx', ['ava', '--timeout=60s'], { cwd: app, env, encoding: 'utf8', timeout: 120000 })
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`)
  t.regex(r.stdout + r.stderr, /1 test passed/)

  // The programs are on the app's npx: keynet-relay's help, and keynet making an identity.
  const relayHelp = spawnSync('npx', ['--no-install', 'keynet-relay', '--help'], { cwd: app, env, encoding: 'utf8', timeout: 60000 })
  t.is(relayHelp.status, 0, relayHelp.stderr)
  t.regex(relayHelp.stdout, /^keynet-relay: a keynet relay hub/)
  const idDir = path.join(work, 'id')
  const made = spawnSync('npx', ['--no-install', 'keynet', 'id', 'new', '--dir', idDir], { cwd: app, env, encoding: 'utf8', timeout: 60000 })
  t.is(made.status, 0, made.stderr)
  t.regex(made.stdout.trim(), /^v[0-9a-v]{52}$/)
  if (process.platform !== 'win32') t.is(fs.statSync(path.join(idDir, 'key.pem')).mode & 0o777, 0o600)
  // Its exit code is the program's: bad flags are 2.
  const bad = spawnSync('npx', ['--no-install', 'keynet', 'forward', '--no-such-flag'], { cwd: app, env, encoding: 'utf8', timeout: 60000 })
  t.is(bad.status, 2, bad.stderr)
})

test('without a platform package, loading keynet names the platform and the package to install', (t) => {
  const dir = tmp(t, 'keynet-noplat-')
  for (const f of ['package.json', 'index.js', 'errors.js', 'loader.js', 'native.js']) {
    fs.copyFileSync(path.join(repo, f), path.join(dir, f))
  }
  const r = spawnSync(process.execPath, ['-e', "try { require('./') } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }"], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, NODE_PATH: '' },
  })
  const out = JSON.parse(r.stdout.trim())
  t.is(out.code, 'ERR_KEYNET_NO_BINARY')
  t.true(out.message.includes(`(${platform})`), out.message)
  t.true(out.message.includes(`npm install keynet-${platform}`), out.message)
})

test('platform names follow the napi-rs package naming', (t) => {
  t.is(platformName('linux', 'x64', () => false), 'linux-x64-gnu')
  t.is(platformName('linux', 'arm64', () => true), 'linux-arm64-musl')
  t.is(platformName('darwin', 'arm64'), 'darwin-arm64')
  t.is(platformName('win32', 'x64'), 'win32-x64-msvc')
  t.is(platformName('android', 'arm64'), 'android-arm64')
  for (const dir of fs.readdirSync(path.join(repo, 'npm'))) {
    const pkg = JSON.parse(fs.readFileSync(path.join(repo, 'npm', dir, 'package.json'), 'utf8'))
    t.is(pkg.name, `keynet-${dir}`)
    t.is(pkg.main, `keynet.${dir}.node`)
  }
})
