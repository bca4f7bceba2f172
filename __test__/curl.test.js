'use strict'
// curl, through the forward proxy with --proxytunnel, fetches from an HTTP server behind the
// reverse proxy. curl builds the CONNECT target from the URL's host:port, so it cannot add
// ?nodeId=: the reverse proxy's address is put in the tracker (pinned) with openConnection first.

const http = require('node:http')
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const test = require('ava')
const h = require('./helpers')

const CURL = '/usr/bin/curl'

async function startHttpServer(t) {
  const requests = []
  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`)
    const chunks = []
    req.on('data', (d) => chunks.push(d))
    req.on('end', () => {
      if (req.url === '/hello') {
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.end('hello from behind keynet\n')
      } else if (req.url === '/upload' && req.method === 'POST') {
        res.writeHead(201, { 'content-type': 'text/plain' })
        res.end(h.sha256(Buffer.concat(chunks)))
      } else {
        res.writeHead(404)
        res.end('not found\n')
      }
    })
  })
  server.listen(0, h.HOST)
  await h.waitEvent(server, 'listening')
  t.teardown(() => {
    server.closeAllConnections()
    return new Promise((r) => server.close(r))
  })
  return { port: server.address().port, requests }
}

async function setup(t) {
  const { port, requests } = await startHttpServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: port })
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  const url = (p) => `http://${h.HOST}:${rp.getIngressPort()}${p}`
  return { fp, rp, url, requests }
}

/** Runs curl; the last output line is `<http code> <CONNECT code>`. */
async function curl(t, args) {
  const r = await h.run(t, CURL, ['-sS', '--max-time', '20', '--proxytunnel', ...args, '-w', '\n%{http_code} %{http_connect}'])
  const i = r.stdout.lastIndexOf('\n')
  const [status, connectStatus] = r.stdout.slice(i + 1).split(' ').map(Number)
  return { code: r.code, body: r.stdout.slice(0, i), status, connectStatus, stderr: r.stderr }
}

test('curl with a Proxy-Authorization header gets the page', async (t) => {
  const { fp, url, requests } = await setup(t)
  const r = await curl(t, [
    '-x', `http://${h.HOST}:${fp.getHttpPort()}`,
    '--proxy-header', `Proxy-Authorization: ${h.basicAuth()}`,
    url('/hello'),
  ])
  t.is(r.code, 0, r.stderr)
  t.is(r.connectStatus, 200)
  t.is(r.status, 200)
  t.is(r.body, 'hello from behind keynet\n')
  t.deepEqual(requests, ['GET /hello'])
})

test('curl with the token as proxy user (base64 "TOKEN:") gets the page', async (t) => {
  const { fp, url } = await setup(t)
  const r = await curl(t, ['-x', `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}`, url('/hello')])
  t.is(r.code, 0, r.stderr)
  t.is(r.connectStatus, 200)
  t.is(r.status, 200)
  t.is(r.body, 'hello from behind keynet\n')
})

test('curl upload arrives intact, and a 404 from the server passes through', async (t) => {
  const { fp, url } = await setup(t)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keynet-curl-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const data = crypto.randomBytes(512 * 1024)
  const file = path.join(dir, 'upload.bin')
  fs.writeFileSync(file, data)
  const proxy = ['-x', `http://${h.TOKEN}@${h.HOST}:${fp.getHttpPort()}`]
  const up = await curl(t, [...proxy, '--data-binary', `@${file}`, url('/upload')])
  t.is(up.code, 0, up.stderr)
  t.is(up.status, 201)
  t.is(up.body, h.sha256(data))
  const missing = await curl(t, [...proxy, url('/nope')])
  t.is(missing.code, 0, missing.stderr)
  t.is(missing.connectStatus, 200)
  t.is(missing.status, 404)
})

test('curl with a wrong token is refused with 407 and never reaches the server', async (t) => {
  const { fp, url, requests } = await setup(t)
  const r = await curl(t, ['-x', `http://wrong-token@${h.HOST}:${fp.getHttpPort()}`, url('/hello')])
  t.not(r.code, 0)
  t.is(r.connectStatus, 407)
  t.is(r.body, '')
  t.deepEqual(requests, [])
})
