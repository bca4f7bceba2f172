'use strict'
// Every program in examples/ (the README's runnable snippets) runs as written, in its own Node
// process, and prints what the README says it does.

const test = require('ava')
const path = require('node:path')
const { spawn } = require('node:child_process')
const h = require('./helpers')

const EXAMPLES = path.join(__dirname, '..', 'examples')

/** Runs examples/<file>; resolves { status, stdout, stderr } (killed after 60 s). */
function runExample(file) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(EXAMPLES, file)], { cwd: path.join(__dirname, '..'), env: h.cleanEnv() })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    child.on('close', (status, signal) => {
      clearTimeout(timer)
      resolve({ status: status ?? signal, stdout, stderr })
    })
  })
}

const expected = {
  'quickstart.js': [/^reverse proxy v[0-9a-v]{52} on udp 127\.0\.0\.1:\d+$/m, /^connected: path direct$/m, /^reply: hello \(from v[0-9a-v]{9}…\)$/m],
  'relay.js': [/^server's node id v[0-9a-v]{52}, relay link up$/m, /^connection to v[0-9a-v]{9}… path relayed$/m, /^reply: through the relay$/m],
  'original.js': [
    /^authToken abc, connConnectTime 2000, connEndTime 500$/m,
    /^connected to the pinned node; count 1$/m,
    /^silent remote: ErrorConnectionStartTimeout, timedOut true$/m,
    /^after stop: count 0$/m,
    /^getProxyHost\(\) after stop: ErrorForwardProxyNotRunning \(exitCode 64\)$/m,
    /^logger got [1-9]\d* info lines, e\.g\. "INFO reverse proxy started/m,
  ],
  'discovery.js': [/^private DHT: 4 nodes$/m, /^announced v[0-9a-v]{52} at 127\.0\.0\.1:\d+/m, /^lookup: [1-9]\d* address\(es\), signed true$/m, /^reply: found by node id$/m],
  'esm.mjs': [/^HTTP\/1\.1 200 Connection Established$/m, /^echoed: ping$/m],
}

test('examples/ holds exactly the programs this test runs', (t) => {
  const fs = require('node:fs')
  t.deepEqual(fs.readdirSync(EXAMPLES).sort(), Object.keys(expected).sort())
})

for (const [file, lines] of Object.entries(expected)) {
  test(`examples/${file} runs and prints what it should`, async (t) => {
    const r = await runExample(file)
    const shown = `exit ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`
    t.is(r.status, 0, shown)
    for (const line of lines) t.regex(r.stdout, line, shown)
  })
}
