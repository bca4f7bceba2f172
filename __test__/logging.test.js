'use strict'
// Logging: a proxy's `logger` option receives that proxy's own log lines (levels mapped to the
// logger's methods, at the logger's level), and setLogFilter() changes what goes to stderr while
// the process runs.

const test = require('ava')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const h = require('./helpers')
const { ForwardProxy, ReverseProxy, setLogFilter } = h.keynet

/** A logger in the original's shape (error/warn/info/debug), recording `[method, line]`. */
function recorder(extra = {}) {
  const lines = []
  const logger = { lines, ...extra }
  for (const m of ['error', 'warn', 'info', 'debug']) logger[m] = (line) => lines.push([m, line])
  return logger
}

test("a proxy's logger gets that proxy's lines, at its level, with levels mapped to its methods", async (t) => {
  const rpLog = recorder()
  const fpLog = recorder()
  const rp = new ReverseProxy({ logger: rpLog })
  t.teardown(() => h.stopQuietly(rp))
  await rp.start({ serverPort: 1 })
  const fp = new ForwardProxy({ authToken: h.TOKEN, logger: fpLog, logLevel: 'debug' })
  t.teardown(() => h.stopQuietly(fp))
  await fp.start()
  const rpId = rp.getNodeId()
  await fp.openConnection(rpId, h.HOST, rp.getIngressPort())
  await fp.stop()
  await rp.stop()
  await h.waitFor(() => rpLog.lines.some(([, l]) => l.startsWith('reverse proxy stopped')), { what: "the rp's last line" })
  await h.waitFor(() => fpLog.lines.some(([, l]) => l.startsWith('forward proxy stopped')), { what: "the fp's last line" })
  const fpText = fpLog.lines.map(([m, l]) => `${m} ${l}`)
  const rpText = rpLog.lines.map(([m, l]) => `${m} ${l}`)
  t.true(fpText.some((l) => l.startsWith('info forward proxy started proxy_addr=')), fpText.join('\n'))
  t.true(fpText.some((l) => l.startsWith('debug connection established') && l.includes(rpId)), fpText.join('\n'))
  t.true(rpText.some((l) => l.startsWith('info reverse proxy started')), rpText.join('\n'))
  // Each gets its own: the rp's logger (level info by default) has no fp line and no debug.
  t.false(rpText.some((l) => l.includes('forward proxy')), rpText.join('\n'))
  t.false(fpText.some((l) => l.includes('reverse proxy started')), fpText.join('\n'))
  t.false(rpLog.lines.some(([m]) => m === 'debug'), rpText.join('\n'))
})

test("the logger's own level decides (@matrixai/logger numbering: WARN = 3), and bad loggers are TypeErrors", async (t) => {
  const quiet = recorder({ getEffectiveLevel: () => 3 })
  const loud = recorder({ getEffectiveLevel: () => 0 }) // NOTSET: everything
  const rp = new ReverseProxy({ logger: quiet })
  t.teardown(() => h.stopQuietly(rp))
  const fp = new ForwardProxy({ authToken: h.TOKEN, logger: loud })
  t.teardown(() => h.stopQuietly(fp))
  await rp.start({ serverPort: 1 })
  await fp.start()
  await fp.openConnection(rp.getNodeId(), h.HOST, rp.getIngressPort())
  await rp.stop()
  await fp.stop()
  await h.waitFor(() => loud.lines.some(([, l]) => l.startsWith('forward proxy stopped')), { what: "the fp's last line" })
  t.true(loud.lines.some(([m]) => m === 'debug'))
  t.deepEqual(quiet.lines.filter(([m]) => m === 'info' || m === 'debug'), [])
  t.throws(() => new ForwardProxy({ authToken: 'x', logger: { info() {} } }), { code: 'ERR_INVALID_ARG_TYPE', message: /opts\.logger\.error/ })
  t.throws(() => new ReverseProxy({ logger: console, logLevel: 'loud' }), { code: 'ERR_INVALID_ARG_TYPE', message: /opts\.logLevel/ })
  t.throws(() => new ReverseProxy({ logLevel: 'debug' }), { code: 'ERR_INVALID_ARG_TYPE' })
  // A logger that throws loses its lines, never the proxy.
  const throwing = { error() { throw new Error('x') }, warn() { throw new Error('x') }, info() { throw new Error('x') }, debug() { throw new Error('x') } }
  const rp2 = new ReverseProxy({ logger: throwing })
  t.teardown(() => h.stopQuietly(rp2))
  await rp2.start({ serverPort: 1 })
  await rp2.stop()
})

test('setLogFilter changes what goes to stderr while running, and refuses a bad filter', (t) => {
  const script = `
    const { ReverseProxy, setLogFilter } = require(${JSON.stringify(path.join(__dirname, '..'))})
    ;(async () => {
      const run = async (mark) => { console.error(mark); const rp = new ReverseProxy(); await rp.start({ serverPort: 1 }); await rp.stop() }
      await run('MARK-1 (nothing set)')
      setLogFilter('keynet_core=info')
      await run('MARK-2 (info)')
      setLogFilter(null)
      await run('MARK-3 (off again)')
    })()`
  const env = h.cleanEnv()
  delete env.KEYNET_LOG
  delete env.RUST_LOG
  const r = spawnSync(process.execPath, ['-e', script], { env, encoding: 'utf8', timeout: 60_000 })
  t.is(r.status, 0, r.stderr)
  const [, first, second, third] = r.stderr.split(/MARK-\d[^\n]*\n/)
  t.is(first, '', 'nothing before the filter is set')
  t.regex(second, /INFO keynet_core::reverse_proxy: reverse proxy started/)
  t.regex(second, /reverse proxy stopped/)
  t.is(third, '', 'nothing after setLogFilter(null)')
  t.throws(() => setLogFilter('=['), { code: 'ERR_INVALID_ARG_VALUE', message: /log filter "=\["/ })
  t.throws(() => setLogFilter(5), { code: 'ERR_INVALID_ARG_TYPE' })
})
