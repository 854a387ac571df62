#!/usr/bin/env bash
# Rebuild the demo guest workloads for wasm32-wasip1 and copy them to testdata/wasm/.
# Paths are remapped so the bytes do not depend on where the repository or cargo live.
# Needs: rustup target add wasm32-wasip1
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-testdata/wasm}"
target_dir="${CARGO_TARGET_DIR:-target}/guest-build"
export RUSTFLAGS="--remap-path-prefix=$PWD=/cairn --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
cargo build --locked --profile guest --target wasm32-wasip1 --target-dir "$target_dir" \
  -p cairn-guest-mandelbrot -p cairn-guest-sieve -p cairn-guest-nn -p cairn-guest-sandbox-probe \
  -p cairn-guest-hello-service
mkdir -p "$out"
for g in mandelbrot sieve nn sandbox-probe hello-service; do
  cp "$target_dir/wasm32-wasip1/guest/cairn-guest-$g.wasm" "$out/$g.wasm"
done
ls -l "$out"
