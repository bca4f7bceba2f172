'use strict'
// Reaching a node by its node id alone, across NATs (natlab/): B sits behind a NAT, registers
// with a relay and announces itself on a DHT whose bootstrap node is the relay host; A has
// discovery and no relay, and knows only B's node id. A looks B up, races B's direct addresses
// against B's home relay (dialled on demand), and a grpc-js call crosses. Needs root.

const test = require('ava')
const { Lab, labSupport } = require('../natlab/lab.js')
const { byNodeIdCell } = require('../natlab/attempt.js')

const unsupported = labSupport()
const labTest = unsupported ? test.skip : test.serial
if (unsupported) console.log(`bynodeid.test.js skipped: ${unsupported}`)

for (const [kinds, final] of [
  [['restricted', 'restricted'], ['punched', 'direct']],
  [['symmetric', 'restricted'], ['relayed']],
]) {
  labTest(`${kinds[0]} A x ${kinds[1]} B: a call by node id alone crosses 3 times out of 3 through B's home relay, ending ${final.join(' or ')}`, async (t) => {
    const { rows } = await byNodeIdCell(Lab, kinds, { attempts: 3 })
    rows.forEach((r, i) => {
      t.true(r.ok, `attempt ${i + 1}: ${r.code}`)
      if (!r.ok) return
      t.true(final.includes(r.finalPath), `attempt ${i + 1}: ended on ${r.finalPath} (opened ${r.path})`)
      // B's NAT filters A's direct attempt: the connection opened through B's home relay,
      // which A dialled on demand.
      t.is(r.path, 'relayed', `attempt ${i + 1}`)
      t.true(r.onDemand, `attempt ${i + 1}: A linked to B's home relay`)
    })
  })
}
