'use strict'
// Connections that survive path changes: scenarios in an existing lab (lab.js) with agents A
// (forward proxy) and B (reverse proxy), used by __test__/pathchange.test.js and by the "path
// changes" table of matrix.js. Each starts a fresh pair of proxies, changes the network under a
// running connection (a blackhole between the two public addresses, a NAT rebinding, a move to
// another uplink, a flapping path), and resolves a plain result:
//   { scenario, ok, problem, checks: [{ name, pass, detail }], timeMs, timeLabel, recoveryMs,
//     bytesLost, stopMs: { A, B }, stuck, ...measurements }
// `ok` is every check passing, `problem` the failed checks. Every wait has a timeout, so a hung
// proxy makes a scenario fail, not hang; the proxies are always stopped (`stuck`: a stop() did
// not resolve, the agents must be replaced). The lab is left as found (no blackhole, no rate
// limit, a rebound NAT restored), except that an uplink switch stays (the next one switches back).

const { startPair, openBoth, startRelayedPair } = require('./attempt.js')

const MiB = 1024 * 1024
// The system clock, as the agents read it (see agent.js): comparable across processes.
const now = () => Date.now()
const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)))
const TIMED_OUT = Symbol('timed out')

/** `promise`'s value, or TIMED_OUT after `ms` (the promise keeps running). */
function within(promise, ms) {
  let t
  return Promise.race([promise, new Promise((r) => (t = setTimeout(() => r(TIMED_OUT), ms)))]).finally(() => clearTimeout(t))
}

const fmt = (ms) => (ms == null ? '-' : `${Math.round(ms)} ms`)
/** A check's detail: `text`, or why the agent gave no answer. */
const det = (r, text) => (r?.code === 'NoAnswer' ? r.message : text)

/** Collects checks and measurements of one scenario run. */
class Run {
  constructor(scenario, lab, A, B) {
    Object.assign(this, { lab, A, B })
    this.result = { scenario, ok: false, problem: null, checks: [], timeMs: null, timeLabel: 'recovery', recoveryMs: null, bytesLost: null, stopMs: { A: null, B: null }, stuck: false }
    this.stopped = false
    /** Agents that did not answer once (frozen or gone): later requests to them fail at once. */
    this.deaf = new Set()
  }

  /**
   * An agent request that resolves (never rejects): an agent that does not answer in
   * `timeoutMs` is { ok: false, code: 'NoAnswer' } from then on, so a hung keynode costs one
   * timeout, not one per remaining step.
   */
  ask(agent, cmd, timeoutMs = 30000) {
    if (this.deaf.has(agent)) return Promise.resolve({ ok: false, code: 'NoAnswer', message: `agent ${agent.side} stopped answering earlier` })
    return agent.request(cmd, timeoutMs).catch((e) => {
      this.deaf.add(agent)
      return { ok: false, code: 'NoAnswer', message: e.message }
    })
  }

  check(name, pass, detail = '') {
    this.result.checks.push({ name, pass: !!pass, detail: String(detail) })
    return !!pass
  }

  set(fields) {
    Object.assign(this.result, fields)
  }

  /** Waits for the `n`-th event of `agent` matching `filter` (see agent.js waitEvent). */
  event(agent, filter, timeout) {
    return this.ask(agent, { cmd: 'waitEvent', timeout, ...filter }, timeout + 5000)
  }

  /** Starts a transfer in the background; `done` resolves its result (never rejects). */
  transfer(agent, target, bytes, timeout) {
    const tag = `t${Math.random().toString(36).slice(2, 8)}`
    const done = this.ask(agent, { cmd: 'transfer', ...target, bytes, tag, timeout }, timeout + 10000)
    return { tag, bytes, done }
  }

  /**
   * Limits A's uplink to `rate`, starts a `bytes` echo transfer to `target` and waits until
   * `early` bytes came back (the check is named after `when`); returns the transfer.
   */
  async startTransfer(target, { bytes, rate, timeout, early, when }) {
    await this.lab.limitRate('A', rate)
    const tr = this.transfer(this.A, target, bytes, timeout)
    const r = await this.ask(this.A, { cmd: 'waitBytes', tag: tr.tag, bytes: early, timeout: 15000 }, 20000)
    this.check(`bytes flow ${when}`, r.reached, det(r, `${r.received} bytes back`))
    return tr
  }

  /**
   * The transfer's result, awaited at most `ms` more (then aborted): checks that every byte came
   * back intact and sets bytesLost.
   */
  async finishTransfer(agent, tr, ms, name = 'the transfer') {
    const deaf = { ok: false, code: 'NoAnswer', message: `agent ${agent.side} does not answer` }
    let r = this.deaf.has(agent) ? deaf : await within(tr.done, ms)
    if (r === TIMED_OUT) {
      await this.ask(agent, { cmd: 'abortTransfer', tag: tr.tag, why: `still running ${ms} ms after the path change` }, 5000)
      r = this.deaf.has(agent) ? deaf : await within(tr.done, 5000)
      if (r === TIMED_OUT) r = deaf
    }
    if (r.code === 'NoAnswer') {
      this.set({ bytesLost: null, transfer: { ok: false, error: r.message } })
      this.check(`${name}: all ${tr.bytes} bytes came back intact`, false, r.message)
      return r
    }
    const back = r.bytes ?? 0
    const lost = back < tr.bytes ? tr.bytes - back : r.ok ? 0 : r.received !== r.sent ? tr.bytes : 0
    this.set({ bytesLost: lost, transfer: { ok: r.ok, bytes: back, sentBytes: tr.bytes, ms: r.ms ?? null, error: r.error ?? r.message ?? null, pathAtStart: r.pathAtStart, pathAtEnd: r.pathAtEnd } })
    this.check(`${name}: all ${tr.bytes} bytes came back intact`, r.ok && back === tr.bytes && r.received === r.sent, `${back} bytes back, sha256 ${r.received === r.sent ? 'equal' : 'differs'}, ${r.error ?? r.message ?? 'no error'}`)
    return r
  }

  /** Stops both proxies at once; each stop() must take at most `limit` ms. */
  async stop(limit = 5000) {
    if (this.stopped) return
    this.stopped = true
    const [a, b] = await Promise.all([this.ask(this.A, { cmd: 'stop' }, limit + 5000), this.ask(this.B, { cmd: 'stop' }, limit + 5000)])
    const stopMs = { A: a.ok ? a.fpStopMs ?? a.rpStopMs : null, B: b.ok ? b.rpStopMs ?? b.fpStopMs : null }
    this.set({ stopMs, stuck: !a.ok || !b.ok || this.deaf.size > 0 })
    for (const [side, r, ms] of [['A', a, stopMs.A], ['B', b, stopMs.B]]) {
      this.check(`${side}'s stop() resolves within ${limit} ms`, r.ok && ms != null && ms <= limit, r.ok ? fmt(ms) : r.message)
    }
  }

  /** Always: no blackhole, no rate limit, proxies stopped, then what the scenario asked for. */
  async cleanup() {
    await this.lab.blackhole(false).catch(() => {})
    await this.lab.limitRate('A', null).catch(() => {})
    await this.stop().catch(() => {})
    for (const fn of this.undo || []) await fn().catch((e) => this.check('the lab is restored', false, e.message))
  }

  done() {
    const failed = this.result.checks.filter((c) => !c.pass)
    this.result.ok = this.result.checks.length > 0 && failed.length === 0
    this.result.problem = failed.length ? failed.map((c) => `${c.name} (${c.detail})`).join('; ') : null
    return this.result
  }
}

/** Runs `body(run)`, then cleans up; harness errors become a failed check. */
async function scenario(name, lab, A, B, body) {
  const run = new Run(name, lab, A, B)
  try {
    await body(run)
  } catch (e) {
    run.check('the scenario ran', false, e.stack || e.message)
  } finally {
    await run.cleanup()
  }
  return run.done()
}

/**
 * A pair through the relay that moved to the punched path: B (reverse proxy, `server`) is
 * registered with the relay, A opens through it and waits for 'punched'. Resolves the target
 * ({ host, port } of B as A tracks it) or null (checks say why).
 */
async function relayedPunched(run, relay, { server = 'both', opts = {}, fpHost } = {}) {
  const { A, B, lab } = run
  const pair = await startRelayedPair(lab, A, B, relay, { server, fpHost, upgradeDelay: 300, opts: { connConnectTime: 10000, ...opts } })
  const target = { host: pair.pubB.host, port: pair.pubB.port }
  run.portA = pair.portA
  const open = await run.ask(A, { cmd: 'open', nodeId: pair.nodeIdB, ...target, timeout: 10000, relay: pair.relay }, 20000)
  if (!run.check('A opens through the relay', open.ok && open.path === 'relayed', open.ok ? `path ${open.path}` : open.message)) return null
  const up = await run.event(A, { kind: 'path', proxy: 'fp', path: 'punched' }, 15000)
  run.set({ upgradeMs: up.found ? up.at - open.at + open.ms : null })
  if (!run.check("the connection moves to 'punched' before the path changes", up.found, det(up, up.found ? fmt(up.at - open.at) : `last path event: ${JSON.stringify(up.last)}`))) return null
  return target
}

/** A punched pair without a relay (both open toward each other's public address). */
async function punchedPair(run, { server = 'both', opts = {} } = {}) {
  const { A, B, lab } = run
  const pair = await startPair(lab, A, B, { server, opts: { connConnectTime: 10000, ...opts } })
  const { open } = await openBoth(A, B, pair, 10000).catch((e) => ({ open: { ok: false, message: e.message } }))
  if (!run.check("A and B open a 'punched' connection", open.ok && open.path === 'punched', open.ok ? `path ${open.path}` : open.message)) return null
  return { host: pair.pubB.host, port: pair.pubB.port }
}

/** The path events of both agents since `after` (for the log). */
async function pathLog(run, after) {
  const out = []
  for (const [side, agent] of [['A', run.A], ['B', run.B]]) {
    const r = await run.ask(agent, { cmd: 'events', after }, 5000)
    for (const e of r.events || []) {
      if (e.kind === 'connection') continue
      out.push({ side, kind: e.kind, ms: Math.round(e.at - after), path: e.path, previousPath: e.previousPath, reason: e.reason, state: e.state })
    }
  }
  return out.sort((a, b) => a.ms - b.ms)
}

/**
 * Cone NATs + relay, 32 MiB echoed at 24 Mbit/s over the punched path; 2 s in (4 MiB back) the
 * path is blackholed: the connection must fall back to the relay (fallbackMs, from blackhole-on)
 * and keep moving bytes; once the blackhole is lifted it must return to 'punched' within 30 s
 * (recoveryMs, from blackhole-off); not a byte lost; both stop() within 5 s.
 */
async function blackholeWithRelay(lab, A, B, relay, o = {}) {
  const { bytes = 32 * MiB, rate = '24mbit', fallbackLimit = 10000, recoveryLimit = 30000 } = o
  return scenario('blackhole + relay', lab, A, B, async (run) => {
    const target = await relayedPunched(run, relay)
    if (!target) return
    const tr = await run.startTransfer(target, { bytes, rate, timeout: 120000, early: 4 * MiB, when: 'on the punched path before the blackhole' })
    await lab.blackhole(true)
    const tOn = now()
    const fb = await run.event(A, { kind: 'path', proxy: 'fp', path: 'relayed', after: tOn }, fallbackLimit + 5000)
    const fallbackMs = fb.found ? fb.at - tOn : null
    run.set({ fallbackMs, fallbackReason: fb.event?.reason ?? null })
    run.check(`A falls back to 'relayed' within ${fallbackLimit} ms of the blackhole`, fb.found && fallbackMs <= fallbackLimit, det(fb, fb.found ? fmt(fallbackMs) : `none in ${fallbackLimit + 5000} ms`))
    // Bytes keep coming back through the relay while the punched path is dead.
    const mid = await run.ask(A, { cmd: 'waitBytes', tag: tr.tag, bytes: 0, timeout: 0 }, 5000)
    const more = await run.ask(A, { cmd: 'waitBytes', tag: tr.tag, bytes: (mid.received ?? 0) + MiB, timeout: 10000 }, 15000)
    run.check('bytes keep flowing through the relay during the blackhole', more.reached, det(more, `${mid.received} -> ${more.received} bytes back`))
    const drops = await lab.blackholeDrops()
    run.set({ blackholeDrops: drops })
    run.check('the blackhole dropped datagrams between the public addresses', drops > 0, `${drops} dropped`)
    await lab.blackhole(false)
    const tOff = now()
    const back = await run.event(A, { kind: 'path', proxy: 'fp', path: 'punched', after: tOff }, recoveryLimit + 2000)
    const recoveryMs = back.found ? back.at - tOff : null
    run.set({ recoveryMs, timeMs: recoveryMs })
    run.check(`A returns to 'punched' within ${recoveryLimit} ms of the blackhole's end`, back.found && recoveryMs <= recoveryLimit, det(back, back.found ? fmt(recoveryMs) : `none in ${recoveryLimit + 2000} ms`))
    await run.finishTransfer(A, tr, 30000, `the ${bytes / MiB} MiB transfer`)
    run.set({ events: await pathLog(run, tOn) })
    await run.stop()
  })
}

/**
 * Cone NATs + relay, punched; then the punched path is blackholed while a forger sends A
 * datagrams that claim to come from B's public address (the punched one): QUIC look-alikes,
 * punches and acks with random nonces, every 20 ms. Only an ack echoing one of A's own probe
 * nonces proves the path, so A must still fall back to 'relayed' in time (timeMs: from
 * blackhole-on), and a call must still work (through the relay).
 */
async function forgedDuringBlackhole(lab, A, B, relay, o = {}) {
  const { fallbackLimit = 10000 } = o
  return scenario('forged packets, blackhole + relay', lab, A, B, async (run) => {
    run.set({ timeLabel: 'fallback' })
    const target = await relayedPunched(run, relay)
    if (!target) return
    const forger = await lab.forge('A', target, run.portA)
    run.undo = [() => forger.stop()]
    await lab.blackhole(true)
    const tOn = now()
    const fb = await run.event(A, { kind: 'path', proxy: 'fp', path: 'relayed', after: tOn }, fallbackLimit + 5000)
    const fallbackMs = fb.found ? fb.at - tOn : null
    run.set({ fallbackMs, timeMs: fallbackMs, forged: forger.sent() })
    run.check('the forger sent datagrams from the punched address', forger.sent() >= 50, `${forger.sent()} sent ${forger.error()}`)
    run.check(`A falls back to 'relayed' within ${fallbackLimit} ms although forged datagrams keep coming`, fb.found && fallbackMs <= fallbackLimit, det(fb, fb.found ? `${fmt(fallbackMs)}, reason ${fb.event?.reason}` : `none in ${fallbackLimit + 5000} ms`))
    const call = await run.ask(A, { cmd: 'call', ...target, text: 'through-relay', deadlineMs: 10000 }, 15000)
    run.check('a call still works (through the relay)', call.ok && call.text === 'through-relay', call.ok ? fmt(call.ms) : `${call.code}: ${call.message}`)
    run.set({ events: await pathLog(run, tOn) })
    await run.stop()
  })
}

/**
 * Cone NATs, no relay, keepalive timeout `keepAliveMs`: the path of a running transfer is
 * blackholed for good. A's tunnel client socket must close and A must report 'close' with reason
 * 'keepaliveTimeout' within keepAliveMs + 2 s of blackhole-on (timeMs: the close, from
 * blackhole-on); both stop() within 5 s.
 */
async function blackholeNoRelay(lab, A, B, o = {}) {
  const { keepAliveMs = 6000, bytes = 32 * MiB, rate = '24mbit' } = o
  const limit = keepAliveMs + 2000
  return scenario('blackhole, no relay', lab, A, B, async (run) => {
    run.set({ timeLabel: 'close' })
    const target = await punchedPair(run, { opts: { connKeepAliveTimeoutTime: keepAliveMs } })
    if (!target) return
    const tr = await run.startTransfer(target, { bytes, rate, timeout: 60000, early: 2 * MiB, when: 'before the blackhole' })
    await lab.blackhole(true)
    const tOn = now()
    const closed = await run.event(A, { kind: 'close', proxy: 'fp', after: tOn }, limit + 5000)
    const closeMs = closed.found ? closed.at - tOn : null
    run.set({ closeMs, timeMs: closeMs, closeReason: closed.event?.reason ?? null })
    run.check(`A reports 'close' within ${limit} ms of the blackhole`, closed.found && closeMs <= limit, det(closed, closed.found ? fmt(closeMs) : `none in ${limit + 5000} ms`))
    run.check("the close reason is 'keepaliveTimeout'", closed.event?.reason === 'keepaliveTimeout', det(closed, closed.event?.reason ?? 'no close event'))
    let r = await within(tr.done, limit + 5000 - (now() - tOn))
    if (r === TIMED_OUT) {
      await run.ask(A, { cmd: 'abortTransfer', tag: tr.tag, why: 'the tunnel did not close' }, 5000)
      r = await within(tr.done, 5000)
      if (r === TIMED_OUT) r = { ok: false, message: 'the agent does not answer' }
      run.check(`A's tunnel client socket closes within ${limit} ms`, false, r.error ?? r.message)
    } else {
      const socketMs = r.closedAt != null ? r.closedAt - tOn : null
      run.set({ socketCloseMs: socketMs, transfer: { ok: r.ok, bytes: r.bytes, error: r.error ?? r.message } })
      run.check(`A's tunnel client socket closes within ${limit} ms`, !r.ok && socketMs != null && socketMs <= limit, r.ok ? 'the transfer completed through a blackhole?' : `${fmt(socketMs)}: ${r.error ?? r.message}`)
    }
    const closedB = await run.event(B, { kind: 'close', proxy: 'rp', after: tOn }, 3000)
    run.set({ closeB: closedB.found ? { ms: closedB.at - tOn, reason: closedB.event.reason } : null })
    run.set({ events: await pathLog(run, tOn) })
    await lab.blackhole(false)
    await run.stop()
  })
}

/**
 * NAT rebinding of A, with a chat stream and a 16 MiB transfer running over the punched path.
 * With `relay` (restricted NATs): the old punched path is dead, the relay's rendezvous finds the
 * new address. Without (cone topology): A's NAT rebinds to a new port and the peer's full cone
 * lets the new address in (lab.rebind documents why a restricted pair cannot do without relay).
 * After the rebind the chat stream must go on (every message echoed; recoveryMs: rebind until
 * the first echo), a new unary call must succeed within 10 s, the transfer must arrive intact,
 * and both stop() within 5 s.
 */
async function rebinding(lab, A, B, relay = null, o = {}) {
  const { bytes = 16 * MiB, rate = '24mbit', messages = 4, echoLimit = 30000 } = o
  return scenario(relay ? 'rebinding + relay' : 'rebinding, no relay', lab, A, B, async (run) => {
    const target = relay ? await relayedPunched(run, relay) : await punchedPair(run)
    if (!target) return
    await changeUnderChat(run, target, { bytes, rate, messages, echoLimit }, async () => {
      run.undo = [() => lab.restoreNat('A')] // the next run (matrix.js) starts from the original NAT
      const r = await lab.rebind('A')
      run.set({ rebindRange: r.range })
    })
  })
}

/**
 * Restricted NATs + relay, and a second uplink for A (another NAT, another public address): with
 * a chat stream and a 16 MiB transfer running over the punched path, A's host moves to the other
 * uplink and A's proxy is told (networkChanged()). A 'path' event must come within 5 s of it; the
 * chat stream goes on (recoveryMs: switch until the first echo), a new unary call succeeds within
 * 10 s, the transfer arrives intact; both stop() within 5 s.
 */
async function networkSwitch(lab, A, B, relay, o = {}) {
  const { bytes = 16 * MiB, rate = '24mbit', messages = 4, echoLimit = 30000, eventLimit = 5000, manual = true, bound = false } = o
  const name = bound ? 'network switch, socket on the lost address + relay' : manual ? 'network switch + relay' : 'network switch noticed by itself + relay'
  return scenario(name, lab, A, B, async (run) => {
    await lab.addUplink('A')
    // `bound`: A's socket is bound to its LAN address, which the switch removes: the proxy must
    // move it to the new uplink's address (without that, every send fails).
    const target = await relayedPunched(run, relay, bound ? { fpHost: lab.hosts.A.ip } : {})
    if (!target) return
    await changeUnderChat(run, target, { bytes, rate, messages, echoLimit }, async () => {
      const to = await lab.switchUplink('A')
      const switched = now()
      run.set({ uplink: to })
      if (!manual) {
        // Nobody tells A: on Linux its netlink watcher must notice, re-register with the relay
        // (a 'down' relay event that says why) and re-probe the punched path.
        const down = await run.event(A, { kind: 'relay', proxy: 'fp', state: 'down', after: switched }, eventLimit)
        run.check(`A notices the switch by itself within ${eventLimit} ms (the relay link registers again)`, down.found && /network changed/.test(down.event?.error ?? ''), det(down, down.found ? `${fmt(down.at - switched)}: ${down.event.state} ${down.event.error}` : 'no relay event'))
        const ev = await run.event(A, { kind: 'path', proxy: 'fp', after: switched }, eventLimit)
        run.set({ pathEventMs: ev.found ? ev.at - switched : null, pathEvent: ev.event })
        run.check(`A reports a 'path' event within ${eventLimit} ms of the switch`, ev.found, det(ev, ev.found ? `${fmt(ev.at - switched)}: ${ev.event.path} (${ev.event.reason ?? 'no reason'})` : 'none'))
        return
      }
      const nc = await run.ask(A, { cmd: 'networkChanged' }, 5000)
      run.check('the forward proxy has networkChanged()', nc.ok && nc.supported, nc.ok ? `called on ${nc.called.join(',') || 'nothing'}` : nc.message)
      const ev = await run.event(A, { kind: 'path', proxy: 'fp', after: nc.at ?? now() }, eventLimit)
      run.set({ pathEventMs: ev.found ? ev.at - nc.at : null, pathEvent: ev.event })
      run.check(`A reports a 'path' event within ${eventLimit} ms of networkChanged()`, ev.found, det(ev, ev.found ? `${fmt(ev.at - nc.at)}: ${ev.event.path} (${ev.event.reason ?? 'no reason'})` : 'none'))
    })
  })
}

/**
 * The common middle of rebinding and networkSwitch: chat open, rate-limited transfer running,
 * `change()`, then the chat, a new call and the transfer must all go on.
 */
async function changeUnderChat(run, target, { bytes, rate, messages, echoLimit }, change) {
  const { A } = run
  const opened = await run.ask(A, { cmd: 'chatOpen', ...target, deadlineMs: 10000 }, 15000)
  if (!run.check('a chat stream opens and echoes', opened.ok, opened.message ?? fmt(opened.ms))) return
  const tr = await run.startTransfer(target, { bytes, rate, timeout: 90000, early: 2 * MiB, when: 'before the change' })
  const t0 = now()
  await change()
  // The first message right after the change, and a new unary call (a new tunnel) meanwhile.
  const [first, unary] = await Promise.all([
    run.ask(A, { cmd: 'chatSend', text: 'after-1', deadlineMs: echoLimit }, echoLimit + 5000),
    run.ask(A, { cmd: 'call', ...target, text: 'unary-after', deadlineMs: 10000 }, 15000),
  ])
  const recoveryMs = first.ok ? first.at - t0 : null
  run.set({ recoveryMs, timeMs: recoveryMs, unaryMs: unary.ok ? unary.ms : null })
  run.check(`the chat stream echoes again within ${echoLimit} ms of the change`, first.ok && first.text === 'after-1', first.ok ? fmt(recoveryMs) : first.message)
  run.check('a new unary call succeeds within 10 s of the change', unary.ok && unary.text === 'unary-after', unary.ok ? fmt(unary.ms) : `${unary.code}: ${unary.message}`)
  let echoed = first.ok ? 1 : 0
  for (let i = 2; i <= messages && first.ok; i++) {
    const m = await run.ask(A, { cmd: 'chatSend', text: `after-${i}`, deadlineMs: 5000 }, 10000)
    if (m.ok) echoed++
  }
  run.set({ messagesLost: first.ok ? messages - echoed : null })
  run.check(`every chat message after the change is echoed (${messages})`, echoed === messages, `${echoed} echoed`)
  await run.finishTransfer(A, tr, 30000, `the ${bytes / MiB} MiB transfer`)
  const chat = await run.ask(A, { cmd: 'chatClose' }, 5000)
  run.check('the chat stream stayed open', chat.ok && !chat.error, chat.error ?? chat.message ?? 'open')
  run.set({ events: await pathLog(run, t0) })
  await run.stop()
}

/**
 * Cone NATs + relay: during a 40 MiB transfer at 16 Mbit/s, the punched path is blackholed and
 * restored every 3 s for 30 s (on at 0, off at 3, ..., off at 27 s). No byte lost, nothing hangs,
 * and the connection ends 'punched' (recoveryMs: last blackhole-off until it is punched again,
 * 0 when it never left); both stop() within 5 s.
 */
async function flapping(lab, A, B, relay, o = {}) {
  const { bytes = 40 * MiB, rate = '16mbit', period = 3000, duration = 30000, recoveryLimit = 30000 } = o
  return scenario('flapping + relay', lab, A, B, async (run) => {
    const target = await relayedPunched(run, relay)
    if (!target) return
    const tr = await run.startTransfer(target, { bytes, rate, timeout: 150000, early: 2 * MiB, when: 'before the flapping' })
    const t0 = now()
    let tOff = t0
    const toggles = Math.floor(duration / period)
    for (let i = 0; i < toggles; i++) {
      await lab.blackhole(i % 2 === 0)
      if (i % 2 === 1) tOff = now()
      await sleep(t0 + period * (i + 1) - now()) // the cadence of the flapping is the subject
    }
    await lab.blackhole(false)
    const progress = await run.ask(A, { cmd: 'waitBytes', tag: tr.tag, bytes: 0, timeout: 0 }, 5000)
    run.set({ bytesDuringFlapping: progress.received })
    const end = await run.ask(A, { cmd: 'waitCurrentPath', ...target, path: 'punched', timeout: recoveryLimit }, recoveryLimit + 5000)
    const recoveryMs = end.reached ? Math.max(0, end.at - tOff) : null
    run.set({ recoveryMs, timeMs: recoveryMs })
    run.check(`the connection ends 'punched' (within ${recoveryLimit} ms of the last blackhole)`, end.reached, end.reached ? fmt(recoveryMs) : det(end, `still ${end.path}`))
    await run.finishTransfer(A, tr, 60000, `the ${bytes / MiB} MiB transfer`)
    run.set({ events: await pathLog(run, t0) })
    await run.stop()
  })
}

/**
 * Every scenario with the lab it needs; `run(lab, A, B, relay)`. Keys are the names matrix.js
 * takes on its command line (`node natlab/matrix.js paths blackhole-relay`).
 */
const SCENARIOS = [
  { key: 'blackhole-relay', name: 'blackhole + relay', topology: 'cone', relay: true, run: blackholeWithRelay },
  { key: 'blackhole', name: 'blackhole, no relay', topology: 'cone', relay: false, run: (lab, A, B) => blackholeNoRelay(lab, A, B) },
  { key: 'rebinding-relay', name: 'rebinding + relay', topology: 'restricted', relay: true, run: rebinding },
  { key: 'rebinding', name: 'rebinding, no relay', topology: 'cone', relay: false, run: (lab, A, B) => rebinding(lab, A, B, null) },
  { key: 'network-switch', name: 'network switch + relay', topology: 'restricted', relay: true, run: networkSwitch },
  { key: 'network-switch-auto', name: 'network switch noticed by itself + relay', topology: 'restricted', relay: true, run: (lab, A, B, relay) => networkSwitch(lab, A, B, relay, { manual: false }) },
  { key: 'network-switch-bound', name: 'network switch, socket on the lost address + relay', topology: 'restricted', relay: true, run: (lab, A, B, relay) => networkSwitch(lab, A, B, relay, { bound: true }) },
  { key: 'flapping', name: 'flapping + relay', topology: 'cone', relay: true, run: flapping },
  { key: 'forged', name: 'forged packets, blackhole + relay', topology: 'cone', relay: true, run: forgedDuringBlackhole },
]

/** One line per run for logs. */
function summary(r) {
  const parts = [`${r.scenario}: ${r.ok ? 'ok' : 'FAILED'}`]
  for (const k of ['upgradeMs', 'fallbackMs', 'recoveryMs', 'closeMs', 'socketCloseMs', 'pathEventMs', 'unaryMs']) if (r[k] != null) parts.push(`${k} ${Math.round(r[k])}`)
  if (r.bytesLost != null) parts.push(`bytesLost ${r.bytesLost}`)
  if (r.messagesLost != null) parts.push(`messagesLost ${r.messagesLost}`)
  parts.push(`stop A ${fmt(r.stopMs.A)} B ${fmt(r.stopMs.B)}`)
  return parts.join(', ')
}

module.exports = { blackholeWithRelay, blackholeNoRelay, rebinding, networkSwitch, flapping, forgedDuringBlackhole, SCENARIOS, summary, within, TIMED_OUT }
