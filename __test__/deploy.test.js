'use strict'
// deploy/: each systemd unit's ExecStart (and ExecReload's SIGHUP) runs as written with the
// example config, only its paths moved to a temporary directory; the example config parses for
// both commands. (The Containerfile is built and run by the container job of
// .github/workflows/ci.yml: there is no container engine or image registry here.)

const test = require('ava')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn } = require('node:child_process')
const h = require('./helpers')

const DEPLOY = path.join(__dirname, '..', 'deploy')
const READY = { reverse: /^reverse proxy node id v[0-9a-v]{52} udp \S+ server \S+$/, forward: /^forward proxy http \S+ udp \S+ node id v[0-9a-v]{52}$/ }

/** The unit's `Key=` value. */
function unitValue(unit, key) {
  const line = fs.readFileSync(path.join(DEPLOY, unit), 'utf8').split('\n').find((l) => l.startsWith(`${key}=`))
  return line && line.slice(key.length + 1)
}

for (const side of ['reverse', 'forward']) {
  test(`keynet-${side}.service: its ExecStart runs with the example config, and stops cleanly on SIGTERM`, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keynet-deploy-'))
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
    const server = await h.startEchoServer(t)
    // The example config, its machine paths and public ports moved into `dir`.
    const config = fs
      .readFileSync(path.join(DEPLOY, 'keynet.toml'), 'utf8')
      .replace('"127.0.0.1:50051"', `"127.0.0.1:${server.port}"`)
      .replace('"0.0.0.0:7001"', '"127.0.0.1:0"')
      .replace('"127.0.0.1:8080"', '"127.0.0.1:0"')
      .replaceAll('/var/lib/keynet', path.join(dir, 'state'))
    fs.writeFileSync(path.join(dir, 'keynet.toml'), config)
    fs.mkdirSync(path.join(dir, 'credentials'))
    fs.writeFileSync(path.join(dir, 'credentials', 'token'), 'unit-token\n')
    const argv = unitValue(`keynet-${side}.service`, 'ExecStart')
      .replace('${CREDENTIALS_DIRECTORY}', path.join(dir, 'credentials'))
      .replace('/etc/keynet/keynet.toml', path.join(dir, 'keynet.toml'))
      .replace('/run/keynet/', `${dir}/`)
      .split(/\s+/)
    t.is(argv[0], '/usr/local/bin/keynet')
    const child = spawn(h.KEYNET_BIN, argv.slice(1), { env: h.cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => child.kill('SIGKILL'))
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const ready = new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => String(d).split('\n').some((l) => READY[side].test(l)) && resolve())
      child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)))
    })
    await h.withTimeout(ready, h.WAIT, `keynet ${side} ready`)
    t.true(fs.existsSync(path.join(dir, 'state', side, 'key.pem')), 'the identity is made in the state directory')
    if (unitValue(`keynet-${side}.service`, 'ExecReload')) {
      child.kill('SIGHUP') // what `systemctl reload` sends
      const status = await h.run(t, h.KEYNET_BIN, ['status', '--control', path.join(dir, `${side}.sock`), '--json'])
      t.is(status.code, 0, status.stderr)
      t.is(JSON.parse(status.stdout).role, side, 'still running after the reload')
    }
    const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
    child.kill('SIGTERM')
    t.is(await h.withTimeout(exited, h.WAIT, 'exit'), 0, stderr)
    // Exit code 2 (a bad config) is the one the unit does not restart on.
    t.is(unitValue(`keynet-${side}.service`, 'RestartPreventExitStatus'), '2')
  })
}

test('keynet-relay.service: its ExecStart runs (identity and port state in the state directory, status on the control socket) and stops cleanly on SIGTERM', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keynet-deploy-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const argv = unitValue('keynet-relay.service', 'ExecStart')
    .replace('0.0.0.0:7000', '127.0.0.1:0')
    .replace('127.0.0.1:9477', '127.0.0.1:0')
    .replaceAll('/var/lib/keynet', path.join(dir, 'state'))
    .replace('/run/keynet/', `${dir}/`)
    .split(/\s+/)
  t.is(argv[0], '/usr/local/bin/keynet')
  const relay = await h.spawnKeynetRelay(t, argv.slice(1), /^relay listening on \S+ tcp \S+ node id (v[0-9a-v]{52})$/, { bin: h.KEYNET_BIN })
  t.true(fs.existsSync(path.join(dir, 'state', 'relay', 'key.pem')), 'the identity is made in the state directory')
  const status = await h.run(t, h.KEYNET_BIN, ['status', '--control', path.join(dir, 'relay.sock'), '--json'])
  t.is(status.code, 0, status.stderr)
  t.is(JSON.parse(status.stdout).node_id, relay.match[1])
  const exited = new Promise((resolve) => relay.child.once('exit', (code) => resolve(code)))
  relay.child.kill('SIGTERM')
  t.is(await h.withTimeout(exited, h.WAIT, 'exit'), 0)
  t.is(unitValue('keynet-relay.service', 'RestartPreventExitStatus'), '2')
})
