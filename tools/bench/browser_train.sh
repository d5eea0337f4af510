#!/usr/bin/env bash
# Browser training tokens/s next to the native CPU figure, on the same emulator, batch and length
# (whole adapter layers, loss on every token). Default: the tiny test emulator; EMU=path/to/emu.json
# for a real one (e.g. SmolLM2's uniform-drop emulator: slow on SwiftShader, run it outside CI).
# Usage: tools/bench/browser_train.sh [STEPS=4] [BATCH=2] [LEN=64]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PWD/tools/web/node_modules/.bin:$PATH"
steps=${1:-4} batch=${2:-2} len=${3:-64}
out=target/bench-browser; mkdir -p "$out"
bin=target/release/scaleot
cargo build --release -q -p scaleot-owner
[ -f dist/index.html ] || trunk build --release --offline
emu=${EMU:-}
if [ -z "$emu" ]; then
  cargo run --release --quiet --example tiny_model -- "$out/tiny-model" >/dev/null
  "$bin" emulator --model "$out/tiny-model" --adapters 1+1 --keep 2 --out "$out/tiny-emu.json" >/dev/null
  emu="$out/tiny-emu.json"
fi
"$bin" serve --emulator "$emu" --port 0 > "$out/serve.out" 2> "$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "^serving" "$out/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^serving //p' "$out/serve.out")
browser=$(node tools/bench/browser_train.mjs "$url" README.md "$steps" "$batch" "$len" | tail -1)
native=$("$bin" bench-train --emulator "$emu" --batch "$batch" --len "$len" --iters "$((steps - 1))")
python3 - "$browser" "$native" "$emu" <<'PY'
import json, sys
b, n = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"adapter training on {sys.argv[3]}, batch {n['batch']} x {n['len']}")
print(f"browser ({b['backend'].strip()}): {b['tokens_per_second']:.1f} tokens/s steady, "
      f"first step after {b['first_step_seconds']:.1f} s, emulator loaded in {b['load_seconds']:.1f} s")
print(f"native CPU ({n['threads']} threads): {n['tokens_per_second']:.1f} tokens/s")
print(f"ratio browser/native: {b['tokens_per_second'] / n['tokens_per_second']:.2f}x")
PY
