'use strict'
// Tunnel churn soak (`npm run soak -- [options]`): one ForwardProxy/ReverseProxy pair in this
// process, `--workers` loops each opening a CONNECT tunnel, echoing 1-64 KiB and closing, for
// `--duration` seconds or `--count` tunnels. Prints one summary line: tunnels, bytes, errors by
// kind, tunnels per second (next to direct TCP's, measured first in the same run unless
// `--no-direct`), RSS first/last/max (sampled every second; "first" is after the first minute
// when the run is longer than two), and how long stop() took. Exit code 1 on any error.
//
//   --duration S   (default 60)      --count N     stop after N tunnels instead
//   --workers W    (default 50)      --direct S    seconds of the direct TCP baseline (default 10)
//   --json         the summary as one JSON line (the churn test reads it)

// Before the addon loads: the measured build (release code; KEYNET_BENCH_PROFILE=dev: the dev one).
require('../scripts/build-profiling').useBenchBuild()
const { ForwardProxy, ReverseProxy } = require('..')
const { startTcpEchoServer } = require('../support/servers')
const { churn } = require('../support/churn')
const { withTimeout } = require('../support/timeout')

const HOST = '127.0.0.1'
const TOKEN = 'soak-token'
const MiB = 1024 * 1024

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) return dflt
  const v = Number(process.argv[i + 1])
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} needs a number`)
  return v
}

async function main() {
  const count = arg('count', Infinity)
  const durationMs = count === Infinity ? arg('duration', 60) * 1000 : Infinity
  const workers = arg('workers', 50)
  const directMs = process.argv.includes('--no-direct') ? 0 : arg('direct', 10) * 1000
  const json = process.argv.includes('--json')

  const echo = await startTcpEchoServer({ host: HOST })
  let direct = null
  if (directMs > 0) {
    const d = await churn({ port: echo.port, host: HOST, workers, durationMs: directMs })
    direct = { tunnels: d.ok, perSec: (d.ok * 1000) / d.ms, errors: d.errors }
  }

  const rp = new ReverseProxy()
  const fp = new ForwardProxy({ authToken: TOKEN })
  await rp.start({ serverHost: HOST, serverPort: echo.port, ingressHost: HOST })
  await fp.start({ proxyHost: HOST })
  const target = `${HOST}:${rp.getIngressPort()}?nodeId=${rp.getNodeId()}`

  const rss = { first: null, last: 0, max: 0, samples: [] }
  const t0 = Date.now()
  const settle = durationMs > 120_000 ? 60_000 : 0
  const sampler = setInterval(() => {
    const r = process.memoryUsage.rss()
    rss.last = r
    rss.max = Math.max(rss.max, r)
    if (rss.first === null && Date.now() - t0 >= settle) rss.first = r
  }, 1000)
  let s
  try {
    s = await churn({ port: fp.getProxyPort(), host: HOST, target, token: TOKEN, workers, count, durationMs })
  } finally {
    clearInterval(sampler)
  }
  const r = process.memoryUsage.rss()
  rss.last = r
  rss.max = Math.max(rss.max, r)
  if (rss.first === null) rss.first = r

  const stop0 = Date.now()
  await withTimeout(Promise.all([fp.stop(), rp.stop()]), 30_000, 'stop()')
  const stopMs = Date.now() - stop0
  await echo.close()

  const errors = Object.values(s.errors).reduce((a, b) => a + b, 0)
  const summary = {
    tunnels: s.tunnels,
    ok: s.ok,
    errors,
    errorsByKind: s.errors,
    firstError: s.firstError,
    bytes: s.bytes,
    seconds: s.ms / 1000,
    perSec: (s.ok * 1000) / s.ms,
    direct,
    rssMiB: { first: rss.first / MiB, last: rss.last / MiB, max: rss.max / MiB },
    stopMs,
  }
  if (json) console.log(JSON.stringify(summary))
  else {
    const f = (x) => x.toFixed(1)
    const kinds = Object.entries(s.errors).map(([k, n]) => `${k}:${n}`).join(' ') || 'none'
    const vsDirect = direct ? ` (direct TCP ${f(direct.perSec)}/s, ratio ${(summary.perSec / direct.perSec).toFixed(2)})` : ''
    console.log(
      `soak: ${s.tunnels} tunnels in ${f(summary.seconds)} s, ${workers} workers, ${f(summary.perSec)}/s${vsDirect}; ` +
        `${f(s.bytes / MiB)} MiB echoed; errors ${errors} (${kinds}); ` +
        `RSS MiB first/last/max ${f(summary.rssMiB.first)}/${f(summary.rssMiB.last)}/${f(summary.rssMiB.max)}; stop ${stopMs} ms` +
        (s.firstError ? `; first error: ${s.firstError}` : ''),
    )
  }
  process.exitCode = errors === 0 && (!direct || Object.keys(direct.errors).length === 0) ? 0 : 1
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
