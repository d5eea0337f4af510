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
gzipped=$(gzip -9c "$wasm" | wc -c)
echo "wasm: $(stat -c %s "$wasm") bytes, $gzipped gzipped" | tee target/wasm-size.txt
# The page's download budget (issue 14): a dependency that grows it past 3 MB gzipped fails here.
budget=3000000
if [ "$gzipped" -gt "$budget" ]; then
  echo "the page's wasm is $gzipped bytes gzipped, over its $budget-byte budget (docs/results.md says what it holds)" >&2
  exit 1
fi
echo "page built in $((SECONDS - start))s"
