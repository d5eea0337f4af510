#!/usr/bin/env bash
# One adapter-training configuration (emulator, LoRA rank, batch, length, steps) run four ways on
# this machine, side by side, with tokens/s, peak memory and the two same-device ratios:
#   (a) browser WebGPU   the page's worker in headless Chromium on WebGPU
#   (b) native GPU       `scaleot bench-train --device gpu` on the same Vulkan device as (a)
#   (c) browser CPU      the page's wasm CPU fallback (Chromium without WebGPU)
#   (d) native CPU       `scaleot bench-train --device cpu` with as many threads as (c) has workers
# Without a GPU, Chromium's WebGPU runs on SwiftShader, which Chromium ships as a Vulkan driver:
# (b) points the Vulkan loader at that very driver (VK_ICD_FILENAMES), so (a) and (b) share one
# device. With a GPU, set ICD= to its Vulkan driver's JSON (or ICD=system for the loader's choice).
# tokens/s counts batch x length per step after the first (kernel compilation), both sides.
# Usage: [EMU=emu.json] [LORA=0] [CPU_THREADS=1] [DIST=dist] tools/bench/browser_vs_native.sh [STEPS=4] [BATCH=2] [LEN=64]
#   EMU: an emulator manifest; default the tiny test emulator; `smollm2`: SmolLM2's uniform-drop
#   emulator, 2+2 adapters (slow on a software GPU: minutes per step); `random:SHAPE`: the same
#   recipe on random weights of a shape of tools/bench/random_llama.rs (`random:smollm2-135m`: the
#   same speed and memory without the model's download); `llama-1b` = `random:llama-1b`, a ~1B
#   LLaMA (16 layers x 2048, 32k vocabulary). LORA: rank on every projection of the adapter
#   layers, 0 = whole adapter layers. CPU_THREADS: the native CPU's threads and the wasm
#   fallback's workers (which share each batch: give BATCH at least as many examples).
#   DIST: the built page to serve (another build's, to compare two). BROWSER=0: native rows only
#   (also without /usr/bin/chromium). CUDA=1: a fifth row, the native binary on CUDA. On an NVIDIA
#   GPU each row also reports its peak GPU memory (nvidia-smi).
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

# Without Chromium (BROWSER=0, or none installed) the browser rows are left out.
browser_rows=${BROWSER:-1}
[[ -x /usr/bin/chromium ]] || { browser_rows=0; echo "no /usr/bin/chromium: browser rows left out" >&2; }
# Without cargo (a machine that only runs what was built elsewhere) the binaries must be there.
if command -v cargo >/dev/null; then
  features=wgpu; [[ ${CUDA:-0} == 1 ]] && features=wgpu,cuda
  cargo build --release -q -p scaleot-owner --features "$features"
  # (--workspace: the features CI builds with, so its artifacts are reused)
  cargo build --release -q --workspace --examples
fi
((browser_rows == 0)) || [ -f dist/index.html ] || bash scripts/build-page.sh
emu=${EMU:-}
[[ $emu == llama-1b ]] && emu=random:llama-1b
case $emu in
  "")
    target/release/examples/tiny_model "$out/tiny-model" >/dev/null
    "$bin" emulator --model "$out/tiny-model" --adapters 1+1 --keep 2 --out "$out/tiny-emu.json" >/dev/null
    emu="$out/tiny-emu.json" ;;
  smollm2)
    bash scripts/fetch-assets.sh >/dev/null
    "$bin" emulator --adapters 2+2 --out "$out/smollm2-emu.json" >/dev/null
    emu="$out/smollm2-emu.json" ;;
  random:*)
    shape=${emu#random:}
    if [ ! -f "$out/$shape-emu.json" ]; then
      target/release/examples/random_llama "$shape" "$out/$shape"
      "$bin" emulator --model "$out/$shape" --adapters 2+2 --out "$out/$shape-emu.json" >/dev/null
      rm -rf "${out:?}/$shape"
    fi
    emu="$out/$shape-emu.json" ;;
esac

"$bin" serve --emulator "$emu" --dist "${DIST:-dist}" --port 0 > "$out/serve.out" 2> "$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q "^serving" "$out/serve.out" 2>/dev/null && break; sleep 0.2; done
url=$(sed -n 's/^serving //p' "$out/serve.out")
[[ -n $url ]] || { cat "$out/serve.log" >&2; exit 1; }

# Each row's JSON line goes to $out/ROW.json; on an NVIDIA GPU, its peak GPU memory (nvidia-smi,
# sampled every 100 ms, above what was in use before it) to $out/ROW.gpu.
rm -f "$out"/row-*.json "$out"/row-*.gpu
row() { # row NAME CMD...
  local name=$1 status=0 sampler=""; shift
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/row-$name.smi" &
    sampler=$!; sleep 0.5
  fi
  "$@" > "$out/row-$name.out" || status=$?
  if [[ -n $sampler ]]; then
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    awk 'NR == 1 { base = $1 } $1 > peak { peak = $1 } END { print peak - base }' "$out/row-$name.smi" > "$out/row-$name.gpu"
  fi
  grep '^{' "$out/row-$name.out" | tail -1 > "$out/row-$name.json" || true
  return $status
}
# A row the page refuses (an emulator too large for the CPU fallback, say) prints its reason.
browser() { WORKERS=$cpu_threads node tools/bench/browser_train.mjs "$url" "${DATA:-README.md}" "$steps" "$batch" "$len" "$lora" "$1"; }
native() { "$bin" bench-train --emulator "$emu" --batch "$batch" --len "$len" --iters "$((steps - 1))" --lora-rank "$lora" "$@"; }
if ((browser_rows)); then echo "(a) browser WebGPU ..." >&2; row a browser webgpu; fi
echo "(b) native GPU ..." >&2
# SwiftShader (as Chromium ships it) may crash while the process exits, after the figures are
# printed (lavapipe does not): the row counts when its JSON line is there.
(if [[ -n $icd ]]; then export VK_ICD_FILENAMES=$icd; fi
 VK_LOADER_DEBUG=driver row b native --device gpu) 2> "$out/native-gpu.log" || true
[[ -s $out/row-b.json ]] || { grep -v DRIVER "$out/native-gpu.log" | tail >&2; exit 1; }
driver=$([[ -n $icd ]] && python3 -c 'import json, os, sys; print(os.path.basename(json.load(open(sys.argv[1]))["ICD"]["library_path"]))' "$icd")
if [[ -n $icd ]] && ! grep -q "$driver" "$out/native-gpu.log"; then
  echo "the native GPU run did not load $icd (see $out/native-gpu.log)" >&2; exit 1
fi
# FROZEN_F32=1: (b) again with frozen weights in f32 (by default a GPU that computes with f16
# keeps them f16, as the page does): the GPU memory before and after.
if [[ ${FROZEN_F32:-0} == 1 ]]; then
  echo "(f) native GPU, frozen weights in f32 ..." >&2
  (if [[ -n $icd ]]; then export VK_ICD_FILENAMES=$icd; fi
   row f native --device gpu --frozen-f32) 2> "$out/native-gpu-f32.log" || true
fi
# BURN_MATMUL=1: (b) again with burn's product for frozen weights instead of our WGSL one
# (shaders/): which kernel wins on this device.
if [[ ${BURN_MATMUL:-0} == 1 ]]; then
  echo "(g) native GPU, burn's product ..." >&2
  (if [[ -n $icd ]]; then export VK_ICD_FILENAMES=$icd; fi
   row g native --device gpu --burn-matmul) 2> "$out/native-gpu-burn.log" || true
fi
if ((browser_rows)); then echo "(c) browser CPU ..." >&2; row c browser cpu; fi
echo "(d) native CPU ..." >&2; RAYON_NUM_THREADS=$cpu_threads row d native --device cpu
# CUDA=1: the native binary on CUDA too (built with the cuda feature), on an NVIDIA GPU.
if [[ ${CUDA:-0} == 1 ]]; then echo "(e) native CUDA ..." >&2; row e native --device cuda; fi
python3 - "$out" "$emu" "$steps" "$batch" "$len" "$lora" "$cpu_threads" <<'PY'
import json, os, sys
out, emu, steps, batch, length, lora, threads = sys.argv[1:8]
def read(name):
    path = f"{out}/row-{name}.json"
    if not os.path.exists(path) or not open(path).read().strip():
        return None
    r = json.load(open(path))
    if os.path.exists(f"{out}/row-{name}.gpu"):
        r["gpu_peak_mib"] = float(open(f"{out}/row-{name}.gpu").read())
    return r
what = "whole adapter layers" if lora == "0" else f"LoRA r={lora}"
print(f"{emu}: {what}, batch {batch} x {length}, {steps} steps (first untimed), CPU rows on {threads} thread(s)")
print(f"{'':22} {'tokens/s':>9} {'first step s':>13} {'peak RSS MiB':>13} {'GPU MiB':>8}")
names = {"a": "(a) browser WebGPU", "b": "(b) native GPU", "f": "(f) (b), f32 weights", "g": "(g) (b), burn's matmul", "c": "(c) browser CPU", "d": "(d) native CPU", "e": "(e) native CUDA"}
rows = {k: read(k) for k in names}
for k, name in names.items():
    r = rows[k]
    if r is None:
        continue
    if "refused" in r:
        print(f"{name:22} refused: {r['refused']}")
        continue
    first = r.get("first_step_seconds")
    gpu = f"{r['gpu_peak_mib']:8.0f}" if "gpu_peak_mib" in r else f"{'':8}"
    print(f"{name:22} {r['tokens_per_second']:9.2f} {first if first is not None else float('nan'):13.1f} {r['peak_rss_mib']:13.0f} {gpu}")
    if "peak_rss_mib_by_process" in r:
        print(f"{'':22} by process: " + ", ".join(f"{t} {v:,.0f}" for t, v in r["peak_rss_mib_by_process"].items()))
def ratio(x, y):
    if x is None or y is None or "refused" in x:
        return "n/a"
    return f"{x['tokens_per_second'] / y['tokens_per_second']:.2f}x"
print(f"same device, WebGPU: browser / native = {ratio(rows['a'], rows['b'])} (target >= 0.8x)")
print(f"CPU: browser / native = {ratio(rows['c'], rows['d'])} (target >= 0.5x)")
if rows["g"] is not None:
    print(f"our WGSL product / burn's, native GPU = {ratio(rows['b'], rows['g'])}")
PY
