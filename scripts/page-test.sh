#!/usr/bin/env bash
# Browser tests: the wasm-bindgen test (WebGPU training = native CPU losses) and the page
# test (a whole session in headless Chromium against `scaleot serve`, privacy checks, then the
# native binary plugs in the downloaded adapter). Needs scripts/setup-web.sh, the owner
# binary (cargo build --release -p scaleot-owner) and the real model (scripts/fetch-assets.sh:
# SmolLM2's emulator is trained on the CPU fallback). `--page-built`: dist/ is already built by
# scripts/build-page.sh (test.sh builds it beside the native stages).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PWD/tools/web/node_modules/.bin:$PATH"
export CHROMEDRIVER=/usr/bin/chromedriver
out=target/page-test; rm -rf "$out"; mkdir -p "$out"
t=$SECONDS
part() { echo "[stage]   $1: $((SECONDS - t))s" >&2; t=$SECONDS; }

echo "==> wasm-bindgen-test in headless Chromium (WebGPU on SwiftShader)"
# The page's profile (`web`, see Cargo.toml), like Trunk's build below: the wasm32 dependencies
# are compiled once for both, and the test runs the code the page ships.
WASM_BINDGEN_TEST_TIMEOUT=900 cargo test --profile web --target wasm32-unknown-unknown --test web_session
part "wasm-bindgen-test (build + run)"

if [[ ${1:-} != --page-built ]]; then
  echo "==> build the page (trunk)"
  bash scripts/build-page.sh
  part "trunk build"
fi

echo "==> tiny emulator, served"
bin=target/release/scaleot
# The example is already built by `cargo test --release --workspace` (same features: no rebuild).
cargo build --release --workspace --examples --quiet
target/release/examples/tiny_model "$out/tiny-model"
"$bin" emulator --model "$out/tiny-model" --adapters 1+1 --keep 2 --out "$out/emu.json"
servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true' EXIT
serve() { # serve NAME [ARGS...]: `scaleot serve` on a free port; its URL in $served
  local name=$1; shift
  "$bin" serve "$@" --port 0 > "$out/$name.out" 2> "$out/$name.log" &
  servers+=($!)
  for _ in $(seq 300); do grep -q "^serving" "$out/$name.out" 2>/dev/null && break; sleep 0.2; done
  served=$(sed -n 's/^serving //p' "$out/$name.out")
  [[ -n "$served" ]] || { cat "$out/$name.log"; echo "scaleot serve did not start" >&2; exit 1; }
}
serve serve --emulator "$out/emu.json"; url=$served
serve serve-page; page_only=$served
# The real model's emulator (SmolLM2, 2+2 adapters): the page trains it on the CPU fallback and on WebGPU.
"$bin" emulator --adapters 2+2 --out "$out/smollm2-emu.json"
serve serve-real --emulator "$out/smollm2-emu.json"; real=$served

echo "==> page test at $url (and $page_only without an emulator, $real with SmolLM2's)"
node tests/page/page-test.mjs "$url" tests/fixtures/notes-sample.jsonl "$out" "$page_only" "$out/emu.json" "$real"
part "page test"
# The servers saw only reads of their own files.
if cat "$out"/serve*.log | grep -v -E '^(GET|HEAD) ' | grep -E '^[A-Z]+ /'; then
  echo "a server received a non-GET request" >&2; exit 1
fi

echo "==> the owner plugs in the adapter the page downloaded"
"$bin" plugin --model "$out/tiny-model" --adapter "$out/adapter.safetensors" --out "$out/plugged" | tee "$out/plugin.log"
grep -q "LoRA r=4" "$out/plugin.log"
echo "page tests passed; screenshot: $out/page-after-training.png"
