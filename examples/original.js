'use strict'
// Code written for the original ForwardProxy/ReverseProxy, unchanged but for the import: the
// constructor's timing fields and logger, start() with tlsConfig, the readonly fields,
// openConnection with a timer object, setTLSConfig, the original's error classes and
// getConnectionCount() after stop. Run: node examples/original.js (npm test runs it).

const dgram = require('node:dgram')
const { ForwardProxy, ReverseProxy, generateIdentity, utils, errors } = require('keynet')

/** A logger of the original's shape (its @matrixai/logger Logger would do the same). */
const logger = {
  lines: [],
  error: (m) => logger.lines.push(`ERROR ${m}`),
  warn: (m) => logger.lines.push(`WARN ${m}`),
  info: (m) => logger.lines.push(`INFO ${m}`),
  debug: (m) => logger.lines.push(`DEBUG ${m}`),
}

async function main() {
  const serverKeys = await generateIdentity()
  const clientKeys = await generateIdentity()

  const revProxy = new ReverseProxy({ connConnectTime: 2000, connKeepAliveTimeoutTime: 2000, connEndTime: 500, connPunchIntervalTime: 100, logger })
  await revProxy.start({ serverHost: '127.0.0.1', serverPort: 1, ingressHost: '127.0.0.1', ingressPort: 0, tlsConfig: serverKeys.tlsConfig })

  const fwdProxy = new ForwardProxy({ authToken: 'abc', connConnectTime: 2000, connEndTime: 500, logger })
  await fwdProxy.start({ proxyHost: '127.0.0.1', proxyPort: 0, egressHost: '127.0.0.1', egressPort: 0, tlsConfig: clientKeys.tlsConfig })
  console.log(`authToken ${fwdProxy.authToken}, connConnectTime ${fwdProxy.connConnectTime}, connEndTime ${fwdProxy.connEndTime}`)

  // openConnection(nodeId, host, port, timer): the timer is the deadline.
  const timer = utils.timerStart(5000)
  await fwdProxy.openConnection(utils.certNodeId(serverKeys.tlsConfig.certChainPem), revProxy.getIngressHost(), revProxy.getIngressPort(), timer)
  utils.timerStop(timer)
  const info = fwdProxy.getConnectionInfoByIngress(revProxy.getIngressHost(), revProxy.getIngressPort())
  console.log(`connected to ${info.nodeId === serverKeys.nodeId ? 'the pinned node' : 'SOMEONE ELSE'}; count ${fwdProxy.getConnectionCount()}`)

  // A remote that never answers: the timer runs out first.
  const silent = dgram.createSocket('udp4')
  await new Promise((r) => silent.bind(0, '127.0.0.1', r))
  const short = utils.timerStart(300)
  try {
    await fwdProxy.openConnection(serverKeys.nodeId, '127.0.0.1', silent.address().port, short)
  } catch (e) {
    console.log(`silent remote: ${e instanceof errors.ErrorConnectionStartTimeout ? 'ErrorConnectionStartTimeout' : e}, timedOut ${short.timedOut}`)
  }
  silent.close()

  fwdProxy.setTLSConfig((await generateIdentity()).tlsConfig) // for connections opened from now on
  await fwdProxy.closeConnection(revProxy.getIngressHost(), revProxy.getIngressPort())
  await fwdProxy.stop()
  await revProxy.stop()
  console.log(`after stop: count ${fwdProxy.getConnectionCount()}`)
  try {
    fwdProxy.getProxyHost()
  } catch (e) {
    console.log(`getProxyHost() after stop: ${e.constructor.name} (exitCode ${e.exitCode})`)
  }
  console.log(`logger got ${logger.lines.filter((l) => l.startsWith('INFO ')).length} info lines, e.g. "${logger.lines[0]}"`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
