'use strict'
// keynet: the public JavaScript API. A thin layer over the generated binding
// (native.js): argument forms and validation, typed errors, and events.

const { EventEmitter } = require('node:events')
const net = require('node:net')
const native = require('./loader.js').load()
const errors = require('./errors.js')

const EVENTS = new Set(['connection', 'close', 'path', 'address', 'relay'])
/** EventEmitter's own events, which `events.once`/`events.on` listen to as well. */
const EMITTER_EVENTS = new Set(['error', 'newListener', 'removeListener'])
const NODE_ID = /^v[0-9a-v]{52}$/

// ---- errors -------------------------------------------------------------------------------

function abortError(signal) {
  const reason = signal && signal.reason
  if (reason instanceof Error) return reason
  const e = new Error('The operation was aborted')
  e.name = 'AbortError'
  e.code = 'ABORT_ERR'
  return e
}

/** Turns a binding error (`[Code] message`) into the matching `errors` class. */
function fromNative(e) {
  const m = /^\[(\w+)\] ([\s\S]*)$/.exec(e && e.message)
  if (!m) return e
  const [, code, message] = m
  if (code === 'ERR_INVALID_ARG_VALUE') {
    const t = new TypeError(message)
    t.code = code
    return t
  }
  if (code === 'ABORT_ERR') return abortError()
  const Cls = errors[code] || errors.ErrorNetwork
  return new Cls(message)
}

async function wrap(promise) {
  try {
    return await promise
  } catch (e) {
    throw fromNative(e)
  }
}

function sync(fn) {
  try {
    return fn()
  } catch (e) {
    throw fromNative(e)
  }
}

// ---- argument checks ------------------------------------------------------------------------

function typeError(name, expected, value) {
  const e = new TypeError(`The "${name}" argument must be ${expected}. Received ${describe(value)}`)
  e.code = 'ERR_INVALID_ARG_TYPE'
  return e
}

function rangeError(name, expected, value) {
  const e = new RangeError(`The value of "${name}" is out of range. It must be ${expected}. Received ${describe(value)}`)
  e.code = 'ERR_OUT_OF_RANGE'
  return e
}

function describe(v) {
  if (typeof v === 'string') return `'${v.length > 60 ? v.slice(0, 60) + '...' : v}'`
  if (v === null || v === undefined) return String(v)
  if (typeof v === 'object') return `an instance of ${v.constructor ? v.constructor.name : 'Object'}`
  return `type ${typeof v} (${String(v)})`
}

function checkHost(name, v) {
  if (typeof v !== 'string') throw typeError(name, 'an IP address string', v)
  if (!net.isIP(v)) throw typeError(name, 'an IPv4 or IPv6 address', v)
  return v
}

function checkPort(name, v) {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw typeError(name, 'an integer', v)
  if (v < 0 || v > 65535) throw rangeError(name, '>= 0 && <= 65535', v)
  return v
}

/** A whole number >= 1 (a count limit), or undefined. */
function checkCount(name, v) {
  if (v === undefined) return undefined
  if (typeof v !== 'number' || !Number.isInteger(v)) throw typeError(name, 'an integer', v)
  if (v < 1 || v > 2 ** 32 - 1) throw rangeError(name, '>= 1 && <= 4294967295', v)
  return v
}

function checkTime(name, v) {
  if (v === undefined) return undefined
  if (typeof v !== 'number' || Number.isNaN(v)) throw typeError(name, 'a number of milliseconds', v)
  if (!(v > 0) || !Number.isFinite(v)) throw rangeError(name, '> 0 and finite', v)
  return v
}

function checkString(name, v) {
  if (typeof v !== 'string') throw typeError(name, 'of type string', v)
  return v
}

function checkNodeId(name, v) {
  if (typeof v !== 'string') throw typeError(name, 'a node id string', v)
  if (!NODE_ID.test(v)) throw typeError(name, "a node id ('v' and 52 base32hex characters)", v)
  return v
}

function checkObject(name, v) {
  if (v === undefined || v === null) return {}
  if (typeof v !== 'object') throw typeError(name, 'an object', v)
  return v
}

function checkTls(name, v) {
  if (v === undefined || v === null) return undefined
  if (typeof v !== 'object') throw typeError(name, 'a { keyPrivatePem, certChainPem } object', v)
  checkString(`${name}.keyPrivatePem`, v.keyPrivatePem)
  checkString(`${name}.certChainPem`, v.certChainPem)
  return v
}

function checkSignal(v) {
  if (v === undefined) return undefined
  if (!v || typeof v.aborted !== 'boolean' || typeof v.addEventListener !== 'function') {
    throw typeError('opts.signal', 'an AbortSignal', v)
  }
  return v
}

/** The original's timer object (`utils.timerStart`): `{ timer, timedOut, timerP }`. */
function isTimer(v) {
  return v !== null && typeof v === 'object' && typeof v.timedOut === 'boolean' && v.timerP !== null && typeof v.timerP === 'object' && typeof v.timerP.then === 'function'
}

/**
 * A wait with the original's timer, or `null` (no deadline of its own), as its deadline: the core
 * gets no timeout of its own (stop(), closeConnection and a signal still end it).
 */
const NO_DEADLINE_MS = 2 ** 31 - 1

/**
 * Runs `run(signal)` with `timer` as its deadline: when `timer.timerP` resolves first, the call
 * is cancelled, `timer.timedOut` is true, and it rejects with `timeoutError()`. `signal` still
 * aborts it as well.
 */
async function withTimer(timer, signal, run, timeoutError) {
  if (!timer) return run(signal)
  if (timer.timedOut) throw timeoutError()
  if (signal && signal.aborted) throw abortError(signal)
  const deadline = new AbortController()
  const onAbort = () => deadline.abort(abortError(signal))
  if (signal) signal.addEventListener('abort', onAbort, { once: true })
  let settled = false
  timer.timerP.then(
    () => {
      if (settled) return
      timer.timedOut = true
      deadline.abort(timeoutError())
    },
    () => {},
  )
  try {
    return await run(deadline.signal)
  } finally {
    settled = true
    if (signal) signal.removeEventListener('abort', onAbort)
  }
}

function checkEvent(event, listener) {
  if (!EVENTS.has(event) && !EMITTER_EVENTS.has(event)) throw typeError('event', "'connection', 'close', 'path', 'address' or 'relay'", event)
  if (typeof listener !== 'function') throw typeError('listener', 'a function', listener)
}

const TRANSPORTS = new Set(['auto', 'quic', 'websocket'])

/**
 * Checks a `relay` option ({ host, port, nodeId, tcpPort?, transport?, keepaliveInterval?,
 * publicPort?, upgrade?, upgradeDelay?, token? }).
 */
function checkRelay(name, v) {
  if (v === undefined || v === null) return undefined
  const r = checkObject(name, v)
  const out = {
    host: checkHost(`${name}.host`, r.host),
    port: checkPort(`${name}.port`, r.port),
    nodeId: checkNodeId(`${name}.nodeId`, r.nodeId),
  }
  if (r.tcpPort !== undefined) out.tcpPort = checkPort(`${name}.tcpPort`, r.tcpPort)
  if (r.transport !== undefined) {
    if (!TRANSPORTS.has(r.transport)) throw typeError(`${name}.transport`, "'auto', 'quic' or 'websocket'", r.transport)
    out.transport = r.transport
  }
  const keepalive = checkTime(`${name}.keepaliveInterval`, r.keepaliveInterval)
  if (keepalive !== undefined) {
    if (keepalive <= 0) throw rangeError(`${name}.keepaliveInterval`, 'a time > 0 ms', keepalive)
    out.keepaliveInterval = keepalive
  }
  for (const flag of ['publicPort', 'upgrade']) {
    if (r[flag] !== undefined) {
      if (typeof r[flag] !== 'boolean') throw typeError(`${name}.${flag}`, 'a boolean', r[flag])
      out[flag] = r[flag]
    }
  }
  if (r.upgradeDelay !== undefined) out.upgradeDelay = r.upgradeDelay === 0 ? 0 : checkTime(`${name}.upgradeDelay`, r.upgradeDelay)
  if (r.token !== undefined) out.token = checkString(`${name}.token`, r.token)
  return out
}

/**
 * Checks `opts.discovery` ({ bootstrap?, announce?, reannounceInterval?, host?, port?, server?,
 * announceAddresses?, relayIdleTime?, relayNetwork? }).
 */
function checkDiscovery(v) {
  if (v === undefined || v === null || v === false) return undefined
  if (v === true) return {}
  const d = checkObject('opts.discovery', v)
  const out = {}
  if (d.bootstrap !== undefined) {
    if (!Array.isArray(d.bootstrap)) throw typeError('opts.discovery.bootstrap', "an array of 'host:port' strings", d.bootstrap)
    out.bootstrap = d.bootstrap.map((b, i) => {
      const name = `opts.discovery.bootstrap[${i}]`
      checkString(name, b)
      const m = /^(.+):(\d{1,5})$/.exec(b)
      if (!m || Number(m[2]) > 65535) throw typeError(name, "a 'host:port' string", b)
      return b
    })
  }
  if (d.announce !== undefined) {
    if (typeof d.announce !== 'boolean') throw typeError('opts.discovery.announce', 'a boolean', d.announce)
    out.announce = d.announce
  }
  for (const key of ['server', 'announceAddresses']) {
    if (d[key] === undefined) continue
    if (typeof d[key] !== 'boolean') throw typeError(`opts.discovery.${key}`, 'a boolean', d[key])
    out[key] = d[key]
  }
  if (d.relayNetwork !== undefined) {
    checkString('opts.discovery.relayNetwork', d.relayNetwork)
    const bytes = Buffer.byteLength(d.relayNetwork)
    if (bytes < 1 || bytes > 64) throw rangeError('opts.discovery.relayNetwork', 'a network name of 1 to 64 bytes', d.relayNetwork)
    out.relayNetwork = d.relayNetwork
  }
  const idle = checkTime('opts.discovery.relayIdleTime', d.relayIdleTime)
  if (idle !== undefined) {
    if (idle <= 0) throw rangeError('opts.discovery.relayIdleTime', 'a time > 0 ms', idle)
    out.relayIdleTime = idle
  }
  const every = checkTime('opts.discovery.reannounceInterval', d.reannounceInterval)
  if (every !== undefined) {
    if (every <= 0) throw rangeError('opts.discovery.reannounceInterval', 'a time > 0 ms', every)
    out.reannounceInterval = every
  }
  if (d.host !== undefined) out.host = checkHost('opts.discovery.host', d.host)
  if (d.port !== undefined) out.port = checkPort('opts.discovery.port', d.port)
  if (d.network !== undefined && d.network !== '') out.network = checkServiceName('opts.discovery.network', d.network)
  if (d.services !== undefined) out.services = checkServices(d.services)
  if (d.serviceTrust !== undefined) out.serviceTrust = checkServiceTrust(d.serviceTrust)
  return out
}

/** Service names: 1-63 of a-z, 0-9, '-', '_' (upper case folded), so `NAME.service.keynet` is a host. */
const SERVICE_NAME = /^[A-Za-z0-9_-]{1,63}$/
const HEX = (n) => new RegExp(`^[0-9a-fA-F]{${n}}$`)

function checkServiceName(name, v) {
  checkString(name, v)
  if (!SERVICE_NAME.test(v)) {
    const e = new TypeError(`The "${name}" argument must be a service name of 1 to 63 characters among a-z, 0-9, '-' and '_'. Received ${describe(v)}`)
    e.code = 'ERR_INVALID_ARG_VALUE'
    throw e
  }
  return v.toLowerCase()
}

function checkHex(name, v, digits) {
  checkString(name, v)
  if (!HEX(digits).test(v)) throw typeError(name, `${digits} hex digits`, v)
  return v
}

/** `services`: names, or `{ name, membership }` for a restricted name (at most 16). */
function checkServices(v) {
  if (!Array.isArray(v)) throw typeError('opts.discovery.services', 'an array of service names or { name, membership }', v)
  if (v.length > 16) throw rangeError('opts.discovery.services', 'at most 16 names', v.length)
  return v.map((s, i) => serviceOffer(`opts.discovery.services[${i}]`, s))
}

function serviceOffer(name, s) {
  if (typeof s === 'string') return { name: checkServiceName(name, s) }
  const o = checkObject(name, s)
  const out = { name: checkServiceName(`${name}.name`, o.name) }
  if (o.membership !== undefined) out.membership = checkHex(`${name}.membership`, o.membership, 192)
  return out
}

/** `serviceTrust`: `{ NAME: { nodeIds?: [...], owner?: hex } }`, as the binding's list. */
function checkServiceTrust(v) {
  const t = checkObject('opts.discovery.serviceTrust', v)
  return Object.entries(t).map(([name, rule]) => {
    const where = `opts.discovery.serviceTrust.${name}`
    const r = checkObject(where, rule)
    const out = { name: checkServiceName('opts.discovery.serviceTrust key', name) }
    if (r.nodeIds !== undefined) {
      if (!Array.isArray(r.nodeIds)) throw typeError(`${where}.nodeIds`, 'an array of node ids', r.nodeIds)
      out.nodeIds = r.nodeIds.map((id, i) => checkNodeId(`${where}.nodeIds[${i}]`, id))
    }
    if (r.owner !== undefined) out.owner = checkHex(`${where}.owner`, r.owner, 64)
    if (out.nodeIds === undefined && out.owner === undefined) throw typeError(where, 'an object with nodeIds and/or owner', rule)
    return out
  })
}

function member(m) {
  return { nodeId: m.nodeId, ageMs: m.ageMs, verified: m.verified, addresses: found(m.addresses), relays: m.relays.map((r) => ({ ...r })) }
}

function found(list) {
  return list.map((f) => ({ host: f.host, port: f.port, ageMs: f.ageMs ?? null, signed: f.signed }))
}

function connOptions(opts) {
  return {
    connConnectTime: checkTime('connConnectTime', opts.connConnectTime),
    connKeepAliveTimeoutTime: checkTime('connKeepAliveTimeoutTime', opts.connKeepAliveTimeoutTime),
    connKeepAliveIntervalTime: checkTime('connKeepAliveIntervalTime', opts.connKeepAliveIntervalTime),
    connPunchIntervalTime: checkTime('connPunchIntervalTime', opts.connPunchIntervalTime),
    connEndTime: checkTime('connEndTime', opts.connEndTime),
    // Test-only (the NAT lab proves its keepalive test can fail); not part of the API.
    disableKeepAlive: opts._disableKeepAlive === true ? true : undefined,
  }
}

// ---- shared plumbing --------------------------------------------------------------------------

let nextOpId = 1

/** Runs `start(opId)` so that `signal` aborting cancels it in the core. */
async function withSignal(handle, signal, start) {
  if (signal && signal.aborted) throw abortError(signal)
  const opId = nextOpId++ % 0xffffffff
  handle.beginOp(opId)
  const onAbort = () => handle.abort(opId)
  if (signal) signal.addEventListener('abort', onAbort, { once: true })
  try {
    return await wrap(start(opId))
  } catch (e) {
    if (signal && signal.aborted) throw abortError(signal)
    throw e
  } finally {
    if (signal) signal.removeEventListener('abort', onAbort)
    handle.endOp(opId)
  }
}

/**
 * Runs `run(opId)` where `signal` aborting *hurries* the call instead of failing it: `stop()` and
 * `closeConnection()` still end what they end, only the drain is cut short (tunnels still open
 * are reset at once) and they resolve.
 */
async function withHurry(handle, signal, run) {
  const opId = nextOpId++ % 0xffffffff
  handle.beginOp(opId)
  const onAbort = () => handle.abort(opId)
  if (signal) {
    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, { once: true })
  }
  try {
    return await wrap(run(opId))
  } finally {
    if (signal) signal.removeEventListener('abort', onAbort)
    handle.endOp(opId)
  }
}

/**
 * Resolves what `start()` resolves, or rejects with the abort reason once `signal` aborts; the
 * abandoned work goes on to its own timeout, its outcome ignored. Not started if already aborted.
 */
function abandonOnAbort(start, signal) {
  if (!signal) return start()
  if (signal.aborted) return Promise.reject(abortError(signal))
  const promise = start()
  promise.catch(() => {})
  let onAbort
  const aborted = new Promise((_, reject) => {
    onAbort = () => reject(abortError(signal))
    signal.addEventListener('abort', onAbort, { once: true })
  })
  return Promise.race([promise, aborted]).finally(() => signal.removeEventListener('abort', onAbort))
}

/**
 * Connects the binding's events to an EventEmitter through a weak threadsafe function and a
 * WeakRef, so neither Node's event loop nor the proxy object is kept alive by listening.
 */
function attachEvents(handle, emitter) {
  const ref = new WeakRef(emitter)
  handle.setEventListener((ev) => {
    const target = ref.deref()
    if (!target) return
    if (ev.kind === 'address') {
      target.emit('address', { addresses: ev.addresses ?? [] })
      return
    }
    if (ev.kind === 'relay') {
      target.emit('relay', relayStatus(ev.relay))
      return
    }
    const event = { ...ev.info }
    if (ev.reason !== undefined && ev.reason !== null) event.reason = ev.reason
    if (ev.previousPath !== undefined && ev.previousPath !== null) event.previousPath = ev.previousPath
    target.emit(ev.kind, event)
  })
}

const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace']
/** The logger method each level goes to (a logger without `trace` gets those at `debug`). */
const LOG_METHOD = { error: 'error', warn: 'warn', info: 'info', debug: 'debug', trace: 'debug' }

/**
 * Sends the proxy's log lines to `logger` (an object with `error`, `warn`, `info` and `debug`
 * methods: the original's @matrixai/logger Logger, `console`, pino, winston...), at `level` and
 * more severe: `opts.logLevel`, else the logger's own (`getEffectiveLevel()` or a numeric
 * `level` in @matrixai/logger's numbering), else 'info'.
 */
function attachLogger(handle, logger, level) {
  if (logger === undefined || logger === null) {
    if (level !== undefined) throw typeError('opts.logLevel', 'given with opts.logger', level)
    return
  }
  if (typeof logger !== 'object' && typeof logger !== 'function') throw typeError('opts.logger', 'an object with error/warn/info/debug methods', logger)
  for (const m of ['error', 'warn', 'info', 'debug']) {
    if (typeof logger[m] !== 'function') throw typeError(`opts.logger.${m}`, 'a function', logger[m])
  }
  sync(() =>
    handle.setLogger((line) => {
      const method = typeof logger[line.level] === 'function' ? line.level : LOG_METHOD[line.level]
      try {
        logger[method](line.message)
      } catch {
        // A logger that throws loses its line, never the proxy.
      }
    }, loggerLevel(logger, level)),
  )
}

function loggerLevel(logger, level) {
  if (level !== undefined) {
    if (!LOG_LEVELS.includes(level)) throw typeError('opts.logLevel', "'error', 'warn', 'info', 'debug' or 'trace'", level)
    return level
  }
  let n = logger.level
  if (typeof logger.getEffectiveLevel === 'function') {
    try {
      n = logger.getEffectiveLevel()
    } catch {}
  }
  // @matrixai/logger: NOTSET 0, DEBUG 1, INFO 2, WARN 3, ERROR 4 (NOTSET: everything).
  if (typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 4) return ['debug', 'debug', 'info', 'warn', 'error'][n]
  if (typeof n === 'string' && LOG_LEVELS.includes(n)) return n
  return 'info'
}

/**
 * What keynet logs to stderr from now on: a filter directive (`'info'`, `'keynet_core=debug'`,
 * `'keynet_core=debug,quinn=warn'`), or null for nothing. At load it is `KEYNET_LOG` (or
 * `RUST_LOG`), else nothing.
 */
function setLogFilter(directive) {
  if (directive !== null) checkString('directive', directive)
  sync(() => native.setLogFilter(directive ?? undefined))
}

function relayStatus(s) {
  const out = { host: s.host, port: s.port, nodeId: s.nodeId, state: s.state }
  for (const k of ['transport', 'observedHost', 'observedPort', 'publicPort', 'error']) out[k] = s[k] ?? null
  if (s.home !== undefined && s.home !== null) out.home = s.home
  return out
}

/** Checks the `relays` start option: an array of `relay` options (up to 8). */
function checkRelays(v) {
  if (v === undefined || v === null) return undefined
  if (!Array.isArray(v)) throw typeError('opts.relays', 'an array of relay options', v)
  if (v.length > MAX_START_RELAYS) throw rangeError('opts.relays', `at most ${MAX_START_RELAYS} relays`, v.length)
  return v.map((r, i) => checkRelay(`opts.relays[${i}]`, r))
}

/** Most relays a proxy registers with at start (records name the home relay and two more). */
const MAX_START_RELAYS = 8

function info(i) {
  return i === null || i === undefined ? undefined : i
}

// ---- what both proxies share --------------------------------------------------------------------

/**
 * Like a listening `net.Server`, a started proxy or relay keeps the Node process alive until
 * `stop()` (its sockets live in Rust, where Node's event loop cannot see them); `unref()` lets
 * the process exit anyway, `ref()` undoes that.
 */
const LoopHold = {
  hold(obj) {
    if (!obj._hold) obj._hold = setInterval(() => {}, 0x7fffffff)
    if (obj._unref) obj._hold.unref()
  },
  release(obj) {
    if (obj._hold) clearInterval(obj._hold)
    obj._hold = null
  },
  ref(obj) {
    obj._unref = false
    if (obj._hold) obj._hold.ref()
    return obj
  },
  unref(obj) {
    obj._unref = true
    if (obj._hold) obj._hold.unref()
    return obj
  },
}

/** What proxies and relays share: `stop()`, and holding the process alive while started. */
class Service extends EventEmitter {
  constructor(handle) {
    super()
    this._native = handle
  }

  async stop() {
    try {
      await wrap(this._native.stop())
    } finally {
      LoopHold.release(this)
    }
  }

  /** Lets the process exit while this runs (as `net.Server#unref`). */
  unref() { return LoopHold.unref(this) }
  /** Undoes `unref()`. */
  ref() { return LoopHold.ref(this) }
}

/**
 * A proxy is an EventEmitter ('connection', 'close', 'path', 'address', 'relay'; listeners are
 * called with `this` = the proxy, and keep neither the proxy nor the process alive): so
 * `events.once(proxy, 'close')` and `for await (const e of events.on(proxy, 'connection'))` work.
 * Names outside those (and EventEmitter's own 'error', 'newListener', 'removeListener') are
 * refused, so a misspelt event is a TypeError, not a listener that never fires.
 */
class Proxy extends Service {
  constructor(handle, opts) {
    super(handle)
    attachEvents(handle, this)
    attachLogger(handle, opts.logger, opts.logLevel)
    // The core's options, defaults filled in (they never change).
    this._timing = Object.freeze(sync(() => handle.options()))
  }

  /**
   * Stops: open tunnels drain for up to `connEndTime` (see the README's "Ends"). `opts.signal`
   * aborting cuts the drain short (what is still open is reset); stop() still resolves.
   */
  async stop(opts) {
    const signal = checkSignal(checkObject('opts', opts).signal)
    try {
      await withHurry(this._native, signal, (opId) => this._native.stop(opId))
    } finally {
      LoopHold.release(this)
    }
  }

  // The original's public readonly timing fields: the values in use.
  get connConnectTime() { return this._timing.connConnectTime }
  get connKeepAliveTimeoutTime() { return this._timing.connKeepAliveTimeoutTime }
  get connKeepAliveIntervalTime() { return this._timing.connKeepAliveIntervalTime }
  get connPunchIntervalTime() { return this._timing.connPunchIntervalTime }
  get connEndTime() { return this._timing.connEndTime }

  getNodeId() { return sync(() => this._native.nodeId()) }
  /** Live connections; 0 when not running (as the original: it works in any state). */
  getConnectionCount() { return sync(() => this._native.connectionCount()) }
  /** Every live connection's ConnectionInfo (what `keynet status` shows). */
  getConnections() { return sync(() => this._native.connections()) }

  /**
   * `{ connections: { direct, punched, relayed }, tunnelsOpen, tunnelsTotal, bytesSent,
   * bytesReceived, failures: { code: n } }`: connections by their path now, tunnels and their
   * bytes (sent: from the local TCP side), failed connection attempts by error code
   * (`maxConnections` for those refused at the limit).
   */
  getStats() { return proxyStats(sync(() => this._native.stats())) }

  /** Identity for connections opened afterwards (and for later starts without tlsConfig). */
  setTlsConfig(tlsConfig) {
    if (tlsConfig === undefined || tlsConfig === null) throw typeError('tlsConfig', 'a { keyPrivatePem, certChainPem } object', tlsConfig)
    checkTls('tlsConfig', tlsConfig)
    sync(() => this._native.setTlsConfig(tlsConfig.keyPrivatePem, tlsConfig.certChainPem))
  }

  /** The original's name for `setTlsConfig`. */
  setTLSConfig(tlsConfig) { return this.setTlsConfig(tlsConfig) }

  /** First form: track an address without punching. */
  addDirectConnection(port, host) {
    checkPort('port', port)
    checkHost('host', host)
    sync(() => this._native.addDirectConnection(host, port))
  }

  /** First form: forget a tracked address and close its connection. */
  removeConnection(port, host) {
    checkPort('port', port)
    checkHost('host', host)
    sync(() => this._native.removeConnection(host, port))
  }

  /**
   * Looks a node id up on the DHT (needs `discovery` at start): resolves
   * `[{ host, port, ageMs, signed }]`, the node's signed record first; `ageMs` is null for
   * unsigned hints. Empty when nothing was found.
   */
  async lookup(nodeId, opts) {
    checkNodeId('nodeId', nodeId)
    opts = checkObject('opts', opts)
    const timeout = checkTime('opts.timeout', opts.timeout)
    const signal = checkSignal(opts.signal)
    return found(await abandonOnAbort(() => wrap(this._native.lookup(nodeId, timeout)), signal))
  }

  /**
   * What the DHT says about reaching a node id (needs `discovery` at start): resolves
   * `{ addresses: [{ host, port, ageMs, signed }], relays: [{ host, port, nodeId, tcpPort, quic,
   * websocket }] }`, the relays from its newest signed record, home relay first.
   */
  async locate(nodeId, opts) {
    checkNodeId('nodeId', nodeId)
    opts = checkObject('opts', opts)
    const timeout = checkTime('opts.timeout', opts.timeout)
    const signal = checkSignal(opts.signal)
    const l = await abandonOnAbort(() => wrap(this._native.locate(nodeId, timeout)), signal)
    return { addresses: found(l.addresses), relays: l.relays.map((r) => ({ ...r })) }
  }

  /** The addresses this proxy announced last on the DHT (`[]` before the first announce). */
  getAnnouncedAddresses() { return sync(() => this._native.announced()) }

  /**
   * Tells the proxy the device changed networks (call it from the platform's network callback;
   * on Linux it is noticed without being asked): rebinds the UDP socket if its address is gone,
   * registers with relays again, re-probes every direct path. Open tunnels go on.
   */
  networkChanged() { sync(() => this._native.networkChanged()) }

  on(event, listener) { checkEvent(event, listener); return super.on(event, listener) }
  addListener(event, listener) { checkEvent(event, listener); return super.addListener(event, listener) }
  prependListener(event, listener) { checkEvent(event, listener); return super.prependListener(event, listener) }
  once(event, listener) { checkEvent(event, listener); return super.once(event, listener) }
  prependOnceListener(event, listener) { checkEvent(event, listener); return super.prependOnceListener(event, listener) }
}

// ---- ForwardProxy ----------------------------------------------------------------------------

class ForwardProxy extends Proxy {
  /**
   * @param {{authToken: string, connConnectTime?: number, connKeepAliveTimeoutTime?: number,
   *   connKeepAliveIntervalTime?: number, connPunchIntervalTime?: number, connEndTime?: number}} opts
   */
  constructor(opts) {
    opts = checkObject('opts', opts)
    checkString('opts.authToken', opts.authToken)
    super(sync(() => new native.NativeForwardProxy(opts.authToken, connOptions(opts))), opts)
  }

  /** The token CONNECT clients must present (the original's readonly field). */
  get authToken() { return sync(() => this._native.authToken()) }

  async start(opts) {
    if (typeof opts === 'string') opts = { authToken: opts }
    opts = checkObject('opts', opts)
    const proxyHost = checkHost('opts.proxyHost', opts.proxyHost ?? '127.0.0.1')
    const proxyPort = checkPort('opts.proxyPort', opts.proxyPort ?? 0)
    const egressHost = checkHost('opts.egressHost', opts.egressHost ?? '127.0.0.1')
    const egressPort = checkPort('opts.egressPort', opts.egressPort ?? 0)
    const tls = checkTls('opts.tlsConfig', opts.tlsConfig)
    const token = opts.authToken === undefined ? undefined : checkString('opts.authToken', opts.authToken)
    const discovery = checkDiscovery(opts.discovery)
    const relay = checkRelay('opts.relay', opts.relay)
    const relays = checkRelays(opts.relays)
    const maxConnections = checkCount('opts.maxConnections', opts.maxConnections)
    const signal = checkSignal(opts.signal)
    await withSignal(this._native, signal, (opId) =>
      this._native.start({
        proxyHost,
        proxyPort,
        egressHost,
        egressPort,
        keyPrivatePem: tls?.keyPrivatePem,
        certChainPem: tls?.certChainPem,
        authToken: token,
        discovery,
        relay,
        relays,
        maxConnections,
      }, opId),
    )
    LoopHold.hold(this)
  }

  getProxyHost() { return sync(() => this._native.proxyHost()) }
  getProxyPort() { return sync(() => this._native.proxyPort()) }
  getEgressHost() { return sync(() => this._native.egressHost()) }
  getEgressPort() { return sync(() => this._native.egressPort()) }
  /** First form: the HTTP CONNECT port (= getProxyPort()). */
  getHttpPort() { return this.getProxyPort() }
  /** First form: the UDP port (= getEgressPort()). */
  getSocketPort() { return this.getEgressPort() }

  /**
   * openConnection(nodeId, host, port, opts?) or openConnection(host, port, { nodeId }?):
   * opens (or reuses) the QUIC connection to a reverse proxy and tracks it.
   * openConnection(nodeId, opts?) (with `discovery`): finds the node on the DHT first and
   * resolves its ConnectionInfo.
   */
  async openConnection(a, b, c, d) {
    if (a !== null && typeof a === 'object' && a.service !== undefined) {
      // openConnection({ service, timeout?, signal? }): one replica of a service name.
      const name = checkServiceName('opts.service', a.service)
      const timeout = checkTime('opts.timeout', a.timeout)
      const signal = checkSignal(a.signal)
      return withSignal(this._native, signal, (opId) => this._native.openConnectionToService(name, timeout, opId))
    }
    if (typeof a === 'string' && NODE_ID.test(a) && (b === undefined || (typeof b === 'object' && b !== null))) {
      const opts = checkObject('opts', b)
      const timeout = checkTime('opts.timeout', opts.timeout)
      const signal = checkSignal(opts.signal)
      return withSignal(this._native, signal, (opId) => this._native.openConnectionToNode(a, timeout, opId))
    }
    let nodeId, host, port, opts
    let timer = null
    // (nodeId, host, port, opts) has the host second; (host, port, opts) a port.
    if (typeof b === 'string' && (net.isIP(b) || NODE_ID.test(a))) {
      // The original's (nodeId, host, port, timer?): a timer object is the deadline, null none.
      if (d === null || isTimer(d)) {
        ;[nodeId, host, port, opts, timer] = [a, b, c, {}, d ?? undefined]
        if (d === null) opts.timeout = NO_DEADLINE_MS
      } else {
        ;[nodeId, host, port, opts] = [a, b, c, checkObject('opts', d)]
      }
    } else {
      ;[host, port, opts] = [a, b, checkObject('opts', c)]
      nodeId = opts.nodeId
    }
    checkHost('host', host)
    checkPort('port', port)
    if (nodeId !== undefined) checkNodeId('nodeId', nodeId)
    const timeout = timer ? NO_DEADLINE_MS : checkTime('opts.timeout', opts.timeout)
    const signal = checkSignal(opts.signal)
    const relay = checkRelay('opts.relay', opts.relay)
    if (relay && nodeId === undefined) throw typeError('nodeId', 'a node id (a relay reaches nodes by id)', nodeId)
    const timedOut = () => new errors.ErrorConnectionStartTimeout(`no connection to ${host}:${port} before the timer ran out`)
    return withTimer(timer, signal, (sig) =>
      withSignal(this._native, sig, (opId) => this._native.openConnection(host, port, nodeId, timeout, opId, relay)),
    timedOut)
  }

  /**
   * The relay links: `[{ host, port, nodeId, state: 'connecting' | 'up' | 'down', transport,
   * observedHost, observedPort, publicPort, error }]`.
   */
  getRelayStatus() { return sync(() => this._native.relayStatus()).map(relayStatus) }

  /**
   * Ends the connection to a reverse proxy: its tunnels drain for up to `connEndTime`;
   * `opts.signal` aborting cuts that short (what is still open is reset; it still resolves).
   */
  async closeConnection(host, port, opts) {
    checkHost('host', host)
    checkPort('port', port)
    const signal = checkSignal(checkObject('opts', opts).signal)
    await withHurry(this._native, signal, (opId) => this._native.closeConnection(host, port, opId))
  }

  getConnectionInfoByIngress(host, port) {
    checkHost('host', host)
    checkPort('port', port)
    return info(sync(() => this._native.infoByIngress(host, port)))
  }

  getConnectionInfoByClient(clientHost, clientPort) {
    checkHost('clientHost', clientHost)
    checkPort('clientPort', clientPort)
    return info(sync(() => this._native.infoByClient(clientHost, clientPort)))
  }

  /**
   * First form: connect while punching, for `attempts` punch intervals (`connPunchIntervalTime`
   * each) at most; resolves whether the connection came up.
   */
  async addNatConnection(port, host, attempts = 50) {
    checkPort('port', port)
    checkHost('host', host)
    if (!Number.isInteger(attempts) || attempts < 1) throw rangeError('attempts', 'an integer >= 1', attempts)
    const timeout = Math.min(attempts * this.connPunchIntervalTime, NO_DEADLINE_MS)
    try {
      await wrap(this._native.openConnection(host, port, undefined, timeout, undefined))
      return true
    } catch (e) {
      if (e instanceof errors.ErrorConnection || e instanceof errors.ErrorCertChain) return false
      throw e
    }
  }

  /**
   * The replicas of a service name on the DHT (needs `discovery`): resolves `[{ nodeId, ageMs,
   * verified, addresses, relays }]`, newest first; `verified` says a restricted name's member
   * (by `discovery.serviceTrust`).
   */
  async lookupService(name, opts) {
    name = checkServiceName('name', name)
    opts = checkObject('opts', opts)
    const timeout = checkTime('opts.timeout', opts.timeout)
    const signal = checkSignal(opts.signal)
    const list = await withSignal(this._native, signal, (opId) => this._native.lookupService(name, timeout, opId))
    return list.map(member)
  }
}

// ---- ReverseProxy ----------------------------------------------------------------------------

class ReverseProxy extends Proxy {
  constructor(opts) {
    opts = checkObject('opts', opts)
    super(sync(() => new native.NativeReverseProxy(connOptions(opts))), opts)
  }

  /**
   * start({ serverHost, serverPort, ... }), or the first form: start(grpcHost, grpcPort),
   * start({ grpcHost = '127.0.0.1', grpcPort = 0 }) or start(), where port 0 means no server yet
   * (every tunnel is refused with 502 until a restart names one).
   */
  async start(a, b) {
    const opts = typeof a === 'string' ? { serverHost: a, serverPort: b } : checkObject('opts', a)
    const firstForm = a === undefined || ((opts.grpcHost !== undefined || opts.grpcPort !== undefined) && opts.serverPort === undefined)
    const serverHost = checkHost('opts.serverHost', opts.serverHost ?? opts.grpcHost ?? '127.0.0.1')
    const serverPort = checkPort('opts.serverPort', opts.serverPort ?? opts.grpcPort ?? (firstForm ? 0 : undefined))
    const ingressHost = checkHost('opts.ingressHost', opts.ingressHost ?? '127.0.0.1')
    const ingressPort = checkPort('opts.ingressPort', opts.ingressPort ?? 0)
    const tls = checkTls('opts.tlsConfig', opts.tlsConfig)
    let allowed
    if (opts.allowedNodeIds !== undefined) {
      if (!Array.isArray(opts.allowedNodeIds)) throw typeError('opts.allowedNodeIds', 'an array of node ids', opts.allowedNodeIds)
      allowed = opts.allowedNodeIds.map((id, i) => checkNodeId(`opts.allowedNodeIds[${i}]`, id))
    }
    const discovery = checkDiscovery(opts.discovery)
    const relay = checkRelay('opts.relay', opts.relay)
    const relays = checkRelays(opts.relays)
    const maxConnections = checkCount('opts.maxConnections', opts.maxConnections)
    const maxStreamsPerConnection = checkCount('opts.maxStreamsPerConnection', opts.maxStreamsPerConnection)
    const signal = checkSignal(opts.signal)
    await withSignal(this._native, signal, (opId) =>
      this._native.start({
        serverHost,
        serverPort,
        ingressHost,
        ingressPort,
        keyPrivatePem: tls?.keyPrivatePem,
        certChainPem: tls?.certChainPem,
        allowedNodeIds: allowed,
        discovery,
        relay,
        relays,
        maxConnections,
        maxStreamsPerConnection,
      }, opId),
    )
    LoopHold.hold(this)
  }

  /**
   * The relay link (null without `relay` at start): `{ host, port, nodeId, state, transport,
   * observedHost, observedPort, publicPort, error }`; `publicPort` is the relay port that plain
   * TCP clients use to reach this proxy's server (with `relay.publicPort: true`).
   */
  getRelayStatus() {
    const s = sync(() => this._native.relayStatus())
    return s === null || s === undefined ? null : relayStatus(s)
  }
  /**
   * Every relay link (`relay` and `relays` at start): `[{ ...getRelayStatus() fields, home }]`;
   * `home` marks the relay this proxy's records name first (the one callers dial).
   */
  getRelays() { return sync(() => this._native.relaysStatus()).map(relayStatus) }

  getIngressHost() { return sync(() => this._native.ingressHost()) }
  getIngressPort() { return sync(() => this._native.ingressPort()) }
  getServerHost() { return sync(() => this._native.serverHost()) }
  getServerPort() { return sync(() => this._native.serverPort()) }
  /** First form: the UDP port (= getIngressPort()). */
  getSocketPort() { return this.getIngressPort() }

  /**
   * Changes which node ids may connect while running (null: any), as `allowedNodeIds` at start:
   * later handshakes are checked against the new list; connections of nodes no longer on it
   * end (their tunnels drain).
   */
  setAllowedNodeIds(ids) {
    if (ids !== null) {
      if (!Array.isArray(ids)) throw typeError('ids', 'an array of node ids or null', ids)
      ids.forEach((id, i) => checkNodeId(`ids[${i}]`, id))
    }
    sync(() => this._native.setAllowedNodeIds(ids ?? undefined))
  }

  /**
   * Punches toward a forward proxy until its connection arrives (rejects on timeout):
   * openConnection(egressHost, egressPort, { timeout?, signal? }), or the original's
   * openConnection(egressHost, egressPort, timer) with a timer object as the deadline (null: none).
   */
  async openConnection(egressHost, egressPort, opts) {
    checkHost('egressHost', egressHost)
    checkPort('egressPort', egressPort)
    let timer
    if (opts === null || isTimer(opts)) {
      timer = opts ?? undefined
      opts = { timeout: NO_DEADLINE_MS }
    }
    opts = checkObject('opts', opts)
    const timeout = timer ? NO_DEADLINE_MS : checkTime('opts.timeout', opts.timeout) ?? this.connConnectTime
    const signal = checkSignal(opts.signal)
    const timedOut = () => new errors.ErrorConnectionStartTimeout(`no connection from ${egressHost}:${egressPort} before the timer ran out`)
    const ok = await withTimer(timer, signal, (sig) =>
      withSignal(this._native, sig, (opId) => this._native.punch(egressHost, egressPort, 0xffffffff, timeout, opId)),
    timedOut)
    if (!ok) {
      throw new errors.ErrorConnectionStartTimeout(`no connection from ${egressHost}:${egressPort} within ${timeout} ms`)
    }
  }

  /** Ends the connection from a forward proxy, as ForwardProxy#closeConnection. */
  async closeConnection(egressHost, egressPort, opts) {
    checkHost('egressHost', egressHost)
    checkPort('egressPort', egressPort)
    const signal = checkSignal(checkObject('opts', opts).signal)
    await withHurry(this._native, signal, (opId) => this._native.closeConnection(egressHost, egressPort, opId))
  }

  getConnectionInfoByEgress(egressHost, egressPort) {
    checkHost('egressHost', egressHost)
    checkPort('egressPort', egressPort)
    return info(sync(() => this._native.infoByEgress(egressHost, egressPort)))
  }

  getConnectionInfoByProxy(proxyHost, proxyPort) {
    checkHost('proxyHost', proxyHost)
    checkPort('proxyPort', proxyPort)
    return info(sync(() => this._native.infoByProxy(proxyHost, proxyPort)))
  }

  /**
   * First form: punch toward a forward proxy `attempts` times, one per `connPunchIntervalTime`;
   * resolves whether its connection arrived by the end of the last interval.
   */
  async addNatConnection(port, host, attempts = 50) {
    checkPort('port', port)
    checkHost('host', host)
    if (!Number.isInteger(attempts) || attempts < 1) throw rangeError('attempts', 'an integer >= 1', attempts)
    const timeout = Math.min(attempts * this.connPunchIntervalTime, NO_DEADLINE_MS)
    return wrap(this._native.punch(host, port, attempts, timeout, undefined))
  }
}

/** A proxy's `getStats()` from the native snapshot. */
function proxyStats(s) {
  const failures = {}
  s.failureCodes.forEach((code, i) => { failures[code] = s.failureCounts[i] })
  return {
    connections: { direct: s.direct, punched: s.punched, relayed: s.relayed },
    tunnelsOpen: s.tunnelsOpen,
    tunnelsTotal: s.tunnelsTotal,
    bytesSent: s.bytesSent,
    bytesReceived: s.bytesReceived,
    failures,
  }
}

// ---- Relay -----------------------------------------------------------------------------------

/**
 * The relay (hub) as a class: the same server as the `keynet-relay` binary. Keynodes register
 * with it over QUIC (UDP) or TLS + WebSocket (TCP); it carries their end-to-end encrypted QUIC
 * packets to each other, arranges rendezvous for punching, and allocates public TCP ports.
 */
class Relay extends Service {
  /** @param {{connConnectTime?: number, connKeepAliveTimeoutTime?: number, connKeepAliveIntervalTime?: number, connEndTime?: number}} [opts] */
  constructor(opts) {
    opts = checkObject('opts', opts)
    super(sync(() => new native.NativeRelayServer(connOptions(opts))))
  }

  /**
   * start({ host = '127.0.0.1', port = 0, tcpPort?, tlsConfig?, allowedNodeIds?, token?,
   *   callers = true, publicPorts?: false | { host?, range?: [first, last], retention?, stateFile? },
   *   ...limits })
   * Every limit of `Relay.limits` is an option of its own (times in ms), e.g. `maxPeers`,
   * `maxConnectionsPerIp`, `stallTimeout`.
   */
  async start(opts) {
    opts = checkObject('opts', opts)
    const o = {
      host: checkHost('opts.host', opts.host ?? '127.0.0.1'),
      port: checkPort('opts.port', opts.port ?? 0),
    }
    if (opts.tcpPort !== undefined) o.tcpPort = checkPort('opts.tcpPort', opts.tcpPort)
    const tls = checkTls('opts.tlsConfig', opts.tlsConfig)
    if (tls) {
      o.keyPrivatePem = tls.keyPrivatePem
      o.certChainPem = tls.certChainPem
    }
    if (opts.allowedNodeIds !== undefined) {
      if (!Array.isArray(opts.allowedNodeIds)) throw typeError('opts.allowedNodeIds', 'an array of node ids', opts.allowedNodeIds)
      o.allowedNodeIds = opts.allowedNodeIds.map((id, i) => checkNodeId(`opts.allowedNodeIds[${i}]`, id))
    }
    if (opts.token !== undefined) o.token = checkString('opts.token', opts.token)
    if (opts.callers !== undefined) {
      if (typeof opts.callers !== 'boolean') throw typeError('opts.callers', 'a boolean', opts.callers)
      o.callers = opts.callers
    }
    if (opts.publicPorts === false) {
      o.publicPorts = false
    } else if (opts.publicPorts !== undefined) {
      const p = checkObject('opts.publicPorts', opts.publicPorts)
      if (p.host !== undefined) o.publicHost = checkHost('opts.publicPorts.host', p.host)
      if (p.range !== undefined) {
        const ok = Array.isArray(p.range) && p.range.length === 2 && p.range.every((x) => Number.isInteger(x) && x >= 1 && x <= 65535) && p.range[0] <= p.range[1]
        if (!ok) throw rangeError('opts.publicPorts.range', '[first, last] ports with 1 <= first <= last <= 65535', p.range)
        ;[o.portRangeStart, o.portRangeEnd] = p.range
      }
      const retention = checkTime('opts.publicPorts.retention', p.retention)
      if (retention !== undefined) {
        if (retention <= 0) throw rangeError('opts.publicPorts.retention', 'a time > 0 ms', retention)
        o.retention = retention
      }
      if (p.stateFile !== undefined) o.stateFile = checkString('opts.publicPorts.stateFile', p.stateFile)
      // Still accepted here (it was, before the limits moved to the top level).
      if (p.maxClients !== undefined && opts.maxClients === undefined) opts = { ...opts, maxClients: p.maxClients }
    }
    o.limits = {}
    for (const { key, unit } of RELAY_LIMITS) {
      if (opts[key] === undefined) continue
      const name = `opts.${key}`
      if (unit === 'ms') {
        const ms = checkTime(name, opts[key])
        if (ms <= 0) throw rangeError(name, 'a time > 0 ms', ms)
        o.limits[key] = ms
      } else if (unit === 'perSecond') {
        if (typeof opts[key] !== 'number') throw typeError(name, 'a number', opts[key])
        if (!(opts[key] > 0) || !Number.isFinite(opts[key])) throw rangeError(name, 'a rate > 0', opts[key])
        o.limits[key] = opts[key]
      } else {
        if (typeof opts[key] !== 'number') throw typeError(name, 'an integer', opts[key])
        if (!Number.isInteger(opts[key]) || opts[key] < 1) throw rangeError(name, 'an integer >= 1', opts[key])
        o.limits[key] = opts[key]
      }
    }
    await wrap(this._native.start(o))
    LoopHold.hold(this)
  }

  getNodeId() { return sync(() => this._native.nodeId()) }
  getHost() { return sync(() => this._native.host()) }
  /** The UDP (QUIC) port. */
  getPort() { return sync(() => this._native.port()) }
  /** The TCP (TLS/WebSocket) port. */
  getTcpPort() { return sync(() => this._native.tcpPort()) }
  /** Node ids registered now, sorted. */
  getRegisteredNodeIds() { return sync(() => this._native.registered()) }
  /** Public ports held now: `[{ nodeId, port }]` (for connected nodes and retained ones). */
  getAllocations() { return sync(() => this._native.allocations()) }

  /**
   * What the relay holds, carried, dropped and refused: `{ sessions: { quic, websocket },
   * registeredNodes, allocations, publicClients, queuedBytes, trackedAddresses, packetsRelayed,
   * bytesRelayed, packetsOnChannel, rendezvousSent, stalledResets, drops: { reason: n }, refusals: { reason: n } }`.
   */
  getMetrics() {
    const m = sync(() => this._native.metrics())
    const byReason = (rows) => Object.fromEntries(rows.map((r) => [r.reason, r.count]))
    return {
      sessions: { quic: m.sessionsQuic, websocket: m.sessionsWebsocket },
      registeredNodes: m.registeredNodes,
      allocations: m.allocations,
      publicClients: m.publicClients,
      queuedBytes: m.queuedBytes,
      trackedAddresses: m.trackedAddresses,
      packetsRelayed: m.packetsRelayed,
      bytesRelayed: m.bytesRelayed,
      packetsOnChannel: m.packetsOnChannel,
      rendezvousSent: m.rendezvousSent,
      stalledResets: m.stalledResets,
      drops: byReason(m.drops),
      refusals: byReason(m.refusals),
    }
  }

  /** The same as `getMetrics()`, in the Prometheus text format. */
  getMetricsText() { return sync(() => this._native.metrics()).prometheus }
}

/**
 * Starts offering a service name while running (needs `discovery`): announced at once;
 * `opts.membership` is the owner's word for a restricted name (`signServiceMember`).
 */
ReverseProxy.prototype.announceService = function announceService(name, opts) {
  const offer = serviceOffer('name', typeof name === 'string' && opts === undefined ? name : { ...checkObject('opts', opts), name })
  sync(() => this._native.announceService(offer))
}

/** Stops offering a service name (callers skip it at once); false when it was not offered. */
ReverseProxy.prototype.withdrawService = function withdrawService(name) {
  name = checkServiceName('name', name)
  return sync(() => this._native.withdrawService(name))
}

/** The service names offered now. */
ReverseProxy.prototype.getServices = function getServices() {
  return sync(() => this._native.services())
}

/** The relay's limits: `[{ key, unit: 'count' | 'bytes' | 'ms' | 'perSecond', defaultValue, doc }]`. */
const RELAY_LIMITS = Object.freeze(native.relayLimits().map((l) => Object.freeze(l)))
Relay.limits = RELAY_LIMITS

// ---- identity --------------------------------------------------------------------------------

/** Generates an Ed25519 identity: `{ nodeId, tlsConfig: { keyPrivatePem, certChainPem } }`. */
async function generateIdentity() {
  const id = await wrap(native.generateIdentity())
  return { nodeId: id.nodeId, tlsConfig: { keyPrivatePem: id.keyPrivatePem, certChainPem: id.certChainPem } }
}

/** Rotates to a fresh key whose certificate is signed by the previous key (chain grows by one). */
function rotateIdentity(tlsConfig) {
  checkTls('tlsConfig', tlsConfig)
  if (!tlsConfig) throw typeError('tlsConfig', 'a { keyPrivatePem, certChainPem } object', tlsConfig)
  const id = sync(() => native.rotateIdentity(tlsConfig.keyPrivatePem, tlsConfig.certChainPem))
  return { nodeId: id.nodeId, tlsConfig: { keyPrivatePem: id.keyPrivatePem, certChainPem: id.certChainPem } }
}

/** The node id of the first certificate in `certPem`. */
function nodeIdFromCertificate(certPem) {
  checkString('certPem', certPem)
  return sync(() => native.nodeIdFromCertificate(certPem))
}

// ---- service owners --------------------------------------------------------------------------

/** A fresh service owner key: `{ publicKey, privateKey }`, 64 hex digits each (keep the second secret). */
function generateServiceOwner() {
  const k = sync(() => native.generateServiceOwner())
  return { publicKey: k.publicKey, privateKey: k.privateKey }
}

/**
 * The owner's membership admitting `nodeId` to the restricted service `name` (192 hex digits):
 * the node offers the name with it (`discovery.services: [{ name, membership }]`), callers that
 * trust the owner's `publicKey` (`discovery.serviceTrust`) accept it.
 */
function signServiceMember(ownerPrivateKey, name, nodeId, opts) {
  checkHex('ownerPrivateKey', ownerPrivateKey, 64)
  name = checkServiceName('name', name)
  checkNodeId('nodeId', nodeId)
  opts = checkObject('opts', opts)
  const network = opts.network === undefined || opts.network === '' ? undefined : checkServiceName('opts.network', opts.network)
  return sync(() => native.signServiceMember(ownerPrivateKey, name, nodeId, network))
}

/**
 * The original's helpers (`buildAddress`, `parseAddress`, `isValidHost`, `resolvesZeroIP`,
 * `toAuthToken`) and `certNodeId(certPem)`: the node id a certificate proves (keynet derives it
 * from the key; the original read the subject CN, which is the same id for a keynet certificate).
 */
const utils = Object.freeze({ ...require('./utils.js'), certNodeId: nodeIdFromCertificate })

module.exports = {
  utils,
  setLogFilter,
  ForwardProxy,
  ReverseProxy,
  Relay,
  generateIdentity,
  rotateIdentity,
  nodeIdFromCertificate,
  generateServiceOwner,
  signServiceMember,
  errors,
}
