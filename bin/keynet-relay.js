#!/usr/bin/env node
'use strict'
// `npx keynet-relay`: the relay hub / DHT node binary of this platform (bin/run-binary.js).
require('./run-binary.js').run('keynet-relay')
