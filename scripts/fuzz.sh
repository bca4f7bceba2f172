#!/usr/bin/env bash
# Fuzzes keynet-core's wire parsers: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (npm run fuzz -- 600 gives each target ten minutes). Default: 60 s for each target in
# fuzz/fuzz_targets, one after the other. Each run grows fuzz/corpus/TARGET; a crash leaves
# its input in fuzz/artifacts/TARGET and makes the script exit 1 (after the other targets ran).
# Needs the nightly toolchain; installs cargo-fuzz when it is missing. Logs: fuzz/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ $secs =~ ^[0-9]+$ ]] || [[ $secs -eq 0 ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

all=()
for f in fuzz/fuzz_targets/*.rs; do
  t=${f##*/}
  all+=("${t%.rs}")
done
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then targets=("${all[@]}"); fi
for t in "${targets[@]}"; do
  if [[ ! -f fuzz/fuzz_targets/$t.rs ]]; then
    echo "fuzz: no target '$t' (targets: ${all[*]})" >&2
    exit 2
  fi
done

# Build first, so each target's time is spent fuzzing.
echo "fuzz: building ${#targets[@]} target(s)"
for t in "${targets[@]}"; do
  cargo +nightly fuzz build "$t"
done

mkdir -p fuzz/logs
failed=()
printf '\n%-18s %-8s %7s %10s %8s %s\n' target result seconds execs/s corpus notes
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log=fuzz/logs/$t.log
  start=$SECONDS
  rc=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  took=$((SECONDS - start))
  execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  if [[ $rc -eq 0 ]]; then
    printf '%-18s %-8s %7s %10s %8s\n' "$t" ok "$took" "${execs:-?}" "$files"
  else
    failed+=("$t")
    artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -n 1 || true)
    printf '%-18s %-8s %7s %10s %8s %s\n' "$t" CRASH "$took" "${execs:-?}" "$files" \
      "input: ${artifact:-see $log}"
    # The panic message and where it was raised.
    { grep -m 1 -A 3 "panicked at" "$log" || grep -m 1 -A 2 "ERROR: " "$log"; } |
      sed 's/^/    /' || true
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in ${failed[*]} (logs in fuzz/logs/; reproduce with" \
    "cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE)" >&2
  exit 1
fi
echo "fuzz: no crash"
