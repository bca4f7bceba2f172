// Type test (never run): mistakes a user could make, each of which index.d.ts must reject.
// Every line marked `// error TSxxxx` must fail with exactly that code, and no other line may
// fail (__test__/types.test.js compiles this with tsconfig.bad.json and checks both).

import { ForwardProxy, ReverseProxy, errors } from '../..'
import { ErrorNodeNotFound } from '../..' // error TS2305 (only `errors` is exported, not its classes)

export async function mistakes(): Promise<void> {
  // A wrong option type: a time as a string.
  const fp = new ForwardProxy({ authToken: 'token', connConnectTime: '20s' }) // error TS2322
  // A field the event payload does not have ('close' carries `reason`).
  fp.on('close', (e) => console.log(e.closeReason)) // error TS2339
  // An event name that does not exist (misspelt).
  fp.on('conection', () => {}) // error TS2769
  // A wrong argument count: closeConnection needs host and port.
  await fp.closeConnection('127.0.0.1') // error TS2554
  // start() takes an options object (or the first form's host and port), never a bare port.
  await new ReverseProxy().start(50051) // error TS2769
  // A reverse proxy's openConnection resolves nothing, not a ConnectionInfo.
  const info = await new ReverseProxy().openConnection('127.0.0.1', 40000)
  console.log(info.nodeId) // error TS2339
  // A log level that does not exist.
  new ReverseProxy({ logger: console, logLevel: 'loud' }) // error TS2322
  // stop() takes options ({ signal }), not a time.
  await fp.stop(1000) // error TS2559
  // A timer is the original's deadline object, not a number of milliseconds.
  await fp.openConnection('vabc', '127.0.0.1', 1, { timedOut: false }) // error TS2769
  void [errors, ErrorNodeNotFound]
}
