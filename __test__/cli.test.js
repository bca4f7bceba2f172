'use strict'
// The `keynet` command, for servers and clients in any language: every proxy here is a `keynet`
// process, the clients and servers are Python grpcio or plain TCP. A config file says what flags
// say (errors name the file, line and key); a token is never taken from the command line unless
// asked; SIGTERM drains open tunnels and exits 0.

const test = require('ava')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const net = require('node:net')
const readline = require('node:readline')
const { spawn } = require('node:child_process')
const h = require('./helpers')

const PYTHON = process.env.PYTHON || 'python3'
const KEYNET = h.KEYNET_BIN

/** A `keynet ARGS` process, killed in teardown; resolves `{ child, match }` once stdout matches `ready`. */
function keynet(t, args, ready, env) {
  return h.spawnKeynetRelay(t, args, ready, { bin: KEYNET, env })
}

/** Runs `keynet ARGS` to its end: `{ code, stdout, stderr }`. */
function keynetOnce(t, args, env = {}) {
  return h.run(t, KEYNET, args, { env: h.cleanEnv(env), timeout: 20_000 })
}

function tmpDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keynet-cli-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** fixtures/server.py: a Python grpcio server; resolves its port. */
async function pythonServer(t) {
  const child = spawn(PYTHON, [path.join(h.FIXTURES, 'server.py')], { stdio: ['ignore', 'pipe', 'pipe'], env: h.cleanEnv({ PYTHONDONTWRITEBYTECODE: '1' }) })
  t.teardown(() => child.kill('SIGKILL'))
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const line = await h.withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => {
        const m = /listening (\d+)/.exec(String(d))
        if (m) resolve(Number(m[1]))
      })
      child.once('exit', (code) => reject(new Error(code === 3 ? `Python grpcio is required: ${stderr}` : `server.py exited ${code}: ${stderr}`)))
    }),
    h.WAIT,
    'server.py to listen',
  )
  return line
}

const RELAY_READY = /^relay listening on (\S+) tcp \S+ node id (v[0-9a-v]{52})$/
const REVERSE_READY = /^reverse proxy node id (v[0-9a-v]{52}) udp (\S+) server \S+$/
const FORWARD_READY = /^forward proxy http (\S+) udp \S+ node id v[0-9a-v]{52}$/

test('a Python grpcio client reaches a Python grpcio server by node id: keynet forward -> keynet relay -> keynet reverse', async (t) => {
  const dir = tmpDir(t)
  const serverPort = await pythonServer(t)
  const relayControl = path.join(dir, 'relay.sock')
  const relay = await keynet(t, ['relay', '--listen', '127.0.0.1:0', '--control', relayControl], RELAY_READY)
  const relayArg = `${relay.match[1]}@${relay.match[2]}`
  const control = path.join(dir, 'reverse.sock')
  const reverse = await keynet(t, ['reverse', '--server', `127.0.0.1:${serverPort}`, '--relay', relayArg, '--identity-dir', path.join(dir, 'id'), '--control', control], REVERSE_READY)
  const nodeId = reverse.match[1]
  // The identity is on disk: `keynet id show` reads the same node id.
  const shown = await keynetOnce(t, ['id', 'show', '--dir', path.join(dir, 'id')])
  t.is(shown.stdout.trim(), nodeId)
  t.is(fs.statSync(path.join(dir, 'id', 'key.pem')).mode & 0o777, 0o600)
  fs.writeFileSync(path.join(dir, 'token'), 'py-token\n')
  const forward = await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--token-file', path.join(dir, 'token'), '--relay', relayArg, '--control', path.join(dir, 'forward.sock')], FORWARD_READY)
  const env = h.cleanEnv({ grpc_proxy: `http://py-token@${forward.match[1]}`, GRPC_DNS_RESOLVER: 'native', PYTHONDONTWRITEBYTECODE: '1' })
  const out = await h.runJsonClient(t, PYTHON, [path.join(h.FIXTURES, 'client.py'), `${nodeId}.keynet:443`, 'unary'], { env })
  t.deepEqual(out.result, { text: 'python server: hello from python', count: -7 })

  // keynet status: the live connection, its path, the relay link, the counters.
  const status = await keynetOnce(t, ['status', '--control', control, '--json'])
  t.is(status.code, 0, status.stderr)
  const s = JSON.parse(status.stdout)
  t.is(s.role, 'reverse')
  t.is(s.node_id, nodeId)
  t.is(s.connections.length, 1)
  // Relayed, or already moved to the direct path the relay's rendezvous found (loopback).
  t.true(['relayed', 'direct'].includes(s.connections[0].path), s.connections[0].path)
  t.true(s.connections[0].rtt_ms >= 0)
  t.deepEqual(s.relays.map((r) => [r.relay, r.state]), [[relay.match[1], 'up']])
  t.is(s.stats.tunnels_total, 1)
  const table = await keynetOnce(t, ['status', '--control', control])
  t.regex(table.stdout, new RegExp(`^v[0-9a-v]{52} +(relayed|direct) `, 'm'), 'the table lists the connection')
  // The control socket is the user's only: mode 0600.
  t.is(fs.statSync(control).mode & 0o777, 0o600)
  // The relay answers too: the reverse proxy registered there, both proxies hold a session.
  const rs = JSON.parse((await keynetOnce(t, ['status', '--control', relayControl, '--json'])).stdout)
  t.is(rs.role, 'relay')
  t.is(rs.node_id, relay.match[2])
  t.true(rs.registered.includes(nodeId), JSON.stringify(rs.registered))
  t.is(rs.stats.sessions_quic, 2)
  t.is(fs.statSync(relayControl).mode & 0o777, 0o600)
  const rt = await keynetOnce(t, ['status', '--control', relayControl])
  t.regex(rt.stdout, new RegExp(`^${nodeId} +(-|\\d+)$`, 'm'), 'the table lists the registered node')
  const none = await keynetOnce(t, ['status', '--control', path.join(dir, 'nothing.sock')])
  t.is(none.code, 1)
  t.regex(none.stderr, /is keynet running\?/)
})

test('SIGTERM drains an open tunnel (the bytes in flight arrive, both ends read an end) and keynet exits 0', async (t) => {
  const received = []
  let serverSocket
  const server = await h.startTcpServer(t, (s) => {
    serverSocket = s
    s.on('data', (d) => received.push(d))
    s.on('end', () => s.end())
  })
  const dir = tmpDir(t)
  const reverse = await keynet(t, ['reverse', '--server', `127.0.0.1:${server.port}`, '--grace', '5', '--control', path.join(dir, 'r.sock')], REVERSE_READY)
  const [nodeId, ingress] = [reverse.match[1], reverse.match[2]]
  const forwardControl = path.join(dir, 'f.sock')
  const forward = await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--control', forwardControl], FORWARD_READY, { KEYNET_TOKEN: 'tok' })
  const [host, port] = forward.match[1].split(':')
  const client = await h.connectTcp(t, Number(port), { host })
  client.write(`CONNECT ${ingress}?nodeId=${nodeId} HTTP/1.1\r\nProxy-Authorization: Basic ${Buffer.from('tok').toString('base64')}\r\n\r\n`)
  const res = await h.readHead(client, h.WAIT)
  t.is(res.status, 200)
  const payload = Buffer.alloc(1 << 20, 7)
  client.write(payload)
  // A drain delivers what the proxies took; bytes the forward proxy has not read yet stay in its
  // socket (it stops reading on the end). So: signal once it took the whole payload, which is
  // then in flight in the tunnel (under load, the first bytes at the server came long before).
  const took = async () => {
    const st = await keynetOnce(t, ['status', '--control', forwardControl, '--json'])
    return JSON.parse(st.stdout).stats.bytes_sent >= payload.length
  }
  await h.waitFor(took, { interval: 20, what: 'the forward proxy to take the whole payload' })
  const exited = new Promise((resolve) => reverse.child.once('exit', (code, signal) => resolve(code ?? signal)))
  const clientEnded = new Promise((resolve) => client.once('end', resolve))
  client.resume()
  reverse.child.kill('SIGTERM')
  await h.withTimeout(clientEnded, h.WAIT, 'the client to read an end')
  t.is(await h.withTimeout(exited, h.WAIT, 'keynet reverse to exit'), 0)
  t.is(Buffer.concat(received).length, payload.length, 'every byte the forward proxy took before the signal arrived')
  t.deepEqual(client.errors, [], 'an end, not a reset')
  t.truthy(serverSocket)
})

test('config file: a valid one runs, flags override it, and a bad key or value is named with its file and line', async (t) => {
  const dir = tmpDir(t)
  const server = await h.startEchoServer(t)
  const cfg = path.join(dir, 'keynet.toml')
  fs.writeFileSync(cfg, `# a config\n[reverse]\nserver = "127.0.0.1:1"\ngrace = 2\ncontrol = "${path.join(dir, 'r.sock')}"\n\n[forward]\nlisten = "127.0.0.1:0"\n`)
  // The flag wins over the file's server.
  const reverse = await keynet(t, ['reverse', '--config', cfg, '--server', `127.0.0.1:${server.port}`], REVERSE_READY)
  t.regex(reverse.lines.join('\n'), new RegExp(`server 127\\.0\\.0\\.1:${server.port}$`, 'm'))
  const typo = path.join(dir, 'typo.toml')
  fs.writeFileSync(typo, `[reverse]\nserver = "127.0.0.1:1"\nsevrer = "127.0.0.1:2"\n`)
  let r = await keynetOnce(t, ['reverse', '--config', typo])
  t.is(r.code, 2)
  t.regex(r.stderr, /typo\.toml: TOML parse error at line 3/)
  t.regex(r.stderr, /unknown field `sevrer`/)
  const badValue = path.join(dir, 'bad.toml')
  fs.writeFileSync(badValue, `[reverse]\n\nserver = "localhost:50051"\n`)
  r = await keynetOnce(t, ['reverse', '--config', badValue])
  t.is(r.code, 2)
  t.regex(r.stderr, /bad\.toml:3 reverse\.server: "localhost:50051" is not an IP HOST:PORT/)
  r = await keynetOnce(t, ['forward', '--config', cfg, '--bogus'])
  t.is(r.code, 2)
  t.regex(r.stderr, /unknown flag "--bogus"/)
})

test('a second instance on the same control socket is refused (exit 2); a stale socket file is replaced', async (t) => {
  const dir = tmpDir(t)
  const control = path.join(dir, 'c.sock')
  await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--control', control], FORWARD_READY, { KEYNET_TOKEN: 'x' })
  const second = await keynetOnce(t, ['forward', '--listen', '127.0.0.1:0', '--control', control], { KEYNET_TOKEN: 'x' })
  t.is(second.code, 2)
  t.regex(second.stderr, /another keynet instance answers there/)
  const stale = path.join(dir, 'stale.sock')
  fs.writeFileSync(stale, '')
  const again = await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--control', stale], FORWARD_READY, { KEYNET_TOKEN: 'x' })
  t.truthy(again.match)
})

test('SIGHUP reloads the allow-list: a node taken off it is disconnected and refused, a bad file changes nothing', async (t) => {
  const dir = tmpDir(t)
  const server = await h.startEchoServer(t)
  const made = await keynetOnce(t, ['id', 'new', '--dir', path.join(dir, 'fwd-id')])
  t.is(made.code, 0, made.stderr)
  const fwdId = made.stdout.trim()
  const other = (await h.keynet.generateIdentity()).nodeId
  const cfg = path.join(dir, 'keynet.toml')
  const write = (allow) => fs.writeFileSync(cfg, `[reverse]\nserver = "127.0.0.1:${server.port}"\nallow = ${JSON.stringify(allow)}\n`)
  write([fwdId])
  const control = path.join(dir, 'r.sock')
  const reverse = await keynet(t, ['reverse', '--config', cfg, '--control', control], REVERSE_READY)
  const [nodeId, ingress] = [reverse.match[1], reverse.match[2]]
  const forward = await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--identity-dir', path.join(dir, 'fwd-id'), '--control', path.join(dir, 'f.sock')], FORWARD_READY, { KEYNET_TOKEN: 'tok' })
  const port = Number(forward.match[1].split(':')[1])
  const connect = () => h.rawConnect(t, port, { raw: `CONNECT ${ingress}?nodeId=${nodeId} HTTP/1.1\r\nProxy-Authorization: Basic ${Buffer.from('tok').toString('base64')}\r\n\r\n` })
  t.is((await connect()).status, 200, 'on the list: connects')
  const connections = async () => JSON.parse((await keynetOnce(t, ['status', '--control', control, '--json'])).stdout).connections.length
  t.is(await connections(), 1)
  write([other])
  reverse.child.kill('SIGHUP')
  await h.waitFor(async () => (await connections()) === 0, { what: 'the removed node to be disconnected', interval: 50 })
  t.is((await connect()).status, 502, 'off the list: refused')
  fs.writeFileSync(cfg, 'this is not toml =')
  reverse.child.kill('SIGHUP')
  // A bad file changes nothing (and does not stop it): still refused, still running.
  t.is((await connect()).status, 502)
  t.is(reverse.child.exitCode, null)
  write([other, fwdId])
  reverse.child.kill('SIGHUP')
  await h.waitFor(async () => (await connect()).status === 200, { what: 'the node to be let in again', interval: 100 })
  t.pass()
})

/** Runs `bin args` with RUST_LOG=info until a stdout line matches `ready`, stops it with SIGTERM; its stderr lines. */
async function logLinesOf(t, bin, args, ready) {
  const child = spawn(bin, args, { env: h.cleanEnv({ RUST_LOG: 'info' }) })
  t.teardown(() => child.kill('SIGKILL'))
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const lines = readline.createInterface({ input: child.stdout })
  await h.withTimeout(new Promise((resolve) => lines.on('line', (l) => ready.test(l) && resolve())), h.WAIT, `${path.basename(bin)} to be ready`)
  // 'close', not 'exit': 'exit' can come before the last stderr bytes are read.
  const closed = new Promise((resolve) => child.once('close', resolve))
  child.kill('SIGTERM')
  t.is(await h.withTimeout(closed, h.WAIT, 'exit'), 0)
  return stderr.trim().split('\n')
}

test('--log-format json: every log line of keynet and keynet-relay is one JSON object with level, target and message; piped text lines carry no colour codes', async (t) => {
  const dir = tmpDir(t)
  const runs = [
    [KEYNET, ['--log-format', 'json', 'reverse', '--server', '127.0.0.1:1', '--control', path.join(dir, 'r.sock')], REVERSE_READY, 'reverse proxy started'],
    [KEYNET, ['relay', '--log-format', 'json', '--listen', '127.0.0.1:0'], RELAY_READY, 'shutting down'],
    [h.RELAY_BIN, ['--listen', '127.0.0.1:0', '--log-format', 'json'], RELAY_READY, 'shutting down'],
  ]
  for (const [bin, args, ready, expected] of runs) {
    const lines = await logLinesOf(t, bin, args, ready)
    const what = `${path.basename(bin)} ${args.join(' ')}`
    t.true(lines.length >= 1, what)
    for (const line of lines) {
      const o = JSON.parse(line)
      t.true(['INFO', 'WARN', 'ERROR', 'DEBUG', 'TRACE'].includes(o.level), line)
      t.is(typeof o.target, 'string')
      t.is(typeof o.fields.message, 'string')
    }
    t.true(lines.some((l) => JSON.parse(l).fields.message === expected), `${what}: ${lines.join('\n')}`)
  }
  // Text lines to a pipe (a journal, a container log) are plain: no colour escape codes.
  const text = await logLinesOf(t, KEYNET, ['reverse', '--server', '127.0.0.1:1', '--control', path.join(dir, 't.sock')], REVERSE_READY)
  t.true(text.some((l) => l.includes('reverse proxy started')), text.join('\n'))
  t.false(text.some((l) => l.includes('\x1b[')), `escape codes in piped logs: ${JSON.stringify(text[0])}`)
  const bad = await keynetOnce(t, ['--log-format', 'xml', 'status'])
  t.is(bad.code, 2)
  const badRelay = await h.run(t, h.RELAY_BIN, ['--log-format', 'xml'], { env: h.cleanEnv({}), timeout: 20_000 })
  t.is(badRelay.code, 2)
  t.regex(badRelay.stderr, /'text' or 'json'/)
})

test('a token only on the command line is refused unless --insecure-token-arg; KEYNET_TOKEN or a file is taken', async (t) => {
  let r = await keynetOnce(t, ['forward', '--listen', '127.0.0.1:0', '--token', 'secret'])
  t.is(r.code, 2)
  t.regex(r.stderr, /visible to every user of this machine/)
  t.false(r.stderr.includes('secret'), 'the error does not repeat the token')
  r = await keynetOnce(t, ['forward', '--listen', '127.0.0.1:0'])
  t.is(r.code, 2)
  t.regex(r.stderr, /needs a token: --token-file FILE or KEYNET_TOKEN/)
  const dir = tmpDir(t)
  const insecure = await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--token', 'secret', '--insecure-token-arg', '--control', path.join(dir, 'a.sock')], FORWARD_READY)
  t.truthy(insecure.match)
  const fromEnv = await keynet(t, ['forward', '--listen', '127.0.0.1:0', '--control', path.join(dir, 'b.sock')], FORWARD_READY, { KEYNET_TOKEN: 'from-env' })
  // The token in use is the environment's: a CONNECT with it is not refused with 407.
  const [host, port] = fromEnv.match[1].split(':')
  const res = await h.rawConnect(t, Number(port), { raw: `CONNECT 127.0.0.1:1 HTTP/1.1\r\nProxy-Authorization: Basic ${Buffer.from('from-env').toString('base64')}\r\n\r\n`, socketOpts: { host } })
  t.not(res.status, 407)
})
