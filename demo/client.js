'use strict'
// The gRPC client of the demo. It runs in its own process and knows nothing about keynet: it
// dials `process.argv[2]` (the reverse proxy's UDP address, where no TCP server listens) and
// grpc-js sends every byte through the HTTP CONNECT proxy named by `grpc_proxy` (the forward
// proxy). It prints one line per call and exits 0 only if every call succeeded; it also sends
// a summary to the parent over the IPC channel.

// The echo service of support/echo.proto, shared with the demo's server, the tests and the lab.
const { grpc, loadEcho } = require('../support')

const target = process.argv[2]
const CALL_TIMEOUT_MS = 5000

const client = new (loadEcho().Echo)(target, grpc.credentials.createInsecure())
const results = []

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS)
}

function ms(t0) {
  return Number(process.hrtime.bigint() - t0) / 1e6
}

function short(id) {
  return typeof id === 'string' && id.length > 14 ? id.slice(0, 12) + '…' : String(id)
}

function log(line) {
  process.stdout.write(line + '\n')
}

async function step(name, fn) {
  const t0 = process.hrtime.bigint()
  try {
    const detail = await fn()
    const t = ms(t0)
    results.push({ name, ok: true, ms: t })
    log(`  ok   ${name.padEnd(14)} ${t.toFixed(1).padStart(7)} ms  ${detail}`)
    return t
  } catch (e) {
    results.push({ name, ok: false, ms: ms(t0), error: e.message })
    log(`  FAIL ${name.padEnd(14)} ${e.code !== undefined ? `[grpc code ${e.code}] ` : ''}${e.message}`)
    return undefined
  }
}

function unary(text) {
  return new Promise((resolve, reject) => {
    client.Unary({ text }, { deadline: deadline() }, (err, reply) => {
      if (err) return reject(err)
      if (reply.text !== text) return reject(new Error(`echo mismatch: '${reply.text}'`))
      resolve(reply)
    })
  })
}

function serverStream(text, count) {
  return new Promise((resolve, reject) => {
    const got = []
    const call = client.ServerStream({ text, count }, { deadline: deadline() })
    call.on('data', (r) => got.push(r.text))
    call.on('error', reject)
    call.on('end', () => {
      const want = Array.from({ length: count }, (_, i) => `${text}-${i}`)
      if (JSON.stringify(got) !== JSON.stringify(want)) return reject(new Error(`got ${JSON.stringify(got)}`))
      resolve(got)
    })
  })
}

function clientStream(texts) {
  return new Promise((resolve, reject) => {
    const call = client.ClientStream({ deadline: deadline() }, (err, reply) => {
      if (err) return reject(err)
      if (reply.text !== texts.join(',')) return reject(new Error(`got '${reply.text}'`))
      resolve(reply)
    })
    for (const text of texts) call.write({ text })
    call.end()
  })
}

function bidi(texts) {
  return new Promise((resolve, reject) => {
    const got = []
    const call = client.Bidi({ deadline: deadline() })
    let i = 0
    // Ping-pong: send the next message only after the previous one came back.
    const sendNext = () => {
      if (i < texts.length) call.write({ text: texts[i++] })
      else call.end()
    }
    call.on('data', (r) => {
      got.push(r.text)
      sendNext()
    })
    call.on('error', reject)
    call.on('end', () => {
      if (JSON.stringify(got) !== JSON.stringify(texts)) return reject(new Error(`got ${JSON.stringify(got)}`))
      resolve(got)
    })
    sendNext()
  })
}

async function main() {
  log(`  grpc_proxy=${process.env.grpc_proxy.replace(/\/\/[^@]*@/, '//<token>@')}  target=${target}`)
  await step('waitForReady', () =>
    new Promise((resolve, reject) =>
      client.waitForReady(deadline(), (err) => (err ? reject(err) : resolve('channel READY (HTTP/2 over the tunnel)'))),
    ),
  )
  let caller
  await step('Unary', async () => {
    const r = await unary('hello through keynet')
    caller = r.caller
    return `'${r.text}' (server says caller = ${short(r.caller)})`
  })
  await step('ServerStream', async () => {
    const got = await serverStream('tick', 5)
    return `${got.length} replies: ${got.join(', ')}`
  })
  await step('ClientStream', async () => {
    const r = await clientStream(['one', 'two', 'three', 'four', 'five'])
    return `5 requests -> '${r.text}'`
  })
  await step('Bidi', async () => {
    const got = await bidi(['ping 1', 'ping 2', 'ping 3', 'ping 4', 'ping 5'])
    return `${got.length} ping-pongs: ${got.join(', ')}`
  })
  const lat = []
  for (let i = 1; i <= 5; i++) {
    const t = await step(`Unary ${i}/5`, async () => {
      const r = await unary(`call ${i}`)
      return `'${r.text}'`
    })
    if (t !== undefined) lat.push(t)
  }
  if (lat.length) {
    const sorted = [...lat].sort((a, b) => a - b)
    const median = sorted[Math.floor(sorted.length / 2)]
    log(`  ${lat.length} unary calls: min ${sorted[0].toFixed(2)} ms, median ${median.toFixed(2)} ms, max ${sorted[sorted.length - 1].toFixed(2)} ms`)
  }
  client.close()
  const failed = results.filter((r) => !r.ok).length
  const rpcs = results.filter((r) => r.name !== 'waitForReady')
  const summary = { calls: rpcs.length, callsOk: rpcs.filter((r) => r.ok).length, failed, caller }
  if (process.send) process.send(summary)
  process.exitCode = failed === 0 ? 0 : 1
  if (process.connected) process.disconnect()
}

main().catch((e) => {
  log(`  client crashed: ${e.stack || e}`)
  process.exitCode = 2
  if (process.connected) process.disconnect()
})
