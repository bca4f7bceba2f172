'use strict'
// The peers the bench compares keynet with, each run as its users run it: its own processes,
// one forwarding a local TCP port over QUIC, the other forwarding to the bench's server.
// `npm run bench:setup` installs them into bench/.peers; a peer that is not there is left out.
//
// dumbpipe (iroh): `dumbpipe listen-tcp --host SERVER` prints a ticket; `dumbpipe connect-tcp
// --addr 127.0.0.1:PORT TICKET` accepts TCP on PORT, each connection a QUIC stream to the
// listener (on a connection it opens per TCP connection).

const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { spawn } = require('node:child_process')
const { withTimeout } = require('../support/timeout')

const BIN = path.join(__dirname, '.peers', 'bin')
const START_TIMEOUT_MS = 30_000

/** The installed peers: `[{ name, bin }]`. */
function installedPeers() {
  const exe = process.platform === 'win32' ? '.exe' : ''
  return [{ name: 'dumbpipe', bin: path.join(BIN, `dumbpipe${exe}`) }].filter((p) => fs.existsSync(p.bin))
}

/** A free TCP port on 127.0.0.1 (closed again; the peer binds it right after). */
async function freePort() {
  const s = net.createServer().listen(0, '127.0.0.1')
  await new Promise((r) => s.once('listening', r))
  const { port } = s.address()
  await new Promise((r) => s.close(r))
  return port
}

/** Resolves with the first match of `re` in the child's stderr (rejects if it exits first). */
function stderrMatch(child, re, what) {
  let text = ''
  return withTimeout(
    new Promise((resolve, reject) => {
      child.stderr.on('data', (d) => {
        text += d
        const m = re.exec(text)
        if (m) resolve(m)
      })
      child.once('exit', (c) => reject(new Error(`${what} exited (${c}) before it was ready: ${text.trim()}`)))
    }),
    START_TIMEOUT_MS,
    what,
  )
}

/** Connects until `port` accepts (the peer is listening), bounded. */
async function untilListening(port, what) {
  const deadline = Date.now() + START_TIMEOUT_MS
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' })
      s.once('connect', () => {
        s.destroy()
        resolve(true)
      })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`${what} never listened on ${port}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); 0 elsewhere. */
function processCpuS(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100 // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return 0
  }
}

/**
 * Starts `peer` in front of the server on `serverPort`. Resolves `{ name, port, cpuS(), stop() }`:
 * TCP connections to 127.0.0.1:`port` reach the server through the peer.
 */
async function startPeer(peer, serverPort) {
  const children = []
  const stop = async () => {
    await Promise.all(
      children.map((c) => {
        if (c.exitCode !== null || c.signalCode !== null) return null
        const gone = new Promise((r) => c.once('exit', r))
        c.kill('SIGTERM')
        return withTimeout(gone, 5000, `${peer.name} exit`).catch(() => c.kill('SIGKILL'))
      }),
    )
  }
  try {
    const env = { ...process.env, RUST_LOG: 'error' }
    const listen = spawn(peer.bin, ['listen-tcp', '--host', `127.0.0.1:${serverPort}`], { stdio: ['ignore', 'ignore', 'pipe'], env })
    children.push(listen)
    const [, ticket] = await stderrMatch(listen, /dumbpipe connect-tcp (\S+)/, `${peer.name} listen-tcp`)
    const port = await freePort()
    const connect = spawn(peer.bin, ['connect-tcp', '--addr', `127.0.0.1:${port}`, ticket], { stdio: ['ignore', 'ignore', 'pipe'], env })
    children.push(connect)
    connect.stderr.resume()
    await untilListening(port, `${peer.name} connect-tcp`)
    return { name: peer.name, port, cpuS: () => children.reduce((s, c) => s + processCpuS(c.pid), 0), stop }
  } catch (e) {
    await stop()
    throw e
  }
}

module.exports = { installedPeers, startPeer }
