#!/usr/bin/env bash
# Cross-builds the addon for linux arm64 (glibc) on an x64 Debian/Ubuntu machine with Debian's
# cross toolchain, into dist/aarch64-unknown-linux-gnu/. Pass --release for the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
rustup target add "$target"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
npx napi build --platform --target "$target" --no-js -o "dist/$target" "$@"
file "dist/$target/"*.node
