#!/usr/bin/env node
'use strict'
// `npx keynet`: the keynet command of this platform (bin/run-binary.js).
require('./run-binary.js').run('keynet')
