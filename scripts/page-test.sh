#!/usr/bin/env bash
# Browser tests: the wasm-bindgen test (WebGPU training = native CPU losses) and the page
# test (a whole session in headless Chromium against `scaleot serve`, privacy checks, then the
# native binary plugs in the downloaded adapter). Needs scripts/setup-web.sh and the owner
# binary (cargo build --release -p scaleot-owner).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/tools/web/node_modules/.bin:$PATH"
export CHROMEDRIVER=/usr/bin/chromedriver
out=target/page-test; rm -rf "$out"; mkdir -p "$out"

echo "==> wasm-bindgen-test in headless Chromium (WebGPU on SwiftShader)"
WASM_BINDGEN_TEST_TIMEOUT=900 cargo test --target wasm32-unknown-unknown --test web_session

echo "==> build the page (trunk)"
trunk build --release --offline 2>&1 | tail -3
wasm=dist/scaleot_bg.wasm
echo "wasm: $(stat -c %s "$wasm") bytes, $(gzip -9c "$wasm" | wc -c) gzipped" | tee "$out/wasm-size.txt"

echo "==> tiny emulator, served"
bin=target/release/scaleot
cargo run --release --quiet --example tiny_model -- "$out/tiny-model"
"$bin" emulator --model "$out/tiny-model" --adapters 1+1 --keep 2 --out "$out/emu.json"
"$bin" serve --emulator "$out/emu.json" --port 0 > "$out/serve.out" 2> "$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "^serving" "$out/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^serving //p' "$out/serve.out")
[[ -n "$url" ]] || { cat "$out/serve.log"; echo "scaleot serve did not start" >&2; exit 1; }

echo "==> page test at $url"
node tests/page/page-test.mjs "$url" tests/fixtures/notes-sample.jsonl "$out"
# The server saw only reads of its own files.
if grep -v -E '^(GET|HEAD) ' "$out/serve.log" | grep -E '^[A-Z]+ /' ; then
  echo "the server received a non-GET request" >&2; exit 1
fi

echo "==> the owner plugs in the adapter the page downloaded"
"$bin" plugin --model "$out/tiny-model" --adapter "$out/adapter.safetensors" --out "$out/plugged" | tee "$out/plugin.log"
grep -q "LoRA r=4" "$out/plugin.log"
echo "page tests passed; screenshot: $out/page-after-training.png"
