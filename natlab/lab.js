'use strict'
// The NAT lab: topologies of two keynodes A and B built from Linux network namespaces, veth
// pairs and nftables, entirely inside namespaces this process creates (nothing is created in, or
// routed to, the root namespace). Addresses come from documentation ranges that exist only
// inside the lab: the public segment is 203.0.113.0/24, home LANs 198.51.100.0/26 (A) and
// 198.51.100.64/26 (B), the carrier segment of double NAT 192.0.2.0/24; with IPv6 (the pair
// topology's `families`), the public segment is 2001:db8:ff::/64 and the LANs 2001:db8:a::/64
// and 2001:db8:b::/64, routed (no NAT) through a stateful firewall. Needs root, iproute2 and
// nftables. Every lab is removed by destroy(), and by a process exit hook if the caller dies.

const { execFile, execFileSync, spawn } = require('node:child_process')
const { promisify } = require('node:util')
const readline = require('node:readline')
const path = require('node:path')
const fs = require('node:fs')

const run = promisify(execFile)
const PUBLIC = '203.0.113'
const RELAY_IP = `${PUBLIC}.100`
const PUBLIC6 = '2001:db8:ff::'
const RELAY_IP6 = `${PUBLIC6}100`
/** Address families a side of the pair topology may have. */
const FAMILIES = ['v4', 'dual', 'v6']
const RELAY_BIN = path.join(__dirname, '..', 'target', 'debug', 'keynet-relay')
/** The `keynet` command (built with keynet-relay). */
const KEYNET_BIN = path.join(__dirname, '..', 'target', 'debug', 'keynet')

// System tools by absolute path: under npm, node_modules/.bin comes first in PATH, and a dev
// dependency ships an unrelated `nft` command there.
const SYSTEM_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', '/usr/local/sbin', '/usr/local/bin']
function tool(name) {
  for (const dir of SYSTEM_DIRS) {
    const p = path.join(dir, name)
    if (fs.existsSync(p)) return p
  }
  return null
}
const IP = tool('ip') || 'ip'
const NFT = tool('nft') || 'nft'
const SYSCTL = tool('sysctl') || 'sysctl'
const CONNTRACK = tool('conntrack')
const TC = tool('tc') || 'tc'

/** Which topologies exist and whether keynet must traverse them without a relay. */
const TOPOLOGIES = {
  direct: { mustWork: true, describe: 'A and B on the public segment, no NAT' },
  cone: { mustWork: true, describe: 'full cone NAT on both sides (endpoint-independent mapping and filtering)' },
  restricted: { mustWork: true, describe: 'port-restricted cone NAT on both sides' },
  symmetric: { mustWork: false, describe: 'endpoint-dependent mapping at A, port-restricted at B' },
  'udp-blocked': { mustWork: false, describe: "A's NAT drops all UDP" },
  lossy: { mustWork: true, describe: 'full cone NATs, 5% random loss on the public segment' },
  'double-nat': { mustWork: true, describe: 'A behind a home NAT behind a carrier-grade NAT; B behind a NAT' },
  hairpin: { mustWork: true, describe: 'A and B behind the same NAT, reaching each other by its public address' },
}

/** NAT kinds a side of the 'pair' topology may have. */
const NAT_KINDS = ['none', 'cone', 'restricted', 'symmetric', 'udp-blocked']

const live = new Set()
let hooked = false
function hookExit() {
  if (hooked) return
  hooked = true
  const sweep = () => {
    for (const lab of live) lab.destroySync()
  }
  process.on('exit', sweep)
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      sweep()
      process.exit(130)
    })
  }
}

async function sh(args, input) {
  try {
    return (await run(args[0], args.slice(1), { input })).stdout
  } catch (e) {
    throw new Error(`${args.join(' ')}: ${(e.stderr || e.message).trim()}`)
  }
}

async function nft(ns, script) {
  const child = spawn(IP, ['netns', 'exec', ns, NFT, '-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'] })
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  child.stdin.end(script)
  const code = await new Promise((resolve) => child.on('close', resolve))
  if (code !== 0) throw new Error(`nft in ${ns}: ${err.trim()}\n${script}`)
}

/** Whether this process can build labs (root, ip, nft). */
function labSupport() {
  if (process.platform !== 'linux') return 'the NAT lab needs Linux network namespaces'
  if (process.getuid() !== 0) return 'the NAT lab needs root (network namespaces and nftables)'
  for (const name of ['ip', 'nft', 'sysctl', 'conntrack']) {
    if (!tool(name)) return `the NAT lab needs '${name}' (apt-get install iproute2 nftables procps conntrack)`
  }
  return null
}

let labCounter = 0

class Lab {
  constructor(topology, opts) {
    this.topology = topology
    /** For the 'pair' topology: the NAT kinds of A and B ('none', 'cone', 'restricted', 'symmetric', 'udp-blocked'). */
    this.kinds = opts.kinds
    /** For the 'pair' topology: each side's address families, { A, B } from FAMILIES ('v4'). */
    this.families = { A: 'v4', B: 'v4', ...opts.families }
    this.udpTimeout = opts.udpTimeout ?? 30
    this.withRelay = opts.relay === true
    this.prefix = `kn${process.pid % 100000}x${labCounter++}`
    this.namespaces = []
    this.hosts = {}
  }

  /**
   * Builds a topology. `udpTimeout` (s) is the NATs' UDP mapping timeout. The 'pair' topology
   * takes `kinds: [kindA, kindB]` from NAT_KINDS ('none': the host sits on the public segment).
   */
  static async create(topology, opts = {}) {
    if (topology === 'pair') {
      const bad = (opts.kinds || []).length !== 2 || !opts.kinds.every((k) => NAT_KINDS.includes(k))
      if (bad) throw new Error(`the pair topology needs kinds: [A, B] from ${NAT_KINDS.join(', ')}`)
      const fams = Object.values(opts.families || {})
      if (!fams.every((f) => FAMILIES.includes(f))) throw new Error(`families: { A, B } from ${FAMILIES.join(', ')}`)
    } else if (!TOPOLOGIES[topology]) throw new Error(`unknown topology ${topology}`)
    const why = labSupport()
    if (why) throw new Error(why)
    hookExit()
    const lab = new Lab(topology, opts)
    live.add(lab)
    try {
      await lab.build()
    } catch (e) {
      await lab.destroy()
      throw e
    }
    return lab
  }

  ns(name) {
    return `${this.prefix}-${name}`
  }

  async addNs(name, { router = false } = {}) {
    const ns = this.ns(name)
    await sh([IP, 'netns', 'add', ns])
    this.namespaces.push(ns)
    await sh([IP, '-n', ns, 'link', 'set', 'lo', 'up'])
    if (router) {
      await sh([IP, 'netns', 'exec', ns, SYSCTL, '-qw', 'net.ipv4.ip_forward=1'])
      await sh([IP, 'netns', 'exec', ns, SYSCTL, '-qw', 'net.ipv6.conf.all.forwarding=1'])
      for (const key of ['nf_conntrack_udp_timeout', 'nf_conntrack_udp_timeout_stream']) {
        await sh([IP, 'netns', 'exec', ns, SYSCTL, '-qw', `net.netfilter.${key}=${this.udpTimeout}`]).catch(() => {})
      }
    }
    return ns
  }

  /** A veth pair between two namespaces, created inside them (never in the root namespace). */
  async link(nsA, ifA, nsB, ifB) {
    await sh([IP, '-n', nsA, 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', nsB])
    await sh([IP, '-n', nsA, 'link', 'set', ifA, 'up'])
    await sh([IP, '-n', nsB, 'link', 'set', ifB, 'up'])
  }

  async addr(ns, ifname, cidr) {
    // IPv6 addresses skip duplicate address detection (seconds of a 'tentative' address).
    await sh([IP, '-n', ns, 'addr', 'add', cidr, 'dev', ifname, ...(cidr.includes(':') ? ['nodad'] : [])])
  }

  async route(ns, via) {
    await sh([IP, '-n', ns, 'route', 'add', 'default', 'via', via])
  }

  /** Attaches `ns`'s interface `ifname` to the public segment (a bridge in the `pub` namespace). */
  async toPublic(ns, ifname, cidr, cidr6) {
    const port = `p${this.publicPorts++}`
    await this.link(ns, ifname, this.pub, port)
    await sh([IP, '-n', this.pub, 'link', 'set', port, 'master', 'br0'])
    if (cidr) await this.addr(ns, ifname, cidr)
    if (cidr6) await this.addr(ns, ifname, cidr6)
    if (cidr6) this.publicNs6 = [...(this.publicNs6 || []), ns]
  }

  /** Whether this lab has IPv6 (a pair side with `families` dual or v6). */
  get withV6() {
    return this.topology === 'pair' && (this.families.A !== 'v4' || this.families.B !== 'v4')
  }

  async build() {
    await this.buildTopology()
    if (this.withRelay) {
      // The relay hub: a host of its own on the public segment.
      const rl = await this.addNs('rl')
      await this.toPublic(rl, 'eth0', `${RELAY_IP}/24`, this.withV6 ? `${RELAY_IP6}/64` : null)
      this.hosts.relay = { ns: rl, ip: RELAY_IP, publicIp: RELAY_IP, ip6: this.withV6 ? RELAY_IP6 : undefined }
    }
    // Every host on the public segment routes each IPv6 LAN through its router.
    for (const { prefix, via } of this.v6Lans || []) {
      for (const ns of this.publicNs6) {
        if (ns !== this.ns(`n${prefix === '2001:db8:a::' ? 'a' : 'b'}`)) {
          await sh([IP, '-n', ns, '-6', 'route', 'add', `${prefix}/64`, 'via', via])
        }
      }
    }
  }

  async buildTopology() {
    this.publicPorts = 0
    /** The NAT rules of the routers that rebind/restoreNat may change, by namespace. */
    this.nats = {}
    this.pub = await this.addNs('pub')
    await sh([IP, '-n', this.pub, 'link', 'add', 'br0', 'type', 'bridge'])
    await sh([IP, '-n', this.pub, 'link', 'set', 'br0', 'up'])
    const t = this.topology
    if (t === 'direct') {
      const a = await this.addNs('a')
      const b = await this.addNs('b')
      await this.toPublic(a, 'eth0', `${PUBLIC}.10/24`)
      await this.toPublic(b, 'eth0', `${PUBLIC}.20/24`)
      this.hosts.A = { ns: a, ip: `${PUBLIC}.10`, publicIp: `${PUBLIC}.10` }
      this.hosts.B = { ns: b, ip: `${PUBLIC}.20`, publicIp: `${PUBLIC}.20` }
      return
    }
    if (t === 'hairpin') {
      const r = await this.addNs('nat', { router: true })
      await this.toPublic(r, 'wan', `${PUBLIC}.1/24`)
      await this.link(r, 'lan', await this.addNs('sw'), 'up0')
      // A small LAN switch so both hosts share the router's one LAN port.
      const sw = this.ns('sw')
      await sh([IP, '-n', sw, 'link', 'add', 'br0', 'type', 'bridge'])
      await sh([IP, '-n', sw, 'link', 'set', 'br0', 'up'])
      await sh([IP, '-n', sw, 'link', 'set', 'up0', 'master', 'br0'])
      await this.addr(r, 'lan', '198.51.100.1/26')
      for (const [name, ip, port] of [['A', '198.51.100.2', 'pa'], ['B', '198.51.100.3', 'pb']]) {
        const h = await this.addNs(name.toLowerCase())
        await this.link(h, 'eth0', sw, port)
        await sh([IP, '-n', sw, 'link', 'set', port, 'master', 'br0'])
        await this.addr(h, 'eth0', `${ip}/26`)
        await this.route(h, '198.51.100.1')
        this.hosts[name] = { ns: h, ip, publicIp: `${PUBLIC}.1` }
      }
      await nft(r, natRules({ kind: 'cone', wanIp: `${PUBLIC}.1`, lanNet: '198.51.100.0/26', hairpin: true, timeout: this.udpTimeout }))
      return
    }
    // Two hosts, each behind its own router (A possibly behind two).
    const kinds = t === 'pair' ? this.kinds : {
      cone: ['cone', 'cone'],
      restricted: ['restricted', 'restricted'],
      symmetric: ['symmetric', 'restricted'],
      'udp-blocked': ['udp-blocked', 'restricted'],
      lossy: ['cone', 'cone'],
      'double-nat': ['restricted', 'restricted'],
    }[t]
    const sides = [
      ['A', kinds[0], `${PUBLIC}.1`, '198.51.100', 0],
      ['B', kinds[1], `${PUBLIC}.2`, '198.51.100', 64],
    ]
    for (const [name, kind, wanIp, lanPrefix, base] of sides) {
      const lower = name.toLowerCase()
      const family = t === 'pair' ? this.families[name] : 'v4'
      const v4 = family !== 'v6'
      const v6 = family !== 'v4'
      if (kind === 'none') {
        // On the public segment itself, at .10 (A) or .20 (B) (and ::10, ::20).
        const h = await this.addNs(lower)
        const ip = `${PUBLIC}.${name === 'A' ? 10 : 20}`
        const ip6 = v6 ? `${PUBLIC6}${name === 'A' ? 10 : 20}` : undefined
        await this.toPublic(h, 'eth0', v4 ? `${ip}/24` : null, v6 ? `${ip6}/64` : null)
        this.hosts[name] = { ns: h, ip: v4 ? ip : undefined, publicIp: v4 ? ip : undefined, ip6, kind, family }
        continue
      }
      const r = await this.addNs(`n${lower}`, { router: true })
      const h = await this.addNs(lower)
      const lanNet = `${lanPrefix}.${base}/26`
      const gw = `${lanPrefix}.${base + 1}`
      const ip = `${lanPrefix}.${base + 2}`
      if (name === 'A' && t === 'double-nat') {
        // Carrier-grade NAT on the public side, the home NAT behind it on 192.0.2.0/24.
        const cgn = await this.addNs('cgn', { router: true })
        await this.toPublic(cgn, 'wan', `${wanIp}/24`)
        await this.link(cgn, 'lan', r, 'wan')
        await this.addr(cgn, 'lan', '192.0.2.1/24')
        await this.addr(r, 'wan', '192.0.2.2/24')
        await this.route(r, '192.0.2.1')
        await nft(cgn, natRules({ kind: 'restricted', wanIp, lanNet: '192.0.2.0/24', timeout: this.udpTimeout }))
        await nft(r, natRules({ kind, wanIp: '192.0.2.2', lanNet, timeout: this.udpTimeout }))
      } else {
        // The router's IPv6 side: ::1 (A) or ::2 (B) on the public segment.
        const wan6 = v6 ? `${PUBLIC6}${name === 'A' ? 1 : 2}` : null
        await this.toPublic(r, 'wan', `${wanIp}/24`, wan6 && `${wan6}/64`)
        await nft(r, natRules({ kind, wanIp, lanNet, timeout: this.udpTimeout }))
        this.nats[r] = { kind, wanIp, lanNet }
      }
      await this.link(r, 'lan', h, 'eth0')
      await this.addr(r, 'lan', `${gw}/26`)
      if (v4) {
        await this.addr(h, 'eth0', `${ip}/26`)
        await this.route(h, gw)
      }
      let ip6
      if (v6) {
        // A routed IPv6 LAN behind a stateful firewall: no NAT, unsolicited inbound dropped.
        const prefix = `2001:db8:${lower}::`
        ip6 = `${prefix}2`
        await this.addr(r, 'lan', `${prefix}1/64`)
        await this.addr(h, 'eth0', `${ip6}/64`)
        await sh([IP, '-n', h, '-6', 'route', 'add', 'default', 'via', `${prefix}1`])
        await nft(r, firewall6Rules())
        this.v6Lans = [...(this.v6Lans || []), { prefix, via: `${PUBLIC6}${name === 'A' ? 1 : 2}` }]
      }
      // `uplinks`: the host's ways out (addUplink adds a second one); `kind`: its NAT's kind.
      const uplink = { dev: 'eth0', ip, cidr: `${ip}/26`, gw, router: r, publicIp: wanIp, kind }
      this.hosts[name] = { ns: h, ip: v4 ? ip : undefined, publicIp: v4 ? wanIp : undefined, ip6, router: r, kind, family, uplinks: [uplink], uplink: 0 }
    }
    if (t === 'lossy') {
      await nft(this.pub, 'table bridge loss {\n  chain fw {\n    type filter hook forward priority 0;\n    meta l4proto udp numgen random mod 100 < 5 counter drop\n  }\n}\n')
    }
  }

  /** Where `side`'s UDP port `port` is reached from the other side (NATs here keep ports). */
  publicAddr(side, port) {
    return { host: this.hosts[side].publicIp, port }
  }

  /** Runs `node script` inside `side`'s namespace, with JSON lines on stdin/stdout. */
  agent(side, script = path.join(__dirname, 'agent.js'), env = {}) {
    const child = spawn(IP, ['netns', 'exec', this.hosts[side].ns, process.execPath, script], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    })
    this.children = this.children || []
    this.children.push(child)
    return new Agent(child, side)
  }

  /**
   * Runs `cmd args` inside `side`'s namespace ('A', 'B' or 'relay'; killed by destroy()) and
   * resolves `{ child, match }` once a stdout line matches `ready`; rejects if it exits first or
   * `timeout` ms pass.
   */
  spawnIn(side, cmd, args, { ready, env = {}, timeout = 10000 } = {}) {
    const child = spawn(IP, ['netns', 'exec', this.hosts[side].ns, cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn', ...env },
    })
    this.children = this.children || []
    this.children.push(child)
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const lines = readline.createInterface({ input: child.stdout })
    const what = `${path.basename(cmd)} ${args.slice(0, 2).join(' ')} in ${side}`
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what} was not ready in ${timeout} ms: ${stderr}`)), timeout)
      lines.on('line', (line) => {
        const match = ready.exec(line)
        if (!match) return
        clearTimeout(timer)
        resolve({ child, match })
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`${what} exited ${code}: ${stderr}`))
      })
    })
  }

  /**
   * Starts `keynet-relay` on the lab's relay host (create the lab with `{ relay: true }`);
   * resolves `{ host, port, tcpPort, nodeId, dht }` once it listens. With `dht: true` it also
   * runs a DHT node at RELAY_IP:`dhtPort` (6881; `dht`: its 'host:port', the lab's bootstrap
   * node), joining through `dhtBootstrap` when given; with `publish: NAME` too, it publishes
   * itself there under the network name NAME (a DHT node does not store its own publication:
   * the lab then needs a second DHT node).
   * Stopped by destroy().
   */
  async startRelay(port = 7000, { dht = false, dhtPort = 6881, dhtBootstrap, publish, v6 = false } = {}) {
    if (!this.hosts.relay) throw new Error('this lab has no relay host: create it with { relay: true }')
    if (!fs.existsSync(RELAY_BIN)) throw new Error(`${RELAY_BIN} is missing: cargo build -p keynet-relay`)
    if (v6 && !this.hosts.relay.ip6) throw new Error('an IPv6 relay needs a lab with IPv6 (families)')
    // `v6`: one dual-stack socket for both families (asked for here: it listens on all of them).
    const args = ['--listen', v6 ? `[::]:${port}` : `${RELAY_IP}:${port}`]
    if (dht) args.push('--dht', `${RELAY_IP}:${dhtPort}`, ...(dhtBootstrap ? ['--dht-bootstrap', dhtBootstrap] : []))
    if (publish) args.push('--publish', publish)
    const child = spawn(IP, ['netns', 'exec', this.hosts.relay.ns, RELAY_BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    })
    this.children = this.children || []
    this.children.push(child)
    this.relayProcess = child
    this.relayProcesses = { ...this.relayProcesses, [port]: child }
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const lines = readline.createInterface({ input: child.stdout })
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`keynet-relay did not start: ${stderr}`)), 10000)
      let relay = null
      let dhtAddr = dht ? null : undefined
      lines.on('line', (line) => {
        const m = /^relay listening on (\S+):(\d+) tcp \S+:(\d+) node id (\S+)$/.exec(line)
        if (m) relay = { host: v6 ? RELAY_IP : m[1], port: Number(m[2]), tcpPort: Number(m[3]), nodeId: m[4], ...(v6 && { host6: RELAY_IP6 }) }
        const d = /^dht listening on (\S+)$/.exec(line)
        if (d) dhtAddr = d[1]
        if (!relay || dhtAddr === null) return
        clearTimeout(timer)
        resolve(dht ? { ...relay, dht: dhtAddr } : relay)
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`keynet-relay exited ${code}: ${stderr}`))
      })
    })
  }

  /**
   * Kills a relay process (SIGKILL: no goodbye to its nodes): the one on `port`, else the last
   * started; resolves once it is gone.
   */
  async killRelay(port) {
    const child = port === undefined ? this.relayProcess : this.relayProcesses?.[port]
    if (!child || child.exitCode !== null || child.signalCode !== null) return
    const gone = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGKILL')
    await gone
  }

  /** UDP datagrams the lossy public segment dropped so far. */
  async lossDrops() {
    const out = await sh([IP, 'netns', 'exec', this.pub, NFT, 'list', 'table', 'bridge', 'loss'])
    const m = /counter packets (\d+)/.exec(out)
    return m ? Number(m[1]) : 0
  }

  // ---- path changes: the network under a running connection changes -------------------------

  /** The public IPs of A and B (the two ends of their punched path); they must differ. */
  publicPair() {
    const a = this.hosts.A?.publicIp
    const b = this.hosts.B?.publicIp
    if (!a || !b || a === b) throw new Error(`no public path between A and B in the ${this.topology} topology`)
    return [a, b]
  }

  /**
   * `on`: drops every UDP datagram between A's and B's public IPs, both directions, on the
   * public segment (a `bridge blackhole` table in the `pub` namespace); the relay host stays
   * reachable from both. `on=false` removes the table. Idempotent; a later call uses the public
   * IPs of that moment (after switchUplink too).
   */
  async blackhole(on = true) {
    await this.udpDrop('blackhole', on ? this.publicPair() : null)
    this.blackholed = on
  }

  /**
   * Puts (`pair` [x, y]: UDP between the two IPs dropped both ways, counted) or removes (`null`)
   * the `bridge NAME` table of the public segment (`pub` namespace). Idempotent.
   */
  async udpDrop(name, pair) {
    const reset = `add table bridge ${name}\ndelete table bridge ${name}\n`
    if (!pair) return nft(this.pub, reset)
    const [a, b] = pair
    await nft(
      this.pub,
      `${reset}table bridge ${name} {
  chain fw {
    type filter hook forward priority -10; policy accept;
    ether type ip ip saddr ${a} ip daddr ${b} meta l4proto udp counter drop
    ether type ip ip saddr ${b} ip daddr ${a} meta l4proto udp counter drop
  }
}
`,
    )
  }

  /**
   * Sends forged datagrams to `side`'s host at `toPort`, with the source address `from`
   * ({ host, port }: the peer's public address, the one `side` punched to), every `intervalMs`:
   * in turn a QUIC look-alike (1200 random bytes, fixed bit set) and a punch-format punch or ack
   * with a random nonce. The forger runs on `side`'s NAT router, on the host's side of the NAT,
   * with IP_TRANSPARENT (it may send from an address it does not have) and conntrack off for that
   * source (the NAT's own mapping of the real flow stays untouched), so nothing on the way tells
   * the forgery apart. Resolves a handle: `sent()` (datagrams so far), `stop()`.
   */
  async forge(side, from, toPort, intervalMs = 20) {
    const h = this.hosts[side]
    const ns = h.router
    if (!ns) throw new Error(`forge needs a NAT router in front of ${side}`)
    await nft(ns, `add table ip forge
delete table ip forge
table ip forge {
  chain out { type filter hook output priority raw; ip saddr ${from.host} notrack; }
  chain pre { type filter hook prerouting priority raw; ip saddr ${from.host} notrack; }
}
`)
    const script = String.raw`
import socket, os, sys, time
src, sport, dst, dport, gap = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT: bind and send from an address this host lacks
s.bind((src, sport))
def addr(ip, port):
    return b'\x04' + bytes(10) + b'\xff\xff' + socket.inet_aton(ip) + port.to_bytes(2, 'big')
n = 0
while True:
    if n % 2 == 0:
        d = bytes([0x40 | (os.urandom(1)[0] & 0x3f)]) + os.urandom(1199)
    else:
        kind = 2 if n % 4 == 1 else 1
        d = b'\x00KNP\x01' + bytes([kind]) + os.urandom(8) + addr(src, sport) + addr(dst, dport)
    s.sendto(d, (dst, dport))
    n += 1
    if n % 50 == 0:
        print(n, flush=True)
    time.sleep(gap)
`
    const child = spawn(IP, ['netns', 'exec', ns, 'python3', '-c', script, from.host, String(from.port), h.ip, String(toPort), String(intervalMs / 1000)], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.children = this.children || []
    this.children.push(child)
    let sent = 0
    let err = ''
    child.stdout.on('data', (d) => {
      const last = d.toString().trim().split('\n').pop()
      sent = Number(last) || sent
    })
    child.stderr.on('data', (d) => (err += d))
    return {
      sent: () => sent,
      error: () => err.trim(),
      stop: async () => {
        if (child.exitCode === null) {
          const gone = new Promise((r) => child.once('exit', r))
          child.kill('SIGKILL')
          await gone
        }
        await nft(ns, 'add table ip forge\ndelete table ip forge\n').catch(() => {})
      },
    }
  }

  /**
   * `on`: drops every UDP datagram between `side`'s public IP and the relay host, both
   * directions, on the public segment (a `bridge relayudp` table in the `pub` namespace): a
   * firewall that lets the side reach the relay over TCP only. `on=false` removes the table.
   */
  async blockRelayUdp(side, on = true) {
    const ip = this.hosts[side]?.publicIp
    if (!ip || !this.hosts.relay) throw new Error(`no public IP for ${side}, or no relay host`)
    await this.udpDrop('relayudp', on ? [ip, RELAY_IP] : null)
  }

  /** UDP datagrams the current blackhole dropped (0 when there is none). */
  async blackholeDrops() {
    const out = await sh([IP, 'netns', 'exec', this.pub, NFT, 'list', 'table', 'bridge', 'blackhole']).catch(() => '')
    return [...out.matchAll(/counter packets (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0)
  }

  /**
   * Limits what `side`'s host sends (every uplink's egress) to `rate` ('24mbit') with a tbf
   * qdisc; `null` removes the limit. (This kernel has no netem; tbf needs none.)
   */
  async limitRate(side, rate) {
    const h = this.hosts[side]
    h.rate = rate || null
    for (const dev of (h.uplinks || [{ dev: 'eth0' }]).map((u) => u.dev)) await this.applyRate(h, dev)
  }

  async applyRate(h, dev) {
    if (!h.rate) {
      await sh([IP, 'netns', 'exec', h.ns, TC, 'qdisc', 'del', 'dev', dev, 'root']).catch(() => {})
      return
    }
    // A 64 KiB bucket (a GSO batch fits), 50 ms of queue: loss beyond, as on a real uplink.
    await sh([IP, 'netns', 'exec', h.ns, TC, 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', h.rate, 'burst', '64kb', 'latency', '50ms'])
  }

  /** The qdiscs of `side`'s host (to check limitRate). */
  async qdiscs(side) {
    return sh([IP, 'netns', 'exec', this.hosts[side].ns, TC, 'qdisc', 'show'])
  }

  /**
   * NAT rebinding: `side`'s NAT gives the host a new public port. Its masquerade moves to a port
   * range none of the host's ports are in (the tests use 40000-60000 and the NAT keeps source
   * ports; successive rebinds alternate between 20000-29999 and 30000-39999, so the port always
   * changes), then the router's UDP conntrack entries go, so the next datagram gets a new
   * mapping. Packets to the old public port then find no mapping and are dropped.
   *
   * 'restricted': the NAT stays port-restricted; the peer's NAT (port-restricted too) drops
   * datagrams from the new port until the peer sends there, so only a rendezvous (the relay)
   * can tell both sides the new address.
   * 'cone': the cone map (keyed by the host's source port, which is the public port only while
   * the NAT keeps ports) no longer fits, so the rebound NAT loses its endpoint-independent
   * filtering: it passes replies only (port-restricted). The peer's NAT is still a full cone, so
   * the new address reaches the peer without a relay, and its answers are replies.
   * Runs inside the router's namespace only; restoreNat(side) undoes it.
   */
  async rebind(side) {
    const h = this.hosts[side]
    if (!h?.router || !['cone', 'restricted'].includes(h.kind)) {
      throw new Error(`rebind needs a cone or restricted NAT in front of ${side} (topology ${this.topology})`)
    }
    this.rebinds = (this.rebinds || 0) + 1
    const range = this.rebinds % 2 ? '20000-29999' : '30000-39999'
    await nft(
      h.router,
      `flush chain ip labnat post
add rule ip labnat post oifname "wan" meta l4proto udp masquerade to :${range}
add rule ip labnat post oifname "wan" masquerade
${h.kind === 'cone' ? 'flush chain ip labnat pre\n' : ''}`,
    )
    await this.flushConntrack(h.router)
    return { range }
  }

  /**
   * Undoes rebind(side): the NAT in front of `side` gets its original rules back (keeping source
   * ports again) and forgets its UDP mappings, so the next pair starts from a fresh NAT.
   */
  async restoreNat(side) {
    const ns = this.hosts[side]?.router
    const nat = this.nats?.[ns]
    if (!nat) throw new Error(`no NAT to restore in front of ${side}`)
    await nft(ns, `delete table ip labnat\ndelete table ip labfilter\n${natRules({ ...nat, timeout: this.udpTimeout })}`)
    await this.flushConntrack(ns)
  }

  /**
   * The NAT in front of `side` forgets what it let out toward `other`'s public address (its UDP
   * conntrack entries to it, punch sprays included), as if the two had not talked for the UDP
   * timeout; its other mappings (its relay's) stay. For runs meant to be independent.
   */
  async forgetPeer(side, other) {
    const ns = this.hosts[side]?.router
    const to = this.hosts[other]?.publicIp
    if (ns && to) await this.flushConntrack(ns, to)
  }

  /** Deletes the UDP conntrack entries of the router namespace `ns` (its NAT mappings), only
   * those toward `dst` if given. */
  async flushConntrack(ns, dst) {
    try {
      await run(IP, ['netns', 'exec', ns, CONNTRACK, '-D', '-p', 'udp', ...(dst ? ['--dst', dst] : [])])
    } catch (e) {
      // conntrack exits 1 when there was nothing to delete.
      if (!/0 flow entries/.test(e.stderr || '')) throw new Error(`conntrack -D in ${ns}: ${(e.stderr || e.message).trim()}`)
    }
  }

  /**
   * A second uplink for `side`'s host: a second NAT router (port-restricted) with its own public
   * IP (203.0.113.3 for A, .4 for B) and a second LAN (198.51.100.128/26 for A, .192/26 for B)
   * on the host's eth1. The host keeps using the first until switchUplink. Idempotent.
   */
  async addUplink(side) {
    const h = this.hosts[side]
    if (!h?.uplinks || this.topology === 'double-nat') throw new Error(`addUplink needs a host behind its own NAT (topology ${this.topology})`)
    if (h.uplinks.length > 1) return h.uplinks[1]
    const i = side === 'A' ? 0 : 1
    const wanIp = `${PUBLIC}.${3 + i}`
    const base = 128 + 64 * i
    const lanNet = `198.51.100.${base}/26`
    const gw = `198.51.100.${base + 1}`
    const ip = `198.51.100.${base + 2}`
    const r = await this.addNs(`n${side.toLowerCase()}2`, { router: true })
    await this.toPublic(r, 'wan', `${wanIp}/24`)
    await nft(r, natRules({ kind: 'restricted', wanIp, lanNet, timeout: this.udpTimeout }))
    this.nats[r] = { kind: 'restricted', wanIp, lanNet }
    await this.link(r, 'lan', h.ns, 'eth1')
    await this.addr(r, 'lan', `${gw}/26`)
    await this.addr(h.ns, 'eth1', `${ip}/26`)
    const uplink = { dev: 'eth1', ip, cidr: `${ip}/26`, gw, router: r, publicIp: wanIp, kind: 'restricted' }
    h.uplinks.push(uplink)
    if (h.rate) await this.applyRate(h, 'eth1')
    return uplink
  }

  /**
   * Moves `side`'s host to its other uplink (addUplink first), as a phone leaving Wi-Fi: the
   * default route goes via the other router, the old interface loses its address and goes down.
   * Sockets bound to 0.0.0.0 stay open; their datagrams now leave through another NAT with
   * another public address. `keepAddress: true` leaves the old address (only the link goes down).
   * Calling it again switches back.
   */
  async switchUplink(side, { keepAddress = false } = {}) {
    const h = this.hosts[side]
    if (!h?.uplinks || h.uplinks.length < 2) throw new Error(`${side} has no second uplink: call addUplink('${side}') first`)
    const from = h.uplinks[h.uplink]
    const next = (h.uplink + 1) % h.uplinks.length
    const to = h.uplinks[next]
    await sh([IP, '-n', h.ns, 'link', 'set', to.dev, 'up'])
    await sh([IP, '-n', h.ns, 'addr', 'replace', to.cidr, 'dev', to.dev])
    await sh([IP, '-n', h.ns, 'route', 'replace', 'default', 'via', to.gw, 'dev', to.dev])
    if (!keepAddress) await sh([IP, '-n', h.ns, 'addr', 'flush', 'dev', from.dev])
    await sh([IP, '-n', h.ns, 'link', 'set', from.dev, 'down'])
    Object.assign(h, { uplink: next, ip: to.ip, publicIp: to.publicIp, router: to.router, kind: to.kind })
    return { publicIp: to.publicIp, dev: to.dev }
  }

  /** conntrack entries of `side`'s NAT router (for keepalive proofs). */
  async conntrack(side) {
    const ns = this.hosts[side].router
    if (!ns) return ''
    return sh([IP, 'netns', 'exec', ns, 'sh', '-c', 'conntrack -L -p udp 2>/dev/null || cat /proc/net/nf_conntrack 2>/dev/null || true'])
  }

  async destroy() {
    for (const c of this.children || []) if (c.exitCode === null) c.kill('SIGKILL')
    for (const ns of [...this.namespaces].reverse()) {
      await run(IP, ['netns', 'del', ns]).catch(() => {})
    }
    this.namespaces = []
    live.delete(this)
  }

  destroySync() {
    for (const c of this.children || []) if (c.exitCode === null) c.kill('SIGKILL')
    for (const ns of [...this.namespaces].reverse()) {
      try {
        execFileSync(IP, ['netns', 'del', ns], { stdio: 'ignore' })
      } catch {}
    }
    this.namespaces = []
    live.delete(this)
  }
}

/**
 * nftables rules of one NAT router with interfaces `lan` and `wan`.
 * - restricted: masquerade (Linux keeps the source port when it can: endpoint-independent
 *   mapping), inbound only for conntrack replies (address-and-port dependent filtering);
 * - cone: as restricted, plus inbound to any port a LAN host has sent from goes to that host
 *   (endpoint-independent filtering), learnt in a map with the UDP timeout;
 * - symmetric: a random source port per destination (endpoint-dependent mapping);
 * - udp-blocked: every forwarded UDP datagram is dropped.
 * - hairpin (with cone): LAN hosts reach each other through the public address.
 */
function natRules({ kind, wanIp, lanNet, hairpin = false, timeout }) {
  const masq = kind === 'symmetric' ? 'masquerade random' : 'masquerade'
  const cone = kind === 'cone'
  return `
table ip labnat {
  map cone { type inet_service : ipv4_addr; flags dynamic,timeout; timeout ${timeout}s; }
  chain pre {
    type nat hook prerouting priority dstnat;
    ${cone ? 'iifname "lan" meta l4proto udp update @cone { udp sport : ip saddr }' : ''}
    ${cone ? 'iifname "wan" meta l4proto udp dnat to udp dport map @cone' : ''}
    ${hairpin ? `iifname "lan" ip daddr ${wanIp} meta l4proto udp dnat to udp dport map @cone` : ''}
  }
  chain post {
    type nat hook postrouting priority srcnat;
    ${hairpin ? `ip saddr ${lanNet} ip daddr ${lanNet} ct status dnat snat to ${wanIp}` : ''}
    oifname "wan" ${masq}
  }
}
table ip labfilter {
  # Like a real router: unsolicited UDP to the router itself (from either side; a hairpin punch
  # that found no mapping yet lands here) is dropped before conntrack
  # confirms them, so an early punch from the peer cannot occupy the tuple the NAT would use
  # for its host (which would make masquerade pick another port).
  chain in {
    type filter hook input priority filter; policy accept;
    ct state established,related accept
    meta l4proto udp drop
  }
  chain fw {
    type filter hook forward priority filter; policy drop;
    ${kind === 'udp-blocked' ? 'meta l4proto udp drop' : ''}
    ct state established,related accept
    ${cone || hairpin ? 'ct status dnat accept' : ''}
    iifname "lan" accept
  }
}
`
}

/**
 * nftables rules of an IPv6 router: it forwards (no NAT: the LAN's addresses are global), and
 * like any home router's firewall lets in only what answers traffic from the LAN (so a peer's
 * first packet is dropped until the LAN host punched toward it). ICMPv6 passes (neighbour
 * discovery and path MTU need it).
 */
function firewall6Rules() {
  return `
table ip6 labfw6 {
  chain fw {
    type filter hook forward priority filter; policy drop;
    meta l4proto ipv6-icmp accept
    ct state established,related accept
    iifname "lan" accept
  }
}
`
}

/** A keynode agent in a namespace: send a command, await its JSON answer. */
class Agent {
  constructor(child, side) {
    this.child = child
    this.side = side
    this.pending = new Map()
    this.nextId = 1
    this.exited = new Promise((resolve) => child.on('exit', (code, sig) => resolve({ code, sig })))
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let msg
      try {
        msg = JSON.parse(line)
      } catch {
        return
      }
      const p = this.pending.get(msg.id)
      if (!p) return
      this.pending.delete(msg.id)
      p.resolve(msg)
    })
    this.exited.then(({ code, sig }) => {
      for (const p of this.pending.values()) p.reject(new Error(`agent ${side} exited (${code ?? sig})`))
      this.pending.clear()
    })
  }

  /** Sends a command; rejects if no answer comes within `timeoutMs`. Commands may overlap. */
  request(cmd, timeoutMs = 30000) {
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`agent ${this.side}: no answer to ${cmd.cmd} in ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer)
          resolve(m)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      })
      this.child.stdin.write(JSON.stringify({ ...cmd, id }) + '\n')
    })
  }

  async close() {
    if (this.child.exitCode !== null) return
    this.child.stdin.end(JSON.stringify({ cmd: 'exit' }) + '\n')
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await this.exited
    clearTimeout(t)
  }
}

/**
 * Builds a lab with an agent on each side, runs `fn(lab, A, B)`, and always tears everything
 * down (agents killed, namespaces deleted), also when `fn` throws.
 */
async function withLab(topology, opts, fn) {
  const lab = await Lab.create(topology, opts)
  const A = lab.agent('A')
  const B = lab.agent('B')
  try {
    return await fn(lab, A, B)
  } finally {
    await Promise.all([A.close(), B.close()]).catch(() => {})
    await lab.destroy()
  }
}

/** Namespaces left by labs of this prefix (or of any keynet lab when omitted). */
function leftovers(prefix = 'kn') {
  const out = execFileSync(IP, ['netns', 'list'], { encoding: 'utf8' })
  return out
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n && /^kn\d+x\d+-/.test(n) && n.startsWith(prefix))
}

module.exports = { IP, KEYNET_BIN, RELAY_IP, Lab, NAT_KINDS, FAMILIES, TOPOLOGIES, labSupport, leftovers, natRules, withLab }
