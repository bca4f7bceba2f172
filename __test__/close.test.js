'use strict'
// Who ends what: a tunnel ended by either TCP end ends only that tunnel; closing a connection
// (either proxy's closeConnection) or stopping a proxy ends its tunnels on both sides, and both
// proxies report the close with a reason.

const test = require('ava')
const h = require('./helpers')

/** echo server <- rp <- fp with one tunnel up; `serverSocket` is the server's end of it. */
async function setup(t) {
  const server = await h.startEchoServer(t)
  const { fp, rp } = await h.startPair(t, { serverPort: server.port })
  const fpEvents = h.recordEvents(fp)
  const rpEvents = h.recordEvents(rp)
  const client = await h.openTunnel(t, fp, rp)
  const serverSocket = await server.nextSocket()
  await h.assertEchoes(t, client)
  t.is(fp.getConnectionCount(), 1)
  t.is(rp.getConnectionCount(), 1)
  return { server, fp, rp, fpEvents, rpEvents, client, serverSocket }
}

/** Both TCP ends of the tunnel close. */
async function assertTunnelClosed(client, serverSocket) {
  await Promise.all([h.socketClosed(client), h.socketClosed(serverSocket)])
}

/** The tunnel's end left the connection up: no close event, counts 1, a new tunnel works. */
async function assertConnectionSurvives(t, { fp, rp, fpEvents, rpEvents }) {
  t.is(fpEvents.of('close').length, 0)
  t.is(rpEvents.of('close').length, 0)
  t.is(fp.getConnectionCount(), 1)
  t.is(rp.getConnectionCount(), 1)
  const again = await h.openTunnel(t, fp, rp)
  await h.assertEchoes(t, again)
  t.is(fpEvents.of('connection').length, 1, 'the new tunnel reused the connection')
}

test('client ends its socket: the server sees the end, the connection stays', async (t) => {
  const s = await setup(t)
  const serverEnd = h.readToEnd(s.serverSocket)
  s.client.end()
  await serverEnd
  await assertTunnelClosed(s.client, s.serverSocket)
  await assertConnectionSurvives(t, s)
})

test('client destroys its socket: the server socket closes, the connection stays', async (t) => {
  const s = await setup(t)
  s.client.destroy()
  await h.socketClosed(s.serverSocket)
  await assertConnectionSurvives(t, s)
})

test('server ends its socket: the client sees the end, the connection stays', async (t) => {
  const s = await setup(t)
  const clientEnd = h.readToEnd(s.client)
  s.serverSocket.end()
  await clientEnd
  await assertTunnelClosed(s.client, s.serverSocket)
  await assertConnectionSurvives(t, s)
})

test('server destroys its socket: the client socket closes, the connection stays', async (t) => {
  const s = await setup(t)
  s.serverSocket.destroy()
  await h.socketClosed(s.client)
  await assertConnectionSurvives(t, s)
})

test("fp.closeConnection: tunnels end on both sides, 'local' / 'remote', counts reach 0", async (t) => {
  const s = await setup(t)
  await s.fp.closeConnection(h.HOST, s.rp.getIngressPort())
  await assertTunnelClosed(s.client, s.serverSocket)
  const [fpClose, rpClose] = await Promise.all([s.fpEvents.wait('close'), s.rpEvents.wait('close')])
  t.is(fpClose.reason, 'local')
  t.is(fpClose.nodeId, s.rp.getNodeId())
  t.is(rpClose.reason, 'remote')
  t.is(rpClose.nodeId, s.fp.getNodeId())
  await h.waitFor(() => s.fp.getConnectionCount() === 0 && s.rp.getConnectionCount() === 0, { what: 'counts 0' })
  t.is(s.fp.getConnectionInfoByIngress(h.HOST, s.rp.getIngressPort()), undefined)
  t.is(s.rp.getConnectionInfoByEgress(h.HOST, s.fp.getEgressPort()), undefined)
  // A pinned CONNECT opens a fresh connection.
  await h.assertEchoes(t, await h.openTunnel(t, s.fp, s.rp))
  t.is(s.fpEvents.of('connection').length, 2)
})

test("rp.closeConnection: tunnels end on both sides, 'local' / 'remote', counts reach 0", async (t) => {
  const s = await setup(t)
  await s.rp.closeConnection(h.HOST, s.fp.getEgressPort())
  await assertTunnelClosed(s.client, s.serverSocket)
  const [fpClose, rpClose] = await Promise.all([s.fpEvents.wait('close'), s.rpEvents.wait('close')])
  t.is(rpClose.reason, 'local')
  t.is(rpClose.nodeId, s.fp.getNodeId())
  t.is(fpClose.reason, 'remote')
  t.is(fpClose.nodeId, s.rp.getNodeId())
  await h.waitFor(() => s.fp.getConnectionCount() === 0 && s.rp.getConnectionCount() === 0, { what: 'counts 0' })
  await h.assertEchoes(t, await h.openTunnel(t, s.fp, s.rp))
  t.is(s.fpEvents.of('connection').length, 2)
})

test("fp.stop(): tunnels end, 'stopped' on fp, 'remote' on rp, rp count reaches 0", async (t) => {
  const s = await setup(t)
  await s.fp.stop()
  await assertTunnelClosed(s.client, s.serverSocket)
  t.is((await s.fpEvents.wait('close')).reason, 'stopped')
  t.is((await s.rpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => s.rp.getConnectionCount() === 0, { what: 'rp count 0' })
  t.is(s.fp.getConnectionCount(), 0, 'as the original: 0 when stopped')
})

test("rp.stop(): tunnels end, 'stopped' on rp, 'remote' on fp, fp count reaches 0", async (t) => {
  const s = await setup(t)
  await s.rp.stop()
  await assertTunnelClosed(s.client, s.serverSocket)
  t.is((await s.rpEvents.wait('close')).reason, 'stopped')
  t.is((await s.fpEvents.wait('close')).reason, 'remote')
  await h.waitFor(() => s.fp.getConnectionCount() === 0, { what: 'fp count 0' })
  t.is(s.rp.getConnectionCount(), 0, 'as the original: 0 when stopped')
})
