'use strict'
// Test support shared by the ava suite (__test__/helpers.js builds its ava helpers on it), the
// demo, the bench and the NAT lab's agents: one echo.proto and its loader, the TCP and gRPC echo
// servers a reverse proxy carries tunnels to, and a raw HTTP CONNECT client of the forward
// proxy. One copy, so that every user speaks the same service and the same CONNECT. Not part of
// the published package (package.json "files" leaves it out, like the demo that uses it).

module.exports = {
  ...require('./timeout'),
  ...require('./proto'),
  ...require('./servers'),
  ...require('./connect'),
}
