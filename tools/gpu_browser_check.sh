#!/usr/bin/env bash
# The browser against native on a real GPU, in a few minutes: tools/bench/browser_vs_native.sh on
# the machine's own GPU (Chromium's WebGPU on its Vulkan driver, the native binary on the same
# driver, and on CUDA where there is an NVIDIA GPU) for SmolLM2's emulator and for a ~1B LLaMA's
# (random weights: speed and memory do not depend on them), LoRA r=8, with tokens/s, peak memory
# (GPU memory from nvidia-smi on NVIDIA) and the ratios; each run's table in
# target/gpu-browser-check-EMU.txt, with the native GPU row again on burn's product instead of our
# WGSL one (shaders/: whether ours wins on this GPU); then single products, our WGSL kernel's
# standalone form in Chromium against burn's natively (target/gpu-matmul.txt).
# Needs: the GPU's Vulkan driver and the Vulkan loader (libvulkan1); for the browser rows Chromium
# (/usr/bin/chromium) and scripts/setup-web.sh; on a machine without them (or without cargo, given
# binaries built elsewhere) the rows that need them are left out and the script says so.
# Usage: [STEPS=6] [BATCH=4] [LEN=128] [SMOLLM2=real|random] tools/gpu_browser_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# FROZEN_F32: the native GPU row again with frozen weights in f32, for the memory f16 saves.
export ICD=system LORA=${LORA:-8} CPU_THREADS=${CPU_THREADS:-1} FROZEN_F32=1 BURN_MATMUL=1
# Chromium on Linux reaches a GPU's WebGPU through Vulkan only with these switches.
export CHROMIUM_FLAGS=${CHROMIUM_FLAGS:---enable-features=Vulkan --ignore-gpu-blocklist}
command -v nvidia-smi >/dev/null && { nvidia-smi -L; export CUDA=${CUDA:-1}; }
# The real model needs a download; its random twin trains at the same speed in the same memory.
smollm2=smollm2; [[ ${SMOLLM2:-real} == random ]] && smollm2=random:smollm2-135m
mkdir -p target
for emu in "$smollm2" llama-1b; do
  echo "==> $emu"
  EMU=$emu bash tools/bench/browser_vs_native.sh "${STEPS:-6}" "${BATCH:-4}" "${LEN:-128}" \
    | tee "target/gpu-browser-check-${emu#random:}.txt"
  # WebGPU on Chromium's software adapter would be a wrong figure here.
  if grep -qi swiftshader target/bench-browser/row-a.json 2>/dev/null; then
    echo "Chromium's WebGPU ran on SwiftShader, not on the GPU: check CHROMIUM_FLAGS and the Vulkan driver" >&2
    exit 1
  fi
done
# Single products on this GPU (docs/results.md, "WebGPU on a software adapter").
echo "==> matrix products: hand-written WGSL (Chromium) against burn's (native wgpu)"
if [[ -x /usr/bin/chromium ]]; then node tools/bench/webgpu_matmul.mjs | tee target/gpu-matmul.txt; fi
if command -v cargo >/dev/null; then
  cargo run --release -q -p scaleot-owner --features wgpu --example wgpu_matmul | tee -a target/gpu-matmul.txt
fi
