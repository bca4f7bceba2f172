'use strict'
// Loads demo/echo.proto for both the server (demo.js) and the client (client.js).
const path = require('node:path')
const grpc = require('@grpc/grpc-js')
const protoLoader = require('@grpc/proto-loader')

const definition = protoLoader.loadSync(path.join(__dirname, 'echo.proto'), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
})

module.exports = { grpc, Echo: grpc.loadPackageDefinition(definition).keynet.demo.Echo }
