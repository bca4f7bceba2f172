'use strict'
// keynet from an ES module (fixtures/esm-import.mjs, in its own Node process): the default import
// is module.exports, every export is also a named import (Node's CommonJS export detection) and
// the same object, and a reverse and a forward proxy start, connect, stop, and let Node exit.

const test = require('ava')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const keynet = require('..')

test('import keynet / import { ... } from an ES module: same objects, proxies start and connect', (t) => {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'esm-import.mjs')], {
    cwd: __dirname,
    encoding: 'utf8',
    timeout: 60000,
  })
  const shown = `exit ${r.status ?? r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`
  t.is(r.status, 0, shown)
  const lines = r.stdout.trim().split('\n')
  t.is(lines.length, 1, shown)
  const { defaultKeys, namespaceKeys, ...checks } = JSON.parse(lines[0])
  const keys = Object.keys(keynet).sort()
  t.deepEqual(defaultKeys, keys, 'the default import is module.exports')
  t.deepEqual(namespaceKeys, [...keys, 'default'].sort(), 'every export is also a named export')
  t.deepEqual(
    checks,
    {
      sameAsDefault: true,
      requireSame: true,
      errorsInstanceof: true,
      nodeIdMatches: true,
      reverseNodeId: true,
      reversePort: true,
      forwardPorts: true,
      connectedNodeId: true,
      stopped: true,
    },
    shown,
  )
})
