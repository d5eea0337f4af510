#!/usr/bin/env bash
# Builds the data owner's page into dist/ with Trunk (release, offline; wasm-opt from
# tools/web/node_modules, see Trunk.toml) and prints the wasm's size. Needs scripts/setup-web.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/tools/web/node_modules/.bin:$PATH"
start=$SECONDS
trunk build --release --offline 2>&1 | tail -3
wasm=dist/scaleot_bg.wasm
mkdir -p target
echo "wasm: $(stat -c %s "$wasm") bytes, $(gzip -9c "$wasm" | wc -c) gzipped" | tee target/wasm-size.txt
echo "page built in $((SECONDS - start))s"
