'use strict'
// Loads support/echo.proto, the one echo service definition of the tests, the demo and the lab.
const path = require('node:path')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')

const PROTO_PATH = path.join(__dirname, 'echo.proto')

/**
 * The `echo` package (`.Echo` is the client constructor, `.Echo.service` the service).
 * `keepCase` and `defaults`: messages read back as `{ text, count }`, a zero count included.
 */
function loadEcho() {
  const def = protoLoader.loadSync(PROTO_PATH, { keepCase: true, defaults: true })
  return grpc.loadPackageDefinition(def).echo
}

// `grpc` too, so that servers and clients are built from the grpc-js the proto was loaded with.
module.exports = { grpc, PROTO_PATH, loadEcho }
