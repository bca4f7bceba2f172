// Type test (never run): the package from an ES module, as __test__/fixtures/esm-import.mjs uses
// it at run time: the default import is module.exports, the named imports are its properties.

import keynet from 'keynet'
import { ForwardProxy, ReverseProxy, Relay, generateIdentity, rotateIdentity, nodeIdFromCertificate, errors } from 'keynet'
import type { ConnectionEvent, Identity } from 'keynet'

const fp: ForwardProxy = new keynet.ForwardProxy({ authToken: 'token' })
const rp: InstanceType<typeof keynet.ReverseProxy> = new ReverseProxy()
const r: Relay = new keynet.Relay()
const sameClasses: boolean = keynet.ForwardProxy === ForwardProxy && keynet.Relay === Relay && keynet.errors === errors
const id: Identity = await generateIdentity()
const rotated: Identity = keynet.rotateIdentity(id.tlsConfig)
const nodeId: string = nodeIdFromCertificate(rotateIdentity(rotated.tlsConfig).tlsConfig.certChainPem)
fp.on('connection', (e: ConnectionEvent) => void e.nodeId)
await fp.start({ proxyPort: 0 })
await rp.start({ serverPort: 50051 })
await r.start()
const err: errors.ErrorNetwork = new keynet.errors.ErrorNodeNotFound(nodeId)
export { sameClasses, err }
