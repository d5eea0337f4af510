#!/usr/bin/env bash
# One adapter-training configuration (emulator, LoRA rank, batch, length, steps) run four ways on
# this machine, side by side, with tokens/s, peak memory and the two same-device ratios:
#   (a) browser WebGPU   the page's worker in headless Chromium on WebGPU
#   (b) native GPU       `scaleot bench-train --device gpu` on the same Vulkan device as (a)
#   (c) browser CPU      the page's wasm CPU fallback (Chromium without WebGPU)
#   (d) native CPU       `scaleot bench-train --device cpu` with the fallback's thread count
# Without a GPU, Chromium's WebGPU runs on SwiftShader, which Chromium ships as a Vulkan driver:
# (b) points the Vulkan loader at that very driver (VK_ICD_FILENAMES), so (a) and (b) share one
# device. With a GPU, set ICD= to its Vulkan driver's JSON (or ICD=system for the loader's choice).
# tokens/s counts batch x length per step after the first (kernel compilation), both sides.
# Usage: [EMU=emu.json] [LORA=0] [CPU_THREADS=1] [DIST=dist] tools/bench/browser_vs_native.sh [STEPS=4] [BATCH=2] [LEN=64]
#   EMU: an emulator manifest; default the tiny test emulator; `smollm2`: SmolLM2's uniform-drop
#   emulator, 2+2 adapters (slow on a software GPU: minutes per step). LORA: rank on every
#   projection of the adapter layers, 0 = whole adapter layers. CPU_THREADS: the wasm fallback's threads (one until it has more).
#   DIST: the built page to serve (another build's, to compare two).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PWD/tools/web/node_modules/.bin:$PATH"
steps=${1:-4} batch=${2:-2} len=${3:-64}
lora=${LORA:-0} cpu_threads=${CPU_THREADS:-1}
((steps >= 2)) || { echo "STEPS must be at least 2 (the first step is not timed)" >&2; exit 2; }
out=target/bench-browser; mkdir -p "$out"
bin=target/release/scaleot

if [[ ${ICD:-} == system ]]; then icd=""
else
  icd=${ICD:-$(dpkg -L chromium-common 2>/dev/null | grep -m1 'vk_swiftshader_icd.json$' || true)}
  [[ -f $icd ]] || { echo "no SwiftShader Vulkan driver found (apt-get install chromium); or set ICD=" >&2; exit 2; }
fi
# Without the system Vulkan loader wgpu silently takes OpenGL: another device, another figure.
[[ $(ldconfig -p) == *libvulkan.so.1* ]] || { echo "the Vulkan loader is missing: apt-get install libvulkan1" >&2; exit 2; }

cargo build --release -q -p scaleot-owner --features wgpu
[ -f dist/index.html ] || bash scripts/build-page.sh
emu=${EMU:-}
if [ -z "$emu" ]; then
  cargo run --release --quiet --example tiny_model -- "$out/tiny-model" >/dev/null
  "$bin" emulator --model "$out/tiny-model" --adapters 1+1 --keep 2 --out "$out/tiny-emu.json" >/dev/null
  emu="$out/tiny-emu.json"
elif [ "$emu" = smollm2 ]; then
  bash scripts/fetch-assets.sh >/dev/null
  "$bin" emulator --adapters 2+2 --out "$out/smollm2-emu.json" >/dev/null
  emu="$out/smollm2-emu.json"
fi

"$bin" serve --emulator "$emu" --dist "${DIST:-dist}" --port 0 > "$out/serve.out" 2> "$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q "^serving" "$out/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^serving //p' "$out/serve.out")
[[ -n $url ]] || { cat "$out/serve.log" >&2; exit 1; }

browser() { node tools/bench/browser_train.mjs "$url" README.md "$steps" "$batch" "$len" "$lora" "$1" | tail -1; }
native() { "$bin" bench-train --emulator "$emu" --batch "$batch" --len "$len" --iters "$((steps - 1))" --lora-rank "$lora" "$@"; }
echo "(a) browser WebGPU ..." >&2; a=$(browser webgpu)
echo "(b) native GPU ..." >&2
# SwiftShader (as Chromium ships it) may crash while the process exits, after the figures are
# printed (lavapipe does not): the row counts when its JSON line is there.
VK_ICD_FILENAMES=$icd VK_LOADER_DEBUG=driver native --device gpu > "$out/native-gpu.json" 2> "$out/native-gpu.log" || true
b=$(grep '^{' "$out/native-gpu.json" | tail -1)
[[ -n $b ]] || { grep -v DRIVER "$out/native-gpu.log" | tail >&2; exit 1; }
driver=$([[ -n $icd ]] && python3 -c 'import json, os, sys; print(os.path.basename(json.load(open(sys.argv[1]))["ICD"]["library_path"]))' "$icd")
if [[ -n $icd ]] && ! grep -q "$driver" "$out/native-gpu.log"; then
  echo "the native GPU run did not load $icd (see $out/native-gpu.log)" >&2; exit 1
fi
echo "(c) browser CPU ..." >&2; c=$(browser cpu)
echo "(d) native CPU ..." >&2; d=$(RAYON_NUM_THREADS=$cpu_threads native --device cpu)
python3 - "$emu" "$steps" "$batch" "$len" "$lora" "$cpu_threads" "$a" "$b" "$c" "$d" <<'PY'
import json, sys
emu, steps, batch, length, lora, threads = sys.argv[1:7]
a, b, c, d = (json.loads(s) for s in sys.argv[7:11])
what = "whole adapter layers" if lora == "0" else f"LoRA r={lora}"
print(f"{emu}: {what}, batch {batch} x {length}, {steps} steps (first untimed), CPU rows on {threads} thread(s)")
print(f"{'':22} {'tokens/s':>9} {'first step s':>13} {'peak RSS MiB':>13}")
rows = [("(a) browser WebGPU", a), ("(b) native GPU", b), ("(c) browser CPU", c), ("(d) native CPU", d)]
for name, r in rows:
    first = r.get("first_step_seconds")
    print(f"{name:22} {r['tokens_per_second']:9.2f} {first if first is not None else float('nan'):13.1f} {r['peak_rss_mib']:13.0f}")
print(f"same device, WebGPU: browser / native = {a['tokens_per_second'] / b['tokens_per_second']:.2f}x (target >= 0.8x)")
print(f"CPU: browser / native = {c['tokens_per_second'] / d['tokens_per_second']:.2f}x (target >= 0.5x)")
PY
