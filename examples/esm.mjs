// keynet from an ES module: the named exports, top-level await, and a proxy pair carrying one
// TCP echo through a tunnel. Run: node examples/esm.mjs (npm test runs it).

import net from 'node:net'
import { once } from 'node:events'
import { ForwardProxy, ReverseProxy, utils } from 'keynet'

const echo = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1')
await once(echo, 'listening')

const rp = new ReverseProxy()
await rp.start({ serverPort: echo.address().port })
const fp = new ForwardProxy({ authToken: 'tok' })
await fp.start()

// Any TCP client can use the tunnel: an HTTP CONNECT to the forward proxy, then raw bytes.
const socket = net.connect(fp.getProxyPort(), '127.0.0.1')
socket.write(`CONNECT ${utils.buildAddress(rp.getIngressHost(), rp.getIngressPort())}?nodeId=${rp.getNodeId()} HTTP/1.1\r\n` +
  `Proxy-Authorization: ${utils.toAuthToken('tok')}\r\n\r\n`)
const [head] = await once(socket, 'data')
console.log(head.toString().split('\r\n')[0])
socket.write('ping')
const [back] = await once(socket, 'data')
console.log(`echoed: ${back}`)

socket.end()
await fp.stop()
await rp.stop()
echo.close()
